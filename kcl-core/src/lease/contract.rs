//! LeaseTable contract suite (placeholder).
