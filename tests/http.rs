//! The HTTP listener's endpoints against a live agent. (One test per binary
//! here: the metrics recorder is process-wide.)

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{accept, http_get, plan, start, tcp_listener, TIMEOUT};
use ringworker::http::HttpServer;
use ringworker::manager::ManagerEvent;
use ringworker::metrics::Telemetry;
use ringworker::runtime::RuntimeKind;

#[test]
fn endpoints_report_health_readiness_status_and_metrics() {
    let listener = tcp_listener();
    let mut agent = start(
        RuntimeKind::Blocking,
        plan(listener.local_endpoint().unwrap(), 2, 8),
    );
    let server = HttpServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Telemetry::new(agent.stats())),
    )
    .unwrap();
    let addr = server.addr().to_string();
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    // Ready only once a session has its WELCOME.
    let ready_before = http_get(&addr, "/readyz").unwrap().0;
    let (mut conn, _) = accept(&listener);
    let (_conn2, _) = accept(&listener);
    assert!(common::wait_until(TIMEOUT, || http_get(&addr, "/readyz")
        .unwrap()
        .0
        == 200));
    assert!(ready_before == 503 || ready_before == 200);
    conn.send_task(1, "echo", b"abc", false).unwrap();
    assert!(matches!(
        conn.next_event(TIMEOUT).unwrap(),
        ManagerEvent::Result { failed: false, .. }
    ));

    let (status, body) = http_get(&addr, "/status").unwrap();
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["agent"], "test-agent");
    assert_eq!(json["runtime"], "blocking");
    let sessions = json["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let stats = agent.stats();
    let total: u64 = sessions
        .iter()
        .map(|s| s["bytes_sent"].as_u64().unwrap())
        .sum();
    assert_eq!(
        total,
        stats.sessions.iter().map(|s| s.bytes_sent()).sum::<u64>()
    );
    assert!(sessions
        .iter()
        .all(|s| s["bytes_sent_formatted"].as_str().unwrap().ends_with('B')));

    let (status, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "ringworker_session_bytes_sent{session=\"0\"}",
        "ringworker_session_bytes_received{session=\"1\"}",
        "ringworker_bytes_sent_total ",
        "ringworker_bytes_received_total ",
        "ringworker_session_connected{session=\"0\"} 1",
        "ringworker_tasks_in_flight{session=\"0\"}",
        "ringworker_tasks_total{handler=\"echo\",outcome=\"ok\"} 1",
        "ringworker_reconnects_total 0",
        "ringworker_build_info{version=\"",
        "# TYPE ringworker_bytes_sent_total counter",
        "# TYPE ringworker_session_bytes_sent gauge",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    // The counter is the runtime's own atomic, not a second count.
    let line = metrics
        .lines()
        .find(|l| l.starts_with("ringworker_bytes_sent_total "))
        .unwrap();
    let value: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(value, stats.bytes_sent_total());
    assert_eq!(http_get(&addr, "/nope").unwrap().0, 404);
    agent.request_stop();
    drop(conn);
    assert!(agent.wait().is_clean());
}
