//! The HTTP listener under a slow or hostile client: a flood of idle
//! connections and an endless header; and what it exports with
//! `session_metrics = false`. (Its own test binary: the metrics recorder is
//! process-wide, so every agent here runs with the per-session series off.)

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{http_get, plan, start, tcp_listener};
use ringworker::http::HttpServer;
use ringworker::manager::ManagerEvent;
use ringworker::runtime::{RuntimeKind, RuntimeMode};
use ringworker::transport::BlockingListener;

/// A blocking agent (its manager's listener kept open) and an HTTP listener
/// serving its telemetry; the last item is the listener's address.
fn agent_with_http() -> (BlockingListener, Box<dyn RuntimeMode>, HttpServer, String) {
    agent_with_sessions(1)
}

fn agent_with_sessions(
    sessions: u32,
) -> (BlockingListener, Box<dyn RuntimeMode>, HttpServer, String) {
    // The recorder first, as the agent's main does: sessions register their
    // histograms when they are created.
    ringworker::metrics::recorder();
    let listener = tcp_listener();
    let agent = start(
        RuntimeKind::Blocking,
        plan(listener.local_endpoint().unwrap(), sessions, 8),
    );
    let server = common::http_without_session_metrics(&*agent);
    let addr = server.addr().to_string();
    (listener, agent, server, addr)
}

#[test]
fn a_flood_of_idle_connections_and_a_huge_header_cannot_lock_out_scrapes() {
    let (_listener, mut agent, _server, addr) = agent_with_http();
    // 1,000 connections that never send a byte.
    let idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert!(idle.len() >= 900, "connections opened: {}", idle.len());
    // A real scrape still gets through (the oldest idle ones are evicted).
    let (status, _) = http_get(&addr, "/healthz").unwrap();
    assert_eq!(status, 200);
    // A 10 MiB header is cut off after the limit with 431, not buffered.
    let mut huge = TcpStream::connect(&addr).unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = huge.write_all(b"GET /metrics HTTP/1.1\r\nX-Fill: ");
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0;
    while sent < 10 * 1024 * 1024 {
        if huge.write_all(&chunk).is_err() {
            break; // the server answered and closed
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let _ = huge.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    let (status, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("ringworker_build_info"));
    drop(idle);
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

/// The limit is on the request head, blank line included, whether it comes in
/// one write or many: 8 KiB is answered, one byte more is 431.
#[test]
fn the_head_limit_is_eight_kib_however_it_arrives() {
    let (_listener, mut agent, _server, addr) = agent_with_http();
    let head = |total: usize| {
        let start = b"GET /healthz HTTP/1.1\r\nX-Fill: ".to_vec();
        let fill = total - start.len() - 4;
        let mut head = start;
        head.extend(std::iter::repeat_n(b'a', fill));
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), total);
        head
    };
    for (total, piece, status) in [
        (8192, 8192, "200"),
        (8192, 1000, "200"),
        (8193, 8193, "431"),
        (9039, 9039, "431"),
        (9039, 1000, "431"),
    ] {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        for part in head(total).chunks(piece) {
            if stream.write_all(part).is_err() {
                break; // answered and closed before the rest
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{total} bytes in writes of {piece}: {answer}"
        );
    }
    agent.request_stop();
    assert!(agent.wait().is_clean());
}

/// With `session_metrics = false` no per-session series is exported, while
/// the process-wide ones (connected sessions, tasks in flight, the task
/// counters and histogram, runtime and build info, process_*) are.
#[test]
fn without_session_metrics_only_process_wide_series_are_exported() {
    let (listener, mut agent, _server, addr) = agent_with_sessions(3);
    let mut conns: Vec<_> = (0..3).map(|_| common::accept(&listener).0).collect();
    assert!(common::wait_until(common::TIMEOUT, || {
        let (_, metrics) = http_get(&addr, "/metrics").unwrap();
        metrics.contains("\nringworker_sessions_connected 3\n")
    }));
    for (id, conn) in conns.iter_mut().enumerate() {
        conn.send_task(id as u64 + 1, "echo", b"abc", false)
            .unwrap();
        assert!(matches!(
            conn.next_event(common::TIMEOUT).unwrap(),
            ManagerEvent::Result { failed: false, .. }
        ));
    }
    let (status, metrics) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    for series in ringworker::metrics::PER_SESSION {
        assert!(
            !metrics.contains(series),
            "{series} exported with session_metrics off:\n{metrics}"
        );
    }
    assert!(!metrics.contains("session=\""), "{metrics}");
    assert!(
        !metrics.contains("ringworker_tasks_in_flight{"),
        "{metrics}"
    );
    for wanted in [
        "\nringworker_sessions_connected 3\n",
        "\nringworker_sessions_configured 3\n",
        "\nringworker_agent_tasks_in_flight 0\n",
        "ringworker_tasks_total{handler=\"echo\",outcome=\"ok\"} 3\n",
        "ringworker_task_duration_seconds_bucket{",
        "\nringworker_bytes_sent_total ",
        "\nringworker_reconnects_total 0\n",
        "ringworker_build_info{",
        "requested=\"blocking\"",
        "\nprocess_resident_memory_bytes ",
    ] {
        assert!(
            metrics.contains(wanted),
            "{wanted} missing from:\n{metrics}"
        );
    }
    agent.request_stop();
    drop(conns);
    assert!(agent.wait().is_clean());
}
