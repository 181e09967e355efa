//! One stream: its shards, routing of hash keys to open shards, resharding (split, merge,
//! uniform scaling) and the `ListShards` filters.
//!
//! Resharding is instant: the parent closes and its children open in the same call (Kinesis
//! takes seconds with the stream `UPDATING`; the model's status stays `ACTIVE`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::ModelConfig;
use super::fanout::ConsumerState;
use super::limits::{ReadLimiter, WriteLimiter};
use super::sequence::SequenceAllocator;
use super::shard::{ShardState, shard_index};
use crate::backend::{BackendError, ChildShard, ShardFilter};
use crate::record::HashKeyRange;
use crate::time;

/// The state of one stream.
#[derive(Debug)]
pub(crate) struct StreamState {
    /// Stream name.
    pub(crate) name: String,
    /// Incarnation id: a deleted and re-created stream gets a new one.
    pub(crate) id: u64,
    /// Creation time.
    pub(crate) created_at: Instant,
    /// Retention period.
    pub(crate) retention: Duration,
    /// Every shard ever created, by index (ids are `shardId-` + index).
    pub(crate) shards: Vec<ShardState>,
    /// Open shard indexes sorted by hash range start (the ranges tile the key space).
    open: Vec<usize>,
    /// Sequence numbers of the stream.
    pub(crate) sequences: SequenceAllocator,
    /// Registered enhanced fan-out consumers, by name.
    pub(crate) consumers: BTreeMap<String, ConsumerState>,
    /// Woken whenever records are appended or a shard closes (fan-out subscriptions wait on it).
    pub(crate) changed: Arc<Notify>,
}

/// Splits the key space into `count` ranges as Kinesis does: each of `floor(2^128 / count)` keys,
/// the last one taking the remainder.
pub(crate) fn uniform_ranges(count: u128) -> Vec<HashKeyRange> {
    if count <= 1 {
        return vec![HashKeyRange::FULL; usize::from(count == 1)];
    }
    let step = u128::MAX / count + u128::from(u128::MAX % count == count - 1);
    (0..count)
        .map(|i| HashKeyRange {
            start: i * step,
            end: if i + 1 == count {
                u128::MAX
            } else {
                (i + 1) * step - 1
            },
        })
        .collect()
}

impl StreamState {
    /// A new stream with `shard_count` shards splitting the key space evenly; `stamp` (creation
    /// time in milliseconds, unique per model) goes into its sequence numbers.
    pub(crate) fn new(
        name: String,
        id: u64,
        stamp: u128,
        shard_count: u32,
        now: Instant,
        config: &ModelConfig,
    ) -> Result<Self, BackendError> {
        let mut stream = Self {
            name,
            id,
            created_at: now,
            retention: config.retention,
            shards: Vec::new(),
            open: Vec::new(),
            sequences: SequenceAllocator::new(stamp),
            consumers: BTreeMap::new(),
            changed: Arc::new(Notify::new()),
        };
        for range in uniform_ranges(u128::from(shard_count)) {
            stream.add_shard(range, None, None, now, config)?;
        }
        Ok(stream)
    }

    fn add_shard(
        &mut self,
        range: HashKeyRange,
        parent: Option<usize>,
        adjacent_parent: Option<usize>,
        now: Instant,
        config: &ModelConfig,
    ) -> Result<usize, BackendError> {
        let index = self.shards.len();
        let mut shard = ShardState::new(
            index,
            range,
            self.sequences.next()?,
            now,
            WriteLimiter::new(
                config.write_bytes_per_second,
                config.write_records_per_second,
                now,
            ),
            ReadLimiter::new(
                config.read_calls_per_second,
                config.read_bytes_per_second,
                now,
            ),
        );
        shard.parent = parent;
        shard.adjacent_parent = adjacent_parent;
        self.shards.push(shard);
        let at = self
            .open
            .partition_point(|&i| self.shards[i].range.start < range.start);
        self.open.insert(at, index);
        for p in [parent, adjacent_parent].into_iter().flatten() {
            if let Some(p) = self.shards.get_mut(p) {
                p.children.push(index);
            }
        }
        Ok(index)
    }

    fn close(&mut self, index: usize, now: Instant) -> Result<(), BackendError> {
        let ending = self.sequences.next()?;
        if let Some(shard) = self.shards.get_mut(index) {
            shard.ending_sequence = Some(ending);
            shard.closed_at = Some(now);
        }
        self.open.retain(|&i| i != index);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Number of open shards.
    pub(crate) fn open_count(&self) -> usize {
        self.open.len()
    }

    /// The open shard owning `hash_key`.
    pub(crate) fn route(&self, hash_key: u128) -> Option<usize> {
        let at = self
            .open
            .partition_point(|&i| self.shards[i].range.start <= hash_key);
        let index = *self.open.get(at.checked_sub(1)?)?;
        self.shards[index].range.contains(hash_key).then_some(index)
    }

    /// The index of a shard that exists and has not expired, or `ResourceNotFound`.
    pub(crate) fn find_shard(&self, shard_id: &str, now: Instant) -> Result<usize, BackendError> {
        shard_index(shard_id)
            .filter(|&i| {
                self.shards
                    .get(i)
                    .is_some_and(|s| !s.is_expired(now, self.retention))
            })
            .ok_or_else(|| {
                BackendError::ResourceNotFound(
                    format!("shard {shard_id:?} not found in stream {:?}", self.name).into(),
                )
            })
    }

    fn find_open_shard(&self, shard_id: &str, now: Instant) -> Result<usize, BackendError> {
        let index = self.find_shard(shard_id, now)?;
        if self.shards[index].is_open() {
            Ok(index)
        } else {
            Err(BackendError::InvalidArgument(
                format!("shard {shard_id:?} of stream {:?} is closed", self.name).into(),
            ))
        }
    }

    fn check_open_limit(&self, extra: usize, config: &ModelConfig) -> Result<(), BackendError> {
        match config.max_open_shards {
            Some(max) if self.open.len() + extra > max as usize => {
                Err(BackendError::LimitExceeded(
                    format!(
                        "stream {:?} would have more than {max} open shards",
                        self.name
                    )
                    .into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `SplitShard`: closes `shard_id`, opens `[start, key-1]` and `[key, end]`.
    pub(crate) fn split(
        &mut self,
        shard_id: &str,
        new_starting_hash_key: u128,
        now: Instant,
        config: &ModelConfig,
    ) -> Result<(usize, usize), BackendError> {
        let index = self.find_open_shard(shard_id, now)?;
        let range = self.shards[index].range;
        if new_starting_hash_key <= range.start || new_starting_hash_key > range.end {
            return Err(BackendError::InvalidArgument(format!(
                "new starting hash key {new_starting_hash_key} is not inside shard {shard_id:?}'s \
                 range {}..={} (it must be above the starting hash key)",
                range.start, range.end
            ).into()));
        }
        self.check_open_limit(1, config)?;
        self.close(index, now)?;
        let low = HashKeyRange {
            start: range.start,
            end: new_starting_hash_key - 1,
        };
        let high = HashKeyRange {
            start: new_starting_hash_key,
            end: range.end,
        };
        let a = self.add_shard(low, Some(index), None, now, config)?;
        let b = self.add_shard(high, Some(index), None, now, config)?;
        Ok((a, b))
    }

    /// `MergeShards`: closes two adjacent open shards and opens one covering both.
    pub(crate) fn merge(
        &mut self,
        shard_id: &str,
        adjacent_id: &str,
        now: Instant,
        config: &ModelConfig,
    ) -> Result<usize, BackendError> {
        let a = self.find_open_shard(shard_id, now)?;
        let b = self.find_open_shard(adjacent_id, now)?;
        let (ra, rb) = (self.shards[a].range, self.shards[b].range);
        let adjacent =
            ra.end.checked_add(1) == Some(rb.start) || rb.end.checked_add(1) == Some(ra.start);
        if a == b || !adjacent {
            return Err(BackendError::InvalidArgument(
                format!(
                    "shards {shard_id:?} ({}..={}) and {adjacent_id:?} ({}..={}) are not adjacent",
                    ra.start, ra.end, rb.start, rb.end
                )
                .into(),
            ));
        }
        self.close(a, now)?;
        self.close(b, now)?;
        let range = HashKeyRange {
            start: ra.start.min(rb.start),
            end: ra.end.max(rb.end),
        };
        self.add_shard(range, Some(a), Some(b), now, config)
    }

    /// `UpdateShardCount` with `UNIFORM_SCALING`, done as Kinesis does it: a series of splits and
    /// merges (so every new shard has proper lineage; intermediate shards appear closed).
    ///
    /// First every open shard is split at each boundary of the target's uniform ranges falling
    /// inside it; then the shards inside each target range are merged left to right.
    pub(crate) fn update_shard_count(
        &mut self,
        target: u32,
        now: Instant,
        config: &ModelConfig,
    ) -> Result<(), BackendError> {
        if target == 0 {
            return Err(BackendError::InvalidArgument(
                "target shard count must be at least 1".into(),
            ));
        }
        let current = self.open.len() as u64;
        let target_u = u64::from(target);
        if config.limit_scaling && (target_u > current * 2 || target_u * 2 < current) {
            return Err(BackendError::LimitExceeded(
                format!(
                    "target shard count {target} is not between half and double the {current} open \
                 shards of stream {:?}",
                    self.name
                )
                .into(),
            ));
        }
        if let Some(max) = config.max_open_shards
            && target > max
        {
            return Err(BackendError::LimitExceeded(
                format!("target shard count {target} is above the limit of {max} open shards")
                    .into(),
            ));
        }
        let targets = uniform_ranges(u128::from(target));
        // Splits: at every target boundary strictly inside an open shard.
        for boundary in targets.iter().skip(1).map(|r| r.start) {
            if let Some(index) = self.route(boundary)
                && self.shards[index].range.start != boundary
            {
                let id = self.shards[index].id.clone();
                self.split_unchecked(&id, boundary, now, config)?;
            }
        }
        // Merges: every target range now holds whole shards; fold them left to right.
        for range in targets {
            loop {
                let inside: Vec<usize> = self
                    .open
                    .iter()
                    .copied()
                    .filter(|&i| {
                        range.start <= self.shards[i].range.start
                            && self.shards[i].range.end <= range.end
                    })
                    .take(2)
                    .collect();
                let [a, b] = inside.as_slice() else { break };
                let (a, b) = (self.shards[*a].id.clone(), self.shards[*b].id.clone());
                self.merge(&a, &b, now, config)?;
            }
        }
        Ok(())
    }

    fn split_unchecked(
        &mut self,
        shard_id: &str,
        key: u128,
        now: Instant,
        config: &ModelConfig,
    ) -> Result<(), BackendError> {
        // Intermediate splits of a scaling may briefly exceed the open-shard cap.
        let relaxed = ModelConfig {
            max_open_shards: None,
            ..config.clone()
        };
        self.split(shard_id, key, now, &relaxed).map(|_| ())
    }

    /// The trim horizon as a time: `now - retention`, but not before the stream existed.
    pub(crate) fn trim_horizon_time(&self, now: Instant) -> Instant {
        match now.checked_sub(self.retention) {
            Some(t) if t > self.created_at => t,
            _ => self.created_at,
        }
    }

    /// The indexes of the shards `ListShards` returns for `filter`, in id order, excluding expired
    /// shards.
    ///
    /// * no filter, `FromTrimHorizon`: every shard still within retention.
    /// * `AfterShardId(id)`: those whose id sorts after `id`.
    /// * `AtTrimHorizon`: those open at the trim horizon (`now - retention`, or creation).
    /// * `AtLatest`: the open shards.
    /// * `AtTimestamp(t)`: created at or before `t` and open at `t` (closed at or after `t`); a
    ///   `t` before the trim horizon is read as the trim horizon (documented for `FROM_TIMESTAMP`
    ///   only; the model does it for both so a timestamp older than the stream still lists the
    ///   initial shards).
    /// * `FromTimestamp(t)`: open shards plus closed shards closed at or after `t` (corrected up
    ///   to the trim horizon).
    pub(crate) fn list(&self, filter: Option<&ShardFilter>, now: Instant) -> Vec<usize> {
        // Compared as wall-clock times: a filter time from long before the process started
        // needs no conversion to an `Instant`.
        let horizon = time::to_system(self.trim_horizon_time(now));
        let created = |s: &ShardState| time::to_system(s.created_at);
        let closed = |s: &ShardState| s.closed_at.map(time::to_system);
        let open_at = |s: &ShardState, t: SystemTime| {
            created(s) <= t && closed(s).is_none_or(|closed| closed >= t)
        };
        let corrected = |t: &SystemTime| (*t).max(horizon);
        self.shards
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_expired(now, self.retention))
            .filter(|(_, s)| match filter {
                None | Some(ShardFilter::FromTrimHorizon) => true,
                Some(ShardFilter::AfterShardId(id)) => s.id.as_str() > id.as_str(),
                Some(ShardFilter::AtTrimHorizon) => open_at(s, horizon),
                Some(ShardFilter::AtLatest) => s.is_open(),
                Some(ShardFilter::AtTimestamp(t)) => open_at(s, corrected(t)),
                Some(ShardFilter::FromTimestamp(t)) => {
                    let t = corrected(t);
                    closed(s).is_none_or(|closed| closed >= t)
                }
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The children of a closed shard, as `GetRecords` returns them at shard end.
    pub(crate) fn child_shards(&self, index: usize) -> Vec<ChildShard> {
        let Some(shard) = self.shards.get(index) else {
            return Vec::new();
        };
        shard
            .children
            .iter()
            .filter_map(|&c| self.shards.get(c))
            .map(|child| ChildShard {
                shard_id: child.id.clone(),
                parent_shards: [child.parent, child.adjacent_parent]
                    .into_iter()
                    .flatten()
                    .filter_map(|p| self.shards.get(p).map(|p| p.id.clone()))
                    .collect(),
                hash_key_range: child.range,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_ranges_match_kinesis() {
        let two = uniform_ranges(2);
        assert_eq!(two[0].end, 170141183460469231731687303715884105727);
        assert_eq!(two[1].start, 170141183460469231731687303715884105728);
        assert_eq!(two[1].end, u128::MAX);
        let three = uniform_ranges(3);
        assert_eq!(three[1].start, 113427455640312821154458202477256070485);
        assert_eq!(uniform_ranges(1), vec![HashKeyRange::FULL]);
        for n in [1u128, 3, 7, 16, 1000] {
            let r = uniform_ranges(n);
            assert_eq!(r.first().unwrap().start, 0);
            assert_eq!(r.last().unwrap().end, u128::MAX);
            for w in r.windows(2) {
                assert_eq!(w[0].end + 1, w[1].start);
            }
        }
    }
}
