//! `kcl-sim`: replays one simulation seed, or soaks many.
//!
//! ```text
//! cargo run -p kcl-tests --bin kcl-sim -- replay <seed>
//! cargo run -p kcl-tests --bin kcl-sim -- replay-key-ordered <seed>
//! cargo run --release -p kcl-tests --bin kcl-sim -- soak <count> [first-seed]
//! ```
//!
//! `replay` prints the seed's configuration, schedule and violations; with `KCL_SIM_VERBOSE=1`
//! also every lease-table write and processor session, and with `RUST_LOG=kcl_core=info` the
//! library's log. `soak` runs `count` schedules from `first-seed` (random and printed when
//! omitted) and exits non-zero if any failed. CI runs seeds 0 to 199 (`tests/simulation.rs`).
#![allow(clippy::unwrap_used)]

use std::process::ExitCode;

use kcl_tests::sim;

fn usage() -> ExitCode {
    eprintln!(
        "usage: kcl-sim replay <seed> | kcl-sim replay-key-ordered <seed> | kcl-sim soak <count> [first-seed]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok());
    match args.first().map(String::as_str) {
        Some(mode @ ("replay" | "replay-key-ordered")) => {
            let Some(seed) = number(1) else {
                return usage();
            };
            kcl_tests::init_tracing_to_stderr();
            let outcome = if mode == "replay" {
                sim::run(seed)
            } else {
                sim::run_key_ordered(seed)
            };
            println!("{}", outcome.report());
            println!(
                "produced {}, deliveries {}, sessions {}, virtual time {:?}",
                outcome.produced, outcome.deliveries, outcome.sessions, outcome.virtual_time
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
            eprintln!("soak: {count} schedules from seed {base}");
            if sim::run_range(base..base + count).is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}
