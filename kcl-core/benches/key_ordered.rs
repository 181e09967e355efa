//! Key-ordered concurrency within one shard: records/s with a processor that awaits 10 ms per
//! record (a slow downstream call), at 1, 4, 10 and 32 batches in flight.
//!
//! One shard of the in-memory model with the service's read limits (5 `GetRecords` calls and
//! 2 MB/s per shard; writes unlimited so the stream fills fast), 100-byte records over 1,000
//! partition keys, default polling, real time on a current-thread runtime. For each N a fresh
//! stream holds `N x 800` records (about 8 s of work at the ideal rate); the rate is taken from
//! the first delivery to the last record done, so lease and reader start-up are left out. With
//! N = 1 the worker takes its ordinary path (one batch at a time through `process_records`).
//!
//! Target: at least 0.9 N times the N = 1 figure, up to the shard's read limit (2 MB/s is 20,000
//! of these records a second; 5 calls of up to 10,000 records, 50,000).
//!
//! Run: `cargo bench -p kcl-core --bench key_ordered` (env `KCL_BENCH_SECONDS` sets the seconds
//! of work per N, default 8; `cargo test --benches` runs it with 0.3).

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::InMemoryLeaseTable;
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry};
use kcl_core::processor::{
    BoxError, ConcurrentProcessor, ProcessRecordsInput, RecordProcessor, ShardInfo,
};
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{KeyOrdered, Worker};

const STREAM: &str = "slow";
const PER_RECORD: Duration = Duration::from_millis(10);

/// First delivery, last record done, records done.
#[derive(Default)]
struct Progress {
    first: Option<Instant>,
    last: Option<Instant>,
    done: u64,
}

/// Awaits 10 ms per record.
struct Slow(Arc<Mutex<Progress>>);

impl Slow {
    async fn run(&self, records: usize) -> Result<(), BoxError> {
        {
            let mut p = self.0.lock().map_err(|_| "poisoned")?;
            p.first.get_or_insert_with(Instant::now);
        }
        for _ in 0..records {
            tokio::time::sleep(PER_RECORD).await;
            let mut p = self.0.lock().map_err(|_| "poisoned")?;
            p.done += 1;
            p.last = Some(Instant::now());
        }
        Ok(())
    }
}

impl RecordProcessor for Slow {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.run(input.records.len()).await
    }
}

impl ConcurrentProcessor for Slow {
    async fn process_batch(&self, input: ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        self.run(input.records.len()).await
    }
}

fn fill(model: &KinesisModel, records: usize) {
    let payload = Bytes::from(vec![b'x'; 100]);
    let mut n = 0;
    while n < records {
        let batch: Vec<PutRecordsEntry> = (n..(n + 500).min(records))
            .map(|i| PutRecordsEntry::new(format!("key-{}", i % 1000), payload.clone()))
            .collect();
        n += batch.len();
        let out = model.put_records(STREAM, batch).expect("put_records");
        assert_eq!(out.failed_record_count, 0);
    }
}

/// Records/s at `in_flight` batches in flight, over `records` records.
async fn rate(in_flight: usize, records: usize) -> f64 {
    let model = KinesisModel::new(ModelConfig::new().with_write_limits(None, None));
    model.create_stream(STREAM, 1).expect("stream");
    fill(&model, records);
    let progress = Arc::new(Mutex::new(Progress::default()));
    let p = progress.clone();
    let factory = move |_: &ShardInfo| Slow(p.clone());
    let mut builder = Worker::builder(factory)
        .application_name(format!("slow-{in_flight}"))
        .stream(STREAM)
        .worker_id("bench")
        .backend(model.clone())
        .lease_table(Arc::new(InMemoryLeaseTable::new()))
        .initial_position(InitialPosition::TrimHorizon);
    if in_flight > 1 {
        builder = builder.key_ordered(KeyOrdered::new(in_flight));
    }
    let worker = builder.build().expect("config");
    let handle = worker.handle();
    let task = tokio::spawn(worker.run());
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if progress.lock().expect("lock").done >= records as u64 {
            break;
        }
    }
    handle.shutdown_now();
    task.await.expect("join").expect("worker");
    let p = progress.lock().expect("lock");
    let (Some(first), Some(last)) = (p.first, p.last) else {
        return 0.0;
    };
    p.done as f64 / last.duration_since(first).as_secs_f64()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test") || cfg!(debug_assertions);
    let seconds: f64 = std::env::var("KCL_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 0.3 } else { 8.0 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    println!(
        "key-ordered concurrency: one shard (read limits on), a processor awaiting {PER_RECORD:?} per record, 1,000 keys"
    );
    let mut base = None;
    for n in [1usize, 4, 10, 32] {
        let records = ((n as f64) * seconds / PER_RECORD.as_secs_f64()).ceil() as usize;
        let rate = runtime.block_on(rate(n, records.max(20)));
        let base = *base.get_or_insert(rate);
        let ratio = rate / base;
        println!(
            "N = {n:>2}  {records:>6} records  {rate:>8.0} records/s  {ratio:>5.2}x N=1  ({:.0}% of N x N=1; target >= 90%)",
            ratio / n as f64 * 100.0
        );
    }
}
