//! `DynamoLeaseTable` against a real DynamoDB API server: the LeaseTable contract suite, Java KCL
//! items, table creation and validation, malformed items, and lost replies.
//!
//! Every test here needs a server and is `#[ignore]`d by default; see `common/mod.rs` for how the
//! server is found. Each test uses its own table, so they run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod fault_proxy;

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use bytes::Bytes;
use common::java::{
    SEQ, SEQ_LATER, java_2x_checkpointed, java_2x_finished, java_2x_new, java_3x_handoff, n, s, ss,
};
use common::{fresh_table, server, unique_table};
use fault_proxy::{Fault, FaultProxy, endpoint_addr};
use kcl_core::lease::{
    Expectation, Lease, LeaseError, LeaseTable, LeaseTableExt, LeaseUpdate, PendingCheckpoint,
};
use kcl_core::record::{ExtendedSequenceNumber, HashKeyRange, SequenceNumber};
use kcl_lease_dynamo::{Billing, DynamoLeaseTable, attributes};
use tokio::net::TcpListener;

// ------------------------------------------------------------------------------------------------
// The contract suite, one ignored test per case (they need a DynamoDB endpoint).

mod contract {
    kcl_core::lease_table_contract_tests!(
        super::fresh_table,
        #[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
    );
}

// ------------------------------------------------------------------------------------------------
// Helpers

fn position(text: &str, sub: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::Sequence {
        sequence: SequenceNumber::new(text).unwrap(),
        sub_sequence: sub,
    }
}

async fn put_raw(client: &Client, table: &str, item: HashMap<String, AttributeValue>) {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("raw PutItem");
}

async fn get_raw(client: &Client, table: &str, key: &str) -> HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key(attributes::LEASE_KEY, s(key))
        .consistent_read(true)
        .send()
        .await
        .expect("raw GetItem")
        .item
        .expect("item exists")
}

#[track_caller]
fn expect_misconfigured<T: std::fmt::Debug>(result: Result<T, LeaseError>, needles: &[&str]) {
    match result {
        Err(LeaseError::Misconfigured(message)) => {
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "{message:?} does not mention {needle:?}"
                );
            }
        }
        other => panic!("expected Misconfigured mentioning {needles:?}, got {other:?}"),
    }
}

async fn table_on(server: &common::Server, name: &str) -> DynamoLeaseTable {
    DynamoLeaseTable::builder(name)
        .request_timeout(common::TEST_REQUEST_TIMEOUT)
        .build(&server.config)
        .await
        .expect("build the lease table")
}

// ------------------------------------------------------------------------------------------------
// Java KCL items (the fixtures are in common/java.rs, shared with the admin tests)

const JAVA_ONLY: [&str; 2] = ["throughputKBps", "someFutureAttribute"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn java_items_are_read_as_java_wrote_them() {
    let server = server().await;
    let name = unique_table("java-read");
    let table = table_on(&server, &name).await;
    for item in [
        java_2x_checkpointed(),
        java_2x_finished(),
        java_2x_new(),
        java_3x_handoff(),
    ] {
        put_raw(table.client(), &name, item).await;
    }

    let mut checkpointed = Lease::new("shardId-000000000001", position(SEQ, 3))
        .with_parents(["shardId-000000000000"])
        .with_hash_key_range(HashKeyRange {
            start: 0,
            end: 170_141_183_460_469_231_731_687_303_715_884_105_727,
        });
    checkpointed.owner = Some("java-worker-1".into());
    checkpointed.counter = 42;

    let mut finished = Lease::new("shardId-000000000000", ExtendedSequenceNumber::ShardEnd)
        .with_hash_key_range(HashKeyRange::FULL);
    finished.counter = 1234;
    finished.child_shard_ids = vec!["shardId-000000000001".into(), "shardId-000000000002".into()];

    let fresh = Lease::new("shardId-000000000002", ExtendedSequenceNumber::TrimHorizon)
        .with_parents(["shardId-000000000000"])
        .with_hash_key_range(HashKeyRange {
            start: 170_141_183_460_469_231_731_687_303_715_884_105_728,
            end: u128::MAX,
        });

    let mut handoff = Lease::new("shardId-000000000003", position(SEQ, 0))
        .with_hash_key_range(HashKeyRange { start: 0, end: 99 });
    handoff.owner = Some("java-worker-2".into());
    handoff.checkpoint_owner = Some("java-worker-1".into());
    handoff.counter = 7;
    handoff.owner_switches_since_checkpoint = 1;
    handoff.pending_checkpoint = Some(PendingCheckpoint {
        position: position(SEQ_LATER, 2),
        state: Some(Bytes::from_static(b"app\0state")),
    });

    let expected = vec![finished, checkpointed, fresh, handoff];
    for lease in &expected {
        assert_eq!(table.get(&lease.key).await.unwrap().as_ref(), Some(lease));
    }
    let mut listed = table.list().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
}

/// A team switching from Java: our worker takes a Java 3.x lease over, renews, checkpoints and
/// releases it; every attribute Java wrote that we do not model is still there, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn taking_over_a_java_3x_lease_preserves_its_other_attributes() {
    let server = server().await;
    let name = unique_table("java-3x");
    let table = table_on(&server, &name).await;
    let original = java_3x_handoff();
    put_raw(table.client(), &name, original.clone()).await;
    let key = "shardId-000000000003";

    let assert_java_attributes_kept = |item: &HashMap<String, AttributeValue>, step: &str| {
        for attribute in JAVA_ONLY {
            assert_eq!(
                item.get(attribute),
                original.get(attribute),
                "{attribute} changed by {step}"
            );
        }
    };

    let java = table.get(key).await.unwrap().unwrap();
    assert_eq!(java.checkpoint, position(SEQ, 0), "the Java checkpoint");
    let taken = table.take(&java, "rust-worker").await.unwrap();
    assert_eq!(taken.counter, 8);
    assert_eq!(taken.owner.as_deref(), Some("rust-worker"));
    assert_eq!(
        taken.checkpoint_owner, None,
        "take clears the handoff marker"
    );
    assert_eq!(taken.owner_switches_since_checkpoint, 2);
    assert_eq!(
        taken.checkpoint,
        position(SEQ, 0),
        "resumes at the Java checkpoint"
    );
    let raw = get_raw(table.client(), &name, key).await;
    assert_java_attributes_kept(&raw, "take");
    assert!(!raw.contains_key("checkpointOwner"));

    let renewed = table.renew(&taken).await.unwrap();
    assert_java_attributes_kept(&get_raw(table.client(), &name, key).await, "renew");

    let checkpointed = table
        .checkpoint(&renewed, position(SEQ_LATER, 5))
        .await
        .unwrap();
    assert_eq!(checkpointed.pending_checkpoint, None);
    let raw = get_raw(table.client(), &name, key).await;
    assert_java_attributes_kept(&raw, "checkpoint");
    assert_eq!(raw["checkpoint"], s(SEQ_LATER));
    assert_eq!(raw["checkpointSubSequenceNumber"], n("5"));
    assert_eq!(raw["ownerSwitchesSinceCheckpoint"], n("0"));
    for gone in [
        "pendingCheckpoint",
        "pendingCheckpointSubSequenceNumber",
        "pendingCheckpointState",
    ] {
        assert!(
            !raw.contains_key(gone),
            "{gone} not cleared by the checkpoint"
        );
    }

    let released = table.release(&checkpointed).await.unwrap();
    assert_eq!(released.owner, None);
    let raw = get_raw(table.client(), &name, key).await;
    assert_java_attributes_kept(&raw, "release");
    assert!(!raw.contains_key("leaseOwner"));
    assert_eq!(raw["leaseCounter"], n("11"));
    assert_eq!(table.get(key).await.unwrap().unwrap(), released);
}

/// Items this crate writes have exactly Java's attribute names and types, so a Java worker can
/// read a table a Rust application wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn written_items_have_java_names_and_types() {
    let server = server().await;
    let name = unique_table("java-shape");
    let table = table_on(&server, &name).await;
    let mut lease = Lease::new("shardId-000000000005", position(SEQ, 4))
        .with_parents(["shardId-000000000001", "shardId-000000000002"])
        .with_hash_key_range(HashKeyRange { start: 10, end: 20 });
    lease.owner = Some("rust-worker".into());
    lease.counter = 5;
    lease.child_shard_ids = vec!["shardId-000000000009".into()];
    lease.checkpoint_owner = Some("previous".into());
    lease.pending_checkpoint = Some(PendingCheckpoint {
        position: ExtendedSequenceNumber::ShardEnd,
        state: Some(Bytes::from_static(b"\x01\x02")),
    });
    assert!(table.create_if_absent(&lease).await.unwrap());
    let raw = get_raw(table.client(), &name, &lease.key).await;
    let expected = HashMap::from([
        ("leaseKey", s("shardId-000000000005")),
        ("leaseOwner", s("rust-worker")),
        ("leaseCounter", n("5")),
        ("ownerSwitchesSinceCheckpoint", n("0")),
        ("checkpoint", s(SEQ)),
        ("checkpointSubSequenceNumber", n("4")),
        ("pendingCheckpoint", s("SHARD_END")),
        ("pendingCheckpointSubSequenceNumber", n("0")),
        (
            "pendingCheckpointState",
            AttributeValue::B(Blob::new(vec![1, 2])),
        ),
        (
            "parentShardId",
            ss(&["shardId-000000000001", "shardId-000000000002"]),
        ),
        ("childShardIds", ss(&["shardId-000000000009"])),
        ("startingHashKey", s("10")),
        ("endingHashKey", s("20")),
        ("checkpointOwner", s("previous")),
    ]);
    let mut names: Vec<&str> = raw.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut expected_names: Vec<&str> = expected.keys().copied().collect();
    expected_names.sort_unstable();
    assert_eq!(names, expected_names);
    for (attribute, value) in expected {
        let stored = &raw[attribute];
        match (stored, &value) {
            (AttributeValue::Ss(a), AttributeValue::Ss(b)) => {
                let (mut a, mut b) = (a.clone(), b.clone());
                a.sort();
                b.sort();
                assert_eq!(a, b, "{attribute}");
            }
            _ => assert_eq!(stored, &value, "{attribute}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The table itself

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_missing_table_is_created_on_demand_with_the_java_key_schema() {
    let server = server().await;
    let name = unique_table("create");
    let table = table_on(&server, &name).await;
    let described = table
        .client()
        .describe_table()
        .table_name(&name)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let keys: Vec<(String, KeyType)> = described
        .key_schema()
        .iter()
        .map(|k| (k.attribute_name().to_owned(), k.key_type().clone()))
        .collect();
    assert_eq!(keys, vec![("leaseKey".to_owned(), KeyType::Hash)]);
    let billing = described
        .billing_mode_summary()
        .and_then(|b| b.billing_mode().cloned());
    assert_eq!(billing, Some(BillingMode::PayPerRequest));
    // Building again on the existing table works and sees the same (empty) table.
    let again = table_on(&server, &name).await;
    assert_eq!(again.list().await.unwrap(), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn provisioned_billing_deletion_protection_and_point_in_time_recovery() {
    let server = server().await;
    let name = unique_table("provisioned");
    let table = DynamoLeaseTable::builder(&name)
        .billing(Billing::Provisioned {
            read_capacity_units: 7,
            write_capacity_units: 3,
        })
        .deletion_protection(true)
        .point_in_time_recovery(true)
        .build(&server.config)
        .await
        .unwrap();
    let described = table
        .client()
        .describe_table()
        .table_name(&name)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let throughput = described.provisioned_throughput().unwrap();
    assert_eq!(throughput.read_capacity_units(), Some(7));
    assert_eq!(throughput.write_capacity_units(), Some(3));
    assert_eq!(described.deletion_protection_enabled(), Some(true));
    let backups = table
        .client()
        .describe_continuous_backups()
        .table_name(&name)
        .send()
        .await
        .unwrap();
    let pitr = backups
        .continuous_backups_description()
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|p| p.point_in_time_recovery_status())
        .map(|s| s.as_str().to_owned());
    assert_eq!(pitr.as_deref(), Some("ENABLED"));
    // Deletion protection is real: the table cannot be deleted.
    assert!(
        table
            .client()
            .delete_table()
            .table_name(&name)
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_missing_table_is_misconfigured_when_creation_is_off() {
    let server = server().await;
    let name = unique_table("absent");
    let result = DynamoLeaseTable::builder(&name)
        .create_if_missing(false)
        .build(&server.config)
        .await;
    expect_misconfigured(result, &[&name, "does not exist"]);
}

/// A key attribute of a raw table: name, type, role.
type KeyColumn = (&'static str, ScalarAttributeType, KeyType);

async fn create_raw_table(client: &Client, name: &str, keys: &[KeyColumn]) {
    let mut request = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest);
    for (attribute, attribute_type, key_type) in keys {
        request = request
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*attribute)
                    .attribute_type(attribute_type.clone())
                    .build()
                    .unwrap(),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*attribute)
                    .key_type(key_type.clone())
                    .build()
                    .unwrap(),
            );
    }
    request.send().await.expect("raw CreateTable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_table_with_another_key_schema_is_refused() {
    let server = server().await;
    let client = Client::new(&server.config);
    let cases: Vec<(Vec<KeyColumn>, &str)> = vec![
        (
            vec![("id", ScalarAttributeType::S, KeyType::Hash)],
            "its hash key is \"id\"",
        ),
        (
            vec![("leaseKey", ScalarAttributeType::N, KeyType::Hash)],
            "has type N",
        ),
        (
            vec![
                ("leaseKey", ScalarAttributeType::S, KeyType::Hash),
                ("checkpoint", ScalarAttributeType::S, KeyType::Range),
            ],
            "range key \"checkpoint\"",
        ),
    ];
    for (keys, problem) in cases {
        let name = unique_table("schema");
        create_raw_table(&client, &name, &keys).await;
        let result = DynamoLeaseTable::builder(&name).build(&server.config).await;
        expect_misconfigured(result, &[&name, problem, "leaseKey"]);
    }
}

#[tokio::test]
async fn an_invalid_table_name_or_missing_region_is_misconfigured() {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build();
    expect_misconfigured(
        DynamoLeaseTable::builder("no").build(&config).await,
        &["\"no\"", "not a valid DynamoDB table name"],
    );
    expect_misconfigured(
        DynamoLeaseTable::builder("has space").build(&config).await,
        &["not a valid DynamoDB table name"],
    );
    expect_misconfigured(
        DynamoLeaseTable::builder("my-application")
            .build(&config)
            .await,
        &["my-application", "region"],
    );
}

/// Credentials that never load (no environment, profile or role).
#[derive(Debug)]
struct NoCredentials;

impl aws_credential_types::provider::ProvideCredentials for NoCredentials {
    fn provide_credentials<'a>(
        &'a self,
    ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        aws_credential_types::provider::future::ProvideCredentials::ready(Err(
            aws_credential_types::provider::error::CredentialsError::not_loaded(
                "no providers in chain provided credentials",
            ),
        ))
    }
}

/// Without credentials nothing is sent: the error says so instead of looking like an outage.
#[tokio::test]
async fn missing_credentials_are_misconfigured() {
    // Nothing listens here; the request never gets that far.
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url("http://127.0.0.1:9")
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(NoCredentials),
        )
        .build();
    expect_misconfigured(
        DynamoLeaseTable::builder("my-application")
            .build(&config)
            .await,
        &["dynamodb:DescribeTable", "my-application", "credentials"],
    );
    let table = DynamoLeaseTable::builder("my-application")
        .verify_table(false)
        .build(&config)
        .await
        .unwrap();
    expect_misconfigured(
        table.get("shardId-000000000000").await,
        &["dynamodb:GetItem", "credentials"],
    );
}

// ------------------------------------------------------------------------------------------------
// Malformed items

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_malformed_item_is_named_and_does_not_hide_the_others() {
    let server = server().await;
    let name = unique_table("malformed");
    let table = table_on(&server, &name).await;
    let good = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(table.create_if_absent(&good).await.unwrap());

    let mut bad_counter = java_2x_new();
    bad_counter.insert("leaseKey".into(), s("shardId-bad-counter"));
    bad_counter.insert("leaseCounter".into(), s("seven"));
    put_raw(table.client(), &name, bad_counter).await;
    let mut bad_checkpoint = java_2x_checkpointed();
    bad_checkpoint.insert("leaseKey".into(), s("shardId-bad-checkpoint"));
    bad_checkpoint.insert("checkpoint".into(), s("not-a-position"));
    put_raw(table.client(), &name, bad_checkpoint).await;
    let mut bad_parents = java_2x_new();
    bad_parents.insert("leaseKey".into(), s("shardId-bad-parents"));
    bad_parents.insert("parentShardId".into(), s("shardId-000000000000"));
    put_raw(table.client(), &name, bad_parents).await;

    assert_eq!(table.list().await.unwrap(), vec![good.clone()]);

    let cases = [
        (
            "shardId-bad-counter",
            "leaseCounter",
            "expected type N, found S",
        ),
        ("shardId-bad-checkpoint", "checkpoint", "not-a-position"),
        (
            "shardId-bad-parents",
            "parentShardId",
            "expected type SS, found S",
        ),
    ];
    for (key, attribute, reason_part) in cases {
        match table.get(key).await {
            Err(LeaseError::Malformed {
                key: k,
                attribute: a,
                reason,
            }) => {
                assert_eq!(k, key);
                assert_eq!(a, attribute);
                assert!(reason.contains(reason_part), "{reason}");
            }
            other => panic!("get({key}): expected Malformed, got {other:?}"),
        }
    }
    // A write conditional on an expectation the malformed item cannot meet names the problem too.
    let result = table
        .update(
            "shardId-bad-checkpoint",
            &Expectation {
                counter: Some(1),
                owner: None,
            },
            &LeaseUpdate::default(),
        )
        .await;
    assert!(
        matches!(result, Err(LeaseError::Malformed { ref attribute, .. }) if attribute == "checkpoint"),
        "{result:?}"
    );
    // It can still be deleted (the condition is checked by DynamoDB), e.g. by an operator.
    table
        .delete("shardId-bad-counter", &Expectation::default())
        .await
        .unwrap();
    assert!(
        table
            .client()
            .get_item()
            .table_name(&name)
            .key("leaseKey", s("shardId-bad-counter"))
            .send()
            .await
            .unwrap()
            .item
            .is_none()
    );
    // Refused before anything is written: repeated shard ids (a DynamoDB set cannot hold them).
    let repeated = Lease::new("shardId-000000000009", ExtendedSequenceNumber::TrimHorizon)
        .with_parents(["shardId-000000000001", "shardId-000000000001"]);
    assert!(matches!(
        table.create_if_absent(&repeated).await,
        Err(LeaseError::Malformed { ref attribute, .. }) if attribute == "parentShardId"
    ));
}

// ------------------------------------------------------------------------------------------------
// Injected faults: lost replies, throttling, server errors, denied permissions

/// A table on `name` reached through `proxy` (the table already exists: no DescribeTable, so the
/// proxy's script applies to the lease requests alone).
async fn through(proxy: &FaultProxy, name: &str, max_retries: usize) -> DynamoLeaseTable {
    let config = common::sdk_config(&proxy.endpoint()).await;
    DynamoLeaseTable::builder(name)
        .verify_table(false)
        .max_retries(max_retries)
        .build(&config)
        .await
        .unwrap()
}

async fn owned_lease(server: &common::Server, prefix: &str) -> (String, DynamoLeaseTable, Lease) {
    let name = unique_table(prefix);
    let direct = table_on(server, &name).await;
    let mut lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    lease.owner = Some("worker-1".into());
    assert!(direct.create_if_absent(&lease).await.unwrap());
    (name, direct, lease)
}

/// A write whose reply is lost is `Unknown`; `write_reconciled` (used by every transition) reads
/// the lease back, recognises its own write and succeeds, with the write applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_lost_write_reply_is_unknown_and_reconciled() {
    let server = server().await;
    let (name, direct, lease) = owned_lease(&server, "lost-reply").await;
    let proxy = FaultProxy::start(
        endpoint_addr(&server.endpoint),
        vec![Fault::LoseReply, Fault::LoseReply],
    )
    .await;
    let lossy = through(&proxy, &name, 3).await;

    // 1. A bare update: the outcome is unknown, though it landed.
    let result = lossy
        .update(&lease.key, &lease.expectation(), &LeaseUpdate::default())
        .await;
    assert!(matches!(result, Err(LeaseError::Unknown(_))), "{result:?}");
    assert_eq!(proxy.applied(), 1);
    let landed = direct.get(&lease.key).await.unwrap().unwrap();
    assert_eq!(landed.counter, 1, "the write was applied");

    // 2. A checkpoint through write_reconciled: its reply is lost too, the read-back shows it.
    let checkpointed = lossy
        .checkpoint(&landed, position(SEQ, 1))
        .await
        .expect("reconciled after the lost reply");
    assert_eq!(proxy.applied(), 2);
    assert_eq!(checkpointed.counter, 2);
    assert_eq!(checkpointed.checkpoint, position(SEQ, 1));
    assert_eq!(direct.get(&lease.key).await.unwrap().unwrap(), checkpointed);

    // 3. Later requests pass: normal operation resumes.
    let renewed = lossy.renew(&checkpointed).await.unwrap();
    assert_eq!(renewed.counter, 3);
}

/// Throttled requests (both throttling codes) are retried with backoff and then succeed; the
/// throttled attempts are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn throttled_requests_are_retried() {
    let server = server().await;
    let (name, direct, lease) = owned_lease(&server, "throttled").await;
    let proxy = FaultProxy::start(
        endpoint_addr(&server.endpoint),
        vec![Fault::throttle(), Fault::throttling_exception()],
    )
    .await;
    let table = through(&proxy, &name, 3).await;
    let renewed = table.renew(&lease).await.unwrap();
    assert_eq!(renewed.counter, 1);
    assert_eq!(direct.get(&lease.key).await.unwrap().unwrap(), renewed);
    let used = table.capacity();
    assert_eq!(used.throttled_attempts, 2);
    assert_eq!(used.retries, 2);
    assert_eq!(used.update_requests, 1);

    // Reads too.
    proxy.push([Fault::throttle(), Fault::server_error()]);
    assert_eq!(table.get(&lease.key).await.unwrap().unwrap(), renewed);
    assert_eq!(table.list().await.unwrap(), vec![renewed]);
    assert_eq!(proxy.applied(), 4);
}

/// Past the retry budget, throttling surfaces as `Throttled` and nothing was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn throttling_past_the_retry_budget_is_throttled() {
    let server = server().await;
    let (name, direct, lease) = owned_lease(&server, "throttled-out").await;
    let proxy = FaultProxy::start(
        endpoint_addr(&server.endpoint),
        vec![Fault::throttle(), Fault::throttle(), Fault::throttle()],
    )
    .await;
    let table = through(&proxy, &name, 2).await;
    let result = table.renew(&lease).await;
    assert!(
        matches!(result, Err(LeaseError::Throttled(_))),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_retryable());
    assert_eq!(proxy.applied(), 3, "one attempt and two retries");
    assert_eq!(direct.get(&lease.key).await.unwrap().unwrap(), lease);
}

/// A 5xx answer to a write that was in fact applied: the retry fails its condition (the counter
/// moved), which is reported as `Unknown`, and `write_reconciled` recognises the first attempt.
/// The write is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_server_error_after_the_write_landed_is_reconciled() {
    let server = server().await;
    let (name, direct, lease) = owned_lease(&server, "applied-500").await;
    let proxy = FaultProxy::start(
        endpoint_addr(&server.endpoint),
        vec![Fault::ApplyThenFail {
            status: 500,
            error_type: "InternalServerError".into(),
        }],
    )
    .await;
    let table = through(&proxy, &name, 3).await;

    let result = table
        .update(&lease.key, &lease.expectation(), &LeaseUpdate::default())
        .await;
    assert!(matches!(result, Err(LeaseError::Unknown(_))), "{result:?}");
    let stored = direct.get(&lease.key).await.unwrap().unwrap();
    assert_eq!(stored.counter, 1, "applied once");

    proxy.push([Fault::ApplyThenFail {
        status: 500,
        error_type: "InternalServerError".into(),
    }]);
    let taken = table.take(&stored, "worker-2").await.unwrap();
    assert_eq!(taken.counter, 2);
    assert_eq!(taken.owner.as_deref(), Some("worker-2"));
    assert_eq!(direct.get(&lease.key).await.unwrap().unwrap(), taken);

    // A 5xx that was not applied is simply retried.
    proxy.push([Fault::server_error()]);
    let renewed = table.renew(&taken).await.unwrap();
    assert_eq!(renewed.counter, 3);
    assert_eq!(proxy.applied(), 3);
}

/// Asserts that the proxy applied `expected` faults since `before` (it had two queued: taking
/// both means a retry, unless the call sends two requests), drops the rest, returns the count.
fn denials_taken(
    proxy: &FaultProxy,
    before: usize,
    expected: std::ops::RangeInclusive<usize>,
) -> usize {
    let applied = proxy.applied();
    assert!(
        expected.contains(&(applied - before)),
        "{} denials taken, expected {expected:?}",
        applied - before
    );
    proxy.replace([]);
    applied
}

/// A refused permission names the DynamoDB action and the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_denied_permission_is_misconfigured_naming_the_action() {
    let server = server().await;
    let (name, _direct, lease) = owned_lease(&server, "denied").await;
    let proxy = FaultProxy::start(endpoint_addr(&server.endpoint), vec![]).await;
    let table = through(&proxy, &name, 3).await;
    // Each call meets two queued denials: a call that sends one request takes exactly one (a
    // retry would take the second); `list` scans the lease table and the workers table
    // concurrently, so it may take both (which one is refused first is a race).
    let denials = || [Fault::denied(), Fault::denied()];
    let mut seen = 0;
    proxy.replace(denials());
    expect_misconfigured(table.renew(&lease).await, &["dynamodb:UpdateItem", &name]);
    seen = denials_taken(&proxy, seen, 1..=1);
    proxy.replace(denials());
    expect_misconfigured(table.get(&lease.key).await, &["dynamodb:GetItem", &name]);
    seen = denials_taken(&proxy, seen, 1..=1);
    proxy.replace(denials());
    expect_misconfigured(table.list().await, &["dynamodb:Scan", &name]);
    seen = denials_taken(&proxy, seen, 1..=2);
    proxy.replace(denials());
    expect_misconfigured(
        table.create_if_absent(&lease).await,
        &["dynamodb:PutItem", &name],
    );
    seen = denials_taken(&proxy, seen, 1..=1);
    proxy.replace(denials());
    expect_misconfigured(
        table.delete(&lease.key, &lease.expectation()).await,
        &["dynamodb:DeleteItem", &name],
    );
    denials_taken(&proxy, seen, 1..=1);
    // moto's IAM emulation (INITIAL_NO_AUTH_ACTION_COUNT) refuses with an HTTP 403 and an XML
    // body, which the SDK cannot parse for a JSON protocol: still a denial naming the action.
    proxy.push([Fault::Raw {
        status: 403,
        content_type: "text/html; charset=utf-8".into(),
        body: "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<ErrorResponse><Errors><Error>\
               <Code>AccessDenied</Code><Message>User: arn:aws:iam::123456789012:user/w is not \
               authorized to perform: dynamodb:PutItem</Message><Type>Sender</Type></Error>\
               </Errors></ErrorResponse>"
            .into(),
    }]);
    expect_misconfigured(
        table.create_if_absent(&lease).await,
        &["dynamodb:PutItem", &name, "not authorized"],
    );
    // At build time: DescribeTable.
    proxy.push([Fault::denied()]);
    let config = common::sdk_config(&proxy.endpoint()).await;
    expect_misconfigured(
        DynamoLeaseTable::builder(&name).build(&config).await,
        &["dynamodb:DescribeTable", &name],
    );
}

/// A server that accepts connections and never answers: reads time out and surface as
/// `Unavailable`, writes as `Unknown`, each after a bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_gives_unavailable_reads_and_unknown_writes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = common::sdk_config(&format!("http://{addr}")).await;
    let table = DynamoLeaseTable::builder("kcl-silent")
        .verify_table(false)
        .request_timeout(Duration::from_millis(300))
        .max_retries(1)
        .build(&config)
        .await
        .unwrap();
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    let read = table.get(&lease.key).await;
    assert!(matches!(read, Err(LeaseError::Unavailable(_))), "{read:?}");
    let listed = table.list().await;
    assert!(
        matches!(listed, Err(LeaseError::Unavailable(_))),
        "{listed:?}"
    );
    let write = table
        .update(&lease.key, &lease.expectation(), &LeaseUpdate::default())
        .await;
    assert!(matches!(write, Err(LeaseError::Unknown(_))), "{write:?}");
    let created = table.create_if_absent(&lease).await;
    assert!(
        matches!(created, Err(LeaseError::Unknown(_))),
        "{created:?}"
    );
    // write_reconciled cannot read back either: the caller sees a retryable error.
    let renewed = table.renew(&lease).await;
    assert!(
        renewed.as_ref().is_err_and(LeaseError::is_retryable),
        "{renewed:?}"
    );
    // A table that cannot even be described: building fails with a retryable error.
    let built = DynamoLeaseTable::builder("kcl-silent")
        .request_timeout(Duration::from_millis(300))
        .max_retries(0)
        .build(&config)
        .await;
    assert!(
        matches!(built, Err(LeaseError::Unavailable(_))),
        "{built:?}"
    );
    silent.abort();
}

/// `list` follows Scan pages to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn list_reads_every_scan_page() {
    let server = server().await;
    let name = unique_table("pages");
    let table = DynamoLeaseTable::builder(&name)
        .scan_page_size(std::num::NonZeroU32::new(4).unwrap())
        .build(&server.config)
        .await
        .unwrap();
    let mut expected: Vec<Lease> = (0..25)
        .map(|i| {
            Lease::new(
                format!("shardId-{i:012}"),
                ExtendedSequenceNumber::TrimHorizon,
            )
        })
        .collect();
    for lease in &expected {
        assert!(table.create_if_absent(lease).await.unwrap());
    }
    table.reset_capacity();
    let mut listed = table.list().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
    assert!(
        table.capacity().scan_requests >= 7,
        "{:?}",
        table.capacity()
    );
}

// ------------------------------------------------------------------------------------------------
// Capacity

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn consumed_capacity_is_counted() {
    let server = server().await;
    let name = unique_table("capacity");
    let table = table_on(&server, &name).await;
    table.reset_capacity();
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(table.create_if_absent(&lease).await.unwrap());
    assert!(!table.create_if_absent(&lease).await.unwrap());
    let taken = table.take(&lease, "w").await.unwrap();
    let _ = table.get(&lease.key).await.unwrap();
    let _ = table.list().await.unwrap();
    assert!(table.renew(&lease).await.is_err(), "stale renew fails");
    table
        .delete(&taken.key, &taken.expectation())
        .await
        .unwrap();
    let used = table.capacity();
    assert_eq!(used.put_requests, 1);
    assert_eq!(used.update_requests, 1);
    assert_eq!(used.delete_requests, 1);
    assert_eq!(used.get_requests, 1);
    assert_eq!(used.scan_requests, 1);
    assert_eq!(used.conditional_check_failures, 2);
    // moto reports a fixed number of units per request kind; DynamoDB reports what it bills.
    assert!(used.write_units > 0.0, "{used:?}");
    assert!(used.read_units > 0.0, "{used:?}");
    assert_eq!(table.reset_capacity(), used);
    assert_eq!(table.capacity().write_requests(), 0);
}
