//! Polling retrieval: a prefetch task per shard calling `GetRecords`.
//!
//! - Reads as fast as the shard allows while behind (at most one call per
//!   `min_time_between_calls`), and waits `idle_time_between_reads` once caught up.
//! - Throttling (`ProvisionedThroughputExceeded`) and transient errors back off exponentially with
//!   jitter instead of sleeping a fixed time (Java KCL's retry storms, issues #981/#1062).
//! - An expired iterator is replaced by one `AFTER_SEQUENCE_NUMBER` of the last record fetched, so
//!   nothing is skipped or repeated.
//! - `ResourceNotFound` for the shard is treated as its end (as Java KCL does).
//! - The prefetch queue is bounded in records and bytes by the `PrefetchBudget` of the retrieval module.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error, warn};

use super::{GiveUp, PrefetchBudget, RetrievalEvent, record_bytes};
use crate::backend::{BackendError, StartingPosition, StreamBackend};
use crate::metrics::RetrievalMetrics;
use crate::record::SequenceNumber;
use crate::retry::RetryBackoff;

/// Settings of polling retrieval.
#[derive(Clone, Debug, PartialEq)]
pub struct PollingConfig {
    /// Records asked for per `GetRecords` call (1..=10000, default 10000).
    pub max_records_per_call: u32,
    /// Wait between calls once the shard is caught up (default 1 s; Java KCL uses 1.5 s).
    pub idle_time_between_reads: Duration,
    /// Least time between two calls for one shard while behind (default 200 ms: the 5 calls/s
    /// shard limit).
    pub min_time_between_calls: Duration,
    /// Records fetched ahead of the processor, at most (default 30000).
    pub max_prefetch_records: usize,
    /// Bytes fetched ahead of the processor, at most (default 8 MiB; may be exceeded by one call's
    /// response): data, partition keys and about 256 bytes of bookkeeping per record. The
    /// worker-wide bound ([`super::WorkerPrefetch`]) applies too.
    pub max_prefetch_bytes: usize,
    /// Backoff after throttling or transient errors.
    pub error_backoff: RetryBackoff,
}

impl Default for PollingConfig {
    fn default() -> Self {
        Self {
            max_records_per_call: 10_000,
            idle_time_between_reads: Duration::from_secs(1),
            min_time_between_calls: Duration::from_millis(200),
            max_prefetch_records: 30_000,
            max_prefetch_bytes: 8 * 1024 * 1024,
            error_backoff: RetryBackoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }
}

/// Everything one polling task needs.
pub(crate) struct PollingTask {
    pub backend: Arc<dyn StreamBackend>,
    pub stream: String,
    pub shard_id: String,
    pub start: StartingPosition,
    pub config: PollingConfig,
    pub budget: Arc<PrefetchBudget>,
    pub events: mpsc::Sender<RetrievalEvent>,
    pub metrics: RetrievalMetrics,
    /// When a permanent error (access denied, invalid request) stops the task.
    pub give_up: GiveUp,
}

impl PollingTask {
    /// Runs until the shard ends, the receiver is dropped, or an unrecoverable error.
    pub(crate) async fn run(mut self) {
        let mut last_fetched: Option<SequenceNumber> = None;
        let mut iterator = None;
        let mut backoff = self.config.error_backoff.schedule();
        let mut last_call: Option<Instant> = None;
        loop {
            if self.events.is_closed() {
                return;
            }
            let room = self.budget.wait_for_room().await;
            if let Some(at) = last_call {
                tokio::time::sleep_until(at + self.config.min_time_between_calls).await;
            }
            let current = match iterator.take() {
                Some(it) => it,
                None => {
                    let position = match &last_fetched {
                        Some(seq) => StartingPosition::AfterSequenceNumber(seq.clone()),
                        None => self.start.clone(),
                    };
                    match self
                        .backend
                        .get_shard_iterator(&self.stream, &self.shard_id, position)
                        .await
                    {
                        // Not a success that resets the give-up wait: only records flowing are
                        // (an iterator is fetched again after every failed read).
                        Ok(it) => it,
                        Err(err) => {
                            if self.on_error(err, &mut backoff).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            };
            let limit = u32::try_from(room)
                .unwrap_or(u32::MAX)
                .clamp(1, self.config.max_records_per_call.clamp(1, 10_000));
            let called = Instant::now();
            last_call = Some(called);
            let result = self.backend.get_records(&current, limit).await;
            self.metrics.get_records_calls.increment(1);
            self.metrics
                .get_records_duration
                .record(called.elapsed().as_secs_f64());
            match result {
                Ok(output) => {
                    self.give_up.success();
                    backoff = self.config.error_backoff.schedule();
                    let caught_up =
                        output.records.is_empty() || output.millis_behind_latest == Some(0);
                    if let Some(last) = output.records.last() {
                        last_fetched = Some(last.sequence_number().clone());
                    }
                    let bytes = output.records.iter().map(record_bytes).sum();
                    // Settles the fetch's reservation, empty or not.
                    self.budget.charge(output.records.len(), bytes);
                    if !output.records.is_empty() {
                        let event = RetrievalEvent::Records {
                            records: output.records,
                            millis_behind_latest: output.millis_behind_latest,
                            bytes,
                            queued_at: Instant::now(),
                        };
                        if self.events.send(event).await.is_err() {
                            return;
                        }
                    } else if self
                        .events
                        .send(RetrievalEvent::CaughtUp {
                            millis_behind_latest: output.millis_behind_latest,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    match output.next_shard_iterator {
                        Some(next) => iterator = Some(next),
                        None => {
                            debug!(shard = %self.shard_id, children = output.child_shards.len(), "shard end reached");
                            let _ = self
                                .events
                                .send(RetrievalEvent::ShardEnd {
                                    child_shards: output.child_shards,
                                })
                                .await;
                            return;
                        }
                    }
                    if caught_up {
                        tokio::time::sleep(self.config.idle_time_between_reads).await;
                    }
                }
                Err(BackendError::ExpiredIterator(message)) => {
                    self.metrics.expired_iterators.increment(1);
                    debug!(shard = %self.shard_id, %message, "iterator expired; re-fetching after the last record");
                    iterator = None;
                }
                Err(err) => {
                    if self.on_error(err, &mut backoff).await {
                        return;
                    }
                }
            }
        }
    }

    /// Handles an error: returns `true` when the task should stop.
    async fn on_error(
        &mut self,
        err: BackendError,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> bool {
        if !matches!(err, BackendError::ResourceNotFound(_)) {
            self.metrics.read_failed(&err);
        }
        match err {
            BackendError::ResourceNotFound(message) => {
                warn!(shard = %self.shard_id, %message, "shard not found; treating it as ended");
                let _ = self
                    .events
                    .send(RetrievalEvent::ShardEnd {
                        child_shards: Vec::new(),
                    })
                    .await;
                true
            }
            err => {
                if self.give_up.failed(err.is_permanent()) {
                    error!(shard = %self.shard_id, error = %err, "read error persists; giving up");
                    let _ = self.events.send(RetrievalEvent::Failed(err)).await;
                    return true;
                }
                if err.is_throttling() {
                    debug!(shard = %self.shard_id, error = %err, "throttled; backing off");
                } else if err.is_retryable() {
                    warn!(shard = %self.shard_id, error = %err, "transient read error; backing off");
                } else {
                    error!(shard = %self.shard_id, error = %err, "read error; backing off and retrying");
                }
                let delay = self
                    .give_up
                    .cap(backoff.next().unwrap_or(self.config.error_backoff.max));
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep(delay) => false,
                    _ = self.events.closed() => true,
                }
            }
        }
    }
}
