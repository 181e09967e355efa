//! `kcl-sim`: replays one simulation seed, or soaks many.
//!
//! ```text
//! cargo run -p kcl-tests --bin kcl-sim -- replay <seed>
//! cargo run -p kcl-tests --bin kcl-sim -- replay-key-ordered <seed>
//! cargo run --release -p kcl-tests --bin kcl-sim -- soak <count> [first-seed]
//! cargo run --release -p kcl-tests --bin kcl-sim -- replay-large <seed>
//! cargo run --release -p kcl-tests --bin kcl-sim -- soak-large <count> [first-seed]
//! ```
//!
//! The `-large` forms run the large-fleet mode (hundreds of workers on thousands of shards,
//! `SimConfig::large_for_seed`).
//!
//! `replay` prints the seed's configuration, schedule and violations; with `KCL_SIM_VERBOSE=1`
//! also every lease-table write and processor session, and with `RUST_LOG=kcl_core=info` the
//! library's log. `soak` runs `count` schedules from `first-seed` (random and printed when
//! omitted) and exits non-zero if any failed. CI runs seeds 0 to 199 and a few large-fleet seeds
//! (`tests/simulation.rs`).
#![allow(clippy::unwrap_used)]

mod sim;
mod support;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: kcl-sim replay <seed> | kcl-sim replay-key-ordered <seed> | \
         kcl-sim soak <count> [first-seed] | kcl-sim replay-large <seed> | \
         kcl-sim soak-large <count> [first-seed]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    let large = args.first().is_some_and(|a| a.ends_with("-large"));
    match args.first().map(|a| a.trim_end_matches("-large")) {
        Some(mode @ ("replay" | "replay-key-ordered")) => {
            let Some(seed) = number(1) else {
                return usage();
            };
            support::init_tracing_to_stderr();
            let started = std::time::Instant::now();
            let outcome = if large {
                sim::run_large(seed)
            } else if mode == "replay" {
                sim::run(seed)
            } else {
                sim::run_key_ordered(seed)
            };
            println!("{}", outcome.report());
            println!(
                "produced {}, deliveries {}, sessions {}, virtual time {:?}, wall time {:?}",
                outcome.produced,
                outcome.deliveries,
                outcome.sessions,
                outcome.virtual_time,
                started.elapsed()
            );
            if outcome.violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Some("soak") => {
            let Some(count) = number(1) else {
                return usage();
            };
            let base = number(2).unwrap_or_else(|| fastrand::u64(..1 << 48));
            eprintln!(
                "soak: {count} {}schedules from seed {base}",
                if large { "large-fleet " } else { "" }
            );
            let failed = if large {
                sim::run_range_large(base..base + count)
            } else {
                sim::run_range(base..base + count)
            };
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}
