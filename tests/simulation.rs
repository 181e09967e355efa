//! The deterministic simulation of lease coordination ([`kcl_tests::sim`]).
//!
//! CI runs 200 seeded schedules (seeds 0 to 199, in four tests so they run in parallel). A
//! failing schedule prints its seed, its configuration, the violated invariants, the schedule
//! and the command that replays it:
//!
//! ```text
//! KCL_SIM_SEED=<seed> cargo test -p kcl-tests --test simulation -- --ignored replay --nocapture
//! ```
//!
//! The long soak draws a random base seed (printed) and runs many schedules in release mode:
//!
//! ```text
//! KCL_SIM_SEEDS=20000 cargo test --release -p kcl-tests --test simulation -- --ignored soak --nocapture
//! ```
//! (`KCL_SIM_BASE=<seed>` fixes the first seed.)
#![allow(clippy::unwrap_used)]

use std::ops::Range;

use kcl_tests::sim;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs every seed of `seeds`; fails with the reports of the failing ones.
fn run_seeds(seeds: Range<u64>) {
    let mut failures = Vec::new();
    let mut produced = 0;
    for seed in seeds.clone() {
        let outcome = sim::run(seed);
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
    assert!(
        failures.is_empty(),
        "failing seeds: {failures:?} (reports above)"
    );
}

#[test]
fn schedules_0_to_49() {
    run_seeds(0..50);
}

#[test]
fn schedules_50_to_99() {
    run_seeds(50..100);
}

#[test]
fn schedules_100_to_149() {
    run_seeds(100..150);
}

#[test]
fn schedules_150_to_199() {
    run_seeds(150..200);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    for seed in [7, 79, 190] {
        let a = sim::run(seed);
        let b = sim::run(seed);
        assert_eq!(
            a.trace, b.trace,
            "seed {seed}: same seed, different schedule"
        );
        assert_eq!(
            a.digest, b.digest,
            "seed {seed}: same seed, different deliveries"
        );
        assert!(a.produced > 0 && a.deliveries >= a.produced);
    }
    assert_ne!(
        sim::run(7).digest,
        sim::run(8).digest,
        "different seeds, same run"
    );
}

/// Replays `KCL_SIM_SEED` and prints its report.
#[test]
#[ignore = "replays one seed: KCL_SIM_SEED=<seed>"]
fn replay() {
    kcl_tests::init_tracing();
    let seed = env_u64("KCL_SIM_SEED").expect("set KCL_SIM_SEED to the seed to replay");
    let outcome = sim::run(seed);
    eprintln!("{}", outcome.report().replace("FAILED", "report"));
    eprintln!(
        "produced {}, deliveries {}, sessions {}, virtual time {:?}",
        outcome.produced, outcome.deliveries, outcome.sessions, outcome.virtual_time
    );
    assert!(outcome.violations.is_empty(), "seed {seed} fails");
}

/// Many schedules from a random (printed) or given base seed.
#[test]
#[ignore = "long soak: KCL_SIM_SEEDS=<count> [KCL_SIM_BASE=<seed>]"]
fn soak() {
    let count = env_u64("KCL_SIM_SEEDS").unwrap_or(2_000);
    let base = env_u64("KCL_SIM_BASE").unwrap_or_else(|| fastrand::u64(..1 << 48));
    eprintln!("soak: {count} schedules from seed {base}");
    run_seeds(base..base + count);
}
