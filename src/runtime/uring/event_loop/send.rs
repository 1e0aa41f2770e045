//! Sending: a session's queued output taken into its send buffer, the one
//! send in flight per socket, the early send of large output, and the send
//! completion. It must never have two sends in flight on one socket, nor
//! start one on a socket whose teardown has cancelled its operations.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::{user_data, EventLoop, Op, SlotPhase, EARLY_SEND};
use crate::protocol::frame::SHRINK_ABOVE;

impl EventLoop {
    /// Send what a receive produced right away when it is large (see
    /// [`EARLY_SEND`]); smaller output waits for the end of the batch, so
    /// small frames keep coalescing into one send per socket.
    pub(super) fn send_early(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        // Not while a send is in flight or a failed one left bytes unsent
        // (the connection is broken; teardown decides), so the stream keeps
        // its order.
        if s.send_inflight
            || s.phase != SlotPhase::Open
            || s.broken.is_some()
            || s.send_off < s.send_buf.len()
        {
            return;
        }
        let Some(session) = s.session.as_mut() else {
            return;
        };
        if session.queued_output() < EARLY_SEND {
            return;
        }
        self.send_output(slot_id);
        self.submit_now = true;
    }

    /// Take the session's queued output into `send_buf` and send it.
    pub(super) fn send_output(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        let Some(session) = s.session.as_mut() else {
            return;
        };
        let spare = std::mem::take(&mut s.spare);
        s.send_buf = session.take_output(spare);
        s.send_off = 0;
        self.submit_send(slot_id);
    }

    /// The engine's one `send_raw`: submit the unsent part of `send_buf`.
    fn submit_send(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        let Some(socket) = &s.socket else { return };
        let remaining = &s.send_buf[s.send_off..];
        let len = remaining.len().min(u32::MAX as usize) as u32;
        let entry = on_socket!(s.registered, slot_id, socket.as_raw_fd(), |t| {
            opcode::Send::new(t, remaining.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        })
        .user_data(user_data(Op::Send, s.generation, slot_id));
        s.send_inflight = true;
        s.inflight += 1;
        self.push(entry);
    }

    pub(super) fn on_send(&mut self, slot_id: u32, result: i32) {
        let s = &mut self.slots[slot_id as usize];
        s.inflight = s.inflight.saturating_sub(1);
        s.send_inflight = false;
        if result < 0 {
            if s.broken.is_none() {
                s.broken = Some(format!(
                    "connection lost: write failed: {}",
                    io::Error::from_raw_os_error(-result)
                ));
            }
            return;
        }
        let n = result as usize;
        s.counters.sent(n);
        s.send_off += n;
        if s.send_off < s.send_buf.len() {
            if n == 0 {
                s.broken = Some("connection lost: write returned 0".to_owned());
                return;
            }
            // Once teardown has cancelled the socket's operations, nothing
            // new may start on it: a send submitted after the cancel would
            // keep the slot open for as long as the manager does not read.
            if s.phase == SlotPhase::Teardown {
                return;
            }
            self.submit_send(slot_id);
        } else {
            let mut done = std::mem::take(&mut s.send_buf);
            // Like the frame buffer: a buffer grown by large output is kept
            // while output stays large, and given back once it is small.
            if done.capacity() > SHRINK_ABOVE && done.len() <= SHRINK_ABOVE {
                done = Vec::new();
            }
            done.clear();
            s.spare = done;
            s.send_off = 0;
            // Its RESULTs are written, whatever the loop does next (a
            // drain deadline may be judged before the slot is driven).
            if let Some(session) = s.session.as_mut() {
                session.output_written();
            }
        }
    }
}
