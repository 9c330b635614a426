//! `/graphql` over real HTTP with 2 shards: the same data as the REST
//! views for the same pool, pages that cover every worker once, mutations
//! visible through REST, the limits, and REST's roles per field.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

fn gql(c: &mut Conn, key: Option<&str>, query: &str, variables: Value) -> Value {
    let body = serde_json::to_vec(&json!({"query": query, "variables": variables})).unwrap();
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    let r = c.request("POST", "/graphql", &headers, Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn ok(v: &Value) -> &Value {
    assert!(v.get("errors").is_none(), "{v}");
    &v["data"]
}

const PAGE: &str = "query($after: String) { workers(first: 7, after: $after) {
    nodes { workerId workerType tier status assignedServices isHealthy currentLoad capabilities }
    pageInfo { endCursor hasNextPage } } }";

#[test]
fn graphql_answers_what_rest_answers() {
    let s = start(2, |_| {});
    for i in 0..23 {
        let body = if i % 3 == 0 {
            cpu_worker(&format!("c-{i}"))
        } else {
            gpu_worker(&format!("g-{i}"))
        };
        register(s.addr, &body);
    }
    heartbeat(
        s.addr,
        &json!({"worker_id": "g-1", "current_load": 0.5, "status": "busy"}),
    );
    let mut c = Conn::open(s.addr);

    // Pages of 7 cover every worker exactly once, in REST's order.
    let mut seen = Vec::new();
    let mut after = Value::Null;
    loop {
        let v = gql(&mut c, None, PAGE, json!({"after": after}));
        let w = &ok(&v)["workers"];
        let nodes = w["nodes"].as_array().unwrap();
        assert!(nodes.len() <= 7);
        seen.extend(nodes.iter().cloned());
        if !w["pageInfo"]["hasNextPage"].as_bool().unwrap() {
            assert!(w["pageInfo"]["endCursor"].is_null());
            break;
        }
        assert_eq!(nodes.len(), 7, "only the last page is short");
        after = w["pageInfo"]["endCursor"].clone();
    }
    let rest = walk_pages(&mut c, "/api/admin/workers?limit=7", "workers");
    assert_eq!(seen.len(), 23);
    let ids = |v: &[Value], k: &str| {
        v.iter()
            .map(|w| w[k].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&seen, "workerId"), ids(&rest, "worker_id"));
    assert_eq!(
        ids(&seen, "workerId")
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len(),
        23
    );
    for (g, r) in seen.iter().zip(&rest) {
        assert_eq!(g["tier"], r["tier"]);
        assert_eq!(g["workerType"], r["worker_type"]);
        assert_eq!(g["status"], r["status"]);
        assert_eq!(g["assignedServices"], r["assigned_services"]);
        assert_eq!(g["isHealthy"], r["is_healthy"]);
        assert_eq!(g["capabilities"], r["capabilities"]);
        assert_eq!(g["currentLoad"], r["current_load"]);
    }

    // One worker, the aggregates, the services: as REST has them.
    let v = gql(
        &mut c,
        None,
        "{ worker(id: \"g-1\") { workerId status currentLoad } nobody: worker(id: \"nope\") { workerId }
           stats { totalWorkers healthyWorkers totalTasksCompleted workersByTier }
           health { overallStatus totalWorkers }
           services { name workers workerCount } gaps { service healthyWorkers status } }",
        json!({}),
    );
    let d = ok(&v);
    assert_eq!(
        d["worker"],
        json!({"workerId": "g-1", "status": "busy", "currentLoad": 0.5})
    );
    assert!(d["nobody"].is_null());
    let stats = get(s.addr, "/api/admin/stats").json();
    assert_eq!(d["stats"]["totalWorkers"], stats["total_workers"]);
    assert_eq!(d["stats"]["healthyWorkers"], stats["healthy_workers"]);
    assert_eq!(d["stats"]["workersByTier"], stats["workers_by_tier"]);
    assert_eq!(
        d["health"]["overallStatus"],
        get(s.addr, "/api/admin/health").json()["overall_status"]
    );
    let services = get(s.addr, "/api/admin/services").json();
    let rest_services: Vec<Value> = services["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| json!({"name": x["name"], "workers": x["workers"], "workerCount": x["worker_count"]}))
        .collect();
    assert_eq!(d["services"], json!(rest_services));
    let gaps = get(s.addr, "/api/admin/gaps").json();
    assert_eq!(
        d["gaps"].as_array().unwrap().len(),
        gaps["gaps"].as_array().unwrap().len()
    );

    // The client's list: healthy workers only.
    let v = gql(&mut c, None, "{ workers(first: 1000, filter: {status: \"healthy\", tier: 2}) { nodes { workerId tier } } }", json!({}));
    let nodes = ok(&v)["workers"]["nodes"].as_array().unwrap().clone();
    let rest = get(s.addr, "/api/coordinator/workers?tier=2").json();
    assert_eq!(nodes.len(), rest["count"].as_u64().unwrap() as usize);
    assert!(nodes.iter().all(|n| n["tier"] == 2));
}

#[test]
fn mutations_show_through_rest() {
    let s = start(2, |_| {});
    register(s.addr, &gpu_worker("m-1"));
    let mut c = Conn::open(s.addr);
    let v = gql(
        &mut c,
        None,
        "mutation($p: JSON) { submitTask(input: {type: \"embed\", payload: $p, workerId: \"m-1\", maxAttempts: 2}) { taskId state target { kind name } maxAttempts } }",
        json!({"p": {"text": "hi"}}),
    );
    let t = &ok(&v)["submitTask"];
    assert_eq!(t["state"], "queued");
    assert_eq!(t["target"], json!({"kind": "worker", "name": "m-1"}));
    let id = t["taskId"].as_str().unwrap();
    let rest = get(s.addr, &format!("/api/tasks/{id}")).json();
    assert_eq!(rest["payload"], json!({"text": "hi"}));
    assert_eq!(rest["max_attempts"], 2);
    let v = gql(&mut c, None, "query($id: String!) { task(id: $id) { taskId type state payload attempts } tasks(first: 10) { total nodes { taskId } } }", json!({"id": id}));
    let d = ok(&v);
    assert_eq!(d["task"]["type"], "embed");
    assert_eq!(d["task"]["payload"], json!({"text": "hi"}));
    assert_eq!(
        d["tasks"]["total"],
        get(s.addr, "/api/admin/tasks").json()["count"]
    );

    // A refused submit is a GraphQL error carrying REST's status.
    let v = gql(
        &mut c,
        None,
        "mutation { submitTask(input: {type: \"x\", workerId: \"ghost\"}) { taskId } }",
        json!({}),
    );
    assert_eq!(v["errors"][0]["extensions"]["status"], 404, "{v}");

    let v = gql(
        &mut c,
        None,
        "mutation { setPin(service: \"llm\", workers: [\"m-1\"]) { kind name workers } }",
        json!({}),
    );
    assert_eq!(
        ok(&v)["setPin"],
        json!([{"kind": "service", "name": "llm-inference", "workers": ["m-1"]}])
    );
    assert_eq!(get(s.addr, "/api/admin/pins").json()["count"], 1);
    let v = gql(
        &mut c,
        None,
        "mutation { removePin(service: \"llm-inference\") { name } }",
        json!({}),
    );
    assert_eq!(ok(&v)["removePin"], json!([]));
    assert_eq!(get(s.addr, "/api/admin/pins").json()["count"], 0);

    // GET runs queries, never mutations.
    let r = c.get("/graphql?query=%7B%20pins%20%7B%20name%20%7D%20%7D");
    assert_eq!(r.json()["data"]["pins"], json!([]));
    let r = c.get("/graphql?query=mutation%20%7B%20setPin(service%3A%22llm%22%2C%20workers%3A%5B%22m-1%22%5D)%20%7B%20name%20%7D%20%7D");
    assert_eq!(r.json()["errors"][0]["extensions"]["status"], 405);
    assert_eq!(get(s.addr, "/api/admin/pins").json()["count"], 0);
}

#[test]
fn limits_and_bad_requests() {
    let s = start(2, |_| {});
    let mut c = Conn::open(s.addr);
    let deep = "{ workers { nodes { capabilities } pageInfo { endCursor } } a: workers { nodes { workerId } } }";
    ok(&gql(&mut c, None, deep, json!({})));
    let too_deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }";
    let v = gql(&mut c, None, too_deep, json!({}));
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nested too deep"),
        "{v}"
    );
    let many: String = (0..120)
        .map(|i| format!("w{i}: workers {{ nodes {{ workerId tier status }} }} "))
        .collect();
    let v = gql(&mut c, None, &format!("{{ {many} }}"), json!({}));
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("too complex"),
        "{v}"
    );
    let v = gql(&mut c, None, "{ nope }", json!({}));
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("nope"));
    // Not a GraphQL request at all: REST's 4xx.
    let r = c.request("POST", "/graphql", &[], Some(b"[1,2]"));
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(c.get("/graphql").status, 400);
    assert_eq!(get(s.addr, "/health").status, 200);
}

#[test]
fn each_field_needs_the_role_of_its_rest_route() {
    let s = start(2, with_keys);
    register_admin(s.addr, &gpu_worker("k-1"));
    let mut c = Conn::open(s.addr);
    let body = serde_json::to_vec(&json!({"query": "{ pins { name } }"})).unwrap();
    assert_eq!(c.request("POST", "/graphql", &[], Some(&body)).status, 401);

    // A client key: the healthy list and a task, not the admin views.
    let healthy = "{ workers(filter: {status: \"healthy\"}) { nodes { workerId } } }";
    let v = gql(&mut c, Some(CLIENT_KEY), healthy, json!({}));
    assert_eq!(ok(&v)["workers"]["nodes"][0]["workerId"], "k-1");
    for admin_only in [
        "{ workers { nodes { workerId } } }",
        "{ stats { totalWorkers } }",
        "{ pins { name } }",
        "{ tasks { total } }",
    ] {
        let v = gql(&mut c, Some(CLIENT_KEY), admin_only, json!({}));
        assert_eq!(
            v["errors"][0]["extensions"]["status"], 403,
            "{admin_only}: {v}"
        );
    }
    let v = gql(
        &mut c,
        Some(CLIENT_KEY),
        "mutation { setPin(service: \"llm\", workers: [\"k-1\"]) { name } }",
        json!({}),
    );
    assert_eq!(v["errors"][0]["extensions"]["status"], 403, "{v}");
    let v = gql(
        &mut c,
        Some(CLIENT_KEY),
        "mutation { submitTask(input: {type: \"x\", workerId: \"k-1\"}) { state } }",
        json!({}),
    );
    assert_eq!(ok(&v)["submitTask"]["state"], "queued");

    // The admin key reads everything.
    let v = gql(
        &mut c,
        Some(ADMIN_KEY),
        "{ workers { nodes { workerId } } stats { totalWorkers } tasks { total } }",
        json!({}),
    );
    assert_eq!(ok(&v)["stats"]["totalWorkers"], 1);
    assert_eq!(ok(&v)["tasks"]["total"], 1);
}

/// A graphql-transport-ws client session on `/graphql`.
fn graphql_ws(addr: std::net::SocketAddr) -> tungstenite::WebSocket<Tcp> {
    use tungstenite::client::IntoClientRequest;
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut req = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tungstenite::http::HeaderValue::from_static("graphql-transport-ws"),
    );
    let (ws, resp) = tungstenite::client(req, Tcp(tcp)).expect("handshake");
    assert_eq!(resp.status().as_u16(), 101);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    ws
}

fn send(ws: &mut tungstenite::WebSocket<Tcp>, v: Value) {
    ws.send(tungstenite::Message::text(v.to_string())).unwrap();
}

/// The next JSON message (pings skipped).
fn recv(ws: &mut tungstenite::WebSocket<Tcp>) -> Value {
    loop {
        match ws.read().expect("a message") {
            tungstenite::Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_subscription_receives_a_registration_made_after_it_started() {
    let s = start(2, |_| {});
    let mut ws = graphql_ws(s.addr);
    send(&mut ws, json!({"type": "connection_init", "payload": {}}));
    assert_eq!(recv(&mut ws)["type"], "connection_ack");
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws)["type"], "pong");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "s1", "payload": {
            "query": "subscription { events(topics: [\"worker\"]) }"}}),
    );
    // A query on the same socket answers once and completes, while the
    // subscription goes on.
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "q1", "payload": {"query": "{ stats { totalWorkers } }"}}),
    );
    let first = recv(&mut ws);
    assert_eq!(
        first,
        json!({"type": "next", "id": "q1", "payload": {"data": {"stats": {"totalWorkers": 0}}}})
    );
    assert_eq!(recv(&mut ws), json!({"type": "complete", "id": "q1"}));

    // Registered after the subscription started, on both shards.
    for id in ["sub-a", "sub-b", "sub-c"] {
        register(s.addr, &gpu_worker(id));
    }
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let m = recv(&mut ws);
        assert_eq!(m["type"], "next", "{m}");
        assert_eq!(m["id"], "s1");
        let e = &m["payload"]["data"]["events"];
        assert_eq!(e["type"], "worker.registered", "{e}");
        seen.insert(e["key"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen,
        BTreeSet::from(["sub-a".into(), "sub-b".into(), "sub-c".into()])
    );

    // The client ends it; a bad operation is an `error`; the socket stays.
    send(&mut ws, json!({"type": "complete", "id": "s1"}));
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "bad", "payload": {"query": "{ nope }"}}),
    );
    let m = recv(&mut ws);
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("error"), Some("bad")),
        "{m}"
    );
    // Nothing more for s1 after its completion (no event for this one).
    register(s.addr, &gpu_worker("sub-d"));
    send(&mut ws, json!({"type": "ping"}));
    assert_eq!(recv(&mut ws)["type"], "pong");

    // Protocol errors close with the protocol's codes.
    send(&mut ws, json!({"type": "connection_init"}));
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4429),
        other => panic!("expected a close, got {other:?}"),
    }
    let mut ws = graphql_ws(s.addr);
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "x", "payload": {"query": "{ pins { name } }"}}),
    );
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 4401),
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(get(s.addr, "/health").status, 200);
}
