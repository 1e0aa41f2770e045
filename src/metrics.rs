//! Prometheus metrics and the JSON status, published from the runtimes'
//! live counters.
//!
//! The byte counters are the runtimes' own atomics ([`AgentStats`]): this
//! module reads them and publishes them (gauges per session, counters per
//! process) whenever `/metrics` is rendered and at least every second, so a
//! scrape always sees exact values and nothing is counted twice. Task counts
//! come the same way from the per-session, per-handler counts; only the
//! handler-time histogram is recorded directly (sampled, see
//! [`crate::session::TIMING_SAMPLE`]). It never touches an event loop.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::stats::{AgentStats, SessionState};

pub const SESSION_BYTES_SENT: &str = "ringworker_session_bytes_sent";
pub const SESSION_BYTES_RECEIVED: &str = "ringworker_session_bytes_received";
pub const BYTES_SENT_TOTAL: &str = "ringworker_bytes_sent_total";
pub const BYTES_RECEIVED_TOTAL: &str = "ringworker_bytes_received_total";
pub const SESSION_CONNECTED: &str = "ringworker_session_connected";
pub const TASKS_IN_FLIGHT: &str = "ringworker_tasks_in_flight";
pub const TASKS_TOTAL: &str = "ringworker_tasks_total";
pub const TASK_DURATION: &str = "ringworker_task_duration_seconds";
pub const RECONNECTS_TOTAL: &str = "ringworker_reconnects_total";
pub const BUILD_INFO: &str = "ringworker_build_info";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "ringworker_tls_handshake_failures_total";

/// Buckets of the handler-time histogram, in seconds.
const DURATION_BUCKETS: [f64; 16] = [
    0.000_001, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
    1.0, 5.0, 10.0, 60.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide Prometheus recorder (once; later calls return
/// the same handle).
pub fn recorder() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(TASK_DURATION.to_owned()), &DURATION_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a library user's own):
        // then our metrics go there and this handle renders what it has.
        let _ = ::metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        SESSION_BYTES_SENT,
        Unit::Bytes,
        "Bytes written on the session's current connection."
    );
    describe_gauge!(
        SESSION_BYTES_RECEIVED,
        Unit::Bytes,
        "Bytes read on the session's current connection."
    );
    describe_counter!(
        BYTES_SENT_TOTAL,
        Unit::Bytes,
        "Bytes written, all sessions and connections since start."
    );
    describe_counter!(
        BYTES_RECEIVED_TOTAL,
        Unit::Bytes,
        "Bytes read, all sessions and connections since start."
    );
    describe_gauge!(SESSION_CONNECTED, "1 after WELCOME, 0 otherwise.");
    describe_gauge!(TASKS_IN_FLIGHT, "Tasks read and not yet answered.");
    describe_counter!(TASKS_TOTAL, "RESULTs written, by handler and outcome.");
    describe_histogram!(
        TASK_DURATION,
        Unit::Seconds,
        "Handler time; one task in 16 per session is timed, delayed answers always."
    );
    describe_counter!(
        RECONNECTS_TOTAL,
        "Dial attempts after each session's first."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the labels say what is running.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes with the manager that failed (untrusted, expired or misnamed certificate, client certificate refused, not TLS)."
    );
}

/// Publishes one agent's stats and renders `/metrics` and `/status`.
pub struct Telemetry {
    handle: &'static PrometheusHandle,
    stats: Arc<AgentStats>,
    /// Per session: bytes sent, bytes received, connected, in flight.
    session_gauges: Vec<[::metrics::Gauge; 4]>,
    bytes_sent_total: ::metrics::Counter,
    bytes_received_total: ::metrics::Counter,
    reconnects_total: ::metrics::Counter,
    /// Per handler (registry order): ok, failed.
    task_counters: Vec<[::metrics::Counter; 2]>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("sessions", &self.session_gauges.len())
            .finish()
    }
}

impl Telemetry {
    pub fn new(stats: Arc<AgentStats>) -> Telemetry {
        let handle = recorder();
        ::metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "runtime" => stats.runtime).set(1.0);
        use ::metrics::{counter, gauge};
        let session_gauges = stats
            .sessions
            .iter()
            .map(|s| {
                let label = s.index.to_string();
                [
                    gauge!(SESSION_BYTES_SENT, "session" => label.clone()),
                    gauge!(SESSION_BYTES_RECEIVED, "session" => label.clone()),
                    gauge!(SESSION_CONNECTED, "session" => label.clone()),
                    gauge!(TASKS_IN_FLIGHT, "session" => label),
                ]
            })
            .collect();
        let task_counters = stats
            .handler_names
            .iter()
            .map(|name| {
                [
                    counter!(TASKS_TOTAL, "handler" => name.clone(), "outcome" => "ok"),
                    counter!(TASKS_TOTAL, "handler" => name.clone(), "outcome" => "failed"),
                ]
            })
            .collect();
        // Exported from the start (0), so rate() and alerts see the series.
        counter!(TLS_HANDSHAKE_FAILURES_TOTAL).increment(0);
        let telemetry = Telemetry {
            handle,
            session_gauges,
            bytes_sent_total: counter!(BYTES_SENT_TOTAL),
            bytes_received_total: counter!(BYTES_RECEIVED_TOTAL),
            reconnects_total: counter!(RECONNECTS_TOTAL),
            task_counters,
            stats,
        };
        telemetry.refresh();
        telemetry
    }

    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }

    /// Copy the live counters into the recorder.
    pub fn refresh(&self) {
        let stats = &self.stats;
        for (session, gauges) in stats.sessions.iter().zip(&self.session_gauges) {
            let connected = matches!(
                session.state(),
                SessionState::Connected | SessionState::Draining
            );
            gauges[0].set(session.bytes_sent() as f64);
            gauges[1].set(session.bytes_received() as f64);
            gauges[2].set(if connected { 1.0 } else { 0.0 });
            gauges[3].set(session.in_flight() as f64);
        }
        self.bytes_sent_total.absolute(stats.bytes_sent_total());
        self.bytes_received_total
            .absolute(stats.bytes_received_total());
        self.reconnects_total.absolute(stats.reconnects_total());
        for (index, counters) in self.task_counters.iter().enumerate() {
            for (counter, ok) in counters.iter().zip([true, false]) {
                counter.absolute(
                    stats
                        .sessions
                        .iter()
                        .map(|s| s.handler_tasks(Some(index), ok))
                        .sum(),
                );
            }
        }
        // Names no handler has: one series, created only when needed.
        for (ok, outcome) in [(true, "ok"), (false, "failed")] {
            let unknown: u64 = stats
                .sessions
                .iter()
                .map(|s| s.handler_tasks(None, ok))
                .sum();
            if unknown > 0 {
                ::metrics::counter!(TASKS_TOTAL, "handler" => "unknown", "outcome" => outcome)
                    .absolute(unknown);
            }
        }
    }

    /// `/metrics`: refresh, then the Prometheus text exposition.
    pub fn render_metrics(&self) -> String {
        self.refresh();
        self.handle.render()
    }

    /// Drain histogram samples into their buckets so memory stays bounded.
    pub fn upkeep(&self) {
        self.refresh();
        self.handle.run_upkeep();
    }

    /// `/readyz`: at least one session has completed its handshake.
    pub fn ready(&self) -> bool {
        self.stats.connected_sessions() > 0
    }

    /// `/status`: agent id, runtime, and every session's numbers.
    pub fn render_status(&self) -> String {
        let stats = &self.stats;
        let status = serde_json::json!({
            "agent": stats.worker_id,
            "runtime": stats.runtime,
            "version": env!("CARGO_PKG_VERSION"),
            "stopping": stats.stop_requested(),
            "connected_sessions": stats.connected_sessions(),
            "bytes_sent_total": stats.bytes_sent_total(),
            "bytes_received_total": stats.bytes_received_total(),
            "bytes_sent_total_formatted": crate::format::format_bytes(stats.bytes_sent_total()),
            "bytes_received_total_formatted": crate::format::format_bytes(stats.bytes_received_total()),
            "tasks_done": stats.tasks_done(),
            "reconnects_total": stats.reconnects_total(),
            "sessions": stats.sessions.iter().map(|s| s.snapshot()).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&status).unwrap_or_else(|_| "{}".to_owned())
    }
}
