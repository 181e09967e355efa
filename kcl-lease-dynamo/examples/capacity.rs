//! Measures what real Kinesin worker processes send to a DynamoDB API, in on-demand request units
//! per lease-hour: `record_sink` processes (the example consumer) on a kinesis-local stream, with
//! their leases in DynamoDB (moto), every request they send metered by the server.
//!
//! ```text
//! scripts/servers/moto.sh install target/moto
//! scripts/servers/kinesis.sh install target/kinesis
//! export AWS_ENDPOINT_URL_DYNAMODB=$(KCL_MOTO_METER=1 scripts/servers/moto.sh start target/moto | tail -n 1)
//! export AWS_ENDPOINT_URL_KINESIS=$(scripts/servers/kinesis.sh start target/kinesis | tail -n 1)
//! cargo build --release --workspace --example record_sink
//! export KCL_RECORD_SINK=target/release/examples/record_sink
//! cargo run --release -p kcl-lease-dynamo --example capacity -- LEASES WORKERS [WINDOW_SECS]
//! scripts/servers/kinesis.sh stop target/kinesis; scripts/servers/moto.sh stop target/moto
//! ```
//!
//! It creates a stream of LEASES shards, starts WORKERS `record_sink` processes (polling,
//! DynamoDB leases, default timings: 10 s failover, checkpoints every 10 s), waits until every
//! lease is held and the fleet is balanced, then measures three windows of WINDOW_SECS (default
//! 300): at rest (no records), under traffic (about 5 records per second per shard, so the default
//! checkpoint cadence runs), and a graceful stop of one worker (its leases handed over).
//!
//! moto with `KCL_MOTO_METER=1` (`scripts/servers/moto_serial.py`) applies one request at a time
//! and meters every DynamoDB request it answers: by table, operation and kind, in request units
//! computed from the real item sizes by DynamoDB's rules (Scan and Query by the total size of a
//! page per started 4 KB, GetItem per item, eventually consistent reads half; writes per started
//! KB of the item, refused conditional writes too). The example's own reads go through the same
//! server, before and after the windows only. Java KCL 2.x and 3.x are derived from their
//! defaults as in `docs/leases.md`, with the measured lease item size.
//!
//! Run it against real DynamoDB only on a throwaway application name: it creates
//! `kcl-capacity-*` tables and does not delete them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::config::Credentials;
use bytes::Bytes;
use kcl_core::aws::KinesisBackend;
use kcl_core::lease::{Lease, LeaseTable};
use kcl_core::model::PutRecordsEntry;
use kcl_lease_dynamo::{DynamoLeaseTable, lease_item_size};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One metered line: table, operation and kind, and what it cost.
#[derive(Clone, Debug, Default)]
struct Metered {
    requests: f64,
    read_units: f64,
    write_units: f64,
}

type Meter = BTreeMap<String, Metered>;

/// A plain HTTP request to the meter on the DynamoDB endpoint.
async fn meter_call(endpoint: &str, method: &str, path: &str) -> String {
    let authority = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut stream = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect to the DynamoDB endpoint");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "the DynamoDB endpoint has no meter: start moto with KCL_MOTO_METER=1 \
         (scripts/servers/moto_serial.py); it answered {response:.200}"
    );
    body
}

async fn read_meter(endpoint: &str) -> Meter {
    let body = meter_call(endpoint, "GET", "/_kcl/meter").await;
    let parsed: serde_json::Value = serde_json::from_str(&body).expect("meter JSON");
    let mut meter = Meter::new();
    for (key, value) in parsed.as_object().expect("an object") {
        meter.insert(
            key.clone(),
            Metered {
                requests: value["requests"].as_f64().unwrap_or(0.0),
                read_units: value["read_units"].as_f64().unwrap_or(0.0),
                write_units: value["write_units"].as_f64().unwrap_or(0.0),
            },
        );
    }
    meter
}

async fn reset_meter(endpoint: &str) {
    meter_call(endpoint, "POST", "/_kcl/meter/reset").await;
}

fn record_sink() -> PathBuf {
    let path = std::env::var_os("KCL_RECORD_SINK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/examples/record_sink"));
    assert!(
        path.exists(),
        "{} not found: build it (cargo build --release --workspace --example record_sink) or \
         set KCL_RECORD_SINK",
        path.display()
    );
    path
}

fn spawn(name: &str, stream: &str, app: &str, dir: &std::path::Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut command = Command::new(record_sink());
    // Region and credentials for the local servers unless the environment has its own.
    for (var, value) in [
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ] {
        if std::env::var_os(var).is_none() {
            command.env(var, value);
        }
    }
    command
        .args([
            "--stream",
            stream,
            "--application",
            app,
            "--worker-id",
            name,
        ])
        .args(["--lease-table", &format!("dynamodb:{app}")])
        .args([
            "--retrieval",
            "polling",
            "--initial-position",
            "trim-horizon",
        ])
        .arg("--output")
        .arg(dir.join(format!("{name}.jsonl")))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start record_sink")
}

/// Shard leases and heartbeat rows, as the table holds them now.
async fn rows(table: &DynamoLeaseTable) -> (Vec<Lease>, Vec<Lease>) {
    let all = table.list().await.unwrap();
    all.into_iter().partition(|l| l.heartbeat_of().is_none())
}

fn java2(leases: f64, workers: f64, lease_bytes: f64) -> f64 {
    let renewals = 3600.0 / 3.308 * 5.0;
    let scan = 0.5 * ((leases * lease_bytes) / 4096.0).ceil().max(1.0);
    renewals + workers * (3600.0 / 20.05) * scan / leases
}

fn java3(leases: f64, workers: f64, lease_bytes: f64) -> f64 {
    let renewals = 3600.0 / 3.308 * 5.0;
    let writes = (workers * 120.0 + 120.0) * 5.0;
    let queries = (workers - 1.0) * 360.0 * 0.5;
    let lease_scan = (0.5 * ((leases * lease_bytes) / 4096.0).ceil()).max(10.0 * 0.5);
    let metrics_scan = 0.5 * ((workers * 300.0) / 4096.0).ceil().max(1.0);
    renewals + (writes + queries + 180.0 * (lease_scan + metrics_scan)) / leases
}

/// A meter key as (table, request, kind): the lease table is "leases", its companion "workers".
fn parts<'a>(key: &'a str, app: &str) -> (String, &'a str, &'a str) {
    let mut parts = key.splitn(3, ' ');
    let table = parts.next().unwrap_or("?");
    let op = parts.next().unwrap_or("?");
    let kind = parts.next().unwrap_or("");
    let table = if table == app {
        "leases".to_owned()
    } else if table.starts_with(app) {
        "workers".to_owned()
    } else {
        table.to_owned()
    };
    (table, op, kind)
}

/// Prints one window's requests and units per lease-hour; returns (reads, writes) per lease-hour.
fn report(title: &str, meter: &Meter, lease_hours: f64, app: &str) -> (f64, f64) {
    println!("\n#### {title}\n");
    println!("| table | request | kind | requests per lease-hour | read units | write units |");
    println!("|---|---|---|---:|---:|---:|");
    let (mut reads, mut writes) = (0.0, 0.0);
    for (key, m) in meter {
        let (table, op, kind) = parts(key, app);
        println!(
            "| {table} | {op} | {kind} | {:.0} | {:.0} | {:.0} |",
            m.requests / lease_hours,
            m.read_units / lease_hours,
            m.write_units / lease_hours
        );
        reads += m.read_units / lease_hours;
        writes += m.write_units / lease_hours;
    }
    println!(
        "| **total** | | | | **{reads:.0}** | **{writes:.0}** (= {:.0} read-unit equivalents in all) |",
        reads + 5.0 * writes
    );
    (reads, writes)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("numeric arguments: LEASES WORKERS [WINDOW_SECS]")
        })
        .collect();
    let leases = args.first().copied().unwrap_or(8) as u32;
    let workers = args.get(1).copied().unwrap_or(4) as usize;
    let window = Duration::from_secs(args.get(2).copied().unwrap_or(300));

    let dynamo_endpoint = std::env::var("AWS_ENDPOINT_URL_DYNAMODB")
        .expect("set AWS_ENDPOINT_URL_DYNAMODB (moto started with KCL_MOTO_METER=1)");
    let kinesis_endpoint = std::env::var("AWS_ENDPOINT_URL_KINESIS")
        .expect("set AWS_ENDPOINT_URL_KINESIS (scripts/servers/kinesis.sh start prints one)");
    let sdk = |endpoint: String| async move {
        aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "example"))
            .load()
            .await
    };
    let config = sdk(dynamo_endpoint.clone()).await;
    let kinesis_config = sdk(kinesis_endpoint).await;
    meter_call(&dynamo_endpoint, "GET", "/_kcl/meter").await;

    let suffix = format!("{}-{:x}", std::process::id(), fastrand::u32(..));
    let app = format!("kcl-capacity-{suffix}");
    let stream = format!("capacity-{suffix}");
    let kinesis = KinesisBackend::builder().build(&kinesis_config).unwrap();
    kinesis
        .create_stream(&stream, leases, Duration::from_secs(60))
        .await
        .expect("create the stream on kinesis-local");
    // The table first, so that the workers do not race to create it.
    let observer = DynamoLeaseTable::builder(&app)
        .build(&config)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..workers).map(|w| format!("w{w:02}")).collect();
    let mut children: BTreeMap<String, Child> = names
        .iter()
        .map(|name| (name.clone(), spawn(name, &stream, &app, dir.path())))
        .collect();

    // Warm-up: every lease held, balanced within one (bounded).
    let started = Instant::now();
    loop {
        let (shard_leases, _) = rows(&observer).await;
        let mut held: BTreeMap<&str, usize> = names.iter().map(|n| (n.as_str(), 0)).collect();
        for l in &shard_leases {
            if let Some(owner) = l.owner.as_deref()
                && let Some(n) = held.get_mut(owner)
            {
                *n += 1;
            }
        }
        let (min, max) = (
            held.values().min().copied().unwrap_or(0),
            held.values().max().copied().unwrap_or(0),
        );
        if shard_leases.len() == leases as usize
            && held.values().sum::<usize>() == leases as usize
            && max - min <= 1
        {
            println!(
                "# {leases} leases, {workers} record_sink workers: every lease held and \
                 balanced ({min}-{max} per worker) {:.1} s after the start",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "leases not all held and balanced after 300 s: {held:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Past the start-up reads and a shard-sync cycle.
    tokio::time::sleep(Duration::from_secs(70)).await;
    let (shard_leases, heartbeats) = rows(&observer).await;
    let size = |rows: &[Lease]| {
        rows.iter()
            .map(|l| lease_item_size(l).unwrap_or(0) as f64)
            .sum::<f64>()
            / rows.len().max(1) as f64
    };
    let (lease_bytes, heartbeat_bytes) = (size(&shard_leases), size(&heartbeats));
    let lease_hours = f64::from(leases) * window.as_secs_f64() / 3600.0;

    // 1. At rest.
    reset_meter(&dynamo_endpoint).await;
    tokio::time::sleep(window).await;
    let rest = read_meter(&dynamo_endpoint).await;

    // 2. Under traffic: about 5 records per second per shard.
    let producer_stream = stream.clone();
    let producer = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tick.tick().await;
            let entries: Vec<PutRecordsEntry> = (0..u128::from(leases) * 5)
                .map(|i| {
                    n += 1;
                    let hash = (u128::MAX / u128::from(leases)) * (i % u128::from(leases)) + 1;
                    PutRecordsEntry {
                        partition_key: format!("k{i}"),
                        data: Bytes::from(format!("record-{n}")),
                        explicit_hash_key: Some(hash.to_string()),
                    }
                })
                .collect();
            for chunk in entries.chunks(500) {
                let _ = kinesis.put_records(&producer_stream, chunk.to_vec()).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(30)).await;
    reset_meter(&dynamo_endpoint).await;
    tokio::time::sleep(window).await;
    let traffic = read_meter(&dynamo_endpoint).await;
    producer.abort();
    let (shard_leases_after, _) = rows(&observer).await;
    let checkpointed_bytes = size(&shard_leases_after);

    // 3. A graceful stop of one worker (SIGTERM), until its leases are held by the others.
    tokio::time::sleep(Duration::from_secs(20)).await;
    reset_meter(&dynamo_endpoint).await;
    let leaving = names[workers - 1].clone();
    let (before, _) = rows(&observer).await;
    let moved = before
        .iter()
        .filter(|l| l.owner.as_deref() == Some(leaving.as_str()))
        .count();
    let mut child = children.remove(&leaving).unwrap();
    let stopped = Instant::now();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    loop {
        let (now, _) = rows(&observer).await;
        if workers == 1
            || now
                .iter()
                .all(|l| l.owner.as_deref().is_some_and(|o| o != leaving))
        {
            break;
        }
        assert!(stopped.elapsed() < Duration::from_secs(120));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The successors take the leases in their names at their next read.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let handover = read_meter(&dynamo_endpoint).await;

    for (_, mut child) in children {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    println!(
        "# DynamoDB requests of {workers} record_sink processes on {leases} shards, failover 10 s, \
         windows of {:.0} s; lease item {lease_bytes:.0} B at rest, {checkpointed_bytes:.0} B \
         with a checkpoint; heartbeat row {heartbeat_bytes:.0} B",
        window.as_secs_f64()
    );
    let (reads, writes) = report(
        "At rest (no records): everything the protocol sends",
        &rest,
        lease_hours,
        &app,
    );
    let total = reads + 5.0 * writes;
    let (l, w) = (f64::from(leases), workers as f64);
    let (j2, j3) = (java2(l, w, lease_bytes), java3(l, w, lease_bytes));
    println!(
        "\nAt rest: {reads:.0} read + {writes:.0} write units per lease-hour = **{total:.0}** \
         read-unit equivalents; Java KCL 2.x (derived) {j2:.0} ({:.2}x), Java KCL 3.x (derived) \
         {j3:.0} (**{:.2}x**)",
        total / j2,
        total / j3
    );
    let (t_reads, t_writes) = report(
        "Under traffic (about 5 records/s per shard, default checkpoint cadence)",
        &traffic,
        lease_hours,
        &app,
    );
    let checkpoints: f64 = traffic
        .iter()
        .filter(|(k, _)| k.ends_with("UpdateItem checkpoint"))
        .map(|(_, m)| m.write_units / lease_hours)
        .sum();
    println!(
        "\nUnder traffic: {t_reads:.0} read + {t_writes:.0} write units per lease-hour, of which \
         checkpoints {checkpoints:.0} write units ({:.0} read-unit equivalents)",
        checkpoints * 5.0
    );
    println!(
        "\n#### Graceful stop of {leaving} ({moved} leases handed over; {status}): every \
         request from the stop until 3 s after the others hold them all\n"
    );
    println!("| table | request | kind | requests | read units | write units |");
    println!("|---|---|---|---:|---:|---:|");
    for (key, m) in &handover {
        let (table, op, kind) = parts(key, &app);
        println!(
            "| {table} | {op} | {kind} | {:.0} | {:.1} | {:.0} |",
            m.requests, m.read_units, m.write_units
        );
    }
}
