//! worker (placeholder).
