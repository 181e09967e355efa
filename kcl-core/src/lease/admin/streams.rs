//! Which leases of a table belong to the stream an operator names.
//!
//! A single-stream table keys each lease by its shard id; a multi-stream table (Java KCL's and
//! Kinesin's multi-stream mode) by `account:stream:creationEpoch:shardId`, with the lineage kept
//! as plain shard ids. The operator names a stream by its name, its ARN, or its serialized
//! identifier `account:stream:creationEpoch`; [`naming_for`] finds the one [`LeaseNaming`] of the
//! table that stream's leases use, and refuses a name that is ambiguous (a stream deleted and
//! created again under the same name leaves two incarnations) or absent from a multi-stream table.

use std::collections::BTreeSet;

use crate::stream::{LeaseNaming, StreamIdentifier};

use super::AdminError;
use super::watch::WorkerView;

/// The shard id of any lease key (the key itself in a single-stream table).
pub fn shard_of(key: &str) -> &str {
    LeaseNaming::of_key(key).shard_id(key).unwrap_or(key)
}

/// The key of the lease of `shard` in the same stream as the lease `key` (a parent or child:
/// the lineage holds plain shard ids).
pub fn sibling_key(key: &str, shard: &str) -> String {
    LeaseNaming::of_key(key).lease_key(shard)
}

/// Parses the stream as the operator named it (a name, an ARN or `account:stream:epoch`).
pub(crate) fn parse(stream: &str) -> Result<StreamIdentifier, AdminError> {
    StreamIdentifier::parse(stream).map_err(|source| AdminError::BadStream {
        stream: stream.to_owned(),
        source,
    })
}

/// The naming of `stream`'s leases in the table `view` was read from.
///
/// * A serialized identifier names its incarnation exactly.
/// * A name (or ARN) matches the multi-stream leases of that name; two incarnations are
///   [`AdminError::AmbiguousStream`] (name one by its identifier).
/// * Without any multi-stream lease of that name: a single-stream table keeps plain keys; a
///   table holding other streams' multi-stream leases is [`AdminError::StreamNotInTable`] (a
///   lease created with a plain key there would be another application's shape).
pub(crate) fn naming_for(
    view: &WorkerView,
    stream: &StreamIdentifier,
) -> Result<LeaseNaming, AdminError> {
    if stream.creation_epoch().is_some() {
        return stream
            .serialize()
            .map(LeaseNaming::Multi)
            .map_err(|source| AdminError::BadStream {
                stream: stream.to_string(),
                source,
            });
    }
    let mut incarnations = BTreeSet::new();
    let mut multi = false;
    for lease in view.leases() {
        if let Ok((id, _)) = StreamIdentifier::parse_lease_key(&lease.key) {
            multi = true;
            if id.name() == stream.name()
                && stream
                    .account_id()
                    .is_none_or(|a| id.account_id() == Some(a))
                && let Ok(serialized) = id.serialize()
            {
                incarnations.insert(serialized);
            }
        }
    }
    let mut found = incarnations.into_iter();
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(LeaseNaming::Multi(one)),
        (Some(first), Some(second)) => {
            let mut all = vec![first, second];
            all.extend(found);
            Err(AdminError::AmbiguousStream {
                stream: stream.name().to_owned(),
                incarnations: all,
            })
        }
        (None, _) if multi => Err(AdminError::StreamNotInTable {
            stream: stream.name().to_owned(),
        }),
        (None, _) => Ok(LeaseNaming::Single),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::Lease;
    use crate::record::ExtendedSequenceNumber;

    fn view(keys: &[&str]) -> WorkerView {
        WorkerView {
            workers: Vec::new(),
            rows: keys
                .iter()
                .map(|k| Lease::new(*k, ExtendedSequenceNumber::TrimHorizon))
                .chain([Lease::worker_heartbeat("w1")])
                .collect(),
            watched_for: Duration::ZERO,
        }
    }

    fn id(text: &str) -> StreamIdentifier {
        parse(text).unwrap()
    }

    #[test]
    fn a_name_finds_its_one_incarnation_or_is_refused() {
        let single = view(&["shardId-000000000000", "shardId-000000000001"]);
        assert_eq!(
            naming_for(&single, &id("orders")).unwrap(),
            LeaseNaming::Single
        );
        let multi = view(&[
            "123456789012:orders:10:shardId-000000000000",
            "123456789012:orders:20:shardId-000000000000",
            "123456789012:users:5:shardId-000000000000",
        ]);
        assert_eq!(
            naming_for(&multi, &id("users")).unwrap(),
            LeaseNaming::Multi("123456789012:users:5".into())
        );
        match naming_for(&multi, &id("orders")) {
            Err(AdminError::AmbiguousStream { incarnations, .. }) => assert_eq!(
                incarnations,
                ["123456789012:orders:10", "123456789012:orders:20"]
            ),
            other => panic!("expected ambiguous, got {other:?}"),
        }
        assert_eq!(
            naming_for(&multi, &id("123456789012:orders:20")).unwrap(),
            LeaseNaming::Multi("123456789012:orders:20".into())
        );
        assert!(matches!(
            naming_for(&multi, &id("payments")),
            Err(AdminError::StreamNotInTable { .. })
        ));
        assert!(matches!(
            parse("not a stream"),
            Err(AdminError::BadStream { .. })
        ));
    }

    #[test]
    fn lineage_keys_stay_in_their_stream() {
        let key = "123456789012:orders:10:shardId-000000000002";
        assert_eq!(shard_of(key), "shardId-000000000002");
        assert_eq!(
            sibling_key(key, "shardId-000000000000"),
            "123456789012:orders:10:shardId-000000000000"
        );
        assert_eq!(shard_of("shardId-000000000002"), "shardId-000000000002");
        assert_eq!(
            sibling_key("shardId-000000000002", "shardId-000000000000"),
            "shardId-000000000000"
        );
    }
}
