//! Lease coordination: how the workers of an application share the leases of a stream.
//!
//! Written once above [`LeaseTable`], so the in-memory, SQLite and DynamoDB stores behave
//! identically. Each worker runs two loops: a renewal loop (`LeaseCoordinator::renew`) and a
//! scan loop (`LeaseCoordinator::scan`), and its shard consumers write checkpoints and finally
//! release their leases through a `HeldLease` (the `held` module).
//!
//! # Renewal and fencing
//!
//! With the default [`Renewal::Heartbeat`], a worker proves it is alive by incrementing the
//! counter of its own heartbeat row every `renew_interval`; leases are written only when they
//! change hands or are checkpointed. Every lease write is conditional on the lease's counter (the
//! fencing token), which every write increments, so a worker that lost a lease can never overwrite
//! the new owner's checkpoint. A worker whose heartbeat could not be renewed for
//! [`LeaseConfig::validity`] (the failover time minus a margin) stops treating its leases as held,
//! and its consumers check that before every batch: a paused or partitioned worker stops before
//! anyone else may take over. With [`Renewal::PerLease`] each lease is renewed instead (Java KCL's
//! way, for tables shared with Java workers).
//!
//! # Expiry without trusting clocks
//!
//! A lease is expired when its owner's heartbeat row (or, for an owner without one, the lease's own
//! counter) has not changed for longer than the failover time, *as observed by this worker on its
//! own monotonic clock* (the `observer` module). No timestamp written by another host is
//! ever compared. Unowned leases are free at once.
//!
//! # Taking and balancing
//!
//! At every scan the worker decides with the `balance` module (a pure function): free (unowned, expired, or
//! in its name) leases first, longest unattended first, up to its fair share; when nothing is
//! free, it asks the most loaded worker, but only one holding at least two more leases than
//! itself, so no lease is ever passed back and forth.
//!
//! # How often: scanning at rest and while things change
//!
//! Scans are the read cost, so a worker scans every `idle_scan_interval` while the table is
//! settled and every `scan_interval` while it is not: for `settle_time` after any change of
//! membership (a heartbeat row appearing, leaving or vanishing), of owners or handoff markers, or
//! of the set of leases, and while its own handoff requests are pending. A scan is also made at
//! the exact moment an observed lease would expire, so a takeover never waits for the next idle
//! scan. Two rules make sure that whoever must react to a handoff is already scanning fast: a new
//! worker asks for leases only once its heartbeat row has been visible for an idle interval (every
//! other worker has seen it appear), and a leaving worker announces itself and keeps processing
//! for an idle interval before it hands its leases over.
//!
//! # Handoff without duplicates
//!
//! A steal is a request, not a seizure: the stealer writes itself as owner and the current owner
//! as `checkpoint_owner`. The owner sees the request in its next scan (or when its next write fails
//! its condition), finishes the batch in flight, calls `shutdown_requested(Handoff)`, checkpoints
//! and clears the marker; the stealer, polling the lease, takes it and starts exactly after that
//! checkpoint. If the owner is seen dead, or does not answer within `handoff_timeout`, the stealer
//! clears the marker itself. A graceful shutdown works the same way in the other direction: the
//! leaving worker marks its heartbeat row as leaving, lets each consumer finish and checkpoint,
//! and assigns each lease to the least loaded live worker, which finds it in its name at its next
//! scan.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::balance::{self, Candidate, Limits, Standing};
use super::config::{LeaseConfig, Renewal};
use super::held::{HeldLease, HeldStatus, HeldWriteError};
use super::liveness::{Heartbeat, Liveness};
use super::observer::Observer;
use super::{Lease, LeaseError, LeaseTable, LeaseTableExt, LeaseUpdate};

/// Counts of what a worker's lease coordination did, for status pages, tests and figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LeaseStats {
    /// Free, expired or assigned leases taken.
    pub taken: u64,
    /// Of those, leases taken because their owner was seen dead.
    pub taken_expired: u64,
    /// Handoffs this worker asked other workers for (steals).
    pub handoffs_requested: u64,
    /// Requested handoffs completed by the previous owner.
    pub handoffs_received: u64,
    /// Requested handoffs completed without the previous owner (dead, or too slow).
    pub handoffs_forced: u64,
    /// Held leases this worker found taken by someone else, or dropped because its claim went
    /// stale.
    pub lost: u64,
    /// Times this worker's claim lapsed (its heartbeat was not renewed in time) and it dropped
    /// every held lease.
    pub heartbeat_lapses: u64,
    /// Assignable leases (open, parents finished) in the last scan.
    pub assignable: usize,
    /// Leases of other workers seen expired in the last scan.
    pub expired: usize,
    /// Live workers seen in the last scan, this one included.
    pub live_workers: usize,
}

#[derive(Debug, Default)]
struct StatCounters {
    taken: AtomicU64,
    taken_expired: AtomicU64,
    handoffs_requested: AtomicU64,
    handoffs_received: AtomicU64,
    handoffs_forced: AtomicU64,
    lost: AtomicU64,
    heartbeat_lapses: AtomicU64,
    /// What the last scan saw: assignable leases, expired leases, live workers.
    last_scan: Mutex<(usize, usize, usize)>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How fast to scan: when the table last changed and when a lease may expire next.
#[derive(Debug)]
struct Pace {
    /// A digest of the table's structure (keys, owners, markers, finished, membership).
    fingerprint: u64,
    /// When the structure last changed.
    last_change: Instant,
    /// The earliest moment an observed lease of another worker may expire.
    next_expiry: Option<Instant>,
}

impl Pace {
    /// Records the structure of a scan; returns whether it changed.
    fn observe(&mut self, view: &View<'_>, now: Instant) -> bool {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for (key, lease) in &view.leases {
            (
                key,
                &lease.owner,
                &lease.checkpoint_owner,
                lease.is_finished(),
            )
                .hash(&mut hasher);
        }
        for (worker, hb) in &view.heartbeats {
            (worker, hb.owner.is_some()).hash(&mut hasher);
        }
        let fingerprint = hasher.finish();
        let changed = fingerprint != self.fingerprint;
        if changed {
            self.fingerprint = fingerprint;
            self.last_change = now;
        }
        changed
    }
}

/// A handoff this worker asked for and is waiting on.
#[derive(Clone, Debug)]
struct Pending {
    /// The owner asked to hand over.
    from: Option<String>,
    requested_at: Instant,
}

/// One scan of the table, split into leases and heartbeat rows.
struct View<'a> {
    leases: BTreeMap<&'a str, &'a Lease>,
    /// Heartbeat rows by worker id.
    heartbeats: BTreeMap<&'a str, &'a Lease>,
}

impl<'a> View<'a> {
    fn new(rows: &'a [Lease]) -> Self {
        let mut view = View {
            leases: BTreeMap::new(),
            heartbeats: BTreeMap::new(),
        };
        for row in rows {
            match row.heartbeat_of() {
                Some(worker) => view.heartbeats.insert(worker, row),
                None => view.leases.insert(row.key.as_str(), row),
            };
        }
        view
    }

    /// Whether every parent of `lease` has finished (or is gone from the table).
    fn parents_done(&self, lease: &Lease) -> bool {
        lease
            .parent_shard_ids
            .iter()
            .all(|p| self.leases.get(p.as_str()).is_none_or(|l| l.is_finished()))
    }

    /// Whether `worker` announced that it is leaving (graceful shutdown in progress).
    fn is_leaving(&self, worker: &str) -> bool {
        self.heartbeats
            .get(worker)
            .is_some_and(|hb| hb.owner.is_none())
    }
}

/// Workers whose heartbeat row disappeared while leases remain in their name.
///
/// A row that was seen and is gone means its worker left (a graceful shutdown deletes it last)
/// or stopped long ago (rows are removed after twice the failover time): either way its leases
/// need no waiting. A row is never missing from a consistent full scan while it exists, so a
/// live worker cannot land here; owners never seen with a row (Java KCL workers, per-lease
/// renewal) are judged by their lease counters instead.
#[derive(Debug, Default)]
struct Departed {
    /// Workers with a heartbeat row in the last scan.
    seen: BTreeSet<String>,
    /// Workers whose row disappeared and that still own a lease.
    gone: BTreeSet<String>,
}

impl Departed {
    fn update(&mut self, view: &View<'_>) {
        let now: BTreeSet<String> = view.heartbeats.keys().map(|w| (*w).to_owned()).collect();
        let owners: BTreeSet<&str> = view
            .leases
            .values()
            .filter_map(|l| l.owner.as_deref())
            .collect();
        let vanished: Vec<String> = self.seen.difference(&now).cloned().collect();
        self.gone.extend(vanished);
        self.gone
            .retain(|w| !now.contains(w) && owners.contains(w.as_str()));
        self.seen = now;
    }

    fn contains(&self, worker: &str) -> bool {
        self.gone.contains(worker)
    }
}

/// Renews and takes leases for one worker. See the [module docs](self).
pub(crate) struct LeaseCoordinator {
    worker_id: String,
    table: Arc<dyn LeaseTable>,
    config: LeaseConfig,
    liveness: Arc<Liveness>,
    heartbeat: Heartbeat,
    leaving: AtomicBool,
    /// Whether the current lapse of the claim was counted already.
    in_lapse: AtomicBool,
    held: Mutex<BTreeMap<String, Arc<HeldLease>>>,
    pending: Mutex<BTreeMap<String, Pending>>,
    observer: Mutex<Observer>,
    /// Live workers that are not leaving, with their loads, as of the last scan: where a
    /// graceful shutdown sends its leases.
    successors: Mutex<BTreeMap<String, usize>>,
    /// Workers whose heartbeat row was seen and has since disappeared (they left, or their row
    /// was removed as stale), with leases still in their name: those leases are free.
    departed: Mutex<Departed>,
    pace: Mutex<Pace>,
    /// Since when other workers can see this one (its first heartbeat); it asks for leases only
    /// an idle scan interval later.
    visible_since: Mutex<Option<Instant>>,
    stats: StatCounters,
}

impl std::fmt::Debug for LeaseCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseCoordinator")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaseCoordinator {
    pub(crate) fn new(worker_id: String, table: Arc<dyn LeaseTable>, config: LeaseConfig) -> Self {
        let liveness = Arc::new(Liveness::new(&worker_id, &config));
        let visible_since = (config.renewal == Renewal::PerLease).then(Instant::now);
        Self {
            worker_id,
            table,
            config,
            liveness,
            heartbeat: Heartbeat::default(),
            leaving: AtomicBool::new(false),
            in_lapse: AtomicBool::new(false),
            held: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            observer: Mutex::new(Observer::default()),
            successors: Mutex::new(BTreeMap::new()),
            departed: Mutex::new(Departed::default()),
            pace: Mutex::new(Pace {
                fingerprint: 0,
                last_change: Instant::now(),
                next_expiry: None,
            }),
            visible_since: Mutex::new(visible_since),
            stats: StatCounters::default(),
        }
    }

    pub(crate) fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// What the coordination did so far.
    pub(crate) fn stats(&self) -> LeaseStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (assignable, expired, live_workers) = *lock(&s.last_scan);
        LeaseStats {
            taken: get(&s.taken),
            taken_expired: get(&s.taken_expired),
            handoffs_requested: get(&s.handoffs_requested),
            handoffs_received: get(&s.handoffs_received),
            handoffs_forced: get(&s.handoffs_forced),
            lost: get(&s.lost),
            heartbeat_lapses: get(&s.heartbeat_lapses),
            assignable,
            expired,
            live_workers,
        }
    }

    /// The leases currently held (lost ones are dropped from the set).
    pub(crate) fn held(&self) -> Vec<Arc<HeldLease>> {
        let mut map = lock(&self.held);
        map.retain(|_, h| !h.is_lost());
        map.values().cloned().collect()
    }

    /// Forgets `held` (after release, loss or shard end), unless the key is held anew.
    pub(crate) fn forget(&self, held: &Arc<HeldLease>) {
        let mut map = lock(&self.held);
        if map.get(held.key()).is_some_and(|h| Arc::ptr_eq(h, held)) {
            map.remove(held.key());
        }
    }

    /// Whether handoffs this worker asked for are outstanding (then it polls them quickly).
    pub(crate) fn has_pending(&self) -> bool {
        !lock(&self.pending).is_empty()
    }

    /// Counts a lapse of this worker's claim, once per lapse.
    fn note_lapse(&self) {
        if !self.in_lapse.swap(true, Ordering::SeqCst) {
            bump(&self.stats.heartbeat_lapses);
        }
    }

    fn drop_all(&self, reason: &str) {
        let held = self.held();
        if !held.is_empty() {
            warn!(leases = held.len(), reason, "dropping every held lease");
        }
        for h in held {
            h.mark_lost();
            bump(&self.stats.lost);
        }
    }

    /// One renewal: the heartbeat, or every held lease. Returns whether it fully succeeded.
    pub(crate) async fn renew(&self) -> bool {
        match self.config.renewal {
            Renewal::Heartbeat => {
                // A gap longer than the validity (a pause, a partition): others may have taken
                // over already. Drop everything before renewing, so nothing is used on the
                // strength of a heartbeat written after the gap.
                if !self.liveness.is_alive() {
                    if self.liveness.ever_renewed() {
                        self.note_lapse();
                    }
                    self.drop_all("heartbeat not renewed within the failover time");
                }
                let leaving = self.leaving.load(Ordering::SeqCst);
                let sent = Instant::now();
                let epoch = self.liveness.epoch();
                match self
                    .heartbeat
                    .beat(self.table.as_ref(), &self.liveness, leaving)
                    .await
                {
                    Ok(()) => {
                        if self.liveness.epoch() != epoch {
                            // The heartbeat ended a lapse (it waited out a pause): whatever was
                            // held before is void already; say so to the consumers. The others
                            // took this worker for dead: it counts as newly joined again.
                            self.note_lapse();
                            self.drop_all("heartbeat renewed only after a lapse");
                            *lock(&self.visible_since) = Some(sent);
                        }
                        lock(&self.visible_since).get_or_insert(sent);
                        self.in_lapse.store(false, Ordering::SeqCst);
                        true
                    }
                    Err(error) => {
                        warn!(%error, "heartbeat failed; will retry");
                        false
                    }
                }
            }
            Renewal::PerLease => {
                let held = self.held();
                // A lease written (checkpointed) within half an interval needs no renewal.
                let min_age = self.config.renew_interval / 2;
                let results =
                    futures::future::join_all(held.iter().map(|h| h.renew(min_age))).await;
                let mut ok = true;
                for (h, result) in held.iter().zip(results) {
                    match result {
                        Ok(()) => {}
                        Err(HeldWriteError::Lost(key)) => {
                            info!(lease = %key, "lease lost at renewal");
                            bump(&self.stats.lost);
                        }
                        Err(HeldWriteError::Store(error)) => {
                            ok = false;
                            if h.is_valid() {
                                warn!(lease = h.key(), %error, "lease renewal failed; will retry");
                            } else {
                                warn!(lease = h.key(), %error, "could not renew within the failover time; dropping the lease");
                                h.mark_lost();
                                bump(&self.stats.lost);
                            }
                        }
                    }
                }
                ok
            }
        }
    }

    /// Scans the table: notices lost leases and handoff requests, settles the handoffs this
    /// worker asked for, and takes or asks for leases up to its fair share. Returns the leases it
    /// now holds that it did not hold before.
    pub(crate) async fn scan(&self) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        let rows = self.table.list().await?;
        let now = Instant::now();
        lock(&self.observer).observe(&rows, now);
        let view = View::new(&rows);
        lock(&self.departed).update(&view);
        lock(&self.pace).observe(&view, now);
        let next_expiry = self.next_expiry(&view);
        lock(&self.pace).next_expiry = next_expiry;

        self.reconcile_held(&view);
        let mut started = Vec::new();
        let pending: Vec<(String, Pending)> = lock(&self.pending)
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        for (key, p) in pending {
            let row = view.leases.get(key.as_str()).copied();
            let from_dead = match (row, p.from.as_deref()) {
                (Some(lease), Some(from)) => {
                    self.owner_idle(from, lease, &view, now) > self.config.failover_time
                }
                _ => false,
            };
            if let Some(held) = self.settle(&key, &p, row, from_dead, now).await {
                started.push(held);
            }
        }
        self.remember_successors(&view, now);

        let leaving = self.leaving.load(Ordering::SeqCst);
        if leaving || !self.liveness.is_alive() {
            if leaving {
                self.release_strays(&view).await;
            }
            return Ok(started);
        }

        let (candidates, live_workers) = self.candidates(&view, now);
        let expired = candidates
            .iter()
            .filter(|c| {
                c.standing == Standing::Free
                    && c.lease
                        .owner
                        .as_deref()
                        .is_some_and(|o| o != self.worker_id)
            })
            .count();
        *lock(&self.stats.last_scan) = (candidates.len(), expired, live_workers);
        let limits = Limits {
            live_workers,
            max_leases_for_worker: self.config.max_leases_for_worker,
            max_steals_per_cycle: self.config.max_steals_per_cycle,
        };
        let plan = balance::plan(&candidates, limits, |n| fastrand::usize(..n));
        // A new worker asks for leases only once every other worker has had an idle scan to see
        // it appear (and so scans fast when the request comes).
        let may_steal = lock(&self.visible_since)
            .is_some_and(|at| now.saturating_duration_since(at) >= self.config.idle_scan_interval);
        for lease in plan.take {
            let expired = lease.owner.as_deref().is_some_and(|o| o != self.worker_id);
            if let Some(held) = self.take(lease).await? {
                if expired {
                    bump(&self.stats.taken_expired);
                }
                started.push(held);
            }
        }
        if may_steal {
            for lease in plan.steal {
                self.request_handoff(lease).await?;
            }
        }
        self.remove_stale_heartbeats(&view, now).await;
        Ok(started)
    }

    /// Reads each lease this worker is waiting for and takes the ones handed over.
    pub(crate) async fn poll_pending(&self) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        let pending: Vec<(String, Pending)> = lock(&self.pending)
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        let mut started = Vec::new();
        for (key, p) in pending {
            let row = self.table.get(&key).await?;
            let now = Instant::now();
            if let Some(row) = &row {
                lock(&self.observer).observe_one(row, now);
            }
            // A single read carries no heartbeats: whether the previous owner died is left to
            // the scans; between them only a completed handoff or the timeout settles it.
            if let Some(held) = self.settle(&key, &p, row.as_ref(), false, now).await {
                started.push(held);
            }
        }
        Ok(started)
    }

    /// When to scan next: soon while the table is unsettled or handoffs are pending, at the
    /// idle interval otherwise, and never after the moment a lease may expire.
    pub(crate) fn next_scan_at(&self) -> Instant {
        let now = Instant::now();
        let pace = lock(&self.pace);
        let unsettled = self.leaving.load(Ordering::SeqCst)
            || self.has_pending()
            || now.saturating_duration_since(pace.last_change) < self.config.settle_time();
        let interval = if unsettled {
            self.config.scan_interval
        } else {
            self.config.idle_scan_interval
        };
        let next = now + interval;
        match pace.next_expiry {
            // Only a moment still ahead: a deadline already passed was handled by this scan.
            Some(expiry) if expiry > now && expiry < next => expiry,
            _ => next,
        }
    }

    /// The earliest moment a lease of another live worker, as observed, may expire.
    fn next_expiry(&self, view: &View<'_>) -> Option<Instant> {
        let observer = lock(&self.observer);
        let departed = lock(&self.departed);
        // Expired strictly after the failover time: look a millisecond later.
        let deadline = |key: &str| {
            observer
                .since(key)
                .map(|since| since + self.config.failover_time + Duration::from_millis(1))
        };
        let mut next: Option<Instant> = None;
        for lease in view.leases.values() {
            let Some(owner) = lease.owner.as_deref() else {
                continue;
            };
            if owner == self.worker_id || lease.is_finished() || departed.contains(owner) {
                continue;
            }
            let key = match view.heartbeats.get(owner) {
                Some(hb) => hb.key.as_str(),
                None => lease.key.as_str(),
            };
            if let Some(at) = deadline(key) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next.filter(|at| *at > Instant::now())
    }

    /// How long, as this worker observed, the row `key` has not changed (zero if never seen).
    pub(crate) fn quiet_for(&self, key: &str) -> Duration {
        lock(&self.observer).unchanged_for(key, Instant::now())
    }

    /// Tests: pretend the other workers have seen this one long enough for it to ask for leases.
    #[cfg(test)]
    pub(crate) fn backdate_visibility(&self) {
        let at = Instant::now()
            .checked_sub(self.config.idle_scan_interval)
            .unwrap_or_else(Instant::now);
        *lock(&self.visible_since) = Some(at);
    }

    /// Whether a live worker that is not leaving can take this worker's leases.
    pub(crate) fn has_successors(&self) -> bool {
        !lock(&self.successors).is_empty()
    }

    /// Where a gracefully stopping worker sends `key`: the least loaded live worker that is not
    /// leaving, or `None` (release it unowned).
    pub(crate) fn successor_for(&self, key: &str) -> Option<String> {
        let mut successors = lock(&self.successors);
        let best = successors
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(w, _)| w.clone())?;
        if let Some(load) = successors.get_mut(&best) {
            *load += 1;
        }
        debug!(lease = key, successor = %best, "handing the lease to a live worker");
        Some(best)
    }

    /// Starts a graceful shutdown: the heartbeat row says "leaving", so other workers stop
    /// counting this one and never hand it leases; no lease is taken from now on.
    pub(crate) async fn begin_leaving(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        if self.config.renewal == Renewal::Heartbeat
            && let Err(error) = self
                .heartbeat
                .beat(self.table.as_ref(), &self.liveness, true)
                .await
        {
            warn!(%error, "could not announce the shutdown; continuing");
        }
        // A fresh view of who is live and staying, taken after the announcement: two workers
        // leaving together each see the other leaving in at least one direction, and a worker
        // that left a moment ago is not chosen as a successor.
        if let Err(error) = self.scan().await {
            debug!(%error, "scan at the start of the shutdown failed");
        }
    }

    /// Ends the worker's participation: lets go of whatever is still held or in its name and
    /// deletes its heartbeat row.
    pub(crate) async fn finish(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        for held in self.held() {
            let successor = self.successor_for(held.key());
            if let Err(error) = held.release(successor.as_deref()).await {
                debug!(lease = held.key(), %error, "release at shutdown failed");
            }
        }
        match self.table.list().await {
            Ok(rows) => {
                let view = View::new(&rows);
                self.release_strays(&view).await;
                self.return_pending(&view).await;
            }
            Err(error) => debug!(%error, "final scan failed"),
        }
        lock(&self.pending).clear();
        if let Err(error) = self.heartbeat.remove(self.table.as_ref()).await {
            warn!(%error, "could not delete the heartbeat row; others will see it expire");
        }
    }

    /// Marks held leases lost that the table shows taken, and notes handoff requests.
    fn reconcile_held(&self, view: &View<'_>) {
        for held in self.held() {
            match view.leases.get(held.key()) {
                Some(lease) if lease.is_owned_by(&self.worker_id) => {}
                Some(lease) if lease.checkpoint_owner.as_deref() == Some(&self.worker_id) => {
                    if held.status() == HeldStatus::Held {
                        info!(lease = held.key(), new_owner = ?lease.owner, "handoff requested");
                    }
                    held.note_handoff_requested();
                }
                Some(lease) => {
                    info!(lease = held.key(), new_owner = ?lease.owner, "lease taken by another worker");
                    held.mark_lost();
                    bump(&self.stats.lost);
                }
                None => {
                    info!(lease = held.key(), "lease deleted from the table");
                    held.mark_lost();
                    bump(&self.stats.lost);
                }
            }
        }
    }

    /// How long the owner of `lease` (its heartbeat, else the lease itself) looks unattended;
    /// forever for an owner that departed.
    fn owner_idle(&self, owner: &str, lease: &Lease, view: &View<'_>, now: Instant) -> Duration {
        if lock(&self.departed).contains(owner) {
            return Duration::MAX;
        }
        let observer = lock(&self.observer);
        match view.heartbeats.get(owner) {
            Some(hb) => observer.unchanged_for(&hb.key, now),
            None => observer.unchanged_for(&lease.key, now),
        }
    }

    /// Classifies every assignable lease and counts the live workers.
    fn candidates<'a>(&self, view: &View<'a>, now: Instant) -> (Vec<Candidate<'a>>, usize) {
        let held: BTreeSet<String> = self.held().iter().map(|h| h.key().to_owned()).collect();
        let mut live: BTreeSet<&str> = BTreeSet::new();
        for (worker, hb) in &view.heartbeats {
            let idle = lock(&self.observer).unchanged_for(&hb.key, now);
            if idle <= self.config.failover_time && hb.owner.is_some() {
                live.insert(worker);
            }
        }
        let mut candidates = Vec::new();
        for lease in view.leases.values() {
            if lease.is_finished() || !view.parents_done(lease) {
                continue;
            }
            let (standing, idle_for) = match lease.owner.as_deref() {
                _ if held.contains(&lease.key) || lock(&self.pending).contains_key(&lease.key) => {
                    (Standing::Mine, Duration::ZERO)
                }
                None => (
                    Standing::Free,
                    lock(&self.observer).unchanged_for(&lease.key, now),
                ),
                Some(owner) if owner == self.worker_id => {
                    if lease.checkpoint_owner.is_some() {
                        // A handoff asked for by an earlier run of this worker: wait for it.
                        lock(&self.pending).insert(
                            lease.key.clone(),
                            Pending {
                                from: lease.checkpoint_owner.clone(),
                                requested_at: now,
                            },
                        );
                        (Standing::Mine, Duration::ZERO)
                    } else {
                        (Standing::Free, Duration::ZERO)
                    }
                }
                Some(owner) => {
                    let idle = self.owner_idle(owner, lease, view, now);
                    if idle > self.config.failover_time {
                        (Standing::Free, idle)
                    } else if view.is_leaving(owner) {
                        (Standing::Settled(owner), idle)
                    } else {
                        live.insert(owner);
                        if lease.checkpoint_owner.is_some() {
                            (Standing::Settled(owner), idle)
                        } else {
                            (Standing::Owned(owner), idle)
                        }
                    }
                }
            };
            candidates.push(Candidate {
                lease,
                standing,
                idle_for,
            });
        }
        live.insert(&self.worker_id);
        (candidates, live.len())
    }

    async fn take(&self, lease: &Lease) -> Result<Option<Arc<HeldLease>>, LeaseError> {
        let sent = Instant::now();
        match self.table.take(lease, &self.worker_id).await {
            Ok(taken) => {
                debug!(lease = %taken.key, previous = ?lease.owner, "took lease");
                bump(&self.stats.taken);
                Ok(Some(self.hold(taken, sent)))
            }
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => {
                debug!(lease = %lease.key, "lost the race to take lease");
                Ok(None)
            }
            Err(error) if error.is_retryable() => {
                warn!(lease = %lease.key, %error, "could not take lease; will retry");
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    fn hold(&self, lease: Lease, written_at: Instant) -> Arc<HeldLease> {
        let held = HeldLease::new(self.table.clone(), lease, self.liveness.clone(), written_at);
        lock(&self.held).insert(held.key().to_owned(), held.clone());
        held
    }

    async fn request_handoff(&self, lease: &Lease) -> Result<(), LeaseError> {
        match self.table.request_handoff(lease, &self.worker_id).await {
            Ok(_) => {
                info!(lease = %lease.key, from = ?lease.owner, "asked for lease (rebalancing)");
                bump(&self.stats.handoffs_requested);
                lock(&self.pending).insert(
                    lease.key.clone(),
                    Pending {
                        from: lease.owner.clone(),
                        requested_at: Instant::now(),
                    },
                );
                Ok(())
            }
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => Ok(()),
            Err(error) if error.is_retryable() => {
                warn!(lease = %lease.key, %error, "could not ask for lease; will retry");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    /// Decides a handoff this worker waits for, given the lease as just read.
    async fn settle(
        &self,
        key: &str,
        pending: &Pending,
        row: Option<&Lease>,
        from_dead: bool,
        now: Instant,
    ) -> Option<Arc<HeldLease>> {
        let forget = || {
            lock(&self.pending).remove(key);
        };
        let Some(lease) = row else {
            forget();
            return None;
        };
        if !lease.is_owned_by(&self.worker_id) || lease.is_finished() {
            debug!(lease = key, owner = ?lease.owner, "handoff no longer pending");
            forget();
            return None;
        }
        let handed_over = lease.checkpoint_owner.is_none();
        if !handed_over {
            let timed_out =
                now.saturating_duration_since(pending.requested_at) >= self.config.handoff_timeout;
            if !(timed_out || from_dead) {
                return None;
            }
            warn!(lease = key, from = ?pending.from, timed_out, "previous owner did not hand over; taking the lease");
        }
        // Take it with a write of our own: a fresh counter and a fresh proof of life.
        let sent = Instant::now();
        let update = if handed_over {
            LeaseUpdate::take(lease, &self.worker_id)
        } else {
            LeaseUpdate::hand_over()
        };
        match self.table.write_reconciled(lease, &update).await {
            Ok(written) => {
                forget();
                if handed_over {
                    bump(&self.stats.handoffs_received);
                } else {
                    bump(&self.stats.handoffs_forced);
                }
                Some(self.hold(written, sent))
            }
            Err(error) => {
                debug!(lease = key, %error, "could not complete the handoff yet");
                None
            }
        }
    }

    /// Records the live workers that are not leaving and their loads (for graceful handoffs).
    /// Only workers whose heartbeat moved within a renewal interval (plus a scan) count, so a
    /// lease is not sent to a worker that died a moment ago.
    fn remember_successors(&self, view: &View<'_>, now: Instant) {
        let fresh = self.config.renew_interval + self.config.idle_scan_interval;
        let mut successors: BTreeMap<String, usize> = BTreeMap::new();
        {
            let observer = lock(&self.observer);
            for (worker, hb) in &view.heartbeats {
                if *worker != self.worker_id
                    && hb.owner.is_some()
                    && observer.unchanged_for(&hb.key, now) <= fresh
                {
                    successors.insert((*worker).to_owned(), 0);
                }
            }
        }
        for lease in view.leases.values() {
            if lease.is_finished() {
                continue;
            }
            if let Some(owner) = lease.owner.as_deref()
                && let Some(load) = successors.get_mut(owner)
            {
                *load += 1;
            }
        }
        if self.config.renewal == Renewal::PerLease && view.heartbeats.is_empty() {
            // No heartbeat rows (Java-style renewal everywhere): owners seen renewing count.
            let observer = lock(&self.observer);
            for lease in view.leases.values() {
                if let Some(owner) = lease.owner.as_deref()
                    && owner != self.worker_id
                    && !lease.is_finished()
                    && observer.unchanged_for(&lease.key, now) <= fresh
                {
                    *successors.entry(owner.to_owned()).or_default() += 1;
                }
            }
        }
        *lock(&self.successors) = successors;
    }

    /// While leaving: leases in this worker's name that it does not hold (handed to it after it
    /// decided to leave) go on to a live worker, or become unowned.
    async fn release_strays(&self, view: &View<'_>) {
        let held: BTreeSet<String> = self.held().iter().map(|h| h.key().to_owned()).collect();
        for lease in view.leases.values() {
            // Finished leases stay with their last owner, as Java KCL leaves them. A lease whose
            // handoff to this worker is still under way is left until it completes (the previous
            // owner is finishing a batch: passing the lease on now could start a third worker
            // beside it); completed, it is held and passed on at the end.
            if !lease.is_owned_by(&self.worker_id)
                || held.contains(&lease.key)
                || lease.is_finished()
                || lease.checkpoint_owner.is_some()
            {
                continue;
            }
            let successor = self.successor_for(&lease.key);
            let update = LeaseUpdate::release(lease, successor.as_deref());
            if let Err(error) = self.table.write_reconciled(lease, &update).await {
                debug!(lease = %lease.key, %error, "could not pass on a lease while leaving");
            }
        }
    }

    /// At the very end of a shutdown: handoffs asked for and still not completed go back to the
    /// worker that was asked, the marker still naming it (it keeps processing; its next write
    /// adopts the lease again).
    async fn return_pending(&self, view: &View<'_>) {
        for lease in view.leases.values() {
            let Some(previous) = lease.checkpoint_owner.as_deref() else {
                continue;
            };
            if !lease.is_owned_by(&self.worker_id) {
                continue;
            }
            // Back in the previous owner's name, the marker still naming it: it never stopped
            // holding the lease, and its next write adopts it and clears the marker.
            let update = LeaseUpdate {
                owner: Some(Some(previous.to_owned())),
                increment_owner_switches: true,
                ..LeaseUpdate::default()
            };
            match self.table.write_reconciled(lease, &update).await {
                Ok(_) => {
                    debug!(lease = %lease.key, to = previous, "returned a handoff not completed")
                }
                Err(error) => {
                    debug!(lease = %lease.key, %error, "could not return a pending handoff")
                }
            }
        }
    }

    /// Deletes heartbeat rows of workers that stopped long ago (twice the failover time), so
    /// worker churn does not grow the table. Conditional on the counter seen, so a worker that
    /// comes back in the meantime keeps its row.
    async fn remove_stale_heartbeats(&self, view: &View<'_>, now: Instant) {
        let stale: Vec<&Lease> = {
            let observer = lock(&self.observer);
            view.heartbeats
                .iter()
                .filter(|(w, _)| **w != self.worker_id)
                .filter(|(_, hb)| {
                    observer.unchanged_for(&hb.key, now) > 2 * self.config.failover_time
                })
                .map(|(_, hb)| *hb)
                .collect()
        };
        for hb in stale {
            match self.table.delete(&hb.key, &hb.expectation()).await {
                Ok(()) => info!(row = %hb.key, "removed the heartbeat row of a stopped worker"),
                Err(error) => {
                    debug!(row = %hb.key, %error, "could not remove a stale heartbeat row")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
