//! Backoff schedules shared by every retry loop in the crate (failed batches, throttled reads,
//! lease-store errors), built on `backon`'s exponential backoff with jitter.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential backoff settings: `initial`, multiplied by `factor` after every retry, capped at
/// `max`, with random jitter of up to one extra delay so that many retrying tasks spread out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryBackoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay before jitter.
    pub max: Duration,
    /// Multiplier per retry (values below 1 are treated as 1).
    pub factor: f32,
    /// Whether to add jitter (on by default).
    pub jitter: bool,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
        }
    }
}

impl RetryBackoff {
    /// A backoff from `initial` to `max` with factor 2 and jitter.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            ..Self::default()
        }
    }

    /// An endless sequence of delays.
    pub fn schedule(&self) -> Schedule {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.initial)
            .with_max_delay(self.max.max(self.initial))
            .with_factor(if self.factor >= 1.0 { self.factor } else { 1.0 })
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        Schedule {
            inner: builder.build(),
            fallback: self.max,
        }
    }
}

/// A bounded retry: a backoff and how many attempts in all (the first included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Delays between attempts.
    pub backoff: RetryBackoff,
    /// Attempts in all, at least 1.
    pub max_attempts: u32,
}

impl RetryPolicy {
    /// `max_attempts` attempts with `backoff` between them.
    pub fn new(backoff: RetryBackoff, max_attempts: u32) -> Self {
        Self {
            backoff,
            max_attempts,
        }
    }

    /// The lease writes of a shard (checkpoints, `SHARD_END`, child leases): 50 ms doubling
    /// to 2 s, 4 attempts. A checkpoint that fails them all is reported to the caller (the
    /// processor, or the automatic cadence, which tries again at its next turn); `SHARD_END`
    /// is retried with this backoff until it is written.
    pub fn lease_writes() -> Self {
        Self::new(
            RetryBackoff::new(Duration::from_millis(50), Duration::from_secs(2)),
            4,
        )
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::lease_writes()
    }
}

/// An endless iterator of backoff delays (see [`RetryBackoff::schedule`]).
#[derive(Debug)]
pub struct Schedule {
    inner: backon::ExponentialBackoff,
    fallback: Duration,
}

impl Iterator for Schedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.inner.next().unwrap_or(self.fallback))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps_without_jitter() {
        let b = RetryBackoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            factor: 2.0,
            jitter: false,
        };
        // backon computes in f32: compare whole milliseconds.
        let delays: Vec<u128> = b.schedule().take(6).map(|d| d.as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_twice_the_delay() {
        let b = RetryBackoff::new(Duration::from_millis(10), Duration::from_millis(80));
        for (i, d) in b.schedule().take(50).enumerate() {
            let base = 10 * 2u128.pow(i.min(3) as u32);
            let ms = d.as_micros();
            assert!(
                ms + 1 >= base * 1000 && ms <= base * 2000 + 1,
                "delay {i} = {d:?}"
            );
        }
    }
}
