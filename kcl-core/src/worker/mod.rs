//! The worker: runs a processor per leased shard.
//!
//! A [`Worker`] is built with [`Worker::builder`] and driven by [`Worker::run`]. While running it
//!
//! - syncs shards into leases when it leads shard sync (one worker of the fleet does, see
//!   [`crate::lease::coordinator`]): at start, every `shard_sync_interval`, and right after a
//!   shard ends ([`crate::shard_sync`]); a failed sync is retried with backoff;
//! - renews its claim (its heartbeat) on a task of its own, so slow scans or processors never
//!   delay renewals, and scans the table to take, steal and receive leases
//!   ([`crate::lease::coordinator`]);
//! - runs one consumer task per held lease (the `consumer` module): wait for parents, create and
//!   initialize the processor, read, de-aggregate, process, checkpoint, and at the end of the
//!   shard create the children and record `SHARD_END`; when another worker asks for the lease,
//!   finish the batch, checkpoint and hand it over. A consumer task that dies unexpectedly has
//!   its lease released at once (counted in `kcl_shard_task_failures_total`);
//! - publishes metrics ([`crate::metrics`]) and its [`Health`].
//!
//! Failures either recover or surface: transient ones are retried with backoff and counted;
//! permanent ones (the stream does not exist, access denied, an invalid request, an unusable
//! lease table) end `run` with a [`WorkerError`] once they outlast
//! [`WorkerBuilder::permanent_error_timeout`].
//!
//! ## Beyond one record at a time
//!
//! By default a shard is one ordered lane: one batch at a time, the next only once the last
//! succeeded (or the [`FailurePolicy`](crate::processor::FailurePolicy) gave up on it). Three
//! opt-in features go further; each leaves everything else as it was.
//!
//! - **Key-ordered concurrency** ([`WorkerBuilder::key_ordered`], for processors that implement
//!   [`ConcurrentProcessor`](crate::processor::ConcurrentProcessor)): up to
//!   [`KeyOrdered::max_in_flight`] batches of a shard in flight at once, a key in at most one of
//!   them, so the records of each key stay strictly in order while different keys run
//!   concurrently. The worker checkpoints the contiguous prefix of completed records at the
//!   cadence, so a crash re-delivers at most the window (the batches in flight and the records
//!   waiting behind them, at most [`KeyOrdered::max_window_records`] plus one fetch); the runs
//!   of records completed beyond it are written with each checkpoint into the lease's pending
//!   checkpoint (its application state; no new lease attribute, Java KCL reads the table as
//!   before) and skipped by whoever processes the shard next. Handoffs, graceful shutdowns and
//!   shard ends let the batches in flight finish first, so a graceful handoff re-delivers
//!   nothing; `SHARD_END` is written only once every record is done, so children still start
//!   after their parents. KPL sub-records are records like any other: each is scheduled,
//!   completed and remembered on its own `(sequence, sub-sequence)` position.
//! - **Partial batch failures**: `process_records` returns a
//!   [`PartialFailure`](crate::processor::PartialFailure) to say "records from index `i` on
//!   failed"; the records before `i` are processed (checkpointed when the cadence says so, even
//!   while the rest waits for its retry), and only the rest is delivered again.
//! - **Poison records**: [`WorkerBuilder::bisect_failed_batches`] splits a failing batch down to
//!   the failing record, so only it exhausts the policy's attempts and goes to the dead-letter
//!   handler; [`WorkerBuilder::max_record_age`] takes records older than an age out before every
//!   delivery (to the handler, or skipped and counted). The handler receives the records
//!   themselves ([`DeadLetterBatch`](crate::processor::DeadLetterBatch)), with the shard, their
//!   sequence numbers, the attempts, the last error and why. A record dead-lettered or skipped
//!   counts as handled: the later records of its key are processed after it, in order, without
//!   it.
//!
//! Whatever the mode, every record is processed, dead-lettered (counted in
//! `kcl_records_dead_lettered_total`), skipped for its age by configuration (counted in
//! `kcl_records_expired_total`), or the shard stops by policy; none is dropped silently.
//!
//! [`WorkerHandle`] stops it: [`WorkerHandle::shutdown`] gracefully (in-flight batches finish,
//! `shutdown_requested`, final checkpoint, each lease handed to a live worker, which starts
//! right after that checkpoint) or [`WorkerHandle::shutdown_now`] immediately (processing
//! cancelled, leases released without a checkpoint); [`WorkerHandle::shutdown_on_signals`] ties
//! both to SIGTERM and SIGINT.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::backend::{BackendError, StreamBackend};
use crate::deaggregation::Deaggregator;
use crate::lease::LeaseTable;
use crate::lease::coordinator::LeaseCoordinator;
use crate::lease::coordinator::SyncOutcome;
use crate::lease::held::{HeldLease, HeldStatus};
use crate::lease::instrumented::Instrumented;
use crate::metrics::{MetricsLevel, Scope, WorkerMetrics};
use crate::processor::ProcessorFactory;
use crate::retrieval::WorkerBudget;
use crate::retry::RetryBackoff;
use crate::shard_sync::ShardSyncError;
use crate::sync::{Signal, Watch};

mod config;
mod consumer;
mod delivery;
mod error;
mod health;
mod key_ordered;
mod signals;
mod status;
mod streams;
mod window;

pub use config::{CheckpointCadence, ConfigError, WorkerBuilder, WorkerConfig};
pub use error::WorkerError;
pub use health::{Health, HealthStatus};
pub use key_ordered::KeyOrdered;
pub use status::{ShardState, ShardStatus, WorkerStatus};
pub use streams::{FormerStreams, MultiStreamTracker, StreamConfig, StreamListFuture};

use health::{Lifecycle, Phase};
use status::StatusBoard;
use streams::{Defaults, StreamSet};

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

/// Delays between shard syncs that failed.
const SYNC_RETRY: RetryBackoff = RetryBackoff {
    initial: Duration::from_millis(250),
    max: Duration::from_secs(10),
    factor: 2.0,
    jitter: true,
};

/// Controls and observes a running worker. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    worker_id: String,
    shutdown: Arc<Signal<Shutdown>>,
    status: Arc<StatusBoard>,
    coordinator: Arc<LeaseCoordinator>,
    lifecycle: Arc<Lifecycle>,
    table: Arc<Instrumented>,
    failover_time: Duration,
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

    /// How the worker is doing, for readiness and liveness probes.
    ///
    /// - [`HealthStatus::Starting`] until a lease scan found the stream's leases and every shard it
    ///   holds (with its parents finished) delivered a first batch or reported being caught up;
    /// - then [`HealthStatus::Ready`], or [`HealthStatus::Degraded`] while the last heartbeat
    ///   failed, the lease table answered errors within the failover time, the last shard sync
    ///   failed, or shards are stopped by the failure policy ([`Health::reasons`] says which);
    /// - [`HealthStatus::Stopping`], then [`HealthStatus::Stopped`] or
    ///   [`HealthStatus::Failed`] (see [`WorkerHandle::wait`]).
    pub fn health(&self) -> Health {
        let lifecycle = &self.lifecycle;
        let status = match lifecycle.phase.get() {
            Phase::NotStarted => {
                return Health {
                    status: HealthStatus::Starting,
                    reasons: vec!["not started".to_owned()],
                };
            }
            Phase::Stopping => HealthStatus::Stopping,
            Phase::Done => match lifecycle.outcome() {
                Some(Err(error)) => {
                    return Health {
                        status: HealthStatus::Failed,
                        reasons: vec![error.to_string()],
                    };
                }
                _ => HealthStatus::Stopped,
            },
            Phase::Running => HealthStatus::Ready,
        };
        if status != HealthStatus::Ready {
            return Health {
                status,
                reasons: Vec::new(),
            };
        }
        let mut reasons = Vec::new();
        if Lifecycle::is(&lifecycle.heartbeat_failing) {
            reasons.push("the last heartbeat failed".to_owned());
        }
        if self.table.failed_within(self.failover_time) {
            reasons.push("the lease table answered errors recently".to_owned());
        }
        if Lifecycle::is(&lifecycle.sync_failing) {
            reasons.push("the last shard sync failed".to_owned());
        }
        let stopped = self.status.stopped();
        if !stopped.is_empty() {
            reasons.push(format!(
                "stopped by the failure policy: {}",
                stopped.join(", ")
            ));
        }
        if !reasons.is_empty() {
            return Health {
                status: HealthStatus::Degraded,
                reasons,
            };
        }
        if !Lifecycle::is(&lifecycle.ready_once) {
            if !Lifecycle::is(&lifecycle.scanned) {
                reasons.push("no lease scan has found the stream's leases yet".to_owned());
            }
            let waiting = self.status.not_flowed();
            if !waiting.is_empty() {
                reasons.push(format!("no first batch yet from {}", waiting.join(", ")));
            }
            if !reasons.is_empty() {
                return Health {
                    status: HealthStatus::Starting,
                    reasons,
                };
            }
            Lifecycle::flag(&lifecycle.ready_once, true);
        }
        Health {
            status: HealthStatus::Ready,
            reasons,
        }
    }

    /// Waits until [`Worker::run`] has returned (or was dropped), and returns what it returned.
    pub async fn wait(&self) -> Result<(), WorkerError> {
        self.lifecycle.wait().await
    }
}

/// Consumes a stream: one processor per leased shard. See the [module docs](self).
pub struct Worker<F: ProcessorFactory> {
    config: Arc<WorkerConfig>,
    factory: Arc<F>,
    backend: Arc<dyn StreamBackend>,
    table: Arc<dyn LeaseTable>,
    instrumented: Arc<Instrumented>,
    coordinator: Arc<LeaseCoordinator>,
    shutdown: Arc<Signal<Shutdown>>,
    status: Arc<StatusBoard>,
    lifecycle: Arc<Lifecycle>,
    metrics: Arc<WorkerMetrics>,
    budget: Arc<WorkerBudget>,
    /// The streams consumed (one, or a tracked set), each with its settings and its fan-out
    /// consumer.
    streams: Arc<StreamSet>,
    /// How batches share a processor, in key-ordered mode.
    key_ordered: Option<key_ordered::AsShared<F::Processor>>,
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
    /// Reading the shard failed permanently; the lease was released.
    Failed(BackendError),
}

/// Why the main loop ended.
enum LoopEnd {
    /// A shutdown was asked for.
    Shutdown,
    /// A permanent failure: stop and return it.
    Fatal(WorkerError),
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
        key_ordered: Option<key_ordered::AsShared<F::Processor>>,
    ) -> Self {
        let scope = Scope::new(config.metrics_level, &config.stream, &config.worker_id);
        let instrumented = Arc::new(Instrumented::new(table, &scope));
        let table: Arc<dyn LeaseTable> = instrumented.clone();
        let coordinator = Arc::new(LeaseCoordinator::new(
            config.worker_id.clone(),
            table.clone(),
            config.lease.clone(),
        ));
        let shutdown = Signal::new(Shutdown::Running);
        let defaults = Defaults {
            initial_position: config.initial_position,
            retrieval: config.retrieval.clone(),
            metrics_level: config.metrics_level,
            worker_id: config.worker_id.clone(),
        };
        let streams = match &config.multi_stream {
            Some(tracker) => StreamSet::multi(tracker.clone(), defaults),
            None => StreamSet::single(&config.stream, defaults),
        };
        let streams = Arc::new(streams);
        let accepts = streams.clone();
        coordinator.set_filter(Arc::new(move |key: &str| accepts.accepts(key)));
        Self {
            budget: WorkerBudget::new(config.worker_prefetch),
            streams,
            config: Arc::new(config),
            factory: Arc::new(factory),
            backend,
            table,
            instrumented,
            coordinator,
            shutdown,
            status: Arc::new(StatusBoard::default()),
            lifecycle: Arc::new(Lifecycle::default()),
            metrics: Arc::new(WorkerMetrics::new(scope)),
            key_ordered,
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
            lifecycle: self.lifecycle.clone(),
            table: self.instrumented.clone(),
            failover_time: self.config.lease.failover_time,
        }
    }

    /// Runs until shut down through a [`WorkerHandle`], or until a permanent failure (returned
    /// as a [`WorkerError`]).
    pub async fn run(self) -> Result<(), WorkerError> {
        let stream = match &self.config.multi_stream {
            Some(_) => "<multi-stream>",
            None => self.config.stream.as_str(),
        };
        let span = info_span!("worker", stream = %stream, worker_id = %self.config.worker_id);
        let lifecycle = self.lifecycle.clone();
        // Whatever happens to this future, `wait` returns: a dropped `run` counts as cancelled.
        let _finished = FinishOnDrop(lifecycle.clone());
        let result = self.run_inner().instrument(span).await;
        lifecycle.finish(result.clone());
        result
    }

    async fn run_inner(self) -> Result<(), WorkerError> {
        info!("worker starting");
        crate::metrics::describe();
        self.lifecycle.phase.set(Phase::Running);
        let mut shutdown_rx = self.shutdown.watch();
        self.check_key_style().await?;
        // A first proof of life before taking anything.
        let renewed = self.coordinator.renew().await;
        Lifecycle::flag(&self.lifecycle.heartbeat_failing, !renewed);
        // Aborted if `run` is dropped, so a cancelled worker stops renewing and its leases expire.
        let mut renewer = AbortOnDrop(tokio::spawn(
            renew_loop(
                self.coordinator.clone(),
                self.shutdown.watch(),
                self.lifecycle.clone(),
            )
            .in_current_span(),
        ));
        let (exit_tx, mut exit_rx) = mpsc::unbounded_channel::<(Arc<HeldLease>, ConsumerExit)>();
        let mut consumers = Consumers::default();
        let deaggregator = Arc::new(Deaggregator::new(self.config.deaggregation));
        let mut sync = SyncState::default();

        // Handoffs this worker asked for are polled faster than the table is scanned.
        let pending_poll = (self.config.lease.scan_interval / 5).max(Duration::from_millis(10));
        let mut next_scan = Instant::now();
        // Multi-stream: when the tracked streams are re-read next.
        let tracker_interval = self
            .streams
            .tracker()
            .map(|t| t.tracker_interval())
            .unwrap_or(Duration::MAX);
        let mut next_streams = Instant::now();

        let end = loop {
            if shutdown_rx.get_and_update() != Shutdown::Running {
                break LoopEnd::Shutdown;
            }
            if let Some(fatal) = self.fatal(&sync) {
                break LoopEnd::Fatal(fatal);
            }
            if self.streams.tracker().is_some() && Instant::now() >= next_streams {
                match self.streams.refresh(self.backend.as_ref()).await {
                    // New streams are synced at once.
                    Ok(true) => sync.next = Instant::now(),
                    Ok(false) => {}
                    Err(error) => {
                        warn!(%error, "listing the tracked streams failed; keeping the last list")
                    }
                }
                next_streams = Instant::now() + tracker_interval;
            }
            if Instant::now() >= sync.next {
                self.sync_shards(&mut sync).await;
                if let Some(fatal) = self.fatal(&sync) {
                    break LoopEnd::Fatal(fatal);
                }
            }
            let polling = self.coordinator.has_pending();
            tokio::select! {
                biased;
                _ = shutdown_rx.changed() => continue,
                Some((held, exit)) = exit_rx.recv() => {
                    match self.exited(&mut consumers, &held, exit).await {
                        Ok(true) => {
                            // Children may be leasable now: sync and take at once.
                            sync.next = Instant::now();
                            next_scan = Instant::now();
                        }
                        Ok(false) => {}
                        Err(fatal) => break LoopEnd::Fatal(fatal),
                    }
                    continue;
                }
                Some(joined) = consumers.set.join_next_with_id(), if !consumers.set.is_empty() => {
                    self.joined(&mut consumers, joined).await;
                    continue;
                }
                _ = tokio::time::sleep_until(sync.next) => continue,
                _ = tokio::time::sleep_until(next_streams), if self.streams.tracker().is_some() => continue,
                _ = tokio::time::sleep_until(next_scan) => {
                    match self.coordinator.scan().await {
                        Ok(started) if !started.is_empty() => {
                            info!(leases = ?started.iter().map(|h| h.key()).collect::<Vec<_>>(), "now holding");
                        }
                        Ok(_) => {}
                        Err(error) => warn!(%error, "lease scan failed; will retry"),
                    }
                    if self.coordinator.has_seen_leases() {
                        Lifecycle::flag(&self.lifecycle.scanned, true);
                    }
                    self.publish(&consumers);
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
        };

        self.lifecycle.phase.set(Phase::Stopping);
        let fatal = match end {
            LoopEnd::Fatal(error) => {
                error!(%error, "stopping: permanent failure");
                // Straight to the consumers' graceful stop: finish the batch, checkpoint, let go.
                self.shutdown.update(|s| {
                    let running = matches!(*s, Shutdown::Running | Shutdown::Requested);
                    if running {
                        *s = Shutdown::Graceful;
                    }
                    running
                });
                Some(error)
            }
            LoopEnd::Shutdown => None,
        };
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
        self.metrics.leases(&self.coordinator.stats(), 0);
        if let Err(error) = (&mut renewer.0).await
            && !error.is_cancelled()
        {
            return Err(WorkerError::Task(error.to_string()));
        }
        if let Some(error) = fatal {
            return Err(error);
        }
        info!("worker stopped");
        Ok(())
    }

    /// A permanent failure that has lasted the configured time, if any.
    fn fatal(&self, sync: &SyncState) -> Option<WorkerError> {
        let timeout = self.config.permanent_error_timeout;
        if let Some(error) = self.instrumented.permanent_failure(timeout) {
            return Some(WorkerError::LeaseTable { source: error });
        }
        match &sync.permanent {
            Some((since, error)) if since.elapsed() >= timeout => Some(error.clone()),
            _ => None,
        }
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
                    // Already stopping: a permanent failure now changes nothing.
                    let _ = self.exited(consumers, &held, exit).await;
                }
                joined = consumers.set.join_next_with_id() => {
                    match joined {
                        None => return true,
                        Some(joined) => self.joined(consumers, joined).await,
                    }
                }
                _ = tokio::time::sleep_until(until) => return false,
                _ = tokio::time::sleep_until(next_scan) => {
                    if let Err(error) = self.coordinator.scan().await {
                        debug!(%error, "lease scan failed during shutdown");
                    }
                    self.publish(consumers);
                    next_scan = self.coordinator.next_scan_at();
                }
            }
        }
    }

    /// Syncs shards into leases and removes finished leases no longer needed, when it is this
    /// worker's duty (one worker of the fleet, the sync leader, does it; see
    /// [`crate::lease::coordinator`]). Schedules the next check: when the duty may come, after
    /// the sync interval, or sooner with backoff after a failure.
    async fn sync_shards(&self, state: &mut SyncState) {
        let targets = self.streams.targets();
        let result = self
            .coordinator
            .sync_shards(
                self.backend.as_ref(),
                &targets,
                self.config.shard_sync_interval,
            )
            .await;
        let multi = self.streams.tracker().is_some();
        let result = match result {
            // One stream: its failure is the sync's, as always.
            Ok(SyncOutcome::Synced(_, mut failures)) if !multi && !failures.is_empty() => {
                Err(failures.swap_remove(0).1)
            }
            other => other,
        };
        match result {
            Ok(SyncOutcome::NotMine(next)) => state.not_mine(next),
            Ok(SyncOutcome::Synced(report, failures)) => {
                self.metrics.shard_syncs.increment(1);
                // The sync leader also applies the former-streams strategy.
                self.remove_former_streams().await;
                if !report.created.is_empty() {
                    debug!(created = report.created.len(), "shard sync created leases");
                }
                if failures.is_empty() {
                    state.succeeded(self.config.shard_sync_interval);
                } else {
                    // Multi-stream: the other streams were synced. A stream that cannot be
                    // listed (deleted, say) is not the worker's failure: retried with backoff,
                    // never fatal.
                    self.metrics.shard_sync_failures.increment(1);
                    for (stream, error) in &failures {
                        warn!(%stream, %error, "shard sync of a stream failed; will retry");
                    }
                    state.failed(None, self.config.permanent_error_timeout);
                }
            }
            Err(error) => {
                self.metrics.shard_sync_failures.increment(1);
                let permanent = match &error {
                    ShardSyncError::Backend(e) if e.is_permanent() => Some(
                        WorkerError::from_backend(&self.config.stream, None, e.clone()),
                    ),
                    // The lease table's permanent failures are watched by the instrumented
                    // table itself.
                    _ => None,
                };
                warn!(%error, "shard sync failed; will retry");
                state.failed(permanent, self.config.permanent_error_timeout);
            }
        }
        Lifecycle::flag(&self.lifecycle.sync_failing, state.failing());
    }

    /// Refuses a table holding live leases of the other mode's key style (see
    /// [`WorkerError::LeaseKeyStyle`]). A table that cannot be read is left to the coordinator,
    /// which reports it as it always does.
    async fn check_key_style(&self) -> Result<(), WorkerError> {
        let rows = match self.table.list().await {
            Ok(rows) => rows,
            Err(error) => {
                debug!(%error, "reading the table to check its key style failed");
                return Ok(());
            }
        };
        let multi_stream = self.streams.tracker().is_some();
        let other = rows.iter().find(|l| {
            l.heartbeat_of().is_none()
                && !l.is_finished()
                && (crate::stream::LeaseNaming::of_key(&l.key)
                    == crate::stream::LeaseNaming::Single)
                    == multi_stream
        });
        match other {
            Some(lease) => Err(WorkerError::LeaseKeyStyle {
                multi_stream,
                example: lease.key.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Deletes the leases of former streams that the tracker's strategy says are due (see
    /// [`FormerStreams`]); failures are logged and retried at the next sync.
    async fn remove_former_streams(&self) {
        let deletes = self
            .streams
            .tracker()
            .is_some_and(|t| !matches!(t.former_strategy(), FormerStreams::Keep));
        if !deletes {
            return;
        }
        let rows = match self.table.list().await {
            Ok(rows) => rows,
            Err(error) => {
                warn!(%error, "reading the table for former streams failed; will retry");
                return;
            }
        };
        for naming in self.streams.former_due(&rows, Instant::now()) {
            match crate::shard_sync::remove_stream_leases(self.table.as_ref(), &naming, &rows).await
            {
                Ok(removed) => {
                    info!(stream = ?naming.stream(), removed = removed.len(), "former stream's leases deleted");
                }
                Err(error) => {
                    warn!(stream = ?naming.stream(), %error, "deleting a former stream's leases failed; will retry");
                }
            }
        }
    }

    /// Publishes the worker's gauges and lease counts, and the lag of the shards it runs.
    fn publish(&self, consumers: &Consumers) {
        let stats = self.coordinator.stats();
        self.metrics.leases(&stats, self.coordinator.held().len());
        self.metrics.shards_stopped(consumers.stopped.len());
        let scope = self.metrics.scope();
        let lags = self.status.lags();
        match scope.level() {
            MetricsLevel::Off => {}
            MetricsLevel::Summary => {
                // The largest lag per stream (one stream: as before).
                let mut max: HashMap<&str, u64> = HashMap::new();
                for (stream, _, ms) in &lags {
                    let entry = max.entry(stream.as_str()).or_default();
                    *entry = (*entry).max(*ms);
                }
                if self.streams.tracker().is_none() {
                    let ms = max.values().copied().max().unwrap_or(0);
                    scope.behind_latest(None).set(ms as f64 / 1000.0);
                } else {
                    for (stream, ms) in max {
                        scope
                            .for_stream(stream)
                            .behind_latest(None)
                            .set(ms as f64 / 1000.0);
                    }
                }
            }
            MetricsLevel::Detailed => {
                for (stream, shard, ms) in lags {
                    scope
                        .for_stream(&stream)
                        .behind_latest(Some(&shard))
                        .set(ms as f64 / 1000.0);
                }
            }
        }
    }

    /// Records a consumer's exit. `Ok(true)` when its shard ended; an error for a permanent
    /// failure.
    async fn exited(
        &self,
        consumers: &mut Consumers,
        held: &Arc<HeldLease>,
        exit: ConsumerExit,
    ) -> Result<bool, WorkerError> {
        let key = held.key();
        consumers.running.remove(key);
        consumers.tasks.retain(|_, h| !Arc::ptr_eq(h, held));
        match exit {
            ConsumerExit::ShardEnded => {
                self.coordinator.forget(held);
                self.status.remove(key);
                Ok(true)
            }
            ConsumerExit::Released => {
                self.coordinator.forget(held);
                self.status.remove(key);
                Ok(false)
            }
            ConsumerExit::Stopped => {
                consumers.stopped.insert(key.to_owned(), held.clone());
                Ok(false)
            }
            ConsumerExit::Failed(error) => {
                // Released in the table (not only here: still in this worker's name, the next
                // scan would take it back to fail again), and left alone for a while.
                self.coordinator.release_failed(held).await;
                self.status.remove(key);
                let (stream, shard) = match self.streams.for_key(key) {
                    Ok((context, shard)) => (context.name.clone(), shard),
                    Err(_) => (self.config.stream.clone(), key.to_owned()),
                };
                if self.streams.tracker().is_some() {
                    // Multi-stream: one stream failing (deleted, access revoked) is not the
                    // worker's failure; the lease was released for whoever can read it.
                    error!(%stream, shard = %shard, %error, "reading a shard failed permanently; lease released");
                    return Ok(false);
                }
                Err(WorkerError::from_backend(&stream, Some(&shard), error))
            }
        }
    }

    /// A consumer task ended. Normally it reported its exit first; one that died (a panic in
    /// the framework, since user code runs under a catch) has its lease released so that this
    /// or another worker takes it again at the next scan.
    async fn joined(
        &self,
        consumers: &mut Consumers,
        joined: Result<(Id, ()), tokio::task::JoinError>,
    ) {
        let (id, error) = match joined {
            Ok((id, ())) => (id, None),
            Err(error) => (error.id(), Some(error)),
        };
        let Some(held) = consumers.tasks.remove(&id) else {
            return;
        };
        consumers.running.remove(held.key());
        if error.as_ref().is_some_and(|e| e.is_cancelled()) {
            return;
        }
        self.metrics.shard_task_failures.increment(1);
        match &error {
            Some(error) => {
                error!(lease = held.key(), %error, "a shard consumer task died; releasing its lease")
            }
            None => error!(
                lease = held.key(),
                "a shard consumer task ended without reporting; releasing its lease"
            ),
        }
        self.status.remove(held.key());
        if !held.is_lost()
            && let Err(error) = held.release(None).await
        {
            warn!(lease = held.key(), %error, "could not release the lease of a dead consumer");
        }
        self.coordinator.forget(&held);
    }

    /// Starts a consumer for every held lease without one; passes on the leases of stopped
    /// shards that another worker asked for.
    async fn start_consumers(
        &self,
        consumers: &mut Consumers,
        deaggregator: &Arc<Deaggregator>,
        exit_tx: &mpsc::UnboundedSender<(Arc<HeldLease>, ConsumerExit)>,
    ) {
        let held = self.coordinator.held();
        // Before any starts: the first to start must not take the prefetch shares of the rest.
        // Only the leases it processes share the budget.
        let processed = held
            .iter()
            .filter(|h| self.streams.accepts(h.key()))
            .count();
        self.budget.expect_shards(processed);
        for held in held {
            let key = held.key().to_owned();
            if consumers.running.contains(&key) {
                if !self.streams.accepts(&key) && !held.is_lost() {
                    // Its stream became unreadable while it ran (deleted and created again
                    // under its name): released, which stops the consumer (its lease is lost).
                    warn!(lease = %key, "releasing a lease whose stream is gone; its consumer stops");
                    if let Err(error) = held.release(None).await {
                        warn!(lease = %key, %error, "could not release a lease whose stream is gone");
                    }
                }
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
                    self.status.remove(&key);
                    self.coordinator.forget(&held);
                }
                continue;
            }
            let (stream, shard_id) = match self.streams.for_key(&key) {
                Ok(found) => found,
                Err(why) => {
                    // Not this worker's to process (any more): released in the table for whoever
                    // can, and never taken again (the coordinator's filter refuses it).
                    warn!(lease = %key, reason = %why, "releasing a lease this worker cannot process");
                    if !held.is_lost()
                        && let Err(error) = held.release(None).await
                    {
                        warn!(lease = %key, %error, "could not release a lease this worker cannot process");
                    }
                    self.status.remove(&key);
                    self.coordinator.forget(&held);
                    continue;
                }
            };
            let id = self.spawn_consumer(
                &mut consumers.set,
                held.clone(),
                stream,
                shard_id,
                deaggregator,
                exit_tx,
            );
            consumers.tasks.insert(id, held);
            consumers.running.insert(key);
        }
    }

    fn spawn_consumer(
        &self,
        set: &mut JoinSet<()>,
        held: Arc<HeldLease>,
        stream: Arc<streams::StreamContext>,
        shard_id: String,
        deaggregator: &Arc<Deaggregator>,
        exit_tx: &mpsc::UnboundedSender<(Arc<HeldLease>, ConsumerExit)>,
    ) -> Id {
        let span = info_span!("shard", stream = %stream.name, shard_id = %shard_id);
        let ctx = consumer::ConsumerContext {
            metrics: crate::metrics::ShardMetrics::new(&stream.scope, &shard_id),
            stream,
            shard_id,
            config: self.config.clone(),
            backend: self.backend.clone(),
            table: self.table.clone(),
            status: self.status.clone(),
            deaggregator: deaggregator.clone(),
            shutdown: self.shutdown.watch(),
            coordinator: self.coordinator.clone(),
            worker_metrics: self.metrics.clone(),
            budget: self.budget.clone(),
        };
        let factory = self.factory.clone();
        let exit_tx = exit_tx.clone();
        let key_ordered = self.key_ordered;
        set.spawn(
            async move {
                let exit = consumer::run(ctx, factory, held.clone(), key_ordered).await;
                let _ = exit_tx.send((held, exit));
            }
            .instrument(span),
        )
        .id()
    }
}

/// Records, when dropped, that `run` ended without saying how (it was cancelled).
struct FinishOnDrop(Arc<Lifecycle>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish(Err(WorkerError::Cancelled));
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// When to sync shards next, and a permanent failure in progress.
struct SyncState {
    next: Instant,
    retries: crate::retry::Schedule,
    /// Since when syncs have failed permanently (no success since), and the error.
    permanent: Option<(Instant, WorkerError)>,
    failing: bool,
}

impl Default for SyncState {
    fn default() -> Self {
        Self {
            next: Instant::now(),
            retries: SYNC_RETRY.schedule(),
            permanent: None,
            failing: false,
        }
    }
}

impl SyncState {
    /// Another worker leads shard sync: check again at `next` (neither a success nor a failure
    /// of this worker's).
    fn not_mine(&mut self, next: Instant) {
        self.next = next;
        self.retries = SYNC_RETRY.schedule();
        self.permanent = None;
        self.failing = false;
    }

    fn succeeded(&mut self, interval: Duration) {
        self.next = Instant::now() + interval;
        self.retries = SYNC_RETRY.schedule();
        self.permanent = None;
        self.failing = false;
    }

    /// Schedules the retry: with backoff, but never past the moment a permanent failure
    /// would be given up on.
    fn failed(&mut self, permanent: Option<WorkerError>, timeout: Duration) {
        let now = Instant::now();
        let mut delay = self.retries.next().unwrap_or(SYNC_RETRY.max);
        match permanent {
            Some(error) => {
                let since = self.permanent.get_or_insert((now, error)).0;
                delay = delay.min((since + timeout).saturating_duration_since(now));
            }
            None => self.permanent = None,
        }
        self.next = now + delay;
        self.failing = true;
    }

    fn failing(&self) -> bool {
        self.failing
    }
}

/// The worker's shard consumer tasks and what became of them.
#[derive(Default)]
struct Consumers {
    set: JoinSet<()>,
    /// The lease of each consumer task.
    tasks: HashMap<Id, Arc<HeldLease>>,
    /// Shards with a consumer running.
    running: HashSet<String>,
    /// Shards stopped by the failure policy, whose lease is kept until shutdown.
    stopped: HashMap<String, Arc<HeldLease>>,
}

/// Renews the worker's claim every renewal interval (sooner after a failure) until the worker
/// stops.
async fn renew_loop(
    coordinator: Arc<LeaseCoordinator>,
    mut shutdown: Watch<Shutdown>,
    lifecycle: Arc<Lifecycle>,
) {
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
                Lifecycle::flag(&lifecycle.heartbeat_failing, !ok);
                next = started + coordinator.next_renewal_in(ok);
            }
        }
    }
}
