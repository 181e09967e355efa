//! Several workers, each with its own DynamoDB client, sharing one lease table on a real server
//! while reading the in-memory Kinesis model: one worker is killed mid-run and its shards resume
//! elsewhere from their checkpoints; and a worker resumes from a checkpoint Java KCL wrote.
//!
//! A real server means real time: the tests wait for events (records seen, leases moved) with
//! generous bounds, never for fixed durations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use common::{server, unique_table};
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::LeaseTable;
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{
    BoxError, InitializationInput, ProcessRecordsInput, ProcessorFactory, RecordProcessor,
    ShardInfo,
};
use kcl_core::record::ExtendedSequenceNumber;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{Worker, WorkerHandle};
use kcl_lease_dynamo::DynamoLeaseTable;
use tokio::sync::Notify;

const STREAM: &str = "orders";
const FAILOVER: Duration = Duration::from_secs(2);
/// Bound for every wait: far above what any step needs, so only a real hang trips it.
const BOUND: Duration = Duration::from_secs(120);

/// One delivery of one record.
#[derive(Clone, Debug)]
struct Seen {
    worker: String,
    shard_id: String,
    position: ExtendedSequenceNumber,
    data: Bytes,
}

#[derive(Default)]
struct Log {
    seen: Mutex<Vec<Seen>>,
    initialized: Mutex<Vec<(String, String, ExtendedSequenceNumber)>>,
    changed: Notify,
}

impl Log {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn distinct_data(&self) -> usize {
        self.seen()
            .into_iter()
            .map(|s| s.data)
            .collect::<HashSet<_>>()
            .len()
    }

    async fn wait_until(&self, what: &str, done: impl Fn(&Log) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if done(self) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(BOUND, wait).await.is_err() {
            panic!(
                "{what}: not reached within {BOUND:?}; {} records seen",
                self.distinct_data()
            );
        }
    }
}

struct Processor {
    worker: String,
    shard_id: String,
    log: Arc<Log>,
}

impl RecordProcessor for Processor {
    type Error = BoxError;

    async fn initialize(&mut self, input: InitializationInput) -> Result<(), BoxError> {
        self.log.initialized.lock().unwrap().push((
            self.worker.clone(),
            self.shard_id.clone(),
            input.checkpoint,
        ));
        Ok(())
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.log
            .seen
            .lock()
            .unwrap()
            .extend(input.records.iter().map(|r| Seen {
                worker: self.worker.clone(),
                shard_id: self.shard_id.clone(),
                position: r.position(),
                data: r.data().clone(),
            }));
        // Checkpoint every batch, then tell the test (so "seen" implies "checkpointed" except for
        // the batch in flight when a worker dies).
        checkpointer.checkpoint().await?;
        self.log.changed.notify_waiters();
        Ok(())
    }
}

struct Factory {
    worker: String,
    log: Arc<Log>,
}

impl ProcessorFactory for Factory {
    type Processor = Processor;

    fn create(&self, shard: &ShardInfo) -> Processor {
        Processor {
            worker: self.worker.clone(),
            shard_id: shard.shard_id.clone(),
            log: Arc::clone(&self.log),
        }
    }
}

/// A worker running on its own Tokio runtime, with its own DynamoDB client: killing the runtime
/// stops every task of the worker at once (its renewer included), like a crashed process.
struct Running {
    handle: WorkerHandle,
    task: tokio::task::JoinHandle<()>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Running {
    /// Crash: every task of the worker stops where it is; nothing is released.
    fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Graceful shutdown, bounded.
    async fn stop(mut self, name: &str) {
        self.handle.shutdown();
        within(&format!("graceful shutdown of {name}"), &mut self.task)
            .await
            .unwrap();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what} did not finish within {BOUND:?}"),
    }
}

/// Starts a worker named `name` on its own runtime, with its own SdkConfig and client.
async fn start_worker(
    name: &str,
    endpoint: &str,
    table_name: &str,
    model: &Arc<KinesisModel>,
    log: &Arc<Log>,
) -> Running {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(format!("worker-{name}"))
        .enable_all()
        .build()
        .unwrap();
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel();
    let (name, endpoint, table_name) =
        (name.to_owned(), endpoint.to_owned(), table_name.to_owned());
    let (model, log) = (Arc::clone(model), Arc::clone(log));
    let task = runtime.spawn(async move {
        let config = common::sdk_config(&endpoint).await;
        let table: Arc<dyn LeaseTable> = Arc::new(
            DynamoLeaseTable::builder(&table_name)
                .build(&config)
                .await
                .expect("lease table"),
        );
        let worker = Worker::builder(Factory {
            worker: name.clone(),
            log,
        })
        .application_name(&table_name)
        .stream(STREAM)
        .worker_id(&name)
        .backend(model)
        .lease_table(table)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(FAILOVER)
        .build()
        .expect("worker config");
        let _ = handle_tx.send(worker.handle());
        worker.run().await.expect("worker run");
    });
    let handle = within("worker start", handle_rx)
        .await
        .expect("worker started");
    Running {
        handle,
        task,
        runtime: Some(runtime),
    }
}

fn produce(model: &KinesisModel, from: usize, to: usize) -> Vec<Bytes> {
    (from..to)
        .map(|i| {
            let data = Bytes::from(format!("record-{i:06}"));
            model
                .put_record(STREAM, &format!("key-{}", i % 16), data.clone(), None)
                .expect("put_record");
            data
        })
        .collect()
}

/// First deliveries per shard are in sequence order, and nothing is missing.
fn assert_complete_and_ordered(log: &Log, produced: &[Bytes]) {
    let seen = log.seen();
    let data: HashSet<&Bytes> = seen.iter().map(|s| &s.data).collect();
    for d in produced {
        assert!(data.contains(d), "{d:?} was never delivered");
    }
    let mut first: BTreeMap<&str, Vec<&ExtendedSequenceNumber>> = BTreeMap::new();
    let mut delivered = HashSet::new();
    for s in &seen {
        if delivered.insert(&s.data) {
            first.entry(&s.shard_id).or_default().push(&s.position);
        }
    }
    for (shard, positions) in first {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "first deliveries of {shard} out of order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_killed_worker_s_shards_resume_on_the_others_from_their_checkpoints() {
    let server = server().await;
    let table_name = unique_table("workers");
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, 4).unwrap();
    let log = Arc::new(Log::default());
    let mut produced = produce(&model, 0, 400);

    let mut workers: BTreeMap<String, Running> = BTreeMap::new();
    for name in ["w1", "w2", "w3"] {
        workers.insert(
            name.to_owned(),
            start_worker(name, &server.endpoint, &table_name, &model, &log).await,
        );
    }
    log.wait_until("first 400 records", |l| l.distinct_data() >= 400)
        .await;

    // Kill the worker holding the most leases (the lease table says who), without letting it
    // release anything: its leases stay owned until they expire.
    let observer = DynamoLeaseTable::builder(&table_name)
        .build(&server.config)
        .await
        .unwrap();
    // Wait until the three workers settled at 2/1/1 with no handoff in flight: a lease being
    // handed off names its next owner while the previous one still processes it, so killing
    // its "owner" then would not test a crash. Shard leases only: the table also holds one
    // heartbeat row per live worker.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let held = loop {
        let leases: Vec<_> = observer
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.heartbeat_of().is_none())
            .collect();
        assert_eq!(leases.len(), 4, "one lease per shard");
        let mut held: HashMap<String, Vec<String>> = HashMap::new();
        for lease in &leases {
            if let Some(owner) = &lease.owner {
                held.entry(owner.clone())
                    .or_default()
                    .push(lease.key.clone());
            }
        }
        let mut loads: Vec<usize> = held.values().map(Vec::len).collect();
        loads.sort_unstable();
        let settled = leases.iter().all(|l| l.checkpoint_owner.is_none());
        if settled && loads == [1, 1, 2] {
            break held;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the workers never settled at 2/1/1: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (victim, victim_shards) = held
        .iter()
        .max_by_key(|(_, shards)| shards.len())
        .map(|(w, s)| (w.clone(), s.clone()))
        .unwrap();
    eprintln!("leases before the kill: {held:?}; killing {victim}");
    workers.remove(&victim).unwrap().kill();
    let seen_before_kill = log.seen().len();

    // More records: those of the victim's shards can only be processed once others take over.
    produced.extend(produce(&model, 400, 600));
    log.wait_until("all 600 records after the kill", |l| {
        l.distinct_data() >= 600
    })
    .await;
    assert_complete_and_ordered(&log, &produced);

    // The victim's shards moved to survivors, which started from the victim's checkpoints.
    let after_kill = &log.seen()[seen_before_kill..];
    for shard in &victim_shards {
        let new_owners: HashSet<&str> = after_kill
            .iter()
            .filter(|s| &s.shard_id == shard)
            .map(|s| s.worker.as_str())
            .collect();
        assert!(
            !new_owners.is_empty(),
            "nobody processed {shard} after the kill"
        );
        assert!(
            !new_owners.contains(victim.as_str()),
            "the killed worker still processed {shard}"
        );
        let resumed_at: Vec<ExtendedSequenceNumber> = log
            .initialized
            .lock()
            .unwrap()
            .iter()
            .filter(|(w, s, _)| s == shard && w != &victim)
            .map(|(_, _, at)| at.clone())
            .collect();
        assert!(
            resumed_at
                .iter()
                .any(|at| matches!(at, ExtendedSequenceNumber::Sequence { .. })),
            "{shard} resumed at {resumed_at:?}, not at the killed worker's checkpoint"
        );
    }
    // Duplicates are allowed only for records after a shard's last checkpoint (at most the batch
    // in flight when the worker died), never for the whole shard.
    let all = log.seen();
    let mut deliveries: HashMap<&Bytes, usize> = HashMap::new();
    for s in &all {
        *deliveries.entry(&s.data).or_default() += 1;
    }
    let repeated = deliveries.values().filter(|n| **n > 1).count();
    assert!(
        repeated <= 200,
        "{repeated} records delivered twice: resumption did not start from the checkpoints"
    );

    eprintln!(
        "{repeated} records delivered twice; leases after the failover: {:?}",
        observer
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.key, l.owner))
            .collect::<Vec<_>>()
    );
    let survivors: Vec<String> = workers.keys().cloned().collect();
    let shard_leases = async || {
        observer
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.heartbeat_of().is_none())
            .collect::<Vec<_>>()
    };
    for lease in shard_leases().await {
        let owner = lease.owner.clone().unwrap_or_default();
        assert!(
            survivors.contains(&owner),
            "{} is held by {owner:?} after the failover",
            lease.key
        );
    }

    for (name, running) in workers {
        running.stop(&name).await;
    }
    for lease in shard_leases().await {
        assert_eq!(lease.owner, None, "{} not released at shutdown", lease.key);
    }
}

/// A team switching from Java KCL: the lease table holds a Java worker's lease (with its 3.x
/// attributes) and checkpoint; the Java worker is gone. Our worker waits for the lease to expire,
/// takes it, and delivers exactly the records after the Java checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_worker_continues_from_a_java_kcl_checkpoint() {
    let server = server().await;
    let table_name = unique_table("java-resume");
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, 1).unwrap();
    let mut sequence_numbers = Vec::new();
    for i in 0..20 {
        let output = model
            .put_record(STREAM, "key", Bytes::from(format!("record-{i:06}")), None)
            .unwrap();
        sequence_numbers.push(output.sequence_number);
    }
    let shard_id = model.shard_ids(STREAM).unwrap().remove(0);

    // The Java worker checkpointed record 9 and died.
    let table = DynamoLeaseTable::builder(&table_name)
        .build(&server.config)
        .await
        .unwrap();
    let java_item = HashMap::from([
        ("leaseKey".to_owned(), AttributeValue::S(shard_id.clone())),
        ("leaseOwner".into(), AttributeValue::S("java-worker".into())),
        ("leaseCounter".into(), AttributeValue::N("57".into())),
        (
            "ownerSwitchesSinceCheckpoint".into(),
            AttributeValue::N("0".into()),
        ),
        (
            "checkpoint".into(),
            AttributeValue::S(sequence_numbers[9].as_str().to_owned()),
        ),
        (
            "checkpointSubSequenceNumber".into(),
            AttributeValue::N("0".into()),
        ),
        ("startingHashKey".into(), AttributeValue::S("0".into())),
        (
            "endingHashKey".into(),
            AttributeValue::S(u128::MAX.to_string()),
        ),
        ("throughputKBps".into(), AttributeValue::N("1.5".into())),
    ]);
    table
        .client()
        .put_item()
        .table_name(&table_name)
        .set_item(Some(java_item))
        .send()
        .await
        .unwrap();

    let log = Arc::new(Log::default());
    let rust = start_worker("rust-worker", &server.endpoint, &table_name, &model, &log).await;
    log.wait_until("the 10 records after the Java checkpoint", |l| {
        l.distinct_data() >= 10
    })
    .await;
    let seen = log.seen();
    let expected: Vec<Bytes> = (10..20)
        .map(|i| Bytes::from(format!("record-{i:06}")))
        .collect();
    let first: Vec<Bytes> = seen.iter().map(|s| s.data.clone()).take(10).collect();
    assert_eq!(
        first, expected,
        "delivery must start right after the Java checkpoint"
    );
    let initialized = log.initialized.lock().unwrap().clone();
    assert_eq!(
        initialized.first().map(|(_, _, at)| at.clone()),
        Some(ExtendedSequenceNumber::at(sequence_numbers[9].clone()))
    );

    rust.stop("rust-worker").await;
    let raw = table
        .client()
        .get_item()
        .table_name(&table_name)
        .key("leaseKey", AttributeValue::S(shard_id.clone()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    assert_eq!(
        raw.get("throughputKBps"),
        Some(&AttributeValue::N("1.5".into())),
        "Java's attribute is preserved"
    );
    let lease = table.get(&shard_id).await.unwrap().unwrap();
    assert_eq!(
        lease.checkpoint,
        ExtendedSequenceNumber::at(sequence_numbers[19].clone()),
        "the checkpoint moved on to the last record"
    );
    assert!(lease.counter > 57);
}
