//! The pool's rules, driven by hand.

use super::*;
use crate::exec::frame::{encode_answer, KIND_FAILED, KIND_RESULT};

const MS: Duration = Duration::from_millis(1);

fn limits(processes: usize, per_process: usize) -> PoolLimits {
    PoolLimits {
        processes,
        in_flight_per_process: per_process,
        timeout: 1000 * MS,
        kill_grace: 100 * MS,
        recycle_after: None,
        max_output: 64,
        max_waiting: 2,
        backoff_min: 100 * MS,
        backoff_max: 400 * MS,
    }
}

fn drain(pool: &mut Pool) -> Vec<PoolAction> {
    std::iter::from_fn(|| pool.next_action()).collect()
}

/// A pool whose workers were all started at `t0`.
fn started(limits: PoolLimits, t0: Instant) -> Pool {
    let mut pool = Pool::new(limits, t0);
    let spawns = drain(&mut pool);
    assert_eq!(spawns.len(), limits.processes);
    for (slot, action) in spawns.into_iter().enumerate() {
        assert_eq!(action, PoolAction::Spawn { slot });
        pool.spawned(slot, t0);
    }
    assert_eq!(pool.alive(), limits.processes);
    pool
}

fn result(id: u64, output: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_answer(KIND_RESULT, id, output, &mut bytes);
    bytes
}

fn sent_to(action: &PoolAction) -> usize {
    match action {
        PoolAction::Send { slot, .. } => *slot,
        other => panic!("not a send: {other:?}"),
    }
}

#[test]
fn workers_start_before_any_task_and_tasks_go_to_the_least_loaded() {
    let t0 = Instant::now();
    let mut pool = started(limits(2, 2), t0);
    assert_eq!(pool.counts().spawned, 2);
    pool.submit(1, t0).unwrap();
    pool.submit(2, t0).unwrap();
    pool.submit(3, t0).unwrap();
    let sends = drain(&mut pool);
    let slots: Vec<usize> = sends.iter().map(sent_to).collect();
    assert_eq!(slots, [0, 1, 0], "spread, then the least loaded");
    assert_eq!(
        sends[0],
        PoolAction::Send {
            slot: 0,
            task: 1,
            deadline_ms: 1000,
            waited: Duration::ZERO
        }
    );
    // Slot 1 holds one task, slot 0 two: the next goes to slot 1.
    pool.submit(4, t0 + MS).unwrap();
    assert_eq!(sent_to(&drain(&mut pool)[0]), 1);
    // All full: two may wait, the third is refused (back-pressure).
    pool.submit(5, t0 + MS).unwrap();
    pool.submit(6, t0 + 2 * MS).unwrap();
    assert!(pool.is_full());
    assert_eq!(pool.submit(7, t0 + 2 * MS), Err(7));
    assert_eq!(pool.waiting(), 2);
    assert!(drain(&mut pool).is_empty());
    // An answer frees a place; the oldest waiting task takes it, with its
    // wait and the deadline left.
    pool.on_bytes(1, &result(2, b"two"), t0 + 10 * MS);
    assert_eq!(
        drain(&mut pool),
        [
            PoolAction::Complete {
                task: 2,
                outcome: Outcome::Ok(b"two".to_vec())
            },
            PoolAction::Send {
                slot: 1,
                task: 5,
                deadline_ms: 991,
                waited: 9 * MS
            },
        ]
    );
    assert_eq!(pool.in_flight(), 4);
}

#[test]
fn answers_may_come_in_any_order_and_split_anyhow() {
    let t0 = Instant::now();
    let mut pool = started(limits(1, 3), t0);
    for task in 10..13 {
        pool.submit(task, t0).unwrap();
    }
    drain(&mut pool);
    let mut bytes = result(12, b"c");
    encode_answer(KIND_FAILED, 10, b"bad input", &mut bytes);
    bytes.extend(result(11, b"b"));
    for chunk in bytes.chunks(3) {
        pool.on_bytes(0, chunk, t0);
    }
    assert_eq!(
        drain(&mut pool),
        [
            PoolAction::Complete {
                task: 12,
                outcome: Outcome::Ok(b"c".to_vec())
            },
            PoolAction::Complete {
                task: 10,
                outcome: Outcome::failed(codes::HANDLER_FAILED, "bad input")
            },
            PoolAction::Complete {
                task: 11,
                outcome: Outcome::Ok(b"b".to_vec())
            },
        ]
    );
}

#[test]
fn an_oversized_answer_fails_its_task_only() {
    let t0 = Instant::now();
    let mut pool = started(limits(1, 2), t0);
    pool.submit(1, t0).unwrap();
    pool.submit(2, t0).unwrap();
    drain(&mut pool);
    pool.on_bytes(0, &result(1, &[0; 65]), t0);
    pool.on_bytes(0, &result(2, &[0; 64]), t0);
    let actions = drain(&mut pool);
    assert!(
        matches!(&actions[0], PoolAction::Complete { task: 1, outcome } if outcome.code() == Some(codes::RESULT_TOO_LARGE)),
        "{actions:?}"
    );
    assert_eq!(
        actions[1],
        PoolAction::Complete {
            task: 2,
            outcome: Outcome::Ok(vec![0; 64])
        }
    );
    assert_eq!(pool.alive(), 1);
}

#[test]
fn a_crash_fails_its_tasks_and_restarts_with_backoff() {
    let t0 = Instant::now();
    let mut pool = started(limits(1, 2), t0);
    pool.submit(1, t0).unwrap();
    pool.submit(2, t0).unwrap();
    drain(&mut pool);
    pool.on_exit(0, ExitStatus::Signal(11), t0 + MS);
    let actions = drain(&mut pool);
    assert_eq!(actions[0], PoolAction::Reap { slot: 0 });
    for action in &actions[1..] {
        assert!(
            matches!(action, PoolAction::Complete { outcome: Outcome::Failed { code: "worker_lost", message }, .. } if message.contains("killed by signal 11")),
            "{action:?}"
        );
    }
    assert_eq!(actions.len(), 3);
    assert_eq!(pool.alive(), 0);
    assert_eq!(pool.next_deadline(), Some(t0 + 101 * MS), "first back-off");
    // A task meanwhile waits.
    pool.submit(3, t0 + 2 * MS).unwrap();
    pool.poll(t0 + 100 * MS);
    assert!(drain(&mut pool).is_empty());
    pool.poll(t0 + 101 * MS);
    assert_eq!(drain(&mut pool), [PoolAction::Spawn { slot: 0 }]);
    pool.spawn_failed(0, t0 + 101 * MS);
    assert_eq!(pool.counts().spawn_failures, 1);
    assert_eq!(pool.next_deadline(), Some(t0 + 301 * MS), "doubled");
    pool.poll(t0 + 301 * MS);
    assert_eq!(drain(&mut pool), [PoolAction::Spawn { slot: 0 }]);
    pool.spawned(0, t0 + 302 * MS);
    assert_eq!(pool.counts().restarts, 1);
    assert_eq!(sent_to(&drain(&mut pool)[0]), 0, "the waiting task goes");
    // A good answer resets the back-off.
    pool.on_bytes(0, &result(3, b""), t0 + 303 * MS);
    drain(&mut pool);
    pool.on_exit(0, ExitStatus::Code(1), t0 + 400 * MS);
    drain(&mut pool);
    assert_eq!(pool.next_deadline(), Some(t0 + 500 * MS));
}

#[test]
fn a_deadline_overrun_stops_the_worker_and_fails_its_tasks() {
    let t0 = Instant::now();
    let mut pool = started(limits(1, 2), t0);
    pool.submit(1, t0).unwrap();
    pool.submit(2, t0 + 500 * MS).unwrap();
    drain(&mut pool);
    assert_eq!(pool.next_deadline(), Some(t0 + 1000 * MS));
    pool.poll(t0 + 1000 * MS);
    let actions = drain(&mut pool);
    assert_eq!(
        actions[0],
        PoolAction::Complete {
            task: 1,
            outcome: Outcome::failed(
                codes::TIMEOUT,
                "no result within 1s; the worker's process group was stopped"
            )
        }
    );
    assert_eq!(
        actions[1],
        PoolAction::Signal {
            slot: 0,
            signal: Signal::Term
        }
    );
    assert!(
        matches!(&actions[2], PoolAction::Complete { task: 2, outcome } if outcome.code() == Some(codes::WORKER_LOST))
    );
    assert_eq!(pool.counts().timeouts, 1);
    // Answers from a stopping worker are ignored.
    pool.on_bytes(0, &result(2, b"late"), t0 + 1001 * MS);
    assert!(drain(&mut pool).is_empty());
    pool.poll(t0 + 1100 * MS);
    assert_eq!(
        drain(&mut pool),
        [PoolAction::Signal {
            slot: 0,
            signal: Signal::Kill
        }]
    );
    pool.on_exit(0, ExitStatus::Signal(9), t0 + 1101 * MS);
    assert_eq!(drain(&mut pool), [PoolAction::Reap { slot: 0 }]);
    pool.poll(t0 + 1201 * MS);
    assert_eq!(drain(&mut pool), [PoolAction::Spawn { slot: 0 }]);
}

#[test]
fn a_task_that_waits_past_its_deadline_times_out_without_a_worker() {
    let t0 = Instant::now();
    let mut pool = started(limits(1, 1), t0);
    pool.submit(1, t0).unwrap();
    pool.submit(2, t0 + 10 * MS).unwrap();
    assert_eq!(drain(&mut pool).len(), 1, "task 2 waits");
    pool.poll(t0 + 1000 * MS);
    let actions = drain(&mut pool);
    assert!(
        matches!(&actions[0], PoolAction::Complete { task: 1, outcome } if outcome.code() == Some(codes::TIMEOUT)),
        "{actions:?}"
    );
    assert_eq!(
        actions[1],
        PoolAction::Signal {
            slot: 0,
            signal: Signal::Term
        }
    );
    assert_eq!(pool.next_deadline(), Some(t0 + 1010 * MS));
    pool.poll(t0 + 1010 * MS);
    let actions = drain(&mut pool);
    assert!(
        matches!(&actions[..], [PoolAction::Complete { task: 2, outcome: Outcome::Failed { code: "timeout", message } }] if message.starts_with("no worker was free")),
        "{actions:?}"
    );
    assert_eq!(pool.waiting(), 0);
    assert_eq!(pool.counts().timeouts, 2);
}

#[test]
fn protocol_errors_stop_the_worker() {
    let t0 = Instant::now();
    for bytes in [
        b"print() output on fd 3\n".to_vec(),
        result(99, b"not ours"),
    ] {
        let mut pool = started(limits(1, 1), t0);
        pool.submit(1, t0).unwrap();
        drain(&mut pool);
        pool.on_bytes(0, &bytes, t0);
        let actions = drain(&mut pool);
        assert_eq!(
            actions[0],
            PoolAction::Signal {
                slot: 0,
                signal: Signal::Term
            }
        );
        assert!(
            matches!(&actions[1], PoolAction::Complete { task: 1, outcome } if outcome.code() == Some(codes::WORKER_LOST)),
            "{actions:?}"
        );
    }
}

#[test]
fn end_of_file_awaits_the_exit_for_the_grace_then_kills() {
    let t0 = Instant::now();
    let mut pool = started(limits(2, 1), t0);
    pool.submit(1, t0).unwrap();
    drain(&mut pool);
    pool.on_eof(0, t0);
    assert!(
        drain(&mut pool).is_empty(),
        "its task waits for the exit status"
    );
    pool.submit(2, t0).unwrap();
    assert_eq!(
        sent_to(&drain(&mut pool)[0]),
        1,
        "no task for a closed worker"
    );
    pool.on_exit(0, ExitStatus::Code(70), t0 + MS);
    let actions = drain(&mut pool);
    assert_eq!(actions[0], PoolAction::Reap { slot: 0 });
    assert!(
        matches!(&actions[1], PoolAction::Complete { task: 1, outcome: Outcome::Failed { code: "worker_lost", message } } if message.contains("exit status 70")),
        "{actions:?}"
    );
    assert_eq!(
        pool.next_deadline(),
        Some(t0 + 101 * MS),
        "a failure: back-off"
    );
    // One that closes fd 3 but does not exit is killed after the grace.
    pool.on_eof(1, t0);
    pool.poll(t0 + 100 * MS);
    let actions = drain(&mut pool);
    assert!(
        actions.contains(&PoolAction::Signal {
            slot: 1,
            signal: Signal::Kill
        }),
        "{actions:?}"
    );
}

#[test]
fn a_worker_is_recycled_after_k_tasks_and_replaced_at_once() {
    let t0 = Instant::now();
    let mut pool = started(
        PoolLimits {
            recycle_after: Some(2),
            ..limits(1, 2)
        },
        t0,
    );
    pool.submit(1, t0).unwrap();
    pool.submit(2, t0).unwrap();
    drain(&mut pool);
    pool.on_bytes(0, &result(1, b""), t0);
    assert_eq!(drain(&mut pool).len(), 1);
    pool.on_bytes(0, &result(2, b""), t0);
    assert_eq!(
        drain(&mut pool),
        [
            PoolAction::Complete {
                task: 2,
                outcome: Outcome::Ok(Vec::new())
            },
            PoolAction::CloseInput { slot: 0 }
        ]
    );
    // Retiring: takes no task.
    pool.submit(3, t0).unwrap();
    assert!(drain(&mut pool).is_empty());
    pool.on_exit(0, ExitStatus::Code(0), t0 + MS);
    assert_eq!(
        drain(&mut pool),
        [PoolAction::Reap { slot: 0 }, PoolAction::Spawn { slot: 0 }],
        "no back-off for a retirement"
    );
    pool.spawned(0, t0 + 2 * MS);
    assert_eq!(sent_to(&drain(&mut pool)[0]), 0);
    assert_eq!(pool.counts().recycled, 1);
    // A retired worker that does not exit is stopped after the grace.
    pool.on_bytes(0, &result(3, b""), t0 + 3 * MS);
    pool.submit(4, t0 + 3 * MS).unwrap();
    drain(&mut pool);
    pool.on_bytes(0, &result(4, b""), t0 + 4 * MS);
    assert_eq!(drain(&mut pool)[1], PoolAction::CloseInput { slot: 0 });
    pool.poll(t0 + 104 * MS);
    assert_eq!(
        drain(&mut pool),
        [PoolAction::Signal {
            slot: 0,
            signal: Signal::Term
        }]
    );
}
