//! The de-aggregation API as the worker uses it, from outside the crate: aggregate, fetch,
//! de-aggregate, checkpoint mid-aggregate, restart at the checkpoint, and check that every user
//! record is processed exactly once.

use kcl_core::Bytes;
use kcl_core::deaggregation::{
    Aggregator, DeaggregationConfig, DeaggregationStats, Deaggregator, Outcome, skip_through,
};
use kcl_core::record::{HashKeyRange, Record, SequenceNumber};

/// A shard's raw records: aggregates of numbered user records, with plain records in between.
fn shard() -> (Vec<Record>, usize) {
    let mut rng = fastrand::Rng::with_seed(11);
    let mut raw = Vec::new();
    let mut user = 0usize;
    let mut seq = 1_000u128;
    for _ in 0..20 {
        let mut agg = Aggregator::new(rng.usize(200..3000));
        for _ in 0..rng.usize(1..40) {
            let data = format!("user-{user}");
            user += 1;
            if let Some(a) = agg
                .try_add(&format!("pk-{}", rng.u8(..5)), None, data)
                .unwrap()
            {
                raw.push(Record::new(
                    a.partition_key,
                    a.data,
                    SequenceNumber::from_u128(seq),
                ));
                seq += 1;
            }
        }
        let a = agg.flush().unwrap();
        raw.push(Record::new(
            a.partition_key,
            a.data,
            SequenceNumber::from_u128(seq),
        ));
        seq += 1;
        raw.push(Record::new(
            "plain",
            Bytes::from(format!("user-{user}")),
            SequenceNumber::from_u128(seq),
        ));
        user += 1;
        seq += 1;
    }
    (raw, user)
}

fn payload(r: &Record) -> usize {
    std::str::from_utf8(r.data())
        .unwrap()
        .strip_prefix("user-")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn checkpoint_mid_aggregate_resumes_without_loss_or_repeat() {
    let (raw, users) = shard();
    let d = Deaggregator::default();
    let (all, stats) = d.deaggregate(raw.clone(), Some(&HashKeyRange::FULL));
    assert_eq!(all.len(), users);
    assert_eq!(stats.passed_through, 0);
    assert_eq!(stats.not_aggregated, 20);

    // Try every possible checkpoint position.
    for stop in 0..all.len() {
        let checkpoint = all[stop].position();
        let mut processed: Vec<usize> = all[..=stop].iter().map(payload).collect();

        // Restart AT_SEQUENCE_NUMBER of the checkpoint: re-fetch from that raw record.
        let refetched: Vec<Record> = raw
            .iter()
            .filter(|r| r.sequence_number() >= all[stop].sequence_number())
            .cloned()
            .collect();
        let (mut again, _) = d.deaggregate(refetched, None);
        let skipped = skip_through(&mut again, &checkpoint);
        assert_eq!(
            skipped as u64,
            checkpoint.sub_sequence() + 1,
            "only the checkpointed aggregate's first k+1 records are skipped"
        );
        processed.extend(again.iter().map(payload));
        assert_eq!(processed, (0..users).collect::<Vec<_>>(), "stop at {stop}");
    }
}

#[test]
fn java_style_filter_drops_whole_aggregates_and_is_counted() {
    let (raw, users) = shard();
    let lower_half = HashKeyRange {
        start: 0,
        end: u128::MAX / 2,
    };
    let java = Deaggregator::new(DeaggregationConfig {
        filter_by_shard_hash_range: true,
    });
    let mut out = Vec::new();
    let mut stats = DeaggregationStats::default();
    for r in raw {
        let outcome = java.deaggregate_into(r, Some(&lower_half), &mut out);
        if let Outcome::Dropped { records } = outcome {
            assert!(records > 0);
        }
        stats.add(&outcome);
    }
    assert!(stats.dropped_aggregates > 0);
    assert_eq!(
        out.len() as u64 + stats.dropped_user_records,
        users as u64,
        "every user record is either delivered or counted as dropped"
    );
}
