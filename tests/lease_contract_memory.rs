//! The lease table contract suite run against the in-memory lease table.

use kcl_core::lease::InMemoryLeaseTable;

kcl_core::lease_table_contract_tests!(async || InMemoryLeaseTable::new());

/// `run_all` (the non-macro entry point) passes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes() {
    kcl_core::lease::contract::run_all(|| async { InMemoryLeaseTable::new() }).await;
}
