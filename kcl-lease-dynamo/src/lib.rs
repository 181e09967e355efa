//! A DynamoDB [`LeaseTable`] for kcl-core, compatible with the lease tables of Java KCL 2.x and
//! 3.x (single-stream applications): a Rust worker can take over a table a Java application wrote,
//! continue from its checkpoints, and leave the attributes it does not know untouched.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kcl_core::lease::LeaseError> {
//! use kcl_lease_dynamo::{Billing, DynamoLeaseTable};
//!
//! // Region, credentials and endpoint from the standard AWS chain
//! // (AWS_REGION, AWS_PROFILE, AWS_ENDPOINT_URL_DYNAMODB, instance roles, ...).
//! let table = DynamoLeaseTable::from_env("my-application").await?;
//!
//! // Or from an SdkConfig you loaded, with options.
//! let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
//! let table = DynamoLeaseTable::builder("my-application")
//!     .create_if_missing(true)
//!     .billing(Billing::OnDemand)
//!     .point_in_time_recovery(true)
//!     .build(&config)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Table
//!
//! Java KCL names the lease table after the application; so should you, to share or take over a
//! Java application's table. The table has hash key `leaseKey` (S) and no range key. When it is
//! missing, [`DynamoLeaseTableBuilder::build`] creates it (unless told not to) with on-demand
//! billing, waits until it is `ACTIVE`, and optionally enables point-in-time recovery. An existing
//! table with another key schema is refused with [`LeaseError::Misconfigured`] naming the table
//! and what differs.
//!
//! # Items
//!
//! One item per lease, attribute names and types exactly as Java KCL writes them (see
//! [`attributes`]):
//!
//! | attribute | type | [`Lease`] field |
//! |---|---|---|
//! | `leaseKey` | S | `key` (hash key) |
//! | `leaseOwner` | S | `owner`; absent when unassigned |
//! | `leaseCounter` | N | `counter` |
//! | `checkpoint`, `checkpointSubSequenceNumber` | S, N | `checkpoint` (decimal sequence number or `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`) |
//! | `pendingCheckpoint`, `pendingCheckpointSubSequenceNumber` | S, N | `pending_checkpoint.position`; absent when none |
//! | `pendingCheckpointState` | B | `pending_checkpoint.state`; absent when none |
//! | `ownerSwitchesSinceCheckpoint` | N | `owner_switches_since_checkpoint` |
//! | `parentShardId` | SS | `parent_shard_ids` (singular name, as in Java); absent when empty |
//! | `childShardIds` | SS | `child_shard_ids`; absent when empty |
//! | `startingHashKey`, `endingHashKey` | S, S | `hash_key_range` (decimal) |
//! | `checkpointOwner` | S | `checkpoint_owner` (Java 3.x graceful handoff marker) |
//!
//! Sets have no order in DynamoDB: shard ids are returned sorted, and a list with an empty or
//! repeated shard id is refused ([`LeaseError::Malformed`]) rather than silently changed.
//!
//! Attributes written by other software (Java 3.x's `throughputKBps`, for example) are preserved:
//! an item is written whole only when it is created (`PutItem` conditional on
//! `attribute_not_exists(leaseKey)`); every later write is an `UpdateItem` that sets or removes
//! just the attributes the [`LeaseUpdate`] changes, plus `leaseCounter`.
//!
//! # Conditional writes
//!
//! * create: `attribute_not_exists(leaseKey)`;
//! * update and delete: `attribute_exists(leaseKey)` and the [`Expectation`]: `leaseCounter = :c`,
//!   `leaseOwner = :o` or, for "unowned", `attribute_not_exists(leaseOwner)`.
//!
//! A failed condition is [`LeaseError::ConditionFailed`] carrying the current lease (requested
//! with `ReturnValuesOnConditionCheckFailure=ALL_OLD`; when a server does not return it, the
//! lease is read back to tell "changed" from "missing"). Updates return the written lease
//! (`ReturnValues=ALL_NEW`), so a write costs one request.
//!
//! # Errors and retries
//!
//! The SDK's own retries are switched off, because a conditional write retried after a lost reply
//! can fail its own condition. Instead:
//!
//! * throttling (`ProvisionedThroughputExceededException`, `ThrottlingException`,
//!   `RequestLimitExceeded`) is retried with exponential backoff and jitter up to
//!   [`DynamoLeaseTableBuilder::max_retries`] times, then surfaces as [`LeaseError::Throttled`];
//! * 5xx answers are retried the same way; reads then surface as [`LeaseError::Unavailable`],
//!   writes as [`LeaseError::Unknown`] because a 5xx write may have been applied;
//! * a write whose reply is lost (timeout, connection lost) is [`LeaseError::Unknown`] at once, so
//!   [`LeaseTableExt::write_reconciled`](kcl_core::lease::LeaseTableExt::write_reconciled) reads
//!   the lease back and recognises its own write; a condition failure after a 5xx attempt is
//!   reported the same way;
//! * missing permissions, refused credentials or no credentials at all are
//!   [`LeaseError::Misconfigured`] naming the DynamoDB action (e.g. `dynamodb:UpdateItem`) and the
//!   table; a missing table likewise;
//! * an item that cannot be decoded is [`LeaseError::Malformed`] naming its lease key and
//!   attribute, from `get`, `update` and `delete` of that lease; [`LeaseTable::list`] skips it
//!   and logs it at `warn` level, so the other leases keep working.
//!
//! # IAM policy
//!
//! The minimal policy for a worker (replace region, account and table name):
//!
//! ```json
//! {
//!   "Version": "2012-10-17",
//!   "Statement": [{
//!     "Effect": "Allow",
//!     "Action": [
//!       "dynamodb:DescribeTable",
//!       "dynamodb:GetItem",
//!       "dynamodb:PutItem",
//!       "dynamodb:UpdateItem",
//!       "dynamodb:DeleteItem",
//!       "dynamodb:Scan"
//!     ],
//!     "Resource": "arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE_NAME"
//!   }]
//! }
//! ```
//!
//! Add `dynamodb:CreateTable` when the worker creates the table
//! ([`DynamoLeaseTableBuilder::create_if_missing`], on by default) and
//! `dynamodb:UpdateContinuousBackups` when it enables point-in-time recovery.
//!
//! # Cost
//!
//! Every request asks for `ReturnConsumedCapacity=TOTAL`; [`DynamoLeaseTable::capacity`] returns
//! the running totals. See `docs/dynamodb.md` in the repository for measured figures per
//! lease-hour, beside Java KCL's.
#![deny(missing_docs)]

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::operation::delete_item::DeleteItemError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, PointInTimeRecoverySpecification,
    ProvisionedThroughput, ReturnConsumedCapacity, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableDescription, TableStatus,
};
use kcl_core::lease::{
    Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate, WORKER_KEY_PREFIX,
};
use tracing::Instrument;

mod call;
mod capacity;
mod item;

pub use capacity::{ConsumedCapacityTotals, item_size, lease_item_size};
pub use item::attributes;

use call::{Failure, Kind, Outcome, RetryPolicy, classify};
use capacity::{Counters, Request};
use item::{Expression, Item, item_key, item_to_lease, lease_to_item};

/// Default for [`DynamoLeaseTableBuilder::max_retries`].
pub const DEFAULT_MAX_RETRIES: usize = 6;
/// Default for [`DynamoLeaseTableBuilder::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// What the default name of the workers table adds to the lease table's name
/// ([`DynamoLeaseTableBuilder::workers_table_name`]).
pub const WORKERS_TABLE_SUFFIX: &str = "-KclRsWorkers";
/// Default for [`DynamoLeaseTableBuilder::table_active_timeout`].
pub const DEFAULT_TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// How a table created by [`DynamoLeaseTableBuilder::build`] is billed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Billing {
    /// On-demand (`PAY_PER_REQUEST`), Java KCL's default.
    #[default]
    OnDemand,
    /// Provisioned capacity.
    Provisioned {
        /// Read capacity units.
        read_capacity_units: i64,
        /// Write capacity units.
        write_capacity_units: i64,
    },
}

/// Builds a [`DynamoLeaseTable`]; see [`DynamoLeaseTable::builder`].
#[derive(Clone, Debug)]
#[must_use]
pub struct DynamoLeaseTableBuilder {
    table_name: String,
    application: Option<String>,
    create_if_missing: bool,
    billing: Billing,
    deletion_protection: bool,
    point_in_time_recovery: bool,
    max_retries: usize,
    request_timeout: Duration,
    table_active_timeout: Duration,
    verify_table: bool,
    scan_page_size: Option<NonZeroU32>,
    scan_segments: Option<NonZeroU32>,
    workers_table_name: Option<String>,
}

impl DynamoLeaseTableBuilder {
    /// The name of the companion table that holds the workers' heartbeat rows (default: the
    /// lease table's name followed by [`WORKERS_TABLE_SUFFIX`]). Every worker of an application
    /// must use the same name. See [the crate docs](crate#the-workers-table).
    pub fn workers_table_name(mut self, name: impl Into<String>) -> Self {
        self.workers_table_name = Some(name.into());
        self
    }

    /// Scan the lease table in this many parallel segments (default: one segment per started MB
    /// the previous scan returned, at most 16). Segments make a large table's scan faster, not
    /// cheaper.
    pub fn scan_segments(mut self, segments: NonZeroU32) -> Self {
        self.scan_segments = Some(segments);
        self
    }

    /// The application whose leases the table holds (default: the table name, as Java KCL names
    /// the table after the application). A worker given this table takes its application name
    /// from here ([`LeaseTable::application`]).
    pub fn application(mut self, application: impl Into<String>) -> Self {
        self.application = Some(application.into());
        self
    }

    /// Whether to create the table when it does not exist (default `true`, as Java KCL does).
    /// When `false`, a missing table is [`LeaseError::Misconfigured`].
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Billing of a table this builder creates (default [`Billing::OnDemand`]).
    pub fn billing(mut self, billing: Billing) -> Self {
        self.billing = billing;
        self
    }

    /// Enables deletion protection on a table this builder creates (default off).
    pub fn deletion_protection(mut self, enabled: bool) -> Self {
        self.deletion_protection = enabled;
        self
    }

    /// Enables point-in-time recovery on the table (default off). Applied after the table is
    /// active, also to an existing table; needs `dynamodb:UpdateContinuousBackups`.
    pub fn point_in_time_recovery(mut self, enabled: bool) -> Self {
        self.point_in_time_recovery = enabled;
        self
    }

    /// How many times a throttled request, a 5xx answer or a read without a reply is retried
    /// before the error surfaces (default [`DEFAULT_MAX_RETRIES`]).
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.max_retries = retries;
        self
    }

    /// How long one request attempt may take before its outcome counts as unknown (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]). Keep it well below the failover time.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long [`build`](Self::build) waits for a table to become `ACTIVE` (default
    /// [`DEFAULT_TABLE_ACTIVE_TIMEOUT`]).
    pub fn table_active_timeout(mut self, timeout: Duration) -> Self {
        self.table_active_timeout = timeout;
        self
    }

    /// Whether [`build`](Self::build) describes the table, creates it if missing and checks its
    /// key schema (default `true`). Turn it off only for a worker whose IAM policy lacks
    /// `dynamodb:DescribeTable`: the first lease request then reports a missing table.
    pub fn verify_table(mut self, verify: bool) -> Self {
        self.verify_table = verify;
        self
    }

    /// At most this many items per `Scan` page in [`LeaseTable::list`] (default: DynamoDB's 1 MB
    /// pages). Smaller pages spread a large table's scan over more, smaller requests.
    pub fn scan_page_size(mut self, items: NonZeroU32) -> Self {
        self.scan_page_size = Some(items);
        self
    }

    /// Connects with `config` (region, credentials, endpoint), creates the table if it is missing
    /// and allowed, waits until it is active and checks its key schema.
    ///
    /// Errors: [`LeaseError::Misconfigured`] for an invalid table name, a config without a
    /// region, a missing table that may not be created, a table with another key schema, a table
    /// being deleted, or missing permissions; the retryable errors when DynamoDB is unreachable.
    pub async fn build(self, config: &SdkConfig) -> Result<DynamoLeaseTable, LeaseError> {
        validate_table_name(&self.table_name)?;
        let workers_table = self
            .workers_table_name
            .clone()
            .unwrap_or_else(|| format!("{}{WORKERS_TABLE_SUFFIX}", self.table_name));
        validate_table_name(&workers_table)?;
        if config.region().is_none() {
            return Err(LeaseError::Misconfigured(format!(
                "lease table {}: no AWS region configured (set AWS_REGION or a profile region)",
                self.table_name
            )));
        }
        let client_config = aws_sdk_dynamodb::config::Builder::from(config)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.request_timeout)
                    .operation_attempt_timeout(self.request_timeout)
                    .build(),
            )
            .build();
        let table = DynamoLeaseTable {
            inner: Arc::new(Inner {
                client: Client::from_conf(client_config),
                table_name: self.table_name.clone(),
                application: self
                    .application
                    .clone()
                    .unwrap_or_else(|| self.table_name.clone()),
                policy: RetryPolicy {
                    max_retries: self.max_retries,
                    min_delay: Duration::from_millis(25),
                    max_delay: Duration::from_secs(2),
                },
                counters: Counters::default(),
                scan_page_size: self.scan_page_size,
                scan_segments: self.scan_segments,
                last_scan_bytes: AtomicU64::new(0),
                workers_table,
            }),
        };
        if self.verify_table {
            let span = tracing::info_span!("lease_table_open", table = %self.table_name);
            table
                .prepare(table.table(), &self)
                .instrument(span.clone())
                .await?;
            table
                .prepare(table.workers_table(), &self)
                .instrument(span)
                .await?;
        }
        Ok(table)
    }
}

fn validate_table_name(name: &str) -> Result<(), LeaseError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if (3..=255).contains(&name.len()) && valid_chars {
        Ok(())
    } else {
        Err(LeaseError::Misconfigured(format!(
            "{name:?} is not a valid DynamoDB table name (3 to 255 characters from [A-Za-z0-9_.-])"
        )))
    }
}

/// A [`LeaseTable`] stored in a DynamoDB table, in Java KCL's format. See the
/// [crate documentation](crate).
///
/// Cloning is cheap: clones share the client and the capacity counters.
#[derive(Clone)]
pub struct DynamoLeaseTable {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    table_name: String,
    /// The companion table of the heartbeat rows.
    workers_table: String,
    application: String,
    policy: RetryPolicy,
    counters: Counters,
    scan_page_size: Option<NonZeroU32>,
    scan_segments: Option<NonZeroU32>,
    /// Bytes the previous scan of the lease table returned (sets the automatic segments).
    last_scan_bytes: AtomicU64,
}

impl fmt::Debug for DynamoLeaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoLeaseTable")
            .field("table_name", &self.inner.table_name)
            .finish_non_exhaustive()
    }
}

impl DynamoLeaseTable {
    /// A builder for the table named `table_name` (Java KCL uses the application name).
    pub fn builder(table_name: impl Into<String>) -> DynamoLeaseTableBuilder {
        DynamoLeaseTableBuilder {
            table_name: table_name.into(),
            application: None,
            create_if_missing: true,
            billing: Billing::OnDemand,
            deletion_protection: false,
            point_in_time_recovery: false,
            max_retries: DEFAULT_MAX_RETRIES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            table_active_timeout: DEFAULT_TABLE_ACTIVE_TIMEOUT,
            verify_table: true,
            scan_page_size: None,
            scan_segments: None,
            workers_table_name: None,
        }
    }

    /// Loads the standard AWS configuration (environment, profile, instance role; the endpoint
    /// from `AWS_ENDPOINT_URL_DYNAMODB` or `AWS_ENDPOINT_URL`) and builds the table with default
    /// options, creating it if missing.
    pub async fn from_env(table_name: impl Into<String>) -> Result<Self, LeaseError> {
        let config = aws_config::load_defaults(BehaviorVersion::latest()).await;
        Self::builder(table_name).build(&config).await
    }

    /// The table name.
    pub fn table_name(&self) -> &str {
        &self.inner.table_name
    }

    /// The DynamoDB client (the SDK's retries are disabled on it; see the crate docs).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Capacity and requests consumed through this table (all clones) so far.
    pub fn capacity(&self) -> ConsumedCapacityTotals {
        self.inner.counters.snapshot()
    }

    /// Returns the totals so far and starts counting from zero.
    pub fn reset_capacity(&self) -> ConsumedCapacityTotals {
        self.inner.counters.reset()
    }

    /// The name of the companion table holding the workers' heartbeat rows.
    pub fn workers_table_name(&self) -> &str {
        &self.inner.workers_table
    }

    fn table(&self) -> &str {
        &self.inner.table_name
    }

    fn workers_table(&self) -> &str {
        &self.inner.workers_table
    }

    /// The table an item with `key` lives in: heartbeat rows in the workers table.
    fn table_for(&self, key: &str) -> &str {
        if key.starts_with(WORKER_KEY_PREFIX) {
            self.workers_table()
        } else {
            self.table()
        }
    }

    async fn run<T, F, Fut>(
        &self,
        table: &str,
        kind: Kind,
        action: &str,
        attempt: F,
    ) -> Result<Outcome<T>, LeaseError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        call::run(
            &self.inner.policy,
            &self.inner.counters,
            kind,
            action,
            table,
            attempt,
        )
        .await
    }

    async fn describe(&self, table: &str) -> Result<Option<TableDescription>, LeaseError> {
        let client = &self.inner.client;
        let result = self
            .run(table, Kind::Read, "dynamodb:DescribeTable", || async {
                match client.describe_table().table_name(table).send().await {
                    Ok(output) => Ok(output.table),
                    Err(err) => match classify(err, |_| None) {
                        Failure::TableMissing(_) => Ok(None),
                        other => Err(other),
                    },
                }
            })
            .await?;
        match result {
            Outcome::Done(table) => Ok(table),
            Outcome::Condition(_) => Ok(None),
        }
    }

    /// Describes `table` (the lease table or the workers table), creates it if missing and
    /// allowed, waits until it is active and checks its key schema.
    async fn prepare(
        &self,
        table: &str,
        options: &DynamoLeaseTableBuilder,
    ) -> Result<(), LeaseError> {
        let description = match self.describe(table).await? {
            Some(description) => description,
            None if options.create_if_missing => {
                self.create_table(table, options).await?;
                self.wait_until_active(table, options.table_active_timeout)
                    .await?
            }
            None => {
                return Err(LeaseError::Misconfigured(format!(
                    "lease table {table} does not exist (and creating it is disabled)"
                )));
            }
        };
        let description = match description.table_status() {
            Some(TableStatus::Active) | Some(TableStatus::Updating) => description,
            Some(TableStatus::Creating) => {
                self.wait_until_active(table, options.table_active_timeout)
                    .await?
            }
            other => {
                return Err(LeaseError::Misconfigured(format!(
                    "lease table {table} is not usable: its status is {:?}",
                    other.map(TableStatus::as_str)
                )));
            }
        };
        check_key_schema(table, &description)?;
        if options.point_in_time_recovery && table == self.table() {
            self.enable_point_in_time_recovery().await?;
        }
        Ok(())
    }

    async fn create_table(
        &self,
        table: &str,
        options: &DynamoLeaseTableBuilder,
    ) -> Result<(), LeaseError> {
        let build_error = |e: aws_sdk_dynamodb::error::BuildError| LeaseError::Store(Box::new(e));
        let mut request = self
            .inner
            .client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attributes::LEASE_KEY)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build_error)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attributes::LEASE_KEY)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build_error)?,
            )
            .deletion_protection_enabled(options.deletion_protection);
        request = match options.billing {
            Billing::OnDemand => request.billing_mode(BillingMode::PayPerRequest),
            Billing::Provisioned {
                read_capacity_units,
                write_capacity_units,
            } => request
                .billing_mode(BillingMode::Provisioned)
                .provisioned_throughput(
                    ProvisionedThroughput::builder()
                        .read_capacity_units(read_capacity_units)
                        .write_capacity_units(write_capacity_units)
                        .build()
                        .map_err(build_error)?,
                ),
        };
        tracing::info!(table, billing = ?options.billing, "creating the lease table");
        self.run(table, Kind::Write, "dynamodb:CreateTable", || async {
            match request.clone().send().await {
                Ok(_) => Ok(()),
                Err(err) => {
                    // Another worker created it at the same time: fine, wait for it.
                    if err
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_in_use_exception())
                    {
                        Ok(())
                    } else {
                        Err(classify(err, |_| None))
                    }
                }
            }
        })
        .await
        .map_err(|e| match e {
            // A lost CreateTable reply: the describe loop below finds out.
            LeaseError::Unknown(reason) => {
                tracing::warn!(table, %reason, "CreateTable outcome unknown");
                LeaseError::Unknown(reason)
            }
            other => other,
        })?;
        Ok(())
    }

    /// Polls DescribeTable until the table is ACTIVE (waiting for an external state change; the
    /// delay grows from 50 ms to 2 s).
    async fn wait_until_active(
        &self,
        table: &str,
        limit: Duration,
    ) -> Result<TableDescription, LeaseError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            if let Some(description) = self.describe(table).await? {
                match description.table_status() {
                    Some(TableStatus::Active) | Some(TableStatus::Updating) => {
                        return Ok(description);
                    }
                    Some(TableStatus::Creating) | None => {}
                    Some(other) => {
                        return Err(LeaseError::Misconfigured(format!(
                            "lease table {table} is not usable: its status is {}",
                            other.as_str()
                        )));
                    }
                }
            }
            if started.elapsed() >= limit {
                return Err(LeaseError::Unavailable(format!(
                    "lease table {table} did not become ACTIVE within {limit:?}"
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn enable_point_in_time_recovery(&self) -> Result<(), LeaseError> {
        let specification = PointInTimeRecoverySpecification::builder()
            .point_in_time_recovery_enabled(true)
            .build()
            .map_err(|e| LeaseError::Store(Box::new(e)))?;
        let client = &self.inner.client;
        self.run(
            self.table(),
            Kind::Write,
            "dynamodb:UpdateContinuousBackups",
            || async {
                client
                    .update_continuous_backups()
                    .table_name(self.table())
                    .point_in_time_recovery_specification(specification.clone())
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| classify(e, |_| None))
            },
        )
        .await?;
        Ok(())
    }

    /// A consistent GetItem of `key`, with the raw item.
    async fn get_item(&self, key: &str) -> Result<Option<Item>, LeaseError> {
        let table = self.table_for(key);
        let request = self
            .inner
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(item::key(key)))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let outcome = self
            .run(table, Kind::Read, "dynamodb:GetItem", || async {
                let output = request
                    .clone()
                    .send()
                    .await
                    .map_err(|e| classify(e, |_| None))?;
                self.inner
                    .counters
                    .record(Request::Get, output.consumed_capacity());
                Ok(output.item)
            })
            .await?;
        Ok(match outcome {
            Outcome::Done(item) => item,
            Outcome::Condition(_) => None,
        })
    }

    /// Interprets a failed condition on an existing-item write: `NotFound` when the lease is
    /// gone, otherwise `ConditionFailed` with the current lease (`Malformed` if it cannot be read).
    async fn condition_failed(
        &self,
        key: &str,
        old: Option<Box<Item>>,
    ) -> Result<LeaseError, LeaseError> {
        let current = match old {
            Some(item) => Some(*item),
            // The server did not return the item: read it to tell "missing" from "changed".
            None => self.get_item(key).await?,
        };
        Ok(match current {
            None => LeaseError::NotFound(key.to_owned()),
            Some(item) => {
                let lease = item_to_lease(&item)?;
                LeaseError::ConditionFailed {
                    key: key.to_owned(),
                    current: Some(Box::new(lease)),
                }
            }
        })
    }
}

impl DynamoLeaseTable {
    /// How many segments the next scan of the lease table uses.
    fn segments(&self) -> u32 {
        if let Some(segments) = self.inner.scan_segments {
            return segments.get();
        }
        let bytes = self
            .inner
            .last_scan_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, MAX_AUTO_SEGMENTS)
    }

    /// Every item of `table` (or of one `(segment, of)` of it), page by page, decoded, with its
    /// size; items that cannot be decoded are skipped with a warning.
    async fn scan_all(
        &self,
        table: &str,
        segment: Option<(u32, u32)>,
        consistency: Consistency,
    ) -> Result<Vec<(Lease, usize)>, LeaseError> {
        let mut leases = Vec::new();
        let mut start: Option<Item> = None;
        let consistent = consistency == Consistency::Strong;
        let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        loop {
            let request = self
                .inner
                .client
                .scan()
                .table_name(table)
                .consistent_read(consistent)
                .set_limit(self.inner.scan_page_size.map(|n| to_i32(n.get())))
                .set_segment(segment.filter(|(_, of)| *of > 1).map(|(s, _)| to_i32(s)))
                .set_total_segments(segment.filter(|(_, of)| *of > 1).map(|(_, of)| to_i32(of)))
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total);
            let kind = if table == self.workers_table() {
                Request::WorkersScan
            } else {
                Request::Scan
            };
            let outcome = self
                .run(table, Kind::Read, "dynamodb:Scan", || async {
                    let output = request
                        .clone()
                        .send()
                        .await
                        .map_err(|e| classify(e, |_| None))?;
                    self.inner.counters.record(kind, output.consumed_capacity());
                    Ok(output)
                })
                .await?;
            let Outcome::Done(output) = outcome else {
                break;
            };
            for item in output.items() {
                match item_to_lease(item) {
                    Ok(lease) => leases.push((lease, capacity::item_size(item))),
                    Err(error) => tracing::warn!(
                        table,
                        lease = item_key(item).unwrap_or("<unknown>"),
                        %error,
                        "skipping a lease item that cannot be decoded"
                    ),
                }
            }
            match output.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        Ok(leases)
    }
}

/// The most segments an automatically sized scan uses.
const MAX_AUTO_SEGMENTS: u32 = 16;

/// Checks the table has hash key `leaseKey` of type S and no range key.
fn check_key_schema(table: &str, description: &TableDescription) -> Result<(), LeaseError> {
    let problem = |what: String| {
        Err(LeaseError::Misconfigured(format!(
            "table {table} is not a KCL lease table: {what} (expected hash key {} of type S and \
             no range key)",
            attributes::LEASE_KEY
        )))
    };
    let keys = description.key_schema();
    let hash: Vec<&KeySchemaElement> = keys
        .iter()
        .filter(|k| k.key_type() == &KeyType::Hash)
        .collect();
    let range: Vec<&KeySchemaElement> = keys
        .iter()
        .filter(|k| k.key_type() == &KeyType::Range)
        .collect();
    match hash.as_slice() {
        [only] if only.attribute_name() == attributes::LEASE_KEY => {}
        [only] => return problem(format!("its hash key is {:?}", only.attribute_name())),
        _ => return problem("it has no hash key".to_owned()),
    }
    if let Some(range) = range.first() {
        return problem(format!("it has a range key {:?}", range.attribute_name()));
    }
    let key_type = description
        .attribute_definitions()
        .iter()
        .find(|d| d.attribute_name() == attributes::LEASE_KEY)
        .map(|d| d.attribute_type().clone());
    match key_type {
        Some(ScalarAttributeType::S) => Ok(()),
        Some(other) => problem(format!(
            "its hash key {} has type {}",
            attributes::LEASE_KEY,
            other.as_str()
        )),
        None => problem(format!(
            "its hash key {} has no attribute definition",
            attributes::LEASE_KEY
        )),
    }
}

#[async_trait]
impl LeaseTable for DynamoLeaseTable {
    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.inner.table_name, lease = %lease.key))]
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let item = lease_to_item(lease)?;
        let table = self.table_for(&lease.key);
        let request = self
            .inner
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#key)")
            .expression_attribute_names("#key", attributes::LEASE_KEY)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let outcome = self
            .run(table, Kind::Write, "dynamodb:PutItem", || async {
                let output = request.clone().send().await.map_err(|e| {
                    classify(e, |e| match e {
                        PutItemError::ConditionalCheckFailedException(c) => Some(c.item.clone()),
                        _ => None,
                    })
                })?;
                self.inner
                    .counters
                    .record(Request::Put, output.consumed_capacity());
                Ok(())
            })
            .await?;
        Ok(matches!(outcome, Outcome::Done(())))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.inner.table_name))]
    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        let segments = self.segments();
        let scans = (0..segments).map(|segment| {
            self.scan_all(self.table(), Some((segment, segments)), Consistency::Strong)
        });
        let (leases, workers) = futures::future::try_join(
            futures::future::try_join_all(scans),
            self.scan_all(self.workers_table(), None, Consistency::Strong),
        )
        .await?;
        let mut bytes = 0;
        let mut rows = Vec::new();
        for (lease, size) in leases.into_iter().flatten() {
            bytes += size;
            // A heartbeat row left in the lease table by Kinesin 0.1 before the workers table
            // existed: heartbeat rows live in the workers table now.
            if lease.heartbeat_of().is_none() {
                rows.push(lease);
            }
        }
        self.inner
            .last_scan_bytes
            .store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        rows.extend(workers.into_iter().map(|(row, _)| row));
        Ok(rows)
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.inner.workers_table))]
    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        let rows = self
            .scan_all(self.workers_table(), None, consistency)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(row, _)| row)
            .filter(|row| row.heartbeat_of().is_some())
            .collect())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.inner.table_name, lease = %key))]
    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        if key.is_empty() {
            // DynamoDB refuses an empty key value; no lease can have one (creation refuses it).
            return Ok(None);
        }
        match self.get_item(key).await? {
            Some(item) => item_to_lease(&item).map(Some),
            None => Ok(None),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.inner.table_name, lease = %key))]
    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        if key.is_empty() {
            return Err(LeaseError::NotFound(String::new()));
        }
        let mut expression = Expression::default();
        let Some(update_expression) = expression.update(key, expect, update)? else {
            // Nothing to write: a consistent read checked against the expectation.
            let lease = self
                .get(key)
                .await?
                .ok_or_else(|| LeaseError::NotFound(key.to_owned()))?;
            return if expect.matches(&lease) {
                Ok(lease)
            } else {
                Err(LeaseError::ConditionFailed {
                    key: key.to_owned(),
                    current: Some(Box::new(lease)),
                })
            };
        };
        let condition = expression.condition(expect);
        let table = self.table_for(key);
        let request = self
            .inner
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(item::key(key)))
            .update_expression(update_expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expression.names))
            .set_expression_attribute_values(if expression.values.is_empty() {
                None
            } else {
                Some(expression.values)
            })
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let outcome = self
            .run(table, Kind::Write, "dynamodb:UpdateItem", || async {
                let output = request.clone().send().await.map_err(|e| {
                    classify(e, |e| match e {
                        UpdateItemError::ConditionalCheckFailedException(c) => Some(c.item.clone()),
                        _ => None,
                    })
                })?;
                self.inner
                    .counters
                    .record(Request::Update, output.consumed_capacity());
                Ok(output.attributes)
            })
            .await?;
        match outcome {
            Outcome::Done(Some(item)) => item_to_lease(&item),
            Outcome::Done(None) => Err(LeaseError::Store(
                "UpdateItem with ReturnValues=ALL_NEW returned no attributes".into(),
            )),
            Outcome::Condition(old) => Err(self.condition_failed(key, old).await?),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(table = %self.inner.table_name, lease = %key))]
    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        if key.is_empty() {
            return Err(LeaseError::NotFound(String::new()));
        }
        let mut expression = Expression::default();
        let condition = expression.condition(expect);
        let table = self.table_for(key);
        let request = self
            .inner
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(item::key(key)))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(expression.names))
            .set_expression_attribute_values(if expression.values.is_empty() {
                None
            } else {
                Some(expression.values)
            })
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        let outcome = self
            .run(table, Kind::Write, "dynamodb:DeleteItem", || async {
                let output = request.clone().send().await.map_err(|e| {
                    classify(e, |e| match e {
                        DeleteItemError::ConditionalCheckFailedException(c) => Some(c.item.clone()),
                        _ => None,
                    })
                })?;
                self.inner
                    .counters
                    .record(Request::Delete, output.consumed_capacity());
                Ok(())
            })
            .await?;
        match outcome {
            Outcome::Done(()) => Ok(()),
            Outcome::Condition(old) => Err(self.condition_failed(key, old).await?),
        }
    }
    fn application(&self) -> Option<&str> {
        Some(&self.inner.application)
    }
}
