//! SIGHUP re-reads the config file: the log format switches at once, the
//! keys that need a restart are named, the agent keeps serving, and a file
//! that no longer parses changes nothing.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::manager::{echo, stop};
use common::process::Spawned;
use common::{accept, tcp_listener, TIMEOUT};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringworker-sighup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn json(line: &str) -> Option<serde_json::Value> {
    serde_json::from_str(line).ok()
}

fn assert_alive(agent: &mut Spawned) {
    // Give a signal's default action (exit 129) time to show.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        agent.running(),
        "the agent exited; stderr:\n{}",
        agent.log()
    );
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args(["run", "--config"])
        .arg(&config)
        // A flag beats the file, on a reload too.
        .args(["--max-in-flight", "8", "--metrics-addr", "off"])
        .env_remove("RINGWORKER_LOG_FORMAT")
        .env_remove("RINGWORKER_SESSIONS");
    let mut child = Spawned::new(command);
    let (mut conn, hello) = accept(&listener);
    assert_eq!(hello.max_in_flight, 8);
    echo(&mut conn, 1);
    let started = child.next_line("saying the agent started", TIMEOUT, |l| {
        l.contains(" started: ")
    });
    assert!(json(&started).is_none(), "text logs at first: {started}");

    std::fs::write(
        &config,
        format!(
            "manager = \"{manager}\"\nsessions = 2\nlog_format = \"json\"\nmax_in_flight = 16\n"
        ),
    )
    .unwrap();
    child.signal("HUP");
    let applied = child.next_line("saying log_format was applied", TIMEOUT, |l| {
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
    let restart = child.next_line("naming the keys that need a restart", TIMEOUT, |l| {
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
    assert_alive(&mut child);
    echo(&mut conn, 2);

    // A file that no longer parses: an error line, nothing changes.
    std::fs::write(&config, "sessions = [\n").unwrap();
    child.signal("HUP");
    let broken = child.next_line("saying the reload failed", TIMEOUT, |l| {
        l.contains("cannot reload")
    });
    let broken = json(&broken).unwrap_or_else(|| panic!("not JSON: {broken}"));
    assert_eq!(broken["level"], "ERROR", "{broken}");
    assert!(
        broken["message"]
            .as_str()
            .unwrap()
            .contains("the running configuration stays"),
        "{broken}"
    );
    assert_alive(&mut child);
    echo(&mut conn, 3);

    let status = stop(&mut child, conn);
    let rest = child.rest();
    let seen = child.final_log();
    assert!(status.success(), "exit {status}:\n{seen}");
    // From the switch on, every line is JSON (the session summary included).
    let seen: Vec<&str> = seen.lines().collect();
    let after = seen
        .iter()
        .position(|l| l.contains("applied log_format"))
        .unwrap();
    for line in &seen[after..] {
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
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args(["run", "--manager"])
        .arg(listener.local_endpoint().unwrap().to_string())
        .args(["--metrics-addr", "off"])
        .env_remove("RINGWORKER_CONFIG");
    let mut child = Spawned::new(command);
    let (mut conn, _) = accept(&listener);
    echo(&mut conn, 1);
    child.signal("HUP");
    child.next_line("saying there is no file to re-read", TIMEOUT, |l| {
        l.contains("no config file to re-read")
    });
    assert_alive(&mut child);
    echo(&mut conn, 2);
    let status = stop(&mut child, conn);
    assert!(status.success(), "exit {status}:\n{}", child.final_log());
}
