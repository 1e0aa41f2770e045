//! Receiving: the multishot receive into the shared buffer ring, the direct
//! receive into a session's frame buffer for large frames, their
//! cancellation and their completions. It must never have two receives
//! active on one socket (the stream's byte order depends on it), and hands
//! every selected buffer back to the ring.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{cqueue, opcode, types};

use super::{user_data, EventLoop, Op, Recv, BUF_GROUP};

impl EventLoop {
    /// Receive straight into the session's frame buffer, as the connection
    /// asked ([`Receive::Direct`](crate::connection::Receive)): `wait_all`,
    /// the rest of a large frame as one `MSG_WAITALL` receive (one
    /// completion per frame rather than one per segment's worth; it says
    /// nothing until it is complete, so the connection has it collected
    /// when a deadline falls due meanwhile).
    pub(super) fn submit_direct_recv(&mut self, slot_id: u32, len: usize, wait_all: bool) {
        let s = &mut self.slots[slot_id as usize];
        let Some(socket) = &s.socket else { return };
        let fd = socket.as_raw_fd();
        let Some(space) = s.conn.recv_space(len, wait_all) else {
            return;
        };
        let flags = if wait_all { libc::MSG_WAITALL } else { 0 };
        let entry = on_socket!(s.registered, slot_id, fd, |t| {
            opcode::Recv::new(t, space.as_mut_ptr(), len as u32)
                .flags(flags)
                .build()
        })
        .user_data(user_data(Op::RecvBody, s.generation, slot_id));
        s.recv = Recv::Direct { cancelled: false };
        s.inflight += 1;
        self.push(entry);
    }

    /// Completion of [`EventLoop::submit_direct_recv`]: the other place bytes
    /// are received, counted the same way. A cancelled receive completes
    /// with the bytes it has received so far (the kernel reports a partial
    /// receive's count, not the cancellation, once any byte has arrived:
    /// `io_sendrecv_fail`, Linux 6.0 on; the engine needs 6.1). The
    /// integration test `a_large_frame_trickling_in_keeps_the_heartbeat_alive`
    /// checks the echo of a frame received this way byte for byte.
    pub(super) fn on_body_recv(&mut self, slot_id: u32, result: i32, now: Instant) {
        let s = &mut self.slots[slot_id as usize];
        s.recv = Recv::None;
        s.inflight = s.inflight.saturating_sub(1);
        match result {
            n if n > 0 => {
                s.counters.received(n as usize);
                s.conn.on_received(n as usize, now);
                self.send_early(slot_id);
            }
            0 => s.conn.on_eof(now),
            r if r == -libc::ECANCELED || r == -libc::EINTR => s.conn.on_receive_cancelled(),
            r => s.conn.on_io_error(format!(
                "connection lost: read failed: {}",
                io::Error::from_raw_os_error(-r)
            )),
        }
    }

    pub(super) fn arm_recv(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        let Some(socket) = &s.socket else { return };
        let entry = on_socket!(s.registered, slot_id, socket.as_raw_fd(), |t| {
            opcode::RecvMulti::new(t, BUF_GROUP).build()
        })
        .user_data(user_data(Op::Recv, s.generation, slot_id));
        s.recv = Recv::Shared { cancelled: false };
        s.inflight += 1;
        self.push(entry);
    }

    pub(super) fn cancel_recv(&mut self, slot_id: u32) {
        self.slots[slot_id as usize].recv = Recv::Shared { cancelled: true };
        self.cancel(slot_id, Op::Recv);
    }

    /// Cancel the slot's operation of kind `op` on its current connection.
    pub(super) fn cancel(&mut self, slot_id: u32, op: Op) {
        let s = &mut self.slots[slot_id as usize];
        let target = user_data(op, s.generation, slot_id);
        s.inflight += 1;
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(user_data(Op::Cancel, s.generation, slot_id));
        self.push(entry);
    }

    /// The engine's one `recv_raw`: a receive completion.
    pub(super) fn on_recv(
        &mut self,
        slot_id: u32,
        result: i32,
        flags: u32,
        selected: Option<u16>,
        now: Instant,
    ) {
        let more = cqueue::more(flags);
        self.receives = self.receives.wrapping_add(1);
        let s = &mut self.slots[slot_id as usize];
        if result > 0 {
            let n = result as usize;
            s.counters.received(n);
            if let (Some(bid), Some(buffers)) = (selected, self.buffers.as_ref()) {
                s.conn.on_input(buffers.data(bid, n), now);
            }
            self.send_early(slot_id);
        }
        self.recycle(selected);
        if !more {
            let s = &mut self.slots[slot_id as usize];
            s.recv = Recv::None;
            s.inflight = s.inflight.saturating_sub(1);
            match result {
                0 => s.conn.on_eof(now),
                r if r > 0 => {}
                r if r == -libc::ENOBUFS || r == -libc::ECANCELED || r == -libc::EINTR => {}
                r => s.conn.on_io_error(format!(
                    "connection lost: read failed: {}",
                    io::Error::from_raw_os_error(-r)
                )),
            }
        }
    }
}
