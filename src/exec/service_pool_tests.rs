//! The service's `pool` handlers: workers started ahead, the handler
//! protocol, crashes, deadlines, forgetting and abandoning.

use super::*;

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
