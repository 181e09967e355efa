//! The contract every [`LeaseTable`] implementation must pass (feature `contract-tests`).
//!
//! Each case is a public `async fn` taking a fresh, empty table and panicking when the table breaks
//! the contract. Run the whole suite with one line, one `#[tokio::test]` per case so failures are
//! named individually:
//!
//! ```ignore
//! kcl_core::lease_table_contract_tests!(|| async { kcl_core::lease::InMemoryLeaseTable::new() });
//! ```
//!
//! The argument is any expression callable with no arguments that returns a future of a fresh,
//! empty table (a closure, an `async` closure or the path of an `async fn`). It is called once per
//! case. The calling crate needs `tokio` (features `macros`, `rt-multi-thread`) as a dependency.
//! When a table needs something kept alive next to it (a temporary directory, a test container),
//! return a [`Fixture`]. Without the macro, [`run_all`] runs every case in sequence.
//!
//! The cases cover: create-if-absent, get, list, a round trip of every [`Lease`] field, the exact
//! [`LeaseUpdate::apply`] semantics of conditional updates, stale and wrong-owner expectations,
//! missing keys, `keep_counter`, the [`LeaseTableExt`] transitions with fencing, owner switches,
//! conditional deletes, races between concurrent tasks (exactly one take wins; no write is
//! ever lost), and the narrow read of the worker heartbeat rows
//! ([`LeaseTable::list_workers`]): exactly those rows, strongly consistent when asked, every
//! primitive working on them, and pokes leaving their heartbeat condition intact.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{
    Consistency, Expectation, Lease, LeaseError, LeaseTable, LeaseTableExt, LeaseUpdate,
    PendingCheckpoint,
};
use crate::record::{ExtendedSequenceNumber, HashKeyRange, SequenceNumber};

/// Expands to one `#[tokio::test]` per contract case, each calling `$make` for a fresh, empty table.
///
/// Attributes after the factory are put on every test, e.g. to mark them ignored when they need
/// a server:
///
/// ```ignore
/// kcl_core::lease_table_contract_tests!(|| async { kcl_core::lease::InMemoryLeaseTable::new() });
/// kcl_core::lease_table_contract_tests!(fresh_table, #[ignore = "needs a DynamoDB endpoint"]);
/// ```
///
/// Invoke it inside a module (`mod contract { ... }`) to group the test names.
#[macro_export]
macro_rules! lease_table_contract_tests {
    ($make:expr $(, #[$attr:meta])* $(,)?) => {
        $crate::__lease_table_contract_cases!(@tests [$(#[$attr])*] $make);
    };
}

/// One contract test with the given attributes (used by [`lease_table_contract_tests!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __lease_table_contract_case {
    ([$(#[$attr:meta])*], $make:expr, $case:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
        $(#[$attr])*
        async fn $case() {
            $crate::lease::contract::$case(($make)().await).await;
        }
    };
}

/// The list of contract cases, shared by [`lease_table_contract_tests!`] and [`run_all`].
#[doc(hidden)]
#[macro_export]
macro_rules! __lease_table_contract_cases {
    (@tests $attrs:tt $make:expr; $($case:ident),* $(,)?) => {
        $(
            $crate::__lease_table_contract_case!($attrs, $make, $case);
        )*
    };
    (@run $attrs:tt $make:expr; $($case:ident),* $(,)?) => {
        $(
            ::std::eprintln!("lease table contract: {}", ::std::stringify!($case));
            $crate::lease::contract::$case(($make)().await).await;
        )*
    };
    (@$mode:ident $attrs:tt $make:expr) => {
        $crate::__lease_table_contract_cases!(@$mode $attrs $make;
            create_if_absent_creates_once,
            concurrent_creates_exactly_one_wins,
            get_missing_is_none,
            list_returns_all,
            round_trip_every_field,
            update_applies_lease_update_semantics,
            update_stale_counter_fails_and_changes_nothing,
            update_wrong_owner_fails_and_changes_nothing,
            update_expecting_unowned,
            update_without_expectation_is_unconditional,
            update_missing_is_not_found,
            update_keep_counter,
            writes_touch_only_their_lease,
            take_renew_checkpoint_release,
            fencing_stops_a_zombie,
            owner_switches_count_and_reset,
            take_clears_handoff_marker,
            prepare_then_commit_checkpoint,
            delete_is_conditional,
            delete_missing_is_not_found,
            concurrent_takes_exactly_one_wins,
            concurrent_takes_of_different_leases_all_win,
            concurrent_writes_never_lose_an_update,
            list_workers_returns_exactly_the_heartbeat_rows,
            list_workers_follows_writes_to_heartbeat_rows,
            heartbeat_rows_take_every_primitive,
            a_poke_leaves_the_heartbeat_condition_intact,
        );
    };
}

/// Runs every contract case in sequence, each on a fresh table from `make`; panics on the first
/// failure (the case name is printed to stderr before it runs).
///
/// Prefer [`lease_table_contract_tests!`](crate::lease_table_contract_tests), which names each
/// case as its own test. Needs a multi-threaded Tokio runtime for the concurrency cases to race.
pub async fn run_all<F, Fut, T>(mut make: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
    T: LeaseTable + 'static,
{
    crate::__lease_table_contract_cases!(@run [] make);
}

/// A table plus something that must live as long as it (a temporary directory, a container
/// handle). Implements [`LeaseTable`] by delegating to `table`.
#[derive(Debug)]
pub struct Fixture<T, G> {
    /// The table under test.
    pub table: T,
    /// Dropped with the fixture, after the table.
    pub guard: G,
}

impl<T, G> Fixture<T, G> {
    /// Pairs `table` with `guard`.
    pub fn new(table: T, guard: G) -> Self {
        Self { table, guard }
    }
}

#[async_trait]
impl<T: LeaseTable, G: Send + Sync + std::fmt::Debug> LeaseTable for Fixture<T, G> {
    async fn create_if_absent(&self, lease: &Lease) -> Result<bool, LeaseError> {
        self.table.create_if_absent(lease).await
    }

    async fn list(&self) -> Result<Vec<Lease>, LeaseError> {
        self.table.list().await
    }

    async fn get(&self, key: &str) -> Result<Option<Lease>, LeaseError> {
        self.table.get(key).await
    }

    async fn update(
        &self,
        key: &str,
        expect: &Expectation,
        update: &LeaseUpdate,
    ) -> Result<Lease, LeaseError> {
        self.table.update(key, expect, update).await
    }

    async fn delete(&self, key: &str, expect: &Expectation) -> Result<(), LeaseError> {
        self.table.delete(key, expect).await
    }

    async fn list_workers(&self, consistency: Consistency) -> Result<Vec<Lease>, LeaseError> {
        self.table.list_workers(consistency).await
    }
}

// ------------------------------------------------------------------------------------------------
// Sample data

/// A 56-digit sequence number, the length Kinesis produces today.
pub const SEQUENCE_56: &str = "49590338271490256608559692538361571095921575989136588898";

/// The largest sequence number Kinesis accepts: 129 digits.
pub fn sequence_129() -> String {
    "9".repeat(crate::record::MAX_SEQUENCE_NUMBER_DIGITS)
}

fn sn(text: &str) -> SequenceNumber {
    SequenceNumber::new(text).expect("valid sequence number")
}

fn position(text: &str, sub_sequence: u64) -> ExtendedSequenceNumber {
    ExtendedSequenceNumber::Sequence {
        sequence: sn(text),
        sub_sequence,
    }
}

/// Leases covering every shape a store must round-trip exactly: every checkpoint variant (56- and
/// 129-digit sequence numbers, sub-sequence numbers up to `u64::MAX`), pending checkpoints with no,
/// empty and binary state, 0, 1 and 2 parents, children, hash key ranges at both ends of the key
/// space, handoff markers, counters at `u64::MAX`, multi-stream lease keys and a worker heartbeat
/// row with a load. Keys are unique.
pub fn sample_leases() -> Vec<Lease> {
    let long = sequence_129();
    let mut leases = Vec::new();

    leases.push(Lease::new(
        "shardId-000000000000",
        ExtendedSequenceNumber::TrimHorizon,
    ));

    let mut owned = Lease::new("shardId-000000000001", ExtendedSequenceNumber::Latest);
    owned.owner = Some("worker-1".into());
    owned.counter = 7;
    owned.owner_switches_since_checkpoint = 2;
    leases.push(owned);

    leases.push(
        Lease::new("shardId-000000000002", ExtendedSequenceNumber::AtTimestamp)
            .with_parents(["shardId-000000000000"])
            .with_hash_key_range(HashKeyRange::FULL),
    );

    let mut ended = Lease::new("shardId-000000000003", ExtendedSequenceNumber::ShardEnd)
        .with_parents(["shardId-000000000001", "shardId-000000000002"])
        .with_hash_key_range(HashKeyRange { start: 0, end: 0 });
    ended.child_shard_ids = vec!["shardId-000000000004".into(), "shardId-000000000005".into()];
    ended.counter = 123_456;
    leases.push(ended);

    let mut seq56 = Lease::new("shardId-000000000004", position(SEQUENCE_56, 0))
        .with_hash_key_range(HashKeyRange {
            start: u128::MAX,
            end: u128::MAX,
        });
    seq56.child_shard_ids = vec!["shardId-000000000006".into()];
    leases.push(seq56);

    let mut pending_no_state = Lease::new("shardId-000000000005", position(SEQUENCE_56, 7));
    pending_no_state.owner = Some("worker-2".into());
    pending_no_state.pending_checkpoint = Some(PendingCheckpoint {
        position: position(SEQUENCE_56, 9),
        state: None,
    });
    leases.push(pending_no_state);

    let mut seq129 = Lease::new("shardId-000000000006", position(&long, u64::MAX));
    seq129.owner = Some("worker-3".into());
    seq129.pending_checkpoint = Some(PendingCheckpoint {
        position: position(&long, u64::MAX - 1),
        state: Some(Bytes::from_static(b"state\0with\xffbinary\x00bytes")),
    });
    seq129.hash_key_range = Some(HashKeyRange {
        start: 170_141_183_460_469_231_731_687_303_715_884_105_728,
        end: u128::MAX - 1,
    });
    leases.push(seq129);

    let mut pending_empty_state = Lease::new("shardId-000000000007", position("0", 0));
    pending_empty_state.pending_checkpoint = Some(PendingCheckpoint {
        position: position("1", 1),
        state: Some(Bytes::new()),
    });
    leases.push(pending_empty_state);

    let mut pending_sentinel = Lease::new("shardId-000000000008", ExtendedSequenceNumber::Latest);
    pending_sentinel.pending_checkpoint = Some(PendingCheckpoint {
        position: ExtendedSequenceNumber::ShardEnd,
        state: Some(Bytes::from_static(b"done")),
    });
    leases.push(pending_sentinel);

    let mut handoff = Lease::new("shardId-000000000009", position(SEQUENCE_56, 1));
    handoff.owner = Some("new-owner".into());
    handoff.checkpoint_owner = Some("old-owner".into());
    handoff.owner_switches_since_checkpoint = 1;
    leases.push(handoff);

    let mut extremes = Lease::new("shardId-000000000010", ExtendedSequenceNumber::TrimHorizon);
    extremes.owner = Some("worker with spaces, commas and ünïcödé".into());
    extremes.counter = u64::MAX;
    extremes.owner_switches_since_checkpoint = u64::MAX;
    leases.push(extremes);

    let mut multi_stream = Lease::new(
        "123456789012:my-stream:1700000000:shardId-000000000042",
        position(SEQUENCE_56, 0),
    )
    .with_parents(["shardId-000000000041"]);
    multi_stream.owner = Some("worker-1".into());
    multi_stream.counter = i64::MAX as u64 + 1;
    leases.push(multi_stream);

    // A worker heartbeat row as workers write it: poked twice, reporting its load.
    let mut heartbeat = Lease::worker_heartbeat("worker-1");
    heartbeat.counter = 4_611_686_018_427_387_000;
    heartbeat.owner_switches_since_checkpoint = 2;
    heartbeat.load = Some(u64::MAX);
    leases.push(heartbeat);

    leases
}

fn by_key(mut leases: Vec<Lease>) -> Vec<Lease> {
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    leases
}

async fn create<T: LeaseTable + ?Sized>(table: &T, lease: &Lease) {
    let created = table
        .create_if_absent(lease)
        .await
        .unwrap_or_else(|e| panic!("create_if_absent({}) failed: {e}", lease.key));
    assert!(
        created,
        "create_if_absent({}) on an empty key returned false",
        lease.key
    );
}

async fn stored<T: LeaseTable + ?Sized>(table: &T, key: &str) -> Lease {
    table
        .get(key)
        .await
        .unwrap_or_else(|e| panic!("get({key}) failed: {e}"))
        .unwrap_or_else(|| panic!("lease {key} is missing"))
}

/// Asserts `result` is `ConditionFailed` for `key`, and that a returned current lease is `current`.
#[track_caller]
fn assert_condition_failed<R: std::fmt::Debug>(
    result: Result<R, LeaseError>,
    key: &str,
    current: &Lease,
) {
    match result {
        Err(LeaseError::ConditionFailed {
            key: failed_key,
            current: returned,
        }) => {
            assert_eq!(failed_key, key, "ConditionFailed names the wrong lease");
            if let Some(returned) = returned {
                assert_eq!(
                    *returned, *current,
                    "ConditionFailed returned a lease that is not the stored one"
                );
            }
        }
        other => panic!("expected ConditionFailed for {key}, got {other:?}"),
    }
}

#[track_caller]
fn assert_not_found<R: std::fmt::Debug>(result: Result<R, LeaseError>, key: &str) {
    match result {
        Err(LeaseError::NotFound(missing)) => {
            assert_eq!(missing, key, "NotFound names the wrong key")
        }
        other => panic!("expected NotFound({key}), got {other:?}"),
    }
}

fn owned(key: &str, owner: &str) -> Lease {
    let mut lease = Lease::new(key, ExtendedSequenceNumber::TrimHorizon);
    lease.owner = Some(owner.into());
    lease
}

// ------------------------------------------------------------------------------------------------
// Cases

/// `create_if_absent` creates once; a second create with the same key returns `false` and leaves
/// the stored lease exactly as first written.
pub async fn create_if_absent_creates_once<T: LeaseTable + 'static>(table: T) {
    let mut first = Lease::new("shardId-000000000001", ExtendedSequenceNumber::TrimHorizon);
    first.counter = 3;
    create(&table, &first).await;
    assert_eq!(stored(&table, &first.key).await, first);

    let mut second = first.clone();
    second.owner = Some("intruder".into());
    second.counter = 42;
    second.checkpoint = ExtendedSequenceNumber::ShardEnd;
    second.child_shard_ids = vec!["shardId-000000000009".into()];
    let created = table
        .create_if_absent(&second)
        .await
        .expect("create_if_absent");
    assert!(
        !created,
        "second create_if_absent of the same key returned true"
    );
    assert_eq!(
        stored(&table, &first.key).await,
        first,
        "second create changed the lease"
    );
    assert_eq!(table.list().await.expect("list"), vec![first]);
}

/// Many tasks creating the same key at once: exactly one reports `true`, and its lease is stored.
pub async fn concurrent_creates_exactly_one_wins<T: LeaseTable + 'static>(table: T) {
    let table = Arc::new(table);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let table = Arc::clone(&table);
            tokio::spawn(async move {
                let mut lease = Lease::new("shardId-race", ExtendedSequenceNumber::TrimHorizon);
                lease.owner = Some(format!("worker-{i}"));
                let created = table
                    .create_if_absent(&lease)
                    .await
                    .expect("create_if_absent");
                (created, lease)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        let (created, lease) = task.await.expect("task panicked");
        if created {
            winners.push(lease);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "expected exactly one successful create: {winners:?}"
    );
    assert_eq!(stored(&*table, "shardId-race").await, winners[0]);
}

/// `get` of a missing key is `None`, also next to existing leases.
pub async fn get_missing_is_none<T: LeaseTable + 'static>(table: T) {
    assert_eq!(table.get("shardId-000000000000").await.expect("get"), None);
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::Latest);
    create(&table, &lease).await;
    assert_eq!(table.get("shardId-000000000001").await.expect("get"), None);
    assert_eq!(table.get("shardId-00000000000").await.expect("get"), None);
    assert_eq!(table.get("").await.expect("get"), None);
    assert_eq!(
        table.get("shardId-000000000000").await.expect("get"),
        Some(lease)
    );
}

/// `list` returns every lease (in any order), nothing on an empty table, and forgets deleted ones.
pub async fn list_returns_all<T: LeaseTable + 'static>(table: T) {
    assert_eq!(table.list().await.expect("list"), Vec::new());
    let leases: Vec<Lease> = (0..12)
        .map(|i| {
            let mut lease = Lease::new(
                format!("shardId-{i:012}"),
                ExtendedSequenceNumber::TrimHorizon,
            );
            lease.counter = i;
            lease
        })
        .collect();
    for lease in &leases {
        create(&table, lease).await;
    }
    assert_eq!(by_key(table.list().await.expect("list")), leases);

    let gone = &leases[5];
    table
        .delete(&gone.key, &gone.expectation())
        .await
        .expect("delete");
    let rest: Vec<Lease> = leases
        .iter()
        .filter(|l| l.key != gone.key)
        .cloned()
        .collect();
    assert_eq!(by_key(table.list().await.expect("list")), rest);
}

/// Every field of every [`sample_leases`] shape survives create, get and list unchanged.
pub async fn round_trip_every_field<T: LeaseTable + 'static>(table: T) {
    let leases = sample_leases();
    for lease in &leases {
        create(&table, lease).await;
    }
    for lease in &leases {
        assert_eq!(
            stored(&table, &lease.key).await,
            *lease,
            "round trip of {}",
            lease.key
        );
    }
    assert_eq!(by_key(table.list().await.expect("list")), by_key(leases));
}

/// A conditional update with a matching expectation applies exactly [`LeaseUpdate::apply`], returns
/// the lease as written, and the store then holds that lease. Covers every update field, owner
/// set/cleared, pending checkpoints with none/empty/binary state, and the counter wrapping at
/// `u64::MAX`.
pub async fn update_applies_lease_update_semantics<T: LeaseTable + 'static>(table: T) {
    let long = sequence_129();
    let mut start = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon)
        .with_parents(["shardId-parent-a", "shardId-parent-b"])
        .with_hash_key_range(HashKeyRange::FULL);
    start.counter = u64::MAX - 2;
    create(&table, &start).await;

    let updates = vec![
        LeaseUpdate {
            owner: Some(Some("worker-1".into())),
            increment_owner_switches: true,
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            pending_checkpoint: Some(Some(PendingCheckpoint {
                position: position(SEQUENCE_56, 3),
                state: Some(Bytes::new()),
            })),
            ..LeaseUpdate::default()
        },
        // Counter wraps from u64::MAX to 0 here.
        LeaseUpdate {
            pending_checkpoint: Some(Some(PendingCheckpoint {
                position: position(&long, u64::MAX),
                state: None,
            })),
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            pending_checkpoint: Some(Some(PendingCheckpoint {
                position: position(&long, 0),
                state: Some(Bytes::from_static(
                    b"\x00\x01\x02 application state \xfe\xff",
                )),
            })),
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            checkpoint: Some(position(&long, 1)),
            pending_checkpoint: Some(None),
            reset_owner_switches: true,
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            owner: Some(Some("worker-2".into())),
            checkpoint_owner: Some(Some("worker-1".into())),
            increment_owner_switches: true,
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            child_shard_ids: Some(vec!["shardId-child-a".into(), "shardId-child-b".into()]),
            keep_counter: true,
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            load: Some(3),
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            load: Some(0),
            keep_counter: true,
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            checkpoint_owner: Some(None),
            increment_owner_switches: true,
            child_shard_ids: Some(vec!["shardId-child-c".into()]),
            ..LeaseUpdate::default()
        },
        // Increment and reset together: reset first, then +1 (as `apply` does).
        LeaseUpdate {
            increment_owner_switches: true,
            reset_owner_switches: true,
            child_shard_ids: Some(Vec::new()),
            checkpoint: Some(ExtendedSequenceNumber::ShardEnd),
            ..LeaseUpdate::default()
        },
        LeaseUpdate {
            owner: Some(None),
            checkpoint: Some(ExtendedSequenceNumber::AtTimestamp),
            ..LeaseUpdate::default()
        },
        // An empty update is a renewal: only the counter moves.
        LeaseUpdate::default(),
    ];

    let mut expected = start;
    for (step, update) in updates.iter().enumerate() {
        let expect = expected.expectation();
        update.apply(&mut expected);
        let written = table
            .update(&expected.key, &expect, update)
            .await
            .unwrap_or_else(|e| panic!("update step {step} ({update:?}) failed: {e}"));
        assert_eq!(
            written, expected,
            "update step {step} returned the wrong lease"
        );
        assert_eq!(
            stored(&table, &expected.key).await,
            expected,
            "update step {step} stored the wrong lease"
        );
    }
    assert_eq!(
        expected.counter, 8,
        "the sequence above wraps the counter past u64::MAX"
    );
}

/// An update expecting a stale counter fails with `ConditionFailed` and changes nothing.
pub async fn update_stale_counter_fails_and_changes_nothing<T: LeaseTable + 'static>(table: T) {
    let lease = owned("shardId-000000000000", "worker-1");
    create(&table, &lease).await;
    let renewed = table.renew(&lease).await.expect("renew");
    assert_eq!(renewed.counter, lease.counter + 1);

    let update = LeaseUpdate {
        owner: Some(Some("worker-2".into())),
        checkpoint: Some(ExtendedSequenceNumber::ShardEnd),
        ..LeaseUpdate::default()
    };
    let result = table
        .update(&lease.key, &lease.expectation(), &update)
        .await;
    assert_condition_failed(result, &lease.key, &renewed);
    let counter_only = Expectation {
        counter: Some(lease.counter),
        owner: None,
    };
    let result = table.update(&lease.key, &counter_only, &update).await;
    assert_condition_failed(result, &lease.key, &renewed);
    // A counter from the future fails too.
    let ahead = Expectation {
        counter: Some(renewed.counter + 1),
        owner: None,
    };
    let result = table.update(&lease.key, &ahead, &update).await;
    assert_condition_failed(result, &lease.key, &renewed);
    assert_eq!(stored(&table, &lease.key).await, renewed);
}

/// An update expecting another owner (or "unowned" on an owned lease) fails and changes nothing,
/// even when the counter matches.
pub async fn update_wrong_owner_fails_and_changes_nothing<T: LeaseTable + 'static>(table: T) {
    let lease = owned("shardId-000000000000", "worker-1");
    create(&table, &lease).await;
    let update = LeaseUpdate {
        checkpoint: Some(position(SEQUENCE_56, 0)),
        ..LeaseUpdate::default()
    };
    for owner in [
        Some("worker-2".to_owned()),
        None,
        Some("worker-10".to_owned()),
    ] {
        let expect = Expectation {
            counter: Some(lease.counter),
            owner: Some(owner),
        };
        let result = table.update(&lease.key, &expect, &update).await;
        assert_condition_failed(result, &lease.key, &lease);
        let owner_only = Expectation {
            counter: None,
            ..expect
        };
        let result = table.update(&lease.key, &owner_only, &update).await;
        assert_condition_failed(result, &lease.key, &lease);
    }
    assert_eq!(stored(&table, &lease.key).await, lease);

    // The right owner with the right counter succeeds.
    let written = table
        .update(&lease.key, &lease.expectation(), &update)
        .await
        .expect("update with the right owner");
    assert_eq!(written.checkpoint, position(SEQUENCE_56, 0));
}

/// `Expectation { owner: Some(None), .. }` means "unowned": it matches an unowned lease and fails on
/// an owned one.
pub async fn update_expecting_unowned<T: LeaseTable + 'static>(table: T) {
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&table, &lease).await;
    let unowned = Expectation {
        counter: None,
        owner: Some(None),
    };
    let claim = LeaseUpdate {
        owner: Some(Some("worker-1".into())),
        ..LeaseUpdate::default()
    };
    let written = table
        .update(&lease.key, &unowned, &claim)
        .await
        .expect("claim of an unowned lease");
    assert_eq!(written.owner.as_deref(), Some("worker-1"));
    assert_eq!(written.counter, 1);

    let steal = LeaseUpdate {
        owner: Some(Some("worker-2".into())),
        ..LeaseUpdate::default()
    };
    let result = table.update(&lease.key, &unowned, &steal).await;
    assert_condition_failed(result, &lease.key, &written);
    assert_eq!(stored(&table, &lease.key).await, written);
}

/// An update with an empty [`Expectation`] applies whatever the lease holds.
pub async fn update_without_expectation_is_unconditional<T: LeaseTable + 'static>(table: T) {
    let mut lease = owned("shardId-000000000000", "worker-1");
    lease.counter = 41;
    create(&table, &lease).await;
    let update = LeaseUpdate {
        owner: Some(None),
        ..LeaseUpdate::default()
    };
    let written = table
        .update(&lease.key, &Expectation::default(), &update)
        .await
        .expect("unconditional update");
    assert_eq!(written.owner, None);
    assert_eq!(written.counter, 42);
    assert_eq!(stored(&table, &lease.key).await, written);
}

/// Updating a missing lease is `NotFound` naming the key, and creates nothing.
pub async fn update_missing_is_not_found<T: LeaseTable + 'static>(table: T) {
    let update = LeaseUpdate {
        owner: Some(Some("worker-1".into())),
        ..LeaseUpdate::default()
    };
    let result = table
        .update("shardId-missing", &Expectation::default(), &update)
        .await;
    assert_not_found(result, "shardId-missing");
    let lease = Lease::new("shardId-missing", ExtendedSequenceNumber::TrimHorizon);
    let result = table
        .update("shardId-missing", &lease.expectation(), &update)
        .await;
    assert_not_found(result, "shardId-missing");
    assert_eq!(table.get("shardId-missing").await.expect("get"), None);
    assert_eq!(table.list().await.expect("list"), Vec::new());

    // A deleted lease is missing too.
    create(&table, &lease).await;
    table
        .delete(&lease.key, &lease.expectation())
        .await
        .expect("delete");
    let result = table
        .update(&lease.key, &lease.expectation(), &update)
        .await;
    assert_not_found(result, &lease.key);
}

/// `keep_counter` writes without moving the counter, so the old expectation still holds.
pub async fn update_keep_counter<T: LeaseTable + 'static>(table: T) {
    let lease = owned("shardId-000000000000", "worker-1");
    create(&table, &lease).await;
    let children = LeaseUpdate {
        child_shard_ids: Some(vec![
            "shardId-000000000001".into(),
            "shardId-000000000002".into(),
        ]),
        keep_counter: true,
        ..LeaseUpdate::default()
    };
    let written = table
        .update(&lease.key, &lease.expectation(), &children)
        .await
        .expect("keep_counter update");
    assert_eq!(written.counter, lease.counter);
    assert_eq!(written.child_shard_ids.len(), 2);
    assert_eq!(stored(&table, &lease.key).await, written);
    // The holder's copy still fences correctly: its counter is unchanged.
    let renewed = table.renew(&lease).await.expect("renew after keep_counter");
    assert_eq!(renewed.counter, lease.counter + 1);
    assert_eq!(renewed.child_shard_ids, written.child_shard_ids);
}

/// A write to one lease leaves every other lease untouched.
pub async fn writes_touch_only_their_lease<T: LeaseTable + 'static>(table: T) {
    let leases = sample_leases();
    for lease in &leases {
        create(&table, lease).await;
    }
    let target = &leases[1];
    let taken = table.take(target, "thief").await.expect("take");
    let checkpointed = table
        .checkpoint(&taken, position(SEQUENCE_56, 5))
        .await
        .expect("checkpoint");
    let mut expected = leases.clone();
    expected[1] = checkpointed;
    table
        .delete(&leases[2].key, &leases[2].expectation())
        .await
        .expect("delete");
    expected.remove(2);
    assert_eq!(by_key(table.list().await.expect("list")), by_key(expected));
}

/// The lifecycle through [`LeaseTableExt`]: take, renew, checkpoint, release, take by another.
pub async fn take_renew_checkpoint_release<T: LeaseTable + 'static>(table: T) {
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&table, &lease).await;

    let taken = table.take(&lease, "worker-1").await.expect("take");
    assert!(taken.is_owned_by("worker-1"));
    assert_eq!(taken.counter, 1);
    assert_eq!(stored(&table, &lease.key).await, taken);

    let renewed = table.renew(&taken).await.expect("renew");
    assert_eq!(renewed.counter, 2);
    assert!(renewed.is_owned_by("worker-1"));
    assert_eq!(renewed.checkpoint, ExtendedSequenceNumber::TrimHorizon);

    let at = position(SEQUENCE_56, 4);
    let checkpointed = table
        .checkpoint(&renewed, at.clone())
        .await
        .expect("checkpoint");
    assert_eq!(checkpointed.counter, 3);
    assert_eq!(checkpointed.checkpoint, at);
    assert_eq!(stored(&table, &lease.key).await, checkpointed);

    let released = table.release(&checkpointed).await.expect("release");
    assert_eq!(released.owner, None);
    assert_eq!(released.counter, 4);
    assert_eq!(released.checkpoint, at, "release must keep the checkpoint");
    assert_eq!(stored(&table, &lease.key).await, released);

    // Released: another worker takes it at once and continues from the checkpoint.
    let next = table
        .take(&released, "worker-2")
        .await
        .expect("take after release");
    assert!(next.is_owned_by("worker-2"));
    assert_eq!(next.checkpoint, at);
    assert_eq!(next.counter, 5);

    let finished = table
        .checkpoint(&next, ExtendedSequenceNumber::ShardEnd)
        .await
        .expect("checkpoint SHARD_END");
    assert!(stored(&table, &lease.key).await.is_finished());
    assert_eq!(stored(&table, &lease.key).await, finished);
}

/// Fencing: a worker holding a stale copy (it paused while another took the lease) can neither
/// checkpoint, prepare a checkpoint, renew, release nor take back the lease, and the new owner's
/// state survives.
pub async fn fencing_stops_a_zombie<T: LeaseTable + 'static>(table: T) {
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&table, &lease).await;
    let zombie = table.take(&lease, "zombie").await.expect("zombie takes");
    let zombie = table
        .checkpoint(&zombie, position(SEQUENCE_56, 0))
        .await
        .expect("zombie checkpoints while it holds the lease");

    // The zombie pauses; another worker sees the lease as expired and takes it.
    let seen = stored(&table, &lease.key).await;
    let thief = table.take(&seen, "thief").await.expect("thief takes");
    let thief = table
        .checkpoint(&thief, position(SEQUENCE_56, 1))
        .await
        .expect("thief checkpoints");

    let result = table.checkpoint(&zombie, position(SEQUENCE_56, 99)).await;
    assert_condition_failed(result, &lease.key, &thief);
    let pending = PendingCheckpoint {
        position: position(SEQUENCE_56, 98),
        state: None,
    };
    let result = table.prepare_checkpoint(&zombie, pending).await;
    assert_condition_failed(result, &lease.key, &thief);
    let result = table.renew(&zombie).await;
    assert_condition_failed(result, &lease.key, &thief);
    let result = table.release(&zombie).await;
    assert_condition_failed(result, &lease.key, &thief);
    let result = table.take(&zombie, "zombie").await;
    assert_condition_failed(result, &lease.key, &thief);
    let result = table.delete(&zombie.key, &zombie.expectation()).await;
    assert_condition_failed(result, &lease.key, &thief);

    assert_eq!(stored(&table, &lease.key).await, thief);
    // The thief keeps working normally.
    let renewed = table.renew(&thief).await.expect("thief renews");
    assert_eq!(renewed.checkpoint, position(SEQUENCE_56, 1));
}

/// Owner switches: +1 when a different owner takes the lease (also from unowned), unchanged when
/// the owner re-takes its own lease or renews, reset to 0 by a checkpoint.
pub async fn owner_switches_count_and_reset<T: LeaseTable + 'static>(table: T) {
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&table, &lease).await;
    let a = table.take(&lease, "worker-a").await.expect("take a");
    assert_eq!(a.owner_switches_since_checkpoint, 1);
    let a = table.take(&a, "worker-a").await.expect("re-take a");
    assert_eq!(
        a.owner_switches_since_checkpoint, 1,
        "re-take by the owner counted as a switch"
    );
    let a = table.renew(&a).await.expect("renew a");
    assert_eq!(a.owner_switches_since_checkpoint, 1);
    let b = table.take(&a, "worker-b").await.expect("take b");
    assert_eq!(b.owner_switches_since_checkpoint, 2);
    let c = table.take(&b, "worker-c").await.expect("take c");
    assert_eq!(c.owner_switches_since_checkpoint, 3);
    assert_eq!(
        stored(&table, &lease.key)
            .await
            .owner_switches_since_checkpoint,
        3
    );

    let c = table
        .checkpoint(&c, position(SEQUENCE_56, 0))
        .await
        .expect("checkpoint");
    assert_eq!(c.owner_switches_since_checkpoint, 0);
    assert_eq!(
        stored(&table, &lease.key)
            .await
            .owner_switches_since_checkpoint,
        0
    );

    let released = table.release(&c).await.expect("release");
    assert_eq!(released.owner_switches_since_checkpoint, 0);
    let d = table.take(&released, "worker-d").await.expect("take d");
    assert_eq!(d.owner_switches_since_checkpoint, 1);
    assert_eq!(stored(&table, &lease.key).await, d);
}

/// Taking a lease under cooperative handoff clears the handoff marker; so does releasing it.
pub async fn take_clears_handoff_marker<T: LeaseTable + 'static>(table: T) {
    let mut lease = owned("shardId-000000000000", "new-owner");
    lease.checkpoint_owner = Some("old-owner".into());
    create(&table, &lease).await;
    assert_eq!(
        stored(&table, &lease.key).await.checkpoint_owner.as_deref(),
        Some("old-owner")
    );

    let taken = table.take(&lease, "new-owner").await.expect("take");
    assert_eq!(taken.checkpoint_owner, None);
    assert_eq!(stored(&table, &lease.key).await, taken);

    let marked = table
        .update(
            &lease.key,
            &taken.expectation(),
            &LeaseUpdate {
                owner: Some(Some("third".into())),
                checkpoint_owner: Some(Some("new-owner".into())),
                ..LeaseUpdate::default()
            },
        )
        .await
        .expect("mark handoff");
    assert_eq!(marked.checkpoint_owner.as_deref(), Some("new-owner"));
    let released = table.release(&marked).await.expect("release");
    assert_eq!(released.checkpoint_owner, None);
    assert_eq!(released.owner, None);
    assert_eq!(stored(&table, &lease.key).await, released);
}

/// Two-phase checkpoint: a prepared checkpoint is stored with its state (none, empty or bytes) and
/// a committed checkpoint clears it.
pub async fn prepare_then_commit_checkpoint<T: LeaseTable + 'static>(table: T) {
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&table, &lease).await;
    let mut held = table.take(&lease, "worker-1").await.expect("take");
    for state in [
        None,
        Some(Bytes::new()),
        Some(Bytes::from_static(b"\0\xff state")),
    ] {
        let pending = PendingCheckpoint {
            position: position(&sequence_129(), 12),
            state,
        };
        held = table
            .prepare_checkpoint(&held, pending.clone())
            .await
            .expect("prepare_checkpoint");
        assert_eq!(held.pending_checkpoint.as_ref(), Some(&pending));
        assert_eq!(held.checkpoint, ExtendedSequenceNumber::TrimHorizon);
        assert_eq!(stored(&table, &lease.key).await, held);
    }
    let committed = table
        .checkpoint(&held, position(&sequence_129(), 12))
        .await
        .expect("checkpoint");
    assert_eq!(committed.pending_checkpoint, None);
    assert_eq!(committed.checkpoint, position(&sequence_129(), 12));
    assert_eq!(stored(&table, &lease.key).await, committed);
}

/// `delete` is conditional: a stale or wrong-owner expectation fails and the lease stays; a
/// matching one removes it.
pub async fn delete_is_conditional<T: LeaseTable + 'static>(table: T) {
    let lease = owned("shardId-000000000000", "worker-1");
    let other = owned("shardId-000000000001", "worker-1");
    create(&table, &lease).await;
    create(&table, &other).await;
    let renewed = table.renew(&lease).await.expect("renew");

    let result = table.delete(&lease.key, &lease.expectation()).await;
    assert_condition_failed(result, &lease.key, &renewed);
    let wrong_owner = Expectation {
        counter: Some(renewed.counter),
        owner: Some(Some("worker-2".into())),
    };
    let result = table.delete(&lease.key, &wrong_owner).await;
    assert_condition_failed(result, &lease.key, &renewed);
    let unowned = Expectation {
        counter: None,
        owner: Some(None),
    };
    let result = table.delete(&lease.key, &unowned).await;
    assert_condition_failed(result, &lease.key, &renewed);
    assert_eq!(stored(&table, &lease.key).await, renewed);

    table
        .delete(&lease.key, &renewed.expectation())
        .await
        .expect("delete with a matching expectation");
    assert_eq!(table.get(&lease.key).await.expect("get"), None);
    assert_eq!(table.list().await.expect("list"), vec![other.clone()]);

    // Unconditional delete.
    table
        .delete(&other.key, &Expectation::default())
        .await
        .expect("unconditional delete");
    assert_eq!(table.list().await.expect("list"), Vec::new());

    // The key can be created again afterwards.
    create(&table, &lease).await;
    assert_eq!(stored(&table, &lease.key).await, lease);
}

/// Deleting a missing lease is `NotFound` naming the key.
pub async fn delete_missing_is_not_found<T: LeaseTable + 'static>(table: T) {
    let result = table
        .delete("shardId-missing", &Expectation::default())
        .await;
    assert_not_found(result, "shardId-missing");
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&table, &lease).await;
    table
        .delete(&lease.key, &lease.expectation())
        .await
        .expect("delete");
    let result = table.delete(&lease.key, &lease.expectation()).await;
    assert_not_found(result, &lease.key);
}

/// Many tasks take the same lease from the same read copy at once: exactly one wins, every other
/// gets `ConditionFailed`, and the stored lease is the winner's.
pub async fn concurrent_takes_exactly_one_wins<T: LeaseTable + 'static>(table: T) {
    let table = Arc::new(table);
    let lease = Lease::new("shardId-000000000000", ExtendedSequenceNumber::TrimHorizon);
    create(&*table, &lease).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let table = Arc::clone(&table);
            let lease = lease.clone();
            tokio::spawn(async move { table.take(&lease, &format!("worker-{i}")).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task panicked") {
            Ok(won) => winners.push(won),
            Err(LeaseError::ConditionFailed { key, .. }) => assert_eq!(key, lease.key),
            Err(other) => panic!("unexpected error from a contended take: {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "expected exactly one winning take: {winners:?}"
    );
    assert_eq!(winners[0].counter, 1);
    assert_eq!(winners[0].owner_switches_since_checkpoint, 1);
    assert_eq!(stored(&*table, &lease.key).await, winners[0]);
}

/// Concurrent takes of different leases do not interfere: every one wins.
pub async fn concurrent_takes_of_different_leases_all_win<T: LeaseTable + 'static>(table: T) {
    let table = Arc::new(table);
    let leases: Vec<Lease> = (0..12)
        .map(|i| {
            Lease::new(
                format!("shardId-{i:012}"),
                ExtendedSequenceNumber::TrimHorizon,
            )
        })
        .collect();
    for lease in &leases {
        create(&*table, lease).await;
    }
    let tasks: Vec<_> = leases
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, lease)| {
            let table = Arc::clone(&table);
            tokio::spawn(async move { table.take(&lease, &format!("worker-{i}")).await })
        })
        .collect();
    let mut taken = Vec::new();
    for task in tasks {
        taken.push(
            task.await
                .expect("task panicked")
                .expect("take of a distinct lease"),
        );
    }
    for (i, lease) in taken.iter().enumerate() {
        assert!(lease.is_owned_by(&format!("worker-{i}")));
        assert_eq!(lease.counter, 1);
    }
    assert_eq!(by_key(table.list().await.expect("list")), taken);
}

/// Tasks race renewals and checkpoints on one lease, each retrying after a lost race until it has
/// made its share of successful writes. No successful write is lost: the counter ends at the
/// number of successful writes, every success saw a distinct counter, and the stored checkpoint is
/// that of the last successful checkpoint.
pub async fn concurrent_writes_never_lose_an_update<T: LeaseTable + 'static>(table: T) {
    const TASKS: u64 = 8;
    const WRITES_PER_TASK: u64 = 12;
    let table = Arc::new(table);
    let lease = owned("shardId-000000000000", "worker-1");
    create(&*table, &lease).await;

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let table = Arc::clone(&table);
            let key = lease.key.clone();
            tokio::spawn(async move {
                // (counter written, checkpoint written by this write if it was a checkpoint)
                let mut successes: Vec<(u64, Option<ExtendedSequenceNumber>)> = Vec::new();
                let mut attempts = 0u64;
                while (successes.len() as u64) < WRITES_PER_TASK {
                    attempts += 1;
                    assert!(attempts < 100_000, "task {task} made no progress");
                    let current = stored(&*table, &key).await;
                    let write = successes.len() as u64;
                    let result = if write.is_multiple_of(2) {
                        table.renew(&current).await.map(|l| (l, None))
                    } else {
                        let at = position(&(task * 1000 + write + 1).to_string(), task);
                        table
                            .checkpoint(&current, at.clone())
                            .await
                            .map(|l| (l, Some(at)))
                    };
                    match result {
                        Ok((written, at)) => {
                            assert_eq!(written.counter, current.counter.wrapping_add(1));
                            if let Some(at) = &at {
                                assert_eq!(&written.checkpoint, at);
                            }
                            successes.push((written.counter, at));
                        }
                        Err(LeaseError::ConditionFailed { .. }) => {}
                        Err(e) if e.is_retryable() => {}
                        Err(e) => panic!("task {task}: unexpected error {e:?}"),
                    }
                }
                successes
            })
        })
        .collect();

    let mut all = BTreeMap::new();
    for task in tasks {
        for (counter, at) in task.await.expect("task panicked") {
            assert!(
                all.insert(counter, at).is_none(),
                "two successful writes both wrote counter {counter}: one was lost"
            );
        }
    }
    let total = TASKS * WRITES_PER_TASK;
    let final_lease = stored(&*table, &lease.key).await;
    assert_eq!(final_lease.counter, lease.counter + total, "lost updates");
    let counters: Vec<u64> = all.keys().copied().collect();
    let expected: Vec<u64> = (lease.counter + 1..=lease.counter + total).collect();
    assert_eq!(counters, expected);
    let last_checkpoint = all
        .values()
        .rev()
        .find_map(Clone::clone)
        .expect("some checkpoint succeeded");
    assert_eq!(final_lease.checkpoint, last_checkpoint);
    assert!(final_lease.is_owned_by("worker-1"));
}

/// Heartbeat rows as workers write them: random-looking counters, one leaving (owner cleared),
/// one poked.
fn heartbeat_rows() -> Vec<Lease> {
    let mut rows: Vec<Lease> = ["worker-a", "worker-b", "ip-10-0-0-1-4242-0f0f0f0f"]
        .iter()
        .map(|w| Lease::worker_heartbeat(w))
        .collect();
    rows[0].counter = 4_611_686_018_427_387_903;
    rows[1].counter = 17;
    rows[1].owner = None;
    rows[2].counter = 1;
    rows[2].owner_switches_since_checkpoint = 5;
    rows
}

fn keys_of(rows: &[Lease]) -> Vec<String> {
    let mut keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    keys.sort();
    keys
}

/// `list_workers` returns exactly the heartbeat rows, as written, next to every sample lease;
/// `list` still returns everything. An eventually consistent read returns only heartbeat rows.
pub async fn list_workers_returns_exactly_the_heartbeat_rows<T: LeaseTable + 'static>(table: T) {
    assert!(
        table
            .list_workers(Consistency::Strong)
            .await
            .expect("list_workers")
            .is_empty()
    );
    let leases = sample_leases();
    for lease in &leases {
        create(&table, lease).await;
    }
    let rows = heartbeat_rows();
    for row in &rows {
        create(&table, row).await;
    }
    let mut expected: Vec<Lease> = leases
        .iter()
        .filter(|l| l.heartbeat_of().is_some())
        .cloned()
        .collect();
    expected.extend(rows.iter().cloned());
    let listed = by_key(
        table
            .list_workers(Consistency::Strong)
            .await
            .expect("list_workers"),
    );
    assert_eq!(listed, by_key(expected.clone()), "list_workers(Strong)");
    let eventual = table
        .list_workers(Consistency::Eventual)
        .await
        .expect("list_workers(Eventual)");
    for row in &eventual {
        assert!(
            expected.contains(row),
            "list_workers(Eventual) returned a row never written: {row:?}"
        );
    }
    let mut all = leases;
    all.extend(rows);
    assert_eq!(
        by_key(table.list().await.expect("list")),
        by_key(all),
        "list returns shard leases and heartbeat rows"
    );
}

/// A strong `list_workers` reflects every write to heartbeat rows that came before it: updates
/// (counter, owner cleared and set again), deletes and new rows.
pub async fn list_workers_follows_writes_to_heartbeat_rows<T: LeaseTable + 'static>(table: T) {
    let mut rows = heartbeat_rows();
    for row in &rows {
        create(&table, row).await;
    }
    create(&table, &owned("shardId-000000000000", "worker-a")).await;
    // A heartbeat, a "leaving" mark, a departure and a newcomer.
    let beat = table
        .update(
            &rows[0].key,
            &rows[0].expectation(),
            &LeaseUpdate::default(),
        )
        .await
        .expect("heartbeat");
    let leaving = LeaseUpdate {
        owner: Some(None),
        ..LeaseUpdate::default()
    };
    let left = table
        .update(&rows[2].key, &rows[2].expectation(), &leaving)
        .await
        .expect("leaving");
    table
        .delete(&rows[1].key, &rows[1].expectation())
        .await
        .expect("delete");
    let newcomer = Lease::worker_heartbeat("worker-new");
    create(&table, &newcomer).await;
    rows = vec![beat, left, newcomer];
    let listed = by_key(
        table
            .list_workers(Consistency::Strong)
            .await
            .expect("list_workers"),
    );
    assert_eq!(listed, by_key(rows.clone()));
    assert_eq!(
        keys_of(&table.list_workers(Consistency::Strong).await.expect("list")),
        keys_of(&rows)
    );
}

/// Every primitive works on heartbeat rows exactly as on leases (stores may keep them apart):
/// create once, get, conditional update with fencing, conditional delete, missing rows.
pub async fn heartbeat_rows_take_every_primitive<T: LeaseTable + 'static>(table: T) {
    let row = Lease::worker_heartbeat("worker-a");
    create(&table, &row).await;
    assert!(
        !table.create_if_absent(&row).await.expect("create again"),
        "a second create of a heartbeat row returned true"
    );
    assert_eq!(stored(&table, &row.key).await, row);
    let renewed = table
        .update(&row.key, &row.expectation(), &LeaseUpdate::default())
        .await
        .expect("renew");
    assert_eq!(renewed.counter, row.counter + 1);
    assert_condition_failed(
        table
            .update(&row.key, &row.expectation(), &LeaseUpdate::default())
            .await,
        &row.key,
        &renewed,
    );
    assert_condition_failed(
        table.delete(&row.key, &row.expectation()).await,
        &row.key,
        &renewed,
    );
    table
        .delete(&row.key, &renewed.expectation())
        .await
        .expect("delete");
    assert_eq!(table.get(&row.key).await.expect("get"), None);
    assert_not_found(
        table
            .update(&row.key, &Expectation::default(), &LeaseUpdate::default())
            .await,
        &row.key,
    );
    assert_not_found(
        table.delete(&row.key, &Expectation::default()).await,
        &row.key,
    );
}

/// A poke ([`LeaseUpdate::poke`]) counts on the row and leaves its counter and owner alone, so
/// the worker's next heartbeat, conditional on both, still succeeds. Poking a missing row is
/// `NotFound` and creates nothing.
pub async fn a_poke_leaves_the_heartbeat_condition_intact<T: LeaseTable + 'static>(table: T) {
    let row = Lease::worker_heartbeat("worker-a");
    create(&table, &row).await;
    for expected in 1..=2 {
        let poked = table
            .update(&row.key, &Expectation::default(), &LeaseUpdate::poke())
            .await
            .expect("poke");
        assert_eq!(poked.pokes(), expected);
        assert_eq!((poked.counter, &poked.owner), (row.counter, &row.owner));
    }
    let beat = table
        .update(&row.key, &row.expectation(), &LeaseUpdate::default())
        .await
        .expect("a heartbeat after pokes");
    assert_eq!(beat.counter, row.counter + 1);
    assert_eq!(beat.pokes(), 2, "a heartbeat keeps the pokes");
    let missing = format!("{}gone", super::WORKER_KEY_PREFIX);
    assert_not_found(
        table
            .update(&missing, &Expectation::default(), &LeaseUpdate::poke())
            .await,
        &missing,
    );
    assert_eq!(table.get(&missing).await.expect("get"), None);
}
