//! Shared helpers for the integration tests: a recording processor, a producer and waiting helpers.
//!
//! Every test runs under tokio's paused clock where it can, and waits for events (records seen),
//! never for wall-clock time.
//!
//! Each test binary of this crate mounts this module (`mod support;`) and uses what it needs.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::BackendError;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::model::KinesisModel;
use kcl_core::processor::{
    BoxError, InitializationInput, ProcessRecordsInput, ProcessorFactory, RecordProcessor,
    ShardEndedInput, ShardInfo, ShutdownReason,
};
use kcl_core::record::ExtendedSequenceNumber;
use kcl_testkit::hooks::{BackendCall, BackendHooks, HookedBackend};
use tokio::sync::Notify;

pub mod metrics;

/// Sends the crate's tracing output to stderr when `RUST_LOG` is set (for tools, not tests).
pub fn init_tracing_to_stderr() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Sends the crate's tracing output to the test's captured output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// One record as a processor saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// When the processor got it (tokio's clock).
    pub at: tokio::time::Instant,
    pub worker: String,
    pub shard_id: String,
    pub position: ExtendedSequenceNumber,
    pub partition_key: String,
    pub data: Bytes,
}

/// Lifecycle calls, in order, per shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Initialize(ExtendedSequenceNumber),
    ShardEnded,
    Shutdown,
    LeaseLost,
}

/// A lifecycle call with when and where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// When (tokio's clock).
    pub at: tokio::time::Instant,
    /// The worker.
    pub worker: String,
    /// The shard.
    pub shard_id: String,
    /// The call.
    pub call: Call,
}

/// Everything the processors of a test saw.
#[derive(Default, Debug)]
pub struct Recorder {
    seen: Mutex<Vec<Seen>>,
    calls: Mutex<BTreeMap<String, Vec<Call>>>,
    events: Mutex<Vec<Event>>,
    changed: Notify,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn calls(&self, shard: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .get(shard)
            .cloned()
            .unwrap_or_default()
    }

    /// Every lifecycle call, in order, with its time, worker and shard.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn push(&self, seen: impl IntoIterator<Item = Seen>) {
        self.seen.lock().unwrap().extend(seen);
        self.changed.notify_waiters();
    }

    fn call(&self, worker: &str, shard: &str, call: Call) {
        self.events.lock().unwrap().push(Event {
            at: tokio::time::Instant::now(),
            worker: worker.to_owned(),
            shard_id: shard.to_owned(),
            call: call.clone(),
        });
        self.calls
            .lock()
            .unwrap()
            .entry(shard.to_owned())
            .or_default()
            .push(call);
        self.changed.notify_waiters();
    }

    /// Waits (in virtual time, at most `limit`) until `done` holds for the recorder.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&Recorder) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if done(self) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(limit, wait).await.is_err() {
            panic!(
                "condition not reached within {limit:?} of virtual time; saw {} records",
                self.seen().len()
            );
        }
    }

    /// Distinct (shard, position) pairs seen.
    pub fn distinct(&self) -> usize {
        let seen = self.seen();
        let mut set = std::collections::HashSet::new();
        for s in &seen {
            set.insert((s.shard_id.clone(), s.position.clone()));
        }
        set.len()
    }

    /// Data payloads of first deliveries, grouped by partition key, in delivery order.
    pub fn first_deliveries_by_key(&self) -> HashMap<String, Vec<Bytes>> {
        let mut out: HashMap<String, Vec<Bytes>> = HashMap::new();
        let mut seen_set = std::collections::HashSet::new();
        for s in self.seen() {
            if seen_set.insert(s.data.clone()) {
                out.entry(s.partition_key.clone()).or_default().push(s.data);
            }
        }
        out
    }
}

/// How a [`RecordingProcessor`] misbehaves.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Fail `process_records` this many times in total (across shards) before succeeding.
    pub fail_times: Arc<AtomicU32>,
    /// Panic instead of returning an error.
    pub panic: bool,
    /// Fail forever on batches containing this payload.
    pub poison: Option<Bytes>,
    /// Checkpoint every record manually.
    pub checkpoint_each_batch: bool,
}

/// A processor recording what it sees into a [`Recorder`].
pub struct RecordingProcessor {
    pub worker: String,
    pub shard_id: String,
    pub recorder: Arc<Recorder>,
    pub faults: Faults,
}

impl RecordingProcessor {
    /// A factory for workers named `worker`.
    pub fn factory(worker: &str, recorder: Arc<Recorder>, faults: Faults) -> RecordingFactory {
        RecordingFactory {
            worker: worker.to_owned(),
            recorder,
            faults,
        }
    }
}

/// Creates [`RecordingProcessor`]s.
#[derive(Clone)]
pub struct RecordingFactory {
    worker: String,
    recorder: Arc<Recorder>,
    faults: Faults,
}

impl ProcessorFactory for RecordingFactory {
    type Processor = RecordingProcessor;

    fn create(&self, shard: &ShardInfo) -> RecordingProcessor {
        RecordingProcessor {
            worker: self.worker.clone(),
            // Multi-stream workers: `<stream>/<shard>`, so the shards of different streams
            // (which share ids) stay apart.
            shard_id: match &shard.stream_id {
                Some(_) => format!("{}/{}", shard.stream, shard.shard_id),
                None => shard.shard_id.clone(),
            },
            recorder: self.recorder.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl RecordProcessor for RecordingProcessor {
    type Error = BoxError;

    async fn initialize(&mut self, input: InitializationInput) -> Result<(), BoxError> {
        self.recorder.call(
            &self.worker,
            &self.shard_id,
            Call::Initialize(input.checkpoint),
        );
        Ok(())
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        if let Some(poison) = &self.faults.poison
            && input.records.iter().any(|r| r.data() == poison)
        {
            return Err("poison record".into());
        }
        let left = self.faults.fail_times.load(Ordering::SeqCst);
        if left > 0 {
            self.faults.fail_times.store(left - 1, Ordering::SeqCst);
            if self.faults.panic {
                panic!("injected panic");
            }
            return Err("injected failure".into());
        }
        let at = tokio::time::Instant::now();
        self.recorder.push(input.records.iter().map(|r| Seen {
            at,
            worker: self.worker.clone(),
            shard_id: self.shard_id.clone(),
            position: r.position(),
            partition_key: r.partition_key().to_owned(),
            data: r.data().clone(),
        }));
        if self.faults.checkpoint_each_batch {
            checkpointer.checkpoint().await?;
        }
        Ok(())
    }

    async fn lease_lost(&mut self) -> Result<(), BoxError> {
        self.recorder
            .call(&self.worker, &self.shard_id, Call::LeaseLost);
        Ok(())
    }

    async fn shard_ended(
        &mut self,
        _input: ShardEndedInput,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.recorder
            .call(&self.worker, &self.shard_id, Call::ShardEnded);
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        _reason: ShutdownReason,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.recorder
            .call(&self.worker, &self.shard_id, Call::Shutdown);
        Ok(())
    }
}

/// A worker started by [`start_worker`], stopped within a bound of (virtual) time.
pub struct Running {
    /// Its handle.
    pub handle: kcl_core::worker::WorkerHandle,
    /// Its task.
    pub task: tokio::task::JoinHandle<()>,
    /// How long stopping may take (virtual time).
    pub bound: Duration,
}

impl Running {
    /// Stops the worker gracefully and waits for it.
    pub async fn stop(self) {
        self.handle.shutdown();
        within(self.bound, "graceful shutdown", self.task)
            .await
            .unwrap();
    }

    /// Stops the worker immediately and waits for it.
    pub async fn kill(self) {
        self.handle.shutdown_now();
        within(self.bound, "immediate shutdown", self.task)
            .await
            .unwrap();
    }
}

/// Starts worker `name` of application `app` on `stream`, reading from `TRIM_HORIZON`, with
/// `configure` applied last; `bound` limits its stops.
pub fn start_worker<F: ProcessorFactory>(
    (app, stream, name): (&str, &str, &str),
    backend: Arc<dyn kcl_core::backend::StreamBackend>,
    table: &Arc<dyn kcl_core::lease::LeaseTable>,
    factory: F,
    bound: Duration,
    configure: impl FnOnce(kcl_core::worker::WorkerBuilder<F>) -> kcl_core::worker::WorkerBuilder<F>,
) -> Running {
    init_tracing();
    let builder = kcl_core::worker::Worker::builder(factory)
        .application_name(app)
        .stream(stream)
        .worker_id(name)
        .backend(backend)
        .lease_table(table.clone())
        .initial_position(kcl_core::shard_sync::InitialPosition::TrimHorizon);
    let worker = configure(builder).build().unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(async move { worker.run().await.unwrap() });
    Running {
        handle,
        task,
        bound,
    }
}

/// Starts a multi-stream worker `name` of application `app` on `backend` and `table`, consuming
/// the streams `tracker` lists, with a [`RecordingProcessor`] recording into `recorder`.
pub fn start_multi_stream_worker(
    name: &str,
    backend: Arc<dyn kcl_core::backend::StreamBackend>,
    table: &Arc<dyn kcl_core::lease::LeaseTable>,
    recorder: &Arc<Recorder>,
    tracker: kcl_core::worker::MultiStreamTracker,
    bound: Duration,
) -> Running {
    init_tracing();
    let worker = kcl_core::worker::Worker::builder(RecordingProcessor::factory(
        name,
        recorder.clone(),
        Faults::default(),
    ))
    .application_name("app")
    .multi_stream(tracker)
    .worker_id(name)
    .backend(backend)
    .lease_table(table.clone())
    .initial_position(kcl_core::shard_sync::InitialPosition::TrimHorizon)
    .build()
    .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(async move { worker.run().await.unwrap() });
    Running {
        handle,
        task,
        bound,
    }
}

/// Puts `count` records over `keys` partition keys; payloads are `"<key>:<n>"` with `n` counting
/// per key, so order per key can be checked. Returns the payloads per key.
pub fn produce(
    model: &KinesisModel,
    stream: &str,
    keys: usize,
    count: usize,
    start: usize,
) -> Vec<(String, Bytes)> {
    let mut out = Vec::with_capacity(count);
    for i in start..start + count {
        let key = format!("key-{}", i % keys);
        let data = Bytes::from(format!("{key}:{:08}", i / keys));
        model
            .put_record(stream, &key, data.clone(), None)
            .expect("put_record");
        out.push((key, data));
    }
    out
}

/// The shards of a [`split_then_merge`].
#[derive(Debug)]
pub struct Resharded {
    /// The stream's first shard, split.
    pub split: String,
    /// The stream's second shard, merged with `high`.
    pub other: String,
    /// The upper child of the split, merged.
    pub high: String,
    /// The merge child of `high` and `other`.
    pub merged: String,
}

impl Resharded {
    /// The shards that ended: the split shard and both parents of the merge.
    pub fn parents(&self) -> [&String; 3] {
        [&self.split, &self.other, &self.high]
    }
}

/// The resharding both retrieval modes are tested through: the stream's first shard split in the
/// middle of its range, 400 records, its upper child merged with the second shard, 400 more
/// (over 40 keys, appended to `produced`, numbered on from its length).
pub fn split_then_merge(
    model: &KinesisModel,
    stream: &str,
    produced: &mut Vec<(String, Bytes)>,
) -> Resharded {
    let shards = model.shards(stream).unwrap();
    let (s0, s1) = (&shards[0], &shards[1]);
    let mid = s0.hash_key_range.start / 2 + s0.hash_key_range.end / 2;
    let [_low, high] = model
        .split_shard(stream, &s0.shard_id, &mid.to_string())
        .unwrap();
    produced.extend(produce(model, stream, 40, 400, produced.len()));
    let merged = model.merge_shards(stream, &high, &s1.shard_id).unwrap();
    produced.extend(produce(model, stream, 40, 400, produced.len()));
    Resharded {
        split: s0.shard_id.clone(),
        other: s1.shard_id.clone(),
        high,
        merged,
    }
}

/// Asserts the parents of a [`split_then_merge`] ended (`SHARD_END` recorded) and the merge child
/// names both its parents.
pub async fn assert_parents_ended(table: &dyn kcl_core::lease::LeaseTable, shards: &Resharded) {
    for parent in shards.parents() {
        let lease = table.get(parent).await.unwrap().unwrap();
        assert_eq!(
            lease.checkpoint,
            ExtendedSequenceNumber::ShardEnd,
            "{parent}"
        );
    }
    let merged = table.get(&shards.merged).await.unwrap().unwrap();
    assert_eq!(merged.parent_shard_ids.len(), 2);
}

/// Asserts that, for every partition key, the first deliveries are in production order.
pub fn assert_order_per_key(recorder: &Recorder, produced: &[(String, Bytes)]) {
    let mut expected: HashMap<String, Vec<Bytes>> = HashMap::new();
    for (k, d) in produced {
        expected.entry(k.clone()).or_default().push(d.clone());
    }
    let actual = recorder.first_deliveries_by_key();
    for (key, want) in &expected {
        let got = actual.get(key).cloned().unwrap_or_default();
        let got: Vec<Bytes> = got.into_iter().filter(|d| want.contains(d)).collect();
        assert_eq!(
            &got, want,
            "first deliveries out of order or missing for {key}"
        );
    }
}

/// Runs `fut` with a bound of virtual time, panicking with `what` if it does not finish.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not finish within {limit:?} of virtual time"),
    }
}

/// Hooks counting the `GetRecords` calls through a [`HookedBackend`] and the errors they
/// returned, by kind.
#[derive(Debug, Default)]
pub struct ReadCounts {
    pub expired_iterators: std::sync::atomic::AtomicU64,
    pub throttled: std::sync::atomic::AtomicU64,
    pub get_records_calls: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl BackendHooks for ReadCounts {
    async fn after(&self, call: &BackendCall<'_>, outcome: Result<(), &BackendError>) {
        if !matches!(call, BackendCall::GetRecords { .. }) {
            return;
        }
        self.get_records_calls.fetch_add(1, Ordering::SeqCst);
        match outcome {
            Err(BackendError::ExpiredIterator(_)) => {
                self.expired_iterators.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) if e.is_throttling() => {
                self.throttled.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }
}

/// A real backend whose reads are counted ([`ReadCounts`], through `hooks()`).
pub type CountingBackend = HookedBackend<ReadCounts>;

/// Wraps `inner` in a [`CountingBackend`].
pub fn counting_backend(inner: Arc<dyn kcl_core::backend::StreamBackend>) -> Arc<CountingBackend> {
    Arc::new(HookedBackend::new(inner, ReadCounts::default()))
}

pub mod faults;
