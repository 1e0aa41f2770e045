//! [`Connection`]: one session's connection to the manager, as a sans-IO
//! state machine that both runtimes drive.
//!
//! It owns the [`WorkerSession`] and its [`Link`] (plaintext or TLS) and
//! every lifecycle rule: when to dial and how long a dial may take, back-off
//! between dials, the drain after a stop and its deadline, how long the
//! last frames may take to be written, the linger after a half-close, and
//! the refusal that stops the agent. It never touches a socket, a thread or
//! a clock: a runtime reports what happened and carries out what it is
//! asked, passing `now` in.
//!
//! # Call order
//!
//! A runtime calls [`Connection::poll`] after every event and carries out
//! each [`Action`] it returns until it returns [`Action::Wait`]; then it
//! waits for I/O, for [`Connection::poll_timeout`], or for a stop request,
//! and reports it:
//!
//! | the runtime                                  | reports                                  |
//! |----------------------------------------------|------------------------------------------|
//! | carries out [`Action::Dial`]                 | [`Connection::on_dialling`] when the connect starts, then [`Connection::on_connected`] or [`Connection::on_dial_failed`] (also for a dial that never started) |
//! | received bytes into its own buffer           | [`Connection::on_input`]                 |
//! | received into [`Connection::recv_space`]     | [`Connection::on_received`] (or [`Connection::on_receive_cancelled`] when it brought nothing) |
//! | read end of stream                           | [`Connection::on_eof`]                   |
//! | a read or write failed                       | [`Connection::on_io_error`]              |
//! | wrote all of an [`Action::Send`]'s bytes     | [`Connection::on_sent`], with the buffer |
//! | ran an [`Action::Run`]'s job (later)         | [`Connection::on_job_done`], with the generation it was given under |
//! | closed the socket after [`Action::Close`]    | [`Connection::on_closed`]                |
//! | was asked to stop                            | [`Connection::request_stop`]             |
//!
//! At most one [`Action::Send`] is outstanding: `poll` hands out no more
//! bytes until [`Connection::on_sent`]. How to receive is a query, not an
//! action: [`Connection::receive`] says whether to read and into which
//! memory, and the runtime arranges its reads to match after each `poll`.
//! After [`Action::Close`] the runtime cancels whatever it has under way on
//! the socket, closes it and calls [`Connection::on_closed`]; the connection
//! then waits to redial, or has stopped ([`Action::Stop`], repeated on every
//! later `poll`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::backoff::Backoff;
use super::drain::{DrainTally, StopDrain};
use super::link::Link;
use super::{closing_deadline, refusal};
use crate::exec::Outcome;
use crate::handlers::{Job, LateAnswers, Wake};
use crate::protocol::frame::SHRINK_ABOVE;
use crate::protocol::Phase;
use crate::runtime::AgentPlan;
use crate::session::WorkerSession;
use crate::stats::{AgentStats, SessionState, SessionStats};

/// A frame with at least this much left to arrive is received straight into
/// its buffer ([`Receive::Direct`]).
pub const LARGE_FRAME_REMAINDER: usize = 64 * 1024;
/// A direct receive that is not the rest of a large frame asks for at least
/// this much, and one that brings less ends the direct receives.
pub const DIRECT_CHUNK: usize = 64 * 1024;
/// The most one direct receive asks for: the rest of a larger frame takes
/// several, so memory is committed as the bytes arrive (a peer that sends
/// only the header of a huge frame does not make the agent commit
/// `max_body` at once).
pub const DIRECT_MAX: usize = 4 * 1024 * 1024;

/// The inbox for answers given on other threads, woken with `wake`: only
/// when the plan's registry has a handler that gives them.
fn late_inbox(plan: &AgentPlan, wake: Wake) -> Option<Arc<LateAnswers>> {
    plan.handlers
        .has_later()
        .then(|| Arc::new(LateAnswers::new(wake)))
}

/// What the runtime does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until I/O, [`Connection::poll_timeout`] or a stop.
    Wait,
    /// Open a socket to the manager and connect.
    Dial,
    /// Write all of these bytes; report [`Connection::on_sent`].
    Send(Vec<u8>),
    /// Run this task of a declared handler; report its outcome with
    /// [`Connection::on_job_done`], naming [`Connection::generation`] as
    /// it was when the job was handed out.
    Run(Job),
    /// A receive under way that reports nothing until it is complete
    /// (`MSG_WAITALL`) must be cancelled so that the bytes it holds are
    /// reported: a deadline is due and must see them.
    Collect,
    /// Everything is written: shut down the socket's writing side and keep
    /// reading ([`Connection::receive`]) until end of stream.
    ShutdownWrite,
    /// Cancel what is under way on the socket, close it, then report
    /// [`Connection::on_closed`].
    Close,
    /// This session has ended for good.
    Stop,
}

/// How the runtime receives now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receive {
    /// Do not read (back-pressure, or nothing to read for).
    Off,
    /// Read into the runtime's own buffers; report [`Connection::on_input`].
    Shared,
    /// Read up to `len` bytes into [`Connection::recv_space`]`(len)`;
    /// `wait_all`: the receive may wait for all of them (it is the rest of a
    /// large frame), and is then collected on a deadline ([`Action::Collect`]).
    Direct { len: usize, wait_all: bool },
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not connected; dial at `retry_at`.
    Idle { retry_at: Instant },
    /// A connect is under way; it has failed if not done by `deadline`.
    Dialling { deadline: Instant },
    /// Connected; the session runs (and may be writing its last frames).
    Open,
    /// Writes are shut down; reading to end of stream until `until`.
    Linger { until: Instant },
    /// The runtime is asked to close the socket ([`Action::Close`]).
    Closing,
    /// Waiting for [`Connection::on_closed`].
    Closed,
    /// Ended for good.
    Stopped,
}

/// One session's connection: the session, its transport and its lifecycle.
#[derive(Debug)]
pub struct Connection {
    index: u32,
    plan: Arc<AgentPlan>,
    agent: Arc<AgentStats>,
    stats: Arc<SessionStats>,
    state: State,
    link: Option<Box<Link>>,
    backoff: Backoff,
    rng: SmallRng,
    /// The drain after a stop request: its deadline ends every wait.
    drain: Option<StopDrain>,
    stopping: bool,
    /// Why the connection is over, when something broke it.
    broken: Option<String>,
    /// When the last bytes of a closing connection must have been written.
    flush_until: Option<Instant>,
    /// What drains left unfinished, over all connections.
    unfinished: DrainTally,
    /// An [`Action::Send`] is outstanding.
    sending: bool,
    /// An empty buffer for the next send.
    spare: Vec<u8>,
    /// A direct receive is under way (`Some(wait_all)`), and whether it has
    /// been asked to be collected.
    direct_pending: Option<bool>,
    collecting: bool,
    /// Receives come large: keep receiving directly.
    direct: bool,
    eof: bool,
    dialled_once: bool,
    /// Counts connections: a job's answer names the one it belongs to.
    generation: u32,
    /// Answers given on other threads ([`LaterHandler`](crate::handlers::LaterHandler)),
    /// taken at each `poll`; only when the registry has a handler that
    /// gives them.
    late: Option<Arc<LateAnswers>>,
}

impl Connection {
    /// Session `index` of the agent `plan` describes; it dials at once.
    pub fn new(index: u32, plan: Arc<AgentPlan>, agent: Arc<AgentStats>, now: Instant) -> Self {
        Self::with_rng(index, plan, agent, now, SmallRng::from_os_rng())
    }

    /// As [`Connection::new`], with the random source of the back-off jitter.
    pub fn with_rng(
        index: u32,
        plan: Arc<AgentPlan>,
        agent: Arc<AgentStats>,
        now: Instant,
        rng: SmallRng,
    ) -> Self {
        let stats = agent.sessions[index as usize].clone();
        stats.set_state(SessionState::Disconnected);
        let late = late_inbox(&plan, Arc::new(|| {}));
        Connection {
            index,
            backoff: Backoff::new(plan.reconnect),
            plan,
            agent,
            stats,
            state: State::Idle { retry_at: now },
            link: None,
            rng,
            drain: None,
            stopping: false,
            broken: None,
            flush_until: None,
            unfinished: DrainTally::default(),
            sending: false,
            spare: Vec::new(),
            direct_pending: None,
            collecting: false,
            direct: false,
            eof: false,
            dialled_once: false,
            generation: 0,
            late,
        }
    }

    /// How the runtime is woken when a handler answers from another thread:
    /// `wake` is called after each such answer, from that thread, and the
    /// runtime then polls this connection, which takes the answers. Set it
    /// before the first dial.
    ///
    /// Returns whether `wake` was kept: only when a registered handler
    /// answers later. Otherwise it is dropped at once and never called, so
    /// a runtime that waits on what `wake` signals must not wait on it
    /// then (a channel whose sender `wake` held is disconnected, and so
    /// always ready).
    #[must_use]
    pub fn set_waker(&mut self, wake: Wake) -> bool {
        self.late = late_inbox(&self.plan, wake);
        self.late.is_some()
    }

    /// The session index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The session's statistics (also its byte counters).
    pub fn stats(&self) -> &Arc<SessionStats> {
        &self.stats
    }

    /// The running session, while connected.
    pub fn session(&self) -> Option<&WorkerSession> {
        self.link.as_deref().map(Link::session)
    }

    /// The TLS failure that is ending this connection (a refused handshake,
    /// a bad record, an alert), while it lasts: the connection reads nothing
    /// more and writes at most the alert rustls queued before it closes.
    pub fn failure(&self) -> Option<&str> {
        self.link.as_deref().and_then(Link::failure)
    }

    /// Which connection this is (it changes with every connect): the
    /// answers of a closed connection's jobs are ignored.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// What drains left unfinished over this connection's life.
    pub fn unfinished(&self) -> DrainTally {
        self.unfinished
    }

    /// Whether the session has ended for good.
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Whether a stop's drain has reached its deadline.
    pub fn drain_over(&self, now: Instant) -> bool {
        self.drain.is_some_and(|d| d.is_over(now))
    }

    /// Whether a session is waiting to write GOODBYE, whose byte counts
    /// must include every byte received.
    pub fn goodbye_due(&self) -> bool {
        self.session()
            .is_some_and(|s| s.phase() == Phase::GoodbyeDue)
    }

    /// When a closing connection stops waiting, from `now`: the linger, or
    /// the drain's deadline if that comes first.
    pub fn closing_deadline(&self, now: Instant) -> Instant {
        closing_deadline(now, self.drain.as_ref())
    }

    /// Whether nothing of this connection is in a runtime's hands but its
    /// socket: [`Connection::settling`], and no send under way or output
    /// waiting. Such a connection (with its socket) may move to another
    /// thread of the runtime: nothing that answers later holds the thread
    /// it was on.
    pub fn at_rest(&self) -> bool {
        self.settling() && !self.sending && self.link.as_deref().is_some_and(|l| !l.has_output())
    }

    /// Whether the connection comes to rest ([`Connection::at_rest`]) once
    /// its output is written, if it reads nothing more: open, past the
    /// handshake, not stopping or closing, no direct receive under way and
    /// no job out.
    pub fn settling(&self) -> bool {
        self.state == State::Open
            && !self.stopping
            && self.drain.is_none()
            && self.broken.is_none()
            && self.flush_until.is_none()
            && self.direct_pending.is_none()
            && !self.collecting
            && !self.direct
            && !self.eof
            && self.link.as_deref().is_some_and(|link| {
                let session = link.session();
                session.phase() == Phase::Active
                    && session.closed().is_none()
                    && session.jobs_pending() == 0
                    && link.failure().is_none()
            })
    }

    // ---- what to do -----------------------------------------------------

    /// The next action. Call it after every event until it returns
    /// [`Action::Wait`].
    pub fn poll(&mut self, now: Instant) -> Action {
        if let Some(late) = &self.late {
            for (generation, task, outcome) in late.take() {
                self.on_job_done(generation, task, outcome, now);
            }
        }
        match self.state {
            State::Stopped => Action::Stop,
            State::Closed => Action::Wait,
            State::Closing => {
                self.state = State::Closed;
                Action::Close
            }
            State::Idle { retry_at } => {
                if self.stopping {
                    self.stop();
                    Action::Stop
                } else if now >= retry_at {
                    Action::Dial
                } else {
                    Action::Wait
                }
            }
            State::Dialling { deadline } => {
                if self.stopping {
                    self.close("stopped while dialling".to_owned())
                } else if now >= deadline {
                    let why = format!(
                        "cannot reach manager {}: connect timed out",
                        self.plan.endpoint
                    );
                    self.close(why)
                } else {
                    Action::Wait
                }
            }
            State::Linger { until } => {
                if self.eof || self.broken.is_some() || now >= until {
                    self.begin_close()
                } else {
                    Action::Wait
                }
            }
            State::Open => self.poll_open(now),
        }
    }

    fn poll_open(&mut self, now: Instant) -> Action {
        if self.broken.is_some() {
            // A TLS failure is the cause of what broke after it (the
            // alert's write to a peer that hung up).
            if let Some(why) = self.link.as_deref().and_then(Link::failure) {
                self.broken = Some(why.to_owned());
            }
            return self.begin_close();
        }
        let Some(link) = self.link.as_deref_mut() else {
            return self.begin_close();
        };
        if let Some(why) = link.failure() {
            // Write the alert rustls queued (one last send), then close. A
            // manager not taking it, or a send stuck before the failure,
            // gets LINGER, as for the last frames.
            let why = why.to_owned();
            let until = *self
                .flush_until
                .get_or_insert(closing_deadline(now, self.drain.as_ref()));
            if !self.sending && link.has_output() {
                return self.send();
            }
            if !self.sending || now >= until {
                return self.close(why);
            }
            return Action::Wait;
        }
        if let Some(drain) = self.drain.filter(|d| d.is_over(now)) {
            // The whole drain ends here, finished or not.
            let session = link.session();
            let in_flight = if session.closed().is_none() {
                session.in_flight()
            } else {
                0
            };
            self.unfinished += drain.timed_out(
                self.index,
                in_flight,
                session.results_unwritten(),
                &self.stats,
            );
            return self.begin_close();
        }
        if link.session().poll_timeout().is_some_and(|t| now >= t) {
            if self.direct_pending == Some(true) {
                // The rest of a large frame may be arriving into a receive
                // that reports nothing until it is complete: collect what it
                // holds (counted as received then, which the heartbeat sees)
                // before the deadline is judged.
                if self.collecting {
                    return Action::Wait;
                }
                self.collecting = true;
                return Action::Collect;
            }
            link.session_mut().handle_timeout(now);
        }
        if let Some(job) = link.session_mut().take_job() {
            return Action::Run(job);
        }
        if !self.sending {
            if !link.has_output() {
                link.on_flushed(now);
            }
            if link.has_output() {
                return self.send();
            }
        }
        if link.session().closed().is_none() {
            return Action::Wait;
        }
        if self.sending {
            // The last frames (GOODBYE, ERROR) are being written; a manager
            // that stopped reading gets LINGER to take them.
            self.flush_until
                .get_or_insert(closing_deadline(now, self.drain.as_ref()));
            if self.flush_over(now) {
                return self.close("the manager did not read the last frames".to_owned());
            }
            return Action::Wait;
        }
        if link.session().closed().is_some_and(|r| r.wants_linger()) {
            // Everything is written: half-close, then read to end of stream.
            self.state = State::Linger {
                until: closing_deadline(now, self.drain.as_ref()),
            };
            return Action::ShutdownWrite;
        }
        self.begin_close()
    }

    fn flush_over(&self, now: Instant) -> bool {
        self.flush_until.is_some_and(|at| now >= at)
    }

    /// Hand out the session's output.
    fn send(&mut self) -> Action {
        match self.transmit() {
            Some(bytes) => Action::Send(bytes),
            None => Action::Wait,
        }
    }

    /// The bytes to send now, if no send is outstanding and there are any:
    /// for a runtime that sends early, before its next [`Connection::poll`]
    /// (while connected and not closing).
    pub fn transmit(&mut self) -> Option<Vec<u8>> {
        if self.sending || self.state != State::Open || self.broken.is_some() {
            return None;
        }
        let link = self.link.as_deref_mut()?;
        if !link.has_output() {
            return None;
        }
        self.sending = true;
        Some(link.take_output(std::mem::take(&mut self.spare)))
    }

    /// Plaintext bytes queued and not handed out yet: a hint for a runtime
    /// that sends early once enough has piled up ([`Connection::transmit`]).
    pub fn queued_output(&self) -> usize {
        match (&self.link, self.sending) {
            (Some(link), false) => link.queued_output(),
            _ => 0,
        }
    }

    /// The earliest instant at which [`Connection::poll`] has something to
    /// do without an event.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle { retry_at } => Some(retry_at),
            State::Dialling { deadline } => Some(deadline),
            State::Linger { until } => Some(until),
            State::Open => {
                // While a receive is being collected, its completion (an
                // event) comes first.
                let session = self
                    .session()
                    .and_then(WorkerSession::poll_timeout)
                    .filter(|_| !self.collecting);
                [session, self.drain.map(|d| d.deadline()), self.flush_until]
                    .into_iter()
                    .flatten()
                    .min()
            }
            State::Closing | State::Closed | State::Stopped => None,
        }
    }

    /// How to receive now.
    pub fn receive(&self) -> Receive {
        match self.state {
            State::Linger { .. } if !self.eof => Receive::Shared,
            State::Open if !self.eof && self.broken.is_none() => {
                let Some(link) = self.link.as_deref() else {
                    return Receive::Off;
                };
                if link.session().closed().is_some() || !link.wants_read() {
                    return Receive::Off;
                }
                // Large frames are received straight into the session's
                // frame buffer (one copy) instead of into shared buffers
                // and copied again. The rest of a large frame under way is
                // one receive that waits for all of it; after one, receives
                // stay direct (so the next frame's header and start land in
                // the frame buffer too) until one brings little.
                let needed = link.recv_hint(0);
                if needed >= LARGE_FRAME_REMAINDER {
                    Receive::Direct {
                        len: needed.min(DIRECT_MAX),
                        wait_all: true,
                    }
                } else if self.direct {
                    Receive::Direct {
                        len: needed.max(DIRECT_CHUNK),
                        wait_all: false,
                    }
                } else {
                    Receive::Shared
                }
            }
            _ => Receive::Off,
        }
    }
}

mod events;

#[cfg(test)]
mod tests;
