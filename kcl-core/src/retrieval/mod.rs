//! Retrieval: getting records from a shard to its processor.
//!
//! A retriever runs as its own task per shard and sends `RetrievalEvent`s into a bounded queue
//! read by the shard's consumer. The queue is bounded twice: by a channel capacity and by a
//! `PrefetchBudget` of records and bytes that the consumer gives back once a batch is processed,
//! so memory does not grow with lag.
//!
//! Polling (`GetRecords`) lives in [`polling`]; enhanced fan-out will produce the same events, so
//! the consumer does not know which one feeds it.

use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{BackendError, ChildShard, StartingPosition};
use crate::record::{ExtendedSequenceNumber, Record};

pub mod polling;

pub use polling::PollingConfig;

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

    /// Charges a fetched batch (may overshoot the byte bound by at most one call's worth).
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
