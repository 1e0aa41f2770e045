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

/// A pool service whose workers were all started at `t0`.
fn started_pool(set: &HandlerSet, max_waiting: usize, t0: Instant) -> (Service<u32>, Vec<ChildId>) {
    let mut service = Service::with_max_waiting(set, max_waiting, t0);
    assert_eq!(service.status()[0].state, "starting");
    let spawns = drain(&mut service, t0);
    let children: Vec<ChildId> = spawns.iter().map(spawned_child).collect();
    assert!(spawns
        .iter()
        .all(|a| matches!(a, ServiceAction::Spawn { pool: true, .. })));
    for &child in &children {
        service.on_spawned(child, t0);
    }
    assert_eq!(service.status()[0].state, "ready");
    assert_eq!(service.status()[0].alive, children.len());
    (service, children)
}

#[test]
fn pool_workers_start_before_any_task_and_answer_over_the_protocol() {
    let t0 = Instant::now();
    let (mut service, children) = started_pool(&pool(2, 1), 8, t0);
    assert_eq!(children.len(), 2);
    assert_eq!(drain(&mut service, t0), []);
    service.submit(1, job(100, b"one"), t0);
    service.submit(2, job(200, b"two"), t0);
    let writes = drain(&mut service, t0);
    assert_eq!(writes.len(), 2);
    let (to, sent) = frames(&writes[0]);
    let Frame::Task {
        id,
        deadline_ms,
        payload,
    } = &sent[0]
    else {
        panic!("{sent:?}");
    };
    assert_eq!((deadline_ms, &payload[..]), (&1000, &b"one"[..]));
    let (other, _) = frames(&writes[1]);
    assert_ne!(to, other, "spread over the workers");
    // Stray prints on stdout are logged, never taken for an answer.
    service.on_output(to, Stream::Stdout, b"loading model\n", t0);
    assert_eq!(drain(&mut service, t0), []);
    let answer = result(*id, b"ONE");
    service.on_output(to, Stream::Protocol, &answer[..5], t0 + MS);
    assert_eq!(drain(&mut service, t0 + MS), []);
    service.on_output(to, Stream::Protocol, &answer[5..], t0 + MS);
    assert_eq!(
        drain(&mut service, t0 + MS),
        [done(1, 100, Outcome::Ok(b"ONE".to_vec()))]
    );
    let status = &service.status()[0];
    assert_eq!(
        (status.mode, status.running, status.waiting),
        ("pool", 1, 0)
    );
}

#[test]
fn a_full_pool_queues_then_answers_busy() {
    let t0 = Instant::now();
    let (mut service, _) = started_pool(&pool(1, 1), 1, t0);
    service.submit(1, job(1, b"a"), t0);
    service.submit(1, job(2, b"b"), t0);
    service.submit(1, job(3, b"c"), t0);
    let actions = drain(&mut service, t0);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(matches!(actions[0], ServiceAction::Write { .. }));
    assert!(
        matches!(
            &actions[1],
            ServiceAction::Done {
                task: 3,
                outcome: Outcome::Failed { code: "busy", .. },
                ..
            }
        ),
        "{actions:?}"
    );
    assert_eq!(service.status()[0].waiting, 1);
}

#[test]
fn a_crashed_worker_fails_its_task_and_is_restarted_after_a_back_off() {
    let t0 = Instant::now();
    let (mut service, children) = started_pool(&pool(1, 2), 8, t0);
    let worker = children[0];
    service.submit(1, job(1, b"a"), t0);
    drain(&mut service, t0);
    service.on_exit(worker, ExitStatus::Code(70), t0 + MS);
    let actions = drain(&mut service, t0 + MS);
    assert_eq!(actions[0], ServiceAction::Release { child: worker });
    assert!(
        matches!(&actions[1], ServiceAction::Done { task: 1, outcome: Outcome::Failed { code: "worker_lost", message }, .. } if message.contains("exit status 70")),
        "{actions:?}"
    );
    assert_eq!(actions.len(), 2);
    assert_eq!(service.status()[0].state, "backing off");
    assert_eq!(service.status()[0].alive, 0);
    // Tasks wait meanwhile.
    service.submit(1, job(2, b"b"), t0 + 2 * MS);
    assert_eq!(drain(&mut service, t0 + 2 * MS), []);
    assert_eq!(service.next_deadline(), Some(t0 + 101 * MS));
    let actions = drain(&mut service, t0 + 101 * MS);
    let again = spawned_child(&actions[0]);
    assert_ne!(again, worker);
    service.on_spawned(again, t0 + 102 * MS);
    let (to, sent) = frames(&drain(&mut service, t0 + 102 * MS)[0]);
    assert_eq!(to, again);
    assert!(matches!(&sent[0], Frame::Task { payload, .. } if payload == b"b"));
    let status = &service.status()[0];
    assert_eq!((status.state, status.restarts), ("ready", 1));
}

#[test]
fn a_worker_overrunning_a_deadline_is_stopped_and_its_task_times_out() {
    let t0 = Instant::now();
    let (mut service, children) = started_pool(&pool(1, 1), 8, t0);
    service.submit(1, job(1, b"hang"), t0);
    drain(&mut service, t0);
    assert_eq!(service.next_deadline(), Some(t0 + 1000 * MS));
    let actions = drain(&mut service, t0 + 1000 * MS);
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert!(
        matches!(
            &actions[0],
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
    assert_eq!(
        actions[1],
        ServiceAction::Signal {
            child: children[0],
            signal: Signal::Term
        }
    );
    assert_eq!(
        drain(&mut service, t0 + 1100 * MS),
        [ServiceAction::Signal {
            child: children[0],
            signal: Signal::Kill
        }]
    );
    assert_eq!(service.status()[0].timeouts, 1);
}

#[test]
fn forgetting_a_route_drops_a_workers_answer_and_its_waiting_tasks() {
    let t0 = Instant::now();
    let (mut service, children) = started_pool(&pool(1, 1), 8, t0);
    service.submit(1, job(1, b"a"), t0);
    service.submit(1, job(2, b"b"), t0);
    service.submit(2, job(3, b"c"), t0);
    let (_, sent) = frames(&drain(&mut service, t0)[0]);
    service.forget_route(1);
    assert_eq!(drain(&mut service, t0), [], "a worker's task is not killed");
    assert_eq!(service.status()[0].waiting, 1);
    service.on_output(
        children[0],
        Stream::Protocol,
        &result(sent[0].id(), b"A"),
        t0 + MS,
    );
    let actions = drain(&mut service, t0 + MS);
    assert_eq!(actions.len(), 1, "route 1's answer dropped: {actions:?}");
    let (_, sent) = frames(&actions[0]);
    assert!(matches!(&sent[0], Frame::Task { payload, .. } if payload == b"c"));
    service.on_output(
        children[0],
        Stream::Protocol,
        &result(sent[0].id(), b"C"),
        t0 + MS,
    );
    assert_eq!(
        drain(&mut service, t0 + MS),
        [done(2, 3, Outcome::Ok(b"C".to_vec()))]
    );
    assert_eq!(service.tasks(), 0);
}

#[test]
fn abandoning_answers_every_task_held_once() {
    let t0 = Instant::now();
    let (mut service, _) = started_pool(&pool(1, 1), 8, t0);
    service.submit(1, job(1, b"a"), t0);
    service.submit(2, job(2, b"b"), t0);
    drain(&mut service, t0);
    service.abandon();
    let mut answered: Vec<(u32, u64)> = drain(&mut service, t0)
        .into_iter()
        .filter_map(|a| match a {
            ServiceAction::Done {
                route,
                task,
                outcome:
                    Outcome::Failed {
                        code: "draining", ..
                    },
            } => Some((route, task)),
            _ => None,
        })
        .collect();
    answered.sort();
    assert_eq!(answered, [(1, 1), (2, 2)]);
    assert_eq!(service.tasks(), 0);
}

#[test]
fn the_handler_metrics_are_recorded_with_the_handler_label() {
    use metrics_exporter_prometheus::PrometheusBuilder;
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let t0 = Instant::now();
    // The series' handles are made with the service.
    let (mut service, children) =
        metrics::with_local_recorder(&recorder, || started_pool(&pool(2, 1), 8, t0));
    let rendered = handle.render();
    assert!(
        rendered.contains("ringworker_handler_processes{handler=\"resize\"} 2"),
        "{rendered}"
    );
    service.submit(1, job(1, b"a"), t0);
    drain(&mut service, t0);
    service.on_exit(children[0], ExitStatus::Code(1), t0);
    service.on_exit(children[1], ExitStatus::Code(1), t0);
    let spawns = drain(&mut service, t0 + 100 * MS);
    assert_eq!(
        spawns.len(),
        5,
        "two releases, an answer, two starts: {spawns:?}"
    );
    service.on_spawn_failed(spawned_child(&spawns[3]), "no such file", t0 + 100 * MS);
    service.on_spawned(spawned_child(&spawns[4]), t0 + 100 * MS);
    drain(&mut service, t0 + 100 * MS);
    let rendered = handle.render();
    for line in [
        "ringworker_handler_processes{handler=\"resize\"} 1",
        "ringworker_handler_restarts_total{handler=\"resize\"} 1",
        "ringworker_handler_spawn_failures_total{handler=\"resize\"} 1",
        "ringworker_handler_wait_seconds_count{handler=\"resize\"} 1",
    ] {
        assert!(rendered.contains(line), "{line} in {rendered}");
    }
}

#[test]
fn tasks_given_to_one_worker_in_one_round_go_out_as_one_write() {
    let t0 = Instant::now();
    let mut service: Service<u32> = Service::with_max_waiting(&pool(1, 4), 8, t0);
    let child = spawned_child(&drain(&mut service, t0)[0]);
    // Waiting for the worker to start: nothing is written yet.
    for task in 1..=3 {
        service.submit(7, job(task, b"x"), t0);
    }
    assert_eq!(drain(&mut service, t0), []);
    service.on_spawned(child, t0);
    let writes = drain(&mut service, t0);
    assert_eq!(writes.len(), 1, "{writes:?}");
    let (to, sent) = frames(&writes[0]);
    assert_eq!(to, child);
    let ids: Vec<u64> = sent
        .iter()
        .map(|frame| match frame {
            Frame::Task { id, .. } => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 3);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique, ids, "three distinct tasks, in order");
}
