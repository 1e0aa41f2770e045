//! The manager side of one connection, sans-IO: validate HELLO, answer
//! WELCOME or ERROR, encode TASK / PING / DRAIN / GOODBYE, and decode what a
//! worker sends back. Used by the loadgen and by the tests; like the worker
//! machine it never touches a socket or a clock.

use subtle::ConstantTimeEq;

use crate::protocol::frame::{
    encode_frame, encode_header, FrameBuffer, FrameKind, FLAG_ACK_REQUESTED, FLAG_FAILED,
};
use crate::protocol::{codes, ErrorBody, GoodbyeBody, Hello, Welcome, PROTOCOL_VERSION};

/// How this manager answers HELLOs.
#[derive(Clone)]
pub struct ManagerConfig {
    pub manager_id: String,
    /// Largest body this manager accepts (WELCOME's `max_body`).
    pub max_body: u32,
    pub heartbeat_ms: u32,
    /// When set, a HELLO must carry the same token.
    pub token: Option<String>,
}

impl std::fmt::Debug for ManagerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerConfig")
            .field("manager_id", &self.manager_id)
            .field("max_body", &self.max_body)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            manager_id: "ringworker-manager".to_owned(),
            max_body: 16 * 1024 * 1024,
            heartbeat_ms: 0,
            token: None,
        }
    }
}

/// Where the manager's side of the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerPhase {
    AwaitingHello,
    Active,
    Closed,
}

/// What a worker sent, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerEvent {
    /// A valid HELLO; WELCOME has been queued.
    Hello(Hello),
    Ack {
        id: u64,
    },
    Result {
        id: u64,
        failed: bool,
        body: Vec<u8>,
    },
    /// A PING was answered with PONG automatically.
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Drain,
    /// The worker's GOODBYE and the counters it reported; the connection is over.
    Goodbye {
        counts: Option<GoodbyeBody>,
        frame_len: usize,
    },
    /// The worker sent ERROR; the connection is over.
    Error {
        code: String,
        message: String,
    },
    /// This side refused the worker (ERROR queued); the connection is over.
    Refused {
        code: &'static str,
        message: String,
    },
}

/// A decoded frame whose RESULT body is borrowed from the receive buffer, so
/// a manager can check results without allocating per task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerEventRef<'a> {
    Hello(Hello),
    Ack {
        id: u64,
    },
    Result {
        id: u64,
        failed: bool,
        body: &'a [u8],
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    Drain,
    Goodbye {
        counts: Option<GoodbyeBody>,
        frame_len: usize,
    },
    Error {
        code: String,
        message: String,
    },
    Refused {
        code: &'static str,
        message: String,
    },
}

impl ManagerEventRef<'_> {
    /// The owned form.
    pub fn into_owned(self) -> ManagerEvent {
        match self {
            ManagerEventRef::Hello(hello) => ManagerEvent::Hello(hello),
            ManagerEventRef::Ack { id } => ManagerEvent::Ack { id },
            ManagerEventRef::Result { id, failed, body } => ManagerEvent::Result {
                id,
                failed,
                body: body.to_vec(),
            },
            ManagerEventRef::Ping { nonce } => ManagerEvent::Ping { nonce },
            ManagerEventRef::Pong { nonce } => ManagerEvent::Pong { nonce },
            ManagerEventRef::Drain => ManagerEvent::Drain,
            ManagerEventRef::Goodbye { counts, frame_len } => {
                ManagerEvent::Goodbye { counts, frame_len }
            }
            ManagerEventRef::Error { code, message } => ManagerEvent::Error { code, message },
            ManagerEventRef::Refused { code, message } => ManagerEvent::Refused { code, message },
        }
    }
}

/// A frame the manager wanted to send but must not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    #[error("TASK body of {body} bytes exceeds the worker's max_body {max_body}")]
    TooLarge { body: usize, max_body: u32 },
    #[error("handler name {0:?} is not 1..=64 printable ASCII characters")]
    BadHandlerName(String),
    #[error("the handshake has not completed")]
    NotReady,
}

/// The manager side of one connection.
#[derive(Debug)]
pub struct ManagerMachine {
    config: ManagerConfig,
    phase: ManagerPhase,
    recv: FrameBuffer,
    out: Vec<u8>,
    worker_max_body: u32,
    worker_max_in_flight: u32,
}

impl ManagerMachine {
    pub fn new(config: ManagerConfig) -> Self {
        ManagerMachine {
            recv: FrameBuffer::new(config.max_body),
            config,
            phase: ManagerPhase::AwaitingHello,
            out: Vec::new(),
            worker_max_body: 0,
            worker_max_in_flight: 0,
        }
    }

    pub fn phase(&self) -> ManagerPhase {
        self.phase
    }

    /// The worker's `max_in_flight` from its HELLO.
    pub fn worker_max_in_flight(&self) -> u32 {
        self.worker_max_in_flight
    }

    pub fn worker_max_body(&self) -> u32 {
        self.worker_max_body
    }

    /// Bytes read from the worker.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        self.recv.extend(bytes);
    }

    /// Space to read into directly; follow with [`ManagerMachine::commit`].
    pub fn recv_space(&mut self, min: usize) -> &mut [u8] {
        let want = self.recv.read_hint(min);
        self.recv.spare(want)
    }

    pub fn commit(&mut self, n: usize) {
        self.recv.commit(n);
    }

    /// Decode the next frame from the worker.
    pub fn poll_event(&mut self) -> Option<ManagerEvent> {
        self.poll_event_ref().map(ManagerEventRef::into_owned)
    }

    /// Decode the next frame, borrowing a RESULT's body.
    pub fn poll_event_ref(&mut self) -> Option<ManagerEventRef<'_>> {
        if self.phase == ManagerPhase::Closed {
            return None;
        }
        let header = match self.recv.next_frame() {
            Ok(Some(frame)) => frame.header,
            Ok(None) => return None,
            Err(err) => {
                let (code, message) = (err.code(), err.to_string());
                return Some(self.refuse(code, message));
            }
        };
        if header.kind == FrameKind::Result {
            return Some(ManagerEventRef::Result {
                id: header.id,
                failed: header.flags & FLAG_FAILED != 0,
                body: self.recv.last_body(),
            });
        }
        let event = match (self.phase, header.kind) {
            (_, FrameKind::Error) => {
                let body: Option<ErrorBody> = serde_json::from_slice(self.recv.last_body()).ok();
                self.phase = ManagerPhase::Closed;
                let (code, message) = body.map_or_else(
                    || ("unknown".to_owned(), "unparseable ERROR body".to_owned()),
                    |b| (b.code, b.message),
                );
                ManagerEventRef::Error { code, message }
            }
            (ManagerPhase::AwaitingHello, FrameKind::Hello) => {
                let hello: Hello =
                    match serde_json::from_slice(self.recv.last_body()) {
                        Ok(hello) => hello,
                        Err(err) => {
                            return Some(self.refuse(
                                codes::BAD_HELLO,
                                format!("HELLO body is not valid: {err}"),
                            ))
                        }
                    };
                if hello.protocol != PROTOCOL_VERSION {
                    let message = format!(
                        "this manager speaks protocol {PROTOCOL_VERSION}, not {}",
                        hello.protocol
                    );
                    return Some(self.refuse(codes::UNSUPPORTED_VERSION, message));
                }
                if let Some(expected) = &self.config.token {
                    let offered = hello.token.as_deref().unwrap_or("");
                    if !bool::from(expected.as_bytes().ct_eq(offered.as_bytes())) {
                        return Some(
                            self.refuse(codes::UNAUTHORIZED, "token missing or wrong".to_owned()),
                        );
                    }
                }
                self.worker_max_body = hello.max_body;
                self.worker_max_in_flight = hello.max_in_flight;
                let welcome = Welcome {
                    protocol: PROTOCOL_VERSION,
                    manager: self.config.manager_id.clone(),
                    max_body: self.config.max_body,
                    heartbeat_ms: self.config.heartbeat_ms,
                };
                let body = serde_json::to_vec(&welcome).unwrap_or_default();
                encode_frame(&mut self.out, FrameKind::Welcome, 0, 0, &body);
                self.phase = ManagerPhase::Active;
                ManagerEventRef::Hello(hello)
            }
            (ManagerPhase::AwaitingHello, kind) => {
                return Some(self.refuse(codes::UNEXPECTED_FRAME, format!("{kind} before HELLO")));
            }
            (_, kind @ (FrameKind::Hello | FrameKind::Welcome | FrameKind::Task)) => {
                return Some(self.refuse(
                    codes::UNEXPECTED_FRAME,
                    format!("a manager never receives {kind} here"),
                ));
            }
            (_, FrameKind::Ack) => ManagerEventRef::Ack { id: header.id },
            (_, FrameKind::Result) => unreachable!("RESULT is handled above"),
            (_, FrameKind::Ping) => {
                encode_frame(&mut self.out, FrameKind::Pong, 0, header.id, &[]);
                ManagerEventRef::Ping { nonce: header.id }
            }
            (_, FrameKind::Pong) => ManagerEventRef::Pong { nonce: header.id },
            (_, FrameKind::Drain) => ManagerEventRef::Drain,
            (_, FrameKind::Goodbye) => {
                let counts = serde_json::from_slice(self.recv.last_body()).ok();
                self.phase = ManagerPhase::Closed;
                ManagerEventRef::Goodbye {
                    counts,
                    frame_len: header.frame_len(),
                }
            }
        };
        Some(event)
    }

    /// Queue a TASK.
    pub fn send_task(
        &mut self,
        id: u64,
        handler: &str,
        payload: &[u8],
        ack: bool,
    ) -> Result<(), SendError> {
        self.send_task_head(id, handler, payload.len(), ack)?;
        self.out.extend_from_slice(payload);
        Ok(())
    }

    /// Queue a TASK's header and handler name only; the caller writes the
    /// `payload_len` payload bytes itself right after them (vectored writes
    /// of large payloads without copying them into the output buffer).
    pub fn send_task_head(
        &mut self,
        id: u64,
        handler: &str,
        payload_len: usize,
        ack: bool,
    ) -> Result<(), SendError> {
        if self.phase != ManagerPhase::Active {
            return Err(SendError::NotReady);
        }
        if handler.is_empty()
            || handler.len() > 64
            || !handler.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SendError::BadHandlerName(handler.to_owned()));
        }
        let body_len = 1 + handler.len() + payload_len;
        if body_len > self.worker_max_body as usize {
            return Err(SendError::TooLarge {
                body: body_len,
                max_body: self.worker_max_body,
            });
        }
        let flags = if ack { FLAG_ACK_REQUESTED } else { 0 };
        encode_header(&mut self.out, FrameKind::Task, flags, id, body_len);
        self.out.push(handler.len() as u8);
        self.out.extend_from_slice(handler.as_bytes());
        Ok(())
    }

    pub fn send_ping(&mut self, nonce: u64) {
        encode_frame(&mut self.out, FrameKind::Ping, 0, nonce, &[]);
    }

    pub fn send_drain(&mut self) {
        encode_frame(&mut self.out, FrameKind::Drain, 0, 0, &[]);
    }

    pub fn send_goodbye(&mut self) {
        encode_frame(&mut self.out, FrameKind::Goodbye, 0, 0, &[]);
        self.phase = ManagerPhase::Closed;
    }

    /// Bytes to write; the caller clears what it wrote with [`ManagerMachine::consume_output`].
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n.min(self.out.len()));
    }

    /// Swap the output buffer for `spare` (cleared).
    pub fn take_output(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        spare.clear();
        std::mem::replace(&mut self.out, spare)
    }

    fn refuse(&mut self, code: &'static str, message: String) -> ManagerEventRef<'static> {
        let body = ErrorBody::new(code, message.clone()).to_json();
        encode_frame(&mut self.out, FrameKind::Error, 0, 0, &body);
        self.phase = ManagerPhase::Closed;
        ManagerEventRef::Refused { code, message }
    }
}
