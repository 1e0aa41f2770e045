//! ringworker: a Linux worker agent that dials a manager, receives TASK
//! frames, runs named handlers and writes ACK / RESULT frames back, with
//! every byte on the socket counted.
//!
//! The map, top to bottom:
//! - [`protocol`]: the sans-IO core. Frames, HELLO / WELCOME, and the
//!   worker's session state machine; fed bytes and time, it returns frames
//!   to write and tasks to run. No sockets, threads or clocks.
//! - [`handlers`]: the [`handlers::Handler`] trait, the registry and the
//!   built-ins `echo`, `sink`, `crc32c`, `sha256`, `sleep`; handlers that
//!   answer later from threads of their own ([`handlers::LaterHandler`]).
//! - [`exec`]: the operator's own programs as handlers (`[handlers.NAME]`
//!   in the config file), one process per task or a pool of workers, as a
//!   sans-IO service that the uring loops drive on their rings and the
//!   blocking runtime from one thread.
//! - [`session`]: [`session::WorkerSession`], the core plus handlers, timers
//!   and formatted totals; each connection owns one.
//! - [`runtime`]: the [`runtime::RuntimeMode`] API and its engines; bytes are
//!   counted in one `send_raw` / `recv_raw` per engine.
//! - [`connection`]: [`connection::Connection`], one manager connection as
//!   a sans-IO state machine and the one thing both runtimes drive: the
//!   session over its transport ([`connection::Link`], plaintext or TLS
//!   through rustls's sans-IO API) and the lifecycle rules (dial back-off,
//!   the stop drain and its deadline, linger, refusal).
//! - [`transport`]: endpoints (`tcp://`, `tls://`, `unix://`), dialling, and
//!   TLS configuration ([`transport::tls`]).
//! - [`agent`], [`config`]: the `ringworker run` command around a runtime;
//!   [`logging`]: its logs on stderr, text or JSON; [`reload`]: SIGHUP
//!   re-reads the config file and applies what can change live;
//!   [`notify`]: readiness, status and watchdog pings for systemd.
//! - [`stats`], [`format`](mod@format): live counters and their human form;
//!   [`metrics`], [`http`]: Prometheus metrics and the HTTP listener
//!   (`/metrics`, `/healthz`, `/readyz`, `/status`) on a thread of its own.
//! - [`manager`]: the manager side of the protocol, for the loadgen and tests.
//! - [`demo`]: `ringworker demo`, an embedded manager and agent on loopback.
//!
//! This crate does not choose what a handler does beyond the built-ins (the
//! operator declares programs, a library user registers handlers), and does
//! not persist anything: a task is answered on the connection it came on or
//! reported lost by the manager.

#![deny(unsafe_code)]

/// `println!` for reports on stdout, minus its panic when stdout is closed
/// (`ringworker demo | head -1`): what cannot be written is dropped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stdout().lock(), $($arg)*);
    }};
}

/// `eprintln!` for messages on stderr, minus its panic when stderr is closed
/// (`... 2>&1 | head -1`): what cannot be written is dropped.
#[macro_export]
macro_rules! tell {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        let _ = ::std::writeln!(::std::io::stderr().lock(), $($arg)*);
    }};
}

pub mod agent;
pub mod config;
pub mod connection;
pub mod demo;
pub mod exec;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod handlers;
pub mod http;
pub mod log_limit;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod notify;
pub mod protocol;
pub mod reload;
pub mod runtime;
pub mod session;
pub mod stats;
pub mod transport;
