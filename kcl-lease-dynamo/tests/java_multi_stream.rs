//! A Java KCL multi-stream lease table, hand-written item by item exactly as Java KCL 2.3+/3.x
//! writes it (`leaseKey` `account:stream:creationEpoch:shardId`, `streamName`, `shardId`, plain
//! shard ids in the lineage), with checkpoints half-way through each shard, resumed by a
//! Kinesin multi-stream worker: it processes exactly the records after each checkpoint, creates
//! no lease of its own, and leaves items Java reads back (the stream attributes kept).
//!
//! Needs moto (`AWS_ENDPOINT_URL_DYNAMODB`) and kinesis-local (`AWS_ENDPOINT_URL_KINESIS`);
//! `scripts/test.sh` starts both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kcl_core::backend::{StartingPosition, StreamBackend};
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::{LeaseTable, Renewal};
use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
use kcl_core::shard_sync::InitialPosition;
use kcl_core::stream::StreamIdentifier;
use kcl_core::worker::{MultiStreamTracker, StreamConfig, Worker};
use kcl_lease_dynamo::DynamoLeaseTable;
use kcl_testkit::kinesis::{Kinesis, Target, TargetExt, unique};

/// (stream name, shard id) -> sequence numbers seen.
type Seen = Arc<Mutex<BTreeMap<(String, String), Vec<String>>>>;

struct Recording {
    key: (String, String),
    seen: Seen,
}

impl RecordProcessor for Recording {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let mut seen = self.seen.lock().unwrap();
        let entry = seen.entry(self.key.clone()).or_default();
        entry.extend(
            input
                .records
                .iter()
                .map(|r| r.sequence_number().as_str().to_owned()),
        );
        Ok(())
    }
}

/// Every record of `shard`, in order: its sequence numbers.
async fn read_shard(backend: &dyn StreamBackend, stream: &str, shard: &str) -> Vec<String> {
    let mut iterator = backend
        .get_shard_iterator(stream, shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let mut out = Vec::new();
    loop {
        let page = backend.get_records(&iterator, 1000).await.unwrap();
        let empty = page.records.is_empty();
        out.extend(
            page.records
                .iter()
                .map(|r| r.sequence_number().as_str().to_owned()),
        );
        match page.next_shard_iterator {
            Some(next) if !empty => iterator = next,
            _ => return out,
        }
    }
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto and kinesis-local: run scripts/test.sh"]
async fn a_java_multi_stream_table_resumes_exactly_after_its_checkpoints() {
    let server = common::server().await;
    let kinesis = Kinesis::server().await;
    let backend = kinesis.backend();
    let streams = [(unique("java-ms-a"), 2), (unique("java-ms-b"), 1)];
    for (name, shards) in &streams {
        kinesis.create_stream(name, *shards).await.unwrap();
        kinesis.produce(name, 20, 120, 0).await;
    }

    // The table as Java left it: per shard, a checkpoint at the middle record.
    let name = common::unique_table("java-multi");
    let table = DynamoLeaseTable::builder(name.as_str())
        .application("java-multi-app")
        .request_timeout(common::TEST_REQUEST_TIMEOUT)
        .build(&server.config)
        .await
        .unwrap();
    let mut expected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut serialized = Vec::new();
    let mut java_keys = BTreeSet::new();
    for (stream, _) in &streams {
        let description = backend.describe_stream(stream).await.unwrap();
        let id = StreamIdentifier::from_name(stream.as_str())
            .unwrap()
            .resolve(&description)
            .unwrap()
            .serialize()
            .unwrap();
        let shards = kinesis.open_shards(stream).await;
        for (i, shard) in shards.iter().enumerate() {
            let records = read_shard(backend.as_ref(), stream, &shard.shard_id).await;
            assert!(
                records.len() > 4,
                "{stream}/{}: {records:?}",
                shard.shard_id
            );
            let half = records.len() / 2;
            let key = format!("{id}:{}", shard.shard_id);
            java_keys.insert(key.clone());
            let mut item = HashMap::from([
                ("leaseKey".to_owned(), s(&key)),
                ("leaseCounter".to_owned(), n(17 + i as u64)),
                ("checkpoint".to_owned(), s(&records[half - 1])),
                ("checkpointSubSequenceNumber".to_owned(), n(0)),
                ("ownerSwitchesSinceCheckpoint".to_owned(), n(0)),
                ("streamName".to_owned(), s(&id)),
                ("shardId".to_owned(), s(&shard.shard_id)),
                (
                    "startingHashKey".to_owned(),
                    s(&shard.hash_key_range.start.to_string()),
                ),
                (
                    "endingHashKey".to_owned(),
                    s(&shard.hash_key_range.end.to_string()),
                ),
            ]);
            // One lease still in a (dead) Java worker's name, the others released.
            if i == 0 {
                item.insert("leaseOwner".to_owned(), s("java-worker-1"));
            }
            table
                .client()
                .put_item()
                .table_name(&name)
                .set_item(Some(item))
                .send()
                .await
                .unwrap();
            expected.insert(
                (stream.clone(), shard.shard_id.clone()),
                records[half..].to_vec(),
            );
        }
        serialized.push(id);
    }

    // A Kinesin worker given Java's serialized identifiers.
    let seen: Seen = Arc::default();
    let factory = {
        let seen = seen.clone();
        move |shard: &ShardInfo| Recording {
            key: (shard.stream.clone(), shard.shard_id.clone()),
            seen: seen.clone(),
        }
    };
    let tracker =
        MultiStreamTracker::new(serialized.iter().map(|id| StreamConfig::parse(id).unwrap()));
    let table: Arc<dyn LeaseTable> = Arc::new(table);
    // Java is gone, but its lease counters are what tells its leases expired.
    let mut lease_config = kcl_core::lease::LeaseConfig::with_failover(Duration::from_secs(2));
    lease_config.renewal = Renewal::PerLease;
    let worker = Worker::builder(factory)
        .multi_stream(tracker)
        .worker_id("kinesin-1")
        .backend(backend.clone())
        .lease_table(table.clone())
        .lease_config(lease_config)
        .initial_position(InitialPosition::TrimHorizon)
        .build()
        .unwrap();
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let done = {
            let seen = seen.lock().unwrap();
            expected
                .iter()
                .all(|(k, want)| seen.get(k).is_some_and(|got| got.len() >= want.len()))
        };
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every record after the checkpoints arrived: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("graceful shutdown")
        .unwrap()
        .unwrap();

    // Exactly the records after each checkpoint: none before, none twice, none missing.
    assert_eq!(*seen.lock().unwrap(), expected);
    // No lease of our own, and each item still as Java reads it, checkpointed at the end.
    let leases = table.list().await.unwrap();
    let keys: BTreeSet<String> = leases
        .iter()
        .filter(|l| l.heartbeat_of().is_none())
        .map(|l| l.key.clone())
        .collect();
    assert_eq!(keys, java_keys);
    let client = aws_sdk_dynamodb::Client::new(&server.config);
    for ((stream, shard), records) in &expected {
        let id = serialized
            .iter()
            .find(|id| id.split(':').nth(1) == Some(stream.as_str()))
            .unwrap();
        let item = client
            .get_item()
            .table_name(&name)
            .key("leaseKey", s(&format!("{id}:{shard}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap();
        assert_eq!(item["streamName"], s(id));
        assert_eq!(item["shardId"], s(shard));
        assert_eq!(item["checkpoint"], s(records.last().unwrap()));
        assert!(!item.contains_key("leaseOwner"), "released at shutdown");
    }
}
