//! Dialling: the manager's addresses from the resolver (one slot polls the
//! first lookup, the others wait for it), the dial queue that keeps at most
//! [`MAX_DIALS`] connects and handshakes in flight, the connect and its
//! completion. It must never exceed [`MAX_DIALS`] dials in flight, nor start
//! a session before its connect has completed. When to dial, and the
//! back-off after a failed dial, are the connection's.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{opcode, types};

use super::{user_data, DialWait, EventLoop, Life, Op, Recv, MAX_DIALS, RESOLVE_POLL};
use crate::transport::Endpoint;

impl EventLoop {
    /// Carry out a connection's [`Action::Dial`](crate::connection::Action):
    /// start the connect, or fail it at once. Returns `false` when the dial
    /// waits (for the first lookup or a place in the dial queue); the slot
    /// is driven again when it may go on.
    pub(super) fn dial(&mut self, slot_id: u32, now: Instant) -> bool {
        let endpoint = self.plan.endpoint.clone();
        let Some(addresses) = self.resolver.addresses(now) else {
            // The first lookup of the manager's name is under way: one slot
            // looks again every RESOLVE_POLL, the others wait for it (10,000
            // slots polling would be half a million wake-ups a second).
            let s = &mut self.slots[slot_id as usize];
            if s.dial != DialWait::Resolving {
                s.dial = DialWait::Resolving;
                self.resolve_waiters.push(slot_id);
            }
            if self.resolve_waiters.first() == Some(&slot_id) {
                self.schedule(slot_id, Some(now + RESOLVE_POLL));
            }
            return false;
        };
        if !self.resolve_waiters.is_empty() {
            for waiter in std::mem::take(&mut self.resolve_waiters) {
                self.slots[waiter as usize].dial = DialWait::None;
                self.mark_dirty(waiter);
            }
        }
        if self.dials >= MAX_DIALS {
            let s = &mut self.slots[slot_id as usize];
            if s.dial != DialWait::Queued {
                s.dial = DialWait::Queued;
                self.dial_queue.push_back(slot_id);
            }
            return false;
        }
        let s = &mut self.slots[slot_id as usize];
        s.dial = DialWait::None;
        let target = match addresses {
            Ok(addresses) => {
                s.address_index = self.next_address;
                addresses[s.address_index % addresses.len()].clone()
            }
            Err(err) => {
                let why = format!("cannot reach manager {endpoint}: {err}");
                s.conn.on_dial_failed(why, now);
                return true;
            }
        };
        let socket = match socket2::Socket::new(target.domain(), socket2::Type::STREAM, None) {
            Ok(socket) => socket,
            Err(err) => {
                s.conn
                    .on_dial_failed(format!("cannot create a socket: {err}"), now);
                return true;
            }
        };
        if matches!(endpoint, Endpoint::Tcp { .. } | Endpoint::Tls { .. }) {
            if let Err(err) = self.plan.tcp.apply(socket2::SockRef::from(&socket)) {
                s.conn
                    .on_dial_failed(format!("cannot set up a socket: {err}"), now);
                return true;
            }
            one_pass_port_search(&socket);
        }
        s.conn.on_dialling(now);
        s.generation = (s.generation + 1) & 0x00FF_FFFF;
        s.recv = Recv::None;
        s.rcvlowat = 1;
        s.send_buf = Vec::new();
        s.life = Life::Running;
        s.inflight = 1;
        let fd = socket.as_raw_fd();
        s.registered = self.file_table
            && self
                .ring
                .submitter()
                .register_files_update(slot_id, &[fd])
                .is_ok();
        s.socket = Some(socket);
        let address = s.address.insert(target);
        let entry = on_socket!(s.registered, slot_id, fd, |t| {
            opcode::Connect::new(t, address.as_ptr().cast::<libc::sockaddr>(), address.len())
                .build()
        })
        .user_data(user_data(Op::Connect, s.generation, slot_id));
        s.dial = DialWait::Connecting;
        self.dials += 1;
        self.push(entry);
        true
    }

    /// The slot's dial is over: its session was welcomed, or its connect
    /// or handshake failed, or its socket closed. The next slot waiting to
    /// dial may.
    pub(super) fn dial_done(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        if !matches!(s.dial, DialWait::Connecting | DialWait::Handshaking) {
            return;
        }
        s.dial = DialWait::None;
        self.dials -= 1;
        // Entries may be left over from slots that dialled without waiting
        // their turn, some of which have since left the loop.
        while let Some(next) = self.dial_queue.pop_front() {
            let Some(waiting) = self.slots.get_mut(next as usize) else {
                continue;
            };
            if waiting.dial == DialWait::Queued {
                waiting.dial = DialWait::None;
                self.mark_dirty(next);
                break;
            }
        }
    }

    /// The handshake of a slot whose dial still counts is over once the
    /// manager's WELCOME is in: its place in the dial queue goes to the next.
    pub(super) fn dial_welcomed(&mut self, slot_id: u32) {
        let s = &self.slots[slot_id as usize];
        if s.dial == DialWait::Handshaking
            && s.conn
                .session()
                .is_some_and(|session| session.welcomed_at().is_some())
        {
            self.dial_done(slot_id);
        }
    }

    pub(super) fn on_connect(&mut self, slot_id: u32, result: i32, now: Instant) {
        let s = &mut self.slots[slot_id as usize];
        s.inflight = s.inflight.saturating_sub(1);
        if result < 0 {
            self.dial_done(slot_id);
            let s = &mut self.slots[slot_id as usize];
            // Dials go to the manager's next address from now on.
            if self.next_address == s.address_index {
                self.next_address = self.next_address.wrapping_add(1);
            }
            let why = format!(
                "cannot reach manager {}: {}",
                self.plan.endpoint,
                io::Error::from_raw_os_error(-result)
            );
            s.conn.on_dial_failed(why, now);
            return;
        }
        // The dial counts until the handshake is over (`dial_welcomed`): a
        // connection the manager has not accepted yet waits in its listen
        // backlog, and a backlog that overflows drops SYNs, each back only
        // after a 1 s retransmission.
        s.dial = DialWait::Handshaking;
        self.next_address = s.address_index;
        s.conn.on_connected(now);
    }
}

/// `IP_LOCAL_PORT_RANGE` (`linux/in.h`), which the `libc` crate lacks.
const IP_LOCAL_PORT_RANGE: libc::c_int = 51;

/// Let `connect()` choose the socket's source port from the whole local
/// port range in one pass. By default Linux tries the ports of one parity
/// first (it leaves the others to `bind()`), so once about half the range
/// is in use towards one manager address, every further connect walks all
/// of that half before it tries the other: 19,000 sessions took 4 s to
/// connect, most of it in that walk. A socket with a range of its own
/// (`IP_LOCAL_PORT_RANGE`, Linux 6.3) is searched in one pass since Linux
/// 6.8; 1–65535 keeps the system's range, which the kernel intersects it
/// with. Older kernels refuse the option or keep the parity walk, which
/// changes nothing else, so a refusal is ignored.
fn one_pass_port_search(socket: &socket2::Socket) {
    let range: u32 = (65535 << 16) | 1;
    // SAFETY: `setsockopt` reads `size_of::<u32>()` bytes from a pointer to
    // a live `u32` on this stack frame; the descriptor is the socket just
    // created, borrowed for the call.
    let _ = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            IP_LOCAL_PORT_RANGE,
            (&range as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::{one_pass_port_search, IP_LOCAL_PORT_RANGE};

    /// The socket's own port range as the kernel reports it, or the error
    /// of a kernel that does not know the option.
    fn port_range(socket: &socket2::Socket) -> Result<u32, i32> {
        let mut range: u32 = 0;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: `getsockopt` writes at most `len` bytes through a pointer
        // to a live `u32` on this stack frame and updates `len`, also live;
        // the descriptor is the test's open socket.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                IP_LOCAL_PORT_RANGE,
                (&mut range as *mut u32).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            Ok(range)
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    }

    #[test]
    fn a_dial_socket_gets_a_port_range_of_its_own() {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        match port_range(&socket) {
            // A kernel before 6.3 has no such option: nothing to set.
            Err(errno) => assert_eq!(errno, libc::ENOPROTOOPT),
            Ok(before) => {
                assert_eq!(before, 0, "a new socket has no range of its own");
                one_pass_port_search(&socket);
                assert_eq!(port_range(&socket), Ok((65535 << 16) | 1));
            }
        }
    }
}
