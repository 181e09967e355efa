//! `cleanup`: rows the table no longer needs. Finished leases whose children all made progress
//! (and whose own parents are gone, so lineage is removed oldest first, as Java KCL does), and
//! heartbeat rows of workers seen stale that own nothing. Planned first (dry run by default),
//! deleted with conditional deletes.

use std::collections::BTreeMap;

use crate::record::ExtendedSequenceNumber;

use super::super::{Lease, LeaseError, LeaseTable};
use super::AdminError;
use super::watch::{Liveness, WorkerView};

/// Why a row can go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Removal {
    /// A finished lease whose children all made progress.
    FinishedLease,
    /// The heartbeat row of a worker seen stale that owns nothing.
    StaleHeartbeat,
}

impl Removal {
    /// A short explanation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FinishedLease => "finished, children progressed",
            Self::StaleHeartbeat => "stale heartbeat row, owns nothing",
        }
    }
}

/// One row to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cleanup {
    /// The row's key.
    pub key: String,
    /// Why.
    pub why: Removal,
    row: Lease,
}

fn progressed(lease: &Lease) -> bool {
    matches!(
        lease.checkpoint,
        ExtendedSequenceNumber::Sequence { .. } | ExtendedSequenceNumber::ShardEnd
    )
}

/// The rows `view` shows as no longer needed. Writes nothing.
pub fn plan(view: &WorkerView) -> Vec<Cleanup> {
    let leases: BTreeMap<&str, &Lease> = view.leases().map(|l| (l.key.as_str(), l)).collect();
    let mut out = Vec::new();
    for lease in leases.values() {
        let removable = lease.is_finished()
            && !lease.child_shard_ids.is_empty()
            && lease
                .child_shard_ids
                .iter()
                .all(|c| leases.get(c.as_str()).is_some_and(|c| progressed(c)))
            && lease
                .parent_shard_ids
                .iter()
                .all(|p| !leases.contains_key(p.as_str()));
        if removable {
            out.push(Cleanup {
                key: lease.key.clone(),
                why: Removal::FinishedLease,
                row: (*lease).clone(),
            });
        }
    }
    for row in view.rows.iter() {
        let Some(worker) = row.heartbeat_of() else {
            continue;
        };
        let stale = view
            .workers
            .iter()
            .any(|w| w.id == worker && w.liveness == Liveness::Stale);
        let involved = leases.values().any(|l| {
            (!l.is_finished() && l.is_owned_by(worker))
                || l.checkpoint_owner.as_deref() == Some(worker)
        });
        if stale && !involved {
            out.push(Cleanup {
                key: row.key.clone(),
                why: Removal::StaleHeartbeat,
                row: row.clone(),
            });
        }
    }
    out
}

/// Deletes the planned rows, each conditional on the row as read; a row changed since is kept
/// and reported in the second list.
pub async fn apply(
    table: &dyn LeaseTable,
    plan: &[Cleanup],
) -> Result<(Vec<String>, Vec<String>), AdminError> {
    let (mut deleted, mut kept) = (Vec::new(), Vec::new());
    for item in plan {
        match table.delete(&item.key, &item.row.expectation()).await {
            Ok(()) => deleted.push(item.key.clone()),
            Err(LeaseError::ConditionFailed { .. } | LeaseError::NotFound(_)) => {
                kept.push(item.key.clone())
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok((deleted, kept))
}
