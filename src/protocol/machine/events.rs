//! What a driver exchanges with [`WorkerMachine`]: its settings
//! ([`MachineConfig`]), where the connection stands ([`Phase`],
//! [`DrainOrigin`]), what the machine asks the driver to act on ([`Event`],
//! [`TaskRequest`]), how a task ended ([`TaskOutcome`]) and why the
//! connection ended ([`CloseReason`]).
//!
//! Plain data and its formatting only: nothing here changes a machine's
//! state or reads the wire.

use std::time::Duration;

#[cfg(doc)]
use super::WorkerMachine;
use crate::protocol::hello::{codes, Hello, Welcome};

/// Settings of one connection's machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Sent as the first frame; its `max_body` and `max_in_flight` are the
    /// limits this machine enforces.
    pub hello: Hello,
    /// How long to wait for WELCOME after the connection is up.
    pub handshake_timeout: Duration,
    /// Reading pauses while more than this many bytes wait to be written.
    pub output_high_water: usize,
}

impl MachineConfig {
    pub fn new(hello: Hello) -> Self {
        MachineConfig {
            hello,
            handshake_timeout: Duration::from_secs(10),
            output_high_water: 256 * 1024,
        }
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// HELLO sent, waiting for WELCOME.
    AwaitingWelcome,
    /// Handshake done; tasks flow.
    Active,
    /// No new tasks are taken; in-flight tasks finish, then GOODBYE.
    Draining(DrainOrigin),
    /// Everything is answered; GOODBYE waits for the output to be flushed so
    /// that its byte counts are exact ([`WorkerMachine::write_goodbye`]).
    GoodbyeDue,
    /// Final: flush the output, then close the socket.
    Closed,
}

/// Who started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOrigin {
    /// This worker is stopping (`request_stop`, a signal); it sent DRAIN.
    Worker,
    /// The manager sent DRAIN.
    Manager,
    /// The manager closed its write side: nothing more can arrive.
    PeerEof,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The drain finished and GOODBYE was written.
    Goodbye { origin: DrainOrigin },
    /// The manager said GOODBYE.
    PeerGoodbye,
    /// The peer broke the protocol; ERROR `code` was queued.
    ProtocolViolation { code: &'static str, message: String },
    /// The manager sent ERROR. `unauthorized` and `unsupported_version` during
    /// the handshake mean retrying cannot help ([`CloseReason::is_refusal`]).
    PeerError {
        code: String,
        message: String,
        during_handshake: bool,
    },
    /// No WELCOME within the handshake timeout.
    HandshakeTimeout,
    /// Nothing received for 3 × `heartbeat_ms`.
    HeartbeatTimeout,
    /// The stream ended before the handshake or while tasks could not finish.
    PeerClosed,
    /// Stopped before the handshake completed; nothing to drain.
    StoppedBeforeWelcome,
}

impl CloseReason {
    /// The manager refused this worker; redialling cannot help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CloseReason::PeerError { code, during_handshake: true, .. }
            if code == codes::UNAUTHORIZED || code == codes::UNSUPPORTED_VERSION)
    }

    /// Whether to keep reading after our last frame until the manager closes:
    /// only when that frame (GOODBYE, ERROR) is something the manager should
    /// read. A manager presumed gone, or one that closed first, is not
    /// waited for.
    pub fn wants_linger(&self) -> bool {
        matches!(
            self,
            CloseReason::Goodbye { .. } | CloseReason::ProtocolViolation { .. }
        )
    }

    /// The session ended by the protocol's own graceful path.
    pub fn is_graceful(&self) -> bool {
        matches!(
            self,
            CloseReason::Goodbye { .. }
                | CloseReason::PeerGoodbye
                | CloseReason::StoppedBeforeWelcome
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Goodbye { origin } => write!(f, "drained ({origin:?}), GOODBYE sent"),
            CloseReason::PeerGoodbye => f.write_str("manager said GOODBYE"),
            CloseReason::ProtocolViolation { code, message } => {
                if message.starts_with(code) {
                    write!(f, "manager broke the protocol: {message}")
                } else {
                    write!(f, "manager broke the protocol: {code}: {message}")
                }
            }
            CloseReason::PeerError { code, message, .. } => {
                write!(f, "manager sent ERROR {code}: {message}")
            }
            CloseReason::HandshakeTimeout => f.write_str("no WELCOME within the handshake timeout"),
            CloseReason::HeartbeatTimeout => {
                f.write_str("nothing received for 3 x heartbeat_ms: manager presumed gone")
            }
            CloseReason::PeerClosed => f.write_str("manager closed the connection"),
            CloseReason::StoppedBeforeWelcome => {
                f.write_str("stopped before the handshake completed")
            }
        }
    }
}

/// What the machine asks its driver to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// WELCOME arrived and was valid.
    Welcomed(Welcome),
    /// A task to run; answer it with [`WorkerMachine::complete_task`].
    Task(TaskRequest<'a>),
    /// The manager sent DRAIN; no TASK follows.
    DrainRequested,
    /// The connection is over: flush the output, then close.
    Closed(CloseReason),
}

/// What [`WorkerMachine::poll_input`] hands the driver: a task, or any
/// other event.
#[derive(Debug, PartialEq, Eq)]
pub enum Input<'i> {
    /// A task to run: read it and begin its RESULT with
    /// [`WorkerMachine::begin_task`].
    Task(TaskAt<'i>),
    /// Anything but a task (never [`Event::Task`]).
    Event(Event<'static>),
}

/// Where a task handed out by [`WorkerMachine::poll_input`] lies: in the
/// driver's input (`'i`), or in the machine's receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskAt<'i> {
    pub(super) id: u64,
    pub(super) name_len: usize,
    pub(super) ack_requested: bool,
    /// The TASK body, when it lies in the driver's input.
    pub(super) body: Option<&'i [u8]>,
}

impl TaskAt<'_> {
    /// The task's id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// A TASK frame, borrowed from the receive buffer (or the driver's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRequest<'a> {
    pub id: u64,
    /// The handler name: 1..=64 bytes, each printable ASCII (checked). Kept
    /// as bytes so a driver that matches names byte-wise pays no UTF-8
    /// validation per task; [`TaskRequest::handler_name`] gives the `str`.
    pub handler: &'a [u8],
    pub payload: &'a [u8],
    pub ack_requested: bool,
}

impl<'a> TaskRequest<'a> {
    /// The handler name as a string (it is ASCII, checked on decoding).
    pub fn handler_name(&self) -> &'a str {
        std::str::from_utf8(self.handler).unwrap_or("")
    }
}

/// How a task ended, as handed to [`WorkerMachine::complete_task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome<'a> {
    Ok(&'a [u8]),
    Failed { code: &'a str, message: &'a str },
}

/// A driver called [`WorkerMachine::complete_task`] for an id that is not in
/// flight: a bug in the driver, reported rather than acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task {0} is not in flight")]
pub struct NotInFlight(pub u64);
