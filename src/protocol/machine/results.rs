//! Answers to tasks: RESULT frames, whole ([`WorkerMachine::complete_task`])
//! or written in place by a handler ([`WorkerMachine::begin_result`] ..
//! [`WorkerMachine::commit_result`]), the FAILED bodies cut to the
//! manager's `max_body`, and the count of RESULTs queued.
//!
//! It never sends a frame larger than the manager announced: an output too
//! large becomes a FAILED `result_too_large`, and an id not in flight is
//! reported to the driver ([`NotInFlight`]) rather than answered.

use std::time::Instant;

use super::task_body::task_request;
use super::{NotInFlight, Phase, TaskAt, TaskOutcome, TaskRequest, WorkerMachine};
use crate::protocol::frame::{
    encode_frame, header_bytes, FrameKind, FLAG_FAILED, HEADER_LEN, LEN_COUNTED_HEADER,
};
use crate::protocol::hello::{codes, ErrorBody};

impl WorkerMachine {
    /// Take `id` out of the tasks in flight; false if it was not in flight.
    #[inline]
    fn end_task(&mut self, id: u64) -> bool {
        if self.current == Some(id) {
            self.current = None;
            true
        } else {
            self.in_flight.remove(&id)
        }
    }

    /// Answer a task that [`WorkerMachine::poll_event`] handed out.
    ///
    /// An output larger than the manager's `max_body` becomes a FAILED
    /// `result_too_large`: the worker never sends a frame its peer refuses.
    pub fn complete_task(
        &mut self,
        id: u64,
        outcome: TaskOutcome<'_>,
        now: Instant,
    ) -> Result<(), NotInFlight> {
        if !self.end_task(id) {
            return Err(NotInFlight(id));
        }
        if self.phase == Phase::Closed {
            return Ok(());
        }
        match outcome {
            TaskOutcome::Ok(output) if output.len() <= self.peer_max_body as usize => {
                encode_frame(&mut self.out, FrameKind::Result, 0, id, output);
            }
            TaskOutcome::Ok(output) => self.result_too_large(id, output.len()),
            TaskOutcome::Failed { code, message } => {
                let body = self.failure_body(code, message);
                encode_frame(&mut self.out, FrameKind::Result, FLAG_FAILED, id, &body);
            }
        }
        self.results_queued += 1;
        self.last_sent = now;
        self.check_drained();
        Ok(())
    }

    /// Start the RESULT of task `id` in the output buffer, for a handler to
    /// append the body to directly (no copy through a buffer of its own):
    /// returns the output buffer, which already holds the frame's header and
    /// everything queued before it. Follow with exactly one of
    /// [`WorkerMachine::commit_result`] or [`WorkerMachine::abandon_result`]
    /// before anything else is queued.
    #[inline]
    pub fn begin_result(&mut self, id: u64) -> &mut Vec<u8> {
        self.begin_result_header(id);
        &mut self.out
    }

    /// [`WorkerMachine::begin_result`] for the task
    /// [`WorkerMachine::poll_input`] handed out last: also returns the task,
    /// read where its frame lies (the driver's input or the receive buffer),
    /// so that its handler reads the payload there while appending to the
    /// output.
    #[inline]
    pub fn begin_task<'s>(&'s mut self, at: TaskAt<'s>) -> (TaskRequest<'s>, &'s mut Vec<u8>) {
        self.begin_result_header(at.id);
        let body = match at.body {
            Some(body) => body,
            None => self.recv.last_body(),
        };
        (
            task_request(at.id, body, at.name_len, at.ack_requested),
            &mut self.out,
        )
    }

    #[inline]
    fn begin_result_header(&mut self, id: u64) {
        self.result_start = self.out.len();
        // `len` is patched by `commit_result`.
        self.out
            .extend_from_slice(&header_bytes(LEN_COUNTED_HEADER, FrameKind::Result, 0, id));
    }

    /// The body appended since [`WorkerMachine::begin_result`].
    pub fn result_body(&self) -> &[u8] {
        self.out
            .get(self.result_start + HEADER_LEN..)
            .unwrap_or_default()
    }

    /// Drop the RESULT begun with [`WorkerMachine::begin_result`]: the task
    /// failed, or its answer is due later.
    pub fn abandon_result(&mut self) {
        self.out.truncate(self.result_start);
    }

    /// Finish the RESULT begun with [`WorkerMachine::begin_result`] for task
    /// `id`: what was appended since is its body. As with
    /// [`WorkerMachine::complete_task`], a body larger than the manager's
    /// `max_body` becomes a FAILED `result_too_large`. Returns the body's
    /// length.
    ///
    /// This is the per-task path: unlike [`WorkerMachine::complete_task`] it
    /// does not check whether a drain is over. The driver polls again after
    /// answering ([`WorkerMachine::poll_event`], [`WorkerMachine::poll_input`]),
    /// and the poll that finds no frame to take makes GOODBYE due, once per
    /// batch of input.
    #[inline]
    pub fn commit_result(&mut self, id: u64, now: Instant) -> Result<usize, NotInFlight> {
        let start = self.result_start;
        let body_len = self.out.len().saturating_sub(start + HEADER_LEN);
        if !self.end_task(id) {
            self.out.truncate(start);
            return Err(NotInFlight(id));
        }
        if self.phase == Phase::Closed {
            self.out.truncate(start);
            return Ok(body_len);
        }
        match u32::try_from(body_len) {
            Ok(len) if len <= self.peer_max_body => {
                if let Some(field) = self.out.get_mut(start..start + 4) {
                    field.copy_from_slice(&(len + LEN_COUNTED_HEADER).to_be_bytes());
                }
            }
            _ => {
                self.out.truncate(start);
                self.result_too_large(id, body_len);
            }
        }
        self.results_queued += 1;
        self.last_sent = now;
        // Whether GOODBYE is now due is decided once per batch, when the
        // driver's next poll finds no frame to take, not per task.
        Ok(body_len)
    }

    fn result_too_large(&mut self, id: u64, len: usize) {
        let message = format!(
            "result of {len} bytes exceeds the manager's max_body {}",
            self.peer_max_body
        );
        let body = self.failure_body(codes::RESULT_TOO_LARGE, &message);
        encode_frame(&mut self.out, FrameKind::Result, FLAG_FAILED, id, &body);
    }

    /// A FAILED / ERROR body that fits the manager's `max_body`: the message
    /// is shortened if need be, and dropped entirely (empty body) in the
    /// degenerate case of a limit too small for the code itself.
    pub(super) fn failure_body(&self, code: &str, message: &str) -> Vec<u8> {
        let body = ErrorBody::new(code, message).to_json();
        let limit = self.peer_max_body as usize;
        if !self.peer_max_body_known || body.len() <= limit {
            return body;
        }
        let overflow = body.len() - limit;
        let mut keep = message.len().saturating_sub(overflow + 3);
        while keep > 0 && !message.is_char_boundary(keep) {
            keep -= 1;
        }
        let shortened = ErrorBody::new(code, format!("{}...", &message[..keep])).to_json();
        if shortened.len() <= limit {
            return shortened;
        }
        let bare = ErrorBody::new(code, "").to_json();
        if bare.len() <= limit {
            bare
        } else {
            Vec::new()
        }
    }
}
