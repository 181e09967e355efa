//! The shard consumer: the life of one leased shard on this worker.
//!
//! Wait for the parents to finish, create and initialize the processor, start retrieval from the
//! checkpoint, then for every batch: de-aggregate, drop what the checkpoint already covers, hand it
//! to the processor under the failure policy, and checkpoint at the configured cadence. At the end
//! of the shard: create the child leases, call `shard_ended`, and record `SHARD_END` once it
//! returned `Ok`. Lease loss, handoff requests and shutdown are watched throughout; before every
//! batch the consumer checks that the worker's claim on the lease is still fresh.
//!
//! A handoff (another worker asked for the lease) and a graceful shutdown end the same way: the
//! batch in flight finishes, `shutdown_requested` is called, the last processed record is
//! checkpointed, and the lease goes to the worker that asked for it (or, at shutdown, to the least
//! loaded live worker), which starts right after that checkpoint: no record is delivered twice.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::{ConsumerExit, ShardState, Shutdown, StatusBoard, WorkerConfig};
use crate::backend::{ChildShard, StreamBackend};
use crate::checkpoint::{CheckpointError, Checkpointer};
use crate::deaggregation::Deaggregator;
use crate::lease::coordinator::LeaseCoordinator;
use crate::lease::held::{HeldLease, HeldStatus};
use crate::lease::{Lease, LeaseTable};
use crate::metrics::{ShardMetrics, UserCall, WorkerMetrics};
use crate::processor::{
    BoxError, DeadLetterBatch, FailurePolicy, InitializationInput, ProcessRecordsInput,
    ProcessorFactory, RecordProcessor, ShardEndedInput, ShardInfo, ShutdownReason,
};
use crate::record::{ExtendedSequenceNumber, Record};
use crate::retrieval::{RetrievalContext, WorkerBudget};
use crate::retrieval::{RetrievalEvent, Retriever, starting_position};
use crate::sync::Watch;

/// Shared state a consumer needs.
pub(crate) struct ConsumerContext {
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
enum Interrupt {
    /// The lease is no longer ours.
    Lost,
    /// Another worker asked for the lease.
    Handoff,
    /// The worker is shutting down.
    Shutdown,
}

/// Resolves when the lease is lost or asked for, or the worker shuts down.
async fn interruption(status: &mut Watch<HeldStatus>, shutdown: &mut Watch<Shutdown>) -> Interrupt {
    loop {
        match status.get_and_update() {
            HeldStatus::Lost => return Interrupt::Lost,
            HeldStatus::HandoffRequested => return Interrupt::Handoff,
            HeldStatus::Held => {}
        }
        if shutdown.get_and_update().stops_consumers() {
            return Interrupt::Shutdown;
        }
        tokio::select! {
            biased;
            _ = status.changed() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// A running retriever and the receiving end of its events.
struct Feed {
    events: tokio::sync::mpsc::Receiver<RetrievalEvent>,
    retriever: Retriever,
}

/// The next event of `feed` (`None` once stopped or ended).
async fn next_event(feed: &mut Option<Feed>) -> Option<RetrievalEvent> {
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

/// How a batch ended.
enum BatchOutcome {
    Done,
    Stop,
    Interrupted(Interrupt),
}

/// Runs the consumer of `held` to completion.
pub(crate) async fn run<F: ProcessorFactory>(
    mut ctx: ConsumerContext,
    factory: Arc<F>,
    held: Arc<HeldLease>,
) -> ConsumerExit {
    let lease = held.lease().await;
    let shard_id = lease.key.clone();
    let mut status = held.watch();

    // 1. Parents first.
    ctx.status
        .update(&shard_id, |s| s.state = ShardState::WaitingOnParents);
    if let Err(interrupt) = wait_for_parents(&mut ctx, &lease, &mut status).await {
        return finish_without_processor(&ctx, &held, interrupt).await;
    }
    if lease.is_finished() {
        return ConsumerExit::ShardEnded;
    }
    // Waiting may have taken long (a paused worker): no user code for a lease no longer ours.
    if !held.is_valid() {
        held.mark_lost();
        return finish_without_processor(&ctx, &held, Interrupt::Lost).await;
    }

    // 2. Processor, created under the failure policy (a panicking factory is retried or stops
    // the shard, never a silent stall).
    ctx.status
        .update(&shard_id, |s| s.state = ShardState::Initializing);
    let info = ShardInfo {
        stream: ctx.config.stream.clone(),
        shard_id: shard_id.clone(),
        parent_shard_ids: lease.parent_shard_ids.clone(),
    };
    let mut attempts = Attempts::new(&ctx.config.failure_policy);
    let processor = loop {
        match std::panic::catch_unwind(AssertUnwindSafe(|| factory.create(&info))) {
            Ok(processor) => break processor,
            Err(panic) => {
                let error = panic_error(panic);
                ctx.metrics.processor_failure(UserCall::Create);
                match attempts.next() {
                    Some(delay) => {
                        error!(attempt = attempts.made(), %error, "creating the processor failed; retrying");
                        ctx.status
                            .update(&shard_id, |s| s.state = ShardState::Retrying);
                        if let Err(interrupt) =
                            sleep_unless_interrupted(&mut ctx, &mut status, delay).await
                        {
                            return finish_without_processor(&ctx, &held, interrupt).await;
                        }
                    }
                    None => {
                        error!(attempts = attempts.made(), %error, "creating the processor failed; the failure policy stops the shard (lease kept)");
                        ctx.status
                            .update(&shard_id, |s| s.state = ShardState::Stopped);
                        return ConsumerExit::Stopped;
                    }
                }
            }
        }
    };
    let checkpointer = Checkpointer::new(held.clone(), lease.checkpoint.clone()).with_metrics(
        ctx.metrics.checkpoints.clone(),
        ctx.metrics.checkpoint_failures.clone(),
    );
    let mut consumer = Consumer {
        ctx,
        shard_id,
        processor,
        checkpointer,
        held,
        status,
        last_processed: None,
        records_since_checkpoint: 0,
        resume_after: match &lease.checkpoint {
            ExtendedSequenceNumber::Sequence { .. } => Some(lease.checkpoint.clone()),
            _ => None,
        },
        feed: None,
    };
    consumer.lifecycle(lease).await
}

/// Waits until every parent lease is finished or gone (`Ok`), or an interruption.
async fn wait_for_parents(
    ctx: &mut ConsumerContext,
    lease: &Lease,
    status: &mut Watch<HeldStatus>,
) -> Result<(), Interrupt> {
    'outer: loop {
        let mut pending = None;
        for parent in &lease.parent_shard_ids {
            match ctx.table.get(parent).await {
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
        tokio::select! {
            biased;
            interrupt = interruption(status, &mut ctx.shutdown) => return Err(interrupt),
            _ = tokio::time::sleep(ctx.config.parent_poll_interval) => continue 'outer,
        }
    }
}

/// Sleeps `delay` unless the lease is lost or asked for, or the worker shuts down.
async fn sleep_unless_interrupted(
    ctx: &mut ConsumerContext,
    status: &mut Watch<HeldStatus>,
    delay: Duration,
) -> Result<(), Interrupt> {
    tokio::select! {
        biased;
        interrupt = interruption(status, &mut ctx.shutdown) => Err(interrupt),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

/// Counts the attempts of a failing user call under the failure policy: the delay before the
/// next attempt, or `None` once the policy's attempts are used up.
struct Attempts {
    made: u32,
    max: Option<u32>,
    delays: crate::retry::Schedule,
}

impl Attempts {
    fn new(policy: &FailurePolicy) -> Self {
        Self {
            made: 0,
            max: policy.max_attempts(),
            delays: policy.backoff().schedule(),
        }
    }

    /// One more attempt failed: how long to wait before the next, if there is one.
    fn next(&mut self) -> Option<Duration> {
        self.made = self.made.saturating_add(1);
        if self.max.is_some_and(|max| self.made >= max) {
            return None;
        }
        Some(self.delays.next().unwrap_or_default())
    }

    /// Attempts made (and failed) so far.
    fn made(&self) -> u32 {
        self.made
    }
}

async fn finish_without_processor(
    ctx: &ConsumerContext,
    held: &HeldLease,
    interrupt: Interrupt,
) -> ConsumerExit {
    ctx.status
        .update(held.key(), |s| s.state = ShardState::Finished);
    if interrupt != Interrupt::Lost {
        let successor = successor(ctx, held);
        let handing_over = successor.is_some() || held.status() == HeldStatus::HandoffRequested;
        match held.release(successor.as_deref()).await {
            Ok(()) if handing_over => ctx.worker_metrics.leases_handed_off.increment(1),
            Ok(()) => {}
            Err(error) => debug!(%error, "release failed"),
        }
    }
    ConsumerExit::Released
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

struct Consumer<P: RecordProcessor> {
    ctx: ConsumerContext,
    shard_id: String,
    processor: P,
    checkpointer: Checkpointer,
    held: Arc<HeldLease>,
    status: Watch<HeldStatus>,
    /// The last user record processed successfully (or dead-lettered).
    last_processed: Option<ExtendedSequenceNumber>,
    records_since_checkpoint: u64,
    /// Drop records at or before this position (restart from a checkpoint).
    resume_after: Option<ExtendedSequenceNumber>,
    /// Retrieval, while it runs. Stopped ([`Consumer::stop_retrieval`]) before the lease is let
    /// go or the shard finished, so a fan-out subscription is closed before the next owner
    /// subscribes.
    feed: Option<Feed>,
}

impl<P: RecordProcessor> Consumer<P> {
    async fn lifecycle(&mut self, lease: Lease) -> ConsumerExit {
        // Initialize, retrying with backoff.
        let input = InitializationInput {
            stream: self.ctx.config.stream.clone(),
            shard_id: self.shard_id.clone(),
            checkpoint: lease.checkpoint.clone(),
            pending_checkpoint: lease.pending_checkpoint.clone(),
        };
        let mut attempts = Attempts::new(&self.ctx.config.failure_policy);
        loop {
            let result = AssertUnwindSafe(self.processor.initialize(input.clone()))
                .catch_unwind()
                .await;
            let Err(error) = flatten(result) else {
                break;
            };
            self.ctx.metrics.processor_failure(UserCall::Initialize);
            let Some(delay) = attempts.next() else {
                error!(attempts = attempts.made(), %error, "initialize failed; the failure policy stops the shard (lease kept)");
                self.ctx
                    .status
                    .update(&self.shard_id, |s| s.state = ShardState::Stopped);
                return ConsumerExit::Stopped;
            };
            error!(attempt = attempts.made(), %error, "initialize failed; retrying");
            self.ctx
                .status
                .update(&self.shard_id, |s| s.state = ShardState::Retrying);
            if let Some(interrupt) = self.pause(delay).await {
                return self.interrupted(interrupt).await;
            }
        }

        // Retrieval.
        let Some(start) = starting_position(
            &lease.checkpoint,
            self.ctx.config.initial_position.timestamp(),
        ) else {
            return ConsumerExit::ShardEnded;
        };
        let (events, budget, retriever) = crate::retrieval::spawn(
            RetrievalContext {
                config: &self.ctx.config,
                worker_budget: &self.ctx.budget,
                metrics: self.ctx.metrics.retrieval.clone(),
            },
            self.ctx.backend.clone(),
            &self.shard_id,
            start,
        );
        self.feed = Some(Feed { events, retriever });
        self.ctx
            .status
            .update(&self.shard_id, |s| s.state = ShardState::Processing);

        let hash_range = lease.hash_key_range;
        let mut batch = Vec::new();
        loop {
            let next = tokio::select! {
                biased;
                interrupt = interruption(&mut self.status, &mut self.ctx.shutdown) => {
                    Next::Interrupt(interrupt)
                }
                event = next_event(&mut self.feed) => Next::Event(event),
            };
            let event = match next {
                Next::Interrupt(interrupt) => return self.interrupted(interrupt).await,
                Next::Event(event) => event,
            };
            match event {
                Some(RetrievalEvent::Records {
                    records,
                    millis_behind_latest,
                    bytes,
                    queued_at,
                }) => {
                    let fetched = records.len();
                    let metrics = &self.ctx.metrics;
                    metrics
                        .prefetch_wait
                        .record(queued_at.elapsed().as_secs_f64());
                    metrics.records_fetched.increment(fetched as u64);
                    batch.clear();
                    let stats = self.ctx.deaggregator.deaggregate_batch_into(
                        records,
                        hash_range.as_ref(),
                        &mut batch,
                    );
                    metrics.deaggregated(&stats);
                    if let Some(after) = &self.resume_after {
                        batch.retain(|r| r.position() > *after);
                        if !batch.is_empty() {
                            self.resume_after = None;
                        }
                    }
                    self.ctx
                        .status
                        .fetched(&self.shard_id, millis_behind_latest);
                    // A paused or cut-off worker stops here, before anyone may take over.
                    if !batch.is_empty() && !self.held.is_valid() {
                        warn!("the worker's claim on the lease went stale; stopping");
                        self.held.mark_lost();
                        return self.interrupted(Interrupt::Lost).await;
                    }
                    let outcome = if batch.is_empty() {
                        BatchOutcome::Done
                    } else {
                        let records = std::mem::take(&mut batch);
                        let outcome = self.process_batch(&records, millis_behind_latest).await;
                        batch = records;
                        outcome
                    };
                    budget.release(fetched, bytes);
                    match outcome {
                        BatchOutcome::Done => {
                            if let Some(exit) = self.maybe_checkpoint().await {
                                return exit;
                            }
                        }
                        BatchOutcome::Stop => {
                            error!(
                                "failure policy stopped the shard; the lease is kept until shutdown"
                            );
                            self.stop_retrieval().await;
                            self.ctx
                                .status
                                .update(&self.shard_id, |s| s.state = ShardState::Stopped);
                            return ConsumerExit::Stopped;
                        }
                        BatchOutcome::Interrupted(interrupt) => {
                            return self.interrupted(interrupt).await;
                        }
                    }
                }
                Some(RetrievalEvent::CaughtUp {
                    millis_behind_latest,
                }) => {
                    self.ctx
                        .status
                        .fetched(&self.shard_id, millis_behind_latest);
                    if let Some(exit) = self.maybe_checkpoint().await {
                        return exit;
                    }
                }
                Some(RetrievalEvent::ShardEnd { child_shards }) => {
                    return self.shard_end(child_shards).await;
                }
                Some(RetrievalEvent::Failed(error)) => {
                    error!(%error, "reading the shard failed permanently; releasing the lease");
                    self.interrupted(Interrupt::Shutdown).await;
                    return ConsumerExit::Failed(error);
                }
                None => {
                    error!("retrieval stopped unexpectedly; releasing the lease");
                    return self.interrupted(Interrupt::Shutdown).await;
                }
            }
        }
    }

    /// Delivers one batch under the failure policy, in a span naming its sequence range.
    async fn process_batch(&mut self, records: &[Record], mbl: Option<u64>) -> BatchOutcome {
        let (Some(first), Some(last)) = (records.first(), records.last()) else {
            return BatchOutcome::Done;
        };
        let span = info_span!(
            "batch",
            first = %first.position(),
            last = %last.position(),
            records = records.len(),
        );
        self.deliver_batch(records, mbl).instrument(span).await
    }

    async fn deliver_batch(&mut self, records: &[Record], mbl: Option<u64>) -> BatchOutcome {
        self.checkpointer.deliver(records);
        let policy = self.ctx.config.failure_policy.clone();
        let mut delays = policy.backoff().schedule();
        let mut attempt = 1u32;
        loop {
            let input = ProcessRecordsInput {
                shard_id: &self.shard_id,
                records,
                millis_behind_latest: mbl,
                attempt,
            };
            let call = self
                .processor
                .process_records(input, &mut self.checkpointer);
            let started = Instant::now();
            let result = flatten(AssertUnwindSafe(call).catch_unwind().await);
            self.ctx
                .metrics
                .process_duration
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(()) => {
                    self.ctx.metrics.batches_processed.increment(1);
                    self.mark_processed(records);
                    return BatchOutcome::Done;
                }
                Err(error) => error,
            };
            self.ctx.metrics.processor_failure(UserCall::ProcessRecords);
            warn!(attempt, %error, records = records.len(), "process_records failed");
            if policy.max_attempts().is_some_and(|max| attempt >= max) {
                match &policy {
                    FailurePolicy::DeadLetter { handler, .. } => {
                        return self
                            .dead_letter(handler.as_ref(), records, &error, attempt)
                            .await;
                    }
                    _ => return BatchOutcome::Stop,
                }
            }
            self.ctx
                .status
                .update(&self.shard_id, |s| s.state = ShardState::Retrying);
            let delay = delays.next().unwrap_or_default();
            if let Some(interrupt) = self.pause(delay).await {
                return BatchOutcome::Interrupted(interrupt);
            }
            self.ctx.metrics.batch_retries.increment(1);
            attempt = attempt.saturating_add(1);
        }
    }

    async fn dead_letter(
        &mut self,
        handler: &dyn crate::processor::DeadLetterHandler,
        records: &[Record],
        error: &BoxError,
        attempts: u32,
    ) -> BatchOutcome {
        let mut delays = self.ctx.config.failure_policy.backoff().schedule();
        loop {
            let batch = DeadLetterBatch {
                stream: &self.ctx.config.stream,
                shard_id: &self.shard_id,
                records,
                error,
                attempts,
            };
            // The handler is user code too: a panic is a failure, retried like an error.
            let handled = match AssertUnwindSafe(handler.handle(batch)).catch_unwind().await {
                Ok(result) => result,
                Err(panic) => Err(panic_error(panic)),
            };
            match handled {
                Ok(()) => {
                    warn!(
                        records = records.len(),
                        "batch handed to the dead-letter handler"
                    );
                    self.ctx.metrics.batches_dead_lettered.increment(1);
                    self.ctx
                        .metrics
                        .records_dead_lettered
                        .increment(records.len() as u64);
                    self.mark_processed(records);
                    return BatchOutcome::Done;
                }
                Err(dlq_error) => {
                    self.ctx.metrics.processor_failure(UserCall::DeadLetter);
                    error!(error = %dlq_error, "dead-letter handler failed; retrying it");
                    let delay = delays.next().unwrap_or_default();
                    if let Some(interrupt) = self.pause(delay).await {
                        return BatchOutcome::Interrupted(interrupt);
                    }
                }
            }
        }
    }

    fn mark_processed(&mut self, records: &[Record]) {
        if let Some(last) = records.last() {
            self.last_processed = Some(last.position());
        }
        let n = records.len() as u64;
        self.ctx.metrics.records_processed.increment(n);
        self.ctx
            .metrics
            .bytes_processed
            .increment(records.iter().map(|r| r.data().len() as u64).sum());
        self.records_since_checkpoint += n;
        self.ctx.status.update(&self.shard_id, |s| {
            s.state = ShardState::Processing;
            s.records_processed += n;
        });
    }

    /// Writes an automatic checkpoint if the cadence says so. Returns an exit if the lease was lost.
    async fn maybe_checkpoint(&mut self) -> Option<ConsumerExit> {
        let cadence = self.ctx.config.checkpoint;
        if self.records_since_checkpoint == 0 {
            return None;
        }
        let by_count = cadence
            .every_records
            .is_some_and(|n| self.records_since_checkpoint >= n);
        let by_time = cadence
            .every_interval
            .is_some_and(|t| self.checkpointer.last_write_at().elapsed() >= t);
        if !(by_count || by_time) {
            return None;
        }
        match self.checkpoint_processed().await {
            Err(CheckpointError::LeaseLost(_)) => Some(self.interrupted(Interrupt::Lost).await),
            _ => None,
        }
    }

    /// Checkpoints the last processed record, if it is ahead of the last checkpoint.
    async fn checkpoint_processed(&mut self) -> Result<(), CheckpointError> {
        let Some(position) = self.last_processed.clone() else {
            return Ok(());
        };
        if position <= *self.checkpointer.last_checkpoint() {
            self.records_since_checkpoint = 0;
            return Ok(());
        }
        match self
            .checkpointer
            .checkpoint_position(position.clone())
            .await
        {
            Ok(()) => {
                self.records_since_checkpoint = 0;
                self.ctx
                    .status
                    .update(&self.shard_id, |s| s.last_checkpoint = Some(position));
                Ok(())
            }
            Err(error) => {
                warn!(%error, "automatic checkpoint failed");
                Err(error)
            }
        }
    }

    /// Sleeps `delay` unless the lease is lost or a shutdown is requested.
    async fn pause(&mut self, delay: std::time::Duration) -> Option<Interrupt> {
        tokio::select! {
            biased;
            interrupt = interruption(&mut self.status, &mut self.ctx.shutdown) => Some(interrupt),
            _ = tokio::time::sleep(delay) => None,
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
                if let Err(error) = flatten(
                    AssertUnwindSafe(self.processor.lease_lost())
                        .catch_unwind()
                        .await,
                ) {
                    self.ctx.metrics.processor_failure(UserCall::LeaseLost);
                    warn!(%error, "lease_lost failed");
                }
            }
            Interrupt::Handoff | Interrupt::Shutdown => {
                let held = self.held.clone();
                let immediate = self.ctx.shutdown.get() == Shutdown::Immediate;
                if immediate {
                    // No processor call, no checkpoint: the worker releases the lease.
                    info!("stopping immediately");
                } else if !held.is_lost() {
                    let reason = if interrupt == Interrupt::Handoff {
                        ShutdownReason::Handoff
                    } else {
                        ShutdownReason::WorkerShutdown
                    };
                    let result = AssertUnwindSafe(
                        self.processor
                            .shutdown_requested(reason, &mut self.checkpointer),
                    )
                    .catch_unwind()
                    .await;
                    if let Err(error) = flatten(result) {
                        self.ctx
                            .metrics
                            .processor_failure(UserCall::ShutdownRequested);
                        warn!(%error, "shutdown_requested failed");
                    }
                    if self.ctx.config.checkpoint.is_automatic() {
                        let _ = self.checkpoint_processed().await;
                    }
                    let successor = successor(&self.ctx, &held);
                    let handing_over =
                        successor.is_some() || held.status() == HeldStatus::HandoffRequested;
                    match held.release(successor.as_deref()).await {
                        Ok(()) => {
                            if handing_over {
                                self.ctx.worker_metrics.leases_handed_off.increment(1);
                            }
                            info!(?reason, ?successor, "lease handed over")
                        }
                        Err(error) => warn!(%error, "could not release lease"),
                    }
                }
            }
        }
        self.ctx
            .status
            .update(&self.shard_id, |s| s.state = ShardState::Finished);
        ConsumerExit::Released
    }

    async fn shard_end(&mut self, child_shards: Vec<ChildShard>) -> ConsumerExit {
        self.stop_retrieval().await;
        let children: Vec<String> = child_shards.iter().map(|c| c.shard_id.clone()).collect();
        // Records processed before the end count: the SHARD_END write covers them.
        self.checkpointer.permit(ExtendedSequenceNumber::ShardEnd);
        let mut delays = self.ctx.config.failure_policy.backoff().schedule();
        loop {
            let input = ShardEndedInput {
                shard_id: self.shard_id.clone(),
                child_shards: child_shards.clone(),
            };
            let call = self.processor.shard_ended(input, &mut self.checkpointer);
            match flatten(AssertUnwindSafe(call).catch_unwind().await) {
                Ok(()) => break,
                Err(error) => {
                    self.ctx.metrics.processor_failure(UserCall::ShardEnded);
                    warn!(%error, "shard_ended failed; retrying before recording SHARD_END");
                    let delay = delays.next().unwrap_or_default();
                    if let Some(interrupt) = self.pause(delay).await {
                        return self.interrupted(interrupt).await;
                    }
                }
            }
        }
        let mut delays = self.ctx.config.polling.error_backoff.schedule();
        loop {
            match self
                .checkpointer
                .checkpoint_shard_end(children.clone())
                .await
            {
                Ok(()) => break,
                Err(CheckpointError::LeaseLost(_)) => {
                    return self.interrupted(Interrupt::Lost).await;
                }
                Err(error) => {
                    warn!(%error, "could not record SHARD_END; retrying");
                    let delay = delays.next().unwrap_or_default();
                    if let Some(interrupt) = self.pause(delay).await {
                        return self.interrupted(interrupt).await;
                    }
                }
            }
        }
        // Children only now: the SHARD_END write above is fenced, so a worker that lost the lease
        // (a zombie resuming long after the shard was finished and its finished leases cleaned
        // up) never re-creates a child lease. A crash between the two writes leaves a hole that
        // shard sync repairs: it creates the leases of children whose parents all finished.
        self.create_child_leases(&child_shards).await;
        if self.held.status() == HeldStatus::HandoffRequested
            && let Err(error) = self.held.release(None).await
        {
            debug!(%error, "could not complete the handoff of an ended shard");
        }
        info!(children = ?children, "shard ended");
        self.ctx.status.update(&self.shard_id, |s| {
            s.state = ShardState::Ended;
            s.last_checkpoint = Some(ExtendedSequenceNumber::ShardEnd);
        });
        ConsumerExit::ShardEnded
    }

    /// Whether every parent of `child` other than this shard holds a finished lease.
    async fn other_parents_finished(&mut self, child: &ChildShard) -> bool {
        for parent in child.parent_shards.iter().filter(|p| **p != self.shard_id) {
            match self.ctx.table.get(parent).await {
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

    /// Creates the leases of the children whose every other parent has finished too: a merge
    /// child is created by whichever parent ends last (each writes `SHARD_END` before looking at
    /// the other, so at least one sees both finished). A child lease therefore never exists
    /// before all its parents finished, which is what lets a missing parent lease mean
    /// "finished and cleaned up". Idempotent; a few attempts; shard sync repairs the rest.
    async fn create_child_leases(&mut self, child_shards: &[ChildShard]) {
        for child in child_shards {
            // Only while the claim holds: a worker paused here must not create a child that was
            // processed, finished and removed meanwhile.
            if !self.held.is_valid() {
                debug!("claim no longer valid; leaving the children to shard sync");
                return;
            }
            if !self.other_parents_finished(child).await {
                debug!(child = %child.shard_id, "another parent has not finished; it creates the child");
                continue;
            }
            let lease = Lease::new(child.shard_id.clone(), ExtendedSequenceNumber::TrimHorizon)
                .with_parents(child.parent_shards.iter().cloned())
                .with_hash_key_range(child.hash_key_range);
            let mut delays = self.ctx.config.polling.error_backoff.schedule().take(4);
            loop {
                match self.ctx.table.create_if_absent(&lease).await {
                    Ok(created) => {
                        if created {
                            info!(child = %child.shard_id, "created child lease");
                        }
                        break;
                    }
                    Err(error) => match delays.next() {
                        Some(delay) if self.held.is_valid() => {
                            warn!(child = %child.shard_id, %error, "could not create child lease; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        _ => {
                            warn!(child = %child.shard_id, %error, "could not create child lease; shard sync will");
                            break;
                        }
                    },
                }
            }
        }
    }
}

/// Turns a caught processor result into `Result<(), BoxError>`, panics included.
fn flatten<E: Into<BoxError>>(
    result: Result<Result<(), E>, Box<dyn std::any::Any + Send>>,
) -> Result<(), BoxError> {
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.into()),
        Err(panic) => Err(panic_error(panic)),
    }
}

/// The error standing for a caught panic of user code.
fn panic_error(panic: Box<dyn std::any::Any + Send>) -> BoxError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    format!("processor panicked: {message}").into()
}
