//! The record processor: the one trait a user implements.
//!
//! The worker creates one [`RecordProcessor`] per leased shard through a [`ProcessorFactory`] and
//! drives it through its lifecycle:
//!
//! 1. [`initialize`](RecordProcessor::initialize) once, with the checkpoint the shard resumes from;
//! 2. [`process_records`](RecordProcessor::process_records) for every batch, in order;
//! 3. then exactly one of
//!    - [`shard_ended`](RecordProcessor::shard_ended): the shard was closed by a split or merge and
//!      every record was delivered. When it returns `Ok`, the framework records `SHARD_END` itself
//!      (so the Java KCL trap of forgetting that checkpoint cannot happen) and the children start;
//!    - [`shutdown_requested`](RecordProcessor::shutdown_requested): the worker is shutting down
//!      gracefully or handing the shard to another worker; the lease is still held, so checkpoints
//!      work. The framework then checkpoints (with automatic checkpoints on) and releases the lease;
//!    - [`lease_lost`](RecordProcessor::lease_lost): another worker owns the shard now; checkpoints
//!      fail from here on.
//!
//! A batch whose `process_records` fails (returns `Err` or panics) is never skipped silently: the
//! [`FailurePolicy`] decides (retry with backoff by default; retry N times then hand the batch to a
//! [`DeadLetterHandler`]; or stop the shard).
//!
//! Beyond one record at a time (all opt-in; without them a shard is processed exactly as
//! described above):
//!
//! - **Partial batch failures.** `process_records` may say "records from index `i` on failed" by
//!   returning a [`PartialFailure`] (or an error whose [`source`](std::error::Error::source)
//!   chain holds one): the records before `i` count as processed (checkpointed when the cadence
//!   says so) and only the rest is delivered again under the failure policy.
//! - **Poison records.** `WorkerBuilder::bisect_failed_batches` splits a failing batch in halves
//!   until the failing record is alone, so that only it exhausts the policy's attempts and goes
//!   to the [`DeadLetterHandler`]; `WorkerBuilder::max_record_age` takes records older than an
//!   age out before any delivery ([`ExpiredRecords`]: to the dead-letter handler, or skipped and
//!   counted). The handler receives the records themselves ([`DeadLetterBatch`]).
//! - **Key-ordered concurrency.** A processor that also implements [`ConcurrentProcessor`] can
//!   have up to N batches of one shard in flight at once (`WorkerBuilder::key_ordered`), with
//!   the records of each ordering key (the partition key by default) strictly in order.
//!
//! ## Ordering after a dead-lettered record
//!
//! A record given to the dead-letter handler (or skipped for its age) counts as handled: the
//! records after it, those of its own partition key included, are processed next, in order, as
//! if it had succeeded. Nothing waits for it; whoever consumes the dead letters decides what to do
//! with it, knowing that later records of its key were processed without it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::ChildShard;
use crate::checkpoint::Checkpointer;
use crate::lease::PendingCheckpoint;
use crate::record::{ExtendedSequenceNumber, Record};
use crate::retry::RetryBackoff;

/// A boxed error, as processors and handlers return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a processor is told about its shard when it starts.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct InitializationInput {
    /// The stream name.
    pub stream: String,
    /// The shard id.
    pub shard_id: String,
    /// The checkpoint processing resumes after (a sentinel for a fresh shard).
    pub checkpoint: ExtendedSequenceNumber,
    /// A checkpoint a previous owner prepared but did not commit, with its application state.
    pub pending_checkpoint: Option<PendingCheckpoint>,
}

/// One batch of records.
#[derive(Debug)]
#[non_exhaustive]
pub struct ProcessRecordsInput<'a> {
    /// The shard id.
    pub shard_id: &'a str,
    /// The user records (KPL aggregates already expanded), in shard order. Never empty. In
    /// key-ordered mode a batch holds the next records of some ordering keys only (see
    /// [`ConcurrentProcessor`]).
    pub records: &'a [Record],
    /// How far behind the tip of the shard the batch was when fetched.
    pub millis_behind_latest: Option<u64>,
    /// Which delivery of these records this is: 1 for the first, more when the policy retries
    /// them (a retried remainder after a [`PartialFailure`], and the halves of a bisected
    /// batch, count the deliveries of their records before).
    pub attempt: u32,
}

/// What a processor is told when its shard has ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShardEndedInput {
    /// The shard id.
    pub shard_id: String,
    /// The children of the shard (empty if the backend did not report them).
    pub child_shards: Vec<ChildShard>,
}

/// Why `shutdown_requested` is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShutdownReason {
    /// The worker is shutting down gracefully.
    WorkerShutdown,
    /// The lease is being handed to another worker (rebalancing).
    Handoff,
}

/// The shard a processor is created for.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardInfo {
    /// The stream name.
    pub stream: String,
    /// Multi-stream workers: the stream's full identity, Java's serialized
    /// `account:stream:creationEpoch` (parse it with
    /// [`StreamIdentifier::parse`](crate::stream::StreamIdentifier::parse)); `None` for a
    /// single-stream worker.
    pub stream_id: Option<String>,
    /// The shard id.
    pub shard_id: String,
    /// The shard's parents.
    pub parent_shard_ids: Vec<String>,
}

/// The user's per-shard processing logic.
///
/// Methods are `async` (write `async fn` in your impl). Every method returns `Result`; errors of
/// `process_records` go to the [`FailurePolicy`], errors of the other methods are logged and, where
/// it matters, retried (a failing `shard_ended` is retried before `SHARD_END` is recorded).
///
/// ```
/// use kcl_core::checkpoint::Checkpointer;
/// use kcl_core::processor::{ProcessRecordsInput, RecordProcessor};
///
/// struct Printer;
///
/// impl RecordProcessor for Printer {
///     type Error = std::io::Error;
///
///     async fn process_records(
///         &mut self,
///         input: ProcessRecordsInput<'_>,
///         _checkpointer: &mut Checkpointer,
///     ) -> Result<(), Self::Error> {
///         for record in input.records {
///             println!("{} {:?}", record.partition_key(), record.data());
///         }
///         Ok(()) // the framework checkpoints at the configured cadence
///     }
/// }
/// ```
pub trait RecordProcessor: Send + 'static {
    /// The error type of the processor's methods.
    type Error: Into<BoxError> + Send + 'static;

    /// Called once before the first batch.
    fn initialize(
        &mut self,
        input: InitializationInput,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = input;
        async { Ok(()) }
    }

    /// Processes one batch. Returning `Err` (or panicking) hands the batch to the failure policy;
    /// it is never skipped silently.
    fn process_records(
        &mut self,
        input: ProcessRecordsInput<'_>,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The lease was lost to another worker; checkpoints no longer work.
    fn lease_lost(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        async { Ok(()) }
    }

    /// The shard ended and every record was delivered. The framework records `SHARD_END` after
    /// this returns `Ok`; checkpointing here is optional.
    fn shard_ended(
        &mut self,
        input: ShardEndedInput,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (input, checkpointer);
        async { Ok(()) }
    }

    /// The worker is shutting down or handing the shard over; the lease is still held, so this is
    /// the place for a final manual checkpoint.
    fn shutdown_requested(
        &mut self,
        reason: ShutdownReason,
        checkpointer: &mut Checkpointer,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = (reason, checkpointer);
        async { Ok(()) }
    }
}

/// A processor whose batches may run concurrently: the opt-in for key-ordered concurrency
/// within a shard (`WorkerBuilder::key_ordered`).
///
/// In that mode the worker keeps up to N batches of one shard in flight at once and calls
/// [`process_batch`](Self::process_batch) for each, on the shard's one processor (hence `&self`
/// and `Sync`: keep per-batch state on the stack, shared state behind a lock or an atomic).
/// The records of one [ordering key](Self::ordering_key) are strictly in order: a key is in at
/// most one batch in flight, and its next records are handed out only once that batch is
/// done. Different keys run concurrently. Every other call (`initialize`, `shard_ended`,
/// `shutdown_requested`, `lease_lost`) keeps its [`RecordProcessor`] meaning and `&mut self`:
/// the worker makes it only while no batch is in flight.
///
/// The worker checkpoints on its own in this mode, at the configured cadence, over the
/// contiguous prefix of completed records (a completed record is one processed, dead-lettered
/// or skipped for its age); see the `worker` module docs for what is remembered beyond it. So
/// `process_batch` gets no [`Checkpointer`]; the checkpointer handed to the other calls checkpoints
/// at most that prefix.
///
/// Why a second trait rather than a new method of [`RecordProcessor`]: running batches at the
/// same time needs `&self` and `Sync`, which an existing processor (`&mut self`) does not offer,
/// so a default method could only fail at run time. With a trait of its own, existing processors
/// compile unchanged, and `WorkerBuilder::key_ordered` exists only for factories whose
/// processors implement this one: asking for concurrency from a processor that cannot have it
/// is a compile error. `process_records` stays required; a processor that works both ways
/// usually forwards it to `process_batch`, as below. With one batch in flight
/// (`KeyOrdered::new(1)`, or without `key_ordered`) the worker calls `process_records`, exactly
/// as for any processor.
///
/// ```
/// use kcl_core::checkpoint::Checkpointer;
/// use kcl_core::processor::{ConcurrentProcessor, ProcessRecordsInput, RecordProcessor};
///
/// struct Uploader; // e.g. an HTTP client, shared by the shard's batches
///
/// impl RecordProcessor for Uploader {
///     type Error = std::io::Error;
///
///     async fn process_records(
///         &mut self,
///         input: ProcessRecordsInput<'_>,
///         _checkpointer: &mut Checkpointer,
///     ) -> Result<(), Self::Error> {
///         self.process_batch(input).await
///     }
/// }
///
/// impl ConcurrentProcessor for Uploader {
///     async fn process_batch(&self, input: ProcessRecordsInput<'_>) -> Result<(), Self::Error> {
///         for record in input.records {
///             // one call per record to a slow downstream, say
///             let _ = record.data();
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait ConcurrentProcessor: RecordProcessor + Sync {
    /// Processes one batch while others of the same shard may be in flight. Errors, panics and
    /// [`PartialFailure`]s are handled exactly as those of
    /// [`process_records`](RecordProcessor::process_records).
    fn process_batch(
        &self,
        input: ProcessRecordsInput<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// The ordering key of a record: records with equal keys are processed strictly in shard
    /// order, records with different keys may be processed concurrently. Default: a hash of the
    /// partition key ([`partition_key_ordering`]), Kinesis's own unit of order. Return e.g. a hash
    /// of an entity id in the payload to order by that instead; two keys that happen to share a
    /// value are merely ordered together.
    fn ordering_key(&self, record: &Record) -> u64 {
        partition_key_ordering(record)
    }
}

/// The default [`ConcurrentProcessor::ordering_key`]: a 64-bit FNV-1a hash of the partition
/// key (fast, stable across processes and versions).
pub fn partition_key_ordering(record: &Record) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in record.partition_key().as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// "Records from index `failed_from` on failed": what `process_records` (or `process_batch`)
/// returns when only the end of its batch failed.
///
/// The records before `failed_from` count as processed: they are checkpointed when the
/// cadence says so and never delivered again; the rest of the batch is delivered again under
/// the [`FailurePolicy`] (and bisected, dead-lettered or left to stop the shard like any failed
/// batch). Return it as the error itself (`Err(PartialFailure::new(i, e).into())` with
/// [`BoxError`]), or as the [`source`](std::error::Error::source) of your own error type (a
/// `thiserror` variant with `#[from]` or `#[source]`; `#[error(transparent)]` hides it). An
/// index of 0 means the whole batch failed; an index at or past the end of the batch is a
/// mistake, logged and treated as a failure of the whole batch.
#[derive(Debug, thiserror::Error)]
#[error("records from index {failed_from} on failed: {source}")]
pub struct PartialFailure {
    failed_from: usize,
    #[source]
    source: BoxError,
}

impl PartialFailure {
    /// Records from index `failed_from` of the batch on failed, with `error`.
    pub fn new(failed_from: usize, error: impl Into<BoxError>) -> Self {
        Self {
            failed_from,
            source: error.into(),
        }
    }

    /// The index of the first failed record in the batch.
    pub fn failed_from(&self) -> usize {
        self.failed_from
    }

    /// The first [`PartialFailure`] in `error`'s source chain (`error` itself included).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a PartialFailure> {
        let mut current = Some(error);
        while let Some(error) = current {
            if let Some(partial) = error.downcast_ref::<PartialFailure>() {
                return Some(partial);
            }
            current = error.source();
        }
        None
    }
}

/// Creates a processor per shard.
pub trait ProcessorFactory: Send + Sync + 'static {
    /// The processor type.
    type Processor: RecordProcessor;

    /// Creates the processor for `shard`.
    fn create(&self, shard: &ShardInfo) -> Self::Processor;
}

impl<F, P> ProcessorFactory for F
where
    F: Fn(&ShardInfo) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    type Processor = P;

    fn create(&self, shard: &ShardInfo) -> P {
        self(shard)
    }
}

/// Records the failure policy gave up on (or too old to deliver), handed to a
/// [`DeadLetterHandler`].
///
/// Unlike Lambda's on-failure destination, which receives only a sequence range, the handler
/// gets the records themselves: data, partition keys, sequence and sub-sequence numbers
/// ([`Record::position`]), arrival times.
#[derive(Debug)]
#[non_exhaustive]
pub struct DeadLetterBatch<'a> {
    /// The stream name.
    pub stream: &'a str,
    /// The shard id.
    pub shard_id: &'a str,
    /// The records, in shard order: the failed batch, what remained of it after a
    /// [`PartialFailure`], the one record a bisection isolated, or records too old to deliver.
    pub records: &'a [Record],
    /// The last error (for records too old to deliver, a [`RecordTooOld`]).
    pub error: &'a BoxError,
    /// How many times these records were delivered (0 for records too old on arrival).
    pub attempts: u32,
    /// Why they are here.
    pub reason: DeadLetterReason,
}

/// Why records went to the dead-letter handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// They failed every delivery the policy allows.
    Failed,
    /// They were older than `WorkerBuilder::max_record_age` when their turn came.
    Expired,
}

/// The error handed to the dead-letter handler with records older than the maximum record age.
#[derive(Debug, thiserror::Error)]
#[error("record is {age:?} old, older than the maximum record age {max_age:?}")]
#[non_exhaustive]
pub struct RecordTooOld {
    /// How old the oldest of the records was (from its approximate arrival time).
    pub age: Duration,
    /// The configured maximum.
    pub max_age: Duration,
}

/// What happens to records older than `WorkerBuilder::max_record_age` (Lambda's
/// `MaximumRecordAgeInSeconds`). Their age is checked before every delivery, retries included,
/// from their approximate arrival time; a record without one never expires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpiredRecords {
    /// Give them to the [`FailurePolicy::DeadLetter`] handler (the default; the worker refuses to
    /// build without one).
    #[default]
    DeadLetter,
    /// Skip them, counted in `kcl_records_expired_total{action="skipped"}` and logged.
    Skip,
}

/// The maximum age of the records delivered (`WorkerBuilder::max_record_age`) and what
/// happens to older ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaxRecordAge {
    /// Records older than this (from their approximate arrival time) are not delivered.
    pub max_age: Duration,
    /// Where they go instead.
    pub expired: ExpiredRecords,
}

/// Receives records that failed every retry or are too old to deliver (dead-letter queue). When it
/// returns `Ok`, processing continues after them; when it fails, it is called again with
/// backoff, so a record is never lost without trace.
#[async_trait]
pub trait DeadLetterHandler: Send + Sync + std::fmt::Debug {
    /// Stores or reports the failed batch.
    async fn handle(&self, batch: DeadLetterBatch<'_>) -> Result<(), BoxError>;
}

/// What to do with a batch whose processing failed, and with a processor that cannot be
/// created or initialized.
///
/// `ProcessorFactory::create` (a panic) and `initialize` (an error or a panic) are retried
/// with the same backoff; after `max_attempts` of them, under `DeadLetter` and `StopShard`
/// alike, the shard stops (its lease is kept, nothing is processed past the failure, the
/// worker's health says so and `kcl_shards_stopped` counts it): there is no batch to hand to a
/// dead-letter handler. A `shard_ended` that fails is retried until it succeeds, since
/// `SHARD_END` is recorded only after it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Redeliver the same batch with exponential backoff until it succeeds (the default). The shard
    /// makes no progress meanwhile, but nothing is skipped.
    RetryForever {
        /// Delays between deliveries.
        backoff: RetryBackoff,
    },
    /// Deliver up to `max_attempts` times, then give the batch (or what remains of it) to
    /// `handler` and continue after it.
    DeadLetter {
        /// Deliveries before giving up (at least 1).
        max_attempts: u32,
        /// Delays between deliveries.
        backoff: RetryBackoff,
        /// Receives the batch.
        handler: Arc<dyn DeadLetterHandler>,
    },
    /// Deliver up to `max_attempts` times, then stop processing the shard: the lease stays held (so
    /// no other worker processes past the failure) until the worker shuts down.
    StopShard {
        /// Deliveries before stopping (at least 1).
        max_attempts: u32,
        /// Delays between deliveries.
        backoff: RetryBackoff,
    },
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self::RetryForever {
            backoff: RetryBackoff::default(),
        }
    }
}

impl FailurePolicy {
    /// The dead-letter handler, under [`FailurePolicy::DeadLetter`].
    pub(crate) fn handler(&self) -> Option<&Arc<dyn DeadLetterHandler>> {
        match self {
            Self::DeadLetter { handler, .. } => Some(handler),
            _ => None,
        }
    }

    pub(crate) fn backoff(&self) -> &RetryBackoff {
        match self {
            Self::RetryForever { backoff }
            | Self::DeadLetter { backoff, .. }
            | Self::StopShard { backoff, .. } => backoff,
        }
    }

    pub(crate) fn max_attempts(&self) -> Option<u32> {
        match self {
            Self::RetryForever { .. } => None,
            Self::DeadLetter { max_attempts, .. } | Self::StopShard { max_attempts, .. } => {
                Some(*max_attempts)
            }
        }
    }
}
