//! Sending: the bytes a connection hands out, the one send in flight per
//! socket, the early send of large output, and the send completion. It
//! must never have two sends in flight on one socket, nor start one on a
//! socket whose teardown has cancelled its operations.

use std::io;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};

use super::{user_data, EventLoop, Op, EARLY_SEND};

impl EventLoop {
    /// Send what a receive produced right away when it is large (see
    /// [`EARLY_SEND`]); smaller output waits for the end of the batch, so
    /// small frames keep coalescing into one send per socket.
    pub(super) fn send_early(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        if !s.send_buf.is_empty() || s.closing() || s.conn.queued_output() < EARLY_SEND {
            return;
        }
        if let Some(bytes) = s.conn.transmit() {
            self.send(slot_id, bytes);
            self.submit_now = true;
        }
    }

    /// Carry out an [`Action::Send`](crate::connection::Action).
    pub(super) fn send(&mut self, slot_id: u32, bytes: Vec<u8>) {
        let s = &mut self.slots[slot_id as usize];
        s.send_buf = bytes;
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
        s.inflight += 1;
        self.push(entry);
    }

    pub(super) fn on_send(&mut self, slot_id: u32, result: i32) {
        let s = &mut self.slots[slot_id as usize];
        s.inflight = s.inflight.saturating_sub(1);
        if result <= 0 {
            s.send_buf = Vec::new();
            s.conn.on_io_error(if result == 0 {
                "connection lost: write returned 0".to_owned()
            } else {
                format!(
                    "connection lost: write failed: {}",
                    io::Error::from_raw_os_error(-result)
                )
            });
            return;
        }
        let n = result as usize;
        s.counters.sent(n);
        s.send_off += n;
        if s.send_off < s.send_buf.len() {
            // Once teardown has cancelled the socket's operations, nothing
            // new may start on it: a send submitted after the cancel would
            // keep the slot open for as long as the manager does not read.
            if !s.closing() {
                self.submit_send(slot_id);
            }
        } else {
            s.send_off = 0;
            s.conn.on_sent(std::mem::take(&mut s.send_buf));
        }
    }
}
