//! Faults the emulators cannot produce, injected around the real AWS SDK client by an SDK
//! interceptor ([`FaultInjector`], added with `KinesisBackendBuilder::customize`).
//!
//! Why an interceptor (and not a TCP proxy or `ferrokinesis`'s chaos options): it sits in the
//! real client's request pipeline, knows which operation each request is (so it can fail the
//! n-th `GetRecords` and nothing else, deterministically, and count what it injected), and can
//! rewrite a request before it is signed (to drop `PutRecords` entries so they are really not
//! written), a response before it is parsed (an error answer, or an event stream cut short) and
//! the parsed output (the dropped entries answered as failed, in their places).
//! A TCP proxy sees keep-alive connections carrying many requests and would need to parse HTTP
//! to do the same; `ferrokinesis` is a separate emulator whose chaos is random and inside its
//! own server, not around the client talking to kinesis-local, and brings axum, clap and
//! OpenTelemetry as dependencies.
//!
//! Every fault is what the service would answer: `ProvisionedThroughputExceededException` and
//! `ExpiredIteratorException` as HTTP 400 JSON errors, `InternalFailure` as HTTP 500, a dropped
//! subscription as an event stream whose body fails after some frames, and a partial
//! `PutRecords` failure as entries not written and answered with an error code.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
use aws_sdk_kinesis::types::PutRecordsResultEntry;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeDeserializationInterceptorContextMut, BeforeTransmitInterceptorContextMut,
    FinalizerInterceptorContextMut,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};

/// Which calls fail, by operation: every n-th call (0: never).
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Every n-th `GetRecords` answers `ProvisionedThroughputExceededException`.
    pub throttle_get_records_every: u64,
    /// Every n-th `GetRecords` answers HTTP 500 `InternalFailure`.
    pub fail_get_records_every: u64,
    /// Every n-th `GetRecords` answers `ExpiredIteratorException`.
    pub expire_get_records_every: u64,
    /// Every n-th `GetShardIterator` answers HTTP 500.
    pub fail_get_shard_iterator_every: u64,
    /// Every n-th `SubscribeToShard` stream is cut after this many body frames.
    pub cut_subscription_every: u64,
    /// Frames a cut subscription delivers before it fails.
    pub cut_after_frames: usize,
    /// Every n-th `PutRecords` entry (counted over all calls) is not written and answered with
    /// `ProvisionedThroughputExceededException`.
    pub drop_put_entry_every: u64,
    /// Every call of these operations (e.g. `"GetRecords"`) answers HTTP 400
    /// `AccessDeniedException`, as IAM does for an action the policy lacks.
    pub deny: Vec<&'static str>,
}

/// What was injected.
#[derive(Debug, Default)]
pub struct Injected {
    pub throttled: AtomicU64,
    pub server_errors: AtomicU64,
    pub expired: AtomicU64,
    pub cut_subscriptions: AtomicU64,
    pub dropped_put_entries: AtomicU64,
}

#[derive(Debug, Default)]
struct Calls {
    get_records: AtomicU64,
    get_shard_iterator: AtomicU64,
    subscribe: AtomicU64,
    put_entries: AtomicU64,
}

/// The interceptor. Clone it into the backend builder and keep one to read [`Injected`].
#[derive(Clone, Debug)]
pub struct FaultInjector {
    plan: Arc<FaultPlan>,
    calls: Arc<Calls>,
    /// Attempts sent, by operation name.
    attempts: Arc<Mutex<HashMap<String, u64>>>,
    /// Counts of what was injected.
    pub injected: Arc<Injected>,
}

impl FaultInjector {
    pub fn new(plan: FaultPlan) -> Self {
        Self {
            plan: Arc::new(plan),
            calls: Arc::default(),
            attempts: Arc::default(),
            injected: Arc::default(),
        }
    }

    /// How many attempts of `operation` (e.g. `"DescribeStreamSummary"`) were sent so far.
    pub fn attempts(&self, operation: &str) -> u64 {
        self.attempts
            .lock()
            .unwrap()
            .get(operation)
            .copied()
            .unwrap_or(0)
    }

    fn due(counter: &AtomicU64, every: u64) -> bool {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        every > 0 && n.is_multiple_of(every)
    }
}

/// The indexes of the `PutRecords` entries this attempt dropped.
#[derive(Clone, Debug)]
struct Dropped(Vec<usize>);

impl Storable for Dropped {
    type Storer = StoreReplace<Self>;
}

/// The fault chosen for this attempt.
#[derive(Clone, Debug)]
enum Chosen {
    Error { status: u16, code: &'static str },
    Cut(usize),
}

impl Storable for Chosen {
    type Storer = StoreReplace<Self>;
}

fn operation(cfg: &ConfigBag) -> String {
    cfg.load::<Metadata>()
        .map(|m| m.name().to_owned())
        .unwrap_or_default()
}

fn error_response(status: u16, code: &str) -> Response {
    let body = format!(r#"{{"__type":"{code}","message":"injected by the test"}}"#);
    let mut response = Response::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body));
    response
        .headers_mut()
        .insert("content-type", "application/x-amz-json-1.1");
    response
}

impl Intercept for FaultInjector {
    fn name(&self) -> &'static str {
        "FaultInjector"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let plan = &self.plan;
        let operation = operation(cfg);
        *self
            .attempts
            .lock()
            .unwrap()
            .entry(operation.clone())
            .or_default() += 1;
        if plan.deny.contains(&operation.as_str()) {
            cfg.interceptor_state().store_put(Chosen::Error {
                status: 400,
                code: "AccessDeniedException",
            });
            return Ok(());
        }
        match operation.as_str() {
            "GetRecords" => {
                let calls = &self.calls.get_records;
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                let hit = |every: u64| every > 0 && n.is_multiple_of(every);
                let chosen = if hit(plan.throttle_get_records_every) {
                    self.injected.throttled.fetch_add(1, Ordering::SeqCst);
                    Some(Chosen::Error {
                        status: 400,
                        code: "ProvisionedThroughputExceededException",
                    })
                } else if hit(plan.fail_get_records_every) {
                    self.injected.server_errors.fetch_add(1, Ordering::SeqCst);
                    Some(Chosen::Error {
                        status: 500,
                        code: "InternalFailure",
                    })
                } else if hit(plan.expire_get_records_every) {
                    self.injected.expired.fetch_add(1, Ordering::SeqCst);
                    Some(Chosen::Error {
                        status: 400,
                        code: "ExpiredIteratorException",
                    })
                } else {
                    None
                };
                if let Some(chosen) = chosen {
                    cfg.interceptor_state().store_put(chosen);
                }
            }
            "GetShardIterator"
                if Self::due(
                    &self.calls.get_shard_iterator,
                    plan.fail_get_shard_iterator_every,
                ) =>
            {
                self.injected.server_errors.fetch_add(1, Ordering::SeqCst);
                cfg.interceptor_state().store_put(Chosen::Error {
                    status: 500,
                    code: "InternalFailure",
                });
            }
            "SubscribeToShard" if Self::due(&self.calls.subscribe, plan.cut_subscription_every) => {
                self.injected
                    .cut_subscriptions
                    .fetch_add(1, Ordering::SeqCst);
                cfg.interceptor_state()
                    .store_put(Chosen::Cut(plan.cut_after_frames));
            }
            "PutRecords" if plan.drop_put_entry_every > 0 => {
                let request = context.request_mut();
                let Some(bytes) = request.body().bytes() else {
                    return Ok(());
                };
                let mut body: serde_json::Value = serde_json::from_slice(bytes)?;
                let Some(records) = body.get_mut("Records").and_then(|r| r.as_array_mut()) else {
                    return Ok(());
                };
                let all: Vec<serde_json::Value> = std::mem::take(records);
                let total = all.len();
                let mut dropped = Vec::new();
                let mut kept = Vec::with_capacity(total);
                for (i, entry) in all.into_iter().enumerate() {
                    // Never drop a whole request: the API refuses an empty one.
                    let whole = i + 1 == total && kept.is_empty();
                    if !whole && Self::due(&self.calls.put_entries, plan.drop_put_entry_every) {
                        dropped.push(i);
                    } else {
                        kept.push(entry);
                    }
                }
                if dropped.is_empty() {
                    *records = kept;
                    return Ok(());
                }
                *records = kept;
                self.injected
                    .dropped_put_entries
                    .fetch_add(dropped.len() as u64, Ordering::SeqCst);
                let new = serde_json::to_vec(&body)?;
                request
                    .headers_mut()
                    .insert("content-length", new.len().to_string());
                *request.body_mut() = SdkBody::from(new);
                cfg.interceptor_state().store_put(Dropped(dropped));
            }
            _ => {}
        }
        Ok(())
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(chosen) = cfg.load::<Chosen>().cloned() {
            match chosen {
                Chosen::Error { status, code } => {
                    *context.response_mut() = error_response(status, code);
                }
                Chosen::Cut(frames) => {
                    let response = context.response_mut();
                    if response.status().is_success() {
                        let body = std::mem::replace(response.body_mut(), SdkBody::taken());
                        *response.body_mut() = SdkBody::from_body_1_x(CutBody {
                            inner: body,
                            frames_left: frames,
                        });
                    }
                }
            }
            return Ok(());
        }
        Ok(())
    }

    fn modify_before_attempt_completion(
        &self,
        context: &mut FinalizerInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The entries dropped from the request: answer them as throttled, in their places.
        let Some(Dropped(dropped)) = cfg.load::<Dropped>().cloned() else {
            return Ok(());
        };
        let Some(Ok(output)) = context.output_or_error_mut() else {
            return Ok(());
        };
        let Some(output) = output.downcast_mut::<PutRecordsOutput>() else {
            return Ok(());
        };
        for &i in &dropped {
            let failed = PutRecordsResultEntry::builder()
                .error_code("ProvisionedThroughputExceededException")
                .error_message("injected by the test")
                .build();
            let at = i.min(output.records.len());
            output.records.insert(at, failed);
        }
        let failed = output.failed_record_count.unwrap_or(0) + dropped.len() as i32;
        output.failed_record_count = Some(failed);
        Ok(())
    }
}

/// A response body that fails after `frames_left` frames, as a connection reset would.
struct CutBody {
    inner: SdkBody,
    frames_left: usize,
}

impl http_body::Body for CutBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.frames_left == 0 {
            return Poll::Ready(Some(Err("connection reset (injected by the test)".into())));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.frames_left -= 1;
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}
