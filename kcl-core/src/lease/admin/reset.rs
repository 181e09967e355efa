//! `reset`: moving checkpoints, planned first (what would change, and why), then applied with
//! conditional writes and, for leases live workers are processing, a cooperative handoff.
//!
//! **The plan** is what a fresh start of the application at the target would do, restricted to
//! the shards asked for and their descendants. The shards open at the target start there (a
//! lease is created for one that has none); their descendants go back to `TRIM_HORIZON` and,
//! their parents being unfinished again, wait for them (so resetting to a time before a split
//! re-opens the parent and blocks the children); shards closed before the target are skipped
//! (`SHARD_END`). A timestamp becomes the checkpoint of the last record that arrived before it,
//! so the first record delivered is the first one at or after it. A sequence number becomes the
//! checkpoint itself: delivery restarts after that record.
//!
//! **Applying** a change to a lease nobody processes (unowned, finished, blocked, or its owner
//! seen stale) is one write conditional on the lease as read. A lease a live worker processes is
//! handed over first, through the workers' own protocol: the tool asks for it as a stealing
//! worker would (it writes itself as owner and the worker as `checkpoint_owner`) and pokes the
//! worker, which finishes its batch, checkpoints and clears the marker; then the tool writes the
//! new checkpoint and gives the lease straight back to that worker (as a graceful shutdown gives
//! a lease to a successor) and pokes it: it restarts from the new position. If the worker does
//! not hand over within the wait, the lease is given back untouched and the reset stops.
//!
//! Two operators racing: both plan from a read, and every write is conditional on it, so for
//! each lease one write wins and the other run stops with [`AdminError::Raced`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use tracing::{debug, info};

use crate::backend::{Shard, ShardFilter, StreamBackend, list_all_shards};
use crate::record::{ExtendedSequenceNumber, SequenceNumber};
use crate::stream::LeaseNaming;

use super::super::{Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate, WORKER_KEY_PREFIX};
use super::describe::{LeaseState, state_of};
use super::watch::{WorkerView, watch_workers};
use super::{ADMIN_OWNER, AdminError, position, stream_error, streams};

/// Where to move the checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetTarget {
    /// The oldest retained record.
    TrimHorizon,
    /// After the newest record (skip everything not yet processed).
    Latest,
    /// The first record that arrived at or after this time.
    AtTimestamp(SystemTime),
    /// After this record (one shard).
    Sequence(SequenceNumber),
}

impl fmt::Display for ResetTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TrimHorizon => f.write_str("trim-horizon"),
            Self::Latest => f.write_str("latest"),
            Self::AtTimestamp(at) => write!(f, "at-timestamp:{}", rfc3339(*at)),
            Self::Sequence(seq) => write!(f, "sequence:{seq}"),
        }
    }
}

/// `at` as RFC 3339 in UTC with milliseconds (`2026-12-03T09:00:00.000Z`), as operators wrote it.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// What to reset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetRequest {
    /// The target position.
    pub target: ResetTarget,
    /// The shards to reset (their descendants follow); empty for all.
    pub shards: Vec<String>,
}

/// Why a lease is in the plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The shard starts at the target.
    Target,
    /// A descendant of a shard that starts again: back to `TRIM_HORIZON`, waiting for its parents.
    DescendantWaits,
    /// Closed before the target: skipped, as a fresh start would.
    ClosedBefore,
}

impl Reason {
    /// A short explanation.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Target => "target",
            Self::DescendantWaits => "child of a reset shard: waits for its parents",
            Self::ClosedBefore => "closed before the target: skipped",
        }
    }
}

/// One planned change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The lease key (the shard id in a single-stream table).
    pub key: String,
    /// The shard id.
    pub shard: String,
    /// The checkpoint now; `None` when the lease does not exist and will be created.
    pub from: Option<ExtendedSequenceNumber>,
    /// The checkpoint after the reset.
    pub to: ExtendedSequenceNumber,
    /// Why.
    pub reason: Reason,
    /// The owner now.
    pub owner: Option<String>,
    /// A live worker processes the lease: it will be handed over cooperatively first.
    pub handoff: bool,
    /// The lease as read (the condition of the write).
    lease: Option<Lease>,
    /// Parents, for a lease to create.
    parents: Vec<String>,
    depth: usize,
}

/// A reset plan: print it (`--dry-run`) or [`apply`] it.
#[derive(Clone, Debug)]
pub struct ResetPlan {
    /// The request it was made for.
    pub request: ResetRequest,
    /// The changes, parents before children (the order they are applied in).
    pub changes: Vec<Change>,
    /// How the stream's leases are keyed in the table.
    pub naming: LeaseNaming,
    view: WorkerView,
}

impl ResetPlan {
    /// The workers seen alive while planning that own a lease in the plan.
    pub fn live_owners(&self) -> BTreeSet<String> {
        self.changes
            .iter()
            .filter(|c| c.handoff)
            .filter_map(|c| c.owner.clone())
            .collect()
    }
}

/// Plans a reset of the leases in `table` of the stream `stream`: reads the shards (every shard,
/// and those open at the target), watches the workers for `watch`, and validates the request.
/// Writes nothing.
///
/// `stream` is a name, an ARN or a serialized `account:stream:creationEpoch`; in a multi-stream
/// table only that stream's leases are planned (see [`streams`]).
pub async fn plan(
    table: &dyn LeaseTable,
    backend: &dyn StreamBackend,
    stream: &str,
    request: ResetRequest,
    watch: Duration,
    now: SystemTime,
) -> Result<ResetPlan, AdminError> {
    if let ResetTarget::AtTimestamp(at) = &request.target
        && *at > now
    {
        return Err(AdminError::FutureTimestamp(request.target.to_string()));
    }
    if matches!(request.target, ResetTarget::Sequence(_)) && request.shards.len() != 1 {
        return Err(AdminError::SequenceNeedsOneShard);
    }
    let id = streams::parse(stream)?;
    let stream = id.name();
    let all = list_all_shards(backend, stream, None)
        .await
        .map_err(stream_error(stream))?;
    let shards: BTreeMap<&str, &Shard> = all.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    for shard in &request.shards {
        if !shards.contains_key(shard.as_str()) {
            return Err(AdminError::UnknownShard {
                shard: shard.clone(),
                stream: stream.to_owned(),
            });
        }
    }
    // The shards a fresh start at the target begins with, and where.
    let starts: Vec<(String, ExtendedSequenceNumber)> = match &request.target {
        ResetTarget::Sequence(seq) => {
            let shard = &request.shards[0];
            position::check_sequence(backend, stream, shard, seq).await?;
            vec![(
                shard.clone(),
                ExtendedSequenceNumber::Sequence {
                    sequence: seq.clone(),
                    sub_sequence: position::WHOLE_RECORD,
                },
            )]
        }
        target => {
            let filter = match target {
                ResetTarget::TrimHorizon => ShardFilter::AtTrimHorizon,
                ResetTarget::Latest => ShardFilter::AtLatest,
                ResetTarget::AtTimestamp(at) => ShardFilter::AtTimestamp(*at),
                ResetTarget::Sequence(_) => unreachable_filter(),
            };
            let open = list_all_shards(backend, stream, Some(filter))
                .await
                .map_err(stream_error(stream))?;
            let mut starts = Vec::new();
            for shard in open {
                let to = match target {
                    ResetTarget::TrimHorizon => ExtendedSequenceNumber::TrimHorizon,
                    ResetTarget::Latest => ExtendedSequenceNumber::Latest,
                    ResetTarget::AtTimestamp(at) => {
                        position::checkpoint_before(backend, stream, &shard.shard_id, *at).await?
                    }
                    ResetTarget::Sequence(_) => continue,
                };
                starts.push((shard.shard_id, to));
            }
            starts
        }
    };
    let view = watch_workers(table, watch).await?;
    let naming = streams::naming_for(&view, &id)?;
    let changes = changes_for(&request, &shards, &starts, &view, &naming);
    Ok(ResetPlan {
        request,
        changes,
        naming,
        view,
    })
}

// `ResetTarget::Sequence` never lists shards: it is handled before.
fn unreachable_filter() -> ShardFilter {
    ShardFilter::AtLatest
}

/// The pure part of [`plan`]: from the shards, where the starting ones start, and the table.
fn changes_for(
    request: &ResetRequest,
    shards: &BTreeMap<&str, &Shard>,
    starts: &[(String, ExtendedSequenceNumber)],
    view: &WorkerView,
    naming: &LeaseNaming,
) -> Vec<Change> {
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for shard in shards.values() {
        for parent in shard.parents() {
            children.entry(parent).or_default().push(&shard.shard_id);
        }
    }
    let descendants = |roots: &mut dyn Iterator<Item = &str>| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = roots.collect();
        while let Some(id) = todo.pop() {
            for child in children.get(id).into_iter().flatten() {
                if seen.insert((*child).to_owned()) {
                    todo.push(child);
                }
            }
        }
        seen
    };
    let depth = |id: &str| {
        let mut depth = 0;
        let mut level: Vec<&str> = vec![id];
        while !level.is_empty() && depth < 10_000 {
            level = level
                .iter()
                .filter_map(|s| shards.get(s))
                .flat_map(|s| s.parents())
                .collect();
            if !level.is_empty() {
                depth += 1;
            }
        }
        depth
    };
    let start_ids: BTreeSet<&str> = starts.iter().map(|(id, _)| id.as_str()).collect();
    let after_start = descendants(&mut start_ids.iter().copied());
    let mut target: BTreeMap<String, (ExtendedSequenceNumber, Reason)> = BTreeMap::new();
    for (id, to) in starts {
        target.insert(id.clone(), (to.clone(), Reason::Target));
    }
    for id in &after_start {
        target
            .entry(id.clone())
            .or_insert((ExtendedSequenceNumber::TrimHorizon, Reason::DescendantWaits));
    }
    if !matches!(request.target, ResetTarget::Sequence(_)) {
        for id in shards.keys() {
            target
                .entry((*id).to_owned())
                .or_insert((ExtendedSequenceNumber::ShardEnd, Reason::ClosedBefore));
        }
    }
    let scope: Option<BTreeSet<String>> = (!request.shards.is_empty()).then(|| {
        let mut scope = descendants(&mut request.shards.iter().map(String::as_str));
        scope.extend(request.shards.iter().cloned());
        scope
    });
    // This stream's leases by shard id, and every lease by key (for the states).
    let by_key: BTreeMap<&str, &Lease> = view.leases().map(|l| (l.key.as_str(), l)).collect();
    let leases: BTreeMap<&str, &Lease> = view
        .leases()
        .filter_map(|l| naming.shard_id(&l.key).map(|shard| (shard, l)))
        .collect();
    let mut changes = Vec::new();
    for (id, (to, reason)) in target {
        if scope.as_ref().is_some_and(|s| !s.contains(&id)) {
            continue;
        }
        let lease = leases.get(id.as_str()).copied();
        match lease {
            // A lease created for a shard closed before the target would only be finished.
            None if reason != Reason::Target => continue,
            Some(l) if l.checkpoint == to => continue,
            _ => {}
        }
        let handoff = lease.is_some_and(|l| {
            let processed = matches!(
                state_of(l, &by_key),
                LeaseState::Open | LeaseState::HandoffPending
            );
            processed && l.owner.as_deref().is_some_and(|o| view.is_alive(o))
        });
        let parents = shards
            .get(id.as_str())
            .map(|s| s.parents().map(str::to_owned).collect())
            .unwrap_or_default();
        changes.push(Change {
            depth: depth(&id),
            key: naming.lease_key(&id),
            shard: id,
            from: lease.map(|l| l.checkpoint.clone()),
            to,
            reason,
            owner: lease.and_then(|l| l.owner.clone()),
            handoff,
            lease: lease.cloned(),
            parents,
        });
    }
    changes.sort_by(|a, b| a.depth.cmp(&b.depth).then_with(|| a.key.cmp(&b.key)));
    changes
}

/// How [`apply`] writes.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// The owner name written while a lease is handed to the tool (default [`ADMIN_OWNER`]).
    pub admin_id: String,
    /// How long to wait for each live owner to hand its lease over.
    pub wait: Duration,
    /// How often to look whether it did.
    pub poll: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            admin_id: ADMIN_OWNER.to_owned(),
            wait: Duration::from_secs(30),
            poll: Duration::from_millis(100),
        }
    }
}

/// One change written by [`apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The lease key.
    pub key: String,
    /// The checkpoint written.
    pub to: ExtendedSequenceNumber,
    /// The live worker that handed the lease over (and got it back), if any.
    pub handed_over_by: Option<String>,
}

fn raced(key: &str, changed: &[Applied]) -> AdminError {
    AdminError::Raced {
        key: key.to_owned(),
        changed: changed.iter().map(|a| a.key.clone()).collect(),
    }
}

/// Applies `plan`, parents before children; stops at the first lease it cannot write, naming it
/// and the leases already reset.
pub async fn apply(
    table: &dyn LeaseTable,
    plan: &ResetPlan,
    options: &ApplyOptions,
) -> Result<Vec<Applied>, AdminError> {
    let mut done: Vec<Applied> = Vec::new();
    for change in &plan.changes {
        let applied = match &change.lease {
            None => {
                let lease =
                    Lease::new(&change.key, change.to.clone()).with_parents(change.parents.clone());
                if !table.create_if_absent(&lease).await? {
                    return Err(raced(&change.key, &done));
                }
                Applied {
                    key: change.key.clone(),
                    to: change.to.clone(),
                    handed_over_by: None,
                }
            }
            Some(lease) if change.handoff => {
                handoff_and_write(table, lease, &change.to, options, &done).await?
            }
            Some(lease) => {
                write(table, lease, &change.to, None, &done).await?;
                Applied {
                    key: change.key.clone(),
                    to: change.to.clone(),
                    handed_over_by: None,
                }
            }
        };
        info!(lease = %applied.key, to = %applied.to, by = ?applied.handed_over_by, "checkpoint reset");
        done.push(applied);
    }
    // Every live worker reads the table now: leases given back, parents re-opened, leases created.
    for worker in &plan.view.workers {
        if plan.view.is_alive(&worker.id) && plan.view.has_heartbeat_row(&worker.id) {
            poke(table, &worker.id).await;
        }
    }
    Ok(done)
}

/// The checkpoint write: conditional on `lease` as read; the lease goes to `owner` when given.
async fn write(
    table: &dyn LeaseTable,
    lease: &Lease,
    to: &ExtendedSequenceNumber,
    owner: Option<&str>,
    done: &[Applied],
) -> Result<Lease, AdminError> {
    let mut update = LeaseUpdate::checkpoint(to.clone(), None);
    if let Some(owner) = owner {
        update.owner = Some(Some(owner.to_owned()));
        update.increment_owner_switches = true;
    }
    match table
        .update(&lease.key, &lease.expectation(), &update)
        .await
    {
        Ok(written) => Ok(written),
        Err(LeaseError::ConditionFailed { .. } | LeaseError::NotFound(_)) => {
            Err(raced(&lease.key, done))
        }
        Err(error) => Err(error.into()),
    }
}

async fn poke(table: &dyn LeaseTable, worker: &str) {
    let key = format!("{WORKER_KEY_PREFIX}{worker}");
    if let Err(error) = table
        .update(&key, &Expectation::default(), &LeaseUpdate::poke())
        .await
    {
        debug!(worker, %error, "could not poke worker");
    }
}

async fn handoff_and_write(
    table: &dyn LeaseTable,
    lease: &Lease,
    to: &ExtendedSequenceNumber,
    options: &ApplyOptions,
    done: &[Applied],
) -> Result<Applied, AdminError> {
    let owner = lease.owner.clone().unwrap_or_default();
    if let Some(from) = &lease.checkpoint_owner {
        return Err(AdminError::HandoffInProgress {
            key: lease.key.clone(),
            from: from.clone(),
            to: owner,
            changed: done.iter().map(|a| a.key.clone()).collect(),
        });
    }
    let requested = match table
        .update(
            &lease.key,
            &lease.expectation(),
            &LeaseUpdate::request_handoff(lease, &options.admin_id),
        )
        .await
    {
        Ok(written) => written,
        Err(LeaseError::ConditionFailed { .. } | LeaseError::NotFound(_)) => {
            return Err(raced(&lease.key, done));
        }
        Err(error) => return Err(error.into()),
    };
    poke(table, &owner).await;
    let deadline = tokio::time::Instant::now() + options.wait;
    let mut current = requested;
    loop {
        if current.owner.as_deref() != Some(options.admin_id.as_str()) {
            // Someone else took it (another operator, or a worker that judged the tool's
            // claim expired): the reset of this lease is theirs now.
            return Err(raced(&lease.key, done));
        }
        if current.checkpoint_owner.is_none() {
            let written = write(table, &current, to, Some(&owner), done).await?;
            poke(table, &owner).await;
            debug!(lease = %written.key, to = %owner, "reset lease given back");
            return Ok(Applied {
                key: lease.key.clone(),
                to: to.clone(),
                handed_over_by: Some(owner),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            match give_back(table, current, &owner, options).await? {
                Some(handed_over) => {
                    current = handed_over;
                    continue;
                }
                None => {
                    return Err(AdminError::HandoffTimedOut {
                        key: lease.key.clone(),
                        owner,
                        wait: options.wait,
                        changed: done.iter().map(|a| a.key.clone()).collect(),
                    });
                }
            }
        }
        tokio::time::sleep(options.poll).await;
        current = match table.get(&lease.key).await? {
            Some(lease) => lease,
            None => return Err(raced(&lease.key, done)),
        };
    }
}

/// After a handoff that did not come in time: the lease back in its owner's name, the marker
/// still naming it (as a stealer that gives up returns it; the owner never stopped holding it).
/// Retried on a condition failure (the owner renewing meanwhile). Returns the lease when the
/// owner handed it over after all (then its reset is completed), `None` once given back or
/// taken by someone else.
async fn give_back(
    table: &dyn LeaseTable,
    mut current: Lease,
    owner: &str,
    options: &ApplyOptions,
) -> Result<Option<Lease>, AdminError> {
    for _ in 0..20 {
        if current.owner.as_deref() != Some(options.admin_id.as_str()) {
            return Ok(None);
        }
        if current.checkpoint_owner.is_none() {
            return Ok(Some(current));
        }
        let back = LeaseUpdate {
            owner: Some(Some(owner.to_owned())),
            increment_owner_switches: true,
            ..LeaseUpdate::default()
        };
        match table
            .update(&current.key, &current.expectation(), &back)
            .await
        {
            Ok(_) => return Ok(None),
            Err(LeaseError::ConditionFailed { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        current = match table.get(&current.key).await? {
            Some(lease) => lease,
            None => return Ok(None),
        };
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339() {
        let at = |secs: u64, millis: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(4_070_908_800, 0)), "2099-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(1_796_288_461, 250)), "2026-12-03T09:01:01.250Z");
    }
}
