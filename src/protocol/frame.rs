//! Frames on the wire: the 16-byte header, the kinds, the encoder and the
//! incremental decoder.
//!
//! This module owns the byte layout of PROTOCOL.md "Frames" and nothing else:
//! it knows which flag bits each kind defines, but not which side may send a
//! kind (that is the session machine's job). It never touches a socket and
//! never panics on input: every function that reads peer bytes returns a
//! [`FrameError`] instead, and the decoder refuses an oversized `len` from the
//! header alone, before it reserves a single byte for the body.

use std::fmt;

/// Bytes before the body: `len` (4), `kind` (1), `flags` (1), `reserved` (2), `id` (8).
pub const HEADER_LEN: usize = 16;
/// The part of the header that `len` counts: everything after the `len` field.
pub const LEN_COUNTED_HEADER: u32 = 12;
/// Longest handler name a TASK may carry.
pub const MAX_HANDLER_NAME: usize = 64;

/// TASK flag: the manager wants an ACK before the RESULT.
pub const FLAG_ACK_REQUESTED: u8 = 0x01;
/// RESULT flag: the task failed; the body is JSON `{"code","message"}`.
pub const FLAG_FAILED: u8 = 0x01;

/// The frame kinds of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 0x01,
    Welcome = 0x02,
    Task = 0x10,
    Ack = 0x11,
    Result = 0x12,
    Ping = 0x20,
    Pong = 0x21,
    Drain = 0x30,
    Goodbye = 0x31,
    Error = 0x7F,
}

impl FrameKind {
    /// Every kind, in wire order; handy for tests and fuzzers.
    pub const ALL: [FrameKind; 10] = [
        FrameKind::Hello,
        FrameKind::Welcome,
        FrameKind::Task,
        FrameKind::Ack,
        FrameKind::Result,
        FrameKind::Ping,
        FrameKind::Pong,
        FrameKind::Drain,
        FrameKind::Goodbye,
        FrameKind::Error,
    ];

    /// The kind for a wire byte, or `None` for a byte no kind uses.
    pub fn from_u8(byte: u8) -> Option<FrameKind> {
        Some(match byte {
            0x01 => FrameKind::Hello,
            0x02 => FrameKind::Welcome,
            0x10 => FrameKind::Task,
            0x11 => FrameKind::Ack,
            0x12 => FrameKind::Result,
            0x20 => FrameKind::Ping,
            0x21 => FrameKind::Pong,
            0x30 => FrameKind::Drain,
            0x31 => FrameKind::Goodbye,
            0x7F => FrameKind::Error,
            _ => return None,
        })
    }

    /// The flag bits this kind defines; any other bit set is `bad_frame`.
    pub fn defined_flags(self) -> u8 {
        match self {
            FrameKind::Task => FLAG_ACK_REQUESTED,
            FrameKind::Result => FLAG_FAILED,
            _ => 0,
        }
    }

    /// The upper-case name PROTOCOL.md uses.
    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Hello => "HELLO",
            FrameKind::Welcome => "WELCOME",
            FrameKind::Task => "TASK",
            FrameKind::Ack => "ACK",
            FrameKind::Result => "RESULT",
            FrameKind::Ping => "PING",
            FrameKind::Pong => "PONG",
            FrameKind::Drain => "DRAIN",
            FrameKind::Goodbye => "GOODBYE",
            FrameKind::Error => "ERROR",
        }
    }
}

impl fmt::Display for FrameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub flags: u8,
    pub id: u64,
    /// Body length in bytes (`len` - 12).
    pub body_len: u32,
}

impl FrameHeader {
    /// Bytes the whole frame occupies on the wire, header included.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize
    }
}

/// Why a header or a frame was refused. Each maps to the ERROR code that
/// PROTOCOL.md names for it ([`FrameError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad_frame: len {len} < 12")]
    LenTooSmall { len: u32 },
    #[error("bad_frame: unknown kind 0x{kind:02x}")]
    UnknownKind { kind: u8 },
    #[error("bad_frame: reserved field is 0x{reserved:04x}, must be 0")]
    ReservedNonZero { reserved: u16 },
    #[error("bad_frame: flags 0x{flags:02x} undefined for {kind}")]
    UndefinedFlags { kind: FrameKind, flags: u8 },
    #[error("frame_too_large: len {len} > max_body {max_body}")]
    TooLarge { len: u32, max_body: u32 },
}

impl FrameError {
    /// The ERROR code PROTOCOL.md assigns to this violation.
    pub fn code(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "frame_too_large",
            _ => "bad_frame",
        }
    }
}

/// Parse and validate the 16 header bytes.
///
/// `max_body` is the receiver's announced limit; a larger body is refused
/// here, from the header alone.
#[inline]
pub fn parse_header(bytes: &[u8; HEADER_LEN], max_body: u32) -> Result<FrameHeader, FrameError> {
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if len < LEN_COUNTED_HEADER {
        return Err(FrameError::LenTooSmall { len });
    }
    let kind = FrameKind::from_u8(bytes[4]).ok_or(FrameError::UnknownKind { kind: bytes[4] })?;
    let flags = bytes[5];
    let reserved = u16::from_be_bytes([bytes[6], bytes[7]]);
    if reserved != 0 {
        return Err(FrameError::ReservedNonZero { reserved });
    }
    if flags & !kind.defined_flags() != 0 {
        return Err(FrameError::UndefinedFlags { kind, flags });
    }
    let body_len = len - LEN_COUNTED_HEADER;
    if body_len > max_body {
        return Err(FrameError::TooLarge { len, max_body });
    }
    let id = u64::from_be_bytes([
        bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15],
    ]);
    Ok(FrameHeader {
        kind,
        flags,
        id,
        body_len,
    })
}

/// What [`decode`] found at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// Not a whole frame yet: at least `needed` more bytes must arrive. This
    /// is a normal state, not an error.
    Incomplete { needed: usize },
    /// A whole frame of `header.frame_len()` bytes starts at offset 0.
    Frame(FrameHeader),
}

/// Look at the front of `buf` and say whether a whole, valid frame is there.
///
/// Never panics and never allocates; the header is validated (and an
/// oversized body refused) as soon as its 16 bytes are present, whether or
/// not the body has arrived.
#[inline(always)]
pub fn decode(buf: &[u8], max_body: u32) -> Result<Decoded, FrameError> {
    let Some(header_bytes) = buf.first_chunk::<HEADER_LEN>() else {
        check_partial_header(buf, max_body)?;
        return Ok(Decoded::Incomplete {
            needed: HEADER_LEN - buf.len(),
        });
    };
    let header = parse_header(header_bytes, max_body)?;
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        Ok(Decoded::Incomplete {
            needed: frame_len - buf.len(),
        })
    } else {
        Ok(Decoded::Frame(header))
    }
}

/// Refuse a header from its first bytes, before all 16 are in, with the
/// error [`parse_header`] would give once they were: every check but the id
/// needs only the first 8 bytes, and `len < 12` only the first 4. A peer that
/// sends a broken prefix and stalls is answered at once.
#[cold]
fn check_partial_header(buf: &[u8], max_body: u32) -> Result<(), FrameError> {
    if buf.len() >= 8 {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&buf[..8]);
        return parse_header(&header, max_body).map(|_| ());
    }
    if let Some(len) = buf.first_chunk::<4>().map(|b| u32::from_be_bytes(*b)) {
        if len < LEN_COUNTED_HEADER {
            return Err(FrameError::LenTooSmall { len });
        }
    }
    if let Some(&kind) = buf.get(4) {
        FrameKind::from_u8(kind).ok_or(FrameError::UnknownKind { kind })?;
    }
    Ok(())
}

/// Append the 16-byte header of a frame whose body is `body_len` bytes.
///
/// The caller appends exactly `body_len` body bytes next.
pub fn encode_header(out: &mut Vec<u8>, kind: FrameKind, flags: u8, id: u64, body_len: usize) {
    debug_assert_eq!(
        flags & !kind.defined_flags(),
        0,
        "undefined flag for {kind}"
    );
    let len = u32::try_from(body_len)
        .ok()
        .and_then(|body| body.checked_add(LEN_COUNTED_HEADER))
        .expect("frame body over 4 GiB cannot be encoded; callers bound bodies by max_body");
    // One 16-byte store instead of five small appends (this runs per frame).
    out.reserve(HEADER_LEN + body_len);
    out.extend_from_slice(&header_bytes(len, kind, flags, id));
}

/// The 16 bytes of a header whose `len` field (body length + 12) is `len`.
#[inline]
pub fn header_bytes(len: u32, kind: FrameKind, flags: u8, id: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&len.to_be_bytes());
    header[4] = kind as u8;
    header[5] = flags;
    header[8..16].copy_from_slice(&id.to_be_bytes());
    header
}

/// Append a whole frame to a reusable output buffer; returns the bytes written.
pub fn encode_frame(out: &mut Vec<u8>, kind: FrameKind, flags: u8, id: u64, body: &[u8]) -> usize {
    encode_header(out, kind, flags, id, body.len());
    out.extend_from_slice(body);
    HEADER_LEN + body.len()
}

/// Bytes a frame with a `body_len`-byte body occupies on the wire.
pub const fn encoded_len(body_len: usize) -> usize {
    HEADER_LEN + body_len
}

/// A receive buffer plus [`decode`]: the incremental decoder.
///
/// Bytes go in through [`FrameBuffer::extend`] or by reading straight into
/// [`FrameBuffer::spare`] and calling [`FrameBuffer::commit`]; whole frames
/// come out of [`FrameBuffer::next_frame`] as slices into the buffer, so a
/// frame is never copied on the way in. The buffer only grows to hold the
/// frame being received, which the header check bounds by `max_body`.
#[derive(Debug)]
pub struct FrameBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    max_body: u32,
    /// Where the body of the frame last returned by `next_frame` lies.
    last_body: std::ops::Range<usize>,
    /// Size of the frame last returned, for the shrink decision.
    last_frame_len: usize,
}

/// One decoded frame, borrowed from the [`FrameBuffer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    pub header: FrameHeader,
    pub body: &'a [u8],
}

impl FrameBuffer {
    /// An empty decoder that refuses bodies over `max_body`. Nothing is
    /// allocated until bytes arrive.
    pub fn new(max_body: u32) -> Self {
        FrameBuffer {
            data: Vec::new(),
            start: 0,
            end: 0,
            max_body,
            last_body: 0..0,
            last_frame_len: 0,
        }
    }

    pub fn max_body(&self) -> u32 {
        self.max_body
    }

    /// Bytes received and not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The unconsumed bytes.
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Bytes of storage held (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.data.capacity()
    }

    /// How many more bytes complete the frame under way: 0 when the buffer
    /// is empty, holds a whole frame at its front, or holds a header that
    /// will be refused.
    pub fn needed(&self) -> usize {
        if self.start == self.end {
            return 0;
        }
        match decode(self.pending(), self.max_body) {
            Ok(Decoded::Incomplete { needed }) => needed,
            _ => 0,
        }
    }

    /// Copy `bytes` in. Grows without zero-filling, and reserves a frame
    /// whose header has been validated in one step rather than by doubling.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.last_body = 0..0;
        self.prepare(bytes.len());
        if self.data.len() - self.end >= bytes.len() {
            self.data[self.end..self.end + bytes.len()].copy_from_slice(bytes);
        } else {
            self.data.truncate(self.end);
            self.data.extend_from_slice(bytes);
        }
        self.end += bytes.len();
        self.reserve_frame();
    }

    /// Once a frame's header is in (and valid), reserve the rest of it.
    fn reserve_frame(&mut self) {
        if let Ok(Decoded::Incomplete { needed }) =
            decode(&self.data[self.start..self.end], self.max_body)
        {
            if self.end - self.start >= HEADER_LEN && self.end + needed > self.data.capacity() {
                if self.start > 0 {
                    self.data.copy_within(self.start..self.end, 0);
                    self.end -= self.start;
                    self.start = 0;
                    self.data.truncate(self.end);
                }
                self.data
                    .reserve((self.end + needed).saturating_sub(self.data.len()));
            }
        }
    }

    /// Writable space of at least `min` bytes after the buffered data, to read
    /// into directly; follow with [`FrameBuffer::commit`].
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.last_body = 0..0;
        self.prepare(min);
        if self.data.len() - self.end < min {
            self.data.resize(self.end + min, 0);
        }
        &mut self.data[self.end..]
    }

    /// Make room for `incoming` more bytes: drop consumed bytes from the
    /// front, and give back an oversized buffer once it is empty and the last
    /// frame was small (so a stream of large frames keeps its buffer). The
    /// rest of a frame is reserved once its header is in ([`Self::reserve_frame`]).
    fn prepare(&mut self, incoming: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.capacity() > SHRINK_ABOVE
                && self.last_frame_len <= SHRINK_ABOVE
                && incoming <= SHRINK_ABOVE
            {
                self.data = Vec::new();
            }
        }
        if self.start > 0 && self.data.capacity() - self.end < incoming {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Mark `n` bytes of the slice returned by [`FrameBuffer::spare`] as filled.
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.data.len() - self.end,
            "commit past the spare space"
        );
        self.end += n;
        self.reserve_frame();
    }

    /// How many bytes the next read should ask for: enough to complete the
    /// frame under way, at least `chunk`. Bounded by `max_body` + header once
    /// the header has been validated.
    pub fn read_hint(&self, chunk: usize) -> usize {
        match decode(self.pending(), self.max_body) {
            Ok(Decoded::Incomplete { needed }) => needed.max(chunk),
            _ => chunk,
        }
    }

    /// The body of the frame most recently returned by
    /// [`FrameBuffer::next_frame`], until more bytes are written in.
    pub fn last_body(&self) -> &[u8] {
        &self.data[self.last_body.clone()]
    }

    /// The next whole frame, if one is buffered. An `Err` is a protocol
    /// violation; the buffer is left as it was, and the session should end.
    pub fn next_frame(&mut self) -> Result<Option<FrameRef<'_>>, FrameError> {
        match decode(&self.data[self.start..self.end], self.max_body)? {
            Decoded::Incomplete { .. } => Ok(None),
            Decoded::Frame(header) => {
                let body_start = self.start + HEADER_LEN;
                let body_end = body_start + header.body_len as usize;
                self.start = body_end;
                self.last_body = body_start..body_end;
                self.last_frame_len = header.frame_len();
                Ok(Some(FrameRef {
                    header,
                    body: &self.data[body_start..body_end],
                }))
            }
        }
    }
}

/// Where the body of a frame taken by [`FrameBuffer::next_from`] lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'i> {
    /// In the caller's input, where it was received.
    Input(&'i [u8]),
    /// In the buffer: [`FrameBuffer::last_body`], until more bytes are written in.
    Buffered,
}

/// One frame taken by [`FrameBuffer::next_from`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken<'i> {
    pub header: FrameHeader,
    pub body: Body<'i>,
}

impl FrameBuffer {
    /// The next whole frame of the stream made of what this buffer holds
    /// followed by `input`, the one way frames are taken from bytes handed
    /// over by a reader:
    ///
    /// - a frame the buffer holds (or holds the start of, completed here from
    ///   the front of `input`, copying only the bytes it still needs) comes
    ///   first, its body [`Body::Buffered`];
    /// - otherwise a whole frame at the front of `input` is cut from it and
    ///   decoded where it lies, [`Body::Input`], nothing copied;
    /// - otherwise `input` holds the start of a frame, or nothing: it is
    ///   kept here, `input` is left empty and `Ok(None)` returned.
    ///
    /// An `Err` is a protocol violation: the session should end.
    #[inline]
    pub fn next_from<'i>(&mut self, input: &mut &'i [u8]) -> Result<Option<Taken<'i>>, FrameError> {
        if self.start != self.end {
            return self.next_buffered(input);
        }
        match decode(input, self.max_body)? {
            Decoded::Frame(header) => {
                let (frame, rest) = input.split_at(header.frame_len());
                *input = rest;
                let body = frame.get(HEADER_LEN..).unwrap_or_default();
                Ok(Some(Taken {
                    header,
                    body: Body::Input(body),
                }))
            }
            Decoded::Incomplete { .. } => {
                self.keep(input);
                Ok(None)
            }
        }
    }

    /// [`FrameBuffer::next_from`] while the buffer holds bytes.
    #[inline(never)]
    fn next_buffered<'i>(&mut self, input: &mut &'i [u8]) -> Result<Option<Taken<'i>>, FrameError> {
        // At most twice: the rest of the header, then the rest of the body.
        while let Decoded::Incomplete { needed } = decode(self.pending(), self.max_body)? {
            if input.len() < needed {
                self.keep(input);
                // A header refused from its first bytes is refused now.
                decode(self.pending(), self.max_body)?;
                return Ok(None);
            }
            let (completing, rest) = input.split_at(needed);
            self.extend(completing);
            *input = rest;
        }
        Ok(self.next_frame()?.map(|frame| Taken {
            header: frame.header,
            body: Body::Buffered,
        }))
    }

    /// Keep all of `input` after what the buffer holds (bytes the reader
    /// cannot take frames from now); `input` is left empty.
    pub fn keep(&mut self, input: &mut &[u8]) {
        if !input.is_empty() {
            self.extend(input);
            *input = &[];
        }
    }
}

/// A receive buffer that held a large frame and is now empty gives its
/// memory back once it is larger than this.
/// A buffer grown above this by a large frame or large output is given back
/// once what goes through it is small again (the frame buffer here, the
/// uring runtime's send buffers).
pub const SHRINK_ABOVE: usize = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header_bytes(len: u32, kind: u8, flags: u8, reserved: u16, id: u64) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&len.to_be_bytes());
        h[4] = kind;
        h[5] = flags;
        h[6..8].copy_from_slice(&reserved.to_be_bytes());
        h[8..16].copy_from_slice(&id.to_be_bytes());
        h
    }

    #[test]
    fn header_layout_is_big_endian_and_len_counts_twelve_header_bytes() {
        let mut out = Vec::new();
        let written = encode_frame(
            &mut out,
            FrameKind::Task,
            FLAG_ACK_REQUESTED,
            0x0102,
            b"abc",
        );
        assert_eq!(written, 19);
        assert_eq!(
            out,
            [0, 0, 0, 15, 0x10, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, b'a', b'b', b'c']
        );
    }

    #[test]
    fn decoder_refuses_len_below_twelve() {
        for len in 0..12 {
            let h = header_bytes(len, 0x20, 0, 0, 0);
            assert_eq!(parse_header(&h, 1024), Err(FrameError::LenTooSmall { len }));
            assert_eq!(FrameError::LenTooSmall { len }.code(), "bad_frame");
        }
    }

    #[test]
    fn a_broken_header_is_refused_from_its_first_bytes() {
        // Each violation is reported as soon as the bytes that show it are in,
        // with the error the whole header gets.
        let cases: [([u8; 16], usize); 5] = [
            (header_bytes(11, 0x20, 0, 0, 0), 4),
            (header_bytes(12, 0x7e, 0, 0, 0), 5),
            (header_bytes(12, 0x20, 0, 0x0001, 0), 8),
            (header_bytes(12, 0x20, 0x80, 0, 0), 8),
            (header_bytes(12 + 2048, 0x10, 0, 0, 0), 8),
        ];
        for (header, from) in cases {
            let whole = parse_header(&header, 1024).unwrap_err();
            for n in 0..from {
                assert_eq!(
                    decode(&header[..n], 1024),
                    Ok(Decoded::Incomplete { needed: 16 - n }),
                    "{n} bytes of {header:?}"
                );
            }
            for n in from..=16 {
                assert_eq!(decode(&header[..n], 1024), Err(whole.clone()), "{n} bytes");
            }
        }
    }

    #[test]
    fn next_from_refuses_a_broken_header_completed_across_reads() {
        let header = header_bytes(12, 0x7e, 0, 0, 0);
        let mut buffer = FrameBuffer::new(1024);
        let mut input = &header[..3];
        assert_eq!(buffer.next_from(&mut input), Ok(None));
        assert_eq!(buffer.buffered(), 3);
        let mut input = &header[3..6];
        assert_eq!(
            buffer.next_from(&mut input),
            Err(FrameError::UnknownKind { kind: 0x7e })
        );
    }

    #[test]
    fn decoder_refuses_unknown_kind() {
        for kind in 0..=255u8 {
            let h = header_bytes(12, kind, 0, 0, 0);
            let result = parse_header(&h, 1024);
            match FrameKind::from_u8(kind) {
                Some(k) => assert_eq!(result.map(|h| h.kind), Ok(k)),
                None => assert_eq!(result, Err(FrameError::UnknownKind { kind })),
            }
        }
    }

    #[test]
    fn decoder_refuses_reserved_bits() {
        let h = header_bytes(12, 0x20, 0, 0x0100, 0);
        let err = parse_header(&h, 1024).unwrap_err();
        assert_eq!(err, FrameError::ReservedNonZero { reserved: 0x0100 });
        assert_eq!(err.code(), "bad_frame");
    }

    #[test]
    fn decoder_refuses_undefined_flags_per_kind() {
        for kind in FrameKind::ALL {
            for flags in 0..=255u8 {
                let result = parse_header(&header_bytes(12, kind as u8, flags, 0, 0), 1024);
                if flags & !kind.defined_flags() == 0 {
                    assert!(result.is_ok(), "{kind} flags {flags:#x}");
                } else {
                    assert_eq!(result, Err(FrameError::UndefinedFlags { kind, flags }));
                }
            }
        }
    }

    #[test]
    fn decoder_refuses_len_over_max_body_from_the_header_alone() {
        let mut buffer = FrameBuffer::new(16 * 1024 * 1024);
        buffer.extend(&header_bytes(u32::MAX, 0x10, 0, 0, 7));
        let err = buffer.next_frame().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: u32::MAX,
                max_body: 16 * 1024 * 1024
            }
        );
        assert_eq!(
            err.to_string(),
            "frame_too_large: len 4294967295 > max_body 16777216"
        );
        assert_eq!(err.code(), "frame_too_large");
        // Nothing was reserved for the body.
        assert!(buffer.capacity() < 1024, "capacity {}", buffer.capacity());
    }

    #[test]
    fn body_of_exactly_max_body_is_accepted() {
        let mut buffer = FrameBuffer::new(8);
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Error, 0, 0, &[7u8; 8]);
        buffer.extend(&out);
        let frame = buffer.next_frame().unwrap().unwrap();
        assert_eq!(frame.body, &[7u8; 8]);
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Error, 0, 0, &[7u8; 9]);
        buffer.extend(&out);
        assert_eq!(buffer.next_frame().unwrap_err().code(), "frame_too_large");
    }

    #[test]
    fn read_hint_asks_for_the_rest_of_a_large_frame() {
        let mut buffer = FrameBuffer::new(1 << 20);
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Error, 0, 0, &vec![1u8; 100_000]);
        buffer.extend(&out[..20]);
        assert_eq!(buffer.read_hint(4096), 100_016 - 20);
        assert_eq!(buffer.next_frame().unwrap(), None);
    }

    #[test]
    fn buffer_is_kept_across_large_frames_and_given_back_after_a_small_one() {
        let mut buffer = FrameBuffer::new(1 << 20);
        let mut big = Vec::new();
        encode_frame(&mut big, FrameKind::Error, 0, 0, &vec![1u8; 600_000]);
        // The whole frame is reserved once its header is known.
        buffer.extend(&big[..16]);
        assert!(buffer.capacity() >= 600_016);
        buffer.extend(&big[16..]);
        assert!(buffer.next_frame().unwrap().is_some());
        // Another large frame follows: the buffer is kept, not freed and regrown.
        buffer.extend(&big[..4096]);
        assert!(buffer.capacity() >= 600_016);
        buffer.extend(&big[4096..]);
        assert!(buffer.next_frame().unwrap().is_some());
        let mut small = Vec::new();
        encode_frame(&mut small, FrameKind::Error, 0, 0, b"x");
        buffer.extend(&small);
        assert!(buffer.next_frame().unwrap().is_some());
        let _ = buffer.spare(4096);
        assert!(buffer.capacity() <= 8192, "capacity {}", buffer.capacity());
    }

    fn arb_frame() -> impl Strategy<Value = (FrameKind, u8, u64, Vec<u8>)> {
        (
            proptest::sample::select(FrameKind::ALL.to_vec()),
            any::<u8>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(kind, flags, id, body)| (kind, flags & kind.defined_flags(), id, body))
    }

    proptest! {
        #[test]
        fn every_kind_round_trips((kind, flags, id, body) in arb_frame()) {
            let mut out = vec![0xEE]; // encoding appends; it never clobbers
            let written = encode_frame(&mut out, kind, flags, id, &body);
            prop_assert_eq!(written, encoded_len(body.len()));
            prop_assert_eq!(out.len(), 1 + written);
            let mut buffer = FrameBuffer::new(1024);
            buffer.extend(&out[1..]);
            let frame = buffer.next_frame().unwrap().unwrap();
            prop_assert_eq!(frame.header, FrameHeader { kind, flags, id, body_len: body.len() as u32 });
            prop_assert_eq!(frame.body, &body[..]);
            prop_assert_eq!(buffer.buffered(), 0);
        }

        #[test]
        fn any_split_of_a_stream_decodes_to_the_same_frames(
            frames in proptest::collection::vec(arb_frame(), 1..20),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
        ) {
            let mut stream = Vec::new();
            for (kind, flags, id, body) in &frames {
                encode_frame(&mut stream, *kind, *flags, *id, body);
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut buffer = FrameBuffer::new(1024);
            let mut decoded = Vec::new();
            for pair in points.windows(2) {
                buffer.extend(&stream[pair[0]..pair[1]]);
                while let Some(frame) = buffer.next_frame().unwrap() {
                    decoded.push((frame.header.kind, frame.header.flags, frame.header.id, frame.body.to_vec()));
                }
            }
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(buffer.buffered(), 0);
        }

        #[test]
        fn next_from_takes_the_same_frames_in_place_for_any_split(
            frames in proptest::collection::vec(arb_frame(), 1..12),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let mut stream = Vec::new();
            for (kind, flags, id, body) in &frames {
                encode_frame(&mut stream, *kind, *flags, *id, body);
            }
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(0);
            points.push(stream.len());
            points.sort_unstable();
            let mut buffer = FrameBuffer::new(1024);
            let mut decoded = Vec::new();
            let mut copied = 0;
            for pair in points.windows(2) {
                let mut input = &stream[pair[0]..pair[1]];
                while let Some(taken) = buffer.next_from(&mut input).unwrap() {
                    let body = match taken.body {
                        Body::Input(body) => body,
                        Body::Buffered => {
                            copied += 1;
                            buffer.last_body()
                        }
                    };
                    let h = taken.header;
                    decoded.push((h.kind, h.flags, h.id, body.to_vec()));
                }
                prop_assert!(input.is_empty());
            }
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(buffer.buffered(), 0);
            // Only a frame cut by a split is read from the buffer.
            prop_assert!(copied <= points.len() - 2);
        }

        #[test]
        fn one_byte_at_a_time_decodes_the_same(frames in proptest::collection::vec(arb_frame(), 1..8)) {
            let mut stream = Vec::new();
            for (kind, flags, id, body) in &frames {
                encode_frame(&mut stream, *kind, *flags, *id, body);
            }
            let mut buffer = FrameBuffer::new(1024);
            let mut decoded = Vec::new();
            for byte in &stream {
                let spare = buffer.spare(1);
                spare[0] = *byte;
                buffer.commit(1);
                while let Some(frame) = buffer.next_frame().unwrap() {
                    decoded.push((frame.header.kind, frame.header.flags, frame.header.id, frame.body.to_vec()));
                }
            }
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn every_prefix_of_a_valid_header_is_incomplete(kind in prop::sample::select(FrameKind::ALL.to_vec()), id in any::<u64>(), body in 0u32..1024) {
            let header = header_bytes(12 + body, kind as u8, 0, 0, id);
            for n in 0..HEADER_LEN {
                prop_assert_eq!(decode(&header[..n], 1024), Ok(Decoded::Incomplete { needed: HEADER_LEN - n }));
            }
        }

        #[test]
        fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512), max_body in any::<u32>()) {
            let mut buffer = FrameBuffer::new(max_body);
            buffer.extend(&bytes);
            let before = buffer.buffered();
            loop {
                match buffer.next_frame() {
                    Ok(Some(frame)) => prop_assert!(frame.body.len() <= max_body as usize),
                    Ok(None) => break,
                    Err(_) => {
                        // An error leaves the rejected bytes in place; a
                        // header is judged from its first 4 bytes on.
                        prop_assert!(buffer.buffered() >= 4);
                        break;
                    }
                }
            }
            prop_assert!(buffer.buffered() <= before);
        }
    }
}
