//! `BlockingRuntime`: std::net sockets and std::thread, simple and debuggable.
//!
//! Each session has one thread, its supervisor, that lives as long as the
//! session: it dials, drives the [`Connection`] (and so the
//! `WorkerSession`, the built-in handlers and the timers) and backs off
//! between dials. While connected, two more threads do the socket calls,
//! joined to it by crossbeam channels: a reader (the one `recv_raw`) and a
//! writer (the one `send_raw`), started with the connection and joined
//! when it closes; three threads per connected session in all. The
//! channels are bounded and buffers circulate between the threads, so
//! memory per connection is fixed: two read chunks, the frame being
//! received (at most `max_body` + 16) and the queued output. When the
//! session holds `max_in_flight` tasks the supervisor stops taking chunks,
//! the reader blocks, and TCP flow control slows the manager.
//!
//! Declared handlers (`[handlers.NAME]`) run on one more thread for the
//! whole agent, started only when some are declared: the
//! [`Driver`], which owns their children. A
//! supervisor hands it each job ([`Action::Run`]) routed by (session,
//! connection generation), waits for the answers beside its socket events
//! and gives them to the connection; a job still running counts as a task
//! in flight, so a drain waits for it up to its deadline. A closed
//! connection's route is forgotten: its `exec` children are killed and its
//! answers dropped. The driver's thread publishes the handlers' states for
//! `/status` once a second, and is stopped (every child killed and reaped)
//! after the last supervisor has ended.
//!
//! This runtime is also the fallback where io_uring is unavailable.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, never, select, Receiver, RecvError, Sender};

use super::{
    AgentPlan, ByteCounters, RecvChunk, RunReport, RuntimeError, RuntimeKind, RuntimeMode,
    StopHandle,
};
use crate::connection::drain::DrainTally;
use crate::connection::{Action, Connection, Receive, READ_CHUNK};
use crate::exec::driver::{Answer, Driver, Submitter};
use crate::exec::Outcome;
use crate::handlers::Job;
use crate::protocol::codes::HANDLER_FAILED;
use crate::stats::{AgentStats, LoopBeat, SessionStats, LOOP_BEAT_INTERVAL};
use crate::transport::BlockingStream;

/// How long a drain that ran out of time waits for the writer thread to
/// report a write under way, before counting its RESULTs as undelivered.
const WRITE_REPORT_GRACE: Duration = Duration::from_millis(50);
/// Stack size of the per-connection reader and writer threads.
const IO_THREAD_STACK: usize = 128 * 1024;
/// How often the declared handlers' thread publishes their states
/// (`/status`).
const HANDLER_STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Whom a declared handler's answer goes to: (session index, connection
/// generation).
type Route = (u32, u32);

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
    /// The declared handlers' thread, when any handler is declared.
    handlers: Option<Driver<Route>>,
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
            handlers: None,
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
        let declared = self.plan.handlers.declared();
        if !declared.handlers.is_empty() {
            let stats = self.stats.clone();
            let driver = Driver::start_reporting(
                declared,
                super::handler_queue_bound(self.plan.sessions, &self.plan),
                HANDLER_STATUS_INTERVAL,
                move |status| stats.publish_handlers(0, status),
            )
            .map_err(RuntimeError::Handlers)?;
            self.handlers = Some(driver);
        }
        for index in 0..self.plan.sessions {
            let plan = self.plan.clone();
            let stats = self.stats.clone();
            let stop = self.stop.clone();
            let stop_rx = self.stop_rx.clone();
            // Registered before the session runs: no answer can precede it.
            let handlers = self.handlers.as_ref().map(|driver| Handlers {
                submitter: driver.submitter(),
                answers: driver.register(index),
            });
            let handle = std::thread::Builder::new()
                .name(format!("session-{index}"))
                .spawn(move || supervise(index, &plan, &stats, &stop, &stop_rx, handlers))
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
        // Every session has ended and forgotten its connections: what is
        // left of the handlers' children is killed and reaped.
        if let Some(driver) = self.handlers.take() {
            driver.stop();
        }
        // Keep the sender alive until here so that supervisors never see a
        // spurious stop; after wait, nothing listens any more.
        if let Ok(mut tx) = self.stop_tx.lock() {
            tx.take();
        }
        report
    }
}

/// A session's way to the declared handlers' thread.
struct Handlers {
    submitter: Submitter<Route>,
    /// The answers to this session's jobs.
    answers: Receiver<Answer<Route>>,
}

/// One session: its [`Connection`] driven with blocking calls until it
/// stops. Returns what its drains left unfinished.
fn supervise(
    index: u32,
    plan: &Arc<AgentPlan>,
    agent: &Arc<AgentStats>,
    stop: &StopHandle,
    stop_rx: &Receiver<()>,
    mut handlers: Option<Handlers>,
) -> DrainTally {
    let mut conn = Connection::new(index, plan.clone(), agent.clone(), Instant::now());
    // A handler answering from another thread rings this; the loop's poll
    // takes the answer. With no such handler the sender is dropped at once,
    // and waiting on its disconnected channel would never block.
    let (late_tx, late_rx) = bounded::<()>(1);
    let late_rx = if conn.set_waker(Arc::new(move || {
        let _ = late_tx.try_send(());
    })) {
        late_rx
    } else {
        never()
    };
    let mut io: Option<Io> = None;
    let mut stop_seen = false;
    let never_read = never::<ReadEvent>();
    let never_written = never::<io::Result<Vec<u8>>>();
    let never_stop = never::<()>();
    let never_answered = never::<Answer<Route>>();
    loop {
        let now = Instant::now();
        if !stop_seen && stop.is_requested() {
            stop_seen = true;
            conn.request_stop(now);
        }
        if let Some(io) = io.as_mut() {
            io.beat.beat(now);
            if io.settle_before_poll(&mut conn, now) {
                continue;
            }
        }
        match conn.poll(now) {
            Action::Wait => {}
            Action::Dial => {
                conn.on_dialling(now);
                match Io::connect(index, plan, agent, conn.stats()) {
                    Ok(started) => {
                        io = Some(started);
                        conn.on_connected(Instant::now());
                    }
                    Err(why) => conn.on_dial_failed(why, Instant::now()),
                }
                continue;
            }
            Action::Send(bytes) => {
                match io.as_mut() {
                    Some(io) if io.write_tx.send(bytes).is_ok() => io.writer_busy = true,
                    _ => conn.on_io_error("connection lost: the writer thread ended".to_owned()),
                }
                continue;
            }
            Action::Run(job) => {
                run(index, &mut conn, handlers.as_ref(), job);
                continue;
            }
            // Reads here always report what they got (no wait-all receive).
            Action::Collect => {
                conn.on_receive_cancelled();
                continue;
            }
            Action::ShutdownWrite => {
                if let Some(io) = &io {
                    let _ = io.stream.shutdown(Shutdown::Write);
                }
                continue;
            }
            Action::Close => {
                if let Some(io) = io.take() {
                    // Its children are killed and its answers dropped.
                    if let Some(handlers) = &handlers {
                        handlers.submitter.forget((index, conn.generation()));
                    }
                    io.close();
                }
                if let Some(refusal) = conn.on_closed(Instant::now()) {
                    stop.fail(refusal);
                }
                continue;
            }
            Action::Stop => break,
        }
        // Wait for the reader, the writer, a job's answer, a stop or the
        // next deadline; at least once per beat interval, idle or not (the
        // watchdog).
        let (read_rx, written_rx) = match &io {
            Some(io) => (
                if conn.receive() != Receive::Off && !io.reader_done {
                    &io.chunk_rx
                } else {
                    &never_read
                },
                if io.writer_busy {
                    &io.written_rx
                } else {
                    &never_written
                },
            ),
            None => (&never_read, &never_written),
        };
        let stop_branch = if stop_seen { &never_stop } else { stop_rx };
        let answer_rx = handlers.as_ref().map_or(&never_answered, |h| &h.answers);
        let timeout = conn.poll_timeout().map_or(LOOP_BEAT_INTERVAL, |at| {
            at.saturating_duration_since(now).min(LOOP_BEAT_INTERVAL)
        });
        let woke = select! {
            recv(read_rx) -> event => Woke::Read(event),
            recv(written_rx) -> result => Woke::Written(result),
            recv(answer_rx) -> answer => Woke::Answer(answer),
            recv(late_rx) -> _ => Woke::Nothing,
            // The stop sender was dropped: the loop head starts the drain.
            recv(stop_branch) -> _ => Woke::Nothing,
            default(timeout) => Woke::Nothing,
        };
        match woke {
            Woke::Answer(Ok(answer)) => {
                // An answer for a closed connection is dropped there.
                let (_, generation) = answer.route;
                conn.on_job_done(generation, answer.task, answer.outcome, Instant::now());
            }
            Woke::Answer(Err(RecvError)) => {
                // Its thread ended before the sessions did: it answered
                // the jobs it held unless it panicked. A job submitted
                // from here on is refused at once.
                tracing::error!(session = index, "the declared handlers' thread has ended");
                if let Some(handlers) = handlers.as_mut() {
                    handlers.answers = never();
                }
            }
            woke => {
                if let Some(io) = io.as_mut() {
                    io.take(woke, &mut conn);
                }
            }
        }
    }
    conn.unfinished()
}

/// Hand `job` to the declared handlers' thread; answer it FAILED at once
/// when nothing can run it.
fn run(index: u32, conn: &mut Connection, handlers: Option<&Handlers>, job: Job) {
    let generation = conn.generation();
    let Some(handlers) = handlers else {
        conn.on_job_done(generation, job.task, super::no_runner(), Instant::now());
        return;
    };
    if let Err(job) = handlers.submitter.submit((index, generation), job) {
        let outcome = Outcome::failed(HANDLER_FAILED, "the declared handlers have stopped");
        conn.on_job_done(generation, job.task, outcome, Instant::now());
    }
}

/// What woke a waiting session.
enum Woke {
    Read(Result<ReadEvent, RecvError>),
    Written(Result<io::Result<Vec<u8>>, RecvError>),
    Answer(Result<Answer<Route>, RecvError>),
    Nothing,
}

/// What a reader thread hands the session.
enum ReadEvent {
    Data(RecvChunk, usize),
    Eof,
    Failed(io::Error),
}

/// One connection's socket and its reader and writer threads.
struct Io {
    stream: BlockingStream,
    chunk_rx: Receiver<ReadEvent>,
    recycle_tx: Sender<RecvChunk>,
    write_tx: Sender<Vec<u8>>,
    written_rx: Receiver<io::Result<Vec<u8>>>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
    writer_busy: bool,
    reader_done: bool,
    /// Bytes handed to the session; the reader has counted them first.
    fed: u64,
    beat: LoopBeat,
}

impl Io {
    /// Dial the manager and start the connection's reader and writer.
    fn connect(
        index: u32,
        plan: &AgentPlan,
        agent: &AgentStats,
        stats: &Arc<SessionStats>,
    ) -> Result<Io, String> {
        let stream = BlockingStream::connect(&plan.endpoint, plan.connect_timeout, &plan.tcp)
            .map_err(|err| format!("cannot reach manager {}: {err}", plan.endpoint))?;
        let cloned = stream
            .try_clone()
            .and_then(|r| Ok((r, stream.try_clone()?)));
        let (reader_stream, writer_stream) =
            cloned.map_err(|err| format!("cannot clone the socket: {err}"))?;
        let counters = ByteCounters::new(stats.clone());
        let (chunk_tx, chunk_rx) = bounded::<ReadEvent>(1);
        let (recycle_tx, recycle_rx) = bounded::<RecvChunk>(2);
        let (write_tx, write_rx) = bounded::<Vec<u8>>(1);
        let (written_tx, written_rx) = bounded::<io::Result<Vec<u8>>>(1);
        // Two chunks: the reader fills one while the session decodes the
        // other, rather than waiting for it back after every read.
        for _ in 0..2 {
            let _ = recycle_tx.send(RecvChunk::new(READ_CHUNK));
        }
        let reader_counters = counters.clone();
        let reader = std::thread::Builder::new()
            .name(format!("session-{index}-rx"))
            .stack_size(IO_THREAD_STACK)
            .spawn(move || reader_loop(reader_stream, &reader_counters, &chunk_tx, &recycle_rx));
        let writer = std::thread::Builder::new()
            .name(format!("session-{index}-tx"))
            .stack_size(IO_THREAD_STACK)
            .spawn(move || writer_loop(writer_stream, &counters, &write_rx, &written_tx));
        match (reader, writer) {
            (Ok(reader), Ok(writer)) => Ok(Io {
                stream,
                chunk_rx,
                recycle_tx,
                write_tx,
                written_rx,
                reader,
                writer,
                writer_busy: false,
                reader_done: false,
                fed: 0,
                beat: agent.register_loop(),
            }),
            (reader, writer) => {
                let _ = stream.shutdown(Shutdown::Both);
                drop(write_tx);
                drop(recycle_tx);
                drop(chunk_rx);
                if let Ok(reader) = reader {
                    let _ = reader.join();
                }
                if let Ok(writer) = writer {
                    let _ = writer.join();
                }
                Err("cannot start the connection's I/O threads".to_owned())
            }
        }
    }

    /// Before the connection decides, settle what only this runtime can
    /// know: a write that finished but is not reported yet, and bytes the
    /// reader counted but the session has not seen. Returns whether it
    /// handled something (the caller polls again).
    fn settle_before_poll(&mut self, conn: &mut Connection, now: Instant) -> bool {
        if self.writer_busy && conn.drain_over(now) {
            // A write that finished meanwhile delivered its RESULTs; the
            // writer thread may not have said so yet (the manager can read
            // the bytes before that thread runs again): give it a moment.
            let result = self.written_rx.recv_timeout(WRITE_REPORT_GRACE);
            if let Ok(result) = result {
                self.take(Woke::Written(Ok(result)), conn);
            }
            return false;
        }
        if !self.writer_busy
            && !self.reader_done
            && conn.goodbye_due()
            && conn.stats().bytes_received() > self.fed
        {
            // GOODBYE reports every byte read, so the TASKs in a chunk the
            // reader has counted are answered first: it is on its way. (A
            // timeout here means the reader is gone as well.)
            let until = conn.closing_deadline(now);
            let event = self.chunk_rx.recv_deadline(until).map_err(|_| RecvError);
            self.take(Woke::Read(event), conn);
            return true;
        }
        false
    }

    /// Hand what woke the session to its connection.
    fn take(&mut self, woke: Woke, conn: &mut Connection) {
        match woke {
            Woke::Read(Ok(ReadEvent::Data(buf, n))) => {
                self.fed += n as u64;
                conn.set_bytes_fed(self.fed);
                conn.on_input(buf.data(n), Instant::now());
                let _ = self.recycle_tx.try_send(buf);
            }
            Woke::Read(Ok(ReadEvent::Eof)) => {
                self.reader_done = true;
                conn.on_eof(Instant::now());
            }
            Woke::Read(Ok(ReadEvent::Failed(err))) => {
                self.reader_done = true;
                conn.on_io_error(format!("connection lost: read failed: {err}"));
            }
            Woke::Read(Err(RecvError)) => {
                self.reader_done = true;
                conn.on_io_error("connection lost: the reader thread ended".to_owned());
            }
            Woke::Written(Ok(Ok(buf))) => {
                self.writer_busy = false;
                conn.on_sent(buf);
            }
            Woke::Written(Ok(Err(err))) => {
                self.writer_busy = false;
                conn.on_io_error(format!("connection lost: write failed: {err}"));
            }
            Woke::Written(Err(RecvError)) => {
                self.writer_busy = false;
                conn.on_io_error("connection lost: the writer thread ended".to_owned());
            }
            Woke::Answer(_) | Woke::Nothing => {}
        }
    }

    /// Close the socket and end both threads.
    fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        drop(self.write_tx);
        drop(self.recycle_tx);
        drop(self.chunk_rx);
        let _ = self.reader.join();
        let _ = self.writer.join();
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
