//! The driver's thread: one poll(2) over every child's pipes, fd 3 and
//! pidfd and the wake socket, carrying out what the [`Service`] asks.

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use rustc_hash::FxHashMap;

use super::super::service::{ChildId, HandlerStatus, Service, ServiceAction, Stream};
use super::super::{Child, ExitStatus, Signal};
use super::{Answer, Command, RouteOwner, Wake, READ_CHUNK};
use crate::config::handlers::HandlerSet;

/// Run the thread until [`Command::Stop`].
pub(super) fn run<R: RouteOwner + Copy + Eq + Debug>(
    set: &HandlerSet,
    max_waiting: usize,
    inbox: Receiver<Command<R>>,
    bell: UnixStream,
    wake: Arc<Wake>,
    reporter: Option<Reporter>,
) {
    Loop {
        service: Service::with_max_waiting(set, max_waiting, Instant::now()),
        procs: FxHashMap::default(),
        owners: HashMap::new(),
        inbox,
        bell,
        wake,
        stopping: false,
        buf: vec![0; READ_CHUNK],
        reporter,
    }
    .run()
}

/// A child the thread holds, with our ends of its descriptors.
#[derive(Debug)]
struct Proc {
    child: Child,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    protocol: Option<UnixStream>,
    /// Bytes for its input not yet written.
    out: Vec<u8>,
    out_at: usize,
    /// Close the input once `out` is written.
    close_input: bool,
    /// Whether the protocol socket's writing half is still open.
    protocol_writable: bool,
    exited: bool,
}

impl Proc {
    fn input(&self) -> Option<BorrowedFd<'_>> {
        match (&self.stdin, &self.protocol) {
            (Some(stdin), _) => Some(stdin.as_fd()),
            (None, Some(protocol)) if self.protocol_writable => Some(protocol.as_fd()),
            _ => None,
        }
    }

    fn close_input(&mut self) {
        self.out = Vec::new();
        self.out_at = 0;
        self.close_input = false;
        self.stdin = None;
        if let Some(protocol) = &self.protocol {
            if self.protocol_writable {
                let _ = protocol.shutdown(Shutdown::Write);
                self.protocol_writable = false;
            }
        }
    }
}

/// The thread's reports of every handler's state.
pub(super) struct Reporter {
    every: Duration,
    /// When the next report is due.
    next: Instant,
    report: Box<dyn FnMut(Vec<HandlerStatus>) + Send>,
}

impl Reporter {
    pub(super) fn new(every: Duration, report: Box<dyn FnMut(Vec<HandlerStatus>) + Send>) -> Self {
        Reporter {
            every,
            next: Instant::now(),
            report,
        }
    }
}

/// What one poll entry is about.
#[derive(Debug, Clone, Copy)]
enum Watch {
    Wake,
    Input(ChildId),
    Output(ChildId, Stream),
    Exit(ChildId),
}

struct Loop<R> {
    service: Service<R>,
    procs: FxHashMap<ChildId, Proc>,
    owners: HashMap<u32, Sender<Answer<R>>>,
    inbox: Receiver<Command<R>>,
    bell: UnixStream,
    wake: Arc<Wake>,
    stopping: bool,
    buf: Vec<u8>,
    reporter: Option<Reporter>,
}

impl<R: RouteOwner + Copy + Eq + Debug> Loop<R> {
    fn run(mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut watches: Vec<Watch> = Vec::new();
        loop {
            self.take_commands();
            let now = Instant::now();
            while let Some(action) = self.service.poll(now) {
                self.carry_out(action);
            }
            if self.stopping {
                break;
            }
            self.report_if_due(now);
            fds.clear();
            watches.clear();
            let mut watch = |fd: BorrowedFd<'_>, events: i16, what: Watch| {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events,
                    revents: 0,
                });
                watches.push(what);
            };
            watch(self.bell.as_fd(), libc::POLLIN, Watch::Wake);
            for (&id, proc) in &self.procs {
                if let Some(input) = proc.input().filter(|_| proc.out_at < proc.out.len()) {
                    watch(input, libc::POLLOUT, Watch::Input(id));
                }
                let outputs = [
                    (proc.protocol.as_ref().map(AsFd::as_fd), Stream::Protocol),
                    (proc.stdout.as_ref().map(AsFd::as_fd), Stream::Stdout),
                    (proc.stderr.as_ref().map(AsFd::as_fd), Stream::Stderr),
                ];
                for (fd, stream) in outputs {
                    if let Some(fd) = fd {
                        watch(fd, libc::POLLIN, Watch::Output(id, stream));
                    }
                }
                if !proc.exited {
                    watch(proc.child.pidfd(), libc::POLLIN, Watch::Exit(id));
                }
            }
            let next_report = self.reporter.as_ref().map(|r| r.next);
            let deadline = [self.service.next_deadline(), next_report]
                .into_iter()
                .flatten()
                .min();
            let timeout = deadline.map_or(-1, |deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                // Round up: waking early would only poll again.
                left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
            });
            if let Err(err) = poll(&mut fds, timeout) {
                if err.kind() != ErrorKind::Interrupted {
                    tracing::error!("poll on the handlers' descriptors failed: {err}");
                    break;
                }
                continue;
            }
            // Output before exits, so that what a child wrote before it
            // ended is seen first.
            for exits in [false, true] {
                for (fd, &what) in fds.iter().zip(&watches) {
                    if fd.revents != 0 && matches!(what, Watch::Exit(_)) == exits {
                        self.ready(what, fd.revents);
                    }
                }
            }
        }
        self.finish();
    }

    /// Report every handler's state if a report is due.
    fn report_if_due(&mut self, now: Instant) {
        if let Some(reporter) = self.reporter.as_mut().filter(|r| now >= r.next) {
            (reporter.report)(self.service.status());
            reporter.next = now + reporter.every;
        }
    }

    fn take_commands(&mut self) {
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Submit(route, job) => self.service.submit(route, job, Instant::now()),
                Command::Forget(route) => self.service.forget_route(route),
                Command::Register(owner, sender) => {
                    self.owners.insert(owner, sender);
                }
                Command::Unregister(owner) => {
                    self.owners.remove(&owner);
                }
                Command::Status(reply) => {
                    let _ = reply.send(self.service.status());
                }
                Command::Stop => self.stopping = true,
            }
        }
    }

    fn ready(&mut self, what: Watch, revents: i16) {
        let now = Instant::now();
        match what {
            Watch::Wake => {
                let mut drained = [0u8; 64];
                while matches!((&self.bell).read(&mut drained), Ok(n) if n > 0) {}
                // Cleared after the read, so that a ring from here on
                // writes again; the commands are taken after both (SeqCst
                // on both sides: a submitter that saw the flag set is
                // sure to have its command seen by the take below).
                self.wake.pending.store(false, Ordering::SeqCst);
                self.take_commands();
            }
            Watch::Input(child) => self.write_out(child, now),
            Watch::Output(child, stream) => {
                if revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_once(child, stream, now);
                }
            }
            Watch::Exit(child) => self.exited(child, now),
        }
    }

    fn carry_out(&mut self, action: ServiceAction<R>) {
        let now = Instant::now();
        match action {
            ServiceAction::Spawn { child, handler, .. } if !self.stopping => {
                let started = match self.service.spawn_spec(handler) {
                    Some(spec) => Child::spawn(spec).map_err(|err| err.to_string()),
                    None => Err(format!("no declared handler number {handler}")),
                };
                match started {
                    Ok(mut started) => {
                        // A worker's stdin is closed at once: its input is fd 3.
                        let stdin = started.stdin.take().map(File::from);
                        let proc = Proc {
                            stdin: stdin.filter(|_| started.protocol.is_none()),
                            stdout: started.stdout.take().map(File::from),
                            stderr: started.stderr.take().map(File::from),
                            protocol_writable: started.protocol.is_some(),
                            protocol: started.protocol.take(),
                            child: started,
                            out: Vec::new(),
                            out_at: 0,
                            close_input: false,
                            exited: false,
                        };
                        self.procs.insert(child, proc);
                        self.service.on_spawned(child, Instant::now());
                    }
                    Err(err) => self.service.on_spawn_failed(child, &err, now),
                }
            }
            ServiceAction::Spawn { .. } => {}
            ServiceAction::Write { child, bytes } => {
                if let Some(proc) = self.procs.get_mut(&child) {
                    if proc.out_at == proc.out.len() {
                        proc.out = bytes;
                        proc.out_at = 0;
                    } else {
                        proc.out.extend_from_slice(&bytes);
                    }
                    // Written at once where the pipe has room: no poll
                    // round for the common small task.
                    self.write_out(child, now);
                }
            }
            ServiceAction::CloseInput { child } => {
                if let Some(proc) = self.procs.get_mut(&child) {
                    if proc.out_at == proc.out.len() {
                        proc.close_input();
                    } else {
                        proc.close_input = true;
                    }
                }
            }
            ServiceAction::Signal { child, signal } => {
                if let Some(proc) = self.procs.get(&child) {
                    proc.child.signal_group(signal);
                }
            }
            ServiceAction::Release { child } => {
                if let Some(proc) = self.procs.remove(&child) {
                    release(proc);
                }
            }
            ServiceAction::Done {
                route,
                task,
                outcome,
            } => {
                if let Some(sender) = self.owners.get(&route.owner()) {
                    // A receiver dropped: its session is gone, and so is
                    // whoever wanted the answer.
                    let _ = sender.send(Answer {
                        route,
                        task,
                        outcome,
                    });
                }
            }
        }
    }

    fn write_out(&mut self, child: ChildId, now: Instant) {
        let Some(proc) = self.procs.get_mut(&child) else {
            return;
        };
        while proc.out_at < proc.out.len() {
            let pending = &proc.out[proc.out_at..];
            let written = match (&mut proc.stdin, &mut proc.protocol) {
                (Some(stdin), _) => stdin.write(pending),
                (None, Some(protocol)) if proc.protocol_writable => protocol.write(pending),
                _ => Err(io::Error::from(ErrorKind::BrokenPipe)),
            };
            match written {
                Ok(n) => {
                    proc.out_at += n;
                    self.service.on_written(child, n);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    proc.close_input();
                    self.service.on_input_broken(child, now);
                    return;
                }
            }
        }
        proc.out = Vec::new();
        proc.out_at = 0;
        if proc.close_input {
            proc.close_input();
        }
    }

    /// One read from `stream`; `true` when more may be there.
    fn read_once(&mut self, child: ChildId, stream: Stream, now: Instant) -> bool {
        let Some(proc) = self.procs.get_mut(&child) else {
            return false;
        };
        let read = match stream {
            Stream::Stdout => proc.stdout.as_mut().map(|f| f.read(&mut self.buf)),
            Stream::Stderr => proc.stderr.as_mut().map(|f| f.read(&mut self.buf)),
            Stream::Protocol => proc.protocol.as_mut().map(|s| s.read(&mut self.buf)),
        };
        match read {
            None => false,
            Some(Ok(n)) if n > 0 => {
                self.service.on_output(child, stream, &self.buf[..n], now);
                true
            }
            Some(Err(err)) if err.kind() == ErrorKind::WouldBlock => false,
            Some(Err(err)) if err.kind() == ErrorKind::Interrupted => true,
            Some(_) => {
                match stream {
                    Stream::Stdout => proc.stdout = None,
                    Stream::Stderr => proc.stderr = None,
                    Stream::Protocol => proc.protocol = None,
                }
                self.service.on_output_end(child, stream, now);
                false
            }
        }
    }

    fn exited(&mut self, child: ChildId, now: Instant) {
        let Some(proc) = self.procs.get_mut(&child) else {
            return;
        };
        let status = match proc.child.exit_status() {
            Ok(None) => return,
            Ok(Some(status)) => status,
            Err(err) => {
                tracing::warn!(
                    pid = proc.child.pid(),
                    "cannot learn how handler child {} ended: {err}",
                    proc.child.pid()
                );
                ExitStatus::Code(-1)
            }
        };
        proc.exited = true;
        // A worker's last answers are in its socket by now: read them
        // before its exit fails what it still holds.
        while self.read_once(child, Stream::Protocol, now) {}
        self.service.on_exit(child, status, now);
    }

    /// Stop: answer what is left, kill and reap every child.
    fn finish(&mut self) {
        self.service.abandon();
        let now = Instant::now();
        while let Some(action) = self.service.poll(now) {
            if let ServiceAction::Done { .. } = action {
                self.carry_out(action);
            }
        }
        for (_, proc) in self.procs.drain() {
            release(proc);
        }
    }
}

/// poll(2) on `fds` for at most `timeout` ms (-1: no limit).
#[allow(unsafe_code)] // The one libc::poll call; SAFETY below.
fn poll(fds: &mut [libc::pollfd], timeout: i32) -> io::Result<()> {
    // SAFETY: poll on a live, initialised slice of pollfds whose length is
    // given; the caller keeps the descriptors open for the call.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Kill what is left of the child's group, close its descriptors, reap it.
fn release(proc: Proc) {
    let Proc {
        mut child,
        stdin,
        stdout,
        stderr,
        protocol,
        ..
    } = proc;
    drop((stdin, stdout, stderr, protocol));
    child.signal_group(Signal::Kill);
    if let Err(err) = child.reap() {
        tracing::warn!(
            pid = child.pid(),
            "cannot reap handler child {}: {err}",
            child.pid()
        );
    }
}
