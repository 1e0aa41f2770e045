//! Running tasks: the handler found for each TASK is called, its output
//! written straight into the output buffer and answered at once, or kept
//! as a delayed result until its timer fires, and every RESULT queued is
//! counted.
//!
//! It answers each task exactly once and never writes to a socket; a delayed
//! result is due at an instant computed from the `now` it was given, never
//! from the clock.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use crate::handlers::{Reply, TaskFailure};
use crate::protocol::machine::NotInFlight;
use crate::protocol::{TaskAt, TaskOutcome};

use super::{Delayed, WorkerSession};

impl WorkerSession {
    /// The next instant at which [`WorkerSession::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let delayed = self.delayed.peek().map(|Reverse(d)| d.due);
        match (self.machine.poll_timeout(), delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire due timers: delayed results, heartbeats, the handshake timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse(next)) = self.delayed.peek() {
            if next.due > now {
                break;
            }
            let Some(Reverse(delayed)) = self.delayed.pop() else {
                break;
            };
            let outcome = match &delayed.output {
                Ok(output) => TaskOutcome::Ok(output),
                Err((code, message)) => TaskOutcome::Failed { code, message },
            };
            self.finish(delayed.id, delayed.handler, outcome, now);
        }
        self.machine.handle_timeout(now);
        self.process(now);
    }

    /// Run a task decoded in place. Every handler writes its output
    /// straight into the output buffer, behind the RESULT header begun for
    /// it.
    #[inline(always)]
    pub(super) fn run_task(&mut self, task: TaskAt<'_>, now: Instant) {
        let id = task.id();
        let (task, out) = self.machine.begin_task(task);
        let found = self.runner.find(task.handler);
        let reply = self.runner.call(found, task.handler, task.payload, out);
        self.answer_begun(id, found, reply, now);
    }

    /// Answer a task whose RESULT was begun in the output buffer
    /// ([`WorkerMachine::begin_result`]) and written by handler `handler`.
    ///
    /// [`WorkerMachine::begin_result`]: crate::protocol::WorkerMachine::begin_result
    #[inline(always)]
    pub(super) fn answer_begun(
        &mut self,
        id: u64,
        handler: Option<usize>,
        reply: Result<Reply, TaskFailure>,
        now: Instant,
    ) {
        match reply {
            Ok(Reply::Ready) => match self.machine.commit_result(id, now) {
                Ok(len) => {
                    let ok = len <= self.machine.peer_max_body() as usize;
                    self.count_answer(handler, ok);
                }
                Err(NotInFlight(id)) => self.not_in_flight(id),
            },
            Ok(Reply::After(delay)) => self.answer_begun_later(id, handler, Ok(delay), now),
            Err(failure) => self.answer_begun_later(id, handler, Err(failure), now),
        }
    }

    /// The handler did not answer at once: keep what it wrote for later (a
    /// delayed answer), or drop it (a failure).
    #[cold]
    #[inline(never)]
    fn answer_begun_later(
        &mut self,
        id: u64,
        handler: Option<usize>,
        reply: Result<Duration, TaskFailure>,
        now: Instant,
    ) {
        match reply {
            Ok(delay) => {
                let output = self.machine.result_body().to_vec();
                self.machine.abandon_result();
                self.runner.record_delay(handler, delay);
                self.schedule(id, handler, now + delay, Ok(output));
            }
            Err(failure) => {
                self.machine.abandon_result();
                let (code, message) = failure.into_parts();
                self.finish(
                    id,
                    handler,
                    TaskOutcome::Failed {
                        code,
                        message: &message,
                    },
                    now,
                );
            }
        }
    }

    fn schedule(
        &mut self,
        id: u64,
        handler: Option<usize>,
        due: Instant,
        output: Result<Vec<u8>, (&'static str, String)>,
    ) {
        self.delayed_seq += 1;
        self.delayed.push(Reverse(Delayed {
            due,
            seq: self.delayed_seq,
            id,
            handler,
            output,
        }));
    }

    fn finish(&mut self, id: u64, handler: Option<usize>, outcome: TaskOutcome<'_>, now: Instant) {
        match self.machine.complete_task(id, outcome, now) {
            Ok(()) => {
                let ok = outcome_is_ok(&outcome, self.machine.peer_max_body());
                self.count_answer(handler, ok);
            }
            Err(NotInFlight(id)) => self.not_in_flight(id),
        }
    }

    /// A RESULT was queued.
    #[inline]
    fn count_answer(&mut self, handler: Option<usize>, ok: bool) {
        self.tasks_this_connection += 1;
        self.stats.record_task(handler, ok);
    }

    #[cold]
    fn not_in_flight(&self, id: u64) {
        tracing::error!(
            session = self.index,
            task = id,
            "internal: completed a task that is not in flight"
        );
    }
}

fn outcome_is_ok(outcome: &TaskOutcome<'_>, peer_max_body: u32) -> bool {
    match outcome {
        TaskOutcome::Ok(output) => output.len() <= peer_max_body as usize,
        TaskOutcome::Failed { .. } => false,
    }
}
