//! `cleanup`: rows the table no longer needs. Finished leases whose children all made progress
//! (and whose own parents are gone, so lineage is removed oldest first, as Java KCL does), and
//! heartbeat rows of workers seen stale that own nothing. Planned first (dry run by default),
//! deleted with conditional deletes.

use std::collections::BTreeMap;

use crate::record::ExtendedSequenceNumber;

use super::super::{Lease, LeaseError, LeaseTable};
use super::watch::{Liveness, WorkerView};
use super::{AdminError, streams};

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
            && lease.child_shard_ids.iter().all(|c| {
                leases
                    .get(streams::sibling_key(&lease.key, c).as_str())
                    .is_some_and(|c| progressed(c))
            })
            && lease
                .parent_shard_ids
                .iter()
                .all(|p| !leases.contains_key(streams::sibling_key(&lease.key, p).as_str()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::admin::watch::{Liveness, WorkerInfo};
    use crate::record::SequenceNumber;
    use std::time::Duration;

    fn at(n: u128) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::Sequence {
            sequence: SequenceNumber::from_u128(n),
            sub_sequence: 0,
        }
    }

    #[test]
    fn finished_parents_go_once_every_child_progressed_oldest_first() {
        let mut grand = Lease::new("s0", ExtendedSequenceNumber::ShardEnd);
        grand.child_shard_ids = vec!["s1".into()];
        let mut parent = Lease::new("s1", ExtendedSequenceNumber::ShardEnd).with_parents(["s0"]);
        parent.child_shard_ids = vec!["s2".into(), "s3".into()];
        let progressed = Lease::new("s2", at(5)).with_parents(["s1"]);
        let fresh = Lease::new("s3", ExtendedSequenceNumber::TrimHorizon).with_parents(["s1"]);
        let mut other = Lease::new("s4", ExtendedSequenceNumber::ShardEnd);
        other.child_shard_ids = vec!["s5".into()];
        let child = Lease::new("s5", at(7)).with_parents(["s4"]);
        let mut busy = Lease::worker_heartbeat("busy");
        busy.counter = 9;
        let mut owned = Lease::new("s6", at(1));
        owned.owner = Some("busy".into());
        let idle = Lease::worker_heartbeat("idle");
        let view = WorkerView {
            workers: ["busy", "idle"]
                .iter()
                .map(|id| WorkerInfo {
                    id: (*id).to_owned(),
                    heartbeat_counter: Some(0),
                    liveness: Liveness::Stale,
                    leaving: false,
                    leases_held: 0,
                })
                .collect(),
            rows: vec![
                grand, parent, progressed, fresh, other, child, busy, owned, idle,
            ],
            watched_for: Duration::from_secs(1),
        };
        let planned: Vec<(String, Removal)> =
            plan(&view).into_iter().map(|c| (c.key, c.why)).collect();
        // s0's child s1 is finished (progressed), and s0 has no parents: it goes. s1 waits for
        // its parent s0 and for s3, still at its start. s4's child progressed: it goes. The
        // stale worker owning s6 keeps its row; the idle one's row goes.
        assert_eq!(
            planned,
            [
                ("s0".to_owned(), Removal::FinishedLease),
                ("s4".to_owned(), Removal::FinishedLease),
                ("kcl-rs/worker/idle".to_owned(), Removal::StaleHeartbeat),
            ]
        );
    }
}
