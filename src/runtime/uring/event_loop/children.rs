//! Declared handlers on the ring: the loop's [`Service`] decides (spawn,
//! write, close input, signal, release, answer) and this carries it out.
//! Every byte to or from a child is a ring operation like a socket's: one
//! read in flight per output stream (stdout, stderr, a pool worker's fd 3),
//! one write in flight on its input, and a poll on its pidfd for its exit.
//! No thread per child and no blocking call on the loop thread, except the
//! fork and exec of a spawn itself and the reap of a child that has
//! already exited.
//!
//! It must never free or move memory an operation may still use: a read
//! buffer lives as long as its child's entry, and bytes being written are
//! never appended to (more output queues behind them). A child's entry is
//! dropped, which closes its descriptors and reaps it, only once none of its
//! operations is outstanding; its number is reused only then, so a
//! completion always finds the entry it was submitted for.

use rustc_hash::FxHashMap;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::{EventLoop, Op};
use crate::config::handlers::{HandlerSet, ModeSettings};
use crate::exec::{Child, ChildId, ExitStatus, Service, ServiceAction, Stream};

/// Whom a declared handler's answer goes to: the loop's slot and the
/// connection generation that took the task.
pub(super) type Route = (u32, u32);

/// Bytes read from a child's stdout or fd 3 at a time.
const OUTPUT_CHUNK: usize = 64 * 1024;
/// Bytes read from a child's stderr at a time (only a capped start of it,
/// or rate-limited log lines, is kept).
const STDERR_CHUNK: usize = 4 * 1024;
/// How long a pool worker's exit waits for the rest of its fd 3 to be read
/// (its last answers), when a process it left behind holds the socket open.
const PROTOCOL_LINGER: Duration = Duration::from_millis(200);

/// The children of one loop and the service that runs them.
pub(super) struct Children {
    pub(super) service: Service<Route>,
    procs: Vec<Option<Proc>>,
    free: Vec<u32>,
    ids: FxHashMap<ChildId, u32>,
    /// Children that exited while fd 3 still had to be read to its end.
    lingering: usize,
    /// When `/status` was last given the handlers' states.
    published: Option<Instant>,
}

/// One output stream being read.
struct Pipe {
    fd: Option<RawFdOwner>,
    buf: Box<[u8]>,
    reading: bool,
}

/// A descriptor read by the ring: a pipe end, or fd 3's socket.
enum RawFdOwner {
    Pipe(OwnedFd),
    Socket(UnixStream),
}

impl RawFdOwner {
    fn raw(&self) -> RawFd {
        match self {
            RawFdOwner::Pipe(fd) => fd.as_raw_fd(),
            RawFdOwner::Socket(s) => s.as_raw_fd(),
        }
    }
}

/// A child the loop holds.
struct Proc {
    id: ChildId,
    child: Child,
    /// An `exec` child's stdin (a worker's input is `protocol`).
    stdin: Option<OwnedFd>,
    /// A pool worker's fd 3, written here and read through `outputs[2]`.
    protocol: Option<UnixStream>,
    protocol_writable: bool,
    /// stdout, stderr, fd 3.
    outputs: [Pipe; 3],
    /// The bytes of the write in flight (empty: none) and how much of
    /// them is written; output asked for meanwhile waits in `queued`.
    writing: Vec<u8>,
    written: usize,
    queued: Vec<u8>,
    /// Close the input once everything queued is written.
    close_input: bool,
    /// The poll on its pidfd is in flight.
    watching_exit: bool,
    /// It exited, and fd 3 is being read to its end before the service
    /// hears of it.
    exit: Option<(ExitStatus, Instant)>,
    released: bool,
    /// Operations submitted for it and not yet completed.
    inflight: u32,
}

const STREAMS: [Stream; 3] = [Stream::Stdout, Stream::Stderr, Stream::Protocol];

fn stream_op(stream: Stream) -> Op {
    match stream {
        Stream::Stdout => Op::ChildStdout,
        Stream::Stderr => Op::ChildStderr,
        Stream::Protocol => Op::ChildProtocol,
    }
}

impl Proc {
    fn input_fd(&self) -> Option<RawFd> {
        match (&self.stdin, &self.protocol) {
            (Some(stdin), _) => Some(stdin.as_raw_fd()),
            (None, Some(protocol)) if self.protocol_writable => Some(protocol.as_raw_fd()),
            _ => None,
        }
    }

    fn shut_input(&mut self) {
        self.close_input = false;
        self.queued = Vec::new();
        self.stdin = None;
        if let Some(protocol) = &self.protocol {
            if self.protocol_writable {
                let _ = protocol.shutdown(Shutdown::Write);
                self.protocol_writable = false;
            }
        }
    }

    /// fd 3 is still to be read to its end.
    fn protocol_open(&self) -> bool {
        self.outputs[2].fd.is_some()
    }
}

/// The share of `set` that one of `loops` event loops runs: each `pool`
/// handler's processes and each `exec` handler's concurrency are split
/// over the loops (loop `index` takes one more of the remainder), at least
/// one per loop, because each loop's sessions are answered by its own
/// children.
pub(crate) fn loop_share(set: &HandlerSet, index: usize, loops: usize) -> HandlerSet {
    let loops = loops.max(1) as u32;
    let split = |n: u32| (n / loops + u32::from((index as u32) < n % loops)).max(1);
    let mut share = set.clone();
    for decl in &mut share.handlers {
        match &mut decl.mode {
            ModeSettings::Exec { concurrency } => *concurrency = split(*concurrency),
            ModeSettings::Pool { processes, .. } => *processes = split(*processes),
        }
    }
    share
}

impl Children {
    pub(super) fn new(set: &HandlerSet, max_waiting: usize, now: Instant) -> Children {
        Children {
            service: Service::with_max_waiting(set, max_waiting, now),
            procs: Vec::new(),
            free: Vec::new(),
            ids: FxHashMap::default(),
            lingering: 0,
            published: None,
        }
    }

    /// Operations still outstanding on any child.
    pub(super) fn busy(&self) -> bool {
        self.procs.iter().flatten().any(|p| p.inflight > 0)
    }

    /// The next time the children need the loop without an event.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let linger = if self.lingering > 0 {
            self.procs
                .iter()
                .flatten()
                .filter_map(|p| p.exit.map(|(_, at)| at))
                .min()
        } else {
            None
        };
        match (self.service.next_deadline(), linger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl EventLoop {
    /// Carry out everything the service asks at `now`, then hand it the
    /// exits whose linger is over and publish its state once a beat.
    pub(super) fn drive_children(&mut self, now: Instant) {
        let Some(children) = self.children.as_mut() else {
            return;
        };
        if children.lingering > 0 {
            let over: Vec<u32> = children
                .procs
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let p = p.as_ref()?;
                    p.exit.filter(|&(_, at)| at <= now).map(|_| i as u32)
                })
                .collect();
            for index in over {
                self.hand_over_exit(index, now);
            }
        }
        while let Some(action) = self.children.as_mut().and_then(|c| c.service.poll(now)) {
            self.carry_out(action, now);
        }
        let Some(children) = self.children.as_mut() else {
            return;
        };
        if children
            .published
            .is_none_or(|at| now.saturating_duration_since(at) >= crate::stats::LOOP_BEAT_INTERVAL)
        {
            children.published = Some(now);
            self.agent
                .publish_handlers(self.part, children.service.status());
        }
    }

    /// A connection of `slot` closed: its children's answers are not
    /// wanted any more.
    pub(super) fn forget_route(&mut self, slot: u32, generation: u32) {
        if let Some(children) = self.children.as_mut() {
            children.service.forget_route((slot, generation));
        }
    }

    /// A task of a declared handler, from the connection of `slot`.
    pub(super) fn run_job(&mut self, route: Route, job: crate::handlers::Job, now: Instant) {
        match self.children.as_mut() {
            Some(children) => children.service.submit(route, job, now),
            None => {
                let s = &mut self.slots[route.0 as usize];
                s.conn
                    .on_job_done(route.1, job.task, crate::runtime::no_runner(), now);
            }
        }
    }

    fn carry_out(&mut self, action: ServiceAction<Route>, now: Instant) {
        match action {
            ServiceAction::Spawn { child, handler, .. } => self.spawn_child(child, handler, now),
            ServiceAction::Write { child, bytes } => {
                if let Some(index) = self.child_index(child) {
                    let p = self.proc_mut(index);
                    if p.writing.is_empty() {
                        if p.writing.capacity() >= bytes.len() {
                            p.writing.extend_from_slice(&bytes);
                        } else {
                            p.writing = bytes;
                        }
                        p.written = 0;
                        self.submit_child_write(index);
                    } else {
                        p.queued.extend_from_slice(&bytes);
                    }
                }
            }
            ServiceAction::CloseInput { child } => {
                if let Some(index) = self.child_index(child) {
                    let p = self.proc_mut(index);
                    if p.writing.is_empty() {
                        p.shut_input();
                    } else {
                        p.close_input = true;
                    }
                }
            }
            ServiceAction::Signal { child, signal } => {
                if let Some(index) = self.child_index(child) {
                    self.proc_mut(index).child.signal_group(signal);
                }
            }
            ServiceAction::Release { child } => {
                if let Some(index) = self.child_index(child) {
                    self.release_child(index);
                }
            }
            ServiceAction::Done {
                route: (slot, generation),
                task,
                outcome,
            } => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    s.conn.on_job_done(generation, task, outcome, now);
                    self.mark_dirty(slot);
                }
            }
        }
    }

    fn child_index(&self, child: ChildId) -> Option<u32> {
        self.children.as_ref()?.ids.get(&child).copied()
    }

    fn proc_mut(&mut self, index: u32) -> &mut Proc {
        self.children.as_mut().expect("children exist").procs[index as usize]
            .as_mut()
            .expect("a child's entry lives until its operations end")
    }

    fn spawn_child(&mut self, id: ChildId, handler: usize, now: Instant) {
        let Some(children) = self.children.as_mut() else {
            return;
        };
        let started = match children.service.spawn_spec(handler) {
            Some(spec) => Child::spawn(spec).map_err(|err| err.to_string()),
            None => Err(format!("no declared handler number {handler}")),
        }
        .and_then(|child| match child.set_blocking() {
            Ok(()) => Ok(child),
            Err(err) => Err(format!("cannot set up the child's pipes: {err}")),
        });
        let mut child = match started {
            Ok(child) => child,
            Err(err) => {
                children.service.on_spawn_failed(id, &err, now);
                return;
            }
        };
        let protocol = child.protocol.take();
        // A worker's input is fd 3: its stdin is closed at once.
        let stdin = child.stdin.take().filter(|_| protocol.is_none());
        let reader = match protocol.as_ref().map(UnixStream::try_clone) {
            Some(Ok(reader)) => Some(RawFdOwner::Socket(reader)),
            Some(Err(err)) => {
                children
                    .service
                    .on_spawn_failed(id, &format!("cannot duplicate fd 3: {err}"), now);
                return;
            }
            None => None,
        };
        let pipe = |fd: Option<RawFdOwner>, len: usize| Pipe {
            buf: vec![0; if fd.is_some() { len } else { 0 }].into_boxed_slice(),
            fd,
            reading: false,
        };
        let outputs = [
            pipe(child.stdout.take().map(RawFdOwner::Pipe), OUTPUT_CHUNK),
            pipe(child.stderr.take().map(RawFdOwner::Pipe), STDERR_CHUNK),
            pipe(reader, OUTPUT_CHUNK),
        ];
        let proc = Proc {
            id,
            child,
            stdin,
            protocol_writable: protocol.is_some(),
            protocol,
            outputs,
            writing: Vec::new(),
            written: 0,
            queued: Vec::new(),
            close_input: false,
            watching_exit: false,
            exit: None,
            released: false,
            inflight: 0,
        };
        let index = match children.free.pop() {
            Some(index) => {
                children.procs[index as usize] = Some(proc);
                index
            }
            None => {
                children.procs.push(Some(proc));
                (children.procs.len() - 1) as u32
            }
        };
        children.ids.insert(id, index);
        children.service.on_spawned(id, now);
        for stream in STREAMS {
            self.submit_child_read(index, stream);
        }
        self.watch_exit(index);
    }

    /// The loop stops: answer what the handlers still hold, then kill every
    /// child and cancel its operations (the shutdown waits for them).
    pub(super) fn release_children(&mut self) {
        let Some(children) = self.children.as_mut() else {
            return;
        };
        children.service.abandon();
        let now = Instant::now();
        while let Some(action) = self.children.as_mut().and_then(|c| c.service.poll(now)) {
            if let ServiceAction::Done { .. } = action {
                self.carry_out(action, now);
            }
        }
        let live: Vec<u32> = self
            .children
            .as_ref()
            .map(|c| {
                c.procs
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.is_some())
                    .map(|(i, _)| i as u32)
                    .collect()
            })
            .unwrap_or_default();
        for index in live {
            self.release_child(index);
        }
        if let Some(children) = self.children.as_ref() {
            self.agent
                .publish_handlers(self.part, children.service.status());
        }
    }

    /// After the shutdown's wait: drop whatever is left (their operations
    /// ended), or leak the entries whose operations did not end, so that no
    /// buffer is freed under the kernel.
    pub(super) fn drop_children(&mut self, clean: bool) {
        let Some(children) = self.children.as_mut() else {
            return;
        };
        for p in children.procs.iter_mut() {
            match p.take() {
                Some(p) if p.inflight > 0 && !clean => std::mem::forget(p),
                Some(p) => drop(p),
                None => {}
            }
        }
    }
}

#[path = "child_io.rs"]
mod io;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::handlers::HandlerSet;

    fn set(toml: &str) -> HandlerSet {
        let settings = crate::config::parse_file(toml).expect("the file parses");
        HandlerSet::resolve(&settings.handlers, 1 << 20).expect("valid handlers")
    }

    #[test]
    fn a_pool_is_split_over_the_loops_with_at_least_one_each() {
        let set = set(
            "[handlers.p]\nmode = \"pool\"\ncommand = [\"cat\"]\nprocesses = 5\n\n\
             [handlers.e]\nmode = \"exec\"\ncommand = [\"cat\"]\nconcurrency = 1\n",
        );
        let shares: Vec<HandlerSet> = (0..2).map(|i| loop_share(&set, i, 2)).collect();
        let processes = |s: &HandlerSet, name: &str| match s
            .handlers
            .iter()
            .find(|d| d.name == name)
            .unwrap()
            .mode
        {
            ModeSettings::Pool { processes, .. } => processes,
            ModeSettings::Exec { concurrency } => concurrency,
        };
        assert_eq!(processes(&shares[0], "p"), 3);
        assert_eq!(processes(&shares[1], "p"), 2);
        // One slot cannot be split: each loop runs one child at a time.
        assert_eq!(processes(&shares[0], "e"), 1);
        assert_eq!(processes(&shares[1], "e"), 1);
        assert_eq!(loop_share(&set, 0, 1), set);
    }
}
