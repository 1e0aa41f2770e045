//! Manager bytes, clock steps, jobs answered and a stop into a `Connection`
//! driven as the runtimes drive it (a real `WorkerSession`, the built-in
//! handlers and a declared one, a fake clock), read as the blocking runtime
//! reads and as the io_uring runtime does: the same connections either way.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringworker::fuzzing::session(data));
