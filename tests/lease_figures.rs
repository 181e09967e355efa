//! Lease-coordination figures for the README: what the protocol costs at rest per setup (DynamoDB
//! request units beside Java KCL 2.x and 3.x), and how long takeovers, handoffs and start-ups
//! take.
//!
//! ```text
//! cargo bench -p kcl-tests --bench lease_figures              # everything (about 20 minutes)
//! cargo bench -p kcl-tests --bench lease_figures -- cost      # one section: cost, startup,
//!                                                             # takeover, graceful, rebalance,
//!                                                             # rolling, scale
//! ```
//!
//! Runs the real workers on the in-memory Kinesis model and lease table under tokio's paused
//! clock, with the default lease timings (10 s failover): the times are those the protocol
//! produces (read and renewal schedules, failover), measured from processor lifecycle events,
//! without network latency. Trials draw their timing phase from a fixed seed. Costs are every
//! lease-table call the workers make, billed by DynamoDB's on-demand rules for the read kind the
//! DynamoDB store uses, with the DynamoDB sizes of the actual rows (`counting`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod counting;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use counting::{CountingTable, Counts, Sizes};
use kcl_core::lease::{InMemoryLeaseTable, LeaseConfig, LeaseTable, Renewal};
use kcl_core::worker::CheckpointCadence;
use kcl_testkit::observe::{Call, Lifecycle as Event};
use kcl_testkit::scenarios::{Cluster, STREAM, Tables, shared};
use tokio::time::Instant;

const FAILOVER: Duration = Duration::from_secs(10);
const SETUPS: [(u32, usize); 7] = [
    (1, 1),
    (8, 2),
    (8, 4),
    (40, 20),
    (100, 10),
    (1_000, 100),
    (10_000, 500),
];

fn memory() -> Tables {
    shared(Arc::new(InMemoryLeaseTable::new()))
}

/// A shared in-memory table whose every call is counted (and billed, once sizes are given).
fn counted() -> (Tables, Arc<Counts>, Arc<dyn LeaseTable>) {
    let counts = Arc::new(Counts::default());
    let inner: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
    let table: Arc<dyn LeaseTable> = Arc::new(CountingTable {
        inner: inner.clone(),
        counts: counts.clone(),
    });
    (shared(table), counts, inner)
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
    matches!(c, Call::Shutdown(_))
}

fn names(workers: usize) -> Vec<String> {
    (0..workers).map(|w| format!("w{w}")).collect()
}

async fn settle(cluster: &Cluster) {
    // Past the settle time, so the cluster reads at its idle pace.
    tokio::time::sleep(cluster.lease.settle_time() + cluster.lease.idle_scan_interval).await;
}

/// Java KCL 2.x at rest, read-unit equivalents per lease-hour (docs/leases.md): a renewal per
/// lease every 3.308 s, every worker's eventually consistent scan every 20.05 s.
fn java2(leases: f64, workers: f64, lease_bytes: f64) -> f64 {
    let renewals = 3600.0 / 3.308 * 5.0;
    let scan = 0.5 * ((leases * lease_bytes) / 4096.0).ceil().max(1.0);
    renewals + workers * (3600.0 / 20.05) * scan / leases
}

/// Java KCL 3.x at rest (docs/leases.md): renewals, worker metrics every 30 s, the leader lock
/// every 30 s, non-leaders' owner-index queries every 10 s, the leader's 10-segment scan of the
/// lease table and scan of the worker metrics every 20 s.
fn java3(leases: f64, workers: f64, lease_bytes: f64) -> f64 {
    let renewals = 3600.0 / 3.308 * 5.0;
    let writes = (workers * 120.0 + 120.0) * 5.0;
    let queries = (workers - 1.0) * 360.0 * 0.5;
    let lease_scan = (0.5 * ((leases * lease_bytes) / 4096.0).ceil()).max(10.0 * 0.5);
    let metrics_scan = 0.5 * ((workers * 300.0) / 4096.0).ceil().max(1.0);
    renewals + (writes + queries + 180.0 * (lease_scan + metrics_scan)) / leases
}

/// All `workers` start at once on an empty table over `leases` shards: the time until every shard
/// has a processor, the create attempts, the spread of leases per worker.
async fn start_together(cluster: &mut Cluster, workers: usize) -> Duration {
    let started = Instant::now();
    for name in names(workers) {
        cluster.start(&name).await;
    }
    let shards = cluster.model.open_shard_ids(STREAM).unwrap().len();
    cluster
        .wait_for("every shard processing", |c| {
            let events = c.deliveries.events();
            let initialized: BTreeSet<&str> = events
                .iter()
                .filter(|e| is_init(&e.call))
                .map(|e| e.shard_id.as_str())
                .collect();
            initialized.len() == shards
        })
        .await;
    let events = cluster.deliveries.events();
    let mut last = started;
    let mut firsts: BTreeMap<&str, Instant> = BTreeMap::new();
    for e in events.iter().filter(|e| is_init(&e.call)) {
        firsts.entry(e.shard_id.as_str()).or_insert(e.at);
    }
    for at in firsts.values() {
        last = last.max(*at);
    }
    last - started
}

fn spread(cluster: &Cluster, workers: usize) -> (usize, usize) {
    let held: Vec<usize> = names(workers).iter().map(|w| cluster.held(w)).collect();
    (
        held.iter().copied().min().unwrap_or(0),
        held.iter().copied().max().unwrap_or(0),
    )
}

/// Read and write units per lease-hour at rest, per setup, beside Java KCL 2.x and 3.x; and the
/// start-up of each setup from an empty table.
async fn cost_and_startup() {
    println!(
        "### At rest: DynamoDB request units per lease-hour (failover {FAILOVER:?}, no traffic)\n"
    );
    println!(
        "| setup (leases / workers) | reads | writes | total (reads + 5 x writes) | Java 2.x | Java 3.x | vs 2.x | vs 3.x | checkpoints (default cadence) | full reads / worker-hour | start-up: every shard processing | leases per worker | create attempts |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for (leases, workers) in SETUPS {
        let (tables, counts, inner) = counted();
        let mut cluster = Cluster::new(tables, leases, FAILOVER);
        // The worker's default shard sync interval.
        cluster.shard_sync_interval = Duration::from_secs(60);
        cluster.bound = Duration::from_secs(600);
        let startup = start_together(&mut cluster, workers).await;
        let creates = Counts::get(&counts.creates);
        cluster
            .wait_for("balanced", |c| {
                let (min, max) = spread(c, workers);
                max - min <= 1
                    && names(workers).iter().map(|w| c.held(w)).sum::<usize>() == leases as usize
            })
            .await;
        let (min, max) = spread(&cluster, workers);
        // Past start-up and a full shard-sync cycle.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let sizes = Sizes::of(&inner.list().await.unwrap());
        counts.reset();
        counts.bill_with(sizes);
        let window = if leases >= 10_000 {
            Duration::from_secs(300)
        } else if leases >= 1_000 {
            Duration::from_secs(600)
        } else {
            Duration::from_secs(3600)
        };
        tokio::time::sleep(window).await;
        let lease_hours = f64::from(leases) * window.as_secs_f64() / 3600.0;
        let reads = counts.read_units() / lease_hours;
        let writes = counts.write_units() / lease_hours;
        let total = reads + 5.0 * writes;
        let (l, w) = (f64::from(leases), workers as f64);
        let (j2, j3) = (java2(l, w, sizes.lease), java3(l, w, sizes.lease));
        // Every 10 s while records flow: 360 writes per lease-hour.
        let checkpoints = 360.0 * (sizes.lease / 1024.0).ceil() * 5.0;
        let full_reads = Counts::get(&counts.scans) as f64 / w / (window.as_secs_f64() / 3600.0);
        println!(
            "| {leases} / {workers} | {reads:.0} | {writes:.0} | **{total:.0}** | {j2:.0} | {j3:.0} | {:.2} | **{:.2}** | {checkpoints:.0} | {full_reads:.1} | {:.2} s | {min}-{max} | {creates} |",
            total / j2,
            total / j3,
            startup.as_secs_f64()
        );
        eprintln!(
            "  {leases}/{workers}: lease item {:.0} B, heartbeat row {:.0} B; per lease-hour: {:.0} heartbeats, {:.0} pokes, {:.0} other writes, {:.0} membership reads, {:.1} full reads, {:.0} gets",
            sizes.lease,
            sizes.heartbeat,
            Counts::get(&counts.heartbeat_writes) as f64 / lease_hours,
            Counts::get(&counts.pokes) as f64 / lease_hours,
            Counts::get(&counts.lease_writes) as f64 / lease_hours,
            Counts::get(&counts.worker_reads) as f64 / lease_hours,
            Counts::get(&counts.scans) as f64 / lease_hours,
            Counts::get(&counts.gets) as f64 / lease_hours,
        );
        cluster.stop_all().await;
    }
    println!(
        "\n(reads: eventually consistent reads of the heartbeat rows every failover/6, the sync \
         leader's strong reads of both tables every 60 s; writes: one heartbeat per worker every \
         failover/2. Checkpoints are a separate column: every 10 s while records flow, for \
         Kinesin and Java alike. Java KCL derived from its defaults, docs/leases.md. Start-up: \
         all workers started at the same instant on an empty table, to the last shard's \
         `initialize`.)\n"
    );
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
        let events = cluster.deliveries.events();
        let seen = cluster.deliveries.all();
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
        "\n(heartbeat every {:?}, idle read of the heartbeat rows every {:?}; the bound is \
         failover + one idle interval)\n",
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
        let events = cluster.deliveries.events();
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
        let events = cluster.deliveries.events();
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
        "| join to fair share (4 leases) started | {} (at most {:.1} idle intervals of {:?}) |",
        summary(fair.clone()),
        cycles(&fair),
        cfg.idle_scan_interval
    );
    println!("\nrecords delivered twice: {duplicates}\n");
}

/// A rolling restart: each of 4 workers on 8 shards in turn stops gracefully and starts again
/// with the same id; every shard that moves is idle from its old owner's final checkpoint to its
/// new owner's start.
async fn rolling(trials: usize) {
    let mut gaps = Vec::new();
    let mut duplicates = 0;
    let mut restarts = 0;
    for _ in 0..trials {
        let mut cluster = Cluster::new(memory(), 8, FAILOVER);
        cluster.cadence = CheckpointCadence::default();
        for w in names(4) {
            cluster.start(&w).await;
        }
        cluster
            .wait_for("balanced", |c| names(4).iter().all(|w| c.held(w) == 2))
            .await;
        let producer = cluster.produce_in_background(40, 2_000, 4);
        settle(&cluster).await;
        for w in names(4) {
            let asked = Instant::now();
            cluster.stop(&w).await;
            cluster.start(&w).await;
            restarts += 1;
            cluster
                .wait_for("balanced again", |c| {
                    names(4).iter().all(|w| c.held(w) == 2)
                })
                .await;
            settle(&cluster).await;
            let events = cluster.deliveries.events();
            for e in events
                .iter()
                .filter(|e| e.at >= asked && is_shutdown(&e.call))
            {
                let next = events
                    .iter()
                    .find(|n| n.shard_id == e.shard_id && n.at >= e.at && is_init(&n.call));
                if let Some(next) = next {
                    gaps.push(next.at - e.at);
                }
            }
        }
        let produced = producer.await.unwrap();
        cluster.wait_all_delivered(&produced).await;
        duplicates += cluster.duplicates();
        cluster.stop_all().await;
    }
    println!(
        "### Rolling restart ({trials} runs x 4 restarts: 8 shards, 4 workers, each stopped gracefully and started again)\n"
    );
    println!("| | min / median / p90 / max (s) |");
    println!("|---|---|");
    println!(
        "| shard idle: old owner's final checkpoint to next owner's start ({} handoffs over {restarts} restarts) | {} |",
        gaps.len(),
        summary(gaps)
    );
    println!("\nrecords delivered twice: {duplicates}\n");
}

/// At 1,000 leases and 100 workers: a crash, a graceful shutdown, and a start-up whose sync
/// leader is killed just before it syncs.
async fn scale(trials: usize) {
    let (leases, workers) = (1_000u32, 100usize);
    let mut takeovers = Vec::new();
    let mut gaps = Vec::new();
    let mut duplicates = 0;
    let mut rng = fastrand::Rng::with_seed(14);
    for _ in 0..trials {
        let mut cluster = Cluster::new(memory(), leases, FAILOVER);
        cluster.cadence = CheckpointCadence::default();
        cluster.bound = Duration::from_secs(600);
        start_together(&mut cluster, workers).await;
        cluster
            .wait_for("balanced", |c| {
                let (min, max) = spread(c, workers);
                max - min <= 1
            })
            .await;
        settle(&cluster).await;
        tokio::time::sleep(cluster.lease.renew_interval.mul_f64(rng.f64())).await;
        // A crash of a random worker (not the sync leader).
        let victim = format!("w{}", rng.usize(1..workers));
        let shards = cluster.status(&victim).held_leases;
        let killed = Instant::now();
        cluster.kill(&victim).await;
        let alive: Vec<String> = names(workers)
            .into_iter()
            .filter(|w| *w != victim)
            .collect();
        cluster
            .wait_for("takeover", |c| {
                let held: BTreeSet<String> =
                    alive.iter().flat_map(|w| c.status(w).held_leases).collect();
                shards.iter().all(|s| held.contains(s))
            })
            .await;
        let events = cluster.deliveries.events();
        let mut t = Duration::ZERO;
        for shard in &shards {
            let init = events
                .iter()
                .find(|e| &e.shard_id == shard && e.at >= killed && is_init(&e.call))
                .expect("taken over")
                .at;
            t = t.max(init - killed);
        }
        takeovers.push(t);
        // A graceful shutdown of another one, under traffic.
        settle(&cluster).await;
        let producer = cluster.produce_in_background(200, 4_000, 100);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let leaving = alive[rng.usize(1..alive.len())].clone();
        let shards = cluster.status(&leaving).held_leases;
        let asked = Instant::now();
        cluster.stop(&leaving).await;
        let produced = producer.await.unwrap();
        cluster.wait_all_delivered(&produced).await;
        duplicates += cluster.duplicates();
        let events = cluster.deliveries.events();
        for shard in &shards {
            let stopped = first(&events, &leaving, shard, asked, is_shutdown).expect("handed");
            let started = events
                .iter()
                .find(|e| &e.shard_id == shard && e.at >= stopped && is_init(&e.call))
                .expect("started")
                .at;
            gaps.push(started - stopped);
        }
        cluster.stop_all().await;
    }
    // Start-up with the sync leader (w0, the smallest id) killed just before it syncs.
    let mut cluster = Cluster::new(memory(), leases, FAILOVER);
    cluster.bound = Duration::from_secs(600);
    let started = Instant::now();
    for name in names(workers) {
        cluster.start(&name).await;
    }
    tokio::time::sleep(cluster.lease.idle_scan_interval - Duration::from_millis(50)).await;
    cluster.kill("w0").await;
    cluster
        .wait_for("every shard processing", |c| {
            let events = c.deliveries.events();
            let initialized: BTreeSet<&str> = events
                .iter()
                .filter(|e| is_init(&e.call))
                .map(|e| e.shard_id.as_str())
                .collect();
            initialized.len() == leases as usize
        })
        .await;
    let without_leader = Instant::now() - started;
    cluster.stop_all().await;

    println!("### At 1,000 leases and 100 workers ({trials} trials)\n");
    println!("| | min / median / p90 / max (s) |");
    println!("|---|---|");
    println!(
        "| takeover after a crash: all of the dead worker's leases processing elsewhere | {} (worst {:.2}x failover) |",
        summary(takeovers.clone()),
        takeovers.iter().max().unwrap().as_secs_f64() / FAILOVER.as_secs_f64()
    );
    println!(
        "| graceful shutdown: shard idle from the final checkpoint to the next start | {} |",
        summary(gaps)
    );
    println!(
        "| start-up with the sync leader killed before its first sync: every shard processing | {:.2} |",
        without_leader.as_secs_f64()
    );
    println!("\nrecords delivered twice on the graceful paths: {duplicates}\n");
}

/// Per-lease renewal (mixed fleets with Java KCL) keeps the previous protocol: for reference.
async fn per_lease() {
    let (tables, counts, inner) = counted();
    let mut cluster = Cluster::new(tables, 8, FAILOVER);
    cluster.lease.renewal = Renewal::PerLease;
    cluster.shard_sync_interval = Duration::from_secs(60);
    for w in names(2) {
        cluster.start(&w).await;
    }
    cluster
        .wait_for("balanced", |c| names(2).iter().all(|w| c.held(w) == 4))
        .await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let sizes = Sizes::of(&inner.list().await.unwrap());
    counts.reset();
    counts.bill_with(sizes);
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let reads = counts.read_units() / 8.0;
    let writes = counts.write_units() / 8.0;
    println!(
        "`Renewal::PerLease` (for tables shared with Java workers), 8 leases / 2 workers: {reads:.0} read + {writes:.0} write units per lease-hour, {:.0} in all (Java 2.x: {:.0})\n",
        reads + 5.0 * writes,
        java2(8.0, 2.0, sizes.lease)
    );
    cluster.stop_all().await;
}

fn main() {
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runs = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        fastrand::seed(7);
        if runs("cost") {
            cost_and_startup().await;
            per_lease().await;
        }
        if runs("takeover") {
            takeover(40).await;
        }
        if runs("graceful") {
            graceful(20).await;
        }
        if runs("rebalance") {
            rebalance(20).await;
        }
        if runs("rolling") {
            rolling(5).await;
        }
        if runs("scale") {
            scale(5).await;
        }
    });
}
