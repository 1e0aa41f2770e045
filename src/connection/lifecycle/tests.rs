//! Each lifecycle rule of [`Connection`], once, without sockets: a fake
//! runtime carries out the actions against the sans-IO manager, and time is
//! `t0 + Duration`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::*;
use crate::connection::LINGER;
use crate::handlers::HandlerRegistry;
use crate::manager::{ManagerConfig, ManagerEvent, ManagerMachine};
use crate::runtime::ReconnectPolicy;
use crate::session::SessionConfig;
use crate::stats::AgentStats;

const HANDSHAKE: Duration = Duration::from_secs(10);
const CONNECT: Duration = Duration::from_secs(5);
const DRAIN: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(4);

fn plan(token: Option<&str>) -> Arc<AgentPlan> {
    Arc::new(AgentPlan {
        endpoint: "tcp://127.0.0.1:7000".parse().unwrap(),
        sessions: 1,
        threads: 1,
        session: SessionConfig {
            worker_id: "lifecycle-test".into(),
            runtime: "uring",
            max_body: 16 * 1024 * 1024,
            max_in_flight: 8,
            token: token.map(Into::into),
            handshake_timeout: HANDSHAKE,
        },
        handlers: {
            let mut handlers = HandlerRegistry::with_builtins();
            handlers.declare("upper", 0).unwrap();
            handlers
        },
        reconnect: ReconnectPolicy {
            min: BACKOFF_MIN,
            max: BACKOFF_MAX,
            stable_after: Duration::from_secs(10),
        },
        drain_timeout: DRAIN,
        connect_timeout: CONNECT,
        tcp: Default::default(),
        tls: None,
        loop_balance: Default::default(),
    })
}

/// A connection, the manager at the other end, and what the fake runtime
/// did with the connection's actions.
struct Rig {
    conn: Connection,
    manager: ManagerMachine,
    t0: Instant,
    /// Bytes handed out by `Action::Send` and not yet reported sent.
    in_flight_send: Option<Vec<u8>>,
    shut_down: bool,
    close_asked: bool,
    stopped: bool,
    dial_asked: bool,
    /// What the manager made of the bytes it received.
    seen: Vec<ManagerEvent>,
    /// Jobs handed out, with the generation they belong to.
    jobs: Vec<(u32, crate::handlers::Job)>,
}

impl Rig {
    fn new(manager: ManagerConfig, token: Option<&str>) -> Rig {
        let t0 = Instant::now();
        let agent = Arc::new(AgentStats::new("lifecycle-test".into(), "uring", 1));
        Rig {
            conn: Connection::with_rng(0, plan(token), agent, t0, SmallRng::seed_from_u64(7)),
            manager: ManagerMachine::new(manager),
            t0,
            in_flight_send: None,
            shut_down: false,
            close_asked: false,
            stopped: false,
            dial_asked: false,
            seen: Vec::new(),
            jobs: Vec::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Poll until `Wait`, recording the actions; a send stays outstanding
    /// until `deliver`.
    fn poll(&mut self, now: Instant) -> Vec<&'static str> {
        let mut seen = Vec::new();
        for _ in 0..32 {
            match self.conn.poll(now) {
                Action::Wait => return seen,
                Action::Dial => {
                    self.dial_asked = true;
                    seen.push("dial");
                    return seen; // the runtime answers with an event
                }
                Action::Send(bytes) => {
                    assert!(self.in_flight_send.is_none(), "two sends outstanding");
                    self.in_flight_send = Some(bytes);
                    seen.push("send");
                }
                Action::Collect => seen.push("collect"),
                Action::Run(job) => {
                    self.jobs.push((self.conn.generation(), job));
                    seen.push("run");
                }
                Action::ShutdownWrite => {
                    self.shut_down = true;
                    seen.push("shutdown");
                }
                Action::Close => {
                    self.close_asked = true;
                    seen.push("close");
                    return seen;
                }
                Action::Stop => {
                    self.stopped = true;
                    seen.push("stop");
                    return seen;
                }
            }
        }
        panic!("the connection kept asking for actions: {seen:?}");
    }

    /// Dial and connect at `now`.
    fn connect(&mut self, now: Instant) {
        assert_eq!(self.poll(now), ["dial"]);
        self.conn.on_dialling(now);
        self.conn.on_connected(now);
    }

    /// The outstanding send reaches the manager; returns whether there was one.
    fn deliver(&mut self, now: Instant) -> bool {
        let Some(bytes) = self.in_flight_send.take() else {
            return false;
        };
        self.manager.handle_input(&bytes);
        while let Some(event) = self.manager.poll_event() {
            self.seen.push(event);
        }
        self.conn.on_sent(bytes);
        self.poll(now);
        true
    }

    /// What the manager queued reaches the connection.
    fn answer(&mut self, now: Instant) {
        let bytes = self.manager.take_output(Vec::new());
        if !bytes.is_empty() {
            assert_ne!(self.conn.receive(), Receive::Off, "bytes while not reading");
            self.conn.on_input(&bytes, now);
        }
        self.poll(now);
    }

    /// Exchange until neither side has anything to say.
    fn settle(&mut self, now: Instant) {
        self.poll(now);
        for _ in 0..16 {
            let sent = self.deliver(now);
            let answered = !self.manager.pending_output().is_empty();
            self.answer(now);
            if !sent && !answered {
                return;
            }
        }
    }

    fn events(&mut self) -> Vec<ManagerEvent> {
        std::mem::take(&mut self.seen)
    }

    /// The runtime closed the socket.
    fn closed(&mut self, now: Instant) -> Option<String> {
        assert!(self.close_asked, "closed without being asked");
        self.close_asked = false;
        self.in_flight_send = None;
        self.conn.on_closed(now)
    }
}

fn welcomed(heartbeat_ms: u32) -> Rig {
    let mut rig = Rig::new(
        ManagerConfig {
            heartbeat_ms,
            ..ManagerConfig::default()
        },
        None,
    );
    let t0 = rig.t0;
    rig.connect(t0);
    rig.settle(t0);
    assert!(
        matches!(rig.events().first(), Some(ManagerEvent::Hello(_))),
        "the manager saw HELLO"
    );
    assert!(rig.conn.session().unwrap().welcomed_at().is_some());
    rig
}

#[test]
fn a_connection_dials_at_once_handshakes_and_answers_a_task() {
    let mut rig = welcomed(0);
    let t = rig.at(1);
    assert_eq!(rig.conn.receive(), Receive::Shared);
    rig.manager.send_task(5, "echo", b"abc", false).unwrap();
    rig.answer(t);
    assert!(rig.deliver(t));
    assert_eq!(
        rig.events(),
        [ManagerEvent::Result {
            id: 5,
            failed: false,
            body: b"abc".to_vec()
        }]
    );
}

#[test]
fn a_failed_dial_backs_off_with_jitter_below_the_growing_cap() {
    let mut rig = Rig::new(ManagerConfig::default(), None);
    let mut now = rig.t0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        assert_eq!(rig.poll(now), ["dial"]);
        rig.conn
            .on_dial_failed("cannot reach manager: refused".into(), now);
        let retry_at = rig.conn.poll_timeout().expect("a retry is due");
        let delay = retry_at - now;
        if delay > Duration::ZERO {
            let just_before = retry_at - Duration::from_millis(1);
            assert_eq!(
                rig.poll(just_before),
                Vec::<&str>::new(),
                "no dial before the retry"
            );
        }
        delays.push(delay);
        now = retry_at;
    }
    assert!(delays.iter().all(|d| *d <= BACKOFF_MAX), "{delays:?}");
    let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
    assert!(distinct.len() > 4, "jittered: {delays:?}");
    assert!(
        delays[5..].iter().any(|d| *d > BACKOFF_MIN * 2),
        "the cap grows: {delays:?}"
    );
}

#[test]
fn a_dial_that_does_not_connect_in_time_is_closed_and_retried() {
    let mut rig = Rig::new(ManagerConfig::default(), None);
    let t0 = rig.t0;
    assert_eq!(rig.poll(t0), ["dial"]);
    rig.conn.on_dialling(t0);
    assert_eq!(rig.conn.poll_timeout(), Some(t0 + CONNECT));
    assert!(rig.poll(t0 + CONNECT - Duration::from_millis(1)).is_empty());
    assert_eq!(rig.poll(t0 + CONNECT), ["close"]);
    // A connect completing after the deadline starts nothing.
    rig.conn.on_connected(t0 + CONNECT);
    assert!(rig.conn.session().is_none());
    assert_eq!(rig.closed(t0 + CONNECT), None);
    let last = rig.conn.stats().snapshot().last_error.unwrap();
    assert!(last.contains("connect timed out"), "{last}");
    assert!(rig.conn.poll_timeout().unwrap() > t0 + CONNECT - Duration::from_millis(1));
}

#[test]
fn a_manager_that_never_welcomes_is_left_after_the_handshake_timeout() {
    let mut rig = Rig::new(ManagerConfig::default(), None);
    let t0 = rig.t0;
    rig.connect(t0);
    assert_eq!(rig.poll(t0), ["send"], "HELLO");
    rig.deliver(t0);
    assert_eq!(rig.conn.poll_timeout(), Some(t0 + HANDSHAKE));
    let at = t0 + HANDSHAKE;
    let actions = rig.poll(at);
    assert_eq!(actions.last(), Some(&"close"), "{actions:?}");
    assert_eq!(rig.closed(at), None, "a timeout is no refusal: redial");
    assert!(!rig.conn.is_stopped());
}

#[test]
fn a_silent_manager_is_pinged_then_presumed_gone_after_three_heartbeats() {
    let mut rig = welcomed(100);
    let t0 = rig.t0;
    // Nothing sent for a heartbeat: a PING.
    assert_eq!(rig.poll(rig.at(100)), ["send"]);
    rig.deliver(rig.at(100));
    assert!(
        matches!(rig.events()[..], [ManagerEvent::Ping { .. }]),
        "a PING after a heartbeat of sending nothing"
    );
    // Nothing received for three heartbeats: the manager is gone.
    let mut closed = false;
    for ms in (100..=400).step_by(50) {
        let now = t0 + Duration::from_millis(ms);
        let actions = rig.poll(now);
        rig.deliver(now);
        if actions.contains(&"close") {
            assert!(ms >= 300, "closed at {ms} ms");
            closed = true;
            break;
        }
    }
    assert!(closed, "the silent manager was never given up on");
}

#[test]
fn a_deadline_during_a_wait_all_receive_collects_it_first() {
    let mut rig = welcomed(100);
    let t = rig.at(10);
    // A large frame under way: its rest is one wait-all receive.
    let payload = vec![7u8; 256 * 1024];
    rig.manager.send_task(1, "echo", &payload, false).unwrap();
    let bytes = rig.manager.take_output(Vec::new());
    rig.conn.on_input(&bytes[..1024], t);
    let Receive::Direct { len, wait_all } = rig.conn.receive() else {
        panic!(
            "a large frame is received directly: {:?}",
            rig.conn.receive()
        );
    };
    assert!(wait_all);
    assert_eq!(len, bytes.len() - 1024);
    rig.conn.recv_space(len, wait_all).expect("connected");
    let due = rig.at(100);
    assert_eq!(rig.poll(due), ["collect"], "collected before the heartbeat");
    assert!(rig.poll(due).is_empty(), "collected once");
    let space = rig.conn.recv_space(len, false).unwrap();
    space[..4096].copy_from_slice(&bytes[1024..1024 + 4096]);
    rig.conn.on_received(4096, due);
    assert_eq!(
        rig.poll(due),
        ["send"],
        "the heartbeat's PING, after the bytes"
    );
}

#[test]
fn a_stop_drains_finishes_the_task_writes_goodbye_and_lingers_to_eof() {
    let mut rig = welcomed(0);
    rig.manager
        .send_task(9, "sleep", &50u32.to_be_bytes(), false)
        .unwrap();
    rig.answer(rig.at(0));
    rig.conn.request_stop(rig.at(1));
    rig.settle(rig.at(1));
    assert_eq!(rig.events(), [ManagerEvent::Drain]);
    rig.settle(rig.at(60));
    let events = rig.events();
    assert!(
        matches!(
            &events[..],
            [
                ManagerEvent::Result {
                    id: 9,
                    failed: false,
                    ..
                },
                ManagerEvent::Goodbye { .. }
            ]
        ),
        "{events:?}"
    );
    assert!(rig.shut_down, "half-closed after GOODBYE");
    assert_eq!(rig.conn.receive(), Receive::Shared, "reads to EOF");
    rig.conn.on_eof(rig.at(61));
    assert_eq!(rig.poll(rig.at(61)), ["close"]);
    assert_eq!(rig.closed(rig.at(61)), None);
    assert_eq!(rig.poll(rig.at(61)), ["stop"]);
    assert!(rig.conn.unfinished().is_clean());
}

#[test]
fn a_drain_past_its_deadline_closes_and_counts_the_abandoned_task() {
    let mut rig = welcomed(0);
    rig.manager
        .send_task(3, "sleep", &60_000u32.to_be_bytes(), false)
        .unwrap();
    rig.answer(rig.at(0));
    let stop = rig.at(1);
    rig.conn.request_stop(stop);
    rig.settle(stop);
    assert_eq!(rig.conn.poll_timeout(), Some(stop + DRAIN));
    assert!(rig.poll(stop + DRAIN - Duration::from_millis(1)).is_empty());
    assert_eq!(rig.poll(stop + DRAIN), ["close"]);
    rig.closed(stop + DRAIN);
    assert_eq!(rig.poll(stop + DRAIN), ["stop"]);
    assert_eq!(rig.conn.unfinished().abandoned_tasks, 1);
}

#[test]
fn a_manager_that_never_sends_eof_is_left_after_the_linger() {
    let mut rig = welcomed(0);
    let stop = rig.at(0);
    rig.conn.request_stop(stop);
    rig.settle(stop);
    let events = rig.events();
    assert!(
        matches!(
            &events[..],
            [ManagerEvent::Drain, ManagerEvent::Goodbye { .. }]
        ),
        "{events:?}"
    );
    // GOODBYE is written: half-close, then wait for the manager's EOF.
    assert!(rig.shut_down);
    let end = stop + LINGER;
    assert_eq!(rig.conn.poll_timeout(), Some(end));
    assert!(rig.poll(end - Duration::from_millis(1)).is_empty());
    assert_eq!(rig.poll(end), ["close"]);
    assert_eq!(rig.closed(end), None);
    assert_eq!(rig.poll(end), ["stop"]);
    assert!(rig.conn.unfinished().is_clean());
}

#[test]
fn last_frames_the_manager_does_not_read_are_given_up_after_the_linger() {
    let mut rig = welcomed(0);
    rig.conn.request_stop(rig.at(0));
    rig.poll(rig.at(0));
    // DRAIN is written, then GOODBYE is handed out and never taken.
    assert!(rig.deliver(rig.at(0)));
    assert!(rig.in_flight_send.is_some(), "GOODBYE handed out");
    let end = rig.at(0) + LINGER;
    assert!(rig.poll(end - Duration::from_millis(1)).is_empty());
    assert_eq!(rig.poll(end), ["close"]);
    rig.closed(end);
    let last = rig.conn.stats().snapshot().last_error.unwrap_or_default();
    assert!(last.contains("did not read the last frames"), "{last}");
}

#[test]
fn a_refused_handshake_stops_the_session_with_one_line() {
    let mut rig = Rig::new(
        ManagerConfig {
            token: Some("right".into()),
            ..ManagerConfig::default()
        },
        Some("wrong"),
    );
    let t0 = rig.t0;
    rig.connect(t0);
    rig.settle(t0);
    assert!(rig.close_asked, "the refusal closes the connection");
    let line = rig.closed(t0).expect("a refusal stops the agent");
    assert!(line.contains("refused session 0"), "{line}");
    assert!(line.contains("unauthorized"), "{line}");
    assert_eq!(rig.poll(t0), ["stop"]);
}

#[test]
fn a_stop_while_idle_or_dialling_ends_without_a_session() {
    let mut idle = Rig::new(ManagerConfig::default(), None);
    let t0 = idle.t0;
    idle.conn.on_dial_failed("refused".into(), t0);
    idle.conn.request_stop(t0);
    assert_eq!(idle.poll(t0), ["stop"]);

    let mut dialling = Rig::new(ManagerConfig::default(), None);
    let t0 = dialling.t0;
    assert_eq!(dialling.poll(t0), ["dial"]);
    dialling.conn.on_dialling(t0);
    dialling.conn.request_stop(t0);
    assert_eq!(dialling.poll(t0), ["close"]);
    assert_eq!(dialling.closed(t0), None);
    assert_eq!(dialling.poll(t0), ["stop"]);
}

#[test]
fn a_broken_socket_closes_and_redials_after_back_off() {
    let mut rig = welcomed(0);
    let t = rig.at(5);
    rig.conn
        .on_io_error("connection lost: read failed: reset".into());
    assert_eq!(rig.conn.receive(), Receive::Off);
    assert_eq!(rig.poll(t), ["close"]);
    assert_eq!(rig.closed(t), None);
    let retry = rig.conn.poll_timeout().unwrap();
    assert!(retry >= t && retry <= t + BACKOFF_MAX);
    assert_eq!(rig.poll(retry), ["dial"]);
}

#[test]
fn a_job_is_handed_out_and_only_its_own_connection_takes_the_answer() {
    let mut rig = welcomed(0);
    let t = rig.at(1);
    rig.manager.send_task(4, "upper", b"abc", false).unwrap();
    rig.answer(t);
    let (generation, job) = rig.jobs.pop().expect("a job");
    assert_eq!(
        (job.handler, job.task, job.payload.as_slice()),
        (0, 4, &b"abc"[..])
    );
    // An answer naming another connection is dropped.
    let outcome = crate::exec::Outcome::Ok(b"ABC".to_vec());
    rig.conn
        .on_job_done(generation.wrapping_add(1), 4, outcome.clone(), t);
    assert!(rig.poll(t).is_empty(), "nothing to send");
    rig.conn.on_job_done(generation, 4, outcome, t);
    rig.settle(t);
    assert_eq!(
        rig.events(),
        [ManagerEvent::Result {
            id: 4,
            failed: false,
            body: b"ABC".to_vec()
        }]
    );
}
