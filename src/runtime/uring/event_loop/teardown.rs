//! Closing a connection's socket: cancelling its operations, closing it once
//! none remain, and telling the connection, which settles the session and
//! decides between a redial and a stop. It must never close a socket, or
//! drop it from the file table, while an operation on it is outstanding:
//! the fd number could be reused under that operation.

use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{opcode, types};

use super::{user_data, EventLoop, Life, Op, Recv};

impl EventLoop {
    /// Go on closing a slot's socket. Returns whether it is closed (and the
    /// connection told); `false` while operations are still completing.
    pub(super) fn continue_teardown(&mut self, slot_id: u32, now: Instant) -> bool {
        let s = &mut self.slots[slot_id as usize];
        if s.inflight > 0 {
            if s.life == (Life::Closing { cancelled: false }) {
                if let Some(socket) = &s.socket {
                    s.life = Life::Closing { cancelled: true };
                    s.inflight += 1;
                    let entry = on_socket!(s.registered, slot_id, socket.as_raw_fd(), |t| {
                        opcode::AsyncCancel2::new(types::CancelBuilder::fd(t).all()).build()
                    })
                    .user_data(user_data(Op::Cancel, s.generation, slot_id));
                    self.push(entry);
                }
            }
            return false;
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
        s.send_off = 0;
        s.recv = Recv::None;
        s.life = Life::Running;
        if let Some(refusal) = s.conn.on_closed(now) {
            // The loop head sees the stop and stops every connection.
            self.stop.fail(refusal);
        }
        true
    }
}
