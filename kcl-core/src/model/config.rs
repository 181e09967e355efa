//! [`ModelConfig`]: every service limit the model enforces, with the real service's defaults.

use std::time::Duration;

/// One mebibyte (1,048,576 bytes), the unit the Kinesis limits are stated in.
pub const MIB: u64 = 1024 * 1024;

/// The limits and timings of a [`super::KinesisModel`].
///
/// [`ModelConfig::default`] matches the real service (provisioned capacity mode). Every throughput
/// limit and per-call cap is an `Option`: `None` switches it off. [`ModelConfig::unlimited`]
/// switches all of them off at once, for benchmarks. The struct is `#[non_exhaustive]` (later
/// limits, e.g. for enhanced fan-out, can be added): start from `default()` or `unlimited()` and
/// use the `with_*` methods or assign the public fields.
///
/// | field | default | what it is |
/// |---|---|---|
/// | `retention` | 24 h | how long records are kept (per stream; see `set_retention_period`) |
/// | `iterator_ttl` | 5 min | age at which a shard iterator answers `ExpiredIterator` |
/// | `list_shards_token_ttl` | 300 s | age at which a `ListShards` token answers `ExpiredNextToken` |
/// | `write_bytes_per_second` | 1 MiB | per-shard write bytes (data + partition key) |
/// | `write_records_per_second` | 1000 | per-shard written records |
/// | `read_calls_per_second` | 5 | per-shard `GetRecords` calls, shared by every reader |
/// | `read_bytes_per_second` | 2 MiB | per-shard `GetRecords` bytes, shared by every reader |
/// | `max_get_records_bytes` | 10 MiB | bytes returned by one `GetRecords` call |
/// | `max_get_records_records` | 10000 | records returned by one call (and the largest `limit`) |
/// | `max_record_bytes` | 1 MiB | one record, data plus partition key |
/// | `max_put_records_entries` | 500 | entries of one `PutRecords` call |
/// | `max_put_records_bytes` | 5 MiB | bytes (data plus partition keys) of one `PutRecords` call |
/// | `max_open_shards` | 10000 | open shards per stream (a sanity cap standing in for the account quota) |
/// | `limit_scaling` | true | `UpdateShardCount` may at most double or halve the open shard count |
/// | `fanout_bytes_per_second` | 2 MiB | per-shard push rate of each registered consumer (enhanced fan-out), independent of polling readers and other consumers |
/// | `max_consumers_per_stream` | 20 | registered consumers per stream |
/// | `consumer_registration_time` | 5 s | time a new consumer stays `CREATING` before it is `ACTIVE` |
/// | `subscription_lifetime` | 5 min | a `SubscribeToShard` stream ends after this long |
/// | `subscription_heartbeat` | 1 s | an idle subscription sends an empty event this often |
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelConfig {
    /// Default retention period of new streams.
    pub retention: Duration,
    /// Lifetime of a shard iterator.
    pub iterator_ttl: Duration,
    /// Lifetime of a `ListShards` `NextToken`.
    pub list_shards_token_ttl: Duration,
    /// Per-shard write throughput in bytes per second (`None`: unlimited).
    pub write_bytes_per_second: Option<u64>,
    /// Per-shard write throughput in records per second (`None`: unlimited).
    pub write_records_per_second: Option<u64>,
    /// Per-shard `GetRecords` calls per second, shared by all readers (`None`: unlimited).
    pub read_calls_per_second: Option<u32>,
    /// Per-shard read throughput in bytes per second, shared by all readers (`None`: unlimited).
    pub read_bytes_per_second: Option<u64>,
    /// Largest number of bytes one `GetRecords` call returns (`None`: unlimited).
    pub max_get_records_bytes: Option<u64>,
    /// Largest number of records one `GetRecords` call returns, and the largest accepted `limit`
    /// (`None`: unlimited).
    pub max_get_records_records: Option<u32>,
    /// Largest record (data plus partition key) in bytes (`None`: unlimited).
    pub max_record_bytes: Option<u64>,
    /// Largest number of entries in one `PutRecords` call (`None`: unlimited).
    pub max_put_records_entries: Option<usize>,
    /// Largest total size of one `PutRecords` call in bytes (`None`: unlimited).
    pub max_put_records_bytes: Option<u64>,
    /// Largest number of open shards in one stream (`None`: unlimited).
    pub max_open_shards: Option<u32>,
    /// Whether `UpdateShardCount` is limited to between half and double the open shard count.
    pub limit_scaling: bool,
    /// Per-shard push rate of each registered fan-out consumer in bytes per second (`None`:
    /// unlimited).
    pub fanout_bytes_per_second: Option<u64>,
    /// Largest number of registered consumers per stream (`None`: unlimited).
    pub max_consumers_per_stream: Option<u32>,
    /// How long a newly registered consumer is `CREATING`.
    pub consumer_registration_time: Duration,
    /// How long one `SubscribeToShard` subscription lasts.
    pub subscription_lifetime: Duration,
    /// How often an idle subscription sends an empty event.
    pub subscription_heartbeat: Duration,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 60 * 60),
            iterator_ttl: Duration::from_secs(5 * 60),
            list_shards_token_ttl: Duration::from_secs(300),
            write_bytes_per_second: Some(MIB),
            write_records_per_second: Some(1000),
            read_calls_per_second: Some(5),
            read_bytes_per_second: Some(2 * MIB),
            max_get_records_bytes: Some(10 * MIB),
            max_get_records_records: Some(10_000),
            max_record_bytes: Some(MIB),
            max_put_records_entries: Some(500),
            max_put_records_bytes: Some(5 * MIB),
            max_open_shards: Some(10_000),
            limit_scaling: true,
            fanout_bytes_per_second: Some(2 * MIB),
            max_consumers_per_stream: Some(20),
            consumer_registration_time: Duration::from_secs(5),
            subscription_lifetime: Duration::from_secs(5 * 60),
            subscription_heartbeat: Duration::from_secs(1),
        }
    }
}

impl ModelConfig {
    /// The real service's limits (same as [`ModelConfig::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every throughput limit, per-call cap and size limit switched off (for benchmarks).
    ///
    /// Retention, iterator and token lifetimes and input validation (partition key length, hash
    /// keys, stream names) stay as in the default: they are semantics, not capacity.
    pub fn unlimited() -> Self {
        Self {
            write_bytes_per_second: None,
            write_records_per_second: None,
            read_calls_per_second: None,
            read_bytes_per_second: None,
            max_get_records_bytes: None,
            max_get_records_records: None,
            max_record_bytes: None,
            max_put_records_entries: None,
            max_put_records_bytes: None,
            max_open_shards: None,
            limit_scaling: false,
            fanout_bytes_per_second: None,
            max_consumers_per_stream: None,
            ..Self::default()
        }
    }

    /// Sets the default retention period of new streams.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Sets the shard iterator lifetime.
    pub fn with_iterator_ttl(mut self, ttl: Duration) -> Self {
        self.iterator_ttl = ttl;
        self
    }

    /// Sets the `ListShards` token lifetime.
    pub fn with_list_shards_token_ttl(mut self, ttl: Duration) -> Self {
        self.list_shards_token_ttl = ttl;
        self
    }

    /// Sets the per-shard write limits (bytes per second, records per second).
    pub fn with_write_limits(mut self, bytes: Option<u64>, records: Option<u64>) -> Self {
        self.write_bytes_per_second = bytes;
        self.write_records_per_second = records;
        self
    }

    /// Sets the per-shard read limits (`GetRecords` calls per second, bytes per second).
    pub fn with_read_limits(mut self, calls: Option<u32>, bytes: Option<u64>) -> Self {
        self.read_calls_per_second = calls;
        self.read_bytes_per_second = bytes;
        self
    }

    /// Sets the per-call caps of `GetRecords` (bytes, records).
    pub fn with_get_records_caps(mut self, bytes: Option<u64>, records: Option<u32>) -> Self {
        self.max_get_records_bytes = bytes;
        self.max_get_records_records = records;
        self
    }

    /// Sets the size limits of writes (one record, entries per `PutRecords`, bytes per
    /// `PutRecords`).
    pub fn with_put_limits(
        mut self,
        record_bytes: Option<u64>,
        entries: Option<usize>,
        call_bytes: Option<u64>,
    ) -> Self {
        self.max_record_bytes = record_bytes;
        self.max_put_records_entries = entries;
        self.max_put_records_bytes = call_bytes;
        self
    }

    /// Sets the largest number of open shards per stream.
    pub fn with_max_open_shards(mut self, max: Option<u32>) -> Self {
        self.max_open_shards = max;
        self
    }

    /// Sets the fan-out push rate per consumer and shard (bytes per second; `None`: unlimited).
    pub fn with_fanout_rate(mut self, bytes: Option<u64>) -> Self {
        self.fanout_bytes_per_second = bytes;
        self
    }

    /// Sets how long a new consumer stays `CREATING`.
    pub fn with_consumer_registration_time(mut self, time: Duration) -> Self {
        self.consumer_registration_time = time;
        self
    }

    /// Sets how long a subscription lasts and how often an idle one sends an empty event.
    pub fn with_subscription_timing(mut self, lifetime: Duration, heartbeat: Duration) -> Self {
        self.subscription_lifetime = lifetime;
        self.subscription_heartbeat = heartbeat;
        self
    }

    /// Sets whether `UpdateShardCount` is limited to between half and double the open count.
    pub fn with_limit_scaling(mut self, limit: bool) -> Self {
        self.limit_scaling = limit;
        self
    }
}
