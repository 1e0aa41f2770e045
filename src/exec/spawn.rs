//! Starting a handler's child in isolation, signalling its process group,
//! and learning of its exit through a pidfd.
//!
//! Two ways to start it. A spec without resource limits or a user (the
//! common case) is started with `posix_spawn`, which does not copy the
//! agent's page tables (see the `posix` submodule). Otherwise with std's `Command`
//! (the fork path, because of `pre_exec`): the child needs code of ours
//! between fork and exec (`setrlimit`, moving the protocol socket to fd 3,
//! marking every other inherited descriptor close-on-exec) that
//! `posix_spawn` cannot run, and std already gives the rest: an empty
//! environment plus what is set, `setpgid(0, 0)`, the user and group (with
//! the supplementary groups dropped), the working directory, and an exec
//! error reported to the parent. The pre-exec code (which also resets the
//! signal mask and every signal's disposition) only makes
//! async-signal-safe calls (`sigaction`, `sigprocmask`, `setrlimit`,
//! `dup2`, `fcntl`, `close_range`). Either way the child gets the same:
//! its stdio as pipes, fd 3 in pool mode, no other descriptor, its own
//! process group, the spec's environment only, no signal blocked or
//! ignored.
//!
//! The leader is never reaped before the caller is done with its group:
//! [`Child::exit_status`] looks with `WNOWAIT`, so the pid and the process
//! group id stay reserved (a zombie keeps them) while the rest of the group
//! is signalled, and [`Child::reap`] ends it. A [`Child`] dropped unreaped
//! has its group killed and is reaped then.

#![allow(unsafe_code)] // sigaction, sigprocmask, fcntl, setrlimit, dup2, close_range, posix_spawn, pidfd_open, waitid and kill; each block has a SAFETY note.

mod posix;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{ExitStatus, Signal};
use crate::config::handlers::{HandlerDecl, HandlerMode, Rlimits};

/// The descriptor a `pool` worker speaks the handler protocol on.
pub const HANDLER_FD: RawFd = 3;
/// The variable that tells a `pool` worker its protocol descriptor.
pub const HANDLER_FD_VARIABLE: &str = "RINGWORKER_HANDLER_FD";

/// What to start, and how it is fenced in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpawnSpec {
    /// An absolute path (the config resolved it).
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The child's whole environment (it starts empty).
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    pub rlimits: Rlimits,
    /// `(uid, gid)` to run as.
    pub user: Option<(u32, u32)>,
    /// Give the child a socketpair end as fd 3 ([`HANDLER_FD`]).
    pub protocol_fd: bool,
}

impl SpawnSpec {
    /// Whether [`Child::spawn`] starts it with `posix_spawn` rather than by
    /// forking: no resource limits, no user, and a glibc that offers the
    /// file actions it needs (2.34 and later).
    pub fn uses_posix_spawn(&self) -> bool {
        posix::usable(self)
    }

    /// The spec of a declared handler, `pass_env` read from this process's
    /// environment.
    pub fn for_handler(decl: &HandlerDecl) -> SpawnSpec {
        Self::for_handler_with(decl, |name| std::env::var_os(name))
    }

    /// The spec of a declared handler, `pass_env` read through `lookup`:
    /// the listed variables that are set, then `env`, then (pool mode)
    /// [`HANDLER_FD_VARIABLE`].
    pub fn for_handler_with(
        decl: &HandlerDecl,
        lookup: impl Fn(&str) -> Option<OsString>,
    ) -> SpawnSpec {
        let mut env: Vec<(OsString, OsString)> = decl
            .pass_env
            .iter()
            .filter(|name| !decl.env.contains_key(*name))
            .filter_map(|name| Some((OsString::from(name), lookup(name)?)))
            .collect();
        env.extend(
            decl.env
                .iter()
                .map(|(name, value)| (name.into(), value.into())),
        );
        let protocol_fd = decl.mode.mode() == HandlerMode::Pool;
        if protocol_fd {
            env.push((HANDLER_FD_VARIABLE.into(), HANDLER_FD.to_string().into()));
        }
        SpawnSpec {
            program: decl.program.clone(),
            args: decl.args.iter().map(OsString::from).collect(),
            env,
            cwd: decl.cwd.clone(),
            rlimits: decl.rlimits,
            user: decl.user.as_ref().map(|user| (user.uid, user.gid)),
            protocol_fd,
        }
    }
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpawnError {
    #[error("cannot start {program}: {source}")]
    Start {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the handler protocol socket: {0}")]
    Socket(#[source] io::Error),
    #[error("cannot open a pidfd for child {pid}: {source}")]
    Pidfd {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot make a pipe to the child non-blocking: {0}")]
    NonBlocking(#[source] io::Error),
}

/// A started child: its pidfd, our ends of its pipes (non-blocking,
/// close-on-exec) and, in pool mode, of its protocol socket.
#[derive(Debug)]
pub struct Child {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// Its stdin; drop it to close the child's input.
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Our end of fd 3, in pool mode.
    pub protocol: Option<UnixStream>,
    reaped: bool,
}

fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_blocking_mode(fd, false)
}

fn set_blocking_mode(fd: BorrowedFd<'_>, blocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own (borrowed for the call).
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        let flags = if blocking {
            flags & !libc::O_NONBLOCK
        } else {
            flags | libc::O_NONBLOCK
        };
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child, between fork and exec: the signal state the
/// `posix_spawn` path gives, an empty mask and no signal ignored. std
/// resets `SIGPIPE` only, and the mask not at all: a mask or an ignored
/// signal would outlive exec. Async-signal-safe calls only.
fn reset_signals() -> io::Result<()> {
    // SAFETY: sigaction of each signal with a valid pointer to a local
    // (all-zero: no flags, an empty mask); sigemptyset fills in a local;
    // sigprocmask (the child has one thread) with valid pointers. All
    // async-signal-safe. A signal whose disposition cannot be set
    // (SIGKILL, SIGSTOP, glibc's internal ones) is skipped. Dispositions
    // first: no signal unblocked here reaches a handler of the agent's.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for signal in 1..=libc::SIGRTMAX() {
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the child, between fork and exec: async-signal-safe calls only.
fn prepare_child(rlimits: Rlimits, protocol: Option<RawFd>) -> io::Result<()> {
    reset_signals()?;
    let limits = [
        (libc::RLIMIT_AS, rlimits.address_space),
        (libc::RLIMIT_CPU, rlimits.cpu_seconds),
        (libc::RLIMIT_NOFILE, rlimits.open_files),
    ];
    for (resource, value) in limits {
        if let Some(value) = value {
            let limit = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit with a valid pointer to a local; async-signal-safe.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    let first_closed = match protocol {
        Some(fd) if fd == HANDLER_FD => {
            // Already fd 3: only its close-on-exec flag to clear.
            // SAFETY: F_SETFD on an open descriptor; async-signal-safe.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            HANDLER_FD + 1
        }
        Some(fd) => {
            // dup2 leaves the new descriptor without close-on-exec.
            // SAFETY: dup2 of an open descriptor (>= 3, so not a stdio one
            // std has just set up) onto 3; async-signal-safe.
            if unsafe { libc::dup2(fd, HANDLER_FD) } < 0 {
                return Err(io::Error::last_os_error());
            }
            HANDLER_FD + 1
        }
        None => HANDLER_FD,
    };
    // Everything else inherited (a descriptor opened without O_CLOEXEC by
    // any library of the agent) is closed by exec.
    // SAFETY: close_range only sets flags on descriptors; async-signal-safe.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first_closed as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked != 0 {
        // Kernels before 5.11: one fcntl per possible descriptor.
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit into a local; async-signal-safe.
        let top = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            limit.rlim_cur.min(1 << 20) as RawFd
        } else {
            4096
        };
        for fd in first_closed..top {
            // SAFETY: F_SETFD on a number that may not be open (EBADF is
            // ignored); async-signal-safe.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    Ok(())
}

/// A child just started, before its pidfd is opened.
struct Started {
    pid: libc::pid_t,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    protocol: Option<UnixStream>,
}

/// Start `spec` with std's `Command`: fork, then `prepare_child` and exec.
fn spawn_forked(spec: &SpawnSpec) -> Result<Started, SpawnError> {
    let pair = if spec.protocol_fd {
        let (ours, theirs) = UnixStream::pair().map_err(SpawnError::Socket)?;
        // Below 3 it would be overwritten by the child's stdio:
        // try_clone duplicates to the lowest free number >= 3.
        let theirs = if theirs.as_raw_fd() < HANDLER_FD {
            theirs.try_clone().map_err(SpawnError::Socket)?
        } else {
            theirs
        };
        Some((ours, theirs))
    } else {
        None
    };
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        command.current_dir(cwd);
    }
    if let Some((uid, gid)) = spec.user {
        command.uid(uid).gid(gid);
    }
    let rlimits = spec.rlimits;
    let protocol_raw = pair.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
    // SAFETY: the closure runs in the forked child and only calls
    // async-signal-safe functions (see `prepare_child`); it allocates
    // nothing and touches no lock.
    unsafe {
        command.pre_exec(move || prepare_child(rlimits, protocol_raw));
    }
    let mut child = command.spawn().map_err(|source| SpawnError::Start {
        program: spec.program.clone(),
        source,
    })?;
    // Ours is kept; the child's end is closed here, so the child's exit
    // is seen as end of file on ours.
    let protocol = pair.map(|(ours, _theirs)| ours);
    let started = Started {
        pid: child.id() as libc::pid_t,
        stdin: child.stdin.take().map(OwnedFd::from),
        stdout: child.stdout.take().map(OwnedFd::from),
        stderr: child.stderr.take().map(OwnedFd::from),
        protocol,
    };
    // The std handle is dropped: it neither kills nor waits, and the
    // child is reaped through its pidfd from here on.
    drop(child);
    Ok(started)
}

impl Child {
    /// Start `spec`: its own process group, the given environment only,
    /// stdin/stdout/stderr as pipes, fd 3 in pool mode, nothing else.
    /// With `posix_spawn` when [`SpawnSpec::uses_posix_spawn`], else by
    /// forking.
    pub fn spawn(spec: &SpawnSpec) -> Result<Child, SpawnError> {
        let started = if posix::usable(spec) {
            posix::spawn(spec)?
        } else {
            spawn_forked(spec)?
        };
        let Started {
            pid,
            stdin,
            stdout,
            stderr,
            protocol,
        } = started;
        // Blocking (no PIDFD_NONBLOCK): `reap` waits on it; polling it for
        // readability works either way.
        // SAFETY: pidfd_open with a pid that is ours and unreaped (it
        // cannot name another process); returns a new descriptor or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = if raw < 0 {
            let source = io::Error::last_os_error();
            kill_group(pid, Signal::Kill);
            let mut status = 0;
            // SAFETY: waitpid on our own unreaped child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err(SpawnError::Pidfd {
                pid: pid as u32,
                source,
            });
        } else {
            // SAFETY: a descriptor the kernel has just returned, owned by no one else.
            unsafe { OwnedFd::from_raw_fd(raw as RawFd) }
        };
        let mut spawned = Child {
            pid,
            pidfd,
            stdin,
            stdout,
            stderr,
            protocol,
            reaped: false,
        };
        let ours = [&spawned.stdin, &spawned.stdout, &spawned.stderr];
        for fd in ours.into_iter().flatten() {
            set_nonblocking(fd.as_fd()).map_err(SpawnError::NonBlocking)?;
        }
        if let Some(stream) = &mut spawned.protocol {
            stream
                .set_nonblocking(true)
                .map_err(SpawnError::NonBlocking)?;
        }
        Ok(spawned)
    }

    /// Put our ends of its pipes and socket back in blocking mode, for an
    /// io_uring loop: the ring waits for readiness itself, whereas on a
    /// non-blocking descriptor it would complete at once with `EAGAIN`.
    pub fn set_blocking(&self) -> io::Result<()> {
        let ours = [&self.stdin, &self.stdout, &self.stderr];
        for fd in ours.into_iter().flatten() {
            set_blocking_mode(fd.as_fd(), true)?;
        }
        if let Some(stream) = &self.protocol {
            stream.set_nonblocking(false)?;
        }
        Ok(())
    }

    /// Its process id, which is also its process group's id.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Its pidfd: readable once it has exited (poll it, or put it in a ring).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Send `signal` to its whole process group. A group with no member
    /// left is not an error.
    pub fn signal_group(&self, signal: Signal) {
        if !self.reaped {
            kill_group(self.pid, signal);
        }
    }

    /// How it ended, if it has, without reaping it (its pid and group id
    /// stay reserved until [`Child::reap`]).
    pub fn exit_status(&self) -> io::Result<Option<ExitStatus>> {
        self.wait(libc::WEXITED | libc::WNOHANG | libc::WNOWAIT)
    }

    /// Reap it, waiting for its exit if it has not exited yet (send
    /// [`Signal::Kill`] first to bound the wait).
    pub fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self
            .wait(libc::WEXITED)?
            .ok_or_else(|| io::Error::other("waitid returned without a child"))?;
        self.reaped = true;
        Ok(status)
    }

    fn wait(&self, options: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if self.reaped {
            return Err(io::Error::other("child already reaped"));
        }
        loop {
            // SAFETY: an all-zero siginfo_t is a valid value to be filled in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid on our pidfd with a valid pointer to a local.
            let rc = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    options,
                )
            };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed
            // under WNOHANG when nothing had exited: si_pid 0).
            let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
            if pid == 0 {
                return Ok(None);
            }
            return Ok(Some(match info.si_code {
                libc::CLD_EXITED => ExitStatus::Code(status),
                _ => ExitStatus::Signal(status),
            }));
        }
    }
}

fn kill_group(pgid: libc::pid_t, signal: Signal) {
    let signal = match signal {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    // SAFETY: kill(2) on our child's process group (a negative pid); the
    // group id cannot have been reused while the leader is unreaped.
    unsafe { libc::kill(-pgid, signal) };
}

impl Drop for Child {
    /// Kill the group and reap the leader: no member left running, no zombie.
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pid, Signal::Kill);
            let _ = self.reap();
        }
    }
}
