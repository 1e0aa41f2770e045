//! One manager connection, as a sans-IO state machine both runtimes drive.
//!
//! A runtime dials, reads and writes; [`Connection`] decides everything
//! else, once, without sockets, threads or clocks (callers pass `now`):
//! when to dial and redial, how to receive, what to send, when a closing
//! connection has waited long enough, when a drain is over and what it left
//! unfinished, and when a refusal stops the agent. Its module documents the
//! call order. The rules it applies are here:
//! - [`lifecycle`]: [`Connection`], its events and [`Action`]s;
//! - [`link`]: [`Link`], the session over its transport (plaintext, or TLS
//!   through rustls's sans-IO connection), which the connection owns and
//!   feeds the runtime's raw bytes through;
//! - [`backoff`]: the delay between dial attempts (exponential, full
//!   jitter, reset after a stable connection);
//! - [`drain`]: the drain after a stop request, whose deadline ends every
//!   wait of a stopping connection and whose tally decides the exit status;
//! - the deadlines and limits below: dial and handshake timeouts, the
//!   linger after the last frames, the refusal that stops the agent.
//!
//! The protocol itself (frames, handshake, heartbeats) is
//! [`crate::protocol`]'s; the session around it is [`crate::session`]'s.

pub mod backoff;
pub mod drain;
pub mod lifecycle;
pub mod link;

pub use lifecycle::{Action, Connection, Receive};
pub use link::Link;

use std::time::{Duration, Instant};

use crate::protocol::CloseReason;
use crate::transport::Endpoint;

/// How long a dial may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the manager has to answer HELLO.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection waits: for its last frames (GOODBYE, an
/// ERROR, a TLS alert) to be taken by a manager that may have stopped
/// reading, and after a half-close for the manager's EOF. A stop's drain
/// deadline cuts it short ([`closing_deadline`]).
pub const LINGER: Duration = Duration::from_secs(2);

/// Bytes read per receive where the runtime chooses the size (the blocking
/// runtime's read chunks; the uring runtime's provided buffers).
pub const READ_CHUNK: usize = 64 * 1024;

/// When a closing connection stops waiting: [`LINGER`] from `now`, or the
/// stop's drain deadline if that comes first.
pub fn closing_deadline(now: Instant, stopping: Option<&drain::StopDrain>) -> Instant {
    drain::StopDrain::cap(stopping, now + LINGER)
}

/// The manager refused this session in a way that retrying cannot help
/// (`unauthorized`, `unsupported_version` during the handshake): the line
/// that stops the agent, or `None` when the session should redial.
pub fn refusal(endpoint: &Endpoint, session: u32, reason: Option<&CloseReason>) -> Option<String> {
    reason
        .filter(|reason| reason.is_refusal())
        .map(|reason| format!("manager {endpoint} refused session {session}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closing_connection_waits_linger_or_until_the_drain_ends() {
        let t0 = Instant::now();
        assert_eq!(closing_deadline(t0, None), t0 + LINGER);
        let stopping = drain::StopDrain::start(t0, Duration::from_millis(500));
        assert_eq!(
            closing_deadline(t0, Some(&stopping)),
            t0 + Duration::from_millis(500)
        );
        let long = drain::StopDrain::start(t0, Duration::from_secs(30));
        assert_eq!(closing_deadline(t0, Some(&long)), t0 + LINGER);
    }

    #[test]
    fn only_a_refused_handshake_stops_the_agent() {
        let endpoint: Endpoint = "tcp://127.0.0.1:7000".parse().unwrap();
        let refused = CloseReason::PeerError {
            code: "unauthorized".into(),
            message: "bad token".into(),
            during_handshake: true,
        };
        assert_eq!(
            refusal(&endpoint, 3, Some(&refused)).as_deref(),
            Some(
                "manager tcp://127.0.0.1:7000 refused session 3: manager sent ERROR \
                 unauthorized: bad token"
            )
        );
        let later = CloseReason::PeerError {
            code: "unauthorized".into(),
            message: "bad token".into(),
            during_handshake: false,
        };
        assert_eq!(refusal(&endpoint, 3, Some(&later)), None);
        assert_eq!(refusal(&endpoint, 3, Some(&CloseReason::PeerClosed)), None);
        assert_eq!(refusal(&endpoint, 3, None), None);
    }
}
