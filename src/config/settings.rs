//! [`Settings`]: every key of the configuration, declared once.
//!
//! One struct of optional values is both the flags of `ringworker run`
//! (`clap::Args`, each with its `RINGWORKER_*` variable) and the config file
//! (`serde::Deserialize`, kebab-case spellings as aliases). The keys the file
//! accepts ([`FILE_KEYS`]) are read from serde, and the effective
//! configuration is written by serialising a `Settings` built from the
//! resolved [`Config`]. A new key is one more field here, its default and
//! check in `Config::merge`, and its line in `From<&Config>` (which names
//! every field, so the compiler asks for it).

use std::cell::Cell;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Config, MetricsAddr};

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

/// The settings of `ringworker run`: its flags (each also settable by a
/// `RINGWORKER_*` variable) and, but for `config`, the keys of its config
/// file, in snake_case or as the flag is spelled (kebab-case).
///
/// The order of the fields is the order of `--help` and of the effective
/// configuration that `check-config` prints.
#[derive(Debug, Clone, Default, clap::Args, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
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
    /// uring runtime: move sessions between event loops: onto fewer loops when they wait for CPUs, onto an idle loop when one is saturated and CPUs are idle; `off` keeps each where it started [default: auto]
    #[arg(long, env = "RINGWORKER_LOOP_BALANCE", value_enum, value_name = "MODE")]
    #[serde(alias = "loop-balance")]
    pub loop_balance: Option<crate::runtime::LoopBalance>,
    /// Tasks held per session before it stops reading [default: 64]
    #[arg(long, env = "RINGWORKER_MAX_IN_FLIGHT", value_name = "N")]
    #[serde(alias = "max-in-flight")]
    pub max_in_flight: Option<u32>,
    /// Largest TASK body accepted; suffixes KiB, MiB allowed [default: 16777216]
    #[arg(long, env = "RINGWORKER_MAX_BODY", value_name = "BYTES")]
    #[serde(alias = "max-body")]
    pub max_body: Option<ByteSize>,
    /// The `worker` field of HELLO [default: hostname]
    #[arg(long, env = "RINGWORKER_WORKER_ID", value_name = "ID")]
    #[serde(alias = "worker-id")]
    pub worker_id: Option<String>,
    /// File holding the secret sent in HELLO; never logged, never in metrics
    #[arg(long, env = "RINGWORKER_TOKEN_FILE", value_name = "PATH")]
    #[serde(alias = "token-file", serialize_with = "lossy_path")]
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
    #[serde(alias = "allow-insecure-token-file")]
    pub allow_insecure_token_file: Option<bool>,
    /// HTTP listener for /metrics /healthz /readyz /status, or `off` [default: 127.0.0.1:9464]
    #[arg(long, env = "RINGWORKER_METRICS_ADDR", value_name = "ADDR")]
    #[serde(alias = "metrics-addr")]
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
    #[serde(alias = "session-metrics")]
    pub session_metrics: Option<bool>,
    /// Back-off base between dial attempts, milliseconds [default: 100]
    #[arg(long, env = "RINGWORKER_RECONNECT_MIN", value_name = "MS")]
    #[serde(alias = "reconnect-min")]
    pub reconnect_min: Option<u64>,
    /// Back-off cap between dial attempts, milliseconds [default: 30000]
    #[arg(long, env = "RINGWORKER_RECONNECT_MAX", value_name = "MS")]
    #[serde(alias = "reconnect-max")]
    pub reconnect_max: Option<u64>,
    /// TOML file with the same keys (manager, runtime, sessions, ...); flags and RINGWORKER_* override it
    #[arg(long, env = "RINGWORKER_CONFIG", value_name = "PATH")]
    // A flag only: a file does not name another file.
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Idle seconds before TCP keepalive probes start on a tcp:// or tls:// manager connection (probes every third of it, three of them); 0 turns keepalive off [default: 30]
    #[arg(long, env = "RINGWORKER_TCP_KEEPALIVE", value_name = "SECS")]
    #[serde(alias = "tcp-keepalive")]
    pub tcp_keepalive: Option<u64>,
    /// Seconds sent data may stay unacknowledged before the connection is dropped (TCP_USER_TIMEOUT; since Linux 5.11 also a manager that keeps its receive window shut that long); 0 leaves the kernel's default [default: 300]
    #[arg(long, env = "RINGWORKER_TCP_USER_TIMEOUT", value_name = "SECS")]
    #[serde(alias = "tcp-user-timeout")]
    pub tcp_user_timeout: Option<u64>,
    /// Log level filter (error, warn, info, debug, trace, or EnvFilter directives); RINGWORKER_LOG overrides it; SIGHUP applies a changed file value [default: info]
    // No `env`: RINGWORKER_LOG (an EnvFilter, read when the configuration
    // is resolved) is the variable, and it wins over the file and the flag.
    #[arg(long, value_name = "FILTER")]
    #[serde(alias = "log-level")]
    pub log_level: Option<String>,
    /// Log format on stderr [default: text]
    #[arg(long, env = "RINGWORKER_LOG_FORMAT", value_enum)]
    #[serde(alias = "log-format")]
    pub log_format: Option<LogFormat>,
    /// Longest graceful drain, seconds; tasks still running then are abandoned and the exit status is non-zero [default: 30]
    #[arg(long, env = "RINGWORKER_DRAIN_TIMEOUT", value_name = "SECS")]
    #[serde(alias = "drain-timeout")]
    pub drain_timeout: Option<u64>,
    /// tls:// endpoints: trust anchors (PEM) [default: system roots]
    #[arg(long, env = "RINGWORKER_TLS_CA", value_name = "PATH")]
    #[serde(alias = "tls-ca", serialize_with = "lossy_path")]
    pub tls_ca: Option<PathBuf>,
    /// tls:// endpoints: client certificate (PEM) for mutual TLS
    #[arg(long, env = "RINGWORKER_TLS_CERT", value_name = "PATH")]
    #[serde(alias = "tls-cert", serialize_with = "lossy_path")]
    pub tls_cert: Option<PathBuf>,
    /// tls:// endpoints: client private key (PEM) for mutual TLS
    #[arg(long, env = "RINGWORKER_TLS_KEY", value_name = "PATH")]
    #[serde(alias = "tls-key", serialize_with = "lossy_path")]
    pub tls_key: Option<PathBuf>,
    /// tls:// endpoints: server name to verify and send as SNI [default: the endpoint's host]
    #[arg(long, env = "RINGWORKER_TLS_SERVER_NAME", value_name = "NAME")]
    #[serde(alias = "tls-server-name")]
    pub tls_server_name: Option<String>,
    /// `[handlers.NAME]` tables: declared handlers, from the file only (no
    /// flag; `Config::merge` reads the file's and never the flags').
    #[arg(skip)]
    #[serde(default, skip_serializing)]
    pub handlers: std::collections::BTreeMap<String, super::handlers::HandlerTable>,
}

/// A path as text: a file name that is not UTF-8 is written lossily, as
/// `Path::display` does, rather than failing the whole output.
fn lossy_path<S: serde::Serializer>(path: &Option<PathBuf>, out: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => out.serialize_some(&path.display().to_string()),
        None => out.serialize_none(),
    }
}

/// The keys of the config file: the fields of [`Settings`] that serde
/// reads, each in snake_case and, where it differs, kebab-case; the
/// tables ([`FILE_TABLES`]) aside.
pub static FILE_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    field_names::<Settings>()
        .iter()
        .copied()
        .filter(|key| !FILE_TABLES.contains(key))
        .collect()
});

/// The tables of the config file: fields of [`Settings`] that are not
/// flags and not a `key = value` of the effective configuration.
pub const FILE_TABLES: &[&str] = &["handlers"];

/// The names a derived `Deserialize` accepts for a struct's fields,
/// aliases included, in declaration order (each field's own names sorted).
///
/// serde hands these to `Deserializer::deserialize_struct` (they are what
/// its "expected one of" messages list); a deserializer that keeps them and
/// stops there reads them without a hand-written list.
fn field_names<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Probe<'a>(&'a Cell<&'static [&'static str]>);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.set(fields);
            Err(de::Error::custom("only the field names were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }
    let names = Cell::new(&[][..]);
    // The error is the probe's own: it stops once it has the names.
    let _ = T::deserialize(Probe(&names));
    names.get()
}

impl From<&Config> for Settings {
    /// The settings that give `config` when resolved alone: every key set,
    /// as the file writes it. `allow_insecure_token_file` stays unset: the
    /// running configuration keeps only whether it was needed.
    fn from(config: &Config) -> Settings {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let seconds = |d: Option<Duration>| d.map_or(0, |d| d.as_secs());
        // No `..Default::default()`: a new field must be decided here.
        Settings {
            manager: Some(config.manager.to_string()),
            runtime: Some(config.runtime),
            sessions: Some(config.sessions),
            threads: Some(config.threads),
            loop_balance: Some(config.loop_balance),
            max_in_flight: Some(config.max_in_flight),
            max_body: Some(ByteSize(u64::from(config.max_body))),
            worker_id: Some(config.worker_id.clone()),
            token_file: config.token_file.clone(),
            allow_insecure_token_file: None,
            metrics_addr: Some(match &config.metrics_addr {
                MetricsAddr::Off => "off".to_owned(),
                MetricsAddr::Listen(addr) => addr.to_string(),
            }),
            session_metrics: Some(config.session_metrics),
            reconnect_min: Some(millis(config.reconnect_min)),
            reconnect_max: Some(millis(config.reconnect_max)),
            config: None,
            tcp_keepalive: Some(seconds(config.tcp.keepalive)),
            tcp_user_timeout: Some(seconds(config.tcp.user_timeout)),
            log_level: Some(config.log_level.clone()),
            log_format: Some(config.log_format),
            drain_timeout: Some(config.drain_timeout.as_secs()),
            tls_ca: config.tls_ca.clone(),
            tls_cert: config.tls_cert.clone(),
            tls_key: config.tls_key.clone(),
            tls_server_name: config.tls_server_name.clone(),
            // Rendered by `HandlerSet::to_toml`, not as a key.
            handlers: Default::default(),
        }
    }
}

impl Settings {
    /// Each file key (snake_case) in declaration order with its value as
    /// the file writes it (strings as TOML strings), `None` when unset.
    ///
    /// Serialised through `serde_json`'s value tree rather than `toml`,
    /// which refuses integers past `i64::MAX` that the flags accept.
    pub fn file_entries(&self) -> Vec<(&'static str, Option<String>)> {
        let map = match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => map,
            // Plain fields of strings, numbers and booleans always
            // serialise to an object.
            _ => serde_json::Map::new(),
        };
        FILE_KEYS
            .iter()
            .filter_map(|&key| Some((key, map.get(key)?)))
            .map(|(key, value)| {
                let text = match value {
                    serde_json::Value::Null => None,
                    // A TOML basic string (a Rust `{:?}` would write `\u{301}`).
                    serde_json::Value::String(text) => {
                        Some(toml::Value::String(text.clone()).to_string())
                    }
                    other => Some(other.to_string()),
                };
                (key, text)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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

    #[derive(clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        run: Settings,
    }

    #[test]
    fn the_file_keys_are_the_run_flags_but_config_in_both_spellings() {
        let mut from_flags: Vec<String> = Vec::new();
        for arg in TestCli::command().get_arguments() {
            let (id, long) = (arg.get_id().as_str(), arg.get_long());
            if matches!(id, "config" | "help") {
                continue;
            }
            let long = long.expect("every setting is a --flag");
            assert_eq!(long.replace('-', "_"), id, "--{long} is its field's name");
            from_flags.push(id.to_owned());
            if long != id {
                from_flags.push(long.to_owned());
            }
        }
        let mut keys: Vec<String> = FILE_KEYS.iter().map(|&key| key.to_owned()).collect();
        from_flags.sort();
        keys.sort();
        assert_eq!(keys, from_flags);
        assert_eq!(keys.len(), 42, "23 keys, 19 with a kebab-case spelling");
        // Each key is one the file reads: never "unknown field".
        for key in FILE_KEYS.iter() {
            if let Err(err) = toml::from_str::<Settings>(&format!("{key} = 0")) {
                assert!(!err.message().contains("unknown field"), "{key}: {err}");
            }
        }
        assert!(toml::from_str::<Settings>("config = \"x\"")
            .unwrap_err()
            .message()
            .contains("unknown field"));
    }

    #[test]
    fn entries_are_in_declaration_order_with_unset_keys_empty() {
        let settings = Settings {
            manager: Some("tcp://h:1".into()),
            reconnect_max: Some(u64::MAX),
            worker_id: Some("a\"b".into()),
            tls_ca: Some(PathBuf::from("/ca.pem")),
            config: Some(PathBuf::from("/never/written")),
            ..Settings::default()
        };
        let entries = settings.file_entries();
        let keys: Vec<&str> = entries.iter().map(|(key, _)| *key).collect();
        assert_eq!(keys.len(), 23);
        assert_eq!(&keys[..3], ["manager", "runtime", "sessions"]);
        assert_eq!(keys.last(), Some(&"tls_server_name"));
        let value = |wanted: &str| {
            entries
                .iter()
                .find(|(key, _)| *key == wanted)
                .and_then(|(_, value)| value.clone())
        };
        assert_eq!(value("manager").as_deref(), Some("\"tcp://h:1\""));
        assert_eq!(
            value("reconnect_max").as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(value("tls_ca").as_deref(), Some("\"/ca.pem\""));
        let worker = value("worker_id").unwrap();
        let parsed: Settings = toml::from_str(&format!("worker_id = {worker}")).unwrap();
        assert_eq!(parsed.worker_id.as_deref(), Some("a\"b"));
        assert_eq!(value("sessions"), None);
        assert!(!keys.contains(&"config"));
    }
}
