//! Classifying SDK errors and retrying the ones that can be retried.

use std::future::Future;
use std::time::Duration;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use backon::BackoffBuilder;
use kcl_core::lease::LeaseError;

use crate::capacity::Counters;
use crate::item::Item;

/// What one attempt of a request ended with, when it did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server refused the request before applying it (throttling): retry later.
    Throttled(String),
    /// A 5xx answer: the request may or may not have been applied.
    Server(String),
    /// No answer (timeout, connection lost, unreadable reply): the request may have been applied.
    Lost(String),
    /// The condition expression failed; the item as it was, when the server returned it.
    Condition(Option<Box<Item>>),
    /// The caller lacks a permission or its credentials are refused.
    Denied(String),
    /// The table does not exist.
    TableMissing(String),
    /// No usable credentials: the request was not sent.
    Credentials(String),
    /// Anything else: not retried.
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// The error codes DynamoDB uses when it throttles a request.
const THROTTLING_CODES: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
];

/// Error codes meaning the credentials are refused or lack a permission.
const DENIED_CODES: [&str; 8] = [
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "ExpiredTokenException",
    "IncompleteSignatureException",
    "InvalidClientTokenId",
];

fn describe<E: ProvideErrorMetadata>(err: &E) -> String {
    match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_owned(),
        (None, Some(message)) => message.to_owned(),
        (None, None) => "unknown error".to_owned(),
    }
}

/// Classifies an SDK error. `condition` recognises this operation's conditional-check failure
/// and extracts the old item from it (`Some(None)`: a condition failure without the item).
pub(crate) fn classify<E>(
    err: SdkError<E, HttpResponse>,
    condition: impl FnOnce(&E) -> Option<Option<Item>>,
) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or_default();
            if let Some(item) = condition(context.err()) {
                return Failure::Condition(item.map(Box::new));
            }
            if code == "ConditionalCheckFailedException" {
                return Failure::Condition(None);
            }
            let text = describe(context.err());
            if THROTTLING_CODES.contains(&code) {
                Failure::Throttled(text)
            } else if DENIED_CODES.contains(&code) {
                Failure::Denied(text)
            } else if context.raw().status().as_u16() == 403 {
                // Refusals from IAM-style front ends (moto's IAM emulation, proxies, endpoint
                // policies) may come as HTTP 403 with a body the SDK cannot parse.
                let body = context
                    .raw()
                    .body()
                    .bytes()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(400)]).into_owned())
                    .unwrap_or_default();
                Failure::Denied(format!("HTTP 403 ({text}): {body}"))
            } else if code == "ResourceNotFoundException" {
                Failure::TableMissing(text)
            } else if code == "InternalServerError"
                || code == "ServiceUnavailable"
                || code.ends_with("ServiceUnavailableException")
            {
                Failure::Server(text)
            } else {
                // 5xx answers without a known code are server errors too.
                if context.raw().status().is_server_error() {
                    Failure::Server(text)
                } else {
                    Failure::Other(Box::new(SdkError::ServiceError(context)))
                }
            }
        }
        SdkError::TimeoutError(_) => Failure::Lost("the request timed out".to_owned()),
        SdkError::DispatchFailure(failure) => {
            let credentials = failure
                .as_connector_error()
                .and_then(|e| find_source::<CredentialsError>(e));
            match credentials {
                // Nothing was sent: the SDK found no usable credentials.
                Some(error) => Failure::Credentials(DisplayErrorContext(error).to_string()),
                None => Failure::Lost(match failure.as_connector_error() {
                    Some(error) => format!(
                        "the request could not be completed: {}",
                        DisplayErrorContext(error)
                    ),
                    None => "the request could not be completed".to_owned(),
                }),
            }
        }
        SdkError::ResponseError(_) => Failure::Lost("the reply could not be read".to_owned()),
        other => Failure::Other(Box::new(other)),
    }
}

/// The first error of type `T` in the source chain of `error` (itself included).
fn find_source<'a, T: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Whether a request writes (its outcome matters when the reply is lost) or only reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

/// How a request ended after retries: success, a condition failure (for the caller to interpret)
/// or a final error.
pub(crate) enum Outcome<T> {
    Done(T),
    Condition(Option<Box<Item>>),
}

/// Retry policy for one request.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) max_retries: usize,
    pub(crate) min_delay: Duration,
    pub(crate) max_delay: Duration,
}

/// Runs `attempt` until it succeeds or fails for good.
///
/// * Throttling and 5xx answers are retried with exponential backoff and jitter, at most
///   `max_retries` times, then surface as `Throttled` / `Unavailable`.
/// * A lost reply to a write surfaces at once as `Unknown` (the write may have landed; the caller
///   reconciles by reading). Reads are retried, then surface as `Unavailable`.
/// * After a write attempt whose outcome was unknown (a 5xx), a later condition failure may be
///   the effect of that attempt itself, so it surfaces as `Unknown` too.
/// * Permission and missing-table errors surface as `Misconfigured` naming `action` and `table`.
pub(crate) async fn run<T, F, Fut>(
    policy: &RetryPolicy,
    counters: &Counters,
    kind: Kind,
    action: &str,
    table: &str,
    mut attempt: F,
) -> Result<Outcome<T>, LeaseError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.max_retries)
        .with_jitter()
        .build();
    let mut ambiguous: Option<String> = None;
    loop {
        let failure = match attempt().await {
            Ok(value) => return Ok(Outcome::Done(value)),
            Err(failure) => failure,
        };
        let retry_after = match failure {
            Failure::Condition(item) => {
                counters.condition_failed();
                return match ambiguous {
                    Some(reason) => Err(LeaseError::Unknown(format!(
                        "{action} on table {table}: an earlier attempt failed with {reason} and \
                         may have been applied; the retry found the condition failed"
                    ))),
                    None => Ok(Outcome::Condition(item)),
                };
            }
            Failure::Throttled(reason) => {
                counters.throttled();
                match delays.next() {
                    Some(delay) => delay,
                    None => {
                        return Err(match ambiguous {
                            Some(earlier) => LeaseError::Unknown(format!(
                                "{action} on table {table}: throttled ({reason}) after an \
                                 attempt with unknown outcome ({earlier})"
                            )),
                            None => LeaseError::Throttled(format!(
                                "{action} on table {table}: {reason} (gave up after {} retries)",
                                policy.max_retries
                            )),
                        });
                    }
                }
            }
            Failure::Server(reason) => {
                if kind == Kind::Write {
                    ambiguous = Some(reason.clone());
                }
                match delays.next() {
                    Some(delay) => delay,
                    None => {
                        let message = format!(
                            "{action} on table {table}: {reason} (gave up after {} retries)",
                            policy.max_retries
                        );
                        return Err(match kind {
                            Kind::Write => LeaseError::Unknown(message),
                            Kind::Read => LeaseError::Unavailable(message),
                        });
                    }
                }
            }
            Failure::Lost(reason) => match kind {
                Kind::Write => {
                    return Err(LeaseError::Unknown(format!(
                        "{action} on table {table}: {reason}"
                    )));
                }
                Kind::Read => match delays.next() {
                    Some(delay) => delay,
                    None => {
                        return Err(LeaseError::Unavailable(format!(
                            "{action} on table {table}: {reason} (gave up after {} retries)",
                            policy.max_retries
                        )));
                    }
                },
            },
            Failure::Denied(reason) => {
                return Err(LeaseError::Misconfigured(format!(
                    "{action} on table {table} was refused: {reason}. The worker's IAM policy \
                     must allow {action} on the lease table (see the kcl-lease-dynamo docs for \
                     the minimal policy)"
                )));
            }
            Failure::Credentials(reason) => {
                return Err(LeaseError::Misconfigured(format!(
                    "{action} on table {table} was not sent: no usable AWS credentials ({reason}); \
                     configure credentials (environment, profile, or an instance/task role)"
                )));
            }
            Failure::TableMissing(reason) => {
                return Err(LeaseError::Misconfigured(format!(
                    "lease table {table} does not exist ({action}: {reason})"
                )));
            }
            Failure::Other(source) => return Err(LeaseError::Store(source)),
        };
        counters.retried();
        tracing::debug!(action, table, ?retry_after, "retrying a DynamoDB request");
        tokio::time::sleep(retry_after).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
    use aws_sdk_dynamodb::types::error::ConditionalCheckFailedException;
    use aws_smithy_runtime_api::http::{Response, StatusCode};
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service_error(code: &str, status: u16) -> SdkError<UpdateItemError, Response> {
        let err = UpdateItemError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("from the test")
                .build(),
        );
        let status = StatusCode::try_from(status).expect("status");
        SdkError::service_error(err, Response::new(status, SdkBody::empty()))
    }

    fn no_item(e: &UpdateItemError) -> Option<Option<Item>> {
        e.is_conditional_check_failed_exception().then_some(None)
    }

    const FAST: RetryPolicy = RetryPolicy {
        max_retries: 3,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };

    /// Runs a scripted sequence of failures (then success) through `run`.
    async fn scripted(kind: Kind, script: Vec<Failure>) -> (Result<Outcome<u32>, LeaseError>, u32) {
        let script = Mutex::new(script.into_iter());
        let calls = Mutex::new(0u32);
        let counters = Counters::default();
        let result = run(&FAST, &counters, kind, "dynamodb:UpdateItem", "t", || {
            *calls.lock().expect("lock") += 1;
            let next = script.lock().expect("lock").next();
            async move {
                match next {
                    Some(failure) => Err(failure),
                    None => Ok(7),
                }
            }
        })
        .await;
        let calls = *calls.lock().expect("lock");
        (result, calls)
    }

    #[test]
    fn throttling_codes_are_throttled() {
        for code in THROTTLING_CODES {
            assert!(matches!(
                classify(service_error(code, 400), no_item),
                Failure::Throttled(_)
            ));
        }
    }

    #[test]
    fn server_errors_and_denials_are_recognised() {
        assert!(matches!(
            classify(service_error("InternalServerError", 500), no_item),
            Failure::Server(_)
        ));
        assert!(matches!(
            classify(service_error("SomethingNew", 503), no_item),
            Failure::Server(_)
        ));
        assert!(matches!(
            classify(service_error("AccessDeniedException", 400), no_item),
            Failure::Denied(_)
        ));
        assert!(matches!(
            classify(service_error("ValidationException", 400), no_item),
            Failure::Other(_)
        ));
        let condition = SdkError::service_error(
            UpdateItemError::ConditionalCheckFailedException(
                ConditionalCheckFailedException::builder().build(),
            ),
            Response::new(StatusCode::try_from(400).expect("status"), SdkBody::empty()),
        );
        assert!(matches!(
            classify(condition, no_item),
            Failure::Condition(None)
        ));
    }

    #[tokio::test]
    async fn throttling_is_retried_then_surfaced() {
        let (result, calls) = scripted(
            Kind::Write,
            vec![
                Failure::Throttled("slow down".into()),
                Failure::Throttled("slow down".into()),
            ],
        )
        .await;
        assert!(matches!(result, Ok(Outcome::Done(7))));
        assert_eq!(calls, 3);

        let (result, calls) = scripted(
            Kind::Write,
            (0..10)
                .map(|_| Failure::Throttled("slow down".into()))
                .collect(),
        )
        .await;
        assert!(
            matches!(result, Err(LeaseError::Throttled(_))),
            "{:?}",
            result.err()
        );
        assert_eq!(calls, 4, "one attempt and three retries");
    }

    #[tokio::test]
    async fn a_lost_write_reply_is_unknown_at_once() {
        let (result, calls) = scripted(Kind::Write, vec![Failure::Lost("timed out".into())]).await;
        assert!(matches!(result, Err(LeaseError::Unknown(_))));
        assert_eq!(calls, 1);
        let (result, calls) = scripted(Kind::Read, vec![Failure::Lost("timed out".into())]).await;
        assert!(matches!(result, Ok(Outcome::Done(7))));
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn a_condition_failure_after_a_server_error_is_unknown() {
        let (result, _) = scripted(
            Kind::Write,
            vec![Failure::Server("500".into()), Failure::Condition(None)],
        )
        .await;
        assert!(matches!(result, Err(LeaseError::Unknown(_))));
        let (result, _) = scripted(
            Kind::Read,
            (0..10).map(|_| Failure::Server("500".into())).collect(),
        )
        .await;
        assert!(matches!(result, Err(LeaseError::Unavailable(_))));
    }

    #[tokio::test]
    async fn denied_names_the_action() {
        let (result, calls) = scripted(
            Kind::Write,
            vec![Failure::Denied("AccessDeniedException: no".into())],
        )
        .await;
        match result {
            Err(LeaseError::Misconfigured(message)) => {
                assert!(message.contains("dynamodb:UpdateItem"), "{message}");
                assert!(message.contains("table t"), "{message}");
            }
            _ => panic!("expected Misconfigured"),
        }
        assert_eq!(calls, 1);
    }
}
