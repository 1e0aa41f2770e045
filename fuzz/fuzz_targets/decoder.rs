//! Raw bytes, split at input-chosen points, into the frame decoder.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::decoder(data));
