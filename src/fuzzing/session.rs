//! The [`session`] target: a byte-coded program (manager frames, clock
//! steps, flushes, a drain, EOF) into a [`Link`] over a real
//! [`WorkerSession`], run with reads whole and split, with the checks on
//! what the worker writes. It owns the program, the driver that plays a
//! runtime, and the manager frames it builds; it must never use a real
//! clock or socket, so that both runs see exactly the same events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{chunk_plan, decode_all, Input};
use crate::connection::Link;
use crate::handlers::HandlerRegistry;
use crate::protocol::frame::{
    encode_frame, FrameKind, FLAG_ACK_REQUESTED, FLAG_FAILED, HEADER_LEN,
};
use crate::protocol::{CloseReason, ErrorBody, GoodbyeBody, Hello};
use crate::runtime::ByteCounters;
use crate::session::{SessionConfig, WorkerSession};
use crate::stats::SessionStats;

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
                        let space = self.link.session_mut().recv_space(chunk.len());
                        space[..chunk.len()].copy_from_slice(chunk);
                        self.link.session_mut().on_received(chunk.len(), self.now);
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
                self.link.session_mut().handle_timeout(self.now);
            }
            SessionOp::ToDeadline => {
                if let Some(at) = self.link.session().poll_timeout() {
                    self.now = self.now.max(at);
                    self.link.session_mut().handle_timeout(self.now);
                }
            }
            SessionOp::Flush => self.flush(),
            SessionOp::Drain => self.link.session_mut().start_drain(self.now),
            SessionOp::Eof => self.eof_sent = true,
        }
        self.read();
        assert!(
            self.link.session().in_flight() <= self.max_in_flight as usize,
            "{} tasks held, max_in_flight {}",
            self.link.session().in_flight(),
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
            closed: self.link.session().closed().cloned(),
            in_flight: self.link.session().in_flight(),
            tasks: self.link.session().tasks_this_connection(),
            received: self.stats.bytes_received(),
            welcomed: self.link.session().welcomed_at().is_some(),
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
            let welcomed = self.link.session().welcomed_at().is_some();
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
