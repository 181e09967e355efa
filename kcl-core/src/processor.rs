//! processor (placeholder).
