//! # kcl-core
//!
//! The core of a Rust Kinesis Client Library: everything a consumer of an Amazon Kinesis data
//! stream needs except the concrete lease stores and the AWS SDK adapter.
//!
//! A user implements one trait, [`processor::RecordProcessor`], and runs a
//! [`worker::Worker`]. The worker discovers the shards of a stream through a
//! [`backend::StreamBackend`], shares them with other workers through a
//! [`lease::LeaseTable`], reads records, de-aggregates KPL records, hands them to one
//! processor per shard and checkpoints.
//!
//! Module map (one concept, one home):
//!
//! | module | owns |
//! |---|---|
//! | [`record`] | records, sequence numbers and extended sequence numbers (sentinels) |
//! | [`processor`] | the `RecordProcessor` trait, its factory and lifecycle inputs |
//! | [`checkpoint`] | the `Checkpointer` handed to processors and its validation |
//! | [`lease`] | the `Lease` type, the `LeaseTable` trait, the in-memory table, lease coordination |
//! | [`metrics`] | what the worker publishes through the `metrics` facade, and the catalog of names |
//! | [`backend`] | the `StreamBackend` trait: the one boundary to a Kinesis-like service |
//! | [`model`] | an in-memory Kinesis model implementing `StreamBackend` |
//! | [`retry`] | backoff schedules shared by every retry loop |
//! | [`retrieval`] | reading records from a shard (polling with bounded prefetch) |
//! | [`deaggregation`] | KPL aggregated-record format: de-aggregation and aggregation |
//! | [`shard_sync`] | shard discovery and lease creation, lineage rules |
//! | [`worker`] | the worker, its builder and configuration, per-shard consumers |
#![deny(missing_docs)]
// The only `unsafe` code is the SIMD kernels in `deaggregation::multi_md5`.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(feature = "aws")]
pub mod aws;
pub mod backend;
pub mod checkpoint;
pub mod deaggregation;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod processor;
pub mod record;
pub mod retrieval;
pub mod retry;
pub mod shard_sync;
pub mod worker;

pub(crate) mod sync;
pub(crate) mod time;

pub use bytes::Bytes;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
