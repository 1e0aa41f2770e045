//! One io_uring event loop: a thread, a ring, a provided-buffer ring, and the
//! sessions assigned to this thread.
//!
//! Every socket read and write is a submission and a completion; the only
//! syscall in steady state is `io_uring_enter`, once per loop iteration, which
//! submits everything queued and waits for the next completion or timer.
//! Reads are multishot receives into the shared buffer ring, decoded where
//! they lie and the buffer handed straight back; large frames are received
//! directly into the session's frame buffer instead (see `drive_open`).
//! Writes are coalesced: whatever a session produced while its previous send
//! was in flight goes out as one send, except that a receive producing
//! [`EARLY_SEND`] bytes or more sends them at once. At most one receive and
//! one send are in flight per socket, so the stream order is the order of
//! the frames.
//!
//! Operation lifetimes: each operation's `user_data` names its slot, the
//! connection generation and its kind. A completion for an older generation
//! is stale and only returns its buffer. A socket is closed only when no
//! operation on it is outstanding, so an fd number is never reused under an
//! operation that still refers to it.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use rand::SeedableRng;

use super::bufring::BufRing;
use super::resolver::Resolver;
use super::timers::Timers;
use crate::connection::drain::{DrainTally, StopDrain};
use crate::connection::{closing_deadline, refusal, READ_CHUNK};
use crate::link::Link;
use crate::protocol::frame::SHRINK_ABOVE;
use crate::runtime::{AgentPlan, Backoff, ByteCounters, StopHandle};
use crate::session::WorkerSession;
use crate::stats::{AgentStats, SessionState, LOOP_BEAT_INTERVAL};
use crate::transport::Endpoint;

/// Submission queue size; the completion queue is 8 times larger because
/// multishot receives post many completions per submission.
pub const RING_ENTRIES: u32 = 1024;
/// Buffer-ring group id.
const BUF_GROUP: u16 = 7;
/// Buffers in each loop's ring, and their size.
pub const BUF_ENTRIES: u16 = 256;
pub const BUF_LEN: usize = READ_CHUNK;
/// A frame with at least this much left to arrive is received straight into
/// its buffer.
const LARGE_FRAME_REMAINDER: usize = 64 * 1024;
/// A direct receive (see [`EventLoop::drive_open`]) asks for at least this
/// much, and one that brings less ends the session's direct mode.
const DIRECT_CHUNK: usize = 64 * 1024;
/// The most one direct receive asks for: the rest of a larger frame takes
/// several, so memory is committed as the bytes arrive.
const DIRECT_MAX: usize = 4 * 1024 * 1024;
/// A session with this much output queued by one receive completion sends it
/// at once, before the rest of the completion batch is handled, so the peer
/// works on the first results while the later ones are computed (as a
/// read-then-write loop does), instead of both sides taking turns with the
/// whole window.
const EARLY_SEND: usize = 32 * 1024;
/// How long shutdown waits for cancelled operations to complete.
const REAP_DEADLINE: Duration = Duration::from_secs(2);
/// Connects in flight per loop, at most: an agent starting 10,000 sessions
/// (or redialling them all after the manager restarts) does not send 10,000
/// SYNs at once, more than a manager's listen backlog holds (4096 by
/// default); the ones it would drop come back only after a 1 s
/// retransmission.
const MAX_DIALS: usize = 256;
/// How often a slot looks again while the manager's name is first looked up.
const RESOLVE_POLL: Duration = Duration::from_millis(20);

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

/// Where a slot's connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotPhase {
    /// Waiting for `retry_at` before dialling.
    Idle,
    /// A connect is in flight.
    Connecting,
    /// Connected; the session runs.
    Open,
    /// Our last frame is written and our side shut down; reading to EOF.
    Linger,
    /// Cancelling the socket's operations; closed when none remain.
    Teardown,
    /// Ended for good.
    Stopped,
}

/// One session of this loop: the same session index across reconnects.
struct Slot {
    index: u32,
    counters: ByteCounters,
    stats: Arc<crate::stats::SessionStats>,
    phase: SlotPhase,
    generation: u32,
    socket: Option<socket2::Socket>,
    /// The socket is in the ring's file table at index `slot`.
    registered: bool,
    address: Option<socket2::SockAddr>,
    /// Which of the manager's addresses this slot's dial went to.
    address_index: usize,
    /// Operations submitted on the current socket and not yet completed.
    inflight: u32,
    recv_armed: bool,
    recv_cancelled: bool,
    /// A one-shot receive into the frame buffer is in flight.
    body_recv: bool,
    /// The direct receive in flight waits for all it asked for
    /// (MSG_WAITALL), and whether it has been cancelled to collect what it
    /// holds (see [`EventLoop::drive_open`]).
    body_waitall: bool,
    body_cancelled: bool,
    /// Receive into the frame buffer, not the shared buffers: large frames
    /// are arriving.
    direct: bool,
    teardown_cancelled: bool,
    send_inflight: bool,
    send_buf: Vec<u8>,
    send_off: usize,
    spare: Vec<u8>,
    session: Option<Box<Link>>,
    backoff: Backoff,
    retry_at: Instant,
    deadline: Option<Instant>,
    /// The drain after a stop request: its deadline ends every wait.
    drain: Option<StopDrain>,
    /// When a closed session's last send must have completed by.
    flush_deadline: Option<Instant>,
    linger_until: Option<Instant>,
    eof: bool,
    broken: Option<String>,
    /// What the drain left unfinished when its deadline passed.
    unfinished: DrainTally,
    dialled_once: bool,
    /// A connect of this slot counts against [`MAX_DIALS`].
    dialling: bool,
    /// Waiting in the loop's dial queue for a connect to finish.
    dial_queued: bool,
    /// Waiting for the first lookup of the manager's name.
    resolve_waiting: bool,
    dirty: bool,
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
    slots: Vec<Slot>,
    plan: Arc<AgentPlan>,
    agent: Arc<AgentStats>,
    stop: StopHandle,
    stop_seen: bool,
    wake_rx: UnixStream,
    wake_buf: Box<[u8]>,
    wake_armed: bool,
    dirty: Vec<u32>,
    /// Slots in [`SlotPhase::Stopped`] (the loop ends when all are).
    stopped: usize,
    batch: Vec<u32>,
    completions: Vec<(u64, i32, u32)>,
    timers: Timers,
    resolver: Resolver,
    rng: rand::rngs::SmallRng,
    /// A sparse file table with one entry per slot was registered.
    file_table: bool,
    /// Sends were queued while handling completions: submit them before
    /// handling the next one.
    submit_now: bool,
    /// Connects in flight, at most [`MAX_DIALS`]; the slots waiting for
    /// one to finish, in order.
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

impl EventLoop {
    /// Create the loop on the calling thread (the ring is single-issuer).
    pub fn new(
        plan: Arc<AgentPlan>,
        agent: Arc<AgentStats>,
        stop: StopHandle,
        sessions: Vec<u32>,
        wake_rx: UnixStream,
    ) -> io::Result<EventLoop> {
        let ring = build_ring()?;
        let buffers = BufRing::new(&ring, BUF_GROUP, BUF_ENTRIES, BUF_LEN)?;
        // Registered files spare each operation the file lookup; kernels
        // before 5.19 lack sparse tables, and then descriptors are used.
        let file_table = ring
            .submitter()
            .register_files_sparse(sessions.len().max(1) as u32)
            .is_ok();
        let now = Instant::now();
        let slots = sessions
            .into_iter()
            .map(|index| {
                let stats = agent.sessions[index as usize].clone();
                Slot {
                    index,
                    counters: ByteCounters::new(stats.clone()),
                    stats,
                    phase: SlotPhase::Idle,
                    generation: 0,
                    socket: None,
                    registered: false,
                    address: None,
                    address_index: 0,
                    inflight: 0,
                    recv_armed: false,
                    recv_cancelled: false,
                    body_recv: false,
                    body_waitall: false,
                    body_cancelled: false,
                    direct: false,
                    teardown_cancelled: false,
                    send_inflight: false,
                    send_buf: Vec::new(),
                    send_off: 0,
                    spare: Vec::new(),
                    session: None,
                    backoff: Backoff::new(plan.reconnect),
                    retry_at: now,
                    deadline: None,
                    drain: None,
                    flush_deadline: None,
                    linger_until: None,
                    eof: false,
                    broken: None,
                    unfinished: DrainTally::default(),
                    dialled_once: false,
                    dialling: false,
                    dial_queued: false,
                    resolve_waiting: false,
                    dirty: false,
                }
            })
            .collect::<Vec<_>>();
        let dirty = (0..slots.len() as u32).collect();
        let timers = Timers::new(slots.len());
        let resolver = Resolver::new(&plan.endpoint);
        Ok(EventLoop {
            ring,
            buffers: Some(buffers),
            slots,
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
            rng: rand::rngs::SmallRng::from_os_rng(),
            file_table,
            submit_now: false,
            dials: 0,
            dial_queue: std::collections::VecDeque::new(),
            next_address: 0,
            resolve_waiters: Vec::new(),
        })
    }

    /// Run until every session of this loop has stopped.
    pub fn run(mut self) -> LoopReport {
        for slot in &self.slots {
            slot.stats.set_state(SessionState::Disconnected);
        }
        let beat = self.agent.register_loop();
        loop {
            if !self.wake_armed {
                self.arm_wake();
            }
            if !self.stop_seen && self.stop.is_requested() {
                self.stop_seen = true;
                // A connection already closing when the stop came (its
                // last frames or linger under way) ends by the drain
                // deadline too.
                let until = Instant::now() + self.plan.drain_timeout;
                for i in 0..self.slots.len() {
                    let s = &mut self.slots[i];
                    for wait in [&mut s.linger_until, &mut s.flush_deadline] {
                        if let Some(at) = wait.as_mut() {
                            *at = (*at).min(until);
                        }
                    }
                    let earliest = s.linger_until.into_iter().chain(s.flush_deadline).min();
                    self.schedule(i as u32, earliest);
                    self.mark_dirty(i as u32);
                }
            }
            let now = Instant::now();
            beat.beat(now);
            self.fire_timers(now);
            self.drive_dirty();
            if self.stopped == self.slots.len() {
                break;
            }
            if let Some(buffers) = &self.buffers {
                buffers.publish();
            }
            self.submit_and_wait();
            self.reap();
        }
        self.shutdown()
    }

    fn submit_and_wait(&mut self) {
        let now = Instant::now();
        let timeout = if self.dirty.is_empty() {
            // Wake at least once per beat interval, idle or not (the watchdog).
            let next = self.timers.next().unwrap_or(now + LOOP_BEAT_INTERVAL);
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

    fn drive_dirty(&mut self) {
        // A few rounds: driving one slot can make it dirty again (a write
        // completes the drain, which queues GOODBYE). What is left after
        // that waits for the next iteration, which then does not block.
        for _ in 0..4 {
            if self.dirty.is_empty() {
                break;
            }
            std::mem::swap(&mut self.dirty, &mut self.batch);
            let now = Instant::now();
            for i in 0..self.batch.len() {
                let slot = self.batch[i];
                self.slots[slot as usize].dirty = false;
                self.drive(slot, now);
            }
            self.batch.clear();
        }
    }

    /// Move one slot forward: dial, write, arm reads, close, back off.
    fn drive(&mut self, slot_id: u32, now: Instant) {
        let stopping = self.stop_seen;
        let phase = self.slots[slot_id as usize].phase;
        match phase {
            SlotPhase::Stopped => {}
            SlotPhase::Idle => {
                if stopping {
                    self.stop_slot(slot_id);
                } else if now >= self.slots[slot_id as usize].retry_at {
                    self.dial(slot_id, now);
                } else {
                    let at = self.slots[slot_id as usize].retry_at;
                    self.schedule(slot_id, Some(at));
                }
            }
            SlotPhase::Connecting => {
                let s = &mut self.slots[slot_id as usize];
                let timed_out = s.deadline.is_some_and(|d| now >= d);
                if (stopping || timed_out) && s.broken.is_none() {
                    s.broken = Some(if stopping {
                        "stopped while dialling".to_owned()
                    } else {
                        format!(
                            "cannot reach manager {}: connect timed out",
                            self.plan.endpoint
                        )
                    });
                    self.begin_teardown(slot_id);
                } else {
                    let at = s.deadline;
                    self.schedule(slot_id, at);
                }
            }
            SlotPhase::Open => self.drive_open(slot_id, now),
            SlotPhase::Linger => {
                let s = &self.slots[slot_id as usize];
                if s.eof || s.broken.is_some() || s.linger_until.is_some_and(|t| now >= t) {
                    self.begin_teardown(slot_id);
                } else {
                    let at = s.linger_until;
                    if !s.recv_armed && !s.body_recv {
                        self.arm_recv(slot_id);
                    }
                    self.schedule(slot_id, at);
                }
            }
            SlotPhase::Teardown => self.continue_teardown(slot_id, now),
        }
    }

    fn drive_open(&mut self, slot_id: u32, now: Instant) {
        let drain_timeout = self.plan.drain_timeout;
        let stopping = self.stop_seen;
        let s = &mut self.slots[slot_id as usize];
        if s.broken.is_some() {
            // A TLS failure is the cause of what broke after it (the alert's
            // write to a peer that hung up).
            if let Some(why) = s.session.as_ref().and_then(|l| l.failure()) {
                s.broken = Some(why.to_owned());
            }
            self.begin_teardown(slot_id);
            return;
        }
        let Some(session) = s.session.as_mut() else {
            self.begin_teardown(slot_id);
            return;
        };
        if let Some(why) = session.failure() {
            // Write the alert rustls queued (one last send), then close. A
            // send the manager is not taking gets LINGER, as for the last
            // frames of a closed session, so a stop cannot hang on it.
            if !s.send_inflight && session.has_output() {
                let at = *s
                    .flush_deadline
                    .get_or_insert(closing_deadline(now, s.drain.as_ref()));
                self.send_output(slot_id);
                self.schedule(slot_id, Some(at));
            } else if !s.send_inflight {
                s.broken = Some(why.to_owned());
                self.begin_teardown(slot_id);
            } else {
                let at = *s
                    .flush_deadline
                    .get_or_insert(closing_deadline(now, s.drain.as_ref()));
                if now >= at {
                    s.broken = Some(why.to_owned());
                    self.begin_teardown(slot_id);
                } else {
                    self.schedule(slot_id, Some(at));
                }
            }
            return;
        }
        if stopping && s.drain.is_none() {
            s.drain = Some(StopDrain::start(now, drain_timeout));
            session.start_drain(now);
        }
        if let Some(drain) = s.drain.filter(|d| d.is_over(now)) {
            // The whole drain ends here, finished or not.
            let in_flight = if session.closed().is_none() {
                session.in_flight()
            } else {
                0
            };
            s.unfinished +=
                drain.timed_out(s.index, in_flight, session.results_unwritten(), &s.stats);
            self.begin_teardown(slot_id);
            return;
        }
        if session.poll_timeout().is_some_and(|t| now >= t) {
            if s.body_recv && s.body_waitall {
                // The rest of a large frame may be arriving into a
                // MSG_WAITALL receive, which reports nothing until it is
                // complete: cancel it, and it completes with the bytes it
                // holds (counted then as received, which the heartbeat
                // sees), before the deadline is judged.
                if !s.body_cancelled {
                    self.cancel_body_recv(slot_id);
                }
                return;
            }
            session.handle_timeout(now);
        }
        if !s.send_inflight {
            if !session.has_output() {
                session.on_flushed(now);
            }
            if session.has_output() {
                self.send_output(slot_id);
            }
        }
        let s = &mut self.slots[slot_id as usize];
        let Some(session) = s.session.as_ref() else {
            return;
        };
        if session.closed().is_some() {
            if s.send_inflight {
                // The last frames (GOODBYE, ERROR) are being written; a
                // manager that stopped reading gets LINGER to take them.
                let at = *s
                    .flush_deadline
                    .get_or_insert(closing_deadline(now, s.drain.as_ref()));
                if now >= at {
                    s.broken = Some("the manager did not read the last frames".to_owned());
                    self.begin_teardown(slot_id);
                } else {
                    self.schedule(slot_id, Some(at));
                }
                return;
            }
            if !session.has_output() {
                if session.closed().is_some_and(|r| r.wants_linger()) {
                    // Everything is written: half-close, then read to EOF.
                    if let Some(socket) = &s.socket {
                        let _ = socket.shutdown(Shutdown::Write);
                    }
                    s.phase = SlotPhase::Linger;
                    s.linger_until = Some(closing_deadline(now, s.drain.as_ref()));
                    self.mark_dirty(slot_id);
                } else {
                    self.begin_teardown(slot_id);
                }
            }
            return;
        }
        let wants_read = session.wants_read() && !s.eof;
        let timeout = match (session.poll_timeout(), s.drain.map(|d| d.deadline())) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // Large frames are received straight into the session's frame
        // buffer (one copy, like a plain read into a big buffer) instead of
        // into provided buffers and copied again. The rest of a large frame
        // under way is one MSG_WAITALL receive; after one, the session stays
        // "direct" (plain receives of at least DIRECT_CHUNK into its buffer,
        // so the next frame's header and start land there too) until a
        // receive brings little. The multishot receive is stopped first, so
        // only one receive is ever active on the socket and the byte order
        // holds.
        let needed = session.recv_hint(0);
        if wants_read && (needed >= LARGE_FRAME_REMAINDER || s.direct) {
            if s.recv_armed && !s.recv_cancelled {
                self.cancel_recv(slot_id);
            } else if !s.recv_armed && !s.body_recv {
                self.submit_direct_recv(slot_id, needed);
            }
        } else if wants_read && !s.recv_armed && !s.body_recv {
            self.arm_recv(slot_id);
        } else if !wants_read && s.recv_armed && !s.recv_cancelled {
            self.cancel_recv(slot_id);
        }
        self.schedule(slot_id, timeout);
    }

    /// Receive straight into the session's frame buffer: the `needed` bytes
    /// that complete a large frame under way (all of them, up to
    /// [`DIRECT_MAX`]: MSG_WAITALL), or else whatever has arrived, up to
    /// [`DIRECT_CHUNK`] or the rest of the frame under way.
    fn submit_direct_recv(&mut self, slot_id: u32, needed: usize) {
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
    fn cancel_body_recv(&mut self, slot_id: u32) {
        self.slots[slot_id as usize].body_cancelled = true;
        self.cancel(slot_id, Op::RecvBody);
    }

    /// Completion of [`EventLoop::submit_direct_recv`]: the other place bytes
    /// are received, counted the same way.
    fn on_body_recv(&mut self, slot_id: u32, result: i32, now: Instant) {
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

    fn dial(&mut self, slot_id: u32, now: Instant) {
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
    fn dial_done(&mut self, slot_id: u32) {
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

    fn back_off(&mut self, slot_id: u32, now: Instant) {
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

    fn stop_slot(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        if s.phase != SlotPhase::Stopped {
            s.phase = SlotPhase::Stopped;
            s.stats.set_state(SessionState::Stopped);
            self.stopped += 1;
        }
    }

    fn arm_recv(&mut self, slot_id: u32) {
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

    fn cancel_recv(&mut self, slot_id: u32) {
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

    /// Send what a receive produced right away when it is large (see
    /// [`EARLY_SEND`]); smaller output waits for the end of the batch, so
    /// small frames keep coalescing into one send per socket.
    fn send_early(&mut self, slot_id: u32) {
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
    fn send_output(&mut self, slot_id: u32) {
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

    fn begin_teardown(&mut self, slot_id: u32) {
        let s = &mut self.slots[slot_id as usize];
        s.phase = SlotPhase::Teardown;
        self.mark_dirty(slot_id);
    }

    fn continue_teardown(&mut self, slot_id: u32, now: Instant) {
        let s = &mut self.slots[slot_id as usize];
        if s.inflight > 0 {
            if !s.teardown_cancelled {
                if let Some(socket) = &s.socket {
                    s.teardown_cancelled = true;
                    s.inflight += 1;
                    let entry = on_socket!(s.registered, slot_id, socket.as_raw_fd(), |t| {
                        opcode::AsyncCancel2::new(types::CancelBuilder::fd(t).all()).build()
                    })
                    .user_data(user_data(Op::Cancel, s.generation, slot_id));
                    self.push(entry);
                }
            }
            return;
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
        s.spare = Vec::new();
        s.send_off = 0;
        s.send_inflight = false;
        s.recv_armed = false;
        let uptime;
        let refused;
        match s.session.take() {
            Some(session) => {
                // A stopping connection that ended before its deadline other
                // than by GOODBYE: what it still held counts as the drain's.
                if let (Some(stopping), true) = (s.drain, s.unfinished.is_clean()) {
                    let why = s
                        .broken
                        .clone()
                        .or_else(|| session.closed().map(|r| r.to_string()));
                    s.unfinished += stopping.ended_early(
                        s.index,
                        session.in_flight(),
                        session.results_unwritten(),
                        why.as_deref().unwrap_or("connection closed"),
                        &s.stats,
                    );
                }
                session.log_end(s.broken.as_deref());
                uptime = session
                    .welcomed_at()
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                refused = refusal(&self.plan.endpoint, s.index, session.closed());
                s.stats.set_in_flight(0);
            }
            None => {
                if let Some(why) = &s.broken {
                    crate::log_limit::warn_session(s.index, why, now);
                    s.stats.set_last_error(Some(why.clone()));
                }
                uptime = Duration::ZERO;
                refused = None;
            }
        }
        s.backoff.connection_ended(uptime);
        s.drain = None;
        s.flush_deadline = None;
        s.linger_until = None;
        if let Some(message) = refused {
            tracing::error!(session = s.index, "{message}");
            self.stop.fail(message);
            self.stop_seen = true;
            for i in 0..self.slots.len() {
                self.mark_dirty(i as u32);
            }
            self.stop_slot(slot_id);
            return;
        }
        self.back_off(slot_id, now);
    }

    fn reap(&mut self) {
        // Copy completions out first: handling them pushes new submissions.
        // A send submitted early completes inline on a socket with room, so
        // the queue is read again (a few times at most) to see it.
        let mut completions = std::mem::take(&mut self.completions);
        for _ in 0..4 {
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if completions.is_empty() {
                break;
            }
            // One clock read per batch: completions reaped together happened together.
            let now = Instant::now();
            for &(data, result, flags) in &completions {
                self.complete(data, result, flags, now);
                if self.submit_now {
                    self.submit_now = false;
                    if let Err(err) = self.ring.submit() {
                        if !matches!(
                            err.raw_os_error(),
                            Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                        ) {
                            tracing::error!("io_uring submit failed: {err}");
                        }
                    }
                }
            }
            completions.clear();
        }
        self.completions = completions;
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32, now: Instant) {
        let (op, generation, slot_id) = decode_user_data(data);
        let selected = cqueue::buffer_select(flags);
        if op == Op::Wake as u8 {
            // A stop request (or the cancel at shutdown): re-armed next round.
            self.wake_armed = false;
            return;
        }
        let stale = self
            .slots
            .get(slot_id as usize)
            .is_none_or(|s| s.generation != generation || s.socket.is_none());
        if stale {
            self.recycle(selected);
            return;
        }
        match op {
            x if x == Op::Recv as u8 => self.on_recv(slot_id, result, flags, selected, now),
            x if x == Op::Send as u8 => self.on_send(slot_id, result),
            x if x == Op::Connect as u8 => self.on_connect(slot_id, result, now),
            x if x == Op::RecvBody as u8 => self.on_body_recv(slot_id, result, now),
            _ => {
                let s = &mut self.slots[slot_id as usize];
                s.inflight = s.inflight.saturating_sub(1);
            }
        }
        self.mark_dirty(slot_id);
    }

    fn recycle(&mut self, selected: Option<u16>) {
        if let (Some(bid), Some(buffers)) = (selected, self.buffers.as_mut()) {
            buffers.push(bid);
        }
    }

    /// The engine's one `recv_raw`: a receive completion.
    fn on_recv(
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

    fn on_send(&mut self, slot_id: u32, result: i32) {
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

    fn on_connect(&mut self, slot_id: u32, result: i32, now: Instant) {
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

    /// Stop: cancel what is left, wait (bounded) for it, release the buffers.
    fn shutdown(mut self) -> LoopReport {
        let report = LoopReport {
            unfinished: self.slots.iter().fold(DrainTally::default(), |mut sum, s| {
                sum += s.unfinished;
                sum
            }),
        };
        if self.wake_armed {
            let entry = opcode::AsyncCancel::new(user_data(Op::Wake, 0, 0))
                .build()
                .user_data(user_data(Op::Cancel, 0, u32::MAX));
            self.push(entry);
        }
        let deadline = Instant::now() + REAP_DEADLINE;
        while self.busy() && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        let clean = !self.busy();
        if let Some(mut buffers) = self.buffers.take() {
            if clean {
                buffers.unregister(&self.ring);
                drop(buffers);
            } else {
                tracing::error!(
                    "io_uring operations did not complete at shutdown; leaking their buffers"
                );
                buffers.leak();
            }
        }
        // What is still in flight is left to `Drop`, which keeps its memory.
        report
    }

    /// Whether an operation may still write into, or read from, memory the
    /// loop owns.
    fn busy(&self) -> bool {
        self.wake_armed || self.slots.iter().any(|s| s.inflight > 0)
    }
}

impl Drop for EventLoop {
    /// The ring is dropped after this, with operations perhaps still pointing
    /// at the slots' send and frame buffers, the buffer ring or the wake
    /// buffer: when a shutdown could not reap them all, or when a panic
    /// unwinds the loop thread, that memory is leaked rather than freed
    /// under the kernel.
    fn drop(&mut self) {
        if self.busy() {
            std::mem::forget(std::mem::take(&mut self.slots));
            if let Some(buffers) = self.buffers.take() {
                buffers.leak();
            }
            std::mem::forget(std::mem::take(&mut self.wake_buf));
        }
    }
}
