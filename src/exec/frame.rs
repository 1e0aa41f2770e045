//! The handler protocol's frames (docs/HANDLER_PROTOCOL.md): what the
//! agent and a `pool` worker exchange on fd 3.
//!
//! Every frame is `len: u32` (the bytes after it), `kind: u8`, `id: u64`,
//! then a body; integers are big-endian, as in PROTOCOL.md. TASK's body is
//! `deadline_ms: u32` and the payload; RESULT's is the output; FAILED's a
//! UTF-8 message. [`FrameDecoder`] takes bytes in any split, never panics,
//! and holds at most one header plus one body of at most `max_body`
//! bytes: a longer frame is skipped, not buffered, and reported as
//! [`Frame::Oversized`] with its id so that its task can be answered.

use std::fmt;

/// Bytes of `len`.
pub const LEN_BYTES: usize = 4;
/// Bytes of `kind` and `id`: the least `len`.
pub const HEAD_BYTES: usize = 9;
/// Bytes of TASK's `deadline_ms`.
pub const DEADLINE_BYTES: usize = 4;

/// The kinds.
pub const KIND_TASK: u8 = 0x01;
pub const KIND_RESULT: u8 = 0x02;
pub const KIND_FAILED: u8 = 0x03;

/// One frame.
#[derive(Clone, PartialEq, Eq)]
pub enum Frame {
    /// Agent to worker: run `payload`, answer within `deadline_ms`.
    Task {
        id: u64,
        deadline_ms: u32,
        payload: Vec<u8>,
    },
    /// Worker to agent: the output of task `id`.
    Result { id: u64, output: Vec<u8> },
    /// Worker to agent: task `id` failed with this message.
    Failed { id: u64, message: Vec<u8> },
    /// A frame whose body was longer than the decoder's `max_body`: its
    /// kind and id, and its body length; the body was skipped.
    Oversized { kind: u8, id: u64, body_len: u64 },
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Frame::Task {
                id,
                deadline_ms,
                payload,
            } => write!(
                f,
                "Task {{ id: {id}, deadline_ms: {deadline_ms}, payload: {} bytes }}",
                payload.len()
            ),
            Frame::Result { id, output } => {
                write!(f, "Result {{ id: {id}, output: {} bytes }}", output.len())
            }
            Frame::Failed { id, message } => write!(
                f,
                "Failed {{ id: {id}, message: {:?} }}",
                String::from_utf8_lossy(message)
            ),
            Frame::Oversized { kind, id, body_len } => write!(
                f,
                "Oversized {{ kind: {kind:#04x}, id: {id}, body_len: {body_len} }}"
            ),
        }
    }
}

impl Frame {
    /// The task id it is about.
    pub fn id(&self) -> u64 {
        match *self {
            Frame::Task { id, .. }
            | Frame::Result { id, .. }
            | Frame::Failed { id, .. }
            | Frame::Oversized { id, .. } => id,
        }
    }

    /// Append its bytes to `out`. An [`Frame::Oversized`] has none.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Frame::Task {
                id,
                deadline_ms,
                payload,
            } => encode_task(*id, *deadline_ms, payload, out),
            Frame::Result { id, output } => encode_answer(KIND_RESULT, *id, output, out),
            Frame::Failed { id, message } => encode_answer(KIND_FAILED, *id, message, out),
            Frame::Oversized { .. } => {}
        }
    }
}

fn put_head(kind: u8, id: u64, body_len: usize, out: &mut Vec<u8>) {
    // Bodies are bounded by the protocol's max_body (at most 1 GiB).
    let len = u32::try_from(HEAD_BYTES + body_len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(kind);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Append a TASK frame.
pub fn encode_task(id: u64, deadline_ms: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(LEN_BYTES + HEAD_BYTES + DEADLINE_BYTES + payload.len());
    put_head(KIND_TASK, id, DEADLINE_BYTES + payload.len(), out);
    out.extend_from_slice(&deadline_ms.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Append a RESULT (`KIND_RESULT`) or FAILED (`KIND_FAILED`) frame.
pub fn encode_answer(kind: u8, id: u64, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(LEN_BYTES + HEAD_BYTES + body.len());
    put_head(kind, id, body.len(), out);
    out.extend_from_slice(body);
}

/// Bytes that are not the handler protocol. After one, the decoder
/// answers with the same error: the stream has lost its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame length {0} is below the 9 bytes of kind and id")]
    TooShort(u32),
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("a TASK frame of length {0} has no room for its deadline")]
    NoDeadline(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a frame in `buf`.
    Frame,
    /// Skipping this many more bytes of an oversized body.
    Skip(u64),
    Failed(FrameError),
}

/// Frames out of a byte stream, in any split.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_body: usize,
    buf: Vec<u8>,
    state: State,
}

impl FrameDecoder {
    /// A decoder of frames whose body (TASK's deadline included) is at
    /// most `max_body` bytes; longer ones are [`Frame::Oversized`].
    pub fn new(max_body: usize) -> Self {
        FrameDecoder {
            max_body,
            buf: Vec::new(),
            state: State::Frame,
        }
    }

    /// Bytes held for a frame not yet complete: at most
    /// `4 + 9 + max_body`.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether no partial frame is held (a stream may end here).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.state == State::Frame
    }

    /// Decode `input`, appending each complete frame to `frames`. On an
    /// error the frames before it are still appended.
    pub fn feed(&mut self, mut input: &[u8], frames: &mut Vec<Frame>) -> Result<(), FrameError> {
        loop {
            match self.state {
                State::Failed(err) => return Err(err),
                State::Skip(left) => {
                    let skipped = (input.len() as u64).min(left);
                    input = &input[skipped as usize..];
                    if skipped < left {
                        self.state = State::Skip(left - skipped);
                        return Ok(());
                    }
                    self.state = State::Frame;
                }
                State::Frame => {}
            }
            if input.is_empty() {
                return Ok(());
            }
            // Whole frames straight from the input, without a copy into buf.
            if self.buf.is_empty() {
                match self.parse(input) {
                    Ok(Some((used, frame))) => {
                        input = &input[used..];
                        if let Some(frame) = frame {
                            frames.push(frame);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(err) => return Err(self.fail(err)),
                }
            }
            // A partial frame: take what it needs, no more.
            let need = self.needed();
            let take = need.min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            let buf = std::mem::take(&mut self.buf);
            match self.parse(&buf) {
                Ok(Some((used, frame))) => {
                    debug_assert_eq!(used, buf.len());
                    self.buf = buf;
                    self.buf.clear();
                    if let Some(frame) = frame {
                        frames.push(frame);
                    }
                }
                Ok(None) => {
                    self.buf = buf;
                    if input.is_empty() {
                        return Ok(());
                    }
                }
                Err(err) => return Err(self.fail(err)),
            }
        }
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.state = State::Failed(err);
        self.buf = Vec::new();
        err
    }

    /// Bytes `buf` still needs before it can be parsed further.
    fn needed(&self) -> usize {
        let have = self.buf.len();
        if have < LEN_BYTES + HEAD_BYTES {
            return LEN_BYTES + HEAD_BYTES - have;
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        (LEN_BYTES + len).saturating_sub(have).max(1)
    }

    /// One frame from the start of `bytes`: `Some((bytes used, frame))`,
    /// the frame `None` when an oversized one starts skipping; `None`
    /// when more bytes are needed.
    fn parse(&mut self, bytes: &[u8]) -> Result<Option<(usize, Option<Frame>)>, FrameError> {
        let Some(len_bytes) = bytes.get(..LEN_BYTES) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        if (len as usize) < HEAD_BYTES {
            return Err(FrameError::TooShort(len));
        }
        if let Some(&kind) = bytes.get(LEN_BYTES) {
            if !matches!(kind, KIND_TASK | KIND_RESULT | KIND_FAILED) {
                return Err(FrameError::UnknownKind(kind));
            }
            if kind == KIND_TASK && (len as usize) < HEAD_BYTES + DEADLINE_BYTES {
                return Err(FrameError::NoDeadline(len));
            }
        }
        let Some(head) = bytes.get(LEN_BYTES..LEN_BYTES + HEAD_BYTES) else {
            return Ok(None);
        };
        let kind = head[0];
        let mut id_bytes = [0u8; 8];
        id_bytes.copy_from_slice(&head[1..9]);
        let id = u64::from_be_bytes(id_bytes);
        let body_len = len as usize - HEAD_BYTES;
        if body_len > self.max_body {
            // Skip the body wherever it is: here or in later input.
            let start = LEN_BYTES + HEAD_BYTES;
            let here = (bytes.len() - start).min(body_len);
            let left = (body_len - here) as u64;
            if left > 0 {
                self.state = State::Skip(left);
            }
            let frame = Frame::Oversized {
                kind,
                id,
                body_len: body_len as u64,
            };
            return Ok(Some((start + here, Some(frame))));
        }
        let end = LEN_BYTES + len as usize;
        let Some(body) = bytes.get(LEN_BYTES + HEAD_BYTES..end) else {
            return Ok(None);
        };
        let frame = match kind {
            KIND_TASK => {
                let (deadline, payload) = body.split_at(DEADLINE_BYTES);
                Frame::Task {
                    id,
                    deadline_ms: u32::from_be_bytes([
                        deadline[0],
                        deadline[1],
                        deadline[2],
                        deadline[3],
                    ]),
                    payload: payload.to_vec(),
                }
            }
            KIND_RESULT => Frame::Result {
                id,
                output: body.to_vec(),
            },
            _ => Frame::Failed {
                id,
                message: body.to_vec(),
            },
        };
        Ok(Some((end, Some(frame))))
    }
}

#[cfg(test)]
#[path = "frame_tests.rs"]
mod tests;
