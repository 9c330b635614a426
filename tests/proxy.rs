//! Inference routing and the proxy over real HTTP: a coordinator with
//! several shards in front of simulated workers (tests/sim) on loopback.

mod common;
mod sim;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use coordinator::model::credential::{ApiKey, Role};
use serde_json::json;
use sim::{assert_streamed_from, worker_of, Mode, Sim, AGENT_DETAIL};

fn sims(s: &TestServer, prefix: &str, n: usize, services: &[&str]) -> Vec<Sim> {
    (0..n)
        .map(|i| {
            let sim = Sim::start(&id_on_shard(
                &format!("{prefix}{i}"),
                i % s.shards,
                s.shards,
            ));
            register(s.addr, &sim.registration(services));
            sim
        })
        .collect()
}

fn llm(c: &mut Conn, model: &str, headers: &[(&str, &str)]) -> Resp {
    let body = serde_json::to_vec(&json!({"model": model, "prompt": "hi"})).unwrap();
    c.request("POST", "/api/inference/llm", headers, Some(&body))
}

#[test]
fn no_worker_is_503_and_llm_is_model_aware() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let mut c = Conn::open(s.addr);
    let r = llm(&mut c, "llama3", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.detail(),
        "No healthy worker available for service: llm-inference"
    );
    let ws = sims(&s, "ma", 2, &["llm-inference"]);
    heartbeat(s.addr, &ws[0].heartbeat(&["llama3"], 3));
    heartbeat(s.addr, &ws[1].heartbeat(&["mistral"], 0));
    for _ in 0..20 {
        let r = llm(&mut c, "llama3", &[]);
        assert_eq!(worker_of(&r), ws[0].id, "has the model, though busier");
        let req = &r.json()["request"];
        assert_eq!(req["max_tokens"], 512);
        assert_eq!(req["temperature"], 0.7);
        assert_eq!(worker_of(&llm(&mut c, "mistral", &[])), ws[1].id);
    }
    // A model nobody has goes to the least busy.
    assert_eq!(worker_of(&llm(&mut c, "phi", &[])), ws[1].id);
    let r = c.request(
        "POST",
        "/api/inference/llm",
        &[],
        Some(b"{\"prompt\":\"x\"}"),
    );
    assert_eq!(r.status, 422);
    assert!(r.detail().contains("model"));
}

#[test]
fn vision_rag_and_graph_reach_their_worker_paths() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let ocr = &sims(&s, "vo", 1, &["vision-ocr"])[0];
    let rag = &sims(&s, "rg", 1, &["rag-embeddings"])[0];
    let ner = &sims(&s, "nr", 1, &["ner-extraction"])[0];
    let mut c = Conn::open(s.addr);
    let body =
        serde_json::to_vec(&json!({"model": "llava", "prompt": "what?", "max_tokens": 9})).unwrap();
    let r = c.request("POST", "/api/inference/vision", &[], Some(&body));
    assert_eq!(worker_of(&r), ocr.id);
    assert_eq!(r.json()["request"]["options"]["num_predict"], 9);
    assert_eq!(r.json()["request"]["stream"], false);
    let r = c.request(
        "POST",
        "/api/inference/rag/query?query=a%20b&context=c",
        &[],
        None,
    );
    assert_eq!(worker_of(&r), rag.id);
    assert_eq!(r.json()["path"], "/query");
    assert_eq!(r.json()["query"], "query=a%20b&context=c");
    let r = c.request(
        "POST",
        "/api/inference/graph/extract?text=Alice+met+Bob",
        &[],
        None,
    );
    assert_eq!(worker_of(&r), ner.id);
    assert_eq!(r.json()["path"], "/extract");
    assert_eq!(r.json()["query"], "text=Alice%20met%20Bob");
    assert_eq!(
        c.request("POST", "/api/inference/rag/query", &[], None)
            .status,
        422
    );
}

#[test]
fn generic_proxy_forwards_method_query_headers_and_body() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let w = &sims(&s, "gp", 1, &["notes-coa"])[0];
    let mut c = Conn::open(s.addr);
    let r = c.request(
        "PATCH",
        "/service/notes/v1/items/7?x=1&y=two",
        &[
            ("X-Custom", "yes"),
            ("Connection", "keep-alive, X-Drop"),
            ("X-Drop", "1"),
            ("X-Forwarded-For", "9.9.9.9"),
        ],
        Some(b"{\"a\":1}"),
    );
    assert_eq!(worker_of(&r), w.id);
    let e = r.json();
    assert_eq!(e["method"], "PATCH");
    assert_eq!(e["path"], "/v1/items/7");
    assert_eq!(e["query"], "x=1&y=two");
    assert_eq!(e["body"], "{\"a\":1}");
    assert_eq!(e["headers"]["x-custom"], "yes");
    assert!(e["headers"].get("x-drop").is_none(), "{e}");
    assert_eq!(e["headers"]["x-forwarded-for"], "9.9.9.9, 127.0.0.1");
    assert_eq!(e["headers"]["host"], w.addr.to_string());
    // Keep-alive through the proxy: many requests, few upstream connections.
    for _ in 0..20 {
        assert_eq!(c.get("/service/notes-coa/ping").status, 200);
    }
    let m = c.get("/metrics").text();
    let opened = sum_samples(&m, "coordinator_proxy_connections_opened_total{");
    assert!(
        (1.0..=2.0).contains(&opened),
        "21 requests opened {opened} connections"
    );
    // A name that is neither in the catalog nor declared by any worker is
    // unknown: 404 (before: 503), so random names create no state.
    let r = c.get("/service/nobody-serves-this/x");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.detail(), "Service 'nobody-serves-this' not found");
    // A catalog service nobody serves is still a 503.
    assert_eq!(c.get("/service/llm/x").status, 503);
}

#[test]
fn least_outstanding_spreads_within_20_percent_over_1000_requests() {
    let s = start(2, |_| {});
    let ws = sims(&s, "lo", 3, &["svc-lo"]);
    let addr = s.addr;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut seen: HashMap<String, u32> = HashMap::new();
                for _ in 0..250 {
                    *seen
                        .entry(worker_of(&c.get("/service/svc-lo/work")))
                        .or_default() += 1;
                }
                seen
            })
        })
        .collect();
    let mut total: HashMap<String, u32> = HashMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    assert_eq!(total.values().sum::<u32>(), 1000);
    let mean = 1000.0 / 3.0;
    for w in &ws {
        let n = total.get(&w.id).copied().unwrap_or(0) as f64;
        assert!((n - mean).abs() <= 0.2 * mean, "{total:?}");
    }
}

#[test]
fn a_dying_worker_causes_no_client_errors_for_idempotent_requests() {
    let s = start(2, |c| c.route_cache_ttl = Duration::from_millis(100));
    let ws = sims(&s, "fo", 2, &["svc-fo"]);
    let mut conns: Vec<Conn> = (0..4).map(|_| Conn::open(s.addr)).collect();
    for i in 0..200 {
        if i == 50 {
            ws[0].kill();
        }
        let c = &mut conns[i % 4];
        let r = c.get("/service/svc-fo/item");
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        if i > 60 {
            assert_eq!(worker_of(&r), ws[1].id);
        }
    }
    // Not sent = safe to retry even for POST: a refused connect fails over.
    let r = conns[0].request("POST", "/service/svc-fo/create", &[], Some(b"{}"));
    assert_eq!(worker_of(&r), ws[1].id);
    ws[1].kill();
    let r = conns[0].get("/service/svc-fo/item");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.detail().starts_with("Worker request failed"),
        "{}",
        r.detail()
    );
}

#[test]
fn a_failing_worker_cools_down_and_comes_back() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.route_cooldown = Duration::from_millis(700);
    });
    let ws = sims(&s, "cd", 2, &["svc-cd"]);
    ws[0].set(Mode::Fail);
    // One connection = one shard (cooldowns are per shard).
    let mut c = Conn::open(s.addr);
    while ws[0].hits() == 0 {
        // GET is idempotent: the 500 is retried on the other worker.
        assert_eq!(worker_of(&c.get("/service/svc-cd/x")), ws[1].id);
    }
    ws[0].set(Mode::Ok);
    let before = ws[0].hits();
    for _ in 0..20 {
        assert_eq!(worker_of(&c.get("/service/svc-cd/x")), ws[1].id);
    }
    assert_eq!(ws[0].hits(), before, "cooling worker got traffic");
    let m = c.get("/metrics").text();
    assert!(m.contains("coordinator_route_cooldowns{"), "{m}");
    std::thread::sleep(Duration::from_millis(800));
    let back = (0..40).any(|_| worker_of(&c.get("/service/svc-cd/x")) == ws[0].id);
    assert!(back, "worker never came back after its cooldown");
    // A non-idempotent request that got a 5xx is not retried: the
    // worker's own answer goes back.
    ws[0].set(Mode::Fail);
    ws[1].set(Mode::Fail);
    let r = c.request("POST", "/service/svc-cd/x", &[], Some(b"{}"));
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(r.detail(), "simulated failure");
}

#[test]
fn a_stalled_worker_is_a_504() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.proxy_request_timeout = Duration::from_millis(300);
    });
    let w = &sims(&s, "sl", 1, &["svc-sl"])[0];
    w.set(Mode::Stall(Duration::from_secs(2)));
    let r = call(s.addr, "POST", "/service/svc-sl/slow", Some(&json!({})));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.detail().contains("timed out"), "{}", r.detail());
}

#[test]
fn sessions_stick_to_one_worker_across_shards() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let ws = sims(&s, "sa", 3, &["llm-inference"]);
    let mut homes = std::collections::HashSet::new();
    for i in 0..12 {
        let sid = format!("session-{i}");
        let mut first = None;
        for shard in 0..2 {
            let mut c = conn_on_shard(s.addr, shard);
            for _ in 0..3 {
                let w = worker_of(&llm(&mut c, "m", &[("X-Session-Id", &sid)]));
                assert_eq!(first.get_or_insert(w.clone()), &w, "{sid} moved");
            }
        }
        homes.insert(first.unwrap());
    }
    assert!(homes.len() >= 2, "sessions all on one worker: {homes:?}");
    let _ = ws;
}

#[test]
fn admin_pins_steer_a_service_and_can_be_removed() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let ws = sims(&s, "pn", 3, &["svc-pn"]);
    let r = call(
        s.addr,
        "PUT",
        "/api/admin/pins",
        Some(&json!({"service": "svc-pn", "workers": [ws[2].id]})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    for shard in 0..2 {
        let mut c = conn_on_shard(s.addr, shard);
        let pins = c.get("/api/admin/pins").json();
        assert_eq!(pins["pins"][0]["workers"][0], ws[2].id.as_str());
        for _ in 0..10 {
            assert_eq!(worker_of(&c.get("/service/svc-pn/x")), ws[2].id);
        }
    }
    let r = call(s.addr, "DELETE", "/api/admin/pins?service=svc-pn", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["count"], 0);
    assert_eq!(
        call(s.addr, "DELETE", "/api/admin/pins?service=svc-pn", None).status,
        404
    );
    let r = call(
        s.addr,
        "PUT",
        "/api/admin/pins",
        Some(&json!({"service": "x"})),
    );
    assert_eq!(r.status, 422);
    let mut c = Conn::open(s.addr);
    let spread: std::collections::HashSet<String> = (0..40)
        .map(|_| worker_of(&c.get("/service/svc-pn/x")))
        .collect();
    assert!(spread.len() > 1, "still pinned: {spread:?}");
}

#[test]
fn streamed_completions_arrive_token_by_token() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let w = &sims(&s, "sse", 1, &["llm-inference"])[0];
    assert_streamed_from(s.addr, &w.id);
}

#[test]
fn proxy_metrics_are_exported() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let _w = sims(&s, "mx", 1, &["svc-mx"]);
    let mut c = Conn::open(s.addr);
    for _ in 0..3 {
        assert_eq!(c.get("/service/svc-mx/a").status, 200);
    }
    // Unknown names are 404 and not counted; a catalog service with no
    // worker (here `llm-inference`) is the 503 counted as no_worker.
    assert_eq!(c.get("/service/none/a").status, 404);
    assert_eq!(c.get("/service/llm/a").status, 503);
    let m = c.get("/metrics").text();
    let count = |needle: &str| sum_samples(&m, needle);
    assert_eq!(
        count("coordinator_routed_requests_total{service=\"svc-mx\",outcome=\"ok\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(
        count("coordinator_routed_requests_total{service=\"llm-inference\",outcome=\"no_worker\"}"),
        1.0
    );
    assert!(!m.contains("service=\"none\""), "{m}");
    assert_eq!(count("coordinator_upstream_latency_seconds_count"), 3.0);
}

#[test]
fn a_registration_is_routable_on_every_shard_as_soon_as_it_is_acknowledged() {
    // A cache that never expires in this test: only the registration itself
    // can make a new worker visible.
    let s = start(2, |c| c.route_cache_ttl = Duration::from_secs(600));
    let mut conns = [conn_on_shard(s.addr, 0), conn_on_shard(s.addr, 1)];
    // Nobody serves it yet: 503 on both shards, and "nobody" is not kept.
    for c in conns.iter_mut() {
        assert_eq!(llm(c, "m", &[]).status, 503);
    }
    let a = sims(&s, "rw-a", 1, &["llm-inference"]);
    heartbeat(s.addr, &a[0].heartbeat(&["m"], 5));
    for c in conns.iter_mut() {
        assert_eq!(worker_of(&llm(c, "m", &[])), a[0].id);
    }
    // Both shards now hold a list of one. A second, idle worker is the
    // choice for a model nobody has, from the first request on.
    let b = sims(&s, "rw-b", 1, &["llm-inference"]);
    for c in conns.iter_mut() {
        assert_eq!(worker_of(&llm(c, "other", &[])), b[0].id);
    }
}

/// The sample of a `/metrics` text whose line starts with `series` (summed
/// over shards).
fn metric(c: &mut Conn, series: &str) -> f64 {
    sum_samples(&c.get("/metrics").text(), series)
}

/// What a worker in `Mode::Answer` sent, checked on the client's side.
fn assert_relayed(r: &Resp, status: u16, worker: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("x-agent-error"), Some(worker), "{:?}", r.headers);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), json!({"detail": AGENT_DETAIL, "worker": worker}));
}

#[test]
fn a_workers_own_error_is_relayed_unchanged_and_counted() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.route_cooldown = Duration::from_secs(600);
    });
    let w = &sims(&s, "ae", 1, &["svc-ae", "llm-inference"])[0];
    w.set(Mode::Answer(503));
    for shard in 0..2 {
        let mut c = conn_on_shard(s.addr, shard);
        // POST: not retried; the answer goes back as the worker sent it.
        let r = c.request("POST", "/service/svc-ae/v1/join", &[], Some(b"{}"));
        assert_relayed(&r, 503, &w.id);
        // The inference routes relay it too.
        assert_relayed(&llm(&mut c, "m", &[]), 503, &w.id);
        // GET: retried, but nobody else serves it, so the 503 goes back
        // (not a 502 of ours).
        assert_relayed(&c.get("/service/svc-ae/status"), 503, &w.id);
        // Any status: a 4xx was always relayed, and still is.
        w.set(Mode::Answer(409));
        assert_relayed(&c.get("/service/svc-ae/status"), 409, &w.id);
        w.set(Mode::Answer(503));
    }
    let mut c = Conn::open(s.addr);
    let routed = |c: &mut Conn, svc: &str, outcome: &str| {
        metric(
            c,
            &format!(
                "coordinator_routed_requests_total{{service=\"{svc}\",outcome=\"{outcome}\"}}"
            ),
        )
    };
    assert_eq!(routed(&mut c, "svc-ae", "upstream_5xx"), 4.0);
    assert_eq!(routed(&mut c, "svc-ae", "ok"), 2.0, "the 409s");
    assert_eq!(routed(&mut c, "llm-inference", "upstream_5xx"), 2.0);
    assert_eq!(routed(&mut c, "svc-ae", "bad_gateway"), 0.0);
    let attempts = format!(
        "coordinator_upstream_attempts_total{{worker=\"{}\",outcome=\"upstream_5xx\"}}",
        w.id
    );
    assert_eq!(metric(&mut c, &attempts), 6.0);
    // The 5xx cooled the worker on both shards, as before.
    assert_eq!(metric(&mut c, "coordinator_route_cooldowns{"), 2.0);
}

#[test]
fn failover_still_works_and_only_no_answer_at_all_is_ours() {
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.proxy_request_timeout = Duration::from_millis(500);
    });
    let ws = sims(&s, "fv", 2, &["svc-fv"]);
    let (bad, good) = (&ws[0], &ws[1]);
    bad.set(Mode::Answer(503));
    // Idempotent: the 503 is retried on the other worker, which answers.
    for shard in 0..2 {
        let mut c = conn_on_shard(s.addr, shard);
        for _ in 0..10 {
            assert_eq!(worker_of(&c.get("/service/svc-fv/item")), good.id);
            let r = c.request("PUT", "/service/svc-fv/item", &[], Some(b"{}"));
            assert_eq!(worker_of(&r), good.id);
        }
    }
    assert!(bad.hits() > 0, "the failing worker was never tried");
    let mut c = Conn::open(s.addr);
    assert!(
        metric(
            &mut c,
            "coordinator_routed_requests_total{service=\"svc-fv\",outcome=\"ok_after_retry\"}"
        ) > 0.0
    );
    // The other worker cannot be reached: the retry gets no answer, so the
    // first worker's answer is the best there is, for any method.
    good.kill();
    for shard in 0..2 {
        let mut c = conn_on_shard(s.addr, shard);
        assert_relayed(&c.get("/service/svc-fv/item"), 503, &bad.id);
        let r = c.request("POST", "/service/svc-fv/item", &[], Some(b"{}"));
        assert_relayed(&r, 503, &bad.id);
    }
    // Nobody answers: our own 502 (connect refused) ...
    bad.kill();
    let r = c.get("/service/svc-fv/item");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.detail().starts_with("Worker request failed"),
        "{}",
        r.detail()
    );
    assert!(r.header("x-agent-error").is_none());
    // ... and 504 for a worker that does not answer in time.
    let slow = &sims(&s, "fvs", 1, &["svc-fvs"])[0];
    slow.set(Mode::Stall(Duration::from_secs(2)));
    let r = c.request("POST", "/service/svc-fvs/x", &[], Some(b"{}"));
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(
        r.detail().starts_with("Worker request timed out"),
        "{}",
        r.detail()
    );
}

/// The service original's `/api/service/{name}/` names and the catalog
/// service each reaches.
const API_SERVICES: [(&str, &str); 7] = [
    ("upload", "document-processing"),
    ("rag", "rag-embeddings"),
    ("notes", "notes-coa"),
    ("ner", "ner-extraction"),
    ("client-rag", "client-rag"),
    ("doc-processor", "doc-processor"),
    ("frontend", "frontend"),
];

#[test]
fn api_service_routes_reach_a_worker_of_their_service() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    // A listed name nobody serves yet is a 503, as in the original.
    let r = get(s.addr, "/api/service/frontend/index.html");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.detail(),
        "No healthy worker available for service: frontend"
    );
    let workers: Vec<Sim> = API_SERVICES
        .iter()
        .enumerate()
        .map(|(i, (_, svc))| {
            let sim = Sim::start(&id_on_shard(&format!("as{i}"), i % s.shards, s.shards));
            register(s.addr, &sim.registration(&[svc]));
            sim
        })
        .collect();
    for shard in 0..2 {
        let mut c = conn_on_shard(s.addr, shard);
        for ((name, _), w) in API_SERVICES.iter().zip(&workers) {
            let r = c.request(
                "PATCH",
                &format!("/api/service/{name}/v1/items/7?x=1&y=two"),
                &[("X-Custom", "yes")],
                Some(b"{\"a\":1}"),
            );
            assert_eq!(worker_of(&r), w.id, "{name}");
            // The worker gets the path after the name, as the original sent
            // `{tunnel_url}/{path}`, with the query, headers and body.
            let e = r.json();
            assert_eq!(e["method"], "PATCH");
            assert_eq!(e["path"], "/v1/items/7", "{name}");
            assert_eq!(e["query"], "x=1&y=two");
            assert_eq!(e["body"], "{\"a\":1}");
            assert_eq!(e["headers"]["x-custom"], "yes");
        }
    }
    // Each worker saw only its own name's requests (`rag` did not reach
    // the client-rag worker, as the original's substring match would).
    for w in &workers {
        assert_eq!(w.hits(), 2, "{}", w.id);
    }
    // A worker's error comes back as it sent it, here too.
    workers[0].set(Mode::Answer(503));
    let r = Conn::open(s.addr).request("POST", "/api/service/upload/files", &[], Some(b"{}"));
    assert_relayed(&r, 503, &workers[0].id);
}

#[test]
fn api_service_refuses_other_names_and_needs_the_role_service_needs() {
    const WORKER_KEY: &str = "w0rker-k3y";
    let s = start(2, |c| {
        c.route_cache_ttl = Duration::ZERO;
        c.api_key = Some(ADMIN_KEY.into());
        c.keys = vec![
            ApiKey::new(CLIENT_KEY, Role::Client),
            ApiKey::new(WORKER_KEY, Role::Worker),
        ];
    });
    let w = Sim::start(&id_on_shard("ar", 1, s.shards));
    register_admin(s.addr, &w.registration(&["notes-coa"]));
    let status = |path: &str, key: Option<&str>| {
        let h: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
        Conn::open(s.addr)
            .request("POST", path, &h, Some(b"{}"))
            .status
    };
    let roles = [None, Some(WORKER_KEY), Some(CLIENT_KEY), Some(ADMIN_KEY)];
    let via_service: Vec<u16> = roles
        .iter()
        .map(|k| status("/service/notes/x", *k))
        .collect();
    let via_api: Vec<u16> = roles
        .iter()
        .map(|k| status("/api/service/notes/x", *k))
        .collect();
    assert_eq!(via_service, [401, 403, 200, 200]);
    assert_eq!(via_api, via_service);
    assert_eq!(w.hits(), 4);
    // Names the original did not proxy there: 404, JSON detail (a catalog
    // service included: `/service/` reaches those).
    let mut c = Conn::open(s.addr);
    for name in ["nope", "llm", "notes-coa", "Upload"] {
        let r = c.request(
            "GET",
            &format!("/api/service/{name}/x"),
            &[("X-API-Key", CLIENT_KEY)],
            None,
        );
        assert_eq!(r.status, 404, "{name}: {}", r.text());
        assert_eq!(r.detail(), format!("Service '{name}' not found"));
    }
    assert_eq!(status("/api/service/nope/x", None), 401);
    assert_eq!(w.hits(), 4);
}

#[test]
fn request_ids_are_echoed_and_passed_to_the_worker() {
    let s = start(2, |c| c.route_cache_ttl = Duration::ZERO);
    let w = &sims(&s, "rid", 1, &["notes-coa"])[0];
    let mut c = Conn::open(s.addr);
    // The client's id goes to the worker and comes back.
    let r = c.request(
        "GET",
        "/service/notes/x",
        &[("X-Request-Id", "edge-42")],
        None,
    );
    assert_eq!(worker_of(&r), w.id);
    assert_eq!(r.header("x-request-id"), Some("edge-42"));
    assert_eq!(r.json()["headers"]["x-request-id"], "edge-42");
    // Without one (or with an unusable one), the coordinator makes one,
    // and the worker sees the id the client is told.
    for sent in [None, Some("has space"), Some(&*"x".repeat(129))] {
        let headers: Vec<(&str, &str)> = sent.map(|v| ("X-Request-Id", v)).into_iter().collect();
        let r = c.request("GET", "/service/notes/x", &headers, None);
        let id = r
            .header("x-request-id")
            .expect("an id on every reply")
            .to_string();
        assert_ne!(Some(id.as_str()), sent);
        assert!(!id.is_empty() && id.len() <= 128, "{id}");
        assert_eq!(r.json()["headers"]["x-request-id"], id.as_str());
    }
    // Every reply has one, each its own, on every shard.
    let mut ids = std::collections::HashSet::new();
    for shard in 0..s.shards {
        let mut c = conn_on_shard(s.addr, shard);
        for _ in 0..5 {
            let r = c.get("/health");
            assert!(ids.insert(r.header("x-request-id").unwrap().to_string()));
        }
    }
    assert_eq!(ids.len(), 10);
}
