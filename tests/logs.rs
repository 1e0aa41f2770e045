//! What the agent writes to its log when the manager misbehaves or is gone,
//! once per runtime: a manager's own text can neither fill the disk nor
//! forge lines, a manager that is down costs a bounded number of warnings,
//! and the session-closed event carries its totals as JSON keys.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::Spawned;
use common::{wait_until, TIMEOUT};
use ringworker::protocol::frame::encode_frame;
use ringworker::protocol::{ErrorBody, FrameKind};
use ringworker::runtime::RuntimeKind;

for_each_runtime!(
    a_manager_answering_every_hello_with_a_huge_error_writes_little_log,
    a_newline_in_the_welcome_manager_name_forges_no_log_line,
    a_manager_that_is_down_costs_a_bounded_number_of_warnings,
    the_session_closed_event_has_its_totals_as_json_keys,
);

fn agent(manager: &str, runtime: RuntimeKind, extra: &[&str]) -> Spawned {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args(["run", "--manager", manager, "--runtime", runtime.as_str()])
        .args(["--metrics-addr", "off"])
        .args(extra);
    Spawned::new(command)
}

/// Read one whole frame (header and body) from `stream`.
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 16];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len.saturating_sub(12)];
    stream.read_exact(&mut body)?;
    Ok((header[4], body))
}

fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, kind, 0, 0, body);
    out
}

/// Stop the agent with SIGTERM and return its whole log.
fn stop(mut agent: Spawned) -> String {
    agent.signal("TERM");
    agent
        .wait_within(TIMEOUT)
        .expect("the agent stops on SIGTERM");
    agent.final_log()
}

fn a_manager_answering_every_hello_with_a_huge_error_writes_little_log(kind: RuntimeKind) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let message = format!("overloaded\nFAKE-LINE {}", "x".repeat(1 << 20));
    let error = frame(
        FrameKind::Error,
        &ErrorBody::new("overloaded", message).to_json(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let manager = {
        let (done, answered) = (done.clone(), answered.clone());
        std::thread::spawn(move || {
            // Bounded: 5 s, then the test stops it.
            while !done.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                if read_frame(&mut stream).is_ok() && stream.write_all(&error).is_ok() {
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let agent = agent(
        &format!("tcp://{addr}"),
        kind,
        &[
            "--sessions",
            "4",
            "--reconnect-min",
            "1",
            "--reconnect-max",
            "20",
        ],
    );
    std::thread::sleep(Duration::from_secs(5));
    done.store(true, Ordering::Relaxed);
    manager.join().unwrap();
    let log = stop(agent);
    let answered = answered.load(Ordering::Relaxed);
    eprintln!(
        "{}: {answered} HELLOs answered with a 1 MiB ERROR in 5 s; {} bytes, {} lines of log",
        kind.as_str(),
        log.len(),
        log.lines().count()
    );
    assert!(answered >= 20, "the agent redialled only {answered} times");
    let error_lines = log
        .lines()
        .filter(|line| line.contains("manager sent ERROR"))
        .count();
    assert!(
        (1..=2).contains(&error_lines),
        "{error_lines} ERROR lines: the same ERROR is counted, not repeated"
    );
    assert!(
        log.len() < 1 << 20,
        "{} bytes of log for {answered} ERRORs",
        log.len()
    );
    assert!(
        log.contains("overloaded\\nFAKE-LINE xxx"),
        "the ERROR is logged, escaped:\n{}",
        &log[..log.len().min(4000)]
    );
    assert!(
        !log.lines().any(|line| line.starts_with("FAKE-LINE")),
        "a forged line:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

fn a_newline_in_the_welcome_manager_name_forges_no_log_line(kind: RuntimeKind) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let agent = agent(&format!("tcp://{addr}"), kind, &[]);
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (hello, _) = read_frame(&mut stream).unwrap();
    assert_eq!(hello, FrameKind::Hello as u8);
    let welcome = br#"{"protocol":1,"manager":"m1\n2026-12-06T00:00:00Z  INFO FORGED\u001b[2J","max_body":65536,"heartbeat_ms":0}"#;
    stream
        .write_all(&frame(FrameKind::Welcome, welcome))
        .unwrap();
    assert!(
        wait_until(TIMEOUT, || agent.count("connected: WELCOME") >= 1),
        "{}",
        agent.log()
    );
    let log = agent.log();
    let lines_before = log.lines().count();
    drop(stream);
    let log_after = stop(agent);
    assert!(
        log.contains(r"m1\\n2026-12-06T00:00:00Z  INFO FORGED\\u{1b}[2J")
            || log.contains(r"m1\n2026-12-06T00:00:00Z  INFO FORGED\u{1b}[2J"),
        "the name is logged escaped:\n{log}"
    );
    assert!(
        !log_after
            .lines()
            .any(|line| line.starts_with("2026-12-06T00:00:00Z")),
        "a forged line:\n{log_after}"
    );
    assert!(
        !log_after.contains('\u{1b}'),
        "a raw escape reached the log"
    );
    assert!(lines_before >= 2, "{log}");
}

fn a_manager_that_is_down_costs_a_bounded_number_of_warnings(kind: RuntimeKind) {
    // A port with nothing listening: every dial is refused at once.
    let port = common::free_port();
    let agent = agent(
        &format!("tcp://127.0.0.1:{port}"),
        kind,
        &[
            "--sessions",
            "200",
            "--reconnect-min",
            "1",
            "--reconnect-max",
            "50",
        ],
    );
    // Past one summary interval (10 s), so the count is reported.
    std::thread::sleep(Duration::from_millis(11_500));
    let log = stop(agent);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("cannot reach manager"))
        .collect();
    let summary = warnings
        .iter()
        .find_map(|line| {
            let (_, rest) = line.split_once("(and ")?;
            rest.split_once(' ')?.0.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no summary line with a count:\n{log}"));
    eprintln!(
        "{}: 200 sessions, manager down 11.5 s: {} warning lines, summary counted {summary}",
        kind.as_str(),
        warnings.len()
    );
    assert!(
        (2..=4).contains(&warnings.len()),
        "expected the first failure and one summary per 10 s:\n{log}"
    );
    assert!(
        summary >= 1000,
        "200 sessions redialling for 10 s fail far more often than {summary}"
    );
}

fn the_session_closed_event_has_its_totals_as_json_keys(kind: RuntimeKind) {
    let listener = common::tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let agent = agent(&endpoint, kind, &["--log-format", "json"]);
    let started = Instant::now();
    let (mut conn, _hello) = common::accept(&listener);
    conn.send_task(1, "echo", b"hello", false).unwrap();
    let result = loop {
        match conn.next_event(TIMEOUT).unwrap() {
            ringworker::manager::ManagerEvent::Result { id, .. } => break id,
            _ => assert!(started.elapsed() < TIMEOUT, "no RESULT"),
        }
    };
    assert_eq!(result, 1);
    // The agent drains: DRAIN, GOODBYE, close; read it all so both sides'
    // totals are final.
    let mut agent = agent;
    agent.signal("TERM");
    conn.read_to_end(TIMEOUT).unwrap();
    agent.wait_within(TIMEOUT).expect("the agent stops");
    let log = agent.final_log();
    let closed: serde_json::Value = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains(" closed: sent "))
        })
        .unwrap_or_else(|| panic!("no session-closed event:\n{log}"));
    assert_eq!(closed["session"], 0, "{closed}");
    assert_eq!(closed["tasks"], 1, "{closed}");
    assert_eq!(
        closed["bytes_received"].as_u64(),
        Some(conn.bytes_sent()),
        "{closed}"
    );
    assert_eq!(
        closed["bytes_sent"].as_u64(),
        Some(conn.bytes_received()),
        "{closed}"
    );
}
