//! `ringworker-loadgen` as a library: the workload model, the handlers it
//! can drive and check, the epoll engine that drives agents, progress on
//! stderr, the report and its output files, time values on the command line,
//! and throwaway TLS certificates. The binary wires them to a command line;
//! tests use them directly.

pub mod duration;
pub mod engine;
pub mod handlers;
pub mod output;
pub mod pki;
pub mod progress;
pub mod report;
pub mod workload;
