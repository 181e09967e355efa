//! Why a worker stopped: [`WorkerError`].
//!
//! Transient failures (throttling, timeouts, 5xx, a busy database) are retried with backoff and
//! counted in metrics; they never end [`super::Worker::run`]. Permanent ones do, once they have
//! lasted the worker's `permanent_error_timeout` without a success in between (long enough to
//! ride out IAM propagation or a stream still being created): the stream does not exist, access
//! is denied, the backend rejects a request as invalid, or the lease table cannot be used.

use std::sync::Arc;

use crate::backend::BackendError;
use crate::lease::LeaseError;

/// Why a worker stopped with an error.
///
/// Each message names what failed (the stream, the shard, the table) and what the service
/// said; [`std::error::Error::source`] is the underlying error (the SDK's, where there is one).
/// Cheap to clone.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WorkerError {
    /// The stream does not exist (in this account and region).
    StreamNotFound {
        /// The stream name.
        stream: String,
        /// What the backend answered.
        source: BackendError,
    },
    /// The credentials may not read the stream: the message names the API action refused.
    AccessDenied {
        /// The stream name.
        stream: String,
        /// The shard, when the refusal was for reading one.
        shard: Option<String>,
        /// What the backend answered.
        source: BackendError,
    },
    /// The backend rejected a request as invalid (e.g. a checkpoint that is not a sequence
    /// number of this shard: a stream deleted and created again under the same name).
    InvalidRequest {
        /// The stream name.
        stream: String,
        /// The shard, when the request was for one.
        shard: Option<String>,
        /// What the backend answered.
        source: BackendError,
    },
    /// Another permanent backend failure (e.g. an operation the backend does not support).
    Backend {
        /// The stream name.
        stream: String,
        /// The shard, when the request was for one.
        shard: Option<String>,
        /// What the backend answered.
        source: BackendError,
    },
    /// The lease table cannot be used: it is missing, has another schema, the file is not
    /// writable, or a permission is missing.
    LeaseTable {
        /// What the store answered.
        source: Arc<LeaseError>,
    },
    /// The lease table holds live (unfinished) leases keyed in the other mode's style: a
    /// multi-stream worker on a single-stream table (`shardId-...` keys), or a single-stream
    /// worker on a multi-stream one (`account:stream:creationEpoch:shardId` keys). Refused at
    /// start: the worker could process none of them and would create its own leases beside
    /// them. Finish or remove the other mode's leases, or use another table.
    LeaseKeyStyle {
        /// Whether this worker runs in multi-stream mode.
        multi_stream: bool,
        /// One of the other mode's live lease keys.
        example: String,
    },
    /// A task of the worker panicked.
    Task(String),
    /// The worker's `run` future was dropped before it finished.
    Cancelled,
}

impl WorkerError {
    /// The error for a permanent backend failure of a call about `stream` (and `shard`).
    pub(crate) fn from_backend(stream: &str, shard: Option<&str>, source: BackendError) -> Self {
        let stream = stream.to_owned();
        let shard = shard.map(str::to_owned);
        match source {
            BackendError::ResourceNotFound(_) if shard.is_none() => {
                Self::StreamNotFound { stream, source }
            }
            BackendError::AccessDenied(_) => Self::AccessDenied {
                stream,
                shard,
                source,
            },
            BackendError::InvalidArgument(_) => Self::InvalidRequest {
                stream,
                shard,
                source,
            },
            source => Self::Backend {
                stream,
                shard,
                source,
            },
        }
    }
}

fn on_shard(shard: &Option<String>) -> String {
    shard
        .as_ref()
        .map(|s| format!(" (shard {s})"))
        .unwrap_or_default()
}

impl std::fmt::Display for WorkerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::StreamNotFound { stream, source } => write!(
                f,
                "stream {stream:?} does not exist (check its name, the region and the account): \
                 {source}"
            ),
            Self::AccessDenied {
                stream,
                shard,
                source,
            } => write!(
                f,
                "access to stream {stream:?}{} denied; grant the credentials the Kinesis action \
                 named here: {source}",
                on_shard(shard)
            ),
            Self::InvalidRequest {
                stream,
                shard,
                source,
            } => write!(
                f,
                "stream {stream:?}{}: the backend rejected a request: {source}",
                on_shard(shard)
            ),
            Self::Backend {
                stream,
                shard,
                source,
            } => write!(f, "stream {stream:?}{}: {source}", on_shard(shard)),
            Self::LeaseTable { source } => write!(f, "the lease table cannot be used: {source}"),
            Self::LeaseKeyStyle {
                multi_stream,
                example,
            } => {
                let (mine, theirs) = if *multi_stream {
                    ("a multi-stream", "single-stream")
                } else {
                    ("a single-stream", "multi-stream")
                };
                write!(
                    f,
                    "the lease table holds live {theirs} leases (e.g. {example:?}), which {mine} \
                     worker cannot process; finish or remove them, or use another table"
                )
            }
            Self::Task(message) => write!(f, "worker task failed: {message}"),
            Self::Cancelled => f.write_str("the worker was cancelled before it finished"),
        }
    }
}

impl std::error::Error for WorkerError {
    /// The error beneath the one this message already quotes (the SDK's error, for the AWS
    /// backend), so an error chain printed whole repeats nothing.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::StreamNotFound { source, .. }
            | Self::AccessDenied { source, .. }
            | Self::InvalidRequest { source, .. }
            | Self::Backend { source, .. } => std::error::Error::source(source),
            Self::LeaseTable { source } => std::error::Error::source(source.as_ref()),
            Self::LeaseKeyStyle { .. } | Self::Task(_) | Self::Cancelled => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_stream_shard_and_what_the_service_said() {
        let error = WorkerError::from_backend(
            "orders",
            None,
            BackendError::ResourceNotFound("ListShards: stream orders not found".into()),
        );
        assert!(matches!(error, WorkerError::StreamNotFound { .. }));
        let text = error.to_string();
        assert!(text.contains("\"orders\" does not exist"), "{text}");
        assert!(
            text.contains("ListShards: stream orders not found"),
            "{text}"
        );

        let error = WorkerError::from_backend(
            "orders",
            Some("shardId-000000000001"),
            BackendError::AccessDenied("GetRecords: not authorized: kinesis:GetRecords".into()),
        );
        let text = error.to_string();
        assert!(text.contains("shardId-000000000001"), "{text}");
        assert!(text.contains("kinesis:GetRecords"), "{text}");
    }
}
