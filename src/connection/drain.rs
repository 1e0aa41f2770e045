//! The drain of one connection when the agent stops, as a deadline both
//! runtimes obey.
//!
//! `--drain-timeout` bounds the whole drain: finishing the tasks in flight,
//! writing their RESULTs, DRAIN and GOODBYE, and the linger after GOODBYE
//! all end by [`StopDrain::deadline`]; every wait of a stopping connection
//! is [`StopDrain::cap`]ped by it. When it passes, the connection is closed
//! at once and [`StopDrain::timed_out`] reports the truth: the tasks still
//! running (abandoned) and the RESULTs not known to be written
//! (undelivered). Either makes the exit status non-zero.
//!
//! No clock is read here: callers pass `now`.

use std::time::{Duration, Instant};

use crate::stats::SessionStats;

/// What a drain left unfinished when its deadline passed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainTally {
    /// Tasks accepted and still running.
    pub abandoned_tasks: u64,
    /// RESULTs produced but not known to be written to the socket.
    pub undelivered_results: u64,
}

impl DrainTally {
    /// `in_flight` tasks still running and `unwritten` RESULTs not known to
    /// be written.
    fn left(in_flight: usize, unwritten: u64) -> DrainTally {
        DrainTally {
            abandoned_tasks: in_flight as u64,
            undelivered_results: unwritten,
        }
    }

    /// Nothing was left unfinished.
    pub fn is_clean(&self) -> bool {
        self.abandoned_tasks == 0 && self.undelivered_results == 0
    }
}

impl std::ops::AddAssign for DrainTally {
    fn add_assign(&mut self, other: DrainTally) {
        self.abandoned_tasks += other.abandoned_tasks;
        self.undelivered_results += other.undelivered_results;
    }
}

/// The one error line of a drain that left work unfinished, also kept as
/// the session's last error.
fn log_unfinished(session: u32, tally: &DrainTally, line: String, stats: &SessionStats) {
    tracing::error!(
        session,
        abandoned = tally.abandoned_tasks,
        undelivered = tally.undelivered_results,
        "session {session}: {line}"
    );
    stats.set_last_error(Some(line));
}

/// A connection's drain after a stop request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopDrain {
    deadline: Instant,
    timeout: Duration,
}

impl StopDrain {
    /// The stop was seen at `now`; the drain may take `timeout`.
    pub fn start(now: Instant, timeout: Duration) -> StopDrain {
        StopDrain {
            deadline: now + timeout,
            timeout,
        }
    }

    /// When the connection is closed, finished or not.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    pub fn is_over(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    /// `at`, or the drain's deadline if that comes first (no drain: `at`).
    pub fn cap(drain: Option<&StopDrain>, at: Instant) -> Instant {
        drain.map_or(at, |d| at.min(d.deadline))
    }

    /// The deadline passed with `in_flight` tasks running and `unwritten`
    /// RESULTs not known to be written: log it (one line) and tally it.
    pub fn timed_out(
        &self,
        session: u32,
        in_flight: usize,
        unwritten: u64,
        stats: &SessionStats,
    ) -> DrainTally {
        let tally = DrainTally::left(in_flight, unwritten);
        let why = self.message(&tally);
        if tally.is_clean() {
            tracing::warn!(session, "session {session}: {why}");
            stats.set_last_error(Some(why));
        } else {
            log_unfinished(session, &tally, why, stats);
        }
        tally
    }

    /// The connection ended during the drain before its deadline, other
    /// than by GOODBYE (`why`: a broken socket, an ERROR, a TLS failure):
    /// what it still held is tallied like a timed-out drain's, and logged
    /// when there is any.
    pub fn ended_early(
        &self,
        session: u32,
        in_flight: usize,
        unwritten: u64,
        why: &str,
        stats: &SessionStats,
    ) -> DrainTally {
        let tally = DrainTally::left(in_flight, unwritten);
        if !tally.is_clean() {
            let line = format!(
                "drain cut short ({why}): {} tasks abandoned, {} RESULTs undelivered",
                tally.abandoned_tasks, tally.undelivered_results
            );
            log_unfinished(session, &tally, line, stats);
        }
        tally
    }

    /// The one line a timed-out drain logs.
    pub fn message(&self, tally: &DrainTally) -> String {
        let timeout = self.timeout;
        if tally.is_clean() {
            format!("drain timed out after {timeout:?}: every RESULT was written, but not GOODBYE")
        } else {
            format!(
                "drain timed out after {timeout:?}: {} tasks abandoned, {} RESULTs undelivered",
                tally.abandoned_tasks, tally.undelivered_results
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wait_of_a_stopping_connection_ends_by_the_drain_deadline() {
        let t0 = Instant::now();
        let drain = StopDrain::start(t0, Duration::from_secs(3));
        assert_eq!(drain.deadline(), t0 + Duration::from_secs(3));
        assert!(!drain.is_over(t0 + Duration::from_millis(2999)));
        assert!(drain.is_over(t0 + Duration::from_secs(3)));
        // A 2 s linger begun at 2.5 s ends at 3 s, not 4.5 s.
        let linger = t0 + Duration::from_millis(2500) + Duration::from_secs(2);
        assert_eq!(
            StopDrain::cap(Some(&drain), linger),
            t0 + Duration::from_secs(3)
        );
        // One begun at 0.5 s keeps its own end.
        let early = t0 + Duration::from_millis(2500);
        assert_eq!(StopDrain::cap(Some(&drain), early), early);
        // No stop, no cap.
        assert_eq!(StopDrain::cap(None, linger), linger);
        // A zero timeout ends at once.
        assert!(StopDrain::start(t0, Duration::ZERO).is_over(t0));
    }

    #[test]
    fn a_timed_out_drain_tallies_running_tasks_and_unwritten_results() {
        let t0 = Instant::now();
        let drain = StopDrain::start(t0, Duration::from_secs(3));
        let stats = SessionStats::new(0);
        let tally = drain.timed_out(0, 2, 812, &stats);
        assert_eq!(
            tally,
            DrainTally {
                abandoned_tasks: 2,
                undelivered_results: 812
            }
        );
        assert!(!tally.is_clean());
        let line = stats.last_error().unwrap();
        assert_eq!(
            line,
            "drain timed out after 3s: 2 tasks abandoned, 812 RESULTs undelivered"
        );
        // Results unwritten alone make it unclean: the manager never got them.
        assert!(!drain.timed_out(0, 0, 1, &stats).is_clean());
        let clean = drain.timed_out(0, 0, 0, &stats);
        assert!(clean.is_clean());
        assert!(stats
            .last_error()
            .unwrap()
            .contains("every RESULT was written"));
        let mut sum = DrainTally::default();
        sum += tally;
        sum += tally;
        assert_eq!(sum.abandoned_tasks, 4);
        assert_eq!(sum.undelivered_results, 1624);
    }

    #[test]
    fn a_drain_cut_short_tallies_what_the_connection_still_held() {
        let drain = StopDrain::start(Instant::now(), Duration::from_secs(30));
        let stats = SessionStats::new(0);
        let tally = drain.ended_early(0, 3, 5, "connection lost: read failed", &stats);
        assert_eq!(
            tally,
            DrainTally {
                abandoned_tasks: 3,
                undelivered_results: 5
            }
        );
        assert_eq!(
            stats.last_error().unwrap(),
            "drain cut short (connection lost: read failed): 3 tasks abandoned, 5 RESULTs \
             undelivered"
        );
        let stats = SessionStats::new(0);
        assert!(drain.ended_early(0, 0, 0, "GOODBYE", &stats).is_clean());
        assert_eq!(stats.last_error(), None, "nothing left, nothing said");
    }
}
