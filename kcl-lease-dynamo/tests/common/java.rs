//! Lease items exactly as Java KCL writes them, for the tests that read Java-written tables.
#![allow(dead_code)]

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;

pub fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

pub fn n(text: &str) -> AttributeValue {
    AttributeValue::N(text.to_owned())
}

pub fn ss(items: &[&str]) -> AttributeValue {
    AttributeValue::Ss(items.iter().map(|s| (*s).to_owned()).collect())
}

pub const SEQ: &str = "49590338271490256608559692538361571095921575989136588898";
pub const SEQ_LATER: &str = "49590338271490256608559692538361571095921575989136599999";

/// A lease exactly as Java KCL 2.x writes it after a worker checkpointed (DynamoDBLeaseSerializer:
/// leaseCounter/ownerSwitchesSinceCheckpoint/checkpointSubSequenceNumber as N, parentShardId SS,
/// hash keys as decimal S).
pub fn java_2x_checkpointed() -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("leaseKey".into(), s("shardId-000000000001")),
        ("leaseOwner".into(), s("java-worker-1")),
        ("leaseCounter".into(), n("42")),
        ("ownerSwitchesSinceCheckpoint".into(), n("0")),
        ("checkpoint".into(), s(SEQ)),
        ("checkpointSubSequenceNumber".into(), n("3")),
        ("parentShardId".into(), ss(&["shardId-000000000000"])),
        ("startingHashKey".into(), s("0")),
        (
            "endingHashKey".into(),
            s("170141183460469231731687303715884105727"),
        ),
    ])
}

/// A finished parent, unowned, with its children (Java writes childShardIds at shard end).
pub fn java_2x_finished() -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("leaseKey".into(), s("shardId-000000000000")),
        ("leaseCounter".into(), n("1234")),
        ("ownerSwitchesSinceCheckpoint".into(), n("0")),
        ("checkpoint".into(), s("SHARD_END")),
        ("checkpointSubSequenceNumber".into(), n("0")),
        (
            "childShardIds".into(),
            ss(&["shardId-000000000002", "shardId-000000000001"]),
        ),
        ("startingHashKey".into(), s("0")),
        (
            "endingHashKey".into(),
            s("340282366920938463463374607431768211455"),
        ),
    ])
}

/// A new lease as Java creates it: TRIM_HORIZON, no owner.
pub fn java_2x_new() -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("leaseKey".into(), s("shardId-000000000002")),
        ("leaseCounter".into(), n("0")),
        ("ownerSwitchesSinceCheckpoint".into(), n("0")),
        ("checkpoint".into(), s("TRIM_HORIZON")),
        ("checkpointSubSequenceNumber".into(), n("0")),
        ("parentShardId".into(), ss(&["shardId-000000000000"])),
        (
            "startingHashKey".into(),
            s("170141183460469231731687303715884105728"),
        ),
        (
            "endingHashKey".into(),
            s("340282366920938463463374607431768211455"),
        ),
    ])
}

/// A lease as Java KCL 3.x leaves it mid-handoff, with a prepared checkpoint and the attributes
/// 3.x adds that this crate does not model (throughputKBps) plus one no version writes today.
pub fn java_3x_handoff() -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("leaseKey".into(), s("shardId-000000000003")),
        ("leaseOwner".into(), s("java-worker-2")),
        ("checkpointOwner".into(), s("java-worker-1")),
        ("leaseCounter".into(), n("7")),
        ("ownerSwitchesSinceCheckpoint".into(), n("1")),
        ("checkpoint".into(), s(SEQ)),
        ("checkpointSubSequenceNumber".into(), n("0")),
        ("pendingCheckpoint".into(), s(SEQ_LATER)),
        ("pendingCheckpointSubSequenceNumber".into(), n("2")),
        (
            "pendingCheckpointState".into(),
            AttributeValue::B(Blob::new(b"app\0state".to_vec())),
        ),
        ("startingHashKey".into(), s("0")),
        ("endingHashKey".into(), s("99")),
        ("throughputKBps".into(), n("123.456")),
        (
            "someFutureAttribute".into(),
            AttributeValue::M(HashMap::from([("nested".into(), s("kept"))])),
        ),
    ])
}
