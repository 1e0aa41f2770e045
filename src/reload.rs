//! SIGHUP: re-read the config file and apply what can change while the
//! agent runs.
//!
//! The file is resolved again with the flags and environment of the start,
//! so they still win over it. What applies live: `log_format` and
//! `log_level` (unless `RINGWORKER_LOG` is set: the environment of a running
//! process does not change, and it wins over the file). Every other key that now differs from the running
//! configuration is named in one line as needing a restart, and keeps its
//! running value. A file that no longer reads or validates is logged as an
//! error and the running configuration stays. A reload never stops the
//! agent.

use std::fmt;

use crate::config::{Config, LogFormat, Settings};
use crate::notify::Notifier;

/// The keys a reload applies without a restart.
pub const LIVE_KEYS: &[&str] = &["log_format", "log_level"];

/// One key whose value differs between two configurations; values as they
/// appear in the config file (strings quoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.key, self.from, self.to)
    }
}

/// How a new configuration differs from the running one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    /// Keys in [`LIVE_KEYS`]: applied by the reload.
    pub live: Vec<Change>,
    /// Every other key that differs: takes effect after a restart.
    pub restart: Vec<Change>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.restart.is_empty()
    }
}

/// The keys of `running` and `new` whose values differ, split into those a
/// reload applies and those that need a restart. The token's value never
/// appears: a changed token shows as `token <redacted> -> <changed>`.
pub fn diff(running: &Config, new: &Config) -> Diff {
    let before = keys_of(running);
    let after = keys_of(new);
    let mut changes: Vec<Change> = Vec::new();
    for (key, from) in &before {
        let to = after
            .iter()
            .find(|(k, _)| k == key)
            .map_or("(unset)", |(_, v)| v.as_str());
        if from != to {
            changes.push(Change {
                key: key.clone(),
                from: from.clone(),
                to: to.to_owned(),
            });
        }
    }
    for (key, to) in &after {
        if !before.iter().any(|(k, _)| k == key) {
            changes.push(Change {
                key: key.clone(),
                from: "(unset)".to_owned(),
                to: to.clone(),
            });
        }
    }
    if running.token != new.token {
        changes.push(Change {
            key: "token".to_owned(),
            from: "<redacted>".to_owned(),
            to: "<changed>".to_owned(),
        });
    }
    if running.handlers != new.handlers {
        changes.push(Change {
            key: "handlers".to_owned(),
            from: running.handlers.names().join(","),
            to: new.handlers.names().join(","),
        });
    }
    let (live, restart) = changes
        .into_iter()
        .partition(|change| LIVE_KEYS.contains(&change.key.as_str()));
    Diff { live, restart }
}

/// `key = value` pairs of a configuration, in the config file's order.
fn keys_of(config: &Config) -> Vec<(String, String)> {
    config
        .effective_toml()
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once(" = "))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// Re-reads the configuration on request and applies what it can.
#[derive(Debug)]
pub struct Reloader {
    args: Settings,
    /// What runs: the start's configuration with the live keys applied since.
    running: Config,
    notifier: Notifier,
}

impl Reloader {
    /// `args` are the start's flags and environment; `running` the
    /// configuration they gave.
    pub fn new(args: Settings, running: Config, notifier: Notifier) -> Reloader {
        Reloader {
            args,
            running,
            notifier,
        }
    }

    /// The configuration in force.
    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Re-read the config file and apply it (SIGHUP). Logs what changed and
    /// what needs a restart; never fails.
    pub fn reload(&mut self) {
        let Some(path) = self.args.config.clone() else {
            tracing::info!(
                "SIGHUP: no config file to re-read (started without --config); nothing changed"
            );
            return;
        };
        let path = path.display().to_string();
        let notified = self.notifier.reloading();
        match Config::resolve(&self.args) {
            Err(err) => tracing::error!(
                config = %path,
                "SIGHUP: cannot reload the configuration: {err}; the running configuration stays"
            ),
            Ok(new) => self.apply(&path, &new),
        }
        if notified {
            self.notifier.reloaded();
        }
    }

    fn apply(&mut self, path: &str, new: &Config) {
        let diff = diff(&self.running, new);
        for change in &diff.live {
            if change.key == "log_format" {
                self.set_log_format(new.log_format);
            }
            if change.key == "log_level" {
                self.set_log_level(&new.log_level);
            }
        }
        let list = |changes: &[Change]| {
            changes
                .iter()
                .map(Change::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let keys = |changes: &[Change]| {
            changes
                .iter()
                .map(|c| c.key.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        if diff.is_empty() {
            tracing::info!(config = %path, "SIGHUP: reloaded {path}: nothing changed");
            return;
        }
        if diff.live.is_empty() {
            tracing::info!(
                config = %path,
                "SIGHUP: reloaded {path}: nothing that applies live changed"
            );
        } else {
            tracing::info!(
                config = %path,
                applied = %keys(&diff.live),
                "SIGHUP: reloaded {path}: applied {}",
                list(&diff.live)
            );
        }
        if !diff.restart.is_empty() {
            tracing::warn!(
                config = %path,
                restart_needed = %keys(&diff.restart),
                "SIGHUP: {path}: {} differ from the running configuration and take effect \
                 only after a restart; they keep their running values",
                list(&diff.restart)
            );
        }
    }

    fn set_log_level(&mut self, directives: &str) {
        if let Some(handle) = crate::logging::handle() {
            if let Err(why) = handle.set_filter(directives) {
                tracing::error!("SIGHUP: {why}; the running log level stays");
                return;
            }
        }
        self.running.log_level = directives.to_owned();
    }

    fn set_log_format(&mut self, format: LogFormat) {
        if let Some(handle) = crate::logging::handle() {
            handle.set_format(format);
        }
        self.running.log_format = format;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_file;

    fn config(file: &str) -> Config {
        Config::merge(&Settings::default(), parse_file(file).unwrap()).unwrap()
    }

    #[test]
    fn the_log_format_applies_live_and_every_other_difference_needs_a_restart() {
        let running = config(
            "manager = \"tcp://127.0.0.1:7000\"\nlog_format = \"text\"\nsessions = 1\nthreads = 2\n",
        );
        assert_eq!(diff(&running, &running.clone()), Diff::default());
        let new = config(
            "manager = \"tcp://127.0.0.1:7001\"\nlog_format = \"json\"\nsessions = 3\nthreads = 2\n",
        );
        let diff = diff(&running, &new);
        assert_eq!(
            diff.live,
            [Change {
                key: "log_format".into(),
                from: "\"text\"".into(),
                to: "\"json\"".into()
            }]
        );
        let restart: Vec<String> = diff.restart.iter().map(Change::to_string).collect();
        assert_eq!(
            restart,
            [
                "manager \"tcp://127.0.0.1:7000\" -> \"tcp://127.0.0.1:7001\"",
                "sessions 1 -> 3"
            ]
        );
    }

    #[test]
    fn declared_handlers_need_a_restart() {
        let running = config("manager = \"tcp://127.0.0.1:7000\"\n");
        let new = config(
            "manager = \"tcp://127.0.0.1:7000\"\n[handlers.upper]\nmode = \"exec\"\ncommand = [\"tr\", \"a-z\", \"A-Z\"]\n",
        );
        let diff = diff(&running, &new);
        assert!(diff.live.is_empty(), "{diff:?}");
        let restart: Vec<String> = diff.restart.iter().map(Change::to_string).collect();
        assert_eq!(restart, ["handlers  -> upper"]);
    }

    #[test]
    fn the_log_level_applies_live() {
        let running = config("manager = \"tcp://127.0.0.1:7000\"\n");
        let new = config("manager = \"tcp://127.0.0.1:7000\"\nlog_level = \"debug\"\n");
        let diff = diff(&running, &new);
        assert_eq!(
            diff.live,
            [Change {
                key: "log_level".into(),
                from: "\"info\"".into(),
                to: "\"debug\"".into()
            }]
        );
        assert!(diff.restart.is_empty(), "{diff:?}");
    }

    #[test]
    fn flags_still_win_over_the_file_on_a_reload() {
        let args = Settings {
            manager: Some("tcp://127.0.0.1:7000".into()),
            sessions: Some(4),
            threads: Some(1),
            ..Settings::default()
        };
        let running = Config::merge(&args, Settings::default()).unwrap();
        let new = Config::merge(
            &args,
            parse_file("manager = \"tcp://10.0.0.1:1\"\nsessions = 9\n").unwrap(),
        )
        .unwrap();
        assert!(diff(&running, &new).is_empty());
    }

    #[test]
    fn a_changed_token_is_named_without_its_value() {
        let running = config("manager = \"tcp://127.0.0.1:7000\"\nthreads = 1\n");
        let mut new = running.clone();
        new.token = Some("n3w-s3cret".into());
        let diff = diff(&running, &new);
        assert!(diff.live.is_empty());
        let text: Vec<String> = diff.restart.iter().map(Change::to_string).collect();
        assert_eq!(text, ["token <redacted> -> <changed>"]);
    }
}
