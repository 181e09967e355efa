//! The Kinesis services tests run against, behind one small interface for the writes a test
//! needs: [`Target`] (create, put, split, merge), implemented by [`Kinesis`] (the in-memory
//! model, or a real Kinesis API server through the AWS backend, feature `aws`) and by any
//! third-party backend that wants to run the [`crate::conformance`] suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::backend::{BackendError, Shard, ShardFilter, StreamBackend, list_all_shards};
use kcl_core::model::{KinesisModel, ModelConfig};
use kcl_core::put::{PutRecordsEntry, PutRecordsResultEntry};

/// A Kinesis-like service: the backend to read through and the writes tests need.
///
/// Implement it for your own [`StreamBackend`] to run the conformance suite on it. Each method
/// waits until the stream is usable again (active after a create or a reshard).
#[async_trait]
pub trait Target: Send + Sync {
    /// The backend to read through.
    fn backend(&self) -> Arc<dyn StreamBackend>;

    /// Whether this is the in-memory model (where it differs from the service on purpose, the
    /// suite says so).
    fn is_model(&self) -> bool {
        false
    }

    /// Creates a stream of `shards` shards.
    async fn create_stream(&self, name: &str, shards: u32) -> Result<(), BackendError>;

    /// One `PutRecords` call.
    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<Vec<PutRecordsResultEntry>, BackendError>;

    /// Splits `shard` at hash key `key`.
    async fn split_shard(&self, stream: &str, shard: &str, key: u128) -> Result<(), BackendError>;

    /// Merges the adjacent shards `a` and `b`.
    async fn merge_shards(&self, stream: &str, a: &str, b: &str) -> Result<(), BackendError>;
}

/// What tests build from a [`Target`]'s primitives. Implemented for every target.
#[async_trait]
pub trait TargetExt: Target {
    /// Puts the entries (in order, retrying throttled ones one by one so order per shard
    /// holds); returns the results.
    ///
    /// # Panics
    ///
    /// If a put fails for another reason, or a record keeps being throttled (test code).
    async fn put(&self, stream: &str, entries: Vec<PutRecordsEntry>) -> Vec<PutRecordsResultEntry> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(500) {
            let results = self
                .put_records(stream, chunk.to_vec())
                .await
                .expect("PutRecords");
            for (entry, result) in chunk.iter().zip(results) {
                if result.is_success() {
                    out.push(result);
                    continue;
                }
                let mut stored = None;
                for _ in 0..100 {
                    let results = self
                        .put_records(stream, vec![entry.clone()])
                        .await
                        .expect("PutRecords");
                    if let Some(r) = results.into_iter().next()
                        && r.is_success()
                    {
                        stored = Some(r);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                out.push(stored.expect("a put kept being refused"));
            }
        }
        out
    }

    /// Puts `count` records over `keys` partition keys, payloads `"<key>:<n>"` numbered per key
    /// from `start`; returns them (key, data).
    async fn produce(
        &self,
        stream: &str,
        keys: usize,
        count: usize,
        start: usize,
    ) -> Vec<(String, Bytes)> {
        let produced: Vec<(String, Bytes)> = (start..start + count)
            .map(|i| {
                let key = format!("key-{}", i % keys.max(1));
                let data = Bytes::from(format!("{key}:{:08}", i / keys.max(1)));
                (key, data)
            })
            .collect();
        let entries = produced
            .iter()
            .map(|(k, d)| PutRecordsEntry::new(k.clone(), d.clone()))
            .collect();
        self.put(stream, entries).await;
        produced
    }

    /// The open shards in hash-key order.
    ///
    /// # Panics
    ///
    /// If listing fails (test code).
    async fn open_shards(&self, stream: &str) -> Vec<Shard> {
        let mut shards =
            list_all_shards(self.backend().as_ref(), stream, Some(ShardFilter::AtLatest))
                .await
                .expect("ListShards");
        shards.sort_by_key(|s| s.hash_key_range.start);
        shards
    }
}

impl<T: Target + ?Sized> TargetExt for T {}

static NAMES: AtomicU32 = AtomicU32::new(0);

/// A stream name unique to this process (a test server is shared by every test).
pub fn unique(prefix: &str) -> String {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// Retries `f` while it answers a throttling error (the model enforces 5 reads/s per shard).
pub async fn unthrottled<T, F, Fut>(mut f: F) -> Result<T, BackendError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackendError>>,
{
    loop {
        match f().await {
            Err(e) if e.is_throttling() => tokio::time::sleep(Duration::from_millis(200)).await,
            other => return other,
        }
    }
}

/// The in-memory model or a real server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Kinesis {
    /// The in-memory model.
    Model(Arc<KinesisModel>),
    /// A real Kinesis API through the AWS backend.
    #[cfg(feature = "aws")]
    Server(kcl_core::aws::KinesisBackend),
}

impl Kinesis {
    /// The model with the service's limits, consumers `ACTIVE` at once (as kinesis-local is
    /// configured by this project's test scripts).
    pub fn model() -> Self {
        Self::Model(KinesisModel::new(
            ModelConfig::new().with_consumer_registration_time(Duration::ZERO),
        ))
    }
}

#[cfg(feature = "aws")]
mod server {
    use aws_config::{BehaviorVersion, Region, SdkConfig};
    use kcl_core::aws::{KinesisBackend, KinesisBackendBuilder};

    use super::Kinesis;

    /// Why the server tests are ignored by default.
    pub const NEEDS_KINESIS: &str = "needs a Kinesis endpoint (AWS_ENDPOINT_URL_KINESIS)";

    /// The SDK configuration for the test server: `AWS_ENDPOINT_URL_KINESIS` (or
    /// `AWS_ENDPOINT_URL`), the region and credentials from the environment, else `us-east-1`
    /// and static test credentials (local servers accept any).
    ///
    /// # Panics
    ///
    /// If no endpoint is set.
    pub async fn server_config() -> SdkConfig {
        let endpoint = std::env::var("AWS_ENDPOINT_URL_KINESIS")
            .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
            .unwrap_or_else(|_| panic!("AWS_ENDPOINT_URL_KINESIS is not set: {NEEDS_KINESIS}"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(endpoint);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(Region::new("us-east-1"));
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_kinesis::config::Credentials::new(
                "test", "test", None, None, "static",
            ));
        }
        loader.load().await
    }

    /// A backend for the test server built with `builder`'s options.
    ///
    /// # Panics
    ///
    /// If the options are invalid.
    pub async fn server_backend(builder: KinesisBackendBuilder) -> KinesisBackend {
        builder
            .build(&server_config().await)
            .expect("valid backend options")
    }

    impl Kinesis {
        /// The test server with default backend options.
        pub async fn server() -> Self {
            Self::Server(server_backend(KinesisBackend::builder()).await)
        }
    }
}

#[cfg(feature = "aws")]
pub use server::{NEEDS_KINESIS, server_backend, server_config};

#[async_trait]
impl Target for Kinesis {
    fn backend(&self) -> Arc<dyn StreamBackend> {
        match self {
            Self::Model(m) => m.clone(),
            #[cfg(feature = "aws")]
            Self::Server(s) => Arc::new(s.clone()),
        }
    }

    fn is_model(&self) -> bool {
        matches!(self, Self::Model(_))
    }

    async fn create_stream(&self, name: &str, shards: u32) -> Result<(), BackendError> {
        match self {
            Self::Model(m) => m.create_stream(name, shards),
            #[cfg(feature = "aws")]
            Self::Server(s) => s.create_stream(name, shards, Duration::from_secs(30)).await,
        }
    }

    async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<Vec<PutRecordsResultEntry>, BackendError> {
        let output = match self {
            Self::Model(m) => m.put_records(stream, entries)?,
            #[cfg(feature = "aws")]
            Self::Server(s) => s.put_records(stream, entries).await?,
        };
        Ok(output.records)
    }

    async fn split_shard(&self, stream: &str, shard: &str, key: u128) -> Result<(), BackendError> {
        match self {
            Self::Model(m) => m.split_shard(stream, shard, &key.to_string()).map(|_| ()),
            #[cfg(feature = "aws")]
            Self::Server(s) => {
                s.split_shard(stream, shard, &key.to_string()).await?;
                s.wait_until_active(stream, Duration::from_secs(30)).await
            }
        }
    }

    async fn merge_shards(&self, stream: &str, a: &str, b: &str) -> Result<(), BackendError> {
        match self {
            Self::Model(m) => m.merge_shards(stream, a, b).map(|_| ()),
            #[cfg(feature = "aws")]
            Self::Server(s) => {
                s.merge_shards(stream, a, b).await?;
                s.wait_until_active(stream, Duration::from_secs(30)).await
            }
        }
    }
}
