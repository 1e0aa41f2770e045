//! One io_uring event loop: a thread, a ring, a provided-buffer ring, and the
//! sessions assigned to this thread.
//!
//! Every socket read and write is a submission and a completion; the only
//! syscall in steady state is `io_uring_enter`, once per loop iteration, which
//! submits everything queued and waits for the next completion or timer.
//!
//! The loop is an executor: each slot's [`Connection`] decides what happens
//! (dial, send, receive how, shut down, close, stop) and the loop carries it
//! out on the ring and reports the completions back. Reads are multishot
//! receives into the shared buffer ring, decoded where they lie and the
//! buffer handed straight back, or, when the connection asks for it
//! ([`Receive::Direct`](crate::connection::Receive)), one-shot receives into
//! the session's frame buffer. Writes are coalesced: whatever a session
//! produced while its previous send was in flight goes out as one send,
//! except that a receive producing [`EARLY_SEND`] bytes or more sends them
//! at once. At most one receive and one send are in flight per socket, so
//! the stream order is the order of the frames.
//!
//! Operation lifetimes: each operation's `user_data` names its slot, the
//! connection generation and its kind. A completion for an older generation
//! is stale and only returns its buffer. A socket is closed only when no
//! operation on it is outstanding, so an fd number is never reused under an
//! operation that still refers to it.
//!
//! The loop is split by concern. This file holds the types, the constants
//! and the loop itself (`new`, `run`, submitting and waiting, timers);
//! `drive` carries out each dirty slot's actions; `dial` connects (the
//! resolver, the dial queue); `recv` arms the multishot and direct receives
//! and handles their completions; `send` writes output (early sends
//! included); `teardown` cancels a connection's operations and closes it;
//! `reap` collects completions, dispatches them, and shuts the loop down;
//! `children` runs declared handlers' children for the loop's sessions, their
//! pipes being operations on the same ring (`children/io`, in `child_io.rs`);
//! `slot` holds the per-session state; `balance` moves sessions between
//! loops.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::bufring::BufRing;
use super::resolver::Resolver;
use super::timers::Timers;
use crate::connection::drain::DrainTally;
use crate::connection::{Connection, READ_CHUNK};
use crate::runtime::{AgentPlan, ByteCounters, StopHandle};
use crate::stats::{AgentStats, LOOP_BEAT_INTERVAL};

/// Submission queue size; the completion queue is 8 times larger because
/// multishot receives post many completions per submission.
pub const RING_ENTRIES: u32 = 1024;
/// Buffer-ring group id.
const BUF_GROUP: u16 = 7;
/// Buffers in each loop's ring, and their size.
pub const BUF_ENTRIES: u16 = 256;
pub const BUF_LEN: usize = READ_CHUNK;
/// A session with this much output queued by one receive completion sends it
/// at once, before the rest of the completion batch is handled, so the peer
/// works on the first results while the later ones are computed (as a
/// read-then-write loop does), instead of both sides taking turns with the
/// whole window.
const EARLY_SEND: usize = 32 * 1024;
/// How long shutdown waits for cancelled operations to complete.
const REAP_DEADLINE: Duration = Duration::from_secs(2);
/// Dials in flight per loop, at most, from the connect until the manager's
/// WELCOME: an agent starting 10,000 sessions (or redialling them all after
/// the manager restarts) does not leave more connections waiting in the
/// manager's listen backlog (4096 by default) than it holds; the ones a
/// full backlog drops come back only after a 1 s retransmission.
const MAX_DIALS: usize = 256;
/// How often a slot looks again while the manager's name is first looked up.
const RESOLVE_POLL: Duration = Duration::from_millis(20);
/// A loop with fewer receive completions than this in a beat interval is
/// quiet: it gives back the memory a burst left behind (the buffer ring's
/// touched pages, the allocator's free pages).
const QUIET_RECEIVES: u64 = 1024;

/// Kinds of operation, in the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    Recv = 1,
    Send = 2,
    Connect = 3,
    Cancel = 4,
    Wake = 5,
    RecvBody = 6,
    /// Operations on declared handlers' children (`children`); the slot
    /// field of their `user_data` is the child's entry.
    ChildStdout = 7,
    ChildStderr = 8,
    ChildProtocol = 9,
    ChildWrite = 10,
    ChildExit = 11,
    ChildCancel = 12,
}

fn user_data(op: Op, generation: u32, slot: u32) -> u64 {
    (u64::from(op as u8) << 56) | (u64::from(generation & 0x00FF_FFFF) << 32) | u64::from(slot)
}

fn decode_user_data(data: u64) -> (u8, u32, u32) {
    (
        (data >> 56) as u8,
        ((data >> 32) & 0x00FF_FFFF) as u32,
        data as u32,
    )
}

/// What a finished loop reports.
#[derive(Debug, Default)]
pub struct LoopReport {
    pub unfinished: DrainTally,
}

/// The per-thread loop.
pub struct EventLoop {
    ring: IoUring,
    buffers: Option<BufRing>,
    slots: Slots,
    /// Slots that are not vacant.
    live: usize,
    /// Moving sessions between loops (`balance`): what the loops share,
    /// this loop's inbox, its measure of itself.
    balance: Arc<balance::Balance>,
    inbox: crossbeam_channel::Receiver<balance::Arrival>,
    meter: balance::Meter,
    /// The slots told to leave, and when.
    leaving: Vec<(u32, Instant)>,
    plan: Arc<AgentPlan>,
    agent: Arc<AgentStats>,
    stop: StopHandle,
    stop_seen: bool,
    wake_rx: UnixStream,
    wake_buf: Box<[u8]>,
    wake_armed: bool,
    dirty: Vec<u32>,
    /// Slots whose connection has stopped (the loop ends when all have).
    stopped: usize,
    batch: Vec<u32>,
    completions: Vec<(u64, i32, u32)>,
    timers: Timers,
    resolver: Resolver,
    /// A sparse file table with one entry per slot was registered.
    file_table: bool,
    /// Sends were queued while handling completions: submit them before
    /// handling the next one.
    submit_now: bool,
    /// Dials in flight (connects and handshakes), at most [`MAX_DIALS`];
    /// the slots waiting for one to finish, in order.
    dials: usize,
    dial_queue: std::collections::VecDeque<u32>,
    /// Which of the manager's addresses dials go to: the one that last
    /// connected, or the one after the last that failed. Shared by the
    /// loop's slots, so they move past an unreachable address together
    /// instead of each failing on it once.
    next_address: usize,
    /// Slots waiting for the first lookup of the manager's name; the first
    /// polls for the answer, the others are woken when it comes.
    resolve_waiters: Vec<u32>,
    /// The declared handlers this loop runs for its sessions (`None`: none
    /// declared).
    children: Option<children::Children>,
    /// Slots whose handlers answered from another thread.
    late: Arc<LateWake>,
    /// Which of the runtime's loops this is, and how many there are.
    part: usize,
    /// Receive completions so far, and as of the last quiet check, and when
    /// that was; whether memory was given back since the last receive.
    receives: u64,
    receives_at_check: u64,
    quiet_check: Instant,
    trimmed: bool,
    /// The clock as read once per turn, after the wait ([`EventLoop::run`]).
    now: Instant,
}

/// Build an operation on a slot's socket: through the registered file table
/// when the slot's socket is registered (no file lookup per operation), by
/// descriptor otherwise. `$build` is a closure taking the target.
macro_rules! on_socket {
    ($registered:expr, $slot:expr, $fd:expr, $build:expr) => {
        if $registered {
            ($build)(types::Fixed($slot))
        } else {
            ($build)(types::Fd($fd))
        }
    };
}

/// Build the ring with the flags this engine relies on.
pub fn build_ring() -> io::Result<IoUring> {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .setup_submit_all()
        .setup_cqsize(RING_ENTRIES * 8)
        .build(RING_ENTRIES)
}

// After `on_socket!`, so the child modules see the macro.
pub mod balance;
mod children;
mod dial;
mod drive;
mod reap;
mod recv;
mod send;
mod slot;
mod teardown;

use slot::{DialWait, LateWake, Life, Recv, Slot, Slots};

impl EventLoop {
    /// Create the loop on the calling thread (the ring is single-issuer).
    pub fn new(
        plan: Arc<AgentPlan>,
        agent: Arc<AgentStats>,
        stop: StopHandle,
        sessions: Vec<u32>,
        (wake_rx, wake_tx): (UnixStream, UnixStream),
        (part, parts): (usize, usize),
        (balance, inbox): (
            Arc<balance::Balance>,
            crossbeam_channel::Receiver<balance::Arrival>,
        ),
    ) -> io::Result<EventLoop> {
        let ring = build_ring()?;
        let buffers = BufRing::new(&ring, BUF_GROUP, BUF_ENTRIES, BUF_LEN)?;
        // Registered files spare each operation the file lookup; kernels
        // before 5.19 lack sparse tables, and then descriptors are used.
        // Sessions coming from other loops take the ids their leaving freed,
        // so a loop never holds more ids than the runtime has sessions.
        let table = if balance.moves() {
            plan.sessions as usize
        } else {
            sessions.len()
        };
        let file_table = ring
            .submitter()
            .register_files_sparse(table.max(1) as u32)
            .is_ok();
        let now = Instant::now();
        let late = Arc::new(LateWake {
            slots: std::sync::Mutex::new(Vec::new()),
            pending: std::sync::atomic::AtomicBool::new(false),
            ring: wake_tx,
        });
        let slots = sessions
            .into_iter()
            .enumerate()
            .map(|(slot, index)| {
                let mut conn = Connection::new(index, plan.clone(), agent.clone(), now);
                // Kept only when a handler answers later; the loop's wake
                // socket is armed either way, so nothing here depends on it.
                let waker = late.clone();
                let _kept = conn.set_waker(Arc::new(move || waker.wake(slot as u32)));
                Slot {
                    counters: ByteCounters::new(conn.stats().clone()),
                    conn,
                    generation: 0,
                    socket: None,
                    registered: false,
                    address: None,
                    address_index: 0,
                    inflight: 0,
                    recv: Recv::None,
                    send_buf: Vec::new(),
                    send_off: 0,
                    life: Life::Running,
                    dial: DialWait::None,
                    dirty: false,
                    rcvlowat: 1,
                    leaving: None,
                }
            })
            .collect::<Vec<_>>();
        let dirty = (0..slots.len() as u32).collect();
        let timers = Timers::new(slots.len());
        let resolver = Resolver::new(&plan.endpoint);
        let declared = plan.handlers.declared();
        let children = (!declared.handlers.is_empty()).then(|| {
            let share = children::loop_share(declared, part, parts);
            let queue = crate::runtime::handler_queue_bound(slots.len() as u32, &plan);
            children::Children::new(&share, queue, now)
        });
        Ok(EventLoop {
            ring,
            buffers: Some(buffers),
            live: slots.len(),
            slots: Slots::new(slots),
            balance,
            inbox,
            meter: balance::Meter::new(now),
            leaving: Vec::new(),
            plan,
            agent,
            stop,
            stop_seen: false,
            wake_rx,
            wake_buf: vec![0; 64].into_boxed_slice(),
            wake_armed: false,
            dirty,
            stopped: 0,
            batch: Vec::new(),
            completions: Vec::with_capacity(RING_ENTRIES as usize),
            timers,
            resolver,
            file_table,
            submit_now: false,
            dials: 0,
            dial_queue: std::collections::VecDeque::new(),
            next_address: 0,
            resolve_waiters: Vec::new(),
            children,
            late,
            part,
            receives: 0,
            receives_at_check: 0,
            quiet_check: now,
            trimmed: true,
            now,
        })
    }

    /// Run until every session of this loop has stopped (and, when
    /// sessions move between loops, every session of the runtime).
    pub fn run(mut self) -> LoopReport {
        let beat = self.agent.register_loop();
        loop {
            if !self.wake_armed {
                self.arm_wake();
            }
            let now = self.now;
            self.take_arrivals(now);
            if !self.stop_seen && self.stop.is_requested() {
                self.stop_seen = true;
                for i in self.slots.ids() {
                    self.slots[i as usize].conn.request_stop(now);
                    self.mark_dirty(i);
                }
            }
            beat.beat(now);
            self.trim_when_quiet(now);
            self.rebalance(now);
            self.fire_timers(now);
            for slot in self.late.take() {
                if self.slots.get(slot as usize).is_some() {
                    self.mark_dirty(slot);
                }
            }
            self.drive_children(now);
            self.drive_dirty();
            // The jobs the connections handed out start before the wait (no
            // clock read per turn when no handler is declared).
            if self.children.is_some() {
                self.drive_children(Instant::now());
            }
            if self.stopped == self.live && (!self.balance.moves() || self.balance.settled()) {
                break;
            }
            if let Some(buffers) = &self.buffers {
                buffers.publish();
            }
            self.submit_and_wait();
            // The loop's one clock read per turn: the completions reaped
            // next happened by now, and the next turn's timers and drives
            // are judged at it (later by at most the turn's own work).
            self.now = Instant::now();
            self.reap();
        }
        self.shutdown()
    }

    fn submit_and_wait(&mut self) {
        let now = self.now;
        let timeout = if self.dirty.is_empty() {
            // Wake at least once per beat interval, idle or not (the watchdog).
            let children = self.children.as_ref().and_then(|c| c.next_deadline());
            let next = match (self.timers.next(), children) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => a.or(b).unwrap_or(now + LOOP_BEAT_INTERVAL),
            };
            next.saturating_duration_since(now).min(LOOP_BEAT_INTERVAL)
        } else {
            // Work is pending: submit and collect what is ready, but do not sleep.
            Duration::ZERO
        };
        let ts = types::Timespec::new()
            .sec(timeout.as_secs())
            .nsec(timeout.subsec_nanos());
        let args = types::SubmitArgs::new().timespec(&ts);
        let result = self.ring.submitter().submit_with_args(1, &args);
        if let Err(err) = result {
            match err.raw_os_error() {
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => {}
                _ => tracing::error!("io_uring_enter failed: {err}"),
            }
        }
    }

    /// Queue a submission, flushing the queue to the kernel if it is full.
    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every entry we push points only at memory that outlives
            // its operation: buffers owned by a slot that is not reused or
            // dropped until the operation's completion arrives (`inflight`),
            // socket addresses held in the slot likewise, the buffer ring
            // (unregistered only after all operations end), and the wake
            // buffer owned by the loop.
            let pushed = unsafe { self.ring.submission().push(&entry) };
            if pushed.is_ok() {
                return;
            }
            if let Err(err) = self.ring.submit() {
                tracing::error!("io_uring submit failed: {err}");
                std::thread::yield_now();
            }
        }
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Recv::new(
            types::Fd(self.wake_rx.as_raw_fd()),
            self.wake_buf.as_mut_ptr(),
            self.wake_buf.len() as u32,
        )
        .build()
        .user_data(user_data(Op::Wake, 0, 0));
        self.push(entry);
        self.wake_armed = true;
    }

    /// Once a beat interval: a loop that received little since the last
    /// check gives back its buffer ring's pages and the allocator's free
    /// memory, once per quiet spell. Runs at the loop's head, where no
    /// receive buffer is lent out.
    fn trim_when_quiet(&mut self, now: Instant) {
        if now.saturating_duration_since(self.quiet_check) < LOOP_BEAT_INTERVAL {
            return;
        }
        let receives = self.receives - self.receives_at_check;
        self.receives_at_check = self.receives;
        self.quiet_check = now;
        if receives > 0 {
            self.trimmed = false;
        }
        if receives >= QUIET_RECEIVES || self.trimmed {
            return;
        }
        self.trimmed = true;
        if let Some(buffers) = &self.buffers {
            buffers.trim();
        }
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap memory to the system;
        // it takes the allocator's own locks and touches no live allocation.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn mark_dirty(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.dirty {
            s.dirty = true;
            self.dirty.push(slot);
        }
    }

    fn schedule(&mut self, slot: u32, at: Option<Instant>) {
        let Some(at) = at else { return };
        self.timers.schedule(slot, at);
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(slot) = self.timers.pop_due(now) {
            self.mark_dirty(slot);
        }
    }
}

impl Drop for EventLoop {
    /// The ring is dropped after this, with operations perhaps still pointing
    /// at the slots' send and frame buffers, the buffer ring or the wake
    /// buffer: when a shutdown could not reap them all, or when a panic
    /// unwinds the loop thread, that memory is leaked rather than freed
    /// under the kernel. A loop that ends early (a panic) gives up its
    /// sessions' count, so the other loops do not wait for them.
    fn drop(&mut self) {
        let inbox = &self.inbox;
        self.balance.close(self.part, self.live - self.stopped, || {
            inbox.try_iter().count()
        });
        if self.busy() {
            self.drop_children(false);
            std::mem::forget(std::mem::take(&mut self.slots));
            if let Some(buffers) = self.buffers.take() {
                buffers.leak();
            }
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}
