//! Lease coordination: how the workers of an application share the leases of a stream.
//!
//! Written once above [`LeaseTable`], so the in-memory, SQLite and DynamoDB stores behave
//! identically. Each worker runs two loops: a renewal loop (`LeaseCoordinator::renew`) and a
//! scan loop (`LeaseCoordinator::scan`), and its shard consumers write checkpoints and finally
//! release their leases through a `HeldLease` (the `held` module). `docs/leases.md` has the
//! protocol, why it is safe and what it costs.
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
//! # Watching: the heartbeat rows alone
//!
//! At rest a worker reads only the heartbeat rows ([`LeaseTable::list_workers`], eventually
//! consistent), every idle interval: other workers' liveness, who is leaving, whether this
//! worker was *poked* (the `poke` module). It reads the whole table, strongly, only when
//! something concerns it: a poke, its turn to take over a dead worker (the `membership` ring), a
//! start, a lapse, a shard end, an unfinished plan, a lease of an owner without a heartbeat row
//! that may have expired, or its shard-sync duty as the sync leader. Stale eventual reads only
//! ever decide *whether* to read strongly; every action is decided from a strong read.
//!
//! # Expiry without trusting clocks
//!
//! A lease is expired when its owner's heartbeat row (or, for an owner without one, the lease's own
//! counter) has not changed for longer than the failover time, *as observed by this worker on its
//! own monotonic clock* (the `observer` module). No timestamp written by another host is
//! ever compared. Unowned leases are free at once.
//!
//! # Taking, giving and balancing
//!
//! At every full read the worker decides with the `balance` module (a pure function): leases in
//! its name and leases of a dead worker it is responsible for are taken; free leases up to its
//! fair share, the rest assigned to the least loaded live workers (and those poked); when nothing
//! is free, it asks the most loaded worker, but only one holding at least two more leases than
//! itself, so no lease is ever passed back and forth; above its share, it pokes under-loaded
//! workers so that they ask it.
//!
//! # Handoff without duplicates
//!
//! A steal is a request, not a seizure: the stealer writes itself as owner and the current owner
//! as `checkpoint_owner`, and pokes it. The owner sees the request at its next read (or when its
//! next write fails its condition), finishes the batch in flight, calls
//! `shutdown_requested(Handoff)`, checkpoints and clears the marker; the stealer, polling the
//! lease, takes it and starts exactly after that checkpoint. If the owner is seen dead, or does
//! not answer within `handoff_timeout`, the stealer clears the marker itself. A graceful shutdown
//! works the same way in the other direction: the leaving worker marks its heartbeat row as
//! leaving, pokes its successors, lets each consumer finish and checkpoint, and assigns each lease
//! to the least loaded live worker, which it pokes and which finds the lease in its name.

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
use super::membership::{self, Membership};
use super::observer::Observer;
use super::poke::Poker;
use super::{Consistency, Lease, LeaseError, LeaseTable, LeaseTableExt, LeaseUpdate};

mod leader;

pub(crate) use leader::SyncOutcome;

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
    /// Reads of the heartbeat rows alone (the watch at rest).
    pub membership_reads: u64,
    /// Reads of the whole table.
    pub full_scans: u64,
    /// Pokes sent to other workers.
    pub pokes_sent: u64,
    /// Pokes this worker noticed (from others, or its own changes).
    pub pokes_received: u64,
    /// Free leases written in another live worker's name instead of taken.
    pub assigned: u64,
    /// Leases created by this worker's shard syncs.
    pub created: u64,
    /// Times this worker's claim lapsed (its heartbeat was not renewed in time) and it dropped
    /// every held lease.
    pub heartbeat_lapses: u64,
    /// Assignable leases (open, parents finished) as of the last full read of the table.
    pub assignable: usize,
    /// Leases of other workers seen expired in the last full read.
    pub expired: usize,
    /// Live workers seen in the last read (of the heartbeat rows or the whole table), this one
    /// included.
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
    membership_reads: AtomicU64,
    full_scans: AtomicU64,
    pokes_received: AtomicU64,
    assigned: AtomicU64,
    created: AtomicU64,
    heartbeat_lapses: AtomicU64,
    /// What the last scan saw: assignable leases, expired leases, live workers.
    last_scan: Mutex<(usize, usize, usize)>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How fast to scan with [`Renewal::PerLease`]: when the table last changed and when a lease may
/// expire next.
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

/// What the watch of the heartbeat rows decided between full reads ([`Renewal::Heartbeat`]).
#[derive(Debug)]
struct Watch {
    membership: Membership,
    /// A full read is due at this instant (a start, a lapse, an unfinished plan, a retry).
    full_due: Option<Instant>,
    /// Read fast until then (just started, resumed after a lapse, a plan under way).
    fast_until: Instant,
    /// The last scan failed: not again before then (a partition must not spin the loop).
    retry_at: Option<Instant>,
    /// The next moment a watched worker's turn comes, or a lease of an owner without a
    /// heartbeat row may expire: a read is made then.
    next_deadline: Option<Instant>,
    /// The earliest moment a lease of an owner without a heartbeat row may expire, as of the
    /// last full read: a full read is made then.
    lease_deadline: Option<Instant>,
    /// Live workers (this one included) and the leases each holds, as of the last full read.
    loads: BTreeMap<String, usize>,
    /// Workers given a heads-up or push poke recently, and when (not repeated within the settle
    /// time).
    nudged: BTreeMap<String, Instant>,
}

impl Watch {
    fn due(&mut self, at: Instant) {
        self.full_due = Some(self.full_due.map_or(at, |d| d.min(at)));
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
pub(crate) struct View<'a> {
    leases: BTreeMap<&'a str, &'a Lease>,
    /// Heartbeat rows by worker id.
    heartbeats: BTreeMap<&'a str, &'a Lease>,
}

impl<'a> View<'a> {
    pub(crate) fn new(rows: &'a [Lease]) -> Self {
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
    /// Parents are plain shard ids (as Java stores them): found under the keys of the lease's
    /// own stream.
    fn parents_done(&self, lease: &Lease) -> bool {
        let naming = crate::stream::LeaseNaming::of_key(&lease.key);
        lease.parent_shard_ids.iter().all(|p| {
            self.leases
                .get(naming.lease_key(p).as_str())
                .is_none_or(|l| l.is_finished())
        })
    }

    /// Whether `worker` announced that it is leaving (graceful shutdown in progress).
    fn is_leaving(&self, worker: &str) -> bool {
        self.heartbeats
            .get(worker)
            .is_some_and(|hb| hb.owner.is_none())
    }

    /// Whether `worker` still has anything in the table: an unfinished lease in its name, or a
    /// handoff marker naming it.
    fn involves(&self, worker: &str) -> bool {
        self.leases.values().any(|l| {
            (l.is_owned_by(worker) && !l.is_finished())
                || l.checkpoint_owner.as_deref() == Some(worker)
        })
    }
}

/// Workers whose heartbeat row disappeared while leases remain in their name.
///
/// A row that was seen and is gone means its worker left (a graceful shutdown deletes it last)
/// or stopped (its takeover successor removes it, or anyone after twice the failover time):
/// either way its leases need no waiting. Only strong reads feed this (a row is never missing
/// from one while it exists), so a live worker cannot land here; owners never seen with a row
/// (Java KCL workers, per-lease renewal) are judged by their lease counters instead.
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

/// The longest a worker leaves alone a lease whose shard it failed to read.
const FAILED_HOLD_OFF_MAX: Duration = Duration::from_secs(300);

/// Which lease keys a worker can process (a key of one of its streams, in its key style): the
/// coordinator takes, steals, asks for and counts no other lease.
pub(crate) type LeaseFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Renews and takes leases for one worker. See the [module docs](self).
pub(crate) struct LeaseCoordinator {
    worker_id: String,
    /// The leases this worker can process; `None`: all of them.
    accepts: Mutex<Option<LeaseFilter>>,
    /// Leases this worker released after failing to read their shard: how many times in a
    /// row, and until when it does not take them again (pruned to the table's leases).
    held_off: Mutex<BTreeMap<String, (u32, Instant)>>,
    table: Arc<dyn LeaseTable>,
    config: LeaseConfig,
    liveness: Arc<Liveness>,
    heartbeat: Heartbeat,
    poker: Arc<Poker>,
    leaving: AtomicBool,
    /// A full read found at least one lease (the stream's leases exist: a readiness signal).
    saw_leases: AtomicBool,
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
    watch: Mutex<Watch>,
    /// Shard-sync duty (see the `leader` module).
    sync: Mutex<leader::SyncState>,
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
        let now = Instant::now();
        Self {
            poker: Poker::new(table.clone(), &worker_id),
            worker_id,
            accepts: Mutex::new(None),
            held_off: Mutex::new(BTreeMap::new()),
            table,
            liveness,
            heartbeat: Heartbeat::default(),
            leaving: AtomicBool::new(false),
            saw_leases: AtomicBool::new(false),
            in_lapse: AtomicBool::new(false),
            held: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            observer: Mutex::new(Observer::default()),
            successors: Mutex::new(BTreeMap::new()),
            departed: Mutex::new(Departed::default()),
            pace: Mutex::new(Pace {
                fingerprint: 0,
                last_change: now,
                next_expiry: None,
            }),
            watch: Mutex::new(Watch {
                membership: Membership::default(),
                // The first scan reads the whole table, and the first reads come fast.
                full_due: Some(now),
                fast_until: now + config.settle_time(),
                retry_at: None,
                next_deadline: None,
                lease_deadline: None,
                loads: BTreeMap::new(),
                nudged: BTreeMap::new(),
            }),
            sync: Mutex::new(leader::SyncState::default()),
            visible_since: Mutex::new(visible_since),
            stats: StatCounters::default(),
            config,
        }
    }

    pub(crate) fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Restricts the leases this coordinator takes, steals and asks for to those `filter`
    /// accepts (the others are neither candidates nor counted in fair share).
    pub(crate) fn set_filter(&self, filter: LeaseFilter) {
        *lock(&self.accepts) = Some(filter);
    }

    /// Releases `held` in the table after its shard could not be read (it stays free for
    /// whoever can), forgets it, and leaves it alone for a while, longer after each failure in
    /// a row: this worker does not retake it at its next scan to fail again.
    pub(crate) async fn release_failed(&self, held: &Arc<HeldLease>) {
        if !held.is_lost()
            && let Err(error) = held.release(None).await
        {
            warn!(lease = held.key(), %error, "could not release the lease of a failed shard");
        }
        self.forget(held);
        let now = Instant::now();
        let mut held_off = lock(&self.held_off);
        let entry = held_off.entry(held.key().to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let delay = self
            .config
            .failover_time
            .saturating_mul(1 << entry.0.saturating_sub(1).min(10))
            .min(FAILED_HOLD_OFF_MAX);
        entry.1 = now + delay;
    }

    /// Whether this worker can process the lease `key`.
    pub(crate) fn accepts(&self, key: &str) -> bool {
        lock(&self.accepts).as_ref().is_none_or(|f| f(key))
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
            membership_reads: get(&s.membership_reads),
            full_scans: get(&s.full_scans),
            pokes_sent: self.poker.sent(),
            pokes_received: get(&s.pokes_received),
            assigned: get(&s.assigned),
            created: get(&s.created),
            heartbeat_lapses: get(&s.heartbeat_lapses),
            assignable,
            expired,
            live_workers,
        }
    }

    /// Whether a full read of the table has found leases yet: until someone's shard sync created
    /// them, an empty first scan says nothing about what this worker will hold.
    pub(crate) fn has_seen_leases(&self) -> bool {
        self.saw_leases.load(Ordering::SeqCst)
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

    /// What this worker's heartbeat reports as its load: the leases it holds or waits for.
    fn load(&self) -> u64 {
        (self.held().len() + lock(&self.pending).len()) as u64
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
                    .beat(self.table.as_ref(), &self.liveness, leaving, self.load())
                    .await
                {
                    Ok(pokes) => {
                        let now = Instant::now();
                        if self.liveness.epoch() != epoch {
                            // The heartbeat ended a lapse (it waited out a pause): whatever was
                            // held before is void already; say so to the consumers. The others
                            // took this worker for dead: it counts as newly joined again, and
                            // reads the table afresh.
                            self.note_lapse();
                            self.drop_all("heartbeat renewed only after a lapse");
                            *lock(&self.visible_since) = Some(sent);
                            let mut watch = lock(&self.watch);
                            watch.due(now);
                            watch.fast_until = now + self.config.settle_time();
                        }
                        lock(&self.visible_since).get_or_insert(sent);
                        // The reply carries this worker's row: a poke seen for free.
                        if lock(&self.watch).membership.note_pokes(pokes, now) {
                            bump(&self.stats.pokes_received);
                            self.poker.poke_self();
                        }
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

    /// How soon to renew again after a renewal that succeeded or not.
    pub(crate) fn next_renewal_in(&self, ok: bool) -> Duration {
        if ok {
            self.config.renew_interval
        } else {
            self.config.renew_retry_interval()
        }
    }

    /// One step of the scan loop. With [`Renewal::Heartbeat`]: a read of the heartbeat rows,
    /// and a read of the whole table when something concerns this worker (see the module docs);
    /// with [`Renewal::PerLease`]: a read of the whole table. Returns the leases it now holds
    /// that it did not hold before.
    pub(crate) async fn scan(&self) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        if self.config.renewal == Renewal::PerLease {
            return self.full_scan().await;
        }
        let result = self.watch_or_scan().await;
        lock(&self.watch).retry_at = result
            .is_err()
            .then(|| Instant::now() + self.config.scan_interval);
        result
    }

    async fn watch_or_scan(&self) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        let now = Instant::now();
        let poked_self = self.poker.take_local();
        if poked_self {
            lock(&self.watch).membership.note_poked(now);
        }
        let due = lock(&self.watch).full_due.is_some_and(|at| at <= now);
        if poked_self || due {
            return self.full_scan().await;
        }
        let rows = self.table.list_workers(Consistency::Eventual).await?;
        bump(&self.stats.membership_reads);
        if self.watch_rows(&rows, Instant::now()) {
            self.full_scan().await
        } else {
            Ok(Vec::new())
        }
    }

    /// Records a read of the heartbeat rows; returns whether a full read should follow.
    fn watch_rows(&self, rows: &[Lease], now: Instant) -> bool {
        // Lock order, everywhere: observer, then watch.
        let mut observer = lock(&self.observer);
        observer.observe_workers(rows, now);
        let mut watch = lock(&self.watch);
        watch.membership.update(rows, now);
        let mut full = false;
        let me = rows
            .iter()
            .find(|r| r.heartbeat_of() == Some(self.worker_id.as_str()));
        if let Some(row) = me
            && watch.membership.note_pokes(row.pokes(), now)
        {
            bump(&self.stats.pokes_received);
            full = true;
        }
        if watch.lease_deadline.is_some_and(|at| at <= now) {
            full = true;
        }
        let (turn_due, next) = self.turns(&watch.membership, &observer, now);
        watch.next_deadline = next;
        lock(&self.stats.last_scan).2 = watch
            .membership
            .live(&self.worker_id, &observer, self.config.failover_time, now)
            .len();
        // A handoff this worker waits for, from a worker that now looks dead: a full read
        // settles it (a single read of the lease carries no heartbeat).
        let pending_from_dead = lock(&self.pending).values().any(|p| {
            p.from.as_deref().is_some_and(|from| {
                watch.membership.members().get(from).is_some_and(|m| {
                    observer.unchanged_for(&m.key, now) > self.config.failover_time
                })
            })
        });
        full || turn_due || pending_from_dead
    }

    /// Whether this worker's turn has come to take over a worker whose heartbeat stopped, and
    /// the next moment such a turn comes.
    fn turns(
        &self,
        membership: &Membership,
        observer: &Observer,
        now: Instant,
    ) -> (bool, Option<Instant>) {
        let live = membership.live(&self.worker_id, observer, self.config.failover_time, now);
        let mut due = false;
        let mut next: Option<Instant> = None;
        for (worker, member) in membership.members() {
            if *worker == self.worker_id {
                continue;
            }
            let Some(since) = observer.since(&member.key) else {
                continue;
            };
            let turn = membership::ring_turn(worker, &self.worker_id, &live);
            let at = membership::turn_at(
                since,
                turn,
                self.config.failover_time,
                self.config.idle_scan_interval,
            );
            if at < now {
                due = true;
            } else {
                // Expired strictly after the failover time: look a millisecond later.
                let at = at + Duration::from_millis(1);
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (due, next)
    }

    /// Reads the whole table (strongly) and acts on it: notices lost leases and handoff
    /// requests, settles the handoffs this worker asked for, takes, assigns, asks for and pushes
    /// leases. Returns the leases it now holds that it did not hold before.
    pub(crate) async fn full_scan(&self) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        self.full_scan_with(false).await
    }

    async fn full_scan_with(&self, audit: bool) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        let rows = self.table.list().await?;
        bump(&self.stats.full_scans);
        self.act_on(&rows, audit).await
    }

    /// The decisions of a full read of `rows` (strongly consistent, just read). With `audit`
    /// (the sync leader), also pokes under-loaded workers when the loads are two apart.
    async fn act_on(&self, rows: &[Lease], audit: bool) -> Result<Vec<Arc<HeldLease>>, LeaseError> {
        let now = Instant::now();
        let view = View::new(rows);
        if !view.leases.is_empty() {
            self.saw_leases.store(true, Ordering::SeqCst);
        }
        {
            let mut observer = lock(&self.observer);
            if self.config.renewal == Renewal::PerLease {
                observer.observe(rows, now);
            } else {
                // Leases whose owner has a heartbeat row are judged by that row: only the others
                // need watching (memory stays flat in large fleets).
                observer.observe_where(rows, now, |row| {
                    row.heartbeat_of().is_some()
                        || row.is_finished()
                        || row
                            .owner
                            .as_deref()
                            .is_none_or(|owner| !view.heartbeats.contains_key(owner))
                });
            }
        }
        lock(&self.departed).update(&view);
        if self.config.renewal == Renewal::PerLease {
            lock(&self.pace).observe(&view, now);
            let next_expiry = self.next_expiry(&view);
            lock(&self.pace).next_expiry = next_expiry;
        } else {
            self.after_full_read(rows, &view, now);
        }

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
        let receivers = self.receivers(&view, now);
        let receivers: Vec<&str> = receivers.iter().map(String::as_str).collect();
        let expired = candidates
            .iter()
            .filter(|c| {
                matches!(
                    c.standing,
                    Standing::Free | Standing::Rescue | Standing::Waiting
                ) && c
                    .lease
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
        let plan = balance::plan(&candidates, &receivers, limits, |n| fastrand::usize(..n));
        self.record_loads(&candidates, &receivers, plan.take.len());
        // A new worker asks for leases only once every other worker has had an idle interval to
        // see it appear (its heads-up pokes reach them meanwhile).
        let visible_at = lock(&self.visible_since).map(|at| at + self.config.idle_scan_interval);
        let may_steal = visible_at.is_some_and(|at| now >= at);
        let heartbeat_mode = self.config.renewal == Renewal::Heartbeat;
        let mut pokes: BTreeSet<String> = BTreeSet::new();
        let mut unfinished = false;
        for lease in plan.take {
            let expired = lease.owner.as_deref().is_some_and(|o| o != self.worker_id);
            match self.take(lease).await? {
                Some(held) => {
                    if expired {
                        bump(&self.stats.taken_expired);
                    }
                    started.push(held);
                }
                None => unfinished = true,
            }
        }
        for (lease, to) in plan.assign {
            match self
                .table
                .write_reconciled(lease, &LeaseUpdate::release(lease, Some(to)))
                .await
            {
                Ok(_) => {
                    debug!(lease = %lease.key, to, "assigned a free lease");
                    bump(&self.stats.assigned);
                    pokes.insert(to.to_owned());
                }
                Err(error) => {
                    debug!(lease = %lease.key, %error, "could not assign a free lease");
                    unfinished = true;
                }
            }
        }
        if may_steal {
            for lease in plan.steal {
                match self.request_handoff(lease).await? {
                    true => {
                        if let Some(owner) = &lease.owner {
                            pokes.insert(owner.clone());
                        }
                    }
                    false => unfinished = true,
                }
            }
        } else if heartbeat_mode && !plan.steal.is_empty() {
            // A heads-up to the workers it will ask, and a full read once it may.
            let victims: BTreeSet<String> =
                plan.steal.iter().filter_map(|l| l.owner.clone()).collect();
            pokes.extend(self.nudge(victims, now));
            if let Some(at) = visible_at {
                lock(&self.watch).due(at);
            }
        }
        pokes.extend(self.nudge(plan.push.iter().map(|w| (*w).to_owned()), now));
        if audit {
            let loads = lock(&self.watch).loads.clone();
            let loads: BTreeMap<&str, usize> =
                loads.iter().map(|(w, n)| (w.as_str(), *n)).collect();
            let under = balance::under_loaded(&loads, self.config.max_steals_per_cycle);
            pokes.extend(self.nudge(under.into_iter().map(str::to_owned), now));
            pokes.extend(self.nudge(self.unaware(&view, &receivers), now));
        }
        if heartbeat_mode {
            if unfinished {
                lock(&self.watch).due(now + self.config.scan_interval);
            }
            if !pokes.is_empty() || unfinished {
                // Something is under way: read fast for a while.
                let mut watch = lock(&self.watch);
                watch.fast_until = watch.fast_until.max(now + self.config.settle_time());
            }
            // Without heartbeat rows (per-lease renewal) nobody could see a poke.
            self.poker.poke_all(pokes).await;
        }
        self.remove_stale_heartbeats(&view, now).await;
        Ok(started)
    }

    /// After a full read ([`Renewal::Heartbeat`]): the membership and this worker's pokes as the
    /// strong read shows them, the next deadlines, and no full read due any more.
    fn after_full_read(&self, rows: &[Lease], view: &View<'_>, now: Instant) {
        let lease_deadline = self.next_expiry(view);
        let observer = lock(&self.observer);
        let mut watch = lock(&self.watch);
        watch.membership.update(rows, now);
        if let Some(row) = view.heartbeats.get(self.worker_id.as_str())
            && watch.membership.note_pokes(row.pokes(), now)
        {
            // Answered by this very read; something more may be coming.
            bump(&self.stats.pokes_received);
        }
        watch.full_due = None;
        watch.lease_deadline = lease_deadline;
        let (_, next) = self.turns(&watch.membership, &observer, now);
        watch.next_deadline = next;
        let settle = self.config.settle_time();
        watch
            .nudged
            .retain(|_, at| now.saturating_duration_since(*at) < settle);
    }

    /// Of `workers`, those not given a heads-up or push poke within the settle time; records
    /// them as nudged now.
    fn nudge(&self, workers: impl IntoIterator<Item = String>, now: Instant) -> Vec<String> {
        let settle = self.config.settle_time();
        let mut watch = lock(&self.watch);
        let mut fresh = Vec::new();
        for worker in workers {
            let recent = watch
                .nudged
                .get(&worker)
                .is_some_and(|at| now.saturating_duration_since(*at) < settle);
            if !recent {
                watch.nudged.insert(worker.clone(), now);
                fresh.push(worker);
            }
        }
        fresh
    }

    /// The loads of the live workers after this read's takes, for assignments made by the sync
    /// leader.
    fn record_loads(&self, candidates: &[Candidate<'_>], receivers: &[&str], taking: usize) {
        let mut loads: BTreeMap<String, usize> =
            receivers.iter().map(|w| ((*w).to_owned(), 0)).collect();
        let mine = candidates
            .iter()
            .filter(|c| c.standing == Standing::Mine)
            .count();
        loads.insert(self.worker_id.clone(), mine + taking);
        for c in candidates {
            if let Standing::Owned(owner) | Standing::Settled(owner) = c.standing
                && let Some(load) = loads.get_mut(owner)
            {
                *load += 1;
            }
        }
        lock(&self.watch).loads = loads;
    }

    /// Of `workers`, those whose heartbeat reports another load than the leases in their name:
    /// a lease given to them that they never took (the poke was lost, or its sender died right
    /// after the write), or one they hold that someone asked for. Poked, they read the table.
    fn unaware(&self, view: &View<'_>, workers: &[&str]) -> Vec<String> {
        let mut in_name: BTreeMap<&str, u64> = workers.iter().map(|w| (*w, 0)).collect();
        for lease in view.leases.values() {
            if let Some(owner) = lease.owner.as_deref()
                && !lease.is_finished()
                && let Some(count) = in_name.get_mut(owner)
            {
                *count += 1;
            }
        }
        in_name
            .into_iter()
            .filter(|(worker, count)| {
                view.heartbeats
                    .get(worker)
                    .and_then(|hb| hb.load)
                    .is_some_and(|load| load != *count)
            })
            .map(|(worker, _)| worker.to_owned())
            .collect()
    }

    /// Other live workers that may be given leases: a fresh heartbeat row, not leaving.
    fn receivers(&self, view: &View<'_>, now: Instant) -> Vec<String> {
        let observer = lock(&self.observer);
        view.heartbeats
            .iter()
            .filter(|(worker, hb)| {
                **worker != self.worker_id
                    && hb.owner.is_some()
                    && observer.unchanged_for(&hb.key, now) <= self.config.failover_time
            })
            .map(|(worker, _)| (*worker).to_owned())
            .collect()
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

    /// When to scan next: soon while something is expected, at the idle interval otherwise, and
    /// never after the moment a watched worker may be judged dead or a lease may expire.
    pub(crate) fn next_scan_at(&self) -> Instant {
        let now = Instant::now();
        let leaving = self.leaving.load(Ordering::SeqCst);
        if self.config.renewal == Renewal::PerLease {
            let pace = lock(&self.pace);
            let unsettled = leaving
                || self.has_pending()
                || now.saturating_duration_since(pace.last_change) < self.config.settle_time();
            let interval = if unsettled {
                self.config.scan_interval
            } else {
                self.config.idle_scan_interval
            };
            let next = now + interval;
            return match pace.next_expiry {
                // Only a moment still ahead: a deadline already passed was handled by this scan.
                Some(expiry) if expiry > now && expiry < next => expiry,
                _ => next,
            };
        }
        let watch = lock(&self.watch);
        let fast = leaving
            || self.has_pending()
            || watch.fast_until > now
            || watch.membership.expecting(now, self.config.settle_time());
        let interval = if fast {
            self.config.scan_interval
        } else {
            self.config.idle_scan_interval
        };
        let mut next = now + interval;
        for at in [watch.full_due, watch.next_deadline, watch.lease_deadline]
            .into_iter()
            .flatten()
        {
            if at < next {
                next = at.max(now);
            }
        }
        match watch.retry_at {
            Some(retry) if retry > next => retry,
            _ => next,
        }
    }

    /// The earliest moment a lease of another live worker without a heartbeat row (or, with
    /// [`Renewal::PerLease`], any other worker), as observed, may expire.
    fn next_expiry(&self, view: &View<'_>) -> Option<Instant> {
        let departed = lock(&self.departed);
        let observer = lock(&self.observer);
        let heartbeat_mode = self.config.renewal == Renewal::Heartbeat;
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
                // Heartbeat mode: watched through the heartbeat rows (the takeover ring).
                Some(_) if heartbeat_mode => continue,
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
        let best = least_loaded(&successors)?;
        if let Some(load) = successors.get_mut(&best) {
            *load += 1;
        }
        debug!(lease = key, successor = %best, "handing the lease to a live worker");
        Some(best)
    }

    /// The workers [`successor_for`](Self::successor_for) would choose for `count` leases.
    fn planned_successors(&self, count: usize) -> BTreeSet<String> {
        let mut successors = lock(&self.successors).clone();
        let mut chosen = BTreeSet::new();
        for _ in 0..count {
            let Some(best) = least_loaded(&successors) else {
                break;
            };
            if let Some(load) = successors.get_mut(&best) {
                *load += 1;
            }
            chosen.insert(best);
        }
        chosen
    }

    /// Starts a graceful shutdown: the heartbeat row says "leaving", so other workers stop
    /// counting this one and never hand it leases; no lease is taken from now on. The workers
    /// that will receive its leases get a heads-up poke.
    pub(crate) async fn begin_leaving(&self) {
        self.leaving.store(true, Ordering::SeqCst);
        if self.config.renewal == Renewal::Heartbeat
            && let Err(error) = self
                .heartbeat
                .beat(self.table.as_ref(), &self.liveness, true, self.load())
                .await
        {
            warn!(%error, "could not announce the shutdown; continuing");
        }
        // A fresh view of who is live and staying, taken after the announcement: two workers
        // leaving together each see the other leaving in at least one direction, and a worker
        // that left a moment ago is not chosen as a successor.
        if let Err(error) = self.full_scan().await {
            debug!(%error, "scan at the start of the shutdown failed");
        }
        let successors = self.planned_successors(lock(&self.held).len());
        self.poker.poke_all(successors).await;
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

    /// Whether it is this worker's turn to take over `owner`, whose heartbeat row has looked
    /// unchanged for `idle` (longer than the failover time): always for an owner without a row,
    /// else by its place on the takeover ring.
    fn my_turn(&self, owner: &str, idle: Duration, view: &View<'_>, now: Instant) -> bool {
        if self.config.renewal == Renewal::PerLease || !view.heartbeats.contains_key(owner) {
            return true;
        }
        let observer = lock(&self.observer);
        let watch = lock(&self.watch);
        let live =
            watch
                .membership
                .live(&self.worker_id, &observer, self.config.failover_time, now);
        let turn = membership::ring_turn(owner, &self.worker_id, &live);
        let waits = u32::try_from(turn - 1).unwrap_or(u32::MAX);
        idle > self.config.failover_time + self.config.idle_scan_interval.saturating_mul(waits)
    }

    /// Classifies every assignable lease and counts the live workers.
    pub(crate) fn candidates<'a>(
        &self,
        view: &View<'a>,
        now: Instant,
    ) -> (Vec<Candidate<'a>>, usize) {
        let held: BTreeSet<String> = self.held().iter().map(|h| h.key().to_owned()).collect();
        let mut live: BTreeSet<&str> = BTreeSet::new();
        for (worker, hb) in &view.heartbeats {
            let idle = lock(&self.observer).unchanged_for(&hb.key, now);
            if idle <= self.config.failover_time && hb.owner.is_some() {
                live.insert(worker);
            }
        }
        let mut candidates = Vec::new();
        let held_off: BTreeSet<String> = {
            let mut held_off = lock(&self.held_off);
            held_off.retain(|key, _| view.leases.contains_key(key.as_str()));
            held_off
                .iter()
                .filter(|(_, (_, until))| *until > now)
                .map(|(key, _)| key.clone())
                .collect()
        };
        for lease in view.leases.values() {
            if lease.is_finished()
                || !view.parents_done(lease)
                || !self.accepts(&lease.key)
                || held_off.contains(&lease.key)
            {
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
                        (Standing::InMyName, Duration::ZERO)
                    }
                }
                Some(owner) => {
                    let idle = self.owner_idle(owner, lease, view, now);
                    if idle > self.config.failover_time {
                        if idle == Duration::MAX {
                            // Departed: free at once, for anyone.
                            (Standing::Free, idle)
                        } else if self.my_turn(owner, idle, view, now) {
                            if view.heartbeats.contains_key(owner) {
                                (Standing::Rescue, idle)
                            } else {
                                (Standing::Free, idle)
                            }
                        } else {
                            (Standing::Waiting, idle)
                        }
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
        let held = HeldLease::with_poker(
            self.table.clone(),
            lease,
            self.liveness.clone(),
            written_at,
            self.poker.clone(),
        );
        lock(&self.held).insert(held.key().to_owned(), held.clone());
        held
    }

    /// Asks the owner of `lease` to hand it over; returns whether the request was written.
    async fn request_handoff(&self, lease: &Lease) -> Result<bool, LeaseError> {
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
                Ok(true)
            }
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => Ok(false),
            Err(error) if error.is_retryable() => {
                warn!(lease = %lease.key, %error, "could not ask for lease; will retry");
                Ok(false)
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
        let mut pokes = BTreeSet::new();
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
            match self.table.write_reconciled(lease, &update).await {
                Ok(_) => pokes.extend(successor),
                Err(error) => {
                    debug!(lease = %lease.key, %error, "could not pass on a lease while leaving")
                }
            }
        }
        self.poker.poke_all(pokes).await;
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

    /// Deletes the heartbeat rows of stopped workers, so worker churn does not grow the table:
    /// a dead worker's row once it owns nothing and it is this worker's turn for it (its
    /// takeover successor, right after the takeover), and anyone's row still for twice the
    /// failover time. Conditional on the counter seen, so a worker that comes back in the
    /// meantime keeps its row.
    async fn remove_stale_heartbeats(&self, view: &View<'_>, now: Instant) {
        let stale: Vec<&Lease> = {
            let observer = lock(&self.observer);
            view.heartbeats
                .iter()
                .filter(|(w, _)| **w != self.worker_id)
                .filter(|(w, hb)| {
                    let idle = observer.unchanged_for(&hb.key, now);
                    idle > 2 * self.config.failover_time
                        || (self.config.renewal == Renewal::Heartbeat
                            && idle > self.config.failover_time
                            && !view.involves(w)
                            && self.my_turn_unlocked(w, idle, &observer, now))
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

    /// [`Self::my_turn`] for a worker with a heartbeat row, with the observer already locked.
    fn my_turn_unlocked(
        &self,
        owner: &str,
        idle: Duration,
        observer: &Observer,
        now: Instant,
    ) -> bool {
        let watch = lock(&self.watch);
        let live = watch
            .membership
            .live(&self.worker_id, observer, self.config.failover_time, now);
        let turn = membership::ring_turn(owner, &self.worker_id, &live);
        let waits = u32::try_from(turn - 1).unwrap_or(u32::MAX);
        idle > self.config.failover_time + self.config.idle_scan_interval.saturating_mul(waits)
    }
}

/// The least loaded worker of `loads` (ties: smallest id).
fn least_loaded(loads: &BTreeMap<String, usize>) -> Option<String> {
    loads
        .iter()
        .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
        .map(|(w, _)| w.clone())
}

#[cfg(test)]
mod tests;
