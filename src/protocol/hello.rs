//! The JSON bodies of the protocol: HELLO, WELCOME, ERROR / failed RESULT,
//! and the worker's GOODBYE.
//!
//! Serde types only; unknown fields are ignored on the way in, as PROTOCOL.md
//! requires. The token is kept out of `Debug` output so it cannot leak into a
//! log line by accident.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// The worker's first frame.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub worker: String,
    pub session: u32,
    pub runtime: String,
    pub max_body: u32,
    pub max_in_flight: u32,
    pub handlers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("protocol", &self.protocol)
            .field("worker", &self.worker)
            .field("session", &self.session)
            .field("runtime", &self.runtime)
            .field("max_body", &self.max_body)
            .field("max_in_flight", &self.max_in_flight)
            .field("handlers", &self.handlers)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The manager's answer to HELLO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    pub manager: String,
    pub max_body: u32,
    pub heartbeat_ms: u32,
}

/// Body of ERROR and of a RESULT with `FAILED`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            code: code.into(),
            message: message.into(),
        }
    }

    /// JSON bytes; an `ErrorBody` always serialises.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"code":"internal","message":""}"#.to_vec())
    }
}

/// The worker's GOODBYE body (PROTOCOL.md "Byte accounting").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodbyeBody {
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// ERROR and FAILED codes named by PROTOCOL.md.
pub mod codes {
    pub const BAD_FRAME: &str = "bad_frame";
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const UNEXPECTED_FRAME: &str = "unexpected_frame";
    pub const DUPLICATE_TASK_ID: &str = "duplicate_task_id";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const BAD_HELLO: &str = "bad_hello";
    pub const UNKNOWN_HANDLER: &str = "unknown_handler";
    pub const BAD_PAYLOAD: &str = "bad_payload";
    pub const DRAINING: &str = "draining";
    pub const HANDLER_FAILED: &str = "handler_failed";
    pub const RESULT_TOO_LARGE: &str = "result_too_large";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_matches_the_spec_field_names() {
        let hello = Hello {
            protocol: 1,
            worker: "w1".into(),
            session: 3,
            runtime: "blocking".into(),
            max_body: 1024,
            max_in_flight: 64,
            handlers: vec!["echo".into()],
            token: None,
        };
        let json: serde_json::Value = serde_json::to_value(&hello).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"protocol":1,"worker":"w1","session":3,"runtime":"blocking",
                "max_body":1024,"max_in_flight":64,"handlers":["echo"]})
        );
    }

    #[test]
    fn welcome_ignores_unknown_fields() {
        let welcome: Welcome = serde_json::from_slice(
            br#"{"protocol":1,"manager":"m","max_body":5,"heartbeat_ms":0,"extra":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(welcome.max_body, 5);
    }

    #[test]
    fn hello_debug_redacts_the_token() {
        let hello = Hello {
            protocol: 1,
            worker: "w".into(),
            session: 0,
            runtime: "uring".into(),
            max_body: 1,
            max_in_flight: 1,
            handlers: vec![],
            token: Some("s3cret-value".into()),
        };
        assert!(!format!("{hello:?}").contains("s3cret-value"));
    }
}
