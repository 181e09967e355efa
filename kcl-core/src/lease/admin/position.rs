//! What the stream says about positions: the checkpoint that replays everything from a point in
//! time, and how far a checkpoint is behind the tip of its shard.

use std::time::{Duration, SystemTime};

use crate::backend::{ShardIterator, StartingPosition, StreamBackend};
use crate::record::{ExtendedSequenceNumber, SequenceNumber};

use super::{AdminError, stream_error};

/// Records read per `GetRecords` call.
const PAGE: u32 = 1000;
/// Empty pages tolerated before a shard is taken to have nothing more (Kinesis may answer an
/// empty page before the data of a busy shard).
const EMPTY_PAGES: usize = 5;
/// Records counted at most per shard for "records behind".
pub(crate) const LAG_LIMIT: u64 = 10_000;
/// The sub-sequence number a reset writes to cover a whole (possibly aggregated) record. Within
/// the signed 64-bit range every store and Java KCL can hold.
pub(crate) const WHOLE_RECORD: u64 = i64::MAX as u64;

/// How far a checkpoint is behind the tip of its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lag {
    /// Kinesis records after the checkpoint (an aggregate counts once), counted up to
    /// 10,000.
    pub records_behind: u64,
    /// More records than `records_behind` are waiting (the count stopped at its limit).
    pub capped: bool,
    /// The stream's `MillisBehindLatest` for a reader at the checkpoint.
    pub millis_behind_latest: Option<u64>,
}

/// Reads forward from `position`, calling `each` with every record's sequence number until it
/// returns `false`, the tip is reached, or `max` records were seen. Returns the last
/// `MillisBehindLatest` and whether `each` stopped the walk.
async fn walk(
    backend: &dyn StreamBackend,
    stream: &str,
    shard: &str,
    position: StartingPosition,
    max: u64,
    mut each: impl FnMut(&SequenceNumber) -> bool,
) -> Result<(Option<u64>, bool, u64), AdminError> {
    let mut iterator: Option<ShardIterator> = Some(
        backend
            .get_shard_iterator(stream, shard, position)
            .await
            .map_err(stream_error(stream))?,
    );
    let (mut seen, mut empty, mut millis) = (0u64, 0usize, None);
    while let Some(it) = iterator.take() {
        let out = backend
            .get_records(&it, PAGE)
            .await
            .map_err(stream_error(stream))?;
        millis = out.millis_behind_latest.or(millis);
        if out.records.is_empty() {
            empty += 1;
            if empty >= EMPTY_PAGES || out.millis_behind_latest == Some(0) {
                break;
            }
        } else {
            empty = 0;
        }
        for record in &out.records {
            if !each(record.sequence_number()) {
                return Ok((millis, true, seen));
            }
            seen += 1;
            if seen >= max {
                return Ok((millis, false, seen));
            }
        }
        iterator = out.next_shard_iterator;
    }
    Ok((millis, false, seen))
}

/// The first record of `shard` that arrived at or after `at`, if any.
async fn first_at(
    backend: &dyn StreamBackend,
    stream: &str,
    shard: &str,
    position: StartingPosition,
) -> Result<Option<SequenceNumber>, AdminError> {
    let mut first = None;
    walk(backend, stream, shard, position, 1, |seq| {
        first = Some(seq.clone());
        false
    })
    .await?;
    Ok(first)
}

/// The checkpoint after which the first record delivered is the first one of `shard` that
/// arrived at or after `at`: the last record before it, or `TRIM_HORIZON` when no retained
/// record is older.
///
/// Kinesis iterators only go forward, so the record before is found by reading from
/// `at - 1 s`, `at - 2 s`, `at - 4 s`, ... until a window holds one: the reads stay within twice
/// the data of the last such window.
pub(crate) async fn checkpoint_before(
    backend: &dyn StreamBackend,
    stream: &str,
    shard: &str,
    at: SystemTime,
) -> Result<ExtendedSequenceNumber, AdminError> {
    let target = first_at(backend, stream, shard, StartingPosition::AtTimestamp(at)).await?;
    let oldest = first_at(backend, stream, shard, StartingPosition::TrimHorizon).await?;
    let older_exists = match (&oldest, &target) {
        (None, _) => false,
        (Some(oldest), Some(target)) => oldest < target,
        (Some(_), None) => true,
    };
    if !older_exists {
        return Ok(ExtendedSequenceNumber::TrimHorizon);
    }
    let mut back = Duration::from_secs(1);
    loop {
        let from = at.checked_sub(back);
        let position = match from {
            Some(from) => StartingPosition::AtTimestamp(from),
            None => StartingPosition::TrimHorizon,
        };
        let mut before: Option<SequenceNumber> = None;
        walk(backend, stream, shard, position, u64::MAX, |seq| {
            if target.as_ref().is_some_and(|t| seq >= t) {
                return false;
            }
            before = Some(seq.clone());
            true
        })
        .await?;
        if let Some(sequence) = before {
            return Ok(ExtendedSequenceNumber::Sequence {
                sequence,
                sub_sequence: WHOLE_RECORD,
            });
        }
        if from.is_none() || back > Duration::from_secs(400 * 24 * 3600) {
            // Nothing before the target after all (trimmed meanwhile).
            return Ok(ExtendedSequenceNumber::TrimHorizon);
        }
        back *= 2;
    }
}

/// Checks that `sequence` is the sequence number of a record of `shard`: the stream accepts an
/// iterator at it and the first record there carries it.
pub(crate) async fn check_sequence(
    backend: &dyn StreamBackend,
    stream: &str,
    shard: &str,
    sequence: &SequenceNumber,
) -> Result<(), AdminError> {
    let bad = |reason: String| AdminError::BadSequence {
        sequence: sequence.clone(),
        shard: shard.to_owned(),
        reason,
    };
    let first = first_at(
        backend,
        stream,
        shard,
        StartingPosition::AtSequenceNumber(sequence.clone()),
    )
    .await
    .map_err(|e| match e {
        AdminError::Stream { source, .. } => bad(source.to_string()),
        other => other,
    })?;
    match first {
        Some(found) if found == *sequence => Ok(()),
        Some(found) => Err(bad(format!(
            "no record of the shard has it (the next one is {found})"
        ))),
        None => Err(bad("no record of the shard has it".to_owned())),
    }
}

/// How far `checkpoint` is behind the tip of `shard`; `None` when the checkpoint says nothing
/// about a position (`AT_TIMESTAMP` without the workers' timestamp).
pub(crate) async fn lag(
    backend: &dyn StreamBackend,
    stream: &str,
    shard: &str,
    checkpoint: &ExtendedSequenceNumber,
) -> Result<Option<Lag>, AdminError> {
    let (position, after) = match checkpoint {
        ExtendedSequenceNumber::ShardEnd | ExtendedSequenceNumber::Latest => {
            return Ok(Some(Lag {
                records_behind: 0,
                capped: false,
                millis_behind_latest: Some(0),
            }));
        }
        ExtendedSequenceNumber::AtTimestamp => return Ok(None),
        ExtendedSequenceNumber::TrimHorizon => (StartingPosition::TrimHorizon, None),
        ExtendedSequenceNumber::Sequence { sequence, .. } => (
            StartingPosition::AtSequenceNumber(sequence.clone()),
            Some(sequence.clone()),
        ),
    };
    let mut behind = 0u64;
    let (millis, _, _) = walk(backend, stream, shard, position, LAG_LIMIT + 1, |seq| {
        if after.as_ref().is_none_or(|a| seq > a) {
            behind += 1;
        }
        true
    })
    .await?;
    Ok(Some(Lag {
        records_behind: behind.min(LAG_LIMIT),
        capped: behind > LAG_LIMIT,
        millis_behind_latest: millis,
    }))
}
