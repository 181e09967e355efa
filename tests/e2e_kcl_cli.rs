//! End to end: the `kcl` binary (black box) against three running record_sink processes on
//! kinesis-local with a shared SQLite lease file. `kcl describe --output json` shows every lease
//! owned by a live process and the three workers alive; `kcl reset --to at-timestamp:T` while
//! they run hands every lease over cooperatively, and then every record that arrived after T is
//! delivered again and none before it. Bad input (a missing lease file, an unknown shard, a
//! timestamp in the future) gets a clear error and changes nothing.
//!
//! Needs kinesis-local (`AWS_ENDPOINT_URL_KINESIS`) and the binaries (`KCL_RECORD_SINK`,
//! `KCL_BIN`, else `target/debug/...`); `scripts/test.sh` provides them.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use base64::Engine;
use kcl_testkit::kinesis::{Kinesis, Target, TargetExt, unique};

fn binary(env: &str, default: &str) -> PathBuf {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join(default),
    };
    assert!(
        path.exists(),
        "{} not found: run scripts/test.sh",
        path.display()
    );
    path
}

fn spawn(name: &str, stream: &str, app: &str, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    Command::new(binary("KCL_RECORD_SINK", "debug/examples/record_sink"))
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
        .args([
            "--retrieval",
            "polling",
            "--initial-position",
            "trim-horizon",
        ])
        .arg("--output")
        .arg(dir.join(format!("{name}.jsonl")))
        .args(["--checkpoint-every", "25", "--failover-ms", "10000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn kcl(args: &[&str]) -> Output {
    Command::new(binary("KCL_BIN", "debug/kcl"))
        .args(args)
        .output()
        .unwrap()
}

/// Payload -> how many times delivered, over every process's file.
fn deliveries(dir: &Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for name in ["w1", "w2", "w3"] {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{name}.jsonl"))) else {
            continue;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().unwrap())
                .unwrap();
            *out.entry(String::from_utf8(data).unwrap()).or_default() += 1;
        }
    }
    out
}

async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn rfc3339(at: SystemTime) -> String {
    aws_smithy_types::DateTime::from(at)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs kinesis-local and the record_sink and kcl binaries: run scripts/test.sh"]
async fn kcl_describes_and_resets_running_record_sinks() {
    let k = Kinesis::server().await;
    let stream = unique("e2e-kcl");
    let app = format!("{stream}-app");
    k.create_stream(&stream, 3).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let table = format!("sqlite:{}", dir.path().join("leases.db").display());
    let before = k.produce(&stream, 30, 300, 0).await;
    // Arrival times a clear second on either side of the target.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let at = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = k.produce(&stream, 30, 300, 300).await;
    let payload = |d: &bytes::Bytes| String::from_utf8(d.to_vec()).unwrap();
    let mut sinks: Vec<Child> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| spawn(n, &stream, &app, dir.path()))
        .collect();
    wait_for("every record delivered", Duration::from_secs(120), || {
        deliveries(dir.path()).len() >= 600
    })
    .await;

    // Bad input first: a clear error, nothing changed.
    let missing = format!("sqlite:{}", dir.path().join("nope.db").display());
    let out = kcl(&[
        "describe",
        "--lease-table",
        &missing,
        "--application",
        &app,
        "--watch-ms",
        "10",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist"),
        "{out:?}"
    );
    assert!(!dir.path().join("nope.db").exists());
    for (to, shard, needle) in [
        (
            "latest",
            Some("shardId-000000000042"),
            "shardId-000000000042",
        ),
        (
            &*format!(
                "at-timestamp:{}",
                rfc3339(SystemTime::now() + Duration::from_secs(3600))
            ),
            None,
            "future",
        ),
        ("at-timestamp:yesterday", None, "RFC 3339"),
    ] {
        let mut args = vec![
            "reset",
            "--lease-table",
            &table,
            "--application",
            &app,
            "--stream",
            &stream,
            "--to",
            to,
            "--watch-ms",
            "10",
        ];
        if let Some(shard) = shard {
            args.extend(["--shard", shard]);
        }
        let out = kcl(&args);
        assert!(!out.status.success(), "{to}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{to}: {out:?}"
        );
    }
    assert!(
        deliveries(dir.path()).values().all(|n| *n == 1),
        "no duplicates yet"
    );

    // Describe while they run: every lease owned, three workers alive.
    let out = kcl(&[
        "describe",
        "--lease-table",
        &table,
        "--application",
        &app,
        "--stream",
        &stream,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let described: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leases = described["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 3, "{described}");
    for lease in leases {
        assert_eq!(lease["state"], "open", "{lease}");
        assert!(lease["owner"].as_str().unwrap().starts_with('w'), "{lease}");
        assert!(lease["records_behind"].as_u64().unwrap() <= 25, "{lease}");
    }
    let workers = described["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3, "{described}");
    assert!(workers.iter().all(|w| w["seen"] == "alive"), "{described}");
    let human = kcl(&[
        "describe",
        "--lease-table",
        &table,
        "--application",
        &app,
        "--stream",
        &stream,
    ]);
    assert!(
        String::from_utf8_lossy(&human.stdout).contains("SHARD"),
        "{human:?}"
    );

    // Dry run: the plan, nothing written.
    let target = format!("at-timestamp:{}", rfc3339(at));
    let reset = [
        "reset",
        "--lease-table",
        &table,
        "--application",
        &app,
        "--stream",
        &stream,
        "--to",
        &target,
    ];
    let mut dry = reset.to_vec();
    dry.push("--dry-run");
    let out = kcl(&dry);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("would reset 3 lease(s)") && printed.contains("cooperative handoff"),
        "{printed}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        deliveries(dir.path()).values().all(|n| *n == 1),
        "a dry run changes nothing"
    );

    // The reset itself, while they run.
    let out = kcl(&reset);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("done: 3 lease(s) reset"),
        "{out:?}"
    );
    wait_for(
        "records after the timestamp delivered again",
        Duration::from_secs(120),
        || {
            let d = deliveries(dir.path());
            after
                .iter()
                .all(|(_, data)| d.get(&payload(data)) == Some(&2))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d = deliveries(dir.path());
    for (_, data) in &before {
        assert_eq!(
            d.get(&payload(data)),
            Some(&1),
            "{} was before the timestamp",
            payload(data)
        );
    }
    for (_, data) in &after {
        assert_eq!(
            d.get(&payload(data)),
            Some(&2),
            "{} was after the timestamp",
            payload(data)
        );
    }
    for sink in &mut sinks {
        let _ = Command::new("kill")
            .args(["-TERM", &sink.id().to_string()])
            .status();
    }
    for (sink, name) in sinks.iter_mut().zip(["w1", "w2", "w3"]) {
        let status = sink.wait().unwrap();
        let log = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(status.success(), "{name}: {status}; log:\n{log}");
    }
}
