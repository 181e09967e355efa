//! `describe`: one row per lease and per worker, as an operator wants to see them.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::backend::{BackendError, StreamBackend};
use crate::record::ExtendedSequenceNumber;

use super::super::{Lease, LeaseTable};
use super::AdminError;
use super::position;
use super::streams;
use super::watch::{WorkerInfo, WorkerView, watch_workers};
use crate::stream::LeaseNaming;

pub use super::position::Lag;

/// Where a lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseState {
    /// Being processed, or ready to be.
    Open,
    /// Every record of the shard was processed (`SHARD_END`).
    Finished,
    /// A child shard waiting for its parents to finish.
    BlockedOnParents,
    /// A handoff to another owner was requested and not completed yet.
    HandoffPending,
}

impl LeaseState {
    /// `open`, `finished`, `blocked-on-parents` or `handoff-pending`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Finished => "finished",
            Self::BlockedOnParents => "blocked-on-parents",
            Self::HandoffPending => "handoff-pending",
        }
    }
}

/// One lease as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRow {
    /// The lease key (the shard id in a single-stream table).
    pub key: String,
    /// The stream's serialized identifier (`account:stream:creationEpoch`) in a multi-stream
    /// table; `None` in a single-stream one.
    pub stream: Option<String>,
    /// The shard id.
    pub shard: String,
    /// Where it stands.
    pub state: LeaseState,
    /// Its owner.
    pub owner: Option<String>,
    /// The previous owner while a handoff is pending.
    pub handing_over_from: Option<String>,
    /// The committed checkpoint (sequence number or sentinel).
    pub checkpoint: ExtendedSequenceNumber,
    /// Owner changes since the last checkpoint.
    pub owner_switches: u64,
    /// Parent shards.
    pub parents: Vec<String>,
    /// Child shards (known once the shard ended).
    pub children: Vec<String>,
    /// How far behind the tip, when the stream was read.
    pub lag: Option<Lag>,
}

/// What `describe` found.
#[derive(Clone, Debug)]
pub struct Description {
    /// One row per shard lease, by key.
    pub leases: Vec<LeaseRow>,
    /// One row per worker, by id.
    pub workers: Vec<WorkerInfo>,
    /// How long heartbeat counters were watched.
    pub watched_for: Duration,
}

/// The state of `lease` among `leases` (by key).
pub fn state_of(lease: &Lease, leases: &BTreeMap<&str, &Lease>) -> LeaseState {
    if lease.is_finished() {
        LeaseState::Finished
    } else if lease.checkpoint_owner.is_some() {
        LeaseState::HandoffPending
    } else if lease.parent_shard_ids.iter().any(|p| {
        leases
            .get(streams::sibling_key(&lease.key, p).as_str())
            .is_some_and(|l| !l.is_finished())
    }) {
        LeaseState::BlockedOnParents
    } else {
        LeaseState::Open
    }
}

/// Rows of `view`, without lag.
pub fn rows(view: &WorkerView) -> Vec<LeaseRow> {
    let by_key: BTreeMap<&str, &Lease> = view.leases().map(|l| (l.key.as_str(), l)).collect();
    by_key
        .values()
        .map(|lease| LeaseRow {
            key: lease.key.clone(),
            stream: LeaseNaming::of_key(&lease.key).stream().map(str::to_owned),
            shard: streams::shard_of(&lease.key).to_owned(),
            state: state_of(lease, &by_key),
            owner: lease.owner.clone(),
            handing_over_from: lease.checkpoint_owner.clone(),
            checkpoint: lease.checkpoint.clone(),
            owner_switches: lease.owner_switches_since_checkpoint,
            parents: lease.parent_shard_ids.clone(),
            children: lease.child_shard_ids.clone(),
            lag: None,
        })
        .collect()
}

/// Describes the table: watches the workers for `watch` (see [`watch_workers`]) and, given the
/// stream (`backend` and its name), measures each unfinished lease's lag from the shard's tip.
/// In a multi-stream table the stream (a name, an ARN or `account:stream:creationEpoch`) picks
/// the leases measured: those of that stream (every incarnation of a name).
pub async fn describe(
    table: &dyn LeaseTable,
    stream: Option<(&dyn StreamBackend, &str)>,
    watch: Duration,
) -> Result<Description, AdminError> {
    let view = watch_workers(table, watch).await?;
    let mut leases = rows(&view);
    if let Some((backend, named)) = stream {
        let id = streams::parse(named)?;
        let name = id.name();
        let wanted = |row: &LeaseRow| match &row.stream {
            None => true,
            Some(serialized) => crate::stream::StreamIdentifier::parse_serialized(serialized)
                .is_ok_and(|s| {
                    s.name() == name
                        && id
                            .creation_epoch()
                            .is_none_or(|e| s.creation_epoch() == Some(e))
                }),
        };
        for row in &mut leases {
            if row.state != LeaseState::Finished && wanted(row) {
                row.lag = match position::lag(backend, name, &row.shard, &row.checkpoint).await {
                    Ok(lag) => lag,
                    // A lease of a shard the stream no longer has (trimmed away, or a table
                    // shared with another stream): no lag to show, the rest still is.
                    Err(AdminError::Stream {
                        source: BackendError::ResourceNotFound(_),
                        ..
                    }) => None,
                    Err(error) => return Err(error),
                };
            }
        }
    }
    Ok(Description {
        leases,
        workers: view.workers,
        watched_for: view.watched_for,
    })
}
