//! shard_sync (placeholder).
