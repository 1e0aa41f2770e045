//! Progress on stderr while a run goes on: a live line on a terminal
//! (`indicatif`), plain lines otherwise, so that CI logs show progress too.
//! Each says the phase (connecting, warm-up, measuring, draining), the time
//! since the loadgen started, the time left, the current rate and the tasks
//! done. Plain lines come at each change of phase and every interval.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::duration::short;
use crate::report::grouped;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// A live line when stderr is a terminal, plain lines otherwise
    Auto,
    /// Plain lines, even on a terminal
    Plain,
    /// No progress
    Never,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Connecting,
    WarmUp,
    Measuring,
    Draining,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connecting => "connecting",
            Phase::WarmUp => "warm-up",
            Phase::Measuring => "measuring",
            Phase::Draining => "draining",
        }
    }
}

/// What the engine knows at one moment.
#[derive(Debug, Clone, Copy)]
pub struct Status {
    pub phase: Phase,
    /// Tasks answered so far (ok, failed or wrong), warm-up included.
    pub done: u64,
    pub in_flight: u64,
    /// Sessions with their handshake done, of `sessions`.
    pub connected: u64,
    pub sessions: u64,
    /// Time until sending stops, when known.
    pub eta: Option<Duration>,
    /// How far the phase is, 0 to 1, when known.
    pub fraction: Option<f64>,
}

/// The progress reporter; clones share one display. Dropping the last one
/// clears a live line.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Option<Arc<Mutex<Inner>>>,
}

#[derive(Debug)]
enum Output {
    Bar(ProgressBar),
    Plain { interval: Duration },
}

#[derive(Debug)]
struct Inner {
    output: Output,
    started: Instant,
    phase: Option<Phase>,
    last_line: Option<Instant>,
    /// The rate is measured over windows of a second at least.
    window: (Instant, u64),
    rate: Option<f64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Output::Bar(bar) = &self.output {
            bar.finish_and_clear();
        }
    }
}

impl Progress {
    /// A reporter for `mode`; `interval` spaces plain lines.
    pub fn new(mode: Mode, interval: Duration) -> Progress {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let output = match mode {
            Mode::Never => return Progress::hidden(),
            Mode::Auto if terminal => {
                let bar = ProgressBar::with_draw_target(
                    Some(1000),
                    ProgressDrawTarget::stderr_with_hz(4),
                );
                bar.set_style(
                    ProgressStyle::with_template("{wide_msg} [{bar:12}]")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                Output::Bar(bar)
            }
            Mode::Auto | Mode::Plain => Output::Plain { interval },
        };
        let now = Instant::now();
        Progress {
            inner: Some(Arc::new(Mutex::new(Inner {
                output,
                started: now,
                phase: None,
                last_line: None,
                window: (now, 0),
                rate: None,
            }))),
        }
    }

    /// No progress at all.
    pub fn hidden() -> Progress {
        Progress { inner: None }
    }

    /// Show `status` (a plain line only at a change of phase or when the
    /// interval has passed).
    pub fn update(&self, status: &Status) {
        let Some(inner) = &self.inner else { return };
        let Ok(mut inner) = inner.lock() else { return };
        let now = Instant::now();
        let (since, done_then) = inner.window;
        let window = now.saturating_duration_since(since);
        if window >= Duration::from_secs(1) {
            inner.rate = Some(status.done.saturating_sub(done_then) as f64 / window.as_secs_f64());
            inner.window = (now, status.done);
        }
        let new_phase = inner.phase != Some(status.phase);
        inner.phase = Some(status.phase);
        let elapsed = now.saturating_duration_since(inner.started);
        let text = describe(status, elapsed, inner.rate);
        match &inner.output {
            Output::Bar(bar) => {
                if let Some(fraction) = status.fraction {
                    bar.set_position((fraction.clamp(0.0, 1.0) * 1000.0) as u64);
                }
                bar.set_message(format!("{:>10}  {text}", status.phase.name()));
            }
            Output::Plain { interval } => {
                let due = inner
                    .last_line
                    .is_none_or(|at| now.saturating_duration_since(at) >= *interval);
                if new_phase || due {
                    ringworker::tell!("ringworker-loadgen: {:<10}  {text}", status.phase.name());
                    inner.last_line = Some(now);
                }
            }
        }
    }

    /// Print a line on stderr without breaking a live line.
    pub fn println(&self, line: &str) {
        match self.inner.as_ref().and_then(|i| i.lock().ok()) {
            Some(inner) => match &inner.output {
                Output::Bar(bar) => bar.suspend(|| ringworker::tell!("{line}")),
                Output::Plain { .. } => ringworker::tell!("{line}"),
            },
            None => ringworker::tell!("{line}"),
        }
    }

    /// Clear a live line (before the report is printed).
    pub fn finish(&self) {
        if let Some(inner) = self.inner.as_ref().and_then(|i| i.lock().ok()) {
            if let Output::Bar(bar) = &inner.output {
                bar.finish_and_clear();
            }
        }
    }
}

/// The progress text after the phase: elapsed, time left, rate, tasks.
pub fn describe(status: &Status, elapsed: Duration, rate: Option<f64>) -> String {
    let eta = status.eta.map_or("-".to_owned(), short);
    let mut text = format!("elapsed {}  eta {eta}", short(elapsed));
    if status.phase == Phase::Connecting {
        text.push_str(&format!(
            "  sessions {}/{}",
            status.connected, status.sessions
        ));
        return text;
    }
    let rate = rate.map_or("-".to_owned(), |r| grouped(r.round() as u64));
    text.push_str(&format!(
        "  {rate} tasks/s  done {}  in flight {}",
        grouped(status.done),
        grouped(status.in_flight)
    ));
    if status.phase == Phase::Draining && status.connected > 0 {
        text.push_str(&format!("  sessions open {}", status.connected));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_say_elapsed_eta_rate_and_tasks() {
        let status = Status {
            phase: Phase::Measuring,
            done: 1_234_567,
            in_flight: 256,
            connected: 8,
            sessions: 8,
            eta: Some(Duration::from_secs(75)),
            fraction: Some(0.5),
        };
        assert_eq!(
            describe(&status, Duration::from_millis(12_300), Some(823_456.4)),
            "elapsed 12.3 s  eta 1m 15s  823,456 tasks/s  done 1,234,567  in flight 256"
        );
        let connecting = Status {
            phase: Phase::Connecting,
            connected: 3,
            eta: None,
            ..status
        };
        assert_eq!(
            describe(&connecting, Duration::from_millis(400), None),
            "elapsed 0.4 s  eta -  sessions 3/8"
        );
        let draining = Status {
            phase: Phase::Draining,
            connected: 2,
            eta: None,
            ..status
        };
        assert!(describe(&draining, Duration::ZERO, None)
            .ends_with("eta -  - tasks/s  done 1,234,567  in flight 256  sessions open 2"));
    }
}
