//! The deterministic simulation of lease coordination ([`crate::sim`]).
//!
//! CI runs 200 seeded schedules (seeds 0 to 199, in four tests so they run in parallel) and four
//! large-fleet schedules (seeds 0 to 3: 100 to 300 workers on 1,000 to 3,000 shards, in two
//! tests). A failing schedule prints its seed, its configuration, the violated invariants, the
//! schedule and the command that replays it. Replaying one seed and the long soak are the
//! `kcl-sim` tool (`tests/sim_tool.rs`):
//!
//! ```text
//! cargo run -p kcl-tests --bin kcl-sim -- replay <seed>
//! cargo run -p kcl-tests --bin kcl-sim -- replay-key-ordered <seed>
//! cargo run --release -p kcl-tests --bin kcl-sim -- soak 20000 [first-seed]
//! cargo run --release -p kcl-tests --bin kcl-sim -- replay-large <seed>
//! cargo run --release -p kcl-tests --bin kcl-sim -- soak-large 100 [first-seed]
//! ```
//!
//! Twelve more schedules (seeds 0 to 11) run with the shards key-ordered.
#![allow(clippy::unwrap_used)]

mod sim;

use std::ops::Range;

/// Runs every seed of `seeds`; fails with the reports of the failing ones.
fn run_seeds(seeds: Range<u64>) {
    let failures = sim::run_range(seeds);
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

/// Some schedules with the shards key-ordered (2 to 16 batches in flight, random processing
/// times): the same invariants, per-key order and nothing lost among them.
#[test]
fn key_ordered_schedules() {
    let mut failures = Vec::new();
    for seed in 0..12 {
        let outcome = sim::run_key_ordered(seed);
        assert!(outcome.config.max_in_flight > 1);
        if !outcome.violations.is_empty() {
            eprintln!("{}", outcome.report());
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "failing key-ordered seeds: {failures:?} (reports above)"
    );
    let (a, b) = (sim::run_key_ordered(5), sim::run_key_ordered(5));
    assert_eq!(
        (a.trace, a.digest),
        (b.trace, b.digest),
        "key-ordered seed 5: same seed, different run"
    );
}

/// Some schedules with two streams through one lease table (multi-stream workers, resharding
/// in the first): the same invariants over the shards of both.
#[test]
fn two_stream_schedules() {
    let mut failures = Vec::new();
    for seed in 0..12 {
        let outcome = sim::run_two_streams(seed);
        assert_eq!(outcome.config.streams, 2);
        if !outcome.violations.is_empty() {
            eprintln!("{}", outcome.report());
            failures.push(seed);
        }
    }
    assert!(
        failures.is_empty(),
        "failing two-stream seeds: {failures:?} (reports above)"
    );
}

/// Runs every large-fleet seed of `seeds`; fails with the reports of the failing ones.
fn run_large_seeds(seeds: Range<u64>) {
    let failures = sim::run_range_large(seeds);
    assert!(
        failures.is_empty(),
        "failing large-fleet seeds: {failures:?} (reports above)"
    );
}

#[test]
fn large_fleet_schedules_0_and_1() {
    run_large_seeds(0..2);
}

#[test]
fn large_fleet_schedules_2_and_3() {
    run_large_seeds(2..4);
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
