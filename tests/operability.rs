//! Operability on the in-memory model, under tokio's paused clock: permanent failures end
//! `run` with a typed error, transient ones are retried with backoff and counted, user code
//! that panics or fails is handled by the failure policy, a consumer task that dies gives its
//! lease back, health and status tell the truth, and the metrics count what happened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::backend::{BackendError, StreamBackend};
use kcl_core::checkpoint::Checkpointer;
use kcl_core::deaggregation::aggregator::Aggregator;
use kcl_core::lease::{
    Expectation, InMemoryLeaseTable, Lease, LeaseError, LeaseTable, LeaseUpdate,
};
use kcl_core::metrics::names;
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{
    BoxError, FailurePolicy, InitializationInput, ProcessRecordsInput, ProcessorFactory,
    RecordProcessor, ShardInfo,
};
use kcl_core::retry::RetryBackoff;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{HealthStatus, ShardState, Worker, WorkerError};
use kcl_testkit::hooks::{
    BackendCall, Before, HookedBackend, HookedTable, TableCall, TableHooks, backend_fn, table_fn,
};
use support::{Faults, Recorder, RecordingProcessor, produce, within};
use tokio::time::Instant;

const STREAM: &str = "orders";
const LIMIT: Duration = Duration::from_secs(600);

/// The sum of a counter (or gauge) over the series of `worker`, optionally with one more label.
fn metric(name: &str, worker: &str, label: Option<(&str, &str)>) -> f64 {
    let mut labels = vec![("worker", worker)];
    labels.extend(label);
    support::metrics::recorder().value(name, &labels)
}

fn model(shards: u32) -> Arc<KinesisModel> {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, shards).unwrap();
    model
}

fn quick_policy(policy: impl FnOnce(RetryBackoff) -> FailurePolicy) -> FailurePolicy {
    policy(RetryBackoff::new(
        Duration::from_millis(100),
        Duration::from_secs(1),
    ))
}

/// Builds a worker named `name` on the model and an in-memory table.
fn worker<F: ProcessorFactory>(
    name: &str,
    backend: Arc<dyn StreamBackend>,
    table: Arc<dyn LeaseTable>,
    factory: F,
) -> kcl_core::worker::WorkerBuilder<F> {
    support::init_tracing();
    support::metrics::recorder();
    Worker::builder(factory)
        .application_name("app")
        .stream(STREAM)
        .worker_id(name)
        .backend(backend)
        .lease_table(table)
        .initial_position(InitialPosition::TrimHorizon)
}

#[tokio::test(start_paused = true)]
async fn a_missing_stream_ends_run_with_a_typed_error_after_the_timeout() {
    let model = KinesisModel::new(ModelConfig::new());
    let built = worker(
        "missing-stream",
        model,
        Arc::new(InMemoryLeaseTable::new()),
        RecordingProcessor::factory("missing-stream", Recorder::new(), Faults::default()),
    )
    .permanent_error_timeout(Duration::from_secs(5))
    .build()
    .unwrap();
    let handle = built.handle();
    let started = Instant::now();
    let error = within(LIMIT, "run", built.run()).await.unwrap_err();
    assert!(
        matches!(&error, WorkerError::StreamNotFound { stream, .. } if stream == STREAM),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("\"orders\" does not exist"),
        "{error}"
    );
    // It retried for the whole timeout first (a stream being created is not given up on).
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert!(metric(names::SHARD_SYNC_FAILURES, "missing-stream", None) >= 3.0);
    assert_eq!(handle.health().status, HealthStatus::Failed);
    assert!(matches!(
        handle.wait().await,
        Err(WorkerError::StreamNotFound { .. })
    ));
}

/// The model behind testkit hooks whose `ListShards` fails transiently `failures` times first.
fn flaky_listing(inner: Arc<KinesisModel>, failures: u32) -> Arc<dyn StreamBackend> {
    let left = AtomicU32::new(failures);
    Arc::new(HookedBackend::new(
        inner,
        backend_fn(move |call| match call {
            BackendCall::ListShards(_)
                if left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok() =>
            {
                Err(BackendError::Transient("injected 503".into()))
            }
            _ => Ok(()),
        }),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_transient_sync_failure_is_retried_with_backoff_and_counted() {
    let model = model(2);
    let produced = produce(&model, STREAM, 10, 100, 0);
    let backend = flaky_listing(model, 4);
    let recorder = Recorder::new();
    let built = worker(
        "flaky-listing",
        backend,
        Arc::new(InMemoryLeaseTable::new()),
        RecordingProcessor::factory("flaky-listing", recorder.clone(), Faults::default()),
    )
    .build()
    .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    let started = Instant::now();
    recorder
        .wait_until(LIMIT, |r| r.distinct() == produced.len())
        .await;
    // Four failures in a row, retried with backoff (250 ms doubling), not after the 60 s sync
    // interval: the records flow long before it.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(
        metric(names::SHARD_SYNC_FAILURES, "flaky-listing", None),
        4.0
    );
    assert!(metric(names::SHARD_SYNCS, "flaky-listing", None) >= 1.0);
    assert_eq!(handle.health().status, HealthStatus::Ready);
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
    assert_eq!(handle.health().status, HealthStatus::Stopped);
}

/// A lease table whose every call answers `Misconfigured`, naming the permission it lacks.
fn unusable() -> Arc<dyn LeaseTable> {
    Arc::new(HookedTable::new(
        Arc::new(InMemoryLeaseTable::new()),
        table_fn(|call| {
            let action = match call {
                TableCall::CreateIfAbsent(_) => "PutItem",
                TableCall::Get(_) => "GetItem",
                TableCall::Update { .. } => "UpdateItem",
                TableCall::Delete { .. } => "DeleteItem",
                _ => "Scan",
            };
            Before::Fail(LeaseError::Misconfigured(format!(
                "table app: missing dynamodb:{action}"
            )))
        }),
    ))
}

#[tokio::test(start_paused = true)]
async fn an_unusable_lease_table_ends_run_naming_the_table() {
    let built = worker(
        "unusable-table",
        model(1),
        unusable(),
        RecordingProcessor::factory("unusable-table", Recorder::new(), Faults::default()),
    )
    .build()
    .unwrap();
    let error = within(LIMIT, "run", built.run()).await.unwrap_err();
    match &error {
        WorkerError::LeaseTable { source } => {
            assert!(matches!(**source, LeaseError::Misconfigured(_)), "{source}")
        }
        other => panic!("expected a lease-table error, got {other:?}"),
    }
    assert!(
        error.to_string().contains("table app: missing dynamodb:"),
        "{error}"
    );
}

/// Creates [`RecordingProcessor`]s, panicking in `create` while `panics_left` is positive.
struct PanickingFactory {
    inner: support::RecordingFactory,
    panics_left: Arc<AtomicU32>,
}

impl ProcessorFactory for PanickingFactory {
    type Processor = RecordingProcessor;

    fn create(&self, shard: &ShardInfo) -> RecordingProcessor {
        if self
            .panics_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("factory panicked (injected)");
        }
        self.inner.create(shard)
    }
}

#[tokio::test(start_paused = true)]
async fn a_factory_that_panics_once_is_retried_and_the_shard_processes_everything() {
    let model = model(1);
    let produced = produce(&model, STREAM, 5, 50, 0);
    let recorder = Recorder::new();
    let factory = PanickingFactory {
        inner: RecordingProcessor::factory("factory-once", recorder.clone(), Faults::default()),
        panics_left: Arc::new(AtomicU32::new(1)),
    };
    let built = worker(
        "factory-once",
        model,
        Arc::new(InMemoryLeaseTable::new()),
        factory,
    )
    .failure_policy(quick_policy(|backoff| FailurePolicy::RetryForever {
        backoff,
    }))
    .build()
    .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    recorder
        .wait_until(LIMIT, |r| r.distinct() == produced.len())
        .await;
    assert_eq!(
        metric(
            names::PROCESSOR_FAILURES,
            "factory-once",
            Some(("call", "create"))
        ),
        1.0
    );
    assert_eq!(handle.status().held_leases.len(), 1);
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_factory_that_always_panics_stops_the_shard_by_policy_and_says_so() {
    let model = model(1);
    produce(&model, STREAM, 5, 50, 0);
    let recorder = Recorder::new();
    let factory = PanickingFactory {
        inner: RecordingProcessor::factory("factory-always", recorder.clone(), Faults::default()),
        panics_left: Arc::new(AtomicU32::new(u32::MAX)),
    };
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let built = worker("factory-always", model, table.clone(), factory)
        .failure_policy(quick_policy(|backoff| FailurePolicy::StopShard {
            max_attempts: 3,
            backoff,
        }))
        .build()
        .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    let shard = "shardId-000000000000";
    within(LIMIT, "the shard to stop", async {
        while !handle
            .status()
            .shards
            .iter()
            .any(|s| s.shard_id == shard && s.state == ShardState::Stopped)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        recorder.seen().is_empty(),
        "nothing processed past the failure"
    );
    assert_eq!(
        metric(
            names::PROCESSOR_FAILURES,
            "factory-always",
            Some(("call", "create"))
        ),
        3.0
    );
    // Not a silent stall: the lease stays here (nobody processes past it), health says why.
    let lease = table.get(shard).await.unwrap().unwrap();
    assert_eq!(lease.owner.as_deref(), Some("factory-always"));
    let health = handle.health();
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(
        health
            .reasons
            .iter()
            .any(|r| r.contains("stopped by the failure policy")),
        "{health:?}"
    );
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
}

/// A processor whose `initialize` fails a number of times first.
struct FailingInit {
    inner: RecordingProcessor,
    failures_left: Arc<AtomicU32>,
}

impl RecordProcessor for FailingInit {
    type Error = BoxError;

    async fn initialize(&mut self, input: InitializationInput) -> Result<(), BoxError> {
        if self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("initialize failed (injected)".into());
        }
        self.inner.initialize(input).await
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.inner.process_records(input, checkpointer).await
    }
}

fn failing_init(
    name: &str,
    recorder: &Arc<Recorder>,
    failures: u32,
) -> impl ProcessorFactory<Processor = FailingInit> {
    let inner = RecordingProcessor::factory(name, recorder.clone(), Faults::default());
    let failures_left = Arc::new(AtomicU32::new(failures));
    move |shard: &ShardInfo| FailingInit {
        inner: inner.create(shard),
        failures_left: failures_left.clone(),
    }
}

#[tokio::test(start_paused = true)]
async fn initialize_failing_fewer_times_than_the_policy_allows_is_retried() {
    let model = model(1);
    let produced = produce(&model, STREAM, 5, 50, 0);
    let recorder = Recorder::new();
    let built = worker(
        "init-retried",
        model,
        Arc::new(InMemoryLeaseTable::new()),
        failing_init("init-retried", &recorder, 3),
    )
    .failure_policy(quick_policy(|backoff| FailurePolicy::StopShard {
        max_attempts: 4,
        backoff,
    }))
    .build()
    .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    recorder
        .wait_until(LIMIT, |r| r.distinct() == produced.len())
        .await;
    assert_eq!(
        metric(
            names::PROCESSOR_FAILURES,
            "init-retried",
            Some(("call", "initialize"))
        ),
        3.0
    );
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn initialize_failing_more_times_than_the_policy_allows_stops_the_shard() {
    let model = model(1);
    produce(&model, STREAM, 5, 50, 0);
    let recorder = Recorder::new();
    let built = worker(
        "init-stopped",
        model,
        Arc::new(InMemoryLeaseTable::new()),
        failing_init("init-stopped", &recorder, 10),
    )
    .failure_policy(quick_policy(|backoff| FailurePolicy::StopShard {
        max_attempts: 4,
        backoff,
    }))
    .build()
    .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    within(LIMIT, "the shard to stop", async {
        while handle
            .status()
            .shards
            .iter()
            .all(|s| s.state != ShardState::Stopped)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        metric(
            names::PROCESSOR_FAILURES,
            "init-stopped",
            Some(("call", "initialize"))
        ),
        4.0,
        "exactly the policy's attempts, not forever"
    );
    assert!(recorder.seen().is_empty());
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
}

/// A lease table whose first `get` of `key` panics: the consumer task reading it (a child
/// checking its parent) dies.
fn panic_once(key: String) -> Arc<HookedTable<impl TableHooks>> {
    let armed = std::sync::atomic::AtomicBool::new(true);
    Arc::new(HookedTable::new(
        Arc::new(InMemoryLeaseTable::new()),
        table_fn(move |call| {
            if matches!(call, TableCall::Get(k) if *k == key) && armed.swap(false, Ordering::SeqCst)
            {
                panic!("lease store bug (injected)");
            }
            Before::Proceed
        }),
    ))
}

#[tokio::test(start_paused = true)]
async fn a_consumer_task_that_dies_releases_its_lease_and_the_shard_is_taken_again() {
    let model = model(1);
    let parent = model.shards(STREAM).unwrap().remove(0);
    let mut produced = produce(&model, STREAM, 5, 50, 0);
    let mid = parent.hash_key_range.start / 2 + parent.hash_key_range.end / 2;
    model
        .split_shard(STREAM, &parent.shard_id, &mid.to_string())
        .unwrap();
    produced.extend(produce(&model, STREAM, 5, 50, 50));
    let table = panic_once(parent.shard_id.clone());
    let recorder = Recorder::new();
    let built = worker(
        "task-death",
        model,
        table,
        RecordingProcessor::factory("task-death", recorder.clone(), Faults::default()),
    )
    .build()
    .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    recorder
        .wait_until(LIMIT, |r| r.distinct() == produced.len())
        .await;
    assert_eq!(metric(names::SHARD_TASK_FAILURES, "task-death", None), 1.0);
    // The parent ended: status no longer lists it; both children are processed here.
    let status = handle.status();
    assert!(
        status.shards.iter().all(|s| s.shard_id != parent.shard_id),
        "{status:?}"
    );
    assert_eq!(status.held_leases.len(), 2, "{status:?}");
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn health_is_ready_once_every_shard_delivered_and_stopped_after_shutdown() {
    let model = model(2);
    // One shard has records, the other is idle: idle and caught up counts as ready.
    model
        .put_record(STREAM, "k", Bytes::from_static(b"one"), Some("0"))
        .unwrap();
    let recorder = Recorder::new();
    let built = worker(
        "health",
        model,
        Arc::new(InMemoryLeaseTable::new()),
        RecordingProcessor::factory("health", recorder.clone(), Faults::default()),
    )
    .build()
    .unwrap();
    let handle = built.handle();
    let before = handle.health();
    assert_eq!(before.status, HealthStatus::Starting);
    let running = tokio::spawn(built.run());
    within(LIMIT, "ready", async {
        while !handle.health().is_ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(recorder.seen().len(), 1);
    assert_eq!(handle.status().held_leases.len(), 2);
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
    assert_eq!(handle.health().status, HealthStatus::Stopped);
    assert!(handle.wait().await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn metrics_count_records_batches_kpl_reads_leases_and_checkpoints() {
    let model = model(2);
    let mut produced = produce(&model, STREAM, 10, 100, 0);
    // One KPL aggregate of 5 user records on top.
    let mut aggregator = Aggregator::default();
    for i in 0..5 {
        assert!(
            aggregator
                .try_add("agg-key", None, format!("agg:{i}"))
                .unwrap()
                .is_none()
        );
    }
    let aggregate = aggregator.flush().unwrap();
    model
        .put_record(
            STREAM,
            &aggregate.partition_key,
            aggregate.data.clone(),
            None,
        )
        .unwrap();
    produced.extend((0..5).map(|i| ("agg-key".to_owned(), Bytes::from(format!("agg:{i}")))));
    let recorder = Recorder::new();
    let built = worker(
        "metrics",
        model,
        Arc::new(InMemoryLeaseTable::new()),
        RecordingProcessor::factory("metrics", recorder.clone(), Faults::default()),
    )
    .build()
    .unwrap();
    let handle = built.handle();
    let running = tokio::spawn(built.run());
    recorder
        .wait_until(LIMIT, |r| r.distinct() == produced.len())
        .await;
    // The next scan publishes the lease gauges.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let m = |name| metric(name, "metrics", None);
    assert_eq!(m(names::RECORDS_PROCESSED), produced.len() as f64);
    assert_eq!(
        m(names::RECORDS_FETCHED),
        101.0,
        "100 plain records and one aggregate"
    );
    assert_eq!(m(names::KPL_AGGREGATES), 1.0);
    assert_eq!(m(names::KPL_USER_RECORDS), 5.0);
    assert!(
        m(names::BATCHES_PROCESSED) >= 2.0,
        "one batch per shard at least"
    );
    assert_eq!(m(names::PROCESS_DURATION), m(names::BATCHES_PROCESSED));
    assert!(m(names::GET_RECORDS_CALLS) >= 2.0);
    assert_eq!(m(names::LEASES_HELD), 2.0);
    assert_eq!(m(names::LEASES_ASSIGNABLE), 2.0);
    assert_eq!(m(names::LEASES_TAKEN), 2.0);
    assert_eq!(m(names::LIVE_WORKERS), 1.0);
    assert!(
        metric(
            names::LEASE_TABLE_CALLS,
            "metrics",
            Some(("operation", "list"))
        ) >= 1.0,
        "the scans"
    );
    assert_eq!(m(names::BEHIND_LATEST), 0.0, "caught up");
    handle.shutdown();
    within(LIMIT, "shutdown", running).await.unwrap().unwrap();
    // The final checkpoint of each shard at shutdown.
    assert!(m(names::CHECKPOINTS) >= 2.0);
    assert_eq!(m(names::CHECKPOINT_FAILURES), 0.0);
    assert_eq!(
        m(names::LEASES_HELD),
        0.0,
        "nothing held after the shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn the_application_name_comes_from_the_lease_table() {
    #[derive(Debug)]
    struct Named(InMemoryLeaseTable);
    #[async_trait]
    impl LeaseTable for Named {
        async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
            self.0.create_if_absent(lease).await
        }
        async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
            self.0.list().await
        }
        async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
            self.0.get(key).await
        }
        async fn update(
            &self,
            key: &str,
            expect: &Expectation,
            update: &LeaseUpdate,
        ) -> Result<Lease, LeaseError> {
            self.0.update(key, expect, update).await
        }
        async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
            self.0.delete(key, expect).await
        }
        fn application(&self) -> Option<&str> {
            Some("billing")
        }
    }
    let factory = || RecordingProcessor::factory("w", Recorder::new(), Faults::default());
    let table: Arc<dyn LeaseTable> = Arc::new(Named(InMemoryLeaseTable::new()));
    let built = Worker::builder(factory())
        .stream(STREAM)
        .backend(model(1))
        .lease_table(table.clone())
        .build()
        .unwrap();
    assert_eq!(built.config().application_name, "billing");
    let error = Worker::builder(factory())
        .application_name("payments")
        .stream(STREAM)
        .backend(model(1))
        .lease_table(table)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("application_name"), "{error}");
    assert!(error.to_string().contains("\"billing\""), "{error}");
}

#[tokio::test(start_paused = true)]
async fn fan_out_on_a_backend_without_it_is_a_configuration_error() {
    // A wrapper that does not pass fan-out on: refused when the worker is built, not retried
    // forever while it runs.
    let backend: Arc<dyn StreamBackend> =
        Arc::new(HookedBackend::new(model(1), backend_fn(|_| Ok(()))).without_fan_out());
    let error = worker(
        "no-fan-out",
        backend,
        Arc::new(InMemoryLeaseTable::new()),
        RecordingProcessor::factory("no-fan-out", Recorder::new(), Faults::default()),
    )
    .retrieval(kcl_core::retrieval::Retrieval::fan_out())
    .build()
    .unwrap_err();
    assert!(
        matches!(
            &error,
            kcl_core::worker::ConfigError::Invalid {
                field: "retrieval",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("enhanced fan-out"), "{error}");
    // The model itself offers it.
    assert!(
        worker(
            "fan-out",
            model(1),
            Arc::new(InMemoryLeaseTable::new()),
            RecordingProcessor::factory("fan-out", Recorder::new(), Faults::default()),
        )
        .retrieval(kcl_core::retrieval::Retrieval::fan_out())
        .build()
        .is_ok()
    );
}
