//! The `proxy` scenario: what the coordinator's inference proxy adds to a
//! request. It starts a simulated worker (`sim.rs`) on loopback, registers
//! it for `llm-inference` with the model the request names, waits until the
//! coordinator routes to it, and then runs two measured phases back to
//! back with the same rate, connections, warm-up and duration:
//!
//! 1. **direct**: the completion request straight to the worker's
//!    `/v1/completions` (the baseline: loopback, loadgen and the worker);
//! 2. **proxied**: the same JSON as `POST /api/inference/llm` through the
//!    coordinator, which forwards it to that worker.
//!
//! Both phases use the ordinary open-loop driver (`run_load`); this file
//! owns the setup, the phase order, and the overhead (proxied minus and
//! over direct). `--check` bounds apply to the proxied phase.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::check::Bound;
use crate::client::{BlockingConn, Heartbeats};
use crate::http::build_request;
use crate::population::Population;
use crate::report::Report;
use crate::scenario::{self, Kind, Mix};
use crate::sim::SimWorker;
use crate::{check, fail, finish, run_span, Cli, Span};

/// The service the simulated worker declares (the llm route's service).
const SERVICE: &str = "llm-inference";
/// How long the coordinator gets to make a new worker routable.
const READY_WITHIN: Duration = Duration::from_secs(5);

/// Proxied against direct, from the two phases' latency figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Overhead {
    /// proxied - direct, microseconds (negative: the proxy phase was faster,
    /// i.e. noise).
    pub p50_us: i64,
    pub p90_us: i64,
    pub p99_us: i64,
    pub p999_us: i64,
    pub mean_us: f64,
    /// proxied / direct.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
}

impl Overhead {
    pub fn between(direct: &Report, proxied: &Report) -> Self {
        let (d, p) = (&direct.latency, &proxied.latency);
        let diff = |a: u64, b: u64| a as i64 - b as i64;
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        Self {
            p50_us: diff(p.p50_us, d.p50_us),
            p90_us: diff(p.p90_us, d.p90_us),
            p99_us: diff(p.p99_us, d.p99_us),
            p999_us: diff(p.p999_us, d.p999_us),
            mean_us: p.mean_us - d.mean_us,
            p50_ratio: ratio(p.p50_us, d.p50_us),
            p99_ratio: ratio(p.p99_us, d.p99_us),
        }
    }

    pub fn table(&self) -> String {
        format!(
            "proxy overhead (proxied - direct): p50 {:+} us, p90 {:+} us, p99 {:+} us, \
             p99.9 {:+} us, mean {:+.1} us\n\
             proxy ratio (proxied / direct):     p50 {:.2}x, p99 {:.2}x\n",
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p999_us,
            self.mean_us,
            self.p50_ratio,
            self.p99_ratio
        )
    }
}

/// Completions the simulated worker answered in each phase (warm-up
/// included), to show that each phase's requests really reached it.
#[derive(Debug, Clone, Serialize)]
struct SimHits {
    direct: u64,
    proxied: u64,
}

#[derive(Debug, Clone, Serialize)]
struct ProxyReport {
    scenario: &'static str,
    worker_id: String,
    worker: String,
    direct: Report,
    proxied: Report,
    overhead: Overhead,
    sim_hits: SimHits,
}

/// Heartbeats worker `id` (with the model loaded) every 10 s until dropped.
pub fn keep_healthy(addr: SocketAddr, host: &str, id: &str) -> Heartbeats {
    Heartbeats::start(
        addr,
        vec![build_request(
            "POST",
            host,
            "/api/worker/heartbeat",
            Some(&scenario::heartbeat_body(id, 0)),
        )],
        Duration::from_secs(10),
    )
}

/// Registers the worker, heartbeats it with the model loaded, and waits
/// until a proxied request reaches it.
fn setup(addr: SocketAddr, host: &str, id: &str, sim: &SimWorker) -> Result<(), String> {
    setup_service(addr, host, id, sim, SERVICE, "/api/inference/llm")
}

/// [`setup`] for any service the simulated worker should declare, probed
/// with a completion `POST`ed to `probe_path` (`soak` uses a service of its
/// own through `/service/{name}/v1/completions`).
pub fn setup_service(
    addr: SocketAddr,
    host: &str,
    id: &str,
    sim: &SimWorker,
    service: &str,
    probe_path: &str,
) -> Result<(), String> {
    let mut conn = BlockingConn::new(addr);
    let reg =
        scenario::serving_register_body(id, Some(&sim.url()), &[service], Some(sim.addr().port()));
    conn.expect(200, "POST", host, "/api/worker/register", Some(&reg))?;
    conn.expect(
        200,
        "POST",
        host,
        "/api/worker/heartbeat",
        Some(&scenario::heartbeat_body(id, 0)),
    )?;
    let probe = scenario::llm_body();
    let until = Instant::now() + READY_WITHIN;
    loop {
        match conn.json("POST", host, probe_path, Some(&probe)) {
            Ok((200, _)) => break,
            Ok((status, v)) if Instant::now() >= until => {
                return Err(format!(
                "the coordinator did not route to the simulated worker within {} s: {status} {v}",
                READY_WITHIN.as_secs()
            ))
            }
            Err(e) if Instant::now() >= until => return Err(format!("probing the route: {e}")),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    // Each shard caches its candidate list for a moment (a 503 included):
    // let every shard's cache turn over before the measurement starts.
    std::thread::sleep(Duration::from_millis(600));
    Ok(())
}

pub fn run(
    cli: &Cli,
    addr: SocketAddr,
    host: &str,
    cpus: Option<&[usize]>,
    bounds: Option<Vec<Bound>>,
    pop: Option<&Population>,
) -> ExitCode {
    let sim = match SimWorker::start() {
        Ok(s) => s,
        Err(e) => return fail(format!("starting the simulated worker: {e}")),
    };
    let id = scenario::worker_id(&format!("{}-sim", cli.prefix), 0);
    if let Err(e) = setup(addr, host, &id, &sim) {
        return fail(e);
    }
    let _beats = keep_healthy(addr, host, &id);
    eprintln!(
        "loadgen: simulated worker {id} at {} registered for {SERVICE}",
        sim.url()
    );

    // Same flags, same request body; only where it goes differs.
    let sim_host = sim.addr().to_string();
    let phase = |target: SocketAddr, host: &str, kind: Kind, name: &str| {
        let mix = Arc::new(Mix::new(vec![(
            scenario::pool(kind, host, &cli.prefix, 1, "/"),
            1,
        )]));
        let before = sim.hits();
        let r = run_span(
            cli,
            Span::of(cli),
            target,
            host,
            mix,
            cpus,
            kind.route(),
            name.into(),
            None,
        );
        (r, sim.hits() - before)
    };
    let (direct, direct_hits) = phase(
        sim.addr(),
        &sim_host,
        Kind::Completion,
        "proxy, phase 1: direct POST /v1/completions to the simulated worker",
    );
    let (proxied, proxied_hits) = phase(
        addr,
        host,
        Kind::Llm,
        "proxy, phase 2: POST /api/inference/llm through the coordinator",
    );

    // Leave no worker behind that points at a port about to close.
    let _ = BlockingConn::new(addr).json(
        "DELETE",
        host,
        &format!("/api/worker/unregister/{id}"),
        None,
    );

    let overhead = Overhead::between(&direct, &proxied);
    let table = format!(
        "{}\n{}\n{}simulated worker answered {direct_hits} direct and {proxied_hits} proxied completions\n",
        direct.table(),
        proxied.table(),
        overhead.table()
    );
    let failed = bounds.map(|b| {
        check::failures(&b, &proxied)
            .into_iter()
            .map(|f| format!("proxied phase: {f}"))
            .collect()
    });
    let report = ProxyReport {
        scenario: "proxy",
        worker_id: id,
        worker: sim.url(),
        direct,
        proxied,
        overhead,
        sim_hits: SimHits {
            direct: direct_hits,
            proxied: proxied_hits,
        },
    };
    finish(cli, &table, &report, failed, pop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_is_proxied_minus_and_over_direct() {
        let direct = Report::for_test(
            &[100; 99].iter().chain(&[400]).copied().collect::<Vec<_>>(),
            0,
        );
        let proxied = Report::for_test(
            &[250; 99].iter().chain(&[1000]).copied().collect::<Vec<_>>(),
            0,
        );
        let o = Overhead::between(&direct, &proxied);
        assert_eq!(o.p50_us, 150);
        assert_eq!(o.p50_ratio, 2.5);
        assert_eq!(o.p99_us, 150);
        assert!((o.mean_us - 154.5).abs() < 1.0, "{}", o.mean_us);
        assert!(o.table().contains("p50 +150 us"), "{}", o.table());
        let faster = Overhead::between(&proxied, &direct);
        assert_eq!(faster.p50_us, -150);
        let empty = Overhead::between(&Report::for_test(&[], 0), &proxied);
        assert_eq!(empty.p99_ratio, 0.0);
    }
}
