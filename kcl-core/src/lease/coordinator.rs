//! Lease coordination (placeholder, written next).
