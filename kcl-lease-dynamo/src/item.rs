//! The mapping between a [`Lease`] and a DynamoDB item, in Java KCL's attribute names and types.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use kcl_core::lease::{Expectation, Lease, LeaseError, LeaseUpdate, PendingCheckpoint};
use kcl_core::record::{ExtendedSequenceNumber, HashKeyRange, parse_hash_key};
use kcl_core::stream::StreamIdentifier;

/// A DynamoDB item.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// The attribute names of a lease item, exactly as Java KCL 2.x/3.x writes them.
pub mod attributes {
    /// Hash key (S): the shard id, e.g. `shardId-000000000000`.
    pub const LEASE_KEY: &str = "leaseKey";
    /// (S) The worker holding the lease; absent when unassigned.
    pub const LEASE_OWNER: &str = "leaseOwner";
    /// (N) Fencing counter, incremented by every write.
    pub const LEASE_COUNTER: &str = "leaseCounter";
    /// (S) The committed checkpoint: a decimal sequence number or a sentinel name
    /// (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`).
    pub const CHECKPOINT: &str = "checkpoint";
    /// (N) The sub-sequence number of the committed checkpoint.
    pub const CHECKPOINT_SUB_SEQUENCE: &str = "checkpointSubSequenceNumber";
    /// (S) A prepared (two-phase) checkpoint; absent when none.
    pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    /// (N) The sub-sequence number of the prepared checkpoint.
    pub const PENDING_CHECKPOINT_SUB_SEQUENCE: &str = "pendingCheckpointSubSequenceNumber";
    /// (B) Application state saved with the prepared checkpoint.
    pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    /// (N) Owner changes since the last checkpoint.
    pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    /// (SS) Parent shard ids. Singular name, as Java writes it; absent when there are none.
    pub const PARENT_SHARD_IDS: &str = "parentShardId";
    /// (SS) Child shard ids; absent when there are none.
    pub const CHILD_SHARD_IDS: &str = "childShardIds";
    /// (S) First hash key of the shard, decimal.
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    /// (S) Last hash key of the shard, decimal.
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// (S) Java KCL 3.x graceful-handoff marker: the previous owner that may still checkpoint.
    pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
    /// (S) Multi-stream leases only: the serialized stream identifier
    /// `account:stream:creationEpoch`, as Java KCL writes it (the name is Java's).
    pub const STREAM_NAME: &str = "streamName";
    /// (S) Multi-stream leases only: the shard id (the lease key without its stream prefix).
    pub const SHARD_ID: &str = "shardId";
    /// (N) Kinesin heartbeat rows only (in the workers table): the leases the worker held at its
    /// last heartbeat ([`Lease::load`](kcl_core::lease::Lease::load)).
    pub const LOAD: &str = "kclRsLoad";
}

use attributes::*;

/// The key of a lease item.
pub(crate) fn key(lease_key: &str) -> Item {
    HashMap::from([(LEASE_KEY.to_owned(), s(lease_key))])
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn malformed(key: &str, attribute: &str, reason: impl Into<String>) -> LeaseError {
    LeaseError::Malformed {
        key: key.to_owned(),
        attribute: attribute.to_owned(),
        reason: reason.into(),
    }
}

/// Checks a shard id list can be stored as a DynamoDB string set (non-empty, distinct elements).
fn string_set(key: &str, attribute: &str, ids: &[String]) -> Result<AttributeValue, LeaseError> {
    let mut sorted: Vec<&String> = ids.iter().collect();
    sorted.sort();
    if sorted.iter().any(|id| id.is_empty()) {
        return Err(malformed(key, attribute, "a shard id is empty"));
    }
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(malformed(
            key,
            attribute,
            "shard ids repeat (a DynamoDB string set holds distinct values)",
        ));
    }
    Ok(AttributeValue::Ss(ids.to_vec()))
}

/// The complete item for a new lease, in Java KCL's shapes.
pub(crate) fn lease_to_item(lease: &Lease) -> Result<Item, LeaseError> {
    if lease.key.is_empty() {
        return Err(malformed("", LEASE_KEY, "the lease key is empty"));
    }
    let mut item = key(&lease.key);
    // A multi-stream lease carries its stream and shard id as attributes too, as Java writes
    // them (Java's MultiStreamLease reads them instead of splitting the key).
    if lease.heartbeat_of().is_none()
        && let Ok((stream, shard)) = StreamIdentifier::parse_lease_key(&lease.key)
        && let Ok(serialized) = stream.serialize()
    {
        item.insert(STREAM_NAME.into(), s(&serialized));
        item.insert(SHARD_ID.into(), s(shard));
    }
    item.insert(LEASE_COUNTER.into(), n(lease.counter));
    if let Some(owner) = &lease.owner {
        item.insert(LEASE_OWNER.into(), s(owner));
    }
    item.insert(
        OWNER_SWITCHES.into(),
        n(lease.owner_switches_since_checkpoint),
    );
    item.insert(CHECKPOINT.into(), s(lease.checkpoint.checkpoint_text()));
    item.insert(
        CHECKPOINT_SUB_SEQUENCE.into(),
        n(lease.checkpoint.sub_sequence()),
    );
    if let Some(pending) = &lease.pending_checkpoint {
        item.insert(
            PENDING_CHECKPOINT.into(),
            s(pending.position.checkpoint_text()),
        );
        item.insert(
            PENDING_CHECKPOINT_SUB_SEQUENCE.into(),
            n(pending.position.sub_sequence()),
        );
        if let Some(state) = &pending.state {
            item.insert(
                PENDING_CHECKPOINT_STATE.into(),
                AttributeValue::B(Blob::new(state.to_vec())),
            );
        }
    }
    if !lease.parent_shard_ids.is_empty() {
        item.insert(
            PARENT_SHARD_IDS.into(),
            string_set(&lease.key, PARENT_SHARD_IDS, &lease.parent_shard_ids)?,
        );
    }
    if !lease.child_shard_ids.is_empty() {
        item.insert(
            CHILD_SHARD_IDS.into(),
            string_set(&lease.key, CHILD_SHARD_IDS, &lease.child_shard_ids)?,
        );
    }
    if let Some(range) = &lease.hash_key_range {
        item.insert(STARTING_HASH_KEY.into(), s(&range.start.to_string()));
        item.insert(ENDING_HASH_KEY.into(), s(&range.end.to_string()));
    }
    if let Some(marker) = &lease.checkpoint_owner {
        item.insert(CHECKPOINT_OWNER.into(), s(marker));
    }
    if let Some(load) = lease.load {
        item.insert(LOAD.into(), n(load));
    }
    Ok(item)
}

/// The lease key of an item, for naming it in errors.
pub(crate) fn item_key(item: &Item) -> Option<&str> {
    match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => Some(key),
        _ => None,
    }
}

struct Reader<'a> {
    key: &'a str,
    item: &'a Item,
}

fn type_name(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::S(_) => "S",
        AttributeValue::N(_) => "N",
        AttributeValue::B(_) => "B",
        AttributeValue::Ss(_) => "SS",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        _ => "an unknown type",
    }
}

impl Reader<'_> {
    fn wrong_type(&self, attribute: &str, expected: &str, found: &AttributeValue) -> LeaseError {
        malformed(
            self.key,
            attribute,
            format!("expected type {expected}, found {}", type_name(found)),
        )
    }

    fn string(&self, attribute: &str) -> Result<Option<&str>, LeaseError> {
        match self.item.get(attribute) {
            None => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(other) => Err(self.wrong_type(attribute, "S", other)),
        }
    }

    fn required_string(&self, attribute: &str) -> Result<&str, LeaseError> {
        self.string(attribute)?
            .ok_or_else(|| malformed(self.key, attribute, "missing"))
    }

    /// A non-negative integer. `saturate` reads values above `u64::MAX` as `u64::MAX`.
    fn number(&self, attribute: &str, saturate: bool) -> Result<Option<u64>, LeaseError> {
        match self.item.get(attribute) {
            None => Ok(None),
            Some(AttributeValue::N(text)) => match text.parse::<u64>() {
                Ok(value) => Ok(Some(value)),
                Err(_)
                    if saturate && !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    Ok(Some(u64::MAX))
                }
                Err(_) => Err(malformed(
                    self.key,
                    attribute,
                    format!("{text:?} is not an integer between 0 and 2^64-1"),
                )),
            },
            Some(other) => Err(self.wrong_type(attribute, "N", other)),
        }
    }

    fn string_set(&self, attribute: &str) -> Result<Vec<String>, LeaseError> {
        match self.item.get(attribute) {
            None => Ok(Vec::new()),
            Some(AttributeValue::Ss(ids)) => {
                let mut ids = ids.clone();
                // A set has no order; return it sorted so reads are deterministic.
                ids.sort();
                Ok(ids)
            }
            Some(other) => Err(self.wrong_type(attribute, "SS", other)),
        }
    }

    fn position(
        &self,
        attribute: &str,
        text: &str,
        sub_attribute: &str,
    ) -> Result<ExtendedSequenceNumber, LeaseError> {
        let sub_sequence = self.number(sub_attribute, false)?.unwrap_or(0);
        ExtendedSequenceNumber::from_parts(text, sub_sequence)
            .map_err(|e| malformed(self.key, attribute, e.to_string()))
    }

    fn hash_key(&self, attribute: &str, text: &str) -> Result<u128, LeaseError> {
        parse_hash_key(text).map_err(|e| malformed(self.key, attribute, e.to_string()))
    }
}

/// Decodes an item written by this crate or by Java KCL. Attributes this crate does not know are
/// ignored (and left alone by every write).
pub(crate) fn item_to_lease(item: &Item) -> Result<Lease, LeaseError> {
    let key = match item.get(LEASE_KEY) {
        Some(AttributeValue::S(key)) => key.as_str(),
        Some(other) => {
            return Err(malformed(
                "<unknown>",
                LEASE_KEY,
                format!("expected type S, found {}", type_name(other)),
            ));
        }
        None => return Err(malformed("<unknown>", LEASE_KEY, "missing")),
    };
    let r = Reader { key, item };
    // Multi-stream items: the stream and shard attributes must agree with the key.
    if let Some(stream) = r.string(STREAM_NAME)? {
        let expected = format!("{stream}:{}", r.string(SHARD_ID)?.unwrap_or_default());
        if expected != key {
            return Err(malformed(
                key,
                STREAM_NAME,
                format!("{STREAM_NAME} and {SHARD_ID} make {expected:?}, not the lease key"),
            ));
        }
    }

    let counter = r
        .number(LEASE_COUNTER, false)?
        .ok_or_else(|| malformed(key, LEASE_COUNTER, "missing"))?;
    let checkpoint_text = r.required_string(CHECKPOINT)?;
    let checkpoint = r.position(CHECKPOINT, checkpoint_text, CHECKPOINT_SUB_SEQUENCE)?;

    // Java treats an empty pendingCheckpoint string as "none".
    let pending_checkpoint = match r.string(PENDING_CHECKPOINT)? {
        Some(text) if !text.is_empty() => {
            let position = r.position(PENDING_CHECKPOINT, text, PENDING_CHECKPOINT_SUB_SEQUENCE)?;
            let state = match item.get(PENDING_CHECKPOINT_STATE) {
                None => None,
                Some(AttributeValue::B(blob)) => Some(Bytes::copy_from_slice(blob.as_ref())),
                Some(other) => return Err(r.wrong_type(PENDING_CHECKPOINT_STATE, "B", other)),
            };
            Some(PendingCheckpoint { position, state })
        }
        _ => None,
    };

    let hash_key_range = match (r.string(STARTING_HASH_KEY)?, r.string(ENDING_HASH_KEY)?) {
        (Some(start), Some(end)) => Some(HashKeyRange {
            start: r.hash_key(STARTING_HASH_KEY, start)?,
            end: r.hash_key(ENDING_HASH_KEY, end)?,
        }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(malformed(
                key,
                ENDING_HASH_KEY,
                "missing while startingHashKey is set",
            ));
        }
        (None, Some(_)) => {
            return Err(malformed(
                key,
                STARTING_HASH_KEY,
                "missing while endingHashKey is set",
            ));
        }
    };

    Ok(Lease {
        key: key.to_owned(),
        owner: r.string(LEASE_OWNER)?.map(str::to_owned),
        counter,
        checkpoint,
        pending_checkpoint,
        owner_switches_since_checkpoint: r.number(OWNER_SWITCHES, true)?.unwrap_or(0),
        parent_shard_ids: r.string_set(PARENT_SHARD_IDS)?,
        child_shard_ids: r.string_set(CHILD_SHARD_IDS)?,
        hash_key_range,
        checkpoint_owner: r.string(CHECKPOINT_OWNER)?.map(str::to_owned),
        load: r.number(LOAD, true)?,
    })
}

/// An expression with its placeholder maps.
#[derive(Debug, Default)]
pub(crate) struct Expression {
    pub(crate) names: HashMap<String, String>,
    pub(crate) values: HashMap<String, AttributeValue>,
}

impl Expression {
    fn name(&mut self, attribute: &str) -> String {
        let placeholder = format!("#{attribute}");
        self.names.insert(placeholder.clone(), attribute.to_owned());
        placeholder
    }

    fn value(&mut self, label: &str, value: AttributeValue) -> String {
        let placeholder = format!(":{label}");
        self.values.insert(placeholder.clone(), value);
        placeholder
    }

    /// `attribute_exists(leaseKey)` plus the expectation.
    pub(crate) fn condition(&mut self, expect: &Expectation) -> String {
        let key = self.name(LEASE_KEY);
        let mut parts = vec![format!("attribute_exists({key})")];
        if let Some(counter) = expect.counter {
            let name = self.name(LEASE_COUNTER);
            let value = self.value("expected_counter", n(counter));
            parts.push(format!("{name} = {value}"));
        }
        match &expect.owner {
            None => {}
            Some(None) => {
                let name = self.name(LEASE_OWNER);
                parts.push(format!("attribute_not_exists({name})"));
            }
            Some(Some(owner)) => {
                let name = self.name(LEASE_OWNER);
                let value = self.value("expected_owner", s(owner));
                parts.push(format!("{name} = {value}"));
            }
        }
        parts.join(" AND ")
    }

    /// The `SET ... REMOVE ...` expression for `update`, touching only the attributes it changes;
    /// `None` when the update changes nothing.
    pub(crate) fn update(
        &mut self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Option<String>, LeaseError> {
        let mut sets: Vec<String> = Vec::new();
        let mut removes: Vec<String> = Vec::new();

        match &update.owner {
            None => {}
            Some(Some(owner)) => {
                let name = self.name(LEASE_OWNER);
                let value = self.value("owner", s(owner));
                sets.push(format!("{name} = {value}"));
            }
            Some(None) => removes.push(self.name(LEASE_OWNER)),
        }
        if let Some(checkpoint) = &update.checkpoint {
            let name = self.name(CHECKPOINT);
            let value = self.value("checkpoint", s(checkpoint.checkpoint_text()));
            sets.push(format!("{name} = {value}"));
            let name = self.name(CHECKPOINT_SUB_SEQUENCE);
            let value = self.value("checkpoint_sub", n(checkpoint.sub_sequence()));
            sets.push(format!("{name} = {value}"));
        }
        match &update.pending_checkpoint {
            None => {}
            Some(Some(pending)) => {
                let name = self.name(PENDING_CHECKPOINT);
                let value = self.value("pending", s(pending.position.checkpoint_text()));
                sets.push(format!("{name} = {value}"));
                let name = self.name(PENDING_CHECKPOINT_SUB_SEQUENCE);
                let value = self.value("pending_sub", n(pending.position.sub_sequence()));
                sets.push(format!("{name} = {value}"));
                let name = self.name(PENDING_CHECKPOINT_STATE);
                match &pending.state {
                    Some(state) => {
                        let value = self.value(
                            "pending_state",
                            AttributeValue::B(Blob::new(state.to_vec())),
                        );
                        sets.push(format!("{name} = {value}"));
                    }
                    None => removes.push(name),
                }
            }
            Some(None) => {
                removes.push(self.name(PENDING_CHECKPOINT));
                removes.push(self.name(PENDING_CHECKPOINT_SUB_SEQUENCE));
                removes.push(self.name(PENDING_CHECKPOINT_STATE));
            }
        }
        match (update.reset_owner_switches, update.increment_owner_switches) {
            (false, false) => {}
            (true, increment) => {
                let name = self.name(OWNER_SWITCHES);
                let value = self.value("switches", n(u64::from(increment)));
                sets.push(format!("{name} = {value}"));
            }
            (false, true) => {
                let name = self.name(OWNER_SWITCHES);
                let zero = self.value("zero", n(0));
                let one = self.value("one", n(1));
                sets.push(format!("{name} = if_not_exists({name}, {zero}) + {one}"));
            }
        }
        match &update.child_shard_ids {
            None => {}
            Some(children) if children.is_empty() => removes.push(self.name(CHILD_SHARD_IDS)),
            Some(children) => {
                let set = string_set(key, CHILD_SHARD_IDS, children)?;
                let name = self.name(CHILD_SHARD_IDS);
                let value = self.value("children", set);
                sets.push(format!("{name} = {value}"));
            }
        }
        match &update.checkpoint_owner {
            None => {}
            Some(Some(marker)) => {
                let name = self.name(CHECKPOINT_OWNER);
                let value = self.value("checkpoint_owner", s(marker));
                sets.push(format!("{name} = {value}"));
            }
            Some(None) => removes.push(self.name(CHECKPOINT_OWNER)),
        }
        if let Some(load) = update.load {
            let name = self.name(LOAD);
            let value = self.value("load", n(load));
            sets.push(format!("{name} = {value}"));
        }
        if !update.keep_counter {
            let name = self.name(LEASE_COUNTER);
            match expect.counter {
                // The counter is known: write the exact next value (wrapping like `apply`).
                Some(counter) => {
                    let value = self.value("next_counter", n(counter.wrapping_add(1)));
                    sets.push(format!("{name} = {value}"));
                }
                None => {
                    let one = self.value("one", n(1));
                    sets.push(format!("{name} = {name} + {one}"));
                }
            }
        }

        if sets.is_empty() && removes.is_empty() {
            return Ok(None);
        }
        let mut expression = String::new();
        if !sets.is_empty() {
            expression.push_str("SET ");
            expression.push_str(&sets.join(", "));
        }
        if !removes.is_empty() {
            if !expression.is_empty() {
                expression.push(' ');
            }
            expression.push_str("REMOVE ");
            expression.push_str(&removes.join(", "));
        }
        Ok(Some(expression))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_lease_round_trips_through_an_item() {
        for lease in kcl_core::lease::contract::sample_leases() {
            let item = lease_to_item(&lease).expect("encode");
            assert_eq!(item_to_lease(&item).expect("decode"), lease);
        }
    }

    #[test]
    fn items_use_java_shapes() {
        let lease = kcl_core::lease::contract::sample_leases()
            .into_iter()
            .find(|l| l.parent_shard_ids.len() == 2)
            .expect("a lease with two parents");
        let item = lease_to_item(&lease).expect("encode");
        assert!(matches!(item[LEASE_COUNTER], AttributeValue::N(_)));
        assert!(matches!(item[CHECKPOINT], AttributeValue::S(ref s) if s == "SHARD_END"));
        assert!(matches!(item[CHECKPOINT_SUB_SEQUENCE], AttributeValue::N(ref n) if n == "0"));
        assert!(matches!(item[PARENT_SHARD_IDS], AttributeValue::Ss(_)));
        assert!(matches!(item[STARTING_HASH_KEY], AttributeValue::S(_)));
        assert!(!item.contains_key(LEASE_OWNER));
        assert!(!item.contains_key(PENDING_CHECKPOINT));
    }

    #[test]
    fn malformed_attributes_are_named() {
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
        let mut item = lease_to_item(&lease).expect("encode");
        item.insert(LEASE_COUNTER.into(), AttributeValue::S("7".into()));
        match item_to_lease(&item) {
            Err(LeaseError::Malformed {
                key,
                attribute,
                reason,
            }) => {
                assert_eq!(key, "shardId-000000000001");
                assert_eq!(attribute, LEASE_COUNTER);
                assert!(reason.contains("expected type N"), "{reason}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        let mut item = lease_to_item(&lease).expect("encode");
        item.insert(CHECKPOINT.into(), AttributeValue::S("0042".into()));
        assert!(matches!(
            item_to_lease(&item),
            Err(LeaseError::Malformed { attribute, .. }) if attribute == CHECKPOINT
        ));
    }

    #[test]
    fn multi_stream_leases_carry_stream_name_and_shard_id_as_java_writes_them() {
        let key = "123456789012:orders:1700000000:shardId-000000000003";
        let lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon)
            .with_parents(["shardId-000000000001"]);
        let item = lease_to_item(&lease).expect("encode");
        assert!(
            matches!(&item[STREAM_NAME], AttributeValue::S(s) if s == "123456789012:orders:1700000000")
        );
        assert!(matches!(&item[SHARD_ID], AttributeValue::S(s) if s == "shardId-000000000003"));
        // Parents stay plain shard ids, as in Java's multi-stream leases.
        assert!(
            matches!(&item[PARENT_SHARD_IDS], AttributeValue::Ss(p) if p == &["shardId-000000000001"])
        );
        assert_eq!(item_to_lease(&item).expect("decode"), lease);
        // Single-stream leases and heartbeat rows get neither attribute.
        for plain in [
            Lease::new("shardId-000000000003", ExtendedSequenceNumber::TrimHorizon),
            Lease::worker_heartbeat("123456789012:orders:1700000000:w"),
        ] {
            let item = lease_to_item(&plain).expect("encode");
            assert!(!item.contains_key(STREAM_NAME) && !item.contains_key(SHARD_ID));
        }
        // An item whose attributes disagree with its key is refused, naming the attribute.
        let mut item = lease_to_item(&lease).expect("encode");
        item.insert(
            SHARD_ID.into(),
            AttributeValue::S("shardId-000000000004".into()),
        );
        assert!(matches!(
            item_to_lease(&item),
            Err(LeaseError::Malformed { attribute, .. }) if attribute == STREAM_NAME
        ));
    }

    #[test]
    fn duplicate_shard_ids_are_refused() {
        let lease = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon)
            .with_parents(["a", "a"]);
        assert!(matches!(
            lease_to_item(&lease),
            Err(LeaseError::Malformed { attribute, .. }) if attribute == PARENT_SHARD_IDS
        ));
    }
}
