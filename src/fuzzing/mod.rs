//! Fuzz targets as plain functions, so that the cargo-fuzz harnesses in
//! `fuzz/` and the stable test suite (`tests/fuzz_corpus.rs`, over the
//! committed corpus plus bounded random runs) run exactly the same code.
//!
//! Each target asserts invariants rather than just "does not panic":
//! - [`decoder()`]: the decoder never consumes more than it was given and
//!   never returns a body over `max_body`.
//! - [`machine()`]: the worker's state machine never holds more than
//!   `max_in_flight` tasks, never queues unbounded output, and hands out only
//!   ids it holds.
//! - [`session()`]: a [`Connection`] driven as the runtimes drive it (the
//!   same events in, the same actions carried out, on a fake clock), with
//!   the built-in handlers and a declared one whose jobs the program
//!   answers, redialling after each close and stopping at the end: output
//!   always decodes as frames a worker may send, GOODBYE's counts match the
//!   bytes, the same bytes give the same connections whether read as the
//!   blocking runtime reads (whole) or as the io_uring runtime does (in
//!   pieces, large frames received directly, wait-all receives collected),
//!   and the stop ends the connection by the drain's deadline.
//! - [`handshake()`]: HELLO / WELCOME / ERROR with structured, JSON-aware
//!   mutations of the manager's bodies, before and after a valid start,
//!   through a [`Connection`]: only a refused handshake stops the agent.
//! - [`manager()`]: the manager's state machine fed arbitrary worker bytes.
//! - [`tls()`]: a [`Connection`] over TLS against an in-memory rustls
//!   server, with the record stream split, corrupted and cut: the link fails
//!   cleanly ([`Connection::failure`]: it reads nothing more and writes at
//!   most its alert) or the session ends, corrupted plaintext is never
//!   delivered, and after EOF and the timeouts the connection has closed.
//!
//! The targets that drive a [`Connection`] share `driver`, a fake runtime
//! that also checks the lifecycle's rules on every step: `poll` comes back
//! to [`Action::Wait`](crate::connection::Action::Wait) within a bounded
//! number of actions, at most one send is outstanding, a close is followed
//! by `on_closed` and leaves no session, a stopping connection waits for
//! nothing past the drain's deadline.
//!
//! Layout: each target lives in the child module of its name (`decoder`,
//! `machine`, `session`, `handshake`, `manager`, `tls`) and is re-exported
//! here, so callers name `ringworker::fuzzing::<target>`; `json` holds the
//! JSON-aware body mutations the handshake and manager targets share, and
//! `driver` the fake runtime of the targets that drive a connection. This
//! module owns what every target reads its input with (`Input`) and the
//! helpers several of them share (`chunk_plan`, `decode_all`). Nothing here
//! is used by the agent itself: it must never keep state across calls,
//! touch the network or the file system, or weaken what a target asserts.

#[cfg(doc)]
use crate::connection::Connection;
use crate::protocol::frame::{FrameBuffer, FrameKind};

mod decoder;
mod driver;
mod handshake;
mod json;
mod machine;
mod manager;
mod session;
mod tls;

pub use decoder::decoder;
pub use handshake::handshake;
pub use machine::machine;
pub use manager::manager;
pub use session::session;
pub use tls::{tls, TlsPeers};

/// A fuzz input read from the front; past its end every read gives zeros,
/// so any byte string is a complete program.
#[derive(Debug, Clone, Copy)]
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()]
    }
}

/// Chunk sizes for a split delivery, from the input's split bytes: tiny
/// (1..=7), small (1..=64), large (up to 1 KiB) or everything left. Bit 0
/// says whether a receive straight into the session's buffer
/// ([`Connection::recv_space`], as io_uring reads a large frame's
/// remainder) takes all it asks for at once.
fn chunk_plan(seed: u8, left: usize) -> (usize, bool) {
    let size = match seed >> 6 {
        0 => 1 + usize::from(seed & 0x3f) % 7,
        1 => 1 + usize::from(seed & 0x3f),
        2 => 1 + usize::from(seed & 0x3f) * 16,
        _ => left,
    };
    (size.min(left).max(1), seed & 1 == 1)
}

/// The frames of a byte stream, checked to be whole and well formed.
fn decode_all(stream: &[u8], what: &str) -> Vec<(FrameKind, u8, u64, Vec<u8>)> {
    let mut buffer = FrameBuffer::new(u32::MAX - 12);
    buffer.extend(stream);
    let mut frames = Vec::new();
    loop {
        match buffer.next_frame() {
            Ok(Some(frame)) => frames.push((
                frame.header.kind,
                frame.header.flags,
                frame.header.id,
                frame.body.to_vec(),
            )),
            Ok(None) => break,
            Err(err) => panic!("{what} does not decode: {err}"),
        }
    }
    assert_eq!(buffer.buffered(), 0, "{what} ends in the middle of a frame");
    frames
}
