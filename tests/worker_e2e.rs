//! The worker end to end on the in-memory model, under tokio's paused clock.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::lease::{InMemoryLeaseTable, LeaseTable};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::ProcessorFactory;
use kcl_core::processor::{BoxError, DeadLetterBatch, DeadLetterHandler, FailurePolicy};
use kcl_core::record::ExtendedSequenceNumber;
use kcl_core::retry::RetryBackoff;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{CheckpointCadence, ConfigError, Worker, WorkerBuilder};
use support::{
    Call, Faults, Recorder, RecordingFactory, RecordingProcessor, Resharded, Running,
    assert_order_per_key, assert_parents_ended, counting_backend, produce, split_then_merge,
    start_worker,
};

const STREAM: &str = "orders";
const LONG: Duration = Duration::from_secs(600);

fn model(shards: u32) -> Arc<KinesisModel> {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, shards).unwrap();
    model
}

fn start(
    name: &str,
    model: &Arc<KinesisModel>,
    table: &Arc<dyn LeaseTable>,
    recorder: &Arc<Recorder>,
    faults: Faults,
    configure: impl FnOnce(WorkerBuilder<RecordingFactory>) -> WorkerBuilder<RecordingFactory>,
) -> Running {
    let factory = RecordingProcessor::factory(name, recorder.clone(), faults);
    start_with(name, model, table, factory, configure)
}

/// Starts a worker of `factory` on the model, reading from TRIM_HORIZON.
fn start_with<F: ProcessorFactory>(
    name: &str,
    model: &Arc<KinesisModel>,
    table: &Arc<dyn LeaseTable>,
    factory: F,
    configure: impl FnOnce(WorkerBuilder<F>) -> WorkerBuilder<F>,
) -> Running {
    start_worker(
        ("app", STREAM, name),
        model.clone(),
        table,
        factory,
        LONG,
        configure,
    )
}

fn table() -> Arc<dyn LeaseTable> {
    Arc::new(InMemoryLeaseTable::new())
}

#[tokio::test(start_paused = true)]
async fn every_record_is_processed_in_order_per_shard() {
    let model = model(4);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 50, 2_000, 0);
    let w = start("w1", &model, &table, &recorder, Faults::default(), |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 2_000).await;
    w.stop().await;
    let seen = recorder.seen();
    assert_eq!(seen.len(), 2_000, "no duplicates without failures");
    // In order per shard.
    let mut by_shard: std::collections::HashMap<&str, Vec<&ExtendedSequenceNumber>> =
        Default::default();
    for s in &seen {
        by_shard.entry(&s.shard_id).or_default().push(&s.position);
    }
    assert_eq!(by_shard.len(), 4);
    for (shard, positions) in by_shard {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{shard} out of order"
        );
    }
    assert_order_per_key(&recorder, &produced);
    // Graceful shutdown called shutdown_requested and checkpointed the last record.
    for lease in table.list().await.unwrap() {
        assert_eq!(lease.owner, None, "released");
        assert!(matches!(
            lease.checkpoint,
            ExtendedSequenceNumber::Sequence { .. }
        ));
        assert_eq!(recorder.calls(&lease.key).last(), Some(&Call::Shutdown));
    }
}

#[tokio::test(start_paused = true)]
async fn restart_resumes_after_the_checkpoint() {
    let model = model(2);
    let table = table();
    let recorder = Recorder::new();
    produce(&model, STREAM, 10, 300, 0);
    let w = start("w1", &model, &table, &recorder, Faults::default(), |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 300).await;
    w.stop().await;
    produce(&model, STREAM, 10, 200, 300);
    let w = start("w2", &model, &table, &recorder, Faults::default(), |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 500).await;
    w.stop().await;
    let seen = recorder.seen();
    assert_eq!(seen.len(), 500, "a graceful restart repeats nothing");
    assert_eq!(seen.iter().filter(|s| s.worker == "w2").count(), 200);
}

#[tokio::test(start_paused = true)]
async fn after_an_immediate_stop_only_records_after_the_checkpoint_repeat() {
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    produce(&model, STREAM, 5, 100, 0);
    // Checkpoint every 40 records: after 100 records the checkpoint is at record 80.
    let cadence = CheckpointCadence {
        every_records: Some(40),
        every_interval: None,
    };
    let polling = kcl_core::retrieval::PollingConfig {
        max_records_per_call: 20,
        ..Default::default()
    };
    let w = start("w1", &model, &table, &recorder, Faults::default(), |b| {
        b.checkpoint_cadence(cadence).polling(polling.clone())
    });
    recorder.wait_until(LONG, |r| r.distinct() >= 100).await;
    w.kill().await;
    let w = start("w2", &model, &table, &recorder, Faults::default(), |b| {
        b.checkpoint_cadence(cadence)
    });
    recorder
        .wait_until(LONG, |r| r.seen().iter().any(|s| s.worker == "w2"))
        .await;
    w.stop().await;
    let again: Vec<_> = recorder
        .seen()
        .into_iter()
        .filter(|s| s.worker == "w2")
        .collect();
    assert_eq!(
        again.len(),
        20,
        "exactly the records after the last checkpoint repeat"
    );
}

#[tokio::test(start_paused = true)]
async fn latest_is_the_default_and_skips_old_records() {
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    produce(&model, STREAM, 3, 30, 0);
    let w = start("w1", &model, &table, &recorder, Faults::default(), |b| {
        b.initial_position(InitialPosition::default())
    });
    // Wait until the lease exists and the processor is initialized, then produce.
    recorder
        .wait_until(LONG, |r| !r.calls("shardId-000000000000").is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // let the LATEST iterator be taken
    let produced = produce(&model, STREAM, 3, 10, 30);
    recorder.wait_until(LONG, |r| r.distinct() >= 10).await;
    w.stop().await;
    let seen = recorder.seen();
    assert_eq!(seen.len(), 10);
    assert_eq!(seen[0].data, produced[0].1);
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_children_start_after_their_parents() {
    let model = model(2);
    let table = table();
    let recorder = Recorder::new();
    let mut produced = produce(&model, STREAM, 40, 400, 0);
    let w = start("w1", &model, &table, &recorder, Faults::default(), |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 200).await;
    // Split shard 0 in the middle of its range, then merge shard 1 with the upper child.
    let shards = split_then_merge(&model, STREAM, &mut produced);
    recorder.wait_until(LONG, |r| r.distinct() >= 1_200).await;
    w.stop().await;
    assert_order_per_key(&recorder, &produced);
    // Parents ended (SHARD_END recorded by the framework), children processed.
    assert_parents_ended(table.as_ref(), &shards).await;
    for parent in shards.parents() {
        let lease = table.get(parent).await.unwrap().unwrap();
        assert!(recorder.calls(parent).contains(&Call::ShardEnded));
        assert!(!lease.child_shard_ids.is_empty());
    }
    let Resharded {
        split,
        other,
        high,
        merged,
    } = &shards;
    // Every record of a parent was processed before the first record of its child.
    let seen = recorder.seen();
    let first = |shard: &str| seen.iter().position(|s| s.shard_id == shard);
    let last = |shard: &str| seen.iter().rposition(|s| s.shard_id == shard);
    let merged_first = first(merged).expect("merged child processed");
    assert!(last(high).unwrap() < merged_first);
    assert!(last(other).unwrap() < merged_first);
    assert!(last(split).unwrap() < first(high).unwrap());
}

#[tokio::test(start_paused = true)]
async fn a_failing_batch_is_retried_not_skipped() {
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 5, 50, 0);
    let faults = Faults {
        fail_times: Arc::new(AtomicU32::new(3)),
        ..Faults::default()
    };
    let w = start("w1", &model, &table, &recorder, faults, |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 50).await;
    w.stop().await;
    assert_eq!(recorder.seen().len(), 50);
    assert_order_per_key(&recorder, &produced);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_processor_is_caught_and_retried() {
    let model = model(2);
    let table = table();
    let recorder = Recorder::new();
    produce(&model, STREAM, 10, 100, 0);
    let faults = Faults {
        fail_times: Arc::new(AtomicU32::new(2)),
        panic: true,
        ..Faults::default()
    };
    let w = start("w1", &model, &table, &recorder, faults, |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 100).await;
    w.stop().await;
    assert_eq!(recorder.seen().len(), 100);
}

#[derive(Debug, Default)]
struct Dlq(std::sync::Mutex<Vec<Bytes>>);

#[async_trait::async_trait]
impl DeadLetterHandler for Dlq {
    async fn handle(&self, batch: DeadLetterBatch<'_>) -> Result<(), BoxError> {
        self.0
            .lock()
            .unwrap()
            .extend(batch.records.iter().map(|r| r.data().clone()));
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn dead_letter_policy_hands_over_the_batch_and_continues() {
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 1, 30, 0);
    let poison = produced[10].1.clone();
    let dlq = Arc::new(Dlq::default());
    let policy = FailurePolicy::DeadLetter {
        max_attempts: 3,
        backoff: RetryBackoff::default(),
        handler: dlq.clone(),
    };
    let polling = kcl_core::retrieval::PollingConfig {
        max_records_per_call: 5,
        ..Default::default()
    };
    let faults = Faults {
        poison: Some(poison.clone()),
        ..Faults::default()
    };
    let w = start("w1", &model, &table, &recorder, faults, |b| {
        b.failure_policy(policy).polling(polling)
    });
    recorder.wait_until(LONG, |r| r.distinct() >= 25).await;
    w.stop().await;
    let dead = dlq.0.lock().unwrap().clone();
    assert_eq!(dead.len(), 5, "the whole failed batch went to the handler");
    assert!(dead.contains(&poison));
    // Nothing lost: processed + dead-lettered = produced.
    assert_eq!(recorder.seen().len() + dead.len(), 30);
}

#[tokio::test(start_paused = true)]
async fn stop_shard_policy_halts_the_shard_and_keeps_the_lease() {
    let model = model(2);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 20, 200, 0);
    let poison = produced[0].1.clone();
    let poisoned_shard = model
        .shards(STREAM)
        .unwrap()
        .into_iter()
        .find(|s| {
            s.hash_key_range
                .contains(kcl_core::record::partition_key_hash(&produced[0].0))
        })
        .unwrap()
        .shard_id;
    let policy = FailurePolicy::StopShard {
        max_attempts: 2,
        backoff: RetryBackoff::default(),
    };
    let faults = Faults {
        poison: Some(poison),
        ..Faults::default()
    };
    let w = start("w1", &model, &table, &recorder, faults, |b| {
        b.failure_policy(policy)
    });
    let healthy = {
        let poisoned_shard = poisoned_shard.clone();
        move |r: &Recorder| {
            r.seen()
                .iter()
                .filter(|s| s.shard_id != poisoned_shard)
                .count()
        }
    };
    let expected_healthy = 200
        - produced
            .iter()
            .filter(|(k, _)| {
                model.shards(STREAM).unwrap().iter().any(|s| {
                    s.shard_id == poisoned_shard
                        && s.hash_key_range
                            .contains(kcl_core::record::partition_key_hash(k))
                })
            })
            .count();
    recorder
        .wait_until(LONG, |r| healthy(r) >= expected_healthy)
        .await;
    // The poisoned shard gives up after its second attempt (backoff in virtual time).
    let state_of = |status: &kcl_core::worker::WorkerStatus| {
        status
            .shards
            .iter()
            .find(|s| s.shard_id == poisoned_shard)
            .map(|s| s.state)
    };
    for _ in 0..600 {
        if state_of(&w.handle.status()) == Some(kcl_core::worker::ShardState::Stopped) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = w.handle.status();
    assert_eq!(
        state_of(&status),
        Some(kcl_core::worker::ShardState::Stopped)
    );
    assert!(status.held_leases.contains(&poisoned_shard), "lease kept");
    assert!(recorder.seen().iter().all(|s| s.shard_id != poisoned_shard));
    w.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_processor_outlives_its_iterator_without_losing_records() {
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 3, 60, 0);
    // Small batches and a small prefetch, so the retriever waits long enough for its iterator to
    // expire while the processor is slow.
    let polling = kcl_core::retrieval::PollingConfig {
        max_records_per_call: 10,
        max_prefetch_records: 10,
        ..Default::default()
    };
    let factory = {
        let recorder = recorder.clone();
        move |shard: &kcl_core::processor::ShardInfo| SlowProcessor {
            inner: RecordingProcessor::factory("w1", recorder.clone(), Faults::default())
                .create(shard),
        }
    };
    let counting = counting_backend(model.clone());
    let w = start_with("w1", &model, &table, factory, |b| {
        b.backend(counting.clone()).polling(polling)
    });
    recorder
        .wait_until(Duration::from_secs(7200), |r| r.distinct() >= 60)
        .await;
    w.stop().await;
    assert_eq!(recorder.seen().len(), 60);
    assert_order_per_key(&recorder, &produced);
    assert!(
        counting
            .hooks()
            .expired_iterators
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "the scenario must actually expire an iterator"
    );
}

struct SlowProcessor {
    inner: RecordingProcessor,
}

impl kcl_core::processor::RecordProcessor for SlowProcessor {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: kcl_core::processor::ProcessRecordsInput<'_>,
        checkpointer: &mut kcl_core::checkpoint::Checkpointer,
    ) -> Result<(), BoxError> {
        // Six minutes per batch: longer than an iterator lives.
        tokio::time::sleep(Duration::from_secs(360)).await;
        self.inner.process_records(input, checkpointer).await
    }
}

#[tokio::test(start_paused = true)]
async fn throttled_reads_back_off_and_lose_nothing() {
    // Two applications read the same stream: together they exceed 5 GetRecords calls/s/shard.
    let model = model(1);
    let produced = produce(&model, STREAM, 10, 500, 0);
    let fast = kcl_core::retrieval::PollingConfig {
        max_records_per_call: 10,
        min_time_between_calls: Duration::from_millis(50),
        idle_time_between_reads: Duration::from_millis(50),
        ..Default::default()
    };
    let mut runs = Vec::new();
    let mut recorders = Vec::new();
    let counting = counting_backend(model.clone());
    for app in ["a", "b"] {
        let recorder = Recorder::new();
        let table = table();
        let w = start(app, &model, &table, &recorder, Faults::default(), |b| {
            b.polling(fast.clone()).backend(counting.clone())
        });
        runs.push(w);
        recorders.push(recorder);
    }
    for r in &recorders {
        r.wait_until(LONG, |r| r.distinct() >= 500).await;
    }
    for w in runs {
        w.stop().await;
    }
    for r in &recorders {
        assert_eq!(r.seen().len(), 500);
        assert_order_per_key(r, &produced);
    }
    assert!(
        counting
            .hooks()
            .throttled
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0,
        "the scenario must actually be throttled"
    );
}

#[tokio::test]
async fn invalid_configuration_names_the_field() {
    let model = model(1);
    let recorder = Recorder::new();
    let factory = RecordingProcessor::factory("w", recorder, Faults::default());
    let err = Worker::builder(factory)
        .application_name("app")
        .stream("bad stream!")
        .backend(model.clone())
        .lease_table(table())
        .build()
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Invalid {
                field: "stream",
                ..
            }
        ),
        "{err}"
    );

    let recorder = Recorder::new();
    let factory = RecordingProcessor::factory("w", recorder, Faults::default());
    let err = Worker::builder(factory)
        .application_name("app")
        .stream("s")
        .backend(model.clone())
        .lease_table(table())
        .checkpoint_cadence(CheckpointCadence {
            every_records: Some(0),
            every_interval: None,
        })
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("checkpoint_cadence.every_records"),
        "{err}"
    );

    let recorder = Recorder::new();
    let factory = RecordingProcessor::factory("w", recorder, Faults::default());
    let err = Worker::builder(factory)
        .application_name("app")
        .stream("s")
        .lease_table(table())
        .build()
        .unwrap_err();
    assert_eq!(err, ConfigError::Missing("backend"));
}

/// Checkpoints once, at the fourth user record of the first batch, then only records.
struct CheckpointAtFourth {
    inner: RecordingProcessor,
    done: bool,
}

impl kcl_core::processor::RecordProcessor for CheckpointAtFourth {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: kcl_core::processor::ProcessRecordsInput<'_>,
        checkpointer: &mut kcl_core::checkpoint::Checkpointer,
    ) -> Result<(), BoxError> {
        if !self.done {
            checkpointer.checkpoint_record(&input.records[3]).await?;
            self.done = true;
        }
        self.inner.process_records(input, checkpointer).await
    }
}

#[tokio::test(start_paused = true)]
async fn restart_resumes_inside_a_kpl_aggregate() {
    use kcl_core::deaggregation::Aggregator;
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    // Two aggregates of 10 user records each.
    let mut aggregator = Aggregator::default();
    let mut aggregates = Vec::new();
    for i in 0..20 {
        if let Some(full) = aggregator
            .try_add(&format!("k{i}"), None, Bytes::from(format!("r{i}")))
            .unwrap()
        {
            aggregates.push(full);
        }
        if i == 9 {
            aggregates.extend(aggregator.flush());
        }
    }
    aggregates.extend(aggregator.flush());
    assert_eq!(aggregates.len(), 2);
    for a in &aggregates {
        model
            .put_record(
                STREAM,
                &a.partition_key,
                a.data.clone(),
                a.explicit_hash_key.as_deref(),
            )
            .unwrap();
    }
    let run = |name: &'static str, recorder: Arc<Recorder>| {
        let factory = move |shard: &kcl_core::processor::ShardInfo| CheckpointAtFourth {
            inner: RecordingProcessor::factory(name, recorder.clone(), Faults::default())
                .create(shard),
            done: false,
        };
        start_with(name, &model, &table, factory, |b| {
            b.checkpoint_cadence(CheckpointCadence::manual())
        })
    };
    let w1 = run("w1", recorder.clone());
    recorder.wait_until(LONG, |r| r.distinct() >= 20).await;
    w1.kill().await;
    let first = recorder.seen()[0].position.clone();
    let ExtendedSequenceNumber::Sequence { sequence, .. } = &first else {
        panic!("not a real position")
    };
    // w2 starts at the checkpoint (sub-sequence 3): the next record is sub-sequence 4.
    let w2 = run("w2", recorder.clone());
    recorder
        .wait_until(LONG, |r| r.seen().iter().any(|s| s.worker == "w2"))
        .await;
    let again: Vec<_> = recorder
        .seen()
        .into_iter()
        .filter(|s| s.worker == "w2")
        .collect();
    assert_eq!(
        again[0].position,
        ExtendedSequenceNumber::Sequence {
            sequence: sequence.clone(),
            sub_sequence: 4
        },
        "resumes right after the checkpoint inside the aggregate"
    );
    assert!(again.iter().all(|s| s.position
        > ExtendedSequenceNumber::Sequence {
            sequence: sequence.clone(),
            sub_sequence: 3
        }));
    w2.kill().await;
}

#[tokio::test(start_paused = true)]
async fn a_dropped_worker_stops_renewing_so_its_leases_expire() {
    let model = model(1);
    let table = table();
    let recorder = Recorder::new();
    produce(&model, STREAM, 2, 10, 0);
    let w = start("w1", &model, &table, &recorder, Faults::default(), |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 10).await;
    // Crash: the run future is dropped without any shutdown.
    w.task.abort();
    let _ = w.task.await;
    let before = table.get("shardId-000000000000").await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = table.get("shardId-000000000000").await.unwrap().unwrap();
    assert_eq!(
        before.counter, after.counter,
        "nobody renews the lease of a dropped worker"
    );
    // So another worker takes over after the failover time.
    produce(&model, STREAM, 2, 10, 10);
    let w2 = start("w2", &model, &table, &recorder, Faults::default(), |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 20).await;
    w2.stop().await;
}
