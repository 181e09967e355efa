//! The worker: runs a processor per leased shard.
//!
//! A [`Worker`] is built with [`Worker::builder`] and driven by [`Worker::run`]. While running it
//!
//! - syncs shards into leases when it leads shard sync: at start, every `shard_sync_interval`,
//!   and right after a shard ends ([`crate::shard_sync`]);
//! - renews its claim (its heartbeat) on a task of its own, so slow scans or processors never
//!   delay renewals, and scans the table to take, steal and receive leases
//!   ([`crate::lease::coordinator`]);
//! - runs one consumer task per held lease (the `consumer` module): wait for parents, initialize, read,
//!   de-aggregate, process, checkpoint, and at the end of the shard create the children and record
//!   `SHARD_END`; when another worker asks for the lease, finish the batch, checkpoint and hand
//!   it over.
//!
//! [`WorkerHandle`] stops it: [`WorkerHandle::shutdown`] gracefully (in-flight batches finish,
//! `shutdown_requested`, final checkpoint, each lease handed to a live worker, which starts
//! right after that checkpoint) or [`WorkerHandle::shutdown_now`] immediately (processing
//! cancelled, leases released without a checkpoint).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::StreamBackend;
use crate::deaggregation::Deaggregator;
use crate::lease::LeaseTable;
use crate::lease::coordinator::{LeaseCoordinator, LeaseStats};
use crate::lease::held::{HeldLease, HeldStatus};
use crate::processor::ProcessorFactory;
use crate::record::ExtendedSequenceNumber;
use crate::sync::{Signal, Watch};

mod config;
mod consumer;

pub use config::{CheckpointCadence, ConfigError, WorkerBuilder, WorkerConfig};

/// How a worker is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shutdown {
    Running,
    /// A graceful shutdown was asked for: the worker announces it is leaving while its
    /// consumers keep processing, so the workers taking over are scanning fast when it hands
    /// over.
    Requested,
    /// Consumers finish their batch, checkpoint and hand over.
    Graceful,
    Immediate,
}

impl Shutdown {
    /// Whether consumers should stop.
    pub(crate) fn stops_consumers(self) -> bool {
        matches!(self, Self::Graceful | Self::Immediate)
    }
}

/// What a shard consumer is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardState {
    /// Waiting for parent shards to finish.
    WaitingOnParents,
    /// Calling `initialize`.
    Initializing,
    /// Reading and processing.
    Processing,
    /// A batch failed and is being retried.
    Retrying,
    /// The shard ended and `SHARD_END` was recorded.
    Ended,
    /// Stopped by the failure policy; the lease is kept.
    Stopped,
    /// Shut down (lease released) or lost.
    Finished,
}

/// A snapshot of one shard processed by this worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStatus {
    /// The shard id.
    pub shard_id: String,
    /// Current state.
    pub state: ShardState,
    /// User records processed successfully by this worker.
    pub records_processed: u64,
    /// Lag at the last fetch.
    pub millis_behind_latest: Option<u64>,
    /// Last checkpoint written by this worker.
    pub last_checkpoint: Option<ExtendedSequenceNumber>,
}

/// A snapshot of a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStatus {
    /// The worker id.
    pub worker_id: String,
    /// Shards with a running or finished consumer on this worker, by shard id.
    pub shards: Vec<ShardStatus>,
    /// Shards whose lease this worker holds now.
    pub held_leases: Vec<String>,
    /// What the worker's lease coordination did so far.
    pub leases: LeaseStats,
}

#[derive(Debug, Default)]
pub(crate) struct StatusBoard {
    shards: Mutex<BTreeMap<String, ShardStatus>>,
}

impl StatusBoard {
    pub(crate) fn update(&self, shard_id: &str, f: impl FnOnce(&mut ShardStatus)) {
        let mut map = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map
            .entry(shard_id.to_owned())
            .or_insert_with(|| ShardStatus {
                shard_id: shard_id.to_owned(),
                state: ShardState::WaitingOnParents,
                records_processed: 0,
                millis_behind_latest: None,
                last_checkpoint: None,
            });
        f(entry);
    }

    fn snapshot(&self) -> Vec<ShardStatus> {
        let map = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }
}

/// Controls a running worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    worker_id: String,
    shutdown: Arc<Signal<Shutdown>>,
    status: Arc<StatusBoard>,
    coordinator: Arc<LeaseCoordinator>,
}

impl WorkerHandle {
    /// Asks for a graceful shutdown: in-flight batches finish, processors get
    /// `shutdown_requested`, a final checkpoint is written and leases are released.
    /// [`Worker::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.shutdown.update(|s| {
            if *s == Shutdown::Running {
                *s = Shutdown::Requested;
                true
            } else {
                false
            }
        });
    }

    /// Stops at once: processing is cancelled and leases are released without a checkpoint.
    pub fn shutdown_now(&self) {
        self.shutdown.set(Shutdown::Immediate);
    }

    /// The worker id.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// A snapshot of the worker's shards and leases.
    pub fn status(&self) -> WorkerStatus {
        WorkerStatus {
            worker_id: self.worker_id.clone(),
            shards: self.status.snapshot(),
            held_leases: self
                .coordinator
                .held()
                .iter()
                .map(|h| h.key().to_owned())
                .collect(),
            leases: self.coordinator.stats(),
        }
    }
}

/// Why a worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A task of the worker panicked.
    #[error("worker task failed: {0}")]
    Task(String),
}

/// Consumes a stream: one processor per leased shard. See the [module docs](self).
pub struct Worker<F: ProcessorFactory> {
    config: Arc<WorkerConfig>,
    factory: Arc<F>,
    backend: Arc<dyn StreamBackend>,
    table: Arc<dyn LeaseTable>,
    coordinator: Arc<LeaseCoordinator>,
    shutdown: Arc<Signal<Shutdown>>,
    status: Arc<StatusBoard>,
}

impl<F: ProcessorFactory> std::fmt::Debug for Worker<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.config.worker_id)
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

/// A message from a shard consumer to the worker loop.
#[derive(Debug)]
pub(crate) enum ConsumerExit {
    /// The shard ended; its children may now be leased.
    ShardEnded,
    /// The lease was lost or released.
    Released,
    /// The failure policy stopped the shard; keep the lease.
    Stopped,
}

impl<F: ProcessorFactory> Worker<F> {
    /// Starts building a worker around a processor factory.
    pub fn builder(factory: F) -> WorkerBuilder<F> {
        WorkerBuilder::new(factory)
    }

    pub(crate) fn from_parts(
        config: WorkerConfig,
        factory: F,
        backend: Arc<dyn StreamBackend>,
        table: Arc<dyn LeaseTable>,
    ) -> Self {
        let coordinator = Arc::new(LeaseCoordinator::new(
            config.worker_id.clone(),
            table.clone(),
            config.lease.clone(),
        ));
        let shutdown = Signal::new(Shutdown::Running);
        Self {
            config: Arc::new(config),
            factory: Arc::new(factory),
            backend,
            table,
            coordinator,
            shutdown,
            status: Arc::new(StatusBoard::default()),
        }
    }

    /// The validated configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// A handle to stop and observe the worker.
    pub fn handle(&self) -> WorkerHandle {
        WorkerHandle {
            worker_id: self.config.worker_id.clone(),
            shutdown: self.shutdown.clone(),
            status: self.status.clone(),
            coordinator: self.coordinator.clone(),
        }
    }

    /// Runs until shut down through a [`WorkerHandle`].
    pub async fn run(self) -> Result<(), WorkerError> {
        let span = info_span!(
            "worker",
            stream = %self.config.stream,
            worker_id = %self.config.worker_id
        );
        self.run_inner().instrument(span).await
    }

    async fn run_inner(self) -> Result<(), WorkerError> {
        info!("worker starting");
        let mut shutdown_rx = self.shutdown.watch();
        // A first proof of life before taking anything.
        self.coordinator.renew().await;
        // Aborted if `run` is dropped, so a cancelled worker stops renewing and its leases expire.
        let mut renewer = AbortOnDrop(tokio::spawn(
            renew_loop(self.coordinator.clone(), self.shutdown.watch()).in_current_span(),
        ));
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(Arc<HeldLease>, ConsumerExit)>();
        let mut consumers = Consumers::default();
        let deaggregator = Arc::new(Deaggregator::new(self.config.deaggregation));

        // Handoffs this worker asked for are polled faster than the table is scanned.
        let pending_poll = (self.config.lease.scan_interval / 5).max(Duration::from_millis(10));
        let mut next_scan = Instant::now();
        let mut next_sync = Instant::now();

        loop {
            if shutdown_rx.get_and_update() != Shutdown::Running {
                break;
            }
            if Instant::now() >= next_sync {
                next_sync = self.sync_shards().await;
            }
            let polling = self.coordinator.has_pending();
            tokio::select! {
                biased;
                _ = shutdown_rx.changed() => continue,
                Some((held, exit)) = exit_rx.recv() => {
                    if consumers.exited(&self.coordinator, &held, exit) {
                        // Children may be leasable now: sync and take at once.
                        next_sync = Instant::now();
                        next_scan = Instant::now();
                    }
                    continue;
                }
                Some(joined) = consumers.set.join_next(), if !consumers.set.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        warn!(%error, "a shard consumer task panicked");
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(next_scan) => {
                    match self.coordinator.scan().await {
                        Ok(started) if !started.is_empty() => {
                            info!(leases = ?started.iter().map(|h| h.key()).collect::<Vec<_>>(), "now holding");
                        }
                        Ok(_) => {}
                        Err(error) => warn!(%error, "lease scan failed; will retry"),
                    }
                    next_scan = self.coordinator.next_scan_at();
                }
                _ = tokio::time::sleep(pending_poll), if polling => {
                    if let Err(error) = self.coordinator.poll_pending().await {
                        debug!(%error, "polling requested handoffs failed; will retry");
                    }
                }
            }
            self.start_consumers(&mut consumers, &deaggregator, &exit_tx)
                .await;
        }

        info!(mode = ?shutdown_rx.get(), "worker shutting down");
        if shutdown_rx.get() == Shutdown::Requested {
            // Announce, keep processing while the others notice (they then scan fast), and only
            // then let the consumers hand over: the shards pause for about one fast scan.
            self.coordinator.begin_leaving().await;
            if self.coordinator.has_successors() {
                let until = Instant::now() + self.config.lease.idle_scan_interval;
                self.drive(&mut consumers, &mut exit_rx, &mut shutdown_rx, until)
                    .await;
            }
            self.shutdown.update(|s| {
                let graceful = *s == Shutdown::Requested;
                if graceful {
                    *s = Shutdown::Graceful;
                }
                graceful
            });
        }
        if shutdown_rx.get_and_update() == Shutdown::Graceful {
            let deadline = Instant::now() + self.config.graceful_shutdown_timeout;
            let done = self
                .drive(&mut consumers, &mut exit_rx, &mut shutdown_rx, deadline)
                .await;
            if !done && shutdown_rx.get() != Shutdown::Immediate {
                warn!("graceful shutdown timed out; stopping immediately");
            }
        }
        consumers.set.abort_all();
        while consumers.set.join_next().await.is_some() {}
        // Whatever is still held (stopped shards, consumers cut short) is let go here, and the
        // heartbeat row removed.
        self.coordinator.finish().await;
        self.shutdown.set(Shutdown::Immediate);
        if let Err(error) = (&mut renewer.0).await
            && !error.is_cancelled()
        {
            return Err(WorkerError::Task(error.to_string()));
        }
        info!("worker stopped");
        Ok(())
    }

    /// While leaving: records consumer exits and keeps scanning (to notice lost leases and pass
    /// on leases handed over meanwhile) until every consumer is done (`true`), `until`, or an
    /// immediate shutdown.
    async fn drive(
        &self,
        consumers: &mut Consumers,
        exit_rx: &mut mpsc::UnboundedReceiver<(Arc<HeldLease>, ConsumerExit)>,
        shutdown_rx: &mut Watch<Shutdown>,
        until: Instant,
    ) -> bool {
        let mut next_scan = self.coordinator.next_scan_at();
        loop {
            if shutdown_rx.get_and_update() == Shutdown::Immediate {
                return false;
            }
            tokio::select! {
                biased;
                _ = shutdown_rx.changed() => {}
                Some((held, exit)) = exit_rx.recv() => {
                    consumers.exited(&self.coordinator, &held, exit);
                }
                joined = consumers.set.join_next() => {
                    if joined.is_none() {
                        return true;
                    }
                }
                _ = tokio::time::sleep_until(until) => return false,
                _ = tokio::time::sleep_until(next_scan) => {
                    if let Err(error) = self.coordinator.scan().await {
                        debug!(%error, "lease scan failed during shutdown");
                    }
                    next_scan = self.coordinator.next_scan_at();
                }
            }
        }
    }

    /// Syncs shards into leases and removes finished leases no longer needed, when it is this
    /// worker's duty (one worker of the fleet, the sync leader, does it; see
    /// [`crate::lease::coordinator`]). Returns when to check again.
    async fn sync_shards(&self) -> Instant {
        self.coordinator
            .sync_shards(
                self.backend.as_ref(),
                &self.config.stream,
                self.config.initial_position,
                self.config.shard_sync_interval,
            )
            .await
    }

    /// Starts a consumer for every held lease without one; passes on the leases of stopped
    /// shards that another worker asked for.
    async fn start_consumers(
        &self,
        consumers: &mut Consumers,
        deaggregator: &Arc<Deaggregator>,
        exit_tx: &mpsc::UnboundedSender<(Arc<HeldLease>, ConsumerExit)>,
    ) {
        for held in self.coordinator.held() {
            let key = held.key().to_owned();
            if consumers.running.contains(&key) {
                continue;
            }
            if let Some(stopped) = consumers.stopped.get(&key)
                && Arc::ptr_eq(stopped, &held)
            {
                if held.status() == HeldStatus::HandoffRequested {
                    info!(lease = %key, "handing over a stopped shard on request");
                    if let Err(error) = held.release(None).await {
                        debug!(lease = %key, %error, "handing over a stopped shard failed");
                    }
                    consumers.stopped.remove(&key);
                    self.coordinator.forget(&held);
                }
                continue;
            }
            self.spawn_consumer(&mut consumers.set, held, deaggregator, exit_tx);
            consumers.running.insert(key);
        }
    }

    fn spawn_consumer(
        &self,
        set: &mut JoinSet<()>,
        held: Arc<HeldLease>,
        deaggregator: &Arc<Deaggregator>,
        exit_tx: &mpsc::UnboundedSender<(Arc<HeldLease>, ConsumerExit)>,
    ) {
        let span = info_span!("shard", shard_id = %held.key());
        let ctx = consumer::ConsumerContext {
            config: self.config.clone(),
            backend: self.backend.clone(),
            table: self.table.clone(),
            status: self.status.clone(),
            deaggregator: deaggregator.clone(),
            shutdown: self.shutdown.watch(),
            coordinator: self.coordinator.clone(),
        };
        let factory = self.factory.clone();
        let exit_tx = exit_tx.clone();
        set.spawn(
            async move {
                let exit = consumer::run(ctx, factory, held.clone()).await;
                let _ = exit_tx.send((held, exit));
            }
            .instrument(span),
        );
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The worker's shard consumer tasks and what became of them.
#[derive(Default)]
struct Consumers {
    set: JoinSet<()>,
    /// Shards with a consumer running.
    running: HashSet<String>,
    /// Shards stopped by the failure policy, whose lease is kept until shutdown.
    stopped: HashMap<String, Arc<HeldLease>>,
}

impl Consumers {
    /// Records a consumer's exit. Returns whether its shard ended.
    fn exited(
        &mut self,
        coordinator: &LeaseCoordinator,
        held: &Arc<HeldLease>,
        exit: ConsumerExit,
    ) -> bool {
        self.running.remove(held.key());
        match exit {
            ConsumerExit::ShardEnded => {
                coordinator.forget(held);
                true
            }
            ConsumerExit::Released => {
                coordinator.forget(held);
                false
            }
            ConsumerExit::Stopped => {
                self.stopped.insert(held.key().to_owned(), held.clone());
                false
            }
        }
    }
}

/// Renews the worker's claim every renewal interval (sooner after a failure) until the worker
/// stops.
async fn renew_loop(coordinator: Arc<LeaseCoordinator>, mut shutdown: Watch<Shutdown>) {
    let mut next = Instant::now() + coordinator.config().renew_interval;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if shutdown.get() == Shutdown::Immediate {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next) => {
                let started = Instant::now();
                let ok = coordinator.renew().await;
                next = started + coordinator.next_renewal_in(ok);
            }
        }
    }
}
