//! [`Driver`]: a fake runtime around one [`Connection`], for the targets
//! that drive a session. It carries out the connection's actions the way
//! both runtimes do (dial, send, run, collect, half-close, close, stop) and
//! reports their events back, on a fake clock the target moves, with the
//! manager at the other end played by the target: the driver holds what the
//! connection sends until the target delivers it, and reads what the target
//! hands it only while [`Connection::receive`] lets it.
//!
//! It checks the lifecycle's own rules on every step: `poll` comes back to
//! [`Action::Wait`] within a bounded number of actions, at most one send is
//! outstanding, nothing is sent after the write side is shut down, a
//! [`Action::Collect`] comes only while a wait-all receive is under way, a
//! closed connection holds no session and reads nothing (and names the
//! refusal only of a refused session), a failed TLS link reads nothing and
//! writes at most its alert, a stopping connection waits for nothing past
//! the drain's deadline, and a stopped one stays stopped. It owns no
//! socket, thread or real clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::connection::{Action, Connection, Receive};
use crate::handlers::{HandlerRegistry, Job};
use crate::protocol::CloseReason;
use crate::runtime::{AgentPlan, ByteCounters, ReconnectPolicy};
use crate::session::{SessionConfig, WorkerSession};
use crate::stats::AgentStats;
use crate::transport::tls::ClientTls;

/// The most actions one `poll` round may hand out before it must come to
/// [`Action::Wait`]: a round runs at most `max_in_flight` jobs, one send,
/// and a close followed by an immediate redial's first send.
const MAX_ACTIONS: usize = 64;

/// The stop's drain deadline in the targets.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The plan of a one-session agent for a target: `session` over
/// `handlers`, TLS when `tls` is given, short and fixed lifecycle
/// timings (back-off 10 ms to 1 s, connect timeout 5 s).
pub(super) fn plan(
    session: SessionConfig,
    handlers: HandlerRegistry,
    tls: Option<ClientTls>,
) -> Arc<AgentPlan> {
    let endpoint = if tls.is_some() {
        "tls://localhost:7000"
    } else {
        "tcp://127.0.0.1:7000"
    };
    Arc::new(AgentPlan {
        endpoint: endpoint.parse().expect("a valid endpoint"),
        sessions: 1,
        threads: 1,
        session,
        handlers,
        reconnect: ReconnectPolicy {
            min: Duration::from_millis(10),
            max: Duration::from_secs(1),
            stable_after: Duration::from_secs(10),
        },
        drain_timeout: DRAIN_TIMEOUT,
        connect_timeout: Duration::from_secs(5),
        tcp: Default::default(),
        tls,
        loop_balance: Default::default(),
    })
}

/// What happened to the connection during a `poll` round that the manager
/// side must know of, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// A new socket is connected (a dial, or a redial after back-off).
    Connected { generation: u32 },
    /// The socket of connection `generation` is closed; `reason` is how its
    /// session ended (`None`: it had not), `refusal` the line that stops
    /// the agent.
    Closed {
        generation: u32,
        reason: Option<CloseReason>,
        refusal: Option<String>,
        welcomed: bool,
        tasks: u64,
        in_flight: usize,
        /// Bytes read on it.
        received: u64,
    },
}

/// A fake runtime around one [`Connection`].
pub(super) struct Driver {
    conn: Connection,
    counters: ByteCounters,
    /// The fake clock.
    pub now: Instant,
    /// Receive as the io_uring runtime does (straight into the frame buffer
    /// when [`Receive::Direct`] says so, with wait-all receives posted), or
    /// as the blocking runtime does (always into its own buffer).
    direct_reads: bool,
    /// The bytes of the outstanding [`Action::Send`].
    outbox: Option<Vec<u8>>,
    /// Jobs handed out and not answered, with their connection.
    jobs: VecDeque<(u32, Job)>,
    events: Vec<Lifecycle>,
    /// A socket is open (connected, not yet closed).
    open: bool,
    eof: bool,
    shut_down: bool,
    stopped: bool,
    /// A wait-all receive is posted and holds nothing yet.
    posted: bool,
    /// Sends handed out since the link failed (the alert).
    sends_after_failure: u32,
    /// When a stop was first asked for.
    stop_asked: Option<Instant>,
}

impl Driver {
    /// A driver of session 0 of `plan`; nothing happens before the first
    /// [`Driver::pump`]. The back-off jitter is seeded, so two drivers of
    /// the same plan and events do the same.
    pub(super) fn new(plan: Arc<AgentPlan>, direct_reads: bool, now: Instant) -> Self {
        let agent = Arc::new(AgentStats::with_handlers(
            plan.session.worker_id.clone(),
            plan.session.runtime,
            1,
            plan.handlers.names(),
        ));
        let conn = Connection::with_rng(0, plan, agent, now, SmallRng::seed_from_u64(0x5eed));
        Driver {
            counters: ByteCounters::new(conn.stats().clone()),
            conn,
            now,
            direct_reads,
            outbox: None,
            jobs: VecDeque::new(),
            events: Vec::new(),
            open: false,
            eof: false,
            shut_down: false,
            stopped: false,
            posted: false,
            sends_after_failure: 0,
            stop_asked: None,
        }
    }

    pub(super) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The running session, while connected.
    pub(super) fn session(&self) -> Option<&WorkerSession> {
        self.conn.session()
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether a socket is open.
    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// Whether a read would be made now: a socket is open, its end of
    /// stream not yet read, and the connection wants to receive.
    pub(super) fn can_read(&self) -> bool {
        self.open && !self.eof && self.conn.receive() != Receive::Off
    }

    /// What happened since the last call.
    pub(super) fn take_events(&mut self) -> Vec<Lifecycle> {
        std::mem::take(&mut self.events)
    }

    /// Jobs handed out and not answered yet, oldest first, each with the
    /// connection it came from.
    pub(super) fn take_jobs(&mut self) -> VecDeque<(u32, Job)> {
        std::mem::take(&mut self.jobs)
    }

    /// Move the clock to `at` (never back), then poll.
    pub(super) fn advance_to(&mut self, at: Instant) {
        self.now = self.now.max(at);
        self.pump();
    }

    /// Poll and carry out every action until [`Action::Wait`] or
    /// [`Action::Stop`]; then post the receive the connection asks for.
    pub(super) fn pump(&mut self) {
        let now = self.now;
        for _ in 0..MAX_ACTIONS {
            let action = self.conn.poll(now);
            if self.stopped {
                assert_eq!(action, Action::Stop, "a stopped connection came back");
            }
            match action {
                Action::Wait => {
                    self.post_receive();
                    self.check_failed_link();
                    self.check_stopping();
                    return;
                }
                Action::Dial => {
                    assert!(!self.open, "a dial while a socket is open");
                    self.conn.on_dialling(now);
                    self.conn.on_connected(now);
                    self.open = true;
                    self.eof = false;
                    self.shut_down = false;
                    self.posted = false;
                    self.sends_after_failure = 0;
                    self.events.push(Lifecycle::Connected {
                        generation: self.conn.generation(),
                    });
                }
                Action::Send(bytes) => {
                    assert!(self.open, "a send without a socket");
                    assert!(self.outbox.is_none(), "two sends outstanding");
                    assert!(!self.shut_down, "a send after the write side was shut down");
                    if self.conn.failure().is_some() {
                        self.sends_after_failure += 1;
                        assert!(
                            self.sends_after_failure <= 1,
                            "more than the alert written after the link failed"
                        );
                    }
                    self.outbox = Some(bytes);
                }
                Action::Run(job) => {
                    assert!(self.open, "a job without a connection");
                    self.jobs.push_back((self.conn.generation(), job));
                }
                Action::Collect => {
                    assert!(self.posted, "Collect without a wait-all receive under way");
                    // It held nothing: every delivery is reported as it comes.
                    self.posted = false;
                    self.conn.on_receive_cancelled();
                }
                Action::ShutdownWrite => {
                    assert!(self.open && !self.shut_down, "a second half-close");
                    assert!(self.outbox.is_none(), "a half-close with a send under way");
                    self.shut_down = true;
                }
                Action::Close => self.close(),
                Action::Stop => {
                    assert!(!self.open, "stopped with a socket open");
                    assert!(self.conn.is_stopped());
                    assert!(self.conn.session().is_none());
                    assert_eq!(self.conn.poll_timeout(), None, "a stopped connection waits");
                    self.stopped = true;
                    return;
                }
            }
        }
        panic!("poll handed out {MAX_ACTIONS} actions without coming to Wait");
    }

    /// The runtime closes the socket after [`Action::Close`] and says so.
    fn close(&mut self) {
        assert!(self.open, "Close without a socket");
        let generation = self.conn.generation();
        let session = self.conn.session();
        let reason = session.and_then(|s| s.closed().cloned());
        let welcomed = session.is_some_and(|s| s.welcomed_at().is_some());
        let tasks = session.map_or(0, WorkerSession::tasks_this_connection);
        let in_flight = session.map_or(0, WorkerSession::in_flight);
        let received = self.conn.stats().bytes_received();
        self.open = false;
        self.outbox = None;
        self.posted = false;
        let refusal = self.conn.on_closed(self.now);
        assert!(self.conn.session().is_none(), "a session after on_closed");
        assert_eq!(self.conn.receive(), Receive::Off, "reading after on_closed");
        if let Some(reason) = &reason {
            assert_eq!(
                refusal.is_some(),
                reason.is_refusal(),
                "refusal {refusal:?} for a session that ended {reason:?}"
            );
        } else {
            assert_eq!(refusal, None, "a refusal without a session that ended");
        }
        self.events.push(Lifecycle::Closed {
            generation,
            reason,
            refusal,
            welcomed,
            tasks,
            in_flight,
            received,
        });
    }

    /// As the io_uring runtime: a wait-all receive of the rest of a large
    /// frame is posted once the connection asks for it.
    fn post_receive(&mut self) {
        if !self.direct_reads || !self.open || self.eof || self.posted {
            return;
        }
        if let Receive::Direct {
            len,
            wait_all: true,
        } = self.conn.receive()
        {
            if self.conn.recv_space(len, true).is_some() {
                self.posted = true;
            }
        }
    }

    /// A stopping connection waits for nothing past the drain's deadline,
    /// and has stopped once it is reached.
    fn check_stopping(&self) {
        let Some(asked) = self.stop_asked else {
            return;
        };
        let deadline = asked + DRAIN_TIMEOUT;
        assert!(
            self.now < deadline,
            "still running {:?} after the stop request, past the drain timeout",
            self.now - asked
        );
        let at = self
            .conn
            .poll_timeout()
            .expect("a stopping connection waits for a deadline");
        assert!(
            at <= deadline,
            "a stopping connection waits until {:?} after the stop request",
            at.saturating_duration_since(asked)
        );
    }

    /// A failed link reads nothing more.
    fn check_failed_link(&self) {
        if self.conn.failure().is_some() {
            assert_eq!(
                self.conn.receive(),
                Receive::Off,
                "a failed link still reads"
            );
        }
    }

    /// The manager reads the outstanding send: its bytes are counted,
    /// reported written and returned. The caller polls ([`Driver::pump`])
    /// once it has handled them, so that what follows (a close, a redial)
    /// comes after.
    pub(super) fn take_send(&mut self) -> Option<Vec<u8>> {
        let bytes = self.outbox.take()?;
        self.counters.sent(bytes.len());
        self.conn.on_sent(bytes.clone());
        Some(bytes)
    }

    /// The manager reads everything sent, into `to`, until nothing more
    /// comes (the connection polled after each send); returns how many
    /// sends it read.
    pub(super) fn deliver_all(&mut self, to: &mut Vec<u8>) -> usize {
        for sends in 0..MAX_ACTIONS {
            let Some(bytes) = self.take_send() else {
                return sends;
            };
            to.extend_from_slice(&bytes);
            self.pump();
        }
        panic!("sends kept coming with nothing new to answer");
    }

    /// Receive `bytes` in one batch of reads (no poll between them, as a
    /// runtime reaping several completions at once), each of the size
    /// `size(left, how)` gives (at least 1, at most what a direct receive
    /// asks for): through [`Connection::receive`]'s direct receives when
    /// this driver reads directly, else into the runtime's own buffer.
    /// Returns false, reading nothing, when no read would be made now
    /// ([`Driver::can_read`]).
    pub(super) fn receive(
        &mut self,
        bytes: &[u8],
        size: &mut dyn FnMut(usize, Receive) -> usize,
    ) -> bool {
        if !self.can_read() {
            return false;
        }
        let mut at = 0;
        while at < bytes.len() {
            let left = bytes.len() - at;
            let receive = if self.direct_reads {
                self.conn.receive()
            } else {
                Receive::Shared
            };
            let mut n = size(left, receive).clamp(1, left);
            match receive {
                Receive::Direct { len, wait_all } => {
                    n = n.min(len);
                    let Some(space) = self.conn.recv_space(len, wait_all) else {
                        panic!("a direct receive without a session");
                    };
                    space[..n].copy_from_slice(&bytes[at..at + n]);
                    self.counters.received(n);
                    self.conn.on_received(n, self.now);
                    self.posted = false;
                }
                // Off: bytes already read when the connection stopped
                // asking for more are still reported.
                Receive::Shared | Receive::Off => {
                    self.counters.received(n);
                    self.conn.on_input(&bytes[at..at + n], self.now);
                }
            }
            at += n;
        }
        true
    }

    /// The manager's end of stream, read if a read would be made now.
    /// Returns whether it was.
    pub(super) fn receive_eof(&mut self) -> bool {
        if !self.can_read() {
            return false;
        }
        self.eof = true;
        self.posted = false;
        self.conn.on_eof(self.now);
        true
    }

    /// Answer job `task` of connection `generation`, then poll.
    pub(super) fn job_done(&mut self, generation: u32, task: u64, outcome: crate::exec::Outcome) {
        self.conn.on_job_done(generation, task, outcome, self.now);
        self.pump();
    }

    /// Ask the connection to stop (the first request counts; the drain
    /// runs from it), then poll. From now on every poll round checks that
    /// the connection waits for nothing past the drain's deadline and has
    /// stopped once it is reached.
    pub(super) fn request_stop(&mut self) {
        self.stop_asked.get_or_insert(self.now);
        self.conn.request_stop(self.now);
        self.pump();
    }

    /// One step of a stop, once the target has done its part (the manager
    /// reading, answering, closing): true once stopped, else the clock
    /// jumps to the next deadline, which comes by the drain's.
    pub(super) fn stop_step(&mut self) -> bool {
        if !self.stopped {
            let at = self
                .conn
                .poll_timeout()
                .expect("a stopping connection waits for a deadline");
            self.advance_to(at);
        }
        self.stopped
    }

    /// The most steps [`Driver::stop_step`] may take: each reaches a
    /// deadline, all of them by the drain's, and the most frequent is a
    /// 20 ms heartbeat (150 in a 3 s drain); a few more for the sleeps,
    /// the linger and the close.
    pub(super) const STOP_STEPS: usize = 256;
}
