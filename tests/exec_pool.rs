//! The exec state types proven before the event loop uses them: a tiny
//! blocking driver (poll(2) on the pipes, the pidfds and fd 3) runs
//! `ExecTask` and `Pool` against real children, 1,000 tasks through each
//! mode, both example workers byte for byte, and the failures the issue
//! names (exit codes, timeouts, a flood, a child that never reads, a
//! grandchild holding the pipe, crashes and restarts, stray prints).

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ringworker::exec::frame::encode_task;
use ringworker::exec::pool::TaskKey;
use ringworker::exec::task::Finished;
use ringworker::exec::{
    codes, Child, ExecAction, ExecLimits, ExecTask, Outcome, Pool, PoolAction, PoolLimits, Signal,
    SpawnSpec,
};

/// Longest any one driver run may take.
const LIMIT: Duration = Duration::from_secs(60);

fn sh(script: &str) -> SpawnSpec {
    SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        ..SpawnSpec::default()
    }
}

fn exec_limits() -> ExecLimits {
    ExecLimits {
        timeout: Duration::from_secs(10),
        kill_grace: Duration::from_millis(200),
        max_output: 1 << 20,
        stderr_cap: 64,
        drain_after_exit: Duration::from_millis(100),
    }
}

/// Wait for any of `fds` (at most `until`), marking what is ready.
fn poll(fds: &mut [libc::pollfd], until: Option<Instant>) {
    let wait = until.map_or(100, |until| {
        until
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(100) as i32
    });
    // SAFETY: poll on a live slice of pollfds, its length given.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
    assert!(rc >= 0, "poll: {}", std::io::Error::last_os_error());
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// What one non-blocking read gave.
enum Read1 {
    Bytes(usize),
    End,
    Nothing,
}

fn read_once(file: &mut impl Read, buf: &mut [u8]) -> Read1 {
    match file.read(buf) {
        Ok(0) => Read1::End,
        Ok(n) => Read1::Bytes(n),
        Err(err) if err.kind() == ErrorKind::WouldBlock => Read1::Nothing,
        Err(_) => Read1::End,
    }
}

/// Run one task in a child of `spec` with the exec state, to its end.
fn run_exec(spec: &SpawnSpec, limits: ExecLimits, input: &[u8]) -> (Finished, u32) {
    let mut child = Child::spawn(spec).expect("spawn");
    let pid = child.pid();
    let mut stdin = child.stdin.take().map(File::from);
    let mut stdout = child.stdout.take().map(File::from);
    let mut stderr = child.stderr.take().map(File::from);
    let mut task = ExecTask::new(input.to_vec(), limits, Instant::now());
    let mut exited = false;
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < LIMIT,
            "task not finished within {LIMIT:?}"
        );
        while let Some(action) = task.next_action(Instant::now()) {
            match action {
                ExecAction::CloseStdin => stdin = None,
                ExecAction::Signal(signal) => child.signal_group(signal),
                ExecAction::Finish(finished) => {
                    child.signal_group(Signal::Kill);
                    drop((stdin, stdout, stderr));
                    child.reap().expect("reap");
                    return (finished, pid);
                }
            }
        }
        let mut fds = Vec::new();
        let stdin_at = stdin
            .as_ref()
            .filter(|_| !task.stdin_pending().is_empty())
            .map(|f| {
                fds.push(pollfd(f.as_raw_fd(), libc::POLLOUT));
                fds.len() - 1
            });
        let stdout_at = stdout.as_ref().filter(|_| task.wants_stdout()).map(|f| {
            fds.push(pollfd(f.as_raw_fd(), libc::POLLIN));
            fds.len() - 1
        });
        let stderr_at = stderr.as_ref().filter(|_| task.wants_stderr()).map(|f| {
            fds.push(pollfd(f.as_raw_fd(), libc::POLLIN));
            fds.len() - 1
        });
        let pidfd_at = (!exited).then(|| {
            fds.push(pollfd(child.pidfd().as_raw_fd(), libc::POLLIN));
            fds.len() - 1
        });
        poll(&mut fds, task.next_deadline());
        let ready = |at: Option<usize>| at.is_some_and(|at| fds[at].revents != 0);
        if ready(stdin_at) {
            if let Some(file) = stdin.as_mut() {
                match file.write(task.stdin_pending()) {
                    Ok(n) => task.stdin_wrote(n),
                    Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => task.stdin_broken(),
                }
            }
        }
        if ready(stdout_at) {
            if let Some(file) = stdout.as_mut() {
                match read_once(file, &mut buf) {
                    Read1::Bytes(n) => task.on_stdout(&buf[..n]),
                    Read1::End => task.on_stdout_end(),
                    Read1::Nothing => {}
                }
            }
        }
        if ready(stderr_at) {
            if let Some(file) = stderr.as_mut() {
                match read_once(file, &mut buf) {
                    Read1::Bytes(n) => task.on_stderr(&buf[..n]),
                    Read1::End => task.on_stderr_end(),
                    Read1::Nothing => {}
                }
            }
        }
        if ready(pidfd_at) {
            if let Some(status) = child.exit_status().expect("waitid") {
                exited = true;
                task.on_exit(status, Instant::now());
            }
        }
    }
}

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

/// Varied payloads: empty, small, one larger than a pipe's buffer.
fn payload(i: usize) -> Vec<u8> {
    let len = match i % 10 {
        0 => 0,
        9 => 200_000,
        n => n * 37,
    };
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

#[test]
fn a_thousand_tasks_through_an_exec_handler() {
    let cat = SpawnSpec {
        program: "/bin/cat".into(),
        ..SpawnSpec::default()
    };
    for i in 0..1000 {
        let input = payload(i);
        let (finished, pid) = run_exec(&cat, exec_limits(), &input);
        assert_eq!(finished.outcome, Outcome::Ok(input), "task {i}");
        assert!(!finished.pipes_held);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "task {i}: reaped"
        );
    }
}

#[test]
fn exit_codes_and_stderr_make_the_failure() {
    let (finished, _) = run_exec(&sh("echo 'bad input' >&2; exit 3"), exec_limits(), b"");
    assert_eq!(
        finished.outcome,
        Outcome::failed(codes::EXIT_STATUS, "exit status 3: bad input")
    );
    let (finished, _) = run_exec(&sh("kill -SEGV $$"), exec_limits(), b"");
    assert_eq!(
        finished.outcome,
        Outcome::failed(codes::EXIT_STATUS, "killed by signal 11")
    );
    // stderr is capped; the message says how much there was.
    let (finished, _) = run_exec(
        &sh("head -c 100000 /dev/zero | tr '\\0' e >&2; exit 1"),
        exec_limits(),
        b"",
    );
    let Outcome::Failed { message, .. } = &finished.outcome else {
        panic!("{finished:?}");
    };
    assert!(
        message.ends_with("... (100000 bytes of stderr)"),
        "{message}"
    );
    assert_eq!(finished.stderr_dropped, 100_000 - 64);
}

#[test]
fn a_timeout_stops_the_whole_group() {
    let limits = ExecLimits {
        timeout: Duration::from_millis(300),
        ..exec_limits()
    };
    // The grandchild ignores SIGTERM: SIGKILL after the grace ends it.
    let spec = sh("trap '' TERM; sleep 300 & echo $! >&2; wait");
    let start = Instant::now();
    let (finished, pid) = run_exec(&spec, limits, b"");
    assert_eq!(
        finished.outcome.code(),
        Some(codes::TIMEOUT),
        "{finished:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "timeout plus grace"
    );
    let Outcome::Failed { message, .. } = &finished.outcome else {
        unreachable!()
    };
    let grandchild: u32 = message.rsplit(": ").next().unwrap().trim().parse().unwrap();
    wait_gone(grandchild);
    assert!(process_gone(pid));
}

#[test]
fn a_flood_of_output_is_result_too_large_without_growing() {
    let limits = ExecLimits {
        max_output: 4096,
        ..exec_limits()
    };
    let (finished, _) = run_exec(&sh("exec cat /dev/zero"), limits, b"");
    assert_eq!(finished.outcome.code(), Some(codes::RESULT_TOO_LARGE));
}

#[test]
fn a_child_that_never_reads_stdin_does_not_deadlock() {
    // A payload far larger than the pipe: the child exits without reading.
    let (finished, _) = run_exec(&sh("echo done"), exec_limits(), &vec![7u8; 4 << 20]);
    assert_eq!(finished.outcome, Outcome::Ok(b"done\n".to_vec()));
    // One that neither reads nor exits is ended by its timeout.
    let limits = ExecLimits {
        timeout: Duration::from_millis(200),
        ..exec_limits()
    };
    let (finished, _) = run_exec(&sh("exec sleep 300"), limits, &vec![7u8; 4 << 20]);
    assert_eq!(finished.outcome.code(), Some(codes::TIMEOUT));
}

#[test]
fn a_grandchild_holding_the_pipe_does_not_hang_the_task() {
    let start = Instant::now();
    let (finished, _) = run_exec(&sh("sleep 300 & echo started"), exec_limits(), b"");
    assert_eq!(finished.outcome, Outcome::Ok(b"started\n".to_vec()));
    assert!(finished.pipes_held, "flagged");
    assert!(start.elapsed() < Duration::from_secs(5));
}

/// A pool worker in the driver.
struct Worker {
    child: Child,
    protocol: Option<UnixStream>,
    pending: Vec<u8>,
    stdout: Option<File>,
    stderr: Option<File>,
    exited: bool,
}

/// What a pool run saw.
#[derive(Debug, Default)]
struct PoolRun {
    outcomes: HashMap<TaskKey, Outcome>,
    /// Bytes the workers wrote on stdout and stderr (the agent's log).
    logged: usize,
    max_waited: Duration,
    pids: Vec<u32>,
}

/// Run `tasks` through a pool of `spec` workers, feeding them as the
/// pool accepts them; every worker is reaped at the end.
fn run_pool(spec: &SpawnSpec, limits: PoolLimits, tasks: &[Vec<u8>]) -> PoolRun {
    let start = Instant::now();
    let mut pool = Pool::new(limits, start);
    let mut workers: Vec<Option<Worker>> = (0..limits.processes).map(|_| None).collect();
    let mut run = PoolRun::default();
    let mut next = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while run.outcomes.len() < tasks.len() {
        assert!(
            start.elapsed() < LIMIT,
            "{} of {} tasks answered",
            run.outcomes.len(),
            tasks.len()
        );
        let now = Instant::now();
        while next < tasks.len() && pool.submit(next as TaskKey, now).is_ok() {
            next += 1;
        }
        pool.poll(now);
        while let Some(action) = pool.next_action() {
            match action {
                PoolAction::Spawn { slot } => match Child::spawn(spec) {
                    Ok(mut child) => {
                        run.pids.push(child.pid());
                        workers[slot] = Some(Worker {
                            protocol: child.protocol.take(),
                            stdout: child.stdout.take().map(File::from),
                            stderr: child.stderr.take().map(File::from),
                            child,
                            pending: Vec::new(),
                            exited: false,
                        });
                        pool.spawned(slot, Instant::now());
                    }
                    Err(_) => pool.spawn_failed(slot, Instant::now()),
                },
                PoolAction::Send {
                    slot,
                    task,
                    deadline_ms,
                    waited,
                } => {
                    run.max_waited = run.max_waited.max(waited);
                    let worker = workers[slot].as_mut().expect("a worker in the slot");
                    encode_task(
                        task,
                        deadline_ms,
                        &tasks[task as usize],
                        &mut worker.pending,
                    );
                }
                PoolAction::Complete { task, outcome } => {
                    assert!(
                        run.outcomes.insert(task, outcome).is_none(),
                        "task {task} answered twice"
                    );
                }
                PoolAction::Signal { slot, signal } => {
                    if let Some(worker) = &workers[slot] {
                        worker.child.signal_group(signal);
                    }
                }
                PoolAction::CloseInput { slot } => {
                    if let Some(worker) = &mut workers[slot] {
                        worker.protocol = None;
                    }
                }
                PoolAction::Reap { slot } => {
                    if let Some(mut worker) = workers[slot].take() {
                        worker.child.signal_group(Signal::Kill);
                        worker.child.reap().expect("reap");
                    }
                }
            }
        }
        // Poll every worker's fd 3, stdout, stderr and pidfd.
        let mut fds = Vec::new();
        let mut owners = Vec::new();
        for (slot, worker) in workers.iter().enumerate() {
            let Some(worker) = worker else { continue };
            if let Some(protocol) = &worker.protocol {
                let events = if worker.pending.is_empty() {
                    libc::POLLIN
                } else {
                    libc::POLLIN | libc::POLLOUT
                };
                fds.push(pollfd(protocol.as_raw_fd(), events));
                owners.push((slot, 0));
            }
            for (which, file) in [(1, &worker.stdout), (2, &worker.stderr)] {
                if let Some(file) = file {
                    fds.push(pollfd(file.as_raw_fd(), libc::POLLIN));
                    owners.push((slot, which));
                }
            }
            if !worker.exited {
                fds.push(pollfd(worker.child.pidfd().as_raw_fd(), libc::POLLIN));
                owners.push((slot, 3));
            }
        }
        poll(&mut fds, pool.next_deadline());
        for (fd, &(slot, which)) in fds.iter().zip(&owners) {
            if fd.revents == 0 {
                continue;
            }
            let now = Instant::now();
            let Some(worker) = workers[slot].as_mut() else {
                continue;
            };
            match which {
                0 => {
                    let Some(protocol) = worker.protocol.as_mut() else {
                        continue;
                    };
                    if fd.revents & libc::POLLOUT != 0 && !worker.pending.is_empty() {
                        match protocol.write(&worker.pending) {
                            Ok(n) => {
                                worker.pending.drain(..n);
                            }
                            Err(err) if err.kind() == ErrorKind::WouldBlock => {}
                            Err(_) => worker.pending.clear(),
                        }
                    }
                    if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                        match read_once(protocol, &mut buf) {
                            Read1::Bytes(n) => pool.on_bytes(slot, &buf[..n], now),
                            Read1::End => {
                                worker.protocol = None;
                                pool.on_eof(slot, now);
                            }
                            Read1::Nothing => {}
                        }
                    }
                }
                1 | 2 => {
                    let file = if which == 1 {
                        &mut worker.stdout
                    } else {
                        &mut worker.stderr
                    };
                    if let Some(f) = file.as_mut() {
                        match read_once(f, &mut buf) {
                            Read1::Bytes(n) => run.logged += n,
                            Read1::End => *file = None,
                            Read1::Nothing => {}
                        }
                    }
                }
                _ => {
                    if let Some(status) = worker.child.exit_status().expect("waitid") {
                        worker.exited = true;
                        pool.on_exit(slot, status, now);
                    }
                }
            }
        }
    }
    // The end: every worker's input closed, each exits and is reaped.
    for worker in workers.into_iter().flatten() {
        let Worker {
            mut child,
            protocol,
            ..
        } = worker;
        drop(protocol);
        wait_exit(&child);
        child.reap().expect("reap");
    }
    for &pid in &run.pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} left behind"
        );
    }
    run
}

/// Wait (bounded) for a worker to exit on its own after end of file.
fn wait_exit(child: &Child) {
    let mut fds = [pollfd(child.pidfd().as_raw_fd(), libc::POLLIN)];
    poll(&mut fds, Some(Instant::now() + Duration::from_secs(5)));
    if child.exit_status().expect("waitid").is_none() {
        child.signal_group(Signal::Kill);
    }
}

fn pool_limits(processes: usize, per_process: usize) -> PoolLimits {
    PoolLimits {
        processes,
        in_flight_per_process: per_process,
        timeout: Duration::from_secs(20),
        kill_grace: Duration::from_millis(200),
        recycle_after: None,
        max_output: 1 << 20,
        max_waiting: 16,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
    }
}

fn python3() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("python3"))
            .find(|candidate| candidate.is_file())
    });
    found.expect("python3 is needed by this test (scripts/test provisions it)")
}

fn python_worker(script: &str) -> SpawnSpec {
    SpawnSpec {
        program: python3(),
        args: vec!["-u".into(), "-c".into(), script.into()],
        // pyenv shims need HOME or PYENV_ROOT to find the interpreter.
        env: ["HOME", "PYENV_ROOT", "PYENV_VERSION"]
            .iter()
            .filter_map(|name| Some((name.into(), std::env::var_os(name)?)))
            .chain([("RINGWORKER_HANDLER_FD".into(), "3".into())])
            .collect(),
        protocol_fd: true,
        ..SpawnSpec::default()
    }
}

fn python_example() -> SpawnSpec {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pool_worker.py"),
    )
    .expect("examples/pool_worker.py");
    python_worker(&script)
}

/// The Rust example, built with rustc (std only, no crate needed).
fn rust_example() -> SpawnSpec {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pool_worker.rs");
    let out = std::env::temp_dir().join(format!("ringworker-pool-worker-{}", std::process::id()));
    let status = std::process::Command::new("rustc")
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .expect("rustc is needed by this test to build examples/pool_worker.rs");
    assert!(status.success(), "rustc failed on {}", source.display());
    SpawnSpec {
        program: out,
        env: vec![("RINGWORKER_HANDLER_FD".into(), "3".into())],
        protocol_fd: true,
        ..SpawnSpec::default()
    }
}

fn assert_echoed(run: &PoolRun, tasks: &[Vec<u8>]) {
    for (i, task) in tasks.iter().enumerate() {
        assert_eq!(
            run.outcomes.get(&(i as TaskKey)),
            Some(&Outcome::Ok(task.clone())),
            "task {i}"
        );
    }
}

#[test]
fn a_thousand_tasks_through_each_example_worker_echo_byte_for_byte() {
    let tasks: Vec<Vec<u8>> = (0..1000).map(payload).collect();
    let spec = rust_example();
    let run = run_pool(&spec, pool_limits(3, 4), &tasks);
    assert_echoed(&run, &tasks);
    assert_eq!(run.pids.len(), 3, "no restart");
    let _ = std::fs::remove_file(&spec.program);
    let run = run_pool(&python_example(), pool_limits(2, 2), &tasks);
    assert_echoed(&run, &tasks);
    assert_eq!(run.pids.len(), 2, "no restart");
}

/// A worker that echoes, but crashes on `crash`, hangs on `hang`, and
/// prints to stdout and stderr around each task.
const MOODY: &str = r#"
import os, socket, struct, sys, time
sock = socket.socket(fileno=3)
stream = sock.makefile("rb")
print("worker starting", flush=True)
while len(head := stream.read(4)) == 4:
    frame = stream.read(struct.unpack(">I", head)[0])
    task_id = frame[1:9]
    payload = frame[13:]
    print("got a task; a stray print must not break the framing")
    sys.stderr.write("and a warning on stderr\n")
    if payload == b"crash":
        os._exit(70)
    if payload == b"hang":
        time.sleep(300)
    answer = b"\x02" + task_id + payload
    sock.sendall(struct.pack(">I", len(answer)) + answer)
"#;

#[test]
fn a_worker_printing_to_stdout_keeps_its_framing() {
    let tasks: Vec<Vec<u8>> = (0..50).map(|i| format!("task {i}").into_bytes()).collect();
    let run = run_pool(&python_worker(MOODY), pool_limits(2, 1), &tasks);
    assert_echoed(&run, &tasks);
    assert!(
        run.logged > 50 * 40,
        "the prints reached the log: {} bytes",
        run.logged
    );
}

#[test]
fn a_crash_mid_task_fails_it_and_the_worker_is_restarted() {
    let mut tasks: Vec<Vec<u8>> = (0..20).map(|i| format!("task {i}").into_bytes()).collect();
    tasks[5] = b"crash".to_vec();
    tasks[12] = b"crash".to_vec();
    let run = run_pool(&python_worker(MOODY), pool_limits(1, 1), &tasks);
    for (i, task) in tasks.iter().enumerate() {
        let outcome = &run.outcomes[&(i as TaskKey)];
        if task == b"crash" {
            assert!(
                matches!(outcome, Outcome::Failed { code: "worker_lost", message } if message.contains("exit status 70")),
                "{outcome:?}"
            );
        } else {
            assert_eq!(outcome, &Outcome::Ok(task.clone()), "task {i}");
        }
    }
    assert_eq!(run.pids.len(), 3, "started, then restarted twice");
}

#[test]
fn a_worker_overrunning_a_deadline_is_killed_with_its_group() {
    let mut tasks: Vec<Vec<u8>> = (0..6).map(|i| format!("task {i}").into_bytes()).collect();
    tasks[2] = b"hang".to_vec();
    // Two workers: the others' tasks go to the one that does not hang
    // (a task's deadline runs from its submission, waiting included).
    let limits = PoolLimits {
        timeout: Duration::from_millis(1500),
        ..pool_limits(2, 1)
    };
    let start = Instant::now();
    let run = run_pool(&python_worker(MOODY), limits, &tasks);
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert!(
        matches!(&run.outcomes[&2], Outcome::Failed { code: "timeout", message } if message.contains("process group was stopped")),
        "{:?}",
        run.outcomes[&2]
    );
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(
            run.outcomes[&i],
            Outcome::Ok(tasks[i as usize].clone()),
            "task {i}"
        );
    }
    // run_pool checked that every worker it started, the hung one
    // included, is gone.
}

#[test]
fn workers_are_recycled_after_k_tasks() {
    let tasks: Vec<Vec<u8>> = (0..30).map(payload).collect();
    let limits = PoolLimits {
        recycle_after: Some(10),
        ..pool_limits(1, 2)
    };
    let run = run_pool(&python_example(), limits, &tasks);
    assert_echoed(&run, &tasks);
    assert_eq!(run.pids.len(), 3, "a new worker every 10 tasks");
}
