//! Worker configuration: the builder, its defaults and validation.
//!
//! Every setting has a documented default; [`WorkerBuilder::build`] validates them all and answers
//! [`ConfigError`] naming the offending field.

use std::sync::Arc;
use std::time::Duration;

use crate::backend::StreamBackend;
use crate::deaggregation::DeaggregationConfig;
use crate::lease::LeaseConfig;
use crate::lease::LeaseTable;
use crate::metrics::MetricsLevel;
use crate::processor::{
    ConcurrentProcessor, ExpiredRecords, FailurePolicy, MaxRecordAge, ProcessorFactory,
};
use crate::retrieval::{FanOutConfig, PollingConfig, Retrieval, WorkerPrefetch};
use crate::retry::{RetryBackoff, RetryPolicy};
use crate::shard_sync::InitialPosition;

use super::Worker;
use super::key_ordered::{AsShared, KeyOrdered, as_shared};
use super::streams::MultiStreamTracker;

/// An invalid or missing setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required setting was not given.
    #[error("configuration field `{0}` is required")]
    Missing(&'static str),
    /// A setting has an invalid value.
    #[error("configuration field `{field}` is invalid: {reason}")]
    Invalid {
        /// The field, as named by its builder method.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// When the framework checkpoints on its own after successful batches.
///
/// A checkpoint is written after a batch when at least `every_records` records or at least
/// `every_interval` time passed since the last one (whichever comes first). Both `None` means
/// manual checkpointing only. Defaults: 10 000 records or 10 s, which bounds the records
/// re-delivered after a crash to about 10 s of traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointCadence {
    /// Checkpoint after this many records.
    pub every_records: Option<u64>,
    /// Checkpoint after this much time.
    pub every_interval: Option<Duration>,
}

impl Default for CheckpointCadence {
    fn default() -> Self {
        Self {
            every_records: Some(10_000),
            every_interval: Some(Duration::from_secs(10)),
        }
    }
}

impl CheckpointCadence {
    /// Manual checkpoints only.
    pub fn manual() -> Self {
        Self {
            every_records: None,
            every_interval: None,
        }
    }

    /// Whether automatic checkpoints are on.
    pub fn is_automatic(&self) -> bool {
        self.every_records.is_some() || self.every_interval.is_some()
    }
}

/// The validated configuration of a worker.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// Application name (the default lease table name for stores that use one, and the
    /// fan-out consumer's default name).
    pub application_name: String,
    /// Stream name (single-stream workers); empty for a multi-stream worker, whose streams are
    /// in [`multi_stream`](Self::multi_stream).
    pub stream: String,
    /// The streams of a multi-stream worker (`None`: the single stream [`stream`](Self::stream)).
    pub multi_stream: Option<MultiStreamTracker>,
    /// This worker's id, unique among the application's workers.
    pub worker_id: String,
    /// Where new leases start.
    pub initial_position: InitialPosition,
    /// Lease timing.
    pub lease: LeaseConfig,
    /// Polling or enhanced fan-out, with its settings (default polling).
    pub retrieval: Retrieval,
    /// Automatic checkpoint cadence.
    pub checkpoint: CheckpointCadence,
    /// How checkpoints, `SHARD_END` and child leases are retried when the lease table fails.
    pub checkpoint_retry: RetryPolicy,
    /// What to do with failed batches.
    pub failure_policy: FailurePolicy,
    /// Whether a failing batch is split in halves to isolate the failing records (default
    /// off).
    pub bisect_failed_batches: bool,
    /// The maximum age of records delivered, and what happens to older ones (default none).
    pub max_record_age: Option<MaxRecordAge>,
    /// Key-ordered concurrency within a shard (default none: one batch at a time).
    pub key_ordered: Option<KeyOrdered>,
    /// How often shards are re-listed to find new shards and repair holes (default 60 s).
    pub shard_sync_interval: Duration,
    /// How often a child waiting for its parents re-checks them (default 1 s).
    pub parent_poll_interval: Duration,
    /// KPL de-aggregation settings.
    pub deaggregation: DeaggregationConfig,
    /// How long a graceful shutdown may take before it becomes immediate (default 30 s).
    pub graceful_shutdown_timeout: Duration,
    /// How long a permanent failure (stream not found, access denied, an invalid request, an
    /// unusable lease table) may last, with no success in between, before `run` returns it
    /// (default 5 s).
    pub permanent_error_timeout: Duration,
    /// The prefetch bound shared by all of the worker's shards (default 1,000,000 records and
    /// 256 MiB).
    pub worker_prefetch: WorkerPrefetch,
    /// How much detail the worker's metrics carry (default [`MetricsLevel::Detailed`]).
    pub metrics_level: MetricsLevel,
}

/// Builds a [`Worker`]. Start with [`Worker::builder`].
pub struct WorkerBuilder<F: ProcessorFactory> {
    factory: F,
    backend: Option<Arc<dyn StreamBackend>>,
    lease_table: Option<Arc<dyn LeaseTable>>,
    application_name: Option<String>,
    stream: Option<String>,
    multi_stream: Option<MultiStreamTracker>,
    worker_id: Option<String>,
    initial_position: InitialPosition,
    lease: LeaseConfig,
    retrieval: Retrieval,
    checkpoint: CheckpointCadence,
    checkpoint_retry: RetryPolicy,
    failure_policy: FailurePolicy,
    bisect_failed_batches: bool,
    max_record_age: Option<MaxRecordAge>,
    key_ordered: Option<(KeyOrdered, AsShared<F::Processor>)>,
    shard_sync_interval: Duration,
    parent_poll_interval: Duration,
    deaggregation: DeaggregationConfig,
    graceful_shutdown_timeout: Duration,
    permanent_error_timeout: Duration,
    worker_prefetch: WorkerPrefetch,
    metrics_level: MetricsLevel,
}

impl<F: ProcessorFactory> std::fmt::Debug for WorkerBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("application_name", &self.application_name)
            .field("stream", &self.stream)
            .field("multi_stream", &self.multi_stream)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl<F: ProcessorFactory> WorkerBuilder<F> {
    pub(crate) fn new(factory: F) -> Self {
        Self {
            factory,
            backend: None,
            lease_table: None,
            application_name: None,
            stream: None,
            multi_stream: None,
            worker_id: None,
            initial_position: InitialPosition::default(),
            lease: LeaseConfig::default(),
            retrieval: Retrieval::default(),
            checkpoint: CheckpointCadence::default(),
            checkpoint_retry: RetryPolicy::lease_writes(),
            failure_policy: FailurePolicy::default(),
            bisect_failed_batches: false,
            max_record_age: None,
            key_ordered: None,
            shard_sync_interval: Duration::from_secs(60),
            parent_poll_interval: Duration::from_secs(1),
            deaggregation: DeaggregationConfig::default(),
            graceful_shutdown_timeout: Duration::from_secs(30),
            permanent_error_timeout: Duration::from_secs(5),
            worker_prefetch: WorkerPrefetch::default(),
            metrics_level: MetricsLevel::default(),
        }
    }

    /// The stream backend (the in-memory model, or the AWS adapter). Required.
    pub fn backend(mut self, backend: Arc<dyn StreamBackend>) -> Self {
        self.backend = Some(backend);
        self
    }

    /// The lease table shared by the application's workers. Required.
    pub fn lease_table(mut self, table: Arc<dyn LeaseTable>) -> Self {
        self.lease_table = Some(table);
        self
    }

    /// The application name (default: the lease table's, see [`LeaseTable::application`];
    /// required when the table does not know it, and must match it when it does).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// The stream to consume. Required, unless the worker consumes several streams
    /// ([`multi_stream`](Self::multi_stream)).
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// Consumes several streams through one lease table, Java KCL's multi-stream mode: a static
    /// list or a polled callback, each stream with its own initial position and retrieval (the
    /// worker's [`initial_position`](Self::initial_position) and
    /// [`retrieval`](Self::retrieval) otherwise). Leases are keyed
    /// `account:stream:creationEpoch:shardId`. Excludes [`stream`](Self::stream).
    pub fn multi_stream(mut self, tracker: MultiStreamTracker) -> Self {
        self.multi_stream = Some(tracker);
        self
    }

    /// This worker's id (default: `<hostname or "worker">-<process id>-<random>`).
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Where new leases start (default `LATEST`, as Java KCL).
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = position;
        self
    }

    /// Lease timing (default failover 10 s).
    pub fn lease_config(mut self, config: LeaseConfig) -> Self {
        self.lease = config;
        self
    }

    /// Sets the failover time and derives the lease timings from it (renewal interval, scan
    /// interval); the renewal mode and the limits set so far are kept.
    pub fn failover_time(mut self, failover: Duration) -> Self {
        let derived = LeaseConfig::with_failover(failover);
        self.lease.failover_time = derived.failover_time;
        self.lease.renew_interval = derived.renew_interval;
        self.lease.scan_interval = derived.scan_interval;
        self.lease.idle_scan_interval = derived.idle_scan_interval;
        self
    }

    /// Reads by polling `GetRecords` with these settings: shorthand for
    /// `.retrieval(Retrieval::Polling(config))`, replacing any retrieval set before.
    pub fn polling(mut self, config: PollingConfig) -> Self {
        self.retrieval = Retrieval::Polling(config);
        self
    }

    /// How records are read (default [`Retrieval::Polling`] with default settings); e.g.
    /// `Retrieval::fan_out()` for enhanced fan-out through a stream consumer named after the
    /// application. Fan-out needs a backend that offers it
    /// ([`StreamBackend::fan_out`]); `build` checks.
    pub fn retrieval(mut self, retrieval: Retrieval) -> Self {
        self.retrieval = retrieval;
        self
    }

    /// Automatic checkpoint cadence (default every 10 000 records or 10 s).
    pub fn checkpoint_cadence(mut self, cadence: CheckpointCadence) -> Self {
        self.checkpoint = cadence;
        self
    }

    /// How a checkpoint, the `SHARD_END` write and child-lease creation are retried when the
    /// lease table fails transiently (default [`RetryPolicy::lease_writes`]: 50 ms doubling to
    /// 2 s, 4 attempts).
    pub fn checkpoint_retry(mut self, retry: RetryPolicy) -> Self {
        self.checkpoint_retry = retry;
        self
    }

    /// What to do with failed batches (default: retry forever with backoff).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// Whether a failing batch of more than one record is split in halves, delivered in turn,
    /// and so on down to the failing record alone (Lambda's `BisectBatchOnFunctionError`;
    /// default off). Each part made by a split gets the failure policy's full attempts, so
    /// under [`FailurePolicy::DeadLetter`] only the failing records go to the handler and every
    /// other record of the batch is processed once; under [`FailurePolicy::StopShard`] the shard
    /// stops right at the failing record. Splits wait the policy's backoff like redeliveries.
    pub fn bisect_failed_batches(mut self, bisect: bool) -> Self {
        self.bisect_failed_batches = bisect;
        self
    }

    /// Records older than `max_age` (from their approximate arrival time) are not delivered:
    /// checked before every delivery, retries included, they go to the dead-letter handler or
    /// are skipped and counted, as `expired` says (Lambda's `MaximumRecordAgeInSeconds`; default
    /// no limit). [`ExpiredRecords::DeadLetter`] needs a [`FailurePolicy::DeadLetter`] (`build`
    /// checks).
    pub fn max_record_age(mut self, max_age: Duration, expired: ExpiredRecords) -> Self {
        self.max_record_age = Some(MaxRecordAge { max_age, expired });
        self
    }

    /// How often shards are re-listed (default 60 s).
    pub fn shard_sync_interval(mut self, interval: Duration) -> Self {
        self.shard_sync_interval = interval;
        self
    }

    /// How often a waiting child re-checks its parents (default 1 s).
    pub fn parent_poll_interval(mut self, interval: Duration) -> Self {
        self.parent_poll_interval = interval;
        self
    }

    /// KPL de-aggregation settings.
    pub fn deaggregation(mut self, config: DeaggregationConfig) -> Self {
        self.deaggregation = config;
        self
    }

    /// How long a graceful shutdown may take (default 30 s).
    pub fn graceful_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_shutdown_timeout = timeout;
        self
    }

    /// How long a permanent failure may last before [`Worker::run`] returns it (default 5 s):
    /// the stream does not exist, access is denied, the backend rejects a request as invalid,
    /// or the lease table cannot be used (missing, another schema, a missing permission). Such
    /// failures are retried with backoff meanwhile, which rides out IAM propagation and
    /// streams still being created; any success starts the wait again. Transient failures
    /// never end `run`.
    pub fn permanent_error_timeout(mut self, timeout: Duration) -> Self {
        self.permanent_error_timeout = timeout;
        self
    }

    /// The prefetch bound shared fairly by all of the worker's shards (default 1,000,000
    /// records and 256 MiB); the per-shard bounds of the retrieval settings apply too.
    pub fn worker_prefetch(mut self, limits: WorkerPrefetch) -> Self {
        self.worker_prefetch = limits;
        self
    }

    /// How much detail the metrics carry (default [`MetricsLevel::Detailed`], with a `shard`
    /// label; [`MetricsLevel::Summary`] drops it for large fleets).
    pub fn metrics_level(mut self, level: MetricsLevel) -> Self {
        self.metrics_level = level;
        self
    }

    /// Validates the configuration and builds the worker.
    pub fn build(self) -> Result<Worker<F>, ConfigError> {
        validate_failure_options(
            &self.failure_policy,
            self.max_record_age.as_ref(),
            self.key_ordered.as_ref().map(|(mode, _)| mode),
            &self.checkpoint,
        )?;
        let backend = self.backend.ok_or(ConfigError::Missing("backend"))?;
        let lease_table = self
            .lease_table
            .ok_or(ConfigError::Missing("lease_table"))?;
        let application_name = application_name(self.application_name, lease_table.as_ref())?;
        let stream = match (self.stream, &self.multi_stream) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "multi_stream",
                    "give either one stream (`stream`) or a multi-stream tracker, not both",
                ));
            }
            (None, None) => return Err(ConfigError::Missing("stream")),
            (Some(stream), None) => {
                validate_name("stream", &stream, 128)?;
                stream
            }
            (None, Some(tracker)) => {
                positive("multi_stream.interval", tracker.tracker_interval())?;
                if let Some(list) = tracker.static_streams() {
                    if list.is_empty() {
                        return Err(invalid("multi_stream", "the stream list is empty"));
                    }
                    for config in list {
                        if let Some(retrieval) = &config.retrieval {
                            validate_retrieval(retrieval, backend.as_ref())?;
                        }
                    }
                }
                String::new()
            }
        };
        let worker_id = match self.worker_id {
            Some(id) => id,
            None => default_worker_id(),
        };
        validate_worker_id(&worker_id)?;
        validate_lease(&self.lease)?;
        validate_retrieval(&self.retrieval, backend.as_ref())?;
        validate_cadence(&self.checkpoint)?;
        validate_retry("checkpoint_retry", &self.checkpoint_retry)?;
        validate_failure_policy(&self.failure_policy)?;
        positive("shard_sync_interval", self.shard_sync_interval)?;
        positive("parent_poll_interval", self.parent_poll_interval)?;
        positive("permanent_error_timeout", self.permanent_error_timeout)?;
        validate_prefetch(
            "worker_prefetch",
            self.worker_prefetch.max_records,
            self.worker_prefetch.max_bytes,
        )?;
        let config = WorkerConfig {
            application_name,
            stream,
            multi_stream: self.multi_stream,
            worker_id,
            initial_position: self.initial_position,
            lease: self.lease,
            retrieval: self.retrieval,
            checkpoint: self.checkpoint,
            checkpoint_retry: self.checkpoint_retry,
            failure_policy: self.failure_policy,
            bisect_failed_batches: self.bisect_failed_batches,
            max_record_age: self.max_record_age,
            key_ordered: self.key_ordered.map(|(mode, _)| mode),
            shard_sync_interval: self.shard_sync_interval,
            parent_poll_interval: self.parent_poll_interval,
            deaggregation: self.deaggregation,
            graceful_shutdown_timeout: self.graceful_shutdown_timeout,
            permanent_error_timeout: self.permanent_error_timeout,
            worker_prefetch: self.worker_prefetch,
            metrics_level: self.metrics_level,
        };
        Ok(Worker::from_parts(
            config,
            self.factory,
            backend,
            lease_table,
            self.key_ordered.map(|(_, shared)| shared),
        ))
    }
}

impl<F> WorkerBuilder<F>
where
    F: ProcessorFactory,
    F::Processor: ConcurrentProcessor,
{
    /// Key-ordered concurrency within a shard: up to `mode.max_in_flight` batches of one shard
    /// in flight at once, through [`ConcurrentProcessor::process_batch`], the records of each
    /// [ordering key](ConcurrentProcessor::ordering_key) (the partition key by default) strictly
    /// in order, different keys concurrently. `KeyOrdered::new(1)` is the ordinary path (one
    /// batch at a time through `process_records`). Default: off.
    ///
    /// The worker checkpoints over the contiguous prefix of completed records at the cadence,
    /// which must be automatic; records completed beyond it are remembered in the lease's pending
    /// checkpoint (the framework's in this mode: a checkpoint the processor prepares itself is
    /// replaced at the next automatic one), so neither a restart nor a handoff delivers them
    /// again. Handoffs, shutdowns and shard ends let the batches in flight finish first. See
    /// the `worker` module docs.
    pub fn key_ordered(mut self, mode: KeyOrdered) -> Self {
        self.key_ordered = Some((mode, as_shared::<F::Processor>));
        self
    }
}

/// The application name: given, or the lease table's; the two must agree when both are known.
fn application_name(given: Option<String>, table: &dyn LeaseTable) -> Result<String, ConfigError> {
    let name = match (given, table.application()) {
        (Some(given), Some(table)) if given != table => {
            return Err(invalid(
                "application_name",
                format!("{given:?} differs from the lease table's application {table:?}"),
            ));
        }
        (Some(given), _) => given,
        (None, Some(table)) => table.to_owned(),
        (None, None) => return Err(ConfigError::Missing("application_name")),
    };
    validate_name("application_name", &name, 255)?;
    Ok(name)
}

fn validate_worker_id(worker_id: &str) -> Result<(), ConfigError> {
    if worker_id.is_empty() || worker_id.len() > 256 {
        return Err(invalid("worker_id", "must be 1 to 256 characters"));
    }
    if worker_id.chars().any(char::is_control) {
        return Err(invalid("worker_id", "must not contain control characters"));
    }
    Ok(())
}

fn positive(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(field, "must be positive"));
    }
    Ok(())
}

fn validate_lease(lease: &LeaseConfig) -> Result<(), ConfigError> {
    if lease.failover_time < Duration::from_millis(100) {
        return Err(invalid("failover_time", "must be at least 100 ms"));
    }
    // A renewal must land before the previous one stops being valid (the failover time minus
    // the safety margin).
    if lease.renew_interval.is_zero() || lease.renew_interval >= lease.validity() {
        return Err(invalid(
            "lease_config.renew_interval",
            "must be positive and shorter than the failover time less its safety margin",
        ));
    }
    if lease.scan_interval.is_zero() || lease.scan_interval > lease.idle_scan_interval {
        return Err(invalid(
            "lease_config.scan_interval",
            "must be positive and not longer than idle_scan_interval",
        ));
    }
    if lease.idle_scan_interval >= lease.failover_time {
        return Err(invalid(
            "lease_config.idle_scan_interval",
            "must be shorter than the failover time",
        ));
    }
    if lease.max_leases_for_worker == 0 {
        return Err(invalid(
            "lease_config.max_leases_for_worker",
            "must be at least 1",
        ));
    }
    if lease.max_steals_per_cycle == 0 {
        return Err(invalid(
            "lease_config.max_steals_per_cycle",
            "must be at least 1",
        ));
    }
    positive("lease_config.handoff_timeout", lease.handoff_timeout)
}

fn validate_backoff(field: &'static str, backoff: &RetryBackoff) -> Result<(), ConfigError> {
    if backoff.initial.is_zero() || backoff.max < backoff.initial {
        return Err(invalid(field, "initial must be positive and not above max"));
    }
    Ok(())
}

fn validate_retry(field: &'static str, retry: &RetryPolicy) -> Result<(), ConfigError> {
    if retry.max_attempts == 0 {
        return Err(invalid(field, "max_attempts must be at least 1"));
    }
    validate_backoff(field, &retry.backoff)
}

fn validate_prefetch(field: &'static str, records: usize, bytes: usize) -> Result<(), ConfigError> {
    if records == 0 {
        return Err(ConfigError::Invalid {
            field,
            reason: "max records must be at least 1".into(),
        });
    }
    if bytes < 1024 {
        return Err(ConfigError::Invalid {
            field,
            reason: "max bytes must be at least 1024".into(),
        });
    }
    Ok(())
}

fn validate_retrieval(
    retrieval: &Retrieval,
    backend: &dyn StreamBackend,
) -> Result<(), ConfigError> {
    match retrieval {
        Retrieval::Polling(polling) => validate_polling(polling),
        Retrieval::FanOut(fanout) => {
            if backend.fan_out().is_none() {
                return Err(invalid(
                    "retrieval",
                    format!(
                        "enhanced fan-out needs a backend that offers it, and {backend:?} does not \
                         (StreamBackend::fan_out is None; a wrapping backend must pass the inner \
                         one's on)"
                    ),
                ));
            }
            validate_fan_out(fanout)
        }
    }
}

fn validate_polling(polling: &PollingConfig) -> Result<(), ConfigError> {
    if !(1..=10_000).contains(&polling.max_records_per_call) {
        return Err(invalid(
            "polling.max_records_per_call",
            format!("{} is outside 1..=10000", polling.max_records_per_call),
        ));
    }
    validate_prefetch(
        "polling.max_prefetch",
        polling.max_prefetch_records,
        polling.max_prefetch_bytes,
    )?;
    validate_backoff("polling.error_backoff", &polling.error_backoff)
}

fn validate_fan_out(fanout: &FanOutConfig) -> Result<(), ConfigError> {
    if let Some(name) = &fanout.consumer_name {
        validate_name("fanout.consumer_name", name, 128)?;
    }
    validate_prefetch(
        "fanout.max_prefetch",
        fanout.max_prefetch_records,
        fanout.max_prefetch_bytes,
    )?;
    validate_backoff("fanout.error_backoff", &fanout.error_backoff)?;
    positive("fanout.silence_timeout", fanout.silence_timeout)?;
    if fanout.idle_probe_interval == Some(Duration::ZERO) {
        return Err(invalid("fanout.idle_probe_interval", "must be positive"));
    }
    positive(
        "fanout.activation_poll_interval",
        fanout.activation_poll_interval,
    )
}

fn validate_cadence(cadence: &CheckpointCadence) -> Result<(), ConfigError> {
    if cadence.every_records == Some(0) {
        return Err(invalid(
            "checkpoint_cadence.every_records",
            "must be at least 1",
        ));
    }
    if cadence.every_interval == Some(Duration::ZERO) {
        return Err(invalid(
            "checkpoint_cadence.every_interval",
            "must be positive",
        ));
    }
    Ok(())
}

/// The options that go with the failure policy: the record age limit and key-ordered mode.
fn validate_failure_options(
    policy: &FailurePolicy,
    max_record_age: Option<&MaxRecordAge>,
    key_ordered: Option<&KeyOrdered>,
    cadence: &CheckpointCadence,
) -> Result<(), ConfigError> {
    if let Some(limit) = max_record_age {
        positive("max_record_age", limit.max_age)?;
        if limit.expired == ExpiredRecords::DeadLetter && policy.handler().is_none() {
            return Err(invalid(
                "max_record_age",
                "expired records go to the dead-letter handler, but the failure policy has none \
                 (use FailurePolicy::DeadLetter, or ExpiredRecords::Skip)",
            ));
        }
    }
    let Some(mode) = key_ordered else {
        return Ok(());
    };
    if !(1..=256).contains(&mode.max_in_flight) {
        return Err(invalid(
            "key_ordered.max_in_flight",
            format!("{} is outside 1..=256", mode.max_in_flight),
        ));
    }
    if mode.max_batch_records == 0 {
        return Err(invalid(
            "key_ordered.max_batch_records",
            "must be at least 1",
        ));
    }
    if mode.max_window_records < mode.max_batch_records {
        return Err(invalid(
            "key_ordered.max_window_records",
            format!(
                "{} is below max_batch_records ({})",
                mode.max_window_records, mode.max_batch_records
            ),
        ));
    }
    if !(256..=262_144).contains(&mode.max_state_bytes) {
        return Err(invalid(
            "key_ordered.max_state_bytes",
            format!("{} is outside 256..=262144", mode.max_state_bytes),
        ));
    }
    if mode.max_in_flight > 1 && !cadence.is_automatic() {
        return Err(invalid(
            "key_ordered",
            "batches in flight at once are checkpointed by the worker: the checkpoint cadence \
             must be automatic (not CheckpointCadence::manual())",
        ));
    }
    Ok(())
}

fn validate_failure_policy(policy: &FailurePolicy) -> Result<(), ConfigError> {
    if policy.max_attempts() == Some(0) {
        return Err(invalid("failure_policy.max_attempts", "must be at least 1"));
    }
    if policy.backoff().max < policy.backoff().initial {
        return Err(invalid(
            "failure_policy.backoff",
            "max must not be below initial",
        ));
    }
    Ok(())
}

fn validate_name(field: &'static str, name: &str, max: usize) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > max {
        return Err(invalid(field, format!("must be 1 to {max} characters")));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(invalid(
            field,
            format!(
                "{name:?} contains {bad:?}; only letters, digits, '_', '-' and '.' are allowed"
            ),
        ));
    }
    Ok(())
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{host}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}
