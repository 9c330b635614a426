//! Login and token check, as the original service coordinator answers
//! them: `POST /api/auth/login` `{username, password}` ->
//! `{access_token, token_type: "bearer"}`, and `GET /api/auth/verify` with
//! `Authorization: Bearer <token>` -> `{valid, username, role}`.
//!
//! The credential logic (users, tokens, rate limit) lives in
//! `http::auth`; this file only reads requests and shapes answers.

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::super::error::ApiError;
use super::super::request::parse_object;
use super::super::{json, Body, Ctx};

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

/// Longest username/password read; longer ones cannot match anything and
/// would only make the password hash work longer.
const MAX_FIELD: usize = 1024;

#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    summary = "Log in (users of --users-file)",
    request_body(content = super::openapi::Login),
    responses(
        (status = 200, description = "A bearer token", body = super::openapi::Token),
        (status = 401, description = "Incorrect username or password", body = super::openapi::Detail),
        (status = 429, description = "Too many failures: see Retry-After", body = super::openapi::Detail),
    )
)]
pub(super) async fn login(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    // A login form is small: read at most 16 KiB whatever the body limit.
    let body = ctx.body_within(req, 16 << 10).await?;
    let l: Login = parse_object(&body)?;
    if l.username.len() > MAX_FIELD || l.password.len() > MAX_FIELD {
        return Err(ApiError::field(
            "body",
            format!("username and password are at most {MAX_FIELD} bytes"),
        ));
    }
    let token = ctx
        .guard
        .login(ctx.peer.map(|p| p.ip()), &l.username, l.password)
        .await?;
    let out = serde_json::json!({"access_token": token, "token_type": "bearer"});
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}

/// Answers for the caller's credential (the guard has checked it): a
/// token names its user; an API key has no username.
#[utoipa::path(
    get, path = "/api/auth/verify", tag = "auth", summary = "Check a credential",
    responses((status = 200, description = "Valid", body = super::openapi::Verified))
)]
pub(super) async fn verify(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let Some(role) = ctx.grant.role else {
        return Err(ApiError::InvalidToken);
    };
    let out = serde_json::json!({
        "valid": true,
        "username": ctx.guard.username(&ctx.grant),
        "role": role.as_str(),
    });
    Ok(json(StatusCode::OK, out.to_string().into_bytes()))
}
