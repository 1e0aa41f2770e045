//! [`Pool`]: the worker processes of one `pool` handler, without I/O.
//!
//! A pool has `processes` slots, each holding at most one live worker.
//! The caller starts a worker when told ([`PoolAction::Spawn`]), writes
//! the TASK frames it is told to ([`PoolAction::Send`]), feeds what it
//! reads from the worker's fd 3 ([`Pool::on_bytes`]) and the exits it
//! learns of ([`Pool::on_exit`]), and answers each task when told
//! ([`PoolAction::Complete`]). The pool picks the least loaded worker for
//! each task (up to `in_flight_per_process` each); when all are full a
//! task waits in a bounded queue ([`Pool::submit`] refuses it when that is
//! full: back-pressure). A task's deadline runs from its submission and is
//! carried to the worker in its frame. A worker that exits, breaks the
//! protocol or overruns a deadline has its group stopped (SIGTERM, then
//! SIGKILL after the grace), its tasks answered FAILED, and is started
//! again after a back-off that doubles with each failure in a row; with
//! `recycle_after`, a worker is retired after that many tasks (its input
//! closed once its last task is answered) and replaced at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::{Frame, FrameDecoder, KIND_FAILED, KIND_RESULT};
use super::queue::WaitQueue;
use super::{codes, ExitStatus, Outcome, Signal};
use crate::config::handlers::{HandlerDecl, ModeSettings};

/// The caller's name for a task: unique among the pool's tasks.
pub type TaskKey = u64;

/// Back-off after the first failure in a row, doubled for each more.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The settings of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    pub processes: usize,
    pub in_flight_per_process: usize,
    pub timeout: Duration,
    pub kill_grace: Duration,
    pub recycle_after: Option<u64>,
    /// Largest output accepted from a worker (`max_output`).
    pub max_output: usize,
    /// Most tasks waiting for a free worker.
    pub max_waiting: usize,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl PoolLimits {
    /// A declared `pool` handler's limits (`None` for an `exec` one), with
    /// room for `max_waiting` waiting tasks.
    pub fn for_handler(decl: &HandlerDecl, max_waiting: usize) -> Option<Self> {
        let ModeSettings::Pool {
            processes,
            in_flight_per_process,
            recycle_after,
        } = decl.mode
        else {
            return None;
        };
        Some(PoolLimits {
            processes: processes as usize,
            in_flight_per_process: in_flight_per_process as usize,
            timeout: decl.timeout,
            kill_grace: decl.kill_grace,
            recycle_after,
            max_output: decl.max_output as usize,
            max_waiting,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
        })
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAction {
    /// Start a worker in this slot, then call [`Pool::spawned`] or
    /// [`Pool::spawn_failed`].
    Spawn { slot: usize },
    /// Write task `task`'s TASK frame (`frame::encode_task`) to this
    /// slot's worker, with this `deadline_ms`; it waited `waited` for a
    /// free worker.
    Send {
        slot: usize,
        task: TaskKey,
        deadline_ms: u32,
        waited: Duration,
    },
    /// Answer task `task`.
    Complete { task: TaskKey, outcome: Outcome },
    /// Send this signal to the slot's worker's process group.
    Signal { slot: usize, signal: Signal },
    /// Close our end of the slot's fd 3: the worker is retired and exits
    /// on end of file.
    CloseInput { slot: usize },
    /// The slot's worker has exited: SIGKILL its group (whatever is left),
    /// drop its descriptors and reap it.
    Reap { slot: usize },
}

/// Counts for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub spawned: u64,
    pub spawn_failures: u64,
    /// Workers started again after one ended (a retirement included).
    pub restarts: u64,
    pub timeouts: u64,
    pub worker_lost: u64,
    pub recycled: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// No worker; start one at this time.
    Down { start_at: Instant },
    /// Being started.
    Starting,
    /// Takes tasks.
    Up,
    /// Recycling: no new tasks; input closed at this time once idle.
    Retiring { closed_at: Option<Instant> },
    /// Stopping: SIGTERM sent; SIGKILL due at this time (`None`: sent).
    Stopping { kill_at: Option<Instant> },
}

#[derive(Debug, Clone)]
struct Slot {
    state: SlotState,
    in_flight: Vec<(TaskKey, Instant)>,
    decoder: FrameDecoder,
    /// Tasks this worker answered.
    answered: u64,
    /// Failures in a row (exits, protocol errors, timeouts, spawn errors).
    failures: u32,
    /// Whether a worker has run in this slot (the next start is a restart).
    ran: bool,
}

/// The workers of one `pool` handler and its waiting tasks.
#[derive(Debug, Clone)]
pub struct Pool {
    limits: PoolLimits,
    slots: Vec<Slot>,
    waiting: WaitQueue<TaskKey>,
    actions: VecDeque<PoolAction>,
    cursor: usize,
    counts: PoolCounts,
}

impl Pool {
    /// A pool whose workers are all to be started now (before any task).
    pub fn new(limits: PoolLimits, now: Instant) -> Self {
        let slot = Slot {
            state: SlotState::Down { start_at: now },
            in_flight: Vec::new(),
            decoder: FrameDecoder::new(limits.max_output),
            answered: 0,
            failures: 0,
            ran: false,
        };
        let mut pool = Pool {
            limits,
            slots: vec![slot; limits.processes.max(1)],
            waiting: WaitQueue::new(limits.max_waiting),
            actions: VecDeque::new(),
            cursor: 0,
            counts: PoolCounts::default(),
        };
        pool.poll(now);
        pool
    }

    /// The next action; call until `None` after every event.
    pub fn next_action(&mut self) -> Option<PoolAction> {
        self.actions.pop_front()
    }

    pub fn counts(&self) -> PoolCounts {
        self.counts
    }

    /// Workers alive (started and not yet reaped).
    pub fn alive(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| !matches!(slot.state, SlotState::Down { .. } | SlotState::Starting))
            .count()
    }

    /// Tasks at workers.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().map(|slot| slot.in_flight.len()).sum()
    }

    /// Tasks waiting for a free worker.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Workers taking tasks now.
    pub fn ready(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.state == SlotState::Up)
            .count()
    }

    /// Slots waiting out a back-off before their next start.
    pub fn backing_off(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| matches!(slot.state, SlotState::Down { .. }) && slot.failures > 0)
            .count()
    }

    /// Take task `task` out of the queue of tasks waiting for a worker
    /// (its connection is gone): `false` when it is not waiting (already
    /// at a worker, whose answer then comes as usual, or unknown).
    pub fn cancel_waiting(&mut self, task: TaskKey) -> bool {
        self.waiting.remove(&task)
    }

    /// Whether [`Pool::submit`] would refuse a task now.
    pub fn is_full(&self) -> bool {
        self.waiting.is_full() && self.free_slot().is_none()
    }

    /// Take task `task`: sent to a worker at once or queued. `Err` gives
    /// it back when the queue is full (take no more tasks until one ends).
    pub fn submit(&mut self, task: TaskKey, now: Instant) -> Result<(), TaskKey> {
        if self.waiting.is_empty() {
            if let Some(slot) = self.free_slot() {
                self.send(slot, task, now, now);
                return Ok(());
            }
        }
        self.waiting.push(task, now)?;
        self.dispatch(now);
        Ok(())
    }

    /// The worker of `slot` was started.
    pub fn spawned(&mut self, slot: usize, now: Instant) {
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.state != SlotState::Starting {
            return;
        }
        s.state = SlotState::Up;
        s.decoder = FrameDecoder::new(self.limits.max_output);
        s.answered = 0;
        self.counts.spawned += 1;
        if std::mem::replace(&mut s.ran, true) {
            self.counts.restarts += 1;
        }
        self.dispatch(now);
    }

    /// The worker of `slot` could not be started: try again after the
    /// back-off.
    pub fn spawn_failed(&mut self, slot: usize, now: Instant) {
        let backoff = self.limits;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if s.state != SlotState::Starting {
            return;
        }
        s.failures = s.failures.saturating_add(1);
        s.state = SlotState::Down {
            start_at: now + backoff_for(&backoff, s.failures),
        };
        self.counts.spawn_failures += 1;
    }

    /// Bytes read from `slot`'s fd 3.
    pub fn on_bytes(&mut self, slot: usize, bytes: &[u8], now: Instant) {
        let mut frames = Vec::new();
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if !matches!(s.state, SlotState::Up | SlotState::Retiring { .. }) {
            return;
        }
        let result = s.decoder.feed(bytes, &mut frames);
        for frame in frames {
            if let Err(why) = self.answer(slot, frame) {
                self.stop(slot, &why, now);
                return;
            }
        }
        if let Err(err) = result {
            self.stop(slot, &format!("broke the handler protocol: {err}"), now);
            return;
        }
        self.retire_if_due(slot, now);
        self.dispatch(now);
    }

    /// End of file on `slot`'s fd 3: the worker closed it, most often
    /// because it is exiting. It takes no more tasks; its exit is awaited
    /// for the grace (so that its tasks fail with its exit status), then
    /// its group is killed.
    pub fn on_eof(&mut self, slot: usize, now: Instant) {
        let grace = self.limits.kill_grace;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        if matches!(s.state, SlotState::Up | SlotState::Retiring { .. }) {
            let retiring_idle =
                matches!(s.state, SlotState::Retiring { .. }) && s.in_flight.is_empty();
            if !retiring_idle {
                s.failures = s.failures.saturating_add(1);
            }
            s.state = SlotState::Stopping {
                kill_at: Some(now + grace),
            };
        }
    }

    /// `slot`'s worker exited (its pidfd became readable).
    pub fn on_exit(&mut self, slot: usize, status: ExitStatus, now: Instant) {
        let limits = self.limits;
        let Some(s) = self.slots.get_mut(slot) else {
            return;
        };
        let retired = match s.state {
            SlotState::Down { .. } | SlotState::Starting => return,
            SlotState::Retiring { .. } if s.in_flight.is_empty() => true,
            SlotState::Up | SlotState::Retiring { .. } => {
                s.failures = s.failures.saturating_add(1);
                false
            }
            // Stopped, or its input ended: failures already counted.
            SlotState::Stopping { .. } => s.failures == 0,
        };
        let lost = std::mem::take(&mut s.in_flight);
        let delay = if retired {
            Duration::ZERO
        } else {
            backoff_for(&limits, s.failures)
        };
        s.state = SlotState::Down {
            start_at: now + delay,
        };
        self.actions.push_back(PoolAction::Reap { slot });
        let message = format!("the worker exited ({status}) with the task in flight");
        self.fail_all(lost, codes::WORKER_LOST, &message);
        self.poll(now);
    }

    /// Time-driven work at `now`: timeouts, SIGKILLs after the grace,
    /// starts and restarts, retirements.
    pub fn poll(&mut self, now: Instant) {
        // Tasks that waited past their deadline never reached a worker.
        if let Some(cutoff) = now.checked_sub(self.limits.timeout) {
            for task in self.waiting.take_older_than(cutoff) {
                self.counts.timeouts += 1;
                self.actions.push_back(PoolAction::Complete {
                    task,
                    outcome: Outcome::failed(
                        codes::TIMEOUT,
                        format!("no worker was free within {:?}", self.limits.timeout),
                    ),
                });
            }
        }
        for slot in 0..self.slots.len() {
            let grace = self.limits.kill_grace;
            let s = &mut self.slots[slot];
            match s.state {
                SlotState::Down { start_at } if now >= start_at => {
                    s.state = SlotState::Starting;
                    self.actions.push_back(PoolAction::Spawn { slot });
                }
                SlotState::Stopping {
                    kill_at: Some(kill_at),
                } if now >= kill_at => {
                    s.state = SlotState::Stopping { kill_at: None };
                    self.actions.push_back(PoolAction::Signal {
                        slot,
                        signal: Signal::Kill,
                    });
                }
                SlotState::Retiring {
                    closed_at: Some(closed_at),
                } if now >= closed_at + grace => {
                    s.state = SlotState::Stopping {
                        kill_at: Some(now + grace),
                    };
                    self.actions.push_back(PoolAction::Signal {
                        slot,
                        signal: Signal::Term,
                    });
                }
                SlotState::Up | SlotState::Retiring { .. }
                    if s.in_flight.iter().any(|&(_, deadline)| now >= deadline) =>
                {
                    let (late, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut s.in_flight)
                        .into_iter()
                        .partition(|&(_, deadline)| now >= deadline);
                    s.in_flight = rest;
                    self.counts.timeouts += late.len() as u64;
                    let message = format!(
                        "no result within {:?}; the worker's process group was stopped",
                        self.limits.timeout
                    );
                    self.fail_all(late, codes::TIMEOUT, &message);
                    self.stop(slot, "overran a task's deadline", now);
                }
                _ => {}
            }
        }
        self.dispatch(now);
    }

    /// When [`Pool::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let grace = self.limits.kill_grace;
        let waiting = self
            .waiting
            .oldest()
            .map(|since| since + self.limits.timeout);
        let slots = self.slots.iter().filter_map(|s| match s.state {
            SlotState::Down { start_at } => Some(start_at),
            SlotState::Stopping { kill_at } => kill_at,
            SlotState::Retiring {
                closed_at: Some(closed_at),
            } => Some(closed_at + grace),
            SlotState::Up | SlotState::Retiring { closed_at: None } => {
                s.in_flight.iter().map(|&(_, deadline)| deadline).min()
            }
            SlotState::Starting => None,
        });
        slots.chain(waiting).min()
    }

    /// One answer from `slot`'s worker.
    fn answer(&mut self, slot: usize, frame: Frame) -> Result<(), String> {
        let s = &mut self.slots[slot];
        let id = frame.id();
        let Some(at) = s.in_flight.iter().position(|&(task, _)| task == id) else {
            return Err(format!("answered task {id}, which it does not hold"));
        };
        let outcome = match frame {
            Frame::Result { output, .. } => Outcome::Ok(output),
            Frame::Failed { message, .. } => Outcome::failed(
                codes::HANDLER_FAILED,
                String::from_utf8_lossy(&message).into_owned(),
            ),
            Frame::Oversized {
                kind: KIND_RESULT | KIND_FAILED,
                body_len,
                ..
            } => Outcome::failed(
                codes::RESULT_TOO_LARGE,
                format!(
                    "the worker's answer of {body_len} bytes passed max_output ({} bytes)",
                    self.limits.max_output
                ),
            ),
            Frame::Task { .. } | Frame::Oversized { .. } => {
                return Err("sent a TASK frame".to_owned());
            }
        };
        s.in_flight.swap_remove(at);
        s.answered += 1;
        s.failures = 0;
        self.actions
            .push_back(PoolAction::Complete { task: id, outcome });
        Ok(())
    }

    /// Stop `slot`'s worker: its tasks fail, SIGTERM now, SIGKILL later.
    fn stop(&mut self, slot: usize, why: &str, now: Instant) {
        let grace = self.limits.kill_grace;
        let s = &mut self.slots[slot];
        if matches!(
            s.state,
            SlotState::Stopping { .. } | SlotState::Down { .. } | SlotState::Starting
        ) {
            return;
        }
        s.failures = s.failures.saturating_add(1);
        s.state = SlotState::Stopping {
            kill_at: Some(now + grace),
        };
        let lost = std::mem::take(&mut s.in_flight);
        self.actions.push_back(PoolAction::Signal {
            slot,
            signal: Signal::Term,
        });
        let message = format!("the worker {why}; it was stopped with the task in flight");
        self.fail_all(lost, codes::WORKER_LOST, &message);
    }

    fn fail_all(&mut self, tasks: Vec<(TaskKey, Instant)>, code: &'static str, message: &str) {
        if code == codes::WORKER_LOST {
            self.counts.worker_lost += tasks.len() as u64;
        }
        for (task, _) in tasks {
            self.actions.push_back(PoolAction::Complete {
                task,
                outcome: Outcome::failed(code, message),
            });
        }
    }

    /// Retire `slot`'s worker once it has answered `recycle_after` tasks,
    /// closing its input once it holds none.
    fn retire_if_due(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        if s.state == SlotState::Up
            && self
                .limits
                .recycle_after
                .is_some_and(|after| s.answered >= after)
        {
            s.state = SlotState::Retiring { closed_at: None };
            self.counts.recycled += 1;
        }
        if s.state == (SlotState::Retiring { closed_at: None }) && s.in_flight.is_empty() {
            s.state = SlotState::Retiring {
                closed_at: Some(now),
            };
            self.actions.push_back(PoolAction::CloseInput { slot });
        }
    }

    /// The least loaded worker with room, the search starting after the
    /// last one chosen so that ties are spread.
    fn free_slot(&self) -> Option<usize> {
        let n = self.slots.len();
        (0..n)
            .map(|i| (self.cursor + i) % n)
            .filter(|&i| {
                self.slots[i].state == SlotState::Up
                    && self.slots[i].in_flight.len() < self.limits.in_flight_per_process
            })
            .min_by_key(|&i| self.slots[i].in_flight.len())
    }

    fn dispatch(&mut self, now: Instant) {
        while !self.waiting.is_empty() {
            let Some(slot) = self.free_slot() else {
                return;
            };
            let Some((task, waited)) = self.waiting.pop(now) else {
                return;
            };
            self.send(slot, task, now - waited, now);
        }
    }

    /// Give `task`, submitted at `since`, to `slot`'s worker.
    fn send(&mut self, slot: usize, task: TaskKey, since: Instant, now: Instant) {
        let deadline = since + self.limits.timeout;
        let left = deadline.saturating_duration_since(now);
        let deadline_ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
        self.slots[slot].in_flight.push((task, deadline));
        self.cursor = (slot + 1) % self.slots.len();
        self.actions.push_back(PoolAction::Send {
            slot,
            task,
            deadline_ms,
            waited: now.saturating_duration_since(since),
        });
    }
}

/// The back-off after `failures` failures in a row.
fn backoff_for(limits: &PoolLimits, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 1u32 << (failures - 1).min(20);
    limits
        .backoff_min
        .saturating_mul(factor)
        .min(limits.backoff_max)
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
