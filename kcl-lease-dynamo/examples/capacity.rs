//! Measures the DynamoDB requests and capacity units a kcl-rs worker consumes per lease-hour, and
//! per takeover, against a real DynamoDB API endpoint.
//!
//! ```text
//! scripts/servers/moto.sh install target/moto
//! export AWS_ENDPOINT_URL_DYNAMODB=$(scripts/servers/moto.sh start target/moto | tail -n 1)
//! cargo run -p kcl-lease-dynamo --example capacity -- [LEASES] [WORKERS] [FAILOVER_SECS] [WINDOW_SECS]
//! scripts/servers/moto.sh stop target/moto
//! ```
//!
//! Defaults: 8 leases, 2 workers, 10 s failover (kcl-core's and Java KCL's default), a 60 s
//! window. The workers read the in-memory Kinesis model, where a producer writes 5 records/s to
//! every shard, and checkpoint at kcl-core's default cadence (every 10 s or 10 000 records).
//!
//! Every lease-table call is counted by kind (renewal, checkpoint, take, release, scan, ...). The
//! billed units are computed from the measured item sizes with DynamoDB's rules (writes: 1 unit
//! per started KB of the larger of the old and new item; strongly consistent reads: 1 unit per
//! started 4 KB, a Scan page summing its items first), because local servers do not bill: moto
//! reports a fixed number of units per request kind, printed beside for reference.
//!
//! Run it against real DynamoDB only on a throwaway table name: it creates `kcl-capacity-*`
//! tables and does not delete them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::Credentials;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::{Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_core::shard_sync::InitialPosition;
use kcl_core::worker::{Worker, WorkerHandle};
use kcl_lease_dynamo::{ConsumedCapacityTotals, DynamoLeaseTable};

const STREAM: &str = "capacity";

/// Counts lease-table calls by kind.
#[derive(Debug)]
struct Counting {
    inner: DynamoLeaseTable,
    calls: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

impl Counting {
    fn count(&self, kind: &'static str) {
        *self.calls.lock().unwrap().entry(kind).or_default() += 1;
    }
}

fn kind_of(update: &LeaseUpdate) -> &'static str {
    if update.checkpoint.is_some() {
        "checkpoint"
    } else if update.pending_checkpoint.is_some() {
        "prepare checkpoint"
    } else if matches!(update.owner, Some(Some(_))) {
        "take"
    } else if matches!(update.owner, Some(None)) {
        "release"
    } else if update.child_shard_ids.is_some() {
        "children"
    } else if *update == LeaseUpdate::default() {
        "renew"
    } else {
        "other update"
    }
}

#[async_trait]
impl LeaseTable for Counting {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.count("create");
        self.inner.create_if_absent(lease).await
    }
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.count("list (scan)");
        self.inner.list().await
    }
    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        self.count("list_workers (scan)");
        self.inner.list_workers(consistency).await
    }
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.count("get");
        self.inner.get(key).await
    }
    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        let kind = if key.starts_with(kcl_core::lease::WORKER_KEY_PREFIX) {
            "heartbeat"
        } else {
            kind_of(update)
        };
        self.count(kind);
        let result = self.inner.update(key, expect, update).await;
        if result.is_err() {
            self.count(match kind {
                "heartbeat" => "heartbeat (failed)",
                "renew" => "renew (failed)",
                "take" => "take (failed)",
                "checkpoint" => "checkpoint (failed)",
                _ => "other update (failed)",
            });
        }
        result
    }
    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.count("delete");
        self.inner.delete(key, expect).await
    }
}

struct Processor;

impl RecordProcessor for Processor {
    type Error = std::io::Error;
    async fn process_records(
        &mut self,
        _input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

/// DynamoDB's size of an attribute value (approximation of the documented rules).
fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::N(n) => {
            let digits = n.trim_start_matches('-').replace('.', "");
            let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
            significant.div_ceil(2) + 1
        }
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 0,
    }
}

fn item_size(item: &std::collections::HashMap<String, AttributeValue>) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

struct Running {
    handle: WorkerHandle,
    task: tokio::task::JoinHandle<()>,
}

async fn start(
    name: &str,
    table: &str,
    config: &aws_config::SdkConfig,
    model: &Arc<KinesisModel>,
    failover: Duration,
    calls: &Arc<Mutex<BTreeMap<&'static str, u64>>>,
) -> (Running, DynamoLeaseTable) {
    let dynamo = DynamoLeaseTable::builder(table)
        .build(config)
        .await
        .unwrap();
    let counting: Arc<dyn LeaseTable> = Arc::new(Counting {
        inner: dynamo.clone(),
        calls: Arc::clone(calls),
    });
    let worker = Worker::builder(|_: &ShardInfo| Processor)
        .application_name(table)
        .stream(STREAM)
        .worker_id(name)
        .backend(model.clone())
        .lease_table(counting)
        .initial_position(InitialPosition::TrimHorizon)
        .failover_time(failover)
        .build()
        .unwrap();
    let handle = worker.handle();
    let task = tokio::spawn(async move { worker.run().await.unwrap() });
    (Running { handle, task }, dynamo)
}

fn sum(tables: &[DynamoLeaseTable]) -> ConsumedCapacityTotals {
    let mut total = ConsumedCapacityTotals::default();
    for t in tables {
        let c = t.capacity();
        total.read_units += c.read_units;
        total.write_units += c.write_units;
        total.get_requests += c.get_requests;
        total.scan_requests += c.scan_requests;
        total.put_requests += c.put_requests;
        total.update_requests += c.update_requests;
        total.delete_requests += c.delete_requests;
        total.conditional_check_failures += c.conditional_check_failures;
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numeric arguments"))
        .collect();
    let leases = args.first().copied().unwrap_or(8) as u32;
    let workers = args.get(1).copied().unwrap_or(2) as usize;
    let failover = Duration::from_secs(args.get(2).copied().unwrap_or(10));
    let window = Duration::from_secs(args.get(3).copied().unwrap_or(60));

    let endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .expect("set AWS_ENDPOINT_URL_DYNAMODB (scripts/servers/moto.sh start prints one)");
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(&endpoint);
    if std::env::var_os("AWS_REGION").is_none() {
        loader = loader.region("us-east-1");
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader =
            loader.credentials_provider(Credentials::new("test", "test", None, None, "example"));
    }
    let config = loader.load().await;

    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, leases).unwrap();
    let producer_model = Arc::clone(&model);
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut i = 0u64;
        loop {
            tick.tick().await;
            // ~5 records/s per shard: explicit hash keys spread evenly over the shards.
            for shard in 0..u128::from(leases) {
                let hash = (u128::MAX / u128::from(leases)) * shard + 1;
                let _ = producer_model.put_record(
                    STREAM,
                    "k",
                    Bytes::from(format!("r{i}")),
                    Some(&hash.to_string()),
                );
                i += 1;
            }
        }
    });

    let table = format!("kcl-capacity-{}-{}", std::process::id(), fastrand::u32(..));
    let calls = Arc::new(Mutex::new(BTreeMap::new()));
    let mut running = Vec::new();
    let mut tables = Vec::new();
    for w in 0..workers {
        let (r, t) = start(&format!("w{w}"), &table, &config, &model, failover, &calls).await;
        running.push(r);
        tables.push(t);
    }

    // Warm-up: until every lease is held (bounded).
    let observer = DynamoLeaseTable::builder(&table)
        .build(&config)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Shard leases only (the table also holds one heartbeat row per worker).
        let list: Vec<Lease> = observer
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.heartbeat_of().is_none())
            .collect();
        if list.len() == leases as usize && list.iter().all(|l| l.owner.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "leases not all held after 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Steady state: count over the window.
    for t in &tables {
        t.reset_capacity();
    }
    calls.lock().unwrap().clear();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed();
    let steady_calls = calls.lock().unwrap().clone();
    let steady = sum(&tables);

    // Item sizes, to bill as DynamoDB would.
    let scan = observer
        .client()
        .scan()
        .table_name(&table)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    let sizes: Vec<usize> = scan.items().iter().map(item_size).collect();
    let item_bytes = sizes.iter().copied().max().unwrap_or(0);
    let table_bytes: usize = sizes.iter().sum();
    let wcu_per_write = item_bytes.div_ceil(1024).max(1) as f64;
    let rcu_per_scan = table_bytes.div_ceil(4096).max(1) as f64;
    let rcu_per_get = item_bytes.div_ceil(4096).max(1) as f64;

    // Takeover of released leases: stop one worker gracefully (it releases its leases) and count
    // what the others spend until they hold everything again.
    calls.lock().unwrap().clear();
    for t in &tables {
        t.reset_capacity();
    }
    let first = running.remove(0);
    first.handle.shutdown();
    first.task.await.unwrap();
    let held_by_first: usize = {
        let c = calls.lock().unwrap();
        c.get("release").copied().unwrap_or(0) as usize
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = observer.list().await.unwrap();
        if !running.is_empty()
            && list
                .iter()
                .all(|l| l.owner.as_deref().is_some_and(|o| o != "w0"))
        {
            break;
        }
        if running.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leases not taken over after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover_calls = calls.lock().unwrap().clone();

    for r in running {
        r.handle.shutdown();
        r.task.await.unwrap();
    }
    producer.abort();

    let hours = elapsed.as_secs_f64() / 3600.0;
    let lease_hours = hours * f64::from(leases);
    println!(
        "# kcl-rs lease table cost: {leases} leases, {workers} workers, failover {failover:?}, \
         window {elapsed:.1?}"
    );
    println!(
        "# item size ~{item_bytes} B (largest), table ~{table_bytes} B: {wcu_per_write} WCU per \
         write, {rcu_per_get} RCU per consistent get, {rcu_per_scan} RCU per consistent scan"
    );
    println!();
    println!("| steady state | calls in window | per lease-hour | billed units per lease-hour |");
    println!("|---|---:|---:|---:|");
    let mut wcu_total = 0.0;
    let mut rcu_total = 0.0;
    for (kind, count) in &steady_calls {
        let per_lease_hour = *count as f64 / lease_hours;
        let (units, unit) = match *kind {
            "list (scan)" => (per_lease_hour * rcu_per_scan, "RCU"),
            "get" => (per_lease_hour * rcu_per_get, "RCU"),
            k if k.ends_with("(failed)") => (0.0, "WCU (counted with its kind)"),
            _ => (per_lease_hour * wcu_per_write, "WCU"),
        };
        if unit == "RCU" {
            rcu_total += units;
        } else {
            wcu_total += units;
        }
        println!("| {kind} | {count} | {per_lease_hour:.0} | {units:.0} {unit} |");
    }
    println!("| **total** | | | **{wcu_total:.0} WCU + {rcu_total:.0} RCU** |");
    println!();
    println!(
        "moto-reported units in the window: {:.1} write, {:.1} read ({} updates, {} scans, {} \
         gets, {} condition failures)",
        steady.write_units,
        steady.read_units,
        steady.update_requests,
        steady.scan_requests,
        steady.get_requests,
        steady.conditional_check_failures
    );
    println!();
    println!(
        "graceful stop of w0 (its leases handed to the others, {held_by_first} released \
         unowned), calls until the others hold them all: {takeover_calls:?}"
    );
}
