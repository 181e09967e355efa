//! Retrieval: getting records from a shard to its processor.
//!
//! A retriever runs as its own task per shard and sends `RetrievalEvent`s into a bounded queue
//! read by the shard's consumer. The queue is bounded twice: by a channel capacity and by a
//! `PrefetchBudget` of records and bytes that the consumer gives back once a batch is processed,
//! so memory does not grow with lag.
//!
//! Polling (`GetRecords`) lives in [`polling`], enhanced fan-out (`SubscribeToShard`) in
//! [`fanout`]; both produce the same events, so the consumer does not know which one feeds it.
//! [`Retrieval`] chooses between them; `spawn` starts the chosen one for a shard.

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::backend::{BackendError, ChildShard, StartingPosition, StreamBackend};
use crate::metrics::RetrievalMetrics;
use crate::record::{ExtendedSequenceNumber, Record};

pub mod fanout;
pub mod polling;

pub use fanout::FanOutConfig;
pub use polling::PollingConfig;

/// How records are read: polling `GetRecords` (settings in the worker's [`PollingConfig`]) or
/// enhanced fan-out (`SubscribeToShard`, a dedicated 2 MiB/s per shard for this application).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Retrieval {
    /// `GetRecords` with a bounded prefetch (the default).
    #[default]
    Polling,
    /// Enhanced fan-out through a registered stream consumer.
    FanOut(FanOutConfig),
}

/// Keeps a retriever's task running; aborts it when dropped. [`Retriever::stop`] also waits until
/// the task is gone, its subscription or request with it.
pub(crate) struct Retriever {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Retriever {
    /// Stops the task and waits until it is dropped: an open fan-out subscription is closed (the
    /// next owner of the lease can subscribe) and nothing more is sent to the receiver.
    pub(crate) async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Cancelled, finished or panicked: gone either way.
            let _ = task.await;
        }
    }
}

impl Drop for Retriever {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What a retriever needs besides the backend and the shard: the worker's settings for it.
pub(crate) struct RetrievalContext<'a> {
    pub config: &'a crate::worker::WorkerConfig,
    /// The worker-wide prefetch bound this shard's queue shares.
    pub worker_budget: &'a Arc<WorkerBudget>,
    pub metrics: RetrievalMetrics,
}

/// Starts reading `shard_id` from `start` with the retrieval the worker is configured for.
/// Returns the events (in order), the budget the consumer gives processed batches back to, and
/// the guard of the task.
pub(crate) fn spawn(
    ctx: RetrievalContext<'_>,
    backend: Arc<dyn StreamBackend>,
    shard_id: &str,
    start: StartingPosition,
) -> (
    mpsc::Receiver<RetrievalEvent>,
    Arc<PrefetchBudget>,
    Retriever,
) {
    let config = ctx.config;
    let (tx, rx) = mpsc::channel(16);
    let give_up = GiveUp::after(config.permanent_error_timeout);
    let (budget, task) = match &config.retrieval {
        Retrieval::Polling => {
            let polling = &config.polling;
            let budget = Arc::new(PrefetchBudget::shared(
                polling.max_prefetch_records,
                polling.max_prefetch_bytes,
                ctx.worker_budget.clone(),
            ));
            let task = polling::PollingTask {
                backend,
                stream: config.stream.clone(),
                shard_id: shard_id.to_owned(),
                start,
                config: polling.clone(),
                budget: budget.clone(),
                events: tx,
                metrics: ctx.metrics,
                give_up,
            };
            (
                budget,
                tokio::spawn(tracing::Instrument::in_current_span(task.run())),
            )
        }
        Retrieval::FanOut(fanout) => {
            let budget = Arc::new(PrefetchBudget::shared(
                fanout.max_prefetch_records,
                fanout.max_prefetch_bytes,
                ctx.worker_budget.clone(),
            ));
            let task = fanout::FanOutTask {
                backend,
                stream: config.stream.clone(),
                consumer_name: fanout
                    .consumer_name
                    .clone()
                    .unwrap_or_else(|| config.application_name.clone()),
                shard_id: shard_id.to_owned(),
                start,
                config: fanout.clone(),
                budget: budget.clone(),
                events: tx,
                metrics: ctx.metrics,
                give_up,
            };
            (
                budget,
                tokio::spawn(tracing::Instrument::in_current_span(task.run())),
            )
        }
    };
    (rx, budget, Retriever { task: Some(task) })
}

/// Decides when a permanent error (access denied, an invalid request, an operation the backend
/// lacks) has lasted long enough to stop retrying: after `timeout` of such errors with no
/// success in between. Transient errors never give up.
#[derive(Debug, Clone)]
pub(crate) struct GiveUp {
    timeout: std::time::Duration,
    since: Option<Instant>,
}

impl GiveUp {
    pub(crate) fn after(timeout: std::time::Duration) -> Self {
        Self {
            timeout,
            since: None,
        }
    }

    /// A call succeeded.
    pub(crate) fn success(&mut self) {
        self.since = None;
    }

    /// A call failed with `error`: whether to stop retrying. `permanent` says whether the
    /// error is permanent in this call's context.
    pub(crate) fn failed(&mut self, permanent: bool) -> bool {
        if !permanent {
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.timeout
    }

    /// How long to wait at most before the next attempt, so that the give-up moment is not
    /// overshot by a long backoff.
    pub(crate) fn cap(&self, delay: std::time::Duration) -> std::time::Duration {
        match self.since {
            Some(since) => {
                delay.min((since + self.timeout).saturating_duration_since(Instant::now()))
            }
            None => delay,
        }
    }
}

/// What a retriever tells the shard consumer.
#[derive(Debug)]
pub(crate) enum RetrievalEvent {
    /// A non-empty batch of raw records.
    Records {
        records: Vec<Record>,
        millis_behind_latest: Option<u64>,
        /// Bytes charged against the prefetch budget.
        bytes: usize,
        /// When the batch entered the queue.
        queued_at: Instant,
    },
    /// The shard is closed and fully read.
    ShardEnd { child_shards: Vec<ChildShard> },
    /// A progress report without records (caught up).
    CaughtUp { millis_behind_latest: Option<u64> },
    /// A permanent error outlasted the worker's `permanent_error_timeout`: the retriever
    /// stopped.
    Failed(BackendError),
}

/// The worker-wide prefetch bound: how many records and bytes all of a worker's shards may
/// hold fetched but not yet processed (default [`WorkerPrefetch::default`]).
///
/// Shared fairly: a shard fetches only while it holds less than its share (the worker's bound
/// divided by the number of shards reading) and the worker as a whole is below its bound,
/// besides the shard's own per-shard bound. A worker holding 1,000 lagging shards therefore
/// holds about the worker-wide bound at most, whatever the per-shard bounds add up to, and a
/// shard that started early (when shares were larger) cannot crowd out the rest for long: it
/// fetches nothing more until it is back below the new share. The bound may be exceeded by
/// about one batch per shard: a batch is fetched while there is room, and polling sizes it
/// from the room left and the shard's average record size so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerPrefetch {
    /// Records fetched ahead of the processors, for the whole worker (default 1,000,000).
    pub max_records: usize,
    /// Bytes fetched ahead of the processors, for the whole worker (default 256 MiB): data,
    /// partition keys and about 256 bytes of bookkeeping per record.
    pub max_bytes: usize,
}

impl Default for WorkerPrefetch {
    fn default() -> Self {
        Self {
            max_records: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Default)]
struct WorkerUsed {
    records: usize,
    bytes: usize,
    /// Shards reading now (each with a [`PrefetchBudget`] alive).
    shards: usize,
    /// Shards the worker holds leases for (some not reading yet): shares are computed over
    /// the larger of the two, so shards that start first do not take the shares of the rest.
    expected: usize,
}

/// The worker-wide part of the prefetch budget; see [`WorkerPrefetch`].
#[derive(Debug)]
pub(crate) struct WorkerBudget {
    limits: WorkerPrefetch,
    used: Mutex<WorkerUsed>,
    /// Woken when room comes back to the worker as a whole (a batch processed, a reservation
    /// settled below its estimate, a shard stopped), for shards waiting on the worker's bound.
    freed: Notify,
}

impl WorkerBudget {
    pub(crate) fn new(limits: WorkerPrefetch) -> Arc<Self> {
        Arc::new(Self {
            limits: WorkerPrefetch {
                max_records: limits.max_records.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            used: Mutex::new(WorkerUsed::default()),
            freed: Notify::new(),
        })
    }

    fn used(&self) -> std::sync::MutexGuard<'_, WorkerUsed> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many shards the worker holds leases for (reading or about to): the shares are
    /// computed over at least this many.
    pub(crate) fn expect_shards(&self, shards: usize) {
        let changed = {
            let mut used = self.used();
            let changed = used.expected != shards;
            used.expected = shards;
            changed
        };
        if changed {
            self.freed.notify_waiters();
        }
    }

    /// Records and bytes queued by all shards, for tests and benchmarks.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> (usize, usize) {
        let used = self.used();
        (used.records, used.bytes)
    }
}

#[derive(Debug, Default)]
struct Used {
    records: usize,
    bytes: usize,
    /// Set aside for the fetch in flight (charged to the worker already, so shards fetching
    /// at the same time cannot together overshoot the worker's bound); settled by `charge`.
    reserved_records: usize,
    reserved_bytes: usize,
    /// Every record and byte ever charged: the average record size sizes the next fetch.
    charged_records: u64,
    charged_bytes: u64,
}

impl Used {
    fn average_record_bytes(&self) -> usize {
        match self.charged_records {
            0 => FIRST_RECORD_BYTES_GUESS,
            n => usize::try_from(self.charged_bytes / n)
                .unwrap_or(usize::MAX)
                .max(1),
        }
    }
}

/// The average record size assumed before a shard has fetched anything: small fetches first,
/// so a worker starting on many shards does not overshoot its bound.
const FIRST_RECORD_BYTES_GUESS: usize = 16 * 1024;

/// The records and bytes fetched but not yet processed for one shard, bounded per shard and by
/// the worker's [`WorkerBudget`].
#[derive(Debug)]
pub(crate) struct PrefetchBudget {
    max_records: usize,
    max_bytes: usize,
    used: Mutex<Used>,
    freed: Notify,
    worker: Option<Arc<WorkerBudget>>,
}

impl PrefetchBudget {
    /// A budget bounded only per shard.
    #[cfg(test)]
    pub(crate) fn new(max_records: usize, max_bytes: usize) -> Self {
        Self::with_worker(max_records, max_bytes, None)
    }

    /// A budget bounded per shard and by its share of `worker`'s bound.
    pub(crate) fn shared(max_records: usize, max_bytes: usize, worker: Arc<WorkerBudget>) -> Self {
        worker.used().shards += 1;
        Self::with_worker(max_records, max_bytes, Some(worker))
    }

    fn with_worker(
        max_records: usize,
        max_bytes: usize,
        worker: Option<Arc<WorkerBudget>>,
    ) -> Self {
        Self {
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
            worker,
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many records may be fetched now, if any; the fetch's expected size is reserved
    /// against the worker's bound until [`Self::charge`] settles it.
    fn room(&self) -> Option<usize> {
        let mut used = self.used();
        if used.records >= self.max_records || used.bytes >= self.max_bytes {
            return None;
        }
        let mut records = self.max_records - used.records;
        let Some(worker) = &self.worker else {
            return Some(records);
        };
        let mut total = worker.used();
        // A new reservation replaces the last one (a fetch that failed charged nothing); what
        // it gives back may let another shard fetch.
        let had_reserved = used.reserved_records > 0 || used.reserved_bytes > 0;
        total.records = total.records.saturating_sub(used.reserved_records);
        total.bytes = total.bytes.saturating_sub(used.reserved_bytes);
        used.reserved_records = 0;
        used.reserved_bytes = 0;
        if had_reserved {
            worker.freed.notify_waiters();
        }
        // Below its share, and the worker below its bound: shards that started early (when
        // the share was larger) cannot keep more than the worker's bound between them.
        let shards = total.shards.max(total.expected).max(1);
        let share_records = (worker.limits.max_records / shards).max(1);
        let share_bytes = (worker.limits.max_bytes / shards).max(1);
        let total_records = worker.limits.max_records.saturating_sub(total.records);
        let total_bytes = worker.limits.max_bytes.saturating_sub(total.bytes);
        if used.records >= share_records
            || used.bytes >= share_bytes
            || total_records == 0
            || total_bytes == 0
        {
            return None;
        }
        let average = used.average_record_bytes();
        let bytes_room = (share_bytes - used.bytes).min(total_bytes);
        records = records
            .min(share_records - used.records)
            .min(total_records)
            .min((bytes_room / average).max(1));
        let bytes = records.saturating_mul(average).min(bytes_room);
        used.reserved_records = records;
        used.reserved_bytes = bytes;
        total.records += records;
        total.bytes += bytes;
        Some(records)
    }

    /// Waits until there is room for at least one more record and byte; returns how many records
    /// may be fetched.
    pub(crate) async fn wait_for_room(&self) -> usize {
        loop {
            // Both created before looking: a wakeup between the look and the wait is kept.
            let own = self.freed.notified();
            let all = self.worker.as_ref().map(|w| w.freed.notified());
            if let Some(records) = self.room() {
                return records;
            }
            match all {
                Some(all) => {
                    tokio::select! {
                        biased;
                        _ = own => {}
                        _ = all => {}
                    }
                }
                None => own.await,
            }
        }
    }

    /// Charges a fetched batch. A batch is fetched while there is room for one more record and
    /// byte, so the queue may overshoot the byte bound by at most one batch, and the record bound
    /// too when the batch's size is not ours to choose (a fan-out event; polling asks for at
    /// most the records [`Self::wait_for_room`] left).
    pub(crate) fn charge(&self, records: usize, bytes: usize) {
        let mut used = self.used();
        let (reserved_records, reserved_bytes) = (used.reserved_records, used.reserved_bytes);
        used.reserved_records = 0;
        used.reserved_bytes = 0;
        used.records += records;
        used.bytes += bytes;
        used.charged_records += records as u64;
        used.charged_bytes += bytes as u64;
        if let Some(worker) = &self.worker {
            {
                let mut total = worker.used();
                total.records = total.records.saturating_sub(reserved_records) + records;
                total.bytes = total.bytes.saturating_sub(reserved_bytes) + bytes;
            }
            if records < reserved_records || bytes < reserved_bytes {
                worker.freed.notify_waiters();
            }
        }
    }

    /// Gives a processed batch back.
    pub(crate) fn release(&self, records: usize, bytes: usize) {
        {
            let mut used = self.used();
            used.records = used.records.saturating_sub(records);
            used.bytes = used.bytes.saturating_sub(bytes);
            if let Some(worker) = &self.worker {
                let mut total = worker.used();
                total.records = total.records.saturating_sub(records);
                total.bytes = total.bytes.saturating_sub(bytes);
            }
        }
        self.freed.notify_waiters();
        if let Some(worker) = &self.worker {
            worker.freed.notify_waiters();
        }
    }

    /// Records and bytes currently queued.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> (usize, usize) {
        let used = self.used();
        (used.records, used.bytes)
    }
}

impl Drop for PrefetchBudget {
    /// The shard stops reading: what it still had queued is dropped with its queue, and the
    /// other shards' shares grow.
    fn drop(&mut self) {
        if let Some(worker) = &self.worker {
            let used = self.used.get_mut().unwrap_or_else(|p| p.into_inner());
            let mut total = worker.used();
            total.records = total
                .records
                .saturating_sub(used.records + used.reserved_records);
            total.bytes = total.bytes.saturating_sub(used.bytes + used.reserved_bytes);
            total.shards = total.shards.saturating_sub(1);
            drop(total);
            worker.freed.notify_waiters();
        }
    }
}

/// Where to start reading a shard whose lease holds `checkpoint`.
///
/// A real checkpoint restarts `AT_SEQUENCE_NUMBER` (not after it): the record may be a KPL
/// aggregate only partly processed, so the consumer drops the user records at or before the
/// checkpoint after de-aggregation.
pub(crate) fn starting_position(
    checkpoint: &ExtendedSequenceNumber,
    initial_timestamp: Option<std::time::SystemTime>,
) -> Option<StartingPosition> {
    Some(match checkpoint {
        ExtendedSequenceNumber::TrimHorizon => StartingPosition::TrimHorizon,
        ExtendedSequenceNumber::Latest => StartingPosition::Latest,
        ExtendedSequenceNumber::AtTimestamp => match initial_timestamp {
            Some(at) => StartingPosition::AtTimestamp(at),
            None => StartingPosition::TrimHorizon,
        },
        ExtendedSequenceNumber::Sequence { sequence, .. } => {
            StartingPosition::AtSequenceNumber(sequence.clone())
        }
        ExtendedSequenceNumber::ShardEnd => return None,
    })
}

/// What a fetched record costs in memory besides its data and partition key: the `Record`
/// itself, its sequence number and the allocations behind them (measured by the
/// `prefetch_memory` bench: 1 KiB records took about 1.25 KiB each).
pub(crate) const RECORD_OVERHEAD_BYTES: usize = 256;

/// The size a record is charged for: its data, its partition key and its bookkeeping
/// ([`RECORD_OVERHEAD_BYTES`]), so the prefetch bounds bound memory, not only payloads.
pub(crate) fn record_bytes(record: &Record) -> usize {
    record.data().len() + record.partition_key().len() + RECORD_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_blocks_the_fetcher_until_the_consumer_gives_back() {
        let budget = std::sync::Arc::new(PrefetchBudget::new(100, 10_000));
        assert_eq!(budget.wait_for_room().await, 100);
        budget.charge(60, 1_000);
        assert_eq!(budget.wait_for_room().await, 40);
        budget.charge(50, 1_000);
        assert_eq!(budget.in_use(), (110, 2_000));
        // Full (records): the fetcher waits until the consumer releases a batch.
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        budget.release(60, 1_000);
        assert_eq!(waiter.await.unwrap(), 50);
        // Full (bytes) also blocks.
        budget.charge(0, 9_000);
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        budget.release(50, 9_000);
        assert_eq!(waiter.await.unwrap(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn shards_share_the_worker_budget_fairly_and_give_it_back_when_they_stop() {
        // Room for 100 records a shard by count, and by bytes at the first guess of a record's
        // size.
        let worker = WorkerBudget::new(WorkerPrefetch {
            max_records: 300,
            max_bytes: 300 * FIRST_RECORD_BYTES_GUESS,
        });
        let shards: Vec<_> = (0..3)
            .map(|_| Arc::new(PrefetchBudget::shared(1_000, 1_000_000, worker.clone())))
            .collect();
        // Each shard may fill its share (100 records), not the per-shard bound (1,000).
        assert_eq!(shards[0].wait_for_room().await, 100);
        shards[0].charge(100, 1_000);
        let blocked = {
            let shard = shards[0].clone();
            tokio::spawn(async move { shard.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished(), "a shard at its share waits");
        // The others still get theirs: nobody starves.
        assert_eq!(shards[1].wait_for_room().await, 100);
        shards[1].charge(100, 1_000);
        shards[2].charge(100, 1_000);
        assert_eq!(worker.in_use(), (300, 3_000));
        // Fetch sizes follow the records' average size: 10 bytes each here, so the byte share
        // is worth far more records and the record share binds.
        shards[0].release(50, 500);
        assert_eq!(blocked.await.unwrap(), 50);
        // The fetch is reserved against the worker's bound at once (other shards asking
        // meanwhile see it), and settled when it arrives.
        assert_eq!(worker.in_use(), (300, 3_000));
        shards[0].charge(40, 400);
        assert_eq!(worker.in_use(), (290, 2_900));
        // A shard that stops gives back what it held; the others' shares grow.
        let mut shards = shards;
        drop(shards.pop());
        assert_eq!(worker.in_use(), (190, 1_900));
        assert_eq!(
            shards[0].wait_for_room().await,
            60,
            "half of 300, less the 90 it holds"
        );
        let third = PrefetchBudget::shared(1_000, 1_000_000, worker.clone());
        assert_eq!(
            third.wait_for_room().await,
            50,
            "a third of 300 is its share, but shard 0's fetch of 60 is reserved: 50 are left"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_waiting_on_the_worker_bound_wakes_when_a_reservation_goes() {
        // Found by the simulation (seed 199): a shard waited forever for room another shard
        // had only reserved.
        let worker = WorkerBudget::new(WorkerPrefetch {
            max_records: 1_000_000,
            max_bytes: 64 * FIRST_RECORD_BYTES_GUESS,
        });
        let a = Arc::new(PrefetchBudget::shared(30_000, 8 << 20, worker.clone()));
        // Alone, at the first guess of a record's size, `a` reserves the whole bound.
        assert_eq!(a.wait_for_room().await, 64);
        let b = Arc::new(PrefetchBudget::shared(30_000, 8 << 20, worker.clone()));
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the bound is reserved");
        // `a` asks again (its fetch failed): its new reservation is its half, and `b` wakes
        // to take the other half.
        assert_eq!(a.wait_for_room().await, 32);
        assert_eq!(waiting.await.unwrap(), 32);
        assert_eq!(worker.in_use(), (64, 64 * FIRST_RECORD_BYTES_GUESS));
        // A fetch that came back empty gives its reservation back, and a waiter wakes.
        let c = Arc::new(PrefetchBudget::shared(30_000, 8 << 20, worker.clone()));
        let waiting = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_for_room().await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a and b reserved the bound");
        a.charge(0, 0);
        assert_eq!(waiting.await.unwrap(), 64 / 3, "its third of the bound");
    }

    #[tokio::test(start_paused = true)]
    async fn large_records_make_small_fetches() {
        let worker = WorkerBudget::new(WorkerPrefetch {
            max_records: 1_000_000,
            max_bytes: 1_000_000,
        });
        let shard = PrefetchBudget::shared(10_000, 8 << 20, worker.clone());
        // Nothing fetched yet: sized by the first guess (16 KiB a record).
        assert_eq!(
            shard.wait_for_room().await,
            1_000_000 / FIRST_RECORD_BYTES_GUESS
        );
        shard.charge(10, 100_000);
        // 10 KB a record: 900 KB of room is 90 records.
        assert_eq!(shard.wait_for_room().await, 90);
    }
}
