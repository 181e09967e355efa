//! Mapping AWS SDK errors to [`BackendError`]: the service's error codes keep their meaning
//! (throttled, expired iterator, not found, in use), transport failures become `Transient`.

use aws_sdk_kinesis::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::backend::BackendError;

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

/// Maps a service error code (and the HTTP status, when there is one) to a [`BackendError`].
pub(crate) fn from_code(code: &str, text: String, status: Option<u16>) -> BackendError {
    match code {
        "ProvisionedThroughputExceededException" | "KMSThrottlingException" => {
            BackendError::ProvisionedThroughputExceeded(text)
        }
        "LimitExceededException" | "ThrottlingException" => BackendError::LimitExceeded(text),
        "ExpiredIteratorException" => BackendError::ExpiredIterator(text),
        "ExpiredNextTokenException" => BackendError::ExpiredNextToken(text),
        "ResourceNotFoundException" => BackendError::ResourceNotFound(text),
        "ResourceInUseException" => BackendError::ResourceInUse(text),
        "InvalidArgumentException" | "ValidationException" => BackendError::InvalidArgument(text),
        "InternalFailureException"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "ServiceUnavailableException"
        | "InternalServerError" => BackendError::Transient(text),
        code if DENIED_CODES.contains(&code) => BackendError::AccessDenied(text),
        _ => match status {
            Some(403) => BackendError::AccessDenied(text),
            Some(s) if s >= 500 => BackendError::Transient(text),
            _ => BackendError::Other(text),
        },
    }
}

/// Maps an SDK error of `action` (the API name, for messages).
pub(crate) fn classify<E, R>(action: &str, err: SdkError<E, R>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + RawStatus,
{
    match err {
        SdkError::ServiceError(context) => {
            let code = context.err().code().unwrap_or_default().to_owned();
            let text = format!("{action}: {}", describe(context.err()));
            from_code(&code, text, context.raw().status())
        }
        SdkError::TimeoutError(_) => BackendError::Transient(format!("{action}: timed out")),
        SdkError::DispatchFailure(failure) => {
            let credentials = failure
                .as_connector_error()
                .is_some_and(|e| e.is_user() || is_credentials_error(e));
            let text = match failure.as_connector_error() {
                Some(error) => format!("{action}: {}", DisplayErrorContext(error)),
                None => format!("{action}: the request could not be sent"),
            };
            if credentials {
                BackendError::AccessDenied(text)
            } else {
                BackendError::Transient(text)
            }
        }
        SdkError::ResponseError(context) => BackendError::Transient(format!(
            "{action}: the reply could not be read: {:?}",
            context.raw()
        )),
        other => BackendError::Other(format!("{action}: {}", DisplayErrorContext(other))),
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
    match (code, err) {
        (Some(code), SdkError::ServiceError(context)) => from_code(
            code,
            format!("SubscribeToShard event: {}", describe(context.err())),
            None,
        ),
        (_, err) => classify("SubscribeToShard event", err),
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
        let t = || "x".to_owned();
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
