//! The metrics of declared handlers, every series labelled `handler`.
//!
//! [`crate::exec::Service`] records them itself (through handles made once
//! per handler, so a task pays an atomic add, not a lookup). [`describe`]
//! gives their help texts to the installed recorder; call it once the
//! recorder is installed. [`WAIT_BUCKETS`] are the buckets meant for
//! [`HANDLER_WAIT`]: without them the Prometheus exporter renders the
//! histogram as a summary.

use metrics::{Counter, Gauge, Histogram};

/// Time a task waited for a free `pool` process or `exec` slot (histogram).
pub const HANDLER_WAIT: &str = "ringworker_handler_wait_seconds";
/// Processes of the handler alive now (gauge).
pub const HANDLER_PROCESSES: &str = "ringworker_handler_processes";
/// `pool` processes started again after one ended (counter).
pub const HANDLER_RESTARTS_TOTAL: &str = "ringworker_handler_restarts_total";
/// Tasks answered FAILED `timeout` (counter).
pub const HANDLER_TIMEOUTS_TOTAL: &str = "ringworker_handler_timeouts_total";
/// Children that could not be started (counter).
pub const HANDLER_SPAWN_FAILURES_TOTAL: &str = "ringworker_handler_spawn_failures_total";

/// The label every series carries: the declared handler's name.
pub const HANDLER_LABEL: &str = "handler";

/// Buckets for [`HANDLER_WAIT`], in seconds: most tasks wait nothing (the
/// first bucket), a saturated handler waits up to its timeout.
pub const WAIT_BUCKETS: [f64; 14] = [
    0.000_01, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
];

/// Every series name, for checks and dashboards.
pub const ALL: [&str; 5] = [
    HANDLER_WAIT,
    HANDLER_PROCESSES,
    HANDLER_RESTARTS_TOTAL,
    HANDLER_TIMEOUTS_TOTAL,
    HANDLER_SPAWN_FAILURES_TOTAL,
];

/// Give the installed recorder the help text and unit of each series.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        HANDLER_WAIT,
        Unit::Seconds,
        "Time a task of a declared handler waited for a free pool process or exec slot."
    );
    describe_gauge!(
        HANDLER_PROCESSES,
        "Processes of a declared handler alive now (pool workers, or exec children running)."
    );
    describe_counter!(
        HANDLER_RESTARTS_TOTAL,
        "Pool processes started again after one exited, crashed, overran a deadline or was recycled."
    );
    describe_counter!(
        HANDLER_TIMEOUTS_TOTAL,
        "Tasks of a declared handler answered FAILED timeout."
    );
    describe_counter!(
        HANDLER_SPAWN_FAILURES_TOTAL,
        "Children of a declared handler that could not be started."
    );
}

/// One handler's series, registered once.
#[derive(Debug, Clone)]
pub(crate) struct HandlerMetrics {
    pub wait: Histogram,
    pub processes: Gauge,
    pub restarts: Counter,
    pub timeouts: Counter,
    pub spawn_failures: Counter,
}

impl HandlerMetrics {
    pub fn new(handler: &str) -> Self {
        let label = [(HANDLER_LABEL, handler.to_owned())];
        HandlerMetrics {
            wait: metrics::histogram!(HANDLER_WAIT, &label),
            processes: metrics::gauge!(HANDLER_PROCESSES, &label),
            restarts: metrics::counter!(HANDLER_RESTARTS_TOTAL, &label),
            timeouts: metrics::counter!(HANDLER_TIMEOUTS_TOTAL, &label),
            spawn_failures: metrics::counter!(HANDLER_SPAWN_FAILURES_TOTAL, &label),
        }
    }
}
