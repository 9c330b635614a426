//! One shard's bounded event ring.
//!
//! Events are numbered 1, 2, ... by the shard that appends them; the ring
//! keeps the newest `cap` of them. A reader asks for the events after its
//! position: it gets them in order, or learns that some it needs are gone
//! (overwritten), which only a re-list can repair.

use std::collections::VecDeque;
use std::sync::Arc;

use futures::channel::oneshot;

use super::{Draft, Event};

/// Events after a position, as a ring answers a reader.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub events: Vec<Arc<Event>>,
    /// Sequence of the ring's newest event when it answered (0: none yet).
    pub head: u64,
    /// Sequence of the oldest event still held (head + 1 when empty).
    pub oldest: u64,
    /// Events the reader needed were overwritten (or its position is from
    /// the future): it must start over from a fresh list.
    pub gone: bool,
}

pub(crate) struct Ring {
    cap: usize,
    events: VecDeque<Arc<Event>>,
    /// Sequence of the next event.
    next: u64,
    /// Readers waiting for the next append.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Ring {
    pub(crate) fn new(cap: usize) -> Ring {
        Ring {
            cap: cap.max(1),
            events: VecDeque::new(),
            next: 1,
            waiters: Vec::new(),
        }
    }

    /// Sequence of the newest event (0 before the first).
    pub(crate) fn head(&self) -> u64 {
        self.next - 1
    }

    /// Sequence of the oldest event held (`head + 1` when empty).
    pub(crate) fn oldest(&self) -> u64 {
        self.events.front().map_or(self.next, |e| e.seq)
    }

    /// Appends an event (dropping the oldest when full) and wakes every
    /// waiting reader.
    pub(crate) fn push(&mut self, draft: Draft) -> Arc<Event> {
        let ev = Arc::new(Event {
            seq: self.next,
            draft,
        });
        self.next += 1;
        if self.events.len() == self.cap {
            self.events.pop_front();
        }
        self.events.push_back(ev.clone());
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
        ev
    }

    /// Up to `max` events after position `pos` (the sequence of the last
    /// event the reader has), oldest first.
    pub(crate) fn after(&self, pos: u64, max: usize) -> Batch {
        let (head, oldest) = (self.head(), self.oldest());
        let Some(skip) = self.after_range(pos) else {
            return Batch {
                events: Vec::new(),
                head,
                oldest,
                gone: true,
            };
        };
        let events = self.events.iter().skip(skip).take(max).cloned().collect();
        Batch {
            events,
            head,
            oldest,
            gone: false,
        }
    }

    /// Resolves at the next append (or errs if the ring is dropped).
    pub(crate) fn wait(&mut self) -> oneshot::Receiver<()> {
        if self.waiters.len() >= 64 {
            self.waiters.retain(|w| !w.is_canceled());
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        rx
    }

    /// The events after `pos` of the given topic, oldest first;
    /// `None` when events after `pos` are gone.
    pub(crate) fn of_topic_after(
        &self,
        pos: u64,
        topic: super::Topic,
    ) -> Option<impl Iterator<Item = &Event> + '_> {
        let b = self.after_range(pos)?;
        Some(
            self.events
                .range(b..)
                .map(|e| &**e)
                .filter(move |e| e.kind.topic() == topic),
        )
    }

    /// Index of the event after `pos`; None when the reader's next event
    /// was overwritten (`pos + 1 < oldest`) or `pos` is from the future.
    fn after_range(&self, pos: u64) -> Option<usize> {
        let (head, oldest) = (self.head(), self.oldest());
        if pos > head || pos.saturating_add(1) < oldest {
            return None;
        }
        Some((pos + 1 - oldest) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Draft, Kind, Topic};
    use super::*;

    fn draft(key: &str) -> Draft {
        Draft::new(Kind::WorkerRegistered, key, Some(key), Box::new([]), &())
    }

    #[test]
    fn reads_after_a_position_and_reports_overwritten_ones() {
        let mut r = Ring::new(3);
        assert_eq!(r.head(), 0);
        let b = r.after(0, 10);
        assert!(!b.gone && b.events.is_empty());
        for k in ["a", "b", "c", "d"] {
            r.push(draft(k));
        }
        // 1 was overwritten: a reader at 0 needs it.
        assert!(r.after(0, 10).gone);
        let b = r.after(1, 10);
        assert!(!b.gone);
        let keys: Vec<_> = b.events.iter().map(|e| &*e.key).collect();
        assert_eq!(keys, ["b", "c", "d"]);
        assert_eq!(r.after(2, 1).events[0].seq, 3);
        assert!(r.after(4, 10).events.is_empty() && !r.after(4, 10).gone);
        // A position from the future (another process) is gone too.
        assert!(r.after(5, 10).gone);
    }

    #[test]
    fn appends_wake_waiters_and_tails_are_json_after_the_brace() {
        let mut r = Ring::new(8);
        let mut w = r.wait();
        assert_eq!(w.try_recv(), Ok(None));
        let e = r.push(draft("w1"));
        assert_eq!(w.try_recv(), Ok(Some(())));
        let obj = format!("{{\"index\":\"x\",{}", e.tail());
        let v: serde_json::Value = serde_json::from_str(&obj).unwrap();
        assert_eq!(v["type"], "worker.registered");
        assert_eq!(v["key"], "w1");
        assert!(v["time"].as_str().unwrap().ends_with("+00:00"));
        let keys: Vec<_> = r
            .of_topic_after(0, Topic::Worker)
            .unwrap()
            .map(|e| e.seq)
            .collect();
        assert_eq!(keys, [1]);
        assert_eq!(r.of_topic_after(0, Topic::Task).unwrap().count(), 0);
    }
}
