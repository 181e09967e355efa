//! The shard consumer: the life of one leased shard on this worker.
//!
//! Wait for the parents to finish, create and initialize the processor, start retrieval from the
//! checkpoint, then for every batch: de-aggregate, drop what the checkpoint already covers, hand it
//! to the processor under the failure policy, and checkpoint at the configured cadence. At the end
//! of the shard: call `shard_ended`, record `SHARD_END` once it returned `Ok`, and create the
//! child leases. Lease loss, handoff requests and shutdown are watched throughout; before every
//! batch the consumer checks that the worker's claim on the lease is still fresh.
//!
//! A handoff (another worker asked for the lease) and a graceful shutdown end the same way: the
//! batch in flight finishes, `shutdown_requested` is called, the last processed record is
//! checkpointed, and the lease goes to the worker that asked for it (or, at shutdown, to the least
//! loaded live worker), which starts right after that checkpoint: no record is delivered twice.
//!
//! Every step that can fail and be retried (creating the processor, `initialize`, a batch, the
//! dead-letter handler, `shard_ended`, the `SHARD_END` write, child leases) counts its attempts
//! and waits between them with one helper, [`Retry`]: backoff between attempts, an optional
//! limit, and the wait cut short when the lease is lost or asked for or the worker stops
//! ([`Interrupts`]). All user code runs under the same panic catch ([`catch`]). What happens to a
//! batch that fails (retries, partial failures, bisection, record age, the dead-letter handler)
//! is decided in one place, the `delivery` module, for both processing modes; automatic
//! checkpoints are written in one place, [`Progress`].
//!
//! With `WorkerBuilder::key_ordered` (more than one batch in flight), the loop over retrieval
//! events is the `key_ordered` module's instead of [`Consumer::lifecycle`]'s; everything before
//! (parents, processor, `initialize`) and after (handoff, shutdown, shard end) is shared.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::delivery::{self, Call, DeliveryContext, End};
use super::key_ordered::{self, AsShared, KeyOrdered};
use super::streams::StreamContext;
use super::{CheckpointCadence, ConsumerExit, ShardState, Shutdown, StatusBoard, WorkerConfig};
use crate::backend::{ChildShard, StreamBackend};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::deaggregation::Deaggregator;
use crate::lease::coordinator::LeaseCoordinator;
use crate::lease::held::{HeldLease, HeldStatus};
use crate::lease::{Lease, LeaseTable, PendingCheckpoint};
use crate::metrics::{ShardMetrics, UserCall, WorkerMetrics};
use crate::processor::{
    BoxError, InitializationInput, ProcessRecordsInput, ProcessorFactory, RecordProcessor,
    ShardEndedInput, ShardInfo, ShutdownReason,
};
use crate::record::{ExtendedSequenceNumber, Record};
use crate::retrieval::{
    PrefetchBudget, RetrievalContext, RetrievalEvent, Retriever, WorkerBudget, starting_position,
};
use crate::retry::RetryBackoff;
use crate::sync::Watch;

/// Shared state a consumer needs.
pub(crate) struct ConsumerContext {
    /// The stream the shard belongs to, with its settings.
    pub stream: Arc<StreamContext>,
    /// The shard id (the lease key without any stream prefix).
    pub shard_id: String,
    pub config: Arc<WorkerConfig>,
    pub backend: Arc<dyn StreamBackend>,
    pub table: Arc<dyn LeaseTable>,
    pub status: Arc<StatusBoard>,
    pub deaggregator: Arc<Deaggregator>,
    pub shutdown: Watch<Shutdown>,
    pub coordinator: Arc<LeaseCoordinator>,
    pub metrics: ShardMetrics,
    pub worker_metrics: Arc<WorkerMetrics>,
    pub budget: Arc<WorkerBudget>,
}

/// Something that interrupted the consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Interrupt {
    /// The lease is no longer ours.
    Lost,
    /// Another worker asked for the lease.
    Handoff,
    /// The worker is shutting down.
    Shutdown,
}

/// What can interrupt a shard's work: its lease's status and the worker's shutdown. A clone
/// follows the same signals (every batch in flight has its own).
#[derive(Clone, Debug)]
pub(super) struct Interrupts {
    status: Watch<HeldStatus>,
    shutdown: Watch<Shutdown>,
}

impl Interrupts {
    /// Resolves when the lease is lost or asked for, or the worker shuts down.
    pub(super) async fn next(&mut self) -> Interrupt {
        loop {
            match self.status.get_and_update() {
                HeldStatus::Lost => return Interrupt::Lost,
                HeldStatus::HandoffRequested => return Interrupt::Handoff,
                HeldStatus::Held => {}
            }
            if self.shutdown.get_and_update().stops_consumers() {
                return Interrupt::Shutdown;
            }
            self.changed().await;
        }
    }

    /// Resolves when work being finished must stop at once: the lease is lost, or the worker
    /// stops immediately.
    pub(super) async fn escalated(&mut self) -> Interrupt {
        loop {
            if self.status.get_and_update() == HeldStatus::Lost {
                return Interrupt::Lost;
            }
            if self.shutdown.get_and_update() == Shutdown::Immediate {
                return Interrupt::Shutdown;
            }
            self.changed().await;
        }
    }

    async fn changed(&mut self) {
        tokio::select! {
            biased;
            _ = self.status.changed() => {}
            _ = self.shutdown.changed() => {}
        }
    }

    /// Sleeps `delay` unless the lease is lost or asked for, or the worker stops.
    pub(super) async fn pause(&mut self, delay: Duration) -> Option<Interrupt> {
        tokio::select! {
            biased;
            interrupt = self.next() => Some(interrupt),
            _ = tokio::time::sleep(delay) => None,
        }
    }

    /// How the worker is asked to stop, if it is.
    pub(super) fn shutdown(&self) -> Shutdown {
        self.shutdown.get()
    }
}

/// Whether to try a failed step again.
pub(super) enum Again {
    Yes,
    /// The attempts allowed were used up (this many).
    GaveUp(u32),
    Interrupted(Interrupt),
}

/// The attempts of a failing step: a backoff between them, an optional limit, and waits cut
/// short by an interruption. The one retry helper of the consumer.
pub(super) struct Retry {
    delays: crate::retry::Schedule,
    max_attempts: Option<u32>,
    failed: u32,
}

impl Retry {
    pub(super) fn new(backoff: &RetryBackoff, max_attempts: Option<u32>) -> Self {
        Self {
            delays: backoff.schedule(),
            max_attempts,
            failed: 0,
        }
    }

    /// The number of the attempt about to be made (or just made), from 1.
    fn attempt(&self) -> u32 {
        self.failed.saturating_add(1)
    }

    /// The attempt failed: waits the next delay unless the limit is reached or an interruption
    /// comes meanwhile, and says whether to try again.
    pub(super) async fn failed(&mut self, interrupts: &mut Interrupts) -> Again {
        self.failed = self.failed.saturating_add(1);
        if self.max_attempts.is_some_and(|max| self.failed >= max) {
            return Again::GaveUp(self.failed);
        }
        let delay = self.delays.next().unwrap_or_default();
        match interrupts.pause(delay).await {
            Some(interrupt) => Again::Interrupted(interrupt),
            None => Again::Yes,
        }
    }
}

/// One leased shard on this worker, with or without a processor yet: its context, its lease
/// and what can interrupt it.
pub(super) struct Shard {
    pub ctx: ConsumerContext,
    /// The shard id.
    pub id: String,
    /// The lease key (the shard id, or `account:stream:creationEpoch:shardId`): what the status
    /// board knows the shard by.
    pub key: String,
    pub held: Arc<HeldLease>,
    pub interrupts: Interrupts,
}

impl Shard {
    pub(super) fn set_state(&self, state: ShardState) {
        self.ctx.status.update(&self.key, |s| s.state = state);
    }

    /// Waits until every parent lease is finished or gone (`Ok`), or an interruption.
    async fn wait_for_parents(&mut self, lease: &Lease) -> Result<(), Interrupt> {
        loop {
            let mut pending = None;
            for parent in &lease.parent_shard_ids {
                // Parents are shard ids of the same stream.
                match self
                    .ctx
                    .table
                    .get(&self.ctx.stream.naming.lease_key(parent))
                    .await
                {
                    Ok(Some(parent_lease)) if !parent_lease.is_finished() => {
                        pending = Some(parent.clone());
                        break;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        warn!(%parent, %error, "could not read parent lease; will retry");
                        pending = Some(parent.clone());
                        break;
                    }
                }
            }
            let Some(parent) = pending else {
                return Ok(());
            };
            debug!(%parent, "waiting for parent shard to finish");
            let delay = self.ctx.config.parent_poll_interval;
            if let Some(interrupt) = self.interrupts.pause(delay).await {
                return Err(interrupt);
            }
        }
    }

    /// Creates the processor under the failure policy: a panicking factory is retried, then
    /// stops the shard (lease kept), never a silent stall.
    async fn create<F: ProcessorFactory>(
        &mut self,
        factory: &F,
        info: &ShardInfo,
    ) -> Result<F::Processor, ConsumerExit> {
        let policy = self.ctx.config.failure_policy.clone();
        let mut retry = Retry::new(policy.backoff(), policy.max_attempts());
        loop {
            let panic = match std::panic::catch_unwind(AssertUnwindSafe(|| factory.create(info))) {
                Ok(processor) => return Ok(processor),
                Err(panic) => panic,
            };
            self.ctx.metrics.processor_failure(UserCall::Create);
            let error = panic_message(panic.as_ref());
            error!(attempt = retry.attempt(), %error, "creating the processor panicked");
            self.set_state(ShardState::Retrying);
            match retry.failed(&mut self.interrupts).await {
                Again::Yes => {}
                Again::GaveUp(attempts) => {
                    error!(
                        attempts,
                        "the processor could not be created; the failure policy stops the shard (lease kept)"
                    );
                    self.set_state(ShardState::Stopped);
                    return Err(ConsumerExit::Stopped);
                }
                Again::Interrupted(interrupt) => return Err(self.give_back(interrupt).await),
            }
        }
    }

    /// Whether every parent of `child` other than this shard holds a finished lease.
    async fn other_parents_finished(&self, child: &ChildShard) -> bool {
        for parent in child.parent_shards.iter().filter(|p| **p != self.id) {
            match self
                .ctx
                .table
                .get(&self.ctx.stream.naming.lease_key(parent))
                .await
            {
                Ok(Some(lease)) if lease.is_finished() => {}
                Ok(_) => return false,
                Err(error) => {
                    debug!(%parent, %error, "could not read the other parent; leaving the child to it");
                    return false;
                }
            }
        }
        true
    }

    /// Lets the lease go without a processor (no checkpoint to write): to the worker that asked
    /// for it, or to a live worker at shutdown; a lost lease is simply dropped.
    async fn give_back(&self, interrupt: Interrupt) -> ConsumerExit {
        self.set_state(ShardState::Finished);
        if interrupt != Interrupt::Lost {
            self.release().await;
        }
        ConsumerExit::Released
    }

    /// Releases the lease to its next owner (see [`successor`]); counts a handover.
    async fn release(&self) {
        let successor = successor(&self.ctx, &self.held);
        let handing_over =
            successor.is_some() || self.held.status() == HeldStatus::HandoffRequested;
        match self.held.release(successor.as_deref()).await {
            Ok(()) => {
                if handing_over {
                    self.ctx.worker_metrics.leases_handed_off.increment(1);
                }
                info!(?successor, "lease handed over");
            }
            Err(error) => warn!(%error, "could not release lease"),
        }
    }
}

/// Where a lease let go at shutdown goes: nowhere in particular when another worker asked for it
/// (the release completes that handoff), else the least loaded live worker.
fn successor(ctx: &ConsumerContext, held: &HeldLease) -> Option<String> {
    if held.status() == HeldStatus::HandoffRequested {
        None
    } else {
        ctx.coordinator.successor_for(held.key())
    }
}

/// Runs the consumer of `held` to completion. `key_ordered` is how to share the processor
/// between batches, when its factory's processors can be ([`crate::processor::ConcurrentProcessor`]).
pub(crate) async fn run<F: ProcessorFactory>(
    ctx: ConsumerContext,
    factory: Arc<F>,
    held: Arc<HeldLease>,
    key_ordered: Option<AsShared<F::Processor>>,
) -> ConsumerExit {
    let lease = held.lease().await;
    ctx.status
        .register(&lease.key, &ctx.stream.name, &ctx.shard_id);
    let mut shard = Shard {
        id: ctx.shard_id.clone(),
        key: lease.key.clone(),
        interrupts: Interrupts {
            status: held.watch(),
            shutdown: ctx.shutdown.clone(),
        },
        held,
        ctx,
    };

    // 1. Parents first.
    shard.set_state(ShardState::WaitingOnParents);
    if let Err(interrupt) = shard.wait_for_parents(&lease).await {
        return shard.give_back(interrupt).await;
    }
    if lease.is_finished() {
        return ConsumerExit::ShardEnded;
    }
    // Waiting may have taken long (a paused worker): no user code for a lease no longer ours.
    if !shard.held.is_valid() {
        shard.held.mark_lost();
        return shard.give_back(Interrupt::Lost).await;
    }

    // 2. Processor.
    shard.set_state(ShardState::Initializing);
    let info = ShardInfo {
        stream: shard.ctx.stream.name.clone(),
        stream_id: shard.ctx.stream.naming.stream().map(str::to_owned),
        shard_id: shard.id.clone(),
        parent_shard_ids: lease.parent_shard_ids.clone(),
    };
    let processor = match shard.create(factory.as_ref(), &info).await {
        Ok(processor) => processor,
        Err(exit) => return exit,
    };
    let config = &shard.ctx.config;
    let checkpointer = Checkpointer::new(
        shard.held.clone(),
        lease.checkpoint.clone(),
        config.checkpoint_retry,
    )
    .with_metrics(
        shard.ctx.metrics.checkpoints.clone(),
        shard.ctx.metrics.checkpoint_failures.clone(),
    );
    let delivery = DeliveryContext {
        stream: shard.ctx.stream.name.clone(),
        shard_id: shard.id.clone(),
        metrics: shard.ctx.metrics.clone(),
        status: shard.ctx.status.clone(),
        policy: config.failure_policy.clone(),
        bisect: config.bisect_failed_batches,
        max_age: config.max_record_age,
    };
    let progress = Progress {
        checkpointer,
        last_processed: None,
        records_since_checkpoint: 0,
        remembered: None,
        written_remembered: lease.pending_checkpoint.clone(),
        force_remembered: false,
        cadence: config.checkpoint,
        status: shard.ctx.status.clone(),
        key: shard.key.clone(),
    };
    // Key-ordered only with more than one batch in flight: one is today's path exactly.
    let key_ordered = key_ordered.zip(config.key_ordered.filter(|mode| mode.max_in_flight > 1));
    let mut consumer = Consumer {
        shard,
        processor,
        progress,
        delivery,
        resume_after: match &lease.checkpoint {
            ExtendedSequenceNumber::Sequence { .. } => Some(lease.checkpoint.clone()),
            _ => None,
        },
        feed: None,
        key_ordered,
    };
    consumer.lifecycle(lease).await
}

/// A running retriever, the receiving end of its events and the budget batches are given back
/// to.
pub(super) struct Feed {
    events: tokio::sync::mpsc::Receiver<RetrievalEvent>,
    pub budget: Arc<PrefetchBudget>,
    retriever: Retriever,
}

/// The next event of `feed` (`None` once stopped or ended).
pub(super) async fn next_event(feed: &mut Option<Feed>) -> Option<RetrievalEvent> {
    match feed {
        Some(feed) => feed.events.recv().await,
        None => None,
    }
}

/// What the consumer loop reacts to next.
enum Next {
    Interrupt(Interrupt),
    Event(Option<RetrievalEvent>),
}

/// How one event ended: go on, or the consumer's exit.
type Step = Result<(), ConsumerExit>;

/// A fetched batch as it arrived from retrieval.
pub(super) struct Fetched {
    pub records: Vec<Record>,
    /// Raw records and bytes fetched (what the prefetch budget is charged).
    pub fetched: (usize, usize),
    pub millis_behind_latest: Option<u64>,
    pub queued_at: Instant,
}

/// Takes a fetched batch in: counted, de-aggregated into `out`, filtered past the checkpoint
/// the shard resumed from, and the lag noted. Both processing modes receive records this way.
pub(super) fn receive(
    shard: &Shard,
    resume_after: &mut Option<ExtendedSequenceNumber>,
    lease: &Lease,
    fetched: Fetched,
    out: &mut Vec<Record>,
) {
    let metrics = &shard.ctx.metrics;
    metrics
        .prefetch_wait
        .record(fetched.queued_at.elapsed().as_secs_f64());
    metrics.records_fetched.increment(fetched.fetched.0 as u64);
    out.clear();
    let stats = shard.ctx.deaggregator.deaggregate_batch_into(
        fetched.records,
        lease.hash_key_range.as_ref(),
        out,
    );
    metrics.deaggregated(&stats);
    if let Some(after) = resume_after {
        out.retain(|r| r.position() > *after);
        if !out.is_empty() {
            *resume_after = None;
        }
    }
    shard
        .ctx
        .status
        .fetched(&shard.key, fetched.millis_behind_latest);
}

/// How far a shard got and what is checkpointed: the one place automatic checkpoints are
/// written, in both processing modes.
pub(super) struct Progress {
    pub checkpointer: Checkpointer,
    /// The last record handled (processed, dead-lettered, skipped): in key-ordered mode, the end
    /// of the contiguous prefix of handled records.
    last_processed: Option<ExtendedSequenceNumber>,
    records_since_checkpoint: u64,
    /// Key-ordered mode: the records handled beyond `last_processed`, written as the pending
    /// checkpoint with every checkpoint.
    remembered: Option<PendingCheckpoint>,
    /// The pending checkpoint as last written (or found on the lease).
    written_remembered: Option<PendingCheckpoint>,
    /// Write `remembered` at the next checkpoint even if it looks written.
    force_remembered: bool,
    cadence: CheckpointCadence,
    status: Arc<StatusBoard>,
    /// The lease key (the status board's key).
    key: String,
}

impl Progress {
    /// `n` more records are handled, up to `last`.
    pub(super) fn mark(&mut self, last: ExtendedSequenceNumber, n: usize) {
        self.last_processed = Some(last);
        self.records_since_checkpoint += n as u64;
    }

    /// `n` more records are handled, wherever they are (key-ordered mode).
    pub(super) fn count(&mut self, n: usize) {
        self.records_since_checkpoint += n as u64;
    }

    /// The contiguous prefix of handled records now ends at `prefix` (key-ordered mode): the
    /// checkpoint, automatic or the processor's own, may go that far.
    pub(super) fn reached(&mut self, prefix: ExtendedSequenceNumber) {
        self.checkpointer.permit(prefix.clone());
        self.last_processed = Some(prefix);
    }

    /// The position a checkpoint written now would hold.
    pub(super) fn target(&self) -> ExtendedSequenceNumber {
        let last = self.checkpointer.last_checkpoint();
        match &self.last_processed {
            Some(position) if position > last => position.clone(),
            _ => last.clone(),
        }
    }

    /// What to write as the pending checkpoint from now on (key-ordered mode).
    pub(super) fn remember(&mut self, remembered: Option<PendingCheckpoint>) {
        self.remembered = remembered;
    }

    /// Whether the cadence asks for a checkpoint now.
    pub(super) fn due(&self) -> bool {
        if self.records_since_checkpoint == 0 {
            return false;
        }
        let by_count = self
            .cadence
            .every_records
            .is_some_and(|n| self.records_since_checkpoint >= n);
        let by_time = self
            .cadence
            .every_interval
            .is_some_and(|t| self.checkpointer.last_write_at().elapsed() >= t);
        by_count || by_time
    }

    /// Writes an automatic checkpoint if the cadence says so; `Err` if the lease was lost.
    pub(super) async fn maybe_checkpoint(&mut self) -> Result<(), Interrupt> {
        if !self.due() {
            return Ok(());
        }
        match self.checkpoint().await {
            Err(CheckpointError::LeaseLost(_)) => Err(Interrupt::Lost),
            _ => Ok(()),
        }
    }

    /// Checkpoints the last handled record, if it is ahead of the last checkpoint, with what is
    /// remembered beyond it (key-ordered mode; nothing otherwise, which clears any pending
    /// checkpoint as every commit does).
    pub(super) async fn checkpoint(&mut self) -> Result<(), CheckpointError> {
        let position = self.target();
        let moves = position > *self.checkpointer.last_checkpoint();
        let state_changes = self.remembered.is_some()
            && (self.force_remembered || self.remembered != self.written_remembered);
        if !moves && !state_changes {
            self.records_since_checkpoint = 0;
            return Ok(());
        }
        let pending = self.remembered.clone();
        let result = if moves {
            self.checkpointer
                .checkpoint_with_pending(position.clone(), pending.clone())
                .await
        } else {
            self.checkpointer.write_pending(pending.clone()).await
        };
        match result {
            Ok(()) => {
                self.records_since_checkpoint = 0;
                self.written_remembered = pending;
                self.force_remembered = false;
                if moves {
                    self.status
                        .update(&self.key, |s| s.last_checkpoint = Some(position));
                }
                Ok(())
            }
            Err(error) => {
                warn!(%error, "automatic checkpoint failed");
                Err(error)
            }
        }
    }
}

/// The one-batch-at-a-time way of calling the processor: `&mut`, with the checkpointer, each
/// handled run of records marked and checkpointed at the cadence.
struct InOrder<'c, P> {
    processor: &'c mut P,
    progress: &'c mut Progress,
}

impl<P: RecordProcessor> Call for InOrder<'_, P> {
    async fn call(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        self.progress.checkpointer.deliver(input.records);
        catch(
            self.processor
                .process_records(input, &mut self.progress.checkpointer),
        )
        .await
    }

    async fn handled(&mut self, records: &[Record]) -> Result<(), Interrupt> {
        if let Some(last) = records.last() {
            self.progress.mark(last.position(), records.len());
        }
        self.progress.maybe_checkpoint().await
    }
}

pub(super) struct Consumer<P: RecordProcessor> {
    shard: Shard,
    processor: P,
    progress: Progress,
    delivery: DeliveryContext,
    /// Drop records at or before this position (restart from a checkpoint).
    resume_after: Option<ExtendedSequenceNumber>,
    /// Retrieval, while it runs. Stopped ([`Consumer::stop_retrieval`]) before the lease is let
    /// go or the shard finished, so a fan-out subscription is closed before the next owner
    /// subscribes.
    feed: Option<Feed>,
    /// Key-ordered mode (more than one batch in flight).
    key_ordered: Option<(AsShared<P>, KeyOrdered)>,
}

impl<P: RecordProcessor> Consumer<P> {
    async fn lifecycle(&mut self, lease: Lease) -> ConsumerExit {
        if let Err(exit) = self.initialize(&lease).await {
            return exit;
        }
        let Some(start) = starting_position(
            &lease.checkpoint,
            self.shard.ctx.stream.initial_position.timestamp(),
        ) else {
            return ConsumerExit::ShardEnded;
        };
        self.start_retrieval(start);
        self.shard.set_state(ShardState::Processing);
        if let Some((as_shared, mode)) = self.key_ordered {
            return self.key_ordered(as_shared, mode, &lease).await;
        }
        let mut batch = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                interrupt = self.shard.interrupts.next() => Next::Interrupt(interrupt),
                event = next_event(&mut self.feed) => Next::Event(event),
            };
            let step = match next {
                Next::Interrupt(interrupt) => Err(self.interrupted(interrupt).await),
                Next::Event(Some(RetrievalEvent::Records {
                    records,
                    millis_behind_latest,
                    bytes,
                    queued_at,
                })) => {
                    let fetched = Fetched {
                        fetched: (records.len(), bytes),
                        records,
                        millis_behind_latest,
                        queued_at,
                    };
                    self.on_records(fetched, &lease, &mut batch).await
                }
                Next::Event(Some(RetrievalEvent::CaughtUp {
                    millis_behind_latest,
                })) => {
                    self.shard
                        .ctx
                        .status
                        .fetched(&self.shard.key, millis_behind_latest);
                    self.maybe_checkpoint().await
                }
                Next::Event(Some(RetrievalEvent::ShardEnd { child_shards })) => {
                    Err(self.shard_end(child_shards).await)
                }
                Next::Event(Some(RetrievalEvent::Failed(error))) => {
                    error!(%error, "reading the shard failed permanently; releasing the lease");
                    self.interrupted(Interrupt::Shutdown).await;
                    Err(ConsumerExit::Failed(error))
                }
                Next::Event(None) => {
                    error!("retrieval stopped unexpectedly; releasing the lease");
                    Err(self.interrupted(Interrupt::Shutdown).await)
                }
            };
            if let Err(exit) = step {
                return exit;
            }
        }
    }

    /// The loop of key-ordered mode, then what it ended with.
    async fn key_ordered(
        &mut self,
        as_shared: AsShared<P>,
        mode: KeyOrdered,
        lease: &Lease,
    ) -> ConsumerExit {
        let exit = key_ordered::run(key_ordered::Parts {
            shared: as_shared(&self.processor),
            mode,
            shard: &mut self.shard,
            progress: &mut self.progress,
            delivery: &self.delivery,
            feed: &mut self.feed,
            resume_after: &mut self.resume_after,
            lease,
        })
        .await;
        match exit {
            key_ordered::Exit::Interrupted(interrupt) => self.interrupted(interrupt).await,
            key_ordered::Exit::ShardEnd(children) => self.shard_end(children).await,
            key_ordered::Exit::Stopped => {
                // What was completed stays completed: the next owner starts right at the
                // failure.
                let _ = self.progress.checkpoint().await;
                self.stopped().await
            }
            key_ordered::Exit::Failed(error) => {
                error!(%error, "reading the shard failed permanently; releasing the lease");
                self.interrupted(Interrupt::Shutdown).await;
                ConsumerExit::Failed(error)
            }
            key_ordered::Exit::RetrievalStopped => {
                error!("retrieval stopped unexpectedly; releasing the lease");
                self.interrupted(Interrupt::Shutdown).await
            }
        }
    }

    /// Calls `initialize` under the failure policy.
    async fn initialize(&mut self, lease: &Lease) -> Step {
        let input = InitializationInput {
            stream: self.shard.ctx.stream.name.clone(),
            shard_id: self.shard.id.clone(),
            checkpoint: lease.checkpoint.clone(),
            pending_checkpoint: lease.pending_checkpoint.clone(),
        };
        let policy = self.shard.ctx.config.failure_policy.clone();
        let mut retry = Retry::new(policy.backoff(), policy.max_attempts());
        loop {
            let Err(error) = catch(self.processor.initialize(input.clone())).await else {
                return Ok(());
            };
            self.shard
                .ctx
                .metrics
                .processor_failure(UserCall::Initialize);
            error!(attempt = retry.attempt(), %error, "initialize failed");
            self.shard.set_state(ShardState::Retrying);
            match retry.failed(&mut self.shard.interrupts).await {
                Again::Yes => {}
                Again::GaveUp(attempts) => {
                    error!(
                        attempts,
                        "initialize kept failing; the failure policy stops the shard (lease kept)"
                    );
                    self.shard.set_state(ShardState::Stopped);
                    return Err(ConsumerExit::Stopped);
                }
                Again::Interrupted(interrupt) => return Err(self.interrupted(interrupt).await),
            }
        }
    }

    fn start_retrieval(&mut self, start: crate::backend::StartingPosition) {
        let ctx = &self.shard.ctx;
        let (events, budget, retriever) = crate::retrieval::spawn(
            RetrievalContext {
                retrieval: &ctx.stream.retrieval,
                stream: &ctx.stream.name,
                default_consumer_name: &ctx.config.application_name,
                permanent_error_timeout: ctx.config.permanent_error_timeout,
                worker_budget: &ctx.budget,
                consumers: &ctx.stream.consumers,
                metrics: ctx.metrics.retrieval.clone(),
            },
            ctx.backend.clone(),
            &self.shard.id,
            start,
        );
        self.feed = Some(Feed {
            events,
            budget,
            retriever,
        });
    }

    /// A fetched batch: de-aggregated, filtered past the checkpoint, processed, given back to
    /// the prefetch budget, checkpointed at the cadence.
    async fn on_records(
        &mut self,
        fetched: Fetched,
        lease: &Lease,
        batch: &mut Vec<Record>,
    ) -> Step {
        let (records, bytes) = fetched.fetched;
        let mbl = fetched.millis_behind_latest;
        receive(&self.shard, &mut self.resume_after, lease, fetched, batch);
        // A paused or cut-off worker stops here, before anyone may take over.
        if !batch.is_empty() && !self.shard.held.is_valid() {
            warn!("the worker's claim on the lease went stale; stopping");
            self.shard.held.mark_lost();
            return Err(self.interrupted(Interrupt::Lost).await);
        }
        let end = if batch.is_empty() {
            End::Done
        } else {
            let taken = std::mem::take(batch);
            let mut call = InOrder {
                processor: &mut self.processor,
                progress: &mut self.progress,
            };
            let delivered = delivery::deliver(
                &mut call,
                &self.delivery,
                &taken,
                mbl,
                &mut self.shard.interrupts,
            )
            .await;
            *batch = taken;
            delivered.end
        };
        if let Some(feed) = &self.feed {
            feed.budget.release(records, bytes);
        }
        match end {
            End::Done => self.maybe_checkpoint().await,
            End::Stop => Err(self.stopped().await),
            End::Interrupted(interrupt) => Err(self.interrupted(interrupt).await),
        }
    }

    /// The failure policy stopped the shard: retrieval stops, the lease is kept.
    async fn stopped(&mut self) -> ConsumerExit {
        error!("failure policy stopped the shard; the lease is kept until shutdown");
        self.stop_retrieval().await;
        self.shard.set_state(ShardState::Stopped);
        ConsumerExit::Stopped
    }

    /// Writes an automatic checkpoint if the cadence says so; ends the consumer if the lease
    /// was lost.
    async fn maybe_checkpoint(&mut self) -> Step {
        match self.progress.maybe_checkpoint().await {
            Err(interrupt) => Err(self.interrupted(interrupt).await),
            Ok(()) => Ok(()),
        }
    }

    /// Stops retrieval and drops its queue: a fan-out subscription is closed when this returns.
    async fn stop_retrieval(&mut self) {
        if let Some(mut feed) = self.feed.take() {
            feed.retriever.stop().await;
        }
    }

    async fn interrupted(&mut self, interrupt: Interrupt) -> ConsumerExit {
        // Before the processor is told and the lease let go: the next owner must not find this
        // worker's subscription still open (it would be refused with ResourceInUse and back off).
        self.stop_retrieval().await;
        match interrupt {
            Interrupt::Lost => {
                info!("lease lost");
                if let Err(error) = catch(self.processor.lease_lost()).await {
                    self.shard
                        .ctx
                        .metrics
                        .processor_failure(UserCall::LeaseLost);
                    warn!(%error, "lease_lost failed");
                }
            }
            Interrupt::Handoff | Interrupt::Shutdown => {
                if self.shard.interrupts.shutdown() == Shutdown::Immediate {
                    // No processor call, no checkpoint: the worker releases the lease.
                    info!("stopping immediately");
                } else if !self.shard.held.is_lost() {
                    let reason = if interrupt == Interrupt::Handoff {
                        ShutdownReason::Handoff
                    } else {
                        ShutdownReason::WorkerShutdown
                    };
                    let call = self
                        .processor
                        .shutdown_requested(reason, &mut self.progress.checkpointer);
                    if let Err(error) = catch(call).await {
                        self.shard
                            .ctx
                            .metrics
                            .processor_failure(UserCall::ShutdownRequested);
                        warn!(%error, "shutdown_requested failed");
                    }
                    if self.shard.ctx.config.checkpoint.is_automatic() {
                        // What a key-ordered shard remembers goes out again even if the
                        // processor committed a checkpoint of its own just now (which clears it).
                        self.progress.force_remembered = true;
                        let _ = self.progress.checkpoint().await;
                    }
                    self.shard.release().await;
                }
            }
        }
        self.shard.set_state(ShardState::Finished);
        ConsumerExit::Released
    }

    async fn shard_end(&mut self, child_shards: Vec<ChildShard>) -> ConsumerExit {
        self.stop_retrieval().await;
        let children: Vec<String> = child_shards.iter().map(|c| c.shard_id.clone()).collect();
        // Records processed before the end count: the SHARD_END write covers them.
        self.progress
            .checkpointer
            .permit(ExtendedSequenceNumber::ShardEnd);
        // `shard_ended` must succeed before SHARD_END is recorded: retried until it does.
        let backoff = *self.shard.ctx.config.failure_policy.backoff();
        let mut retry = Retry::new(&backoff, None);
        loop {
            let input = ShardEndedInput {
                shard_id: self.shard.id.clone(),
                child_shards: child_shards.clone(),
            };
            let call = self
                .processor
                .shard_ended(input, &mut self.progress.checkpointer);
            let Err(error) = catch(call).await else {
                break;
            };
            self.shard
                .ctx
                .metrics
                .processor_failure(UserCall::ShardEnded);
            warn!(%error, "shard_ended failed; retrying before recording SHARD_END");
            if let Again::Interrupted(interrupt) = retry.failed(&mut self.shard.interrupts).await {
                return self.interrupted(interrupt).await;
            }
        }
        // SHARD_END, fenced, retried with the lease-write backoff until it is written.
        let mut retry = Retry::new(&self.shard.ctx.config.checkpoint_retry.backoff, None);
        loop {
            match self
                .progress
                .checkpointer
                .checkpoint_shard_end(children.clone())
                .await
            {
                Ok(()) => break,
                Err(CheckpointError::LeaseLost(_)) => {
                    return self.interrupted(Interrupt::Lost).await;
                }
                Err(error) => warn!(%error, "could not record SHARD_END; retrying"),
            }
            if let Again::Interrupted(interrupt) = retry.failed(&mut self.shard.interrupts).await {
                return self.interrupted(interrupt).await;
            }
        }
        // Children only now: the SHARD_END write above is fenced, so a worker that lost the lease
        // (a zombie resuming long after the shard was finished and its finished leases cleaned
        // up) never re-creates a child lease. A crash between the two writes leaves a hole that
        // shard sync repairs: it creates the leases of children whose parents all finished.
        self.create_child_leases(&child_shards).await;
        if self.shard.held.status() == HeldStatus::HandoffRequested
            && let Err(error) = self.shard.held.release(None).await
        {
            debug!(%error, "could not complete the handoff of an ended shard");
        }
        info!(children = ?children, "shard ended");
        self.shard.ctx.status.update(&self.shard.key, |s| {
            s.state = ShardState::Ended;
            s.last_checkpoint = Some(ExtendedSequenceNumber::ShardEnd);
        });
        ConsumerExit::ShardEnded
    }

    /// Creates the leases of the children whose every other parent has finished too: a merge
    /// child is created by whichever parent ends last (each writes `SHARD_END` before looking at
    /// the other, so at least one sees both finished). A child lease therefore never exists
    /// before all its parents finished, which is what lets a missing parent lease mean
    /// "finished and cleaned up". Idempotent; a few attempts; shard sync repairs the rest.
    async fn create_child_leases(&mut self, child_shards: &[ChildShard]) {
        let retry_policy = self.shard.ctx.config.checkpoint_retry;
        for child in child_shards {
            // Only while the claim holds: a worker paused here must not create a child that was
            // processed, finished and removed meanwhile.
            if !self.shard.held.is_valid() {
                debug!("claim no longer valid; leaving the children to shard sync");
                return;
            }
            if !self.shard.other_parents_finished(child).await {
                debug!(child = %child.shard_id, "another parent has not finished; it creates the child");
                continue;
            }
            let key = self.shard.ctx.stream.naming.lease_key(&child.shard_id);
            let lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon)
                .with_parents(child.parent_shards.iter().cloned())
                .with_hash_key_range(child.hash_key_range);
            let mut retry = Retry::new(&retry_policy.backoff, Some(retry_policy.max_attempts));
            loop {
                match self.shard.ctx.table.create_if_absent(&lease).await {
                    Ok(created) => {
                        if created {
                            info!(child = %child.shard_id, "created child lease");
                        }
                        break;
                    }
                    Err(error) => {
                        warn!(child = %child.shard_id, %error, "could not create child lease");
                    }
                }
                let again = if self.shard.held.is_valid() {
                    retry.failed(&mut self.shard.interrupts).await
                } else {
                    Again::GaveUp(retry.attempt())
                };
                if !matches!(again, Again::Yes) {
                    warn!(child = %child.shard_id, "leaving the child lease to shard sync");
                    break;
                }
            }
        }
    }
}

/// Runs user code under the panic catch: an error or a panic both come back as an error.
pub(super) async fn catch<E: Into<BoxError>>(
    call: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), BoxError> {
    match AssertUnwindSafe(call).catch_unwind().await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(panic) => Err(panic_error(panic)),
    }
}

/// The message of a caught panic.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The error standing for a caught panic of user code.
pub(super) fn panic_error(panic: Box<dyn std::any::Any + Send>) -> BoxError {
    format!("processor panicked: {}", panic_message(panic.as_ref())).into()
}
