//! Scheduling: what to send and when. [`Pacing`] is the closed loop (a
//! number of tasks in flight per session) or the open loop (a total rate,
//! each task with the time it was meant to be sent, so latency counts from
//! there and a slow agent cannot hide behind its own backlog).
//!
//! [`Engine::fill`] queues TASKs on a connection's machine and takes a task
//! slot for each; it never writes to a socket (that is the flush) and never
//! sends past `--tasks`, past the slots' bound, or on a connection that
//! stopped sending.

use std::time::Instant;

use super::conn::{ConnPhase, Segment, TaskSlot};
use super::Engine;

/// How the workload paces itself.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// Keep this many tasks in flight per session.
    Closed { concurrency: u32 },
    /// Send this many tasks per second in all, latency from the intended time.
    Open { rate: f64 },
}

/// Task slots per connection, at most (tasks in flight on one connection).
const MAX_SLOTS: u32 = 65_536;

/// Payloads at least this large are written from the pool with vectored
/// writes rather than copied into the output buffer.
const LARGE_PAYLOAD: usize = 16 * 1024;

impl Engine {
    /// Queue new TASKs on connection `index` as the pacing allows.
    pub(super) fn fill(&mut self, index: usize, now: Instant, measuring: bool) {
        let now_ns = self.ns(now);
        let sessions = self.spec.sessions.max(1);
        let conn = &mut self.conns[index];
        if conn.phase != ConnPhase::Running || !conn.sending {
            return;
        }
        loop {
            if self
                .spec
                .tasks
                .is_some_and(|limit| self.sent_total >= limit)
            {
                return;
            }
            let intended_ns = match self.spec.pacing {
                Pacing::Closed { concurrency } => {
                    if conn.in_flight >= concurrency {
                        return;
                    }
                    now_ns
                }
                Pacing::Open { rate } => {
                    if conn.next_intended_ns > now_ns || conn.in_flight >= MAX_SLOTS - 1 {
                        return;
                    }
                    let intended = conn.next_intended_ns;
                    let interval_ns = (1e9 * f64::from(sessions) / rate).max(1.0);
                    conn.next_intended_ns = intended + interval_ns as u64;
                    intended
                }
            };
            let slot = match conn.free.pop() {
                Some(slot) => slot,
                None => {
                    if conn.slots.len() as u32 >= MAX_SLOTS {
                        return;
                    }
                    conn.slots.push(TaskSlot::default());
                    conn.slots.len() as u32 - 1
                }
            };
            let task = self.pool.pick(self.sent_total);
            let entry = &mut conn.slots[slot as usize];
            entry.generation = entry.generation.wrapping_add(1);
            entry.task = task;
            entry.sent_ns = intended_ns;
            entry.measured = measuring;
            let id = (u64::from(entry.generation) << 32) | u64::from(slot);
            let prepared = &self.pool.tasks[task as usize];
            let handler = &self.pool.handlers[prepared.handler];
            let queued = if prepared.payload.len() >= LARGE_PAYLOAD {
                // Header now, payload written from the pool by `flush`:
                // large payloads are never copied into the output buffer.
                conn.machine
                    .send_task_head(id, handler, prepared.payload.len(), self.spec.ack)
                    .map(|()| {
                        let head = conn.machine.take_output(Vec::new());
                        conn.segments.push_back(Segment::Bytes(head, 0));
                        conn.segments.push_back(Segment::Payload(task, 0));
                    })
            } else {
                conn.machine
                    .send_task(id, handler, &prepared.payload, self.spec.ack)
            };
            if queued.is_err() {
                conn.slots[slot as usize].sent_ns = u64::MAX;
                conn.free.push(slot);
                conn.sending = false;
                conn.report
                    .error
                    .get_or_insert_with(|| "a TASK exceeds the agent's max_body".to_owned());
                return;
            }
            conn.in_flight += 1;
            self.sent_total += 1;
        }
    }
}
