//! `SqliteLeaseTable` against real files: the contract suite, several handles and processes on one
//! file, and every way a file can be unusable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kcl_core::lease::contract::Fixture;
use kcl_core::lease::{Expectation, Lease, LeaseError, LeaseTable, LeaseTableExt};
use kcl_core::record::{ExtendedSequenceNumber, SequenceNumber};
use kcl_lease_sqlite::{APPLICATION_ID, SCHEMA_VERSION, SqliteLeaseTable, SqliteOptions};
use tempfile::TempDir;

const APP: &str = "test-application";

async fn fresh_table() -> Fixture<SqliteLeaseTable, TempDir> {
    let dir = tempfile::tempdir().expect("tempdir");
    let table = SqliteLeaseTable::open(dir.path().join("leases.db"), APP)
        .await
        .expect("open a fresh lease file");
    Fixture::new(table, dir)
}

mod contract {
    kcl_core::lease_table_contract_tests!(super::fresh_table);
}

fn db_path(dir: &TempDir) -> PathBuf {
    dir.path().join("leases.db")
}

#[track_caller]
fn expect_misconfigured<T: std::fmt::Debug>(result: Result<T, LeaseError>, needles: &[&str]) {
    match result {
        Err(LeaseError::Misconfigured(message)) => {
            for needle in needles {
                assert!(
                    message.contains(needle),
                    "{message:?} does not mention {needle:?}"
                );
            }
        }
        other => panic!("expected Misconfigured mentioning {needles:?}, got {other:?}"),
    }
}

fn position(n: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::at(SequenceNumber::from_u128(u128::from(n)))
}

// ------------------------------------------------------------------------------------------------
// Sharing one file

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reopened_file_keeps_its_leases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let leases = kcl_core::lease::contract::sample_leases();
    {
        let table = SqliteLeaseTable::open(db_path(&dir), APP)
            .await
            .expect("open");
        for lease in &leases {
            assert!(table.create_if_absent(lease).await.expect("create"));
        }
    }
    let table = SqliteLeaseTable::open(db_path(&dir), APP)
        .await
        .expect("reopen");
    let mut listed = table.list().await.expect("list");
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut expected = leases;
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
    let mode: String = rusqlite::Connection::open(db_path(&dir))
        .expect("raw open")
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn applications_sharing_a_file_are_separate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = SqliteLeaseTable::open(db_path(&dir), "app-a")
        .await
        .expect("open a");
    let b = SqliteLeaseTable::open(db_path(&dir), "app-b")
        .await
        .expect("open b");
    assert_eq!(a.application(), "app-a");
    assert_eq!(a.path(), db_path(&dir));
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(a.create_if_absent(&lease).await.expect("create in a"));
    assert_eq!(b.get(&lease.key).await.expect("get in b"), None);
    assert!(b.list().await.expect("list b").is_empty());
    assert!(b.create_if_absent(&lease).await.expect("same key in b"));
    let taken = b.take(&lease, "worker-b").await.expect("take in b");
    assert_eq!(
        a.get(&lease.key).await.expect("get in a"),
        Some(lease.clone())
    );
    b.delete(&lease.key, &taken.expectation())
        .await
        .expect("delete in b");
    assert_eq!(a.list().await.expect("list a"), vec![lease]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_handles_on_one_file_exactly_one_take_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handles: Vec<Arc<SqliteLeaseTable>> = {
        let mut handles = Vec::new();
        // A generous busy timeout: the case treats any error but ConditionFailed as a failure,
        // and eight racing writers on a loaded machine can wait past the 5 s default.
        let options = SqliteOptions::default().busy_timeout(Duration::from_secs(30));
        for _ in 0..4 {
            handles.push(Arc::new(
                SqliteLeaseTable::open_with(db_path(&dir), APP, options.clone())
                    .await
                    .expect("open"),
            ));
        }
        handles
    };
    for round in 0..20u64 {
        let key = format!("shardId-{round:012}");
        let lease = Lease::new(key.clone(), ExtendedSequenceNumber::TrimHorizon);
        assert!(handles[0].create_if_absent(&lease).await.expect("create"));
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let table = Arc::clone(&handles[i % handles.len()]);
                let lease = lease.clone();
                tokio::spawn(async move { table.take(&lease, &format!("worker-{i}")).await })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                Ok(won) => winners.push(won),
                Err(LeaseError::ConditionFailed { .. }) => {}
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        for handle in &handles {
            assert_eq!(
                handle.get(&key).await.expect("get"),
                Some(winners[0].clone())
            );
        }
    }
}

/// Every successful write through any handle: `(counter written)`. Takes and checkpoints race
/// until each handle has made `writes` successful ones.
async fn contend(table: &SqliteLeaseTable, key: &str, me: &str, writes: usize) -> Vec<u64> {
    let mut counters = Vec::new();
    let mut attempts = 0;
    while counters.len() < writes {
        attempts += 1;
        assert!(attempts < 100_000, "{me} made no progress");
        let current = table.get(key).await.expect("get").expect("lease exists");
        let result = if current.is_owned_by(me) {
            table
                .checkpoint(&current, position(current.counter + 1))
                .await
        } else {
            table.take(&current, me).await
        };
        match result {
            Ok(written) => {
                assert_eq!(written.counter, current.counter + 1);
                counters.push(written.counter);
            }
            Err(LeaseError::ConditionFailed { .. }) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => panic!("{me}: unexpected error {e:?}"),
        }
    }
    counters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_on_one_file_never_lose_an_update() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = "shardId-000000000000";
    let first = SqliteLeaseTable::open(db_path(&dir), APP)
        .await
        .expect("open");
    let lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
    assert!(first.create_if_absent(&lease).await.expect("create"));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let table = SqliteLeaseTable::open(db_path(&dir), APP)
            .await
            .expect("open");
        tasks.push(tokio::spawn(async move {
            contend(&table, key, &format!("worker-{i}"), 15).await
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("task"));
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=all.len() as u64).collect();
    assert_eq!(
        all, expected,
        "every successful write has its own counter value"
    );
    let last = first.get(key).await.expect("get").expect("lease");
    assert_eq!(last.counter, expected.len() as u64);
}

// ------------------------------------------------------------------------------------------------
// Several processes: the test binary runs itself in "child mode".

const CHILD_ENV: &str = "KCL_LEASE_SQLITE_CHILD";

/// In a child process (started by `separate_processes_never_lose_an_update`), contends for the
/// lease and writes the counters of its successful writes to a file. Does nothing otherwise.
#[test]
fn child_mode() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [db, me, writes, out] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let writes: usize = writes.parse().expect("writes");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counters = runtime.block_on(async {
        let table = SqliteLeaseTable::open(db, APP).await.expect("child open");
        contend(&table, "shardId-000000000000", me, writes).await
    });
    let text: Vec<String> = counters.iter().map(u64::to_string).collect();
    std::fs::write(out, text.join("\n")).expect("write counters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn separate_processes_never_lose_an_update() {
    const WRITES: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let table = SqliteLeaseTable::open(db_path(&dir), APP)
        .await
        .expect("open");
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(table.create_if_absent(&lease).await.expect("create"));

    let exe = std::env::current_exe().expect("current_exe");
    let children: Vec<(std::process::Child, PathBuf)> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("child-{i}.txt"));
            let spec = format!(
                "{}|process-{i}|{WRITES}|{}",
                db_path(&dir).display(),
                out.display()
            );
            let child = std::process::Command::new(&exe)
                .args(["--exact", "child_mode", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, spec)
                .spawn()
                .expect("spawn child process");
            (child, out)
        })
        .collect();

    let mut all = contend(&table, &lease.key, "parent", WRITES).await;
    for (mut child, out) in children {
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait for child");
        assert!(status.success(), "child failed: {status}");
        let text = std::fs::read_to_string(&out).expect("child output");
        let counters: Vec<u64> = text.lines().map(|l| l.parse().expect("counter")).collect();
        assert_eq!(counters.len(), WRITES, "child {out:?} made {WRITES} writes");
        all.extend(counters);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(3 * WRITES) as u64).collect();
    assert_eq!(all, expected, "lost or duplicated updates across processes");
    let last = table.get(&lease.key).await.expect("get").expect("lease");
    assert_eq!(last.counter, (3 * WRITES) as u64);
}

// ------------------------------------------------------------------------------------------------
// Unusable files

#[tokio::test]
async fn corrupt_file_is_misconfigured_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).expect("write garbage");
    let result = SqliteLeaseTable::open(&path, APP).await;
    expect_misconfigured(
        result,
        &[
            path.to_str().expect("utf-8 path"),
            "not a usable SQLite database",
        ],
    );
    assert_eq!(
        std::fs::read(&path).expect("read back"),
        garbage,
        "file was modified"
    );

    // A short text file is no database either.
    std::fs::write(&path, "hello, I am a text file\n").expect("write text");
    let result = SqliteLeaseTable::open(&path, APP).await;
    expect_misconfigured(result, &[path.to_str().expect("utf-8 path")]);
}

#[tokio::test]
async fn an_existing_empty_file_becomes_a_lease_file() {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    assert_eq!(std::fs::metadata(file.path()).expect("stat").len(), 0);
    let table = SqliteLeaseTable::open(file.path(), APP)
        .await
        .expect("open empty file");
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(table.create_if_absent(&lease).await.expect("create"));
    assert_eq!(table.list().await.expect("list"), vec![lease]);
}

#[tokio::test]
async fn unrelated_database_is_misconfigured_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    {
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.execute_batch(
            "CREATE TABLE leases (id INTEGER PRIMARY KEY, holder TEXT);
             INSERT INTO leases (holder) VALUES ('someone');",
        )
        .expect("unrelated schema");
    }
    let result = SqliteLeaseTable::open(&path, APP).await;
    expect_misconfigured(
        result,
        &[
            path.to_str().expect("utf-8 path"),
            "not a kcl-core lease file",
            "leases",
        ],
    );
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let count: i64 = conn
        .query_row("SELECT count(*) FROM leases", [], |r| r.get(0))
        .expect("unrelated table intact");
    assert_eq!(count, 1);
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'kcl_leases'",
            [],
            |r| r.get(0),
        )
        .expect("schema");
    assert_eq!(
        tables, 0,
        "created our table inside someone else's database"
    );
}

#[tokio::test]
async fn newer_schema_version_is_misconfigured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    drop(SqliteLeaseTable::open(&path, APP).await.expect("create"));
    rusqlite::Connection::open(&path)
        .expect("raw open")
        .execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .expect("bump version");
    let result = SqliteLeaseTable::open(&path, APP).await;
    expect_misconfigured(result, &[path.to_str().expect("utf-8 path"), "newer"]);
}

#[tokio::test]
async fn lease_file_with_wrong_columns_is_misconfigured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    rusqlite::Connection::open(&path)
        .expect("raw open")
        .execute_batch(&format!(
            "CREATE TABLE kcl_leases (lease_key TEXT PRIMARY KEY, owner TEXT);
             PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};"
        ))
        .expect("wrong schema");
    let result = SqliteLeaseTable::open(&path, APP).await;
    expect_misconfigured(
        result,
        &[path.to_str().expect("utf-8 path"), "unexpected columns"],
    );
}

#[tokio::test]
async fn unwritable_paths_are_misconfigured() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing_dir = dir.path().join("no-such-dir").join("leases.db");
    let result = SqliteLeaseTable::open(&missing_dir, APP).await;
    expect_misconfigured(
        result,
        &[missing_dir.to_str().expect("utf-8 path"), "cannot open"],
    );
    assert!(!missing_dir.parent().expect("parent").exists());

    let result = SqliteLeaseTable::open(dir.path(), APP).await;
    expect_misconfigured(
        result,
        &[dir.path().to_str().expect("utf-8 path"), "directory"],
    );
}

#[cfg(unix)]
#[tokio::test]
async fn read_only_file_is_misconfigured() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    drop(SqliteLeaseTable::open(&path, APP).await.expect("create"));
    // WAL files would let a read-only open look writable; checkpoint them away first.
    rusqlite::Connection::open(&path)
        .expect("raw open")
        .execute_batch("PRAGMA journal_mode = DELETE")
        .expect("leave WAL");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    if std::fs::OpenOptions::new().write(true).open(&path).is_ok() {
        // Running as root: permissions are not enforced, nothing to test.
        eprintln!("skipping: file permissions are not enforced for this user");
        return;
    }
    let result = SqliteLeaseTable::open(&path, APP).await;
    expect_misconfigured(result, &[path.to_str().expect("utf-8 path")]);
}

#[tokio::test]
async fn invalid_application_names_are_misconfigured() {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in ["", "ab", "has space", "semi;colon", "quote'"] {
        let result = SqliteLeaseTable::open(db_path(&dir), name).await;
        expect_misconfigured(result, &["application name"]);
    }
    assert!(
        !db_path(&dir).exists(),
        "an invalid name must not create the file"
    );
}

#[tokio::test]
async fn shard_ids_with_commas_are_refused() {
    let table = fresh_table().await;
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon)
        .with_parents(["shardId-1,shardId-2"]);
    match table.create_if_absent(&lease).await {
        Err(LeaseError::Malformed { key, attribute, .. }) => {
            assert_eq!(key, lease.key);
            assert_eq!(attribute, "parent_shard_ids");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    assert_eq!(table.get(&lease.key).await.expect("get"), None);
}

// ------------------------------------------------------------------------------------------------
// Malformed rows and a busy database

/// Sends every `warn` event of this process to the returned buffer (a process-wide subscriber: the
/// lease table logs from Tokio's blocking threads). Only one test may call it.
fn capture_warnings() -> Arc<std::sync::Mutex<Vec<u8>>> {
    #[derive(Clone)]
    struct Capture(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = Capture(Arc::clone(&buffer));
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
    buffer
}

fn raw_update(path: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).expect("raw open");
    let changed = conn.execute(sql, []).expect("raw update");
    assert_eq!(changed, 1, "{sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rows_are_named_and_do_not_break_other_leases() {
    let log = capture_warnings();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    let table = SqliteLeaseTable::open(&path, APP).await.expect("open");
    let good = Lease::new("shardId-good", ExtendedSequenceNumber::TrimHorizon);
    let cases = [
        (
            "shardId-bad-checkpoint",
            "checkpoint = 'not-a-number'",
            "checkpoint",
        ),
        (
            "shardId-bad-pending",
            "pending_checkpoint = '0123', pending_checkpoint_sub_sequence = 0",
            "pending_checkpoint",
        ),
        (
            "shardId-bad-hash",
            "starting_hash_key = '-1', ending_hash_key = '5'",
            "starting_hash_key",
        ),
        (
            "shardId-half-hash",
            "ending_hash_key = '5'",
            "starting_hash_key",
        ),
        (
            "shardId-bad-children",
            "child_shard_ids = 'a,,b'",
            "child_shard_ids",
        ),
    ];
    assert!(table.create_if_absent(&good).await.expect("create good"));
    for (key, set, _) in &cases {
        let lease = Lease::new(*key, ExtendedSequenceNumber::TrimHorizon);
        assert!(table.create_if_absent(&lease).await.expect("create"));
        raw_update(
            &path,
            &format!("UPDATE kcl_leases SET {set} WHERE lease_key = '{key}'"),
        );
    }

    for (key, _, column) in &cases {
        match table.get(key).await {
            Err(LeaseError::Malformed {
                key: k, attribute, ..
            }) => {
                assert_eq!((k.as_str(), attribute.as_str()), (*key, *column));
            }
            other => panic!("get({key}): expected Malformed, got {other:?}"),
        }
        let update = table
            .update(key, &Expectation::default(), &Default::default())
            .await;
        assert!(
            matches!(update, Err(LeaseError::Malformed { .. })),
            "update({key}): {update:?}"
        );
    }
    // `list` skips the malformed rows (logging each) and returns the good lease.
    assert_eq!(table.list().await.expect("list"), vec![good.clone()]);
    let logged = String::from_utf8(log.lock().expect("log").clone()).expect("utf-8 log");
    for (key, _, column) in &cases {
        let line = logged
            .lines()
            .find(|line| line.contains(key))
            .unwrap_or_else(|| panic!("no warning names {key}: {logged}"));
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains(column), "{line}");
    }
    // The good lease keeps working.
    let taken = table.take(&good, "worker-1").await.expect("take good");
    assert_eq!(taken.counter, 1);

    // A malformed lease can be deleted; a stale expectation on it still fails.
    let (bad, _, _) = cases[0];
    let stale = Expectation {
        counter: Some(7),
        owner: None,
    };
    assert!(matches!(
        table.delete(bad, &stale).await,
        Err(LeaseError::ConditionFailed { .. })
    ));
    let matching = Expectation {
        counter: Some(0),
        owner: Some(None),
    };
    table
        .delete(bad, &matching)
        .await
        .expect("delete malformed lease");
    assert_eq!(table.get(bad).await.expect("get after delete"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_database_is_unavailable_and_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = db_path(&dir);
    let options = SqliteOptions::default().busy_timeout(Duration::from_millis(100));
    let table = SqliteLeaseTable::open_with(&path, APP, options)
        .await
        .expect("open");
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    assert!(table.create_if_absent(&lease).await.expect("create"));

    // Another connection holds the write lock.
    let blocker = rusqlite::Connection::open(&path).expect("raw open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let result = table.take(&lease, "worker-1").await;
    match &result {
        Err(e @ LeaseError::Unavailable(message)) => {
            assert!(e.is_retryable());
            assert!(
                message.contains(path.to_str().expect("utf-8 path")),
                "{message}"
            );
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Reads still work while a writer holds the lock (WAL).
    assert_eq!(
        table.get(&lease.key).await.expect("get while locked"),
        Some(lease.clone())
    );
    blocker.execute_batch("ROLLBACK").expect("unlock");
    let taken = table
        .take(&lease, "worker-1")
        .await
        .expect("take after unlock");
    assert_eq!(taken.counter, 1);
}
