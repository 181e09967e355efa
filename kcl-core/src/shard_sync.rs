//! Shard sync: discovering shards and creating their leases, following the lineage rules.
//!
//! - **Empty table**: `ListShards` with the `ShardFilter` of the initial position (`AT_LATEST`,
//!   `AT_TRIM_HORIZON`, `AT_TIMESTAMP`) and a lease for every shard returned, at that position.
//! - **Children**: a shard whose parents all hold finished (`SHARD_END`) leases, or whose parents
//!   are gone from both the table and the stream, gets a lease at `TRIM_HORIZON`. Normally the
//!   parent's owner creates it at shard end; the periodic sync repairs the hole if that was missed.
//! - **Waiting**: a shard with an ancestor that holds an unfinished lease gets no lease yet; its
//!   lease is created when the ancestors finish. So a child never starts before its parents.
//! - **New roots**: a shard with no leased ancestor at all (a new application, or a hole with no
//!   history) gets a lease at the initial position if the initial-position filter lists it.
//! - **Never backwards**: a shard with a leased descendant gets no lease: its records were
//!   processed (children start only after their parents finished) or deliberately skipped (the
//!   initial position was later than the shard).
//! - **Cleanup** ([`remove_finished_leases`]): a finished lease is deleted once every child has a
//!   lease that made progress (its checkpoint is past the starting sentinel), and only after it
//!   has been still for a while: from then on nobody needs it, neither the children waiting for
//!   their parents nor the sync deciding what to create. The wait matters because creating a
//!   lease cannot be conditional on its never having existed: a creator that read the table
//!   before the lease finished (a sync, a parent's consumer retrying) could otherwise re-create
//!   it after its deletion.
//!
//! Every function works on the leases of one stream, named by a [`LeaseNaming`]: in a
//! multi-stream table the other streams' leases are invisible to it, and lineage (parents,
//! children: plain shard ids, as Java stores them) is resolved within the stream.
//!
//! Creation is idempotent (`create_if_absent`) and deletion conditional on the lease as read, so
//! several workers may sync concurrently. The worker leaves both to one worker, the sync leader,
//! which creates each new lease in the name of a live worker (see
//! `lease::coordinator`); the functions here create them unowned.

use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

use futures::StreamExt;
use tracing::{debug, info};

use crate::backend::{BackendError, Shard, ShardFilter, StreamBackend, list_all_shards};
use crate::lease::{Lease, LeaseError, LeaseTable};
use crate::record::ExtendedSequenceNumber;
use crate::stream::LeaseNaming;

/// Where a new application starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitialPosition {
    /// After the newest record (Java KCL's default).
    #[default]
    Latest,
    /// The oldest retained record.
    TrimHorizon,
    /// The first record at or after a time.
    AtTimestamp(SystemTime),
}

impl InitialPosition {
    /// The checkpoint a new lease gets.
    pub fn checkpoint(&self) -> ExtendedSequenceNumber {
        match self {
            Self::Latest => ExtendedSequenceNumber::Latest,
            Self::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
            Self::AtTimestamp(_) => ExtendedSequenceNumber::AtTimestamp,
        }
    }

    /// The `ListShards` filter listing the shards open at this position.
    pub fn shard_filter(&self) -> ShardFilter {
        match self {
            Self::Latest => ShardFilter::AtLatest,
            Self::TrimHorizon => ShardFilter::AtTrimHorizon,
            Self::AtTimestamp(at) => ShardFilter::AtTimestamp(*at),
        }
    }

    /// The timestamp, for `AtTimestamp`.
    pub fn timestamp(&self) -> Option<SystemTime> {
        match self {
            Self::AtTimestamp(at) => Some(*at),
            _ => None,
        }
    }
}

/// Why a shard sync failed.
#[derive(Debug, thiserror::Error)]
pub enum ShardSyncError {
    /// Listing shards failed.
    #[error("listing shards failed: {0}")]
    Backend(#[from] BackendError),
    /// The lease table failed.
    #[error("lease table failed: {0}")]
    Lease(#[from] LeaseError),
}

/// What one sync did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Leases created by this call (another worker may have created others).
    pub created: Vec<String>,
    /// Shards seen.
    pub shards: usize,
}

/// A lease for `shard` at `checkpoint`, carrying its lineage and hash range (single-stream key).
pub fn lease_for_shard(shard: &Shard, checkpoint: ExtendedSequenceNumber) -> Lease {
    named_lease_for_shard(&LeaseNaming::Single, shard, checkpoint)
}

/// A lease for `shard` of the stream `naming` keys, at `checkpoint`, with lineage and hash range.
pub fn named_lease_for_shard(
    naming: &LeaseNaming,
    shard: &Shard,
    checkpoint: ExtendedSequenceNumber,
) -> Lease {
    Lease::new(naming.lease_key(&shard.shard_id), checkpoint)
        .with_parents(shard.parents().map(str::to_owned))
        .with_hash_key_range(shard.hash_key_range)
}

/// One stream to sync: its name for the backend, how its leases are keyed, where new leases
/// start.
#[derive(Clone, Debug)]
pub(crate) struct SyncTarget {
    /// The stream name the backend knows.
    pub stream: String,
    /// How its leases are keyed.
    pub naming: LeaseNaming,
    /// Where new root leases start.
    pub initial: InitialPosition,
}

/// How many lease creations a sync keeps in flight.
const CREATE_CONCURRENCY: usize = 32;

/// Discovers the shards of `stream` and creates the missing leases (unowned).
pub async fn sync_shards(
    backend: &dyn StreamBackend,
    table: &dyn LeaseTable,
    stream: &str,
    initial: InitialPosition,
) -> Result<SyncReport, ShardSyncError> {
    sync_stream_shards(backend, table, stream, &LeaseNaming::Single, initial).await
}

/// [`sync_shards`] for one stream of a multi-stream table: leases keyed by `naming`.
pub async fn sync_stream_shards(
    backend: &dyn StreamBackend,
    table: &dyn LeaseTable,
    stream: &str,
    naming: &LeaseNaming,
    initial: InitialPosition,
) -> Result<SyncReport, ShardSyncError> {
    let rows = table.list().await?;
    sync_shards_from(backend, table, stream, naming, initial, &rows, &mut || None).await
}

/// [`sync_shards`] from `rows`, the table as just read, creating each new lease in the name of
/// the worker `assign` names (`None`: unowned). Creations run a few at a time.
pub(crate) async fn sync_shards_from(
    backend: &dyn StreamBackend,
    table: &dyn LeaseTable,
    stream: &str,
    naming: &LeaseNaming,
    initial: InitialPosition,
    rows: &[Lease],
    assign: &mut (dyn FnMut() -> Option<String> + Send),
) -> Result<SyncReport, ShardSyncError> {
    let shards = list_all_shards(backend, stream, None).await?;
    let mut report = SyncReport {
        shards: shards.len(),
        ..SyncReport::default()
    };
    // This stream's shard leases only, by shard id: worker heartbeat rows and other streams'
    // leases live in the same table.
    let leases = stream_leases(naming, rows);
    let by_id: HashMap<&str, &Shard> = shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();

    // Parents of a shard, from the stream listing or, for trimmed shards, from lease lineage.
    let parents_of = |id: &str| -> Vec<String> {
        if let Some(shard) = by_id.get(id) {
            shard.parents().map(str::to_owned).collect()
        } else if let Some(lease) = leases.get(id) {
            lease.parent_shard_ids.clone()
        } else {
            Vec::new()
        }
    };
    let has_leased_ancestor = |id: &str| -> bool {
        let mut stack = parents_of(id);
        let mut seen = HashSet::new();
        while let Some(parent) = stack.pop() {
            if !seen.insert(parent.clone()) {
                continue;
            }
            if leases.contains_key(parent.as_str()) {
                return true;
            }
            stack.extend(parents_of(&parent));
        }
        false
    };

    // Ancestors of leased shards: never leased again.
    let mut covered: HashSet<String> = HashSet::new();
    for key in leases.keys() {
        let mut stack = parents_of(key);
        while let Some(parent) = stack.pop() {
            if covered.insert(parent.clone()) {
                stack.extend(parents_of(&parent));
            }
        }
    }

    // Leases to create: children whose parents are all finished (or gone entirely) at
    // TRIM_HORIZON, then shards with no leased ancestry at the initial position.
    let mut to_create: Vec<Lease> = Vec::new();
    let mut needs_initial = false;
    for shard in &shards {
        if leases.contains_key(shard.shard_id.as_str()) || covered.contains(&shard.shard_id) {
            continue;
        }
        let parents: Vec<&str> = shard.parents().collect();
        let leased_parents = parents.iter().filter(|p| leases.contains_key(*p)).count();
        if leased_parents > 0 {
            let all_done = parents.iter().all(|p| match leases.get(p) {
                Some(lease) => lease.is_finished(),
                // Gone from the table: finished and cleaned up if also gone from the stream.
                None => !by_id.contains_key(p),
            });
            if all_done {
                info!(shard = %shard.shard_id, "creating the lease of a child of finished parents");
                to_create.push(named_lease_for_shard(
                    naming,
                    shard,
                    ExtendedSequenceNumber::TrimHorizon,
                ));
            } else {
                debug!(shard = %shard.shard_id, "waiting for parents to finish");
            }
        } else if !has_leased_ancestor(&shard.shard_id) {
            needs_initial = true;
        }
    }

    // Shards with no leased ancestry: lease the ones open at the initial position.
    if needs_initial {
        let roots = list_all_shards(backend, stream, Some(initial.shard_filter())).await?;
        for shard in roots {
            if leases.contains_key(shard.shard_id.as_str())
                || covered.contains(&shard.shard_id)
                || has_leased_ancestor(&shard.shard_id)
            {
                continue;
            }
            debug!(shard = %shard.shard_id, position = %initial.checkpoint(), "creating a lease at the initial position");
            to_create.push(named_lease_for_shard(naming, &shard, initial.checkpoint()));
        }
    }
    for lease in &mut to_create {
        lease.owner = assign();
    }
    let created: Vec<Result<Option<String>, LeaseError>> = futures::stream::iter(to_create)
        .map(|lease| create_one(table, lease))
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    for outcome in created {
        if let Some(key) = outcome? {
            report.created.push(key);
        }
    }
    report.created.sort();
    if !report.created.is_empty() {
        info!(created = report.created.len(), "shard sync created leases");
    }
    Ok(report)
}

/// The shard leases of the stream `naming` keys, by shard id.
fn stream_leases<'a>(naming: &LeaseNaming, rows: &'a [Lease]) -> HashMap<&'a str, &'a Lease> {
    rows.iter()
        .filter_map(|l| naming.shard_id(&l.key).map(|shard| (shard, l)))
        .collect()
}

/// Creates `lease` unless it exists; its key if created.
async fn create_one(table: &dyn LeaseTable, lease: Lease) -> Result<Option<String>, LeaseError> {
    Ok(table.create_if_absent(&lease).await?.then_some(lease.key))
}

/// Deletes finished leases whose children all have leases that made progress and for which
/// `settled` holds (the worker passes "unchanged for twice the failover time"). Returns the keys
/// deleted. A lease changed since it was read (or already deleted) is left for the next call.
pub async fn remove_finished_leases(
    table: &dyn LeaseTable,
    settled: impl Fn(&Lease) -> bool,
) -> Result<Vec<String>, ShardSyncError> {
    let rows = table.list().await?;
    remove_finished_from(table, &LeaseNaming::Single, &rows, settled).await
}

/// [`remove_finished_leases`] from `rows`, the table as just read.
pub(crate) async fn remove_finished_from(
    table: &dyn LeaseTable,
    naming: &LeaseNaming,
    rows: &[Lease],
    settled: impl Fn(&Lease) -> bool,
) -> Result<Vec<String>, ShardSyncError> {
    let leases = stream_leases(naming, rows);
    let mut children: HashMap<&str, Vec<&Lease>> = HashMap::new();
    for lease in leases.values() {
        for parent in &lease.parent_shard_ids {
            children.entry(parent.as_str()).or_default().push(lease);
        }
    }
    let progressed = |child: &Lease| {
        matches!(
            child.checkpoint,
            ExtendedSequenceNumber::Sequence { .. } | ExtendedSequenceNumber::ShardEnd
        )
    };
    let mut finished: Vec<(&str, &Lease)> = leases
        .iter()
        .map(|(shard, l)| (*shard, *l))
        .filter(|(_, l)| l.is_finished() && settled(l))
        .collect();
    finished.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    let mut removed = Vec::new();
    for (shard, lease) in finished {
        let found = children.get(shard).cloned().unwrap_or_default();
        // Every child the lease names must be leased; at least one child must be known.
        let all_named_leased = lease
            .child_shard_ids
            .iter()
            .all(|c| leases.contains_key(c.as_str()));
        if found.is_empty() || !all_named_leased || !found.iter().all(|c| progressed(c)) {
            continue;
        }
        match table.delete(&lease.key, &lease.expectation()).await {
            Ok(()) => {
                info!(lease = %lease.key, "removed finished lease; its children are under way");
                removed.push(lease.key.clone());
            }
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(removed)
}

/// Deletes every lease of the stream `naming` keys, from `rows` (the table as just read), each
/// conditional on the lease as read: the former-streams strategies' deletion. A lease changed
/// since (or already gone) is left for the next call. Returns the keys deleted.
pub(crate) async fn remove_stream_leases(
    table: &dyn LeaseTable,
    naming: &LeaseNaming,
    rows: &[Lease],
) -> Result<Vec<String>, LeaseError> {
    let mut removed = Vec::new();
    for lease in stream_leases(naming, rows).into_values() {
        match table.delete(&lease.key, &lease.expectation()).await {
            Ok(()) => removed.push(lease.key.clone()),
            Err(LeaseError::ConditionFailed { .. }) | Err(LeaseError::NotFound(_)) => {}
            Err(error) => return Err(error),
        }
    }
    removed.sort();
    if !removed.is_empty() {
        info!(stream = ?naming.stream(), removed = removed.len(), "removed the leases of a former stream");
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{InMemoryLeaseTable, LeaseTableExt};
    use crate::model::{KinesisModel, ModelConfig};
    use crate::record::SequenceNumber;

    const STREAM: &str = "s";

    async fn keys(table: &InMemoryLeaseTable) -> Vec<String> {
        let mut keys: Vec<String> = table
            .list()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.heartbeat_of().is_none())
            .map(|l| l.key)
            .collect();
        keys.sort();
        keys
    }

    async fn finish(table: &InMemoryLeaseTable, key: &str) {
        let lease = table.get(key).await.unwrap().unwrap();
        table
            .checkpoint(&lease, ExtendedSequenceNumber::ShardEnd)
            .await
            .unwrap();
    }

    async fn progress(table: &InMemoryLeaseTable, key: &str) {
        let lease = table.get(key).await.unwrap().unwrap();
        let position = ExtendedSequenceNumber::Sequence {
            sequence: SequenceNumber::from_u128(1),
            sub_sequence: 0,
        };
        table.checkpoint(&lease, position).await.unwrap();
    }

    async fn sync(model: &KinesisModel, table: &InMemoryLeaseTable) -> Vec<String> {
        sync_shards(model, table, STREAM, InitialPosition::TrimHorizon)
            .await
            .unwrap()
            .created
    }

    fn middle(model: &KinesisModel, shard: &str) -> String {
        let range = model
            .shards(STREAM)
            .unwrap()
            .into_iter()
            .find(|s| s.shard_id == shard)
            .unwrap()
            .hash_key_range;
        (range.start + (range.end - range.start) / 2).to_string()
    }

    #[tokio::test]
    async fn children_wait_for_their_parents_and_holes_are_repaired() {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream(STREAM, 2).unwrap();
        let table = InMemoryLeaseTable::new();
        // A heartbeat row in the table changes nothing.
        table
            .create_if_absent(&Lease::worker_heartbeat("w"))
            .await
            .unwrap();
        assert_eq!(sync(&model, &table).await.len(), 2);
        let [a, b] = model
            .split_shard(
                STREAM,
                "shardId-000000000000",
                &middle(&model, "shardId-000000000000"),
            )
            .unwrap();
        // The parent is unfinished: its children get no lease yet.
        assert!(sync(&model, &table).await.is_empty());
        // The parent finished but its owner never created the children (a crash): repaired.
        finish(&table, "shardId-000000000000").await;
        let mut created = sync(&model, &table).await;
        created.sort();
        assert_eq!(created, [a.clone(), b.clone()]);
        let child = table.get(&a).await.unwrap().unwrap();
        assert_eq!(child.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        assert_eq!(child.parent_shard_ids, ["shardId-000000000000"]);
        assert!(child.hash_key_range.is_some());
        // Idempotent.
        assert!(sync(&model, &table).await.is_empty());
    }

    #[tokio::test]
    async fn each_stream_of_a_multi_stream_table_syncs_its_own_leases() {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream("a", 1).unwrap();
        model.create_stream("b", 2).unwrap();
        let table = InMemoryLeaseTable::new();
        let a = LeaseNaming::Multi("123456789012:a:1".into());
        let b = LeaseNaming::Multi("123456789012:b:1".into());
        let initial = InitialPosition::TrimHorizon;
        let created = sync_stream_shards(model.as_ref(), &table, "a", &a, initial)
            .await
            .unwrap();
        assert_eq!(created.created, ["123456789012:a:1:shardId-000000000000"]);
        // b's shard 0 shares its id with a's: a lease of its own all the same.
        let created = sync_stream_shards(model.as_ref(), &table, "b", &b, initial)
            .await
            .unwrap();
        assert_eq!(
            created.created,
            [
                "123456789012:b:1:shardId-000000000000",
                "123456789012:b:1:shardId-000000000001"
            ]
        );
        // A split in a: its children wait for a's parent only, and are keyed in a.
        let parent = "shardId-000000000000";
        let range = model.shards("a").unwrap()[0].hash_key_range;
        let [c1, c2] = model
            .split_shard(
                "a",
                parent,
                &(range.start + (range.end - range.start) / 2).to_string(),
            )
            .unwrap();
        finish(&table, "123456789012:b:1:shardId-000000000000").await;
        assert!(
            sync_stream_shards(model.as_ref(), &table, "a", &a, initial)
                .await
                .unwrap()
                .created
                .is_empty()
        );
        finish(&table, &a.lease_key(parent)).await;
        let created = sync_stream_shards(model.as_ref(), &table, "a", &a, initial)
            .await
            .unwrap();
        assert_eq!(created.created, [a.lease_key(&c1), a.lease_key(&c2)]);
        let child = table.get(&a.lease_key(&c1)).await.unwrap().unwrap();
        assert_eq!(child.parent_shard_ids, [parent]);
        // Cleanup sees lineage within the stream.
        progress(&table, &a.lease_key(&c1)).await;
        progress(&table, &a.lease_key(&c2)).await;
        let rows = table.list().await.unwrap();
        let removed = remove_finished_from(&table, &a, &rows, |_| true)
            .await
            .unwrap();
        assert_eq!(removed, [a.lease_key(parent)]);
        let rows = table.list().await.unwrap();
        assert!(
            remove_finished_from(&table, &b, &rows, |_| true)
                .await
                .unwrap()
                .is_empty(),
            "b's finished lease has no children"
        );
    }

    #[tokio::test]
    async fn a_merge_child_waits_for_both_parents() {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream(STREAM, 2).unwrap();
        let table = InMemoryLeaseTable::new();
        sync(&model, &table).await;
        let child = model
            .merge_shards(STREAM, "shardId-000000000000", "shardId-000000000001")
            .unwrap();
        finish(&table, "shardId-000000000000").await;
        assert!(
            sync(&model, &table).await.is_empty(),
            "one parent still open"
        );
        finish(&table, "shardId-000000000001").await;
        assert_eq!(sync(&model, &table).await, [child]);
    }

    #[tokio::test]
    async fn finished_leases_go_once_children_progressed_and_settled_and_never_come_back() {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream(STREAM, 1).unwrap();
        let table = InMemoryLeaseTable::new();
        sync(&model, &table).await;
        let parent = "shardId-000000000000";
        let [a, b] = model
            .split_shard(STREAM, parent, &middle(&model, parent))
            .unwrap();
        finish(&table, parent).await;
        sync(&model, &table).await;
        let always = |_: &Lease| true;
        // Children not started yet: the parent stays.
        assert!(
            remove_finished_leases(&table, always)
                .await
                .unwrap()
                .is_empty()
        );
        progress(&table, &a).await;
        assert!(
            remove_finished_leases(&table, always)
                .await
                .unwrap()
                .is_empty(),
            "one child still at TRIM_HORIZON"
        );
        progress(&table, &b).await;
        // Not settled yet (the worker waits twice the failover time): stays.
        assert!(
            remove_finished_leases(&table, |_| false)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            remove_finished_leases(&table, always).await.unwrap(),
            [parent]
        );
        // The shard is still in the stream, but a leased descendant means it is done.
        assert!(sync(&model, &table).await.is_empty());
        assert_eq!(keys(&table).await, [a, b]);
    }

    #[tokio::test]
    async fn a_removed_child_is_not_re_created_while_its_finished_parent_remains() {
        let model = KinesisModel::new(ModelConfig::unlimited());
        model.create_stream(STREAM, 1).unwrap();
        let table = InMemoryLeaseTable::new();
        sync(&model, &table).await;
        let root = "shardId-000000000000";
        let [a, b] = model
            .split_shard(STREAM, root, &middle(&model, root))
            .unwrap();
        finish(&table, root).await;
        sync(&model, &table).await;
        let [c, d] = model.split_shard(STREAM, &a, &middle(&model, &a)).unwrap();
        progress(&table, &b).await;
        finish(&table, &a).await;
        sync(&model, &table).await;
        progress(&table, &c).await;
        progress(&table, &d).await;
        // The root is not settled yet; its child `a` is: only `a` goes.
        let removed = remove_finished_leases(&table, |l| l.key != root)
            .await
            .unwrap();
        assert_eq!(removed, std::slice::from_ref(&a));
        // `a` has a finished leased parent, but leased children: it stays gone.
        assert!(sync(&model, &table).await.is_empty());
        assert!(!keys(&table).await.contains(&a));
    }
}
