//! Fuzz target for the batch de-aggregation path and the multi-buffer MD5 kernels.
//!
//! The input is cut into records: each starts with a header byte whose low bit frames the record
//! as a valid aggregate (magic + bytes + correct MD5, so the protobuf reader is reached) or leaves
//! it raw, and whose other bits give the record's length (in units of 8 bytes, capped by what is
//! left). Asserts:
//! - `deaggregate_batch_into` gives exactly the records and counters of `deaggregate_into` on
//!   each record in turn (with and without the hash-range filter);
//! - every multi-buffer MD5 kernel this CPU has agrees with the `md-5` crate on every record.
#![no_main]

use bytes::Bytes;
use kcl_core::deaggregation::multi_md5::Kernel;
use kcl_core::deaggregation::proto::frame;
use kcl_core::deaggregation::{DeaggregationConfig, DeaggregationStats, Deaggregator};
use kcl_core::record::{HashKeyRange, Record, SequenceNumber};
use libfuzzer_sys::fuzz_target;
use md5::{Digest, Md5};

fuzz_target!(|input: &[u8]| {
    let mut rest = input;
    let mut records = Vec::new();
    let mut messages: Vec<Vec<u8>> = Vec::new();
    while let Some((&header, tail)) = rest.split_first() {
        let len = (usize::from(header >> 1) * 8).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        let data = if header & 1 == 1 { frame(chunk) } else { chunk.to_vec() };
        messages.push(chunk.to_vec());
        records.push(Record::new(
            format!("outer-{}", records.len()),
            Bytes::from(data),
            SequenceNumber::from_u128(1000 + records.len() as u128),
        ));
    }

    let range = HashKeyRange {
        start: u128::from(input.first().copied().unwrap_or(0)) << 120,
        end: u128::MAX >> (input.last().copied().unwrap_or(0) >> 4),
    };
    for filter in [false, true] {
        let d = Deaggregator::new(DeaggregationConfig {
            filter_by_shard_hash_range: filter,
        });
        let mut want = Vec::new();
        let mut want_stats = DeaggregationStats::default();
        for r in records.iter().cloned() {
            want_stats.add(&d.deaggregate_into(r, Some(&range), &mut want));
        }
        let mut got = Vec::new();
        let stats = d.deaggregate_batch_into(records.iter().cloned(), Some(&range), &mut got);
        assert_eq!(stats, want_stats);
        assert_eq!(got, want);
    }

    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let want: Vec<[u8; 16]> = refs.iter().map(|m| Md5::digest(m).into()).collect();
    for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
        let mut got = Vec::new();
        kernel.digests(&refs, &mut got);
        assert_eq!(got, want, "{kernel:?}");
    }
});
