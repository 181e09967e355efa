//! Lease administration (`kcl_core::lease::admin`, what the `kcl` tool runs) on DynamoDB: a table
//! Java KCL wrote is described and reset with its attributes kept, and two resets racing
//! through the serialising moto wrapper (`scripts/servers/moto_serial.py`, which applies
//! requests one at a time so conditional writes are atomic as in DynamoDB): one wins, the other
//! is told and changes nothing.
//!
//! Needs a DynamoDB endpoint (`AWS_ENDPOINT_URL_DYNAMODB`; `scripts/test.sh` starts moto).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use common::java::{
    SEQ, java_2x_checkpointed, java_2x_finished, java_2x_new, java_3x_handoff, n, s,
};
use common::{server, unique_table};
use kcl_core::lease::admin::describe::{self, LeaseState};
use kcl_core::lease::admin::reset::{self, ApplyOptions, ResetRequest, ResetTarget};
use kcl_core::lease::admin::{AdminError, Liveness};
use kcl_core::lease::{Lease, LeaseTable};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::record::{ExtendedSequenceNumber, SequenceNumber};
use kcl_lease_dynamo::{DynamoLeaseTable, attributes};

const STREAM: &str = "orders";

async fn table(server: &common::Server, name: &str) -> DynamoLeaseTable {
    DynamoLeaseTable::builder(name)
        .request_timeout(common::TEST_REQUEST_TIMEOUT)
        .build(&server.config)
        .await
        .expect("build the lease table")
}

async fn raw(
    table: &DynamoLeaseTable,
    key: &str,
) -> std::collections::HashMap<String, AttributeValue> {
    table
        .client()
        .get_item()
        .table_name(table.table_name())
        .key(attributes::LEASE_KEY, s(key))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn a_java_written_table_is_described_and_reset_keeping_java_attributes() {
    let server = server().await;
    let name = unique_table("admin-java");
    let leases = table(&server, &name).await;
    let mut checkpointed = java_2x_checkpointed();
    checkpointed.insert("throughputKBps".into(), n("12.5"));
    for item in [
        checkpointed,
        java_2x_finished(),
        java_2x_new(),
        java_3x_handoff(),
    ] {
        leases
            .client()
            .put_item()
            .table_name(&name)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    let d = describe::describe(&leases, None, Duration::from_millis(300))
        .await
        .unwrap();
    let states: Vec<(&str, LeaseState, Option<&str>)> = d
        .leases
        .iter()
        .map(|l| (l.key.as_str(), l.state, l.owner.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("shardId-000000000000", LeaseState::Finished, None),
            (
                "shardId-000000000001",
                LeaseState::Open,
                Some("java-worker-1")
            ),
            ("shardId-000000000002", LeaseState::Open, None),
            (
                "shardId-000000000003",
                LeaseState::HandoffPending,
                Some("java-worker-2")
            ),
        ]
    );
    assert_eq!(
        d.leases[3].handing_over_from.as_deref(),
        Some("java-worker-1")
    );
    assert_eq!(d.leases[1].checkpoint.sub_sequence(), 3);
    // Java workers have no heartbeat rows: judged by their leases' counters, which stand still.
    let workers: Vec<(&str, Option<u64>, Liveness)> = d
        .workers
        .iter()
        .map(|w| (w.id.as_str(), w.heartbeat_counter, w.liveness))
        .collect();
    assert_eq!(
        workers,
        [
            ("java-worker-1", None, Liveness::Stale),
            ("java-worker-2", None, Liveness::Stale)
        ]
    );

    // The stream the table was written for: shard 0 split into 1 and 2.
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, 1).unwrap();
    let [low, high] = model
        .split_shard(
            STREAM,
            "shardId-000000000000",
            "170141183460469231731687303715884105728",
        )
        .unwrap();
    assert_eq!(
        (low.as_str(), high.as_str()),
        ("shardId-000000000001", "shardId-000000000002")
    );
    let request = ResetRequest {
        target: ResetTarget::TrimHorizon,
        shards: vec![low.clone()],
    };
    let plan = reset::plan(
        &leases,
        model.as_ref(),
        STREAM,
        request,
        Duration::from_millis(300),
        model.system_now(),
    )
    .await
    .unwrap();
    assert_eq!(plan.changes.len(), 1, "{:?}", plan.changes);
    assert!(!plan.changes[0].handoff, "its owner is stale");
    reset::apply(&leases, &plan, &ApplyOptions::default())
        .await
        .unwrap();
    let item = raw(&leases, &low).await;
    assert_eq!(item["checkpoint"], s("TRIM_HORIZON"));
    assert_eq!(item["checkpointSubSequenceNumber"], n("0"));
    assert_eq!(item["leaseOwner"], s("java-worker-1"));
    assert_eq!(item["leaseCounter"], n("43"));
    assert_eq!(
        item["throughputKBps"],
        n("12.5"),
        "attributes Kinesin does not model are kept"
    );
    assert!(item.contains_key("parentShardId"));
    // The others untouched.
    assert_eq!(
        raw(&leases, "shardId-000000000003").await["checkpoint"],
        s(SEQ)
    );

    // A shard the stream does not have.
    let request = ResetRequest {
        target: ResetTarget::TrimHorizon,
        shards: vec!["shardId-000000000003".into()],
    };
    let error = reset::plan(
        &leases,
        model.as_ref(),
        STREAM,
        request,
        Duration::from_millis(10),
        model.system_now(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, AdminError::UnknownShard { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
async fn two_resets_racing_on_dynamodb_one_wins_the_other_changes_nothing() {
    let server = server().await;
    let name = unique_table("admin-race");
    let leases: Arc<DynamoLeaseTable> = Arc::new(table(&server, &name).await);
    let model = KinesisModel::new(ModelConfig::new());
    model.create_stream(STREAM, 4).unwrap();
    for (i, shard) in model.shard_ids(STREAM).unwrap().iter().enumerate() {
        let position = ExtendedSequenceNumber::Sequence {
            sequence: SequenceNumber::from_u128(1000 + i as u128),
            sub_sequence: 0,
        };
        assert!(
            leases
                .create_if_absent(&Lease::new(shard, position))
                .await
                .unwrap()
        );
    }
    let plan_for = |target| {
        let (leases, model) = (leases.clone(), model.clone());
        async move {
            let request = ResetRequest {
                target,
                shards: vec![],
            };
            reset::plan(
                leases.as_ref(),
                model.as_ref(),
                STREAM,
                request,
                Duration::from_millis(10),
                model.system_now(),
            )
            .await
            .unwrap()
        }
    };
    for round in 0..3 {
        // Both operators read the table before either writes, then write at once.
        let horizon = plan_for(ResetTarget::TrimHorizon).await;
        let latest = plan_for(ResetTarget::Latest).await;
        let options = ApplyOptions::default();
        let (a, b) = tokio::join!(
            tokio::spawn({
                let (leases, options) = (leases.clone(), options.clone());
                async move { reset::apply(leases.as_ref(), &horizon, &options).await }
            }),
            tokio::spawn({
                let leases = leases.clone();
                async move { reset::apply(leases.as_ref(), &latest, &options).await }
            })
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let rows: Vec<Lease> = leases.list().await.unwrap();
        match (&a, &b) {
            (Ok(_), Err(AdminError::Raced { changed, .. }))
            | (Err(AdminError::Raced { changed, .. }), Ok(_)) => {
                // The loser stopped at its first lease, which the winner had written.
                assert!(changed.is_empty(), "round {round}: {a:?} {b:?}");
                let winner = if a.is_ok() {
                    ExtendedSequenceNumber::TrimHorizon
                } else {
                    ExtendedSequenceNumber::Latest
                };
                assert!(
                    rows.iter().all(|l| l.checkpoint == winner),
                    "round {round}: {rows:?}"
                );
            }
            other => panic!("round {round}: a reset lost silently or both won: {other:?}"),
        }
        // Back to real positions for the next round.
        for lease in rows {
            leases
                .update(
                    &lease.key,
                    &lease.expectation(),
                    &kcl_core::lease::LeaseUpdate::checkpoint(
                        ExtendedSequenceNumber::Sequence {
                            sequence: SequenceNumber::from_u128(5000),
                            sub_sequence: 0,
                        },
                        None,
                    ),
                )
                .await
                .unwrap();
        }
    }
}
