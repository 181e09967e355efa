//! Worker throughput on the in-memory model: limits off, no-op processor, 16 shards, 1 KiB
//! records, one core (a current-thread runtime).
//!
//! Prints records/s and CPU time per record for
//! 1. the model alone (a bare `GetRecords` loop over every shard): the cost of the backend;
//! 2. the full worker (leases, retrieval, prefetch, de-aggregation check, processor calls,
//!    checkpoints);
//!
//! and the framework overhead per record = (2) - (1); then
//! 3. the full worker again with its metrics recorded into a real Prometheus recorder
//!    (`metrics-exporter-prometheus`, detailed level: a series per shard), alternating with
//!    runs without a recorder, and the extra CPU per record that costs (target under 5%).
//!
//! Run: `cargo bench -p kcl-core --bench worker_throughput` (env `KCL_BENCH_RECORDS` sets the
//! record count, default 1 000 000).
//!
//! CPU time on a shared machine is noisy; for an exact figure of what the metrics cost, count
//! instructions of one worker run with and without the recorder (`KCL_BENCH_ONLY=plain` or
//! `KCL_BENCH_ONLY=prometheus` runs just that), e.g.
//! `KCL_BENCH_RECORDS=200000 KCL_BENCH_ONLY=prometheus valgrind --tool=callgrind target/release/deps/worker_throughput-*`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kcl_core::backend::{StartingPosition, StreamBackend};
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::InMemoryLeaseTable;
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry};
use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_core::retrieval::PollingConfig;
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::Worker;

const STREAM: &str = "bench";
const SHARDS: u32 = 16;
const RECORD_SIZE: usize = 1024;

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the name.
    let total = ticks(11) + ticks(12);
    // Clock ticks per second: 100 on Linux unless configured otherwise.
    Duration::from_millis(total * 10)
}

/// CPU time of the calling thread, in nanoseconds (`/proc/thread-self/schedstat`).
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn fill(model: &KinesisModel, records: usize) {
    let payload = Bytes::from(vec![b'x'; RECORD_SIZE]);
    let mut n = 0;
    while n < records {
        let batch: Vec<PutRecordsEntry> = (n..(n + 500).min(records))
            .map(|i| PutRecordsEntry::new(format!("pk-{i}"), payload.clone()))
            .collect();
        n += batch.len();
        let out = model.put_records(STREAM, batch).expect("put_records");
        assert_eq!(out.failed_record_count, 0);
    }
}

struct Noop(Arc<AtomicU64>);

impl RecordProcessor for Noop {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.0
            .fetch_add(input.records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

async fn model_alone(model: &Arc<KinesisModel>) -> u64 {
    let mut total = 0;
    for shard in model.shard_ids(STREAM).expect("shards") {
        let mut it = Some(
            model
                .get_shard_iterator(STREAM, &shard, StartingPosition::TrimHorizon)
                .await
                .expect("iterator"),
        );
        while let Some(current) = it {
            let out = model
                .get_records(&current, 10_000)
                .await
                .expect("get_records");
            if out.records.is_empty() {
                break;
            }
            total += out.records.len() as u64;
            it = out.next_shard_iterator;
        }
    }
    total
}

async fn worker(model: &Arc<KinesisModel>, expected: u64, application: &str) {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let factory = move |_: &ShardInfo| Noop(c.clone());
    let polling = PollingConfig {
        idle_time_between_reads: Duration::from_millis(1),
        min_time_between_calls: Duration::ZERO,
        ..PollingConfig::default()
    };
    let worker = Worker::builder(factory)
        .application_name(application)
        .stream(STREAM)
        .worker_id("bench-worker")
        .backend(model.clone())
        .lease_table(Arc::new(InMemoryLeaseTable::new()))
        .initial_position(InitialPosition::TrimHorizon)
        .polling(polling)
        .build()
        .expect("config");
    let handle = worker.handle();
    let task = tokio::spawn(worker.run());
    while count.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.shutdown();
    task.await.expect("join").expect("worker");
}

fn report(name: &str, records: u64, wall: Duration, cpu: Duration) {
    println!(
        "{name:<28} {records:>9} records  {:>10.0} records/s  {:>7.0} ns CPU/record",
        records as f64 / wall.as_secs_f64(),
        cpu.as_nanos() as f64 / records as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this with few records.
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let records: usize = std::env::var("KCL_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 1_000_000 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    if let Ok(only) = std::env::var("KCL_BENCH_ONLY") {
        let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let run = || {
            runtime.block_on(async {
                let model = KinesisModel::new(ModelConfig::unlimited());
                model.create_stream(STREAM, SHARDS).expect("stream");
                fill(&model, records);
                worker(&model, records as u64, "only").await;
            })
        };
        match only.as_str() {
            "plain" => run(),
            "prometheus" => metrics::with_local_recorder(&prometheus, run),
            other => panic!("KCL_BENCH_ONLY={other}: expected plain or prometheus"),
        }
        return;
    }
    runtime.block_on(async {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream(STREAM, SHARDS).expect("stream");
        fill(&model, records);
        println!(
            "worker throughput: {SHARDS} shards, {RECORD_SIZE}-byte records, limits off, no-op processor, one core"
        );

        let (wall0, cpu0) = (Instant::now(), cpu_time());
        let read = model_alone(&model).await;
        let (model_wall, model_cpu) = (wall0.elapsed(), cpu_time() - cpu0);
        assert_eq!(read, records as u64);
        report("model alone (GetRecords)", read, model_wall, model_cpu);

        let (wall0, cpu0) = (Instant::now(), cpu_time());
        worker(&model, records as u64, "bench").await;
        let (worker_wall, worker_cpu) = (wall0.elapsed(), cpu_time() - cpu0);
        report("full worker", records as u64, worker_wall, worker_cpu);

        let overhead = worker_cpu.saturating_sub(model_cpu);
        println!(
            "framework overhead           {:>7.0} ns CPU/record (target < 1000 ns)",
            overhead.as_nanos() as f64 / records as f64
        );
    });

    // Metrics: the same worker with and without a Prometheus recorder, runs interleaved, each
    // on a model of its own (filled before the clock starts), timed by the thread's own CPU
    // clock (nanoseconds: everything runs on this one thread).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = prometheus.handle();
    let rounds = if quick { 1 } else { 5 };
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let metered = round % 2 == 1;
        let run = || {
            runtime.block_on(async {
                let model = KinesisModel::new(ModelConfig::unlimited());
                model.create_stream(STREAM, SHARDS).expect("stream");
                fill(&model, records);
                let cpu0 = thread_cpu_time();
                worker(&model, records as u64, &format!("run-{round}")).await;
                thread_cpu_time() - cpu0
            })
        };
        if metered {
            with.push(metrics::with_local_recorder(&prometheus, run));
        } else {
            without.push(run());
        }
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (without, with) = (median(without), median(with));
    let per = |d: Duration| d.as_nanos() as f64 / records as f64;
    let series = handle
        .render()
        .lines()
        .filter(|l| l.starts_with("kcl_"))
        .count();
    println!(
        "metrics: {:.0} ns CPU/record without a recorder, {:.0} with Prometheus ({series} series): {:+.1}% (target < 5%)",
        per(without),
        per(with),
        (per(with) / per(without) - 1.0) * 100.0
    );
}
