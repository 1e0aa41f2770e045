//! The [`machine`] target: byte-coded events into a worker's
//! [`WorkerMachine`] after a valid WELCOME, with the bounds it must keep
//! (tasks held, output queued, ids handed out). It drives the pure state
//! machine only and must never involve a session, a handler or real time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::frame::{encode_frame, FrameKind, HEADER_LEN};
use crate::protocol::machine::{MachineConfig, TaskOutcome};
use crate::protocol::{Event, Hello, Phase, WorkerMachine};

const MAX_IN_FLIGHT: u32 = 4;
const OUTPUT_HIGH_WATER: usize = 4096;

/// A byte-coded sequence of events into a worker's state machine after a
/// valid WELCOME: peer bytes, clock steps, task completions, a drain, EOF
/// and flushes, in any order.
pub fn machine(data: &[u8]) {
    let t0 = Instant::now();
    let mut now = t0;
    let hello = Hello {
        protocol: 1,
        worker: "fuzz".into(),
        session: 0,
        runtime: "fuzz".into(),
        max_body: 512,
        max_in_flight: MAX_IN_FLIGHT,
        handlers: vec!["echo".into()],
        token: None,
    };
    let mut config = MachineConfig::new(hello);
    config.output_high_water = OUTPUT_HIGH_WATER;
    let mut machine = WorkerMachine::new(config, now);
    // Complete the handshake with a heartbeat so deadlines are exercised.
    let mut welcome = Vec::new();
    encode_frame(
        &mut welcome,
        FrameKind::Welcome,
        0,
        0,
        br#"{"protocol":1,"manager":"m","max_body":256,"heartbeat_ms":50}"#,
    );
    machine.handle_input(&welcome, now);
    let mut held: VecDeque<u64> = VecDeque::new();
    let mut closed = false;
    drain_events(&mut machine, now, &mut held, &mut closed);
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        match op % 8 {
            // Peer bytes: the next byte says how many follow.
            0..=2 => {
                let n = input
                    .first()
                    .map_or(0, |&n| usize::from(n))
                    .min(input.len().saturating_sub(1));
                let bytes = input.get(1..1 + n).unwrap_or_default();
                input = input.get(1 + n..).unwrap_or_default();
                if machine.wants_read() {
                    machine.handle_input(bytes, now);
                }
            }
            // Clock step of up to 255 ms.
            3 => {
                let ms = input.first().copied().unwrap_or(1);
                input = input.get(1..).unwrap_or_default();
                now += Duration::from_millis(u64::from(ms));
                machine.handle_timeout(now);
            }
            // Complete the oldest held task.
            4 => {
                if let Some(id) = held.pop_front() {
                    let output = [7u8; 300];
                    let outcome = if id % 3 == 0 {
                        TaskOutcome::Failed {
                            code: "handler_failed",
                            message: "fuzz",
                        }
                    } else {
                        TaskOutcome::Ok(&output[..(id % 301) as usize])
                    };
                    machine
                        .complete_task(id, outcome, now)
                        .expect("a held task completes");
                }
            }
            5 => machine.start_drain(now),
            6 => machine.handle_eof(now),
            // The driver flushed its output; GOODBYE may follow.
            _ => {
                machine.take_output(Vec::new());
                if machine.phase() == Phase::GoodbyeDue {
                    assert!(held.is_empty(), "GOODBYE due with tasks held");
                    machine.write_goodbye(1, 2);
                }
            }
        }
        drain_events(&mut machine, now, &mut held, &mut closed);
        assert!(machine.in_flight() <= MAX_IN_FLIGHT as usize);
        if !closed {
            assert_eq!(machine.in_flight(), held.len());
        }
        // Output is bounded: the high-water mark (reading pauses above it)
        // plus one read's worth of ACK/RESULT/PONG frames plus a window of results.
        let bound =
            OUTPUT_HIGH_WATER + 256 * 64 + MAX_IN_FLIGHT as usize * (HEADER_LEN + 300) + 4096;
        assert!(
            machine.pending_output().len() <= bound,
            "output {} > {bound}",
            machine.pending_output().len()
        );
    }
}

fn drain_events(
    machine: &mut WorkerMachine,
    now: Instant,
    held: &mut VecDeque<u64>,
    closed: &mut bool,
) {
    while let Some(event) = machine.poll_event(now) {
        match event {
            Event::Task(task) => {
                assert!(!*closed, "a task after the connection closed");
                assert!(
                    !held.contains(&task.id),
                    "task {} handed out twice",
                    task.id
                );
                assert!(task.handler.len() <= 64 && !task.handler.is_empty());
                held.push_back(task.id);
            }
            Event::Closed(_) => {
                assert!(!*closed, "closed twice");
                *closed = true;
            }
            Event::Welcomed(_) | Event::DrainRequested => {}
        }
    }
    if *closed {
        // Tasks held at close are lost to the connection; nothing completes them.
        held.clear();
    }
}
