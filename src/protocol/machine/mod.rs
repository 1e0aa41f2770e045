//! The worker side of one connection, as a deterministic state machine.
//!
//! [`WorkerMachine`] is fed the bytes read from the socket and the current
//! time; it hands back [`Event`]s (the handshake completed, a task to run, the
//! manager wants a drain, the connection is over) and bytes to write. It
//! enforces the handshake order, unique in-flight task ids, `max_in_flight`
//! back-pressure, ACK_REQUESTED, DRAIN / GOODBYE, ERROR and the heartbeat and
//! handshake deadlines. It never touches a socket, a thread or a clock: time
//! is an argument, so every rule here is tested without any I/O.
//!
//! Memory held for a peer is bounded: the receive buffer by `max_body` plus a
//! header, in-flight ids by `max_in_flight`, and queued output by
//! [`MachineConfig::output_high_water`] beyond the results of in-flight tasks
//! (reading pauses above it, so a peer that never reads cannot grow it).
//!
//! The state is one struct, [`WorkerMachine`], defined here with its
//! constructor, its accessors and the one way a connection closes. Its
//! behaviour is split by concern into child modules that extend it: `input`
//! (bytes in, back-pressure, EOF), `frames` (acting on each frame),
//! `results` (RESULT frames and FAILED bodies), `output` (handing the
//! output to the driver), `drain` (DRAIN and GOODBYE) and `timers`
//! (heartbeats and deadlines). `task_body` and `welcome` are the pure checks
//! of the bodies the machine receives, and `events` holds the types a driver
//! exchanges with it.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::frame::{encode_frame, FrameBuffer, FrameKind};
use crate::format::{peer_text, MAX_PEER_TEXT};

mod drain;
mod events;
mod frames;
mod input;
mod output;
mod results;
mod task_body;
mod timers;
mod welcome;

pub use events::{
    CloseReason, DrainOrigin, Event, Input, MachineConfig, NotInFlight, Phase, TaskAt, TaskOutcome,
    TaskRequest,
};
pub use task_body::{encode_task_body, split_task_body};
pub use timers::{EOF_PROBE_EVERY, EOF_PROBE_MAX};
pub use welcome::MIN_PEER_MAX_BODY;

/// Task ids in flight. The hash is splitmix64's finaliser rather than
/// SipHash: ids come from the manager, but the set never holds more than
/// `max_in_flight` of them, so even chosen colliding ids cost at most a scan
/// of that many entries, and the common case is a few nanoseconds.
type IdSet = HashSet<u64, BuildHasherDefault<IdHasher>>;

#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(self.0 ^ u64::from(byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let mut z = n.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        self.0 = z ^ (z >> 31);
    }
}

/// The worker side of one connection.
#[derive(Debug)]
pub struct WorkerMachine {
    phase: Phase,
    recv: FrameBuffer,
    out: Vec<u8>,
    /// Tasks in flight, but for `current`.
    in_flight: IdSet,
    /// The task handed out last, while the driver has not answered it nor
    /// polled again: most tasks are answered at once, so they never touch
    /// the set. Moved into `in_flight` by the next poll.
    current: Option<u64>,
    max_in_flight: usize,
    output_high_water: usize,
    /// The manager's `max_body`: no frame larger than this is ever sent.
    peer_max_body: u32,
    /// WELCOME has announced `peer_max_body` (0 then is a limit like any other).
    peer_max_body_known: bool,
    heartbeat: Option<Duration>,
    handshake_deadline: Instant,
    last_received: Instant,
    last_sent: Instant,
    next_ping_nonce: u64,
    /// When to PING a manager that sent EOF while tasks run ([`WorkerMachine::probe_peer`]).
    eof_probe_at: Option<Instant>,
    eof_probe_every: Option<Duration>,
    close_reason: Option<CloseReason>,
    /// A `Closed` event is owed to the driver.
    close_pending: bool,
    drain: Option<DrainOrigin>,
    drain_sent: bool,
    /// A drain was asked for (by us or the manager): new TASKs get `draining`.
    /// Not set by EOF alone: TASKs read before the manager closed its side
    /// are run normally.
    refuse_tasks: bool,
    tasks_refused_draining: u64,
    /// RESULT frames in `out`, not handed to the driver yet.
    results_queued: u64,
    /// RESULT frames in the output the driver took last, until it says that
    /// output was written ([`WorkerMachine::output_written`]).
    results_taken: u64,
    /// [`WorkerMachine::poll_input`] handed out a frame and the driver's
    /// input holds more bytes it has not decoded yet.
    more_input: bool,
    /// Where the RESULT begun by [`WorkerMachine::begin_result`] starts in `out`.
    result_start: usize,
}

/// Where the body of the frame being acted on lies.
#[derive(Debug, Clone, Copy)]
enum FrameAt<'b> {
    /// In the driver's input ([`WorkerMachine::poll_input`]), followed by `rest`.
    Input { body: &'b [u8], rest: &'b [u8] },
    /// In the receive buffer, as the frame it returned last.
    Buffered,
}

impl<'b> FrameAt<'b> {
    #[inline]
    fn body<'s>(&self, recv: &'s FrameBuffer) -> &'s [u8]
    where
        'b: 's,
    {
        match *self {
            FrameAt::Input { body, .. } => body,
            FrameAt::Buffered => recv.last_body(),
        }
    }
}

/// What acting on one frame asks of the poll loop.
#[derive(Debug)]
enum Step {
    /// Nothing for the driver; take the next frame.
    Continue,
    /// Hand out the task in the frame's body.
    Task {
        ack_requested: bool,
        name_len: usize,
    },
    /// Return this to the driver.
    Return(Option<Event<'static>>),
}

impl WorkerMachine {
    /// A machine for a connection that came up at `now`; HELLO is queued.
    pub fn new(config: MachineConfig, now: Instant) -> Self {
        let max_in_flight = config.hello.max_in_flight.max(1) as usize;
        let mut machine = WorkerMachine {
            phase: Phase::AwaitingWelcome,
            recv: FrameBuffer::new(config.hello.max_body),
            out: Vec::new(),
            // Grown as tasks arrive, not sized for `max_in_flight` up front:
            // an idle session holds no table (10,000 of them at 1,024 would
            // hold 40 MB), and a busy one reaches its size after a few
            // doublings, once per connection.
            in_flight: IdSet::default(),
            current: None,
            max_in_flight,
            output_high_water: config.output_high_water,
            peer_max_body: 0,
            peer_max_body_known: false,
            heartbeat: None,
            handshake_deadline: now + config.handshake_timeout,
            last_received: now,
            last_sent: now,
            next_ping_nonce: 1,
            eof_probe_at: None,
            eof_probe_every: None,
            close_reason: None,
            close_pending: false,
            drain: None,
            drain_sent: false,
            refuse_tasks: false,
            tasks_refused_draining: 0,
            results_queued: 0,
            results_taken: 0,
            more_input: false,
            result_start: 0,
        };
        let body = serde_json::to_vec(&config.hello).unwrap_or_default();
        encode_frame(&mut machine.out, FrameKind::Hello, 0, 0, &body);
        machine
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + usize::from(self.current.is_some())
    }

    pub fn is_in_flight(&self, id: u64) -> bool {
        self.current == Some(id) || self.in_flight.contains(&id)
    }

    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// The manager's announced `max_body` (0 before WELCOME).
    pub fn peer_max_body(&self) -> u32 {
        self.peer_max_body
    }

    /// TASKs answered with `draining` because they arrived during a drain.
    pub fn tasks_refused_draining(&self) -> u64 {
        self.tasks_refused_draining
    }

    fn violation(&mut self, code: &'static str, message: String) {
        // The message may quote what the manager sent (serde names the
        // offending value): capped and escaped like any text of the peer's.
        let message = peer_text(&message, MAX_PEER_TEXT);
        let body = self.failure_body(code, &message);
        encode_frame(&mut self.out, FrameKind::Error, 0, 0, &body);
        self.close(CloseReason::ProtocolViolation { code, message });
    }

    fn close(&mut self, reason: CloseReason) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.close_reason = Some(reason);
        self.close_pending = true;
    }

    fn take_close_event(&mut self) -> Option<Event<'static>> {
        self.close_pending = false;
        self.close_reason.clone().map(Event::Closed)
    }
}

#[cfg(test)]
mod tests;
