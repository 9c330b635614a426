//! The smallest HTTP/1.1 client parts a load generator needs: building a
//! request once (it is replayed as bytes) and finding where a response ends
//! in a read buffer. The head splitting serves the simulated worker's
//! requests too (`sim.rs`). Pure functions over byte slices, so they are
//! tested without sockets. No pipelining: one request in flight per
//! connection.

use std::fmt;

/// A request serialised once and replayed as bytes.
pub fn build_request(method: &str, host: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: coordinator-loadgen\r\n");
    match body {
        Some(b) => {
            out.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            out.extend_from_slice(b.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(b);
        }
        None => out.extend_from_slice(b"\r\n"),
    }
    out
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLen {
    Length(usize),
    Chunked,
    /// No length and not chunked: the body runs until the server closes.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the status line and headers, including the blank line.
    pub len: usize,
    pub body: BodyLen,
    /// The server will close the connection after this response.
    pub close: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub &'static str);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Longest response head we accept before calling the response malformed.
pub const MAX_HEAD: usize = 64 << 10;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The framing of a message head, request or response alike: its start
/// line and the headers that say where the message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHead<'a> {
    /// The request line or the status line.
    pub start_line: &'a str,
    /// Bytes of the start line and headers, including the blank line.
    pub len: usize,
    /// The last `Content-Length`.
    pub content_length: Option<usize>,
    /// Some `Transfer-Encoding` names `chunked` (it wins over a length).
    pub chunked: bool,
    /// The `Connection` header: `Some(true)` close, `Some(false)`
    /// keep-alive, `None` neither (the version's default applies).
    pub connection_close: Option<bool>,
}

/// Splits the head at the start of `buf` (a request's or a response's):
/// `Ok(None)` when more bytes are needed.
pub fn split_head(buf: &[u8]) -> Result<Option<RawHead<'_>>, ParseError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(ParseError("head too long"))
        } else {
            Ok(None)
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError("head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let mut head = RawHead {
        start_line: lines.next().unwrap_or_default(),
        len: end + 4,
        content_length: None,
        chunked: false,
        connection_close: None,
    };
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or(ParseError("header without colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.content_length = Some(
                value
                    .parse()
                    .map_err(|_| ParseError("bad content-length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked |= value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                head.connection_close = Some(true);
            } else if v.contains("keep-alive") {
                head.connection_close = Some(false);
            }
        }
    }
    Ok(Some(head))
}

/// Parses a response head at the start of `buf`: `Ok(None)` when more bytes
/// are needed.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, ParseError> {
    let Some(raw) = split_head(buf)? else {
        return Ok(None);
    };
    let mut parts = raw.start_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError("not an HTTP/1.x response"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..1000).contains(s))
        .ok_or(ParseError("bad status code"))?;
    let mut close = raw.connection_close.unwrap_or(version == "HTTP/1.0");
    let body = match (status, raw.chunked, raw.content_length) {
        // 1xx, 204 and 304 carry no body whatever the headers say.
        (s, _, _) if s < 200 || s == 204 || s == 304 => BodyLen::Length(0),
        (_, true, _) => BodyLen::Chunked,
        (_, false, Some(n)) => BodyLen::Length(n),
        (_, false, None) => {
            close = true;
            BodyLen::UntilClose
        }
    };
    Ok(Some(Head {
        status,
        len: raw.len,
        body,
        close,
    }))
}

/// Where a chunked body starting at `buf[0]` ends (after the last chunk and
/// trailers): `Ok(None)` when more bytes are needed.
pub fn chunked_end(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let mut pos = 0;
    loop {
        let Some(eol) = find(&buf[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[pos..pos + eol])
            .map_err(|_| ParseError("bad chunk size line"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| ParseError("bad chunk size"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(&buf[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(ParseError("chunk not followed by CRLF"));
        }
        pos += size + 2;
    }
}

/// A complete response found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Complete {
    pub status: u16,
    /// Where the body starts (the head's length).
    pub body_start: usize,
    /// Bytes the response occupies (head and body).
    pub len: usize,
    pub close: bool,
}

/// Incremental response reader state: the head is parsed once, then only
/// the body length is checked as bytes arrive (worker lists can be MBs).
#[derive(Debug, Default)]
pub struct ResponseReader {
    head: Option<Head>,
}

impl ResponseReader {
    pub fn reset(&mut self) {
        self.head = None;
    }

    /// Checks whether `buf` holds a complete response. `eof` says the
    /// server closed the connection (completes an until-close body).
    pub fn poll(&mut self, buf: &[u8], eof: bool) -> Result<Option<Complete>, ParseError> {
        if self.head.is_none() {
            self.head = parse_head(buf)?;
        }
        let Some(head) = self.head else {
            return if eof {
                Err(ParseError("connection closed before the response head"))
            } else {
                Ok(None)
            };
        };
        let body = &buf[head.len..];
        let body_len = match head.body {
            BodyLen::Length(n) => (body.len() >= n).then_some(n),
            BodyLen::Chunked => chunked_end(body)?,
            BodyLen::UntilClose => eof.then_some(body.len()),
        };
        match body_len {
            Some(n) => Ok(Some(Complete {
                status: head.status,
                body_start: head.len,
                len: head.len + n,
                close: head.close,
            })),
            None if eof => Err(ParseError("connection closed inside the body")),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_post_with_length() {
        let r = build_request("POST", "127.0.0.1:8080", "/x", Some(b"{}"));
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("POST /x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
        let g = String::from_utf8(build_request("GET", "h", "/", None)).unwrap();
        assert!(g.ends_with("\r\n\r\n") && !g.contains("Content-Length"));
    }

    #[test]
    fn waits_for_head_then_body() {
        let full =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\nhello";
        let mut r = ResponseReader::default();
        for cut in 0..full.len() {
            assert_eq!(r.poll(&full[..cut], false), Ok(None), "cut at {cut}");
        }
        let c = r.poll(full, false).unwrap().unwrap();
        assert_eq!(c.status, 200);
        assert_eq!(c.len, full.len());
        assert!(!c.close);
    }

    #[test]
    fn leaves_following_bytes_alone() {
        let two = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n";
        let c = ResponseReader::default().poll(two, false).unwrap().unwrap();
        assert_eq!(c.status, 404);
        assert_eq!(&two[c.len..c.len + 8], b"HTTP/1.1");
    }

    #[test]
    fn connection_close_and_http10() {
        let h = parse_head(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
    }

    #[test]
    fn chunked_bodies() {
        let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let mut r = ResponseReader::default();
        for cut in 0..resp.len() {
            assert_eq!(r.poll(&resp[..cut], false), Ok(None), "cut at {cut}");
        }
        assert_eq!(r.poll(resp, false).unwrap().unwrap().len, resp.len());
        assert_eq!(chunked_end(b"0\r\nX-T: 1\r\n\r\n"), Ok(Some(13)));
        assert!(chunked_end(b"zz\r\n").is_err());
        assert!(chunked_end(b"2\r\nabXX").is_err());
    }

    #[test]
    fn until_close_needs_eof() {
        let resp = b"HTTP/1.1 200 OK\r\n\r\nabc";
        let mut r = ResponseReader::default();
        assert_eq!(r.poll(resp, false), Ok(None));
        let c = r.poll(resp, true).unwrap().unwrap();
        assert!(c.close);
        assert_eq!(c.len, resp.len());
    }

    #[test]
    fn no_body_statuses() {
        let h = parse_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyLen::Length(0));
    }

    #[test]
    fn malformed_heads_are_errors() {
        assert!(parse_head(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n").is_err());
        assert!(parse_head(&vec![b'a'; MAX_HEAD + 1]).is_err());
        let mut r = ResponseReader::default();
        assert!(r.poll(b"HTTP/1.1 200", true).is_err());
        let mut r = ResponseReader::default();
        assert!(r
            .poll(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", true)
            .is_err());
    }
}
