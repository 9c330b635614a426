//! Scenarios: which requests a run sends, with realistic bodies (the
//! capability and heartbeat fields real agents send, as documented in
//! `docs/api.md` under register and heartbeat). Every request is serialised once, before
//! the run, and replayed as bytes: the client spends its time on the
//! network, not on formatting JSON.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;

use crate::http::build_request;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Heartbeat,
    Register,
    Workers,
    Broadcast,
    Get,
    /// `POST /api/inference/llm` through the coordinator (`proxy`).
    Llm,
    /// The same completion sent straight to the simulated worker's
    /// `/v1/completions` (`proxy`'s baseline).
    Completion,
    /// Workers coming and going (`soak`): a registration of one id, then
    /// the unregistration of another registered half a cycle earlier.
    Churn,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Heartbeat => "heartbeat",
            Kind::Register => "register",
            Kind::Workers => "workers",
            Kind::Broadcast => "broadcast",
            Kind::Get => "get",
            Kind::Llm => "llm",
            Kind::Completion => "completion",
            Kind::Churn => "churn",
        }
    }

    /// The server's route label for this kind in `/metrics`.
    pub fn route(self) -> Option<&'static str> {
        match self {
            Kind::Heartbeat => Some("heartbeat"),
            Kind::Register => Some("register"),
            Kind::Workers => Some("coordinator_workers"),
            Kind::Broadcast => Some("broadcast"),
            Kind::Llm => Some("inference_llm"),
            Kind::Get | Kind::Completion | Kind::Churn => None,
        }
    }
}

impl FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.trim() {
            "heartbeat" | "hb" => Kind::Heartbeat,
            "register" => Kind::Register,
            "workers" | "list" => Kind::Workers,
            "broadcast" => Kind::Broadcast,
            "get" => Kind::Get,
            "llm" => Kind::Llm,
            "churn" => Kind::Churn,
            other => {
                return Err(format!(
                    "unknown request kind {other:?} \
                     (heartbeat, register, workers, broadcast, get; soak also: llm, churn)"
                ))
            }
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Parses `heartbeat=90,workers=8,register=2` into kinds with weights.
pub fn parse_mix(s: &str) -> Result<Vec<(Kind, u32)>, String> {
    let mut out: Vec<(Kind, u32)> = Vec::new();
    for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (k, w) = term
            .split_once('=')
            .ok_or_else(|| format!("{term:?}: expected kind=weight"))?;
        let kind: Kind = k.parse()?;
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("{term:?}: weight must be a whole number"))?;
        if out.iter().any(|(x, _)| *x == kind) {
            return Err(format!("{kind} listed twice in the mix"));
        }
        if w > 0 {
            out.push((kind, w));
        }
    }
    if out.is_empty() {
        return Err("the mix has no kind with a weight > 0".into());
    }
    Ok(out)
}

/// Worker id `n` of a run (`prefix` keeps runs and kinds apart).
pub fn worker_id(prefix: &str, n: usize) -> String {
    format!("{prefix}-{n:06}")
}

/// A registration body for worker `n`: gpu, cpu and storage agents in the
/// local shape and, one in four, size-only capabilities as the service
/// coordinator's agents send (with an id, so re-runs replace rather than
/// grow the registry).
pub fn register_body(id: &str, n: usize) -> Vec<u8> {
    let v = match n % 4 {
        0 => json!({
            "worker_id": id,
            "tunnel_url": format!("https://{id}.tunnel.example.net"),
            "vpn_ip": format!("10.8.{}.{}", (n / 250) % 250, n % 250 + 1),
            "capabilities": {
                "hostname": id, "cpu_cores": 16, "has_gpu": true, "gpu_type": "NVIDIA RTX 4090",
                "gpu_memory": "24GB", "worker_type": "gpu", "has_public_ip": false,
                "low_latency": true, "latency_ms": 12, "ram": "64GB"
            },
            "services": [{"name": "llm-inference", "port": 8105}],
            "containers": []
        }),
        1 | 2 => json!({
            "worker_id": id,
            "tunnel_url": format!("https://{id}.tunnel.example.net"),
            "capabilities": {
                "hostname": id, "cpu_cores": 8, "has_gpu": false, "worker_type": "cpu",
                "has_public_ip": false, "ram": "16GB"
            }
        }),
        _ => json!({
            "worker_id": id,
            "ip_address": format!("10.9.{}.{}", (n / 250) % 250, n % 250 + 1),
            "capabilities": {
                "cpu_cores": 32, "ram": "128 GiB", "gpu_memory": "24576MB",
                "gpu_type": "NVIDIA A10", "gpu_driver": "550.54", "storage": "2TB",
                "network_bandwidth": "10Gbps"
            }
        }),
    };
    serde_json::to_vec(&v).expect("JSON value serialises")
}

/// A heartbeat body for worker `id`; `n` varies the reported figures.
pub fn heartbeat_body(id: &str, n: usize) -> Vec<u8> {
    heartbeat_body_with(id, n, status_of(n))
}

/// The status worker `n` reports: one in ten is busy.
fn status_of(n: usize) -> &'static str {
    if n % 10 == 9 {
        "busy"
    } else {
        "healthy"
    }
}

/// One heartbeat request per worker `prefix-000000..`, worker `n`
/// reporting `status(n)`.
fn heartbeats(
    host: &str,
    prefix: &str,
    workers: usize,
    status: impl Fn(usize) -> &'static str,
) -> Vec<Vec<u8>> {
    (0..workers)
        .map(|n| {
            let id = worker_id(prefix, n);
            let body = heartbeat_body_with(&id, n, status(n));
            build_request("POST", host, "/api/worker/heartbeat", Some(&body))
        })
        .collect()
}

/// A heartbeat body for worker `id` reporting `status`.
pub fn heartbeat_body_with(id: &str, n: usize, status: &str) -> Vec<u8> {
    let v = json!({
        "worker_id": id,
        "status": status,
        "current_load": (n % 100) as f64 / 100.0,
        "available_memory": format!("{}.5GB", 4 + n % 12),
        "loaded_models": ["llama3-8b-instruct", "nomic-embed-text"],
        "active_requests": n % 7,
        "gpu_utilization": (n % 97) as f64,
        "services_status": {"llm-inference": "running", "rag-embeddings": "running"},
        "specialization": "general"
    });
    serde_json::to_vec(&v).expect("JSON value serialises")
}

/// Registration of a worker that really serves `services` at `endpoint`
/// (the `proxy` scenario's simulated worker, the `tasks` scenario's
/// pseudo-workers). It registers as a storage machine, as the test
/// simulator does, so the catalog assigns it nothing it cannot serve; the
/// declared services make it routable and give it their task queues.
pub fn serving_register_body(
    id: &str,
    endpoint: Option<&str>,
    services: &[&str],
    port: Option<u16>,
) -> Vec<u8> {
    let services: Vec<serde_json::Value> = services
        .iter()
        .map(|name| match port {
            Some(p) => json!({"name": name, "port": p}),
            None => json!({"name": name}),
        })
        .collect();
    let mut v = json!({
        "worker_id": id,
        "capabilities": {"hostname": id, "has_storage": true, "worker_type": "storage", "ram": "16GB"},
        "services": services,
    });
    if let Some(e) = endpoint {
        v["tunnel_url"] = json!(e);
    }
    serde_json::to_vec(&v).expect("JSON value serialises")
}

/// The model the `proxy` scenario asks for: one `heartbeat_body` reports as
/// loaded, so the router's model-aware step keeps the simulated worker.
pub const LLM_MODEL: &str = "llama3-8b-instruct";

/// A small completion request, with the defaults the coordinator would add
/// already filled in, so the worker receives the same JSON whether it comes
/// through the coordinator or straight from loadgen.
pub fn llm_body() -> Vec<u8> {
    let v = json!({
        "model": LLM_MODEL,
        "prompt": "Say hello in one word.",
        "max_tokens": 16,
        "temperature": 0.7
    });
    serde_json::to_vec(&v).expect("JSON value serialises")
}

pub fn broadcast_body(n: usize) -> Vec<u8> {
    let v = json!({
        "job_type": "model_update",
        "job_data": {"model": "llama3-8b-instruct", "revision": n},
        "required_capability": "has_gpu"
    });
    serde_json::to_vec(&v).expect("JSON value serialises")
}

/// Requests of one kind, ready to send; a connection cycles through them.
#[derive(Debug, Clone)]
pub struct Pool {
    pub kind: Kind,
    pub requests: Vec<Vec<u8>>,
    /// `--status-flip-every`: a second version of every request, sent in
    /// turns with the first (heartbeats only).
    pub flip: Option<Arc<Flip>>,
    /// Sent in order, one cursor shared by every connection (churn: an id
    /// is unregistered only after its registration went out), instead of
    /// at each connection's own position.
    pub sequential: Option<Arc<AtomicU64>>,
}

/// Heartbeats whose status changes every `every`-th heartbeat of each
/// worker, "healthy" then "busy" then "healthy": the server emits a
/// `worker.state` event exactly on each change, so the event rate is the
/// heartbeat rate / `every`. The count is per worker and shared by all
/// connections (a worker's heartbeats come from several), so the status
/// sequence the server sees is the intended one as long as two heartbeats
/// of one worker are not in flight at once (a worker's turns come
/// milliseconds apart at any realistic rate and worker count).
#[derive(Debug)]
pub struct Flip {
    every: u64,
    /// The "busy" version of each request (the pool's own say "healthy").
    busy: Vec<Vec<u8>>,
    /// Heartbeats handed out per worker so far.
    sent: Vec<AtomicU64>,
}

impl Pool {
    /// `requests` of `kind`, each connection at its own position.
    pub fn of(kind: Kind, requests: Vec<Vec<u8>>) -> Pool {
        Pool {
            kind,
            requests,
            flip: None,
            sequential: None,
        }
    }

    /// The same requests sent in order, one cursor for every connection.
    pub fn in_turn(self) -> Pool {
        Pool {
            sequential: Some(Arc::new(AtomicU64::new(0))),
            ..self
        }
    }

    /// Heartbeats that alternate "healthy" and "busy" every `every`-th
    /// heartbeat of each worker (see [`Flip`]).
    pub fn flipping_heartbeats(host: &str, prefix: &str, workers: usize, every: u64) -> Pool {
        let workers = workers.max(1);
        Pool {
            kind: Kind::Heartbeat,
            requests: heartbeats(host, prefix, workers, |_| "healthy"),
            flip: Some(Arc::new(Flip {
                every: every.max(1),
                busy: heartbeats(host, prefix, workers, |_| "busy"),
                sent: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            })),
            sequential: None,
        }
    }

    /// Churn over `ids` ids `prefix-c-..` (all registered beforehand, see
    /// [`churn_ids`]): the registration of id `i`, then the unregistration
    /// of id `i + ids/2`, for every `i` in turn. An id is unregistered half
    /// a cycle (`ids` requests) after its registration went out and
    /// registered again half a cycle after that, so with fewer requests
    /// than that in flight every request finds the state it expects (200,
    /// never 404), and the registry keeps its size.
    pub fn churn(host: &str, prefix: &str, ids: usize) -> Pool {
        let ids = ids.max(2);
        let names = churn_ids(prefix, ids);
        let mut requests = Vec::with_capacity(2 * ids);
        for (i, id) in names.iter().enumerate() {
            requests.push(build_request(
                "POST",
                host,
                "/api/worker/register",
                Some(&register_body(id, i)),
            ));
            let gone = &names[(i + ids / 2) % ids];
            requests.push(build_request(
                "DELETE",
                host,
                &format!("/api/worker/unregister/{gone}"),
                None,
            ));
        }
        Pool::of(Kind::Churn, requests).in_turn()
    }
}

/// The id prefix of the `register` pool's workers (`pool`), registered the
/// way `register_workers` does.
pub fn register_prefix(prefix: &str) -> String {
    format!("{prefix}-r")
}

/// The id prefix of a churn pool's workers: ids `churn_prefix(p)-000000..`
/// with `register_body(id, n)`, as `register_workers` registers them.
pub fn churn_prefix(prefix: &str) -> String {
    format!("{prefix}-c")
}

/// The ids a churn pool cycles over.
pub fn churn_ids(prefix: &str, ids: usize) -> Vec<String> {
    let prefix = churn_prefix(prefix);
    (0..ids.max(2)).map(|n| worker_id(&prefix, n)).collect()
}

/// Builds the request pool of a kind.
///
/// `workers` is how many pre-registered workers heartbeats spread over
/// (ids `prefix-000000..`); registrations rotate over as many ids of their
/// own (`prefix-r-..`) so a long register run replaces, not grows.
pub fn pool(kind: Kind, host: &str, prefix: &str, workers: usize, path: &str) -> Pool {
    let workers = workers.max(1);
    let requests = match kind {
        Kind::Heartbeat => heartbeats(host, prefix, workers, status_of),
        Kind::Register => {
            let prefix = register_prefix(prefix);
            (0..workers)
                .map(|n| {
                    let id = worker_id(&prefix, n);
                    build_request(
                        "POST",
                        host,
                        "/api/worker/register",
                        Some(&register_body(&id, n)),
                    )
                })
                .collect()
        }
        Kind::Workers => vec![build_request("GET", host, "/api/coordinator/workers", None)],
        Kind::Broadcast => (0..16)
            .map(|n| {
                build_request(
                    "POST",
                    host,
                    "/api/coordinator/broadcast-job",
                    Some(&broadcast_body(n)),
                )
            })
            .collect(),
        Kind::Get => vec![build_request("GET", host, path, None)],
        Kind::Llm => vec![build_request(
            "POST",
            host,
            "/api/inference/llm",
            Some(&llm_body()),
        )],
        Kind::Completion => vec![build_request(
            "POST",
            host,
            "/v1/completions",
            Some(&llm_body()),
        )],
        Kind::Churn => return Pool::churn(host, prefix, workers),
    };
    Pool::of(kind, requests)
}

/// A weighted choice among pools, driven by a per-connection generator.
#[derive(Debug, Clone)]
pub struct Mix {
    pools: Vec<Pool>,
    /// Cumulative weights, same order as `pools`.
    cumulative: Vec<u32>,
}

impl Mix {
    pub fn new(weighted: Vec<(Pool, u32)>) -> Self {
        let mut acc = 0;
        let mut pools = Vec::new();
        let mut cumulative = Vec::new();
        for (p, w) in weighted {
            acc += w;
            pools.push(p);
            cumulative.push(acc);
        }
        Self { pools, cumulative }
    }

    #[cfg(test)]
    pub fn single(p: Pool) -> Self {
        Self::new(vec![(p, 1)])
    }

    /// Picks a request for draw `r` (any u64) and sequence number `seq`:
    /// (pool index, request index).
    pub fn pick_index(&self, r: u64, seq: u64) -> (usize, usize) {
        let total = *self.cumulative.last().unwrap_or(&1) as u64;
        let x = (r % total) as u32;
        let i = self
            .cumulative
            .partition_point(|c| *c <= x)
            .min(self.pools.len() - 1);
        let pool = &self.pools[i];
        let n = pool.requests.len() as u64;
        let seq = match &pool.sequential {
            Some(cursor) => cursor.fetch_add(1, Ordering::Relaxed),
            None => seq,
        };
        (i, (seq % n) as usize)
    }

    /// Which version of a picked request to send now (0 unless its pool
    /// flips): call once per request sent.
    pub fn variant(&self, pool: usize, req: usize) -> u8 {
        match &self.pools[pool].flip {
            None => 0,
            Some(f) => {
                let n = f.sent[req].fetch_add(1, Ordering::Relaxed);
                ((n / f.every) % 2) as u8
            }
        }
    }

    /// The kind and bytes of version `variant` of a picked request.
    pub fn get(&self, pool: usize, req: usize, variant: u8) -> (Kind, &[u8]) {
        let p = &self.pools[pool];
        let bytes = match (&p.flip, variant) {
            (Some(f), 1) => &f.busy[req],
            _ => &p.requests[req],
        };
        (p.kind, bytes)
    }

    /// Kind and bytes for draw `r` and sequence number `seq`.
    #[cfg(test)]
    pub fn pick(&self, r: u64, seq: u64) -> (Kind, &[u8]) {
        let (p, q) = self.pick_index(r, seq);
        self.get(p, q, 0)
    }
}

/// xorshift64*: a cheap per-connection generator for the mix.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_rejects() {
        assert_eq!(
            parse_mix("heartbeat=90, workers=8,register=2").unwrap(),
            vec![
                (Kind::Heartbeat, 90),
                (Kind::Workers, 8),
                (Kind::Register, 2)
            ]
        );
        assert!(parse_mix("heartbeat").is_err());
        assert!(parse_mix("heartbeat=x").is_err());
        assert!(parse_mix("fly=1").is_err());
        assert!(parse_mix("heartbeat=0").is_err());
        assert!(parse_mix("heartbeat=1,hb=2").is_err());
    }

    #[test]
    fn mix_follows_weights() {
        let p = |k: Kind| Pool::of(k, vec![k.name().as_bytes().to_vec()]);
        let m = Mix::new(vec![(p(Kind::Heartbeat), 90), (p(Kind::Workers), 10)]);
        let mut rng = Rng::new(7);
        let n = 100_000;
        let hb = (0..n)
            .filter(|i| m.pick(rng.next_u64(), *i).0 == Kind::Heartbeat)
            .count();
        let share = hb as f64 / n as f64;
        assert!((0.88..0.92).contains(&share), "{share}");
        // Exact boundaries: draws 0..89 heartbeat, 90..99 workers.
        assert_eq!(m.pick(89, 0).0, Kind::Heartbeat);
        assert_eq!(m.pick(90, 0).0, Kind::Workers);
        assert_eq!(m.pick(199, 0).0, Kind::Workers);
    }

    #[test]
    fn bodies_are_what_agents_send() {
        let hb: serde_json::Value = serde_json::from_slice(&heartbeat_body("w-1", 9)).unwrap();
        assert_eq!(hb["worker_id"], "w-1");
        assert_eq!(hb["status"], "busy");
        let kinds: Vec<serde_json::Value> = (0..4)
            .map(|n| serde_json::from_slice(&register_body("w", n)).unwrap())
            .collect();
        assert_eq!(kinds[0]["capabilities"]["has_gpu"], true);
        assert_eq!(kinds[1]["capabilities"]["worker_type"], "cpu");
        assert_eq!(kinds[3]["capabilities"]["gpu_memory"], "24576MB");
        assert!(kinds.iter().all(|k| k["worker_id"] == "w"));
    }

    #[test]
    fn pools_cycle_over_workers() {
        let p = pool(Kind::Heartbeat, "h", "lg", 3, "/");
        assert_eq!(p.requests.len(), 3);
        let m = Mix::single(p);
        let (_, r) = m.pick(0, 4);
        assert!(String::from_utf8_lossy(r).contains("lg-000001"));
    }

    #[test]
    fn churn_unregisters_only_what_it_registered_half_a_cycle_before() {
        let m = Mix::single(Pool::churn("h", "lg", 4));
        let line = |seq: u64| -> String {
            let (_, bytes) = m.pick(0, seq);
            let text = String::from_utf8_lossy(bytes).to_string();
            let first = text.lines().next().unwrap().to_string();
            match first.split(' ').nth(1).unwrap() {
                "/api/worker/register" => {
                    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
                    let v: serde_json::Value = serde_json::from_str(body).unwrap();
                    format!("+{}", v["worker_id"].as_str().unwrap())
                }
                path => format!("-{}", path.rsplit('/').next().unwrap()),
            }
        };
        // The connection's own sequence number does not matter: one shared
        // cursor walks the cycle in order.
        let seen: Vec<String> = [9, 0, 5, 5, 1, 7, 3, 2, 8]
            .iter()
            .map(|&s| line(s))
            .collect();
        assert_eq!(
            seen,
            [
                "+lg-c-000000",
                "-lg-c-000002",
                "+lg-c-000001",
                "-lg-c-000003",
                "+lg-c-000002",
                "-lg-c-000000",
                "+lg-c-000003",
                "-lg-c-000001",
                "+lg-c-000000",
            ]
        );
        assert_eq!(churn_ids("lg", 4).len(), 4);
    }

    #[test]
    fn flips_change_status_every_kth_heartbeat_of_a_worker() {
        let m = Mix::single(Pool::flipping_heartbeats("h", "lg", 2, 2));
        let status = |v: u8| -> String {
            let bytes = m.get(0, 1, v).1;
            let body = &bytes[bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["worker_id"], "lg-000001");
            v["status"].as_str().unwrap().to_string()
        };
        let seq: Vec<String> = (0..8).map(|_| status(m.variant(0, 1))).collect();
        assert_eq!(
            seq,
            ["healthy", "healthy", "busy", "busy", "healthy", "healthy", "busy", "busy"]
        );
        // Worker 0 keeps its own count.
        assert_eq!(m.variant(0, 0), 0);
        // Without a flip every request is sent as built.
        let plain = Mix::single(pool(Kind::Heartbeat, "h", "lg", 2, "/"));
        assert_eq!(plain.variant(0, 1), 0);
        assert_eq!(plain.get(0, 1, 1).1, plain.pick(0, 1).1);
    }
}
