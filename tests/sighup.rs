//! SIGHUP re-reads the config file: the log format switches at once, the
//! keys that need a restart are named, the agent keeps serving, and a file
//! that no longer parses changes nothing.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{accept, tcp_listener, TIMEOUT};
use ringworker::manager::{ManagerConn, ManagerEvent};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringworker-sighup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signal a child we spawned, by its PID.
fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args(["-s", signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} failed");
}

/// The child's stderr, line by line, as it is written.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// The next line `wanted` accepts; panics after `TIMEOUT`.
    fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no line {what}; stderr so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Every line still to come, until the pipe closes.
    fn rest(&mut self) -> Vec<String> {
        let rest: Vec<String> = self.rx.iter().collect();
        self.seen.extend(rest.iter().cloned());
        rest
    }
}

fn json(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line).ok()
}

/// Send an echo task and check its RESULT.
fn echo(conn: &mut ManagerConn, id: u64) {
    let payload = format!("task {id}");
    conn.send_task(id, "echo", payload.as_bytes(), false)
        .unwrap();
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

fn assert_alive(child: &mut Child, lines: &Lines) {
    // Give a signal's default action (exit 129) time to show.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the agent exited; stderr:\n{}",
        lines.seen.join("\n")
    );
}

/// SIGTERM, follow the drain to GOODBYE, and return the exit status.
fn stop(child: &mut Child, mut conn: ManagerConn) -> ExitStatus {
    send_signal(child, "TERM");
    loop {
        match conn.next_event(TIMEOUT) {
            Ok(ManagerEvent::Goodbye { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    drop(conn);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_switches_the_log_format_names_restart_keys_and_keeps_serving() {
    let dir = temp_dir("reload");
    let listener = tcp_listener();
    let manager = listener.local_endpoint().unwrap().to_string();
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "manager = \"{manager}\"\nsessions = 1\nlog_format = \"text\"\nmax_in_flight = 4\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["run", "--config"])
        .arg(&config)
        // A flag beats the file, on a reload too.
        .args(["--max-in-flight", "8", "--metrics-addr", "off"])
        .env_remove("RINGWORKER_LOG_FORMAT")
        .env_remove("RINGWORKER_SESSIONS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(&mut child);
    let (mut conn, hello) = accept(&listener);
    assert_eq!(hello.max_in_flight, 8);
    echo(&mut conn, 1);
    let started = lines.until("saying the agent started", |l| l.contains(" started: "));
    assert!(json(&started).is_none(), "text logs at first: {started}");

    std::fs::write(
        &config,
        format!(
            "manager = \"{manager}\"\nsessions = 2\nlog_format = \"json\"\nmax_in_flight = 16\n"
        ),
    )
    .unwrap();
    send_signal(&child, "HUP");
    let applied = lines.until("saying log_format was applied", |l| {
        l.contains("applied log_format")
    });
    let applied = json(&applied).unwrap_or_else(|| panic!("not JSON: {applied}"));
    assert_eq!(applied["applied"], "log_format", "{applied}");
    assert!(
        applied["message"]
            .as_str()
            .unwrap()
            .contains("log_format \"text\" -> \"json\""),
        "{applied}"
    );
    let restart = lines.until("naming the keys that need a restart", |l| {
        l.contains("restart_needed")
    });
    let restart = json(&restart).unwrap_or_else(|| panic!("not JSON: {restart}"));
    assert_eq!(restart["restart_needed"], "sessions", "{restart}");
    let message = restart["message"].as_str().unwrap();
    assert!(
        message.contains("sessions 1 -> 2") && message.contains("after a restart"),
        "{restart}"
    );
    assert!(
        !message.contains("max_in_flight"),
        "the flag wins: {restart}"
    );
    assert_alive(&mut child, &lines);
    echo(&mut conn, 2);

    // A file that no longer parses: an error line, nothing changes.
    std::fs::write(&config, "sessions = [\n").unwrap();
    send_signal(&child, "HUP");
    let broken = lines.until("saying the reload failed", |l| l.contains("cannot reload"));
    let broken = json(&broken).unwrap_or_else(|| panic!("not JSON: {broken}"));
    assert_eq!(broken["level"], "ERROR", "{broken}");
    assert!(
        broken["message"]
            .as_str()
            .unwrap()
            .contains("the running configuration stays"),
        "{broken}"
    );
    assert_alive(&mut child, &lines);
    echo(&mut conn, 3);

    let status = stop(&mut child, conn);
    let rest = lines.rest();
    assert!(
        status.success(),
        "exit {status}:\n{}",
        lines.seen.join("\n")
    );
    // From the switch on, every line is JSON (the session summary included).
    let after = lines
        .seen
        .iter()
        .position(|l| l.contains("applied log_format"))
        .unwrap();
    for line in &lines.seen[after..] {
        assert!(json(line).is_some(), "not JSON after the switch: {line}");
    }
    assert!(
        rest.iter().any(|l| l.contains("session 0 closed: sent ")),
        "{rest:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sighup_without_a_config_file_changes_nothing_and_keeps_serving() {
    let listener = tcp_listener();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringworker"))
        .args(["run", "--manager"])
        .arg(listener.local_endpoint().unwrap().to_string())
        .args(["--metrics-addr", "off"])
        .env_remove("RINGWORKER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Lines::of(&mut child);
    let (mut conn, _) = accept(&listener);
    echo(&mut conn, 1);
    send_signal(&child, "HUP");
    lines.until("saying there is no file to re-read", |l| {
        l.contains("no config file to re-read")
    });
    assert_alive(&mut child, &lines);
    echo(&mut conn, 2);
    let status = stop(&mut child, conn);
    lines.rest();
    assert!(
        status.success(),
        "exit {status}:\n{}",
        lines.seen.join("\n")
    );
}
