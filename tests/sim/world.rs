//! The simulated world: one in-memory Kinesis model, one shared lease table, a producer, and
//! worker incarnations started, stopped, killed, paused and faulted by a seeded schedule.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::deaggregation::Aggregator;
use kcl_core::lease::{LeaseConfig, LeaseTable};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{
    BoxError, ConcurrentProcessor, InitializationInput, ProcessRecordsInput, ProcessorFactory,
    RecordProcessor, ShardEndedInput, ShardInfo, ShutdownReason,
};
use kcl_core::retrieval::PollingConfig;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{
    CheckpointCadence, KeyOrdered, MultiStreamTracker, StreamConfig, Worker, WorkerHandle,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::SimConfig;
use super::faults::{Fault, FaultPlan, FaultWindow, Gate, GatedBackend, SimTable, WorkerTable};
use super::log::{Delivery, End, Incident, IncidentKind, Log, Produced, Session};

pub(crate) const STREAM: &str = "sim";
/// The second stream of two-stream runs.
pub(crate) const SECOND_STREAM: &str = "sim-2";

/// Processors of one incarnation.
struct SimFactory {
    log: Arc<Log>,
    gate: Arc<Gate>,
    incarnation: u32,
    worker: String,
    /// Checkpoint manually after some batches (besides the automatic cadence).
    manual_checkpoints: bool,
    /// Key-ordered: batches take a random time, so they complete out of order.
    key_ordered: bool,
}

impl ProcessorFactory for SimFactory {
    type Processor = SimProcessor;

    fn create(&self, shard: &ShardInfo) -> SimProcessor {
        SimProcessor {
            log: self.log.clone(),
            gate: self.gate.clone(),
            incarnation: self.incarnation,
            worker: self.worker.clone(),
            // Multi-stream workers: `<stream>/<shard>`, as shard ids repeat across streams.
            shard: match &shard.stream_id {
                Some(_) => format!("{}/{}", shard.stream, shard.shard_id),
                None => shard.shard_id.clone(),
            },
            session: None,
            manual_checkpoints: self.manual_checkpoints,
            key_ordered: self.key_ordered,
            batches: 0,
        }
    }
}

/// Records what it is given; freezes with its incarnation.
struct SimProcessor {
    log: Arc<Log>,
    gate: Arc<Gate>,
    incarnation: u32,
    worker: String,
    shard: String,
    session: Option<usize>,
    manual_checkpoints: bool,
    key_ordered: bool,
    batches: u64,
}

impl SimProcessor {
    /// Records a batch as delivered; in key-ordered mode after a processing time drawn from
    /// the batch (the same on every run of the seed).
    async fn deliver(&self, input: &ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        let entered = self.log.stamp();
        // A paused process does nothing; a batch begun before the pause completes after it.
        self.gate.pass().await;
        if self.key_ordered {
            let seed = input
                .records
                .iter()
                .fold(u64::from(self.incarnation), |h, r| {
                    r.data()
                        .iter()
                        .fold(h, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
                });
            let ms = fastrand::Rng::with_seed(seed).u64(0..60);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            self.gate.pass().await;
        }
        let delivered = self.log.stamp();
        let session = self.session.ok_or("process_records before initialize")?;
        self.log.with(|e| {
            e.deliveries.extend(input.records.iter().map(|r| Delivery {
                entered,
                delivered,
                session,
                position: r.position(),
                key: r.partition_key().to_owned(),
                payload: r.data().clone(),
            }))
        });
        Ok(())
    }

    fn end(&mut self, end: End) {
        let Some(id) = self.session else { return };
        let at = self.log.stamp();
        self.log.with(|e| {
            let s = &mut e.sessions[id];
            if s.ended.is_none() {
                s.ended = Some((at, end));
            }
        });
        self.log
            .detail(|| format!("session {id}: {} ends: {end:?}", self.shard));
    }
}

impl RecordProcessor for SimProcessor {
    type Error = BoxError;

    async fn initialize(&mut self, input: InitializationInput) -> Result<(), BoxError> {
        // Stamped on entry: a paused worker's initialize finishes only after the resume, but it
        // began (with the checkpoint it was given) before.
        let started = self.log.stamp();
        self.gate.pass().await;
        let id = self.log.with(|e| {
            e.sessions.push(Session {
                incarnation: self.incarnation,
                worker: self.worker.clone(),
                shard: self.shard.clone(),
                started,
                resumed_from: input.checkpoint.clone(),
                ended: None,
            });
            e.sessions.len() - 1
        });
        self.session = Some(id);
        self.log.detail(|| {
            format!(
                "session {id}: inc {} starts {} from {}",
                self.incarnation, self.shard, input.checkpoint
            )
        });
        Ok(())
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.deliver(&input).await?;
        self.batches += 1;
        if self.manual_checkpoints && self.batches.is_multiple_of(3) {
            // Users may checkpoint themselves; a refusal (lease lost) is theirs to ignore.
            let _ = checkpointer.checkpoint().await;
        }
        Ok(())
    }

    async fn lease_lost(&mut self) -> Result<(), BoxError> {
        self.end(End::LeaseLost);
        Ok(())
    }

    async fn shard_ended(
        &mut self,
        _input: ShardEndedInput,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.gate.pass().await;
        self.end(End::ShardEnded);
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        _reason: ShutdownReason,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.gate.pass().await;
        self.end(End::Shutdown);
        Ok(())
    }
}

impl ConcurrentProcessor for SimProcessor {
    async fn process_batch(&self, input: ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        self.deliver(&input).await
    }
}

/// A running worker incarnation.
struct Incarnation {
    id: u32,
    handle: WorkerHandle,
    task: JoinHandle<()>,
    gate: Arc<Gate>,
    faults: Arc<FaultPlan>,
}

/// The world of one run.
pub(crate) struct World {
    pub config: SimConfig,
    pub seed: u64,
    rng: fastrand::Rng,
    pub model: Arc<KinesisModel>,
    pub table: Arc<SimTable>,
    pub log: Arc<Log>,
    /// Worker slots (ids `w0`, `w1`, ...) and their running incarnation.
    slots: BTreeMap<String, Option<Incarnation>>,
    /// Graceful stops in progress.
    stopping: Vec<(String, JoinHandle<()>)>,
    next_incarnation: u32,
}

impl World {
    pub fn new(seed: u64, config: SimConfig) -> Self {
        let log = Arc::new(Log::new());
        let model = KinesisModel::new(ModelConfig::new());
        model
            .create_stream(STREAM, config.initial_shards)
            .expect("create stream");
        if config.streams > 1 {
            model
                .create_stream(SECOND_STREAM, config.initial_shards)
                .expect("create the second stream");
        }
        let slots = (0..config.workers)
            .map(|i| (format!("w{i}"), None))
            .collect();
        Self {
            rng: fastrand::Rng::with_seed(seed),
            table: SimTable::new(log.clone(), config.stale_reads, seed),
            model,
            log,
            slots,
            stopping: Vec::new(),
            next_incarnation: 0,
            config,
            seed,
        }
    }

    fn lease_config(&self) -> LeaseConfig {
        let mut lease = LeaseConfig::with_failover(self.config.failover);
        lease.renewal = self.config.renewal;
        lease
    }

    fn running(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, inc)| inc.is_some())
            .map(|(w, _)| w.clone())
            .collect()
    }

    fn idle_slots(&self) -> Vec<String> {
        let stopping: HashSet<&String> = self.stopping.iter().map(|(w, _)| w).collect();
        self.slots
            .iter()
            .filter(|(w, inc)| inc.is_none() && !stopping.contains(w))
            .map(|(w, _)| w.clone())
            .collect()
    }

    fn start(&mut self, worker: &str) {
        let id = self.next_incarnation;
        self.next_incarnation += 1;
        let gate = Arc::new(Gate::new());
        let faults = FaultPlan::new(self.seed ^ (u64::from(id) << 32) ^ 0xfa17);
        let table: Arc<dyn LeaseTable> = Arc::new(WorkerTable {
            table: self.table.clone(),
            incarnation: id,
            worker: worker.to_owned(),
            gate: gate.clone(),
            faults: faults.clone(),
            log: self.log.clone(),
            call_limit: if self.config.large {
                50_000_000
            } else {
                2_000_000
            },
        });
        let backend = Arc::new(GatedBackend::new(self.model.clone(), gate.clone()));
        let factory = SimFactory {
            log: self.log.clone(),
            gate: gate.clone(),
            incarnation: id,
            worker: worker.to_owned(),
            manual_checkpoints: self.rng.bool(),
            key_ordered: self.config.max_in_flight > 1,
        };
        let builder = Worker::builder(factory).application_name("sim");
        let builder = if self.config.streams > 1 {
            builder.multi_stream(MultiStreamTracker::new([
                StreamConfig::parse(STREAM).expect("stream name"),
                StreamConfig::parse(SECOND_STREAM).expect("stream name"),
            ]))
        } else {
            builder.stream(STREAM)
        };
        let mut builder = builder
            .worker_id(worker)
            .backend(backend)
            .lease_table(table)
            .initial_position(InitialPosition::TrimHorizon)
            .lease_config(self.lease_config())
            .polling(PollingConfig {
                max_records_per_call: self.config.max_records_per_call,
                ..PollingConfig::default()
            })
            .checkpoint_cadence(CheckpointCadence {
                every_records: Some(self.config.every_records),
                every_interval: Some(Duration::from_secs(5)),
            })
            .shard_sync_interval(Duration::from_secs(10))
            .parent_poll_interval(Duration::from_secs(1));
        if self.config.max_in_flight > 1 {
            // A window of 100 records (plus one fetch of 50) keeps what a crash re-delivers
            // within the bound the duplicate check allows.
            builder = builder.key_ordered(
                KeyOrdered::new(self.config.max_in_flight)
                    .with_max_batch_records(10)
                    .with_max_window_records(100),
            );
        }
        let worker_ = builder.build().expect("valid worker configuration");
        let handle = worker_.handle();
        let task = tokio::spawn(async move {
            let _ = worker_.run().await;
        });
        self.log.trace(format!("start {worker} (incarnation {id})"));
        self.slots.insert(
            worker.to_owned(),
            Some(Incarnation {
                id,
                handle,
                task,
                gate,
                faults,
            }),
        );
    }

    async fn kill(&mut self, worker: &str) {
        let Some(Some(inc)) = self.slots.insert(worker.to_owned(), None) else {
            return;
        };
        inc.task.abort();
        let _ = inc.task.await;
        let at = self.log.stamp();
        self.log.end_sessions_of(inc.id, End::Killed);
        self.log.with(|e| {
            e.incidents.push(Incident {
                incarnation: inc.id,
                kind: IncidentKind::Killed,
                start: at,
                end: at,
            })
        });
        self.log
            .trace(format!("kill {worker} (incarnation {})", inc.id));
    }

    fn stop(&mut self, worker: &str) {
        let Some(Some(inc)) = self.slots.insert(worker.to_owned(), None) else {
            return;
        };
        self.log
            .trace(format!("stop {worker} gracefully (incarnation {})", inc.id));
        inc.handle.shutdown();
        let log = self.log.clone();
        let name = worker.to_owned();
        let id = inc.id;
        let task = tokio::spawn(async move {
            let _ = inc.task.await;
            // Anything still open (a stop cut short by the shutdown timeout) ended ungracefully.
            log.end_sessions_of(id, End::Killed);
            log.trace(format!("{name} (incarnation {id}) stopped"));
        });
        self.stopping.push((worker.to_owned(), task));
    }

    fn pause(&mut self, worker: &str, length: Duration) {
        let Some(Some(inc)) = self.slots.get(worker) else {
            return;
        };
        if inc.gate.is_paused() {
            return;
        }
        let gate = inc.gate.clone();
        let id = inc.id;
        let log = self.log.clone();
        self.log.trace(format!(
            "pause {worker} (incarnation {id}) for {:.1}s",
            length.as_secs_f64()
        ));
        gate.pause();
        let start = log.stamp();
        tokio::spawn(async move {
            tokio::time::sleep(length).await;
            let end = log.stamp();
            log.with(|e| {
                e.incidents.push(Incident {
                    incarnation: id,
                    kind: IncidentKind::Paused,
                    start,
                    end,
                })
            });
            log.trace(format!(
                "resume incarnation {id} (pause {start:?} to {end:?})"
            ));
            gate.resume();
        });
    }

    fn faults(&mut self, worker: &str) {
        let Some(Some(inc)) = self.slots.get(worker) else {
            return;
        };
        let length = Duration::from_millis(self.rng.u64(1_000..20_000));
        let partition = self.rng.f64() < 0.25;
        let window = FaultWindow {
            start: Instant::now(),
            end: Instant::now() + length,
            probability: if partition {
                1.0
            } else {
                0.05 + self.rng.f64() * 0.45
            },
            only: partition.then_some(Fault::Unavailable),
        };
        self.log.trace(format!(
            "store faults for {worker} (incarnation {}) for {:.1}s, p={:.2}{}",
            inc.id,
            length.as_secs_f64(),
            window.probability,
            if partition { " (partition)" } else { "" }
        ));
        inc.faults.add(window);
    }

    fn split(&mut self) {
        let shards = self.model.shards(STREAM).expect("shards");
        let open: Vec<_> = shards.iter().filter(|s| s.is_open()).collect();
        let cap = if self.config.large {
            self.config.initial_shards as usize + 64
        } else {
            8
        };
        if open.is_empty() || open.len() >= cap {
            return;
        }
        let shard = open[self.rng.usize(..open.len())];
        let range = shard.hash_key_range;
        if range.end - range.start < 2 {
            return;
        }
        let offset = (u128::from(self.rng.u64(..)) << 64 | u128::from(self.rng.u64(..)))
            % (range.end - range.start - 1)
            + 1;
        let at = range.start + offset;
        match self
            .model
            .split_shard(STREAM, &shard.shard_id, &at.to_string())
        {
            Ok(children) => self
                .log
                .trace(format!("split {} into {children:?}", shard.shard_id)),
            Err(error) => self.log.trace(format!("split refused: {error}")),
        }
    }

    fn merge(&mut self) {
        let shards = self.model.shards(STREAM).expect("shards");
        let mut open: Vec<_> = shards.iter().filter(|s| s.is_open()).collect();
        open.sort_by_key(|s| s.hash_key_range.start);
        let pairs: Vec<(usize, usize)> = (1..open.len())
            .filter(|&i| open[i - 1].hash_key_range.end + 1 == open[i].hash_key_range.start)
            .map(|i| (i - 1, i))
            .collect();
        if pairs.is_empty() {
            return;
        }
        let (a, b) = pairs[self.rng.usize(..pairs.len())];
        match self
            .model
            .merge_shards(STREAM, &open[a].shard_id, &open[b].shard_id)
        {
            Ok(child) => self.log.trace(format!(
                "merge {} and {} into {child}",
                open[a].shard_id, open[b].shard_id
            )),
            Err(error) => self.log.trace(format!("merge refused: {error}")),
        }
    }

    /// One event of the schedule.
    async fn event(&mut self) {
        let running = self.running();
        let idle = self.idle_slots();
        let c = &self.config;
        let weights = [
            (if idle.is_empty() { 0 } else { 3 }, 0),
            (if running.len() > 1 { 2 } else { 0 }, 1),
            (if c.kills && !running.is_empty() { 2 } else { 0 }, 2),
            (
                if c.zombies && !running.is_empty() {
                    2
                } else {
                    0
                },
                3,
            ),
            (if c.resharding { 1 } else { 0 }, 4),
            (if c.resharding { 1 } else { 0 }, 5),
            (
                if c.store_faults && !running.is_empty() {
                    2
                } else {
                    0
                },
                6,
            ),
        ];
        let total: u32 = weights.iter().map(|(w, _)| w).sum();
        if total == 0 {
            return;
        }
        let mut pick = self.rng.u32(..total);
        let mut kind = 0;
        for (w, k) in weights {
            if pick < w {
                kind = k;
                break;
            }
            pick -= w;
        }
        // Large fleets: each event hits a group of workers (up to a twentieth of them).
        let group = |rng: &mut fastrand::Rng, of: usize| {
            if c.large {
                rng.usize(1..=(of / 20).max(1)).min(of)
            } else {
                1
            }
        };
        let pick = |rng: &mut fastrand::Rng, from: &[String], n: usize| {
            let mut from = from.to_vec();
            rng.shuffle(&mut from);
            from.truncate(n);
            from
        };
        match kind {
            0 => {
                let n = group(&mut self.rng, idle.len());
                for worker in pick(&mut self.rng, &idle, n) {
                    self.start(&worker);
                }
            }
            1 => {
                // Keep one worker: large fleets stop a group and start it again (a rolling
                // restart) by the start events that follow.
                let n = group(&mut self.rng, running.len() - 1);
                for worker in pick(&mut self.rng, &running, n) {
                    self.stop(&worker);
                }
            }
            2 => {
                let n = group(&mut self.rng, running.len());
                for worker in pick(&mut self.rng, &running, n) {
                    self.kill(&worker).await;
                }
            }
            3 => {
                let n = group(&mut self.rng, running.len());
                for worker in pick(&mut self.rng, &running, n) {
                    let length = Duration::from_millis(
                        self.rng
                            .u64(500..=3 * self.config.failover.as_millis() as u64),
                    );
                    self.pause(&worker, length);
                }
            }
            4 => {
                for _ in 0..group(&mut self.rng, 60) {
                    self.split();
                }
            }
            5 => {
                for _ in 0..group(&mut self.rng, 60) {
                    self.merge();
                }
            }
            _ => {
                let n = group(&mut self.rng, running.len());
                for worker in pick(&mut self.rng, &running, n) {
                    self.faults(&worker);
                }
            }
        }
    }

    /// Runs the schedule, then a calm phase until every record is delivered; returns whether
    /// everything was delivered within the bound.
    pub async fn run(&mut self) -> bool {
        let start = Instant::now();
        let producer = tokio::spawn(produce(
            self.model.clone(),
            self.log.clone(),
            self.seed,
            self.config.keys,
            self.config.streams,
            self.config.kpl,
            start + self.config.produce_for,
        ));
        // Begin with one or two workers; a large fleet with all of them at once.
        let first = if self.config.large {
            self.config.workers
        } else {
            self.rng.usize(1..=2.min(self.config.workers))
        };
        for i in 0..first {
            self.start(&format!("w{i}"));
        }
        if self.config.large {
            self.log.with(|e| e.trace.clear());
            self.log.trace(format!(
                "start w0 to w{} (incarnations 0 to {})",
                first - 1,
                first - 1
            ));
        }
        let gaps = if self.config.large {
            200..3_000
        } else {
            500..12_000
        };
        while start.elapsed() < self.config.chaos_for {
            let gap = Duration::from_millis(self.rng.u64(gaps.clone()));
            tokio::time::sleep(gap).await;
            self.event().await;
        }

        // Calm: no more faults or pauses; make sure some workers run.
        self.log.trace("calm: faults off, everyone resumed");
        for inc in self.slots.values().flatten() {
            inc.faults.clear();
            inc.gate.resume();
        }
        let want = if self.config.large {
            self.rng
                .usize(self.config.workers / 4..=self.config.workers / 2)
        } else {
            self.rng.usize(1..=self.config.workers.min(3))
        };
        while self.running().len() < want {
            let idle = self.idle_slots();
            let Some(worker) = idle.first().cloned() else {
                break;
            };
            self.start(&worker);
        }
        let produced = producer.await.expect("producer");
        self.log.trace(format!("producer done: {produced} records"));
        let want: HashSet<Bytes> = self
            .log
            .with(|e| e.produced.iter().map(|p| p.payload.clone()).collect());
        let bound = self.config.failover * 6 + Duration::from_secs(120);
        let drained = tokio::time::timeout(bound, async {
            loop {
                let delivered: HashSet<Bytes> = self
                    .log
                    .with(|e| e.deliveries.iter().map(|d| d.payload.clone()).collect());
                if want.is_subset(&delivered) {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
        .await
        .is_ok();
        self.log.trace(if drained {
            "everything delivered"
        } else {
            "NOT everything delivered in time"
        });
        if !drained {
            // Where the undelivered records sit: the unfinished leases and their holders.
            let rows = self.table.list().await.unwrap_or_default();
            let held: HashSet<(String, String)> = self
                .slots
                .iter()
                .filter_map(|(w, inc)| inc.as_ref().map(|inc| (w, inc)))
                .flat_map(|(w, inc)| {
                    inc.handle
                        .status()
                        .held_leases
                        .into_iter()
                        .map(move |l| (w.clone(), l))
                })
                .collect();
            for row in rows.iter().filter(|r| !r.is_finished()) {
                let holds = row
                    .owner
                    .as_ref()
                    .is_some_and(|o| held.contains(&(o.clone(), row.key.clone())));
                self.log.trace(format!(
                    "  lease {} owner {:?} (held: {holds}) marker {:?} counter {} load {:?} pokes {} checkpoint {}",
                    row.key,
                    row.owner,
                    row.checkpoint_owner,
                    row.counter,
                    row.load,
                    row.owner_switches_since_checkpoint,
                    row.checkpoint
                ));
            }
        }
        // Stop everyone gracefully.
        for worker in self.running() {
            self.stop(&worker);
        }
        for (_, task) in std::mem::take(&mut self.stopping) {
            let _ = task.await;
        }
        drained
    }
}

/// Produces records until `until`, over `keys` partition keys, sometimes as KPL aggregates of one
/// key's consecutive records. Returns how many user records it produced.
async fn produce(
    model: Arc<KinesisModel>,
    log: Arc<Log>,
    seed: u64,
    keys: usize,
    streams: usize,
    kpl: bool,
    until: Instant,
) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_0fda_7a00);
    let mut counters = vec![0u64; keys];
    let mut produced = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(20..200))).await;
        for _ in 0..rng.usize(1..=8) {
            let k = rng.usize(..keys);
            let key = format!("key-{k}");
            let records = if kpl && rng.f64() < 0.15 {
                rng.usize(2..=5)
            } else {
                1
            };
            let mut payloads = Vec::with_capacity(records);
            for _ in 0..records {
                payloads.push(Bytes::from(format!("{key}:{:06}", counters[k])));
                counters[k] += 1;
            }
            let data = if records == 1 {
                payloads[0].clone()
            } else {
                let mut aggregator = Aggregator::new(51_200);
                for p in &payloads {
                    let flushed = aggregator
                        .try_add(&key, None, p.clone())
                        .expect("aggregate");
                    assert!(flushed.is_none(), "small records fit one aggregate");
                }
                aggregator.flush().expect("one aggregate").data
            };
            // Retry throttled writes of the same record, so per-key order holds.
            loop {
                // Each key lives in one stream, so its order is one shard's at a time.
                let stream = if streams > 1 && k % 2 == 1 {
                    SECOND_STREAM
                } else {
                    STREAM
                };
                match model.put_record(stream, &key, data.clone(), None) {
                    Ok(_) => break,
                    Err(error) if error.is_throttling() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(error) => panic!("put_record: {error}"),
                }
            }
            produced += records;
            log.with(|e| {
                e.produced
                    .extend(payloads.into_iter().map(|payload| Produced {
                        key: key.clone(),
                        payload,
                    }))
            });
        }
    }
    produced
}

/// One line describing a configuration, for reports.
pub(crate) fn describe(config: &SimConfig) -> String {
    format!(
        "{}{} workers, {} shards, {} keys, failover {:?}, renewal {:?}, cadence {} records, \
         faults {}, zombies {}, kills {}, resharding {}, kpl {}, in flight {}, stale reads up to {:?}",
        if config.large { "large fleet: " } else { "" },
        config.workers,
        config.initial_shards,
        config.keys,
        config.failover,
        config.renewal,
        config.every_records,
        config.store_faults,
        config.zombies,
        config.kills,
        config.resharding,
        config.kpl,
        config.max_in_flight,
        config.stale_reads
    )
}
