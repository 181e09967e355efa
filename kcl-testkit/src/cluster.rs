//! The cluster harness: several workers running your processor on the in-memory Kinesis model
//! and one lease table, a producer, and the actions that test a consumer: kill, pause and
//! resume, graceful stop, join, split, merge, lease-store faults, read throttling.
//!
//! Run it under tokio's paused clock (`#[tokio::test(start_paused = true)]`, which needs tokio's
//! `test-util` feature) on the current-thread runtime: minutes of failover and resharding then
//! take milliseconds, and a run is deterministic from its seed (the harness seeds `fastrand`,
//! which the framework draws its jitter and identifiers from).
//!
//! ```
//! # use std::time::Duration;
//! # use kcl_core::checkpoint::Checkpointer;
//! # use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
//! # struct MyProcessor;
//! # impl RecordProcessor for MyProcessor {
//! #     type Error = BoxError;
//! #     async fn process_records(&mut self, _: ProcessRecordsInput<'_>, _: &mut Checkpointer)
//! #         -> Result<(), BoxError> { Ok(()) }
//! # }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use kcl_testkit::Cluster;
//!
//! let mut cluster = Cluster::builder(|_: &ShardInfo| MyProcessor).workers(3).seed(7).start().await;
//! cluster.produce(300).await;
//! cluster.split(0);
//! cluster.kill(1).await;
//! cluster.produce(300).await;
//! cluster.finish().await.assert_complete_and_ordered();
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::StreamBackend;
use kcl_core::lease::{InMemoryLeaseTable, LeaseConfig, LeaseTable};
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry};
use kcl_core::processor::ProcessorFactory;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{CheckpointCadence, Worker, WorkerBuilder, WorkerError, WorkerHandle};
use kcl_lease_sqlite::SqliteLeaseTable;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::faults::{FaultWindow, Faults};
use crate::hooks::{HookedBackend, HookedTable};
use crate::observe::{CheckpointLog, Deliveries, Observed};
use crate::report::Report;

/// The stream the cluster consumes.
pub const STREAM: &str = "testkit-stream";
/// The application name of its workers.
pub const APPLICATION: &str = "testkit-app";

/// Where the cluster's leases live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Store {
    /// One in-memory table (the default).
    #[default]
    Memory,
    /// A SQLite file in a temporary directory, one connection per worker (as separate
    /// processes on one host would have).
    Sqlite,
}

/// Changes each worker's builder (timings, policies, retrieval) before it is built.
pub type Configure<F> =
    Arc<dyn Fn(WorkerBuilder<Observed<F>>) -> WorkerBuilder<Observed<F>> + Send + Sync>;

/// Builds a [`Cluster`]; see [`Cluster::builder`].
pub struct ClusterBuilder<F: ProcessorFactory> {
    factory: Arc<F>,
    workers: usize,
    shards: u32,
    keys: usize,
    seed: u64,
    store: Store,
    failover: Duration,
    cadence: CheckpointCadence,
    model: ModelConfig,
    configure: Option<Configure<F>>,
}

impl<F: ProcessorFactory> std::fmt::Debug for ClusterBuilder<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterBuilder")
            .field("workers", &self.workers)
            .field("shards", &self.shards)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl<F: ProcessorFactory> ClusterBuilder<F> {
    /// How many workers start (default 2).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// How many shards the stream has (default 4).
    pub fn shards(mut self, n: u32) -> Self {
        self.shards = n.max(1);
        self
    }

    /// Over how many partition keys the producer writes (default 50).
    pub fn keys(mut self, n: usize) -> Self {
        self.keys = n.max(1);
        self
    }

    /// The seed everything is drawn from (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Where leases live (default [`Store::Memory`]).
    pub fn store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// The workers' failover time (default 10 s, the framework's default).
    pub fn failover(mut self, failover: Duration) -> Self {
        self.failover = failover;
        self
    }

    /// The workers' automatic checkpoint cadence (default every 25 records or 10 s, so that
    /// a crash re-delivers a handful of records rather than thousands).
    pub fn checkpoint_cadence(mut self, cadence: CheckpointCadence) -> Self {
        self.cadence = cadence;
        self
    }

    /// The model's settings (default: the service's limits, [`ModelConfig::new`]).
    pub fn model(mut self, config: ModelConfig) -> Self {
        self.model = config;
        self
    }

    /// Changes every worker's builder last, e.g. to set a failure policy or retrieval.
    pub fn configure(
        mut self,
        configure: impl Fn(WorkerBuilder<Observed<F>>) -> WorkerBuilder<Observed<F>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.configure = Some(Arc::new(configure));
        self
    }

    /// Creates the stream and starts the workers.
    ///
    /// # Panics
    ///
    /// If the stream cannot be created, the SQLite file cannot be opened, or a worker's
    /// configuration is invalid: this is test code, and a broken setup should fail the test.
    pub async fn start(self) -> Cluster<F> {
        fastrand::seed(self.seed);
        let model = KinesisModel::new(self.model);
        model
            .create_stream(STREAM, self.shards)
            .expect("the testkit creates its stream");
        let store = match self.store {
            Store::Memory => Leases::Memory(Arc::new(InMemoryLeaseTable::new())),
            Store::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory");
                let path = dir.path().join("leases.sqlite");
                Leases::Sqlite { _dir: dir, path }
            }
        };
        let mut cluster = Cluster {
            factory: self.factory,
            model,
            store,
            deliveries: Arc::new(Deliveries::default()),
            checkpoints: Arc::new(CheckpointLog::default()),
            slots: Vec::new(),
            produced: Vec::new(),
            per_key: vec![0; self.keys],
            seed: self.seed,
            started: Instant::now(),
            schedule: Vec::new(),
            failover: self.failover,
            cadence: self.cadence,
            configure: self.configure,
            rng: fastrand::Rng::with_seed(self.seed ^ 0x5eed),
        };
        for _ in 0..self.workers {
            cluster.join().await;
        }
        cluster
    }
}

enum Leases {
    Memory(Arc<InMemoryLeaseTable>),
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
}

/// One worker of the cluster, across its restarts.
struct Slot {
    name: String,
    incarnation: u32,
    faults: Arc<Faults>,
    running: Option<(WorkerHandle, JoinHandle<Result<(), WorkerError>>)>,
}

/// Several workers consuming one stream of the model. See the [module docs](self).
pub struct Cluster<F: ProcessorFactory> {
    factory: Arc<F>,
    model: Arc<KinesisModel>,
    store: Leases,
    deliveries: Arc<Deliveries>,
    checkpoints: Arc<CheckpointLog>,
    slots: Vec<Slot>,
    produced: Vec<(String, Bytes)>,
    per_key: Vec<u64>,
    seed: u64,
    started: Instant,
    schedule: Vec<(Duration, String)>,
    failover: Duration,
    cadence: CheckpointCadence,
    configure: Option<Configure<F>>,
    rng: fastrand::Rng,
}

impl<F: ProcessorFactory> std::fmt::Debug for Cluster<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("seed", &self.seed)
            .field("workers", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<F: ProcessorFactory> Cluster<F> {
    /// A cluster running processors made by `factory`.
    pub fn builder(factory: F) -> ClusterBuilder<F> {
        ClusterBuilder {
            factory: Arc::new(factory),
            workers: 2,
            shards: 4,
            keys: 50,
            seed: 0,
            store: Store::Memory,
            failover: LeaseConfig::default().failover_time,
            cadence: CheckpointCadence {
                every_records: Some(25),
                every_interval: Some(Duration::from_secs(10)),
            },
            model: ModelConfig::new(),
            configure: None,
        }
    }

    /// The model: write to it, reshard it, change its limits.
    pub fn model(&self) -> &Arc<KinesisModel> {
        &self.model
    }

    /// Everything the processors completed so far.
    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// The handle of worker `i`, while it runs.
    pub fn handle(&self, i: usize) -> Option<&WorkerHandle> {
        self.slots.get(i)?.running.as_ref().map(|(h, _)| h)
    }

    /// The number of worker slots (running or not).
    pub fn workers(&self) -> usize {
        self.slots.len()
    }

    fn note(&mut self, what: impl Into<String>) {
        self.schedule.push((self.started.elapsed(), what.into()));
    }

    async fn table_for(&self, faults: &Arc<Faults>) -> Arc<dyn LeaseTable> {
        let base: Arc<dyn LeaseTable> = match &self.store {
            Leases::Memory(table) => table.clone(),
            Leases::Sqlite { path, .. } => Arc::new(
                SqliteLeaseTable::open(path, APPLICATION)
                    .await
                    .expect("the testkit opens its lease file"),
            ),
        };
        // Checkpoints are judged by what the store accepted; faults sit outside, where a
        // lost reply hides an accepted write from the worker.
        let checked: Arc<dyn LeaseTable> =
            Arc::new(HookedTable::new(base, self.checkpoints.clone()));
        Arc::new(HookedTable::new(checked, faults.clone()))
    }

    async fn launch(&mut self, i: usize) {
        let (name, incarnation, faults) = {
            let slot = &self.slots[i];
            (slot.name.clone(), slot.incarnation, slot.faults.clone())
        };
        let table = self.table_for(&faults).await;
        let backend: Arc<dyn StreamBackend> =
            Arc::new(HookedBackend::new(self.model.clone(), faults.clone()));
        let factory = Observed::new(
            self.factory.clone(),
            &name,
            incarnation,
            self.deliveries.clone(),
            faults.gate().clone(),
        );
        let mut builder = Worker::builder(factory)
            .application_name(APPLICATION)
            .stream(STREAM)
            .worker_id(&name)
            .backend(backend)
            .lease_table(table)
            .initial_position(InitialPosition::TrimHorizon)
            .failover_time(self.failover)
            .checkpoint_cadence(self.cadence)
            .parent_poll_interval(self.failover / 20);
        if let Some(configure) = &self.configure {
            builder = configure(builder);
        }
        let worker = builder.build().expect("a valid worker configuration");
        let handle = worker.handle();
        let task = tokio::spawn(worker.run());
        self.slots[i].running = Some((handle, task));
    }

    /// Starts a new worker; returns its index.
    pub async fn join(&mut self) -> usize {
        let i = self.slots.len();
        let faults = Faults::new(self.seed.wrapping_add(i as u64 + 1));
        self.slots.push(Slot {
            name: format!("w{i}"),
            incarnation: 0,
            faults,
            running: None,
        });
        self.launch(i).await;
        self.note(format!("start w{i}"));
        i
    }

    /// Starts worker `i` again after a kill or a stop (the same worker id, a new incarnation).
    /// Does nothing if it runs.
    pub async fn restart(&mut self, i: usize) {
        if self.slots[i].running.is_some() {
            return;
        }
        self.slots[i].incarnation += 1;
        self.slots[i].faults.gate().resume();
        self.launch(i).await;
        let slot = &self.slots[i];
        let what = format!("restart {} (incarnation {})", slot.name, slot.incarnation);
        self.note(what);
    }

    /// Kills worker `i`: its task is dropped mid-flight, nothing released, no final
    /// checkpoint, as a process killed with SIGKILL. Others take over after the failover time.
    pub async fn kill(&mut self, i: usize) {
        if let Some((_, task)) = self.slots[i].running.take() {
            task.abort();
            let _ = task.await;
            let what = format!("kill {}", self.slots[i].name);
            self.note(what);
        }
    }

    /// Stops worker `i` gracefully (final checkpoints, leases handed over) and waits for it.
    ///
    /// # Panics
    ///
    /// If the worker's `run` returned an error.
    pub async fn stop(&mut self, i: usize) {
        if let Some((handle, task)) = self.slots[i].running.take() {
            handle.shutdown();
            let result = task.await.expect("the worker task");
            result.expect("the worker stopped cleanly");
            let what = format!("stop {}", self.slots[i].name);
            self.note(what);
        }
    }

    /// Pauses worker `i`: its lease-store calls, Kinesis calls and processor calls freeze, as a
    /// process stopped in a long GC pause. Resumed, it is a zombie until it notices.
    pub fn pause(&mut self, i: usize) {
        self.slots[i].faults.gate().pause();
        let what = format!("pause {}", self.slots[i].name);
        self.note(what);
    }

    /// Resumes worker `i`.
    pub fn resume(&mut self, i: usize) {
        self.slots[i].faults.gate().resume();
        let what = format!("resume {}", self.slots[i].name);
        self.note(what);
    }

    /// Injects lease-store faults into worker `i`'s calls during `window`.
    pub fn store_faults(&mut self, i: usize, window: FaultWindow) {
        let what = format!(
            "store faults on {} for {:?} (p = {})",
            self.slots[i].name,
            window.end.saturating_duration_since(window.start),
            window.probability
        );
        self.slots[i].faults.store_faults(window);
        self.note(what);
    }

    /// Throttles worker `i`'s reads during `window`.
    pub fn throttle_reads(&mut self, i: usize, window: FaultWindow) {
        let what = format!(
            "read throttling on {} for {:?} (p = {})",
            self.slots[i].name,
            window.end.saturating_duration_since(window.start),
            window.probability
        );
        self.slots[i].faults.throttle_reads(window);
        self.note(what);
    }

    /// The open shards, by shard id.
    pub fn open_shards(&self) -> Vec<kcl_core::backend::Shard> {
        let mut open: Vec<_> = self
            .model
            .shards(STREAM)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.is_open())
            .collect();
        open.sort_by_key(|s| s.hash_key_range.start);
        open
    }

    /// Splits the `n`-th open shard (by hash range) in the middle of its range; returns the
    /// children. Does nothing (and returns `None`) if there is no such shard.
    pub fn split(&mut self, n: usize) -> Option<[String; 2]> {
        let shard = self.open_shards().into_iter().nth(n)?;
        let range = shard.hash_key_range;
        let mid = range.start / 2 + range.end / 2;
        let children = self
            .model
            .split_shard(STREAM, &shard.shard_id, &mid.to_string())
            .ok()?;
        self.note(format!("split {} into {children:?}", shard.shard_id));
        Some(children)
    }

    /// Merges the `n`-th open shard (by hash range) with the next one; returns the child. Does
    /// nothing (and returns `None`) if there is no such pair.
    pub fn merge(&mut self, n: usize) -> Option<String> {
        let open = self.open_shards();
        let (a, b) = (open.get(n)?, open.get(n + 1)?);
        let child = self
            .model
            .merge_shards(STREAM, &a.shard_id, &b.shard_id)
            .ok()?;
        self.note(format!(
            "merge {} and {} into {child}",
            a.shard_id, b.shard_id
        ));
        Some(child)
    }

    /// Waits `duration` (of virtual time, under the paused clock).
    pub async fn run_for(&mut self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    /// Writes `count` records over the keys (keys drawn from the seed), retrying what the
    /// stream throttles. Payloads are `"<key>:<n>"`, `n` counting per key.
    pub async fn produce(&mut self, count: usize) {
        let mut pending: Vec<(String, Bytes)> = (0..count)
            .map(|_| {
                let k = self.rng.usize(..self.per_key.len());
                let n = self.per_key[k];
                self.per_key[k] += 1;
                let key = format!("key-{k}");
                let data = Bytes::from(format!("{key}:{n:08}"));
                (key, data)
            })
            .collect();
        self.produced.extend(pending.iter().cloned());
        // In order per key: one record at a time per key, retried until stored.
        while !pending.is_empty() {
            let mut next = Vec::new();
            let mut blocked = std::collections::HashSet::new();
            for (key, data) in pending {
                if blocked.contains(&key) {
                    next.push((key, data));
                    continue;
                }
                let entry = PutRecordsEntry::new(key.clone(), data.clone());
                match self.model.put_records(STREAM, vec![entry]) {
                    Ok(out) if out.failed_record_count == 0 => {}
                    _ => {
                        blocked.insert(key.clone());
                        next.push((key, data));
                    }
                }
            }
            pending = next;
            if !pending.is_empty() {
                // The model's write limits refill every second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        self.note(format!("produce {count}"));
    }

    /// Ends the run: faults off, every worker resumed, a worker started if none runs; waits
    /// (at most `limit` of virtual time) until every produced record was completed; stops the
    /// workers gracefully; reports.
    pub async fn finish_within(mut self, limit: Duration) -> Report {
        self.note("calm: faults off, everyone resumed");
        for slot in &self.slots {
            slot.faults.clear();
            slot.faults.gate().resume();
        }
        if self.slots.iter().all(|s| s.running.is_none()) {
            if self.slots.is_empty() {
                self.join().await;
            } else {
                self.restart(0).await;
            }
        }
        let wanted: std::collections::HashSet<Bytes> =
            self.produced.iter().map(|(_, d)| d.clone()).collect();
        let delivered = self.deliveries.clone();
        let all = async {
            delivered
                .wait_until(|ds| {
                    let got: std::collections::HashSet<&Bytes> =
                        ds.iter().map(|d| &d.data).collect();
                    wanted.iter().all(|w| got.contains(w))
                })
                .await
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            self.note(format!("not everything delivered within {limit:?}"));
        }
        for i in 0..self.slots.len() {
            if let Some((handle, task)) = self.slots[i].running.take() {
                handle.shutdown();
                match task.await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => self.note(format!("{} failed: {error}", self.slots[i].name)),
                    Err(error) => self.note(format!("{} task: {error}", self.slots[i].name)),
                }
            }
        }
        Report::new(
            self.seed,
            std::mem::take(&mut self.schedule),
            &self.produced,
            &self.deliveries.all(),
            self.checkpoints.accepted(),
            self.checkpoints.regressions(),
        )
    }

    /// [`Cluster::finish_within`] ten minutes of virtual time.
    pub async fn finish(self) -> Report {
        self.finish_within(Duration::from_secs(600)).await
    }
}
