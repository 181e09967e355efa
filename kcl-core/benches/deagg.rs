//! De-aggregation throughput on KPL-sized aggregates (51200-byte limit) of 100-byte user
//! records, beside MD5 alone over the same protobuf bytes (the floor: every aggregate must be
//! hashed), with both MD5 implementations: `md-5` one aggregate at a time, and the multi-buffer
//! kernel (`kcl_core::deaggregation::multi_md5`, 16 or 8 aggregates per SIMD pass) that
//! `deaggregate_batch_into` uses. Everything runs on one thread.
//!
//! ```text
//! scripts/kpl/bench.sh          # this bench, then the official Python and Node libraries
//! cargo bench -p kcl-core --bench deagg
//! ```
//!
//! `KCL_DEAGG_BENCH_DUMP=FILE` also writes the input (distinct keys) for the Python and Node
//! scripts as `[u32 big-endian length][bytes]` records; `KCL_DEAGG_BENCH_TSV=FILE` appends the
//! results as tab-separated lines for `scripts/kpl/bench.sh`; `KCL_DEAGG_BENCH_ONLY=CASE` runs one
//! case (`md5`, `md5_multi`, `floor_multi`, `deagg_into`, `deagg_batch`, `md5_avx2`) for 5 s per
//! input, for a profiler.
//!
//! No criterion: the cases are timed in alternation, 40 rounds of 50 ms each (so all see the same
//! machine load), and the best round of each is reported beside the median round.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kcl_core::Bytes;
use kcl_core::deaggregation::multi_md5::Kernel;
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

/// Time per call of `f` over one round of about 50 ms.
fn run_once(f: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed() < Duration::from_millis(50) {
        f();
        iters += 1;
    }
    start.elapsed() / iters
}

/// Best and median time per call of each closure over `ROUNDS` interleaved rounds.
fn measure_all(fs: &mut [&mut dyn FnMut()]) -> Vec<(Duration, Duration)> {
    const ROUNDS: usize = 40;
    let mut times = vec![Vec::with_capacity(ROUNDS); fs.len()];
    for _ in 0..ROUNDS {
        for (f, t) in fs.iter_mut().zip(times.iter_mut()) {
            t.push(run_once(f));
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort();
            (t[0], t[t.len() / 2])
        })
        .collect()
}

fn body(r: &Record) -> &[u8] {
    let data: &Bytes = r.data();
    &data[MAGIC.len()..data.len() - DIGEST_LEN]
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
    // `KCL_DEAGG_BENCH_ONLY=CASE` (a key of the TSV output) runs that case alone, for profilers.
    let only = std::env::var("KCL_DEAGG_BENCH_ONLY").ok();
    let kernel = Kernel::detect();
    let mut tsv = std::env::var_os("KCL_DEAGG_BENCH_TSV").map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open KCL_DEAGG_BENCH_TSV")
    });
    println!(
        "multi-buffer MD5 kernel: {kernel:?} ({} lanes); one thread",
        kernel.lanes()
    );
    println!(
        "{:<38} {:>8} {:>8} {:>11} {:>9} {:>9}",
        "case", "MB/s", "median", "records/s", "vs md-5", "vs multi"
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
        out.clear();
        let stats = d.deaggregate_batch_into(input.iter().cloned(), None, &mut out);
        assert_eq!(stats.user_records as usize, user_records);
        assert_eq!(stats.aggregates as usize, input.len());

        let bodies: Vec<&[u8]> = input.iter().map(body).collect();
        let mut digests = Vec::with_capacity(bodies.len());

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
        let mut refcounts = |r: &Record, first: &Record, n: usize| {
            let data: &Bytes = r.data();
            floor_out.clear();
            let pk: Arc<str> = Arc::from(first.partition_key());
            for i in 0..n {
                floor_out.push((
                    pk.clone(),
                    data.slice(i..i + USER_RECORD_BYTES),
                    r.sequence_number().clone(),
                ));
            }
            black_box(&floor_out);
        };

        let mut md5_single = || {
            for b in &bodies {
                black_box(Md5::digest(black_box(b)));
            }
        };
        let mut md5_multi = || {
            digests.clear();
            kernel.digests(black_box(&bodies), &mut digests);
            black_box(&digests);
        };
        let mut floor_multi = || {
            let mut digests = Vec::with_capacity(bodies.len());
            kernel.digests(black_box(&bodies), &mut digests);
            black_box(&digests);
            for (r, (first, n)) in input.iter().zip(&shapes) {
                refcounts(r, first, *n);
            }
        };
        let mut deagg_single = || {
            for r in &input {
                out.clear();
                black_box(d.deaggregate_into(r.clone(), None, &mut out));
            }
        };
        // The 8-lane kernel, for machines without AVX-512 (shown when this one has both).
        let show_avx2 = kernel == Kernel::Avx512 && Kernel::Avx2.is_available();
        let mut avx2_digests = Vec::with_capacity(bodies.len());
        let mut md5_avx2 = || {
            avx2_digests.clear();
            Kernel::Avx2.digests(black_box(&bodies), &mut avx2_digests);
            black_box(&avx2_digests);
        };
        let mut out_batch = Vec::with_capacity(1024);
        let mut deagg_batch = || {
            // The worker's path: one GetRecords batch at a time (here: all the aggregates),
            // user records cleared per batch.
            out_batch.clear();
            black_box(d.deaggregate_batch_into(input.iter().cloned(), None, &mut out_batch));
        };
        let keys = [
            "md5",
            "md5_multi",
            "floor_multi",
            "deagg_into",
            "deagg_batch",
            "md5_avx2",
        ];
        let mut cases: [&mut dyn FnMut(); 6] = [
            &mut md5_single,
            &mut md5_multi,
            &mut floor_multi,
            &mut deagg_single,
            &mut deagg_batch,
            &mut md5_avx2,
        ];
        if let Some(only) = &only {
            // Profiling aid: run one case for a while, print nothing.
            let i = keys.iter().position(|k| k == only).expect("unknown case");
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                cases[i]();
            }
            continue;
        }
        let measured = if show_avx2 { 6 } else { 5 };
        let times = measure_all(&mut cases[..measured]);
        let (md5, multi) = (times[0].0, times[1].0);
        let label = if distinct {
            "distinct key per user record"
        } else {
            "10 shared partition keys"
        };
        println!(
            "-- {label}: {} aggregates, {:.1} MB, {} user records of {USER_RECORD_BYTES} B",
            input.len(),
            bytes as f64 / 1e6,
            user_records
        );
        let names = [
            "MD5 only, md-5 (one at a time)".to_string(),
            format!("MD5 only, multi-buffer ({kernel:?})"),
            "floor: multi-buffer MD5 + refcounts".to_string(),
            "deaggregate_into (md-5)".to_string(),
            "deaggregate_batch_into (multi-buffer)".to_string(),
            "MD5 only, multi-buffer (Avx2)".to_string(),
        ];
        let mbs = |t: Duration| bytes as f64 / t.as_secs_f64() / 1e6;
        for ((name, key), &(best, median)) in names.iter().zip(keys).zip(&times) {
            println!(
                "{:<38} {:>8.1} {:>8.1} {:>11.0} {:>8.1}% {:>8.1}%",
                name,
                mbs(best),
                mbs(median),
                user_records as f64 / best.as_secs_f64(),
                md5.as_secs_f64() / best.as_secs_f64() * 100.0,
                multi.as_secs_f64() / best.as_secs_f64() * 100.0,
            );
            if let Some(file) = tsv.as_mut() {
                use std::io::Write;
                writeln!(
                    file,
                    "rust\t{}\t{key}\t{name}\t{:.1}\t{:.1}\t{:.0}",
                    if distinct { "distinct" } else { "shared" },
                    mbs(best),
                    mbs(median),
                    user_records as f64 / best.as_secs_f64(),
                )
                .expect("write KCL_DEAGG_BENCH_TSV");
            }
        }
    }
}
