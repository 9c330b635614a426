//! Deadlines ordered by time, so housekeeping touches only what is due.
//!
//! A worker goes stale `heartbeat_timeout` after its last heartbeat and is
//! removed `worker_timeout` after it. Walking every worker to find the few
//! that crossed a deadline made each sweep cost O(workers): half a second
//! of stall at a million workers. Here each worker sits in exactly one
//! bucket, keyed by the tick at or before its next deadline. A heartbeat
//! only moves deadlines later, so it leaves the entry where it is (O(1),
//! no wheel work at all); when the bucket comes due, the owner re-judges
//! the worker against the clock and re-queues it at its real next deadline.
//! Work per sweep is therefore proportional to the workers whose bucket came
//! due (about `workers / heartbeat_timeout` per second), not to the registry.
//!
//! Entries are `Ticket`s: a slot and the serial the slot's owner gave the
//! entry. The owner bumps a slot's serial whenever the entry it holds must
//! stop counting (the worker left, or its next deadline moved earlier, as
//! when a stale worker heartbeats again), so a left-behind entry is
//! recognised and skipped when it comes due. Pure data structure: no clock
//! reads, no IO.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A slab slot and the serial of the entry made for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub slot: u32,
    pub serial: u32,
}

/// Buckets of tickets keyed by tick (`epoch + tick * resolution`).
#[derive(Debug)]
pub(crate) struct Wheel {
    epoch: Instant,
    resolution: Duration,
    buckets: BTreeMap<u64, Vec<Ticket>>,
    len: usize,
}

impl Wheel {
    pub(crate) fn new(epoch: Instant, resolution: Duration) -> Self {
        Self {
            epoch,
            resolution: resolution.max(Duration::from_millis(1)),
            buckets: BTreeMap::new(),
            len: 0,
        }
    }

    /// The first tick whose time is at or after `at` (deadlines round up,
    /// so an entry never comes due before its deadline).
    fn tick_at_or_after(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch).as_nanos();
        let res = self.resolution.as_nanos();
        since.div_ceil(res).min(u64::MAX as u128) as u64
    }

    /// The last tick whose time is at or before `now`.
    fn tick_at_or_before(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        (since / self.resolution.as_nanos()).min(u64::MAX as u128) as u64
    }

    /// Queues `t` to come due at or after `deadline`, but never at or
    /// before `now`'s tick when `not_before` is given (so a re-queue made
    /// while draining cannot come due again in the same drain).
    pub(crate) fn schedule(&mut self, t: Ticket, deadline: Instant, not_before: Option<Instant>) {
        let mut tick = self.tick_at_or_after(deadline);
        if let Some(now) = not_before {
            tick = tick.max(self.tick_at_or_before(now) + 1);
        }
        self.buckets.entry(tick).or_default().push(t);
        self.len += 1;
    }

    /// Takes up to `max` entries that are due at `now`, oldest tick first.
    /// The caller re-judges each and re-schedules what is still registered.
    pub(crate) fn take_due(&mut self, now: Instant, max: usize, out: &mut Vec<Ticket>) {
        let due = self.tick_at_or_before(now);
        while out.len() < max {
            let Some(mut first) = self.buckets.first_entry() else {
                return;
            };
            if *first.key() > due {
                return;
            }
            let bucket = first.get_mut();
            let n = (max - out.len()).min(bucket.len());
            out.extend(bucket.drain(bucket.len() - n..));
            self.len -= n;
            if bucket.is_empty() {
                first.remove();
            }
        }
    }

    /// Whether anything is due at `now`.
    pub(crate) fn has_due(&self, now: Instant) -> bool {
        let due = self.tick_at_or_before(now);
        self.buckets.keys().next().is_some_and(|t| *t <= due)
    }

    /// Entries queued (including ones left behind by removed workers).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(slot: u32) -> Ticket {
        Ticket { slot, serial: 0 }
    }

    fn drain(w: &mut Wheel, now: Instant) -> Vec<u32> {
        let mut out = Vec::new();
        w.take_due(now, usize::MAX, &mut out);
        let mut v: Vec<u32> = out.iter().map(|t| t.slot).collect();
        v.sort();
        v
    }

    #[test]
    fn only_entries_whose_deadline_passed_come_due() {
        let epoch = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Wheel::new(epoch, ms(100));
        w.schedule(t(1), epoch + ms(250), None);
        w.schedule(t(2), epoch + ms(300), None);
        w.schedule(t(3), epoch + ms(1000), None);
        assert_eq!(w.len(), 3);
        // Rounded up: 250 ms is due at the 300 ms tick, not at 200 ms.
        assert!(!w.has_due(epoch + ms(299)));
        assert!(drain(&mut w, epoch + ms(299)).is_empty());
        assert!(w.has_due(epoch + ms(300)));
        assert_eq!(drain(&mut w, epoch + ms(300)), vec![1, 2]);
        assert_eq!(drain(&mut w, epoch + ms(999)), Vec::<u32>::new());
        assert_eq!(drain(&mut w, epoch + ms(5000)), vec![3]);
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn take_due_honours_the_budget_and_keeps_the_rest() {
        let epoch = Instant::now();
        let mut w = Wheel::new(epoch, Duration::from_millis(10));
        for i in 0..10 {
            w.schedule(t(i), epoch + Duration::from_millis(i as u64), None);
        }
        let now = epoch + Duration::from_secs(1);
        let mut out = Vec::new();
        w.take_due(now, 4, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(w.len(), 6);
        let mut rest = Vec::new();
        w.take_due(now, 100, &mut rest);
        let mut all: Vec<u32> = out.iter().chain(&rest).map(|t| t.slot).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_requeue_while_draining_is_not_due_again_in_the_same_drain() {
        let epoch = Instant::now();
        let mut w = Wheel::new(epoch, Duration::from_millis(10));
        let now = epoch + Duration::from_millis(55);
        // Deadline already passed (rounding), but re-queued during a drain.
        w.schedule(t(7), epoch + Duration::from_millis(1), Some(now));
        assert!(!w.has_due(now));
        assert_eq!(drain(&mut w, now + Duration::from_millis(10)), vec![7]);
    }
}
