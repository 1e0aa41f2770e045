//! The fuzz targets of `fuzz/` on the stable toolchain: every input of the
//! committed corpus, then proptest-generated inputs, through the same
//! functions the cargo-fuzz harnesses call (`ringworker::fuzzing`).

use std::path::Path;

use proptest::prelude::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus")).join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
        .map(|entry| std::fs::read(entry.expect("corpus entry").path()).expect("corpus file"))
        .collect();
    inputs.sort();
    assert!(inputs.len() >= 5, "the {target} corpus is committed");
    inputs
}

#[test]
fn decoder_target_passes_over_the_committed_corpus() {
    for input in corpus("decoder") {
        ringworker::fuzzing::decoder(&input);
    }
}

#[test]
fn machine_target_passes_over_the_committed_corpus() {
    for input in corpus("machine") {
        ringworker::fuzzing::machine(&input);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decoder_target_on_generated_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        ringworker::fuzzing::decoder(&data);
    }

    #[test]
    fn machine_target_on_generated_bytes(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        ringworker::fuzzing::machine(&data);
    }

    /// Mostly well-formed traffic: real frames with mutations, as a coverage
    /// guided fuzzer would find them.
    #[test]
    fn machine_target_on_frame_shaped_input(
        ops in proptest::collection::vec((0u8..8, any::<u8>(), 0u8..12, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..40)
    ) {
        let mut data = Vec::new();
        for (op, arg, kind, id, body) in ops {
            if op < 3 {
                let kinds = [0x10u8, 0x10, 0x10, 0x20, 0x21, 0x30, 0x31, 0x7F, 0x02, 0x01, 0x11, 0x12];
                let mut frame = Vec::new();
                let kind = kinds[kind as usize];
                let mut payload = body.clone();
                if kind == 0x10 {
                    payload = [&[4u8][..], b"echo", &body].concat();
                }
                frame.extend_from_slice(&((12 + payload.len()) as u32).to_be_bytes());
                frame.extend_from_slice(&[kind, arg & 1, 0, 0]);
                frame.extend_from_slice(&(id % 16).to_be_bytes());
                frame.extend_from_slice(&payload);
                for chunk in frame.chunks(255) {
                    data.extend_from_slice(&[0, chunk.len() as u8]);
                    data.extend_from_slice(chunk);
                }
            } else {
                data.extend_from_slice(&[op, arg]);
            }
        }
        ringworker::fuzzing::machine(&data);
    }
}
