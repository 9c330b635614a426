//! `/ui/`: the operator dashboard, a static single page compiled into the
//! binary. It reads everything through the same API as any client (with
//! the browser session cookie), so it adds no data route of its own.
//!
//! Owns: the dashboard's files and the headers they are served with.
//! Must not: read from disk at run time or load anything from another
//! origin (the Content-Security-Policy says so to the browser too).

use bytes::Bytes;
use hyper::header::{HeaderValue, LOCATION};
use hyper::{Response, StatusCode};

use super::super::error::ApiError;
use super::super::{full, Body};
use super::docs::{embed, fixed, Asset, CSS, HTML, JS, TEXT};

/// Everything under `/ui/`; the first is the page itself.
pub(crate) const FILES: [Asset; 6] = [
    embed!("index.html", HTML, "ui/dashboard/index.html"),
    embed!("app.js", JS, "ui/dashboard/app.js"),
    embed!("app.css", CSS, "ui/dashboard/app.css"),
    embed!("uPlot.iife.min.js", JS, "ui/vendor/uplot/uPlot.iife.min.js"),
    embed!("uPlot.min.css", CSS, "ui/vendor/uplot/uPlot.min.css"),
    embed!("uplot.LICENSE.txt", TEXT, "ui/vendor/uplot/LICENSE"),
];

/// Same-origin only: scripts and styles from `/ui/`, API calls and the
/// event stream to this server; no framing by other sites. uPlot sizes
/// its elements with inline styles, hence `'unsafe-inline'` for styles
/// only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

#[utoipa::path(
    get,
    path = "/ui/{file}",
    tag = "ops",
    summary = "The dashboard",
    description = "`/ui/` is the dashboard page (`/ui` redirects there); the other names are its scripts, styles and licences.",
    params(("file" = String, Path, description = "`index.html` or an asset name such as `app.js`")),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/html"),
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/plain"),
        )),
        (status = 404, description = "No such file", body = super::openapi::Detail),
    )
)]
pub(super) fn serve(name: Option<&str>) -> Result<Response<Body>, ApiError> {
    let Some(name) = name else {
        let mut r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
        r.headers_mut()
            .insert(LOCATION, HeaderValue::from_static("/ui/"));
        return Ok(r);
    };
    let name = if name.is_empty() { "index.html" } else { name };
    let a = FILES
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::NotFound("Not Found".into()))?;
    // Revalidated (not cached for an hour like /docs' assets): the page
    // and its scripts change together with the binary.
    let mut r = fixed(a.content_type, Bytes::from_static(a.bytes), false);
    let h = r.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    Ok(r)
}
