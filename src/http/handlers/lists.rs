//! Lists that scale: query parameters (`limit`, `after`, filters), opaque
//! cursors, the paged walk, and the streamed whole list, shared by the
//! worker lists (`/api/coordinator/workers`, `/api/admin/workers`,
//! `/api/services/discover/{s}`) and `/api/admin/tasks`.
//!
//! Order is (shard index, key): a worker's slot in its owner shard's
//! registry (kept while the worker stays registered), a task's id on its
//! queue's shard. A cursor names the last key returned and its shard, so a
//! record that exists for the whole walk is returned exactly once,
//! whatever registers or leaves meanwhile. Every step asks one shard for one bounded piece
//! (`shard::msg::ListQuery`), so no list is ever held whole, neither on a
//! shard nor here.
//!
//! Must not: hold a whole list, ask a shard for more than one piece at a
//! time per walk, or fetch a piece before the previous one was taken by
//! the body (a streamed body pulls the next piece only when hyper asks
//! for the next frame, so a slow reader slows the walk and a reader that
//! goes away ends it).

use std::collections::VecDeque;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::super::error::ApiError;
use super::super::request::{percent_decode, query_values};
use super::super::{json, streamed, Body, Ctx};
use super::{put, put_items, put_key, Items};
use crate::model::filter::{self, WorkerFilter};
use crate::runtime;
use crate::shard::msg::{ListQuery, Listing, Reply, Request as ShardRequest, Rest};
use crate::shard::registry::Slot;
use crate::shard::{Shard, PAGE_ITEMS};

/// Largest page (`limit`); larger values are clamped to it.
pub(super) const MAX_LIMIT: usize = 1000;
/// Page size when only `after` is given.
const DEFAULT_LIMIT: usize = 100;
/// Longest key a cursor may carry (worker ids are at most 256 bytes).
const MAX_KEY_BYTES: usize = 1024;

/// A query parameter's first value, percent-decoded; a value that does
/// not decode is a 400 rather than silently absent.
pub(super) fn param(query: Option<&str>, name: &str) -> Result<Option<String>, ApiError> {
    query_values(query, name)
        .next()
        .map(|v| percent_decode(v, true).ok_or_else(|| bad(name, "invalid percent-encoding")))
        .transpose()
}

/// 400 `{"detail": "<field>: <message>"}`.
pub(super) fn bad(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("{field}: {msg}"))
}

/// Where a walk resumes: after `key` on shard `shard`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cursor {
    pub shard: usize,
    pub key: String,
}

impl Cursor {
    /// Opaque and URL-safe: base64url of `<shards>:<shard>:<key>`. The
    /// shard count is in it because the order depends on it: a cursor
    /// from a coordinator with another count is refused, not misread.
    pub(super) fn encode(&self, shards: usize) -> String {
        URL_SAFE_NO_PAD.encode(format!("{shards}:{}:{}", self.shard, self.key))
    }

    pub(super) fn decode(s: &str, shards: usize) -> Result<Cursor, ApiError> {
        let invalid = || bad("after", "not a cursor this server gave out");
        let raw = URL_SAFE_NO_PAD.decode(s).map_err(|_| invalid())?;
        let text = String::from_utf8(raw).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, ':');
        let (Some(n), Some(shard), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let n: usize = n.parse().map_err(|_| invalid())?;
        let shard: usize = shard.parse().map_err(|_| invalid())?;
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(invalid());
        }
        if n != shards || shard >= shards {
            return Err(bad(
                "after",
                "cursor from a coordinator with another shard count; start again without it",
            ));
        }
        Ok(Cursor {
            shard,
            key: key.to_string(),
        })
    }
}

/// `limit` / `after` of a paged request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Paging {
    pub limit: usize,
    pub after: Option<Cursor>,
}

/// `limit`: an integer, clamped to 1..=[`MAX_LIMIT`].
fn parse_limit(s: &str) -> Result<usize, ApiError> {
    match super::super::request::clamp_integer(s, 1, MAX_LIMIT as u64) {
        Some(n) => Ok(n as usize),
        None => Err(bad(
            "limit",
            format!("expected an integer (clamped to 1..={MAX_LIMIT})"),
        )),
    }
}

/// The paging parameters; None when neither `limit` nor `after` is given
/// (the compat reply). An empty `after` means "from the start".
pub(super) fn paging(query: Option<&str>, shards: usize) -> Result<Option<Paging>, ApiError> {
    let limit = param(query, "limit")?;
    let after = param(query, "after")?;
    if limit.is_none() && after.is_none() {
        return Ok(None);
    }
    let limit = match limit {
        Some(s) => parse_limit(&s)?,
        None => DEFAULT_LIMIT,
    };
    let after = match after.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Cursor::decode(s, shards)?),
    };
    Ok(Some(Paging { limit, after }))
}

/// The worker filters of a query (`service` short names resolve through
/// the catalog, as discovery's do).
pub(super) fn worker_filter(ctx: &Ctx, query: Option<&str>) -> Result<WorkerFilter, ApiError> {
    let get = |name: &str| param(query, name);
    let service = match get("service")? {
        None => None,
        Some(s) => {
            let s = filter::parse_name(&s).map_err(|e| bad("service", e))?;
            let catalog = &ctx.shard.cfg.catalog;
            Some(catalog.resolve(&s).map(|x| x.name.clone()).unwrap_or(s))
        }
    };
    let field = |name: &str, e: String| bad(name, e);
    Ok(WorkerFilter {
        service,
        tier: get("tier")?
            .map(|v| filter::parse_tier(&v).map_err(|e| field("tier", e)))
            .transpose()?,
        status: get("status")?
            .map(|v| filter::parse_status(&v).map_err(|e| field("status", e)))
            .transpose()?,
        model: get("model")?
            .map(|v| filter::parse_name(&v).map_err(|e| field("model", e)))
            .transpose()?,
        worker_type: get("worker_type")?
            .map(|v| filter::parse_worker_type(&v).map_err(|e| field("worker_type", e)))
            .transpose()?,
    })
}

/// Writes a worker list reply's keys after `workers` from what was listed
/// (e.g. `"count": n`).
pub(super) type Tail = fn(&mut Vec<u8>, &Tally);

/// A worker list reply, `{<head>, "workers": [...], <tail>}`: one page
/// (`paging`, with `"next"` added) or the whole list (one buffer when
/// small, else streamed; see [`Walk::respond`]). `head` holds the keys
/// before `workers` (without the brace; may be empty). With `when_empty`,
/// a list with no worker from its start is that error instead.
pub(super) async fn reply(
    ctx: &Ctx,
    query: ListQuery,
    paging: Option<Paging>,
    head: Vec<u8>,
    tail: Tail,
    when_empty: Option<&dyn Fn() -> ApiError>,
) -> Result<Response<Body>, ApiError> {
    let mut out = Vec::with_capacity(head.len() + 16);
    out.push(b'{');
    out.extend_from_slice(&head);
    let Some(paging) = paging else {
        let mut walk = Walk::start(ctx, query).await?;
        if let Some(err) = when_empty {
            if !walk.any().await? {
                return Err(err());
            }
        }
        put_key(&mut out, "workers");
        out.push(b'[');
        return walk.respond(out, tail).await;
    };
    let from_start = paging.after.is_none();
    let page = page(ctx, query, paging).await?;
    if let Some(err) = when_empty.filter(|_| from_start && page.tally.count == 0) {
        return Err(err());
    }
    out.reserve(page.items.array_len() + 256);
    put_items(&mut out, "workers", &page.items);
    tail(&mut out, &page.tally);
    put(&mut out, "next", &page.next);
    out.push(b'}');
    Ok(json(StatusCode::OK, out))
}

/// What a walk listed so far.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub count: usize,
    pub healthy: usize,
    /// The least-loaded listed worker (load, JSON), when asked for.
    pub best: Option<(f64, Vec<u8>)>,
}

impl Tally {
    fn add(&mut self, l: &mut Listing) {
        self.count += l.count;
        self.healthy += l.healthy;
        if let Some((load, rec)) = l.best.take() {
            if self.best.as_ref().is_none_or(|(b, _)| load < *b) {
                self.best = Some((load, rec));
            }
        }
    }
}

async fn fetch(shard: &Shard, to: usize, q: ListQuery) -> Result<Listing, ApiError> {
    let reply = shard.call(to, ShardRequest::List(Box::new(q))).await?;
    Ok(reply.listing()?)
}

/// One page of a paged worker list.
struct Page {
    pub items: Items,
    pub tally: Tally,
    /// Cursor of the next page; None on the last.
    pub next: Option<String>,
}

/// Walks from `paging.after` until `paging.limit` workers are listed or
/// every shard is done, a bounded piece per step. When the page is full
/// it looks on (without listing) for one more match, so `next` is None
/// exactly when nothing follows.
async fn page(ctx: &Ctx, template: ListQuery, paging: Paging) -> Result<Page, ApiError> {
    let shard = &ctx.shard;
    let (mut at, mut after) = match paging.after {
        Some(c) => (c.shard, Some(slot_of(&c)?)),
        None => (0, None),
    };
    let mut want = paging.limit;
    let mut parts = Vec::new();
    let mut tally = Tally::default();
    let mut last: Option<(usize, Slot)> = None;
    let mut next = None;
    let mut steps = 0;
    while at < shard.count {
        let q = ListQuery {
            after,
            max: want.min(PAGE_ITEMS),
            whole: false,
            ..template.clone()
        };
        if steps > 0 {
            // Between two pieces, let this shard serve what arrived.
            runtime::breathe().await;
        }
        steps += 1;
        let mut l = fetch(shard, at, q).await?;
        tally.add(&mut l);
        want -= l.count.min(want);
        if let Some(slot) = l.last {
            last = Some((at, slot));
            after = Some(slot);
        }
        if l.count > 0 {
            parts.push(l.items);
        }
        match l.rest {
            Rest::Done => {
                at += 1;
                after = None;
            }
            Rest::More if want == 0 => {
                next = last.map(|(shard_at, slot)| {
                    Cursor {
                        shard: shard_at,
                        key: slot.to_string(),
                    }
                    .encode(shard.count)
                });
                break;
            }
            // Go on after the last listed (already in `after`).
            Rest::More => {}
            Rest::After(slot) => after = Some(slot),
        }
    }
    Ok(Page {
        items: Items(parts),
        tally,
        next,
    })
}

/// The slot a worker-list cursor names (worker lists walk slots; task
/// lists walk task ids).
fn slot_of(c: &Cursor) -> Result<Slot, ApiError> {
    c.key
        .parse::<Slot>()
        .map_err(|_| bad("after", "not a cursor of this list"))
}

/// A whole (unpaged) worker list in progress: the first piece of every
/// shard, asked for at once, then shard by shard, piece by piece.
struct Walk {
    shard: Rc<Shard>,
    template: ListQuery,
    /// Each shard's first piece until the walk gets there.
    first: Vec<Option<Listing>>,
    /// Pieces taken ahead of the body (by [`Walk::any`]).
    ready: VecDeque<Listing>,
    at: usize,
    after: Option<Slot>,
    pub tally: Tally,
}

impl Walk {
    /// Asks every shard for its first piece at once. A shard whose healthy
    /// part is small answers it whole (from its cache), so a small list
    /// costs one fan-out, as before paging existed.
    async fn start(ctx: &Ctx, template: ListQuery) -> Result<Walk, ApiError> {
        let first = ctx
            .shard
            .map_reduce(
                || {
                    ShardRequest::List(Box::new(ListQuery {
                        after: None,
                        max: PAGE_ITEMS,
                        whole: true,
                        ..template.clone()
                    }))
                },
                Reply::listing,
                Vec::with_capacity(ctx.shard.count),
                |mut all, l| {
                    all.push(Some(l));
                    all
                },
            )
            .await?;
        Ok(Walk {
            shard: ctx.shard.clone(),
            template,
            first,
            ready: VecDeque::new(),
            at: 0,
            after: None,
            tally: Tally::default(),
        })
    }

    /// The next non-empty piece in (shard, slot) order; None at the end.
    async fn fetch(&mut self) -> Result<Option<Listing>, ApiError> {
        while self.at < self.shard.count {
            let mut l = match self.first[self.at].take() {
                Some(l) => l,
                None => {
                    // Each piece is work on its shard; between two, let
                    // this shard serve what arrived (see `runtime::breathe`).
                    runtime::breathe().await;
                    let q = ListQuery {
                        after: self.after.take(),
                        max: PAGE_ITEMS,
                        whole: false,
                        ..self.template.clone()
                    };
                    fetch(&self.shard, self.at, q).await?
                }
            };
            match &l.rest {
                Rest::Done => {
                    self.at += 1;
                    self.after = None;
                }
                Rest::More => self.after = l.last,
                Rest::After(slot) => self.after = Some(*slot),
            }
            self.tally.add(&mut l);
            if l.count > 0 {
                return Ok(Some(l));
            }
        }
        Ok(None)
    }

    async fn next_piece(&mut self) -> Result<Option<Listing>, ApiError> {
        match self.ready.pop_front() {
            Some(l) => Ok(Some(l)),
            None => self.fetch().await,
        }
    }

    /// Whether the list has any worker: walks (holding what it finds)
    /// until the first one. For replies that are an error when empty.
    async fn any(&mut self) -> Result<bool, ApiError> {
        if !self.ready.is_empty() {
            return Ok(true);
        }
        match self.fetch().await? {
            Some(l) => {
                self.ready.push_back(l);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Every piece is in hand: nothing more to ask any shard.
    fn complete(&self) -> bool {
        self.first[self.at.min(self.first.len())..]
            .iter()
            .all(|l| l.as_ref().is_some_and(|l| l.rest == Rest::Done))
    }

    /// The reply: `prefix` (up to and including the array's `[`), the
    /// workers, then `]`, the `tail` keys (made from the tally at the end)
    /// and `}`. One buffer when every piece is already in hand (small
    /// lists); otherwise a chunked body that asks for the next piece only
    /// when hyper wants the next frame.
    async fn respond(mut self, prefix: Vec<u8>, tail: Tail) -> Result<Response<Body>, ApiError> {
        if self.complete() {
            let mut parts = Vec::new();
            while let Some(l) = self.next_piece().await? {
                parts.push(l.items);
            }
            let items = Items(parts);
            let mut out = Vec::with_capacity(prefix.len() + items.array_len() + 256);
            out.extend_from_slice(&prefix);
            items.write_inner(&mut out);
            out.extend_from_slice(&suffix(tail, &self.tally));
            return Ok(json(StatusCode::OK, out));
        }
        let state = Streaming {
            walk: self,
            prefix: Some(prefix.into()),
            pending: None,
            tail: Some(tail),
            wrote: false,
        };
        let frames = futures::stream::unfold(state, Streaming::step);
        let body = StreamBody::new(frames.map_ok(Frame::data));
        let mut r = Response::new(streamed(body));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok(r)
    }
}

/// What closes a whole list: `]`, the tail keys, `}`.
fn suffix(tail: Tail, tally: &Tally) -> Vec<u8> {
    let mut out = b"]".to_vec();
    tail(&mut out, tally);
    out.push(b'}');
    out
}

/// A whole list being written as a chunked body.
struct Streaming {
    walk: Walk,
    prefix: Option<Bytes>,
    /// A piece to write after the comma just written.
    pending: Option<Bytes>,
    /// None once the end (or an error) was written.
    tail: Option<Tail>,
    wrote: bool,
}

impl Streaming {
    async fn step(mut self) -> Option<(Result<Bytes, ApiError>, Self)> {
        if let Some(p) = self.prefix.take().or_else(|| self.pending.take()) {
            return Some((Ok(p), self));
        }
        self.tail?;
        match self.walk.next_piece().await {
            Ok(Some(l)) if self.wrote => {
                self.pending = Some(l.items);
                Some((Ok(Bytes::from_static(b",")), self))
            }
            Ok(Some(l)) => {
                self.wrote = true;
                Some((Ok(l.items), self))
            }
            Ok(None) => {
                let end = suffix(self.tail.take()?, &self.walk.tally);
                Some((Ok(end.into()), self))
            }
            Err(e) => {
                // The head is sent: all we can do is cut the body short,
                // which the client sees as an incomplete chunked reply.
                tracing::warn!(shard = self.walk.shard.id, error = %e, "worker list stream aborted");
                self.tail = None;
                Some((Err(e), self))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_are_not() {
        let c = Cursor {
            shard: 1,
            key: "gpu box:1/é".into(),
        };
        let s = c.encode(4);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(Cursor::decode(&s, 4).unwrap(), c);
        // Another shard count, a shard out of range, junk.
        assert!(Cursor::decode(&s, 2).is_err());
        let out_of_range = Cursor {
            shard: 5,
            key: "w".into(),
        };
        assert!(Cursor::decode(&out_of_range.encode(4), 4).is_err());
        for junk in ["", "!!", "abc", &URL_SAFE_NO_PAD.encode("4:1:")] {
            let e = Cursor::decode(junk, 4).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{junk}");
        }
    }

    #[test]
    fn limits_are_clamped_and_junk_refused() {
        assert_eq!(parse_limit("0").unwrap(), 1);
        assert_eq!(parse_limit("-7").unwrap(), 1);
        assert_eq!(parse_limit("250").unwrap(), 250);
        assert_eq!(parse_limit("1000000000").unwrap(), MAX_LIMIT);
        assert_eq!(parse_limit("99999999999999999999999").unwrap(), MAX_LIMIT);
        for junk in ["", "x", "1.5", "1e3", "--1"] {
            assert!(parse_limit(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn paging_is_only_on_when_asked_for() {
        assert_eq!(paging(Some("tier=1"), 2).unwrap(), None);
        assert_eq!(
            paging(Some("limit=5"), 2).unwrap(),
            Some(Paging {
                limit: 5,
                after: None
            })
        );
        assert_eq!(
            paging(Some("after="), 2).unwrap(),
            Some(Paging {
                limit: DEFAULT_LIMIT,
                after: None
            })
        );
        assert!(paging(Some("after=%zz"), 2).is_err());
        assert!(paging(Some("after=nope"), 2).is_err());
    }
}
