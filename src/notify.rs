//! systemd's notification protocol (sd_notify(3)), for `Type=notify` units.
//!
//! Active only when the service manager set `NOTIFY_SOCKET`; otherwise
//! every call here does nothing. What is sent:
//! - `READY=1` once the first session has completed its handshake (so
//!   `systemctl start` returns when the agent serves, and units ordered
//!   after it start then);
//! - `STATUS=` with the sessions connected and the tasks done, checked every
//!   [`STATUS_INTERVAL`] and sent when it changed (`systemctl status` shows it);
//! - `WATCHDOG=1` every half `WATCHDOG_USEC` (`WatchdogSec=`) while every
//!   runtime loop turns ([`AgentStats::oldest_loop_beat`]): a wedged loop
//!   stops the pings and systemd restarts the agent;
//! - `STOPPING=1` when the drain starts, and `RELOADING=1` ... `READY=1`
//!   around a SIGHUP reload.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::runtime::StopHandle;
use crate::stats::{AgentStats, LOOP_BEAT_INTERVAL};

/// How often the `STATUS=` line is recomputed (and sent if it changed).
pub const STATUS_INTERVAL: Duration = Duration::from_secs(2);

/// How often the notifier thread looks at the sessions (readiness is sent
/// within this of the first handshake).
const TICK: Duration = Duration::from_millis(100);

/// Tells systemd how the agent is doing. Cheap to clone; a no-op when the
/// agent does not run under a `Type=notify` unit.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    stats: Arc<AgentStats>,
    manager: String,
    /// `WATCHDOG_USEC`, when set for this process.
    watchdog: Option<Duration>,
    ready: AtomicBool,
    stopping: AtomicBool,
    /// The last `STATUS=` text sent.
    status: Mutex<String>,
    /// A send failed (logged once).
    send_failed: AtomicBool,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.is_enabled())
            .field("watchdog", &self.watchdog())
            .finish()
    }
}

impl Notifier {
    /// A notifier for this process: enabled when `NOTIFY_SOCKET` is set,
    /// with a watchdog when `WATCHDOG_USEC` is (and `WATCHDOG_PID`, if set,
    /// names this process).
    pub fn from_env(stats: Arc<AgentStats>, manager: &impl std::fmt::Display) -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier::default();
        }
        Notifier {
            inner: Some(Arc::new(Inner {
                stats,
                manager: manager.to_string(),
                watchdog: sd_notify::watchdog_enabled().filter(|period| !period.is_zero()),
                ready: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                status: Mutex::new(String::new()),
                send_failed: AtomicBool::new(false),
            })),
        }
    }

    /// Whether anything is sent at all (`NOTIFY_SOCKET` is set).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The watchdog period systemd expects pings within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.inner.as_ref().and_then(|inner| inner.watchdog)
    }

    /// Start the thread that sends readiness, status and watchdog pings,
    /// and send `STOPPING=1` as soon as `stop` is requested.
    pub fn start(&self, stop: &StopHandle) -> std::io::Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        if let Some(period) = inner.watchdog {
            tracing::info!(
                "systemd watchdog: WATCHDOG=1 every {:?} while every runtime loop turns",
                period / 2
            );
        }
        let on_stop = self.clone();
        stop.on_stop(move || on_stop.stopping());
        let inner = Arc::clone(inner);
        std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || inner.run())?;
        Ok(())
    }

    /// The drain started: `STOPPING=1` (once).
    pub fn stopping(&self) {
        if let Some(inner) = &self.inner {
            if !inner.stopping.swap(true, Ordering::SeqCst) {
                let status = inner.status_line();
                inner.send(&[NotifyState::Stopping, NotifyState::Status(&status)]);
                inner.remember_status(status);
            }
        }
    }

    /// A reload starts: `RELOADING=1` with the time it started. Only once
    /// the agent has said `READY=1` (before, systemd would take the
    /// `READY=1` that ends the reload for the end of the start); returns
    /// whether it was sent, so that [`Notifier::reloaded`] follows.
    pub fn reloading(&self) -> bool {
        let Some(inner) = &self.inner else {
            return false;
        };
        if !inner.ready.load(Ordering::SeqCst) || inner.stopping.load(Ordering::SeqCst) {
            return false;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => inner.send(&[NotifyState::Reloading, now]),
            Err(_) => inner.send(&[NotifyState::Reloading]),
        }
        true
    }

    /// The reload ended (applied or not): `READY=1` again.
    pub fn reloaded(&self) {
        if let Some(inner) = &self.inner {
            let status = inner.status_line();
            inner.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            inner.remember_status(status);
        }
    }

    /// Send `STATUS=text` now (e.g. why the agent is about to exit).
    pub fn status(&self, text: &str) {
        if let Some(inner) = &self.inner {
            let text = one_line(text);
            inner.send(&[NotifyState::Status(&text)]);
            inner.remember_status(text);
        }
    }
}

impl Inner {
    fn run(&self) {
        let mut next_status = Instant::now();
        let mut next_ping = Instant::now();
        let mut withheld = false;
        loop {
            let now = Instant::now();
            if !self.ready.load(Ordering::SeqCst)
                && !self.stopping.load(Ordering::SeqCst)
                && self.stats.connected_sessions() > 0
            {
                self.ready.store(true, Ordering::SeqCst);
                let status = self.status_line();
                self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
                self.remember_status(status);
                next_status = now + STATUS_INTERVAL;
            }
            if now >= next_status {
                let status = self.status_line();
                if self.last_status() != status {
                    self.send(&[NotifyState::Status(&status)]);
                    self.remember_status(status);
                }
                next_status = now + STATUS_INTERVAL;
            }
            if let Some(period) = self.watchdog {
                if now >= next_ping {
                    let oldest = self.stats.oldest_loop_beat(now);
                    if loops_alive(oldest, period) {
                        self.send(&[NotifyState::Watchdog]);
                        if withheld {
                            tracing::info!("systemd watchdog: every runtime loop turns again");
                            withheld = false;
                        }
                    } else if !withheld {
                        tracing::error!(
                            "systemd watchdog: a runtime loop has not turned for {:.1?}; \
                             withholding WATCHDOG=1 so that systemd restarts the agent",
                            oldest.unwrap_or_default()
                        );
                        withheld = true;
                    }
                    next_ping = now + period / 2;
                }
            }
            std::thread::sleep(TICK);
        }
    }

    fn status_line(&self) -> String {
        status_line(
            &self.stats,
            &self.manager,
            self.stopping.load(Ordering::SeqCst),
        )
    }

    fn last_status(&self) -> String {
        self.status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn remember_status(&self, status: String) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if let Err(err) = sd_notify::notify(states) {
            if !self.send_failed.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "cannot notify systemd through NOTIFY_SOCKET: {err} (readiness, status and \
                     watchdog pings are lost)"
                );
            }
        }
    }
}

/// Whether every runtime loop turned recently enough to ping a watchdog of
/// `period`: within half the period, and never less than two beat
/// intervals (a loop beats every [`LOOP_BEAT_INTERVAL`], a little late under
/// load). No loop running (before the start, between the blocking
/// runtime's connections, after the last session ended) is nothing wedged.
pub fn loops_alive(oldest: Option<Duration>, period: Duration) -> bool {
    let limit = (period / 2).max(2 * LOOP_BEAT_INTERVAL);
    oldest.is_none_or(|age| age < limit)
}

/// The `STATUS=` text: sessions connected and tasks done, and while no
/// session is connected, the last error a session saw.
pub fn status_line(stats: &AgentStats, manager: &str, stopping: bool) -> String {
    let connected = stats.connected_sessions();
    let sessions = stats.sessions.len();
    let tasks = stats.tasks_done();
    if stopping {
        return format!("draining: {connected}/{sessions} sessions connected, {tasks} tasks done");
    }
    if connected > 0 {
        return format!(
            "{connected}/{sessions} sessions connected to {manager}, {tasks} tasks done"
        );
    }
    let error = stats.sessions.iter().find_map(|s| s.last_error());
    match error {
        Some(error) => one_line(&format!(
            "connecting to {manager}: 0/{sessions} sessions connected, {tasks} tasks done \
             (last error: {})",
            // Capped: systemd drops a notification over 4 KiB.
            error
                .chars()
                .take(crate::format::MAX_PEER_TEXT)
                .collect::<String>()
        )),
        None => {
            format!("connecting to {manager}: 0/{sessions} sessions connected, {tasks} tasks done")
        }
    }
}

/// A notification field is one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::SessionState;

    #[test]
    fn a_wedged_loop_withholds_the_watchdog_ping() {
        let period = Duration::from_secs(30);
        assert!(loops_alive(None, period), "no loop: nothing wedged");
        assert!(loops_alive(Some(Duration::from_secs(1)), period));
        assert!(loops_alive(Some(Duration::from_millis(14_900)), period));
        assert!(!loops_alive(Some(Duration::from_secs(15)), period));
        // A short period still allows a loop two beats.
        let short = Duration::from_secs(1);
        assert!(loops_alive(Some(Duration::from_millis(1_500)), short));
        assert!(!loops_alive(Some(Duration::from_secs(2)), short));
        // Through the stats, as the notifier reads them.
        let stats = AgentStats::new("w".into(), "uring", 1);
        let start = Instant::now();
        let turning = stats.register_loop();
        let wedged = stats.register_loop();
        turning.beat(start + Duration::from_secs(40));
        wedged.beat(start + Duration::from_secs(20));
        let at = start + Duration::from_secs(40);
        assert!(!loops_alive(stats.oldest_loop_beat(at), period));
        drop(wedged);
        assert!(loops_alive(stats.oldest_loop_beat(at), period));
    }

    #[test]
    fn the_status_line_counts_sessions_and_tasks_and_says_why_none_is_connected() {
        let stats = AgentStats::new("w".into(), "uring", 2);
        let line = status_line(&stats, "tcp://m:1", false);
        assert_eq!(
            line,
            "connecting to tcp://m:1: 0/2 sessions connected, 0 tasks done"
        );
        stats.sessions[1].set_last_error(Some("connection refused\n(os error 111)".into()));
        let line = status_line(&stats, "tcp://m:1", false);
        assert_eq!(
            line,
            "connecting to tcp://m:1: 0/2 sessions connected, 0 tasks done \
             (last error: connection refused (os error 111))"
        );
        stats.sessions[0].set_state(SessionState::Connected);
        stats.sessions[0].record_task(None, true);
        stats.sessions[0].record_task(None, false);
        assert_eq!(
            status_line(&stats, "tcp://m:1", false),
            "1/2 sessions connected to tcp://m:1, 2 tasks done"
        );
        assert_eq!(
            status_line(&stats, "tcp://m:1", true),
            "draining: 1/2 sessions connected, 2 tasks done"
        );
    }
}
