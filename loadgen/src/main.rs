//! `loadgen`: an open-loop HTTP/1.1 load generator for the coordinator.
//!
//! Layout: `schedule` (when requests are due), `http` (request bytes and
//! response framing), `scenario` (what is sent), `driver` (one load thread:
//! non-blocking sockets + ppoll), `report` (histograms, merge, table,
//! JSON), `check` (`--check` bounds), `client` (blocking calls for setup
//! and scrapes), `sim` (the simulated worker), `proxy` (the proxy scenario:
//! the same load direct to the worker and through the coordinator),
//! `tasks` (the stateful submit -> pull -> complete driver), `population`
//! (`--population`: bulk registration of background workers before any
//! scenario), `subscribers` (`--subscribers`: change-stream subscriptions
//! held open during the load, with delivery latency) and `stream` (their
//! incremental chunked + SSE/NDJSON parsing). This file: the command line and the run's timeline.
//!
//! Honest numbers: request i of a connection is due at t0 + i/rate_per_conn
//! and its latency is measured from that due time, so a server stall shows
//! as latency rather than as a politely reduced load; the achieved rate is
//! reported next to the target, and a run that misses it fails `rate>=`.

mod check;
mod client;
mod driver;
mod http;
mod population;
mod proxy;
mod report;
mod scenario;
mod schedule;
mod sim;
mod soak;
mod stream;
mod subscribers;
mod tasks;

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};

use crate::client::BlockingConn;
use crate::driver::{Msg, Plan};
use crate::population::Population;
use crate::report::{Meta, Report, ServerHistogram, Tally};
use crate::scenario::{Kind, Mix};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST /api/worker/heartbeat, spread over --workers pre-registered workers.
    Heartbeat,
    /// POST /api/worker/register, rotating over --workers ids (replaces, never grows).
    Register,
    /// GET /api/coordinator/workers with --workers registered (the edge cache's poll).
    Workers,
    /// POST /api/coordinator/broadcast-job (queues a job on every gpu worker).
    Broadcast,
    /// Weighted mix of the above (--mix).
    Mixed,
    /// GET --path: any URL, e.g. the --baseline-hello server for a baseline.
    Get,
    /// Memory: registers --workers workers (stopping at --duration) and
    /// reports the server's RSS growth per worker (/proc/<--pid>/status
    /// VmRSS). No latency run.
    Rss,
    /// Inference proxy overhead: starts a simulated worker on loopback,
    /// registers it, then sends the same completion at the same rate first
    /// straight to the worker (baseline), then through
    /// POST /api/inference/llm; reports both and the difference.
    Proxy,
    /// Task throughput: --connections submitters POST /api/tasks at --rate
    /// while --task-workers registered workers pull (wait=1, max
    /// --task-batch) and complete; checks at the end that the server
    /// completed every task submitted (exit 1 otherwise).
    Tasks,
    /// Long-run stability: everything at once for --duration (after
    /// --warmup) at --rate (heartbeats, list polls, registrations, workers
    /// coming and going, proxied completions to a simulated worker, see
    /// --mix) plus task cycles at --task-rate; every --report-every it
    /// prints the server's RSS, open connections and queue depths with the
    /// interval's latency. Fails (exit 1) on any error or lost task, or
    /// when RSS rises more than --max-rss-growth over its value at the end
    /// of the warm-up.
    Soak,
}

/// What the `tasks` scenario's tasks target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TaskTarget {
    /// One service all pseudo-workers declare (`<prefix>-tasks`): one queue.
    Service,
    /// Each task names one pseudo-worker, round robin: one queue per worker,
    /// spread over the shards.
    Worker,
}

/// How subscribers ask for the change stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SubFormat {
    /// Server-Sent Events (`text/event-stream`).
    Sse,
    /// One JSON object per line (`Accept: application/x-ndjson`).
    Ndjson,
}

/// Open-loop HTTP/1.1 load generator for the coordinator.
///
/// Open loop (default): --rate requests/s over --connections keep-alive
/// connections; request i of a connection is due at t0 + i/rate_per_conn
/// and latency is measured from that due time (no coordinated omission).
/// Closed loop (--max): every connection sends its next request as soon as
/// the previous answer arrives; gives peak throughput, and its latencies
/// are labelled as such. Runs warm up, measure for --duration, and stop by
/// themselves. Only loopback targets unless --allow-remote.
///
/// Exit status: 0 ok, 1 a --check bound failed, 2 bad usage or setup.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version, verbatim_doc_comment)]
struct Cli {
    /// What to send.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Server address, host:port (http:// prefix allowed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: String,
    /// Target rate, requests/s over all connections (open loop).
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// Closed loop: send as fast as answers come back (peak throughput).
    #[arg(long)]
    max: bool,
    /// Load threads (tasks: unused, one thread per connection and worker).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin load threads to, round robin: "1", "0,1", "2-3".
    #[arg(long)]
    cpus: Option<String>,
    /// Keep-alive connections over all threads (tasks: submitters, each a
    /// blocking connection on its own thread).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Measured time (after warm-up): 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_dur)]
    duration: Duration,
    /// Warm-up, sent at the same rate but not measured.
    #[arg(long, default_value = "2s", value_parser = parse_dur)]
    warmup: Duration,
    /// Per-request timeout (counted as a `timeout` error; the connection is
    /// replaced).
    #[arg(long, default_value = "2s", value_parser = parse_dur)]
    timeout: Duration,
    /// Workers to pre-register (heartbeat/workers/broadcast/mixed; 0 = none),
    /// ids to rotate over (register) or to register (rss).
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Weights for `mixed` (default heartbeat=90,workers=8,register=2)
    /// and `soak` (default heartbeat=70,llm=15,churn=8,register=5,workers=2;
    /// llm and churn are soak-only).
    #[arg(long)]
    mix: Option<String>,
    /// Path for `get`.
    #[arg(long, default_value = "/")]
    path: String,
    /// `get` sends this as a JSON body with POST instead (e.g. a GraphQL
    /// query to /graphql).
    #[arg(long)]
    body: Option<String>,
    /// Worker id prefix (keeps concurrent or repeated runs apart).
    #[arg(long, default_value = "lg")]
    prefix: String,
    /// Skip pre-registration (the workers are already there).
    #[arg(long)]
    no_setup: bool,
    /// Also scrape the server's /metrics at the start and end of the
    /// measurement window and print its latency histogram for the route
    /// next to loadgen's.
    #[arg(long)]
    compare_metrics: bool,
    /// Bounds that must hold, e.g. 'p99<1ms,p999<2ms,errors=0,rate>=0.99'
    /// (p50..p9999, max, mean with us/ms/s; errors; rate = achieved/target;
    /// rps = achieved req/s). A failed bound is named and exits 1.
    #[arg(long)]
    check: Option<String>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Pseudo-workers pulling and completing tasks (tasks scenario).
    #[arg(long, default_value_t = 4)]
    task_workers: usize,
    /// Most tasks one pull leases (tasks scenario; `max=` of the pull).
    #[arg(long, default_value_t = 10)]
    task_batch: usize,
    /// Whom the tasks target (tasks scenario).
    #[arg(long, value_enum, default_value_t = TaskTarget::Service)]
    task_target: TaskTarget,
    /// Server process id (rss scenario).
    #[arg(long)]
    pid: Option<u32>,
    /// Background workers to register before the scenario (0 = none), so it
    /// runs against a registry of that size: ids `<prefix>-pop-000000..`,
    /// apart from --workers, with the same agent bodies (gpu, cpu, cpu,
    /// size-only). Registration throughput is reported; failures are
    /// counted, never retried, and with --check a shortfall fails the run.
    #[arg(long, default_value_t = 0)]
    population: usize,
    /// Keep-alive connections registering the population (1..=512, and at
    /// most one per worker), spread over --threads.
    #[arg(long, default_value_t = population::DEFAULT_CONNECTIONS)]
    population_connections: usize,
    /// Longest the population may take (1s..1h); what is not registered by
    /// then is reported and the scenario runs anyway.
    #[arg(long, default_value = "5m", value_parser = parse_dur)]
    population_timeout: Duration,
    /// Change-stream subscriptions (`GET /api/events`) held open during the
    /// run (heartbeat, register, workers, broadcast, mixed, get): all are
    /// streaming before the warm-up starts; the report gives events
    /// received in the window, events/s and delivery latency (receipt time
    /// minus the event's `time`), resets and early disconnections.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Threads reading the subscriptions (pinned after the load threads
    /// on --cpus).
    #[arg(long, default_value_t = 1)]
    subscriber_threads: usize,
    /// Query string of the subscriptions, e.g. 'topics=worker' (default:
    /// every event).
    #[arg(long, default_value = "")]
    subscriber_query: String,
    /// Framing the subscriptions ask for.
    #[arg(long, value_enum, default_value_t = SubFormat::Sse)]
    subscriber_format: SubFormat,
    /// Every K-th heartbeat of each worker switches its status between
    /// "healthy" and "busy" (0 = off), so the server emits rate/K
    /// `worker.state` events per second: a known event rate for
    /// --subscribers.
    #[arg(long, default_value_t = 0)]
    status_flip_every: u64,
    /// Tasks submitted per second during `soak` (0 = no task cycles).
    #[arg(long, default_value_t = 20.0)]
    task_rate: f64,
    /// How often `soak` samples the server and prints a line (5s..10m).
    #[arg(long, default_value = "1m", value_parser = parse_dur)]
    report_every: Duration,
    /// Largest rise of the server's RSS `soak` accepts after the warm-up,
    /// percent of its value at the end of the warm-up.
    #[arg(long, default_value_t = 10.0)]
    max_rss_growth: f64,
    /// Allow a non-loopback target. Only load machines you are allowed to.
    #[arg(long)]
    allow_remote: bool,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    check::parse_duration(s).ok_or_else(|| format!("bad duration {s:?} (e.g. 10s, 500ms, 1m)"))
}

/// `--rate` for a scenario that has no closed-loop mode.
fn open_loop_rate(cli: &Cli, scenario: &str) -> Result<f64, ExitCode> {
    cli.rate
        .filter(|_| !cli.max)
        .ok_or_else(|| fail(format!("{scenario} is open loop only: give --rate R")))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("loadgen: {msg}");
    ExitCode::from(2)
}

/// "1", "0,1", "2-3" -> CPU ids, each checked against the CPUs we may use.
fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("bad CPU list {s:?}");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(format!("empty CPU list {s:?}"));
    }
    Ok(out)
}

/// Resolves the target and refuses anything but loopback unless allowed.
fn resolve(target: &str, allow_remote: bool) -> Result<(SocketAddr, String), String> {
    let t = target
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let addrs: Vec<SocketAddr> = t
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {t:?}: {e} (expected host:port)"))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{t:?} resolves to nothing"))?;
    if !allow_remote {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "refusing non-loopback target {t} ({}): pass --allow-remote to load another machine",
                a.ip()
            ));
        }
    }
    Ok((addr, t))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (addr, host) = match resolve(&cli.target, cli.allow_remote) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    if cli.threads == 0 || cli.connections == 0 {
        return fail("--threads and --connections must be at least 1");
    }
    if cli.connections < cli.threads {
        return fail("need at least one connection per thread (--connections >= --threads)");
    }
    if let Some(r) = cli.rate {
        if !(r.is_finite() && r > 0.0) {
            return fail("--rate must be a positive number");
        }
    }
    if cli.duration.is_zero() {
        return fail("--duration must be positive");
    }
    let bounds = match cli.check.as_deref().map(check::parse_checks).transpose() {
        Ok(b) => b,
        Err(e) => return fail(format!("--check: {e}")),
    };
    let cpus = match cli.cpus.as_deref().map(parse_cpus).transpose() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Some(cpus) = &cpus {
        let allowed: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .iter()
            .map(|c| c.id)
            .collect();
        if let Some(c) = cpus.iter().find(|c| !allowed.contains(c)) {
            return fail(format!("CPU {c} is not available (allowed: {allowed:?})"));
        }
    }
    if cli.population > population::MAX_POPULATION {
        return fail(format!(
            "--population is at most {}",
            population::MAX_POPULATION
        ));
    }
    if cli.scenario != Scenario::Rss && cli.rate.is_none() && !cli.max {
        return fail("give --rate R (open loop) or --max (closed loop)");
    }

    let plain_run = !matches!(
        cli.scenario,
        Scenario::Rss | Scenario::Proxy | Scenario::Tasks | Scenario::Soak
    );
    if cli.subscribers > 0 && !plain_run {
        return fail(
            "--subscribers works with heartbeat, register, workers, broadcast, mixed and get",
        );
    }
    if cli.mix.is_some() && !matches!(cli.scenario, Scenario::Mixed | Scenario::Soak) {
        return fail("--mix is for mixed and soak");
    }
    if cli.subscriber_threads == 0 {
        return fail("--subscriber-threads must be at least 1");
    }
    if cli.subscribers > 0 {
        // Every subscription is a socket: make room (soft limit up to the
        // hard one) or say why not.
        let need = cli.subscribers + cli.connections + 64;
        if let Err(e) = raise_nofile(need as u64) {
            return fail(format!("--subscribers {}: {e}", cli.subscribers));
        }
    }

    // The background population, before anything of the scenario's own.
    let pop = (cli.population > 0).then(|| {
        let plan = population::Plan {
            addr,
            host: host.clone(),
            prefix: cli.prefix.clone(),
            workers: cli.population,
            connections: population::clamp_connections(cli.population_connections, cli.population),
            threads: cli.threads,
            cpus: cpus.clone(),
            timeout: cli
                .population_timeout
                .clamp(Duration::from_secs(1), Duration::from_secs(3600)),
            request_timeout: cli.timeout,
        };
        let p = population::register(&plan);
        eprint!("loadgen: {}", p.line());
        p
    });
    let pop = pop.as_ref();

    match cli.scenario {
        Scenario::Rss => return rss(&cli, addr, &host, pop),
        Scenario::Proxy => return proxy::run(&cli, addr, &host, cpus.as_deref(), bounds, pop),
        Scenario::Tasks => return tasks::run(&cli, addr, &host, cpus.as_deref(), bounds, pop),
        Scenario::Soak => return soak::run(&cli, addr, &host, cpus.as_deref(), bounds, pop),
        _ => {}
    }

    // What to send.
    let kinds: Vec<(Kind, u32)> = match cli.scenario {
        Scenario::Heartbeat => vec![(Kind::Heartbeat, 1)],
        Scenario::Register => vec![(Kind::Register, 1)],
        Scenario::Workers => vec![(Kind::Workers, 1)],
        Scenario::Broadcast => vec![(Kind::Broadcast, 1)],
        Scenario::Get => vec![(Kind::Get, 1)],
        Scenario::Mixed => match scenario::parse_mix(cli.mix.as_deref().unwrap_or(MIXED_MIX)) {
            Ok(m) if m.iter().any(|(k, _)| matches!(k, Kind::Llm | Kind::Churn)) => {
                return fail("--mix: llm and churn are for soak (which sets up what they need)")
            }
            Ok(m) => m,
            Err(e) => return fail(format!("--mix: {e}")),
        },
        Scenario::Rss | Scenario::Proxy | Scenario::Tasks | Scenario::Soak => {
            unreachable!("handled above")
        }
    };
    if cli.status_flip_every > 0 && !kinds.iter().any(|(k, _)| *k == Kind::Heartbeat) {
        return fail("--status-flip-every needs heartbeats (heartbeat, or mixed with heartbeat)");
    }
    let mix = Arc::new(Mix::new(
        kinds
            .iter()
            .map(|(k, w)| {
                let pool = if *k == Kind::Heartbeat && cli.status_flip_every > 0 {
                    scenario::Pool::flipping_heartbeats(
                        &host,
                        &cli.prefix,
                        cli.workers,
                        cli.status_flip_every,
                    )
                } else if let (Kind::Get, Some(body)) = (k, &cli.body) {
                    let post = http::build_request("POST", &host, &cli.path, Some(body.as_bytes()));
                    scenario::Pool::of(Kind::Get, vec![post])
                } else {
                    scenario::pool(*k, &host, &cli.prefix, cli.workers, &cli.path)
                };
                (pool, *w)
            })
            .collect(),
    ));

    // Setup: the workers heartbeats and lists need.
    let needs_workers = kinds
        .iter()
        .any(|(k, _)| matches!(k, Kind::Heartbeat | Kind::Workers | Kind::Broadcast));
    if needs_workers && !cli.no_setup && cli.workers > 0 {
        let started = Instant::now();
        if let Err(e) = register_workers(
            addr,
            &host,
            &cli.prefix,
            cli.workers,
            cli.threads.max(4),
            None,
        ) {
            return fail(format!("pre-registering {} workers: {e}", cli.workers));
        }
        eprintln!(
            "loadgen: registered {} workers in {:.1} s",
            cli.workers,
            started.elapsed().as_secs_f64()
        );
    }

    // The route whose server-side histogram we compare with ours.
    let route = match kinds.as_slice() {
        [(k, _)] => k.route(),
        _ => None,
    };
    if cli.compare_metrics && route.is_none() {
        eprintln!("loadgen: --compare-metrics needs a single-route scenario; skipped");
    }

    // Subscriptions, after the workers registered and before the load.
    let sub_plan = (cli.subscribers > 0).then(|| subscribers::Plan {
        addr,
        host: host.clone(),
        subscribers: cli.subscribers,
        threads: cli.subscriber_threads,
        query: cli.subscriber_query.clone(),
        format: match cli.subscriber_format {
            SubFormat::Sse => stream::Format::Sse,
            SubFormat::Ndjson => stream::Format::Ndjson,
        },
        cpus: (0..cli.subscriber_threads)
            .map(|t| driver::cpu_for(cpus.as_deref(), cli.threads + t))
            .collect(),
        timeout: cli.timeout,
    });
    let subs = match &sub_plan {
        None => None,
        Some(plan) => {
            let started = Instant::now();
            match subscribers::start(plan) {
                Ok(s) => {
                    eprintln!(
                        "loadgen: {} subscribers streaming in {:.1} s",
                        plan.subscribers,
                        started.elapsed().as_secs_f64()
                    );
                    Some(s)
                }
                Err(e) => return fail(format!("subscribing: {e}")),
            }
        }
    };

    let mut report = run_span(
        &cli,
        Span::of(&cli),
        addr,
        &host,
        mix,
        cpus.as_deref(),
        route,
        cli_scenario_name(&cli),
        subs.as_ref(),
    );
    if let (Some(plan), Some(subs)) = (&sub_plan, subs) {
        let tally = subs.finish();
        report.events = Some(subscribers::Events::new(plan, &tally, cli.duration));
    }
    let failed = bounds.map(|b| check::failures(&b, &report));
    finish(&cli, &report.table(), &report, failed, pop)
}

/// The end of every run: prints the population line (if any) and the
/// table, writes `--json` (with a `population` object when there was one),
/// and turns failed `--check` bounds (None = no `--check`; a population
/// shortfall counts as one) into exit status 1.
fn finish(
    cli: &Cli,
    table: &str,
    json: &impl serde::Serialize,
    mut failed: Option<Vec<String>>,
    pop: Option<&Population>,
) -> ExitCode {
    if let Some(p) = pop {
        print!("{}", p.line());
        if let (Some(f), Some(short)) = (failed.as_mut(), p.shortfall()) {
            f.push(short);
        }
    }
    print!("{table}");
    if let Some(path) = &cli.json {
        let text = match pop {
            // Without a population the report is written as it always was.
            None => serde_json::to_string_pretty(json),
            Some(p) => serde_json::to_value(json).and_then(|mut v| {
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("population".into(), serde_json::to_value(p)?);
                }
                serde_json::to_string_pretty(&v)
            }),
        }
        .expect("report serialises");
        if let Err(e) = std::fs::write(path, text + "\n") {
            return fail(format!("writing {}: {e}", path.display()));
        }
    }
    if let Some(failed) = failed {
        if !failed.is_empty() {
            for f in &failed {
                println!("CHECK FAILED: {f}");
            }
            return ExitCode::from(1);
        }
        println!("check passed: {}", cli.check.as_deref().unwrap_or_default());
    }
    ExitCode::SUCCESS
}

/// The time shape of one driver run.
#[derive(Debug, Clone, Copy)]
struct Span {
    warmup: Duration,
    duration: Duration,
    /// Show a progress line on stderr.
    progress: bool,
}

impl Span {
    /// The command line's warm-up and duration, with progress on a terminal.
    fn of(cli: &Cli) -> Span {
        Span {
            warmup: cli.warmup,
            duration: cli.duration,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// One measured run of `mix` against `addr` with the command line's rate,
/// connections and threads over `span` (`soak` runs one per reporting
/// interval); `subs` (already streaming) are told the measured window.
#[allow(clippy::too_many_arguments)]
fn run_span(
    cli: &Cli,
    span: Span,
    addr: SocketAddr,
    host: &str,
    mix: Arc<Mix>,
    cpus: Option<&[usize]>,
    route: Option<&'static str>,
    scenario: String,
    subs: Option<&subscribers::Running>,
) -> Report {
    let rate = if cli.max { None } else { cli.rate };
    let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
    let progress = span.progress;
    let t0 = Instant::now() + Duration::from_millis(300);
    let window = (span.warmup, span.warmup + span.duration);
    if let Some(s) = subs {
        s.set_window(t0 + window.0, t0 + window.1);
    }
    let groups = schedule::split_connections(cli.connections, cli.threads);
    let mut handles = Vec::new();
    for (thread, conns) in groups.into_iter().enumerate() {
        let plan = Plan {
            thread,
            conns,
            total_conns: cli.connections,
            rate,
            addr,
            mix: mix.clone(),
            t0,
            window,
            timeout: cli.timeout,
            cpu: driver::cpu_for(cpus, thread),
            progress,
            tx: tx.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-{thread}"))
                .spawn(move || driver::run(plan))
                .expect("spawn load thread"),
        );
    }
    drop(tx);

    // The server's histogram at the start of the window.
    let scrape = (cli.compare_metrics && route.is_some()).then(|| {
        let host = host.to_string();
        let at = t0 + window.0;
        std::thread::spawn(move || {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            scrape_metrics(addr, &host, route.unwrap_or_default())
        })
    });

    // Collect, with a progress line when stderr is a terminal.
    let mut latest: Vec<Option<Tally>> = vec![None; cli.threads];
    let mut done: Vec<Option<Tally>> = vec![None; cli.threads];
    let mut last_shown = (t0 + window.0, 0u64);
    while done.iter().any(Option::is_none) {
        match rx.recv() {
            Ok(Msg::Progress(t, tally)) => {
                latest[t] = Some(*tally);
                if t == cli.threads - 1 {
                    let mut sum = Tally::default();
                    for l in latest.iter().flatten() {
                        sum.merge(l);
                    }
                    let now = Instant::now();
                    let n = sum.latency.len();
                    let secs = now.duration_since(last_shown.0).as_secs_f64().max(1e-3);
                    let p99 = report::quantile(&sum.latency, 0.99);
                    eprint!(
                        "\r[{:>5.1}s] {:>8.0} req/s  errors {:<6} p99 {:>7} us   ",
                        now.saturating_duration_since(t0 + window.0).as_secs_f64(),
                        n.saturating_sub(last_shown.1) as f64 / secs,
                        sum.errors_total(),
                        p99
                    );
                    last_shown = (now, n);
                }
            }
            Ok(Msg::Done(t, tally)) => done[t] = Some(*tally),
            Err(_) => break,
        }
    }
    if progress {
        eprintln!();
    }
    for h in handles {
        let _ = h.join();
    }
    let mut total = Tally::default();
    for t in done.iter().flatten() {
        total.merge(t);
    }
    let server = scrape.and_then(|h| {
        let before = h.join().ok().flatten();
        let after = scrape_metrics(addr, host, route.unwrap_or_default())?;
        Some(report::histogram_delta(after, before.as_ref()))
    });
    let meta = Meta {
        scenario,
        target: host.to_string(),
        threads: cli.threads,
        connections: cli.connections,
        warmup_s: span.warmup.as_secs_f64(),
        target_rate: rate,
    };
    report::build(meta, &total, span.duration, server)
}

/// The mix of `mixed` without `--mix`.
const MIXED_MIX: &str = "heartbeat=90,workers=8,register=2";

fn cli_scenario_name(cli: &Cli) -> String {
    match cli.scenario {
        Scenario::Mixed => format!("mixed ({})", cli.mix.as_deref().unwrap_or(MIXED_MIX)),
        Scenario::Get => format!("get {}", cli.path),
        s => format!("{s:?}").to_lowercase(),
    }
}

/// The server's `/metrics` text.
fn metrics_text(addr: SocketAddr, host: &str) -> Option<String> {
    let req = http::build_request("GET", host, "/metrics", None);
    let (status, body) = BlockingConn::new(addr).call(&req).ok()?;
    if status != 200 {
        eprintln!("loadgen: /metrics answered {status}");
        return None;
    }
    Some(String::from_utf8_lossy(&body).into_owned())
}

fn scrape_metrics(addr: SocketAddr, host: &str, route: &str) -> Option<ServerHistogram> {
    report::parse_server_histogram(&metrics_text(addr, host)?, route)
}

/// Registers workers `prefix-000000..` over `parallel` connections, until
/// done or `deadline`; returns how many were registered.
fn register_workers(
    addr: SocketAddr,
    host: &str,
    prefix: &str,
    n: usize,
    parallel: usize,
    deadline: Option<Instant>,
) -> Result<usize, String> {
    let parallel = parallel.clamp(1, n.max(1));
    let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..parallel)
            .map(|t| {
                s.spawn(move || {
                    let mut conn = BlockingConn::new(addr);
                    let mut done = 0;
                    for i in (t..n).step_by(parallel) {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let id = scenario::worker_id(prefix, i);
                        let req = http::build_request(
                            "POST",
                            host,
                            "/api/worker/register",
                            Some(&scenario::register_body(&id, i)),
                        );
                        match conn.call(&req) {
                            Ok((200, _)) => done += 1,
                            Ok((st, body)) => {
                                return Err(format!(
                                    "{id}: status {st}: {}",
                                    String::from_utf8_lossy(&body)
                                ))
                            }
                            Err(e) => return Err(format!("{id}: {e}")),
                        }
                    }
                    Ok(done)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    results.into_iter().sum()
}

/// Raises the soft open-file limit to at least `need` (within the hard
/// limit).
fn raise_nofile(need: u64) -> Result<(), String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit the call writes into.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err("cannot read the open-file limit".into());
    }
    if lim.rlim_cur >= need {
        return Ok(());
    }
    if lim.rlim_max < need {
        return Err(format!(
            "needs {need} open files, the hard limit is {} (ulimit -Hn)",
            lim.rlim_max
        ));
    }
    lim.rlim_cur = need;
    // SAFETY: `lim` is a valid rlimit within the hard limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(format!("cannot raise the open-file limit to {need}"));
    }
    Ok(())
}

/// VmRSS of a process, in bytes.
fn vm_rss(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

fn health_total(addr: SocketAddr, host: &str) -> Option<u64> {
    let (_, v) = BlockingConn::new(addr)
        .json("GET", host, "/health", None)
        .ok()?;
    v["workers"]["total"].as_u64()
}

/// The rss scenario: server memory per registered worker.
fn rss(cli: &Cli, addr: SocketAddr, host: &str, pop: Option<&Population>) -> ExitCode {
    let Some(pid) = cli.pid else {
        return fail("rss needs --pid <server pid> (the server must run on this machine)");
    };
    let before = match vm_rss(pid) {
        Ok(b) => b,
        Err(e) => return fail(e),
    };
    let workers_before = health_total(addr, host).unwrap_or(0);
    let started = Instant::now();
    // Bounded like every run: registration cost grows with the registry,
    // so a large --workers may not finish within --duration; then the
    // figure is for the workers that did register.
    let registered = match register_workers(
        addr,
        host,
        &cli.prefix,
        cli.workers,
        cli.connections.min(8),
        Some(started + cli.duration),
    ) {
        Ok(n) => n,
        Err(e) => return fail(format!("registering: {e}")),
    };
    let took = started.elapsed();
    if registered < cli.workers {
        eprintln!(
            "loadgen: --duration {:.0} s reached after {registered} of {} registrations",
            cli.duration.as_secs_f64(),
            cli.workers
        );
    }
    // Let the allocator settle (freed request buffers) before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let after = match vm_rss(pid) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let workers_after = health_total(addr, host).unwrap_or(0);
    let added = workers_after.saturating_sub(workers_before);
    let per = if added == 0 {
        0.0
    } else {
        after.saturating_sub(before) as f64 / added as f64
    };
    let table = format!(
        "loadgen rss: {registered} registrations in {:.1} s ({:.0}/s) -> {host}\n\
         workers:     {workers_before} before, {workers_after} after ({added} added)\n\
         VmRSS:       {:.1} MiB before, {:.1} MiB after\n\
         per worker:  {per:.0} bytes\n",
        took.as_secs_f64(),
        registered as f64 / took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    let json = serde_json::json!({
        "scenario": "rss", "target": host, "registrations": registered,
        "workers_before": workers_before, "workers_after": workers_after,
        "rss_before_bytes": before, "rss_after_bytes": after,
        "bytes_per_worker": per, "seconds": took.as_secs_f64(),
    });
    finish(cli, &table, &json, None, pop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpus("1").unwrap(), vec![1]);
        assert_eq!(parse_cpus("0, 2").unwrap(), vec![0, 2]);
        assert_eq!(parse_cpus("2-4").unwrap(), vec![2, 3, 4]);
        assert!(parse_cpus("4-2").is_err());
        assert!(parse_cpus("x").is_err());
        assert!(parse_cpus("").is_err());
    }

    #[test]
    fn only_loopback_without_permission() {
        assert!(resolve("127.0.0.1:8080", false).is_ok());
        assert_eq!(
            resolve("http://127.0.0.1:9/", false).unwrap().1,
            "127.0.0.1:9"
        );
        assert!(resolve("[::1]:8080", false).is_ok());
        let e = resolve("10.1.2.3:80", false).unwrap_err();
        assert!(e.contains("--allow-remote"), "{e}");
        assert!(resolve("10.1.2.3:80", true).is_ok());
        assert!(resolve("no-port", false).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
