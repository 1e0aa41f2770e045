//! The HTTP listener's endpoints against a live agent: health, readiness,
//! status, the metrics (process-wide, per-session and `process_*` series),
//! and gzip when the scraper asks for it. (One test per binary here: the
//! metrics recorder is process-wide.)

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
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

    // This process's CPU time from the kernel, around the scrape: the
    // exported counter must lie between. Work until a tick has been
    // counted (the agent alone may not have used one yet).
    let until = std::time::Instant::now() + TIMEOUT;
    while own_cpu_seconds() == 0.0 && std::time::Instant::now() < until {
        std::hint::black_box((0..100_000u64).sum::<u64>());
    }
    let cpu_before = own_cpu_seconds();
    let (status, metrics) = http_get(&addr, "/metrics").unwrap();
    let cpu_after = own_cpu_seconds();
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
    let sample = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
            .parse()
            .unwrap()
    };
    // Process-wide series, exported whatever session_metrics says.
    assert_eq!(sample("ringworker_sessions_connected"), 2.0);
    assert_eq!(sample("ringworker_sessions_configured"), 2.0);
    assert_eq!(sample("ringworker_agent_tasks_in_flight"), 0.0);
    let runtime = metrics
        .lines()
        .find(|l| l.starts_with("ringworker_runtime_info{"))
        .unwrap();
    assert!(
        runtime.contains("runtime=\"blocking\"")
            && runtime.contains("requested=\"auto\"")
            && runtime.ends_with("} 1"),
        "{runtime}"
    );
    // The standard process series, typed as Prometheus' clients type them.
    assert!(metrics.contains("# TYPE process_cpu_seconds_total counter\n"));
    assert!(metrics.contains("# TYPE process_resident_memory_bytes gauge\n"));
    assert!(sample("process_resident_memory_bytes") > 1024.0 * 1024.0);
    // This process's descriptors: the HTTP listener and the scrape's
    // socket at least.
    assert!(sample("process_open_fds") >= 2.0);
    assert!(sample("process_max_fds") >= sample("process_open_fds"));
    let cpu = sample("process_cpu_seconds_total");
    assert!(cpu_before > 0.0, "no CPU tick counted in {TIMEOUT:?}");
    assert!(
        cpu >= cpu_before && cpu <= cpu_after,
        "process_cpu_seconds_total {cpu} outside [{cpu_before}, {cpu_after}]"
    );
    assert!(sample("process_threads") >= 2.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample("process_start_time_seconds");
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "started {started}, now {now}"
    );

    // gzip when asked: Content-Encoding and a Content-Length of the
    // compressed body, which inflates to the same exposition.
    let (head, gzipped) = raw_get(&addr, "/metrics", "Accept-Encoding: gzip\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-encoding").as_deref(), Some("gzip"));
    assert_eq!(header(&head, "vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(
        header(&head, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        gzipped.len()
    );
    let mut inflated = String::new();
    flate2::read::GzDecoder::new(&gzipped[..])
        .read_to_string(&mut inflated)
        .unwrap();
    let (head, plain) = raw_get(&addr, "/metrics", "");
    assert_eq!(header(&head, "content-encoding"), None, "{head}");
    assert_eq!(
        header(&head, "content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        plain.len()
    );
    let plain = String::from_utf8(plain).unwrap();
    assert!(
        gzipped.len() < plain.len() / 2,
        "gzip shrinks the exposition"
    );
    // The agent is idle: the ringworker series are the same in both (the
    // order of series is not fixed; process_* values move between scrapes).
    let stable = |text: &str| {
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.contains("process_"))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(stable(&inflated), stable(&plain));
    assert!(inflated.contains("process_resident_memory_bytes "));
    // A client that refuses gzip gets identity bytes.
    let (head, body) = raw_get(&addr, "/metrics", "Accept-Encoding: gzip;q=0, identity\r\n");
    assert_eq!(header(&head, "content-encoding"), None, "{head}");
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("ringworker_build_info"));
    // Other paths are never compressed.
    let (head, _) = raw_get(&addr, "/status", "Accept-Encoding: gzip\r\n");
    assert_eq!(header(&head, "content-encoding"), None, "{head}");

    assert_eq!(http_get(&addr, "/nope").unwrap().0, 404);
    agent.request_stop();
    drop(conn);
    assert!(agent.wait().is_clean());
}

/// GET with extra header lines: (head, body bytes).
fn raw_get(addr: &str, path: &str, headers: &str) -> (String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(response[..end].to_vec()).unwrap();
    (head, response[end + 4..].to_vec())
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The binary applies `--session-metrics=false` and labels the runtime it
/// was asked for: a deliberate `--runtime blocking` is not a fallback.
#[test]
fn the_agent_binary_applies_session_metrics_off() {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command.args([
        "run",
        "--manager",
        &endpoint,
        "--runtime",
        "blocking",
        "--metrics-addr",
        &addr,
        "--session-metrics=false",
    ]);
    let mut agent = common::process::Spawned::new(command);
    let (_conn, _hello) = accept(&listener);
    let mut body = String::new();
    assert!(
        common::wait_until(TIMEOUT, || {
            body = http_get(&addr, "/metrics").map(|r| r.1).unwrap_or_default();
            body.contains("ringworker_sessions_connected 1")
        }),
        "{body}\n{}",
        agent.log()
    );
    assert!(!body.contains("ringworker_session_bytes_sent"), "{body}");
    assert!(!body.contains("session=\""), "{body}");
    assert!(
        body.contains(r#"ringworker_runtime_info{runtime="blocking",requested="blocking"} 1"#)
            || body
                .contains(r#"ringworker_runtime_info{requested="blocking",runtime="blocking"} 1"#),
        "{body}"
    );
    agent.signal("TERM");
    agent.wait_within(TIMEOUT).expect("the agent stops");
}

/// utime + stime of this process, in seconds (`/proc/self/stat`).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let hz = HZ.get_or_init(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf runs");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    });
    ticks as f64 / hz
}
