//! The worker against kinesis-local through the real AWS SDK client, with faults injected around
//! that client (see `faults.rs` for how and why): throttling, 5xx answers, expired iterators,
//! dropped subscriptions and partial `PutRecords` failures. The worker must deliver every
//! record, once, in the order the stream holds them.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::aws::KinesisBackend;
use kcl_core::backend::{BackendError, FanOut};
use kcl_core::lease::{InMemoryLeaseTable, LeaseTable};
use kcl_core::model::{PutRecordsEntry, PutRecordsResultEntry};
use kcl_core::retrieval::{FanOutConfig, PollingConfig, Retrieval};
use kcl_core::retry::RetryBackoff;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::Worker;
use kcl_testkit::kinesis::{Kinesis, Target, TargetExt, server_backend, unique};
use support::faults::{FaultInjector, FaultPlan};
use support::{Faults, Recorder, RecordingProcessor};

const WAIT: Duration = Duration::from_secs(180);

async fn faulty(plan: FaultPlan) -> (Kinesis, FaultInjector) {
    let faults = FaultInjector::new(plan);
    let interceptor = faults.clone();
    let backend =
        server_backend(KinesisBackend::builder().customize(move |c| c.interceptor(interceptor)))
            .await;
    (Kinesis::Server(backend), faults)
}

/// Puts `count` records over `keys` keys; returns, per key, the payloads in stream order (by the
/// sequence numbers the writes got, retried entries included).
async fn produce(
    k: &Kinesis,
    stream: &str,
    keys: usize,
    count: usize,
    start: usize,
) -> Vec<(String, Bytes, PutRecordsResultEntry)> {
    let entries: Vec<(String, Bytes)> = (start..start + count)
        .map(|i| {
            let key = format!("key-{}", i % keys);
            let data = Bytes::from(format!("{key}:{:08}", i / keys));
            (key, data)
        })
        .collect();
    let results = k
        .put(
            stream,
            entries
                .iter()
                .map(|(key, data)| PutRecordsEntry::new(key.clone(), data.clone()))
                .collect(),
        )
        .await;
    entries
        .into_iter()
        .zip(results)
        .map(|((k, d), r)| (k, d, r))
        .collect()
}

fn expected_order(
    produced: &[(String, Bytes, PutRecordsResultEntry)],
) -> HashMap<String, Vec<Bytes>> {
    let mut by_key: HashMap<String, Vec<(kcl_core::record::SequenceNumber, Bytes)>> =
        HashMap::new();
    for (key, data, result) in produced {
        let seq = result
            .sequence_number()
            .expect("every record was written")
            .clone();
        by_key
            .entry(key.clone())
            .or_default()
            .push((seq, data.clone()));
    }
    by_key
        .into_iter()
        .map(|(key, mut v)| {
            v.sort_by(|a, b| a.0.cmp(&b.0));
            (key, v.into_iter().map(|(_, d)| d).collect())
        })
        .collect()
}

fn assert_exactly_once_in_order(
    recorder: &Recorder,
    produced: &[(String, Bytes, PutRecordsResultEntry)],
) {
    let seen = recorder.seen();
    assert_eq!(
        seen.len(),
        produced.len(),
        "every record once: no loss, no duplicate"
    );
    let mut got: HashMap<String, Vec<Bytes>> = HashMap::new();
    for s in seen {
        got.entry(s.partition_key).or_default().push(s.data);
    }
    assert_eq!(
        got,
        expected_order(produced),
        "per-key order is the stream's order"
    );
}

#[tokio::test]
#[ignore = "needs a Kinesis endpoint: run scripts/test.sh"]
async fn polling_recovers_from_throttling_server_errors_expired_iterators_and_partial_puts() {
    support::init_tracing();
    let (k, faults) = faulty(FaultPlan {
        throttle_get_records_every: 3,
        fail_get_records_every: 5,
        expire_get_records_every: 7,
        fail_get_shard_iterator_every: 4,
        drop_put_entry_every: 9,
        ..Default::default()
    })
    .await;
    let stream = unique("faults-poll");
    k.create_stream(&stream, 2)
        .await
        .expect("create the stream");
    let mut produced = produce(&k, &stream, 20, 300, 0).await;
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let polling = PollingConfig {
        idle_time_between_reads: Duration::from_millis(100),
        min_time_between_calls: Duration::from_millis(20),
        max_records_per_call: 50,
        error_backoff: RetryBackoff::new(Duration::from_millis(20), Duration::from_millis(300)),
        ..Default::default()
    };
    let worker = Worker::builder(RecordingProcessor::factory(
        "w1",
        recorder.clone(),
        Faults::default(),
    ))
    .application_name("faults-poll")
    .stream(&stream)
    .worker_id("w1")
    .backend(k.backend())
    .lease_table(table)
    .initial_position(InitialPosition::TrimHorizon)
    .polling(polling)
    .build()
    .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run());
    recorder.wait_until(WAIT, |r| r.distinct() >= 300).await;
    produced.extend(produce(&k, &stream, 20, 200, 300).await);
    recorder.wait_until(WAIT, |r| r.distinct() >= 500).await;
    handle.shutdown();
    task.await.unwrap().unwrap();
    assert_exactly_once_in_order(&recorder, &produced);
    let injected = &faults.injected;
    for (what, n) in [
        ("throttled", injected.throttled.load(Ordering::SeqCst)),
        ("5xx", injected.server_errors.load(Ordering::SeqCst)),
        ("expired", injected.expired.load(Ordering::SeqCst)),
        (
            "dropped put entries",
            injected.dropped_put_entries.load(Ordering::SeqCst),
        ),
    ] {
        assert!(n > 0, "the scenario must inject {what}");
    }
}

#[tokio::test]
#[ignore = "needs a Kinesis endpoint: run scripts/test.sh"]
async fn fan_out_recovers_from_dropped_subscriptions() {
    support::init_tracing();
    let (k, faults) = faulty(FaultPlan {
        cut_subscription_every: 1,
        cut_after_frames: 3,
        ..Default::default()
    })
    .await;
    let stream = unique("faults-efo");
    k.create_stream(&stream, 2)
        .await
        .expect("create the stream");
    let table: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let recorder = Recorder::new();
    let fanout = FanOutConfig::default().with_error_backoff(RetryBackoff::new(
        Duration::from_millis(50),
        Duration::from_secs(1),
    ));
    let worker = Worker::builder(RecordingProcessor::factory(
        "w1",
        recorder.clone(),
        Faults::default(),
    ))
    .application_name("faults-efo")
    .stream(&stream)
    .worker_id("w1")
    .backend(k.backend())
    .lease_table(table)
    .initial_position(InitialPosition::TrimHorizon)
    .retrieval(Retrieval::FanOut(fanout))
    .build()
    .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(worker.run());
    let mut produced = Vec::new();
    for round in 0..6 {
        produced.extend(produce(&k, &stream, 10, 50, round * 50).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    recorder.wait_until(WAIT, |r| r.distinct() >= 300).await;
    handle.shutdown();
    task.await.unwrap().unwrap();
    assert_exactly_once_in_order(&recorder, &produced);
    let cut = faults.injected.cut_subscriptions.load(Ordering::SeqCst);
    assert!(cut >= 4, "subscriptions must have been dropped ({cut})");
}

#[tokio::test]
#[ignore = "needs a Kinesis endpoint: run scripts/test.sh"]
async fn the_cached_stream_arn_is_dropped_on_resource_not_found() {
    support::init_tracing();
    let (k, faults) = faulty(FaultPlan::default()).await;
    let Kinesis::Server(backend) = &k else {
        panic!("a server backend")
    };
    let stream = unique("arn-cache");
    k.create_stream(&stream, 1)
        .await
        .expect("create the stream");
    let described = || faults.attempts("DescribeStreamSummary");
    // Creating waited for ACTIVE with DescribeStreamSummary: the stream's ARN is cached.
    let before = described();
    backend
        .register_stream_consumer(&stream, "c")
        .await
        .unwrap();
    backend
        .describe_stream_consumer(&stream, "c")
        .await
        .unwrap();
    assert_eq!(described(), before, "consumer calls use the cached ARN");
    // ResourceNotFound (here a consumer that does not exist; it could be the stream, deleted
    // and created again by someone else): the next call describes the stream again.
    assert!(matches!(
        backend.describe_stream_consumer(&stream, "missing").await,
        Err(BackendError::ResourceNotFound(_))
    ));
    backend
        .describe_stream_consumer(&stream, "c")
        .await
        .unwrap();
    assert_eq!(described(), before + 1, "the ARN was described again");
    backend
        .describe_stream_consumer(&stream, "c")
        .await
        .unwrap();
    assert_eq!(described(), before + 1, "and cached again");
}

/// A worker whose credentials lack `operation` on a stream with records.
async fn denied(operation: &'static str) -> kcl_core::worker::WorkerError {
    support::init_tracing();
    let (k, _faults) = faulty(FaultPlan {
        deny: vec![operation],
        ..Default::default()
    })
    .await;
    let stream = unique("faults-denied");
    k.create_stream(&stream, 1)
        .await
        .expect("create the stream");
    produce(&k, &stream, 5, 20, 0).await;
    let worker = Worker::builder(RecordingProcessor::factory(
        "w1",
        Recorder::new(),
        Faults::default(),
    ))
    .application_name("faults-denied")
    .stream(&stream)
    .worker_id("w1")
    .backend(k.backend())
    .lease_table(Arc::new(InMemoryLeaseTable::new()))
    .initial_position(InitialPosition::TrimHorizon)
    .permanent_error_timeout(Duration::from_secs(2))
    .build()
    .unwrap();
    let handle = worker.handle();
    let error = tokio::time::timeout(WAIT, worker.run())
        .await
        .expect("a permanent failure ends run")
        .unwrap_err();
    assert_eq!(
        handle.health().status,
        kcl_core::worker::HealthStatus::Failed
    );
    error
}

#[tokio::test]
#[ignore = "needs a Kinesis endpoint: run scripts/test.sh"]
async fn access_denied_for_get_records_ends_run_naming_the_shard_and_the_action() {
    let error = denied("GetRecords").await;
    assert!(
        matches!(
            &error,
            kcl_core::worker::WorkerError::AccessDenied { shard: Some(_), .. }
        ),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("GetRecords: AccessDeniedException"), "{text}");
    assert!(text.contains("shardId-000000000000"), "{text}");
}

#[tokio::test]
#[ignore = "needs a Kinesis endpoint: run scripts/test.sh"]
async fn access_denied_for_list_shards_ends_run_naming_the_action() {
    let error = denied("ListShards").await;
    assert!(
        matches!(
            &error,
            kcl_core::worker::WorkerError::AccessDenied { shard: None, .. }
        ),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("ListShards: AccessDeniedException"),
        "{error}"
    );
}
