//! # kcl-cli
//!
//! The `kcl` binary (an operator's tool for lease tables: describe, workers, reset, cleanup) and
//! what it shares with the example consumers.
//!
//! | module | owns |
//! |---|---|
//! | [`store`] | naming a lease table on a command line (`sqlite:PATH`, `dynamodb`, `dynamodb:NAME`) and opening it |
//!
//! The lease logic itself is `kcl_core::lease::admin`; this crate only parses, prints and calls it.
#![deny(missing_docs)]

pub mod store;
