//! Faults the agent must survive, over real sockets, once per runtime: bytes
//! trickling in one at a time, a mebibyte of garbage, protocol violations, a
//! manager that never answers HELLO or goes silent, a manager path that does
//! not exist, a half-closed connection, a manager that never reads, and 200
//! sessions losing their manager at once.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use common::{plan, tcp_listener, wait_until, TIMEOUT};
use rand::{RngCore, SeedableRng};
use ringworker::manager::{ManagerConfig, ManagerConn, ManagerError, ManagerEvent};
use ringworker::protocol::frame::{encode_frame, parse_header, FrameKind, HEADER_LEN};
use ringworker::protocol::machine::encode_task_body;
use ringworker::protocol::{Hello, Welcome, PROTOCOL_VERSION};
use ringworker::runtime::{AgentPlan, ReconnectPolicy, RuntimeKind, RuntimeMode};
use ringworker::transport::{BlockingListener, BlockingStream, Endpoint};

for_each_runtime!(
    bytes_one_at_a_time_still_give_exact_results,
    a_mebibyte_of_garbage_is_refused_then_the_worker_redials,
    task_or_ping_before_welcome_is_unexpected_frame,
    duplicate_in_flight_task_id_is_refused,
    handler_name_of_65_bytes_is_bad_frame,
    unanswered_hello_times_out_and_the_worker_redials,
    absent_unix_socket_is_retried_and_stop_is_prompt,
    half_closed_connection_finishes_every_task_then_goodbye,
    a_manager_that_closes_its_socket_is_redialled_before_the_tasks_end,
    heartbeats_flow_and_a_silent_manager_is_dropped,
    a_large_frame_trickling_in_keeps_the_heartbeat_alive,
    a_frame_larger_than_one_receive_then_a_lone_small_task,
    a_manager_that_never_reads_is_slowed_not_buffered,
    the_header_of_a_huge_frame_commits_no_memory_before_its_bytes,
    two_hundred_sessions_redial_spread_out,
);

const MAX_BODY: u32 = 16 * 1024 * 1024;

/// Most tests share the machine; the ones that measure process memory or
/// the timing of 200 redials run alone.
static EXCLUSIVE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    EXCLUSIVE
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    EXCLUSIVE
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Panics on the agent's own threads (`session-*` of the blocking runtime,
/// `uring-*` of the io_uring one), counted by a process-wide hook that then
/// hands over to the default one. A runtime may survive a panicking thread
/// in ways a behavioural check misses; this catches it.
static AGENT_PANICS: AtomicUsize = AtomicUsize::new(0);

fn start(kind: RuntimeKind, plan: AgentPlan) -> Box<dyn RuntimeMode> {
    static WATCH: Once = Once::new();
    WATCH.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default();
            if name.starts_with("session-") || name.starts_with("uring-") {
                AGENT_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    common::start(kind, plan)
}

fn assert_no_agent_panic() {
    assert_eq!(
        AGENT_PANICS.load(Ordering::SeqCst),
        0,
        "an agent thread panicked (see the log above)"
    );
}

/// A whole TASK frame, built without the manager machine.
fn task_frame(id: u64, handler: &str, payload: &[u8], flags: u8) -> Vec<u8> {
    let mut body = Vec::new();
    encode_task_body(&mut body, handler, payload);
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::Task, flags, id, &body);
    frame
}

/// One frame as read off the socket, undecoded beyond the header.
#[derive(Debug)]
struct RawFrame {
    kind: u8,
    flags: u8,
    id: u64,
    body: Vec<u8>,
}

fn read_raw_frame(stream: &mut BlockingStream, timeout: Duration) -> io::Result<RawFrame> {
    stream.set_read_timeout(Some(timeout))?;
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header)?;
    let len = u32::from_be_bytes(header[0..4].try_into().unwrap());
    assert!(len >= 12, "worker sent a frame with len {len} < 12");
    let mut body = vec![0u8; (len - 12) as usize];
    stream.read_exact(&mut body)?;
    Ok(RawFrame {
        kind: header[4],
        flags: header[5],
        id: u64::from_be_bytes(header[8..16].try_into().unwrap()),
        body,
    })
}

/// Write `bytes` one at a time, pausing after each.
fn trickle(stream: &mut BlockingStream, bytes: &[u8]) {
    for byte in bytes {
        stream.write_all(std::slice::from_ref(byte)).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Accept the next connection within `limit`, or `None`.
fn accept_within(listener: &BlockingListener, limit: Duration) -> Option<BlockingStream> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    let accepted = loop {
        match listener.accept() {
            Ok(stream) => break Some(stream),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("accept failed: {err}"),
        }
    };
    listener.set_nonblocking(false).unwrap();
    if let Some(stream) = &accepted {
        stream.set_nonblocking(false).unwrap();
    }
    accepted
}

/// The next connection, raw (no handshake), within the test timeout.
fn accept_raw(listener: &BlockingListener) -> BlockingStream {
    accept_within(listener, TIMEOUT).expect("the worker connects")
}

/// Accept the next worker within the test timeout and answer its HELLO.
fn accept_with(listener: &BlockingListener, config: ManagerConfig) -> (ManagerConn, Hello) {
    let mut conn = ManagerConn::new(accept_raw(listener), config);
    let hello = conn
        .handshake(TIMEOUT)
        .expect("HELLO answered with WELCOME");
    (conn, hello)
}

fn accept(listener: &BlockingListener) -> (ManagerConn, Hello) {
    accept_with(listener, ManagerConfig::default())
}

/// Read (and discard) until the peer closes; false if `limit` passes first.
fn reads_to_eof(stream: &mut BlockingStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        stream.set_read_timeout(Some(deadline - now)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(err) => panic!("read failed: {err}"),
        }
    }
}

/// The next ERROR from the worker (ACK / PING / PONG skipped).
fn expect_error(conn: &mut ManagerConn) -> (String, String) {
    loop {
        match conn.next_event(TIMEOUT).expect("an ERROR from the worker") {
            ManagerEvent::Error { code, message } => return (code, message),
            ManagerEvent::Ack { .. } | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

/// ERROR is fatal: the worker closes right after it.
fn expect_closed(conn: &mut ManagerConn) {
    match conn.next_event(TIMEOUT) {
        Err(ManagerError::Closed) => {}
        Err(ManagerError::Io(err)) if err.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the worker to close after ERROR, got {other:?}"),
    }
}

/// The next RESULT (ACK / PING / PONG skipped).
fn result(conn: &mut ManagerConn) -> (u64, bool, Vec<u8>) {
    loop {
        match conn.next_event(TIMEOUT).expect("a RESULT") {
            ManagerEvent::Result { id, failed, body } => return (id, failed, body),
            ManagerEvent::Ack { .. } | ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } => {}
            other => panic!("expected RESULT, got {other:?}"),
        }
    }
}

/// Accept the worker's redial and check it serves a task.
fn redial_serves_a_task(listener: &BlockingListener) {
    let (mut conn, hello) = accept(listener);
    assert_eq!(hello.session, 0);
    conn.send_task(99, "echo", b"back again", false).unwrap();
    assert_eq!(result(&mut conn), (99, false, b"back again".to_vec()));
}

/// `request_stop`, then `wait` within `limit`; the run must be clean.
/// Returns how long the stop took.
fn stop_clean(agent: Box<dyn RuntimeMode>, limit: Duration) -> Duration {
    let started = Instant::now();
    agent.request_stop();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut agent = agent;
        let report = agent.wait();
        let _ = tx.send(report);
    });
    let report = rx
        .recv_timeout(limit)
        .unwrap_or_else(|_| panic!("the agent did not stop within {limit:?}"));
    assert!(report.is_clean(), "{report:?}");
    assert_no_agent_panic();
    started.elapsed()
}

/// This process's resident set, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

fn bytes_one_at_a_time_still_give_exact_results(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let mut stream = accept_raw(&listener);
    let hello = read_raw_frame(&mut stream, TIMEOUT).unwrap();
    assert_eq!(hello.kind, FrameKind::Hello as u8);
    // WELCOME, a byte at a time.
    let welcome = serde_json::to_vec(&Welcome {
        protocol: PROTOCOL_VERSION,
        manager: "trickle".into(),
        max_body: MAX_BODY,
        heartbeat_ms: 0,
    })
    .unwrap();
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::Welcome, 0, 0, &welcome);
    trickle(&mut stream, &frame);

    let echo_payload: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37)).collect();
    let cases: [(u64, &str, &[u8], Vec<u8>); 2] = [
        (1, "echo", &echo_payload, echo_payload.clone()),
        (
            2,
            "crc32c",
            b"123456789",
            0xE306_9283u32.to_be_bytes().to_vec(),
        ),
    ];
    for (id, handler, payload, expected) in cases {
        trickle(&mut stream, &task_frame(id, handler, payload, 0));
        let answer = read_raw_frame(&mut stream, TIMEOUT).unwrap();
        assert_eq!(answer.kind, FrameKind::Result as u8, "{answer:?}");
        assert_eq!((answer.id, answer.flags), (id, 0), "{handler}");
        assert_eq!(answer.body, expected, "{handler}");
    }
    // A PING, a byte at a time, is answered with the same nonce.
    let mut ping = Vec::new();
    encode_frame(&mut ping, FrameKind::Ping, 0, 0x0123_4567_89AB_CDEF, &[]);
    trickle(&mut stream, &ping);
    let pong = read_raw_frame(&mut stream, TIMEOUT).unwrap();
    assert_eq!(pong.kind, FrameKind::Pong as u8, "{pong:?}");
    assert_eq!(pong.id, 0x0123_4567_89AB_CDEF);
    assert!(pong.body.is_empty());
    stop_clean(agent, TIMEOUT);
}

fn a_mebibyte_of_garbage_is_refused_then_the_worker_redials(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    // Seeded, so a failure reproduces; the first 16 bytes must not happen to
    // be a valid header (astronomically unlikely, but checked).
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6A7B_A6E0 ^ kind as u64);
    let mut garbage = vec![0u8; 1 << 20];
    let expected = loop {
        rng.fill_bytes(&mut garbage);
        let header = garbage.first_chunk::<HEADER_LEN>().unwrap();
        if let Err(err) = parse_header(header, MAX_BODY) {
            break err;
        }
    };
    // Write from another thread: the worker closes after the first header,
    // so the write fails partway (reset or broken pipe), which is expected.
    let mut writer = conn.stream().try_clone().unwrap();
    if let BlockingStream::Tcp(tcp) = &writer {
        tcp.set_write_timeout(Some(TIMEOUT)).unwrap();
    }
    let sender = std::thread::spawn(move || writer.write_all(&garbage).is_ok());
    let (code, message) = expect_error(&mut conn);
    assert_eq!(
        code,
        expected.code(),
        "first bad header is {expected}; got {message}"
    );
    assert!(
        ["bad_frame", "frame_too_large"].contains(&code.as_str()),
        "{code}"
    );
    eprintln!(
        "{}: 1 MiB of garbage: ERROR {code}: {message}",
        kind.as_str()
    );
    expect_closed(&mut conn);
    let _ = sender.join().expect("writer thread");
    drop(conn);
    redial_serves_a_task(&listener);
    assert!(agent.stats().reconnects_total() >= 1);
    stop_clean(agent, TIMEOUT);
}

fn task_or_ping_before_welcome_is_unexpected_frame(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let mut ping = Vec::new();
    encode_frame(&mut ping, FrameKind::Ping, 0, 42, &[]);
    let early_frames = [
        ("TASK", task_frame(1, "echo", b"too early", 0)),
        ("PING", ping),
    ];
    for (what, frame) in early_frames {
        // Read the HELLO raw and do not answer it.
        let mut stream = accept_raw(&listener);
        let hello = read_raw_frame(&mut stream, TIMEOUT).unwrap();
        assert_eq!(hello.kind, FrameKind::Hello as u8);
        let mut conn = ManagerConn::new(stream, ManagerConfig::default());
        conn.send_raw_bytes(&frame).unwrap();
        let (code, message) = expect_error(&mut conn);
        assert_eq!(code, "unexpected_frame", "{what} before WELCOME: {message}");
        expect_closed(&mut conn);
    }
    redial_serves_a_task(&listener);
    stop_clean(agent, TIMEOUT);
}

fn duplicate_in_flight_task_id_is_refused(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    // One write: the second arrives while the first sleeps.
    conn.queue_task(7, "sleep", &300u32.to_be_bytes(), true)
        .unwrap();
    conn.queue_task(7, "sleep", &300u32.to_be_bytes(), true)
        .unwrap();
    conn.flush().unwrap();
    let (code, message) = expect_error(&mut conn);
    assert_eq!(code, "duplicate_task_id", "{message}");
    expect_closed(&mut conn);
    drop(conn);
    redial_serves_a_task(&listener);
    stop_clean(agent, TIMEOUT);
}

fn handler_name_of_65_bytes_is_bad_frame(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let mut body = vec![65u8];
    body.extend_from_slice(&[b'a'; 65]);
    body.extend_from_slice(b"payload");
    let mut frame = Vec::new();
    encode_frame(&mut frame, FrameKind::Task, 0, 1, &body);
    conn.send_raw_bytes(&frame).unwrap();
    let (code, message) = expect_error(&mut conn);
    assert_eq!(code, "bad_frame", "{message}");
    expect_closed(&mut conn);
    drop(conn);
    redial_serves_a_task(&listener);
    stop_clean(agent, TIMEOUT);
}

fn unanswered_hello_times_out_and_the_worker_redials(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let mut session_plan = plan(listener.local_endpoint().unwrap(), 1, 64);
    session_plan.session.handshake_timeout = Duration::from_millis(500);
    let agent = start(kind, session_plan);
    let mut first = accept_raw(&listener);
    let hello = read_raw_frame(&mut first, TIMEOUT).unwrap();
    assert_eq!(hello.kind, FrameKind::Hello as u8);
    let since_hello = Instant::now();
    assert!(
        reads_to_eof(&mut first, Duration::from_secs(5)),
        "the worker keeps a connection whose HELLO is never answered"
    );
    let closed_after = since_hello.elapsed();
    let mut second = accept_within(&listener, Duration::from_secs(5))
        .expect("the worker redials after the handshake timeout");
    eprintln!(
        "{}: unanswered HELLO closed after {closed_after:?}, redial after {:?}",
        kind.as_str(),
        since_hello.elapsed()
    );
    let hello = read_raw_frame(&mut second, TIMEOUT).unwrap();
    assert_eq!(hello.kind, FrameKind::Hello as u8);
    assert!(agent.stats().reconnects_total() >= 1);
    stop_clean(agent, TIMEOUT);
}

fn absent_unix_socket_is_retried_and_stop_is_prompt(kind: RuntimeKind) {
    let _guard = shared();
    let path = std::env::temp_dir().join(format!(
        "ringworker-faults-absent-{}-{}.sock",
        std::process::id(),
        kind.as_str()
    ));
    let _ = std::fs::remove_file(&path);
    let agent = start(kind, plan(Endpoint::Unix(path.clone()), 1, 8));
    let stats = agent.stats();
    assert!(
        wait_until(Duration::from_secs(10), || stats.reconnects_total() >= 3),
        "the worker keeps redialling: {} reconnects",
        stats.reconnects_total()
    );
    let error = stats.sessions[0]
        .last_error()
        .expect("last_error says why the dial fails");
    assert!(
        error.contains(&path.display().to_string()),
        "names the path: {error}"
    );
    assert!(
        error.contains("No such file or directory") || error.contains("os error 2"),
        "names the error: {error}"
    );
    // Still alive and still retrying (not spinning, not dead).
    let before = stats.reconnects_total();
    assert!(
        wait_until(Duration::from_secs(5), || stats.reconnects_total() > before),
        "the worker stopped retrying"
    );
    let took = stop_clean(agent, Duration::from_secs(5));
    eprintln!("{}: stop while redialling took {took:?}", kind.as_str());
}

fn half_closed_connection_finishes_every_task_then_goodbye(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    let mut pending = HashSet::new();
    for id in 1..=6u64 {
        conn.queue_task(id, "sleep", &200u32.to_be_bytes(), false)
            .unwrap();
        pending.insert(id);
    }
    conn.flush().unwrap();
    conn.shutdown_write().unwrap();
    let (counts, goodbye_len) = loop {
        match conn
            .next_event(TIMEOUT)
            .expect("the worker finishes and says GOODBYE")
        {
            ManagerEvent::Result { id, failed, body } => {
                assert!(
                    !failed,
                    "task {id} failed: {}",
                    String::from_utf8_lossy(&body)
                );
                assert!(body.is_empty());
                assert!(pending.remove(&id), "unexpected RESULT {id}");
            }
            ManagerEvent::Goodbye { counts, frame_len } => {
                break (counts.expect("GOODBYE has counts"), frame_len)
            }
            ManagerEvent::Drain | ManagerEvent::Ack { .. } | ManagerEvent::Ping { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pending.is_empty(), "tasks without RESULT: {pending:?}");
    let rest = conn
        .read_to_end(TIMEOUT)
        .expect("the worker closes after GOODBYE");
    assert!(rest.is_empty(), "nothing after GOODBYE: {rest:?}");
    assert_eq!(
        counts.bytes_sent + goodbye_len as u64,
        conn.bytes_received(),
        "worker sent + GOODBYE == manager received"
    );
    assert_eq!(
        counts.bytes_received,
        conn.bytes_sent(),
        "worker received == manager sent"
    );
    drop(conn);
    redial_serves_a_task(&listener);
    stop_clean(agent, TIMEOUT);
}

/// A manager that closes its socket (a crash does the same) looks like one
/// that only closed its write side until the worker writes: the worker probes
/// it at once, the reset ends the connection, and it redials long before its
/// 20 s task would have finished. The task is lost to that connection.
fn a_manager_that_closes_its_socket_is_redialled_before_the_tasks_end(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let (mut conn, _) = accept(&listener);
    conn.send_task(1, "sleep", &20_000u32.to_be_bytes(), true)
        .unwrap();
    match conn.next_event(TIMEOUT).unwrap() {
        ManagerEvent::Ack { id } => assert_eq!(id, 1),
        other => panic!("expected the ACK, got {other:?}"),
    }
    drop(conn);
    let redialled = accept_within(&listener, Duration::from_secs(10));
    assert!(
        redialled.is_some(),
        "no redial within 10 s of the manager closing its socket"
    );
    drop(redialled);
    redial_serves_a_task(&listener);
    stop_clean(agent, TIMEOUT);
}

/// A 1 MiB TASK that takes 2.4 s to arrive, 64 KiB every 150 ms, with a
/// heartbeat of 300 ms (so 900 ms without a byte is a dead manager): bytes
/// keep coming, so the session stays up and the task is answered.
fn a_large_frame_trickling_in_keeps_the_heartbeat_alive(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 8));
    let config = ManagerConfig {
        heartbeat_ms: 300,
        ..ManagerConfig::default()
    };
    let (mut conn, _) = accept_with(&listener, config);
    let payload: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    conn.queue_task(1, "echo", &payload, false).unwrap();
    let bytes = conn.machine().take_output(Vec::new());
    for chunk in bytes.chunks(64 * 1024) {
        conn.send_raw_bytes(chunk)
            .expect("the worker keeps the connection while the frame arrives");
        std::thread::sleep(Duration::from_millis(150));
    }
    let result = loop {
        match conn.next_event(TIMEOUT) {
            Ok(ManagerEvent::Result { id, body, .. }) => break (id, body == payload),
            Ok(_) => {}
            Err(err) => panic!("{}: no RESULT for the slow TASK: {err:?}", kind.as_str()),
        }
    };
    assert_eq!(result, (1, true), "the echo is the payload, byte for byte");
    assert_eq!(
        agent.stats().reconnects_total(),
        0,
        "the session never redialled"
    );
    agent.request_stop();
    drop(conn);
    let _ = agent.wait();
    assert_no_agent_panic();
}

/// A 9 MiB TASK (more than one receive of a large frame's rest takes),
/// sent in two parts 300 ms apart, then, once it is answered, one small
/// TASK alone with nothing behind it. The uring runtime waits for a large
/// frame's rest with the socket's receive mark raised; the small task is
/// only answered if the mark came back down after the large frame.
fn a_frame_larger_than_one_receive_then_a_lone_small_task(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 8));
    let (mut conn, _) = accept(&listener);
    let payload: Vec<u8> = (0..9u32 << 20).map(|i| (i % 253) as u8).collect();
    conn.queue_task(1, "echo", &payload, false).unwrap();
    let bytes = conn.machine().take_output(Vec::new());
    let (first, rest) = bytes.split_at(bytes.len() / 3);
    conn.send_raw_bytes(first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    conn.send_raw_bytes(rest).unwrap();
    let echoed = loop {
        match conn.next_event(TIMEOUT) {
            Ok(ManagerEvent::Result { id, body, .. }) => break (id, body == payload),
            Ok(_) => {}
            Err(err) => panic!("{}: no RESULT for the 9 MiB TASK: {err:?}", kind.as_str()),
        }
    };
    assert_eq!(echoed, (1, true), "the echo is the payload, byte for byte");
    conn.send_task(2, "echo", b"after", false).unwrap();
    let started = Instant::now();
    let small = loop {
        match conn.next_event(TIMEOUT) {
            Ok(ManagerEvent::Result { id, body, .. }) => break (id, body),
            Ok(_) => {}
            Err(err) => panic!(
                "{}: the small TASK after the large one was not answered: {err:?}",
                kind.as_str()
            ),
        }
    };
    assert_eq!(small, (2, b"after".to_vec()));
    eprintln!(
        "{}: small task after the large one answered in {:?}",
        kind.as_str(),
        started.elapsed()
    );
    agent.request_stop();
    drop(conn);
    let _ = agent.wait();
    assert_no_agent_panic();
}

fn heartbeats_flow_and_a_silent_manager_is_dropped(kind: RuntimeKind) {
    let _guard = shared();
    let listener = tcp_listener();
    let agent = start(kind, plan(listener.local_endpoint().unwrap(), 1, 64));
    let config = ManagerConfig {
        heartbeat_ms: 100,
        ..ManagerConfig::default()
    };
    let (mut conn, _) = accept_with(&listener, config);
    // An idle worker PINGs (answered automatically by next_event).
    let idle_since = Instant::now();
    match conn.next_event(Duration::from_secs(2)) {
        Ok(ManagerEvent::Ping { .. }) => {}
        other => panic!("expected a PING from the idle worker, got {other:?}"),
    }
    eprintln!(
        "{}: first PING after {:?} idle",
        kind.as_str(),
        idle_since.elapsed()
    );
    // The worker answers our PING with the same nonce.
    let nonce = 0xFEED_FACE_CAFE_BEEF;
    conn.send_ping(nonce).unwrap();
    loop {
        match conn.next_event(TIMEOUT).expect("a PONG") {
            ManagerEvent::Pong { nonce: got } => {
                assert_eq!(got, nonce, "PONG carries the PING's nonce");
                break;
            }
            ManagerEvent::Ping { .. } => {}
            other => panic!("expected PONG, got {other:?}"),
        }
    }
    // Now the manager goes completely silent: no reads, no writes, socket
    // kept open. The worker must give up on it and redial.
    let silent_since = Instant::now();
    let redial = accept_within(&listener, Duration::from_secs(5))
        .expect("the worker redials after the manager went silent");
    let redial_after = silent_since.elapsed();
    let mut old = conn.stream().try_clone().unwrap();
    assert!(
        reads_to_eof(&mut old, Duration::from_secs(5)),
        "the worker closed the silent connection"
    );
    eprintln!(
        "{}: silent manager dropped, redial after {redial_after:?}",
        kind.as_str()
    );
    let error = agent.stats().sessions[0].last_error().unwrap_or_default();
    eprintln!("{}: last_error: {error}", kind.as_str());
    drop(redial);
    drop(conn);
    stop_clean(agent, TIMEOUT);
}

fn echo_payload(id: u64) -> Vec<u8> {
    (0..1024u64)
        .map(|i| (i.wrapping_mul(31) ^ id.wrapping_mul(0x9E37)) as u8)
        .collect()
}

/// The back-pressure workload: the first `sleepers` tasks hold a slot for
/// 300 ms (so the in-flight window is really used), then 1 KiB echoes.
fn back_pressure_task(id: u64, sleepers: u64) -> Vec<u8> {
    if id <= sleepers {
        task_frame(id, "sleep", &300u32.to_be_bytes(), 0)
    } else {
        task_frame(id, "echo", &echo_payload(id), 0)
    }
}

/// With `max_body` at its 4 GiB maximum, a manager that sends the header of
/// a 4 GiB TASK and a little of its body does not make the agent commit the
/// frame's memory up front: it grows as bytes arrive.
fn the_header_of_a_huge_frame_commits_no_memory_before_its_bytes(kind: RuntimeKind) {
    let _guard = exclusive();
    let listener = tcp_listener();
    let mut plan = plan(listener.local_endpoint().unwrap(), 1, 8);
    plan.session.max_body = u32::MAX;
    let agent = start(kind, plan);
    let (conn, _) = accept(&listener);
    let rss_before = rss_kib();
    let body_len: u32 = u32::MAX - 12;
    let mut head = Vec::new();
    head.extend_from_slice(&(body_len + 12).to_be_bytes());
    head.extend_from_slice(&[0x10, 0, 0, 0]);
    head.extend_from_slice(&1u64.to_be_bytes());
    head.push(4);
    head.extend_from_slice(b"sink");
    head.extend(std::iter::repeat_n(7u8, 1000));
    let mut writer = conn.stream().try_clone().unwrap();
    writer.write_all(&head).unwrap();
    writer.flush().unwrap();
    // Time for the agent to act on it (it has nothing else to do).
    std::thread::sleep(Duration::from_millis(1500));
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 64,
        "the agent committed {grown_mib} MiB for 1 KiB of a 4 GiB frame"
    );
    drop(writer);
    drop(conn);
    stop_clean(agent, TIMEOUT);
}

fn a_manager_that_never_reads_is_slowed_not_buffered(kind: RuntimeKind) {
    let _guard = exclusive();
    let max_in_flight = 16u32;
    let listener = tcp_listener();
    let agent = start(
        kind,
        plan(listener.local_endpoint().unwrap(), 1, max_in_flight),
    );
    let (conn, _) = accept(&listener);
    let stats = agent.stats();
    let rss_before = rss_kib();

    // Non-blocking writes of 1 KiB echo tasks (behind a few sleeps), never
    // reading.
    let sleepers = 2 * u64::from(max_in_flight);
    let mut writer = conn.stream().try_clone().unwrap();
    writer.set_nonblocking(true).unwrap();
    let max_tasks = 300_000u64;
    let limit = Duration::from_secs(3);
    let started = Instant::now();
    let mut frame = Vec::new();
    let mut offset = 0;
    let mut next_id = 1u64;
    let mut written = 0u64;
    let mut would_block = 0u64;
    let mut peak_in_flight = 0u64;
    while started.elapsed() < limit {
        if offset == frame.len() {
            if next_id > max_tasks {
                break;
            }
            frame = back_pressure_task(next_id, sleepers);
            offset = 0;
            next_id += 1;
        }
        match writer.write(&frame[offset..]) {
            Ok(n) => {
                offset += n;
                written += n as u64;
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                would_block += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("write failed: {err}"),
        }
        let in_flight = stats.sessions[0].in_flight();
        peak_in_flight = peak_in_flight.max(in_flight);
        assert!(
            in_flight <= u64::from(max_in_flight),
            "worker holds {in_flight} tasks, max_in_flight {max_in_flight}"
        );
    }
    let rss_after = rss_kib();
    let total = next_id - 1;
    eprintln!(
        "{}: manager never reading: {total} tasks ({:.1} MiB) written in {:?}, \
         {would_block} WouldBlock, peak in flight {peak_in_flight}, \
         RSS {rss_before} KiB -> {rss_after} KiB",
        kind.as_str(),
        written as f64 / (1024.0 * 1024.0),
        started.elapsed()
    );
    assert!(
        would_block > 0,
        "flow control never reached the manager: the worker buffered {written} bytes"
    );
    assert!(peak_in_flight > 0, "the in-flight stat never moved");
    let growth_kib = rss_after.saturating_sub(rss_before);
    assert!(
        growth_kib < 64 * 1024,
        "RSS grew by {growth_kib} KiB while the manager did not read"
    );

    // Now read: every task sent gets its RESULT, nothing dropped. The clone
    // shares the file description: back to blocking before the reader starts.
    writer.set_nonblocking(false).unwrap();
    let reader = std::thread::spawn(move || {
        let mut conn = conn;
        let mut seen = HashSet::new();
        while (seen.len() as u64) < total {
            let (id, failed, body) = result(&mut conn);
            assert!(!failed, "task {id} failed");
            assert!((1..=total).contains(&id), "RESULT for unknown task {id}");
            assert!(seen.insert(id), "second RESULT for {id}");
            if id <= sleepers {
                assert!(body.is_empty(), "sleep task {id}: {body:?}");
            } else {
                assert_eq!(body, echo_payload(id), "task {id}: wrong echo");
            }
        }
        conn
    });
    writer.write_all(&frame[offset..]).unwrap();
    let conn = reader.join().expect("every task gets its RESULT");
    assert!(stats.sessions[0].tasks_done() >= total);
    drop(conn);
    stop_clean(agent, TIMEOUT);
}

fn two_hundred_sessions_redial_spread_out(kind: RuntimeKind) {
    let _guard = exclusive();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sessions = 200usize;
    let listener = tcp_listener();
    let mut session_plan = plan(listener.local_endpoint().unwrap(), sessions as u32, 4);
    session_plan.reconnect = ReconnectPolicy {
        min: Duration::from_millis(100),
        max: Duration::from_secs(30),
        stable_after: Duration::from_secs(10),
    };
    let agent = start(kind, session_plan);
    let mut conns = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        conns.push(accept(&listener).0);
    }
    let stats: Arc<_> = agent.stats();
    assert!(wait_until(TIMEOUT, || stats.connected_sessions() == sessions));

    // The manager drops every connection at once.
    let dropped_at = Instant::now();
    drop(conns);
    listener.set_nonblocking(true).unwrap();
    let deadline = dropped_at + Duration::from_secs(15);
    let mut redials = Vec::with_capacity(sessions);
    let mut streams = Vec::with_capacity(sessions);
    while redials.len() < sessions && Instant::now() < deadline {
        match listener.accept() {
            Ok(stream) => {
                redials.push(dropped_at.elapsed());
                streams.push(stream);
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => panic!("accept failed: {err}"),
        }
    }
    listener.set_nonblocking(false).unwrap();
    assert_eq!(redials.len(), sessions, "every session redials");
    redials.sort();
    let window = Duration::from_millis(100);
    let mut busiest = 0;
    let mut lo = 0;
    for hi in 0..redials.len() {
        while redials[hi] - redials[lo] >= window {
            lo += 1;
        }
        busiest = busiest.max(hi - lo + 1);
    }
    let first = redials[0];
    let last = redials[sessions - 1];
    let spread = last - first;
    let median = redials[sessions / 2];
    eprintln!(
        "{}: {sessions} redials after the drop: first {first:?}, median {median:?}, \
         last {last:?}, spread {spread:?}, busiest 100 ms window {busiest}",
        kind.as_str()
    );
    assert!(
        busiest < sessions,
        "all {sessions} redials fell in one 100 ms window"
    );
    assert!(
        spread > window,
        "redials spread over only {spread:?}: no jitter"
    );
    drop(streams);
    stop_clean(agent, TIMEOUT);
}

/// The uring runtime counts a dial from its connect until the manager's
/// WELCOME, at most 256 per loop. 300 sessions on one loop against a
/// manager that accepts and never answers HELLO: 256 connections reach it,
/// the other 44 sessions wait their turn instead of waiting in its listen
/// backlog (which, full, drops SYNs that come back only after 1 s).
#[test]
fn uring_dials_count_until_the_handshake_is_over() {
    let _guard = exclusive();
    let listener = tcp_listener();
    let mut session_plan = plan(listener.local_endpoint().unwrap(), 300, 8);
    session_plan.threads = 1;
    session_plan.session.handshake_timeout = Duration::from_secs(30);
    let agent = start(RuntimeKind::Uring, session_plan);
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Some(stream) = accept_within(&listener, Duration::from_millis(100)) {
            held.push(stream);
        }
    }
    assert_eq!(
        held.len(),
        256,
        "dials in flight until WELCOME, at most 256 on one loop"
    );
    drop(held);
    let _ = stop_clean(agent, Duration::from_secs(20));
}
