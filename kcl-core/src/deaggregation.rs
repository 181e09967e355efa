//! KPL de-aggregation (temporary pass-through stub; replaced by the real module).

use crate::record::{HashKeyRange, Record};

/// De-aggregation settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeaggregationConfig {
    /// Drop a whole aggregate when a sub-record falls outside the shard's range (Java's behaviour).
    pub filter_by_shard_hash_range: bool,
}

/// Expands KPL aggregates.
#[derive(Clone, Debug, Default)]
pub struct Deaggregator {
    #[allow(dead_code)]
    config: DeaggregationConfig,
}

/// What happened to one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not an aggregate.
    NotAggregated,
}

impl Deaggregator {
    /// A de-aggregator with `config`.
    pub fn new(config: DeaggregationConfig) -> Self {
        Self { config }
    }

    /// Expands one record into `out`.
    pub fn deaggregate_into(
        &self,
        record: Record,
        _shard_range: Option<&HashKeyRange>,
        out: &mut Vec<Record>,
    ) -> Outcome {
        out.push(record);
        Outcome::NotAggregated
    }
}
