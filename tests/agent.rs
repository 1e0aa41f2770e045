//! The agent against the manager side, over real sockets, once per runtime.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};

use common::{accept, plan, start, tcp_listener, unix_listener, TIMEOUT};
use ringworker::manager::{verify::verify, ManagerConn, ManagerEvent};
use ringworker::protocol::frame::FrameKind;
use ringworker::runtime::RuntimeKind;
use ringworker::transport::BlockingListener;

for_each_runtime!(
    handlers_give_exact_results_over_tcp,
    handlers_give_exact_results_over_unix_socket,
    ack_precedes_result_when_requested,
    ten_thousand_mixed_tasks_none_lost,
    back_pressure_holds_at_most_max_in_flight,
    sleep_does_not_delay_a_later_echo,
    four_gib_len_is_refused_with_frame_too_large,
    unknown_handler_and_bad_payload_are_failed_results,
    request_stop_finishes_tasks_then_goodbye_with_exact_bytes,
    manager_drain_finishes_tasks_and_says_goodbye,
    hello_carries_the_worker_identity,
    large_and_small_frames_interleave_exactly,
    tasks_sent_as_the_drain_ends_are_answered_or_reported_unread,
    a_zero_drain_timeout_with_nothing_in_flight_closes_at_once_and_is_clean,
);

fn result(conn: &mut ManagerConn) -> (u64, bool, Vec<u8>) {
    loop {
        match conn.next_event(TIMEOUT).expect("an event") {
            ManagerEvent::Result { id, failed, body } => return (id, failed, body),
            ManagerEvent::Ack { .. } | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("expected RESULT, got {other:?}"),
        }
    }
}

fn error_body(body: &[u8]) -> (String, String) {
    let value: serde_json::Value = serde_json::from_slice(body).expect("FAILED body is JSON");
    (
        value["code"].as_str().unwrap_or_default().to_owned(),
        value["message"].as_str().unwrap_or_default().to_owned(),
    )
}

fn exact_results(kind: RuntimeKind, listener: BlockingListener) {
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let cases: [(&str, &[u8], Vec<u8>); 5] = [
        ("echo", b"hello, worker", b"hello, worker".to_vec()),
        ("sink", b"discard me", Vec::new()),
        (
            "crc32c",
            b"123456789",
            0xE306_9283u32.to_be_bytes().to_vec(),
        ),
        (
            "sha256",
            b"abc",
            vec![
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
                0xf2, 0x00, 0x15, 0xad,
            ],
        ),
        ("sleep", &10u32.to_be_bytes(), Vec::new()),
    ];
    for (i, (handler, payload, expected)) in cases.iter().enumerate() {
        conn.send_task(i as u64 + 1, handler, payload, false)
            .unwrap();
        let (id, failed, body) = result(&mut conn);
        assert_eq!(id, i as u64 + 1);
        assert!(
            !failed,
            "{handler} failed: {:?}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(&body, expected, "{handler}");
    }
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn handlers_give_exact_results_over_tcp(kind: RuntimeKind) {
    exact_results(kind, tcp_listener());
}

fn handlers_give_exact_results_over_unix_socket(kind: RuntimeKind) {
    exact_results(kind, unix_listener());
}

fn hello_carries_the_worker_identity(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 2, 7));
    let mut sessions = HashSet::new();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let (conn, hello) = accept(&listener);
        assert_eq!(hello.protocol, 1);
        assert_eq!(hello.worker, "test-agent");
        assert_eq!(hello.runtime, kind.as_str());
        assert_eq!(hello.max_in_flight, 7);
        assert_eq!(hello.max_body, 16 * 1024 * 1024);
        assert_eq!(
            hello.handlers,
            ["crc32c", "echo", "sha256", "sink", "sleep"]
        );
        assert_eq!(hello.token, None);
        sessions.insert(hello.session);
        conns.push(conn);
    }
    assert_eq!(sessions, HashSet::from([0, 1]));
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn ack_precedes_result_when_requested(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    for id in 1..=20u64 {
        conn.send_task(id, "echo", &id.to_be_bytes(), id % 2 == 0)
            .unwrap();
    }
    let mut acked = HashSet::new();
    let mut answered = HashSet::new();
    while answered.len() < 20 {
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Ack { id } => {
                assert!(id % 2 == 0, "ACK for task {id} that did not ask for one");
                assert!(!answered.contains(&id), "ACK for {id} after its RESULT");
                assert!(acked.insert(id), "second ACK for {id}");
            }
            ManagerEvent::Result { id, failed, body } => {
                assert!(!failed);
                assert_eq!(body, id.to_be_bytes());
                if id % 2 == 0 {
                    assert!(acked.contains(&id), "RESULT for {id} before its ACK");
                }
                assert!(answered.insert(id));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked.len(), 10);
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn ten_thousand_mixed_tasks_none_lost(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let handlers = ["echo", "sink", "crc32c", "sha256"];
    let mut outstanding: HashMap<u64, (&str, Vec<u8>)> = HashMap::new();
    let total = 10_000u64;
    let window = 48;
    let mut next = 1u64;
    let mut ok = 0;
    while ok < total {
        while next <= total && outstanding.len() < window {
            let handler = handlers[(next % 4) as usize];
            let payload: Vec<u8> = (0..(next % 300) as usize)
                .map(|i| (i as u64 ^ next) as u8)
                .collect();
            conn.queue_task(next, handler, &payload, next % 7 == 0)
                .unwrap();
            outstanding.insert(next, (handler, payload));
            next += 1;
        }
        conn.flush().unwrap();
        let (id, failed, body) = result(&mut conn);
        let (handler, payload) = outstanding
            .remove(&id)
            .expect("RESULT for a task in flight");
        assert!(!failed, "task {id} failed");
        assert!(
            verify(handler, &payload, &body),
            "task {id} ({handler}) wrong"
        );
        ok += 1;
    }
    assert!(outstanding.is_empty());
    assert_eq!(agent.stats().tasks_done(), total);
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn back_pressure_holds_at_most_max_in_flight(kind: RuntimeKind) {
    let max_in_flight = 8u32;
    let listener = tcp_listener();
    let mut agent = start(
        kind,
        plan(listener.local_endpoint().unwrap(), 1, max_in_flight),
    );
    let (mut conn, _) = accept(&listener);
    let total = 10 * u64::from(max_in_flight);
    // All at once: the agent must take them max_in_flight at a time.
    for id in 1..=total {
        conn.queue_task(id, "sleep", &40u32.to_be_bytes(), true)
            .unwrap();
    }
    conn.flush().unwrap();
    let (mut acked, mut answered, mut peak) = (0u64, 0u64, 0u64);
    while answered < total {
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Ack { .. } => {
                acked += 1;
                peak = peak.max(acked - answered);
                assert!(
                    acked - answered <= u64::from(max_in_flight),
                    "agent holds {} tasks, max_in_flight {max_in_flight}",
                    acked - answered
                );
            }
            ManagerEvent::Result { failed, .. } => {
                assert!(!failed);
                answered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked, total, "every task accepted, none dropped");
    assert_eq!(peak, u64::from(max_in_flight), "the window was used fully");
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn sleep_does_not_delay_a_later_echo(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    conn.send_task(1, "sleep", &500u32.to_be_bytes(), false)
        .unwrap();
    conn.send_task(2, "echo", b"fast", false).unwrap();
    let first = result(&mut conn);
    assert_eq!(
        first,
        (2, false, b"fast".to_vec()),
        "the echo is answered while the sleep runs"
    );
    let second = result(&mut conn);
    assert_eq!(second, (1, false, Vec::new()));
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn four_gib_len_is_refused_with_frame_too_large(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let mut header = Vec::new();
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    header.extend_from_slice(&[FrameKind::Task as u8, 0, 0, 0]);
    header.extend_from_slice(&1u64.to_be_bytes());
    conn.send_raw_bytes(&header).unwrap();
    match conn.next_event(TIMEOUT).unwrap() {
        ManagerEvent::Error { code, message } => {
            assert_eq!(code, "frame_too_large");
            assert_eq!(
                message,
                "frame_too_large: len 4294967295 > max_body 16777216"
            );
        }
        other => panic!("expected ERROR frame_too_large, got {other:?}"),
    }
    // The worker closes after ERROR; it then redials (the error is not a refusal).
    assert!(matches!(
        conn.next_event(TIMEOUT),
        Err(ringworker::manager::ManagerError::Closed)
    ));
    let (_again, hello) = accept(&listener);
    assert_eq!(hello.session, 0);
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn unknown_handler_and_bad_payload_are_failed_results(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    conn.send_task(1, "no-such-handler", b"x", false).unwrap();
    let (id, failed, body) = result(&mut conn);
    assert_eq!((id, failed), (1, true));
    assert_eq!(error_body(&body).0, "unknown_handler");
    conn.send_task(2, "sleep", &[0, 0, 1], false).unwrap();
    let (id, failed, body) = result(&mut conn);
    assert_eq!((id, failed), (2, true));
    assert_eq!(error_body(&body).0, "bad_payload");
    // The connection stays up.
    conn.send_task(3, "echo", b"still here", false).unwrap();
    assert_eq!(result(&mut conn), (3, false, b"still here".to_vec()));
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

/// Read everything after a drain started: RESULTs, DRAIN, GOODBYE, EOF; check
/// the byte accounting exactly.
fn read_drain_and_check_bytes(
    conn: &mut ManagerConn,
    expect_results: &mut HashSet<u64>,
    expect_drain: bool,
) {
    let mut saw_drain = false;
    let goodbye = loop {
        match conn.next_event(TIMEOUT).expect("drain completes") {
            ManagerEvent::Result { id, failed, .. } => {
                assert!(!failed, "accepted task {id} must finish, not fail");
                assert!(expect_results.remove(&id), "unexpected RESULT {id}");
            }
            ManagerEvent::Drain => saw_drain = true,
            ManagerEvent::Goodbye { counts, frame_len } => {
                break (counts.expect("GOODBYE has counts"), frame_len)
            }
            ManagerEvent::Ack { .. } | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(saw_drain, expect_drain, "DRAIN sent by the worker");
    assert!(
        expect_results.is_empty(),
        "tasks without RESULT: {expect_results:?}"
    );
    let rest = conn
        .read_to_end(TIMEOUT)
        .expect("worker closes after GOODBYE");
    assert!(rest.is_empty(), "nothing after GOODBYE: {rest:?}");
    let (counts, goodbye_len) = goodbye;
    assert_eq!(
        counts.bytes_received,
        conn.bytes_sent(),
        "worker received == manager sent"
    );
    assert_eq!(
        counts.bytes_sent + goodbye_len as u64,
        conn.bytes_received(),
        "worker sent + GOODBYE == manager received"
    );
}

fn request_stop_finishes_tasks_then_goodbye_with_exact_bytes(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let mut pending = HashSet::new();
    for id in 1..=10u64 {
        conn.send_task(id, "sleep", &200u32.to_be_bytes(), true)
            .unwrap();
        pending.insert(id);
    }
    // Wait until all are accepted, then stop.
    let mut acks = 0;
    while acks < 10 {
        if let ManagerEvent::Ack { .. } = conn.next_event(TIMEOUT).unwrap() {
            acks += 1;
        }
    }
    agent.request_stop();
    read_drain_and_check_bytes(&mut conn, &mut pending, true);
    let report = agent.wait();
    assert!(report.is_clean(), "{report:?}");
    // The agent's own counters agree with the manager's, to the byte.
    assert_eq!(agent.bytes_sent(), conn.bytes_received());
    assert_eq!(agent.bytes_received(), conn.bytes_sent());
    let session = &agent.stats().sessions[0];
    assert_eq!(session.bytes_sent(), conn.bytes_received());
    assert_eq!(session.bytes_received(), conn.bytes_sent());
    assert_eq!(session.tasks_done(), 10);
}

fn manager_drain_finishes_tasks_and_says_goodbye(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let mut pending = HashSet::new();
    for id in 1..=5u64 {
        conn.queue_task(id, "sleep", &100u32.to_be_bytes(), false)
            .unwrap();
        pending.insert(id);
    }
    conn.flush().unwrap();
    conn.send_drain().unwrap();
    read_drain_and_check_bytes(&mut conn, &mut pending, false);
    drop(conn);
    // After a manager drain the worker redials.
    let (_conn, hello) = accept(&listener);
    assert_eq!(hello.session, 0);
    assert!(agent.stats().reconnects_total() >= 1);
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

/// Runs of large frames (received straight into the frame buffer on the uring
/// runtime) alternate with runs of small ones (shared buffers), pipelined: every
/// result exact, in any order, and the byte accounting exact at the end.
fn large_and_small_frames_interleave_exactly(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let mut sizes = Vec::new();
    // It ends on large frames, so the stop comes while frames are received
    // directly.
    for (count, size) in [
        (6, 300_000),
        (100, 0),
        (3, 200_000),
        (100, 0),
        (5, 70_000),
        (50, 0),
        (4, 300_000),
    ] {
        sizes.extend(std::iter::repeat_n(size, count));
    }
    let mut outstanding: HashMap<u64, Vec<u8>> = HashMap::new();
    let total = sizes.len() as u64;
    let mut next = 1u64;
    let mut done = 0;
    while done < total {
        // A few large frames at a time, so neither side's socket buffers
        // fill while the other is not reading.
        while next <= total && outstanding.len() < 3 {
            let size = match sizes[next as usize - 1] {
                0 => (next % 300) as usize,
                n => n,
            };
            let payload: Vec<u8> = (0..size).map(|i| ((i as u64 * 7) ^ next) as u8).collect();
            conn.queue_task(next, "echo", &payload, false).unwrap();
            outstanding.insert(next, payload);
            next += 1;
        }
        conn.flush().unwrap();
        let (id, failed, body) = result(&mut conn);
        let payload = outstanding
            .remove(&id)
            .expect("RESULT for a task in flight");
        assert!(!failed, "task {id} failed");
        assert!(
            body == payload,
            "task {id}: echo of {} bytes wrong",
            payload.len()
        );
        done += 1;
    }
    agent.request_stop();
    read_drain_and_check_bytes(&mut conn, &mut HashSet::new(), true);
    assert!(agent.wait().is_clean());
    assert_eq!(agent.stats().tasks_done(), total);
}

/// A manager that answers every RESULT of a draining worker with new TASKs
/// races the worker's GOODBYE. Whatever the timing, every TASK the worker
/// read (the GOODBYE's `bytes_received` covers it) has its RESULT before
/// GOODBYE, and no TASK beyond that count gets one. Several rounds, since the
/// outcome of the race varies from one to the next.
fn tasks_sent_as_the_drain_ends_are_answered_or_reported_unread(kind: RuntimeKind) {
    for round in 0..8 {
        let listener = tcp_listener();
        let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
        let (mut conn, _) = accept(&listener);
        // Where each TASK ends in the manager's byte stream.
        let mut task_end: Vec<(u64, u64)> = Vec::new();
        for id in 1..=4u64 {
            conn.send_task(id, "sleep", &(20 + 10 * id as u32).to_be_bytes(), true)
                .unwrap();
            task_end.push((id, conn.bytes_sent()));
        }
        let mut acks = 0;
        while acks < 4 {
            if let ManagerEvent::Ack { .. } = conn.next_event(TIMEOUT).unwrap() {
                acks += 1;
            }
        }
        agent.request_stop();
        let mut next = 100u64;
        let mut answered = HashSet::new();
        let goodbye = loop {
            match conn.next_event(TIMEOUT).expect("drain completes") {
                ManagerEvent::Result { id, .. } => {
                    assert!(answered.insert(id), "round {round}: two RESULTs for {id}");
                    // Reply at once, as a busy manager does: two new TASKs
                    // for each accepted one (those answered `draining` get
                    // none). A write that fails because the worker has
                    // closed is fine.
                    let replies = if id <= 4 { 2 } else { 0 };
                    for _ in 0..replies {
                        if conn.send_task(next, "echo", b"late", false).is_ok() {
                            task_end.push((next, conn.bytes_sent()));
                        }
                        next += 1;
                    }
                }
                ManagerEvent::Goodbye { counts, .. } => break counts.expect("GOODBYE has counts"),
                ManagerEvent::Drain | ManagerEvent::Ack { .. } | ManagerEvent::Ping { .. } => {}
                other => panic!("round {round}: unexpected {other:?}"),
            }
        };
        eprintln!(
            "round {round}: goodbye {} task_end {task_end:?} answered {answered:?}",
            goodbye.bytes_received
        );
        for &(id, end) in &task_end {
            if end <= goodbye.bytes_received {
                assert!(
                    answered.contains(&id),
                    "round {round}: TASK {id} was read (it ends at byte {end}, GOODBYE says {} \
                     received) but has no RESULT",
                    goodbye.bytes_received
                );
            } else {
                assert!(
                    !answered.contains(&id),
                    "round {round}: TASK {id} answered but not counted as received"
                );
            }
        }
        for id in 1..=4u64 {
            assert!(
                answered.contains(&id),
                "round {round}: accepted task {id} lost"
            );
        }
        drop(conn);
        let report = agent.wait();
        assert!(report.is_clean(), "round {round}: {report:?}");
    }
}

/// `--drain-timeout 0` bounds the whole drain at zero: the connection is
/// closed at once, without waiting to write DRAIN or GOODBYE. With every
/// RESULT written before the stop, nothing is abandoned or undelivered, so
/// the stop is clean; the log says GOODBYE was not written.
fn a_zero_drain_timeout_with_nothing_in_flight_closes_at_once_and_is_clean(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut plan = plan(listener.local_endpoint().unwrap(), 1, 64);
    plan.drain_timeout = std::time::Duration::ZERO;
    let mut agent = start(kind, plan);
    let (mut conn, _) = accept(&listener);
    conn.send_task(1, "echo", b"one", false).unwrap();
    assert_eq!(result(&mut conn), (1, false, b"one".to_vec()));
    let stopped = std::time::Instant::now();
    agent.request_stop();
    let events = conn.read_to_end(TIMEOUT).unwrap_or_default();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ManagerEvent::Result { .. })),
        "{events:?}"
    );
    let report = agent.wait();
    assert!(
        stopped.elapsed() < std::time::Duration::from_secs(1),
        "a zero drain took {:?}",
        stopped.elapsed()
    );
    assert!(report.is_clean(), "{report:?}");
    let why = agent.stats().sessions[0].last_error().unwrap_or_default();
    assert!(why.contains("every RESULT was written"), "{why}");
}
