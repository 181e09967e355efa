//! The model's enhanced fan-out under tokio's paused clock: consumer lifecycle, push delivery,
//! the per-consumer 2 MiB/s rate independent of polling readers, one subscription per consumer
//! and shard, and the 5-minute subscription lifetime.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kcl_core::backend::{
    BackendError, ConsumerStatus, FanOut, StartingPosition, StreamBackend, Subscription,
};
use kcl_core::model::{KinesisModel, MIB, ModelConfig, PutRecordsEntry};

const RECORD: usize = 64 * 1024;

fn model() -> std::sync::Arc<KinesisModel> {
    // Writes unlimited so the test can fill a shard at once; reads keep the service's limits.
    let m = KinesisModel::new(
        ModelConfig::new()
            .with_write_limits(None, None)
            .with_put_limits(None, None, None),
    );
    m.create_stream("s", 2).unwrap();
    m
}

fn fill(m: &KinesisModel, records: usize) -> String {
    let data = Bytes::from(vec![7u8; RECORD - 1]);
    let entries: Vec<PutRecordsEntry> = (0..records)
        .map(|_| PutRecordsEntry::new("k", data.clone()))
        .collect();
    let out = m.put_records("s", entries).unwrap();
    out.records[0].shard_id().unwrap().to_owned()
}

async fn active(m: &KinesisModel, name: &str) -> String {
    let c = m.register_stream_consumer("s", name).await.unwrap();
    tokio::time::sleep(m.config().consumer_registration_time).await;
    assert_eq!(
        m.describe_stream_consumer("s", name).await.unwrap().status,
        ConsumerStatus::Active
    );
    c.arn
}

/// Records received within `window` of virtual time.
async fn received_within(sub: &mut Subscription, window: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + window;
    let mut n = 0;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, sub.next()).await {
        n += event.unwrap().records.len();
    }
    n
}

#[tokio::test(start_paused = true)]
async fn consumers_are_creating_then_active_and_registered_once() {
    let m = model();
    let shard = m.shard_ids("s").unwrap().remove(0);
    let c = m.register_stream_consumer("s", "app").await.unwrap();
    assert_eq!(c.status, ConsumerStatus::Creating);
    let early = m
        .subscribe_to_shard(&c.arn, &shard, StartingPosition::TrimHorizon)
        .await;
    assert!(matches!(early, Err(BackendError::ResourceInUse(_))));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        m.describe_stream_consumer("s", "app").await.unwrap().status,
        ConsumerStatus::Active
    );
    assert!(matches!(
        m.register_stream_consumer("s", "app").await,
        Err(BackendError::ResourceInUse(_))
    ));
    assert!(matches!(
        m.describe_stream_consumer("s", "other").await,
        Err(BackendError::ResourceNotFound(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn each_consumer_gets_two_mib_per_second_independent_of_polling() {
    let m = model();
    let shard = fill(&m, 128); // 8 MiB
    let a = active(&m, "a").await;
    let b = active(&m, "b").await;
    let mut sa = m
        .subscribe_to_shard(&a, &shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    let mut sb = m
        .subscribe_to_shard(&b, &shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    // A polling reader takes its own share: one GetRecords returns up to 10 MiB.
    let it = m
        .get_shard_iterator("s", &shard, StartingPosition::TrimHorizon)
        .await
        .unwrap();
    assert_eq!(m.get_records(&it, 10_000).await.unwrap().records.len(), 128);
    // Each consumer: a full bucket (2 MiB = 32 records) at once, then 2 MiB/s.
    let per_second = (2 * MIB) as usize / RECORD;
    let (got_a, got_b) = tokio::join!(
        received_within(&mut sa, Duration::from_millis(2_500)),
        received_within(&mut sb, Duration::from_millis(2_500))
    );
    for got in [got_a, got_b] {
        assert!(
            got >= 3 * per_second - 1 && got <= 3 * per_second + per_second / 2 + 1,
            "{got} records of 64 KiB in 2.5 s (2 MiB/s with a 2 MiB bucket)"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn one_subscription_per_consumer_and_shard() {
    let m = model();
    let shards = m.shard_ids("s").unwrap();
    let arn = active(&m, "a").await;
    let first = m
        .subscribe_to_shard(&arn, &shards[0], StartingPosition::Latest)
        .await
        .unwrap();
    assert!(matches!(
        m.subscribe_to_shard(&arn, &shards[0], StartingPosition::Latest)
            .await,
        Err(BackendError::ResourceInUse(_))
    ));
    // Another shard, or another consumer, is fine.
    let _other_shard = m
        .subscribe_to_shard(&arn, &shards[1], StartingPosition::Latest)
        .await
        .unwrap();
    let b = active(&m, "b").await;
    let _other_consumer = m
        .subscribe_to_shard(&b, &shards[0], StartingPosition::Latest)
        .await
        .unwrap();
    drop(first);
    let _again = m
        .subscribe_to_shard(&arn, &shards[0], StartingPosition::Latest)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn idle_subscriptions_send_empty_events_and_end_after_their_lifetime() {
    let m = model();
    // The shard key "k" routes to (its first record is before LATEST).
    let shard = fill(&m, 1);
    let arn = active(&m, "a").await;
    let mut sub = m
        .subscribe_to_shard(&arn, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    // Idle: empty events (heartbeats) with a continuation to resume from.
    let first = sub.next().await.unwrap().unwrap();
    assert!(first.records.is_empty());
    assert!(first.continuation_sequence_number.is_some());
    // The subscription ends by itself (after 5 minutes): the stream finishes without an error.
    // The bound only turns a subscription that never ends into a failure instead of a hang.
    let mut events = 1;
    let ended = tokio::time::timeout(Duration::from_secs(3600), async {
        while let Some(event) = sub.next().await {
            assert!(event.unwrap().records.is_empty());
            events += 1;
        }
    })
    .await;
    assert!(ended.is_ok(), "the subscription ended");
    assert!(events > 1, "heartbeats while it lasted");
    // Its slot is free again.
    let _again = m
        .subscribe_to_shard(&arn, &shard, StartingPosition::Latest)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn records_are_pushed_when_written() {
    // No heartbeat within a subscription's life: a record written while the subscription waits
    // can only reach it by being pushed.
    let m = KinesisModel::new(
        ModelConfig::new()
            .with_consumer_registration_time(Duration::ZERO)
            .with_subscription_timing(Duration::from_secs(300), Duration::from_secs(3600)),
    );
    m.create_stream("s", 1).unwrap();
    let shard = m.shard_ids("s").unwrap().remove(0);
    let arn = m.register_stream_consumer("s", "a").await.unwrap().arn;
    let mut sub = m
        .subscribe_to_shard(&arn, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    let writer = {
        let m = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            m.put_record("s", "k", Bytes::from_static(b"pushed"), None)
                .unwrap()
        })
    };
    let event = sub
        .next()
        .await
        .expect("the record, before the subscription ends")
        .unwrap();
    assert_eq!(writer.await.unwrap().shard_id, shard);
    assert_eq!(event.records.len(), 1);
    assert_eq!(event.records[0].data().as_ref(), b"pushed");
}

#[tokio::test(start_paused = true)]
async fn a_deregistered_consumer_s_subscription_fails() {
    let m = model();
    let shard = m.shard_ids("s").unwrap().remove(0);
    let arn = active(&m, "a").await;
    let mut sub = m
        .subscribe_to_shard(&arn, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    m.deregister_stream_consumer("s", "a").unwrap();
    let event = sub.next().await.unwrap();
    assert!(matches!(event, Err(BackendError::ResourceNotFound(_))));
    assert!(sub.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_consumer_registered_again_gets_a_new_arn() {
    // Consumers ACTIVE at once, so everything below happens at one instant of the paused clock.
    let m = KinesisModel::new(ModelConfig::new().with_consumer_registration_time(Duration::ZERO));
    m.create_stream("s", 1).unwrap();
    let shard = m.shard_ids("s").unwrap().remove(0);
    let old = m.register_stream_consumer("s", "a").await.unwrap().arn;
    let mut old_sub = m
        .subscribe_to_shard(&old, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    m.deregister_stream_consumer("s", "a").unwrap();
    let new = m.register_stream_consumer("s", "a").await.unwrap().arn;
    assert_ne!(new, old, "every registration has its own ARN");
    let _new_sub = m
        .subscribe_to_shard(&new, &shard, StartingPosition::Latest)
        .await
        .unwrap();
    // The old subscription belongs to the old consumer: it fails, and closing it leaves the new
    // consumer's subscription in place.
    assert!(matches!(
        old_sub.next().await,
        Some(Err(BackendError::ResourceNotFound(_)))
    ));
    drop(old_sub);
    assert!(matches!(
        m.subscribe_to_shard(&new, &shard, StartingPosition::Latest)
            .await,
        Err(BackendError::ResourceInUse(_))
    ));
    assert!(matches!(
        m.subscribe_to_shard(&old, &shard, StartingPosition::Latest)
            .await,
        Err(BackendError::ResourceNotFound(_))
    ));
}
