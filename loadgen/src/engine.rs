//! The loadgen's event loop: one thread, epoll through mio, every worker
//! connection non-blocking. Per loop turn each readable connection is read
//! once (64 KiB at a time) and every RESULT in it checked; each connection's
//! new TASKs are written in one write. Nothing is allocated per task: task
//! slots are recycled, payloads and expected results come from the [`Pool`].
//!
//! Over TLS (`tls://`) each connection wraps a [`ServerTls`]: the socket is
//! read and written exactly as for plain TCP and its bytes are counted there
//! (records, handshake and alerts), while plaintext goes through rustls. The
//! only cost to plaintext connections is one `Option` check per read and
//! per flush.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use ringworker::manager::{ManagerConfig, ManagerEventRef, ManagerMachine};
use ringworker::protocol::GoodbyeBody;
use ringworker::transport::tls::{describe_server, ServerTls};
use ringworker::transport::Endpoint;

use crate::progress::{Phase, Progress, Status};
use crate::workload::Pool;

/// How the workload paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// Keep this many tasks in flight per session.
    Closed { concurrency: u32 },
    /// Send this many tasks per second in all, latency from the intended time.
    Open { rate: f64 },
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub sessions: u32,
    pub pacing: Pacing,
    pub duration: Option<Duration>,
    pub tasks: Option<u64>,
    pub warmup: Duration,
    pub ack: bool,
    pub manager: ManagerConfig,
    /// Longest wait for outstanding results after sending stops.
    pub grace: Duration,
    /// Where progress goes (phase, elapsed, time left, rate).
    pub progress: Progress,
    /// Serve TLS with this configuration on every accepted connection.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listen on `endpoint`; a stale Unix socket file is replaced.
    pub fn bind(endpoint: &Endpoint) -> io::Result<Listener> {
        match endpoint {
            Endpoint::Tcp { .. } | Endpoint::Tls { .. } => {
                let addr = endpoint.socket_addrs()?.into_iter().next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "the host resolved to no address")
                })?;
                // A deep accept queue: thousands of sessions dial at once, and
                // a SYN dropped by a full queue costs its sender a 1 s retransmit.
                let socket = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                socket.set_nonblocking(true)?;
                Ok(Listener::Tcp(TcpListener::from_std(socket.into())))
            }
            Endpoint::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    std::fs::remove_file(path)?;
                }
                let socket =
                    socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
                socket.bind(&socket2::SockAddr::unix(path)?)?;
                socket.listen(LISTEN_BACKLOG)?;
                socket.set_nonblocking(true)?;
                let listener: std::os::unix::net::UnixListener =
                    std::os::fd::OwnedFd::from(socket).into();
                Ok(Listener::Unix(UnixListener::from_std(listener)))
            }
        }
    }

    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept()?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            Listener::Unix(l) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }

    pub fn local_endpoint(&self, requested: &Endpoint) -> io::Result<Endpoint> {
        match self {
            Listener::Tcp(l) => {
                let addr = l.local_addr()?;
                let (host, port) = (addr.ip().to_string(), addr.port());
                Ok(match requested {
                    Endpoint::Tls { .. } => Endpoint::Tls { host, port },
                    _ => Endpoint::Tcp { host, port },
                })
            }
            Listener::Unix(_) => Ok(requested.clone()),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Stream::Tcp(s) => s,
            Stream::Unix(s) => s,
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn shutdown(&self, how: std::net::Shutdown) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnPhase {
    Handshake,
    Running,
    Closed,
}

#[derive(Debug, Clone, Copy, Default)]
struct TaskSlot {
    generation: u32,
    task: u32,
    /// Nanoseconds since the run's epoch when the task was (meant to be) sent.
    sent_ns: u64,
    measured: bool,
}

/// Per-connection results.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnReport {
    /// The agent's `worker` id and session index, from its HELLO.
    pub worker: Option<String>,
    pub session: Option<u32>,
    pub tasks_ok: u64,
    pub tasks_failed: u64,
    pub tasks_wrong: u64,
    pub tasks_lost: u64,
    /// TASKs sent before this connection saw the agent's DRAIN that reached
    /// the agent only after its GOODBYE: its `bytes_received` ends exactly
    /// where they begin, so it never read them. Not lost, not answered.
    pub tasks_unread: u64,
    /// The bytes of those TASKs that reached the socket: exactly what the
    /// agent's `bytes_received` falls short of `bytes_sent` by.
    pub bytes_unread: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub agent_bytes_sent: Option<u64>,
    pub agent_bytes_received: Option<u64>,
    pub goodbye_len: Option<usize>,
    /// Over TLS: socket bytes received from the start of the record that
    /// carried GOODBYE to the end (GOODBYE's records and the closing alert).
    /// The agent's GOODBYE `bytes_sent` must equal `bytes_received` minus
    /// these; `agent_bytes_sent` includes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_after_goodbye: Option<u64>,
    pub accounting_exact: bool,
    pub error: Option<String>,
}

/// Output queued behind a large payload, in order.
enum Segment {
    /// Bytes taken from the machine's output buffer, and how many are written.
    Bytes(Vec<u8>, usize),
    /// A pool task's payload, and how many bytes of it are written.
    Payload(u32, usize),
}

/// Payloads at least this large are written from the pool with vectored
/// writes rather than copied into the output buffer.
const LARGE_PAYLOAD: usize = 16 * 1024;

/// The TLS half of one connection.
struct TlsConn {
    server: ServerTls,
    /// Records waiting for the socket, and how many of them are written.
    out: Vec<u8>,
    out_at: usize,
    /// Socket offset of the record that carried the latest plaintext.
    last_record_offset: u64,
    /// Socket offset of the record that carried GOODBYE.
    goodbye_offset: Option<u64>,
    /// The TLS handshake failed: not a session, reported apart.
    handshake_failed: bool,
}

struct Conn {
    segments: std::collections::VecDeque<Segment>,
    stream: Stream,
    tls: Option<Box<TlsConn>>,
    machine: ManagerMachine,
    phase: ConnPhase,
    slots: Vec<TaskSlot>,
    free: Vec<u32>,
    in_flight: u32,
    report: ConnReport,
    goodbye: Option<(GoodbyeBody, usize)>,
    next_intended_ns: u64,
    eof: bool,
    /// The workload stops sending on this connection.
    sending: bool,
}

/// Totals of a run.
#[derive(Debug)]
pub struct RunResult {
    pub conns: Vec<ConnReport>,
    pub histogram: Histogram<u64>,
    pub measured: Duration,
    /// Tasks sent inside the measured window whose results came back (ok,
    /// failed or wrong): what the rates and latency are computed over.
    pub measured_tasks: u64,
    /// How long the warm-up lasted (shorter than asked when `--tasks` ran
    /// out first), and the results of the tasks sent during it.
    pub warmup: Duration,
    pub warmup_tasks: u64,
    pub measured_payload_bytes: u64,
    pub measured_wire_bytes: u64,
    pub failure_codes: std::collections::BTreeMap<String, u64>,
    /// TLS handshakes that failed (those connections are not in `conns`),
    /// and the first one's description.
    pub tls_handshake_failures: u64,
    pub tls_handshake_error: Option<String>,
}

const LISTENER: Token = Token(usize::MAX);
/// Listen backlog (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 65_535;
const READ_CHUNK: usize = 64 * 1024;
const MAX_SLOTS: u32 = 65_536;

/// Drive a workload over `listener` until done, then stop sending and wait
/// for outstanding results. The connections stay open for the drain
/// ([`Engine::drain`]).
pub struct Engine {
    poll: Poll,
    listener: Listener,
    conns: Vec<Conn>,
    pool: Pool,
    spec: RunSpec,
    epoch: Instant,
    histogram: Histogram<u64>,
    failure_codes: std::collections::BTreeMap<String, u64>,
    sent_total: u64,
    wire_at_start: Option<u64>,
    wire_at_end: Option<u64>,
    measured: Duration,
    warmup: Duration,
    warmup_tasks: u64,
    /// When progress was last shown.
    progress_at: Option<Instant>,
    /// Raw socket bytes of TLS connections land here before decryption.
    tls_read_buf: Vec<u8>,
    tls_failures: HandshakeFailures,
}

/// Failed TLS handshakes: how many, and what went wrong with the first.
#[derive(Debug, Default)]
struct HandshakeFailures {
    count: u64,
    first: Option<String>,
}

impl HandshakeFailures {
    fn note(&mut self, why: String) {
        self.count += 1;
        self.first.get_or_insert(why);
    }
}

/// What one read of a TLS connection gave.
enum TlsRead {
    /// Plaintext may have reached the machine.
    Plaintext,
    /// Interrupted: read again.
    Again,
    /// Nothing more to read now, or the connection is over.
    Stop,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connections", &self.conns.len())
            .field("sent_total", &self.sent_total)
            .finish()
    }
}

impl Engine {
    pub fn new(listener: Listener, pool: Pool, spec: RunSpec) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let mut engine = Engine {
            poll,
            listener,
            conns: Vec::new(),
            pool,
            spec,
            epoch: Instant::now(),
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .map_err(|e| io::Error::other(e.to_string()))?,
            failure_codes: Default::default(),
            sent_total: 0,
            wire_at_start: None,
            wire_at_end: None,
            measured: Duration::ZERO,
            warmup: Duration::ZERO,
            warmup_tasks: 0,
            progress_at: None,
            tls_read_buf: Vec::new(),
            tls_failures: HandshakeFailures::default(),
        };
        if engine.spec.tls.is_some() {
            engine.tls_read_buf = vec![0; READ_CHUNK];
        }
        match &mut engine.listener {
            Listener::Tcp(l) => engine
                .poll
                .registry()
                .register(l, LISTENER, Interest::READABLE)?,
            Listener::Unix(l) => {
                engine
                    .poll
                    .registry()
                    .register(l, LISTENER, Interest::READABLE)?
            }
        }
        Ok(engine)
    }

    /// Accept `sessions` workers and complete their handshakes. `gone` is
    /// asked every 100 ms at most whether waiting is pointless (a spawned
    /// agent that exited); its answer is the error.
    pub fn accept_all(
        &mut self,
        timeout: Duration,
        gone: &mut dyn FnMut() -> Option<String>,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut events = Events::with_capacity(1024);
        while self
            .conns
            .iter()
            .filter(|c| c.phase == ConnPhase::Running)
            .count()
            < self.spec.sessions as usize
        {
            let now = Instant::now();
            if now >= deadline {
                let tls = match &self.tls_failures.first {
                    Some(first) => format!(
                        "; {} TLS handshake(s) failed, the first: {first}",
                        self.tls_failures.count
                    ),
                    None => String::new(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "only {} of {} sessions connected within {timeout:?}{tls}",
                        self.conns
                            .iter()
                            .filter(|c| c.phase == ConnPhase::Running)
                            .count(),
                        self.spec.sessions
                    ),
                ));
            }
            if let Some(why) = gone() {
                return Err(io::Error::other(why));
            }
            if self.progress_due(now) {
                let status = Status {
                    phase: Phase::Connecting,
                    done: 0,
                    in_flight: 0,
                    connected: self.running_sessions(),
                    sessions: u64::from(self.spec.sessions),
                    eta: None,
                    fraction: Some(
                        self.running_sessions() as f64 / f64::from(self.spec.sessions.max(1)),
                    ),
                };
                self.spec.progress.update(&status);
            }
            self.poll.poll(
                &mut events,
                Some((deadline - now).min(Duration::from_millis(100))),
            )?;
            for event in events.iter() {
                if event.token() == LISTENER {
                    self.accept_ready()?;
                } else {
                    let index = event.token().0;
                    self.on_readable(index, now);
                    // WELCOME, refusals and the TLS handshake's answers.
                    self.flush(index);
                }
            }
        }
        Ok(())
    }

    fn accept_ready(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok(mut stream) => {
                    let tls = match &self.spec.tls {
                        Some(config) => Some(Box::new(TlsConn {
                            server: ServerTls::new(config.clone()).map_err(io::Error::other)?,
                            out: Vec::new(),
                            out_at: 0,
                            last_record_offset: 0,
                            goodbye_offset: None,
                            handshake_failed: false,
                        })),
                        None => None,
                    };
                    let token = Token(self.conns.len());
                    self.poll.registry().register(
                        stream.source(),
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    self.conns.push(Conn {
                        segments: Default::default(),
                        stream,
                        tls,
                        machine: ManagerMachine::new(self.spec.manager.clone()),
                        phase: ConnPhase::Handshake,
                        slots: Vec::new(),
                        free: Vec::new(),
                        in_flight: 0,
                        report: ConnReport::default(),
                        goodbye: None,
                        next_intended_ns: 0,
                        eof: false,
                        sending: true,
                    });
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Run the workload; returns when sending is over and results are in (or
    /// the grace period ran out).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.epoch = Instant::now();
        let start = self.epoch;
        let warmup_end = start + self.spec.warmup;
        let send_end = self.spec.duration.map(|d| warmup_end + d);
        self.progress_at = None;
        for conn in &mut self.conns {
            conn.next_intended_ns = 0;
        }
        let mut finishing_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let sending = finishing_since.is_none()
                && send_end.is_none_or(|end| now < end)
                && self.spec.tasks.is_none_or(|limit| self.sent_total < limit);
            if !sending && finishing_since.is_none() {
                finishing_since = Some(now);
                for conn in &mut self.conns {
                    conn.sending = false;
                }
                self.wire_at_end = Some(self.wire_bytes());
                self.measured = now.saturating_duration_since(warmup_end);
                self.warmup = now.saturating_duration_since(start).min(self.spec.warmup);
                // Every change of phase is shown, however short the phase.
                self.show_progress(Phase::Draining, None, Some(1.0));
            }
            if let Some(since) = finishing_since {
                let outstanding: u32 = self
                    .conns
                    .iter()
                    .filter(|c| c.phase == ConnPhase::Running)
                    .map(|c| c.in_flight)
                    .sum();
                if outstanding == 0 || now.duration_since(since) >= self.spec.grace {
                    break;
                }
            }
            let measuring = now >= warmup_end;
            if measuring && self.wire_at_start.is_none() {
                self.wire_at_start = Some(self.wire_bytes());
            }
            for index in 0..self.conns.len() {
                if sending {
                    self.fill(index, now, measuring);
                }
                self.flush(index);
            }
            if self.progress_due(now) {
                let phase = if !sending {
                    Phase::Draining
                } else if measuring {
                    Phase::Measuring
                } else {
                    Phase::WarmUp
                };
                let (eta, fraction) = match (send_end, self.spec.tasks) {
                    _ if !sending => (None, Some(1.0)),
                    (Some(end), _) => (
                        Some(end.saturating_duration_since(now)),
                        Some(
                            now.saturating_duration_since(start).as_secs_f64()
                                / end.saturating_duration_since(start).as_secs_f64().max(1e-9),
                        ),
                    ),
                    (None, Some(limit)) => {
                        let done = self.done_tasks();
                        let elapsed = now.saturating_duration_since(start).as_secs_f64();
                        let eta = (done > 0 && elapsed > 0.0).then(|| {
                            let rate = done as f64 / elapsed;
                            Duration::from_secs_f64(
                                (limit.saturating_sub(done) as f64 / rate)
                                    .min(crate::duration::MAX.as_secs_f64()),
                            )
                        });
                        (eta, Some(self.sent_total as f64 / limit.max(1) as f64))
                    }
                    (None, None) => (None, None),
                };
                self.show_progress(phase, eta, fraction);
            }
            let timeout = match self.spec.pacing {
                Pacing::Open { .. } if sending => Duration::from_micros(200),
                _ => Duration::from_millis(50),
            };
            self.poll.poll(&mut events, Some(timeout))?;
            let now = Instant::now();
            for event in events.iter() {
                if event.token() == LISTENER {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(event.token().0, now);
                }
            }
        }
        Ok(())
    }

    /// Whether progress is due (every 100 ms at most), noting it shown.
    fn progress_due(&mut self, now: Instant) -> bool {
        if self
            .progress_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_millis(100))
        {
            return false;
        }
        self.progress_at = Some(now);
        true
    }

    fn running_sessions(&self) -> u64 {
        self.conns
            .iter()
            .filter(|c| c.phase == ConnPhase::Running)
            .count() as u64
    }

    /// Results so far (ok, failed or wrong), warm-up included.
    fn done_tasks(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.report.tasks_ok + c.report.tasks_failed + c.report.tasks_wrong)
            .sum()
    }

    fn show_progress(&self, phase: Phase, eta: Option<Duration>, fraction: Option<f64>) {
        let status = Status {
            phase,
            done: self.done_tasks(),
            in_flight: self.conns.iter().map(|c| u64::from(c.in_flight)).sum(),
            connected: self.running_sessions(),
            sessions: u64::from(self.spec.sessions),
            eta,
            fraction,
        };
        self.spec.progress.update(&status);
    }

    fn wire_bytes(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.report.bytes_sent + c.report.bytes_received)
            .sum()
    }

    fn ns(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Queue new TASKs on connection `index` as the pacing allows.
    fn fill(&mut self, index: usize, now: Instant, measuring: bool) {
        let now_ns = self.ns(now);
        let sessions = self.spec.sessions.max(1);
        let conn = &mut self.conns[index];
        if conn.phase != ConnPhase::Running || !conn.sending {
            return;
        }
        loop {
            if self
                .spec
                .tasks
                .is_some_and(|limit| self.sent_total >= limit)
            {
                return;
            }
            let intended_ns = match self.spec.pacing {
                Pacing::Closed { concurrency } => {
                    if conn.in_flight >= concurrency {
                        return;
                    }
                    now_ns
                }
                Pacing::Open { rate } => {
                    if conn.next_intended_ns > now_ns || conn.in_flight >= MAX_SLOTS - 1 {
                        return;
                    }
                    let intended = conn.next_intended_ns;
                    let interval_ns = (1e9 * f64::from(sessions) / rate).max(1.0);
                    conn.next_intended_ns = intended + interval_ns as u64;
                    intended
                }
            };
            let slot = match conn.free.pop() {
                Some(slot) => slot,
                None => {
                    if conn.slots.len() as u32 >= MAX_SLOTS {
                        return;
                    }
                    conn.slots.push(TaskSlot::default());
                    conn.slots.len() as u32 - 1
                }
            };
            let task = self.pool.pick(self.sent_total);
            let entry = &mut conn.slots[slot as usize];
            entry.generation = entry.generation.wrapping_add(1);
            entry.task = task;
            entry.sent_ns = intended_ns;
            entry.measured = measuring;
            let id = (u64::from(entry.generation) << 32) | u64::from(slot);
            let prepared = &self.pool.tasks[task as usize];
            let handler = &self.pool.handlers[prepared.handler];
            let queued = if prepared.payload.len() >= LARGE_PAYLOAD {
                // Header now, payload written from the pool by `flush`:
                // large payloads are never copied into the output buffer.
                conn.machine
                    .send_task_head(id, handler, prepared.payload.len(), self.spec.ack)
                    .map(|()| {
                        let head = conn.machine.take_output(Vec::new());
                        conn.segments.push_back(Segment::Bytes(head, 0));
                        conn.segments.push_back(Segment::Payload(task, 0));
                    })
            } else {
                conn.machine
                    .send_task(id, handler, &prepared.payload, self.spec.ack)
            };
            if queued.is_err() {
                conn.slots[slot as usize].sent_ns = u64::MAX;
                conn.free.push(slot);
                conn.sending = false;
                conn.report
                    .error
                    .get_or_insert_with(|| "a TASK exceeds the agent's max_body".to_owned());
                return;
            }
            conn.in_flight += 1;
            self.sent_total += 1;
        }
    }

    /// Write what connection `index` has queued, as far as the socket takes it.
    fn flush(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if conn.tls.is_some() {
            conn.flush_tls(&self.pool);
            return;
        }
        // Whatever the machine queued after the last segment goes behind it.
        if !conn.segments.is_empty() && !conn.machine.pending_output().is_empty() {
            let bytes = conn.machine.take_output(Vec::new());
            conn.segments.push_back(Segment::Bytes(bytes, 0));
        }
        while conn.phase != ConnPhase::Closed {
            let result = if conn.segments.is_empty() {
                if conn.machine.pending_output().is_empty() {
                    return;
                }
                conn.stream.write(conn.machine.pending_output())
            } else {
                let mut slices: Vec<io::IoSlice<'_>> = Vec::with_capacity(16);
                for segment in conn.segments.iter().take(16) {
                    let bytes = match segment {
                        Segment::Bytes(bytes, off) => &bytes[*off..],
                        Segment::Payload(task, off) => {
                            &self.pool.tasks[*task as usize].payload[*off..]
                        }
                    };
                    slices.push(io::IoSlice::new(bytes));
                }
                conn.stream.write_vectored(&slices)
            };
            match result {
                Ok(0) => {
                    conn.fail("write returned 0");
                    return;
                }
                Ok(n) => {
                    conn.report.bytes_sent += n as u64;
                    if conn.segments.is_empty() {
                        conn.machine.consume_output(n);
                    } else {
                        conn.advance_segments(n, &self.pool);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    conn.fail(&format!("write failed: {err}"));
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, index: usize, now: Instant) {
        let now_ns = self.ns(now);
        let Some(conn) = self.conns.get_mut(index) else {
            return;
        };
        loop {
            if conn.phase == ConnPhase::Closed {
                return;
            }
            if conn.tls.is_some() {
                match conn.read_tls(&mut self.tls_read_buf, &mut self.tls_failures) {
                    TlsRead::Plaintext => {}
                    TlsRead::Again => continue,
                    TlsRead::Stop => return,
                }
            } else {
                let space = conn.machine.recv_space(READ_CHUNK);
                let n = match conn.stream.read(space) {
                    Ok(0) => {
                        conn.machine.commit(0);
                        conn.peer_closed();
                        return;
                    }
                    Ok(n) => n,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        conn.machine.commit(0);
                        return;
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                        conn.machine.commit(0);
                        continue;
                    }
                    Err(err) => {
                        conn.machine.commit(0);
                        conn.fail(&format!("read failed: {err}"));
                        return;
                    }
                };
                conn.machine.commit(n);
                conn.report.bytes_received += n as u64;
            }
            while let Some(event) = conn.machine.poll_event_ref() {
                match event {
                    ManagerEventRef::Hello(hello) => {
                        conn.report.session = Some(hello.session);
                        conn.report.worker = Some(hello.worker);
                        conn.phase = ConnPhase::Running;
                    }
                    ManagerEventRef::Result { id, failed, body } => {
                        let slot = (id & 0xFFFF_FFFF) as usize;
                        let generation = (id >> 32) as u32;
                        let Some(entry) = conn
                            .slots
                            .get(slot)
                            .copied()
                            .filter(|e| e.generation == generation && e.sent_ns != u64::MAX)
                        else {
                            conn.report.tasks_wrong += 1;
                            continue;
                        };
                        conn.slots[slot].sent_ns = u64::MAX;
                        conn.free.push(slot as u32);
                        conn.in_flight -= 1;
                        let prepared = &self.pool.tasks[entry.task as usize];
                        if failed {
                            conn.report.tasks_failed += 1;
                            let code =
                                serde_json::from_slice::<ringworker::protocol::ErrorBody>(body)
                                    .map(|b| b.code)
                                    .unwrap_or_else(|_| "unparseable".to_owned());
                            *self.failure_codes.entry(code).or_default() += 1;
                        } else if prepared
                            .expected
                            .as_deref()
                            .is_none_or(|expected| expected == body)
                        {
                            conn.report.tasks_ok += 1;
                        } else {
                            conn.report.tasks_wrong += 1;
                        }
                        if entry.measured {
                            let micros = now_ns.saturating_sub(entry.sent_ns) / 1000;
                            let _ = self.histogram.record(micros.max(1));
                        } else {
                            self.warmup_tasks += 1;
                        }
                    }
                    ManagerEventRef::Goodbye { counts, frame_len } => {
                        if let Some(counts) = counts {
                            conn.goodbye = Some((counts, frame_len));
                        }
                        if let Some(tls) = conn.tls.as_deref_mut() {
                            // The worker sends nothing after GOODBYE but
                            // close_notify, which carries no plaintext.
                            tls.goodbye_offset = Some(tls.last_record_offset);
                        }
                    }
                    ManagerEventRef::Error { code, message } => {
                        conn.report.error = Some(format!("agent sent ERROR {code}: {message}"));
                    }
                    ManagerEventRef::Refused { code, message } => {
                        conn.report.error = Some(format!("refused the agent: {code}: {message}"));
                    }
                    ManagerEventRef::Drain => {
                        // The agent is stopping: what it reads from here on
                        // is refused with `draining`, and bytes still in
                        // flight when it says GOODBYE would break the byte
                        // check. Send nothing more; wait for the results.
                        conn.sending = false;
                    }
                    ManagerEventRef::Ack { .. }
                    | ManagerEventRef::Ping { .. }
                    | ManagerEventRef::Pong { .. } => {}
                }
            }
        }
    }

    /// Send DRAIN on every connection (when the agent was not spawned).
    pub fn send_drain(&mut self) {
        for index in 0..self.conns.len() {
            if self.conns[index].phase == ConnPhase::Running {
                self.conns[index].machine.send_drain();
                self.flush(index);
            }
        }
    }

    /// Read until every connection has closed (after GOODBYE) or `timeout`.
    pub fn drain(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.show_progress(Phase::Draining, None, Some(1.0));
        let mut events = Events::with_capacity(1024);
        while self.conns.iter().any(|c| c.phase != ConnPhase::Closed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.progress_due(now) {
                self.show_progress(Phase::Draining, None, Some(1.0));
            }
            for index in 0..self.conns.len() {
                self.flush(index);
            }
            self.poll.poll(
                &mut events,
                Some((deadline - now).min(Duration::from_millis(50))),
            )?;
            let now = Instant::now();
            for event in events.iter() {
                if event.token() != LISTENER {
                    self.on_readable(event.token().0, now);
                }
            }
        }
        Ok(())
    }

    /// The totals of the run.
    pub fn finish(mut self) -> RunResult {
        for conn in &mut self.conns {
            conn.close_tls();
            conn.report.tasks_lost = u64::from(conn.in_flight);
            match conn.goodbye {
                Some((counts, len)) => {
                    conn.report.agent_bytes_received = Some(counts.bytes_received);
                    conn.report.goodbye_len = Some(len);
                    match conn.tls.as_deref() {
                        None => {
                            conn.report.agent_bytes_sent = Some(counts.bytes_sent + len as u64);
                            let sent_exact =
                                counts.bytes_sent + len as u64 == conn.report.bytes_received;
                            // TASKs already on their way when the agent's
                            // DRAIN arrived can reach it after its GOODBYE.
                            // Then it read exactly everything before them,
                            // and its total falls short by exactly their
                            // frames: unread, not lost.
                            let unread_bytes: u64 = conn
                                .slots
                                .iter()
                                .filter(|slot| slot.sent_ns != u64::MAX)
                                .map(|slot| self.pool.task_frame_len(slot.task))
                                .sum();
                            // Of those frames, what never reached the socket
                            // (queued when the connection closed).
                            let unwritten = conn.unwritten(&self.pool);
                            let received_exact = counts.bytes_received == conn.report.bytes_sent;
                            let unread = !received_exact
                                && unread_bytes > 0
                                && conn.report.bytes_sent.checked_sub(counts.bytes_received)
                                    == unread_bytes.checked_sub(unwritten);
                            if sent_exact && unread {
                                conn.report.tasks_unread = conn.report.tasks_lost;
                                conn.report.bytes_unread =
                                    conn.report.bytes_sent - counts.bytes_received;
                                conn.report.tasks_lost = 0;
                            }
                            conn.report.accounting_exact = sent_exact && (received_exact || unread);
                        }
                        Some(tls) => {
                            // PROTOCOL.md, "Byte accounting" over TLS: GOODBYE
                            // counts the socket bytes written before the
                            // record that carried it; that record and the
                            // closing alert are what the loadgen received
                            // after that offset.
                            let offset = tls.goodbye_offset.unwrap_or(0);
                            let after = conn.report.bytes_received.saturating_sub(offset);
                            conn.report.tls_after_goodbye = Some(after);
                            conn.report.agent_bytes_sent = Some(counts.bytes_sent + after);
                            conn.report.accounting_exact = tls.goodbye_offset.is_some()
                                && counts.bytes_sent == offset
                                && counts.bytes_received == conn.report.bytes_sent;
                        }
                    }
                }
                None => {
                    conn.report.error.get_or_insert_with(|| {
                        "no GOODBYE: byte totals cannot be checked".to_owned()
                    });
                }
            }
        }
        let measured_tasks = self.histogram.len();
        // Payload bytes: the mix's mean payload times the measured tasks.
        let mean_payload = self
            .pool
            .order
            .iter()
            .map(|&i| self.pool.tasks[i as usize].payload.len() as f64)
            .sum::<f64>()
            / self.pool.order.len().max(1) as f64;
        let wire = self
            .wire_at_end
            .unwrap_or(0)
            .saturating_sub(self.wire_at_start.unwrap_or(0));
        RunResult {
            conns: self
                .conns
                .into_iter()
                .filter(|c| !c.tls.as_ref().is_some_and(|t| t.handshake_failed))
                .map(|c| c.report)
                .collect(),
            histogram: self.histogram,
            measured: self.measured,
            measured_tasks,
            warmup: self.warmup,
            warmup_tasks: self.warmup_tasks,
            measured_payload_bytes: (mean_payload * measured_tasks as f64) as u64,
            measured_wire_bytes: wire,
            failure_codes: self.failure_codes,
            tls_handshake_failures: self.tls_failures.count,
            tls_handshake_error: self.tls_failures.first,
        }
    }
}

impl Conn {
    /// Bytes queued for this connection's socket and never written: the
    /// machine's output and what is left of each segment.
    fn unwritten(&self, pool: &Pool) -> u64 {
        let segments: usize = self
            .segments
            .iter()
            .map(|segment| match segment {
                Segment::Bytes(bytes, written) => bytes.len() - written,
                Segment::Payload(task, written) => pool
                    .tasks
                    .get(*task as usize)
                    .map_or(0, |t| t.payload.len() - written),
            })
            .sum();
        (segments + self.machine.pending_output().len()) as u64
    }

    /// Drop `n` written bytes from the front of the segment queue.
    fn advance_segments(&mut self, mut n: usize, pool: &Pool) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                return;
            };
            let (len, off) = match front {
                Segment::Bytes(bytes, off) => (bytes.len(), off),
                Segment::Payload(task, off) => (pool.tasks[*task as usize].payload.len(), off),
            };
            let left = len - *off;
            if n >= left {
                n -= left;
                self.segments.pop_front();
            } else {
                *off += n;
                n = 0;
            }
        }
    }

    /// One read of a TLS connection: count the socket bytes, decrypt, and
    /// hand the plaintext to the machine. A failed handshake sends rustls's
    /// alert, closes the socket and is noted in `failures`.
    fn read_tls(&mut self, buf: &mut [u8], failures: &mut HandshakeFailures) -> TlsRead {
        let Some(tls) = self.tls.as_deref_mut() else {
            return TlsRead::Stop;
        };
        let n = match self.stream.read(buf) {
            Ok(0) => {
                if tls.server.is_handshaking() {
                    tls.handshake_failed = true;
                    failures.note(
                        "the worker closed the connection during the TLS handshake".to_owned(),
                    );
                }
                self.peer_closed();
                return TlsRead::Stop;
            }
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return TlsRead::Stop,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return TlsRead::Again,
            Err(err) => {
                if tls.server.is_handshaking() {
                    tls.handshake_failed = true;
                    failures.note(format!("read failed during the TLS handshake: {err}"));
                    self.phase = ConnPhase::Closed;
                } else {
                    self.fail(&format!("read failed: {err}"));
                }
                return TlsRead::Stop;
            }
        };
        self.report.bytes_received += n as u64;
        let (machine, last) = (&mut self.machine, &mut tls.last_record_offset);
        let fed = tls.server.feed(&buf[..n], &mut |plain, offset| {
            *last = offset;
            machine.handle_input(plain);
        });
        match fed {
            Ok(()) => TlsRead::Plaintext,
            Err(err) => {
                let why = describe_server(&err);
                let handshaking = tls.server.is_handshaking();
                // The alert rustls queued goes out before the socket closes.
                let _ = write_records(&mut self.stream, tls, &mut self.report.bytes_sent);
                self.stream.shutdown(std::net::Shutdown::Both);
                if handshaking {
                    tls.handshake_failed = true;
                    failures.note(why);
                    self.phase = ConnPhase::Closed;
                } else {
                    self.fail(&format!("TLS: {why}"));
                }
                TlsRead::Stop
            }
        }
    }

    /// Move queued output into rustls and write the records, as far as the
    /// socket takes them.
    fn flush_tls(&mut self, pool: &Pool) {
        if self.phase == ConnPhase::Closed {
            return;
        }
        let Some(tls) = self.tls.as_deref_mut() else {
            return;
        };
        // Segments (large payloads) first: the machine's output was queued
        // behind them.
        for segment in self.segments.drain(..) {
            match segment {
                Segment::Bytes(bytes, off) => tls.server.write_plain(&bytes[off..]),
                Segment::Payload(task, off) => {
                    tls.server
                        .write_plain(&pool.tasks[task as usize].payload[off..]);
                }
            }
        }
        let pending = self.machine.pending_output();
        if !pending.is_empty() {
            let n = pending.len();
            tls.server.write_plain(pending);
            self.machine.consume_output(n);
        }
        if let Err(why) = write_records(&mut self.stream, tls, &mut self.report.bytes_sent) {
            self.fail(&why);
        }
    }

    /// The loadgen closes first (the agent sent no GOODBYE): over TLS, send
    /// close_notify, without waiting for one back.
    fn close_tls(&mut self) {
        if self.phase == ConnPhase::Closed || self.goodbye.is_some() {
            return;
        }
        let Some(tls) = self.tls.as_deref_mut() else {
            return;
        };
        if tls.server.is_handshaking() {
            return;
        }
        tls.server.close();
        let _ = write_records(&mut self.stream, tls, &mut self.report.bytes_sent);
        self.stream.shutdown(std::net::Shutdown::Write);
        self.phase = ConnPhase::Closed;
    }

    /// The agent closed its side (after its GOODBYE, or it went away):
    /// nothing more will be read, so close ours at once. An agent waits for
    /// the manager to close after GOODBYE (up to 2 s); holding the socket
    /// until the run ends would make every agent-initiated drain that long.
    /// Nothing is written after this, so the byte totals stand.
    fn peer_closed(&mut self) {
        self.eof = true;
        self.phase = ConnPhase::Closed;
        self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn fail(&mut self, why: &str) {
        self.report.error.get_or_insert_with(|| why.to_owned());
        self.phase = ConnPhase::Closed;
    }
}

/// Write a TLS connection's records (those already taken from rustls first,
/// then whatever rustls has queued) until done or the socket is full,
/// counting the bytes in `sent`.
fn write_records(stream: &mut Stream, tls: &mut TlsConn, sent: &mut u64) -> Result<(), String> {
    loop {
        if tls.out_at == tls.out.len() {
            tls.out.clear();
            tls.out_at = 0;
            if !tls.server.wants_write() {
                return Ok(());
            }
            tls.server.write_records(&mut tls.out);
            if tls.out.is_empty() {
                return Ok(());
            }
        }
        match stream.write(&tls.out[tls.out_at..]) {
            Ok(0) => return Err("write returned 0".to_owned()),
            Ok(n) => {
                *sent += n as u64;
                tls.out_at += n;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(format!("write failed: {err}")),
        }
    }
}
