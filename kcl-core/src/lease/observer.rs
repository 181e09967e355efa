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

use super::{Lease, WORKER_KEY_PREFIX};

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
        self.observe_where(rows, now, |_| true);
    }

    /// Records a scan of the whole table taken at `now`, keeping only the rows `keep` selects
    /// (the others, and rows that disappeared, are forgotten: if they matter later, they count
    /// from then on).
    pub(crate) fn observe_where(
        &mut self,
        rows: &[Lease],
        now: Instant,
        keep: impl Fn(&Lease) -> bool,
    ) {
        let mut next = BTreeMap::new();
        for row in rows.iter().filter(|row| keep(row)) {
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

    /// Records a read of the heartbeat rows alone taken at `now`: updates those rows and forgets
    /// heartbeat rows that disappeared; lease rows are left as they were.
    pub(crate) fn observe_workers(&mut self, rows: &[Lease], now: Instant) {
        let present: std::collections::BTreeSet<&str> =
            rows.iter().map(|row| row.key.as_str()).collect();
        self.seen
            .retain(|key, _| !key.starts_with(WORKER_KEY_PREFIX) || present.contains(key.as_str()));
        for row in rows {
            self.observe_one(row, now);
        }
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
        // A read of the heartbeat rows alone leaves lease rows alone and forgets vanished
        // heartbeat rows.
        let mut hb = Lease::worker_heartbeat("w");
        hb.counter = 9;
        observer.observe_one(&hb, t0);
        observer.observe_workers(&[], t1);
        assert_eq!(observer.unchanged_for(&hb.key, t1), Duration::ZERO);
        assert_eq!(observer.unchanged_for("b", t1), Duration::from_secs(4));
        observer.observe_workers(std::slice::from_ref(&hb), t0);
        observer.observe_workers(std::slice::from_ref(&hb), t1);
        assert_eq!(observer.unchanged_for(&hb.key, t1), Duration::from_secs(4));
        // A filtered scan forgets what it does not keep.
        observer.observe_where(&[row("b", 1), row("c", 1)], t1, |l| l.key == "c");
        assert_eq!(observer.since("b"), None);
        assert_eq!(observer.since("c"), Some(t0), "kept as first seen");
    }
}
