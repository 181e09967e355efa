//! Lease coordination: renewing the leases a worker holds and taking leases from the table.
//!
//! Written once above [`LeaseTable`], so every store behaves the same.
//!
//! - **Held leases** ([`HeldLease`]): one per shard this worker owns, shared by the renewer and the
//!   shard's checkpointer. Every write to a held lease goes through one async mutex, so a renewal
//!   and a checkpoint of the same lease never race each other into a spurious condition failure.
//! - **Renewal**: every `renew_interval` each held lease is renewed conditional on its counter. A
//!   failed condition means another worker took it: the lease is marked lost at once. A lease that
//!   could not be renewed (store errors) for longer than `failover_time` is also marked lost: the
//!   worker stops treating it as held before anyone else may consider it expired. A checkpoint
//!   counts as a renewal (it bumps the counter), so a busy shard is not renewed twice.
//! - **Expiry without trusting clocks**: the taker never reads another host's timestamps. For every
//!   lease it remembers when, on its own monotonic clock, it last saw the counter change; a lease
//!   whose counter has not moved for longer than `failover_time` is expired. Unowned leases are
//!   available at once.
//! - **Taking**: available leases (unowned, or expired) are taken oldest first, up to the worker's
//!   fair share `ceil(active leases / live workers)`, capped by `max_leases_for_worker`. Finished
//!   (`SHARD_END`) leases are never counted or taken, so closed shards cannot starve open ones, and a
//!   child whose parents have not all finished is not taken.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Lease, LeaseError, LeaseTable, LeaseTableExt, LeaseUpdate};

/// Timing and limits of lease coordination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long a lease's counter may stay unchanged before other workers consider it expired
    /// (Java KCL `failoverTimeMillis`, default 10 s).
    pub failover_time: Duration,
    /// How often held leases are renewed (default `failover_time / 3`).
    pub renew_interval: Duration,
    /// How often the lease table is scanned to take leases (default 2 s).
    pub take_interval: Duration,
    /// The most leases one worker holds (default unlimited).
    pub max_leases_for_worker: usize,
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
            renew_interval: failover_time / 3,
            take_interval: Duration::from_secs(2).min(failover_time / 2),
            max_leases_for_worker: usize::MAX,
        }
    }
}

struct HeldState {
    lease: Lease,
    /// When the last successful write to this lease was sent.
    last_write: Instant,
}

/// A lease this worker holds, shared by the renewer and the shard's checkpointer.
pub(crate) struct HeldLease {
    key: String,
    pub(crate) table: Arc<dyn LeaseTable>,
    state: tokio::sync::Mutex<HeldState>,
    lost: watch::Sender<bool>,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("key", &self.key)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// The outcome of a write to a held lease.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeldWriteError {
    /// The lease is no longer ours.
    #[error("lease {0} is no longer held")]
    Lost(String),
    /// The store failed; the lease may still be held.
    #[error(transparent)]
    Store(LeaseError),
}

impl HeldLease {
    pub(crate) fn new(table: Arc<dyn LeaseTable>, lease: Lease, last_write: Instant) -> Arc<Self> {
        let (lost, _) = watch::channel(false);
        Arc::new(Self {
            key: lease.key.clone(),
            table,
            state: tokio::sync::Mutex::new(HeldState { lease, last_write }),
            lost,
        })
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    pub(crate) fn mark_lost(&self) {
        self.lost.send_replace(true);
    }

    /// Resolves when the lease is marked lost.
    pub(crate) fn lost_signal(&self) -> watch::Receiver<bool> {
        self.lost.subscribe()
    }

    pub(crate) async fn lease(&self) -> Lease {
        self.state.lock().await.lease.clone()
    }

    /// Applies `update` to the held lease, conditional on the counter we hold.
    pub(crate) async fn write(&self, update: &LeaseUpdate) -> Result<Lease, HeldWriteError> {
        let mut state = self.state.lock().await;
        if self.is_lost() {
            return Err(HeldWriteError::Lost(self.key.clone()));
        }
        let sent = Instant::now();
        match self.table.write_reconciled(&state.lease, update).await {
            Ok(lease) => {
                state.lease = lease.clone();
                state.last_write = sent;
                Ok(lease)
            }
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => {
                self.mark_lost();
                Err(HeldWriteError::Lost(self.key.clone()))
            }
            Err(other) => Err(HeldWriteError::Store(other)),
        }
    }

    /// Renews unless a write happened within `min_age`; marks the lease lost when it could not be
    /// renewed for `failover_time`.
    async fn renew(&self, min_age: Duration, failover_time: Duration) {
        {
            let state = self.state.lock().await;
            if state.last_write.elapsed() < min_age {
                return;
            }
        }
        match self.write(&LeaseUpdate::default()).await {
            Ok(_) => {}
            Err(HeldWriteError::Lost(key)) => info!(lease = %key, "lease lost at renewal"),
            Err(HeldWriteError::Store(error)) => {
                let state = self.state.lock().await;
                if state.last_write.elapsed() >= failover_time {
                    warn!(lease = %self.key, %error, "could not renew for the failover time; dropping lease");
                    self.mark_lost();
                } else {
                    warn!(lease = %self.key, %error, "lease renewal failed; will retry");
                }
            }
        }
    }

    /// Releases the lease so another worker can take it at once.
    pub(crate) async fn release(&self) -> Result<(), HeldWriteError> {
        let mut state = self.state.lock().await;
        if self.is_lost() {
            return Err(HeldWriteError::Lost(self.key.clone()));
        }
        let result = self.table.release(&state.lease).await;
        // Whatever happened, we no longer treat the lease as ours.
        self.mark_lost();
        match result {
            Ok(lease) => {
                state.lease = lease;
                Ok(())
            }
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => {
                Err(HeldWriteError::Lost(self.key.clone()))
            }
            Err(other) => Err(HeldWriteError::Store(other)),
        }
    }
}

/// What the taker remembers of a lease between scans.
#[derive(Clone, Debug)]
struct Observation {
    counter: u64,
    owner: Option<String>,
    /// When (on our clock) we first saw this counter value.
    since: Instant,
}

/// Renews and takes leases for one worker.
pub(crate) struct LeaseCoordinator {
    worker_id: String,
    table: Arc<dyn LeaseTable>,
    config: LeaseConfig,
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    observed: Mutex<HashMap<String, Observation>>,
}

impl std::fmt::Debug for LeaseCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseCoordinator")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

/// The result of one taker scan.
#[derive(Debug, Default)]
pub(crate) struct ScanResult {
    /// Every lease in the table, as read.
    pub leases: Vec<Lease>,
    /// Leases newly taken.
    pub taken: Vec<Arc<HeldLease>>,
}

impl LeaseCoordinator {
    pub(crate) fn new(worker_id: String, table: Arc<dyn LeaseTable>, config: LeaseConfig) -> Self {
        Self {
            worker_id,
            table,
            config,
            held: Mutex::new(BTreeMap::new()),
            observed: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<HeldLease>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The leases currently held (lost ones are dropped from the set).
    pub(crate) fn held(&self) -> Vec<Arc<HeldLease>> {
        let mut map = self.held_map();
        map.retain(|_, h| !h.is_lost());
        map.values().cloned().collect()
    }

    /// Forgets a lease (after release, loss or shard end).
    pub(crate) fn forget(&self, key: &str) {
        self.held_map().remove(key);
    }

    /// Renews every held lease once, concurrently.
    pub(crate) async fn renew_all(&self) {
        let held = self.held();
        // A lease written (checkpointed) within the last renew interval needs no renewal.
        let min_age = self.config.renew_interval / 2;
        let failover = self.config.failover_time;
        futures::future::join_all(held.iter().map(|h| h.renew(min_age, failover))).await;
    }

    /// Scans the table, updates expiry observations and takes available leases up to the fair
    /// share.
    pub(crate) async fn scan_and_take(&self) -> Result<ScanResult, LeaseError> {
        let leases = self.table.list().await?;
        let now = Instant::now();
        let by_key: HashMap<&str, &Lease> = leases.iter().map(|l| (l.key.as_str(), l)).collect();

        // 1. Update observations: remember when each counter value was first seen.
        let expired: HashSet<String> = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            observed.retain(|k, _| by_key.contains_key(k.as_str()));
            let mut expired = HashSet::new();
            for lease in &leases {
                let entry = observed
                    .entry(lease.key.clone())
                    .or_insert_with(|| Observation {
                        counter: lease.counter,
                        owner: lease.owner.clone(),
                        since: now,
                    });
                if entry.counter != lease.counter || entry.owner != lease.owner {
                    *entry = Observation {
                        counter: lease.counter,
                        owner: lease.owner.clone(),
                        since: now,
                    };
                }
                if lease.owner.is_some()
                    && now.saturating_duration_since(entry.since) > self.config.failover_time
                {
                    expired.insert(lease.key.clone());
                }
            }
            expired
        };

        // 2. Which leases are active (unfinished) and which may be started.
        let parents_done = |lease: &Lease| {
            lease
                .parent_shard_ids
                .iter()
                .all(|p| match by_key.get(p.as_str()) {
                    Some(parent) => parent.is_finished(),
                    None => true,
                })
        };
        let active: Vec<&Lease> = leases.iter().filter(|l| !l.is_finished()).collect();
        let held_keys: HashSet<String> = self.held().iter().map(|h| h.key.clone()).collect();

        // Live workers: owners of unexpired active leases, plus us.
        let mut workers: HashSet<&str> = active
            .iter()
            .filter(|l| !expired.contains(&l.key))
            .filter_map(|l| l.owner.as_deref())
            .collect();
        workers.insert(&self.worker_id);
        let target = active
            .len()
            .div_ceil(workers.len().max(1))
            .min(self.config.max_leases_for_worker);

        let mine = active.iter().filter(|l| held_keys.contains(&l.key)).count();
        let mut result = ScanResult::default();
        if mine >= target {
            result.leases = leases.clone();
            return Ok(result);
        }
        let mut available: Vec<&Lease> = active
            .iter()
            .copied()
            .filter(|l| !held_keys.contains(&l.key))
            .filter(|l| {
                l.owner.is_none() || expired.contains(&l.key) || l.is_owned_by(&self.worker_id)
            })
            .filter(|l| parents_done(l))
            .collect();
        // Oldest first: the lease whose counter has been still the longest.
        {
            let observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            available.sort_by_key(|l| {
                (
                    l.owner.is_some(),
                    observed.get(&l.key).map(|o| o.since),
                    l.key.clone(),
                )
            });
        }
        let want = target - mine;
        for lease in available.into_iter().take(want) {
            let sent = Instant::now();
            match self.table.take(lease, &self.worker_id).await {
                Ok(taken) => {
                    debug!(lease = %taken.key, previous = ?lease.owner, "took lease");
                    let held = HeldLease::new(self.table.clone(), taken, sent);
                    self.held_map().insert(held.key.clone(), held.clone());
                    result.taken.push(held);
                }
                Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => {
                    debug!(lease = %lease.key, "lost the race to take lease");
                }
                Err(error) if error.is_retryable() => {
                    warn!(lease = %lease.key, %error, "could not take lease; will retry");
                }
                Err(error) => return Err(error),
            }
        }
        result.leases = leases;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::InMemoryLeaseTable;
    use crate::record::ExtendedSequenceNumber;

    async fn table_with(keys: &[&str]) -> Arc<dyn LeaseTable> {
        let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
        for key in keys {
            table
                .create_if_absent(&Lease::new(*key, ExtendedSequenceNumber::TrimHorizon))
                .await
                .unwrap();
        }
        table
    }

    fn config() -> LeaseConfig {
        LeaseConfig::with_failover(Duration::from_secs(10))
    }

    #[tokio::test(start_paused = true)]
    async fn takes_unowned_leases_up_to_the_fair_share() {
        let table = table_with(&["a", "b", "c", "d"]).await;
        let w1 = LeaseCoordinator::new("w1".into(), table.clone(), config());
        let w2 = LeaseCoordinator::new("w2".into(), table.clone(), config());
        // Alone, w1 takes everything.
        assert_eq!(w1.scan_and_take().await.unwrap().taken.len(), 4);
        assert_eq!(w2.scan_and_take().await.unwrap().taken.len(), 0);
        // w1 releases two: w2 sees two workers, fair share 2, takes the two free ones.
        for held in w1.held().into_iter().take(2) {
            held.release().await.unwrap();
        }
        assert_eq!(w2.scan_and_take().await.unwrap().taken.len(), 2);
        assert_eq!(w1.held().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_observed_on_the_local_clock() {
        let table = table_with(&["a"]).await;
        let dead = LeaseCoordinator::new("dead".into(), table.clone(), config());
        dead.scan_and_take().await.unwrap();
        let w = LeaseCoordinator::new("w".into(), table.clone(), config());
        // First sighting: not expired, however old the lease really is.
        assert!(w.scan_and_take().await.unwrap().taken.is_empty());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(w.scan_and_take().await.unwrap().taken.is_empty());
        // The owner renews: the counter moves, the observation restarts.
        dead.renew_all().await;
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(w.scan_and_take().await.unwrap().taken.is_empty());
        // Silence for longer than the failover time: expired, taken.
        tokio::time::advance(Duration::from_secs(11)).await;
        let taken = w.scan_and_take().await.unwrap().taken;
        assert_eq!(taken.len(), 1);
        let lease = table.get("a").await.unwrap().unwrap();
        assert_eq!(lease.owner.as_deref(), Some("w"));
        assert_eq!(lease.owner_switches_since_checkpoint, 2);
        // The old owner's renewal now fails and it drops the lease.
        dead.renew_all().await;
        assert!(dead.held().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn finished_leases_and_blocked_children_are_not_taken() {
        let table = table_with(&[]).await;
        let mut parent = Lease::new("parent", ExtendedSequenceNumber::TrimHorizon);
        parent.owner = Some("other".into());
        table.create_if_absent(&parent).await.unwrap();
        let child =
            Lease::new("child", ExtendedSequenceNumber::TrimHorizon).with_parents(["parent"]);
        table.create_if_absent(&child).await.unwrap();
        let done = Lease::new("done", ExtendedSequenceNumber::ShardEnd);
        table.create_if_absent(&done).await.unwrap();
        let w = LeaseCoordinator::new("w".into(), table.clone(), config());
        let taken = w.scan_and_take().await.unwrap().taken;
        assert!(taken.is_empty(), "took {:?}", taken);
        // Parent finishes: the child becomes available.
        let p = table.get("parent").await.unwrap().unwrap();
        table.take(&p, "other").await.unwrap();
        let p = table.get("parent").await.unwrap().unwrap();
        table
            .checkpoint(&p, ExtendedSequenceNumber::ShardEnd)
            .await
            .unwrap();
        let taken = w.scan_and_take().await.unwrap().taken;
        assert_eq!(taken.iter().map(|h| h.key()).collect::<Vec<_>>(), ["child"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_cannot_be_renewed_for_the_failover_time_is_dropped() {
        #[derive(Debug)]
        struct Failing(Arc<dyn LeaseTable>, std::sync::atomic::AtomicBool);
        #[async_trait::async_trait]
        impl LeaseTable for Failing {
            async fn create_if_absent(&self, l: &Lease) -> Result<bool, LeaseError> {
                self.0.create_if_absent(l).await
            }
            async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
                self.0.list().await
            }
            async fn get(&self, k: &str) -> Result<Option<Lease>, LeaseError> {
                self.0.get(k).await
            }
            async fn update(
                &self,
                k: &str,
                e: &super::super::Expectation,
                u: &LeaseUpdate,
            ) -> Result<Lease, LeaseError> {
                if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(LeaseError::Unavailable("injected".into()));
                }
                self.0.update(k, e, u).await
            }
            async fn delete(
                &self,
                k: &str,
                e: &super::super::Expectation,
            ) -> Result<(), LeaseError> {
                self.0.delete(k, e).await
            }
        }
        let inner = table_with(&["a"]).await;
        let failing = Arc::new(Failing(inner, false.into()));
        let table: Arc<dyn LeaseTable> = failing.clone();
        let w = LeaseCoordinator::new("w".into(), table, config());
        w.scan_and_take().await.unwrap();
        failing.1.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.renew_all().await;
        assert_eq!(
            w.held().len(),
            1,
            "a failed renewal within the failover time keeps the lease"
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        w.renew_all().await;
        assert!(
            w.held().is_empty(),
            "past the failover time the lease is dropped"
        );
    }
}
