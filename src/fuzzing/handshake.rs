//! The [`handshake`] target: a worker session's start with the manager's
//! WELCOME or ERROR bodies picked field by field, and what the worker must
//! accept, refuse and report. It owns the WELCOME body builder and must
//! never run past the first TASK after the handshake.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::json::{error_body, json_damage, json_number, json_string};
use super::{chunk_plan, decode_all, Input};
use crate::connection::Link;
use crate::handlers::HandlerRegistry;
use crate::protocol::frame::{encode_frame, FrameKind, FLAG_ACK_REQUESTED};
use crate::protocol::{CloseReason, PROTOCOL_VERSION};
use crate::session::{SessionConfig, WorkerSession};
use crate::stats::SessionStats;

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

    let now = Instant::now();
    let handlers = HandlerRegistry::with_builtins();
    let stats = Arc::new(SessionStats::with_handlers(0, handlers.names().len()));
    let config = SessionConfig {
        worker_id: "fuzz".into(),
        runtime: "fuzz",
        max_body: 1 << 20,
        max_in_flight: 4,
        token: None,
        handshake_timeout: Duration::from_secs(1),
    };
    let mut link = Link::plain(WorkerSession::new(0, &config, handlers, stats, now));
    let seed = input.byte();
    let mut at = 0;
    let mut n = 0u8;
    while at < stream.len() && link.wants_read() {
        let (size, _) = chunk_plan(seed.wrapping_add(n), stream.len() - at);
        n = n.wrapping_add(37);
        link.on_input(&stream[at..at + size], now);
        at += size;
    }
    let output = link.take_output(Vec::new());
    let frames = decode_all(&output, "the worker's output");
    assert_eq!(frames.first().map(|f| f.0), Some(FrameKind::Hello));
    let result = frames
        .iter()
        .find(|f| f.0 == FrameKind::Result)
        .map(|f| f.3.clone());
    if let Some(reason) = link.session().closed() {
        let line = reason.to_string();
        assert!(
            !line.chars().any(char::is_control),
            "a control character in the close reason {line:?}"
        );
        assert!(line.len() <= 1024, "a close reason of {} bytes", line.len());
    }
    match (mode, link.session().closed()) {
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
}
