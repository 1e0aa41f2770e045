//! Declared handlers (`[handlers.NAME]` in the config file) run by the real
//! `ringworker` binary against an in-process manager, once per runtime:
//! exact results, exit statuses, timeouts with the whole process group
//! gone afterwards, a pool worker crashing mid-task and restarted, the
//! output cap, a child that never reads its stdin, a grandchild holding
//! the output open, a worker printing to stdout, the environment a child
//! sees, and a thousand tasks through each mode checked by the loadgen.
//!
//! The codes and messages asserted here are the exec module's
//! (`ringworker::exec::codes`, `exec/task.rs`, `exec/pool.rs`).

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::process::{live_members, Spawned};
use common::{accept_with, free_port, http_get, loadgen_bin, tcp_listener, wait_until, TIMEOUT};
use ringworker::manager::{ManagerConfig, ManagerConn, ManagerEvent};
use ringworker::protocol::Hello;
use ringworker::runtime::RuntimeKind;

for_each_runtime!(
    exec_handlers_answer_exactly,
    a_non_zero_exit_fails_with_exit_status_and_stderr,
    a_timeout_stops_the_whole_process_group,
    a_pool_worker_crashing_mid_task_is_restarted,
    a_pool_task_past_its_timeout_stops_the_worker_and_its_group,
    output_past_max_output_is_result_too_large,
    a_child_that_never_reads_stdin_is_answered,
    a_grandchild_holding_stdout_does_not_hold_the_task,
    a_pool_worker_printing_to_stdout_keeps_results_exact,
    a_child_sees_only_its_declared_environment,
    a_thousand_tasks_through_exec_mode_all_exact,
    a_thousand_tasks_through_pool_mode_all_exact,
);

// ---------------------------------------------------------------------------
// Helpers: a scratch directory, the workers, the agent and its answers.
// ---------------------------------------------------------------------------

/// A directory of this test's own, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str, runtime: RuntimeKind) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "ringworker-handlers-{}-{test}-{}",
            std::process::id(),
            runtime.as_str()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Write `text` to `name` in the directory; its path as a string.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Python interpreter itself (not a wrapper such as a pyenv shim, which
/// would add variables of its own to a child's environment and cost a
/// shell per start).
fn python3() -> &'static str {
    static PYTHON: OnceLock<String> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by these tests (scripts/test provisions it)");
        assert!(output.status.success(), "python3 runs");
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    })
}

/// A pool worker (docs/HANDLER_PROTOCOL.md) that echoes, except for a few
/// payloads: `crash` exits 7 at once, `hang` never answers, `size N`
/// answers N bytes, `pid` answers its process id, `environ` its
/// environment as it was given (NUL-separated, from /proc), `fail`
/// answers FAILED. With `JUNK` set it prints to stdout and stderr around
/// every task.
const MOODY_WORKER: &str = r#"
import os, socket, struct, sys, time

sock = socket.socket(fileno=int(os.environ["RINGWORKER_HANDLER_FD"]))
stream = sock.makefile("rb")
junk = bool(os.environ.get("JUNK"))
count = 0

def answer(kind, task_id, body):
    frame = struct.pack(">BQ", kind, task_id) + body
    sock.sendall(struct.pack(">I", len(frame)) + frame)

if junk:
    print("worker starting, not a frame", flush=True)
while len(head := stream.read(4)) == 4:
    frame = stream.read(struct.unpack(">I", head)[0])
    kind, task_id, deadline_ms = struct.unpack(">BQI", frame[:13])
    payload = frame[13:]
    count += 1
    if junk:
        print(f"junk line {count}", flush=True)
        sys.stdout.buffer.write(b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09 binary junk\n")
        sys.stdout.flush()
        print(f"junk on stderr {count}", file=sys.stderr, flush=True)
    if payload == b"crash":
        os._exit(7)
    elif payload == b"hang":
        time.sleep(3600)
    elif payload.startswith(b"size "):
        answer(0x02, task_id, b"z" * int(payload[5:]))
    elif payload == b"pid":
        answer(0x02, task_id, str(os.getpid()).encode())
    elif payload == b"environ":
        with open("/proc/self/environ", "rb") as f:
            answer(0x02, task_id, f.read())
    elif payload == b"fail":
        answer(0x03, task_id, b"no such thing")
    else:
        answer(0x02, task_id, payload)
"#;

/// A pool worker answering the SHA-256 digest of each payload.
const SHA256_WORKER: &str = r#"
import hashlib, os, socket, struct

sock = socket.socket(fileno=int(os.environ["RINGWORKER_HANDLER_FD"]))
stream = sock.makefile("rb")
while len(head := stream.read(4)) == 4:
    frame = stream.read(struct.unpack(">I", head)[0])
    kind, task_id, deadline_ms = struct.unpack(">BQI", frame[:13])
    answer = struct.pack(">BQ", 0x02, task_id) + hashlib.sha256(frame[13:]).digest()
    sock.sendall(struct.pack(">I", len(answer)) + answer)
"#;

/// An `exec` program writing the SHA-256 digest of its stdin.
const SHA256_EXEC: &str =
    "import hashlib, sys; sys.stdout.buffer.write(hashlib.sha256(sys.stdin.buffer.read()).digest())";

/// The Rust example worker, built once per test binary.
fn rust_example_worker() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "pool_worker"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "cargo build --example pool_worker failed");
    });
    PathBuf::from(env!("CARGO_BIN_EXE_ringworker"))
        .with_file_name("examples")
        .join("pool_worker")
}

/// A TOML string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// A `[handlers.NAME]` table: its mode, command and further lines.
fn table(name: &str, mode: &str, command: &[&str], extra: &str) -> String {
    let command: Vec<String> = command.iter().map(|part| quote(part)).collect();
    format!(
        "\n[handlers.{name}]\nmode = \"{mode}\"\ncommand = [{}]\n{extra}\n",
        command.join(", ")
    )
}

/// How a task ended, from its RESULT.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Ok(Vec<u8>),
    Failed { code: String, message: String },
}

impl Answer {
    fn from_result(failed: bool, body: Vec<u8>) -> Answer {
        if !failed {
            return Answer::Ok(body);
        }
        let value: serde_json::Value = serde_json::from_slice(&body).expect("FAILED body is JSON");
        Answer::Failed {
            code: value["code"].as_str().unwrap_or_default().to_owned(),
            message: value["message"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// The output of a success; panics with the failure otherwise.
    fn output(self) -> Vec<u8> {
        match self {
            Answer::Ok(output) => output,
            Answer::Failed { code, message } => panic!("FAILED {code}: {message}"),
        }
    }

    /// The code and message of a failure; panics on a success.
    fn failure(self) -> (String, String) {
        match self {
            Answer::Failed { code, message } => (code, message),
            Answer::Ok(output) => panic!(
                "expected FAILED, got a success of {} bytes: {:?}",
                output.len(),
                String::from_utf8_lossy(&output[..output.len().min(200)])
            ),
        }
    }
}

/// How an agent is started, beyond its config file.
#[derive(Default)]
struct Options {
    /// `--token-file` (through `RINGWORKER_TOKEN_FILE`) holding this token,
    /// which the manager then requires.
    token: Option<String>,
    max_body: Option<&'static str>,
    /// Serve `/metrics` and `/status` on a free loopback port.
    http: bool,
    /// Variables set in the agent's environment.
    env: Vec<(&'static str, String)>,
}

/// The `ringworker` binary with a config file, and its one session.
struct Agent {
    process: Spawned,
    conn: ManagerConn,
    hello: Hello,
    http: Option<String>,
    /// RESULTs read while waiting for another task's.
    early: HashMap<u64, Answer>,
    next_id: u64,
}

impl Agent {
    fn start(runtime: RuntimeKind, scratch: &Scratch, config: &str) -> Agent {
        Agent::start_with(runtime, scratch, config, Options::default())
    }

    fn start_with(
        runtime: RuntimeKind,
        scratch: &Scratch,
        config: &str,
        options: Options,
    ) -> Agent {
        let config_path = scratch.write("agent.toml", config);
        let listener = tcp_listener();
        let endpoint = listener.local_endpoint().unwrap().to_string();
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
        command
            .args(["run", "--manager", &endpoint, "--runtime", runtime.as_str()])
            .args(["--config", &config_path])
            // One event loop: a pool's `processes` are then not split over
            // loops, and a restart is of the one worker there is.
            .args(["--threads", "1", "--worker-id", "handlers-test"])
            .args(["--reconnect-min", "20", "--reconnect-max", "200"])
            .args(["--drain-timeout", "10"])
            // Lines asserted on are `info` and `warn`, whatever the caller's.
            .env("RINGWORKER_LOG", "info");
        let http = options.http.then(|| format!("127.0.0.1:{}", free_port()));
        command.args(["--metrics-addr", http.as_deref().unwrap_or("off")]);
        if let Some(max_body) = options.max_body {
            command.args(["--max-body", max_body]);
        }
        if let Some(token) = &options.token {
            let path = scratch.path("token");
            std::fs::write(&path, format!("{token}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            command.env("RINGWORKER_TOKEN_FILE", &path);
        }
        for (name, value) in &options.env {
            command.env(name, value);
        }
        let process = Spawned::new(command);
        let config = ManagerConfig {
            token: options.token.clone(),
            ..ManagerConfig::default()
        };
        let (conn, hello) = accept_with(&listener, config);
        let agent = Agent {
            process,
            conn,
            hello,
            http,
            early: HashMap::new(),
            next_id: 1,
        };
        if let Some(addr) = &agent.http {
            let addr = addr.clone();
            assert!(
                wait_until(TIMEOUT, || http_get(&addr, "/healthz").is_ok()),
                "the HTTP listener serves"
            );
        }
        agent
    }

    /// Send a task; its id.
    fn send(&mut self, handler: &str, payload: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.conn
            .send_task(id, handler, payload, false)
            .unwrap_or_else(|err| panic!("send task {id}: {err}; log:\n{}", self.process.log()));
        id
    }

    /// The next RESULT, whichever task it answers.
    fn next_answer(&mut self) -> (u64, Answer) {
        loop {
            let event = self.conn.next_event(TIMEOUT).unwrap_or_else(|err| {
                panic!(
                    "no RESULT within {TIMEOUT:?} ({err}); agent log:\n{}",
                    self.process.log()
                )
            });
            match event {
                ManagerEvent::Result { id, failed, body } => {
                    return (id, Answer::from_result(failed, body))
                }
                ManagerEvent::Ack { .. }
                | ManagerEvent::Ping { .. }
                | ManagerEvent::Pong { .. } => {}
                other => panic!(
                    "expected RESULT, got {other:?}; log:\n{}",
                    self.process.log()
                ),
            }
        }
    }

    /// The RESULT of task `id`.
    fn answer(&mut self, id: u64) -> Answer {
        if let Some(answer) = self.early.remove(&id) {
            return answer;
        }
        loop {
            let (got, answer) = self.next_answer();
            if got == id {
                return answer;
            }
            assert!(
                self.early.insert(got, answer).is_none(),
                "two RESULTs for {got}"
            );
        }
    }

    /// Send a task and wait for its RESULT.
    fn run(&mut self, handler: &str, payload: &[u8]) -> Answer {
        let id = self.send(handler, payload);
        self.answer(id)
    }

    /// `/metrics`: the value of `series` (with its labels), if present.
    fn metric(&self, series: &str) -> Option<f64> {
        let addr = self.http.as_deref().expect("started with http");
        let (status, body) = http_get(addr, "/metrics").unwrap();
        assert_eq!(status, 200);
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.trim().parse().unwrap())
    }

    /// `/status`, parsed.
    fn status(&self) -> serde_json::Value {
        let addr = self.http.as_deref().expect("started with http");
        let (status, body) = http_get(addr, "/status").unwrap();
        assert_eq!(status, 200);
        serde_json::from_str(&body).unwrap()
    }

    /// SIGTERM, follow the drain to GOODBYE; the agent exits 0. Its log.
    fn stop(mut self) -> String {
        assert!(
            self.early.is_empty(),
            "answers not looked at: {:?}",
            self.early.keys()
        );
        self.process.signal("TERM");
        loop {
            match self.conn.next_event(TIMEOUT) {
                Ok(ManagerEvent::Goodbye { .. }) | Err(_) => break,
                Ok(ManagerEvent::Result { id, .. }) => {
                    panic!("RESULT for task {id} nobody waited for")
                }
                Ok(_) => {}
            }
        }
        drop(self.conn);
        let status = self.process.exit_within(TIMEOUT);
        let log = self.process.final_log();
        assert!(
            status.success(),
            "the agent exits 0 after its drain: {status}\n{log}"
        );
        log
    }
}

/// The group led by the pid in `file`, once the file is written.
fn group_in(file: &Path) -> u32 {
    let mut pgid = None;
    let written = wait_until(TIMEOUT, || {
        pgid = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok());
        pgid.is_some()
    });
    assert!(written, "{} written", file.display());
    pgid.unwrap()
}

/// Wait, within a bound, for group `pgid` to have no live process left.
fn assert_group_gone(pgid: u32) {
    let gone = wait_until(Duration::from_secs(10), || live_members(pgid).is_empty());
    assert!(
        gone,
        "process group {pgid} still has {:?} 10 s after its task was answered",
        live_members(pgid)
    );
}

/// Bytes from a small deterministic generator.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------
// The cases.
// ---------------------------------------------------------------------------

fn exec_handlers_answer_exactly(runtime: RuntimeKind) {
    let scratch = Scratch::new("exact", runtime);
    let config = table("cat", "exec", &["cat"], "")
        + &table("upper", "exec", &["tr", "a-z", "A-Z"], "concurrency = 4");
    let mut agent = Agent::start(runtime, &scratch, &config);
    for name in ["cat", "upper"] {
        assert!(
            agent.hello.handlers.iter().any(|h| h == name),
            "HELLO lists {name}: {:?}",
            agent.hello.handlers
        );
    }
    assert_eq!(agent.run("cat", b"").output(), b"");
    assert_eq!(agent.run("cat", b"hello, world").output(), b"hello, world");
    assert_eq!(
        agent.run("upper", b"hello, World 42!\n").output(),
        b"HELLO, WORLD 42!\n"
    );
    // Larger than a pipe's buffer both ways: written and read at once.
    let binary = noise(1 << 20, 7);
    let got = agent.run("cat", &binary).output();
    assert!(got == binary, "cat of 1 MiB: {} bytes back", got.len());
    let text: Vec<u8> = (0..300_000u32)
        .map(|i| b"abcdefghij XYZ\n"[i as usize % 15])
        .collect();
    let got = agent.run("upper", &text).output();
    assert!(got == text.to_ascii_uppercase(), "tr of 300 KB");
    // More tasks than `concurrency` at once: the rest wait, none is lost.
    let sent: Vec<(u64, Vec<u8>)> = (0..32u64)
        .map(|i| {
            let payload = format!("task {i} of many").into_bytes();
            (agent.send("upper", &payload), payload.to_ascii_uppercase())
        })
        .collect();
    for (id, expected) in sent {
        assert_eq!(agent.answer(id).output(), expected, "task {id}");
    }
    agent.stop();
}

fn a_non_zero_exit_fails_with_exit_status_and_stderr(runtime: RuntimeKind) {
    let scratch = Scratch::new("exit", runtime);
    let config = table(
        "parse",
        "exec",
        &["sh", "-c", "echo \"cannot parse: $(cat)\" >&2; exit 3"],
        "",
    ) + &table("killed", "exec", &["sh", "-c", "kill -KILL $$"], "")
        + &table(
            "chatty",
            "exec",
            &["sh", "-c", "head -c 100 /dev/zero | tr '\\0' x >&2; exit 1"],
            "stderr_cap = 16",
        )
        + &table(
            "warns",
            "exec",
            &["sh", "-c", "echo 'a warning only' >&2; printf done"],
            "",
        );
    let mut agent = Agent::start(runtime, &scratch, &config);
    assert_eq!(
        agent.run("parse", b"{not json").failure(),
        (
            "exit_status".into(),
            "exit status 3: cannot parse: {not json".into()
        )
    );
    assert_eq!(
        agent.run("killed", b"").failure(),
        ("exit_status".into(), "killed by signal 9 (SIGKILL)".into())
    );
    assert_eq!(
        agent.run("chatty", b"").failure(),
        (
            "exit_status".into(),
            "exit status 1: xxxxxxxxxxxxxxxx... (100 bytes of stderr)".into()
        ),
        "the first stderr_cap bytes, marked as cut"
    );
    // stderr with status 0 is a success; stderr is not the result.
    assert_eq!(agent.run("warns", b"").output(), b"done");
    agent.stop();
}

fn a_timeout_stops_the_whole_process_group(runtime: RuntimeKind) {
    let scratch = Scratch::new("timeout", runtime);
    let pidfile = scratch.path("stuck.pid");
    // The shell and everything it starts ignore SIGTERM, so only the
    // SIGKILL after kill_grace ends them; a background `sleep` is in the
    // group too.
    let script = format!(
        "trap '' TERM; sleep 60 & echo $$ > {}; sleep 60; wait",
        pidfile.display()
    );
    let config = table(
        "stuck",
        "exec",
        &["sh", "-c", &script],
        "timeout = \"3s\"\nkill_grace = \"500ms\"",
    );
    let mut agent = Agent::start(runtime, &scratch, &config);
    let id = agent.send("stuck", b"");
    let pgid = group_in(&pidfile);
    assert!(
        live_members(pgid).len() >= 2,
        "the shell and its background sleep run: {:?}",
        live_members(pgid)
    );
    assert_eq!(
        agent.answer(id).failure(),
        (
            "timeout".into(),
            "no result within 3s; its process group was stopped".into()
        )
    );
    assert_group_gone(pgid);
    agent.stop();
}

fn a_pool_worker_crashing_mid_task_is_restarted(runtime: RuntimeKind) {
    let scratch = Scratch::new("crash", runtime);
    let worker = scratch.write("moody.py", MOODY_WORKER);
    let config = table("moody", "pool", &[python3(), &worker], "processes = 1");
    let options = Options {
        http: true,
        ..Options::default()
    };
    let mut agent = Agent::start_with(runtime, &scratch, &config, options);
    assert_eq!(agent.run("moody", b"before").output(), b"before");
    let first = agent.run("moody", b"pid").output();
    assert_eq!(
        agent.run("moody", b"crash").failure(),
        (
            "worker_lost".into(),
            "the worker exited (exit status 7) with the task in flight".into()
        )
    );
    // The next task waits for the restarted worker and succeeds.
    assert_eq!(agent.run("moody", b"after").output(), b"after");
    let second = agent.run("moody", b"pid").output();
    assert_ne!(first, second, "a new worker process answers");
    // A FAILED frame is the handler's failure, not a lost worker.
    assert_eq!(
        agent.run("moody", b"fail").failure(),
        ("handler_failed".into(), "no such thing".into())
    );
    assert_eq!(agent.run("moody", b"still").output(), b"still");
    let restarts = agent.metric("ringworker_handler_restarts_total{handler=\"moody\"}");
    assert_eq!(restarts, Some(1.0), "one restart counted in /metrics");
    // /status is published every beat of the runtime: wait for it.
    let moody = || {
        let status = agent.status();
        status["handlers"]
            .as_array()
            .and_then(|handlers| handlers.iter().find(|h| h["name"] == "moody"))
            .cloned()
            .unwrap_or_else(|| panic!("/status lists moody: {status}"))
    };
    assert!(
        wait_until(TIMEOUT, || moody()["restarts"] == 1),
        "/status counts the restart: {}",
        moody()
    );
    let moody = moody();
    assert_eq!(moody["mode"], "pool", "{moody}");
    assert_eq!(moody["alive"], 1, "{moody}");
    assert_eq!(moody["state"], "ready", "{moody}");
    agent.stop();
}

fn a_pool_task_past_its_timeout_stops_the_worker_and_its_group(runtime: RuntimeKind) {
    let scratch = Scratch::new("pool-timeout", runtime);
    let worker = scratch.write("moody.py", MOODY_WORKER);
    let config = table(
        "moody",
        "pool",
        &[python3(), &worker],
        "processes = 1\ntimeout = \"2s\"\nkill_grace = \"500ms\"",
    );
    let mut agent = Agent::start(runtime, &scratch, &config);
    let pid: u32 = String::from_utf8(agent.run("moody", b"pid").output())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(live_members(pid), [pid], "the worker leads its own group");
    assert_eq!(
        agent.run("moody", b"hang").failure(),
        (
            "timeout".into(),
            "no result within 2s; the worker's process group was stopped".into()
        )
    );
    assert_group_gone(pid);
    assert_eq!(agent.run("moody", b"next").output(), b"next");
    agent.stop();
}

fn output_past_max_output_is_result_too_large(runtime: RuntimeKind) {
    let scratch = Scratch::new("too-large", runtime);
    let worker = scratch.write("moody.py", MOODY_WORKER);
    // The payload says how many bytes to write.
    let zeros = ["sh", "-c", "head -c \"$(cat)\" /dev/zero"];
    let config = table("zeros", "exec", &zeros, "")
        + &table("small", "exec", &zeros, "max_output = 1000")
        + &table("flood", "exec", &["yes"], "timeout = \"60s\"")
        + &table(
            "pool-small",
            "pool",
            &[python3(), &worker],
            "processes = 1\nmax_output = 1000",
        );
    let options = Options {
        max_body: Some("64KiB"),
        ..Options::default()
    };
    let mut agent = Agent::start_with(runtime, &scratch, &config, options);
    // max_output defaults to max_body.
    assert_eq!(agent.run("zeros", b"65536").output(), vec![0; 65536]);
    assert_eq!(
        agent.run("zeros", b"65537").failure(),
        (
            "result_too_large".into(),
            "the output passed max_output (65536 bytes); its process group was stopped".into()
        )
    );
    assert_eq!(agent.run("small", b"1000").output(), vec![0; 1000]);
    assert_eq!(
        agent.run("small", b"1001").failure(),
        (
            "result_too_large".into(),
            "the output passed max_output (1000 bytes); its process group was stopped".into()
        )
    );
    // A child that would write forever is stopped at the cap, long before
    // its timeout (the answer comes within the manager's wait).
    assert_eq!(agent.run("flood", b"").failure().0, "result_too_large");
    // A worker's oversized answer fails that task only; the worker stays.
    let pid = agent.run("pool-small", b"pid").output();
    assert_eq!(
        agent.run("pool-small", b"size 1000").output(),
        vec![b'z'; 1000]
    );
    assert_eq!(
        agent.run("pool-small", b"size 1001").failure(),
        (
            "result_too_large".into(),
            "the worker's answer of 1001 bytes passed max_output (1000 bytes)".into()
        )
    );
    assert_eq!(
        agent.run("pool-small", b"pid").output(),
        pid,
        "the same worker"
    );
    agent.stop();
}

fn a_child_that_never_reads_stdin_is_answered(runtime: RuntimeKind) {
    let scratch = Scratch::new("no-stdin", runtime);
    let config = table("ignore", "exec", &["sh", "-c", "echo ignored"], "")
        + &table("sleeper", "exec", &["sleep", "60"], "timeout = \"3s\"");
    let mut agent = Agent::start(runtime, &scratch, &config);
    // 4 MiB: far more than a pipe holds, and nobody reads it.
    let big = noise(4 << 20, 3);
    assert_eq!(agent.run("ignore", &big).output(), b"ignored\n");
    // A child that neither reads nor exits: its write stays pending, and
    // the session goes on answering other tasks meanwhile.
    let stuck = agent.send("sleeper", &big);
    let echo = agent.send("echo", b"still answering");
    let (first, answer) = agent.next_answer();
    assert_eq!(
        first, echo,
        "the built-in is answered while the child sleeps"
    );
    assert_eq!(answer.output(), b"still answering");
    assert_eq!(
        agent.answer(stuck).failure(),
        (
            "timeout".into(),
            "no result within 3s; its process group was stopped".into()
        )
    );
    agent.stop();
}

fn a_grandchild_holding_stdout_does_not_hold_the_task(runtime: RuntimeKind) {
    let scratch = Scratch::new("grandchild", runtime);
    let pidfile = scratch.path("forks.pid");
    // The child writes, leaves a subshell holding stdout and stderr (which
    // would write more a second later), and exits 0.
    let script = format!(
        "printf early; (sleep 1; printf late; sleep 60) & echo $$ > {}; exit 0",
        pidfile.display()
    );
    let config = table("forks", "exec", &["sh", "-c", &script], "");
    let mut agent = Agent::start(runtime, &scratch, &config);
    assert_eq!(
        agent.run("forks", b"").output(),
        b"early",
        "answered after a bounded drain, with what came before it"
    );
    assert_group_gone(group_in(&pidfile));
    let log = agent.stop();
    assert!(
        log.contains(
            "handler forks: its output was still held open after the child exited \
             (a process it started?); what came after the drain was not read"
        ),
        "the cut is logged:\n{log}"
    );
}

fn a_pool_worker_printing_to_stdout_keeps_results_exact(runtime: RuntimeKind) {
    let scratch = Scratch::new("junk", runtime);
    let worker = scratch.write("moody.py", MOODY_WORKER);
    let config = table(
        "junk",
        "pool",
        &[python3(), &worker],
        "processes = 2\nin_flight_per_process = 4\nenv = { JUNK = \"1\" }",
    );
    let mut agent = Agent::start(runtime, &scratch, &config);
    let sent: Vec<(u64, Vec<u8>)> = (0..200u64)
        .map(|i| {
            // Payloads that look like frames too.
            let mut payload = noise((i as usize * 37) % 3000, i);
            payload.extend_from_slice(&(i as u32).to_be_bytes());
            (agent.send("junk", &payload), payload)
        })
        .collect();
    for (id, payload) in sent {
        let got = agent.answer(id).output();
        assert!(
            got == payload,
            "task {id}: {} bytes back, {} sent",
            got.len(),
            payload.len()
        );
    }
    let log = agent.stop();
    assert!(
        log.contains("junk line 1"),
        "a worker's stdout goes to the agent's log:\n{log}"
    );
}

fn a_child_sees_only_its_declared_environment(runtime: RuntimeKind) {
    let scratch = Scratch::new("environment", runtime);
    let worker = scratch.write("moody.py", MOODY_WORKER);
    let token = "tok-7f3c9a-not-for-children";
    let declared = "env = { GREETING = \"hello\" }\npass_env = [\"PASSED\", \"NOT_SET_ANYWHERE\"]";
    let config = table("env", "exec", &["env"], declared)
        + &table("pool-env", "pool", &[python3(), &worker], declared);
    let options = Options {
        token: Some(token.to_owned()),
        env: vec![
            ("PASSED", "passed-value".to_owned()),
            ("SECRET", "agent-only".to_owned()),
            ("CREDENTIALS_DIRECTORY", scratch.0.display().to_string()),
        ],
        ..Options::default()
    };
    let mut agent = Agent::start_with(runtime, &scratch, &config, options);
    assert_eq!(
        agent.hello.token.as_deref(),
        Some(token),
        "the agent has the token"
    );
    let exec = agent.run("env", b"").output();
    let exec = String::from_utf8(exec).unwrap();
    let mut lines: Vec<&str> = exec.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["GREETING=hello", "PASSED=passed-value"], "{exec}");
    let pool = agent.run("pool-env", b"environ").output();
    let pool = String::from_utf8(pool).unwrap();
    let mut entries: Vec<&str> = pool.split('\0').filter(|e| !e.is_empty()).collect();
    entries.sort_unstable();
    assert_eq!(
        entries,
        [
            "GREETING=hello",
            "PASSED=passed-value",
            "RINGWORKER_HANDLER_FD=3"
        ],
        "{pool:?}"
    );
    let token_path = scratch.path("token").display().to_string();
    for seen in [&exec, &pool] {
        assert!(!seen.contains(token), "the token reached a child: {seen:?}");
        assert!(!seen.contains(&token_path), "the token's path: {seen:?}");
    }
    let log = agent.stop();
    assert!(!log.contains(token), "the token is never logged");
}

/// Drive the loadgen with a spawned agent of `runtime` and `config`: 1,000
/// tasks of `mix`, each checked exactly as the built-in `handler_as` says.
fn thousand_tasks(runtime: RuntimeKind, scratch: &Scratch, config: &str, mix: &str, like: &str) {
    let config = scratch.write("agent.toml", config);
    let report = scratch.path("report.json");
    let mut command = Command::new(loadgen_bin());
    command
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", runtime.as_str()])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .arg(format!("--agent-arg=--config={config}"))
        .args(["--sessions", "2", "--concurrency", "8", "--tasks", "1000"])
        .args([
            "--payload",
            "0..4096",
            "--handler",
            mix,
            "--handler-as",
            like,
        ])
        .args(["--progress", "never"])
        .arg(format!("--json={}", report.display()));
    let mut loadgen = Spawned::new(command);
    let status = loadgen.exit_within(Duration::from_secs(300));
    let log = loadgen.final_log();
    assert!(status.success(), "the loadgen passes: {status}\n{log}");
    let r = json(&report);
    assert_eq!(r["tasks_ok"], 1000, "{r}");
    assert_eq!(r["tasks_wrong"], 0, "{r}");
    assert_eq!(r["tasks_failed"], 0, "{r}");
    assert_eq!(r["tasks_lost"], 0, "{r}");
    assert_eq!(r["accounting_mismatches"], 0, "{r}");
}

fn a_thousand_tasks_through_exec_mode_all_exact(runtime: RuntimeKind) {
    let scratch = Scratch::new("exec-1000", runtime);
    let config = table("my-cat", "exec", &["cat"], "concurrency = 8")
        + &table(
            "py-sha256",
            "exec",
            &[python3(), "-c", SHA256_EXEC],
            "concurrency = 8",
        );
    thousand_tasks(
        runtime,
        &scratch,
        &config,
        "my-cat:9,py-sha256:1",
        "my-cat=echo,py-sha256=sha256",
    );
}

fn a_thousand_tasks_through_pool_mode_all_exact(runtime: RuntimeKind) {
    let scratch = Scratch::new("pool-1000", runtime);
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pool_worker.py");
    let sha = scratch.write("sha256.py", SHA256_WORKER);
    let rust = rust_example_worker();
    let pool = "processes = 2\nin_flight_per_process = 4";
    let config = table(
        "py-echo",
        "pool",
        &[python3(), &example.display().to_string()],
        pool,
    ) + &table("py-sha256", "pool", &[python3(), &sha], pool)
        + &table("rs-echo", "pool", &[&rust.display().to_string()], pool);
    thousand_tasks(
        runtime,
        &scratch,
        &config,
        "py-echo:2,py-sha256:1,rs-echo:2",
        "py-echo=echo,py-sha256=sha256,rs-echo=echo",
    );
}
