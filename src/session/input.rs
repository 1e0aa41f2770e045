//! Bytes in: reads reported by the runtime handed to the machine, which
//! decodes the frames they complete (in place when whole, else in its
//! buffer), the tasks run and the events that are not tasks (WELCOME, a
//! drain request, the close) acted on.
//!
//! This is the hot path. It hands tasks to the `tasks` module and never runs
//! a handler or builds a RESULT itself; it never reads the clock (time comes
//! in as arguments).

use std::time::Instant;

use crate::protocol::{Event, Input, Phase};
use crate::stats::SessionState;

use super::WorkerSession;

impl WorkerSession {
    /// Whether the runtime should read from the socket now.
    pub fn wants_read(&self) -> bool {
        self.machine.wants_read()
    }

    /// How many bytes the next read should ask for, given a preferred chunk.
    pub fn recv_hint(&self, chunk: usize) -> usize {
        self.machine.recv_hint(chunk)
    }

    /// Space to read into directly.
    pub fn recv_space(&mut self, min: usize) -> &mut [u8] {
        self.machine.recv_space(min)
    }

    /// `n` bytes were read into [`WorkerSession::recv_space`]: decode and run
    /// whatever they complete.
    pub fn on_received(&mut self, n: usize, now: Instant) {
        self.machine.handle_received(n, now);
        self.on_input(&[], now);
    }

    /// Bytes read elsewhere (a provided buffer, a channel): decode and run
    /// whatever they complete.
    ///
    /// `input` goes to the machine, which takes each frame from it where it
    /// lies (after completing one whose start it kept from before) and keeps
    /// what it cannot act on yet itself.
    pub fn on_input(&mut self, input: &[u8], now: Instant) {
        let mut input = input;
        while let Some(next) = self.machine.poll_input(&mut input, now) {
            match next {
                Input::Task(task) => self.run_task(task, now),
                Input::Event(event) => self.on_event(event, now),
            }
        }
        self.after_events();
    }

    /// The manager closed its side of the stream.
    pub fn on_eof(&mut self, now: Instant) {
        self.machine.handle_eof(now);
        self.process(now);
    }

    /// Start a worker-initiated drain.
    pub fn start_drain(&mut self, now: Instant) {
        self.machine.start_drain(now);
        self.process(now);
    }

    /// Act on what the machine holds: frames kept from before, a close.
    pub(super) fn process(&mut self, now: Instant) {
        self.on_input(&[], now);
    }

    /// Anything but a task.
    #[cold]
    fn on_event(&mut self, event: Event<'_>, now: Instant) {
        match event {
            Event::Welcomed(welcome) => {
                self.welcomed_at = Some(now);
                self.stats
                    .set_state(if self.machine.phase() == Phase::Active {
                        SessionState::Connected
                    } else {
                        SessionState::Draining
                    });
                self.stats.set_last_error(None);
                crate::log_limit::report_suppressed(self.index);
                tracing::info!(
                    session = self.index,
                    manager = %welcome.manager,
                    manager_max_body = welcome.max_body,
                    heartbeat_ms = welcome.heartbeat_ms,
                    "session {} connected: WELCOME from manager {:?}",
                    self.index,
                    welcome.manager
                );
            }
            // Not reached: poll_input hands tasks out as `Input::Task`.
            Event::Task(_) => {}
            Event::DrainRequested => {
                self.stats.set_state(SessionState::Draining);
                tracing::info!(
                    session = self.index,
                    "session {}: manager asked for a drain",
                    self.index
                );
            }
            Event::Closed(reason) => {
                if !reason.is_graceful() {
                    self.stats.set_last_error(Some(reason.to_string()));
                }
                self.closed = Some(reason);
            }
        }
    }

    /// Gauges that follow the machine, once its events are handled.
    fn after_events(&mut self) {
        if self.machine.phase() == Phase::Draining(crate::protocol::DrainOrigin::Worker) {
            self.stats.set_state(SessionState::Draining);
        }
        self.stats.set_in_flight(self.machine.in_flight());
    }
}
