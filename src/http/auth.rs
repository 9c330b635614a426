//! API-key check: with `API_KEY` set, `/api/*` needs header `X-API-Key`
//! (and /health, /metrics too with `--protect-metrics`).

use hyper::HeaderMap;

use super::error::ApiError;
use crate::config::Config;

pub fn check(cfg: &Config, path: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = cfg.api_key.as_deref() else {
        return Ok(());
    };
    let protected = path.starts_with("/api/")
        || (cfg.protect_metrics && (path == "/metrics" || path == "/health"));
    if !protected {
        return Ok(());
    }
    match headers.get("x-api-key") {
        None => Err(ApiError::MissingApiKey),
        Some(got) if constant_time_eq(got.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::InvalidApiKey),
    }
}

/// Did the request carry the configured `--api-key` (the admin credential)?
/// False when no key is configured. Decides whether a proxy error may show
/// worker addresses. Hook: when role keys exist, an admin-role key counts
/// here too.
pub fn is_admin(cfg: &Config, headers: &HeaderMap) -> bool {
    match (cfg.api_key.as_deref(), headers.get("x-api-key")) {
        (Some(k), Some(got)) => constant_time_eq(got.as_bytes(), k.as_bytes()),
        _ => false,
    }
}

/// Compares without an early exit, so timing does not reveal how much of
/// the key matched (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let cfg = Config {
            api_key: Some("s3cret".into()),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        assert!(matches!(
            check(&cfg, "/api/admin/stats", &h),
            Err(ApiError::MissingApiKey)
        ));
        assert!(check(&cfg, "/health", &h).is_ok());
        h.insert("x-api-key", "s3creT".parse().unwrap());
        assert!(matches!(
            check(&cfg, "/api/admin/stats", &h),
            Err(ApiError::InvalidApiKey)
        ));
        h.insert("x-api-key", "s3cret".parse().unwrap());
        assert!(check(&cfg, "/api/admin/stats", &h).is_ok());
        assert!(is_admin(&cfg, &h));
        assert!(!is_admin(&Config::default(), &h));
        h.insert("x-api-key", "nope".parse().unwrap());
        assert!(!is_admin(&cfg, &h));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b"ab"));
    }
}
