//! The Kinesis services tests run against: the in-memory model or a real Kinesis API server
//! (kinesis-local, started by `scripts/test.sh`), behind one small interface for the writes a
//! test needs (create, put, reshard).
//!
//! The server is found through `AWS_ENDPOINT_URL_KINESIS`; region and credentials come from the
//! standard environment, else `us-east-1` and static test credentials (local servers accept any).
//! Server tests are `#[ignore]`d; when asked to run without a server they fail and say so.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use bytes::Bytes;
use kcl_core::aws::{KinesisBackend, KinesisBackendBuilder};
use kcl_core::backend::{BackendError, StreamBackend};
use kcl_core::model::{KinesisModel, ModelConfig, PutRecordsEntry, PutRecordsResultEntry};

/// Why the server tests are ignored by default.
pub const NEEDS_KINESIS: &str = "needs a Kinesis endpoint: run scripts/test.sh";

/// A Kinesis-like service with the writes tests need.
#[derive(Clone, Debug)]
pub enum Kinesis {
    /// The in-memory model.
    Model(Arc<KinesisModel>),
    /// A real server through the AWS backend.
    Server(KinesisBackend),
}

/// The SDK configuration for the test server (panics when there is none).
pub async fn server_config() -> SdkConfig {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_KINESIS")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| {
            panic!("AWS_ENDPOINT_URL_KINESIS is not set: {NEEDS_KINESIS} (it starts kinesis-local)")
        });
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(endpoint);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
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

/// A backend builder for the test server, with the production defaults.
pub async fn server_backend(builder: KinesisBackendBuilder) -> KinesisBackend {
    builder
        .build(&server_config().await)
        .expect("valid backend options")
}

static NAMES: AtomicU32 = AtomicU32::new(0);

/// A stream name unique to this test process (the server is shared by every test).
pub fn unique(prefix: &str) -> String {
    let n = NAMES.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

impl Kinesis {
    /// The model with the service's limits, consumers `ACTIVE` at once (as kinesis-local is
    /// configured by `scripts/servers/kinesis.sh`).
    pub fn model() -> Self {
        Self::Model(KinesisModel::new(
            ModelConfig::new().with_consumer_registration_time(Duration::ZERO),
        ))
    }

    /// The test server with default backend options.
    pub async fn server() -> Self {
        Self::Server(server_backend(KinesisBackend::builder()).await)
    }

    /// The backend to read through.
    pub fn backend(&self) -> Arc<dyn StreamBackend> {
        match self {
            Self::Model(m) => m.clone(),
            Self::Server(s) => Arc::new(s.clone()),
        }
    }

    /// Whether this is the model.
    pub fn is_model(&self) -> bool {
        matches!(self, Self::Model(_))
    }

    /// Creates a stream and waits until it is active.
    pub async fn create_stream(&self, name: &str, shards: u32) {
        match self {
            Self::Model(m) => m.create_stream(name, shards).unwrap(),
            Self::Server(s) => s
                .create_stream(name, shards, Duration::from_secs(30))
                .await
                .unwrap(),
        }
    }

    /// Puts the entries (in order, retrying throttled ones one by one so order per shard
    /// holds); returns the results.
    pub async fn put(
        &self,
        stream: &str,
        entries: Vec<PutRecordsEntry>,
    ) -> Vec<PutRecordsResultEntry> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(500) {
            let result = match self {
                Self::Model(m) => m.put_records(stream, chunk.to_vec()).unwrap(),
                Self::Server(s) => s.put_records(stream, chunk.to_vec()).await.unwrap(),
            };
            for (entry, result) in chunk.iter().zip(result.records) {
                if result.is_success() {
                    out.push(result);
                } else {
                    out.push(self.put_one(stream, entry.clone()).await);
                }
            }
        }
        out
    }

    async fn put_one(&self, stream: &str, entry: PutRecordsEntry) -> PutRecordsResultEntry {
        for _ in 0..100 {
            let result = match self {
                Self::Model(m) => m.put_records(stream, vec![entry.clone()]).unwrap(),
                Self::Server(s) => s.put_records(stream, vec![entry.clone()]).await.unwrap(),
            };
            if let Some(r) = result.records.into_iter().next()
                && r.is_success()
            {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("put kept failing");
    }

    /// Puts `count` records over `keys` partition keys, payloads `"<key>:<n>"` numbered per key
    /// from `start`.
    pub async fn produce(
        &self,
        stream: &str,
        keys: usize,
        count: usize,
        start: usize,
    ) -> Vec<(String, Bytes)> {
        let produced: Vec<(String, Bytes)> = (start..start + count)
            .map(|i| {
                let key = format!("key-{}", i % keys);
                let data = Bytes::from(format!("{key}:{:08}", i / keys));
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

    /// Splits `shard` at `key` and waits until the stream is active again.
    pub async fn split(&self, stream: &str, shard: &str, key: u128) {
        match self {
            Self::Model(m) => {
                m.split_shard(stream, shard, &key.to_string()).unwrap();
            }
            Self::Server(s) => {
                s.split_shard(stream, shard, &key.to_string())
                    .await
                    .unwrap();
                s.wait_until_active(stream, Duration::from_secs(30))
                    .await
                    .unwrap();
            }
        }
    }

    /// Merges two adjacent shards and waits until the stream is active again.
    pub async fn merge(&self, stream: &str, a: &str, b: &str) {
        match self {
            Self::Model(m) => {
                m.merge_shards(stream, a, b).unwrap();
            }
            Self::Server(s) => {
                s.merge_shards(stream, a, b).await.unwrap();
                s.wait_until_active(stream, Duration::from_secs(30))
                    .await
                    .unwrap();
            }
        }
    }

    /// The open shards' ids in hash-key order.
    pub async fn open_shards(&self, stream: &str) -> Vec<kcl_core::backend::Shard> {
        let mut shards = kcl_core::backend::list_all_shards(
            self.backend().as_ref(),
            stream,
            Some(kcl_core::backend::ShardFilter::AtLatest),
        )
        .await
        .unwrap();
        shards.sort_by_key(|s| s.hash_key_range.start);
        shards
    }
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
