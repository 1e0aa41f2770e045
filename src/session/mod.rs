//! `WorkerSession`: one connection's protocol machine plus the handlers that
//! answer its tasks, the timers of delayed results, task counts and the
//! formatted byte totals.
//!
//! It is what both runtimes drive, so nothing above the socket branches on the
//! runtime: a runtime reads bytes into [`WorkerSession::recv_space`], reports
//! them with [`WorkerSession::on_received`], writes what
//! [`WorkerSession::take_output`] returns, tells [`WorkerSession::on_flushed`]
//! when everything is on the wire, and calls
//! [`WorkerSession::handle_timeout`] at [`WorkerSession::poll_timeout`]. It
//! never touches a socket and never reads the clock for protocol decisions
//! (time comes in as arguments).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::format::format_bytes;
use crate::handlers::{Handler, HandlerRegistry, Reply, TaskFailure};
use crate::protocol::frame::MAX_HANDLER_NAME;
use crate::protocol::machine::{MachineConfig, NotInFlight};
use crate::protocol::{
    CloseReason, Event, Hello, Phase, TaskOutcome, TaskRequest, WorkerMachine, PROTOCOL_VERSION,
};
use crate::stats::{SessionState, SessionStats};

/// What every connection of an agent shares.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub worker_id: String,
    pub runtime: &'static str,
    pub max_body: u32,
    pub max_in_flight: u32,
    pub token: Option<String>,
    pub handshake_timeout: Duration,
}

impl SessionConfig {
    fn hello(&self, session: u32, handlers: &HandlerRegistry) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            worker: self.worker_id.clone(),
            session,
            runtime: self.runtime.to_owned(),
            max_body: self.max_body,
            max_in_flight: self.max_in_flight,
            handlers: handlers.names(),
            token: self.token.clone(),
        }
    }
}

/// A task whose output is ready but due later (the `sleep` handler).
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Delayed {
    due: Instant,
    seq: u64,
    id: u64,
    handler: Option<usize>,
    output: Result<Vec<u8>, (&'static str, String)>,
}

/// One task in this many has its handler time measured for
/// `ringworker_task_duration_seconds` (delayed answers always are).
pub const TIMING_SAMPLE: u64 = 16;

/// One connection of one session, above the socket.
#[derive(Debug)]
pub struct WorkerSession {
    index: u32,
    machine: WorkerMachine,
    runner: TaskRunner,
    stats: Arc<SessionStats>,
    scratch: Vec<u8>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    tasks_this_connection: u64,
    closed: Option<CloseReason>,
    welcomed_at: Option<Instant>,
    /// Bytes the driver has handed over, when it reads on another thread
    /// ([`WorkerSession::set_bytes_fed`]): GOODBYE reports these.
    bytes_fed: Option<u64>,
}

/// The handlers of a session, found by name and timed.
#[derive(Debug)]
struct TaskRunner {
    handlers: HandlerRegistry,
    /// `ringworker_task_duration_seconds{handler}`, by registry position.
    durations: Vec<::metrics::Histogram>,
    timing_tick: u64,
    /// By registry position: the handler appends its output, so it may write
    /// straight into the machine's output buffer.
    appends_output: Vec<bool>,
    last_handler: Option<usize>,
    /// The name of `last_handler`, the first `last_name_len` bytes.
    last_name: [u8; MAX_HANDLER_NAME],
    last_name_len: u8,
}

impl TaskRunner {
    /// Whether the handler at `index` appends its output.
    #[inline]
    fn appends_output(&self, index: usize) -> bool {
        self.appends_output.get(index).copied().unwrap_or(false)
    }

    /// The registry position of the handler named `name`.
    #[inline(always)]
    fn find(&mut self, name: &[u8]) -> Option<usize> {
        // Most sessions run one or a few handlers: try the last one looked
        // up before searching the registry.
        // Its name is kept here, in the session, rather than behind the
        // registry's pointers.
        if let Some(index) = self.last_handler {
            if self
                .last_name
                .get(..usize::from(self.last_name_len))
                .is_some_and(|known| same_name(known, name))
            {
                return Some(index);
            }
        }
        self.find_in_registry(name)
    }

    #[inline(never)]
    fn find_in_registry(&mut self, name: &[u8]) -> Option<usize> {
        let found = self.handlers.lookup(std::str::from_utf8(name).ok()?);
        let (index, _) = found?;
        if let Some(slot) = self.last_name.get_mut(..name.len()) {
            slot.copy_from_slice(name);
            self.last_name_len = name.len() as u8;
            self.last_handler = Some(index);
        }
        Some(index)
    }

    /// Run the handler [`TaskRunner::find`] found for `name` on `payload`,
    /// appending its output to `out`.
    #[inline]
    fn call(
        &mut self,
        found: Option<usize>,
        name: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Reply, TaskFailure> {
        let Some((index, handler)) = found.and_then(|index| self.handlers.lookup_index(index))
        else {
            return Err(TaskFailure {
                code: crate::protocol::codes::UNKNOWN_HANDLER,
                message: format!("no handler named {:?}", String::from_utf8_lossy(name)),
            });
        };
        // One task in TIMING_SAMPLE is timed: two clock reads per task would
        // cost more than the rest of the metrics.
        self.timing_tick = self.timing_tick.wrapping_add(1);
        if self.timing_tick % TIMING_SAMPLE != 0 {
            return contained(&**handler, payload, out);
        }
        let started = Instant::now();
        let reply = contained(&**handler, payload, out);
        if let Some(histogram) = self.durations.get(index) {
            histogram.record(started.elapsed().as_secs_f64());
        }
        reply
    }

    /// A delayed answer's handler time is its delay.
    fn record_delay(&self, handler: Option<usize>, delay: Duration) {
        if let Some(histogram) = handler.and_then(|index| self.durations.get(index)) {
            histogram.record(delay.as_secs_f64());
        }
    }
}

/// Run `handler`, turning a panic into a `handler_failed` answer: a bug in
/// one handler fails its task, not the session or the event loop with every
/// session on it. What it appended before panicking is discarded like any
/// failed call's output.
#[inline(always)]
fn contained(
    handler: &dyn Handler,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<Reply, TaskFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.call(payload, out))) {
        Ok(reply) => reply,
        Err(panic) => Err(panicked(panic)),
    }
}

#[cold]
#[inline(never)]
fn panicked(panic: Box<dyn std::any::Any + Send>) -> TaskFailure {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    TaskFailure::handler_failed(format!("the handler panicked: {what}"))
}

/// Equality of two short names, inlined rather than a call to `memcmp`: a
/// name of 4 to 16 bytes is compared as two overlapping words, its first
/// and its last 4 (or 8).
#[inline]
fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    fn ends<const N: usize>(x: &[u8]) -> Option<(&[u8; N], &[u8; N])> {
        Some((x.first_chunk::<N>()?, x.last_chunk::<N>()?))
    }
    match a.len() {
        4..=8 => ends::<4>(a) == ends::<4>(b),
        9..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}

impl WorkerSession {
    /// A session for a connection that came up at `now`. HELLO is queued.
    pub fn new(
        index: u32,
        config: &SessionConfig,
        handlers: HandlerRegistry,
        stats: Arc<SessionStats>,
        now: Instant,
    ) -> Self {
        let mut machine_config = MachineConfig::new(config.hello(index, &handlers));
        machine_config.handshake_timeout = config.handshake_timeout;
        stats.set_state(SessionState::Handshaking);
        let durations = handlers
            .names()
            .iter()
            .map(|name| ::metrics::histogram!(crate::metrics::TASK_DURATION, "handler" => name.clone()))
            .collect();
        WorkerSession {
            index,
            machine: WorkerMachine::new(machine_config, now),
            runner: TaskRunner {
                appends_output: handlers.appends_output(),
                handlers,
                durations,
                timing_tick: 0,
                last_handler: None,
                last_name: [0; MAX_HANDLER_NAME],
                last_name_len: 0,
            },
            stats,
            scratch: Vec::new(),
            delayed: BinaryHeap::new(),
            delayed_seq: 0,
            tasks_this_connection: 0,
            closed: None,
            welcomed_at: None,
            bytes_fed: None,
        }
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn stats(&self) -> &Arc<SessionStats> {
        &self.stats
    }

    pub fn phase(&self) -> Phase {
        self.machine.phase()
    }

    /// Whether the runtime should read from the socket now.
    pub fn wants_read(&self) -> bool {
        self.machine.wants_read()
    }

    /// How many bytes the next read should ask for, given a preferred chunk.
    pub fn recv_hint(&self, chunk: usize) -> usize {
        self.machine.recv_hint(chunk)
    }

    /// Space to read into directly.
    pub fn recv_space(&mut self, min: usize) -> &mut [u8] {
        self.machine.recv_space(min)
    }

    /// `n` bytes were read into [`WorkerSession::recv_space`]: decode and run
    /// whatever they complete.
    pub fn on_received(&mut self, n: usize, now: Instant) {
        self.machine.handle_received(n, now);
        self.process(now);
    }

    /// Bytes read elsewhere (a provided buffer, a channel): decode and run
    /// whatever they complete.
    ///
    /// Whole frames are decoded where they lie in `bytes`; only what cannot
    /// be acted on yet (the start of a frame, or frames held back by a full
    /// window) is copied into the frame buffer. A frame whose start is
    /// already buffered is completed there first.
    pub fn on_input(&mut self, bytes: &[u8], now: Instant) {
        self.machine.note_input(bytes.len(), now);
        let mut input = bytes;
        if self.machine.buffered() > 0 {
            let taken = self.machine.complete_buffered(input);
            input = input.get(taken..).unwrap_or_default();
            // Frames after the completed one are still in `input`.
            self.machine.set_more_input(!input.is_empty());
            self.process_buffered(now);
            if self.machine.buffered() > 0 {
                // Held back (a full window) or still incomplete.
                self.machine.stash_input(input);
                self.after_events();
                return;
            }
        }
        while let Some(event) = self.machine.poll_input(&mut input, now) {
            match event {
                Event::Task(task) => self.run_task(task, now),
                other => self.on_event(other, now),
            }
        }
        self.machine.stash_input(input);
        self.after_events();
    }

    /// The manager closed its side of the stream.
    pub fn on_eof(&mut self, now: Instant) {
        self.machine.handle_eof(now);
        self.process(now);
    }

    /// Start a worker-initiated drain.
    pub fn start_drain(&mut self, now: Instant) {
        self.machine.start_drain(now);
        self.process(now);
    }

    /// The next instant at which [`WorkerSession::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse(d)| d.due);
        match (self.machine.poll_timeout(), delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire due timers: delayed results, heartbeats, the handshake timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse(next)) = self.delayed.peek() {
            if next.due > now {
                break;
            }
            let Some(Reverse(delayed)) = self.delayed.pop() else {
                break;
            };
            let outcome = match &delayed.output {
                Ok(output) => TaskOutcome::Ok(output),
                Err((code, message)) => TaskOutcome::Failed { code, message },
            };
            self.finish(delayed.id, delayed.handler, outcome, now);
        }
        self.machine.handle_timeout(now);
        self.process(now);
    }

    /// Whether bytes wait to be written.
    pub fn has_output(&self) -> bool {
        self.machine.has_output()
    }

    /// The bytes to write next; `spare` becomes the new (empty) output buffer.
    pub fn take_output(&mut self, spare: Vec<u8>) -> Vec<u8> {
        self.machine.take_output(spare)
    }

    /// The output taken last has been written in full (see
    /// [`WorkerSession::results_unwritten`]).
    pub fn output_written(&mut self) {
        self.machine.output_written();
    }

    /// RESULTs queued or under way and not yet known to be written.
    pub fn results_unwritten(&self) -> u64 {
        self.machine.results_unwritten()
    }

    /// The bytes to write next, for runtimes that write in place.
    pub fn pending_output(&self) -> &[u8] {
        self.machine.pending_output()
    }

    /// `n` bytes of [`WorkerSession::pending_output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.machine.consume_output(n);
    }

    /// Everything handed out so far is on the wire. This is when GOODBYE is
    /// written, so its counters are exact.
    pub fn on_flushed(&mut self, now: Instant) {
        self.machine.output_written();
        if self.machine.phase() == Phase::GoodbyeDue && !self.machine.has_output() {
            let received = self
                .bytes_fed
                .unwrap_or_else(|| self.stats.bytes_received());
            self.machine
                .write_goodbye(self.stats.bytes_sent(), received);
            self.process(now);
        }
    }

    /// For a driver whose reads are counted on another thread before they
    /// reach the session: the bytes handed over so far on this connection.
    /// GOODBYE's `bytes_received` is then this count, so it never includes
    /// bytes read after the session decided to say GOODBYE.
    pub fn set_bytes_fed(&mut self, fed: u64) {
        self.bytes_fed = Some(fed);
    }

    /// Why the connection ended, once it has; flush the output, then close.
    pub fn closed(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// When WELCOME arrived, if it has.
    pub fn welcomed_at(&self) -> Option<Instant> {
        self.welcomed_at
    }

    /// Tasks read and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.machine.in_flight()
    }

    /// RESULTs written on this connection.
    pub fn tasks_this_connection(&self) -> u64 {
        self.tasks_this_connection
    }

    /// Log how the connection ended: a warning with the reason when it was
    /// not graceful (`broken` is set when the socket failed under it), then
    /// the totals line.
    pub fn log_end(&self, broken: Option<&str>) {
        let index = self.index;
        // Repeated lines of one kind (a manager that refuses every session
        // the same way) are counted, not repeated: log_limit.
        let now = Instant::now();
        match (&self.closed, broken) {
            (Some(reason), None) if reason.is_graceful() => {}
            (Some(reason), None) => {
                crate::log_limit::warn_session(index, &reason.to_string(), now);
            }
            (_, Some(why)) => {
                let lost = self.in_flight();
                self.stats.set_last_error(Some(why.to_owned()));
                if lost > 0 {
                    let what = format!("{why}; {lost} tasks in flight lost to it");
                    crate::log_limit::warn_session(index, &what, now);
                } else {
                    crate::log_limit::warn_session(index, why, now);
                }
            }
            (None, None) => {}
        }
        // Text lines end as AGENT.md shows them, so the totals are fields
        // only where fields have keys of their own (JSON logs).
        let json = crate::logging::current_format(crate::config::LogFormat::Text)
            == crate::config::LogFormat::Json;
        if json {
            tracing::info!(
                session = index,
                bytes_sent = self.stats.bytes_sent(),
                bytes_received = self.stats.bytes_received(),
                tasks = self.tasks_this_connection,
                "{}",
                self.summary_line()
            );
        } else {
            tracing::info!("{}", self.summary_line());
        }
    }

    /// The line logged when the connection ends (AGENT.md).
    pub fn summary_line(&self) -> String {
        let sent = self.stats.bytes_sent();
        let received = self.stats.bytes_received();
        format!(
            "session {} closed: sent {} ({} B), received {} ({} B), {} tasks",
            self.index,
            format_bytes(sent),
            sent,
            format_bytes(received),
            received,
            self.tasks_this_connection
        )
    }

    fn process(&mut self, now: Instant) {
        self.process_buffered(now);
        self.after_events();
    }

    /// Act on the frames in the machine's receive buffer.
    fn process_buffered(&mut self, now: Instant) {
        while let Some(event) = self.machine.poll_event(now) {
            match event {
                Event::Task(task) => {
                    let (id, payload_len) = (task.id, task.payload.len());
                    let found = self.runner.find(task.handler);
                    if let Some(index) = found.filter(|&index| self.runner.appends_output(index)) {
                        // The payload is read from the receive buffer while
                        // the handler appends to the output.
                        let (payload, out) = self.machine.begin_buffered_result(id, payload_len);
                        let reply = self.runner.call(found, b"", payload, out);
                        self.answer_begun(id, index, reply, now);
                        continue;
                    }
                    self.scratch.clear();
                    let reply =
                        self.runner
                            .call(found, task.handler, task.payload, &mut self.scratch);
                    self.answer_from_scratch(id, found, reply, now);
                }
                Event::Welcomed(welcome) => self.on_event(Event::Welcomed(welcome), now),
                Event::DrainRequested => self.on_event(Event::DrainRequested, now),
                Event::Closed(reason) => self.on_event(Event::Closed(reason), now),
            }
        }
    }

    /// Run a task decoded in place. A handler that appends its output writes
    /// the RESULT body straight into the output buffer.
    #[inline(always)]
    fn run_task(&mut self, task: TaskRequest<'_>, now: Instant) {
        let found = self.runner.find(task.handler);
        if let Some(index) = found.filter(|&index| self.runner.appends_output(index)) {
            let out = self.machine.begin_result(task.id);
            let reply = self.runner.call(found, task.handler, task.payload, out);
            self.answer_begun(task.id, index, reply, now);
            return;
        }
        self.run_into_scratch(task, found, now);
    }

    /// Answer a task whose RESULT was begun in the output buffer
    /// ([`WorkerMachine::begin_result`]) and written by handler `index`.
    #[inline(always)]
    fn answer_begun(
        &mut self,
        id: u64,
        index: usize,
        reply: Result<Reply, TaskFailure>,
        now: Instant,
    ) {
        match reply {
            Ok(Reply::Ready) => match self.machine.commit_result(id, now) {
                Ok(len) => {
                    let ok = len <= self.machine.peer_max_body() as usize;
                    self.count_answer(Some(index), ok);
                }
                Err(NotInFlight(id)) => self.not_in_flight(id),
            },
            other => self.answer_begun_later(id, Some(index), other, now),
        }
    }

    /// The handler that appended its output did not answer at once: keep
    /// what it wrote for later (a delayed answer), or drop it (a failure).
    #[cold]
    #[inline(never)]
    fn answer_begun_later(
        &mut self,
        id: u64,
        handler: Option<usize>,
        reply: Result<Reply, TaskFailure>,
        now: Instant,
    ) {
        match reply {
            Ok(Reply::After(delay)) => {
                let body = self.machine.result_body();
                let output = if body.is_empty() {
                    Vec::new()
                } else {
                    body.to_vec()
                };
                self.machine.abandon_result();
                self.runner.record_delay(handler, delay);
                self.schedule(id, handler, now + delay, Ok(output));
            }
            other => {
                self.machine.abandon_result();
                self.answer_from_scratch(id, handler, other, now);
            }
        }
    }

    /// A task for a handler with a buffer of its own, or for no handler.
    #[inline(never)]
    fn run_into_scratch(&mut self, task: TaskRequest<'_>, found: Option<usize>, now: Instant) {
        self.scratch.clear();
        let reply = self
            .runner
            .call(found, task.handler, task.payload, &mut self.scratch);
        self.answer_from_scratch(task.id, found, reply, now);
    }

    /// Answer a task whose handler wrote its output into the scratch buffer.
    fn answer_from_scratch(
        &mut self,
        id: u64,
        handler: Option<usize>,
        reply: Result<Reply, TaskFailure>,
        now: Instant,
    ) {
        match reply {
            Ok(Reply::Ready) => {
                let output = std::mem::take(&mut self.scratch);
                self.finish(id, handler, TaskOutcome::Ok(&output), now);
                self.scratch = output;
            }
            Ok(Reply::After(delay)) => {
                self.runner.record_delay(handler, delay);
                let output = if self.scratch.is_empty() {
                    Vec::new()
                } else {
                    self.scratch.clone()
                };
                self.schedule(id, handler, now + delay, Ok(output));
            }
            Err(TaskFailure { code, message }) => {
                self.finish(
                    id,
                    handler,
                    TaskOutcome::Failed {
                        code,
                        message: &message,
                    },
                    now,
                );
            }
        }
    }

    /// Anything but a task.
    #[cold]
    fn on_event(&mut self, event: Event<'_>, now: Instant) {
        match event {
            Event::Welcomed(welcome) => {
                self.welcomed_at = Some(now);
                self.stats
                    .set_state(if self.machine.phase() == Phase::Active {
                        SessionState::Connected
                    } else {
                        SessionState::Draining
                    });
                self.stats.set_last_error(None);
                crate::log_limit::report_suppressed(self.index);
                tracing::info!(
                    session = self.index,
                    manager = %welcome.manager,
                    manager_max_body = welcome.max_body,
                    heartbeat_ms = welcome.heartbeat_ms,
                    "session {} connected: WELCOME from manager {:?}",
                    self.index,
                    welcome.manager
                );
            }
            Event::Task(task) => {
                // Not reached: tasks are matched before; run it all the same.
                self.run_task(task, now);
            }
            Event::DrainRequested => {
                self.stats.set_state(SessionState::Draining);
                tracing::info!(
                    session = self.index,
                    "session {}: manager asked for a drain",
                    self.index
                );
            }
            Event::Closed(reason) => {
                if !reason.is_graceful() {
                    self.stats.set_last_error(Some(reason.to_string()));
                }
                self.closed = Some(reason);
            }
        }
    }

    /// Gauges that follow the machine, once its events are handled.
    fn after_events(&mut self) {
        if self.machine.phase() == Phase::Draining(crate::protocol::DrainOrigin::Worker) {
            self.stats.set_state(SessionState::Draining);
        }
        self.stats.set_in_flight(self.machine.in_flight());
    }

    fn schedule(
        &mut self,
        id: u64,
        handler: Option<usize>,
        due: Instant,
        output: Result<Vec<u8>, (&'static str, String)>,
    ) {
        self.delayed_seq += 1;
        self.delayed.push(Reverse(Delayed {
            due,
            seq: self.delayed_seq,
            id,
            handler,
            output,
        }));
    }

    fn finish(&mut self, id: u64, handler: Option<usize>, outcome: TaskOutcome<'_>, now: Instant) {
        match self.machine.complete_task(id, outcome, now) {
            Ok(()) => {
                let ok = outcome_is_ok(&outcome, self.machine.peer_max_body());
                self.count_answer(handler, ok);
            }
            Err(NotInFlight(id)) => self.not_in_flight(id),
        }
    }

    /// A RESULT was queued.
    #[inline]
    fn count_answer(&mut self, handler: Option<usize>, ok: bool) {
        self.tasks_this_connection += 1;
        self.stats.record_task(handler, ok);
    }

    #[cold]
    fn not_in_flight(&self, id: u64) {
        tracing::error!(
            session = self.index,
            task = id,
            "internal: completed a task that is not in flight"
        );
    }
}

fn outcome_is_ok(outcome: &TaskOutcome<'_>, peer_max_body: u32) -> bool {
    match outcome {
        TaskOutcome::Ok(output) => output.len() <= peer_max_body as usize,
        TaskOutcome::Failed { .. } => false,
    }
}

#[cfg(test)]
mod tests;
