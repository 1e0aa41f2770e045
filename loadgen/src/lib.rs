//! `ringworker-loadgen` as a library: the workload model, the epoll engine
//! that drives agents, the report, and throwaway TLS certificates. The
//! binary wires them to a command line; tests use them directly.

pub mod engine;
pub mod pki;
pub mod report;
pub mod workload;
