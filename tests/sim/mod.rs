//! Deterministic simulation of lease coordination.
//!
//! Many workers run on the in-memory Kinesis model and one in-memory lease table, under tokio's
//! paused clock on a current-thread runtime, driven by a schedule drawn from one seed (small: 2
//! to 5 worker slots; large-fleet: hundreds of workers on thousands of shards): producer
//! traffic over many partition keys (some of it KPL-aggregated); workers started, stopped
//! gracefully, killed, restarted with the same id, paused and resumed (zombies); splits and
//! merges; lease-store faults (failed conditional writes, timeouts before and after the write
//! landed, throttling, 5xx, latency, partitions). After the schedule, a calm phase lets every
//! record drain, and the log is checked against the invariants in [`check`].
//!
//! Everything that decides the run is seeded: the schedule, the producer, the fault draws, and
//! the library's own randomness (`fastrand`, re-seeded on the runtime thread); every `select!`
//! in the library is `biased`, so the same seed replays the same run ([`Outcome::digest`]).
//!
//! | module | owns |
//! |---|---|
//! | `world` | the model, the workers, the producer and the schedule |
//! | `faults` | the fault-injecting and freezing wrappers around the real table and model |
//! | [`log`] | the ordered record of everything that happened |
//! | [`check`] | the invariants |
// Mounted by the simulation tests and by the kcl-sim tool; each uses a part of it.
#![allow(dead_code)]

pub mod check;
mod faults;
pub mod log;
mod world;

use std::hash::{Hash, Hasher};
use std::time::Duration;

use kcl_core::lease::Renewal;

/// What a run exercises. [`SimConfig::for_seed`] draws one from the seed.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Worker slots (ids `w0`...).
    pub workers: usize,
    /// Shards at the start.
    pub initial_shards: u32,
    /// Partition keys.
    pub keys: usize,
    /// Lease failover time.
    pub failover: Duration,
    /// Renewal mode.
    pub renewal: Renewal,
    /// Automatic checkpoint every this many records.
    pub every_records: u64,
    /// Records per `GetRecords` call.
    pub max_records_per_call: u32,
    /// How long the schedule runs.
    pub chaos_for: Duration,
    /// How long the producer writes.
    pub produce_for: Duration,
    /// KPL aggregates among the records.
    pub kpl: bool,
    /// Injected lease-store faults.
    pub store_faults: bool,
    /// Paused and resumed workers.
    pub zombies: bool,
    /// Killed workers.
    pub kills: bool,
    /// Splits and merges.
    pub resharding: bool,
    /// Batches in flight per shard: 1 is the ordinary path; more runs the shards key-ordered
    /// (`WorkerBuilder::key_ordered`) with random processing times, so batches complete out of
    /// order. [`SimConfig::for_seed`] leaves it at 1; [`SimConfig::key_ordered_for_seed`]
    /// draws it.
    pub max_in_flight: usize,
    /// How far behind an eventually consistent read of the heartbeat rows may be (zero: never).
    pub stale_reads: Duration,
    /// Large-fleet mode: every worker starts at once, and each event of the schedule hits a
    /// group of workers (see [`SimConfig::large_for_seed`]).
    pub large: bool,
    /// Streams consumed through the one lease table: 1 is a single-stream worker; 2 runs
    /// multi-stream workers over a second stream (`sim-2`, as many shards, resharded never),
    /// each partition key written to one of them.
    pub streams: usize,
}

impl SimConfig {
    /// A configuration drawn from `seed`: every kind of trouble is on in most runs.
    pub fn for_seed(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0xc0f1_6000);
        let chaos = Duration::from_secs(rng.u64(60..=180));
        Self {
            workers: rng.usize(2..=5),
            initial_shards: rng.u32(1..=4),
            keys: rng.usize(10..=120),
            failover: Duration::from_secs(10),
            renewal: if rng.f64() < 0.8 {
                Renewal::Heartbeat
            } else {
                Renewal::PerLease
            },
            every_records: 30,
            max_records_per_call: 50,
            chaos_for: chaos,
            produce_for: chaos.mul_f64(0.9),
            kpl: rng.f64() < 0.7,
            store_faults: rng.f64() < 0.8,
            zombies: rng.f64() < 0.8,
            kills: rng.f64() < 0.8,
            resharding: rng.f64() < 0.8,
            stale_reads: if rng.f64() < 0.7 {
                Duration::from_millis(rng.u64(200..=3_000))
            } else {
                Duration::ZERO
            },
            large: false,
            max_in_flight: 1,
            streams: 1,
        }
    }

    /// The configuration of `seed` ([`SimConfig::for_seed`]) in key-ordered mode, with 2 to 16
    /// batches in flight per shard (drawn from the seed, apart from the other draws).
    pub fn key_ordered_for_seed(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x0bde_4ed0);
        Self {
            max_in_flight: rng.usize(2..=16),
            ..Self::for_seed(seed)
        }
    }

    /// The configuration of `seed` ([`SimConfig::for_seed`]) with two streams through one lease
    /// table (multi-stream workers).
    pub fn two_streams_for_seed(seed: u64) -> Self {
        Self {
            streams: 2,
            ..Self::for_seed(seed)
        }
    }

    /// A large-fleet configuration drawn from `seed`: 100 to 300 worker slots, all started at
    /// once on an empty table over 1,000 to 3,000 shards, the same fault menu applied to groups
    /// of workers (several killed, stopped, paused or faulted together, a stop and start being
    /// a rolling restart), events every 0.2 to 3 s.
    pub fn large_for_seed(seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x1a76_e000);
        let chaos = Duration::from_secs(rng.u64(60..=120));
        Self {
            workers: rng.usize(100..=300),
            initial_shards: rng.u32(1_000..=3_000),
            keys: rng.usize(200..=1_000),
            failover: Duration::from_secs(10),
            // Per-lease renewal is the mode for small mixed fleets; large fleets use heartbeats.
            renewal: Renewal::Heartbeat,
            every_records: 30,
            max_records_per_call: 50,
            chaos_for: chaos,
            produce_for: chaos.mul_f64(0.9),
            kpl: rng.f64() < 0.7,
            store_faults: rng.f64() < 0.8,
            zombies: rng.f64() < 0.8,
            kills: rng.f64() < 0.8,
            resharding: rng.f64() < 0.8,
            stale_reads: Duration::from_millis(rng.u64(0..=3_000)),
            large: true,
            max_in_flight: 1,
            streams: 1,
        }
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The configuration it drew.
    pub config: SimConfig,
    /// Every invariant violated (empty on success).
    pub violations: Vec<String>,
    /// User records produced.
    pub produced: usize,
    /// Deliveries (with duplicates).
    pub deliveries: usize,
    /// Processor sessions.
    pub sessions: usize,
    /// Virtual time the run took.
    pub virtual_time: Duration,
    /// A digest of what happened, equal for equal seeds.
    pub digest: u64,
    /// What the schedule did.
    pub trace: Vec<String>,
}

impl Outcome {
    /// A report naming the seed and how to replay it.
    pub fn report(&self) -> String {
        let mut out = format!(
            "simulation seed {} {} ({})\n  replay: cargo run -p kcl-tests --bin kcl-sim -- \
             {} {}   (KCL_SIM_VERBOSE=1 for every lease write and session)\n",
            self.seed,
            if self.violations.is_empty() {
                "passed"
            } else {
                "FAILED"
            },
            world::describe(&self.config),
            if self.config.max_in_flight > 1 {
                "replay-key-ordered"
            } else if self.config.large {
                "replay-large"
            } else {
                "replay"
            },
            self.seed
        );
        for v in &self.violations {
            out.push_str(&format!("  violation: {v}\n"));
        }
        out.push_str("  schedule:\n");
        for line in &self.trace {
            out.push_str(&format!("    {line}\n"));
        }
        out
    }
}

/// Runs every seed of `seeds`, printing the report of each failing one and a summary; returns
/// the failing seeds.
pub fn run_range(seeds: std::ops::Range<u64>) -> Vec<u64> {
    run_range_with(seeds, run)
}

/// [`run_range`] in large-fleet mode.
pub fn run_range_large(seeds: std::ops::Range<u64>) -> Vec<u64> {
    run_range_with(seeds, run_large)
}

fn run_range_with(seeds: std::ops::Range<u64>, run: fn(u64) -> Outcome) -> Vec<u64> {
    let mut failures = Vec::new();
    let mut produced = 0;
    for seed in seeds.clone() {
        let outcome = run(seed);
        produced += outcome.produced;
        if !outcome.violations.is_empty() {
            eprintln!("{}", outcome.report());
            failures.push(outcome.seed);
        }
    }
    eprintln!(
        "seeds {seeds:?}: {} schedules, {produced} records, {} failed",
        seeds.end - seeds.start,
        failures.len()
    );
    failures
}

/// Runs the schedule of `seed`.
pub fn run(seed: u64) -> Outcome {
    run_with(seed, SimConfig::for_seed(seed))
}

/// Runs the schedule of `seed` in key-ordered mode ([`SimConfig::key_ordered_for_seed`]).
pub fn run_key_ordered(seed: u64) -> Outcome {
    run_with(seed, SimConfig::key_ordered_for_seed(seed))
}

/// Runs the schedule of `seed` with two streams ([`SimConfig::two_streams_for_seed`]).
pub fn run_two_streams(seed: u64) -> Outcome {
    run_with(seed, SimConfig::two_streams_for_seed(seed))
}

/// Runs the large-fleet schedule of `seed`.
pub fn run_large(seed: u64) -> Outcome {
    run_with(seed, SimConfig::large_for_seed(seed))
}

/// Runs the schedule of `seed` with `config`.
pub fn run_with(seed: u64, config: SimConfig) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async move {
        // The library's own randomness (steal choice, backoff jitter) runs on this thread.
        fastrand::seed(seed);
        let mut world = world::World::new(seed, config.clone());
        let drained = world.run().await;
        let virtual_time = world.log.elapsed();
        let entries = world.log.with(std::mem::take);
        let mut violations = check::check(&entries, &config);
        if !drained && violations.is_empty() {
            violations.push("records still undelivered at the end of the calm phase".into());
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        entries.trace.hash(&mut hasher);
        for d in &entries.deliveries {
            let s = &entries.sessions[d.session];
            (d.delivered.seq, &s.worker, &s.shard, &d.payload).hash(&mut hasher);
        }
        Outcome {
            seed,
            violations,
            produced: entries.produced.len(),
            deliveries: entries.deliveries.len(),
            sessions: entries.sessions.len(),
            virtual_time,
            digest: hasher.finish(),
            trace: entries.trace,
            config,
        }
    })
}
