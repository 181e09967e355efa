//! # kcl-testkit
//!
//! Test a kcl-core [`RecordProcessor`](kcl_core::processor::RecordProcessor) the way it will be
//! tested in production: several workers, crashes, pauses, graceful restarts, splits and merges,
//! a flaky lease store, throttled reads, all in virtual time, deterministic from a seed, in well
//! under a second of real time.
//!
//! ```
//! # use std::time::Duration;
//! # use kcl_core::checkpoint::Checkpointer;
//! # use kcl_core::processor::{BoxError, ProcessRecordsInput, RecordProcessor, ShardInfo};
//! # struct MyProcessor;
//! # impl RecordProcessor for MyProcessor {
//! #     type Error = BoxError;
//! #     async fn process_records(&mut self, _: ProcessRecordsInput<'_>, _: &mut Checkpointer)
//! #         -> Result<(), BoxError> { Ok(()) }
//! # }
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! use kcl_testkit::Cluster;
//!
//! // Kill one of three workers during a split: nothing lost, per-key order kept.
//! let mut cluster = Cluster::builder(|_: &ShardInfo| MyProcessor).workers(3).seed(7).start().await;
//! cluster.produce(500).await;
//! cluster.split(0);
//! cluster.kill(1).await;
//! cluster.produce(500).await;
//! let report = cluster.finish().await;
//! report.assert_complete_and_ordered();
//! # }
//! ```
//!
//! | module | owns |
//! |---|---|
//! | [`cluster`] | [`Cluster`]: workers on the model and one lease table, a producer, the actions |
//! | [`report`] | [`Report`]: missing, duplicated and out-of-order records, checkpoint regressions |
//! | [`observe`] | what the harness sees: the records processors completed, the checkpoints accepted |
//! | [`hooks`] | forwarding `LeaseTable` / `StreamBackend` wrappers with hooks, for your own faults |
//! | [`faults`] | seeded lease-store faults, read throttling and pauses, as hooks |
//! | [`gate`] | [`Gate`]: freezing a worker |
//! | [`lease_contract`] | the suite every `LeaseTable` implementation must pass |
//! | [`scenarios`] | the lease-coordination suite: crash, handoff, join, resharding across workers, on your store |
//! | [`conformance`] | the suite every `StreamBackend` implementation should pass |
//! | [`kinesis`] | the services tests run against: the model, or a real server (feature `aws`) |
//!
//! The clock: the harness needs tokio's paused clock to be fast (`#[tokio::test(start_paused =
//! true)]`, tokio feature `test-util`, which this crate enables) and the current-thread runtime
//! to be deterministic (the default of `#[tokio::test]`).
#![deny(missing_docs)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod cluster;
pub mod conformance;
pub mod faults;
pub mod gate;
pub mod hooks;
pub mod kinesis;
pub mod observe;
pub mod report;
pub mod scenarios;

pub use cluster::{Cluster, ClusterBuilder, Store};
pub use faults::{Fault, FaultWindow, Faults};
pub use gate::Gate;
pub use report::Report;

/// The `LeaseTable` contract suite (from kcl-core, feature `contract-tests`): run it on your
/// store with [`lease_table_contract_tests!`](kcl_core::lease_table_contract_tests).
pub use kcl_core::lease::contract as lease_contract;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
