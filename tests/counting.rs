//! A lease table wrapper counting the store operations workers make, and billing them in
//! DynamoDB on-demand request units, for the cost figures.
//!
//! Units follow DynamoDB's rules for the read kind the DynamoDB store uses: a strongly
//! consistent `Scan` costs one read unit per started 4 KB of the items it returns (the lease
//! table and the workers table are scanned separately, each at least one unit), an eventually
//! consistent one half that, a strongly consistent `GetItem` one unit per started 4 KB of its
//! item, and a write one write unit per started KB of its item (a failed conditional write is
//! billed too). Item sizes are those of the DynamoDB items (`kcl_lease_dynamo::lease_item_size`),
//! given once per window as the average size of a shard lease and of a heartbeat row
//! ([`Counts::bill_with`]): at rest rows do not change size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use kcl_core::lease::{
    Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate, WORKER_KEY_PREFIX,
};

/// Operation counts and billed units, shared by every wrapper of one table.
#[derive(Debug, Default)]
pub struct Counts {
    /// `list` calls (full-table reads).
    pub scans: AtomicU64,
    /// Rows returned by them.
    pub rows_scanned: AtomicU64,
    /// `list_workers` calls (reads of the heartbeat rows alone).
    pub worker_reads: AtomicU64,
    /// Rows returned by them.
    pub worker_rows: AtomicU64,
    /// `get` calls.
    pub gets: AtomicU64,
    /// Heartbeats (writes to heartbeat rows other than pokes: creation, renewal, deletion).
    pub heartbeat_writes: AtomicU64,
    /// Pokes ([`LeaseUpdate::poke`] writes to a heartbeat row).
    pub pokes: AtomicU64,
    /// Writes to shard leases that carry a checkpoint.
    pub checkpoint_writes: AtomicU64,
    /// Other writes to shard leases (takes, renewals, handoffs, assignments, deletes).
    pub lease_writes: AtomicU64,
    /// Shard leases created (attempts, whether or not the lease existed).
    pub creates: AtomicU64,
    /// Conditional writes refused (billed as writes too).
    pub failed_writes: AtomicU64,
    /// Read units billed, in thousandths.
    pub read_milli_units: AtomicU64,
    /// Write units billed.
    pub write_units: AtomicU64,
    sizes: Mutex<Option<Sizes>>,
}

/// Average DynamoDB item sizes used for billing.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// A shard lease, bytes.
    pub lease: f64,
    /// A heartbeat row, bytes.
    pub heartbeat: f64,
}

impl Sizes {
    /// The average sizes of the rows of `rows`, by DynamoDB's rules.
    pub fn of(rows: &[Lease]) -> Self {
        let size = |row: &Lease| kcl_lease_dynamo::lease_item_size(row).unwrap_or(0) as f64;
        let avg = |rows: Vec<&Lease>| {
            if rows.is_empty() {
                0.0
            } else {
                rows.iter().map(|r| size(r)).sum::<f64>() / rows.len() as f64
            }
        };
        Self {
            lease: avg(rows.iter().filter(|r| r.heartbeat_of().is_none()).collect()),
            heartbeat: avg(rows.iter().filter(|r| r.heartbeat_of().is_some()).collect()),
        }
    }
}

pub fn read_units(bytes: f64, eventual: bool) -> u64 {
    // Thousandths of a unit: one per started 4 KB, at least one; half when eventual.
    let units = ((bytes / 4096.0).ceil() as u64).max(1) * 1000;
    if eventual { units / 2 } else { units }
}

pub fn write_units(bytes: f64) -> u64 {
    ((bytes / 1024.0).ceil() as u64).max(1)
}

impl Counts {
    /// Sets every count to zero.
    pub fn reset(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn all(&self) -> [&AtomicU64; 13] {
        [
            &self.scans,
            &self.rows_scanned,
            &self.worker_reads,
            &self.worker_rows,
            &self.gets,
            &self.heartbeat_writes,
            &self.pokes,
            &self.checkpoint_writes,
            &self.lease_writes,
            &self.creates,
            &self.failed_writes,
            &self.read_milli_units,
            &self.write_units,
        ]
    }

    /// Bills from now on with these item sizes (nothing is billed before).
    pub fn bill_with(&self, sizes: Sizes) {
        *self.sizes.lock().unwrap() = Some(sizes);
    }

    fn sizes(&self) -> Option<Sizes> {
        *self.sizes.lock().unwrap()
    }

    /// Reads one count.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Read units billed.
    pub fn read_units(&self) -> f64 {
        Self::get(&self.read_milli_units) as f64 / 1000.0
    }

    /// Write units billed.
    pub fn write_units(&self) -> f64 {
        Self::get(&self.write_units) as f64
    }

    fn bill_read(&self, units: u64) {
        self.read_milli_units.fetch_add(units, Ordering::Relaxed);
    }

    fn bill_write(&self, key: &str) {
        if let Some(sizes) = self.sizes() {
            let bytes = if key.starts_with(WORKER_KEY_PREFIX) {
                sizes.heartbeat
            } else {
                sizes.lease
            };
            self.write_units
                .fetch_add(write_units(bytes), Ordering::Relaxed);
        }
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
    fn write(&self, key: &str, update: Option<&LeaseUpdate>) {
        let heartbeat_row = key.starts_with(WORKER_KEY_PREFIX);
        match update {
            Some(update) if heartbeat_row && *update == LeaseUpdate::poke() => {
                bump(&self.counts.pokes)
            }
            _ if heartbeat_row => bump(&self.counts.heartbeat_writes),
            Some(update) if update.checkpoint.is_some() => bump(&self.counts.checkpoint_writes),
            _ => bump(&self.counts.lease_writes),
        }
        self.counts.bill_write(key);
    }

    fn failed<T>(&self, result: &Result<T, LeaseError>) {
        if matches!(result, Err(LeaseError::ConditionFailed { .. })) {
            bump(&self.counts.failed_writes);
        }
    }
}

#[async_trait]
impl LeaseTable for CountingTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        if lease.heartbeat_of().is_none() {
            bump(&self.counts.creates);
        }
        self.write(&lease.key, None);
        self.inner.create_if_absent(lease).await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        bump(&self.counts.scans);
        let rows = self.inner.list().await?;
        self.counts
            .rows_scanned
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let Some(sizes) = self.counts.sizes() {
            let heartbeats = rows.iter().filter(|r| r.heartbeat_of().is_some()).count() as f64;
            let leases = rows.len() as f64 - heartbeats;
            // Two tables on DynamoDB: the lease table and the workers table.
            self.counts.bill_read(
                read_units(leases * sizes.lease, false)
                    + read_units(heartbeats * sizes.heartbeat, false),
            );
        }
        Ok(rows)
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        bump(&self.counts.worker_reads);
        let rows = self.inner.list_workers(consistency).await?;
        self.counts
            .worker_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        if let Some(sizes) = self.counts.sizes() {
            self.counts.bill_read(read_units(
                rows.len() as f64 * sizes.heartbeat,
                consistency == Consistency::Eventual,
            ));
        }
        Ok(rows)
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        bump(&self.counts.gets);
        if self.counts.sizes().is_some() {
            self.counts.bill_read(read_units(0.0, false));
        }
        self.inner.get(key).await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        self.write(key, Some(update));
        let result = self.inner.update(key, expect, update).await;
        self.failed(&result);
        result
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.write(key, None);
        let result = self.inner.delete(key, expect).await;
        self.failed(&result);
        result
    }
}
