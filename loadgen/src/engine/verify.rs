//! Verification: what the agent's frames mean for the run. Every RESULT is
//! matched to its task slot by id and generation and checked against the
//! pool's expected bytes (ok, failed with an error code, or wrong), and its
//! latency is recorded when it was sent inside the measured window; HELLO,
//! GOODBYE, ERROR, refusals and DRAIN update the connection.
//!
//! A RESULT for an unknown or already answered id counts as wrong, never as
//! ok. Nothing here reads or writes a socket.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use ringworker::manager::ManagerEventRef;

use super::conn::{Conn, ConnPhase};
use crate::workload::Pool;

/// What the results of a run add up to, beyond each connection's counts.
#[derive(Debug)]
pub(super) struct Tally {
    /// Latency of the measured tasks, in microseconds.
    pub(super) histogram: Histogram<u64>,
    /// Failed tasks by the error code in their RESULT.
    pub(super) failure_codes: BTreeMap<String, u64>,
    /// Results of tasks sent during the warm-up.
    pub(super) warmup_tasks: u64,
}

impl Tally {
    pub(super) fn new() -> Result<Tally, hdrhistogram::CreationError> {
        Ok(Tally {
            histogram: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
            failure_codes: BTreeMap::new(),
            warmup_tasks: 0,
        })
    }
}

impl Conn {
    /// Take every event the machine has decoded; `now_ns` is when the bytes
    /// that completed them were read.
    pub(super) fn handle_events(&mut self, pool: &Pool, tally: &mut Tally, now_ns: u64) {
        while let Some(event) = self.machine.poll_event_ref() {
            match event {
                ManagerEventRef::Hello(hello) => {
                    self.report.session = Some(hello.session);
                    self.report.worker = Some(hello.worker);
                    self.phase = ConnPhase::Running;
                }
                ManagerEventRef::Result { id, failed, body } => {
                    let slot = (id & 0xFFFF_FFFF) as usize;
                    let generation = (id >> 32) as u32;
                    let Some(entry) = self
                        .slots
                        .get(slot)
                        .copied()
                        .filter(|e| e.generation == generation && e.sent_ns != u64::MAX)
                    else {
                        self.report.tasks_wrong += 1;
                        continue;
                    };
                    self.slots[slot].sent_ns = u64::MAX;
                    self.free.push(slot as u32);
                    self.in_flight -= 1;
                    let prepared = &pool.tasks[entry.task as usize];
                    if failed {
                        self.report.tasks_failed += 1;
                        let code = serde_json::from_slice::<ringworker::protocol::ErrorBody>(body)
                            .map(|b| b.code)
                            .unwrap_or_else(|_| "unparseable".to_owned());
                        *tally.failure_codes.entry(code).or_default() += 1;
                    } else if prepared
                        .expected
                        .as_deref()
                        .is_none_or(|expected| expected == body)
                    {
                        self.report.tasks_ok += 1;
                    } else {
                        self.report.tasks_wrong += 1;
                    }
                    if entry.measured {
                        let micros = now_ns.saturating_sub(entry.sent_ns) / 1000;
                        let _ = tally.histogram.record(micros.max(1));
                    } else {
                        tally.warmup_tasks += 1;
                    }
                }
                ManagerEventRef::Goodbye { counts, frame_len } => {
                    if let Some(counts) = counts {
                        self.goodbye = Some((counts, frame_len));
                    }
                    if let Some(tls) = self.tls.as_deref_mut() {
                        // The worker sends nothing after GOODBYE but
                        // close_notify, which carries no plaintext.
                        tls.goodbye_offset = Some(tls.last_record_offset);
                    }
                }
                ManagerEventRef::Error { code, message } => {
                    self.report.error = Some(format!("agent sent ERROR {code}: {message}"));
                }
                ManagerEventRef::Refused { code, message } => {
                    self.report.error = Some(format!("refused the agent: {code}: {message}"));
                }
                ManagerEventRef::Drain => {
                    // The agent is stopping: what it reads from here on
                    // is refused with `draining`, and bytes still in
                    // flight when it says GOODBYE would break the byte
                    // check. Send nothing more; wait for the results.
                    self.sending = false;
                }
                ManagerEventRef::Ack { .. }
                | ManagerEventRef::Ping { .. }
                | ManagerEventRef::Pong { .. } => {}
            }
        }
    }
}
