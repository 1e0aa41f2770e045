//! What only the io_uring engine has to prove: many sessions per thread,
//! sessions spread over threads, isolation between sessions of one thread,
//! and a clean stop (no leaked descriptor, no hang).

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{accept, plan, start, tcp_listener, TIMEOUT};
use ringworker::manager::{ManagerError, ManagerEvent};
use ringworker::runtime::RuntimeKind;

/// The descriptor counts below are process-wide: run this file's tests one
/// at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn uring_thread_names() -> HashSet<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("uring-"))
        .collect()
}

#[test]
fn a_thousand_sessions_on_one_agent_each_run_tasks_and_stop_cleanly() {
    let _serial = serial();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sessions = 1000u32;
    let fds_before = open_fds();
    let listener = tcp_listener();
    let mut agent = start(
        RuntimeKind::Uring,
        plan(listener.local_endpoint().unwrap(), sessions, 16),
    );
    let mut conns = Vec::new();
    let mut indexes = HashSet::new();
    for _ in 0..sessions {
        let (conn, hello) = accept(&listener);
        assert!(
            indexes.insert(hello.session),
            "session {} twice",
            hello.session
        );
        conns.push(conn);
    }
    assert_eq!(indexes.len(), sessions as usize);
    assert!(indexes.iter().all(|&i| i < sessions));
    // A task on every session, all in flight together.
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send_task(i as u64, "echo", &(i as u64).to_be_bytes(), false)
            .unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Result { id, failed, body } => {
                assert_eq!((id, failed), (i as u64, false));
                assert_eq!(body, (i as u64).to_be_bytes());
            }
            other => panic!("session {i}: unexpected {other:?}"),
        }
    }
    assert_eq!(agent.stats().tasks_done(), u64::from(sessions));
    assert_eq!(agent.stats().connected_sessions(), sessions as usize);

    let stop_started = Instant::now();
    common::manager::stop_cleanly(agent.as_mut(), conns);
    eprintln!(
        "stop of {sessions} idle sessions took {:?}",
        stop_started.elapsed()
    );
    drop(agent);
    drop(listener);
    assert_eq!(
        open_fds(),
        fds_before,
        "every socket, ring and pipe was closed"
    );
}

#[test]
fn sessions_are_spread_over_the_event_loop_threads() {
    let _serial = serial();
    let listener = tcp_listener();
    let mut session_plan = plan(listener.local_endpoint().unwrap(), 6, 8);
    session_plan.threads = 3;
    let mut agent = start(RuntimeKind::Uring, session_plan);
    let mut conns: Vec<_> = (0..6).map(|_| accept(&listener).0).collect();
    let names = uring_thread_names();
    for thread in ["uring-0", "uring-1", "uring-2"] {
        assert!(names.contains(thread), "{thread} missing from {names:?}");
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send_task(1, "sha256", b"abc", false).unwrap();
        assert!(
            matches!(
                conn.next_event(TIMEOUT).unwrap(),
                ManagerEvent::Result { failed: false, .. }
            ),
            "session {i}"
        );
    }
    agent.request_stop();
    for conn in &mut conns {
        conn.read_to_end(TIMEOUT).unwrap();
    }
    assert!(agent.wait().is_clean());
}

#[test]
fn a_broken_session_does_not_disturb_others_on_its_thread() {
    let _serial = serial();
    let listener = tcp_listener();
    let mut session_plan = plan(listener.local_endpoint().unwrap(), 2, 8);
    session_plan.threads = 1;
    let mut agent = start(RuntimeKind::Uring, session_plan);
    let (mut victim, _) = accept(&listener);
    let (mut healthy, _) = accept(&listener);
    // Garbage on one session: ERROR, close, redial.
    victim.send_raw_bytes(&[0xFF; 64]).unwrap();
    match victim.next_event(TIMEOUT).unwrap() {
        ManagerEvent::Error { code, .. } => assert_eq!(code, "bad_frame"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        victim.next_event(TIMEOUT),
        Err(ManagerError::Closed)
    ));
    // The other session on the same thread keeps working meanwhile.
    for id in 0..100u64 {
        healthy.send_task(id, "echo", b"fine", false).unwrap();
        assert!(matches!(
            healthy.next_event(TIMEOUT).unwrap(),
            ManagerEvent::Result { failed: false, .. }
        ));
    }
    let (mut redialled, _) = accept(&listener);
    redialled.send_task(1, "echo", b"back", false).unwrap();
    assert!(matches!(
        redialled.next_event(TIMEOUT).unwrap(),
        ManagerEvent::Result { failed: false, .. }
    ));
    agent.request_stop();
    healthy.read_to_end(TIMEOUT).unwrap();
    redialled.read_to_end(TIMEOUT).unwrap();
    assert!(agent.wait().is_clean());
}

#[test]
fn stop_while_dialling_an_absent_manager_returns_promptly_without_leaks() {
    let _serial = serial();
    let fds_before = open_fds();
    // Nothing listens here: every dial is refused and backs off.
    let endpoint = tcp_listener().local_endpoint().unwrap();
    let mut agent = start(RuntimeKind::Uring, plan(endpoint, 50, 8));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        agent.stats().reconnects_total() > 0,
        "sessions keep redialling"
    );
    agent.request_stop();
    let report = agent.wait();
    assert!(report.is_clean());
    drop(agent);
    assert_eq!(open_fds(), fds_before);
}

#[test]
fn a_manager_named_by_host_name_is_dialled_without_blocking_the_loop() {
    // `localhost` is looked up on a thread of its own; every address it
    // resolves to is tried in turn (where it resolves to ::1 first and the
    // manager listens on 127.0.0.1 only, the second dial connects).
    let _serial = serial();
    let listener = tcp_listener();
    let port = match listener.local_endpoint().unwrap() {
        ringworker::transport::Endpoint::Tcp { port, .. } => port,
        other => panic!("unexpected {other}"),
    };
    let endpoint: ringworker::transport::Endpoint =
        format!("tcp://localhost:{port}").parse().unwrap();
    let mut agent = start(RuntimeKind::Uring, plan(endpoint, 2, 8));
    let mut conns: Vec<_> = (0..2).map(|_| accept(&listener).0).collect();
    for (i, conn) in conns.iter_mut().enumerate() {
        conn.send_task(i as u64, "echo", b"by name", false).unwrap();
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Result { id, body, .. } => {
                assert_eq!((id, body.as_slice()), (i as u64, &b"by name"[..]))
            }
            other => panic!("expected a RESULT, got {other:?}"),
        }
    }
    agent.request_stop();
    drop(conns);
    let report = agent.wait();
    assert_eq!(report.abandoned_tasks, 0);
}

/// Client sockets of this network namespace connected or connecting to
/// `port` on 127.0.0.1 (`/proc/net/tcp`: ESTABLISHED or SYN_SENT).
fn dials_towards(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|addr| addr.split_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            remote_port == Some(port) && matches!(fields.get(3), Some(&"01") | Some(&"02"))
        })
        .count()
}

#[test]
fn a_thousand_sessions_do_not_send_a_thousand_syns_at_once() {
    // A manager whose listen backlog is full drops SYNs (the dialler
    // retransmits after 1 s): the agent keeps at most 256 connects in flight
    // per event loop, so its sessions do not all dial at the same moment.
    let _serial = serial();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    socket.listen(1).unwrap(); // never accepted
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    let endpoint: ringworker::transport::Endpoint =
        format!("tcp://127.0.0.1:{port}").parse().unwrap();
    let mut agent = start(RuntimeKind::Uring, plan(endpoint, 1000, 8));
    let mut most = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        most = most.max(dials_towards(port));
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.request_stop();
    let report = agent.wait();
    assert_eq!(report.abandoned_tasks, 0);
    assert!(most > 0, "the sessions dial");
    // Two event loops (`plan` asks for 2 threads), 256 each, plus the few
    // the backlog accepted.
    assert!(most <= 2 * 256 + 8, "{most} connects at once");
    drop(socket);
}
