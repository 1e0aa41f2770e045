//! [`ExecTask`]: one task run by one child (`exec` mode), without I/O.
//!
//! The caller spawns the child, writes [`ExecTask::stdin_pending`] to its
//! stdin, hands over what it reads from stdout and stderr and the exit it
//! learns of (pidfd), and carries out the [`ExecAction`]s that
//! [`ExecTask::next_action`] returns until [`ExecAction::Finish`]. Time is
//! passed in; [`ExecTask::next_deadline`] says when to call again.
//!
//! The rules, from the issue: stdout is the result, collected up to
//! `max_output`; stderr's first `stderr_cap` bytes make the message of a
//! FAILED; status 0 is success, anything else is FAILED `exit_status`; past
//! the timeout the group gets SIGTERM, SIGKILL after the grace, and the task
//! is FAILED `timeout`; after the exit, the pipes are drained for a bounded
//! time only (a grandchild holding them does not hang the task).
//!
//! Output past `max_output` is FAILED `result_too_large`, not a truncated
//! success: the issue caps stdout at what the manager's `max_body` allows
//! and PROTOCOL.md has the code for exactly that ("the output would exceed
//! the manager's `max_body`"), while a cut result sent as OK could not be
//! told from a whole one by the manager (half an image is still bytes).
//! The child's group is stopped as soon as the cap is passed: its answer
//! is already decided, and a flooding child should not run to its timeout.

use std::time::{Duration, Instant};

use super::{codes, ExitStatus, Outcome, Signal};
use crate::config::handlers::HandlerDecl;

/// How long the pipes are still read after the child's exit.
pub const DEFAULT_DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);

/// The limits of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecLimits {
    pub timeout: Duration,
    /// From SIGTERM to SIGKILL.
    pub kill_grace: Duration,
    /// Most stdout bytes; more is FAILED `result_too_large`.
    pub max_output: usize,
    /// Most stderr bytes kept for the message.
    pub stderr_cap: usize,
    /// How long stdout and stderr are read after the exit.
    pub drain_after_exit: Duration,
}

impl ExecLimits {
    pub fn for_handler(decl: &HandlerDecl) -> Self {
        ExecLimits {
            timeout: decl.timeout,
            kill_grace: decl.kill_grace,
            max_output: decl.max_output as usize,
            stderr_cap: decl.stderr_cap as usize,
            drain_after_exit: DEFAULT_DRAIN_AFTER_EXIT,
        }
    }
}

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecAction {
    /// Close our end of the child's stdin: all of it was written, or the
    /// child will read no more.
    CloseStdin,
    /// Send this signal to the child's process group.
    Signal(Signal),
    /// The task is over: send SIGKILL to the group (whatever is left of
    /// it), close every pipe, reap the child, and answer with the outcome.
    Finish(Finished),
}

/// The end of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub outcome: Outcome,
    /// How the child ended (`None`: never learned, which cannot happen
    /// through [`ExecTask`], kept for callers that give up).
    pub exit: Option<ExitStatus>,
    /// stdout or stderr was still open when the drain after the exit
    /// ended: something else in the group held it (worth a log line and
    /// a count; anything written after that point is lost).
    pub pipes_held: bool,
    /// stderr bytes beyond `stderr_cap`, dropped.
    pub stderr_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Running, or exited on its own.
    None,
    /// SIGTERM sent; SIGKILL due then.
    Terminating { kill_at: Instant },
    /// SIGKILL sent.
    Killed,
}

/// The state of one task run by one child.
#[derive(Debug, Clone)]
pub struct ExecTask {
    limits: ExecLimits,
    input: Vec<u8>,
    written: usize,
    stdin_open: bool,
    stdout: Vec<u8>,
    stdout_open: bool,
    stderr: Vec<u8>,
    stderr_seen: u64,
    stderr_open: bool,
    exit: Option<ExitStatus>,
    deadline: Instant,
    stop: Stop,
    /// Why the group is being stopped: `timeout` or `result_too_large`.
    reason: Option<&'static str>,
    drain_until: Option<Instant>,
    finished: bool,
}

impl ExecTask {
    /// A task whose child was started at `now` and gets `input` on stdin.
    pub fn new(input: Vec<u8>, limits: ExecLimits, now: Instant) -> Self {
        ExecTask {
            limits,
            input,
            written: 0,
            stdin_open: true,
            stdout: Vec::new(),
            stdout_open: true,
            stderr: Vec::new(),
            stderr_seen: 0,
            stderr_open: true,
            exit: None,
            deadline: now + limits.timeout,
            stop: Stop::None,
            reason: None,
            drain_until: None,
            finished: false,
        }
    }

    /// The input still to write to stdin (empty once stdin is closed).
    pub fn stdin_pending(&self) -> &[u8] {
        if self.stdin_open {
            &self.input[self.written..]
        } else {
            &[]
        }
    }

    /// `n` bytes of [`ExecTask::stdin_pending`] were written.
    pub fn stdin_wrote(&mut self, n: usize) {
        self.written = (self.written + n).min(self.input.len());
    }

    /// Writing to stdin failed (EPIPE: the child closed it). Not a failure
    /// of the task by itself: many programs read only what they need.
    pub fn stdin_broken(&mut self) {
        self.written = self.input.len();
    }

    /// Whether stdout is still to be read.
    pub fn wants_stdout(&self) -> bool {
        self.stdout_open && !self.finished
    }

    /// Whether stderr is still to be read.
    pub fn wants_stderr(&self) -> bool {
        self.stderr_open && !self.finished
    }

    /// Bytes read from stdout. Past `max_output` they are dropped and the
    /// task is decided: FAILED `result_too_large`.
    pub fn on_stdout(&mut self, bytes: &[u8]) {
        let room = self.limits.max_output.saturating_sub(self.stdout.len());
        if bytes.len() > room {
            self.stdout.extend_from_slice(&bytes[..room]);
            if self.reason.is_none() {
                self.reason = Some(codes::RESULT_TOO_LARGE);
            }
        } else {
            self.stdout.extend_from_slice(bytes);
        }
    }

    /// End of file on stdout (or a read error: nothing more will come).
    pub fn on_stdout_end(&mut self) {
        self.stdout_open = false;
    }

    /// Bytes read from stderr; the first `stderr_cap` are kept.
    pub fn on_stderr(&mut self, bytes: &[u8]) {
        self.stderr_seen += bytes.len() as u64;
        let room = self.limits.stderr_cap.saturating_sub(self.stderr.len());
        self.stderr
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// End of file on stderr.
    pub fn on_stderr_end(&mut self) {
        self.stderr_open = false;
    }

    /// The child exited (its pidfd became readable).
    pub fn on_exit(&mut self, status: ExitStatus, now: Instant) {
        if self.exit.is_none() {
            self.exit = Some(status);
            self.drain_until = Some(now + self.limits.drain_after_exit);
        }
    }

    /// Whether [`ExecAction::Finish`] was returned.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// When [`ExecTask::next_action`] has something to do without any
    /// other event: the timeout, the SIGKILL after the grace, the end of
    /// the drain. `None` once finished.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let stop = match (self.exit, self.stop) {
            (Some(_), _) => None,
            (None, Stop::None) => Some(self.deadline),
            (None, Stop::Terminating { kill_at }) => Some(kill_at),
            (None, Stop::Killed) => None,
        };
        [stop, self.drain_until].into_iter().flatten().min()
    }

    /// The next thing to do at `now`; call until `None`.
    pub fn next_action(&mut self, now: Instant) -> Option<ExecAction> {
        if self.finished {
            return None;
        }
        if self.stdin_open && (self.written == self.input.len() || self.exit.is_some()) {
            self.stdin_open = false;
            return Some(ExecAction::CloseStdin);
        }
        if self.exit.is_none() {
            match self.stop {
                Stop::None if self.reason.is_some() || now >= self.deadline => {
                    self.reason.get_or_insert(codes::TIMEOUT);
                    self.stop = Stop::Terminating {
                        kill_at: now + self.limits.kill_grace,
                    };
                    return Some(ExecAction::Signal(Signal::Term));
                }
                Stop::Terminating { kill_at } if now >= kill_at => {
                    self.stop = Stop::Killed;
                    return Some(ExecAction::Signal(Signal::Kill));
                }
                _ => return None,
            }
        }
        let pipes_open = self.stdout_open || self.stderr_open;
        let drained = self.drain_until.is_some_and(|until| now >= until);
        if pipes_open && !drained {
            return None;
        }
        self.finished = true;
        Some(ExecAction::Finish(Finished {
            outcome: self.outcome(),
            exit: self.exit,
            pipes_held: pipes_open,
            stderr_dropped: self.stderr_seen - self.stderr.len() as u64,
        }))
    }

    /// The stderr excerpt for a message: lossy UTF-8, trimmed, marked
    /// when cut.
    fn stderr_excerpt(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let text = text.trim();
        let dropped = self.stderr_seen - self.stderr.len() as u64;
        match (text.is_empty(), dropped) {
            (true, _) => String::new(),
            (false, 0) => format!(": {text}"),
            (false, _) => format!(": {text}... ({} bytes of stderr)", self.stderr_seen),
        }
    }

    fn outcome(&mut self) -> Outcome {
        let stderr = self.stderr_excerpt();
        match (self.reason, self.exit) {
            (Some(codes::TIMEOUT), _) => Outcome::failed(
                codes::TIMEOUT,
                format!(
                    "no result within {:?}; its process group was stopped{stderr}",
                    self.limits.timeout
                ),
            ),
            (Some(code), _) => Outcome::failed(
                code,
                format!(
                    "the output passed max_output ({} bytes); its process group was stopped",
                    self.limits.max_output
                ),
            ),
            (None, Some(status)) if status.success() => {
                Outcome::Ok(std::mem::take(&mut self.stdout))
            }
            (None, Some(status)) => {
                Outcome::failed(codes::EXIT_STATUS, format!("{status}{stderr}"))
            }
            (None, None) => Outcome::failed(codes::HANDLER_FAILED, "the child was lost"),
        }
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
