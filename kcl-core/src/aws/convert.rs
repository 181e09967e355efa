//! Conversions between the SDK's types and the backend's.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::types as sdk;
use aws_smithy_types::DateTime;
use bytes::Bytes;

use crate::backend::{
    BackendError, ChildShard, ConsumerStatus, Shard, ShardFilter, StartingPosition, StreamConsumer,
    StreamStatus,
};
use crate::record::{HashKeyRange, Record, SequenceNumber, parse_hash_key};

fn malformed(what: impl std::fmt::Display) -> BackendError {
    BackendError::Other(format!("malformed response: {what}").into())
}

pub(crate) fn sequence(text: &str) -> Result<SequenceNumber, BackendError> {
    SequenceNumber::new(text).map_err(|e| malformed(format!("sequence number {text:?}: {e}")))
}

pub(crate) fn system_time(at: &DateTime) -> Option<SystemTime> {
    SystemTime::try_from(*at).ok()
}

pub(crate) fn date_time(at: SystemTime) -> DateTime {
    DateTime::from(at)
}

pub(crate) fn hash_key_range(
    range: Option<&sdk::HashKeyRange>,
) -> Result<HashKeyRange, BackendError> {
    let range = range.ok_or_else(|| malformed("shard without a hash key range"))?;
    let parse =
        |text: &str| parse_hash_key(text).map_err(|e| malformed(format!("hash key {text:?}: {e}")));
    Ok(HashKeyRange {
        start: parse(&range.starting_hash_key)?,
        end: parse(&range.ending_hash_key)?,
    })
}

pub(crate) fn record(r: sdk::Record) -> Result<Record, BackendError> {
    let seq = sequence(&r.sequence_number)?;
    let arrival = r
        .approximate_arrival_timestamp
        .as_ref()
        .and_then(system_time);
    let mut record = Record::new(r.partition_key, Bytes::from(r.data.into_inner()), seq);
    if let Some(at) = arrival {
        record = record.with_approximate_arrival(at);
    }
    Ok(record)
}

pub(crate) fn records(list: Vec<sdk::Record>) -> Result<Vec<Record>, BackendError> {
    list.into_iter().map(record).collect()
}

pub(crate) fn child_shards(
    list: Option<Vec<sdk::ChildShard>>,
) -> Result<Vec<ChildShard>, BackendError> {
    list.unwrap_or_default()
        .into_iter()
        .map(|c| {
            Ok(ChildShard {
                hash_key_range: hash_key_range(c.hash_key_range.as_ref())?,
                shard_id: c.shard_id,
                parent_shards: c.parent_shards,
            })
        })
        .collect()
}

pub(crate) fn shard(s: sdk::Shard) -> Result<Shard, BackendError> {
    let range = s.sequence_number_range.ok_or_else(|| {
        malformed(format!(
            "shard {} without a sequence number range",
            s.shard_id
        ))
    })?;
    Ok(Shard {
        hash_key_range: hash_key_range(s.hash_key_range.as_ref())?,
        starting_sequence_number: sequence(&range.starting_sequence_number)?,
        ending_sequence_number: range
            .ending_sequence_number
            .as_deref()
            .map(sequence)
            .transpose()?,
        shard_id: s.shard_id,
        parent_shard_id: s.parent_shard_id,
        adjacent_parent_shard_id: s.adjacent_parent_shard_id,
    })
}

pub(crate) fn shard_filter(filter: &ShardFilter) -> Result<sdk::ShardFilter, BackendError> {
    use sdk::ShardFilterType as T;
    let builder = sdk::ShardFilter::builder();
    let builder = match filter {
        ShardFilter::AfterShardId(id) => builder.r#type(T::AfterShardId).shard_id(id),
        ShardFilter::AtTrimHorizon => builder.r#type(T::AtTrimHorizon),
        ShardFilter::FromTrimHorizon => builder.r#type(T::FromTrimHorizon),
        ShardFilter::AtLatest => builder.r#type(T::AtLatest),
        ShardFilter::AtTimestamp(at) => builder.r#type(T::AtTimestamp).timestamp(date_time(*at)),
        ShardFilter::FromTimestamp(at) => {
            builder.r#type(T::FromTimestamp).timestamp(date_time(*at))
        }
    };
    builder
        .build()
        .map_err(|e| BackendError::InvalidArgument(e.to_string().into()))
}

/// `(iterator type, sequence number, timestamp)` of a position.
pub(crate) fn position(
    position: &StartingPosition,
) -> (sdk::ShardIteratorType, Option<String>, Option<DateTime>) {
    use sdk::ShardIteratorType as T;
    match position {
        StartingPosition::TrimHorizon => (T::TrimHorizon, None, None),
        StartingPosition::Latest => (T::Latest, None, None),
        StartingPosition::AtSequenceNumber(seq) => {
            (T::AtSequenceNumber, Some(seq.as_str().to_owned()), None)
        }
        StartingPosition::AfterSequenceNumber(seq) => {
            (T::AfterSequenceNumber, Some(seq.as_str().to_owned()), None)
        }
        StartingPosition::AtTimestamp(at) => (T::AtTimestamp, None, Some(date_time(*at))),
    }
}

pub(crate) fn starting_position(
    start: &StartingPosition,
) -> Result<sdk::StartingPosition, BackendError> {
    let (kind, seq, at) = position(start);
    sdk::StartingPosition::builder()
        .r#type(kind)
        .set_sequence_number(seq)
        .set_timestamp(at)
        .build()
        .map_err(|e| BackendError::InvalidArgument(e.to_string().into()))
}

pub(crate) fn stream_status(status: &sdk::StreamStatus) -> StreamStatus {
    match status {
        sdk::StreamStatus::Creating => StreamStatus::Creating,
        sdk::StreamStatus::Deleting => StreamStatus::Deleting,
        sdk::StreamStatus::Updating => StreamStatus::Updating,
        _ => StreamStatus::Active,
    }
}

pub(crate) fn consumer_status(status: &sdk::ConsumerStatus) -> ConsumerStatus {
    match status {
        sdk::ConsumerStatus::Active => ConsumerStatus::Active,
        sdk::ConsumerStatus::Deleting => ConsumerStatus::Deleting,
        _ => ConsumerStatus::Creating,
    }
}

pub(crate) fn consumer(name: String, arn: String, status: &sdk::ConsumerStatus) -> StreamConsumer {
    StreamConsumer {
        name,
        arn,
        status: consumer_status(status),
    }
}

pub(crate) fn retention(hours: i32) -> Duration {
    Duration::from_secs(u64::try_from(hours).unwrap_or(24) * 3600)
}
