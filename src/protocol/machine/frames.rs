//! Acting on one decoded frame: WELCOME completes the handshake, TASK is
//! checked (name, unique id, drain) and handed out, PING is answered, DRAIN
//! and GOODBYE end the session's intake, ERROR and any frame out of order
//! close it.
//!
//! It never decodes bytes nor touches the receive buffer beyond reading the
//! body it is given ([`FrameAt`]); every refusal of the peer goes through
//! [`WorkerMachine::violation`], which queues ERROR and closes.

use std::time::{Duration, Instant};

use super::input::has_frame;
use super::task_body::{task_body_error, task_name_len};
use super::welcome::parse_welcome;
use super::{CloseReason, DrainOrigin, Event, FrameAt, Phase, Step, WorkerMachine};
use crate::format::{peer_text, MAX_PEER_TEXT};
use crate::protocol::frame::{
    encode_frame, FrameHeader, FrameKind, FLAG_ACK_REQUESTED, FLAG_FAILED, MAX_HANDLER_NAME,
};
use crate::protocol::hello::{codes, ErrorBody};

impl WorkerMachine {
    /// Act on one frame taken from the input; `at` says where its body lies.
    pub(super) fn on_frame(&mut self, header: FrameHeader, at: FrameAt<'_>, now: Instant) -> Step {
        match (self.phase, header.kind) {
            (_, FrameKind::Error) => {
                let body: Option<ErrorBody> = serde_json::from_slice(at.body(&self.recv)).ok();
                // The manager's text is kept and logged: capped and escaped.
                let (code, message) = body
                    .map(|b| {
                        (
                            peer_text(&b.code, MAX_HANDLER_NAME),
                            peer_text(&b.message, MAX_PEER_TEXT),
                        )
                    })
                    .unwrap_or_else(|| ("unknown".to_owned(), "unparseable ERROR body".to_owned()));
                let during_handshake = self.phase == Phase::AwaitingWelcome;
                self.close(CloseReason::PeerError {
                    code,
                    message,
                    during_handshake,
                });
                Step::Return(self.take_close_event())
            }
            (Phase::AwaitingWelcome, FrameKind::Welcome) => {
                match parse_welcome(at.body(&self.recv)) {
                    Ok(welcome) => {
                        self.peer_max_body = welcome.max_body;
                        self.peer_max_body_known = true;
                        self.heartbeat = (welcome.heartbeat_ms > 0)
                            .then(|| Duration::from_millis(welcome.heartbeat_ms.into()));
                        self.phase = match self.drain {
                            Some(origin) => Phase::Draining(origin),
                            None => Phase::Active,
                        };
                        self.last_received = now;
                        Step::Return(Some(Event::Welcomed(welcome)))
                    }
                    Err((code, message)) => {
                        self.violation(code, message);
                        Step::Return(self.take_close_event())
                    }
                }
            }
            (Phase::AwaitingWelcome, kind) => {
                self.violation(codes::UNEXPECTED_FRAME, format!("{kind} before WELCOME"));
                Step::Return(self.take_close_event())
            }
            (_, FrameKind::Welcome) => {
                self.violation(codes::UNEXPECTED_FRAME, "second WELCOME".to_owned());
                Step::Return(self.take_close_event())
            }
            (_, kind @ (FrameKind::Hello | FrameKind::Ack | FrameKind::Result)) => {
                self.violation(
                    codes::UNEXPECTED_FRAME,
                    format!("a worker never receives {kind}"),
                );
                Step::Return(self.take_close_event())
            }
            (_, FrameKind::Ping) => {
                encode_frame(&mut self.out, FrameKind::Pong, 0, header.id, &[]);
                self.last_sent = now;
                Step::Continue
            }
            (_, FrameKind::Pong) => Step::Continue,
            (_, FrameKind::Drain) => {
                self.refuse_tasks = true;
                if self.drain.is_some() {
                    return Step::Continue;
                }
                self.drain = Some(DrainOrigin::Manager);
                self.phase = Phase::Draining(DrainOrigin::Manager);
                let more = match at {
                    FrameAt::Input { rest, .. } => has_frame(rest, self.recv.max_body()),
                    FrameAt::Buffered => false,
                };
                if !more {
                    self.check_drained();
                }
                Step::Return(Some(Event::DrainRequested))
            }
            (_, FrameKind::Goodbye) => {
                self.close(CloseReason::PeerGoodbye);
                Step::Return(self.take_close_event())
            }
            (_, FrameKind::Task) => self.on_task(header, at, now),
        }
    }

    /// A TASK (after WELCOME). The common case is inlined into the poll
    /// loops; every refusal is out of line.
    #[inline(always)]
    pub(super) fn on_task(&mut self, header: FrameHeader, at: FrameAt<'_>, now: Instant) -> Step {
        let body = at.body(&self.recv);
        let Some(name_len) = task_name_len(body) else {
            let message = task_body_error(body);
            return self.refuse_frame(codes::BAD_FRAME, message);
        };
        // `current` is empty here (taking the frame moved it into the set),
        // and the set is empty while every task is answered at once: then no
        // hashing at all.
        if !self.in_flight.is_empty() && self.in_flight.contains(&header.id) {
            return self.duplicate_task(header.id);
        }
        if self.refuse_tasks {
            self.refuse_draining(header.id, now);
            return Step::Continue;
        }
        self.current = Some(header.id);
        let ack_requested = header.flags & FLAG_ACK_REQUESTED != 0;
        if ack_requested {
            self.ack(header.id, now);
        }
        Step::Task {
            ack_requested,
            name_len,
        }
    }

    #[cold]
    #[inline(never)]
    fn refuse_frame(&mut self, code: &'static str, message: String) -> Step {
        self.violation(code, message);
        Step::Return(self.take_close_event())
    }

    #[cold]
    #[inline(never)]
    fn duplicate_task(&mut self, id: u64) -> Step {
        self.refuse_frame(
            codes::DUPLICATE_TASK_ID,
            format!("task id {id} is already in flight"),
        )
    }

    /// A TASK that arrived during a drain: RESULT FAILED `draining`.
    #[cold]
    #[inline(never)]
    fn refuse_draining(&mut self, id: u64, now: Instant) {
        self.tasks_refused_draining += 1;
        let body = self.failure_body(codes::DRAINING, "worker is draining");
        encode_frame(&mut self.out, FrameKind::Result, FLAG_FAILED, id, &body);
        self.results_queued += 1;
        self.last_sent = now;
    }

    #[inline(never)]
    fn ack(&mut self, id: u64, now: Instant) {
        encode_frame(&mut self.out, FrameKind::Ack, 0, id, &[]);
        self.last_sent = now;
    }
}
