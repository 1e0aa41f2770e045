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

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

use super::frame::{
    decode, encode_frame, header_bytes, Decoded, FrameBuffer, FrameHeader, FrameKind,
    FLAG_ACK_REQUESTED, FLAG_FAILED, HEADER_LEN, LEN_COUNTED_HEADER, MAX_HANDLER_NAME,
};
use super::hello::{codes, ErrorBody, GoodbyeBody, Hello, Welcome, PROTOCOL_VERSION};
use crate::format::{peer_text, MAX_PEER_TEXT};

/// How soon a manager that sent EOF while tasks run is probed again with a
/// PING ([`WorkerMachine::probe_peer`]); the interval doubles up to
/// [`EOF_PROBE_MAX`].
pub const EOF_PROBE_EVERY: Duration = Duration::from_millis(250);
pub const EOF_PROBE_MAX: Duration = Duration::from_secs(8);

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

/// Settings of one connection's machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Sent as the first frame; its `max_body` and `max_in_flight` are the
    /// limits this machine enforces.
    pub hello: Hello,
    /// How long to wait for WELCOME after the connection is up.
    pub handshake_timeout: Duration,
    /// Reading pauses while more than this many bytes wait to be written.
    pub output_high_water: usize,
}

impl MachineConfig {
    pub fn new(hello: Hello) -> Self {
        MachineConfig {
            hello,
            handshake_timeout: Duration::from_secs(10),
            output_high_water: 256 * 1024,
        }
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// HELLO sent, waiting for WELCOME.
    AwaitingWelcome,
    /// Handshake done; tasks flow.
    Active,
    /// No new tasks are taken; in-flight tasks finish, then GOODBYE.
    Draining(DrainOrigin),
    /// Everything is answered; GOODBYE waits for the output to be flushed so
    /// that its byte counts are exact ([`WorkerMachine::write_goodbye`]).
    GoodbyeDue,
    /// Final: flush the output, then close the socket.
    Closed,
}

/// Who started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOrigin {
    /// This worker is stopping (`request_stop`, a signal); it sent DRAIN.
    Worker,
    /// The manager sent DRAIN.
    Manager,
    /// The manager closed its write side: nothing more can arrive.
    PeerEof,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The drain finished and GOODBYE was written.
    Goodbye { origin: DrainOrigin },
    /// The manager said GOODBYE.
    PeerGoodbye,
    /// The peer broke the protocol; ERROR `code` was queued.
    ProtocolViolation { code: &'static str, message: String },
    /// The manager sent ERROR. `unauthorized` and `unsupported_version` during
    /// the handshake mean retrying cannot help ([`CloseReason::is_refusal`]).
    PeerError {
        code: String,
        message: String,
        during_handshake: bool,
    },
    /// No WELCOME within the handshake timeout.
    HandshakeTimeout,
    /// Nothing received for 3 × `heartbeat_ms`.
    HeartbeatTimeout,
    /// The stream ended before the handshake or while tasks could not finish.
    PeerClosed,
    /// Stopped before the handshake completed; nothing to drain.
    StoppedBeforeWelcome,
}

impl CloseReason {
    /// The manager refused this worker; redialling cannot help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, CloseReason::PeerError { code, during_handshake: true, .. }
            if code == codes::UNAUTHORIZED || code == codes::UNSUPPORTED_VERSION)
    }

    /// Whether to keep reading after our last frame until the manager closes:
    /// only when that frame (GOODBYE, ERROR) is something the manager should
    /// read. A manager presumed gone, or one that closed first, is not
    /// waited for.
    pub fn wants_linger(&self) -> bool {
        matches!(
            self,
            CloseReason::Goodbye { .. } | CloseReason::ProtocolViolation { .. }
        )
    }

    /// The session ended by the protocol's own graceful path.
    pub fn is_graceful(&self) -> bool {
        matches!(
            self,
            CloseReason::Goodbye { .. }
                | CloseReason::PeerGoodbye
                | CloseReason::StoppedBeforeWelcome
        )
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Goodbye { origin } => write!(f, "drained ({origin:?}), GOODBYE sent"),
            CloseReason::PeerGoodbye => f.write_str("manager said GOODBYE"),
            CloseReason::ProtocolViolation { code, message } => {
                if message.starts_with(code) {
                    write!(f, "manager broke the protocol: {message}")
                } else {
                    write!(f, "manager broke the protocol: {code}: {message}")
                }
            }
            CloseReason::PeerError { code, message, .. } => {
                write!(f, "manager sent ERROR {code}: {message}")
            }
            CloseReason::HandshakeTimeout => f.write_str("no WELCOME within the handshake timeout"),
            CloseReason::HeartbeatTimeout => {
                f.write_str("nothing received for 3 x heartbeat_ms: manager presumed gone")
            }
            CloseReason::PeerClosed => f.write_str("manager closed the connection"),
            CloseReason::StoppedBeforeWelcome => {
                f.write_str("stopped before the handshake completed")
            }
        }
    }
}

/// What the machine asks its driver to act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// WELCOME arrived and was valid.
    Welcomed(Welcome),
    /// A task to run; answer it with [`WorkerMachine::complete_task`].
    Task(TaskRequest<'a>),
    /// The manager sent DRAIN; no TASK follows.
    DrainRequested,
    /// The connection is over: flush the output, then close.
    Closed(CloseReason),
}

/// A TASK frame, borrowed from the receive buffer (or the driver's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRequest<'a> {
    pub id: u64,
    /// The handler name: 1..=64 bytes, each printable ASCII (checked). Kept
    /// as bytes so a driver that matches names byte-wise pays no UTF-8
    /// validation per task; [`TaskRequest::handler_name`] gives the `str`.
    pub handler: &'a [u8],
    pub payload: &'a [u8],
    pub ack_requested: bool,
}

impl<'a> TaskRequest<'a> {
    /// The handler name as a string (it is ASCII, checked on decoding).
    pub fn handler_name(&self) -> &'a str {
        std::str::from_utf8(self.handler).unwrap_or("")
    }
}

/// How a task ended, as handed to [`WorkerMachine::complete_task`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome<'a> {
    Ok(&'a [u8]),
    Failed { code: &'a str, message: &'a str },
}

/// A driver called [`WorkerMachine::complete_task`] for an id that is not in
/// flight: a bug in the driver, reported rather than acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("task {0} is not in flight")]
pub struct NotInFlight(pub u64);

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
    /// [`WorkerMachine::poll_input`] handed out a task and the driver's
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

/// A whole frame, or a header that will be refused, is at the front of `bytes`.
fn has_frame(bytes: &[u8], max_body: u32) -> bool {
    !matches!(decode(bytes, max_body), Ok(Decoded::Incomplete { .. }))
}

/// The task in a TASK `body` whose name [`task_name_len`] checked.
#[inline]
fn task_request(id: u64, body: &[u8], name_len: usize, ack_requested: bool) -> TaskRequest<'_> {
    let (name, payload) = body.get(1..).unwrap_or_default().split_at(name_len);
    TaskRequest {
        id,
        handler: name,
        payload,
        ack_requested,
    }
}

impl WorkerMachine {
    /// A machine for a connection that came up at `now`; HELLO is queued.
    pub fn new(config: MachineConfig, now: Instant) -> Self {
        let max_in_flight = config.hello.max_in_flight.max(1) as usize;
        let mut machine = WorkerMachine {
            phase: Phase::AwaitingWelcome,
            recv: FrameBuffer::new(config.hello.max_body),
            out: Vec::new(),
            in_flight: IdSet::with_capacity_and_hasher(max_in_flight, Default::default()),
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

    /// Whether the driver should read from the socket now. False while
    /// `max_in_flight` tasks are held, while too much output is queued, and
    /// once nothing more can be accepted.
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::AwaitingWelcome | Phase::Active => {}
            Phase::Draining(DrainOrigin::PeerEof) | Phase::GoodbyeDue | Phase::Closed => {
                return false
            }
            Phase::Draining(_) => {}
        }
        self.in_flight() < self.max_in_flight && self.out.len() < self.output_high_water
    }

    /// Space to read into, at least `min` bytes (zero-filled: ask only for what
    /// the next read takes; [`WorkerMachine::recv_hint`] says what the frame
    /// under way still needs); follow with [`WorkerMachine::handle_received`].
    pub fn recv_space(&mut self, min: usize) -> &mut [u8] {
        self.recv.spare(min)
    }

    /// How many bytes the next read should ask for, given a preferred chunk.
    pub fn recv_hint(&self, chunk: usize) -> usize {
        self.recv.read_hint(chunk)
    }

    /// Record that `n` bytes were read into [`WorkerMachine::recv_space`].
    pub fn handle_received(&mut self, n: usize, now: Instant) {
        self.recv.commit(n);
        if n > 0 {
            self.last_received = now;
            self.reopen_drain();
        }
    }

    /// Bytes arrived while GOODBYE was due but before it was written (a
    /// driver that reads on another thread may hand over a chunk it read just
    /// before): GOODBYE's `bytes_received` will count them, so every TASK in
    /// them is answered first. The drain goes on; GOODBYE is due again once
    /// they are.
    fn reopen_drain(&mut self) {
        if self.phase == Phase::GoodbyeDue {
            self.phase = Phase::Draining(self.drain.unwrap_or(DrainOrigin::Worker));
        }
    }

    /// Copy bytes in (for drivers that do not read in place).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        self.recv.extend(bytes);
        if !bytes.is_empty() {
            self.last_received = now;
            self.reopen_drain();
        }
    }

    /// The manager closed its write side (read returned 0).
    pub fn handle_eof(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingWelcome => self.close(CloseReason::PeerClosed),
            Phase::Active | Phase::Draining(_) => {
                self.drain = Some(DrainOrigin::PeerEof);
                self.phase = Phase::Draining(DrainOrigin::PeerEof);
                self.check_drained();
                if self.phase == Phase::Draining(DrainOrigin::PeerEof) {
                    self.probe_peer(now);
                }
            }
            Phase::GoodbyeDue | Phase::Closed => {}
        }
    }

    /// Queue a PING with the next nonce.
    fn queue_ping(&mut self, now: Instant) {
        let nonce = self.next_ping_nonce;
        self.next_ping_nonce = self.next_ping_nonce.wrapping_add(1);
        encode_frame(&mut self.out, FrameKind::Ping, 0, nonce, &[]);
        self.last_sent = now;
    }

    /// EOF from the manager with tasks still running: either it closed only
    /// its write side and waits for the results, or it closed the socket (a
    /// crash looks the same). A PING tells them apart: a closed socket
    /// answers it with a reset, and the next write fails, so the driver sees
    /// a broken connection and redials at once instead of after the longest
    /// task. Repeated every [`EOF_PROBE_EVERY`] while tasks run.
    fn probe_peer(&mut self, now: Instant) {
        self.queue_ping(now);
        // 250 ms, then doubling up to 8 s: a reset comes back within a round
        // trip, and a manager that only half-closed is not kept busy.
        let every = self.eof_probe_every.unwrap_or(EOF_PROBE_EVERY);
        self.eof_probe_at = Some(now + every);
        self.eof_probe_every = Some((every * 2).min(EOF_PROBE_MAX));
    }

    /// The next thing for the driver to act on, or `None` when it must read
    /// more (or wait for in-flight tasks to free a slot).
    pub fn poll_event(&mut self, now: Instant) -> Option<Event<'_>> {
        if self.close_pending {
            self.close_pending = false;
            return self.close_reason.clone().map(Event::Closed);
        }
        loop {
            if !self.may_take_frame() {
                return None;
            }
            let header = match self.recv.next_frame() {
                Ok(Some(frame)) => frame.header,
                Ok(None) => {
                    self.check_drained();
                    return None;
                }
                Err(err) => {
                    let code = err.code();
                    self.violation(code, err.to_string());
                    return self.take_close_event();
                }
            };
            match self.on_frame(header, FrameAt::Buffered, now) {
                Step::Continue => {}
                Step::Return(event) => return event,
                Step::Task {
                    ack_requested,
                    name_len,
                } => {
                    // The frame's body is still where `next_frame` left it.
                    let body = self.recv.last_body();
                    return Some(Event::Task(task_request(
                        header.id,
                        body,
                        name_len,
                        ack_requested,
                    )));
                }
            }
        }
    }

    /// Like [`WorkerMachine::poll_event`], but decodes frames where they lie
    /// in `input` instead of copying them into the receive buffer first. Each
    /// frame acted on is cut from the front of `input`; a task borrows from
    /// `input`, not from the machine.
    ///
    /// When this returns `None`, what is left in `input` (the start of a
    /// frame, or whole frames held back by a full window or a closed
    /// connection) must be handed to [`WorkerMachine::stash_input`] before
    /// any more bytes arrive. Only call this while the receive buffer holds
    /// nothing ([`WorkerMachine::buffered`] is 0): the bytes buffered come
    /// first. If it does not, nothing is decoded and `None` is returned.
    ///
    /// Record the arrival of the bytes with [`WorkerMachine::note_input`].
    #[inline]
    pub fn poll_input<'b>(&mut self, input: &mut &'b [u8], now: Instant) -> Option<Event<'b>> {
        self.more_input = false;
        if self.close_pending {
            self.close_pending = false;
            return self.close_reason.clone().map(Event::Closed);
        }
        if self.recv.buffered() != 0 {
            return None;
        }
        loop {
            if !self.may_take_frame() {
                return None;
            }
            let header = match decode(input, self.recv.max_body()) {
                Ok(Decoded::Frame(header)) => header,
                Ok(Decoded::Incomplete { .. }) => {
                    // The start of a frame left in `input` is stashed next;
                    // its TASK still counts as arriving.
                    self.more_input = !input.is_empty();
                    self.check_drained();
                    return None;
                }
                Err(err) => {
                    let code = err.code();
                    self.violation(code, err.to_string());
                    return self.take_close_event();
                }
            };
            let bytes: &'b [u8] = input;
            let (frame, rest) = bytes.split_at(header.frame_len());
            *input = rest;
            let body = frame.get(HEADER_LEN..).unwrap_or_default();
            let at = FrameAt::Input { body, rest };
            let step = if header.kind == FrameKind::Task && self.phase != Phase::AwaitingWelcome {
                self.on_task(header, at, now)
            } else {
                self.on_frame(header, at, now)
            };
            match step {
                Step::Continue => {}
                Step::Return(event) => return event,
                Step::Task {
                    ack_requested,
                    name_len,
                } => {
                    // Until the driver polls again, frames after this one
                    // are not in the receive buffer but still unread in
                    // `input`: no GOODBYE may be declared due meanwhile.
                    self.more_input = !rest.is_empty();
                    return Some(Event::Task(task_request(
                        header.id,
                        body,
                        name_len,
                        ack_requested,
                    )));
                }
            }
        }
    }

    /// `len` bytes arrived that the driver decodes in place
    /// ([`WorkerMachine::poll_input`]).
    pub fn note_input(&mut self, len: usize, now: Instant) {
        if len > 0 {
            self.last_received = now;
            self.reopen_drain();
        }
    }

    /// Bytes received and not yet decoded, held in the receive buffer.
    pub fn buffered(&self) -> usize {
        self.recv.buffered()
    }

    /// Copy into the receive buffer as much of `input` as completes the
    /// frame it holds the start of; returns how many bytes were taken. What
    /// follows can then go to [`WorkerMachine::poll_input`] once
    /// [`WorkerMachine::poll_event`] has taken that frame.
    pub fn complete_buffered(&mut self, input: &[u8]) -> usize {
        self.recv.complete_from(input)
    }

    /// Keep bytes [`WorkerMachine::poll_input`] left undecoded (or that could
    /// not be decoded in place) in the receive buffer, after what it holds.
    pub fn stash_input(&mut self, input: &[u8]) {
        self.more_input = false;
        if !input.is_empty() {
            self.recv.extend(input);
        }
    }

    /// Whether another frame may be taken now. A task handed out before
    /// and not answered yet is held from here on.
    #[inline]
    fn may_take_frame(&mut self) -> bool {
        if let Some(id) = self.current.take() {
            self.in_flight.insert(id);
        }
        !matches!(self.phase, Phase::Closed | Phase::GoodbyeDue)
            && self.in_flight.len() < self.max_in_flight
    }

    /// Take `id` out of the tasks in flight; false if it was not in flight.
    #[inline]
    fn end_task(&mut self, id: u64) -> bool {
        if self.current == Some(id) {
            self.current = None;
            true
        } else {
            self.in_flight.remove(&id)
        }
    }

    /// Act on one frame taken from the input; `at` says where its body lies.
    fn on_frame(&mut self, header: FrameHeader, at: FrameAt<'_>, now: Instant) -> Step {
        match (self.phase, header.kind) {
            (_, FrameKind::Error) => {
                let body: Option<ErrorBody> = serde_json::from_slice(at.body(&self.recv)).ok();
                // The manager's text is kept and logged: capped and escaped.
                let (code, message) = body
                    .map(|b| {
                        (
                            peer_text(&b.code, MAX_HANDLER_NAME),
                            peer_text(&b.message, MAX_PEER_TEXT),
                        )
                    })
                    .unwrap_or_else(|| ("unknown".to_owned(), "unparseable ERROR body".to_owned()));
                let during_handshake = self.phase == Phase::AwaitingWelcome;
                self.close(CloseReason::PeerError {
                    code,
                    message,
                    during_handshake,
                });
                Step::Return(self.take_close_event())
            }
            (Phase::AwaitingWelcome, FrameKind::Welcome) => {
                match parse_welcome(at.body(&self.recv)) {
                    Ok(welcome) => {
                        self.peer_max_body = welcome.max_body;
                        self.peer_max_body_known = true;
                        self.heartbeat = (welcome.heartbeat_ms > 0)
                            .then(|| Duration::from_millis(welcome.heartbeat_ms.into()));
                        self.phase = match self.drain {
                            Some(origin) => Phase::Draining(origin),
                            None => Phase::Active,
                        };
                        self.last_received = now;
                        Step::Return(Some(Event::Welcomed(welcome)))
                    }
                    Err((code, message)) => {
                        self.violation(code, message);
                        Step::Return(self.take_close_event())
                    }
                }
            }
            (Phase::AwaitingWelcome, kind) => {
                self.violation(codes::UNEXPECTED_FRAME, format!("{kind} before WELCOME"));
                Step::Return(self.take_close_event())
            }
            (_, FrameKind::Welcome) => {
                self.violation(codes::UNEXPECTED_FRAME, "second WELCOME".to_owned());
                Step::Return(self.take_close_event())
            }
            (_, kind @ (FrameKind::Hello | FrameKind::Ack | FrameKind::Result)) => {
                self.violation(
                    codes::UNEXPECTED_FRAME,
                    format!("a worker never receives {kind}"),
                );
                Step::Return(self.take_close_event())
            }
            (_, FrameKind::Ping) => {
                encode_frame(&mut self.out, FrameKind::Pong, 0, header.id, &[]);
                self.last_sent = now;
                Step::Continue
            }
            (_, FrameKind::Pong) => Step::Continue,
            (_, FrameKind::Drain) => {
                self.refuse_tasks = true;
                if self.drain.is_some() {
                    return Step::Continue;
                }
                self.drain = Some(DrainOrigin::Manager);
                self.phase = Phase::Draining(DrainOrigin::Manager);
                let more = match at {
                    FrameAt::Input { rest, .. } => has_frame(rest, self.recv.max_body()),
                    FrameAt::Buffered => false,
                };
                if !more {
                    self.check_drained();
                }
                Step::Return(Some(Event::DrainRequested))
            }
            (_, FrameKind::Goodbye) => {
                self.close(CloseReason::PeerGoodbye);
                Step::Return(self.take_close_event())
            }
            (_, FrameKind::Task) => self.on_task(header, at, now),
        }
    }

    /// A TASK (after WELCOME). The common case is inlined into the poll
    /// loops; every refusal is out of line.
    #[inline(always)]
    fn on_task(&mut self, header: FrameHeader, at: FrameAt<'_>, now: Instant) -> Step {
        let body = at.body(&self.recv);
        let Some(name_len) = task_name_len(body) else {
            let message = task_body_error(body);
            return self.refuse_frame(codes::BAD_FRAME, message);
        };
        // `current` is empty here (taking the frame moved it into the set),
        // and the set is empty while every task is answered at once: then no
        // hashing at all.
        if !self.in_flight.is_empty() && self.in_flight.contains(&header.id) {
            return self.duplicate_task(header.id);
        }
        if self.refuse_tasks {
            self.refuse_draining(header.id, now);
            return Step::Continue;
        }
        self.current = Some(header.id);
        let ack_requested = header.flags & FLAG_ACK_REQUESTED != 0;
        if ack_requested {
            self.ack(header.id, now);
        }
        Step::Task {
            ack_requested,
            name_len,
        }
    }

    #[cold]
    #[inline(never)]
    fn refuse_frame(&mut self, code: &'static str, message: String) -> Step {
        self.violation(code, message);
        Step::Return(self.take_close_event())
    }

    #[cold]
    #[inline(never)]
    fn duplicate_task(&mut self, id: u64) -> Step {
        self.refuse_frame(
            codes::DUPLICATE_TASK_ID,
            format!("task id {id} is already in flight"),
        )
    }

    /// A TASK that arrived during a drain: RESULT FAILED `draining`.
    #[cold]
    #[inline(never)]
    fn refuse_draining(&mut self, id: u64, now: Instant) {
        self.tasks_refused_draining += 1;
        let body = self.failure_body(codes::DRAINING, "worker is draining");
        encode_frame(&mut self.out, FrameKind::Result, FLAG_FAILED, id, &body);
        self.results_queued += 1;
        self.last_sent = now;
    }

    #[inline(never)]
    fn ack(&mut self, id: u64, now: Instant) {
        encode_frame(&mut self.out, FrameKind::Ack, 0, id, &[]);
        self.last_sent = now;
    }

    /// Answer a task that [`WorkerMachine::poll_event`] handed out.
    ///
    /// An output larger than the manager's `max_body` becomes a FAILED
    /// `result_too_large`: the worker never sends a frame its peer refuses.
    pub fn complete_task(
        &mut self,
        id: u64,
        outcome: TaskOutcome<'_>,
        now: Instant,
    ) -> Result<(), NotInFlight> {
        if !self.end_task(id) {
            return Err(NotInFlight(id));
        }
        if self.phase == Phase::Closed {
            return Ok(());
        }
        match outcome {
            TaskOutcome::Ok(output) if output.len() <= self.peer_max_body as usize => {
                encode_frame(&mut self.out, FrameKind::Result, 0, id, output);
            }
            TaskOutcome::Ok(output) => self.result_too_large(id, output.len()),
            TaskOutcome::Failed { code, message } => {
                let body = self.failure_body(code, message);
                encode_frame(&mut self.out, FrameKind::Result, FLAG_FAILED, id, &body);
            }
        }
        self.results_queued += 1;
        self.last_sent = now;
        self.check_drained();
        Ok(())
    }

    /// Start the RESULT of task `id` in the output buffer, for a handler to
    /// append the body to directly (no copy through a buffer of its own):
    /// returns the output buffer, which already holds the frame's header and
    /// everything queued before it. Follow with exactly one of
    /// [`WorkerMachine::commit_result`] or [`WorkerMachine::abandon_result`]
    /// before anything else is queued.
    #[inline]
    pub fn begin_result(&mut self, id: u64) -> &mut Vec<u8> {
        self.begin_result_header(id);
        &mut self.out
    }

    /// [`WorkerMachine::begin_result`] for the task
    /// [`WorkerMachine::poll_event`] handed out last, whose frame is still in
    /// the receive buffer: also returns that task's payload (the last
    /// `payload_len` bytes of the frame's body), so that its handler can read
    /// it there while appending to the output.
    pub fn begin_buffered_result(&mut self, id: u64, payload_len: usize) -> (&[u8], &mut Vec<u8>) {
        self.begin_result_header(id);
        let body = self.recv.last_body();
        let payload = body
            .get(body.len().saturating_sub(payload_len)..)
            .unwrap_or_default();
        (payload, &mut self.out)
    }

    #[inline]
    fn begin_result_header(&mut self, id: u64) {
        self.result_start = self.out.len();
        // `len` is patched by `commit_result`.
        self.out
            .extend_from_slice(&header_bytes(LEN_COUNTED_HEADER, FrameKind::Result, 0, id));
    }

    /// The body appended since [`WorkerMachine::begin_result`].
    pub fn result_body(&self) -> &[u8] {
        self.out
            .get(self.result_start + HEADER_LEN..)
            .unwrap_or_default()
    }

    /// Drop the RESULT begun with [`WorkerMachine::begin_result`]: the task
    /// failed, or its answer is due later.
    pub fn abandon_result(&mut self) {
        self.out.truncate(self.result_start);
    }

    /// Finish the RESULT begun with [`WorkerMachine::begin_result`] for task
    /// `id`: what was appended since is its body. As with
    /// [`WorkerMachine::complete_task`], a body larger than the manager's
    /// `max_body` becomes a FAILED `result_too_large`. Returns the body's
    /// length.
    #[inline]
    pub fn commit_result(&mut self, id: u64, now: Instant) -> Result<usize, NotInFlight> {
        let start = self.result_start;
        let body_len = self.out.len().saturating_sub(start + HEADER_LEN);
        if !self.end_task(id) {
            self.out.truncate(start);
            return Err(NotInFlight(id));
        }
        if self.phase == Phase::Closed {
            self.out.truncate(start);
            return Ok(body_len);
        }
        match u32::try_from(body_len) {
            Ok(len) if len <= self.peer_max_body => {
                if let Some(field) = self.out.get_mut(start..start + 4) {
                    field.copy_from_slice(&(len + LEN_COUNTED_HEADER).to_be_bytes());
                }
            }
            _ => {
                self.out.truncate(start);
                self.result_too_large(id, body_len);
            }
        }
        self.results_queued += 1;
        self.last_sent = now;
        self.check_drained();
        Ok(body_len)
    }

    fn result_too_large(&mut self, id: u64, len: usize) {
        let message = format!(
            "result of {len} bytes exceeds the manager's max_body {}",
            self.peer_max_body
        );
        let body = self.failure_body(codes::RESULT_TOO_LARGE, &message);
        encode_frame(&mut self.out, FrameKind::Result, FLAG_FAILED, id, &body);
    }

    /// Begin a worker-initiated drain (SIGTERM, `request_stop`).
    pub fn start_drain(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingWelcome => {
                // Nothing may be sent before WELCOME, and nothing is in flight.
                self.drain = Some(DrainOrigin::Worker);
                self.close(CloseReason::StoppedBeforeWelcome);
            }
            Phase::Active | Phase::Draining(DrainOrigin::Manager) => {
                self.drain_sent = true;
                self.refuse_tasks = true;
                encode_frame(&mut self.out, FrameKind::Drain, 0, 0, &[]);
                self.last_sent = now;
                self.drain = Some(DrainOrigin::Worker);
                self.phase = Phase::Draining(DrainOrigin::Worker);
                self.check_drained();
            }
            Phase::Draining(DrainOrigin::PeerEof) => {
                // The manager can no longer send; DRAIN tells it nothing new
                // but keeps the sequence uniform. Sent once.
                self.refuse_tasks = true;
                if !self.drain_sent {
                    self.drain_sent = true;
                    encode_frame(&mut self.out, FrameKind::Drain, 0, 0, &[]);
                    self.last_sent = now;
                }
            }
            Phase::Draining(DrainOrigin::Worker) | Phase::GoodbyeDue | Phase::Closed => {}
        }
    }

    /// Write GOODBYE with the socket counters as they stand now, once the
    /// driver has flushed every byte queued before it. Only valid in
    /// [`Phase::GoodbyeDue`]; returns whether it wrote.
    pub fn write_goodbye(&mut self, bytes_sent: u64, bytes_received: u64) -> bool {
        if self.phase != Phase::GoodbyeDue {
            return false;
        }
        let mut body = serde_json::to_vec(&GoodbyeBody {
            bytes_sent,
            bytes_received,
        })
        .unwrap_or_default();
        if self.peer_max_body_known && body.len() > self.peer_max_body as usize {
            // The manager refuses bodies this long; an empty GOODBYE still
            // ends the session, without the counts.
            body.clear();
        }
        encode_frame(&mut self.out, FrameKind::Goodbye, 0, 0, &body);
        let origin = self.drain.unwrap_or(DrainOrigin::Worker);
        self.close(CloseReason::Goodbye { origin });
        true
    }

    /// The earliest time at which [`WorkerMachine::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitingWelcome => Some(self.handshake_deadline),
            Phase::Closed | Phase::GoodbyeDue => None,
            Phase::Active | Phase::Draining(_) => {
                let probe = self
                    .eof_probe_at
                    .filter(|_| self.phase == Phase::Draining(DrainOrigin::PeerEof));
                let heartbeat = self.heartbeat.map(|heartbeat| {
                    (self.last_sent + heartbeat).min(self.last_received + heartbeat * 3)
                });
                match (probe, heartbeat) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// Act on deadlines that have passed by `now`: the handshake timeout, a
    /// PING after `heartbeat_ms` of sending nothing, and closing after
    /// 3 × `heartbeat_ms` of receiving nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingWelcome => {
                if now >= self.handshake_deadline {
                    self.close(CloseReason::HandshakeTimeout);
                }
            }
            Phase::Closed | Phase::GoodbyeDue => {}
            Phase::Active | Phase::Draining(_) => {
                if self.phase == Phase::Draining(DrainOrigin::PeerEof)
                    && self.eof_probe_at.is_some_and(|at| now >= at)
                {
                    self.probe_peer(now);
                }
                let Some(heartbeat) = self.heartbeat else {
                    return;
                };
                let paused_by_us = !self.wants_read() && self.out.is_empty();
                if paused_by_us || self.phase == Phase::Draining(DrainOrigin::PeerEof) {
                    // Silence is expected: we are not reading (own tasks hold
                    // every slot) or the peer has already closed its side.
                    self.last_received = now;
                }
                if now >= self.last_received + heartbeat * 3 {
                    self.close(CloseReason::HeartbeatTimeout);
                    return;
                }
                if now >= self.last_sent + heartbeat {
                    self.queue_ping(now);
                }
            }
        }
    }

    /// Bytes waiting to be written.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Hand the queued output to the driver, taking `spare` (cleared) as the
    /// new output buffer, so buffers cycle without allocation.
    ///
    /// Call order: the driver takes output again only once what it took
    /// before was written in full (one send at a time), so the RESULTs taken
    /// before count as written from here on.
    pub fn take_output(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        self.results_taken = std::mem::take(&mut self.results_queued);
        std::mem::replace(&mut self.out, spare)
    }

    /// The output taken last has been written in full.
    pub fn output_written(&mut self) {
        self.results_taken = 0;
    }

    /// RESULT frames queued or taken and not yet known to be written: what
    /// a drain that runs out of time reports as undelivered. A RESULT in a
    /// send that was under way counts as undelivered, whatever part of it
    /// the socket took.
    pub fn results_unwritten(&self) -> u64 {
        self.results_queued + self.results_taken
    }

    /// Drop the first `n` bytes of the output after a driver wrote them in place.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
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

    /// GOODBYE is due once nothing is in flight and no frame, whole or in
    /// part, waits in the receive buffer: a TASK read before the drain
    /// finished (held back by a full window, or not all in yet) is still
    /// answered first.
    fn check_drained(&mut self) {
        if let Phase::Draining(origin) = self.phase {
            // Part of a frame is in: the rest still arrives, and its TASK is
            // answered before GOODBYE counts its bytes (unless the manager
            // can send nothing more).
            let partial = self.recv.buffered() > 0 && origin != DrainOrigin::PeerEof;
            if self.in_flight() == 0 && !self.more_input && !self.has_buffered_frame() && !partial {
                self.phase = Phase::GoodbyeDue;
            }
        }
    }

    /// The driver still holds input it will hand over right after what it
    /// handed over last: GOODBYE may not be declared due before that.
    pub fn set_more_input(&mut self, more: bool) {
        self.more_input = more;
    }

    /// A whole frame (or a header that will be refused) is buffered.
    fn has_buffered_frame(&self) -> bool {
        has_frame(self.recv.pending(), self.recv.max_body())
    }

    /// A FAILED / ERROR body that fits the manager's `max_body`: the message
    /// is shortened if need be, and dropped entirely (empty body) in the
    /// degenerate case of a limit too small for the code itself.
    fn failure_body(&self, code: &str, message: &str) -> Vec<u8> {
        let body = ErrorBody::new(code, message).to_json();
        let limit = self.peer_max_body as usize;
        if !self.peer_max_body_known || body.len() <= limit {
            return body;
        }
        let overflow = body.len() - limit;
        let mut keep = message.len().saturating_sub(overflow + 3);
        while keep > 0 && !message.is_char_boundary(keep) {
            keep -= 1;
        }
        let shortened = ErrorBody::new(code, format!("{}...", &message[..keep])).to_json();
        if shortened.len() <= limit {
            return shortened;
        }
        let bare = ErrorBody::new(code, "").to_json();
        if bare.len() <= limit {
            bare
        } else {
            Vec::new()
        }
    }
}

fn parse_welcome(body: &[u8]) -> Result<Welcome, (&'static str, String)> {
    let invalid = |err: serde_json::Error| {
        (
            codes::BAD_FRAME,
            format!("WELCOME body is not valid: {err}"),
        )
    };
    // JSON bodies are objects (PROTOCOL.md); serde would also fill the
    // struct from an array, by position.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err((
            codes::BAD_FRAME,
            "WELCOME body is not a JSON object".to_owned(),
        ));
    }
    let mut welcome: Welcome = serde_json::from_value(value).map_err(invalid)?;
    // Logged and shown in /status: capped and escaped.
    welcome.manager = peer_text(&welcome.manager, MAX_PEER_TEXT);
    if welcome.protocol != PROTOCOL_VERSION {
        return Err((
            codes::UNSUPPORTED_VERSION,
            format!(
                "manager speaks protocol {}, this worker speaks {PROTOCOL_VERSION}",
                welcome.protocol
            ),
        ));
    }
    if welcome.max_body < MIN_PEER_MAX_BODY {
        return Err((
            codes::BAD_FRAME,
            format!(
                "WELCOME max_body {} is below {MIN_PEER_MAX_BODY}: too small for this worker's \
                 ERROR and FAILED bodies",
                welcome.max_body
            ),
        ));
    }
    Ok(welcome)
}

/// The smallest `max_body` a WELCOME may announce (PROTOCOL.md "Handshake"):
/// below it the worker's own ERROR and FAILED bodies, cut to fit, would be
/// empty or meaningless.
pub const MIN_PEER_MAX_BODY: u32 = 64;

/// Split a TASK body into the handler name and payload ranges, checking the
/// rules of PROTOCOL.md "Tasks". A name must be 1..=64 printable ASCII
/// characters (0x20..=0x7E, the space included).
pub fn split_task_body(
    body: &[u8],
) -> Result<(std::ops::Range<usize>, std::ops::Range<usize>), String> {
    let name_len = task_name_len(body).ok_or_else(|| task_body_error(body))?;
    Ok((1..1 + name_len, 1 + name_len..body.len()))
}

/// The `name_len` of a TASK body whose name passes the checks of
/// [`split_task_body`]; `None` if it does not ([`task_body_error`] says why).
#[inline(always)]
fn task_name_len(body: &[u8]) -> Option<usize> {
    let (&name_len, rest) = body.split_first()?;
    let name_len = name_len as usize;
    let name = rest.get(..name_len)?;
    (name_len != 0
        && name_len <= MAX_HANDLER_NAME
        && name.iter().all(|&b| (0x20..=0x7e).contains(&b)))
    .then_some(name_len)
}

/// Why [`task_name_len`] refused `body`.
#[cold]
fn task_body_error(body: &[u8]) -> String {
    let Some((&name_len, rest)) = body.split_first() else {
        return "TASK body is empty: no name_len".to_owned();
    };
    let name_len = name_len as usize;
    if name_len == 0 || name_len > MAX_HANDLER_NAME {
        return format!("TASK name_len {name_len} is outside 1..=64");
    }
    if rest.len() < name_len {
        return format!(
            "TASK body of {} bytes is shorter than 1 + name_len {name_len}",
            body.len()
        );
    }
    "TASK handler name is not printable ASCII".to_owned()
}

/// Encode a TASK body (for managers and tests).
pub fn encode_task_body(out: &mut Vec<u8>, handler: &str, payload: &[u8]) {
    out.push(handler.len() as u8);
    out.extend_from_slice(handler.as_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests;
