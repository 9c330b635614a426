//! Worker type and tier from the capabilities an agent registers with.
//!
//! The two originals decide differently. The local coordinator reads flags
//! (`has_gpu`, `worker_type`, `has_edge`, `has_public_ip`, `has_storage`);
//! the service coordinator reads sizes (`gpu_memory` + `gpu_type`, `ram` and
//! `cpu_cores`). An agent of either kind sends its own vocabulary, so flags
//! win when present, sizes decide otherwise, and an empty object is a cpu
//! worker. Unlike the local original (which gave `{}` type cpu but tier 3),
//! the tier always follows the type.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::size::{size_of, GIGABYTE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerType {
    Gpu,
    Cpu,
    Storage,
    Edge,
}

impl WorkerType {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerType::Gpu => "gpu",
            WorkerType::Cpu => "cpu",
            WorkerType::Storage => "storage",
            WorkerType::Edge => "edge",
        }
    }

    /// Tier 1 gpu, 2 cpu, 3 storage, 4 edge.
    pub fn tier(self) -> u8 {
        match self {
            WorkerType::Gpu => 1,
            WorkerType::Cpu => 2,
            WorkerType::Storage => 3,
            WorkerType::Edge => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classification {
    pub worker_type: WorkerType,
    pub tier: u8,
}

impl From<WorkerType> for Classification {
    fn from(worker_type: WorkerType) -> Self {
        Self {
            worker_type,
            tier: worker_type.tier(),
        }
    }
}

/// Python-like truthiness, except that the strings agents write for "no"
/// (`"false"`, `"0"`, `"no"`, `"off"`) are false, as their authors meant.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => {
            let s = s.trim();
            !(s.is_empty()
                || ["false", "0", "no", "off", "none", "null"]
                    .iter()
                    .any(|f| s.eq_ignore_ascii_case(f)))
        }
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

const FLAGS: [&str; 5] = [
    "has_gpu",
    "worker_type",
    "has_edge",
    "has_public_ip",
    "has_storage",
];
const SIZES: [&str; 3] = ["gpu_memory", "ram", "cpu_cores"];

/// Decides type and tier; never fails (unknown sizes count as absent).
pub fn classify(caps: &Map<String, Value>) -> Classification {
    if FLAGS.iter().any(|k| caps.contains_key(*k)) {
        by_flags(caps).into()
    } else if SIZES.iter().any(|k| caps.contains_key(*k)) {
        by_sizes(caps).into()
    } else {
        WorkerType::Cpu.into()
    }
}

fn by_flags(caps: &Map<String, Value>) -> WorkerType {
    let flag = |k: &str| caps.get(k).is_some_and(truthy);
    let declared = caps
        .get("worker_type")
        .and_then(Value::as_str)
        .map(|s| s.trim().to_ascii_lowercase());
    let declared = declared.as_deref();
    if flag("has_gpu") || declared == Some("gpu") {
        WorkerType::Gpu
    } else if flag("has_edge") || declared == Some("edge") || flag("has_public_ip") {
        WorkerType::Edge
    } else if flag("has_storage") || declared == Some("storage") {
        WorkerType::Storage
    } else {
        WorkerType::Cpu
    }
}

fn by_sizes(caps: &Map<String, Value>) -> WorkerType {
    let gpu_mem = caps.get("gpu_memory").and_then(size_of).unwrap_or(0);
    let gpu_type = caps.get("gpu_type").is_some_and(truthy);
    let ram = caps.get("ram").and_then(size_of).unwrap_or(0);
    let cores = caps.get("cpu_cores").and_then(cores).unwrap_or(0.0);
    if gpu_type && gpu_mem >= 8 * GIGABYTE {
        WorkerType::Gpu
    } else if ram >= 4 * GIGABYTE && cores >= 2.0 {
        WorkerType::Cpu
    } else {
        WorkerType::Storage
    }
}

fn cores(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn class(v: Value) -> (WorkerType, u8) {
        let c = classify(v.as_object().unwrap());
        (c.worker_type, c.tier)
    }

    #[test]
    fn flag_rules_in_order() {
        use WorkerType::*;
        let table = [
            (json!({"has_gpu": true}), (Gpu, 1)),
            (json!({"worker_type": "gpu"}), (Gpu, 1)),
            (json!({"worker_type": "GPU"}), (Gpu, 1)),
            (json!({"has_gpu": true, "has_edge": true}), (Gpu, 1)),
            (json!({"has_edge": true, "has_storage": true}), (Edge, 4)),
            (json!({"has_public_ip": true}), (Edge, 4)),
            (json!({"worker_type": "edge"}), (Edge, 4)),
            (json!({"has_storage": true}), (Storage, 3)),
            (json!({"worker_type": "storage"}), (Storage, 3)),
            (json!({"has_gpu": false, "worker_type": "cpu"}), (Cpu, 2)),
            (json!({"has_gpu": "false", "ram": "1GB"}), (Cpu, 2)),
            (json!({"has_gpu": 0}), (Cpu, 2)),
            (json!({"has_public_ip": null}), (Cpu, 2)),
        ];
        for (caps, want) in table {
            assert_eq!(class(caps.clone()), want, "{caps}");
        }
    }

    #[test]
    fn size_rules() {
        use WorkerType::*;
        let table = [
            (
                json!({"cpu_cores": 16, "ram": "64GB", "gpu_memory": "24576MB", "gpu_type": "RTX 4090"}),
                (Gpu, 1),
            ),
            (
                json!({"cpu_cores": 16, "ram": "64GB", "gpu_memory": "24 GiB", "gpu_type": "A10"}),
                (Gpu, 1),
            ),
            // 7.5 GB, not 75: below the GPU threshold.
            (
                json!({"cpu_cores": 4, "ram": "16GB", "gpu_memory": "7.5GB", "gpu_type": "X"}),
                (Cpu, 2),
            ),
            // Unparseable GPU memory is unknown, not an error.
            (
                json!({"cpu_cores": 8, "ram": "32GB", "gpu_memory": "Unknown (AMD)", "gpu_type": "AMD"}),
                (Cpu, 2),
            ),
            // GPU memory without a GPU type is not a GPU.
            (
                json!({"cpu_cores": 8, "ram": "32GB", "gpu_memory": "24GB"}),
                (Cpu, 2),
            ),
            (json!({"cpu_cores": "2", "ram": "4GB"}), (Cpu, 2)),
            (json!({"cpu_cores": 1, "ram": "64GB"}), (Storage, 3)),
            (json!({"cpu_cores": 8, "ram": "3.9GB"}), (Storage, 3)),
            (json!({"cpu_cores": 8}), (Storage, 3)),
            (json!({"ram": "garbage", "cpu_cores": "many"}), (Storage, 3)),
        ];
        for (caps, want) in table {
            assert_eq!(class(caps.clone()), want, "{caps}");
        }
    }

    #[test]
    fn empty_capabilities_type_and_tier_agree() {
        assert_eq!(class(json!({})), (WorkerType::Cpu, 2));
        assert_eq!(class(json!({"hostname": "x"})), (WorkerType::Cpu, 2));
    }

    #[test]
    fn truthiness() {
        for v in [
            json!(true),
            json!(1),
            json!("yes"),
            json!([0]),
            json!({"a": 1}),
        ] {
            assert!(truthy(&v), "{v}");
        }
        for v in [
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!("False"),
            json!("0"),
            json!(null),
            json!([]),
        ] {
            assert!(!truthy(&v), "{v}");
        }
    }
}
