//! A loop's slots: one per session it holds (its connection, socket and
//! operations in flight), by id, with the states the loop keeps for each;
//! and the wake-up of a loop whose handlers answer from another thread.

use std::os::unix::net::UnixStream;

use crate::connection::Connection;
use crate::runtime::ByteCounters;

/// The receive in flight on a slot's socket (at most one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    None,
    /// A multishot receive into the buffer ring.
    Shared {
        cancelled: bool,
    },
    /// A one-shot receive into the session's frame buffer (the rest of a
    /// large frame is waited for with the slot's `rcvlowat` above 1).
    Direct {
        cancelled: bool,
    },
}

/// Where a slot's dial waits before its connect is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DialWait {
    None,
    /// For the first lookup of the manager's name.
    Resolving,
    /// In the loop's dial queue, for a connect to finish.
    Queued,
    /// Its connect is in flight and counts against [`MAX_DIALS`].
    Connecting,
    /// Connected, the handshake not over yet: still counts.
    Handshaking,
}

/// One session of this loop: its connection, and the socket and operations
/// carrying it out.
pub(super) struct Slot {
    pub(super) conn: Connection,
    pub(super) counters: ByteCounters,
    pub(super) generation: u32,
    pub(super) socket: Option<socket2::Socket>,
    /// The socket is in the ring's file table at index `slot`.
    pub(super) registered: bool,
    pub(super) address: Option<socket2::SockAddr>,
    /// Which of the manager's addresses this slot's dial went to.
    pub(super) address_index: usize,
    /// Operations submitted on the current socket and not yet completed.
    pub(super) inflight: u32,
    pub(super) recv: Recv,
    /// The bytes of the send in flight (empty: none), and how much of them
    /// is written.
    pub(super) send_buf: Vec<u8>,
    pub(super) send_off: usize,
    pub(super) life: Life,
    pub(super) dial: DialWait,
    pub(super) dirty: bool,
    /// The socket's `SO_RCVLOWAT` as last set (1, the default, unless the
    /// rest of a large frame is being received).
    pub(super) rcvlowat: u32,
    /// Moving to this loop once its receive has ended (`balance`).
    pub(super) leaving: Option<u16>,
}

/// A loop's slots by id. A slot whose session moved to another loop is
/// vacant until a session arriving takes its id; completions and timers
/// naming a vacant slot are stale (the session left with nothing in
/// flight), so indexing one is a bug.
#[derive(Default)]
pub(super) struct Slots {
    slots: Vec<Option<Slot>>,
    /// The vacant ids, taken before new ones.
    vacant: Vec<u32>,
}

impl Slots {
    pub(super) fn new(slots: Vec<Slot>) -> Slots {
        Slots {
            slots: slots.into_iter().map(Some).collect(),
            vacant: Vec::new(),
        }
    }

    pub(super) fn get(&self, id: usize) -> Option<&Slot> {
        self.slots.get(id).and_then(Option::as_ref)
    }

    pub(super) fn get_mut(&mut self, id: usize) -> Option<&mut Slot> {
        self.slots.get_mut(id).and_then(Option::as_mut)
    }

    /// Take slot `id` out (its session leaves); the id is vacant.
    pub(super) fn take(&mut self, id: u32) -> Option<Slot> {
        let slot = self.slots.get_mut(id as usize)?.take()?;
        self.vacant.push(id);
        Some(slot)
    }

    /// Put a slot in at a vacant id, or a new one; returns the id.
    pub(super) fn put(&mut self, slot: Slot) -> u32 {
        match self.vacant.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() as u32 - 1
            }
        }
    }

    /// Put a slot taken out back at its id (its move failed).
    pub(super) fn put_back(&mut self, id: u32, slot: Slot) {
        self.vacant.retain(|&v| v != id);
        self.slots[id as usize] = Some(slot);
    }

    /// The number of ids, vacant ones included.
    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter().flatten()
    }

    /// The ids of the slots that are not vacant.
    pub(super) fn ids(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&id| self.slots[id as usize].is_some())
            .collect()
    }
}

impl std::ops::Index<usize> for Slots {
    type Output = Slot;
    fn index(&self, id: usize) -> &Slot {
        self.slots[id]
            .as_ref()
            .expect("a slot of this loop, not vacant")
    }
}

impl std::ops::IndexMut<usize> for Slots {
    fn index_mut(&mut self, id: usize) -> &mut Slot {
        self.slots[id]
            .as_mut()
            .expect("a slot of this loop, not vacant")
    }
}

/// What the slot's executor is doing with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    /// Carrying out the connection's actions.
    Running,
    /// Closing the socket (the connection asked); `cancelled`: its
    /// operations have been cancelled, the close waits for them.
    Closing { cancelled: bool },
    /// The connection has stopped for good.
    Stopped,
}

impl Slot {
    pub(super) fn closing(&self) -> bool {
        matches!(self.life, Life::Closing { .. })
    }
}

/// How a handler answering from another thread wakes the loop: the slot
/// is listed and a byte written to the loop's wake socket (whose receive
/// is always armed on the ring).
pub(super) struct LateWake {
    pub(super) slots: std::sync::Mutex<Vec<u32>>,
    pub(super) pending: std::sync::atomic::AtomicBool,
    pub(super) ring: UnixStream,
}

impl LateWake {
    pub(super) fn wake(&self, slot: u32) {
        use std::sync::atomic::Ordering;
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
        if !self.pending.swap(true, Ordering::AcqRel) {
            // Full (WouldBlock) means a byte is already there: the loop
            // wakes all the same.
            let _ = std::io::Write::write(&mut &self.ring, &[1]);
        }
    }

    /// The slots listed since the last call (none, without a lock, when no
    /// answer came).
    pub(super) fn take(&self) -> Vec<u32> {
        use std::sync::atomic::Ordering;
        if !self.pending.load(Ordering::Relaxed) {
            return Vec::new();
        }
        self.pending.store(false, Ordering::Release);
        std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
