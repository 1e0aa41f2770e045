//! Dialling: the manager's addresses from the resolver (one slot polls the
//! first lookup, the others wait for it), the dial queue that keeps at most
//! [`MAX_DIALS`] connects in flight, the connect and its completion, and the
//! back-off before a redial. It must never exceed [`MAX_DIALS`] connects in
//! flight, nor start a session before its connect has completed.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{opcode, types};

use super::{user_data, EventLoop, Op, SlotPhase, MAX_DIALS, RESOLVE_POLL};
use crate::link::Link;
use crate::session::WorkerSession;
use crate::stats::SessionState;
use crate::transport::Endpoint;

impl EventLoop {
    pub(super) fn dial(&mut self, slot_id: u32, now: Instant) {
        let endpoint = self.plan.endpoint.clone();
        let Some(addresses) = self.resolver.addresses(now) else {
            // The first lookup of the manager's name is under way: one slot
            // looks again every RESOLVE_POLL, the others wait for it (10,000
            // slots polling would be half a million wake-ups a second).
            let s = &mut self.slots[slot_id as usize];
            if !s.resolve_waiting {
                s.resolve_waiting = true;
                self.resolve_waiters.push(slot_id);
            }
            if self.resolve_waiters.first() == Some(&slot_id) {
                self.schedule(slot_id, Some(now + RESOLVE_POLL));
            }
            return;
        };
        if !self.resolve_waiters.is_empty() {
            for waiter in std::mem::take(&mut self.resolve_waiters) {
                self.slots[waiter as usize].resolve_waiting = false;
                self.mark_dirty(waiter);
            }
        }
        if self.dials >= MAX_DIALS {
            let s = &mut self.slots[slot_id as usize];
            if !s.dial_queued {
                s.dial_queued = true;
                self.dial_queue.push_back(slot_id);
            }
            return;
        }
        let s = &mut self.slots[slot_id as usize];
        if s.dialled_once {
            self.agent.record_reconnect();
        }
        s.dialled_once = true;
        s.stats.set_state(SessionState::Connecting);
        let target = match addresses {
            Ok(addresses) => {
                s.address_index = self.next_address;
                addresses[s.address_index % addresses.len()].clone()
            }
            Err(err) => {
                let message = format!("cannot reach manager {endpoint}: {err}");
                self.dial_failed(slot_id, message, now);
                return;
            }
        };
        let socket = match socket2::Socket::new(target.domain(), socket2::Type::STREAM, None) {
            Ok(socket) => socket,
            Err(err) => {
                self.dial_failed(slot_id, format!("cannot create a socket: {err}"), now);
                return;
            }
        };
        if matches!(endpoint, Endpoint::Tcp { .. } | Endpoint::Tls { .. }) {
            if let Err(err) = self.plan.tcp.apply(socket2::SockRef::from(&socket)) {
                self.dial_failed(slot_id, format!("cannot set up a socket: {err}"), now);
                return;
            }
        }
        let s = &mut self.slots[slot_id as usize];
        s.generation = (s.generation + 1) & 0x00FF_FFFF;
        s.phase = SlotPhase::Connecting;
        s.deadline = Some(now + self.plan.connect_timeout);
        s.broken = None;
        s.eof = false;
        s.recv_armed = false;
        s.recv_cancelled = false;
        s.body_recv = false;
        s.body_waitall = false;
        s.body_cancelled = false;
        s.direct = false;
        s.teardown_cancelled = false;
        s.send_inflight = false;
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
        let deadline = s.deadline;
        s.dialling = true;
        self.dials += 1;
        self.push(entry);
        self.schedule(slot_id, deadline);
    }

    /// The slot's connect finished (or will never complete): the next slot
    /// waiting to dial may.
    pub(super) fn dial_done(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        if !s.dialling {
            return;
        }
        s.dialling = false;
        self.dials -= 1;
        while let Some(next) = self.dial_queue.pop_front() {
            let waiting = &mut self.slots[next as usize];
            if waiting.dial_queued {
                waiting.dial_queued = false;
                self.mark_dirty(next);
                break;
            }
        }
    }

    fn dial_failed(&mut self, slot_id: u32, message: String, now: Instant) {
        let s = &mut self.slots[slot_id as usize];
        crate::log_limit::warn_session(s.index, &message, now);
        s.stats.set_last_error(Some(message));
        self.back_off(slot_id, now);
    }

    pub(super) fn back_off(&mut self, slot_id: u32, now: Instant) {
        if self.stop_seen {
            self.stop_slot(slot_id);
            return;
        }
        let delay = {
            let s = &mut self.slots[slot_id as usize];
            s.backoff.next_delay(&mut self.rng)
        };
        let s = &mut self.slots[slot_id as usize];
        s.phase = SlotPhase::Idle;
        s.stats.set_state(SessionState::Disconnected);
        s.retry_at = now + delay;
        let at = s.retry_at;
        self.schedule(slot_id, Some(at));
    }

    pub(super) fn on_connect(&mut self, slot_id: u32, result: i32, now: Instant) {
        self.dial_done(slot_id);
        let s = &mut self.slots[slot_id as usize];
        s.inflight = s.inflight.saturating_sub(1);
        s.deadline = None;
        if result < 0 {
            // Dials go to the manager's next address from now on.
            if self.next_address == s.address_index {
                self.next_address = self.next_address.wrapping_add(1);
            }
            if s.broken.is_none() {
                s.broken = Some(format!(
                    "cannot reach manager {}: {}",
                    self.plan.endpoint,
                    io::Error::from_raw_os_error(-result)
                ));
            }
            s.phase = SlotPhase::Teardown;
            return;
        }
        if s.phase != SlotPhase::Connecting {
            return;
        }
        self.next_address = s.address_index;
        s.stats.begin_connection();
        s.phase = SlotPhase::Open;
        let session = WorkerSession::new(
            s.index,
            &self.plan.session,
            self.plan.handlers.clone(),
            s.stats.clone(),
            now,
        );
        let link = match &self.plan.tls {
            None => Link::plain(session),
            Some(tls) => match tls.connect() {
                Ok(conn) => Link::tls(session, conn),
                Err(why) => {
                    s.broken = Some(why);
                    return;
                }
            },
        };
        s.session = Some(Box::new(link));
    }
}
