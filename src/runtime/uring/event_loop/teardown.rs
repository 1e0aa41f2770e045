//! Ending a connection: cancelling the socket's operations, closing it once
//! none remain, settling what the session's drain left, then backing off or
//! stopping the slot. It must never close a socket, or drop it from the file
//! table, while an operation on it is outstanding: the fd number could be
//! reused under that operation.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::{user_data, EventLoop, Op, SlotPhase};
use crate::connection::refusal;
use crate::stats::SessionState;

impl EventLoop {
    pub(super) fn stop_slot(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        if s.phase != SlotPhase::Stopped {
            s.phase = SlotPhase::Stopped;
            s.stats.set_state(SessionState::Stopped);
            self.stopped += 1;
        }
    }

    pub(super) fn begin_teardown(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        s.phase = SlotPhase::Teardown;
        self.mark_dirty(slot_id);
    }

    pub(super) fn continue_teardown(&mut self, slot_id: u32, now: Instant) {
        let s = &mut self.slots[slot_id as usize];
        if s.inflight > 0 {
            if !s.teardown_cancelled {
                if let Some(socket) = &s.socket {
                    s.teardown_cancelled = true;
                    s.inflight += 1;
                    let entry = on_socket!(s.registered, slot_id, socket.as_raw_fd(), |t| {
                        opcode::AsyncCancel2::new(types::CancelBuilder::fd(t).all()).build()
                    })
                    .user_data(user_data(Op::Cancel, s.generation, slot_id));
                    self.push(entry);
                }
            }
            return;
        }
        // No operation refers to the socket any more: drop it from the file
        // table (which holds a reference of its own), then close it.
        if s.registered {
            s.registered = false;
            let _ = self.ring.submitter().register_files_update(slot_id, &[-1]);
        }
        self.dial_done(slot_id);
        let s = &mut self.slots[slot_id as usize];
        s.socket = None;
        // A slot waiting to redial holds no buffer.
        s.send_buf = Vec::new();
        s.spare = Vec::new();
        s.send_off = 0;
        s.send_inflight = false;
        s.recv_armed = false;
        let uptime;
        let refused;
        match s.session.take() {
            Some(session) => {
                // A stopping connection that ended before its deadline other
                // than by GOODBYE: what it still held counts as the drain's.
                if let (Some(stopping), true) = (s.drain, s.unfinished.is_clean()) {
                    let why = s
                        .broken
                        .clone()
                        .or_else(|| session.closed().map(|r| r.to_string()));
                    s.unfinished += stopping.ended_early(
                        s.index,
                        session.in_flight(),
                        session.results_unwritten(),
                        why.as_deref().unwrap_or("connection closed"),
                        &s.stats,
                    );
                }
                session.log_end(s.broken.as_deref());
                uptime = session
                    .welcomed_at()
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                refused = refusal(&self.plan.endpoint, s.index, session.closed());
                s.stats.set_in_flight(0);
            }
            None => {
                if let Some(why) = &s.broken {
                    crate::log_limit::warn_session(s.index, why, now);
                    s.stats.set_last_error(Some(why.clone()));
                }
                uptime = Duration::ZERO;
                refused = None;
            }
        }
        s.backoff.connection_ended(uptime);
        s.drain = None;
        s.flush_deadline = None;
        s.linger_until = None;
        if let Some(message) = refused {
            tracing::error!(session = s.index, "{message}");
            self.stop.fail(message);
            self.stop_seen = true;
            for i in 0..self.slots.len() {
                self.mark_dirty(i as u32);
            }
            self.stop_slot(slot_id);
            return;
        }
        self.back_off(slot_id, now);
    }
}
