//! Which events a subscriber wants.

use serde_json::{Map, Value};

use super::{Event, Topic};

/// Longest value a filter field may have.
const MAX_VALUE: usize = 256;

/// Topics, and optionally one worker, service or task. Empty means all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    topics: u8,
    worker: Option<Box<str>>,
    service: Option<Box<str>>,
    task: Option<Box<str>>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            topics: Topic::ALL,
            worker: None,
            service: None,
            task: None,
        }
    }
}

impl Filter {
    /// Worker events only (blocking queries on worker lists).
    pub(crate) fn workers() -> Filter {
        Filter {
            topics: Topic::Worker as u8,
            ..Filter::default()
        }
    }

    /// From its fields as sent: `topics` a comma-separated list of
    /// `worker`, `task`, `pin`, `service`.
    pub(crate) fn new(
        topics: Option<&str>,
        worker: Option<&str>,
        service: Option<&str>,
        task: Option<&str>,
    ) -> Result<Filter, String> {
        let mut f = Filter::default();
        if let Some(t) = topics {
            f.topics = 0;
            for name in t.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let topic = Topic::parse(name).ok_or_else(|| {
                    format!("unknown topic {name:?}: expected worker, task, pin or service")
                })?;
                f.topics |= topic as u8;
            }
            if f.topics == 0 {
                return Err("topics names no topic".into());
            }
        }
        let field = |name: &str, v: Option<&str>| -> Result<Option<Box<str>>, String> {
            match v {
                Some(v) if v.is_empty() || v.len() > MAX_VALUE => {
                    Err(format!("{name} must be 1 to {MAX_VALUE} bytes long"))
                }
                v => Ok(v.map(Into::into)),
            }
        };
        f.worker = field("worker_id", worker)?;
        f.service = field("service", service)?;
        f.task = field("task_id", task)?;
        Ok(f)
    }

    /// From a WebSocket `{"subscribe": {...}}` object: the same fields,
    /// `topics` as a list or a comma-separated string.
    pub(crate) fn from_json(o: &Map<String, Value>) -> Result<Filter, String> {
        for k in o.keys() {
            if !matches!(k.as_str(), "topics" | "worker_id" | "service" | "task_id") {
                return Err(format!("unknown subscribe field {k:?}"));
            }
        }
        let text = |k: &str| -> Result<Option<&str>, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(format!("{k} must be a string")),
            }
        };
        let topics = match o.get("topics") {
            Some(Value::Array(a)) => {
                let names: Option<Vec<&str>> = a.iter().map(Value::as_str).collect();
                Some(names.ok_or("topics must be strings")?.join(","))
            }
            _ => text("topics")?.map(str::to_string),
        };
        Filter::new(
            topics.as_deref(),
            text("worker_id")?,
            text("service")?,
            text("task_id")?,
        )
    }

    pub(crate) fn matches(&self, e: &Event) -> bool {
        let topic = e.kind.topic();
        if self.topics & topic as u8 == 0 {
            return false;
        }
        if let Some(w) = &self.worker {
            if e.worker.as_deref() != Some(&**w) {
                return false;
            }
        }
        if let Some(s) = &self.service {
            if !e.services.iter().any(|x| x == s) {
                return false;
            }
        }
        if let Some(t) = &self.task {
            if topic != Topic::Task || *e.key != **t {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Draft, Event, Kind};
    use super::*;

    fn ev(kind: Kind, key: &str, worker: Option<&str>, services: &[&str]) -> Event {
        let services = services.iter().map(|s| (*s).into()).collect();
        Event {
            seq: 1,
            draft: Draft::new(kind, key, worker, services, &()),
        }
    }

    #[test]
    fn filters_by_topic_worker_service_and_task() {
        let reg = ev(Kind::WorkerRegistered, "w1", Some("w1"), &["llm"]);
        let task = ev(Kind::TaskLeased, "t1", Some("w1"), &["llm"]);
        let pin = ev(Kind::PinSet, "llm", None, &["llm"]);
        let all = Filter::default();
        assert!(all.matches(&reg) && all.matches(&task) && all.matches(&pin));
        let f = Filter::new(Some("worker,pin"), None, None, None).unwrap();
        assert!(f.matches(&reg) && !f.matches(&task) && f.matches(&pin));
        let f = Filter::new(None, Some("w1"), None, None).unwrap();
        assert!(f.matches(&reg) && f.matches(&task) && !f.matches(&pin));
        let f = Filter::new(None, None, Some("vision"), None).unwrap();
        assert!(!f.matches(&reg) && !f.matches(&pin));
        let f = Filter::new(None, None, None, Some("t1")).unwrap();
        assert!(!f.matches(&reg) && f.matches(&task));
        assert!(Filter::new(Some("worker,bogus"), None, None, None).is_err());
        assert!(Filter::new(Some(","), None, None, None).is_err());
        assert!(Filter::new(None, Some(""), None, None).is_err());
        assert!(Filter::new(None, Some(&"x".repeat(300)), None, None).is_err());
    }

    #[test]
    fn parses_subscribe_objects() {
        let o = |v: Value| v.as_object().unwrap().clone();
        let a = Filter::from_json(&o(serde_json::json!({"topics": ["task"], "task_id": "t1"})));
        let b = Filter::new(Some("task"), None, None, Some("t1"));
        assert_eq!(a, b);
        let c = Filter::from_json(&o(serde_json::json!({"topics": "worker,task"})));
        assert_eq!(c, Filter::new(Some("worker,task"), None, None, None));
        assert!(Filter::from_json(&o(serde_json::json!({"topic": "x"}))).is_err());
        assert!(Filter::from_json(&o(serde_json::json!({"topics": [1]}))).is_err());
        assert!(Filter::from_json(&o(serde_json::json!({"service": 3}))).is_err());
    }
}
