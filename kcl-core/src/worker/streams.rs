//! The streams a worker consumes: one stream (the usual single-stream worker, plain lease keys),
//! or a tracked set of streams sharing one lease table ([`MultiStreamTracker`]), each with its
//! own initial position and retrieval settings and its leases keyed
//! `account:stream:creationEpoch:shardId` as Java KCL does.
//!
//! At run time the worker keeps a [`StreamSet`]: the tracked streams resolved to their full
//! identity (a name or ARN is completed from `DescribeStreamSummary`; a serialized
//! `account:stream:creationEpoch` is used as given, so a Java table resumes exactly), re-read
//! every [`MultiStreamTracker::interval`]. A held lease finds its stream through its key; a
//! lease of a stream no longer (or not yet) tracked is processed with the worker's defaults, so
//! nothing is left unprocessed while the former-streams strategy decides about it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::backend::{BackendError, StreamBackend};
use crate::lease::Lease;
use crate::metrics::{MetricsLevel, Scope};
use crate::processor::BoxError;
use crate::retrieval::{ConsumerRegistry, Retrieval};
use crate::shard_sync::{InitialPosition, SyncTarget};
use crate::stream::{LeaseNaming, StreamIdError, StreamIdentifier};

/// One stream of a multi-stream worker, with its own settings (the worker's where `None`).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream: by name, ARN, or serialized `account:stream:creationEpoch`.
    pub stream: StreamIdentifier,
    /// Where its new leases start (default: the worker's initial position).
    pub initial_position: Option<InitialPosition>,
    /// How its records are read (default: the worker's retrieval). With fan-out, the stream
    /// consumer is registered on this stream.
    pub retrieval: Option<Retrieval>,
}

impl StreamConfig {
    /// A stream with the worker's settings.
    pub fn new(stream: StreamIdentifier) -> Self {
        Self {
            stream,
            initial_position: None,
            retrieval: None,
        }
    }

    /// Parses `stream` (a name, an ARN or `account:stream:creationEpoch`).
    pub fn parse(stream: &str) -> Result<Self, StreamIdError> {
        Ok(Self::new(stream.parse()?))
    }

    /// Where this stream's new leases start.
    pub fn initial_position(mut self, position: InitialPosition) -> Self {
        self.initial_position = Some(position);
        self
    }

    /// How this stream is read.
    pub fn retrieval(mut self, retrieval: Retrieval) -> Self {
        self.retrieval = Some(retrieval);
        self
    }
}

/// The future a polled stream list returns.
pub type StreamListFuture = BoxFuture<'static, Result<Vec<StreamConfig>, BoxError>>;

type Lister = Arc<dyn Fn() -> StreamListFuture + Send + Sync>;

#[derive(Clone)]
enum Source {
    Static(Vec<StreamConfig>),
    Polled(Lister),
}

/// What happens to the leases of a stream that left the tracked set (Java KCL's
/// `FormerStreamsLeasesDeletionStrategy`).
#[derive(Clone)]
#[non_exhaustive]
pub enum FormerStreams {
    /// Keep them (Java's `NO_STREAMS_LEASES_DELETION`, the default): they stay in the table
    /// and are still processed; an operator deletes them.
    Keep,
    /// Delete the leases of every stream that has leases in the table but is no longer tracked,
    /// once it has been untracked for `wait` (Java's
    /// `FORMER_STREAMS_AUTO_DETECTION_DEFERRED_DELETION`).
    DeleteWhenUntracked {
        /// How long a stream must stay untracked before its leases go.
        wait: Duration,
    },
    /// Delete the leases of the streams the callback lists as former, once listed for `wait`
    /// (Java's `PROVIDED_STREAMS_DEFERRED_DELETION`); a listed stream that is still tracked
    /// keeps its leases.
    DeleteListed {
        /// How long a stream must be listed before its leases go.
        wait: Duration,
        /// The former streams, polled with the tracker's interval.
        list: Arc<dyn Fn() -> Vec<StreamIdentifier> + Send + Sync>,
    },
}

impl fmt::Debug for FormerStreams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keep => f.write_str("Keep"),
            Self::DeleteWhenUntracked { wait } => f
                .debug_struct("DeleteWhenUntracked")
                .field("wait", wait)
                .finish(),
            Self::DeleteListed { wait, .. } => f
                .debug_struct("DeleteListed")
                .field("wait", wait)
                .finish_non_exhaustive(),
        }
    }
}

/// The streams of a multi-stream worker: a static list, or a callback polled every
/// [`interval`](Self::interval) (default 60 s, as Java KCL), so streams can be added and removed
/// while the worker runs.
#[derive(Clone)]
pub struct MultiStreamTracker {
    source: Source,
    interval: Duration,
    former: FormerStreams,
}

impl fmt::Debug for MultiStreamTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MultiStreamTracker");
        match &self.source {
            Source::Static(list) => d.field("streams", list),
            Source::Polled(_) => d.field("streams", &"<callback>"),
        };
        d.field("interval", &self.interval)
            .field("former", &self.former)
            .finish()
    }
}

impl MultiStreamTracker {
    /// A fixed set of streams.
    pub fn new(streams: impl IntoIterator<Item = StreamConfig>) -> Self {
        Self {
            source: Source::Static(streams.into_iter().collect()),
            interval: Duration::from_secs(60),
            former: FormerStreams::Keep,
        }
    }

    /// Streams listed by `list`, called at start and every interval. A failing call keeps the
    /// streams of the last successful one (and is logged).
    pub fn polled<L, Fut>(list: L) -> Self
    where
        L: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<StreamConfig>, BoxError>> + Send + 'static,
    {
        let list: Lister = Arc::new(move || Box::pin(list()) as StreamListFuture);
        Self {
            source: Source::Polled(list),
            interval: Duration::from_secs(60),
            former: FormerStreams::Keep,
        }
    }

    /// How often the streams are re-read (default 60 s).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// What happens to the leases of streams that left the set (default
    /// [`FormerStreams::Keep`]).
    pub fn former_streams(mut self, strategy: FormerStreams) -> Self {
        self.former = strategy;
        self
    }

    /// The re-read interval.
    pub fn tracker_interval(&self) -> Duration {
        self.interval
    }

    /// The former-streams strategy.
    pub fn former_strategy(&self) -> &FormerStreams {
        &self.former
    }

    /// The configured static list, if this tracker has one.
    pub(crate) fn static_streams(&self) -> Option<&[StreamConfig]> {
        match &self.source {
            Source::Static(list) => Some(list),
            Source::Polled(_) => None,
        }
    }

    async fn list(&self) -> Result<Vec<StreamConfig>, BoxError> {
        match &self.source {
            Source::Static(list) => Ok(list.clone()),
            Source::Polled(list) => list().await,
        }
    }
}

/// One stream as the worker runs it.
#[derive(Debug)]
pub(crate) struct StreamContext {
    /// The stream name the backend knows.
    pub name: String,
    /// How its leases are keyed.
    pub naming: LeaseNaming,
    /// Where its new leases start.
    pub initial_position: InitialPosition,
    /// How its records are read.
    pub retrieval: Retrieval,
    /// Its fan-out consumer, registered on this stream.
    pub consumers: Arc<ConsumerRegistry>,
    /// Its metric labels.
    pub scope: Scope,
}

/// The worker's defaults for streams without settings of their own.
#[derive(Clone, Debug)]
pub(crate) struct Defaults {
    pub initial_position: InitialPosition,
    pub retrieval: Retrieval,
    pub metrics_level: MetricsLevel,
    pub worker_id: String,
}

/// The streams a worker consumes now.
#[derive(Debug)]
pub(crate) struct StreamSet {
    tracker: Option<MultiStreamTracker>,
    defaults: Defaults,
    /// The tracked streams by lease naming (single-stream: the one stream).
    current: Mutex<BTreeMap<LeaseNaming, Arc<StreamContext>>>,
    /// The last resolution of each name and ARN, used while describing it fails.
    resolved: Mutex<BTreeMap<StreamIdentifier, StreamIdentifier>>,
    /// The creation time (epoch seconds) first described for each serialized identifier
    /// tracked (`account:stream:creationEpoch`).
    first_seen: Mutex<BTreeMap<String, u64>>,
    /// Serialized identifiers whose stream was deleted and created again under its name (the
    /// described creation time changed): never synced nor consumed again.
    recreated: Mutex<BTreeSet<LeaseNaming>>,
    /// The streams the last refresh listed that could not be resolved (described as not
    /// existing, say): still listed, so their leases are no former stream's.
    listed_unresolved: Mutex<Vec<StreamIdentifier>>,
    /// Contexts made for leases of untracked streams.
    untracked: Mutex<BTreeMap<LeaseNaming, Arc<StreamContext>>>,
    /// Former-streams strategies: since when each stream with leases has been a candidate for
    /// deletion (untracked, or listed as former), on this worker's clock.
    former: Mutex<BTreeMap<LeaseNaming, Instant>>,
    /// Whether the last refresh knew every tracked stream (the list answered and every stream
    /// was resolved or is gone): deletions wait while it did not.
    complete: std::sync::atomic::AtomicBool,
}

impl StreamSet {
    /// The one stream of a single-stream worker.
    pub(crate) fn single(stream: &str, defaults: Defaults) -> Self {
        let context = Arc::new(StreamContext {
            name: stream.to_owned(),
            naming: LeaseNaming::Single,
            initial_position: defaults.initial_position,
            retrieval: defaults.retrieval.clone(),
            consumers: Arc::default(),
            scope: Scope::new(defaults.metrics_level, stream, &defaults.worker_id),
        });
        Self {
            tracker: None,
            defaults,
            current: Mutex::new(BTreeMap::from([(LeaseNaming::Single, context)])),
            resolved: Mutex::default(),
            first_seen: Mutex::default(),
            recreated: Mutex::default(),
            listed_unresolved: Mutex::default(),
            untracked: Mutex::default(),
            former: Mutex::default(),
            complete: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A multi-stream worker's set, empty until [`Self::refresh`].
    pub(crate) fn multi(tracker: MultiStreamTracker, defaults: Defaults) -> Self {
        Self {
            tracker: Some(tracker),
            defaults,
            current: Mutex::default(),
            resolved: Mutex::default(),
            first_seen: Mutex::default(),
            recreated: Mutex::default(),
            listed_unresolved: Mutex::default(),
            untracked: Mutex::default(),
            former: Mutex::default(),
            complete: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The tracker, for a multi-stream worker.
    pub(crate) fn tracker(&self) -> Option<&MultiStreamTracker> {
        self.tracker.as_ref()
    }

    /// Re-reads the tracked streams (multi-stream only): lists them, resolves new names and ARNs
    /// through `DescribeStreamSummary`, and replaces the set. A stream that cannot be resolved
    /// is left out this time (logged; a missing stream is not an error of the worker's); a
    /// failing list keeps the set as it was. Returns whether the set changed.
    pub(crate) async fn refresh(&self, backend: &dyn StreamBackend) -> Result<bool, BoxError> {
        let Some(tracker) = &self.tracker else {
            return Ok(false);
        };
        let configs = match tracker.list().await {
            Ok(configs) => configs,
            Err(error) => {
                self.complete.store(false, Ordering::SeqCst);
                return Err(error);
            }
        };
        let mut next: BTreeMap<LeaseNaming, Arc<StreamContext>> = BTreeMap::new();
        let mut complete = true;
        let mut unresolved = Vec::new();
        for config in configs {
            let id = match self.resolve(backend, &config.stream).await {
                Ok(id) => id,
                Err(error) => {
                    // A stream that does not exist is known to be gone; any other failure
                    // leaves the set incomplete.
                    let gone = matches!(
                        error,
                        ResolveError::Backend(BackendError::ResourceNotFound(_))
                            | ResolveError::Recreated(_)
                    );
                    complete &= gone;
                    unresolved.push(config.stream.clone());
                    warn!(stream = %config.stream, %error, "cannot resolve a tracked stream; left out for now");
                    continue;
                }
            };
            let naming = match LeaseNaming::multi(&id) {
                Ok(naming) => naming,
                Err(error) => {
                    warn!(stream = %id, %error, "tracked stream without account or creation epoch");
                    continue;
                }
            };
            let existing = lock(&self.current).get(&naming).cloned();
            let initial = config
                .initial_position
                .unwrap_or(self.defaults.initial_position);
            let retrieval = config
                .retrieval
                .clone()
                .unwrap_or_else(|| self.defaults.retrieval.clone());
            let context = match existing {
                Some(c) if c.initial_position == initial && c.retrieval == retrieval => c,
                _ => Arc::new(self.context(id.name(), naming.clone(), initial, retrieval)),
            };
            next.insert(naming, context);
        }
        let mut current = lock(&self.current);
        let changed = current.keys().ne(next.keys());
        if changed {
            info!(streams = ?next.keys().filter_map(LeaseNaming::stream).collect::<Vec<_>>(), "tracked streams");
        }
        *current = next;
        *lock(&self.listed_unresolved) = unresolved;
        self.complete.store(complete, Ordering::SeqCst);
        Ok(changed)
    }

    /// The former streams whose leases are due for deletion under the tracker's strategy,
    /// from `rows` (the table as just read) at `now`: streams with leases that are candidates
    /// (untracked, or listed as former and untracked) and have been for the strategy's wait.
    /// Nothing while the last refresh was incomplete (a failing list or describe must not
    /// look like streams leaving).
    pub(crate) fn former_due(&self, rows: &[Lease], now: Instant) -> Vec<LeaseNaming> {
        let Some(tracker) = &self.tracker else {
            return Vec::new();
        };
        let (wait, listed) = match &tracker.former {
            FormerStreams::Keep => return Vec::new(),
            FormerStreams::DeleteWhenUntracked { wait } => (*wait, None),
            FormerStreams::DeleteListed { wait, list } => (*wait, Some(list())),
        };
        if !self.complete.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let current = lock(&self.current);
        let with_leases: BTreeSet<LeaseNaming> = rows
            .iter()
            .filter(|l| l.heartbeat_of().is_none())
            .map(|l| LeaseNaming::of_key(&l.key))
            .filter(|n| *n != LeaseNaming::Single && !current.contains_key(n))
            .collect();
        drop(current);
        // Still listed (though not resolved now): not former, whatever the strategy.
        let unresolved = lock(&self.listed_unresolved).clone();
        let with_leases: BTreeSet<LeaseNaming> = with_leases
            .into_iter()
            .filter(|naming| {
                let Some(Ok(id)) = naming.stream().map(StreamIdentifier::parse_serialized) else {
                    return true;
                };
                !unresolved.iter().any(|listed| names_stream(listed, &id))
            })
            .collect();
        let candidates: BTreeSet<LeaseNaming> = match listed {
            None => with_leases,
            Some(listed) => with_leases
                .into_iter()
                .filter(|naming| {
                    let Some(Ok(id)) = naming.stream().map(StreamIdentifier::parse_serialized)
                    else {
                        return false;
                    };
                    listed.iter().any(|former| names_stream(former, &id))
                })
                .collect(),
        };
        let mut former = lock(&self.former);
        former.retain(|naming, _| candidates.contains(naming));
        candidates
            .into_iter()
            .filter(|naming| {
                let since = *former.entry(naming.clone()).or_insert(now);
                now.saturating_duration_since(since) >= wait
            })
            .collect()
    }

    fn context(
        &self,
        name: &str,
        naming: LeaseNaming,
        initial_position: InitialPosition,
        retrieval: Retrieval,
    ) -> StreamContext {
        StreamContext {
            name: name.to_owned(),
            naming,
            initial_position,
            retrieval,
            consumers: Arc::default(),
            scope: Scope::new(self.defaults.metrics_level, name, &self.defaults.worker_id),
        }
    }

    async fn resolve(
        &self,
        backend: &dyn StreamBackend,
        given: &StreamIdentifier,
    ) -> Result<StreamIdentifier, ResolveError> {
        // Java's serialized identifiers name the exact stream (incarnation): described too, so
        // that a stream deleted and created again under the name is not read through them.
        if given.is_resolved() {
            return self.check_serialized(backend, given).await;
        }
        // Described at every refresh: a stream deleted and created again under its name is a
        // new stream (a new creation epoch), whose leases start afresh.
        let description = match backend.describe_stream(given.name()).await {
            Ok(description) => description,
            Err(error) => {
                return match lock(&self.resolved).get(given) {
                    // Not gone for sure: keep the last resolution meanwhile.
                    Some(id) if !matches!(error, BackendError::ResourceNotFound(_)) => {
                        Ok(id.clone())
                    }
                    _ => Err(error.into()),
                };
            }
        };
        let id = given.resolve(&description)?;
        lock(&self.resolved).insert(given.clone(), id.clone());
        Ok(id)
    }

    /// Checks a serialized identifier against the stream its name describes now. The creation
    /// epoch it carries need not be the described creation time (Java tables may carry made-up
    /// epochs: warned about once); the first creation time described is remembered, and a later
    /// different one means the identifier's stream was deleted and the name reused: the
    /// identifier is refused from then on (its leases are neither synced nor consumed).
    async fn check_serialized(
        &self,
        backend: &dyn StreamBackend,
        given: &StreamIdentifier,
    ) -> Result<StreamIdentifier, ResolveError> {
        let naming = LeaseNaming::multi(given)?;
        let serialized = given.serialize()?;
        if lock(&self.recreated).contains(&naming) {
            return Err(ResolveError::Recreated(serialized));
        }
        let description = match backend.describe_stream(given.name()).await {
            Ok(description) => description,
            // Not known to be another stream: used as given meanwhile.
            Err(_) => return Ok(given.clone()),
        };
        let described = StreamIdentifier::parse_arn(&description.arn)?;
        if described.account_id() != given.account_id() {
            return Err(ResolveError::ForeignAccount {
                given: serialized,
                described: description.arn,
            });
        }
        let created = description
            .created_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut first_seen = lock(&self.first_seen);
        let first = *first_seen.entry(serialized.clone()).or_insert_with(|| {
            if given.creation_epoch() != Some(created) {
                warn!(stream = %serialized, described_epoch = created, "the stream's creation time differs from the epoch its identifier carries; tracking the stream described now");
            }
            created
        });
        drop(first_seen);
        if first != created {
            error!(stream = %serialized, first_epoch = first, described_epoch = created, "the stream was deleted and created again under its name; its identifier names the stream that is gone: no longer synced nor consumed");
            Scope::new(
                self.defaults.metrics_level,
                given.name(),
                &self.defaults.worker_id,
            )
            .stream_recreated()
            .increment(1);
            lock(&self.recreated).insert(naming);
            return Err(ResolveError::Recreated(serialized));
        }
        Ok(given.clone())
    }

    /// The streams to sync, in a stable order.
    pub(crate) fn targets(&self) -> Vec<SyncTarget> {
        lock(&self.current)
            .values()
            .map(|c| SyncTarget {
                stream: c.name.clone(),
                naming: c.naming.clone(),
                initial: c.initial_position,
            })
            .collect()
    }

    /// Whether this worker can process the lease `key` (what [`Self::for_key`] reads), without
    /// making a context for it: the lease filter of the worker's coordinator.
    pub(crate) fn accepts(&self, key: &str) -> bool {
        if self.tracker.is_none() {
            return LeaseNaming::Single.shard_id(key).is_some();
        }
        let Ok((id, _)) = StreamIdentifier::parse_lease_key(key) else {
            return false;
        };
        let Ok(naming) = LeaseNaming::multi(&id) else {
            return false;
        };
        if lock(&self.recreated).contains(&naming) {
            return false;
        }
        let current = lock(&self.current);
        current.contains_key(&naming)
            || !current
                .keys()
                .filter_map(LeaseNaming::stream)
                .any(|s| same_stream_name(s, &id))
    }

    /// The stream of the lease `key` and the shard id within it. `None` for a key this worker
    /// cannot read as a lease of its streams (a plain shard id in a multi-stream table, a
    /// multi-stream key in a single-stream one).
    pub(crate) fn for_key(&self, key: &str) -> Result<(Arc<StreamContext>, String), Unreadable> {
        if self.tracker.is_none() {
            let context = lock(&self.current)
                .get(&LeaseNaming::Single)
                .cloned()
                .ok_or(Unreadable::NotOurs)?;
            let shard = LeaseNaming::Single
                .shard_id(key)
                .ok_or(Unreadable::NotOurs)?
                .to_owned();
            return Ok((context, shard));
        }
        let (id, shard) =
            StreamIdentifier::parse_lease_key(key).map_err(|_| Unreadable::NotOurs)?;
        let naming = LeaseNaming::multi(&id).map_err(|_| Unreadable::NotOurs)?;
        let shard = shard.to_owned();
        if lock(&self.recreated).contains(&naming) {
            return Err(Unreadable::Recreated);
        }
        let current = lock(&self.current);
        if let Some(context) = current.get(&naming) {
            return Ok((context.clone(), shard));
        }
        // The same stream name tracked under another creation epoch: this lease belongs to an
        // earlier incarnation of the stream, whose shards are gone. Reading "its" shard would
        // read the new stream's: never.
        if let Some(newer) = current
            .keys()
            .filter_map(LeaseNaming::stream)
            .find(|s| same_stream_name(s, &id))
        {
            return Err(Unreadable::FormerIncarnation(newer.to_owned()));
        }
        drop(current);
        // A lease of a stream not tracked (any more, or yet): processed with the defaults.
        let mut untracked = lock(&self.untracked);
        let context = untracked
            .entry(naming.clone())
            .or_insert_with(|| {
                Arc::new(self.context(
                    id.name(),
                    naming,
                    self.defaults.initial_position,
                    self.defaults.retrieval.clone(),
                ))
            })
            .clone();
        Ok((context, shard))
    }
}

/// Why a held lease is not processed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unreadable {
    /// Its key names no shard of this worker's streams (a single-stream key in a multi-stream
    /// table, or the reverse).
    #[error(
        "its key names no shard of this worker's streams (a single-stream key in a multi-stream table, or the reverse)"
    )]
    NotOurs,
    /// It belongs to an earlier incarnation of a stream now tracked as this one.
    #[error(
        "it belongs to an earlier incarnation of a stream now tracked as {0} (deleted and created again)"
    )]
    FormerIncarnation(String),
    /// Its stream (named by a serialized identifier) was deleted and created again under its
    /// name: the shard it names is gone.
    #[error("its stream was deleted and created again under its name")]
    Recreated,
}

/// Whether the identifier a user listed (`former`) names the stream `id`: by serialized form
/// (account, name, creation epoch; not region nor partition, which keys do not carry) when it is
/// resolved, else by account (when given) and name, whatever the creation epoch.
fn names_stream(former: &StreamIdentifier, id: &StreamIdentifier) -> bool {
    if former.is_resolved() {
        return matches!((former.serialize(), id.serialize()), (Ok(a), Ok(b)) if a == b);
    }
    former.name() == id.name()
        && former
            .account_id()
            .is_none_or(|a| Some(a) == id.account_id())
}

/// Whether the serialized identifier `serialized` names the account and stream of `id`.
fn same_stream_name(serialized: &str, id: &StreamIdentifier) -> bool {
    StreamIdentifier::parse_serialized(serialized)
        .is_ok_and(|other| other.name() == id.name() && other.account_id() == id.account_id())
}

/// Why a tracked stream could not be resolved.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("describing the stream failed: {0}")]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Id(#[from] StreamIdError),
    #[error(
        "stream {0} was deleted and created again under its name: the identifier names the stream that is gone"
    )]
    Recreated(String),
    #[error(
        "stream {given} is in another account than the backend's ({described}); cross-account streams need an ARN the backend can read"
    )]
    ForeignAccount { given: String, described: String },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{StreamDescription, StreamStatus};

    /// A resolved identifier (with region and partition, from a description) names the
    /// stream parsed back from its lease keys (which carry neither).
    #[test]
    fn a_resolved_identifier_names_the_stream_of_its_lease_keys() {
        let description = StreamDescription {
            name: "orders".into(),
            arn: "arn:aws:kinesis:eu-west-1:123456789012:stream/orders".into(),
            status: StreamStatus::Active,
            retention: Duration::from_secs(86_400),
            open_shard_count: 1,
            created_at: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        };
        let listed = StreamIdentifier::from_name("orders")
            .unwrap()
            .resolve(&description)
            .unwrap();
        let key = listed.lease_key("shardId-000000000000").unwrap();
        let (from_key, _) = StreamIdentifier::parse_lease_key(&key).unwrap();
        assert!(names_stream(&listed, &from_key));
        let other = StreamIdentifier::parse_serialized("123456789012:orders:1700000001").unwrap();
        assert!(!names_stream(&listed, &other), "another incarnation");
    }
}
