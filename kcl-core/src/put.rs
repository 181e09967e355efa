//! The write side of a stream: `PutRecord` and `PutRecords` requests and results, shared by the
//! in-memory model and the AWS backend (which producers in tests and tools write through).

use bytes::Bytes;

use crate::record::SequenceNumber;

/// The result of a successful `PutRecord`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordOutput {
    /// The shard the record went to.
    pub shard_id: String,
    /// The sequence number it was given.
    pub sequence_number: SequenceNumber,
}

/// One entry of a `PutRecords` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordsEntry {
    /// The partition key (1 to 256 Unicode characters).
    pub partition_key: String,
    /// The payload.
    pub data: Bytes,
    /// A decimal hash key overriding MD5 of the partition key.
    pub explicit_hash_key: Option<String>,
}

impl PutRecordsEntry {
    /// An entry routed by its partition key.
    pub fn new(partition_key: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Self {
            partition_key: partition_key.into(),
            data: data.into(),
            explicit_hash_key: None,
        }
    }

    /// Routes the entry by an explicit hash key instead.
    pub fn with_explicit_hash_key(mut self, key: impl Into<String>) -> Self {
        self.explicit_hash_key = Some(key.into());
        self
    }
}

/// The outcome of one entry of `PutRecords`, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutRecordsResultEntry {
    /// The record was stored.
    Success {
        /// The shard it went to.
        shard_id: String,
        /// Its sequence number.
        sequence_number: SequenceNumber,
    },
    /// The record was refused (the real API's `ErrorCode` and `ErrorMessage`).
    Failed {
        /// `ProvisionedThroughputExceededException` (or `InternalFailure`).
        error_code: String,
        /// What was exceeded, naming the shard.
        error_message: String,
    },
}

impl PutRecordsResultEntry {
    /// The sequence number of a stored record.
    pub fn sequence_number(&self) -> Option<&SequenceNumber> {
        match self {
            Self::Success {
                sequence_number, ..
            } => Some(sequence_number),
            Self::Failed { .. } => None,
        }
    }

    /// The shard of a stored record.
    pub fn shard_id(&self) -> Option<&str> {
        match self {
            Self::Success { shard_id, .. } => Some(shard_id),
            Self::Failed { .. } => None,
        }
    }

    /// The error code of a refused record.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Success { .. } => None,
            Self::Failed { error_code, .. } => Some(error_code),
        }
    }

    /// Whether the record was stored.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success { .. })
    }
}

/// The result of `PutRecords`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutRecordsOutput {
    /// How many entries failed.
    pub failed_record_count: u32,
    /// One result per entry, in request order.
    pub records: Vec<PutRecordsResultEntry>,
}

/// The error code of a throttled entry, as the real API spells it.
pub const PROVISIONED_THROUGHPUT_EXCEEDED: &str = "ProvisionedThroughputExceededException";
