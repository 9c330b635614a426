//! CORS from `ALLOWED_ORIGINS` (comma list; `*` = any origin), answered
//! the way Starlette's CORSMiddleware does, so browser dashboards that
//! worked against the originals keep working.

use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_HEADERS,
    ACCESS_CONTROL_REQUEST_METHOD, VARY,
};
use hyper::{HeaderMap, Response, StatusCode};

use super::error::ApiError;
use super::{json, Body};
use crate::config::Config;

fn allowed<'a>(cfg: &Config, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
    let origin = origin?;
    let o = origin.to_str().ok()?;
    cfg.allowed_origins
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(o))
        .then_some(origin)
}

fn wildcard(cfg: &Config) -> bool {
    cfg.allowed_origins.iter().any(|a| a == "*")
}

/// Adds CORS headers to an ordinary response when the origin is allowed.
pub(super) fn decorate(cfg: &Config, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    if cfg.allowed_origins.is_empty() {
        return;
    }
    if let Some(o) = allowed(cfg, origin) {
        if wildcard(cfg) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        } else {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            headers.insert(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Answers an `OPTIONS` preflight for a known path.
pub(super) fn preflight(
    cfg: &Config,
    origin: Option<&HeaderValue>,
    req: &HeaderMap,
    allow: &'static str,
) -> Result<Response<Body>, ApiError> {
    let is_preflight = origin.is_some() && req.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
    if !is_preflight {
        // A plain OPTIONS: say what the path allows.
        let mut r = Response::new(super::full(bytes::Bytes::new()));
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        return Ok(r);
    }
    if allowed(cfg, origin).is_none() {
        return Err(ApiError::BadRequest("Disallowed CORS origin".into()));
    }
    let mut r = json(StatusCode::OK, b"{}".to_vec());
    let h = r.headers_mut();
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    let req_headers = req
        .get(ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type, x-api-key"));
    h.insert(ACCESS_CONTROL_ALLOW_HEADERS, req_headers);
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    Ok(r)
}
