//! The in-memory Kinesis model: routing, sequence numbers, writes, iterators and bad input.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::{
    BackendError, GetRecordsOutput, ListShardsRequest, ShardIterator, StartingPosition,
    StreamBackend, StreamStatus,
};
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry};
use kcl_core::record::{Record, SequenceNumber, partition_key_hash};

/// Real limits except the read limits, so functional tests can read freely.
fn model() -> Arc<KinesisModel> {
    KinesisModel::new(ModelConfig::default().with_read_limits(None, None))
}

async fn iter(m: &KinesisModel, stream: &str, shard: &str, pos: StartingPosition) -> ShardIterator {
    m.get_shard_iterator(stream, shard, pos).await.unwrap()
}

async fn read(m: &KinesisModel, it: &ShardIterator) -> GetRecordsOutput {
    m.get_records(it, 10_000).await.unwrap()
}

fn data(records: &[Record]) -> Vec<&[u8]> {
    records.iter().map(|r| r.data().as_ref()).collect()
}

#[tokio::test(start_paused = true)]
async fn create_stream_splits_the_key_space_evenly() {
    let m = model();
    m.create_stream("s", 4).unwrap();
    let shards = m.shards("s").unwrap();
    let ids: Vec<_> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "shardId-000000000000",
            "shardId-000000000001",
            "shardId-000000000002",
            "shardId-000000000003"
        ]
    );
    assert_eq!(shards[0].hash_key_range.start, 0);
    assert_eq!(shards[1].hash_key_range.start, 1u128 << 126);
    assert_eq!(shards[3].hash_key_range.end, u128::MAX);
    for pair in shards.windows(2) {
        assert_eq!(pair[0].hash_key_range.end + 1, pair[1].hash_key_range.start);
    }
    for s in &shards {
        assert!(s.is_open());
        assert_eq!(s.parents().count(), 0);
        assert_eq!(s.starting_sequence_number.as_str().len(), 56);
    }
}

#[tokio::test(start_paused = true)]
async fn routes_by_md5_of_the_partition_key() {
    let m = model();
    m.create_stream("s", 4).unwrap();
    let shards = m.shards("s").unwrap();
    for i in 0..200 {
        let key = format!("key-{i}");
        let out = m
            .put_record("s", &key, Bytes::from_static(b"x"), None)
            .unwrap();
        let shard = shards.iter().find(|s| s.shard_id == out.shard_id).unwrap();
        assert!(
            shard.hash_key_range.contains(partition_key_hash(&key)),
            "{key}"
        );
    }
    // All four shards got something: MD5 spreads the keys.
    let mut used: Vec<String> = Vec::new();
    for s in &shards {
        let it = iter(&m, "s", &s.shard_id, StartingPosition::TrimHorizon).await;
        if !read(&m, &it).await.records.is_empty() {
            used.push(s.shard_id.clone());
        }
    }
    assert_eq!(used.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn routes_by_explicit_hash_key() {
    let m = model();
    m.create_stream("s", 4).unwrap();
    let put = |key: String| {
        m.put_record("s", "same-key", Bytes::from_static(b"x"), Some(&key))
            .unwrap()
            .shard_id
    };
    assert_eq!(put("0".into()), "shardId-000000000000");
    assert_eq!(
        put(((1u128 << 126) - 1).to_string()),
        "shardId-000000000000"
    );
    assert_eq!(put((1u128 << 126).to_string()), "shardId-000000000001");
    assert_eq!(put((3u128 << 126).to_string()), "shardId-000000000003");
    assert_eq!(put(u128::MAX.to_string()), "shardId-000000000003");
}

#[tokio::test(start_paused = true)]
async fn bad_explicit_hash_keys_are_invalid_arguments_naming_the_value() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    for bad in [
        "abc",
        "-1",
        "",
        "1.5",
        "340282366920938463463374607431768211456",
    ] {
        let err = m
            .put_record("s", "k", Bytes::from_static(b"x"), Some(bad))
            .unwrap_err();
        match err {
            BackendError::InvalidArgument(msg) => {
                assert!(msg.message().contains(&format!("{bad:?}")), "{msg}")
            }
            other => panic!("{bad}: {other:?}"),
        }
        let err = m
            .put_records(
                "s",
                vec![
                    PutRecordsEntry::new("k", Bytes::from_static(b"x")),
                    PutRecordsEntry::new("k", Bytes::from_static(b"x")).with_explicit_hash_key(bad),
                ],
            )
            .unwrap_err();
        match err {
            BackendError::InvalidArgument(msg) => {
                assert!(msg.message().contains("record 1"), "{msg}");
                assert!(msg.message().contains(&format!("{bad:?}")), "{msg}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_are_real_looking_parseable_and_increasing() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let mut seen: Vec<SequenceNumber> = Vec::new();
    for i in 0..50 {
        let out = m
            .put_record("s", &format!("k{i}"), Bytes::from_static(b"x"), None)
            .unwrap();
        seen.push(out.sequence_number);
    }
    let batch = m
        .put_records(
            "s",
            (0..50)
                .map(|i| PutRecordsEntry::new(format!("b{i}"), Bytes::from_static(b"y")))
                .collect(),
        )
        .unwrap();
    assert_eq!(batch.failed_record_count, 0);
    seen.extend(
        batch
            .records
            .iter()
            .map(|r| r.sequence_number().unwrap().clone()),
    );
    let start = m.shards("s").unwrap()[0].starting_sequence_number.clone();
    assert!(start < seen[0]);
    for pair in seen.windows(2) {
        assert!(pair[0] < pair[1], "{:?} !< {:?}", pair[0], pair[1]);
    }
    for seq in &seen {
        assert_eq!(seq.as_str().len(), 56);
        assert!(seq.as_str().starts_with("4959"));
        assert_eq!(&SequenceNumber::new(seq.as_str()).unwrap(), seq);
    }
    // Reading returns the same numbers, in order.
    let it = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    let out = read(&m, &it).await;
    let read_seqs: Vec<_> = out
        .records
        .iter()
        .map(|r| r.sequence_number().clone())
        .collect();
    assert_eq!(read_seqs, seen);
}

#[tokio::test(start_paused = true)]
async fn partition_keys_must_have_1_to_256_characters() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let err = m
        .put_record("s", "", Bytes::from_static(b"x"), None)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains("partition key")),
        "{err:?}"
    );
    let long = "k".repeat(257);
    let err = m
        .put_record("s", &long, Bytes::from_static(b"x"), None)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains("257")),
        "{err:?}"
    );
    // 256 characters are fine even when they take more than 256 bytes.
    let wide = "é".repeat(256);
    m.put_record("s", &wide, Bytes::from_static(b"x"), None)
        .unwrap();
    m.put_record("s", &"k".repeat(256), Bytes::from_static(b"x"), None)
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn records_over_one_mib_including_the_key_are_refused() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let mib = 1024 * 1024;
    let err = m
        .put_record("s", "k", Bytes::from(vec![0u8; mib]), None)
        .unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains("1048577 bytes")),
        "{err:?}"
    );
    // Exactly 1 MiB with the key is accepted.
    m.put_record("s", "k", Bytes::from(vec![0u8; mib - 1]), None)
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn put_records_validates_count_and_total_size() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let err = m.put_records("s", Vec::new()).unwrap_err();
    assert!(matches!(err, BackendError::InvalidArgument(_)), "{err:?}");
    let many = (0..501)
        .map(|_| PutRecordsEntry::new("k", Bytes::from_static(b"x")))
        .collect();
    let err = m.put_records("s", many).unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains("501")),
        "{err:?}"
    );
    let big = Bytes::from(vec![0u8; 1024 * 1024 - 1]);
    let six_mib = (0..6)
        .map(|_| PutRecordsEntry::new("k", big.clone()))
        .collect();
    let err = m.put_records("s", six_mib).unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains("6291456 bytes")),
        "{err:?}"
    );
    let oversize = vec![
        PutRecordsEntry::new("k", Bytes::from_static(b"x")),
        PutRecordsEntry::new("k", Bytes::from(vec![0u8; 1024 * 1024])),
    ];
    let err = m.put_records("s", oversize).unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains("record 1")),
        "{err:?}"
    );
    // Nothing was stored by the refused calls.
    let it = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    assert!(read(&m, &it).await.records.is_empty());
}

#[tokio::test(start_paused = true)]
async fn records_come_back_as_written_with_arrival_times() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let before = m.system_now();
    let out = m
        .put_record("s", "pk", Bytes::from_static(b"hello"), None)
        .unwrap();
    let it = iter(&m, "s", &out.shard_id, StartingPosition::TrimHorizon).await;
    let got = read(&m, &it).await;
    assert_eq!(got.records.len(), 1);
    let r = &got.records[0];
    assert_eq!(r.partition_key(), "pk");
    assert_eq!(r.data().as_ref(), b"hello");
    assert_eq!(r.sequence_number(), &out.sequence_number);
    assert_eq!(r.approximate_arrival(), Some(before));
    assert!(!r.is_aggregated());
}

#[tokio::test(start_paused = true)]
async fn every_starting_position() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let shard = "shardId-000000000000";
    let stream_start = m.system_now();
    let mut seqs = Vec::new();
    let mut arrivals = Vec::new();
    for i in 0..5u8 {
        tokio::time::advance(Duration::from_secs(1)).await;
        arrivals.push(m.system_now());
        seqs.push(
            m.put_record("s", "k", Bytes::from(vec![i]), None)
                .unwrap()
                .sequence_number,
        );
    }
    let latest = iter(&m, "s", shard, StartingPosition::Latest).await;
    let cases: Vec<(StartingPosition, Vec<u8>)> = vec![
        (StartingPosition::TrimHorizon, vec![0, 1, 2, 3, 4]),
        (
            StartingPosition::AtSequenceNumber(seqs[2].clone()),
            vec![2, 3, 4],
        ),
        (
            StartingPosition::AfterSequenceNumber(seqs[2].clone()),
            vec![3, 4],
        ),
        (
            StartingPosition::AfterSequenceNumber(seqs[4].clone()),
            vec![],
        ),
        (StartingPosition::AtTimestamp(arrivals[3]), vec![3, 4]),
        (
            StartingPosition::AtTimestamp(arrivals[3] - Duration::from_millis(1)),
            vec![3, 4],
        ),
        (
            StartingPosition::AtTimestamp(arrivals[3] + Duration::from_millis(1)),
            vec![4],
        ),
        (
            StartingPosition::AtTimestamp(stream_start - Duration::from_secs(3600)),
            vec![0, 1, 2, 3, 4],
        ),
        (StartingPosition::Latest, vec![]),
    ];
    for (pos, want) in cases {
        let it = iter(&m, "s", shard, pos.clone()).await;
        let got = read(&m, &it).await;
        let got: Vec<u8> = got.records.iter().map(|r| r.data()[0]).collect();
        assert_eq!(got, want, "{pos:?}");
    }
    // LATEST sees what is written after the iterator was taken.
    m.put_record("s", "k", Bytes::from_static(&[5]), None)
        .unwrap();
    let got = read(&m, &latest).await;
    assert_eq!(data(&got.records), [&[5u8][..]]);
    // An AT_TIMESTAMP in the future is refused, as by Kinesis.
    let future = m
        .get_shard_iterator(
            "s",
            shard,
            StartingPosition::AtTimestamp(m.system_now() + Duration::from_secs(60)),
        )
        .await;
    assert!(
        matches!(future, Err(BackendError::InvalidArgument(_))),
        "{future:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn sequence_numbers_from_elsewhere_are_invalid_arguments() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    m.put_record("s", "k", Bytes::from_static(b"x"), None)
        .unwrap();
    let shard = "shardId-000000000000";
    for bad in [
        "1",
        "99999999999999999999999999999999999999999999999999999999999",
    ] {
        let err = m
            .get_shard_iterator(
                "s",
                shard,
                StartingPosition::AtSequenceNumber(SequenceNumber::new(bad).unwrap()),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains(bad)),
            "{err:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn follows_next_iterators_through_a_growing_shard() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let mut it = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    let mut got = Vec::new();
    for round in 0..5u8 {
        for i in 0..3u8 {
            m.put_record("s", "k", Bytes::from(vec![round * 3 + i]), None)
                .unwrap();
        }
        let out = m.get_records(&it, 2).await.unwrap();
        got.extend(out.records.iter().map(|r| r.data()[0]));
        it = out.next_shard_iterator.unwrap();
    }
    loop {
        let out = m.get_records(&it, 2).await.unwrap();
        if out.records.is_empty() {
            assert_eq!(out.millis_behind_latest, Some(0));
            break;
        }
        got.extend(out.records.iter().map(|r| r.data()[0]));
        it = out.next_shard_iterator.unwrap();
    }
    assert_eq!(got, (0..15).collect::<Vec<u8>>());
}

#[tokio::test(start_paused = true)]
async fn millis_behind_latest_is_the_age_of_the_oldest_unread_record() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    for _ in 0..3 {
        m.put_record("s", "k", Bytes::from_static(b"x"), None)
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let it = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    let first = m.get_records(&it, 1).await.unwrap();
    assert_eq!(first.millis_behind_latest, Some(10_000));
    let rest = read(&m, first.next_shard_iterator.as_ref().unwrap()).await;
    assert_eq!(rest.records.len(), 2);
    assert_eq!(rest.millis_behind_latest, Some(0));
    let empty = read(&m, rest.next_shard_iterator.as_ref().unwrap()).await;
    assert_eq!(empty.millis_behind_latest, Some(0));
}

#[tokio::test(start_paused = true)]
async fn garbled_and_forged_iterators_are_invalid_arguments() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let good = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    let text = good.as_str().to_owned();
    let mut flipped = text.clone().into_bytes();
    let last = flipped.len() - 1;
    flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
    let other_model = model();
    other_model.create_stream("s", 1).unwrap();
    let foreign = iter(
        &other_model,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    for bad in [
        String::new(),
        "garbage".to_owned(),
        text[..text.len() / 2].to_owned(),
        String::from_utf8(flipped).unwrap(),
        format!("{text}0"),
        "é".repeat(40),
        foreign.as_str().to_owned(),
    ] {
        let err = m
            .get_records(&ShardIterator::new(bad.as_str()), 10)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(_)),
            "{bad:?}: {err:?}"
        );
    }
    m.get_records(&good, 10).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn get_records_limit_must_be_between_1_and_10000() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let it = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    for bad in [0, 10_001] {
        let err = m.get_records(&it, bad).await.unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(ref m) if m.message().contains(&bad.to_string())),
            "{err:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_streams_and_shards_are_resource_not_found() {
    let m = model();
    m.create_stream("s", 2).unwrap();
    let nf = |e: BackendError| assert!(matches!(e, BackendError::ResourceNotFound(_)), "{e:?}");
    nf(m.put_record("nope", "k", Bytes::from_static(b"x"), None)
        .unwrap_err());
    nf(m.put_records(
        "nope",
        vec![PutRecordsEntry::new("k", Bytes::from_static(b"x"))],
    )
    .unwrap_err());
    nf(m.describe_stream("nope").await.unwrap_err());
    nf(m.list_shards(ListShardsRequest {
        stream: "nope".into(),
        ..Default::default()
    })
    .await
    .unwrap_err());
    nf(
        m.get_shard_iterator("nope", "shardId-000000000000", StartingPosition::Latest)
            .await
            .unwrap_err(),
    );
    for shard in [
        "shardId-000000000002",
        "shardId-1",
        "",
        "shardId-00000000000x",
    ] {
        let err = m
            .get_shard_iterator("s", shard, StartingPosition::Latest)
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::ResourceNotFound(ref msg) if msg.message().contains(shard)),
            "{err:?}"
        );
    }
    nf(m.split_shard("s", "shardId-000000000009", "5").unwrap_err());
    nf(
        m.merge_shards("s", "shardId-000000000000", "shardId-000000000009")
            .unwrap_err(),
    );
    nf(m.update_shard_count("nope", 2).unwrap_err());
    nf(m.delete_stream("nope").unwrap_err());
}

#[tokio::test(start_paused = true)]
async fn describe_create_and_delete_streams() {
    let m = model();
    m.create_stream("orders.v1_x-y", 3).unwrap();
    let d = m.describe_stream("orders.v1_x-y").await.unwrap();
    assert_eq!(d.name, "orders.v1_x-y");
    assert_eq!(d.status, StreamStatus::Active);
    assert_eq!(d.open_shard_count, 3);
    assert_eq!(d.retention, Duration::from_secs(24 * 3600));
    assert_eq!(d.created_at, m.system_now());
    assert!(d.arn.ends_with(":stream/orders.v1_x-y"));
    assert!(matches!(
        m.create_stream("orders.v1_x-y", 1),
        Err(BackendError::ResourceInUse(_))
    ));
    for bad in ["", "has space", "slash/no", &"x".repeat(129)] {
        assert!(
            matches!(
                m.create_stream(bad, 1),
                Err(BackendError::InvalidArgument(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        m.create_stream("zero", 0),
        Err(BackendError::InvalidArgument(_))
    ));

    // Deleting a stream invalidates its iterators, even after a stream of the same name is
    // created again.
    let it = iter(
        &m,
        "orders.v1_x-y",
        "shardId-000000000000",
        StartingPosition::TrimHorizon,
    )
    .await;
    m.delete_stream("orders.v1_x-y").unwrap();
    assert!(matches!(
        m.get_records(&it, 10).await,
        Err(BackendError::ResourceNotFound(_))
    ));
    m.create_stream("orders.v1_x-y", 1).unwrap();
    assert!(matches!(
        m.get_records(&it, 10).await,
        Err(BackendError::ResourceNotFound(_))
    ));

    m.set_retention_period("orders.v1_x-y", Duration::from_secs(48 * 3600))
        .unwrap();
    let d = m.describe_stream("orders.v1_x-y").await.unwrap();
    assert_eq!(d.retention, Duration::from_secs(48 * 3600));
    assert!(matches!(
        m.set_retention_period("orders.v1_x-y", Duration::from_secs(60)),
        Err(BackendError::InvalidArgument(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn is_usable_as_a_shared_dyn_backend() {
    let m = model();
    m.create_stream("s", 2).unwrap();
    let backend: Arc<dyn StreamBackend> = m.clone();
    let shards = kcl_core::backend::list_all_shards(backend.as_ref(), "s", None)
        .await
        .unwrap();
    assert_eq!(shards.len(), 2);
    let writer = tokio::spawn({
        let m = m.clone();
        async move {
            for i in 0..100u32 {
                m.put_record(
                    "s",
                    &i.to_string(),
                    Bytes::from(i.to_be_bytes().to_vec()),
                    None,
                )
                .unwrap();
            }
        }
    });
    writer.await.unwrap();
    let mut total = 0;
    for s in shards {
        let it = backend
            .get_shard_iterator("s", &s.shard_id, StartingPosition::TrimHorizon)
            .await
            .unwrap();
        total += backend
            .get_records(&it, 10_000)
            .await
            .unwrap()
            .records
            .len();
    }
    assert_eq!(total, 100);
}

#[tokio::test(start_paused = true)]
async fn timestamps_long_before_the_process_started_mean_the_trim_horizon() {
    let m = model();
    m.create_stream("s", 2).unwrap();
    m.put_record("s", "k", Bytes::from_static(b"a"), Some("0"))
        .unwrap();
    m.put_record("s", "k", Bytes::from_static(b"b"), Some("0"))
        .unwrap();
    let epoch = std::time::UNIX_EPOCH;
    let it = iter(
        &m,
        "s",
        "shardId-000000000000",
        StartingPosition::AtTimestamp(epoch),
    )
    .await;
    assert_eq!(read(&m, &it).await.records.len(), 2);
    let listed = m
        .shards_filtered(
            "s",
            Some(&kcl_core::backend::ShardFilter::AtTimestamp(epoch)),
        )
        .unwrap();
    assert_eq!(listed.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_recreated_stream_never_reuses_sequence_numbers() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let old = m
        .put_record("s", "k", Bytes::from_static(b"a"), None)
        .unwrap();
    m.delete_stream("s").unwrap();
    m.create_stream("s", 1).unwrap();
    let new = m
        .put_record("s", "k", Bytes::from_static(b"a"), None)
        .unwrap();
    assert_ne!(old.sequence_number, new.sequence_number);
    assert!(old.sequence_number < new.sequence_number);
    let err = m
        .get_shard_iterator(
            "s",
            "shardId-000000000000",
            StartingPosition::AtSequenceNumber(old.sequence_number),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::InvalidArgument(_)), "{err:?}");
}
