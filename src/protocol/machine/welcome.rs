//! The WELCOME body: parsed and checked against what this worker needs
//! (protocol version, a `max_body` of at least [`MIN_PEER_MAX_BODY`]) before
//! the handshake may complete.
//!
//! A pure function of the bytes: it never panics on peer input, and the
//! manager's text it keeps is capped and escaped.

use crate::format::{peer_text, MAX_PEER_TEXT};
use crate::protocol::hello::{codes, Welcome, PROTOCOL_VERSION};

pub(super) fn parse_welcome(body: &[u8]) -> Result<Welcome, (&'static str, String)> {
    let invalid = |err: serde_json::Error| {
        (
            codes::BAD_FRAME,
            format!("WELCOME body is not valid: {err}"),
        )
    };
    // JSON bodies are objects (PROTOCOL.md); serde would also fill the
    // struct from an array, by position.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(invalid)?;
    if !value.is_object() {
        return Err((
            codes::BAD_FRAME,
            "WELCOME body is not a JSON object".to_owned(),
        ));
    }
    let mut welcome: Welcome = serde_json::from_value(value).map_err(invalid)?;
    // Logged and shown in /status: capped and escaped.
    welcome.manager = peer_text(&welcome.manager, MAX_PEER_TEXT);
    if welcome.protocol != PROTOCOL_VERSION {
        return Err((
            codes::UNSUPPORTED_VERSION,
            format!(
                "manager speaks protocol {}, this worker speaks {PROTOCOL_VERSION}",
                welcome.protocol
            ),
        ));
    }
    if welcome.max_body < MIN_PEER_MAX_BODY {
        return Err((
            codes::BAD_FRAME,
            format!(
                "WELCOME max_body {} is below {MIN_PEER_MAX_BODY}: too small for this worker's \
                 ERROR and FAILED bodies",
                welcome.max_body
            ),
        ));
    }
    Ok(welcome)
}

/// The smallest `max_body` a WELCOME may announce (PROTOCOL.md "Handshake"):
/// below it the worker's own ERROR and FAILED bodies, cut to fit, would be
/// empty or meaningless.
pub const MIN_PEER_MAX_BODY: u32 = 64;
