//! A manager that vanishes without a FIN or RST (a dead host, a dropped NAT
//! entry) is noticed with heartbeats off, once per runtime: TCP keepalive
//! and `TCP_USER_TIMEOUT` on the manager connection.
//!
//! The link is cut by taking the loopback interface down, which only a
//! network namespace of the test's own allows: each test runs itself again
//! inside `unshare --net` (root, as CI runs) and does its work there.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::process::Spawned;
use common::{accept, tcp_listener, wait_until, TIMEOUT};
use ringworker::runtime::RuntimeKind;
use ringworker::transport::TcpTuning;

for_each_runtime!(a_silently_dead_manager_is_noticed_with_heartbeats_off);

/// Set in the copy of the test that runs inside the namespace.
const INSIDE: &str = "RINGWORKER_TEST_INSIDE_NETNS";

fn a_silently_dead_manager_is_noticed_with_heartbeats_off(kind: RuntimeKind) {
    if std::env::var_os(INSIDE).is_some() {
        cut_the_link_and_time_the_agent(kind);
        return;
    }
    let test = format!(
        "{}::a_silently_dead_manager_is_noticed_with_heartbeats_off",
        kind.as_str()
    );
    let output = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", &test, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .unwrap_or_else(|err| panic!("unshare (util-linux) cannot run: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the test inside a new network namespace failed ({}); it needs root for \
         `unshare --net`:\n{stdout}\n{stderr}",
        output.status
    );
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|err| panic!("{program} (iproute2) cannot run: {err}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

fn cut_the_link_and_time_the_agent(kind: RuntimeKind) {
    run("ip", &["link", "set", "lo", "up"]);
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let tuning = TcpTuning {
        keepalive: Some(Duration::from_secs(1)),
        user_timeout: Some(Duration::from_secs(3)),
    };
    let bound = tuning.dead_peer_bound().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args(["run", "--manager", &endpoint, "--runtime", kind.as_str()])
        .args(["--metrics-addr", "off", "--tcp-keepalive", "1"])
        .args(["--tcp-user-timeout", "3"]);
    let mut agent = Spawned::new(command);
    // The bundled manager's WELCOME says heartbeat_ms 0: no PINGs.
    let (conn, _hello) = accept(&listener);
    assert!(
        wait_until(TIMEOUT, || agent.count("connected: WELCOME") >= 1),
        "{}",
        agent.log()
    );
    // Idle for longer than the keepalive time: the connection stays up
    // while the manager answers the probes.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(agent.count(" closed: sent "), 0, "{}", agent.log());
    let cut = Instant::now();
    run("ip", &["link", "set", "lo", "down"]);
    let noticed = wait_until(Duration::from_secs(60), || {
        agent.count(" closed: sent ") >= 1
    });
    let took = cut.elapsed();
    let log = agent.log();
    eprintln!(
        "{}: manager cut off with heartbeats off; keepalive 1 s, user timeout 3 s (bound {bound:?}): \
         noticed after {took:?}",
        kind.as_str()
    );
    assert!(noticed, "the agent never noticed the dead manager:\n{log}");
    assert!(
        log.contains("timed out"),
        "the connection ends by a timeout:\n{log}"
    );
    // Within the configured bound, with margin for a loaded machine.
    assert!(
        took < bound + Duration::from_secs(4),
        "noticed after {took:?}, bound {bound:?}:\n{log}"
    );
    agent.signal("TERM");
    agent.wait_within(TIMEOUT).expect("the agent stops");
    drop(conn);
}
