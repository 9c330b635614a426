//! A shard's answers to whole-registry questions: coverage for service
//! assignment, worker listings (pieces walked in slot order, and the cached
//! healthy part of a small shard), the summary behind
//! stats/health/services, and a broadcast's per-worker tasks. Each is this
//! shard's part only; the asking shard folds the parts with
//! `Shard::map_reduce`, or walks the listing pieces shard by shard.
//!
//! A listing piece is one short synchronous step (at most [`PAGE_ITEMS`]
//! records, about [`PAGE_BYTES`] of JSON, [`SCAN_BUDGET`] records looked
//! at, about [`PIECE_TIME`] of work), so heartbeats on this shard wait for
//! one piece at most, never for a whole list.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::msg::{BroadcastJob, Coverage, ListKind, ListQuery, Listing, Rest, Summary};
use super::registry::Slot;
use super::Shard;
use crate::model::truthy;
use crate::model::worker::WorkerRecord;
use crate::tasks::{Target, Task};

/// Most records one listing piece holds (a paged request asks for up to
/// this many per step).
pub(crate) const PAGE_ITEMS: usize = 128;
/// A piece stops once its JSON reaches this size.
const PAGE_BYTES: usize = 128 << 10;
/// Most records one piece looks at (a sparse filter returns what it found
/// so far and where it stopped).
const SCAN_BUDGET: usize = 4096;
/// A piece stops after about this much work. It runs in one synchronous
/// step on the shard, so this is what a heartbeat arriving meanwhile waits
/// for (records of ~1 KB encode in a few us; larger ones, or a slower
/// machine, take longer: a time bound covers all). With a million workers
/// on one shard and 10k heartbeats/s, 300 us pieces let heartbeats queue
/// behind a list streamed back to back; with 120 us ones heartbeat p99
/// stayed at 1.1-1.4 ms (docs/performance.md, "Lists of one million
/// workers").
const PIECE_TIME: Duration = Duration::from_micros(120);
/// How many records between two looks at the clock.
const CLOCK_EVERY: usize = 8;
/// Largest healthy part a shard builds whole and keeps; a shard whose part
/// is larger answers in pages, so no cache ever holds more than this.
pub(crate) const CACHE_MAX_BYTES: usize = 4 << 20;
/// Bytes per listed worker assumed before any listing was built.
const DEFAULT_RECORD_BYTES: usize = 1024;

/// This shard's part of the healthy worker list, kept while it is true.
///
/// Edge caches poll the whole list; between two polls usually only a few
/// workers heartbeat. The part is reused until the registry changes
/// (`Registry::generation`) or one of the listed workers goes stale; a
/// rebuild reuses each unchanged worker's JSON (see `Registry::listed`), so
/// a poll costs a copy, not a re-encoding. Only a part of at most
/// [`CACHE_MAX_BYTES`] is built whole and kept.
#[derive(Default)]
pub(super) struct ListCache {
    part: Option<(bytes::Bytes, usize, u64, Option<Instant>)>,
    /// Size of the last listing, to allocate the next one once.
    hint: usize,
    /// Bytes per worker of the last listing built (0: none yet), to judge
    /// whether a whole part would fit before building it.
    per_record: usize,
}

impl ListCache {
    fn get(&self, generation: u64, now: Instant) -> Option<Listing> {
        let (items, count, gen, valid_until) = self.part.as_ref()?;
        let fresh = *gen == generation && valid_until.is_none_or(|v| now <= v);
        fresh.then(|| Listing {
            items: items.clone(),
            count: *count,
            healthy: *count,
            ..Default::default()
        })
    }

    fn put(&mut self, l: &Listing, generation: u64, valid_until: Option<Instant>) {
        self.hint = l.items.len() + l.items.len() / 8;
        self.part = (l.items.len() <= CACHE_MAX_BYTES)
            .then(|| (l.items.clone(), l.count, generation, valid_until));
    }

    /// Learns the size of listed records from a piece just built.
    fn observe(&mut self, bytes: usize, count: usize) {
        if count > 0 {
            self.per_record = bytes.div_ceil(count);
        }
    }

    /// Most records a part built whole may hold (by the size of the
    /// records listed last).
    fn max_whole(&self) -> usize {
        let per = match self.per_record {
            0 => DEFAULT_RECORD_BYTES,
            n => n,
        };
        CACHE_MAX_BYTES / (per + 1)
    }

    /// Whether `workers` records would make a part small enough to build
    /// whole.
    fn fits(&self, workers: usize) -> bool {
        workers <= self.max_whole()
    }
}

impl Shard {
    pub(super) fn coverage(&self, exclude: Option<&str>) -> Coverage {
        let (per_service, per_tier) = self.registry.borrow().coverage(exclude);
        Coverage {
            per_service,
            per_tier,
        }
    }

    /// A piece of this shard's worker listing (see [`ListQuery`]).
    /// One worker's admin JSON (what `/api/admin/workers` lists for it).
    pub(super) fn worker_json(&self, now: Instant, id: &str) -> Option<Vec<u8>> {
        let reg = self.registry.borrow();
        let w = reg.get(id)?;
        let mut out = Vec::with_capacity(1024);
        w.write_json(&mut out, now, &self.live, true, &self.coordinator_url);
        Some(out)
    }

    pub(super) fn listing(&self, now: Instant, q: &ListQuery) -> Listing {
        let whole = q.whole && q.kind == ListKind::Healthy && q.after.is_none();
        if whole && q.filter.only_service() {
            if let Some(l) = self.whole_healthy(now, q.filter.service.as_deref(), q.best) {
                return l;
            }
        }
        self.page(now, q)
    }

    /// The whole healthy part (of one service, when given) in one piece,
    /// when it is small: from the cache, or built with the registry's
    /// per-worker JSON. None when it is too large to build whole.
    fn whole_healthy(&self, now: Instant, service: Option<&str>, best: bool) -> Option<Listing> {
        let mut reg = self.registry.borrow_mut();
        let mut cache = self.list_cache.borrow_mut();
        let fits = match service {
            None => {
                if let Some(hit) = cache.get(reg.generation(), now) {
                    return Some(hit);
                }
                cache.fits(reg.len())
            }
            // Counted up to the limit only: a large service is paged.
            Some(s) => {
                let limit = cache.max_whole();
                reg.service_workers(s).take(limit + 1).count() <= limit
            }
        };
        if !fits {
            return None;
        }
        let mut top: Option<(f64, Vec<u8>)> = None;
        let mut items = Vec::with_capacity(if service.is_none() { cache.hint } else { 4096 });
        let (n, valid_until) = reg.write_healthy(
            service,
            now,
            &self.coordinator_url,
            &mut items,
            |w, json| {
                if best {
                    let load = w.state.current_load;
                    if top.as_ref().is_none_or(|(b, _)| load < *b) {
                        top = Some((load, json.to_vec()));
                    }
                }
            },
        );
        cache.observe(items.len(), n);
        let listing = Listing {
            items: items.into(),
            count: n,
            healthy: n,
            best: top,
            ..Default::default()
        };
        if service.is_none() {
            cache.put(&listing, reg.generation(), valid_until);
        }
        Some(listing)
    }

    /// Up to `q.max` (at most [`PAGE_ITEMS`]) matching records after slot
    /// `q.after`, in slot order, encoded fresh. `now` is when the request
    /// started (it also bounds the piece's time).
    fn page(&self, now: Instant, q: &ListQuery) -> Listing {
        let reg = self.registry.borrow();
        let first = match q.after {
            Some(slot) => match slot.checked_add(1) {
                Some(f) => f,
                None => return Listing::default(),
            },
            None => 0,
        };
        let records: Box<dyn Iterator<Item = (Slot, &WorkerRecord)> + '_> = match &q.filter.service
        {
            Some(s) => Box::new(reg.service_workers_from(s, first)),
            None => Box::new(reg.workers_from(first)),
        };
        let admin = q.kind == ListKind::Admin;
        let max = q.max.min(PAGE_ITEMS);
        let mut out = Vec::with_capacity((max * 1024).min(PAGE_BYTES + (64 << 10)));
        let (mut count, mut healthy, mut looked) = (0, 0, 0);
        let mut best: Option<(f64, Vec<u8>)> = None;
        let mut last: Option<Slot> = None;
        let mut rest = Rest::Done;
        for (slot, w) in records {
            looked += 1;
            let is_healthy = w.is_healthy(now, &self.live);
            if (admin || is_healthy) && q.filter.matches(w, now, &self.live) {
                if count == max {
                    rest = Rest::More;
                    break;
                }
                if count > 0 {
                    out.push(b',');
                }
                let start = out.len();
                w.write_json(&mut out, now, &self.live, admin, &self.coordinator_url);
                if q.best && is_healthy {
                    let load = w.state.current_load;
                    if best.as_ref().is_none_or(|(b, _)| load < *b) {
                        best = Some((load, out[start..].to_vec()));
                    }
                }
                count += 1;
                healthy += usize::from(is_healthy);
                last = Some(slot);
                if out.len() >= PAGE_BYTES {
                    rest = Rest::After(slot);
                    break;
                }
            }
            let out_of_time = looked % CLOCK_EVERY == 0 && now.elapsed() >= PIECE_TIME;
            if looked >= SCAN_BUDGET || out_of_time {
                rest = Rest::After(slot);
                break;
            }
        }
        self.list_cache.borrow_mut().observe(out.len(), count);
        Listing {
            items: out.into(),
            count,
            healthy,
            best,
            last,
            rest,
        }
    }

    /// Totals for stats / health / services: read off the registry's
    /// incremental counts, O(services), however many workers there are.
    pub(super) fn summary(&self) -> Summary {
        self.registry.borrow().aggregates()
    }

    /// Healthy worker ids per service, for the admin services view: the
    /// one summary that lists workers, so it walks the service index.
    pub(super) fn members(&self, now: Instant) -> HashMap<String, Vec<String>> {
        let reg = self.registry.borrow();
        reg.service_names()
            .map(|name| {
                let ids = reg
                    .service_workers(name)
                    .filter(|w| w.is_healthy(now, &self.live))
                    .map(|w| w.worker_id.clone())
                    .collect();
                (name.to_string(), ids)
            })
            .collect()
    }

    /// One task per capable worker, queued on the worker's own queue (which
    /// is on this shard, its owner).
    pub(super) fn broadcast(&self, now: Instant, job: &BroadcastJob) -> Vec<(String, String)> {
        let reg = self.registry.borrow();
        let capable: Vec<String> = reg
            .workers()
            .filter(|w| w.is_healthy(now, &self.live) && w.tier <= 2)
            .filter(|w| match &job.required_capability {
                Some(cap) => w.capability_map().get(cap).is_some_and(truthy),
                None => true,
            })
            .map(|w| w.worker_id.clone())
            .collect();
        drop(reg);
        let mut tasks = self.tasks.borrow_mut();
        capable
            .into_iter()
            .map(|id| {
                let target = Target::Worker(id.clone());
                let task_id = crate::tasks::task::new_task_id(&target.queue_key());
                tasks.submit(Task::new(
                    task_id.clone(),
                    job.job_type.clone(),
                    job.job_data.clone(),
                    target,
                    self.cfg.task_max_attempts,
                ));
                (id, task_id)
            })
            .collect()
    }
}
