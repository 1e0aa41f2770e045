//! The phases of a run, in order: connecting (accept every session and
//! complete its handshakes), the load itself (warm-up, then the measured
//! window, then waiting for outstanding results), and the drain (read until
//! every agent said GOODBYE and closed). Progress is shown at each change of
//! phase and at most every 100 ms.
//!
//! Every loop here is bounded in time: the connect timeout, the grace period
//! after sending stops, the drain timeout. Nothing here decides what a
//! result means or how fast to send; it calls [`Engine::fill`], the flush
//! and the read of each connection.

use std::io;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Token};
use ringworker::manager::ManagerMachine;

use super::conn::{Conn, ConnPhase};
use super::tls::TlsConn;
use super::{Engine, Pacing, LISTENER};
use crate::progress::{Phase, Status};

impl Engine {
    /// Accept `sessions` workers and complete their handshakes. `gone` is
    /// asked every 100 ms at most whether waiting is pointless (a spawned
    /// agent that exited); its answer is the error.
    pub fn accept_all(
        &mut self,
        timeout: Duration,
        gone: &mut dyn FnMut() -> Option<String>,
    ) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut events = Events::with_capacity(1024);
        while self
            .conns
            .iter()
            .filter(|c| c.phase == ConnPhase::Running)
            .count()
            < self.spec.sessions as usize
        {
            let now = Instant::now();
            if now >= deadline {
                let tls = match &self.tls_failures.first {
                    Some(first) => format!(
                        "; {} TLS handshake(s) failed, the first: {first}",
                        self.tls_failures.count
                    ),
                    None => String::new(),
                };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "only {} of {} sessions connected within {timeout:?}{tls}",
                        self.conns
                            .iter()
                            .filter(|c| c.phase == ConnPhase::Running)
                            .count(),
                        self.spec.sessions
                    ),
                ));
            }
            if let Some(why) = gone() {
                return Err(io::Error::other(why));
            }
            if self.progress_due(now) {
                let fraction =
                    self.running_sessions() as f64 / f64::from(self.spec.sessions.max(1));
                self.show_progress(Phase::Connecting, None, Some(fraction));
            }
            self.poll.poll(
                &mut events,
                Some((deadline - now).min(Duration::from_millis(100))),
            )?;
            for event in events.iter() {
                if event.token() == LISTENER {
                    self.accept_ready()?;
                } else {
                    let index = event.token().0;
                    self.on_readable(index, now);
                    // WELCOME, refusals and the TLS handshake's answers.
                    self.flush(index);
                }
            }
        }
        Ok(())
    }

    fn accept_ready(&mut self) -> io::Result<()> {
        loop {
            match self.listener.accept() {
                Ok(mut stream) => {
                    let tls = match &self.spec.tls {
                        Some(config) => Some(Box::new(TlsConn::new(config.clone())?)),
                        None => None,
                    };
                    let token = Token(self.conns.len());
                    self.poll.registry().register(
                        stream.source(),
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let machine = ManagerMachine::new(self.spec.manager.clone());
                    self.conns.push(Conn::new(stream, tls, machine));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Run the workload; returns when sending is over and results are in (or
    /// the grace period ran out).
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        self.epoch = Instant::now();
        let start = self.epoch;
        let warmup_end = start + self.spec.warmup;
        let send_end = self.spec.duration.map(|d| warmup_end + d);
        self.progress_at = None;
        for conn in &mut self.conns {
            conn.next_intended_ns = 0;
        }
        let mut finishing_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let sending = finishing_since.is_none()
                && send_end.is_none_or(|end| now < end)
                && self.spec.tasks.is_none_or(|limit| self.sent_total < limit);
            if !sending && finishing_since.is_none() {
                finishing_since = Some(now);
                for conn in &mut self.conns {
                    conn.sending = false;
                }
                self.wire_at_end = Some(self.wire_bytes());
                self.measured = now.saturating_duration_since(warmup_end);
                self.warmup = now.saturating_duration_since(start).min(self.spec.warmup);
                // Every change of phase is shown, however short the phase.
                self.show_progress(Phase::Draining, None, Some(1.0));
            }
            if let Some(since) = finishing_since {
                let outstanding: u32 = self
                    .conns
                    .iter()
                    .filter(|c| c.phase == ConnPhase::Running)
                    .map(|c| c.in_flight)
                    .sum();
                if outstanding == 0 || now.duration_since(since) >= self.spec.grace {
                    break;
                }
            }
            let measuring = now >= warmup_end;
            if measuring && self.wire_at_start.is_none() {
                self.wire_at_start = Some(self.wire_bytes());
            }
            for index in 0..self.conns.len() {
                if sending {
                    self.fill(index, now, measuring);
                }
                self.flush(index);
            }
            if self.progress_due(now) {
                let phase = if !sending {
                    Phase::Draining
                } else if measuring {
                    Phase::Measuring
                } else {
                    Phase::WarmUp
                };
                let (eta, fraction) = match (send_end, self.spec.tasks) {
                    _ if !sending => (None, Some(1.0)),
                    (Some(end), _) => (
                        Some(end.saturating_duration_since(now)),
                        Some(
                            now.saturating_duration_since(start).as_secs_f64()
                                / end.saturating_duration_since(start).as_secs_f64().max(1e-9),
                        ),
                    ),
                    (None, Some(limit)) => {
                        let done = self.done_tasks();
                        let elapsed = now.saturating_duration_since(start).as_secs_f64();
                        let eta = (done > 0 && elapsed > 0.0).then(|| {
                            let rate = done as f64 / elapsed;
                            Duration::from_secs_f64(
                                (limit.saturating_sub(done) as f64 / rate)
                                    .min(crate::duration::MAX.as_secs_f64()),
                            )
                        });
                        (eta, Some(self.sent_total as f64 / limit.max(1) as f64))
                    }
                    (None, None) => (None, None),
                };
                self.show_progress(phase, eta, fraction);
            }
            let timeout = match self.spec.pacing {
                Pacing::Open { .. } if sending => Duration::from_micros(200),
                _ => Duration::from_millis(50),
            };
            self.poll.poll(&mut events, Some(timeout))?;
            let now = Instant::now();
            for event in events.iter() {
                if event.token() == LISTENER {
                    continue;
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.on_readable(event.token().0, now);
                }
            }
        }
        Ok(())
    }

    /// Read until every connection has closed (after GOODBYE) or `timeout`.
    pub fn drain(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.show_progress(Phase::Draining, None, Some(1.0));
        let mut events = Events::with_capacity(1024);
        while self.conns.iter().any(|c| c.phase != ConnPhase::Closed) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.progress_due(now) {
                self.show_progress(Phase::Draining, None, Some(1.0));
            }
            for index in 0..self.conns.len() {
                self.flush(index);
            }
            self.poll.poll(
                &mut events,
                Some((deadline - now).min(Duration::from_millis(50))),
            )?;
            let now = Instant::now();
            for event in events.iter() {
                if event.token() != LISTENER {
                    self.on_readable(event.token().0, now);
                }
            }
        }
        Ok(())
    }

    /// Whether progress is due (every 100 ms at most), noting it shown.
    fn progress_due(&mut self, now: Instant) -> bool {
        if self
            .progress_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_millis(100))
        {
            return false;
        }
        self.progress_at = Some(now);
        true
    }

    fn running_sessions(&self) -> u64 {
        self.conns
            .iter()
            .filter(|c| c.phase == ConnPhase::Running)
            .count() as u64
    }

    /// Results so far (ok, failed or wrong), warm-up included.
    fn done_tasks(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.report.tasks_ok + c.report.tasks_failed + c.report.tasks_wrong)
            .sum()
    }

    fn show_progress(&self, phase: Phase, eta: Option<Duration>, fraction: Option<f64>) {
        let status = Status {
            phase,
            done: self.done_tasks(),
            in_flight: self.conns.iter().map(|c| u64::from(c.in_flight)).sum(),
            connected: self.running_sessions(),
            sessions: u64::from(self.spec.sessions),
            eta,
            fraction,
        };
        self.spec.progress.update(&status);
    }

    fn wire_bytes(&self) -> u64 {
        self.conns
            .iter()
            .map(|c| c.report.bytes_sent + c.report.bytes_received)
            .sum()
    }
}
