//! A shard's answers to whole-registry questions: coverage for service
//! assignment, worker listings (with the cached healthy part), the summary
//! behind stats/health/services, and a broadcast's per-worker tasks. Each
//! is this shard's part only; the asking shard folds the parts with
//! `Shard::map_reduce`.

use std::collections::HashMap;
use std::time::Instant;

use super::msg::{BroadcastJob, Coverage, ListKind, Listing, Summary};
use super::Shard;
use crate::model::truthy;
use crate::tasks::{Target, Task};

/// This shard's part of the healthy worker list, kept while it is true.
///
/// Edge caches poll the whole list; between two polls usually only a few
/// workers heartbeat. The part is reused until the registry changes
/// (`Registry::generation`) or one of the listed workers goes stale; a
/// rebuild reuses each unchanged worker's JSON (see `Registry::listed`), so
/// a poll costs a copy, not a re-encoding.
#[derive(Default)]
pub(super) struct ListCache {
    part: Option<(bytes::Bytes, usize, u64, Option<Instant>)>,
    /// Size of the last listing, to allocate the next one once.
    hint: usize,
}

impl ListCache {
    fn get(&self, generation: u64, now: Instant) -> Option<Listing> {
        let (items, count, gen, valid_until) = self.part.as_ref()?;
        let fresh = *gen == generation && valid_until.is_none_or(|v| now <= v);
        fresh.then(|| Listing {
            items: items.clone(),
            count: *count,
            healthy: *count,
            best: None,
        })
    }

    fn put(&mut self, l: &Listing, generation: u64, valid_until: Option<Instant>) {
        self.hint = l.items.len() + l.items.len() / 8;
        self.part = Some((l.items.clone(), l.count, generation, valid_until));
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

    pub(super) fn listing(&self, now: Instant, kind: ListKind, service: Option<&str>) -> Listing {
        if kind == ListKind::Admin {
            // Admin records carry their age, so they are encoded fresh.
            let reg = self.registry.borrow();
            let mut items = Vec::with_capacity(self.list_cache.borrow().hint);
            let (mut count, mut healthy) = (0, 0);
            for w in reg.workers() {
                if count > 0 {
                    items.push(b',');
                }
                w.write_json(&mut items, now, &self.live, true, self.env());
                count += 1;
                if w.is_healthy(now, &self.live) {
                    healthy += 1;
                }
            }
            return Listing {
                items: items.into(),
                count,
                healthy,
                best: None,
            };
        }
        let mut reg = self.registry.borrow_mut();
        let mut cache = self.list_cache.borrow_mut();
        if service.is_none() {
            if let Some(hit) = cache.get(reg.generation(), now) {
                return hit;
            }
        }
        let mut best: Option<(f64, Vec<u8>)> = None;
        let mut items = Vec::with_capacity(if service.is_none() { cache.hint } else { 4096 });
        let (n, valid_until) =
            reg.write_healthy(service, now, self.env(), &mut items, |w, json| {
                if service.is_some() {
                    let load = w.state.current_load;
                    if best.as_ref().is_none_or(|(b, _)| load < *b) {
                        best = Some((load, json.to_vec()));
                    }
                }
            });
        let listing = Listing {
            items: items.into(),
            count: n,
            healthy: n,
            best,
        };
        if service.is_none() {
            cache.put(&listing, reg.generation(), valid_until);
        }
        listing
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
