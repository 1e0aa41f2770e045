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

use crate::exec::Outcome;
use crate::handlers::{Job, Later, Reply, TaskFailure};
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
            self.complete_later(delayed.id, delayed.handler, delayed.output, now);
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
        if let Ok(Reply::Deferred) = reply {
            let payload = task.payload.to_vec();
            self.defer(id, found, payload, now);
            return;
        }
        self.answer_begun(id, found, reply, now);
    }

    /// The handler answers later: its task becomes a [`Job`] for the
    /// runtime ([`WorkerSession::take_job`]), answered by
    /// [`WorkerSession::job_done`]. Only declared handlers have jobs; any
    /// other handler deferring fails its task.
    #[cold]
    #[inline(never)]
    fn defer(&mut self, id: u64, handler: Option<usize>, payload: Vec<u8>, now: Instant) {
        self.machine.abandon_result();
        if let Some(external) = handler.and_then(|at| self.runner.external_index(at)) {
            self.deferred.insert(id, (handler, now));
            self.jobs.push_back(Job {
                handler: external,
                task: id,
                payload,
            });
            return;
        }
        let later = handler.and_then(|at| self.runner.later_handler(at));
        match (later, self.late.clone()) {
            (Some(later), Some((inbox, generation))) => {
                self.deferred.insert(id, (handler, now));
                // Answered through `job_done` once the runtime takes the
                // answer from the inbox, like a job's.
                later.start(&payload, Later::new(id, generation, inbox));
            }
            _ => {
                let failure = TaskFailure::handler_failed(
                    "the handler deferred its answer, which only declared handlers and \
                     handlers registered with register_later may",
                );
                self.answer_begun_later(id, handler, Err(failure), now);
            }
        }
    }

    /// A job the runtime is to run, in the order the tasks arrived.
    pub fn take_job(&mut self) -> Option<Job> {
        self.jobs.pop_front()
    }

    /// Jobs handed out and not answered yet, and jobs not handed out.
    pub fn jobs_pending(&self) -> usize {
        self.deferred.len()
    }

    /// The runtime ran task `task`'s job: answer it. An answer for a task
    /// this session does not hold (a stale one) is ignored.
    pub fn job_done(&mut self, task: u64, outcome: Outcome, now: Instant) {
        let Some((handler, started)) = self.deferred.remove(&task) else {
            return;
        };
        self.runner
            .record_delay(handler, now.saturating_duration_since(started));
        let output = match outcome {
            Outcome::Ok(output) => Ok(output),
            Outcome::Failed { code, message } => Err((code, message)),
        };
        self.complete_later(task, handler, output, now);
        self.process(now);
    }

    /// Answer a task whose answer came later: a delayed one (`sleep`) or a
    /// job's. The one path of answers that do not come from the call.
    fn complete_later(
        &mut self,
        id: u64,
        handler: Option<usize>,
        output: Result<Vec<u8>, (&'static str, String)>,
        now: Instant,
    ) {
        let outcome = match &output {
            Ok(output) => TaskOutcome::Ok(output),
            Err((code, message)) => TaskOutcome::Failed { code, message },
        };
        self.finish(id, handler, outcome, now);
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
            // Taken before this by `run_task`.
            Ok(Reply::Deferred) => {
                let failure = TaskFailure::handler_failed("the answer was deferred without a job");
                self.answer_begun_later(id, handler, Err(failure), now);
            }
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
