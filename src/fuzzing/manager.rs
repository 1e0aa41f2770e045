//! The [`manager`] target: worker bytes (raw, or HELLOs and frames picked
//! field by field) into the [`ManagerMachine`] between its own sends, run
//! with reads whole and split. It owns the HELLO and worker-frame builders
//! and the manager program; it must never feed the machine anything but
//! the program's bytes, so that both runs see the same input.

use super::json::{error_body, json_damage, json_number, json_string};
use super::{chunk_plan, decode_all, Input};
use crate::manager::{ManagerConfig, ManagerEvent, ManagerMachine, ManagerPhase, SendError};
use crate::protocol::frame::{encode_frame, FrameKind, FLAG_FAILED};
use crate::protocol::{ErrorBody, PROTOCOL_VERSION};

const MANAGER_TOKEN: &str = "s3cret";

/// A handler name one byte over the limit.
const LONG_NAME: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// A HELLO body built field by field, and whether the manager must accept
/// it (`None` when that is not known).
fn hello_body(input: &mut Input<'_>, token_required: bool) -> (Vec<u8>, Option<bool>) {
    let flags = input.byte();
    let mut valid = true;
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let numbers = ["protocol", "session", "max_body", "max_in_flight"];
    for (i, name) in numbers.iter().enumerate() {
        if flags & (1 << i) != 0 && input.byte() % 4 == 0 {
            valid = false;
            continue;
        }
        let (value, n) = if input.byte() % 2 == 0 {
            ("1".to_owned(), Some(1))
        } else {
            json_number(input)
        };
        valid &= n.is_some();
        if *name == "protocol" {
            valid &= n == Some(PROTOCOL_VERSION);
        }
        fields.push(format!("\"{name}\":{value}").into_bytes());
    }
    for name in ["worker", "runtime"] {
        let (value, text) = json_string(input);
        valid &= text.is_some();
        let mut field = format!("\"{name}\":").into_bytes();
        field.extend_from_slice(&value);
        fields.push(field);
    }
    let handlers: &[u8] = input.pick(&[
        &b"[\"echo\",\"sleep\"]"[..],
        b"[]",
        b"[1]",
        b"\"echo\"",
        b"null",
    ]);
    valid &= handlers.starts_with(b"[") && handlers != b"[1]";
    fields.push([&b"\"handlers\":"[..], handlers].concat());
    match input.byte() % 5 {
        0 => valid &= !token_required,
        1 => fields.push(format!("\"token\":\"{MANAGER_TOKEN}\"").into_bytes()),
        2 => {
            fields.push(b"\"token\":\"s3cre\"".to_vec());
            valid &= !token_required;
        }
        3 => {
            fields.push(b"\"token\":null".to_vec());
            valid &= !token_required;
        }
        _ => {
            fields.push(b"\"token\":7".to_vec());
            valid = false;
        }
    }
    let mut body = b"{".to_vec();
    body.extend_from_slice(&fields.join(&b","[..]));
    body.push(b'}');
    if flags & 0x80 != 0 {
        json_damage(input, &mut body);
        valid = false;
    }
    (body, Some(valid))
}

/// One step of a [`manager`] program.
#[derive(Debug, Clone)]
enum ManagerOp {
    /// Worker bytes; the seed says how a split run chops them.
    Bytes {
        bytes: Vec<u8>,
        seed: u8,
        hello: Option<bool>,
    },
    Task {
        id: u64,
        handler: &'static str,
        len: usize,
        ack: bool,
    },
    Ping(u64),
    Drain,
    Goodbye,
    /// The writer took this many bytes of the output.
    Consume(usize),
}

fn manager_program(data: &[u8]) -> (ManagerConfig, Vec<ManagerOp>) {
    let mut input = Input::new(data);
    let config = input.byte();
    let token = (config & 1 == 1).then(|| MANAGER_TOKEN.to_owned());
    let manager_config = ManagerConfig {
        manager_id: "fuzz".into(),
        max_body: [64, 1024, 65536, 1 << 24][usize::from(config >> 1) & 3],
        heartbeat_ms: u32::from(config >> 4),
        token: token.clone(),
    };
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < 512 {
        let op = match input.byte() % 12 {
            0 => {
                let n = usize::from(input.byte());
                let seed = input.byte();
                ManagerOp::Bytes {
                    bytes: input.bytes(n).to_vec(),
                    seed,
                    hello: None,
                }
            }
            1 | 2 => {
                let (body, valid) = hello_body(&mut input, token.is_some());
                let mut bytes = Vec::new();
                encode_frame(&mut bytes, FrameKind::Hello, 0, 0, &body);
                ManagerOp::Bytes {
                    bytes,
                    seed: input.byte(),
                    hello: valid,
                }
            }
            3..=5 => {
                let mut bytes = Vec::new();
                for _ in 0..1 + input.byte() % 4 {
                    worker_frame(&mut input, &mut bytes);
                }
                ManagerOp::Bytes {
                    bytes,
                    seed: input.byte(),
                    hello: None,
                }
            }
            6 | 7 => ManagerOp::Task {
                id: u64::from(input.byte()),
                handler: input.pick(&["echo", "sleep", "", "two words", "é", LONG_NAME]),
                len: usize::from(input.u16()) % 70_000,
                ack: input.byte() & 1 == 1,
            },
            8 => ManagerOp::Ping(u64::from(input.byte())),
            9 => ManagerOp::Drain,
            10 => ManagerOp::Goodbye,
            _ => ManagerOp::Consume(usize::from(input.u16())),
        };
        ops.push(op);
    }
    (manager_config, ops)
}

/// One frame a worker could send, from a few input bytes.
fn worker_frame(input: &mut Input<'_>, out: &mut Vec<u8>) {
    let kind = input.byte();
    let id = u64::from(input.byte());
    let _written = match kind % 10 {
        0..=3 => {
            let len = usize::from(input.byte()) * usize::from(input.byte() % 8 + 1);
            let flags = input.byte() & FLAG_FAILED;
            let body: Vec<u8> = if flags != 0 && kind & 0x80 != 0 {
                ErrorBody::new("handler_failed", "x").to_json()
            } else {
                (0..len).map(|i| i as u8).collect()
            };
            encode_frame(out, FrameKind::Result, flags, id, &body)
        }
        4 => encode_frame(out, FrameKind::Ack, 0, id, &[]),
        5 => encode_frame(out, FrameKind::Ping, 0, id, &[]),
        6 => encode_frame(out, FrameKind::Pong, 0, id, &[]),
        7 => encode_frame(out, FrameKind::Drain, 0, 0, &[]),
        8 => {
            let body: &[u8] = input.pick(&[
                &br#"{"bytes_sent":10,"bytes_received":20}"#[..],
                b"",
                b"{\"bytes_sent\":-1}",
                b"[1,2]",
            ]);
            encode_frame(out, FrameKind::Goodbye, 0, 0, body)
        }
        _ => {
            let (body, _) = error_body(input);
            let kind = input.pick(&[
                FrameKind::Error,
                FrameKind::Error,
                FrameKind::Task,
                FrameKind::Welcome,
            ]);
            encode_frame(out, kind, 0, 0, &body)
        }
    };
}

/// What a manager run ends with; a split run must end the same.
#[derive(Debug, PartialEq, Eq)]
struct ManagerOutcome {
    events: Vec<ManagerEvent>,
    sends: Vec<Result<(), SendError>>,
    output: Vec<u8>,
    phase: ManagerPhase,
}

fn run_manager(config: &ManagerConfig, ops: &[ManagerOp], split: bool) -> ManagerOutcome {
    let mut machine = ManagerMachine::new(config.clone());
    let mut events = Vec::new();
    let mut sends = Vec::new();
    let mut written = Vec::new();
    let mut unread: Vec<u8> = Vec::new();
    let mut seeds = Vec::new();
    let mut ended = false;
    let mut hello_expected: Option<Option<bool>> = None;
    let mut fed_any = false;
    let poll = |machine: &mut ManagerMachine,
                written: &[u8],
                events: &mut Vec<ManagerEvent>,
                ended: &mut bool,
                hello: &mut Option<Option<bool>>| {
        while let Some(event) = machine.poll_event() {
            assert!(!*ended, "{event:?} after the connection ended");
            match &event {
                ManagerEvent::Hello(hello_body) => {
                    assert_eq!(machine.phase(), ManagerPhase::Active);
                    assert_eq!(hello_body.protocol, PROTOCOL_VERSION);
                    if let Some(token) = &config.token {
                        assert_eq!(
                            hello_body.token.as_deref(),
                            Some(token.as_str()),
                            "a HELLO with a wrong token accepted"
                        );
                    }
                    assert_ne!(*hello, Some(Some(false)), "an invalid HELLO accepted");
                    let out = decode_all(
                        &[written, machine.pending_output()].concat(),
                        "the manager's output",
                    );
                    assert_eq!(out.last().map(|f| f.0), Some(FrameKind::Welcome));
                }
                ManagerEvent::Result { body, .. } => {
                    assert!(body.len() <= config.max_body as usize);
                }
                ManagerEvent::Refused { code, .. } => {
                    *ended = true;
                    let out = decode_all(
                        &[written, machine.pending_output()].concat(),
                        "the manager's output",
                    );
                    let last = out.last().expect("ERROR queued");
                    assert_eq!(last.0, FrameKind::Error);
                    let body: ErrorBody = serde_json::from_slice(&last.3).expect("ERROR body");
                    assert_eq!(body.code, *code);
                }
                ManagerEvent::Goodbye { .. } | ManagerEvent::Error { .. } => *ended = true,
                _ => {}
            }
            if *ended {
                assert_eq!(machine.phase(), ManagerPhase::Closed);
            }
            events.push(event);
        }
        *hello = None;
    };
    for op in ops {
        if let ManagerOp::Bytes { bytes, seed, hello } = op {
            unread.extend_from_slice(bytes);
            seeds.push(*seed);
            // Only a HELLO that is the very first bytes is known to be
            // the frame a Hello event comes from.
            if !fed_any {
                hello_expected = Some(*hello);
            }
            fed_any = true;
            continue;
        }
        // The worker's bytes are read before the manager acts again.
        if split {
            let mut at = 0;
            let mut n = 0;
            while at < unread.len() {
                let seed = seeds
                    .get(n % seeds.len().max(1))
                    .copied()
                    .unwrap_or(0xc0)
                    .wrapping_add(n as u8);
                n += 1;
                let (size, into_buffer) = chunk_plan(seed, unread.len() - at);
                let chunk = &unread[at..at + size];
                at += size;
                if into_buffer {
                    let space = machine.recv_space(size);
                    space[..size].copy_from_slice(chunk);
                    machine.commit(size);
                } else {
                    machine.handle_input(chunk);
                }
                poll(
                    &mut machine,
                    &written,
                    &mut events,
                    &mut ended,
                    &mut hello_expected,
                );
            }
        } else {
            machine.handle_input(&unread);
            poll(
                &mut machine,
                &written,
                &mut events,
                &mut ended,
                &mut hello_expected,
            );
        }
        unread.clear();
        seeds.clear();
        match op {
            ManagerOp::Bytes { .. } => {}
            ManagerOp::Task {
                id,
                handler,
                len,
                ack,
            } => {
                let phase = machine.phase();
                let payload = vec![0x5a; *len];
                let sent = machine.send_task(*id, handler, &payload, *ack);
                match &sent {
                    Ok(()) => {
                        assert_eq!(phase, ManagerPhase::Active);
                        assert!(1 + handler.len() + len <= machine.worker_max_body() as usize);
                        let out = decode_all(
                            &[&written[..], machine.pending_output()].concat(),
                            "the manager's output",
                        );
                        let last = out.last().expect("the TASK");
                        assert_eq!((last.0, last.2), (FrameKind::Task, *id));
                        assert_eq!(last.3.len(), 1 + handler.len() + len);
                    }
                    Err(SendError::NotReady) => assert_ne!(phase, ManagerPhase::Active),
                    Err(_) => assert_eq!(phase, ManagerPhase::Active),
                }
                sends.push(sent);
            }
            ManagerOp::Ping(nonce) => machine.send_ping(*nonce),
            ManagerOp::Drain => machine.send_drain(),
            ManagerOp::Goodbye => machine.send_goodbye(),
            ManagerOp::Consume(n) => {
                let n = (*n).min(machine.pending_output().len());
                written.extend_from_slice(&machine.pending_output()[..n]);
                machine.consume_output(n);
            }
        }
    }
    written.extend_from_slice(machine.pending_output());
    for (kind, ..) in decode_all(&written, "the manager's output") {
        assert!(
            matches!(
                kind,
                FrameKind::Welcome
                    | FrameKind::Task
                    | FrameKind::Ping
                    | FrameKind::Pong
                    | FrameKind::Drain
                    | FrameKind::Goodbye
                    | FrameKind::Error
            ),
            "a manager sent {kind}"
        );
    }
    ManagerOutcome {
        events,
        sends,
        output: written,
        phase: machine.phase(),
    }
}

/// Worker bytes (raw, or HELLOs and frames picked field by field) into the
/// manager's state machine, between the manager's own sends, read whole
/// and in input-chosen pieces: both runs must decode the same events and
/// write the same bytes.
pub fn manager(data: &[u8]) {
    let (config, ops) = manager_program(data);
    let split = run_manager(&config, &ops, true);
    let whole = run_manager(&config, &ops, false);
    assert_eq!(
        split.events, whole.events,
        "events differ with the reads split"
    );
    assert_eq!(split.sends, whole.sends);
    assert_eq!(split.phase, whole.phase);
    assert!(
        split.output == whole.output,
        "output differs with the reads split"
    );
}
