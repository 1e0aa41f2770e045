//! HELLO / WELCOME / ERROR with the manager's JSON bodies picked field by
//! field, before and after a valid start.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::handshake(data));
