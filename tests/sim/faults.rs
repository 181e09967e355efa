//! Fault injection around the real parts: the in-memory lease table and the Kinesis model.
//!
//! - [`SimTable`] is the one shared lease table (an [`InMemoryLeaseTable`]) plus the store-side
//!   checks: every accepted checkpoint must come from the incarnation holding the lease (or the
//!   previous holder named in a handoff marker) and must not move backwards.
//!   Its eventually consistent reads of the heartbeat rows lag by up to a few seconds, row by
//!   row, as a DynamoDB replica may.
//! - [`WorkerTable`] is one worker incarnation's view of it: it injects the faults of the
//!   incarnation's [`FaultPlan`] (failed conditional writes, timeouts before or after the write
//!   landed, throttling, unavailability, latency) and freezes while the incarnation is paused.
//! - [`GatedBackend`] freezes an incarnation's Kinesis calls while it is paused (the testkit's
//!   `HookedBackend` with the incarnation's [`Gate`] as hooks).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::lease::{
    Consistency, Expectation, InMemoryLeaseTable, Lease, LeaseError, LeaseTable, LeaseUpdate,
    WORKER_KEY_PREFIX,
};
use tokio::time::Instant;

use super::log::{AcceptedCheckpoint, Incident, IncidentKind, Log};

pub use kcl_testkit::Gate;

/// Who holds each lease, by incarnation and worker id, as the store-side check tracks it.
#[derive(Debug, Default, Clone)]
struct Holders {
    holder: Option<(u32, String)>,
    /// The previous holder while a handoff marker names it.
    handing_over: Option<(u32, String)>,
}

/// The shared lease table with store-side invariant checks.
#[derive(Debug)]
pub struct SimTable {
    inner: InMemoryLeaseTable,
    holders: Mutex<HashMap<String, Holders>>,
    log: Arc<Log>,
    stale: Mutex<Staleness>,
}

/// Eventually consistent reads of the heartbeat rows: every version of every row for the last
/// `max_lag`, and each row of an eventual read shown as it was up to `max_lag` ago (drawn per row,
/// so one read may mix ages, and a later read may show an older version), as a DynamoDB replica
/// may.
#[derive(Debug)]
struct Staleness {
    max_lag: Duration,
    rng: fastrand::Rng,
    /// Per heartbeat key: (since when, the row then; `None` = absent), oldest first.
    history: BTreeMap<String, VecDeque<(Instant, Option<Lease>)>>,
}

impl Staleness {
    fn record(&mut self, key: &str, row: Option<Lease>) {
        if self.max_lag.is_zero() || !key.starts_with(WORKER_KEY_PREFIX) {
            return;
        }
        let now = Instant::now();
        let versions = self.history.entry(key.to_owned()).or_default();
        versions.push_back((now, row));
        // Keep the newest version older than the horizon: it is what a read lagging that much
        // sees.
        let horizon = now.checked_sub(self.max_lag);
        while versions.len() > 1
            && horizon.is_some_and(|h| versions.get(1).is_some_and(|(at, _)| *at <= h))
        {
            versions.pop_front();
        }
    }

    /// The heartbeat rows as an eventually consistent read may show them now.
    fn read(&mut self) -> Vec<Lease> {
        let now = Instant::now();
        let mut rows = Vec::new();
        for versions in self.history.values() {
            let lag = Duration::from_millis(self.rng.u64(..=self.max_lag.as_millis() as u64));
            let at = now.checked_sub(lag).unwrap_or(now);
            // The version current at `at`; before the first one known the row did not exist.
            if let Some((_, Some(row))) = versions.iter().rev().find(|(since, _)| *since <= at) {
                rows.push(row.clone());
            }
        }
        rows
    }
}

impl SimTable {
    /// An empty table logging to `log`; eventually consistent reads of the heartbeat rows lag
    /// by up to `max_lag` (drawn from `seed`).
    pub fn new(log: Arc<Log>, max_lag: Duration, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner: InMemoryLeaseTable::new(),
            holders: Mutex::new(HashMap::new()),
            log,
            stale: Mutex::new(Staleness {
                max_lag,
                rng: fastrand::Rng::with_seed(seed ^ 0x57a1e),
                history: BTreeMap::new(),
            }),
        })
    }

    fn remember(&self, key: &str, row: Option<Lease>) {
        self.stale.lock().unwrap().record(key, row);
    }

    /// A conditional update by `incarnation` (worker `worker`), checked.
    async fn update_as(
        &self,
        incarnation: u32,
        worker: &str,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        // The in-memory table answers without yielding: the read, the write and the checks
        // below are one atomic step on the current-thread runtime.
        let before = self.inner.get(key).await?;
        let written = self.inner.update(key, expect, update).await?;
        self.remember(key, Some(written.clone()));
        self.log.detail(|| {
            format!(
                "inc {incarnation} ({worker}) wrote {key}: owner {:?} marker {:?} checkpoint {} counter {}",
                written.owner, written.checkpoint_owner, written.checkpoint, written.counter
            )
        });
        let Some(before) = before else {
            return Ok(written);
        };
        let mut holders = self.holders.lock().unwrap();
        let h = holders.entry(key.to_owned()).or_default();
        let writes_progress =
            update.checkpoint.is_some() || matches!(update.pending_checkpoint, Some(Some(_)));
        if writes_progress && before.heartbeat_of().is_none() {
            let is =
                |who: &Option<(u32, String)>| who.as_ref().is_some_and(|(i, _)| *i == incarnation);
            let as_owner = before.owner.as_deref() == Some(worker) && is(&h.holder);
            let as_previous =
                before.checkpoint_owner.as_deref() == Some(worker) && is(&h.handing_over);
            if !(as_owner || as_previous) {
                self.log.with(|e| {
                    e.violations.push(format!(
                        "checkpoint on {key} accepted from incarnation {incarnation} ({worker}), \
                         which does not hold it (owner {:?}, marker {:?}, holders {h:?})",
                        before.owner, before.checkpoint_owner
                    ))
                });
            }
            if let Some(position) = &update.checkpoint {
                if *position < before.checkpoint {
                    self.log.with(|e| {
                        e.violations.push(format!(
                            "checkpoint on {key} moved backwards: {} -> {position}",
                            before.checkpoint
                        ))
                    });
                }
                let at = self.log.stamp();
                self.log.with(|e| {
                    e.checkpoints.push(AcceptedCheckpoint {
                        at,
                        incarnation,
                        shard: key.to_owned(),
                        position: position.clone(),
                    })
                });
            }
        }
        // Track holders from what the write did. A conditional write by an incarnation that
        // leaves the lease in its worker's name (a take, a handoff request, a forced handoff
        // completion, a renewal) makes it the holder: no other write came in between.
        let requested = matches!(&update.checkpoint_owner, Some(Some(_)));
        let returned_to_previous = h
            .handing_over
            .as_ref()
            .is_some_and(|(_, w)| written.owner.as_deref() == Some(w.as_str()));
        if written.owner.as_deref() == Some(worker) && !writes_progress {
            if requested {
                h.handing_over = h.holder.take();
            } else if update.checkpoint_owner.is_some() {
                h.handing_over = None;
            }
            h.holder = Some((incarnation, worker.to_owned()));
        } else if update.owner.is_some() && returned_to_previous {
            // A handoff request given back: the previous holder never stopped holding it.
            h.holder = h.handing_over.take();
        } else if update.owner.is_some() {
            // Released, or given to a successor (who takes it with a write of its own).
            *h = Holders::default();
        } else if let Some(None) = &update.checkpoint_owner {
            // The previous holder completed the handoff.
            h.handing_over = None;
        }
        Ok(written)
    }
}

#[async_trait]
impl LeaseTable for SimTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let created = self.inner.create_if_absent(lease).await?;
        if created {
            self.remember(&lease.key, Some(lease.clone()));
            self.log
                .detail(|| format!("created {} at {}", lease.key, lease.checkpoint));
        }
        Ok(created)
    }
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.inner.list().await
    }
    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        let stale = {
            let mut stale = self.stale.lock().unwrap();
            (consistency == Consistency::Eventual && !stale.max_lag.is_zero()).then(|| stale.read())
        };
        match stale {
            Some(rows) => Ok(rows),
            None => self.inner.list_workers(consistency).await,
        }
    }
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.inner.get(key).await
    }
    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        self.update_as(u32::MAX, "observer", key, expect, update)
            .await
    }
    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.inner.delete(key, expect).await?;
        self.remember(key, None);
        self.log.detail(|| format!("deleted {key}"));
        Ok(())
    }
}

/// A kind of injected lease-store fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A conditional write reported as failed although its condition held (nothing written).
    ConditionFailed,
    /// A timeout before the request reached the store (nothing written).
    TimeoutBefore,
    /// The write landed but its reply was lost.
    ReplyLost,
    /// Throttled (nothing done).
    Throttled,
    /// 5xx (nothing done).
    Unavailable,
    /// Slow: the call takes up to half a second.
    Latency,
}

const FAULTS: [Fault; 6] = [
    Fault::ConditionFailed,
    Fault::TimeoutBefore,
    Fault::ReplyLost,
    Fault::Throttled,
    Fault::Unavailable,
    Fault::Latency,
];

/// A window of faults for one incarnation.
#[derive(Clone, Debug)]
pub struct FaultWindow {
    /// Start.
    pub start: Instant,
    /// End.
    pub end: Instant,
    /// Probability that a call fails.
    pub probability: f64,
    /// Only this kind, or any when `None`.
    pub only: Option<Fault>,
}

/// The faults of one incarnation: windows added by the schedule, drawn from a seeded generator.
#[derive(Debug)]
pub struct FaultPlan {
    windows: Mutex<Vec<FaultWindow>>,
    rng: Mutex<fastrand::Rng>,
}

impl FaultPlan {
    /// No faults yet.
    pub fn new(seed: u64) -> Arc<Self> {
        Arc::new(Self {
            windows: Mutex::new(Vec::new()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        })
    }

    /// Adds a window.
    pub fn add(&self, window: FaultWindow) {
        self.windows.lock().unwrap().push(window);
    }

    /// Ends every window (the calm phase).
    pub fn clear(&self) {
        self.windows.lock().unwrap().clear();
    }

    /// The fault to inject into this call, if any.
    fn draw(&self, write: bool) -> Option<Fault> {
        let now = Instant::now();
        let windows = self.windows.lock().unwrap();
        let window = windows.iter().find(|w| w.start <= now && now < w.end)?;
        let mut rng = self.rng.lock().unwrap();
        if rng.f64() >= window.probability {
            return None;
        }
        let fault = match window.only {
            Some(fault) => fault,
            None => FAULTS[rng.usize(..FAULTS.len())],
        };
        // Reads cannot fail a condition or lose a write.
        match (write, fault) {
            (false, Fault::ConditionFailed | Fault::ReplyLost | Fault::TimeoutBefore) => {
                Some(Fault::Unavailable)
            }
            _ => Some(fault),
        }
    }

    fn latency(&self) -> Duration {
        Duration::from_millis(self.rng.lock().unwrap().u64(1..500))
    }
}

/// One worker incarnation's handle on the shared table.
#[derive(Debug)]
pub struct WorkerTable {
    /// The shared table.
    pub table: Arc<SimTable>,
    /// The incarnation.
    pub incarnation: u32,
    /// Its worker id.
    pub worker: String,
    /// Its pause gate.
    pub gate: Arc<Gate>,
    /// Its faults.
    pub faults: Arc<FaultPlan>,
    /// The run's log.
    pub log: Arc<Log>,
    /// Lease-store calls in the whole run past which it counts as a livelock.
    pub call_limit: u64,
}

impl WorkerTable {
    /// Waits out a pause and decides this call's fault.
    async fn enter(&self, op: &str, write: bool) -> Result<Option<Fault>, LeaseError> {
        self.log.count_call(self.call_limit);
        self.gate.pass().await;
        let fault = self.faults.draw(write);
        if let Some(fault) = fault {
            let at = self.log.stamp();
            self.log.with(|e| {
                e.incidents.push(Incident {
                    incarnation: self.incarnation,
                    kind: IncidentKind::StoreFault(format!("{op}: {fault:?}")),
                    start: at,
                    end: at,
                })
            });
        }
        match fault {
            Some(Fault::Latency) => {
                tokio::time::sleep(self.faults.latency()).await;
                self.gate.pass().await;
                Ok(None)
            }
            Some(Fault::TimeoutBefore) => Err(LeaseError::Unknown("injected timeout".into())),
            Some(Fault::Throttled) => Err(LeaseError::Throttled("injected".into())),
            Some(Fault::Unavailable) => Err(LeaseError::Unavailable("injected".into())),
            other => Ok(other),
        }
    }

    /// After the store answered: a paused incarnation receives the reply only when resumed.
    async fn leave<T>(
        &self,
        result: Result<T, LeaseError>,
        fault: Option<Fault>,
    ) -> Result<T, LeaseError> {
        self.gate.pass().await;
        match (fault, result) {
            (Some(Fault::ReplyLost), Ok(_)) => {
                Err(LeaseError::Unknown("injected: reply lost".into()))
            }
            (_, result) => result,
        }
    }
}

#[async_trait]
impl LeaseTable for WorkerTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let fault = self.enter("create", true).await?;
        if fault == Some(Fault::ConditionFailed) {
            // A create's condition only fails when the item exists: report a 5xx instead.
            return self
                .leave(Err(LeaseError::Unavailable("injected".into())), None)
                .await;
        }
        let result = self.table.create_if_absent(lease).await;
        self.leave(result, fault).await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let fault = self.enter("list", false).await?;
        let result = self.table.list().await;
        self.leave(result, fault).await
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        let fault = self.enter("list_workers", false).await?;
        let result = self.table.list_workers(consistency).await;
        self.leave(result, fault).await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let fault = self.enter("get", false).await?;
        let result = self.table.get(key).await;
        self.leave(result, fault).await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        let fault = self.enter("update", true).await?;
        if fault == Some(Fault::ConditionFailed) {
            return self
                .leave(Err(LeaseError::condition_failed(key)), None)
                .await;
        }
        let result = self
            .table
            .update_as(self.incarnation, &self.worker, key, expect, update)
            .await;
        self.leave(result, fault).await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        let fault = self.enter("delete", true).await?;
        if fault == Some(Fault::ConditionFailed) {
            return self
                .leave(Err(LeaseError::condition_failed(key)), None)
                .await;
        }
        let result = self.table.delete(key, expect).await;
        self.leave(result, fault).await
    }
}

/// An incarnation's Kinesis client: the shared model behind the incarnation's gate, frozen
/// while it is paused (testkit hooks: the gate waits before each call and before each reply).
pub type GatedBackend = kcl_testkit::hooks::HookedBackend<Arc<Gate>>;
