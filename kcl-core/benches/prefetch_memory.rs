//! Peak memory of one worker holding 1,000 lagging shards, with and without the worker-wide
//! prefetch budget.
//!
//! The in-memory model holds 1,000 shards of 1 MiB each (1,024 records of 1 KiB); a backend
//! wrapper copies every record it returns, as a network client allocates fresh buffers. The
//! processor never finishes its first batch, so every shard's retriever fetches ahead until a
//! bound stops it. Each configuration runs in a process of its own (this binary re-runs
//! itself), and reports how much the resident set grew over the filled model:
//!
//! - the default worker-wide budget (256 MiB, shared fairly), per-shard bounds at their
//!   defaults (8 MiB, 30,000 records);
//! - per-shard bounds only (a worker-wide budget far above them): the whole stream, 1 GiB, ends
//!   up in the prefetch queues; with more data per shard it would be 1,000 x 8 MiB.
//!
//! Run: `cargo bench -p kcl-core --bench prefetch_memory`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::backend::{
    BackendError, GetRecordsOutput, ListShardsPage, ListShardsRequest, ShardIterator,
    StartingPosition, StreamBackend, StreamDescription,
};
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::InMemoryLeaseTable;
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry};
use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_core::record::Record;
use kcl_core::retrieval::WorkerPrefetch;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::Worker;

const STREAM: &str = "lagging";
const RECORD_SIZE: usize = 1024;

/// The resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The model, with every record copied on the way out (a network client's fresh buffers).
#[derive(Debug)]
struct Copying(Arc<KinesisModel>, Arc<AtomicU64>);

#[async_trait]
impl StreamBackend for Copying {
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError> {
        self.0.describe_stream(stream).await
    }

    async fn list_shards(
        &self,
        request: ListShardsRequest,
    ) -> Result<ListShardsPage, BackendError> {
        self.0.list_shards(request).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        self.0.get_shard_iterator(stream, shard_id, position).await
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        let mut output = self.0.get_records(iterator, limit).await?;
        let bytes: usize = output
            .records
            .iter()
            .map(|r| r.data().len() + r.partition_key().len())
            .sum();
        self.1.fetch_add(bytes as u64, Ordering::Relaxed);
        output.records = output
            .records
            .into_iter()
            .map(|r| {
                let mut copy = Record::new(
                    r.partition_key().to_owned(),
                    Bytes::copy_from_slice(r.data()),
                    r.sequence_number().clone(),
                );
                if let Some(at) = r.approximate_arrival() {
                    copy = copy.with_approximate_arrival(at);
                }
                copy
            })
            .collect();
        Ok(output)
    }
}

/// Never finishes a batch: everything fetched stays queued.
struct Stuck(Arc<AtomicU64>);

impl RecordProcessor for Stuck {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        _input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn run_one(shards: u32, per_shard: usize, prefetch: WorkerPrefetch) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream(STREAM, shards).expect("stream");
        let payload = vec![b'x'; RECORD_SIZE];
        for shard in 0..shards {
            // An explicit hash key inside each shard's range puts the same amount everywhere.
            let span = u128::MAX / u128::from(shards);
            let key = (span * u128::from(shard) + span / 2).to_string();
            for chunk in 0..per_shard.div_ceil(500) {
                let n = (per_shard - chunk * 500).min(500);
                let batch = (0..n)
                    .map(|i| {
                        PutRecordsEntry::new(format!("pk-{i}"), Bytes::copy_from_slice(&payload))
                            .with_explicit_hash_key(key.clone())
                    })
                    .collect();
                let out = model.put_records(STREAM, batch).expect("put");
                assert_eq!(out.failed_record_count, 0);
            }
        }
        let baseline = rss();
        let fetched = Arc::new(AtomicU64::new(0));
        let batches = Arc::new(AtomicU64::new(0));
        let b = batches.clone();
        let worker = Worker::builder(move |_: &ShardInfo| Stuck(b.clone()))
            .application_name("memory")
            .stream(STREAM)
            .worker_id("w")
            .backend(Arc::new(Copying(model.clone(), fetched.clone())))
            .lease_table(Arc::new(InMemoryLeaseTable::new()))
            .initial_position(InitialPosition::TrimHorizon)
            .worker_prefetch(prefetch)
            .build()
            .expect("config");
        let handle = worker.handle();
        let task = tokio::spawn(worker.run());
        // Sample the resident set until it has not grown for 5 s (or a minute passed).
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(baseline));
        let sampler = {
            let (done, peak) = (done.clone(), peak.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let started = Instant::now();
        let (mut last, mut since) = (0, Instant::now());
        while started.elapsed() < Duration::from_secs(60)
            && since.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = peak.load(Ordering::Relaxed);
            if now > last + (1 << 20) {
                (last, since) = (now, Instant::now());
            }
        }
        done.store(true, Ordering::Relaxed);
        sampler.join().expect("sampler");
        let grown = peak.load(Ordering::Relaxed).saturating_sub(baseline);
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        println!(
            "worker-wide budget {:>8}: {} shards processing a batch, {:.0} MiB of records \
             fetched and held, resident set grew {:.0} MiB",
            if prefetch.max_bytes > 1 << 40 {
                "none".to_owned()
            } else {
                format!("{} MiB", prefetch.max_bytes >> 20)
            },
            batches.load(Ordering::Relaxed),
            mib(fetched.load(Ordering::Relaxed)),
            mib(grown),
        );
        handle.shutdown_now();
        task.await.expect("join").expect("worker");
    });
}

/// A number from the environment.
fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let (mut shards, mut per_shard): (u32, usize) = if quick { (50, 64) } else { (1_000, 1_024) };
    shards = env("KCL_BENCH_SHARDS").unwrap_or(shards);
    per_shard = env("KCL_BENCH_RECORDS_PER_SHARD").unwrap_or(per_shard);
    let budget: usize = env("KCL_BENCH_BUDGET_MIB").unwrap_or(256);
    match std::env::var("KCL_PREFETCH_MODE").as_deref() {
        Ok("budget") => run_one(
            shards,
            per_shard,
            WorkerPrefetch {
                max_bytes: budget << 20,
                ..WorkerPrefetch::default()
            },
        ),
        Ok("per-shard") => run_one(
            shards,
            per_shard,
            WorkerPrefetch {
                max_records: usize::MAX / 2,
                max_bytes: usize::MAX / 2,
            },
        ),
        Ok(other) => panic!("KCL_PREFETCH_MODE={other}: expected budget or per-shard"),
        Err(_) => {
            println!(
                "prefetch memory: one worker, {shards} lagging shards of {} MiB, \
                 {RECORD_SIZE}-byte records copied on read, a processor stuck in its first \
                 batch",
                (per_shard * RECORD_SIZE) >> 20
            );
            let exe = std::env::current_exe().expect("own path");
            for mode in ["budget", "per-shard"] {
                let status = std::process::Command::new(&exe)
                    .args(std::env::args().skip(1))
                    .env("KCL_PREFETCH_MODE", mode)
                    .status()
                    .expect("run");
                assert!(status.success(), "{mode} run failed");
            }
        }
    }
}
