//! The AWS backend: [`StreamBackend`] on `aws-sdk-kinesis` (cargo feature `aws`).
//!
//! [`KinesisBackend`] is configured from the standard AWS chain (region, credentials,
//! `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL`, profiles, instance roles):
//!
//! ```no_run
//! # async fn demo() {
//! use kcl_core::aws::KinesisBackend;
//! let kinesis = KinesisBackend::from_env().await;
//! // Or with options, from an SdkConfig you loaded:
//! let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let kinesis = KinesisBackend::builder()
//!     .connect_timeout(std::time::Duration::from_secs(2))
//!     .build(&sdk)
//!     .expect("valid options");
//! # }
//! ```
//!
//! # What it does
//!
//! * Every call of the trait maps to one API call: `DescribeStreamSummary`, `ListShards` (with
//!   pagination and `ShardFilter`; a `NextToken` request carries nothing else, as the API
//!   requires), `GetShardIterator` (every iterator type), `GetRecords`, `RegisterStreamConsumer`,
//!   `DescribeStreamConsumer` and `SubscribeToShard`. The retry and recovery logic (throttling
//!   backoff, expired iterators, ResourceNotFound as shard end, re-subscription) lives once above
//!   the trait in [`crate::retrieval`]; this adapter only translates.
//! * Errors keep the service's meaning ([`BackendError`] variants by error code); timeouts,
//!   dropped connections and 5xx answers are `Transient`; missing credentials or permissions are
//!   `AccessDenied`.
//! * `GetRecords` and `SubscribeToShard` are sent without SDK retries: the retrieval loop
//!   retries them on the crate's shared backoff schedules and sees every throttle. Control-plane
//!   calls keep the SDK's standard retries (3 attempts).
//! * Timeouts (the SDK has none by default for reads): connect 3 s, time to the first response
//!   byte 10 s, 30 s per attempt of an ordinary call. A `SubscribeToShard` stream has no overall
//!   deadline (it lasts about five minutes); fan-out retrieval restarts one that stays silent.
//!
//! # HTTP/2
//!
//! `SubscribeToShard` needs HTTP/2 against AWS. The HTTP client is built here explicitly
//! (`aws-smithy-http-client`, rustls with aws-lc): it offers `h2` and `http/1.1` by ALPN over TLS
//! and uses HTTP/2 whenever the server picks `h2`, as AWS does. Plain `http://` endpoints (local
//! emulators) get HTTP/1.1. The test `the_client_negotiates_http2` in
//! `kcl-core/tests/aws_http2.rs` checks it against a TLS server that offers both.
//!
//! ## One connection per subscription
//!
//! HTTP/2 flow control gives a response only as much data as its receive windows allow, and a
//! window is given back only when the body is read. hyper's client (under the SDK) opens 2 MiB
//! per stream and 5 MiB per connection, and the SDK's HTTP client exposes no setting for either.
//! Fan-out retrieval deliberately stops reading a subscription whose shard is backpressured (the
//! processor is behind), so if subscriptions shared one pooled connection, three backpressured
//! shards would hold its 5 MiB and every other subscription on it would starve (silent until
//! restarted, on the same stalled connection).
//!
//! So every `SubscribeToShard` gets an HTTP client of its own (same TLS settings and timeouts,
//! a fresh connection pool): one connection per subscription, whose windows only that
//! subscription can fill; the connection closes when the subscription ends. Costs: one TCP and
//! TLS handshake per subscription (about every five minutes per shard) and one connection per
//! leased shard. Control-plane calls and `GetRecords` share the backend's pooled client. This
//! holds for backends from [`KinesisBackendBuilder::build`] and [`KinesisBackend::from_env`];
//! [`KinesisBackendBuilder::connection_per_subscription`] turns it off, and a backend wrapping
//! your own client ([`KinesisBackend::from_client`]) sends subscriptions through that client's
//! pool, where the limit above applies. The test `unread_subscriptions_do_not_starve_the_others`
//! in `kcl-core/tests/aws_http2.rs` checks it against a local HTTP/2 server.
//!
//! # Writing
//!
//! The inherent methods [`KinesisBackend::create_stream`], [`KinesisBackend::put_records`],
//! [`KinesisBackend::split_shard`], [`KinesisBackend::merge_shards`] and
//! [`KinesisBackend::update_shard_count`] exist for tests, examples and tools; consumers need
//! none of them.

mod convert;
mod error;

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::timeout::TimeoutConfig;
use aws_sdk_kinesis::types as sdk;
use aws_smithy_http_client::tls;
use futures::StreamExt;

use crate::backend::{
    BackendError, GetRecordsOutput, ListShardsPage, ListShardsRequest, ShardIterator,
    StartingPosition, StreamBackend, StreamConsumer, StreamDescription, StreamStatus,
    SubscribeToShardEvent, Subscription,
};
use crate::model::{PutRecordsEntry, PutRecordsOutput, PutRecordsResultEntry};
use crate::record::SequenceNumber;

/// A function adjusting the SDK client configuration (see [`KinesisBackendBuilder::customize`]).
type Customize =
    Box<dyn FnOnce(aws_sdk_kinesis::config::Builder) -> aws_sdk_kinesis::config::Builder + Send>;

/// Why a [`KinesisBackendBuilder`] could not build its HTTP client or backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A certificate given to [`KinesisBackendBuilder::trust_pem_certificate`] cannot be
    /// trusted.
    #[error("trusted certificate #{index} (counting from 0, in the order given): {reason}")]
    InvalidCertificate {
        /// Its position among the certificates given, from 0.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The SDK's HTTP client refused the TLS settings.
    #[error("TLS settings: {0}")]
    Tls(String),
}

/// Checks `pem` (certificate `index` of the builder) as the SDK's HTTP client reads it later,
/// where a bad certificate is a panic inside a request: PEM sections parsed, at least one
/// `CERTIFICATE`, each a usable X.509 trust anchor.
fn check_pem_certificate(index: usize, pem: &[u8]) -> Result<(), BuildError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let invalid = |reason: String| BuildError::InvalidCertificate { index, reason };
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("malformed PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            "no \"-----BEGIN CERTIFICATE-----\" section in the PEM data".to_owned(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (n, certificate) in certificates.into_iter().enumerate() {
        roots.add(certificate).map_err(|e| {
            invalid(format!(
                "certificate {} of the PEM data is not a usable X.509 certificate: {e}",
                n + 1
            ))
        })?;
    }
    Ok(())
}

/// Options of a [`KinesisBackend`]. Start with [`KinesisBackend::builder`].
pub struct KinesisBackendBuilder {
    connect_timeout: Duration,
    read_timeout: Duration,
    attempt_timeout: Duration,
    trusted_pem: Vec<Vec<u8>>,
    native_roots: bool,
    connection_per_subscription: bool,
    customize: Vec<Customize>,
}

impl fmt::Debug for KinesisBackendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisBackendBuilder")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("trusted_certificates", &self.trusted_pem.len())
            .field("native_roots", &self.native_roots)
            .field(
                "connection_per_subscription",
                &self.connection_per_subscription,
            )
            .finish_non_exhaustive()
    }
}

impl Default for KinesisBackendBuilder {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(30),
            trusted_pem: Vec::new(),
            native_roots: true,
            connection_per_subscription: true,
            customize: Vec::new(),
        }
    }
}

impl KinesisBackendBuilder {
    /// Time allowed to open a connection (default 3 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Time allowed from sending a request to the first byte of its response (default 10 s).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Time allowed for one attempt of an ordinary call, response included (default 30 s; not
    /// applied to the event stream of `SubscribeToShard`).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Trusts a PEM certificate (a private CA, or a test server's certificate) in addition to
    /// the platform's roots. Checked by [`Self::build`], which names the first bad one
    /// ([`BuildError::InvalidCertificate`]).
    pub fn trust_pem_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trusted_pem.push(pem.into());
        self
    }

    /// Whether the platform's root certificates are trusted (default `true`).
    pub fn native_roots(mut self, enabled: bool) -> Self {
        self.native_roots = enabled;
        self
    }

    /// Whether every `SubscribeToShard` gets an HTTP client, and so a connection, of its own
    /// (default `true`): unread (backpressured) subscriptions then cannot starve the others
    /// through a shared HTTP/2 connection window; see the [module docs](self). With `false`,
    /// subscriptions share the client's connection pool.
    pub fn connection_per_subscription(mut self, enabled: bool) -> Self {
        self.connection_per_subscription = enabled;
        self
    }

    /// Adjusts the SDK client configuration last (for example to add an interceptor); called
    /// in the order given. An HTTP client set here is used for every call except
    /// `SubscribeToShard` while [`Self::connection_per_subscription`] is on (the default): each
    /// subscription gets a client built from this builder's TLS settings.
    pub fn customize(
        mut self,
        f: impl FnOnce(aws_sdk_kinesis::config::Builder) -> aws_sdk_kinesis::config::Builder
        + Send
        + 'static,
    ) -> Self {
        self.customize.push(Box::new(f));
        self
    }

    /// The TLS settings: the platform's roots (unless turned off) and the certificates given,
    /// each checked.
    fn tls_context(&self) -> Result<tls::TlsContext, BuildError> {
        let mut trust = tls::TrustStore::default().with_native_roots(self.native_roots);
        for (index, pem) in self.trusted_pem.iter().enumerate() {
            check_pem_certificate(index, pem)?;
            trust = trust.with_pem_certificate(pem.clone());
        }
        tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| BuildError::Tls(e.to_string()))
    }

    /// The HTTP client this builder configures: rustls (aws-lc), ALPN `h2` and `http/1.1`.
    /// Fails if a certificate given to [`Self::trust_pem_certificate`] is unusable.
    pub fn http_client(
        &self,
    ) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, BuildError> {
        Ok(https_client(self.tls_context()?))
    }

    /// Builds the backend from a loaded [`SdkConfig`] (region, credentials, endpoint). Fails if
    /// a certificate given to [`Self::trust_pem_certificate`] is unusable.
    pub fn build(self, sdk: &SdkConfig) -> Result<KinesisBackend, BuildError> {
        let context = self.tls_context()?;
        Ok(self.assemble(sdk, context))
    }

    /// The backend with these options and checked TLS settings.
    fn assemble(self, sdk: &SdkConfig, context: tls::TlsContext) -> KinesisBackend {
        let subscription_tls = self.connection_per_subscription.then(|| context.clone());
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .operation_attempt_timeout(self.attempt_timeout)
            .build();
        let mut config = aws_sdk_kinesis::config::Builder::from(sdk)
            .http_client(https_client(context))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        for f in self.customize {
            config = f(config);
        }
        KinesisBackend {
            subscription_tls,
            ..KinesisBackend::from_client(Client::from_conf(config.build()))
        }
    }
}

/// An HTTP client on rustls (aws-lc) with these TLS settings, offering `h2` and `http/1.1`.
fn https_client(
    context: tls::TlsContext,
) -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https()
}

/// [`StreamBackend`] on the AWS SDK. See the [module docs](self).
#[derive(Clone)]
pub struct KinesisBackend {
    client: Client,
    arns: std::sync::Arc<Mutex<HashMap<String, String>>>,
    /// The TLS settings of the HTTP client each subscription gets (`None`: subscriptions use
    /// the client's own).
    subscription_tls: Option<tls::TlsContext>,
}

impl fmt::Debug for KinesisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KinesisBackend").finish_non_exhaustive()
    }
}

fn no_retries() -> aws_sdk_kinesis::config::Builder {
    aws_sdk_kinesis::config::Builder::default().retry_config(RetryConfig::disabled())
}

impl KinesisBackend {
    /// Options, starting from the defaults.
    pub fn builder() -> KinesisBackendBuilder {
        KinesisBackendBuilder::default()
    }

    /// A backend configured from the standard AWS environment, with default options.
    pub async fn from_env() -> Self {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        // The default options have no certificate to check: the SDK's default TLS settings
        // (the platform's roots) are what the builder would make.
        Self::builder().assemble(&sdk, tls::TlsContext::default())
    }

    /// Wraps a client you configured yourself (its timeouts, retries and HTTP client are used as
    /// they are).
    pub fn from_client(client: Client) -> Self {
        Self {
            client,
            arns: Default::default(),
            subscription_tls: None,
        }
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The ARN of `stream` (from `DescribeStreamSummary`, cached until a call about the stream
    /// or its consumers answers `ResourceNotFound`).
    pub async fn stream_arn(&self, stream: &str) -> Result<String, BackendError> {
        if let Some(arn) = self.cached_arn(stream) {
            return Ok(arn);
        }
        let description = self.describe_stream(stream).await?;
        Ok(description.arn)
    }

    /// Drops the cached ARN of `stream` (if it is still `arn`, when given): `ResourceNotFound`
    /// may mean the stream was deleted, and perhaps created again, by someone else, so the next
    /// call describes it again.
    fn forget_arn(&self, stream: &str, arn: Option<&str>) {
        let mut arns = self.arns.lock().unwrap_or_else(|p| p.into_inner());
        if arn.is_none_or(|arn| arns.get(stream).is_some_and(|cached| cached == arn)) {
            arns.remove(stream);
        }
    }

    /// Forgets the stream's cached ARN if `result` is `ResourceNotFound`.
    fn forget_arn_if_not_found<T>(
        &self,
        stream: &str,
        arn: Option<&str>,
        result: Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        if let Err(BackendError::ResourceNotFound(_)) = &result {
            self.forget_arn(stream, arn);
        }
        result
    }

    fn cached_arn(&self, stream: &str) -> Option<String> {
        self.arns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .cloned()
    }

    /// `CreateStream` (provisioned, `shards` shards) and waits until the stream is `ACTIVE`
    /// (polling `DescribeStreamSummary` every 100 ms, at most `wait`).
    pub async fn create_stream(
        &self,
        stream: &str,
        shards: u32,
        wait: Duration,
    ) -> Result<(), BackendError> {
        let count = i32::try_from(shards)
            .map_err(|_| BackendError::InvalidArgument(format!("{shards} shards").into()))?;
        self.client
            .create_stream()
            .stream_name(stream)
            .shard_count(count)
            .send()
            .await
            .map_err(|e| error::classify("CreateStream", e))?;
        self.wait_until_active(stream, wait).await
    }

    /// Polls `DescribeStreamSummary` every 100 ms until `stream` is `ACTIVE`, at most `wait`.
    pub async fn wait_until_active(
        &self,
        stream: &str,
        wait: Duration,
    ) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.describe_stream(stream).await {
                Ok(d) if d.status == StreamStatus::Active => return Ok(()),
                Ok(_) | Err(BackendError::ResourceNotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::Other(
                    format!("stream {stream:?} not ACTIVE within {wait:?}").into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `DeleteStream` (with its consumers).
    pub async fn delete_stream(&self, stream: &str) -> Result<(), BackendError> {
        self.client
            .delete_stream()
            .stream_name(stream)
            .enforce_consumer_deletion(true)
            .send()
            .await
            .map_err(|e| error::classify("DeleteStream", e))?;
        self.forget_arn(stream, None);
        Ok(())
    }

    /// `PutRecords`: up to 500 entries; per-entry failures are reported in the output, as the
    /// API does.
    pub async fn put_records(
        &self,
        stream: &str,
        entries: Vec<PutRecordsEntry>,
    ) -> Result<PutRecordsOutput, BackendError> {
        let mut request = self.client.put_records().stream_name(stream);
        for entry in entries {
            let e = sdk::PutRecordsRequestEntry::builder()
                .partition_key(entry.partition_key)
                .data(aws_smithy_types::Blob::new(entry.data.to_vec()))
                .set_explicit_hash_key(entry.explicit_hash_key)
                .build()
                .map_err(|e| BackendError::InvalidArgument(e.to_string().into()))?;
            request = request.records(e);
        }
        let out = request
            .send()
            .await
            .map_err(|e| error::classify("PutRecords", e))?;
        let mut records = Vec::with_capacity(out.records.len());
        let mut failed = 0u32;
        for r in out.records {
            match (r.sequence_number, r.shard_id, r.error_code) {
                (Some(seq), Some(shard_id), None) => records.push(PutRecordsResultEntry::Success {
                    shard_id,
                    sequence_number: convert::sequence(&seq)?,
                }),
                (_, _, code) => {
                    failed += 1;
                    records.push(PutRecordsResultEntry::Failed {
                        error_code: code.unwrap_or_else(|| "InternalFailure".to_owned()),
                        error_message: r.error_message.unwrap_or_default(),
                    });
                }
            }
        }
        Ok(PutRecordsOutput {
            failed_record_count: failed,
            records,
        })
    }

    /// `SplitShard` at `new_starting_hash_key` (decimal).
    pub async fn split_shard(
        &self,
        stream: &str,
        shard_id: &str,
        new_starting_hash_key: &str,
    ) -> Result<(), BackendError> {
        self.client
            .split_shard()
            .stream_name(stream)
            .shard_to_split(shard_id)
            .new_starting_hash_key(new_starting_hash_key)
            .send()
            .await
            .map_err(|e| error::classify("SplitShard", e))?;
        Ok(())
    }

    /// `MergeShards` of two adjacent open shards.
    pub async fn merge_shards(
        &self,
        stream: &str,
        shard_id: &str,
        adjacent_shard_id: &str,
    ) -> Result<(), BackendError> {
        self.client
            .merge_shards()
            .stream_name(stream)
            .shard_to_merge(shard_id)
            .adjacent_shard_to_merge(adjacent_shard_id)
            .send()
            .await
            .map_err(|e| error::classify("MergeShards", e))?;
        Ok(())
    }

    /// `UpdateShardCount` with `UNIFORM_SCALING`.
    pub async fn update_shard_count(&self, stream: &str, target: u32) -> Result<(), BackendError> {
        let target = i32::try_from(target)
            .map_err(|_| BackendError::InvalidArgument(format!("{target} shards").into()))?;
        self.client
            .update_shard_count()
            .stream_name(stream)
            .target_shard_count(target)
            .scaling_type(sdk::ScalingType::UniformScaling)
            .send()
            .await
            .map_err(|e| error::classify("UpdateShardCount", e))?;
        Ok(())
    }
}

#[async_trait]
impl StreamBackend for KinesisBackend {
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError> {
        let out = self
            .client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| error::classify("DescribeStreamSummary", e));
        let out = self.forget_arn_if_not_found(stream, None, out)?;
        let d = out.stream_description_summary.ok_or_else(|| {
            BackendError::Other("DescribeStreamSummary returned no description".into())
        })?;
        self.arns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stream.to_owned(), d.stream_arn.clone());
        Ok(StreamDescription {
            name: d.stream_name,
            arn: d.stream_arn,
            status: convert::stream_status(&d.stream_status),
            retention: convert::retention(d.retention_period_hours),
            open_shard_count: usize::try_from(d.open_shard_count).unwrap_or(0),
            created_at: convert::system_time(&d.stream_creation_timestamp)
                .unwrap_or(std::time::UNIX_EPOCH),
        })
    }

    async fn list_shards(
        &self,
        request: ListShardsRequest,
    ) -> Result<ListShardsPage, BackendError> {
        let mut call = self.client.list_shards();
        match request.next_token {
            // With a token the API refuses every other parameter but MaxResults.
            Some(token) => call = call.next_token(token),
            None => {
                call = call.stream_name(request.stream);
                if let Some(filter) = &request.filter {
                    call = call.shard_filter(convert::shard_filter(filter)?);
                }
            }
        }
        if let Some(max) = request.max_results {
            call = call.max_results(i32::try_from(max).unwrap_or(i32::MAX));
        }
        let out = call
            .send()
            .await
            .map_err(|e| error::classify("ListShards", e))?;
        Ok(ListShardsPage {
            shards: out
                .shards
                .unwrap_or_default()
                .into_iter()
                .map(convert::shard)
                .collect::<Result<_, _>>()?,
            next_token: out.next_token.filter(|t| !t.is_empty()),
        })
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        let (kind, seq, at) = convert::position(&position);
        let out = self
            .client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_starting_sequence_number(seq)
            .set_timestamp(at)
            .send()
            .await
            .map_err(|e| error::classify("GetShardIterator", e))?;
        out.shard_iterator
            .map(ShardIterator::new)
            .ok_or_else(|| BackendError::Other("GetShardIterator returned no iterator".into()))
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        let out = self
            .client
            .get_records()
            .shard_iterator(iterator.as_str())
            .limit(i32::try_from(limit).unwrap_or(10_000))
            .customize()
            .config_override(no_retries())
            .send()
            .await
            .map_err(|e| error::classify("GetRecords", e))?;
        Ok(GetRecordsOutput {
            records: convert::records(out.records)?,
            next_shard_iterator: out
                .next_shard_iterator
                .filter(|t| !t.is_empty())
                .map(ShardIterator::new),
            millis_behind_latest: out.millis_behind_latest.and_then(|m| u64::try_from(m).ok()),
            child_shards: convert::child_shards(out.child_shards)?,
        })
    }

    async fn register_stream_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let arn = self.stream_arn(stream).await?;
        let out = self
            .client
            .register_stream_consumer()
            .stream_arn(&arn)
            .consumer_name(consumer_name)
            .send()
            .await
            .map_err(|e| error::classify("RegisterStreamConsumer", e));
        let out = self.forget_arn_if_not_found(stream, Some(&arn), out)?;
        let c = out.consumer.ok_or_else(|| {
            BackendError::Other("RegisterStreamConsumer returned no consumer".into())
        })?;
        Ok(convert::consumer(
            c.consumer_name,
            c.consumer_arn,
            &c.consumer_status,
        ))
    }

    async fn describe_stream_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        let arn = self.stream_arn(stream).await?;
        let out = self
            .client
            .describe_stream_consumer()
            .stream_arn(&arn)
            .consumer_name(consumer_name)
            .send()
            .await
            .map_err(|e| error::classify("DescribeStreamConsumer", e));
        // Also when only the consumer is missing (the answer does not say which): one more
        // DescribeStreamSummary on the next call is cheap.
        let out = self.forget_arn_if_not_found(stream, Some(&arn), out)?;
        let c = out.consumer_description.ok_or_else(|| {
            BackendError::Other("DescribeStreamConsumer returned no description".into())
        })?;
        Ok(convert::consumer(
            c.consumer_name,
            c.consumer_arn,
            &c.consumer_status,
        ))
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<Subscription, BackendError> {
        let mut overrides = no_retries().timeout_config(
            TimeoutConfig::builder()
                .disable_operation_timeout()
                .disable_operation_attempt_timeout()
                .build(),
        );
        if let Some(context) = &self.subscription_tls {
            // A connection of its own (see "One connection per subscription" in the module
            // docs); it closes when the subscription ends and the client is dropped.
            overrides = overrides.http_client(https_client(context.clone()));
        }
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(convert::starting_position(&position)?)
            .customize()
            .config_override(overrides)
            .send()
            .await
            .map_err(|e| error::classify("SubscribeToShard", e))?;
        let receiver = out.event_stream;
        let events = futures::stream::unfold(Some(receiver), |state| async move {
            let mut receiver = state?;
            loop {
                match receiver.recv().await {
                    Ok(Some(sdk::SubscribeToShardEventStream::SubscribeToShardEvent(event))) => {
                        let event = convert_event(event);
                        let next = event.is_ok().then_some(receiver);
                        return Some((event, next));
                    }
                    // An event type this SDK version does not know: skip it.
                    Ok(Some(_)) => continue,
                    Ok(None) => return None,
                    Err(e) => {
                        return Some((Err(error::classify_event(e)), None));
                    }
                }
            }
        });
        Ok(events.boxed())
    }
}

fn convert_event(event: sdk::SubscribeToShardEvent) -> Result<SubscribeToShardEvent, BackendError> {
    // The SDK models the continuation as a required string; the service leaves it out (null)
    // at the end of a closed shard, which arrives here as an empty string.
    let continuation: Option<SequenceNumber> = if event.continuation_sequence_number.is_empty() {
        None
    } else {
        Some(convert::sequence(&event.continuation_sequence_number)?)
    };
    Ok(SubscribeToShardEvent {
        records: convert::records(event.records)?,
        continuation_sequence_number: continuation,
        millis_behind_latest: u64::try_from(event.millis_behind_latest).unwrap_or(0),
        child_shards: convert::child_shards(event.child_shards)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &[u8] = include_bytes!("../../../scripts/servers/tls/test-cert.pem");

    fn sdk() -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build()
    }

    fn build_error(pems: &[&[u8]]) -> BuildError {
        let mut builder = KinesisBackend::builder().native_roots(false);
        for pem in pems {
            builder = builder.trust_pem_certificate(pem.to_vec());
        }
        match builder.build(&sdk()) {
            Ok(_) => panic!("built with {pems:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn unusable_certificates_are_refused_when_building() {
        let cases: [(&[u8], &str); 3] = [
            (
                b"not a certificate",
                "no \"-----BEGIN CERTIFICATE-----\" section",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\n%%%%\n-----END CERTIFICATE-----\n",
                "malformed PEM",
            ),
            (
                // Valid base64 ("hello world"), not X.509.
                b"-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
                "certificate 1 of the PEM data is not a usable X.509 certificate",
            ),
        ];
        for (pem, reason) in cases {
            match build_error(&[CERT, pem]) {
                BuildError::InvalidCertificate { index, reason: got } => {
                    assert_eq!(index, 1, "the bad one is named");
                    assert!(got.contains(reason), "{got:?} should say {reason:?}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_valid_certificate_builds() {
        let builder = KinesisBackend::builder()
            .native_roots(false)
            .trust_pem_certificate(CERT);
        assert!(builder.http_client().is_ok());
        assert!(builder.build(&sdk()).is_ok());
    }
}
