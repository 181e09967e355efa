//! A lease table wrapper counting the store operations workers make, for the cost figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use kcl_core::lease::{Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate};

/// Operation counts, shared by every wrapper of one table.
#[derive(Debug, Default)]
pub struct Counts {
    /// `list` calls (full-table scans).
    pub scans: AtomicU64,
    /// Rows returned by scans.
    pub rows_scanned: AtomicU64,
    /// `list_workers` calls (reads of the heartbeat rows alone).
    pub worker_reads: AtomicU64,
    /// Rows returned by them.
    pub worker_rows: AtomicU64,
    /// `get` calls.
    pub gets: AtomicU64,
    /// Writes to heartbeat rows (create, update, delete).
    pub heartbeat_writes: AtomicU64,
    /// Writes to shard leases that carry a checkpoint.
    pub checkpoint_writes: AtomicU64,
    /// Other writes to shard leases (takes, renewals, handoffs, creates, deletes).
    pub lease_writes: AtomicU64,
}

impl Counts {
    /// Sets every count to zero.
    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn all(&self) -> [&AtomicU64; 8] {
        [
            &self.scans,
            &self.rows_scanned,
            &self.worker_reads,
            &self.worker_rows,
            &self.gets,
            &self.heartbeat_writes,
            &self.checkpoint_writes,
            &self.lease_writes,
        ]
    }

    /// Reads one count.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Counts the operations made through it.
#[derive(Debug)]
pub struct CountingTable {
    /// The real table.
    pub inner: Arc<dyn LeaseTable>,
    /// Where to count.
    pub counts: Arc<Counts>,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl CountingTable {
    fn write(&self, key: &str, checkpoint: bool) {
        if key.starts_with(kcl_core::lease::WORKER_KEY_PREFIX) {
            bump(&self.counts.heartbeat_writes);
        } else if checkpoint {
            bump(&self.counts.checkpoint_writes);
        } else {
            bump(&self.counts.lease_writes);
        }
    }
}

#[async_trait]
impl LeaseTable for CountingTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.write(&lease.key, false);
        self.inner.create_if_absent(lease).await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        bump(&self.counts.scans);
        let rows = self.inner.list().await?;
        self.counts
            .rows_scanned
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        bump(&self.counts.worker_reads);
        let rows = self.inner.list_workers(consistency).await?;
        self.counts
            .worker_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows)
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        bump(&self.counts.gets);
        self.inner.get(key).await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        self.write(key, update.checkpoint.is_some());
        self.inner.update(key, expect, update).await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.write(key, false);
        self.inner.delete(key, expect).await
    }
}
