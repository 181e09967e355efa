//! Records, sequence numbers and hash keys.
//!
//! Kinesis sequence numbers are decimal strings of up to 129 digits (real ones have about 56), so
//! they do not fit in any machine integer. [`SequenceNumber`] keeps the canonical decimal text and
//! compares numerically (by length, then digit by digit). [`ExtendedSequenceNumber`] adds the
//! sub-sequence number of a de-aggregated KPL record and the sentinel positions used in
//! checkpoints (`TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP` below every real number, `SHARD_END`
//! above).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use md5::{Digest, Md5};

/// The longest sequence number the Kinesis API accepts (`0|([1-9]\d{0,128})`).
pub const MAX_SEQUENCE_NUMBER_DIGITS: usize = 129;

/// Why a string is not a valid sequence number or hash key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The sequence number text was empty.
    #[error("sequence number is empty")]
    EmptySequenceNumber,
    /// The sequence number contained something other than decimal digits.
    #[error("sequence number {0:?} contains a character that is not a decimal digit")]
    NotDecimal(String),
    /// The sequence number had a leading zero (Kinesis never produces one).
    #[error("sequence number {0:?} has a leading zero")]
    LeadingZero(String),
    /// The sequence number had more digits than the Kinesis API allows.
    #[error("sequence number has {0} digits, more than the {MAX_SEQUENCE_NUMBER_DIGITS} allowed")]
    TooLong(usize),
    /// A hash key was not a decimal integer in `0..=2^128-1`.
    #[error("hash key {0:?} is not a decimal integer between 0 and 2^128-1")]
    HashKey(String),
    /// An extended sequence number string was neither a sentinel nor a sequence number.
    #[error("{0:?} is neither a checkpoint sentinel nor a sequence number")]
    Extended(String),
}

/// A Kinesis sequence number: canonical decimal text, compared numerically.
///
/// Cloning is cheap (a reference count).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SequenceNumber(Arc<str>);

impl SequenceNumber {
    /// Parses and validates a sequence number (digits only, no leading zero, at most 129 digits).
    pub fn new(text: impl AsRef<str>) -> Result<Self, ParseError> {
        let text = text.as_ref();
        if text.is_empty() {
            return Err(ParseError::EmptySequenceNumber);
        }
        if text.len() > MAX_SEQUENCE_NUMBER_DIGITS {
            return Err(ParseError::TooLong(text.len()));
        }
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::NotDecimal(text.to_owned()));
        }
        if text.len() > 1 && text.starts_with('0') {
            return Err(ParseError::LeadingZero(text.to_owned()));
        }
        Ok(Self(Arc::from(text)))
    }

    /// Builds a sequence number from a `u128` (used by models and tests).
    pub fn from_u128(value: u128) -> Self {
        Self(Arc::from(value.to_string()))
    }

    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Ord for SequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        // Canonical form (no leading zeros): a longer number is larger; equal lengths compare
        // digit by digit, which is what byte-wise comparison of ASCII digits does.
        self.0
            .len()
            .cmp(&other.0.len())
            .then_with(|| self.0.as_bytes().cmp(other.0.as_bytes()))
    }
}

impl PartialOrd for SequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SequenceNumber({})", self.0)
    }
}

impl FromStr for SequenceNumber {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A position in a shard as stored in a checkpoint: a sentinel or a (sequence, sub-sequence) pair.
///
/// Ordering follows the Java KCL: `AT_TIMESTAMP < TRIM_HORIZON < LATEST <` every real position `<
/// SHARD_END`; real positions compare by sequence number, then by sub-sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExtendedSequenceNumber {
    /// Start at the timestamp configured as the initial position.
    AtTimestamp,
    /// Start at the oldest record still retained.
    TrimHorizon,
    /// Start after the newest record at the time of reading.
    Latest,
    /// A real position: a record's sequence number and its sub-sequence number inside a KPL
    /// aggregate (0 for a record that was not aggregated).
    Sequence {
        /// The Kinesis sequence number.
        sequence: SequenceNumber,
        /// The index of the user record inside its aggregate (0 when not aggregated).
        sub_sequence: u64,
    },
    /// The shard is closed and every record in it was processed.
    ShardEnd,
}

impl ExtendedSequenceNumber {
    /// The text Java KCL stores for this sentinel, or `None` for a real position.
    pub fn sentinel_name(&self) -> Option<&'static str> {
        match self {
            Self::AtTimestamp => Some("AT_TIMESTAMP"),
            Self::TrimHorizon => Some("TRIM_HORIZON"),
            Self::Latest => Some("LATEST"),
            Self::ShardEnd => Some("SHARD_END"),
            Self::Sequence { .. } => None,
        }
    }

    /// A real position with sub-sequence 0.
    pub fn at(sequence: SequenceNumber) -> Self {
        Self::Sequence {
            sequence,
            sub_sequence: 0,
        }
    }

    /// Whether this is one of the sentinels that mean "not started yet".
    pub fn is_initial_sentinel(&self) -> bool {
        matches!(self, Self::AtTimestamp | Self::TrimHorizon | Self::Latest)
    }

    /// Whether this is `SHARD_END`.
    pub fn is_shard_end(&self) -> bool {
        matches!(self, Self::ShardEnd)
    }

    /// The stored text: the sentinel name or the decimal sequence number (the sub-sequence number is
    /// stored separately, as Java KCL does).
    pub fn checkpoint_text(&self) -> &str {
        match self {
            Self::Sequence { sequence, .. } => sequence.as_str(),
            other => other.sentinel_name().unwrap_or_default(),
        }
    }

    /// The sub-sequence number (0 for sentinels).
    pub fn sub_sequence(&self) -> u64 {
        match self {
            Self::Sequence { sub_sequence, .. } => *sub_sequence,
            _ => 0,
        }
    }

    /// Rebuilds a position from its stored text and sub-sequence number.
    pub fn from_parts(text: &str, sub_sequence: u64) -> Result<Self, ParseError> {
        Ok(match text {
            "AT_TIMESTAMP" => Self::AtTimestamp,
            "TRIM_HORIZON" => Self::TrimHorizon,
            "LATEST" => Self::Latest,
            "SHARD_END" => Self::ShardEnd,
            other => Self::Sequence {
                sequence: SequenceNumber::new(other)
                    .map_err(|_| ParseError::Extended(other.to_owned()))?,
                sub_sequence,
            },
        })
    }

    fn rank(&self) -> u8 {
        match self {
            Self::AtTimestamp => 0,
            Self::TrimHorizon => 1,
            Self::Latest => 2,
            Self::Sequence { .. } => 3,
            Self::ShardEnd => 4,
        }
    }
}

impl Ord for ExtendedSequenceNumber {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (
                Self::Sequence {
                    sequence: a,
                    sub_sequence: x,
                },
                Self::Sequence {
                    sequence: b,
                    sub_sequence: y,
                },
            ) => a.cmp(b).then(x.cmp(y)),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

impl PartialOrd for ExtendedSequenceNumber {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sequence {
                sequence,
                sub_sequence,
            } => write!(f, "{sequence}/{sub_sequence}"),
            other => f.write_str(other.sentinel_name().unwrap_or_default()),
        }
    }
}

/// An inclusive range of 128-bit hash keys owned by a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HashKeyRange {
    /// First hash key of the range.
    pub start: u128,
    /// Last hash key of the range (inclusive).
    pub end: u128,
}

impl HashKeyRange {
    /// The whole key space, `0..=2^128-1`.
    pub const FULL: HashKeyRange = HashKeyRange {
        start: 0,
        end: u128::MAX,
    };

    /// Whether `key` falls inside the range.
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// The hash key Kinesis derives from a partition key: MD5 of its UTF-8 bytes, read as a big-endian
/// unsigned 128-bit integer.
pub fn partition_key_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    u128::from_be_bytes(digest.into())
}

/// Parses an explicit hash key (a decimal string in `0..=2^128-1`).
pub fn parse_hash_key(text: &str) -> Result<u128, ParseError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::HashKey(text.to_owned()));
    }
    text.parse::<u128>()
        .map_err(|_| ParseError::HashKey(text.to_owned()))
}

/// One user record as handed to a processor (after KPL de-aggregation), or one raw Kinesis record
/// as returned by a [`crate::backend::StreamBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub(crate) partition_key: Arc<str>,
    pub(crate) data: Bytes,
    pub(crate) sequence_number: SequenceNumber,
    pub(crate) sub_sequence_number: u64,
    pub(crate) approximate_arrival: Option<SystemTime>,
    pub(crate) explicit_hash_key: Option<Arc<str>>,
    pub(crate) aggregated: bool,
    // A boxed slice rather than a `Vec` keeps `Record` within 128 bytes, which the compiler
    // copies inline instead of calling `memcpy` (one copy per user record when de-aggregating).
    pub(crate) tags: Box<[Tag]>,
}

/// A KPL tag attached to a user record inside an aggregate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tag {
    /// Tag key.
    pub key: String,
    /// Optional tag value.
    pub value: Option<String>,
}

impl Record {
    /// Builds a plain (not aggregated) record.
    pub fn new(
        partition_key: impl Into<Arc<str>>,
        data: impl Into<Bytes>,
        sequence_number: SequenceNumber,
    ) -> Self {
        Self {
            partition_key: partition_key.into(),
            data: data.into(),
            sequence_number,
            sub_sequence_number: 0,
            approximate_arrival: None,
            explicit_hash_key: None,
            aggregated: false,
            tags: Box::default(),
        }
    }

    /// Sets the approximate arrival time.
    pub fn with_approximate_arrival(mut self, at: SystemTime) -> Self {
        self.approximate_arrival = Some(at);
        self
    }

    /// Marks this record as user record `sub_sequence` of a KPL aggregate.
    pub fn with_sub_sequence(mut self, sub_sequence: u64) -> Self {
        self.sub_sequence_number = sub_sequence;
        self.aggregated = true;
        self
    }

    /// Sets the explicit hash key (only KPL aggregates carry one on the consumer side).
    pub fn with_explicit_hash_key(mut self, key: impl Into<Arc<str>>) -> Self {
        self.explicit_hash_key = Some(key.into());
        self
    }

    /// Sets the KPL tags.
    pub fn with_tags(mut self, tags: Vec<Tag>) -> Self {
        self.tags = tags.into_boxed_slice();
        self
    }

    /// The KPL tags of this user record (empty unless aggregated with tags).
    pub fn tags(&self) -> &[Tag] {
        &self.tags
    }

    /// The partition key.
    pub fn partition_key(&self) -> &str {
        &self.partition_key
    }

    /// The payload (a zero-copy slice of the fetched record when de-aggregated).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Takes the payload out of the record.
    pub fn into_data(self) -> Bytes {
        self.data
    }

    /// The Kinesis sequence number (shared by every user record of one aggregate).
    pub fn sequence_number(&self) -> &SequenceNumber {
        &self.sequence_number
    }

    /// The index inside the KPL aggregate (0 when not aggregated).
    pub fn sub_sequence_number(&self) -> u64 {
        self.sub_sequence_number
    }

    /// Whether this record came out of a KPL aggregate.
    pub fn is_aggregated(&self) -> bool {
        self.aggregated
    }

    /// The approximate time Kinesis accepted the record.
    pub fn approximate_arrival(&self) -> Option<SystemTime> {
        self.approximate_arrival
    }

    /// The explicit hash key, if the producer set one (KPL aggregates only).
    pub fn explicit_hash_key(&self) -> Option<&str> {
        self.explicit_hash_key.as_deref()
    }

    /// The position of this record, as a checkpoint would store it.
    pub fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::Sequence {
            sequence: self.sequence_number.clone(),
            sub_sequence: self.sub_sequence_number,
        }
    }

    /// The hash key that routes this record: the explicit hash key if valid, else MD5 of the
    /// partition key.
    pub fn effective_hash_key(&self) -> u128 {
        self.explicit_hash_key
            .as_deref()
            .and_then(|k| parse_hash_key(k).ok())
            .unwrap_or_else(|| partition_key_hash(&self.partition_key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> SequenceNumber {
        SequenceNumber::new(s).unwrap()
    }

    #[test]
    fn compares_numerically_beyond_u128() {
        let a = sn("49590338271490256608559692538361571095921575989136588898");
        let b = sn("49590338271490256608559692538361571095921575989136588899");
        let c = sn("9959033827149025660855969253836157109592157598913658889");
        assert!(a < b);
        // c has fewer digits, so it is smaller even though its first digit is larger.
        assert!(c < a);
        assert!(sn("0") < sn("1"));
        assert!(sn("9") < sn("10"));
        let long = "1".repeat(129);
        assert!(sn(&long) > a);
    }

    #[test]
    fn rejects_bad_sequence_numbers() {
        assert_eq!(
            SequenceNumber::new(""),
            Err(ParseError::EmptySequenceNumber)
        );
        assert!(matches!(
            SequenceNumber::new("12a"),
            Err(ParseError::NotDecimal(_))
        ));
        assert!(matches!(
            SequenceNumber::new("-1"),
            Err(ParseError::NotDecimal(_))
        ));
        assert!(matches!(
            SequenceNumber::new("012"),
            Err(ParseError::LeadingZero(_))
        ));
        assert_eq!(
            SequenceNumber::new("1".repeat(130)),
            Err(ParseError::TooLong(130))
        );
    }

    #[test]
    fn extended_ordering_has_sentinels_at_the_ends() {
        let real = ExtendedSequenceNumber::at(sn("1"));
        let real_sub = ExtendedSequenceNumber::Sequence {
            sequence: sn("1"),
            sub_sequence: 3,
        };
        let bigger = ExtendedSequenceNumber::at(sn("2"));
        assert!(ExtendedSequenceNumber::AtTimestamp < ExtendedSequenceNumber::TrimHorizon);
        assert!(ExtendedSequenceNumber::TrimHorizon < ExtendedSequenceNumber::Latest);
        assert!(ExtendedSequenceNumber::Latest < real);
        assert!(real < real_sub);
        assert!(real_sub < bigger);
        assert!(bigger < ExtendedSequenceNumber::ShardEnd);
    }

    #[test]
    fn extended_round_trips_through_parts() {
        for esn in [
            ExtendedSequenceNumber::AtTimestamp,
            ExtendedSequenceNumber::TrimHorizon,
            ExtendedSequenceNumber::Latest,
            ExtendedSequenceNumber::ShardEnd,
            ExtendedSequenceNumber::Sequence {
                sequence: sn("49590338271490256608559692538361571095921575989136588898"),
                sub_sequence: 7,
            },
        ] {
            let back =
                ExtendedSequenceNumber::from_parts(esn.checkpoint_text(), esn.sub_sequence())
                    .unwrap();
            assert_eq!(back, esn);
        }
        assert!(ExtendedSequenceNumber::from_parts("NOPE", 0).is_err());
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn record_fits_in_128_bytes() {
        // De-aggregation moves one `Record` per user record into its output; up to 128 bytes
        // the move is inline stores, beyond it a `memcpy` call.
        assert!(std::mem::size_of::<Record>() <= 128);
    }

    #[test]
    fn partition_key_hash_matches_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(
            partition_key_hash(""),
            0xd41d8cd98f00b204e9800998ecf8427e_u128
        );
        assert_eq!(parse_hash_key(&u128::MAX.to_string()), Ok(u128::MAX));
        assert!(parse_hash_key("340282366920938463463374607431768211456").is_err());
        assert!(parse_hash_key("-1").is_err());
    }
}
