//! Bytes in: reading into the receive buffer or decoding in place from
//! the driver's input ([`WorkerMachine::poll_event`],
//! [`WorkerMachine::poll_input`]), the `max_in_flight` and output
//! back-pressure that pauses reading, and EOF from the manager.
//!
//! It only cuts frames and hands each to the frame handling
//! ([`WorkerMachine::on_frame`]); it never acts on a frame's meaning itself,
//! and it never holds more than `max_body` plus a header for a peer.

use std::time::Instant;

use super::task_body::task_request;
use super::{CloseReason, DrainOrigin, Event, FrameAt, Phase, Step, WorkerMachine};
use crate::protocol::frame::{decode, Decoded, FrameError, FrameKind, HEADER_LEN};

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

    /// The next thing for the driver to act on, or `None` when it must read
    /// more (or wait for in-flight tasks to free a slot).
    pub fn poll_event(&mut self, now: Instant) -> Option<Event<'_>> {
        if self.close_pending {
            self.close_pending = false;
            return self.close_reason.clone().map(Event::Closed);
        }
        loop {
            if !self.may_take_frame() {
                return None;
            }
            let header = match self.recv.next_frame() {
                Ok(Some(frame)) => frame.header,
                Ok(None) => {
                    self.check_drained();
                    return None;
                }
                Err(err) => return self.refuse_undecodable(err),
            };
            match self.on_frame(header, FrameAt::Buffered, now) {
                Step::Continue => {}
                Step::Return(event) => return event,
                Step::Task {
                    ack_requested,
                    name_len,
                } => {
                    // The frame's body is still where `next_frame` left it.
                    let body = self.recv.last_body();
                    return Some(Event::Task(task_request(
                        header.id,
                        body,
                        name_len,
                        ack_requested,
                    )));
                }
            }
        }
    }

    /// Like [`WorkerMachine::poll_event`], but decodes frames where they lie
    /// in `input` instead of copying them into the receive buffer first. Each
    /// frame acted on is cut from the front of `input`; a task borrows from
    /// `input`, not from the machine.
    ///
    /// When this returns `None`, what is left in `input` (the start of a
    /// frame, or whole frames held back by a full window or a closed
    /// connection) must be handed to [`WorkerMachine::stash_input`] before
    /// any more bytes arrive. Only call this while the receive buffer holds
    /// nothing ([`WorkerMachine::buffered`] is 0): the bytes buffered come
    /// first. If it does not, nothing is decoded and `None` is returned.
    ///
    /// Record the arrival of the bytes with [`WorkerMachine::note_input`].
    #[inline]
    pub fn poll_input<'b>(&mut self, input: &mut &'b [u8], now: Instant) -> Option<Event<'b>> {
        self.more_input = false;
        if self.close_pending {
            self.close_pending = false;
            return self.close_reason.clone().map(Event::Closed);
        }
        if self.recv.buffered() != 0 {
            return None;
        }
        loop {
            if !self.may_take_frame() {
                return None;
            }
            let header = match decode(input, self.recv.max_body()) {
                Ok(Decoded::Frame(header)) => header,
                Ok(Decoded::Incomplete { .. }) => {
                    // The start of a frame left in `input` is stashed next;
                    // its TASK still counts as arriving.
                    self.more_input = !input.is_empty();
                    self.check_drained();
                    return None;
                }
                Err(err) => return self.refuse_undecodable(err),
            };
            let bytes: &'b [u8] = input;
            let (frame, rest) = bytes.split_at(header.frame_len());
            *input = rest;
            let body = frame.get(HEADER_LEN..).unwrap_or_default();
            let at = FrameAt::Input { body, rest };
            let step = if header.kind == FrameKind::Task && self.phase != Phase::AwaitingWelcome {
                self.on_task(header, at, now)
            } else {
                self.on_frame(header, at, now)
            };
            match step {
                Step::Continue => {}
                Step::Return(event) => return event,
                Step::Task {
                    ack_requested,
                    name_len,
                } => {
                    // Until the driver polls again, frames after this one
                    // are not in the receive buffer but still unread in
                    // `input`: no GOODBYE may be declared due meanwhile.
                    self.more_input = !rest.is_empty();
                    return Some(Event::Task(task_request(
                        header.id,
                        body,
                        name_len,
                        ack_requested,
                    )));
                }
            }
        }
    }

    /// `len` bytes arrived that the driver decodes in place
    /// ([`WorkerMachine::poll_input`]).
    pub fn note_input(&mut self, len: usize, now: Instant) {
        if len > 0 {
            self.last_received = now;
            self.reopen_drain();
        }
    }

    /// Bytes received and not yet decoded, held in the receive buffer.
    pub fn buffered(&self) -> usize {
        self.recv.buffered()
    }

    /// Copy into the receive buffer as much of `input` as completes the
    /// frame it holds the start of; returns how many bytes were taken. What
    /// follows can then go to [`WorkerMachine::poll_input`] once
    /// [`WorkerMachine::poll_event`] has taken that frame.
    pub fn complete_buffered(&mut self, input: &[u8]) -> usize {
        self.recv.complete_from(input)
    }

    /// Keep bytes [`WorkerMachine::poll_input`] left undecoded (or that could
    /// not be decoded in place) in the receive buffer, after what it holds.
    pub fn stash_input(&mut self, input: &[u8]) {
        self.more_input = false;
        if !input.is_empty() {
            self.recv.extend(input);
        }
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

    /// The driver still holds input it will hand over right after what it
    /// handed over last: GOODBYE may not be declared due before that.
    pub fn set_more_input(&mut self, more: bool) {
        self.more_input = more;
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
