//! model (placeholder).
