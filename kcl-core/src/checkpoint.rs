//! checkpoint (placeholder).
