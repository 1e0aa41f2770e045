//! Byte-coded event sequences (peer bytes, clock steps, completions, drain,
//! EOF, flushes) into the worker's state machine.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::machine(data));
