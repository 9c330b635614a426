//! The `tasks` scenario: task throughput, submit -> pull -> complete, and a
//! check that nothing was lost.
//!
//! Stateful (a completion needs the id a pull returned), so it does not fit
//! the replay-bytes driver; it has its own small driver of blocking
//! connections, one thread each:
//!
//! - `--connections` submitters `POST /api/tasks` on the open-loop schedule
//!   (`schedule.rs`, total `--rate`); the ack latency is measured from the
//!   due time, like every open-loop figure here;
//! - `--task-workers` registered pseudo-workers loop
//!   `GET /api/worker/tasks?worker_id=..&max=--task-batch&wait=1` and
//!   `POST /api/worker/task-complete` for every task pulled.
//!
//! Each task's payload carries its due time, so a worker measures
//! end-to-end latency (due -> completion acknowledged) with no state shared
//! between threads but two counters. Submissions stop at the end of the
//! window; the workers then drain what is left (bounded by `DRAIN`) and
//! stop. The run is checked against the server: its task counters must
//! show as many completions as submissions, and its admin counts no task
//! left queued, leased, failed or dead; otherwise the exit status is 1.
//!
//! This file owns the threads, the verification and the report; request
//! bytes, the schedule, histograms and the table come from the shared
//! modules.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};

use crate::check::Bound;
use crate::client::{BlockingConn, Heartbeats};
use crate::driver::{cpu_for, pin, status_kind};
use crate::http::build_request;
use crate::population::Population;
use crate::report::{self, new_histogram, us, Latency, Meta, Report, Tally};
use crate::schedule::ConnSchedule;
use crate::{check, fail, finish, metrics_text, open_loop_rate, scenario, Cli, TaskTarget};

/// How long the pseudo-workers may take, after the last submission, to
/// complete what is still queued before the run stops anyway.
const DRAIN: Duration = Duration::from_secs(10);
/// Long-poll of each pull, seconds: a worker with nothing to do waits on
/// the server, not in a loop, and notices the end of the run within it.
const PULL_WAIT_S: u32 = 1;
/// The server's bound on `max` per pull.
const MAX_BATCH: usize = 1000;

/// Counters shared by all threads of a run (client side only).
#[derive(Default)]
struct Progress {
    submitted: AtomicU64,
    completed: AtomicU64,
    stop: AtomicBool,
}

/// What every thread needs to know about the run.
#[derive(Clone)]
struct Run {
    addr: SocketAddr,
    host: String,
    t0: Instant,
    /// Measurement window, as offsets from t0.
    window: (Duration, Duration),
    progress: Arc<Progress>,
}

impl Run {
    fn measured(&self, offset: Duration) -> bool {
        offset >= self.window.0 && offset < self.window.1
    }
}

/// One submitter's results: `latency` is the submit ack latency.
fn submit_loop(
    run: Run,
    sched: ConnSchedule,
    conn_index: usize,
    conns: usize,
    target: Target,
) -> Tally {
    let mut tally = Tally {
        planned: sched.count_before(run.window.1) - sched.count_before(run.window.0),
        ..Tally::default()
    };
    let mut conn = BlockingConn::new(run.addr);
    for i in 0u64.. {
        let offset = sched.due(i);
        if offset >= run.window.1 {
            break;
        }
        // The request is built before its due time, so formatting it is
        // not part of the measured latency.
        let n = i as usize * conns + conn_index;
        let mut body = json!({
            "type": "loadgen",
            "payload": {"n": n, "due_us": offset.as_micros() as u64},
        });
        match &target {
            Target::Service(s) => body["service"] = json!(s),
            Target::Workers(ws) => body["worker_id"] = json!(ws[n % ws.len()]),
        }
        let bytes = serde_json::to_vec(&body).expect("JSON value serialises");
        let req = build_request("POST", &run.host, "/api/tasks", Some(&bytes));
        let due = run.t0 + offset;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let measured = run.measured(offset);
        let sent = Instant::now();
        if measured {
            tally.send_lag.saturating_record(us(sent - due));
        }
        // Only the ack's status matters; its body is not parsed.
        match conn.call(&req) {
            Ok((201, _)) => {
                run.progress.submitted.fetch_add(1, Ordering::Relaxed);
                if measured {
                    tally.latency.saturating_record(us(due.elapsed()));
                    tally.ok += 1;
                }
            }
            Ok((s, _)) => tally.error(&format!("submit_{}", status_kind(s))),
            Err(_) => tally.error("submit_io"),
        }
    }
    tally
}

/// One pseudo-worker's results.
struct WorkerTally {
    /// `latency`: due -> completion acknowledged, for tasks due in the
    /// window; `ok`: those tasks; `errors`: pulls and completions.
    tally: Tally,
    complete_ack: Histogram<u64>,
    /// Completions acknowledged inside the window (throughput).
    completed_in_window: u64,
    pulls: u64,
    empty_pulls: u64,
}

fn worker_loop(run: Run, worker_id: String, batch: usize) -> WorkerTally {
    let mut out = WorkerTally {
        tally: Tally::default(),
        complete_ack: new_histogram(),
        completed_in_window: 0,
        pulls: 0,
        empty_pulls: 0,
    };
    let mut conn = BlockingConn::new(run.addr);
    let pull = build_request(
        "GET",
        &run.host,
        &format!("/api/worker/tasks?worker_id={worker_id}&max={batch}&wait={PULL_WAIT_S}"),
        None,
    );
    // Checked before each pull, never between a pull and its completions:
    // a task this worker leased is always completed.
    while !run.progress.stop.load(Ordering::Relaxed) {
        let tasks = match conn.call(&pull) {
            Ok((200, body)) => match serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|mut v| v.get_mut("tasks").map(Value::take))
            {
                Some(Value::Array(t)) => t,
                _ => {
                    out.tally.error("pull_parse");
                    continue;
                }
            },
            other => {
                out.tally.error(&match other {
                    Ok((s, _)) => format!("pull_{}", status_kind(s)),
                    Err(_) => "pull_io".into(),
                });
                // Do not spin on a server that keeps refusing.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        out.pulls += 1;
        if tasks.is_empty() {
            out.empty_pulls += 1;
        }
        for t in tasks {
            complete(&run, &mut conn, &worker_id, &t, &mut out);
        }
    }
    out
}

fn complete(
    run: &Run,
    conn: &mut BlockingConn,
    worker_id: &str,
    task: &Value,
    out: &mut WorkerTally,
) {
    let Some(id) = task["task_id"].as_str() else {
        out.tally.error("pull_parse");
        return;
    };
    let body = json!({"worker_id": worker_id, "task_id": id, "result": {"ok": true}});
    let bytes = serde_json::to_vec(&body).expect("JSON value serialises");
    let sent = Instant::now();
    match conn.json("POST", &run.host, "/api/worker/task-complete", Some(&bytes)) {
        Ok((200, v)) if v["state"] == "completed" => {
            let done = Instant::now();
            run.progress.completed.fetch_add(1, Ordering::Relaxed);
            out.complete_ack.saturating_record(us(done - sent));
            if run.measured(done.saturating_duration_since(run.t0)) {
                out.completed_in_window += 1;
            }
            let due = task["payload"]["due_us"]
                .as_u64()
                .map(Duration::from_micros);
            if let Some(due) = due.filter(|d| run.measured(*d)) {
                out.tally
                    .latency
                    .saturating_record(us(done.saturating_duration_since(run.t0 + due)));
                out.tally.ok += 1;
            }
        }
        Ok((200, _)) => out.tally.error("complete_not_completed"),
        Ok((s, _)) => out.tally.error(&format!("complete_{}", status_kind(s))),
        Err(_) => out.tally.error("complete_io"),
    }
}

#[derive(Clone)]
enum Target {
    Service(String),
    Workers(Arc<Vec<String>>),
}

/// The server's view of tasks: event counters from `/metrics` (never
/// reduced) and the admin counts by state (tasks held now; finished tasks
/// leave them when evicted by the retention limit, 10,000 per shard).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
struct ServerCounts {
    submitted_events: u64,
    completed_events: u64,
    queued: u64,
    leased: u64,
    completed: u64,
    failed: u64,
    dead: u64,
}

impl ServerCounts {
    fn take(addr: SocketAddr, host: &str) -> Result<Self, String> {
        let text = metrics_text(addr, host).ok_or("cannot read /metrics")?;
        let event = |e: &str| {
            report::parse_counter(
                &text,
                &format!("coordinator_task_events_total{{event=\"{e}\"}}"),
            )
            .map(|v| v as u64)
            .ok_or_else(|| format!("no task event counter {e:?} in /metrics"))
        };
        let admin =
            BlockingConn::new(addr).expect(200, "GET", host, "/api/admin/tasks?limit=0", None)?;
        let count = |s: &str| {
            admin["counts"][s]
                .as_u64()
                .ok_or_else(|| format!("no {s:?} count in /api/admin/tasks: {admin}"))
        };
        Ok(Self {
            submitted_events: event("submitted")?,
            completed_events: event("completed")?,
            queued: count("queued")?,
            leased: count("leased")?,
            completed: count("completed")?,
            failed: count("failed")?,
            dead: count("dead")?,
        })
    }
}

/// Everything wrong with a run, judged by the server's counts before and
/// after it and what the client was told (acknowledged submits and
/// completions). Empty: every task submitted was completed exactly as
/// acknowledged and nothing is left behind.
fn verify(
    before: &ServerCounts,
    after: &ServerCounts,
    submits: u64,
    completes: u64,
) -> Vec<String> {
    let d = |a: u64, b: u64| a as i64 - b as i64;
    let submitted = d(after.submitted_events, before.submitted_events);
    let completed = d(after.completed_events, before.completed_events);
    let mut out = Vec::new();
    if completed != submitted {
        out.push(format!(
            "server counted {submitted} tasks submitted but {completed} completed"
        ));
    }
    if submitted != submits as i64 {
        out.push(format!(
            "server counted {submitted} tasks submitted, loadgen got {submits} acknowledgements"
        ));
    }
    if completes != submits {
        out.push(format!(
            "loadgen got {submits} submits but {completes} completions acknowledged"
        ));
    }
    for (name, a, b) in [
        ("queued", after.queued, before.queued),
        ("leased", after.leased, before.leased),
        ("failed", after.failed, before.failed),
        ("dead", after.dead, before.dead),
    ] {
        if a != b {
            out.push(format!(
                "admin counts {name} went from {b} to {a}: tasks left behind"
            ));
        }
    }
    out
}

#[derive(Serialize)]
struct Verification {
    ok: bool,
    problems: Vec<String>,
    before: ServerCounts,
    after: ServerCounts,
}

#[derive(Serialize)]
struct TasksReport {
    scenario: &'static str,
    /// `service:<name>` or `workers` (round robin).
    target: String,
    task_workers: usize,
    batch: usize,
    /// Tasks due in the window: latency is due -> completion acknowledged,
    /// `achieved_rate` is those tasks completed per second of the window.
    tasks: Report,
    submit_ack: Latency,
    complete_ack: Latency,
    /// Completions acknowledged inside the window, per second.
    completed_per_s: f64,
    /// Whole run, warm-up and drain included.
    submitted: u64,
    completed: u64,
    pulls: u64,
    empty_pulls: u64,
    verification: Verification,
}

fn latency_line(name: &str, l: &Latency) -> String {
    format!(
        "{name:<17} p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us\n",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    )
}

/// What a task load needs: where, how fast, by whom, and when.
pub struct TaskSpec {
    pub addr: SocketAddr,
    pub host: String,
    pub prefix: String,
    /// Submissions per second over all submitters (open loop).
    pub rate: f64,
    pub submitters: usize,
    pub workers: usize,
    pub batch: usize,
    pub target: TaskTarget,
    /// CPUs round robin over submitters first, then workers.
    pub cpus: Option<Vec<usize>>,
    /// The first CPU slot this load takes on `cpus` (after another load's).
    pub cpu_slot: usize,
    /// Submissions are due from `t0` until `window.1`; latency is measured
    /// for tasks due inside `window`.
    pub t0: Instant,
    pub window: (Duration, Duration),
}

/// The task cycle running on its own threads: the whole `tasks` scenario,
/// or one part of `soak`. Submitters stop at the end of the window;
/// [`TaskLoad::finish`] then lets the workers drain and verifies.
pub struct TaskLoad {
    run: Run,
    target_name: String,
    submitters: Vec<std::thread::JoinHandle<Tally>>,
    workers: Vec<std::thread::JoinHandle<WorkerTally>>,
    before: ServerCounts,
    _beats: Heartbeats,
}

/// What a finished task load saw, checked against the server.
pub struct TaskOutcome {
    /// The submitters: schedule, send lag, ack latency, errors.
    pub submit: Tally,
    /// The workers: due -> completion latency and pull/complete errors.
    pub work: Tally,
    pub complete_ack: Histogram<u64>,
    pub completed_in_window: u64,
    pub pulls: u64,
    pub empty_pulls: u64,
    /// Whole run, warm-up and drain included.
    pub submitted: u64,
    pub completed: u64,
    before: ServerCounts,
    after: ServerCounts,
    /// Empty when every acknowledged task was completed and none is left.
    pub problems: Vec<String>,
}

impl TaskLoad {
    /// Registers the pseudo-workers (kept healthy by a heartbeat thread)
    /// and starts submitting and working.
    pub fn start(spec: TaskSpec) -> Result<TaskLoad, String> {
        let TaskSpec {
            addr,
            host,
            prefix,
            rate,
            submitters,
            workers: n_workers,
            batch,
            target,
            cpus,
            cpu_slot,
            t0,
            window,
        } = spec;
        let service = format!("{prefix}-tasks");
        let workers: Arc<Vec<String>> = Arc::new(
            (0..n_workers)
                .map(|i| scenario::worker_id(&format!("{prefix}-tw"), i))
                .collect(),
        );
        let mut setup = BlockingConn::new(addr);
        let mut beats = Vec::new();
        for id in workers.iter() {
            let reg = scenario::serving_register_body(id, None, &[&service], None);
            let hb = scenario::heartbeat_body(id, 0);
            setup
                .expect(200, "POST", &host, "/api/worker/register", Some(&reg))
                .and_then(|_| setup.expect(200, "POST", &host, "/api/worker/heartbeat", Some(&hb)))
                .map_err(|e| format!("registering task worker {id}: {e}"))?;
            beats.push(build_request(
                "POST",
                &host,
                "/api/worker/heartbeat",
                Some(&hb),
            ));
        }
        let beats = Heartbeats::start(addr, beats, Duration::from_secs(10));
        let before = ServerCounts::take(addr, &host)?;
        let (target, target_name) = match target {
            TaskTarget::Service => (
                Target::Service(service.clone()),
                format!("service:{service}"),
            ),
            TaskTarget::Worker => (Target::Workers(workers.clone()), "workers".to_string()),
        };
        let run = Run {
            addr,
            host,
            t0,
            window,
            progress: Arc::new(Progress::default()),
        };
        let cpus = cpus.as_deref();
        let worker_threads = workers
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let (run, id) = (run.clone(), id.clone());
                let cpu = cpu_for(cpus, cpu_slot + submitters + i);
                std::thread::Builder::new()
                    .name(format!("loadgen-tw-{i}"))
                    .spawn(move || {
                        pin(cpu);
                        worker_loop(run, id, batch)
                    })
                    .expect("spawn task worker")
            })
            .collect();
        let submit_threads = (0..submitters)
            .map(|c| {
                let (run, target) = (run.clone(), target.clone());
                let sched = ConnSchedule::new(rate, submitters, c);
                let cpu = cpu_for(cpus, cpu_slot + c);
                std::thread::Builder::new()
                    .name(format!("loadgen-submit-{c}"))
                    .spawn(move || {
                        pin(cpu);
                        submit_loop(run, sched, c, submitters, target)
                    })
                    .expect("spawn submitter")
            })
            .collect();
        Ok(TaskLoad {
            run,
            target_name,
            submitters: submit_threads,
            workers: worker_threads,
            before,
            _beats: beats,
        })
    }

    /// Tasks submitted and completed so far (acknowledged to loadgen).
    pub fn progress(&self) -> (u64, u64) {
        let p = &self.run.progress;
        (
            p.submitted.load(Ordering::Relaxed),
            p.completed.load(Ordering::Relaxed),
        )
    }

    /// Waits for the submitters (the end of the window), lets the workers
    /// complete what is left (at most `DRAIN`), stops them and checks the
    /// server's counts.
    pub fn finish(self) -> Result<TaskOutcome, String> {
        let mut submit = Tally::default();
        for h in self.submitters {
            if let Ok(t) = h.join() {
                submit.merge(&t);
            }
        }
        let p = &self.run.progress;
        let drain_end = Instant::now() + DRAIN;
        while p.completed.load(Ordering::Relaxed) < p.submitted.load(Ordering::Relaxed)
            && Instant::now() < drain_end
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        p.stop.store(true, Ordering::Relaxed);
        let mut work = Tally::default();
        let mut complete_ack = new_histogram();
        let (mut completed_in_window, mut pulls, mut empty_pulls) = (0, 0, 0);
        for h in self.workers {
            if let Ok(w) = h.join() {
                work.merge(&w.tally);
                let _ = complete_ack.add(&w.complete_ack);
                completed_in_window += w.completed_in_window;
                pulls += w.pulls;
                empty_pulls += w.empty_pulls;
            }
        }
        let (submitted, completed) = (
            p.submitted.load(Ordering::Relaxed),
            p.completed.load(Ordering::Relaxed),
        );
        let after = ServerCounts::take(self.run.addr, &self.run.host)?;
        let problems = verify(&self.before, &after, submitted, completed);
        Ok(TaskOutcome {
            submit,
            work,
            complete_ack,
            completed_in_window,
            pulls,
            empty_pulls,
            submitted,
            completed,
            before: self.before,
            after,
            problems,
        })
    }

    /// `service:<name>` or `workers`.
    pub fn target_name(&self) -> &str {
        &self.target_name
    }
}

impl TaskOutcome {
    /// One line on the server's verdict.
    pub fn verdict(&self) -> String {
        if self.problems.is_empty() {
            format!(
                "verified:         server completed {} of {} submitted, none left queued/leased/failed/dead\n",
                self.after.completed_events - self.before.completed_events,
                self.after.submitted_events - self.before.submitted_events
            )
        } else {
            format!("VERIFICATION FAILED: {}\n", self.problems.join("; "))
        }
    }
}

pub fn run(
    cli: &Cli,
    addr: SocketAddr,
    host: &str,
    cpus: Option<&[usize]>,
    bounds: Option<Vec<Bound>>,
    pop: Option<&Population>,
) -> ExitCode {
    let rate = match open_loop_rate(cli, "tasks") {
        Ok(r) => r,
        Err(code) => return code,
    };
    if cli.task_workers == 0 {
        return fail("--task-workers must be at least 1");
    }
    if !(1..=MAX_BATCH).contains(&cli.task_batch) {
        return fail(format!("--task-batch must be 1..={MAX_BATCH}"));
    }
    let load = match TaskLoad::start(TaskSpec {
        addr,
        host: host.to_string(),
        prefix: cli.prefix.clone(),
        rate,
        submitters: cli.connections,
        workers: cli.task_workers,
        batch: cli.task_batch,
        target: cli.task_target,
        cpus: cpus.map(<[usize]>::to_vec),
        cpu_slot: 0,
        t0: Instant::now() + Duration::from_millis(300),
        window: (cli.warmup, cli.warmup + cli.duration),
    }) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let target_name = load.target_name().to_string();
    let out = match load.finish() {
        Ok(o) => o,
        Err(e) => return fail(e),
    };

    // The headline report counts tasks: the submitters' schedule, send lag
    // and errors, the workers' end-to-end latency and errors.
    let submit_ack = Latency::from_hist(&out.submit.latency);
    let mut schedule_only = out.submit.clone();
    schedule_only.latency.reset();
    schedule_only.ok = 0;
    let mut work = out.work.clone();
    work.merge(&schedule_only);
    let meta = Meta {
        scenario: format!(
            "tasks (submit -> pull -> complete; target {target_name}, {} workers, batch {}; \
             latency = due -> completion acknowledged)",
            cli.task_workers, cli.task_batch
        ),
        target: host.to_string(),
        threads: cli.connections + cli.task_workers,
        connections: cli.connections,
        warmup_s: cli.warmup.as_secs_f64(),
        target_rate: Some(rate),
    };
    let tasks = report::build(meta, &work, cli.duration, None);
    let completed_per_s = out.completed_in_window as f64 / cli.duration.as_secs_f64();
    let complete_ack = Latency::from_hist(&out.complete_ack);
    let mut table = tasks.table();
    table += &latency_line("submit ack:", &submit_ack);
    table += &latency_line("complete ack:", &complete_ack);
    table += &format!(
        "throughput:       {completed_per_s:.0} tasks completed/s in the window; \
         {} submitted, {} completed in the whole run\n\
         pulls:            {} ({} empty), {:.1} tasks per non-empty pull\n",
        out.submitted,
        out.completed,
        out.pulls,
        out.empty_pulls,
        out.completed as f64 / (out.pulls - out.empty_pulls).max(1) as f64
    );
    table += &out.verdict();

    let mut failed: Option<Vec<String>> = bounds.map(|b| check::failures(&b, &tasks));
    if !out.problems.is_empty() {
        failed
            .get_or_insert_with(Vec::new)
            .extend(out.problems.iter().map(|p| format!("verification: {p}")));
    }
    let report = TasksReport {
        scenario: "tasks",
        target: target_name,
        task_workers: cli.task_workers,
        batch: cli.task_batch,
        tasks,
        submit_ack,
        complete_ack,
        completed_per_s,
        submitted: out.submitted,
        completed: out.completed,
        pulls: out.pulls,
        empty_pulls: out.empty_pulls,
        verification: Verification {
            ok: out.problems.is_empty(),
            problems: out.problems,
            before: out.before,
            after: out.after,
        },
    };
    finish(cli, &table, &report, failed, pop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(submitted: u64, completed: u64, queued: u64, leased: u64) -> ServerCounts {
        ServerCounts {
            submitted_events: submitted,
            completed_events: completed,
            queued,
            leased,
            completed,
            ..ServerCounts::default()
        }
    }

    #[test]
    fn a_clean_run_verifies() {
        let before = counts(10, 10, 0, 0);
        let after = counts(110, 110, 0, 0);
        assert!(verify(&before, &after, 100, 100).is_empty());
    }

    #[test]
    fn lost_leftover_and_unacknowledged_tasks_are_named() {
        let before = counts(0, 0, 0, 0);
        // Two tasks still queued, one leased: 97 of 100 completed.
        let p = verify(&before, &counts(100, 97, 2, 1), 100, 97);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(
            p[0].contains("100 tasks submitted but 97 completed"),
            "{p:?}"
        );
        assert!(p[1].contains("100 submits but 97 completions"), "{p:?}");
        assert!(p[2].contains("queued went from 0 to 2"), "{p:?}");
        assert!(p[3].contains("leased went from 0 to 1"), "{p:?}");
        // The server took a task whose acknowledgement never arrived.
        let p = verify(&before, &counts(5, 5, 0, 0), 4, 4);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("loadgen got 4 acknowledgements"), "{p:?}");
        let mut dead = counts(3, 2, 0, 0);
        dead.dead = 1;
        let p = verify(&before, &dead, 3, 2);
        assert!(
            p.iter().any(|x| x.contains("dead went from 0 to 1")),
            "{p:?}"
        );
    }
}
