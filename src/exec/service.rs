//! [`Service`]: every declared handler of an agent, run without I/O.
//!
//! One `Service` holds an [`ExecGate`] and the running [`ExecTask`]s of
//! each `exec` handler and a [`Pool`] for each `pool` handler. Jobs come in
//! ([`Service::submit`]) with an opaque route of the runtime's (whom to
//! answer); what happens to the children comes in as events
//! (`on_spawned`, `on_output`, `on_exit`, ...), each about a [`ChildId`];
//! and what to do comes out of [`Service::poll`] as [`ServiceAction`]s, the
//! same vocabulary for the blocking driver ([`super::driver`]) and the
//! io_uring loop. Time is passed in; [`Service::next_deadline`] says when
//! to poll without an event. Nothing here reads a clock, touches a
//! descriptor or blocks; it records the handler metrics
//! ([`super::metrics`]) and logs (a worker's stdout and stderr, capped and
//! rate-limited, [`super::worker_log`]).
//!
//! Every job is answered exactly once by a [`ServiceAction::Done`], unless
//! its route is forgotten ([`Service::forget_route`]) first. A job that
//! finds its handler's queue full is answered at once with FAILED
//! [`codes::BUSY`]: nothing of it ran, so the manager may retry it
//! elsewhere, which `handler_failed` (the program failed) would not tell.

use std::collections::{BTreeMap, VecDeque};

use rustc_hash::FxHashMap;
use std::fmt::Debug;
use std::time::Instant;

use super::metrics::HandlerMetrics;
use super::pool::{PoolCounts, TaskKey};
use super::worker_log::{LineBuffer, LogBudget};
use super::{
    codes, Admission, ExecGate, ExecLimits, ExecTask, ExitStatus, Outcome, Pool, PoolLimits,
    Signal, SpawnSpec,
};
use crate::config::handlers::{HandlerSet, ModeSettings};
use crate::handlers::Job;

/// Tasks of one handler that may wait for a free process or slot; one
/// more is answered FAILED `busy`.
pub const DEFAULT_MAX_WAITING: usize = 1024;

/// A child the service asked for, unique for the service's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(pub u64);

/// Which of a child's descriptors bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// A `pool` worker's fd 3.
    Protocol,
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAction<R> {
    /// Start a child of handler `handler` ([`Service::spawn_spec`]), then
    /// report [`Service::on_spawned`] or [`Service::on_spawn_failed`].
    Spawn {
        child: ChildId,
        handler: usize,
        pool: bool,
    },
    /// Append `bytes` to what goes to the child's input (stdin for an
    /// `exec` child, fd 3 for a `pool` worker); report progress with
    /// [`Service::on_written`], a broken pipe with
    /// [`Service::on_input_broken`].
    Write { child: ChildId, bytes: Vec<u8> },
    /// Close the child's input (an `exec` child's stdin; shut down the
    /// writing half of a worker's fd 3), once what was written is out.
    CloseInput { child: ChildId },
    /// Signal the child's process group.
    Signal { child: ChildId, signal: Signal },
    /// The child has exited and is done with: SIGKILL what is left of its
    /// group, close its descriptors, reap it. No event about it follows.
    Release { child: ChildId },
    /// Answer task `task` of `route`.
    Done {
        route: R,
        task: u64,
        outcome: Outcome,
    },
}

/// One declared handler as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HandlerStatus {
    pub name: String,
    /// `exec` or `pool`.
    pub mode: &'static str,
    /// `ready`, `starting` (no worker up yet) or `backing off` (no worker
    /// up, a restart waiting out its back-off).
    pub state: &'static str,
    /// Processes alive.
    pub alive: usize,
    /// Tasks at a process.
    pub running: usize,
    /// Tasks waiting for a free process or slot.
    pub waiting: usize,
    pub restarts: u64,
    pub timeouts: u64,
    pub spawn_failures: u64,
}

/// A job taken: whom to answer and, until it is sent, its payload.
#[derive(Debug)]
struct Entry<R> {
    /// `None` once forgotten: the answer is dropped.
    route: Option<R>,
    task: u64,
    handler: usize,
    payload: Vec<u8>,
    submitted: Instant,
    /// The `exec` child running it.
    child: Option<ChildId>,
}

#[derive(Debug)]
enum Kind {
    Exec {
        gate: ExecGate<TaskKey>,
        limits: ExecLimits,
        concurrency: usize,
        /// Children started and not released.
        alive: usize,
    },
    Pool {
        pool: Pool,
        /// The child in each slot.
        slots: Vec<Option<ChildId>>,
        /// The pool's counts already recorded.
        seen: PoolCounts,
    },
}

#[derive(Debug)]
struct Handler {
    name: String,
    spec: SpawnSpec,
    kind: Kind,
    metrics: HandlerMetrics,
    log: LogBudget,
    restarts: u64,
    timeouts: u64,
    spawn_failures: u64,
    /// What [`HandlerMetrics::processes`] was moved to by this service.
    published_alive: usize,
}

#[derive(Debug)]
enum Role {
    Exec {
        handler: usize,
        key: TaskKey,
        /// Made when the child has started.
        task: Option<ExecTask>,
    },
    Pool {
        handler: usize,
        slot: usize,
        stdout: LineBuffer,
        stderr: LineBuffer,
    },
}

/// Tasks, children and actions: what every handler shares.
#[derive(Debug)]
struct Book<R> {
    /// Keyed by our own counter, never by a peer's value: a fast hash is
    /// safe here.
    entries: FxHashMap<TaskKey, Entry<R>>,
    children: BTreeMap<ChildId, Role>,
    actions: VecDeque<ServiceAction<R>>,
    next_key: TaskKey,
    next_child: u64,
}

impl<R: Copy + Eq + Debug> Book<R> {
    fn new_child(&mut self, role: Role) -> ChildId {
        let child = ChildId(self.next_child);
        self.next_child += 1;
        self.children.insert(child, role);
        child
    }

    /// Answer `key` (dropped when its route was forgotten).
    fn done(&mut self, key: TaskKey, outcome: Outcome) {
        if let Some(Entry {
            route: Some(route),
            task,
            ..
        }) = self.entries.remove(&key)
        {
            self.actions.push_back(ServiceAction::Done {
                route,
                task,
                outcome,
            });
        }
    }
}

/// Every declared handler of an agent; see the module documentation.
#[derive(Debug)]
pub struct Service<R> {
    handlers: Vec<Handler>,
    book: Book<R>,
}

impl<R: Copy + Eq + Debug> Service<R> {
    /// The handlers of `set`, with [`DEFAULT_MAX_WAITING`]; each pool's
    /// workers are asked for at once.
    pub fn new(set: &HandlerSet, now: Instant) -> Self {
        Self::with_max_waiting(set, DEFAULT_MAX_WAITING, now)
    }

    /// The handlers of `set`, each queueing at most `max_waiting` tasks.
    pub fn with_max_waiting(set: &HandlerSet, max_waiting: usize, now: Instant) -> Self {
        let mut service = Service {
            handlers: Vec::with_capacity(set.handlers.len()),
            book: Book {
                entries: FxHashMap::default(),
                children: BTreeMap::new(),
                actions: VecDeque::new(),
                next_key: 0,
                next_child: 0,
            },
        };
        for decl in &set.handlers {
            let kind = match PoolLimits::for_handler(decl, max_waiting) {
                Some(limits) => Kind::Pool {
                    slots: vec![None; limits.processes.max(1)],
                    pool: Pool::new(limits, now),
                    seen: PoolCounts::default(),
                },
                None => {
                    let concurrency = match decl.mode {
                        ModeSettings::Exec { concurrency } => concurrency as usize,
                        ModeSettings::Pool { .. } => 1,
                    };
                    Kind::Exec {
                        gate: ExecGate::new(concurrency, max_waiting),
                        limits: ExecLimits::for_handler(decl),
                        concurrency,
                        alive: 0,
                    }
                }
            };
            service.handlers.push(Handler {
                name: decl.name.clone(),
                spec: SpawnSpec::for_handler(decl),
                kind,
                metrics: HandlerMetrics::new(&decl.name),
                log: LogBudget::new(),
                restarts: 0,
                timeouts: 0,
                spawn_failures: 0,
                published_alive: 0,
            });
        }
        for handler in 0..service.handlers.len() {
            service.take_pool_actions(handler);
        }
        service.publish();
        service
    }

    /// What to start for handler `handler`'s children.
    pub fn spawn_spec(&self, handler: usize) -> Option<&SpawnSpec> {
        self.handlers.get(handler).map(|h| &h.spec)
    }

    /// The name of handler `handler`.
    pub fn handler_name(&self, handler: usize) -> Option<&str> {
        self.handlers.get(handler).map(|h| h.name.as_str())
    }

    /// Take a job for `route`: started, queued, or answered at once
    /// (FAILED `busy` when its handler's queue is full).
    pub fn submit(&mut self, route: R, job: Job, now: Instant) {
        let Job {
            handler,
            task,
            payload,
        } = job;
        let Some(h) = self.handlers.get_mut(handler) else {
            self.book.actions.push_back(ServiceAction::Done {
                route,
                task,
                outcome: Outcome::failed(
                    crate::protocol::codes::UNKNOWN_HANDLER,
                    format!("no declared handler number {handler}"),
                ),
            });
            return;
        };
        let key = self.book.next_key;
        self.book.next_key += 1;
        self.book.entries.insert(
            key,
            Entry {
                route: Some(route),
                task,
                handler,
                payload,
                submitted: now,
                child: None,
            },
        );
        let admitted = match &mut h.kind {
            Kind::Exec { gate, .. } => match gate.submit(key, now) {
                Ok(Admission::Start) => {
                    start_exec(&mut self.book, handler, key, now, &h.metrics);
                    true
                }
                Ok(Admission::Wait) => true,
                Err(_) => false,
            },
            Kind::Pool { pool, .. } => pool.submit(key, now).is_ok(),
        };
        if admitted {
            self.take_pool_actions(handler);
        } else {
            let message = format!(
                "handler {} already has its most tasks waiting; this one was not started",
                h.name
            );
            self.book.done(key, Outcome::failed(codes::BUSY, message));
        }
    }

    /// The child was started.
    pub fn on_spawned(&mut self, child: ChildId, now: Instant) {
        let Some(role) = self.book.children.get_mut(&child) else {
            return;
        };
        match role {
            Role::Exec { handler, key, task } => {
                let handler = *handler;
                let Some(entry) = self.book.entries.get_mut(key) else {
                    return;
                };
                let Kind::Exec { limits, alive, .. } = &mut self.handlers[handler].kind else {
                    return;
                };
                *alive += 1;
                let input = std::mem::take(&mut entry.payload);
                if !input.is_empty() {
                    self.book.actions.push_back(ServiceAction::Write {
                        child,
                        bytes: input.clone(),
                    });
                }
                // The timeout runs from when the task was accepted, its
                // wait for a slot included, as in pool mode.
                *task = Some(ExecTask::new(input, *limits, entry.submitted));
                if entry.route.is_none() {
                    self.book.actions.push_back(ServiceAction::Signal {
                        child,
                        signal: Signal::Kill,
                    });
                }
            }
            Role::Pool { handler, slot, .. } => {
                let (handler, slot) = (*handler, *slot);
                if let Kind::Pool { pool, .. } = &mut self.handlers[handler].kind {
                    pool.spawned(slot, now);
                }
                self.take_pool_actions(handler);
            }
        }
        self.publish();
    }

    /// The child could not be started (`error` says why).
    pub fn on_spawn_failed(&mut self, child: ChildId, error: &str, now: Instant) {
        let Some(role) = self.book.children.remove(&child) else {
            return;
        };
        match role {
            Role::Exec { handler, key, .. } => {
                let h = &mut self.handlers[handler];
                h.spawn_failures += 1;
                h.metrics.spawn_failures.increment(1);
                log_line(h, now, |name| {
                    tracing::warn!(handler = name, "handler {name}: {error}")
                });
                let message = format!("cannot start handler {}: {error}", h.name);
                self.book
                    .done(key, Outcome::failed(codes::SPAWN_FAILED, message));
                self.exec_slot_freed(handler, now);
            }
            Role::Pool { handler, slot, .. } => {
                let h = &mut self.handlers[handler];
                log_line(h, now, |name| {
                    tracing::warn!(
                        handler = name,
                        worker = slot,
                        "handler {name} worker {slot}: {error}; started again after a back-off"
                    )
                });
                if let Kind::Pool { pool, slots, .. } = &mut h.kind {
                    slots[slot] = None;
                    pool.spawn_failed(slot, now);
                }
                self.take_pool_actions(handler);
            }
        }
    }

    /// Bytes read from one of the child's descriptors.
    pub fn on_output(&mut self, child: ChildId, stream: Stream, bytes: &[u8], now: Instant) {
        let Some(role) = self.book.children.get_mut(&child) else {
            return;
        };
        match role {
            Role::Exec {
                task: Some(task), ..
            } => match stream {
                Stream::Stdout => task.on_stdout(bytes),
                Stream::Stderr => task.on_stderr(bytes),
                Stream::Protocol => {}
            },
            Role::Exec { task: None, .. } => {}
            Role::Pool {
                handler,
                slot,
                stdout,
                stderr,
            } => {
                let (handler, slot) = (*handler, *slot);
                let buffer = match stream {
                    Stream::Stdout => stdout,
                    Stream::Stderr => stderr,
                    Stream::Protocol => {
                        if let Kind::Pool { pool, .. } = &mut self.handlers[handler].kind {
                            pool.on_bytes(slot, bytes, now);
                        }
                        self.take_pool_actions(handler);
                        return;
                    }
                };
                let mut lines = Vec::new();
                buffer.feed(bytes, &mut lines);
                for line in lines {
                    log_worker_line(&mut self.handlers[handler], slot, stream, line, now);
                }
            }
        }
    }

    /// End of file (or a read error) on one of the child's descriptors.
    pub fn on_output_end(&mut self, child: ChildId, stream: Stream, now: Instant) {
        let Some(role) = self.book.children.get_mut(&child) else {
            return;
        };
        match role {
            Role::Exec {
                task: Some(task), ..
            } => match stream {
                Stream::Stdout => task.on_stdout_end(),
                Stream::Stderr => task.on_stderr_end(),
                Stream::Protocol => {}
            },
            Role::Exec { task: None, .. } => {}
            Role::Pool {
                handler,
                slot,
                stdout,
                stderr,
            } => {
                let (handler, slot) = (*handler, *slot);
                let buffer = match stream {
                    Stream::Stdout => stdout,
                    Stream::Stderr => stderr,
                    Stream::Protocol => return self.pool_input_ended(handler, slot, now),
                };
                if let Some(line) = buffer.finish() {
                    log_worker_line(&mut self.handlers[handler], slot, stream, line, now);
                }
            }
        }
    }

    /// `n` bytes of what [`ServiceAction::Write`] gave were written.
    pub fn on_written(&mut self, child: ChildId, n: usize) {
        if let Some(Role::Exec {
            task: Some(task), ..
        }) = self.book.children.get_mut(&child)
        {
            task.stdin_wrote(n);
        }
    }

    /// Writing to the child's input failed (EPIPE): what was not written
    /// is dropped.
    pub fn on_input_broken(&mut self, child: ChildId, now: Instant) {
        match self.book.children.get_mut(&child) {
            Some(Role::Exec {
                task: Some(task), ..
            }) => task.stdin_broken(),
            Some(&mut Role::Pool { handler, slot, .. }) => {
                self.pool_input_ended(handler, slot, now)
            }
            _ => {}
        }
    }

    /// The child exited (its pidfd became readable); it is not reaped
    /// until [`ServiceAction::Release`].
    pub fn on_exit(&mut self, child: ChildId, status: ExitStatus, now: Instant) {
        match self.book.children.get_mut(&child) {
            Some(Role::Exec {
                task: Some(task), ..
            }) => task.on_exit(status, now),
            Some(&mut Role::Pool { handler, slot, .. }) => {
                if let Kind::Pool { pool, .. } = &mut self.handlers[handler].kind {
                    pool.on_exit(slot, status, now);
                }
                self.take_pool_actions(handler);
            }
            _ => {}
        }
    }

    /// The next action at `now`; call until `None` after every event and
    /// when [`Service::next_deadline`] passes.
    pub fn poll(&mut self, now: Instant) -> Option<ServiceAction<R>> {
        if self.book.actions.is_empty() {
            self.sweep(now);
        }
        self.book.actions.pop_front()
    }

    /// When [`Service::poll`] next has something to do without an event.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handlers = self.handlers.iter().filter_map(|h| match &h.kind {
            Kind::Exec { gate, limits, .. } => gate.next_deadline(limits.timeout),
            Kind::Pool { pool, .. } => pool.next_deadline(),
        });
        let tasks = self.book.children.values().filter_map(|role| match role {
            Role::Exec {
                task: Some(task), ..
            } => task.next_deadline(),
            _ => None,
        });
        handlers.chain(tasks).min()
    }

    /// The connection of `route` is gone: its answers are dropped, its
    /// waiting tasks removed and its running `exec` children killed (a
    /// task at a `pool` worker runs on; its answer is dropped).
    pub fn forget_route(&mut self, route: R) {
        let book = &mut self.book;
        let mut removed = Vec::new();
        for (&key, entry) in book.entries.iter_mut() {
            if entry.route != Some(route) {
                continue;
            }
            entry.route = None;
            let waiting = match &mut self.handlers[entry.handler].kind {
                Kind::Exec { gate, .. } => gate.remove(&key),
                Kind::Pool { pool, .. } => pool.cancel_waiting(key),
            };
            if waiting {
                removed.push(key);
            } else if let Some(child) = entry.child {
                // Killed now; its exit ends the task as usual.
                book.actions.push_back(ServiceAction::Signal {
                    child,
                    signal: Signal::Kill,
                });
            }
        }
        for key in removed {
            book.entries.remove(&key);
        }
    }

    /// The agent stops its handlers: every task still held is answered
    /// FAILED `draining` now. The driver then kills and reaps every child
    /// itself; no event about them is expected.
    pub fn abandon(&mut self) {
        let keys: Vec<TaskKey> = self.book.entries.keys().copied().collect();
        for key in keys {
            self.book.done(
                key,
                Outcome::failed(
                    crate::protocol::codes::DRAINING,
                    "the agent stopped its handlers before the task ended",
                ),
            );
        }
        for h in &mut self.handlers {
            h.metrics.processes.decrement(h.published_alive as f64);
            h.published_alive = 0;
        }
    }

    /// Tasks held: waiting, at a process, or being answered.
    pub fn tasks(&self) -> usize {
        self.book.entries.len()
    }

    /// Children started or being started and not yet released.
    pub fn children(&self) -> usize {
        self.book.children.len()
    }
}

#[path = "service_steps.rs"]
mod steps;
use steps::{log_line, log_worker_line, start_exec};

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
