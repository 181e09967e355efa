//! The lease-coordination scenarios ([`kcl_testkit::scenarios`]: takeover after a crash, graceful
//! handoff, a joining worker, resharding across workers) against a real DynamoDB API server,
//! each worker with its own client. Real time: the scenarios wait for events with generous
//! bounds. The failover time is 6 s: shorter ones (2 s was tried) leave a worker too little slack
//! for a slow answer from the test server, which serialises every request, on a loaded machine;
//! a worker whose heartbeat lapses gives up its leases, and the scenarios then see re-deliveries
//! that they rightly count as errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Server, server, unique_table};
use kcl_core::lease::LeaseTable;
use kcl_lease_dynamo::DynamoLeaseTable;
use kcl_testkit::scenarios::{self, Tables};

const FAILOVER: Duration = Duration::from_secs(6);

/// A fresh table on the test server; every call of the factory builds a new client for it.
async fn tables() -> (Server, Tables) {
    let server = server().await;
    let name = unique_table("coordination");
    let config = server.config.clone();
    DynamoLeaseTable::builder(name.clone())
        .build(&config)
        .await
        .expect("create the lease table");
    let tables: Tables = Arc::new(move || {
        let (name, config) = (name.clone(), config.clone());
        Box::pin(async move {
            // A table of its own per test, for the scenarios' application "app".
            let table: Arc<dyn LeaseTable> = Arc::new(
                DynamoLeaseTable::builder(name)
                    .application("app")
                    .build(&config)
                    .await
                    .expect("open the lease table"),
            );
            table
        })
    });
    (server, tables)
}

macro_rules! scenarios {
    ($($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[ignore = "needs a DynamoDB endpoint: run scripts/test.sh"]
            async fn $scenario() {
                let (_server, tables) = tables().await;
                scenarios::$scenario(tables, FAILOVER).await;
            }
        )*
    };
}

scenarios!(
    takeover_after_a_crash,
    graceful_shutdown_hands_over_without_duplicates,
    a_joining_worker_gets_its_share_without_duplicates,
    resharding_across_workers_keeps_order,
    two_streams_survive_a_crash_and_a_split,
);
