//! What the harness sees: every record a processor completed, every lifecycle call the worker
//! made, and every checkpoint the lease table accepted.
//!
//! [`Observed`] wraps the user's [`ProcessorFactory`]: each processor it creates forwards every
//! call to the user's processor unchanged, logs the records of each batch it completed
//! (`process_records` returned `Ok`) and each lifecycle call (initialize, shard end, shutdown,
//! lease lost) as a [`Lifecycle`] event. While the worker is paused, its processor calls wait at
//! the worker's [`Gate`] too. [`CheckpointLog`] watches the lease table's successful
//! checkpoint writes and flags any that moved a lease backwards.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::checkpoint::Checkpointer;
use kcl_core::lease::LeaseError;
use kcl_core::processor::{
    BoxError, InitializationInput, ProcessRecordsInput, ProcessorFactory, RecordProcessor,
    ShardEndedInput, ShardInfo, ShutdownReason,
};
use kcl_core::record::ExtendedSequenceNumber;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::gate::Gate;
use crate::hooks::{TableCall, TableHooks};

/// One record a processor completed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// When (tokio's clock).
    pub at: Instant,
    /// The worker.
    pub worker: String,
    /// Which start of that worker (0 for the first, 1 after a restart, ...).
    pub incarnation: u32,
    /// The shard.
    pub shard_id: String,
    /// Its position.
    pub position: ExtendedSequenceNumber,
    /// Its partition key.
    pub partition_key: String,
    /// Its data.
    pub data: Bytes,
}

/// A lifecycle call the worker made on a processor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// `initialize`, starting at this checkpoint.
    Initialize(ExtendedSequenceNumber),
    /// `shard_ended`: the shard was read to its end.
    ShardEnded,
    /// `shutdown_requested`: a graceful stop or handoff.
    Shutdown(ShutdownReason),
    /// `lease_lost`: the lease was lost without a chance to checkpoint.
    LeaseLost,
}

/// A lifecycle call with when and where it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// When (tokio's clock).
    pub at: Instant,
    /// The worker.
    pub worker: String,
    /// Which start of that worker.
    pub incarnation: u32,
    /// The shard.
    pub shard_id: String,
    /// The call.
    pub call: Call,
}

/// Every record completed so far, in completion order, and every lifecycle call.
#[derive(Debug, Default)]
pub struct Deliveries {
    log: Mutex<Vec<Delivery>>,
    events: Mutex<Vec<Lifecycle>>,
    changed: Notify,
}

impl Deliveries {
    fn log(&self) -> MutexGuard<'_, Vec<Delivery>> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of everything delivered so far.
    pub fn all(&self) -> Vec<Delivery> {
        self.log().clone()
    }

    /// How many deliveries so far (re-deliveries included).
    pub fn len(&self) -> usize {
        self.log().len()
    }

    /// Whether nothing was delivered yet.
    pub fn is_empty(&self) -> bool {
        self.log().is_empty()
    }

    fn push(&self, deliveries: impl IntoIterator<Item = Delivery>) {
        self.log().extend(deliveries);
        self.changed.notify_waiters();
    }

    /// Every lifecycle call so far, in order.
    pub fn events(&self) -> Vec<Lifecycle> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn event(&self, event: Lifecycle) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        self.changed.notify_waiters();
    }

    /// The payloads of first deliveries, grouped by partition key, in completion order.
    pub fn first_deliveries_by_key(&self) -> HashMap<String, Vec<Bytes>> {
        let mut out: HashMap<String, Vec<Bytes>> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for d in self.log().iter() {
            if seen.insert(d.data.clone()) {
                out.entry(d.partition_key.clone())
                    .or_default()
                    .push(d.data.clone());
            }
        }
        out
    }

    /// Deliveries beyond the first of each payload.
    pub fn duplicates(&self) -> usize {
        let log = self.log();
        let distinct: std::collections::HashSet<&Bytes> = log.iter().map(|d| &d.data).collect();
        log.len() - distinct.len()
    }

    /// Waits until `done` holds for what was delivered.
    pub async fn wait_until(&self, done: impl Fn(&[Delivery]) -> bool) {
        loop {
            let changed = self.changed.notified();
            if done(&self.log()) {
                return;
            }
            changed.await;
        }
    }
}

/// The user's factory, observed: see the [module docs](self).
pub struct Observed<F> {
    inner: Arc<F>,
    worker: String,
    incarnation: u32,
    deliveries: Arc<Deliveries>,
    gate: Arc<Gate>,
}

impl<F> Observed<F> {
    /// Observes the processors `inner` creates for `worker` (in its `incarnation`), logging
    /// into `deliveries`, pausing at `gate`.
    pub fn new(
        inner: Arc<F>,
        worker: &str,
        incarnation: u32,
        deliveries: Arc<Deliveries>,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            inner,
            worker: worker.to_owned(),
            incarnation,
            deliveries,
            gate,
        }
    }
}

impl<F: ProcessorFactory> ProcessorFactory for Observed<F> {
    type Processor = ObservedProcessor<F::Processor>;

    fn create(&self, shard: &ShardInfo) -> Self::Processor {
        ObservedProcessor {
            inner: self.inner.create(shard),
            worker: self.worker.clone(),
            incarnation: self.incarnation,
            // Multi-stream workers: `<stream>/<shard>`, as shard ids repeat across streams.
            shard_id: match &shard.stream_id {
                Some(_) => format!("{}/{}", shard.stream, shard.shard_id),
                None => shard.shard_id.clone(),
            },
            deliveries: self.deliveries.clone(),
            gate: self.gate.clone(),
        }
    }
}

/// A user's processor, observed by [`Observed`].
pub struct ObservedProcessor<P> {
    inner: P,
    worker: String,
    incarnation: u32,
    shard_id: String,
    deliveries: Arc<Deliveries>,
    gate: Arc<Gate>,
}

impl<P> ObservedProcessor<P> {
    fn event(&self, call: Call) {
        self.deliveries.event(Lifecycle {
            at: Instant::now(),
            worker: self.worker.clone(),
            incarnation: self.incarnation,
            shard_id: self.shard_id.clone(),
            call,
        });
    }
}

impl<P: RecordProcessor> RecordProcessor for ObservedProcessor<P> {
    type Error = BoxError;

    async fn initialize(&mut self, input: InitializationInput) -> Result<(), BoxError> {
        self.gate.pass().await;
        self.event(Call::Initialize(input.checkpoint.clone()));
        self.inner.initialize(input).await.map_err(Into::into)
    }

    async fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.gate.pass().await;
        let records = input.records;
        self.inner
            .process_records(input, checkpointer)
            .await
            .map_err(Into::into)?;
        let at = Instant::now();
        self.deliveries.push(records.iter().map(|r| Delivery {
            at,
            worker: self.worker.clone(),
            incarnation: self.incarnation,
            shard_id: self.shard_id.clone(),
            position: r.position(),
            partition_key: r.partition_key().to_owned(),
            data: r.data().clone(),
        }));
        self.gate.pass().await;
        Ok(())
    }

    async fn lease_lost(&mut self) -> Result<(), BoxError> {
        self.event(Call::LeaseLost);
        self.inner.lease_lost().await.map_err(Into::into)
    }

    async fn shard_ended(
        &mut self,
        input: ShardEndedInput,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.gate.pass().await;
        self.event(Call::ShardEnded);
        self.inner
            .shard_ended(input, checkpointer)
            .await
            .map_err(Into::into)
    }

    async fn shutdown_requested(
        &mut self,
        reason: ShutdownReason,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        self.gate.pass().await;
        self.event(Call::Shutdown(reason));
        self.inner
            .shutdown_requested(reason, checkpointer)
            .await
            .map_err(Into::into)
    }
}

/// Every checkpoint the lease table accepted, checked: none may move a lease backwards.
#[derive(Debug, Default)]
pub struct CheckpointLog {
    state: Mutex<CheckpointState>,
}

#[derive(Debug, Default)]
struct CheckpointState {
    last: HashMap<String, ExtendedSequenceNumber>,
    accepted: usize,
    regressions: Vec<String>,
}

impl CheckpointLog {
    fn state(&self) -> MutexGuard<'_, CheckpointState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checkpoints accepted so far.
    pub fn accepted(&self) -> usize {
        self.state().accepted
    }

    /// Each checkpoint that moved a lease backwards, described.
    pub fn regressions(&self) -> Vec<String> {
        self.state().regressions.clone()
    }
}

#[async_trait]
impl TableHooks for CheckpointLog {
    async fn after(&self, call: &TableCall<'_>, outcome: Result<(), &LeaseError>) {
        let TableCall::Update { key, update, .. } = call else {
            return;
        };
        let Some(position) = &update.checkpoint else {
            return;
        };
        if outcome.is_err() {
            return;
        }
        let mut state = self.state();
        state.accepted += 1;
        if let Some(last) = state.last.get(*key)
            && position < last
        {
            let regression = format!("checkpoint on {key} moved backwards: {last} -> {position}");
            state.regressions.push(regression);
        }
        state.last.insert((*key).to_owned(), position.clone());
    }
}
