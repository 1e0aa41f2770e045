//! Manager bytes into a `Link` over a real `WorkerSession` with the built-in
//! handlers and a fake clock, read whole and split at input-chosen points
//! through both read paths of the runtimes: the same output either way.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::session(data));
