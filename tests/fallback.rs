//! `--runtime auto` where io_uring is forbidden: a child process whose
//! io_uring syscalls a seccomp filter refuses (examples/no_uring.rs) must
//! select the blocking runtime, say why in one line, and still work;
//! `--runtime uring` there must fail with that reason.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::process::Spawned;
use common::{accept, tcp_listener, TIMEOUT};
use ringworker::manager::ManagerEvent;

/// The `no_uring` example, built by `cargo test` next to the test binaries.
fn no_uring() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let path = profile_dir.join("examples").join("no_uring");
    if !path.exists() {
        // A filtered `cargo test --test fallback` does not build examples.
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "no_uring"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "cargo build --example no_uring failed");
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

fn agent_under_seccomp(manager: &str, runtime: &str) -> Command {
    let mut command = Command::new(no_uring());
    command
        .arg(env!("CARGO_BIN_EXE_ringworker"))
        .args([
            "run",
            "--manager",
            manager,
            "--runtime",
            runtime,
            "--metrics-addr",
            "off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn auto_falls_back_to_blocking_when_seccomp_refuses_io_uring() {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let mut agent = Spawned::new(agent_under_seccomp(&endpoint, "auto"));
    let (mut conn, hello) = accept(&listener);
    assert_eq!(hello.runtime, "blocking", "auto picked the fallback");
    for id in 1..=5u64 {
        conn.send_task(id, "crc32c", b"123456789", false).unwrap();
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Result {
                id: got,
                failed,
                body,
            } => {
                assert_eq!((got, failed), (id, false));
                assert_eq!(body, 0xE306_9283u32.to_be_bytes());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let status = common::manager::stop(&mut agent, conn);
    let stderr = agent.final_log();
    assert!(status.success(), "{stderr}");
    let why: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("io_uring unavailable"))
        .collect();
    assert_eq!(why.len(), 1, "exactly one line says why:\n{stderr}");
    assert!(
        why[0].contains("seccomp") && why[0].contains("blocking"),
        "{}",
        why[0]
    );
}

#[test]
fn uring_runtime_fails_with_the_reason_when_seccomp_refuses_io_uring() {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let output = agent_under_seccomp(&endpoint, "uring").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line:\n{stderr}");
    assert!(
        stderr.contains("io_uring") && stderr.contains("seccomp"),
        "{stderr}"
    );
}
