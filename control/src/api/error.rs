//! What a handler answers when it fails, and axum's extractors with their rejections answered
//! the same way.
use axum::Json;
use axum::extract::{Path, Query, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api_types::ErrorBody;
use crate::auth::Role;
use crate::model::MacAddr;
use crate::state::ControlError;

/// Errors as the API returns them: a status and `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or unknown bearer token")]
    Unauthenticated,
    #[error("this needs the {need} role; the token has {have}")]
    Forbidden { need: Role, have: Role },
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("internal error: {0}")]
    Internal(String),
    /// A request axum's extractors refused (no JSON content type, bad JSON, a bad path or
    /// query); their status, our error body.
    #[error("{message}")]
    Rejected { status: StatusCode, message: String },
}

/// axum's `Json`, `Path` and `Query` extractors with their rejections answered like every other
/// error (`{"error": ...}` as JSON) instead of axum's plain-text bodies.
pub(super) struct Body<T>(pub(super) T);
pub(super) struct PathArg<T>(pub(super) T);
pub(super) struct QueryArg<T>(pub(super) T);

fn rejected(r: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = r.to_string();
    ApiError::Rejected {
        status: r.into_response().status(),
        message,
    }
}

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    S: Send + Sync,
    Json<T>: axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Self(v))
            .map_err(rejected)
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for PathArg<T>
where
    S: Send + Sync,
    Path<T>:
        axum::extract::FromRequestParts<S, Rejection = axum::extract::rejection::PathRejection>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(rejected)
    }
}

impl<S, T> axum::extract::FromRequestParts<S> for QueryArg<T>
where
    S: Send + Sync,
    Query<T>:
        axum::extract::FromRequestParts<S, Rejection = axum::extract::rejection::QueryRejection>,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(rejected)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Control(e) => match e {
                ControlError::NotFound { .. } => StatusCode::NOT_FOUND,
                ControlError::Exists { .. }
                | ControlError::InUse { .. }
                | ControlError::FileDefined { .. } => StatusCode::CONFLICT,
                ControlError::UnknownProfile { .. }
                | ControlError::UnknownRoot { .. }
                | ControlError::Invalid(_)
                | ControlError::Unservable(_)
                | ControlError::WeakToken { .. }
                | ControlError::ImageFile { .. }
                | ControlError::ImportSource { .. }
                | ControlError::BadDigest(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ControlError::NoImageStore | ControlError::NoRootBuilder => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                ControlError::TooManyImports(_) => StatusCode::TOO_MANY_REQUESTS,
                ControlError::Random(_)
                | ControlError::Store(_)
                | ControlError::Backup(_)
                | ControlError::ImportThread(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Rejected { status, .. } => *status,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        let mut response = (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: a 401 names the scheme the client should use.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"stampede\""),
            );
        }
        response
    }
}

pub(super) fn parse_mac(s: &str) -> Result<MacAddr, ApiError> {
    s.parse()
        .map_err(|e: stampede_proto::MacParseError| ApiError::BadRequest(e.to_string()))
}
