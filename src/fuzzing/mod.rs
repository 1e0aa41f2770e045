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
//! - [`session()`]: the input path both runtimes use ([`Link::on_input`], in
//!   place, and `recv_space` / `on_received`) with the built-in handlers
//!   running and a fake clock: output always decodes as frames a worker may
//!   send, GOODBYE's counts match the bytes, and the same bytes give the same
//!   output whatever the read boundaries.
//! - [`handshake()`]: HELLO / WELCOME / ERROR with structured, JSON-aware
//!   mutations of the manager's bodies, before and after a valid start.
//! - [`manager()`]: the manager's state machine fed arbitrary worker bytes.
//! - [`tls()`]: a TLS [`Link`] against an in-memory rustls server, with the
//!   record stream split, corrupted and cut: the link fails cleanly
//!   ([`Link::failure`]) or ends the session, and never delivers corrupted
//!   plaintext.
//!
//! Layout: each target lives in the child module of its name (`decoder`,
//! `machine`, `session`, `handshake`, `manager`, `tls`) and is re-exported
//! here, so callers name `ringworker::fuzzing::<target>`; `json` holds the
//! JSON-aware body mutations the handshake and manager targets share. This
//! module owns what every target reads its input with (`Input`) and the
//! helpers several of them share (`chunk_plan`, `decode_all`). Nothing here
//! is used by the agent itself: it must never keep state across calls,
//! touch the network or the file system, or weaken what a target asserts.

#[cfg(doc)]
use crate::connection::Link;
use crate::protocol::frame::{FrameBuffer, FrameKind};

mod decoder;
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
/// chooses the read path: in place ([`Link::on_input`]) or into the
/// session's buffer (`recv_space` / `on_received`, as io_uring reads a large
/// frame's remainder).
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
