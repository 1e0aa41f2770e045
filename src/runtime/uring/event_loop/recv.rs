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

/// `IORING_RECVSEND_POLL_FIRST`: wait for the socket to be readable before
/// the first attempt to receive.
const IORING_RECVSEND_POLL_FIRST: u16 = 1;

impl EventLoop {
    /// Receive straight into the session's frame buffer, as the connection
    /// asked ([`Receive::Direct`](crate::connection::Receive)). `wait_all`:
    /// the rest of a large frame, received in one completion rather than
    /// one per segment's worth. The socket's `SO_RCVLOWAT` is set to the
    /// bytes still to come, up to a third of its receive buffer
    /// ([`lowat_mark`]), and the receive polls first, so the kernel wakes
    /// the loop once they are queued instead of at every segment: each
    /// wake-up costs the loop a context switch, and the sender, on
    /// loopback, the wake-up itself. `MSG_WAITALL` is the fallback where
    /// the mark cannot be set. Either way the receive says nothing until it
    /// completes, so the connection has it collected when a deadline falls
    /// due meanwhile ([`EventLoop::collect`]).
    pub(super) fn submit_direct_recv(&mut self, slot_id: u32, len: usize, wait_all: bool) {
        let s = &mut self.slots[slot_id as usize];
        let Some(socket) = &s.socket else { return };
        let fd = socket.as_raw_fd();
        let mark = if wait_all { lowat_mark(socket, len) } else { 1 };
        let marked = set_rcvlowat(socket, &mut s.rcvlowat, mark);
        let lowat = wait_all && marked;
        let Some(space) = s.conn.recv_space(len, wait_all) else {
            return;
        };
        let (flags, ioprio) = match (wait_all, lowat) {
            (true, true) => (0, IORING_RECVSEND_POLL_FIRST),
            (true, false) => (libc::MSG_WAITALL, 0),
            (false, _) => (0, 0),
        };
        let entry = on_socket!(s.registered, slot_id, fd, |t| {
            opcode::Recv::new(t, space.as_mut_ptr(), len as u32)
                .flags(flags)
                .ioprio(ioprio)
                .build()
        })
        .user_data(user_data(Op::RecvBody, s.generation, slot_id));
        s.recv = Recv::Direct { cancelled: false };
        s.inflight += 1;
        self.push(entry);
    }

    /// A deadline is due while the rest of a large frame is being received
    /// ([`Action::Collect`](crate::connection::Action)): have the receive
    /// complete with what it holds, which counts as received and so keeps
    /// the heartbeat alive for a manager still sending. A receive waiting
    /// on `SO_RCVLOWAT` holds nothing yet: the mark goes back to 1, which
    /// completes it at once with the bytes queued, if any; with none, and
    /// for a `MSG_WAITALL` receive, it is cancelled (completing with what
    /// it has received so far).
    pub(super) fn collect(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        let Recv::Direct { cancelled } = &mut s.recv else {
            s.conn.on_receive_cancelled();
            return;
        };
        if s.rcvlowat > 1 {
            if let Some(socket) = &s.socket {
                if set_rcvlowat(socket, &mut s.rcvlowat, 1) && queued_bytes(socket) > 0 {
                    return;
                }
            }
        }
        *cancelled = true;
        self.cancel(slot_id, Op::RecvBody);
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
        set_rcvlowat(socket, &mut s.rcvlowat, 1);
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
        self.receives += 1;
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

/// The receive mark for `len` bytes still to come: all of them, or a third
/// of the socket's receive buffer if that is less. The kernel keeps about
/// half of the buffer for data (the rest pays for its bookkeeping), so a
/// mark near half is met only once the receive window has closed: the
/// sender then stops until the loop has woken and read. With a third, a
/// window's worth stays open while the loop wakes. Measured on a 1 MiB
/// sink (10 alternating runs, median of the MiB/s): 4,933 with the whole
/// rest, 5,267 with a third, slowest runs 2,885 and 3,624. The buffer is
/// read afresh, since the kernel grows it as the stream goes; if it cannot
/// be read, the mark is the whole rest (the kernel caps it in any case).
fn lowat_mark(socket: &socket2::Socket, len: usize) -> u32 {
    let buffer = socket.recv_buffer_size().unwrap_or(usize::MAX);
    let mark = len.min((buffer / 3).max(1));
    u32::try_from(mark).unwrap_or(u32::MAX)
}

/// Set the socket's `SO_RCVLOWAT` to `mark` unless `current` says it is
/// already; whether it is now. The kernel caps the mark at half its
/// largest receive buffer, and wakes a reader before the mark when memory
/// or the receive window runs short, so a mark never stalls a stream.
fn set_rcvlowat(socket: &socket2::Socket, current: &mut u32, mark: u32) -> bool {
    if *current == mark {
        return true;
    }
    let value = libc::c_int::try_from(mark).unwrap_or(libc::c_int::MAX);
    // SAFETY: `setsockopt` reads `size_of::<c_int>()` bytes from a pointer
    // to a live `c_int` on this stack frame; the descriptor is the
    // slot's open socket, borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return false;
    }
    *current = mark;
    true
}

/// Bytes queued on the socket and not read yet (`FIONREAD`); 0 if unknown.
fn queued_bytes(socket: &socket2::Socket) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: `FIONREAD` writes one `c_int` through the pointer, which
    // points at a live `c_int` on this stack frame; the descriptor is the
    // slot's open socket, borrowed for the call.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut queued) };
    if rc == 0 {
        usize::try_from(queued).unwrap_or(0)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::lowat_mark;

    #[test]
    fn the_mark_is_the_rest_or_a_third_of_the_receive_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let socket = socket2::Socket::from(stream);
        let buffer = socket.recv_buffer_size().unwrap();
        assert!(buffer >= 3 * 1024, "receive buffer of {buffer} B");
        assert_eq!(lowat_mark(&socket, 1024), 1024);
        assert_eq!(lowat_mark(&socket, 64 << 20) as usize, buffer / 3);
        // The kernel's buffer is what counts, read at each call.
        socket.set_recv_buffer_size(buffer / 4).unwrap();
        let smaller = socket.recv_buffer_size().unwrap();
        assert_ne!(smaller, buffer);
        assert_eq!(lowat_mark(&socket, 64 << 20) as usize, smaller / 3);
    }
}
