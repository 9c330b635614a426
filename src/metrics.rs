//! Per-shard metrics, and the Prometheus families a scrape is built from.
//!
//! Each shard owns plain counters and fixed-bucket histograms (no atomics,
//! no locks, no `prometheus` collectors or registries: only its own thread
//! touches them). A scrape asks every shard for a snapshot over the mesh;
//! each owner of counters turns the merged snapshots into
//! `prometheus::proto::MetricFamily` values with the builders here
//! (`shard::scrape` for the HTTP, connection and registry figures,
//! `tasks::scrape`, `proxy::scrape`, `store::stats`), and
//! [`encode_text`] writes them with the crate's `TextEncoder`, which escapes
//! label values and formats the numbers.
//!
//! Two families come from outside the shards: `coordinator_build_info`
//! (version and the commit `build.rs` found) and the `process_*` families,
//! which the crate's `ProcessCollector` reads from `/proc/self` at scrape
//! time ([`process_families`]; the one collector of the crate used here).
//!
//! This module must not know about HTTP routing, tasks, the proxy or the
//! store: it imports nothing from the crate but `model`, and callers pass
//! route names and values in.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::process_collector::ProcessCollector;
use prometheus::proto::{self, Bucket, LabelPair, Metric, MetricType};
use prometheus::TextEncoder;

pub(crate) use prometheus::proto::MetricFamily;

/// Upper bounds (seconds) of the latency buckets: 10 us to 2.5 s, so
/// sub-millisecond latency is visible.
pub(crate) const LATENCY_BUCKETS: [f64; 17] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// What a [`Histogram`] observes: a plain value, or a duration in seconds.
pub(crate) trait Observation {
    fn value(self) -> f64;
}

impl Observation for f64 {
    fn value(self) -> f64 {
        self
    }
}

impl Observation for Duration {
    fn value(self) -> f64 {
        self.as_secs_f64()
    }
}

/// A histogram over fixed bucket bounds, cumulative only when encoded.
/// `Default` gives the [`LATENCY_BUCKETS`] (seconds).
#[derive(Debug, Clone)]
pub struct Histogram {
    /// Upper bounds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// Non-cumulative counts; the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new(&LATENCY_BUCKETS)
    }
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: impl Observation) {
        let v = v.value();
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    /// Adds `o`, which must have the same bounds.
    pub(crate) fn merge(&mut self, o: &Histogram) {
        debug_assert_eq!(self.bounds, o.bounds, "merging histograms of other buckets");
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += b;
        }
        self.sum += o.sum;
        self.count += o.count;
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    /// What was observed since `earlier`, a snapshot of the same histogram.
    pub(crate) fn since(&self, earlier: &Histogram) -> Histogram {
        let mut d = self.clone();
        if earlier.bounds == self.bounds {
            for (a, b) in d.counts.iter_mut().zip(&earlier.counts) {
                *a = a.saturating_sub(*b);
            }
            d.sum = (d.sum - earlier.sum).max(0.0);
            d.count = d.count.saturating_sub(earlier.count);
        }
        d
    }

    /// The `q`-quantile (0..=1), estimated as Prometheus'
    /// `histogram_quantile` does: linear inside the bucket that holds it,
    /// the largest finite bound for the +Inf bucket. `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, n) in self.counts.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let Some(&hi) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let frac = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
                return Some(lo + (hi - lo) * frac);
            }
            below += n;
        }
        self.bounds.last().copied()
    }

    fn to_proto(&self) -> proto::Histogram {
        let mut cum = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(le, n)| {
                cum += n;
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(cum);
                b
            })
            .collect();
        // The encoder adds the +Inf bucket from the sample count.
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(self.count);
        h.set_sample_sum(self.sum);
        h
    }
}

/// Counters for one route.
#[derive(Debug, Clone, Default)]
pub struct RouteMetrics {
    /// (status code, count); a handful of codes per route, so a Vec.
    pub by_status: Vec<(u16, u64)>,
    pub latency: Histogram,
}

impl RouteMetrics {
    pub(crate) fn merge(&mut self, o: &RouteMetrics) {
        for &(code, n) in &o.by_status {
            match self.by_status.iter_mut().find(|(c, _)| *c == code) {
                Some((_, m)) => *m += n,
                None => self.by_status.push((code, n)),
            }
        }
        self.latency.merge(&o.latency);
    }
}

/// One shard's HTTP, connection and mesh figures. Everything is owned by
/// the shard's thread.
#[derive(Debug, Clone, Default)]
pub struct ShardMetrics {
    pub routes: Vec<RouteMetrics>,
    pub connections_accepted: u64,
    pub connections_open: u64,
    pub connections_rejected: u64,
    pub connections_timed_out: u64,
    /// Open connections that switched to WebSocket (also in
    /// `connections_open`).
    pub websocket_sessions: u64,
    pub mesh_sent: u64,
    pub mesh_received: u64,
    pub workers_removed: u64,
    /// Events appended to this shard's ring (its head).
    pub events_published: u64,
    /// Event subscribers on this shard now (SSE, WebSocket, waiting
    /// blocking queries).
    pub event_subscribers: u64,
    pub event_subscribers_total: u64,
    /// Subscribers dropped for falling too far behind.
    pub event_subscribers_dropped: u64,
    /// Events written to subscribers.
    pub events_sent: u64,
}

impl ShardMetrics {
    pub fn new(n_routes: usize) -> Self {
        Self {
            routes: vec![RouteMetrics::default(); n_routes],
            ..Default::default()
        }
    }

    pub fn record(&mut self, route: usize, status: u16, elapsed: Duration) {
        let Some(r) = self.routes.get_mut(route) else {
            return;
        };
        match r.by_status.iter_mut().find(|(s, _)| *s == status) {
            Some((_, n)) => *n += 1,
            None => r.by_status.push((status, 1)),
        }
        r.latency.observe(elapsed);
    }

    /// `coordinator_http_requests_total` and
    /// `coordinator_http_request_duration_seconds`, summed over `shards`;
    /// `route_names[i]` names `routes[i]`. Routes never requested have no
    /// latency series.
    pub(crate) fn http_families<'a>(
        route_names: &[&str],
        shards: impl IntoIterator<Item = &'a ShardMetrics>,
    ) -> [MetricFamily; 2] {
        let mut routes = vec![RouteMetrics::default(); route_names.len()];
        for s in shards {
            for (acc, r) in routes.iter_mut().zip(&s.routes) {
                acc.merge(r);
            }
        }
        let mut requests = Vec::new();
        let mut latency = Vec::new();
        for (name, r) in route_names.iter().zip(&routes) {
            let mut codes = r.by_status.clone();
            codes.sort_unstable();
            for (code, n) in codes {
                let labels = vec![label("route", *name), label("status", code.to_string())];
                requests.push((labels, n));
            }
            if r.latency.count() > 0 {
                latency.push((vec![label("route", *name)], &r.latency));
            }
        }
        [
            counter(
                "coordinator_http_requests_total",
                "HTTP requests by route and status.",
                requests,
            ),
            histogram_family(
                "coordinator_http_request_duration_seconds",
                "Time from request head to response, by route.",
                latency,
            ),
        ]
    }

    /// The connection and mesh counters, one series per shard:
    /// `(shard id, its metrics)`.
    pub(crate) fn connection_families<'a>(
        shards: impl IntoIterator<Item = (usize, &'a ShardMetrics)> + Clone,
    ) -> Vec<MetricFamily> {
        type Get = fn(&ShardMetrics) -> u64;
        let of = |get: Get| by_shard(shards.clone().into_iter().map(|(i, s)| (i, get(s))));
        vec![
            counter(
                "coordinator_connections_accepted_total",
                "Connections accepted.",
                of(|s| s.connections_accepted),
            ),
            gauge(
                "coordinator_connections_open",
                "Connections open now.",
                of(|s| s.connections_open),
            ),
            counter(
                "coordinator_connections_rejected_total",
                "Connections refused at the per-shard cap.",
                of(|s| s.connections_rejected),
            ),
            counter(
                "coordinator_connections_timed_out_total",
                "Connections closed for idleness or slow headers.",
                of(|s| s.connections_timed_out),
            ),
            gauge(
                "coordinator_websocket_sessions",
                "WebSocket sessions open now (also counted as open connections).",
                of(|s| s.websocket_sessions),
            ),
            counter(
                "coordinator_mesh_sent_total",
                "Messages sent to other shards.",
                of(|s| s.mesh_sent),
            ),
            counter(
                "coordinator_mesh_received_total",
                "Messages received from other shards.",
                of(|s| s.mesh_received),
            ),
            counter(
                "coordinator_workers_removed_total",
                "Workers removed after WORKER_TIMEOUT_SECONDS of silence.",
                of(|s| s.workers_removed),
            ),
            counter(
                "coordinator_events_published_total",
                "Events appended to the shard's ring.",
                of(|s| s.events_published),
            ),
            gauge(
                "coordinator_event_subscribers",
                "Event subscribers (SSE, WebSocket, blocking queries) now.",
                of(|s| s.event_subscribers),
            ),
            counter(
                "coordinator_event_subscribers_total",
                "Event subscriptions started.",
                of(|s| s.event_subscribers_total),
            ),
            counter(
                "coordinator_event_subscribers_dropped_total",
                "Event subscribers dropped for falling too far behind.",
                of(|s| s.event_subscribers_dropped),
            ),
            counter(
                "coordinator_events_sent_total",
                "Events written to subscribers.",
                of(|s| s.events_sent),
            ),
        ]
    }
}

// ---- family builders ---------------------------------------------------------

/// The series of one family: (labels, value).
pub(crate) type Series = Vec<(Vec<LabelPair>, u64)>;

pub(crate) fn label(name: &str, value: impl Into<String>) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.into());
    l
}

/// One series per shard, labelled `shard="<id>"`.
pub(crate) fn by_shard(values: impl IntoIterator<Item = (usize, u64)>) -> Series {
    values
        .into_iter()
        .map(|(shard, v)| (vec![label("shard", shard.to_string())], v))
        .collect()
}

/// One series without labels.
pub(crate) fn unlabelled(v: u64) -> Series {
    vec![(Vec::new(), v)]
}

pub(crate) fn counter(name: &str, help: &str, series: Series) -> MetricFamily {
    scalar(name, help, MetricType::COUNTER, series)
}

pub(crate) fn gauge(name: &str, help: &str, series: Series) -> MetricFamily {
    scalar(name, help, MetricType::GAUGE, series)
}

/// A counter or gauge family: one plain value per series.
fn scalar(name: &str, help: &str, kind: MetricType, series: Series) -> MetricFamily {
    let metrics = series
        .into_iter()
        .map(|(labels, v)| {
            let mut m = Metric::from_label(labels);
            if kind == MetricType::COUNTER {
                let mut c = proto::Counter::default();
                c.set_value(v as f64);
                m.set_counter(c);
            } else {
                let mut g = proto::Gauge::default();
                g.set_value(v as f64);
                m.set_gauge(g);
            }
            m
        })
        .collect();
    family(name, help, kind, metrics)
}

pub(crate) fn histogram_family(
    name: &str,
    help: &str,
    series: Vec<(Vec<LabelPair>, &Histogram)>,
) -> MetricFamily {
    let metrics = series
        .into_iter()
        .map(|(labels, h)| {
            let mut m = Metric::from_label(labels);
            m.set_histogram(h.to_proto());
            m
        })
        .collect();
    family(name, help, MetricType::HISTOGRAM, metrics)
}

/// `coordinator_build_info{version, commit} 1`: the package version and the
/// short git commit of the build (`unknown` when the build had no git, see
/// `build.rs`), so dashboards can tell which build each target runs.
pub(crate) fn build_info() -> MetricFamily {
    let labels = vec![
        label("version", env!("CARGO_PKG_VERSION")),
        label("commit", env!("COORDINATOR_GIT_COMMIT")),
    ];
    gauge(
        "coordinator_build_info",
        "Build of this coordinator (value 1): package version and git commit.",
        vec![(labels, 1)],
    )
}

/// The standard `process_*` families of this process (CPU seconds, resident
/// and virtual memory, open and maximum file descriptors, start time,
/// threads), read from `/proc/self` now. Empty where `/proc` is unreadable.
///
/// Reading `/proc/self/fd` walks every open descriptor (tens of thousands
/// with full connection caps): call it off the shard threads.
pub(crate) fn process_families() -> Vec<MetricFamily> {
    // One collector for the process: it reads the start time once, and its
    // counters are atomics, so concurrent scrapes from two shards are safe.
    static COLLECTOR: OnceLock<ProcessCollector> = OnceLock::new();
    let mut families = COLLECTOR.get_or_init(ProcessCollector::for_self).collect();
    // The collector counts CPU time in whole seconds (an integer counter),
    // which makes `rate()` over a minute jump between 0 and 1/60 s; getrusage
    // has microseconds.
    if let Some(cpu) = cpu_seconds() {
        for f in &mut families {
            if f.name() == "process_cpu_seconds_total" {
                for m in f.mut_metric() {
                    let mut c = proto::Counter::default();
                    c.set_value(cpu);
                    m.set_counter(c);
                }
            }
        }
    }
    families
}

/// User plus system CPU time of the whole process (every thread), seconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage only writes the struct we pass; zeroed is a valid
    // `rusage`.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    // Summed in whole microseconds, so the text shows e.g. 0.047454 rather
    // than a float sum's 0.047453999999999996.
    let micros = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    Some((micros(u.ru_utime) + micros(u.ru_stime)) as f64 / 1e6)
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

/// The Prometheus text format (version 0.0.4) of `families`. A family with
/// no series is left out (the text format has no use for a bare header,
/// and the encoder refuses one).
pub(crate) fn encode_text(families: &[MetricFamily]) -> String {
    let mut out = String::with_capacity(8 << 10);
    let encoder = TextEncoder::new();
    for f in families.iter().filter(|f| !f.get_metric().is_empty()) {
        // Writing to a String fails only on a family without a name or
        // series, and every family here has both.
        let r = encoder.encode_utf8(std::slice::from_ref(f), &mut out);
        debug_assert!(r.is_ok(), "{r:?}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_buckets_and_deltas_subtract() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        for _ in 0..90 {
            h.observe(0.000_02); // bucket (10 us, 25 us]
        }
        let before = h.clone();
        for _ in 0..10 {
            h.observe(0.2); // bucket (100 ms, 250 ms]
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 > 0.000_01 && p50 <= 0.000_025, "{p50}");
        let p99 = h.quantile(0.99).unwrap();
        assert!(p99 > 0.1 && p99 <= 0.25, "{p99}");
        let d = h.since(&before);
        assert_eq!(d.count(), 10);
        assert!(d.quantile(0.5).unwrap() > 0.1);
        h.observe(100.0);
        assert_eq!(h.quantile(1.0), Some(2.5));
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(10));
        h.observe(Duration::from_micros(11));
        h.observe(Duration::from_secs(5));
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[LATENCY_BUCKETS.len()], 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn histogram_takes_its_own_bounds() {
        static BOUNDS: [f64; 3] = [1.0, 2.0, 4.0];
        let mut h = Histogram::new(&BOUNDS);
        for v in [1.0, 3.0, 9.0] {
            h.observe(v);
        }
        let text = encode_text(&[histogram_family("h", "H.", vec![(Vec::new(), &h)])]);
        assert_eq!(
            text,
            "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 1\n\
             h_bucket{le=\"4\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 13\nh_count 3\n"
        );
    }

    #[test]
    fn build_info_and_process_families() {
        let text = encode_text(&[build_info()]);
        let commit = env!("COORDINATOR_GIT_COMMIT");
        assert!(
            commit == "unknown" || commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "{commit}"
        );
        assert!(text.contains(&format!(
            "coordinator_build_info{{version=\"{}\",commit=\"{commit}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        let value = |families: &[MetricFamily], name: &str| {
            let f = families.iter().find(|f| f.name() == name).expect(name);
            let m = &f.get_metric()[0];
            if f.get_field_type() == MetricType::COUNTER {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            }
        };
        let before = cpu_seconds().unwrap();
        let families = process_families();
        let after = cpu_seconds().unwrap();
        // Microseconds, not the collector's whole seconds (which would be
        // below `before` unless it happened to be a whole number).
        let cpu = value(&families, "process_cpu_seconds_total");
        assert!(before <= cpu && cpu <= after, "{before} {cpu} {after}");
        let value = |name: &str| value(&families, name);
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_virtual_memory_bytes") >= value("process_resident_memory_bytes"));
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_start_time_seconds") > 1.6e9);
    }

    #[test]
    fn label_values_are_escaped_and_empty_families_left_out() {
        let series = vec![(vec![label("queue", "a\"b\\c\nd")], 1)];
        let text = encode_text(&[
            gauge("empty", "Nothing.", Vec::new()),
            gauge("q", "Quoted \"workers\".", series),
        ]);
        assert_eq!(
            text,
            "# HELP q Quoted \"workers\".\n# TYPE q gauge\nq{queue=\"a\\\"b\\\\c\\nd\"} 1\n"
        );
    }
}
