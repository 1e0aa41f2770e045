//! What the loadgen sends: a weighted handler mix, payload sizes, and a pool
//! of payloads with their expected results computed once up front, so that
//! checking a RESULT is a comparison and sending a TASK copies bytes that
//! already exist.

use rand::{Rng, SeedableRng};

use crate::handlers::{self, Registry};

/// Handlers and their relative weights, e.g. `echo:8,crc32c:1,sha256:1`.
///
/// ```
/// use ringworker_loadgen::workload::Mix;
/// let mix: Mix = "echo:8,crc32c:1,sha256".parse().unwrap();
/// assert_eq!(mix.entries[0], ("echo".to_string(), 8));
/// assert_eq!(mix.entries[2], ("sha256".to_string(), 1));
/// assert!("echo:lots".parse::<Mix>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    pub entries: Vec<(String, u32)>,
}

impl std::str::FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut entries = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once(':') {
                Some((name, weight)) => (
                    name,
                    weight.parse::<u32>().map_err(|_| {
                        format!("weight {weight:?} in {part:?} is not a whole number")
                    })?,
                ),
                None => (part, 1),
            };
            if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(format!(
                    "handler name {name:?} is not 1..=64 printable ASCII characters"
                ));
            }
            if weight > 0 {
                entries.push((name.to_owned(), weight));
            }
        }
        if entries.is_empty() {
            return Err("the handler mix is empty".to_owned());
        }
        Ok(Mix { entries })
    }
}

/// Payload sizes: `64`, or a range `64..4096` drawn with the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSpec {
    pub min: usize,
    pub max: usize,
}

impl std::str::FromStr for PayloadSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = |s: &str| -> Result<usize, String> {
            s.trim()
                .parse::<ringworker::config::ByteSize>()
                .map(|b| b.0 as usize)
        };
        PayloadSpec::parse_with(text, "payload range", parse)
    }
}

impl PayloadSpec {
    /// `A`, `A..B` or `A..=B`, each end read by `end`. A range whose end is
    /// below its start is refused as "`{what} {text:?} is empty`".
    pub fn parse_with(
        text: &str,
        what: &str,
        end: impl Fn(&str) -> Result<usize, String>,
    ) -> Result<PayloadSpec, String> {
        let (min, max) = match text.split_once("..") {
            Some((a, b)) => (end(a)?, end(b.trim_start_matches('='))?),
            None => {
                let n = end(text)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("{what} {text:?} is empty"));
        }
        Ok(PayloadSpec { min, max })
    }
}

/// One prepared task: handler index, payload, the expected output (`None`
/// when it cannot be predicted, e.g. a user handler: any output passes).
#[derive(Debug)]
pub struct Prepared {
    pub handler: usize,
    pub payload: Vec<u8>,
    pub expected: Option<Vec<u8>>,
}

/// Prepared tasks, drawn from in order of a seeded sequence.
#[derive(Debug)]
pub struct Pool {
    pub handlers: Vec<String>,
    pub tasks: Vec<Prepared>,
    /// Task indexes laid out by weight; a task picks `order[i % len]`.
    pub order: Vec<u32>,
}

/// Memory the pool may use for payloads: small enough to stay in a core's
/// L2 cache, as `iperf3`'s one buffer does. With 64 payloads of 1 MiB,
/// every send read cold memory and the loadgen, not the agent, was what
/// limited 1 MiB runs; with 8 (8 MiB), a 1 MiB sink ran at 4,977 MiB/s
/// against 5,340 with 2 (medians of 5 alternating runs, the loadgen at 188
/// against 177 µs of CPU per MiB). Payloads up to 32 KiB still get all 64.
const POOL_BUDGET: usize = 2 * 1024 * 1024;

impl Pool {
    /// Build a pool for `mix` and `payload` (`sleep_ms` for the `sleep`
    /// handler's milliseconds); reproducible for a given `seed`. The
    /// built-in handlers are checked exactly; other names are not checked.
    pub fn new(mix: &Mix, payload: PayloadSpec, sleep_ms: PayloadSpec, seed: u64) -> Pool {
        Pool::with_registry(&Registry::built_in(), mix, payload, sleep_ms, seed)
    }

    /// As [`Pool::new`], with the payloads and checks of `registry`.
    pub fn with_registry(
        registry: &Registry,
        mix: &Mix,
        payload: PayloadSpec,
        sleep_ms: PayloadSpec,
        seed: u64,
    ) -> Pool {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let handlers: Vec<String> = mix.entries.iter().map(|(n, _)| n.clone()).collect();
        let per_handler = (POOL_BUDGET / payload.max.max(1) / handlers.len()).clamp(1, 64);
        let mut tasks = Vec::new();
        for (handler, name) in handlers.iter().enumerate() {
            for _ in 0..per_handler {
                let body: Vec<u8> = if registry.payload(name) == handlers::Payload::SleepMillis {
                    let ms = rng.random_range(sleep_ms.min..=sleep_ms.max);
                    let ms = u32::try_from(ms).unwrap_or(u32::MAX).min(60_000);
                    ms.to_be_bytes().to_vec()
                } else {
                    let len = rng.random_range(payload.min..=payload.max);
                    let mut bytes = vec![0u8; len];
                    rng.fill(&mut bytes[..]);
                    bytes
                };
                let expected = registry.expected_output(name, &body);
                tasks.push(Prepared {
                    handler,
                    payload: body,
                    expected,
                });
            }
        }
        // Weighted order: each handler's tasks appear `weight` times per round.
        let mut order = Vec::new();
        for (handler, (_, weight)) in mix.entries.iter().enumerate() {
            for i in 0..per_handler * *weight as usize {
                order.push((handler * per_handler + i % per_handler) as u32);
            }
        }
        // Shuffle deterministically so handlers interleave.
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        Pool {
            handlers,
            tasks,
            order,
        }
    }

    /// Bytes of task `task`'s TASK frame on the wire: header, the handler
    /// name's length byte and name, the payload.
    pub fn task_frame_len(&self, task: u32) -> u64 {
        self.tasks.get(task as usize).map_or(0, |t| {
            (ringworker::protocol::HEADER_LEN
                + 1
                + self.handlers[t.handler].len()
                + t.payload.len()) as u64
        })
    }

    /// The task for sequence number `n`.
    pub fn pick(&self, n: u64) -> u32 {
        self.order[(n % self.order.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_weights_and_refuses_nonsense() {
        let mix: Mix = "echo:8, crc32c:1,sha256".parse().unwrap();
        assert_eq!(
            mix.entries,
            [
                ("echo".into(), 8),
                ("crc32c".into(), 1),
                ("sha256".into(), 1)
            ]
        );
        assert!("echo:x".parse::<Mix>().is_err());
        assert!("".parse::<Mix>().is_err());
        assert!("bad name:1".parse::<Mix>().is_err());
    }

    #[test]
    fn payload_specs() {
        assert_eq!(
            "64".parse::<PayloadSpec>(),
            Ok(PayloadSpec { min: 64, max: 64 })
        );
        assert_eq!(
            "1MiB".parse::<PayloadSpec>(),
            Ok(PayloadSpec {
                min: 1 << 20,
                max: 1 << 20
            })
        );
        assert_eq!(
            "16..4KiB".parse::<PayloadSpec>(),
            Ok(PayloadSpec { min: 16, max: 4096 })
        );
        assert_eq!(
            "16..=4KiB".parse::<PayloadSpec>(),
            Ok(PayloadSpec { min: 16, max: 4096 })
        );
        assert_eq!(
            "9..3".parse::<PayloadSpec>(),
            Err("payload range \"9..3\" is empty".to_owned())
        );
    }

    #[test]
    fn pool_is_reproducible_and_weighted() {
        let mix: Mix = "echo:3,sha256:1".parse().unwrap();
        let a = Pool::new(&mix, "8..64".parse().unwrap(), "1..2".parse().unwrap(), 42);
        let b = Pool::new(&mix, "8..64".parse().unwrap(), "1..2".parse().unwrap(), 42);
        assert_eq!(a.order, b.order);
        assert_eq!(a.tasks[5].payload, b.tasks[5].payload);
        let echo = a
            .order
            .iter()
            .filter(|&&i| a.tasks[i as usize].handler == 0)
            .count();
        assert_eq!(echo, 3 * (a.order.len() - echo));
        for task in &a.tasks {
            assert!((8..=64).contains(&task.payload.len()));
            assert!(task.expected.is_some());
        }
    }
}
