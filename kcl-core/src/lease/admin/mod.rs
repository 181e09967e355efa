//! Lease administration: what an operator's tool (the `kcl` binary of `kcl-cli`) does to a lease
//! table, written once here above the [`LeaseTable`] trait so it works on every store and follows
//! the same protocol as the workers.
//!
//! | module | owns |
//! |---|---|
//! | `watch` | who is alive: heartbeat (or lease) counters watched over a short interval, never clocks |
//! | [`describe`] | one row per lease (state, owner, checkpoint, owner switches, lag) and per worker |
//! | [`reset`] | planning a checkpoint reset (lineage aware) and applying it with cooperative handoffs |
//! | [`cleanup`] | finished leases whose children progressed, and stale heartbeat rows |
//! | `position` | what the stream says: a timestamp as a checkpoint, how far a checkpoint is behind |
//! | [`streams`] | which leases belong to the stream the operator names (single- or multi-stream keys) |
//!
//! Every write is conditional on the lease as read, so an operator racing a worker or another
//! operator either wins or gets [`AdminError::Raced`], and nothing is lost. Bad input (an unknown
//! shard, a timestamp in the future, a sequence number of another shard) is refused before
//! anything is written.

use std::time::Duration;

use crate::backend::BackendError;
use crate::record::SequenceNumber;
use crate::stream::StreamIdError;

use super::LeaseError;

pub mod cleanup;
pub mod describe;
mod position;
pub mod reset;
pub mod streams;
mod watch;

pub use watch::{Liveness, WorkerInfo, WorkerView, watch_workers};

/// The owner name the operator's tool writes while it holds a lease being reset (the default of
/// [`reset::ApplyOptions::admin_id`]). Workers see it as a lease handed to another owner.
pub const ADMIN_OWNER: &str = "kcl-admin";

/// An error of a lease administration operation. Every variant says what was wrong; none of them
/// leaves a change half-written on a lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The lease store failed or is not usable (missing table, wrong schema).
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The stream could not be read.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The stream name.
        stream: String,
        /// What the backend said.
        #[source]
        source: BackendError,
    },
    /// A shard named by the operator is not in the stream.
    #[error("shard {shard} does not exist in stream {stream}")]
    UnknownShard {
        /// The shard id as given.
        shard: String,
        /// The stream name.
        stream: String,
    },
    /// The stream as named is not a stream name, ARN or `account:stream:creationEpoch`.
    #[error("stream {stream:?}: {source}")]
    BadStream {
        /// The stream as given.
        stream: String,
        /// Why it was refused.
        #[source]
        source: StreamIdError,
    },
    /// A multi-stream table holds leases of several incarnations of the stream (deleted and
    /// created again under the same name): name one by its serialized identifier.
    #[error(
        "the table holds leases of {} incarnations of stream {stream}: name one as ACCOUNT:STREAM:CREATION_EPOCH ({})",
        incarnations.len(),
        incarnations.join(", ")
    )]
    AmbiguousStream {
        /// The stream name.
        stream: String,
        /// The serialized identifiers found.
        incarnations: Vec<String>,
    },
    /// A multi-stream table holds no lease of the stream named without its creation epoch.
    #[error(
        "the lease table is a multi-stream table and holds no lease of stream {stream}: name it as ACCOUNT:STREAM:CREATION_EPOCH to create its leases"
    )]
    StreamNotInTable {
        /// The stream name.
        stream: String,
    },
    /// A timestamp after the current time.
    #[error("timestamp {0} is in the future: nothing has arrived after it yet")]
    FutureTimestamp(String),
    /// A sequence number that does not belong to the shard.
    #[error("sequence number {sequence} is not a position of shard {shard}: {reason}")]
    BadSequence {
        /// The sequence number given.
        sequence: SequenceNumber,
        /// The shard.
        shard: String,
        /// Why it was refused.
        reason: String,
    },
    /// A reset to a sequence number names no shard, or several.
    #[error(
        "a reset to a sequence number needs exactly one --shard (a sequence number belongs to one shard)"
    )]
    SequenceNeedsOneShard,
    /// A lease changed between the read the plan was made from and the write (a worker or
    /// another operator wrote it). The write was refused; `changed` lists the leases this run did
    /// change before it stopped.
    #[error(
        "lease {key} was changed by someone else (a worker or another operator) since it was read; not written{}",
        changed_list(changed)
    )]
    Raced {
        /// The lease key.
        key: String,
        /// Leases changed by this run before the race was lost.
        changed: Vec<String>,
    },
    /// A lease is being handed over between two workers; the reset does not interfere.
    #[error(
        "lease {key} is being handed over from {from} to {to}; try again in a few seconds{}",
        changed_list(changed)
    )]
    HandoffInProgress {
        /// The lease key.
        key: String,
        /// The previous owner.
        from: String,
        /// The new owner.
        to: String,
        /// Leases changed by this run before it stopped.
        changed: Vec<String>,
    },
    /// The owner of a lease did not hand it over in time; the lease was given back to it
    /// unchanged.
    #[error(
        "lease {key}: owner {owner} did not hand it over within {wait:?}; it was given back unchanged (is the owner a worker without cooperative handoff, e.g. Java KCL 2.x? stop it first){}",
        changed_list(changed)
    )]
    HandoffTimedOut {
        /// The lease key.
        key: String,
        /// Its owner.
        owner: String,
        /// How long the tool waited.
        wait: Duration,
        /// Leases changed by this run before it stopped.
        changed: Vec<String>,
    },
}

fn changed_list(changed: &[String]) -> String {
    if changed.is_empty() {
        "; nothing was changed".to_owned()
    } else {
        format!(
            "; already reset before stopping: {} (run the reset again to finish)",
            changed.join(", ")
        )
    }
}

/// Wraps a backend error with the stream's name.
pub(crate) fn stream_error(stream: &str) -> impl FnOnce(BackendError) -> AdminError + '_ {
    move |source| AdminError::Stream {
        stream: stream.to_owned(),
        source,
    }
}
