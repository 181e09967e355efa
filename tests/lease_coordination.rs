//! The lease-coordination scenarios ([`kcl_testkit::scenarios`]) on the in-memory table and on a
//! SQLite file shared by workers with one connection each, under tokio's paused clock. (The
//! DynamoDB run is in kcl-lease-dynamo's tests, against a real server.)
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use kcl_core::lease::{InMemoryLeaseTable, LeaseTable};
use kcl_lease_sqlite::SqliteLeaseTable;
use kcl_testkit::scenarios::{self, Tables};

const FAILOVER: Duration = Duration::from_secs(10);

fn memory() -> Tables {
    scenarios::shared(Arc::new(InMemoryLeaseTable::new()))
}

/// A SQLite lease file; every call opens a new connection to it.
fn sqlite() -> (tempfile::TempDir, Tables) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let tables: Tables = Arc::new(move || {
        let path = path.clone();
        Box::pin(async move {
            let table: Arc<dyn LeaseTable> =
                Arc::new(SqliteLeaseTable::open(&path, "app").await.unwrap());
            table
        })
    });
    (dir, tables)
}

macro_rules! on_every_store {
    ($($scenario:ident),* $(,)?) => {
        mod memory {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $scenario() {
                    scenarios::$scenario(memory(), FAILOVER).await;
                }
            )*
        }
        mod sqlite {
            use super::*;
            $(
                #[tokio::test(start_paused = true)]
                async fn $scenario() {
                    let (_dir, tables) = sqlite();
                    scenarios::$scenario(tables, FAILOVER).await;
                }
            )*
        }
    };
}

on_every_store!(
    takeover_after_a_crash,
    graceful_shutdown_hands_over_without_duplicates,
    a_joining_worker_gets_its_share_without_duplicates,
    resharding_across_workers_keeps_order,
    two_streams_survive_a_crash_and_a_split,
);
