//! Forwarding wrappers with hooks: put a [`HookedTable`] around a [`LeaseTable`] or a
//! [`HookedBackend`] around a [`StreamBackend`] and decide, call by call, what the worker gets.
//!
//! Every call reaches the hooks before the inner part ([`TableHooks::before`] can fail it,
//! delay it or let it through and lose its reply afterwards) and after it
//! ([`TableHooks::after`]). The wrappers forward *every* trait method, enhanced fan-out
//! included ([`StreamBackend::fan_out`] is passed on when the inner backend offers it), so a
//! worker behind them behaves exactly as behind the inner part when the hooks do nothing.
//!
//! ```
//! use std::sync::Arc;
//! use kcl_core::lease::{InMemoryLeaseTable, LeaseError};
//! use kcl_testkit::hooks::{Before, HookedTable, TableCall};
//!
//! // Every write to a shard lease is throttled; heartbeats and reads go through.
//! let table = HookedTable::new(
//!     Arc::new(InMemoryLeaseTable::new()),
//!     kcl_testkit::hooks::table_fn(|call: &TableCall<'_>| match call {
//!         TableCall::Update { key, .. } if key.starts_with("shardId-") => {
//!             Before::Fail(LeaseError::Throttled("injected".into()))
//!         }
//!         _ => Before::Proceed,
//!     }),
//! );
//! # let _ = table;
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kcl_core::backend::{
    BackendError, FanOut, GetRecordsOutput, ListShardsPage, ListShardsRequest, ShardIterator,
    StartingPosition, StreamBackend, StreamConsumer, StreamDescription, Subscription,
};
use kcl_core::lease::{Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate};

/// One call through a [`HookedTable`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum TableCall<'a> {
    /// `create_if_absent`.
    CreateIfAbsent(&'a Lease),
    /// `list`.
    List,
    /// `list_workers`: the heartbeat rows alone, read with this consistency.
    ListWorkers(Consistency),
    /// `get`.
    Get(&'a str),
    /// `update`.
    Update {
        /// The lease key.
        key: &'a str,
        /// The condition.
        expect: &'a Expectation,
        /// The change.
        update: &'a LeaseUpdate,
    },
    /// `delete`.
    Delete {
        /// The lease key.
        key: &'a str,
        /// The condition.
        expect: &'a Expectation,
    },
}

impl TableCall<'_> {
    /// The operation's name: `create`, `list`, `list_workers`, `get`, `update` or `delete`.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::CreateIfAbsent(_) => "create",
            Self::List => "list",
            Self::ListWorkers(_) => "list_workers",
            Self::Get(_) => "get",
            Self::Update { .. } => "update",
            Self::Delete { .. } => "delete",
        }
    }

    /// Whether the call writes.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Self::CreateIfAbsent(_) | Self::Update { .. } | Self::Delete { .. }
        )
    }

    /// The key the call is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::CreateIfAbsent(lease) => Some(&lease.key),
            Self::Get(key) | Self::Update { key, .. } | Self::Delete { key, .. } => Some(key),
            Self::List | Self::ListWorkers(_) => None,
        }
    }
}

/// What a hook decides before a lease-table call.
#[derive(Debug)]
#[non_exhaustive]
pub enum Before {
    /// Let it through.
    Proceed,
    /// Answer this error instead; the inner table is not called.
    Fail(LeaseError),
    /// Let it through, wait this long first.
    Delay(Duration),
    /// Let it through, but answer this error instead of its reply (a write that landed and
    /// whose reply was lost, say [`LeaseError::Unknown`]).
    LoseReply(LeaseError),
}

/// Decides, call by call, what a [`HookedTable`] does.
#[async_trait]
pub trait TableHooks: Send + Sync + fmt::Debug {
    /// Before the call reaches the inner table (may wait: a paused worker's calls wait here).
    async fn before(&self, call: &TableCall<'_>) -> Before {
        let _ = call;
        Before::Proceed
    }

    /// After the inner table answered, before the caller gets the answer (may wait too: a
    /// paused worker gets its replies only when resumed). `outcome` says how it went: the
    /// error the caller gets, if any (a [`Before::Fail`] error too).
    async fn after(&self, call: &TableCall<'_>, outcome: Result<(), &LeaseError>) {
        let _ = (call, outcome);
    }
}

/// Hooks from a function deciding each call ([`table_fn`]).
pub struct TableFn<F>(F);

impl<F> fmt::Debug for TableFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TableFn")
    }
}

/// Table hooks from `decide`, called before every call.
pub fn table_fn<F>(decide: F) -> TableFn<F>
where
    F: Fn(&TableCall<'_>) -> Before + Send + Sync,
{
    TableFn(decide)
}

#[async_trait]
impl<F> TableHooks for TableFn<F>
where
    F: Fn(&TableCall<'_>) -> Before + Send + Sync,
{
    async fn before(&self, call: &TableCall<'_>) -> Before {
        (self.0)(call)
    }
}

#[async_trait]
impl<H: TableHooks + ?Sized> TableHooks for Arc<H> {
    async fn before(&self, call: &TableCall<'_>) -> Before {
        (**self).before(call).await
    }

    async fn after(&self, call: &TableCall<'_>, outcome: Result<(), &LeaseError>) {
        (**self).after(call, outcome).await
    }
}

/// A [`LeaseTable`] forwarding to another through [`TableHooks`]. See the [module docs](self).
#[derive(Debug)]
pub struct HookedTable<H> {
    inner: Arc<dyn LeaseTable>,
    hooks: H,
}

impl<H: TableHooks> HookedTable<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LeaseTable>, hooks: H) -> Self {
        Self { inner, hooks }
    }

    /// The wrapped table.
    pub fn inner(&self) -> &Arc<dyn LeaseTable> {
        &self.inner
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    async fn call<T: Send>(
        &self,
        call: TableCall<'_>,
        forward: impl std::future::Future<Output = Result<T, LeaseError>> + Send,
    ) -> Result<T, LeaseError> {
        let lose = match self.hooks.before(&call).await {
            Before::Proceed => None,
            Before::Fail(error) => {
                self.hooks.after(&call, Err(&error)).await;
                return Err(error);
            }
            Before::Delay(delay) => {
                tokio::time::sleep(delay).await;
                None
            }
            Before::LoseReply(error) => Some(error),
        };
        let result = forward.await;
        self.hooks.after(&call, result.as_ref().map(|_| ())).await;
        match lose {
            Some(error) => Err(error),
            None => result,
        }
    }
}

#[async_trait]
impl<H: TableHooks> LeaseTable for HookedTable<H> {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.call(
            TableCall::CreateIfAbsent(lease),
            self.inner.create_if_absent(lease),
        )
        .await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.call(TableCall::List, self.inner.list()).await
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        self.call(
            TableCall::ListWorkers(consistency),
            self.inner.list_workers(consistency),
        )
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.call(TableCall::Get(key), self.inner.get(key)).await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        self.call(
            TableCall::Update {
                key,
                expect,
                update,
            },
            self.inner.update(key, expect, update),
        )
        .await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.call(
            TableCall::Delete { key, expect },
            self.inner.delete(key, expect),
        )
        .await
    }

    fn application(&self) -> Option<&str> {
        self.inner.application()
    }
}

/// One call through a [`HookedBackend`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum BackendCall<'a> {
    /// `DescribeStreamSummary`.
    DescribeStream(&'a str),
    /// `ListShards`.
    ListShards(&'a ListShardsRequest),
    /// `GetShardIterator`.
    GetShardIterator {
        /// The stream.
        stream: &'a str,
        /// The shard.
        shard_id: &'a str,
        /// Where.
        position: &'a StartingPosition,
    },
    /// `GetRecords`.
    GetRecords {
        /// The iterator.
        iterator: &'a ShardIterator,
        /// The record limit.
        limit: u32,
    },
    /// `RegisterStreamConsumer`.
    RegisterStreamConsumer {
        /// The stream.
        stream: &'a str,
        /// The consumer's name.
        consumer_name: &'a str,
    },
    /// `DescribeStreamConsumer`.
    DescribeStreamConsumer {
        /// The stream.
        stream: &'a str,
        /// The consumer's name.
        consumer_name: &'a str,
    },
    /// `SubscribeToShard`.
    SubscribeToShard {
        /// The consumer's ARN.
        consumer_arn: &'a str,
        /// The shard.
        shard_id: &'a str,
        /// Where.
        position: &'a StartingPosition,
    },
}

impl BackendCall<'_> {
    /// The API operation's name, e.g. `GetRecords`.
    pub fn operation(&self) -> &'static str {
        match self {
            Self::DescribeStream(_) => "DescribeStreamSummary",
            Self::ListShards(_) => "ListShards",
            Self::GetShardIterator { .. } => "GetShardIterator",
            Self::GetRecords { .. } => "GetRecords",
            Self::RegisterStreamConsumer { .. } => "RegisterStreamConsumer",
            Self::DescribeStreamConsumer { .. } => "DescribeStreamConsumer",
            Self::SubscribeToShard { .. } => "SubscribeToShard",
        }
    }
}

/// Decides, call by call, what a [`HookedBackend`] does.
#[async_trait]
pub trait BackendHooks: Send + Sync + fmt::Debug {
    /// Before the call reaches the inner backend: an error answers instead (may wait: a paused
    /// worker's calls wait here).
    async fn before(&self, call: &BackendCall<'_>) -> Result<(), BackendError> {
        let _ = call;
        Ok(())
    }

    /// After the inner backend answered, before the caller gets the answer; `outcome` is the
    /// error the caller gets, if any (one from [`before`](Self::before) too).
    async fn after(&self, call: &BackendCall<'_>, outcome: Result<(), &BackendError>) {
        let _ = (call, outcome);
    }
}

/// Hooks from a function deciding each call ([`backend_fn`]).
pub struct BackendFn<F>(F);

impl<F> fmt::Debug for BackendFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BackendFn")
    }
}

/// Backend hooks from `decide`, called before every call.
pub fn backend_fn<F>(decide: F) -> BackendFn<F>
where
    F: Fn(&BackendCall<'_>) -> Result<(), BackendError> + Send + Sync,
{
    BackendFn(decide)
}

#[async_trait]
impl<F> BackendHooks for BackendFn<F>
where
    F: Fn(&BackendCall<'_>) -> Result<(), BackendError> + Send + Sync,
{
    async fn before(&self, call: &BackendCall<'_>) -> Result<(), BackendError> {
        (self.0)(call)
    }
}

#[async_trait]
impl<H: BackendHooks + ?Sized> BackendHooks for Arc<H> {
    async fn before(&self, call: &BackendCall<'_>) -> Result<(), BackendError> {
        (**self).before(call).await
    }

    async fn after(&self, call: &BackendCall<'_>, outcome: Result<(), &BackendError>) {
        (**self).after(call, outcome).await
    }
}

/// A [`StreamBackend`] forwarding to another through [`BackendHooks`]; it offers
/// [`FanOut`] exactly when the inner backend does, unless built
/// [`without_fan_out`](Self::without_fan_out). See the [module docs](self).
#[derive(Debug)]
pub struct HookedBackend<H> {
    inner: Arc<dyn StreamBackend>,
    hooks: H,
    fan_out: bool,
}

impl<H: BackendHooks> HookedBackend<H> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn StreamBackend>, hooks: H) -> Self {
        Self {
            inner,
            hooks,
            fan_out: true,
        }
    }

    /// Hides the inner backend's [`FanOut`]: a polling-only backend, as a store without
    /// enhanced fan-out would be (the worker then refuses `Retrieval::FanOut` when built).
    pub fn without_fan_out(mut self) -> Self {
        self.fan_out = false;
        self
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn StreamBackend> {
        &self.inner
    }

    /// The hooks.
    pub fn hooks(&self) -> &H {
        &self.hooks
    }

    async fn call<T: Send>(
        &self,
        call: BackendCall<'_>,
        forward: impl std::future::Future<Output = Result<T, BackendError>> + Send,
    ) -> Result<T, BackendError> {
        if let Err(error) = self.hooks.before(&call).await {
            self.hooks.after(&call, Err(&error)).await;
            return Err(error);
        }
        let result = forward.await;
        self.hooks.after(&call, result.as_ref().map(|_| ())).await;
        result
    }

    fn inner_fan_out(&self) -> Result<&dyn FanOut, BackendError> {
        self.inner
            .fan_out()
            .ok_or(BackendError::Unsupported("SubscribeToShard"))
    }
}

#[async_trait]
impl<H: BackendHooks> StreamBackend for HookedBackend<H> {
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError> {
        self.call(
            BackendCall::DescribeStream(stream),
            self.inner.describe_stream(stream),
        )
        .await
    }

    async fn list_shards(
        &self,
        request: ListShardsRequest,
    ) -> Result<ListShardsPage, BackendError> {
        let forward = self.inner.list_shards(request.clone());
        self.call(BackendCall::ListShards(&request), forward).await
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        let forward = self
            .inner
            .get_shard_iterator(stream, shard_id, position.clone());
        self.call(
            BackendCall::GetShardIterator {
                stream,
                shard_id,
                position: &position,
            },
            forward,
        )
        .await
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.call(
            BackendCall::GetRecords { iterator, limit },
            self.inner.get_records(iterator, limit),
        )
        .await
    }

    fn fan_out(&self) -> Option<&dyn FanOut> {
        if !self.fan_out {
            return None;
        }
        self.inner.fan_out().map(|_| self as &dyn FanOut)
    }
}

#[async_trait]
impl<H: BackendHooks> FanOut for HookedBackend<H> {
    async fn register_stream_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let fan_out = self.inner_fan_out()?;
        self.call(
            BackendCall::RegisterStreamConsumer {
                stream,
                consumer_name,
            },
            fan_out.register_stream_consumer(stream, consumer_name),
        )
        .await
    }

    async fn describe_stream_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let fan_out = self.inner_fan_out()?;
        self.call(
            BackendCall::DescribeStreamConsumer {
                stream,
                consumer_name,
            },
            fan_out.describe_stream_consumer(stream, consumer_name),
        )
        .await
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<Subscription, BackendError> {
        let fan_out = self.inner_fan_out()?;
        let forward = fan_out.subscribe_to_shard(consumer_arn, shard_id, position.clone());
        self.call(
            BackendCall::SubscribeToShard {
                consumer_arn,
                shard_id,
                position: &position,
            },
            forward,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use kcl_core::lease::InMemoryLeaseTable;
    use kcl_core::model::{KinesisModel, ModelConfig};
    use kcl_core::record::ExtendedSequenceNumber;

    use super::*;

    #[tokio::test]
    async fn table_hooks_fail_delay_and_lose_replies() {
        let inner: Arc<dyn LeaseTable> = Arc::new(InMemoryLeaseTable::new());
        let lease = Lease::new("shardId-0", ExtendedSequenceNumber::TrimHorizon);
        let table = HookedTable::new(
            inner.clone(),
            table_fn(|call| match call {
                TableCall::CreateIfAbsent(_) => {
                    Before::LoseReply(LeaseError::Unknown("reply lost".into()))
                }
                TableCall::Get(_) => Before::Fail(LeaseError::Unavailable("down".into())),
                _ => Before::Proceed,
            }),
        );
        // The create landed, the caller does not know.
        assert!(matches!(
            table.create_if_absent(&lease).await,
            Err(LeaseError::Unknown(_))
        ));
        assert!(inner.get("shardId-0").await.unwrap().is_some());
        assert!(matches!(
            table.get("shardId-0").await,
            Err(LeaseError::Unavailable(_))
        ));
        assert_eq!(table.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_hooked_backend_passes_fan_out_on_and_counts_calls() {
        #[derive(Debug, Default)]
        struct Count(AtomicU32);
        #[async_trait]
        impl BackendHooks for Count {
            async fn after(&self, _: &BackendCall<'_>, _: Result<(), &BackendError>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let model = KinesisModel::new(ModelConfig::new());
        model.create_stream("s", 1).unwrap();
        let hooked = HookedBackend::new(model, Count::default());
        assert!(
            hooked.fan_out().is_some(),
            "the model offers fan-out: so does its wrapper"
        );
        hooked.describe_stream("s").await.unwrap();
        hooked
            .fan_out()
            .unwrap()
            .register_stream_consumer("s", "c")
            .await
            .unwrap();
        assert_eq!(hooked.hooks().0.load(Ordering::SeqCst), 2);
    }
}
