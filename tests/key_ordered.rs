//! Processing beyond one record at a time, on the in-memory model under tokio's paused clock:
//! key-ordered concurrency within a shard (order per key under random latencies across a split
//! and a merge, what a crash and a graceful handoff re-deliver), partial batch failures, poison
//! records (bisection, the dead-letter handler, record age) and what happens to the rest of a
//! poisoned key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::{InMemoryLeaseTable, LeaseTable};
use kcl_core::metrics::names;
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{
    BoxError, ConcurrentProcessor, DeadLetterBatch, DeadLetterHandler, DeadLetterReason,
    ExpiredRecords, FailurePolicy, InitializationInput, PartialFailure, ProcessRecordsInput,
    RecordProcessor, ShardInfo,
};
use kcl_core::record::{ExtendedSequenceNumber, Record};
use kcl_core::retrieval::PollingConfig;
use kcl_core::retry::RetryBackoff;
use kcl_core::worker::{CheckpointCadence, ConfigError, KeyOrdered, Worker, WorkerBuilder};
use support::{Running, produce, split_then_merge, start_worker, within};
use tokio::sync::Notify;

const STREAM: &str = "orders";
const LONG: Duration = Duration::from_secs(3_600);

fn model(shards: u32) -> Arc<KinesisModel> {
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, shards).unwrap();
    model
}

fn table() -> Arc<dyn LeaseTable> {
    Arc::new(InMemoryLeaseTable::new())
}

/// What happened to one record in one processor call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Handed to the processor in a batch.
    Started,
    /// The processor finished it (its latency elapsed).
    Processed,
    /// Its batch returned `Ok`.
    BatchDone,
}

#[derive(Clone, Debug)]
struct Entry {
    /// Global order of entries.
    seq: u64,
    worker: String,
    shard: String,
    kind: Kind,
    key: String,
    payload: Bytes,
    position: ExtendedSequenceNumber,
    /// Whether the call was `process_batch` (key-ordered) rather than `process_records`.
    concurrent: bool,
}

/// Everything the processors of a test did.
#[derive(Debug, Default)]
struct Log {
    entries: Mutex<Vec<Entry>>,
    seq: AtomicU64,
    /// Batches in flight per shard now, and the most seen.
    active: Mutex<HashMap<String, (usize, usize)>>,
    /// Pending checkpoints seen by `initialize`, per worker and shard.
    initialized_with_state: Mutex<Vec<(String, String, bool)>>,
    changed: Notify,
}

impl Log {
    fn push(&self, processor: &Proc, kind: Kind, records: &[Record], concurrent: bool) {
        let mut entries = self.entries.lock().unwrap();
        for r in records {
            entries.push(Entry {
                seq: self.seq.fetch_add(1, Ordering::SeqCst),
                worker: processor.worker.clone(),
                shard: processor.shard.clone(),
                kind,
                key: r.partition_key().to_owned(),
                payload: r.data().clone(),
                position: r.position(),
                concurrent,
            });
        }
        drop(entries);
        self.changed.notify_waiters();
    }

    fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap().clone()
    }

    fn of(&self, kind: Kind) -> Vec<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    /// Distinct payloads processed.
    fn processed(&self) -> HashSet<Bytes> {
        self.of(Kind::Processed)
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }

    fn max_active(&self, shard: &str) -> usize {
        self.active
            .lock()
            .unwrap()
            .get(shard)
            .map_or(0, |(_, max)| *max)
    }

    async fn wait_until(&self, limit: Duration, done: impl Fn(&Log) -> bool) {
        within(limit, "the condition", async {
            loop {
                let notified = self.changed.notified();
                if done(self) {
                    return;
                }
                notified.await;
            }
        })
        .await;
    }
}

/// How a [`Proc`] behaves.
#[derive(Clone)]
struct Behaviour {
    /// How long each record takes.
    latency: Arc<dyn Fn(&Record) -> Duration + Send + Sync>,
    /// Batches holding this payload fail, before processing anything.
    poison: Option<Bytes>,
    /// The first batch holding this payload processes the records before it and reports a
    /// partial failure from it.
    partial: Option<(Bytes, Arc<AtomicBool>)>,
    /// `ordering_key` panics for payloads ending in 7.
    panicky_key: bool,
}

impl Behaviour {
    fn latency(f: impl Fn(&Record) -> Duration + Send + Sync + 'static) -> Self {
        Self {
            latency: Arc::new(f),
            poison: None,
            partial: None,
            panicky_key: false,
        }
    }
}

/// A random latency from `range` ms, the same for a record on every delivery.
fn random_ms(range: std::ops::Range<u64>) -> impl Fn(&Record) -> Duration + Send + Sync {
    move |r: &Record| {
        let seed = r.data().iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        Duration::from_millis(fastrand::Rng::with_seed(seed).u64(range.clone()))
    }
}

struct Proc {
    worker: String,
    shard: String,
    log: Arc<Log>,
    behaviour: Behaviour,
}

impl Proc {
    async fn run(&self, records: &[Record], concurrent: bool) -> Result<(), BoxError> {
        {
            let mut active = self.log.active.lock().unwrap();
            let (now, max) = active.entry(self.shard.clone()).or_default();
            *now += 1;
            *max = (*max).max(*now);
        }
        let result = self.batch(records, concurrent).await;
        if let Some((now, _)) = self.log.active.lock().unwrap().get_mut(&self.shard) {
            *now -= 1;
        }
        result
    }

    async fn batch(&self, records: &[Record], concurrent: bool) -> Result<(), BoxError> {
        self.log.push(self, Kind::Started, records, concurrent);
        if let Some(poison) = &self.behaviour.poison
            && records.iter().any(|r| r.data() == poison)
        {
            return Err("poison record in the batch".into());
        }
        let mut fail_at = None;
        if let Some((payload, armed)) = &self.behaviour.partial
            && let Some(i) = records.iter().position(|r| r.data() == payload)
            && armed.swap(false, Ordering::SeqCst)
        {
            fail_at = Some(i);
        }
        for (i, r) in records.iter().enumerate() {
            if fail_at == Some(i) {
                return Err(PartialFailure::new(i, "downstream refused the record").into());
            }
            tokio::time::sleep((self.behaviour.latency)(r)).await;
            self.log
                .push(self, Kind::Processed, std::slice::from_ref(r), concurrent);
        }
        self.log.push(self, Kind::BatchDone, records, concurrent);
        Ok(())
    }
}

impl RecordProcessor for Proc {
    type Error = BoxError;

    async fn initialize(&mut self, input: InitializationInput) -> Result<(), BoxError> {
        let state = input
            .pending_checkpoint
            .is_some_and(|p| p.state.is_some_and(|s| !s.is_empty()));
        self.log.initialized_with_state.lock().unwrap().push((
            self.worker.clone(),
            self.shard.clone(),
            state,
        ));
        Ok(())
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.run(input.records, false).await
    }
}

impl ConcurrentProcessor for Proc {
    async fn process_batch(&self, input: ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        self.run(input.records, true).await
    }

    fn ordering_key(&self, record: &Record) -> u64 {
        if self.behaviour.panicky_key && record.data().ends_with(b"7") {
            panic!("ordering_key failed (injected)");
        }
        kcl_core::processor::partition_key_ordering(record)
    }
}

type Factory = Box<dyn Fn(&ShardInfo) -> Proc + Send + Sync>;

fn factory(worker: &str, log: &Arc<Log>, behaviour: Behaviour) -> Factory {
    let worker = worker.to_owned();
    let log = log.clone();
    Box::new(move |shard: &ShardInfo| Proc {
        worker: worker.clone(),
        shard: shard.shard_id.clone(),
        log: log.clone(),
        behaviour: behaviour.clone(),
    })
}

/// Starts worker `name` with `behaviour`, `configure` applied last.
fn start(
    name: &str,
    model: &Arc<KinesisModel>,
    table: &Arc<dyn LeaseTable>,
    log: &Arc<Log>,
    behaviour: Behaviour,
    configure: impl FnOnce(WorkerBuilder<Factory>) -> WorkerBuilder<Factory>,
) -> Running {
    support::metrics::recorder();
    start_worker(
        ("app", STREAM, name),
        model.clone(),
        table,
        factory(name, log, behaviour),
        LONG,
        configure,
    )
}

/// The sum of a counter over the series of `worker`.
fn metric(name: &str, worker: &str) -> f64 {
    support::metrics::recorder().value(name, &[("worker", worker)])
}

/// Asserts that the first processing of each key's records follows production order.
fn assert_order_per_key(log: &Log, produced: &[(String, Bytes)]) {
    let mut expected: HashMap<&str, Vec<&Bytes>> = HashMap::new();
    for (key, payload) in produced {
        expected.entry(key).or_default().push(payload);
    }
    let mut first: HashMap<String, Vec<Bytes>> = HashMap::new();
    let mut seen = HashSet::new();
    for e in log.of(Kind::Processed) {
        if seen.insert(e.payload.clone()) {
            first.entry(e.key).or_default().push(e.payload);
        }
    }
    for (key, want) in expected {
        let got: Vec<&Bytes> = first
            .get(key)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let got: Vec<&Bytes> = got.into_iter().filter(|p| want.contains(p)).collect();
        assert_eq!(
            got, want,
            "records of {key} processed out of order or missing"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn per_key_order_holds_at_ten_in_flight_under_random_latencies_across_a_split_and_a_merge() {
    let model = model(2);
    let table = table();
    let log = Arc::new(Log::default());
    let mut produced = produce(&model, STREAM, 40, 400, 0);
    let w = start(
        "w1",
        &model,
        &table,
        &log,
        Behaviour::latency(random_ms(0..40)),
        |b| b.key_ordered(KeyOrdered::new(10).with_max_batch_records(8)),
    );
    let shards = split_then_merge(&model, STREAM, &mut produced);
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w.stop().await;

    assert_order_per_key(&log, &produced);
    // One worker, no failures: nothing twice.
    let processed = log.of(Kind::Processed);
    assert_eq!(processed.len(), all.len(), "a record processed twice");
    assert!(processed.iter().all(|e| e.concurrent));
    // Concurrency within a shard, within the bound.
    for shard in model.shard_ids(STREAM).unwrap() {
        let max = log.max_active(&shard);
        assert!(max <= 10, "{shard}: {max} batches at once");
    }
    assert!(
        log.max_active(&shards.split) > 1,
        "batches of one shard ran concurrently"
    );
    // Parents before children: a child's first record starts after its parents' last.
    let entries = log.entries();
    let first_of = |shard: &str| entries.iter().find(|e| e.shard == shard).map(|e| e.seq);
    let last_of = |shard: &str| entries.iter().rfind(|e| e.shard == shard).map(|e| e.seq);
    for shard in model.shards(STREAM).unwrap() {
        let Some(first) = first_of(&shard.shard_id) else {
            continue;
        };
        for parent in shard.parents() {
            assert!(
                last_of(parent).is_some_and(|last| last < first),
                "{} started before its parent {parent} was done",
                shard.shard_id
            );
        }
    }
    support::assert_parents_ended(table.as_ref(), &shards).await;
}

#[tokio::test(start_paused = true)]
async fn a_crash_in_the_middle_of_a_window_redelivers_only_the_window() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 30, 600, 0);
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    let behaviour = Behaviour::latency(random_ms(1..50));
    let configure = |b: WorkerBuilder<Factory>| {
        b.key_ordered(KeyOrdered::new(10).with_max_batch_records(5))
            .checkpoint_cadence(CheckpointCadence {
                every_records: Some(1),
                every_interval: None,
            })
    };
    let w1 = start("w1", &model, &table, &log, behaviour.clone(), configure);
    // Half a millisecond off the whole milliseconds the latencies end on: no batch is
    // completing at the moment of the crash, and every earlier completion was taken in.
    log.wait_until(LONG, |l| l.of(Kind::BatchDone).len() >= 150)
        .await;
    tokio::time::sleep(Duration::from_micros(500)).await;
    let before = log.entries();
    w1.kill().await;

    // Out-of-order completions were remembered with the last checkpoint.
    let lease = table.get("shardId-000000000000").await.unwrap().unwrap();
    let pending = lease
        .pending_checkpoint
        .expect("completions beyond the checkpoint");
    assert!(pending.position > lease.checkpoint);

    let done: HashSet<&Bytes> = before
        .iter()
        .filter(|e| e.kind == Kind::BatchDone)
        .map(|e| &e.payload)
        .collect();
    let window: HashSet<&Bytes> = before
        .iter()
        .filter(|e| e.kind == Kind::Started && !done.contains(&e.payload))
        .map(|e| &e.payload)
        .collect();
    assert!(!window.is_empty(), "batches were in flight at the crash");
    assert!(window.len() <= 10 * 5, "at most the batches in flight");

    let w2 = start("w2", &model, &table, &log, behaviour, configure);
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w2.stop().await;
    let again: HashSet<Bytes> = log
        .of(Kind::Started)
        .into_iter()
        .filter(|e| e.worker == "w2")
        .map(|e| e.payload)
        .filter(|p| done.contains(p) || window.contains(p))
        .collect();
    assert!(
        again.iter().all(|p| window.contains(p)),
        "a record completed before the crash was delivered again"
    );
    assert_eq!(
        again.len(),
        window.len(),
        "every record in flight at the crash is delivered again"
    );
    assert!(metric(names::REMEMBERED_RECORDS_SKIPPED, "w2") > 0.0);
    assert_order_per_key(&log, &produced);
}

#[tokio::test(start_paused = true)]
async fn a_graceful_handoff_with_out_of_order_completions_redelivers_nothing() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 20, 400, 0);
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    // key-0 is slow: the others overtake it, so completions pile up beyond the checkpoint.
    let behaviour = Behaviour::latency(|r: &Record| {
        Duration::from_millis(if r.partition_key() == "key-0" { 400 } else { 5 })
    });
    let configure = |b: WorkerBuilder<Factory>| {
        b.key_ordered(KeyOrdered::new(10).with_max_batch_records(4))
            .checkpoint_cadence(CheckpointCadence {
                every_records: Some(50),
                every_interval: None,
            })
    };
    let w1 = start("w1", &model, &table, &log, behaviour.clone(), configure);
    log.wait_until(LONG, |l| l.processed().len() >= 200).await;
    let w2 = start("w2", &model, &table, &log, behaviour, configure);
    // w1 sees w2 alive before it leaves, so the lease goes to w2.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        log.processed().len() < all.len(),
        "the slow key still has records to go"
    );
    w1.stop().await;
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w2.stop().await;

    let processed = log.of(Kind::Processed);
    let distinct: HashSet<&Bytes> = processed.iter().map(|e| &e.payload).collect();
    assert_eq!(
        processed.len(),
        distinct.len(),
        "a record was processed twice across a graceful handoff"
    );
    assert!(processed.iter().any(|e| e.worker == "w2"));
    // w2 started from a checkpoint with completions remembered beyond it, and skipped them.
    let initialized = log.initialized_with_state.lock().unwrap().clone();
    assert!(
        initialized.iter().any(|(w, _, state)| w == "w2" && *state),
        "{initialized:?}"
    );
    assert!(metric(names::REMEMBERED_RECORDS_SKIPPED, "w2") > 0.0);
    assert_order_per_key(&log, &produced);
}

/// One call of the dead-letter handler: shard, records, attempts, error, reason, and where in
/// the log it happened.
type DeadLettered = (String, Vec<Record>, u32, String, DeadLetterReason, u64);

#[tokio::test(start_paused = true)]
async fn kpl_sub_records_are_scheduled_and_remembered_one_by_one_across_a_handoff() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    // 60 aggregates of 5 user records each, every one of a different key: the sub-records of
    // one aggregate go to different batches and complete out of order (key-0 is slow).
    let mut produced = Vec::new();
    let mut aggregator = kcl_core::deaggregation::aggregator::Aggregator::default();
    for a in 0..60 {
        for k in 0..5 {
            let key = format!("key-{k}");
            let payload = Bytes::from(format!("{key}:{a:06}"));
            assert!(
                aggregator
                    .try_add(&key, None, payload.clone())
                    .unwrap()
                    .is_none()
            );
            produced.push((key, payload));
        }
        let aggregate = aggregator.flush().unwrap();
        model
            .put_record(STREAM, &aggregate.partition_key, aggregate.data, None)
            .unwrap();
    }
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    let behaviour = Behaviour::latency(|r: &Record| {
        Duration::from_millis(if r.partition_key() == "key-0" { 300 } else { 5 })
    });
    let configure = |b: WorkerBuilder<Factory>| {
        b.key_ordered(KeyOrdered::new(5).with_max_batch_records(3))
            .checkpoint_cadence(CheckpointCadence {
                every_records: Some(20),
                every_interval: None,
            })
    };
    let w1 = start("kpl-1", &model, &table, &log, behaviour.clone(), configure);
    log.wait_until(LONG, |l| l.processed().len() >= 120).await;
    let w2 = start("kpl-2", &model, &table, &log, behaviour, configure);
    tokio::time::sleep(Duration::from_secs(3)).await;
    w1.stop().await;
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w2.stop().await;
    let processed = log.of(Kind::Processed);
    assert_eq!(processed.len(), all.len(), "a sub-record processed twice");
    // Sub-records of one aggregate were split between the two workers.
    let mut by_sequence: HashMap<String, HashSet<String>> = HashMap::new();
    for e in &processed {
        assert!(matches!(
            e.position,
            ExtendedSequenceNumber::Sequence { .. }
        ));
        if let ExtendedSequenceNumber::Sequence { sequence, .. } = &e.position {
            by_sequence
                .entry(sequence.as_str().to_owned())
                .or_default()
                .insert(e.worker.clone());
        }
    }
    assert!(
        by_sequence.values().any(|workers| workers.len() == 2),
        "an aggregate finished by the next owner after the handoff"
    );
    assert!(metric(names::REMEMBERED_RECORDS_SKIPPED, "kpl-2") > 0.0);
    assert_order_per_key(&log, &produced);
}

/// Keeps what it is handed.
#[derive(Debug, Default)]
struct Dlq {
    batches: Mutex<Vec<DeadLettered>>,
    log: Mutex<Option<Arc<Log>>>,
}

#[async_trait::async_trait]
impl DeadLetterHandler for Dlq {
    async fn handle(&self, batch: DeadLetterBatch<'_>) -> Result<(), BoxError> {
        let seq = self
            .log
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |l| l.seq.fetch_add(1, Ordering::SeqCst));
        self.batches.lock().unwrap().push((
            batch.shard_id.to_owned(),
            batch.records.to_vec(),
            batch.attempts,
            batch.error.to_string(),
            batch.reason,
            seq,
        ));
        Ok(())
    }
}

fn dead_letter_policy(dlq: &Arc<Dlq>, max_attempts: u32) -> FailurePolicy {
    FailurePolicy::DeadLetter {
        max_attempts,
        backoff: RetryBackoff::new(Duration::from_millis(100), Duration::from_secs(1)),
        handler: dlq.clone(),
    }
}

async fn poison_is_bisected_and_dead_lettered(in_flight: usize) {
    let worker = format!("poison-{in_flight}");
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 8, 200, 0);
    // The 10th record of key-3: later records of key-3 follow it.
    let (poison_key, poison) = produced
        .iter()
        .filter(|(k, _)| k == "key-3")
        .nth(9)
        .cloned()
        .unwrap();
    let dlq = Arc::new(Dlq::default());
    *dlq.log.lock().unwrap() = Some(log.clone());
    let behaviour = Behaviour {
        poison: Some(poison.clone()),
        ..Behaviour::latency(random_ms(0..5))
    };
    let w = start(&worker, &model, &table, &log, behaviour, |b| {
        b.failure_policy(dead_letter_policy(&dlq, 3))
            .bisect_failed_batches(true)
            .key_ordered(KeyOrdered::new(in_flight).with_max_batch_records(50))
            .polling(PollingConfig {
                max_records_per_call: 100,
                ..PollingConfig::default()
            })
    });
    let rest: HashSet<Bytes> = produced
        .iter()
        .map(|(_, p)| p.clone())
        .filter(|p| *p != poison)
        .collect();
    log.wait_until(LONG, |l| l.processed().is_superset(&rest))
        .await;
    w.stop().await;

    // Only the poison went to the handler, with what happened to it.
    let batches = dlq.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let (shard, records, attempts, error, reason, dlq_seq) = &batches[0];
    assert_eq!(shard, "shardId-000000000000");
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].data(), &poison);
    assert!(records[0].sequence_number().as_str().len() > 20);
    assert!(
        *attempts > 3,
        "delivered alone 3 times, and in larger batches before"
    );
    assert!(error.contains("poison"), "{error}");
    assert_eq!(*reason, DeadLetterReason::Failed);
    // Every other record processed exactly once.
    let processed = log.of(Kind::Processed);
    assert_eq!(processed.len(), rest.len(), "a record processed twice");
    assert!(processed.iter().all(|e| e.payload != poison));
    assert!(metric(names::BATCH_BISECTIONS, &worker) >= 1.0);
    assert_eq!(metric(names::RECORDS_DEAD_LETTERED, &worker), 1.0);
    assert_eq!(metric(names::RECORDS_PROCESSED, &worker), rest.len() as f64);
    // The rest of the poisoned key: processed after the poison was dead-lettered, in order.
    let later: Vec<&Entry> = processed
        .iter()
        .filter(|e| e.key == poison_key && e.position > records[0].position())
        .collect();
    assert_eq!(later.len(), 15);
    assert!(later.iter().all(|e| e.seq > *dlq_seq));
    let without: Vec<(String, Bytes)> =
        produced.into_iter().filter(|(_, p)| *p != poison).collect();
    assert_order_per_key(&log, &without);
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_is_bisected_and_dead_lettered_while_every_other_record_is_processed_once()
{
    poison_is_bisected_and_dead_lettered(1).await;
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_is_bisected_and_dead_lettered_at_ten_in_flight() {
    poison_is_bisected_and_dead_lettered(10).await;
}

#[tokio::test(start_paused = true)]
async fn a_partial_failure_checkpoints_before_the_failed_record_and_retries_from_it() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 5, 100, 0);
    let failing = produced[37].1.clone();
    let behaviour = Behaviour {
        partial: Some((failing.clone(), Arc::new(AtomicBool::new(true)))),
        ..Behaviour::latency(|_| Duration::ZERO)
    };
    let w = start("partial", &model, &table, &log, behaviour, |b| {
        b.failure_policy(FailurePolicy::RetryForever {
            backoff: RetryBackoff {
                initial: Duration::from_secs(10),
                max: Duration::from_secs(10),
                factor: 1.0,
                jitter: false,
            },
        })
        .checkpoint_cadence(CheckpointCadence {
            every_records: Some(1),
            every_interval: None,
        })
    });
    // During the retry's wait, the records before the failed one are checkpointed.
    log.wait_until(LONG, |l| l.processed().len() >= 37).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lease = table.get("shardId-000000000000").await.unwrap().unwrap();
    let before = log.of(Kind::Processed);
    assert_eq!(before.len(), 37, "nothing past the failed record yet");
    assert_eq!(lease.checkpoint, before[36].position);
    // The retry starts at the failed record.
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w.stop().await;
    let starts = log.of(Kind::Started);
    let retried = starts
        .iter()
        .position(|e| e.payload == failing)
        .and_then(|first| starts[first + 1..].iter().find(|e| e.payload == failing))
        .expect("the failed record delivered again");
    let retry_batch: Vec<&Entry> = starts.iter().filter(|e| e.seq >= retried.seq).collect();
    assert_eq!(retry_batch[0].payload, failing, "the retry begins at it");
    assert_eq!(
        log.of(Kind::Processed).len(),
        100,
        "each record processed once"
    );
    assert_eq!(metric(names::PARTIAL_BATCH_FAILURES, "partial"), 1.0);
}

#[tokio::test(start_paused = true)]
async fn a_partial_failure_inside_a_key_ordered_batch_keeps_each_key_in_order() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 12, 300, 0);
    let behaviour = Behaviour {
        partial: Some((produced[150].1.clone(), Arc::new(AtomicBool::new(true)))),
        ..Behaviour::latency(random_ms(0..20))
    };
    let w = start("partial-ko", &model, &table, &log, behaviour, |b| {
        b.key_ordered(KeyOrdered::new(6).with_max_batch_records(20))
    });
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w.stop().await;
    assert_eq!(
        log.of(Kind::Processed).len(),
        300,
        "each record processed once"
    );
    assert_eq!(metric(names::PARTIAL_BATCH_FAILURES, "partial-ko"), 1.0);
    assert_order_per_key(&log, &produced);
}

async fn old_records(expired: ExpiredRecords, worker: &str) -> (Arc<Log>, Arc<Dlq>, Vec<Bytes>) {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let old: Vec<Bytes> = produce(&model, STREAM, 3, 6, 0)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    tokio::time::sleep(Duration::from_secs(2 * 3_600)).await;
    let fresh: HashSet<Bytes> = produce(&model, STREAM, 3, 9, 6)
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    let dlq = Arc::new(Dlq::default());
    let w = start(
        worker,
        &model,
        &table,
        &log,
        Behaviour::latency(|_| Duration::ZERO),
        |b| {
            b.failure_policy(dead_letter_policy(&dlq, 3))
                .max_record_age(Duration::from_secs(3_600), expired)
        },
    );
    log.wait_until(LONG, |l| l.processed().is_superset(&fresh))
        .await;
    w.stop().await;
    assert_eq!(
        log.processed(),
        fresh,
        "only the fresh records are processed"
    );
    (log, dlq, old)
}

#[tokio::test(start_paused = true)]
async fn records_older_than_the_maximum_age_go_to_the_dead_letter_handler() {
    let (_log, dlq, old) = old_records(ExpiredRecords::DeadLetter, "too-old").await;
    let batches = dlq.batches.lock().unwrap().clone();
    let dead: Vec<Bytes> = batches
        .iter()
        .flat_map(|b| b.1.iter().map(|r| r.data().clone()))
        .collect();
    assert_eq!(dead, old);
    assert!(
        batches
            .iter()
            .all(|b| b.4 == DeadLetterReason::Expired && b.2 == 0)
    );
    assert!(
        batches[0].3.contains("older than the maximum record age"),
        "{}",
        batches[0].3
    );
    let expired = support::metrics::recorder().value(
        names::RECORDS_EXPIRED,
        &[("worker", "too-old"), ("action", "dead_lettered")],
    );
    assert_eq!(expired, 6.0);
}

#[tokio::test(start_paused = true)]
async fn records_older_than_the_maximum_age_can_be_skipped_and_counted() {
    let (_log, dlq, _old) = old_records(ExpiredRecords::Skip, "too-old-skipped").await;
    assert!(dlq.batches.lock().unwrap().is_empty());
    let skipped = support::metrics::recorder().value(
        names::RECORDS_EXPIRED,
        &[("worker", "too-old-skipped"), ("action", "skipped")],
    );
    assert_eq!(skipped, 6.0);
}

#[tokio::test(start_paused = true)]
async fn one_batch_in_flight_is_the_ordinary_path() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 5, 50, 0);
    let w = start(
        "one",
        &model,
        &table,
        &log,
        Behaviour::latency(|_| Duration::from_millis(1)),
        |b| b.key_ordered(KeyOrdered::new(1)),
    );
    log.wait_until(LONG, |l| l.processed().len() >= produced.len())
        .await;
    w.stop().await;
    let processed = log.of(Kind::Processed);
    assert!(
        processed.iter().all(|e| !e.concurrent),
        "process_records only"
    );
    // In shard order, as ever.
    let positions: Vec<&ExtendedSequenceNumber> = processed.iter().map(|e| &e.position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(start_paused = true)]
async fn an_ordering_key_that_panics_is_caught_and_the_partition_key_orders_the_record() {
    let model = model(1);
    let table = table();
    let log = Arc::new(Log::default());
    let produced = produce(&model, STREAM, 10, 100, 0);
    let behaviour = Behaviour {
        panicky_key: true,
        ..Behaviour::latency(random_ms(0..10))
    };
    let w = start("panicky", &model, &table, &log, behaviour, |b| {
        b.key_ordered(KeyOrdered::new(4))
    });
    let all: HashSet<Bytes> = produced.iter().map(|(_, p)| p.clone()).collect();
    log.wait_until(LONG, |l| l.processed().is_superset(&all))
        .await;
    w.stop().await;
    assert_eq!(log.of(Kind::Processed).len(), 100);
    let failures = support::metrics::recorder().value(
        names::PROCESSOR_FAILURES,
        &[("worker", "panicky"), ("call", "ordering_key")],
    );
    assert_eq!(failures, 10.0, "one per record whose key function panicked");
    assert_order_per_key(&log, &produced);
}

#[test]
fn key_ordered_settings_are_validated() {
    let build = |mode: KeyOrdered, cadence: CheckpointCadence| {
        Worker::builder(factory(
            "v",
            &Arc::new(Log::default()),
            Behaviour::latency(|_| Duration::ZERO),
        ))
        .application_name("app")
        .stream(STREAM)
        .backend(model(1))
        .lease_table(table())
        .checkpoint_cadence(cadence)
        .key_ordered(mode)
        .build()
        .map(|_| ())
    };
    let auto = CheckpointCadence::default();
    assert!(build(KeyOrdered::new(10), auto).is_ok());
    let field = |r: Result<(), ConfigError>| match r {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(build(KeyOrdered::new(0), auto)),
        "key_ordered.max_in_flight"
    );
    assert_eq!(
        field(build(KeyOrdered::new(257), auto)),
        "key_ordered.max_in_flight"
    );
    assert_eq!(
        field(build(
            KeyOrdered::new(4)
                .with_max_window_records(10)
                .with_max_batch_records(20),
            auto
        )),
        "key_ordered.max_window_records"
    );
    assert_eq!(
        field(build(
            KeyOrdered::new(4).with_max_state_bytes(1 << 20),
            auto
        )),
        "key_ordered.max_state_bytes"
    );
    let error = build(KeyOrdered::new(4), CheckpointCadence::manual()).unwrap_err();
    assert!(
        error.to_string().contains("cadence must be automatic"),
        "{error}"
    );
    // One in flight is the ordinary path: manual checkpoints are fine.
    assert!(build(KeyOrdered::new(1), CheckpointCadence::manual()).is_ok());
    // Expired records need a handler to go to.
    let error = Worker::builder(factory(
        "v",
        &Arc::new(Log::default()),
        Behaviour::latency(|_| Duration::ZERO),
    ))
    .application_name("app")
    .stream(STREAM)
    .backend(model(1))
    .lease_table(table())
    .max_record_age(Duration::from_secs(60), ExpiredRecords::DeadLetter)
    .build()
    .unwrap_err();
    assert!(error.to_string().contains("dead-letter handler"), "{error}");
}
