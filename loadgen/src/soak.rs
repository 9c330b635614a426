//! The `soak` scenario: does the server hold up when everything happens
//! at once for a long time? It runs, together and for the whole run:
//!
//! - the open-loop driver at `--rate` with a mix of heartbeats (of
//!   `--workers` registered workers), list polls, re-registrations,
//!   workers coming and going (`churn`: registration of one id,
//!   unregistration of another, see `scenario::Pool::churn`) and proxied
//!   completions (`llm`) answered by a simulated worker on loopback. The
//!   simulated worker declares a service of its own and `llm` goes through
//!   `/service/{that}/v1/completions`: the pool's gpu workers are given
//!   `llm-inference` by the catalog, and their made-up addresses would
//!   turn `/api/inference/llm` into 502s;
//! - the task cycle (`tasks::TaskLoad`) at `--task-rate`: submit, pull,
//!   complete, verified against the server's counters at the end.
//!
//! Time is cut into intervals: the warm-up, then one per `--report-every`.
//! Each interval is one driver run (so its connections are new ones), and
//! near its end the server's `/metrics` is sampled: resident memory, open
//! connections, task and store queue depths, registered workers. One line
//! per interval goes to stdout as it ends, so a long soak shows its trend
//! while it runs.
//!
//! The verdict: no error of any kind (a non-2xx answer, a timeout, a lost
//! or unfinished task), the rate kept, and the server's RSS never more
//! than `--max-rss-growth` percent above its value at the end of the
//! warm-up. Bounded caches (event ring, finished-task retention, SQLite's
//! page cache) must be full by then: make the warm-up long enough, or run
//! the server with smaller caps, for the figure to mean "no growth".
//!
//! This file owns the timeline, the samples and the verdict; requests,
//! the driver, the task load and the simulated worker are the shared ones.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::check::Bound;
use crate::http::build_request;
use crate::population::Population;
use crate::report::Report;
use crate::scenario::{self, Kind, Mix, Pool};
use crate::sim::SimWorker;
use crate::tasks::{TaskLoad, TaskSpec};
use crate::{
    fail, finish, metrics_text, open_loop_rate, proxy, register_workers, run_span, Cli, Span,
};

/// The mix without `--mix`: mostly heartbeats, as a real pool sends.
pub const SOAK_MIX: &str = "heartbeat=70,llm=15,churn=8,register=5,workers=2";
/// Ids the churn cycles over (registered before the run).
const CHURN_IDS: usize = 256;
/// Task submitters (each a blocking connection on its own thread).
const TASK_SUBMITTERS: usize = 2;
/// How long before an interval's end its sample is taken: while the
/// interval's connections are still open.
const SAMPLE_BEFORE_END: Duration = Duration::from_millis(700);

/// What the server looked like near the end of one interval.
#[derive(Debug, Clone, Default, Serialize)]
struct ServerSample {
    rss_bytes: u64,
    connections_open: u64,
    task_queue_depth: u64,
    store_queue_depth: u64,
    workers: u64,
}

impl ServerSample {
    fn take(addr: SocketAddr, host: &str) -> Result<Self, String> {
        let text = metrics_text(addr, host).ok_or("cannot read /metrics")?;
        let rss = sum_series(&text, "process_resident_memory_bytes")
            .ok_or("no process_resident_memory_bytes in /metrics (the soak needs Linux)")?;
        Ok(Self {
            rss_bytes: rss,
            connections_open: sum_series(&text, "coordinator_connections_open").unwrap_or(0),
            task_queue_depth: sum_series(&text, "coordinator_task_queue_depth").unwrap_or(0),
            store_queue_depth: sum_series(&text, "coordinator_store_queue_depth").unwrap_or(0),
            workers: sum_series(&text, "coordinator_workers").unwrap_or(0),
        })
    }
}

/// The sum of every series of metric `name` (all label sets), or `None`
/// when there is none.
fn sum_series(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b' ') => rest,
            Some(b'{') => match rest.find("} ") {
                Some(i) => &rest[i + 1..],
                None => continue,
            },
            _ => continue,
        };
        if let Ok(v) = value.trim().parse::<f64>() {
            *found.get_or_insert(0u64) += v.max(0.0) as u64;
        }
    }
    found
}

/// One interval: the driver's report, the server sample, task progress.
#[derive(Debug, Clone, Serialize)]
struct Interval {
    /// Seconds since the load started, at the interval's end.
    at_s: f64,
    warmup: bool,
    server: ServerSample,
    /// RSS against the end of the warm-up, percent (0 for the warm-up).
    rss_growth_pct: f64,
    achieved_rate: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    errors: u64,
    /// Errors by kind (`status_502`, `timeout`, ...).
    error_kinds: std::collections::BTreeMap<String, u64>,
    /// Tasks acknowledged so far (whole run).
    tasks_submitted: u64,
    tasks_completed: u64,
}

impl Interval {
    fn line(&self) -> String {
        format!(
            "soak: {:>6.0} s{} rss {:>7.1} MiB ({:+5.1} %)  conns {:>4}  task queue {:>4}  store queue {:>4}  \
             workers {:>6}  {:>6.0} req/s  p50 {:>6} us  p99 {:>7} us  max {:>7} us  errors {}  tasks {}/{}\n",
            self.at_s,
            if self.warmup { " warm-up" } else { "        " },
            self.server.rss_bytes as f64 / 1048576.0,
            self.rss_growth_pct,
            self.server.connections_open,
            self.server.task_queue_depth,
            self.server.store_queue_depth,
            self.server.workers,
            self.achieved_rate,
            self.p50_us,
            self.p99_us,
            self.max_us,
            self.errors,
            self.tasks_completed,
            self.tasks_submitted,
        )
    }
}

#[derive(Serialize)]
struct SoakReport {
    scenario: &'static str,
    target: String,
    rate: f64,
    task_rate: f64,
    mix: String,
    intervals: Vec<Interval>,
    rss_at_warmup_bytes: u64,
    rss_max_bytes: u64,
    rss_growth_pct: f64,
    proxied_completions: u64,
    tasks_submitted: u64,
    tasks_completed: u64,
    failures: Vec<String>,
}

/// Interval lengths: the warm-up (if any), then `every` until `total`
/// (the last one shorter when `total` is not a multiple).
fn intervals(warmup: Duration, total: Duration, every: Duration) -> Vec<(Duration, bool)> {
    let mut out = Vec::new();
    if !warmup.is_zero() {
        out.push((warmup, true));
    }
    let mut left = total;
    while !left.is_zero() {
        let d = left.min(every);
        out.push((d, false));
        left -= d;
    }
    out
}

/// The verdict on the intervals so far.
#[derive(Debug, PartialEq)]
struct Verdict {
    /// RSS at the end of the warm-up (or of the first interval without one).
    base_rss: u64,
    /// Highest RSS sampled after the warm-up.
    max_rss: u64,
    growth_pct: f64,
    failures: Vec<String>,
}

/// Judges intervals: any error fails, an achieved rate under 95 % of
/// `rate` fails, and RSS after the warm-up more than `max_growth` percent
/// over the reference fails. The reference is the last warm-up sample
/// (bounded caches are full by then), or the first sample when there was
/// no warm-up.
fn judge(intervals: &[Interval], rate: f64, max_growth: f64) -> Verdict {
    let mut failures = Vec::new();
    for (i, iv) in intervals.iter().enumerate() {
        let which = format!("interval {} (at {:.0} s)", i + 1, iv.at_s);
        if iv.errors > 0 {
            failures.push(format!(
                "{which}: {} errors {:?}",
                iv.errors, iv.error_kinds
            ));
        }
        if rate > 0.0 && iv.achieved_rate < 0.95 * rate {
            failures.push(format!(
                "{which}: achieved {:.0} of {rate} req/s ({:.0} %)",
                iv.achieved_rate,
                iv.achieved_rate / rate * 100.0
            ));
        }
    }
    let base_rss = intervals
        .iter()
        .rev()
        .find(|iv| iv.warmup)
        .or_else(|| intervals.first())
        .map_or(0, |iv| iv.server.rss_bytes);
    let max_rss = intervals
        .iter()
        .filter(|iv| !iv.warmup)
        .map(|iv| iv.server.rss_bytes)
        .max()
        .unwrap_or(base_rss);
    let growth_pct = growth_pct(max_rss, base_rss);
    if growth_pct > max_growth {
        failures.push(format!(
            "RSS grew {growth_pct:.1} % after the warm-up ({:.1} -> {:.1} MiB at most), over the {max_growth} % allowed",
            base_rss as f64 / 1048576.0,
            max_rss as f64 / 1048576.0,
        ));
    }
    Verdict {
        base_rss,
        max_rss,
        growth_pct,
        failures,
    }
}

/// Percent `now` is above `base` (negative when below).
fn growth_pct(now: u64, base: u64) -> f64 {
    if base == 0 {
        0.0
    } else {
        (now as f64 / base as f64 - 1.0) * 100.0
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
    let rate = match open_loop_rate(cli, "soak") {
        Ok(r) => r,
        Err(code) => return code,
    };
    if bounds.is_some() {
        return fail(
            "soak has its own verdict (errors, tasks, --max-rss-growth); --check is not used",
        );
    }
    if !(cli.task_rate.is_finite() && cli.task_rate >= 0.0) {
        return fail("--task-rate must be 0 or more");
    }
    if !(cli.max_rss_growth.is_finite() && cli.max_rss_growth > 0.0) {
        return fail("--max-rss-growth must be a positive percentage");
    }
    let every = cli
        .report_every
        .clamp(Duration::from_secs(5), Duration::from_secs(600));
    let mix_text = cli.mix.as_deref().unwrap_or(SOAK_MIX);
    let kinds = match scenario::parse_mix(mix_text) {
        Ok(k) => k,
        Err(e) => return fail(format!("--mix: {e}")),
    };

    // The simulated worker behind `llm`, registered and kept healthy.
    let sim = match SimWorker::start() {
        Ok(s) => s,
        Err(e) => return fail(format!("starting the simulated worker: {e}")),
    };
    let sim_id = scenario::worker_id(&format!("{}-sim", cli.prefix), 0);
    let sim_service = format!("{}-soak-llm", cli.prefix);
    let llm_path = format!("/service/{sim_service}/v1/completions");
    if kinds.iter().any(|(k, _)| *k == Kind::Llm) {
        if let Err(e) = proxy::setup_service(addr, host, &sim_id, &sim, &sim_service, &llm_path) {
            return fail(e);
        }
    }
    let _sim_beats = proxy::keep_healthy(addr, host, &sim_id);
    // The heartbeating workers, the ids `register` re-registers and the
    // churn's: the registry has its full size before the warm-up starts.
    let started = Instant::now();
    for (prefix, n) in [
        (cli.prefix.clone(), cli.workers),
        (scenario::register_prefix(&cli.prefix), cli.workers),
        (scenario::churn_prefix(&cli.prefix), CHURN_IDS),
    ] {
        if let Err(e) = register_workers(addr, host, &prefix, n, 4, None) {
            return fail(format!("pre-registering {n} workers {prefix}-..: {e}"));
        }
    }
    eprintln!(
        "loadgen: soak: 2 x {} workers, {CHURN_IDS} churn ids and a simulated worker ({}) registered in {:.1} s",
        cli.workers,
        sim.url(),
        started.elapsed().as_secs_f64()
    );
    let mix = Arc::new(Mix::new(
        kinds
            .iter()
            .map(|(k, w)| {
                let pool = match k {
                    Kind::Churn => Pool::churn(host, &cli.prefix, CHURN_IDS),
                    Kind::Llm => Pool::of(
                        Kind::Llm,
                        vec![build_request(
                            "POST",
                            host,
                            &llm_path,
                            Some(&scenario::llm_body()),
                        )],
                    ),
                    // In turn, so every id is re-registered each cycle (at
                    // each connection's own position, some would not be
                    // for longer than --worker-timeout and be removed).
                    Kind::Register => {
                        scenario::pool(Kind::Register, host, &cli.prefix, cli.workers, "/")
                            .in_turn()
                    }
                    k => scenario::pool(*k, host, &cli.prefix, cli.workers, &cli.path),
                };
                (pool, *w)
            })
            .collect(),
    ));

    // Task cycles over the whole run, in the background of the intervals.
    let plan = intervals(cli.warmup, cli.duration, every);
    let total: Duration = plan.iter().map(|(d, _)| *d).sum();
    let task_load = if cli.task_rate > 0.0 {
        match TaskLoad::start(TaskSpec {
            addr,
            host: host.to_string(),
            prefix: cli.prefix.clone(),
            rate: cli.task_rate,
            submitters: TASK_SUBMITTERS,
            workers: cli.task_workers.max(1),
            batch: cli.task_batch.clamp(1, 1000),
            target: cli.task_target,
            cpus: cpus.map(<[usize]>::to_vec),
            cpu_slot: cli.threads,
            t0: Instant::now(),
            window: (cli.warmup, total),
        }) {
            Ok(l) => Some(l),
            Err(e) => return fail(e),
        }
    } else {
        None
    };

    println!(
        "loadgen: soak -> {host}: {rate} req/s ({mix_text}) + {} tasks/s, warm-up {:.0} s, \
         then {:.0} s in intervals of {:.0} s; RSS may grow at most {} %",
        cli.task_rate,
        cli.warmup.as_secs_f64(),
        cli.duration.as_secs_f64(),
        every.as_secs_f64(),
        cli.max_rss_growth
    );
    let t_start = Instant::now();
    let mut out: Vec<Interval> = Vec::new();
    let hits_before = sim.hits();
    for (i, &(len, warmup)) in plan.iter().enumerate() {
        // The sample is taken near the end, from another thread, while the
        // interval's connections are open.
        let sample_at =
            Instant::now() + Duration::from_millis(300) + len.saturating_sub(SAMPLE_BEFORE_END);
        let host_s = host.to_string();
        let sampler = std::thread::spawn(move || {
            std::thread::sleep(sample_at.saturating_duration_since(Instant::now()));
            ServerSample::take(addr, &host_s)
        });
        let span = Span {
            warmup: Duration::ZERO,
            duration: len,
            progress: false,
        };
        let name = format!("soak interval {}", i + 1);
        let report: Report = run_span(cli, span, addr, host, mix.clone(), cpus, None, name, None);
        let server = match sampler.join() {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return fail(format!("sampling the server: {e}")),
            Err(_) => return fail("the sampling thread panicked"),
        };
        let (tasks_submitted, tasks_completed) =
            task_load.as_ref().map_or((0, 0), TaskLoad::progress);
        out.push(Interval {
            at_s: t_start.elapsed().as_secs_f64(),
            warmup,
            rss_growth_pct: 0.0,
            achieved_rate: report.achieved_rate,
            p50_us: report.latency.p50_us,
            p99_us: report.latency.p99_us,
            max_us: report.latency.max_us,
            errors: report.errors_total(),
            error_kinds: report.errors.clone(),
            tasks_submitted,
            tasks_completed,
            server,
        });
        // Each line shows its sample against the reference known so far.
        let base = judge(&out, rate, cli.max_rss_growth).base_rss;
        if let Some(last) = out.last_mut() {
            if !last.warmup {
                last.rss_growth_pct = growth_pct(last.server.rss_bytes, base);
            }
            print!("{}", last.line());
        }
    }
    let mut failures: Vec<String> = Vec::new();
    let proxied = sim.hits() - hits_before;
    if kinds.iter().any(|(k, _)| *k == Kind::Llm) && proxied == 0 {
        failures.push("no proxied completion reached the simulated worker".into());
    }

    let (mut tasks_submitted, mut tasks_completed) = (0, 0);
    let mut table = String::new();
    if let Some(load) = task_load {
        match load.finish() {
            Ok(t) => {
                tasks_submitted = t.submitted;
                tasks_completed = t.completed;
                let errors = t.submit.errors_total() + t.work.errors_total();
                if errors > 0 {
                    let mut kinds = t.submit.errors.clone();
                    for (k, v) in &t.work.errors {
                        *kinds.entry(k.clone()).or_default() += v;
                    }
                    failures.push(format!("task cycle: {errors} errors {kinds:?}"));
                }
                failures.extend(t.problems.iter().map(|p| format!("tasks: {p}")));
                let _ = write!(
                    table,
                    "tasks:       {} submitted, {} completed\n{}",
                    t.submitted,
                    t.completed,
                    t.verdict()
                );
            }
            Err(e) => failures.push(format!("task verification: {e}")),
        }
    }

    let v = judge(&out, rate, cli.max_rss_growth);
    let (base, rss_max, growth) = (v.base_rss, v.max_rss, v.growth_pct);
    failures.splice(0..0, v.failures);
    let _ = writeln!(
        table,
        "rss:         {:.1} MiB at the end of the warm-up, at most {:.1} MiB after it ({growth:+.1} %, limit {} %)",
        base as f64 / 1048576.0,
        rss_max as f64 / 1048576.0,
        cli.max_rss_growth
    );
    let _ = writeln!(
        table,
        "proxied:     {proxied} completions answered by the simulated worker"
    );
    let _ = writeln!(
        table,
        "{}",
        if failures.is_empty() {
            "soak passed".to_string()
        } else {
            format!("soak FAILED: {} problem(s)", failures.len())
        }
    );
    let report = SoakReport {
        scenario: "soak",
        target: host.to_string(),
        rate,
        task_rate: cli.task_rate,
        mix: mix_text.to_string(),
        intervals: out,
        rss_at_warmup_bytes: base,
        rss_max_bytes: rss_max,
        rss_growth_pct: growth,
        proxied_completions: proxied,
        tasks_submitted,
        tasks_completed,
        failures: failures.clone(),
    };
    finish(
        cli,
        &table,
        &report,
        (!failures.is_empty()).then_some(failures),
        pop,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_over_labels() {
        let text = "# HELP x\n\
                    coordinator_connections_open{shard=\"0\"} 3\n\
                    coordinator_connections_open{shard=\"1\"} 4\n\
                    coordinator_connections_opened_total{shard=\"0\"} 99\n\
                    process_resident_memory_bytes 2.5e7\n";
        assert_eq!(sum_series(text, "coordinator_connections_open"), Some(7));
        assert_eq!(
            sum_series(text, "process_resident_memory_bytes"),
            Some(25_000_000)
        );
        assert_eq!(sum_series(text, "coordinator_task_queue_depth"), None);
    }

    #[test]
    fn intervals_cover_the_run() {
        let s = Duration::from_secs;
        assert_eq!(
            intervals(s(30), s(150), s(60)),
            vec![
                (s(30), true),
                (s(60), false),
                (s(60), false),
                (s(30), false)
            ]
        );
        assert_eq!(
            intervals(Duration::ZERO, s(60), s(60)),
            vec![(s(60), false)]
        );
    }

    fn iv(warmup: bool, rss_mib: u64, rate: f64, errors: u64) -> Interval {
        Interval {
            at_s: 0.0,
            warmup,
            server: ServerSample {
                rss_bytes: rss_mib << 20,
                ..ServerSample::default()
            },
            rss_growth_pct: 0.0,
            achieved_rate: rate,
            p50_us: 0,
            p99_us: 0,
            max_us: 0,
            errors,
            error_kinds: if errors > 0 {
                [("status_502".to_string(), errors)].into_iter().collect()
            } else {
                Default::default()
            },
            tasks_submitted: 0,
            tasks_completed: 0,
        }
    }

    #[test]
    fn the_verdict_judges_growth_after_the_warmup_errors_and_rate() {
        // Growth during the warm-up is not judged; after it, 9 % passes.
        let ok = judge(
            &[
                iv(true, 20, 1000.0, 0),
                iv(true, 40, 1000.0, 0),
                iv(false, 43, 1000.0, 0),
                iv(false, 40, 990.0, 0),
            ],
            1000.0,
            10.0,
        );
        assert_eq!(ok.base_rss, 40 << 20);
        assert_eq!(ok.max_rss, 43 << 20);
        assert!(ok.failures.is_empty(), "{ok:?}");
        // 12.5 % over the reference fails, naming the sizes.
        let grew = judge(
            &[iv(true, 40, 1000.0, 0), iv(false, 45, 1000.0, 0)],
            1000.0,
            10.0,
        );
        assert_eq!(grew.failures.len(), 1, "{grew:?}");
        assert!(grew.failures[0].contains("40.0 -> 45.0 MiB"), "{grew:?}");
        // One error anywhere (the warm-up included) fails, and so does a
        // missed rate.
        let bad = judge(
            &[iv(true, 40, 1000.0, 1), iv(false, 40, 900.0, 0)],
            1000.0,
            10.0,
        );
        assert_eq!(bad.failures.len(), 2, "{bad:?}");
        assert!(bad.failures[0].contains("status_502"), "{bad:?}");
        assert!(bad.failures[1].contains("achieved 900 of 1000"), "{bad:?}");
        // Without a warm-up the first interval is the reference.
        let cold = judge(
            &[iv(false, 30, 1000.0, 0), iv(false, 34, 1000.0, 0)],
            1000.0,
            10.0,
        );
        assert_eq!(cold.base_rss, 30 << 20);
        assert_eq!(cold.failures.len(), 1, "{cold:?}");
    }

    #[test]
    fn growth_is_relative_to_the_reference() {
        assert!((growth_pct(110, 100) - 10.0).abs() < 1e-9);
        assert!(growth_pct(90, 100) < 0.0);
        assert_eq!(growth_pct(5, 0), 0.0);
    }
}
