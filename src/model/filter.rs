//! Which workers a listing shows: the filters of the worker lists
//! (`?tier=&status=&model=&worker_type=&service=`), how each value is
//! parsed, and whether a record matches.
//!
//! Pure: the shard applies a filter to its own records (the service part
//! through its index, the rest with [`WorkerFilter::matches`]); the HTTP
//! layer parses the query values with the functions here. Must not know
//! about shards, cursors or HTTP.

use std::time::Instant;

use super::worker::{Liveness, WorkerRecord};
use super::WorkerType;

/// What `status=` selects. The values mirror `workers_by_status` of
/// `/api/admin/health` plus `healthy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StatusFilter {
    /// Fresh and not reporting a down status (`is_healthy`; `busy` too).
    Healthy,
    /// Last heartbeat older than the heartbeat timeout.
    Stale,
    /// Fresh and reporting this status (ASCII case-insensitive).
    Reported(String),
}

/// A conjunction of optional conditions; the default matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WorkerFilter {
    /// Indexed under this service (assigned or declared).
    pub service: Option<String>,
    pub tier: Option<u8>,
    pub status: Option<StatusFilter>,
    /// Listed in the worker's `loaded_models`.
    pub model: Option<String>,
    pub worker_type: Option<WorkerType>,
}

impl WorkerFilter {
    /// True when nothing but (possibly) the service narrows the list.
    pub(crate) fn only_service(&self) -> bool {
        self.tier.is_none()
            && self.status.is_none()
            && self.model.is_none()
            && self.worker_type.is_none()
    }

    /// Whether `w` passes every condition but the service one (the caller
    /// walks the service's index for that).
    pub(crate) fn matches(&self, w: &WorkerRecord, now: Instant, live: &Liveness) -> bool {
        if self.tier.is_some_and(|t| w.tier != t) {
            return false;
        }
        if self.worker_type.is_some_and(|t| w.worker_type != t) {
            return false;
        }
        if let Some(m) = &self.model {
            if !w.state.loaded_models.iter().any(|x| x == m) {
                return false;
            }
        }
        match &self.status {
            None => true,
            Some(StatusFilter::Healthy) => w.is_healthy(now, live),
            Some(StatusFilter::Stale) => w.age(now) > live.heartbeat_timeout,
            Some(StatusFilter::Reported(s)) => {
                w.age(now) <= live.heartbeat_timeout && w.shown_status().eq_ignore_ascii_case(s)
            }
        }
    }
}

/// Longest value a text filter (status, model, service) may have.
pub(crate) const MAX_FILTER_CHARS: usize = 256;

fn text(v: &str) -> Result<&str, String> {
    // Characters, not bytes: what `wire::schema::TEXT_PATTERN` can state.
    if v.is_empty() || v.chars().count() > MAX_FILTER_CHARS || v.chars().any(char::is_control) {
        return Err(format!(
            "expected 1..={MAX_FILTER_CHARS} characters without control characters"
        ));
    }
    Ok(v)
}

/// `tier=`: an integer 0..=4 (tiers are 1 gpu, 2 cpu, 3 storage, 4 edge).
pub(crate) fn parse_tier(v: &str) -> Result<u8, String> {
    v.parse::<u8>()
        .ok()
        .filter(|t| *t <= 4)
        .ok_or_else(|| "expected an integer 0..=4".to_string())
}

/// `worker_type=`: gpu, cpu, storage or edge (any case).
pub(crate) fn parse_worker_type(v: &str) -> Result<WorkerType, String> {
    [
        WorkerType::Gpu,
        WorkerType::Cpu,
        WorkerType::Storage,
        WorkerType::Edge,
    ]
    .into_iter()
    .find(|t| t.as_str().eq_ignore_ascii_case(v))
    .ok_or_else(|| "expected gpu, cpu, storage or edge".to_string())
}

/// `status=`: `healthy`, `stale`, or any reported status string.
pub(crate) fn parse_status(v: &str) -> Result<StatusFilter, String> {
    let v = text(v)?;
    Ok(if v.eq_ignore_ascii_case("healthy") {
        StatusFilter::Healthy
    } else if v.eq_ignore_ascii_case("stale") {
        StatusFilter::Stale
    } else {
        StatusFilter::Reported(v.to_string())
    })
}

/// `model=` and `service=`: a non-empty name.
pub(crate) fn parse_name(v: &str) -> Result<String, String> {
    text(v).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use serde_json::Map;

    use crate::model::worker::Registration;

    const LIVE: Liveness = Liveness {
        heartbeat_timeout: Duration::from_secs(10),
        worker_timeout: Duration::from_secs(60),
    };

    fn rec(t: WorkerType, status: &str, models: &[&str], age: u64) -> WorkerRecord {
        let r = Registration {
            worker_id: "w".into(),
            capabilities: Map::new(),
            tunnel_url: None,
            ip_address: None,
            services: vec![],
            containers: vec![],
        };
        let mut w = WorkerRecord::registered(r, t.into(), &[]);
        w.state.status = crate::model::worker::status_of(status.to_string());
        w.state.loaded_models = models.iter().map(|m| m.to_string()).collect();
        w.last_seen = Instant::now() - Duration::from_secs(age);
        w
    }

    #[test]
    fn values_parse_or_say_what_is_expected() {
        assert_eq!(parse_tier("0"), Ok(0));
        assert_eq!(parse_tier("4"), Ok(4));
        for bad in ["5", "-1", "", "x", "1.0", "256"] {
            assert!(parse_tier(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_worker_type("GPU"), Ok(WorkerType::Gpu));
        assert!(parse_worker_type("tpu").is_err());
        assert_eq!(parse_status("Stale"), Ok(StatusFilter::Stale));
        assert_eq!(parse_status("healthy"), Ok(StatusFilter::Healthy));
        assert_eq!(
            parse_status("busy"),
            Ok(StatusFilter::Reported("busy".into()))
        );
        assert!(parse_status("").is_err());
        assert!(parse_name(&"m".repeat(MAX_FILTER_CHARS + 1)).is_err());
        assert!(parse_name("a\nb").is_err());
    }

    #[test]
    fn each_condition_narrows() {
        let now = Instant::now();
        let gpu_busy = rec(WorkerType::Gpu, "busy", &["llama3"], 0);
        let cpu_stale = rec(WorkerType::Cpu, "healthy", &[], 30);
        let cpu_offline = rec(WorkerType::Cpu, "Offline", &[], 0);
        let all = WorkerFilter::default();
        assert!(all.only_service());
        for w in [&gpu_busy, &cpu_stale, &cpu_offline] {
            assert!(all.matches(w, now, &LIVE));
        }
        let f = |f: WorkerFilter| {
            [&gpu_busy, &cpu_stale, &cpu_offline]
                .iter()
                .map(|w| f.matches(w, now, &LIVE))
                .collect::<Vec<_>>()
        };
        let tier1 = WorkerFilter {
            tier: Some(1),
            ..Default::default()
        };
        assert!(!tier1.only_service());
        assert_eq!(f(tier1), [true, false, false]);
        let cpu = WorkerFilter {
            worker_type: Some(WorkerType::Cpu),
            ..Default::default()
        };
        assert_eq!(f(cpu), [false, true, true]);
        let model = WorkerFilter {
            model: Some("llama3".into()),
            ..Default::default()
        };
        assert_eq!(f(model), [true, false, false]);
        let status = |s: StatusFilter| WorkerFilter {
            status: Some(s),
            ..Default::default()
        };
        assert_eq!(f(status(StatusFilter::Healthy)), [true, false, false]);
        assert_eq!(f(status(StatusFilter::Stale)), [false, true, false]);
        // A reported status counts only while fresh, as in workers_by_status.
        let busy = StatusFilter::Reported("BUSY".into());
        assert_eq!(f(status(busy)), [true, false, false]);
        let offline = StatusFilter::Reported("offline".into());
        assert_eq!(f(status(offline)), [false, false, true]);
    }
}
