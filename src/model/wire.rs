//! Request bodies as real agents send them.
//!
//! Unknown fields are ignored (agents send extras such as `vpn_ip`). Numeric
//! fields also accept numeric strings and strings accept numbers, as the
//! originals' pydantic models did; anything else is a validation error that
//! names the field.

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// `POST /api/worker/register`, both the local and the service shape.
///
/// The `#[schema]` attributes give the OpenAPI spec what the lenient
/// deserialisers below really accept (see [`schema`]).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct RegisterRequest {
    /// Chosen by the worker (local shape), 1-256 bytes without control
    /// characters; absent: `worker-` + 8 hex digits (service shape).
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::id)]
    pub worker_id: Option<String>,
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::string)]
    pub tunnel_url: Option<String>,
    /// Free-form: the local flags (`has_gpu`, `worker_type`, ...) or the
    /// service sizes (`cpu_cores`, `ram`, `gpu_memory`, `gpu_type`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub capabilities: Option<Map<String, Value>>,
    /// Declared services: `[{"name", "port"}]` or `["name"]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    pub services: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    pub containers: Option<Vec<Value>>,
    /// Absent: the connection's peer address.
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::string)]
    pub ip_address: Option<String>,
}

/// `POST /api/worker/heartbeat`. Every field but `worker_id` may be missing
/// or null; a missing field keeps its previous value, except `status`,
/// which defaults to "healthy" as in the originals.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatRequest {
    #[serde(deserialize_with = "req_string")]
    #[schema(schema_with = schema::required_id)]
    pub worker_id: String,
    /// Any string; `healthy` when absent.
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::string)]
    pub status: Option<String>,
    /// 0..1 by convention (any finite number is kept).
    #[serde(default, deserialize_with = "opt_f64")]
    #[schema(schema_with = schema::number)]
    pub current_load: Option<f64>,
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::string)]
    pub available_memory: Option<String>,
    #[serde(default)]
    pub loaded_models: Option<Vec<String>>,
    #[serde(default, deserialize_with = "opt_u64")]
    #[schema(schema_with = schema::count)]
    pub active_requests: Option<u64>,
    #[serde(default, deserialize_with = "opt_f64")]
    #[schema(schema_with = schema::number)]
    pub gpu_utilization: Option<f64>,
    /// Kept as the JSON text it arrived as (it is only echoed back).
    #[serde(default, deserialize_with = "opt_raw_object")]
    #[schema(value_type = Option<Object>)]
    pub services_status: Option<Box<serde_json::value::RawValue>>,
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::string)]
    pub specialization: Option<String>,
    /// Progress: the tasks the worker is still on (their leases are
    /// extended). `task_ids`, else `active_tasks`; `Some` whenever the key
    /// is present, holding the string elements of an array (anything else
    /// counts as no ids: agents also send `active_tasks` as a count).
    #[serde(default, deserialize_with = "lenient_ids")]
    #[schema(value_type = Option<Value>)]
    pub task_ids: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient_ids")]
    #[schema(value_type = Option<Value>)]
    pub active_tasks: Option<Vec<String>>,
}

/// `POST /api/coordinator/broadcast-job`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(crate) struct BroadcastRequest {
    #[serde(deserialize_with = "req_string")]
    #[schema(schema_with = schema::required_string)]
    pub job_type: String,
    /// Any JSON: the payload of each worker's task.
    #[serde(default)]
    #[schema(value_type = Option<Value>)]
    pub job_data: Value,
    /// Only workers whose capability of this name is truthy.
    #[serde(default, deserialize_with = "opt_string")]
    #[schema(schema_with = schema::string)]
    pub required_capability: Option<String>,
}

/// JSON Schemas of the lenient field types, for the OpenAPI spec: what
/// the deserialisers of this module accept, no more and no less (the
/// schemathesis gate sends values just outside each schema and expects a
/// 4xx).
pub(crate) mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
    use utoipa::openapi::{RefOr, Schema};

    fn of(types: &[Type]) -> ObjectBuilder {
        ObjectBuilder::new().schema_type(SchemaType::from_iter(types.iter().cloned()))
    }

    /// A string; numbers and booleans are taken as their text; null is absent.
    pub fn string() -> ObjectBuilder {
        of(&[Type::String, Type::Number, Type::Boolean, Type::Null])
    }

    /// Like [`string`], but must not be empty or null.
    pub fn required_string() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1)),
            )
            .item(of(&[Type::Number, Type::Boolean]))
            .into()
    }

    /// An id as [`required_string`] reads it, or absent.
    pub fn id() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(id_string())
            .item(of(&[Type::Number, Type::Boolean, Type::Null]))
            .into()
    }

    /// A required id: 1-256 bytes, no control characters.
    pub fn required_id() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(id_string())
            .item(of(&[Type::Number, Type::Boolean]))
            .into()
    }

    fn id_string() -> ObjectBuilder {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(ID_PATTERN))
    }

    /// The ids `http::request::valid_id` takes, as an ECMA-262 regular
    /// expression: 1-256 characters, no control character (Cc) and none of
    /// the invisible formatting ones it lists.
    pub const ID_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]{1,256}$";

    /// Filter texts (`filter::parse_name`, `parse_status`): 1-256
    /// characters, no control character.
    pub const TEXT_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]{1,256}$";

    /// `worker_type=`, any case.
    pub const WORKER_TYPE_PATTERN: &str =
        "^([gG][pP][uU]|[cC][pP][uU]|[sS][tT][oO][rR][aA][gG][eE]|[eE][dD][gG][eE])$";

    /// A finite number, or its decimal text (no exponent); null is absent.
    pub fn number() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(-f64::MAX))
                    .maximum(Some(f64::MAX)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)\s*$")),
            )
            .into()
    }

    /// A non-negative integer (below 2^64), or its decimal text; null is absent.
    pub fn count() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(0))
                    .maximum(Some(u64::MAX)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(r"^\s*\+?[0-9]{1,19}\s*$")),
            )
            .into()
    }
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
        Some(Value::String(s)) => decimal(&s),
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

/// Decimal text (`"0.25"`, `" -3 "`, `"+.5"`): digits with an optional
/// sign and point, no exponent, `inf` or `nan` (exactly what
/// [`schema::number`] says).
fn decimal(s: &str) -> Option<f64> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let ok = !(int.is_empty() && frac.is_empty()) && all_digits(int) && all_digits(frac);
    ok.then(|| t.parse::<f64>().ok()).flatten()
}

/// A JSON number that is a non-negative integer below 2^64, as JSON
/// Schema's `integer` counts them (`3.0` is one).
pub(crate) fn whole_number(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    match (n.as_u64(), n.as_f64()) {
        (Some(u), _) => Some(u),
        (None, Some(x)) if x >= 0.0 && x.fract() == 0.0 && x < 18_446_744_073_709_551_616.0 => {
            Some(x as u64)
        }
        _ => None,
    }
}

fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let bad = || serde::de::Error::custom("expected a non-negative integer");
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(n @ Value::Number(_)) => whole_number(&n).map(Some).ok_or_else(bad),
        Some(Value::String(s)) => {
            let t = s.trim();
            let digits = t.strip_prefix('+').unwrap_or(t);
            // At most 19 digits, as the spec's pattern says (all below 2^64).
            match digits.len() <= 19 && digits.bytes().all(|b| b.is_ascii_digit()) {
                true => digits.parse::<u64>().map(Some).map_err(|_| bad()),
                false => Err(bad()),
            }
        }
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a non-negative integer, got {}",
            kind(&other)
        ))),
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
