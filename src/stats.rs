//! Live numbers shared between the runtime threads and their observers.
//!
//! Each session has a [`SessionStats`] of atomics that its runtime updates and
//! that the status endpoint, the metrics exporter and the logs read; the
//! process-wide totals live in [`AgentStats`]. Writers are the runtimes only
//! (bytes through [`crate::runtime::ByteCounters`], the rest through the
//! session layer); everything here is lock-free on the hot path.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::exec::HandlerStatus;
use crate::format::format_bytes;

/// Where a session stands, as shown by `/status` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum SessionState {
    /// Not connected; waiting out the back-off before the next dial.
    Disconnected = 0,
    /// Dialling the manager.
    Connecting = 1,
    /// Connected, HELLO sent, waiting for WELCOME.
    Handshaking = 2,
    /// WELCOME received: tasks flow.
    Connected = 3,
    /// Finishing in-flight tasks before GOODBYE.
    Draining = 4,
    /// Ended for good (the agent is stopping or was refused).
    Stopped = 5,
}

impl SessionState {
    fn from_u8(value: u8) -> SessionState {
        match value {
            1 => SessionState::Connecting,
            2 => SessionState::Handshaking,
            3 => SessionState::Connected,
            4 => SessionState::Draining,
            5 => SessionState::Stopped,
            _ => SessionState::Disconnected,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Disconnected => "disconnected",
            SessionState::Connecting => "connecting",
            SessionState::Handshaking => "handshaking",
            SessionState::Connected => "connected",
            SessionState::Draining => "draining",
            SessionState::Stopped => "stopped",
        }
    }
}

/// One session's live numbers. `bytes_*` count the current connection and
/// are reset when it redials; `tasks_*` count since the agent started.
#[derive(Debug)]
pub struct SessionStats {
    pub index: u32,
    state: AtomicU8,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    /// The same bytes over every connection of this session: the process
    /// totals are their sum. Kept per session (one writer thread, no shared
    /// cache line) rather than in one process-wide atomic.
    pub(crate) bytes_sent_lifetime: AtomicU64,
    pub(crate) bytes_received_lifetime: AtomicU64,
    /// RESULTs written, per handler (registry order) and outcome
    /// (`[failed, ok]`); the last row counts names no handler has.
    handler_tasks: Box<[[AtomicU64; 2]]>,
    in_flight: AtomicU64,
    connections: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl SessionStats {
    /// Stats with task counts for no named handler (every task counts as unknown).
    pub fn new(index: u32) -> Self {
        SessionStats::with_handlers(index, 0)
    }

    /// Stats that count tasks for `handlers` handlers (the registry's order).
    pub fn with_handlers(index: u32, handlers: usize) -> Self {
        SessionStats {
            index,
            state: AtomicU8::new(SessionState::Disconnected as u8),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent_lifetime: AtomicU64::new(0),
            bytes_received_lifetime: AtomicU64::new(0),
            handler_tasks: (0..=handlers)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            in_flight: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn state(&self) -> SessionState {
        SessionState::from_u8(self.state.load(Relaxed))
    }

    pub fn set_state(&self, state: SessionState) {
        self.state.store(state as u8, Relaxed);
    }

    /// Bytes written on the current connection.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Relaxed)
    }

    /// Bytes read on the current connection.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received.load(Relaxed)
    }

    pub fn tasks_ok(&self) -> u64 {
        self.handler_tasks
            .iter()
            .map(|row| row[1].load(Relaxed))
            .sum()
    }

    pub fn tasks_failed(&self) -> u64 {
        self.handler_tasks
            .iter()
            .map(|row| row[0].load(Relaxed))
            .sum()
    }

    /// RESULTs written for handler `handler` (registry order; `None` for
    /// names no handler has) with this outcome.
    pub fn handler_tasks(&self, handler: Option<usize>, ok: bool) -> u64 {
        self.handler_tasks[self.handler_row(handler)][usize::from(ok)].load(Relaxed)
    }

    fn handler_row(&self, handler: Option<usize>) -> usize {
        let unknown = self.handler_tasks.len() - 1;
        handler.filter(|&h| h < unknown).unwrap_or(unknown)
    }

    /// RESULTs written since the agent started.
    pub fn tasks_done(&self) -> u64 {
        self.tasks_ok() + self.tasks_failed()
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Connections that completed a dial.
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|guard| guard.clone())
    }

    /// Called by the thread that owns the session (its only writer), so a
    /// relaxed load and store suffice: no locked instruction per task.
    pub(crate) fn record_task(&self, handler: Option<usize>, ok: bool) {
        let counter = &self.handler_tasks[self.handler_row(handler)][usize::from(ok)];
        counter.store(counter.load(Relaxed) + 1, Relaxed);
    }

    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Relaxed);
    }

    /// A new connection: the per-connection byte gauges start from 0.
    pub(crate) fn begin_connection(&self) {
        self.bytes_sent.store(0, Relaxed);
        self.bytes_received.store(0, Relaxed);
        self.in_flight.store(0, Relaxed);
        self.connections.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut guard) = self.last_error.lock() {
            *guard = error;
        }
    }

    /// A snapshot for `/status`.
    pub fn snapshot(&self) -> SessionSnapshot {
        let bytes_sent = self.bytes_sent();
        let bytes_received = self.bytes_received();
        SessionSnapshot {
            session: self.index,
            state: self.state(),
            bytes_sent,
            bytes_received,
            bytes_sent_formatted: format_bytes(bytes_sent),
            bytes_received_formatted: format_bytes(bytes_received),
            tasks_done: self.tasks_done(),
            tasks_failed: self.tasks_failed(),
            in_flight: self.in_flight(),
            connections: self.connections(),
            last_error: self.last_error(),
        }
    }
}

/// One session in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionSnapshot {
    pub session: u32,
    pub state: SessionState,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_sent_formatted: String,
    pub bytes_received_formatted: String,
    pub tasks_done: u64,
    pub tasks_failed: u64,
    pub in_flight: u64,
    pub connections: u64,
    pub last_error: Option<String>,
}

/// The whole agent: every session plus process-wide totals that never go back.
#[derive(Debug)]
pub struct AgentStats {
    pub worker_id: String,
    pub runtime: &'static str,
    /// The handlers' names, in the order the per-handler counts use.
    pub handler_names: Vec<String>,
    pub sessions: Vec<Arc<SessionStats>>,
    reconnects_total: AtomicU64,
    sessions_moved_total: AtomicU64,
    stop_requested: AtomicBool,
    /// When these stats were made: the origin of the loops' heartbeats.
    started: Instant,
    /// The runtime's loops that are running now (see [`AgentStats::register_loop`]).
    loops: Mutex<Vec<Weak<AtomicU64>>>,
    /// Declared handlers' states as each owner of a [`crate::exec::Service`]
    /// last published them (one part per uring loop, one for the blocking
    /// runtime's driver); `/status` shows their sum.
    handler_parts: Mutex<Vec<Vec<HandlerStatus>>>,
}

/// How often a runtime loop proves that it turns, busy or idle: each loop
/// wakes at least this often and beats its [`LoopBeat`]. The systemd
/// watchdog reads the beats ([`AgentStats::oldest_loop_beat`]).
pub const LOOP_BEAT_INTERVAL: Duration = Duration::from_secs(1);

/// One runtime loop's heartbeat: the loop calls [`LoopBeat::beat`] each
/// time it turns; dropping it (the loop ended) removes it from the watch.
#[derive(Debug)]
pub struct LoopBeat {
    started: Instant,
    /// Milliseconds from `started` to the last beat.
    last: Arc<AtomicU64>,
}

impl LoopBeat {
    /// The loop turned at `now`.
    #[inline]
    pub fn beat(&self, now: Instant) {
        let millis = now.saturating_duration_since(self.started).as_millis() as u64;
        self.last.store(millis, Relaxed);
    }
}

impl AgentStats {
    pub fn new(worker_id: String, runtime: &'static str, sessions: u32) -> Self {
        AgentStats::with_handlers(worker_id, runtime, sessions, Vec::new())
    }

    /// Stats that count tasks per handler, `handler_names` in registry order.
    pub fn with_handlers(
        worker_id: String,
        runtime: &'static str,
        sessions: u32,
        handler_names: Vec<String>,
    ) -> Self {
        let handlers = handler_names.len();
        AgentStats {
            worker_id,
            runtime,
            handler_names,
            sessions: (0..sessions)
                .map(|i| Arc::new(SessionStats::with_handlers(i, handlers)))
                .collect(),
            reconnects_total: AtomicU64::new(0),
            sessions_moved_total: AtomicU64::new(0),
            stop_requested: AtomicBool::new(false),
            started: Instant::now(),
            loops: Mutex::new(Vec::new()),
            handler_parts: Mutex::new(Vec::new()),
        }
    }

    /// Part `part` of the declared handlers' states is now `status`.
    pub fn publish_handlers(&self, part: usize, status: Vec<HandlerStatus>) {
        let mut parts = self.handler_parts.lock().unwrap_or_else(|e| e.into_inner());
        if parts.len() <= part {
            parts.resize_with(part + 1, Vec::new);
        }
        parts[part] = status;
    }

    /// The declared handlers' states summed over every published part,
    /// in declaration order: counts add up; a handler is `ready` when any
    /// part has it ready.
    pub fn handler_status(&self) -> Vec<HandlerStatus> {
        let parts = self.handler_parts.lock().unwrap_or_else(|e| e.into_inner());
        let mut total: Vec<HandlerStatus> = Vec::new();
        for status in parts.iter().flatten() {
            match total.iter_mut().find(|t| t.name == status.name) {
                None => total.push(status.clone()),
                Some(t) => {
                    if status.state == "ready" || t.state == "starting" {
                        t.state = status.state;
                    }
                    t.alive += status.alive;
                    t.running += status.running;
                    t.waiting += status.waiting;
                    t.restarts += status.restarts;
                    t.timeouts += status.timeouts;
                    t.spawn_failures += status.spawn_failures;
                }
            }
        }
        total
    }

    /// Watch a runtime loop that starts now; it must beat at least every
    /// [`LOOP_BEAT_INTERVAL`] until it drops the returned [`LoopBeat`].
    pub fn register_loop(&self) -> LoopBeat {
        let now = self.started.elapsed().as_millis() as u64;
        let last = Arc::new(AtomicU64::new(now));
        let mut loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        loops.retain(|beat| beat.strong_count() > 0);
        loops.push(Arc::downgrade(&last));
        LoopBeat {
            started: self.started,
            last,
        }
    }

    /// How long ago the least recently turned loop last beat, among the
    /// loops running now; `None` when none is running. A wedged loop shows
    /// here as an age that keeps growing.
    pub fn oldest_loop_beat(&self, now: Instant) -> Option<Duration> {
        let now = now.saturating_duration_since(self.started).as_millis() as u64;
        let loops = self.loops.lock().unwrap_or_else(|e| e.into_inner());
        loops
            .iter()
            .filter_map(Weak::upgrade)
            .map(|last| Duration::from_millis(now.saturating_sub(last.load(Relaxed))))
            .max()
    }

    /// Bytes written by every session on every connection since start.
    pub fn bytes_sent_total(&self) -> u64 {
        self.sessions
            .iter()
            .map(|s| s.bytes_sent_lifetime.load(Relaxed))
            .sum()
    }

    /// Bytes read by every session on every connection since start.
    pub fn bytes_received_total(&self) -> u64 {
        self.sessions
            .iter()
            .map(|s| s.bytes_received_lifetime.load(Relaxed))
            .sum()
    }

    /// Dial attempts after each session's first.
    pub fn reconnects_total(&self) -> u64 {
        self.reconnects_total.load(Relaxed)
    }

    pub(crate) fn record_reconnect(&self) {
        self.reconnects_total.fetch_add(1, Relaxed);
    }

    /// Sessions handed from one event loop to another (uring runtime).
    pub fn sessions_moved_total(&self) -> u64 {
        self.sessions_moved_total.load(Relaxed)
    }

    pub(crate) fn record_session_moved(&self) {
        self.sessions_moved_total.fetch_add(1, Relaxed);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop_requested.load(Relaxed)
    }

    pub(crate) fn mark_stop_requested(&self) {
        self.stop_requested.store(true, Relaxed);
    }

    /// Sessions that have completed their handshake (for `/readyz`).
    pub fn connected_sessions(&self) -> usize {
        self.sessions
            .iter()
            .filter(|s| matches!(s.state(), SessionState::Connected | SessionState::Draining))
            .count()
    }

    pub fn tasks_done(&self) -> u64 {
        self.sessions.iter().map(|s| s.tasks_done()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_loop_beat_is_the_stalled_loops_age_and_ended_loops_leave_the_watch() {
        let stats = AgentStats::new("w".into(), "uring", 1);
        let start = stats.started;
        assert_eq!(stats.oldest_loop_beat(start + Duration::from_secs(9)), None);
        let busy = stats.register_loop();
        let wedged = stats.register_loop();
        busy.beat(start + Duration::from_secs(10));
        wedged.beat(start + Duration::from_secs(2));
        assert_eq!(
            stats.oldest_loop_beat(start + Duration::from_secs(11)),
            Some(Duration::from_secs(9))
        );
        drop(wedged);
        assert_eq!(
            stats.oldest_loop_beat(start + Duration::from_secs(11)),
            Some(Duration::from_secs(1))
        );
        drop(busy);
        assert_eq!(
            stats.oldest_loop_beat(start + Duration::from_secs(11)),
            None
        );
        // Registering prunes the loops that ended.
        let _again = stats.register_loop();
        assert_eq!(stats.loops.lock().unwrap().len(), 1);
    }
}
