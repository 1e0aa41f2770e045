//! `TaskRunner`: a session's handlers, found by name and called with a panic
//! contained, one call in [`TIMING_SAMPLE`] timed for
//! `ringworker_task_duration_seconds`.
//!
//! It runs a handler and hands back its reply; it never touches the protocol
//! machine or the wire, and never decides what a reply means for the task.

use std::time::{Duration, Instant};

use crate::handlers::{Dispatch, Handler, HandlerRegistry, Reply, TaskFailure};
use crate::protocol::frame::MAX_HANDLER_NAME;

use super::TIMING_SAMPLE;

/// The handlers of a session, found by name and timed.
#[derive(Debug)]
pub(super) struct TaskRunner {
    handlers: HandlerRegistry,
    /// `ringworker_task_duration_seconds{handler}`, by registry position.
    durations: std::sync::Arc<[::metrics::Histogram]>,
    /// Tasks until the next one timed.
    timing_tick: u64,
    last_handler: Option<usize>,
    /// The name of `last_handler`, the first `last_name_len` bytes.
    last_name: [u8; MAX_HANDLER_NAME],
    last_name_len: u8,
}

impl TaskRunner {
    /// The runner of `handlers`, with one duration histogram per handler.
    pub(super) fn new(handlers: HandlerRegistry) -> Self {
        let durations = handlers.durations();
        TaskRunner {
            handlers,
            durations,
            timing_tick: 0,
            last_handler: None,
            last_name: [0; MAX_HANDLER_NAME],
            last_name_len: 0,
        }
    }

    /// The registry position of the handler named `name`.
    #[inline(always)]
    pub(super) fn find(&mut self, name: &[u8]) -> Option<usize> {
        // Most sessions run one or a few handlers: try the last one looked
        // up before searching the registry.
        // Its name is kept here, in the session, rather than behind the
        // registry's pointers.
        if let Some(index) = self.last_handler {
            if self
                .last_name
                .get(..usize::from(self.last_name_len))
                .is_some_and(|known| same_name(known, name))
            {
                return Some(index);
            }
        }
        self.find_in_registry(name)
    }

    #[inline(never)]
    fn find_in_registry(&mut self, name: &[u8]) -> Option<usize> {
        let index = self.handlers.position(std::str::from_utf8(name).ok()?)?;
        if let Some(slot) = self.last_name.get_mut(..name.len()) {
            slot.copy_from_slice(name);
            self.last_name_len = name.len() as u8;
            self.last_handler = Some(index);
        }
        Some(index)
    }

    /// Run the handler [`TaskRunner::find`] found for `name` on `payload`,
    /// appending its output to `out`.
    #[inline]
    pub(super) fn call(
        &mut self,
        found: Option<usize>,
        name: &[u8],
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Reply, TaskFailure> {
        let Some((index, handler)) =
            found.and_then(|index| Some((index, self.handlers.dispatch(index)?)))
        else {
            return Err(unknown(name));
        };
        if !timing_due(&mut self.timing_tick) {
            return run(handler, payload, out);
        }
        let started = Instant::now();
        let reply = run(handler, payload, out);
        if let Some(histogram) = self.durations.get(index) {
            histogram.record(started.elapsed().as_secs_f64());
        }
        reply
    }

    /// Whether this call is one of the one in [`TIMING_SAMPLE`] timed: two
    /// clock reads per task would cost more than the rest of the metrics.
    /// The first call is, so that a short session is measured too.
    #[cfg(test)]
    pub(super) fn timing_due(&mut self) -> bool {
        timing_due(&mut self.timing_tick)
    }

    /// The declared handler's index, when the handler at `position` is one.
    pub(super) fn external_index(&self, position: usize) -> Option<usize> {
        self.handlers.external_index(position)
    }

    /// The handler at `position`, when it answers from another thread.
    pub(super) fn later_handler(
        &self,
        position: usize,
    ) -> Option<std::sync::Arc<dyn crate::handlers::LaterHandler>> {
        self.handlers.later_handler(position).cloned()
    }

    /// A delayed answer's handler time is its delay.
    pub(super) fn record_delay(&self, handler: Option<usize>, delay: Duration) {
        if let Some(histogram) = handler.and_then(|index| self.durations.get(index)) {
            histogram.record(delay.as_secs_f64());
        }
    }
}

/// Count a call down to the next one timed ([`TaskRunner::call`]).
#[inline(always)]
fn timing_due(tick: &mut u64) -> bool {
    match tick.checked_sub(1) {
        Some(left) => {
            *tick = left;
            false
        }
        None => {
            *tick = TIMING_SAMPLE - 1;
            true
        }
    }
}

/// Run a built-in directly (the match is inlined into the session's task
/// loop), a handler of the library user's through `dyn`, with its panics
/// contained.
#[inline(always)]
fn run(handler: &Dispatch, payload: &[u8], out: &mut Vec<u8>) -> Result<Reply, TaskFailure> {
    match handler {
        Dispatch::Custom(handler) => contained(&**handler, payload, out),
        builtin => builtin.call(payload, out),
    }
}

#[cold]
#[inline(never)]
fn unknown(name: &[u8]) -> TaskFailure {
    TaskFailure::new(
        crate::protocol::codes::UNKNOWN_HANDLER,
        format!("no handler named {:?}", String::from_utf8_lossy(name)),
    )
}

/// Run `handler`, turning a panic into a `handler_failed` answer: a bug in
/// one handler fails its task, not the session or the event loop with every
/// session on it. What it appended before panicking is discarded like any
/// failed call's output.
#[inline(never)]
fn contained(
    handler: &dyn Handler,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<Reply, TaskFailure> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.call(payload, out))) {
        Ok(reply) => reply,
        Err(panic) => Err(panicked(panic)),
    }
}

#[cold]
#[inline(never)]
fn panicked(panic: Box<dyn std::any::Any + Send>) -> TaskFailure {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    TaskFailure::handler_failed(format!("the handler panicked: {what}"))
}

/// Equality of two short names, inlined rather than a call to `memcmp`: a
/// name of 4 to 16 bytes is compared as two overlapping words, its first
/// and its last 4 (or 8).
#[inline]
pub(super) fn same_name(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    fn ends<const N: usize>(x: &[u8]) -> Option<(&[u8; N], &[u8; N])> {
        Some((x.first_chunk::<N>()?, x.last_chunk::<N>()?))
    }
    match a.len() {
        4..=8 => ends::<4>(a) == ends::<4>(b),
        9..=16 => ends::<8>(a) == ends::<8>(b),
        _ => a == b,
    }
}
