//! The events a runtime reports to its [`Connection`]: the dial's progress,
//! bytes received and sent, end of stream and errors, answers of jobs, the
//! stop request and the socket closed; and the transitions they cause.
//! The parent module holds the state and the queries (`poll`, `receive`,
//! `poll_timeout`).

use super::*;

impl Connection {
    /// The runtime starts connecting (after [`Action::Dial`]).
    pub fn on_dialling(&mut self, now: Instant) {
        if self.dialled_once {
            self.agent.record_reconnect();
        }
        self.dialled_once = true;
        self.stats.set_state(SessionState::Connecting);
        self.broken = None;
        self.eof = false;
        self.direct = false;
        self.direct_pending = None;
        self.collecting = false;
        self.sending = false;
        self.state = State::Dialling {
            deadline: now + self.plan.connect_timeout,
        };
    }

    /// The connect completed: the session starts (HELLO, or the TLS
    /// ClientHello, is the first output).
    pub fn on_connected(&mut self, now: Instant) {
        if !matches!(self.state, State::Dialling { .. }) {
            return;
        }
        self.stats.begin_connection();
        self.state = State::Open;
        self.generation = self.generation.wrapping_add(1);
        let mut session = WorkerSession::new(
            self.index,
            &self.plan.session,
            self.plan.handlers.clone(),
            self.stats.clone(),
            now,
        );
        if let Some(late) = &self.late {
            session.set_late_answers(late.clone(), self.generation);
        }
        let link = match &self.plan.tls {
            None => Link::plain(session),
            Some(tls) => match tls.connect() {
                Ok(conn) => Link::tls(session, conn),
                Err(why) => {
                    self.broken = Some(why);
                    Link::plain(session)
                }
            },
        };
        self.link = Some(Box::new(link));
    }

    /// The dial failed: before a connect started (no address, no socket),
    /// or the connect itself (then the socket is closed first).
    pub fn on_dial_failed(&mut self, why: String, now: Instant) {
        match self.state {
            State::Dialling { .. } => {
                if self.broken.is_none() {
                    self.broken = Some(why);
                }
                self.state = State::Closing;
            }
            State::Idle { .. } => {
                crate::log_limit::warn_session(self.index, &why, now);
                self.stats.set_last_error(Some(why));
                self.back_off(now);
            }
            _ => {}
        }
    }

    /// Bytes read into the runtime's buffer.
    pub fn on_input(&mut self, input: &[u8], now: Instant) {
        if self.state != State::Open {
            return; // lingering: counted by the runtime, nothing more
        }
        if let Some(link) = self.link.as_deref_mut() {
            if link.session().closed().is_none() {
                link.on_input(input, now);
            }
        }
    }

    /// For a runtime whose reads are counted on another thread before they
    /// reach [`Connection::on_input`]: the bytes handed over so far on this
    /// connection (GOODBYE reports these).
    pub fn set_bytes_fed(&mut self, fed: u64) {
        if let Some(link) = self.link.as_deref_mut() {
            link.session_mut().set_bytes_fed(fed);
        }
    }

    /// Memory for a [`Receive::Direct`] receive of `len` bytes.
    pub fn recv_space(&mut self, len: usize, wait_all: bool) -> Option<&mut [u8]> {
        let link = self.link.as_deref_mut()?;
        self.direct_pending = Some(wait_all);
        self.collecting = false;
        Some(link.session_mut().recv_space(len))
    }

    /// A direct receive brought `n` bytes (more than zero).
    pub fn on_received(&mut self, n: usize, now: Instant) {
        self.direct_pending = None;
        self.collecting = false;
        // Stay direct while receives come large: a stream of large frames.
        self.direct = n >= DIRECT_CHUNK;
        if let Some(link) = self.link.as_deref_mut() {
            link.session_mut().on_received(n, now);
        }
    }

    /// A direct receive ended without bytes (cancelled).
    pub fn on_receive_cancelled(&mut self) {
        self.direct_pending = None;
        self.collecting = false;
    }

    /// The manager closed its side.
    pub fn on_eof(&mut self, now: Instant) {
        self.direct_pending = None;
        self.eof = true;
        if self.state == State::Open {
            if let Some(link) = self.link.as_deref_mut() {
                link.on_eof(now);
            }
        }
    }

    /// A read or write failed; the connection is over.
    pub fn on_io_error(&mut self, why: String) {
        self.direct_pending = None;
        if self.broken.is_none() {
            self.broken = Some(why);
        }
    }

    /// All bytes of the last [`Action::Send`] are written; `buffer` comes
    /// back for reuse.
    pub fn on_sent(&mut self, mut buffer: Vec<u8>) {
        self.sending = false;
        // Like the frame buffer: a buffer grown by large output is kept
        // while output stays large, and given back once it is small.
        if buffer.capacity() > SHRINK_ABOVE && buffer.len() <= SHRINK_ABOVE {
            buffer = Vec::new();
        }
        buffer.clear();
        self.spare = buffer;
        // Its RESULTs are written, whatever comes next (a drain deadline
        // may be judged before the next poll).
        if let Some(link) = self.link.as_deref_mut() {
            link.output_written();
        }
    }

    /// The job of task `task`, handed out by connection `generation`, is
    /// done. An answer for an earlier connection is dropped (its task went
    /// with it).
    pub fn on_job_done(&mut self, generation: u32, task: u64, outcome: Outcome, now: Instant) {
        if generation != self.generation || self.state != State::Open {
            return;
        }
        if let Some(link) = self.link.as_deref_mut() {
            link.session_mut().job_done(task, outcome, now);
        }
    }

    /// Stop: drain the session and end. Idempotent.
    pub fn request_stop(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        match self.state {
            State::Open | State::Linger { .. } => {
                self.drain = Some(StopDrain::start(now, self.plan.drain_timeout));
                if let State::Linger { until } = self.state {
                    self.state = State::Linger {
                        until: StopDrain::cap(self.drain.as_ref(), until),
                    };
                }
                if let Some(at) = self.flush_until.as_mut() {
                    *at = StopDrain::cap(self.drain.as_ref(), *at);
                }
                if let Some(link) = self.link.as_deref_mut() {
                    link.session_mut().start_drain(now);
                }
            }
            State::Closing | State::Closed => {
                self.drain = Some(StopDrain::start(now, self.plan.drain_timeout));
            }
            State::Idle { .. } | State::Dialling { .. } | State::Stopped => {}
        }
    }

    /// The socket is closed. Returns the line that stops the agent when the
    /// manager refused this session ([`refusal`]); the connection has then
    /// stopped. Otherwise it waits to redial, or stops if a stop was asked.
    pub fn on_closed(&mut self, now: Instant) -> Option<String> {
        if !matches!(self.state, State::Closing | State::Closed) {
            return None;
        }
        self.sending = false;
        self.spare = Vec::new(); // a connection waiting to redial holds no buffer
        self.direct_pending = None;
        let uptime;
        let refused;
        match self.link.take() {
            Some(link) => {
                let session = link.session();
                // A stopping connection that ended before its deadline other
                // than by GOODBYE: what it still held counts as the drain's.
                if let (Some(stopping), true) = (self.drain, self.unfinished.is_clean()) {
                    let why = self
                        .broken
                        .clone()
                        .or_else(|| session.closed().map(|r| r.to_string()));
                    self.unfinished += stopping.ended_early(
                        self.index,
                        session.in_flight(),
                        session.results_unwritten(),
                        why.as_deref().unwrap_or("connection closed"),
                        &self.stats,
                    );
                }
                session.log_end(self.broken.as_deref());
                uptime = session
                    .welcomed_at()
                    .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                refused = refusal(&self.plan.endpoint, self.index, session.closed());
                self.stats.set_in_flight(0);
            }
            None => {
                if let Some(why) = &self.broken {
                    crate::log_limit::warn_session(self.index, why, now);
                    self.stats.set_last_error(Some(why.clone()));
                }
                uptime = Duration::ZERO;
                refused = None;
            }
        }
        self.backoff.connection_ended(uptime);
        self.drain = None;
        self.flush_until = None;
        self.broken = None;
        if let Some(message) = &refused {
            tracing::error!(session = self.index, "{message}");
            self.stopping = true;
            self.stop();
            return refused;
        }
        self.back_off(now);
        None
    }

    // ---- internal -------------------------------------------------------

    /// Close with `why` as the cause, unless something broke first.
    pub(super) fn close(&mut self, why: String) -> Action {
        if self.broken.is_none() {
            self.broken = Some(why);
        }
        self.begin_close()
    }

    pub(super) fn begin_close(&mut self) -> Action {
        self.state = State::Closed;
        Action::Close
    }

    pub(super) fn back_off(&mut self, now: Instant) {
        if self.stopping {
            self.stop();
            return;
        }
        let delay = self.backoff.next_delay(&mut self.rng);
        self.stats.set_state(SessionState::Disconnected);
        self.state = State::Idle {
            retry_at: now + delay,
        };
    }

    pub(super) fn stop(&mut self) {
        self.state = State::Stopped;
        self.stats.set_state(SessionState::Stopped);
    }
}
