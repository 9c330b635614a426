//! `/openapi.json`, `/docs` (Swagger UI) and `/redoc`, as the FastAPI
//! originals served them, from assets compiled into the binary: the pages
//! work with no network, and nothing loads from a CDN.
//!
//! The third-party files are the npm packages' own, unchanged
//! (`ui/vendor/`, whose `packages.json` records each package's version,
//! npm integrity, licence and the SHA-256 of every file taken; a test
//! checks the embedded bytes against it and `.ci/vendor-check` against
//! the registry).
//!
//! Must not: read anything from disk at run time, or build the spec more
//! than once per shard.

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use super::super::error::ApiError;
use super::super::{full, Body};
use super::openapi::Detail;

/// An embedded file: its name under `/docs/assets/`, type and bytes.
pub(crate) struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
}

/// An [`Asset`] of a file of this package, compiled in (also used by the
/// dashboard's `ui`).
macro_rules! embed {
    ($name:literal, $ty:expr, $path:literal) => {
        Asset {
            name: $name,
            content_type: $ty,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $path)),
        }
    };
}
pub(super) use embed;

pub(super) const JS: &str = "text/javascript; charset=utf-8";
pub(super) const CSS: &str = "text/css; charset=utf-8";
pub(super) const TEXT: &str = "text/plain; charset=utf-8";
pub(super) const HTML: &str = "text/html; charset=utf-8";

/// Everything under `/docs/assets/`.
pub(crate) const ASSETS: [Asset; 17] = [
    embed!(
        "swagger-ui-bundle.js",
        JS,
        "ui/vendor/swagger-ui-dist/swagger-ui-bundle.js"
    ),
    embed!(
        "swagger-ui.css",
        CSS,
        "ui/vendor/swagger-ui-dist/swagger-ui.css"
    ),
    embed!("swagger-init.js", JS, "ui/docs/swagger-init.js"),
    embed!(
        "redoc.standalone.js",
        JS,
        "ui/vendor/redoc/redoc.standalone.js"
    ),
    embed!(
        "swagger-ui-dist.LICENSE.txt",
        TEXT,
        "ui/vendor/swagger-ui-dist/LICENSE"
    ),
    embed!(
        "swagger-ui-dist.NOTICE.txt",
        TEXT,
        "ui/vendor/swagger-ui-dist/NOTICE"
    ),
    embed!(
        "swagger-ui-bundle.js.LICENSE.txt",
        TEXT,
        "ui/vendor/swagger-ui-dist/swagger-ui-bundle.js.LICENSE.txt"
    ),
    embed!("redoc.LICENSE.txt", TEXT, "ui/vendor/redoc/LICENSE"),
    embed!(
        "redoc.standalone.js.LICENSE.txt",
        TEXT,
        "ui/vendor/redoc/redoc.standalone.js.LICENSE.txt"
    ),
    embed!("graphiql.min.js", JS, "ui/vendor/graphiql/graphiql.min.js"),
    embed!(
        "graphiql.min.css",
        CSS,
        "ui/vendor/graphiql/graphiql.min.css"
    ),
    embed!("graphiql-init.js", JS, "ui/docs/graphiql-init.js"),
    embed!(
        "react.production.min.js",
        JS,
        "ui/vendor/react/react.production.min.js"
    ),
    embed!(
        "react-dom.production.min.js",
        JS,
        "ui/vendor/react-dom/react-dom.production.min.js"
    ),
    embed!("graphiql.LICENSE.txt", TEXT, "ui/vendor/graphiql/LICENSE"),
    embed!("react.LICENSE.txt", TEXT, "ui/vendor/react/LICENSE"),
    embed!("react-dom.LICENSE.txt", TEXT, "ui/vendor/react-dom/LICENSE"),
];

const SWAGGER_HTML: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/docs/swagger.html"));
const GRAPHIQL_HTML: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/ui/docs/graphiql.html"
));
const REDOC_HTML: &[u8] =
    include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/ui/docs/redoc.html"));

pub(super) fn fixed(
    content_type: &'static str,
    body: impl Into<Bytes>,
    cache: bool,
) -> Response<Body> {
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The assets change only with the binary; the pages and the spec are
    // small and may change with it too, so they are revalidated.
    let cc = match cache {
        true => "public, max-age=3600",
        false => "no-cache",
    };
    h.insert(CACHE_CONTROL, HeaderValue::from_static(cc));
    r
}

/// The OpenAPI 3.1 document of this server.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "ops",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
pub(super) fn openapi_json() -> Response<Body> {
    fixed("application/json", super::openapi::json(), false)
}

/// Swagger UI for `/openapi.json` ("Try it out" sends the session cookie).
#[utoipa::path(
    get,
    path = "/docs",
    tag = "ops",
    responses((status = 200, description = "Swagger UI", content_type = "text/html", body = String))
)]
pub(super) fn swagger() -> Response<Body> {
    fixed(HTML, Bytes::from_static(SWAGGER_HTML), false)
}

/// ReDoc for `/openapi.json`.
#[utoipa::path(
    get,
    path = "/redoc",
    tag = "ops",
    responses((status = 200, description = "ReDoc", content_type = "text/html", body = String))
)]
pub(super) fn redoc() -> Response<Body> {
    fixed(HTML, Bytes::from_static(REDOC_HTML), false)
}

/// GraphiQL for `/graphql` (what a browser's `GET /graphql` gets).
pub(super) fn graphiql() -> Response<Body> {
    fixed(HTML, Bytes::from_static(GRAPHIQL_HTML), false)
}

/// The scripts, styles and licences the pages use.
#[utoipa::path(
    get,
    path = "/docs/assets/{file}",
    tag = "ops",
    params(("file" = String, Path, description = "An asset name, e.g. `swagger-ui.css`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/plain"),
        )),
        (status = 404, description = "No such asset", body = Detail),
    )
)]
pub(super) fn asset(name: &str) -> Result<Response<Body>, ApiError> {
    let a = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound("Not Found".into()))?;
    Ok(fixed(a.content_type, Bytes::from_static(a.bytes), true))
}
