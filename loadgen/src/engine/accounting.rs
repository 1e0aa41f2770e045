//! Accounting: each connection's counts and the check of its byte totals
//! against the agent's GOODBYE (PROTOCOL.md, "Byte accounting"), plain and
//! over TLS, and the totals of the run.
//!
//! It only reads what the connections and the tally hold once the run is
//! over; it sends nothing but close_notify where the loadgen closes first.
//! TASKs the agent read only after its GOODBYE are counted as unread, never
//! as lost, and only when the byte totals prove exactly that.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::conn::Conn;
use super::Engine;
use crate::workload::Pool;

/// Per-connection results.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ConnReport {
    /// The agent's `worker` id and session index, from its HELLO.
    pub worker: Option<String>,
    pub session: Option<u32>,
    pub tasks_ok: u64,
    pub tasks_failed: u64,
    pub tasks_wrong: u64,
    pub tasks_lost: u64,
    /// TASKs sent before this connection saw the agent's DRAIN that reached
    /// the agent only after its GOODBYE: its `bytes_received` ends exactly
    /// where they begin, so it never read them. Not lost, not answered.
    pub tasks_unread: u64,
    /// The bytes of those TASKs that reached the socket: exactly what the
    /// agent's `bytes_received` falls short of `bytes_sent` by.
    pub bytes_unread: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub agent_bytes_sent: Option<u64>,
    pub agent_bytes_received: Option<u64>,
    pub goodbye_len: Option<usize>,
    /// Over TLS: socket bytes received from the start of the record that
    /// carried GOODBYE to the end (GOODBYE's records and the closing alert).
    /// The agent's GOODBYE `bytes_sent` must equal `bytes_received` minus
    /// these; `agent_bytes_sent` includes them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_after_goodbye: Option<u64>,
    pub accounting_exact: bool,
    pub error: Option<String>,
}

/// Totals of a run.
#[derive(Debug)]
pub struct RunResult {
    pub conns: Vec<ConnReport>,
    pub histogram: Histogram<u64>,
    pub measured: Duration,
    /// Tasks sent inside the measured window whose results came back (ok,
    /// failed or wrong): what the rates and latency are computed over.
    pub measured_tasks: u64,
    /// How long the warm-up lasted (shorter than asked when `--tasks` ran
    /// out first), and the results of the tasks sent during it.
    pub warmup: Duration,
    pub warmup_tasks: u64,
    pub measured_payload_bytes: u64,
    pub measured_wire_bytes: u64,
    pub failure_codes: BTreeMap<String, u64>,
    /// TLS handshakes that failed (those connections are not in `conns`),
    /// and the first one's description.
    pub tls_handshake_failures: u64,
    pub tls_handshake_error: Option<String>,
}

impl Conn {
    /// Close the connection if the agent did not, count what was lost and
    /// check the byte totals against the agent's GOODBYE.
    fn settle(&mut self, pool: &Pool) {
        self.close_tls();
        self.report.tasks_lost = u64::from(self.in_flight);
        match self.goodbye {
            Some((counts, len)) => {
                self.report.agent_bytes_received = Some(counts.bytes_received);
                self.report.goodbye_len = Some(len);
                match self.tls.as_deref() {
                    None => {
                        self.report.agent_bytes_sent = Some(counts.bytes_sent + len as u64);
                        let sent_exact =
                            counts.bytes_sent + len as u64 == self.report.bytes_received;
                        // TASKs already on their way when the agent's
                        // DRAIN arrived can reach it after its GOODBYE.
                        // Then it read exactly everything before them,
                        // and its total falls short by exactly their
                        // frames: unread, not lost.
                        let unread_bytes: u64 = self
                            .slots
                            .iter()
                            .filter(|slot| slot.sent_ns != u64::MAX)
                            .map(|slot| pool.task_frame_len(slot.task))
                            .sum();
                        // Of those frames, what never reached the socket
                        // (queued when the connection closed).
                        let unwritten = self.unwritten(pool);
                        let received_exact = counts.bytes_received == self.report.bytes_sent;
                        let unread = !received_exact
                            && unread_bytes > 0
                            && self.report.bytes_sent.checked_sub(counts.bytes_received)
                                == unread_bytes.checked_sub(unwritten);
                        if sent_exact && unread {
                            self.report.tasks_unread = self.report.tasks_lost;
                            self.report.bytes_unread =
                                self.report.bytes_sent - counts.bytes_received;
                            self.report.tasks_lost = 0;
                        }
                        self.report.accounting_exact = sent_exact && (received_exact || unread);
                    }
                    Some(tls) => {
                        // PROTOCOL.md, "Byte accounting" over TLS: GOODBYE
                        // counts the socket bytes written before the
                        // record that carried it; that record and the
                        // closing alert are what the loadgen received
                        // after that offset.
                        let offset = tls.goodbye_offset.unwrap_or(0);
                        let after = self.report.bytes_received.saturating_sub(offset);
                        self.report.tls_after_goodbye = Some(after);
                        self.report.agent_bytes_sent = Some(counts.bytes_sent + after);
                        self.report.accounting_exact = tls.goodbye_offset.is_some()
                            && counts.bytes_sent == offset
                            && counts.bytes_received == self.report.bytes_sent;
                    }
                }
            }
            None => {
                self.report
                    .error
                    .get_or_insert_with(|| "no GOODBYE: byte totals cannot be checked".to_owned());
            }
        }
    }
}

impl Engine {
    /// The totals of the run.
    pub fn finish(mut self) -> RunResult {
        for conn in &mut self.conns {
            conn.settle(&self.pool);
        }
        let measured_tasks = self.tally.histogram.len();
        // Payload bytes: the mix's mean payload times the measured tasks.
        let mean_payload = self
            .pool
            .order
            .iter()
            .map(|&i| self.pool.tasks[i as usize].payload.len() as f64)
            .sum::<f64>()
            / self.pool.order.len().max(1) as f64;
        let wire = self
            .wire_at_end
            .unwrap_or(0)
            .saturating_sub(self.wire_at_start.unwrap_or(0));
        RunResult {
            conns: self
                .conns
                .into_iter()
                .filter(|c| !c.tls.as_ref().is_some_and(|t| t.handshake_failed))
                .map(|c| c.report)
                .collect(),
            histogram: self.tally.histogram,
            measured: self.measured,
            measured_tasks,
            warmup: self.warmup,
            warmup_tasks: self.tally.warmup_tasks,
            measured_payload_bytes: (mean_payload * measured_tasks as f64) as u64,
            measured_wire_bytes: wire,
            failure_codes: self.tally.failure_codes,
            tls_handshake_failures: self.tls_failures.count,
            tls_handshake_error: self.tls_failures.first,
        }
    }
}
