//! Key-ordered concurrency within a shard: up to N batches of one shard in flight, the records
//! of each ordering key strictly in order.
//!
//! Opt-in with [`super::WorkerBuilder::key_ordered`], for processors that implement
//! [`ConcurrentProcessor`]. With `KeyOrdered::new(1)`, or without it, a shard is processed one
//! batch at a time exactly as before; this module is not involved.
//!
//! **Scheduling.** Fetched records (KPL sub-records are records like any other) enter the
//! shard's window (the `window` module) in shard order. A batch is the next records of some
//! keys that have no batch in flight, so a key is in at most one batch at a time and its
//! records go out strictly in order; different keys run concurrently, up to `max_in_flight`
//! batches, each delivered under the failure policy like any batch (retries, partial failures,
//! bisection, record age, the dead-letter handler: the `delivery` module). A slow or failing key
//! holds up only its own records, until the window is full.
//!
//! **Checkpoints.** At the configured cadence the worker checkpoints the end of the contiguous
//! prefix of completed records, so a crash re-delivers at most the window: the batches in flight
//! and the records waiting behind them, never a record completed before the checkpoint it
//! wrote. Records completed beyond that prefix (other keys overtaking a slow one) are written
//! with the same checkpoint as its pending checkpoint: position the last of them, application
//! state their runs (about 20 to 40 bytes a run, cut at `max_state_bytes`; see
//! `window::encode_remembered`). Whoever processes the shard next, after a restart or a handoff,
//! reads them back and skips those records (counted in `kcl_remembered_records_skipped_total`).
//! The lease carries nothing new: Java KCL reads such a table as one with a prepared checkpoint
//! and starts from the committed one, and so does a worker of ours that processes the shard one
//! batch at a time (it delivers those records again, and its first checkpoint clears them). In
//! this mode the pending checkpoint is the framework's: one the processor prepares itself (in
//! `shutdown_requested`, say) is replaced by the next automatic checkpoint.
//!
//! A [`PartialFailure`](crate::processor::PartialFailure) in a batch of this mode is handled as
//! in any batch, except that the records before the failed one join the checkpoint prefix when
//! their batch comes back, not while the rest of it waits for its retry.
//!
//! **Handoffs, shutdowns and shard ends drain first.** A handoff or a graceful shutdown stops
//! handing out batches and lets those in flight finish (a batch waiting to be retried stops
//! waiting, its records stay undone); then `shutdown_requested`, the final checkpoint with what
//! is remembered, and the release. The next owner therefore re-delivers nothing that was
//! completed. The end of a shard processes every record before `shard_ended` and `SHARD_END`, so
//! children still start only after their parents are done. A lost lease and an immediate
//! shutdown cancel the batches in flight at once (nothing they did could be checkpointed).
//!
//! **Bounds.** At most `max_in_flight` batches of at most `max_batch_records` records; the window
//! takes a fetched batch only while it holds fewer than `max_window_records` records, and its
//! records stay charged to the prefetch budget (records and bytes, per shard and worker-wide)
//! until the checkpoint prefix passes them; the remembered runs are at most `max_state_bytes`
//! (DynamoDB allows 400 KB per lease item; the default keeps writes small).
//!
//! The batches of a shard run on its consumer task, which polls them while it waits for
//! retrieval, interruptions and checkpoint writes, so no checkpoint write holds them up.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{debug, error, info, warn};

use super::Shutdown;
use super::consumer::{
    Feed, Fetched, Interrupt, Interrupts, Progress, Shard, catch, next_event, panic_message,
    receive,
};
use super::delivery::{self, Call, Delivered, DeliveryContext, End};
use super::window::{self, Advance, Batch, Limits, Runs, Window};
use crate::backend::{BackendError, ChildShard};
use crate::lease::Lease;
use crate::metrics::{ShardMetrics, UserCall};
use crate::processor::{
    BoxError, ConcurrentProcessor, ProcessRecordsInput, partition_key_ordering,
};
use crate::record::{ExtendedSequenceNumber, Record};
use crate::retrieval::RetrievalEvent;

/// Key-ordered concurrency within a shard: how many batches may be in flight and the bounds of
/// what is kept (see [`super::WorkerBuilder::key_ordered`] and the `worker` module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyOrdered {
    /// Batches of one shard in flight at once (1 to 256). 1 is the ordinary path: one batch at
    /// a time, through `process_records`.
    pub max_in_flight: usize,
    /// Records in one batch, at most (default 100). A batch takes whole runs of a key's waiting
    /// records, about `1/max_in_flight` of the records ready to go.
    pub max_batch_records: usize,
    /// Records received and not yet covered by the checkpoint, at most, before the shard stops
    /// taking fetched batches (default 10,000; exceeded by at most one fetched batch). What a
    /// crash may re-deliver.
    pub max_window_records: usize,
    /// Bytes of the state that remembers records completed beyond the checkpoint (default
    /// 16 KiB, 256 to 262,144). Runs past it are not remembered: delivered again after a
    /// restart or a handoff, never lost.
    pub max_state_bytes: usize,
}

impl KeyOrdered {
    /// Up to `max_in_flight` batches per shard, with the default bounds.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            max_in_flight,
            max_batch_records: 100,
            max_window_records: 10_000,
            max_state_bytes: 16 * 1024,
        }
    }

    /// Sets [`Self::max_batch_records`].
    pub fn with_max_batch_records(mut self, records: usize) -> Self {
        self.max_batch_records = records;
        self
    }

    /// Sets [`Self::max_window_records`].
    pub fn with_max_window_records(mut self, records: usize) -> Self {
        self.max_window_records = records;
        self
    }

    /// Sets [`Self::max_state_bytes`].
    pub fn with_max_state_bytes(mut self, bytes: usize) -> Self {
        self.max_state_bytes = bytes;
        self
    }
}

/// A processor's batches as the worker calls them concurrently, its type erased: the worker is
/// generic over any [`crate::processor::RecordProcessor`], and this is how it reaches the
/// `&self` methods of one that is also a [`ConcurrentProcessor`].
pub(crate) trait SharedBatches: Sync {
    /// [`ConcurrentProcessor::process_batch`].
    fn process<'a>(
        &'a self,
        input: ProcessRecordsInput<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

    /// [`ConcurrentProcessor::ordering_key`].
    fn ordering_key(&self, record: &Record) -> u64;
}

impl<P: ConcurrentProcessor> SharedBatches for P {
    fn process<'a>(
        &'a self,
        input: ProcessRecordsInput<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>> {
        Box::pin(async move { self.process_batch(input).await.map_err(Into::into) })
    }

    fn ordering_key(&self, record: &Record) -> u64 {
        ConcurrentProcessor::ordering_key(self, record)
    }
}

/// How the worker shares a processor of type `P` between its batches; set by
/// `WorkerBuilder::key_ordered`, where `P: ConcurrentProcessor` is known.
pub(crate) type AsShared<P> = for<'a> fn(&'a P) -> &'a dyn SharedBatches;

/// The [`AsShared`] of a concurrent processor.
pub(crate) fn as_shared<P: ConcurrentProcessor>(processor: &P) -> &dyn SharedBatches {
    processor
}

/// Calls the shared processor; nothing to do per handled run (the window learns what a batch
/// handled when it comes back).
struct Shared<'a>(&'a dyn SharedBatches);

impl Call for Shared<'_> {
    async fn call(&mut self, input: ProcessRecordsInput<'_>) -> Result<(), BoxError> {
        catch(self.0.process(input)).await
    }

    async fn handled(&mut self, _records: &[Record]) -> Result<(), Interrupt> {
        Ok(())
    }
}

/// What the loop works with, borrowed from the consumer.
pub(super) struct Parts<'a> {
    pub shared: &'a dyn SharedBatches,
    pub mode: KeyOrdered,
    pub shard: &'a mut Shard,
    pub progress: &'a mut Progress,
    pub delivery: &'a DeliveryContext,
    pub feed: &'a mut Option<Feed>,
    pub resume_after: &'a mut Option<ExtendedSequenceNumber>,
    pub lease: &'a Lease,
}

/// How the loop ended; the consumer takes it from there (lifecycle calls, final checkpoint).
#[derive(Debug)]
pub(super) enum Exit {
    /// Interrupted: for a handoff or a graceful shutdown after the batches in flight finished.
    Interrupted(Interrupt),
    /// Every record of the ended shard is done.
    ShardEnd(Vec<ChildShard>),
    /// The failure policy stopped the shard (after the other batches in flight finished).
    Stopped,
    /// Reading failed permanently (after the batches in flight finished).
    Failed(BackendError),
    /// Retrieval stopped unexpectedly (after the batches in flight finished).
    RetrievalStopped,
}

/// Where the loop is.
enum Phase {
    Running,
    /// The shard ended: everything received is processed, nothing more is read.
    Ending(Vec<ChildShard>),
    /// Finishing the batches in flight, then this.
    Draining(Exit),
    /// The failure policy stopped the shard: finishing the other batches in flight.
    Stopping,
}

impl Phase {
    fn dispatches(&self) -> bool {
        matches!(self, Self::Running | Self::Ending(_))
    }
}

/// A batch back from delivery.
struct Done {
    batch: Batch,
    delivered: Delivered,
}

/// What woke the loop.
enum Wake {
    Interrupt(Interrupt),
    Done(Done),
    Event(Option<RetrievalEvent>),
}

/// Records a previous owner completed out of order, read from the lease.
struct Remembered {
    runs: Runs,
    next: usize,
}

impl Remembered {
    fn from_lease(lease: &Lease) -> Self {
        let state = lease
            .pending_checkpoint
            .as_ref()
            .and_then(|p| p.state.as_ref());
        let runs = match state.map(|s| window::decode_remembered(s, &lease.checkpoint)) {
            Some(Ok(Some(runs))) => {
                info!(
                    runs = runs.len(),
                    "resuming with records a previous owner completed out of order"
                );
                runs
            }
            Some(Err(error)) => {
                warn!(%error, "not using the remembered completions: their records are delivered again");
                Vec::new()
            }
            _ => Vec::new(),
        };
        Self { runs, next: 0 }
    }

    fn is_active(&self) -> bool {
        self.next < self.runs.len()
    }

    /// Whether `position` was completed (positions come in ascending order).
    fn contains(&mut self, position: &ExtendedSequenceNumber) -> bool {
        while self
            .runs
            .get(self.next)
            .is_some_and(|(_, last)| last < position)
        {
            self.next += 1;
        }
        self.runs
            .get(self.next)
            .is_some_and(|(first, _)| first <= position)
    }
}

/// Delivers one batch; resolves to it and what was handled.
async fn deliver_batch(
    shared: &dyn SharedBatches,
    ctx: &DeliveryContext,
    batch: Batch,
    millis_behind_latest: Option<u64>,
    mut interrupts: Interrupts,
) -> Done {
    let mut call = Shared(shared);
    let delivered = delivery::deliver(
        &mut call,
        ctx,
        &batch.records,
        millis_behind_latest,
        &mut interrupts,
    )
    .await;
    Done { batch, delivered }
}

/// The ordering key of `record`, under the panic catch like all user code: a key function that
/// panics orders the record by its partition key instead (logged and counted).
fn ordering_key(shared: &dyn SharedBatches, record: &Record, metrics: &ShardMetrics) -> u64 {
    match std::panic::catch_unwind(AssertUnwindSafe(|| shared.ordering_key(record))) {
        Ok(key) => key,
        Err(panic) => {
            metrics.processor_failure(UserCall::OrderingKey);
            error!(
                error = %panic_message(panic.as_ref()),
                record = %record.position(),
                "ordering_key panicked; the record is ordered by its partition key"
            );
            partition_key_ordering(record)
        }
    }
}

/// Waits for what may interrupt: anything while running, only what cuts the draining short
/// (a lost lease, an immediate shutdown) while draining.
async fn interruption(interrupts: &mut Interrupts, draining: bool) -> Interrupt {
    if draining {
        interrupts.escalated().await
    } else {
        interrupts.next().await
    }
}

/// The state the loop keeps between events.
struct Loop<'a> {
    window: Window,
    progress: &'a mut Progress,
    feed: &'a mut Option<Feed>,
    phase: Phase,
}

impl Loop<'_> {
    /// Applies what moved: the checkpoint may go further, fetched batches go back to the budget.
    fn advanced(&mut self, advance: Advance) {
        if advance.records > 0
            && let Some(prefix) = self.window.prefix()
        {
            self.progress.reached(prefix.clone());
        }
        if advance.released != (0, 0)
            && let Some(feed) = self.feed.as_ref()
        {
            feed.budget.release(advance.released.0, advance.released.1);
        }
    }

    /// A batch came back.
    fn completed(&mut self, done: Done) {
        let Done { batch, delivered } = done;
        let advance = self
            .window
            .complete(&batch.indices, &batch.keys, delivered.handled);
        self.progress.count(delivered.handled);
        self.advanced(advance);
        if self.phase.dispatches() {
            match delivered.end {
                End::Done => {}
                End::Stop => self.phase = Phase::Stopping,
                End::Interrupted(interrupt) => {
                    self.phase = Phase::Draining(Exit::Interrupted(interrupt));
                }
            }
        }
    }
}

/// Runs a key-ordered shard until it ends, stops or is interrupted. See the [module docs](self).
pub(super) async fn run(parts: Parts<'_>) -> Exit {
    let Parts {
        shared,
        mode,
        shard,
        progress,
        delivery,
        feed,
        resume_after,
        lease,
    } = parts;
    let metrics = shard.ctx.metrics.clone();
    let mut state = Loop {
        window: Window::new(Limits {
            max_in_flight: mode.max_in_flight,
            max_batch_records: mode.max_batch_records,
            max_window_records: mode.max_window_records,
        }),
        progress,
        feed,
        phase: Phase::Running,
    };
    let mut remembered = Remembered::from_lease(lease);
    let mut in_flight = FuturesUnordered::new();
    let mut received = Vec::new();
    let mut millis_behind_latest = None;
    let exit = loop {
        // Hand out batches while slots and records allow.
        if state.phase.dispatches() {
            while state.window.can_dispatch() {
                // A paused or cut-off worker stops here, before anyone may take over.
                if !shard.held.is_valid() {
                    warn!("the worker's claim on the lease went stale; stopping");
                    shard.held.mark_lost();
                    break;
                }
                let Some(batch) = state.window.next_batch() else {
                    break;
                };
                in_flight.push(deliver_batch(
                    shared,
                    delivery,
                    batch,
                    millis_behind_latest,
                    shard.interrupts.clone(),
                ));
            }
        }
        metrics
            .batches_in_flight
            .set(state.window.in_flight() as f64);
        metrics.window_records.set(state.window.len() as f64);
        let finished = match &state.phase {
            Phase::Draining(_) | Phase::Stopping => in_flight.is_empty(),
            Phase::Ending(_) => state.window.is_drained(),
            Phase::Running => false,
        };
        if finished {
            break std::mem::replace(&mut state.phase, Phase::Running);
        }
        let draining = !state.phase.dispatches();
        let wake = tokio::select! {
            biased;
            interrupt = interruption(&mut shard.interrupts, draining) => Wake::Interrupt(interrupt),
            Some(done) = in_flight.next(), if !in_flight.is_empty() => Wake::Done(done),
            event = next_event(state.feed),
                if matches!(state.phase, Phase::Running) && state.window.has_room() => Wake::Event(event),
        };
        match wake {
            Wake::Interrupt(interrupt) => {
                let immediate = shard.interrupts.shutdown() == Shutdown::Immediate;
                if draining || interrupt == Interrupt::Lost || immediate {
                    // Cancels the batches in flight: nothing they do could be checkpointed. A
                    // permanent read failure being drained is still what the worker hears of.
                    break match std::mem::replace(&mut state.phase, Phase::Running) {
                        Phase::Draining(Exit::Failed(error)) => {
                            Phase::Draining(Exit::Failed(error))
                        }
                        _ => Phase::Draining(Exit::Interrupted(interrupt)),
                    };
                }
                debug!(
                    ?interrupt,
                    in_flight = in_flight.len(),
                    "finishing the batches in flight"
                );
                state.phase = Phase::Draining(Exit::Interrupted(interrupt));
            }
            Wake::Done(done) => state.completed(done),
            Wake::Event(Some(RetrievalEvent::Records {
                records,
                millis_behind_latest: mbl,
                bytes,
                queued_at,
            })) => {
                let fetched = Fetched {
                    fetched: (records.len(), bytes),
                    records,
                    millis_behind_latest: mbl,
                    queued_at,
                };
                let (count, bytes) = fetched.fetched;
                millis_behind_latest = mbl;
                receive(shard, resume_after, lease, fetched, &mut received);
                for record in received.drain(..) {
                    if remembered.is_active() {
                        let position = record.position();
                        if remembered.contains(&position) {
                            metrics.remembered_skipped.increment(1);
                            state.progress.count(1);
                            let advance = state.window.push_done(position);
                            state.advanced(advance);
                            continue;
                        }
                    }
                    let key = ordering_key(shared, &record, &metrics);
                    state.window.push(record, key);
                }
                let advance = state.window.end_fetch(count, bytes);
                state.advanced(advance);
            }
            Wake::Event(Some(RetrievalEvent::CaughtUp {
                millis_behind_latest: mbl,
            })) => {
                millis_behind_latest = mbl;
                shard.ctx.status.fetched(&shard.key, mbl);
            }
            Wake::Event(Some(RetrievalEvent::ShardEnd { child_shards })) => {
                state.phase = Phase::Ending(child_shards);
            }
            Wake::Event(Some(RetrievalEvent::Failed(error))) => {
                state.phase = Phase::Draining(Exit::Failed(error));
            }
            Wake::Event(None) => state.phase = Phase::Draining(Exit::RetrievalStopped),
        }
        // Checkpoint at the cadence, the batches in flight going on meanwhile.
        if state.phase.dispatches() && state.progress.due() {
            let target = state.progress.target();
            let remembered_now = state.window.remembered(&target, mode.max_state_bytes);
            state.progress.remember(remembered_now);
            let mut finished = Vec::new();
            let result = {
                let write = state.progress.maybe_checkpoint();
                tokio::pin!(write);
                loop {
                    tokio::select! {
                        biased;
                        result = &mut write => break result,
                        Some(done) = in_flight.next(), if !in_flight.is_empty() => finished.push(done),
                    }
                }
            };
            for done in finished {
                state.completed(done);
            }
            if let Err(interrupt) = result {
                break Phase::Draining(Exit::Interrupted(interrupt));
            }
        }
    };
    drop(in_flight);
    metrics.batches_in_flight.set(0.0);
    metrics.window_records.set(0.0);
    // What is done beyond the prefix goes with the final checkpoint (the consumer writes it).
    let target = state.progress.target();
    let remembered_now = state.window.remembered(&target, mode.max_state_bytes);
    state.progress.remember(remembered_now);
    match exit {
        Phase::Draining(exit) => exit,
        Phase::Stopping => Exit::Stopped,
        Phase::Ending(children) => Exit::ShardEnd(children),
        Phase::Running => Exit::RetrievalStopped,
    }
}
