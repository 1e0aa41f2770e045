//! Bytes in: reads reported by the runtime, the frames they complete decoded
//! (in place when whole, else in the machine's buffer) and acted on, and the
//! events that are not tasks (WELCOME, a drain request, the close).
//!
//! This is the hot path. It hands tasks to the `tasks` module and never runs
//! a handler or builds a RESULT itself; it never reads the clock (time comes
//! in as arguments).

use std::time::Instant;

use crate::protocol::{Event, Phase};
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
        self.process(now);
    }

    /// Bytes read elsewhere (a provided buffer, a channel): decode and run
    /// whatever they complete.
    ///
    /// Whole frames are decoded where they lie in `bytes`; only what cannot
    /// be acted on yet (the start of a frame, or frames held back by a full
    /// window) is copied into the frame buffer. A frame whose start is
    /// already buffered is completed there first.
    pub fn on_input(&mut self, bytes: &[u8], now: Instant) {
        self.machine.note_input(bytes.len(), now);
        let mut input = bytes;
        if self.machine.buffered() > 0 {
            let taken = self.machine.complete_buffered(input);
            input = input.get(taken..).unwrap_or_default();
            // Frames after the completed one are still in `input`.
            self.machine.set_more_input(!input.is_empty());
            self.process_buffered(now);
            if self.machine.buffered() > 0 {
                // Held back (a full window) or still incomplete.
                self.machine.stash_input(input);
                self.after_events();
                return;
            }
        }
        while let Some(event) = self.machine.poll_input(&mut input, now) {
            match event {
                Event::Task(task) => self.run_task(task, now),
                other => self.on_event(other, now),
            }
        }
        self.machine.stash_input(input);
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

    pub(super) fn process(&mut self, now: Instant) {
        self.process_buffered(now);
        self.after_events();
    }

    /// Act on the frames in the machine's receive buffer.
    fn process_buffered(&mut self, now: Instant) {
        while let Some(event) = self.machine.poll_event(now) {
            match event {
                Event::Task(task) => {
                    let (id, payload_len) = (task.id, task.payload.len());
                    let found = self.runner.find(task.handler);
                    if found.is_none() {
                        let name = task.handler.to_vec();
                        let out = self.machine.begin_result(id);
                        let reply = self.runner.call(found, &name, b"", out);
                        self.answer_begun(id, found, reply, now);
                        continue;
                    }
                    // The payload is read from the receive buffer while
                    // the handler appends to the output.
                    let (payload, out) = self.machine.begin_buffered_result(id, payload_len);
                    let reply = self.runner.call(found, b"", payload, out);
                    self.answer_begun(id, found, reply, now);
                }
                Event::Welcomed(welcome) => self.on_event(Event::Welcomed(welcome), now),
                Event::DrainRequested => self.on_event(Event::DrainRequested, now),
                Event::Closed(reason) => self.on_event(Event::Closed(reason), now),
            }
        }
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
            Event::Task(task) => {
                // Not reached: tasks are matched before; run it all the same.
                self.run_task(task, now);
            }
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
