//! How a connection's end is reported: the warning when it was not graceful
//! and the totals line of AGENT.md (`session N closed: sent ...`), with the
//! byte counts formatted.
//!
//! It only logs and reads counters; it never changes the session's state
//! beyond the last error it records for a broken socket.

use std::time::Instant;

use crate::format::format_bytes;

use super::WorkerSession;

impl WorkerSession {
    /// Log how the connection ended: a warning with the reason when it was
    /// not graceful (`broken` is set when the socket failed under it), then
    /// the totals line.
    pub fn log_end(&self, broken: Option<&str>) {
        let index = self.index;
        // Repeated lines of one kind (a manager that refuses every session
        // the same way) are counted, not repeated: log_limit.
        let now = Instant::now();
        match (&self.closed, broken) {
            (Some(reason), None) if reason.is_graceful() => {}
            (Some(reason), None) => {
                crate::log_limit::warn_session(index, &reason.to_string(), now);
            }
            (_, Some(why)) => {
                let lost = self.in_flight();
                self.stats.set_last_error(Some(why.to_owned()));
                if lost > 0 {
                    let what = format!("{why}; {lost} tasks in flight lost to it");
                    crate::log_limit::warn_session(index, &what, now);
                } else {
                    crate::log_limit::warn_session(index, why, now);
                }
            }
            (None, None) => {}
        }
        // Text lines end as AGENT.md shows them, so the totals are fields
        // only where fields have keys of their own (JSON logs).
        let json = crate::logging::current_format(crate::config::LogFormat::Text)
            == crate::config::LogFormat::Json;
        if json {
            tracing::info!(
                session = index,
                bytes_sent = self.stats.bytes_sent(),
                bytes_received = self.stats.bytes_received(),
                tasks = self.tasks_this_connection,
                "{}",
                self.summary_line()
            );
        } else {
            tracing::info!("{}", self.summary_line());
        }
    }

    /// The line logged when the connection ends (AGENT.md).
    pub fn summary_line(&self) -> String {
        let sent = self.stats.bytes_sent();
        let received = self.stats.bytes_received();
        format!(
            "session {} closed: sent {} ({} B), received {} ({} B), {} tasks",
            self.index,
            format_bytes(sent),
            sent,
            format_bytes(received),
            received,
            self.tasks_this_connection
        )
    }
}
