//! The blocking driver of declared handlers against real children: a
//! thousand tasks through `cat` (exec) and through the Python example
//! worker (pool) from several threads at once, byte for byte; a timeout
//! that leaves no process of the group; a crash mid-task and the
//! restart; a forgotten route; and `stop` leaving no child behind.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use ringworker::config::handlers::{HandlerDecl, HandlerSet, ModeSettings, Rlimits};
use ringworker::exec::codes;
use ringworker::exec::driver::{Answer, Driver};
use ringworker::exec::Outcome;
use ringworker::handlers::Job;

/// (session, generation), as a runtime routes its jobs.
type Route = (u32, u32);

/// Longest any one wait may take.
const LIMIT: Duration = Duration::from_secs(60);

fn decl(name: &str, mode: ModeSettings, program: PathBuf, args: &[&str]) -> HandlerDecl {
    HandlerDecl {
        name: name.to_owned(),
        mode,
        program_written: program.display().to_string(),
        program,
        args: args.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
        // pyenv shims need HOME or PYENV_ROOT to find the interpreter.
        pass_env: ["HOME", "PYENV_ROOT", "PYENV_VERSION"]
            .map(String::from)
            .to_vec(),
        cwd: None,
        timeout: Duration::from_secs(20),
        kill_grace: Duration::from_millis(200),
        rlimits: Rlimits::default(),
        user: None,
        max_output: 1 << 20,
        stderr_cap: 256,
    }
}

fn exec(concurrency: u32) -> ModeSettings {
    ModeSettings::Exec { concurrency }
}

fn pool(processes: u32, in_flight_per_process: u32) -> ModeSettings {
    ModeSettings::Pool {
        processes,
        in_flight_per_process,
        recycle_after: None,
    }
}

fn set(handlers: Vec<HandlerDecl>) -> HandlerSet {
    HandlerSet { handlers }
}

fn python3() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("python3"))
            .find(|candidate| candidate.is_file())
    });
    found.expect("python3 is needed by this test (scripts/test provisions it)")
}

fn sh(name: &str, script: &str) -> HandlerDecl {
    decl(name, exec(4), "/bin/sh".into(), &["-c", script])
}

fn job(handler: usize, task: u64, payload: &[u8]) -> Job {
    Job {
        handler,
        task,
        payload: payload.to_vec(),
    }
}

fn answer(answers: &Receiver<Answer<Route>>) -> Answer<Route> {
    answers.recv_timeout(LIMIT).expect("an answer in time")
}

/// Varied payloads: empty, small, one larger than a pipe's buffer.
fn payload(i: usize) -> Vec<u8> {
    let len = match i % 10 {
        0 => 0,
        9 => 200_000,
        n => n * 37,
    };
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

/// `tasks` tasks of handler 0, spread over `threads` sessions, each
/// keeping at most 16 in flight; every answer must echo its payload.
fn echo_from_threads(driver: &Driver<Route>, threads: u32, tasks: usize) {
    std::thread::scope(|scope| {
        for session in 0..threads {
            let answers = driver.register(session);
            let submitter = driver.submitter();
            scope.spawn(move || {
                let mine: Vec<usize> = (0..tasks)
                    .filter(|i| i % threads as usize == session as usize)
                    .collect();
                let mut next = 0;
                let mut seen = HashSet::new();
                while seen.len() < mine.len() {
                    while next < mine.len() && next - seen.len() < 16 {
                        let i = mine[next];
                        submitter
                            .submit((session, 1), job(0, i as u64, &payload(i)))
                            .expect("the driver runs");
                        next += 1;
                    }
                    let Answer {
                        route,
                        task,
                        outcome,
                    } = answer(&answers);
                    assert_eq!(route, (session, 1));
                    assert_eq!(outcome, Outcome::Ok(payload(task as usize)), "task {task}");
                    assert!(seen.insert(task), "task {task} answered twice");
                }
                assert!(
                    answers.recv_timeout(Duration::from_millis(50)).is_err(),
                    "nothing more than one answer per task"
                );
            });
        }
    });
}

#[test]
fn a_thousand_tasks_through_cat_from_four_threads() {
    let cat = decl("cat", exec(8), "/bin/cat".into(), &[]);
    let driver: Driver<Route> = Driver::start(&set(vec![cat])).expect("driver");
    echo_from_threads(&driver, 4, 1000);
    let status = &driver.status()[0];
    assert_eq!((status.alive, status.running, status.waiting), (0, 0, 0));
    driver.stop();
}

fn python_example() -> HandlerDecl {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pool_worker.py");
    let script = script.to_str().expect("a UTF-8 path");
    decl("py-echo", pool(3, 2), python3(), &["-u", script])
}

#[test]
fn a_thousand_tasks_through_the_python_pool_worker_from_four_threads() {
    let driver: Driver<Route> = Driver::start(&set(vec![python_example()])).expect("driver");
    echo_from_threads(&driver, 4, 1000);
    let status = &driver.status()[0];
    assert_eq!(status.mode, "pool");
    assert_eq!((status.alive, status.restarts), (3, 0), "{status:?}");
    driver.stop();
}

/// Whether `pid` is gone (or a zombie about to be).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) {
    let start = Instant::now();
    while !process_gone(pid) {
        assert!(start.elapsed() < LIMIT, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes whose command line holds `token`, and every member of
/// their process groups.
fn processes_of(token: &str) -> Vec<u32> {
    let all = common::process::all_processes();
    let leaders: HashSet<u32> = all
        .iter()
        .filter(|p| {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(token)
        })
        .map(|p| p.pid)
        .collect();
    all.iter()
        .filter(|p| p.state != 'Z' && (leaders.contains(&p.pid) || leaders.contains(&p.pgrp)))
        .map(|p| p.pid)
        .collect()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < LIMIT, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_timeout_fails_the_task_and_leaves_no_process_of_its_group() {
    // The grandchild ignores SIGTERM: SIGKILL after the grace ends it.
    let mut slow = sh(
        "slow",
        "trap '' TERM; sleep 300 & echo $! >&2; wait; : exec-driver-timeout",
    );
    slow.timeout = Duration::from_millis(300);
    let driver: Driver<Route> = Driver::start(&set(vec![slow])).expect("driver");
    let answers = driver.register(1);
    let start = Instant::now();
    driver
        .submitter()
        .submit((1, 1), job(0, 5, b""))
        .expect("runs");
    let Answer { task, outcome, .. } = answer(&answers);
    assert_eq!(task, 5);
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "timeout plus grace"
    );
    let Outcome::Failed { code, message } = &outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(*code, codes::TIMEOUT, "{message}");
    let grandchild: u32 = message
        .rsplit(": ")
        .next()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("the grandchild's pid in {message:?}"));
    wait_gone(grandchild);
    assert_eq!(processes_of("exec-driver-timeout"), Vec::<u32>::new());
    assert_eq!(driver.status()[0].timeouts, 1);
    driver.stop();
}

/// An echo worker that crashes on `crash` and prints around each task.
const MOODY: &str = r#"
import os, socket, struct, sys
sock = socket.socket(fileno=3)
stream = sock.makefile("rb")
print("worker starting", flush=True)
while len(head := stream.read(4)) == 4:
    frame = stream.read(struct.unpack(">I", head)[0])
    task_id, payload = frame[1:9], frame[13:]
    print("got a task; a stray print must not break the framing")
    sys.stderr.write("and a warning on stderr\n")
    if payload == b"crash":
        os._exit(70)
    answer = b"\x02" + task_id + payload
    sock.sendall(struct.pack(">I", len(answer)) + answer)
"#;

#[test]
fn a_crash_mid_task_fails_it_and_the_worker_is_restarted() {
    let moody = decl("moody", pool(1, 1), python3(), &["-u", "-c", MOODY]);
    let driver: Driver<Route> = Driver::start(&set(vec![moody])).expect("driver");
    let answers = driver.register(2);
    let submitter = driver.submitter();
    for task in 0..10u64 {
        let payload = if task == 4 {
            b"crash".to_vec()
        } else {
            format!("task {task}").into_bytes()
        };
        submitter
            .submit((2, 1), job(0, task, &payload))
            .expect("runs");
        let Answer {
            task: answered,
            outcome,
            ..
        } = answer(&answers);
        assert_eq!(answered, task);
        if task == 4 {
            assert!(
                matches!(&outcome, Outcome::Failed { code: "worker_lost", message } if message.contains("exit status 70")),
                "{outcome:?}"
            );
        } else {
            assert_eq!(outcome, Outcome::Ok(payload), "task {task}");
        }
    }
    let status = &driver.status()[0];
    assert_eq!(
        (status.restarts, status.alive, status.state),
        (1, 1, "ready")
    );
    driver.stop();
}

#[test]
fn a_forgotten_route_loses_its_children_and_its_answers_only() {
    let hang = sh("hang", "sleep 300; : exec-driver-forget");
    let cat = decl("cat", exec(2), "/bin/cat".into(), &[]);
    let driver: Driver<Route> = Driver::start(&set(vec![hang, cat])).expect("driver");
    let answers = driver.register(3);
    let submitter = driver.submitter();
    submitter.submit((3, 1), job(0, 1, b"")).expect("runs");
    submitter.submit((3, 1), job(0, 2, b"")).expect("runs");
    wait_for("both children", || driver.status()[0].alive == 2);
    let children = processes_of("exec-driver-forget");
    assert_eq!(children.len(), 4, "two shells, a sleep each: {children:?}");
    driver.forget((3, 1));
    for pid in children {
        wait_gone(pid);
    }
    wait_for("the release", || driver.status()[0].alive == 0);
    // The next generation of the same session is answered as usual.
    submitter
        .submit((3, 2), job(1, 3, b"still here"))
        .expect("runs");
    let Answer {
        route,
        task,
        outcome,
    } = answer(&answers);
    assert_eq!((route, task), ((3, 2), 3));
    assert_eq!(outcome, Outcome::Ok(b"still here".to_vec()));
    assert!(
        matches!(
            answers.recv_timeout(Duration::from_millis(200)),
            Err(RecvTimeoutError::Timeout)
        ),
        "no answer for the forgotten route"
    );
    driver.stop();
}

#[test]
fn stop_answers_what_is_left_and_leaves_no_child() {
    let mut script = python_example();
    script.args.push("exec-driver-stop".into());
    let hang = sh("hang", "sleep 300 & sleep 300; : exec-driver-stop");
    let driver: Driver<Route> = Driver::start(&set(vec![script, hang])).expect("driver");
    let answers = driver.register(4);
    let submitter = driver.submitter();
    for task in 0..3 {
        submitter.submit((4, 1), job(1, task, b"")).expect("runs");
    }
    wait_for("the children", || {
        let status = driver.status();
        status[0].alive == 3 && status[1].alive == 3
    });
    // Three workers, three shells with two sleeps each.
    let mut running = Vec::new();
    wait_for("every process", || {
        running = processes_of("exec-driver-stop");
        running.len() == 3 + 3 * 3
    });
    driver.stop();
    let mut answered: Vec<u64> = answers
        .try_iter()
        .map(|a| {
            assert_eq!(a.outcome.code(), Some("draining"), "{a:?}");
            a.task
        })
        .collect();
    answered.sort();
    assert_eq!(answered, [0, 1, 2]);
    for pid in running {
        wait_gone(pid);
    }
    assert!(
        submitter.submit((4, 1), job(1, 9, b"")).is_err(),
        "a stopped driver gives the job back"
    );
}
