//! ringworker-loadgen end to end: it drives a spawned agent of each runtime,
//! catches a wrong result, and measures open-loop latency from the intended
//! send time. And what operators meet first: time values with units, output
//! paths and handler names refused before anything starts, the measured
//! window against the warm-up, progress lines in a log, completions and the
//! man page.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::loadgen_bin;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringworker::handlers::{HandlerRegistry, Reply};
use ringworker::runtime::{BlockingRuntime, RuntimeKind, RuntimeMode};
use ringworker::transport::Endpoint;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "ringworker-loadgen-test-{}-{name}",
        std::process::id()
    ))
}

fn json(path: &PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

for_each_runtime!(
    loadgen_drives_a_spawned_agent_with_exact_accounting,
    an_agent_stopped_mid_run_passes_the_check,
);

fn loadgen_drives_a_spawned_agent_with_exact_accounting(kind: RuntimeKind) {
    let report = temp_path(&format!("e2e-{}.json", kind.as_str()));
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", kind.as_str()])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--sessions", "4", "--concurrency", "8", "--duration", "2"])
        .args([
            "--handler",
            "echo:4,crc32c:1,sha256:1,sink:1",
            "--payload",
            "1..2048",
            "--ack",
        ])
        .arg(format!("--json={}", report.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r = json(&report);
    assert!(r["tasks_ok"].as_u64().unwrap() > 100, "{r}");
    assert_eq!(r["tasks_wrong"], 0);
    assert_eq!(r["tasks_lost"], 0);
    assert_eq!(r["tasks_failed"], 0);
    assert_eq!(r["accounting_mismatches"], 0);
    assert_eq!(r["sessions"], 4);
    assert!(
        r["agent_cpu_s"].as_f64().is_some(),
        "a spawned agent's CPU is reported"
    );
    for key in [
        "duration_s",
        "tasks_per_sec",
        "payload_mib_per_sec",
        "wire_mib_per_sec",
        "loadgen_cpu_s",
    ] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(r["latency_us"][key].as_u64().unwrap() > 0, "{key}");
    }
    let connections = r["connections"].as_array().unwrap();
    assert_eq!(connections.len(), 4);
    for c in connections {
        assert_eq!(
            c["worker"], "loadgen-spawned",
            "each connection names its agent"
        );
        assert_eq!(c["agent_bytes_sent"], c["bytes_received"]);
        assert_eq!(c["agent_bytes_received"], c["bytes_sent"]);
    }
    assert!(stdout.contains("PASS"), "{stdout}");
    let _ = std::fs::remove_file(report);
}

/// A blocking agent with `handlers` on `socket` for as long as `loadgen`
/// runs; the loadgen's exit status.
fn serve_with(
    loadgen: &mut std::process::Child,
    socket: &std::path::Path,
    handlers: HandlerRegistry,
) -> std::process::ExitStatus {
    let mut plan = common::plan(Endpoint::Unix(socket.to_path_buf()), 1, 8);
    plan.handlers = handlers;
    let mut agent = BlockingRuntime::new(plan);
    agent.start().unwrap();
    let status = loadgen.wait().unwrap();
    agent.request_stop();
    agent.wait();
    status
}

#[test]
fn a_wrong_result_is_caught_and_exits_non_zero() {
    // An agent whose `echo` corrupts one byte in a thousand tasks.
    let socket = temp_path("wrong.sock");
    let report = temp_path("wrong.json");
    let mut loadgen = Command::new(loadgen_bin())
        .arg(format!("--listen=unix://{}", socket.display()))
        .args([
            "--sessions",
            "1",
            "--concurrency",
            "4",
            "--tasks",
            "3000",
            "--payload",
            "32",
        ])
        .arg(format!("--json={}", report.display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut handlers = HandlerRegistry::new();
    let calls = std::sync::atomic::AtomicU64::new(0);
    handlers
        .register("echo", move |payload: &[u8], out: &mut Vec<u8>| {
            // `out` holds earlier frames: this task's output starts here.
            let start = out.len();
            out.extend_from_slice(payload);
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000 == 999 {
                out[start] ^= 0xFF;
            }
            Ok(Reply::Ready)
        })
        .unwrap();
    let status = serve_with(&mut loadgen, &socket, handlers);
    assert_eq!(status.code(), Some(1), "a wrong result fails the run");
    let r = json(&report);
    assert_eq!(r["tasks_wrong"], 3, "{r}");
    assert_eq!(r["tasks_ok"], 2997);
    assert_eq!(r["tasks_lost"], 0);
    let _ = std::fs::remove_file(report);
}

#[test]
fn a_handler_given_as_a_built_in_is_checked_byte_for_byte() {
    // An agent with two handlers of its own: `my-cat` echoes, `my-hash`
    // answers the SHA-256 digest but corrupts one answer in 250. Given as
    // `echo` and `sha256`, every answer is compared, so each corrupted one
    // is counted wrong and the rest ok.
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let socket = temp_path("handler-as.sock");
    let report = temp_path("handler-as.json");
    let mut loadgen = Command::new(loadgen_bin())
        .arg(format!("--listen=unix://{}", socket.display()))
        .args(["--sessions", "1", "--concurrency", "4", "--tasks", "2000"])
        .args(["--payload", "0..512", "--handler", "my-cat:1,my-hash:1"])
        .args(["--handler-as", "my-cat=echo", "--handler-as=my-hash=sha256"])
        .arg(format!("--json={}", report.display()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut handlers = HandlerRegistry::new();
    handlers
        .register("my-cat", |payload: &[u8], out: &mut Vec<u8>| {
            out.extend_from_slice(payload);
            Ok(Reply::Ready)
        })
        .unwrap();
    let calls = AtomicU64::new(0);
    let corrupted = Arc::new(AtomicU64::new(0));
    let counted = corrupted.clone();
    handlers
        .register("my-hash", move |payload: &[u8], out: &mut Vec<u8>| {
            let start = out.len();
            out.extend_from_slice(
                &ringworker::manager::verify::expected_output("sha256", payload).unwrap(),
            );
            if calls.fetch_add(1, Ordering::Relaxed) % 250 == 249 {
                out[start + 31] ^= 0x01;
                counted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Reply::Ready)
        })
        .unwrap();
    let status = serve_with(&mut loadgen, &socket, handlers);
    let corrupted = corrupted.load(Ordering::Relaxed);
    assert!(corrupted >= 2, "the mix reached my-hash: {corrupted}");
    assert_eq!(status.code(), Some(1), "a wrong result fails the run");
    let r = json(&report);
    assert_eq!(r["tasks_wrong"], corrupted, "{r}");
    assert_eq!(r["tasks_ok"], 2000 - corrupted, "{r}");
    assert_eq!(r["tasks_failed"], 0, "{r}");
    assert_eq!(r["tasks_lost"], 0, "{r}");
    let _ = std::fs::remove_file(report);
}

#[test]
fn an_unknown_built_in_after_handler_as_is_a_usage_error() {
    let dir = spawn_marker_dir("handler-as-unknown");
    let (code, stdout, stderr) =
        loadgen_with_marker(&dir, &["--handler", "resize", "--handler-as", "resize=md5"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "ringworker-loadgen: invalid value 'resize=md5' for '--handler-as <NAME=BUILTIN>': \
         unknown built-in \"md5\" after resize= (built-ins: echo, crc32c, sha256, sink, sleep); \
         see 'ringworker-loadgen --help'\n"
    );
    assert!(stdout.is_empty(), "{stdout}");
    // A name given two meanings is refused too, before anything starts.
    let (code, _, stderr) = loadgen_with_marker(
        &dir,
        &[
            "--handler",
            "x",
            "--handler-as",
            "x=echo",
            "--handler-unverified",
            "x",
        ],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "ringworker-loadgen: x is given both with --handler-unverified and with \
         --handler-as x=echo; keep one\n"
    );
    assert!(!dir.join("spawned").exists(), "no agent was started");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn open_loop_latency_counts_queueing_from_the_intended_send_time() {
    // 50 ms sleeps, one at a time, offered at 100/s: the agent can do 20/s,
    // so tasks queue and their latency, measured from when each was meant
    // to be sent, grows far past the 50 ms service time.
    let report = temp_path("open.json");
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--agent-arg=--max-in-flight=1", "--sessions", "1"])
        .args([
            "--handler",
            "sleep",
            "--payload",
            "50",
            "--rate",
            "100",
            "--duration",
            "2",
        ])
        .arg(format!("--json={}", report.display()))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r = json(&report);
    let p50 = Duration::from_micros(r["latency_us"]["p50"].as_u64().unwrap());
    let max = Duration::from_micros(r["latency_us"]["max"].as_u64().unwrap());
    assert!(
        p50 >= Duration::from_millis(300),
        "median includes queueing: {p50:?}"
    );
    assert!(
        max >= Duration::from_millis(1000),
        "the backlog grows: {max:?}"
    );
    assert_eq!(r["tasks_lost"], 0);
    let _ = std::fs::remove_file(report);
}

/// A rolling restart: the agent is stopped while the loadgen is sending at
/// full speed. The agent drains; the loadgen sends nothing after the DRAIN it
/// reads, so no task is lost and every connection's byte totals agree (a TASK
/// that was already on its way and reached the agent after its GOODBYE is
/// reported as unread, its bytes exactly the difference).
fn an_agent_stopped_mid_run_passes_the_check(kind: RuntimeKind) {
    for round in 0..3 {
        let socket = temp_path(&format!("midrun-{}-{round}.sock", kind.as_str()));
        let report = temp_path(&format!("midrun-{}-{round}.json", kind.as_str()));
        let loadgen = Command::new(loadgen_bin())
            .arg(format!("--listen=unix://{}", socket.display()))
            .args(["--sessions", "2", "--duration", "1.5"])
            // The last round keeps more in flight than the agent's window,
            // so TASKs are still queued in the loadgen when it stops.
            .args(["--concurrency", if round == 2 { "256" } else { "16" }])
            .args(["--handler", "echo", "--payload", "1..300", "--warmup", "0"])
            .arg(format!("--json={}", report.display()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut agent = common::start(kind, common::plan(Endpoint::Unix(socket.clone()), 2, 64));
        std::thread::sleep(Duration::from_millis(500));
        agent.request_stop();
        let run = agent.wait();
        assert!(run.is_clean(), "round {round}: {run:?}");
        let output = loadgen.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let r = json(&report);
        assert!(output.status.success(), "round {round}: {stdout}\n{r}");
        assert!(r["tasks_ok"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["tasks_lost"], 0, "{r}");
        assert_eq!(r["tasks_wrong"], 0, "{r}");
        assert_eq!(r["accounting_mismatches"], 0, "{r}");
        for c in r["connections"].as_array().unwrap() {
            assert_eq!(c["agent_bytes_sent"], c["bytes_received"], "{c}");
            let unread =
                c["bytes_sent"].as_u64().unwrap() - c["agent_bytes_received"].as_u64().unwrap();
            assert_eq!(
                unread > 0,
                c["tasks_unread"].as_u64().unwrap() > 0,
                "bytes the agent did not read are exactly unread tasks: {c}"
            );
            assert_eq!(c["bytes_unread"], unread, "{c}");
        }
        // An exact line with two different numbers says why.
        let unread_tasks = r["tasks_unread"].as_u64().unwrap();
        assert_eq!(
            stdout.matches("TASKs the agent never read)").count()
                + stdout.matches("TASK the agent never read)").count()
                > 0,
            unread_tasks > 0,
            "round {round}: {stdout}"
        );
        let _ = std::fs::remove_file(report);
    }
}

#[test]
fn a_run_where_no_task_succeeds_fails_and_says_why() {
    // A handler the agent does not have, driven on purpose (unchecked).
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--handler", "nosuch", "--handler-unverified", "nosuch"])
        .args(["--duration", "0.3"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL: no task succeeded (failed: unknown_handler"),
        "{stdout}"
    );
}

#[test]
fn a_spawned_agent_that_exits_at_start_ends_the_wait_at_once() {
    let started = std::time::Instant::now();
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--agent-arg=--max-body=1", "--connect-timeout", "60"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_body 1 must be between"), "{stderr}");
    assert!(
        stderr.contains("the spawned agent exited"),
        "the loadgen says why it stopped waiting: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it did not wait out --connect-timeout"
    );
}

#[test]
fn a_closed_stdout_and_stderr_cost_neither_the_json_report_nor_the_verdict() {
    // `ringworker-loadgen ... 2>&1 | head -1`: the reader is gone before the
    // report is printed.
    let report = temp_path("closed-pipes.json");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--duration", "0.3", "--warmup", "0"])
        .arg(format!("--json={}", report.display()))
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let r = json(&report);
    assert!(r["tasks_ok"].as_u64().unwrap() > 0, "{r}");
    let _ = std::fs::remove_file(report);
}

/// After an agent's GOODBYE the loadgen closes that connection as soon as
/// the agent has closed its side, so the agent's wait for the manager to
/// close (up to 2 s) ends at once and a drain costs only its tasks' time.
#[test]
fn the_loadgen_closes_a_connection_once_the_agent_said_goodbye() {
    let socket = temp_path("goodbye-close.sock");
    let report = temp_path("goodbye-close.json");
    let loadgen = Command::new(loadgen_bin())
        .arg(format!("--listen=unix://{}", socket.display()))
        .args(["--sessions", "2", "--duration", "4", "--concurrency", "8"])
        .args(["--handler", "echo", "--payload", "64", "--warmup", "0"])
        .arg(format!("--json={}", report.display()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = common::start(
        RuntimeKind::Blocking,
        common::plan(Endpoint::Unix(socket.clone()), 2, 64),
    );
    let stats = agent.stats();
    assert!(
        common::wait_until(Duration::from_secs(10), || stats
            .sessions
            .iter()
            .all(|s| s.tasks_done() > 0)),
        "both sessions get tasks"
    );
    let stopped = std::time::Instant::now();
    agent.request_stop();
    let run = agent.wait();
    let took = stopped.elapsed();
    assert!(run.is_clean(), "{run:?}");
    assert!(
        took < Duration::from_millis(1500),
        "the drain of 64-byte echo tasks took {took:?}: the loadgen kept the connections open"
    );
    let output = loadgen.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let r = json(&report);
    assert_eq!(r["accounting_mismatches"], 0, "{r}");
    assert_eq!(r["tasks_lost"], 0, "{r}");
    let _ = std::fs::remove_file(report);
}

/// A directory whose `run` file is a shell script that leaves `spawned`
/// beside it. With `--agent-bin=/bin/sh` and this as the working directory,
/// the loadgen's `sh run --manager ...` marks that an agent was started.
fn spawn_marker_dir(name: &str) -> PathBuf {
    let dir = temp_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("run"), "touch spawned\n").unwrap();
    dir
}

/// The loadgen with a marking "agent" in `dir`, and `args`; its exit code,
/// stdout and stderr.
fn loadgen_with_marker(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(loadgen_bin())
        .current_dir(dir)
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .args(["--agent-bin=/bin/sh", "--connect-timeout", "60s"])
        .args(["--duration", "60s", "--progress", "never"])
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_output_path_that_cannot_be_written_fails_before_anything_starts() {
    let dir = spawn_marker_dir("bad-output");
    // The marker works: with writable paths the "agent" is started (it
    // exits at once, which ends the wait), and the JSON report is written.
    let good = dir.join("good.json");
    let (code, _, stderr) = loadgen_with_marker(&dir, &[&format!("--json={}", good.display())]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("the spawned agent exited"), "{stderr}");
    assert!(dir.join("spawned").exists(), "the marker shows a start");
    assert!(json(&good)["sessions"].is_u64());
    std::fs::remove_file(dir.join("spawned")).unwrap();

    let missing = dir.join("no-such-dir").join("report.json");
    for flag in ["--json", "--hgrm"] {
        let (code, stdout, stderr) =
            loadgen_with_marker(&dir, &[&format!("{flag}={}", missing.display())]);
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "ringworker-loadgen: cannot write {flag} {}: No such file or directory (os error 2)\n",
                missing.display()
            ),
            "one line naming the option and the path"
        );
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            !dir.join("spawned").exists(),
            "{flag}: no agent was started before the path was checked"
        );
    }
    // A directory is no file either.
    let (code, _, stderr) = loadgen_with_marker(&dir, &[&format!("--json={}", dir.display())]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "ringworker-loadgen: cannot write --json {}: ",
            dir.display()
        )),
        "{stderr}"
    );
    assert!(!dir.join("spawned").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_unknown_handler_is_refused_at_start_with_the_known_ones() {
    let dir = spawn_marker_dir("unknown-handler");
    let (code, stdout, stderr) = loadgen_with_marker(&dir, &["--handler", "echo:3,nosuch:1"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.starts_with("ringworker-loadgen: unknown handler \"nosuch\" in --handler"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(known: echo, crc32c, sha256, sink, sleep)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--handler-unverified nosuch;"),
        "the way to drive it anyway: {stderr}"
    );
    assert!(
        stderr.ends_with("--handler-as nosuch=BUILTIN\n"),
        "the way to check it exactly: {stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert!(!dir.join("spawned").exists(), "no agent was started");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn time_options_take_units_and_bad_ones_are_one_line() {
    let report = temp_path("units.json");
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--duration", "500ms", "--warmup", "200ms"])
        .args(["--connect-timeout", "1m", "--heartbeat-ms", "5s"])
        .args(["--progress", "never", "--progress-interval", "2s"])
        .arg(format!("--json={}", report.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let r = json(&report);
    assert_eq!(r["warmup_s"], 0.2, "{r}");
    let measured = r["duration_s"].as_f64().unwrap();
    // Sending stops once 500 ms have passed (not 500 s, nor 500 minutes).
    assert!((0.5..60.0).contains(&measured), "{r}");
    assert!(
        !stderr.contains("measuring"),
        "--progress never prints no progress: {stderr}"
    );
    let _ = std::fs::remove_file(report);

    for (flag, value) in [
        ("--duration", "10x"),
        ("--duration", "0s"),
        ("--warmup", "soon"),
        ("--connect-timeout", "2 fortnights"),
        ("--progress-interval", "0"),
        ("--heartbeat-ms", "1.5"),
        ("--sleep-ms", "2s..5ms"),
    ] {
        let output = Command::new(loadgen_bin())
            .args(["--listen", "tcp://127.0.0.1:0", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{flag} {value}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "ringworker-loadgen: invalid value '{value}' for '{flag} "
            )),
            "{flag} {value}: {stderr}"
        );
    }
}

#[test]
fn the_measured_window_and_the_warm_up_are_reported_apart() {
    let report = temp_path("measured.json");
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--sessions", "2", "--concurrency", "8"])
        .args(["--warmup", "1s", "--duration", "1.5", "--progress", "never"])
        .arg(format!("--json={}", report.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r = json(&report);
    let n = |key: &str| r[key].as_u64().unwrap_or_else(|| panic!("{key}: {r}"));
    let f = |key: &str| r[key].as_f64().unwrap_or_else(|| panic!("{key}: {r}"));
    let (measured, warmup, ok) = (n("tasks_measured"), n("tasks_warmup"), n("tasks_ok"));
    assert!(measured > 0 && warmup > 0, "{r}");
    // The rate is the measured tasks over the measured window.
    let from_rate = f("tasks_per_sec") * f("duration_s");
    assert!(
        (from_rate - measured as f64).abs() <= 1.0,
        "tasks_per_sec x duration_s = {from_rate}, tasks_measured {measured}"
    );
    // tasks_ok covers the whole run: every answered task is in exactly
    // one of the two windows.
    assert!(ok >= measured, "{r}");
    assert_eq!(
        ok + n("tasks_failed") + n("tasks_wrong"),
        measured + warmup,
        "{r}"
    );
    assert_eq!(f("warmup_s"), 1.0);
    assert!(f("duration_s") >= 1.5, "{r}");
    // The text says the same.
    // 1234567 as 1,234,567.
    let grouped = |n: u64| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    assert!(
        stdout.contains(&format!(
            "  warm-up         1.00 s, {} tasks excluded from the rates and latency\n",
            grouped(warmup)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "  measured        {:.2} s, {} tasks (the rates and latency below)\n",
            f("duration_s"),
            grouped(measured)
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "ok {ok}  failed 0  wrong 0  lost 0  (whole run, warm-up included)"
        )),
        "{stdout}"
    );
    // Every key AGENT.md names is still there.
    for key in [
        "sessions",
        "duration_s",
        "tasks_ok",
        "tasks_failed",
        "tasks_wrong",
        "tasks_lost",
        "tasks_per_sec",
        "payload_mib_per_sec",
        "wire_mib_per_sec",
        "latency_us",
        "accounting_mismatches",
        "loadgen_cpu_s",
        "agent_cpu_s",
    ] {
        assert!(r.get(key).is_some(), "{key}: {r}");
    }
    let _ = std::fs::remove_file(report);
}

#[test]
fn progress_lines_reach_a_log_while_the_run_goes_on() {
    use std::io::BufRead;
    // stderr is a pipe, as in CI: plain lines at each phase and every second.
    let mut child = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args([
            "--warmup",
            "1s",
            "--duration",
            "3s",
            "--progress-interval",
            "1s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut measuring_while_running = 0;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if line.starts_with("ringworker-loadgen: measuring ")
                    && child.try_wait().unwrap().is_none()
                {
                    measuring_while_running += 1;
                }
                seen.push(line);
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("the loadgen ran past 60 s: {seen:#?}");
            }
        }
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{seen:#?}");
    let phases: Vec<&str> = seen
        .iter()
        .filter_map(|l| l.strip_prefix("ringworker-loadgen: "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|p| ["connecting", "warm-up", "measuring", "draining"].contains(p))
        .collect();
    let mut order = phases.clone();
    order.dedup();
    assert_eq!(
        order,
        ["connecting", "warm-up", "measuring", "draining"],
        "each phase in turn: {seen:#?}"
    );
    assert!(
        measuring_while_running >= 2,
        "lines every second while measuring, before the end: {seen:#?}"
    );
    for line in seen.iter().filter(|l| l.contains(" measuring ")) {
        for part in ["elapsed ", "  eta ", " tasks/s  done ", "  in flight "] {
            assert!(line.contains(part), "{part:?} in {line:?}");
        }
    }
    assert!(
        seen.iter().all(|l| !l.contains('\r')),
        "plain lines, no carriage returns: {seen:#?}"
    );
    assert!(!stdout.contains("measuring"), "progress stays off stdout");
}

#[test]
fn completions_and_the_man_page_are_printed() {
    let print = |args: &[&str]| {
        let output = Command::new(loadgen_bin()).args(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.stderr.is_empty(), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let bash = print(&["completions", "bash"]);
    assert!(bash.contains("--duration") && bash.contains("--handler-unverified"));
    assert!(bash.contains("--handler-as"), "the new option is completed");
    // bash loads it and has a completion for the command.
    let script = temp_path("completion.bash");
    std::fs::write(&script, &bash).unwrap();
    let loaded = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source {} && complete -p ringworker-loadgen",
            script.display()
        ))
        .output()
        .expect("bash is needed to load the completion script");
    assert!(
        loaded.status.success()
            && String::from_utf8_lossy(&loaded.stdout).contains("ringworker-loadgen"),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let _ = std::fs::remove_file(script);
    let zsh = print(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef ringworker-loadgen"), "{zsh}");
    assert!(zsh.contains("--warmup"));
    let fish = print(&["completions", "fish"]);
    assert!(fish.contains("complete -c ringworker-loadgen"), "{fish}");
    assert!(fish.contains("-l progress"), "{fish}");

    let page = print(&["manpage"]);
    assert!(page.contains(".TH ringworker-loadgen 1"), "{page}");
    for part in [
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH OPTIONS",
        "\\-\\-duration",
        "\\-\\-handler\\-unverified",
        "completions",
    ] {
        assert!(page.contains(part), "{part:?} in the man page");
    }
    // Run options and tools do not mix.
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "manpage"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}
