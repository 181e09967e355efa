//! The lease-coordination suite: scenarios every `LeaseTable` implementation should survive,
//! written once and run against every store (the in-memory table, SQLite, DynamoDB, yours).
//!
//! Each scenario runs several workers on one in-memory Kinesis model, each worker with its own
//! lease-table handle from a [`Tables`] factory (its own SQLite connection, its own DynamoDB
//! client), so the store's real concurrency is exercised: takeover after a crash
//! ([`takeover_after_a_crash`]), graceful handoff ([`graceful_shutdown_hands_over_without_duplicates`]),
//! a joining worker ([`a_joining_worker_gets_its_share_without_duplicates`]) and resharding
//! across workers ([`resharding_across_workers_keeps_order`]), and two streams through one table
//! (multi-stream mode: [`two_streams_survive_a_crash_and_a_split`]). A scenario panics, naming what
//! went wrong, when the store breaks a property.
//!
//! The scenarios wait for events (records completed, leases moved), never for fixed times, so
//! they run under tokio's paused clock for stores that do not do real I/O in time-sensitive
//! ways (the in-memory table, SQLite) and in real time against a server.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use kcl_core::lease::InMemoryLeaseTable;
//! use kcl_testkit::scenarios;
//!
//! let tables = scenarios::shared(Arc::new(InMemoryLeaseTable::new()));
//! scenarios::takeover_after_a_crash(tables, Duration::from_secs(10)).await;
//! # }
//! ```
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::{LeaseConfig, LeaseTable};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_core::retrieval::PollingConfig;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::stream::StreamIdentifier;
use kcl_core::worker::{
    CheckpointCadence, MultiStreamTracker, StreamConfig, Worker, WorkerHandle, WorkerStatus,
};

use crate::gate::Gate;
use crate::observe::{Deliveries, Observed};

/// Opens a new handle on the shared lease table (one per worker).
pub type Tables =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Arc<dyn LeaseTable>> + Send>> + Send + Sync>;

/// Wraps a table that is shared as is (the in-memory table) into a [`Tables`] factory.
pub fn shared(table: Arc<dyn LeaseTable>) -> Tables {
    Arc::new(move || {
        let table = table.clone();
        Box::pin(async move { table })
    })
}

/// The stream every scenario consumes.
pub const STREAM: &str = "orders";
/// The second stream of the multi-stream scenario.
pub const SECOND_STREAM: &str = "payments";
/// Records per `GetRecords` call, so per processor batch, in every scenario.
const MAX_BATCH: u32 = 10;

/// A worker started by a [`Cluster`].
struct Member {
    handle: WorkerHandle,
    task: tokio::task::JoinHandle<()>,
}

/// Several workers of one application on one model and one lease table.
pub struct Cluster {
    /// The stream model.
    pub model: Arc<KinesisModel>,
    /// Everything the processors completed, and their lifecycle calls.
    pub deliveries: Arc<Deliveries>,
    tables: Tables,
    /// Lease timings of the workers started from now on.
    pub lease: LeaseConfig,
    /// Checkpoint cadence of the workers started from now on.
    pub cadence: CheckpointCadence,
    /// Polling settings of the workers started from now on: at most [`MAX_BATCH`] records per
    /// batch, so that re-deliveries after a crash have a bound that does not depend on timing.
    pub polling: PollingConfig,
    /// Shard sync interval of the workers started from now on (default: the failover time).
    pub shard_sync_interval: Duration,
    /// Bound for every wait (virtual or real time).
    pub bound: Duration,
    /// The streams the workers started from now on consume: [`STREAM`] alone by default (a
    /// single-stream worker); more than one makes them multi-stream workers.
    pub streams: Vec<String>,
    members: BTreeMap<String, Member>,
}

impl Cluster {
    /// A stream of `shards` shards and no workers yet; `failover` sets the lease timings.
    pub fn new(tables: Tables, shards: u32, failover: Duration) -> Self {
        let model = KinesisModel::new(ModelConfig::new());
        model.create_stream(STREAM, shards).expect("create stream");
        Self {
            model,
            deliveries: Arc::new(Deliveries::default()),
            tables,
            lease: LeaseConfig::with_failover(failover),
            cadence: CheckpointCadence {
                every_records: Some(20),
                every_interval: Some(Duration::from_secs(1)),
            },
            polling: PollingConfig {
                max_records_per_call: MAX_BATCH,
                ..PollingConfig::default()
            },
            shard_sync_interval: failover,
            bound: failover * 60,
            streams: vec![STREAM.to_owned()],
            members: BTreeMap::new(),
        }
    }

    /// Starts worker `name`.
    pub async fn start(&mut self, name: &str) {
        let table = (self.tables)().await;
        let factory = Observed::new(
            Arc::new(|_: &ShardInfo| Accept),
            name,
            0,
            self.deliveries.clone(),
            Arc::new(Gate::new()),
        );
        let builder = Worker::builder(factory).application_name("app");
        let builder = match self.streams.as_slice() {
            [one] => builder.stream(one),
            streams => builder.multi_stream(MultiStreamTracker::new(
                streams
                    .iter()
                    .map(|s| StreamConfig::parse(s).expect("a valid stream name")),
            )),
        };
        let worker = builder
            .worker_id(name)
            .backend(self.model.clone())
            .lease_table(table)
            .initial_position(InitialPosition::TrimHorizon)
            .lease_config(self.lease.clone())
            .checkpoint_cadence(self.cadence)
            .polling(self.polling.clone())
            .shard_sync_interval(self.shard_sync_interval)
            .parent_poll_interval(self.lease.scan_interval)
            .build()
            .expect("valid worker configuration");
        let handle = worker.handle();
        let task = tokio::spawn(async move { worker.run().await.expect("worker run") });
        self.members
            .insert(name.to_owned(), Member { handle, task });
    }

    /// Stops worker `name` gracefully and waits for it.
    pub async fn stop(&mut self, name: &str) {
        let member = self.members.remove(name).expect("running worker");
        member.handle.shutdown();
        within(self.bound, "graceful shutdown", member.task)
            .await
            .expect("worker task");
    }

    /// Kills worker `name`: its task is aborted, nothing is released or checkpointed.
    pub async fn kill(&mut self, name: &str) {
        let member = self.members.remove(name).expect("running worker");
        member.task.abort();
        let _ = member.task.await;
    }

    /// Worker `name`'s status.
    pub fn status(&self, name: &str) -> WorkerStatus {
        self.members[name].handle.status()
    }

    /// How many leases worker `name` holds.
    pub fn held(&self, name: &str) -> usize {
        self.status(name).held_leases.len()
    }

    /// Waits until `done` holds, checking every scan interval.
    pub async fn wait_for(&self, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let step = self.lease.scan_interval;
        within(self.bound, what, async {
            while !done(self) {
                tokio::time::sleep(step).await;
            }
        })
        .await;
    }

    /// Produces `count` records over `keys` partition keys, `per_step` every scan interval, so
    /// production overlaps whatever the scenario does meanwhile. Returns the records produced.
    pub fn produce_in_background(
        &self,
        keys: usize,
        count: usize,
        per_step: usize,
    ) -> tokio::task::JoinHandle<Vec<(String, Bytes)>> {
        let model = self.model.clone();
        let step = self.lease.scan_interval;
        tokio::spawn(async move {
            let mut produced = Vec::with_capacity(count);
            while produced.len() < count {
                let n = per_step.min(count - produced.len());
                produced.extend(produce(&model, STREAM, keys, n, produced.len()));
                tokio::time::sleep(step).await;
            }
            produced
        })
    }

    /// Waits until every record of `produced` was delivered at least once.
    pub async fn wait_all_delivered(&self, produced: &[(String, Bytes)]) {
        let want: HashSet<Bytes> = produced.iter().map(|(_, d)| d.clone()).collect();
        within(
            self.bound,
            "every record delivered",
            self.deliveries.wait_until(|all| {
                let seen: HashSet<&Bytes> = all.iter().map(|d| &d.data).collect();
                want.iter().all(|d| seen.contains(d))
            }),
        )
        .await;
    }

    /// Deliveries beyond the first of each record.
    pub fn duplicates(&self) -> usize {
        self.deliveries.duplicates()
    }

    /// Waits (within the bound) until `done` holds for what was completed.
    pub async fn wait_deliveries(
        &self,
        what: &str,
        done: impl Fn(&[crate::observe::Delivery]) -> bool,
    ) {
        within(self.bound, what, self.deliveries.wait_until(done)).await;
    }

    /// Starts `w1` and `w2`, waits until each holds half the shards, starts a producer (400
    /// records over 20 keys, `per_step` every scan interval) and waits until `w1` processed some.
    pub async fn two_balanced_workers_under_traffic(
        &mut self,
        per_step: usize,
    ) -> tokio::task::JoinHandle<Vec<(String, Bytes)>> {
        self.start("w1").await;
        self.start("w2").await;
        let half = self.model.open_shard_ids(STREAM).expect("shards").len() / 2;
        self.wait_for("two workers balanced", |c| {
            c.held("w1") == half && c.held("w2") == half
        })
        .await;
        let producer = self.produce_in_background(20, 400, per_step);
        self.wait_deliveries("w1 processed records", |all| {
            all.iter().any(|d| d.worker == "w1")
        })
        .await;
        producer
    }

    /// Stops every worker gracefully.
    pub async fn stop_all(&mut self) {
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            self.stop(&name).await;
        }
    }
}

/// A worker is killed mid-stream: the survivor takes its shards over after the failover time
/// and processes every record; re-deliveries are confined to the dead worker's shards and
/// bounded by the checkpoint cadence.
pub async fn takeover_after_a_crash(tables: Tables, failover: Duration) {
    let mut cluster = Cluster::new(tables, 4, failover);
    let producer = cluster.two_balanced_workers_under_traffic(10).await;
    let w1_shards: HashSet<String> = cluster.status("w1").held_leases.into_iter().collect();
    cluster.kill("w1").await;
    let produced = producer.await.expect("producer");
    cluster.wait_all_delivered(&produced).await;
    cluster
        .wait_for("w2 holds every shard", |c| c.held("w2") == 4)
        .await;
    assert_order_per_key(&cluster.deliveries, &produced);
    let stats = cluster.status("w2").leases;
    assert!(stats.taken_expired >= 2, "{stats:?}");
    // Re-deliveries: only the dead worker's shards, and on each at most what w1 processed after
    // its last checkpoint: fewer than one cadence (20 records) plus the batch it was in.
    let seen = cluster.deliveries.all();
    let mut first: BTreeMap<Bytes, &str> = BTreeMap::new();
    let mut redelivered: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &seen {
        if let Some(first_worker) = first.get(&s.data) {
            assert_eq!(
                *first_worker, "w1",
                "a re-delivery not caused by the crash: {s:?}"
            );
            assert!(w1_shards.contains(&s.shard_id), "{s:?}");
            *redelivered.entry(s.shard_id.as_str()).or_default() += 1;
        } else {
            first.insert(s.data.clone(), s.worker.as_str());
        }
    }
    for (shard, n) in redelivered {
        assert!(n < 20 + MAX_BATCH as usize, "{n} re-deliveries on {shard}");
    }
    cluster.stop_all().await;
}

/// Checkpoints so rare that only the final checkpoint of a handoff can prevent re-deliveries.
fn rare_checkpoints() -> CheckpointCadence {
    CheckpointCadence {
        every_records: Some(100_000),
        every_interval: Some(Duration::from_secs(3600)),
    }
}

/// A worker shuts down gracefully mid-stream: its shards are handed to the other worker, which
/// starts right after the final checkpoints: every record is delivered exactly once.
pub async fn graceful_shutdown_hands_over_without_duplicates(tables: Tables, failover: Duration) {
    let mut cluster = Cluster::new(tables, 4, failover);
    cluster.cadence = rare_checkpoints();
    let producer = cluster.two_balanced_workers_under_traffic(10).await;
    cluster.stop("w1").await;
    let produced = producer.await.expect("producer");
    cluster.wait_all_delivered(&produced).await;
    // The leases are in w2's name once w1 stopped; w2 starts them at its next scan (in real
    // time, possibly after every record was already delivered by w1).
    cluster
        .wait_for("w2 holds every shard", |c| c.held("w2") == 4)
        .await;
    assert_eq!(
        cluster.duplicates(),
        0,
        "a graceful handoff delivered a record twice"
    );
    assert_order_per_key(&cluster.deliveries, &produced);
    // w2 found the leases in its name: nothing expired, nothing forced.
    let stats = cluster.status("w2").leases;
    assert_eq!(stats.taken_expired, 0, "{stats:?}");
    assert_eq!(stats.handoffs_forced, 0, "{stats:?}");
    cluster.stop_all().await;
}

/// A worker joins while records flow: it asks the busy worker for its fair share, which hands the
/// shards over after checkpointing; no record is delivered twice and nothing moves afterwards.
pub async fn a_joining_worker_gets_its_share_without_duplicates(
    tables: Tables,
    failover: Duration,
) {
    let mut cluster = Cluster::new(tables, 4, failover);
    cluster.cadence = rare_checkpoints();
    cluster.start("w1").await;
    cluster
        .wait_for("w1 holds every shard", |c| c.held("w1") == 4)
        .await;
    let producer = cluster.produce_in_background(20, 400, 10);
    cluster
        .wait_deliveries("40 records", |all| all.len() >= 40)
        .await;
    cluster.start("w2").await;
    cluster
        .wait_for("balanced after the join", |c| {
            c.held("w1") == 2 && c.held("w2") == 2
        })
        .await;
    let mut produced = producer.await.expect("producer");
    // A tail produced after the handoffs, so that w2 has records to process however slowly
    // (in real time) the join went.
    produced.extend(produce(&cluster.model, STREAM, 20, 40, 400));
    cluster.wait_all_delivered(&produced).await;
    assert_eq!(
        cluster.duplicates(),
        0,
        "a rebalancing handoff delivered a record twice"
    );
    assert_order_per_key(&cluster.deliveries, &produced);
    let w2 = cluster.status("w2").leases;
    assert_eq!(
        (w2.handoffs_requested, w2.handoffs_received),
        (2, 2),
        "{w2:?}"
    );
    assert!(cluster.deliveries.all().iter().any(|d| d.worker == "w2"));
    // Stable: no lease moves in the following scans.
    let moves = |c: &Cluster| {
        ["w1", "w2"].map(|w| {
            let s = c.status(w).leases;
            (
                s.taken,
                s.handoffs_requested,
                s.handoffs_received,
                s.handoffs_forced,
                s.lost,
                s.assigned,
            )
        })
    };
    let before = moves(&cluster);
    tokio::time::sleep(failover * 2).await;
    assert_eq!(
        before,
        moves(&cluster),
        "leases moved in a balanced cluster"
    );
    cluster.stop_all().await;
}

/// Shards are split and merged while two workers consume: children start only after all their
/// parents finished, whichever worker held them, so per-key order holds; finished parents are
/// removed from the table once their children made progress.
pub async fn resharding_across_workers_keeps_order(tables: Tables, failover: Duration) {
    let mut cluster = Cluster::new(tables.clone(), 2, failover);
    cluster.start("w1").await;
    cluster.start("w2").await;
    cluster
        .wait_for("two workers balanced", |c| {
            c.held("w1") == 1 && c.held("w2") == 1
        })
        .await;
    let producer = cluster.produce_in_background(40, 600, 10);
    cluster
        .wait_deliveries("60 records", |all| all.len() >= 60)
        .await;
    let shards = cluster.model.open_shard_ids(STREAM).expect("shards");
    // Split both shards, then merge the two middle children (each from a different parent).
    let mut children = Vec::new();
    for shard in &shards {
        let range = cluster
            .model
            .shards(STREAM)
            .expect("shards")
            .into_iter()
            .find(|s| &s.shard_id == shard)
            .expect("shard listed")
            .hash_key_range;
        let middle = range.start + (range.end - range.start) / 2;
        children.extend(
            cluster
                .model
                .split_shard(STREAM, shard, &middle.to_string())
                .expect("split"),
        );
        cluster
            .wait_deliveries("120 records", |all| all.len() >= 120)
            .await;
    }
    let merged = cluster
        .model
        .merge_shards(STREAM, &children[1], &children[2])
        .expect("merge");
    let mut produced = producer.await.expect("producer");
    // A tail produced after the merge, so that the merge child has records however slowly (in
    // real time) the consumers went.
    produced.extend(produce(&cluster.model, STREAM, 40, 80, 600));
    cluster.wait_all_delivered(&produced).await;
    assert_order_per_key(&cluster.deliveries, &produced);
    assert!(
        cluster
            .deliveries
            .all()
            .iter()
            .any(|d| d.shard_id == merged),
        "the merge child was processed"
    );
    // Finished parents go once their children made progress (shard sync runs every failover).
    let table = (tables)().await;
    let gone =
        |key: &String, leases: &[kcl_core::lease::Lease]| !leases.iter().any(|l| &l.key == key);
    within(cluster.bound, "finished parents removed", async {
        loop {
            let leases = table.list().await.expect("list");
            if shards.iter().all(|s| gone(s, &leases)) {
                break;
            }
            tokio::time::sleep(failover).await;
        }
    })
    .await;
    cluster.stop_all().await;
}

/// Two streams through one lease table (multi-stream mode): two workers balanced over the
/// leases of both, records flowing into both, a shard of the second split, then a worker killed.
/// The survivor takes every lease of both streams; every record is processed, in order per key;
/// the split's children start after their parent; re-deliveries come only from the crash; every
/// lease is keyed `account:stream:creationEpoch:shardId` of one of the two streams.
pub async fn two_streams_survive_a_crash_and_a_split(tables: Tables, failover: Duration) {
    let mut cluster = Cluster::new(tables.clone(), 2, failover);
    cluster
        .model
        .create_stream(SECOND_STREAM, 2)
        .expect("create the second stream");
    cluster.streams = vec![STREAM.to_owned(), SECOND_STREAM.to_owned()];
    cluster.start("w1").await;
    cluster.start("w2").await;
    cluster
        .wait_for("two workers balanced over both streams", |c| {
            c.held("w1") == 2 && c.held("w2") == 2
        })
        .await;
    let mut produced = produce(&cluster.model, STREAM, 20, 200, 0);
    produced.extend(produce_keyed(
        &cluster.model,
        SECOND_STREAM,
        "pay",
        20,
        200,
        0,
    ));
    cluster
        .wait_deliveries("w1 processed records", |all| {
            all.iter().any(|d| d.worker == "w1")
        })
        .await;
    let parent = cluster
        .model
        .open_shard_ids(SECOND_STREAM)
        .expect("shards")
        .remove(0);
    let range = cluster
        .model
        .shards(SECOND_STREAM)
        .expect("shards")
        .into_iter()
        .find(|s| s.shard_id == parent)
        .expect("shard listed")
        .hash_key_range;
    let children = cluster
        .model
        .split_shard(
            SECOND_STREAM,
            &parent,
            &(range.start + (range.end - range.start) / 2).to_string(),
        )
        .expect("split");
    produced.extend(produce_keyed(
        &cluster.model,
        SECOND_STREAM,
        "pay",
        20,
        100,
        200,
    ));
    cluster.kill("w1").await;
    produced.extend(produce(&cluster.model, STREAM, 20, 100, 200));
    cluster.wait_all_delivered(&produced).await;
    assert_order_per_key(&cluster.deliveries, &produced);
    // Parent before children, within the second stream.
    let all = cluster.deliveries.all();
    let parent_name = format!("{SECOND_STREAM}/{parent}");
    for child in &children {
        let child_name = format!("{SECOND_STREAM}/{child}");
        let first_child = all
            .iter()
            .position(|d| d.shard_id == child_name)
            .unwrap_or_else(|| panic!("{child_name} delivered nothing"));
        let last_parent = all
            .iter()
            .rposition(|d| d.shard_id == parent_name)
            .unwrap_or_else(|| panic!("{parent_name} delivered nothing"));
        // w1 was killed, not paused: nothing of the parent may come after a child started, a
        // taking-over worker's re-deliveries of the parent included.
        assert!(
            last_parent < first_child,
            "{child_name} delivered before its parent finished"
        );
    }
    // Re-deliveries only from the crash: the first delivery was w1's.
    let mut first: BTreeMap<Bytes, &str> = BTreeMap::new();
    for d in &all {
        match first.get(&d.data) {
            Some(w) => assert_eq!(*w, "w1", "a re-delivery not caused by the crash: {d:?}"),
            None => {
                first.insert(d.data.clone(), d.worker.as_str());
            }
        }
    }
    // Every shard lease is a multi-stream lease of one of the two streams.
    let table = (tables)().await;
    for lease in table.list().await.expect("list") {
        if lease.heartbeat_of().is_some() {
            continue;
        }
        let (id, _) = StreamIdentifier::parse_lease_key(&lease.key).unwrap_or_else(|e| {
            panic!("{e}");
        });
        assert!(
            id.name() == STREAM || id.name() == SECOND_STREAM,
            "{}",
            lease.key
        );
    }
    cluster.stop_all().await;
}

/// The processor of the scenarios: accepts every batch (the harness logs what it completed).
struct Accept;

impl RecordProcessor for Accept {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        _input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

/// Puts `count` records over `keys` partition keys; payloads are `"<key>:<n>"` with `n` counting
/// per key, numbered on from `start`, so order per key can be checked. Returns them in order.
pub fn produce(
    model: &KinesisModel,
    stream: &str,
    keys: usize,
    count: usize,
    start: usize,
) -> Vec<(String, Bytes)> {
    produce_keyed(model, stream, "key", keys, count, start)
}

/// [`produce`] with partition keys `<prefix>-<i>` (streams sharing a test keep apart).
pub fn produce_keyed(
    model: &KinesisModel,
    stream: &str,
    prefix: &str,
    keys: usize,
    count: usize,
    start: usize,
) -> Vec<(String, Bytes)> {
    let mut out = Vec::with_capacity(count);
    for i in start..start + count {
        let key = format!("{prefix}-{}", i % keys);
        let data = Bytes::from(format!("{key}:{:08}", i / keys));
        model
            .put_record(stream, &key, data.clone(), None)
            .expect("put_record on the model");
        out.push((key, data));
    }
    out
}

/// Asserts that, for every partition key, the first deliveries are in production order.
pub fn assert_order_per_key(deliveries: &Deliveries, produced: &[(String, Bytes)]) {
    let mut expected: HashMap<String, Vec<Bytes>> = HashMap::new();
    for (k, d) in produced {
        expected.entry(k.clone()).or_default().push(d.clone());
    }
    let actual = deliveries.first_deliveries_by_key();
    for (key, want) in &expected {
        let got = actual.get(key).cloned().unwrap_or_default();
        let got: Vec<Bytes> = got.into_iter().filter(|d| want.contains(d)).collect();
        assert_eq!(
            &got, want,
            "first deliveries out of order or missing for {key}"
        );
    }
}

/// Runs `fut` with a bound of (virtual or real) time, panicking with `what` if it does not finish.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}
