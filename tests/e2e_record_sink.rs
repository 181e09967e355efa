//! End to end: record_sink processes (the example binary, black box) against kinesis-local with a
//! shared SQLite lease file. Records are produced over many partition keys while three processes
//! consume; one is killed with SIGKILL, a shard is split and two shards are merged, a fourth
//! process joins, then all are stopped with SIGTERM (each must exit 0). From the JSONL files:
//! every produced record is present, the first deliveries of each key are in production order,
//! and records delivered twice were all delivered by the killed process (duplicates only around
//! it). Run for polling and for enhanced fan-out.
//!
//! Needs kinesis-local (`AWS_ENDPOINT_URL_KINESIS`) and the binary (`KCL_RECORD_SINK`, else
//! `target/debug/examples/record_sink`); `scripts/test.sh` provides both.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use kcl_testkit::kinesis::{Kinesis, Target, TargetExt, unique};

fn record_sink() -> PathBuf {
    let path = match std::env::var_os("KCL_RECORD_SINK") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
            target.join("debug/examples/record_sink")
        }
    };
    assert!(
        path.exists(),
        "{} not found: build it with `cargo build -p kcl-examples --example record_sink` or run \
         scripts/test.sh",
        path.display()
    );
    path
}

struct Sink {
    name: String,
    output: PathBuf,
    child: Child,
}

fn spawn(name: &str, stream: &str, app: &str, dir: &Path, fanout: bool) -> Sink {
    spawn_with(name, stream, app, dir, fanout, &[])
}

/// The flags of the processes of one scenario besides the common ones.
#[derive(Clone, Copy)]
struct Mode {
    fanout: bool,
    extra: &'static [&'static str],
}

fn spawn_with(
    name: &str,
    stream: &str,
    app: &str,
    dir: &Path,
    fanout: bool,
    extra: &[&str],
) -> Sink {
    let output = dir.join(format!("{name}.jsonl"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(record_sink())
        .args([
            "--stream",
            stream,
            "--application",
            app,
            "--worker-id",
            name,
        ])
        .arg("--lease-table")
        .arg(format!("sqlite:{}", dir.join("leases.db").display()))
        .args(["--retrieval", if fanout { "fanout" } else { "polling" }])
        .args(["--initial-position", "trim-horizon"])
        .arg("--output")
        .arg(&output)
        // The default failover time: four processes and kinesis-local share the machine, and a
        // shorter one lets a busy (not dead) process lapse, which the test counts as an error.
        .args(["--checkpoint-every", "25", "--failover-ms", "10000"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("KCL_E2E_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Sink {
        name: name.to_owned(),
        output,
        child,
    }
}

fn terminate(sink: &mut Sink) {
    let status = Command::new("kill")
        .args(["-TERM", &sink.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// One line of a record_sink file.
#[derive(Debug, Clone)]
struct Line {
    worker: String,
    stream: String,
    key: String,
    payload: String,
    at_ms: u64,
    file: usize,
    index: usize,
}

fn read_lines(sinks: &[&Path]) -> Vec<Line> {
    let mut out = Vec::new();
    for (file, path) in sinks.iter().enumerate() {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for (index, line) in text.lines().enumerate() {
            // A process killed mid-write may leave a partial last line.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap())
                .unwrap();
            out.push(Line {
                worker: v["worker_id"].as_str().unwrap().to_owned(),
                stream: v["stream"].as_str().unwrap().to_owned(),
                key: v["partition_key"].as_str().unwrap().to_owned(),
                payload: String::from_utf8(data).unwrap(),
                at_ms: v["processed_at_ms"].as_u64().unwrap(),
                file,
                index,
            });
            assert!(v["shard_id"].as_str().unwrap().starts_with("shardId-"));
            assert!(!v["stream"].as_str().unwrap().is_empty());
            assert!(v["sequence_number"].as_str().unwrap().len() > 20);
            assert!(v["sub_sequence_number"].as_u64().is_some());
        }
    }
    out
}

async fn wait_for_all(paths: &[&Path], produced: &HashSet<String>, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let seen: HashSet<String> = read_lines(paths).into_iter().map(|l| l.payload).collect();
        let missing = produced.iter().filter(|p| !seen.contains(*p)).count();
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} records never delivered",
            produced.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn scenario(fanout: bool) {
    scenario_in(Mode { fanout, extra: &[] }).await;
}

async fn scenario_in(mode: Mode) {
    let Mode { fanout, extra } = mode;
    let spawn = |name: &str, stream: &str, app: &str, dir: &Path, fanout: bool| {
        spawn_with(name, stream, app, dir, fanout, extra)
    };
    support::init_tracing();
    let k = Kinesis::server().await;
    let stream = unique(match (fanout, extra.is_empty()) {
        (true, _) => "e2e-efo",
        (false, true) => "e2e-poll",
        (false, false) => "e2e-keyed",
    });
    let app = format!("{stream}-app");
    k.create_stream(&stream, 4)
        .await
        .expect("create the stream");
    let dir = tempfile::tempdir().unwrap();
    let keys = 200;
    let per_round = 200;
    let mut produced = Vec::new();
    // w1 starts alone and takes every lease, so killing it matters; w2 and w3 join once it
    // delivers.
    let mut sinks = vec![spawn("w1", &stream, &app, dir.path(), fanout)];
    produced.extend(k.produce(&stream, keys, per_round, 0).await);
    let first = sinks[0].output.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read_lines(&[first.as_path()]).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sinks.push(spawn("w2", &stream, &app, dir.path(), fanout));
    sinks.push(spawn("w3", &stream, &app, dir.path(), fanout));
    for round in 1..16 {
        produced.extend(k.produce(&stream, keys, per_round, round * per_round).await);
        match round {
            4 => {
                // SIGKILL: no shutdown, no final checkpoint; its leases expire.
                sinks[0].child.kill().unwrap();
                sinks[0].child.wait().unwrap();
            }
            7 => {
                let open = k.open_shards(&stream).await;
                let s = &open[0];
                let mid = s.hash_key_range.start / 2 + s.hash_key_range.end / 2;
                k.split_shard(&stream, &s.shard_id, mid)
                    .await
                    .expect("split");
            }
            10 => {
                let open = k.open_shards(&stream).await;
                let (a, b) = (&open[open.len() - 2], &open[open.len() - 1]);
                k.merge_shards(&stream, &a.shard_id, &b.shard_id)
                    .await
                    .expect("merge");
            }
            12 => sinks.push(spawn("w4", &stream, &app, dir.path(), fanout)),
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let payloads: HashSet<String> = produced
        .iter()
        .map(|(_, d)| String::from_utf8(d.to_vec()).unwrap())
        .collect();
    let paths: Vec<PathBuf> = sinks.iter().map(|s| s.output.clone()).collect();
    let path_refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    wait_for_all(&path_refs, &payloads, Duration::from_secs(240)).await;
    for sink in sinks.iter_mut().skip(1) {
        terminate(sink);
    }
    for sink in sinks.iter_mut().skip(1) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = sink.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not stop",
                sink.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let log = std::fs::read_to_string(dir.path().join(format!("{}.log", sink.name))).unwrap();
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{log}",
            sink.name
        );
    }

    // Every record present.
    let mut lines = read_lines(&path_refs);
    let seen: HashSet<&str> = lines.iter().map(|l| l.payload.as_str()).collect();
    assert!(payloads.iter().all(|p| seen.contains(p.as_str())));
    // First deliveries per key in production order (ordered by processing time, then file
    // order within one process).
    lines.sort_by_key(|l| (l.at_ms, l.file, l.index));
    let mut first: HashMap<&str, &Line> = HashMap::new();
    let mut deliveries: HashMap<&str, Vec<&Line>> = HashMap::new();
    for line in &lines {
        first.entry(line.payload.as_str()).or_insert(line);
        deliveries
            .entry(line.payload.as_str())
            .or_default()
            .push(line);
    }
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut done = HashSet::new();
    for line in &lines {
        if done.insert(line.payload.as_str()) {
            by_key
                .entry(line.key.as_str())
                .or_default()
                .push(line.payload.as_str());
        }
    }
    for (key, payloads) in &by_key {
        let mut sorted = payloads.clone();
        sorted.sort();
        assert_eq!(payloads, &sorted, "first deliveries of {key} out of order");
    }
    // Duplicates only around the killed process.
    let mut duplicated = 0;
    for (payload, ds) in &deliveries {
        if ds.len() > 1 {
            duplicated += 1;
            assert!(
                ds.iter().any(|d| d.worker == "w1"),
                "{payload} delivered {} times, never by the killed worker: {:?}",
                ds.len(),
                ds.iter().map(|d| d.worker.as_str()).collect::<Vec<_>>()
            );
        }
    }
    let workers: HashSet<&str> = lines.iter().map(|l| l.worker.as_str()).collect();
    assert!(workers.contains("w1"), "the killed process had work");
    assert!(
        workers.contains("w2") || workers.contains("w3"),
        "the killed process's shards were taken over"
    );
    eprintln!(
        "e2e ({} {extra:?}): {} records, {} lines, {duplicated} delivered more than once, workers {workers:?}",
        if fanout { "fan-out" } else { "polling" },
        payloads.len(),
        lines.len()
    );
}

#[tokio::test]
#[ignore = "needs kinesis-local and the record_sink binary: run scripts/test.sh"]
async fn record_sink_processes_with_polling() {
    scenario(false).await;
}

#[tokio::test]
#[ignore = "needs kinesis-local and the record_sink binary: run scripts/test.sh"]
async fn record_sink_processes_with_fan_out() {
    scenario(true).await;
}

#[tokio::test]
#[ignore = "needs kinesis-local and the record_sink binary: run scripts/test.sh"]
async fn record_sink_processes_key_ordered_with_batches_in_flight() {
    scenario_in(Mode {
        fanout: false,
        extra: &["--max-in-flight", "8", "--delay-ms", "3"],
    })
    .await;
}

/// Two streams through one lease table (multi-stream mode, `--stream` twice): three processes,
/// one killed with SIGKILL and one split meanwhile; every record of each stream arrives with its
/// stream's name, first deliveries per key in order, duplicates only around the killed process.
#[tokio::test]
#[ignore = "needs kinesis-local and the record_sink binary: run scripts/test.sh"]
async fn record_sink_consumes_two_streams_through_one_lease_table() {
    support::init_tracing();
    let k = Kinesis::server().await;
    let a = unique("e2e-multi-a");
    let b = unique("e2e-multi-b");
    k.create_stream(&a, 2).await.expect("create a");
    k.create_stream(&b, 3).await.expect("create b");
    let app = format!("{a}-app");
    let dir = tempfile::tempdir().unwrap();
    let both = ["--stream", b.as_str()];
    let spawn = |name: &str| spawn_with(name, &a, &app, dir.path(), false, &both);
    let mut produced: HashSet<(String, String)> = HashSet::new();
    let mut put = async |stream: &str, start: usize| {
        for (_, data) in k.produce(stream, 50, 100, start).await {
            produced.insert((stream.to_owned(), String::from_utf8(data.to_vec()).unwrap()));
        }
    };
    let mut sinks = vec![spawn("w1")];
    put(&a, 0).await;
    put(&b, 0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while read_lines(&[sinks[0].output.as_path()]).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "w1 delivered nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sinks.push(spawn("w2"));
    sinks.push(spawn("w3"));
    for round in 1..10 {
        put(&a, round * 100).await;
        put(&b, round * 100).await;
        match round {
            3 => {
                sinks[0].child.kill().unwrap();
                sinks[0].child.wait().unwrap();
            }
            5 => {
                let open = k.open_shards(&b).await;
                let s = &open[0];
                let mid = s.hash_key_range.start / 2 + s.hash_key_range.end / 2;
                k.split_shard(&b, &s.shard_id, mid).await.expect("split");
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let paths: Vec<PathBuf> = sinks.iter().map(|s| s.output.clone()).collect();
    let path_refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let seen: HashSet<(String, String)> = read_lines(&path_refs)
            .into_iter()
            .map(|l| (l.stream, l.payload))
            .collect();
        let missing = produced.iter().filter(|p| !seen.contains(*p)).count();
        if missing == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} records never delivered",
            produced.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for sink in sinks.iter_mut().skip(1) {
        terminate(sink);
    }
    for sink in sinks.iter_mut().skip(1) {
        let (status, log) = exit_of(sink, dir.path(), Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{log}",
            sink.name
        );
    }
    let mut lines = read_lines(&path_refs);
    // Only the two streams, each line naming the stream its record was produced into.
    let streams: HashSet<&str> = lines.iter().map(|l| l.stream.as_str()).collect();
    assert_eq!(streams, HashSet::from([a.as_str(), b.as_str()]));
    for line in &lines {
        assert!(
            produced.contains(&(line.stream.clone(), line.payload.clone())),
            "{line:?} was not produced into its stream"
        );
    }
    lines.sort_by_key(|l| (l.at_ms, l.file, l.index));
    let mut first_seen = HashSet::new();
    let mut by_key: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    let mut deliveries: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for line in &lines {
        let id = (line.stream.as_str(), line.payload.as_str());
        deliveries.entry(id).or_default().push(line.worker.as_str());
        if first_seen.insert(id) {
            by_key
                .entry((line.stream.as_str(), line.key.as_str()))
                .or_default()
                .push(line.payload.as_str());
        }
    }
    for (key, payloads) in &by_key {
        let mut sorted = payloads.clone();
        sorted.sort();
        assert_eq!(
            payloads, &sorted,
            "first deliveries of {key:?} out of order"
        );
    }
    for (id, workers) in &deliveries {
        if workers.len() > 1 {
            assert!(
                workers.contains(&"w1"),
                "{id:?} delivered by {workers:?}, never by the killed worker"
            );
        }
    }
    let workers: HashSet<&str> = lines.iter().map(|l| l.worker.as_str()).collect();
    assert!(workers.contains("w1"), "the killed process had work");
    // The leases are multi-stream leases of the two streams, in one SQLite table.
    let table = kcl_lease_sqlite::SqliteLeaseTable::open(dir.path().join("leases.db"), &app)
        .await
        .unwrap();
    let keys: Vec<String> = kcl_core::lease::LeaseTable::list(&table)
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.heartbeat_of().is_none())
        .map(|l| l.key)
        .collect();
    for key in &keys {
        let (id, _) = kcl_core::stream::StreamIdentifier::parse_lease_key(key).unwrap();
        assert!(id.name() == a || id.name() == b, "{key}");
    }
}

/// Waits until `sink` exits (at most `limit`); returns its status and its log.
async fn exit_of(
    sink: &mut Sink,
    dir: &Path,
    limit: Duration,
) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = sink.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not exit",
            sink.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let log = std::fs::read_to_string(dir.join(format!("{}.log", sink.name))).unwrap();
    (status, log)
}

#[tokio::test]
#[ignore = "needs kinesis-local and the record_sink binary: run scripts/test.sh"]
async fn record_sink_exits_with_a_clear_error_on_a_missing_stream() {
    let _k = Kinesis::server().await;
    let dir = tempfile::tempdir().unwrap();
    let stream = unique("does-not-exist");
    let started = std::time::Instant::now();
    let mut sink = spawn("w1", &stream, "missing-app", dir.path(), false);
    let (status, log) = exit_of(&mut sink, dir.path(), Duration::from_secs(120)).await;
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    let message = format!("record_sink: stream {stream:?} does not exist");
    assert!(log.contains(&message), "log:\n{log}");
    assert!(log.contains("ResourceNotFoundException"), "log:\n{log}");
    eprintln!(
        "record_sink exited {:.1} s after start on a missing stream",
        started.elapsed().as_secs_f64()
    );
}

/// A free loopback port (bound and released; the process binds it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` over plain HTTP/1.1; the status code and the body.
async fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no status"))?;
    Ok((status, body.to_owned()))
}

/// One sample of the Prometheus text format: name, labels, value.
fn samples(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((name.to_owned(), labels, value))
        })
        .collect()
}

fn sum(samples: &[(String, HashMap<String, String>, f64)], name: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, ..)| n == name)
        .map(|(.., v)| v)
        .sum()
}

fn max(samples: &[(String, HashMap<String, String>, f64)], name: &str) -> Option<f64> {
    samples
        .iter()
        .filter(|(n, ..)| n == name)
        .map(|(.., v)| *v)
        .reduce(f64::max)
}

#[tokio::test]
#[ignore = "needs kinesis-local and the record_sink binary: run scripts/test.sh"]
async fn record_sink_serves_metrics_and_health_that_match_what_it_did() {
    support::init_tracing();
    let k = Kinesis::server().await;
    let stream = unique("e2e-metrics");
    let app = format!("{stream}-app");
    let shards = 4;
    k.create_stream(&stream, shards)
        .await
        .expect("create the stream");
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut sinks: Vec<Sink> = ["m1", "m2"]
        .iter()
        .zip(ports)
        .map(|(name, port)| {
            let listen = format!("127.0.0.1:{port}");
            spawn_with(
                name,
                &stream,
                &app,
                dir.path(),
                false,
                &["--metrics-listen", &listen],
            )
        })
        .collect();
    let mut produced = Vec::new();
    for round in 0..4 {
        produced.extend(k.produce(&stream, 50, 250, round * 250).await);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let payloads: HashSet<String> = produced
        .iter()
        .map(|(_, d)| String::from_utf8(d.to_vec()).unwrap())
        .collect();
    let paths: Vec<PathBuf> = sinks.iter().map(|s| s.output.clone()).collect();
    let path_refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    wait_for_all(&path_refs, &payloads, Duration::from_secs(240)).await;

    // Scrape both until the figures settle: every line written is counted, the lag is back to
    // about zero, and the two workers hold every shard between them, each ready.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let (all, lines) = loop {
        let mut all = Vec::new();
        let mut ready = 0;
        for port in ports {
            if let Ok((_, body)) = get(port, "/metrics").await {
                all.extend(samples(&body));
            }
            if let Ok((200, body)) = get(port, "/health").await {
                assert!(body.contains("\"status\":\"ready\""), "{body}");
                ready += 1;
            }
        }
        let lines = read_lines(&path_refs).len() as f64;
        let settled = sum(&all, "kcl_records_processed_total") == lines
            && max(&all, "kcl_behind_latest_seconds").is_some_and(|lag| lag <= 1.0)
            && sum(&all, "kcl_leases_held") == shards as f64
            && ready == ports.len();
        if settled {
            break (all, lines);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never settled: processed {} for {lines} lines, lag {:?}, leases held {}, \
             {ready} ready",
            sum(&all, "kcl_records_processed_total"),
            max(&all, "kcl_behind_latest_seconds"),
            sum(&all, "kcl_leases_held"),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        lines,
        payloads.len() as f64,
        "no duplicates without a crash: every record once"
    );
    assert_eq!(sum(&all, "kcl_live_workers"), 4.0, "each sees both workers");
    assert!(sum(&all, "kcl_get_records_calls_total") > 0.0);
    assert!(sum(&all, "kcl_lease_table_calls_total") > 0.0);
    assert!(
        all.iter()
            .any(|(n, labels, _)| n == "kcl_records_processed_total"
                && labels.get("stream") == Some(&stream)
                && labels
                    .get("shard")
                    .is_some_and(|s| s.starts_with("shardId-"))
                && labels.get("worker").is_some()),
        "per-shard series carry stream, shard and worker"
    );
    assert!(
        all.iter()
            .any(|(n, ..)| n == "kcl_process_records_duration_seconds_bucket"),
        "durations are histograms with buckets"
    );
    let (status, _) = get(ports[0], "/nowhere").await.unwrap();
    assert_eq!(status, 404);
    for sink in &mut sinks {
        terminate(sink);
    }
    for sink in &mut sinks {
        let (status, log) = exit_of(sink, dir.path(), Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{log}",
            sink.name
        );
    }
}
