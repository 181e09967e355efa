//! The worker with enhanced fan-out retrieval on the in-memory model, under tokio's paused clock.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kcl_core::backend::{
    BackendError, ConsumerStatus, FanOut, GetRecordsOutput, ListShardsPage, ListShardsRequest,
    ShardIterator, StartingPosition, StreamBackend, StreamConsumer, StreamDescription,
    Subscription,
};
use kcl_core::lease::{
    Expectation, InMemoryLeaseTable, Lease, LeaseError, LeaseTable, LeaseUpdate,
};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::processor::{BoxError, ProcessorFactory, RecordProcessor, ShardInfo};
use kcl_core::record::ExtendedSequenceNumber;
use kcl_core::retrieval::{FanOutConfig, Retrieval};
use kcl_core::worker::WorkerBuilder;
use support::{
    Call, Faults, Recorder, RecordingFactory, RecordingProcessor, Running, assert_order_per_key,
    assert_parents_ended, produce, split_then_merge, start_worker, within,
};

const STREAM: &str = "orders";
const APP: &str = "fanout-app";
const LONG: Duration = Duration::from_secs(1800);

fn model(shards: u32, config: ModelConfig) -> Arc<KinesisModel> {
    let model = KinesisModel::new(config);
    model.create_stream(STREAM, shards).unwrap();
    model
}

/// Starts a worker of `factory` reading with enhanced fan-out.
fn start_with<F: ProcessorFactory>(
    name: &str,
    backend: Arc<dyn StreamBackend>,
    table: &Arc<dyn LeaseTable>,
    factory: F,
    configure: impl FnOnce(WorkerBuilder<F>) -> WorkerBuilder<F>,
) -> Running {
    start_worker((APP, STREAM, name), backend, table, factory, LONG, |b| {
        configure(b.retrieval(Retrieval::FanOut(FanOutConfig::default())))
    })
}

fn start(
    name: &str,
    backend: Arc<dyn StreamBackend>,
    table: &Arc<dyn LeaseTable>,
    recorder: &Arc<Recorder>,
    configure: impl FnOnce(WorkerBuilder<RecordingFactory>) -> WorkerBuilder<RecordingFactory>,
) -> Running {
    let factory = RecordingProcessor::factory(name, recorder.clone(), Faults::default());
    start_with(name, backend, table, factory, configure)
}

fn table() -> Arc<dyn LeaseTable> {
    Arc::new(InMemoryLeaseTable::new())
}

#[tokio::test(start_paused = true)]
async fn fan_out_registers_the_consumer_and_delivers_every_record_in_order() {
    // Default limits: the consumer is CREATING for 5 s before it can be subscribed to.
    let model = model(4, ModelConfig::new());
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 50, 2_000, 0);
    let w = start("w1", model.clone(), &table, &recorder, |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 2_000).await;
    let more = produce(&model, STREAM, 50, 500, 2_000);
    recorder.wait_until(LONG, |r| r.distinct() >= 2_500).await;
    w.stop().await;
    assert_eq!(
        recorder.seen().len(),
        2_500,
        "no duplicates without failures"
    );
    let mut all = produced;
    all.extend(more);
    assert_order_per_key(&recorder, &all);
    let consumer = model.describe_stream_consumer(STREAM, APP).await.unwrap();
    assert_eq!(
        consumer.status,
        ConsumerStatus::Active,
        "named after the application"
    );
    for lease in table.list().await.unwrap() {
        assert!(matches!(
            lease.checkpoint,
            ExtendedSequenceNumber::Sequence { .. }
        ));
        assert_eq!(recorder.calls(&lease.key).last(), Some(&Call::Shutdown));
    }
}

#[tokio::test(start_paused = true)]
async fn subscriptions_that_end_are_renewed_from_the_continuation() {
    // Subscriptions last 30 s here (5 min in the service): many renewals while records flow.
    let config = ModelConfig::new()
        .with_consumer_registration_time(Duration::ZERO)
        .with_subscription_timing(Duration::from_secs(30), Duration::from_secs(1));
    let model = model(2, config);
    let counting = Counting::new(model.clone());
    let table = table();
    let recorder = Recorder::new();
    let w = start("w1", counting.clone(), &table, &recorder, |b| b);
    let mut produced = Vec::new();
    for round in 0..20 {
        produced.extend(produce(&model, STREAM, 10, 20, round * 20));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    recorder.wait_until(LONG, |r| r.distinct() >= 400).await;
    w.stop().await;
    assert_eq!(
        recorder.seen().len(),
        400,
        "nothing repeated across renewals"
    );
    assert_order_per_key(&recorder, &produced);
    assert!(
        counting.subscribes.load(Ordering::SeqCst) >= 2 * 6,
        "the scenario must renew subscriptions ({} subscribes)",
        counting.subscribes.load(Ordering::SeqCst)
    );
}

#[tokio::test(start_paused = true)]
async fn resource_in_use_backs_off_until_the_old_subscription_closes() {
    let config = ModelConfig::new().with_consumer_registration_time(Duration::ZERO);
    let model = model(1, config);
    let shard = model.shard_ids(STREAM).unwrap().remove(0);
    // A previous owner's subscription is still open.
    let consumer = model.register_stream_consumer(STREAM, APP).await.unwrap();
    let held = model
        .subscribe_to_shard(&consumer.arn, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    let counting = Counting::new(model.clone());
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 5, 50, 0);
    let w = start("w1", counting.clone(), &table, &recorder, |b| b);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        recorder.seen().is_empty(),
        "nothing while the old subscription is open"
    );
    let refused = counting.in_use.load(Ordering::SeqCst);
    assert!(refused >= 2, "retried with backoff ({refused} refusals)");
    assert!(
        refused < 100,
        "backed off, not a hot loop ({refused} refusals)"
    );
    drop(held);
    recorder.wait_until(LONG, |r| r.distinct() >= 50).await;
    w.stop().await;
    assert_eq!(recorder.seen().len(), 50);
    assert_order_per_key(&recorder, &produced);
}

#[tokio::test(start_paused = true)]
async fn split_and_merge_end_parents_through_the_subscription() {
    let config = ModelConfig::new().with_consumer_registration_time(Duration::ZERO);
    let model = model(2, config);
    let table = table();
    let recorder = Recorder::new();
    let mut produced = produce(&model, STREAM, 40, 400, 0);
    let w = start("w1", model.clone(), &table, &recorder, |b| {
        b.parent_poll_interval(Duration::from_millis(100))
    });
    recorder.wait_until(LONG, |r| r.distinct() >= 400).await;
    let shards = split_then_merge(&model, STREAM, &mut produced);
    recorder.wait_until(LONG, |r| r.distinct() >= 1_200).await;
    w.stop().await;
    assert_order_per_key(&recorder, &produced);
    assert_parents_ended(table.as_ref(), &shards).await;
}

#[tokio::test(start_paused = true)]
async fn a_consumer_replaced_while_subscribed_does_not_end_open_shards() {
    let config = ModelConfig::new().with_consumer_registration_time(Duration::ZERO);
    let model = model(2, config);
    let table = table();
    let recorder = Recorder::new();
    let mut produced = produce(&model, STREAM, 10, 100, 0);
    let w = start("w1", model.clone(), &table, &recorder, |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 100).await;
    // Both shards are subscribed. Someone (an operator, another worker) deregisters the consumer
    // and registers it again: the subscriptions fail with ResourceNotFound while a consumer of
    // that name exists, under a new ARN. The shards are open: they must be read on.
    let old = model.describe_stream_consumer(STREAM, APP).await.unwrap();
    model.deregister_stream_consumer(STREAM, APP).unwrap();
    let new = model.register_stream_consumer(STREAM, APP).await.unwrap();
    assert_ne!(old.arn, new.arn);
    produced.extend(produce(&model, STREAM, 10, 100, 100));
    recorder.wait_until(LONG, |r| r.distinct() >= 200).await;
    w.stop().await;
    assert_order_per_key(&recorder, &produced);
    let leases = table.list().await.unwrap();
    assert_eq!(leases.len(), 2);
    for lease in leases {
        assert_ne!(
            lease.checkpoint,
            ExtendedSequenceNumber::ShardEnd,
            "open shard {} recorded as ended",
            lease.key
        );
        assert!(!recorder.calls(&lease.key).contains(&Call::ShardEnded));
    }
}

#[tokio::test(start_paused = true)]
async fn subscriptions_ending_without_any_event_back_off() {
    let config = ModelConfig::new().with_consumer_registration_time(Duration::ZERO);
    let model = model(1, config);
    let counting = Counting::new(model.clone());
    // The first 1000 subscriptions end at once, without any event.
    counting.end_first.store(1_000, Ordering::SeqCst);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 5, 50, 0);
    let w = start("w1", counting.clone(), &table, &recorder, |b| b);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let subscribes = counting.subscribes.load(Ordering::SeqCst);
    assert!(subscribes >= 2, "re-subscribed ({subscribes} subscribes)");
    assert!(
        subscribes < 100,
        "backed off, not a hot loop ({subscribes} subscribes)"
    );
    // Once subscriptions deliver again, every record arrives.
    counting.end_first.store(0, Ordering::SeqCst);
    recorder.wait_until(LONG, |r| r.distinct() >= 50).await;
    w.stop().await;
    assert_eq!(recorder.seen().len(), 50);
    assert_order_per_key(&recorder, &produced);
}

/// A worker's handle on the shared lease table whose writes giving one of `me`'s leases away
/// (release, handoff completed) land at once but answer only after `delay`: a slow network, or
/// a slow store.
#[derive(Debug)]
struct SlowToLetGo {
    inner: Arc<dyn LeaseTable>,
    me: &'static str,
    delay: Duration,
}

#[async_trait::async_trait]
impl LeaseTable for SlowToLetGo {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.inner.create_if_absent(lease).await
    }
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.inner.list().await
    }
    async fn list_workers(
        &self,
        consistency: kcl_core::lease::Consistency,
    ) -> Result<Vec<Lease>, LeaseError> {
        self.inner.list_workers(consistency).await
    }
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.inner.get(key).await
    }
    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        let before = self.inner.get(key).await?;
        let written = self.inner.update(key, expect, update).await?;
        let mine = |l: &Lease| {
            l.owner.as_deref() == Some(self.me) || l.checkpoint_owner.as_deref() == Some(self.me)
        };
        if before.as_ref().is_some_and(mine) && !mine(&written) {
            tokio::time::sleep(self.delay).await;
        }
        Ok(written)
    }
    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.inner.delete(key, expect).await
    }
}

#[tokio::test(start_paused = true)]
async fn the_old_owner_closes_its_subscription_before_handing_the_lease_over() {
    let config = ModelConfig::new().with_consumer_registration_time(Duration::ZERO);
    let model = model(2, config);
    let counting = Counting::new(model.clone());
    let table = table();
    let recorder = Recorder::new();
    let mut produced = produce(&model, STREAM, 10, 100, 0);
    // w1's release writes take effect at once but answer 5 s later: the new owner can take the
    // lease and subscribe meanwhile. w1's subscription must already be closed by then.
    let slow: Arc<dyn LeaseTable> = Arc::new(SlowToLetGo {
        inner: table.clone(),
        me: "w1",
        delay: Duration::from_secs(5),
    });
    let w1 = start("w1", counting.clone(), &slow, &recorder, |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 100).await;
    assert_eq!(w1.handle.status().held_leases.len(), 2);
    // w2 joins and asks for one of the leases: a graceful handoff.
    let w2 = start("w2", counting.clone(), &table, &recorder, |b| b);
    within(LONG, "one lease handed over", async {
        while w2.handle.status().held_leases.len() != 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    produced.extend(produce(&model, STREAM, 10, 100, 100));
    recorder
        .wait_until(LONG, |r| {
            r.distinct() >= 200 && r.seen().iter().any(|s| s.worker == "w2")
        })
        .await;
    let refused = counting.in_use.load(Ordering::SeqCst);
    w2.stop().await;
    w1.stop().await;
    assert_order_per_key(&recorder, &produced);
    assert_eq!(
        refused, 0,
        "the new owner's subscribe found the old owner's subscription still open"
    );
}

/// Blocks every batch until released, counting processed records.
struct Gate {
    inner: RecordingProcessor,
    open: Arc<tokio::sync::Semaphore>,
    processed: Arc<AtomicU64>,
}

impl RecordProcessor for Gate {
    type Error = BoxError;

    async fn process_records(
        &mut self,
        input: kcl_core::processor::ProcessRecordsInput<'_>,
        checkpointer: &mut kcl_core::checkpoint::Checkpointer,
    ) -> Result<(), BoxError> {
        self.open.acquire().await?.forget();
        self.processed
            .fetch_add(input.records.len() as u64, Ordering::SeqCst);
        self.inner.process_records(input, checkpointer).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_processor_holds_the_subscription_back() {
    // Pushed at 1000 bytes/s per shard (records of about 20 bytes): an event carries at most a
    // full bucket, about 50 records, so "the budget plus the largest event" is a tight bound.
    // Writes are unlimited so the records can be produced at once.
    const RECORDS: u64 = 5_000;
    const BUDGET: u64 = 100;
    let config = ModelConfig::unlimited()
        .with_fanout_rate(Some(1_000))
        .with_consumer_registration_time(Duration::ZERO);
    let model = model(1, config);
    let produced = produce(&model, STREAM, 10, RECORDS as usize, 0);
    let counting = Counting::new(model.clone());
    let table = table();
    let recorder = Recorder::new();
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let processed = Arc::new(AtomicU64::new(0));
    let factory = {
        let (recorder, open, processed) = (recorder.clone(), open.clone(), processed.clone());
        move |shard: &ShardInfo| Gate {
            inner: RecordingProcessor::factory("w1", recorder.clone(), Faults::default())
                .create(shard),
            open: open.clone(),
            processed: processed.clone(),
        }
    };
    let fanout = FanOutConfig::default().with_prefetch(BUDGET as usize, 8 << 20);
    let w = start_with("w1", counting.clone(), &table, factory, |b| {
        b.retrieval(Retrieval::FanOut(fanout))
    });
    // The processor is blocked: the retriever must stop pulling events.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let pulled = counting.pulled.load(Ordering::SeqCst);
    assert!(pulled > 0, "the subscription delivered something");
    assert!(
        pulled <= BUDGET + counting.largest_event.load(Ordering::SeqCst),
        "the subscription was read ahead of the budget ({pulled} records pulled)"
    );
    // Release the processor one batch a second, slower than the push rate: without
    // backpressure the retriever would fill its queue (16 events) with full-bucket events, about
    // 800 records. The lag must stay within the budget plus one event.
    let mut max_ahead = 0;
    for _ in 0..200 {
        open.add_permits(1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ahead = counting.pulled.load(Ordering::SeqCst) - processed.load(Ordering::SeqCst);
        max_ahead = max_ahead.max(ahead);
    }
    open.add_permits(1_000_000);
    recorder
        .wait_until(LONG, |r| r.distinct() >= RECORDS as usize)
        .await;
    w.stop().await;
    assert_order_per_key(&recorder, &produced);
    let largest = counting.largest_event.load(Ordering::SeqCst);
    assert!(
        largest < BUDGET,
        "the push rate keeps events small ({largest} records in one)"
    );
    assert!(
        max_ahead <= BUDGET + largest,
        "{max_ahead} records pulled ahead of the processor (budget {BUDGET}, largest event {largest})"
    );
}

#[tokio::test(start_paused = true)]
async fn a_silent_subscription_is_restarted() {
    let config = ModelConfig::new().with_consumer_registration_time(Duration::ZERO);
    let model = model(1, config);
    let counting = Counting::new(model.clone());
    counting.stall_first.store(1, Ordering::SeqCst);
    let table = table();
    let recorder = Recorder::new();
    let produced = produce(&model, STREAM, 5, 30, 0);
    let w = start("w1", counting.clone(), &table, &recorder, |b| b);
    recorder.wait_until(LONG, |r| r.distinct() >= 30).await;
    w.stop().await;
    assert_eq!(recorder.seen().len(), 30);
    assert_order_per_key(&recorder, &produced);
    assert!(counting.subscribes.load(Ordering::SeqCst) >= 2, "restarted");
}

/// Wraps the model: counts subscribes, refusals and records pulled from subscriptions, and can
/// make the first subscriptions hang without any event or end at once without any.
#[derive(Debug)]
struct Counting {
    inner: Arc<KinesisModel>,
    subscribes: AtomicU64,
    in_use: AtomicU64,
    pulled: Arc<AtomicU64>,
    largest_event: Arc<AtomicU64>,
    stall_first: AtomicU64,
    end_first: AtomicU64,
}

impl Counting {
    fn new(inner: Arc<KinesisModel>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            subscribes: 0.into(),
            in_use: 0.into(),
            pulled: Arc::new(0.into()),
            largest_event: Arc::new(0.into()),
            stall_first: 0.into(),
            end_first: 0.into(),
        })
    }
}

#[async_trait::async_trait]
impl StreamBackend for Counting {
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError> {
        self.inner.describe_stream(stream).await
    }
    async fn list_shards(&self, r: ListShardsRequest) -> Result<ListShardsPage, BackendError> {
        self.inner.list_shards(r).await
    }
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        self.inner
            .get_shard_iterator(stream, shard_id, position)
            .await
    }
    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.inner.get_records(iterator, limit).await
    }
    fn fan_out(&self) -> Option<&dyn FanOut> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl FanOut for Counting {
    async fn register_stream_consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.inner.register_stream_consumer(stream, name).await
    }
    async fn describe_stream_consumer(
        &self,
        stream: &str,
        name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.inner.describe_stream_consumer(stream, name).await
    }
    async fn subscribe_to_shard(
        &self,
        arn: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<Subscription, BackendError> {
        self.subscribes.fetch_add(1, Ordering::SeqCst);
        if self
            .stall_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(futures::stream::pending().boxed());
        }
        if self
            .end_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(futures::stream::empty().boxed());
        }
        let sub = self
            .inner
            .subscribe_to_shard(arn, shard_id, position)
            .await
            .inspect_err(|e| {
                if matches!(e, BackendError::ResourceInUse(_)) {
                    self.in_use.fetch_add(1, Ordering::SeqCst);
                }
            })?;
        let (pulled, largest) = (self.pulled.clone(), self.largest_event.clone());
        Ok(sub
            .inspect(move |event| {
                if let Ok(event) = event {
                    let n = event.records.len() as u64;
                    pulled.fetch_add(n, Ordering::SeqCst);
                    largest.fetch_max(n, Ordering::SeqCst);
                }
            })
            .boxed())
    }
}
