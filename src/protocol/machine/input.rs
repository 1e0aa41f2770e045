//! Bytes in: one decode path ([`WorkerMachine::poll_input`]) that takes
//! frames from what the receive buffer holds, then from the driver's input
//! where it lies, and keeps what it cannot act on yet; the `max_in_flight`
//! and output back-pressure that pauses reading, and EOF from the manager.
//!
//! It only cuts frames and hands each to the frame handling
//! ([`WorkerMachine::on_frame`]); it never acts on a frame's meaning itself,
//! and it never holds more than `max_body` plus a header for a peer.

use std::time::Instant;

use super::task_body::task_request;
use super::{
    CloseReason, DrainOrigin, Event, FrameAt, Input, Phase, Step, TaskAt, TaskRequest,
    WorkerMachine,
};
use crate::protocol::frame::{decode, Body, Decoded, FrameError, FrameKind, Taken};

/// A whole frame, or a header that will be refused, is at the front of `bytes`.
pub(super) fn has_frame(bytes: &[u8], max_body: u32) -> bool {
    !matches!(decode(bytes, max_body), Ok(Decoded::Incomplete { .. }))
}

impl WorkerMachine {
    /// Whether the driver should read from the socket now. False while
    /// `max_in_flight` tasks are held, while too much output is queued, and
    /// once nothing more can be accepted.
    pub fn wants_read(&self) -> bool {
        match self.phase {
            Phase::AwaitingWelcome | Phase::Active => {}
            Phase::Draining(DrainOrigin::PeerEof) | Phase::GoodbyeDue | Phase::Closed => {
                return false
            }
            Phase::Draining(_) => {}
        }
        self.in_flight() < self.max_in_flight && self.out.len() < self.output_high_water
    }

    /// Space to read into, at least `min` bytes (zero-filled: ask only for what
    /// the next read takes; [`WorkerMachine::recv_hint`] says what the frame
    /// under way still needs); follow with [`WorkerMachine::handle_received`].
    pub fn recv_space(&mut self, min: usize) -> &mut [u8] {
        self.recv.spare(min)
    }

    /// How many bytes the next read should ask for, given a preferred chunk.
    pub fn recv_hint(&self, chunk: usize) -> usize {
        self.recv.read_hint(chunk)
    }

    /// Record that `n` bytes were read into [`WorkerMachine::recv_space`].
    pub fn handle_received(&mut self, n: usize, now: Instant) {
        self.recv.commit(n);
        if n > 0 {
            self.last_received = now;
            self.reopen_drain();
        }
    }

    /// Bytes arrived while GOODBYE was due but before it was written (a
    /// driver that reads on another thread may hand over a chunk it read just
    /// before): GOODBYE's `bytes_received` will count them, so every TASK in
    /// them is answered first. The drain goes on; GOODBYE is due again once
    /// they are.
    #[inline]
    fn reopen_drain(&mut self) {
        if self.phase == Phase::GoodbyeDue {
            self.phase = Phase::Draining(self.drain.unwrap_or(DrainOrigin::Worker));
        }
    }

    /// Copy bytes in (for drivers that do not read in place).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        self.recv.extend(bytes);
        if !bytes.is_empty() {
            self.last_received = now;
            self.reopen_drain();
        }
    }

    /// The manager closed its write side (read returned 0).
    pub fn handle_eof(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingWelcome => self.close(CloseReason::PeerClosed),
            Phase::Active | Phase::Draining(_) => {
                self.drain = Some(DrainOrigin::PeerEof);
                self.phase = Phase::Draining(DrainOrigin::PeerEof);
                self.check_drained();
                if self.phase == Phase::Draining(DrainOrigin::PeerEof) {
                    self.probe_peer(now);
                }
            }
            Phase::GoodbyeDue | Phase::Closed => {}
        }
    }

    /// The next thing for the driver to act on from the bytes already in the
    /// receive buffer ([`WorkerMachine::handle_input`],
    /// [`WorkerMachine::handle_received`]), or `None` when it must read more
    /// (or wait for in-flight tasks to free a slot). A task borrows from the
    /// machine: answer it with [`WorkerMachine::complete_task`].
    pub fn poll_event(&mut self, now: Instant) -> Option<Event<'_>> {
        let mut input: &[u8] = &[];
        match self.poll_input(&mut input, now)? {
            Input::Event(event) => Some(event),
            Input::Task(task) => Some(Event::Task(self.task(task))),
        }
    }

    /// The next thing for the driver to act on, taken from the stream of
    /// what the receive buffer holds followed by `input`: the one decode
    /// path. Each frame taken is cut from the front of `input` and decoded
    /// where it lies, unless the receive buffer holds its start (then it is
    /// completed there from `input`). A task is handed out as a [`TaskAt`]:
    /// read it, and begin its RESULT, with [`WorkerMachine::begin_task`].
    ///
    /// Poll until this returns `None`; by then `input` is empty, and
    /// whatever of it could not be acted on (the start of a frame, or whole
    /// frames held back by a full window) is kept in the receive buffer, to
    /// come first next time. The poll that returns `None` also decides
    /// whether a drain is over, once per batch.
    #[inline(always)]
    pub fn poll_input<'i>(&mut self, input: &mut &'i [u8], now: Instant) -> Option<Input<'i>> {
        if !input.is_empty() {
            self.last_received = now;
            self.reopen_drain();
        }
        if self.close_pending {
            return self.take_close_event().map(Input::Event);
        }
        loop {
            if !self.may_take_frame() {
                self.recv.keep(input);
                self.more_input = false;
                return None;
            }
            let Taken { header, body } = match self.recv.next_from(input) {
                Ok(Some(taken)) => taken,
                Ok(None) => {
                    // What was left of `input` is kept in the receive
                    // buffer: a TASK begun there still counts as arriving.
                    self.more_input = false;
                    self.check_drained();
                    return None;
                }
                Err(err) => return self.refuse_undecodable(err).map(Input::Event),
            };
            // Until the driver polls again, the frames after this one are
            // still unread in `input`: no GOODBYE may be declared due
            // meanwhile.
            self.more_input = !input.is_empty();
            let at = match body {
                Body::Input(body) => FrameAt::Input { body, rest: input },
                Body::Buffered => FrameAt::Buffered,
            };
            let step = if header.kind == FrameKind::Task && self.phase != Phase::AwaitingWelcome {
                self.on_task(header, at, now)
            } else {
                self.on_frame(header, at, now)
            };
            match step {
                Step::Continue => {}
                Step::Return(event) => return event.map(Input::Event),
                Step::Task {
                    ack_requested,
                    name_len,
                } => {
                    return Some(Input::Task(TaskAt {
                        id: header.id,
                        name_len,
                        ack_requested,
                        body: match body {
                            Body::Input(body) => Some(body),
                            Body::Buffered => None,
                        },
                    }));
                }
            }
        }
    }

    /// The task `at` points at, read where its frame lies.
    #[inline]
    pub(super) fn task<'s>(&'s self, at: TaskAt<'s>) -> TaskRequest<'s> {
        let body = at.body.unwrap_or_else(|| self.recv.last_body());
        task_request(at.id, body, at.name_len, at.ack_requested)
    }

    /// Bytes received and not yet decoded, held in the receive buffer.
    pub fn buffered(&self) -> usize {
        self.recv.buffered()
    }

    /// Whether another frame may be taken now. A task handed out before
    /// and not answered yet is held from here on.
    #[inline]
    fn may_take_frame(&mut self) -> bool {
        if let Some(id) = self.current.take() {
            self.in_flight.insert(id);
        }
        !matches!(self.phase, Phase::Closed | Phase::GoodbyeDue)
            && self.in_flight.len() < self.max_in_flight
    }

    /// A whole frame (or a header that will be refused) is buffered.
    pub(super) fn has_buffered_frame(&self) -> bool {
        has_frame(self.recv.pending(), self.recv.max_body())
    }
}

impl WorkerMachine {
    /// A frame that cannot be decoded (either input path): the ERROR its
    /// code names, and the close.
    #[cold]
    fn refuse_undecodable(&mut self, err: FrameError) -> Option<Event<'static>> {
        let code = err.code();
        self.violation(code, err.to_string());
        self.take_close_event()
    }
}
