//! `UringRuntime`: completion-based I/O on Linux io_uring, one event loop per
//! thread, many sessions per loop.
//!
//! Built directly on the `io-uring` crate rather than tokio-uring: the engine
//! needs multishot receives into a provided-buffer ring (so idle sessions hold
//! no receive buffer), `SINGLE_ISSUER` + `DEFER_TASKRUN`, bounded cancellation
//! at shutdown and an error instead of a panic when io_uring is forbidden; in
//! tokio-uring 0.5 the first two do not exist, drop waits without bound for
//! outstanding operations, and ring setup failure panics.
//!
//! [`probe`] checks, before anything starts, that this kernel and process may
//! use io_uring with everything the engine relies on, and says why not.
#![allow(unsafe_code)] // io_uring submissions and the shared buffer ring; each block has a SAFETY note.

mod bufring;
mod event_loop;
mod resolver;
mod timers;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use io_uring::{cqueue, opcode, types, Probe};

use super::{AgentPlan, RunReport, RuntimeError, RuntimeKind, RuntimeMode, StopHandle};
use crate::stats::AgentStats;
use event_loop::balance::Balance;
use event_loop::{build_ring, EventLoop};

/// The io_uring engine.
#[derive(Debug)]
pub struct UringRuntime {
    plan: Arc<AgentPlan>,
    stats: Arc<AgentStats>,
    stop: StopHandle,
    loops: Vec<JoinHandle<crate::connection::drain::DrainTally>>,
    started: bool,
}

impl UringRuntime {
    /// A runtime for `plan`; fails with the reason when io_uring is unusable.
    pub fn new(plan: AgentPlan) -> Result<UringRuntime, RuntimeError> {
        probe().map_err(RuntimeError::UringUnavailable)?;
        let mut plan = plan;
        plan.session.runtime = RuntimeKind::Uring.as_str();
        let stats = Arc::new(AgentStats::with_handlers(
            plan.session.worker_id.clone(),
            RuntimeKind::Uring.as_str(),
            plan.sessions,
            plan.handlers.names(),
        ));
        let stop = StopHandle::new();
        let agent_stats = stats.clone();
        stop.on_stop(move || agent_stats.mark_stop_requested());
        Ok(UringRuntime {
            plan: Arc::new(plan),
            stats,
            stop,
            loops: Vec::new(),
            started: false,
        })
    }
}

impl RuntimeMode for UringRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Uring
    }

    fn start(&mut self) -> Result<(), RuntimeError> {
        if self.started {
            return Err(RuntimeError::AlreadyStarted);
        }
        self.started = true;
        let threads = self
            .plan
            .threads
            .clamp(1, self.plan.sessions.max(1) as usize);
        let mut wakes = Vec::new();
        for _ in 0..threads {
            let (wake_tx, wake_rx) = UnixStream::pair().map_err(RuntimeError::Spawn)?;
            wake_tx.set_nonblocking(true).map_err(RuntimeError::Spawn)?;
            wakes.push((wake_tx, wake_rx));
        }
        let doors = wakes
            .iter()
            .map(|(tx, _)| tx.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(RuntimeError::Spawn)?;
        // Each loop runs its share of the declared handlers' processes, and
        // queues as many of their jobs as its own sessions can have in
        // flight: sessions stay where they started, so that neither
        // outgrows what was set up for it.
        let mode = if self.plan.handlers.declared().handlers.is_empty() {
            self.plan.loop_balance
        } else {
            crate::runtime::LoopBalance::Off
        };
        let (balance, inboxes) = Balance::new(mode, doors, self.plan.sessions as usize);
        let balance = Arc::new(balance);
        for (thread, ((wake_tx, wake_rx), inbox)) in wakes.into_iter().zip(inboxes).enumerate() {
            let sessions: Vec<u32> = (0..self.plan.sessions)
                .filter(|index| *index as usize % threads == thread)
                .collect();
            // Loops that never run give up their sessions' count, so the
            // ones already running do not wait for them at the end.
            let unstarted = |from: usize| {
                (0..self.plan.sessions)
                    .filter(|index| *index as usize % threads >= from)
                    .count()
            };
            let late_tx = match wake_tx.try_clone() {
                Ok(tx) => tx,
                Err(err) => {
                    balance.abandon(unstarted(thread), 0);
                    return Err(RuntimeError::Spawn(err));
                }
            };
            let shared = balance.clone();
            self.stop.on_stop(move || {
                let _ = (&wake_tx).write(&[1]);
            });
            let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Result<(), String>>(1);
            let plan = self.plan.clone();
            let stats = self.stats.clone();
            let stop = self.stop.clone();
            let handle = std::thread::Builder::new()
                .name(format!("uring-{thread}"))
                .spawn(move || {
                    match EventLoop::new(
                        plan,
                        stats,
                        stop,
                        sessions,
                        (wake_rx, late_tx),
                        (thread, threads),
                        (shared, inbox),
                    ) {
                        Ok(event_loop) => {
                            let _ = ready_tx.send(Ok(()));
                            event_loop.run().unfinished
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err.to_string()));
                            crate::connection::drain::DrainTally::default()
                        }
                    }
                });
            let handle = match handle {
                Ok(handle) => handle,
                Err(err) => {
                    balance.abandon(unstarted(thread), 0);
                    self.stop.request_stop();
                    return Err(RuntimeError::Spawn(err));
                }
            };
            self.loops.push(handle);
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    balance.abandon(unstarted(thread), 0);
                    self.stop.request_stop();
                    return Err(RuntimeError::UringUnavailable(format!(
                        "event loop {thread}: {reason}"
                    )));
                }
                Err(_) => {
                    // It may still start, and then counts its own.
                    balance.abandon(unstarted(thread + 1), 0);
                    self.stop.request_stop();
                    return Err(RuntimeError::UringUnavailable(format!(
                        "event loop {thread} did not start"
                    )));
                }
            }
        }
        Ok(())
    }

    fn stats(&self) -> Arc<AgentStats> {
        self.stats.clone()
    }

    fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn wait(&mut self) -> RunReport {
        super::join_threads(self.loops.drain(..), &self.stop, "io_uring event loop")
    }
}

/// Whether this process may use io_uring with everything the engine needs:
/// ring setup with `SINGLE_ISSUER` and `DEFER_TASKRUN` (allowed by
/// `kernel.io_uring_disabled` and any seccomp profile), the opcodes it
/// submits, provided-buffer rings, and multishot receive (tested live on a
/// socket pair, since the opcode probe cannot see it). The error says what is
/// missing and why, in one line.
pub fn probe() -> Result<(), String> {
    let ring = build_ring().map_err(|err| describe_setup_error(&err))?;
    let mut supported = Probe::new();
    ring.submitter()
        .register_probe(&mut supported)
        .map_err(|err| format!("cannot query io_uring opcodes: {err}"))?;
    for (code, name) in [
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !supported.is_supported(code) {
            return Err(format!("the kernel lacks the io_uring {name} operation"));
        }
    }
    multishot_self_test(ring)
}

fn multishot_self_test(mut ring: io_uring::IoUring) -> Result<(), String> {
    let mut buffers = bufring::BufRing::new(&ring, 1, 2, 64).map_err(|err| {
        format!("provided buffer rings are unsupported (Linux 5.19+ needed): {err}")
    })?;
    let (a, b) = UnixStream::pair().map_err(|err| format!("cannot create a socket pair: {err}"))?;
    let entry = opcode::RecvMulti::new(types::Fd(std::os::fd::AsRawFd::as_raw_fd(&a)), 1)
        .build()
        .user_data(1);
    // SAFETY: the operation selects from `buffers`, which outlives it (we
    // cancel and reap below before dropping anything), and refers to `a`,
    // which is still open.
    unsafe {
        ring.submission()
            .push(&entry)
            .map_err(|_| "the submission queue is full".to_owned())?;
    }
    let _ = (&b).write(b"x");
    let ts = types::Timespec::new().sec(1);
    let args = types::SubmitArgs::new().timespec(&ts);
    let _ = ring.submitter().submit_with_args(1, &args);
    let first = ring.completion().next().map(|c| (c.result(), c.flags()));
    // Cancel the multishot and wait for its final completion before dropping.
    let cancel = opcode::AsyncCancel::new(1).build().user_data(2);
    // SAFETY: a cancel operation refers to no memory.
    let _ = unsafe { ring.submission().push(&cancel) };
    let mut finished = first.is_some_and(|(_, flags)| !cqueue::more(flags));
    for _ in 0..20 {
        if finished {
            break;
        }
        let _ = ring.submitter().submit_with_args(1, &args);
        for completion in ring.completion() {
            if completion.user_data() == 1 && !cqueue::more(completion.flags()) {
                finished = true;
            }
        }
    }
    if finished {
        buffers.unregister(&ring);
    } else {
        buffers.leak();
        std::mem::forget(a);
        return Err("a multishot receive did not finish after cancellation".to_owned());
    }
    match first {
        Some((1, flags)) if cqueue::more(flags) && cqueue::buffer_select(flags).is_some() => Ok(()),
        Some((result, _)) if result < 0 => Err(format!(
            "multishot receive is unsupported (Linux 6.0+ needed): {}",
            std::io::Error::from_raw_os_error(-result)
        )),
        Some(_) => Err("multishot receive is unsupported (Linux 6.0+ needed)".to_owned()),
        None => Err("a multishot receive self-test got no completion within 1 s".to_owned()),
    }
}

fn describe_setup_error(err: &std::io::Error) -> String {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .map(|s| s.trim().to_owned());
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => match disabled.as_deref() {
            Some(value) if value != "0" => format!(
                "io_uring_setup refused ({err}): sysctl kernel.io_uring_disabled = {value}"
            ),
            _ => format!("io_uring_setup refused ({err}): a seccomp profile or security policy blocks io_uring"),
        },
        Some(libc::ENOSYS) => format!("io_uring_setup is not available ({err}): the kernel has no io_uring or a seccomp profile hides it"),
        Some(libc::EINVAL) => format!(
            "io_uring_setup rejected the engine's flags ({err}): SINGLE_ISSUER and DEFER_TASKRUN need Linux 6.1+"
        ),
        Some(libc::ENOMEM) => format!("io_uring_setup failed ({err}): the locked-memory limit (ulimit -l) is too low"),
        _ => format!("io_uring_setup failed: {err}"),
    }
}
