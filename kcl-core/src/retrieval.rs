//! retrieval (placeholder).
