//! Leases: who processes which shard, and where it got to.
//!
//! A [`Lease`] per shard lives in a [`LeaseTable`], the pluggable store shared by every worker of an
//! application (in memory for tests, SQLite on one host, DynamoDB across machines). The store only
//! offers a handful of primitives: create-if-absent, list, get, a conditional [`LeaseUpdate`] and a
//! conditional delete. Every transition the framework makes (take, renew, checkpoint, release) is a
//! conditional update expressed once here, above the trait, so all stores behave identically.
//!
//! The fencing counter ([`Lease::counter`]) is incremented by every write. A worker writes only if
//! the counter still has the value it last saw, so a worker that lost a lease (paused, partitioned,
//! replaced) can never overwrite the new owner's checkpoint.
//!
//! Besides one lease per shard, the table holds one *heartbeat row* per live worker (key
//! [`WORKER_KEY_PREFIX`] + worker id, see [`Lease::worker_heartbeat`]), stored through the same
//! primitives so every store supports it unchanged. How workers use these rows to renew, expire,
//! take, steal and hand over leases is in [`coordinator`].
//!
//! | module | owns |
//! |---|---|
//! | [`admin`] | what an operator's tool does: describe, reset, cleanup (above the trait, like the workers) |
//! | [`config`] | [`LeaseConfig`]: failover time, renewal mode, scan interval, limits |
//! | `held` | a lease this worker holds: fenced writes, loss and handoff signals |
//! | `instrumented` | the worker's wrapper of its table: calls counted, timed, health watched |
//! | `liveness` | this worker's own heartbeat and how long it may act on its leases |
//! | `observer` | other workers' liveness, observed on the local monotonic clock |
//! | `membership` | what the heartbeat rows say: live, leaving, poked, the takeover ring, the sync leader |
//! | `poke` | asking another worker to read the table now |
//! | `balance` | which leases to take, give and ask for (a pure function) |
//! | [`coordinator`] | the scan cycle tying them together, and shard sync by the leader |
//! | [`memory`] | the in-memory table |
//! | `contract` | the suite every store must pass (feature `contract-tests`) |

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::record::{ExtendedSequenceNumber, HashKeyRange};

pub mod admin;
mod balance;
pub mod config;
pub mod coordinator;
pub(crate) mod held;
pub(crate) mod instrumented;
pub(crate) mod liveness;
mod membership;
pub mod memory;
mod observer;
pub(crate) mod poke;
#[cfg(test)]
pub(crate) mod test_table;

#[cfg(feature = "contract-tests")]
pub mod contract;

pub use config::{LeaseConfig, Renewal};
pub use memory::InMemoryLeaseTable;

/// Key prefix of the workers' heartbeat rows. Shard ids never contain `/`, so these keys cannot
/// collide with a lease. The prefix predates the project's name (Kinesin) and stays as it is:
/// tables written by earlier releases, and their operators' scripts, know heartbeat rows by it.
pub const WORKER_KEY_PREFIX: &str = "kcl-rs/worker/";

/// A checkpoint prepared but not yet committed (two-phase checkpointing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingCheckpoint {
    /// The prepared position.
    pub position: ExtendedSequenceNumber,
    /// Optional application state saved with it.
    pub state: Option<Bytes>,
}

/// The lease of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The lease key: the shard id.
    pub key: String,
    /// The worker holding the lease; `None` when unassigned.
    pub owner: Option<String>,
    /// Fencing counter and liveness heartbeat: incremented by every write.
    pub counter: u64,
    /// Committed position.
    pub checkpoint: ExtendedSequenceNumber,
    /// A prepared, uncommitted checkpoint.
    pub pending_checkpoint: Option<PendingCheckpoint>,
    /// Owner changes since the last checkpoint.
    pub owner_switches_since_checkpoint: u64,
    /// Parent shard ids (lineage).
    pub parent_shard_ids: Vec<String>,
    /// Child shard ids, written when the shard ends.
    pub child_shard_ids: Vec<String>,
    /// The shard's hash key range, when known.
    pub hash_key_range: Option<HashKeyRange>,
    /// A worker asked to hand this lease over to `owner` (cooperative handoff): while set, the
    /// named previous owner may still checkpoint.
    pub checkpoint_owner: Option<String>,
    /// Worker heartbeat rows only: how many leases the worker held, or waited to be handed, at
    /// its last heartbeat (the sync leader compares it with the leases in the worker's name to
    /// find assignments the worker missed). `None` on shard leases.
    pub load: Option<u64>,
}

impl Lease {
    /// A new, unowned lease at `checkpoint`, with counter 0.
    pub fn new(key: impl Into<String>, checkpoint: ExtendedSequenceNumber) -> Self {
        Self {
            key: key.into(),
            owner: None,
            counter: 0,
            checkpoint,
            pending_checkpoint: None,
            owner_switches_since_checkpoint: 0,
            parent_shard_ids: Vec::new(),
            child_shard_ids: Vec::new(),
            hash_key_range: None,
            checkpoint_owner: None,
            load: None,
        }
    }

    /// Sets the parents.
    pub fn with_parents(mut self, parents: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.parent_shard_ids = parents.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the hash key range.
    pub fn with_hash_key_range(mut self, range: HashKeyRange) -> Self {
        self.hash_key_range = Some(range);
        self
    }

    /// The heartbeat row of `worker_id`: owned by the worker, at `SHARD_END` so that anything
    /// reading it as a shard lease (Java KCL included) considers it finished and never processes it.
    pub fn worker_heartbeat(worker_id: &str) -> Self {
        let mut row = Self::new(
            format!("{WORKER_KEY_PREFIX}{worker_id}"),
            ExtendedSequenceNumber::ShardEnd,
        );
        row.owner = Some(worker_id.to_owned());
        row
    }

    /// The worker id, if this is a worker heartbeat row rather than a shard lease.
    pub fn heartbeat_of(&self) -> Option<&str> {
        self.key.strip_prefix(WORKER_KEY_PREFIX)
    }

    /// On a heartbeat row: how many times other workers poked its worker (asked it to read the
    /// lease table, see [`LeaseUpdate::poke`]). Heartbeat rows have no checkpoint, so they keep
    /// this count in `owner_switches_since_checkpoint`, which every store already persists.
    pub fn pokes(&self) -> u64 {
        self.owner_switches_since_checkpoint
    }

    /// Whether every record of the shard has been processed.
    pub fn is_finished(&self) -> bool {
        self.checkpoint.is_shard_end()
    }

    /// Whether `worker` holds this lease.
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.owner.as_deref() == Some(worker)
    }

    /// The condition "nothing changed since I read this lease".
    pub fn expectation(&self) -> Expectation {
        Expectation {
            counter: Some(self.counter),
            owner: Some(self.owner.clone()),
        }
    }
}

/// The condition a conditional write checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expectation {
    /// The counter must equal this (when `Some`).
    pub counter: Option<u64>,
    /// The owner must equal this (when `Some`; `Some(None)` means "unowned").
    pub owner: Option<Option<String>>,
}

impl Expectation {
    /// Whether `lease` satisfies the condition.
    pub fn matches(&self, lease: &Lease) -> bool {
        self.counter.is_none_or(|c| c == lease.counter)
            && self.owner.as_ref().is_none_or(|o| *o == lease.owner)
    }
}

/// A change to a lease. Fields left `None` are not touched.
///
/// Every update increments the counter (the fencing token) unless `keep_counter` is set, which
/// only metadata writes that must not look like liveness (child shard ids) use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseUpdate {
    /// New owner (`Some(None)` clears it).
    pub owner: Option<Option<String>>,
    /// New committed checkpoint.
    pub checkpoint: Option<ExtendedSequenceNumber>,
    /// New pending checkpoint (`Some(None)` clears it).
    pub pending_checkpoint: Option<Option<PendingCheckpoint>>,
    /// Add one to `owner_switches_since_checkpoint`.
    pub increment_owner_switches: bool,
    /// Reset `owner_switches_since_checkpoint` to 0.
    pub reset_owner_switches: bool,
    /// New child shard ids.
    pub child_shard_ids: Option<Vec<String>>,
    /// New handoff marker (`Some(None)` clears it).
    pub checkpoint_owner: Option<Option<String>>,
    /// New load (heartbeat rows, see [`Lease::load`]).
    pub load: Option<u64>,
    /// Leave the counter unchanged.
    pub keep_counter: bool,
}

impl LeaseUpdate {
    /// Taking `lease` for `new_owner`: owner set (owner switches +1 when it changes), any handoff
    /// marker cleared.
    pub fn take(lease: &Lease, new_owner: &str) -> Self {
        Self {
            owner: Some(Some(new_owner.to_owned())),
            increment_owner_switches: !lease.is_owned_by(new_owner),
            checkpoint_owner: lease.checkpoint_owner.as_ref().map(|_| None),
            ..Self::default()
        }
    }

    /// Letting `lease` go: to `successor` (who finds it in its name), or unowned when `None`; any
    /// handoff marker cleared.
    pub fn release(lease: &Lease, successor: Option<&str>) -> Self {
        Self {
            owner: Some(successor.map(str::to_owned)),
            increment_owner_switches: successor.is_some_and(|s| !lease.is_owned_by(s)),
            checkpoint_owner: lease.checkpoint_owner.as_ref().map(|_| None),
            ..Self::default()
        }
    }

    /// Asking the owner of `lease` to hand it to `new_owner`: the lease is written in
    /// `new_owner`'s name with the previous owner as `checkpoint_owner`, which lets the previous
    /// owner finish its batch and checkpoint before it clears the marker ([`Self::hand_over`]).
    pub fn request_handoff(lease: &Lease, new_owner: &str) -> Self {
        Self {
            owner: Some(Some(new_owner.to_owned())),
            increment_owner_switches: true,
            checkpoint_owner: Some(lease.owner.clone()),
            ..Self::default()
        }
    }

    /// Poking the worker whose heartbeat row this is applied to: its poke count +1
    /// ([`Lease::pokes`]), counter and owner untouched, so the worker's own next heartbeat
    /// (conditional on both) still succeeds. Sent with no expectation; a missing row is
    /// `NotFound`.
    pub fn poke() -> Self {
        Self {
            increment_owner_switches: true,
            keep_counter: true,
            ..Self::default()
        }
    }

    /// Completing a handoff: the marker cleared, the lease left to its new owner.
    pub fn hand_over() -> Self {
        Self {
            checkpoint_owner: Some(None),
            ..Self::default()
        }
    }

    /// Committing a checkpoint (and, at shard end, recording the children): pending checkpoint
    /// cleared, owner switches reset.
    pub fn checkpoint(position: ExtendedSequenceNumber, children: Option<Vec<String>>) -> Self {
        Self {
            checkpoint: Some(position),
            pending_checkpoint: Some(None),
            reset_owner_switches: true,
            child_shard_ids: children,
            ..Self::default()
        }
    }

    /// Applies the change to `lease` (what every store does after checking the expectation).
    pub fn apply(&self, lease: &mut Lease) {
        if let Some(owner) = &self.owner {
            lease.owner = owner.clone();
        }
        if let Some(checkpoint) = &self.checkpoint {
            lease.checkpoint = checkpoint.clone();
        }
        if let Some(pending) = &self.pending_checkpoint {
            lease.pending_checkpoint = pending.clone();
        }
        if self.reset_owner_switches {
            lease.owner_switches_since_checkpoint = 0;
        }
        if self.increment_owner_switches {
            lease.owner_switches_since_checkpoint =
                lease.owner_switches_since_checkpoint.saturating_add(1);
        }
        if let Some(children) = &self.child_shard_ids {
            lease.child_shard_ids = children.clone();
        }
        if let Some(marker) = &self.checkpoint_owner {
            lease.checkpoint_owner = marker.clone();
        }
        if let Some(load) = self.load {
            lease.load = Some(load);
        }
        if !self.keep_counter {
            lease.counter = lease.counter.wrapping_add(1);
        }
    }
}

/// An error from a lease store or a lease transition.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The conditional write failed: another worker changed the lease (it was taken, renewed by its
    /// owner, or checkpointed). For a holder this means the lease is lost.
    #[error("lease {key}: condition failed (lease changed by someone else)")]
    ConditionFailed {
        /// The lease key.
        key: String,
        /// The lease as the store holds it now, when the store returned it.
        current: Option<Box<Lease>>,
    },
    /// No lease with this key.
    #[error("lease {0} does not exist")]
    NotFound(String),
    /// The store throttled the request; retry later.
    #[error("lease store throttled the request: {0}")]
    Throttled(String),
    /// The outcome of a write is unknown (timeout, connection lost after sending).
    #[error("lease store outcome unknown: {0}")]
    Unknown(String),
    /// A transient failure (5xx, busy database); retry later.
    #[error("lease store temporarily unavailable: {0}")]
    Unavailable(String),
    /// A stored lease could not be decoded; names the lease and the attribute.
    #[error("lease {key}: attribute {attribute} is malformed: {reason}")]
    Malformed {
        /// The lease key.
        key: String,
        /// The attribute or column.
        attribute: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store is not usable (missing table, wrong schema, unwritable file, missing permission).
    #[error("lease store misconfigured: {0}")]
    Misconfigured(String),
    /// Any other store failure.
    #[error("lease store error: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl LeaseError {
    /// Whether retrying the same operation later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled(_) | Self::Unknown(_) | Self::Unavailable(_)
        )
    }

    /// A condition failure for `key` without the current item.
    pub fn condition_failed(key: impl Into<String>) -> Self {
        Self::ConditionFailed {
            key: key.into(),
            current: None,
        }
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Consistency {
    /// Reflects every write that succeeded before the read began.
    #[default]
    Strong,
    /// May miss the most recent writes (on DynamoDB usually the last second or so) and, item by
    /// item, show an older version than a previous read did. Cheaper where a store offers it
    /// (half the read units on DynamoDB); stores without such reads answer strongly. Lease
    /// coordination only uses such reads to decide whether to read strongly.
    Eventual,
}

/// The pluggable lease store.
///
/// Implementations provide five primitives; every lease transition is built from them by the
/// provided methods, so stores differ only in their adapters. One more read,
/// [`list_workers`](Self::list_workers), has a default built on [`list`](Self::list); stores
/// that can read the heartbeat rows alone should override it, because every worker calls it
/// every few seconds. Implementations must pass `contract` (feature `contract-tests`).
///
/// All writes are atomic and conditional: if the [`Expectation`] does not hold, nothing changes and
/// the store answers [`LeaseError::ConditionFailed`].
#[async_trait]
pub trait LeaseTable: Send + Sync + fmt::Debug {
    /// Creates `lease` unless a lease with its key exists. Returns whether it was created.
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError>;

    /// Every row, shard leases and worker heartbeat rows, in any order. Strongly consistent.
    async fn list(&self) -> Result<Vec<Lease>, LeaseError>;

    /// The worker heartbeat rows only (keys starting with [`WORKER_KEY_PREFIX`]), in any order.
    ///
    /// Every worker reads these every few seconds to watch the others, so the read should not
    /// cost more than the rows it returns: the in-memory and SQLite stores read them by key
    /// prefix, the DynamoDB store keeps them in a small table of their own. The default filters
    /// [`list`](Self::list): correct for any store, but as costly as a full read.
    ///
    /// With [`Consistency::Eventual`] the store may answer from a slightly stale copy.
    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        let _ = consistency;
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|row| row.heartbeat_of().is_some())
            .collect())
    }

    /// The lease with this key, if any.
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError>;

    /// Applies `update` if the lease matches `expect`; returns the lease as written.
    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError>;

    /// Deletes the lease if it matches `expect`. Deleting a missing lease is `NotFound`.
    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError>;

    /// The application whose leases this table holds, when the store knows it (SQLite and
    /// DynamoDB tables are opened for an application). A worker built without
    /// [`crate::worker::WorkerBuilder::application_name`] takes it from here, and one built
    /// with a different name is refused, so the name is given once. Default: `None`.
    fn application(&self) -> Option<&str> {
        None
    }
}

/// Lease transitions built on the [`LeaseTable`] primitives. Implemented for every lease table.
///
/// Each is a conditional write of the matching [`LeaseUpdate`] constructor, expected to find the
/// lease exactly as last read.
#[async_trait]
pub trait LeaseTableExt: LeaseTable {
    /// Takes `lease` (as last read) for `new_owner`: counter +1, owner set, owner switches +1 when
    /// the owner changes. Fails if anyone wrote the lease since it was read.
    async fn take(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::take(lease, new_owner))
            .await
    }

    /// Renews a held lease (counter +1). Fails if the lease was taken or changed.
    async fn renew(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::default()).await
    }

    /// Commits a checkpoint on a held lease and clears any pending checkpoint.
    async fn checkpoint(
        &self,
        lease: &Lease,
        position: ExtendedSequenceNumber,
    ) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::checkpoint(position, None))
            .await
    }

    /// Records a prepared (pending) checkpoint on a held lease.
    async fn prepare_checkpoint(
        &self,
        lease: &Lease,
        pending: PendingCheckpoint,
    ) -> Result<Lease, LeaseError> {
        let update = LeaseUpdate {
            pending_checkpoint: Some(Some(pending)),
            ..LeaseUpdate::default()
        };
        self.write_reconciled(lease, &update).await
    }

    /// Releases a held lease: owner cleared, counter +1, so another worker can take it at once.
    async fn release(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::release(lease, None))
            .await
    }

    /// Gives a held lease to `successor` (a graceful shutdown handing its leases to live workers):
    /// the successor finds the lease already in its name and starts after the last checkpoint.
    async fn assign(&self, lease: &Lease, successor: &str) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::release(lease, Some(successor)))
            .await
    }

    /// Asks the owner of `lease` (as last read) to hand it over to `new_owner`; see
    /// [`LeaseUpdate::request_handoff`]. Fails if anyone wrote the lease since it was read.
    async fn request_handoff(&self, lease: &Lease, new_owner: &str) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::request_handoff(lease, new_owner))
            .await
    }

    /// Completes a handoff: clears `checkpoint_owner`, leaving the lease to its new owner.
    async fn hand_over(&self, lease: &Lease) -> Result<Lease, LeaseError> {
        self.write_reconciled(lease, &LeaseUpdate::hand_over())
            .await
    }

    /// Writes `update` conditional on `lease` being unchanged. When the outcome is unknown (the
    /// reply was lost), re-reads the lease: if it shows exactly this write applied (same owner,
    /// counter one higher, the new values in place), the write succeeded.
    async fn write_reconciled(
        &self,
        lease: &Lease,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        match self.update(&lease.key, &lease.expectation(), update).await {
            Err(LeaseError::Unknown(reason)) => {
                let mut expected = lease.clone();
                update.apply(&mut expected);
                match self.get(&lease.key).await? {
                    Some(current) if current == expected => Ok(current),
                    // Unchanged: the write never landed; the caller may simply retry.
                    Some(current) if current == *lease => Err(LeaseError::Unavailable(reason)),
                    Some(current) => Err(LeaseError::ConditionFailed {
                        key: lease.key.clone(),
                        current: Some(Box::new(current)),
                    }),
                    None => Err(LeaseError::Unknown(reason)),
                }
            }
            other => other,
        }
    }
}

impl<T: LeaseTable + ?Sized> LeaseTableExt for T {}
