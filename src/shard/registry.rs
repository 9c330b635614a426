//! One shard's slice of the worker registry.
//!
//! Owns the records of the workers whose id hashes to this shard, the
//! service -> workers index for them, their deadlines and the counts every
//! whole-registry question is answered from. (Their tasks live in
//! `tasks::TaskTable`.) It is a plain data structure: no IO, no async, no
//! knowledge of other shards; the shard wraps it in a `RefCell` and never
//! holds a borrow across an await.
//!
//! Nothing here costs time proportional to the registry except the
//! explicit walks (`workers`, listings), which callers page:
//! - records live in a chunked slab, addressed by a `Slot` that stays the
//!   same for as long as the worker stays registered (a re-registration
//!   keeps it), so cursors and the deadline wheel can name a worker with a
//!   `u32`, and growth never copies the whole registry;
//! - the id table and the service index hold slots, not id strings;
//! - staleness and removal come from a deadline wheel (`wheel`), touched
//!   only when a worker's deadline comes due;
//! - the counts (healthy per service and tier, status histogram, stale,
//!   summed load) are kept exact by every mutation, so coverage for
//!   assignment, stats and health are O(services), not O(workers).
//!
//! Invariants, kept by `insert`, `remove`, `heartbeat` and `expire`:
//! - `by_service[s]` contains slot `x` exactly when `x` holds a worker and
//!   `s` is one of its `index_keys()`;
//! - `counts` equals what counting every entry by its flags gives;
//! - every entry has exactly one live ticket in the wheel, due at or before
//!   its next deadline (fresh: going stale; stale: removal).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use hashbrown::HashTable;

use super::msg::Summary;
use super::wheel::{Ticket, Wheel};
use crate::events::{Draft, Kind};
use crate::model::wire::HeartbeatRequest;
use crate::model::worker::{Liveness, WorkerRecord};

type Hasher = ahash::RandomState;

/// Where a worker lives in the slab.
pub(crate) type Slot = u32;

/// Slab chunk size: growth allocates one chunk, never moves the others.
const CHUNK: usize = 1024;

/// At most this many bytes of per-worker listing JSON are cached per
/// shard. Within it a re-listing copies unchanged workers' JSON instead of
/// encoding it again (edge caches poll far more often than any one worker
/// changes); beyond it (a shard with tens of thousands of workers) the
/// rest is encoded on every listing, so memory per worker stays flat.
const LISTED_BUDGET: usize = 8 << 20;

/// Wheel resolution: deadlines are honoured to within this (plus the
/// sweep interval).
const WHEEL_RESOLUTION: Duration = Duration::from_millis(100);

/// Records in fixed-size chunks, indexed by slot: growth adds a chunk and
/// never moves (copies) the records already held.
#[derive(Default)]
struct Slab(Vec<Vec<SlotCell>>);

impl std::ops::Deref for Slab {
    type Target = Vec<Vec<SlotCell>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Slab {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::ops::Index<Slot> for Slab {
    type Output = SlotCell;
    fn index(&self, slot: Slot) -> &SlotCell {
        let s = slot as usize;
        &self.0[s / CHUNK][s % CHUNK]
    }
}

impl std::ops::IndexMut<Slot> for Slab {
    fn index_mut(&mut self, slot: Slot) -> &mut SlotCell {
        let s = slot as usize;
        &mut self.0[s / CHUNK][s % CHUNK]
    }
}

struct Entry {
    rec: WorkerRecord,
    /// Last heartbeat within `heartbeat_timeout`, as of the last time the
    /// wheel judged the worker (it turns false when its bucket comes due).
    fresh: bool,
    /// Counted as healthy: fresh and not reporting itself down.
    healthy: bool,
    /// The worker's JSON for the healthy listing, made on the first listing
    /// after the record last changed (within `LISTED_BUDGET`).
    listed: Option<Box<[u8]>>,
}

#[derive(Default)]
struct SlotCell {
    /// Serial of the live wheel ticket for this slot (see `wheel`).
    serial: u32,
    entry: Option<Entry>,
}

/// Exact aggregates over the shard's workers, by their flags.
#[derive(Default)]
struct Counts {
    /// Fresh workers by reported status.
    fresh_by_status: HashMap<String, u64, Hasher>,
    stale: u64,
    healthy: u64,
    /// Healthy workers per tier, and their summed load in millionths
    /// (integers, so adding and taking away never drifts).
    tier_count: [u64; 5],
    tier_load_micros: [i64; 5],
    /// Healthy workers per index key (service).
    per_service: HashMap<String, u32, Hasher>,
    /// Services whose healthy count crossed 0 or 1 (either way) since the
    /// shard last looked: their coverage may have changed.
    crossed: Vec<String>,
}

/// Worker ids a log line names at most (the count is always given).
pub(crate) const LOG_IDS: usize = 10;

/// What one call to `expire` did.
#[derive(Debug, Default)]
pub(crate) struct Expired {
    /// Ids of the workers removed for silence.
    pub removed: Vec<String>,
    /// How many workers went stale.
    pub went_stale: usize,
    /// The first `LOG_IDS` of them, for the log.
    pub stale_ids: Vec<String>,
    /// More entries are due: call again (after letting requests run).
    pub more: bool,
}

/// The shard-local registry.
pub struct Registry {
    chunks: Slab,
    free: Vec<Slot>,
    len: usize,
    /// Id -> slot; hashed by the id stored in the slot's record, so the id
    /// string is held once.
    ids: HashTable<Slot>,
    hasher: Hasher,
    by_service: HashMap<String, BTreeSet<Slot>, Hasher>,
    wheel: Wheel,
    live: Liveness,
    counts: Counts,
    listed_bytes: usize,
    /// Bumped by every mutation, so a shard can tell whether a listing it
    /// built earlier still describes the registry.
    generation: u64,
    tasks_completed: u64,
    /// Events of the changes made since the shard last drained them
    /// ([`Registry::drain_events`]); none while `emit` is off (restore).
    outbox: Vec<Draft>,
    emit: bool,
}

/// Why a worker left the registry (`worker.removed`'s `reason`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Removal {
    Unregistered,
    Expired,
}

/// A worker's state as `worker.state` events name it: its reported
/// status while fresh, `stale` once it missed its heartbeat deadline.
fn label(e: &Entry) -> &str {
    if e.fresh {
        e.rec.shown_status()
    } else {
        "stale"
    }
}

/// An event about worker `rec`, filed under its services.
fn worker_event(kind: Kind, rec: &WorkerRecord, data: &impl serde::Serialize) -> Draft {
    let services = rec.index_keys().into_iter().map(Into::into).collect();
    Draft::new(kind, &rec.worker_id, Some(&rec.worker_id), services, data)
}

/// A `worker.state` event, when the state changed at all.
fn state_event(rec: &WorkerRecord, from: &str, to: &str) -> Option<Draft> {
    (from != to).then(|| {
        let data = serde_json::json!({ "from": from, "to": to });
        worker_event(Kind::WorkerState, rec, &data)
    })
}

/// What `worker.registered` and `worker.updated` say about a worker,
/// serialised straight from the record.
#[derive(serde::Serialize)]
struct WorkerData<'a> {
    worker_type: crate::model::WorkerType,
    tier: u8,
    services: &'a [&'a str],
    models: &'a [String],
    tunnel_url: &'a Option<String>,
    ip_address: &'a Option<String>,
    status: &'a str,
}

/// A `worker.registered` or `worker.updated` event.
fn worker_news(kind: Kind, rec: &WorkerRecord) -> Draft {
    let names = rec.index_keys();
    let data = WorkerData {
        worker_type: rec.worker_type,
        tier: rec.tier,
        services: &names,
        models: &rec.state.loaded_models,
        tunnel_url: &rec.tunnel_url,
        ip_address: &rec.ip_address,
        status: &rec.state.status,
    };
    let services = names.iter().map(|&n| n.into()).collect();
    Draft::new(kind, &rec.worker_id, Some(&rec.worker_id), services, &data)
}

impl Default for Registry {
    /// A registry judging liveness by the coordinator's default timeouts.
    fn default() -> Self {
        Self::new(Liveness {
            heartbeat_timeout: Duration::from_secs(120),
            worker_timeout: Duration::from_secs(600),
        })
    }
}

fn load_micros(load: f64) -> i64 {
    if load.is_finite() {
        (load.clamp(-1e9, 1e9) * 1e6).round() as i64
    } else {
        0
    }
}

fn bump(map: &mut HashMap<String, u64, Hasher>, key: &str, add: bool) {
    if add {
        match map.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                map.insert(key.to_string(), 1);
            }
        }
    } else if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Counts {
    /// Adds (or takes away) an entry's status and tier contribution.
    fn status_and_tier(&mut self, e: &Entry, add: bool) {
        if e.fresh {
            bump(&mut self.fresh_by_status, e.rec.shown_status(), add);
        } else if add {
            self.stale += 1;
        } else {
            self.stale = self.stale.saturating_sub(1);
        }
        if e.healthy {
            let t = (e.rec.tier as usize).min(4);
            let load = load_micros(e.rec.state.current_load);
            if add {
                self.healthy += 1;
                self.tier_count[t] += 1;
                self.tier_load_micros[t] += load;
            } else {
                self.healthy = self.healthy.saturating_sub(1);
                self.tier_count[t] = self.tier_count[t].saturating_sub(1);
                self.tier_load_micros[t] -= load;
            }
        }
    }

    /// Adds (or takes away) a healthy entry's service coverage.
    fn services(&mut self, rec: &WorkerRecord, add: bool) {
        for k in rec.index_keys() {
            let n = if add {
                let n = self.per_service.entry(k.to_string()).or_default();
                *n += 1;
                *n
            } else if let Some(n) = self.per_service.get_mut(k) {
                *n = n.saturating_sub(1);
                let left = *n;
                if left == 0 {
                    self.per_service.remove(k);
                }
                left
            } else {
                continue;
            };
            // 0 <-> 1 and 1 <-> 2 are the crossings coverage events track.
            if n <= 1 + u32::from(add) {
                self.crossed.push(k.to_string());
            }
        }
    }

    fn add(&mut self, e: &Entry) {
        self.status_and_tier(e, true);
        if e.healthy {
            self.services(&e.rec, true);
        }
    }

    fn take(&mut self, e: &Entry) {
        self.status_and_tier(e, false);
        if e.healthy {
            self.services(&e.rec, false);
        }
    }
}

impl Registry {
    /// Its hash tables get random seeds: worker ids and service names come
    /// from clients, who must not be able to pick colliding ones.
    pub fn new(live: Liveness) -> Self {
        Self::with_hasher(live, Hasher::new())
    }

    /// With fixed hash seeds: the same work on every run, for the
    /// instruction-count benches (never for serving).
    pub fn seeded(live: Liveness, seed: u64) -> Self {
        Self::with_hasher(
            live,
            Hasher::with_seeds(seed, !seed, seed ^ 0x5555, seed ^ 0xaaaa),
        )
    }

    fn with_hasher(live: Liveness, hasher: Hasher) -> Self {
        Self {
            chunks: Slab::default(),
            free: Vec::new(),
            len: 0,
            ids: HashTable::new(),
            by_service: HashMap::with_hasher(hasher.clone()),
            counts: Counts {
                fresh_by_status: HashMap::with_hasher(hasher.clone()),
                per_service: HashMap::with_hasher(hasher.clone()),
                ..Counts::default()
            },
            hasher,
            wheel: Wheel::new(Instant::now(), WHEEL_RESOLUTION),
            live,
            listed_bytes: 0,
            generation: 0,
            tasks_completed: 0,
            outbox: Vec::new(),
            emit: true,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn cell(&self, slot: Slot) -> Option<&SlotCell> {
        let s = slot as usize;
        self.chunks.get(s / CHUNK)?.get(s % CHUNK)
    }

    fn entry(&self, slot: Slot) -> Option<&Entry> {
        self.cell(slot)?.entry.as_ref()
    }

    fn slot_of(&self, id: &str) -> Option<Slot> {
        let hash = self.hasher.hash_one(id);
        let chunks = &self.chunks;
        self.ids
            .find(hash, |&s| {
                chunks[s]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.rec.worker_id == id)
            })
            .copied()
    }

    pub(crate) fn get(&self, id: &str) -> Option<&WorkerRecord> {
        self.entry(self.slot_of(id)?).map(|e| &e.rec)
    }

    /// Every worker, in slot order.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.workers_from(0).map(|(_, w)| w)
    }

    /// Workers in slot order from `first` on, with their slots. A worker
    /// keeps its slot while registered, so a walk resumed from `last + 1`
    /// sees every worker that stayed registered exactly once.
    pub(crate) fn workers_from(
        &self,
        first: Slot,
    ) -> impl Iterator<Item = (Slot, &WorkerRecord)> + '_ {
        let first = first as usize;
        self.chunks
            .iter()
            .enumerate()
            .skip(first / CHUNK)
            .flat_map(move |(c, chunk)| {
                let skip = if c == first / CHUNK { first % CHUNK } else { 0 };
                chunk
                    .iter()
                    .enumerate()
                    .skip(skip)
                    .filter_map(move |(i, cell)| {
                        let e = cell.entry.as_ref()?;
                        Some(((c * CHUNK + i) as Slot, &e.rec))
                    })
            })
    }

    /// The records of the workers indexed under `service`, in slot order.
    pub(crate) fn service_workers<'a>(
        &'a self,
        service: &str,
    ) -> impl Iterator<Item = &'a WorkerRecord> + 'a {
        self.service_workers_from(service, 0).map(|(_, w)| w)
    }

    /// Like `service_workers`, from slot `first` on, with slots.
    pub(crate) fn service_workers_from<'a>(
        &'a self,
        service: &str,
        first: Slot,
    ) -> impl Iterator<Item = (Slot, &'a WorkerRecord)> + 'a {
        self.by_service
            .get(service)
            .into_iter()
            .flat_map(move |set| set.range(first..))
            .filter_map(|&s| Some((s, &self.entry(s)?.rec)))
    }

    /// Service name -> slots of the workers indexed under it.
    pub(crate) fn service_names(&self) -> impl Iterator<Item = &str> {
        self.by_service.keys().map(String::as_str)
    }

    /// Changes with every mutation of the registry.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Drops an entry's cached JSON and bumps the generation: every
    /// mutation of a record goes through here.
    fn changed(listed_bytes: &mut usize, generation: &mut u64, e: &mut Entry) {
        if let Some(b) = e.listed.take() {
            *listed_bytes -= b.len();
        }
        *generation += 1;
    }

    fn schedule(&mut self, slot: Slot, not_before: Option<Instant>) {
        let Some(cell) = self.cell(slot) else { return };
        let Some(e) = cell.entry.as_ref() else { return };
        let timeout = if e.fresh {
            self.live.heartbeat_timeout
        } else {
            self.live.worker_timeout
        };
        let ticket = Ticket {
            slot,
            serial: cell.serial,
        };
        self.wheel
            .schedule(ticket, e.rec.last_seen + timeout, not_before);
    }

    /// Inserts or replaces a record; returns true when it replaced one.
    /// A replacement keeps the worker's slot and adds up its completed
    /// tasks.
    pub fn insert(&mut self, mut rec: WorkerRecord) -> bool {
        let now = Instant::now();
        let fresh = rec.age(now) <= self.live.heartbeat_timeout;
        let healthy = fresh && !rec.reports_down();
        if let Some(slot) = self.slot_of(&rec.worker_id) {
            let Self {
                chunks,
                counts,
                by_service,
                listed_bytes,
                generation,
                ..
            } = self;
            let cell = &mut chunks[slot];
            let Some(e) = cell.entry.as_mut() else {
                return false;
            };
            Self::changed(listed_bytes, generation, e);
            counts.take(e);
            unindex(by_service, &e.rec, slot);
            rec.tasks_completed += e.rec.tasks_completed;
            // An operator's drain outlives the agent re-registering.
            rec.drained |= e.rec.drained;
            let healthy = healthy && !rec.drained;
            let was_fresh = e.fresh;
            // Its state before the new record replaces the old one.
            let from = self.emit.then(|| label(e).to_string());
            let old = std::mem::replace(&mut e.rec, rec);
            e.fresh = fresh;
            e.healthy = healthy;
            counts.add(e);
            index(by_service, &e.rec, slot);
            if let Some(from) = from {
                let new = &e.rec;
                if old.index_keys() != new.index_keys()
                    || old.tunnel_url != new.tunnel_url
                    || old.ip_address != new.ip_address
                {
                    self.outbox.push(worker_news(Kind::WorkerUpdated, new));
                }
                self.outbox.extend(state_event(new, &from, label(e)));
            }
            // A stale worker's ticket is due at its removal; fresh again,
            // it needs one at its (earlier) stale deadline.
            if !was_fresh && fresh {
                cell.serial = cell.serial.wrapping_add(1);
                self.schedule(slot, None);
            }
            return true;
        }
        let slot = self.alloc();
        let hash = self.hasher.hash_one(rec.worker_id.as_str());
        let entry = Entry {
            rec,
            fresh,
            healthy,
            listed: None,
        };
        if self.emit {
            let rec = &entry.rec;
            self.outbox.push(worker_news(Kind::WorkerRegistered, rec));
        }
        self.counts.add(&entry);
        index(&mut self.by_service, &entry.rec, slot);
        let Self {
            chunks,
            ids,
            hasher,
            ..
        } = self;
        chunks[slot].entry = Some(entry);
        let chunks = &*chunks;
        ids.insert_unique(hash, slot, |&x| {
            chunks[x]
                .entry
                .as_ref()
                .map_or(0, |e| hasher.hash_one(e.rec.worker_id.as_str()))
        });
        self.len += 1;
        self.generation += 1;
        self.schedule(slot, None);
        false
    }

    /// A free slot (its serial already bumped past any ticket left behind).
    fn alloc(&mut self) -> Slot {
        if let Some(s) = self.free.pop() {
            return s;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let c = self.chunks.len() - 1;
        let chunk = &mut self.chunks.0[c];
        chunk.push(SlotCell::default());
        (c * CHUNK + chunk.len() - 1) as Slot
    }

    /// Healthy workers per service and per tier (index = tier), leaving
    /// out `exclude` (a re-registering worker must not count itself).
    pub fn coverage(&self, exclude: Option<&str>) -> (HashMap<String, u32>, [u32; 5]) {
        let mut services: HashMap<String, u32> = self
            .counts
            .per_service
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut tiers = self
            .counts
            .tier_count
            .map(|n| n.min(u32::MAX as u64) as u32);
        if let Some(e) = exclude
            .and_then(|id| self.slot_of(id))
            .and_then(|s| self.entry(s))
            .filter(|e| e.healthy)
        {
            let t = (e.rec.tier as usize).min(4);
            tiers[t] = tiers[t].saturating_sub(1);
            for k in e.rec.index_keys() {
                if let Some(n) = services.get_mut(k) {
                    *n = n.saturating_sub(1);
                }
            }
            services.retain(|_, n| *n > 0);
        }
        (services, tiers)
    }

    /// Totals for stats, health and the services views: O(services).
    pub(crate) fn aggregates(&self) -> Summary {
        let c = &self.counts;
        let mut by_status: HashMap<String, u64> = c
            .fresh_by_status
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if c.stale > 0 {
            *by_status.entry("stale".into()).or_default() += c.stale;
        }
        Summary {
            total: self.len as u64,
            healthy: c.healthy,
            stale: c.stale,
            tier_count: c.tier_count,
            tier_load: c.tier_load_micros.map(|m| m as f64 / 1e6),
            by_status,
            services: c
                .per_service
                .iter()
                .map(|(k, v)| (k.clone(), *v as u64))
                .collect(),
            tasks_completed: self.tasks_completed,
        }
    }

    /// Judges up to `max` workers whose deadline came due by `now`: a
    /// fresh one that missed its heartbeat goes stale, a stale one silent
    /// for `worker_timeout` is removed, and the rest are re-queued at their
    /// real next deadline. Cost is proportional to `max`, never to the
    /// registry; `more` says whether due entries are left.
    pub(crate) fn expire(&mut self, now: Instant, max: usize) -> Expired {
        let mut due = Vec::with_capacity(max.min(4096));
        self.wheel.take_due(now, max, &mut due);
        let mut out = Expired::default();
        for t in due {
            let Some(cell) = self.cell(t.slot) else {
                continue;
            };
            if cell.serial != t.serial {
                continue;
            }
            let Some(e) = cell.entry.as_ref() else {
                continue;
            };
            let age = e.rec.age(now);
            if age > self.live.worker_timeout {
                let id = e.rec.worker_id.clone();
                self.remove_for(&id, Removal::Expired);
                out.removed.push(id);
                continue;
            }
            if e.fresh && age > self.live.heartbeat_timeout {
                let Self {
                    chunks,
                    counts,
                    listed_bytes,
                    generation,
                    ..
                } = self;
                if let Some(e) = chunks[t.slot].entry.as_mut() {
                    Self::changed(listed_bytes, generation, e);
                    counts.take(e);
                    if self.emit {
                        self.outbox.extend(state_event(&e.rec, label(e), "stale"));
                    }
                    e.fresh = false;
                    e.healthy = false;
                    counts.add(e);
                    if out.stale_ids.len() < LOG_IDS {
                        out.stale_ids.push(e.rec.worker_id.clone());
                    }
                }
                out.went_stale += 1;
            }
            self.schedule(t.slot, Some(now));
        }
        out.more = self.wheel.has_due(now);
        out
    }

    /// Puts back a record read from the database at startup, counting its
    /// completed tasks into the shard's total.
    /// Restored workers are not news: no events.
    pub(crate) fn restore(&mut self, rec: WorkerRecord) {
        self.tasks_completed += rec.tasks_completed;
        let emit = std::mem::replace(&mut self.emit, false);
        self.insert(rec);
        self.emit = emit;
    }

    /// Removes a worker another node owns now (cluster mode). Not news
    /// either: the worker lives on, elsewhere.
    pub(crate) fn hand_over(&mut self, id: &str) -> Option<WorkerRecord> {
        let emit = std::mem::replace(&mut self.emit, false);
        let rec = self.remove_for(id, Removal::Unregistered);
        self.emit = emit;
        if let Some(r) = &rec {
            self.tasks_completed = self.tasks_completed.saturating_sub(r.tasks_completed);
        }
        rec
    }

    /// Removes a worker that unregistered.
    pub(crate) fn remove(&mut self, id: &str) -> Option<WorkerRecord> {
        self.remove_for(id, Removal::Unregistered)
    }

    /// Removes a worker and every index entry naming it.
    fn remove_for(&mut self, id: &str, why: Removal) -> Option<WorkerRecord> {
        let slot = self.slot_of(id)?;
        let hash = self.hasher.hash_one(id);
        let Self {
            chunks,
            ids,
            counts,
            by_service,
            listed_bytes,
            generation,
            free,
            ..
        } = self;
        let cell = &mut chunks[slot];
        let mut e = cell.entry.take()?;
        // Any ticket left in the wheel for this tenancy is now void.
        cell.serial = cell.serial.wrapping_add(1);
        Self::changed(listed_bytes, generation, &mut e);
        counts.take(&e);
        unindex(by_service, &e.rec, slot);
        if let Ok(found) = ids.find_entry(hash, |&x| x == slot) {
            found.remove();
        }
        free.push(slot);
        self.len -= 1;
        if self.emit {
            let reason = match why {
                Removal::Unregistered => "unregistered",
                Removal::Expired => "expired",
            };
            let data = serde_json::json!({ "reason": reason });
            self.outbox
                .push(worker_event(Kind::WorkerRemoved, &e.rec, &data));
        }
        Some(e.rec)
    }

    /// The events of the changes since the last call, oldest first, and
    /// the services whose coverage may have changed meanwhile (with their
    /// healthy count now). Empty (and free) when nothing happened.
    pub(crate) fn drain_events(&mut self) -> (Vec<Draft>, Vec<(String, u32)>) {
        let events = std::mem::take(&mut self.outbox);
        let mut crossed = std::mem::take(&mut self.counts.crossed);
        crossed.sort_unstable();
        crossed.dedup();
        let per = &self.counts.per_service;
        let levels = crossed
            .into_iter()
            .map(|s| {
                let n = per.get(&s).copied().unwrap_or(0);
                (s, n)
            })
            .collect();
        (events, levels)
    }

    /// Healthy workers per service on this shard, for every service with
    /// at least one (O(services)).
    pub(crate) fn service_levels(&self) -> Vec<(String, u32)> {
        let per = &self.counts.per_service;
        per.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Whether any change is waiting in [`Registry::drain_events`].
    pub(crate) fn has_events(&self) -> bool {
        !self.outbox.is_empty() || !self.counts.crossed.is_empty()
    }

    /// Applies a heartbeat. `None` when the worker is unknown; otherwise
    /// whether the change matters to routing (the worker became or stopped
    /// being routable, or changed the models it has loaded), which other
    /// shards' cached candidate lists must hear about at once.
    pub fn heartbeat(
        &mut self,
        hb: HeartbeatRequest,
        now: Instant,
        wall: SystemTime,
    ) -> Option<bool> {
        let slot = self.slot_of(&hb.worker_id)?;
        let Self {
            chunks,
            counts,
            listed_bytes,
            generation,
            ..
        } = self;
        let cell = &mut chunks[slot];
        let e = cell.entry.as_mut()?;
        Self::changed(listed_bytes, generation, e);
        let (was_fresh, was_healthy) = (e.fresh, e.healthy);
        let status = hb
            .status
            .map_or(Cow::Borrowed("healthy"), crate::model::worker::status_of);
        let same_status = was_fresh && e.rec.state.status == status;
        let from = (!same_status && self.emit).then(|| label(e).to_string());
        // Same status while fresh means the same verdict, so only the
        // load part of the counts can change: take it away, add it back.
        let t = (e.rec.tier as usize).min(4);
        if !same_status {
            counts.status_and_tier(e, false);
        } else if was_healthy {
            counts.tier_load_micros[t] -= load_micros(e.rec.state.current_load);
        }
        let rec = &mut e.rec;
        rec.last_seen = now;
        rec.last_heartbeat_at = wall;
        let st = &mut rec.state;
        st.status = status;
        if let Some(v) = hb.current_load {
            st.current_load = v;
        }
        if let Some(v) = hb.available_memory {
            st.available_memory = Some(v);
        }
        let mut models_changed = false;
        if let Some(v) = hb.loaded_models {
            models_changed = st.loaded_models != v;
            st.loaded_models = v;
        }
        if let Some(v) = hb.active_requests {
            st.active_requests = v;
        }
        if let Some(v) = hb.gpu_utilization {
            st.gpu_utilization = Some(v);
        }
        if let Some(v) = hb.services_status {
            st.services_status = Some(v);
        }
        if let Some(v) = hb.specialization {
            st.specialization = Some(v);
        }
        e.fresh = true;
        e.healthy = !e.rec.reports_down();
        if !same_status {
            counts.status_and_tier(e, true);
        } else if was_healthy {
            counts.tier_load_micros[t] += load_micros(e.rec.state.current_load);
        }
        if was_healthy != e.healthy {
            counts.services(&e.rec, e.healthy);
        }
        if let Some(from) = from {
            self.outbox.extend(state_event(&e.rec, &from, label(e)));
        }
        if models_changed && self.emit {
            self.outbox.push(worker_news(Kind::WorkerUpdated, &e.rec));
        }
        let routing = was_healthy != e.healthy || (e.healthy && models_changed);
        if !was_fresh {
            cell.serial = cell.serial.wrapping_add(1);
            self.schedule(slot, None);
        }
        Some(routing)
    }

    /// Appends the healthy-listing JSON of every healthy worker (of
    /// `service`, when given) to `out`, comma-separated, and calls `seen`
    /// with each such record and its JSON. Returns how many were written
    /// and until when the result stays true without a mutation (the moment
    /// the first of them goes stale).
    pub fn write_healthy(
        &mut self,
        service: Option<&str>,
        now: Instant,
        coordinator_url: &str,
        out: &mut Vec<u8>,
        mut seen: impl FnMut(&WorkerRecord, &[u8]),
    ) -> (usize, Option<Instant>) {
        let slots: Vec<Slot> = match service {
            Some(s) => self
                .by_service
                .get(s)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let live = self.live;
        let mut valid_until: Option<Instant> = None;
        let mut n = 0;
        let mut scratch = Vec::new();
        let Self {
            chunks,
            listed_bytes,
            ..
        } = self;
        let mut emit = |e: &mut Entry, out: &mut Vec<u8>| {
            let w = &e.rec;
            // `e.healthy` is kept on every mutation (fresh, not reporting
            // down, not drained) and cleared by the sweep: only the time
            // since the last heartbeat is left to look at, not the status
            // strings of every listed worker.
            if !e.healthy || w.age(now) > live.heartbeat_timeout {
                return;
            }
            let stale_at = w.last_seen + live.heartbeat_timeout;
            if valid_until.is_none_or(|v| stale_at < v) {
                valid_until = Some(stale_at);
            }
            if n > 0 {
                out.push(b',');
            }
            let json: &[u8] = match &e.listed {
                Some(b) => b,
                None => {
                    scratch.clear();
                    w.write_json(&mut scratch, now, &live, false, coordinator_url);
                    if *listed_bytes + scratch.len() <= LISTED_BUDGET {
                        *listed_bytes += scratch.len();
                        e.listed = Some(scratch.as_slice().into());
                        e.listed.as_deref().unwrap_or_default()
                    } else {
                        &scratch
                    }
                }
            };
            out.extend_from_slice(json);
            seen(&e.rec, json);
            n += 1;
        };
        match service {
            Some(_) => {
                for s in slots {
                    if let Some(e) = chunks[s].entry.as_mut() {
                        emit(e, out);
                    }
                }
            }
            None => {
                for cell in chunks.iter_mut().flatten() {
                    if let Some(e) = cell.entry.as_mut() {
                        emit(e, out);
                    }
                }
            }
        }
        (n, valid_until)
    }

    /// Counts a completed task; false when the worker is unknown.
    /// Drains (or undrains) worker `id`: it stops (or starts again)
    /// counting as healthy, so routing, the healthy lists, coverage and
    /// task leasing leave it out; its in-flight work is untouched. None
    /// when unknown, else whether routing must be refreshed.
    pub(crate) fn set_drained(&mut self, id: &str, drained: bool) -> Option<bool> {
        let slot = self.slot_of(id)?;
        let Self {
            chunks,
            counts,
            listed_bytes,
            generation,
            ..
        } = self;
        let e = chunks[slot].entry.as_mut()?;
        if e.rec.drained == drained {
            return Some(false);
        }
        Self::changed(listed_bytes, generation, e);
        let was_healthy = e.healthy;
        let from = self.emit.then(|| label(e).to_string());
        counts.status_and_tier(e, false);
        e.rec.drained = drained;
        e.healthy = e.fresh && !e.rec.reports_down();
        counts.status_and_tier(e, true);
        if was_healthy != e.healthy {
            counts.services(&e.rec, e.healthy);
        }
        if let Some(from) = from {
            self.outbox.extend(state_event(&e.rec, &from, label(e)));
        }
        Some(was_healthy != e.healthy)
    }

    pub(crate) fn complete_task(&mut self, id: &str) -> bool {
        let Some(slot) = self.slot_of(id) else {
            return false;
        };
        let Self {
            chunks,
            listed_bytes,
            generation,
            tasks_completed,
            ..
        } = self;
        match chunks[slot].entry.as_mut() {
            Some(e) => {
                Self::changed(listed_bytes, generation, e);
                e.rec.tasks_completed += 1;
                *tasks_completed += 1;
                true
            }
            None => false,
        }
    }

    /// Entries in the deadline wheel.
    #[cfg(test)]
    pub(crate) fn queued_deadlines(&self) -> usize {
        self.wheel.len()
    }
}

fn index(by_service: &mut HashMap<String, BTreeSet<Slot>, Hasher>, rec: &WorkerRecord, slot: Slot) {
    for key in rec.index_keys() {
        match by_service.get_mut(key) {
            Some(set) => {
                set.insert(slot);
            }
            None => {
                by_service.insert(key.to_string(), BTreeSet::from([slot]));
            }
        }
    }
}

fn unindex(
    by_service: &mut HashMap<String, BTreeSet<Slot>, Hasher>,
    rec: &WorkerRecord,
    slot: Slot,
) {
    for key in rec.index_keys() {
        if let Some(set) = by_service.get_mut(key) {
            set.remove(&slot);
            if set.is_empty() {
                by_service.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
