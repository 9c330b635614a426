//! Browser sessions: `POST /api/session` trades an API key (or a header
//! credential) for an `HttpOnly` cookie, `DELETE /api/session` clears it.
//! Browsers cannot set headers on `EventSource` or WebSocket requests; the
//! cookie is how a dashboard authenticates those.
//!
//! Owns: reading the request and shaping the answer and `Set-Cookie`.
//! Must not: check credentials or sign anything itself (that is
//! `http::auth::Guard::open_session`), nor keep session state: sessions
//! are signed tokens any shard can check, and "sign out" only tells the
//! browser to drop its cookie.

use hyper::body::Incoming;
use hyper::header::{HeaderValue, SET_COOKIE};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::super::auth::SESSION_COOKIE;
use super::super::error::ApiError;
use super::super::request::parse_object;
use super::super::{json, Body, Ctx};

#[derive(Deserialize)]
struct Open {
    api_key: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/session",
    tag = "auth",
    summary = "Open a browser session",
    description = "Sets the `coordinator_session` cookie (HttpOnly, SameSite=Strict) for the key given in the body or in `X-API-Key`.",
    request_body(content = Option<super::openapi::SessionRequest>),
    responses(
        (status = 200, description = "Opened", body = super::openapi::Session),
        (status = 401, description = "No key", body = super::openapi::Detail),
        (status = 403, description = "Unknown key", body = super::openapi::Detail),
        (status = 429, description = "Too many failures", body = super::openapi::Detail),
    )
)]
pub(super) async fn create(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    // On an open coordinator every route is open to anyone: say so with the
    // role everyone effectively has, and set no cookie (there is nothing to
    // sign with, and nothing a cookie would unlock).
    if ctx.guard.is_open() {
        let out = serde_json::json!({"role": "admin", "expires_at": null, "open": true});
        return Ok(json(StatusCode::OK, out.to_string().into_bytes()));
    }
    let headers = req.headers().clone();
    // `{"api_key": "..."}` is small: read at most 16 KiB whatever the body
    // limit; an empty body means the key comes in a header.
    let body = ctx.body_within(req, 16 << 10).await?;
    // No body, or JSON `null`, means the same: the key is in a header.
    let body_key = if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
        None
    } else {
        parse_object::<Open>(&body)?.api_key
    };
    let s = ctx
        .guard
        .open_session(ctx.peer.map(|p| p.ip()), body_key.as_deref(), &headers)?;
    let expires_at = chrono::DateTime::from_timestamp(s.expires_at as i64, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false));
    let out = serde_json::json!({"role": s.role.as_str(), "expires_at": expires_at});
    let mut r = json(StatusCode::OK, out.to_string().into_bytes());
    let cookie = cookie(&s.token, s.max_age, ctx.guard.secure_cookie());
    r.headers_mut().insert(SET_COOKIE, cookie);
    Ok(r)
}

/// Tells the browser to drop the cookie. The token itself stays valid
/// until it expires (nothing is stored to revoke); changing any key, user
/// or `JWT_SECRET` revokes every session.
#[utoipa::path(
    delete, path = "/api/session", tag = "auth", summary = "End the browser session (clears the cookie)",
    responses((status = 204, description = "Cleared"))
)]
pub(super) async fn delete(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let mut r = Response::new(super::super::full(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r.headers_mut()
        .insert(SET_COOKIE, cookie("", 0, ctx.guard.secure_cookie()));
    Ok(r)
}

/// `Set-Cookie` for the session: `HttpOnly` (page scripts never see it),
/// `SameSite=Strict` (other sites' requests do not carry it), `Path=/`
/// (every route), `Secure` when the public URL is `https://`.
fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let v = format!(
        "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    );
    // A JWT is base64url and dots: always a valid header value.
    HeaderValue::from_str(&v)
        .unwrap_or_else(|_| HeaderValue::from_static("coordinator_session=; Max-Age=0"))
}
