//! Shard sync by one worker: the sync leader.
//!
//! With [`Renewal::Heartbeat`] only the sync leader lists shards, creates leases, removes
//! finished ones and audits the balance: the live, non-leaving worker with the smallest id in the
//! membership this worker reads, once it has been visible for an idle interval (workers starting
//! together then all see each other first). It syncs every `shard_sync_interval` and as soon as
//! it becomes leader, so a leader's death delays shard sync by at most the failover time (the time
//! for the others to see its heartbeat stop). The other workers only check, from what they
//! already read, whether they have become leader. Two workers briefly both leading (their views
//! differ) cost a duplicated attempt: creation is `create_if_absent`, removal conditional.
//!
//! New leases are created in the name of a live worker, the least loaded first (round-robin at
//! start-up), and each worker that received some is poked: from an empty table every lease is
//! created once, by one worker, and the fleet is balanced within one lease per worker.
//!
//! With [`Renewal::PerLease`] there is no membership: every worker syncs, as Java KCL's workers
//! do, and creates leases unowned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{LeaseCoordinator, Renewal, bump, lock};
use crate::backend::StreamBackend;
use crate::lease::membership;
use crate::shard_sync::{
    ShardSyncError, SyncReport, SyncTarget, remove_finished_from, sync_shards_from,
};

/// What this worker knows of its shard-sync duty.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// Whether it led at its last check.
    leading: bool,
    /// When it last synced.
    last_sync: Option<Instant>,
}

/// What a call of `sync_shards` did.
#[derive(Debug)]
pub(crate) enum SyncOutcome {
    /// Not this worker's duty now: check again then.
    NotMine(Instant),
    /// Synced: what was created, and the streams whose sync failed (the others were synced).
    Synced(SyncReport, Vec<(String, ShardSyncError)>),
}

/// Whether to sync now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SyncDuty {
    /// This worker leads and its sync is due.
    Now,
    /// Check again then.
    NotBefore(Instant),
}

impl LeaseCoordinator {
    /// Whether this worker should sync shards now (`interval`: the worker's shard sync interval).
    pub(crate) fn sync_duty(&self, interval: Duration) -> SyncDuty {
        let now = Instant::now();
        let idle = self.config.idle_scan_interval;
        let mut state = lock(&self.sync);
        let due = |state: &SyncState| match state.last_sync {
            Some(at) if at + interval > now => SyncDuty::NotBefore(at + interval),
            _ => SyncDuty::Now,
        };
        if self.config.renewal == Renewal::PerLease {
            return due(&state);
        }
        if self.leaving.load(Ordering::SeqCst) || !self.liveness.is_alive() {
            state.leading = false;
            return SyncDuty::NotBefore(now + idle);
        }
        let Some(visible) = *lock(&self.visible_since) else {
            return SyncDuty::NotBefore(now + idle);
        };
        if now < visible + idle {
            return SyncDuty::NotBefore(visible + idle);
        }
        let observer = lock(&self.observer);
        let watch = lock(&self.watch);
        let live =
            watch
                .membership
                .live(&self.worker_id, &observer, self.config.failover_time, now);
        let leads = membership::sync_leader(&live) == Some(self.worker_id.as_str());
        drop((watch, observer));
        if !leads {
            state.leading = false;
            return SyncDuty::NotBefore(now + idle);
        }
        if !state.leading {
            // Just became leader: sync at once (the previous leader may have died).
            info!("leading shard sync");
            state.leading = true;
            return SyncDuty::Now;
        }
        due(&state)
    }

    /// Syncs shards if it is this worker's duty (see the module docs): lists the shards,
    /// creates the missing leases in live workers' names, pokes them, removes finished leases and
    /// audits the balance. A failure of the sync itself is returned (the worker retries with
    /// backoff); a failed removal is logged and retried at the next sync.
    pub(crate) async fn sync_shards(
        &self,
        backend: &dyn StreamBackend,
        targets: &[SyncTarget],
        interval: Duration,
    ) -> Result<SyncOutcome, ShardSyncError> {
        if let SyncDuty::NotBefore(at) = self.sync_duty(interval) {
            return Ok(SyncOutcome::NotMine(at));
        }
        let rows = self.table.list().await?;
        bump(&self.stats.full_scans);
        let heartbeat = self.config.renewal == Renewal::Heartbeat;
        if heartbeat {
            // Act on the read like any full read, auditing the balance, and learn the loads.
            if let Err(error) = self.act_on(&rows, true).await {
                debug!(%error, "shard sync: acting on the read failed");
            }
        }
        // New leases go to the least loaded live workers (this one included), counting the
        // leases of every stream together.
        let mut loads: BTreeMap<String, usize> = if heartbeat {
            lock(&self.watch).loads.clone()
        } else {
            BTreeMap::new()
        };
        let mut receivers: BTreeSet<String> = BTreeSet::new();
        let mut assign = || -> Option<String> {
            if !heartbeat {
                return None;
            }
            let best = super::least_loaded(&loads)?;
            if let Some(load) = loads.get_mut(&best) {
                *load += 1;
            }
            receivers.insert(best.clone());
            Some(best)
        };
        let mut report = SyncReport::default();
        let mut failures = Vec::new();
        for target in targets {
            match sync_shards_from(
                backend,
                self.table.as_ref(),
                &target.stream,
                &target.naming,
                target.initial,
                &rows,
                &mut assign,
            )
            .await
            {
                Ok(one) => {
                    report.created.extend(one.created);
                    report.shards += one.shards;
                }
                Err(error) => failures.push((target.stream.clone(), error)),
            }
        }
        if heartbeat {
            // Also after a partial failure: some leases may have been created in their names.
            self.poker.poke_all(receivers).await;
        }
        report.created.sort();
        if failures.is_empty() {
            // A failed stream makes the worker retry with backoff: the duty stays due.
            lock(&self.sync).last_sync = Some(Instant::now());
        }
        if !report.created.is_empty() {
            self.stats
                .created
                .fetch_add(report.created.len() as u64, Ordering::Relaxed);
        }
        let grace = self.config.failover_time * 2;
        let settled = |lease: &crate::lease::Lease| self.quiet_for(&lease.key) > grace;
        for target in targets {
            match remove_finished_from(self.table.as_ref(), &target.naming, &rows, settled).await {
                Ok(removed) if !removed.is_empty() => debug!(?removed, "removed finished leases"),
                Ok(_) => {}
                Err(error) => warn!(%error, "removing finished leases failed; will retry"),
            }
        }
        Ok(SyncOutcome::Synced(report, failures))
    }
}
