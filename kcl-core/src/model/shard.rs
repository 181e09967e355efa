//! One shard: its records (indexed by absolute position), lineage, limits and retention trimming.
//!
//! Records live in a `VecDeque` in arrival order; trimming pops from the front and counts the
//! trimmed records, so a position (`trimmed + index`) stays valid for the life of the shard and a
//! read is a slice of the deque: O(records returned). Sequence numbers and arrival times both
//! increase along the deque, so seeks are binary searches.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::limits::{ReadLimiter, WriteLimiter};
use crate::backend::Shard;
use crate::record::{HashKeyRange, Record, SequenceNumber};

/// A stored record with what the model needs to know about it.
#[derive(Debug, Clone)]
pub(crate) struct StoredRecord {
    /// The record as returned to readers (data shared, never copied).
    pub(crate) record: Record,
    /// When it arrived, on tokio's clock.
    pub(crate) arrival: Instant,
    /// Its size for limits: data plus partition key.
    pub(crate) size: u64,
}

/// The state of one shard.
#[derive(Debug)]
pub(crate) struct ShardState {
    /// `shardId-000000000000` style id.
    pub(crate) id: String,
    /// Hash keys routed to it.
    pub(crate) range: HashKeyRange,
    /// Parent of a split, or first parent of a merge (shard index).
    pub(crate) parent: Option<usize>,
    /// Second parent of a merge (shard index).
    pub(crate) adjacent_parent: Option<usize>,
    /// Children, once closed by a split or merge (shard indexes).
    pub(crate) children: Vec<usize>,
    /// First sequence number (below every record of the shard).
    pub(crate) starting_sequence: SequenceNumber,
    /// Last sequence number, once closed (above every record of the shard).
    pub(crate) ending_sequence: Option<SequenceNumber>,
    /// When it was created.
    pub(crate) created_at: Instant,
    /// When it was closed.
    pub(crate) closed_at: Option<Instant>,
    /// Per-shard write limits.
    pub(crate) write: WriteLimiter,
    /// Per-shard read limits, shared by every reader.
    pub(crate) read: ReadLimiter,
    records: VecDeque<StoredRecord>,
    trimmed: u64,
}

/// The shard id for a shard index.
pub(crate) fn shard_id(index: usize) -> String {
    format!("shardId-{index:012}")
}

/// The shard index for a shard id, if it is well formed.
pub(crate) fn shard_index(id: &str) -> Option<usize> {
    let digits = id.strip_prefix("shardId-")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl ShardState {
    /// A new open shard.
    pub(crate) fn new(
        index: usize,
        range: HashKeyRange,
        starting_sequence: SequenceNumber,
        now: Instant,
        write: WriteLimiter,
        read: ReadLimiter,
    ) -> Self {
        Self {
            id: shard_id(index),
            range,
            parent: None,
            adjacent_parent: None,
            children: Vec::new(),
            starting_sequence,
            ending_sequence: None,
            created_at: now,
            closed_at: None,
            write,
            read,
            records: VecDeque::new(),
            trimmed: 0,
        }
    }

    /// Whether the shard still takes writes.
    pub(crate) fn is_open(&self) -> bool {
        self.closed_at.is_none()
    }

    /// Whether the shard is closed and all its records are past retention: it is gone, as in
    /// Kinesis (not listed, not readable).
    pub(crate) fn is_expired(&self, now: Instant, retention: Duration) -> bool {
        self.closed_at
            .is_some_and(|closed| now.saturating_duration_since(closed) >= retention)
    }

    /// Drops the records older than `retention`.
    pub(crate) fn trim(&mut self, now: Instant, retention: Duration) {
        while let Some(first) = self.records.front() {
            if now.saturating_duration_since(first.arrival) >= retention {
                self.records.pop_front();
                self.trimmed += 1;
            } else {
                break;
            }
        }
    }

    /// Appends a record (the caller keeps sequence numbers and arrivals increasing).
    pub(crate) fn append(&mut self, record: StoredRecord) {
        self.records.push_back(record);
    }

    /// Position of the oldest retained record (the trim horizon).
    pub(crate) fn start(&self) -> u64 {
        self.trimmed
    }

    /// Position just after the newest record (the tip).
    pub(crate) fn end(&self) -> u64 {
        self.trimmed + self.records.len() as u64
    }

    /// Position of the first record whose sequence number is `>= seq` (or `> seq` when
    /// `after`).
    pub(crate) fn seek_sequence(&self, seq: &SequenceNumber, after: bool) -> u64 {
        let index = self.records.partition_point(|r| {
            let s = r.record.sequence_number();
            if after { s <= seq } else { s < seq }
        });
        self.trimmed + index as u64
    }

    /// Position of the first record that arrived at or after `at`.
    ///
    /// Compared as wall-clock times (the records' approximate arrival), so a time from long
    /// before the process started needs no conversion to an `Instant`.
    pub(crate) fn seek_time(&self, at: SystemTime) -> u64 {
        let index = self
            .records
            .partition_point(|r| r.record.approximate_arrival().is_some_and(|a| a < at));
        self.trimmed + index as u64
    }

    /// The record at `position`, if retained.
    pub(crate) fn record_at(&self, position: u64) -> Option<&Record> {
        let index = usize::try_from(position.checked_sub(self.trimmed)?).ok()?;
        self.records.get(index).map(|r| &r.record)
    }

    /// How far a reader at `position` is behind the tip at `now`: milliseconds since the record
    /// at `position` arrived, or 0 at the tip (and for a position no longer retained).
    pub(crate) fn millis_behind(&self, position: u64, now: Instant) -> u64 {
        let arrival = position
            .checked_sub(self.trimmed)
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|index| self.records.get(index))
            .map(|r| r.arrival);
        arrival.map_or(0, |arrival| crate::time::millis_between(arrival, now))
    }

    /// Reads from `position` (clamped to the trim horizon) at most `max_records` records and
    /// `max_bytes` bytes (at least one record when any is available). Returns the records, the
    /// position after them and their total size.
    pub(crate) fn read(
        &self,
        position: u64,
        max_records: usize,
        max_bytes: Option<u64>,
    ) -> (Vec<Record>, u64, u64) {
        let from = position.max(self.trimmed);
        let Ok(index) = usize::try_from(from - self.trimmed) else {
            return (Vec::new(), from, 0);
        };
        let available = self.records.len().saturating_sub(index);
        let mut records = Vec::with_capacity(available.min(max_records).min(1024));
        let mut bytes = 0u64;
        for stored in self.records.range(index.min(self.records.len())..) {
            if records.len() >= max_records {
                break;
            }
            if let Some(max) = max_bytes
                && !records.is_empty()
                && bytes + stored.size > max
            {
                break;
            }
            bytes += stored.size;
            records.push(stored.record.clone());
        }
        let next = from + records.len() as u64;
        (records, next, bytes)
    }

    /// The shard as `ListShards` shows it.
    pub(crate) fn describe(&self, shards: &[ShardState]) -> Shard {
        let id_of = |i: Option<usize>| i.and_then(|i| shards.get(i)).map(|s| s.id.clone());
        Shard {
            shard_id: self.id.clone(),
            parent_shard_id: id_of(self.parent),
            adjacent_parent_shard_id: id_of(self.adjacent_parent),
            hash_key_range: self.range,
            starting_sequence_number: self.starting_sequence.clone(),
            ending_sequence_number: self.ending_sequence.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_round_trip() {
        assert_eq!(shard_id(3), "shardId-000000000003");
        assert_eq!(shard_index("shardId-000000000003"), Some(3));
        assert_eq!(shard_index("shardId-3"), None);
        assert_eq!(shard_index("shardId-00000000000x"), None);
        assert_eq!(shard_index("nope"), None);
    }
}
