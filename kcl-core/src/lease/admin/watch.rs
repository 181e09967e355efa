//! Who is alive, as an operator's tool can tell: the table is read twice, a short interval
//! apart, and a worker is alive when its heartbeat row's counter moved in between. An owner
//! without a heartbeat row (a Java KCL worker, or `Renewal::PerLease`) is alive when the counter
//! of one of its leases moved. No timestamp is ever compared: the tool's clock and the workers'
//! clocks need not agree.

use std::collections::BTreeMap;
use std::time::Duration;

use super::super::{Lease, LeaseTable};
use super::AdminError;

/// Whether a worker was seen alive during the watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// Its counter moved while watched.
    Alive,
    /// Its counter did not move while watched (stopped, paused, or renewing more slowly than the
    /// watch interval).
    Stale,
}

impl Liveness {
    /// `alive` or `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Stale => "stale",
        }
    }
}

/// One worker as the watch saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo {
    /// The worker id.
    pub id: String,
    /// Its heartbeat row's counter at the end of the watch; `None` for an owner without a row.
    pub heartbeat_counter: Option<u64>,
    /// Seen alive or stale.
    pub liveness: Liveness,
    /// Its heartbeat row's owner is cleared: a graceful shutdown is under way.
    pub leaving: bool,
    /// Unfinished leases in its name.
    pub leases_held: usize,
}

/// The table as read at the end of a watch, and the workers judged from the two reads.
#[derive(Clone, Debug)]
pub struct WorkerView {
    /// Every worker: those with a heartbeat row and owners of leases without one, by id.
    pub workers: Vec<WorkerInfo>,
    /// Every row of the second read (shard leases and heartbeat rows).
    pub rows: Vec<Lease>,
    /// How long the counters were watched.
    pub watched_for: Duration,
}

impl WorkerView {
    /// Whether `worker` was seen alive (a leaving worker still processes, so it counts).
    pub fn is_alive(&self, worker: &str) -> bool {
        self.workers
            .iter()
            .any(|w| w.id == worker && w.liveness == Liveness::Alive)
    }

    /// Whether `worker` has a heartbeat row (and so can be poked).
    pub fn has_heartbeat_row(&self, worker: &str) -> bool {
        self.workers
            .iter()
            .any(|w| w.id == worker && w.heartbeat_counter.is_some())
    }

    /// The shard leases of the second read (heartbeat rows left out).
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.rows.iter().filter(|row| row.heartbeat_of().is_none())
    }
}

/// Reads the table, waits `interval`, reads it again and judges every worker by whether its
/// counter moved. Use an interval longer than the workers' renewal interval (half the failover
/// time by default).
pub async fn watch_workers(
    table: &dyn LeaseTable,
    interval: Duration,
) -> Result<WorkerView, AdminError> {
    let first = table.list().await?;
    tokio::time::sleep(interval).await;
    let rows = table.list().await?;
    Ok(judge(&first, rows, interval))
}

fn judge(first: &[Lease], rows: Vec<Lease>, interval: Duration) -> WorkerView {
    let before: BTreeMap<&str, u64> = first.iter().map(|r| (r.key.as_str(), r.counter)).collect();
    let moved = |row: &Lease| before.get(row.key.as_str()) != Some(&row.counter);
    let mut workers: BTreeMap<String, WorkerInfo> = BTreeMap::new();
    for row in &rows {
        if let Some(id) = row.heartbeat_of() {
            workers.insert(
                id.to_owned(),
                WorkerInfo {
                    id: id.to_owned(),
                    heartbeat_counter: Some(row.counter),
                    liveness: if moved(row) {
                        Liveness::Alive
                    } else {
                        Liveness::Stale
                    },
                    leaving: row.owner.is_none(),
                    leases_held: 0,
                },
            );
        }
    }
    for lease in rows.iter().filter(|r| r.heartbeat_of().is_none()) {
        let Some(owner) = lease.owner.as_deref() else {
            continue;
        };
        let entry = workers
            .entry(owner.to_owned())
            .or_insert_with(|| WorkerInfo {
                id: owner.to_owned(),
                heartbeat_counter: None,
                liveness: Liveness::Stale,
                leaving: false,
                leases_held: 0,
            });
        if !lease.is_finished() {
            entry.leases_held += 1;
        }
        if entry.heartbeat_counter.is_none() && moved(lease) {
            entry.liveness = Liveness::Alive;
        }
    }
    WorkerView {
        workers: workers.into_values().collect(),
        rows,
        watched_for: interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ExtendedSequenceNumber;

    #[test]
    fn counters_that_moved_are_alive_others_stale() {
        let mut a = Lease::worker_heartbeat("a");
        let b = Lease::worker_heartbeat("b");
        let mut java = Lease::new("shardId-0", ExtendedSequenceNumber::TrimHorizon);
        java.owner = Some("java-worker".into());
        let mut idle = Lease::new("shardId-1", ExtendedSequenceNumber::TrimHorizon);
        idle.owner = Some("gone".into());
        let first = vec![a.clone(), b.clone(), java.clone(), idle.clone()];
        a.counter += 1;
        java.counter += 3;
        let view = judge(&first, vec![a, b, java, idle], Duration::from_secs(1));
        let state: Vec<(&str, Liveness, Option<u64>, usize)> = view
            .workers
            .iter()
            .map(|w| {
                (
                    w.id.as_str(),
                    w.liveness,
                    w.heartbeat_counter,
                    w.leases_held,
                )
            })
            .collect();
        assert_eq!(
            state,
            vec![
                ("a", Liveness::Alive, Some(1), 0),
                ("b", Liveness::Stale, Some(0), 0),
                ("gone", Liveness::Stale, None, 1),
                ("java-worker", Liveness::Alive, None, 1),
            ]
        );
        assert!(view.is_alive("java-worker") && !view.is_alive("gone"));
    }
}
