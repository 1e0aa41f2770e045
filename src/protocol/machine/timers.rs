//! Heartbeats and deadlines: the handshake timeout, a PING after
//! `heartbeat_ms` of sending nothing, closing after 3 x `heartbeat_ms` of
//! receiving nothing, and the PINGs that probe a manager that sent EOF while
//! tasks run.
//!
//! Time is only ever an argument: nothing here reads a clock or sleeps; the
//! driver asks [`WorkerMachine::poll_timeout`] when to call back.

use std::time::{Duration, Instant};

use super::{CloseReason, DrainOrigin, Phase, WorkerMachine};
use crate::protocol::frame::{encode_frame, FrameKind};

/// How soon a manager that sent EOF while tasks run is probed again with a
/// PING (`WorkerMachine::probe_peer`); the interval doubles up to
/// [`EOF_PROBE_MAX`].
pub const EOF_PROBE_EVERY: Duration = Duration::from_millis(250);
pub const EOF_PROBE_MAX: Duration = Duration::from_secs(8);

impl WorkerMachine {
    /// Queue a PING with the next nonce.
    fn queue_ping(&mut self, now: Instant) {
        let nonce = self.next_ping_nonce;
        self.next_ping_nonce = self.next_ping_nonce.wrapping_add(1);
        encode_frame(&mut self.out, FrameKind::Ping, 0, nonce, &[]);
        self.last_sent = now;
    }

    /// EOF from the manager with tasks still running: either it closed only
    /// its write side and waits for the results, or it closed the socket (a
    /// crash looks the same). A PING tells them apart: a closed socket
    /// answers it with a reset, and the next write fails, so the driver sees
    /// a broken connection and redials at once instead of after the longest
    /// task. Repeated every [`EOF_PROBE_EVERY`] while tasks run.
    pub(super) fn probe_peer(&mut self, now: Instant) {
        self.queue_ping(now);
        // 250 ms, then doubling up to 8 s: a reset comes back within a round
        // trip, and a manager that only half-closed is not kept busy.
        let every = self.eof_probe_every.unwrap_or(EOF_PROBE_EVERY);
        self.eof_probe_at = Some(now + every);
        self.eof_probe_every = Some((every * 2).min(EOF_PROBE_MAX));
    }

    /// The earliest time at which [`WorkerMachine::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingWelcome => Some(self.handshake_deadline),
            Phase::Closed | Phase::GoodbyeDue => None,
            Phase::Active | Phase::Draining(_) => {
                let probe = self
                    .eof_probe_at
                    .filter(|_| self.phase == Phase::Draining(DrainOrigin::PeerEof));
                let heartbeat = self.heartbeat.map(|heartbeat| {
                    (self.last_sent + heartbeat).min(self.last_received + heartbeat * 3)
                });
                match (probe, heartbeat) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Act on deadlines that have passed by `now`: the handshake timeout, a
    /// PING after `heartbeat_ms` of sending nothing, and closing after
    /// 3 × `heartbeat_ms` of receiving nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingWelcome => {
                if now >= self.handshake_deadline {
                    self.close(CloseReason::HandshakeTimeout);
                }
            }
            Phase::Closed | Phase::GoodbyeDue => {}
            Phase::Active | Phase::Draining(_) => {
                if self.phase == Phase::Draining(DrainOrigin::PeerEof)
                    && self.eof_probe_at.is_some_and(|at| now >= at)
                {
                    self.probe_peer(now);
                }
                let Some(heartbeat) = self.heartbeat else {
                    return;
                };
                let paused_by_us = !self.wants_read() && self.out.is_empty();
                if paused_by_us || self.phase == Phase::Draining(DrainOrigin::PeerEof) {
                    // Silence is expected: we are not reading (own tasks hold
                    // every slot) or the peer has already closed its side.
                    self.last_received = now;
                }
                if now >= self.last_received + heartbeat * 3 {
                    self.close(CloseReason::HeartbeatTimeout);
                    return;
                }
                if now >= self.last_sent + heartbeat {
                    self.queue_ping(now);
                }
            }
        }
    }
}
