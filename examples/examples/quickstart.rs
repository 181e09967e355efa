//! Quickstart: the whole consumer lifecycle on the embedded defaults, in about fifteen seconds.
//!
//! - an in-memory Kinesis stream (the model, with the real service limits) of four shards;
//! - a SQLite lease file in a temporary directory, opened by each worker with its own connection;
//! - a producer writing over many partition keys with `PutRecords`, retrying throttled entries;
//! - two workers in this process; a shard split while they consume; the first worker stopped
//!   gracefully mid-run, its shards handed over to the second;
//! - a summary: records produced and processed, duplicates, which worker processed which shard,
//!   and the lag at the end.
//!
//! Run it with `cargo run -p kcl-examples --example quickstart`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcl_core::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry};
use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{Worker, WorkerHandle};
use kcl_lease_sqlite::SqliteLeaseTable;
use tokio::time::Instant;

const STREAM: &str = "quickstart";
const APPLICATION: &str = "quickstart-app";

/// What every processor of the demo writes into: record id -> deliveries, shard -> workers.
#[derive(Default)]
struct Tally {
    deliveries: HashMap<String, u32>,
    shards: BTreeMap<String, Vec<String>>,
}

/// The processor a user would write: here it only counts what it sees.
struct Counter {
    worker: String,
    shard_id: String,
    tally: Arc<Mutex<Tally>>,
}

impl RecordProcessor for Counter {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let mut tally = self.tally.lock().map_err(|_| "tally lock poisoned")?;
        for record in input.records {
            let id = String::from_utf8_lossy(record.data()).into_owned();
            *tally.deliveries.entry(id).or_default() += 1;
        }
        let workers = tally.shards.entry(self.shard_id.clone()).or_default();
        if !workers.contains(&self.worker) {
            workers.push(self.worker.clone());
        }
        // Checkpoints happen automatically (every 10 000 records or 10 s by default) and at
        // shutdown; call `_checkpointer.checkpoint().await` for a manual one.
        Ok(())
    }
}

async fn start_worker(
    name: &str,
    model: &Arc<KinesisModel>,
    lease_file: &std::path::Path,
    tally: &Arc<Mutex<Tally>>,
) -> Result<(WorkerHandle, tokio::task::JoinHandle<()>), BoxError> {
    // Each worker opens the lease file with its own connection, as separate processes would.
    let leases = Arc::new(SqliteLeaseTable::open(lease_file, APPLICATION).await?);
    let (worker_name, tally) = (name.to_owned(), tally.clone());
    let factory = move |shard: &ShardInfo| Counter {
        worker: worker_name.clone(),
        shard_id: shard.shard_id.clone(),
        tally: tally.clone(),
    };
    // The application name comes with the lease table.
    let worker = Worker::builder(factory)
        .stream(STREAM)
        .worker_id(name)
        .backend(model.clone())
        .lease_table(leases)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(Duration::from_secs(3))
        .build()?;
    let handle = worker.handle();
    let task = tokio::spawn(async move {
        if let Err(error) = worker.run().await {
            eprintln!("worker failed: {error}");
        }
    });
    Ok((handle, task))
}

/// Writes `count` records with PutRecords, retrying the entries the shard throttled.
async fn produce(model: &KinesisModel, next: &mut usize, count: usize) -> Result<usize, BoxError> {
    let mut pending: Vec<PutRecordsEntry> = (0..count)
        .map(|i| {
            let n = *next + i;
            PutRecordsEntry::new(
                format!("user-{}", n % 97),
                Bytes::from(format!("record-{n}")),
            )
        })
        .collect();
    *next += count;
    let mut throttled = 0;
    while !pending.is_empty() {
        let output = model.put_records(STREAM, pending.clone())?;
        let failed: Vec<PutRecordsEntry> = pending
            .into_iter()
            .zip(&output.records)
            .filter(|(_, result)| !result.is_success())
            .map(|(entry, _)| entry)
            .collect();
        throttled += failed.len();
        pending = failed;
        if !pending.is_empty() {
            // A real producer would back off here; the model's limits refill every second.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(throttled)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_target(false)
        .init();
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let lease_file = dir.path().join("leases.sqlite");
    println!(
        "kcl-rs quickstart: in-memory stream, SQLite leases at {}",
        lease_file.display()
    );

    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, 4)?;
    let tally = Arc::new(Mutex::new(Tally::default()));

    let (w1, t1) = start_worker("worker-1", &model, &lease_file, &tally).await?;
    let (w2, t2) = start_worker("worker-2", &model, &lease_file, &tally).await?;

    let mut produced = 0usize;
    let mut throttled = 0usize;
    let mut split_done = false;
    let mut stopped_w1 = false;
    // Ten seconds of traffic: 400 records every 200 ms (2 000 records/s over four shards).
    for tick in 0..50 {
        throttled += produce(&model, &mut produced, 400).await?;
        if tick == 15 && !split_done {
            let shard = model.shards(STREAM)?.into_iter().find(|s| s.is_open());
            if let Some(shard) = shard {
                let mid = shard.hash_key_range.start / 2 + shard.hash_key_range.end / 2;
                let children = model.split_shard(STREAM, &shard.shard_id, &mid.to_string())?;
                println!(
                    "[{:>4.1}s] split {} into {} and {}",
                    started.elapsed().as_secs_f32(),
                    shard.shard_id,
                    children[0],
                    children[1]
                );
                split_done = true;
            }
        }
        if tick == 30 && !stopped_w1 {
            println!(
                "[{:>4.1}s] stopping worker-1 gracefully (final checkpoint, leases handed over)",
                started.elapsed().as_secs_f32()
            );
            w1.shutdown();
            stopped_w1 = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    t1.await?;

    // Let worker-2 drain the stream: wait until every record was seen (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = tally
            .lock()
            .map_err(|_| "tally lock poisoned")?
            .deliveries
            .len();
        if seen >= produced || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = w2.status();
    w2.shutdown();
    t2.await?;

    let tally = tally.lock().map_err(|_| "tally lock poisoned")?;
    let processed = tally.deliveries.len();
    let duplicates: u32 = tally.deliveries.values().map(|n| n - 1).sum();
    println!();
    println!("summary after {:.1}s", started.elapsed().as_secs_f32());
    println!(
        "  records produced     {produced} ({throttled} PutRecords entries throttled and retried)"
    );
    println!("  records processed    {processed} distinct");
    println!(
        "  missing              {}",
        produced.saturating_sub(processed)
    );
    println!("  duplicates           {duplicates}");
    println!("  shards and the workers that processed them:");
    for (shard, workers) in &tally.shards {
        let lag = status
            .shards
            .iter()
            .find(|s| &s.shard_id == shard)
            .and_then(|s| s.millis_behind_latest)
            .map(|ms| format!("lag {ms} ms at the end"))
            .unwrap_or_else(|| "finished (closed by the split) or idle".to_owned());
        println!("    {shard}  {:<22} {lag}", workers.join(" -> "));
    }
    if processed < produced {
        return Err(format!("{} records were not processed", produced - processed).into());
    }
    Ok(())
}
