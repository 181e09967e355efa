//! What the heartbeat rows tell a worker: who is alive, who is leaving, whether it was poked,
//! whose turn it is to take over a dead worker, and who leads shard sync.
//!
//! Everything here is computed from the rows as read (possibly eventually consistent) and from
//! the [`Observer`]'s first-sighting times; nothing here acts on a lease. The coordinator uses it
//! to decide *when to read the whole table* (strongly), and decides what to do from that read.
//!
//! **The takeover ring.** The live workers, ordered by id, form a ring. A dead worker's first
//! live successor on the ring is responsible for it once its heartbeat has looked unchanged for
//! the failover time; the second one an idle interval later, and so on, so that exactly one
//! worker normally reacts to a death (a full read and the takeover), and the next one steps in if
//! that one is gone too.
//!
//! **The sync leader** is the live, non-leaving worker with the smallest id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use super::Lease;
use super::observer::Observer;

/// One worker as its heartbeat row shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    /// The heartbeat row's key.
    pub key: String,
    /// Its owner is cleared: a graceful shutdown is under way.
    pub leaving: bool,
}

/// The membership as of the last read of the heartbeat rows.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    /// Workers with a heartbeat row, by id.
    members: BTreeMap<String, Member>,
    /// When this worker first saw each worker that is leaving now.
    leaving_since: BTreeMap<String, Instant>,
    /// The highest poke count seen on this worker's own row.
    pokes_seen: Option<u64>,
    /// When this worker last noticed it was poked.
    poked_at: Option<Instant>,
}

impl Membership {
    /// Records a read of the heartbeat rows (all of them).
    pub(crate) fn update<'a>(&mut self, rows: impl IntoIterator<Item = &'a Lease>, now: Instant) {
        let mut members = BTreeMap::new();
        for row in rows {
            if let Some(worker) = row.heartbeat_of() {
                members.insert(
                    worker.to_owned(),
                    Member {
                        key: row.key.clone(),
                        leaving: row.owner.is_none(),
                    },
                );
            }
        }
        self.leaving_since
            .retain(|w, _| members.get(w).is_some_and(|m| m.leaving));
        for (worker, member) in &members {
            if member.leaving {
                self.leaving_since.entry(worker.clone()).or_insert(now);
            }
        }
        self.members = members;
    }

    /// Records the poke count of this worker's own row (from a read or a heartbeat reply);
    /// returns whether it went up since last seen. The first count seen is the baseline. A count
    /// lower than the last one means the row was created again (it was removed while this
    /// worker was paused): the new count is the baseline, and any poke on it counts.
    pub(crate) fn note_pokes(&mut self, pokes: u64, now: Instant) -> bool {
        let poked = match self.pokes_seen {
            Some(seen) if pokes == seen => false,
            Some(seen) if pokes > seen => true,
            // Created again: pokes on the new row are news.
            Some(_) => pokes > 0,
            None => false,
        };
        self.pokes_seen = Some(pokes);
        if poked {
            self.poked_at = Some(now);
        }
        poked
    }

    /// Notes that this worker was poked (or poked itself) now.
    pub(crate) fn note_poked(&mut self, now: Instant) {
        self.poked_at = Some(now);
    }

    /// Whether this worker should read fast: poked within `settle`, or poked since a worker
    /// that is still leaving began to leave (it is about to hand something over).
    pub(crate) fn expecting(&self, now: Instant, settle: Duration) -> bool {
        let Some(poked) = self.poked_at else {
            return false;
        };
        now.saturating_duration_since(poked) < settle
            || self.leaving_since.values().any(|since| *since <= poked)
    }

    /// Workers with a row, by id.
    pub(crate) fn members(&self) -> &BTreeMap<String, Member> {
        &self.members
    }

    /// The live workers: a row not leaving whose counter moved within `failover` as observed,
    /// plus `me`, sorted by id.
    pub(crate) fn live<'a>(
        &'a self,
        me: &'a str,
        observer: &Observer,
        failover: Duration,
        now: Instant,
    ) -> Vec<&'a str> {
        let mut live: BTreeSet<&str> = self
            .members
            .iter()
            .filter(|(_, m)| !m.leaving && observer.unchanged_for(&m.key, now) <= failover)
            .map(|(w, _)| w.as_str())
            .collect();
        live.insert(me);
        live.into_iter().collect()
    }
}

/// This worker's turn for `dead` on the ring of the `live` workers (sorted by id, `me`
/// included, `dead` not necessarily): 1 for its first live successor, 2 for the next, ...
/// Logarithmic in the number of workers.
pub(crate) fn ring_turn(dead: &str, me: &str, live: &[&str]) -> usize {
    let dead_is_live = live.binary_search(&dead).is_ok();
    let n = (live.len() - usize::from(dead_is_live)).max(1);
    // Indices among the live workers other than `dead`.
    let first = live.partition_point(|w| *w <= dead) - usize::from(dead_is_live);
    let mine = match live.binary_search(&me) {
        Ok(at) => at - usize::from(dead_is_live && dead < me),
        Err(_) => return n,
    };
    (mine + n - first % n) % n + 1
}

/// When it is this worker's turn to take over `dead`, first seen with its current counter at
/// `since`: the failover time after that, plus one `step` per worker before it on the ring.
pub(crate) fn turn_at(since: Instant, turn: usize, failover: Duration, step: Duration) -> Instant {
    let waits = u32::try_from(turn.saturating_sub(1)).unwrap_or(u32::MAX);
    since + failover + step.saturating_mul(waits)
}

/// The sync leader among the `live` workers (sorted by id): the first one not leaving.
pub(crate) fn sync_leader<'a>(live: &[&'a str]) -> Option<&'a str> {
    live.first().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ExtendedSequenceNumber;

    #[test]
    fn the_first_live_successor_goes_first_around_the_ring() {
        let live = ["a", "c", "e"];
        assert_eq!(ring_turn("b", "c", &live), 1);
        assert_eq!(ring_turn("b", "e", &live), 2);
        assert_eq!(ring_turn("b", "a", &live), 3);
        // Wraps around after the largest id.
        assert_eq!(ring_turn("f", "a", &live), 1);
        assert_eq!(ring_turn("f", "e", &live), 3);
        // A live worker judged as if dead: the others are ordered after it.
        assert_eq!(ring_turn("c", "e", &live), 1);
        assert_eq!(ring_turn("c", "a", &live), 2);
        // Alone: always first.
        assert_eq!(ring_turn("x", "a", &["a"]), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn pokes_leaving_and_liveness_come_from_the_rows() {
        let now = Instant::now();
        let mut m = Membership::default();
        assert!(!m.note_pokes(3, now), "the first count is the baseline");
        assert!(!m.note_pokes(3, now));
        assert!(m.note_pokes(4, now));
        assert!(m.expecting(now, Duration::from_secs(1)));
        // The row was created again: its count starts over, and a poke on it is news.
        assert!(!m.note_pokes(0, now));
        assert!(m.note_pokes(1, now));
        assert!(!m.note_pokes(1, now));
        tokio::time::advance(Duration::from_secs(2)).await;
        let later = Instant::now();
        assert!(!m.expecting(later, Duration::from_secs(1)));
        // A worker that started leaving before the poke keeps this one expecting.
        let mut leaving = Lease::worker_heartbeat("l");
        leaving.owner = None;
        let mut m = Membership::default();
        m.update([&leaving], now);
        m.note_poked(now);
        assert!(m.expecting(later, Duration::from_secs(1)));
        m.update([], later);
        assert!(!m.expecting(later, Duration::from_secs(1)));

        let mut observer = Observer::default();
        let rows = [
            Lease::worker_heartbeat("b"),
            leaving.clone(),
            Lease::new("shard", ExtendedSequenceNumber::TrimHorizon),
        ];
        observer.observe(&rows, now);
        m.update(&rows, now);
        assert_eq!(
            m.live("me", &observer, Duration::from_secs(1), now),
            ["b", "me"]
        );
        assert_eq!(
            m.live("me", &observer, Duration::from_secs(1), later),
            ["me"],
            "b's counter did not move for longer than the failover time"
        );
    }
}
