//! Fuzz target for the aggregator: arbitrary user records and size limits must round-trip
//! through `Aggregator` and `Deaggregator` exactly, every aggregate within the limit.
//!
//! Input layout: 2 bytes of size limit, then records of
//! `[flags][pk len][pk bytes][ehk u128 if flags&1][data len u16][data]`, until the input ends.
#![no_main]

use kcl_core::deaggregation::{AggregationError, Aggregator, Deaggregator, Outcome};
use kcl_core::record::{Record, SequenceNumber};
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn byte(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let Some(limit) = input.take(2) else { return };
    let max_size = 20 + usize::from(u16::from_be_bytes([limit[0], limit[1]]));
    let mut agg = Aggregator::new(max_size);
    let mut accepted = Vec::new();
    let mut aggregates = Vec::new();
    while let Some(flags) = input.byte() {
        let Some(pk_len) = input.byte() else { break };
        let Some(pk) = input.take(usize::from(pk_len)) else {
            break;
        };
        let pk = String::from_utf8_lossy(pk).into_owned();
        let ehk = if flags & 1 != 0 {
            let Some(b) = input.take(16) else { break };
            Some(u128::from_be_bytes(b.try_into().expect("16 bytes")).to_string())
        } else {
            None
        };
        let Some(len) = input.take(2) else { break };
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]) % 4096);
        let Some(payload) = input.take(len.min(input.0.len())) else {
            break;
        };
        match agg.try_add(&pk, ehk.as_deref(), payload.to_vec()) {
            Ok(flushed) => {
                aggregates.extend(flushed);
                accepted.push((pk, ehk, payload.to_vec()));
            }
            Err(AggregationError::RecordTooLarge { size, max_size: m }) => assert!(size > m),
            Err(AggregationError::InvalidPartitionKey { chars }) => {
                assert!(chars == 0 || chars > 256)
            }
            Err(e) => panic!("unexpected error {e}"),
        }
        if !agg.is_empty() {
            assert!(agg.size_bytes() <= max_size);
        }
    }
    let predicted = agg.size_bytes();
    if let Some(last) = agg.flush() {
        assert_eq!(last.data.len(), predicted);
        aggregates.push(last);
    }
    let d = Deaggregator::default();
    let mut out = Vec::new();
    for (i, a) in aggregates.iter().enumerate() {
        assert!(a.data.len() <= max_size);
        let outer = Record::new(
            a.partition_key.as_str(),
            a.data.clone(),
            SequenceNumber::from_u128(i as u128),
        );
        let outcome = d.deaggregate_into(outer, None, &mut out);
        assert_eq!(
            outcome,
            Outcome::Aggregated {
                records: a.user_records
            }
        );
    }
    assert_eq!(out.len(), accepted.len());
    for (r, (pk, ehk, data)) in out.iter().zip(&accepted) {
        assert_eq!(r.partition_key(), pk);
        assert_eq!(r.explicit_hash_key(), ehk.as_deref());
        assert_eq!(r.data().as_ref(), &data[..]);
    }
});
