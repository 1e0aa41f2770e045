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
//!
//! This module holds the types, [`WorkerSession::new`] and the accessors; the
//! rest of the session lives in child modules, one concern each: `input`
//! (bytes in, frames decoded and acted on), `tasks` (running handlers,
//! delayed results, timers), `runner` (finding and calling handlers),
//! `output` (bytes out and GOODBYE) and `report` (the closing log lines).

mod input;
mod output;
mod report;
mod runner;
mod tasks;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::handlers::{HandlerRegistry, Job};
use crate::protocol::machine::MachineConfig;
use crate::protocol::{CloseReason, Hello, Phase, WorkerMachine, PROTOCOL_VERSION};
use crate::stats::{SessionState, SessionStats};

use runner::TaskRunner;

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
/// `ringworker_task_duration_seconds`, the first of each connection
/// included (delayed answers always are). Two clock reads cost more than a
/// small task's handler: at 1 in 128 they are a fraction of a nanosecond
/// per task, and a busy session still records thousands of samples a second.
pub const TIMING_SAMPLE: u64 = 128;

/// One connection of one session, above the socket.
#[derive(Debug)]
pub struct WorkerSession {
    index: u32,
    machine: WorkerMachine,
    runner: TaskRunner,
    stats: Arc<SessionStats>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    /// Tasks whose answer comes from a job: their handler, and when the
    /// job was made.
    deferred: HashMap<u64, (Option<usize>, Instant)>,
    /// Jobs not yet handed to the runtime.
    jobs: VecDeque<Job>,
    tasks_this_connection: u64,
    closed: Option<CloseReason>,
    welcomed_at: Option<Instant>,
    /// Bytes the driver has handed over, when it reads on another thread
    /// ([`WorkerSession::set_bytes_fed`]): GOODBYE reports these.
    bytes_fed: Option<u64>,
    /// Where a [`LaterHandler`](crate::handlers::LaterHandler)'s answers go,
    /// and the connection generation they carry.
    late: Option<(Arc<crate::handlers::LateAnswers>, u32)>,
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
        WorkerSession {
            index,
            machine: WorkerMachine::new(machine_config, now),
            runner: TaskRunner::new(handlers),
            stats,
            delayed: BinaryHeap::new(),
            delayed_seq: 0,
            deferred: HashMap::new(),
            jobs: VecDeque::new(),
            tasks_this_connection: 0,
            closed: None,
            welcomed_at: None,
            bytes_fed: None,
            late: None,
        }
    }

    /// Answers of handlers that answer from another thread go to `late`,
    /// marked with connection `generation` (without it, such a handler's
    /// tasks fail).
    pub fn set_late_answers(&mut self, late: Arc<crate::handlers::LateAnswers>, generation: u32) {
        self.late = Some((late, generation));
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
}

#[cfg(test)]
mod tests;
