//! Driving slots: each dirty slot's [`Connection`](crate::connection::Connection)
//! is polled and its actions carried out on the ring (dial, send, collect a
//! receive, shut down writes, close, stop); then its receive is arranged to
//! match [`Receive`] and its next deadline scheduled. Nothing here decides
//! what a connection does; it never handles a completion itself (that is
//! `reap` and the `on_*` handlers) and never sleeps: every wait is a timer.

use std::net::Shutdown;
use std::time::Instant;

use super::{EventLoop, Life, Recv};
use crate::connection::{Action, Receive};

/// Actions carried out for one slot per drive, at most: a connection asks
/// for a handful at a time (a send, a close, a stop).
const ACTIONS_PER_DRIVE: usize = 16;

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
            let now = self.now;
            for i in 0..self.batch.len() {
                let slot = self.batch[i];
                let Some(s) = self.slots.get_mut(slot as usize) else {
                    continue; // it left the loop
                };
                s.dirty = false;
                self.drive(slot, now);
            }
            self.batch.clear();
        }
    }

    /// Carry out what the slot's connection asks, then arrange its receive
    /// and its timer.
    fn drive(&mut self, slot_id: u32, now: Instant) {
        for _ in 0..ACTIONS_PER_DRIVE {
            if self.slots[slot_id as usize].life == Life::Stopped {
                return;
            }
            let action = self.slots[slot_id as usize].conn.poll(now);
            let s = &mut self.slots[slot_id as usize];
            match action {
                Action::Wait => {
                    if !s.closing() {
                        break;
                    }
                    if !self.continue_teardown(slot_id, now) {
                        return; // its operations are still completing
                    }
                }
                Action::Dial => {
                    if !self.dial(slot_id, now) {
                        return; // waiting for the resolver or the dial queue
                    }
                }
                Action::Send(bytes) => self.send(slot_id, bytes),
                Action::Run(job) => {
                    let generation = s.conn.generation();
                    self.run_job((slot_id, generation), job, now);
                }
                Action::Collect => self.collect(slot_id),
                Action::ShutdownWrite => {
                    if let Some(socket) = &s.socket {
                        let _ = socket.shutdown(Shutdown::Write);
                    }
                }
                Action::Close => {
                    if s.life == Life::Running {
                        s.life = Life::Closing { cancelled: false };
                        let generation = s.conn.generation();
                        self.forget_route(slot_id, generation);
                    }
                }
                Action::Stop => {
                    s.life = Life::Stopped;
                    self.stopped += 1;
                    self.balance.stopped();
                    return;
                }
            }
        }
        if self.slots[slot_id as usize].leaving.is_some() && self.depart(slot_id) {
            return;
        }
        self.dial_welcomed(slot_id);
        self.arrange_receive(slot_id);
        let at = self.slots[slot_id as usize].conn.poll_timeout();
        self.schedule(slot_id, at);
    }

    /// Make the receive in flight match what the connection wants. Only one
    /// receive is ever active on a socket: switching kinds cancels the one
    /// in flight first, and the other starts once it has completed.
    fn arrange_receive(&mut self, slot_id: u32) {
        let s = &self.slots[slot_id as usize];
        if s.closing() || s.socket.is_none() || s.leaving.is_some() {
            return; // a leaving slot receives on the loop it goes to
        }
        match (s.conn.receive(), s.recv) {
            (Receive::Shared, Recv::None) => self.arm_recv(slot_id),
            (Receive::Direct { len, wait_all }, Recv::None) => {
                self.submit_direct_recv(slot_id, len, wait_all);
            }
            (Receive::Off | Receive::Direct { .. }, Recv::Shared { cancelled: false }) => {
                self.cancel_recv(slot_id);
            }
            _ => {}
        }
    }
}
