//! Declared handlers on the blocking runtime, through the real binary: a
//! config file declares `exec` handlers (`tr`, `sh` scripts) and a `pool`
//! handler (the Python example worker); a manager on loopback sends their
//! tasks and checks the RESULTs byte for byte, a non-zero exit, a timeout
//! that leaves nothing of the child's process group, a closed connection
//! whose running child is killed, a drain that waits for a running child,
//! and the handlers' states in `/status`.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{live_members, Spawned};
use common::{accept, free_port, http_get, tcp_listener, wait_until, TIMEOUT};
use ringworker::manager::{ManagerConn, ManagerEvent};
use ringworker::protocol::ErrorBody;
use ringworker::transport::BlockingListener;

/// An agent on the blocking runtime with the handlers of [`config`], its
/// manager's side of the first connection, and where its `/status` is.
struct Agent {
    process: Spawned,
    conn: ManagerConn,
    listener: BlockingListener,
    http: String,
    dir: PathBuf,
}

/// A fresh directory for one test's config file and pid files.
fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rw-handlers-blocking-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A TOML string literal.
fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// The declared handlers; `hang` and `linger` write their shell's PID
/// (their process group's id) to `hang.pid` and `linger.pid` in `dir`.
fn config(dir: &Path) -> String {
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pool_worker.py");
    let hang = dir.join("hang.pid").display().to_string();
    let linger = dir.join("linger.pid").display().to_string();
    format!(
        r#"
[handlers.upper]
mode = "exec"
command = ["tr", "a-z", "A-Z"]
timeout = "20s"

[handlers.fails]
mode = "exec"
command = ["sh", "-c", "cat > /dev/null; echo 'bad input' >&2; exit 3"]
timeout = "20s"

[handlers.hang]
mode = "exec"
command = ["sh", "-c", "echo $$ > \"$1\"; sleep 30 & exec sleep 30", "sh", {hang}]
timeout = "1s"
kill_grace = "200ms"

[handlers.linger]
mode = "exec"
command = ["sh", "-c", "echo $$ > \"$1\"; sleep 30 & exec sleep 30", "sh", {linger}]
timeout = "60s"

[handlers.slow]
mode = "exec"
command = ["sh", "-c", "sleep 0.5; cat"]
timeout = "20s"

[handlers.pyecho]
mode = "pool"
command = ["python3", {worker}]
processes = 2
in_flight_per_process = 4
timeout = "20s"
# pyenv shims need HOME or PYENV_ROOT to find the interpreter.
pass_env = ["HOME", "PYENV_ROOT", "PYENV_VERSION"]
"#,
        hang = quoted(&hang),
        linger = quoted(&linger),
        worker = quoted(&worker.display().to_string()),
    )
}

fn start_agent(name: &str) -> Agent {
    let dir = test_dir(name);
    let config_file = dir.join("agent.toml");
    std::fs::write(&config_file, config(&dir)).unwrap();
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let http = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args(["run", "--manager", &endpoint, "--runtime", "blocking"])
        .args(["--metrics-addr", &http, "--drain-timeout", "10"])
        .args(["--reconnect-min", "20", "--reconnect-max", "200"])
        .arg("--config")
        .arg(&config_file);
    let process = Spawned::new(command);
    let (conn, hello) = accept(&listener);
    for name in ["upper", "fails", "hang", "linger", "slow", "pyecho"] {
        assert!(hello.handlers.contains(&name.to_owned()), "{hello:?}");
    }
    Agent {
        process,
        conn,
        listener,
        http,
        dir,
    }
}

impl Agent {
    /// SIGTERM, follow the drain to its GOODBYE and expect a clean exit.
    fn stop(mut self) {
        let status = common::manager::stop(&mut self.process, self.conn);
        assert!(
            status.success(),
            "exit {status}, stderr:\n{}",
            self.process.final_log()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// `/status`'s `handlers` list, by name.
    fn handlers(&self) -> HashMap<String, serde_json::Value> {
        let (code, body) = http_get(&self.http, "/status").unwrap();
        assert_eq!(code, 200, "{body}");
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        status["handlers"]
            .as_array()
            .unwrap_or_else(|| panic!("a handlers list in {body}"))
            .iter()
            .map(|h| (h["name"].as_str().unwrap().to_owned(), h.clone()))
            .collect()
    }
}

/// Results of the tasks in `ids`, by id, in whatever order they come.
fn results(conn: &mut ManagerConn, ids: &[u64]) -> BTreeMap<u64, (bool, Vec<u8>)> {
    let mut got = BTreeMap::new();
    while got.len() < ids.len() {
        match conn.next_event(TIMEOUT).expect("a RESULT") {
            ManagerEvent::Result { id, failed, body } => {
                assert!(ids.contains(&id), "RESULT of task {id}, not asked for");
                assert!(got.insert(id, (failed, body)).is_none(), "task {id} twice");
            }
            ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } | ManagerEvent::Ack { .. } => {}
            other => panic!("expected RESULT, got {other:?}"),
        }
    }
    got
}

/// The one task `id` of `handler`: (failed, body).
fn run_one(conn: &mut ManagerConn, id: u64, handler: &str, payload: &[u8]) -> (bool, Vec<u8>) {
    conn.send_task(id, handler, payload, false).unwrap();
    results(conn, &[id]).remove(&id).unwrap()
}

fn failure(body: &[u8]) -> ErrorBody {
    serde_json::from_slice(body)
        .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(body)))
}

/// The PID a handler's shell wrote to `file` (its process group's id).
fn pid_in(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[test]
fn exec_and_pool_handlers_answer_byte_for_byte_and_status_lists_them() {
    let mut agent = start_agent("exact");
    let conn = &mut agent.conn;

    assert_eq!(
        run_one(conn, 1, "upper", b"hello, world 42"),
        (false, b"HELLO, WORLD 42".to_vec())
    );
    // More than a pipe holds, both ways.
    let large: Vec<u8> = (0..300 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let (failed, body) = run_one(conn, 2, "upper", &large);
    assert!(!failed, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, large.to_ascii_uppercase());

    // Tasks for both kinds at once, answered in any order.
    let mut expected = BTreeMap::new();
    for id in 10..50u64 {
        let payload = format!("task {id} {}", "x".repeat(id as usize * 37)).into_bytes();
        let (handler, answer) = if id % 4 == 0 {
            ("upper", payload.to_ascii_uppercase())
        } else {
            ("pyecho", payload.clone())
        };
        conn.queue_task(id, handler, &payload, false).unwrap();
        expected.insert(id, (false, answer));
    }
    conn.flush().unwrap();
    let ids: Vec<u64> = expected.keys().copied().collect();
    assert_eq!(results(conn, &ids), expected);

    let handlers = agent.handlers();
    let mut names: Vec<&str> = handlers.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["fails", "hang", "linger", "pyecho", "slow", "upper"],
        "{handlers:?}"
    );
    assert_eq!(handlers["upper"]["mode"], "exec");
    assert_eq!(handlers["pyecho"]["mode"], "pool");
    // The pool answered, so its workers are up; /status says so within
    // its publishing period.
    let ready = wait_until(Duration::from_secs(10), || {
        let pyecho = &agent.handlers()["pyecho"];
        pyecho["state"] == "ready" && pyecho["alive"] == 2
    });
    assert!(ready, "{:?}", agent.handlers()["pyecho"]);
    agent.stop();
}

#[test]
fn a_non_zero_exit_is_failed_exit_status_with_the_stderr() {
    let mut agent = start_agent("exit");
    let (failed, body) = run_one(&mut agent.conn, 1, "fails", b"some input");
    assert!(failed);
    let error = failure(&body);
    assert_eq!(error.code, "exit_status", "{error:?}");
    assert!(error.message.contains("exit status 3"), "{error:?}");
    assert!(error.message.contains("bad input"), "{error:?}");
    // The session carries on.
    assert_eq!(
        run_one(&mut agent.conn, 2, "upper", b"after"),
        (false, b"AFTER".to_vec())
    );
    agent.stop();
}

#[test]
fn a_timeout_is_failed_timeout_and_nothing_of_the_group_is_left() {
    let mut agent = start_agent("timeout");
    let (failed, body) = run_one(&mut agent.conn, 1, "hang", b"");
    assert!(failed);
    let error = failure(&body);
    assert_eq!(error.code, "timeout", "{error:?}");
    let pgid = pid_in(&agent.dir.join("hang.pid")).expect("the child wrote its PID");
    // Its background `sleep 30` was in the group too.
    let gone = wait_until(Duration::from_secs(10), || live_members(pgid).is_empty());
    assert!(gone, "group {pgid} still has {:?}", live_members(pgid));
    // The count reaches /status with a later publication.
    let counted = wait_until(Duration::from_secs(10), || {
        agent.handlers()["hang"]["timeouts"] == 1
    });
    assert!(counted, "{:?}", agent.handlers()["hang"]);
    agent.stop();
}

#[test]
fn a_closed_connection_kills_the_child_running_its_task() {
    let mut agent = start_agent("closed");
    agent.conn.send_task(1, "linger", b"", false).unwrap();
    let pid_file = agent.dir.join("linger.pid");
    let started = wait_until(TIMEOUT, || pid_in(&pid_file).is_some());
    assert!(started, "the child did not start:\n{}", agent.process.log());
    let pgid = pid_in(&pid_file).unwrap();
    assert!(!live_members(pgid).is_empty(), "the child runs");
    // The manager hangs up: its 60 s task goes with the connection.
    drop(agent.conn);
    let gone = wait_until(Duration::from_secs(10), || live_members(pgid).is_empty());
    assert!(gone, "group {pgid} still has {:?}", live_members(pgid));
    // The session redials; the old task's answer never reaches the new
    // connection.
    let (conn, _) = accept(&agent.listener);
    agent.conn = conn;
    assert_eq!(
        run_one(&mut agent.conn, 1, "upper", b"fresh"),
        (false, b"FRESH".to_vec())
    );
    agent.stop();
}

#[test]
fn a_drain_waits_for_the_child_running_a_task() {
    let mut agent = start_agent("drain");
    agent.conn.send_task(7, "slow", b"finish me", true).unwrap();
    loop {
        match agent.conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Ack { id: 7 } => break,
            ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("expected ACK, got {other:?}"),
        }
    }
    agent.process.signal("TERM");
    let mut answered = false;
    loop {
        match agent.conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Result { id, failed, body } => {
                assert_eq!((id, failed, body.as_slice()), (7, false, &b"finish me"[..]));
                answered = true;
            }
            ManagerEvent::Goodbye { .. } => break,
            ManagerEvent::Drain | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(answered, "the RESULT comes before GOODBYE");
    drop(agent.conn);
    let status = agent.process.exit_within(TIMEOUT);
    assert!(
        status.success(),
        "exit {status}, stderr:\n{}",
        agent.process.final_log()
    );
    let _ = std::fs::remove_dir_all(&agent.dir);
}
