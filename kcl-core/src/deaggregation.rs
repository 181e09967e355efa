//! deaggregation (placeholder).
