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

/// Starts reading `shard_id` from `start` with the retrieval the worker is configured for.
/// Returns the events (in order), the budget the consumer gives processed batches back to, and
/// the guard of the task.
pub(crate) fn spawn(
    config: &crate::worker::WorkerConfig,
    backend: Arc<dyn StreamBackend>,
    shard_id: &str,
    start: StartingPosition,
) -> (
    mpsc::Receiver<RetrievalEvent>,
    Arc<PrefetchBudget>,
    Retriever,
) {
    let (tx, rx) = mpsc::channel(16);
    let (budget, task) = match &config.retrieval {
        Retrieval::Polling => {
            let polling = &config.polling;
            let budget = Arc::new(PrefetchBudget::new(
                polling.max_prefetch_records,
                polling.max_prefetch_bytes,
            ));
            let task = polling::PollingTask {
                backend,
                stream: config.stream.clone(),
                shard_id: shard_id.to_owned(),
                start,
                config: polling.clone(),
                budget: budget.clone(),
                events: tx,
            };
            (
                budget,
                tokio::spawn(tracing::Instrument::in_current_span(task.run())),
            )
        }
        Retrieval::FanOut(fanout) => {
            let budget = Arc::new(PrefetchBudget::new(
                fanout.max_prefetch_records,
                fanout.max_prefetch_bytes,
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
            };
            (
                budget,
                tokio::spawn(tracing::Instrument::in_current_span(task.run())),
            )
        }
    };
    (rx, budget, Retriever { task: Some(task) })
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
        #[allow(dead_code)]
        queued_at: Instant,
    },
    /// The shard is closed and fully read.
    ShardEnd { child_shards: Vec<ChildShard> },
    /// A progress report without records (caught up).
    CaughtUp { millis_behind_latest: Option<u64> },
    /// A fatal error: the retriever stopped.
    #[allow(dead_code)]
    Failed(BackendError),
}

#[derive(Debug, Default)]
struct Used {
    records: usize,
    bytes: usize,
}

/// The records and bytes fetched but not yet processed, bounded.
#[derive(Debug)]
pub(crate) struct PrefetchBudget {
    max_records: usize,
    max_bytes: usize,
    used: Mutex<Used>,
    freed: Notify,
}

impl PrefetchBudget {
    pub(crate) fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            max_records: max_records.max(1),
            max_bytes: max_bytes.max(1),
            used: Mutex::new(Used::default()),
            freed: Notify::new(),
        }
    }

    fn used(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until there is room for at least one more record and byte; returns how many records
    /// may be fetched.
    pub(crate) async fn wait_for_room(&self) -> usize {
        loop {
            let notified = self.freed.notified();
            {
                let used = self.used();
                if used.records < self.max_records && used.bytes < self.max_bytes {
                    return self.max_records - used.records;
                }
            }
            notified.await;
        }
    }

    /// Charges a fetched batch. A batch is fetched while there is room for one more record and
    /// byte, so the queue may overshoot the byte bound by at most one batch, and the record bound
    /// too when the batch's size is not ours to choose (a fan-out event; polling asks for at
    /// most the records [`Self::wait_for_room`] left).
    pub(crate) fn charge(&self, records: usize, bytes: usize) {
        let mut used = self.used();
        used.records += records;
        used.bytes += bytes;
    }

    /// Gives a processed batch back.
    pub(crate) fn release(&self, records: usize, bytes: usize) {
        {
            let mut used = self.used();
            used.records = used.records.saturating_sub(records);
            used.bytes = used.bytes.saturating_sub(bytes);
        }
        self.freed.notify_waiters();
    }

    /// Records and bytes currently queued.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> (usize, usize) {
        let used = self.used();
        (used.records, used.bytes)
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

/// The size a record is charged for: its data plus its partition key.
pub(crate) fn record_bytes(record: &Record) -> usize {
    record.data().len() + record.partition_key().len()
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
}
