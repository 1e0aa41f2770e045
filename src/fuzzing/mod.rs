//! Fuzz targets as plain functions, so that the cargo-fuzz harnesses in
//! `fuzz/` and the stable test suite (`tests/fuzz_corpus.rs`, over the
//! committed corpus plus bounded random runs) run exactly the same code.
//!
//! Each target asserts invariants rather than just "does not panic":
//! - [`decoder`]: the decoder never consumes more than it was given and never
//!   returns a body over `max_body`.
//! - [`machine`]: the worker's state machine never holds more than
//!   `max_in_flight` tasks, never queues unbounded output, and hands out only
//!   ids it holds.
//! - [`session`]: the input path both runtimes use ([`Link::on_input`], in
//!   place, and `recv_space` / `on_received`) with the built-in handlers
//!   running and a fake clock: output always decodes as frames a worker may
//!   send, GOODBYE's counts match the bytes, and the same bytes give the same
//!   output whatever the read boundaries.
//! - [`handshake`]: HELLO / WELCOME / ERROR with structured, JSON-aware
//!   mutations of the manager's bodies, before and after a valid start.
//! - [`manager`]: the manager's state machine fed arbitrary worker bytes.
//! - [`tls`]: a TLS [`Link`] against an in-memory rustls server, with the
//!   record stream split, corrupted and cut: the link fails cleanly
//!   ([`Link::failure`]) or ends the session, and never delivers corrupted
//!   plaintext.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::handlers::HandlerRegistry;
use crate::link::Link;
use crate::manager::{ManagerConfig, ManagerEvent, ManagerMachine, ManagerPhase, SendError};
use crate::protocol::frame::{
    encode_frame, FrameBuffer, FrameKind, FLAG_ACK_REQUESTED, FLAG_FAILED, HEADER_LEN,
};
use crate::protocol::machine::{MachineConfig, TaskOutcome};
use crate::protocol::{
    CloseReason, ErrorBody, Event, GoodbyeBody, Hello, Phase, WorkerMachine, PROTOCOL_VERSION,
};
use crate::runtime::ByteCounters;
use crate::session::{SessionConfig, WorkerSession};
use crate::stats::SessionStats;

/// Raw bytes into the incremental decoder, split at points taken from the
/// input itself.
pub fn decoder(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let max_body = 1024;
    let step = usize::from(split).max(1);
    let mut buffer = FrameBuffer::new(max_body);
    let mut fed = 0usize;
    let mut consumed = 0usize;
    for chunk in rest.chunks(step) {
        buffer.extend(chunk);
        fed += chunk.len();
        loop {
            match buffer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= max_body as usize, "body over max_body");
                    assert_eq!(frame.header.body_len as usize, frame.body.len());
                    assert_eq!(
                        frame.header.flags & !frame.header.kind.defined_flags(),
                        0,
                        "undefined flag accepted"
                    );
                    consumed += HEADER_LEN + frame.body.len();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(consumed <= fed, "consumed {consumed} of {fed} bytes");
        assert_eq!(buffer.buffered(), fed - consumed);
    }
}

const MAX_IN_FLIGHT: u32 = 4;
const OUTPUT_HIGH_WATER: usize = 4096;

/// A byte-coded sequence of events into a worker's state machine after a
/// valid WELCOME: peer bytes, clock steps, task completions, a drain, EOF
/// and flushes, in any order.
pub fn machine(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let hello = Hello {
        protocol: 1,
        worker: "fuzz".into(),
        session: 0,
        runtime: "fuzz".into(),
        max_body: 512,
        max_in_flight: MAX_IN_FLIGHT,
        handlers: vec!["echo".into()],
        token: None,
    };
    let mut config = MachineConfig::new(hello);
    config.output_high_water = OUTPUT_HIGH_WATER;
    let mut machine = WorkerMachine::new(config, now);
    // Complete the handshake with a heartbeat so deadlines are exercised.
    let mut welcome = Vec::new();
    encode_frame(
        &mut welcome,
        FrameKind::Welcome,
        0,
        0,
        br#"{"protocol":1,"manager":"m","max_body":256,"heartbeat_ms":50}"#,
    );
    machine.handle_input(&welcome, now);
    let mut held: VecDeque<u64> = VecDeque::new();
    let mut closed = false;
    drain_events(&mut machine, now, &mut held, &mut closed);
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        match op % 8 {
            // Peer bytes: the next byte says how many follow.
            0..=2 => {
                let n = input
                    .first()
                    .map_or(0, |&n| usize::from(n))
                    .min(input.len().saturating_sub(1));
                let bytes = input.get(1..1 + n).unwrap_or_default();
                input = input.get(1 + n..).unwrap_or_default();
                if machine.wants_read() {
                    machine.handle_input(bytes, now);
                }
            }
            // Clock step of up to 255 ms.
            3 => {
                let ms = input.first().copied().unwrap_or(1);
                input = input.get(1..).unwrap_or_default();
                now += Duration::from_millis(u64::from(ms));
                machine.handle_timeout(now);
            }
            // Complete the oldest held task.
            4 => {
                if let Some(id) = held.pop_front() {
                    let output = [7u8; 300];
                    let outcome = if id % 3 == 0 {
                        TaskOutcome::Failed {
                            code: "handler_failed",
                            message: "fuzz",
                        }
                    } else {
                        TaskOutcome::Ok(&output[..(id % 301) as usize])
                    };
                    machine
                        .complete_task(id, outcome, now)
                        .expect("a held task completes");
                }
            }
            5 => machine.start_drain(now),
            6 => machine.handle_eof(now),
            // The driver flushed its output; GOODBYE may follow.
            _ => {
                machine.take_output(Vec::new());
                if machine.phase() == Phase::GoodbyeDue {
                    assert!(held.is_empty(), "GOODBYE due with tasks held");
                    machine.write_goodbye(1, 2);
                }
            }
        }
        drain_events(&mut machine, now, &mut held, &mut closed);
        assert!(machine.in_flight() <= MAX_IN_FLIGHT as usize);
        if !closed {
            assert_eq!(machine.in_flight(), held.len());
        }
        // Output is bounded: the high-water mark (reading pauses above it)
        // plus one read's worth of ACK/RESULT/PONG frames plus a window of results.
        let bound =
            OUTPUT_HIGH_WATER + 256 * 64 + MAX_IN_FLIGHT as usize * (HEADER_LEN + 300) + 4096;
        assert!(
            machine.pending_output().len() <= bound,
            "output {} > {bound}",
            machine.pending_output().len()
        );
    }
}

fn drain_events(
    machine: &mut WorkerMachine,
    now: Instant,
    held: &mut VecDeque<u64>,
    closed: &mut bool,
) {
    while let Some(event) = machine.poll_event(now) {
        match event {
            Event::Task(task) => {
                assert!(!*closed, "a task after the connection closed");
                assert!(
                    !held.contains(&task.id),
                    "task {} handed out twice",
                    task.id
                );
                assert!(task.handler.len() <= 64 && !task.handler.is_empty());
                held.push_back(task.id);
            }
            Event::Closed(_) => {
                assert!(!*closed, "closed twice");
                *closed = true;
            }
            Event::Welcomed(_) | Event::DrainRequested => {}
        }
    }
    if *closed {
        // Tasks held at close are lost to the connection; nothing completes them.
        held.clear();
    }
}

/// A fuzz input read from the front; past its end every read gives zeros,
/// so any byte string is a complete program.
#[derive(Debug, Clone, Copy)]
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
}

/// Chunk sizes for a split delivery, from the input's split bytes: tiny
/// (1..=7), small (1..=64), large (up to 1 KiB) or everything left. Bit 0
/// chooses the read path: in place ([`Link::on_input`]) or into the
/// session's buffer (`recv_space` / `on_received`, as io_uring reads a large
/// frame's remainder).
fn chunk_plan(seed: u8, left: usize) -> (usize, bool) {
    let size = match seed >> 6 {
        0 => 1 + usize::from(seed & 0x3f) % 7,
        1 => 1 + usize::from(seed & 0x3f),
        2 => 1 + usize::from(seed & 0x3f) * 16,
        _ => left,
    };
    (size.min(left).max(1), seed & 1 == 1)
}

/// The frames of a byte stream, checked to be whole and well formed.
fn decode_all(stream: &[u8], what: &str) -> Vec<(FrameKind, u8, u64, Vec<u8>)> {
    let mut buffer = FrameBuffer::new(u32::MAX - 12);
    buffer.extend(stream);
    let mut frames = Vec::new();
    loop {
        match buffer.next_frame() {
            Ok(Some(frame)) => frames.push((
                frame.header.kind,
                frame.header.flags,
                frame.header.id,
                frame.body.to_vec(),
            )),
            Ok(None) => break,
            Err(err) => panic!("{what} does not decode: {err}"),
        }
    }
    assert_eq!(buffer.buffered(), 0, "{what} ends in the middle of a frame");
    frames
}

/// The handlers a session runs; `nosuch` is not registered.
const HANDLER_NAMES: [&str; 7] = [
    "echo", "crc32c", "sha256", "sink", "sleep", "nosuch", "echo",
];

/// Append one well-formed frame a manager could send, built from a few
/// input bytes: mostly TASKs for the built-in handlers (small ids, so they
/// collide; `sleep` with a few ms), else the other kinds.
fn manager_frame(input: &mut Input<'_>, out: &mut Vec<u8>) {
    let kind = input.byte();
    let flags = input.byte();
    let id = u64::from(input.byte() % 24);
    let _written = match kind % 16 {
        0..=8 => {
            let handler = input.pick(&HANDLER_NAMES);
            let mut body = vec![handler.len() as u8];
            body.extend_from_slice(handler.as_bytes());
            let len = usize::from(input.byte());
            if handler == "sleep" && len % 4 != 3 {
                body.extend_from_slice(&u32::from(input.byte() % 64).to_be_bytes());
            } else {
                let fill = input.byte();
                body.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
            }
            let flags = if flags & 1 == 1 {
                FLAG_ACK_REQUESTED
            } else {
                0
            };
            encode_frame(out, FrameKind::Task, flags, id, &body)
        }
        9 | 10 => encode_frame(out, FrameKind::Ping, 0, id, &[]),
        11 => encode_frame(out, FrameKind::Pong, 0, id, &[]),
        12 => encode_frame(out, FrameKind::Drain, 0, 0, &[]),
        13 => encode_frame(out, FrameKind::Goodbye, 0, 0, &[]),
        14 => encode_frame(
            out,
            FrameKind::Error,
            0,
            0,
            br#"{"code":"fuzz","message":"from the fuzzer"}"#,
        ),
        _ => {
            // A TASK with a refused name, or a frame a worker never receives.
            let which = input.pick(&[FrameKind::Task, FrameKind::Ack, FrameKind::Result]);
            encode_frame(out, which, 0, id, &[0])
        }
    };
}

/// One step of a [`session`] program.
#[derive(Debug, Clone)]
enum SessionOp {
    /// Bytes from the manager; the seeds say how a split run chops them.
    Bytes {
        bytes: Vec<u8>,
        seeds: Vec<u8>,
    },
    Advance(Duration),
    /// Jump to the session's next deadline.
    ToDeadline,
    /// Everything queued is written.
    Flush,
    Drain,
    Eof,
}

#[derive(Debug, Clone)]
struct SessionProgram {
    max_in_flight: u32,
    max_body: u32,
    /// WELCOME sent first: (max_body, heartbeat_ms).
    welcome: Option<(u32, u32)>,
    ops: Vec<SessionOp>,
}

impl SessionProgram {
    fn parse(data: &[u8]) -> Self {
        let mut input = Input::new(data);
        let config = input.byte();
        let peer = input.byte();
        let max_in_flight = 1 + u32::from(config & 7);
        let max_body = [128, 300, 4096, 65536][usize::from(config >> 3) & 3];
        let welcome = (config & 0x80 == 0).then(|| {
            let max_body = [64, 100, 512, 65536][usize::from(peer & 3)];
            let heartbeat = [0, 20, 100, 1000][usize::from(peer >> 2) & 3];
            (max_body, heartbeat)
        });
        let mut ops = Vec::new();
        while !input.is_empty() && ops.len() < 512 {
            let op = match input.byte() % 12 {
                0 => {
                    let n = usize::from(input.byte());
                    let seeds = vec![input.byte()];
                    SessionOp::Bytes {
                        bytes: input.bytes(n).to_vec(),
                        seeds,
                    }
                }
                1..=4 => {
                    let mut bytes = Vec::new();
                    let count = 1 + input.byte() % 4;
                    for _ in 0..count {
                        manager_frame(&mut input, &mut bytes);
                    }
                    let seeds = vec![input.byte(), input.byte()];
                    SessionOp::Bytes { bytes, seeds }
                }
                5 | 6 => SessionOp::Advance(Duration::from_millis(u64::from(input.byte()))),
                7 => SessionOp::ToDeadline,
                8 | 9 => SessionOp::Flush,
                10 => SessionOp::Drain,
                _ => SessionOp::Eof,
            };
            ops.push(op);
        }
        SessionProgram {
            max_in_flight,
            max_body,
            welcome,
            ops,
        }
    }
}

/// What a session run ends with; a split run must end the same.
#[derive(Debug, PartialEq, Eq)]
struct SessionOutcome {
    output: Vec<u8>,
    closed: Option<CloseReason>,
    in_flight: usize,
    tasks: u64,
    received: u64,
    welcomed: bool,
}

/// A session driven like a runtime drives one: bytes are read while it
/// wants to read (each delivery handed over whole, or in chunks when
/// `split`), output is taken and flushed, timers fire at the fake clock.
struct SessionDriver {
    link: Link,
    stats: Arc<SessionStats>,
    counters: ByteCounters,
    now: Instant,
    split: bool,
    /// Bytes the manager sent that the session has not read yet.
    unread: Vec<u8>,
    seeds: Vec<u8>,
    eof_sent: bool,
    eof_read: bool,
    output: Vec<u8>,
    max_in_flight: u32,
    peer_max_body: Option<u32>,
}

impl SessionDriver {
    fn new(program: &SessionProgram, split: bool) -> Self {
        let now = Instant::now();
        let handlers = HandlerRegistry::with_builtins();
        let stats = Arc::new(SessionStats::with_handlers(0, handlers.names().len()));
        let config = SessionConfig {
            worker_id: "fuzz".into(),
            runtime: "fuzz",
            max_body: program.max_body,
            max_in_flight: program.max_in_flight,
            token: None,
            handshake_timeout: Duration::from_secs(1),
        };
        let session = WorkerSession::new(0, &config, handlers, stats.clone(), now);
        let mut unread = Vec::new();
        if let Some((max_body, heartbeat)) = program.welcome {
            let body = format!(
                r#"{{"protocol":1,"manager":"fuzz","max_body":{max_body},"heartbeat_ms":{heartbeat}}}"#
            );
            encode_frame(&mut unread, FrameKind::Welcome, 0, 0, body.as_bytes());
        }
        SessionDriver {
            link: Link::plain(session),
            counters: ByteCounters::new(stats.clone()),
            stats,
            now,
            split,
            unread,
            seeds: vec![0x85],
            eof_sent: false,
            eof_read: false,
            output: Vec::new(),
            max_in_flight: program.max_in_flight,
            peer_max_body: program.welcome.map(|(max_body, _)| max_body),
        }
    }

    /// Read what the manager sent, if the session wants to read: one read
    /// of everything unread, or reads of the sizes the seeds give.
    fn read(&mut self) {
        if !self.link.wants_read() {
            return;
        }
        if !self.unread.is_empty() {
            let bytes = std::mem::take(&mut self.unread);
            if self.split {
                let mut at = 0;
                let mut seed = 0;
                while at < bytes.len() {
                    let s = self.seeds[seed % self.seeds.len()]
                        .wrapping_add((seed / self.seeds.len()) as u8);
                    seed += 1;
                    let (size, into_buffer) = chunk_plan(s, bytes.len() - at);
                    let chunk = &bytes[at..at + size];
                    at += size;
                    self.counters.received(chunk.len());
                    if into_buffer {
                        let space = self.link.recv_space(chunk.len());
                        space[..chunk.len()].copy_from_slice(chunk);
                        self.link.on_received(chunk.len(), self.now);
                    } else {
                        self.link.on_input(chunk, self.now);
                    }
                }
            } else {
                self.counters.received(bytes.len());
                self.link.on_input(&bytes, self.now);
            }
            self.seeds.clear();
            self.seeds.push(0x85);
        }
        if self.eof_sent && !self.eof_read && self.link.wants_read() {
            self.eof_read = true;
            self.link.on_eof(self.now);
        }
    }

    fn flush(&mut self) {
        let out = self.link.take_output(Vec::new());
        self.counters.sent(out.len());
        self.output.extend_from_slice(&out);
        self.link.on_flushed(self.now);
    }

    fn step(&mut self, op: &SessionOp) {
        match op {
            SessionOp::Bytes { bytes, seeds } => {
                if !self.eof_sent {
                    self.unread.extend_from_slice(bytes);
                    if self.seeds == [0x85] {
                        self.seeds.clear();
                    }
                    self.seeds.extend_from_slice(seeds);
                }
            }
            SessionOp::Advance(by) => {
                self.now += *by;
                self.link.handle_timeout(self.now);
            }
            SessionOp::ToDeadline => {
                if let Some(at) = self.link.poll_timeout() {
                    self.now = self.now.max(at);
                    self.link.handle_timeout(self.now);
                }
            }
            SessionOp::Flush => self.flush(),
            SessionOp::Drain => self.link.start_drain(self.now),
            SessionOp::Eof => self.eof_sent = true,
        }
        self.read();
        assert!(
            self.link.in_flight() <= self.max_in_flight as usize,
            "{} tasks held, max_in_flight {}",
            self.link.in_flight(),
            self.max_in_flight
        );
    }

    /// Flush until nothing more comes (GOODBYE follows a flush), then check
    /// the whole output.
    fn finish(mut self) -> SessionOutcome {
        for _ in 0..4 {
            self.flush();
            self.read();
        }
        self.check_output();
        SessionOutcome {
            output: self.output,
            closed: self.link.closed().cloned(),
            in_flight: self.link.in_flight(),
            tasks: self.link.tasks_this_connection(),
            received: self.stats.bytes_received(),
            welcomed: self.link.welcomed_at().is_some(),
        }
    }

    /// The output is whole frames a worker may send: HELLO first, nothing
    /// after GOODBYE or ERROR, no frame over the manager's `max_body`, and
    /// GOODBYE's counts are the bytes written before it and read in all.
    fn check_output(&self) {
        let frames = decode_all(&self.output, "the session's output");
        let mut offset = 0usize;
        let mut ended = false;
        for (i, (kind, flags, _id, body)) in frames.iter().enumerate() {
            assert!(!ended, "frame {kind} after GOODBYE or ERROR");
            match kind {
                FrameKind::Hello => {
                    assert_eq!(i, 0, "HELLO is the first frame and the only one");
                    let hello: Hello = serde_json::from_slice(body).expect("HELLO body is JSON");
                    assert_eq!(hello.max_in_flight, self.max_in_flight);
                }
                FrameKind::Ack | FrameKind::Ping | FrameKind::Pong | FrameKind::Drain => {
                    assert!(body.is_empty(), "{kind} with a body");
                }
                FrameKind::Result => {
                    if flags & FLAG_FAILED != 0 {
                        let _: ErrorBody =
                            serde_json::from_slice(body).expect("a FAILED body is an ERROR body");
                    }
                }
                FrameKind::Error => {
                    let _: ErrorBody = serde_json::from_slice(body).expect("ERROR body is JSON");
                    ended = true;
                }
                FrameKind::Goodbye => {
                    ended = true;
                    if !body.is_empty() {
                        let counts: GoodbyeBody =
                            serde_json::from_slice(body).expect("GOODBYE body is JSON");
                        assert_eq!(counts.bytes_sent, offset as u64, "GOODBYE bytes_sent");
                        assert_eq!(
                            counts.bytes_received,
                            self.stats.bytes_received(),
                            "GOODBYE bytes_received"
                        );
                    }
                }
                other => panic!("a worker sent {other}"),
            }
            let welcomed = self.link.welcomed_at().is_some();
            if let (Some(limit), true) = (self.peer_max_body.filter(|_| welcomed), i > 0) {
                assert!(
                    body.len() <= limit as usize,
                    "{kind} body of {} bytes over the manager's max_body {limit}: {:?}",
                    body.len(),
                    String::from_utf8_lossy(body)
                );
            }
            offset += HEADER_LEN + body.len();
        }
    }
}

/// A byte-coded program (manager bytes, clock steps, flushes, a drain, EOF)
/// into a [`Link`] over a real [`WorkerSession`] with the built-in handlers,
/// run twice: reading each delivery whole, and in input-chosen pieces
/// through both read paths. Both runs must write the same bytes and end the
/// same way.
pub fn session(data: &[u8]) {
    let program = SessionProgram::parse(data);
    let mut outcomes = [true, false].map(|split| {
        let mut driver = SessionDriver::new(&program, split);
        driver.read();
        for op in &program.ops {
            driver.step(op);
        }
        driver.finish()
    });
    let [split, whole] = &mut outcomes;
    if split != whole {
        let a = decode_all(&split.output, "split");
        let b = decode_all(&whole.output, "whole");
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        panic!(
            "reads split differently gave a different session: first differing frame {first:?} \
             (split {:?}, whole {:?}); split ended {:?} with {} tasks, whole {:?} with {}",
            first.and_then(|i| a.get(i)),
            first.and_then(|i| b.get(i)),
            split.closed,
            split.tasks,
            whole.closed,
            whole.tasks
        );
    }
}

/// A JSON number the fuzzer picked, and its value when it is one a `u32`
/// field accepts.
fn json_number(input: &mut Input<'_>) -> (String, Option<u32>) {
    const PLAIN: [u32; 10] = [0, 1, 2, 63, 64, 65, 512, 65535, 1 << 24, u32::MAX];
    match input.byte() % 16 {
        0..=7 => {
            let n = input.pick(&PLAIN);
            (n.to_string(), Some(n))
        }
        8 | 9 => {
            let n = u32::from(input.u16());
            (n.to_string(), Some(n))
        }
        10 => (
            input
                .pick(&["4294967296", "18446744073709551616", "-1"])
                .into(),
            None,
        ),
        11 => (
            input.pick(&["1.5", "1e3", "1e400", "-0", "0.0"]).into(),
            None,
        ),
        12 => (input.pick(&["\"1\"", "null", "true"]).into(), None),
        13 => (input.pick(&["[]", "{}", "[1]", "{\"a\":1}"]).into(), None),
        14 => (" 1 ".into(), Some(1)),
        _ => ("1".into(), Some(1)),
    }
}

/// A JSON value for a string field, and the string when it is one.
fn json_string(input: &mut Input<'_>) -> (Vec<u8>, Option<String>) {
    let text: String = match input.byte() % 16 {
        0 => String::new(),
        1..=4 => "manager-1".into(),
        5 | 6 => {
            let n = usize::from(input.byte() % 48);
            String::from_utf8_lossy(input.bytes(n)).into_owned()
        }
        7 => "line\nFAKE LOG LINE\r\u{1b}[31mred\u{7}".into(),
        8 => "\u{202e}desrever\u{2066}x\u{200f}".into(),
        9 => "x".repeat(usize::from(input.u16() % 6000)),
        10 => "é€😀".repeat(usize::from(input.byte())),
        11 => return (b"12".to_vec(), None),
        12 => return (b"null".to_vec(), None),
        13 => return (b"[\"a\"]".to_vec(), None),
        14 => {
            // Bytes that are not UTF-8, unescaped inside the quotes.
            let mut raw = b"\"bad ".to_vec();
            raw.extend_from_slice(&[0xff, 0xfe, 0xc0, input.byte()]);
            raw.push(b'"');
            return (raw, None);
        }
        _ => "\\u0000 escapes \\ \" \u{0}".into(),
    };
    let quoted = serde_json::to_vec(&text).unwrap_or_default();
    (quoted, Some(text))
}

/// Whole-body damage: the body is no longer a JSON object.
fn json_damage(input: &mut Input<'_>, body: &mut Vec<u8>) {
    let at = usize::from(input.u16()) % (body.len() + 1);
    match input.byte() % 6 {
        0 => body.truncate(at.min(body.len().saturating_sub(1))),
        1 => body.extend_from_slice(b"x"),
        2 => {
            body.insert(0, b'[');
            body.push(b']');
        }
        3 => {
            *body = b"[".repeat(200);
        }
        4 => body.insert(at, 0xff),
        _ => {
            *body = input
                .pick(&[&b""[..], b"null", b"1", b"\"{}\"", b"{"])
                .to_vec()
        }
    }
}

/// A WELCOME body built field by field; `Some(valid)` when whether the
/// worker must accept it is known.
fn welcome_body(input: &mut Input<'_>) -> (Vec<u8>, Option<bool>) {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut known = true;
    let mut valid = true;
    let flags = input.byte();
    for (i, name) in ["protocol", "manager", "max_body", "heartbeat_ms"]
        .iter()
        .enumerate()
    {
        if flags & (1 << i) != 0 && input.byte() % 4 == 0 {
            valid = false; // a required field is missing
            continue;
        }
        let mut field = format!("\"{name}\":").into_bytes();
        if *name == "manager" {
            let (value, text) = json_string(input);
            valid &= text.is_some();
            field.extend_from_slice(&value);
        } else {
            let (value, n) = if *name == "protocol" && input.byte() % 2 == 0 {
                ("1".to_owned(), Some(1))
            } else {
                json_number(input)
            };
            match (*name, n) {
                (_, None) => valid = false,
                ("protocol", Some(n)) => valid &= n == PROTOCOL_VERSION,
                ("max_body", Some(n)) => valid &= n >= crate::protocol::machine::MIN_PEER_MAX_BODY,
                _ => {}
            }
            field.extend_from_slice(value.as_bytes());
        }
        fields.push(field);
    }
    if flags & 0x10 != 0 {
        fields.push(br#""extra":{"nested":[1,2,{"x":null}]}"#.to_vec());
    }
    if flags & 0x20 != 0 {
        // A duplicate key: which one wins is serde's business.
        fields.push(b"\"protocol\":7".to_vec());
        known = false;
    }
    if flags & 0x40 != 0 && !fields.is_empty() {
        let at = usize::from(input.byte()) % fields.len();
        let last = fields.len() - 1;
        fields.swap(at, last);
    }
    let mut body = b"{".to_vec();
    body.extend_from_slice(&fields.join(&b","[..]));
    body.push(b'}');
    if flags & 0x80 != 0 {
        json_damage(input, &mut body);
        valid = false;
    }
    (body, known.then_some(valid))
}

/// An ERROR body built field by field, and the code and message the worker
/// must report for it (`unknown` when it does not parse).
fn error_body(input: &mut Input<'_>) -> (Vec<u8>, Option<(String, String)>) {
    let flags = input.byte();
    let (code, code_text) = json_string(input);
    let (message, message_text) = json_string(input);
    let mut body = b"{\"code\":".to_vec();
    body.extend_from_slice(&code);
    body.extend_from_slice(b",\"message\":");
    body.extend_from_slice(&message);
    if flags & 1 != 0 {
        body.extend_from_slice(b",\"retry\":false");
    }
    body.push(b'}');
    let mut parsed = code_text.zip(message_text);
    if flags & 0x80 != 0 {
        json_damage(input, &mut body);
        parsed = None;
    }
    (body, parsed)
}

/// The handshake with the manager's bodies picked field by field (JSON-aware
/// mutation): a WELCOME or ERROR first, or a valid WELCOME and then one of
/// them; then a TASK. The worker must accept exactly the valid WELCOMEs,
/// refuse the others with an ERROR, report an ERROR's code and message
/// capped and escaped, and keep anything it logs on one line.
pub fn handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte() % 4;
    let mut stream = Vec::new();
    let valid_welcome = br#"{"protocol":1,"manager":"m","max_body":65536,"heartbeat_ms":0}"#;
    if mode >= 2 {
        encode_frame(&mut stream, FrameKind::Welcome, 0, 0, valid_welcome);
    }
    let (expect_welcome, expect_error) = if mode % 2 == 0 {
        let (body, valid) = welcome_body(&mut input);
        encode_frame(&mut stream, FrameKind::Welcome, 0, 0, &body);
        (valid, None)
    } else {
        let (body, parsed) = error_body(&mut input);
        encode_frame(&mut stream, FrameKind::Error, 0, 0, &body);
        (None, Some(parsed))
    };
    let mut task = vec![4];
    task.extend_from_slice(b"echoping");
    encode_frame(&mut stream, FrameKind::Task, FLAG_ACK_REQUESTED, 1, &task);

    let now = Instant::now();
    let handlers = HandlerRegistry::with_builtins();
    let stats = Arc::new(SessionStats::with_handlers(0, handlers.names().len()));
    let config = SessionConfig {
        worker_id: "fuzz".into(),
        runtime: "fuzz",
        max_body: 1 << 20,
        max_in_flight: 4,
        token: None,
        handshake_timeout: Duration::from_secs(1),
    };
    let mut link = Link::plain(WorkerSession::new(0, &config, handlers, stats, now));
    let seed = input.byte();
    let mut at = 0;
    let mut n = 0u8;
    while at < stream.len() && link.wants_read() {
        let (size, _) = chunk_plan(seed.wrapping_add(n), stream.len() - at);
        n = n.wrapping_add(37);
        link.on_input(&stream[at..at + size], now);
        at += size;
    }
    let output = link.take_output(Vec::new());
    let frames = decode_all(&output, "the worker's output");
    assert_eq!(frames.first().map(|f| f.0), Some(FrameKind::Hello));
    let result = frames
        .iter()
        .find(|f| f.0 == FrameKind::Result)
        .map(|f| f.3.clone());
    if let Some(reason) = link.closed() {
        let line = reason.to_string();
        assert!(
            !line.chars().any(char::is_control),
            "a control character in the close reason {line:?}"
        );
        assert!(line.len() <= 1024, "a close reason of {} bytes", line.len());
    }
    match (mode, link.closed()) {
        (0, None) => {
            assert_ne!(expect_welcome, Some(false), "an invalid WELCOME accepted");
            assert_eq!(
                result.as_deref(),
                Some(&b"ping"[..]),
                "the TASK after WELCOME"
            );
        }
        (0, Some(reason)) => {
            assert_ne!(
                expect_welcome,
                Some(true),
                "a valid WELCOME refused: {reason}"
            );
            assert!(
                matches!(reason, CloseReason::ProtocolViolation { .. }),
                "{reason:?}"
            );
            assert_eq!(frames.last().map(|f| f.0), Some(FrameKind::Error));
            assert!(result.is_none(), "a TASK ran after a refused WELCOME");
        }
        (2, Some(CloseReason::ProtocolViolation { code, .. })) => {
            assert_eq!(*code, crate::protocol::codes::UNEXPECTED_FRAME);
            assert!(result.is_none());
        }
        (
            1 | 3,
            Some(CloseReason::PeerError {
                code,
                message,
                during_handshake,
            }),
        ) => {
            assert_eq!(*during_handshake, mode == 1);
            assert!(result.is_none(), "a TASK ran after ERROR");
            match expect_error.flatten() {
                Some((c, m)) => {
                    use crate::format::{peer_text, MAX_PEER_TEXT};
                    assert_eq!(
                        *code,
                        peer_text(&c, crate::protocol::frame::MAX_HANDLER_NAME)
                    );
                    assert_eq!(*message, peer_text(&m, MAX_PEER_TEXT));
                }
                None => assert_eq!(code, "unknown"),
            }
        }
        (mode, other) => panic!("mode {mode} ended {other:?}"),
    }
}

const MANAGER_TOKEN: &str = "s3cret";

/// A handler name one byte over the limit.
const LONG_NAME: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// A HELLO body built field by field, and whether the manager must accept
/// it (`None` when that is not known).
fn hello_body(input: &mut Input<'_>, token_required: bool) -> (Vec<u8>, Option<bool>) {
    let flags = input.byte();
    let mut valid = true;
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let numbers = ["protocol", "session", "max_body", "max_in_flight"];
    for (i, name) in numbers.iter().enumerate() {
        if flags & (1 << i) != 0 && input.byte() % 4 == 0 {
            valid = false;
            continue;
        }
        let (value, n) = if input.byte() % 2 == 0 {
            ("1".to_owned(), Some(1))
        } else {
            json_number(input)
        };
        valid &= n.is_some();
        if *name == "protocol" {
            valid &= n == Some(PROTOCOL_VERSION);
        }
        fields.push(format!("\"{name}\":{value}").into_bytes());
    }
    for name in ["worker", "runtime"] {
        let (value, text) = json_string(input);
        valid &= text.is_some();
        let mut field = format!("\"{name}\":").into_bytes();
        field.extend_from_slice(&value);
        fields.push(field);
    }
    let handlers: &[u8] = input.pick(&[
        &b"[\"echo\",\"sleep\"]"[..],
        b"[]",
        b"[1]",
        b"\"echo\"",
        b"null",
    ]);
    valid &= handlers.starts_with(b"[") && handlers != b"[1]";
    fields.push([&b"\"handlers\":"[..], handlers].concat());
    match input.byte() % 5 {
        0 => valid &= !token_required,
        1 => fields.push(format!("\"token\":\"{MANAGER_TOKEN}\"").into_bytes()),
        2 => {
            fields.push(b"\"token\":\"s3cre\"".to_vec());
            valid &= !token_required;
        }
        3 => {
            fields.push(b"\"token\":null".to_vec());
            valid &= !token_required;
        }
        _ => {
            fields.push(b"\"token\":7".to_vec());
            valid = false;
        }
    }
    let mut body = b"{".to_vec();
    body.extend_from_slice(&fields.join(&b","[..]));
    body.push(b'}');
    if flags & 0x80 != 0 {
        json_damage(input, &mut body);
        valid = false;
    }
    (body, Some(valid))
}

/// One step of a [`manager`] program.
#[derive(Debug, Clone)]
enum ManagerOp {
    /// Worker bytes; the seed says how a split run chops them.
    Bytes {
        bytes: Vec<u8>,
        seed: u8,
        hello: Option<bool>,
    },
    Task {
        id: u64,
        handler: &'static str,
        len: usize,
        ack: bool,
    },
    Ping(u64),
    Drain,
    Goodbye,
    /// The writer took this many bytes of the output.
    Consume(usize),
}

fn manager_program(data: &[u8]) -> (ManagerConfig, Vec<ManagerOp>) {
    let mut input = Input::new(data);
    let config = input.byte();
    let token = (config & 1 == 1).then(|| MANAGER_TOKEN.to_owned());
    let manager_config = ManagerConfig {
        manager_id: "fuzz".into(),
        max_body: [64, 1024, 65536, 1 << 24][usize::from(config >> 1) & 3],
        heartbeat_ms: u32::from(config >> 4),
        token: token.clone(),
    };
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 512 {
        let op = match input.byte() % 12 {
            0 => {
                let n = usize::from(input.byte());
                let seed = input.byte();
                ManagerOp::Bytes {
                    bytes: input.bytes(n).to_vec(),
                    seed,
                    hello: None,
                }
            }
            1 | 2 => {
                let (body, valid) = hello_body(&mut input, token.is_some());
                let mut bytes = Vec::new();
                encode_frame(&mut bytes, FrameKind::Hello, 0, 0, &body);
                ManagerOp::Bytes {
                    bytes,
                    seed: input.byte(),
                    hello: valid,
                }
            }
            3..=5 => {
                let mut bytes = Vec::new();
                for _ in 0..1 + input.byte() % 4 {
                    worker_frame(&mut input, &mut bytes);
                }
                ManagerOp::Bytes {
                    bytes,
                    seed: input.byte(),
                    hello: None,
                }
            }
            6 | 7 => ManagerOp::Task {
                id: u64::from(input.byte()),
                handler: input.pick(&["echo", "sleep", "", "two words", "é", LONG_NAME]),
                len: usize::from(input.u16()) % 70_000,
                ack: input.byte() & 1 == 1,
            },
            8 => ManagerOp::Ping(u64::from(input.byte())),
            9 => ManagerOp::Drain,
            10 => ManagerOp::Goodbye,
            _ => ManagerOp::Consume(usize::from(input.u16())),
        };
        ops.push(op);
    }
    (manager_config, ops)
}

/// One frame a worker could send, from a few input bytes.
fn worker_frame(input: &mut Input<'_>, out: &mut Vec<u8>) {
    let kind = input.byte();
    let id = u64::from(input.byte());
    let _written = match kind % 10 {
        0..=3 => {
            let len = usize::from(input.byte()) * usize::from(input.byte() % 8 + 1);
            let flags = input.byte() & FLAG_FAILED;
            let body: Vec<u8> = if flags != 0 && kind & 0x80 != 0 {
                ErrorBody::new("handler_failed", "x").to_json()
            } else {
                (0..len).map(|i| i as u8).collect()
            };
            encode_frame(out, FrameKind::Result, flags, id, &body)
        }
        4 => encode_frame(out, FrameKind::Ack, 0, id, &[]),
        5 => encode_frame(out, FrameKind::Ping, 0, id, &[]),
        6 => encode_frame(out, FrameKind::Pong, 0, id, &[]),
        7 => encode_frame(out, FrameKind::Drain, 0, 0, &[]),
        8 => {
            let body: &[u8] = input.pick(&[
                &br#"{"bytes_sent":10,"bytes_received":20}"#[..],
                b"",
                b"{\"bytes_sent\":-1}",
                b"[1,2]",
            ]);
            encode_frame(out, FrameKind::Goodbye, 0, 0, body)
        }
        _ => {
            let (body, _) = error_body(input);
            let kind = input.pick(&[
                FrameKind::Error,
                FrameKind::Error,
                FrameKind::Task,
                FrameKind::Welcome,
            ]);
            encode_frame(out, kind, 0, 0, &body)
        }
    };
}

/// What a manager run ends with; a split run must end the same.
#[derive(Debug, PartialEq, Eq)]
struct ManagerOutcome {
    events: Vec<ManagerEvent>,
    sends: Vec<Result<(), SendError>>,
    output: Vec<u8>,
    phase: ManagerPhase,
}

fn run_manager(config: &ManagerConfig, ops: &[ManagerOp], split: bool) -> ManagerOutcome {
    let mut machine = ManagerMachine::new(config.clone());
    let mut events = Vec::new();
    let mut sends = Vec::new();
    let mut written = Vec::new();
    let mut unread: Vec<u8> = Vec::new();
    let mut seeds = Vec::new();
    let mut ended = false;
    let mut hello_expected: Option<Option<bool>> = None;
    let mut fed_any = false;
    let poll = |machine: &mut ManagerMachine,
                written: &[u8],
                events: &mut Vec<ManagerEvent>,
                ended: &mut bool,
                hello: &mut Option<Option<bool>>| {
        while let Some(event) = machine.poll_event() {
            assert!(!*ended, "{event:?} after the connection ended");
            match &event {
                ManagerEvent::Hello(hello_body) => {
                    assert_eq!(machine.phase(), ManagerPhase::Active);
                    assert_eq!(hello_body.protocol, PROTOCOL_VERSION);
                    if let Some(token) = &config.token {
                        assert_eq!(
                            hello_body.token.as_deref(),
                            Some(token.as_str()),
                            "a HELLO with a wrong token accepted"
                        );
                    }
                    assert_ne!(*hello, Some(Some(false)), "an invalid HELLO accepted");
                    let out = decode_all(
                        &[&written[..], machine.pending_output()].concat(),
                        "the manager's output",
                    );
                    assert_eq!(out.last().map(|f| f.0), Some(FrameKind::Welcome));
                }
                ManagerEvent::Result { body, .. } => {
                    assert!(body.len() <= config.max_body as usize);
                }
                ManagerEvent::Refused { code, .. } => {
                    *ended = true;
                    let out = decode_all(
                        &[&written[..], machine.pending_output()].concat(),
                        "the manager's output",
                    );
                    let last = out.last().expect("ERROR queued");
                    assert_eq!(last.0, FrameKind::Error);
                    let body: ErrorBody = serde_json::from_slice(&last.3).expect("ERROR body");
                    assert_eq!(body.code, *code);
                }
                ManagerEvent::Goodbye { .. } | ManagerEvent::Error { .. } => *ended = true,
                _ => {}
            }
            if *ended {
                assert_eq!(machine.phase(), ManagerPhase::Closed);
            }
            events.push(event);
        }
        *hello = None;
    };
    for op in ops {
        if let ManagerOp::Bytes { bytes, seed, hello } = op {
            unread.extend_from_slice(bytes);
            seeds.push(*seed);
            // Only a HELLO that is the very first bytes is known to be
            // the frame a Hello event comes from.
            if !fed_any {
                hello_expected = Some(*hello);
            }
            fed_any = true;
            continue;
        }
        // The worker's bytes are read before the manager acts again.
        if split {
            let mut at = 0;
            let mut n = 0;
            while at < unread.len() {
                let seed = seeds
                    .get(n % seeds.len().max(1))
                    .copied()
                    .unwrap_or(0xc0)
                    .wrapping_add(n as u8);
                n += 1;
                let (size, into_buffer) = chunk_plan(seed, unread.len() - at);
                let chunk = &unread[at..at + size];
                at += size;
                if into_buffer {
                    let space = machine.recv_space(size);
                    space[..size].copy_from_slice(chunk);
                    machine.commit(size);
                } else {
                    machine.handle_input(chunk);
                }
                poll(
                    &mut machine,
                    &written,
                    &mut events,
                    &mut ended,
                    &mut hello_expected,
                );
            }
        } else {
            machine.handle_input(&unread);
            poll(
                &mut machine,
                &written,
                &mut events,
                &mut ended,
                &mut hello_expected,
            );
        }
        unread.clear();
        seeds.clear();
        match op {
            ManagerOp::Bytes { .. } => {}
            ManagerOp::Task {
                id,
                handler,
                len,
                ack,
            } => {
                let phase = machine.phase();
                let payload = vec![0x5a; *len];
                let sent = machine.send_task(*id, handler, &payload, *ack);
                match &sent {
                    Ok(()) => {
                        assert_eq!(phase, ManagerPhase::Active);
                        assert!(1 + handler.len() + len <= machine.worker_max_body() as usize);
                        let out = decode_all(
                            &[&written[..], machine.pending_output()].concat(),
                            "the manager's output",
                        );
                        let last = out.last().expect("the TASK");
                        assert_eq!((last.0, last.2), (FrameKind::Task, *id));
                        assert_eq!(last.3.len(), 1 + handler.len() + len);
                    }
                    Err(SendError::NotReady) => assert_ne!(phase, ManagerPhase::Active),
                    Err(_) => assert_eq!(phase, ManagerPhase::Active),
                }
                sends.push(sent);
            }
            ManagerOp::Ping(nonce) => machine.send_ping(*nonce),
            ManagerOp::Drain => machine.send_drain(),
            ManagerOp::Goodbye => machine.send_goodbye(),
            ManagerOp::Consume(n) => {
                let n = (*n).min(machine.pending_output().len());
                written.extend_from_slice(&machine.pending_output()[..n]);
                machine.consume_output(n);
            }
        }
    }
    written.extend_from_slice(machine.pending_output());
    for (kind, ..) in decode_all(&written, "the manager's output") {
        assert!(
            matches!(
                kind,
                FrameKind::Welcome
                    | FrameKind::Task
                    | FrameKind::Ping
                    | FrameKind::Pong
                    | FrameKind::Drain
                    | FrameKind::Goodbye
                    | FrameKind::Error
            ),
            "a manager sent {kind}"
        );
    }
    ManagerOutcome {
        events,
        sends,
        output: written,
        phase: machine.phase(),
    }
}

/// Worker bytes (raw, or HELLOs and frames picked field by field) into the
/// manager's state machine, between the manager's own sends, read whole
/// and in input-chosen pieces: both runs must decode the same events and
/// write the same bytes.
pub fn manager(data: &[u8]) {
    let (config, ops) = manager_program(data);
    let split = run_manager(&config, &ops, true);
    let whole = run_manager(&config, &ops, false);
    assert_eq!(
        split.events, whole.events,
        "events differ with the reads split"
    );
    assert_eq!(split.sends, whole.sends);
    assert_eq!(split.phase, whole.phase);
    assert!(
        split.output == whole.output,
        "output differs with the reads split"
    );
}

/// The two ends of the [`tls`] target: a client configuration that trusts
/// one self-signed certificate for `localhost`, and a manager configuration
/// that serves it (TLS 1.3, no tickets, as [`crate::transport::tls`] sets
/// them). The certificate is made by the caller (the fuzz crate and the
/// tests use rcgen), so no key is built into the library.
#[derive(Clone)]
pub struct TlsPeers {
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsPeers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsPeers").finish_non_exhaustive()
    }
}

impl TlsPeers {
    /// Peers for a DER certificate for `localhost` and its PKCS#8 key.
    pub fn new(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<TlsPeers, String> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        let cert = CertificateDer::from(cert_der);
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .map_err(|e| e.to_string())?;
        server.send_tls13_tickets = 0;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).map_err(|e| e.to_string())?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsPeers {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// Damage done to a piece of a record stream.
fn damage(input: &mut Input<'_>, chunk: &mut Vec<u8>) -> bool {
    let at = usize::from(input.u16()) % chunk.len().max(1);
    match input.byte() % 12 {
        0 if !chunk.is_empty() => chunk[at] ^= 1 << (input.byte() % 8),
        1 => chunk.insert(at.min(chunk.len()), input.byte()),
        2 if !chunk.is_empty() => {
            let end = (at + 1 + usize::from(input.byte())).min(chunk.len());
            chunk.drain(at..end);
        }
        3 => {
            let copy = chunk.clone();
            chunk.extend_from_slice(&copy);
        }
        4 => chunk.truncate(at),
        _ => return false,
    }
    true
}

/// A TLS [`Link`] against an in-memory rustls server and a
/// [`ManagerMachine`] behind it: the input interleaves the two sides'
/// writes, manager tasks, clock steps and EOF, and splits, corrupts, cuts or
/// injects the record stream in either direction. Corrupted records never
/// reach the session as plaintext (every echo RESULT the manager reads is
/// the payload it sent), a failed link reads nothing more and writes at
/// most its alert, and after EOF and the timeouts the link has failed
/// ([`Link::failure`]) or its session has closed: nothing hangs.
pub fn tls(peers: &TlsPeers, data: &[u8]) {
    use crate::transport::tls::ServerTls;

    let mut input = Input::new(data);
    let mut now = Instant::now();
    let handlers = HandlerRegistry::with_builtins();
    let stats = Arc::new(SessionStats::with_handlers(0, handlers.names().len()));
    let config = SessionConfig {
        worker_id: "fuzz".into(),
        runtime: "fuzz",
        max_body: 65536,
        max_in_flight: 4,
        token: None,
        handshake_timeout: Duration::from_secs(10),
    };
    let session = WorkerSession::new(0, &config, handlers, stats, now);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let mut conn =
        rustls::ClientConnection::new(peers.client.clone(), name).expect("a client connection");
    conn.set_buffer_limit(None);
    let mut link = Link::tls(session, conn);
    let mut server = ServerTls::new(peers.server.clone()).expect("a server connection");
    let mut manager = ManagerMachine::new(ManagerConfig {
        max_body: 65536,
        heartbeat_ms: u32::from(input.byte() % 2) * 100,
        ..ManagerConfig::default()
    });
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_worker: Vec<u8> = Vec::new();
    let mut expected: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut next_id = 1u64;
    let mut server_failed = false;
    let mut eof = false;
    let mut failed_and_flushed = false;

    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        ops += 1;
        match input.byte() % 10 {
            // The worker writes; the manager reads (maybe damaged records).
            0 | 1 => {
                let out = link.take_output(Vec::new());
                if failed_and_flushed {
                    assert!(
                        out.is_empty(),
                        "{} bytes written after the link failed",
                        out.len()
                    );
                }
                if link.failure().is_some() {
                    failed_and_flushed = true;
                }
                to_server.extend_from_slice(&out);
                link.on_flushed(now);
                if input.byte() % 4 == 0 {
                    damage(&mut input, &mut to_server);
                }
                if !server_failed {
                    let fed = server.feed(&to_server, &mut |plain, _| manager.handle_input(plain));
                    server_failed = fed.is_err();
                }
                to_server.clear();
                while let Some(event) = manager.poll_event() {
                    if let ManagerEvent::Result {
                        id,
                        failed: false,
                        body,
                    } = event
                    {
                        let sent = expected.get(&id).expect("a RESULT for a task sent");
                        assert_eq!(&body, sent, "echo of task {id}");
                    }
                }
                server.write_plain(&manager.take_output(Vec::new()));
                server.write_records(&mut to_worker);
            }
            // The manager sends tasks.
            2 | 3 => {
                for _ in 0..1 + input.byte() % 4 {
                    let len = usize::from(input.u16() % 2000);
                    let fill = input.byte();
                    let payload: Vec<u8> = (0..len).map(|i| fill ^ i as u8).collect();
                    if manager
                        .send_task(next_id, "echo", &payload, fill & 1 == 1)
                        .is_ok()
                    {
                        expected.insert(next_id, payload);
                        next_id += 1;
                    }
                }
                server.write_plain(&manager.take_output(Vec::new()));
                server.write_records(&mut to_worker);
            }
            // The worker reads what the manager sent, in pieces, some damaged.
            4..=6 => {
                let seed = input.byte();
                let mut at = 0;
                let mut n = 0u8;
                while at < to_worker.len() && !eof {
                    let (size, _) = chunk_plan(seed.wrapping_add(n), to_worker.len() - at);
                    n = n.wrapping_add(29);
                    let mut chunk = to_worker[at..at + size].to_vec();
                    at += size;
                    if input.byte() % 8 == 0 {
                        damage(&mut input, &mut chunk);
                    }
                    link.on_input(&chunk, now);
                }
                to_worker.clear();
            }
            7 => {
                now += Duration::from_millis(u64::from(input.byte()) * 4);
                link.handle_timeout(now);
            }
            // Bytes from nowhere, or the manager closes.
            8 => {
                let n = usize::from(input.byte() % 64);
                let junk = input.bytes(n).to_vec();
                if !eof {
                    link.on_input(&junk, now);
                }
            }
            _ => {
                if input.byte() % 2 == 0 {
                    server.close();
                    server.write_records(&mut to_worker);
                } else if !eof {
                    link.on_input(&to_worker, now);
                    to_worker.clear();
                    eof = true;
                    link.on_eof(now);
                }
            }
        }
        assert!(link.in_flight() <= 4);
        if link.failure().is_some() {
            assert!(!link.wants_read(), "a failed link still wants to read");
        }
    }

    // The end: what is left arrives, then EOF, then time passes.
    if !eof {
        link.on_input(&to_worker, now);
        link.on_eof(now);
    }
    for _ in 0..4 {
        now += Duration::from_secs(11);
        link.handle_timeout(now);
        let out = link.take_output(Vec::new());
        if failed_and_flushed {
            assert!(
                out.is_empty(),
                "{} bytes written after the link failed",
                out.len()
            );
        }
        if link.failure().is_some() {
            failed_and_flushed = true;
        }
        link.on_flushed(now);
    }
    assert!(
        link.failure().is_some() || link.closed().is_some(),
        "after EOF and the timeouts the link neither failed nor closed (handshaking {})",
        link.welcomed_at().is_none()
    );
}
