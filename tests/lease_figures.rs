//! Lease-coordination figures for the README: takeover after a crash, handoff on graceful
//! shutdown and on a rebalancing steal, how fast a joining worker gets its share, and lease-store
//! operations per lease-hour at steady state beside Java KCL 2.x.
//!
//! ```text
//! cargo bench -p kcl-tests --bench lease_figures
//! ```
//!
//! Runs the real workers on the in-memory Kinesis model and lease table under tokio's paused
//! clock, with the default lease timings (10 s failover): the times are those the protocol
//! produces (scan and renewal schedules, failover), measured from processor lifecycle events,
//! without network latency. Trials draw their timing phase from a fixed seed.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kcl_core::lease::{InMemoryLeaseTable, LeaseConfig, LeaseTable, Renewal};
use kcl_core::worker::CheckpointCadence;
use kcl_tests::counting::{CountingTable, Counts};
use kcl_tests::scenarios::{Cluster, Tables, shared};
use kcl_tests::{Call, Event};
use tokio::time::Instant;

const FAILOVER: Duration = Duration::from_secs(10);

fn memory() -> Tables {
    shared(Arc::new(InMemoryLeaseTable::new()))
}

/// Min, median, 90th percentile and max, in seconds.
fn summary(mut values: Vec<Duration>) -> String {
    values.sort();
    let n = values.len();
    let at = |q: f64| values[((n - 1) as f64 * q).round() as usize].as_secs_f64();
    format!(
        "{:.2} / {:.2} / {:.2} / {:.2}",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

/// When `worker` first had `call` on `shard` at or after `after`.
fn first(
    events: &[Event],
    worker: &str,
    shard: &str,
    after: Instant,
    call: fn(&Call) -> bool,
) -> Option<Instant> {
    events
        .iter()
        .find(|e| e.worker == worker && e.shard_id == shard && e.at >= after && call(&e.call))
        .map(|e| e.at)
}

fn is_init(c: &Call) -> bool {
    matches!(c, Call::Initialize(_))
}

fn is_shutdown(c: &Call) -> bool {
    *c == Call::Shutdown
}

async fn settle(cluster: &Cluster) {
    // Past the settle time, so the cluster scans at its idle pace.
    tokio::time::sleep(cluster.lease.settle_time() + cluster.lease.idle_scan_interval).await;
}

async fn takeover(trials: usize) {
    let mut takeover = Vec::new();
    let mut resumed = Vec::new();
    let mut rng = fastrand::Rng::with_seed(11);
    for _ in 0..trials {
        let mut cluster = Cluster::new(memory(), 4, FAILOVER);
        cluster.cadence = CheckpointCadence::default();
        let producer = cluster.two_balanced_workers_under_traffic(4).await;
        settle(&cluster).await;
        // A random phase of the dead worker's heartbeat cycle.
        let phase = cluster.lease.renew_interval.mul_f64(rng.f64());
        tokio::time::sleep(phase).await;
        let shards = cluster.status("w1").held_leases;
        let killed = Instant::now();
        cluster.kill("w1").await;
        cluster.wait_for("takeover", |c| c.held("w2") == 4).await;
        let produced = producer.await.unwrap();
        cluster.wait_all_delivered(&produced).await;
        let events = cluster.recorder.events();
        let seen = cluster.recorder.seen();
        let mut t = Duration::ZERO;
        let mut r = Duration::ZERO;
        for shard in &shards {
            let init = first(&events, "w2", shard, killed, is_init).expect("w2 took it");
            t = t.max(init - killed);
            let delivered = seen
                .iter()
                .find(|s| s.worker == "w2" && &s.shard_id == shard && s.at >= killed)
                .map(|s| s.at)
                .expect("w2 processed it");
            r = r.max(delivered - killed);
        }
        takeover.push(t);
        resumed.push(r);
        cluster.stop_all().await;
    }
    let cfg = LeaseConfig::default();
    println!("### Takeover after a crash ({trials} trials, failover {FAILOVER:?})\n");
    println!("| measured from the kill | min / median / p90 / max (s) | worst vs failover |");
    println!("|---|---|---|");
    let worst = |v: &[Duration]| v.iter().max().unwrap().as_secs_f64() / FAILOVER.as_secs_f64();
    println!(
        "| all the dead worker's leases taken and processors started | {} | {:.2}x |",
        summary(takeover.clone()),
        worst(&takeover)
    );
    println!(
        "| first record processed on each of them | {} | {:.2}x |",
        summary(resumed.clone()),
        worst(&resumed)
    );
    println!(
        "\n(heartbeat every {:?}, idle scan every {:?}; the bound is failover + one idle scan)\n",
        cfg.renew_interval, cfg.idle_scan_interval
    );
}

async fn graceful(trials: usize) {
    let mut gaps = Vec::new();
    let mut totals = Vec::new();
    let mut duplicates = 0;
    let mut rng = fastrand::Rng::with_seed(12);
    for _ in 0..trials {
        let mut cluster = Cluster::new(memory(), 4, FAILOVER);
        cluster.cadence = CheckpointCadence::default();
        let producer = cluster.two_balanced_workers_under_traffic(4).await;
        settle(&cluster).await;
        tokio::time::sleep(Duration::from_secs(3).mul_f64(rng.f64())).await;
        let shards = cluster.status("w1").held_leases;
        let asked = Instant::now();
        cluster.stop("w1").await;
        cluster.wait_for("handed over", |c| c.held("w2") == 4).await;
        let produced = producer.await.unwrap();
        cluster.wait_all_delivered(&produced).await;
        duplicates += cluster.duplicates();
        let events = cluster.recorder.events();
        for shard in &shards {
            let stopped = first(&events, "w1", shard, asked, is_shutdown).expect("w1 handed over");
            let started = first(&events, "w2", shard, stopped, is_init).expect("w2 took over");
            gaps.push(started - stopped);
            totals.push(started - asked);
        }
        cluster.stop_all().await;
    }
    println!(
        "### Handoff on graceful shutdown ({trials} shutdowns, {} shards handed over)\n",
        gaps.len()
    );
    println!("| | min / median / p90 / max (s) |");
    println!("|---|---|");
    println!(
        "| shard idle: old owner's final checkpoint to new owner's start | {} |",
        summary(gaps)
    );
    println!(
        "| from the shutdown call to the new owner's start | {} |",
        summary(totals)
    );
    println!("\nrecords delivered twice: {duplicates}\n");
}

async fn rebalance(trials: usize) {
    let mut gaps = Vec::new();
    let mut fair = Vec::new();
    let mut duplicates = 0;
    let mut rng = fastrand::Rng::with_seed(13);
    let cfg = LeaseConfig::default();
    for _ in 0..trials {
        let mut cluster = Cluster::new(memory(), 8, FAILOVER);
        cluster.cadence = CheckpointCadence::default();
        cluster.start("w1").await;
        cluster
            .wait_for("w1 holds all", |c| c.held("w1") == 8)
            .await;
        let producer = cluster.produce_in_background(40, 600, 6);
        settle(&cluster).await;
        tokio::time::sleep(Duration::from_secs(2).mul_f64(rng.f64())).await;
        let joined = Instant::now();
        cluster.start("w2").await;
        cluster.wait_for("fair share", |c| c.held("w2") == 4).await;
        let produced = producer.await.unwrap();
        cluster.wait_all_delivered(&produced).await;
        duplicates += cluster.duplicates();
        let events = cluster.recorder.events();
        let moved: BTreeSet<String> = cluster.status("w2").held_leases.into_iter().collect();
        let mut reached = Duration::ZERO;
        for shard in &moved {
            let stopped = first(&events, "w1", shard, joined, is_shutdown).expect("handed over");
            let started = first(&events, "w2", shard, stopped, is_init).expect("started");
            gaps.push(started - stopped);
            reached = reached.max(started - joined);
        }
        fair.push(reached);
        cluster.stop_all().await;
    }
    let cycles = |v: &[Duration]| {
        v.iter().max().unwrap().as_secs_f64() / cfg.idle_scan_interval.as_secs_f64()
    };
    println!("### Rebalancing when a worker joins ({trials} joins: 8 shards, 1 worker, then 2)\n");
    println!("| | min / median / p90 / max (s) |");
    println!("|---|---|");
    println!(
        "| shard idle: old owner's final checkpoint to new owner's start | {} |",
        summary(gaps)
    );
    println!(
        "| join to fair share (4 leases) started | {} (at most {:.1} idle scan cycles of {:?}) |",
        summary(fair.clone()),
        cycles(&fair),
        cfg.idle_scan_interval
    );
    println!("\nrecords delivered twice: {duplicates}\n");
}

/// Store operations per lease-hour at steady state (no traffic, so no checkpoints).
async fn operations() {
    const ITEM_BYTES: f64 = 300.0;
    println!("### Lease-store operations per lease-hour at steady state (failover {FAILOVER:?})\n");
    println!(
        "| setup | writes | scans per worker-hour | rows read | est. DynamoDB read units (consistent scans, {ITEM_BYTES} B/item) |"
    );
    println!("|---|---|---|---|---|");
    let java_rcu = |leases: usize, workers: usize| {
        let per_scan = ((leases as f64 * ITEM_BYTES) / 4096.0).ceil();
        workers as f64 * 180.0 * per_scan / leases as f64
    };
    for (leases, workers, renewal) in [
        (4usize, 1usize, Renewal::Heartbeat),
        (8, 2, Renewal::Heartbeat),
        (32, 4, Renewal::Heartbeat),
        (100, 10, Renewal::Heartbeat),
        (8, 2, Renewal::PerLease),
        (32, 4, Renewal::PerLease),
    ] {
        let counts = Arc::new(Counts::default());
        let inner: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
        let tables: Tables = {
            let counts = counts.clone();
            Arc::new(move || {
                let table: Arc<dyn LeaseTable> = Arc::new(CountingTable {
                    inner: inner.clone(),
                    counts: counts.clone(),
                });
                Box::pin(async move { table })
            })
        };
        let mut cluster = Cluster::new(tables, leases as u32, FAILOVER);
        cluster.lease.renewal = renewal;
        // The default shard sync (each also scans the table).
        cluster.shard_sync_interval = Duration::from_secs(60);
        for w in 0..workers {
            cluster.start(&format!("w{w}")).await;
        }
        let fair = leases.div_ceil(workers);
        cluster
            .wait_for("balanced", |c| {
                (0..workers).all(|w| c.held(&format!("w{w}")) + 1 >= fair)
                    && (0..workers)
                        .map(|w| c.held(&format!("w{w}")))
                        .sum::<usize>()
                        == leases
            })
            .await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        counts.reset();
        let hour = Duration::from_secs(3600);
        tokio::time::sleep(hour).await;
        let lease_hours = leases as f64;
        let writes = (Counts::get(&counts.heartbeat_writes)
            + Counts::get(&counts.lease_writes)
            + Counts::get(&counts.checkpoint_writes)) as f64
            / lease_hours;
        let scans = Counts::get(&counts.scans) as f64 / workers as f64;
        let rows = Counts::get(&counts.rows_scanned) as f64 / lease_hours;
        let rows_per_scan =
            Counts::get(&counts.rows_scanned) as f64 / Counts::get(&counts.scans) as f64;
        let rcu = Counts::get(&counts.scans) as f64
            * ((rows_per_scan * ITEM_BYTES) / 4096.0).ceil()
            / lease_hours
            + Counts::get(&counts.gets) as f64 / lease_hours;
        println!(
            "| kcl-rs {renewal:?}, {leases} leases, {workers} workers | {writes:.0} | {scans:.0} | {rows:.0} | {rcu:.0} |"
        );
        cluster.stop_all().await;
        if renewal == Renewal::PerLease && leases == 32 {
            for (l, w) in [(8, 2), (32, 4), (100, 10)] {
                println!(
                    "| Java KCL 2.x (derived), {l} leases, {w} workers | 1,088 | 180 | {:.0} | {:.0} |",
                    w as f64 * 180.0,
                    java_rcu(l, w)
                );
            }
        }
    }
    println!(
        "\n(writes exclude checkpoints, which the checkpoint cadence sets alike for both: the \
         default 10 s adds 360 per lease-hour)\n"
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        fastrand::seed(7);
        takeover(40).await;
        graceful(20).await;
        rebalance(20).await;
        operations().await;
    });
}
