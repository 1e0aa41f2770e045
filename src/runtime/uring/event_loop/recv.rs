//! Receiving: the multishot receive into the shared buffer ring, the direct
//! receive into a session's frame buffer for large frames, their
//! cancellation and their completions. It must never have two receives
//! active on one socket (the stream's byte order depends on it), and hands
//! every selected buffer back to the ring.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{cqueue, opcode, types};

use super::{user_data, EventLoop, Op, BUF_GROUP, DIRECT_CHUNK, DIRECT_MAX, LARGE_FRAME_REMAINDER};

impl EventLoop {
    /// Receive straight into the session's frame buffer: the `needed` bytes
    /// that complete a large frame under way (all of them, up to
    /// [`DIRECT_MAX`]: MSG_WAITALL), or else whatever has arrived, up to
    /// [`DIRECT_CHUNK`] or the rest of the frame under way.
    pub(super) fn submit_direct_recv(&mut self, slot_id: u32, needed: usize) {
        let s = &mut self.slots[slot_id as usize];
        let (Some(socket), Some(session)) = (&s.socket, s.session.as_mut()) else {
            return;
        };
        let fd = socket.as_raw_fd();
        // The rest of a large frame is one MSG_WAITALL receive: one
        // completion per frame rather than one per segment's worth. It says
        // nothing until it is complete, so a session deadline that falls due
        // meanwhile cancels it first (see `drive_open`).
        let (len, flags) = if needed >= LARGE_FRAME_REMAINDER {
            // At most DIRECT_MAX at a time: the buffer is filled with zeros
            // up to `len` first, and a peer that sends only the header of a
            // huge frame must not make the agent commit max_body at once.
            (needed.min(DIRECT_MAX), libc::MSG_WAITALL)
        } else {
            (needed.max(DIRECT_CHUNK), 0)
        };
        let space = session.recv_space(len);
        let entry = on_socket!(s.registered, slot_id, fd, |t| {
            opcode::Recv::new(t, space.as_mut_ptr(), len as u32)
                .flags(flags)
                .build()
        })
        .user_data(user_data(Op::RecvBody, s.generation, slot_id));
        s.body_recv = true;
        s.body_waitall = flags != 0;
        s.body_cancelled = false;
        s.inflight += 1;
        self.push(entry);
    }

    /// Cancel the direct receive in flight; it completes with the bytes it
    /// has received so far (the kernel reports a partial receive's count,
    /// not the cancellation, once any byte has arrived: `io_sendrecv_fail`,
    /// Linux 6.0 on; the engine needs 6.1). The integration test
    /// `a_large_frame_trickling_in_keeps_the_heartbeat_alive` checks the
    /// echo of a frame received this way byte for byte.
    pub(super) fn cancel_body_recv(&mut self, slot_id: u32) {
        self.slots[slot_id as usize].body_cancelled = true;
        self.cancel(slot_id, Op::RecvBody);
    }

    /// Completion of [`EventLoop::submit_direct_recv`]: the other place bytes
    /// are received, counted the same way.
    pub(super) fn on_body_recv(&mut self, slot_id: u32, result: i32, now: Instant) {
        let s = &mut self.slots[slot_id as usize];
        s.body_recv = false;
        s.body_waitall = false;
        s.body_cancelled = false;
        s.inflight = s.inflight.saturating_sub(1);
        match result {
            n if n > 0 => {
                s.counters.received(n as usize);
                // Stay direct while receives come large: a stream of large
                // frames. Smaller ones go back to the shared buffers.
                s.direct = n as usize >= DIRECT_CHUNK;
                if let Some(session) = s.session.as_mut() {
                    session.on_received(n as usize, now);
                }
                self.send_early(slot_id);
            }
            0 => {
                s.eof = true;
                if let Some(session) = s.session.as_mut() {
                    session.on_eof(now);
                }
            }
            r if r == -libc::ECANCELED || r == -libc::EINTR => {}
            r => {
                if s.broken.is_none() {
                    s.broken = Some(format!(
                        "connection lost: read failed: {}",
                        io::Error::from_raw_os_error(-r)
                    ));
                }
            }
        }
    }

    pub(super) fn arm_recv(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        let Some(socket) = &s.socket else { return };
        let entry = on_socket!(s.registered, slot_id, socket.as_raw_fd(), |t| {
            opcode::RecvMulti::new(t, BUF_GROUP).build()
        })
        .user_data(user_data(Op::Recv, s.generation, slot_id));
        s.recv_armed = true;
        s.recv_cancelled = false;
        s.inflight += 1;
        self.push(entry);
    }

    pub(super) fn cancel_recv(&mut self, slot_id: u32) {
        self.slots[slot_id as usize].recv_cancelled = true;
        self.cancel(slot_id, Op::Recv);
    }

    /// Cancel the slot's operation of kind `op` on its current connection.
    fn cancel(&mut self, slot_id: u32, op: Op) {
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
        let s = &mut self.slots[slot_id as usize];
        if result > 0 {
            let n = result as usize;
            s.counters.received(n);
            if let (Some(bid), Some(buffers)) = (selected, self.buffers.as_ref()) {
                let data = buffers.data(bid, n);
                if let Some(session) = s.session.as_mut() {
                    if session.closed().is_none() {
                        session.on_input(data, now);
                    }
                }
            }
            self.send_early(slot_id);
        }
        self.recycle(selected);
        let s = &mut self.slots[slot_id as usize];
        if !more {
            s.recv_armed = false;
            s.inflight = s.inflight.saturating_sub(1);
            match result {
                0 => {
                    s.eof = true;
                    if let Some(session) = s.session.as_mut() {
                        session.on_eof(now);
                    }
                }
                r if r > 0 => {}
                r if r == -libc::ENOBUFS || r == -libc::ECANCELED || r == -libc::EINTR => {}
                r => {
                    if s.broken.is_none() {
                        s.broken = Some(format!(
                            "connection lost: read failed: {}",
                            io::Error::from_raw_os_error(-r)
                        ));
                    }
                }
            }
        }
    }
}
