//! The `ringworker` binary under process-level faults, once per runtime: a
//! manager process killed with SIGKILL fifty times mid-stream, a drain that
//! runs out of time, and a second SIGTERM during a drain.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use common::loadgen_bin;
use common::process::Spawned;

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{tcp_listener, wait_until, TIMEOUT};
use ringworker::manager::{ManagerConfig, ManagerConn, ManagerError, ManagerEvent};
use ringworker::runtime::RuntimeKind;
use ringworker::transport::BlockingListener;

for_each_runtime!(
    manager_killed_fifty_times_is_redialled_without_growth,
    drain_timeout_abandons_a_long_task_and_exits_non_zero,
    a_drain_that_cannot_deliver_its_results_exits_non_zero_within_its_timeout,
    a_drain_cut_short_by_the_manager_leaving_exits_non_zero,
    second_sigterm_during_a_drain_exits_at_once_with_130,
);

fn agent_command(manager: &str, runtime: RuntimeKind, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringworker"));
    command
        .args([
            "run",
            "--manager",
            manager,
            "--runtime",
            runtime.as_str(),
            "--metrics-addr",
            "off",
        ])
        .args(["--reconnect-min", "20", "--reconnect-max", "200"])
        .args(extra);
    command
}

/// VmRSS of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The task count of a `session N closed: ..., T tasks` line.
fn tasks_of_summary(line: &str) -> Option<u64> {
    let (before, _) = line.split_once(" tasks")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Accept the agent's next connection within `limit` and complete the
/// handshake; the agent's log goes into the panic message otherwise.
fn accept_agent(listener: &BlockingListener, agent: &Spawned, limit: Duration) -> ManagerConn {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    let stream = loop {
        match listener.accept() {
            Ok(stream) => break stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the agent did not connect within {limit:?}:\n{}",
                    agent.log()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("accept failed: {err}"),
        }
    };
    listener.set_nonblocking(false).unwrap();
    stream.set_nonblocking(false).unwrap();
    let mut conn = ManagerConn::new(stream, ManagerConfig::default());
    conn.handshake(TIMEOUT)
        .expect("HELLO answered with WELCOME");
    conn
}

fn wait_for_ack(conn: &mut ManagerConn, id: u64) {
    loop {
        match conn.next_event(TIMEOUT).expect("an ACK") {
            ManagerEvent::Ack { id: got } if got == id => return,
            ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("expected ACK {id}, got {other:?}"),
        }
    }
}

/// Every event until the agent's side is gone (EOF or reset).
fn events_until_closed(conn: &mut ManagerConn) -> Vec<ManagerEvent> {
    let mut events = Vec::new();
    loop {
        match conn.next_event(TIMEOUT) {
            Ok(event) => events.push(event),
            Err(ManagerError::Closed) => return events,
            Err(ManagerError::Io(err)) if err.kind() == io::ErrorKind::ConnectionReset => {
                return events
            }
            Err(err) => panic!("waiting for the agent to close: {err}; so far {events:?}"),
        }
    }
}

fn manager_killed_fifty_times_is_redialled_without_growth(kind: RuntimeKind) {
    let path = std::env::temp_dir().join(format!(
        "ringworker-faults-kill-{}-{}.sock",
        std::process::id(),
        kind.as_str()
    ));
    let _ = std::fs::remove_file(&path);
    let endpoint = format!("unix://{}", path.display());
    let mut agent = Spawned::new(agent_command(&endpoint, kind, &["--sessions", "2"]));
    let loadgen = loadgen_bin();
    let started = Instant::now();
    let overall = Duration::from_secs(300);
    let (mut rss_after_5th, mut rss_after_50th) = (0u64, 0u64);
    let mut tasks_total = 0u64;
    for round in 1..=50u32 {
        assert!(
            started.elapsed() < overall,
            "round {round}: out of time after {:?}",
            started.elapsed()
        );
        let welcomed = agent.count("connected: WELCOME");
        let closed_lines = agent.log().lines().count();
        let closed = agent.count(" closed: sent ");
        // The manager: a loadgen on the same path each time (it replaces the
        // stale socket file its killed predecessor left), rate-limited to
        // spare the shared machine.
        let mut command = Command::new(&loadgen);
        command
            .args(["--listen", &endpoint, "--sessions", "2", "--duration", "30"])
            .args(["--rate", "2000", "--payload", "64"]);
        let mut manager = Spawned::new(command);
        assert!(
            wait_until(TIMEOUT, || agent.count("connected: WELCOME")
                >= welcomed + 2),
            "round {round}: the agent did not redial both sessions:\n{}\nloadgen:\n{}",
            agent.log(),
            manager.log()
        );
        // Let traffic flow, then kill the manager mid-stream.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            manager.running(),
            "round {round}: the loadgen exited early:\n{}",
            manager.log()
        );
        manager.signal("KILL");
        let status = manager
            .wait_within(TIMEOUT)
            .expect("the killed loadgen is reaped");
        assert_eq!(status.signal(), Some(9), "round {round}: {status}");
        drop(manager);
        assert!(
            wait_until(TIMEOUT, || agent.count(" closed: sent ") >= closed + 2),
            "round {round}: the agent did not notice the manager's death:\n{}",
            agent.log()
        );
        assert!(
            agent.running(),
            "round {round}: the agent died:\n{}",
            agent.log()
        );
        let log = agent.log();
        let round_tasks: u64 = log
            .lines()
            .skip(closed_lines)
            .filter(|line| line.contains(" closed: sent "))
            .filter_map(tasks_of_summary)
            .sum();
        assert!(
            round_tasks > 0,
            "round {round}: killed before any task flowed:\n{log}"
        );
        tasks_total += round_tasks;
        match round {
            5 => rss_after_5th = rss_kib(agent.pid()),
            50 => rss_after_50th = rss_kib(agent.pid()),
            _ => {}
        }
    }
    eprintln!(
        "{}: 50 SIGKILLed managers in {:?}, {tasks_total} tasks; agent RSS after the 5th kill \
         {rss_after_5th} KiB, after the 50th {rss_after_50th} KiB",
        kind.as_str(),
        started.elapsed()
    );
    // Within 10 % of the 5th-kill figure, plus 1 MiB of absolute slack for
    // allocator noise (arena high-water marks, page granularity), which is
    // not a per-reconnect leak.
    let bound = rss_after_5th + rss_after_5th / 10 + 1024;
    assert!(
        rss_after_50th <= bound,
        "agent RSS grew from {rss_after_5th} KiB (5th kill) to {rss_after_50th} KiB \
         (50th kill), bound {bound} KiB"
    );
    agent.signal("TERM");
    let status = agent
        .wait_within(TIMEOUT)
        .expect("the agent stops on SIGTERM");
    let log = agent.final_log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    assert_eq!(
        log.matches("connected: WELCOME").count(),
        100,
        "each of the 50 managers welcomed both sessions once:\n{log}"
    );
    let _ = std::fs::remove_file(&path);
}

fn drain_timeout_abandons_a_long_task_and_exits_non_zero(kind: RuntimeKind) {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let mut agent = Spawned::new(agent_command(&endpoint, kind, &["--drain-timeout", "1"]));
    let mut conn = accept_agent(&listener, &agent, TIMEOUT);
    conn.send_task(1, "sleep", &5000u32.to_be_bytes(), true)
        .unwrap();
    wait_for_ack(&mut conn, 1);
    let signalled = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait_within(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the agent outlived its drain timeout:\n{}", agent.log()));
    let took = signalled.elapsed();
    let log = agent.final_log();
    eprintln!(
        "{}: drain-timeout 1 with a 5 s task: exit {status} after {took:?}",
        kind.as_str()
    );
    assert!(
        !status.success() && status.code().is_some(),
        "exit {status}:\n{log}"
    );
    assert!(
        log.contains("abandoned"),
        "stderr says the task was abandoned:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    // On the wire: DRAIN, and no RESULT for the abandoned task.
    let events = events_until_closed(&mut conn);
    assert!(events.contains(&ManagerEvent::Drain), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ManagerEvent::Result { .. })),
        "the 5 s task cannot have finished: {events:?}"
    );
}

fn second_sigterm_during_a_drain_exits_at_once_with_130(kind: RuntimeKind) {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let mut agent = Spawned::new(agent_command(&endpoint, kind, &["--drain-timeout", "30"]));
    let mut conn = accept_agent(&listener, &agent, TIMEOUT);
    conn.send_task(1, "sleep", &20_000u32.to_be_bytes(), true)
        .unwrap();
    wait_for_ack(&mut conn, 1);
    let first = Instant::now();
    agent.signal("TERM");
    // The drain is under way once the agent says DRAIN.
    loop {
        match conn.next_event(TIMEOUT).expect("DRAIN after SIGTERM") {
            ManagerEvent::Drain => break,
            ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("expected DRAIN, got {other:?}"),
        }
    }
    assert!(agent.running(), "still draining the 20 s task");
    // A repeat within REPEATED_SIGNAL_WINDOW would be the same request.
    let window = ringworker::agent::REPEATED_SIGNAL_WINDOW + Duration::from_millis(50);
    std::thread::sleep(window.saturating_sub(first.elapsed()));
    let signalled = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait_within(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("a second SIGTERM did not exit at once:\n{}", agent.log()));
    let took = signalled.elapsed();
    let log = agent.final_log();
    eprintln!(
        "{}: second SIGTERM during a drain: exit {status} after {took:?}",
        kind.as_str()
    );
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("second signal"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// The manager stops reading while RESULTs pile up: at the drain deadline
/// those RESULTs are undelivered, said so with their number, and the exit
/// status is non-zero; the whole drain, linger included, ends by the
/// deadline (PROTOCOL.md "Ending a session", AGENT.md exit status).
fn a_drain_that_cannot_deliver_its_results_exits_non_zero_within_its_timeout(kind: RuntimeKind) {
    use std::io::Write;
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let mut agent = Spawned::new(agent_command(&endpoint, kind, &["--drain-timeout", "2"]));
    let conn = accept_agent(&listener, &agent, TIMEOUT);
    // 400 echo TASKs of 128 KiB (50 MiB of RESULTs), written by a thread
    // while this manager never reads: far more than the socket buffers hold.
    let payload = vec![7u8; 128 * 1024];
    let mut tasks = Vec::new();
    for id in 1..=400u64 {
        let mut body = Vec::new();
        ringworker::protocol::machine::encode_task_body(&mut body, "echo", &payload);
        ringworker::protocol::frame::encode_frame(
            &mut tasks,
            ringworker::protocol::FrameKind::Task,
            0,
            id,
            &body,
        );
    }
    let mut raw = conn.stream().try_clone().unwrap();
    // Ends when the agent has closed the connection (the write fails).
    let writer = std::thread::spawn(move || raw.write_all(&tasks).is_ok());
    std::thread::sleep(Duration::from_secs(1));
    let signalled = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait_within(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("the agent outlived its drain timeout:\n{}", agent.log()));
    let took = signalled.elapsed();
    let log = agent.final_log();
    eprintln!(
        "{}: drain-timeout 2, manager not reading: exit {status} after {took:?}",
        kind.as_str()
    );
    assert!(
        !status.success() && status.code().is_some(),
        "RESULTs were left unwritten, yet exit {status}:\n{log}"
    );
    let undelivered = log
        .lines()
        .find_map(|line| {
            let (before, _) = line.split_once(" RESULTs undelivered")?;
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .unwrap_or_else(|| panic!("no line counting the undelivered RESULTs:\n{log}"));
    assert!(undelivered > 0, "{log}");
    // The bound holds for the whole drain (1 s of margin for this shared
    // machine; the note in the issue gives the measured figures).
    assert!(
        took < Duration::from_secs(3),
        "a 2 s drain took {took:?}:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(conn);
    let _ = writer.join();
}

/// The manager goes away during the drain while a task runs: the drain is
/// cut short before its deadline, and the exit status still says a task
/// was left unfinished.
fn a_drain_cut_short_by_the_manager_leaving_exits_non_zero(kind: RuntimeKind) {
    let listener = tcp_listener();
    let endpoint = listener.local_endpoint().unwrap().to_string();
    let mut agent = Spawned::new(agent_command(&endpoint, kind, &["--drain-timeout", "30"]));
    let mut conn = accept_agent(&listener, &agent, TIMEOUT);
    conn.send_task(1, "sleep", &5000u32.to_be_bytes(), true)
        .unwrap();
    wait_for_ack(&mut conn, 1);
    agent.signal("TERM");
    // The DRAIN arrives; then the manager closes its socket for good.
    let _ = conn.next_event(TIMEOUT);
    drop(conn);
    drop(listener);
    let status = agent
        .wait_within(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("the agent did not stop:\n{}", agent.log()));
    let log = agent.final_log();
    assert!(
        !status.success() && status.code().is_some(),
        "a task was abandoned, yet exit {status}:\n{log}"
    );
    assert!(log.contains("drain cut short"), "{log}");
    assert!(log.contains("1 tasks abandoned"), "{log}");
}
