//! Enhanced fan-out in the model: stream consumers and `SubscribeToShard` push delivery.
//!
//! * `RegisterStreamConsumer` adds a consumer that is `CREATING` for
//!   [`ModelConfig::consumer_registration_time`](super::ModelConfig) and `ACTIVE` afterwards; a
//!   second registration of the same name is `ResourceInUse`; at most
//!   `max_consumers_per_stream` consumers (`LimitExceeded`). Every registration has its own ARN
//!   (a consumer deregistered and registered again is a new consumer to its old subscriptions).
//! * `SubscribeToShard` needs an `ACTIVE` consumer (else `ResourceInUse`) and allows one
//!   subscription per consumer and shard at a time (a second one is `ResourceInUse` until the
//!   first ends or is dropped, as after a failover in the service).
//! * Delivery is pushed: the subscription wakes when records are appended, and sends an empty
//!   event every `subscription_heartbeat` while idle. Each consumer has its own
//!   `fanout_bytes_per_second` bucket per shard, independent of `GetRecords` readers and of other
//!   consumers; an event carries at most what the bucket holds (at least one record when it has
//!   credit).
//! * Each event's continuation sequence number is the last record it carries (or, without
//!   records, the last record before the subscription's position), so re-subscribing
//!   `AFTER_SEQUENCE_NUMBER` of it neither skips nor repeats. At the end of a closed shard the
//!   last event has no continuation and carries the children.
//! * A subscription ends (the stream finishes) after `subscription_lifetime`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::limits::TokenBucket;
use super::stream::StreamState;
use super::{KinesisModel, lock};
use crate::backend::{
    BackendError, ConsumerStatus, StartingPosition, StreamConsumer, SubscribeToShardEvent,
    Subscription,
};
use crate::record::SequenceNumber;

/// Most records one event carries.
const MAX_EVENT_RECORDS: usize = 10_000;

/// A registered consumer of one stream.
#[derive(Debug)]
pub(crate) struct ConsumerState {
    arn: String,
    registered_at: Instant,
    /// Per-shard push-rate buckets (by shard index), created on first use.
    buckets: HashMap<usize, TokenBucket>,
    /// Shards with an open subscription.
    subscribed: std::collections::HashSet<usize>,
}

impl KinesisModel {
    fn consumer_view(&self, name: &str, consumer: &ConsumerState, now: Instant) -> StreamConsumer {
        let active = now.saturating_duration_since(consumer.registered_at)
            >= self.config.consumer_registration_time;
        StreamConsumer {
            name: name.to_owned(),
            arn: consumer.arn.clone(),
            status: if active {
                ConsumerStatus::Active
            } else {
                ConsumerStatus::Creating
            },
        }
    }

    pub(crate) fn register_consumer_now(
        &self,
        stream_name: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        if consumer_name.is_empty()
            || consumer_name.len() > 128
            || !consumer_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(BackendError::InvalidArgument(
                format!(
                    "consumer name {consumer_name:?} must be 1 to 128 characters of [a-zA-Z0-9_.-]"
                )
                .into(),
            ));
        }
        let now = Instant::now();
        // Before the stream's lock (the registry is never locked inside a stream's lock).
        let stamp = self.consumer_stamp(now);
        let stream = self.stream(stream_name)?;
        let mut stream = lock(&stream);
        if stream.consumers.contains_key(consumer_name) {
            return Err(BackendError::ResourceInUse(
                format!("consumer {consumer_name:?} of stream {stream_name:?} already exists")
                    .into(),
            ));
        }
        if let Some(max) = self.config.max_consumers_per_stream
            && stream.consumers.len() >= max as usize
        {
            return Err(BackendError::LimitExceeded(
                format!("stream {stream_name:?} already has {max} consumers").into(),
            ));
        }
        // Unique per registration: a subscription of a deregistered consumer never matches the
        // consumer registered again under the same name.
        let consumer = ConsumerState {
            arn: format!(
                "arn:aws:kinesis:us-east-1:000000000000:stream/{stream_name}/consumer/{consumer_name}:{stamp}"
            ),
            registered_at: now,
            buckets: HashMap::new(),
            subscribed: Default::default(),
        };
        let view = self.consumer_view(consumer_name, &consumer, now);
        stream.consumers.insert(consumer_name.to_owned(), consumer);
        Ok(view)
    }

    pub(crate) fn describe_consumer_now(
        &self,
        stream_name: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let stream = self.stream(stream_name)?;
        let stream = lock(&stream);
        let consumer = stream.consumers.get(consumer_name).ok_or_else(|| {
            BackendError::ResourceNotFound(
                format!("consumer {consumer_name:?} of stream {stream_name:?} not found").into(),
            )
        })?;
        Ok(self.consumer_view(consumer_name, consumer, Instant::now()))
    }

    /// `DeregisterStreamConsumer`: the consumer is gone at once; its open subscriptions end with
    /// `ResourceNotFound` at their next event.
    pub fn deregister_stream_consumer(
        &self,
        stream_name: &str,
        consumer_name: &str,
    ) -> Result<(), BackendError> {
        let stream = self.stream(stream_name)?;
        let mut stream = lock(&stream);
        stream
            .consumers
            .remove(consumer_name)
            .map(|_| ())
            .ok_or_else(|| {
                BackendError::ResourceNotFound(
                    format!("consumer {consumer_name:?} of stream {stream_name:?} not found")
                        .into(),
                )
            })?;
        stream.changed.notify_waiters();
        Ok(())
    }

    pub(crate) fn subscribe_now(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<Subscription, BackendError> {
        let now = Instant::now();
        // arn:aws:kinesis:REGION:ACCOUNT:stream/STREAM/consumer/NAME:CREATED
        let not_found = || {
            BackendError::ResourceNotFound(format!("consumer {consumer_arn:?} not found").into())
        };
        let rest = consumer_arn
            .split_once(":stream/")
            .map(|(_, rest)| rest)
            .ok_or_else(not_found)?;
        let (stream_name, rest) = rest.split_once("/consumer/").ok_or_else(not_found)?;
        let (consumer_name, _) = rest.rsplit_once(':').ok_or_else(not_found)?;
        let shared = self.stream(stream_name)?;
        let mut stream = lock(&shared);
        let index = stream.find_shard(shard_id, now)?;
        let retention = stream.retention;
        stream.shards[index].trim(now, retention);
        let start = Self::iterator_position(&stream, index, position)?;
        let consumer = stream
            .consumers
            .get(consumer_name)
            .filter(|c| c.arn == consumer_arn)
            .ok_or_else(not_found)?;
        if self.consumer_view(consumer_name, consumer, now).status != ConsumerStatus::Active {
            return Err(BackendError::ResourceInUse(
                format!("consumer {consumer_name:?} is not ACTIVE yet").into(),
            ));
        }
        let consumer = stream
            .consumers
            .get_mut(consumer_name)
            .ok_or_else(not_found)?;
        if !consumer.subscribed.insert(index) {
            return Err(BackendError::ResourceInUse(
                format!(
                    "another subscription of consumer {consumer_name:?} to shard {shard_id} is open"
                )
                .into(),
            ));
        }
        let changed = stream.changed.clone();
        drop(stream);
        let state = Pushing {
            stream: shared,
            changed,
            consumer: consumer_name.to_owned(),
            arn: consumer_arn.to_owned(),
            shard: index,
            position: start,
            ends_at: now + self.config.subscription_lifetime,
            heartbeat: self
                .config
                .subscription_heartbeat
                .max(Duration::from_millis(1)),
            rate: self.config.fanout_bytes_per_second,
            last_event: now,
            finished: false,
        };
        Ok(futures::stream::unfold(state, |mut state| async move {
            let event = state.next_event().await?;
            Some((event, state))
        })
        .boxed())
    }
}

/// One open subscription.
struct Pushing {
    stream: Arc<Mutex<StreamState>>,
    changed: Arc<tokio::sync::Notify>,
    consumer: String,
    arn: String,
    shard: usize,
    position: u64,
    ends_at: Instant,
    heartbeat: Duration,
    rate: Option<u64>,
    last_event: Instant,
    finished: bool,
}

impl Drop for Pushing {
    fn drop(&mut self) {
        let mut stream = lock(&self.stream);
        if let Some(consumer) = stream.consumers.get_mut(&self.consumer)
            && consumer.arn == self.arn
        {
            consumer.subscribed.remove(&self.shard);
        }
    }
}

/// What one look at the shard found.
enum Look {
    Event(SubscribeToShardEvent),
    Fail(BackendError),
    /// Nothing to send yet: wait at most this long (or until woken).
    Wait(Duration),
}

impl Pushing {
    async fn next_event(&mut self) -> Option<Result<SubscribeToShardEvent, BackendError>> {
        if self.finished {
            return None;
        }
        loop {
            let now = Instant::now();
            if now >= self.ends_at {
                self.finished = true;
                return None;
            }
            // Registered before looking, so an append between the look and the wait wakes us.
            let changed = self.changed.clone();
            let mut woken = std::pin::pin!(changed.notified());
            Pin::as_mut(&mut woken).enable();
            let heartbeat_at = self.last_event + self.heartbeat;
            match self.look(now, now >= heartbeat_at) {
                Look::Event(event) => {
                    self.last_event = now;
                    if event.continuation_sequence_number.is_none() {
                        self.finished = true;
                    }
                    return Some(Ok(event));
                }
                Look::Fail(error) => {
                    self.finished = true;
                    return Some(Err(error));
                }
                Look::Wait(wait) => {
                    let until = (now + wait).min(heartbeat_at).min(self.ends_at);
                    tokio::select! {
                        biased;
                        _ = woken => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
            }
        }
    }

    fn look(&mut self, now: Instant, heartbeat_due: bool) -> Look {
        let mut guard = lock(&self.stream);
        let stream = &mut *guard;
        let retention = stream.retention;
        let Some(consumer) = stream.consumers.get_mut(&self.consumer) else {
            return Look::Fail(BackendError::ResourceNotFound(
                format!("consumer {:?} was deregistered", self.consumer).into(),
            ));
        };
        if consumer.arn != self.arn {
            return Look::Fail(BackendError::ResourceNotFound(
                format!("consumer {:?} was deregistered", self.consumer).into(),
            ));
        }
        let Some(shard) = stream.shards.get_mut(self.shard) else {
            return Look::Fail(BackendError::ResourceNotFound("shard is gone".into()));
        };
        if shard.is_expired(now, retention) {
            return Look::Fail(BackendError::ResourceNotFound(
                format!("shard {} no longer exists", shard.id).into(),
            ));
        }
        shard.trim(now, retention);
        let available = self.position.max(shard.start()) < shard.end();
        let bucket = match self.rate {
            Some(rate) => Some(
                consumer
                    .buckets
                    .entry(self.shard)
                    .or_insert_with(|| TokenBucket::new(rate, now)),
            ),
            None => None,
        };
        let (credit, refill) = match bucket {
            Some(b) => {
                if b.has_credit(now) {
                    (Some(b.level_units()), Duration::ZERO)
                } else {
                    (None, b.time_until_credit())
                }
            }
            None => (Some(u64::MAX), Duration::ZERO),
        };
        let at_end_of_closed = !available && !shard.is_open();
        let sendable = available && credit.is_some();
        if !(sendable || at_end_of_closed || heartbeat_due) {
            // In debt: until the bucket has credit again; else until woken or the heartbeat.
            let wait = if available { refill } else { self.heartbeat };
            return Look::Wait(wait);
        }
        let (records, next, bytes) = match credit {
            Some(credit) if available => {
                shard.read(self.position, MAX_EVENT_RECORDS, Some(credit.max(1)))
            }
            _ => (Vec::new(), self.position.max(shard.start()), 0),
        };
        if let Some(bucket) = consumer.buckets.get_mut(&self.shard)
            && bytes > 0
        {
            bucket.charge(bytes);
        }
        self.position = next;
        let at_tip = next >= shard.end();
        let millis_behind_latest = shard.millis_behind(next, now);
        if at_tip && !shard.is_open() {
            let child_shards = stream.child_shards(self.shard);
            return Look::Event(SubscribeToShardEvent {
                records,
                continuation_sequence_number: None,
                millis_behind_latest: 0,
                child_shards,
            });
        }
        let continuation = match records.last() {
            Some(last) => last.sequence_number().clone(),
            None => shard
                .sequence_before(next)
                .unwrap_or_else(|| shard.starting_sequence.clone()),
        };
        Look::Event(SubscribeToShardEvent {
            records,
            continuation_sequence_number: Some(continuation),
            millis_behind_latest,
            child_shards: Vec::new(),
        })
    }
}

impl super::shard::ShardState {
    /// The sequence number of the record just before `position`, if retained.
    pub(crate) fn sequence_before(&self, position: u64) -> Option<SequenceNumber> {
        let before = position.checked_sub(1)?;
        self.record_at(before).map(|r| r.sequence_number().clone())
    }
}
