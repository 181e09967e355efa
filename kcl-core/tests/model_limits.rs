//! The in-memory Kinesis model's service limits, driven by tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::{BackendError, ShardIterator, StartingPosition, StreamBackend};
use kcl_core::model::{
    KinesisModel, MIB, ModelConfig, PROVISIONED_THROUGHPUT_EXCEEDED, PutRecordsEntry,
    PutRecordsResultEntry,
};

const SHARD: &str = "shardId-000000000000";

fn throttled<T: std::fmt::Debug>(r: Result<T, BackendError>) -> bool {
    matches!(r, Err(BackendError::ProvisionedThroughputExceeded(_)))
}

async fn trim_horizon(m: &KinesisModel, stream: &str) -> ShardIterator {
    m.get_shard_iterator(stream, SHARD, StartingPosition::TrimHorizon)
        .await
        .unwrap()
}

/// `n` records of exactly `size` bytes (data plus the one-byte partition key).
fn fill(m: &KinesisModel, stream: &str, n: usize, size: usize) {
    let data = Bytes::from(vec![7u8; size - 1]);
    for _ in 0..n {
        m.put_record(stream, "k", data.clone(), None).unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_sixth_get_records_call_within_a_second_is_throttled() {
    let m = KinesisModel::new(ModelConfig::default());
    m.create_stream("s", 2).unwrap();
    // Two readers of the same shard share the five calls per second.
    let a = trim_horizon(&m, "s").await;
    let b = trim_horizon(&m, "s").await;
    for i in 0..5 {
        let it = if i % 2 == 0 { &a } else { &b };
        m.get_records(it, 100).await.unwrap();
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(throttled(m.get_records(&a, 100).await));
    assert!(throttled(m.get_records(&b, 100).await));
    // Another shard is not affected.
    let other = m
        .get_shard_iterator("s", "shardId-000000000001", StartingPosition::Latest)
        .await
        .unwrap();
    m.get_records(&other, 100).await.unwrap();
    // The first call (at t=0) leaves the window one second after it was made.
    tokio::time::advance(Duration::from_millis(500)).await;
    m.get_records(&a, 100).await.unwrap();
    assert!(throttled(m.get_records(&a, 100).await));
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..5 {
        m.get_records(&a, 100).await.unwrap();
    }
    assert!(throttled(m.get_records(&a, 100).await));
}

#[tokio::test(start_paused = true)]
async fn writes_are_limited_to_1000_records_per_second_per_shard() {
    let m = KinesisModel::new(ModelConfig::default());
    m.create_stream("s", 1).unwrap();
    fill(&m, "s", 1000, 10);
    let err = m
        .put_record("s", "k", Bytes::from_static(b"x"), None)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::ProvisionedThroughputExceeded(ref msg) if msg.message().contains("records per second") && msg.message().contains(SHARD)),
        "{err:?}"
    );
    tokio::time::advance(Duration::from_millis(100)).await;
    // A tenth of a second refills a hundred records.
    fill(&m, "s", 100, 10);
    assert!(throttled(m.put_record(
        "s",
        "k",
        Bytes::from_static(b"x"),
        None
    )));
    tokio::time::advance(Duration::from_secs(1)).await;
    fill(&m, "s", 1000, 10);
}

#[tokio::test(start_paused = true)]
async fn writes_are_limited_to_one_mib_per_second_per_shard() {
    let m = KinesisModel::new(ModelConfig::default());
    m.create_stream("s", 1).unwrap();
    let quarter = (MIB / 4) as usize;
    fill(&m, "s", 4, quarter);
    let err = m
        .put_record("s", "k", Bytes::from(vec![0u8; 10]), None)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::ProvisionedThroughputExceeded(ref msg) if msg.message().contains("bytes per second")),
        "{err:?}"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    // A full second of credit takes one record of the largest size.
    fill(&m, "s", 1, MIB as usize);
    assert!(throttled(m.put_record(
        "s",
        "k",
        Bytes::from_static(b"x"),
        None
    )));
}

#[tokio::test(start_paused = true)]
async fn put_records_fails_single_entries_over_the_limit_in_request_order() {
    let m = KinesisModel::new(ModelConfig::default());
    m.create_stream("s", 2).unwrap();
    let low = "0".to_owned();
    let high = u128::MAX.to_string();
    // Saturate shard 0 with 1000 records, leaving shard 1 untouched.
    for _ in 0..2 {
        let out = m
            .put_records(
                "s",
                (0..500)
                    .map(|_| {
                        PutRecordsEntry::new("k", Bytes::from_static(b"x"))
                            .with_explicit_hash_key(low.clone())
                    })
                    .collect(),
            )
            .unwrap();
        assert_eq!(out.failed_record_count, 0);
    }
    // Alternate entries between the saturated shard and the free one.
    let entries: Vec<_> = (0..10)
        .map(|i| {
            let key = if i % 2 == 0 { &low } else { &high };
            PutRecordsEntry::new(format!("k{i}"), Bytes::from(vec![i as u8]))
                .with_explicit_hash_key(key.clone())
        })
        .collect();
    let out = m.put_records("s", entries).unwrap();
    assert_eq!(out.failed_record_count, 5);
    assert_eq!(out.records.len(), 10);
    for (i, entry) in out.records.iter().enumerate() {
        if i % 2 == 0 {
            match entry {
                PutRecordsResultEntry::Failed {
                    error_code,
                    error_message,
                } => {
                    assert_eq!(error_code, PROVISIONED_THROUGHPUT_EXCEEDED);
                    assert!(error_message.contains(SHARD), "{error_message}");
                }
                other => panic!("entry {i}: {other:?}"),
            }
            assert_eq!(entry.error_code(), Some(PROVISIONED_THROUGHPUT_EXCEEDED));
        } else {
            assert_eq!(entry.shard_id(), Some("shardId-000000000001"));
            assert!(entry.sequence_number().is_some());
        }
    }
    // Within one shard, a batch that crosses the limit fails its tail.
    tokio::time::advance(Duration::from_secs(1)).await;
    let out = m
        .put_records(
            "s",
            (0..500)
                .map(|_| {
                    PutRecordsEntry::new("k", Bytes::from_static(b"x"))
                        .with_explicit_hash_key(low.clone())
                })
                .collect(),
        )
        .unwrap();
    assert_eq!(out.failed_record_count, 0);
    let out = m
        .put_records(
            "s",
            (0..500)
                .map(|_| {
                    PutRecordsEntry::new("k", Bytes::from_static(b"x"))
                        .with_explicit_hash_key(low.clone())
                })
                .collect(),
        )
        .unwrap();
    assert_eq!(out.failed_record_count, 0);
    let out = m
        .put_records(
            "s",
            (0..3)
                .map(|_| {
                    PutRecordsEntry::new("k", Bytes::from_static(b"x"))
                        .with_explicit_hash_key(low.clone())
                })
                .collect(),
        )
        .unwrap();
    assert_eq!(out.failed_record_count, 3);
    assert!(out.records.iter().all(|r| !r.is_success()));
}

#[tokio::test(start_paused = true)]
async fn one_call_returns_at_most_10000_records_and_limit_caps_it() {
    let m = KinesisModel::new(
        ModelConfig::default()
            .with_write_limits(None, None)
            .with_read_limits(None, None),
    );
    m.create_stream("s", 1).unwrap();
    fill(&m, "s", 12_000, 2);
    let it = trim_horizon(&m, "s").await;
    let small = m.get_records(&it, 7).await.unwrap();
    assert_eq!(small.records.len(), 7);
    let first = m.get_records(&it, 10_000).await.unwrap();
    assert_eq!(first.records.len(), 10_000);
    assert!(first.millis_behind_latest.is_some());
    let second = m
        .get_records(first.next_shard_iterator.as_ref().unwrap(), 10_000)
        .await
        .unwrap();
    assert_eq!(second.records.len(), 2_000);
    assert!(first.records.last().unwrap().sequence_number() < second.records[0].sequence_number());
}

#[tokio::test(start_paused = true)]
async fn one_call_returns_at_most_10_mib_then_reads_are_throttled_until_repaid() {
    // Write limits off so 12 MiB can be written at once; read limits as the service.
    let m = KinesisModel::new(ModelConfig::default().with_write_limits(None, None));
    m.create_stream("s", 1).unwrap();
    fill(&m, "s", 12, MIB as usize);
    let it = trim_horizon(&m, "s").await;
    let first = m.get_records(&it, 10_000).await.unwrap();
    assert_eq!(first.records.len(), 10);
    let next = first.next_shard_iterator.unwrap();
    // 10 MiB against a 2 MiB/s budget: about 4 s of debt.
    assert!(throttled(m.get_records(&next, 10_000).await));
    tokio::time::advance(Duration::from_secs(3)).await;
    assert!(throttled(m.get_records(&next, 10_000).await));
    tokio::time::advance(Duration::from_secs(2)).await;
    let rest = m.get_records(&next, 10_000).await.unwrap();
    assert_eq!(rest.records.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn reads_are_limited_to_two_mib_per_second_per_shard() {
    let m = KinesisModel::new(ModelConfig::default().with_write_limits(None, None));
    m.create_stream("s", 1).unwrap();
    fill(&m, "s", 8, (MIB / 2) as usize);
    let mut it = trim_horizon(&m, "s").await;
    // 2 MiB of credit: four half-MiB records, then nothing until it refills.
    let out = m.get_records(&it, 4).await.unwrap();
    assert_eq!(out.records.len(), 4);
    it = out.next_shard_iterator.unwrap();
    let err = m.get_records(&it, 4).await.unwrap_err();
    assert!(
        matches!(err, BackendError::ProvisionedThroughputExceeded(ref msg) if msg.message().contains("bytes per second")),
        "{err:?}"
    );
    // Half a second refills one MiB.
    tokio::time::advance(Duration::from_millis(500)).await;
    let out = m.get_records(&it, 2).await.unwrap();
    assert_eq!(out.records.len(), 2);
    it = out.next_shard_iterator.unwrap();
    assert!(throttled(m.get_records(&it, 2).await));
    // Over time the throughput converges to 2 MiB/s: 2 more MiB take another second.
    tokio::time::advance(Duration::from_secs(1)).await;
    let out = m.get_records(&it, 4).await.unwrap();
    assert_eq!(out.records.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn unlimited_switches_every_throughput_limit_off() {
    let m = KinesisModel::new(ModelConfig::unlimited());
    m.create_stream("s", 1).unwrap();
    let out = m
        .put_records(
            "s",
            (0..5000)
                .map(|i| PutRecordsEntry::new(format!("k{i}"), Bytes::from(vec![0u8; 2048])))
                .collect(),
        )
        .unwrap();
    assert_eq!(out.failed_record_count, 0);
    m.put_record("s", "k", Bytes::from(vec![0u8; 2 * MIB as usize]), None)
        .unwrap();
    let it = trim_horizon(&m, "s").await;
    for _ in 0..20 {
        m.get_records(&it, 100).await.unwrap();
    }
    let all = m.get_records(&it, 100_000).await.unwrap();
    assert_eq!(all.records.len(), 5001);
}

#[tokio::test(start_paused = true)]
async fn retention_trims_records_and_moves_the_trim_horizon() {
    let m = KinesisModel::new(ModelConfig::default().with_read_limits(None, None));
    m.create_stream("s", 1).unwrap();
    let old = m
        .put_record("s", "k", Bytes::from_static(b"old"), None)
        .unwrap();
    tokio::time::advance(Duration::from_secs(12 * 3600)).await;
    m.put_record("s", "k", Bytes::from_static(b"new"), None)
        .unwrap();
    let it = trim_horizon(&m, "s").await;
    assert_eq!(m.get_records(&it, 10).await.unwrap().records.len(), 2);
    tokio::time::advance(Duration::from_secs(12 * 3600)).await;
    let it = trim_horizon(&m, "s").await;
    let got = m.get_records(&it, 10).await.unwrap();
    let data: Vec<_> = got.records.iter().map(|r| r.data().as_ref()).collect();
    assert_eq!(data, [b"new".as_ref()]);
    // A position at the trimmed record starts at the new trim horizon.
    let at_old = m
        .get_shard_iterator(
            "s",
            SHARD,
            StartingPosition::AtSequenceNumber(old.sequence_number),
        )
        .await
        .unwrap();
    let got = m.get_records(&at_old, 10).await.unwrap();
    assert_eq!(got.records[0].data().as_ref(), b"new");
    // A longer retention keeps records longer.
    m.set_retention_period("s", Duration::from_secs(48 * 3600))
        .unwrap();
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    let it = trim_horizon(&m, "s").await;
    assert_eq!(m.get_records(&it, 10).await.unwrap().records.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn retention_is_configurable() {
    let m = KinesisModel::new(
        ModelConfig::default()
            .with_retention(Duration::from_secs(3600))
            .with_read_limits(None, None),
    );
    m.create_stream("s", 1).unwrap();
    assert_eq!(
        m.describe_stream("s").await.unwrap().retention,
        Duration::from_secs(3600)
    );
    m.put_record("s", "k", Bytes::from_static(b"x"), None)
        .unwrap();
    tokio::time::advance(Duration::from_secs(3599)).await;
    let it = trim_horizon(&m, "s").await;
    assert_eq!(m.get_records(&it, 10).await.unwrap().records.len(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(m.get_records(&it, 10).await.unwrap().records.is_empty());
}

#[tokio::test(start_paused = true)]
async fn iterators_expire_after_five_minutes() {
    let m = KinesisModel::new(ModelConfig::default());
    m.create_stream("s", 1).unwrap();
    let it = trim_horizon(&m, "s").await;
    let unused = trim_horizon(&m, "s").await;
    tokio::time::advance(Duration::from_secs(299)).await;
    let out = m.get_records(&it, 10).await.unwrap();
    let next = out.next_shard_iterator.unwrap();
    tokio::time::advance(Duration::from_secs(1)).await;
    let err = m.get_records(&unused, 10).await.unwrap_err();
    assert!(matches!(err, BackendError::ExpiredIterator(_)), "{err:?}");
    assert!(!err.is_throttling());
    // The iterator returned at 299 s is fresh: valid until 599 s.
    tokio::time::advance(Duration::from_secs(298)).await;
    let out = m.get_records(&next, 10).await.unwrap();
    tokio::time::advance(Duration::from_secs(301)).await;
    assert!(matches!(
        m.get_records(out.next_shard_iterator.as_ref().unwrap(), 10)
            .await,
        Err(BackendError::ExpiredIterator(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn iterator_lifetime_is_configurable() {
    let m = KinesisModel::new(ModelConfig::default().with_iterator_ttl(Duration::from_secs(10)));
    m.create_stream("s", 1).unwrap();
    let it = trim_horizon(&m, "s").await;
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(matches!(
        m.get_records(&it, 10).await,
        Err(BackendError::ExpiredIterator(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn shared_between_tasks() {
    let m: Arc<KinesisModel> = KinesisModel::new(ModelConfig::unlimited());
    m.create_stream("s", 4).unwrap();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let m = m.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    m.put_record("s", &format!("{w}-{i}"), Bytes::from_static(b"x"), None)
                        .unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut total = 0;
    for id in m.shard_ids("s").unwrap() {
        let it = m
            .get_shard_iterator("s", &id, StartingPosition::TrimHorizon)
            .await
            .unwrap();
        total += m.get_records(&it, 10_000).await.unwrap().records.len();
    }
    assert_eq!(total, 1000);
}

#[test]
fn config_defaults_are_the_service_limits() {
    let c = ModelConfig::default();
    assert_eq!(c.retention, Duration::from_secs(24 * 3600));
    assert_eq!(c.iterator_ttl, Duration::from_secs(300));
    assert_eq!(c.list_shards_token_ttl, Duration::from_secs(300));
    assert_eq!(c.write_bytes_per_second, Some(MIB));
    assert_eq!(c.write_records_per_second, Some(1000));
    assert_eq!(c.read_calls_per_second, Some(5));
    assert_eq!(c.read_bytes_per_second, Some(2 * MIB));
    assert_eq!(c.max_get_records_bytes, Some(10 * MIB));
    assert_eq!(c.max_get_records_records, Some(10_000));
    assert_eq!(c.max_record_bytes, Some(MIB));
    assert_eq!(c.max_put_records_entries, Some(500));
    assert_eq!(c.max_put_records_bytes, Some(5 * MIB));
    assert!(c.limit_scaling);
    assert_eq!(ModelConfig::new(), c);
    let u = ModelConfig::unlimited();
    assert_eq!(u.write_bytes_per_second, None);
    assert_eq!(u.read_calls_per_second, None);
    assert_eq!(u.max_get_records_records, None);
    assert_eq!(u.retention, c.retention);
    assert_eq!(u.iterator_ttl, c.iterator_ttl);
}
