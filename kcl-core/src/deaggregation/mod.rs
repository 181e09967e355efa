//! KPL aggregated-record format: de-aggregation (consumer side) and aggregation (producer side).
//!
//! The Kinesis Producer Library packs many *user records* into one Kinesis record:
//! `[F3 89 9A C2][protobuf AggregatedRecord][MD5 of the protobuf bytes]` (see [`proto`] for the
//! schema). [`Deaggregator::deaggregate_into`] expands such a record into its user records:
//!
//! - every user record's data is a zero-copy [`bytes::Bytes`] slice of the fetched record;
//! - partition keys and explicit hash keys are one shared `Arc<str>` per table entry, made when
//!   the first user record takes it;
//! - user records get sub-sequence numbers `0, 1, 2, ...` and inherit the outer record's
//!   sequence number and approximate arrival time; tags are exposed;
//! - a record without the magic is [`Outcome::NotAggregated`] and handed on unchanged;
//! - a record with the magic that is too short, fails the MD5 check, does not decode, or
//!   references a table index that does not exist is handed on unchanged as one record
//!   ([`Outcome::PassedThrough`], logged at `warn`). Never a panic, never an error: the bytes
//!   always reach the processor.
//!
//! [`Deaggregator::deaggregate_batch_into`] (what the worker calls for each `GetRecords` batch)
//! gives the same results and verifies the digests of up to 32 aggregates at once with the
//! multi-buffer MD5 of [`multi_md5`] (AVX-512 or AVX2, detected at run time; `md-5` otherwise).
//!
//! ## Hash-range filtering after resharding (a deliberate difference from Java)
//!
//! After a shard splits or merges, a KPL aggregate written before the reshard can be read from a
//! child shard whose hash-key range no longer covers all of its user records. The Java KCL then
//! drops the **whole** aggregate as soon as **one** user record's effective hash key (the explicit
//! hash key, else the MD5 of the partition key) falls outside the shard's range: silent data loss
//! (see `potential_data_loss.md` in awslabs/kinesis-aggregation).
//!
//! Here the default ([`DeaggregationConfig::filter_by_shard_hash_range`] `= false`) delivers every
//! user record of the aggregate that was actually stored in the shard. Setting it to `true`
//! reproduces Java exactly: when any user record falls outside the range passed to
//! [`Deaggregator::deaggregate_into`], the whole aggregate is dropped, the call returns
//! [`Outcome::Dropped`] and a `warn` line is logged.
//!
//! ## Restart semantics
//!
//! A checkpoint at `(sequence, k)` means user records `0..=k` of that aggregate were processed.
//! After re-reading `AT_SEQUENCE_NUMBER`, [`skip_through`] removes every record at or before the
//! checkpoint so processing resumes at `k + 1`.
//!
//! ## Aggregation
//!
//! [`Aggregator`] produces the same format within the KPL `AggregationMaxSize` (51200 bytes by
//! default). For the same user records per aggregate its output is byte-identical to the official
//! Python library `aws-kinesis-agg` (checked in `tests/deagg_interop.rs`).
//!
//! Submodules: [`proto`] (wire format constants and `prost` messages), `wire` (the zero-copy
//! reader used by the de-aggregator), [`multi_md5`] (MD5 of several messages at once, the crate's
//! only `unsafe` code), [`aggregator`] (the producer side), `resume` (checkpoint filtering).

pub mod aggregator;
// The crate's only `unsafe` code: SIMD kernels behind run-time CPU detection.
#[allow(unsafe_code)]
pub mod multi_md5;
pub mod proto;
mod resume;
mod wire;

use std::sync::Arc;

use md5::{Digest, Md5};

use crate::record::{HashKeyRange, Record, parse_hash_key, partition_key_hash};

pub use aggregator::{
    AggregatedRecord, AggregationError, Aggregator, DEFAULT_AGGREGATION_MAX_SIZE,
};
pub use proto::{DIGEST_LEN, MAGIC};
pub use resume::skip_through;
pub use wire::DecodeError;

/// De-aggregation settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeaggregationConfig {
    /// Reproduce the Java KCL: drop a whole aggregate when any of its user records hashes outside
    /// the shard's hash-key range. Default `false`: deliver every user record (see the module
    /// documentation).
    pub filter_by_shard_hash_range: bool,
}

/// Why a record that starts with the KPL magic was handed on unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum PassThroughReason {
    /// The record has the magic but no room for a digest (at most 16 bytes follow the magic).
    #[error("too short for an aggregated record")]
    TooShort,
    /// The trailing MD5 does not match the protobuf bytes.
    #[error("MD5 digest mismatch")]
    DigestMismatch,
    /// The protobuf message could not be decoded.
    #[error("undecodable protobuf: {0}")]
    Undecodable(#[from] DecodeError),
    /// A user record references a partition-key or explicit-hash-key table entry that does not
    /// exist.
    #[error("table index out of range")]
    IndexOutOfRange,
}

impl PassThroughReason {
    /// A stable index (0 to 3) for per-reason counters.
    pub fn index(&self) -> usize {
        match self {
            Self::TooShort => 0,
            Self::DigestMismatch => 1,
            Self::Undecodable(_) => 2,
            Self::IndexOutOfRange => 3,
        }
    }
}

/// What [`Deaggregator::deaggregate_into`] did with one fetched record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// No KPL magic: the record was appended unchanged.
    NotAggregated,
    /// A valid aggregate: `records` user records were appended (0 for an aggregate that holds
    /// none).
    Aggregated {
        /// User records appended.
        records: usize,
    },
    /// The record had the KPL magic but was not a valid aggregate: appended unchanged.
    PassedThrough(PassThroughReason),
    /// A valid aggregate dropped because a user record fell outside the shard's hash-key range
    /// (only with [`DeaggregationConfig::filter_by_shard_hash_range`]).
    Dropped {
        /// User records dropped.
        records: usize,
    },
}

impl Outcome {
    /// How many records this outcome appended to the output.
    pub fn appended(&self) -> usize {
        match self {
            Self::NotAggregated | Self::PassedThrough(_) => 1,
            Self::Aggregated { records } => *records,
            Self::Dropped { .. } => 0,
        }
    }
}

/// Counters over many [`Outcome`]s (for metrics and logs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeaggregationStats {
    /// Fetched records that were not aggregated.
    pub not_aggregated: u64,
    /// Fetched records that were valid aggregates (dropped ones excluded).
    pub aggregates: u64,
    /// User records delivered out of aggregates.
    pub user_records: u64,
    /// Fetched records with the magic that were passed through unchanged.
    pub passed_through: u64,
    /// Of those, by reason, in the order of [`PassThroughReason::index`]: too short, digest
    /// mismatch, undecodable, index out of range.
    pub passed_through_by_reason: [u64; 4],
    /// Aggregates dropped by hash-range filtering.
    pub dropped_aggregates: u64,
    /// User records inside dropped aggregates.
    pub dropped_user_records: u64,
}

impl DeaggregationStats {
    /// Adds one outcome to the counters.
    pub fn add(&mut self, outcome: &Outcome) {
        match *outcome {
            Outcome::NotAggregated => self.not_aggregated += 1,
            Outcome::Aggregated { records } => {
                self.aggregates += 1;
                self.user_records += records as u64;
            }
            Outcome::PassedThrough(reason) => {
                self.passed_through += 1;
                self.passed_through_by_reason[reason.index()] += 1;
            }
            Outcome::Dropped { records } => {
                self.dropped_aggregates += 1;
                self.dropped_user_records += records as u64;
            }
        }
    }

    /// Adds another set of counters.
    pub fn merge(&mut self, other: &DeaggregationStats) {
        self.not_aggregated += other.not_aggregated;
        self.aggregates += other.aggregates;
        self.user_records += other.user_records;
        self.passed_through += other.passed_through;
        for (mine, theirs) in self
            .passed_through_by_reason
            .iter_mut()
            .zip(other.passed_through_by_reason)
        {
            *mine += theirs;
        }
        self.dropped_aggregates += other.dropped_aggregates;
        self.dropped_user_records += other.dropped_user_records;
    }
}

/// Expands KPL aggregated records into user records. Cheap to create, `Send + Sync`, stateless
/// apart from its configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Deaggregator {
    config: DeaggregationConfig,
}

impl Deaggregator {
    /// A de-aggregator with the given settings.
    pub fn new(config: DeaggregationConfig) -> Self {
        Self { config }
    }

    /// The settings.
    pub fn config(&self) -> &DeaggregationConfig {
        &self.config
    }

    /// Expands one raw record into user records appended to `out`.
    ///
    /// `shard_range` is the hash-key range of the shard the record was read from; it is only
    /// used when [`DeaggregationConfig::filter_by_shard_hash_range`] is set. On any failure the
    /// record is appended unchanged and `out` holds nothing else from this call.
    ///
    /// For many records, [`Deaggregator::deaggregate_batch_into`] gives the same result faster.
    pub fn deaggregate_into(
        &self,
        record: Record,
        shard_range: Option<&HashKeyRange>,
        out: &mut Vec<Record>,
    ) -> Outcome {
        self.deaggregate_checked(record, shard_range, out, None, &mut Scratch::default())
    }

    /// Expands a batch of raw records, in order, into `out` and returns the counters: the same
    /// records and outcomes as [`Deaggregator::deaggregate_into`] on each record in turn.
    ///
    /// Faster than that on CPUs with AVX2 or AVX-512: the records are taken in windows of four
    /// times [`multi_md5::Kernel::lanes`] (128 with AVX-512), and the MD5 digests of each
    /// window's aggregates are computed together, up to 32 of similar size at once
    /// ([`multi_md5`]), before the window is expanded in order.
    pub fn deaggregate_batch_into(
        &self,
        records: impl IntoIterator<Item = Record>,
        shard_range: Option<&HashKeyRange>,
        out: &mut Vec<Record>,
    ) -> DeaggregationStats {
        let mut stats = DeaggregationStats::default();
        let kernel = multi_md5::Kernel::detect();
        if kernel.lanes() == 1 {
            for record in records {
                stats.add(&self.deaggregate_into(record, shard_range, out));
            }
            return stats;
        }
        let window_len = 4 * kernel.lanes();
        let mut window = Window {
            records: Vec::with_capacity(window_len),
            order: Vec::with_capacity(window_len),
            digests: Vec::with_capacity(window_len),
            digest_of: Vec::with_capacity(window_len),
            scratch: Scratch::default(),
        };
        for record in records {
            // Records that are not aggregates need no digest: while no aggregate waits in the
            // window they go straight through (a stream without KPL pays nothing for windows).
            if window.records.is_empty() && !has_magic(record.data()) {
                // As `deaggregate_checked` does, without the call.
                out.push(record);
                stats.add(&Outcome::NotAggregated);
                continue;
            }
            if window.records.is_empty() && aggregate_body(record.data()).is_none() {
                stats.add(&self.deaggregate_checked(
                    record,
                    shard_range,
                    out,
                    None,
                    &mut window.scratch,
                ));
                continue;
            }
            window.records.push(record);
            if window.records.len() == window_len {
                self.flush(kernel, &mut window, shard_range, out, &mut stats);
            }
        }
        self.flush(kernel, &mut window, shard_range, out, &mut stats);
        stats
    }

    /// Expands the records of `window` in order, the digests of its aggregates computed together
    /// first.
    fn flush(
        &self,
        kernel: multi_md5::Kernel,
        window: &mut Window,
        shard_range: Option<&HashKeyRange>,
        out: &mut Vec<Record>,
        stats: &mut DeaggregationStats,
    ) {
        let Window {
            records,
            order,
            digests,
            digest_of,
            scratch,
        } = window;
        // The aggregates of the window, shortest first, so that each group of lanes holds
        // bodies of similar length.
        order.clear();
        order.extend(
            records
                .iter()
                .enumerate()
                .filter_map(|(i, r)| aggregate_body(r.data()).map(|b| (b.len(), i))),
        );
        order.sort_unstable();
        let bodies: Vec<&[u8]> = order
            .iter()
            .filter_map(|&(_, i)| records.get(i).and_then(|r| aggregate_body(r.data())))
            .collect();
        digests.clear();
        kernel.digests(&bodies, digests);
        drop(bodies);
        digest_of.clear();
        digest_of.resize(records.len(), None);
        for (&(_, i), digest) in order.iter().zip(digests.iter()) {
            if let Some(slot) = digest_of.get_mut(i) {
                *slot = Some(*digest);
            }
        }
        for (record, digest) in records.drain(..).zip(digest_of.iter()) {
            stats.add(&self.deaggregate_checked(
                record,
                shard_range,
                out,
                digest.as_ref(),
                scratch,
            ));
        }
    }

    /// [`Deaggregator::deaggregate_into`] with the body's MD5 possibly computed already
    /// (`digest`; computed here when `None`) and buffers reused across calls.
    fn deaggregate_checked(
        &self,
        record: Record,
        shard_range: Option<&HashKeyRange>,
        out: &mut Vec<Record>,
        digest: Option<&multi_md5::Md5Digest>,
        scratch: &mut Scratch,
    ) -> Outcome {
        let data = record.data.as_ref();
        if !has_magic(data) {
            out.push(record);
            return Outcome::NotAggregated;
        }
        let reason = if data.len() <= proto::FRAMING_LEN {
            PassThroughReason::TooShort
        } else {
            let body_end = data.len() - DIGEST_LEN;
            let body = &data[MAGIC.len()..body_end];
            let matches = match digest {
                Some(digest) => digest[..] == data[body_end..],
                None => Md5::digest(body).as_slice() == &data[body_end..],
            };
            if !matches {
                PassThroughReason::DigestMismatch
            } else {
                let filter = shard_range.filter(|_| self.config.filter_by_shard_hash_range);
                match expand(&record, body, filter, out, scratch) {
                    Ok(Expanded::Delivered(records)) => return Outcome::Aggregated { records },
                    Ok(Expanded::OutOfRange {
                        records,
                        sub_sequence,
                        hash_key,
                    }) => {
                        tracing::warn!(
                            sequence_number = %record.sequence_number,
                            records,
                            sub_sequence,
                            hash_key = %hash_key,
                            "dropping KPL aggregate: a user record hashes outside the shard's \
                             range (filter_by_shard_hash_range is set, as in the Java KCL)"
                        );
                        return Outcome::Dropped { records };
                    }
                    Err(reason) => reason,
                }
            }
        };
        tracing::warn!(
            sequence_number = %record.sequence_number,
            len = data.len(),
            %reason,
            "record has the KPL magic but is not a valid aggregate; delivering it unchanged"
        );
        out.push(record);
        Outcome::PassedThrough(reason)
    }

    /// Expands a batch of raw records; returns the user records and the counters (see
    /// [`Deaggregator::deaggregate_batch_into`]).
    pub fn deaggregate(
        &self,
        records: impl IntoIterator<Item = Record>,
        shard_range: Option<&HashKeyRange>,
    ) -> (Vec<Record>, DeaggregationStats) {
        let records = records.into_iter();
        let mut out = Vec::with_capacity(records.size_hint().0);
        let stats = self.deaggregate_batch_into(records, shard_range, &mut out);
        (out, stats)
    }
}

/// Whether `data` starts with the KPL magic.
#[inline(always)]
fn has_magic(data: &[u8]) -> bool {
    data.get(..MAGIC.len()) == Some(&MAGIC[..])
}

/// The protobuf body of `data` when it is framed as an aggregate whose digest can be checked
/// (magic, at least one body byte, room for the digest).
fn aggregate_body(data: &[u8]) -> Option<&[u8]> {
    if data.len() <= proto::FRAMING_LEN || data[..MAGIC.len()] != MAGIC {
        return None;
    }
    data.get(MAGIC.len()..data.len() - DIGEST_LEN)
}

enum Expanded {
    Delivered(usize),
    OutOfRange {
        records: usize,
        sub_sequence: u64,
        hash_key: u128,
    },
}

/// One user record read and checked by the first phase of [`expand`]: table indices in range
/// (`usize::MAX`: no explicit hash key), data as a byte range of the fetched record.
#[derive(Clone, Copy)]
struct Checked {
    partition_key: usize,
    explicit_hash_key: usize,
    start: usize,
    end: usize,
}

/// The records [`Deaggregator::deaggregate_batch_into`] holds until their digests are computed
/// together (the first one an aggregate), and buffers reused from one window to the next.
struct Window {
    records: Vec<Record>,
    /// (body length, index in `records`) of each aggregate, sorted.
    order: Vec<(usize, usize)>,
    /// Digests in the order of `order`.
    digests: Vec<multi_md5::Md5Digest>,
    /// Digest per record of `records` (`None` for records that are not aggregates).
    digest_of: Vec<Option<multi_md5::Md5Digest>>,
    scratch: Scratch,
}

/// Buffers [`expand`] reuses from one aggregate to the next.
#[derive(Default)]
struct Scratch {
    records: Vec<Checked>,
    /// Tags of the user records that have any: (index in `records`, tags), in order.
    tags: Vec<(usize, Vec<crate::record::Tag>)>,
    /// Per table entry: how many user records take it (saturating).
    pk_uses: Vec<u32>,
    ehk_uses: Vec<u32>,
    /// Per table entry taken by several user records: their shared string. Emptied after use.
    pk_shared: Vec<Option<Arc<str>>>,
    ehk_shared: Vec<Option<Arc<str>>>,
}

/// Decodes `body` (the verified protobuf bytes of `outer`) and appends its user records to `out`,
/// which is only touched when every user record decoded and none was filtered out.
///
/// Two phases: the first reads and checks every user record (indices, hash range), the second
/// builds them all with one `extend`, which writes each `Record` straight into `out` (pushing
/// one at a time built each on the stack first and copied it).
fn expand(
    outer: &Record,
    body: &[u8],
    filter: Option<&HashKeyRange>,
    out: &mut Vec<Record>,
    scratch: &mut Scratch,
) -> Result<Expanded, PassThroughReason> {
    let tables = wire::scan(body)?;
    let Scratch {
        records,
        tags,
        pk_uses,
        ehk_uses,
        pk_shared,
        ehk_shared,
    } = scratch;
    records.clear();
    tags.clear();
    pk_uses.clear();
    pk_uses.resize(tables.partition_keys.len(), 0);
    ehk_uses.clear();
    ehk_uses.resize(tables.explicit_hash_keys.len(), 0);
    records.reserve(tables.records);

    // Effective hash keys per table entry, computed once (only when filtering).
    let hashes = filter.map(|_| {
        let pk: Vec<u128> = tables
            .partition_keys
            .iter()
            .map(|k| partition_key_hash(k))
            .collect();
        let ehk: Vec<Option<u128>> = tables
            .explicit_hash_keys
            .iter()
            .map(|k| parse_hash_key(k).ok())
            .collect();
        (pk, ehk)
    });
    let mut out_of_range = None;
    let mut reader = wire::Records::new(body);
    let mut sub_sequence = 0u64;
    loop {
        // Indices as read (bounds checked below), data range within the body.
        let (pk_index, ehk_index, data) = match reader.next_canonical() {
            Some(c) => (
                c.partition_key_index,
                (c.explicit_hash_key_index != usize::MAX).then_some(c.explicit_hash_key_index),
                c.start..c.end,
            ),
            None => match reader.next() {
                None => break,
                Some(raw) => {
                    let raw = raw?;
                    if !raw.tags.is_empty() {
                        tags.push((records.len(), raw.tags));
                    }
                    let index =
                        |i: u64| usize::try_from(i).map_err(|_| PassThroughReason::IndexOutOfRange);
                    let ehk = match raw.explicit_hash_key_index {
                        None => None,
                        Some(i) => Some(index(i)?),
                    };
                    (index(raw.partition_key_index)?, ehk, raw.data)
                }
            },
        };
        let pk_count = pk_uses
            .get_mut(pk_index)
            .ok_or(PassThroughReason::IndexOutOfRange)?;
        *pk_count = pk_count.saturating_add(1);
        if let Some(i) = ehk_index {
            let count = ehk_uses
                .get_mut(i)
                .ok_or(PassThroughReason::IndexOutOfRange)?;
            *count = count.saturating_add(1);
        }
        if let (Some(range), Some((pk_hashes, ehk_hashes)), None) =
            (filter, hashes.as_ref(), out_of_range)
        {
            let key = ehk_index
                .and_then(|i| ehk_hashes.get(i).copied().flatten())
                .or_else(|| pk_hashes.get(pk_index).copied())
                .unwrap_or_default();
            if !range.contains(key) {
                out_of_range = Some((sub_sequence, key));
            }
        }
        records.push(Checked {
            partition_key: pk_index,
            explicit_hash_key: ehk_index.unwrap_or(usize::MAX),
            start: MAGIC.len() + data.start,
            end: MAGIC.len() + data.end,
        });
        sub_sequence += 1;
    }
    let count = records.len();
    if let Some((sub_sequence, hash_key)) = out_of_range {
        return Ok(Expanded::OutOfRange {
            records: count,
            sub_sequence,
            hash_key,
        });
    }

    pk_shared.clear();
    pk_shared.resize(tables.partition_keys.len(), None);
    ehk_shared.clear();
    ehk_shared.resize(tables.explicit_hash_keys.len(), None);
    out.reserve(count);
    let first = out.len();
    out.extend(records.iter().zip(0u64..).map(|(c, sub_sequence)| Record {
        partition_key: table_string(&tables.partition_keys, pk_uses, pk_shared, c.partition_key),
        data: outer.data.slice(c.start..c.end),
        sequence_number: outer.sequence_number.clone(),
        sub_sequence_number: sub_sequence,
        approximate_arrival: outer.approximate_arrival,
        explicit_hash_key: (c.explicit_hash_key != usize::MAX).then(|| {
            table_string(
                &tables.explicit_hash_keys,
                ehk_uses,
                ehk_shared,
                c.explicit_hash_key,
            )
        }),
        aggregated: true,
        tags: Box::default(),
    }));
    // Tags are rare: set after the fact, keeping the loop above lean.
    for (i, record_tags) in tags.drain(..) {
        if let Some(record) = out.get_mut(first + i) {
            record.tags = record_tags.into_boxed_slice();
        }
    }
    pk_shared.clear();
    ehk_shared.clear();
    Ok(Expanded::Delivered(count))
}

/// The string of table entry `i` (an index the first phase of [`expand`] checked) for one user
/// record: a fresh `Arc<str>` when it is the entry's only user record, else the entry's shared
/// one (made on first use), so each entry costs one allocation and no extra reference counting
/// when it is not shared.
#[inline(always)]
fn table_string(
    texts: &[wire::TableKey<'_>],
    uses: &[u32],
    shared: &mut [Option<Arc<str>>],
    i: usize,
) -> Arc<str> {
    let text: &str = texts.get(i).map_or("", |t| t);
    match shared.get_mut(i) {
        Some(slot) if uses.get(i).copied().unwrap_or(0) > 1 => {
            slot.get_or_insert_with(|| Arc::from(text)).clone()
        }
        _ => Arc::from(text),
    }
}

#[cfg(test)]
mod tests;
