//! Repeated warnings, counted instead of repeated.
//!
//! A manager that is down makes every session fail every dial, and a
//! hostile one can answer each HELLO with the same ERROR: logged line by
//! line, 1,000 sessions wrote 9,094 WARN lines in 20 s. A [`RepeatLimiter`]
//! lets the first line of a kind through, swallows the same line for an
//! interval while counting it, and lets the next one through with that
//! count, so the log says what happens and how often in a bounded number of
//! lines. It holds at most [`MAX_KINDS`] kinds of line; the text it keys on
//! comes capped from [`crate::format::peer_text`] where a peer wrote it.
//!
//! It never sleeps and runs no timer: counts are reported by the next line
//! of the same kind, or by [`RepeatLimiter::take_suppressed`] when the
//! condition ends (a dial that succeeds again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the same line is counted before it is logged again.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Most kinds of line tracked at once; beyond it, kinds whose interval has
/// passed are forgotten, and if none has, the new kind is logged uncounted.
pub const MAX_KINDS: usize = 256;

/// What to do with one occurrence of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `suppressed` occurrences of it were swallowed since it was
    /// last logged, over `over`.
    Log { suppressed: u64, over: Duration },
    /// Swallow it: it was logged less than the interval ago.
    Suppress,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

/// Counts repeats of each kind of line; shared by every session.
#[derive(Debug)]
pub struct RepeatLimiter {
    interval: Duration,
    windows: Mutex<HashMap<String, Window>>,
}

impl RepeatLimiter {
    pub fn new(interval: Duration) -> Self {
        RepeatLimiter {
            interval,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// One occurrence of the line `kind` at `now`.
    pub fn check(&self, kind: &str, now: Instant) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(window) = windows.get_mut(kind) {
            let over = now.saturating_duration_since(window.logged_at);
            if over < self.interval {
                window.suppressed += 1;
                return Verdict::Suppress;
            }
            let suppressed = std::mem::take(&mut window.suppressed);
            window.logged_at = now;
            return Verdict::Log { suppressed, over };
        }
        if windows.len() >= MAX_KINDS {
            // Forget kinds that are quiet; what they swallowed is lost to the
            // log, not to correctness.
            let interval = self.interval;
            windows.retain(|_, w| now.saturating_duration_since(w.logged_at) < interval);
        }
        if windows.len() < MAX_KINDS {
            windows.insert(
                kind.to_owned(),
                Window {
                    logged_at: now,
                    suppressed: 0,
                },
            );
        }
        Verdict::Log {
            suppressed: 0,
            over: Duration::ZERO,
        }
    }

    /// The conditions behind the lines ended (a session connected again):
    /// forget every kind and return those with occurrences swallowed since
    /// they were last logged, with their counts.
    pub fn take_suppressed(&self) -> Vec<(String, u64)> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut swallowed: Vec<(String, u64)> = windows
            .drain()
            .filter(|(_, w)| w.suppressed > 0)
            .map(|(kind, w)| (kind, w.suppressed))
            .collect();
        swallowed.sort();
        swallowed
    }
}

/// The agent's limiter for session warnings (dial failures, the manager's
/// errors), shared by every session of the process.
pub fn session_warnings() -> &'static RepeatLimiter {
    static LIMITER: std::sync::OnceLock<RepeatLimiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(|| RepeatLimiter::new(REPEAT_INTERVAL))
}

/// A session connected: report the warnings counted and not logged yet, one
/// line per kind, so no count is lost when the trouble ends.
pub fn report_suppressed(session: u32) {
    for (kind, count) in session_warnings().take_suppressed() {
        tracing::info!(
            session,
            repeated = count,
            "session {session} connected; before that, {count} more warnings like this one \
             were counted and not logged: {kind}"
        );
    }
}

/// Log a session warning through [`session_warnings`]: the first of its kind
/// at once, then one line per [`REPEAT_INTERVAL`] with how many were
/// swallowed. `what` is the line without the session, which is its kind.
pub fn warn_session(session: u32, what: &str, now: Instant) {
    match session_warnings().check(what, now) {
        Verdict::Suppress => {}
        Verdict::Log { suppressed: 0, .. } => {
            tracing::warn!(session, "session {session}: {what}");
        }
        Verdict::Log { suppressed, over } => {
            tracing::warn!(
                session,
                repeated = suppressed,
                "session {session}: {what} (and {suppressed} more like it from the agent's \
                 sessions in the last {:.0} s)",
                over.as_secs_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_passes_repeats_are_counted_and_reported_once_per_interval() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let log0 = Verdict::Log {
            suppressed: 0,
            over: Duration::ZERO,
        };
        assert_eq!(limiter.check("refused", t0), log0);
        for i in 1..=999 {
            let at = t0 + Duration::from_millis(i * 10);
            assert_eq!(limiter.check("refused", at), Verdict::Suppress);
        }
        // Another kind is not held back by the first.
        assert_eq!(
            limiter.check("timed out", t0 + Duration::from_secs(1)),
            log0
        );
        assert_eq!(
            limiter.check("refused", t0 + Duration::from_secs(10)),
            Verdict::Log {
                suppressed: 999,
                over: Duration::from_secs(10)
            }
        );
        assert_eq!(
            limiter.check("refused", t0 + Duration::from_secs(11)),
            Verdict::Suppress
        );
        assert_eq!(limiter.take_suppressed(), [("refused".to_owned(), 1)]);
        assert_eq!(limiter.take_suppressed(), []);
        assert_eq!(limiter.check("refused", t0 + Duration::from_secs(12)), log0);
    }

    #[test]
    fn the_kinds_held_are_bounded() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..10 * MAX_KINDS {
            let verdict = limiter.check(&format!("kind {i}"), t0);
            assert!(matches!(verdict, Verdict::Log { suppressed: 0, .. }));
        }
        assert_eq!(limiter.windows.lock().unwrap().len(), MAX_KINDS);
        // Once their interval has passed, old kinds make room for new ones.
        let later = t0 + Duration::from_secs(11);
        assert!(matches!(
            limiter.check("new kind", later),
            Verdict::Log { suppressed: 0, .. }
        ));
        assert_eq!(limiter.windows.lock().unwrap().len(), 1);
    }
}
