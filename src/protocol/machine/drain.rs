//! Drain and GOODBYE: a drain started by this worker sends DRAIN and
//! refuses new TASKs; once nothing is in flight and no frame waits, GOODBYE
//! is due, and it is written with the socket counters once the output
//! before it is flushed.
//!
//! It never cuts a drain short: every TASK read before GOODBYE is answered,
//! and GOODBYE is never written while bytes queued before it are unwritten.

use std::time::Instant;

use super::{CloseReason, DrainOrigin, Phase, WorkerMachine};
use crate::protocol::frame::{encode_frame, FrameKind};
use crate::protocol::hello::GoodbyeBody;

impl WorkerMachine {
    /// Begin a worker-initiated drain (SIGTERM, `request_stop`).
    pub fn start_drain(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingWelcome => {
                // Nothing may be sent before WELCOME, and nothing is in flight.
                self.drain = Some(DrainOrigin::Worker);
                self.close(CloseReason::StoppedBeforeWelcome);
            }
            Phase::Active | Phase::Draining(DrainOrigin::Manager) => {
                self.drain_sent = true;
                self.refuse_tasks = true;
                encode_frame(&mut self.out, FrameKind::Drain, 0, 0, &[]);
                self.last_sent = now;
                self.drain = Some(DrainOrigin::Worker);
                self.phase = Phase::Draining(DrainOrigin::Worker);
                self.check_drained();
            }
            Phase::Draining(DrainOrigin::PeerEof) => {
                // The manager can no longer send; DRAIN tells it nothing new
                // but keeps the sequence uniform. Sent once.
                self.refuse_tasks = true;
                if !self.drain_sent {
                    self.drain_sent = true;
                    encode_frame(&mut self.out, FrameKind::Drain, 0, 0, &[]);
                    self.last_sent = now;
                }
            }
            Phase::Draining(DrainOrigin::Worker) | Phase::GoodbyeDue | Phase::Closed => {}
        }
    }

    /// Write GOODBYE with the socket counters as they stand now, once the
    /// driver has flushed every byte queued before it. Only valid in
    /// [`Phase::GoodbyeDue`]; returns whether it wrote.
    pub fn write_goodbye(&mut self, bytes_sent: u64, bytes_received: u64) -> bool {
        if self.phase != Phase::GoodbyeDue {
            return false;
        }
        let mut body = serde_json::to_vec(&GoodbyeBody {
            bytes_sent,
            bytes_received,
        })
        .unwrap_or_default();
        if self.peer_max_body_known && body.len() > self.peer_max_body as usize {
            // The manager refuses bodies this long; an empty GOODBYE still
            // ends the session, without the counts.
            body.clear();
        }
        encode_frame(&mut self.out, FrameKind::Goodbye, 0, 0, &body);
        let origin = self.drain.unwrap_or(DrainOrigin::Worker);
        self.close(CloseReason::Goodbye { origin });
        true
    }

    /// GOODBYE is due once nothing is in flight and no frame, whole or in
    /// part, waits in the receive buffer: a TASK read before the drain
    /// finished (held back by a full window, or not all in yet) is still
    /// answered first.
    pub(super) fn check_drained(&mut self) {
        if let Phase::Draining(origin) = self.phase {
            // Part of a frame is in: the rest still arrives, and its TASK is
            // answered before GOODBYE counts its bytes (unless the manager
            // can send nothing more).
            let partial = self.recv.buffered() > 0 && origin != DrainOrigin::PeerEof;
            if self.in_flight() == 0 && !self.more_input && !self.has_buffered_frame() && !partial {
                self.phase = Phase::GoodbyeDue;
            }
        }
    }
}
