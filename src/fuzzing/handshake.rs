//! The [`handshake`] target: a worker session's start with the manager's
//! WELCOME or ERROR bodies picked field by field, and what the worker must
//! accept, refuse and report, through a [`Connection`] as the runtimes
//! drive it. It owns the WELCOME body builder and must never run past the
//! first TASK after the handshake.

use std::time::{Duration, Instant};

use super::driver::{self, Driver, Lifecycle};
use super::json::{error_body, json_damage, json_number, json_string};
use super::{chunk_plan, decode_all, Input};
#[cfg(doc)]
use crate::connection::Connection;
use crate::connection::LINGER;
use crate::handlers::HandlerRegistry;
use crate::protocol::frame::{encode_frame, FrameKind, FLAG_ACK_REQUESTED};
use crate::protocol::{CloseReason, PROTOCOL_VERSION};
use crate::session::SessionConfig;

/// A WELCOME body built field by field; `Some(valid)` when whether the
/// worker must accept it is known.
fn welcome_body(input: &mut Input<'_>) -> (Vec<u8>, Option<bool>) {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut known = true;
    let mut valid = true;
    let flags = input.byte();
    for (i, name) in ["protocol", "manager", "max_body", "heartbeat_ms"]
        .iter()
        .enumerate()
    {
        if flags & (1 << i) != 0 && input.byte() % 4 == 0 {
            valid = false; // a required field is missing
            continue;
        }
        let mut field = format!("\"{name}\":").into_bytes();
        if *name == "manager" {
            let (value, text) = json_string(input);
            valid &= text.is_some();
            field.extend_from_slice(&value);
        } else {
            let (value, n) = if *name == "protocol" && input.byte() % 2 == 0 {
                ("1".to_owned(), Some(1))
            } else {
                json_number(input)
            };
            match (*name, n) {
                (_, None) => valid = false,
                ("protocol", Some(n)) => valid &= n == PROTOCOL_VERSION,
                ("max_body", Some(n)) => valid &= n >= crate::protocol::machine::MIN_PEER_MAX_BODY,
                _ => {}
            }
            field.extend_from_slice(value.as_bytes());
        }
        fields.push(field);
    }
    if flags & 0x10 != 0 {
        fields.push(br#""extra":{"nested":[1,2,{"x":null}]}"#.to_vec());
    }
    if flags & 0x20 != 0 {
        // A duplicate key: which one wins is serde's business.
        fields.push(b"\"protocol\":7".to_vec());
        known = false;
    }
    if flags & 0x40 != 0 && !fields.is_empty() {
        let at = usize::from(input.byte()) % fields.len();
        let last = fields.len() - 1;
        fields.swap(at, last);
    }
    let mut body = b"{".to_vec();
    body.extend_from_slice(&fields.join(&b","[..]));
    body.push(b'}');
    if flags & 0x80 != 0 {
        json_damage(input, &mut body);
        valid = false;
    }
    (body, known.then_some(valid))
}

/// The handshake with the manager's bodies picked field by field (JSON-aware
/// mutation): a WELCOME or ERROR first, or a valid WELCOME and then one of
/// them; then a TASK. The worker must accept exactly the valid WELCOMEs,
/// refuse the others with an ERROR, report an ERROR's code and message
/// capped and escaped, and keep anything it logs on one line.
pub fn handshake(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.byte() % 4;
    let mut stream = Vec::new();
    let valid_welcome = br#"{"protocol":1,"manager":"m","max_body":65536,"heartbeat_ms":0}"#;
    if mode >= 2 {
        encode_frame(&mut stream, FrameKind::Welcome, 0, 0, valid_welcome);
    }
    let (expect_welcome, expect_error) = if mode % 2 == 0 {
        let (body, valid) = welcome_body(&mut input);
        encode_frame(&mut stream, FrameKind::Welcome, 0, 0, &body);
        (valid, None)
    } else {
        let (body, parsed) = error_body(&mut input);
        encode_frame(&mut stream, FrameKind::Error, 0, 0, &body);
        (None, Some(parsed))
    };
    let mut task = vec![4];
    task.extend_from_slice(b"echoping");
    encode_frame(&mut stream, FrameKind::Task, FLAG_ACK_REQUESTED, 1, &task);

    let config = SessionConfig {
        worker_id: "fuzz".into(),
        runtime: "fuzz",
        max_body: 1 << 20,
        max_in_flight: 4,
        token: None,
        handshake_timeout: Duration::from_secs(1),
    };
    let plan = driver::plan(config, HandlerRegistry::with_builtins(), None);
    let mut driver = Driver::new(plan, false, Instant::now());
    driver.pump();
    // The first connection: what the worker wrote on it (the manager reads
    // everything as it comes) and how it ended.
    let mut output = Vec::new();
    let mut end = None;
    let mut first = |driver: &mut Driver, output: &mut Vec<u8>| {
        for _ in 0..16 {
            for event in driver.take_events() {
                if let Lifecycle::Closed { generation: 1, .. } = event {
                    end = Some(event);
                }
            }
            if end.is_some() {
                return end.clone();
            }
            let bytes = driver.take_send()?;
            output.extend_from_slice(&bytes);
            driver.pump();
        }
        panic!("sends kept coming with nothing new to answer");
    };
    first(&mut driver, &mut output);
    let seed = input.byte();
    let mut at = 0;
    let mut n = 0u8;
    while at < stream.len() && driver.can_read() {
        let (size, _) = chunk_plan(seed.wrapping_add(n), stream.len() - at);
        n = n.wrapping_add(37);
        driver.receive(&stream[at..at + size], &mut |left, _| left);
        at += size;
        driver.pump();
        if first(&mut driver, &mut output).is_some() {
            break;
        }
    }
    let ended = first(&mut driver, &mut output);
    let closed: Option<CloseReason> = match &ended {
        Some(Lifecycle::Closed { reason, .. }) => reason.clone(),
        _ => driver.session().and_then(|s| s.closed().cloned()),
    };
    let frames = decode_all(&output, "the worker's output");
    assert_eq!(frames.first().map(|f| f.0), Some(FrameKind::Hello));
    let result = frames
        .iter()
        .find(|f| f.0 == FrameKind::Result)
        .map(|f| f.3.clone());
    if let Some(reason) = &closed {
        let line = reason.to_string();
        assert!(
            !line.chars().any(char::is_control),
            "a control character in the close reason {line:?}"
        );
        assert!(line.len() <= 1024, "a close reason of {} bytes", line.len());
    }
    match (mode, closed.as_ref()) {
        (0, None) => {
            assert_ne!(expect_welcome, Some(false), "an invalid WELCOME accepted");
            assert_eq!(
                result.as_deref(),
                Some(&b"ping"[..]),
                "the TASK after WELCOME"
            );
        }
        (0, Some(reason)) => {
            assert_ne!(
                expect_welcome,
                Some(true),
                "a valid WELCOME refused: {reason}"
            );
            assert!(
                matches!(reason, CloseReason::ProtocolViolation { .. }),
                "{reason:?}"
            );
            assert_eq!(frames.last().map(|f| f.0), Some(FrameKind::Error));
            assert!(result.is_none(), "a TASK ran after a refused WELCOME");
        }
        (2, Some(CloseReason::ProtocolViolation { code, .. })) => {
            assert_eq!(*code, crate::protocol::codes::UNEXPECTED_FRAME);
            assert!(result.is_none());
        }
        (
            1 | 3,
            Some(CloseReason::PeerError {
                code,
                message,
                during_handshake,
            }),
        ) => {
            assert_eq!(*during_handshake, mode == 1);
            assert!(result.is_none(), "a TASK ran after ERROR");
            match expect_error.flatten() {
                Some((c, m)) => {
                    use crate::format::{peer_text, MAX_PEER_TEXT};
                    assert_eq!(
                        *code,
                        peer_text(&c, crate::protocol::frame::MAX_HANDLER_NAME)
                    );
                    assert_eq!(*message, peer_text(&m, MAX_PEER_TEXT));
                }
                None => assert_eq!(code, "unknown"),
            }
        }
        (mode, other) => panic!("mode {mode} ended {other:?}"),
    }

    // A closed session's connection ends within the linger (the manager
    // never closes its side here), with a refusal only for a refused
    // handshake (the driver checks which); the agent then stops, by the
    // drain's deadline.
    if closed.is_some() && ended.is_none() {
        let at = driver.now + LINGER;
        driver.advance_to(at);
        assert!(
            first(&mut driver, &mut output).is_some(),
            "the connection of a closed session outlived the linger"
        );
    }
    driver.request_stop();
    let mut sink = Vec::new();
    for _ in 0..Driver::STOP_STEPS {
        driver.deliver_all(&mut sink);
        if driver.stop_step() {
            break;
        }
    }
    assert!(driver.is_stopped(), "the connection did not stop");
}
