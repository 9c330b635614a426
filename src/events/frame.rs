//! How an event is written for each kind of subscriber.
//!
//! An event on the wire is one JSON object, `{"index": "<cursor>", "type",
//! "key", "time", "data"}`, where `index` is the cursor just after it. SSE
//! wraps it as `id: <cursor>`, `event: <type>`, `data: <object>`; NDJSON
//! puts one object per line; a WebSocket sends one object per text frame.

use super::cursor::write_parts;
use super::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`.
    Ndjson,
    /// One bare object (a WebSocket text frame).
    Object,
}

/// Writes `e`, an event of shard `source`, for a reader whose positions
/// (after this event) are `pos` with `pos[source] = e.seq`.
pub(crate) fn event(
    out: &mut Vec<u8>,
    f: Format,
    epoch: u64,
    pos: &[u64],
    source: usize,
    e: &Event,
) {
    let at = Some((source, e.seq));
    if f == Format::Sse {
        out.extend_from_slice(b"id: ");
        let id = out.len();
        write_parts(out, epoch, pos, at);
        let id = id..out.len();
        out.extend_from_slice(b"\nevent: ");
        out.extend_from_slice(e.kind.as_str().as_bytes());
        out.extend_from_slice(b"\ndata: {\"index\":\"");
        out.extend_from_within(id);
    } else {
        out.extend_from_slice(b"{\"index\":\"");
        write_parts(out, epoch, pos, at);
    }
    out.extend_from_slice(b"\",");
    out.extend_from_slice(e.tail().as_bytes());
    end(out, f);
}

/// Writes a `reset` event: the reader missed events (its cursor is older
/// than a ring, from another run, or it fell too far behind) and must
/// re-list, then follow from `pos` (the positions when it was told).
pub(crate) fn reset(out: &mut Vec<u8>, f: Format, epoch: u64, pos: &[u64], reason: &str) {
    if f == Format::Sse {
        out.extend_from_slice(b"id: ");
        write_parts(out, epoch, pos, None);
        out.extend_from_slice(b"\nevent: reset\ndata: ");
    }
    out.extend_from_slice(b"{\"index\":\"");
    write_parts(out, epoch, pos, None);
    out.extend_from_slice(b"\",\"type\":\"reset\",\"key\":\"\",\"time\":");
    let time = crate::model::time::now_iso8601();
    let body = serde_json::json!({ "reason": reason });
    let _ = serde_json::to_writer(&mut *out, &time);
    out.extend_from_slice(b",\"data\":");
    let _ = serde_json::to_writer(&mut *out, &body);
    out.push(b'}');
    end(out, f);
}

/// An SSE comment that keeps proxies from closing an idle stream.
pub(crate) const KEEPALIVE: &[u8] = b": keepalive\n\n";

fn end(out: &mut Vec<u8>, f: Format) {
    match f {
        Format::Sse => out.extend_from_slice(b"\n\n"),
        Format::Ndjson => out.push(b'\n'),
        Format::Object => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Draft, Kind};
    use super::*;

    #[test]
    fn frames_sse_ndjson_and_objects() {
        let e = Event {
            seq: 16,
            draft: Draft::new(
                Kind::WorkerState,
                "w1",
                Some("w1"),
                Box::new([]),
                &serde_json::json!({"from": "healthy", "to": "stale"}),
            ),
        };
        let mut out = Vec::new();
        event(&mut out, Format::Sse, 1, &[3, 16], 1, &e);
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("id: 1-3-10"));
        assert_eq!(lines.next(), Some("event: worker.state"));
        let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["index"], "1-3-10");
        assert_eq!(v["data"]["to"], "stale");
        assert!(text.ends_with("\n\n"));

        let mut out = Vec::new();
        event(&mut out, Format::Ndjson, 1, &[3, 16], 1, &e);
        assert!(out.ends_with(b"}\n") && out.starts_with(b"{\"index\""));

        let mut out = Vec::new();
        reset(&mut out, Format::Object, 1, &[3, 16], "cursor too old");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "reset");
        assert_eq!(v["index"], "1-3-10");
        assert_eq!(v["data"]["reason"], "cursor too old");
    }
}
