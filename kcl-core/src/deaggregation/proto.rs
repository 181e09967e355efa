//! The KPL aggregation wire format: framing constants and the protobuf messages as `prost` types.
//!
//! An aggregated Kinesis record is
//! `[F3 89 9A C2][protobuf AggregatedRecord][16-byte MD5 of the protobuf bytes]`, with the
//! proto2 schema below (from the KPL's `messages.proto`):
//!
//! ```text
//! message AggregatedRecord {
//!   repeated string partition_key_table     = 1;
//!   repeated string explicit_hash_key_table = 2;
//!   repeated Record records                 = 3;
//! }
//! message Record {
//!   required uint64 partition_key_index     = 1;
//!   optional uint64 explicit_hash_key_index = 2;
//!   required bytes  data                    = 3;
//!   repeated Tag    tags                    = 4;
//! }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```
//!
//! The `prost` types here (feature `aggregator`) are used to *encode* (by the aggregator) and to
//! cross-check the hand-written zero-copy reader of the de-aggregator in tests. `prost` does not enforce proto2
//! `required` fields; the de-aggregator does.

#[cfg(any(test, feature = "aggregator"))]
use bytes::Bytes;

/// The four magic bytes every KPL aggregated record starts with.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

/// Length of the MD5 digest that trails the protobuf message.
pub const DIGEST_LEN: usize = 16;

/// Bytes an aggregated record spends on framing: magic plus digest.
pub const FRAMING_LEN: usize = MAGIC.len() + DIGEST_LEN;

/// The `AggregatedRecord` protobuf message.
#[cfg(any(test, feature = "aggregator"))]
#[derive(Clone, PartialEq, prost::Message)]
pub struct AggregatedRecordMessage {
    /// Distinct partition keys, referenced by index from the records.
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    /// Distinct explicit hash keys (decimal strings), referenced by index from the records.
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    /// The user records, in sub-sequence order.
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<RecordMessage>,
}

/// The `Record` protobuf message: one user record inside an aggregate.
#[cfg(any(test, feature = "aggregator"))]
#[derive(Clone, PartialEq, prost::Message)]
pub struct RecordMessage {
    /// Index into `partition_key_table` (proto2 `required`).
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    /// Index into `explicit_hash_key_table`, if the record has an explicit hash key.
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    /// The user payload (proto2 `required`).
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    /// KPL tags.
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<TagMessage>,
}

/// The `Tag` protobuf message.
#[cfg(any(test, feature = "aggregator"))]
#[derive(Clone, PartialEq, prost::Message)]
pub struct TagMessage {
    /// Tag key (proto2 `required`).
    #[prost(string, required, tag = "1")]
    pub key: String,
    /// Tag value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// Frames a protobuf body as an aggregated record: magic, body, MD5 of the body.
pub fn frame(body: &[u8]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut out = Vec::with_capacity(body.len() + FRAMING_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(body);
    out.extend_from_slice(&Md5::digest(body));
    out
}
