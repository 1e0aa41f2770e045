//! The handler protocol's codec: examples from the document, and
//! properties over any bytes in any split.

use super::*;
use proptest::prelude::*;

fn decode_all(decoder: &mut FrameDecoder, chunks: &[&[u8]]) -> (Vec<Frame>, Option<FrameError>) {
    let mut frames = Vec::new();
    for chunk in chunks {
        if let Err(err) = decoder.feed(chunk, &mut frames) {
            return (frames, Some(err));
        }
    }
    (frames, None)
}

#[test]
fn the_document_example_encodes_to_its_bytes() {
    let mut out = Vec::new();
    encode_task(7, 5000, b"hi", &mut out);
    assert_eq!(
        out,
        [
            0, 0, 0, 15,   // len: 9 + 4 + 2
            0x01, // TASK
            0, 0, 0, 0, 0, 0, 0, 7, // id
            0, 0, 0x13, 0x88, // deadline_ms 5000
            b'h', b'i',
        ]
    );
    let mut answer = Vec::new();
    encode_answer(KIND_RESULT, 7, b"hi", &mut answer);
    assert_eq!(
        answer,
        [0, 0, 0, 11, 0x02, 0, 0, 0, 0, 0, 0, 0, 7, b'h', b'i']
    );
    let mut failed = Vec::new();
    encode_answer(KIND_FAILED, 7, b"bad input", &mut failed);
    assert_eq!(
        failed,
        [
            0, 0, 0, 0x12, 0x03, 0, 0, 0, 0, 0, 0, 0, 7, 0x62, 0x61, 0x64, 0x20, 0x69, 0x6e, 0x70,
            0x75, 0x74
        ]
    );
    let mut decoder = FrameDecoder::new(16);
    let (frames, err) = decode_all(&mut decoder, &[&out, &answer]);
    assert_eq!(err, None);
    assert_eq!(
        frames,
        [
            Frame::Task {
                id: 7,
                deadline_ms: 5000,
                payload: b"hi".to_vec()
            },
            Frame::Result {
                id: 7,
                output: b"hi".to_vec()
            }
        ]
    );
    assert!(decoder.is_idle());
}

#[test]
fn bad_framing_is_an_error_that_stays() {
    let mut decoder = FrameDecoder::new(16);
    let (_, err) = decode_all(&mut decoder, &[&[0, 0, 0, 8]]);
    assert_eq!(err, Some(FrameError::TooShort(8)));
    let (_, err) = decode_all(&mut decoder, &[&[0, 0, 0, 9, 2, 0, 0, 0, 0, 0, 0, 0, 1]]);
    assert_eq!(err, Some(FrameError::TooShort(8)), "the first error stays");
    let mut decoder = FrameDecoder::new(16);
    let (_, err) = decode_all(&mut decoder, &[&[0, 0], &[0, 9, 0x7f]]);
    assert_eq!(err, Some(FrameError::UnknownKind(0x7f)));
    let mut decoder = FrameDecoder::new(16);
    let (_, err) = decode_all(&mut decoder, &[&[0, 0, 0, 10, 0x01]]);
    assert_eq!(err, Some(FrameError::NoDeadline(10)));
    // A stray line of text on fd 3 is refused at its first bytes.
    let mut decoder = FrameDecoder::new(1 << 20);
    let (_, err) = decode_all(&mut decoder, &[b"hello world\n"]);
    assert!(err.is_some());
}

#[test]
fn an_oversized_frame_is_reported_and_skipped_without_being_held() {
    let mut bytes = Vec::new();
    encode_answer(KIND_RESULT, 1, &[9u8; 100], &mut bytes);
    encode_answer(KIND_FAILED, 2, b"no", &mut bytes);
    for split in [1, 7, 13, 14, 50, bytes.len()] {
        let mut decoder = FrameDecoder::new(10);
        let mut frames = Vec::new();
        for chunk in bytes.chunks(split) {
            decoder.feed(chunk, &mut frames).unwrap();
            assert!(decoder.buffered() <= 4 + 9 + 10);
        }
        assert_eq!(
            frames,
            [
                Frame::Oversized {
                    kind: KIND_RESULT,
                    id: 1,
                    body_len: 100
                },
                Frame::Failed {
                    id: 2,
                    message: b"no".to_vec()
                }
            ],
            "split {split}"
        );
    }
}

fn frame_strategy() -> impl Strategy<Value = Frame> {
    let body = proptest::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (any::<u64>(), any::<u32>(), body.clone()).prop_map(|(id, deadline_ms, payload)| {
            Frame::Task {
                id,
                deadline_ms,
                payload,
            }
        }),
        (any::<u64>(), body.clone()).prop_map(|(id, output)| Frame::Result { id, output }),
        (any::<u64>(), body).prop_map(|(id, message)| Frame::Failed { id, message }),
    ]
}

/// `bytes` cut at the given points (taken modulo its length).
fn split_at_points<'a>(bytes: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = points
        .iter()
        .map(|p| {
            if bytes.is_empty() {
                0
            } else {
                p % (bytes.len() + 1)
            }
        })
        .collect();
    cuts.push(0);
    cuts.push(bytes.len());
    cuts.sort_unstable();
    cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

proptest! {
    #[test]
    fn any_bytes_in_any_split_never_panic_nor_grow(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        points in proptest::collection::vec(any::<usize>(), 0..16),
        max_body in 0usize..64,
    ) {
        let mut decoder = FrameDecoder::new(max_body);
        let mut frames = Vec::new();
        let mut failed = None;
        for chunk in split_at_points(&bytes, &points) {
            let result = decoder.feed(chunk, &mut frames);
            prop_assert!(decoder.buffered() <= 4 + 9 + max_body);
            if let Err(err) = result {
                if let Some(first) = failed {
                    prop_assert_eq!(first, err);
                }
                failed = Some(err);
            }
        }
        // Every decoded frame re-encodes to bytes of the input, in order.
        let mut again = Vec::new();
        for frame in &frames {
            frame.encode(&mut again);
        }
        if frames.iter().all(|f| !matches!(f, Frame::Oversized { .. })) {
            prop_assert!(bytes.starts_with(&again));
        }
    }

    #[test]
    fn what_is_encoded_is_decoded_in_any_split(
        sent in proptest::collection::vec(frame_strategy(), 0..8),
        points in proptest::collection::vec(any::<usize>(), 0..24),
    ) {
        let mut bytes = Vec::new();
        for frame in &sent {
            frame.encode(&mut bytes);
        }
        let mut decoder = FrameDecoder::new(64 + DEADLINE_BYTES);
        let mut frames = Vec::new();
        for chunk in split_at_points(&bytes, &points) {
            decoder.feed(chunk, &mut frames).unwrap();
        }
        prop_assert_eq!(frames, sent);
        prop_assert!(decoder.is_idle());
    }

    #[test]
    fn oversized_frames_are_skipped_in_any_split(
        sent in proptest::collection::vec(frame_strategy(), 0..8),
        points in proptest::collection::vec(any::<usize>(), 0..24),
        max_body in 0usize..40,
    ) {
        let mut bytes = Vec::new();
        for frame in &sent {
            frame.encode(&mut bytes);
        }
        let expected: Vec<Frame> = sent.iter().map(|frame| {
            let body_len = match frame {
                Frame::Task { payload, .. } => payload.len() + DEADLINE_BYTES,
                Frame::Result { output, .. } => output.len(),
                Frame::Failed { message, .. } => message.len(),
                Frame::Oversized { .. } => 0,
            };
            let kind = match frame {
                Frame::Task { .. } => KIND_TASK,
                Frame::Result { .. } => KIND_RESULT,
                _ => KIND_FAILED,
            };
            if body_len > max_body {
                Frame::Oversized { kind, id: frame.id(), body_len: body_len as u64 }
            } else {
                frame.clone()
            }
        }).collect();
        let mut decoder = FrameDecoder::new(max_body);
        let mut frames = Vec::new();
        for chunk in split_at_points(&bytes, &points) {
            decoder.feed(chunk, &mut frames).unwrap();
            prop_assert!(decoder.buffered() <= 4 + 9 + max_body);
        }
        prop_assert_eq!(frames, expected);
    }
}
