//! `impl StreamBackend for KinesisModel`: the read side (`ListShards`, `GetShardIterator`,
//! `GetRecords`, `DescribeStreamSummary`) and enhanced fan-out (in `fanout.rs`).

use async_trait::async_trait;
use tokio::time::Instant;

use super::token::{IteratorClaims, ListClaims};
use super::{KinesisModel, lock};
use crate::backend::{
    BackendError, GetRecordsOutput, ListShardsPage, ListShardsRequest, ShardIterator,
    StartingPosition, StreamBackend, StreamConsumer, StreamDescription, Subscription,
};

/// Default and largest `MaxResults` of `ListShards`.
const LIST_SHARDS_DEFAULT: u32 = 1000;
const LIST_SHARDS_MAX: u32 = 10_000;

impl KinesisModel {
    fn list_shards_now(&self, request: ListShardsRequest) -> Result<ListShardsPage, BackendError> {
        let now = Instant::now();
        let max = request.max_results.unwrap_or(LIST_SHARDS_DEFAULT);
        if !(1..=LIST_SHARDS_MAX).contains(&max) {
            return Err(BackendError::InvalidArgument(
                format!("max results {max} is not between 1 and {LIST_SHARDS_MAX}").into(),
            ));
        }
        let (name, expected_id, filter, after) = match &request.next_token {
            Some(token) => {
                let claims = self.codec.open_list(token).ok_or_else(|| {
                    BackendError::InvalidArgument("ListShards next token is not valid".into())
                })?;
                let age = now.saturating_duration_since(self.issued_at(claims.issued_nanos));
                if age >= self.config.list_shards_token_ttl {
                    return Err(BackendError::ExpiredNextToken(
                        format!("ListShards next token is {} s old", age.as_secs()).into(),
                    ));
                }
                (
                    claims.stream,
                    Some(claims.stream_id),
                    claims.filter,
                    Some(claims.after_shard),
                )
            }
            None => (request.stream, None, request.filter, None),
        };
        let stream = self.stream(&name)?;
        let stream = lock(&stream);
        if expected_id.is_some_and(|id| id != stream.id) {
            return Err(super::not_found(&name));
        }
        let max = max as usize;
        let mut listed = stream
            .list(filter.as_ref(), now)
            .into_iter()
            .filter(|&i| after.is_none_or(|a| i > a))
            .peekable();
        let mut shards = Vec::with_capacity(max.min(1024));
        let mut last = None;
        while shards.len() < max {
            let Some(i) = listed.next() else { break };
            shards.push(stream.shards[i].describe(&stream.shards));
            last = Some(i);
        }
        let next_token = match (listed.peek(), last) {
            (Some(_), Some(last)) => Some(self.codec.seal_list(&ListClaims {
                stream: stream.name.clone(),
                stream_id: stream.id,
                filter,
                after_shard: last,
                issued_nanos: self.nanos_since_epoch(now),
            })),
            _ => None,
        };
        Ok(ListShardsPage { shards, next_token })
    }

    fn shard_iterator_now(
        &self,
        stream_name: &str,
        shard_id: &str,
        position: &StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        let now = Instant::now();
        let stream = self.stream(stream_name)?;
        let mut stream = lock(&stream);
        let index = stream.find_shard(shard_id, now)?;
        let retention = stream.retention;
        stream.shards[index].trim(now, retention);
        let position = Self::iterator_position(&stream, index, position)?;
        Ok(ShardIterator::new(self.codec.seal_iterator(
            &IteratorClaims {
                stream: stream.name.clone(),
                stream_id: stream.id,
                shard: index,
                position,
                issued_nanos: self.nanos_since_epoch(now),
            },
        )))
    }

    fn get_records_now(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        let now = Instant::now();
        let claims = self.codec.open_iterator(iterator.as_str()).ok_or_else(|| {
            BackendError::InvalidArgument(
                format!("shard iterator {iterator:?} is not valid").into(),
            )
        })?;
        if limit == 0
            || self
                .config
                .max_get_records_records
                .is_some_and(|max| limit > max)
        {
            return Err(BackendError::InvalidArgument(
                format!(
                    "GetRecords limit {limit} is not between 1 and {}",
                    self.config.max_get_records_records.unwrap_or(u32::MAX)
                )
                .into(),
            ));
        }
        let stream = self.stream(&claims.stream)?;
        let mut stream = lock(&stream);
        let retention = stream.retention;
        let gone = || {
            BackendError::ResourceNotFound(
                format!(
                    "shard {} of stream {:?} no longer exists",
                    super::shard::shard_id(claims.shard),
                    claims.stream
                )
                .into(),
            )
        };
        if stream.id != claims.stream_id {
            return Err(super::not_found(&claims.stream));
        }
        let age = now.saturating_duration_since(self.issued_at(claims.issued_nanos));
        if age >= self.config.iterator_ttl {
            return Err(BackendError::ExpiredIterator(
                format!(
                    "iterator for shard {} of stream {:?} is {} s old (limit {} s)",
                    super::shard::shard_id(claims.shard),
                    claims.stream,
                    age.as_secs(),
                    self.config.iterator_ttl.as_secs()
                )
                .into(),
            ));
        }
        let shard = stream.shards.get_mut(claims.shard).ok_or_else(gone)?;
        if shard.is_expired(now, retention) {
            return Err(gone());
        }
        shard.trim(now, retention);
        if let Err(limit) = shard.read.admit(now) {
            return Err(BackendError::ProvisionedThroughputExceeded(
                format!(
                    "rate exceeded for shard {} in stream {:?}: {limit}",
                    shard.id, claims.stream
                )
                .into(),
            ));
        }
        let max_records = usize::try_from(limit).unwrap_or(usize::MAX);
        let (records, next, bytes) = shard.read(
            claims.position,
            max_records,
            self.config.max_get_records_bytes,
        );
        shard.read.charge(bytes);
        let at_tip = next >= shard.end();
        let millis_behind_latest = shard.millis_behind(next, now);
        if at_tip && !shard.is_open() {
            let child_shards = stream.child_shards(claims.shard);
            return Ok(GetRecordsOutput {
                records,
                next_shard_iterator: None,
                millis_behind_latest: Some(0),
                child_shards,
            });
        }
        let next_iterator = self.codec.seal_iterator(&IteratorClaims {
            position: next,
            issued_nanos: self.nanos_since_epoch(now),
            ..claims
        });
        Ok(GetRecordsOutput {
            records,
            next_shard_iterator: Some(ShardIterator::new(next_iterator)),
            millis_behind_latest: Some(millis_behind_latest),
            child_shards: Vec::new(),
        })
    }
}

#[async_trait]
impl StreamBackend for KinesisModel {
    async fn describe_stream(&self, stream: &str) -> Result<StreamDescription, BackendError> {
        self.describe(stream)
    }

    async fn list_shards(
        &self,
        request: ListShardsRequest,
    ) -> Result<ListShardsPage, BackendError> {
        self.list_shards_now(request)
    }

    async fn get_shard_iterator(
        &self,
        stream: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<ShardIterator, BackendError> {
        self.shard_iterator_now(stream, shard_id, &position)
    }

    async fn get_records(
        &self,
        iterator: &ShardIterator,
        limit: u32,
    ) -> Result<GetRecordsOutput, BackendError> {
        self.get_records_now(iterator, limit)
    }

    async fn register_stream_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.register_consumer_now(stream, consumer_name)
    }

    async fn describe_stream_consumer(
        &self,
        stream: &str,
        consumer_name: &str,
    ) -> Result<StreamConsumer, BackendError> {
        self.describe_consumer_now(stream, consumer_name)
    }

    async fn subscribe_to_shard(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        position: StartingPosition,
    ) -> Result<Subscription, BackendError> {
        self.subscribe_now(consumer_arn, shard_id, &position)
    }
}
