//! Completions: reading the completion queue, dispatching each completion to
//! its handler by `user_data` (a stale generation only returns its buffer),
//! and the loop's shutdown, which cancels what is left and waits a bounded
//! time. It must never free memory an operation may still use: buffers of
//! operations that do not complete in time are leaked instead.

use std::time::Instant;

use io_uring::{cqueue, opcode, types};

use super::{decode_user_data, user_data, EventLoop, LoopReport, Op, REAP_DEADLINE};
use crate::connection::drain::DrainTally;

impl EventLoop {
    pub(super) fn reap(&mut self) {
        // Copy completions out first: handling them pushes new submissions.
        // A send submitted early completes inline on a socket with room, so
        // the queue is read again (a few times at most) to see it.
        let mut completions = std::mem::take(&mut self.completions);
        for _ in 0..4 {
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            if completions.is_empty() {
                break;
            }
            // The turn's clock: completions reaped together happened together.
            let now = self.now;
            for &(data, result, flags) in &completions {
                self.complete(data, result, flags, now);
                if self.submit_now {
                    self.submit_now = false;
                    if let Err(err) = self.ring.submit() {
                        if !matches!(
                            err.raw_os_error(),
                            Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                        ) {
                            tracing::error!("io_uring submit failed: {err}");
                        }
                    }
                }
            }
            completions.clear();
        }
        self.completions = completions;
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32, now: Instant) {
        let (op, generation, slot_id) = decode_user_data(data);
        let selected = cqueue::buffer_select(flags);
        if op == Op::Wake as u8 {
            // A stop request (or the cancel at shutdown): re-armed next round.
            self.wake_armed = false;
            return;
        }
        if op >= Op::ChildStdout as u8 {
            self.on_child(op, slot_id, result, now);
            return;
        }
        let stale = self
            .slots
            .get(slot_id as usize)
            .is_none_or(|s| s.generation != generation || s.socket.is_none());
        if stale {
            self.recycle(selected);
            return;
        }
        match op {
            x if x == Op::Recv as u8 => self.on_recv(slot_id, result, flags, selected, now),
            x if x == Op::Send as u8 => self.on_send(slot_id, result),
            x if x == Op::Connect as u8 => self.on_connect(slot_id, result, now),
            x if x == Op::RecvBody as u8 => self.on_body_recv(slot_id, result, now),
            _ => {
                let s = &mut self.slots[slot_id as usize];
                s.inflight = s.inflight.saturating_sub(1);
            }
        }
        self.mark_dirty(slot_id);
    }

    pub(super) fn recycle(&mut self, selected: Option<u16>) {
        if let (Some(bid), Some(buffers)) = (selected, self.buffers.as_mut()) {
            buffers.push(bid);
        }
    }

    /// Stop: cancel what is left, wait (bounded) for it, release the buffers.
    pub(super) fn shutdown(mut self) -> LoopReport {
        self.release_children();
        let report = LoopReport {
            unfinished: self.slots.iter().fold(DrainTally::default(), |mut sum, s| {
                sum += s.conn.unfinished();
                sum
            }),
        };
        if self.wake_armed {
            let entry = opcode::AsyncCancel::new(user_data(Op::Wake, 0, 0))
                .build()
                .user_data(user_data(Op::Cancel, 0, u32::MAX));
            self.push(entry);
        }
        let deadline = Instant::now() + REAP_DEADLINE;
        while self.busy() && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.now = Instant::now();
            self.reap();
        }
        let clean = !self.busy();
        self.drop_children(clean);
        if let Some(mut buffers) = self.buffers.take() {
            if clean {
                buffers.unregister(&self.ring);
                drop(buffers);
            } else {
                tracing::error!(
                    "io_uring operations did not complete at shutdown; leaking their buffers"
                );
                buffers.leak();
            }
        }
        // What is still in flight is left to `Drop`, which keeps its memory.
        report
    }

    /// Whether an operation may still write into, or read from, memory the
    /// loop owns.
    pub(super) fn busy(&self) -> bool {
        self.wake_armed
            || self.slots.iter().any(|s| s.inflight > 0)
            || self.children.as_ref().is_some_and(|c| c.busy())
    }
}
