//! The worst-case memory a configuration lets a manager make the agent hold.

use std::fmt;

use super::{Config, RuntimeChoice};

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
}

/// The machine's memory (`MemTotal` of `/proc/meminfo`), bytes.
pub(super) fn memory_total() -> Option<u64> {
    let value = proc_value("/proc/meminfo", "MemTotal")?;
    let kib: u64 = value.trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// The value of the `key: value` line of a `/proc` file such as
/// `/proc/meminfo` or `/proc/self/status`, trimmed; `None` if the file
/// cannot be read or has no such line.
pub(super) fn proc_value(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))?;
    Some(value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::super::tests::args;
    use super::super::{ByteSize, Settings, MAX_IN_FLIGHT, MAX_MAX_BODY};
    use super::*;

    #[test]
    fn proc_values_are_found_by_their_key() {
        let total = proc_value("/proc/meminfo", "MemTotal").expect("a MemTotal line");
        assert!(total.ends_with(" kB"), "{total}");
        assert!(memory_total().is_some_and(|bytes| bytes > 0));
        assert_eq!(proc_value("/proc/meminfo", "MemTota"), None);
        assert_eq!(proc_value("/proc/no-such-file", "MemTotal"), None);
    }

    #[test]
    fn the_memory_bound_follows_the_limits_and_the_limits_are_capped() {
        let mut flags = args(Some("tcp://127.0.0.1:7000"));
        flags.threads = Some(2);
        flags.runtime = Some(RuntimeChoice::Uring);
        let config = Config::merge(&flags, Settings::default()).unwrap();
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
        let many = Config::merge(&flags, Settings::default())
            .unwrap()
            .memory_bound();
        assert_eq!(many.shared, 0);
        assert_eq!(many.total, 1000 * bound.per_session);
        flags.max_in_flight = Some(MAX_IN_FLIGHT + 1);
        assert!(Config::merge(&flags, Settings::default()).is_err());
        flags.max_in_flight = Some(MAX_IN_FLIGHT);
        assert!(Config::merge(&flags, Settings::default()).is_ok());
        flags.max_body = Some(ByteSize(u64::from(MAX_MAX_BODY) + 1));
        let err = Config::merge(&flags, Settings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("1 GiB"), "{err}");
        // A bound past the machine's memory is warned about.
        flags.max_body = Some(ByteSize(u64::from(MAX_MAX_BODY)));
        flags.sessions = Some(100_000);
        let huge = Config::merge(&flags, Settings::default()).unwrap();
        assert!(
            huge.warnings()
                .iter()
                .any(|w| w.contains("more than this machine's")),
            "{:?}",
            huge.warnings()
        );
    }
}
