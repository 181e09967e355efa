//! Enhanced fan-out retrieval: a task per shard reading a `SubscribeToShard` subscription.
//!
//! - The stream consumer is registered if missing (name: [`FanOutConfig::consumer_name`], by
//!   default the application name) and awaited until `ACTIVE`, once per worker: the shard tasks
//!   share the result.
//! - One subscription per leased shard, started from the lease's position (a checkpoint restarts
//!   `AT_SEQUENCE_NUMBER`, so the consumer resumes inside a KPL aggregate as with polling), and
//!   re-subscribed `AFTER_SEQUENCE_NUMBER` of the last continuation when it ends (about every
//!   five minutes), fails or stays silent longer than [`FanOutConfig::silence_timeout`].
//! - `ResourceInUse` (the previous owner's subscription may still be open after a failover),
//!   transient errors and subscriptions that end without delivering any event back off
//!   exponentially with jitter ([`crate::retry`]); the backoff restarts at its first step after
//!   an event.
//! - Backpressure: the next event is not read until the prefetch budget has room, so
//!   the service's push is held back by HTTP/2 flow control and memory does not grow with lag.
//!   A held-back subscription keeps its share of the connection's flow-control window, so
//!   subscriptions must not share one HTTP/2 connection: the AWS backend (`kcl_core::aws`, see
//!   "One connection per subscription" there) gives each its own. Through a backend that
//!   multiplexes them on one connection (`KinesisBackend::from_client`, or
//!   `connection_per_subscription(false)`), about three held-back shards fill hyper's 5 MiB
//!   connection window and every other subscription on that connection starves until they are
//!   read again.
//! - Shard end: an event without continuation carries the children. A subscription idle for
//!   [`FanOutConfig::idle_probe_interval`] is also checked with one `GetRecords` after the
//!   continuation: a closed shard answers no next iterator and its children. (kinesis-local
//!   never ends a subscription to a closed shard; the probe also guards against stalls.)
//! - `ResourceNotFound` from a subscription names the consumer or the shard without saying which,
//!   so only a shard-level answer decides: `GetShardIterator(TRIM_HORIZON)` answering
//!   `ResourceNotFound` is the shard's end, as with polling. Otherwise the consumer was
//!   deregistered (and maybe registered again under a new ARN, by this or another worker): it is
//!   looked up again, registered if missing, and the shard re-subscribed from where it was.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{GiveUp, PrefetchBudget, RetrievalEvent, record_bytes};
use crate::backend::{
    BackendError, ChildShard, ConsumerStatus, StartingPosition, StreamBackend,
    SubscribeToShardEvent,
};
use crate::metrics::RetrievalMetrics;
use crate::record::SequenceNumber;
use crate::retry::RetryBackoff;

/// Settings of enhanced fan-out retrieval. Start from [`FanOutConfig::default`] and use the
/// `with_*` methods or assign the public fields.
#[derive(Clone, Debug)]
pub struct FanOutConfig {
    /// The stream consumer's name (default: the application name).
    pub consumer_name: Option<String>,
    /// Records received ahead of the processor (default 30000). The next event is read only
    /// while fewer are queued, but the service decides how many records an event carries, so
    /// the queue may exceed this by the records of one event.
    pub max_prefetch_records: usize,
    /// Bytes received ahead of the processor (default 8 MiB): data, partition keys and about 256
    /// bytes of bookkeeping per record. Like the record bound, may be exceeded by one event.
    /// The worker-wide bound ([`super::WorkerPrefetch`]) applies too.
    pub max_prefetch_bytes: usize,
    /// Backoff after `ResourceInUse`, throttling, transient errors or a subscription that ended
    /// without any event (default 200 ms to 10 s).
    pub error_backoff: RetryBackoff,
    /// A subscription without any event for this long is restarted (default 60 s, as Java KCL;
    /// the service sends an event at least every few seconds).
    pub silence_timeout: Duration,
    /// A subscription without records for this long is checked for the end of its shard with
    /// one `GetRecords` (default 10 s; `None`: never).
    pub idle_probe_interval: Option<Duration>,
    /// How often a `CREATING` consumer is described until `ACTIVE` (default 1 s).
    pub activation_poll_interval: Duration,
    /// Registration state shared by every shard of one worker (the configuration is cloned per
    /// worker).
    registered: Arc<tokio::sync::Mutex<Option<Registered>>>,
}

#[derive(Clone, Debug)]
struct Registered {
    stream: String,
    name: String,
    arn: String,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        Self {
            consumer_name: None,
            max_prefetch_records: 30_000,
            max_prefetch_bytes: 8 * 1024 * 1024,
            error_backoff: RetryBackoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            silence_timeout: Duration::from_secs(60),
            idle_probe_interval: Some(Duration::from_secs(10)),
            activation_poll_interval: Duration::from_secs(1),
            registered: Default::default(),
        }
    }
}

impl PartialEq for FanOutConfig {
    fn eq(&self, other: &Self) -> bool {
        self.consumer_name == other.consumer_name
            && self.max_prefetch_records == other.max_prefetch_records
            && self.max_prefetch_bytes == other.max_prefetch_bytes
            && self.error_backoff == other.error_backoff
            && self.silence_timeout == other.silence_timeout
            && self.idle_probe_interval == other.idle_probe_interval
            && self.activation_poll_interval == other.activation_poll_interval
    }
}

impl FanOutConfig {
    /// Uses this consumer name instead of the application name.
    pub fn with_consumer_name(mut self, name: impl Into<String>) -> Self {
        self.consumer_name = Some(name.into());
        self
    }

    /// Sets the prefetch bounds (records, bytes); each may be exceeded by one event (see
    /// [`FanOutConfig::max_prefetch_records`]).
    pub fn with_prefetch(mut self, records: usize, bytes: usize) -> Self {
        self.max_prefetch_records = records;
        self.max_prefetch_bytes = bytes;
        self
    }

    /// Sets the backoff after errors.
    pub fn with_error_backoff(mut self, backoff: RetryBackoff) -> Self {
        self.error_backoff = backoff;
        self
    }

    /// Sets how long a subscription may stay silent before it is restarted.
    pub fn with_silence_timeout(mut self, timeout: Duration) -> Self {
        self.silence_timeout = timeout;
        self
    }

    /// Sets how long a subscription may go without records before the shard-end probe.
    pub fn with_idle_probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.idle_probe_interval = interval;
        self
    }

    /// A copy with its own registration state (one per worker).
    pub(crate) fn for_worker(&self) -> Self {
        Self {
            registered: Default::default(),
            ..self.clone()
        }
    }

    /// The consumer's ARN: described, registered if missing, awaited until `ACTIVE`. Shared by
    /// the shard tasks of a worker: one of them asks, the others wait for its answer.
    async fn consumer_arn(
        &self,
        backend: &dyn StreamBackend,
        stream: &str,
        name: &str,
    ) -> Result<String, BackendError> {
        let mut cached = self.registered.lock().await;
        if let Some(r) = cached.as_ref()
            && r.stream == stream
            && r.name == name
        {
            return Ok(r.arn.clone());
        }
        let mut consumer = match backend.describe_stream_consumer(stream, name).await {
            Ok(c) => c,
            Err(BackendError::ResourceNotFound(_)) => {
                match backend.register_stream_consumer(stream, name).await {
                    Ok(c) => {
                        info!(consumer = name, arn = %c.arn, "registered the stream consumer");
                        c
                    }
                    // Another worker registered it meanwhile.
                    Err(BackendError::ResourceInUse(_)) => {
                        backend.describe_stream_consumer(stream, name).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        while consumer.status != ConsumerStatus::Active {
            if consumer.status == ConsumerStatus::Deleting {
                return Err(BackendError::ResourceInUse(
                    format!("stream consumer {name:?} is being deleted").into(),
                ));
            }
            debug!(
                consumer = name,
                "waiting for the stream consumer to be ACTIVE"
            );
            tokio::time::sleep(self.activation_poll_interval).await;
            consumer = backend.describe_stream_consumer(stream, name).await?;
        }
        *cached = Some(Registered {
            stream: stream.to_owned(),
            name: name.to_owned(),
            arn: consumer.arn.clone(),
        });
        Ok(consumer.arn)
    }

    /// Forgets the cached consumer if it is still `arn` (another shard task may have looked up
    /// its successor already).
    async fn forget_consumer(&self, arn: &str) {
        let mut cached = self.registered.lock().await;
        if cached.as_ref().is_some_and(|r| r.arn == arn) {
            *cached = None;
        }
    }
}

/// Everything one fan-out task needs.
pub(crate) struct FanOutTask {
    pub backend: Arc<dyn StreamBackend>,
    pub stream: String,
    pub consumer_name: String,
    pub shard_id: String,
    pub start: StartingPosition,
    pub config: FanOutConfig,
    pub budget: Arc<PrefetchBudget>,
    pub events: mpsc::Sender<RetrievalEvent>,
    pub metrics: RetrievalMetrics,
    /// When a permanent error (access denied, an invalid request) stops the task.
    pub give_up: GiveUp,
}

/// How one subscription ended.
enum Ended {
    /// Subscribe again from the current position (after `delay`).
    Resubscribe { delay: Option<Duration> },
    /// The shard ended; the event was sent.
    ShardEnd,
    /// The receiver is gone, or a permanent error was reported to it.
    Closed,
}

impl FanOutTask {
    /// Runs until the shard ends or the receiver is dropped.
    pub(crate) async fn run(mut self) {
        let mut backoff = self.config.error_backoff.schedule();
        loop {
            if self.events.is_closed() {
                return;
            }
            let arn = match self
                .config
                .consumer_arn(self.backend.as_ref(), &self.stream, &self.consumer_name)
                .await
            {
                Ok(arn) => arn,
                Err(error) => {
                    self.metrics.subscriptions_failed.increment(1);
                    // Not found here is the stream (the consumer is registered when missing).
                    if self.give_up.failed(error.is_permanent()) {
                        warn!(shard = %self.shard_id, %error, "stream consumer unusable; giving up");
                        let _ = self.events.send(RetrievalEvent::Failed(error)).await;
                        return;
                    }
                    warn!(shard = %self.shard_id, %error, "stream consumer not ready; retrying");
                    let delay = backoff.next().map(|d| self.give_up.cap(d));
                    if self.pause(delay).await {
                        return;
                    }
                    continue;
                }
            };
            let ended = match self
                .backend
                .subscribe_to_shard(&arn, &self.shard_id, self.start.clone())
                .await
            {
                Ok(subscription) => {
                    self.give_up.success();
                    self.metrics.subscriptions_opened.increment(1);
                    debug!(shard = %self.shard_id, position = ?self.start, "subscribed");
                    self.consume(subscription, &arn, &mut backoff).await
                }
                Err(error) => {
                    self.metrics.subscriptions_failed.increment(1);
                    self.on_error(error, &arn, &mut backoff).await
                }
            };
            match ended {
                Ended::Resubscribe { delay } => {
                    if let Some(delay) = delay
                        && self.pause(Some(delay)).await
                    {
                        return;
                    }
                }
                Ended::ShardEnd | Ended::Closed => return,
            }
        }
    }

    /// Reads one subscription until it ends.
    async fn consume(
        &mut self,
        mut subscription: crate::backend::Subscription,
        arn: &str,
        backoff: &mut crate::retry::Schedule,
    ) -> Ended {
        let mut idle_since: Option<Instant> = None;
        let mut last_probe: Option<Instant> = None;
        // Whether this subscription delivered any event: one that ends without any is
        // re-subscribed after a backoff, not at once (no tight loop against a service or proxy
        // that closes every subscription straight away).
        let mut delivered = false;
        loop {
            // Backpressure: read nothing more until the processor gave room back.
            // Biased (a seeded simulation replays the same order): a receiver gone wins.
            tokio::select! {
                biased;
                _ = self.events.closed() => return Ended::Closed,
                _ = self.budget.wait_for_room() => {}
            }
            let next = tokio::select! {
                biased;
                _ = self.events.closed() => return Ended::Closed,
                next = tokio::time::timeout(self.config.silence_timeout, subscription.next()) => next,
            };
            let event = match next {
                Err(_) => {
                    self.metrics.subscriptions_failed.increment(1);
                    warn!(shard = %self.shard_id, silence = ?self.config.silence_timeout, "subscription silent too long; restarting it");
                    return Ended::Resubscribe { delay: None };
                }
                Ok(None) if delivered => {
                    self.metrics.subscriptions_ended.increment(1);
                    debug!(shard = %self.shard_id, "subscription ended; re-subscribing");
                    return Ended::Resubscribe { delay: None };
                }
                Ok(None) => {
                    self.metrics.subscriptions_failed.increment(1);
                    warn!(shard = %self.shard_id, "subscription ended without any event; backing off");
                    return Ended::Resubscribe {
                        delay: backoff.next(),
                    };
                }
                Ok(Some(Err(error))) => {
                    self.metrics.subscriptions_failed.increment(1);
                    return self.on_error(error, arn, backoff).await;
                }
                Ok(Some(Ok(event))) => event,
            };
            delivered = true;
            *backoff = self.config.error_backoff.schedule();
            let SubscribeToShardEvent {
                records,
                continuation_sequence_number,
                millis_behind_latest,
                child_shards,
            } = event;
            let had_records = !records.is_empty();
            // Settles the reservation made while waiting for room, empty event or not.
            let bytes = records.iter().map(record_bytes).sum();
            self.budget.charge(records.len(), bytes);
            if had_records {
                idle_since = None;
                let event = RetrievalEvent::Records {
                    records,
                    millis_behind_latest: Some(millis_behind_latest),
                    bytes,
                    queued_at: Instant::now(),
                };
                if self.events.send(event).await.is_err() {
                    return Ended::Closed;
                }
            }
            let Some(continuation) = continuation_sequence_number else {
                return self.shard_end(child_shards).await;
            };
            self.start = StartingPosition::AfterSequenceNumber(continuation.clone());
            if had_records {
                continue;
            }
            if self
                .events
                .send(RetrievalEvent::CaughtUp {
                    millis_behind_latest: Some(millis_behind_latest),
                })
                .await
                .is_err()
            {
                return Ended::Closed;
            }
            let now = Instant::now();
            let since = *idle_since.get_or_insert(now);
            if let Some(interval) = self.config.idle_probe_interval
                && now.saturating_duration_since(since) >= interval
                && last_probe.is_none_or(|at| now.saturating_duration_since(at) >= interval)
            {
                last_probe = Some(now);
                if let Some(children) = self.probe_shard_end(&continuation).await {
                    info!(shard = %self.shard_id, "idle subscription: the shard is closed and fully read");
                    return self.shard_end(children).await;
                }
            }
        }
    }

    /// Asks `GetRecords` whether the shard is closed and read to its end after `continuation`.
    async fn probe_shard_end(&self, continuation: &SequenceNumber) -> Option<Vec<ChildShard>> {
        let iterator = self
            .backend
            .get_shard_iterator(
                &self.stream,
                &self.shard_id,
                StartingPosition::AfterSequenceNumber(continuation.clone()),
            )
            .await
            .map_err(|error| debug!(shard = %self.shard_id, %error, "shard-end probe failed"))
            .ok()?;
        let called = Instant::now();
        let page = self.backend.get_records(&iterator, 1).await;
        self.metrics.get_records_calls.increment(1);
        self.metrics
            .get_records_duration
            .record(called.elapsed().as_secs_f64());
        let page = page
            .map_err(|error| {
                self.metrics.read_failed(&error);
                debug!(shard = %self.shard_id, %error, "shard-end probe failed")
            })
            .ok()?;
        (page.records.is_empty() && page.next_shard_iterator.is_none()).then_some(page.child_shards)
    }

    async fn shard_end(&self, child_shards: Vec<ChildShard>) -> Ended {
        debug!(shard = %self.shard_id, children = child_shards.len(), "shard end reached");
        let _ = self
            .events
            .send(RetrievalEvent::ShardEnd { child_shards })
            .await;
        Ended::ShardEnd
    }

    /// What to do after `error` from the subscription through consumer `arn`.
    async fn on_error(
        &mut self,
        error: BackendError,
        arn: &str,
        backoff: &mut crate::retry::Schedule,
    ) -> Ended {
        match error {
            BackendError::ResourceNotFound(message) => {
                // The consumer or the shard, the answer does not say which. Whether a consumer of
                // that name exists proves nothing (it may be a new registration with a new ARN),
                // so ask about the shard itself, as polling would: only `ResourceNotFound` for it
                // ends it. Anything else: look the consumer up again and re-subscribe.
                self.config.forget_consumer(arn).await;
                match self
                    .backend
                    .get_shard_iterator(&self.stream, &self.shard_id, StartingPosition::TrimHorizon)
                    .await
                {
                    Err(BackendError::ResourceNotFound(shard_message)) => {
                        warn!(shard = %self.shard_id, %message, %shard_message, "shard not found; treating it as ended");
                        self.shard_end(Vec::new()).await
                    }
                    Ok(_) => {
                        warn!(shard = %self.shard_id, %message, "subscription not found but the shard exists: the stream consumer was deregistered or replaced; subscribing again");
                        Ended::Resubscribe {
                            delay: backoff.next(),
                        }
                    }
                    Err(error) => {
                        warn!(shard = %self.shard_id, %message, %error, "subscription not found and the shard could not be checked; subscribing again");
                        Ended::Resubscribe {
                            delay: backoff.next(),
                        }
                    }
                }
            }
            BackendError::ResourceInUse(message) => {
                debug!(shard = %self.shard_id, %message, "subscription still held elsewhere; backing off");
                Ended::Resubscribe {
                    delay: backoff.next(),
                }
            }
            error => {
                if self.give_up.failed(error.is_permanent()) {
                    warn!(shard = %self.shard_id, %error, "subscription refused; giving up");
                    let _ = self.events.send(RetrievalEvent::Failed(error)).await;
                    return Ended::Closed;
                }
                if error.is_throttling() {
                    debug!(shard = %self.shard_id, %error, "throttled; backing off");
                } else {
                    warn!(shard = %self.shard_id, %error, "subscription failed; backing off");
                }
                Ended::Resubscribe {
                    delay: backoff.next().map(|d| self.give_up.cap(d)),
                }
            }
        }
    }

    /// Sleeps unless the receiver goes away (`true`).
    async fn pause(&self, delay: Option<Duration>) -> bool {
        let delay = delay.unwrap_or(self.config.error_backoff.max);
        tokio::select! {
            biased;
            _ = self.events.closed() => true,
            _ = tokio::time::sleep(delay) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::{KinesisModel, ModelConfig};

    const STREAM: &str = "s";

    fn task(
        model: Arc<KinesisModel>,
        shard_id: &str,
        start: StartingPosition,
    ) -> (FanOutTask, mpsc::Receiver<RetrievalEvent>) {
        let (events, rx) = mpsc::channel(16);
        let config = FanOutConfig::default();
        let task = FanOutTask {
            backend: model,
            stream: STREAM.to_owned(),
            consumer_name: "app".to_owned(),
            shard_id: shard_id.to_owned(),
            start,
            budget: Arc::new(PrefetchBudget::new(
                config.max_prefetch_records,
                config.max_prefetch_bytes,
            )),
            config,
            events,
            metrics: crate::metrics::ShardMetrics::noop().retrieval,
            give_up: GiveUp::after(Duration::from_secs(5)),
        };
        (task, rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_the_service_no_longer_knows_ends() {
        let model =
            KinesisModel::new(ModelConfig::new().with_consumer_registration_time(Duration::ZERO));
        model.create_stream(STREAM, 1).unwrap();
        let parent = model.shards(STREAM).unwrap().remove(0);
        let range = parent.hash_key_range;
        let mid = range.start / 2 + range.end / 2;
        model
            .split_shard(STREAM, &parent.shard_id, &mid.to_string())
            .unwrap();
        // Closed longer ago than the retention period: the shard is gone (ResourceNotFound).
        tokio::time::sleep(Duration::from_secs(25 * 3600)).await;
        let (task, mut rx) = task(model, &parent.shard_id, StartingPosition::TrimHorizon);
        let run = tokio::spawn(task.run());
        let first = tokio::time::timeout(Duration::from_secs(3600), rx.recv()).await;
        match first {
            Ok(Some(RetrievalEvent::ShardEnd { child_shards })) => {
                assert!(child_shards.is_empty())
            }
            other => panic!("expected the shard's end, got {other:?}"),
        }
        run.await.unwrap();
    }
}
