//! The [`decoder`] target: raw bytes into the incremental frame decoder,
//! delivered in input-sized chunks. It owns nothing but that one function and
//! must never build frames itself: every byte it decodes comes from the
//! fuzzer.

use crate::protocol::frame::{Body, FrameBuffer, HEADER_LEN};

/// Raw bytes into the incremental decoder, split at points taken from the
/// input itself; the same chunks taken with [`FrameBuffer::next_from`]
/// (decoded in place, leftovers kept) give the same frames.
pub fn decoder(data: &[u8]) {
    let copied = copied(data);
    let in_place = in_place(data);
    assert_eq!(copied, in_place, "next_from and next_frame disagree");
}

/// Frames (header and body) and whether the stream was refused.
type Decoded = (Vec<(crate::protocol::FrameHeader, Vec<u8>)>, bool);

fn in_place(data: &[u8]) -> Decoded {
    let Some((&split, rest)) = data.split_first() else {
        return (Vec::new(), false);
    };
    let step = usize::from(split).max(1);
    let mut buffer = FrameBuffer::new(1024);
    let mut frames = Vec::new();
    for chunk in rest.chunks(step) {
        let mut input = chunk;
        loop {
            match buffer.next_from(&mut input) {
                Ok(Some(taken)) => {
                    let body = match taken.body {
                        Body::Input(body) => body,
                        Body::Buffered => buffer.last_body(),
                    };
                    frames.push((taken.header, body.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        assert!(input.is_empty(), "next_from left input it did not keep");
    }
    (frames, false)
}

fn copied(data: &[u8]) -> Decoded {
    let mut frames = Vec::new();
    let Some((&split, rest)) = data.split_first() else {
        return (frames, false);
    };
    let max_body = 1024;
    let step = usize::from(split).max(1);
    let mut buffer = FrameBuffer::new(max_body);
    let mut fed = 0usize;
    let mut consumed = 0usize;
    for chunk in rest.chunks(step) {
        buffer.extend(chunk);
        fed += chunk.len();
        loop {
            match buffer.next_frame() {
                Ok(Some(frame)) => {
                    assert!(frame.body.len() <= max_body as usize, "body over max_body");
                    assert_eq!(frame.header.body_len as usize, frame.body.len());
                    assert_eq!(
                        frame.header.flags & !frame.header.kind.defined_flags(),
                        0,
                        "undefined flag accepted"
                    );
                    consumed += HEADER_LEN + frame.body.len();
                    frames.push((frame.header, frame.body.to_vec()));
                }
                Ok(None) => break,
                Err(_) => return (frames, true),
            }
        }
        assert!(consumed <= fed, "consumed {consumed} of {fed} bytes");
        assert_eq!(buffer.buffered(), fed - consumed);
    }
    (frames, false)
}
