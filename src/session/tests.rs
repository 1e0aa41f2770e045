//! Tests of [`WorkerSession`]: the machine plus the built-in handlers, delayed
//! results, stats and the summary line. Sans-IO: bytes in, frames out, time
//! passed in as `base + Duration`.

use super::runner::same_name;
use super::*;
use crate::handlers::{Job, Reply, TaskFailure};
use crate::protocol::frame::{
    encode_frame, FrameBuffer, FrameKind, FLAG_ACK_REQUESTED, FLAG_FAILED, HEADER_LEN,
};
use crate::protocol::machine::encode_task_body;
use crate::protocol::{DrainOrigin, ErrorBody, GoodbyeBody};
use crate::runtime::ByteCounters;
use crate::stats::AgentStats;

/// A decoded output frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    kind: FrameKind,
    flags: u8,
    id: u64,
    body: Vec<u8>,
}

fn frames(bytes: &[u8]) -> Vec<Out> {
    let mut buffer = FrameBuffer::new(u32::MAX);
    buffer.extend(bytes);
    let mut out = Vec::new();
    while let Some(frame) = buffer
        .next_frame()
        .expect("the worker wrote a malformed frame")
    {
        out.push(Out {
            kind: frame.header.kind,
            flags: frame.header.flags,
            id: frame.header.id,
            body: frame.body.to_vec(),
        });
    }
    assert_eq!(buffer.buffered(), 0, "the worker wrote a partial frame");
    out
}

fn take(s: &mut WorkerSession) -> Vec<Out> {
    frames(&s.take_output(Vec::new()))
}

fn kinds(out: &[Out]) -> Vec<FrameKind> {
    out.iter().map(|f| f.kind).collect()
}

fn error_body(frame: &Out) -> ErrorBody {
    serde_json::from_slice(&frame.body).expect("body is JSON {code, message}")
}

fn frame(kind: FrameKind, flags: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, flags, id, body);
    out
}

fn welcome(max_body: u32, heartbeat_ms: u32) -> Vec<u8> {
    let body = serde_json::to_vec(&serde_json::json!({
        "protocol": 1,
        "manager": "mgr-test",
        "max_body": max_body,
        "heartbeat_ms": heartbeat_ms,
    }))
    .unwrap();
    frame(FrameKind::Welcome, 0, 0, &body)
}

fn task_frame(id: u64, flags: u8, handler: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_task_body(&mut body, handler, payload);
    frame(FrameKind::Task, flags, id, &body)
}

fn task(id: u64, handler: &str, payload: &[u8]) -> Vec<u8> {
    task_frame(id, 0, handler, payload)
}

fn sleep_ms(ms: u32) -> [u8; 4] {
    ms.to_be_bytes()
}

fn session_config(max_in_flight: u32) -> SessionConfig {
    SessionConfig {
        worker_id: "worker-under-test".to_owned(),
        runtime: "blocking",
        max_body: 1 << 20,
        max_in_flight,
        token: None,
        handshake_timeout: Duration::from_secs(10),
    }
}

/// A session of index `index` whose handshake completed at the returned
/// instant; HELLO has been taken from the output.
fn welcomed_session(
    index: u32,
    max_in_flight: u32,
    peer_max_body: u32,
) -> (WorkerSession, Arc<SessionStats>, Instant) {
    let stats = Arc::new(SessionStats::new(index));
    let t0 = Instant::now();
    let mut s = WorkerSession::new(
        index,
        &session_config(max_in_flight),
        HandlerRegistry::with_builtins(),
        stats.clone(),
        t0,
    );
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Hello]);
    s.on_input(&welcome(peer_max_body, 0), t0);
    assert_eq!(s.welcomed_at(), Some(t0));
    assert_eq!(s.phase(), Phase::Active);
    assert_eq!(stats.state(), SessionState::Connected);
    (s, stats, t0)
}

/// Send one TASK and return the RESULT the session answered with at once.
fn run_task(s: &mut WorkerSession, now: Instant, id: u64, handler: &str, payload: &[u8]) -> Out {
    s.on_input(&task(id, handler, payload), now);
    let out = take(s);
    assert_eq!(kinds(&out), [FrameKind::Result], "frames: {out:?}");
    assert_eq!(out[0].id, id);
    out.into_iter().next().unwrap()
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[test]
fn hello_carries_the_session_index_and_every_builtin_handler() {
    let stats = Arc::new(SessionStats::new(2));
    let t0 = Instant::now();
    let mut s = WorkerSession::new(
        2,
        &session_config(16),
        HandlerRegistry::with_builtins(),
        stats.clone(),
        t0,
    );
    assert_eq!(stats.state(), SessionState::Handshaking);
    assert_eq!(s.index(), 2);
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Hello]);
    let hello: Hello = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(hello.protocol, 1);
    assert_eq!(hello.worker, "worker-under-test");
    assert_eq!(hello.session, 2);
    assert_eq!(hello.runtime, "blocking");
    assert_eq!(hello.max_body, 1 << 20);
    assert_eq!(hello.max_in_flight, 16);
    assert_eq!(hello.token, None);
    assert_eq!(
        hello.handlers,
        ["crc32c", "echo", "sha256", "sink", "sleep"]
    );
    assert_eq!(
        s.poll_timeout(),
        Some(t0 + Duration::from_secs(10)),
        "the handshake deadline"
    );
}

// ---------------------------------------------------------------------------
// Built-in handlers through the session
// ---------------------------------------------------------------------------

#[test]
fn echo_result_is_the_payload() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 1, "echo", b"hello, manager");
    assert_eq!(result.flags, 0);
    assert_eq!(result.body, b"hello, manager");
    let result = run_task(&mut s, t0, 2, "echo", b"");
    assert_eq!(result.flags, 0);
    assert!(result.body.is_empty());
}

#[test]
fn crc32c_result_is_the_castagnoli_check_value_big_endian() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 7, "crc32c", b"123456789");
    assert_eq!(result.flags, 0);
    assert_eq!(result.body, [0xE3, 0x06, 0x92, 0x83]);
}

#[test]
fn sha256_result_is_the_fips_digest_of_abc() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 8, "sha256", b"abc");
    assert_eq!(result.flags, 0);
    let hex: String = result.body.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn sink_result_is_empty() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 3, "sink", b"swallowed");
    assert_eq!(result.flags, 0);
    assert!(result.body.is_empty());
}

#[test]
fn unknown_handler_fails_with_unknown_handler_and_the_connection_stays_up() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 4, "no-such-handler", b"x");
    assert_eq!(result.flags, FLAG_FAILED);
    let body = error_body(&result);
    assert_eq!(body.code, "unknown_handler");
    assert!(body.message.contains("no-such-handler"), "{}", body.message);
    assert_eq!(s.closed(), None);
    assert_eq!(s.phase(), Phase::Active);
    // The next task still runs.
    assert_eq!(run_task(&mut s, t0, 5, "echo", b"ok").body, b"ok");
}

#[test]
fn sleep_result_waits_until_its_due_time_while_later_tasks_are_answered_at_once() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let ms = Duration::from_millis;
    let t1 = t0 + ms(10);
    s.on_input(
        &task_frame(1, FLAG_ACK_REQUESTED, "sleep", &sleep_ms(500)),
        t1,
    );
    let out = take(&mut s);
    assert_eq!(
        kinds(&out),
        [FrameKind::Ack],
        "only the ACK before the delay"
    );
    assert_eq!(out[0].id, 1);
    assert_eq!(s.in_flight(), 1);
    assert_eq!(s.poll_timeout(), Some(t1 + ms(500)));

    // An echo sent after the sleep is answered at once.
    let echo = run_task(&mut s, t0 + ms(20), 2, "echo", b"quick");
    assert_eq!(echo.body, b"quick");
    assert_eq!(s.poll_timeout(), Some(t1 + ms(500)));

    s.handle_timeout(t1 + ms(499));
    assert!(!s.has_output(), "the sleep's RESULT is not due yet");
    assert_eq!(s.in_flight(), 1);

    s.handle_timeout(t1 + ms(500));
    let out = take(&mut s);
    assert_eq!(
        out,
        [Out {
            kind: FrameKind::Result,
            flags: 0,
            id: 1,
            body: Vec::new(),
        }]
    );
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.poll_timeout(), None, "no heartbeat and nothing delayed");
}

#[test]
fn delayed_results_come_out_in_due_order() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let ms = Duration::from_millis;
    let mut input = task(1, "sleep", &sleep_ms(300));
    input.extend(task(2, "sleep", &sleep_ms(100)));
    input.extend(task(3, "sleep", &sleep_ms(200)));
    s.on_input(&input, t0);
    assert!(!s.has_output());
    assert_eq!(s.poll_timeout(), Some(t0 + ms(100)));
    s.handle_timeout(t0 + ms(250));
    let ids: Vec<u64> = take(&mut s).iter().map(|f| f.id).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(s.poll_timeout(), Some(t0 + ms(300)));
    s.handle_timeout(t0 + ms(300));
    let ids: Vec<u64> = take(&mut s).iter().map(|f| f.id).collect();
    assert_eq!(ids, [1]);
}

#[test]
fn sleep_with_three_byte_payload_fails_with_bad_payload() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 6, "sleep", &[0, 1, 2]);
    assert_eq!(result.flags, FLAG_FAILED);
    assert_eq!(error_body(&result).code, "bad_payload");
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.poll_timeout(), None, "nothing was scheduled");
}

#[test]
fn sleep_over_the_limit_fails_with_bad_payload() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let result = run_task(&mut s, t0, 6, "sleep", &sleep_ms(60_001));
    assert_eq!(result.flags, FLAG_FAILED);
    assert_eq!(error_body(&result).code, "bad_payload");
}

#[test]
fn result_over_the_manager_max_body_is_result_too_large_and_counts_as_failed() {
    let (mut s, stats, t0) = welcomed_session(0, 8, 64);
    let fits = run_task(&mut s, t0, 1, "echo", &[1u8; 64]);
    assert_eq!(fits.flags, 0);
    assert_eq!(fits.body, [1u8; 64]);
    let too_big = run_task(&mut s, t0, 2, "echo", &[1u8; 65]);
    assert_eq!(too_big.flags, FLAG_FAILED);
    assert_eq!(error_body(&too_big).code, "result_too_large");
    assert_eq!(stats.tasks_ok(), 1);
    assert_eq!(stats.tasks_failed(), 1);
    assert_eq!(s.closed(), None);
}

// ---------------------------------------------------------------------------
// Stats, GOODBYE and the summary line
// ---------------------------------------------------------------------------

#[test]
fn stats_track_tasks_ok_failed_and_in_flight() {
    let (mut s, stats, t0) = welcomed_session(0, 8, 1 << 20);
    let ms = Duration::from_millis;
    assert_eq!(
        (stats.tasks_ok(), stats.tasks_failed(), stats.in_flight()),
        (0, 0, 0)
    );

    run_task(&mut s, t0, 1, "echo", b"a");
    assert_eq!(
        (stats.tasks_ok(), stats.tasks_failed(), stats.in_flight()),
        (1, 0, 0)
    );

    run_task(&mut s, t0, 2, "nope", b"a");
    assert_eq!(
        (stats.tasks_ok(), stats.tasks_failed(), stats.in_flight()),
        (1, 1, 0)
    );

    run_task(&mut s, t0, 3, "sleep", &[9]);
    assert_eq!(
        (stats.tasks_ok(), stats.tasks_failed(), stats.in_flight()),
        (1, 2, 0)
    );

    let mut input = task(4, "sleep", &sleep_ms(50));
    input.extend(task(5, "sleep", &sleep_ms(80)));
    s.on_input(&input, t0);
    assert_eq!(stats.in_flight(), 2);
    assert_eq!(s.in_flight(), 2);

    s.handle_timeout(t0 + ms(50));
    assert_eq!(
        (stats.tasks_ok(), stats.tasks_failed(), stats.in_flight()),
        (2, 2, 1)
    );
    s.handle_timeout(t0 + ms(80));
    assert_eq!(
        (stats.tasks_ok(), stats.tasks_failed(), stats.in_flight()),
        (3, 2, 0)
    );
    assert_eq!(stats.tasks_done(), 5);
    assert_eq!(s.tasks_this_connection(), 5);
    // The three answered at once were taken by `run_task`; the sleeps remain.
    assert_eq!(result_count(&take(&mut s)), 2);
}

fn result_count(out: &[Out]) -> usize {
    out.iter().filter(|f| f.kind == FrameKind::Result).count()
}

#[test]
fn on_flushed_in_goodbye_due_writes_goodbye_with_the_stats_counters() {
    let (mut s, stats, t0, counters, agent) = counted_session(0);
    let mut sent = 0u64;
    let mut received = 0u64;
    // HELLO was written by the "runtime".
    let hello = s.take_output(Vec::new());
    counters.sent(hello.len());
    sent += hello.len() as u64;
    let w = welcome(1 << 20, 0);
    counters.received(w.len());
    received += w.len() as u64;
    s.on_input(&w, t0);
    let t = task(1, "echo", b"payload");
    counters.received(t.len());
    received += t.len() as u64;
    s.on_input(&t, t0);
    let result = s.take_output(Vec::new());
    counters.sent(result.len());
    sent += result.len() as u64;
    s.on_flushed(t0);
    assert!(!s.has_output(), "no GOODBYE while the session is active");

    s.start_drain(t0);
    assert_eq!(s.phase(), Phase::GoodbyeDue);
    // DRAIN is not written yet: GOODBYE must wait for it.
    s.on_flushed(t0);
    assert_eq!(kinds(&frames(s.pending_output())), [FrameKind::Drain]);
    assert_eq!(s.closed(), None);
    let drain = s.take_output(Vec::new());
    counters.sent(drain.len());
    sent += drain.len() as u64;

    s.on_flushed(t0);
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Goodbye]);
    let body: GoodbyeBody = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(
        body,
        GoodbyeBody {
            bytes_sent: sent,
            bytes_received: received,
        }
    );
    assert_eq!(stats.bytes_sent(), sent);
    assert_eq!(stats.bytes_received(), received);
    assert_eq!(agent.bytes_sent_total(), sent);
    assert_eq!(
        s.closed(),
        Some(&CloseReason::Goodbye {
            origin: DrainOrigin::Worker
        })
    );
    assert_eq!(s.phase(), Phase::Closed);
    assert_eq!(stats.last_error(), None, "a graceful close is not an error");
    s.on_flushed(t0);
    assert!(!s.has_output(), "GOODBYE is written once");
}

/// While draining with nothing in flight, TASKs split across reads are each
/// answered before GOODBYE is due: the first read holds the start of one,
/// the second its rest and two more whole ones.
#[test]
fn tasks_split_across_reads_while_draining_are_all_answered_before_goodbye() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    s.start_drain(t0);
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Drain]);
    let mut bytes = task(1, "echo", b"first");
    bytes.extend(task(2, "echo", b"second"));
    bytes.extend(task(3, "echo", b"third"));
    let split = 10;
    s.on_input(&bytes[..split], t0);
    assert_ne!(
        s.phase(),
        Phase::GoodbyeDue,
        "the rest of TASK 1 still arrives"
    );
    s.on_input(&bytes[split..], t0);
    let out = take(&mut s);
    assert_eq!(
        out.iter().map(|f| (f.kind, f.id)).collect::<Vec<_>>(),
        [
            (FrameKind::Result, 1),
            (FrameKind::Result, 2),
            (FrameKind::Result, 3)
        ]
    );
    assert!(out.iter().all(|f| error_body(f).code == "draining"));
    assert_eq!(s.phase(), Phase::GoodbyeDue);
}

/// A driver that counts reads on another thread may have counted bytes the
/// session has not seen when GOODBYE is written: GOODBYE reports what was
/// handed over.
#[test]
fn goodbye_reports_the_bytes_handed_over_when_the_driver_says_so() {
    let (mut s, _stats, t0, counters, _agent) = counted_session(0);
    let _ = s.take_output(Vec::new());
    let w = welcome(1 << 20, 0);
    counters.received(w.len());
    s.set_bytes_fed(w.len() as u64);
    s.on_input(&w, t0);
    s.start_drain(t0);
    let _ = s.take_output(Vec::new());
    // A chunk counted by the reader, not handed over yet.
    counters.received(1000);
    s.on_flushed(t0);
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Goodbye]);
    let body: GoodbyeBody = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(body.bytes_received, w.len() as u64);
}

#[test]
fn manager_drain_ends_with_goodbye_after_the_delayed_task() {
    let (mut s, stats, t0) = welcomed_session(0, 8, 1 << 20);
    let ms = Duration::from_millis;
    s.on_input(&task(1, "sleep", &sleep_ms(100)), t0);
    s.on_input(&frame(FrameKind::Drain, 0, 0, &[]), t0);
    assert_eq!(stats.state(), SessionState::Draining);
    assert_eq!(s.phase(), Phase::Draining(DrainOrigin::Manager));
    s.on_flushed(t0);
    assert!(!s.has_output(), "no GOODBYE with a task in flight");
    s.handle_timeout(t0 + ms(100));
    assert_eq!(s.phase(), Phase::GoodbyeDue);
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Result]);
    s.on_flushed(t0 + ms(100));
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Goodbye]);
    assert_eq!(
        s.closed(),
        Some(&CloseReason::Goodbye {
            origin: DrainOrigin::Manager
        })
    );
}

#[test]
fn non_graceful_close_is_recorded_as_last_error() {
    let (mut s, stats, t0) = welcomed_session(0, 8, 1 << 20);
    let body = ErrorBody::new("overloaded", "go away").to_json();
    s.on_input(&frame(FrameKind::Error, 0, 0, &body), t0);
    match s.closed() {
        Some(CloseReason::PeerError { code, .. }) => assert_eq!(code, "overloaded"),
        other => panic!("expected PeerError, got {other:?}"),
    }
    let last_error = stats.last_error().expect("last_error is set");
    assert!(last_error.contains("overloaded"), "{last_error}");
}

#[test]
fn summary_line_formats_the_byte_totals_and_task_count() {
    let (mut s, _stats, t0, counters, _agent) = counted_session(3);
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Hello]);
    s.on_input(&welcome(1 << 20, 0), t0);
    run_task(&mut s, t0, 1, "echo", b"a");
    run_task(&mut s, t0, 2, "nope", b"b");
    run_task(&mut s, t0, 3, "crc32c", b"c");
    counters.sent(1_299_227_000);
    counters.sent(607);
    counters.received(39_321_600);
    assert_eq!(
        s.summary_line(),
        "session 3 closed: sent 1.21 GiB (1299227607 B), received 37.5 MiB (39321600 B), 3 tasks"
    );
}

#[test]
fn summary_line_of_an_idle_session() {
    let (s, _stats, _t0, _counters, _agent) = counted_session(0);
    assert_eq!(
        s.summary_line(),
        "session 0 closed: sent 0 B (0 B), received 0 B (0 B), 0 tasks"
    );
}

/// A fresh session (HELLO still queued) with byte counters wired to its stats.
fn counted_session(
    index: u32,
) -> (
    WorkerSession,
    Arc<SessionStats>,
    Instant,
    ByteCounters,
    Arc<AgentStats>,
) {
    let agent = Arc::new(AgentStats::new(
        "worker-under-test".to_owned(),
        "blocking",
        index + 1,
    ));
    let stats = agent.sessions[index as usize].clone();
    let counters = ByteCounters::new(stats.clone());
    let t0 = Instant::now();
    let s = WorkerSession::new(
        index,
        &session_config(8),
        HandlerRegistry::with_builtins(),
        stats.clone(),
        t0,
    );
    (s, stats, t0, counters, agent)
}

// ---------------------------------------------------------------------------
// Ending a session with tasks still buffered
// ---------------------------------------------------------------------------

/// PROTOCOL.md "Worker stops": the worker "answers TASKs that still arrive
/// with RESULT FAILED draining, finishes every accepted task and writes its
/// RESULT, then sends GOODBYE"; and "The worker sends exactly one RESULT for
/// every TASK it read". Here a TASK arrives in the same read as a `sleep`
/// that fills the window (max_in_flight = 1); the worker then stops. When the
/// sleep finishes, the buffered TASK must still be answered (`draining`)
/// before GOODBYE.
#[test]
fn worker_stop_answers_a_task_read_behind_a_full_window_before_goodbye() {
    let (mut s, _stats, t0) = welcomed_session(0, 1, 1 << 20);
    let ms = Duration::from_millis;
    let mut input = task(1, "sleep", &sleep_ms(100));
    input.extend(task(2, "echo", b"late"));
    s.on_input(&input, t0);
    assert_eq!(s.in_flight(), 1);
    assert!(!s.wants_read());
    s.start_drain(t0);
    s.handle_timeout(t0 + ms(100));
    s.on_flushed(t0 + ms(100));
    let mut out = take(&mut s);
    s.on_flushed(t0 + ms(100));
    out.extend(take(&mut s));
    let answered: Vec<u64> = out
        .iter()
        .filter(|f| f.kind == FrameKind::Result)
        .map(|f| f.id)
        .collect();
    assert_eq!(
        answered,
        [1, 2],
        "task 2 was read but got no RESULT; frames: {:?}",
        kinds(&out)
    );
    let late = out
        .iter()
        .find(|f| f.kind == FrameKind::Result && f.id == 2)
        .unwrap();
    assert_eq!(late.flags, FLAG_FAILED);
    assert_eq!(error_body(late).code, "draining");
    assert_eq!(out.last().map(|f| f.kind), Some(FrameKind::Goodbye));
}

// ---------------------------------------------------------------------------
// Frames decoded where they lie in the input
// ---------------------------------------------------------------------------

/// A mixed stream: tasks of several handlers (one with ACK_REQUESTED, one
/// unknown, one with a 300-byte payload), a PING and a PONG.
fn mixed_stream() -> Vec<u8> {
    let mut stream = Vec::new();
    stream.extend(task(1, "echo", b"first"));
    stream.extend(task_frame(2, FLAG_ACK_REQUESTED, "crc32c", b"123456789"));
    stream.extend(frame(FrameKind::Ping, 0, 77, b""));
    stream.extend(task(3, "sha256", b"abc"));
    stream.extend(task(4, "nope", b"x"));
    stream.extend(frame(FrameKind::Pong, 0, 5, b""));
    stream.extend(task(5, "echo", &[0xa5; 300]));
    stream.extend(task(6, "sink", b"gone"));
    stream.extend(task(7, "echo", b""));
    stream
}

/// Feed `stream` to a fresh welcomed session in the pieces `cuts` makes of
/// it, returning every frame written and the in-flight count at the end.
fn feed_in_pieces(stream: &[u8], cuts: &[usize]) -> (Vec<Out>, usize) {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let mut from = 0;
    let mut out = Vec::new();
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        s.on_input(&stream[from..cut], t0);
        out.extend(take(&mut s));
        from = cut;
    }
    (out, s.in_flight())
}

#[test]
fn a_stream_split_at_every_byte_position_is_answered_the_same() {
    let stream = mixed_stream();
    let (whole, in_flight) = feed_in_pieces(&stream, &[]);
    assert_eq!(in_flight, 0);
    assert_eq!(
        kinds(&whole),
        [
            FrameKind::Result,
            FrameKind::Ack,
            FrameKind::Result,
            FrameKind::Pong,
            FrameKind::Result,
            FrameKind::Result,
            FrameKind::Result,
            FrameKind::Result,
            FrameKind::Result,
        ]
    );
    assert_eq!(whole[0].body, b"first");
    assert_eq!(whole[2].body, 0xE306_9283u32.to_be_bytes());
    assert_eq!(whole[3].id, 77);
    assert_eq!(error_body(&whole[5]).code, "unknown_handler");
    assert_eq!(whole[6].body, [0xa5; 300]);
    assert_eq!(whole[7].body, b"");
    assert_eq!(whole[8].body, b"");
    for cut in 0..=stream.len() {
        assert_eq!(
            feed_in_pieces(&stream, &[cut]),
            (whole.clone(), 0),
            "split at {cut}"
        );
    }
}

#[test]
fn a_stream_fed_one_byte_at_a_time_is_answered_the_same() {
    let stream = mixed_stream();
    let (whole, _) = feed_in_pieces(&stream, &[]);
    let cuts: Vec<usize> = (1..stream.len()).collect();
    assert_eq!(feed_in_pieces(&stream, &cuts), (whole, 0));
}

proptest::proptest! {
    #[test]
    fn any_split_of_a_stream_is_answered_the_same(
        cuts in proptest::collection::vec(proptest::sample::select((0..=mixed_stream().len()).collect::<Vec<_>>()), 0..12),
    ) {
        let stream = mixed_stream();
        let mut cuts = cuts;
        cuts.sort_unstable();
        let (whole, _) = feed_in_pieces(&stream, &[]);
        proptest::prop_assert_eq!(feed_in_pieces(&stream, &cuts), (whole, 0));
    }
}

/// Tasks behind a full window stay buffered (copied out of the input) and
/// are answered, in order, once the window opens; later input queues behind
/// them.
#[test]
fn tasks_behind_a_full_window_are_kept_and_answered_in_order() {
    let (mut s, _stats, t0) = welcomed_session(0, 1, 1 << 20);
    let ms = Duration::from_millis;
    let mut input = task(1, "sleep", &sleep_ms(50));
    input.extend(task(2, "echo", b"two"));
    input.extend(task(3, "echo", b"three"));
    // The start of task 4 arrives with them, its end later.
    let four = task(4, "echo", b"four");
    input.extend(&four[..9]);
    s.on_input(&input, t0);
    assert!(!s.has_output());
    assert_eq!(s.in_flight(), 1);
    s.on_input(&four[9..], t0);
    assert!(!s.has_output());
    s.handle_timeout(t0 + ms(50));
    let out = take(&mut s);
    let answered: Vec<(u64, Vec<u8>)> = out.iter().map(|f| (f.id, f.body.clone())).collect();
    assert_eq!(
        answered,
        [
            (1, b"".to_vec()),
            (2, b"two".to_vec()),
            (3, b"three".to_vec()),
            (4, b"four".to_vec()),
        ]
    );
    assert_eq!(s.in_flight(), 0);
    // Decoding in place resumes once the buffer is empty.
    assert_eq!(
        run_task(&mut s, t0 + ms(60), 5, "echo", b"five").body,
        b"five"
    );
}

/// A DRAIN followed in the same read by a TASK: the TASK is answered
/// `draining` before GOODBYE is due.
#[test]
fn a_task_in_the_same_read_after_drain_is_answered_draining_before_goodbye() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let mut input = frame(FrameKind::Drain, 0, 0, b"");
    input.extend(task(9, "echo", b"late"));
    s.on_input(&input, t0);
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Result]);
    assert_eq!(out[0].id, 9);
    assert_eq!(error_body(&out[0]).code, "draining");
    assert_eq!(s.phase(), Phase::GoodbyeDue);
}

/// The window (max_in_flight 2) fills with a sleep while a drain is under
/// way: the echo decoded in place right before a partial frame completes,
/// and GOODBYE waits for the sleep.
#[test]
fn worker_drain_with_tasks_decoded_in_place_waits_for_every_result() {
    let (mut s, _stats, t0) = welcomed_session(0, 2, 1 << 20);
    let ms = Duration::from_millis;
    let mut input = task(1, "sleep", &sleep_ms(10));
    input.extend(task(2, "echo", b"two"));
    let three = task(3, "echo", b"three");
    input.extend(&three[..3]);
    s.on_input(&input, t0);
    s.start_drain(t0);
    assert_eq!(
        s.phase(),
        Phase::Draining(crate::protocol::DrainOrigin::Worker)
    );
    s.on_input(&three[3..], t0);
    let out = take(&mut s);
    assert_eq!(
        out.iter().map(|f| (f.kind, f.id)).collect::<Vec<_>>(),
        [
            (FrameKind::Result, 2),
            (FrameKind::Drain, 0),
            (FrameKind::Result, 3)
        ]
    );
    assert_eq!(error_body(&out[2]).code, "draining");
    assert_eq!(
        s.phase(),
        Phase::Draining(crate::protocol::DrainOrigin::Worker)
    );
    s.handle_timeout(t0 + ms(10));
    assert_eq!(s.phase(), Phase::GoodbyeDue);
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Result]);
}

/// A malformed header in place is a protocol violation, as when buffered.
#[test]
fn a_bad_header_decoded_in_place_is_bad_frame() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let mut input = task(1, "echo", b"ok");
    let mut bad = frame(FrameKind::Ping, 0, 0, b"");
    bad[6] = 1; // reserved
    input.extend(bad);
    input.extend(task(2, "echo", b"never"));
    s.on_input(&input, t0);
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Result, FrameKind::Error]);
    assert_eq!(error_body(&out[1]).code, "bad_frame");
    assert!(s.closed().is_some());
}

// ---------------------------------------------------------------------------
// Handlers writing straight into the output buffer
// ---------------------------------------------------------------------------

#[test]
fn echo_results_are_written_byte_exact_behind_earlier_frames() {
    let (mut s, _stats, t0) = welcomed_session(0, 8, 1 << 20);
    let mut input = task_frame(0x0102_0304_0506_0708, FLAG_ACK_REQUESTED, "echo", b"hello");
    input.extend(task(9, "echo", b""));
    s.on_input(&input, t0);
    let mut want = Vec::new();
    want.extend([0, 0, 0, 12, 0x11, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    want.extend([0, 0, 0, 17, 0x12, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    want.extend(b"hello");
    want.extend([0, 0, 0, 12, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
    assert_eq!(s.take_output(Vec::new()), want);
}

/// Appends its payload, then fails when the payload starts with `!`, or
/// answers after 5 ms when it starts with `~`.
struct Appender;

impl crate::handlers::Handler for Appender {
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        out.extend_from_slice(payload);
        match payload.first() {
            Some(b'!') => Err(TaskFailure::handler_failed("refused")),
            Some(b'~') => Ok(Reply::After(Duration::from_millis(5))),
            _ => Ok(Reply::Ready),
        }
    }
}

fn session_with(
    name: &str,
    handler: impl crate::handlers::Handler,
) -> (WorkerSession, Arc<SessionStats>, Instant) {
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register(name, handler).unwrap();
    let stats = Arc::new(SessionStats::new(0));
    let t0 = Instant::now();
    let mut s = WorkerSession::new(0, &session_config(8), handlers, stats.clone(), t0);
    take(&mut s);
    s.on_input(&welcome(64, 0), t0);
    assert_eq!(s.phase(), Phase::Active);
    (s, stats, t0)
}

#[test]
fn what_an_appending_handler_wrote_before_failing_is_discarded() {
    let (mut s, stats, t0) = session_with("append", Appender);
    let mut input = task(1, "echo", b"before");
    input.extend(task(2, "append", b"!partial"));
    input.extend(task(3, "append", b"fine"));
    s.on_input(&input, t0);
    let out = take(&mut s);
    assert_eq!(
        out.iter().map(|f| (f.id, f.flags)).collect::<Vec<_>>(),
        [(1, 0), (2, FLAG_FAILED), (3, 0)]
    );
    assert_eq!(out[0].body, b"before");
    assert_eq!(error_body(&out[1]).code, "handler_failed");
    assert_eq!(out[2].body, b"fine");
    assert_eq!(stats.tasks_ok(), 2);
    assert_eq!(stats.tasks_failed(), 1);
}

/// Appends its payload, then panics when the payload starts with `!`.
struct Panicker;

impl crate::handlers::Handler for Panicker {
    fn call(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
        out.extend_from_slice(payload);
        if payload.first() == Some(&b'!') {
            panic!("bug in the handler");
        }
        Ok(Reply::Ready)
    }
}

#[test]
fn a_panicking_handler_fails_its_task_and_the_session_carries_on() {
    {
        let (mut s, stats, t0) = session_with("buggy", Panicker);
        let mut input = task(1, "buggy", b"!partial");
        input.extend(task(2, "buggy", b"fine"));
        input.extend(task(3, "echo", b"after"));
        s.on_input(&input, t0);
        let out = take(&mut s);
        assert_eq!(
            out.iter().map(|f| (f.id, f.flags)).collect::<Vec<_>>(),
            [(1, FLAG_FAILED), (2, 0), (3, 0)]
        );
        let failure = error_body(&out[0]);
        assert_eq!(failure.code, "handler_failed");
        // Shortened to the manager's max_body of 64.
        assert!(
            failure.message.starts_with("the handler panicked: b"),
            "{}",
            failure.message
        );
        assert_eq!(out[1].body, b"fine");
        assert_eq!(out[2].body, b"after");
        assert_eq!(stats.tasks_failed(), 1);
        assert_eq!(s.phase(), Phase::Active);
    }
}

#[test]
fn an_appending_handler_answering_later_keeps_its_output_for_then() {
    let (mut s, _stats, t0) = session_with("append", Appender);
    let mut input = task(1, "append", b"~later");
    input.extend(task(2, "append", b"now"));
    s.on_input(&input, t0);
    let out = take(&mut s);
    assert_eq!(out.iter().map(|f| f.id).collect::<Vec<_>>(), [2]);
    assert_eq!(out[0].body, b"now");
    s.handle_timeout(t0 + Duration::from_millis(5));
    let out = take(&mut s);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].id, out[0].body.as_slice()), (1, &b"~later"[..]));
}

#[test]
fn an_appending_handler_over_the_manager_max_body_is_result_too_large() {
    let (mut s, stats, t0) = session_with("append", Appender);
    let mut input = task(1, "append", &[b'x'; 65]);
    input.extend(task(2, "append", &[b'y'; 64]));
    s.on_input(&input, t0);
    let out = take(&mut s);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].flags, FLAG_FAILED);
    assert_eq!(error_body(&out[0]).code, "result_too_large");
    assert_eq!((out[1].flags, out[1].body.len()), (0, 64));
    assert_eq!(stats.tasks_failed(), 1);
}

#[test]
fn a_closure_handler_appends_in_place_behind_earlier_frames() {
    let (mut s, _stats, t0) = session_with("fresh", |payload: &[u8], out: &mut Vec<u8>| {
        // The ACK and RESULT of task 1 and this task's RESULT header.
        assert_eq!(out.len(), 3 * HEADER_LEN + 5, "out on entry");
        out.resize(out.len() + payload.len(), b'z');
        Ok(Reply::Ready)
    });
    let mut input = task_frame(1, FLAG_ACK_REQUESTED, "echo", b"first");
    input.extend(task(2, "fresh", b"abc"));
    s.on_input(&input, t0);
    let out = take(&mut s);
    assert_eq!(out.iter().map(|f| f.id).collect::<Vec<_>>(), [1, 1, 2]);
    assert_eq!(out[2].body, b"zzz");
}

#[test]
fn names_close_to_the_last_handler_used_are_told_apart() {
    let (mut s, _stats, t0) = session_with("echo2", |payload: &[u8], out: &mut Vec<u8>| {
        out.extend(payload.iter().rev());
        Ok(Reply::Ready)
    });
    let mut input = Vec::new();
    for (id, name) in [
        (1, "echo"),
        (2, "ech"),
        (3, "echo2"),
        (4, "echo"),
        (5, "echoo"),
        (6, "echo2"),
    ] {
        input.extend(task(id, name, b"ab"));
    }
    s.on_input(&input, t0);
    let out = take(&mut s);
    let bodies: Vec<(u64, Vec<u8>)> = out
        .iter()
        .map(|f| match f.flags {
            0 => (f.id, f.body.clone()),
            _ => (f.id, error_body(f).code.into_bytes()),
        })
        .collect();
    assert_eq!(
        bodies,
        [
            (1, b"ab".to_vec()),
            (2, b"unknown_handler".to_vec()),
            (3, b"ba".to_vec()),
            (4, b"ab".to_vec()),
            (5, b"unknown_handler".to_vec()),
            (6, b"ba".to_vec()),
        ]
    );
}

#[test]
fn same_name_compares_every_byte_of_names_of_every_length() {
    let name: Vec<u8> = (0..64u8).map(|i| b'!' + i).collect();
    for len in 0..=64 {
        let a = &name[..len];
        assert!(same_name(a, a), "len {len}");
        assert!(!same_name(a, &name[..len.saturating_sub(1)]) || len == 0);
        for at in 0..len {
            let mut b = a.to_vec();
            b[at] ^= 0x40;
            assert!(!same_name(a, &b), "len {len}, byte {at} differs");
        }
    }
}

/// Every frame fed a byte at a time completes in the frame buffer, where an
/// appending handler reads its payload while writing the output.
#[test]
fn an_appending_handler_on_frames_completed_in_the_buffer() {
    let (mut s, stats, t0) = session_with("append", Appender);
    let mut input = task(1, "append", b"whole");
    input.extend(task(2, "append", b"!partial"));
    input.extend(task(3, "append", b"~later"));
    input.extend(task(4, "append", &[b'x'; 65]));
    input.extend(task(5, "echo", b"last"));
    for byte in input.chunks(1) {
        s.on_input(byte, t0);
    }
    s.handle_timeout(t0 + Duration::from_millis(5));
    let out = take(&mut s);
    let answered: Vec<(u64, u8, Vec<u8>)> = out
        .iter()
        .map(|f| match f.flags {
            0 => (f.id, 0, f.body.clone()),
            _ => (f.id, f.flags, error_body(f).code.into_bytes()),
        })
        .collect();
    assert_eq!(
        answered,
        [
            (1, 0, b"whole".to_vec()),
            (2, FLAG_FAILED, b"handler_failed".to_vec()),
            (4, FLAG_FAILED, b"result_too_large".to_vec()),
            (5, 0, b"last".to_vec()),
            (3, 0, b"~later".to_vec()),
        ]
    );
    assert_eq!((stats.tasks_ok(), stats.tasks_failed()), (3, 2));
}

#[test]
fn one_task_in_timing_sample_is_timed_the_first_included() {
    let mut runner = super::runner::TaskRunner::new(HandlerRegistry::with_builtins());
    let due: Vec<usize> = (0..4 * super::TIMING_SAMPLE as usize)
        .filter(|_| runner.timing_due())
        .collect();
    let every = super::TIMING_SAMPLE as usize;
    assert_eq!(due, [0, every, 2 * every, 3 * every]);
}

// ---------------------------------------------------------------------------
// Answers that come later: jobs of declared handlers
// ---------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn session_with_declared(max_in_flight: u32) -> (WorkerSession, Instant) {
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.declare("upper", 3).unwrap();
    handlers
        .register("defers", |_: &[u8], _: &mut Vec<u8>| Ok(Reply::Deferred))
        .unwrap();
    let t0 = Instant::now();
    let mut s = WorkerSession::new(
        0,
        &session_config(max_in_flight),
        handlers,
        Arc::new(SessionStats::with_handlers(0, 7)),
        t0,
    );
    let hello: Hello = serde_json::from_slice(&take(&mut s)[0].body).unwrap();
    assert!(hello.handlers.contains(&"upper".to_owned()), "advertised");
    s.on_input(&welcome(1 << 20, 0), t0);
    (s, t0)
}

#[test]
fn a_declared_handler_task_becomes_a_job_answered_when_it_is_done() {
    let (mut s, t0) = session_with_declared(4);
    s.on_input(
        &[task(1, "upper", b"abc"), task(2, "echo", b"now")].concat(),
        t0,
    );
    // The echo is answered at once; the declared handler's task waits.
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Result]);
    assert_eq!(out[0].id, 2);
    assert_eq!(
        s.take_job(),
        Some(Job {
            handler: 3,
            task: 1,
            payload: b"abc".to_vec()
        })
    );
    assert_eq!(s.take_job(), None);
    assert_eq!(s.in_flight(), 1, "still in flight until answered");
    s.job_done(1, crate::exec::Outcome::Ok(b"ABC".to_vec()), t0 + ms(5));
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Result]);
    assert_eq!((out[0].id, out[0].body.as_slice()), (1, &b"ABC"[..]));
    assert_eq!(s.in_flight(), 0);
    // A second answer for the same task is not a second RESULT.
    s.job_done(1, crate::exec::Outcome::Ok(b"again".to_vec()), t0 + ms(6));
    assert!(!s.has_output());
}

#[test]
fn a_failed_job_is_a_failed_result_and_a_drain_waits_for_jobs() {
    let (mut s, t0) = session_with_declared(4);
    s.on_input(&task(7, "upper", b"x"), t0);
    assert!(s.take_job().is_some());
    s.start_drain(t0);
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Drain]);
    s.on_flushed(t0);
    assert_ne!(s.phase(), Phase::GoodbyeDue, "the job is still running");
    s.job_done(
        7,
        crate::exec::Outcome::failed("timeout", "ran past 5s"),
        t0 + ms(10),
    );
    let out = take(&mut s);
    assert_eq!(kinds(&out), [FrameKind::Result]);
    assert_eq!(out[0].flags & FLAG_FAILED, FLAG_FAILED);
    let body = error_body(&out[0]);
    assert_eq!(
        (body.code.as_str(), body.message.as_str()),
        ("timeout", "ran past 5s")
    );
    s.on_flushed(t0 + ms(10));
    assert_eq!(kinds(&take(&mut s)), [FrameKind::Goodbye]);
}

#[test]
fn only_declared_handlers_may_defer() {
    let (mut s, t0) = session_with_declared(4);
    let result = run_task(&mut s, t0, 9, "defers", b"x");
    assert_eq!(result.flags & FLAG_FAILED, FLAG_FAILED);
    assert_eq!(error_body(&result).code, "handler_failed");
    assert_eq!(s.take_job(), None);
}
