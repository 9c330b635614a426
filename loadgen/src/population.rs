//! `--population N`: registers N background workers before any scenario,
//! so the scenario runs against a registry of realistic size. It owns the
//! bulk registration loop and its report (count, seconds, registrations/s,
//! errors by kind).
//!
//! The workers get ids of their own (`<prefix>-pop-000000..`), apart from
//! the `--workers` ids a scenario drives, and the same agent bodies every
//! other registration sends (`scenario::register_body`: gpu, cpu, cpu,
//! size-only). Throughput comes from many keep-alive connections per
//! thread, driven with non-blocking sockets and `ppoll`, one registration
//! in flight per connection (the HTTP client does not pipeline); the
//! bodies are built as they are sent, so a million workers do not sit in
//! memory as bytes first.
//!
//! It must not hang and must not hide failures: a failed registration is
//! counted by kind and never retried (its id stays unregistered), a run
//! whose registrations keep failing stops early ([`GIVE_UP_AFTER`] in a
//! row: the server is down or full), and the whole population never takes
//! longer than `--population-timeout`.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::driver::{connect, cpu_for, pin, status_kind};
use crate::http::{build_request, ResponseReader};
use crate::scenario::{register_body, worker_id};
use crate::schedule::split_connections;

/// Default keep-alive connections: enough to keep a shard's queue full
/// (measured: one pinned shard takes ~7k registrations/s at 64).
pub const DEFAULT_CONNECTIONS: usize = 64;
/// Most connections: stays well inside the common 1,024 open-file limit
/// and the server's per-shard connection cap.
pub const MAX_CONNECTIONS: usize = 512;
/// Most workers one run may ask for (ten times the server's default
/// `--max-workers`): a typo must not become an hour of registrations.
pub const MAX_POPULATION: usize = 10_000_000;
/// Failures in a row (no success between them) after which the population
/// stops: the server refuses connections or is full (503).
pub const GIVE_UP_AFTER: u64 = 1_000;
/// A connection that failed to connect waits this long before the next
/// attempt, so a refused port is not hammered in a spin.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// The id prefix of the population for a run's `--prefix`.
pub fn id_prefix(prefix: &str) -> String {
    format!("{prefix}-pop")
}

/// `--population-connections` as used: at least 1, at most
/// [`MAX_CONNECTIONS`], and never more than there are workers to register.
pub fn clamp_connections(asked: usize, workers: usize) -> usize {
    asked.clamp(1, MAX_CONNECTIONS).min(workers.max(1))
}

/// What to register, and where.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub host: String,
    /// The run's `--prefix`; the population's ids are `id_prefix(prefix)`.
    pub prefix: String,
    pub workers: usize,
    /// Already clamped (`clamp_connections`).
    pub connections: usize,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    /// The whole population's time limit.
    pub timeout: Duration,
    /// One registration's time limit (`--timeout`).
    pub request_timeout: Duration,
}

/// What one thread (or, merged, the whole population) counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Registrations answered 2xx.
    pub registered: u64,
    /// Failures by kind: `connect`, `timeout`, `io`, `parse`,
    /// `status_<code>`, `unfinished` (in flight when the population
    /// stopped).
    pub errors: BTreeMap<String, u64>,
}

impl Counts {
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn merge(&mut self, o: &Counts) {
        self.registered += o.registered;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Why a population stopped before every worker was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Timeout,
    GaveUp,
}

/// The population's report (text line and the `population` object of
/// `--json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Population {
    /// Workers asked for (`--population`).
    pub requested: u64,
    /// Registrations the server answered 2xx.
    pub registered: u64,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    /// From the first connection to the last answer.
    pub seconds: f64,
    /// Successful registrations per second.
    pub per_second: f64,
    pub connections: usize,
    pub threads: usize,
    /// The first id (`<prefix>-pop-000000`); the others count up.
    pub first_id: String,
    /// Why it stopped early, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl Population {
    /// The report of `counts` gathered in `took`.
    pub fn new(plan: &Plan, counts: &Counts, took: Duration, stop: Option<Stop>) -> Self {
        let seconds = took.as_secs_f64();
        Self {
            requested: plan.workers as u64,
            registered: counts.registered,
            errors: counts.errors.clone(),
            errors_total: counts.errors_total(),
            seconds,
            per_second: if seconds > 0.0 {
                counts.registered as f64 / seconds
            } else {
                0.0
            },
            connections: plan.connections,
            threads: plan.threads,
            first_id: worker_id(&id_prefix(&plan.prefix), 0),
            stopped: stop.map(|s| match s {
                Stop::Timeout => format!(
                    "--population-timeout ({:.0} s) reached",
                    plan.timeout.as_secs_f64()
                ),
                Stop::GaveUp => format!("{GIVE_UP_AFTER} registrations in a row failed"),
            }),
        }
    }

    /// One line for the text report.
    pub fn line(&self) -> String {
        let errors = if self.errors.is_empty() {
            "0 errors".to_string()
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("{} errors ({})", self.errors_total, list.join(", "))
        };
        let stopped = self
            .stopped
            .as_deref()
            .map(|s| format!("; stopped early: {s}"))
            .unwrap_or_default();
        format!(
            "population:  {} of {} workers registered ({}..) in {:.1} s: {:.0} registrations/s \
             over {} connections, {errors}{stopped}\n",
            self.registered,
            self.requested,
            self.first_id,
            self.seconds,
            self.per_second,
            self.connections,
        )
    }

    /// A `--check` failure when not every worker was registered.
    pub fn shortfall(&self) -> Option<String> {
        (self.registered < self.requested).then(|| {
            format!(
                "population: {} of {} workers registered ({} errors{})",
                self.registered,
                self.requested,
                self.errors_total,
                self.stopped
                    .as_deref()
                    .map(|s| format!("; {s}"))
                    .unwrap_or_default()
            )
        })
    }
}

/// State the population threads share: the next worker index to hand
/// out, the run of failures, and the stop flag.
struct Shared {
    next: AtomicUsize,
    workers: usize,
    failures_in_a_row: AtomicU64,
    gave_up: AtomicBool,
    deadline: Instant,
}

impl Shared {
    /// The next worker index, or None when all are handed out.
    fn take(&self) -> Option<usize> {
        if self.gave_up.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.workers).then_some(i)
    }

    fn exhausted(&self) -> bool {
        self.gave_up.load(Ordering::Relaxed) || self.next.load(Ordering::Relaxed) >= self.workers
    }

    fn outcome(&self, counts: &mut Counts, result: Result<(), &str>) {
        match result {
            Ok(()) => {
                counts.registered += 1;
                self.failures_in_a_row.store(0, Ordering::Relaxed);
            }
            Err(kind) => {
                counts.error(kind);
                if self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= GIVE_UP_AFTER {
                    self.gave_up.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Registers the population; returns its report. Never longer than
/// `plan.timeout` plus one request timeout.
pub fn register(plan: &Plan) -> Population {
    let started = Instant::now();
    let shared = Shared {
        next: AtomicUsize::new(0),
        workers: plan.workers,
        failures_in_a_row: AtomicU64::new(0),
        gave_up: AtomicBool::new(false),
        deadline: started + plan.timeout,
    };
    let groups = split_connections(plan.connections, plan.threads.clamp(1, plan.connections));
    let mut counts = Counts::default();
    std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter()
            .enumerate()
            .map(|(t, conns)| {
                let shared = &shared;
                let cpu = cpu_for(plan.cpus.as_deref(), t);
                let n = conns.len();
                std::thread::Builder::new()
                    .name(format!("loadgen-pop-{t}"))
                    .spawn_scoped(s, move || run_thread(plan, shared, n, cpu))
                    .expect("spawn population thread")
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(c) => counts.merge(&c),
                Err(_) => counts.error("thread_panicked"),
            }
        }
    });
    let took = started.elapsed();
    let stop = if shared.gave_up.load(Ordering::Relaxed) {
        Some(Stop::GaveUp)
    } else if shared.next.load(Ordering::Relaxed) < plan.workers
        || counts.errors.contains_key("unfinished")
    {
        Some(Stop::Timeout)
    } else {
        None
    };
    Population::new(plan, &counts, took, stop)
}

/// One keep-alive connection and the registration it has in flight.
struct Slot {
    stream: Option<TcpStream>,
    request: Vec<u8>,
    written: usize,
    busy: bool,
    sent: Instant,
    rbuf: Vec<u8>,
    reader: ResponseReader,
    /// The last poll said the socket is ready.
    ready: bool,
    /// No new connection before this (after a connect error).
    retry_at: Option<Instant>,
}

impl Slot {
    fn new() -> Self {
        Self {
            stream: None,
            request: Vec::with_capacity(1024),
            written: 0,
            busy: false,
            sent: Instant::now(),
            rbuf: Vec::with_capacity(4096),
            reader: ResponseReader::default(),
            ready: false,
            retry_at: None,
        }
    }

    /// Forgets the connection (after an error or a `Connection: close`).
    fn drop_stream(&mut self) {
        self.stream = None;
        self.rbuf.clear();
        self.reader.reset();
        self.ready = false;
    }
}

/// Drives `conns` connections until every worker is handed out and
/// answered, the population gave up, or the deadline passed.
fn run_thread(plan: &Plan, shared: &Shared, conns: usize, cpu: Option<usize>) -> Counts {
    pin(cpu);
    let mut slots: Vec<Slot> = (0..conns).map(|_| Slot::new()).collect();
    let mut counts = Counts::default();
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(conns);
    let mut poll_map: Vec<usize> = Vec::with_capacity(conns);
    let mut scratch = vec![0u8; 16 << 10];
    loop {
        let now = Instant::now();
        if now >= shared.deadline {
            for s in slots.iter_mut().filter(|s| s.busy) {
                s.busy = false;
                // Not an answer either way: neither a success nor a
                // failure of the server's, so it does not feed give-up.
                counts.error("unfinished");
            }
            break;
        }
        let mut wake = shared.deadline;
        let mut waiting = false;
        pollfds.clear();
        poll_map.clear();
        for (i, s) in slots.iter_mut().enumerate() {
            if s.busy {
                step(s, plan, shared, now, &mut counts, &mut scratch);
            }
            if !s.busy {
                match s.retry_at {
                    Some(at) if at > now => {
                        if !shared.exhausted() {
                            wake = wake.min(at);
                            waiting = true;
                        }
                    }
                    _ => {
                        if let Some(n) = shared.take() {
                            start(s, plan, shared, n, &mut counts);
                            if s.busy {
                                step(s, plan, shared, now, &mut counts, &mut scratch);
                            } else {
                                // Lost to a connect error: look again soon.
                                waiting = true;
                                wake = wake.min(now + RECONNECT_PAUSE);
                            }
                        }
                    }
                }
            }
            if s.busy {
                if let Some(stream) = &s.stream {
                    let events = if s.written < s.request.len() {
                        libc::POLLOUT
                    } else {
                        libc::POLLIN
                    };
                    pollfds.push(libc::pollfd {
                        fd: stream.as_raw_fd(),
                        events,
                        revents: 0,
                    });
                    poll_map.push(i);
                    wake = wake.min(s.sent + plan.request_timeout);
                }
            }
        }
        if pollfds.is_empty() && !waiting && shared.exhausted() {
            break;
        }
        let now = Instant::now();
        if wake <= now {
            continue;
        }
        let wait = wake - now;
        let n = crate::driver::ppoll_for(&mut pollfds, wait);
        if n > 0 {
            for (pfd, &i) in pollfds.iter().zip(&poll_map) {
                if pfd.revents != 0 {
                    slots[i].ready = true;
                }
            }
        }
    }
    counts
}

/// Builds worker `n`'s registration and puts it in flight on `s`,
/// connecting first when needed (a failed connect counts as that
/// registration's failure).
fn start(s: &mut Slot, plan: &Plan, shared: &Shared, n: usize, counts: &mut Counts) {
    if s.stream.is_none() {
        match connect(plan.addr, plan.request_timeout) {
            Ok(st) => s.stream = Some(st),
            Err(_) => {
                shared.outcome(counts, Err("connect"));
                s.retry_at = Some(Instant::now() + RECONNECT_PAUSE);
                return;
            }
        }
    }
    s.retry_at = None;
    let id = worker_id(&id_prefix(&plan.prefix), n);
    s.request = build_request(
        "POST",
        &plan.host,
        "/api/worker/register",
        Some(&register_body(&id, n)),
    );
    s.written = 0;
    s.busy = true;
    s.sent = Instant::now();
}

/// Drives the registration in flight on `s`; records its outcome when it
/// is answered, fails, or outlives the request timeout.
fn step(
    s: &mut Slot,
    plan: &Plan,
    shared: &Shared,
    now: Instant,
    counts: &mut Counts,
    scratch: &mut [u8],
) {
    let result = match drive(s, scratch) {
        Ok(Some(status)) if (200..300).contains(&status) => Ok(()),
        Ok(Some(status)) => Err(status_kind(status)),
        Ok(None) if now.saturating_duration_since(s.sent) > plan.request_timeout => {
            s.drop_stream();
            Err("timeout")
        }
        Ok(None) => return,
        Err(kind) => {
            s.drop_stream();
            Err(kind)
        }
    };
    s.busy = false;
    shared.outcome(counts, result);
}

/// Writes what is left of the request and reads what arrived:
/// `Ok(Some(status))` once the answer is complete, `Ok(None)` while it is
/// not, `Err(kind)` when the connection is unusable.
fn drive(s: &mut Slot, scratch: &mut [u8]) -> Result<Option<u16>, &'static str> {
    let Some(stream) = s.stream.as_mut() else {
        return Err("io");
    };
    while s.written < s.request.len() {
        match stream.write(&s.request[s.written..]) {
            Ok(0) => return Err("io"),
            Ok(n) => s.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err("io"),
        }
    }
    // Right after a write the answer is not there yet: read only when the
    // last poll said so, which saves a syscall per registration.
    if s.written < s.request.len() || !s.ready {
        return Ok(None);
    }
    s.ready = false;
    loop {
        let (n, eof) = match stream.read(scratch) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err("io"),
        };
        s.rbuf.extend_from_slice(&scratch[..n]);
        match s.reader.poll(&s.rbuf, eof) {
            Ok(Some(done)) => {
                s.rbuf.clear();
                s.reader.reset();
                if done.close {
                    s.drop_stream();
                }
                return Ok(Some(done.status));
            }
            Ok(None) if eof => return Err("io"),
            Ok(None) => {}
            Err(_) => return Err("parse"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(workers: usize) -> Plan {
        Plan {
            addr: "127.0.0.1:1".parse().unwrap(),
            host: "127.0.0.1:1".into(),
            prefix: "lg".into(),
            workers,
            connections: clamp_connections(64, workers),
            threads: 1,
            cpus: None,
            timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn connections_are_clamped() {
        assert_eq!(clamp_connections(0, 1000), 1);
        assert_eq!(clamp_connections(64, 1000), 64);
        assert_eq!(clamp_connections(100_000, 1_000_000), MAX_CONNECTIONS);
        // Never more connections than workers to register.
        assert_eq!(clamp_connections(64, 10), 10);
        assert_eq!(clamp_connections(64, 0), 1);
    }

    #[test]
    fn ids_are_apart_from_the_scenarios() {
        assert_eq!(worker_id(&id_prefix("lg"), 7), "lg-pop-000007");
        // The scenario's own workers and registrations use other ids.
        assert_ne!(worker_id(&id_prefix("lg"), 7), worker_id("lg", 7));
        assert_ne!(worker_id(&id_prefix("lg"), 7), worker_id("lg-r", 7));
    }

    #[test]
    fn indices_are_handed_out_once_and_give_up_stops_them() {
        let s = Shared {
            next: AtomicUsize::new(0),
            workers: 3,
            failures_in_a_row: AtomicU64::new(0),
            gave_up: AtomicBool::new(false),
            deadline: Instant::now(),
        };
        assert_eq!(
            (0..5).map(|_| s.take()).collect::<Vec<_>>(),
            vec![Some(0), Some(1), Some(2), None, None]
        );
        assert!(s.exhausted());

        let s = Shared {
            next: AtomicUsize::new(0),
            workers: 1_000_000,
            failures_in_a_row: AtomicU64::new(0),
            gave_up: AtomicBool::new(false),
            deadline: Instant::now(),
        };
        let mut c = Counts::default();
        // Failures separated by a success never add up to giving up.
        for _ in 0..GIVE_UP_AFTER - 1 {
            s.outcome(&mut c, Err("status_503"));
        }
        s.outcome(&mut c, Ok(()));
        for _ in 0..GIVE_UP_AFTER - 1 {
            s.outcome(&mut c, Err("connect"));
        }
        assert!(s.take().is_some());
        // One more in a row, and no index is handed out any more.
        s.outcome(&mut c, Err("connect"));
        assert_eq!(s.take(), None);
        assert!(s.exhausted());
        assert_eq!(c.registered, 1);
        assert_eq!(c.errors["status_503"], GIVE_UP_AFTER - 1);
        assert_eq!(c.errors["connect"], GIVE_UP_AFTER);
    }

    #[test]
    fn counts_merge() {
        let mut a = Counts {
            registered: 5,
            ..Counts::default()
        };
        a.error("timeout");
        let mut b = Counts {
            registered: 7,
            ..Counts::default()
        };
        b.error("timeout");
        b.error("status_503");
        a.merge(&b);
        assert_eq!(a.registered, 12);
        assert_eq!(a.errors_total(), 3);
        assert_eq!(a.errors["timeout"], 2);
    }

    #[test]
    fn report_line_json_and_shortfall() {
        let p = plan(200_000);
        let c = Counts {
            registered: 200_000,
            errors: BTreeMap::new(),
        };
        let r = Population::new(&p, &c, Duration::from_secs(25), None);
        assert_eq!(r.per_second, 8_000.0);
        assert_eq!(r.first_id, "lg-pop-000000");
        assert!(r.shortfall().is_none());
        let line = r.line();
        assert!(
            line.contains("200000 of 200000 workers registered (lg-pop-000000..) in 25.0 s: 8000 registrations/s over 64 connections, 0 errors"),
            "{line}"
        );
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["registered"], 200_000);
        assert_eq!(j["errors_total"], 0);
        assert!(j.get("stopped").is_none());

        let mut c = Counts {
            registered: 900,
            errors: BTreeMap::new(),
        };
        c.error("status_503");
        let r = Population::new(&plan(1000), &c, Duration::ZERO, Some(Stop::GaveUp));
        assert_eq!(r.per_second, 0.0);
        assert!(
            r.line().contains(
                "1 errors (status_503=1); stopped early: 1000 registrations in a row failed"
            ),
            "{}",
            r.line()
        );
        let f = r.shortfall().unwrap();
        assert!(
            f.starts_with("population: 900 of 1000 workers registered (1 errors; "),
            "{f}"
        );
    }
}
