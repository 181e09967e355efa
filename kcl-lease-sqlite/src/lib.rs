//! A SQLite [`LeaseTable`]: several worker processes on one host share one lease file.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kcl_core::lease::LeaseError> {
//! use kcl_lease_sqlite::SqliteLeaseTable;
//! let table = SqliteLeaseTable::open("/var/lib/my-app/leases.db", "my-application").await?;
//! # Ok(()) }
//! ```
//!
//! # File layout
//!
//! The file is an ordinary SQLite database that belongs to this crate alone: its header carries
//! `PRAGMA application_id` [`APPLICATION_ID`] (`"KCLL"`) and `PRAGMA user_version`
//! [`SCHEMA_VERSION`]. It holds one table, `kcl_leases` (a `STRICT`, `WITHOUT ROWID` table keyed by
//! `(application, lease_key)`), so several applications can share a file: each
//! [`SqliteLeaseTable`] sees only the rows of its application name. Columns:
//!
//! | column | type | content |
//! |---|---|---|
//! | `application` | TEXT | application name (see [`SqliteLeaseTable::open`] for the rules) |
//! | `lease_key` | TEXT | [`Lease::key`] |
//! | `owner` | TEXT NULL | [`Lease::owner`]; NULL when unassigned |
//! | `counter` | INTEGER | [`Lease::counter`] |
//! | `checkpoint` | TEXT | sentinel name (`TRIM_HORIZON`, ...) or the decimal sequence number |
//! | `checkpoint_sub_sequence` | INTEGER | sub-sequence number of the checkpoint |
//! | `pending_checkpoint` | TEXT NULL | like `checkpoint`; NULL when nothing is prepared |
//! | `pending_checkpoint_sub_sequence` | INTEGER NULL | set exactly when `pending_checkpoint` is |
//! | `pending_checkpoint_state` | BLOB NULL | NULL = no state; a zero-length BLOB = empty state |
//! | `owner_switches_since_checkpoint` | INTEGER | [`Lease::owner_switches_since_checkpoint`] |
//! | `parent_shard_ids` | TEXT | shard ids joined by `,`; `''` when there are none |
//! | `child_shard_ids` | TEXT | same encoding |
//! | `starting_hash_key`, `ending_hash_key` | TEXT NULL | decimal `u128`; both NULL or both set |
//! | `checkpoint_owner` | TEXT NULL | [`Lease::checkpoint_owner`] |
//! | `load` | INTEGER NULL | [`Lease::load`] (worker heartbeat rows) |
//!
//! Sequence numbers are TEXT because they have up to 129 digits. The `u64` counters
//! (`counter`, the sub-sequence numbers, the owner switches) are stored in SQLite's 64-bit INTEGER
//! with the same bits: values up to `i64::MAX` read as themselves, larger ones (never seen in
//! practice) read back negative in the `sqlite3` shell but round-trip exactly. Shard ids never
//! contain commas (Kinesis allows `[a-zA-Z0-9_.-]`); a shard id that is empty or contains a comma is
//! refused when writing ([`LeaseError::Malformed`]) rather than stored ambiguously.
//!
//! # Concurrency: WAL and several processes
//!
//! The file is switched to write-ahead logging (`journal_mode=WAL`, with `synchronous=FULL` so a
//! committed checkpoint survives a power failure): readers never block writers or each other.
//! Every conditional write runs in its own `BEGIN IMMEDIATE` transaction that reads the row, checks
//! the [`Expectation`], applies [`LeaseUpdate::apply`] and writes the row back, so two processes (or
//! two handles in one process) can never both win a conditional write. A writer waiting for
//! another one waits up to [`SqliteOptions::busy_timeout`], then fails with the retryable
//! [`LeaseError::Unavailable`]. WAL needs shared memory between the processes, so the file must be
//! on a local file system (not NFS), used by processes of one host.
//!
//! Each [`SqliteLeaseTable`] owns one connection behind a mutex; every call runs on Tokio's
//! blocking thread pool ([`tokio::task::spawn_blocking`]), so async workers are never blocked by
//! SQLite. Clones share the connection; open the file again for an independent connection.
//!
//! # Errors
//!
//! * A path that cannot be opened or created (missing directory, a directory, no permission, a
//!   read-only file), a file that is not a SQLite database, a SQLite database of something else,
//!   or one written by a newer version of this crate: [`LeaseError::Misconfigured`] naming the path
//!   and the problem. Nothing is ever reset or overwritten.
//! * A row that cannot be decoded: [`LeaseError::Malformed`] naming the lease key and the column,
//!   from `get`, `update` and `delete` of that lease. [`LeaseTable::list`] skips malformed rows and
//!   logs each at `warn` level, so the other leases keep working. A malformed row can still be
//!   deleted when the expectation matches its `owner` and `counter` columns.
//! * The database stayed locked for longer than the busy timeout: [`LeaseError::Unavailable`].
#![deny(missing_docs)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kcl_core::lease::{
    Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseUpdate, PendingCheckpoint,
    WORKER_KEY_PREFIX,
};
use kcl_core::record::{ExtendedSequenceNumber, HashKeyRange, parse_hash_key};
use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior, params};

/// The `PRAGMA application_id` of a lease file: the ASCII bytes `"KCLL"`.
pub const APPLICATION_ID: i32 = 0x4B43_4C4C;

/// The schema version this crate writes and reads (`PRAGMA user_version`). Version 1 files
/// (without the `load` column) are upgraded in place when opened.
pub const SCHEMA_VERSION: i32 = 2;

/// The busy timeout used by [`SqliteOptions::default`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const TABLE: &str = "kcl_leases";

const CREATE_SCHEMA: &str = "
CREATE TABLE kcl_leases (
    application TEXT NOT NULL,
    lease_key TEXT NOT NULL,
    owner TEXT,
    counter INTEGER NOT NULL,
    checkpoint TEXT NOT NULL,
    checkpoint_sub_sequence INTEGER NOT NULL,
    pending_checkpoint TEXT,
    pending_checkpoint_sub_sequence INTEGER,
    pending_checkpoint_state BLOB,
    owner_switches_since_checkpoint INTEGER NOT NULL,
    parent_shard_ids TEXT NOT NULL,
    child_shard_ids TEXT NOT NULL,
    starting_hash_key TEXT,
    ending_hash_key TEXT,
    checkpoint_owner TEXT,
    load INTEGER,
    PRIMARY KEY (application, lease_key)
) STRICT, WITHOUT ROWID;
";

/// `(name, declared type)` of every column, in table order.
const SCHEMA_COLUMNS: [(&str, &str); 16] = [
    ("application", "TEXT"),
    ("lease_key", "TEXT"),
    ("owner", "TEXT"),
    ("counter", "INTEGER"),
    ("checkpoint", "TEXT"),
    ("checkpoint_sub_sequence", "INTEGER"),
    ("pending_checkpoint", "TEXT"),
    ("pending_checkpoint_sub_sequence", "INTEGER"),
    ("pending_checkpoint_state", "BLOB"),
    ("owner_switches_since_checkpoint", "INTEGER"),
    ("parent_shard_ids", "TEXT"),
    ("child_shard_ids", "TEXT"),
    ("starting_hash_key", "TEXT"),
    ("ending_hash_key", "TEXT"),
    ("checkpoint_owner", "TEXT"),
    ("load", "INTEGER"),
];

/// Upgrades a version 1 file: the `load` column is new (NULL for every existing row).
const UPGRADE_FROM_1: &str = "ALTER TABLE kcl_leases ADD COLUMN load INTEGER;";

/// The lease columns (everything but `application`), in the order `RawLease` reads them.
const LEASE_COLUMNS: &str = "lease_key, owner, counter, checkpoint, checkpoint_sub_sequence, \
     pending_checkpoint, pending_checkpoint_sub_sequence, pending_checkpoint_state, \
     owner_switches_since_checkpoint, parent_shard_ids, child_shard_ids, starting_hash_key, \
     ending_hash_key, checkpoint_owner, load";

/// Options for [`SqliteLeaseTable::open_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// How long a write waits for another connection's write transaction to finish before failing
    /// with [`LeaseError::Unavailable`]. Default [`DEFAULT_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

impl SqliteOptions {
    /// Sets [`SqliteOptions::busy_timeout`].
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

/// A [`LeaseTable`] stored in a SQLite file, shared by every process of one host that opens the
/// same file with the same application name. See the [crate documentation](crate).
///
/// Cloning is cheap and shares the connection. Dropping the last clone closes the connection on
/// the dropping thread; the last connection to the file also checkpoints the WAL into the main
/// file, a short blocking write.
#[derive(Clone)]
pub struct SqliteLeaseTable {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    application: String,
    busy_timeout: Duration,
    conn: Mutex<Connection>,
}

impl fmt::Debug for SqliteLeaseTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteLeaseTable")
            .field("path", &self.inner.path)
            .field("application", &self.inner.application)
            .finish_non_exhaustive()
    }
}

impl SqliteLeaseTable {
    /// Opens (creating it if needed) the lease file at `path` for `application`, with default
    /// [`SqliteOptions`]. The blocking work runs on Tokio's blocking pool.
    ///
    /// `application` is 3 to 255 characters from `[A-Za-z0-9_.-]` (the rules of a DynamoDB table
    /// name, which Java KCL names after the application).
    ///
    /// Fails with [`LeaseError::Misconfigured`] when the name is invalid, the file cannot be opened
    /// or created for writing, is not a SQLite database, or is a SQLite database of something else
    /// or of a newer schema version.
    pub async fn open(path: impl AsRef<Path>, application: &str) -> Result<Self, LeaseError> {
        Self::open_with(path, application, SqliteOptions::default()).await
    }

    /// [`SqliteLeaseTable::open`] with explicit options.
    pub async fn open_with(
        path: impl AsRef<Path>,
        application: &str,
        options: SqliteOptions,
    ) -> Result<Self, LeaseError> {
        let path = path.as_ref().to_path_buf();
        let application = application.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(path, &application, options))
            .await
            .map_err(|e| LeaseError::Store(Box::new(e)))?
    }

    /// [`SqliteLeaseTable::open_with`] on the calling thread (blocks; for synchronous setup code).
    pub fn open_blocking(
        path: impl AsRef<Path>,
        application: &str,
        options: SqliteOptions,
    ) -> Result<Self, LeaseError> {
        let path = path.as_ref().to_path_buf();
        validate_application(application)?;
        let misconfigured = |what: String| {
            LeaseError::Misconfigured(format!("SQLite lease file {}: {what}", path.display()))
        };
        if path.is_dir() {
            return Err(misconfigured("is a directory, not a file".into()));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| misconfigured(format!("cannot open or create it for writing: {e}")))?;
        let inner_err = |e: rusqlite::Error| map_error(&path, options.busy_timeout, "open", e);
        conn.busy_timeout(options.busy_timeout).map_err(inner_err)?;
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(inner_err)? {
            return Err(misconfigured(
                "it can only be opened read-only (no write permission)".into(),
            ));
        }
        init_schema(&mut conn, &path).map_err(|e| match e {
            SchemaError::Sql(e) => inner_err(e),
            SchemaError::Wrong(what) => misconfigured(what),
        })?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(inner_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(misconfigured(format!(
                "cannot switch to WAL journal mode (still {mode}); is it on a network file system?"
            )));
        }
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(inner_err)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                application: application.to_owned(),
                busy_timeout: options.busy_timeout,
                conn: Mutex::new(conn),
            }),
        })
    }

    /// The path of the lease file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The application name whose leases this handle sees.
    pub fn application(&self) -> &str {
        &self.inner.application
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn run<R, F>(&self, operation: &'static str, f: F) -> Result<R, LeaseError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection, &Inner) -> Result<R, Failure> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock means a panic in another call; the transaction it held was rolled
            // back when its guard dropped, so the connection is usable.
            let mut conn = inner.conn.lock().unwrap_or_else(PoisonError::into_inner);
            if !conn.is_autocommit() {
                // Defensive: never run inside a transaction a failed call left open.
                conn.execute_batch("ROLLBACK")
                    .map_err(|e| map_error(&inner.path, inner.busy_timeout, operation, e))?;
            }
            f(&mut conn, &inner).map_err(|failure| match failure {
                Failure::Lease(e) => e,
                Failure::Sql(e) => map_error(&inner.path, inner.busy_timeout, operation, e),
            })
        })
        .await
        .map_err(|e| LeaseError::Store(Box::new(e)))?
    }
}

/// An error inside a blocking call: a lease-level answer, or a SQLite error mapped afterwards.
enum Failure {
    Lease(LeaseError),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<LeaseError> for Failure {
    fn from(e: LeaseError) -> Self {
        Self::Lease(e)
    }
}

fn validate_application(name: &str) -> Result<(), LeaseError> {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if (3..=255).contains(&name.len()) && valid_chars {
        Ok(())
    } else {
        Err(LeaseError::Misconfigured(format!(
            "invalid application name {name:?}: use 3 to 255 characters from [A-Za-z0-9_.-]"
        )))
    }
}

/// Maps a SQLite error: busy → retryable, unusable file → misconfigured, else a store error.
fn map_error(
    path: &Path,
    busy_timeout: Duration,
    operation: &str,
    e: rusqlite::Error,
) -> LeaseError {
    let code = match &e {
        rusqlite::Error::SqliteFailure(failure, _) => Some(failure.code),
        _ => None,
    };
    match code {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            LeaseError::Unavailable(format!(
                "SQLite lease file {}: {operation}: still locked by another writer after {busy_timeout:?}: {e}",
                path.display()
            ))
        }
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            LeaseError::Misconfigured(format!(
                "SQLite lease file {}: not a usable SQLite database (corrupt or another file type): {e}",
                path.display()
            ))
        }
        Some(
            ErrorCode::CannotOpen
            | ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::NoLargeFileSupport,
        ) => LeaseError::Misconfigured(format!(
            "SQLite lease file {}: {operation}: cannot write the file: {e}",
            path.display()
        )),
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure) => LeaseError::Unavailable(format!(
            "SQLite lease file {}: {operation}: I/O failure: {e}",
            path.display()
        )),
        _ => LeaseError::Store(Box::new(e)),
    }
}

enum SchemaError {
    Sql(rusqlite::Error),
    Wrong(String),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

/// Creates the schema in an empty file, or checks the schema of an existing lease file. Never
/// modifies a file that is not empty and not a lease file.
fn init_schema(conn: &mut Connection, path: &Path) -> Result<(), SchemaError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let application_id: i32 = tx.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let version: i32 = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let objects: Vec<String> = {
        let mut stmt = tx.prepare(
            "SELECT type || ' ' || name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        stmt.query_map([], |row| row.get(0))?
            .collect::<Result<_, _>>()?
    };
    if application_id == APPLICATION_ID {
        if version > SCHEMA_VERSION {
            return Err(SchemaError::Wrong(format!(
                "lease schema version {version} was written by a newer kcl-lease-sqlite (this one \
                 reads version {SCHEMA_VERSION}); upgrade this program or use another file"
            )));
        }
        if version == 1 {
            tracing::info!(path = %path.display(), "upgrading the SQLite lease file to schema version 2");
            tx.execute_batch(UPGRADE_FROM_1)?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
        } else if version != SCHEMA_VERSION {
            return Err(SchemaError::Wrong(format!(
                "unknown lease schema version {version} (expected {SCHEMA_VERSION})"
            )));
        }
        check_columns(&tx)?;
    } else if application_id == 0 && version == 0 && objects.is_empty() {
        tracing::info!(path = %path.display(), "creating SQLite lease table schema");
        tx.execute_batch(CREATE_SCHEMA)?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
        ))?;
    } else {
        return Err(SchemaError::Wrong(format!(
            "not a kcl-core lease file: it is a SQLite database of something else (application_id \
             {application_id:#x}, user_version {version}, objects [{}]); use a separate file",
            objects.join(", ")
        )));
    }
    tx.commit()?;
    Ok(())
}

fn check_columns(conn: &Connection) -> Result<(), SchemaError> {
    let mut stmt = conn.prepare("SELECT name, type FROM pragma_table_info(?1) ORDER BY cid")?;
    let columns: Vec<(String, String)> = stmt
        .query_map([TABLE], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let expected: Vec<(String, String)> = SCHEMA_COLUMNS
        .iter()
        .map(|(name, ty)| ((*name).to_owned(), (*ty).to_owned()))
        .collect();
    if columns == expected {
        Ok(())
    } else if columns.is_empty() {
        Err(SchemaError::Wrong(format!(
            "marked as a kcl-core lease file but has no {TABLE} table"
        )))
    } else {
        let found: Vec<String> = columns.iter().map(|(n, t)| format!("{n} {t}")).collect();
        Err(SchemaError::Wrong(format!(
            "table {TABLE} has unexpected columns [{}]",
            found.join(", ")
        )))
    }
}

// ------------------------------------------------------------------------------------------------
// Encoding

fn malformed(key: &str, column: &str, reason: impl Into<String>) -> LeaseError {
    LeaseError::Malformed {
        key: key.to_owned(),
        attribute: column.to_owned(),
        reason: reason.into(),
    }
}

/// `u64` ↔ SQLite INTEGER: the same 64 bits.
fn u64_to_sql(value: u64) -> i64 {
    value as i64
}

fn u64_from_sql(value: i64) -> u64 {
    value as u64
}

fn encode_ids(key: &str, column: &str, ids: &[String]) -> Result<String, LeaseError> {
    if let Some(bad) = ids.iter().find(|id| id.is_empty() || id.contains(',')) {
        return Err(malformed(
            key,
            column,
            format!("shard id {bad:?} cannot be stored: it is empty or contains a comma"),
        ));
    }
    Ok(ids.join(","))
}

fn decode_ids(key: &str, column: &str, text: &str) -> Result<Vec<String>, LeaseError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = text.split(',').map(str::to_owned).collect();
    if ids.iter().any(String::is_empty) {
        return Err(malformed(
            key,
            column,
            format!("{text:?} contains an empty shard id"),
        ));
    }
    Ok(ids)
}

/// A lease as stored: one row, column by column.
struct RawLease {
    key: String,
    owner: Option<String>,
    counter: i64,
    checkpoint: String,
    checkpoint_sub_sequence: i64,
    pending_checkpoint: Option<String>,
    pending_checkpoint_sub_sequence: Option<i64>,
    pending_checkpoint_state: Option<Vec<u8>>,
    owner_switches_since_checkpoint: i64,
    parent_shard_ids: String,
    child_shard_ids: String,
    starting_hash_key: Option<String>,
    ending_hash_key: Option<String>,
    checkpoint_owner: Option<String>,
    load: Option<i64>,
}

impl RawLease {
    fn encode(lease: &Lease) -> Result<Self, LeaseError> {
        let key = &lease.key;
        let (pending, pending_sub, pending_state) = match &lease.pending_checkpoint {
            Some(PendingCheckpoint { position, state }) => (
                Some(position.checkpoint_text().to_owned()),
                Some(u64_to_sql(position.sub_sequence())),
                state.as_ref().map(|s| s.to_vec()),
            ),
            None => (None, None, None),
        };
        Ok(Self {
            key: key.clone(),
            owner: lease.owner.clone(),
            counter: u64_to_sql(lease.counter),
            checkpoint: lease.checkpoint.checkpoint_text().to_owned(),
            checkpoint_sub_sequence: u64_to_sql(lease.checkpoint.sub_sequence()),
            pending_checkpoint: pending,
            pending_checkpoint_sub_sequence: pending_sub,
            pending_checkpoint_state: pending_state,
            owner_switches_since_checkpoint: u64_to_sql(lease.owner_switches_since_checkpoint),
            parent_shard_ids: encode_ids(key, "parent_shard_ids", &lease.parent_shard_ids)?,
            child_shard_ids: encode_ids(key, "child_shard_ids", &lease.child_shard_ids)?,
            starting_hash_key: lease.hash_key_range.map(|r| r.start.to_string()),
            ending_hash_key: lease.hash_key_range.map(|r| r.end.to_string()),
            checkpoint_owner: lease.checkpoint_owner.clone(),
            load: lease.load.map(u64_to_sql),
        })
    }

    /// Reads a row selected with [`LEASE_COLUMNS`]. A value of the wrong type is `Malformed`.
    fn read(row: &rusqlite::Row<'_>) -> Result<Self, Failure> {
        let key: String = row.get(0)?;
        let get = |index: usize, column: &str| -> Result<_, LeaseError> {
            row.get_ref(index)
                .map_err(|e| malformed(&key, column, e.to_string()))
        };
        let text = |index: usize, column: &str| -> Result<Option<String>, LeaseError> {
            get(index, column)?
                .as_str_or_null()
                .map(|s| s.map(str::to_owned))
                .map_err(|e| malformed(&key, column, format!("expected TEXT: {e}")))
        };
        let required_text = |index: usize, column: &str| -> Result<String, LeaseError> {
            text(index, column)?.ok_or_else(|| malformed(&key, column, "is NULL"))
        };
        let integer = |index: usize, column: &str| -> Result<Option<i64>, LeaseError> {
            get(index, column)?
                .as_i64_or_null()
                .map_err(|e| malformed(&key, column, format!("expected INTEGER: {e}")))
        };
        let required_integer = |index: usize, column: &str| -> Result<i64, LeaseError> {
            integer(index, column)?.ok_or_else(|| malformed(&key, column, "is NULL"))
        };
        let state = get(7, "pending_checkpoint_state")?
            .as_blob_or_null()
            .map(|b| b.map(<[u8]>::to_vec))
            .map_err(|e| {
                malformed(
                    &key,
                    "pending_checkpoint_state",
                    format!("expected BLOB: {e}"),
                )
            })?;
        Ok(Self {
            owner: text(1, "owner")?,
            counter: required_integer(2, "counter")?,
            checkpoint: required_text(3, "checkpoint")?,
            checkpoint_sub_sequence: required_integer(4, "checkpoint_sub_sequence")?,
            pending_checkpoint: text(5, "pending_checkpoint")?,
            pending_checkpoint_sub_sequence: integer(6, "pending_checkpoint_sub_sequence")?,
            pending_checkpoint_state: state,
            owner_switches_since_checkpoint: required_integer(
                8,
                "owner_switches_since_checkpoint",
            )?,
            parent_shard_ids: required_text(9, "parent_shard_ids")?,
            child_shard_ids: required_text(10, "child_shard_ids")?,
            starting_hash_key: text(11, "starting_hash_key")?,
            ending_hash_key: text(12, "ending_hash_key")?,
            checkpoint_owner: text(13, "checkpoint_owner")?,
            load: integer(14, "load")?,
            key,
        })
    }

    fn decode(&self) -> Result<Lease, LeaseError> {
        let key = &self.key;
        let position = |column: &str, text: &str, sub: i64| {
            ExtendedSequenceNumber::from_parts(text, u64_from_sql(sub))
                .map_err(|e| malformed(key, column, e.to_string()))
        };
        let checkpoint = position("checkpoint", &self.checkpoint, self.checkpoint_sub_sequence)?;
        let pending_checkpoint = match (
            &self.pending_checkpoint,
            self.pending_checkpoint_sub_sequence,
        ) {
            (Some(text), Some(sub)) => Some(PendingCheckpoint {
                position: position("pending_checkpoint", text, sub)?,
                state: self.pending_checkpoint_state.clone().map(Bytes::from),
            }),
            (None, None) if self.pending_checkpoint_state.is_none() => None,
            (None, _) => {
                return Err(malformed(
                    key,
                    "pending_checkpoint",
                    "is NULL but its sub-sequence number or state is set",
                ));
            }
            (Some(_), None) => {
                return Err(malformed(
                    key,
                    "pending_checkpoint_sub_sequence",
                    "is NULL but pending_checkpoint is set",
                ));
            }
        };
        let hash_key = |column: &str, text: &str| {
            parse_hash_key(text).map_err(|e| malformed(key, column, e.to_string()))
        };
        let hash_key_range = match (&self.starting_hash_key, &self.ending_hash_key) {
            (Some(start), Some(end)) => Some(HashKeyRange {
                start: hash_key("starting_hash_key", start)?,
                end: hash_key("ending_hash_key", end)?,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(malformed(
                    key,
                    "ending_hash_key",
                    "is NULL but starting_hash_key is set",
                ));
            }
            (None, Some(_)) => {
                return Err(malformed(
                    key,
                    "starting_hash_key",
                    "is NULL but ending_hash_key is set",
                ));
            }
        };
        Ok(Lease {
            key: key.clone(),
            owner: self.owner.clone(),
            counter: u64_from_sql(self.counter),
            checkpoint,
            pending_checkpoint,
            owner_switches_since_checkpoint: u64_from_sql(self.owner_switches_since_checkpoint),
            parent_shard_ids: decode_ids(key, "parent_shard_ids", &self.parent_shard_ids)?,
            child_shard_ids: decode_ids(key, "child_shard_ids", &self.child_shard_ids)?,
            hash_key_range,
            checkpoint_owner: self.checkpoint_owner.clone(),
            load: self.load.map(u64_from_sql),
        })
    }
}

fn select_one(
    conn: &Connection,
    application: &str,
    key: &str,
) -> Result<Option<RawLease>, Failure> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {LEASE_COLUMNS} FROM {TABLE} WHERE application = ?1 AND lease_key = ?2"
    ))?;
    let mut rows = stmt.query(params![application, key])?;
    match rows.next()? {
        Some(row) => Ok(Some(RawLease::read(row)?)),
        None => Ok(None),
    }
}

fn insert(conn: &Connection, application: &str, raw: &RawLease) -> Result<bool, Failure> {
    let mut stmt = conn.prepare_cached(&format!(
        "INSERT INTO {TABLE} (application, {LEASE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
         ON CONFLICT (application, lease_key) DO NOTHING"
    ))?;
    let changed = stmt.execute(params![
        application,
        raw.key,
        raw.owner,
        raw.counter,
        raw.checkpoint,
        raw.checkpoint_sub_sequence,
        raw.pending_checkpoint,
        raw.pending_checkpoint_sub_sequence,
        raw.pending_checkpoint_state,
        raw.owner_switches_since_checkpoint,
        raw.parent_shard_ids,
        raw.child_shard_ids,
        raw.starting_hash_key,
        raw.ending_hash_key,
        raw.checkpoint_owner,
        raw.load,
    ])?;
    Ok(changed == 1)
}

fn overwrite(conn: &Connection, application: &str, raw: &RawLease) -> Result<(), Failure> {
    let mut stmt = conn.prepare_cached(&format!(
        "UPDATE {TABLE} SET owner = ?3, counter = ?4, checkpoint = ?5, \
         checkpoint_sub_sequence = ?6, pending_checkpoint = ?7, \
         pending_checkpoint_sub_sequence = ?8, pending_checkpoint_state = ?9, \
         owner_switches_since_checkpoint = ?10, parent_shard_ids = ?11, child_shard_ids = ?12, \
         starting_hash_key = ?13, ending_hash_key = ?14, checkpoint_owner = ?15, load = ?16 \
         WHERE application = ?1 AND lease_key = ?2"
    ))?;
    let changed = stmt.execute(params![
        application,
        raw.key,
        raw.owner,
        raw.counter,
        raw.checkpoint,
        raw.checkpoint_sub_sequence,
        raw.pending_checkpoint,
        raw.pending_checkpoint_sub_sequence,
        raw.pending_checkpoint_state,
        raw.owner_switches_since_checkpoint,
        raw.parent_shard_ids,
        raw.child_shard_ids,
        raw.starting_hash_key,
        raw.ending_hash_key,
        raw.checkpoint_owner,
        raw.load,
    ])?;
    if changed == 1 {
        Ok(())
    } else {
        // Impossible inside the transaction that just read the row.
        Err(LeaseError::Store(
            format!(
                "lease {}: UPDATE changed {changed} rows, expected 1",
                raw.key
            )
            .into(),
        )
        .into())
    }
}

/// Decodes every row of a `SELECT {LEASE_COLUMNS}`, skipping (and logging) malformed ones.
fn read_rows(mut rows: rusqlite::Rows<'_>, inner: &Inner) -> Result<Vec<Lease>, Failure> {
    let mut leases = Vec::new();
    while let Some(row) = rows.next()? {
        match RawLease::read(row).and_then(|raw| raw.decode().map_err(Failure::from)) {
            Ok(lease) => leases.push(lease),
            Err(Failure::Lease(e @ LeaseError::Malformed { .. })) => {
                tracing::warn!(
                    path = %inner.path.display(),
                    application = %inner.application,
                    error = %e,
                    "skipping a malformed lease row; the other leases keep working"
                );
            }
            Err(other) => return Err(other),
        }
    }
    Ok(leases)
}

/// The smallest string greater than every string starting with `prefix` (ASCII, last byte + 1).
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    if let Some(last) = bytes.last_mut() {
        *last += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[async_trait]
impl LeaseTable for SqliteLeaseTable {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let raw = RawLease::encode(lease)?;
        self.run("create_if_absent", move |conn, inner| {
            insert(conn, &inner.application, &raw)
        })
        .await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.run("list", |conn, inner| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM {TABLE} WHERE application = ?1 ORDER BY lease_key"
            ))?;
            let rows = stmt.query([&inner.application])?;
            read_rows(rows, inner)
        })
        .await
    }

    /// The heartbeat rows, read by key range on the primary key (every worker calls this every
    /// few seconds; the shard leases are not touched). Always strongly consistent.
    async fn list_workers(&self, _consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        self.run("list_workers", |conn, inner| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {LEASE_COLUMNS} FROM {TABLE} WHERE application = ?1 \
                 AND lease_key >= ?2 AND lease_key < ?3 ORDER BY lease_key"
            ))?;
            let rows = stmt.query(params![
                &inner.application,
                WORKER_KEY_PREFIX,
                prefix_end(WORKER_KEY_PREFIX)
            ])?;
            read_rows(rows, inner)
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        let key = key.to_owned();
        self.run("get", move |conn, inner| {
            match select_one(conn, &inner.application, &key)? {
                Some(raw) => Ok(Some(raw.decode()?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        let key = key.to_owned();
        let expect = expect.clone();
        let update = update.clone();
        self.run("update", move |conn, inner| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = select_one(&tx, &inner.application, &key)?
                .ok_or_else(|| LeaseError::NotFound(key.clone()))?
                .decode()?;
            if !expect.matches(&current) {
                return Err(LeaseError::ConditionFailed {
                    key,
                    current: Some(Box::new(current)),
                }
                .into());
            }
            let mut next = current;
            update.apply(&mut next);
            overwrite(&tx, &inner.application, &RawLease::encode(&next)?)?;
            tx.commit()?;
            Ok(next)
        })
        .await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        let key = key.to_owned();
        let expect = expect.clone();
        self.run("delete", move |conn, inner| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let raw = select_one(&tx, &inner.application, &key)?
                .ok_or_else(|| LeaseError::NotFound(key.clone()))?;
            match raw.decode() {
                Ok(current) if !expect.matches(&current) => {
                    return Err(LeaseError::ConditionFailed {
                        key,
                        current: Some(Box::new(current)),
                    }
                    .into());
                }
                Ok(_) => {}
                // A malformed lease can still be deleted: check the expectation on the columns
                // that are readable.
                Err(_) => {
                    let matches = expect
                        .counter
                        .is_none_or(|c| c == u64_from_sql(raw.counter))
                        && expect.owner.as_ref().is_none_or(|o| *o == raw.owner);
                    if !matches {
                        return Err(LeaseError::condition_failed(key).into());
                    }
                }
            }
            let mut stmt = tx.prepare_cached(&format!(
                "DELETE FROM {TABLE} WHERE application = ?1 AND lease_key = ?2"
            ))?;
            stmt.execute(params![inner.application, key])?;
            drop(stmt);
            tx.commit()?;
            Ok(())
        })
        .await
    }
    fn application(&self) -> Option<&str> {
        Some(&self.inner.application)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_names_are_validated() {
        for good in ["abc", "my-app_1.prod", &"a".repeat(255)] {
            assert!(validate_application(good).is_ok(), "{good}");
        }
        for bad in ["", "ab", "my app", "app/1", "äpp", &"a".repeat(256), "a,b"] {
            assert!(
                matches!(validate_application(bad), Err(LeaseError::Misconfigured(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn u64_round_trips_through_sql_integers() {
        for value in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(u64_from_sql(u64_to_sql(value)), value);
        }
        assert_eq!(u64_to_sql(42), 42);
    }

    #[test]
    fn shard_id_lists_round_trip_and_reject_commas() {
        let ids = vec!["shardId-1".to_owned(), "shardId-2".to_owned()];
        let text = encode_ids("k", "parent_shard_ids", &ids).unwrap();
        assert_eq!(text, "shardId-1,shardId-2");
        assert_eq!(decode_ids("k", "parent_shard_ids", &text).unwrap(), ids);
        assert_eq!(
            decode_ids("k", "parent_shard_ids", "").unwrap(),
            Vec::<String>::new()
        );
        assert!(encode_ids("k", "child_shard_ids", &["a,b".to_owned()]).is_err());
        assert!(encode_ids("k", "child_shard_ids", &[String::new()]).is_err());
        match decode_ids("k", "child_shard_ids", "a,,b") {
            Err(LeaseError::Malformed { key, attribute, .. }) => {
                assert_eq!((key.as_str(), attribute.as_str()), ("k", "child_shard_ids"));
            }
            other => panic!("{other:?}"),
        }
    }
}
