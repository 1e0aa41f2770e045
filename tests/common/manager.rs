//! The manager's side of a test: tasks sent to an agent and the close of
//! its session.

use std::process::ExitStatus;

use ringworker::manager::{ManagerConn, ManagerEvent};

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
