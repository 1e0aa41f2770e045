//! The handlers the loadgen can drive, and how it checks each one's results.
//!
//! A `--handler` mix may name only handlers listed here, so that a typo is a
//! usage error at start rather than a run of `unknown_handler` failures.
//! A handler of an agent's own (one it registers or declares in its config,
//! and advertises in HELLO's `handlers`) is driven in one of two ways:
//!
//! - `--handler-as NAME=BUILTIN` when it computes what a built-in computes
//!   (a declared `cat` is `echo`, a worker returning the SHA-256 digest is
//!   `sha256`): its tasks carry the built-in's payloads and every result is
//!   compared byte for byte with the built-in's output, computed up front;
//! - `--handler-unverified NAME` otherwise: random `--payload` bytes, any
//!   successful RESULT counts as ok.
//!
//! The registry is a value, so a later version can add what an agent
//! advertises before the run starts.

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
    /// Compared byte for byte with what the built-in `like` outputs for the
    /// same payload, computed up front (`like` is the handler itself for a
    /// built-in).
    Exact { like: &'static str },
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

/// The payload a built-in's tasks carry.
fn built_in_payload(name: &str) -> Payload {
    if name == "sleep" {
        Payload::SleepMillis
    } else {
        Payload::Bytes
    }
}

/// `--handler-as NAME=BUILTIN`: the agent's handler `NAME` computes what the
/// built-in `BUILTIN` computes, so its results are checked exactly as that
/// built-in's.
///
/// ```
/// use ringworker_loadgen::handlers::HandlerAs;
/// let upper: HandlerAs = "hash=sha256".parse().unwrap();
/// assert_eq!((upper.name.as_str(), upper.like), ("hash", "sha256"));
/// assert!("hash=md5".parse::<HandlerAs>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerAs {
    pub name: String,
    /// One of [`BUILT_IN`].
    pub like: &'static str,
}

impl std::str::FromStr for HandlerAs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let built_ins = BUILT_IN.join(", ");
        let Some((name, like)) = text.split_once('=') else {
            return Err(format!(
                "expected NAME=BUILTIN, e.g. my-cat=echo (BUILTIN: {built_ins})"
            ));
        };
        let (name, like) = (name.trim(), like.trim());
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "handler name {name:?} is not 1..=64 printable ASCII characters"
            ));
        }
        let Some(&like) = BUILT_IN.iter().find(|&&b| b == like) else {
            return Err(format!(
                "unknown built-in {like:?} after {name}= (built-ins: {built_ins})"
            ));
        };
        if BUILT_IN.contains(&name) {
            return Err(format!(
                "{name} is a built-in handler itself, always checked as {name}; \
                 --handler-as names a handler of the agent's own"
            ));
        }
        Ok(HandlerAs {
            name: name.to_owned(),
            like,
        })
    }
}

impl Registry {
    /// The built-in handlers.
    pub fn built_in() -> Registry {
        Registry {
            known: BUILT_IN
                .iter()
                .map(|&name| Known {
                    name: name.to_owned(),
                    payload: built_in_payload(name),
                    check: Check::Exact { like: name },
                })
                .collect(),
        }
    }

    /// The registry of a run: the built-ins, the handlers of `--handler-as`
    /// (checked as their built-in) and of `--handler-unverified`. A name
    /// given twice with different meanings is refused.
    pub fn for_run<S: AsRef<str>>(
        unverified: &[S],
        like: &[HandlerAs],
    ) -> Result<Registry, String> {
        let mut registry = Registry::built_in();
        for entry in like {
            match registry.get(&entry.name) {
                Some(Known {
                    check: Check::Exact { like },
                    ..
                }) if *like == entry.like => continue,
                Some(Known {
                    check: Check::Exact { like },
                    ..
                }) => {
                    return Err(format!(
                        "--handler-as gives {name} twice: as {like} and as {other}",
                        name = entry.name,
                        other = entry.like
                    ))
                }
                _ => {}
            }
            registry.known.push(Known {
                name: entry.name.clone(),
                payload: built_in_payload(entry.like),
                check: Check::Exact { like: entry.like },
            });
        }
        for name in unverified {
            let name = name.as_ref();
            if let Some(entry) = like.iter().find(|entry| entry.name == name) {
                return Err(format!(
                    "{name} is given both with --handler-unverified and with --handler-as \
                     {name}={}; keep one",
                    entry.like
                ));
            }
        }
        Ok(registry.with_unverified(unverified))
    }

    /// Add handlers the loadgen cannot check (an agent's own): random
    /// payloads, any successful result is ok. A known name keeps its
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
    /// the known ones and the ways to drive an agent's own handler.
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
        let like: Vec<String> = unknown.iter().map(|n| format!("{n}=BUILTIN")).collect();
        Err(format!(
            "unknown handler{} {} in --handler (known: {}); to drive a handler of the agent's \
             own without checking its results, add --handler-unverified {}; to check it \
             exactly when it computes what a built-in does, add --handler-as {}",
            if unknown.len() == 1 { "" } else { "s" },
            quoted.join(", "),
            self.names().join(", "),
            unknown.join(","),
            like.join(",")
        ))
    }

    /// The exact result of `handler` on `payload`, when it is checked.
    pub fn expected_output(&self, handler: &str, payload: &[u8]) -> Option<Vec<u8>> {
        match self.get(handler) {
            Some(Known {
                check: Check::Exact { like },
                ..
            }) => ringworker::manager::verify::expected_output(like, payload),
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

    #[test]
    fn the_unknown_handler_error_names_both_ways_to_drive_an_own_handler() {
        let err = Registry::built_in()
            .check(&"resize,thumb".parse().unwrap())
            .unwrap_err();
        assert!(err.contains("--handler-unverified resize,thumb"), "{err}");
        assert!(
            err.ends_with("--handler-as resize=BUILTIN,thumb=BUILTIN"),
            "{err}"
        );
    }

    #[test]
    fn handler_as_parses_name_and_built_in() {
        let parsed: HandlerAs = " my-cat = echo ".parse().unwrap();
        assert_eq!(
            parsed,
            HandlerAs {
                name: "my-cat".into(),
                like: "echo"
            }
        );
        for built_in in BUILT_IN {
            let parsed: HandlerAs = format!("h={built_in}").parse().unwrap();
            assert_eq!(parsed.like, built_in);
        }
        // Only the first `=` splits: the rest is the built-in's name.
        let err = "a=b=echo".parse::<HandlerAs>().unwrap_err();
        assert!(err.starts_with(r#"unknown built-in "b=echo""#), "{err}");
    }

    #[test]
    fn handler_as_refuses_an_unknown_built_in_and_malformed_values() {
        assert_eq!(
            "resize=md5".parse::<HandlerAs>(),
            Err(r#"unknown built-in "md5" after resize= (built-ins: echo, crc32c, sha256, sink, sleep)"#
                .to_owned())
        );
        assert_eq!(
            "resize".parse::<HandlerAs>(),
            Err("expected NAME=BUILTIN, e.g. my-cat=echo (BUILTIN: echo, crc32c, sha256, sink, sleep)"
                .to_owned())
        );
        let err = "=echo".parse::<HandlerAs>().unwrap_err();
        assert!(err.starts_with(r#"handler name """#), "{err}");
        let err = "bad name=echo".parse::<HandlerAs>().unwrap_err();
        assert!(err.starts_with(r#"handler name "bad name""#), "{err}");
        let err = "resize=".parse::<HandlerAs>().unwrap_err();
        assert!(err.starts_with(r#"unknown built-in """#), "{err}");
        let err = "sha256=echo".parse::<HandlerAs>().unwrap_err();
        assert!(
            err.starts_with("sha256 is a built-in handler itself"),
            "{err}"
        );
    }

    #[test]
    fn a_handler_as_a_built_in_is_checked_exactly_as_that_built_in() {
        let like: Vec<HandlerAs> = ["my-cat=echo", "hash=sha256", "crc=crc32c", "nap=sleep"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let registry = Registry::for_run::<&str>(&[], &like).unwrap();
        assert_eq!(
            registry.check(&"my-cat:3,hash,crc,nap,echo".parse().unwrap()),
            Ok(())
        );
        let payload = b"The quick brown fox";
        assert_eq!(
            registry.expected_output("my-cat", payload),
            Some(payload.to_vec())
        );
        let digest = registry.expected_output("hash", payload).unwrap();
        assert_eq!(digest.len(), 32);
        assert_eq!(Some(digest), registry.expected_output("sha256", payload));
        assert_eq!(
            registry.expected_output("crc", b"123456789"),
            Some(0xE306_9283u32.to_be_bytes().to_vec())
        );
        assert_eq!(
            registry.expected_output("nap", &5u32.to_be_bytes()),
            Some(Vec::new())
        );
        assert_eq!(registry.payload("nap"), Payload::SleepMillis);
        assert_eq!(registry.payload("hash"), Payload::Bytes);
        assert_eq!(
            registry.get("hash").map(|k| k.check),
            Some(Check::Exact { like: "sha256" })
        );
    }

    #[test]
    fn a_name_given_two_meanings_is_refused() {
        let a: HandlerAs = "h=echo".parse().unwrap();
        let b: HandlerAs = "h=sha256".parse().unwrap();
        assert!(Registry::for_run::<&str>(&[], &[a.clone(), a.clone()]).is_ok());
        assert_eq!(
            Registry::for_run::<&str>(&[], &[a.clone(), b]).unwrap_err(),
            "--handler-as gives h twice: as echo and as sha256"
        );
        assert_eq!(
            Registry::for_run(&["h"], &[a]).unwrap_err(),
            "h is given both with --handler-unverified and with --handler-as h=echo; keep one"
        );
        let registry = Registry::for_run(&["resize"], &[]).unwrap();
        assert_eq!(
            registry.get("resize").map(|k| k.check),
            Some(Check::Unverified)
        );
    }
}
