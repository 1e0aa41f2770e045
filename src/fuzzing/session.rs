//! The [`session`] target: a byte-coded program (manager frames, clock
//! steps, the manager reading, declared handlers' jobs answered, a stop,
//! EOF) into a [`Connection`] over a real [`WorkerSession`](crate::session::WorkerSession),
//! run as each runtime reads, with the checks on what the worker writes
//! and on the connection's lifecycle. It owns the program, the manager end
//! (one per connection: the connection redials after it closes) and the
//! manager frames it builds; a [`Driver`] plays the runtime. It must never
//! use a real clock or socket, so that both runs see exactly the same
//! events.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::driver::{self, Driver, Lifecycle};
use super::{chunk_plan, decode_all, Input};
use crate::config::handlers::{ModeSettings, Rlimits};
use crate::config::{HandlerDecl, HandlerSet};
use crate::connection::drain::DrainTally;
#[cfg(doc)]
use crate::connection::Connection;
use crate::connection::Receive;
use crate::exec::Outcome;
use crate::handlers::HandlerRegistry;
use crate::protocol::frame::{
    encode_frame, FrameKind, FLAG_ACK_REQUESTED, FLAG_FAILED, HEADER_LEN,
};
use crate::protocol::{codes, ErrorBody, GoodbyeBody, Hello};
use crate::session::SessionConfig;

/// The declared handler (its jobs are handed to the runtime).
const DECLARED: &str = "ext";

/// The handlers a TASK may name; `nosuch` is not registered.
const HANDLER_NAMES: [&str; 7] = [
    "echo", "crc32c", "sha256", "sink", "sleep", "nosuch", DECLARED,
];

/// Large TASKs (60 to 75 kB, received directly into the frame buffer by
/// the io_uring runtime) per program: enough to reach the direct receives,
/// few enough to keep a run fast.
const LARGE_TASKS: u32 = 2;

/// The built-in handlers and one declared handler, which never runs here:
/// its jobs are answered by the program.
fn handlers() -> HandlerRegistry {
    let declared = HandlerDecl {
        name: DECLARED.to_owned(),
        mode: ModeSettings::Exec { concurrency: 1 },
        program: "/bin/true".into(),
        program_written: "true".to_owned(),
        args: Vec::new(),
        env: BTreeMap::new(),
        pass_env: Vec::new(),
        cwd: None,
        timeout: Duration::from_secs(1),
        kill_grace: Duration::from_millis(100),
        rlimits: Rlimits::default(),
        user: None,
        max_output: 1 << 20,
        stderr_cap: 64,
    };
    let mut handlers = HandlerRegistry::with_builtins();
    handlers
        .declare_all(&HandlerSet {
            handlers: vec![declared],
        })
        .expect("a valid declaration");
    handlers
}

/// Append one well-formed frame a manager could send, built from a few
/// input bytes: mostly TASKs for the handlers (small ids, so they collide;
/// `sleep` with a few ms; `sink` now and then large, from the `large`
/// budget), else the other kinds.
fn manager_frame(input: &mut Input<'_>, out: &mut Vec<u8>, large: &mut u32) {
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
                let len = if handler == "sink" && len >= 0xf0 && *large > 0 {
                    *large -= 1;
                    60_000 + (len - 0xf0) * 1_000
                } else {
                    len
                };
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
    /// Jump to the connection's next deadline.
    ToDeadline,
    /// The manager reads everything written.
    Flush,
    /// The declared handler's jobs are answered.
    JobsDone,
    /// The agent is asked to stop.
    Stop,
    /// The manager closes its side.
    Eof,
}

#[derive(Debug, Clone)]
struct SessionProgram {
    max_in_flight: u32,
    max_body: u32,
    /// WELCOME sent first on every connection: (max_body, heartbeat_ms).
    welcome: Option<(u32, u32)>,
    /// During the final stop: jobs are answered, the manager closes its
    /// side after GOODBYE.
    jobs_at_stop: bool,
    eof_at_stop: bool,
    ops: Vec<SessionOp>,
}

impl SessionProgram {
    fn parse(data: &[u8]) -> Self {
        let mut input = Input::new(data);
        let config = input.byte();
        let peer = input.byte();
        let max_in_flight = 1 + u32::from(config & 7);
        let max_body = [128, 300, 4096, 1 << 20][usize::from(config >> 3) & 3];
        let welcome = (config & 0x80 == 0).then(|| {
            let max_body = [64, 100, 512, 65536][usize::from(peer & 3)];
            let heartbeat = [0, 20, 100, 1000][usize::from(peer >> 2) & 3];
            (max_body, heartbeat)
        });
        let mut large = LARGE_TASKS;
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
                        manager_frame(&mut input, &mut bytes, &mut large);
                    }
                    let seeds = vec![input.byte(), input.byte()];
                    SessionOp::Bytes { bytes, seeds }
                }
                5 | 6 => SessionOp::Advance(Duration::from_millis(u64::from(input.byte()))),
                7 => SessionOp::ToDeadline,
                8 => SessionOp::Flush,
                9 => SessionOp::JobsDone,
                10 => SessionOp::Stop,
                _ => SessionOp::Eof,
            };
            ops.push(op);
        }
        SessionProgram {
            max_in_flight,
            max_body,
            welcome,
            jobs_at_stop: config & 0x20 != 0,
            eof_at_stop: config & 0x40 != 0,
            ops,
        }
    }

    /// The manager's first bytes on a connection.
    fn greeting(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        if let Some((max_body, heartbeat)) = self.welcome {
            let body = format!(
                r#"{{"protocol":1,"manager":"fuzz","max_body":{max_body},"heartbeat_ms":{heartbeat}}}"#
            );
            encode_frame(&mut bytes, FrameKind::Welcome, 0, 0, body.as_bytes());
        }
        bytes
    }
}

/// One connection as the manager saw it: what the worker wrote on it, and
/// how it ended.
#[derive(Debug, PartialEq, Eq)]
struct Segment {
    output: Vec<u8>,
    end: Option<Lifecycle>,
}

/// What a session run ends with; a split run must end the same.
#[derive(Debug, PartialEq, Eq)]
struct SessionOutcome {
    segments: Vec<Segment>,
    unfinished: DrainTally,
    /// When the connection stopped, from the start.
    stopped_after: Duration,
}

/// A [`Connection`] driven like a runtime drives one: bytes are read while
/// it wants to read (each delivery handed over whole, or in chunks through
/// the io_uring runtime's read paths when `split`), the manager reads what
/// it is sent when the program says so, timers fire at the fake clock.
struct SessionRun<'p> {
    program: &'p SessionProgram,
    driver: Driver,
    split: bool,
    start: Instant,
    /// Bytes the manager sent on this connection that were not read yet.
    unread: Vec<u8>,
    seeds: Vec<u8>,
    /// The manager closed its side of this connection.
    eof_sent: bool,
    segments: Vec<Segment>,
}

impl<'p> SessionRun<'p> {
    fn new(program: &'p SessionProgram, split: bool) -> Self {
        let start = Instant::now();
        let config = SessionConfig {
            worker_id: "fuzz".into(),
            runtime: "fuzz",
            max_body: program.max_body,
            max_in_flight: program.max_in_flight,
            token: None,
            handshake_timeout: Duration::from_secs(1),
        };
        let plan = driver::plan(config, handlers(), None);
        let mut run = SessionRun {
            program,
            driver: Driver::new(plan, split, start),
            split,
            start,
            unread: Vec::new(),
            seeds: vec![0x85],
            eof_sent: false,
            segments: Vec::new(),
        };
        run.driver.pump();
        run.settle();
        assert_eq!(run.segments.len(), 1, "the connection dials at once");
        run.read();
        run
    }

    /// The manager side follows what happened to the connection.
    fn settle(&mut self) {
        for event in self.driver.take_events() {
            match event {
                Lifecycle::Connected { .. } => {
                    self.segments.push(Segment {
                        output: Vec::new(),
                        end: None,
                    });
                    self.unread = self.program.greeting();
                    self.seeds = vec![0x85];
                    self.eof_sent = false;
                }
                closed @ Lifecycle::Closed { .. } => {
                    let segment = self.segments.last_mut().expect("a connection closed");
                    assert!(segment.end.is_none(), "a connection closed twice");
                    segment.end = Some(closed);
                    self.unread.clear();
                    self.eof_sent = false;
                }
            }
        }
    }

    /// Read what the manager sent, if the connection wants to read: one
    /// read of everything unread, or reads of the sizes the seeds give;
    /// then its end of stream, if it closed its side.
    fn read(&mut self) {
        if !self.unread.is_empty() {
            let bytes = std::mem::take(&mut self.unread);
            let read = if self.split {
                let seeds = self.seeds.clone();
                let mut n = 0;
                self.driver.receive(&bytes, &mut |left, how| {
                    let s = seeds[n % seeds.len()].wrapping_add((n / seeds.len()) as u8);
                    n += 1;
                    let (size, all) = chunk_plan(s, left);
                    if all && matches!(how, Receive::Direct { .. }) {
                        left
                    } else {
                        size
                    }
                })
            } else {
                self.driver.receive(&bytes, &mut |left, _| left)
            };
            if read {
                self.seeds = vec![0x85];
            } else {
                self.unread = bytes;
            }
            self.driver.pump();
            self.settle();
        }
        if self.eof_sent && self.unread.is_empty() && self.driver.receive_eof() {
            self.driver.pump();
            self.settle();
        }
    }

    /// The manager reads everything written, each GOODBYE's counts checked
    /// against the bytes of its connection.
    fn flush(&mut self) {
        for _ in 0..64 {
            let stats = self.driver.conn().stats();
            let received = stats.bytes_received();
            let sent_before = stats.bytes_sent();
            let Some(bytes) = self.driver.take_send() else {
                return;
            };
            let segment = self.segments.last_mut().expect("a send on a connection");
            assert_eq!(
                sent_before,
                segment.output.len() as u64,
                "bytes counted sent on this connection"
            );
            let mut offset = segment.output.len();
            for (kind, _, _, body) in decode_all(&bytes, "a send") {
                if kind == FrameKind::Goodbye && !body.is_empty() {
                    let counts: GoodbyeBody =
                        serde_json::from_slice(&body).expect("GOODBYE body is JSON");
                    assert_eq!(counts.bytes_sent, offset as u64, "GOODBYE bytes_sent");
                    assert_eq!(counts.bytes_received, received, "GOODBYE bytes_received");
                }
                offset += HEADER_LEN + body.len();
            }
            segment.output.extend_from_slice(&bytes);
            self.driver.pump();
            self.settle();
        }
        panic!("sends kept coming with nothing new to answer");
    }

    /// Answer every job handed out, each as its payload's first byte says:
    /// its payload, four times it, a failure, or nothing after an answer
    /// naming another connection (which must change nothing).
    fn answer_jobs(&mut self) {
        for (generation, job) in self.driver.take_jobs() {
            let pick = job.payload.first().copied().unwrap_or(0) % 4;
            let outcome = match pick {
                0 => Outcome::Ok(job.payload),
                1 => Outcome::Ok(job.payload.repeat(4)),
                2 => Outcome::failed(codes::HANDLER_FAILED, "from the fuzzer"),
                _ => {
                    let held = self.driver.session().map(|s| s.in_flight());
                    let other = generation.wrapping_sub(1);
                    self.driver
                        .job_done(other, job.task, Outcome::Ok(b"stale".to_vec()));
                    assert_eq!(
                        self.driver.session().map(|s| s.in_flight()),
                        held,
                        "an answer for another connection was taken"
                    );
                    Outcome::Ok(Vec::new())
                }
            };
            self.driver.job_done(generation, job.task, outcome);
            self.settle();
        }
    }

    fn step(&mut self, op: &SessionOp) {
        match op {
            SessionOp::Bytes { bytes, seeds } => {
                // Bytes with no connection to carry them are lost.
                if self.driver.is_open() && !self.eof_sent {
                    self.unread.extend_from_slice(bytes);
                    if self.seeds == [0x85] {
                        self.seeds.clear();
                    }
                    self.seeds.extend_from_slice(seeds);
                }
            }
            SessionOp::Advance(by) => {
                let at = self.driver.now + *by;
                self.driver.advance_to(at);
            }
            SessionOp::ToDeadline => {
                if let Some(at) = self.driver.conn().poll_timeout() {
                    self.driver.advance_to(at);
                }
            }
            SessionOp::Flush => self.flush(),
            SessionOp::JobsDone => self.answer_jobs(),
            SessionOp::Stop => {
                self.driver.request_stop();
            }
            SessionOp::Eof => self.eof_sent = self.driver.is_open(),
        }
        self.settle();
        self.read();
        self.check_in_flight();
    }

    fn check_in_flight(&self) {
        if let Some(session) = self.driver.session() {
            assert!(
                session.in_flight() <= self.program.max_in_flight as usize,
                "{} tasks held, max_in_flight {}",
                session.in_flight(),
                self.program.max_in_flight
            );
        }
    }

    /// Let the manager read until nothing more comes, then stop: the
    /// connection must stop by the drain's deadline. Then check every
    /// connection's output.
    fn finish(mut self) -> SessionOutcome {
        for _ in 0..4 {
            self.flush();
            self.read();
        }
        self.driver.request_stop();
        self.settle();
        for _ in 0..Driver::STOP_STEPS {
            self.flush();
            if self.program.jobs_at_stop {
                self.answer_jobs();
            }
            if self.program.eof_at_stop && self.driver.is_open() {
                self.eof_sent = true;
            }
            self.read();
            let stopped = self.driver.stop_step();
            self.settle();
            if stopped {
                break;
            }
        }
        assert!(self.driver.is_stopped(), "the connection did not stop");
        for segment in &self.segments {
            self.check_output(segment);
        }
        SessionOutcome {
            unfinished: self.driver.conn().unfinished(),
            stopped_after: self.driver.now - self.start,
            segments: self.segments,
        }
    }

    /// A connection's output is whole frames a worker may send: HELLO
    /// first, nothing after GOODBYE or ERROR, no frame over the manager's
    /// `max_body` once welcomed, and GOODBYE's `bytes_sent` is the bytes
    /// written before it.
    fn check_output(&self, segment: &Segment) {
        let Some(Lifecycle::Closed { welcomed, .. }) = segment.end else {
            panic!("a connection of a stopped agent is still open");
        };
        let frames = decode_all(&segment.output, "the session's output");
        let peer_max_body = self.program.welcome.map(|(max_body, _)| max_body);
        let mut offset = 0usize;
        let mut ended = false;
        for (i, (kind, flags, _id, body)) in frames.iter().enumerate() {
            assert!(!ended, "frame {kind} after GOODBYE or ERROR");
            match kind {
                FrameKind::Hello => {
                    assert_eq!(i, 0, "HELLO is the first frame and the only one");
                    let hello: Hello = serde_json::from_slice(body).expect("HELLO body is JSON");
                    assert_eq!(hello.max_in_flight, self.program.max_in_flight);
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
                    }
                }
                other => panic!("a worker sent {other}"),
            }
            if let (Some(limit), true) = (peer_max_body.filter(|_| welcomed), i > 0) {
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

/// A byte-coded program (manager bytes, clock steps, the manager reading,
/// jobs answered, a stop, EOF) into a [`Connection`] with the built-in
/// handlers and a declared one, then a stop, run twice: as the blocking
/// runtime reads (each delivery whole, into its own buffer) and as the
/// io_uring runtime does (input-chosen pieces, large frames received
/// directly, wait-all receives posted and collected). Both runs must write
/// the same bytes on every connection and end the same way.
pub fn session(data: &[u8]) {
    let program = SessionProgram::parse(data);
    let mut outcomes = [true, false].map(|split| {
        let mut run = SessionRun::new(&program, split);
        for op in &program.ops {
            run.step(op);
        }
        run.finish()
    });
    let [split, whole] = &mut outcomes;
    if split != whole {
        let a: Vec<_> = split.segments.iter().map(|s| &s.output).collect();
        let b: Vec<_> = whole.segments.iter().map(|s| &s.output).collect();
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        let frames = first.map(|i| {
            let a = decode_all(a[i], "split");
            let b = decode_all(b[i], "whole");
            let at = a.iter().zip(&b).position(|(x, y)| x != y);
            (
                at,
                at.and_then(|j| a.get(j).cloned()),
                at.and_then(|j| b.get(j).cloned()),
            )
        });
        panic!(
            "reads split differently gave a different session: connections {} and {}, \
             first differing connection {first:?}, frame (index, split, whole) {frames:?}; \
             split ended {:?}, whole {:?}",
            a.len(),
            b.len(),
            split.segments.iter().map(|s| &s.end).collect::<Vec<_>>(),
            whole.segments.iter().map(|s| &s.end).collect::<Vec<_>>(),
        );
    }
}
