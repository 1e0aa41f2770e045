//! The agent's configuration: command-line flags, `RINGWORKER_*` environment
//! variables and a TOML file, merged once and validated once.
//!
//! Precedence, highest first: flags, environment, file, defaults. Unknown keys
//! in the file are an error that names each of them and its line. The token is read
//! from its file here and is never printed (`Debug` and
//! [`Config::effective_toml`] redact it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::transport::{Endpoint, EndpointError};

/// `--runtime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeChoice {
    /// io_uring if the kernel allows it, else blocking (with one log line saying why).
    Auto,
    /// io_uring only; fail if it is unavailable.
    Uring,
    /// std::net sockets and threads.
    Blocking,
}

impl RuntimeChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeChoice::Auto => "auto",
            RuntimeChoice::Uring => "uring",
            RuntimeChoice::Blocking => "blocking",
        }
    }
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A byte count written as `16777216`, `64KiB`, `16 MiB` or `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let value: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?} is not a byte count (examples: 65536, 64KiB, 16MiB)"))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
                ))
            }
        };
        value
            .checked_mul(multiplier)
            .map(ByteSize)
            .ok_or_else(|| format!("{text:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Flags of `ringworker run` (each also settable by a `RINGWORKER_*` variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RunArgs {
    /// Manager to dial: tcp://HOST:PORT, tls://HOST:PORT or unix:///path/to.sock [required here or in the config file]
    #[arg(long, env = "RINGWORKER_MANAGER", value_name = "ENDPOINT")]
    pub manager: Option<String>,
    /// I/O engine [default: auto]
    #[arg(long, env = "RINGWORKER_RUNTIME", value_enum)]
    pub runtime: Option<RuntimeChoice>,
    /// Connections this agent keeps open to the manager [default: 1]
    #[arg(long, env = "RINGWORKER_SESSIONS", value_name = "N")]
    pub sessions: Option<u32>,
    /// uring runtime: event-loop threads; sessions are spread over them [default: number of CPUs]
    #[arg(long, env = "RINGWORKER_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Tasks held per session before it stops reading [default: 64]
    #[arg(long, env = "RINGWORKER_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Largest TASK body accepted; suffixes KiB, MiB allowed [default: 16777216]
    #[arg(long, env = "RINGWORKER_MAX_BODY", value_name = "BYTES")]
    pub max_body: Option<ByteSize>,
    /// The `worker` field of HELLO [default: hostname]
    #[arg(long, env = "RINGWORKER_WORKER_ID", value_name = "ID")]
    pub worker_id: Option<String>,
    /// File holding the secret sent in HELLO; never logged, never in metrics
    #[arg(long, env = "RINGWORKER_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Accept a token file that group or others can read
    #[arg(
        long,
        env = "RINGWORKER_ALLOW_INSECURE_TOKEN_FILE",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_insecure_token_file: Option<bool>,
    /// HTTP listener for /metrics /healthz /readyz /status, or `off` [default: 127.0.0.1:9464]
    #[arg(long, env = "RINGWORKER_METRICS_ADDR", value_name = "ADDR")]
    pub metrics_addr: Option<String>,
    /// Publish the per-session metric series (one set per session); `false` keeps only the process-wide ones [default: true]
    #[arg(
        long,
        env = "RINGWORKER_SESSION_METRICS",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_name = "BOOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub session_metrics: Option<bool>,
    /// Back-off base between dial attempts, milliseconds [default: 100]
    #[arg(long, env = "RINGWORKER_RECONNECT_MIN", value_name = "MS")]
    pub reconnect_min: Option<u64>,
    /// Back-off cap between dial attempts, milliseconds [default: 30000]
    #[arg(long, env = "RINGWORKER_RECONNECT_MAX", value_name = "MS")]
    pub reconnect_max: Option<u64>,
    /// TOML file with the same keys (manager, runtime, sessions, ...); flags and RINGWORKER_* override it
    #[arg(long, env = "RINGWORKER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Idle seconds before TCP keepalive probes start on a tcp:// or tls:// manager connection (probes every third of it, three of them); 0 turns keepalive off [default: 30]
    #[arg(long, env = "RINGWORKER_TCP_KEEPALIVE", value_name = "SECS")]
    pub tcp_keepalive: Option<u64>,
    /// Seconds sent data may stay unacknowledged before the connection is dropped (TCP_USER_TIMEOUT); 0 leaves the kernel's default [default: 60]
    #[arg(long, env = "RINGWORKER_TCP_USER_TIMEOUT", value_name = "SECS")]
    pub tcp_user_timeout: Option<u64>,
    /// Log level filter (error, warn, info, debug, trace, or EnvFilter directives); RINGWORKER_LOG overrides it; SIGHUP applies a changed file value [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log format on stderr [default: text]
    #[arg(long, env = "RINGWORKER_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Longest graceful drain, seconds; tasks still running then are abandoned and the exit status is non-zero [default: 30]
    #[arg(long, env = "RINGWORKER_DRAIN_TIMEOUT", value_name = "SECS")]
    pub drain_timeout: Option<u64>,
    /// tls:// endpoints: trust anchors (PEM) [default: system roots]
    #[arg(long, env = "RINGWORKER_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,
    /// tls:// endpoints: client certificate (PEM) for mutual TLS
    #[arg(long, env = "RINGWORKER_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// tls:// endpoints: client private key (PEM) for mutual TLS
    #[arg(long, env = "RINGWORKER_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// tls:// endpoints: server name to verify and send as SNI [default: the endpoint's host]
    #[arg(long, env = "RINGWORKER_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// The TOML file: the same keys as the flags, in snake_case (kebab-case is
/// accepted too).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub manager: Option<String>,
    pub runtime: Option<RuntimeChoice>,
    pub sessions: Option<u32>,
    pub threads: Option<usize>,
    #[serde(alias = "max-in-flight")]
    pub max_in_flight: Option<u32>,
    #[serde(alias = "max-body")]
    pub max_body: Option<ByteSize>,
    #[serde(alias = "worker-id")]
    pub worker_id: Option<String>,
    #[serde(alias = "token-file")]
    pub token_file: Option<PathBuf>,
    #[serde(alias = "allow-insecure-token-file")]
    pub allow_insecure_token_file: Option<bool>,
    #[serde(alias = "metrics-addr")]
    pub metrics_addr: Option<String>,
    #[serde(alias = "session-metrics")]
    pub session_metrics: Option<bool>,
    #[serde(alias = "reconnect-min")]
    pub reconnect_min: Option<u64>,
    #[serde(alias = "reconnect-max")]
    pub reconnect_max: Option<u64>,
    #[serde(alias = "tcp-keepalive")]
    pub tcp_keepalive: Option<u64>,
    #[serde(alias = "tcp-user-timeout")]
    pub tcp_user_timeout: Option<u64>,
    #[serde(alias = "log-level")]
    pub log_level: Option<String>,
    #[serde(alias = "log-format")]
    pub log_format: Option<LogFormat>,
    #[serde(alias = "drain-timeout")]
    pub drain_timeout: Option<u64>,
    #[serde(alias = "tls-ca")]
    pub tls_ca: Option<PathBuf>,
    #[serde(alias = "tls-cert")]
    pub tls_cert: Option<PathBuf>,
    #[serde(alias = "tls-key")]
    pub tls_key: Option<PathBuf>,
    #[serde(alias = "tls-server-name")]
    pub tls_server_name: Option<String>,
}

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
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no manager given: pass --manager ENDPOINT, set RINGWORKER_MANAGER, or put `manager` in the config file")]
    MissingManager,
    #[error("bad manager endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("{0}")]
    Invalid(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::transport::tls::TlsSetupError),
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is readable by others or by a group other than the agent's (mode {mode:o}); run `chmod 600 {path}` (0440 is accepted when the file's group is the agent's own), deliver it as a systemd credential, or pass --allow-insecure-token-file")]
    InsecureTokenFile { path: PathBuf, mode: u32 },
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
pub const DEFAULT_MAX_BODY: u32 = 16 * 1024 * 1024;
/// Largest `max_body` accepted: a frame is held whole, so this is memory
/// per session ([`Config::memory_bound`]).
pub const MAX_MAX_BODY: u32 = 1 << 30;
/// Most tasks a session may hold at once.
pub const MAX_IN_FLIGHT: u32 = 65_536;

/// The most memory the agent's sessions can be made to hold, from its
/// validated limits (see [`Config::memory_bound`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBound {
    /// One session: its frame buffer (one frame of `max_body` and a read
    /// chunk), and twice its output (the buffer being sent and the one
    /// filling, each up to the 256 KiB pause mark plus one RESULT of up to
    /// `max_body`).
    pub per_session: u64,
    /// Shared by the sessions: the uring runtime's receive buffers (256 ×
    /// 64 KiB per event loop, faulted in as they are used); the blocking
    /// runtime's are counted per session.
    pub shared: u64,
    pub total: u64,
}

impl fmt::Display for MemoryBound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::format::format_bytes;
        write!(
            f,
            "{} per session (3 x max_body + 640 KiB + 16 B per task in flight) + {} of \
             receive buffers = {}",
            format_bytes(self.per_session),
            format_bytes(self.shared),
            format_bytes(self.total)
        )
    }
}

impl Config {
    /// Merge flags/env (already merged by clap) over the file over defaults.
    pub fn resolve(args: &RunArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        Config::merge(args, file)
    }

    /// Merge with an already-parsed file.
    pub fn merge(args: &RunArgs, file: FileConfig) -> Result<Config, ConfigError> {
        let manager_text = args
            .manager
            .clone()
            .or(file.manager)
            .ok_or(ConfigError::MissingManager)?;
        let manager: Endpoint = manager_text.parse()?;
        let sessions = args.sessions.or(file.sessions).unwrap_or(1);
        if !(1..=MAX_SESSIONS).contains(&sessions) {
            return Err(ConfigError::Invalid(format!(
                "sessions {sessions} must be between 1 and {MAX_SESSIONS}"
            )));
        }
        let threads = args
            .threads
            .or(file.threads)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        if threads == 0 {
            return Err(ConfigError::Invalid("threads must be at least 1".into()));
        }
        let max_in_flight = args.max_in_flight.or(file.max_in_flight).unwrap_or(64);
        if !(1..=MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(ConfigError::Invalid(format!(
                "max_in_flight {max_in_flight} must be between 1 and {MAX_IN_FLIGHT}"
            )));
        }
        let max_body = args
            .max_body
            .or(file.max_body)
            .map_or(DEFAULT_MAX_BODY as u64, |b| b.0);
        let max_body = u32::try_from(max_body)
            .ok()
            .filter(|&b| (128..=MAX_MAX_BODY).contains(&b))
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "max_body {max_body} must be between 128 bytes and 1 GiB ({MAX_MAX_BODY})"
                ))
            })?;
        let worker_id = args
            .worker_id
            .clone()
            .or(file.worker_id)
            .unwrap_or_else(hostname);
        if worker_id.trim().is_empty() || worker_id.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(format!(
                "worker_id {worker_id:?} must be a non-empty name without control characters \
                 (leave it unset for the hostname)"
            )));
        }
        let token_file = args.token_file.clone().or(file.token_file);
        let allow_insecure = args
            .allow_insecure_token_file
            .or(file.allow_insecure_token_file)
            .unwrap_or(false);
        let (token, token_file_insecure) = match &token_file {
            Some(path) => {
                let (token, insecure) = read_token(path, allow_insecure)?;
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
            MetricsAddr::Listen(resolved.ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "metrics_addr (--metrics-addr) {metrics_text:?} is not ADDRESS:PORT \
                     (e.g. 127.0.0.1:9464, [::1]:9464, localhost:9464) or `off`"
                ))
            })?)
        };
        let reconnect_min =
            Duration::from_millis(args.reconnect_min.or(file.reconnect_min).unwrap_or(100));
        let reconnect_max =
            Duration::from_millis(args.reconnect_max.or(file.reconnect_max).unwrap_or(30_000));
        if reconnect_min.is_zero() || reconnect_min > reconnect_max {
            return Err(ConfigError::Invalid(format!(
                "reconnect_min ({} ms) must be at least 1 and at most reconnect_max ({} ms)",
                reconnect_min.as_millis(),
                reconnect_max.as_millis()
            )));
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
            _ if tls_options.is_set() => {
                return Err(ConfigError::Invalid(format!(
                    "TLS options (tls_ca, tls_cert, tls_key, tls_server_name) are set but the manager endpoint {manager} is not tls://; \
                     use tls://HOST:PORT or remove them"
                )))
            }
            _ => None,
        };
        let seconds = |value: u64| (value > 0).then(|| Duration::from_secs(value));
        let tcp = crate::transport::TcpTuning {
            keepalive: seconds(args.tcp_keepalive.or(file.tcp_keepalive).unwrap_or(30)),
            user_timeout: seconds(
                args.tcp_user_timeout
                    .or(file.tcp_user_timeout)
                    .unwrap_or(60),
            ),
        };
        let log_level = std::env::var(crate::logging::LOG_ENV)
            .ok()
            .filter(|value| !value.trim().is_empty())
            .or_else(|| args.log_level.clone())
            .or(file.log_level)
            .unwrap_or_else(|| crate::logging::DEFAULT_FILTER.to_owned());
        if let Err(err) = tracing_subscriber::EnvFilter::try_new(&log_level) {
            return Err(ConfigError::Invalid(format!(
                "log_level {log_level:?} is not a log filter (error, warn, info, debug, trace, \
                 or directives such as `info,ringworker=debug`): {err}"
            )));
        }
        Ok(Config {
            manager,
            runtime: args.runtime.or(file.runtime).unwrap_or(RuntimeChoice::Auto),
            sessions,
            threads,
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
        })
    }

    /// The worst-case memory its limits allow: a manager sending the largest
    /// frames to every session at once while reading nothing. Tasks in
    /// flight add no more (built-in handlers answer into the output, whose
    /// growth pauses reading); `max_in_flight` ids cost 16 bytes each.
    pub fn memory_bound(&self) -> MemoryBound {
        const KIB: u64 = 1024;
        let per_session =
            3 * u64::from(self.max_body) + 640 * KIB + 16 * u64::from(self.max_in_flight);
        // The blocking runtime's two read chunks per session are in the 640 KiB.
        let shared = match self.runtime {
            RuntimeChoice::Blocking => 0,
            _ => self.threads as u64 * 256 * 64 * KIB,
        };
        let total = u64::from(self.sessions) * per_session + shared;
        MemoryBound {
            per_session,
            shared,
            total,
        }
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
        if let Some(memory) = memory_total() {
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
            if !is_loopback_host(host) {
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
        let mut line = |key: &str, value: String| out.push_str(&format!("{key} = {value}\n"));
        // A TOML basic string (a Rust `{:?}` would write `\u{301}`).
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        line("manager", quote(&self.manager.to_string()));
        line("runtime", quote(self.runtime.as_str()));
        line("sessions", self.sessions.to_string());
        line("threads", self.threads.to_string());
        line("max_in_flight", self.max_in_flight.to_string());
        line("max_body", self.max_body.to_string());
        line("worker_id", quote(&self.worker_id));
        if let Some(path) = &self.token_file {
            line("token_file", quote(&path.display().to_string()));
        }
        // The token is not a key of the file (it comes from token_file): a
        // comment, so that this output is itself a valid config file.
        line(
            "# token",
            if self.token.is_some() {
                "\"<redacted>\" (read from token_file)".to_owned()
            } else {
                "none (no token_file)".to_owned()
            },
        );
        line(
            "metrics_addr",
            quote(&match &self.metrics_addr {
                MetricsAddr::Off => "off".to_owned(),
                MetricsAddr::Listen(addr) => addr.to_string(),
            }),
        );
        line("session_metrics", self.session_metrics.to_string());
        line("reconnect_min", self.reconnect_min.as_millis().to_string());
        line("reconnect_max", self.reconnect_max.as_millis().to_string());
        let seconds = |value: Option<Duration>| value.map_or(0, |d| d.as_secs()).to_string();
        line("tcp_keepalive", seconds(self.tcp.keepalive));
        line("tcp_user_timeout", seconds(self.tcp.user_timeout));
        line("log_level", quote(&self.log_level));
        line(
            "log_format",
            quote(match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        );
        line("drain_timeout", self.drain_timeout.as_secs().to_string());
        for (key, value) in [
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(path) = value {
                line(key, quote(&path.display().to_string()));
            }
        }
        if let Some(name) = &self.tls_server_name {
            line("tls_server_name", quote(name));
        }
        out.push_str(&format!(
            "# memory bound: {} sessions x {}\n",
            self.sessions,
            self.memory_bound()
        ));
        out
    }
}

/// The machine's memory (`MemTotal` of `/proc/meminfo`), bytes.
fn memory_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1` (brackets allowed).
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parse a binary's command line with clap; on a usage error, print one line
/// on stderr and exit with status 2 (AGENT.md: a fatal error is one line).
///
/// Help and version requests (and a bare command that answers with its
/// help) keep clap's own output and exit status. Any other error becomes
/// `PROGRAM: MESSAGE; TIP; see 'PROGRAM [SUBCOMMAND] --help'`.
pub fn parse_args_or_exit<P: clap::Parser>(program: &str) -> P {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match P::try_parse_from(&args) {
        Ok(parsed) => parsed,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                err.exit();
            }
            // The subcommand the arguments name, for where to find its help.
            let command = P::command();
            let subcommand = args
                .iter()
                .skip(1)
                .filter_map(|arg| arg.to_str())
                .find(|arg| !arg.starts_with('-'))
                .and_then(|name| command.find_subcommand(name))
                .map(|sub| sub.get_name().to_owned());
            let help = match subcommand {
                Some(name) => format!("{program} {name} --help"),
                None => format!("{program} --help"),
            };
            crate::tell!("{}", usage_error_line(program, &err, &help));
            std::process::exit(2);
        }
    }
}

/// A clap usage error as one line: `PROGRAM: MESSAGE; TIP; see 'HELP'`.
/// clap's `error: ` prefix, usage block and "For more information" line go;
/// its tips and continuation lines are folded in.
pub fn usage_error_line(program: &str, err: &clap::Error, help: &str) -> String {
    let rendered = err.render().to_string();
    let mut parts: Vec<String> = Vec::new();
    // After a line ending in ':' ("the following required arguments were not
    // provided:"), the lines up to the next blank one are its list.
    let mut listing = false;
    for line in rendered.lines() {
        let line = line.trim();
        if line.starts_with("Usage:") {
            break;
        }
        if line.is_empty() || line.starts_with("For more information") {
            listing = false;
            continue;
        }
        let line = line
            .strip_prefix("error:")
            .or_else(|| line.strip_prefix("tip:"))
            .map_or(line, str::trim_start);
        // "[possible values: auto, uring, blocking]"
        let line = line
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(line);
        match parts.last_mut() {
            Some(last) if listing => {
                last.push_str(if last.ends_with(':') { " " } else { ", " });
                last.push_str(line);
            }
            _ => {
                listing = line.ends_with(':');
                parts.push(line.to_owned());
            }
        }
    }
    parts.push(format!("see '{help}'"));
    format!("{program}: {}", parts.join("; "))
}

/// Read and parse a TOML config file; unknown keys are named with their line.
pub fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    parse_file(&text).map_err(|message| ConfigError::Parse {
        path: path.to_owned(),
        message,
    })
}

/// The keys of the config file: [`FileConfig`]'s fields and their
/// kebab-case aliases (a unit test keeps this list and the struct in step).
pub const FILE_KEYS: &[&str] = &[
    "manager",
    "runtime",
    "sessions",
    "threads",
    "max_in_flight",
    "max-in-flight",
    "max_body",
    "max-body",
    "worker_id",
    "worker-id",
    "token_file",
    "token-file",
    "allow_insecure_token_file",
    "allow-insecure-token-file",
    "metrics_addr",
    "metrics-addr",
    "session_metrics",
    "session-metrics",
    "reconnect_min",
    "reconnect-min",
    "reconnect_max",
    "reconnect-max",
    "tcp_keepalive",
    "tcp-keepalive",
    "tcp_user_timeout",
    "tcp-user-timeout",
    "log_level",
    "log-level",
    "log_format",
    "log-format",
    "drain_timeout",
    "drain-timeout",
    "tls_ca",
    "tls-ca",
    "tls_cert",
    "tls-cert",
    "tls_key",
    "tls-key",
    "tls_server_name",
    "tls-server-name",
];

/// Parse config text; the error names the line and the key. Every unknown
/// key is named, each with its line and the nearest known key.
pub fn parse_file(text: &str) -> Result<FileConfig, String> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    // The top-level keys with their positions, before the typed parse stops
    // at the first unknown one. Syntax errors are left to the typed parse.
    if let Ok(keys) = toml::from_str::<
        std::collections::BTreeMap<toml::Spanned<String>, serde::de::IgnoredAny>,
    >(text)
    {
        let mut unknown: Vec<(usize, &str)> = keys
            .keys()
            .filter(|key| !FILE_KEYS.contains(&key.get_ref().as_str()))
            .map(|key| (line_of(key.span().start), key.get_ref().as_str()))
            .collect();
        unknown.sort_unstable();
        let nearest = |key: &str| {
            FILE_KEYS
                .iter()
                .map(|known| (strsim::damerau_levenshtein(key, known), *known))
                .filter(|&(distance, _)| distance <= 3)
                // On a tie, the spelling the key uses (snake_case or kebab-case).
                .min_by_key(|&(distance, known)| {
                    (distance, known.contains('-') != key.contains('-'), known)
                })
                .map(|(_, known)| known)
        };
        const HINT: &str = "keys are the `run` flags in snake_case: max_in_flight, tls_ca, ...";
        match unknown.as_slice() {
            [] => {}
            [(line, key)] => {
                return Err(match nearest(key) {
                    Some(known) => {
                        format!("line {line}: unknown key `{key}`; did you mean `{known}`?")
                    }
                    None => format!("line {line}: unknown key `{key}` ({HINT})"),
                })
            }
            several => {
                let named: Vec<String> = several
                    .iter()
                    .map(|(line, key)| match nearest(key) {
                        Some(known) => format!("line {line}: `{key}` (did you mean `{known}`?)"),
                        None => format!("line {line}: `{key}`"),
                    })
                    .collect();
                let hint = if several.iter().any(|(_, key)| nearest(key).is_none()) {
                    format!("; {HINT}")
                } else {
                    String::new()
                };
                return Err(format!(
                    "{} unknown keys: {}{hint}",
                    several.len(),
                    named.join(", ")
                ));
            }
        }
    }
    toml::from_str::<FileConfig>(text).map_err(|err| {
        let message = err.message().trim().to_owned();
        match err.span() {
            Some(span) => format!("line {}: {message}", line_of(span.start)),
            None => message,
        }
    })
}

/// Whether a token file's mode and owning group leave it private enough:
/// nothing for others, and group read (never group write) only when the
/// group is this process's own (a Kubernetes secret mounted with `fsGroup`
/// arrives as 0440 with the pod's group; kubernetes issue 57923).
fn token_mode_is_private(mode: u32, file_gid: u32, own_gid: Option<u32>) -> bool {
    let others = mode & 0o007;
    let group = mode & 0o070;
    others == 0 && (group == 0 || (group == 0o040 && Some(file_gid) == own_gid))
}

/// This process's effective group id, from `/proc/self/status` (the second
/// field of its `Gid:` line); `None` if that cannot be read.
fn effective_gid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix("Gid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Read the token through one descriptor: the mode and group are checked
/// on the file that is read, not on a path that could change in between.
///
/// Returns the token and whether the file was accepted only because
/// `allow_insecure_token_file` is set.
fn read_token(path: &Path, allow_insecure: bool) -> Result<(String, bool), ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let token_error = |source| ConfigError::TokenFile {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(token_error)?;
    let metadata = file.metadata().map_err(token_error)?;
    let mode = metadata.mode() & 0o777;
    let own_gid = effective_gid();
    let private = token_mode_is_private(mode, metadata.gid(), own_gid);
    if !allow_insecure && !private {
        return Err(ConfigError::InsecureTokenFile {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(token_error)?;
    let token = text.trim_end_matches(['\n', '\r']).to_owned();
    if token.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok((token, !private))
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
mod tests {
    use super::*;

    fn args(manager: Option<&str>) -> RunArgs {
        RunArgs {
            manager: manager.map(str::to_owned),
            ..RunArgs::default()
        }
    }

    #[test]
    fn byte_sizes_accept_suffixes() {
        assert_eq!("16777216".parse::<ByteSize>(), Ok(ByteSize(16 << 20)));
        assert_eq!("64KiB".parse::<ByteSize>(), Ok(ByteSize(64 << 10)));
        assert_eq!("16 MiB".parse::<ByteSize>(), Ok(ByteSize(16 << 20)));
        assert!("16MB"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("unknown unit"));
        assert!("lots".parse::<ByteSize>().is_err());
    }

    #[test]
    fn defaults_follow_the_contract() {
        let config =
            Config::merge(&args(Some("tcp://127.0.0.1:7000")), FileConfig::default()).unwrap();
        assert_eq!(config.runtime, RuntimeChoice::Auto);
        assert_eq!(config.sessions, 1);
        assert_eq!(config.max_in_flight, 64);
        assert_eq!(config.max_body, 16_777_216);
        assert_eq!(
            config.metrics_addr,
            MetricsAddr::Listen("127.0.0.1:9464".parse().unwrap())
        );
        assert_eq!(config.reconnect_min, Duration::from_millis(100));
        assert!(config.session_metrics);
        assert_eq!(config.reconnect_max, Duration::from_secs(30));
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn flags_override_the_file() {
        let file =
            parse_file("manager = \"tcp://10.0.0.1:1\"\nsessions = 4\nmax-body = \"1MiB\"\n")
                .unwrap();
        let mut flags = args(Some("unix:///tmp/m.sock"));
        flags.sessions = Some(8);
        let config = Config::merge(&flags, file).unwrap();
        assert_eq!(config.manager, Endpoint::Unix("/tmp/m.sock".into()));
        assert_eq!(config.sessions, 8);
        assert_eq!(config.max_body, 1 << 20);
    }

    #[test]
    fn sessions_and_worker_id_out_of_range_are_refused() {
        let file = parse_file("manager = \"tcp://10.0.0.1:1\"\n").unwrap();
        let mut flags = args(None);
        for (sessions, ok) in [
            (0, false),
            (1, true),
            (MAX_SESSIONS, true),
            (MAX_SESSIONS + 1, false),
        ] {
            flags.sessions = Some(sessions);
            assert_eq!(
                Config::merge(&flags, file.clone()).is_ok(),
                ok,
                "sessions {sessions}"
            );
        }
        flags.sessions = None;
        for (id, ok) in [
            ("", false),
            ("  ", false),
            ("a\nb", false),
            ("node-7", true),
        ] {
            flags.worker_id = Some(id.to_owned());
            let result = Config::merge(&flags, file.clone());
            assert_eq!(result.is_ok(), ok, "worker_id {id:?}");
        }
    }

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn precedence_is_flags_then_env_then_file_then_defaults() {
        use clap::Parser;
        // The only test that touches RINGWORKER_* variables.
        std::env::set_var("RINGWORKER_SESSIONS", "5");
        std::env::set_var("RINGWORKER_WORKER_ID", "from-env");
        let parsed = TestCli::try_parse_from(["ringworker", "--worker-id", "from-flag"]);
        std::env::remove_var("RINGWORKER_SESSIONS");
        std::env::remove_var("RINGWORKER_WORKER_ID");
        let args = parsed.unwrap().run;
        let file = parse_file(
            "manager = \"tcp://127.0.0.1:1\"\nsessions = 9\nworker_id = \"from-file\"\nmax_in_flight = 3\n",
        )
        .unwrap();
        let config = Config::merge(&args, file).unwrap();
        assert_eq!(config.worker_id, "from-flag", "flag beats env and file");
        assert_eq!(config.sessions, 5, "env beats file");
        assert_eq!(config.max_in_flight, 3, "file beats default");
        assert_eq!(config.drain_timeout, Duration::from_secs(30), "default");
    }

    #[test]
    fn a_usage_error_is_one_line_with_its_tips_and_lists() {
        let command = || {
            clap::Command::new("prog")
                .arg(clap::Arg::new("alpha").long("alpha").required(true))
                .arg(clap::Arg::new("beta").long("beta").required(true))
                .arg(clap::Arg::new("sessions").long("sessions"))
        };
        let err = command()
            .try_get_matches_from(["prog", "--sesions", "3"])
            .unwrap_err();
        let line = usage_error_line("prog", &err, "prog --help");
        assert_eq!(
            line,
            "prog: unexpected argument '--sesions' found; a similar argument exists: \
             '--sessions'; see 'prog --help'"
        );
        let err = command()
            .try_get_matches_from(["prog", "--sessions", "3"])
            .unwrap_err();
        let line = usage_error_line("prog", &err, "prog --help");
        assert_eq!(
            line,
            "prog: the following required arguments were not provided: --alpha <alpha>, \
             --beta <beta>; see 'prog --help'"
        );
    }

    #[test]
    fn file_keys_are_the_fields_of_the_file() {
        // Each listed key is a field (or alias): never "unknown field".
        for key in FILE_KEYS {
            if let Err(err) = toml::from_str::<FileConfig>(&format!("{key} = 0")) {
                assert!(!err.message().contains("unknown field"), "{key}: {err}");
            }
        }
        // Each field serde knows is listed.
        let err = toml::from_str::<FileConfig>("\"#\" = 0").unwrap_err();
        let expected: Vec<&str> = err.message().split('`').skip(3).step_by(2).collect();
        assert!(expected.len() >= 18, "{err}");
        for field in expected {
            assert!(
                FILE_KEYS.contains(&field),
                "{field} is missing from FILE_KEYS"
            );
        }
    }

    #[test]
    fn every_unknown_key_is_named() {
        let err =
            parse_file("manager = \"tcp://h:1\"\nsesions = 4\n[agent]\nca = 1\n").unwrap_err();
        assert_eq!(
            err,
            "2 unknown keys: line 2: `sesions` (did you mean `sessions`?), line 3: `agent`; \
             keys are the `run` flags in snake_case: max_in_flight, tls_ca, ..."
        );
        let err = parse_file("tls = 1\ntls-c = 2\n").unwrap_err();
        assert!(
            err.contains("`tls` (did you mean `tls_ca`?)")
                && err.contains("`tls-c` (did you mean `tls-ca`?)"),
            "{err}"
        );
        let err = parse_file("sessions = \"four\"\n").unwrap_err();
        assert!(err.starts_with("line 1: "), "{err}");
        let err = parse_file("sessions = \n").unwrap_err();
        assert!(err.starts_with("line 1: "), "{err}");
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let err = parse_file("manager = \"tcp://h:1\"\n\nsesions = 4\n").unwrap_err();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("sesions"), "{err}");
    }

    #[test]
    fn missing_manager_and_bad_values_are_clear() {
        let err = Config::merge(&args(None), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("--manager"), "{err}");
        let err = Config::merge(&args(Some("tcp://nohost")), FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("HOST:PORT"), "{err}");
        let mut flags = args(Some("tcp://h:1"));
        flags.reconnect_min = Some(5000);
        flags.reconnect_max = Some(100);
        assert!(Config::merge(&flags, FileConfig::default()).is_err());
    }

    #[test]
    fn token_files_must_be_private_and_the_token_is_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rw-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "hunter2-secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut flags = args(Some("tcp://127.0.0.1:1"));
        flags.token_file = Some(path.clone());
        let err = Config::merge(&flags, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("readable by others"), "{err}");
        flags.allow_insecure_token_file = Some(true);
        let config = Config::merge(&flags, FileConfig::default()).unwrap();
        assert_eq!(config.token.as_deref(), Some("hunter2-secret"));
        let warnings = config.warnings();
        assert!(
            warnings.len() == 1 && warnings[0].contains("allow_insecure_token_file"),
            "{warnings:?}"
        );
        assert!(!config.effective_toml().contains("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        flags.allow_insecure_token_file = Some(false);
        assert!(Config::merge(&flags, FileConfig::default())
            .unwrap()
            .warnings()
            .is_empty());
        // A flag or variable saying false beats the file saying true.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = FileConfig {
            allow_insecure_token_file: Some(true),
            ..FileConfig::default()
        };
        assert!(Config::merge(&flags, file.clone()).is_err());
        flags.allow_insecure_token_file = None;
        assert!(Config::merge(&flags, file).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_readable_by_the_agents_own_group_is_accepted_at_0440() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = std::env::temp_dir().join(format!("rw-token-0440-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let own_gid = effective_gid().expect("/proc/self/status has a Gid line");
        assert_eq!(std::fs::metadata(&path).unwrap().gid(), own_gid);
        let mut flags = args(Some("tcp://h:1"));
        flags.token_file = Some(path.clone());
        let with_mode = |mode| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Config::merge(&flags, FileConfig::default())
        };
        // The kubelet's fsGroup mount: 0440, group = the pod's (our) group.
        assert_eq!(with_mode(0o440).unwrap().token.as_deref(), Some("s3cret"));
        assert!(with_mode(0o400).is_ok());
        // Anything for others, or group write, stays refused.
        for mode in [0o644, 0o444, 0o460, 0o404] {
            let err = with_mode(mode).unwrap_err().to_string();
            assert!(err.contains("readable by others"), "mode {mode:o}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn group_read_is_private_only_for_the_agents_own_group() {
        assert!(token_mode_is_private(0o440, 1000, Some(1000)));
        assert!(!token_mode_is_private(0o440, 1000, Some(1001)));
        assert!(!token_mode_is_private(0o440, 1000, None));
        assert!(token_mode_is_private(0o600, 1000, Some(1001)));
        assert!(!token_mode_is_private(0o604, 1000, Some(1000)));
        assert!(!token_mode_is_private(0o640 | 0o020, 1000, Some(1000)));
    }

    #[test]
    fn a_token_over_cleartext_tcp_to_another_host_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rw-token-tcp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let warnings_for = |manager: &str| {
            let mut flags = args(Some(manager));
            flags.token_file = Some(path.clone());
            Config::merge(&flags, FileConfig::default())
                .unwrap()
                .warnings()
        };
        let far = warnings_for("tcp://manager.example:7000");
        assert!(far.len() == 1 && far[0].contains("clear text"), "{far:?}");
        for near in [
            "tcp://127.0.0.1:7000",
            "tcp://127.1.2.3:7000",
            "tcp://[::1]:7000",
            "tcp://localhost:7000",
            "unix:///run/manager.sock",
        ] {
            assert!(warnings_for(near).is_empty(), "{near}");
        }
        // No token, nothing to warn about.
        let config = Config::merge(
            &args(Some("tcp://manager.example:7000")),
            FileConfig::default(),
        )
        .unwrap();
        assert!(config.warnings().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_memory_bound_follows_the_limits_and_the_limits_are_capped() {
        let mut flags = args(Some("tcp://127.0.0.1:7000"));
        flags.threads = Some(2);
        flags.runtime = Some(RuntimeChoice::Uring);
        let config = Config::merge(&flags, FileConfig::default()).unwrap();
        let bound = config.memory_bound();
        assert_eq!(
            bound.per_session,
            3 * 16 * 1024 * 1024 + 640 * 1024 + 16 * 64
        );
        assert_eq!(bound.shared, 2 * 16 * 1024 * 1024);
        assert_eq!(bound.total, bound.per_session + bound.shared);
        assert!(config
            .effective_toml()
            .contains("# memory bound: 1 sessions x 48.6 MiB per session"));
        flags.sessions = Some(1000);
        flags.runtime = Some(RuntimeChoice::Blocking);
        let many = Config::merge(&flags, FileConfig::default())
            .unwrap()
            .memory_bound();
        assert_eq!(many.shared, 0);
        assert_eq!(many.total, 1000 * bound.per_session);
        flags.max_in_flight = Some(MAX_IN_FLIGHT + 1);
        assert!(Config::merge(&flags, FileConfig::default()).is_err());
        flags.max_in_flight = Some(MAX_IN_FLIGHT);
        assert!(Config::merge(&flags, FileConfig::default()).is_ok());
        flags.max_body = Some(ByteSize(u64::from(MAX_MAX_BODY) + 1));
        let err = Config::merge(&flags, FileConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 GiB"), "{err}");
        // A bound past the machine's memory is warned about.
        flags.max_body = Some(ByteSize(u64::from(MAX_MAX_BODY)));
        flags.sessions = Some(100_000);
        let huge = Config::merge(&flags, FileConfig::default()).unwrap();
        assert!(
            huge.warnings()
                .iter()
                .any(|w| w.contains("more than this machine's")),
            "{:?}",
            huge.warnings()
        );
    }
}
