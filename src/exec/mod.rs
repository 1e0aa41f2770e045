//! Operator-defined handlers: running the programs declared in the config
//! file (`[handlers.NAME]`, see [`crate::config::handlers`]) as children,
//! one per task (`exec` mode) or as long-lived workers speaking the
//! handler protocol (`pool` mode, docs/HANDLER_PROTOCOL.md).
//!
//! This module owns starting a child fenced in ([`spawn`]), the state of a
//! task run by a child ([`task`]), the handler protocol's framing
//! ([`frame`]), the state of a pool of workers ([`pool`]) and the bounded
//! queue of tasks waiting for either, with an `exec` handler's
//! concurrency limit ([`queue`]); [`service`] runs all of an agent's
//! declared handlers at once over those types, and [`driver`] is the
//! blocking runtime's thread that moves its bytes. The state types are
//! sans-IO: they are fed bytes, exits and the time (`now` is always
//! passed in) and answer with actions (write these bytes, signal the
//! group, spawn, finish the task); the runtime's event loop moves the
//! bytes. It must never block, sleep, read a clock or perform I/O outside
//! [`spawn`] and [`driver`], never hold more than its caps (output, stderr, frames,
//! waiting tasks), never pass a child anything it was not given, and
//! never leave a child unreaped.

pub mod driver;
pub mod frame;
pub mod metrics;
pub mod pool;
pub mod queue;
pub mod service;
pub mod spawn;
pub mod task;
pub mod worker_log;

pub use frame::{Frame, FrameDecoder, FrameError};
pub use pool::{Pool, PoolAction, PoolLimits};
pub use queue::{Admission, ExecGate, WaitQueue};
pub use service::{ChildId, HandlerStatus, Service, ServiceAction, Stream};
pub use spawn::{Child, SpawnError, SpawnSpec, HANDLER_FD, HANDLER_FD_VARIABLE};
pub use task::{ExecAction, ExecLimits, ExecTask};

use std::fmt;

/// FAILED codes of declared handlers, beyond PROTOCOL.md's
/// (`handler_failed`, `result_too_large` are used as they are there).
pub mod codes {
    /// The task overran its handler's `timeout`.
    pub const TIMEOUT: &str = "timeout";
    /// An `exec` child ended with a non-zero status or by a signal.
    pub const EXIT_STATUS: &str = "exit_status";
    /// The `pool` worker holding the task exited, crashed, broke the
    /// protocol or was killed for another task's timeout.
    pub const WORKER_LOST: &str = "worker_lost";
    /// The child could not be started.
    pub const SPAWN_FAILED: &str = "spawn_failed";
    /// The handler's queue of waiting tasks was full: the task was not
    /// started (nothing of it ran), so it may be retried, here later or
    /// at another worker.
    pub const BUSY: &str = "busy";
    pub use crate::protocol::codes::{HANDLER_FAILED, RESULT_TOO_LARGE};
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this status.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(code) => write!(f, "exit status {code}"),
            ExitStatus::Signal(9) => f.write_str("killed by signal 9 (SIGKILL)"),
            ExitStatus::Signal(15) => f.write_str("killed by signal 15 (SIGTERM)"),
            ExitStatus::Signal(signal) => write!(f, "killed by signal {signal}"),
        }
    }
}

/// A signal for a child's process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: the polite first one.
    Term,
    /// SIGKILL, after the grace.
    Kill,
}

/// How a task run by a declared handler ended: the RESULT to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The output.
    Ok(Vec<u8>),
    /// RESULT `FAILED` with this code ([`codes`]) and message.
    Failed { code: &'static str, message: String },
}

impl Outcome {
    pub fn failed(code: &'static str, message: impl Into<String>) -> Self {
        Outcome::Failed {
            code,
            message: message.into(),
        }
    }

    /// The FAILED code, `None` for a success.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Outcome::Ok(_) => None,
            Outcome::Failed { code, .. } => Some(code),
        }
    }
}
