//! Subscribers on this shard, and the mirrors of every shard's ring they
//! read from.
//!
//! While a shard has subscribers, one fetcher per shard keeps a mirror of
//! that shard's newest events here: it long-polls the ring over the mesh
//! and brings back everything appended since, in one message per batch.
//! Every subscriber reads the mirrors, so the cost on the mesh is one
//! message per batch per shard, not per event or per subscriber. A
//! subscriber behind a mirror (resuming from an old cursor) reads the
//! source ring directly in batches until it catches up; one whose events
//! are gone from the ring gets a `reset`.
//!
//! Slow consumers: once caught up, a subscriber that falls more than
//! `--event-subscriber-buffer` events behind is dropped: its next read is
//! a `reset` that ends the stream, and if it is not even reading (a
//! stalled client whose socket is full) its connection is closed a second
//! later. Nothing is buffered per subscriber beyond its positions, so a
//! slow one costs no memory.
//!
//! Must not: format events (HTTP does), or hold a borrow across an await.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;

use super::msg::EventsQuery;
use super::Shard;
use crate::events::{Cursor, Event, Filter};
use crate::runtime;

/// Events a mirror keeps per shard.
const MIRROR_CAP: usize = 16_384;
/// Events a fetcher brings back per message at most.
const FETCH_MAX: usize = 4096;
/// Events a subscriber takes per read at most (a bounded piece of work).
const READ_MAX: usize = 512;
/// How often slow subscribers are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Subscribers are woken at most this often: events arriving meanwhile
/// go out together, so each subscriber writes one batch per wake instead
/// of one write per event (at 5k events/s and 1,000 subscribers that is
/// 5M writes/s against 0.5M). It bounds the latency it adds.
const LINGER: Duration = Duration::from_millis(2);

/// One shard's newest events, as this shard last fetched them.
#[derive(Default)]
struct Mirror {
    events: VecDeque<Arc<Event>>,
    /// Sequence of the newest event fetched (the source's head then).
    head: u64,
    fetching: bool,
}

impl Mirror {
    /// Sequence of the oldest event held (`head + 1` when empty).
    fn first(&self) -> u64 {
        self.events.front().map_or(self.head + 1, |e| e.seq)
    }
}

/// What the hub knows of one subscriber.
struct Sub {
    pos: RefCell<Vec<u64>>,
    /// Has read everything there was at least once (only those can be
    /// judged slow: a resuming reader is expected to be behind).
    caught_up: Cell<bool>,
    /// Fell too far behind: its next read is a reset.
    dropped: Cell<bool>,
    /// Closes the subscriber's connection (it was dropped and is not even
    /// reading).
    abort: Option<Box<dyn Fn()>>,
}

#[derive(Default)]
pub(crate) struct Hub {
    mirrors: RefCell<Vec<Mirror>>,
    subs: RefCell<Vec<Weak<Sub>>>,
    /// Subscribers waiting for the next fetched batch.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
    checking: Cell<bool>,
    /// A wake is due within `LINGER`.
    waking: Cell<bool>,
}

/// What a subscriber reads next.
pub(crate) enum Next {
    /// Events of shard `source`, oldest first, that pass the filter; the
    /// subscription's positions are already past them.
    Events {
        source: usize,
        events: Vec<Arc<Event>>,
    },
    /// Events it needed are gone: re-list, then follow from `positions`.
    Reset(&'static str),
}

/// A subscriber's place in every shard's ring.
pub(crate) struct Subscription {
    shard: Rc<Shard>,
    filter: Filter,
    sub: Rc<Sub>,
    /// Next source to look at (so no shard starves the others).
    rr: usize,
    /// A reset to report before anything else.
    reset: Option<&'static str>,
}

impl Hub {
    fn wake(&self) {
        for w in self.waiters.borrow_mut().drain(..) {
            let _ = w.send(());
        }
    }

    /// Wakes the subscribers `LINGER` from now, with whatever the
    /// fetchers brought meanwhile (one timer however many batches).
    fn wake_soon(shard: &Rc<Shard>) {
        if shard.hub.waking.replace(true) {
            return;
        }
        let shard = shard.clone();
        runtime::spawn(async move {
            runtime::sleep(LINGER).await;
            shard.hub.waking.set(false);
            shard.hub.wake();
        });
    }

    fn live(&self) -> usize {
        let mut subs = self.subs.borrow_mut();
        subs.retain(|s| s.strong_count() > 0);
        subs.len()
    }
}

impl Shard {
    /// Subscribes to the events passing `filter` from `from` (None: from
    /// now). A cursor of another run, or ahead of a ring, starts from now
    /// with a reset. `abort` closes the subscriber's connection.
    pub(crate) async fn subscribe(
        self: &Rc<Self>,
        filter: Filter,
        from: Option<Result<Cursor, crate::events::CursorError>>,
        abort: Option<Box<dyn Fn()>>,
    ) -> Result<Subscription, super::ShardError> {
        let heads = self.heads().await?;
        let (pos, reset) = match from {
            None => (heads.clone(), None),
            Some(Err(_)) => (heads.clone(), Some("cursor from another server run")),
            Some(Ok(c)) if c.pos.iter().zip(&heads).any(|(p, h)| p > h) => {
                (heads.clone(), Some("cursor ahead of the server"))
            }
            Some(Ok(c)) => (c.pos, None),
        };
        let sub = Rc::new(Sub {
            pos: RefCell::new(pos),
            caught_up: Cell::new(false),
            dropped: Cell::new(false),
            abort,
        });
        self.hub.subs.borrow_mut().push(Rc::downgrade(&sub));
        self.metrics.borrow_mut().event_subscribers_total += 1;
        self.start_fetchers(&heads);
        Ok(Subscription {
            shard: self.clone(),
            filter,
            sub,
            rr: 0,
            reset,
        })
    }

    /// Starts the fetchers not running (and the slow-subscriber check).
    fn start_fetchers(self: &Rc<Self>, heads: &[u64]) {
        let mut mirrors = self.hub.mirrors.borrow_mut();
        if mirrors.is_empty() {
            mirrors.resize_with(self.count, Mirror::default);
            for (m, h) in mirrors.iter_mut().zip(heads) {
                m.head = *h;
            }
        }
        let mut start = Vec::new();
        for (source, m) in mirrors.iter_mut().enumerate() {
            if !m.fetching {
                m.fetching = true;
                start.push(source);
            }
        }
        drop(mirrors);
        for source in start {
            runtime::spawn(fetch(self.clone(), source));
        }
        if !self.hub.checking.replace(true) {
            runtime::spawn(check(self.clone()));
        }
    }

    /// Subscribers on this shard now.
    pub(crate) fn subscribers(&self) -> usize {
        self.hub.live()
    }
}

/// Keeps shard `source`'s mirror current while there are subscribers.
async fn fetch(shard: Rc<Shard>, source: usize) {
    let wait = (shard.cfg.gather_timeout / 2).min(Duration::from_secs(1));
    while shard.hub.live() > 0 {
        let after = shard.hub.mirrors.borrow()[source].head;
        let q = EventsQuery {
            after: Some(after),
            max: FETCH_MAX,
            wait: Some(wait),
        };
        let b = match shard.events_from(source, q).await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(shard = shard.id, source, error = %e, "event fetch failed");
                runtime::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut mirrors = shard.hub.mirrors.borrow_mut();
        let m = &mut mirrors[source];
        if b.gone {
            // The ring moved past the mirror (a burst while it was not
            // fetching): start over at the ring's oldest event; readers
            // behind that will find their events gone and reset.
            m.events.clear();
            m.head = b.oldest.saturating_sub(1);
            continue;
        }
        let Some(last) = b.events.last().map(|e| e.seq) else {
            continue;
        };
        m.events.extend(b.events);
        m.head = last;
        let excess = m.events.len().saturating_sub(MIRROR_CAP);
        m.events.drain(..excess);
        drop(mirrors);
        Hub::wake_soon(&shard);
    }
    shard.hub.mirrors.borrow_mut()[source].fetching = false;
}

/// Drops subscribers that fell too far behind, while there are any.
async fn check(shard: Rc<Shard>) {
    let limit = shard.cfg.event_subscriber_buffer as u64;
    loop {
        runtime::sleep(CHECK_EVERY).await;
        if shard.hub.live() == 0 {
            break;
        }
        let heads: Vec<u64> = shard.hub.mirrors.borrow().iter().map(|m| m.head).collect();
        let subs: Vec<Rc<Sub>> = shard
            .hub
            .subs
            .borrow()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for s in subs {
            if s.dropped.get() {
                // Told last time and still here: not even reading.
                if let Some(abort) = &s.abort {
                    abort();
                }
                continue;
            }
            if !s.caught_up.get() {
                continue;
            }
            let behind: u64 = heads
                .iter()
                .zip(s.pos.borrow().iter())
                .map(|(h, p)| h.saturating_sub(*p))
                .sum();
            if behind > limit {
                s.dropped.set(true);
                shard.metrics.borrow_mut().event_subscribers_dropped += 1;
            }
        }
        shard.hub.wake();
    }
    shard.hub.checking.set(false);
}

impl Subscription {
    /// The cursor just after everything read so far.
    pub(crate) fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.shard.epoch,
            pos: self.sub.pos.borrow().clone(),
        }
    }

    /// The shard the subscription lives on.
    pub(crate) fn shard(&self) -> &Rc<Shard> {
        &self.shard
    }

    /// The epoch and positions, for framing events without a copy.
    pub(crate) fn positions(&self) -> (u64, std::cell::Ref<'_, Vec<u64>>) {
        (self.shard.epoch, self.sub.pos.borrow())
    }

    /// The next events for this subscriber, waiting for them if there are
    /// none; a reset ends the subscription (every later read is one too).
    pub(crate) async fn next(&mut self) -> Next {
        loop {
            if let Some(why) = self.reset {
                return Next::Reset(why);
            }
            if self.sub.dropped.get() {
                self.reset = Some("subscriber too slow");
                continue;
            }
            let mut moved = false;
            let n = self.shard.count;
            for i in 0..n {
                let source = (self.rr + i) % n;
                let pos = self.sub.pos.borrow()[source];
                let (head, first) = {
                    let m = &self.shard.hub.mirrors.borrow()[source];
                    (m.head, m.first())
                };
                if pos >= head {
                    continue;
                }
                let events = if pos + 1 >= first {
                    let mirrors = self.shard.hub.mirrors.borrow();
                    let m = &mirrors[source];
                    let skip = (pos + 1 - first) as usize;
                    m.events.iter().skip(skip).take(READ_MAX).cloned().collect()
                } else {
                    let q = EventsQuery {
                        after: Some(pos),
                        max: READ_MAX,
                        wait: None,
                    };
                    match self.shard.events_from(source, q).await {
                        Ok(b) if b.gone => {
                            self.reset = Some("cursor older than the event ring");
                            break;
                        }
                        Ok(b) => b.events,
                        Err(e) => {
                            tracing::debug!(source, error = %e, "subscriber catch-up failed");
                            continue;
                        }
                    }
                };
                let Some(last) = events.last().map(|e: &Arc<Event>| e.seq) else {
                    continue;
                };
                self.sub.pos.borrow_mut()[source] = last;
                moved = true;
                let mut events = events;
                events.retain(|e| self.filter.matches(e));
                if !events.is_empty() {
                    self.rr = source + 1;
                    return Next::Events { source, events };
                }
            }
            if self.reset.is_some() || moved {
                continue;
            }
            self.sub.caught_up.set(true);
            let (tx, rx) = oneshot::channel();
            self.shard.hub.waiters.borrow_mut().push(tx);
            let _ = rx.await;
        }
    }
}
