//! Other workers' liveness, observed on this worker's own monotonic clock.
//!
//! The taker never reads a timestamp written by another host. For every row of the table (leases
//! and heartbeat rows) it remembers the instant, on its own clock, at which it first saw the
//! current counter value. A row whose counter has not moved for longer than the failover time
//! belongs to a worker that stopped renewing. A worker seeing a row for the first time counts from
//! that moment, however old the row really is, so a worker that just started never takes anything
//! early.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Lease;

#[derive(Clone, Debug)]
struct Observation {
    counter: u64,
    owner: Option<String>,
    /// When (on our clock) we first saw this counter and owner.
    since: Instant,
}

/// What this worker has seen of each row, between scans.
#[derive(Debug, Default)]
pub(crate) struct Observer {
    seen: BTreeMap<String, Observation>,
}

impl Observer {
    /// Records a scan of the whole table taken at `now`; forgets rows that disappeared.
    pub(crate) fn observe(&mut self, rows: &[Lease], now: Instant) {
        let mut next = BTreeMap::new();
        for row in rows {
            let observation = match self.seen.remove(&row.key) {
                Some(seen) if seen.counter == row.counter && seen.owner == row.owner => seen,
                _ => Observation {
                    counter: row.counter,
                    owner: row.owner.clone(),
                    since: now,
                },
            };
            next.insert(row.key.clone(), observation);
        }
        self.seen = next;
    }

    /// Records one row read on its own (a `get`), without forgetting the others.
    pub(crate) fn observe_one(&mut self, row: &Lease, now: Instant) {
        let changed = self
            .seen
            .get(&row.key)
            .is_none_or(|seen| seen.counter != row.counter || seen.owner != row.owner);
        if changed {
            self.seen.insert(
                row.key.clone(),
                Observation {
                    counter: row.counter,
                    owner: row.owner.clone(),
                    since: now,
                },
            );
        }
    }

    /// When (on our clock) the row `key` was first seen as it is now.
    pub(crate) fn since(&self, key: &str) -> Option<Instant> {
        self.seen.get(key).map(|o| o.since)
    }

    /// How long the row `key` has looked unchanged (zero if never seen).
    pub(crate) fn unchanged_for(&self, key: &str, now: Instant) -> Duration {
        self.seen
            .get(key)
            .map(|o| now.saturating_duration_since(o.since))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ExtendedSequenceNumber;

    fn row(key: &str, counter: u64) -> Lease {
        let mut lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
        lease.counter = counter;
        lease.owner = Some("o".into());
        lease
    }

    #[tokio::test(start_paused = true)]
    async fn counts_from_the_first_sighting_of_each_counter_value() {
        let mut observer = Observer::default();
        let t0 = Instant::now();
        observer.observe(&[row("a", 7)], t0);
        tokio::time::advance(Duration::from_secs(4)).await;
        let t1 = Instant::now();
        observer.observe(&[row("a", 7)], t1);
        assert_eq!(observer.unchanged_for("a", t1), Duration::from_secs(4));
        // The counter moves: the clock restarts.
        observer.observe(&[row("a", 8)], t1);
        assert_eq!(observer.unchanged_for("a", t1), Duration::ZERO);
        // A row that disappears is forgotten; unknown rows are "just seen".
        observer.observe(&[], t1);
        assert_eq!(observer.unchanged_for("a", t1), Duration::ZERO);
        // A single read updates one row only.
        observer.observe(&[row("b", 1)], t0);
        observer.observe_one(&row("c", 1), t0);
        assert_eq!(observer.unchanged_for("b", t1), Duration::from_secs(4));
        observer.observe_one(&row("b", 1), t1);
        assert_eq!(observer.unchanged_for("b", t1), Duration::from_secs(4));
    }
}
