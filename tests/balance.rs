//! Sessions moving between the uring runtime's event loops lose nothing:
//! with the loops handing a session to each other every few milliseconds
//! (`LoopBalance::Churn`), pipelined tasks of every size, large frames
//! included, are each answered once and right, and each session's GOODBYE
//! counts every byte the manager saw.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use common::{accept, plan, start, tcp_listener, TIMEOUT};
use ringworker::manager::{ManagerConn, ManagerEvent};
use ringworker::runtime::{LoopBalance, RuntimeKind, RuntimeMode};
use ringworker::transport::BlockingListener;

const SESSIONS: u32 = 4;
/// Each session runs tasks for this long (the loops move a session every
/// few milliseconds), and at most this many.
const RUN_FOR: Duration = Duration::from_millis(1500);
const TASKS_MAX: u64 = 2_000_000;
const WINDOW: usize = 16;

/// Task `id`'s payload: mostly small, every 97th 200 KiB (received
/// straight into the frame buffer, which a session must finish before it
/// may move).
fn payload(session: u32, id: u64) -> Vec<u8> {
    let len = if id % 97 == 0 {
        200 * 1024
    } else {
        (id as usize * 37) % 3000 + 1
    };
    (0..len)
        .map(|i| (i as u64 ^ id ^ u64::from(session) << 7) as u8)
        .collect()
}

/// Run echo tasks for `RUN_FOR`, `WINDOW` in flight, checking each
/// RESULT; returns how many.
fn run_tasks(conn: &mut ManagerConn, session: u32) -> u64 {
    let until = Instant::now() + RUN_FOR;
    let mut sent = 0u64;
    let mut waiting = VecDeque::new();
    loop {
        let more = sent < TASKS_MAX && Instant::now() < until;
        if !more && waiting.is_empty() {
            return sent;
        }
        while more && waiting.len() < WINDOW {
            conn.queue_task(sent, "echo", &payload(session, sent), false)
                .unwrap();
            waiting.push_back(sent);
            sent += 1;
        }
        conn.flush().unwrap();
        match conn.next_event(TIMEOUT).unwrap() {
            ManagerEvent::Result { id, failed, body } => {
                let expected = waiting.pop_front().expect("a task in flight");
                assert_eq!((id, failed), (expected, false), "session {session}");
                assert!(body == payload(session, id), "session {session}, task {id}");
            }
            ManagerEvent::Ping { .. } | ManagerEvent::Pong { .. } | ManagerEvent::Ack { .. } => {}
            other => panic!("session {session}: unexpected {other:?}"),
        }
    }
}

/// A uring agent whose `threads` loops hand sessions to each other every
/// few milliseconds, and the manager's listener it dials.
fn churning_agent(
    sessions: u32,
    threads: usize,
    max_in_flight: u32,
) -> (BlockingListener, Box<dyn RuntimeMode>) {
    let listener = tcp_listener();
    let mut session_plan = plan(listener.local_endpoint().unwrap(), sessions, max_in_flight);
    session_plan.threads = threads;
    session_plan.loop_balance = LoopBalance::Churn;
    (listener, start(RuntimeKind::Uring, session_plan))
}

/// Echo tasks on every connection (they keep the loops turning: an idle
/// loop turns once a second) until sessions have moved `moves` times.
fn echo_until_moved(agent: &dyn RuntimeMode, conns: &mut [ManagerConn], moves: u64) {
    let mut id = 0;
    assert!(common::wait_until(Duration::from_secs(10), || {
        for conn in conns.iter_mut() {
            common::manager::echo(conn, id);
            id += 1;
        }
        agent.stats().sessions_moved_total() >= moves
    }));
}

#[test]
fn sessions_moving_between_loops_lose_no_task_and_no_byte() {
    let (listener, mut agent) = churning_agent(SESSIONS, 2, WINDOW as u32);
    let conns: Vec<_> = (0..SESSIONS).map(|_| accept(&listener)).collect();
    let started = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|(mut conn, hello)| {
            std::thread::spawn(move || {
                let tasks = run_tasks(&mut conn, hello.session);
                (conn, tasks)
            })
        })
        .collect();
    let (mut conns, tasks): (Vec<_>, Vec<_>) =
        workers.into_iter().map(|w| w.join().unwrap()).unzip();
    let tasks: u64 = tasks.iter().sum();
    let moved = agent.stats().sessions_moved_total();
    eprintln!(
        "{tasks} tasks on {SESSIONS} sessions in {:?}, {moved} moves",
        started.elapsed()
    );
    assert!(moved >= 20, "sessions moved only {moved} times");
    assert_eq!(agent.stats().tasks_done(), tasks);

    agent.request_stop();
    for conn in &mut conns {
        common::manager::expect_exact_goodbye(conn);
    }
    drop(conns);
    let report = agent.wait();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn a_stop_while_sessions_move_ends_every_loop() {
    // Sessions in transit when the stop comes still drain and say GOODBYE,
    // and a loop left without sessions of its own still ends.
    let (listener, mut agent) = churning_agent(3, 3, 8);
    let mut conns: Vec<_> = (0..3).map(|_| accept(&listener).0).collect();
    echo_until_moved(agent.as_ref(), &mut conns, 10);
    common::manager::stop_cleanly(agent.as_mut(), conns);
}

#[test]
fn a_moved_session_redials_from_its_new_loop() {
    let (listener, mut agent) = churning_agent(2, 2, 8);
    let conns: Vec<_> = (0..2).map(|_| accept(&listener)).collect();
    let hello = conns[0].1.session;
    let mut conns: Vec<_> = conns.into_iter().map(|(conn, _)| conn).collect();
    echo_until_moved(agent.as_ref(), &mut conns, 10);
    // The manager drops one connection; the session redials (from
    // whichever loop holds it now) and runs tasks again.
    drop(conns.remove(0));
    let (mut again, hello_again) = accept(&listener);
    assert_eq!(hello_again.session, hello);
    for task in 0..50 {
        common::manager::echo(&mut again, task);
        common::manager::echo(&mut conns[0], 1000 + task);
    }
    conns.push(again);
    common::manager::stop_cleanly(agent.as_mut(), conns);
}
