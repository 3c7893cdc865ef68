//! The API's one error type, mapped to an HTTP status by an exhaustive match.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::wire::ErrorOut;
use crate::runs::{RunsError, TransitionError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No token, a malformed one, or one the store does not know.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known user asked for something their role does not allow.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Malformed JSON, bad query parameters, values out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The request is well-formed but the thing is in the wrong state for it.
    #[error("{0}")]
    Conflict(String),
    /// A limit on concurrent use (the text names it) is reached; try again later.
    #[error("{0}")]
    TooMany(String),
    #[error("the run coordinator is not running")]
    CoordinatorStopped,
    #[error("the access service is not running")]
    AccessStopped,
    /// Preparing a grant (its VM, keys, certificates) failed.
    #[error("the grant could not be prepared")]
    /// Boxed: an access error is large and `ApiError` is returned everywhere.
    Grant(#[source] Box<crate::access::AccessError>),
    #[error("the store failed")]
    Store(#[from] StoreError),
    #[error("cannot read the log {path}")]
    Log { path: String, source: std::io::Error },
    /// A blocking task a handler ran (reading the state directory) panicked or was cancelled.
    #[error("the {what} task")]
    Task { what: &'static str, source: tokio::task::JoinError },
}

impl From<RunsError> for ApiError {
    fn from(e: RunsError) -> Self {
        match e {
            RunsError::UnknownJob { .. } | RunsError::UnknownImage { .. } | RunsError::UnknownRun(_) => ApiError::NotFound(e.to_string()),
            RunsError::NotCancellable { .. } => ApiError::Conflict(e.to_string()),
            RunsError::Store(s) => ApiError::Store(s),
            RunsError::Transition(t) => match t {
                TransitionError::Store { source, .. } => ApiError::Store(source),
                TransitionError::Illegal { .. } | TransitionError::Stale { .. } | TransitionError::Unknown { .. } => {
                    ApiError::Conflict(t.to_string())
                }
            },
            RunsError::Stopped => ApiError::CoordinatorStopped,
        }
    }
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
            ApiError::CoordinatorStopped | ApiError::AccessStopped => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Grant(_) => (StatusCode::BAD_GATEWAY, "grant_failed"),
            ApiError::Store(_) | ApiError::Log { .. } | ApiError::Task { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let detail = if status.is_server_error() {
            // The cause chain may name files and SQL; it goes to the log, not the client.
            tracing::error!(error = %crate::api::chain(&self), "request failed");
            "the server failed; the detail is in its log".to_string()
        } else {
            self.to_string()
        };
        let mut resp = (status, Json(ErrorOut { error: code.into(), detail })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
