//! Lease timing and limits: [`LeaseConfig`] and how a worker proves it is alive ([`Renewal`]).
//!
//! Everything is derived from one number, the failover time: how long a lease may look untouched
//! before other workers take it. The defaults follow Java KCL where it matters for compatibility
//! (10 s failover) and differ where Java's choice is what its users complain about or pay for (a
//! 20 s scan interval, so 20 to 40 s takeovers; no cooperative handoff; a write per lease every
//! third of the failover time). See `docs/leases.md` for the arithmetic behind them.

use std::time::Duration;

/// How a worker shows the other workers that it is alive and still holds its leases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renewal {
    /// One heartbeat row per worker, written every `renew_interval` (the default). Leases
    /// themselves are written only when they change hands or are checkpointed, so the cost is one
    /// write per worker per interval however many leases it holds. Other workers watch the
    /// heartbeat rows alone ([`LeaseTable::list_workers`](super::LeaseTable::list_workers)) and
    /// judge a lease expired when its owner's heartbeat stops changing.
    #[default]
    Heartbeat,
    /// Every held lease is renewed (its counter incremented) every `renew_interval`, as Java KCL
    /// does: one write per lease per interval, and every worker reads the whole table at the
    /// scan pace. Use it while Java KCL workers share the same table (a rolling migration),
    /// because they only understand per-lease counters.
    PerLease,
}

/// Timing and limits of lease coordination.
///
/// Build it with [`LeaseConfig::with_failover`] (or [`Default`], 10 s) and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseConfig {
    /// How long a worker's heartbeat (or, for owners without one, a lease's counter) may stay
    /// unchanged before other workers consider its leases expired (Java KCL `failoverTimeMillis`,
    /// default 10 s). Measured by each observer on its own monotonic clock.
    pub failover_time: Duration,
    /// How the worker renews its claim ([`Renewal::Heartbeat`] by default).
    pub renewal: Renewal,
    /// How often the heartbeat (or each lease) is renewed (default `failover_time / 2`). A
    /// failed renewal is retried every [`renew_retry_interval`](Self::renew_retry_interval)
    /// until the claim lapses at [`validity`](Self::validity).
    pub renew_interval: Duration,
    /// How often a worker reads the heartbeat rows while it expects something (it was poked,
    /// just started, waits for a handoff, is leaving); with [`Renewal::PerLease`], how often it
    /// scans the table while things change (default `failover_time / 20`, 500 ms at the
    /// default failover). A handoff takes about one such read.
    pub scan_interval: Duration,
    /// How often a worker reads the heartbeat rows at rest (with [`Renewal::PerLease`]: scans
    /// the table) (default `failover_time / 6`). A read is also made exactly when a watched
    /// worker may be judged dead, so takeover after a crash takes at most `failover_time` plus
    /// one idle interval. This interval sets the read cost at rest.
    pub idle_scan_interval: Duration,
    /// The most leases one worker holds (default unlimited).
    pub max_leases_for_worker: usize,
    /// The most leases a worker asks other workers to hand over in one scan (default 32). A new
    /// worker reaches its fair share in two scans while its deficit is at most this.
    pub max_steals_per_cycle: usize,
    /// How long a worker that asked for a lease waits for the owner to hand it over before taking
    /// it without the owner's final checkpoint (default 30 s, as Java KCL 3.x). The wait ends
    /// earlier if the owner is seen dead.
    pub handoff_timeout: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self::with_failover(Duration::from_secs(10))
    }
}

impl LeaseConfig {
    /// Defaults derived from a failover time.
    pub fn with_failover(failover_time: Duration) -> Self {
        Self {
            failover_time,
            renewal: Renewal::default(),
            renew_interval: failover_time / 2,
            scan_interval: failover_time / 20,
            idle_scan_interval: failover_time / 6,
            max_leases_for_worker: usize::MAX,
            max_steals_per_cycle: 32,
            handoff_timeout: Duration::from_secs(30),
        }
    }

    /// How long before the failover time a worker stops using a lease it could not renew: a
    /// sixth of the failover time, so it has stopped before any other worker may see the lease
    /// expire even if the two clocks run at rates up to 16% apart.
    pub fn safety_margin(&self) -> Duration {
        self.failover_time / 6
    }

    /// How soon a failed renewal is tried again: an eighth of the renewal interval, so a claim
    /// survives several failed attempts in a row before it lapses.
    pub fn renew_retry_interval(&self) -> Duration {
        (self.renew_interval / 8).max(Duration::from_millis(1))
    }

    /// How long after a change the table counts as unsettled (scanned every `scan_interval`).
    pub fn settle_time(&self) -> Duration {
        self.idle_scan_interval * 2
    }

    /// How long after its last successful renewal a worker may still act on its leases.
    pub fn validity(&self) -> Duration {
        self.failover_time.saturating_sub(self.safety_margin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_failover_time() {
        let c = LeaseConfig::default();
        assert_eq!(c.failover_time, Duration::from_secs(10));
        assert_eq!(c.renewal, Renewal::Heartbeat);
        assert_eq!(c.renew_interval, Duration::from_secs(5));
        assert_eq!(c.scan_interval, Duration::from_millis(500));
        assert_eq!(
            c.idle_scan_interval,
            Duration::from_millis(1666) + Duration::from_nanos(666_666)
        );
        assert_eq!(c.max_leases_for_worker, usize::MAX);
        // A worker stops using its leases before anyone may consider them expired, and a failed
        // renewal has at least four retries before the claim lapses.
        assert!(c.validity() < c.failover_time);
        assert!(c.validity() > c.renew_interval + c.renew_retry_interval() * 4);
    }
}
