//! The change stream over HTTP: `GET /api/events` (Server-Sent Events, or
//! NDJSON when asked for), and the blocking queries and deltas of the
//! worker lists (`?index=&wait=`, `?since=`, `X-Coordinator-Index`).
//!
//! Must not: buffer events per subscriber (a subscription is positions;
//! the events stay in the rings), or answer a stalled subscriber by
//! holding anything for it.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, select, Either};
use futures::TryStreamExt;
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{HeaderMap, Request, Response, StatusCode};

use super::super::error::ApiError;
use super::super::{json, streamed, Body, Ctx};
use super::lists::{self, bad, param, Tail};
use super::{put, put_key};
use crate::events::frame::{self, Format};
use crate::events::{Cursor, CursorError, Event, Filter};
use crate::model::filter::WorkerFilter;
use crate::runtime::{self, LocalShutdown};
use crate::shard::msg::{DeltaQuery, ListKind, ListQuery, Reply, Request as ShardRequest};
use crate::shard::{Next, Shard, Subscription};

/// An SSE comment (NDJSON: a blank line) this often keeps proxies from
/// closing an idle stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Kernel send buffer of a subscriber's connection (the kernel doubles it).
const SEND_BUFFER: usize = 64 << 10;
/// A blocking query waits this long unless it says otherwise, and at
/// most `MAX_WAIT`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The header every worker list reply carries: the cursor of the list.
const INDEX_HEADER: &str = "x-coordinator-index";

/// `GET /api/events`: the events passing the filters, from `Last-Event-ID`
/// or `?since=` (else from now), until the client goes away.
#[utoipa::path(
    get,
    path = "/api/events",
    tag = "events",
    summary = "The change stream",
    description = "Server-Sent Events (or NDJSON with `Accept: application/x-ndjson`) of every change: workers, tasks, pins, coverage. Resume with `Last-Event-ID` or `since`.",
    params(
        super::openapi::EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor (SSE)"),
    ),
    responses(
        (status = 200, description = "The stream (it does not end by itself)", content(
            (String = "text/event-stream"),
            (String = "application/x-ndjson"),
        )),
    )
)]
pub(super) async fn stream(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let last_id = req.headers().get("last-event-id");
    let (filter, from) = subscription(&ctx.shard, req.uri().query(), last_id)?;
    let format = if wants_ndjson(req.headers()) {
        Format::Ndjson
    } else {
        Format::Sse
    };
    drop(req);
    // The subscriber's buffer: what the kernel holds for it is bounded, so
    // one that stops reading backs up and is dropped (see `shard::hub`).
    ctx.activity.limit_send_buffer(SEND_BUFFER);
    // Every write to this subscriber from now on runs in the background
    // queue: streams fill whatever the requests leave of the core.
    ctx.activity.to_background();
    let activity = ctx.activity.clone();
    let abort: Box<dyn Fn()> = Box::new(move || activity.abort());
    let sub = ctx.shard.subscribe(filter, from, Some(abort)).await?;
    let state = Streaming {
        sub,
        stopping: ctx.stopping.clone(),
        format,
        done: false,
    };
    let frames = futures::stream::unfold(state, Streaming::step);
    let body = StreamBody::new(frames.map_ok(Frame::data));
    let mut r = Response::new(streamed(body));
    let kind = match format {
        Format::Ndjson => "application/x-ndjson",
        _ => "text/event-stream",
    };
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies (nginx) would otherwise hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(r)
}

/// What a subscription asks for: its filter (`topics`, `worker_id`,
/// `service`, `task_id`) and where it starts (`Last-Event-ID`, else
/// `since`, else now). Bad values are a 400 before anything starts.
pub(super) type Start = Option<Result<Cursor, CursorError>>;

pub(super) fn subscription(
    shard: &Shard,
    q: Option<&str>,
    last_id: Option<&HeaderValue>,
) -> Result<(Filter, Start), ApiError> {
    let filter = Filter::new(
        param(q, "topics")?.as_deref(),
        param(q, "worker_id")?.as_deref(),
        param(q, "service")?.as_deref(),
        param(q, "task_id")?.as_deref(),
    )
    .map_err(ApiError::BadRequest)?;
    let since = match last_id {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad("Last-Event-ID", "not a cursor"))?
                .to_string(),
        ),
        None => param(q, "since")?,
    };
    let from = since.map(|c| cursor(shard, &c, "since")).transpose()?;
    Ok((filter, from))
}

fn wants_ndjson(h: &HeaderMap) -> bool {
    h.get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/x-ndjson"))
}

/// A cursor sent by a client: malformed is a 400; another run's is kept
/// as an error the subscription turns into a reset.
fn cursor(shard: &Shard, text: &str, field: &str) -> Result<Result<Cursor, CursorError>, ApiError> {
    match Cursor::parse(text, shard.epoch, shard.count) {
        Err(CursorError::Malformed) => Err(bad(field, "not a cursor of this server")),
        r => Ok(r),
    }
}

/// A subscription's frames as NDJSON, keep-alive lines included, ending
/// after a reset or when the shard stops: this node's part of a merged
/// stream (cluster mode).
pub(super) fn ndjson_part(
    sub: Subscription,
    stopping: LocalShutdown,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> {
    let state = Streaming {
        sub,
        stopping,
        format: Format::Ndjson,
        done: false,
    };
    futures::stream::unfold(state, Streaming::step)
}

/// A subscription being written as a response body.
struct Streaming {
    sub: Subscription,
    stopping: LocalShutdown,
    format: Format,
    done: bool,
}

impl Streaming {
    async fn step(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        let next = {
            let next = pin!(self.sub.next());
            let keepalive = pin!(runtime::sleep(KEEPALIVE));
            let stop = pin!(self.stopping.wait());
            match select(next, select(keepalive, stop)).await {
                Either::Left((n, _)) => Some(n),
                Either::Right((Either::Left(_), _)) => None,
                // The shard is stopping: end the stream so the drain can
                // finish (the client reconnects with its last id).
                Either::Right((Either::Right(_), _)) => return None,
            }
        };
        let mut out = Vec::new();
        match next {
            None => match self.format {
                Format::Sse => out.extend_from_slice(frame::KEEPALIVE),
                _ => out.push(b'\n'),
            },
            Some(Next::Events { source, events }) => {
                return Some((Ok(framed(&self.sub, source, &events, self.format)), self));
            }
            Some(Next::Reset(why)) => {
                write_reset(&self.sub, self.format, why, &mut out).await;
                self.done = true;
            }
        }
        Some((Ok(out.into()), self))
    }
}

/// How many framed batches a shard keeps for its other subscribers.
const FRAMED_KEEP: usize = 8;

/// A batch as one subscriber's stream wrote it: subscribers that are
/// caught up read the same events from the same positions in the same
/// wake, so the second one on takes these bytes instead of framing again
/// (with a thousand subscribers, framing was a third of the shard's time).
struct Framed {
    format: Format,
    epoch: u64,
    source: usize,
    /// The reader's positions after the batch.
    pos: Vec<u64>,
    seqs: Vec<u64>,
    bytes: Bytes,
}

thread_local! {
    /// The newest batches framed on this shard (a thread is a shard).
    static FRAMED: std::cell::RefCell<std::collections::VecDeque<Framed>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// A batch of shard `source`'s events framed as `format` for `sub` (whose
/// positions are already past them): the bytes another subscriber got for
/// exactly these events from exactly these positions, or framed now.
fn framed(sub: &Subscription, source: usize, events: &[Arc<Event>], format: Format) -> Bytes {
    let (epoch, pos) = sub.positions();
    let same = |f: &Framed| {
        f.format == format
            && f.epoch == epoch
            && f.source == source
            && f.pos == *pos
            && f.seqs.len() == events.len()
            && f.seqs.iter().zip(events).all(|(s, e)| *s == e.seq)
    };
    let hit = FRAMED.with(|c| c.borrow().iter().find(|f| same(f)).map(|f| f.bytes.clone()));
    if let Some(bytes) = hit {
        sub.shard().metrics.borrow_mut().events_sent += events.len() as u64;
        return bytes;
    }
    let mut out = Vec::new();
    write_events(sub, source, events, format, &mut out, |_| {});
    let bytes = Bytes::from(out);
    let entry = Framed {
        format,
        epoch,
        source,
        pos: pos.clone(),
        seqs: events.iter().map(|e| e.seq).collect(),
        bytes: bytes.clone(),
    };
    FRAMED.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() == FRAMED_KEEP {
            c.pop_front();
        }
        c.push_back(entry);
    });
    bytes
}

/// Writes a batch of shard `source`'s events to `out` as `format` frames
/// them, calling `each` after every event (a WebSocket takes each one as
/// its own frame); counts them as sent.
pub(super) fn write_events(
    sub: &Subscription,
    source: usize,
    events: &[Arc<Event>],
    format: Format,
    out: &mut Vec<u8>,
    mut each: impl FnMut(&mut Vec<u8>),
) {
    let (epoch, pos) = sub.positions();
    for e in events {
        frame::event(out, format, epoch, &pos, source, e);
        each(out);
    }
    drop(pos);
    sub.shard().metrics.borrow_mut().events_sent += events.len() as u64;
}

/// Writes the `reset` that ends a subscription: its index is now, where
/// the client follows from once it has re-listed (the subscription's own
/// positions if the shards do not answer).
pub(super) async fn write_reset(sub: &Subscription, format: Format, why: &str, out: &mut Vec<u8>) {
    let shard = sub.shard();
    let pos = match shard.heads().await {
        Ok(p) => p,
        Err(_) => sub.cursor().pos,
    };
    frame::reset(out, format, shard.epoch, &pos, why);
}

/// A worker list (`/api/coordinator/workers`, `/api/admin/workers`): the
/// filters and paging of `lists`, the keys after `workers` from `tail`,
/// and its change-stream parameters: a delta for `since`, a wait for
/// `index`, and the list's cursor in `X-Coordinator-Index`.
pub(super) async fn worker_list(
    ctx: Ctx,
    req: Request<Incoming>,
    kind: ListKind,
    tail: Tail,
) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query().map(str::to_string);
    drop(req);
    let q = q.as_deref();
    let query = ListQuery {
        kind,
        filter: lists::worker_filter(&ctx, q)?,
        after: None,
        max: 0,
        whole: true,
        best: false,
    };
    let paging = lists::paging(q, ctx.shard.count)?;
    match before_list(&ctx, q, kind, &query.filter).await? {
        Before::Reply(r) => Ok(r),
        Before::List(index) => {
            let mut r = lists::reply(&ctx, query, paging, Vec::new(), tail, None).await?;
            r.headers_mut().insert(INDEX_HEADER, index);
            Ok(r)
        }
    }
}

/// What a worker list asked of the change stream before listing.
enum Before {
    /// List now; the reply carries this index.
    List(HeaderValue),
    /// The reply is this (a delta).
    Reply(Response<Body>),
}

/// Handles `?since=` (a delta instead of the list) and `?index=&wait=`
/// (wait for a worker change after the cursor, then list) for a worker
/// list of `kind` with `filter`; otherwise just takes the index.
async fn before_list(
    ctx: &Ctx,
    q: Option<&str>,
    kind: ListKind,
    filter: &WorkerFilter,
) -> Result<Before, ApiError> {
    let shard = &ctx.shard;
    // A malformed `wait` is an error whether or not `index` makes it count.
    let wait = match param(q, "wait")? {
        Some(w) => parse_wait(&w)
            .ok_or_else(|| bad("wait", "expected a duration such as 30s, 5m or 500ms"))?,
        None => DEFAULT_WAIT,
    };
    if let Some(since) = param(q, "since")? {
        let from = cursor(shard, &since, "since")?;
        return Ok(Before::Reply(delta(ctx, from.ok(), kind, filter).await?));
    }
    if let Some(index) = param(q, "index")? {
        if let Ok(from) = cursor(shard, &index, "index")? {
            let mut sub = shard
                .subscribe(Filter::workers(), Some(Ok(from)), None)
                .await?;
            let changed = pin!(sub.next());
            let sleep = pin!(runtime::sleep(wait));
            let stop = pin!(ctx.stopping.wait());
            let _ = select(changed, select(sleep, stop)).await;
        }
    }
    Ok(Before::List(index_value(
        &shard.heads().await?,
        shard.epoch,
    )))
}

fn index_value(heads: &[u64], epoch: u64) -> HeaderValue {
    let c = Cursor {
        epoch,
        pos: heads.to_vec(),
    };
    HeaderValue::from_str(&c.encode()).unwrap_or(HeaderValue::from_static(""))
}

/// `30s`, `5m`, `500ms` or plain seconds, at most [`MAX_WAIT`].
fn parse_wait(s: &str) -> Option<Duration> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(secs.min(MAX_WAIT.as_secs_f64())))
}

/// `{"index", "upserts", "removed", "reset"}`: the workers changed since
/// `from` that are in the list now, and those that left it. `from` None
/// (another run's cursor) or events gone on any shard: `reset` true, and
/// the client re-lists.
async fn delta(
    ctx: &Ctx,
    from: Option<Cursor>,
    kind: ListKind,
    filter: &WorkerFilter,
) -> Result<Response<Body>, ApiError> {
    let shard = &ctx.shard;
    let mut reset = from.is_none();
    let after = from
        .map(|c| c.pos)
        .unwrap_or_else(|| vec![u64::MAX; shard.count]);
    let calls = after.iter().enumerate().map(|(s, &after)| {
        let q = DeltaQuery {
            kind,
            filter: filter.clone(),
            after,
        };
        shard.call(s, ShardRequest::Delta(Box::new(q)))
    });
    let mut heads = Vec::with_capacity(shard.count);
    let mut upserts = b"[".to_vec();
    let mut removed: Vec<String> = Vec::new();
    for reply in join_all(calls).await {
        let d = Reply::delta(reply?)?;
        heads.push(d.head);
        reset |= d.reset;
        if d.upserted > 0 {
            if upserts.len() > 1 {
                upserts.push(b',');
            }
            upserts.extend_from_slice(&d.upserts);
        }
        removed.extend(d.removed);
    }
    if reset {
        upserts.truncate(1);
        removed.clear();
    }
    upserts.push(b']');
    let index = index_value(&heads, shard.epoch);
    let mut out = Vec::with_capacity(upserts.len() + 64);
    out.push(b'{');
    put(&mut out, "index", &index.to_str().unwrap_or_default());
    put_key(&mut out, "upserts");
    out.extend_from_slice(&upserts);
    put(&mut out, "removed", &removed);
    put(&mut out, "reset", &reset);
    out.push(b'}');
    let mut r = json(StatusCode::OK, out);
    r.headers_mut().insert(INDEX_HEADER, index);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_parse_with_units_and_are_capped() {
        assert_eq!(parse_wait("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_wait("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_wait("12"), Some(Duration::from_secs(12)));
        assert_eq!(parse_wait("1h"), None);
        assert_eq!(parse_wait("99999m"), Some(MAX_WAIT));
        assert_eq!(parse_wait("s"), None);
        assert_eq!(parse_wait("-1s"), None);
    }
}
