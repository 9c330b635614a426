//! The access log and request ids.
//!
//! Every request gets an id: the client's `X-Request-Id` when it sent a
//! usable one, else one made here (`<shard epoch>-<shard>-<counter>`, hex,
//! unique within a run without any shared counter). The id is echoed on
//! the response and passed to workers by the proxy, so one request can be
//! followed from the edge through the coordinator to the worker.
//!
//! One info line per request (method, route, status, duration, bytes,
//! shard, request id, worker id when the handler knew it), at most
//! `--access-log-rate` lines per second per shard: beyond that the
//! requests are counted and one line per second says how many were not
//! logged, so 100k requests/s cannot drown the disk or the shard.
//!
//! Must not: read bodies, or cost anything but a counter for a request
//! that is not logged.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;

use crate::events::push_hex;

/// The header carrying a request's id, both ways and to workers.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Longest client-sent id kept; a longer (or odd) one is replaced.
const MAX_ID_LEN: usize = 128;

/// The client's id if it is usable: 1..=128 visible ASCII characters.
pub(crate) fn client_id(v: Option<&HeaderValue>) -> Option<HeaderValue> {
    let v = v?;
    let b = v.as_bytes();
    let ok = !b.is_empty() && b.len() <= MAX_ID_LEN && b.iter().all(|c| c.is_ascii_graphic());
    ok.then(|| v.clone())
}

/// One shard's access log: its id counter and its rate limit.
pub(crate) struct AccessLog {
    shard: usize,
    /// `<epoch>-<shard>-`, the part every id made here starts with.
    id_prefix: Vec<u8>,
    next_id: Cell<u64>,
    limit: Limit,
}

/// The worker a logged request was about, as its handler noted it (in
/// `Ctx::may_act_for`); a request that is not logged has none.
pub(crate) type WorkerNote = Rc<RefCell<Option<String>>>;

impl AccessLog {
    pub(crate) fn new(epoch: u64, shard: usize, per_second: u32) -> Self {
        let mut id_prefix = Vec::new();
        push_hex(&mut id_prefix, epoch);
        id_prefix.extend_from_slice(format!("-{shard}-").as_bytes());
        Self {
            shard,
            id_prefix,
            next_id: Cell::new(0),
            limit: Limit::new(per_second),
        }
    }

    /// A fresh id for a request that came without one.
    pub(crate) fn new_id(&self) -> HeaderValue {
        let n = self.next_id.get();
        self.next_id.set(n + 1);
        // One allocation, handed to the header value without a copy.
        let mut id = Vec::with_capacity(self.id_prefix.len() + 16);
        id.extend_from_slice(&self.id_prefix);
        push_hex(&mut id, n);
        HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .expect("hex digits and dashes are a valid header value")
    }

    /// Whether the request starting `now` is logged; says (once a second)
    /// how many were not.
    pub(crate) fn admit(&self, now: Instant) -> bool {
        let (admit, skipped) = self.limit.admit(now);
        if let Some((n, over)) = skipped {
            tracing::info!(
                shard = self.shard,
                not_logged = n,
                seconds = over.as_secs_f64(),
                "access log: requests over --access-log-rate were not logged"
            );
        }
        admit
    }

    /// Writes the line of a logged request.
    pub(crate) fn line(&self, l: Line<'_>) {
        let worker = l.worker.borrow_mut().take();
        tracing::info!(
            target: "access",
            method = l.method,
            route = l.route,
            status = l.status,
            duration_us = l.elapsed.as_micros() as u64,
            bytes = l.bytes,
            shard = self.shard,
            request_id = l.request_id,
            worker_id = worker.as_deref().unwrap_or(""),
            "request"
        );
    }
}

/// What one access-log line says.
pub(crate) struct Line<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub elapsed: Duration,
    /// Response body bytes when known in advance (streams: 0).
    pub bytes: u64,
    pub request_id: &'a str,
    pub worker: &'a WorkerNote,
}

/// At most `per_second` admissions per one-second window.
struct Limit {
    per_second: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    skipped: Cell<u64>,
}

impl Limit {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Cell::new(None),
            used: Cell::new(0),
            skipped: Cell::new(0),
        }
    }

    /// Whether one more line fits the window of `now`; when a window with
    /// skipped requests closed, also how many and how long it lasted.
    fn admit(&self, now: Instant) -> (bool, Option<(u64, Duration)>) {
        if self.per_second == 0 {
            return (false, None);
        }
        let mut report = None;
        let start = match self.window.get() {
            Some(s) if now.saturating_duration_since(s) < Duration::from_secs(1) => s,
            prev => {
                if let Some(s) = prev {
                    let n = self.skipped.replace(0);
                    if n > 0 {
                        report = Some((n, now.saturating_duration_since(s)));
                    }
                }
                self.used.set(0);
                now
            }
        };
        self.window.set(Some(start));
        if self.used.get() < self.per_second {
            self.used.set(self.used.get() + 1);
            (true, report)
        } else {
            self.skipped.set(self.skipped.get() + 1);
            (false, report)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_rate_then_counts_the_rest() {
        let l = Limit::new(3);
        let t0 = Instant::now();
        let got: Vec<bool> = (0..5)
            .map(|i| l.admit(t0 + Duration::from_millis(i)).0)
            .collect();
        assert_eq!(got, [true, true, true, false, false]);
        // The next window admits again and reports the two skipped.
        let (ok, report) = l.admit(t0 + Duration::from_millis(1500));
        assert!(ok);
        let (n, over) = report.unwrap();
        assert_eq!(n, 2);
        assert_eq!(over, Duration::from_millis(1500));
        // Nothing skipped in that window: no report after it.
        assert_eq!(l.admit(t0 + Duration::from_millis(2600)), (true, None));
    }

    #[test]
    fn zero_logs_nothing() {
        let l = Limit::new(0);
        assert_eq!(l.admit(Instant::now()), (false, None));
    }

    #[test]
    fn client_ids_are_kept_only_when_usable() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(client_id(Some(&v("abc-123"))), Some(v("abc-123")));
        assert_eq!(client_id(None), None);
        assert_eq!(client_id(Some(&v(""))), None);
        assert_eq!(client_id(Some(&v("has space"))), None);
        assert_eq!(client_id(Some(&v(&"x".repeat(129)))), None);
        assert!(client_id(Some(&v(&"x".repeat(128)))).is_some());
    }

    #[test]
    fn made_ids_are_unique_and_name_the_shard() {
        let a = AccessLog::new(0xabc, 1, 10);
        let x = a.new_id();
        let y = a.new_id();
        assert_ne!(x, y);
        assert_eq!(x.to_str().unwrap(), "abc-1-0");
        assert_eq!(y.to_str().unwrap(), "abc-1-1");
    }
}
