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
//!
//! Per-session series (`ringworker_session_*` and the per-session
//! `ringworker_tasks_in_flight`) are one series per session and metric: at
//! 1,000 sessions they are most of a scrape, so
//! [`TelemetryOptions::session_metrics`] can turn them off. The process-wide
//! series (`ringworker_sessions_connected`, `ringworker_agent_tasks_in_flight`,
//! the `_total` counters, the histogram, `ringworker_runtime_info`) are
//! exported either way, so dashboards and alerts built on them work in both
//! modes. The standard `process_*` series are read from `/proc` on each
//! scrape ([`metrics_process`]).

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
/// Sessions handed from one event loop to another (uring runtime).
pub const SESSIONS_MOVED_TOTAL: &str = "ringworker_sessions_moved_total";
pub const BUILD_INFO: &str = "ringworker_build_info";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "ringworker_tls_handshake_failures_total";
/// Sessions connected now (process-wide, whatever `session_metrics` says).
pub const SESSIONS_CONNECTED: &str = "ringworker_sessions_connected";
/// Sessions the agent keeps open when it can (`--sessions`).
pub const SESSIONS_CONFIGURED: &str = "ringworker_sessions_configured";
/// Tasks read and not yet answered, all sessions together.
pub const AGENT_TASKS_IN_FLIGHT: &str = "ringworker_agent_tasks_in_flight";
/// Always 1; `runtime` is the runtime in use, `requested` the one asked for.
pub const RUNTIME_INFO: &str = "ringworker_runtime_info";

/// The series exported once per session; `session_metrics = false` drops
/// them.
pub const PER_SESSION: [&str; 4] = [
    SESSION_BYTES_SENT,
    SESSION_BYTES_RECEIVED,
    SESSION_CONNECTED,
    TASKS_IN_FLIGHT,
];

/// The `process_*` series every scrape carries, as client libraries name
/// them (name, type, help).
pub const PROCESS_METRICS: [(&str, &str, &str); 8] = [
    (
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    ),
    (
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
    ),
    (
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors (the soft limit).",
    ),
    (
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
    ),
    (
        "process_virtual_memory_max_bytes",
        "gauge",
        "Maximum amount of virtual memory available in bytes (1.8e19 when unlimited).",
    ),
    (
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
    ),
    (
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
    ),
    (
        "process_threads",
        "gauge",
        "Number of OS threads in the process.",
    ),
];

/// What [`Telemetry`] exports beyond the fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelemetryOptions {
    /// Export the per-session series (`ringworker_session_*` and the
    /// per-session `ringworker_tasks_in_flight`); `session_metrics` in the
    /// configuration.
    pub session_metrics: bool,
    /// The runtime asked for (`auto`, `uring`, `blocking`): the `requested`
    /// label of `ringworker_runtime_info`, so an alert can tell a fallback
    /// from a deliberate choice.
    pub requested_runtime: &'static str,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        TelemetryOptions {
            session_metrics: true,
            requested_runtime: "auto",
        }
    }
}

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
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(crate::exec::metrics::HANDLER_WAIT.to_owned()),
                    &crate::exec::metrics::WAIT_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a library user's own):
        // then our metrics go there and this handle renders what it has.
        let _ = ::metrics::set_global_recorder(recorder);
        describe();
        crate::exec::metrics::describe();
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
        "Handler time; one task in 128 per session (the first of each connection included) is timed; answers that come later (sleep, declared handlers) always."
    );
    describe_counter!(
        RECONNECTS_TOTAL,
        "Dial attempts after each session's first."
    );
    describe_counter!(
        SESSIONS_MOVED_TOTAL,
        "Sessions handed from one event loop to another (uring runtime)."
    );
    describe_gauge!(BUILD_INFO, "Always 1; the labels say what is running.");
    describe_gauge!(
        SESSIONS_CONNECTED,
        "Sessions that have completed their handshake and not ended, all sessions together."
    );
    describe_gauge!(
        SESSIONS_CONFIGURED,
        "Sessions this agent keeps open to the manager (--sessions)."
    );
    describe_gauge!(
        AGENT_TASKS_IN_FLIGHT,
        "Tasks read and not yet answered, all sessions together."
    );
    describe_gauge!(
        RUNTIME_INFO,
        "Always 1; runtime is the one in use (uring or blocking), requested the one asked for (auto, uring or blocking)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "TLS handshakes with the manager that failed (untrusted, expired or misnamed certificate, client certificate refused, not TLS)."
    );
}

/// Publishes one agent's stats and renders `/metrics` and `/status`.
pub struct Telemetry {
    handle: &'static PrometheusHandle,
    stats: Arc<AgentStats>,
    /// Per session: bytes sent, bytes received, connected, in flight
    /// (empty when `session_metrics` is off).
    session_gauges: Vec<[::metrics::Gauge; 4]>,
    sessions_connected: ::metrics::Gauge,
    tasks_in_flight: ::metrics::Gauge,
    options: TelemetryOptions,
    bytes_sent_total: ::metrics::Counter,
    bytes_received_total: ::metrics::Counter,
    reconnects_total: ::metrics::Counter,
    sessions_moved_total: ::metrics::Counter,
    /// Per handler (registry order): ok, failed.
    task_counters: Vec<[::metrics::Counter; 2]>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("sessions", &self.stats.sessions.len())
            .field("options", &self.options)
            .finish()
    }
}

impl Telemetry {
    /// Telemetry with the default options: per-session series on, runtime
    /// requested `auto`.
    pub fn new(stats: Arc<AgentStats>) -> Telemetry {
        Telemetry::with_options(stats, TelemetryOptions::default())
    }

    pub fn with_options(stats: Arc<AgentStats>, options: TelemetryOptions) -> Telemetry {
        let handle = recorder();
        use ::metrics::{counter, gauge};
        gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "runtime" => stats.runtime)
            .set(1.0);
        gauge!(RUNTIME_INFO, "runtime" => stats.runtime, "requested" => options.requested_runtime)
            .set(1.0);
        gauge!(SESSIONS_CONFIGURED).set(stats.sessions.len() as f64);
        let per_session: &[Arc<crate::stats::SessionStats>] = if options.session_metrics {
            &stats.sessions
        } else {
            &[]
        };
        let session_gauges = per_session
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
            sessions_connected: gauge!(SESSIONS_CONNECTED),
            tasks_in_flight: gauge!(AGENT_TASKS_IN_FLIGHT),
            options,
            bytes_sent_total: counter!(BYTES_SENT_TOTAL),
            bytes_received_total: counter!(BYTES_RECEIVED_TOTAL),
            reconnects_total: counter!(RECONNECTS_TOTAL),
            sessions_moved_total: counter!(SESSIONS_MOVED_TOTAL),
            task_counters,
            stats,
        };
        telemetry.refresh();
        telemetry
    }

    pub fn options(&self) -> TelemetryOptions {
        self.options
    }

    pub fn stats(&self) -> &Arc<AgentStats> {
        &self.stats
    }

    /// Copy the live counters into the recorder.
    pub fn refresh(&self) {
        let stats = &self.stats;
        let mut connected_sessions = 0u64;
        let mut in_flight = 0u64;
        for (index, session) in stats.sessions.iter().enumerate() {
            let connected = matches!(
                session.state(),
                SessionState::Connected | SessionState::Draining
            );
            let session_in_flight = session.in_flight();
            connected_sessions += u64::from(connected);
            in_flight += session_in_flight;
            if let Some(gauges) = self.session_gauges.get(index) {
                gauges[0].set(session.bytes_sent() as f64);
                gauges[1].set(session.bytes_received() as f64);
                gauges[2].set(if connected { 1.0 } else { 0.0 });
                gauges[3].set(session_in_flight as f64);
            }
        }
        self.sessions_connected.set(connected_sessions as f64);
        self.tasks_in_flight.set(in_flight as f64);
        self.bytes_sent_total.absolute(stats.bytes_sent_total());
        self.bytes_received_total
            .absolute(stats.bytes_received_total());
        self.reconnects_total.absolute(stats.reconnects_total());
        self.sessions_moved_total
            .absolute(stats.sessions_moved_total());
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

    /// `/metrics`: refresh, then the Prometheus text exposition, with the
    /// `process_*` series read from `/proc` now.
    pub fn render_metrics(&self) -> String {
        self.refresh();
        let mut text = self.handle.render();
        render_process(&mut text, &metrics_process::collector::collect());
        text
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
            "sessions_moved_total": stats.sessions_moved_total(),
            "handlers": stats.handler_status(),
            "sessions": stats.sessions.iter().map(|s| s.snapshot()).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&status).unwrap_or_else(|_| "{}".to_owned())
    }
}

/// Append the `process_*` series, named and typed as the Prometheus client
/// libraries export them. Written here rather than through the recorder: a
/// recorder counter holds an integer, and CPU seconds need their fraction.
fn render_process(out: &mut String, process: &metrics_process::collector::Metrics) {
    use std::fmt::Write;
    let values = [
        process.cpu_seconds_total,
        process.open_fds.map(|v| v as f64),
        // 0 is how the collector reports an unlimited soft limit: leave it
        // out rather than claim no descriptor may be opened.
        process.max_fds.filter(|&v| v > 0).map(|v| v as f64),
        process.virtual_memory_bytes.map(|v| v as f64),
        // Unlimited as client_golang reports it: RLIM_INFINITY.
        process
            .virtual_memory_max_bytes
            .map(|v| if v == 0 { u64::MAX as f64 } else { v as f64 }),
        process.resident_memory_bytes.map(|v| v as f64),
        process.start_time_seconds.map(|v| v as f64),
        process.threads.map(|v| v as f64),
    ];
    for ((name, kind, help), value) in PROCESS_METRICS.iter().zip(values) {
        if let Some(value) = value {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_series_are_typed_and_unlimited_limits_are_spelled_out() {
        let mut text = String::new();
        render_process(
            &mut text,
            &metrics_process::collector::Metrics {
                cpu_seconds_total: Some(1.25),
                open_fds: Some(12),
                max_fds: Some(0),
                virtual_memory_bytes: Some(4096),
                virtual_memory_max_bytes: Some(0),
                resident_memory_bytes: Some(2048),
                start_time_seconds: Some(1_700_000_000),
                threads: None,
            },
        );
        assert!(text.contains(
            "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.25\n"
        ));
        assert!(text.contains("\nprocess_open_fds 12\n"));
        assert!(!text.contains("process_max_fds"), "{text}");
        assert!(!text.contains("process_threads"), "{text}");
        assert!(text.contains("\nprocess_virtual_memory_max_bytes 18446744073709552000\n"));
        assert!(text.contains("\nprocess_start_time_seconds 1700000000\n"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"));
    }
}
