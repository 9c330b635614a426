//! The HTTP layer's error type and the one place errors become responses.
//!
//! Bodies are `{"detail": "..."}` like FastAPI's, because agents read
//! `detail`. Lower layers' errors convert here and nowhere else.

use hyper::header::{HeaderName, HeaderValue, ALLOW, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::StatusCode;

use crate::proxy::ProxyError;
use crate::shard::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("Method Not Allowed")]
    MethodNotAllowed { allow: &'static str },
    /// Validation failed; the message names the field.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("Request body too large (limit {limit} bytes)")]
    PayloadTooLarge { limit: usize },
    /// Something in the request is larger than we keep (says what).
    #[error("{0}")]
    TooLarge(String),
    #[error("Request body not received in time")]
    RequestTimeout,
    /// A WebSocket handshake for a protocol version we do not speak (426,
    /// with the version we do).
    #[error("Unsupported WebSocket version (this server speaks 13)")]
    WebSocketVersion,
    #[error("Missing API key (header X-API-Key or Authorization: Bearer)")]
    MissingApiKey,
    /// An `X-API-Key` no configured key matches.
    #[error("Invalid API key")]
    InvalidApiKey,
    /// A bearer credential that is neither a key nor a valid, unexpired
    /// token (the originals' FastAPI text).
    #[error("Could not validate credentials")]
    InvalidToken,
    /// A valid credential whose role (or worker scope) is not enough.
    #[error("{0}")]
    Forbidden(String),
    /// Login with a wrong username or password (the originals' text).
    #[error("Incorrect username or password")]
    BadLogin,
    #[error("Too many failed login attempts; retry in {retry_after} s")]
    TooManyRequests { retry_after: u64 },
    /// Nobody can take the request right now (e.g. no capable worker).
    #[error("{0}")]
    Unavailable(String),
    /// The request conflicts with the resource's state (stale task lease).
    #[error("{0}")]
    Conflict(String),
    /// The upstream worker failed.
    #[error("{0}")]
    BadGateway(String),
    /// The upstream worker did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// The proxied request came back to us (508).
    #[error("{0}")]
    LoopDetected(String),
    #[error("Internal shard communication failed: {0}")]
    Shard(ShardError),
    /// Applied in memory but not durable (disk full, IO error).
    #[error("Storage unavailable: the change could not be made durable ({0}); retry later")]
    Storage(String),
}

impl From<ShardError> for ApiError {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::Store(msg) => ApiError::Storage(msg),
            ShardError::AtCapacity => ApiError::Unavailable(e.to_string()),
            e => ApiError::Shard(e),
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        let detail = e.to_string();
        match e {
            ProxyError::NoWorker(_) => ApiError::Unavailable(detail),
            ProxyError::UnknownService(_) => ApiError::NotFound(detail),
            ProxyError::Loop => ApiError::LoopDetected(detail),
            ProxyError::BadGateway(_) | ProxyError::Refused(_) => ApiError::BadGateway(detail),
            ProxyError::Timeout(_) => ApiError::GatewayTimeout(detail),
        }
    }
}

/// Bodies for the answers hyper gives by itself to a request head it cannot
/// take (the runtime's IO adapter puts them in): every error a client sees
/// is `{"detail"}` JSON, including these.
pub(crate) fn hyper_error_body(status: u16) -> Option<(&'static str, &'static [u8])> {
    let body: &'static [u8] = match status {
        400 => br#"{"detail":"Malformed HTTP request"}"#,
        414 => br#"{"detail":"Request URI too long"}"#,
        431 => br#"{"detail":"Request head too large (see --max-header-bytes)"}"#,
        _ => return None,
    };
    Some(("application/json", body))
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } | ApiError::TooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::WebSocketVersion => StatusCode::UPGRADE_REQUIRED,
            ApiError::MissingApiKey => StatusCode::UNAUTHORIZED,
            ApiError::InvalidApiKey | ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::InvalidToken | ApiError::BadLogin => StatusCode::UNAUTHORIZED,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Shard(_) | ApiError::Storage(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::LoopDetected(_) => StatusCode::LOOP_DETECTED,
        }
    }

    /// A header the answer must carry besides the body: `Allow` on 405,
    /// `WWW-Authenticate` on 401 (RFC 9110), `Retry-After` on 429,
    /// `Sec-WebSocket-Version` on 426 (RFC 6455 4.4).
    pub(crate) fn header(&self) -> Option<(HeaderName, HeaderValue)> {
        match self {
            ApiError::MethodNotAllowed { allow } => Some((ALLOW, HeaderValue::from_static(allow))),
            ApiError::MissingApiKey | ApiError::InvalidToken | ApiError::BadLogin => {
                Some((WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
            }
            ApiError::WebSocketVersion => Some((
                HeaderName::from_static("sec-websocket-version"),
                HeaderValue::from_static("13"),
            )),
            ApiError::TooManyRequests { retry_after } => {
                Some((RETRY_AFTER, HeaderValue::from(*retry_after)))
            }
            _ => None,
        }
    }

    /// `{"detail": "<message>"}`.
    pub(crate) fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "detail": self.to_string() }))
            .unwrap_or_else(|_| br#"{"detail":"error"}"#.to_vec())
    }

    pub(crate) fn field(field: &str, msg: impl std::fmt::Display) -> Self {
        ApiError::Unprocessable(format!("{field}: {msg}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_shape() {
        let e = ApiError::NotFound("Worker not found".into());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.body(), br#"{"detail":"Worker not found"}"#.to_vec());
        let e = ApiError::field("worker_id", "field required");
        assert_eq!(e.status().as_u16(), 422);
        assert_eq!(e.to_string(), "worker_id: field required");
    }
}
