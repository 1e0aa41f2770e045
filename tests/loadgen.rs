//! ringworker-loadgen end to end: it drives a spawned agent of each runtime,
//! catches a wrong result, and measures open-loop latency from the intended
//! send time.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::loadgen_bin;

use std::path::PathBuf;
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
            out.extend_from_slice(payload);
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000 == 999 {
                out[0] ^= 0xFF;
            }
            Ok(Reply::Ready)
        })
        .unwrap();
    let mut plan = common::plan(Endpoint::Unix(socket.clone()), 1, 8);
    plan.handlers = handlers;
    let mut agent = BlockingRuntime::new(plan);
    agent.start().unwrap();
    let status = loadgen.wait().unwrap();
    agent.request_stop();
    agent.wait();
    assert_eq!(status.code(), Some(1), "a wrong result fails the run");
    let r = json(&report);
    assert_eq!(r["tasks_wrong"], 3, "{r}");
    assert_eq!(r["tasks_ok"], 2997);
    assert_eq!(r["tasks_lost"], 0);
    let _ = std::fs::remove_file(report);
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
    let output = Command::new(loadgen_bin())
        .args(["--listen", "tcp://127.0.0.1:0", "--spawn", "blocking"])
        .arg(format!("--agent-bin={}", env!("CARGO_BIN_EXE_ringworker")))
        .args(["--handler", "nosuch", "--duration", "0.3"])
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
