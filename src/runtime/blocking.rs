//! `BlockingRuntime`: std::net sockets and std::thread, simple and debuggable.
//!
//! Each session has a supervisor thread that dials, runs the connection and
//! backs off between dials. A connection has three threads joined by
//! crossbeam channels: a reader (the one `recv_raw`), the core (drives
//! [`WorkerSession`], runs the handlers, keeps the timers) and a writer (the
//! one `send_raw`). The channels are bounded and buffers circulate between
//! the threads, so memory per connection is fixed: two read chunks, the frame
//! being received (at most `max_body` + 16) and the queued output. When the
//! session holds `max_in_flight` tasks the core stops taking chunks, the
//! reader blocks, and TCP flow control slows the manager.
//!
//! This runtime is also the fallback where io_uring is unavailable.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, Receiver, RecvError, Sender};
use rand::SeedableRng;

use super::{
    AgentPlan, Backoff, ByteCounters, RecvChunk, RunReport, RuntimeError, RuntimeKind, RuntimeMode,
    StopHandle,
};
use crate::connection::drain::{DrainTally, StopDrain};
use crate::connection::{closing_deadline, refusal, READ_CHUNK};
use crate::link::Link;
use crate::protocol::{CloseReason, Phase};
use crate::session::WorkerSession;
use crate::stats::{AgentStats, SessionState, SessionStats, LOOP_BEAT_INTERVAL};
use crate::transport::BlockingStream;

/// How long a drain that ran out of time waits for the writer thread to
/// report a write under way, before counting its RESULTs as undelivered.
const WRITE_REPORT_GRACE: Duration = Duration::from_millis(50);
/// Stack size of the per-connection reader and writer threads.
const IO_THREAD_STACK: usize = 128 * 1024;

/// The std::net + threads engine.
#[derive(Debug)]
pub struct BlockingRuntime {
    plan: Arc<AgentPlan>,
    stats: Arc<AgentStats>,
    stop: StopHandle,
    /// Dropped on stop: every supervisor waiting on it wakes.
    stop_tx: Arc<Mutex<Option<Sender<()>>>>,
    stop_rx: Receiver<()>,
    supervisors: Vec<JoinHandle<DrainTally>>,
    started: bool,
}

impl BlockingRuntime {
    pub fn new(plan: AgentPlan) -> Self {
        let mut plan = plan;
        plan.session.runtime = RuntimeKind::Blocking.as_str();
        let stats = Arc::new(AgentStats::with_handlers(
            plan.session.worker_id.clone(),
            RuntimeKind::Blocking.as_str(),
            plan.sessions,
            plan.handlers.names(),
        ));
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let stop_tx = Arc::new(Mutex::new(Some(stop_tx)));
        let stop = StopHandle::new();
        let dropper = stop_tx.clone();
        let agent_stats = stats.clone();
        stop.on_stop(move || {
            agent_stats.mark_stop_requested();
            if let Ok(mut tx) = dropper.lock() {
                tx.take();
            }
        });
        BlockingRuntime {
            plan: Arc::new(plan),
            stats,
            stop,
            stop_tx,
            stop_rx,
            supervisors: Vec::new(),
            started: false,
        }
    }
}

impl RuntimeMode for BlockingRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Blocking
    }

    fn start(&mut self) -> Result<(), RuntimeError> {
        if self.started {
            return Err(RuntimeError::AlreadyStarted);
        }
        self.started = true;
        for index in 0..self.plan.sessions {
            let plan = self.plan.clone();
            let stats = self.stats.clone();
            let stop = self.stop.clone();
            let stop_rx = self.stop_rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("session-{index}"))
                .spawn(move || supervise(index, &plan, &stats, &stop, &stop_rx))
                .map_err(RuntimeError::Spawn)?;
            self.supervisors.push(handle);
        }
        Ok(())
    }

    fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn wait(&mut self) -> RunReport {
        let report = super::join_threads(self.supervisors.drain(..), &self.stop, "session");
        // Keep the sender alive until here so that supervisors never see a
        // spurious stop; after wait, nothing listens any more.
        if let Ok(mut tx) = self.stop_tx.lock() {
            tx.take();
        }
        report
    }
}

/// One session: dial, run, back off, until stopped. Returns what its drains
/// left unfinished.
fn supervise(
    index: u32,
    plan: &AgentPlan,
    agent: &Arc<AgentStats>,
    stop: &StopHandle,
    stop_rx: &Receiver<()>,
) -> DrainTally {
    let stats = agent.sessions[index as usize].clone();
    let mut backoff = Backoff::new(plan.reconnect);
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut unfinished = DrainTally::default();
    let mut first_dial = true;
    while !stop.is_requested() {
        if !first_dial {
            agent.record_reconnect();
        }
        first_dial = false;
        stats.set_state(SessionState::Connecting);
        match BlockingStream::connect(&plan.endpoint, plan.connect_timeout, &plan.tcp) {
            Err(err) => {
                let message = format!("cannot reach manager {}: {err}", plan.endpoint);
                crate::log_limit::warn_session(index, &message, Instant::now());
                stats.set_last_error(Some(message));
            }
            Ok(stream) => {
                stats.begin_connection();
                let counters = ByteCounters::new(stats.clone());
                let outcome =
                    run_connection(index, stream, plan, agent, &stats, counters, stop, stop_rx);
                unfinished += outcome.unfinished;
                backoff.connection_ended(outcome.uptime);
                if let Some(message) = refusal(&plan.endpoint, index, outcome.reason.as_ref()) {
                    tracing::error!(session = index, "{message}");
                    stop.fail(message);
                    break;
                }
            }
        }
        if stop.is_requested() {
            break;
        }
        stats.set_state(SessionState::Disconnected);
        let delay = backoff.next_delay(&mut rng);
        tracing::debug!(
            session = index,
            ?delay,
            "session {index}: redialling after back-off"
        );
        if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) = stop_rx.recv_timeout(delay)
        {
            break;
        }
    }
    stats.set_state(SessionState::Stopped);
    unfinished
}

/// What a reader thread hands the core.
enum ReadEvent {
    Data(RecvChunk, usize),
    Eof,
    Failed(io::Error),
}

struct ConnectionOutcome {
    reason: Option<CloseReason>,
    /// Time since WELCOME (zero if the handshake never completed).
    uptime: Duration,
    /// What the drain left unfinished when its deadline passed.
    unfinished: DrainTally,
}

/// Run one connection to its end.
#[allow(clippy::too_many_arguments)] // the connection's context, passed once
fn run_connection(
    index: u32,
    stream: BlockingStream,
    plan: &AgentPlan,
    agent: &AgentStats,
    stats: &Arc<SessionStats>,
    counters: ByteCounters,
    stop: &StopHandle,
    stop_rx: &Receiver<()>,
) -> ConnectionOutcome {
    let mut outcome = ConnectionOutcome {
        reason: None,
        uptime: Duration::ZERO,
        unfinished: DrainTally::default(),
    };
    let (reader_stream, writer_stream) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(r), Ok(w)) => (r, w),
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(
                session = index,
                "session {index}: cannot clone the socket: {err}"
            );
            return outcome;
        }
    };
    let (chunk_tx, chunk_rx) = bounded::<ReadEvent>(1);
    let (recycle_tx, recycle_rx) = bounded::<RecvChunk>(2);
    let (write_tx, write_rx) = bounded::<Vec<u8>>(1);
    let (written_tx, written_rx) = bounded::<io::Result<Vec<u8>>>(1);
    let _ = recycle_tx.send(RecvChunk::new(READ_CHUNK));
    let reader_counters = counters.clone();
    let reader = std::thread::Builder::new()
        .name(format!("session-{index}-rx"))
        .stack_size(IO_THREAD_STACK)
        .spawn(move || reader_loop(reader_stream, &reader_counters, &chunk_tx, &recycle_rx));
    let writer = std::thread::Builder::new()
        .name(format!("session-{index}-tx"))
        .stack_size(IO_THREAD_STACK)
        .spawn(move || writer_loop(writer_stream, &counters, &write_rx, &written_tx));
    let (reader, writer) = match (reader, writer) {
        (Ok(r), Ok(w)) => (r, w),
        (r, w) => {
            tracing::error!(
                session = index,
                "session {index}: cannot start the I/O threads"
            );
            let _ = stream.shutdown(Shutdown::Both);
            drop(write_tx);
            if let Ok(r) = r {
                let _ = r.join();
            }
            if let Ok(w) = w {
                let _ = w.join();
            }
            return outcome;
        }
    };

    let started = Instant::now();
    let session = WorkerSession::new(
        index,
        &plan.session,
        plan.handlers.clone(),
        stats.clone(),
        started,
    );
    let mut broken: Option<String> = None;
    let mut session = match &plan.tls {
        None => Link::plain(session),
        Some(tls) => match tls.connect() {
            Ok(conn) => Link::tls(session, conn),
            Err(why) => {
                broken = Some(why);
                Link::plain(session)
            }
        },
    };
    let never_read = never::<ReadEvent>();
    let never_stop = never::<()>();
    let mut spare = Vec::new();
    let mut writer_busy = false;
    let mut reader_done = false;
    // Bytes handed to the session; the reader has counted them first.
    let mut fed = 0u64;
    let mut stop_seen = false;
    let mut drain: Option<StopDrain> = None;
    let beat = agent.register_loop();

    while broken.is_none() {
        let now = Instant::now();
        beat.beat(now);
        if let Some(why) = session.failure().map(str::to_owned) {
            // The alert rustls queued is the last write (awaited below).
            if !writer_busy && session.has_output() {
                let buf = session.take_output(std::mem::take(&mut spare));
                writer_busy = write_tx.send(buf).is_ok();
            }
            broken = Some(why);
            break;
        }
        if !writer_busy {
            if session.has_output() {
                let buf = session.take_output(std::mem::take(&mut spare));
                if write_tx.send(buf).is_err() {
                    broken = Some("connection lost: the writer thread ended".to_owned());
                    break;
                }
                writer_busy = true;
            } else {
                if session.phase() == Phase::GoodbyeDue
                    && !reader_done
                    && stats.bytes_received() > fed
                {
                    // The reader has counted a chunk the session has not
                    // seen. GOODBYE reports every byte read, so the TASKs in
                    // it are answered first: the chunk is already on its way.
                    let until = closing_deadline(now, drain.as_ref());
                    let event = chunk_rx.recv_deadline(until).map_err(|_| RecvError);
                    // (A timeout here means the reader is gone as well.)
                    match take_read_event(&mut session, event, &recycle_tx, &mut fed) {
                        Ok(eof) => reader_done |= eof,
                        Err(why) => {
                            broken = Some(why);
                            break;
                        }
                    }
                    continue;
                }
                session.on_flushed(now);
                if session.has_output() {
                    continue;
                }
                if session.closed().is_some() {
                    break;
                }
            }
        }
        if !stop_seen && stop.is_requested() {
            stop_seen = true;
            drain = Some(StopDrain::start(now, plan.drain_timeout));
            session.start_drain(now);
            continue;
        }
        if let Some(stopping) = drain.filter(|d| d.is_over(now)) {
            // A write that finished meanwhile delivered its RESULTs; the
            // writer thread may not have said so yet (the manager can read
            // the bytes before that thread runs again): give it a moment.
            if writer_busy {
                if let Ok(Ok(_)) = written_rx.recv_timeout(WRITE_REPORT_GRACE) {
                    writer_busy = false;
                    session.output_written();
                }
            }
            let in_flight = if session.closed().is_none() {
                session.in_flight()
            } else {
                0
            };
            outcome.unfinished =
                stopping.timed_out(index, in_flight, session.results_unwritten(), stats);
            break;
        }
        let read_rx = if session.wants_read() && !reader_done {
            &chunk_rx
        } else {
            &never_read
        };
        let stop_branch = if stop_seen { &never_stop } else { stop_rx };
        let deadline = match (session.poll_timeout(), drain.map(|d| d.deadline())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Wake at least once per beat interval, idle or not (the watchdog).
        let timeout = deadline.map_or(LOOP_BEAT_INTERVAL, |d| {
            d.saturating_duration_since(now).min(LOOP_BEAT_INTERVAL)
        });
        select! {
            recv(read_rx) -> event => match take_read_event(&mut session, event, &recycle_tx, &mut fed) {
                Ok(eof) => reader_done |= eof,
                Err(why) => {
                    broken = Some(why);
                    break;
                }
            },
            recv(written_rx) -> result => match result {
                Ok(Ok(buf)) => {
                    writer_busy = false;
                    session.output_written();
                    spare = buf;
                }
                Ok(Err(err)) => {
                    broken = Some(format!("connection lost: write failed: {err}"));
                    break;
                }
                Err(_) => {
                    broken = Some("connection lost: the writer thread ended".to_owned());
                    break;
                }
            },
            recv(stop_branch) -> _ => {
                // The stop sender was dropped: the loop head starts the drain.
            },
            default(timeout) => session.handle_timeout(Instant::now()),
        }
    }

    // Close: finish writing, half-close, read what the manager still sends
    // (so its last bytes are counted and it sees no reset), then tear down.
    // A stopping connection waits for nothing past its drain deadline; one
    // that was already closing when the stop came gets the drain's time
    // from now.
    drop(write_tx);
    let drain = drain.or_else(|| {
        stop.is_requested()
            .then(|| StopDrain::start(Instant::now(), plan.drain_timeout))
    });
    let timed_out =
        !outcome.unfinished.is_clean() || drain.is_some_and(|d| d.is_over(Instant::now()));
    if writer_busy && !timed_out {
        let until = closing_deadline(Instant::now(), drain.as_ref());
        if let Ok(Ok(_)) = written_rx.recv_deadline(until) {
            session.output_written();
        }
    }
    let linger = session.closed().is_some_and(|r| r.wants_linger());
    if broken.is_none() && !timed_out && linger {
        let _ = stream.shutdown(Shutdown::Write);
        let linger_until = closing_deadline(Instant::now(), drain.as_ref());
        if !reader_done {
            while let Ok(ReadEvent::Data(buf, _)) = chunk_rx.recv_deadline(linger_until) {
                let _ = recycle_tx.try_send(buf);
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    drop(recycle_tx);
    drop(chunk_rx);
    let _ = reader.join();
    let _ = writer.join();
    // A stopping connection that ended before its deadline other than by
    // GOODBYE: what it still held counts as the drain's too.
    if let (Some(stopping), true) = (drain, outcome.unfinished.is_clean()) {
        let why = broken
            .clone()
            .or_else(|| session.closed().map(|r| r.to_string()));
        outcome.unfinished = stopping.ended_early(
            index,
            session.in_flight(),
            session.results_unwritten(),
            why.as_deref().unwrap_or("connection closed"),
            stats,
        );
    }

    outcome.uptime = session
        .welcomed_at()
        .map_or(Duration::ZERO, |at| at.elapsed());
    let reason = session.closed().cloned();
    session.log_end(broken.as_deref());
    stats.set_in_flight(0);
    outcome.reason = reason;
    outcome
}

/// Hand one event from the reader to the session. Returns whether it was
/// EOF, or why the connection is over. `fed` adds up the bytes handed over.
fn take_read_event(
    session: &mut Link,
    event: Result<ReadEvent, RecvError>,
    recycle: &Sender<RecvChunk>,
    fed: &mut u64,
) -> Result<bool, String> {
    match event {
        Ok(ReadEvent::Data(buf, n)) => {
            *fed += n as u64;
            session.set_bytes_fed(*fed);
            session.on_input(buf.data(n), Instant::now());
            let _ = recycle.try_send(buf);
            Ok(false)
        }
        Ok(ReadEvent::Eof) => {
            session.on_eof(Instant::now());
            Ok(true)
        }
        Ok(ReadEvent::Failed(err)) => Err(format!("connection lost: read failed: {err}")),
        Err(RecvError) => Err("connection lost: the reader thread ended".to_owned()),
    }
}

/// The reader thread: the runtime's one `recv_raw` call site.
fn reader_loop(
    mut stream: BlockingStream,
    counters: &ByteCounters,
    chunks: &Sender<ReadEvent>,
    recycled: &Receiver<RecvChunk>,
) {
    let Ok(mut buf) = recycled.recv() else {
        return;
    };
    loop {
        match recv_raw(&mut stream, buf.space(), counters) {
            Ok(0) => {
                let _ = chunks.send(ReadEvent::Eof);
                return;
            }
            Ok(n) => {
                if chunks.send(ReadEvent::Data(buf, n)).is_err() {
                    return;
                }
                buf = match recycled.recv() {
                    Ok(buf) => buf,
                    Err(_) => return,
                };
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                let _ = chunks.send(ReadEvent::Failed(err));
                return;
            }
        }
    }
}

/// The writer thread: the runtime's one `send_raw` call site.
fn writer_loop(
    mut stream: BlockingStream,
    counters: &ByteCounters,
    buffers: &Receiver<Vec<u8>>,
    written: &Sender<io::Result<Vec<u8>>>,
) {
    for mut buf in buffers {
        let result = send_raw(&mut stream, &buf, counters);
        buf.clear();
        let failed = result.is_err();
        if written.send(result.map(|()| buf)).is_err() || failed {
            return;
        }
    }
}

/// Read once from the socket, counting what the kernel returned.
fn recv_raw(
    stream: &mut BlockingStream,
    buf: &mut [u8],
    counters: &ByteCounters,
) -> io::Result<usize> {
    let n = stream.read(buf)?;
    counters.received(n);
    Ok(n)
}

/// Write all of `bytes`, counting each partial write as the kernel reports it.
fn send_raw(
    stream: &mut BlockingStream,
    mut bytes: &[u8],
    counters: &ByteCounters,
) -> io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                counters.sent(n);
                bytes = &bytes[n..];
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
