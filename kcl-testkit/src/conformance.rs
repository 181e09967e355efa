//! The `StreamBackend` conformance suite: behaviour every backend must show, as the in-memory
//! model and the AWS backend against a real Kinesis API both do. Run it on your backend by
//! implementing [`Target`] (the backend to read through, and the writes the suite needs) and
//! generating the tests with [`stream_backend_conformance_tests!`](crate::stream_backend_conformance_tests):
//!
//! ```ignore
//! kcl_testkit::stream_backend_conformance_tests!(MyTarget::new().await);
//! ```
//!
//! Each case is also a public function taking a `&dyn Target`, for a test of your own. Where the
//! model differs from the service on purpose, the case says so ([`Target::is_model`]). Cases
//! that need enhanced fan-out (`fan_out_*`, `consumers_register_once`) need a backend that
//! offers it.
// A test suite: a failed step panics, as a failed assertion does.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use kcl_core::backend::{
    BackendError, ConsumerStatus, FanOut, ListShardsRequest, ShardFilter, StartingPosition,
    StreamBackend, StreamConsumer, SubscribeToShardEvent, list_all_shards,
};
use kcl_core::record::{Record, SequenceNumber};

pub use crate::kinesis::{Target, TargetExt};
use crate::kinesis::{unique, unthrottled};

/// The names of every case, in order.
pub const CASES: &[&str] = &[
    "iterator_types_start_where_they_say",
    "records_keep_their_order_per_shard_and_key",
    "list_shards_paginates",
    "shard_filters_select_shards",
    "split_and_merge_report_lineage_and_child_shards",
    "fan_out_pushes_records_and_continuations",
    "fan_out_resubscribes_from_the_continuation",
    "fan_out_allows_one_subscription_per_consumer_and_shard",
    "fan_out_ends_a_closed_shard_with_its_children",
    "consumers_register_once",
];

/// Generates one `#[tokio::test]` per conformance case, each on a fresh target made by
/// `$target` (an expression evaluated inside the async test, so it may `.await`, giving a value
/// implementing [`Target`]). Attributes after the target go on every test (e.g.
/// `#[ignore = "..."]` for cases that need a server). Invoke it inside a module to group the
/// test names.
///
/// ```ignore
/// mod model {
///     kcl_testkit::stream_backend_conformance_tests!(kcl_testkit::kinesis::Kinesis::model());
/// }
/// mod server {
///     kcl_testkit::stream_backend_conformance_tests!(
///         kcl_testkit::kinesis::Kinesis::server().await,
///         #[ignore = "needs a Kinesis endpoint"]
///     );
/// }
/// ```
#[macro_export]
macro_rules! stream_backend_conformance_tests {
    ($target:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__stream_backend_conformance_cases!([$(#[$attr])*] $target;
            iterator_types_start_where_they_say,
            records_keep_their_order_per_shard_and_key,
            list_shards_paginates,
            shard_filters_select_shards,
            split_and_merge_report_lineage_and_child_shards,
            fan_out_pushes_records_and_continuations,
            fan_out_resubscribes_from_the_continuation,
            fan_out_allows_one_subscription_per_consumer_and_shard,
            fan_out_ends_a_closed_shard_with_its_children,
            consumers_register_once,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stream_backend_conformance_cases {
    ($attrs:tt $target:expr; $($case:ident),* $(,)?) => {
        $(
            $crate::__stream_backend_conformance_case!($attrs, $target, $case);
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stream_backend_conformance_case {
    ([$(#[$attr:meta])*], $target:expr, $case:ident) => {
        #[::tokio::test]
        $(#[$attr])*
        async fn $case() {
            let target = $target;
            $crate::conformance::$case(&target).await;
        }
    };
}

/// The backend's fan-out (the fan-out cases run on backends that offer it).
fn fan_out(backend: &std::sync::Arc<dyn StreamBackend>) -> &dyn FanOut {
    backend
        .fan_out()
        .expect("the backend offers enhanced fan-out")
}

const WAIT: Duration = Duration::from_secs(30);

/// Reads a shard from `position` until `want` records arrived (or the shard ended).
async fn read(
    k: &dyn Target,
    stream: &str,
    shard: &str,
    position: StartingPosition,
    want: usize,
) -> Vec<Record> {
    let backend = k.backend();
    let mut it = unthrottled(|| backend.get_shard_iterator(stream, shard, position.clone()))
        .await
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while out.len() < want {
        let page = unthrottled(|| backend.get_records(&it, 10_000))
            .await
            .unwrap();
        out.extend(page.records);
        match page.next_shard_iterator {
            Some(next) => it = next,
            None => break,
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "read {} of {want}",
            out.len()
        );
        if out.len() < want {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    out
}

/// Reads a shard from the trim horizon until a page reaches the tip.
async fn read_to_tip(k: &dyn Target, stream: &str, shard: &str) -> Vec<Record> {
    let backend = k.backend();
    let mut it =
        unthrottled(|| backend.get_shard_iterator(stream, shard, StartingPosition::TrimHorizon))
            .await
            .unwrap();
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = unthrottled(|| backend.get_records(&it, 100)).await.unwrap();
        let empty = page.records.is_empty();
        out.extend(page.records);
        match page.next_shard_iterator {
            Some(next) if !(empty && page.millis_behind_latest == Some(0)) => it = next,
            _ => return out,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{shard} never reached the tip");
}

fn payloads(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(r.data()).into_owned())
        .collect()
}

async fn one_shard_stream(k: &dyn Target, prefix: &str) -> (String, String) {
    let stream = unique(prefix);
    k.create_stream(&stream, 1)
        .await
        .expect("create the stream");
    let shard = k.open_shards(&stream).await.remove(0).shard_id;
    (stream, shard)
}

/// Every iterator type starts where it says: `TRIM_HORIZON`, `LATEST`, `AT_SEQUENCE_NUMBER`, `AFTER_SEQUENCE_NUMBER`, `AT_TIMESTAMP`.
pub async fn iterator_types_start_where_they_say(k: &dyn Target) {
    let (stream, shard) = one_shard_stream(k, "iter").await;
    let before = SystemTime::now() - Duration::from_secs(3600);
    let produced = k.produce(&stream, 1, 5, 0).await;
    let all = read(k, &stream, &shard, StartingPosition::TrimHorizon, 5).await;
    assert_eq!(
        payloads(&all),
        produced
            .iter()
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect::<Vec<_>>()
    );
    let seq: Vec<SequenceNumber> = all.iter().map(|r| r.sequence_number().clone()).collect();

    let at = read(
        k,
        &stream,
        &shard,
        StartingPosition::AtSequenceNumber(seq[2].clone()),
        3,
    )
    .await;
    assert_eq!(at.first().map(|r| r.sequence_number()), Some(&seq[2]));
    assert_eq!(at.len(), 3);
    let after = read(
        k,
        &stream,
        &shard,
        StartingPosition::AfterSequenceNumber(seq[2].clone()),
        2,
    )
    .await;
    assert_eq!(after.first().map(|r| r.sequence_number()), Some(&seq[3]));
    assert_eq!(after.len(), 2);
    let old = read(k, &stream, &shard, StartingPosition::AtTimestamp(before), 5).await;
    assert_eq!(
        old.len(),
        5,
        "AT_TIMESTAMP before the first record reads everything"
    );

    // LATEST starts after the last record: nothing until a new one arrives.
    let backend = k.backend();
    let latest = backend
        .get_shard_iterator(&stream, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    let page = unthrottled(|| backend.get_records(&latest, 100))
        .await
        .unwrap();
    assert!(page.records.is_empty());
    k.produce(&stream, 1, 1, 5).await;
    let mut it = page.next_shard_iterator.unwrap();
    let mut got = Vec::new();
    for _ in 0..50 {
        let page = unthrottled(|| backend.get_records(&it, 100)).await.unwrap();
        got.extend(page.records);
        it = page.next_shard_iterator.unwrap();
        if !got.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(payloads(&got), vec!["key-0:00000005".to_owned()]);

    // A timestamp in the future is refused.
    let future = backend
        .get_shard_iterator(
            &stream,
            &shard,
            StartingPosition::AtTimestamp(SystemTime::now() + Duration::from_secs(3600)),
        )
        .await;
    assert!(
        matches!(future, Err(BackendError::InvalidArgument(_))),
        "{future:?}"
    );
}

/// Records come back in the order they were written, per shard and per key.
pub async fn records_keep_their_order_per_shard_and_key(k: &dyn Target) {
    let stream = unique("order");
    k.create_stream(&stream, 2)
        .await
        .expect("create the stream");
    let produced = k.produce(&stream, 20, 400, 0).await;
    let mut seen = Vec::new();
    for shard in k.open_shards(&stream).await {
        let records = read_to_tip(k, &stream, &shard.shard_id).await;
        assert!(
            records
                .windows(2)
                .all(|w| w[0].sequence_number() < w[1].sequence_number()),
            "sequence numbers increase along {}",
            shard.shard_id
        );
        for r in &records {
            let key = kcl_core::record::partition_key_hash(r.partition_key());
            assert!(
                shard.hash_key_range.contains(key),
                "record routed to the shard owning its key"
            );
        }
        seen.extend(records);
    }
    assert_eq!(seen.len(), 400);
    let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
    for r in &seen {
        by_key
            .entry(r.partition_key().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(r.data()).into_owned());
    }
    let mut want: HashMap<String, Vec<String>> = HashMap::new();
    for (key, data) in &produced {
        want.entry(key.clone())
            .or_default()
            .push(String::from_utf8_lossy(data).into_owned());
    }
    assert_eq!(by_key, want);
}

/// `ListShards` paginates with `MaxResults` and `NextToken`.
pub async fn list_shards_paginates(k: &dyn Target) {
    let stream = unique("pages");
    k.create_stream(&stream, 5)
        .await
        .expect("create the stream");
    let backend = k.backend();
    let mut request = ListShardsRequest {
        stream: stream.clone(),
        max_results: Some(2),
        ..Default::default()
    };
    let mut ids = Vec::new();
    let mut pages = 0;
    loop {
        let page = backend.list_shards(request.clone()).await.unwrap();
        pages += 1;
        assert!(page.shards.len() <= 2);
        ids.extend(page.shards.into_iter().map(|s| s.shard_id));
        match page.next_token {
            Some(token) => {
                request = ListShardsRequest {
                    next_token: Some(token),
                    max_results: Some(2),
                    ..Default::default()
                }
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let unique_ids: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique_ids.len(), 5);
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "shards are listed in id order");
}

/// `ListShards` filters (`AT_LATEST`, `AT_TRIM_HORIZON`, `FROM_TRIM_HORIZON`, `AFTER_SHARD_ID`,
/// `AT_TIMESTAMP`, `FROM_TIMESTAMP`) select the shards they name.
pub async fn shard_filters_select_shards(k: &dyn Target) {
    let stream = unique("filter");
    k.create_stream(&stream, 2)
        .await
        .expect("create the stream");
    let created = SystemTime::now();
    let initial = k.open_shards(&stream).await;
    let first = initial[0].clone();
    k.split_shard(
        &stream,
        &first.shard_id,
        first.hash_key_range.start + (first.hash_key_range.end - first.hash_key_range.start) / 2,
    )
    .await
    .expect("reshard");
    let backend = k.backend();
    let ids = |shards: Vec<kcl_core::backend::Shard>| {
        let mut v: Vec<String> = shards.into_iter().map(|s| s.shard_id).collect();
        v.sort();
        v
    };
    let all = ids(list_all_shards(backend.as_ref(), &stream, None)
        .await
        .unwrap());
    assert_eq!(all.len(), 4);
    let from_trim = ids(list_all_shards(
        backend.as_ref(),
        &stream,
        Some(ShardFilter::FromTrimHorizon),
    )
    .await
    .unwrap());
    assert_eq!(from_trim, all);
    let latest = ids(
        list_all_shards(backend.as_ref(), &stream, Some(ShardFilter::AtLatest))
            .await
            .unwrap(),
    );
    assert_eq!(latest.len(), 3);
    assert!(!latest.contains(&first.shard_id));
    let at_trim = ids(
        list_all_shards(backend.as_ref(), &stream, Some(ShardFilter::AtTrimHorizon))
            .await
            .unwrap(),
    );
    if k.is_model() {
        // The API reference: the shards open at the trim horizon.
        assert_eq!(at_trim, ids(initial.clone()));
    } else {
        // kinesis-local lists every retained shard for AT_TRIM_HORIZON (listed in the model's
        // docs as a known difference of the emulator): at least the initial shards.
        assert!(
            ids(initial.clone()).iter().all(|id| at_trim.contains(id)),
            "{at_trim:?}"
        );
    }
    let after = ids(list_all_shards(
        backend.as_ref(),
        &stream,
        Some(ShardFilter::AfterShardId(first.shard_id.clone())),
    )
    .await
    .unwrap());
    assert_eq!(after, all[1..].to_vec());
    // A time from before the split: the shards open then (the trim-horizon shards).
    let at_created = ids(list_all_shards(
        backend.as_ref(),
        &stream,
        Some(ShardFilter::AtTimestamp(created - Duration::from_secs(60))),
    )
    .await
    .unwrap());
    if k.is_model() {
        assert_eq!(at_created, ids(initial));
    } else {
        // kinesis-local also lists shards created after the time (a known emulator difference).
        assert!(
            ids(initial).iter().all(|id| at_created.contains(id)),
            "{at_created:?}"
        );
    }
    let from_created = ids(list_all_shards(
        backend.as_ref(),
        &stream,
        Some(ShardFilter::FromTimestamp(
            created - Duration::from_secs(60),
        )),
    )
    .await
    .unwrap());
    assert_eq!(from_created, all);
}

/// Splits and merges report their lineage (parents) and, at the end of a parent, its children.
pub async fn split_and_merge_report_lineage_and_child_shards(k: &dyn Target) {
    let (stream, parent) = one_shard_stream(k, "lineage").await;
    k.produce(&stream, 4, 10, 0).await;
    k.split_shard(&stream, &parent, 1u128 << 127)
        .await
        .expect("reshard");
    let children = k.open_shards(&stream).await;
    assert_eq!(children.len(), 2);
    for child in &children {
        assert_eq!(child.parent_shard_id.as_deref(), Some(parent.as_str()));
        assert_eq!(child.adjacent_parent_shard_id, None);
    }
    let listed = list_all_shards(k.backend().as_ref(), &stream, None)
        .await
        .unwrap();
    let closed = listed.iter().find(|s| s.shard_id == parent).unwrap();
    assert!(
        closed.ending_sequence_number.is_some(),
        "the parent is closed"
    );

    // Reading the parent to its end answers the children and no next iterator.
    let backend = k.backend();
    let mut it = backend
        .get_shard_iterator(&stream, &parent, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let mut records = 0;
    let child_shards = loop {
        let page = unthrottled(|| backend.get_records(&it, 3)).await.unwrap();
        records += page.records.len();
        match page.next_shard_iterator {
            Some(next) => it = next,
            None => break page.child_shards,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records, 10);
    let mut ids: Vec<&str> = child_shards.iter().map(|c| c.shard_id.as_str()).collect();
    ids.sort();
    let mut want: Vec<&str> = children.iter().map(|c| c.shard_id.as_str()).collect();
    want.sort();
    assert_eq!(ids, want);
    for c in &child_shards {
        assert_eq!(c.parent_shards, vec![parent.clone()]);
    }

    // Merge the two children back.
    k.merge_shards(&stream, &children[0].shard_id, &children[1].shard_id)
        .await
        .expect("reshard");
    let merged = k.open_shards(&stream).await;
    assert_eq!(merged.len(), 1);
    let merged = &merged[0];
    let mut parents: Vec<&str> = merged.parents().collect();
    parents.sort();
    assert_eq!(parents, want);
    for child in &children {
        let end = read(
            k,
            &stream,
            &child.shard_id,
            StartingPosition::TrimHorizon,
            usize::MAX,
        )
        .await;
        assert!(end.is_empty());
        let it = backend
            .get_shard_iterator(&stream, &child.shard_id, StartingPosition::TrimHorizon)
            .await
            .unwrap();
        let page = unthrottled(|| backend.get_records(&it, 100)).await.unwrap();
        assert!(page.next_shard_iterator.is_none());
        assert_eq!(page.child_shards.len(), 1);
        assert_eq!(page.child_shards[0].shard_id, merged.shard_id);
        let mut ps = page.child_shards[0].parent_shards.clone();
        ps.sort();
        assert_eq!(ps, want);
    }
}

async fn active_consumer(k: &dyn Target, stream: &str, name: &str) -> StreamConsumer {
    let backend = k.backend();
    let registered = fan_out(&backend)
        .register_stream_consumer(stream, name)
        .await
        .unwrap();
    assert_eq!(registered.name, name);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = fan_out(&backend)
            .describe_stream_consumer(stream, name)
            .await
            .unwrap();
        assert_eq!(c.arn, registered.arn);
        if c.status == ConsumerStatus::Active {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "consumer not ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Collects events until `want` records arrived or `until` says stop.
async fn collect(
    sub: &mut kcl_core::backend::Subscription,
    want: usize,
) -> (Vec<Record>, Vec<SubscribeToShardEvent>) {
    let mut records = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while records.len() < want {
        let next = tokio::time::timeout_at(deadline, sub.next())
            .await
            .unwrap_or_else(|_| panic!("got {} of {want} records", records.len()));
        let Some(event) = next else { break };
        let event = event.unwrap();
        records.extend(event.records.iter().cloned());
        let end = event.continuation_sequence_number.is_none();
        events.push(event);
        if end {
            break;
        }
    }
    (records, events)
}

/// A subscription pushes records and continuation sequence numbers.
pub async fn fan_out_pushes_records_and_continuations(k: &dyn Target) {
    let (stream, shard) = one_shard_stream(k, "push").await;
    let consumer = active_consumer(k, &stream, "pusher").await;
    k.produce(&stream, 3, 10, 0).await;
    let mut sub = fan_out(&k.backend())
        .subscribe_to_shard(&consumer.arn, &shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let (mut records, events) = collect(&mut sub, 10).await;
    // Pushed as they arrive: produced after subscribing.
    k.produce(&stream, 3, 10, 10).await;
    let (more, more_events) = collect(&mut sub, 10).await;
    records.extend(more);
    assert_eq!(records.len(), 20);
    let expected: Vec<String> = (0..20)
        .map(|i| format!("key-{}:{:08}", i % 3, i / 3))
        .collect();
    assert_eq!(payloads(&records), expected);
    // Every event with records continues after its last record.
    for event in events.iter().chain(&more_events) {
        if let Some(last) = event.records.last() {
            assert_eq!(
                event.continuation_sequence_number.as_ref(),
                Some(last.sequence_number())
            );
        }
        assert!(event.continuation_sequence_number.is_some());
        assert!(event.child_shards.is_empty());
    }
}

/// Subscribing again after the continuation resumes exactly there.
pub async fn fan_out_resubscribes_from_the_continuation(k: &dyn Target) {
    let (stream, shard) = one_shard_stream(k, "resub").await;
    let consumer = active_consumer(k, &stream, "resub").await;
    k.produce(&stream, 2, 6, 0).await;
    let backend = k.backend();
    let mut sub = fan_out(&backend)
        .subscribe_to_shard(&consumer.arn, &shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let (first, events) = collect(&mut sub, 6).await;
    let continuation = events
        .last()
        .unwrap()
        .continuation_sequence_number
        .clone()
        .unwrap();
    drop(sub);
    k.produce(&stream, 2, 4, 6).await;
    // The service may still hold the dropped subscription for a moment: retry ResourceInUse,
    // which comes either as the answer or as the stream's first event.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sub = loop {
        let attempt = fan_out(&backend)
            .subscribe_to_shard(
                &consumer.arn,
                &shard,
                StartingPosition::AfterSequenceNumber(continuation.clone()),
            )
            .await;
        let refused = match attempt {
            Ok(mut sub) => match sub.next().await {
                Some(Err(e)) => e,
                Some(Ok(event)) => {
                    let first = futures::stream::iter([Ok(event)]);
                    break first.chain(sub).boxed();
                }
                None => panic!("subscription ended at once"),
            },
            Err(e) => e,
        };
        match refused {
            BackendError::ResourceInUse(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            e => panic!("resubscribe failed: {e}"),
        }
    };
    let (second, _) = collect(&mut sub, 4).await;
    let mut all = payloads(&first);
    all.extend(payloads(&second));
    let expected: Vec<String> = (0..10)
        .map(|i| format!("key-{}:{:08}", i % 2, i / 2))
        .collect();
    assert_eq!(all, expected, "nothing skipped, nothing repeated");
}

/// A second subscription for the same consumer and shard is refused with `ResourceInUse`.
pub async fn fan_out_allows_one_subscription_per_consumer_and_shard(k: &dyn Target) {
    let (stream, shard) = one_shard_stream(k, "inuse").await;
    let consumer = active_consumer(k, &stream, "only").await;
    let backend = k.backend();
    let mut first = fan_out(&backend)
        .subscribe_to_shard(&consumer.arn, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    // The server may answer the second subscribe with an error or with a stream whose first
    // event is the error.
    let second = fan_out(&backend)
        .subscribe_to_shard(&consumer.arn, &shard, StartingPosition::Latest)
        .await;
    let refused = match second {
        Err(e) => e,
        Ok(mut sub) => match tokio::time::timeout(WAIT, sub.next()).await.unwrap() {
            Some(Err(e)) => e,
            other => panic!("second subscription was not refused: {other:?}"),
        },
    };
    assert!(
        matches!(refused, BackendError::ResourceInUse(_)),
        "{refused:?}"
    );
    // The first one is unaffected.
    k.produce(&stream, 1, 1, 0).await;
    let (records, _) = collect(&mut first, 1).await;
    assert_eq!(payloads(&records), vec!["key-0:00000000".to_owned()]);
    // Another consumer has its own subscription.
    let other = active_consumer(k, &stream, "other").await;
    let mut sub = fan_out(&backend)
        .subscribe_to_shard(&other.arn, &shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let (records, _) = collect(&mut sub, 1).await;
    assert_eq!(records.len(), 1);
}

/// A subscription to a closed shard ends with no continuation and the children.
pub async fn fan_out_ends_a_closed_shard_with_its_children(k: &dyn Target) {
    let (stream, parent) = one_shard_stream(k, "fanend").await;
    let consumer = active_consumer(k, &stream, "ender").await;
    k.produce(&stream, 4, 8, 0).await;
    k.split_shard(&stream, &parent, 1u128 << 127)
        .await
        .expect("reshard");
    let mut sub = fan_out(&k.backend())
        .subscribe_to_shard(&consumer.arn, &parent, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    if !k.is_model() {
        // kinesis-local pushes the records but never ends a subscription to a closed shard (its
        // continuation is never null; listed in the model's docs). Fan-out retrieval detects the
        // end with a GetRecords probe once the subscription is idle.
        let (records, _) = collect(&mut sub, 8).await;
        assert_eq!(records.len(), 8);
        return;
    }
    let (records, events) = collect(&mut sub, usize::MAX).await;
    assert_eq!(records.len(), 8);
    let last = events.last().unwrap();
    assert_eq!(
        last.continuation_sequence_number, None,
        "null continuation at shard end"
    );
    let mut children: Vec<String> = last
        .child_shards
        .iter()
        .map(|c| c.shard_id.clone())
        .collect();
    children.sort();
    let mut open: Vec<String> = k
        .open_shards(&stream)
        .await
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    open.sort();
    assert_eq!(children, open);
    let after = tokio::time::timeout(WAIT, sub.next()).await.unwrap();
    assert!(
        after.is_none(),
        "the subscription ends after the last event"
    );
}

/// A missing consumer is not found; a consumer registers once (a second registration is
/// `ResourceInUse`), and describing it finds the same ARN.
pub async fn consumers_register_once(k: &dyn Target) {
    let (stream, _) = one_shard_stream(k, "register").await;
    let backend = k.backend();
    let missing = fan_out(&backend)
        .describe_stream_consumer(&stream, "nobody")
        .await;
    assert!(
        matches!(missing, Err(BackendError::ResourceNotFound(_))),
        "{missing:?}"
    );
    let c = active_consumer(k, &stream, "app").await;
    let again = fan_out(&backend)
        .register_stream_consumer(&stream, "app")
        .await;
    assert!(
        matches!(again, Err(BackendError::ResourceInUse(_))),
        "{again:?}"
    );
    let described = fan_out(&backend)
        .describe_stream_consumer(&stream, "app")
        .await
        .unwrap();
    assert_eq!(described.arn, c.arn);
}
