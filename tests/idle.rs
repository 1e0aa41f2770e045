//! Connected sessions with nothing to do sleep: the runtime's own threads
//! take next to no CPU until the manager sends something.
//!
//! A thread that polls a source that is always ready (a disconnected channel
//! in a `select!`, a zero timeout) still passes every functional test, while
//! it burns a CPU per session and, with more sessions than CPUs, starves the
//! socket threads: 16 blocking sessions once answered 1,600 tasks/s where
//! they answer 58,000. This file holds only this test, so that the threads
//! it counts are its own.

// Tests unwrap freely: a panic is a failed test with its location.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{accept, plan, start, tcp_listener};
use ringworker::runtime::RuntimeKind;

for_each_runtime!(connected_idle_sessions_take_no_cpu);

/// CPU time, in clock ticks, of this process's threads that `kind`'s
/// runtime runs its sessions on: the blocking supervisors (`session-N`, not
/// their `-rx`/`-tx` socket threads, which block in the kernel) or the
/// uring event loops (`uring-N`).
fn runtime_ticks(kind: RuntimeKind) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        let ours = match kind {
            RuntimeKind::Blocking => {
                comm.starts_with("session-") && !comm.ends_with("-rx") && !comm.ends_with("-tx")
            }
            RuntimeKind::Uring => comm.starts_with("uring-"),
        };
        if !ours {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        // Fields after the command's closing parenthesis: state is the
        // first, utime the 12th and stime the 13th.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

fn connected_idle_sessions_take_no_cpu(kind: RuntimeKind) {
    let listener = tcp_listener();
    let mut agent = start(kind, plan(listener.local_endpoint().unwrap(), 2, 8));
    let conns: Vec<_> = (0..2).map(|_| accept(&listener).0).collect();
    // Past the handshake's own work.
    std::thread::sleep(Duration::from_millis(200));
    let before = runtime_ticks(kind);
    std::thread::sleep(Duration::from_secs(1));
    let used = runtime_ticks(kind) - before;
    // A clock tick is 10 ms (USER_HZ is 100 on Linux). Sleeping threads
    // wake once a second for the watchdog beat; one thread that never
    // sleeps takes about 100 ticks a second, and still 50 on a machine
    // busy with other tests.
    assert!(
        used <= 10,
        "two idle {} sessions took {used} clock ticks of CPU in 1 s",
        kind.as_str()
    );
    agent.request_stop();
    assert!(agent.wait().is_clean());
    drop(conns);
}
