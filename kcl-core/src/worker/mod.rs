//! The worker: runs a processor per leased shard.
//!
//! A [`Worker`] is built with [`Worker::builder`] and driven by [`Worker::run`]. While running it
//!
//! - syncs shards into leases at start, every `shard_sync_interval`, and right after a shard ends
//!   ([`crate::shard_sync`]);
//! - renews its leases on a task of its own, so slow scans or processors never delay renewals, and
//!   scans the table to take leases ([`crate::lease::coordinator`]);
//! - runs one consumer task per held lease ([`consumer`]): wait for parents, initialize, read,
//!   de-aggregate, process, checkpoint, and at the end of the shard create the children and record
//!   `SHARD_END`.
//!
//! [`WorkerHandle`] stops it: [`WorkerHandle::shutdown`] gracefully (in-flight batches finish,
//! `shutdown_requested`, final checkpoint, leases released so others take over at once) or
//! [`WorkerHandle::shutdown_now`] immediately (processing cancelled, leases released without a
//! checkpoint).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::backend::StreamBackend;
use crate::deaggregation::Deaggregator;
use crate::lease::LeaseTable;
use crate::lease::coordinator::{HeldLease, LeaseCoordinator};
use crate::processor::ProcessorFactory;
use crate::record::ExtendedSequenceNumber;
use crate::shard_sync::sync_shards;

mod config;
mod consumer;

pub use config::{CheckpointCadence, ConfigError, WorkerBuilder, WorkerConfig};

/// How a worker is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shutdown {
    Running,
    Graceful,
    Immediate,
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
    shutdown: Arc<watch::Sender<Shutdown>>,
    status: Arc<StatusBoard>,
    coordinator: Arc<LeaseCoordinator>,
}

impl WorkerHandle {
    /// Asks for a graceful shutdown: in-flight batches finish, processors get
    /// `shutdown_requested`, a final checkpoint is written and leases are released.
    /// [`Worker::run`] returns when it is done.
    pub fn shutdown(&self) {
        self.shutdown.send_if_modified(|s| {
            if *s == Shutdown::Running {
                *s = Shutdown::Graceful;
                true
            } else {
                false
            }
        });
    }

    /// Stops at once: processing is cancelled and leases are released without a checkpoint.
    pub fn shutdown_now(&self) {
        self.shutdown.send_replace(Shutdown::Immediate);
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
    shutdown: Arc<watch::Sender<Shutdown>>,
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
        let (shutdown, _) = watch::channel(Shutdown::Running);
        Self {
            config: Arc::new(config),
            factory: Arc::new(factory),
            backend,
            table,
            coordinator,
            shutdown: Arc::new(shutdown),
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
        let mut shutdown_rx = self.shutdown.subscribe();
        // Aborted if `run` is dropped, so a cancelled worker stops renewing and its leases expire.
        let mut renewer = AbortOnDrop(tokio::spawn(
            renew_loop(self.coordinator.clone(), self.shutdown.subscribe()).in_current_span(),
        ));
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(String, ConsumerExit)>();
        let mut consumers: JoinSet<()> = JoinSet::new();
        let mut running: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        let mut stopped: HashSet<String> = HashSet::new();
        let deaggregator = Arc::new(Deaggregator::new(self.config.deaggregation));

        let mut take_tick = tokio::time::interval(self.config.lease.take_interval);
        take_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_sync = Instant::now();

        loop {
            if *shutdown_rx.borrow() != Shutdown::Running {
                break;
            }
            if Instant::now() >= next_sync {
                match sync_shards(
                    self.backend.as_ref(),
                    self.table.as_ref(),
                    &self.config.stream,
                    self.config.initial_position,
                )
                .await
                {
                    Ok(report) if !report.created.is_empty() => {
                        debug!(created = ?report.created, "shard sync created leases");
                    }
                    Ok(_) => {}
                    Err(error) => warn!(%error, "shard sync failed; will retry"),
                }
                next_sync = Instant::now() + self.config.shard_sync_interval;
            }
            tokio::select! {
                biased;
                changed = shutdown_rx.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
                Some((shard, exit)) = exit_rx.recv() => {
                    running.remove(&shard);
                    match exit {
                        ConsumerExit::ShardEnded => {
                            self.coordinator.forget(&shard);
                            // Children may be leasable now: sync and take at once.
                            next_sync = Instant::now();
                            take_tick.reset_immediately();
                        }
                        ConsumerExit::Released => self.coordinator.forget(&shard),
                        ConsumerExit::Stopped => { stopped.insert(shard); }
                    }
                    continue;
                }
                Some(joined) = consumers.join_next(), if !consumers.is_empty() => {
                    if let Err(error) = joined
                        && error.is_panic()
                    {
                        warn!(%error, "a shard consumer task panicked");
                    }
                    continue;
                }
                _ = take_tick.tick() => {}
            }
            match self.coordinator.scan_and_take().await {
                Ok(scan) => {
                    if !scan.taken.is_empty() {
                        info!(taken = ?scan.taken.iter().map(|h| h.key()).collect::<Vec<_>>(), "took leases");
                    }
                }
                Err(error) => warn!(%error, "lease scan failed; will retry"),
            }
            for held in self.coordinator.held() {
                let key = held.key().to_owned();
                if running.contains_key(&key) || stopped.contains(&key) {
                    continue;
                }
                let abort = self.spawn_consumer(&mut consumers, held, &deaggregator, &exit_tx);
                running.insert(key, abort);
            }
        }

        let mode = *shutdown_rx.borrow();
        info!(?mode, "worker shutting down");
        if mode == Shutdown::Graceful {
            let deadline = Instant::now() + self.config.graceful_shutdown_timeout;
            loop {
                tokio::select! {
                    joined = consumers.join_next() => if joined.is_none() { break },
                    _ = tokio::time::sleep_until(deadline) => {
                        warn!("graceful shutdown timed out; stopping immediately");
                        break;
                    }
                    _ = shutdown_rx.changed() => {
                        if *shutdown_rx.borrow() == Shutdown::Immediate { break; }
                    }
                }
            }
        }
        consumers.abort_all();
        while consumers.join_next().await.is_some() {}
        // Release whatever is still held (stopped shards, consumers cut short).
        for held in self.coordinator.held() {
            if let Err(error) = held.release().await {
                debug!(lease = held.key(), %error, "release at shutdown failed");
            }
        }
        self.shutdown.send_replace(Shutdown::Immediate);
        if let Err(error) = (&mut renewer.0).await {
            return Err(WorkerError::Task(error.to_string()));
        }
        info!("worker stopped");
        Ok(())
    }

    fn spawn_consumer(
        &self,
        set: &mut JoinSet<()>,
        held: Arc<HeldLease>,
        deaggregator: &Arc<Deaggregator>,
        exit_tx: &mpsc::UnboundedSender<(String, ConsumerExit)>,
    ) -> tokio::task::AbortHandle {
        let key = held.key().to_owned();
        let span = info_span!("shard", shard_id = %key);
        let ctx = consumer::ConsumerContext {
            config: self.config.clone(),
            backend: self.backend.clone(),
            table: self.table.clone(),
            status: self.status.clone(),
            deaggregator: deaggregator.clone(),
            shutdown: self.shutdown.subscribe(),
        };
        let factory = self.factory.clone();
        let exit_tx = exit_tx.clone();
        set.spawn(
            async move {
                let exit = consumer::run(ctx, factory, held).await;
                let _ = exit_tx.send((key, exit));
            }
            .instrument(span),
        )
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn renew_loop(coordinator: Arc<LeaseCoordinator>, mut shutdown: watch::Receiver<Shutdown>) {
    let mut tick = tokio::time::interval(coordinator.config().renew_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => coordinator.renew_all().await,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() == Shutdown::Immediate {
                    return;
                }
            }
        }
    }
}
