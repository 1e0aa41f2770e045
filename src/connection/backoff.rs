//! The delay between dial attempts: exponential back-off with full jitter,
//! reset once a connection has stayed up. No clock and no sleeping here: the
//! runtime asks for the next delay and waits it out its own way.

use std::time::Duration;

use rand::Rng;

/// Exponential back-off with full jitter between dial attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The base delay (`--reconnect-min`).
    pub min: Duration,
    /// The cap (`--reconnect-max`).
    pub max: Duration,
    /// A connection that stayed up this long resets the back-off.
    pub stable_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// The delay before each redial of one session.
///
/// The n-th consecutive retry (n from 1) waits a uniformly random time in
/// `[0, min(max, min * 2^n)]`: the cap is applied first, then the jitter, so
/// many sessions that lose their manager together spread out instead of
/// redialling in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: ReconnectPolicy,
    attempt: u32,
}

impl Backoff {
    pub fn new(policy: ReconnectPolicy) -> Self {
        Backoff { policy, attempt: 0 }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn next_cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt + 1).unwrap_or(u32::MAX);
        self.policy
            .min
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }

    /// The delay before the next dial; each call backs off further.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let cap = self.next_cap();
        self.attempt = self.attempt.saturating_add(1).min(31);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// The connection was up for `uptime`: reset when it was stable.
    pub fn connection_ended(&mut self, uptime: Duration) {
        if uptime >= self.policy.stable_after {
            self.attempt = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_caps_before_jitter_and_grows_to_the_max() {
        let policy = ReconnectPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            stable_after: Duration::from_secs(10),
        };
        let mut backoff = Backoff::new(policy);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut caps = Vec::new();
        for _ in 0..8 {
            let cap = backoff.next_cap();
            let delay = backoff.next_delay(&mut rng);
            assert!(delay <= cap);
            caps.push(cap.as_millis());
        }
        assert_eq!(caps, [200, 400, 800, 1600, 2000, 2000, 2000, 2000]);
        backoff.connection_ended(Duration::from_secs(1));
        assert_eq!(
            backoff.next_cap().as_millis(),
            2000,
            "a short connection keeps backing off"
        );
        backoff.connection_ended(Duration::from_secs(10));
        assert_eq!(
            backoff.next_cap().as_millis(),
            200,
            "a stable connection resets"
        );
    }

    #[test]
    fn backoff_never_overflows() {
        let mut backoff = Backoff::new(ReconnectPolicy {
            min: Duration::from_secs(3600),
            max: Duration::from_secs(30),
            stable_after: Duration::from_secs(1),
        });
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..100 {
            assert!(backoff.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }
}
