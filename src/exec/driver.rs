//! The blocking runtime's driver of declared handlers: one thread per
//! agent (not per child) owning a [`Service`](super::Service), waiting in poll(2) on every
//! child's pipes, fd 3 and pidfd, and on a wake socket that new commands
//! ring.
//!
//! Sessions hand jobs in through a [`Submitter`] (cheap to clone, `Send`)
//! and get the answers on a `crossbeam_channel::Receiver` per route owner
//! ([`Driver::register`]), which fits the blocking runtime's
//! `select!`. Every submitted job is answered exactly once on its owner's
//! receiver, unless its route is forgotten first ([`Submitter::forget`]);
//! [`Driver::stop`] answers what is left FAILED `draining`, then kills and
//! reaps every child. The channels are unbounded but never hold more than
//! the tasks their sessions have in flight (`max_in_flight` each): each
//! answer is one submitted job. Pipes are non-blocking and read in
//! 64 KiB steps into the service's capped state; writes are what the
//! service asked for (one task's payload, or a worker's tasks in flight).
//! Started with [`Driver::start_reporting`], the thread also hands every
//! handler's state ([`HandlerStatus`]) to a callback as it begins and then
//! about once per period, so that nobody waits on it for `/status`.

use std::fmt::Debug;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver, Sender};

use super::service::HandlerStatus;
use super::Outcome;
use crate::config::handlers::HandlerSet;
use crate::handlers::Job;

/// Bytes read from a descriptor at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Which session's receiver a route's answers go to.
pub trait RouteOwner {
    fn owner(&self) -> u32;
}

impl RouteOwner for u32 {
    fn owner(&self) -> u32 {
        *self
    }
}

/// (session slot, connection generation).
impl RouteOwner for (u32, u32) {
    fn owner(&self) -> u32 {
        self.0
    }
}

impl RouteOwner for (u32, u64) {
    fn owner(&self) -> u32 {
        self.0
    }
}

/// One answer: task `task` of `route`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<R> {
    pub route: R,
    pub task: u64,
    pub outcome: Outcome,
}

#[derive(Debug)]
enum Command<R> {
    Submit(R, Job),
    Forget(R),
    Register(u32, Sender<Answer<R>>),
    Unregister(u32),
    Status(Sender<Vec<HandlerStatus>>),
    Stop,
}

/// The wake socket: one byte rings it; `pending` saves the write while a
/// ring is already unread.
#[derive(Debug)]
struct Wake {
    ring: UnixStream,
    pending: AtomicBool,
}

impl Wake {
    fn ring(&self) {
        if !self.pending.swap(true, Ordering::SeqCst) {
            // Full (WouldBlock) means already readable: nothing lost.
            let _ = (&self.ring).write(&[1]);
        }
    }
}

/// Hands jobs to the driver's thread; clone one per session.
#[derive(Debug)]
pub struct Submitter<R> {
    commands: Sender<Command<R>>,
    wake: Arc<Wake>,
}

impl<R> Clone for Submitter<R> {
    fn clone(&self) -> Self {
        Submitter {
            commands: self.commands.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<R> Submitter<R> {
    /// Run `job` for `route`; its answer comes on the receiver registered
    /// for `route`'s owner. `Err` gives the job back when the driver has
    /// stopped (answer it yourself).
    pub fn submit(&self, route: R, job: Job) -> Result<(), Job> {
        self.send(Command::Submit(route, job))
            .map_err(|command| match command {
                Command::Submit(_, job) => job,
                _ => unreachable!("the command given back is the one sent"),
            })
    }

    /// `route`'s connection is gone: drop its answers, drop its waiting
    /// tasks, kill its running `exec` children.
    pub fn forget(&self, route: R) {
        let _ = self.send(Command::Forget(route));
    }

    fn send(&self, command: Command<R>) -> Result<(), Command<R>> {
        self.commands
            .send(command)
            .map_err(|err| err.into_inner())?;
        self.wake.ring();
        Ok(())
    }
}

/// The thread running an agent's declared handlers; see the module
/// documentation.
#[derive(Debug)]
pub struct Driver<R> {
    submitter: Submitter<R>,
    thread: Option<JoinHandle<()>>,
}

impl<R> Driver<R>
where
    R: RouteOwner + Copy + Eq + Debug + Send + 'static,
{
    /// Start the thread; each `pool` handler's workers are started at once.
    pub fn start(set: &HandlerSet) -> io::Result<Self> {
        Self::start_with(set, super::service::DEFAULT_MAX_WAITING)
    }

    /// As [`Driver::start`], each handler queueing at most `max_waiting`
    /// tasks.
    pub fn start_with(set: &HandlerSet, max_waiting: usize) -> io::Result<Self> {
        Self::spawn(set, max_waiting, None)
    }

    /// As [`Driver::start_with`], the thread calling `report` with every
    /// handler's state once it has started the pools' workers, and then
    /// about once per `every` (which must be above zero: the thread wakes
    /// for each report).
    pub fn start_reporting(
        set: &HandlerSet,
        max_waiting: usize,
        every: Duration,
        report: impl FnMut(Vec<HandlerStatus>) + Send + 'static,
    ) -> io::Result<Self> {
        let reporter = Reporter::new(every, Box::new(report));
        Self::spawn(set, max_waiting, Some(reporter))
    }

    fn spawn(set: &HandlerSet, max_waiting: usize, reporter: Option<Reporter>) -> io::Result<Self> {
        let (ring, bell) = UnixStream::pair()?;
        ring.set_nonblocking(true)?;
        bell.set_nonblocking(true)?;
        let wake = Arc::new(Wake {
            ring,
            pending: AtomicBool::new(false),
        });
        let (commands, inbox) = unbounded();
        let set = set.clone();
        let ringer = wake.clone();
        let thread = std::thread::Builder::new()
            .name("handlers".into())
            .spawn(move || thread::run(&set, max_waiting, inbox, bell, ringer, reporter))?;
        Ok(Driver {
            submitter: Submitter { commands, wake },
            thread: Some(thread),
        })
    }

    /// A handle for submitting jobs.
    pub fn submitter(&self) -> Submitter<R> {
        self.submitter.clone()
    }

    /// The receiver of every answer to routes of `owner` (a later
    /// registration of the same owner replaces this one).
    pub fn register(&self, owner: u32) -> Receiver<Answer<R>> {
        let (sender, receiver) = unbounded();
        let _ = self.submitter.send(Command::Register(owner, sender));
        receiver
    }

    /// Stop sending answers to `owner`.
    pub fn unregister(&self, owner: u32) {
        let _ = self.submitter.send(Command::Unregister(owner));
    }

    /// See [`Submitter::forget`].
    pub fn forget(&self, route: R) {
        self.submitter.forget(route);
    }

    /// Every declared handler's state (empty once stopped).
    pub fn status(&self) -> Vec<HandlerStatus> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        if self.submitter.send(Command::Status(sender)).is_err() {
            return Vec::new();
        }
        receiver.recv().unwrap_or_default()
    }

    /// Answer what is left FAILED `draining`, kill and reap every child,
    /// and join the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }
}

impl<R> Driver<R> {
    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.submitter.send(Command::Stop);
            if thread.join().is_err() {
                tracing::error!("the declared handlers' thread panicked");
            }
        }
    }
}

impl<R> Drop for Driver<R> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[path = "driver_thread.rs"]
mod thread;
use thread::Reporter;
