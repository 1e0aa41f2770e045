//! A library handler that answers from another thread (`register_later`),
//! over real sockets, once per runtime: its answers arrive, other tasks are
//! not held up meanwhile, a dropped answer fails its task, and a drain waits
//! for answers still to come.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{accept, plan, start, tcp_listener, TIMEOUT};
use ringworker::handlers::{HandlerRegistry, Later, LaterHandler, TaskFailure};
use ringworker::manager::{ManagerConn, ManagerEvent};
use ringworker::runtime::RuntimeKind;

for_each_runtime!(
    answers_from_other_threads_arrive_and_do_not_hold_up_others,
    a_dropped_or_failed_answer_is_a_failed_result,
    a_drain_waits_for_an_answer_still_to_come,
);

/// Answers on a thread of its own after the number of milliseconds the
/// payload's first byte gives, with the payload reversed; `drop` drops the
/// answer, `fail` fails it.
struct Slow;

impl LaterHandler for Slow {
    fn start(&self, payload: &[u8], answer: Later) {
        let payload = payload.to_vec();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(u64::from(payload[0])));
            match &payload[1..] {
                b"drop" => drop(answer),
                b"fail" => answer.fail(TaskFailure::bad_payload("told to fail")),
                rest => answer.ok(rest.iter().rev().copied().collect()),
            }
        });
    }
}

fn registry() -> HandlerRegistry {
    let mut handlers = HandlerRegistry::with_builtins();
    handlers.register_later("slow", Slow).unwrap();
    handlers
}

fn result(conn: &mut ManagerConn) -> (u64, bool, Vec<u8>) {
    loop {
        match conn.next_event(TIMEOUT).expect("an event") {
            ManagerEvent::Result { id, failed, body } => return (id, failed, body),
            ManagerEvent::Ack { .. }
            | ManagerEvent::Ping { .. }
            | ManagerEvent::Pong { .. }
            | ManagerEvent::Drain => {}
            other => panic!("expected RESULT, got {other:?}"),
        }
    }
}

fn task(delay_ms: u8, body: &[u8]) -> Vec<u8> {
    let mut payload = vec![delay_ms];
    payload.extend_from_slice(body);
    payload
}

fn answers_from_other_threads_arrive_and_do_not_hold_up_others(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut p = plan(listener.local_endpoint().unwrap(), 1, 64);
    p.handlers = registry();
    let mut agent = start(kind, p);
    let (mut conn, hello) = accept(&listener);
    assert!(hello.handlers.iter().any(|h| h == "slow"), "{hello:?}");
    conn.send_task(1, "slow", &task(200, b"abc"), false)
        .unwrap();
    conn.send_task(2, "echo", b"fast", false).unwrap();
    assert_eq!(result(&mut conn), (2, false, b"fast".to_vec()));
    assert_eq!(result(&mut conn), (1, false, b"cba".to_vec()));
    // Many at once, answered in the order their threads finish.
    for id in 10..40u64 {
        let delay = (40 - id) as u8;
        conn.send_task(id, "slow", &task(delay, &id.to_be_bytes()), false)
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 10..40 {
        let (id, failed, body) = result(&mut conn);
        assert!(!failed);
        let mut expected = id.to_be_bytes().to_vec();
        expected.reverse();
        assert_eq!(body, expected);
        seen.push(id);
    }
    seen.sort_unstable();
    assert_eq!(seen, (10..40).collect::<Vec<_>>());
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn a_dropped_or_failed_answer_is_a_failed_result(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut p = plan(listener.local_endpoint().unwrap(), 1, 64);
    p.handlers = registry();
    let mut agent = start(kind, p);
    let (mut conn, _) = accept(&listener);
    conn.send_task(1, "slow", &task(5, b"drop"), false).unwrap();
    let (id, failed, body) = result(&mut conn);
    assert_eq!((id, failed), (1, true));
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["code"], "handler_failed", "{value}");
    conn.send_task(2, "slow", &task(5, b"fail"), false).unwrap();
    let (id, failed, body) = result(&mut conn);
    assert_eq!((id, failed), (2, true));
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(value["code"], "bad_payload", "{value}");
    assert_eq!(value["message"], "told to fail", "{value}");
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

fn a_drain_waits_for_an_answer_still_to_come(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut p = plan(listener.local_endpoint().unwrap(), 1, 64);
    p.handlers = registry();
    let mut agent = start(kind, p);
    let (mut conn, _) = accept(&listener);
    conn.send_task(1, "slow", &task(250, b"late"), false)
        .unwrap();
    // Give the task time to reach the handler, then stop the agent.
    std::thread::sleep(Duration::from_millis(50));
    agent.request_stop();
    assert_eq!(result(&mut conn), (1, false, b"etal".to_vec()));
    let events = conn.read_to_end(TIMEOUT).unwrap_or_default();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, ManagerEvent::Goodbye { .. })),
        "{events:?}"
    );
    assert!(agent.wait().is_clean());
}
