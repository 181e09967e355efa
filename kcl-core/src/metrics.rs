//! Metrics: what a worker publishes through the [`metrics`] facade.
//!
//! kcl-core records metrics with the `metrics` crate and never installs a recorder: the
//! application picks the exporter (Prometheus, StatsD, OpenTelemetry, ...) and installs it, and
//! everything below shows up there. Without a recorder every call is a no-op.
//!
//! Every metric is listed in [`CATALOG`] with its type, unit, labels, meaning and nearest Java
//! KCL equivalent; `docs/metrics.md` in the repository is the same table. Names follow the
//! Prometheus conventions: counters end in `_total`, durations are in seconds (`_seconds`),
//! sizes in bytes (`_bytes`).
//!
//! Labels: `stream` and `worker` on everything; `shard` on per-shard metrics at
//! [`MetricsLevel::Detailed`] (the default), dropped at [`MetricsLevel::Summary`] so a large
//! fleet exports a series per worker instead of one per shard (like Java KCL's `SUMMARY` and
//! `DETAILED` levels); lease-table metrics add `operation`, pass-through counts `reason`, failed
//! user calls `call`.
//!
//! Gauges that describe a shard (how far behind it is) are republished by the worker at every
//! lease scan for the shards it runs now, so an exporter that drops series not updated for a
//! while (`idle_timeout` in `metrics-exporter-prometheus`) forgets shards that moved to another
//! worker.

use metrics::{Counter, Gauge, Histogram, Label, Unit};

/// How much detail a worker publishes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetricsLevel {
    /// Nothing.
    Off,
    /// Per-shard metrics without the `shard` label (one series per worker); the
    /// behind-latest gauge is the worker's largest.
    Summary,
    /// Per-shard metrics with the `shard` label (the default).
    #[default]
    Detailed,
}

/// The kind of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// One metric the worker publishes.
#[derive(Clone, Copy, Debug)]
pub struct MetricInfo {
    /// The metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The unit (`None` for plain counts).
    pub unit: Option<Unit>,
    /// Labels besides `stream` and `worker`: `shard` (per-shard metrics, at the detailed level)
    /// and the metric's own.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
    /// The nearest Java KCL metric, if any.
    pub java: &'static str,
}

/// The metric names, one constant per metric.
pub mod names {
    /// User records processed successfully (KPL sub-records count one each).
    pub const RECORDS_PROCESSED: &str = "kcl_records_processed_total";
    /// Data bytes of the user records processed successfully.
    pub const BYTES_PROCESSED: &str = "kcl_processed_bytes_total";
    /// Batches processed successfully.
    pub const BATCHES_PROCESSED: &str = "kcl_batches_processed_total";
    /// Duration of each `process_records` call (every attempt).
    pub const PROCESS_DURATION: &str = "kcl_process_records_duration_seconds";
    /// Time a batch waited in the prefetch queue before it reached the processor.
    pub const PREFETCH_WAIT: &str = "kcl_prefetch_wait_seconds";
    /// How far behind the tip of its shard the last fetched batch was.
    pub const BEHIND_LATEST: &str = "kcl_behind_latest_seconds";
    /// Checkpoints written (automatic and by the processor).
    pub const CHECKPOINTS: &str = "kcl_checkpoints_total";
    /// Checkpoint writes that failed.
    pub const CHECKPOINT_FAILURES: &str = "kcl_checkpoint_failures_total";
    /// Re-deliveries of a failed batch.
    pub const BATCH_RETRIES: &str = "kcl_batch_retries_total";
    /// Batches handed to the dead-letter handler.
    pub const BATCHES_DEAD_LETTERED: &str = "kcl_batches_dead_lettered_total";
    /// Records handed to the dead-letter handler.
    pub const RECORDS_DEAD_LETTERED: &str = "kcl_records_dead_lettered_total";
    /// Failed deliveries that reported a partial failure (records from an index on).
    pub const PARTIAL_BATCH_FAILURES: &str = "kcl_partial_batch_failures_total";
    /// Failed batches split in two to isolate the failing records.
    pub const BATCH_BISECTIONS: &str = "kcl_batch_bisections_total";
    /// Records older than the maximum record age, by what happened to them.
    pub const RECORDS_EXPIRED: &str = "kcl_records_expired_total";
    /// Batches in flight at once (key-ordered mode).
    pub const BATCHES_IN_FLIGHT: &str = "kcl_batches_in_flight";
    /// Records received and not yet covered by the checkpoint (key-ordered mode).
    pub const WINDOW_RECORDS: &str = "kcl_window_records";
    /// Records skipped on resume because a previous owner completed them out of order.
    pub const REMEMBERED_RECORDS_SKIPPED: &str = "kcl_remembered_records_skipped_total";
    /// Failed calls of user code (errors and panics), by lifecycle call.
    pub const PROCESSOR_FAILURES: &str = "kcl_processor_failures_total";
    /// Raw records fetched from the stream (before de-aggregation).
    pub const RECORDS_FETCHED: &str = "kcl_records_fetched_total";
    /// KPL aggregates expanded.
    pub const KPL_AGGREGATES: &str = "kcl_kpl_aggregates_total";
    /// User records taken out of KPL aggregates.
    pub const KPL_USER_RECORDS: &str = "kcl_kpl_user_records_total";
    /// Records with the KPL magic handed on unchanged, by reason.
    pub const KPL_PASSED_THROUGH: &str = "kcl_kpl_passed_through_total";
    /// KPL aggregates dropped by the shard hash-range filter.
    pub const KPL_DROPPED_AGGREGATES: &str = "kcl_kpl_dropped_aggregates_total";
    /// `GetRecords` calls made.
    pub const GET_RECORDS_CALLS: &str = "kcl_get_records_calls_total";
    /// Duration of `GetRecords` calls.
    pub const GET_RECORDS_DURATION: &str = "kcl_get_records_duration_seconds";
    /// `GetRecords` and `GetShardIterator` calls throttled.
    pub const READ_THROTTLES: &str = "kcl_read_throttles_total";
    /// Shard iterators that expired and were re-fetched.
    pub const EXPIRED_ITERATORS: &str = "kcl_expired_iterators_total";
    /// Failed reads other than throttling and expired iterators.
    pub const READ_ERRORS: &str = "kcl_read_errors_total";
    /// Enhanced fan-out subscriptions opened.
    pub const SUBSCRIPTIONS_OPENED: &str = "kcl_fanout_subscriptions_opened_total";
    /// Enhanced fan-out subscriptions that ended normally (about every five minutes).
    pub const SUBSCRIPTIONS_ENDED: &str = "kcl_fanout_subscriptions_ended_total";
    /// Enhanced fan-out subscriptions that failed or could not be opened.
    pub const SUBSCRIPTIONS_FAILED: &str = "kcl_fanout_subscriptions_failed_total";
    /// Leases this worker holds.
    pub const LEASES_HELD: &str = "kcl_leases_held";
    /// Leases that can be processed now (open, parents finished), as of the last scan.
    pub const LEASES_ASSIGNABLE: &str = "kcl_leases_assignable";
    /// Leases of other workers seen expired in the last scan.
    pub const LEASES_EXPIRED: &str = "kcl_leases_expired";
    /// Live workers seen in the last scan, this one included.
    pub const LIVE_WORKERS: &str = "kcl_live_workers";
    /// Leases taken (free, expired or assigned to this worker).
    pub const LEASES_TAKEN: &str = "kcl_leases_taken_total";
    /// Leases obtained from a live worker through a handoff this worker asked for.
    pub const LEASES_STOLEN: &str = "kcl_leases_stolen_total";
    /// Handoffs this worker asked other workers for.
    pub const HANDOFFS_REQUESTED: &str = "kcl_lease_handoffs_requested_total";
    /// Leases this worker handed to another worker (on request or at shutdown).
    pub const LEASES_HANDED_OFF: &str = "kcl_leases_handed_off_total";
    /// Held leases lost: taken by another worker, deleted, or dropped after a heartbeat lapse.
    pub const LEASES_LOST: &str = "kcl_leases_lost_total";
    /// Times this worker's claim on its leases lapsed (heartbeat not renewed in time).
    pub const HEARTBEAT_LAPSES: &str = "kcl_heartbeat_lapses_total";
    /// Lease-table calls, by operation.
    pub const LEASE_TABLE_CALLS: &str = "kcl_lease_table_calls_total";
    /// Conditional lease-table writes whose condition failed, by operation.
    pub const LEASE_TABLE_CONDITION_FAILURES: &str = "kcl_lease_table_condition_failures_total";
    /// Lease-table calls that failed (condition failures excluded), by operation.
    pub const LEASE_TABLE_ERRORS: &str = "kcl_lease_table_errors_total";
    /// Duration of lease-table calls, by operation.
    pub const LEASE_TABLE_DURATION: &str = "kcl_lease_table_call_duration_seconds";
    /// Shard syncs (listing shards, creating leases) completed.
    pub const SHARD_SYNCS: &str = "kcl_shard_syncs_total";
    /// Shard syncs that failed.
    pub const SHARD_SYNC_FAILURES: &str = "kcl_shard_sync_failures_total";
    /// Shard consumer tasks that died unexpectedly (their lease is released).
    pub const SHARD_TASK_FAILURES: &str = "kcl_shard_task_failures_total";
    /// Shards stopped by the failure policy (lease kept, nothing processed).
    pub const SHARDS_STOPPED: &str = "kcl_shards_stopped";
    /// Streams named by a serialized identifier found deleted and created again under their
    /// name (no longer synced nor consumed).
    pub const STREAMS_RECREATED: &str = "kcl_streams_recreated_total";
}

use names::*;

const SHARD: &[&str] = &["shard"];

/// Every metric a worker publishes.
pub const CATALOG: &[MetricInfo] = &[
    MetricInfo {
        name: RECORDS_PROCESSED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "User records processed successfully (KPL sub-records count one each).",
        java: "RecordsProcessed",
    },
    MetricInfo {
        name: BYTES_PROCESSED,
        kind: MetricKind::Counter,
        unit: Some(Unit::Bytes),
        labels: SHARD,
        help: "Data bytes of the user records processed successfully.",
        java: "DataBytesProcessed",
    },
    MetricInfo {
        name: BATCHES_PROCESSED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Batches processed successfully.",
        java: "ProcessTask.Success",
    },
    MetricInfo {
        name: PROCESS_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: SHARD,
        help: "Duration of each process_records call, every attempt.",
        java: "RecordProcessor.processRecords.Time",
    },
    MetricInfo {
        name: PREFETCH_WAIT,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: SHARD,
        help: "Time a batch waited in the prefetch queue before it reached the processor.",
        java: "cacheExitTime - cacheEntryTime (no metric)",
    },
    MetricInfo {
        name: BEHIND_LATEST,
        kind: MetricKind::Gauge,
        unit: Some(Unit::Seconds),
        labels: SHARD,
        help: "How far behind the tip of its shard the last fetched batch was (the worker's \
               largest at the summary level).",
        java: "MillisBehindLatest (ms)",
    },
    MetricInfo {
        name: CHECKPOINTS,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Checkpoints written, automatic and by the processor.",
        java: "-",
    },
    MetricInfo {
        name: CHECKPOINT_FAILURES,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Checkpoint writes that failed (lease lost or store error).",
        java: "-",
    },
    MetricInfo {
        name: BATCH_RETRIES,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Re-deliveries of a failed batch under the failure policy.",
        java: "- (Java skips failed batches)",
    },
    MetricInfo {
        name: BATCHES_DEAD_LETTERED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Batches handed to the dead-letter handler.",
        java: "-",
    },
    MetricInfo {
        name: RECORDS_DEAD_LETTERED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Records handed to the dead-letter handler.",
        java: "-",
    },
    MetricInfo {
        name: PARTIAL_BATCH_FAILURES,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Failed deliveries that reported a PartialFailure: the records before its index \
               were processed, the rest is delivered again.",
        java: "-",
    },
    MetricInfo {
        name: BATCH_BISECTIONS,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Failed batches split in two to isolate the failing records \
               (bisect_failed_batches).",
        java: "- (Lambda: BisectBatchOnFunctionError)",
    },
    MetricInfo {
        name: RECORDS_EXPIRED,
        kind: MetricKind::Counter,
        unit: None,
        labels: &["shard", "action"],
        help: "Records older than max_record_age, taken out before delivery, by action: \
               dead_lettered (also counted as dead-lettered records) or skipped.",
        java: "- (Lambda: MaximumRecordAgeInSeconds)",
    },
    MetricInfo {
        name: BATCHES_IN_FLIGHT,
        kind: MetricKind::Gauge,
        unit: None,
        labels: SHARD,
        help: "Batches of the shard being processed at once (key-ordered mode, at most \
               max_in_flight).",
        java: "-",
    },
    MetricInfo {
        name: WINDOW_RECORDS,
        kind: MetricKind::Gauge,
        unit: None,
        labels: SHARD,
        help: "Records received and not yet covered by the checkpoint: in flight, waiting for \
               their key, or completed after an unfinished one (key-ordered mode).",
        java: "-",
    },
    MetricInfo {
        name: REMEMBERED_RECORDS_SKIPPED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Records not delivered on resume because a previous owner completed them out of \
               order and remembered them in the checkpoint (key-ordered mode).",
        java: "-",
    },
    MetricInfo {
        name: PROCESSOR_FAILURES,
        kind: MetricKind::Counter,
        unit: None,
        labels: &["shard", "call"],
        help: "Failed calls of user code (errors and panics), by call: create, initialize, \
               process_records, shard_ended, shutdown_requested, lease_lost, dead_letter, \
               ordering_key.",
        java: "RecordsFailedProcessing (3.5.4, records)",
    },
    MetricInfo {
        name: RECORDS_FETCHED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Raw records fetched from the stream, before de-aggregation.",
        java: "-",
    },
    MetricInfo {
        name: KPL_AGGREGATES,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "KPL aggregates expanded.",
        java: "-",
    },
    MetricInfo {
        name: KPL_USER_RECORDS,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "User records taken out of KPL aggregates.",
        java: "-",
    },
    MetricInfo {
        name: KPL_PASSED_THROUGH,
        kind: MetricKind::Counter,
        unit: None,
        labels: &["shard", "reason"],
        help: "Records with the KPL magic handed on unchanged, by reason: too_short, \
               digest_mismatch, undecodable, index_out_of_range.",
        java: "-",
    },
    MetricInfo {
        name: KPL_DROPPED_AGGREGATES,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "KPL aggregates dropped by the shard hash-range filter.",
        java: "-",
    },
    MetricInfo {
        name: GET_RECORDS_CALLS,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "GetRecords calls made (polling, and the fan-out shard-end probe).",
        java: "KinesisDataFetcher.getRecords.Success",
    },
    MetricInfo {
        name: GET_RECORDS_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: SHARD,
        help: "Duration of GetRecords calls.",
        java: "KinesisDataFetcher.getRecords.Time",
    },
    MetricInfo {
        name: READ_THROTTLES,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Reads throttled (ProvisionedThroughputExceeded, LimitExceeded).",
        java: "-",
    },
    MetricInfo {
        name: EXPIRED_ITERATORS,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Shard iterators that expired and were re-fetched after the last record.",
        java: "ExpiredIterator",
    },
    MetricInfo {
        name: READ_ERRORS,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Failed reads other than throttling and expired iterators.",
        java: "-",
    },
    MetricInfo {
        name: SUBSCRIPTIONS_OPENED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Enhanced fan-out subscriptions opened.",
        java: "-",
    },
    MetricInfo {
        name: SUBSCRIPTIONS_ENDED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Enhanced fan-out subscriptions that ended normally (about every five minutes).",
        java: "-",
    },
    MetricInfo {
        name: SUBSCRIPTIONS_FAILED,
        kind: MetricKind::Counter,
        unit: None,
        labels: SHARD,
        help: "Enhanced fan-out subscriptions that failed, went silent or could not be opened.",
        java: "-",
    },
    MetricInfo {
        name: LEASES_HELD,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Leases this worker holds.",
        java: "CurrentLeases",
    },
    MetricInfo {
        name: LEASES_ASSIGNABLE,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Leases that can be processed now (open, parents finished), as of the worker's \
               last scan.",
        java: "TotalLeases (3.x)",
    },
    MetricInfo {
        name: LEASES_EXPIRED,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Leases of other workers seen expired in the last scan.",
        java: "ExpiredLeases",
    },
    MetricInfo {
        name: LIVE_WORKERS,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Live workers seen in the last scan, this one included.",
        java: "NumWorkers (3.x)",
    },
    MetricInfo {
        name: LEASES_TAKEN,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Leases taken: free, expired, or assigned to this worker.",
        java: "TakenLeases",
    },
    MetricInfo {
        name: LEASES_STOLEN,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Leases obtained from a live worker through a handoff this worker asked for.",
        java: "- (2.x steals count in TakenLeases)",
    },
    MetricInfo {
        name: HANDOFFS_REQUESTED,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Handoffs this worker asked other workers for (rebalancing steals).",
        java: "LeasesToSteal",
    },
    MetricInfo {
        name: LEASES_HANDED_OFF,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Leases this worker handed to another worker, on request or at shutdown.",
        java: "-",
    },
    MetricInfo {
        name: LEASES_LOST,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Held leases lost: taken by another worker, deleted, or dropped after a \
               heartbeat lapse.",
        java: "LostLeases",
    },
    MetricInfo {
        name: HEARTBEAT_LAPSES,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Times the worker's claim on its leases lapsed (heartbeat not renewed within the \
               failover time), dropping every held lease.",
        java: "-",
    },
    MetricInfo {
        name: LEASE_TABLE_CALLS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &["operation"],
        help: "Lease-table calls, by operation: create, list, get, update, delete, list_workers (the reads of the heartbeat rows alone, every idle interval at rest).",
        java: "DynamoDB request counts (CloudWatch, per table)",
    },
    MetricInfo {
        name: LEASE_TABLE_CONDITION_FAILURES,
        kind: MetricKind::Counter,
        unit: None,
        labels: &["operation"],
        help: "Conditional lease-table writes whose condition failed (another worker wrote \
               first), by operation.",
        java: "ConditionalCheckFailedRequests (CloudWatch)",
    },
    MetricInfo {
        name: LEASE_TABLE_ERRORS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &["operation"],
        help: "Lease-table calls that failed, condition failures excluded, by operation.",
        java: "-",
    },
    MetricInfo {
        name: LEASE_TABLE_DURATION,
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        labels: &["operation"],
        help: "Duration of lease-table calls, by operation.",
        java: "-",
    },
    MetricInfo {
        name: SHARD_SYNCS,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Shard syncs completed (shards listed, missing leases created).",
        java: "ShardSyncTask.Success",
    },
    MetricInfo {
        name: SHARD_SYNC_FAILURES,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Shard syncs that failed (retried with backoff).",
        java: "-",
    },
    MetricInfo {
        name: STREAMS_RECREATED,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Streams named by a serialized identifier found deleted and created again under \
               their name; their leases are no longer synced nor consumed.",
        java: "-",
    },
    MetricInfo {
        name: SHARD_TASK_FAILURES,
        kind: MetricKind::Counter,
        unit: None,
        labels: &[],
        help: "Shard consumer tasks that died unexpectedly; their lease is released.",
        java: "-",
    },
    MetricInfo {
        name: SHARDS_STOPPED,
        kind: MetricKind::Gauge,
        unit: None,
        labels: &[],
        help: "Shards stopped by the failure policy: lease kept, nothing processed.",
        java: "-",
    },
];

/// Registers the help text and unit of every metric with the installed recorder (exporters
/// print them, e.g. as Prometheus `# HELP` lines). The worker calls it when it starts; calling
/// it again is harmless.
pub fn describe() {
    for info in CATALOG {
        let unit = info.unit.unwrap_or(Unit::Count);
        match info.kind {
            MetricKind::Counter => metrics::describe_counter!(info.name, unit, info.help),
            MetricKind::Gauge => metrics::describe_gauge!(info.name, unit, info.help),
            MetricKind::Histogram => metrics::describe_histogram!(info.name, unit, info.help),
        }
    }
}

/// The labels of one worker's metrics, and its level.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    level: MetricsLevel,
    stream: String,
    worker: String,
}

impl Scope {
    pub(crate) fn new(level: MetricsLevel, stream: &str, worker: &str) -> Self {
        Self {
            level,
            stream: stream.to_owned(),
            worker: worker.to_owned(),
        }
    }

    pub(crate) fn level(&self) -> MetricsLevel {
        self.level
    }

    /// The same worker's labels for another stream (multi-stream workers).
    pub(crate) fn for_stream(&self, stream: &str) -> Self {
        Self {
            level: self.level,
            stream: stream.to_owned(),
            worker: self.worker.clone(),
        }
    }

    fn base(&self) -> Vec<Label> {
        vec![
            Label::new("stream", self.stream.clone()),
            Label::new("worker", self.worker.clone()),
        ]
    }

    /// Labels of a per-shard metric: with `shard` at the detailed level.
    fn shard_labels(&self, shard: &str) -> Vec<Label> {
        let mut labels = self.base();
        if self.level == MetricsLevel::Detailed {
            labels.push(Label::new("shard", shard.to_owned()));
        }
        labels
    }

    fn counter(&self, name: &'static str, labels: &[Label]) -> Counter {
        if self.level == MetricsLevel::Off {
            return Counter::noop();
        }
        metrics::counter!(name, labels.iter())
    }

    fn gauge(&self, name: &'static str, labels: &[Label]) -> Gauge {
        if self.level == MetricsLevel::Off {
            return Gauge::noop();
        }
        metrics::gauge!(name, labels.iter())
    }

    fn histogram(&self, name: &'static str, labels: &[Label]) -> Histogram {
        if self.level == MetricsLevel::Off {
            return Histogram::noop();
        }
        metrics::histogram!(name, labels.iter())
    }

    /// A worker-level counter with one extra label (e.g. the lease-table operation).
    pub(crate) fn labelled_counter(
        &self,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) -> Counter {
        let mut labels = self.base();
        labels.push(Label::new(key, value));
        self.counter(name, &labels)
    }

    /// A worker-level histogram with one extra label.
    pub(crate) fn labelled_histogram(
        &self,
        name: &'static str,
        key: &'static str,
        value: &'static str,
    ) -> Histogram {
        let mut labels = self.base();
        labels.push(Label::new(key, value));
        self.histogram(name, &labels)
    }

    /// The behind-latest gauge of `shard` (detailed level), or of the worker (summary level).
    /// Counts a stream of this scope found recreated under its name.
    pub(crate) fn stream_recreated(&self) -> Counter {
        self.counter(STREAMS_RECREATED, &self.base())
    }

    pub(crate) fn behind_latest(&self, shard: Option<&str>) -> Gauge {
        match shard {
            Some(shard) => self.gauge(BEHIND_LATEST, &self.shard_labels(shard)),
            None => self.gauge(BEHIND_LATEST, &self.base()),
        }
    }
}

/// The metrics of one shard consumer and its retriever. Handles are resolved once, when the
/// consumer starts, so recording costs an atomic add.
#[derive(Clone, Debug)]
pub(crate) struct ShardMetrics {
    pub records_processed: Counter,
    pub bytes_processed: Counter,
    pub batches_processed: Counter,
    pub process_duration: Histogram,
    pub prefetch_wait: Histogram,
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
    pub batch_retries: Counter,
    pub batches_dead_lettered: Counter,
    pub records_dead_lettered: Counter,
    pub partial_failures: Counter,
    pub bisections: Counter,
    /// Records too old to deliver: dead-lettered, skipped.
    pub records_expired: [Counter; 2],
    pub batches_in_flight: Gauge,
    pub window_records: Gauge,
    pub remembered_skipped: Counter,
    pub records_fetched: Counter,
    pub kpl_aggregates: Counter,
    pub kpl_user_records: Counter,
    pub kpl_dropped_aggregates: Counter,
    kpl_passed_through: [Counter; 4],
    processor_failures: [Counter; 8],
    pub retrieval: RetrievalMetrics,
}

/// The user calls counted in [`names::PROCESSOR_FAILURES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UserCall {
    Create,
    Initialize,
    ProcessRecords,
    ShardEnded,
    ShutdownRequested,
    LeaseLost,
    DeadLetter,
    OrderingKey,
}

impl UserCall {
    const ALL: [UserCall; 8] = [
        Self::Create,
        Self::Initialize,
        Self::ProcessRecords,
        Self::ShardEnded,
        Self::ShutdownRequested,
        Self::LeaseLost,
        Self::DeadLetter,
        Self::OrderingKey,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Initialize => "initialize",
            Self::ProcessRecords => "process_records",
            Self::ShardEnded => "shard_ended",
            Self::ShutdownRequested => "shutdown_requested",
            Self::LeaseLost => "lease_lost",
            Self::DeadLetter => "dead_letter",
            Self::OrderingKey => "ordering_key",
        }
    }
}

const PASS_THROUGH_REASONS: [&str; 4] = [
    "too_short",
    "digest_mismatch",
    "undecodable",
    "index_out_of_range",
];

impl ShardMetrics {
    pub(crate) fn new(scope: &Scope, shard: &str) -> Self {
        let labels = scope.shard_labels(shard);
        let with = |key: &'static str, value: &'static str| {
            let mut labels = labels.clone();
            labels.push(Label::new(key, value));
            labels
        };
        Self {
            records_processed: scope.counter(RECORDS_PROCESSED, &labels),
            bytes_processed: scope.counter(BYTES_PROCESSED, &labels),
            batches_processed: scope.counter(BATCHES_PROCESSED, &labels),
            process_duration: scope.histogram(PROCESS_DURATION, &labels),
            prefetch_wait: scope.histogram(PREFETCH_WAIT, &labels),
            checkpoints: scope.counter(CHECKPOINTS, &labels),
            checkpoint_failures: scope.counter(CHECKPOINT_FAILURES, &labels),
            batch_retries: scope.counter(BATCH_RETRIES, &labels),
            batches_dead_lettered: scope.counter(BATCHES_DEAD_LETTERED, &labels),
            records_dead_lettered: scope.counter(RECORDS_DEAD_LETTERED, &labels),
            partial_failures: scope.counter(PARTIAL_BATCH_FAILURES, &labels),
            bisections: scope.counter(BATCH_BISECTIONS, &labels),
            records_expired: ["dead_lettered", "skipped"]
                .map(|action| scope.counter(RECORDS_EXPIRED, &with("action", action))),
            batches_in_flight: scope.gauge(BATCHES_IN_FLIGHT, &labels),
            window_records: scope.gauge(WINDOW_RECORDS, &labels),
            remembered_skipped: scope.counter(REMEMBERED_RECORDS_SKIPPED, &labels),
            records_fetched: scope.counter(RECORDS_FETCHED, &labels),
            kpl_aggregates: scope.counter(KPL_AGGREGATES, &labels),
            kpl_user_records: scope.counter(KPL_USER_RECORDS, &labels),
            kpl_dropped_aggregates: scope.counter(KPL_DROPPED_AGGREGATES, &labels),
            kpl_passed_through: PASS_THROUGH_REASONS
                .map(|reason| scope.counter(KPL_PASSED_THROUGH, &with("reason", reason))),
            processor_failures: UserCall::ALL
                .map(|call| scope.counter(PROCESSOR_FAILURES, &with("call", call.name()))),
            retrieval: RetrievalMetrics {
                get_records_calls: scope.counter(GET_RECORDS_CALLS, &labels),
                get_records_duration: scope.histogram(GET_RECORDS_DURATION, &labels),
                throttles: scope.counter(READ_THROTTLES, &labels),
                expired_iterators: scope.counter(EXPIRED_ITERATORS, &labels),
                errors: scope.counter(READ_ERRORS, &labels),
                subscriptions_opened: scope.counter(SUBSCRIPTIONS_OPENED, &labels),
                subscriptions_ended: scope.counter(SUBSCRIPTIONS_ENDED, &labels),
                subscriptions_failed: scope.counter(SUBSCRIPTIONS_FAILED, &labels),
            },
        }
    }

    /// Handles that record nothing (tests of parts that need no metrics).
    #[cfg(test)]
    pub(crate) fn noop() -> Self {
        Self::new(&Scope::new(MetricsLevel::Off, "", ""), "")
    }

    /// Counts one failed user call.
    pub(crate) fn processor_failure(&self, call: UserCall) {
        let index = UserCall::ALL.iter().position(|c| *c == call).unwrap_or(0);
        self.processor_failures[index].increment(1);
    }

    /// Adds the counts of one de-aggregated batch.
    pub(crate) fn deaggregated(&self, stats: &crate::deaggregation::DeaggregationStats) {
        self.kpl_aggregates.increment(stats.aggregates);
        self.kpl_user_records.increment(stats.user_records);
        self.kpl_dropped_aggregates
            .increment(stats.dropped_aggregates);
        for (counter, n) in self
            .kpl_passed_through
            .iter()
            .zip(stats.passed_through_by_reason)
        {
            if n > 0 {
                counter.increment(n);
            }
        }
    }
}

/// The metrics a retriever records.
#[derive(Clone, Debug)]
pub(crate) struct RetrievalMetrics {
    pub get_records_calls: Counter,
    pub get_records_duration: Histogram,
    pub throttles: Counter,
    pub expired_iterators: Counter,
    pub errors: Counter,
    pub subscriptions_opened: Counter,
    pub subscriptions_ended: Counter,
    pub subscriptions_failed: Counter,
}

impl RetrievalMetrics {
    /// Counts a failed read: throttled, or another error.
    pub(crate) fn read_failed(&self, error: &crate::backend::BackendError) {
        if error.is_throttling() {
            self.throttles.increment(1);
        } else {
            self.errors.increment(1);
        }
    }
}

/// The worker-level metrics published from the lease coordinator's counts and the status of
/// its shards.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    scope: Scope,
    leases_held: Gauge,
    leases_assignable: Gauge,
    leases_expired: Gauge,
    live_workers: Gauge,
    leases_taken: Counter,
    leases_stolen: Counter,
    handoffs_requested: Counter,
    pub leases_handed_off: Counter,
    leases_lost: Counter,
    heartbeat_lapses: Counter,
    pub shard_syncs: Counter,
    pub shard_sync_failures: Counter,
    pub shard_task_failures: Counter,
    shards_stopped: Gauge,
}

impl WorkerMetrics {
    pub(crate) fn new(scope: Scope) -> Self {
        let base = scope.base();
        Self {
            leases_held: scope.gauge(LEASES_HELD, &base),
            leases_assignable: scope.gauge(LEASES_ASSIGNABLE, &base),
            leases_expired: scope.gauge(LEASES_EXPIRED, &base),
            live_workers: scope.gauge(LIVE_WORKERS, &base),
            leases_taken: scope.counter(LEASES_TAKEN, &base),
            leases_stolen: scope.counter(LEASES_STOLEN, &base),
            handoffs_requested: scope.counter(HANDOFFS_REQUESTED, &base),
            leases_handed_off: scope.counter(LEASES_HANDED_OFF, &base),
            leases_lost: scope.counter(LEASES_LOST, &base),
            heartbeat_lapses: scope.counter(HEARTBEAT_LAPSES, &base),
            shard_syncs: scope.counter(SHARD_SYNCS, &base),
            shard_sync_failures: scope.counter(SHARD_SYNC_FAILURES, &base),
            shard_task_failures: scope.counter(SHARD_TASK_FAILURES, &base),
            shards_stopped: scope.gauge(SHARDS_STOPPED, &base),
            scope,
        }
    }

    pub(crate) fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Publishes the coordinator's counts (counters set to their running totals).
    pub(crate) fn leases(&self, stats: &crate::lease::coordinator::LeaseStats, held: usize) {
        self.leases_held.set(held as f64);
        self.leases_assignable.set(stats.assignable as f64);
        self.leases_expired.set(stats.expired as f64);
        self.live_workers.set(stats.live_workers as f64);
        self.leases_taken.absolute(stats.taken);
        self.leases_stolen
            .absolute(stats.handoffs_received + stats.handoffs_forced);
        self.handoffs_requested.absolute(stats.handoffs_requested);
        self.leases_lost.absolute(stats.lost);
        self.heartbeat_lapses.absolute(stats.heartbeat_lapses);
    }

    pub(crate) fn shards_stopped(&self, n: usize) {
        self.shards_stopped.set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_conventions_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for info in CATALOG {
            assert!(seen.insert(info.name), "{} listed twice", info.name);
            assert!(info.name.starts_with("kcl_"), "{}", info.name);
            match info.kind {
                MetricKind::Counter => assert!(info.name.ends_with("_total"), "{}", info.name),
                _ => assert!(!info.name.ends_with("_total"), "{}", info.name),
            }
            match info.unit {
                Some(Unit::Seconds) => assert!(info.name.contains("_seconds"), "{}", info.name),
                Some(Unit::Bytes) => assert!(info.name.contains("_bytes"), "{}", info.name),
                _ => {}
            }
        }
    }
}
