//! Reading requests safely: bounded bodies, JSON with field-named errors,
//! query parameters and path segments with percent-decoding.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::Request;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::runtime;

/// Oversized bodies up to this size are drained so the 413 reaches the client.
const DRAIN_LIMIT: u64 = 16 << 20;

/// Reads the whole body, refusing more than `limit` bytes (413) or a body
/// that dribbles in for longer than `within` (408).
///
/// An oversized body (declared or discovered while reading) is read and
/// dropped up to `DRAIN_LIMIT` before answering: closing a socket with
/// unread data makes the kernel send RST, and the client would see
/// "connection reset" instead of our 413. Past that we stop reading.
pub(crate) async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    within: std::time::Duration,
) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = req.into_body();
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let over = |total: u64| total > limit as u64 || declared.is_some_and(|n| n > limit as u64);
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::BadRequest(format!("could not read request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if over(total) {
                if total > DRAIN_LIMIT {
                    break;
                }
                continue;
            }
            match first.take() {
                None if rest.is_empty() => first = Some(data),
                prev => {
                    if let Some(p) = prev {
                        rest.extend_from_slice(&p);
                    }
                    rest.extend_from_slice(&data);
                }
            }
        }
        Ok::<_, ApiError>(())
    };
    match runtime::timeout(within, read).await {
        Err(_) => return Err(ApiError::RequestTimeout),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => {}
    }
    if over(total) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(match first {
        Some(b) => b,
        None => Bytes::from(rest),
    })
}

/// Parses a JSON object body into `T`. serde would also accept an array
/// for a struct (as a tuple), which no agent means, so that is refused.
pub fn parse_object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => parse_json(body),
        Some(_) => Err(ApiError::field("body", "expected a JSON object")),
    }
}

/// Parses JSON; on failure re-parses with path tracking so the 422 names
/// the field (the fast path pays nothing for this).
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field(
            "body",
            "field required (empty request body)",
        ));
    }
    match serde_json::from_slice::<T>(body) {
        Ok(v) => Ok(v),
        Err(first) => {
            if first.is_syntax() || first.is_eof() {
                return Err(ApiError::field("body", format!("invalid JSON: {first}")));
            }
            let de = &mut serde_json::Deserializer::from_slice(body);
            match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(v) => Ok(v),
                Err(e) => {
                    let path = e.path().to_string();
                    let inner = e.into_inner();
                    let msg = strip_position(&inner.to_string());
                    // serde names a missing field itself, at the parent path.
                    if path == "." || path.is_empty() {
                        Err(ApiError::field("body", msg))
                    } else {
                        Err(ApiError::field(&path, msg))
                    }
                }
            }
        }
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The values of query parameter `name`, in order, still percent-encoded.
pub(crate) fn query_values<'q>(
    query: Option<&'q str>,
    name: &'q str,
) -> impl Iterator<Item = &'q str> + 'q {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k, true).as_deref() == Some(name)).then_some(v)
        })
}

/// A query string of the pairs whose value is given, each value
/// percent-encoded (all but RFC 3986's unreserved characters).
pub(crate) fn encode_query(params: &[(&str, Option<String>)]) -> String {
    let enc = |s: &str| {
        let mut o = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    o.push(b as char)
                }
                _ => o.push_str(&format!("%{b:02X}")),
            }
        }
        o
    };
    params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect::<Vec<_>>()
        .join("&")
}

/// The first value of query parameter `name` that percent-decodes.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query_values(query, name).find_map(|v| percent_decode(v, true))
}

/// Decodes `%XX` (and `+` as space in query strings); None on bad escapes
/// or invalid UTF-8.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A path segment naming an id: percent-decoded, then checked as
/// [`valid_id`] (422 naming `field` otherwise).
pub(crate) fn path_id(field: &str, raw: &str) -> Result<String, ApiError> {
    let id = percent_decode(raw, false)
        .ok_or_else(|| ApiError::field(field, "invalid percent-encoding"))?;
    valid_id(field, &id)?;
    Ok(id)
}

/// Ids we accept from agents: 1 to 256 characters, printable (the
/// OpenAPI spec states the same rule as `model::wire::schema::ID_PATTERN`).
/// Control characters and the invisible formatting ones (bidi overrides
/// and isolates, zero-width characters, line separators) are refused: an
/// id is shown to operators in logs and dashboards, where those could
/// hide or disguise what it really is.
pub(crate) fn valid_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        return Err(ApiError::field(field, "must not be empty"));
    }
    // Characters, not bytes: a limit a JSON Schema (`maxLength`) can
    // state. At most 1 KiB either way.
    if id.chars().count() > 256 {
        return Err(ApiError::field(field, "longer than 256 characters"));
    }
    if id.chars().any(char::is_control) {
        return Err(ApiError::field(field, "contains control characters"));
    }
    if id.chars().any(invisible) {
        return Err(ApiError::field(
            field,
            "contains invisible formatting characters (bidi controls, zero-width, separators)",
        ));
    }
    Ok(())
}

/// An integer parameter clamped to `lo..=hi`: any run of digits with an
/// optional sign (below `lo`, including every negative, gives `lo`; above
/// `hi`, however long, gives `hi`); None when it is not an integer.
pub(crate) fn clamp_integer(s: &str, lo: u64, hi: u64) -> Option<u64> {
    let t = s.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(lo);
    }
    // All digits: only overflow fails to parse, and that is above `hi`.
    Some(digits.parse::<u64>().map_or(hi, |n| n.clamp(lo, hi)))
}

/// Unicode format (Cf) and separator characters that render as nothing
/// or reorder the text around them.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}'                     // soft hyphen
        | '\u{061C}'                   // Arabic letter mark
        | '\u{180E}'                   // Mongolian vowel separator
        | '\u{200B}'..='\u{200F}'      // zero-width space/joiners, LRM, RLM
        | '\u{2028}'..='\u{202E}'      // line/paragraph separators, bidi embeddings/overrides
        | '\u{2060}'..='\u{2064}'      // word joiner, invisible operators
        | '\u{2066}'..='\u{206F}'      // bidi isolates, deprecated format characters
        | '\u{FEFF}'                   // zero-width no-break space (BOM)
        | '\u{FFF9}'..='\u{FFFB}'      // interlinear annotation
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wire::HeartbeatRequest;

    #[test]
    fn ids_refuse_control_and_invisible_characters() {
        assert!(valid_id("worker_id", "gpu-01.example").is_ok());
        assert!(valid_id("worker_id", "wörker-ü-1").is_ok());
        for bad in [
            "",
            "a\nb",
            "a\u{7f}",
            "evil\u{202E}txt",
            "a\u{200B}b",
            "\u{2066}x",
            "\u{FEFF}w",
        ] {
            assert!(valid_id("worker_id", bad).is_err(), "{bad:?}");
        }
        assert!(valid_id("worker_id", &"x".repeat(256)).is_ok());
        assert!(valid_id("worker_id", &"x".repeat(257)).is_err());
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(
            query_param(Some("a=1&worker_id=w%2F1+x"), "worker_id").as_deref(),
            Some("w/1 x")
        );
        assert_eq!(
            query_param(Some("worker_id"), "worker_id").as_deref(),
            Some("")
        );
        assert_eq!(query_param(Some("x=1"), "worker_id"), None);
        assert_eq!(query_param(None, "worker_id"), None);
        assert_eq!(percent_decode("%zz", false), None);
        assert_eq!(percent_decode("%4", false), None);
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<HeartbeatRequest>(br#"{"worker_id":"w","current_load":"high"}"#)
            .unwrap_err();
        assert!(e.to_string().starts_with("current_load: "), "{e}");
        let e = parse_json::<HeartbeatRequest>(br#"{"status":"ok"}"#).unwrap_err();
        assert!(e.to_string().contains("worker_id"), "{e}");
        let e = parse_json::<HeartbeatRequest>(b"{nope").unwrap_err();
        assert!(e.to_string().starts_with("body: invalid JSON"), "{e}");
        let e = parse_json::<HeartbeatRequest>(b"").unwrap_err();
        assert_eq!(e.status().as_u16(), 422);
    }

    #[test]
    fn ids_are_bounded() {
        assert!(valid_id("worker_id", "w-1").is_ok());
        assert!(valid_id("worker_id", "").is_err());
        assert!(valid_id("worker_id", &"x".repeat(300)).is_err());
        assert!(valid_id("worker_id", "a\nb").is_err());
    }
}
