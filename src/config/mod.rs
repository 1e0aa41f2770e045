//! The agent's configuration: command-line flags, `RINGWORKER_*` environment
//! variables and a TOML file, merged once and validated once.
//!
//! Precedence, highest first: flags, environment, file, defaults. Unknown keys
//! in the file are an error that names each of them and its line. The token is read
//! from its file here and is never printed (`Debug` and
//! [`Config::effective_toml`] redact it).
//!
//! Every key is declared once, as a field of [`Settings`]: that one struct
//! of optional values derives `clap::Args` (the flags of `run` and
//! `check-config`, with their variables) and `serde::Deserialize` (the
//! file). A struct rather than a macro that writes the lists: the field
//! docs are the `--help` text and the man page, and serde and clap read
//! their own attributes. What is derived from it: [`FILE_KEYS`] (asked of
//! serde, so it is exactly what the file accepts) and the effective
//! configuration, [`Config::effective_toml`] (a `Settings` built from the
//! resolved [`Config`], serialised). [`Config`] holds the resolved, typed
//! values; [`Config::merge`] is where each key gets its default and its
//! check. A value that fails one is a [`ConfigError`] variant of its own
//! (`OutOfRange` with the key, the value and the bounds, ...), so a caller
//! can tell them apart without matching on text.
//!
//! - [`settings`]: the keys ([`Settings`]) and their value types;
//! - [`file`](mod@file): reading the file, naming unknown keys ([`FileError`]);
//! - [`args`]: usage errors of the command line as one line;
//! - [`token`]: reading the token file and deciding it is private enough;
//! - [`handlers`](mod@handlers): the `[handlers.NAME]` tables, the one part
//!   of the file that is not a flag, resolved into [`HandlerSet`];
//! - [`memory`]: the worst-case memory of a configuration ([`MemoryBound`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::transport::{Endpoint, EndpointError};

pub mod args;
pub mod file;
pub mod handlers;
pub mod memory;
pub mod settings;
pub mod token;

pub use args::{parse_args_or_exit, usage_error_line};
pub use file::{load_file, parse_file, FileError, UnknownKey};
pub use handlers::{HandlerDecl, HandlerProblem, HandlerSet, HandlerTable};
pub use memory::MemoryBound;
pub use settings::{ByteSize, LogFormat, RuntimeChoice, Settings, FILE_KEYS, FILE_TABLES};

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: FileError,
    },
    #[error("no manager given: pass --manager ENDPOINT, set RINGWORKER_MANAGER, or put `manager` in the config file")]
    MissingManager,
    #[error("bad manager endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    /// A number outside what its key allows: `min..=max` (`max` is
    /// `u64::MAX` for a key with no upper bound).
    #[error("{}", out_of_range(key, *value, *min, *max))]
    OutOfRange {
        key: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("worker_id {0:?} must be a non-empty name without control characters (leave it unset for the hostname)")]
    WorkerId(String),
    #[error("metrics_addr (--metrics-addr) {0:?} is not ADDRESS:PORT (e.g. 127.0.0.1:9464, [::1]:9464, localhost:9464) or `off`")]
    MetricsAddr(String),
    #[error(
        "reconnect_min ({} ms) must be at least 1 and at most reconnect_max ({} ms)",
        min.as_millis(),
        max.as_millis()
    )]
    ReconnectRange { min: Duration, max: Duration },
    #[error("TLS options (tls_ca, tls_cert, tls_key, tls_server_name) are set but the manager endpoint {manager} is not tls://; use tls://HOST:PORT or remove them")]
    TlsOptionsWithoutTls { manager: Endpoint },
    #[error("log_level {filter:?} is not a log filter (error, warn, info, debug, trace, or directives such as `info,ringworker=debug`): {reason}")]
    LogLevel { filter: String, reason: String },
    #[error("TLS: {0}")]
    Tls(#[from] crate::transport::tls::TlsSetupError),
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is empty")]
    EmptyTokenFile { path: PathBuf },
    #[error("token file {path} is readable by others or by a group other than the agent's (mode {mode:o}); run `chmod 600 {path}` (0440 is accepted when the file's group is the agent's own), deliver it as a systemd credential, or pass --allow-insecure-token-file")]
    InsecureTokenFile { path: PathBuf, mode: u32 },
    /// A `[handlers.NAME]` table that cannot be used.
    #[error("handlers.{name}: {problem}")]
    Handler {
        name: String,
        problem: HandlerProblem,
    },
}

/// The message of [`ConfigError::OutOfRange`].
fn out_of_range(key: &str, value: u64, min: u64, max: u64) -> String {
    match (key, max) {
        (_, u64::MAX) => format!("{key} must be at least {min}"),
        // MAX_MAX_BODY is a whole number of GiB.
        ("max_body", _) => format!(
            "{key} {value} must be between {min} bytes and {} GiB ({max})",
            max >> 30
        ),
        _ => format!("{key} {value} must be between {min} and {max}"),
    }
}

/// Where the HTTP listener goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    Off,
    Listen(std::net::SocketAddr),
}

/// The effective, validated configuration of `ringworker run`.
#[derive(Clone)]
pub struct Config {
    pub manager: Endpoint,
    pub runtime: RuntimeChoice,
    pub sessions: u32,
    pub threads: usize,
    pub loop_balance: crate::runtime::LoopBalance,
    pub max_in_flight: u32,
    pub max_body: u32,
    pub worker_id: String,
    pub token_file: Option<PathBuf>,
    pub token: Option<String>,
    /// The token file was accepted only because `allow_insecure_token_file`
    /// is set (see [`Config::warnings`]).
    pub token_file_insecure: bool,
    pub metrics_addr: MetricsAddr,
    /// Publish the per-session series (`ringworker_session_*`,
    /// `ringworker_tasks_in_flight`); off for agents with many sessions
    /// whose scrape would be too large. Process-wide series stay.
    pub session_metrics: bool,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Keepalive and `TCP_USER_TIMEOUT` on manager connections.
    pub tcp: crate::transport::TcpTuning,
    /// The log filter: `RINGWORKER_LOG` if set, else the file's or flag's
    /// `log_level`, else `info`.
    pub log_level: String,
    pub log_format: LogFormat,
    pub drain_timeout: Duration,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    /// The loaded TLS client configuration, for `tls://` managers.
    pub tls: Option<crate::transport::tls::ClientTls>,
    /// The operator's `[handlers.NAME]` tables, resolved (programs found
    /// on `PATH`).
    pub handlers: HandlerSet,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.effective_toml())
    }
}

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// Most sessions one agent keeps: each is a socket and a few hundred bytes of
/// state and metrics; beyond this, run more agents.
pub const MAX_SESSIONS: u32 = 100_000;
/// Most event-loop threads: each has a ring and 16 MiB of receive buffers.
pub const MAX_THREADS: usize = 1024;
pub const DEFAULT_MAX_BODY: u32 = 16 * 1024 * 1024;
/// Largest `max_body` accepted: a frame is held whole, so this is memory
/// per session ([`Config::memory_bound`]).
pub const MAX_MAX_BODY: u32 = 1 << 30;
/// Most tasks a session may hold at once.
pub const MAX_IN_FLIGHT: u32 = 65_536;

impl Config {
    /// Merge flags/env (already merged by clap) over the file over defaults.
    pub fn resolve(args: &Settings) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => Settings::default(),
        };
        Config::merge(args, file)
    }

    /// Merge with an already-parsed file.
    pub fn merge(args: &Settings, file: Settings) -> Result<Config, ConfigError> {
        let manager_text = args
            .manager
            .clone()
            .or(file.manager)
            .ok_or(ConfigError::MissingManager)?;
        let manager: Endpoint = manager_text.parse()?;
        let sessions = args.sessions.or(file.sessions).unwrap_or(1);
        if !(1..=MAX_SESSIONS).contains(&sessions) {
            return Err(ConfigError::OutOfRange {
                key: "sessions",
                value: u64::from(sessions),
                min: 1,
                max: u64::from(MAX_SESSIONS),
            });
        }
        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(ConfigError::OutOfRange {
                key: "threads",
                value: threads as u64,
                min: 1,
                max: MAX_THREADS as u64,
            });
        }
        let max_in_flight = args.max_in_flight.or(file.max_in_flight).unwrap_or(64);
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(ConfigError::OutOfRange {
                key: "max_in_flight",
                value: u64::from(max_in_flight),
                min: 1,
                max: u64::from(MAX_IN_FLIGHT),
            });
        }
        let max_body = args
            .max_body
            .or(file.max_body)
            .map_or(DEFAULT_MAX_BODY as u64, |b| b.0);
        let max_body = u32::try_from(max_body)
            .ok()
            .filter(|&b| (128..=MAX_MAX_BODY).contains(&b))
            .ok_or(ConfigError::OutOfRange {
                key: "max_body",
                value: max_body,
                min: 128,
                max: u64::from(MAX_MAX_BODY),
            })?;
        let worker_id = args
            .worker_id
            .clone()
            .or(file.worker_id)
            .unwrap_or_else(hostname);
        if worker_id.trim().is_empty() || worker_id.chars().any(char::is_control) {
            return Err(ConfigError::WorkerId(worker_id));
        }
        let token_file = args.token_file.clone().or(file.token_file);
        let allow_insecure = args
            .allow_insecure_token_file
            .or(file.allow_insecure_token_file)
            .unwrap_or(false);
        let (token, token_file_insecure) = match &token_file {
            Some(path) => {
                let (token, insecure) = token::read_token(path, allow_insecure)?;
                (Some(token), insecure)
            }
            None => (None, false),
        };
        let metrics_text = args
            .metrics_addr
            .clone()
            .or(file.metrics_addr)
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_owned());
        let metrics_addr = if metrics_text == "off" {
            MetricsAddr::Off
        } else {
            // An address, or a host name that resolves (`localhost:9464`).
            let resolved = metrics_text.parse().ok().or_else(|| {
                // IPv4 first: `localhost` may list ::1 first on a host
                // whose IPv6 is disabled.
                std::net::ToSocketAddrs::to_socket_addrs(metrics_text.as_str())
                    .ok()
                    .and_then(|addrs| addrs.min_by_key(std::net::SocketAddr::is_ipv6))
            });
            MetricsAddr::Listen(resolved.ok_or(ConfigError::MetricsAddr(metrics_text))?)
        };
        let reconnect_min =
            Duration::from_millis(args.reconnect_min.or(file.reconnect_min).unwrap_or(100));
        let reconnect_max =
            Duration::from_millis(args.reconnect_max.or(file.reconnect_max).unwrap_or(30_000));
        if reconnect_min.is_zero() || reconnect_min > reconnect_max {
            return Err(ConfigError::ReconnectRange {
                min: reconnect_min,
                max: reconnect_max,
            });
        }
        let tls_options = crate::transport::tls::TlsOptions {
            ca: args.tls_ca.clone().or(file.tls_ca),
            cert: args.tls_cert.clone().or(file.tls_cert),
            key: args.tls_key.clone().or(file.tls_key),
            server_name: args.tls_server_name.clone().or(file.tls_server_name),
        };
        let tls = match &manager {
            Endpoint::Tls { .. } => Some(crate::transport::tls::ClientTls::new(
                &manager,
                &tls_options,
            )?),
            _ if tls_options.is_set() => return Err(ConfigError::TlsOptionsWithoutTls { manager }),
            _ => None,
        };
        let seconds = |value: u64| (value > 0).then(|| Duration::from_secs(value));
        let tcp = crate::transport::TcpTuning {
            keepalive: seconds(args.tcp_keepalive.or(file.tcp_keepalive).unwrap_or(30)),
            user_timeout: seconds(
                args.tcp_user_timeout
                    .or(file.tcp_user_timeout)
                    .unwrap_or(300),
            ),
        };
        let log_level = std::env::var(crate::logging::LOG_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .or_else(|| args.log_level.clone())
            .or(file.log_level)
            .unwrap_or_else(|| crate::logging::DEFAULT_FILTER.to_owned());
        // Declared handlers come from the file only.
        let handlers = HandlerSet::resolve(&file.handlers, max_body)?;
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(ConfigError::LogLevel {
                filter: log_level,
                reason: err.to_string(),
            });
        }
        Ok(Config {
            manager,
            runtime: args.runtime.or(file.runtime).unwrap_or(RuntimeChoice::Auto),
            sessions,
            threads,
            loop_balance: args.loop_balance.or(file.loop_balance).unwrap_or_default(),
            max_in_flight,
            max_body,
            worker_id,
            token_file,
            token,
            token_file_insecure,
            metrics_addr,
            session_metrics: args
                .session_metrics
                .or(file.session_metrics)
                .unwrap_or(true),
            reconnect_min,
            reconnect_max,
            tcp,
            log_level,
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            drain_timeout: Duration::from_secs(
                args.drain_timeout.or(file.drain_timeout).unwrap_or(30),
            ),
            tls_ca: tls_options.ca,
            tls_cert: tls_options.cert,
            tls_key: tls_options.key,
            tls_server_name: tls_options.server_name,
            tls,
            handlers,
        })
    }

    /// What an operator should hear about once logging is set up: settings
    /// that work but weaken something (one line each).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if let (true, Some(path)) = (self.token_file_insecure, &self.token_file) {
            warnings.push(format!(
                "token file {} is readable by others or by a group other than the agent's; \
                 using it because allow_insecure_token_file is set",
                path.display()
            ));
        }
        let bound = self.memory_bound();
        if let Some(memory) = memory::memory_total() {
            if bound.total > memory {
                warnings.push(format!(
                    "the limits allow {} sessions x {bound}, more than this machine's {} of \
                     memory: lower max_body or sessions",
                    self.sessions,
                    crate::format::format_bytes(memory)
                ));
            }
        }
        if let (Some(_), Endpoint::Tcp { host, .. }) = (&self.token, &self.manager) {
            if !token::is_loopback_host(host) {
                warnings.push(format!(
                    "the token goes to {} in clear text: tcp:// is not encrypted; use tls:// \
                     for a manager that is not on this host",
                    self.manager
                ));
            }
        }
        warnings
    }

    /// The configuration as a TOML config file that `check-config` and `run`
    /// accept again; the token appears only as a `<redacted>` comment.
    pub fn effective_toml(&self) -> String {
        let mut out = String::new();
        for (key, value) in Settings::from(self).file_entries() {
            if let Some(value) = value {
                out.push_str(&format!("{key} = {value}\n"));
            }
            // The token is not a key of the file (it comes from token_file): a
            // comment, so that this output is itself a valid config file.
            if key == "token_file" {
                out.push_str(match self.token {
                    Some(_) => "# token = \"<redacted>\" (read from token_file)\n",
                    None => "# token = none (no token_file)\n",
                });
            }
        }
        out.push_str(&format!(
            "# memory bound: {} sessions x {}\n",
            self.sessions,
            self.memory_bound()
        ));
        out
    }
}

/// This machine's host name, or `ringworker` if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "ringworker".to_owned())
}

#[cfg(test)]
mod tests;
