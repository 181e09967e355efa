//! Delivering one batch under the failure policy: the one place that decides what happens to
//! records whose processing fails, in both processing modes (one batch at a time, and
//! key-ordered with many in flight).
//!
//! A batch is delivered as a stack of *parts*, contiguous runs of its records, from the first
//! record on; records are handled strictly in order (processed, dead-lettered or skipped for
//! their age), so what a delivery handled is always a prefix of its batch.
//!
//! - **Success**: the part is handled.
//! - **Failure** (an error or a panic): the policy's backoff, then the part again, until the
//!   policy's attempts are used up; then the part goes to the dead-letter handler
//!   ([`FailurePolicy::DeadLetter`]) and delivery goes on after it, or the shard stops
//!   ([`FailurePolicy::StopShard`]). A failure that is a [`PartialFailure`] at index `i`
//!   first hands the `i` records before it over as processed (so they may be checkpointed
//!   while the rest is retried), and counts as the first failure of the record at `i`.
//! - **Bisection** (`bisect_failed_batches`): a failing part of more than one record is split
//!   in halves, delivered in order (after the backoff, like a redelivery), and so on down to the
//!   failing record alone; a part made by splitting starts with the full attempts, so only the
//!   failing record exhausts them and goes to the dead-letter handler. A poison record among `n`
//!   is thus delivered about `log2(n)` times more than the attempts allow, and every other
//!   record is processed once.
//! - **Age** (`max_record_age`): before every delivery, retries included, records older than
//!   the limit are taken out (to the dead-letter handler, or skipped and counted, as
//!   configured), so a record failing until it expires ends up there too.
//!
//! The backoff schedule starts again whenever records are handled (the downstream works again),
//! and every wait ends early when the lease is lost or asked for, or the worker stops: the
//! delivery then reports what it handled so far, and the rest is delivered again by whoever
//! processes the shard next.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;
use tracing::{Instrument, error, info_span, warn};

use super::consumer::{Again, Interrupt, Interrupts, Retry, panic_error};
use super::{ShardState, StatusBoard};
use crate::metrics::{ShardMetrics, UserCall};
use crate::processor::{
    BoxError, DeadLetterBatch, DeadLetterHandler, DeadLetterReason, ExpiredRecords, FailurePolicy,
    MaxRecordAge, PartialFailure, ProcessRecordsInput, RecordTooOld,
};
use crate::record::Record;

/// What a delivery needs besides the records: shared by the batches of a shard.
#[derive(Debug)]
pub(super) struct DeliveryContext {
    pub stream: String,
    pub shard_id: String,
    pub metrics: ShardMetrics,
    pub status: Arc<StatusBoard>,
    pub policy: FailurePolicy,
    pub bisect: bool,
    pub max_age: Option<MaxRecordAge>,
}

/// How the processor is called.
pub(super) trait Call: Send {
    /// One call of the processor, under the panic catch.
    fn call(
        &mut self,
        input: ProcessRecordsInput<'_>,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// `records` (the next ones of the batch) are handled; the caller may checkpoint them.
    /// `Err` when the lease turned out lost.
    fn handled(&mut self, records: &[Record])
    -> impl Future<Output = Result<(), Interrupt>> + Send;
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// Every record handled.
    Done,
    /// The failure policy stops the shard.
    Stop,
    /// Cut short.
    Interrupted(Interrupt),
}

/// What a delivery did: the first `handled` records of the batch are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delivered {
    pub handled: usize,
    pub end: End,
}

/// A part of the batch: records from the first unhandled one to `end`, delivered `delivered`
/// times so far (as part of larger parts too).
#[derive(Debug, Clone, Copy)]
struct Part {
    end: usize,
    delivered: u32,
}

/// Delivers `records` (never empty) under the policy of `ctx`, in a span naming their range.
pub(super) async fn deliver<C: Call>(
    call: &mut C,
    ctx: &DeliveryContext,
    records: &[Record],
    millis_behind_latest: Option<u64>,
    interrupts: &mut Interrupts,
) -> Delivered {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Delivered {
            handled: 0,
            end: End::Done,
        };
    };
    let span = info_span!(
        "batch",
        first = %first.position(),
        last = %last.position(),
        records = records.len(),
    );
    Delivery {
        ctx,
        records,
        millis_behind_latest,
        handled: 0,
    }
    .run(call, interrupts)
    .instrument(span)
    .await
}

struct Delivery<'a> {
    ctx: &'a DeliveryContext,
    records: &'a [Record],
    millis_behind_latest: Option<u64>,
    /// The first `handled` records are handled.
    handled: usize,
}

impl Delivery<'_> {
    fn ended(&self, end: End) -> Delivered {
        Delivered {
            handled: self.handled,
            end,
        }
    }

    async fn run<C: Call>(mut self, call: &mut C, interrupts: &mut Interrupts) -> Delivered {
        let ctx = self.ctx;
        let metrics = &ctx.metrics;
        let backoff = *ctx.policy.backoff();
        let max_attempts = ctx.policy.max_attempts();
        let mut retry = Retry::new(&backoff, None);
        let mut parts = vec![Part {
            end: self.records.len(),
            delivered: 0,
        }];
        // Failed deliveries of the current part's first record since it became first.
        let mut failures: u32 = 0;
        loop {
            let Some(part) = parts.last().copied() else {
                return self.ended(End::Done);
            };
            if self.handled >= part.end {
                parts.pop();
                failures = 0;
                continue;
            }
            if let Some(limit) = ctx.max_age {
                match expired(&self.records[self.handled..part.end], limit.max_age) {
                    Expiry::None => {}
                    Expiry::From(at) => {
                        // Deliver up to the first expired record, then take it out.
                        parts.push(Part {
                            end: self.handled + at,
                            delivered: part.delivered,
                        });
                        continue;
                    }
                    Expiry::Leading(n, age) => {
                        let range = self.handled..self.handled + n;
                        let expired = &self.records[range];
                        if let Err(interrupt) = self
                            .expire(expired, age, limit, part.delivered, interrupts)
                            .await
                        {
                            return self.ended(End::Interrupted(interrupt));
                        }
                        self.handled += n;
                        failures = 0;
                        retry = Retry::new(&backoff, None);
                        if let Err(interrupt) = call.handled(expired).await {
                            return self.ended(End::Interrupted(interrupt));
                        }
                        continue;
                    }
                }
            }
            let slice = &self.records[self.handled..part.end];
            let attempt = part.delivered.saturating_add(1);
            if attempt > 1 {
                metrics.batch_retries.increment(1);
            }
            let input = ProcessRecordsInput {
                shard_id: &ctx.shard_id,
                records: slice,
                millis_behind_latest: self.millis_behind_latest,
                attempt,
            };
            let started = Instant::now();
            let result = call.call(input).await;
            metrics
                .process_duration
                .record(started.elapsed().as_secs_f64());
            if let Some(top) = parts.last_mut() {
                top.delivered = attempt;
            }
            let error = match result {
                Ok(()) => {
                    metrics.batches_processed.increment(1);
                    self.processed(slice);
                    self.handled = part.end;
                    parts.pop();
                    failures = 0;
                    retry = Retry::new(&backoff, None);
                    if let Err(interrupt) = call.handled(slice).await {
                        return self.ended(End::Interrupted(interrupt));
                    }
                    continue;
                }
                Err(error) => error,
            };
            metrics.processor_failure(UserCall::ProcessRecords);
            let failed_from = match PartialFailure::find(error.as_ref()).map(|p| p.failed_from()) {
                Some(i) if i < slice.len() => i,
                Some(i) => {
                    warn!(
                        index = i,
                        records = slice.len(),
                        "a PartialFailure names an index past the end of its batch; the whole \
                         batch counts as failed"
                    );
                    0
                }
                None => 0,
            };
            if failed_from > 0 {
                metrics.partial_failures.increment(1);
                let done = &slice[..failed_from];
                self.processed(done);
                self.handled += failed_from;
                failures = 0;
                retry = Retry::new(&backoff, None);
                if let Err(interrupt) = call.handled(done).await {
                    return self.ended(End::Interrupted(interrupt));
                }
            }
            let remaining = self.handled..part.end;
            warn!(
                attempt,
                %error,
                records = remaining.len(),
                "process_records failed"
            );
            ctx.status
                .update(&ctx.shard_id, |s| s.state = ShardState::Retrying);
            failures = failures.saturating_add(1);
            if ctx.bisect && remaining.len() > 1 {
                // The current part (its `delivered` updated) stays below its first half.
                metrics.bisections.increment(1);
                parts.push(Part {
                    end: self.handled + remaining.len() / 2,
                    delivered: attempt,
                });
                failures = 0;
            } else if max_attempts.is_some_and(|max| failures >= max) {
                let Some(handler) = ctx.policy.handler() else {
                    return self.ended(End::Stop);
                };
                let failed = &self.records[remaining];
                let reason = DeadLetterReason::Failed;
                if let Err(interrupt) = dead_letter(
                    ctx,
                    handler.as_ref(),
                    failed,
                    &error,
                    attempt,
                    reason,
                    interrupts,
                )
                .await
                {
                    return self.ended(End::Interrupted(interrupt));
                }
                self.handled = part.end;
                parts.pop();
                failures = 0;
                retry = Retry::new(&backoff, None);
                if let Err(interrupt) = call.handled(failed).await {
                    return self.ended(End::Interrupted(interrupt));
                }
                continue;
            }
            match retry.failed(interrupts).await {
                Again::Yes => {}
                // Never without a limit; stop rather than loop if it ever did.
                Again::GaveUp(_) => return self.ended(End::Stop),
                Again::Interrupted(interrupt) => return self.ended(End::Interrupted(interrupt)),
            }
        }
    }

    /// Counts records processed successfully.
    fn processed(&self, records: &[Record]) {
        let ctx = self.ctx;
        let n = records.len() as u64;
        ctx.metrics.records_processed.increment(n);
        ctx.metrics
            .bytes_processed
            .increment(records.iter().map(|r| r.data().len() as u64).sum());
        ctx.status.update(&ctx.shard_id, |s| {
            s.state = ShardState::Processing;
            s.records_processed += n;
        });
    }

    /// Takes records too old to deliver out: to the dead-letter handler or skipped.
    async fn expire(
        &self,
        records: &[Record],
        age: Duration,
        limit: MaxRecordAge,
        attempts: u32,
        interrupts: &mut Interrupts,
    ) -> Result<(), Interrupt> {
        let ctx = self.ctx;
        let n = records.len() as u64;
        let handler = match limit.expired {
            ExpiredRecords::DeadLetter => ctx.policy.handler(),
            _ => None,
        };
        match handler {
            Some(handler) => {
                let error: BoxError = Box::new(RecordTooOld {
                    age,
                    max_age: limit.max_age,
                });
                let reason = DeadLetterReason::Expired;
                dead_letter(
                    ctx,
                    handler.as_ref(),
                    records,
                    &error,
                    attempts,
                    reason,
                    interrupts,
                )
                .await?;
                ctx.metrics.records_expired[0].increment(n);
            }
            None => {
                // `ExpiredRecords::Skip`, or (refused by the builder) no handler to give them to.
                if let (Some(first), Some(last)) = (records.first(), records.last()) {
                    warn!(
                        records = n,
                        ?age,
                        max_age = ?limit.max_age,
                        first = %first.position(),
                        last = %last.position(),
                        "records older than the maximum record age skipped"
                    );
                }
                ctx.metrics.records_expired[1].increment(n);
            }
        }
        Ok(())
    }
}

/// Expired records of a part.
enum Expiry {
    None,
    /// The first `n` are expired; the oldest is this old.
    Leading(usize, Duration),
    /// The first expired one is at this index (not 0).
    From(usize),
}

/// Which records of `records` are older than `max_age` now.
fn expired(records: &[Record], max_age: Duration) -> Expiry {
    let now = crate::time::system_now();
    let age = |r: &Record| -> Option<Duration> {
        let age = now.duration_since(r.approximate_arrival()?).ok()?;
        (age > max_age).then_some(age)
    };
    let Some(at) = records.iter().position(|r| age(r).is_some()) else {
        return Expiry::None;
    };
    if at > 0 {
        return Expiry::From(at);
    }
    let n = records.iter().take_while(|r| age(r).is_some()).count();
    let oldest = records[..n]
        .iter()
        .filter_map(|r| r.approximate_arrival())
        .min()
        .and_then(|at| now.duration_since(at).ok())
        .unwrap_or(max_age);
    Expiry::Leading(n, oldest)
}

/// Hands `records` to the dead-letter handler, retrying the handler (it is user code too: a
/// panic is a failure) with the policy's backoff until it succeeds, so nothing is lost without
/// trace; `Err` if interrupted meanwhile.
pub(super) async fn dead_letter(
    ctx: &DeliveryContext,
    handler: &dyn DeadLetterHandler,
    records: &[Record],
    error: &BoxError,
    attempts: u32,
    reason: DeadLetterReason,
    interrupts: &mut Interrupts,
) -> Result<(), Interrupt> {
    let mut retry = Retry::new(ctx.policy.backoff(), None);
    loop {
        let batch = DeadLetterBatch {
            stream: &ctx.stream,
            shard_id: &ctx.shard_id,
            records,
            error,
            attempts,
            reason,
        };
        let handled = match std::panic::AssertUnwindSafe(handler.handle(batch))
            .catch_unwind()
            .await
        {
            Ok(result) => result,
            Err(panic) => Err(panic_error(panic)),
        };
        let dlq_error = match handled {
            Ok(()) => {
                warn!(
                    records = records.len(),
                    ?reason,
                    "records handed to the dead-letter handler"
                );
                ctx.metrics.batches_dead_lettered.increment(1);
                ctx.metrics
                    .records_dead_lettered
                    .increment(records.len() as u64);
                return Ok(());
            }
            Err(dlq_error) => dlq_error,
        };
        ctx.metrics.processor_failure(UserCall::DeadLetter);
        error!(error = %dlq_error, "dead-letter handler failed; retrying it");
        match retry.failed(interrupts).await {
            Again::Yes | Again::GaveUp(_) => {}
            Again::Interrupted(interrupt) => return Err(interrupt),
        }
    }
}
