//! The [`decoder`] target: raw bytes into the incremental frame decoder,
//! delivered in input-sized chunks. It owns nothing but that one function and
//! must never build frames itself: every byte it decodes comes from the
//! fuzzer.

use crate::protocol::frame::{FrameBuffer, HEADER_LEN};

/// Raw bytes into the incremental decoder, split at points taken from the
/// input itself.
pub fn decoder(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else {
        return;
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
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(consumed <= fed, "consumed {consumed} of {fed} bytes");
        assert_eq!(buffer.buffered(), fed - consumed);
    }
}
