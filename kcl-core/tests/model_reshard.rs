//! The in-memory Kinesis model: resharding, lineage, shard end and `ListShards`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcl_core::backend::{
    BackendError, ListShardsRequest, Shard, ShardFilter, StartingPosition, StreamBackend,
};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::record::HashKeyRange;

fn model() -> Arc<KinesisModel> {
    KinesisModel::new(ModelConfig::default().with_read_limits(None, None))
}

fn id(i: usize) -> String {
    format!("shardId-{i:012}")
}

fn find<'a>(shards: &'a [Shard], shard_id: &str) -> &'a Shard {
    shards.iter().find(|s| s.shard_id == shard_id).unwrap()
}

async fn read_all(m: &KinesisModel, stream: &str, shard: &str) -> (Vec<Bytes>, Vec<String>) {
    let mut it = m
        .get_shard_iterator(stream, shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let mut data = Vec::new();
    loop {
        let out = m.get_records(&it, 3).await.unwrap();
        data.extend(out.records.iter().map(|r| r.data().clone()));
        match out.next_shard_iterator {
            Some(next) => {
                assert!(out.child_shards.is_empty());
                if out.records.is_empty() {
                    return (data, Vec::new());
                }
                it = next;
            }
            None => {
                assert_eq!(out.millis_behind_latest, Some(0));
                return (
                    data,
                    out.child_shards.into_iter().map(|c| c.shard_id).collect(),
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn split_closes_the_parent_and_opens_two_children() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    let before = m
        .put_record("s", "k", Bytes::from_static(b"before"), None)
        .unwrap();
    let half = 1u128 << 127;
    let children = m.split_shard("s", &id(0), &half.to_string()).unwrap();
    assert_eq!(children, [id(1), id(2)]);
    let shards = m.shards("s").unwrap();
    assert_eq!(shards.len(), 3);
    let parent = find(&shards, &id(0));
    let ending = parent
        .ending_sequence_number
        .clone()
        .expect("parent closed");
    assert!(before.sequence_number < ending);
    let low = find(&shards, &id(1));
    let high = find(&shards, &id(2));
    assert_eq!(
        low.hash_key_range,
        HashKeyRange {
            start: 0,
            end: half - 1
        }
    );
    assert_eq!(
        high.hash_key_range,
        HashKeyRange {
            start: half,
            end: u128::MAX
        }
    );
    for child in [low, high] {
        assert_eq!(child.parent_shard_id.as_deref(), Some(id(0).as_str()));
        assert_eq!(child.adjacent_parent_shard_id, None);
        assert!(child.is_open());
        assert!(child.starting_sequence_number > ending);
    }
    // New records go to the children, with numbers above the parent's.
    let low_put = m
        .put_record("s", "k", Bytes::from_static(b"low"), Some("5"))
        .unwrap();
    let high_put = m
        .put_record(
            "s",
            "k",
            Bytes::from_static(b"high"),
            Some(&half.to_string()),
        )
        .unwrap();
    assert_eq!(low_put.shard_id, id(1));
    assert_eq!(high_put.shard_id, id(2));
    assert!(low_put.sequence_number > ending);
    assert_eq!(m.describe_stream("s").await.unwrap().open_shard_count, 2);
}

#[tokio::test(start_paused = true)]
async fn a_closed_shard_read_to_its_end_returns_its_children() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    for i in 0..5u8 {
        m.put_record("s", "k", Bytes::from(vec![i]), None).unwrap();
    }
    m.split_shard("s", &id(0), "1000").unwrap();
    // Before the end: records and a next iterator, no children.
    let it = m
        .get_shard_iterator("s", &id(0), StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let first = m.get_records(&it, 2).await.unwrap();
    assert_eq!(first.records.len(), 2);
    assert!(first.next_shard_iterator.is_some());
    assert!(first.child_shards.is_empty());
    // At the end: no next iterator, the children with their parents and ranges.
    let last = m
        .get_records(first.next_shard_iterator.as_ref().unwrap(), 100)
        .await
        .unwrap();
    assert_eq!(last.records.len(), 3);
    assert_eq!(last.next_shard_iterator, None);
    assert_eq!(last.millis_behind_latest, Some(0));
    let children: Vec<_> = last
        .child_shards
        .iter()
        .map(|c| c.shard_id.clone())
        .collect();
    assert_eq!(children, [id(1), id(2)]);
    for c in &last.child_shards {
        assert_eq!(c.parent_shards, [id(0)]);
    }
    assert_eq!(
        last.child_shards[0].hash_key_range,
        HashKeyRange { start: 0, end: 999 }
    );
    // LATEST on a closed shard is at its end at once.
    let latest = m
        .get_shard_iterator("s", &id(0), StartingPosition::Latest)
        .await
        .unwrap();
    let out = m.get_records(&latest, 10).await.unwrap();
    assert!(out.records.is_empty());
    assert_eq!(out.next_shard_iterator, None);
    assert_eq!(out.child_shards.len(), 2);
    // AT_SEQUENCE_NUMBER of the ending sequence number is valid; beyond it is not.
    let ending = m.shards("s").unwrap()[0]
        .ending_sequence_number
        .clone()
        .unwrap();
    m.get_shard_iterator("s", &id(0), StartingPosition::AfterSequenceNumber(ending))
        .await
        .unwrap();
    let child_start = m.shards("s").unwrap()[2].starting_sequence_number.clone();
    assert!(matches!(
        m.get_shard_iterator("s", &id(0), StartingPosition::AtSequenceNumber(child_start))
            .await,
        Err(BackendError::InvalidArgument(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn split_needs_a_key_strictly_inside_the_open_shard() {
    let m = model();
    m.create_stream("s", 2).unwrap();
    let second_start = (1u128 << 127).to_string();
    for bad in ["0", second_start.as_str(), "x", "-5", ""] {
        let err = m.split_shard("s", &id(0), bad).unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(ref msg) if msg.message().contains(bad)),
            "{bad}: {err:?}"
        );
    }
    m.split_shard("s", &id(0), "1").unwrap();
    let err = m.split_shard("s", &id(0), "7").unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref msg) if msg.message().contains("closed")),
        "{err:?}"
    );
    assert!(matches!(
        m.split_shard("s", "shardId-000000000042", "7"),
        Err(BackendError::ResourceNotFound(_))
    ));
    assert!(matches!(
        m.split_shard("nope", &id(0), "7"),
        Err(BackendError::ResourceNotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn merge_needs_two_open_adjacent_shards() {
    let m = model();
    m.create_stream("s", 3).unwrap();
    m.put_record("s", "k", Bytes::from_static(b"zero"), Some("0"))
        .unwrap();
    m.put_record(
        "s",
        "k",
        Bytes::from_static(b"max"),
        Some(&u128::MAX.to_string()),
    )
    .unwrap();
    for (a, b) in [(0, 2), (2, 0), (1, 1)] {
        let err = m.merge_shards("s", &id(a), &id(b)).unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(ref msg) if msg.message().contains("adjacent")),
            "{err:?}"
        );
    }
    // Merging in either order works; the first argument is the parent.
    let child = m.merge_shards("s", &id(2), &id(1)).unwrap();
    assert_eq!(child, id(3));
    let shards = m.shards("s").unwrap();
    let merged = find(&shards, &child);
    assert_eq!(merged.parent_shard_id.as_deref(), Some(id(2).as_str()));
    assert_eq!(
        merged.adjacent_parent_shard_id.as_deref(),
        Some(id(1).as_str())
    );
    assert_eq!(
        merged.hash_key_range.start,
        find(&shards, &id(1)).hash_key_range.start
    );
    assert_eq!(merged.hash_key_range.end, u128::MAX);
    let parents: Vec<_> = merged.parents().collect();
    assert_eq!(parents, [id(2).as_str(), id(1).as_str()]);
    for p in [1, 2] {
        let parent = find(&shards, &id(p));
        assert!(!parent.is_open());
        assert!(merged.starting_sequence_number > *parent.ending_sequence_number.as_ref().unwrap());
    }
    // Closed shards cannot be merged again.
    let err = m.merge_shards("s", &id(0), &id(1)).unwrap_err();
    assert!(
        matches!(err, BackendError::InvalidArgument(ref msg) if msg.message().contains("closed")),
        "{err:?}"
    );
    // Both parents end with the merged child, listing both parents.
    for p in [1, 2] {
        let (_, children) = read_all(&m, "s", &id(p)).await;
        assert_eq!(children, [id(3)]);
    }
    let it = m
        .get_shard_iterator("s", &id(2), StartingPosition::Latest)
        .await
        .unwrap();
    let out = m.get_records(&it, 10).await.unwrap();
    assert_eq!(out.child_shards[0].parent_shards, [id(2), id(1)]);
    // The merged shard takes the keys of both.
    let out = m
        .put_record(
            "s",
            "k",
            Bytes::from_static(b"x"),
            Some(&u128::MAX.to_string()),
        )
        .unwrap();
    assert_eq!(out.shard_id, id(3));
    let (data, _) = read_all(&m, "s", &id(2)).await;
    assert_eq!(data, [Bytes::from_static(b"max")]);
}

/// Checks that the open shards tile the key space uniformly into `n` ranges and that every shard
/// with parents points at existing, closed shards.
fn check_uniform_with_lineage(m: &KinesisModel, n: u128) {
    let shards = m.shards("s").unwrap();
    let mut open: Vec<&Shard> = shards.iter().filter(|s| s.is_open()).collect();
    open.sort_by_key(|s| s.hash_key_range.start);
    assert_eq!(open.len() as u128, n);
    let step = if n == 1 {
        0
    } else {
        u128::MAX / n + u128::from(u128::MAX % n == n - 1)
    };
    for (i, s) in open.iter().enumerate() {
        assert_eq!(s.hash_key_range.start, i as u128 * step, "{}", s.shard_id);
    }
    assert_eq!(open.last().unwrap().hash_key_range.end, u128::MAX);
    for pair in open.windows(2) {
        assert_eq!(pair[0].hash_key_range.end + 1, pair[1].hash_key_range.start);
    }
    for s in &shards {
        for p in s.parents() {
            let parent = find(&shards, p);
            assert!(!parent.is_open(), "{p} parent of {} is open", s.shard_id);
            assert!(s.starting_sequence_number > *parent.ending_sequence_number.as_ref().unwrap());
        }
    }
}

#[tokio::test(start_paused = true)]
async fn update_shard_count_scales_uniformly_through_splits_and_merges() {
    let m = model();
    m.create_stream("s", 4).unwrap();
    for i in 0..100 {
        m.put_record("s", &format!("k{i}"), Bytes::from_static(b"x"), None)
            .unwrap();
    }
    m.update_shard_count("s", 8).unwrap();
    check_uniform_with_lineage(&m, 8);
    // Doubling is done by splitting each shard once.
    let shards = m.shards("s").unwrap();
    assert_eq!(shards.len(), 12);
    for s in shards.iter().filter(|s| s.is_open()) {
        assert!(s.parent_shard_id.is_some() && s.adjacent_parent_shard_id.is_none());
    }
    m.update_shard_count("s", 5).unwrap();
    check_uniform_with_lineage(&m, 5);
    m.update_shard_count("s", 3).unwrap();
    check_uniform_with_lineage(&m, 3);
    m.update_shard_count("s", 3).unwrap();
    check_uniform_with_lineage(&m, 3);
    assert_eq!(m.describe_stream("s").await.unwrap().open_shard_count, 3);
    // Every record written before is still readable from the original shards.
    let mut total = 0;
    for i in 0..4 {
        let (data, children) = read_all(&m, "s", &id(i)).await;
        total += data.len();
        assert!(!children.is_empty());
    }
    assert_eq!(total, 100);
    // Out of the allowed factor of two, or zero.
    for bad in [7, 1] {
        assert!(
            matches!(
                m.update_shard_count("s", bad),
                Err(BackendError::LimitExceeded(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        m.update_shard_count("s", 0),
        Err(BackendError::InvalidArgument(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn update_shard_count_without_the_scaling_limit() {
    let m = KinesisModel::new(ModelConfig::unlimited());
    m.create_stream("s", 1).unwrap();
    m.update_shard_count("s", 16).unwrap();
    check_uniform_with_lineage(&m, 16);
    m.update_shard_count("s", 7).unwrap();
    check_uniform_with_lineage(&m, 7);
    m.update_shard_count("s", 1).unwrap();
    check_uniform_with_lineage(&m, 1);
}

#[tokio::test(start_paused = true)]
async fn closed_shards_past_retention_disappear() {
    let m = model();
    m.create_stream("s", 1).unwrap();
    m.put_record("s", "k", Bytes::from_static(b"x"), None)
        .unwrap();
    tokio::time::advance(Duration::from_secs(3600)).await;
    m.split_shard("s", &id(0), "100").unwrap();
    tokio::time::advance(Duration::from_secs(23 * 3600)).await;
    // The record is past retention but the shard closed less than a day ago: still listed.
    assert_eq!(m.shard_ids("s").unwrap(), [id(0), id(1), id(2)]);
    let (data, children) = read_all(&m, "s", &id(0)).await;
    assert!(data.is_empty());
    assert_eq!(children.len(), 2);
    tokio::time::advance(Duration::from_secs(3600 - 60)).await;
    let it = m
        .get_shard_iterator("s", &id(0), StartingPosition::TrimHorizon)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(m.shard_ids("s").unwrap(), [id(1), id(2)]);
    assert!(matches!(
        m.get_shard_iterator("s", &id(0), StartingPosition::TrimHorizon)
            .await,
        Err(BackendError::ResourceNotFound(_))
    ));
    assert!(matches!(
        m.get_records(&it, 10).await,
        Err(BackendError::ResourceNotFound(_))
    ));
    // The children still name their (gone) parent, as in Kinesis.
    assert_eq!(
        m.shards("s").unwrap()[0].parent_shard_id.as_deref(),
        Some(id(0).as_str())
    );
}

async fn list(m: &KinesisModel, filter: Option<ShardFilter>) -> Vec<String> {
    let page = m
        .list_shards(ListShardsRequest {
            stream: "s".into(),
            filter,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.next_token, None);
    page.shards.into_iter().map(|s| s.shard_id).collect()
}

fn ids(list: &[usize]) -> Vec<String> {
    list.iter().map(|&i| id(i)).collect()
}

#[tokio::test(start_paused = true)]
async fn list_shards_paginates_with_opaque_tokens() {
    let m = model();
    m.create_stream("s", 5).unwrap();
    let mut request = ListShardsRequest {
        stream: "s".into(),
        max_results: Some(2),
        ..Default::default()
    };
    let mut pages = Vec::new();
    loop {
        let page = m.list_shards(request.clone()).await.unwrap();
        pages.push(
            page.shards
                .iter()
                .map(|s| s.shard_id.clone())
                .collect::<Vec<_>>(),
        );
        match page.next_token {
            Some(token) => {
                request.next_token = Some(token);
                // The stream name is ignored once a token is given.
                request.stream = "ignored".into();
            }
            None => break,
        }
    }
    assert_eq!(pages, [ids(&[0, 1]), ids(&[2, 3]), ids(&[4])]);
    // Exactly one page: no token.
    let page = m
        .list_shards(ListShardsRequest {
            stream: "s".into(),
            max_results: Some(5),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.shards.len(), 5);
    assert_eq!(page.next_token, None);
    // A filter is kept across pages.
    m.split_shard("s", &id(0), "10").unwrap();
    let first = m
        .list_shards(ListShardsRequest {
            stream: "s".into(),
            max_results: Some(4),
            filter: Some(ShardFilter::AtLatest),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        first
            .shards
            .iter()
            .map(|s| s.shard_id.clone())
            .collect::<Vec<_>>(),
        ids(&[1, 2, 3, 4])
    );
    let token = first.next_token.unwrap();
    let second = m
        .list_shards(ListShardsRequest {
            next_token: Some(token.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        second
            .shards
            .iter()
            .map(|s| s.shard_id.clone())
            .collect::<Vec<_>>(),
        ids(&[5, 6])
    );
    // Garbled tokens and bad page sizes are invalid arguments.
    for bad in [
        String::new(),
        "nope".into(),
        format!("{token}x"),
        token[1..].to_owned(),
    ] {
        let err = m
            .list_shards(ListShardsRequest {
                next_token: Some(bad.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(_)),
            "{bad:?}: {err:?}"
        );
    }
    for bad in [0, 10_001] {
        let err = m
            .list_shards(ListShardsRequest {
                stream: "s".into(),
                max_results: Some(bad),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::InvalidArgument(ref msg) if msg.message().contains(&bad.to_string())),
            "{err:?}"
        );
    }
    // Tokens expire after 300 seconds.
    tokio::time::advance(Duration::from_secs(300)).await;
    let err = m
        .list_shards(ListShardsRequest {
            next_token: Some(token),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::ExpiredNextToken(_)), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn list_shards_filters() {
    let m = model();
    let hour = Duration::from_secs(3600);
    let t0 = m.system_now();
    m.create_stream("s", 2).unwrap(); // 0, 1 at t0
    tokio::time::advance(hour).await;
    let t1 = m.system_now();
    m.split_shard("s", &id(0), "1000").unwrap(); // 0 closed, 2 and 3 open at t1
    tokio::time::advance(hour).await;
    let t2 = m.system_now();
    m.merge_shards("s", &id(2), &id(3)).unwrap(); // 2, 3 closed, 4 open at t2
    tokio::time::advance(hour).await;
    let half = Duration::from_secs(1800);

    let all = ids(&[0, 1, 2, 3, 4]);
    assert_eq!(list(&m, None).await, all);
    assert_eq!(list(&m, Some(ShardFilter::FromTrimHorizon)).await, all);
    assert_eq!(list(&m, Some(ShardFilter::AtLatest)).await, ids(&[1, 4]));
    // The stream is younger than its retention: the trim horizon is its creation.
    assert_eq!(
        list(&m, Some(ShardFilter::AtTrimHorizon)).await,
        ids(&[0, 1])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::AfterShardId(id(2)))).await,
        ids(&[3, 4])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::AfterShardId(id(4)))).await,
        ids(&[])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::AtTimestamp(t0 + half))).await,
        ids(&[0, 1])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::AtTimestamp(t1 + half))).await,
        ids(&[1, 2, 3])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::AtTimestamp(t2 + half))).await,
        ids(&[1, 4])
    );
    // At the exact instant of a reshard both the closing and the new shards are open.
    assert_eq!(
        list(&m, Some(ShardFilter::AtTimestamp(t1))).await,
        ids(&[0, 1, 2, 3])
    );
    // Before the stream existed: read as the trim horizon.
    assert_eq!(
        list(&m, Some(ShardFilter::AtTimestamp(t0 - hour))).await,
        ids(&[0, 1])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::FromTimestamp(t1 + half))).await,
        ids(&[1, 2, 3, 4])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::FromTimestamp(t2 + half))).await,
        ids(&[1, 4])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::FromTimestamp(t0 - hour))).await,
        all
    );

    // A day later shard 0 (closed at t1) is gone and the trim horizon (t0 + 1.5 h) has moved.
    tokio::time::advance(22 * hour + half).await;
    assert_eq!(list(&m, None).await, ids(&[1, 2, 3, 4]));
    assert_eq!(
        list(&m, Some(ShardFilter::AtTrimHorizon)).await,
        ids(&[1, 2, 3])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::FromTimestamp(t0))).await,
        ids(&[1, 2, 3, 4])
    );
    assert_eq!(
        list(&m, Some(ShardFilter::AtTimestamp(t0))).await,
        ids(&[1, 2, 3])
    );
    assert_eq!(
        m.shards_filtered("s", Some(&ShardFilter::AtLatest))
            .unwrap()
            .len(),
        2
    );
    // Open shards in hash-key order: 4 took over shard 0's lower half of the key space.
    assert_eq!(m.open_shard_ids("s").unwrap(), ids(&[4, 1]));
}
