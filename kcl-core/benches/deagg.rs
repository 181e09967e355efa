//! De-aggregation throughput on KPL-sized aggregates (51200-byte limit) of 100-byte user
//! records, beside MD5 alone over the same protobuf bytes (the floor: every aggregate must be
//! hashed).
//!
//! ```text
//! cargo bench -p kcl-core --bench deagg
//! # also write the input for scripts/kpl/bench_python.py:
//! KCL_DEAGG_BENCH_DUMP=/tmp/deagg-input.bin cargo bench -p kcl-core --bench deagg
//! ```
//!
//! No criterion: MD5 and de-aggregation are timed in alternation, 40 rounds of 50 ms each, and the
//! best round of each is reported (the machine may be shared).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kcl_core::Bytes;
use kcl_core::deaggregation::{Aggregator, DIGEST_LEN, Deaggregator, MAGIC, Outcome};
use kcl_core::record::{Record, SequenceNumber};
use md5::{Digest, Md5};

const USER_RECORD_BYTES: usize = 100;
const TOTAL_INPUT_BYTES: usize = 4 << 20;

/// Builds aggregates holding ~`TOTAL_INPUT_BYTES` of 100-byte user records.
fn aggregates(distinct_keys: bool) -> Vec<Record> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut agg = Aggregator::default();
    let mut out = Vec::new();
    let mut total = 0;
    let mut i = 0u64;
    while total < TOTAL_INPUT_BYTES {
        let pk = if distinct_keys {
            // UUID-like: a distinct 36-character key per user record (KPL's common use).
            format!("{:032x}-{:03}", rng.u128(..), i % 1000)
        } else {
            format!("device-{}", rng.u8(..10))
        };
        let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..))
            .take(USER_RECORD_BYTES)
            .collect();
        if let Some(a) = agg.try_add(&pk, None, data).expect("fits") {
            total += a.data.len();
            out.push(a);
        }
        i += 1;
    }
    out.into_iter()
        .enumerate()
        .map(|(n, a)| {
            Record::new(
                a.partition_key,
                a.data,
                SequenceNumber::new(format!(
                    "4959033827149025660855969253836157109592157598913{n:07}"
                ))
                .expect("sequence"),
            )
        })
        .collect()
}

/// Time per call of `f`: the minimum over many short timed runs (the machine is shared, so the
/// minimum is the least disturbed figure).
fn run_once(f: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed() < Duration::from_millis(50) {
        f();
        iters += 1;
    }
    start.elapsed() / iters
}

/// Measures the closures interleaved (so all see the same machine load); best of `ROUNDS` each.
fn measure_all(fs: &mut [&mut dyn FnMut()]) -> Vec<Duration> {
    const ROUNDS: usize = 40;
    let mut best = vec![Duration::MAX; fs.len()];
    for _ in 0..ROUNDS {
        for (f, b) in fs.iter_mut().zip(best.iter_mut()) {
            *b = (*b).min(run_once(f));
        }
    }
    best
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this without it (in debug
    // mode), where only a smoke check is worth doing.
    if !std::env::args().any(|a| a == "--bench") {
        let input = aggregates(false);
        let (out, stats) = Deaggregator::default().deaggregate(input.into_iter().take(2), None);
        assert_eq!(stats.aggregates, 2);
        assert!(!out.is_empty());
        return;
    }
    println!(
        "{:<34} {:>10} {:>12} {:>14} {:>9}",
        "case", "MB/s", "records/s", "ns/aggregate", "vs MD5"
    );
    for distinct in [true, false] {
        let input = aggregates(distinct);
        let bytes: usize = input.iter().map(|r| r.data().len()).sum();
        if distinct && let Some(path) = std::env::var_os("KCL_DEAGG_BENCH_DUMP") {
            let mut dump = Vec::new();
            for r in &input {
                dump.extend_from_slice(&(r.data().len() as u32).to_be_bytes());
                dump.extend_from_slice(r.data());
            }
            std::fs::write(&path, dump).expect("write dump");
            eprintln!(
                "wrote {} aggregates to {}",
                input.len(),
                path.to_string_lossy()
            );
        }
        let d = Deaggregator::default();
        let mut out = Vec::with_capacity(1024);
        let mut user_records = 0usize;
        for r in &input {
            out.clear();
            match d.deaggregate_into(r.clone(), None, &mut out) {
                Outcome::Aggregated { records } => user_records += records,
                other => panic!("unexpected {other:?}"),
            }
        }

        // The floor any API handing out `Record`s has: MD5, plus per user record the three
        // reference-count increments (partition key, data slice, sequence number) and the three
        // decrements when the records are dropped. No parsing.
        let shapes: Vec<(Record, usize)> = input
            .iter()
            .map(|r| {
                let mut v = Vec::new();
                d.deaggregate_into(r.clone(), None, &mut v);
                (v[0].clone(), v.len())
            })
            .collect();
        let mut floor_out: Vec<(Arc<str>, Bytes, SequenceNumber)> = Vec::with_capacity(1024);
        let mut md5_only = || {
            for r in &input {
                let data: &Bytes = r.data();
                let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
                black_box(Md5::digest(black_box(body)));
            }
        };
        let mut floor = || {
            for (r, (first, n)) in input.iter().zip(&shapes) {
                let data: &Bytes = r.data();
                let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
                black_box(Md5::digest(black_box(body)));
                floor_out.clear();
                let pk: Arc<str> = Arc::from(first.partition_key());
                for i in 0..*n {
                    floor_out.push((
                        pk.clone(),
                        data.slice(i..i + USER_RECORD_BYTES),
                        r.sequence_number().clone(),
                    ));
                }
                black_box(&floor_out);
            }
        };
        let mut deaggregate = || {
            for r in &input {
                out.clear();
                black_box(d.deaggregate_into(r.clone(), None, &mut out));
            }
        };
        let times = measure_all(&mut [&mut md5_only, &mut floor, &mut deaggregate]);
        let (md5, floor, deagg) = (times[0], times[1], times[2]);
        let label = if distinct {
            "distinct key per user record"
        } else {
            "10 shared partition keys"
        };
        let row = |name: &str, t: Duration, ratio: f64| {
            let secs = t.as_secs_f64();
            println!(
                "{:<34} {:>10.1} {:>12.0} {:>14.0} {:>8.1}%",
                name,
                bytes as f64 / secs / 1e6,
                user_records as f64 / secs,
                secs * 1e9 / input.len() as f64,
                ratio * 100.0
            );
        };
        println!(
            "-- {label}: {} aggregates, {:.1} MB, {} user records of {USER_RECORD_BYTES} B",
            input.len(),
            bytes as f64 / 1e6,
            user_records
        );
        row("MD5 only", md5, 1.0);
        row(
            "floor: MD5 + refcounts",
            floor,
            md5.as_secs_f64() / floor.as_secs_f64(),
        );
        row(
            "deaggregate_into",
            deagg,
            md5.as_secs_f64() / deagg.as_secs_f64(),
        );
    }
}
