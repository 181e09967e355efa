//! Unit tests of the de-aggregator: real KPL vectors, pass-through cases, filtering, round trips.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost::Message;

use super::proto::{AggregatedRecordMessage, RecordMessage, TagMessage, frame};
use super::*;
use crate::record::{SequenceNumber, Tag};

// Real KPL output, copied (as data) from awslabs/kinesis-aggregation `python/test/test_deagg.py`
// (base64 there, hex here).

/// 4 user records with explicit hash keys.
const KPL_WITH_EHKS_HEX: &str = concat!(
    "f3899ac20a2466633033646438382d336537392d343438612d623031612d3763663162643437623738340a2463616534",
    "316231632d656136312d343366322d393062652d6238373535656266383865320a2464343930363930632d653734642d",
    "346462322d613363382d6438663266313834666432330a2463393234626330392d623835652d343766312d623332652d",
    "333336353232656535336338122633383438363439353836373530383339393037383135393732333834363035313830",
    "373032301227313933373837363030303337363831373036393532313433333537303731393136333532363034122732",
    "363638383034333639363439333234323432363534363639313637333430363836383434333912273333393630363630",
    "303934323936373339313835343630333535323430323032313834373239321a26080010001a205245434f5244203232",
    "207065656f6268637a627a646d736b626f75706779710a1a26080110011a205245434f5244203233207573776b786674",
    "78726f657573736378736a686e6f0a1a26080210021a205245434f524420323420636173656864676976666178657573",
    "746c79737a790a1a26080310031a205245434f5244203235206e76666676706d756f67646f706a68616d6576726b0a51",
    "c153d0de0a34ca9e18ea4bccd2add5",
);

/// 8 user records without explicit hash keys.
const KPL_NO_EHKS_HEX: &str = concat!(
    "f3899ac20a2437386665623132612d646261302d343563612d613931652d6262316632663138313962340a2463326137",
    "353738372d343639622d343331302d383430642d6434383664636137656235650a2436353065393336322d353732622d",
    "343432372d623366632d3133353439643765356165350a2431643864393630302d303062372d343666332d613938332d",
    "6465383334373735343063300a2466326537313861302d333839622d343934612d623739362d33333535623037353639",
    "63630a2439363562386461342d613662642d343735352d383163392d6537313831616237646339610a24643639336335",
    "66302d353737322d343663392d386438362d3038633730353562646237350a2438643932343736622d656238392d3465",
    "38312d393966622d6332626136336164366439301a2408001a205245434f524420313820696b6c727073767968786e65",
    "726f646665686572750a1a2408011a205245434f5244203139206c6e6d6e756479687670766367726f6b666d7a64680a",
    "1a2408021a205245434f524420323020706a71726366627861667a646e647a6d6267616e650a1a2408031a205245434f",
    "524420323120616166726579726e74777577786c6979676b62686b0a1a2408041a205245434f52442032322071736161",
    "64686273676d7671676469666775796f750a1a2408051a205245434f524420323320776a6f6b6f6977767a7a686c6674",
    "6c7a6871666a6b0a1a2408061a205245434f5244203234207a6f70636173637274686262706e6a697775686a620a1a24",
    "08071a205245434f52442032352074786262766e6f7a727773626f78756f6d71626f710abd5d6bacb754f92cb6bfcc64",
    "819e5868",
);

/// 4 user records sharing one partition key and one explicit hash key (seen via Kinesis
/// Analytics).
const KPL_KA_HEX: &str = concat!(
    "f3899ac20a0d313536323630323037343839361227333339363036363030393432393637333931383534363033353532",
    "3430323032313834373239321a27080010001a215245434f5244203230303520706a71726366627861667a646e647a6d",
    "6267616e651a27080010001a215245434f5244203230303620706a71726366627861667a646e647a6d6267616e651a27",
    "080010001a215245434f5244203230303720706a71726366627861667a646e647a6d6267616e651a27080010001a2152",
    "45434f5244203230303820706a71726366627861667a646e647a6d6267616e6507acba97020a49393f2fd65a7cd6033f",
);

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn seq(s: &str) -> SequenceNumber {
    SequenceNumber::new(s).unwrap()
}

fn raw(data: impl Into<Bytes>) -> Record {
    Record::new(
        "outer",
        data,
        seq("49581544954143914480256700934210366840104395343224897586"),
    )
    .with_approximate_arrival(SystemTime::UNIX_EPOCH + Duration::from_millis(1_518_133_507_063))
}

fn run(record: Record) -> (Outcome, Vec<Record>) {
    let mut out = Vec::new();
    let outcome = Deaggregator::default().deaggregate_into(record, None, &mut out);
    (outcome, out)
}

#[test]
fn real_kpl_vector_with_explicit_hash_keys() {
    let input = raw(hex(KPL_WITH_EHKS_HEX));
    let outer_data = input.data().clone();
    let (outcome, out) = run(input);
    assert_eq!(outcome, Outcome::Aggregated { records: 4 });
    let expected = [
        (
            "fc03dd88-3e79-448a-b01a-7cf1bd47b784",
            "38486495867508399078159723846051807020",
            "RECORD 22 peeobhczbzdmskboupgyq\n",
        ),
        (
            "cae41b1c-ea61-43f2-90be-b8755ebf88e2",
            "193787600037681706952143357071916352604",
            "RECORD 23 uswkxftxroeusscxsjhno\n",
        ),
        (
            "d490690c-e74d-4db2-a3c8-d8f2f184fd23",
            "266880436964932424265466916734068684439",
            "RECORD 24 casehdgivfaxeustlyszy\n",
        ),
        (
            "c924bc09-b85e-47f1-b32e-336522ee53c8",
            "339606600942967391854603552402021847292",
            "RECORD 25 nvffvpmuogdopjhamevrk\n",
        ),
    ];
    for (i, (r, (pk, ehk, data))) in out.iter().zip(expected).enumerate() {
        assert_eq!(r.partition_key(), pk);
        assert_eq!(r.explicit_hash_key(), Some(ehk));
        assert_eq!(r.data().as_ref(), data.as_bytes());
        assert_eq!(r.sub_sequence_number(), i as u64);
        assert!(r.is_aggregated());
        assert_eq!(
            r.sequence_number().as_str(),
            "49581544954143914480256700934210366840104395343224897586"
        );
        assert_eq!(
            r.approximate_arrival(),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_518_133_507_063))
        );
        // Zero-copy: the data points into the fetched record's buffer.
        let outer = outer_data.as_ptr_range();
        assert!(outer.contains(&r.data().as_ptr()));
        assert_eq!(r.effective_hash_key(), ehk.parse::<u128>().unwrap());
    }
}

#[test]
fn real_kpl_vector_without_explicit_hash_keys() {
    let (outcome, out) = run(raw(hex(KPL_NO_EHKS_HEX)));
    assert_eq!(outcome, Outcome::Aggregated { records: 8 });
    let expected = [
        (
            "78feb12a-dba0-45ca-a91e-bb1f2f1819b4",
            "RECORD 18 iklrpsvyhxnerodfeheru\n",
        ),
        (
            "c2a75787-469b-4310-840d-d486dca7eb5e",
            "RECORD 19 lnmnudyhvpvcgrokfmzdh\n",
        ),
        (
            "650e9362-572b-4427-b3fc-13549d7e5ae5",
            "RECORD 20 pjqrcfbxafzdndzmbgane\n",
        ),
        (
            "1d8d9600-00b7-46f3-a983-de83477540c0",
            "RECORD 21 aafreyrntwuwxliygkbhk\n",
        ),
        (
            "f2e718a0-389b-494a-b796-3355b07569cc",
            "RECORD 22 qsaadhbsgmvqgdifguyou\n",
        ),
        (
            "965b8da4-a6bd-4755-81c9-e7181ab7dc9a",
            "RECORD 23 wjokoiwvzzhlftlzhqfjk\n",
        ),
        (
            "d693c5f0-5772-46c9-8d86-08c7055bdb75",
            "RECORD 24 zopcascrthbbpnjiwuhjb\n",
        ),
        (
            "8d92476b-eb89-4e81-99fb-c2ba63ad6d90",
            "RECORD 25 txbbvnozrwsboxuomqboq\n",
        ),
    ];
    assert_eq!(out.len(), expected.len());
    for (i, (r, (pk, data))) in out.iter().zip(expected).enumerate() {
        assert_eq!(r.partition_key(), pk);
        assert_eq!(r.explicit_hash_key(), None);
        assert_eq!(r.data().as_ref(), data.as_bytes());
        assert_eq!(r.sub_sequence_number(), i as u64);
    }
}

#[test]
fn real_kpl_vector_shares_one_partition_key_allocation() {
    let (outcome, out) = run(raw(hex(KPL_KA_HEX)));
    assert_eq!(outcome, Outcome::Aggregated { records: 4 });
    for (i, r) in out.iter().enumerate() {
        assert_eq!(r.partition_key(), "1562602074896");
        assert_eq!(
            r.explicit_hash_key(),
            Some("339606600942967391854603552402021847292")
        );
        assert_eq!(
            r.data().as_ref(),
            format!("RECORD {} pjqrcfbxafzdndzmbgane", 2005 + i).as_bytes()
        );
        assert!(Arc::ptr_eq(&r.partition_key, &out[0].partition_key));
        assert!(Arc::ptr_eq(
            r.explicit_hash_key.as_ref().unwrap(),
            out[0].explicit_hash_key.as_ref().unwrap()
        ));
    }
}

#[test]
fn plain_records_pass_unchanged() {
    for data in [
        &b""[..],
        b"a",
        b"\xF3\x89\x9A",
        b"RECORD 749 pjqrcfbxafzdndzmbgane",
    ] {
        let input = raw(Bytes::copy_from_slice(data));
        let (outcome, out) = run(input.clone());
        assert_eq!(outcome, Outcome::NotAggregated);
        assert_eq!(out, vec![input]);
    }
}

#[test]
fn corrupt_aggregates_pass_through_whole() {
    let good = hex(KPL_WITH_EHKS_HEX);
    let mut cases: Vec<(Vec<u8>, PassThroughReason)> = Vec::new();
    // Magic plus at most 16 bytes.
    cases.push((MAGIC.to_vec(), PassThroughReason::TooShort));
    cases.push((
        [&MAGIC[..], &[0u8; 16]].concat(),
        PassThroughReason::TooShort,
    ));
    // Magic plus an empty protobuf with its correct digest is still too short (as in Java/Python).
    cases.push((frame(&[]), PassThroughReason::TooShort));
    // Truncated anywhere: the digest no longer matches.
    for cut in [21, 100, good.len() - 1] {
        cases.push((good[..cut].to_vec(), PassThroughReason::DigestMismatch));
    }
    // One flipped bit in the body or in the digest.
    let mut flipped = good.clone();
    flipped[50] ^= 1;
    cases.push((flipped, PassThroughReason::DigestMismatch));
    let mut flipped = good.clone();
    *flipped.last_mut().unwrap() ^= 0x80;
    cases.push((flipped, PassThroughReason::DigestMismatch));
    // Valid digest over garbage protobuf.
    cases.push((
        frame(&[0x0A, 0x7F, 0x01]),
        PassThroughReason::Undecodable(DecodeError::Truncated),
    ));
    for (data, reason) in cases {
        let input = raw(data);
        let (outcome, out) = run(input.clone());
        assert_eq!(outcome, Outcome::PassedThrough(reason));
        assert_eq!(out, vec![input]);
    }
}

fn message(records: Vec<RecordMessage>, pks: &[&str], ehks: &[&str]) -> Vec<u8> {
    let m = AggregatedRecordMessage {
        partition_key_table: pks.iter().map(|s| s.to_string()).collect(),
        explicit_hash_key_table: ehks.iter().map(|s| s.to_string()).collect(),
        records,
    };
    frame(&m.encode_to_vec())
}

fn rec(pk: u64, ehk: Option<u64>, data: &'static [u8]) -> RecordMessage {
    RecordMessage {
        partition_key_index: pk,
        explicit_hash_key_index: ehk,
        data: Bytes::from_static(data),
        tags: Vec::new(),
    }
}

#[test]
fn bad_table_indices_pass_the_whole_record_through() {
    let cases = [
        message(vec![rec(0, None, b"a"), rec(1, None, b"b")], &["k"], &[]),
        message(vec![rec(0, Some(0), b"a")], &["k"], &[]),
        message(vec![rec(0, Some(1), b"a")], &["k"], &["1"]),
        message(vec![rec(u64::MAX, None, b"a")], &["k"], &[]),
    ];
    for data in cases {
        let mut out = vec![Record::new("earlier", "x", seq("1"))];
        let input = raw(data);
        let outcome = Deaggregator::default().deaggregate_into(input.clone(), None, &mut out);
        assert_eq!(
            outcome,
            Outcome::PassedThrough(PassThroughReason::IndexOutOfRange)
        );
        // Earlier output untouched, the record itself appended once.
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], input);
    }
}

#[test]
fn tags_empty_data_and_empty_aggregates() {
    let mut r = rec(0, None, b"");
    r.tags = vec![
        TagMessage {
            key: "k".into(),
            value: Some("v".into()),
        },
        TagMessage {
            key: "only-key".into(),
            value: None,
        },
    ];
    let (outcome, out) = run(raw(message(vec![r, rec(0, None, b"z")], &["p"], &[])));
    assert_eq!(outcome, Outcome::Aggregated { records: 2 });
    assert_eq!(out[0].data().len(), 0);
    assert_eq!(
        out[0].tags(),
        &[
            Tag {
                key: "k".into(),
                value: Some("v".into())
            },
            Tag {
                key: "only-key".into(),
                value: None
            }
        ]
    );
    assert!(out[1].tags().is_empty());

    // A valid aggregate with tables but no records yields nothing.
    let (outcome, out) = run(raw(message(vec![], &["p"], &[])));
    assert_eq!(outcome, Outcome::Aggregated { records: 0 });
    assert!(out.is_empty());
}

#[test]
fn tables_after_records_are_accepted() {
    // Protobuf does not fix field order: put the record before the table it references.
    let mut body = Vec::new();
    rec(0, None, b"data")
        .encode_length_delimited(&mut body)
        .unwrap();
    let mut msg = vec![0x1A];
    msg.extend_from_slice(&body);
    msg.extend_from_slice(&[0x0A, 0x02, b'p', b'k']);
    let (outcome, out) = run(raw(frame(&msg)));
    assert_eq!(outcome, Outcome::Aggregated { records: 1 });
    assert_eq!(out[0].partition_key(), "pk");
    assert_eq!(out[0].data().as_ref(), b"data");
}

/// A shard range covering only the lower half of the key space.
const LOWER_HALF: HashKeyRange = HashKeyRange {
    start: 0,
    end: u128::MAX / 2,
};

#[test]
fn hash_range_filtering_is_off_by_default() {
    // Two records: one hashes into the lower half, one into the upper half.
    let low = "1";
    let high = (u128::MAX - 5).to_string();
    let data = message(
        vec![rec(0, Some(0), b"low"), rec(0, Some(1), b"high")],
        &["p"],
        &[low, &high],
    );
    let mut out = Vec::new();
    let outcome =
        Deaggregator::default().deaggregate_into(raw(data.clone()), Some(&LOWER_HALF), &mut out);
    assert_eq!(outcome, Outcome::Aggregated { records: 2 });
    assert_eq!(out.len(), 2);

    // Java behaviour on request: the whole aggregate goes.
    let java = Deaggregator::new(DeaggregationConfig {
        filter_by_shard_hash_range: true,
    });
    let mut out = Vec::new();
    let outcome = java.deaggregate_into(raw(data.clone()), Some(&LOWER_HALF), &mut out);
    assert_eq!(outcome, Outcome::Dropped { records: 2 });
    assert!(out.is_empty());
    // Without a range, nothing is filtered.
    assert_eq!(
        java.deaggregate_into(raw(data.clone()), None, &mut out),
        Outcome::Aggregated { records: 2 }
    );
    // All inside: delivered.
    let inside = message(vec![rec(0, Some(0), b"low")], &["p"], &[low]);
    let mut out = Vec::new();
    assert_eq!(
        java.deaggregate_into(raw(inside), Some(&LOWER_HALF), &mut out),
        Outcome::Aggregated { records: 1 }
    );
}

#[test]
fn hash_range_filtering_uses_partition_key_md5_without_explicit_key() {
    // Find a partition key hashing into each half.
    let key_in = |upper: bool| {
        (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| (crate::record::partition_key_hash(k) > u128::MAX / 2) == upper)
            .unwrap()
    };
    let lo = key_in(false);
    let hi = key_in(true);
    let java = Deaggregator::new(DeaggregationConfig {
        filter_by_shard_hash_range: true,
    });
    let mixed = message(
        vec![rec(0, None, b"a"), rec(1, None, b"b")],
        &[&lo, &hi],
        &[],
    );
    let mut out = Vec::new();
    assert_eq!(
        java.deaggregate_into(raw(mixed), Some(&LOWER_HALF), &mut out),
        Outcome::Dropped { records: 2 }
    );
    let low_only = message(vec![rec(0, None, b"a")], &[&lo], &[]);
    assert_eq!(
        java.deaggregate_into(raw(low_only), Some(&LOWER_HALF), &mut out),
        Outcome::Aggregated { records: 1 }
    );
}

#[test]
fn stats_count_outcomes() {
    let d = Deaggregator::default();
    let input = vec![
        raw(hex(KPL_WITH_EHKS_HEX)),
        raw("plain"),
        raw(MAGIC.to_vec()),
        raw(hex(KPL_NO_EHKS_HEX)),
    ];
    let (out, stats) = d.deaggregate(input, None);
    assert_eq!(out.len(), 4 + 1 + 1 + 8);
    assert_eq!(
        stats,
        DeaggregationStats {
            not_aggregated: 1,
            aggregates: 2,
            user_records: 12,
            passed_through: 1,
            passed_through_by_reason: [1, 0, 0, 0],
            dropped_aggregates: 0,
            dropped_user_records: 0,
        }
    );
    let mut total = DeaggregationStats::default();
    total.merge(&stats);
    total.merge(&stats);
    assert_eq!(total.user_records, 24);
    assert_eq!(Outcome::Dropped { records: 3 }.appended(), 0);
}

/// Random user records: partition keys from a small pool (some non-ASCII), optional explicit
/// hash keys, data from empty to a few KB.
fn random_inputs(rng: &mut fastrand::Rng, n: usize) -> Vec<(String, Option<String>, Vec<u8>)> {
    let pool = ["a", "b", "ключ", "鍵-键", "🦀", "x".repeat(256).leak()];
    (0..n)
        .map(|_| {
            let pk = if rng.bool() {
                pool[rng.usize(..pool.len())].to_string()
            } else {
                format!("pk-{}", rng.u32(..1000))
            };
            let ehk = rng.bool().then(|| rng.u128(..).to_string());
            let len = match rng.u8(..10) {
                0 => 0,
                1 => rng.usize(..5000),
                _ => rng.usize(..200),
            };
            let data: Vec<u8> = std::iter::repeat_with(|| rng.u8(..)).take(len).collect();
            (pk, ehk, data)
        })
        .collect()
}

#[test]
fn aggregator_round_trips_random_records() {
    let mut rng = fastrand::Rng::with_seed(0x5EED);
    for round in 0..200 {
        let max_size = match round % 4 {
            0 => DEFAULT_AGGREGATION_MAX_SIZE,
            1 => 1024,
            2 => 6000,
            _ => rng.usize(300..20_000),
        };
        let n = rng.usize(0..300);
        let inputs = random_inputs(&mut rng, n);
        let mut agg = Aggregator::new(max_size);
        let mut aggregates = Vec::new();
        let mut accepted = Vec::new();
        for (pk, ehk, data) in &inputs {
            match agg.try_add(pk, ehk.as_deref(), data.clone()) {
                Ok(flushed) => {
                    accepted.push((pk.clone(), ehk.clone(), data.clone()));
                    aggregates.extend(flushed);
                }
                Err(AggregationError::RecordTooLarge { size, max_size: m }) => {
                    assert!(size > m);
                }
                Err(e) => panic!("unexpected {e}"),
            }
            if !agg.is_empty() {
                assert!(agg.size_bytes() <= max_size);
            }
        }
        let predicted = agg.size_bytes();
        let last = agg.flush();
        if let Some(last) = &last {
            assert_eq!(last.data.len(), predicted);
        }
        aggregates.extend(last);
        assert!(agg.flush().is_none());

        let mut out = Vec::new();
        for (i, a) in aggregates.iter().enumerate() {
            assert!(a.data.len() <= max_size, "{} > {max_size}", a.data.len());
            let outer = Record::new(
                a.partition_key.as_str(),
                a.data.clone(),
                SequenceNumber::from_u128(i as u128),
            );
            let before = out.len();
            let outcome = Deaggregator::default().deaggregate_into(outer, None, &mut out);
            assert_eq!(
                outcome,
                Outcome::Aggregated {
                    records: a.user_records
                }
            );
            // The aggregate is put with its first user record's keys.
            assert_eq!(out[before].partition_key(), a.partition_key);
            assert_eq!(
                out[before].explicit_hash_key(),
                a.explicit_hash_key.as_deref()
            );
            // The prost decoder agrees with the hand-written one.
            let body = &a.data[MAGIC.len()..a.data.len() - DIGEST_LEN];
            let decoded = AggregatedRecordMessage::decode(body).unwrap();
            assert_eq!(decoded.records.len(), a.user_records);
            for (m, r) in decoded.records.iter().zip(&out[before..]) {
                assert_eq!(m.data, *r.data());
                assert_eq!(
                    decoded.partition_key_table[m.partition_key_index as usize],
                    r.partition_key()
                );
            }
        }
        let got: Vec<_> = out
            .iter()
            .map(|r| {
                (
                    r.partition_key().to_string(),
                    r.explicit_hash_key().map(str::to_string),
                    r.data().to_vec(),
                )
            })
            .collect();
        assert_eq!(got, accepted, "round {round}");
    }
}

#[test]
fn aggregator_limits_and_errors() {
    let mut agg = Aggregator::new(100);
    assert_eq!(
        agg.try_add("", None, "x"),
        Err(AggregationError::InvalidPartitionKey { chars: 0 })
    );
    assert_eq!(
        agg.try_add(&"é".repeat(257), None, "x"),
        Err(AggregationError::InvalidPartitionKey { chars: 257 })
    );
    assert!(agg.try_add(&"é".repeat(256), None, "x").is_err()); // too large for 100 bytes
    assert!(matches!(
        agg.try_add("k", Some("12a"), "x"),
        Err(AggregationError::InvalidExplicitHashKey(_))
    ));
    assert!(matches!(
        agg.try_add("k", Some("340282366920938463463374607431768211456"), "x"),
        Err(AggregationError::InvalidExplicitHashKey(_))
    ));
    // Exactly at the limit: framing 20 + pk entry 3 + record (2 + 2 + 2 + n) = 100 => n = 71.
    assert_eq!(agg.try_add("k", None, vec![0u8; 71]), Ok(None));
    assert_eq!(agg.size_bytes(), 100);
    let flushed = agg.flush().unwrap();
    assert_eq!(flushed.data.len(), 100);
    assert_eq!(
        agg.try_add("k", None, vec![0u8; 72]),
        Err(AggregationError::RecordTooLarge {
            size: 101,
            max_size: 100
        })
    );
    assert!(agg.is_empty());
    // A second record that does not fit flushes the first.
    assert_eq!(agg.try_add("k", None, vec![0u8; 30]), Ok(None));
    let first = agg.try_add("j", Some("7"), vec![1u8; 40]).unwrap().unwrap();
    assert_eq!(first.user_records, 1);
    assert_eq!(first.partition_key, "k");
    assert_eq!(agg.len(), 1);
    let second = agg.flush().unwrap();
    assert_eq!(second.partition_key, "j");
    assert_eq!(second.explicit_hash_key.as_deref(), Some("7"));
    assert_eq!(Aggregator::default().max_size(), 51_200);
}

/// A mix of every kind of input: aggregates of many sizes (some with tags, shared and distinct
/// keys), plain records, records with the magic that are too short, corrupt (one bit flipped in
/// the body or the digest, truncated), undecodable or with a bad table index.
fn mixed_batch(rng: &mut fastrand::Rng, n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let data: Vec<u8> = match rng.u8(..10) {
                0 => format!("plain {i}").into_bytes(),
                1 => [&MAGIC[..], &[0u8; 16][..rng.usize(..=16)]].concat(),
                2 => message(vec![rec(0, None, b"a"), rec(3, None, b"b")], &["k"], &[]),
                3 => frame(&[0x0A, 0x7F, 0x01]),
                _ => {
                    let max_size = [1024, 6000, DEFAULT_AGGREGATION_MAX_SIZE][rng.usize(..3)];
                    let mut agg = Aggregator::new(max_size);
                    let mut flushed = None;
                    let count = rng.usize(1..400);
                    for (pk, ehk, data) in random_inputs(rng, count) {
                        if let Ok(Some(a)) = agg.try_add(&pk, ehk.as_deref(), data) {
                            flushed = Some(a);
                            break;
                        }
                    }
                    let mut data = flushed.or_else(|| agg.flush()).unwrap().data.to_vec();
                    match rng.u8(..8) {
                        0 => {
                            let at = rng.usize(MAGIC.len()..data.len());
                            data[at] ^= 1 << rng.u8(..8);
                        }
                        1 => data.truncate(rng.usize(..data.len())),
                        2 => {
                            let at = data.len() - rng.usize(1..=DIGEST_LEN);
                            data[at] ^= 1 << rng.u8(..8);
                        }
                        _ => {}
                    }
                    data
                }
            };
            Record::new(
                format!("outer-{i}"),
                data,
                SequenceNumber::from_u128(1000 + i as u128),
            )
        })
        .collect()
}

#[test]
fn batch_matches_one_record_at_a_time() {
    let mut rng = fastrand::Rng::with_seed(0xBA7C4);
    let narrow = HashKeyRange {
        start: 0,
        end: u128::MAX / 3,
    };
    for round in 0..40 {
        let n = [0, 1, 2, 15, 16, 17, 63, 64, 65, 200][round % 10];
        let input = mixed_batch(&mut rng, n);
        for filter in [false, true] {
            let d = Deaggregator::new(DeaggregationConfig {
                filter_by_shard_hash_range: filter,
            });
            let mut want = vec![Record::new("earlier", "x", seq("1"))];
            let mut want_stats = DeaggregationStats::default();
            for r in input.iter().cloned() {
                want_stats.add(&d.deaggregate_into(r, Some(&narrow), &mut want));
            }
            let mut got = vec![Record::new("earlier", "x", seq("1"))];
            let stats = d.deaggregate_batch_into(input.iter().cloned(), Some(&narrow), &mut got);
            assert_eq!(stats, want_stats, "round {round}, filter {filter}");
            assert_eq!(got, want, "round {round}, filter {filter}");
            let (alone, alone_stats) = d.deaggregate(input.iter().cloned(), Some(&narrow));
            assert_eq!(alone_stats, want_stats);
            assert_eq!(alone[..], want[1..]);
        }
    }
}
