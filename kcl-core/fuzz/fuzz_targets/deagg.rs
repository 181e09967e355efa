//! Fuzz target for the KPL de-aggregator.
//!
//! Asserts: no panic; the input is always delivered (pass-through or user records); the bytes
//! allocated during one `deaggregate_into` call stay within a small multiple of the input; and,
//! whenever we accept an aggregate and `prost` also decodes it, both agree record by record.
//!
//! The first input byte selects a mode: raw bytes as the record data (exercises the magic and
//! digest checks), or the rest framed as a valid aggregate (magic + bytes + correct MD5) so the
//! fuzzer reaches the protobuf reader past the digest check, optionally with the Java-style
//! hash-range filter switched on.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use kcl_core::deaggregation::proto::{AggregatedRecordMessage, frame};
use kcl_core::deaggregation::{DeaggregationConfig, Deaggregator, Outcome};
use kcl_core::record::{HashKeyRange, Record, SequenceNumber};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Counts bytes allocated (alloc + realloc growth) by this thread while `COUNTING` is set.
struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    // `try_with`: thread-locals may be gone during thread teardown.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCATED.try_with(|a| a.set(a.get() + bytes));
        }
    });
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size.saturating_sub(layout.size()));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allowed allocation: this many bytes per input byte, plus a constant.
const BYTES_PER_INPUT_BYTE: usize = 64;
const CONSTANT_ALLOWANCE: usize = 4096;

fuzz_target!(|input: &[u8]| {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let data: Vec<u8> = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        frame(rest)
    };
    let filter = mode & 2 != 0;
    let range = HashKeyRange {
        start: u128::from(mode) << 120,
        end: u128::MAX >> (mode >> 4),
    };
    let deagg = Deaggregator::new(DeaggregationConfig {
        filter_by_shard_hash_range: filter,
    });
    let record = Record::new(
        "outer",
        Bytes::from(data.clone()),
        SequenceNumber::from_u128(42),
    );
    let mut out = Vec::new();

    ALLOCATED.with(|a| a.set(0));
    COUNTING.with(|c| c.set(true));
    let outcome = deagg.deaggregate_into(record, Some(&range), &mut out);
    COUNTING.with(|c| c.set(false));
    let allocated = ALLOCATED.with(Cell::get);

    let limit = BYTES_PER_INPUT_BYTE * data.len() + CONSTANT_ALLOWANCE;
    assert!(
        allocated <= limit,
        "allocated {allocated} bytes for a {} byte record (limit {limit})",
        data.len()
    );
    assert_eq!(out.len(), outcome.appended());

    match outcome {
        Outcome::NotAggregated | Outcome::PassedThrough(_) => {
            assert_eq!(out[0].data().as_ref(), &data[..]);
            assert!(!out[0].is_aggregated());
        }
        Outcome::Dropped { .. } => assert!(filter),
        Outcome::Aggregated { records } => {
            let body = &data[4..data.len() - 16];
            // prost rejects invalid UTF-8 that we decode lossily and ignores proto2 `required`;
            // compare whenever it does decode.
            if let Ok(msg) = AggregatedRecordMessage::decode(body) {
                assert_eq!(msg.records.len(), records);
                for (i, (m, r)) in msg.records.iter().zip(&out).enumerate() {
                    assert_eq!(r.sub_sequence_number(), i as u64);
                    assert_eq!(&m.data, r.data());
                    let pk = &msg.partition_key_table[m.partition_key_index as usize];
                    assert_eq!(pk, r.partition_key());
                    let ehk = m
                        .explicit_hash_key_index
                        .map(|i| msg.explicit_hash_key_table[i as usize].as_str());
                    assert_eq!(ehk, r.explicit_hash_key());
                    assert_eq!(m.tags.len(), r.tags().len());
                    for (mt, t) in m.tags.iter().zip(r.tags()) {
                        assert_eq!(mt.key, t.key);
                        assert_eq!(mt.value, t.value);
                    }
                }
            }
        }
    }
});
