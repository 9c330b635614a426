//! /metrics as a Prometheus server would read it.

mod common;

use common::*;
use prometheus_parse::{Scrape, Value};
use serde_json::json;

fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_metrics(&r.text())
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        })
}

#[test]
fn metrics_parse_and_merge_across_shards() {
    let s = start(2, |_| {});
    let ids: Vec<String> = (0..2).map(|sh| id_on_shard("m", sh, 2)).collect();
    for id in &ids {
        register(s.addr, &gpu_worker(id));
    }
    // 10 heartbeats spread over fresh connections, so both shards answer some.
    let mut answered_by = std::collections::HashSet::new();
    for i in 0..10 {
        let r = heartbeat(s.addr, &json!({"worker_id": ids[i % 2]}));
        assert_eq!(r.status, 200);
        answered_by.insert(r.shard());
    }
    heartbeat(s.addr, &json!({"worker_id": "ghost"}));
    let m = scrape(s.addr);
    assert_eq!(value(&m, "coordinator_workers_total", &[]), Some(2.0));
    assert_eq!(value(&m, "coordinator_workers_active", &[]), Some(2.0));
    // The first gpu worker runs 7 services, the second the one left over
    // (doc-processor, which shares vision-ocr's port): 8 covered.
    assert_eq!(value(&m, "coordinator_services_total", &[]), Some(8.0));
    assert_eq!(
        value(
            &m,
            "coordinator_http_requests_total",
            &[("route", "heartbeat"), ("status", "200")]
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            &m,
            "coordinator_http_requests_total",
            &[("route", "heartbeat"), ("status", "404")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "coordinator_shard_workers", &[("shard", "0")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "coordinator_shard_workers", &[("shard", "1")]),
        Some(1.0)
    );
    // The latency histogram: sub-millisecond buckets, count = 11 heartbeats.
    let hist = m
        .samples
        .iter()
        .find(|x| {
            x.metric == "coordinator_http_request_duration_seconds"
                && x.labels.get("route") == Some("heartbeat")
        })
        .expect("heartbeat histogram");
    match &hist.value {
        Value::Histogram(buckets) => {
            assert!(
                buckets
                    .iter()
                    .any(|b| (b.less_than - 0.00001).abs() < 1e-12),
                "10us bucket"
            );
            assert!(
                buckets.iter().any(|b| (b.less_than - 0.001).abs() < 1e-12),
                "1ms bucket"
            );
            let inf = buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .expect("+Inf bucket");
            assert_eq!(inf.count, 11.0);
        }
        other => panic!("not a histogram: {other:?}"),
    }
    let accepted: f64 = (0..2)
        .map(|sh| {
            value(
                &m,
                "coordinator_connections_accepted_total",
                &[("shard", &sh.to_string())],
            )
            .unwrap()
        })
        .sum();
    assert!(accepted >= 13.0, "{accepted}");
}
