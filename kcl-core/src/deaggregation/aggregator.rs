//! The producer side: packing user records into KPL aggregated records.
//!
//! Output is byte-identical to the official `aws-kinesis-agg` Python library (1.2.3) for the same
//! user records per aggregate: fields in tag order, key tables in order of first use, the
//! aggregate put with the first user record's partition key and explicit hash key. The flush
//! points can differ: the size accounting here is exact (a flushed aggregate, magic and digest
//! included, is never larger than `max_size`, and is filled as far as that allows), while the
//! Python library over-counts repeated partition keys and so flushes earlier.
//!
//! A user record that alone does not fit within `max_size` is refused with
//! [`AggregationError::RecordTooLarge`] and the aggregator is left unchanged; the caller can put
//! it as a plain (non-aggregated) Kinesis record instead.

use std::collections::HashMap;

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use super::proto::{AggregatedRecordMessage, FRAMING_LEN, MAGIC, RecordMessage};
use crate::record::parse_hash_key;

/// The KPL default `AggregationMaxSize`: 51200 bytes per aggregated record.
pub const DEFAULT_AGGREGATION_MAX_SIZE: usize = 51_200;

/// The longest partition key Kinesis accepts, in Unicode characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Why a user record cannot be aggregated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AggregationError {
    /// The record alone (in an otherwise empty aggregate) exceeds the size limit.
    #[error("user record needs an aggregate of {size} bytes, more than the limit of {max_size}")]
    RecordTooLarge {
        /// Size of an aggregate holding only this record, magic and digest included.
        size: usize,
        /// The aggregator's limit.
        max_size: usize,
    },
    /// The partition key is empty or longer than 256 characters (Kinesis limits).
    #[error("partition key has {chars} characters; Kinesis requires 1 to 256")]
    InvalidPartitionKey {
        /// Characters in the rejected key.
        chars: usize,
    },
    /// The explicit hash key is not a decimal integer in `0..=2^128-1`.
    #[error("explicit hash key {0:?} is not a decimal integer between 0 and 2^128-1")]
    InvalidExplicitHashKey(String),
}

/// One finished aggregated record, ready for `PutRecord`/`PutRecords`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AggregatedRecord {
    /// The partition key to put with (the first user record's).
    pub partition_key: String,
    /// The explicit hash key to put with (the first user record's, if it had one).
    pub explicit_hash_key: Option<String>,
    /// The record data: magic, protobuf, MD5.
    pub data: Bytes,
    /// How many user records it holds.
    pub user_records: usize,
}

/// Packs user records into aggregated records of at most `max_size` bytes.
#[derive(Debug)]
pub struct Aggregator {
    max_size: usize,
    message: AggregatedRecordMessage,
    partition_keys: HashMap<String, u64>,
    explicit_hash_keys: HashMap<String, u64>,
    /// Encoded length of `message`.
    body_len: usize,
}

impl Default for Aggregator {
    fn default() -> Self {
        Self::new(DEFAULT_AGGREGATION_MAX_SIZE)
    }
}

fn varint_len(value: u64) -> usize {
    prost::encoding::encoded_len_varint(value)
}

/// Encoded length of a length-delimited field with a one-byte key.
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

impl Aggregator {
    /// An empty aggregator whose output records are at most `max_size` bytes (magic and digest
    /// included). KPL's default is [`DEFAULT_AGGREGATION_MAX_SIZE`].
    pub fn new(max_size: usize) -> Self {
        Self {
            max_size,
            message: AggregatedRecordMessage::default(),
            partition_keys: HashMap::new(),
            explicit_hash_keys: HashMap::new(),
            body_len: 0,
        }
    }

    /// The size limit.
    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// User records buffered.
    pub fn len(&self) -> usize {
        self.message.records.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.message.records.is_empty()
    }

    /// The size the aggregate would have if flushed now (0 when empty).
    pub fn size_bytes(&self) -> usize {
        if self.is_empty() {
            0
        } else {
            FRAMING_LEN + self.body_len
        }
    }

    /// Bytes the body grows by when adding this record to the current aggregate.
    fn growth(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data_len: usize,
    ) -> usize {
        let mut grow = 0;
        let pk_index = match self.partition_keys.get(partition_key) {
            Some(&i) => i,
            None => {
                grow += field_len(partition_key.len());
                self.message.partition_key_table.len() as u64
            }
        };
        let mut inner = 1 + varint_len(pk_index) + field_len(data_len);
        if let Some(ehk) = explicit_hash_key {
            let ehk_index = match self.explicit_hash_keys.get(ehk) {
                Some(&i) => i,
                None => {
                    grow += field_len(ehk.len());
                    self.message.explicit_hash_key_table.len() as u64
                }
            };
            inner += 1 + varint_len(ehk_index);
        }
        grow + field_len(inner)
    }

    /// Adds a user record. Returns the previous aggregate if this record did not fit in it (the
    /// record then starts a new aggregate), `None` if it was added to the current one.
    ///
    /// Errors leave the aggregator unchanged: an invalid partition key or explicit hash key, or a
    /// record too large to fit even in an empty aggregate.
    pub fn try_add(
        &mut self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
        data: impl Into<Bytes>,
    ) -> Result<Option<AggregatedRecord>, AggregationError> {
        let chars = partition_key.chars().count();
        if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
            return Err(AggregationError::InvalidPartitionKey { chars });
        }
        if let Some(ehk) = explicit_hash_key
            && parse_hash_key(ehk).is_err()
        {
            return Err(AggregationError::InvalidExplicitHashKey(ehk.to_owned()));
        }
        let data = data.into();
        let alone = FRAMING_LEN
            + field_len(partition_key.len())
            + explicit_hash_key.map_or(0, |k| field_len(k.len()))
            + field_len(
                2 + field_len(data.len()) + if explicit_hash_key.is_some() { 2 } else { 0 },
            );
        if alone > self.max_size {
            return Err(AggregationError::RecordTooLarge {
                size: alone,
                max_size: self.max_size,
            });
        }
        let fits =
            FRAMING_LEN + self.body_len + self.growth(partition_key, explicit_hash_key, data.len())
                <= self.max_size;
        let flushed = if fits { None } else { self.flush() };
        self.push(partition_key, explicit_hash_key, data);
        Ok(flushed)
    }

    fn push(&mut self, partition_key: &str, explicit_hash_key: Option<&str>, data: Bytes) {
        self.body_len += self.growth(partition_key, explicit_hash_key, data.len());
        let next = self.message.partition_key_table.len() as u64;
        let partition_key_index = *self
            .partition_keys
            .entry(partition_key.to_owned())
            .or_insert_with(|| {
                self.message
                    .partition_key_table
                    .push(partition_key.to_owned());
                next
            });
        let explicit_hash_key_index = explicit_hash_key.map(|ehk| {
            let next = self.message.explicit_hash_key_table.len() as u64;
            *self
                .explicit_hash_keys
                .entry(ehk.to_owned())
                .or_insert_with(|| {
                    self.message.explicit_hash_key_table.push(ehk.to_owned());
                    next
                })
        });
        self.message.records.push(RecordMessage {
            partition_key_index,
            explicit_hash_key_index,
            data,
            tags: Vec::new(),
        });
        debug_assert_eq!(self.body_len, self.message.encoded_len());
    }

    /// Finishes the current aggregate; `None` when nothing is buffered.
    pub fn flush(&mut self) -> Option<AggregatedRecord> {
        if self.is_empty() {
            return None;
        }
        let message = std::mem::take(&mut self.message);
        self.partition_keys.clear();
        self.explicit_hash_keys.clear();
        let body_len = std::mem::take(&mut self.body_len);

        let mut buf = Vec::with_capacity(FRAMING_LEN + body_len);
        buf.extend_from_slice(&MAGIC);
        message.encode_raw(&mut buf);
        let digest = Md5::digest(&buf[MAGIC.len()..]);
        buf.extend_from_slice(&digest);

        let first = message.records.first();
        let partition_key = first
            .and_then(|r| usize::try_from(r.partition_key_index).ok())
            .and_then(|i| message.partition_key_table.get(i))
            .cloned()
            .unwrap_or_default();
        let explicit_hash_key = first
            .and_then(|r| r.explicit_hash_key_index)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| message.explicit_hash_key_table.get(i))
            .cloned();
        Some(AggregatedRecord {
            partition_key,
            explicit_hash_key,
            data: Bytes::from(buf),
            user_records: message.records.len(),
        })
    }
}
