//! A lease this worker holds: the only way the worker writes to it.
//!
//! A [`HeldLease`] is shared by the coordinator (which notices from its scans that the lease was
//! taken or that a handoff was requested) and the shard's consumer and checkpointer (which write
//! checkpoints and finally release it). All writes go through one async mutex, conditional on the
//! counter last written, so a renewal and a checkpoint never race each other into a spurious
//! condition failure, and a worker that lost the lease can never overwrite the new owner's state.
//!
//! **Handoff.** When another worker asks for the lease (it writes itself as owner and this worker
//! as `checkpoint_owner`, see [`super::LeaseTableExt::request_handoff`]), this worker's next write
//! fails its condition. Seeing itself named as `checkpoint_owner`, the worker adopts the new
//! counter and retries: it may still checkpoint the batch it is finishing, and its release clears
//! the marker instead of the owner. Nothing else lets a former owner write.
//!
//! **Validity.** A lease may only be acted on while the worker's claim is fresh: its heartbeat
//! (or, with [`super::Renewal::PerLease`], this lease's own last write) succeeded less than
//! [`super::LeaseConfig::validity`] ago. The consumer checks [`HeldLease::is_valid`] before every
//! batch, so a worker that was paused or cut off stops before anyone else may take over.

use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::liveness::Liveness;
use super::poke::Poker;
use super::{Lease, LeaseError, LeaseTable, LeaseTableExt, LeaseUpdate};
use crate::sync::{Signal, Watch};

/// Where a held lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeldStatus {
    /// Ours to process and checkpoint.
    Held,
    /// Another worker asked for it: finish the batch, checkpoint, hand it over.
    HandoffRequested,
    /// No longer ours (taken, released, handed over, or our claim went stale).
    Lost,
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

/// Why a single write attempt did not succeed.
enum Attempt {
    /// A handoff was requested; the lease now reflects the new owner's row. Retry.
    Adopted,
    Failed(HeldWriteError),
}

/// A lease this worker holds. See the [module docs](self).
pub(crate) struct HeldLease {
    key: String,
    worker_id: String,
    pub(crate) table: Arc<dyn LeaseTable>,
    state: tokio::sync::Mutex<Lease>,
    /// When the last successful write to this lease was sent.
    written_at: Mutex<Instant>,
    liveness: Arc<Liveness>,
    /// The worker's liveness epoch when the lease was acquired: a lapse since voids it.
    epoch: u64,
    status: Arc<Signal<HeldStatus>>,
    /// Pokes the worker a lease is given to, and this worker when the shard ended.
    poker: Option<Arc<Poker>>,
}

impl std::fmt::Debug for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldLease")
            .field("key", &self.key)
            .field("status", &self.status())
            .finish()
    }
}

impl HeldLease {
    /// Holds `lease`, as last written or read by this worker at `written_at`.
    pub(crate) fn new(
        table: Arc<dyn LeaseTable>,
        lease: Lease,
        liveness: Arc<Liveness>,
        written_at: Instant,
    ) -> Arc<Self> {
        Self::build(table, lease, liveness, written_at, None)
    }

    /// [`HeldLease::new`], poking through `poker`: the worker a lease is given to at release,
    /// and this worker itself when the shard ends (its children are to be taken).
    pub(crate) fn with_poker(
        table: Arc<dyn LeaseTable>,
        lease: Lease,
        liveness: Arc<Liveness>,
        written_at: Instant,
        poker: Arc<Poker>,
    ) -> Arc<Self> {
        Self::build(table, lease, liveness, written_at, Some(poker))
    }

    fn build(
        table: Arc<dyn LeaseTable>,
        lease: Lease,
        liveness: Arc<Liveness>,
        written_at: Instant,
        poker: Option<Arc<Poker>>,
    ) -> Arc<Self> {
        let status = Signal::new(HeldStatus::Held);
        Arc::new(Self {
            key: lease.key.clone(),
            worker_id: liveness.worker_id().to_owned(),
            table,
            state: tokio::sync::Mutex::new(lease),
            written_at: Mutex::new(written_at),
            epoch: liveness.epoch(),
            liveness,
            status,
            poker,
        })
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn status(&self) -> HeldStatus {
        self.status.get()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.status() == HeldStatus::Lost
    }

    /// Whether the worker may still act on this lease: not lost, and the claim is fresh.
    pub(crate) fn is_valid(&self) -> bool {
        !self.is_lost() && self.liveness.is_valid(self.epoch, self.written_at())
    }

    pub(crate) fn mark_lost(&self) {
        self.status.set(HeldStatus::Lost);
    }

    /// A write found the lease no longer ours (or seemed to: a store may report a condition
    /// failure for a write that did not land): lost here, and the worker reads the table soon,
    /// where it may find the lease still in its name, or free.
    fn lose(&self) {
        self.mark_lost();
        if let Some(poker) = &self.poker {
            poker.poke_self();
        }
    }

    /// Records that another worker asked for this lease (seen by a scan).
    pub(crate) fn note_handoff_requested(&self) {
        self.status.update(|s| {
            if *s == HeldStatus::Held {
                *s = HeldStatus::HandoffRequested;
                true
            } else {
                false
            }
        });
    }

    /// Follows the status.
    pub(crate) fn watch(&self) -> Watch<HeldStatus> {
        self.status.watch()
    }

    pub(crate) fn written_at(&self) -> Instant {
        *self.written_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn lease(&self) -> Lease {
        self.state.lock().await.clone()
    }

    /// Applies `update` to the held lease, conditional on the counter we hold.
    pub(crate) async fn write(&self, update: &LeaseUpdate) -> Result<Lease, HeldWriteError> {
        let result = self.write_locked(update).await;
        if let (Ok(written), Some(poker)) = (&result, &self.poker)
            && written.is_finished()
        {
            // The shard ended: read the table soon, to take the children.
            poker.poke_self();
        }
        result
    }

    async fn write_locked(&self, update: &LeaseUpdate) -> Result<Lease, HeldWriteError> {
        let mut lease = self.state.lock().await;
        match self.attempt(&mut lease, update).await {
            Ok(written) => Ok(written),
            // The lease now carries the requesting worker's counter: one more try.
            Err(Attempt::Adopted) => {
                let retry = self.with_marker_cleared(&lease, update);
                self.retry_adopted(&mut lease, &retry).await
            }
            Err(Attempt::Failed(error)) => Err(error),
        }
    }

    /// The one retry after adopting the counter of a row naming us as `checkpoint_owner`.
    async fn retry_adopted(
        &self,
        lease: &mut Lease,
        update: &LeaseUpdate,
    ) -> Result<Lease, HeldWriteError> {
        match self.attempt(lease, update).await {
            Ok(written) => Ok(written),
            Err(Attempt::Adopted) => {
                self.lose();
                Err(HeldWriteError::Lost(self.key.clone()))
            }
            Err(Attempt::Failed(error)) => Err(error),
        }
    }

    /// Renews the lease (per-lease renewal) unless written within `min_age` or being handed over.
    pub(crate) async fn renew(&self, min_age: std::time::Duration) -> Result<(), HeldWriteError> {
        if self.status() != HeldStatus::Held || self.written_at().elapsed() < min_age {
            return Ok(());
        }
        self.write(&LeaseUpdate::default()).await.map(|_| ())
    }

    /// Lets the lease go after the shard's last checkpoint: hands it over to the worker that asked
    /// for it, or gives it to `successor`, or makes it unowned. Afterwards it is no longer held,
    /// whatever the outcome.
    pub(crate) async fn release(&self, successor: Option<&str>) -> Result<(), HeldWriteError> {
        let mut lease = self.state.lock().await;
        let mut adoptions = 0;
        let mut given_to = None;
        let result = loop {
            if self.is_lost() {
                break Err(HeldWriteError::Lost(self.key.clone()));
            }
            let handing_over = self.status() == HeldStatus::HandoffRequested;
            let update = if handing_over {
                LeaseUpdate::hand_over()
            } else {
                LeaseUpdate::release(&lease, successor)
            };
            match self.attempt(&mut lease, &update).await {
                Ok(written) => {
                    // A worker that asked for the lease polls it; a successor must be told.
                    if !handing_over {
                        given_to = written.owner.filter(|owner| *owner != self.worker_id);
                    }
                    break Ok(());
                }
                Err(Attempt::Adopted) if adoptions == 0 => adoptions += 1,
                Err(Attempt::Adopted) => break Err(HeldWriteError::Lost(self.key.clone())),
                Err(Attempt::Failed(error)) => break Err(error),
            }
        };
        self.mark_lost();
        drop(lease);
        // The successor reads the table at once.
        if let (Some(to), Some(poker)) = (given_to, &self.poker) {
            poker.poke(&to).await;
        }
        result
    }

    /// One conditional write of `update` on `lease` (the locked state).
    async fn attempt(&self, lease: &mut Lease, update: &LeaseUpdate) -> Result<Lease, Attempt> {
        if self.is_lost() {
            return Err(Attempt::Failed(HeldWriteError::Lost(self.key.clone())));
        }
        let sent = Instant::now();
        match self.table.write_reconciled(lease, update).await {
            Ok(written) => {
                *lease = written.clone();
                *self.written_at.lock().unwrap_or_else(|p| p.into_inner()) = sent;
                Ok(written)
            }
            Err(LeaseError::ConditionFailed { current, .. }) => {
                let current = match current {
                    Some(current) => Some(*current),
                    None => self
                        .table
                        .get(&self.key)
                        .await
                        .map_err(|e| Attempt::Failed(HeldWriteError::Store(e)))?,
                };
                match current {
                    Some(current) if self.is_named_by_marker(&current) => {
                        if current.is_owned_by(&self.worker_id) {
                            // A request given back before it completed: still ours.
                            tracing::debug!(lease = %self.key, "handoff request withdrawn");
                        } else {
                            tracing::debug!(lease = %self.key, new_owner = ?current.owner, "handoff requested");
                            self.note_handoff_requested();
                        }
                        *lease = current;
                        Err(Attempt::Adopted)
                    }
                    _ => {
                        self.lose();
                        Err(Attempt::Failed(HeldWriteError::Lost(self.key.clone())))
                    }
                }
            }
            Err(LeaseError::NotFound(_)) => {
                self.lose();
                Err(Attempt::Failed(HeldWriteError::Lost(self.key.clone())))
            }
            Err(other) => Err(Attempt::Failed(HeldWriteError::Store(other))),
        }
    }

    /// Whether `current` names this worker as `checkpoint_owner`: another worker asked for the
    /// lease and waits for this one to hand it over, or gave a request back (the lease is in
    /// this worker's name again). Either way nobody else processes it while the marker stands.
    fn is_named_by_marker(&self, current: &Lease) -> bool {
        current.checkpoint_owner.as_deref() == Some(self.worker_id.as_str())
    }

    /// `update`, clearing a withdrawn request's marker when the lease is back in our name.
    fn with_marker_cleared(&self, lease: &Lease, update: &LeaseUpdate) -> LeaseUpdate {
        let mut update = update.clone();
        if lease.is_owned_by(&self.worker_id)
            && lease.checkpoint_owner.as_deref() == Some(self.worker_id.as_str())
            && update.checkpoint_owner.is_none()
        {
            update.checkpoint_owner = Some(None);
        }
        update
    }
}
