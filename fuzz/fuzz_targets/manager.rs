//! Worker bytes (raw, or HELLOs and frames picked field by field) into the
//! manager's state machine, read whole and in input-chosen pieces.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::manager(data));
