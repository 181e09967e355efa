//! The stream backend: the one boundary between the framework and a Kinesis-like service.
//!
//! Everything above this trait (shard sync, retrieval, the worker) is written once; the in-memory
//! [`crate::model`] and the AWS SDK adapter differ only in how they implement [`StreamBackend`].
//! Errors are mapped by the adapter into [`BackendError`], whose variants carry the service's
//! meaning (throttled, expired iterator, not found) so callers can react without knowing which
//! backend they talk to.
//!
//! Enhanced fan-out (stream consumers and `SubscribeToShard`) is part of the trait as provided
//! methods that answer [`BackendError::Unsupported`] for backends without it; the model and the
//! AWS backend implement them.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::record::{HashKeyRange, Record, SequenceNumber};

/// What a backend reported about a failed call: a message naming the operation and the
/// resource, and where the service gave them, its error code, its request id and the underlying
/// error (kept as the [`source`](std::error::Error::source) of the [`BackendError`]).
///
/// Cheap to clone (the source is shared). Built from a message with `From<String>` /
/// `From<&str>`, then [`ErrorDetail::with_code`], [`ErrorDetail::with_request_id`] and
/// [`ErrorDetail::with_source`].
#[derive(Clone, Debug)]
pub struct ErrorDetail(Arc<DetailInner>);

#[derive(Clone, Debug)]
struct DetailInner {
    message: String,
    code: Option<String>,
    request_id: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl ErrorDetail {
    /// A detail with this message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self(Arc::new(DetailInner {
            message: message.into(),
            code: None,
            request_id: None,
            source: None,
        }))
    }

    fn inner(&mut self) -> &mut DetailInner {
        Arc::make_mut(&mut self.0)
    }

    /// Records the service's error code (e.g. `ResourceNotFoundException`).
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.inner().code = Some(code.into());
        self
    }

    /// Records the service's request id, for support cases and log correlation.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.inner().request_id = Some(request_id.into());
        self
    }

    /// Keeps the underlying error as the source.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner().source = Some(Arc::new(source));
        self
    }

    /// The message: the operation, the resource and what the service said.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The service's error code, when it gave one.
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The service's request id, when it gave one.
    pub fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }

    /// The underlying error, when there is one.
    pub fn source(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.0.source.as_deref()
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)?;
        if let Some(id) = &self.0.request_id {
            write!(f, " (request id {id})")?;
        }
        Ok(())
    }
}

impl From<String> for ErrorDetail {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<&str> for ErrorDetail {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

/// An error returned by a [`StreamBackend`]. The variant says what happened in the service's
/// terms; the [`ErrorDetail`] carries the message, the error code, the request id and the
/// underlying error (the [`source`](std::error::Error::source)).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum BackendError {
    /// Read or write throughput of a shard exceeded (`ProvisionedThroughputExceededException`).
    ProvisionedThroughputExceeded(ErrorDetail),
    /// The shard iterator is older than five minutes (`ExpiredIteratorException`).
    ExpiredIterator(ErrorDetail),
    /// The stream, shard or consumer does not exist (`ResourceNotFoundException`).
    ResourceNotFound(ErrorDetail),
    /// The resource is busy, e.g. a second subscription to the same consumer and shard
    /// (`ResourceInUseException`).
    ResourceInUse(ErrorDetail),
    /// An account or request limit was hit (`LimitExceededException`).
    LimitExceeded(ErrorDetail),
    /// The request was malformed (`InvalidArgumentException`, validation errors).
    InvalidArgument(ErrorDetail),
    /// The `NextToken` of a `ListShards` call expired (`ExpiredNextTokenException`).
    ExpiredNextToken(ErrorDetail),
    /// A transient failure worth retrying: a timeout, a 5xx, a dropped connection.
    Transient(ErrorDetail),
    /// The credentials lack a permission or were refused; the message names the action.
    AccessDenied(ErrorDetail),
    /// The backend does not implement this operation.
    Unsupported(&'static str),
    /// Anything else, with the service's message.
    Other(ErrorDetail),
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::ProvisionedThroughputExceeded(_) => "provisioned throughput exceeded",
            Self::ExpiredIterator(_) => "shard iterator expired",
            Self::ResourceNotFound(_) => "resource not found",
            Self::ResourceInUse(_) => "resource in use",
            Self::LimitExceeded(_) => "limit exceeded",
            Self::InvalidArgument(_) => "invalid argument",
            Self::ExpiredNextToken(_) => "list-shards token expired",
            Self::Transient(_) => "transient backend failure",
            Self::AccessDenied(_) => "access denied",
            Self::Unsupported(operation) => {
                return write!(f, "operation not supported by this backend: {operation}");
            }
            Self::Other(_) => "backend error",
        };
        match self.detail() {
            Some(detail) => write!(f, "{what}: {detail}"),
            None => f.write_str(what),
        }
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.detail()
            .and_then(|d| d.source())
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl BackendError {
    /// The message, code, request id and source, for every variant but `Unsupported`.
    pub fn detail(&self) -> Option<&ErrorDetail> {
        match self {
            Self::ProvisionedThroughputExceeded(d)
            | Self::ExpiredIterator(d)
            | Self::ResourceNotFound(d)
            | Self::ResourceInUse(d)
            | Self::LimitExceeded(d)
            | Self::InvalidArgument(d)
            | Self::ExpiredNextToken(d)
            | Self::Transient(d)
            | Self::AccessDenied(d)
            | Self::Other(d) => Some(d),
            Self::Unsupported(_) => None,
        }
    }

    /// The message of the error (without the variant's prefix), or the operation for
    /// `Unsupported`.
    pub fn message(&self) -> &str {
        match self {
            Self::Unsupported(operation) => operation,
            other => other.detail().map_or("", ErrorDetail::message),
        }
    }

    /// Whether retrying cannot help: the stream or consumer does not exist, access is denied,
    /// the request is invalid, or the backend lacks the operation. The worker surfaces these
    /// (after [`crate::worker::WorkerBuilder::permanent_error_timeout`], to ride out IAM
    /// propagation and streams still being created) instead of retrying them forever. A shard
    /// reported not found is its end, not a permanent error; callers that know the resource is
    /// a shard decide that themselves.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::ResourceNotFound(_)
                | Self::AccessDenied(_)
                | Self::InvalidArgument(_)
                | Self::Unsupported(_)
        )
    }

    /// Whether retrying the same call later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::ProvisionedThroughputExceeded(_)
                | Self::LimitExceeded(_)
                | Self::Transient(_)
                | Self::ResourceInUse(_)
        )
    }

    /// Whether this is a throttling error (`ProvisionedThroughputExceeded` or `LimitExceeded`).
    pub fn is_throttling(&self) -> bool {
        matches!(
            self,
            Self::ProvisionedThroughputExceeded(_) | Self::LimitExceeded(_)
        )
    }
}

/// Whether a stream can be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamStatus {
    /// Being created.
    Creating,
    /// Readable and writable.
    Active,
    /// Resharding or changing settings; still readable and writable.
    Updating,
    /// Being deleted.
    Deleting,
}

/// A summary of a stream (`DescribeStreamSummary`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamDescription {
    /// The stream name.
    pub name: String,
    /// The stream ARN (the model makes one up).
    pub arn: String,
    /// Current status.
    pub status: StreamStatus,
    /// How long records are retained.
    pub retention: std::time::Duration,
    /// Number of open shards.
    pub open_shard_count: usize,
    /// When the stream was created.
    pub created_at: SystemTime,
}

/// One shard as listed by `ListShards`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// The shard id, e.g. `shardId-000000000000`.
    pub shard_id: String,
    /// The parent of a split or the first parent of a merge.
    pub parent_shard_id: Option<String>,
    /// The second parent of a merge.
    pub adjacent_parent_shard_id: Option<String>,
    /// The hash keys routed to this shard.
    pub hash_key_range: HashKeyRange,
    /// The first sequence number of the shard.
    pub starting_sequence_number: SequenceNumber,
    /// The last sequence number of a closed shard; `None` while the shard is open.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl Shard {
    /// The shard's parents (zero, one or two).
    pub fn parents(&self) -> impl Iterator<Item = &str> {
        self.parent_shard_id
            .as_deref()
            .into_iter()
            .chain(self.adjacent_parent_shard_id.as_deref())
    }

    /// Whether the shard is still open for writes.
    pub fn is_open(&self) -> bool {
        self.ending_sequence_number.is_none()
    }
}

/// A filter for `ListShards`, as the real API's `ShardFilter`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardFilter {
    /// Shards whose id sorts after the given one.
    AfterShardId(String),
    /// The shards open at the trim horizon (the oldest retained data).
    AtTrimHorizon,
    /// Every shard from the trim horizon on, open or closed.
    FromTrimHorizon,
    /// The shards open now.
    AtLatest,
    /// The shards open at the given time.
    AtTimestamp(SystemTime),
    /// Every shard open at or after the given time.
    FromTimestamp(SystemTime),
}

/// A `ListShards` request. With `next_token` set the other fields are ignored, as in the real API.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListShardsRequest {
    /// Stream name (ignored when `next_token` is set).
    pub stream: String,
    /// Continuation token from the previous page.
    pub next_token: Option<String>,
    /// Maximum shards per page (1..=10000, default 1000).
    pub max_results: Option<u32>,
    /// Optional filter.
    pub filter: Option<ShardFilter>,
}

/// One page of `ListShards`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListShardsPage {
    /// The shards on this page, ordered by shard id.
    pub shards: Vec<Shard>,
    /// Token for the next page; `None` on the last page.
    pub next_token: Option<String>,
}

/// Where a shard iterator starts (`ShardIteratorType` plus its argument).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartingPosition {
    /// The oldest retained record.
    TrimHorizon,
    /// Just after the newest record.
    Latest,
    /// At the record with this sequence number.
    AtSequenceNumber(SequenceNumber),
    /// Just after the record with this sequence number.
    AfterSequenceNumber(SequenceNumber),
    /// At the first record that arrived at or after this time.
    AtTimestamp(SystemTime),
}

/// An opaque shard iterator.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ShardIterator(pub Arc<str>);

impl ShardIterator {
    /// Wraps the backend's iterator text.
    pub fn new(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The iterator text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ShardIterator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Iterators are long and opaque: show a prefix only.
        let shown: String = self.0.chars().take(16).collect();
        write!(f, "ShardIterator({shown}…)")
    }
}

/// A child of a closed shard, returned once the parent has been read to its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's shard id.
    pub shard_id: String,
    /// Its parents (one for a split, two for a merge).
    pub parent_shards: Vec<String>,
    /// Its hash key range.
    pub hash_key_range: HashKeyRange,
}

/// The result of one `GetRecords` call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GetRecordsOutput {
    /// Raw records, in sequence order.
    pub records: Vec<Record>,
    /// The iterator for the next call; `None` once a closed shard has been read to its end.
    pub next_shard_iterator: Option<ShardIterator>,
    /// How far behind the tip of the shard this response is.
    pub millis_behind_latest: Option<u64>,
    /// The children of a closed shard, returned with the last page (when `next_shard_iterator` is
    /// `None`).
    pub child_shards: Vec<ChildShard>,
}

/// A registered enhanced fan-out consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConsumer {
    /// Consumer name.
    pub name: String,
    /// Consumer ARN, used to subscribe.
    pub arn: String,
    /// Whether it can be subscribed to yet.
    pub status: ConsumerStatus,
}

/// Lifecycle state of a stream consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerStatus {
    /// Registration in progress.
    Creating,
    /// Ready for `SubscribeToShard`.
    Active,
    /// Being deregistered.
    Deleting,
}

/// One event of a `SubscribeToShard` subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscribeToShardEvent {
    /// Records pushed in this event.
    pub records: Vec<Record>,
    /// Where to resubscribe from; `None` at the end of a closed shard.
    pub continuation_sequence_number: Option<SequenceNumber>,
    /// How far behind the tip this event is.
    pub millis_behind_latest: u64,
    /// Children, at shard end.
    pub child_shards: Vec<ChildShard>,
}

/// The event stream of one subscription; it ends after about five minutes or on error.
pub type Subscription = BoxStream<'static, Result<SubscribeToShardEvent, BackendError>>;

/// A Kinesis-like service: the operations the framework needs to read a stream.
///
/// Implemented by the in-memory [`crate::model`] and by the AWS SDK adapter. Implementations must
/// be cheap to share (`Arc<dyn StreamBackend>`).
#[async_trait]
pub trait StreamBackend: Send + Sync + fmt::Debug {
    /// `DescribeStreamSummary`.
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError>;

    /// One page of `ListShards`.
    async fn list_shards(&self, request: ListShardsRequest)
    -> Result<ListShardsPage, BackendError>;

    /// `GetShardIterator`.
    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError>;

    /// `GetRecords`, at most `limit` records (1..=10000).
    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError>;

    /// `RegisterStreamConsumer` (enhanced fan-out).
    async fn register_stream_consumer(
        &self,
        _stream: &str,
        _consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        Err(BackendError::Unsupported("RegisterStreamConsumer"))
    }

    /// `DescribeStreamConsumer` (enhanced fan-out).
    async fn describe_stream_consumer(
        &self,
        _stream: &str,
        _consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        Err(BackendError::Unsupported("DescribeStreamConsumer"))
    }

    /// `SubscribeToShard` (enhanced fan-out).
    async fn subscribe_to_shard(
        &self,
        _consumer_arn: &str,
        _shard_id: &str,
        _position: StartingPosition,
    ) -> Result<Subscription, BackendError> {
        Err(BackendError::Unsupported("SubscribeToShard"))
    }
}

/// Lists every shard of a stream, following pagination.
pub async fn list_all_shards(
    backend: &dyn StreamBackend,
    stream: &str,
    filter: Option<ShardFilter>,
) -> Result<Vec<Shard>, BackendError> {
    let mut shards = Vec::new();
    let mut request = ListShardsRequest {
        stream: stream.to_owned(),
        next_token: None,
        max_results: None,
        filter,
    };
    loop {
        let page = backend.list_shards(request.clone()).await?;
        shards.extend(page.shards);
        match page.next_token {
            Some(token) => request.next_token = Some(token),
            None => return Ok(shards),
        }
    }
}
