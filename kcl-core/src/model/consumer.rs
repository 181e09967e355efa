//! The state of a registered enhanced fan-out consumer: what a stream keeps for each of its
//! consumers (`model::stream` holds them, `model::fanout` serves them), in a module of its own
//! so that neither of the two depends on the other for it.

use std::collections::{HashMap, HashSet};

use tokio::time::Instant;

use super::limits::TokenBucket;

/// A registered consumer of one stream.
#[derive(Debug)]
pub(crate) struct ConsumerState {
    pub(super) arn: String,
    pub(super) registered_at: Instant,
    /// Per-shard push-rate buckets (by shard index), created on first use.
    pub(super) buckets: HashMap<usize, TokenBucket>,
    /// Shards with an open subscription.
    pub(super) subscribed: HashSet<usize>,
}
