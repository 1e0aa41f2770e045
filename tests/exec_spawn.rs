//! Children of declared handlers, started with `ringworker::exec::spawn`:
//! what they inherit (environment, descriptors, signal state), their
//! process group, their limits, user and directory, and that killing and
//! reaping leave nothing behind. What a child gets is checked both ways it
//! can be started: with `posix_spawn` and by forking.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use ringworker::config::handlers::{HandlerDecl, HandlerSet, Surroundings};
use ringworker::config::parse_file;
use ringworker::exec::{Child, ExitStatus, Signal, SpawnError, SpawnSpec};

const LIMIT: Duration = Duration::from_secs(20);

/// The one handler of a `[handlers.t]` table's keys.
fn declare(keys: &str) -> HandlerDecl {
    declare_as(keys, &Surroundings::current())
}

fn declare_as(keys: &str, around: &Surroundings) -> HandlerDecl {
    let settings = parse_file(&format!("[handlers.t]\n{keys}\n")).expect("valid table");
    let set = HandlerSet::resolve_in(&settings.handlers, 1 << 20, around).expect("valid handler");
    set.handlers.into_iter().next().expect("one handler")
}

/// Wait until `fd` is readable (or hung up), at most `LIMIT`.
fn wait_readable(fd: i32) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd that lives across the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, LIMIT.as_millis() as i32) };
    assert_eq!(ready, 1, "fd {fd} not readable within {LIMIT:?}");
}

/// Everything the child writes on stdout, until end of file.
fn read_to_end(fd: OwnedFd) -> Vec<u8> {
    let raw = fd.as_raw_fd();
    let mut file = File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < LIMIT, "no end of file on stdout");
        match file.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => wait_readable(raw),
            Err(err) => panic!("read: {err}"),
        }
    }
}

/// Run `spec` to its end: its stdout and its status; reaped.
fn run(spec: &SpawnSpec) -> (String, ExitStatus) {
    let mut child = Child::spawn(spec).expect("spawn");
    drop(child.stdin.take());
    let out = read_to_end(child.stdout.take().expect("stdout"));
    let status = child.reap().expect("reap");
    (String::from_utf8(out).expect("utf-8 output"), status)
}

/// Whether process `pid` is gone: no entry, or a zombie of another parent
/// (reaped by init, not by us).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32) {
    let start = Instant::now();
    while !gone(pid) {
        assert!(start.elapsed() < LIMIT, "process {pid} still running");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `spec` as [`Child::spawn`] would start it by forking: with a resource
/// limit that changes nothing (an infinite CPU time).
fn forked(spec: &SpawnSpec) -> SpawnSpec {
    let mut spec = spec.clone();
    spec.rlimits.cpu_seconds = Some(libc::RLIM_INFINITY);
    assert!(!spec.uses_posix_spawn());
    spec
}

/// `spec` as started with `posix_spawn` (it must qualify), then by forking.
fn both_ways(spec: &SpawnSpec) -> [SpawnSpec; 2] {
    assert!(spec.uses_posix_spawn(), "{spec:?}");
    [spec.clone(), forked(spec)]
}

#[test]
fn specs_without_limits_or_user_are_started_with_posix_spawn() {
    let plain = SpawnSpec {
        program: "/bin/true".into(),
        ..SpawnSpec::default()
    };
    // This glibc (2.34 or later) offers closefrom and chdir file actions.
    assert!(plain.uses_posix_spawn());
    let pool = declare("mode = \"pool\"\ncommand = [\"true\"]\ncwd = \"/tmp\"");
    assert!(SpawnSpec::for_handler(&pool).uses_posix_spawn());
    let limited = declare("mode = \"exec\"\ncommand = [\"true\"]\nopen_files = 64");
    assert!(!SpawnSpec::for_handler(&limited).uses_posix_spawn());
    let as_nobody = SpawnSpec {
        user: Some((65534, 65534)),
        ..plain.clone()
    };
    assert!(!as_nobody.uses_posix_spawn());
}

#[test]
fn the_environment_is_empty_but_for_the_allowlist_and_never_holds_the_token() {
    std::env::set_var("RINGWORKER_TOKEN_FILE", "/run/secret/token");
    std::env::set_var("EXEC_SPAWN_NOT_LISTED", "leak");
    std::env::set_var("EXEC_SPAWN_LISTED", "passed");
    let decl = declare(
        "mode = \"exec\"\ncommand = [\"env\"]\nenv = { GREETING = \"hi there\" }\n\
         pass_env = [\"EXEC_SPAWN_LISTED\", \"EXEC_SPAWN_UNSET\"]",
    );
    for spec in both_ways(&SpawnSpec::for_handler(&decl)) {
        let (out, status) = run(&spec);
        assert_eq!(status, ExitStatus::Code(0));
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        assert_eq!(lines, ["EXEC_SPAWN_LISTED=passed", "GREETING=hi there"]);
        assert!(!out.contains("token"), "{out}");
    }
    // Pool mode adds the protocol descriptor's variable, nothing else.
    let decl = declare("mode = \"pool\"\ncommand = [\"env\"]");
    for spec in both_ways(&SpawnSpec::for_handler(&decl)) {
        let (out, _) = run(&spec);
        assert_eq!(out, "RINGWORKER_HANDLER_FD=3\n");
    }
    // Exactly as given: order, an empty value, a value with `=` in it.
    let spec = SpawnSpec {
        program: "/usr/bin/env".into(),
        env: vec![
            ("B".into(), "2".into()),
            ("A".into(), "".into()),
            ("C".into(), "x=y".into()),
        ],
        ..SpawnSpec::default()
    };
    for spec in both_ways(&spec) {
        let (out, status) = run(&spec);
        assert_eq!(status, ExitStatus::Code(0));
        let mut lines: Vec<&str> = out.lines().collect();
        // std's Command sorts the variables.
        lines.sort_unstable();
        assert_eq!(lines, ["A=", "B=2", "C=x=y"]);
    }
}

/// The descriptors open in a `sh` (listed by an `ls` child of it), each
/// way of starting it.
fn open_fds(protocol_fd: bool) -> Vec<Vec<String>> {
    let spec = SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "ls /proc/$$/fd; true".into()],
        protocol_fd,
        ..SpawnSpec::default()
    };
    both_ways(&spec)
        .iter()
        .map(|spec| {
            let (out, status) = run(spec);
            assert_eq!(status, ExitStatus::Code(0), "{out}");
            out.split_whitespace().map(str::to_owned).collect()
        })
        .collect()
}

#[test]
fn a_child_has_only_its_stdio_and_in_pool_mode_fd_3() {
    // A descriptor of the agent's without close-on-exec, as a careless
    // library might leave one.
    // SAFETY: dup of stderr; the new descriptor is owned below.
    let leaked = unsafe { libc::dup(2) };
    assert!(leaked > 2);
    assert_eq!(open_fds(false), [["0", "1", "2"], ["0", "1", "2"]]);
    assert_eq!(open_fds(true), [["0", "1", "2", "3"], ["0", "1", "2", "3"]]);
    // SAFETY: closing the descriptor dup'd above, used by nothing else.
    unsafe { libc::close(leaked) };
}

#[test]
fn fd_3_of_a_pool_child_is_its_end_of_the_protocol_socket() {
    let spec = SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "echo over fd 3 >&3".into()],
        protocol_fd: true,
        ..SpawnSpec::default()
    };
    for spec in both_ways(&spec) {
        let mut child = Child::spawn(&spec).expect("spawn");
        let protocol = child.protocol.take().expect("our end of fd 3");
        let said = read_to_end(OwnedFd::from(protocol));
        assert_eq!(said, b"over fd 3\n");
        assert_eq!(child.reap().unwrap(), ExitStatus::Code(0));
    }
}

/// A `0x`-less hexadecimal signal mask line of /proc/PID/status.
fn signal_mask(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.trim(), 16).expect("a hexadecimal mask")
}

#[test]
fn a_child_starts_with_no_signal_blocked_or_ignored() {
    let pipe_bit = 1u64 << (libc::SIGPIPE - 1);
    let ours = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    // Rust's runtime ignores SIGPIPE in this process.
    assert_ne!(signal_mask(&ours, "SigIgn:") & pipe_bit, 0, "{ours}");
    // SIGUSR2 ignored in this process (nothing here sends it, and the
    // children of other tests get the default back as well) and SIGUSR1
    // blocked on this thread, the one that spawns.
    // SAFETY: signal() with SIG_IGN; sigset_t filled in by
    // sigemptyset/sigaddset; pthread_sigmask of this thread with valid
    // pointers to locals.
    let (old_mask, old_usr2) = unsafe {
        let old_usr2 = libc::signal(libc::SIGUSR2, libc::SIG_IGN);
        let mut block: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut block);
        libc::sigaddset(&mut block, libc::SIGUSR1);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &block, &mut old), 0);
        (old, old_usr2)
    };
    let changed = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let usr1_bit = 1u64 << (libc::SIGUSR1 - 1);
    let usr2_bit = 1u64 << (libc::SIGUSR2 - 1);
    assert_eq!(
        signal_mask(&changed, "SigBlk:") & usr1_bit,
        usr1_bit,
        "{changed}"
    );
    assert_eq!(
        signal_mask(&changed, "SigIgn:") & usr2_bit,
        usr2_bit,
        "{changed}"
    );
    let spec = SpawnSpec {
        program: "/bin/cat".into(),
        args: vec!["/proc/self/status".into()],
        ..SpawnSpec::default()
    };
    let outs: Vec<(String, ExitStatus)> = both_ways(&spec).iter().map(run).collect();
    // SAFETY: restores what was saved above.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old_mask, std::ptr::null_mut());
        libc::signal(libc::SIGUSR2, old_usr2);
    }
    // The standard signals (1 to 31); glibc keeps its internal 32 and 33
    // ignored in a posix_spawn child.
    let standard = (1u64 << 31) - 1;
    for (status, exit) in outs {
        assert_eq!(exit, ExitStatus::Code(0));
        assert_eq!(signal_mask(&status, "SigBlk:"), 0, "{status}");
        assert_eq!(signal_mask(&status, "SigIgn:") & standard, 0, "{status}");
    }
}

#[test]
fn a_child_leads_its_own_process_group_in_its_directory() {
    let spec = SpawnSpec {
        program: "/bin/cat".into(),
        args: vec!["/proc/self/stat".into()],
        cwd: Some("/tmp".into()),
        ..SpawnSpec::default()
    };
    for spec in both_ways(&spec) {
        let mut child = Child::spawn(&spec).expect("spawn");
        let stat = String::from_utf8(read_to_end(child.stdout.take().unwrap())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        // After the command name: state, ppid, pgrp.
        assert_eq!(fields[2], child.pid().to_string(), "{stat}");
        // SAFETY: getpgrp has no preconditions.
        let ours = unsafe { libc::getpgrp() };
        assert_ne!(fields[2], ours.to_string());
        child.reap().unwrap();
    }
    let decl = declare("mode = \"exec\"\ncommand = [\"pwd\"]\ncwd = \"/tmp\"");
    for spec in both_ways(&SpawnSpec::for_handler(&decl)) {
        assert_eq!(run(&spec).0, "/tmp\n");
    }
    // A directory that is not there: the child does not start.
    let spec = SpawnSpec {
        cwd: Some("/nonexistent/directory".into()),
        ..SpawnSpec::for_handler(&decl)
    };
    for spec in both_ways(&spec) {
        let err = Child::spawn(&spec).unwrap_err();
        match err {
            SpawnError::Start { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn rlimits_are_applied() {
    let decl = declare(
        "mode = \"exec\"\ncommand = [\"cat\", \"/proc/self/limits\"]\n\
         open_files = 64\ncpu_seconds = 7\naddress_space = \"1GiB\"",
    );
    let (out, _) = run(&SpawnSpec::for_handler(&decl));
    let limit = |name: &str| {
        let line = out.lines().find(|line| line.starts_with(name)).unwrap();
        line.split_whitespace().rev().nth(2).unwrap().to_owned()
    };
    // Soft and hard limits: the two columns before the unit.
    assert_eq!(limit("Max open files"), "64", "{out}");
    assert_eq!(limit("Max cpu time"), "7", "{out}");
    assert_eq!(
        limit("Max address space"),
        (1u64 << 30).to_string(),
        "{out}"
    );
}

#[test]
fn the_user_is_set_for_a_root_agent_and_refused_otherwise() {
    let around = Surroundings::current();
    let keys = "mode = \"exec\"\ncommand = [\"id\", \"-u\"]\nuser = \"65534:65534\"";
    if around.euid == Some(0) {
        let decl = declare_as(keys, &around);
        assert_eq!(run(&SpawnSpec::for_handler(&decl)).0, "65534\n");
    } else {
        let settings = parse_file(&format!("[handlers.t]\n{keys}\n")).unwrap();
        let err = HandlerSet::resolve_in(&settings.handlers, 1 << 20, &around).unwrap_err();
        assert!(
            err.to_string()
                .contains("only for an agent started as root"),
            "{err}"
        );
    }
}

#[test]
fn killing_the_group_takes_the_grandchild_too() {
    // sh starts a grandchild, says its pid, and waits.
    let mut child = Child::spawn(&SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "sleep 300 & echo $!; wait".into()],
        ..SpawnSpec::default()
    })
    .expect("spawn");
    let mut stdout = File::from(child.stdout.take().unwrap());
    wait_readable(stdout.as_raw_fd());
    let mut line = [0u8; 32];
    let n = stdout.read(&mut line).unwrap();
    let grandchild: u32 = std::str::from_utf8(&line[..n])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!gone(grandchild));
    assert_eq!(child.exit_status().unwrap(), None, "still running");
    child.signal_group(Signal::Term);
    wait_readable(child.pidfd().as_raw_fd());
    assert_eq!(
        child.exit_status().unwrap(),
        Some(ExitStatus::Signal(libc::SIGTERM))
    );
    assert_eq!(child.reap().unwrap(), ExitStatus::Signal(libc::SIGTERM));
    wait_gone(grandchild);
    assert!(gone(child.pid()));
}

#[test]
fn sigkill_ends_a_group_that_ignores_sigterm() {
    let mut child = Child::spawn(&SpawnSpec {
        program: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "trap '' TERM; sleep 300 & echo $!; wait".into(),
        ],
        ..SpawnSpec::default()
    })
    .expect("spawn");
    let mut stdout = File::from(child.stdout.take().unwrap());
    wait_readable(stdout.as_raw_fd());
    let mut line = [0u8; 32];
    let n = stdout.read(&mut line).unwrap();
    let grandchild: u32 = std::str::from_utf8(&line[..n])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    child.signal_group(Signal::Term);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(child.exit_status().unwrap(), None, "TERM is ignored");
    assert!(!gone(grandchild));
    child.signal_group(Signal::Kill);
    assert_eq!(child.reap().unwrap(), ExitStatus::Signal(libc::SIGKILL));
    wait_gone(grandchild);
}

#[test]
fn the_exit_is_seen_on_the_pidfd_and_the_child_stays_a_zombie_until_reaped() {
    let mut child = Child::spawn(&SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "exit 3".into()],
        ..SpawnSpec::default()
    })
    .expect("spawn");
    let pid = child.pid();
    wait_readable(child.pidfd().as_raw_fd());
    assert_eq!(child.exit_status().unwrap(), Some(ExitStatus::Code(3)));
    assert_eq!(
        child.exit_status().unwrap(),
        Some(ExitStatus::Code(3)),
        "not reaped by a look"
    );
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the pid stays reserved"
    );
    assert_eq!(child.reap().unwrap(), ExitStatus::Code(3));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "no zombie left"
    );
    drop(child);
}

#[test]
fn a_child_dropped_unreaped_is_killed_and_reaped() {
    let child = Child::spawn(&SpawnSpec {
        program: "/bin/sleep".into(),
        args: vec!["300".into()],
        ..SpawnSpec::default()
    })
    .expect("spawn");
    let pid = child.pid();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(child);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "no zombie, no orphan"
    );
}

#[test]
fn a_program_that_cannot_start_is_a_spawn_error() {
    let missing = SpawnSpec {
        program: "/nonexistent/program".into(),
        ..SpawnSpec::default()
    };
    for spec in both_ways(&missing) {
        let err = Child::spawn(&spec).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot start /nonexistent/program: "),
            "{err}"
        );
        match err {
            SpawnError::Start { source, .. } => {
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT), "{source}")
            }
            other => panic!("{other:?}"),
        }
    }
    // A file without execute permission (refused even to root) and a
    // directory.
    let dir = std::env::temp_dir().join(format!("exec-spawn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\nexit 0\n").unwrap();
    for program in [plain.clone(), dir.clone()] {
        let spec = SpawnSpec {
            program: program.clone(),
            ..SpawnSpec::default()
        };
        for spec in both_ways(&spec) {
            match Child::spawn(&spec).unwrap_err() {
                SpawnError::Start { source, .. } => {
                    assert_eq!(
                        source.raw_os_error(),
                        Some(libc::EACCES),
                        "{program:?}: {source}"
                    )
                }
                other => panic!("{other:?}"),
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // A NUL byte cannot be passed to exec.
    let spec = SpawnSpec {
        program: "/bin/true".into(),
        args: vec!["a\0b".into()],
        ..SpawnSpec::default()
    };
    for spec in both_ways(&spec) {
        match Child::spawn(&spec).unwrap_err() {
            SpawnError::Start { source, .. } => {
                assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput, "{source}")
            }
            other => panic!("{other:?}"),
        }
    }
}
