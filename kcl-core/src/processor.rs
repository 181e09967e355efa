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

use std::future::Future;
use std::sync::Arc;

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
    /// The user records (KPL aggregates already expanded), in order. Never empty.
    pub records: &'a [Record],
    /// How far behind the tip of the shard the batch was when fetched.
    pub millis_behind_latest: Option<u64>,
    /// Which delivery of this batch this is: 1 for the first, more when the policy retries it.
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

/// A batch the failure policy gave up on, handed to a [`DeadLetterHandler`].
#[derive(Debug)]
#[non_exhaustive]
pub struct DeadLetterBatch<'a> {
    /// The stream name.
    pub stream: &'a str,
    /// The shard id.
    pub shard_id: &'a str,
    /// The records of the failed batch.
    pub records: &'a [Record],
    /// The last error.
    pub error: &'a BoxError,
    /// How many deliveries were attempted.
    pub attempts: u32,
}

/// Receives batches that failed every retry (dead-letter queue). When it returns `Ok`, processing
/// continues after the batch; when it fails, it is called again with backoff, so a batch is never
/// lost without trace.
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
    /// Deliver up to `max_attempts` times, then give the batch to `handler` and continue after it.
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
