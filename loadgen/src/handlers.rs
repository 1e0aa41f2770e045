//! The handlers the loadgen can drive, and how it checks each one's results.
//!
//! A `--handler` mix may name only handlers listed here, so that a typo is a
//! usage error at start rather than a run of `unknown_handler` failures.
//! A handler of an agent's own (one it registers or declares in its config,
//! and advertises in HELLO's `handlers`) is driven with
//! `--handler-unverified NAME`: its tasks carry random `--payload` bytes and
//! any successful RESULT counts as ok. The registry is a value, so a later
//! version can add what an agent advertises before the run starts.

use crate::workload::Mix;

/// What a handler's task carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// Random bytes, `--payload` long.
    Bytes,
    /// A big-endian u32 of milliseconds, from `--sleep-ms`.
    SleepMillis,
}

/// How a handler's RESULT is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Compared byte for byte with the output computed up front.
    Exact,
    /// Any successful RESULT counts (a handler the loadgen cannot predict).
    Unverified,
}

/// One handler the loadgen knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    pub name: String,
    pub payload: Payload,
    pub check: Check,
}

/// The handlers a run may use.
#[derive(Debug, Clone)]
pub struct Registry {
    known: Vec<Known>,
}

/// The agent's built-in handlers, each with an exact check: `echo` (the
/// payload back), `crc32c` and `sha256` (the digest), `sink` and `sleep`
/// (an empty result).
pub const BUILT_IN: [&str; 5] = ["echo", "crc32c", "sha256", "sink", "sleep"];

impl Registry {
    /// The built-in handlers.
    pub fn built_in() -> Registry {
        Registry {
            known: BUILT_IN
                .iter()
                .map(|&name| Known {
                    name: name.to_owned(),
                    payload: if name == "sleep" {
                        Payload::SleepMillis
                    } else {
                        Payload::Bytes
                    },
                    check: Check::Exact,
                })
                .collect(),
        }
    }

    /// Add handlers the loadgen cannot check (an agent's own): random
    /// payloads, any successful result is ok. A built-in name keeps its
    /// exact check.
    pub fn with_unverified<S: AsRef<str>>(mut self, names: &[S]) -> Registry {
        for name in names {
            let name = name.as_ref();
            if self.get(name).is_none() {
                self.known.push(Known {
                    name: name.to_owned(),
                    payload: Payload::Bytes,
                    check: Check::Unverified,
                });
            }
        }
        self
    }

    pub fn get(&self, name: &str) -> Option<&Known> {
        self.known.iter().find(|k| k.name == name)
    }

    /// Every name, in registry order.
    pub fn names(&self) -> Vec<&str> {
        self.known.iter().map(|k| k.name.as_str()).collect()
    }

    /// Refuse a mix that names a handler this registry does not know, with
    /// the known ones and the way to drive an agent's own handler.
    pub fn check(&self, mix: &Mix) -> Result<(), String> {
        let unknown: Vec<&str> = mix
            .entries
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.get(name).is_none())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let quoted: Vec<String> = unknown.iter().map(|n| format!("{n:?}")).collect();
        Err(format!(
            "unknown handler{} {} in --handler (known: {}); to drive a handler of the agent's \
             own without checking its results, add --handler-unverified {}",
            if unknown.len() == 1 { "" } else { "s" },
            quoted.join(", "),
            self.names().join(", "),
            unknown.join(",")
        ))
    }

    /// The exact result of `handler` on `payload`, when it is checked.
    pub fn expected_output(&self, handler: &str, payload: &[u8]) -> Option<Vec<u8>> {
        match self.get(handler) {
            Some(Known {
                check: Check::Exact,
                ..
            }) => ringworker::manager::verify::expected_output(handler, payload),
            _ => None,
        }
    }

    /// What `handler`'s tasks carry (random bytes for a name not listed).
    pub fn payload(&self, handler: &str) -> Payload {
        self.get(handler).map_or(Payload::Bytes, |k| k.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_handlers_pass_and_others_are_named_with_the_known_list() {
        let registry = Registry::built_in();
        let mix: Mix = "echo:8,crc32c:1,sha256:1,sink,sleep".parse().unwrap();
        assert_eq!(registry.check(&mix), Ok(()));
        let err = registry
            .check(&"echo,nosuch,resize:2".parse().unwrap())
            .unwrap_err();
        assert!(
            err.starts_with(r#"unknown handlers "nosuch", "resize" in --handler"#),
            "{err}"
        );
        assert!(
            err.contains("(known: echo, crc32c, sha256, sink, sleep)"),
            "{err}"
        );
        assert!(err.contains("--handler-unverified nosuch,resize"), "{err}");
        let err = registry.check(&"nosuch".parse().unwrap()).unwrap_err();
        assert!(err.starts_with(r#"unknown handler "nosuch" in"#), "{err}");
    }

    #[test]
    fn unverified_handlers_are_accepted_and_not_checked() {
        let registry = Registry::built_in().with_unverified(&["resize", "echo"]);
        assert_eq!(registry.check(&"echo,resize".parse().unwrap()), Ok(()));
        assert_eq!(registry.expected_output("resize", b"abc"), None);
        assert_eq!(
            registry.expected_output("echo", b"abc"),
            Some(b"abc".to_vec()),
            "a built-in name keeps its exact check"
        );
        assert_eq!(registry.expected_output("sink", b"abc"), Some(Vec::new()));
        assert_eq!(registry.payload("sleep"), Payload::SleepMillis);
        assert_eq!(registry.payload("resize"), Payload::Bytes);
        assert_eq!(
            registry.names(),
            ["echo", "crc32c", "sha256", "sink", "sleep", "resize"]
        );
    }
}
