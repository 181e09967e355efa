//! Shared helpers for the examples.
//!
//! | module | owns |
//! |---|---|
//! | [`ops`] | the operations endpoint: Prometheus `/metrics` and the worker's `/health` |
#![deny(missing_docs)]

pub mod ops;
