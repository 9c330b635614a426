//! Reading the change stream (`GET /api/events`) as it arrives: the
//! response head, HTTP/1.1 chunked decoding, then SSE or NDJSON framing,
//! down to each event's `type` (is it a `reset`?) and `time`. Pure
//! functions over byte slices, fed whatever a read returned, so they are
//! tested split at every byte without sockets.
//!
//! Must keep up with millions of events/s on one core: no JSON parsing and
//! no allocation per event. Lines are found with `memchr` in the read
//! buffer itself; only a line cut by a read or a chunk boundary is copied
//! (into one reused buffer); `"type"` and `"time"` are found by scanning
//! bytes, and the timestamp is decoded by hand.

use memchr::memchr;
use memchr::memmem::Finder;

use crate::http::{parse_head, BodyLen, ParseError};

/// How the server frames events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/event-stream`: `id:`, `event:`, `data:` lines, a blank line
    /// ends an event, `:` lines are comments (keepalives).
    Sse,
    /// `application/x-ndjson`: one JSON object per line, blank lines are
    /// keepalives.
    Ndjson,
}

/// One event as the subscriber saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Its `time`, microseconds since the Unix epoch (None: missing or
    /// malformed).
    pub time_us: Option<i64>,
    /// A `reset`: the subscriber missed events and the server ends the
    /// stream.
    pub reset: bool,
}

/// Where the reader is in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Still reading the head.
    Head,
    /// Chunked: the size line (hex digits so far, inside an extension).
    Size { value: u64, ext: bool },
    /// Chunked: this many data bytes left in the chunk.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: after the last chunk, the trailer line being read is not
    /// empty (true) or nothing of it arrived yet (false).
    Trailer(bool),
    /// Not chunked: everything is data until the server closes.
    Raw,
    /// The last chunk arrived: the stream is over.
    Ended,
}

/// An SSE event being assembled from its lines.
#[derive(Debug, Clone, Copy, Default)]
struct Pending {
    data: bool,
    reset: bool,
    time_us: Option<i64>,
}

/// One subscriber's stream, fed incrementally.
pub struct Reader {
    format: Format,
    body: Body,
    /// The head until it is complete (freed afterwards).
    head: Vec<u8>,
    /// A line cut by the end of a read or of a chunk.
    partial: Vec<u8>,
    pending: Pending,
}

thread_local! {
    static TIME: Finder<'static> = Finder::new(b"\"time\":\"");
    static TYPE: Finder<'static> = Finder::new(b"\"type\":\"");
}

impl Reader {
    pub fn new(format: Format) -> Self {
        Self {
            format,
            body: Body::Head,
            head: Vec::new(),
            partial: Vec::new(),
            pending: Pending::default(),
        }
    }

    /// The response head was read and said 200: events follow.
    pub fn streaming(&self) -> bool {
        self.body != Body::Head
    }

    /// The server sent the last chunk: no event follows.
    pub fn ended(&self) -> bool {
        self.body == Body::Ended
    }

    /// Feeds the next bytes of the response; calls `on_event` for every
    /// event completed by them. Err: the response is not a 200 event
    /// stream, or it is malformed.
    pub fn feed(&mut self, mut buf: &[u8], on_event: &mut impl FnMut(Seen)) -> Result<(), String> {
        if self.body == Body::Head {
            self.head.extend_from_slice(buf);
            let Some(head) = parse_head(&self.head).map_err(|ParseError(e)| e.to_string())? else {
                return Ok(());
            };
            if head.status != 200 {
                return Err(format!("status {}", head.status));
            }
            let body = match head.body {
                BodyLen::Chunked => Body::Size {
                    value: 0,
                    ext: false,
                },
                _ => Body::Raw,
            };
            // What followed the head in this read is body.
            let rest = self.head.len() - head.len;
            let start = buf.len() - rest;
            buf = &buf[start..];
            self.head = Vec::new();
            self.body = body;
        }
        while !buf.is_empty() {
            match self.body {
                Body::Head => unreachable!("the head was read above"),
                // Nothing may follow; whatever does is not an event.
                Body::Ended => return Ok(()),
                Body::Trailer(started) => {
                    let b = buf[0];
                    buf = &buf[1..];
                    self.body = match b {
                        b'\n' if !started => Body::Ended,
                        b'\n' => Body::Trailer(false),
                        b'\r' => Body::Trailer(started),
                        _ => Body::Trailer(true),
                    };
                }
                Body::Raw => {
                    self.data(buf, on_event);
                    return Ok(());
                }
                Body::Size { value, ext } => {
                    let b = buf[0];
                    buf = &buf[1..];
                    self.body = match b {
                        b'\n' if value == 0 => Body::Trailer(false),
                        b'\n' => Body::Data(value),
                        b'\r' => Body::Size { value, ext },
                        _ if ext => Body::Size { value, ext },
                        b';' | b' ' | b'\t' => Body::Size { value, ext: true },
                        _ => {
                            let d = (b as char).to_digit(16).ok_or("bad chunk size")?;
                            if value >> 56 != 0 {
                                return Err("chunk size overflows".into());
                            }
                            Body::Size {
                                value: value << 4 | u64::from(d),
                                ext,
                            }
                        }
                    };
                }
                Body::Data(left) => {
                    let n = (left.min(buf.len() as u64)) as usize;
                    self.data(&buf[..n], on_event);
                    buf = &buf[n..];
                    self.body = if left == n as u64 {
                        Body::DataEnd
                    } else {
                        Body::Data(left - n as u64)
                    };
                }
                Body::DataEnd => {
                    let b = buf[0];
                    buf = &buf[1..];
                    match b {
                        b'\r' => {}
                        b'\n' => {
                            self.body = Body::Size {
                                value: 0,
                                ext: false,
                            }
                        }
                        _ => return Err("no CRLF after chunk data".into()),
                    }
                }
            }
        }
        Ok(())
    }

    /// Body bytes (chunk framing removed): splits them into lines.
    fn data(&mut self, mut buf: &[u8], on_event: &mut impl FnMut(Seen)) {
        while let Some(i) = memchr(b'\n', buf) {
            if self.partial.is_empty() {
                self.line(&buf[..i], on_event);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&buf[..i]);
                self.line(&line, on_event);
                // Keep the capacity for the next cut line.
                line.clear();
                self.partial = line;
            }
            buf = &buf[i + 1..];
        }
        self.partial.extend_from_slice(buf);
    }

    fn line(&mut self, line: &[u8], on_event: &mut impl FnMut(Seen)) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.format {
            Format::Ndjson => {
                if !line.is_empty() {
                    let (reset, time_us) = scan_object(line);
                    on_event(Seen { time_us, reset });
                }
            }
            Format::Sse => {
                if line.is_empty() {
                    let p = std::mem::take(&mut self.pending);
                    if p.data || p.reset {
                        on_event(Seen {
                            time_us: p.time_us,
                            reset: p.reset,
                        });
                    }
                } else if let Some(v) = line.strip_prefix(b"data:") {
                    let (reset, time_us) = scan_object(v);
                    self.pending.data = true;
                    self.pending.reset |= reset;
                    self.pending.time_us = self.pending.time_us.or(time_us);
                } else if let Some(v) = line.strip_prefix(b"event:") {
                    let v = v.strip_prefix(b" ").unwrap_or(v);
                    self.pending.reset |= v == b"reset";
                }
                // `id:` and `:` comments (keepalives) carry nothing we need.
            }
        }
    }
}

/// Finds `"type":"reset"` and the `time` in one event object without
/// parsing it: the server writes `{"index":..,"type":..,"key":..,"time":..,
/// "data":..}`, so both are the first such keys (a quote inside a string
/// is escaped, so `"time":"` cannot match inside the key or the index).
fn scan_object(obj: &[u8]) -> (bool, Option<i64>) {
    let (reset, from) = match TYPE.with(|f| f.find(obj)) {
        Some(i) => {
            let v = &obj[i + 8..];
            (v.starts_with(b"reset\""), i + 8)
        }
        None => (false, 0),
    };
    let time = TIME
        .with(|f| f.find(&obj[from..]))
        .and_then(|i| parse_time_us(&obj[from + i + 8..]));
    (reset, time)
}

/// Microseconds since the Unix epoch of an RFC 3339 timestamp at the
/// start of `s`, as the server writes them:
/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}](Z|+HH:MM|-HH:MM)`. Anything after it is
/// ignored; None when it is not one.
pub fn parse_time_us(s: &[u8]) -> Option<i64> {
    fn num(s: &[u8], at: usize, len: usize) -> Option<i64> {
        let d = s.get(at..at + len)?;
        let mut v = 0i64;
        for &b in d {
            if !b.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i64::from(b - b'0');
        }
        Some(v)
    }
    let sep = |at: usize, c: u8| (s.get(at) == Some(&c)).then_some(());
    let year = num(s, 0, 4)?;
    sep(4, b'-')?;
    let month = num(s, 5, 2)?;
    sep(7, b'-')?;
    let day = num(s, 8, 2)?;
    if !matches!(s.get(10), Some(b'T' | b't' | b' ')) {
        return None;
    }
    let hour = num(s, 11, 2)?;
    sep(13, b':')?;
    let min = num(s, 14, 2)?;
    sep(16, b':')?;
    let sec = num(s, 17, 2)?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut at = 19;
    let mut micros = 0i64;
    if s.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while let Some(b) = s.get(at).filter(|b| b.is_ascii_digit()) {
            if at - start < 6 {
                micros = micros * 10 + i64::from(b - b'0');
            }
            at += 1;
        }
        let digits = at - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_s = match s.get(at)? {
        b'Z' | b'z' => 0,
        &c @ (b'+' | b'-') => {
            let h = num(s, at + 1, 2)?;
            sep(at + 3, b':')?;
            let m = num(s, at + 4, 2)?;
            let o = h * 3600 + m * 60;
            if c == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_s;
    Some(secs * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "2026-12-02T14:49:58.375556+00:00";
    /// `T1` in microseconds since the epoch (date -d ... +%s = 1796222998).
    const T1_US: i64 = 1_796_222_998_375_556;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time_us(T1.as_bytes()), Some(T1_US));
        assert_eq!(parse_time_us(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time_us(b"2025-12-05T10:30:00.123456+00:00\",\"data\""),
            Some(1_764_930_600_123_456)
        );
        assert_eq!(
            parse_time_us(b"2026-12-02T16:49:58.375556+02:00"),
            Some(T1_US)
        );
        assert_eq!(
            parse_time_us(b"2026-12-02T14:49:58.3Z"),
            Some(T1_US - 75_556)
        );
        assert_eq!(
            parse_time_us(b"2026-12-02T14:49:58.375556789Z"),
            Some(T1_US)
        );
        assert_eq!(
            parse_time_us(b"2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000)
        );
        assert_eq!(parse_time_us(b"1969-12-31T23:59:59Z"), Some(-1_000_000));
        for bad in [
            &b""[..],
            b"2026-12-02",
            b"2026-12-02T14:49:58",
            b"2026-12-02T14:49:58.Z",
            b"2026-13-02T14:49:58Z",
            b"2026-12-02T24:49:58Z",
            b"2026-12-02X14:49:58Z",
            b"2026-12-02T14:49:58+0000",
            b"20x6-12-02T14:49:58Z",
        ] {
            assert_eq!(parse_time_us(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // Every prefix of a valid stamp is incomplete, never a wrong value.
        for i in 0..T1.len() {
            assert_eq!(parse_time_us(&T1.as_bytes()[..i]), None, "{i}");
        }
    }

    fn object(i: usize, kind: &str) -> String {
        format!(
            "{{\"index\":\"1-{i}-0\",\"type\":\"{kind}\",\"key\":\"w-\\\"time\\\":1\",\"time\":\"{T1}\",\"data\":{{\"from\":\"healthy\",\"to\":\"busy\",\"time\":\"x\"}}}}"
        )
    }

    fn sse_event(i: usize, kind: &str) -> String {
        format!("id: 1-{i}-0\nevent: {kind}\ndata: {}\n\n", object(i, kind))
    }

    /// A chunked response: the head, then `pieces` as chunks (with a chunk
    /// extension on one), then the last chunk.
    fn chunked(content_type: &str, pieces: &[String]) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        for (i, p) in pieces.iter().enumerate() {
            let ext = if i == 1 { ";x=y" } else { "" };
            out.extend_from_slice(format!("{:X}{ext}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    /// Feeds `bytes` cut at `cuts`; returns the events and whether it ended.
    fn feed_cut(format: Format, bytes: &[u8], cuts: &[usize]) -> (Vec<Seen>, bool) {
        let mut r = Reader::new(format);
        let mut seen = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
            r.feed(&bytes[at..c], &mut |s| seen.push(s)).unwrap();
            at = c;
        }
        assert!(r.streaming());
        (seen, r.ended())
    }

    fn check_every_split(format: Format, bytes: &[u8], want: &[Seen]) {
        // Whole, one byte at a time, and cut once at every byte.
        assert_eq!(feed_cut(format, bytes, &[]), (want.to_vec(), true));
        let all: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(feed_cut(format, bytes, &all), (want.to_vec(), true));
        for cut in 1..bytes.len() {
            assert_eq!(feed_cut(format, bytes, &[cut]).0, want, "cut at {cut}");
        }
    }

    #[test]
    fn sse_over_chunks_split_anywhere() {
        let ev = |reset| Seen {
            time_us: Some(T1_US),
            reset,
        };
        let pieces = vec![
            // Two events in one chunk, an event cut over two chunks, a
            // keepalive comment, CRLF line ends, then a reset.
            format!(
                "{}{}",
                sse_event(1, "worker.state"),
                sse_event(2, "worker.registered")
            ),
            sse_event(3, "worker.state")[..20].to_string(),
            format!("{}: keepalive\n\n", &sse_event(3, "worker.state")[20..]),
            sse_event(4, "worker.state").replace('\n', "\r\n"),
            sse_event(5, "reset"),
        ];
        let bytes = chunked("text/event-stream", &pieces);
        check_every_split(
            Format::Sse,
            &bytes,
            &[ev(false), ev(false), ev(false), ev(false), ev(true)],
        );
    }

    #[test]
    fn ndjson_over_chunks_split_anywhere() {
        let ev = |reset| Seen {
            time_us: Some(T1_US),
            reset,
        };
        let line = |i, k| format!("{}\n", object(i, k));
        let pieces = vec![
            format!("{}{}", line(1, "worker.state"), line(2, "task.submitted")),
            "\n".to_string(),
            line(3, "worker.state")[..30].to_string(),
            line(3, "worker.state")[30..].to_string(),
            format!("{{\"index\":\"1-9-0\",\"type\":\"reset\",\"key\":\"\",\"time\":\"{T1}\",\"data\":{{\"reason\":\"subscriber too slow\"}}}}\n"),
        ];
        let bytes = chunked("application/x-ndjson", &pieces);
        check_every_split(
            Format::Ndjson,
            &bytes,
            &[ev(false), ev(false), ev(false), ev(true)],
        );
    }

    #[test]
    fn a_refusal_or_garbage_is_an_error() {
        let mut r = Reader::new(Format::Sse);
        let e = r
            .feed(
                b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}",
                &mut |_| {},
            )
            .unwrap_err();
        assert_eq!(e, "status 401");
        let mut r = Reader::new(Format::Sse);
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        r.feed(head, &mut |_| {}).unwrap();
        assert!(r.streaming() && !r.ended());
        assert!(r.feed(b"zz\r\n", &mut |_| {}).is_err());
        let mut r = Reader::new(Format::Sse);
        r.feed(head, &mut |_| {}).unwrap();
        assert!(r.feed(b"2\r\nabX", &mut |_| {}).is_err());
    }

    #[test]
    fn an_event_without_a_time_is_still_counted() {
        let mut r = Reader::new(Format::Ndjson);
        let mut seen = Vec::new();
        r.feed(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"type\":\"x\",\"time\":\"soon\"}\n",
            &mut |s| seen.push(s),
        )
        .unwrap();
        assert_eq!(
            seen,
            vec![Seen {
                time_us: None,
                reset: false
            }]
        );
    }
}
