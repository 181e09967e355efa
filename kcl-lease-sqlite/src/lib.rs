//! A SQLite [`kcl_core::lease::LeaseTable`] (placeholder).
#![deny(missing_docs)]
