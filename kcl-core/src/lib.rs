//! # kcl-core
//!
//! The core of Kinesin, a Kinesis Client Library for Rust: everything a consumer of an Amazon
//! Kinesis data stream needs except the concrete lease stores (`kcl-lease-sqlite`,
//! `kcl-lease-dynamo`).
//!
//! A user implements one trait, [`processor::RecordProcessor`], and runs a
//! [`worker::Worker`]. The worker discovers the shards of a stream through a
//! [`backend::StreamBackend`] (the AWS backend, feature `aws`, or the in-memory model, feature
//! `model`), shares them with other workers through a [`lease::LeaseTable`], reads records,
//! de-aggregates KPL records, hands them to one processor per shard, checkpoints, and publishes
//! metrics.
//!
//! Module map (one concept, one home):
//!
//! | module | owns |
//! |---|---|
//! | [`record`] | records, sequence numbers and extended sequence numbers (sentinels) |
//! | [`processor`] | the `RecordProcessor` trait, its factory and lifecycle inputs, the failure policy |
//! | [`checkpoint`] | the `Checkpointer` handed to processors and its validation |
//! | [`lease`] | the `Lease` type, the `LeaseTable` trait, the in-memory table, lease coordination |
//! | [`backend`] | the `StreamBackend` trait (the one boundary to a Kinesis-like service) and the `FanOut` capability |
//! | `aws` | the AWS backend on aws-sdk-kinesis, polling and enhanced fan-out (feature `aws`) |
//! | `model` | an in-memory Kinesis model implementing `StreamBackend` (feature `model`) |
//! | [`put`] | the write side: `PutRecord`/`PutRecords` requests and results |
//! | [`retrieval`] | reading records from a shard: polling and fan-out, the prefetch budgets |
//! | [`deaggregation`] | KPL aggregated-record format: de-aggregation (and, feature `aggregator`, aggregation) |
//! | [`stream`] | stream identity (name, ARN, Java's `account:stream:creationEpoch`) and lease keys per stream |
//! | [`shard_sync`] | shard discovery and lease creation, lineage rules |
//! | [`worker`] | the worker, its builder and configuration, per-shard consumers, errors, health |
//! | [`metrics`] | what the worker publishes through the `metrics` facade, and the catalog of names |
//! | [`retry`] | backoff schedules and retry policies shared by every retry loop |
//!
//! Features: `aws` (the AWS backend), `model` (the in-memory model), `aggregator` (the KPL
//! aggregator and `prost`), `contract-tests` (the `LeaseTable` contract suite). None is on by
//! default.
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
#[cfg(any(test, feature = "model"))]
pub mod model;
pub mod processor;
pub mod put;
pub mod record;
pub mod retrieval;
pub mod retry;
pub mod shard_sync;
pub mod stream;
pub mod worker;

pub(crate) mod sync;
pub(crate) mod time;

pub use bytes::Bytes;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(all(doctest, feature = "model"))]
pub struct ReadmeDoctests;
