//! The service catalog (what a worker of each type may run) and the
//! assignment rule, as data plus one pure function.
//!
//! The built-in table is the local original's. `--catalog FILE` replaces it
//! with a TOML file (`[[services]]` tables, optional `[aliases]`) or a JSON
//! file (`{"services": [...], "aliases": {...}}`), validated at start.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::tier::WorkerType;

/// One service a worker can be told to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub tier: u8,
    /// The worker type that may run it (gpu workers may also run cpu ones).
    pub requires: WorkerType,
    /// Lower runs first when coverage is equal.
    pub priority: u32,
    pub port: u16,
    /// Container image told to agents; default `rma/<name>:latest`.
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    services: Vec<ServiceSpec>,
    /// Short name -> service name (`llm` -> `llm-inference`).
    aliases: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("catalog file {path}: {msg}")]
    Parse { path: String, msg: String },
    #[error("catalog: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    services: Vec<ServiceSpec>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

const DEFAULT: [(&str, u8, WorkerType, u32, u16); 14] = [
    ("llm-inference", 1, WorkerType::Gpu, 1, 8105),
    ("vision-ocr", 1, WorkerType::Gpu, 1, 8104),
    ("rag-embeddings", 1, WorkerType::Gpu, 2, 8102),
    ("ner-extraction", 2, WorkerType::Cpu, 2, 8108),
    ("document-processing", 2, WorkerType::Cpu, 2, 8103),
    ("notes-coa", 2, WorkerType::Cpu, 3, 8100),
    ("chromadb", 3, WorkerType::Storage, 1, 8000),
    ("redis", 3, WorkerType::Storage, 2, 6379),
    ("postgres", 3, WorkerType::Storage, 3, 5432),
    ("minio", 3, WorkerType::Storage, 4, 9000),
    ("neo4j", 3, WorkerType::Storage, 5, 7474),
    ("coordinator", 4, WorkerType::Edge, 1, 8080),
    ("edge-proxy", 4, WorkerType::Edge, 1, 8787),
    ("load-balancer", 4, WorkerType::Edge, 2, 8090),
];

const DEFAULT_ALIASES: [(&str, &str); 6] = [
    ("rag", "rag-embeddings"),
    ("upload", "document-processing"),
    ("notes", "notes-coa"),
    ("ner", "ner-extraction"),
    ("ocr", "vision-ocr"),
    ("llm", "llm-inference"),
];

impl Catalog {
    /// The built-in table, made once per process.
    pub fn builtin() -> &'static Catalog {
        static BUILTIN: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(Catalog::default)
    }

    /// Gives the catalog the lifetime of the process. Worker records refer
    /// to their assigned entries (`&'static ServiceSpec`) instead of
    /// copying names, ports and images into each of a million records; a
    /// server loads its catalog once, so this is no leak that grows.
    pub fn leak(self) -> &'static Catalog {
        Box::leak(Box::new(self))
    }
}

impl Default for Catalog {
    fn default() -> Self {
        let services = DEFAULT
            .iter()
            .map(|&(name, tier, requires, priority, port)| ServiceSpec {
                name: name.into(),
                tier,
                requires,
                priority,
                port,
                image: String::new(),
                env: BTreeMap::new(),
            })
            .collect();
        let aliases = DEFAULT_ALIASES
            .iter()
            .map(|(a, s)| (a.to_string(), s.to_string()))
            .collect();
        Self::new(services, aliases).expect("the built-in catalog is valid")
    }
}

impl Catalog {
    /// Validates and builds a catalog: names unique and non-empty, aliases
    /// pointing at real services. Fills default images.
    pub fn new(
        mut services: Vec<ServiceSpec>,
        aliases: BTreeMap<String, String>,
    ) -> Result<Self, CatalogError> {
        if services.is_empty() {
            return Err(CatalogError::Invalid("no services".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &mut services {
            if s.name.trim().is_empty() || s.name.contains('/') {
                return Err(CatalogError::Invalid(format!(
                    "bad service name {:?}",
                    s.name
                )));
            }
            if !seen.insert(s.name.clone()) {
                return Err(CatalogError::Invalid(format!(
                    "service {} is listed twice",
                    s.name
                )));
            }
            if s.image.is_empty() {
                s.image = format!("rma/{}:latest", s.name);
            }
        }
        for (alias, target) in &aliases {
            if !seen.contains(target) {
                return Err(CatalogError::Invalid(format!(
                    "alias {alias} names unknown service {target}"
                )));
            }
        }
        Ok(Self { services, aliases })
    }

    /// Reads a catalog file: JSON when the name ends in `.json`, else TOML.
    pub fn load(path: &Path) -> Result<Self, CatalogError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: shown.clone(),
            source,
        })?;
        let parsed: Result<CatalogFile, String> = if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            toml::from_str(&text).map_err(|e| e.to_string())
        };
        let file = parsed.map_err(|msg| CatalogError::Parse { path: shown, msg })?;
        Self::new(file.services, file.aliases)
    }

    pub fn services(&self) -> &[ServiceSpec] {
        &self.services
    }

    /// A service by full name or short alias.
    pub fn resolve(&self, name: &str) -> Option<&ServiceSpec> {
        let full = self.aliases.get(name).map_or(name, String::as_str);
        self.services.iter().find(|s| s.name == full)
    }

    /// Services for a newly registering worker.
    ///
    /// `covered(name)` is how many healthy workers (cluster-wide, not
    /// counting this one) already run a service; `in_tier` how many healthy
    /// workers share this worker's tier. Eligible services are sorted by
    /// coverage, then priority, then catalog order. A gpu worker takes every
    /// uncovered one (or the first, when all are covered); any other worker
    /// takes 1 when `in_tier >= e`, 2 when `2 * in_tier >= e`, else
    /// `min(3, e)`, where `e` is the number eligible.
    pub fn assign(
        &self,
        worker_type: WorkerType,
        covered: &dyn Fn(&str) -> u32,
        in_tier: u32,
    ) -> Vec<&ServiceSpec> {
        let mut eligible: Vec<(u32, &ServiceSpec)> = self
            .services
            .iter()
            .filter(|s| {
                s.requires == worker_type
                    || (worker_type == WorkerType::Gpu && s.requires == WorkerType::Cpu)
            })
            .map(|s| (covered(&s.name), s))
            .collect();
        // Stable: equal coverage and priority keep catalog order.
        eligible.sort_by_key(|(n, s)| (*n, s.priority));
        if eligible.is_empty() {
            return Vec::new();
        }
        if worker_type == WorkerType::Gpu {
            let uncovered: Vec<&ServiceSpec> = eligible
                .iter()
                .filter(|(n, _)| *n == 0)
                .map(|(_, s)| *s)
                .collect();
            return if uncovered.is_empty() {
                vec![eligible[0].1]
            } else {
                uncovered
            };
        }
        let e = eligible.len();
        let n = in_tier as usize;
        let take = if n >= e {
            1
        } else if 2 * n >= e {
            2
        } else {
            3.min(e)
        };
        eligible.into_iter().take(take).map(|(_, s)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn names(v: Vec<&ServiceSpec>) -> Vec<&str> {
        v.into_iter().map(|s| s.name.as_str()).collect()
    }

    #[test]
    fn first_gpu_takes_every_gpu_and_cpu_service_by_priority() {
        let c = Catalog::default();
        let got = names(c.assign(WorkerType::Gpu, &|_| 0, 0));
        assert_eq!(
            got,
            [
                "llm-inference",
                "vision-ocr",
                "rag-embeddings",
                "ner-extraction",
                "document-processing",
                "notes-coa"
            ]
        );
    }

    #[test]
    fn gpu_takes_only_uncovered_or_the_least_covered() {
        let c = Catalog::default();
        let cov: HashMap<&str, u32> = [("llm-inference", 1), ("vision-ocr", 1)].into();
        let f = |n: &str| cov.get(n).copied().unwrap_or(0);
        assert_eq!(
            names(c.assign(WorkerType::Gpu, &f, 1)),
            [
                "rag-embeddings",
                "ner-extraction",
                "document-processing",
                "notes-coa"
            ]
        );
        let all = |n: &str| if n == "vision-ocr" { 1 } else { 2 };
        assert_eq!(names(c.assign(WorkerType::Gpu, &all, 3)), ["vision-ocr"]);
    }

    #[test]
    fn other_workers_take_fewer_as_their_tier_fills() {
        let c = Catalog::default();
        // 5 storage services.
        let s = |n| names(c.assign(WorkerType::Storage, &|_| 0, n));
        assert_eq!(s(0), ["chromadb", "redis", "postgres"]);
        assert_eq!(s(2), ["chromadb", "redis", "postgres"]);
        assert_eq!(s(3), ["chromadb", "redis"]);
        assert_eq!(s(5), ["chromadb"]);
        // Coverage first: the covered ones go to the back.
        let f = |n: &str| u32::from(n == "chromadb" || n == "redis");
        assert_eq!(names(c.assign(WorkerType::Storage, &f, 9)), ["postgres"]);
        // 3 cpu services.
        assert_eq!(names(c.assign(WorkerType::Cpu, &|_| 0, 1)).len(), 3);
        assert_eq!(names(c.assign(WorkerType::Cpu, &|_| 0, 2)).len(), 2);
        assert_eq!(
            names(c.assign(WorkerType::Edge, &|_| 0, 3)),
            ["coordinator"]
        );
    }

    #[test]
    fn aliases_resolve() {
        let c = Catalog::default();
        assert_eq!(c.resolve("llm").unwrap().name, "llm-inference");
        assert_eq!(c.resolve("ner-extraction").unwrap().port, 8108);
        assert!(c.resolve("nope").is_none());
        assert_eq!(c.services()[0].image, "rma/llm-inference:latest");
    }

    #[test]
    fn files_load_and_are_validated() {
        let dir = std::env::temp_dir().join(format!("catalog-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("c.toml");
        std::fs::write(
            &toml_path,
            r#"
[aliases]
tts = "text-to-speech"

[[services]]
name = "text-to-speech"
tier = 1
requires = "gpu"
priority = 1
port = 9000
image = "acme/tts:2"
env = { MODEL = "small" }
"#,
        )
        .unwrap();
        let c = Catalog::load(&toml_path).unwrap();
        assert_eq!(c.resolve("tts").unwrap().image, "acme/tts:2");
        assert_eq!(c.services()[0].env["MODEL"], "small");

        let json_path = dir.join("c.json");
        std::fs::write(
            &json_path,
            r#"{"services":[{"name":"a","tier":2,"requires":"cpu","priority":1,"port":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            Catalog::load(&json_path).unwrap().services()[0].image,
            "rma/a:latest"
        );

        std::fs::write(
            &json_path,
            r#"{"services":[{"name":"a","tier":2,"requires":"cpu","priority":1,"port":1},
                            {"name":"a","tier":2,"requires":"cpu","priority":1,"port":2}]}"#,
        )
        .unwrap();
        assert!(Catalog::load(&json_path)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        std::fs::write(
            &json_path,
            r#"{"services":[{"name":"a","requires":"quantum"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            Catalog::load(&json_path),
            Err(CatalogError::Parse { .. })
        ));
        assert!(matches!(
            Catalog::load(&dir.join("missing.toml")),
            Err(CatalogError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
