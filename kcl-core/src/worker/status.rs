//! What a worker's shards are doing: the status board its consumers write and
//! [`super::WorkerHandle::status`] reads.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::lease::coordinator::LeaseStats;
use crate::record::ExtendedSequenceNumber;

/// What a shard consumer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardState {
    /// Waiting for parent shards to finish.
    WaitingOnParents,
    /// Creating the processor and calling `initialize`.
    Initializing,
    /// Reading and processing.
    Processing,
    /// A batch (or `create`, `initialize`) failed and is being retried.
    Retrying,
    /// The shard ended and `SHARD_END` was recorded.
    Ended,
    /// Stopped by the failure policy; the lease is kept.
    Stopped,
    /// Shut down (lease released) or lost.
    Finished,
}

/// A snapshot of one shard processed by this worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The stream name.
    pub stream: String,
    /// The shard id.
    pub shard_id: String,
    /// The lease key: the shard id, or `account:stream:creationEpoch:shardId` for a
    /// multi-stream worker.
    pub lease_key: String,
    /// Current state.
    pub state: ShardState,
    /// User records processed successfully by this worker.
    pub records_processed: u64,
    /// Lag at the last fetch.
    pub millis_behind_latest: Option<u64>,
    /// Last checkpoint written by this worker.
    pub last_checkpoint: Option<ExtendedSequenceNumber>,
}

/// A snapshot of a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The worker id.
    pub worker_id: String,
    /// Shards with a consumer on this worker (running, waiting for parents, or stopped by the
    /// failure policy), by lease key. Shards that ended, were handed over or lost are dropped.
    pub shards: Vec<ShardStatus>,
    /// Shards whose lease this worker holds now.
    pub held_leases: Vec<String>,
    /// What the worker's lease coordination did so far.
    pub leases: LeaseStats,
}

#[derive(Debug)]
struct Entry {
    status: ShardStatus,
    /// Whether the shard delivered a batch or reported being caught up since it started here.
    flowed: bool,
}

/// The shards of one worker, written by their consumers.
#[derive(Debug, Default)]
pub(crate) struct StatusBoard {
    shards: Mutex<BTreeMap<String, Entry>>,
}

impl StatusBoard {
    fn shards(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the shard of lease `key` (of `stream`) if new.
    pub(crate) fn register(&self, key: &str, stream: &str, shard_id: &str) {
        self.update(key, |s| {
            s.stream = stream.to_owned();
            s.shard_id = shard_id.to_owned();
        });
    }

    /// Changes the status of the shard of lease `key`, adding it if new.
    pub(crate) fn update(&self, key: &str, f: impl FnOnce(&mut ShardStatus)) {
        let mut map = self.shards();
        let entry = map.entry(key.to_owned()).or_insert_with(|| Entry {
            status: ShardStatus {
                stream: String::new(),
                shard_id: key.to_owned(),
                lease_key: key.to_owned(),
                state: ShardState::WaitingOnParents,
                records_processed: 0,
                millis_behind_latest: None,
                last_checkpoint: None,
            },
            flowed: false,
        });
        f(&mut entry.status);
    }

    /// Records a fetch of the shard of lease `key`: a batch, or a report that the shard is
    /// caught up.
    pub(crate) fn fetched(&self, key: &str, millis_behind_latest: Option<u64>) {
        let mut map = self.shards();
        if let Some(entry) = map.get_mut(key) {
            entry.flowed = true;
            entry.status.millis_behind_latest = millis_behind_latest;
        }
    }

    /// Forgets a shard that is no longer processed here.
    pub(crate) fn remove(&self, key: &str) {
        self.shards().remove(key);
    }

    pub(crate) fn snapshot(&self) -> Vec<ShardStatus> {
        self.shards().values().map(|e| e.status.clone()).collect()
    }

    /// Shards whose consumer is up but has not fetched anything yet (parents finished).
    pub(crate) fn not_flowed(&self) -> Vec<String> {
        self.shards()
            .values()
            .filter(|e| {
                !e.flowed
                    && matches!(
                        e.status.state,
                        ShardState::Initializing | ShardState::Processing | ShardState::Retrying
                    )
            })
            .map(|e| e.status.lease_key.clone())
            .collect()
    }

    /// Shards stopped by the failure policy.
    pub(crate) fn stopped(&self) -> Vec<String> {
        self.shards()
            .values()
            .filter(|e| e.status.state == ShardState::Stopped)
            .map(|e| e.status.lease_key.clone())
            .collect()
    }

    /// The lag of every shard that reported one: stream, shard id, milliseconds.
    pub(crate) fn lags(&self) -> Vec<(String, String, u64)> {
        self.shards()
            .values()
            .filter_map(|e| {
                e.status
                    .millis_behind_latest
                    .map(|ms| (e.status.stream.clone(), e.status.shard_id.clone(), ms))
            })
            .collect()
    }
}
