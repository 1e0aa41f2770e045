//! Tests of [`WorkerMachine`] against PROTOCOL.md, sans-IO: bytes in, events
//! and frames out, time passed in as `base + Duration` (nothing sleeps).

use super::*;
use crate::protocol::frame::{FLAG_ACK_REQUESTED, FLAG_FAILED, HEADER_LEN};
use crate::protocol::hello::{codes, ErrorBody, Hello, Welcome, PROTOCOL_VERSION};
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// An owned copy of an [`Event`], so tests can keep it past the next call.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Welcomed(Welcome),
    Task {
        id: u64,
        handler: String,
        payload: Vec<u8>,
        ack: bool,
    },
    DrainRequested,
    Closed(CloseReason),
}

fn poll(m: &mut WorkerMachine, now: Instant) -> Option<Ev> {
    m.poll_event(now).map(|event| match event {
        Event::Welcomed(welcome) => Ev::Welcomed(welcome),
        Event::Task(task) => Ev::Task {
            id: task.id,
            handler: task.handler_name().to_owned(),
            payload: task.payload.to_vec(),
            ack: task.ack_requested,
        },
        Event::DrainRequested => Ev::DrainRequested,
        Event::Closed(reason) => Ev::Closed(reason),
    })
}

/// Every event available now, until the machine asks for more input.
fn poll_all(m: &mut WorkerMachine, now: Instant) -> Vec<Ev> {
    let mut events = Vec::new();
    while let Some(event) = poll(m, now) {
        events.push(event);
        assert!(events.len() < 10_000, "poll_event never returned None");
    }
    events
}

/// A decoded output frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Out {
    kind: FrameKind,
    flags: u8,
    id: u64,
    body: Vec<u8>,
}

/// Decode a byte stream the worker wrote; it must be whole, valid frames.
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

/// Take and decode everything queued for writing.
fn take(m: &mut WorkerMachine) -> Vec<Out> {
    frames(&m.take_output(Vec::new()))
}

fn kinds(frames: &[Out]) -> Vec<FrameKind> {
    frames.iter().map(|f| f.kind).collect()
}

fn error_body(frame: &Out) -> ErrorBody {
    serde_json::from_slice(&frame.body).expect("body is JSON {code, message}")
}

fn hello(max_in_flight: u32) -> Hello {
    Hello {
        protocol: PROTOCOL_VERSION,
        worker: "worker-under-test".to_owned(),
        session: 7,
        runtime: "blocking".to_owned(),
        max_body: 4096,
        max_in_flight,
        handlers: vec!["echo".to_owned(), "sleep".to_owned()],
        token: Some("tok-123".to_owned()),
    }
}

fn config(max_in_flight: u32) -> MachineConfig {
    MachineConfig::new(hello(max_in_flight))
}

fn frame(kind: FrameKind, flags: u8, id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, flags, id, body);
    out
}

fn welcome_json(protocol: u32, max_body: u32, heartbeat_ms: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "protocol": protocol,
        "manager": "mgr-1",
        "max_body": max_body,
        "heartbeat_ms": heartbeat_ms,
    }))
    .unwrap()
}

fn welcome(max_body: u32, heartbeat_ms: u32) -> Vec<u8> {
    frame(
        FrameKind::Welcome,
        0,
        0,
        &welcome_json(PROTOCOL_VERSION, max_body, heartbeat_ms),
    )
}

fn task_frame(id: u64, flags: u8, handler: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    encode_task_body(&mut body, handler, payload);
    frame(FrameKind::Task, flags, id, &body)
}

fn task(id: u64, payload: &[u8]) -> Vec<u8> {
    task_frame(id, 0, "echo", payload)
}

/// A machine whose handshake completed at `t0` (WELCOME received at `t0`),
/// with HELLO already taken from the output.
fn welcomed_with(
    cfg: MachineConfig,
    peer_max_body: u32,
    heartbeat_ms: u32,
) -> (WorkerMachine, Instant) {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(cfg, t0);
    let hello = take(&mut m);
    assert_eq!(kinds(&hello), [FrameKind::Hello]);
    m.handle_input(&welcome(peer_max_body, heartbeat_ms), t0);
    match poll(&mut m, t0) {
        Some(Ev::Welcomed(w)) => assert_eq!(w.max_body, peer_max_body),
        other => panic!("expected Welcomed, got {other:?}"),
    }
    assert_eq!(m.phase(), Phase::Active);
    (m, t0)
}

fn welcomed(max_in_flight: u32) -> (WorkerMachine, Instant) {
    welcomed_with(config(max_in_flight), 1 << 20, 0)
}

fn expect_task(m: &mut WorkerMachine, now: Instant, want_id: u64) -> Vec<u8> {
    match poll(m, now) {
        Some(Ev::Task { id, payload, .. }) => {
            assert_eq!(id, want_id);
            payload
        }
        other => panic!("expected task {want_id}, got {other:?}"),
    }
}

/// The machine closed for a protocol violation `code`: the event says so, the
/// last queued frame is ERROR `code`, and nothing more is read.
fn assert_violation(m: &mut WorkerMachine, now: Instant, code: &str) -> ErrorBody {
    match poll(m, now) {
        Some(Ev::Closed(CloseReason::ProtocolViolation { code: got, .. })) => {
            assert_eq!(got, code)
        }
        other => panic!("expected Closed(ProtocolViolation {code}), got {other:?}"),
    }
    assert_eq!(m.phase(), Phase::Closed);
    assert!(!m.wants_read());
    assert_eq!(poll(m, now), None, "nothing after Closed");
    let out = take(m);
    let last = out.last().expect("an ERROR frame was queued");
    assert_eq!(last.kind, FrameKind::Error, "frames: {out:?}");
    assert_eq!(last.id, 0);
    assert_eq!(last.flags, 0);
    let body = error_body(last);
    assert_eq!(body.code, code);
    body
}

fn result_frames(out: &[Out]) -> Vec<&Out> {
    out.iter().filter(|f| f.kind == FrameKind::Result).collect()
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[test]
fn hello_is_the_first_frame_queued_with_the_configured_fields() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(5), t0);
    assert_eq!(m.phase(), Phase::AwaitingWelcome);
    assert!(m.has_output());
    let out = take(&mut m);
    assert_eq!(out.len(), 1, "only HELLO before WELCOME: {out:?}");
    let hello_frame = &out[0];
    assert_eq!(hello_frame.kind, FrameKind::Hello);
    assert_eq!(hello_frame.flags, 0);
    assert_eq!(hello_frame.id, 0);
    let sent: Hello = serde_json::from_slice(&hello_frame.body).unwrap();
    assert_eq!(sent, hello(5));
    let json: serde_json::Value = serde_json::from_slice(&hello_frame.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "protocol": 1,
            "worker": "worker-under-test",
            "session": 7,
            "runtime": "blocking",
            "max_body": 4096,
            "max_in_flight": 5,
            "handlers": ["echo", "sleep"],
            "token": "tok-123",
        })
    );
    // Nothing else is sent before WELCOME, even as time passes.
    assert_eq!(poll(&mut m, t0), None);
    m.handle_timeout(t0 + Duration::from_secs(5));
    assert!(!m.has_output());
}

#[test]
fn welcome_completes_the_handshake_and_sets_peer_max_body() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    assert_eq!(m.peer_max_body(), 0);
    let _ = take(&mut m);
    m.handle_input(&welcome(12_345, 0), t0);
    assert_eq!(
        poll(&mut m, t0),
        Some(Ev::Welcomed(Welcome {
            protocol: 1,
            manager: "mgr-1".to_owned(),
            max_body: 12_345,
            heartbeat_ms: 0,
        }))
    );
    assert_eq!(m.phase(), Phase::Active);
    assert_eq!(m.peer_max_body(), 12_345);
    assert!(m.wants_read());
    assert_eq!(m.close_reason(), None);
    assert_eq!(poll(&mut m, t0), None);
    assert!(!m.has_output(), "WELCOME is not answered");
}

#[test]
fn welcome_with_unknown_fields_is_accepted() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let body =
        br#"{"protocol":1,"manager":"m","max_body":64,"heartbeat_ms":0,"region":"eu","x":[1]}"#;
    m.handle_input(&frame(FrameKind::Welcome, 0, 0, body), t0);
    assert!(matches!(poll(&mut m, t0), Some(Ev::Welcomed(_))));
    assert_eq!(m.peer_max_body(), 64);
}

#[test]
fn handshake_frames_split_byte_by_byte_and_tasks_batched_in_one_read_are_decoded() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(8), t0);
    let _ = take(&mut m);
    for byte in welcome(1024, 0) {
        assert!(!matches!(poll(&mut m, t0), Some(Ev::Welcomed(_))));
        m.handle_input(&[byte], t0);
    }
    assert!(matches!(poll(&mut m, t0), Some(Ev::Welcomed(_))));
    let mut batch = task(1, b"one");
    batch.extend(task(2, b"two"));
    batch.extend(task(3, b""));
    m.handle_input(&batch, t0);
    assert_eq!(expect_task(&mut m, t0, 1), b"one");
    assert_eq!(expect_task(&mut m, t0, 2), b"two");
    assert_eq!(expect_task(&mut m, t0, 3), b"");
    assert_eq!(poll(&mut m, t0), None);
}

#[test]
fn task_before_welcome_is_unexpected_frame() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&task(1, b"x"), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
    assert_eq!(m.in_flight(), 0);
}

#[test]
fn ping_before_welcome_is_unexpected_frame() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Ping, 0, 9, &[]), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn ping_before_welcome_gets_no_pong() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Ping, 0, 9, &[]), t0);
    let _ = poll_all(&mut m, t0);
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Error]);
}

#[test]
fn drain_before_welcome_is_unexpected_frame() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Drain, 0, 0, &[]), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn goodbye_before_welcome_is_unexpected_frame() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Goodbye, 0, 0, &[]), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn pong_before_welcome_is_unexpected_frame() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Pong, 0, 1, &[]), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn second_welcome_is_unexpected_frame() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&welcome(1024, 0), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn hello_from_the_manager_is_unexpected_frame_before_and_after_welcome() {
    let hello_body = serde_json::to_vec(&hello(1)).unwrap();
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Hello, 0, 0, &hello_body), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);

    let (mut m, t0) = welcomed(4);
    m.handle_input(&frame(FrameKind::Hello, 0, 0, &hello_body), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn ack_from_the_manager_is_unexpected_frame_before_and_after_welcome() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Ack, 0, 1, &[]), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);

    let (mut m, t0) = welcomed(4);
    m.handle_input(&frame(FrameKind::Ack, 0, 1, &[]), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn result_from_the_manager_is_unexpected_frame_before_and_after_welcome() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(&frame(FrameKind::Result, 0, 1, b"out"), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);

    let (mut m, t0) = welcomed(4);
    m.handle_input(&frame(FrameKind::Result, FLAG_FAILED, 1, b"{}"), t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
}

#[test]
fn frames_after_a_violation_are_not_processed() {
    let (mut m, t0) = welcomed(4);
    let mut input = frame(FrameKind::Ack, 0, 1, &[]);
    input.extend(task(2, b"late"));
    input.extend(frame(FrameKind::Ping, 0, 3, &[]));
    m.handle_input(&input, t0);
    assert_violation(&mut m, t0, codes::UNEXPECTED_FRAME);
    assert_eq!(m.in_flight(), 0);
    assert!(!m.has_output(), "no PONG and no task after the ERROR");
}

#[test]
fn welcome_with_protocol_2_is_unsupported_version() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    m.handle_input(
        &frame(FrameKind::Welcome, 0, 0, &welcome_json(2, 1024, 0)),
        t0,
    );
    assert_violation(&mut m, t0, codes::UNSUPPORTED_VERSION);
    assert_eq!(m.peer_max_body(), 0);
}

#[test]
fn welcome_with_invalid_json_is_bad_frame() {
    for body in [
        &b"not json"[..],
        b"",
        b"[1,2,3]",
        br#"[1,"m",16777216,0]"#,
        br#"{"protocol":1,"manager":"m"}"#,
        br#"{"protocol":"1","manager":"m","max_body":1,"heartbeat_ms":0}"#,
    ] {
        let t0 = Instant::now();
        let mut m = WorkerMachine::new(config(4), t0);
        let _ = take(&mut m);
        m.handle_input(&frame(FrameKind::Welcome, 0, 0, body), t0);
        assert_violation(&mut m, t0, codes::BAD_FRAME);
    }
}

#[test]
fn a_welcome_max_body_too_small_for_error_bodies_is_bad_frame() {
    // PROTOCOL.md "Handshake": below 64 the worker's own ERROR and FAILED
    // bodies could not be sent; such a WELCOME is refused.
    for max_body in [0u32, 20, 63] {
        let t0 = Instant::now();
        let mut m = WorkerMachine::new(config(4), t0);
        let _ = take(&mut m);
        m.handle_input(&welcome(max_body, 0), t0);
        match poll(&mut m, t0) {
            Some(Ev::Closed(CloseReason::ProtocolViolation { code, message })) => {
                assert_eq!(code, codes::BAD_FRAME);
                assert!(message.contains("max_body"), "{message}");
            }
            other => panic!("max_body {max_body}: expected bad_frame, got {other:?}"),
        }
        assert_eq!(kinds(&take(&mut m)), [FrameKind::Error]);
    }
}

#[test]
fn at_the_smallest_max_body_error_and_failed_bodies_are_json_that_fits() {
    let (mut m, t0) = welcomed_with(config(4), 64, 0);
    let payload = [b'x'; 100];
    m.handle_input(&task(1, &payload), t0);
    expect_task(&mut m, t0, 1);
    m.complete_task(1, TaskOutcome::Ok(&payload), t0).unwrap();
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Result]);
    assert_eq!(out[0].flags, FLAG_FAILED, "result_too_large");
    assert!(out[0].body.len() <= 64, "{out:?}");
    let failed: ErrorBody = serde_json::from_slice(&out[0].body).expect("FAILED body is JSON");
    assert_eq!(failed.code, codes::RESULT_TOO_LARGE);
    m.start_drain(t0);
    let _ = take(&mut m);
    assert!(m.write_goodbye(123_456, 654_321));
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Goodbye]);
    assert!(
        out[0].body.len() <= 64 && !out[0].body.is_empty(),
        "{out:?}"
    );
    // An ERROR of the worker's own fits too, and is still JSON.
    let (mut m, t0) = welcomed_with(config(4), 64, 0);
    m.handle_input(&task_frame(1, 0, "a\x01", b""), t0);
    let _ = poll(&mut m, t0);
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Error]);
    assert!(out[0].body.len() <= 64, "{out:?}");
    let error: ErrorBody = serde_json::from_slice(&out[0].body).expect("ERROR body is JSON");
    assert_eq!(error.code, codes::BAD_FRAME);
}

#[test]
fn unauthorized_error_during_handshake_is_a_refusal() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    let body = ErrorBody::new(codes::UNAUTHORIZED, "bad token").to_json();
    m.handle_input(&frame(FrameKind::Error, 0, 0, &body), t0);
    let reason = match poll(&mut m, t0) {
        Some(Ev::Closed(reason)) => reason,
        other => panic!("expected Closed, got {other:?}"),
    };
    assert_eq!(
        reason,
        CloseReason::PeerError {
            code: "unauthorized".to_owned(),
            message: "bad token".to_owned(),
            during_handshake: true,
        }
    );
    assert!(reason.is_refusal());
    assert!(!reason.is_graceful());
    assert_eq!(m.phase(), Phase::Closed);
    assert!(!m.has_output(), "an ERROR is not answered with an ERROR");
}

#[test]
fn unsupported_version_error_during_handshake_is_a_refusal_but_bad_hello_is_not() {
    for (code, refusal) in [
        (codes::UNSUPPORTED_VERSION, true),
        (codes::BAD_HELLO, false),
        ("something_else", false),
    ] {
        let t0 = Instant::now();
        let mut m = WorkerMachine::new(config(4), t0);
        let _ = take(&mut m);
        let body = ErrorBody::new(code, "no").to_json();
        m.handle_input(&frame(FrameKind::Error, 0, 0, &body), t0);
        match poll(&mut m, t0) {
            Some(Ev::Closed(reason)) => assert_eq!(reason.is_refusal(), refusal, "{code}"),
            other => panic!("expected Closed, got {other:?}"),
        }
    }
}

#[test]
fn error_after_handshake_is_not_a_refusal() {
    let (mut m, t0) = welcomed(4);
    let body = ErrorBody::new(codes::UNAUTHORIZED, "token revoked").to_json();
    m.handle_input(&frame(FrameKind::Error, 0, 0, &body), t0);
    let reason = match poll(&mut m, t0) {
        Some(Ev::Closed(reason)) => reason,
        other => panic!("expected Closed, got {other:?}"),
    };
    assert_eq!(
        reason,
        CloseReason::PeerError {
            code: "unauthorized".to_owned(),
            message: "token revoked".to_owned(),
            during_handshake: false,
        }
    );
    assert!(!reason.is_refusal());
    assert_eq!(m.phase(), Phase::Closed);
}

// ---------------------------------------------------------------------------
// TASK validation
// ---------------------------------------------------------------------------

fn assert_task_body_is_bad_frame(body: &[u8]) {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&frame(FrameKind::Task, 0, 1, body), t0);
    assert_violation(&mut m, t0, codes::BAD_FRAME);
    assert_eq!(m.in_flight(), 0);
}

#[test]
fn empty_task_body_is_bad_frame() {
    assert_task_body_is_bad_frame(&[]);
}

#[test]
fn task_name_len_zero_is_bad_frame() {
    assert_task_body_is_bad_frame(&[0, b'e', b'c', b'h', b'o']);
    assert_task_body_is_bad_frame(&[0]);
}

#[test]
fn task_name_len_65_is_bad_frame() {
    let mut body = vec![65u8];
    body.extend(std::iter::repeat_n(b'a', 65));
    body.extend_from_slice(b"payload");
    assert_task_body_is_bad_frame(&body);
}

#[test]
fn task_name_len_64_is_accepted() {
    let (mut m, t0) = welcomed(4);
    let name = "n".repeat(64);
    m.handle_input(&task_frame(1, 0, &name, b"p"), t0);
    match poll(&mut m, t0) {
        Some(Ev::Task {
            handler, payload, ..
        }) => {
            assert_eq!(handler, name);
            assert_eq!(payload, b"p");
        }
        other => panic!("expected a task, got {other:?}"),
    }
}

#[test]
fn task_body_shorter_than_one_plus_name_len_is_bad_frame() {
    assert_task_body_is_bad_frame(&[4, b'e', b'c', b'h']);
    assert_task_body_is_bad_frame(&[1]);
}

#[test]
fn task_name_exactly_filling_the_body_is_a_task_with_empty_payload() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(
        &frame(FrameKind::Task, 0, 1, &[4, b'e', b'c', b'h', b'o']),
        t0,
    );
    assert_eq!(
        poll(&mut m, t0),
        Some(Ev::Task {
            id: 1,
            handler: "echo".to_owned(),
            payload: Vec::new(),
            ack: false,
        })
    );
}

#[test]
fn task_name_with_non_printable_byte_is_bad_frame() {
    for bad in [0x00u8, 0x07, b'\n', 0x7F, 0x80, 0xC3, 0xFF] {
        assert_task_body_is_bad_frame(&[3, b'a', bad, b'b', b'p']);
    }
}

#[test]
fn task_name_with_a_space_is_accepted() {
    // PROTOCOL.md: printable ASCII is 0x20..=0x7E, the space included.
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task_frame(7, 0, "resize image", b"p"), t0);
    match poll(&mut m, t0) {
        Some(Ev::Task {
            handler, payload, ..
        }) => {
            assert_eq!(handler, "resize image");
            assert_eq!(payload, b"p");
        }
        other => panic!("expected the task, got {other:?}"),
    }
    // Below the space and DEL above the tilde stay refused.
    assert_task_body_is_bad_frame(&[4, b'e', b'c', 0x1f, b'o']);
    assert_task_body_is_bad_frame(&[4, b'e', b'c', 0x7f, b'o']);
}

#[test]
fn error_text_from_the_manager_is_capped_and_escaped() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    let message = format!("line one\nFAKE LOG LINE{}", "x".repeat(500));
    let body = ErrorBody::new("bad\ncode", message).to_json();
    m.handle_input(&frame(FrameKind::Error, 0, 0, &body), t0);
    let Some(Ev::Closed(CloseReason::PeerError { code, message, .. })) = poll(&mut m, t0) else {
        panic!("expected the manager's ERROR");
    };
    assert_eq!(code, "bad\\ncode");
    assert!(message.starts_with("line one\\nFAKE LOG LINE"), "{message}");
    assert!(!message.contains('\n'));
    assert!(message.len() < 300, "{} bytes kept", message.len());
    assert!(message.ends_with(" bytes]"), "the cut is marked");
}

#[test]
fn the_welcome_manager_name_is_escaped() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    let body = br#"{"protocol":1,"manager":"m1\nINFO forged","max_body":1024,"heartbeat_ms":0}"#;
    m.handle_input(&frame(FrameKind::Welcome, 0, 0, body), t0);
    match poll(&mut m, t0) {
        Some(Ev::Welcomed(welcome)) => assert_eq!(welcome.manager, "m1\\nINFO forged"),
        other => panic!("expected Welcomed, got {other:?}"),
    }
}

#[test]
fn task_frame_with_undefined_flag_is_bad_frame() {
    let (mut m, t0) = welcomed(4);
    let mut bytes = task(1, b"x");
    bytes[5] = 0x02;
    m.handle_input(&bytes, t0);
    assert_violation(&mut m, t0, codes::BAD_FRAME);
}

#[test]
fn duplicate_in_flight_task_id_is_duplicate_task_id() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(42, b"a"), t0);
    expect_task(&mut m, t0, 42);
    m.handle_input(&task(42, b"b"), t0);
    assert_violation(&mut m, t0, codes::DUPLICATE_TASK_ID);
    assert_eq!(m.in_flight(), 1, "the duplicate was not accepted");
}

#[test]
fn task_id_can_be_reused_after_its_result() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(42, b"a"), t0);
    expect_task(&mut m, t0, 42);
    m.complete_task(42, TaskOutcome::Ok(b"a"), t0).unwrap();
    assert!(!m.is_in_flight(42));
    m.handle_input(&task(42, b"b"), t0);
    assert_eq!(expect_task(&mut m, t0, 42), b"b");
    assert!(m.is_in_flight(42));
    m.complete_task(42, TaskOutcome::Ok(b"b"), t0).unwrap();
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Result, FrameKind::Result]);
    assert_eq!(out[0].body, b"a");
    assert_eq!(out[1].body, b"b");
    assert_eq!(m.close_reason(), None);
}

// ---------------------------------------------------------------------------
// ACK, RESULT, back-pressure
// ---------------------------------------------------------------------------

#[test]
fn ack_requested_sends_ack_before_the_result() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task_frame(5, FLAG_ACK_REQUESTED, "echo", b"hi"), t0);
    match poll(&mut m, t0) {
        Some(Ev::Task {
            id: 5, ack: true, ..
        }) => {}
        other => panic!("expected task 5 with ack, got {other:?}"),
    }
    m.complete_task(5, TaskOutcome::Ok(b"hi"), t0).unwrap();
    let out = take(&mut m);
    assert_eq!(
        out,
        [
            Out {
                kind: FrameKind::Ack,
                flags: 0,
                id: 5,
                body: Vec::new(),
            },
            Out {
                kind: FrameKind::Result,
                flags: 0,
                id: 5,
                body: b"hi".to_vec(),
            },
        ]
    );
}

#[test]
fn task_without_ack_requested_gets_no_ack() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(5, b"hi"), t0);
    match poll(&mut m, t0) {
        Some(Ev::Task {
            id: 5, ack: false, ..
        }) => {}
        other => panic!("expected task 5 without ack, got {other:?}"),
    }
    assert!(!m.has_output());
    m.complete_task(5, TaskOutcome::Ok(b"hi"), t0).unwrap();
    assert_eq!(kinds(&take(&mut m)), [FrameKind::Result]);
}

#[test]
fn max_in_flight_holds_back_further_tasks_until_one_completes() {
    let (mut m, t0) = welcomed(2);
    let mut input = Vec::new();
    for id in 1..=5 {
        input.extend(task(id, &[id as u8]));
    }
    m.handle_input(&input, t0);
    assert_eq!(expect_task(&mut m, t0, 1), [1]);
    assert_eq!(expect_task(&mut m, t0, 2), [2]);
    assert_eq!(poll(&mut m, t0), None, "a third task exceeds max_in_flight");
    assert_eq!(m.in_flight(), 2);
    assert!(!m.wants_read());
    // Still held back on a later poll.
    assert_eq!(poll(&mut m, t0 + Duration::from_millis(1)), None);
    assert!(!m.wants_read());

    m.complete_task(1, TaskOutcome::Ok(&[1]), t0).unwrap();
    assert!(m.wants_read());
    assert_eq!(expect_task(&mut m, t0, 3), [3]);
    assert_eq!(poll(&mut m, t0), None);
    assert!(!m.wants_read());

    m.complete_task(2, TaskOutcome::Ok(&[2]), t0).unwrap();
    m.complete_task(3, TaskOutcome::Ok(&[3]), t0).unwrap();
    assert_eq!(expect_task(&mut m, t0, 4), [4]);
    assert_eq!(expect_task(&mut m, t0, 5), [5]);
    assert_eq!(poll(&mut m, t0), None);
    assert_eq!(m.in_flight(), 2);
    // Back-pressure drops nothing.
    m.complete_task(4, TaskOutcome::Ok(&[4]), t0).unwrap();
    m.complete_task(5, TaskOutcome::Ok(&[5]), t0).unwrap();
    let ids: Vec<u64> = result_frames(&take(&mut m)).iter().map(|f| f.id).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

#[test]
fn output_above_high_water_pauses_reading() {
    let mut cfg = config(4);
    cfg.output_high_water = 100;
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(cfg, t0);
    assert!(
        m.pending_output().len() >= 100,
        "HELLO alone is over 100 bytes"
    );
    assert!(
        !m.wants_read(),
        "HELLO above the high-water mark pauses reading"
    );
    let _ = take(&mut m);
    assert!(m.wants_read());
    m.handle_input(&welcome(1024, 0), t0);
    assert!(matches!(poll(&mut m, t0), Some(Ev::Welcomed(_))));

    // Six PONGs are 96 bytes: still below the mark.
    let mut pings = Vec::new();
    for nonce in 0..6 {
        pings.extend(frame(FrameKind::Ping, 0, nonce, &[]));
    }
    m.handle_input(&pings, t0);
    assert_eq!(poll(&mut m, t0), None);
    assert_eq!(m.pending_output().len(), 96);
    assert!(m.wants_read());
    // A seventh makes 112 bytes queued: reading pauses.
    m.handle_input(&frame(FrameKind::Ping, 0, 6, &[]), t0);
    assert_eq!(poll(&mut m, t0), None);
    assert_eq!(m.pending_output().len(), 112);
    assert!(!m.wants_read());
    // Writing the output resumes reading.
    assert_eq!(take(&mut m).len(), 7);
    assert!(m.wants_read());
}

#[test]
fn consume_output_releases_high_water_pause() {
    let mut cfg = config(4);
    cfg.output_high_water = 100;
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(cfg, t0);
    let hello_len = m.pending_output().len();
    m.consume_output(hello_len - 1);
    assert_eq!(m.pending_output().len(), 1);
    assert!(m.wants_read());
    m.consume_output(10);
    assert!(!m.has_output());
}

#[test]
fn result_larger_than_peer_max_body_fails_with_result_too_large() {
    let (mut m, t0) = welcomed_with(config(4), 128, 0);
    m.handle_input(&task(1, b""), t0);
    m.handle_input(&task(2, b""), t0);
    expect_task(&mut m, t0, 1);
    expect_task(&mut m, t0, 2);
    m.complete_task(1, TaskOutcome::Ok(&[7u8; 128]), t0)
        .unwrap();
    m.complete_task(2, TaskOutcome::Ok(&[7u8; 129]), t0)
        .unwrap();
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Result, FrameKind::Result]);
    // Exactly max_body is sent as is.
    assert_eq!(out[0].id, 1);
    assert_eq!(out[0].flags, 0);
    assert_eq!(out[0].body, vec![7u8; 128]);
    // One more byte would be refused by the manager: FAILED instead.
    assert_eq!(out[1].id, 2);
    assert_eq!(out[1].flags, FLAG_FAILED);
    let body = error_body(&out[1]);
    assert_eq!(body.code, "result_too_large");
    assert!(!body.message.is_empty());
    assert!(out[1].body.len() <= 128, "the FAILED frame itself fits");
    assert_eq!(m.close_reason(), None, "the connection stays up");
    assert_eq!(m.in_flight(), 0);
}

#[test]
fn failed_outcome_is_a_result_with_failed_flag_and_json_code_and_message() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(9, b"x"), t0);
    expect_task(&mut m, t0, 9);
    m.complete_task(
        9,
        TaskOutcome::Failed {
            code: codes::HANDLER_FAILED,
            message: "disk on fire \"quoted\"",
        },
        t0,
    )
    .unwrap();
    let out = take(&mut m);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, FrameKind::Result);
    assert_eq!(out[0].flags, FLAG_FAILED);
    assert_eq!(out[0].id, 9);
    let json: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"code": "handler_failed", "message": "disk on fire \"quoted\""})
    );
    assert_eq!(m.close_reason(), None);
}

#[test]
fn complete_task_for_unknown_id_is_not_in_flight() {
    let (mut m, t0) = welcomed(4);
    assert_eq!(
        m.complete_task(77, TaskOutcome::Ok(b""), t0),
        Err(NotInFlight(77))
    );
    m.handle_input(&task(1, b""), t0);
    expect_task(&mut m, t0, 1);
    m.complete_task(1, TaskOutcome::Ok(b""), t0).unwrap();
    assert_eq!(
        m.complete_task(1, TaskOutcome::Ok(b""), t0),
        Err(NotInFlight(1)),
        "a second completion of the same task is refused"
    );
    assert_eq!(kinds(&take(&mut m)), [FrameKind::Result], "one RESULT only");
}

#[test]
fn ping_is_answered_with_pong_with_the_same_nonce() {
    let (mut m, t0) = welcomed(4);
    let mut input = frame(FrameKind::Ping, 0, 0xDEAD_BEEF_0102_0304, &[]);
    input.extend(frame(FrameKind::Ping, 0, 1, &[]));
    m.handle_input(&input, t0);
    assert_eq!(poll(&mut m, t0), None);
    let out = take(&mut m);
    assert_eq!(
        out,
        [
            Out {
                kind: FrameKind::Pong,
                flags: 0,
                id: 0xDEAD_BEEF_0102_0304,
                body: Vec::new(),
            },
            Out {
                kind: FrameKind::Pong,
                flags: 0,
                id: 1,
                body: Vec::new(),
            },
        ]
    );
}

#[test]
fn pong_from_the_manager_is_accepted_silently() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&frame(FrameKind::Pong, 0, 1, &[]), t0);
    assert_eq!(poll(&mut m, t0), None);
    assert!(!m.has_output());
    assert_eq!(m.phase(), Phase::Active);
}

#[test]
fn goodbye_from_the_manager_closes_with_peer_goodbye() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&frame(FrameKind::Goodbye, 0, 0, &[]), t0);
    assert_eq!(poll(&mut m, t0), Some(Ev::Closed(CloseReason::PeerGoodbye)));
    assert_eq!(m.phase(), Phase::Closed);
    assert!(!m.has_output());
}

// ---------------------------------------------------------------------------
// Ending a session
// ---------------------------------------------------------------------------

#[test]
fn worker_drain_queues_drain_and_refuses_later_tasks_with_draining_and_no_ack() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(1, b"a"), t0);
    expect_task(&mut m, t0, 1);
    m.start_drain(t0);
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Worker));
    let out = take(&mut m);
    assert_eq!(
        out,
        [Out {
            kind: FrameKind::Drain,
            flags: 0,
            id: 0,
            body: Vec::new(),
        }]
    );
    assert!(
        m.wants_read(),
        "tasks that still arrive must be read and answered"
    );

    m.handle_input(&task_frame(2, FLAG_ACK_REQUESTED, "echo", b"b"), t0);
    m.handle_input(&task(3, b"c"), t0);
    assert_eq!(poll(&mut m, t0), None, "refused tasks are not handed out");
    assert_eq!(m.in_flight(), 1);
    assert_eq!(m.tasks_refused_draining(), 2);
    let out = take(&mut m);
    assert_eq!(
        kinds(&out),
        [FrameKind::Result, FrameKind::Result],
        "no ACK for a refused task"
    );
    for (frame, id) in out.iter().zip([2, 3]) {
        assert_eq!(frame.id, id);
        assert_eq!(frame.flags, FLAG_FAILED);
        assert_eq!(error_body(frame).code, "draining");
    }
    assert_eq!(m.close_reason(), None);
}

#[test]
fn worker_drain_reaches_goodbye_due_only_after_the_last_in_flight_task() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(1, b"a"), t0);
    m.handle_input(&task(2, b"b"), t0);
    expect_task(&mut m, t0, 1);
    expect_task(&mut m, t0, 2);
    m.start_drain(t0);
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Worker));
    assert!(
        !m.write_goodbye(1, 1),
        "no GOODBYE while tasks are in flight"
    );
    m.complete_task(2, TaskOutcome::Ok(b"b"), t0).unwrap();
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Worker));
    m.complete_task(1, TaskOutcome::Ok(b"a"), t0).unwrap();
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    assert!(!m.wants_read());
    assert_eq!(poll(&mut m, t0), None);
    let out = take(&mut m);
    assert_eq!(
        kinds(&out),
        [FrameKind::Drain, FrameKind::Result, FrameKind::Result]
    );
    assert!(
        !kinds(&out).contains(&FrameKind::Goodbye),
        "GOODBYE waits for write_goodbye"
    );
}

#[test]
fn worker_drain_with_nothing_in_flight_is_goodbye_due_at_once() {
    let (mut m, t0) = welcomed(4);
    m.start_drain(t0);
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    assert_eq!(kinds(&take(&mut m)), [FrameKind::Drain]);
}

#[test]
fn input_while_goodbye_is_due_is_answered_before_goodbye() {
    let (mut m, t0) = welcomed(4);
    m.start_drain(t0);
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    let _ = take(&mut m);
    // A chunk read just before GOODBYE was written (another thread read it).
    m.handle_input(&task(7, b"late"), t0);
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Worker));
    assert_eq!(poll(&mut m, t0), None, "refused tasks are not handed out");
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Result]);
    assert_eq!(out[0].id, 7);
    assert_eq!(error_body(&out[0]).code, "draining");
    assert_eq!(m.phase(), Phase::GoodbyeDue, "due again once answered");
    assert!(m.write_goodbye(10, 20));
}

#[test]
fn write_goodbye_reports_the_given_counters_then_closes_with_goodbye() {
    let (mut m, t0) = welcomed(4);
    assert!(!m.write_goodbye(1, 2), "only valid in GoodbyeDue");
    assert!(!m.has_output());
    m.start_drain(t0);
    let _ = take(&mut m);
    assert!(m.write_goodbye(1_299_227_607, 39_321_600));
    let out = take(&mut m);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, FrameKind::Goodbye);
    assert_eq!(out[0].id, 0);
    assert_eq!(out[0].flags, 0);
    let json: serde_json::Value = serde_json::from_slice(&out[0].body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"bytes_sent": 1_299_227_607u64, "bytes_received": 39_321_600u64})
    );
    assert_eq!(
        poll(&mut m, t0),
        Some(Ev::Closed(CloseReason::Goodbye {
            origin: DrainOrigin::Worker
        }))
    );
    assert_eq!(m.phase(), Phase::Closed);
    assert!(m.close_reason().unwrap().is_graceful());
    assert!(!m.write_goodbye(1, 2), "GOODBYE is written once");
    assert!(!m.has_output());
}

#[test]
fn start_drain_before_welcome_closes_stopped_before_welcome_without_drain() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    m.start_drain(t0);
    assert_eq!(
        poll(&mut m, t0),
        Some(Ev::Closed(CloseReason::StoppedBeforeWelcome))
    );
    assert_eq!(m.phase(), Phase::Closed);
    assert_eq!(kinds(&take(&mut m)), [FrameKind::Hello], "no DRAIN queued");
    assert!(!m.wants_read());
}

#[test]
fn manager_drain_is_reported_and_in_flight_tasks_finish_before_goodbye_due() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(1, b"a"), t0);
    m.handle_input(&task(2, b"b"), t0);
    expect_task(&mut m, t0, 1);
    expect_task(&mut m, t0, 2);
    m.handle_input(&frame(FrameKind::Drain, 0, 0, &[]), t0);
    assert_eq!(poll(&mut m, t0), Some(Ev::DrainRequested));
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Manager));
    assert!(!m.has_output(), "the worker does not echo DRAIN");
    m.complete_task(1, TaskOutcome::Ok(b"a"), t0).unwrap();
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Manager));
    m.complete_task(2, TaskOutcome::Ok(b"b"), t0).unwrap();
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Result, FrameKind::Result]);
    assert_eq!(out[0].body, b"a");
    assert_eq!(out[1].body, b"b");
    assert!(m.write_goodbye(10, 20));
    assert_eq!(
        poll(&mut m, t0),
        Some(Ev::Closed(CloseReason::Goodbye {
            origin: DrainOrigin::Manager
        }))
    );
}

#[test]
fn eof_with_tasks_in_flight_finishes_them_then_goodbye_due() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(1, b"a"), t0);
    m.handle_input(&task(2, b"b"), t0);
    expect_task(&mut m, t0, 1);
    expect_task(&mut m, t0, 2);
    m.handle_eof(t0);
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::PeerEof));
    assert!(!m.wants_read(), "nothing more can be read after EOF");
    assert_eq!(poll(&mut m, t0), None);
    assert_eq!(
        kinds(&take(&mut m)),
        [FrameKind::Ping],
        "a probe: a closed socket answers it with a reset"
    );
    m.complete_task(1, TaskOutcome::Ok(b"a"), t0).unwrap();
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::PeerEof));
    m.complete_task(2, TaskOutcome::Ok(b"b"), t0).unwrap();
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    assert_eq!(kinds(&take(&mut m)), [FrameKind::Result, FrameKind::Result]);
    assert!(m.write_goodbye(0, 0));
    assert_eq!(
        poll(&mut m, t0),
        Some(Ev::Closed(CloseReason::Goodbye {
            origin: DrainOrigin::PeerEof
        }))
    );
}

#[test]
fn eof_with_a_task_running_probes_the_manager_until_the_task_ends() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(1, b"a"), t0);
    expect_task(&mut m, t0, 1);
    m.handle_eof(t0);
    let first = take(&mut m);
    assert_eq!(kinds(&first), [FrameKind::Ping]);
    assert_eq!(
        m.poll_timeout(),
        Some(t0 + EOF_PROBE_EVERY),
        "no heartbeat here"
    );
    m.handle_timeout(t0 + EOF_PROBE_EVERY / 2);
    assert!(!m.has_output(), "not before the probe is due");
    m.handle_timeout(t0 + EOF_PROBE_EVERY);
    let second = take(&mut m);
    assert_eq!(kinds(&second), [FrameKind::Ping]);
    assert_ne!(first[0].id, second[0].id, "each probe has its own nonce");
    assert_eq!(
        m.poll_timeout(),
        Some(t0 + EOF_PROBE_EVERY * 3),
        "the interval doubles"
    );
    m.complete_task(1, TaskOutcome::Ok(b"a"), t0 + EOF_PROBE_EVERY)
        .unwrap();
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    assert_eq!(m.poll_timeout(), None, "no probe once nothing runs");
}

#[test]
fn eof_with_nothing_running_sends_no_probe() {
    let (mut m, t0) = welcomed(4);
    m.handle_eof(t0);
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    assert!(!m.has_output());
}

#[test]
fn eof_before_welcome_is_peer_closed() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    m.handle_eof(t0);
    assert_eq!(poll(&mut m, t0), Some(Ev::Closed(CloseReason::PeerClosed)));
    assert_eq!(m.phase(), Phase::Closed);
    assert!(!m.close_reason().unwrap().is_graceful());
}

/// PROTOCOL.md "Tasks": "The worker sends exactly one RESULT for every TASK it
/// read", and "Worker stops": it "answers TASKs that still arrive with RESULT
/// FAILED draining ... then sends GOODBYE". A TASK already read into the
/// receive buffer (held back only by max_in_flight) must be answered before
/// the machine declares GOODBYE due.
#[test]
fn worker_drain_answers_a_task_buffered_behind_a_full_window_before_goodbye() {
    let (mut m, t0) = welcomed(1);
    let mut input = task(1, b"a");
    input.extend(task(2, b"b"));
    m.handle_input(&input, t0);
    expect_task(&mut m, t0, 1);
    assert_eq!(poll(&mut m, t0), None, "task 2 waits for a free slot");
    m.start_drain(t0);
    m.complete_task(1, TaskOutcome::Ok(b"a"), t0).unwrap();
    let _ = poll_all(&mut m, t0);
    let out = take(&mut m);
    let results = result_frames(&out);
    assert!(
        results.iter().any(|f| f.id == 2),
        "task 2 was read but never answered before GOODBYE became due; frames: {out:?}, phase {:?}",
        m.phase()
    );
    let answer = results.iter().find(|f| f.id == 2).unwrap();
    assert_eq!(answer.flags, FLAG_FAILED);
    assert_eq!(error_body(answer).code, "draining");
    assert_eq!(m.phase(), Phase::GoodbyeDue);
}

/// Same rule after the manager half-closes: TASKs it sent before EOF and that
/// sit complete in the receive buffer are still tasks the worker read.
#[test]
fn eof_still_delivers_tasks_already_buffered() {
    let (mut m, t0) = welcomed(1);
    let mut input = task(1, b"a");
    input.extend(task(2, b"b"));
    m.handle_input(&input, t0);
    expect_task(&mut m, t0, 1);
    assert_eq!(poll(&mut m, t0), None);
    m.handle_eof(t0);
    m.complete_task(1, TaskOutcome::Ok(b"a"), t0).unwrap();
    assert_ne!(
        m.phase(),
        Phase::GoodbyeDue,
        "GOODBYE due while task 2 is still unread in the buffer"
    );
    assert_eq!(expect_task(&mut m, t0, 2), b"b");
    m.complete_task(2, TaskOutcome::Ok(b"b"), t0).unwrap();
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    let ids: Vec<u64> = result_frames(&take(&mut m)).iter().map(|f| f.id).collect();
    assert_eq!(ids, [1, 2]);
}

// ---------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------

#[test]
fn handshake_timeout_fires_at_the_deadline_not_before() {
    let mut cfg = config(4);
    cfg.handshake_timeout = Duration::from_secs(3);
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(cfg, t0);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(3)));
    m.handle_timeout(t0 + Duration::from_secs(3) - Duration::from_nanos(1));
    assert_eq!(poll(&mut m, t0), None);
    assert_eq!(m.phase(), Phase::AwaitingWelcome);
    assert_eq!(m.close_reason(), None);
    m.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(
        poll(&mut m, t0 + Duration::from_secs(3)),
        Some(Ev::Closed(CloseReason::HandshakeTimeout))
    );
    assert_eq!(m.phase(), Phase::Closed);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn welcome_in_time_cancels_the_handshake_timeout() {
    let mut cfg = config(4);
    cfg.handshake_timeout = Duration::from_secs(3);
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(cfg, t0);
    let t1 = t0 + Duration::from_secs(2);
    m.handle_input(&welcome(1024, 0), t1);
    assert!(matches!(poll(&mut m, t1), Some(Ev::Welcomed(_))));
    m.handle_timeout(t0 + Duration::from_secs(30));
    assert_eq!(poll(&mut m, t0 + Duration::from_secs(30)), None);
    assert_eq!(m.phase(), Phase::Active);
}

#[test]
fn heartbeat_sends_ping_after_an_interval_of_sending_nothing() {
    let (mut m, t0) = welcomed_with(config(4), 1024, 100);
    let ms = Duration::from_millis;
    assert_eq!(m.poll_timeout(), Some(t0 + ms(100)));
    m.handle_timeout(t0 + ms(99));
    assert!(!m.has_output(), "no PING before heartbeat_ms");
    m.handle_timeout(t0 + ms(100));
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Ping]);
    assert!(out[0].body.is_empty());
    let first_nonce = out[0].id;
    // The next PING is due heartbeat_ms after this one.
    assert_eq!(m.poll_timeout(), Some(t0 + ms(200)));
    m.handle_timeout(t0 + ms(199));
    assert!(!m.has_output());
    m.handle_timeout(t0 + ms(200));
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Ping]);
    assert_ne!(out[0].id, first_nonce, "each PING has its own nonce");
    assert_eq!(m.phase(), Phase::Active);
}

#[test]
fn sending_a_result_postpones_the_heartbeat_ping() {
    let (mut m, t0) = welcomed_with(config(4), 1024, 100);
    let ms = Duration::from_millis;
    m.handle_input(&task(1, b""), t0 + ms(50));
    expect_task(&mut m, t0 + ms(50), 1);
    m.complete_task(1, TaskOutcome::Ok(b""), t0 + ms(80))
        .unwrap();
    let _ = take(&mut m);
    m.handle_timeout(t0 + ms(100));
    assert!(!m.has_output(), "something was sent 20 ms ago: no PING yet");
    m.handle_timeout(t0 + ms(180));
    assert_eq!(kinds(&take(&mut m)), [FrameKind::Ping]);
}

#[test]
fn receiving_bytes_resets_the_heartbeat_receive_deadline() {
    let (mut m, t0) = welcomed_with(config(4), 1024, 100);
    let ms = Duration::from_millis;
    m.handle_timeout(t0 + ms(100));
    m.handle_timeout(t0 + ms(200));
    // The manager answers the PING at +250 ms: its PONG arrives in two reads.
    let pong = frame(FrameKind::Pong, 0, 1, &[]);
    m.handle_input(&pong[..5], t0 + ms(240));
    m.handle_input(&pong[5..], t0 + ms(250));
    assert_eq!(poll(&mut m, t0 + ms(250)), None);
    for at in [300, 400, 500, 549] {
        m.handle_timeout(t0 + ms(at));
        assert_eq!(poll(&mut m, t0 + ms(at)), None, "closed at +{at} ms");
        assert_eq!(m.phase(), Phase::Active, "at +{at} ms");
    }
    m.handle_timeout(t0 + ms(550));
    assert_eq!(
        poll(&mut m, t0 + ms(550)),
        Some(Ev::Closed(CloseReason::HeartbeatTimeout))
    );
}

#[test]
fn three_heartbeats_of_silence_close_with_heartbeat_timeout() {
    let (mut m, t0) = welcomed_with(config(4), 1024, 100);
    let ms = Duration::from_millis;
    for at in [100, 200, 299] {
        m.handle_timeout(t0 + ms(at));
        let _ = take(&mut m);
        assert_eq!(poll(&mut m, t0 + ms(at)), None);
        assert_eq!(m.phase(), Phase::Active, "at +{at} ms");
    }
    assert!(m.poll_timeout().unwrap() <= t0 + ms(300));
    m.handle_timeout(t0 + ms(300));
    assert_eq!(
        poll(&mut m, t0 + ms(300)),
        Some(Ev::Closed(CloseReason::HeartbeatTimeout))
    );
    assert_eq!(m.phase(), Phase::Closed);
    assert!(!m.close_reason().unwrap().is_graceful());
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn heartbeat_zero_disables_timeouts_after_handshake() {
    let (mut m, t0) = welcomed_with(config(4), 1024, 0);
    assert_eq!(m.poll_timeout(), None);
    let later = t0 + Duration::from_secs(3600);
    m.handle_timeout(later);
    assert_eq!(poll(&mut m, later), None);
    assert_eq!(m.phase(), Phase::Active);
    assert!(!m.has_output(), "no PING without a heartbeat");
}

// ---------------------------------------------------------------------------
// Oversized frames
// ---------------------------------------------------------------------------

#[test]
fn oversized_len_header_is_frame_too_large_with_exact_message() {
    let (mut m, t0) = welcomed(4);
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&u32::MAX.to_be_bytes());
    header[4] = FrameKind::Task as u8;
    m.handle_input(&header, t0);
    let body = assert_violation(&mut m, t0, codes::FRAME_TOO_LARGE);
    assert_eq!(
        body.message,
        "frame_too_large: len 4294967295 > max_body 4096"
    );
    assert_eq!(
        m.close_reason(),
        Some(&CloseReason::ProtocolViolation {
            code: "frame_too_large",
            message: "frame_too_large: len 4294967295 > max_body 4096".to_owned(),
        })
    );
}

#[test]
fn a_len_below_twelve_is_refused_from_the_first_four_bytes() {
    // In one read.
    let (mut m, t0) = welcomed(4);
    m.handle_input(&[0, 0, 0, 5], t0);
    let body = assert_violation(&mut m, t0, codes::BAD_FRAME);
    assert_eq!(body.message, "bad_frame: len 5 < 12");
    // Byte by byte: the prefix waits in the receive buffer until it shows
    // the violation.
    let (mut m, t0) = welcomed(4);
    for byte in [0u8, 0, 0] {
        m.handle_input(&[byte], t0);
        assert!(poll(&mut m, t0).is_none());
        assert!(m.close_reason().is_none());
    }
    m.handle_input(&[11], t0);
    let body = assert_violation(&mut m, t0, codes::BAD_FRAME);
    assert_eq!(body.message, "bad_frame: len 11 < 12");
}

#[test]
fn oversized_len_header_is_refused_before_welcome_too() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&(4096u32 + 12 + 1).to_be_bytes());
    header[4] = FrameKind::Welcome as u8;
    m.handle_input(&header, t0);
    let body = assert_violation(&mut m, t0, codes::FRAME_TOO_LARGE);
    assert_eq!(body.message, "frame_too_large: len 4109 > max_body 4096");
}

#[test]
fn body_of_exactly_own_max_body_is_accepted() {
    let (mut m, t0) = welcomed(4);
    let payload = vec![b'z'; 4096 - 5];
    m.handle_input(&task(1, &payload), t0);
    assert_eq!(expect_task(&mut m, t0, 1), payload);
}

// ---------------------------------------------------------------------------
// Property: arbitrary input never breaks the machine's bounds
// ---------------------------------------------------------------------------

/// The worker's own max_body in the property tests.
const P_MAX_BODY: u32 = 128;
/// The manager's max_body announced in WELCOME.
const P_PEER_MAX_BODY: u32 = 100;
const P_HIGH_WATER: usize = 256;
/// Largest read the driver makes.
const P_CHUNK: usize = 32;
/// Room for the few control frames that are not answers to a read frame:
/// one ERROR, one DRAIN, one GOODBYE.
const P_CONTROL_SLACK: usize = 512;

/// Upper bound on queued output (see `prop_machine_invariants`).
fn output_bound(max_in_flight: usize, ticks_since_read: usize) -> usize {
    let result_frame = HEADER_LEN + P_PEER_MAX_BODY as usize;
    // Frames that can be decoded after the last read: the partial frame held
    // before it (less than a whole frame) plus the read itself; every frame
    // is at least 16 bytes.
    let readable = P_CHUNK + HEADER_LEN + P_MAX_BODY as usize;
    let frames_after_last_read = readable / HEADER_LEN + 1;
    // Each read frame is answered by at most ACK + RESULT (a PONG, or a
    // FAILED `draining` RESULT, is smaller).
    let per_frame = HEADER_LEN + result_frame;
    P_HIGH_WATER
        + frames_after_last_read * per_frame
        + max_in_flight * result_frame
        + P_CONTROL_SLACK
        + HEADER_LEN * ticks_since_read
}

#[derive(Debug, Clone)]
enum Piece {
    /// `id: None` takes the next id of a running sequence (unique); `Some`
    /// picks from a small range, so duplicates of in-flight ids happen.
    Task {
        id: Option<u64>,
        ack: bool,
        handler: &'static str,
        payload: Vec<u8>,
    },
    Ping(u64),
    Pong(u64),
    Drain,
    /// Any header (kind, flags, reserved) with a consistent `len`.
    Raw {
        kind: u8,
        flags: u8,
        reserved: u16,
        id: u64,
        body: Vec<u8>,
    },
    Garbage(Vec<u8>),
}

fn arb_clean_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        120 => (prop::option::weighted(0.02, 0u64..8), any::<bool>(),
               prop::sample::select(vec!["echo", "sleep", "x"]),
               prop::collection::vec(any::<u8>(), 0..120))
            .prop_map(|(id, ack, handler, payload)| Piece::Task { id, ack, handler, payload }),
        40 => any::<u64>().prop_map(Piece::Ping),
        20 => any::<u64>().prop_map(Piece::Pong),
        1 => Just(Piece::Drain),
    ]
}

fn arb_dirty_piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        100 => arb_clean_piece(),
        1 => (any::<u8>(), any::<u8>(), prop::sample::select(vec![0u16, 0, 0, 1, 0x8000]),
              0u64..8, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(kind, flags, reserved, id, body)| Piece::Raw { kind, flags, reserved, id, body }),
        1 => prop::collection::vec(any::<u8>(), 1..24).prop_map(Piece::Garbage),
    ]
}

fn encode_pieces(pieces: &[Piece]) -> Vec<u8> {
    let mut stream = Vec::new();
    let mut next_id = 1_000;
    for piece in pieces {
        match piece {
            Piece::Task {
                id,
                ack,
                handler,
                payload,
            } => {
                let id = id.unwrap_or_else(|| {
                    next_id += 1;
                    next_id
                });
                let flags = if *ack { FLAG_ACK_REQUESTED } else { 0 };
                stream.extend(task_frame(id, flags, handler, payload));
            }
            Piece::Ping(nonce) => stream.extend(frame(FrameKind::Ping, 0, *nonce, &[])),
            Piece::Pong(nonce) => stream.extend(frame(FrameKind::Pong, 0, *nonce, &[])),
            Piece::Drain => stream.extend(frame(FrameKind::Drain, 0, 0, &[])),
            Piece::Raw {
                kind,
                flags,
                reserved,
                id,
                body,
            } => {
                let len = (body.len() as u32 + 12).to_be_bytes();
                stream.extend_from_slice(&len);
                stream.push(*kind);
                stream.push(*flags);
                stream.extend_from_slice(&reserved.to_be_bytes());
                stream.extend_from_slice(&id.to_be_bytes());
                stream.extend_from_slice(body);
            }
            Piece::Garbage(bytes) => stream.extend_from_slice(bytes),
        }
    }
    stream
}

/// Well-formed manager traffic, traffic with the odd malformed frame or
/// garbage, or plain random bytes.
fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(arb_clean_piece(), 0..800).prop_map(|p| encode_pieces(&p)),
        1 => prop::collection::vec(arb_dirty_piece(), 0..800).prop_map(|p| encode_pieces(&p)),
        1 => prop::collection::vec(any::<u8>(), 0..2048),
    ]
}

#[derive(Debug, Clone)]
enum Action {
    /// Read up to this many bytes (1..=P_CHUNK), if the machine wants to read.
    Read(usize),
    /// Complete the `n`-th held task (mod the count) with an outcome kind.
    Complete(usize, u8),
    /// The manager reads everything queued (ignored when it has stalled).
    Flush,
    /// Time passes by this many ms; deadlines are handled.
    Tick(u64),
    /// Write GOODBYE if it is due and the output is flushed.
    Goodbye,
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        12 => (1..=P_CHUNK).prop_map(Action::Read),
        6 => (any::<usize>(), 0u8..4).prop_map(|(n, kind)| Action::Complete(n, kind)),
        2 => Just(Action::Flush),
        2 => (0u64..60).prop_map(Action::Tick),
        1 => Just(Action::Goodbye),
    ]
}

/// A driver of one machine, recording what it was handed.
struct Harness {
    m: WorkerMachine,
    now: Instant,
    max_in_flight: usize,
    /// Tasks handed out and not yet completed: (id, payload).
    held: Vec<(u64, Vec<u8>)>,
    closed: bool,
    written: Vec<u8>,
    ticks_since_read: usize,
    acks_expected: usize,
    results_expected: usize,
}

impl Harness {
    fn events(&mut self) -> Result<(), TestCaseError> {
        let mut guard = 0;
        while let Some(event) = poll(&mut self.m, self.now) {
            guard += 1;
            prop_assert!(guard < 100_000, "poll_event never returned None");
            match event {
                Ev::Task {
                    id, payload, ack, ..
                } => {
                    prop_assert!(!self.closed, "a task after Closed");
                    prop_assert!(
                        self.held.iter().all(|(held, _)| *held != id),
                        "task id {} handed out twice while in flight",
                        id
                    );
                    prop_assert!(payload.len() < P_MAX_BODY as usize);
                    self.held.push((id, payload));
                    if ack {
                        self.acks_expected += 1;
                    }
                }
                Ev::Closed(_) => {
                    prop_assert!(!self.closed, "Closed reported twice");
                    self.closed = true;
                }
                Ev::DrainRequested => prop_assert!(!self.closed),
                Ev::Welcomed(_) => prop_assert!(false, "a second Welcomed event"),
            }
        }
        self.check()
    }

    fn check(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.held.len() <= self.max_in_flight);
        prop_assert_eq!(self.m.in_flight(), self.held.len());
        let bound = output_bound(self.max_in_flight, self.ticks_since_read);
        prop_assert!(
            self.m.pending_output().len() <= bound,
            "{} bytes queued, bound {}",
            self.m.pending_output().len(),
            bound
        );
        if self.closed {
            prop_assert_eq!(self.m.phase(), Phase::Closed);
            prop_assert!(!self.m.wants_read());
        }
        if self.m.wants_read() {
            prop_assert!(self.held.len() < self.max_in_flight);
            prop_assert!(self.m.pending_output().len() < P_HIGH_WATER);
        }
        Ok(())
    }

    fn complete(&mut self, index: usize, kind: u8) -> Result<(), TestCaseError> {
        if self.held.is_empty() {
            return Ok(());
        }
        let (id, payload) = self.held.remove(index % self.held.len());
        let big = vec![0xAB; P_PEER_MAX_BODY as usize + 1 + payload.len() % 50];
        let outcome = match kind {
            0 => TaskOutcome::Ok(&payload),
            1 => TaskOutcome::Ok(&[]),
            2 => TaskOutcome::Failed {
                code: codes::HANDLER_FAILED,
                message: "boom",
            },
            _ => TaskOutcome::Ok(&big),
        };
        let open = self.m.phase() != Phase::Closed;
        prop_assert_eq!(self.m.complete_task(id, outcome, self.now), Ok(()));
        if open {
            self.results_expected += 1;
        }
        self.events()
    }

    fn flush(&mut self) {
        let out = self.m.take_output(Vec::new());
        self.written.extend_from_slice(&out);
    }
}

/// One run of `prop_machine_invariants`.
#[derive(Debug, Clone)]
struct Run {
    max_in_flight: u32,
    heartbeat_ms: u32,
    /// False: the manager has stalled and never reads until the end.
    peer_reads: bool,
    stream: Vec<u8>,
    actions: Vec<Action>,
    /// Before which action the worker starts a drain, if it does.
    drain_at: Option<usize>,
    /// Before which action the manager half-closes, if it does.
    eof_at: Option<usize>,
}

fn arb_run() -> impl Strategy<Value = Run> {
    (
        1u32..=4,
        prop::sample::select(vec![0u32, 100]),
        any::<bool>(),
        arb_stream(),
        prop::collection::vec(arb_action(), 0..2000),
        prop::option::weighted(0.3, 0usize..2000),
        prop::option::weighted(0.3, 0usize..2000),
    )
        .prop_map(
            |(max_in_flight, heartbeat_ms, peer_reads, stream, actions, drain_at, eof_at)| Run {
                max_in_flight,
                heartbeat_ms,
                peer_reads,
                stream,
                actions,
                drain_at,
                eof_at,
            },
        )
}

fn run_machine(run: &Run) -> Result<(), TestCaseError> {
    let mut cfg = MachineConfig::new(Hello {
        max_body: P_MAX_BODY,
        ..hello(run.max_in_flight)
    });
    cfg.output_high_water = P_HIGH_WATER;
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(cfg, t0);
    let _ = m.take_output(Vec::new());
    m.handle_input(&welcome(P_PEER_MAX_BODY, run.heartbeat_ms), t0);
    prop_assert!(matches!(poll(&mut m, t0), Some(Ev::Welcomed(_))));
    let mut h = Harness {
        m,
        now: t0,
        max_in_flight: run.max_in_flight as usize,
        held: Vec::new(),
        closed: false,
        written: Vec::new(),
        ticks_since_read: 0,
        acks_expected: 0,
        results_expected: 0,
    };
    let stream = &run.stream;
    let mut pos = 0;
    for (step, action) in run.actions.iter().enumerate() {
        if run.drain_at == Some(step) {
            h.m.start_drain(h.now);
            h.events()?;
        }
        if run.eof_at == Some(step) {
            h.m.handle_eof(h.now);
            h.events()?;
        }
        match action {
            Action::Read(n) => {
                if h.m.wants_read() && pos < stream.len() {
                    let end = (pos + n).min(stream.len());
                    h.m.handle_input(&stream[pos..end], h.now);
                    pos = end;
                    h.ticks_since_read = 0;
                }
            }
            Action::Complete(index, kind) => h.complete(*index, *kind)?,
            Action::Flush => {
                if run.peer_reads {
                    h.flush();
                }
            }
            Action::Tick(ms) => {
                h.now += Duration::from_millis(*ms);
                h.m.handle_timeout(h.now);
                h.ticks_since_read += 1;
            }
            Action::Goodbye => {
                if h.m.phase() == Phase::GoodbyeDue && !h.m.has_output() {
                    prop_assert!(h.m.write_goodbye(1, 2));
                }
            }
        }
        h.events()?;
    }

    // Completing every held task keeps the invariants and empties the window;
    // a draining machine with nothing in flight owes GOODBYE, unless part of
    // a frame is in (its rest still arrives, and its TASK is answered first).
    while !h.held.is_empty() {
        h.complete(0, 0)?;
    }
    prop_assert_eq!(h.m.in_flight(), 0);
    prop_assert!(
        !matches!(h.m.phase(), Phase::Draining(_)) || h.m.buffered() > 0,
        "still {:?} with nothing in flight and nothing buffered",
        h.m.phase()
    );
    h.flush();

    // Everything written is well-formed and matches what was asked for.
    let out = frames(&h.written);
    let results = result_frames(&out);
    let draining = results
        .iter()
        .filter(|f| f.flags == FLAG_FAILED && error_body(f).code == codes::DRAINING)
        .count();
    prop_assert_eq!(draining as u64, h.m.tasks_refused_draining());
    prop_assert_eq!(results.len() - draining, h.results_expected);
    prop_assert_eq!(
        out.iter().filter(|f| f.kind == FrameKind::Ack).count(),
        h.acks_expected
    );
    for result in &results {
        prop_assert!(
            result.body.len() <= P_PEER_MAX_BODY as usize,
            "a RESULT of {} bytes exceeds the manager's max_body",
            result.body.len()
        );
    }
    for f in &out {
        prop_assert!(
            !matches!(
                f.kind,
                FrameKind::Hello | FrameKind::Welcome | FrameKind::Task
            ),
            "a worker never sends {}",
            f.kind
        );
    }
    let drains = out.iter().filter(|f| f.kind == FrameKind::Drain).count();
    let drain_started = run.drain_at.is_some_and(|at| at < run.actions.len());
    prop_assert!(
        drains <= usize::from(drain_started),
        "{} DRAIN frames",
        drains
    );
    for last_kind in [FrameKind::Error, FrameKind::Goodbye] {
        let count = out.iter().filter(|f| f.kind == last_kind).count();
        prop_assert!(count <= 1, "{} {} frames", count, last_kind);
        if count == 1 {
            prop_assert_eq!(
                out.last().map(|f| f.kind),
                Some(last_kind),
                "nothing may follow {}",
                last_kind
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary streams after a valid WELCOME, read in arbitrary chunks only
    /// while the machine wants to read, with arbitrary completions, clock
    /// steps, drains and EOF, against a manager that reads its input or one
    /// that has stalled: no panic, never more than `max_in_flight` tasks held
    /// (and no id held twice), and queued output never above
    /// [`output_bound`]: the high-water mark, plus the answers to what one
    /// read can complete, plus the results of a full window, a few control
    /// frames, and one PING per deadline tick since the last read.
    #[test]
    fn prop_machine_invariants(run in arb_run()) {
        run_machine(&run)?;
    }

    /// Splitting the same frames at arbitrary points delivers the same tasks.
    #[test]
    fn prop_split_points_do_not_change_the_tasks_delivered(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        step_ms in 0u64..50,
    ) {
        let mut stream = Vec::new();
        for (id, payload) in payloads.iter().enumerate() {
            stream.extend(task(id as u64, payload));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let (mut m, mut now) = welcomed(64);
        let mut got = Vec::new();
        for pair in points.windows(2) {
            now += Duration::from_millis(step_ms);
            m.handle_input(&stream[pair[0]..pair[1]], now);
            while let Some(event) = poll(&mut m, now) {
                match event {
                    Ev::Task { id, payload, .. } => got.push((id, payload)),
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
        }
        let want: Vec<(u64, Vec<u8>)> = payloads.into_iter().enumerate().map(|(i, p)| (i as u64, p)).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(m.close_reason(), None);
    }
}

// ---------------------------------------------------------------------------
// The task handed out last (answered at once without touching the id set)
// ---------------------------------------------------------------------------

#[test]
fn a_duplicate_of_the_task_just_handed_out_is_duplicate_task_id() {
    let (mut m, t0) = welcomed(4);
    let mut input = task(42, b"a");
    input.extend(task(42, b"b"));
    m.handle_input(&input, t0);
    expect_task(&mut m, t0, 42);
    assert_eq!(m.in_flight(), 1);
    assert_violation(&mut m, t0, codes::DUPLICATE_TASK_ID);
}

#[test]
fn tasks_held_and_the_one_just_handed_out_complete_in_any_order() {
    let (mut m, t0) = welcomed(3);
    for id in 1..=3 {
        m.handle_input(&task(id, b"x"), t0);
    }
    for id in 1..=3 {
        expect_task(&mut m, t0, id);
        assert_eq!(m.in_flight(), id as usize);
        assert!(m.is_in_flight(id));
    }
    // The window is full; the next task waits.
    m.handle_input(&task(4, b"x"), t0);
    assert_eq!(poll(&mut m, t0), None);
    assert!(!m.wants_read());
    m.complete_task(3, TaskOutcome::Ok(b""), t0).unwrap();
    assert_eq!(
        m.complete_task(3, TaskOutcome::Ok(b""), t0),
        Err(NotInFlight(3))
    );
    expect_task(&mut m, t0, 4);
    for id in [1, 4, 2] {
        m.complete_task(id, TaskOutcome::Ok(b""), t0).unwrap();
        assert!(!m.is_in_flight(id));
    }
    assert_eq!(m.in_flight(), 0);
    let ids: Vec<u64> = take(&mut m).iter().map(|f| f.id).collect();
    assert_eq!(ids, [3, 1, 4, 2]);
}

/// A RESULT written in place leaves the drain check to the next poll: GOODBYE
/// is due once per batch, when the poll finds nothing more to take.
#[test]
fn an_in_place_result_ends_a_drain_at_the_next_poll() {
    let (mut m, t0) = welcomed(4);
    m.handle_input(&task(1, b"a"), t0);
    expect_task(&mut m, t0, 1);
    m.start_drain(t0);
    m.begin_result(1).extend_from_slice(b"a");
    assert_eq!(m.commit_result(1, t0), Ok(1));
    assert_eq!(m.phase(), Phase::Draining(DrainOrigin::Worker));
    assert_eq!(poll(&mut m, t0), None);
    assert_eq!(m.phase(), Phase::GoodbyeDue);
    let out = take(&mut m);
    assert_eq!(kinds(&out), [FrameKind::Drain, FrameKind::Result]);
    assert_eq!(out[1].body, b"a");
}

/// `poll_input` acts on the same frames as `poll_event` would, whatever the
/// split of the stream, and keeps the undecoded rest itself.
#[test]
fn poll_input_matches_poll_event_for_every_split() {
    let mut stream = task_frame(1, FLAG_ACK_REQUESTED, "echo", b"one");
    stream.extend(frame(FrameKind::Ping, 0, 5, b""));
    stream.extend(task(2, b"two"));
    stream.extend(task(3, b"three"));
    let run = |cuts: &[usize]| {
        let (mut m, t0) = welcomed(2);
        let mut events = Vec::new();
        if cuts.is_empty() {
            m.handle_input(&stream, t0);
            events.extend(poll_all(&mut m, t0));
        }
        let mut points = vec![0];
        points.extend(cuts);
        points.push(stream.len());
        for piece in points.windows(2).filter(|_| !cuts.is_empty()) {
            let mut input = &stream[piece[0]..piece[1]];
            while let Some(next) = m.poll_input(&mut input, t0) {
                match next {
                    Input::Task(at) => {
                        let task = m.task(at);
                        events.push(Ev::Task {
                            id: task.id,
                            handler: task.handler_name().to_owned(),
                            payload: task.payload.to_vec(),
                            ack: task.ack_requested,
                        });
                    }
                    Input::Event(event) => panic!("unexpected {event:?}"),
                }
            }
            assert!(input.is_empty(), "the rest is kept by the machine");
        }
        // Window of 2: task 3 waits until one completes.
        m.complete_task(1, TaskOutcome::Ok(b""), t0).unwrap();
        events.extend(poll_all(&mut m, t0));
        (events, take(&mut m), m.in_flight())
    };
    let whole = run(&[]);
    assert_eq!(whole.0.len(), 3);
    assert_eq!(whole.2, 2);
    for cut in 0..=stream.len() {
        assert_eq!(run(&[cut]), whole, "split at {cut}");
        for second in cut..=stream.len() {
            assert_eq!(run(&[cut, second]), whole, "split at {cut} and {second}");
        }
    }
}

/// A RESULT begun for a task read from the driver's input, and one whose
/// frame straddled two reads (read from the receive buffer), both carry
/// the payload to the handler and the body to the wire.
#[test]
fn begin_task_reads_the_task_where_its_frame_lies() {
    let (mut m, t0) = welcomed(4);
    let mut stream = task(1, b"in place");
    stream.extend(task(2, b"straddling"));
    let cut = stream.len() - 3;
    for (piece, id) in [(&stream[..cut], 1), (&stream[cut..], 2)] {
        let mut input = piece;
        let Some(Input::Task(at)) = m.poll_input(&mut input, t0) else {
            panic!("task {id} expected");
        };
        let (task, out) = m.begin_task(at);
        assert_eq!(task.id, id);
        let payload = task.payload.to_vec();
        out.extend_from_slice(&payload);
        assert_eq!(m.commit_result(id, t0), Ok(payload.len()));
        assert_eq!(m.poll_input(&mut input, t0), None);
        assert!(input.is_empty());
    }
    let out = take(&mut m);
    assert_eq!(
        out.iter()
            .map(|f| (f.id, f.body.as_slice()))
            .collect::<Vec<_>>(),
        [(1, &b"in place"[..]), (2, &b"straddling"[..])]
    );
}

#[test]
fn results_count_as_unwritten_until_the_output_holding_them_is_written() {
    let (mut m, t0) = welcomed(8);
    for id in 1..=3 {
        m.handle_input(&task(id, b"x"), t0);
        expect_task(&mut m, t0, id);
    }
    m.complete_task(1, TaskOutcome::Ok(b"x"), t0).unwrap();
    m.complete_task(2, TaskOutcome::Ok(b"x"), t0).unwrap();
    assert_eq!(m.results_unwritten(), 2);
    let first = m.take_output(Vec::new());
    assert_eq!(m.results_unwritten(), 2, "taken is not written");
    m.complete_task(
        3,
        TaskOutcome::Failed {
            code: "x",
            message: "y",
        },
        t0,
    )
    .unwrap();
    assert_eq!(m.results_unwritten(), 3);
    // Taking again means the first output was written in full.
    let _second = m.take_output(first);
    assert_eq!(m.results_unwritten(), 1);
    m.output_written();
    assert_eq!(m.results_unwritten(), 0);
    // A TASK refused while draining is a RESULT to deliver too.
    m.start_drain(t0);
    m.handle_input(&task(9, b"x"), t0);
    let _ = poll(&mut m, t0);
    assert_eq!(m.results_unwritten(), 1);
}

#[test]
fn a_huge_invalid_welcome_is_refused_with_a_capped_message() {
    let t0 = Instant::now();
    let mut m = WorkerMachine::new(config(4), t0);
    let _ = take(&mut m);
    // serde quotes the offending value in its error.
    let body = format!(
        r#"{{"protocol":"{}\nFORGED","manager":"m","max_body":1024,"heartbeat_ms":0}}"#,
        "p".repeat(3_000)
    );
    m.handle_input(&frame(FrameKind::Welcome, 0, 0, body.as_bytes()), t0);
    match poll(&mut m, t0) {
        Some(Ev::Closed(CloseReason::ProtocolViolation { code, message })) => {
            assert_eq!(code, codes::BAD_FRAME);
            assert!(message.len() < 300, "{} bytes", message.len());
            assert!(!message.contains('\n'), "{message}");
        }
        other => panic!("expected bad_frame, got {other:?}"),
    }
}
