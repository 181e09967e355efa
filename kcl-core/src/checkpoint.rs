//! The checkpointer: how a processor records how far it got.
//!
//! A [`Checkpointer`] is handed to every [`crate::processor::RecordProcessor`] call. It validates
//! positions as the Java KCL does: a checkpoint never moves backwards (the same position twice is a
//! no-op) and never goes beyond the last record handed to the processor. Writes are conditional on
//! the lease's fencing counter, so a worker that lost the lease gets
//! [`CheckpointError::LeaseLost`] instead of overwriting the new owner's progress.
//!
//! Two-phase checkpoints: [`Checkpointer::prepare`] stores a pending position (with optional
//! application state) without committing it; [`Checkpointer::commit`] commits it. A worker that
//! takes the shard over sees the pending checkpoint in
//! [`crate::processor::InitializationInput::pending_checkpoint`].

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::lease::held::{HeldLease, HeldWriteError};
use crate::lease::{
    InMemoryLeaseTable, Lease, LeaseConfig, LeaseError, LeaseTable, LeaseUpdate, PendingCheckpoint,
    Renewal,
};
use crate::record::{ExtendedSequenceNumber, Record, SequenceNumber};
use crate::retry::RetryBackoff;

/// Why a checkpoint was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The position is before the last checkpoint.
    #[error("shard {shard_id}: checkpoint {requested} is before the last checkpoint {last}")]
    BeforeLastCheckpoint {
        /// The shard.
        shard_id: String,
        /// The refused position.
        requested: ExtendedSequenceNumber,
        /// The last committed checkpoint.
        last: ExtendedSequenceNumber,
    },
    /// The position is beyond the last record handed to the processor.
    #[error(
        "shard {shard_id}: checkpoint {requested} is beyond the last delivered record {largest}"
    )]
    BeyondDelivered {
        /// The shard.
        shard_id: String,
        /// The refused position.
        requested: ExtendedSequenceNumber,
        /// The largest position that may be checkpointed now.
        largest: ExtendedSequenceNumber,
    },
    /// A sentinel (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`) cannot be checkpointed.
    #[error("shard {shard_id}: {requested} is not a position that can be checkpointed")]
    InvalidPosition {
        /// The shard.
        shard_id: String,
        /// The refused position.
        requested: ExtendedSequenceNumber,
    },
    /// Nothing has been delivered yet, so there is nothing to checkpoint.
    #[error("shard {0}: no record has been delivered yet")]
    NothingDelivered(String),
    /// The lease is no longer held by this worker (taken by another, or released).
    #[error("shard {0}: lease lost, checkpoint not recorded")]
    LeaseLost(String),
    /// The lease store failed after retries; the checkpoint was not recorded.
    #[error("shard {shard_id}: lease store error: {source}")]
    Store {
        /// The shard.
        shard_id: String,
        /// The store error.
        #[source]
        source: LeaseError,
    },
}

/// A checkpoint prepared with [`Checkpointer::prepare`], to be committed with
/// [`Checkpointer::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a prepared checkpoint does nothing until committed"]
pub struct PreparedCheckpoint {
    position: ExtendedSequenceNumber,
}

impl PreparedCheckpoint {
    /// The prepared position.
    pub fn position(&self) -> &ExtendedSequenceNumber {
        &self.position
    }
}

/// Records the progress of one shard. Handed to processor calls by the worker.
#[derive(Debug)]
pub struct Checkpointer {
    shard_id: String,
    lease: Arc<HeldLease>,
    last_checkpoint: ExtendedSequenceNumber,
    largest_permitted: Option<ExtendedSequenceNumber>,
    backoff: RetryBackoff,
    attempts: u32,
    last_write_at: Instant,
    /// Checkpoints written and failed (no-ops outside a worker).
    written: metrics::Counter,
    failed: metrics::Counter,
}

impl Checkpointer {
    pub(crate) fn new(lease: Arc<HeldLease>, checkpoint: ExtendedSequenceNumber) -> Self {
        Self {
            shard_id: lease.key().to_owned(),
            lease,
            last_checkpoint: checkpoint,
            largest_permitted: None,
            backoff: RetryBackoff::new(
                std::time::Duration::from_millis(50),
                std::time::Duration::from_secs(2),
            ),
            attempts: 4,
            last_write_at: Instant::now(),
            written: metrics::Counter::noop(),
            failed: metrics::Counter::noop(),
        }
    }

    /// Counts written and failed checkpoints in these counters.
    pub(crate) fn with_metrics(
        mut self,
        written: metrics::Counter,
        failed: metrics::Counter,
    ) -> Self {
        self.written = written;
        self.failed = failed;
        self
    }

    /// A checkpointer on a fresh in-memory lease, for unit-testing a processor outside a worker.
    /// Call [`Checkpointer::deliver`] to simulate records being handed out.
    pub async fn in_memory(shard_id: &str) -> Result<Self, LeaseError> {
        let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
        let mut lease = Lease::new(shard_id, ExtendedSequenceNumber::TrimHorizon);
        lease.owner = Some("test-worker".to_owned());
        table.create_if_absent(&lease).await?;
        let config = LeaseConfig {
            renewal: Renewal::PerLease,
            ..LeaseConfig::default()
        };
        let liveness = Arc::new(crate::lease::liveness::Liveness::new(
            "test-worker",
            &config,
        ));
        let held = HeldLease::new(table, lease, liveness, Instant::now());
        Ok(Self::new(held, ExtendedSequenceNumber::TrimHorizon))
    }

    /// Records that `records` were handed to the processor, raising the largest position that may
    /// be checkpointed. The worker calls this before every batch; tests may call it directly.
    pub fn deliver(&mut self, records: &[Record]) {
        if let Some(last) = records.last() {
            self.largest_permitted = Some(last.position());
        }
    }

    pub(crate) fn permit(&mut self, position: ExtendedSequenceNumber) {
        self.largest_permitted = Some(position);
    }

    /// The shard this checkpointer belongs to.
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The last committed checkpoint.
    pub fn last_checkpoint(&self) -> &ExtendedSequenceNumber {
        &self.last_checkpoint
    }

    /// The largest position that may be checkpointed now (the last record handed out), if any.
    pub fn largest_permitted(&self) -> Option<&ExtendedSequenceNumber> {
        self.largest_permitted.as_ref()
    }

    pub(crate) fn last_write_at(&self) -> Instant {
        self.last_write_at
    }

    /// Checkpoints the last record handed to the processor.
    pub async fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        let position = self
            .largest_permitted
            .clone()
            .ok_or_else(|| CheckpointError::NothingDelivered(self.shard_id.clone()))?;
        self.checkpoint_position(position).await
    }

    /// Checkpoints at a record (its sequence and sub-sequence number).
    pub async fn checkpoint_record(&mut self, record: &Record) -> Result<(), CheckpointError> {
        self.checkpoint_position(record.position()).await
    }

    /// Checkpoints at `(sequence, sub_sequence)`.
    pub async fn checkpoint_at(
        &mut self,
        sequence: &SequenceNumber,
        sub_sequence: u64,
    ) -> Result<(), CheckpointError> {
        self.checkpoint_position(ExtendedSequenceNumber::Sequence {
            sequence: sequence.clone(),
            sub_sequence,
        })
        .await
    }

    /// Prepares a checkpoint at the last delivered record, with optional application state,
    /// without committing it.
    pub async fn prepare(
        &mut self,
        state: Option<Bytes>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        let position = self
            .largest_permitted
            .clone()
            .ok_or_else(|| CheckpointError::NothingDelivered(self.shard_id.clone()))?;
        self.prepare_at(position, state).await
    }

    /// Prepares a checkpoint at `position`, with optional application state.
    pub async fn prepare_at(
        &mut self,
        position: ExtendedSequenceNumber,
        state: Option<Bytes>,
    ) -> Result<PreparedCheckpoint, CheckpointError> {
        self.validate(&position)?;
        let update = LeaseUpdate {
            pending_checkpoint: Some(Some(PendingCheckpoint {
                position: position.clone(),
                state,
            })),
            ..LeaseUpdate::default()
        };
        self.write(&update).await?;
        Ok(PreparedCheckpoint { position })
    }

    /// Commits a prepared checkpoint (validated again: it must still not go backwards).
    pub async fn commit(&mut self, prepared: PreparedCheckpoint) -> Result<(), CheckpointError> {
        self.checkpoint_position(prepared.position).await
    }

    /// Validates and writes a checkpoint.
    pub async fn checkpoint_position(
        &mut self,
        position: ExtendedSequenceNumber,
    ) -> Result<(), CheckpointError> {
        self.validate(&position)?;
        if position == self.last_checkpoint {
            return Ok(());
        }
        self.commit_unchecked(position, None).await
    }

    /// Writes `SHARD_END` (and the children) once the processor accepted the end of the shard.
    pub(crate) async fn checkpoint_shard_end(
        &mut self,
        children: Vec<String>,
    ) -> Result<(), CheckpointError> {
        self.commit_unchecked(ExtendedSequenceNumber::ShardEnd, Some(children))
            .await
    }

    async fn commit_unchecked(
        &mut self,
        position: ExtendedSequenceNumber,
        children: Option<Vec<String>>,
    ) -> Result<(), CheckpointError> {
        if let Err(error) = self
            .write(&LeaseUpdate::checkpoint(position.clone(), children))
            .await
        {
            self.failed.increment(1);
            return Err(error);
        }
        self.written.increment(1);
        tracing::debug!(shard_id = %self.shard_id, checkpoint = %position, "checkpoint written");
        self.last_checkpoint = position;
        Ok(())
    }

    fn validate(&self, position: &ExtendedSequenceNumber) -> Result<(), CheckpointError> {
        if position.is_initial_sentinel() {
            return Err(CheckpointError::InvalidPosition {
                shard_id: self.shard_id.clone(),
                requested: position.clone(),
            });
        }
        if *position < self.last_checkpoint {
            return Err(CheckpointError::BeforeLastCheckpoint {
                shard_id: self.shard_id.clone(),
                requested: position.clone(),
                last: self.last_checkpoint.clone(),
            });
        }
        match &self.largest_permitted {
            Some(largest) if position <= largest => Ok(()),
            Some(largest) => Err(CheckpointError::BeyondDelivered {
                shard_id: self.shard_id.clone(),
                requested: position.clone(),
                largest: largest.clone(),
            }),
            None if *position == self.last_checkpoint => Ok(()),
            None => Err(CheckpointError::NothingDelivered(self.shard_id.clone())),
        }
    }

    async fn write(&mut self, update: &LeaseUpdate) -> Result<Lease, CheckpointError> {
        let mut delays = self.backoff.schedule();
        let mut attempt = 1;
        loop {
            match self.lease.write(update).await {
                Ok(lease) => {
                    self.last_write_at = Instant::now();
                    return Ok(lease);
                }
                Err(HeldWriteError::Lost(_)) => {
                    return Err(CheckpointError::LeaseLost(self.shard_id.clone()));
                }
                Err(HeldWriteError::Store(source)) => {
                    if !source.is_retryable() || attempt >= self.attempts {
                        return Err(CheckpointError::Store {
                            shard_id: self.shard_id.clone(),
                            source,
                        });
                    }
                    attempt += 1;
                    if let Some(delay) = delays.next() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn held_lease(&self) -> &Arc<HeldLease> {
        &self.lease
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseTableExt;

    fn record(seq: u128, sub: Option<u64>) -> Record {
        let r = Record::new(
            "pk",
            Bytes::from_static(b"x"),
            SequenceNumber::from_u128(seq),
        );
        match sub {
            Some(s) => r.with_sub_sequence(s),
            None => r,
        }
    }

    #[tokio::test]
    async fn validates_like_kcl() {
        let mut cp = Checkpointer::in_memory("shardId-000000000000")
            .await
            .unwrap();
        // Nothing delivered yet.
        assert!(matches!(
            cp.checkpoint().await,
            Err(CheckpointError::NothingDelivered(_))
        ));
        cp.deliver(&[record(10, None), record(20, None)]);
        // Beyond what was delivered.
        let beyond = cp.checkpoint_at(&SequenceNumber::from_u128(21), 0).await;
        assert!(matches!(
            beyond,
            Err(CheckpointError::BeyondDelivered { .. })
        ));
        // Sentinels cannot be checkpointed by users.
        let bad = cp.checkpoint_position(ExtendedSequenceNumber::Latest).await;
        assert!(matches!(bad, Err(CheckpointError::InvalidPosition { .. })));
        // Forward is fine, the same twice is a no-op, backwards is refused.
        cp.checkpoint_at(&SequenceNumber::from_u128(20), 0)
            .await
            .unwrap();
        cp.checkpoint_at(&SequenceNumber::from_u128(20), 0)
            .await
            .unwrap();
        let back = cp.checkpoint_record(&record(10, None)).await;
        assert!(matches!(
            back,
            Err(CheckpointError::BeforeLastCheckpoint { .. })
        ));
        assert_eq!(cp.last_checkpoint(), &record(20, None).position());
        // The store holds it.
        let stored = cp.held_lease().lease().await;
        assert_eq!(stored.checkpoint, record(20, None).position());
    }

    #[tokio::test]
    async fn sub_sequence_positions_order_inside_an_aggregate() {
        let mut cp = Checkpointer::in_memory("s").await.unwrap();
        cp.deliver(&[record(5, Some(0)), record(5, Some(1)), record(5, Some(2))]);
        cp.checkpoint_at(&SequenceNumber::from_u128(5), 1)
            .await
            .unwrap();
        assert!(
            cp.checkpoint_at(&SequenceNumber::from_u128(5), 3)
                .await
                .is_err()
        );
        assert!(
            cp.checkpoint_at(&SequenceNumber::from_u128(5), 0)
                .await
                .is_err()
        );
        cp.checkpoint().await.unwrap();
        assert_eq!(cp.last_checkpoint().sub_sequence(), 2);
    }

    #[tokio::test]
    async fn two_phase_checkpoint_keeps_state_until_commit() {
        let mut cp = Checkpointer::in_memory("s").await.unwrap();
        cp.deliver(&[record(7, None)]);
        let prepared = cp
            .prepare(Some(Bytes::from_static(b"state")))
            .await
            .unwrap();
        let lease = cp.held_lease().lease().await;
        let pending = lease.pending_checkpoint.expect("pending stored");
        assert_eq!(pending.state.as_deref(), Some(&b"state"[..]));
        assert_eq!(lease.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        cp.commit(prepared).await.unwrap();
        let lease = cp.held_lease().lease().await;
        assert_eq!(lease.pending_checkpoint, None);
        assert_eq!(lease.checkpoint, record(7, None).position());
    }

    #[tokio::test]
    async fn a_zombie_cannot_checkpoint_after_the_lease_was_taken() {
        let mut cp = Checkpointer::in_memory("s").await.unwrap();
        cp.deliver(&[record(7, None)]);
        // Another worker takes the lease behind our back.
        let table = cp.held_lease().table.clone();
        let current = table.get("s").await.unwrap().unwrap();
        table.take(&current, "other").await.unwrap();
        let result = cp.checkpoint().await;
        assert!(
            matches!(result, Err(CheckpointError::LeaseLost(_))),
            "{result:?}"
        );
        assert!(cp.held_lease().is_lost());
        let stored = table.get("s").await.unwrap().unwrap();
        assert_eq!(stored.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        assert_eq!(stored.owner.as_deref(), Some("other"));
    }
}
