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
use crate::processor::{FailurePolicy, ProcessorFactory};
use crate::retrieval::{PollingConfig, Retrieval, WorkerPrefetch};
use crate::shard_sync::InitialPosition;

use super::Worker;

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
    /// Application name (the default lease table name for stores that use one).
    pub application_name: String,
    /// Stream name.
    pub stream: String,
    /// This worker's id, unique among the application's workers.
    pub worker_id: String,
    /// Where new leases start.
    pub initial_position: InitialPosition,
    /// Lease timing.
    pub lease: LeaseConfig,
    /// Polling retrieval settings.
    pub polling: PollingConfig,
    /// Polling or enhanced fan-out (default polling).
    pub retrieval: Retrieval,
    /// Automatic checkpoint cadence.
    pub checkpoint: CheckpointCadence,
    /// What to do with failed batches.
    pub failure_policy: FailurePolicy,
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
pub struct WorkerBuilder<F> {
    factory: F,
    backend: Option<Arc<dyn StreamBackend>>,
    lease_table: Option<Arc<dyn LeaseTable>>,
    application_name: Option<String>,
    stream: Option<String>,
    worker_id: Option<String>,
    initial_position: InitialPosition,
    lease: LeaseConfig,
    polling: PollingConfig,
    retrieval: Retrieval,
    checkpoint: CheckpointCadence,
    failure_policy: FailurePolicy,
    shard_sync_interval: Duration,
    parent_poll_interval: Duration,
    deaggregation: DeaggregationConfig,
    graceful_shutdown_timeout: Duration,
    permanent_error_timeout: Duration,
    worker_prefetch: WorkerPrefetch,
    metrics_level: MetricsLevel,
}

impl<F> std::fmt::Debug for WorkerBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("application_name", &self.application_name)
            .field("stream", &self.stream)
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
            worker_id: None,
            initial_position: InitialPosition::default(),
            lease: LeaseConfig::default(),
            polling: PollingConfig::default(),
            retrieval: Retrieval::default(),
            checkpoint: CheckpointCadence::default(),
            failure_policy: FailurePolicy::default(),
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

    /// The stream to consume. Required.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
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

    /// Polling retrieval settings.
    pub fn polling(mut self, config: PollingConfig) -> Self {
        self.polling = config;
        self
    }

    /// How records are read (default [`Retrieval::Polling`]); e.g.
    /// `Retrieval::FanOut(FanOutConfig::default())` for enhanced fan-out through a stream
    /// consumer named after the application.
    pub fn retrieval(mut self, retrieval: Retrieval) -> Self {
        self.retrieval = retrieval;
        self
    }

    /// Automatic checkpoint cadence (default every 10 000 records or 10 s).
    pub fn checkpoint_cadence(mut self, cadence: CheckpointCadence) -> Self {
        self.checkpoint = cadence;
        self
    }

    /// What to do with failed batches (default: retry forever with backoff).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
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
        let backend = self.backend.ok_or(ConfigError::Missing("backend"))?;
        let lease_table = self
            .lease_table
            .ok_or(ConfigError::Missing("lease_table"))?;
        let application_name = match (self.application_name, lease_table.application()) {
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
        validate_name("application_name", &application_name, 255)?;
        let stream = self.stream.ok_or(ConfigError::Missing("stream"))?;
        validate_name("stream", &stream, 128)?;
        let worker_id = match self.worker_id {
            Some(id) => id,
            None => default_worker_id(),
        };
        if worker_id.is_empty() || worker_id.len() > 256 {
            return Err(invalid("worker_id", "must be 1 to 256 characters"));
        }
        if worker_id.chars().any(char::is_control) {
            return Err(invalid("worker_id", "must not contain control characters"));
        }
        let lease = self.lease;
        if lease.failover_time < Duration::from_millis(100) {
            return Err(invalid("failover_time", "must be at least 100 ms"));
        }
        // A renewal must land before the previous one stops being valid (the failover time minus
        // half a renewal interval): the interval must be below two thirds of the failover time.
        if lease.renew_interval.is_zero() || lease.renew_interval >= lease.validity() {
            return Err(invalid(
                "lease_config.renew_interval",
                "must be positive and shorter than two thirds of the failover time",
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
        if lease.handoff_timeout.is_zero() {
            return Err(invalid("lease_config.handoff_timeout", "must be positive"));
        }
        let polling = self.polling;
        if !(1..=10_000).contains(&polling.max_records_per_call) {
            return Err(invalid(
                "polling.max_records_per_call",
                format!("{} is outside 1..=10000", polling.max_records_per_call),
            ));
        }
        if polling.max_prefetch_records == 0 {
            return Err(invalid(
                "polling.max_prefetch_records",
                "must be at least 1",
            ));
        }
        if polling.max_prefetch_bytes < 1024 {
            return Err(invalid(
                "polling.max_prefetch_bytes",
                "must be at least 1024",
            ));
        }
        if polling.error_backoff.initial.is_zero()
            || polling.error_backoff.max < polling.error_backoff.initial
        {
            return Err(invalid(
                "polling.error_backoff",
                "initial must be positive and not above max",
            ));
        }
        let retrieval = match self.retrieval {
            Retrieval::Polling => Retrieval::Polling,
            Retrieval::FanOut(fanout) => {
                if let Some(name) = &fanout.consumer_name {
                    validate_name("fanout.consumer_name", name, 128)?;
                }
                if fanout.max_prefetch_records == 0 {
                    return Err(invalid("fanout.max_prefetch_records", "must be at least 1"));
                }
                if fanout.max_prefetch_bytes < 1024 {
                    return Err(invalid(
                        "fanout.max_prefetch_bytes",
                        "must be at least 1024",
                    ));
                }
                if fanout.error_backoff.initial.is_zero()
                    || fanout.error_backoff.max < fanout.error_backoff.initial
                {
                    return Err(invalid(
                        "fanout.error_backoff",
                        "initial must be positive and not above max",
                    ));
                }
                if fanout.silence_timeout.is_zero() {
                    return Err(invalid("fanout.silence_timeout", "must be positive"));
                }
                if fanout.idle_probe_interval == Some(Duration::ZERO) {
                    return Err(invalid("fanout.idle_probe_interval", "must be positive"));
                }
                if fanout.activation_poll_interval.is_zero() {
                    return Err(invalid(
                        "fanout.activation_poll_interval",
                        "must be positive",
                    ));
                }
                Retrieval::FanOut(fanout.for_worker())
            }
        };
        if self.checkpoint.every_records == Some(0) {
            return Err(invalid(
                "checkpoint_cadence.every_records",
                "must be at least 1",
            ));
        }
        if self.checkpoint.every_interval == Some(Duration::ZERO) {
            return Err(invalid(
                "checkpoint_cadence.every_interval",
                "must be positive",
            ));
        }
        if self.failure_policy.max_attempts() == Some(0) {
            return Err(invalid("failure_policy.max_attempts", "must be at least 1"));
        }
        if self.failure_policy.backoff().max < self.failure_policy.backoff().initial {
            return Err(invalid(
                "failure_policy.backoff",
                "max must not be below initial",
            ));
        }
        if self.shard_sync_interval.is_zero() {
            return Err(invalid("shard_sync_interval", "must be positive"));
        }
        if self.parent_poll_interval.is_zero() {
            return Err(invalid("parent_poll_interval", "must be positive"));
        }
        if self.permanent_error_timeout.is_zero() {
            return Err(invalid("permanent_error_timeout", "must be positive"));
        }
        if self.worker_prefetch.max_records == 0 {
            return Err(invalid("worker_prefetch.max_records", "must be at least 1"));
        }
        if self.worker_prefetch.max_bytes < 1024 {
            return Err(invalid(
                "worker_prefetch.max_bytes",
                "must be at least 1024",
            ));
        }
        let config = WorkerConfig {
            application_name,
            stream,
            worker_id,
            initial_position: self.initial_position,
            lease,
            polling,
            retrieval,
            checkpoint: self.checkpoint,
            failure_policy: self.failure_policy,
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
        ))
    }
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
