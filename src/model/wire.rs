//! Request bodies as real agents send them.
//!
//! Unknown fields are ignored (agents send extras such as `vpn_ip`). Numeric
//! fields also accept numeric strings and strings accept numbers, as the
//! originals' pydantic models did; anything else is a validation error that
//! names the field.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// `POST /api/worker/register`, both the local and the service shape.
#[derive(Debug, Default, Deserialize)]
pub struct RegisterRequest {
    #[serde(default, deserialize_with = "opt_string")]
    pub worker_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    pub tunnel_url: Option<String>,
    #[serde(default)]
    pub capabilities: Option<Map<String, Value>>,
    #[serde(default)]
    pub services: Option<Vec<Value>>,
    #[serde(default)]
    pub containers: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "opt_string")]
    pub ip_address: Option<String>,
}

/// `POST /api/worker/heartbeat`. Every field but `worker_id` may be missing
/// or null; a missing field keeps its previous value, except `status`,
/// which defaults to "healthy" as in the originals.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HeartbeatRequest {
    #[serde(deserialize_with = "req_string")]
    pub worker_id: String,
    #[serde(default, deserialize_with = "opt_string")]
    pub status: Option<String>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub current_load: Option<f64>,
    #[serde(default, deserialize_with = "opt_string")]
    pub available_memory: Option<String>,
    #[serde(default)]
    pub loaded_models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub active_requests: Option<u64>,
    #[serde(default, deserialize_with = "opt_f64")]
    pub gpu_utilization: Option<f64>,
    /// Kept as the JSON text it arrived as (it is only echoed back).
    #[serde(default, deserialize_with = "opt_raw_object")]
    pub services_status: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, deserialize_with = "opt_string")]
    pub specialization: Option<String>,
    /// Progress: the tasks the worker is still on (their leases are
    /// extended). `task_ids`, else `active_tasks`; `Some` whenever the key
    /// is present, holding the string elements of an array (anything else
    /// counts as no ids: agents also send `active_tasks` as a count).
    #[serde(default, deserialize_with = "lenient_ids")]
    pub task_ids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_ids")]
    pub active_tasks: Option<Vec<String>>,
}

/// `POST /api/coordinator/broadcast-job`.
#[derive(Debug, Deserialize)]
pub(crate) struct BroadcastRequest {
    #[serde(deserialize_with = "req_string")]
    pub job_type: String,
    #[serde(default)]
    pub job_data: Value,
    #[serde(default, deserialize_with = "opt_string")]
    pub required_capability: Option<String>,
}

fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(Value::Bool(b)) => Ok(Some(b.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string, got {}",
            kind(&other)
        ))),
    }
}

fn lenient_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let ids = match Value::deserialize(d)? {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Ok(Some(ids))
}

fn req_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match opt_string(d)? {
        Some(s) if !s.is_empty() => Ok(s),
        Some(_) => Err(serde::de::Error::custom("must not be empty")),
        None => Err(serde::de::Error::custom("field required")),
    }
}

fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    let n = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(other) => {
            return Err(serde::de::Error::custom(format!(
                "expected a number, got {}",
                kind(&other)
            )))
        }
    };
    match n {
        Some(x) if x.is_finite() => Ok(Some(x)),
        _ => Err(serde::de::Error::custom("expected a finite number")),
    }
}

fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match opt_f64(d)? {
        None => Ok(None),
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= u64::MAX as f64 => Ok(Some(x as u64)),
        Some(_) => Err(serde::de::Error::custom("expected a non-negative integer")),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An optional JSON object, kept as its text.
fn opt_raw_object<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<serde_json::value::RawValue>>, D::Error> {
    use serde::de::Error;
    let v: Option<Box<serde_json::value::RawValue>> = Option::deserialize(d)?;
    match v {
        Some(r) if !r.get().starts_with('{') => Err(D::Error::custom("expected an object")),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_accepts_nulls_and_numeric_strings() {
        let hb: HeartbeatRequest = serde_json::from_str(
            r#"{"worker_id":"w1","status":null,"current_load":"0.25","active_requests":3,
                "available_memory":12,"loaded_models":["a"],"gpu_utilization":null}"#,
        )
        .unwrap();
        assert_eq!(hb.worker_id, "w1");
        assert_eq!(hb.status, None);
        assert_eq!(hb.current_load, Some(0.25));
        assert_eq!(hb.active_requests, Some(3));
        assert_eq!(hb.available_memory.as_deref(), Some("12"));
        assert_eq!(hb.loaded_models, Some(vec!["a".to_string()]));
    }

    #[test]
    fn heartbeat_progress_ids_are_lenient() {
        let hb = |body: &str| serde_json::from_str::<HeartbeatRequest>(body).unwrap();
        let h = hb(r#"{"worker_id":"w","task_ids":["t1",2,"t3"],"active_tasks":3}"#);
        assert_eq!(h.task_ids, Some(vec!["t1".to_string(), "t3".to_string()]));
        assert_eq!(h.active_tasks, Some(vec![]));
        let h = hb(r#"{"worker_id":"w","task_ids":null}"#);
        assert_eq!((h.task_ids, h.active_tasks), (Some(vec![]), None));
        let h = hb(r#"{"worker_id":"w"}"#);
        assert_eq!((h.task_ids, h.active_tasks), (None, None));
    }

    #[test]
    fn heartbeat_rejects_wrong_types() {
        let e =
            serde_json::from_str::<HeartbeatRequest>(r#"{"worker_id":"w","current_load":"high"}"#);
        assert!(e.is_err());
        let e =
            serde_json::from_str::<HeartbeatRequest>(r#"{"worker_id":"w","active_requests":-1}"#);
        assert!(e.is_err());
        let e = serde_json::from_str::<HeartbeatRequest>(r#"{"worker_id":{"a":1}}"#);
        assert!(e.is_err());
        let e = serde_json::from_str::<HeartbeatRequest>(r#"{"status":"healthy"}"#);
        assert!(e.unwrap_err().to_string().contains("worker_id"));
    }

    #[test]
    fn register_tolerates_unknown_fields() {
        let r: RegisterRequest = serde_json::from_str(
            r#"{"worker_id":"w","tunnel_url":"http://x","capabilities":{"has_gpu":true},"vpn_ip":"10.0.0.1"}"#,
        )
        .unwrap();
        assert_eq!(r.worker_id.as_deref(), Some("w"));
        assert!(r.capabilities.unwrap().contains_key("has_gpu"));
        assert!(serde_json::from_str::<RegisterRequest>(r#"{"capabilities":[1]}"#).is_err());
    }
}
