//! Throughput limiters: token buckets for bytes and records, a sliding window for call rates.
//!
//! All time comes from the caller (tokio's clock), so a paused test clock drives them exactly.
//! Buckets hold at most one second of their rate and refill continuously.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

const NANOS_PER_SECOND: i128 = 1_000_000_000;

/// A token bucket holding at most one second of `rate`, refilled continuously.
///
/// The level is kept in unit-nanoseconds so refilling never loses fractions. It may go negative
/// (see [`TokenBucket::charge`]): a debt repaid by later refills.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: i128,
    level: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` units per second.
    pub(crate) fn new(rate: u64, now: Instant) -> Self {
        let rate = i128::from(rate);
        Self {
            rate,
            level: rate * NANOS_PER_SECOND,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = i128::try_from(now.saturating_duration_since(self.last).as_nanos())
            .unwrap_or(i128::MAX / 4);
        let full = self.rate * NANOS_PER_SECOND;
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(full);
        if now > self.last {
            self.last = now;
        }
    }

    /// Whether `units` are available now (nothing is taken).
    pub(crate) fn has(&mut self, units: u64, now: Instant) -> bool {
        self.refill(now);
        self.level >= i128::from(units) * NANOS_PER_SECOND
    }

    /// Whether the bucket is not in debt and holds at least one unit.
    pub(crate) fn has_credit(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= NANOS_PER_SECOND
    }

    /// Whole units available (0 when empty or in debt), as of the last refill.
    pub(crate) fn level_units(&self) -> u64 {
        u64::try_from(self.level / NANOS_PER_SECOND).unwrap_or(0)
    }

    /// Time until the bucket holds one unit again, as of the last refill.
    pub(crate) fn time_until_credit(&self) -> Duration {
        let missing = NANOS_PER_SECOND - self.level;
        if missing <= 0 || self.rate <= 0 {
            return Duration::ZERO;
        }
        // `missing` unit-nanoseconds at `rate` units per second take missing / rate nanoseconds.
        let nanos = (missing + self.rate - 1) / self.rate;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `units`, possibly going into debt.
    pub(crate) fn charge(&mut self, units: u64) {
        self.level = self
            .level
            .saturating_sub(i128::from(units) * NANOS_PER_SECOND);
    }
}

/// Allows at most `max` calls in any one-second window.
#[derive(Debug, Clone)]
pub(crate) struct CallWindow {
    max: usize,
    calls: VecDeque<Instant>,
}

impl CallWindow {
    /// A window allowing `max` calls per second.
    pub(crate) fn new(max: u32) -> Self {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        Self {
            max,
            calls: VecDeque::with_capacity(max.min(64)),
        }
    }

    /// Whether a call now is allowed (nothing is recorded).
    pub(crate) fn allows(&mut self, now: Instant) -> bool {
        while let Some(&first) = self.calls.front() {
            if now.saturating_duration_since(first) >= Duration::from_secs(1) {
                self.calls.pop_front();
            } else {
                break;
            }
        }
        self.calls.len() < self.max
    }

    /// Records a call made now.
    pub(crate) fn record(&mut self, now: Instant) {
        self.calls.push_back(now);
    }
}

/// The write limits of one shard: records per second and bytes per second.
#[derive(Debug, Clone)]
pub(crate) struct WriteLimiter {
    records: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl WriteLimiter {
    /// Limiter with the given rates (`None`: unlimited).
    pub(crate) fn new(bytes: Option<u64>, records: Option<u64>, now: Instant) -> Self {
        Self {
            records: records.map(|r| TokenBucket::new(r, now)),
            bytes: bytes.map(|b| TokenBucket::new(b, now)),
        }
    }

    /// Admits one record of `size` bytes, or says which limit it exceeds.
    pub(crate) fn admit(&mut self, size: u64, now: Instant) -> Result<(), &'static str> {
        if let Some(records) = &mut self.records
            && !records.has(1, now)
        {
            return Err("records per second");
        }
        if let Some(bytes) = &mut self.bytes
            && !bytes.has(size, now)
        {
            return Err("bytes per second");
        }
        if let Some(records) = &mut self.records {
            records.charge(1);
        }
        if let Some(bytes) = &mut self.bytes {
            bytes.charge(size);
        }
        Ok(())
    }
}

/// The `GetRecords` limits of one shard, shared by every reader: calls per second and bytes per
/// second.
///
/// The byte limit is a bucket that may go into debt, which is how Kinesis behaves: a call is
/// refused only while the bucket is empty or in debt; an admitted call returns everything that
/// fits the per-call caps and charges its bytes afterwards. So one 10 MiB call is allowed and the
/// following calls are throttled until the debt is repaid (about 4 s at 2 MiB/s).
#[derive(Debug, Clone)]
pub(crate) struct ReadLimiter {
    calls: Option<CallWindow>,
    bytes: Option<TokenBucket>,
}

impl ReadLimiter {
    /// Limiter with the given rates (`None`: unlimited).
    pub(crate) fn new(calls: Option<u32>, bytes: Option<u64>, now: Instant) -> Self {
        Self {
            calls: calls.map(CallWindow::new),
            bytes: bytes.map(|b| TokenBucket::new(b, now)),
        }
    }

    /// Admits one call now (and counts it), or says which limit refuses it.
    pub(crate) fn admit(&mut self, now: Instant) -> Result<(), &'static str> {
        if let Some(calls) = &mut self.calls
            && !calls.allows(now)
        {
            return Err("GetRecords calls per second");
        }
        if let Some(bytes) = &mut self.bytes
            && !bytes.has_credit(now)
        {
            return Err("GetRecords bytes per second");
        }
        if let Some(calls) = &mut self.calls {
            calls.record(now);
        }
        Ok(())
    }

    /// Charges the bytes an admitted call returned.
    pub(crate) fn charge(&mut self, bytes: u64) {
        if let Some(bucket) = &mut self.bytes {
            bucket.charge(bytes);
        }
    }
}
