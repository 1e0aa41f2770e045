//! Handlers that answer later, from any thread: [`LaterHandler`] and the
//! promise it is given, [`Later`].
//!
//! `start` runs on the runtime's thread, as [`super::Handler::call`] does,
//! and must return at once: it hands the work elsewhere (a thread pool, an
//! async runtime, a queue of its own) together with the [`Later`], which the
//! work answers once, from whichever thread it ends on. The answer goes to
//! the connection's [`LateAnswers`], which wakes the runtime; the session
//! then writes the RESULT as it does for any answer that comes after the
//! call (a declared handler's, `sleep`'s). The task counts as in flight
//! until then, so `max_in_flight` bounds how many wait, and a drain waits
//! for them until its deadline. An answer for a connection that has since
//! closed is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::TaskFailure;
use crate::exec::Outcome;

/// Work a TASK can name whose answer comes later, from any thread.
pub trait LaterHandler: Send + Sync + 'static {
    /// Begin the task on `payload`; answer through `answer`, once, from any
    /// thread. Must not block.
    fn start(&self, payload: &[u8], answer: Later);
}

/// One task's answer to give. Dropped without an answer, the task fails
/// with `handler_failed` rather than waiting for ever.
pub struct Later {
    task: u64,
    generation: u32,
    to: Option<Arc<LateAnswers>>,
}

impl std::fmt::Debug for Later {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Later").field("task", &self.task).finish()
    }
}

impl Later {
    pub(crate) fn new(task: u64, generation: u32, to: Arc<LateAnswers>) -> Self {
        Later {
            task,
            generation,
            to: Some(to),
        }
    }

    /// The task succeeded with `output`.
    pub fn ok(mut self, output: Vec<u8>) {
        self.send(Outcome::Ok(output));
    }

    /// The task failed.
    pub fn fail(mut self, failure: TaskFailure) {
        let (code, message) = failure.into_parts();
        self.send(Outcome::Failed { code, message });
    }

    fn send(&mut self, outcome: Outcome) {
        if let Some(to) = self.to.take() {
            to.push(self.generation, self.task, outcome);
        }
    }
}

impl Drop for Later {
    fn drop(&mut self) {
        self.send(Outcome::failed(
            crate::protocol::codes::HANDLER_FAILED,
            "the handler dropped its answer without giving one",
        ));
    }
}

/// A waker: tells the runtime that a connection has answers to take.
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// The answers that came from other threads for one session's connection,
/// waiting for the runtime's thread to take them.
pub struct LateAnswers {
    pending: AtomicBool,
    answers: Mutex<Vec<(u32, u64, Outcome)>>,
    wake: Wake,
}

impl std::fmt::Debug for LateAnswers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateAnswers")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .finish()
    }
}

impl LateAnswers {
    /// An empty inbox whose runtime `wake` wakes.
    pub fn new(wake: Wake) -> Self {
        LateAnswers {
            pending: AtomicBool::new(false),
            answers: Mutex::new(Vec::new()),
            wake,
        }
    }

    fn push(&self, generation: u32, task: u64, outcome: Outcome) {
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((generation, task, outcome));
        // Release: whoever sees the flag sees the answer pushed before it.
        self.pending.store(true, Ordering::Release);
        (self.wake)();
    }

    /// Take every answer given so far (nothing, without a lock, when none
    /// came).
    pub fn take(&self) -> Vec<(u32, u64, Outcome)> {
        // A plain load first: the common case (nothing came) costs no
        // locked instruction on the runtime's hot path.
        if !self.pending.load(Ordering::Relaxed) || !self.pending.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.answers.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn an_answer_from_another_thread_wakes_and_is_taken_once() {
        let woken = Arc::new(AtomicUsize::new(0));
        let counter = woken.clone();
        let inbox = Arc::new(LateAnswers::new(Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })));
        assert!(inbox.take().is_empty());
        let later = Later::new(7, 3, inbox.clone());
        std::thread::spawn(move || later.ok(b"done".to_vec()))
            .join()
            .unwrap();
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(inbox.take(), vec![(3, 7, Outcome::Ok(b"done".to_vec()))]);
        assert!(inbox.take().is_empty());
    }

    #[test]
    fn a_dropped_answer_fails_the_task() {
        let inbox = Arc::new(LateAnswers::new(Arc::new(|| {})));
        drop(Later::new(9, 1, inbox.clone()));
        let answers = inbox.take();
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0].2.code(), Some("handler_failed"));
        // An explicit failure keeps its code, and nothing more is sent.
        Later::new(10, 1, inbox.clone()).fail(TaskFailure::bad_payload("no"));
        assert_eq!(
            inbox.take(),
            vec![(1, 10, Outcome::failed("bad_payload", "no"))]
        );
    }
}
