//! The exec task's rules, driven by hand.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn limits() -> ExecLimits {
    ExecLimits {
        timeout: 1000 * MS,
        kill_grace: 100 * MS,
        max_output: 8,
        stderr_cap: 5,
        drain_after_exit: 50 * MS,
    }
}

fn finished(action: Option<ExecAction>) -> Finished {
    match action {
        Some(ExecAction::Finish(finished)) => finished,
        other => panic!("not finished: {other:?}"),
    }
}

#[test]
fn input_is_written_then_stdin_closed_and_exit_zero_is_the_output() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(b"hello".to_vec(), limits(), t0);
    assert_eq!(task.stdin_pending(), b"hello");
    assert_eq!(task.next_action(t0), None, "waiting for the write");
    task.stdin_wrote(2);
    assert_eq!(task.stdin_pending(), b"llo");
    task.stdin_wrote(3);
    assert_eq!(task.next_action(t0), Some(ExecAction::CloseStdin));
    assert_eq!(task.stdin_pending(), b"");
    task.on_stdout(b"HEL");
    task.on_stdout(b"LO");
    assert_eq!(task.next_deadline(), Some(t0 + 1000 * MS));
    task.on_exit(ExitStatus::Code(0), t0 + MS);
    assert_eq!(task.next_action(t0 + MS), None, "pipes still open");
    task.on_stdout_end();
    task.on_stderr_end();
    let done = finished(task.next_action(t0 + MS));
    assert_eq!(done.outcome, Outcome::Ok(b"HELLO".to_vec()));
    assert_eq!(done.exit, Some(ExitStatus::Code(0)));
    assert!(!done.pipes_held);
    assert!(task.is_finished());
    assert_eq!(task.next_action(t0 + MS), None);
    assert_eq!(task.next_deadline(), None);
}

#[test]
fn an_empty_input_closes_stdin_at_once() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(Vec::new(), limits(), t0);
    assert_eq!(task.next_action(t0), Some(ExecAction::CloseStdin));
    assert_eq!(task.next_action(t0), None);
}

#[test]
fn a_non_zero_status_is_failed_with_the_capped_stderr() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(b"x".to_vec(), limits(), t0);
    task.stdin_broken();
    assert_eq!(task.next_action(t0), Some(ExecAction::CloseStdin));
    task.on_stderr(b"boom!");
    task.on_stderr(b" and more");
    task.on_exit(ExitStatus::Code(3), t0);
    task.on_stdout_end();
    task.on_stderr_end();
    let done = finished(task.next_action(t0));
    assert_eq!(
        done.outcome,
        Outcome::failed(
            codes::EXIT_STATUS,
            "exit status 3: boom!... (14 bytes of stderr)"
        )
    );
    assert_eq!(done.stderr_dropped, 9);
    let mut task = ExecTask::new(Vec::new(), limits(), t0);
    task.on_exit(ExitStatus::Signal(11), t0);
    task.on_stdout_end();
    task.on_stderr_end();
    assert_eq!(task.next_action(t0), Some(ExecAction::CloseStdin));
    let done = finished(task.next_action(t0));
    assert_eq!(
        done.outcome,
        Outcome::failed(codes::EXIT_STATUS, "killed by signal 11")
    );
}

#[test]
fn the_timeout_sends_term_then_kill_and_fails_with_timeout() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(b"never read".to_vec(), limits(), t0);
    assert_eq!(task.next_action(t0 + 999 * MS), None);
    assert_eq!(task.next_deadline(), Some(t0 + 1000 * MS));
    assert_eq!(
        task.next_action(t0 + 1000 * MS),
        Some(ExecAction::Signal(Signal::Term))
    );
    assert_eq!(task.next_deadline(), Some(t0 + 1100 * MS));
    assert_eq!(task.next_action(t0 + 1099 * MS), None);
    assert_eq!(
        task.next_action(t0 + 1100 * MS),
        Some(ExecAction::Signal(Signal::Kill))
    );
    assert_eq!(task.next_deadline(), None, "only the exit is awaited");
    task.on_exit(ExitStatus::Signal(9), t0 + 1101 * MS);
    // stdin is closed once the child is gone; input was never taken.
    assert_eq!(
        task.next_action(t0 + 1101 * MS),
        Some(ExecAction::CloseStdin)
    );
    task.on_stdout_end();
    task.on_stderr_end();
    let done = finished(task.next_action(t0 + 1101 * MS));
    assert_eq!(done.outcome.code(), Some(codes::TIMEOUT));
    assert_eq!(done.exit, Some(ExitStatus::Signal(9)));
}

#[test]
fn a_child_that_exits_after_term_is_still_a_timeout() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(Vec::new(), limits(), t0);
    task.next_action(t0);
    task.on_stderr(b"bye");
    assert_eq!(
        task.next_action(t0 + 2000 * MS),
        Some(ExecAction::Signal(Signal::Term))
    );
    task.on_exit(ExitStatus::Code(0), t0 + 2001 * MS);
    task.on_stdout_end();
    task.on_stderr_end();
    let done = finished(task.next_action(t0 + 2001 * MS));
    assert!(
        matches!(&done.outcome, Outcome::Failed { code: "timeout", message } if message.ends_with(": bye")),
        "{done:?}"
    );
}

#[test]
fn output_past_the_cap_stops_the_group_and_is_result_too_large() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(Vec::new(), limits(), t0);
    task.next_action(t0);
    task.on_stdout(b"12345");
    assert_eq!(task.next_action(t0), None);
    task.on_stdout(b"6789");
    assert_eq!(
        task.next_action(t0),
        Some(ExecAction::Signal(Signal::Term)),
        "stopped at once, not at the timeout"
    );
    // More output is read (so the child never blocks) but not kept.
    task.on_stdout(&[b'x'; 4096]);
    assert!(task.wants_stdout());
    task.on_exit(ExitStatus::Signal(15), t0 + MS);
    task.on_stdout_end();
    task.on_stderr_end();
    let done = finished(task.next_action(t0 + MS));
    assert_eq!(done.outcome.code(), Some(codes::RESULT_TOO_LARGE));
    // Exactly the cap is fine.
    let mut task = ExecTask::new(Vec::new(), limits(), t0);
    task.next_action(t0);
    task.on_stdout(b"12345678");
    task.on_exit(ExitStatus::Code(0), t0);
    task.on_stdout_end();
    task.on_stderr_end();
    assert_eq!(
        finished(task.next_action(t0)).outcome,
        Outcome::Ok(b"12345678".to_vec())
    );
}

#[test]
fn pipes_held_after_the_exit_are_drained_for_a_bounded_time() {
    let t0 = Instant::now();
    let mut task = ExecTask::new(Vec::new(), limits(), t0);
    task.next_action(t0);
    task.on_stdout(b"out");
    task.on_exit(ExitStatus::Code(0), t0 + 10 * MS);
    task.on_stderr_end();
    assert_eq!(task.next_deadline(), Some(t0 + 60 * MS));
    assert_eq!(task.next_action(t0 + 59 * MS), None);
    task.on_stdout(b"!");
    let done = finished(task.next_action(t0 + 60 * MS));
    assert!(done.pipes_held);
    assert_eq!(done.outcome, Outcome::Ok(b"out!".to_vec()));
    assert!(!task.wants_stdout());
}
