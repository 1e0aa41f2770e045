//! The service's rules, driven by hand: events in, actions out, no
//! process and no clock (a fake child table).

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::config::handlers::{HandlerDecl, Rlimits};
use crate::exec::frame::{encode_answer, Frame, FrameDecoder, KIND_RESULT};

const MS: Duration = Duration::from_millis(1);

type Action = ServiceAction<u32>;

fn decl(name: &str, mode: ModeSettings) -> HandlerDecl {
    HandlerDecl {
        name: name.to_owned(),
        mode,
        program: "/bin/cat".into(),
        program_written: "cat".to_owned(),
        args: Vec::new(),
        env: BTreeMap::new(),
        pass_env: Vec::new(),
        cwd: None,
        timeout: 1000 * MS,
        kill_grace: 100 * MS,
        rlimits: Rlimits::default(),
        user: None,
        max_output: 1024,
        stderr_cap: 64,
    }
}

fn exec(concurrency: u32) -> HandlerSet {
    HandlerSet {
        handlers: vec![decl("upper", ModeSettings::Exec { concurrency })],
    }
}

fn pool(processes: u32, in_flight_per_process: u32) -> HandlerSet {
    HandlerSet {
        handlers: vec![decl(
            "resize",
            ModeSettings::Pool {
                processes,
                in_flight_per_process,
                recycle_after: None,
            },
        )],
    }
}

fn job(task: u64, payload: &[u8]) -> Job {
    Job {
        handler: 0,
        task,
        payload: payload.to_vec(),
    }
}

fn drain(service: &mut Service<u32>, now: Instant) -> Vec<Action> {
    std::iter::from_fn(|| service.poll(now)).collect()
}

fn spawned_child(action: &Action) -> ChildId {
    match action {
        ServiceAction::Spawn { child, .. } => *child,
        other => panic!("not a spawn: {other:?}"),
    }
}

fn done(route: u32, task: u64, outcome: Outcome) -> Action {
    ServiceAction::Done {
        route,
        task,
        outcome,
    }
}

/// The frames of a `Write` to a worker.
fn frames(action: &Action) -> (ChildId, Vec<Frame>) {
    let ServiceAction::Write { child, bytes } = action else {
        panic!("not a write: {action:?}");
    };
    let mut frames = Vec::new();
    FrameDecoder::new(1 << 20)
        .feed(bytes, &mut frames)
        .expect("TASK frames");
    (*child, frames)
}

fn result(id: u64, output: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_answer(KIND_RESULT, id, output, &mut bytes);
    bytes
}

/// An exec child's normal end: output, end of both pipes, exit 0.
fn exec_ends(service: &mut Service<u32>, child: ChildId, stdout: &[u8], now: Instant) {
    service.on_output(child, Stream::Stdout, stdout, now);
    service.on_output_end(child, Stream::Stdout, now);
    service.on_output_end(child, Stream::Stderr, now);
    service.on_exit(child, ExitStatus::Code(0), now);
}

#[test]
fn an_exec_task_runs_in_its_own_child_from_spawn_to_release() {
    let t0 = Instant::now();
    let mut service = Service::new(&exec(2), t0);
    assert_eq!(drain(&mut service, t0), [], "exec children start per task");
    service.submit(7, job(42, b"hello"), t0);
    let actions = drain(&mut service, t0);
    assert_eq!(
        actions,
        [ServiceAction::Spawn {
            child: ChildId(0),
            handler: 0,
            pool: false
        }]
    );
    let child = ChildId(0);
    service.on_spawned(child, t0 + MS);
    assert_eq!(
        drain(&mut service, t0 + MS),
        [ServiceAction::Write {
            child,
            bytes: b"hello".to_vec()
        }]
    );
    service.on_written(child, 2);
    assert_eq!(drain(&mut service, t0 + MS), [], "3 bytes still to write");
    service.on_written(child, 3);
    assert_eq!(
        drain(&mut service, t0 + MS),
        [ServiceAction::CloseInput { child }]
    );
    assert_eq!(service.status()[0].alive, 1);
    exec_ends(&mut service, child, b"HELLO", t0 + 2 * MS);
    assert_eq!(
        drain(&mut service, t0 + 2 * MS),
        [
            ServiceAction::Release { child },
            done(7, 42, Outcome::Ok(b"HELLO".to_vec()))
        ]
    );
    assert_eq!((service.tasks(), service.children()), (0, 0));
    let status = &service.status()[0];
    assert_eq!(
        (status.mode, status.state, status.alive),
        ("exec", "ready", 0)
    );
    // Events about a released child are ignored.
    service.on_exit(child, ExitStatus::Code(1), t0 + 3 * MS);
    assert_eq!(drain(&mut service, t0 + 3 * MS), []);
    assert_eq!(service.next_deadline(), None);
}

#[test]
fn exec_concurrency_queues_the_excess_and_a_full_queue_answers_busy() {
    let t0 = Instant::now();
    let mut service = Service::with_max_waiting(&exec(1), 1, t0);
    service.submit(1, job(10, b""), t0);
    service.submit(1, job(11, b""), t0);
    service.submit(2, job(12, b""), t0);
    let actions = drain(&mut service, t0);
    assert_eq!(actions.len(), 2, "{actions:?}");
    let first = spawned_child(&actions[0]);
    assert!(
        matches!(
            &actions[1],
            ServiceAction::Done {
                route: 2,
                task: 12,
                outcome: Outcome::Failed { code: "busy", .. }
            }
        ),
        "{actions:?}"
    );
    let status = &service.status()[0];
    assert_eq!((status.running, status.waiting), (1, 1));
    service.on_spawned(first, t0);
    assert_eq!(
        drain(&mut service, t0),
        [ServiceAction::CloseInput { child: first }],
        "an empty payload: stdin closed at once"
    );
    exec_ends(&mut service, first, b"", t0 + 5 * MS);
    let actions = drain(&mut service, t0 + 5 * MS);
    assert_eq!(
        actions[..2],
        [
            ServiceAction::Release { child: first },
            done(1, 10, Outcome::Ok(Vec::new()))
        ]
    );
    assert_eq!(actions.len(), 3);
    let second = spawned_child(&actions[2]);
    assert_ne!(first, second);
    assert_eq!(service.status()[0].waiting, 0);
}

#[test]
fn an_exec_timeout_stops_the_group_then_kills_it() {
    let t0 = Instant::now();
    let mut service = Service::with_max_waiting(&exec(1), 4, t0);
    service.submit(1, job(1, b""), t0);
    service.submit(1, job(2, b""), t0 + 500 * MS);
    let child = spawned_child(&drain(&mut service, t0)[0]);
    service.on_spawned(child, t0 + 10 * MS);
    drain(&mut service, t0 + 10 * MS);
    // The timeout runs from the task's acceptance, not its child's start.
    assert_eq!(service.next_deadline(), Some(t0 + 1000 * MS));
    assert_eq!(drain(&mut service, t0 + 999 * MS), []);
    assert_eq!(
        drain(&mut service, t0 + 1000 * MS),
        [ServiceAction::Signal {
            child,
            signal: Signal::Term
        }]
    );
    assert_eq!(service.next_deadline(), Some(t0 + 1100 * MS), "the grace");
    assert_eq!(
        drain(&mut service, t0 + 1100 * MS),
        [ServiceAction::Signal {
            child,
            signal: Signal::Kill
        }]
    );
    service.on_exit(child, ExitStatus::Signal(9), t0 + 1101 * MS);
    service.on_output_end(child, Stream::Stdout, t0 + 1101 * MS);
    service.on_output_end(child, Stream::Stderr, t0 + 1101 * MS);
    let actions = drain(&mut service, t0 + 1101 * MS);
    assert_eq!(actions[0], ServiceAction::Release { child });
    assert!(
        matches!(
            &actions[1],
            ServiceAction::Done {
                task: 1,
                outcome: Outcome::Failed {
                    code: "timeout",
                    ..
                },
                ..
            }
        ),
        "{actions:?}"
    );
    // The second task waited past its own timeout: failed, never started.
    assert!(
        matches!(&actions[2], ServiceAction::Spawn { .. }),
        "it still had time at 1101 ms: {actions:?}"
    );
    let second = spawned_child(&actions[2]);
    service.on_spawned(second, t0 + 1101 * MS);
    drain(&mut service, t0 + 1101 * MS);
    assert_eq!(service.next_deadline(), Some(t0 + 1500 * MS));
    assert_eq!(service.status()[0].timeouts, 1);
}

#[test]
fn a_task_waiting_past_its_timeout_is_answered_without_a_child() {
    let t0 = Instant::now();
    let mut service = Service::with_max_waiting(&exec(1), 4, t0);
    service.submit(1, job(1, b""), t0);
    service.submit(1, job(2, b""), t0 + 100 * MS);
    let child = spawned_child(&drain(&mut service, t0)[0]);
    service.on_spawned(child, t0);
    drain(&mut service, t0);
    // The running one is not done at 1000 ms (SIGTERM only); the waiting
    // one's own timeout passes at 1100 ms.
    let actions = drain(&mut service, t0 + 1100 * MS);
    assert!(
        actions.iter().any(|a| matches!(a, ServiceAction::Done { task: 2, outcome: Outcome::Failed { code: "timeout", message }, .. } if message.contains("no exec slot"))),
        "{actions:?}"
    );
    assert_eq!(service.status()[0].waiting, 0);
    assert_eq!(service.status()[0].timeouts, 1);
}

#[test]
fn forgetting_a_route_kills_its_children_and_drops_its_answers() {
    let t0 = Instant::now();
    let mut service = Service::with_max_waiting(&exec(1), 4, t0);
    service.submit(1, job(1, b"a"), t0);
    service.submit(1, job(2, b"b"), t0);
    service.submit(2, job(3, b"c"), t0);
    let child = spawned_child(&drain(&mut service, t0)[0]);
    service.on_spawned(child, t0);
    drain(&mut service, t0);
    service.forget_route(1);
    assert_eq!(
        drain(&mut service, t0),
        [ServiceAction::Signal {
            child,
            signal: Signal::Kill
        }]
    );
    assert_eq!(
        service.status()[0].waiting,
        1,
        "route 1's waiting task is gone"
    );
    service.on_exit(child, ExitStatus::Signal(9), t0 + MS);
    service.on_output_end(child, Stream::Stdout, t0 + MS);
    service.on_output_end(child, Stream::Stderr, t0 + MS);
    let actions = drain(&mut service, t0 + MS);
    assert_eq!(
        actions[..2],
        [
            ServiceAction::CloseInput { child },
            ServiceAction::Release { child }
        ],
        "its input was never written: closed at the exit"
    );
    assert_eq!(actions.len(), 3, "no answer to route 1: {actions:?}");
    let next = spawned_child(&actions[2]);
    service.on_spawned(next, t0 + MS);
    assert_eq!(
        drain(&mut service, t0 + MS)[0],
        ServiceAction::Write {
            child: next,
            bytes: b"c".to_vec()
        },
        "route 2's task runs next"
    );
    service.on_written(next, 1);
    assert_eq!(
        drain(&mut service, t0 + MS),
        [ServiceAction::CloseInput { child: next }]
    );
    exec_ends(&mut service, next, b"C", t0 + 2 * MS);
    let actions = drain(&mut service, t0 + 2 * MS);
    assert_eq!(
        actions,
        [
            ServiceAction::Release { child: next },
            done(2, 3, Outcome::Ok(b"C".to_vec()))
        ]
    );
    // A task forgotten before its child has started is killed on the start.
    service.submit(3, job(4, b""), t0 + 2 * MS);
    let late = spawned_child(&drain(&mut service, t0 + 2 * MS)[0]);
    service.forget_route(3);
    drain(&mut service, t0 + 2 * MS);
    service.on_spawned(late, t0 + 3 * MS);
    assert!(
        drain(&mut service, t0 + 3 * MS).contains(&ServiceAction::Signal {
            child: late,
            signal: Signal::Kill
        })
    );
}

#[test]
fn a_failed_spawn_answers_its_task_and_the_next_one_starts() {
    let t0 = Instant::now();
    let mut service = Service::new(&exec(1), t0);
    service.submit(1, job(1, b""), t0);
    service.submit(1, job(2, b""), t0);
    let child = spawned_child(&drain(&mut service, t0)[0]);
    service.on_spawn_failed(child, "no such file", t0);
    let actions = drain(&mut service, t0);
    assert!(
        matches!(&actions[0], ServiceAction::Done { task: 1, outcome: Outcome::Failed { code: "spawn_failed", message }, .. } if message.contains("no such file")),
        "{actions:?}"
    );
    assert!(matches!(actions[1], ServiceAction::Spawn { .. }));
    assert_eq!(service.status()[0].spawn_failures, 1);
}

#[test]
fn a_job_for_an_unknown_handler_is_answered_at_once() {
    let t0 = Instant::now();
    let mut service = Service::new(&exec(1), t0);
    service.submit(
        5,
        Job {
            handler: 3,
            task: 9,
            payload: Vec::new(),
        },
        t0,
    );
    let actions = drain(&mut service, t0);
    assert!(
        matches!(
            &actions[..],
            [ServiceAction::Done {
                route: 5,
                task: 9,
                outcome: Outcome::Failed {
                    code: "unknown_handler",
                    ..
                }
            }]
        ),
        "{actions:?}"
    );
}

#[path = "service_pool_tests.rs"]
mod pool_tests;
