//! Mapping AWS SDK errors to [`BackendError`]: the service's error codes keep their meaning
//! (throttled, expired iterator, not found, in use), transport failures become `Transient`.

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use aws_sdk_kinesis::operation::RequestId;

use crate::backend::{BackendError, ErrorDetail};

/// Error codes meaning the request was refused for lack of permission or bad credentials.
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

/// Maps a service error code (and the HTTP status, when there is one) to a [`BackendError`]
/// carrying `detail`.
pub(crate) fn from_code(code: &str, detail: ErrorDetail, status: Option<u16>) -> BackendError {
    match code {
        "ProvisionedThroughputExceededException" | "KMSThrottlingException" => {
            BackendError::ProvisionedThroughputExceeded(detail)
        }
        "LimitExceededException" | "ThrottlingException" => BackendError::LimitExceeded(detail),
        "ExpiredIteratorException" => BackendError::ExpiredIterator(detail),
        "ExpiredNextTokenException" => BackendError::ExpiredNextToken(detail),
        "ResourceNotFoundException" => BackendError::ResourceNotFound(detail),
        "ResourceInUseException" => BackendError::ResourceInUse(detail),
        "InvalidArgumentException" | "ValidationException" => BackendError::InvalidArgument(detail),
        "InternalFailureException"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalServerError" => BackendError::Transient(detail),
        code if DENIED_CODES.contains(&code) => BackendError::AccessDenied(detail),
        _ => match status {
            Some(403) => BackendError::AccessDenied(detail),
            Some(s) if s >= 500 => BackendError::Transient(detail),
            _ => BackendError::Other(detail),
        },
    }
}

/// Maps an SDK error of `action` (the API name, for messages). The SDK error is kept as the
/// source; the service's code and request id are recorded when present.
pub(crate) fn classify<E, R>(action: &str, err: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + RawStatus + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or_default().to_owned();
            let mut detail = ErrorDetail::new(format!("{action}: {}", describe(context.err())));
            if !code.is_empty() {
                detail = detail.with_code(code.clone());
            }
            if let Some(id) = context.err().meta().request_id() {
                detail = detail.with_request_id(id);
            }
            let status = context.raw().status();
            from_code(&code, detail.with_source(err), status)
        }
        SdkError::TimeoutError(_) => BackendError::Transient(
            ErrorDetail::new(format!("{action}: timed out")).with_source(err),
        ),
        SdkError::DispatchFailure(failure) => {
            let credentials = failure
                .as_connector_error()
                .is_some_and(|e| e.is_user() || is_credentials_error(e));
            let text = match failure.as_connector_error() {
                Some(error) => format!("{action}: {}", DisplayErrorContext(error)),
                None => format!("{action}: the request could not be sent"),
            };
            let detail = ErrorDetail::new(text).with_source(err);
            if credentials {
                BackendError::AccessDenied(detail)
            } else {
                BackendError::Transient(detail)
            }
        }
        SdkError::ResponseError(context) => {
            let text = format!("{action}: the reply could not be read: {:?}", context.raw());
            BackendError::Transient(ErrorDetail::new(text).with_source(err))
        }
        other => {
            let text = format!("{action}: {}", DisplayErrorContext(other));
            BackendError::Other(ErrorDetail::new(text).with_source(err))
        }
    }
}

/// Maps an error of a `SubscribeToShard` event stream. The variant says what happened (set from
/// the message's `:exception-type` header); the payload may carry no error code.
pub(crate) fn classify_event(
    err: SdkError<
        aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
        aws_smithy_types::event_stream::RawMessage,
    >,
) -> BackendError {
    use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError as E;
    let code = match &err {
        SdkError::ServiceError(context) => match context.err() {
            E::ResourceInUseException(_) => Some("ResourceInUseException"),
            E::ResourceNotFoundException(_) => Some("ResourceNotFoundException"),
            E::KmsThrottlingException(_) => Some("KMSThrottlingException"),
            E::InternalFailureException(_) => Some("InternalFailureException"),
            _ => None,
        },
        _ => None,
    };
    match (code, &err) {
        (Some(code), SdkError::ServiceError(context)) => {
            let detail = ErrorDetail::new(format!(
                "SubscribeToShard event: {}",
                describe(context.err())
            ))
            .with_code(code);
            from_code(code, detail.with_source(err), None)
        }
        _ => classify("SubscribeToShard event", err),
    }
}

fn is_credentials_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// The HTTP status of a raw response, when the transport has one (event-stream messages have
/// none).
pub(crate) trait RawStatus {
    /// The HTTP status code.
    fn status(&self) -> Option<u16>;
}

impl RawStatus for aws_smithy_runtime_api::http::Response {
    fn status(&self) -> Option<u16> {
        Some(aws_smithy_runtime_api::http::Response::status(self).as_u16())
    }
}

impl RawStatus for aws_smithy_types::event_stream::RawMessage {
    fn status(&self) -> Option<u16> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_their_meaning() {
        let t = || ErrorDetail::new("x");
        assert!(matches!(
            from_code("ProvisionedThroughputExceededException", t(), Some(400)),
            BackendError::ProvisionedThroughputExceeded(_)
        ));
        assert!(matches!(
            from_code("ExpiredIteratorException", t(), Some(400)),
            BackendError::ExpiredIterator(_)
        ));
        assert!(matches!(
            from_code("ResourceInUseException", t(), Some(400)),
            BackendError::ResourceInUse(_)
        ));
        assert!(matches!(
            from_code("ResourceNotFoundException", t(), Some(400)),
            BackendError::ResourceNotFound(_)
        ));
        assert!(matches!(
            from_code("InternalFailure", t(), Some(500)),
            BackendError::Transient(_)
        ));
        assert!(matches!(
            from_code("", t(), Some(503)),
            BackendError::Transient(_)
        ));
        assert!(matches!(
            from_code("AccessDeniedException", t(), Some(400)),
            BackendError::AccessDenied(_)
        ));
        assert!(matches!(
            from_code("SomethingNew", t(), Some(400)),
            BackendError::Other(_)
        ));
    }
}
