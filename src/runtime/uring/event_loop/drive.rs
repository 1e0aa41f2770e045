//! Driving slots: each dirty slot moves one step forward by its phase (dial,
//! write, arm reads, linger, close, back off). This decides what a slot does
//! next; it never handles a completion itself (that is `reap` and the `on_*`
//! handlers) and never sleeps: every wait is a timer.

use std::net::Shutdown;
use std::time::Instant;

use super::{EventLoop, SlotPhase, LARGE_FRAME_REMAINDER};
use crate::connection::closing_deadline;
use crate::connection::drain::StopDrain;

impl EventLoop {
    pub(super) fn drive_dirty(&mut self) {
        // A few rounds: driving one slot can make it dirty again (a write
        // completes the drain, which queues GOODBYE). What is left after
        // that waits for the next iteration, which then does not block.
        for _ in 0..4 {
            if self.dirty.is_empty() {
                break;
            }
            std::mem::swap(&mut self.dirty, &mut self.batch);
            let now = Instant::now();
            for i in 0..self.batch.len() {
                let slot = self.batch[i];
                self.slots[slot as usize].dirty = false;
                self.drive(slot, now);
            }
            self.batch.clear();
        }
    }

    /// Move one slot forward: dial, write, arm reads, close, back off.
    fn drive(&mut self, slot_id: u32, now: Instant) {
        let stopping = self.stop_seen;
        let phase = self.slots[slot_id as usize].phase;
        match phase {
            SlotPhase::Stopped => {}
            SlotPhase::Idle => {
                if stopping {
                    self.stop_slot(slot_id);
                } else if now >= self.slots[slot_id as usize].retry_at {
                    self.dial(slot_id, now);
                } else {
                    let at = self.slots[slot_id as usize].retry_at;
                    self.schedule(slot_id, Some(at));
                }
            }
            SlotPhase::Connecting => {
                let s = &mut self.slots[slot_id as usize];
                let timed_out = s.deadline.is_some_and(|d| now >= d);
                if (stopping || timed_out) && s.broken.is_none() {
                    s.broken = Some(if stopping {
                        "stopped while dialling".to_owned()
                    } else {
                        format!(
                            "cannot reach manager {}: connect timed out",
                            self.plan.endpoint
                        )
                    });
                    self.begin_teardown(slot_id);
                } else {
                    let at = s.deadline;
                    self.schedule(slot_id, at);
                }
            }
            SlotPhase::Open => self.drive_open(slot_id, now),
            SlotPhase::Linger => {
                let s = &self.slots[slot_id as usize];
                if s.eof || s.broken.is_some() || s.linger_until.is_some_and(|t| now >= t) {
                    self.begin_teardown(slot_id);
                } else {
                    let at = s.linger_until;
                    if !s.recv_armed && !s.body_recv {
                        self.arm_recv(slot_id);
                    }
                    self.schedule(slot_id, at);
                }
            }
            SlotPhase::Teardown => self.continue_teardown(slot_id, now),
        }
    }

    fn drive_open(&mut self, slot_id: u32, now: Instant) {
        let drain_timeout = self.plan.drain_timeout;
        let stopping = self.stop_seen;
        let s = &mut self.slots[slot_id as usize];
        if s.broken.is_some() {
            // A TLS failure is the cause of what broke after it (the alert's
            // write to a peer that hung up).
            if let Some(why) = s.session.as_ref().and_then(|l| l.failure()) {
                s.broken = Some(why.to_owned());
            }
            self.begin_teardown(slot_id);
            return;
        }
        let Some(session) = s.session.as_mut() else {
            self.begin_teardown(slot_id);
            return;
        };
        if let Some(why) = session.failure() {
            // Write the alert rustls queued (one last send), then close. A
            // send the manager is not taking gets LINGER, as for the last
            // frames of a closed session, so a stop cannot hang on it.
            if !s.send_inflight && session.has_output() {
                let at = *s
                    .flush_deadline
                    .get_or_insert(closing_deadline(now, s.drain.as_ref()));
                self.send_output(slot_id);
                self.schedule(slot_id, Some(at));
            } else if !s.send_inflight {
                s.broken = Some(why.to_owned());
                self.begin_teardown(slot_id);
            } else {
                let at = *s
                    .flush_deadline
                    .get_or_insert(closing_deadline(now, s.drain.as_ref()));
                if now >= at {
                    s.broken = Some(why.to_owned());
                    self.begin_teardown(slot_id);
                } else {
                    self.schedule(slot_id, Some(at));
                }
            }
            return;
        }
        if stopping && s.drain.is_none() {
            s.drain = Some(StopDrain::start(now, drain_timeout));
            session.start_drain(now);
        }
        if let Some(drain) = s.drain.filter(|d| d.is_over(now)) {
            // The whole drain ends here, finished or not.
            let in_flight = if session.closed().is_none() {
                session.in_flight()
            } else {
                0
            };
            s.unfinished +=
                drain.timed_out(s.index, in_flight, session.results_unwritten(), &s.stats);
            self.begin_teardown(slot_id);
            return;
        }
        if session.poll_timeout().is_some_and(|t| now >= t) {
            if s.body_recv && s.body_waitall {
                // The rest of a large frame may be arriving into a
                // MSG_WAITALL receive, which reports nothing until it is
                // complete: cancel it, and it completes with the bytes it
                // holds (counted then as received, which the heartbeat
                // sees), before the deadline is judged.
                if !s.body_cancelled {
                    self.cancel_body_recv(slot_id);
                }
                return;
            }
            session.handle_timeout(now);
        }
        if !s.send_inflight {
            if !session.has_output() {
                session.on_flushed(now);
            }
            if session.has_output() {
                self.send_output(slot_id);
            }
        }
        let s = &mut self.slots[slot_id as usize];
        let Some(session) = s.session.as_ref() else {
            return;
        };
        if session.closed().is_some() {
            if s.send_inflight {
                // The last frames (GOODBYE, ERROR) are being written; a
                // manager that stopped reading gets LINGER to take them.
                let at = *s
                    .flush_deadline
                    .get_or_insert(closing_deadline(now, s.drain.as_ref()));
                if now >= at {
                    s.broken = Some("the manager did not read the last frames".to_owned());
                    self.begin_teardown(slot_id);
                } else {
                    self.schedule(slot_id, Some(at));
                }
                return;
            }
            if !session.has_output() {
                if session.closed().is_some_and(|r| r.wants_linger()) {
                    // Everything is written: half-close, then read to EOF.
                    if let Some(socket) = &s.socket {
                        let _ = socket.shutdown(Shutdown::Write);
                    }
                    s.phase = SlotPhase::Linger;
                    s.linger_until = Some(closing_deadline(now, s.drain.as_ref()));
                    self.mark_dirty(slot_id);
                } else {
                    self.begin_teardown(slot_id);
                }
            }
            return;
        }
        let wants_read = session.wants_read() && !s.eof;
        let timeout = match (session.poll_timeout(), s.drain.map(|d| d.deadline())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Large frames are received straight into the session's frame
        // buffer (one copy, like a plain read into a big buffer) instead of
        // into provided buffers and copied again. The rest of a large frame
        // under way is one MSG_WAITALL receive; after one, the session stays
        // "direct" (plain receives of at least DIRECT_CHUNK into its buffer,
        // so the next frame's header and start land there too) until a
        // receive brings little. The multishot receive is stopped first, so
        // only one receive is ever active on the socket and the byte order
        // holds.
        let needed = session.recv_hint(0);
        if wants_read && (needed >= LARGE_FRAME_REMAINDER || s.direct) {
            if s.recv_armed && !s.recv_cancelled {
                self.cancel_recv(slot_id);
            } else if !s.recv_armed && !s.body_recv {
                self.submit_direct_recv(slot_id, needed);
            }
        } else if wants_read && !s.recv_armed && !s.body_recv {
            self.arm_recv(slot_id);
        } else if !wants_read && s.recv_armed && !s.recv_cancelled {
            self.cancel_recv(slot_id);
        }
        self.schedule(slot_id, timeout);
    }
}
