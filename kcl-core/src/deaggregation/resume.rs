//! Restart filtering: dropping user records a checkpoint already covers.

use crate::record::{ExtendedSequenceNumber, Record};

/// Removes every record at or before `checkpoint`, keeping the order of the rest; returns how
/// many were removed.
///
/// A shard is re-read `AT_SEQUENCE_NUMBER` of the checkpoint, so the first fetched record is the
/// checkpointed one. For a checkpoint at `(sequence, k)` the user records `0..=k` of that
/// aggregate are removed and processing resumes at `k + 1`; a non-aggregated record at `sequence`
/// (sub-sequence 0) is removed by a checkpoint at `(sequence, 0)`. The initial sentinels
/// (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`) remove nothing; `SHARD_END` removes everything.
pub fn skip_through(records: &mut Vec<Record>, checkpoint: &ExtendedSequenceNumber) -> usize {
    let before = records.len();
    match checkpoint {
        ExtendedSequenceNumber::AtTimestamp
        | ExtendedSequenceNumber::TrimHorizon
        | ExtendedSequenceNumber::Latest => {}
        ExtendedSequenceNumber::ShardEnd => records.clear(),
        ExtendedSequenceNumber::Sequence {
            sequence,
            sub_sequence,
        } => records.retain(|r| {
            r.sequence_number
                .cmp(sequence)
                .then(r.sub_sequence_number.cmp(sub_sequence))
                .is_gt()
        }),
    }
    before - records.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::SequenceNumber;

    fn aggregate(seq: u128, n: u64) -> Vec<Record> {
        (0..n)
            .map(|i| {
                Record::new("pk", vec![i as u8], SequenceNumber::from_u128(seq))
                    .with_sub_sequence(i)
            })
            .collect()
    }

    fn batch() -> Vec<Record> {
        let mut v = aggregate(100, 5);
        v.push(Record::new("pk", "plain", SequenceNumber::from_u128(101)));
        v.extend(aggregate(102, 3));
        v
    }

    fn positions(v: &[Record]) -> Vec<(String, u64)> {
        v.iter()
            .map(|r| (r.sequence_number().to_string(), r.sub_sequence_number()))
            .collect()
    }

    #[test]
    fn checkpoint_at_k_resumes_at_k_plus_one() {
        for k in 0..5u64 {
            let mut v = batch();
            let cp = ExtendedSequenceNumber::Sequence {
                sequence: SequenceNumber::from_u128(100),
                sub_sequence: k,
            };
            assert_eq!(skip_through(&mut v, &cp), (k + 1) as usize);
            let first = &v[0];
            if k < 4 {
                assert_eq!(first.sequence_number(), &SequenceNumber::from_u128(100));
                assert_eq!(first.sub_sequence_number(), k + 1);
            } else {
                assert_eq!(first.sequence_number(), &SequenceNumber::from_u128(101));
            }
            // Nothing at or before the checkpoint survives.
            assert!(v.iter().all(|r| r.position() > cp));
        }
    }

    #[test]
    fn plain_and_sentinel_checkpoints() {
        let mut v = batch();
        let cp = ExtendedSequenceNumber::at(SequenceNumber::from_u128(101));
        assert_eq!(skip_through(&mut v, &cp), 6);
        assert_eq!(
            positions(&v),
            vec![("102".into(), 0), ("102".into(), 1), ("102".into(), 2)]
        );

        for s in [
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            ExtendedSequenceNumber::AtTimestamp,
        ] {
            let mut v = batch();
            assert_eq!(skip_through(&mut v, &s), 0);
            assert_eq!(v.len(), 9);
        }
        let mut v = batch();
        assert_eq!(skip_through(&mut v, &ExtendedSequenceNumber::ShardEnd), 9);
        assert!(v.is_empty());

        // A checkpoint before every record removes nothing; after every record removes all.
        let mut v = batch();
        let cp = ExtendedSequenceNumber::at(SequenceNumber::from_u128(99));
        assert_eq!(skip_through(&mut v, &cp), 0);
        let cp = ExtendedSequenceNumber::Sequence {
            sequence: SequenceNumber::from_u128(102),
            sub_sequence: 2,
        };
        assert_eq!(skip_through(&mut v, &cp), 9);
    }
}
