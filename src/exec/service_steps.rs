//! The [`Service`]'s steps: its status, time-driven work, an `exec` task's progress
//! to its end, a pool's actions made the service's, and the handler's
//! log and metrics.

use std::fmt::Debug;
use std::time::Instant;

use super::{Book, ChildId, Handler, HandlerStatus, Kind, Role, Service, ServiceAction, Stream};
use crate::exec::metrics::HandlerMetrics;
use crate::exec::pool::TaskKey;
use crate::exec::task::Finished;
use crate::exec::worker_log::{Line, LineBuffer};
use crate::exec::{codes, frame::encode_task, ExecAction, Outcome, PoolAction};

impl<R: Copy + Eq + Debug> Service<R> {
    /// Every handler's state, for `/status`.
    pub fn status(&self) -> Vec<HandlerStatus> {
        self.handlers
            .iter()
            .map(|h| {
                let (mode, state, alive, running, waiting) = match &h.kind {
                    Kind::Exec { gate, alive, .. } => {
                        ("exec", "ready", *alive, gate.running(), gate.waiting())
                    }
                    Kind::Pool { pool, .. } => {
                        let state = match (pool.ready(), pool.backing_off()) {
                            (0, 0) => "starting",
                            (0, _) => "backing off",
                            _ => "ready",
                        };
                        (
                            "pool",
                            state,
                            pool.alive(),
                            pool.in_flight(),
                            pool.waiting(),
                        )
                    }
                };
                HandlerStatus {
                    name: h.name.clone(),
                    mode,
                    state,
                    alive,
                    running,
                    waiting,
                    restarts: h.restarts,
                    timeouts: h.timeouts,
                    spawn_failures: h.spawn_failures,
                }
            })
            .collect()
    }

    /// Time-driven work, and the `exec` tasks' next steps.
    pub(super) fn sweep(&mut self, now: Instant) {
        for handler in 0..self.handlers.len() {
            let h = &mut self.handlers[handler];
            match &mut h.kind {
                Kind::Exec {
                    gate,
                    limits,
                    concurrency,
                    ..
                } => {
                    for key in gate.expired(now, limits.timeout) {
                        h.timeouts += 1;
                        h.metrics.timeouts.increment(1);
                        let message = format!(
                            "no exec slot was free within {:?} (concurrency {concurrency})",
                            limits.timeout
                        );
                        self.book
                            .done(key, Outcome::failed(codes::TIMEOUT, message));
                    }
                }
                Kind::Pool { pool, .. } => {
                    pool.poll(now);
                    self.take_pool_actions(handler);
                }
            }
        }
        let running: Vec<ChildId> = self
            .book
            .children
            .iter()
            .filter(|(_, role)| matches!(role, Role::Exec { task: Some(_), .. }))
            .map(|(&child, _)| child)
            .collect();
        for child in running {
            self.drive_exec(child, now);
        }
        self.publish();
    }

    /// Carry out an `exec` task's next steps.
    pub(super) fn drive_exec(&mut self, child: ChildId, now: Instant) {
        loop {
            let Some(Role::Exec {
                handler,
                key,
                task: Some(task),
            }) = self.book.children.get_mut(&child)
            else {
                return;
            };
            let (handler, key) = (*handler, *key);
            let action = match task.next_action(now) {
                None => return,
                Some(ExecAction::CloseStdin) => ServiceAction::CloseInput { child },
                Some(ExecAction::Signal(signal)) => ServiceAction::Signal { child, signal },
                Some(ExecAction::Finish(finished)) => {
                    self.book.children.remove(&child);
                    self.book
                        .actions
                        .push_back(ServiceAction::Release { child });
                    self.finish_exec(handler, key, finished, now);
                    return;
                }
            };
            self.book.actions.push_back(action);
        }
    }

    pub(super) fn finish_exec(
        &mut self,
        handler: usize,
        key: TaskKey,
        finished: Finished,
        now: Instant,
    ) {
        let h = &mut self.handlers[handler];
        if let Kind::Exec { alive, .. } = &mut h.kind {
            *alive = alive.saturating_sub(1);
        }
        if finished.outcome.code() == Some(codes::TIMEOUT) {
            h.timeouts += 1;
            h.metrics.timeouts.increment(1);
        }
        if finished.pipes_held {
            log_line(h, now, |name| {
                tracing::warn!(
                    handler = name,
                    "handler {name}: its output was still held open after the child exited \
                     (a process it started?); what came after the drain was not read"
                )
            });
        }
        self.book.done(key, finished.outcome);
        self.exec_slot_freed(handler, now);
    }

    /// An `exec` child ended (or never started): start the next waiting
    /// task, if any.
    pub(super) fn exec_slot_freed(&mut self, handler: usize, now: Instant) {
        let h = &mut self.handlers[handler];
        if let Kind::Exec { gate, .. } = &mut h.kind {
            if let Some((next, _)) = gate.finished(now) {
                start_exec(&mut self.book, handler, next, now, &h.metrics);
            }
        }
    }

    /// The worker's fd 3 ended, for reading or writing.
    pub(super) fn pool_input_ended(&mut self, handler: usize, slot: usize, now: Instant) {
        if let Kind::Pool { pool, .. } = &mut self.handlers[handler].kind {
            pool.on_eof(slot, now);
        }
        self.take_pool_actions(handler);
    }

    /// Turn a pool's actions into the service's.
    pub(super) fn take_pool_actions(&mut self, handler: usize) {
        let h = &mut self.handlers[handler];
        let Kind::Pool { pool, slots, seen } = &mut h.kind else {
            return;
        };
        let book = &mut self.book;
        // Tasks for one worker in this round go out as one write: the
        // bytes are gathered per slot and handed over when the round ends,
        // or before anything else that concerns that worker.
        let mut outbox: Vec<(usize, Vec<u8>)> = Vec::new();
        let flush =
            |outbox: &mut Vec<(usize, Vec<u8>)>,
             slot: Option<usize>,
             slots: &[Option<ChildId>],
             actions: &mut std::collections::VecDeque<ServiceAction<R>>| {
                outbox.retain_mut(|(s, bytes)| {
                    if slot.is_some_and(|slot| slot != *s) {
                        return true;
                    }
                    if let Some(child) = slots[*s] {
                        actions.push_back(ServiceAction::Write {
                            child,
                            bytes: std::mem::take(bytes),
                        });
                    }
                    false
                });
            };
        while let Some(action) = pool.next_action() {
            if let PoolAction::Signal { slot, .. }
            | PoolAction::CloseInput { slot }
            | PoolAction::Reap { slot }
            | PoolAction::Spawn { slot } = action
            {
                flush(&mut outbox, Some(slot), slots, &mut book.actions);
            }
            let action = match action {
                PoolAction::Spawn { slot } => {
                    let child = book.new_child(Role::Pool {
                        handler,
                        slot,
                        stdout: LineBuffer::default(),
                        stderr: LineBuffer::default(),
                    });
                    slots[slot] = Some(child);
                    ServiceAction::Spawn {
                        child,
                        handler,
                        pool: true,
                    }
                }
                PoolAction::Send {
                    slot,
                    task,
                    deadline_ms,
                    waited,
                } => {
                    let (Some(_), Some(entry)) = (slots[slot], book.entries.get_mut(&task)) else {
                        continue;
                    };
                    h.metrics.wait.record(waited.as_secs_f64());
                    let payload = std::mem::take(&mut entry.payload);
                    let at = match outbox.iter().position(|(s, _)| *s == slot) {
                        Some(at) => at,
                        None => {
                            outbox.push((slot, Vec::new()));
                            outbox.len() - 1
                        }
                    };
                    encode_task(task, deadline_ms, &payload, &mut outbox[at].1);
                    continue;
                }
                PoolAction::Complete { task, outcome } => {
                    book.done(task, outcome);
                    continue;
                }
                PoolAction::Signal { slot, signal } => match slots[slot] {
                    Some(child) => ServiceAction::Signal { child, signal },
                    None => continue,
                },
                PoolAction::CloseInput { slot } => match slots[slot] {
                    Some(child) => ServiceAction::CloseInput { child },
                    None => continue,
                },
                PoolAction::Reap { slot } => {
                    let Some(child) = slots[slot].take() else {
                        continue;
                    };
                    book.children.remove(&child);
                    ServiceAction::Release { child }
                }
            };
            book.actions.push_back(action);
        }
        flush(&mut outbox, None, slots, &mut book.actions);
        let counts = pool.counts();
        let restarts = counts.restarts - seen.restarts;
        let timeouts = counts.timeouts - seen.timeouts;
        let spawn_failures = counts.spawn_failures - seen.spawn_failures;
        *seen = counts;
        h.restarts += restarts;
        h.timeouts += timeouts;
        h.spawn_failures += spawn_failures;
        if restarts > 0 {
            h.metrics.restarts.increment(restarts);
        }
        if timeouts > 0 {
            h.metrics.timeouts.increment(timeouts);
        }
        if spawn_failures > 0 {
            h.metrics.spawn_failures.increment(spawn_failures);
        }
    }

    /// Set each handler's processes gauge where it changed.
    pub(super) fn publish(&mut self) {
        for h in &mut self.handlers {
            let alive = match &h.kind {
                Kind::Exec { alive, .. } => *alive,
                Kind::Pool { pool, .. } => pool.alive(),
            };
            // Moved by the difference, not set: an agent may run several
            // services (one per uring event loop) over the same series.
            if h.published_alive != alive {
                if alive > h.published_alive {
                    h.metrics
                        .processes
                        .increment((alive - h.published_alive) as f64);
                } else {
                    h.metrics
                        .processes
                        .decrement((h.published_alive - alive) as f64);
                }
                h.published_alive = alive;
            }
        }
    }
}

/// Ask for a child for `key`.
pub(super) fn start_exec<R: Copy + Eq + Debug>(
    book: &mut Book<R>,
    handler: usize,
    key: TaskKey,
    now: Instant,
    metrics: &HandlerMetrics,
) {
    let child = book.new_child(Role::Exec {
        handler,
        key,
        task: None,
    });
    if let Some(entry) = book.entries.get_mut(&key) {
        entry.child = Some(child);
        let waited = now.saturating_duration_since(entry.submitted);
        metrics.wait.record(waited.as_secs_f64());
    }
    book.actions.push_back(ServiceAction::Spawn {
        child,
        handler,
        pool: false,
    });
}

/// Log one line through the handler's budget; `log` gets its name.
pub(super) fn log_line(h: &mut Handler, now: Instant, log: impl FnOnce(&str)) {
    if let Some(suppressed) = h.log.admit(now) {
        if suppressed > 0 {
            let name = &h.name;
            tracing::warn!(
                handler = name.as_str(),
                suppressed,
                "handler {name}: {suppressed} lines of its log were not written (rate limit)"
            );
        }
        log(&h.name);
    }
}

pub(super) fn log_worker_line(
    h: &mut Handler,
    slot: usize,
    stream: Stream,
    line: Line,
    now: Instant,
) {
    let stream = match stream {
        Stream::Stdout => "stdout",
        _ => "stderr",
    };
    let Line { text, cut } = line;
    log_line(h, now, |name| {
        if cut > 0 {
            tracing::info!(
                handler = name,
                worker = slot,
                stream,
                "{text}... ({cut} more bytes of the line not logged)"
            );
        } else {
            tracing::info!(handler = name, worker = slot, stream, "{text}");
        }
    });
}
