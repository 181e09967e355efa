//! An in-memory model of Amazon Kinesis Data Streams, implementing
//! [`StreamBackend`](crate::backend::StreamBackend).
//!
//! [`KinesisModel`] keeps streams, shards and records in memory and enforces the service's limits
//! on tokio's clock, so tests can pause time and advance it to cross any limit deterministically.
//! It is cheap to share (`Arc<KinesisModel>`) and safe to call from many tasks: each stream is
//! behind its own `std::sync::Mutex`, never held across an `.await`; nothing runs in the
//! background (retention is applied lazily when a shard is touched).
//!
//! # What is modelled
//!
//! * Streams of shards with 128-bit hash-key ranges; `create_stream` splits the key space evenly
//!   as Kinesis does; shard ids `shardId-000000000000`.
//! * Routing by MD5 of the partition key or by an explicit hash key.
//! * Sequence numbers in the real format (56 decimal digits starting `4959`), strictly increasing
//!   per shard, children above parents (one counter per stream; see the `sequence` module).
//! * `PutRecord` / `PutRecords` with the API's validation (partition key 1..=256 characters,
//!   record up to 1 MiB including the key, 500 entries / 5 MiB per call) and per-shard write
//!   limits (1 MiB/s, 1000 records/s): `PutRecords` fails single entries with
//!   `ProvisionedThroughputExceededException` and counts them in `failed_record_count`.
//! * `GetRecords` limits shared by all readers of a shard: 5 calls per second (sliding one-second
//!   window), 2 MiB/s (a token bucket that may go into debt: an admitted call returns everything
//!   that fits its caps, and later calls are throttled until the debt is repaid, which is how
//!   Kinesis documents it: "if a call returns 10 MiB, calls in the next 5 seconds throw"), and at
//!   most 10 MiB / 10000 records per call. A throttled call does not count.
//! * Shard iterators of every [`StartingPosition`], expiring
//!   after 5 minutes; they are opaque sealed strings, so forged or garbled ones are
//!   `InvalidArgument`. `AT_TIMESTAMP` starts at the first record that arrived at or after the
//!   time (a time in the future is `InvalidArgument`, as in Kinesis); `AT_SEQUENCE_NUMBER` /
//!   `AFTER_SEQUENCE_NUMBER` accept any number between the shard's starting number and its
//!   ending number (or the stream's newest number while open), else `InvalidArgument`; a
//!   position whose records were trimmed reads from the trim horizon.
//! * Retention (24 h by default, per stream via [`KinesisModel::set_retention_period`]): trimmed
//!   records are gone and `TRIM_HORIZON` moves; a closed shard whose records are all past
//!   retention (closed longer ago than the retention period) disappears from `ListShards` and
//!   answers `ResourceNotFound`, as in Kinesis.
//! * `SplitShard`, `MergeShards` and `UpdateShardCount` (`UNIFORM_SCALING`, done as a series of
//!   splits and merges like the service, so intermediate shards appear closed in the listing),
//!   with lineage (`parent_shard_id`, `adjacent_parent_shard_id`, `ending_sequence_number`).
//! * A closed shard read to its end answers `child_shards` and no next iterator (in the same
//!   response as its last records, if that call reaches the end).
//! * `MillisBehindLatest` on every response: 0 when the response reaches the tip, else the age of
//!   the oldest record not yet returned.
//! * `ListShards` pagination (opaque tokens, expiring after 300 s; a garbled token is
//!   `InvalidArgument`) and every [`ShardFilter`] with the semantics of the API reference
//!   (no filter means `FROM_TRIM_HORIZON`); the details are on `StreamState::list` in
//!   `stream.rs`. Shard times for the timestamp filters are the instants the model created and
//!   closed the shards.
//! * `DescribeStreamSummary` ([`describe_stream`](crate::backend::StreamBackend::describe_stream)).
//! * Enhanced fan-out (`fanout.rs`): `RegisterStreamConsumer` (`CREATING` for
//!   `consumer_registration_time`, then `ACTIVE`; a name registered twice is `ResourceInUse`; at
//!   most 20 consumers), `DescribeStreamConsumer`, [`KinesisModel::deregister_stream_consumer`],
//!   and `SubscribeToShard`: records pushed as they are appended, an empty event every second
//!   while idle, 2 MiB/s per consumer and shard in a bucket of its own (independent of
//!   `GetRecords` readers and other consumers), one subscription per consumer and shard
//!   (`ResourceInUse` until the first ends or is dropped), subscriptions ending after 5 minutes,
//!   each event's continuation the last record delivered, and at the end of a closed shard a last
//!   event without continuation that carries the children.
//!
//! # What is not modelled
//!
//! * Resharding timing: splits and merges complete instantly, the stream never shows
//!   `UPDATING`, and there is no limit on resharding operations per day.
//! * Fan-out timing: the service's event cadence and sizes are not published; the model sends an
//!   event per wake-up with what the consumer's bucket allows (at most 10000 records).
//! * On-demand capacity mode, encryption, tags, stream ARNs beyond a made-up one, account-level
//!   limits (shard quotas, control-plane call rates; only a per-stream open-shard cap), IAM.
//! * Sequence numbers do not encode the shard; an `AT_SEQUENCE_NUMBER` taken from another shard
//!   of the same stream is accepted if it lies in this shard's range of numbers.
//! * Throughput errors carry no retry hints; there is no `KMSThrottling`, no `InternalFailure`
//!   injection (fault injection belongs to a wrapper around the backend).
//! * Record sizes for limits are data plus partition key (the service's accounting is similar
//!   but not published exactly).
//!
//! # Differences from kinesis-local
//!
//! The conformance suite (`tests/backend_conformance.rs`) runs the same behavioural tests on the
//! model and on kinesis-local 0.6.2 (kinesis-mock). Both pass; where the emulator departs from
//! the API reference the tests assert the emulator's behaviour for it and the reference's for
//! the model:
//!
//! * `ListShards` with `AT_TRIM_HORIZON` or `AT_TIMESTAMP`: kinesis-local lists every retained
//!   shard, including those created later; the model lists the shards open at that time.
//! * `SubscribeToShard` on a closed shard: kinesis-local pushes the records but never sends the
//!   last event without continuation (its continuation is never null), so the subscription runs
//!   until it expires; the model ends it with the children. Fan-out retrieval copes with both
//!   (a `GetRecords` probe once a subscription is idle).
//! * `SubscribeToShard` refused with `ResourceInUse`: kinesis-local answers with a stream whose
//!   first event is the error, the model with an error at once (retrieval handles both), and
//!   kinesis-local keeps a dropped subscription for a moment after its client went away.
//! * Shard ids, sequence numbers and ARNs have the real formats in both; kinesis-local's
//!   sequence numbers encode the shard, the model's do not (see below).
//!
//! All limits are in [`ModelConfig`]; [`ModelConfig::unlimited`] switches them off.
//!
//! # Example
//!
//! ```
//! use kcl_core::Bytes;
//! use kcl_core::backend::{StartingPosition, StreamBackend};
//! use kcl_core::model::{KinesisModel, ModelConfig};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), kcl_core::backend::BackendError> {
//! let model = KinesisModel::new(ModelConfig::default());
//! model.create_stream("orders", 2)?;
//! let put = model.put_record("orders", "customer-1", Bytes::from_static(b"hello"), None)?;
//! let it = model
//!     .get_shard_iterator("orders", &put.shard_id, StartingPosition::TrimHorizon)
//!     .await?;
//! let out = model.get_records(&it, 100).await?;
//! assert_eq!(out.records[0].data().as_ref(), b"hello");
//! assert_eq!(out.millis_behind_latest, Some(0));
//! # Ok(())
//! # }
//! ```
//!
//! # Module map
//!
//! | module | owns |
//! |---|---|
//! | `config` | [`ModelConfig`] and the default limits |
//! | `types` | write-side request and response types ([`PutRecordsEntry`], ...) |
//! | `stream` | a stream's shards, routing, resharding, `ListShards` filters |
//! | `shard` | a shard's records, positions, trimming, reads |
//! | `sequence` | the sequence-number format and allocator |
//! | `limits` | token buckets and call windows |
//! | `token` | sealed shard iterators and `ListShards` tokens |
//! | `backend_impl` | `impl StreamBackend for KinesisModel` |

mod backend_impl;
mod config;
mod fanout;
mod limits;
mod sequence;
mod shard;
mod stream;
mod token;
mod types;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

pub use self::config::{MIB, ModelConfig};
pub use self::types::{
    PROVISIONED_THROUGHPUT_EXCEEDED, PutRecordOutput, PutRecordsEntry, PutRecordsOutput,
    PutRecordsResultEntry,
};

use self::shard::StoredRecord;
use self::stream::StreamState;
use self::token::TokenCodec;
use crate::backend::{BackendError, Shard, StartingPosition};
use crate::backend::{ShardFilter, StreamDescription};
use crate::record::{Record, parse_hash_key, partition_key_hash};
use crate::time;

/// Longest partition key, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// An in-memory Kinesis service. See the [module documentation](self).
pub struct KinesisModel {
    config: ModelConfig,
    codec: TokenCodec,
    epoch: Instant,
    registry: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    streams: HashMap<String, Arc<Mutex<StreamState>>>,
    next_id: u64,
    last_stamp: u128,
    /// The creation stamp (milliseconds) of the last consumer registered, kept increasing so
    /// that every registration gets its own ARN.
    last_consumer_stamp: u128,
}

impl fmt::Debug for KinesisModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisModel")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a stream half-updated in a way that matters
    // more than losing the model, so keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn not_found(stream: &str) -> BackendError {
    BackendError::ResourceNotFound(format!("stream {stream:?} not found").into())
}

/// A validated write, ready to be stored.
struct ValidWrite {
    hash_key: u128,
    size: u64,
}

impl KinesisModel {
    /// A model with the given limits and no streams.
    pub fn new(config: ModelConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            codec: TokenCodec::new(),
            epoch: Instant::now(),
            registry: Mutex::new(Registry::default()),
        })
    }

    /// The model's limits.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The model's wall-clock time (tokio's clock, so it moves with a paused test clock); use it
    /// for `AtTimestamp` positions and filters.
    pub fn system_now(&self) -> SystemTime {
        time::system_now()
    }

    /// A consumer creation stamp (milliseconds since the epoch, tokio's clock) greater than every
    /// one given before: a consumer re-registered within the same millisecond (easy with a paused
    /// clock) never gets its predecessor's ARN.
    fn consumer_stamp(&self, now: Instant) -> u128 {
        let millis = time::to_system(now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut registry = lock(&self.registry);
        let stamp = millis.max(registry.last_consumer_stamp + 1);
        registry.last_consumer_stamp = stamp;
        stamp
    }

    fn stream(&self, name: &str) -> Result<Arc<Mutex<StreamState>>, BackendError> {
        lock(&self.registry)
            .streams
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// `CreateStream`: a stream of `shard_count` shards splitting the key space evenly.
    ///
    /// The name must be 1 to 128 characters of `[a-zA-Z0-9_.-]`; an existing name is
    /// `ResourceInUse`.
    pub fn create_stream(&self, name: &str, shard_count: u32) -> Result<(), BackendError> {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(BackendError::InvalidArgument(
                format!("stream name {name:?} must be 1 to 128 characters of [a-zA-Z0-9_.-]")
                    .into(),
            ));
        }
        if shard_count == 0 {
            return Err(BackendError::InvalidArgument(
                format!("shard count of stream {name:?} must be at least 1").into(),
            ));
        }
        if let Some(max) = self.config.max_open_shards
            && shard_count > max
        {
            return Err(BackendError::LimitExceeded(
                format!("shard count {shard_count} of stream {name:?} is above the limit of {max}")
                    .into(),
            ));
        }
        let mut registry = lock(&self.registry);
        if registry.streams.contains_key(name) {
            return Err(BackendError::ResourceInUse(
                format!("stream {name:?} already exists").into(),
            ));
        }
        let now = Instant::now();
        // The creation time in milliseconds goes into the stream's sequence numbers; keep it
        // unique per model so a stream re-created within the same millisecond (easy with a
        // paused clock) never reuses the numbers of its predecessor.
        let millis = time::to_system(now)
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let stamp = millis.max(registry.last_stamp + 1);
        let stream = StreamState::new(
            name.to_owned(),
            registry.next_id + 1,
            stamp,
            shard_count,
            now,
            &self.config,
        )?;
        registry.next_id += 1;
        registry.last_stamp = stamp;
        registry
            .streams
            .insert(name.to_owned(), Arc::new(Mutex::new(stream)));
        Ok(())
    }

    /// `DeleteStream`: the stream and its records are gone at once; its iterators answer
    /// `ResourceNotFound`.
    pub fn delete_stream(&self, name: &str) -> Result<(), BackendError> {
        lock(&self.registry)
            .streams
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| not_found(name))
    }

    /// `IncreaseStreamRetentionPeriod` / `DecreaseStreamRetentionPeriod` in one call (the model
    /// accepts any period from 1 hour up; Kinesis allows 24 h to 365 days).
    pub fn set_retention_period(
        &self,
        name: &str,
        retention: Duration,
    ) -> Result<(), BackendError> {
        if retention < Duration::from_secs(3600) {
            return Err(BackendError::InvalidArgument(
                format!("retention period {retention:?} of stream {name:?} is below one hour")
                    .into(),
            ));
        }
        let stream = self.stream(name)?;
        lock(&stream).retention = retention;
        Ok(())
    }

    fn validate(
        &self,
        partition_key: &str,
        data_len: usize,
        explicit_hash_key: Option<&str>,
    ) -> Result<ValidWrite, BackendError> {
        let chars = partition_key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            let shown: String = partition_key.chars().take(32).collect();
            return Err(BackendError::InvalidArgument(
                format!(
                    "partition key {shown:?} has {chars} characters; it must have 1 to \
                 {MAX_PARTITION_KEY_CHARS}"
                )
                .into(),
            ));
        }
        let size = (data_len + partition_key.len()) as u64;
        if let Some(max) = self.config.max_record_bytes
            && size > max
        {
            return Err(BackendError::InvalidArgument(
                format!(
                    "record of {size} bytes (data plus partition key) exceeds the {max} byte limit"
                )
                .into(),
            ));
        }
        let hash_key =
            match explicit_hash_key {
                Some(text) => parse_hash_key(text).map_err(|_| {
                    BackendError::InvalidArgument(format!(
                    "explicit hash key {text:?} is not a decimal integer between 0 and 2^128-1"
                ).into())
                })?,
                None => partition_key_hash(partition_key),
            };
        Ok(ValidWrite { hash_key, size })
    }

    /// Stores one validated record, or says which limit refused it.
    fn store(
        stream: &mut StreamState,
        write: &ValidWrite,
        partition_key: &str,
        data: Bytes,
        now: Instant,
    ) -> Result<PutRecordOutput, BackendError> {
        let retention = stream.retention;
        let index = stream.route(write.hash_key).ok_or_else(|| {
            BackendError::Other(
                format!(
                    "no open shard of stream {:?} owns hash key {}",
                    stream.name, write.hash_key
                )
                .into(),
            )
        })?;
        let shard = &mut stream.shards[index];
        if let Err(limit) = shard.write.admit(write.size, now) {
            return Err(BackendError::ProvisionedThroughputExceeded(
                format!(
                    "rate exceeded for shard {} in stream {:?}: {limit}",
                    shard.id, stream.name
                )
                .into(),
            ));
        }
        shard.trim(now, retention);
        let sequence_number = stream.sequences.next()?;
        let shard = &mut stream.shards[index];
        let record = Record::new(partition_key, data, sequence_number.clone())
            .with_approximate_arrival(time::to_system(now));
        shard.append(StoredRecord {
            record,
            arrival: now,
            size: write.size,
        });
        let shard_id = shard.id.clone();
        stream.changed.notify_waiters();
        Ok(PutRecordOutput {
            shard_id,
            sequence_number,
        })
    }

    /// `PutRecord`: stores one record, routed by `explicit_hash_key` (a decimal string) if given,
    /// else by MD5 of `partition_key`.
    ///
    /// Errors: `ResourceNotFound` (no such stream), `InvalidArgument` (bad partition key, hash key
    /// or size), `ProvisionedThroughputExceeded` (the shard's write limit).
    pub fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: Bytes,
        explicit_hash_key: Option<&str>,
    ) -> Result<PutRecordOutput, BackendError> {
        let write = self.validate(partition_key, data.len(), explicit_hash_key)?;
        let stream = self.stream(stream)?;
        let mut stream = lock(&stream);
        Self::store(&mut stream, &write, partition_key, data, Instant::now())
    }

    /// `PutRecords`: stores up to 500 records (5 MiB) in one call.
    ///
    /// Validation errors fail the whole call with `InvalidArgument` naming the entry. Throttling
    /// fails single entries: their result carries `ProvisionedThroughputExceededException` and
    /// they are counted in `failed_record_count`; the others are stored. Results are in request
    /// order.
    pub fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, BackendError> {
        if entries.is_empty() {
            return Err(BackendError::InvalidArgument(
                "PutRecords needs at least one record".into(),
            ));
        }
        if let Some(max) = self.config.max_put_records_entries
            && entries.len() > max
        {
            return Err(BackendError::InvalidArgument(
                format!(
                    "PutRecords has {} records, more than the {max} allowed",
                    entries.len()
                )
                .into(),
            ));
        }
        let mut writes = Vec::with_capacity(entries.len());
        let mut total = 0u64;
        for (i, entry) in entries.iter().enumerate() {
            let write = self
                .validate(
                    &entry.partition_key,
                    entry.data.len(),
                    entry.explicit_hash_key.as_deref(),
                )
                .map_err(|e| match e {
                    BackendError::InvalidArgument(m) => {
                        BackendError::InvalidArgument(format!("record {i}: {m}").into())
                    }
                    other => other,
                })?;
            total += write.size;
            writes.push(write);
        }
        if let Some(max) = self.config.max_put_records_bytes
            && total > max
        {
            return Err(BackendError::InvalidArgument(
                format!("PutRecords carries {total} bytes, more than the {max} allowed").into(),
            ));
        }
        let stream = self.stream(stream)?;
        let mut stream = lock(&stream);
        let now = Instant::now();
        let mut failed = 0u32;
        let mut records = Vec::with_capacity(entries.len());
        for (entry, write) in entries.into_iter().zip(&writes) {
            let result =
                match Self::store(&mut stream, write, &entry.partition_key, entry.data, now) {
                    Ok(out) => PutRecordsResultEntry::Success {
                        shard_id: out.shard_id,
                        sequence_number: out.sequence_number,
                    },
                    Err(BackendError::ProvisionedThroughputExceeded(message)) => {
                        failed += 1;
                        PutRecordsResultEntry::Failed {
                            error_code: PROVISIONED_THROUGHPUT_EXCEEDED.into(),
                            error_message: message.message().to_owned(),
                        }
                    }
                    Err(other) => {
                        failed += 1;
                        PutRecordsResultEntry::Failed {
                            error_code: "InternalFailure".into(),
                            error_message: other.to_string(),
                        }
                    }
                };
            records.push(result);
        }
        Ok(PutRecordsOutput {
            failed_record_count: failed,
            records,
        })
    }

    /// `SplitShard`: closes `shard_id` and opens two children, the second starting at
    /// `new_starting_hash_key` (a decimal string strictly inside the shard's range, above its
    /// start). Returns the children's ids.
    pub fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: &str,
    ) -> Result<[String; 2], BackendError> {
        let key = parse_hash_key(new_starting_hash_key).map_err(|_| {
            BackendError::InvalidArgument(format!(
                "new starting hash key {new_starting_hash_key:?} is not a decimal integer between \
                 0 and 2^128-1"
            ).into())
        })?;
        let stream = self.stream(stream)?;
        let mut stream = lock(&stream);
        let (a, b) = stream.split(shard_id, key, Instant::now(), &self.config)?;
        Ok([stream.shards[a].id.clone(), stream.shards[b].id.clone()])
    }

    /// `MergeShards`: closes two open shards with adjacent hash ranges and opens one child
    /// covering both (`parent_shard_id` = `shard_id`, `adjacent_parent_shard_id` =
    /// `adjacent_shard_id`). Returns the child's id. Non-adjacent shards are `InvalidArgument`.
    pub fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<String, BackendError> {
        let stream = self.stream(stream)?;
        let mut stream = lock(&stream);
        let child = stream.merge(shard_id, adjacent_shard_id, Instant::now(), &self.config)?;
        Ok(stream.shards[child].id.clone())
    }

    /// `UpdateShardCount` with `UNIFORM_SCALING`: afterwards the stream has `target` open shards
    /// splitting the key space evenly. Done as splits and merges (as the service does), so every
    /// open shard has proper lineage. With [`ModelConfig::limit_scaling`], `target` must be
    /// between half and double the open shard count (else `LimitExceeded`).
    pub fn update_shard_count(&self, stream: &str, target: u32) -> Result<(), BackendError> {
        let stream = self.stream(stream)?;
        let mut stream = lock(&stream);
        stream.update_shard_count(target, Instant::now(), &self.config)
    }

    /// Every shard `ListShards` would list without a filter (all pages).
    pub fn shards(&self, stream: &str) -> Result<Vec<Shard>, BackendError> {
        self.shards_filtered(stream, None)
    }

    /// Every shard `ListShards` would list with `filter` (all pages).
    pub fn shards_filtered(
        &self,
        stream: &str,
        filter: Option<&ShardFilter>,
    ) -> Result<Vec<Shard>, BackendError> {
        let stream = self.stream(stream)?;
        let stream = lock(&stream);
        Ok(stream
            .list(filter, Instant::now())
            .into_iter()
            .map(|i| stream.shards[i].describe(&stream.shards))
            .collect())
    }

    /// The ids of [`KinesisModel::shards`].
    pub fn shard_ids(&self, stream: &str) -> Result<Vec<String>, BackendError> {
        Ok(self
            .shards(stream)?
            .into_iter()
            .map(|s| s.shard_id)
            .collect())
    }

    /// The ids of the open shards, in hash-key order.
    pub fn open_shard_ids(&self, stream: &str) -> Result<Vec<String>, BackendError> {
        let mut open: Vec<Shard> = self
            .shards_filtered(stream, Some(&ShardFilter::AtLatest))?
            .into_iter()
            .collect();
        open.sort_by_key(|s| s.hash_key_range.start);
        Ok(open.into_iter().map(|s| s.shard_id).collect())
    }

    fn nanos_since_epoch(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn issued_at(&self, nanos: u64) -> Instant {
        self.epoch
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(self.epoch)
    }

    fn describe(&self, name: &str) -> Result<StreamDescription, BackendError> {
        let stream = self.stream(name)?;
        let stream = lock(&stream);
        Ok(StreamDescription {
            name: stream.name.clone(),
            arn: format!(
                "arn:aws:kinesis:us-east-1:000000000000:stream/{}",
                stream.name
            ),
            status: crate::backend::StreamStatus::Active,
            retention: stream.retention,
            open_shard_count: stream.open_count(),
            created_at: time::to_system(stream.created_at),
        })
    }

    fn iterator_position(
        stream: &StreamState,
        index: usize,
        position: &StartingPosition,
    ) -> Result<u64, BackendError> {
        let shard = &stream.shards[index];
        Ok(match position {
            StartingPosition::TrimHorizon => shard.start(),
            StartingPosition::Latest => shard.end(),
            StartingPosition::AtTimestamp(at) => {
                if *at > time::system_now() {
                    return Err(BackendError::InvalidArgument(
                        format!("timestamp {at:?} is in the future").into(),
                    ));
                }
                shard.seek_time(*at)
            }
            StartingPosition::AtSequenceNumber(seq)
            | StartingPosition::AfterSequenceNumber(seq) => {
                let upper = match &shard.ending_sequence {
                    Some(end) => end.clone(),
                    None => stream.sequences.last()?,
                };
                if *seq < shard.starting_sequence || *seq > upper {
                    return Err(BackendError::InvalidArgument(
                        format!(
                            "sequence number {seq} did not come from shard {} of stream {:?}",
                            shard.id, stream.name
                        )
                        .into(),
                    ));
                }
                let after = matches!(position, StartingPosition::AfterSequenceNumber(_));
                shard.seek_sequence(seq, after)
            }
        })
    }
}
