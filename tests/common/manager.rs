//! The manager's side of a test: tasks sent to an agent and the close of
//! its session.

use std::process::ExitStatus;

use ringworker::manager::{ManagerConn, ManagerEvent};
use ringworker::runtime::RuntimeMode;

use super::process::Spawned;
use super::TIMEOUT;

/// Send an echo task and check its RESULT.
pub fn echo(conn: &mut ManagerConn, id: u64) {
    let payload = format!("task {id}");
    conn.send_task(id, "echo", payload.as_bytes(), false)
        .expect("send the task");
    loop {
        match conn.next_event(TIMEOUT).expect("a RESULT") {
            ManagerEvent::Result {
                id: got,
                failed,
                body,
            } => {
                assert_eq!((got, failed), (id, false));
                assert_eq!(body, payload.as_bytes());
                return;
            }
            ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } | ManagerEvent::Ack { .. } => {}
            other => panic!("expected RESULT, got {other:?}"),
        }
    }
}

/// Follow a draining session to its GOODBYE (or its end), then close it.
pub fn until_goodbye(mut conn: ManagerConn) {
    loop {
        match conn.next_event(TIMEOUT) {
            Ok(ManagerEvent::Goodbye { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// SIGTERM, follow the drain to GOODBYE, and return the exit status.
pub fn stop(agent: &mut Spawned, conn: ManagerConn) -> ExitStatus {
    agent.signal("TERM");
    until_goodbye(conn);
    agent.exit_within(TIMEOUT)
}

/// Follow a draining session to its GOODBYE and check its byte counts
/// against this side's (PROTOCOL.md, "Byte accounting"), then read the
/// connection to its end: nothing follows GOODBYE but TLS's close.
pub fn expect_exact_goodbye(conn: &mut ManagerConn) {
    let (counts, goodbye_len) = loop {
        match conn.next_event(TIMEOUT).expect("the drain completes") {
            ManagerEvent::Goodbye { counts, frame_len } => {
                break (counts.expect("GOODBYE has counts"), frame_len)
            }
            ManagerEvent::Drain | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(counts.bytes_received, conn.bytes_sent(), "worker received");
    assert_eq!(
        counts.bytes_sent,
        conn.expected_goodbye_bytes_sent(goodbye_len),
        "worker sent"
    );
    let rest = conn.read_to_end(TIMEOUT).expect("the worker closes");
    assert!(rest.is_empty(), "nothing after GOODBYE: {rest:?}");
}

/// Stop an in-process agent: every connection drains to GOODBYE and is
/// closed, and the runtime ends with a clean report.
pub fn stop_cleanly(agent: &mut dyn RuntimeMode, mut conns: Vec<ManagerConn>) {
    agent.request_stop();
    for conn in &mut conns {
        let events = conn.read_to_end(TIMEOUT).expect("the worker closes");
        assert!(
            matches!(events.last(), Some(ManagerEvent::Goodbye { .. })),
            "{events:?}"
        );
    }
    drop(conns);
    let report = agent.wait();
    assert!(report.is_clean(), "{report:?}");
}
