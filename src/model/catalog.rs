//! The service catalog (what a worker of each type may run, with the
//! container image and env an agent starts for it) and the assignment
//! rule, as data plus one pure function.
//!
//! The built-in table is the local original's services, with the service
//! original's container images and env (`models/worker.py` there), plus the
//! two services only the service original had (`client-rag`,
//! `doc-processor`). `--catalog FILE` replaces it with a TOML file
//! (`[[services]]` tables, optional `[aliases]`) or a JSON file
//! (`{"services": [...], "aliases": {...}}`), validated at start.
//!
//! Env values are templates (`model::env`): `{worker_id}`,
//! `{coordinator_url}` and `{port}` are filled in per worker when its
//! containers are written. Every service's env carries `COORDINATOR_URL`
//! and `WORKER_ID` (added when a table leaves them out): the worker images
//! read both.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::env::{self, ContainerJson, Env, Vars};
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
    /// Container image told to agents; default `ghcr.io/rma/<name>:latest`
    /// (the originals' registry).
    #[serde(default)]
    pub image: String,
    /// Container env templates (see `model::env`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl ServiceSpec {
    /// This service's `assigned_containers` entry for `worker_id`.
    pub fn container<'a>(
        &'a self,
        worker_id: &'a str,
        coordinator_url: &'a str,
    ) -> ContainerJson<'a> {
        ContainerJson {
            name: &self.name,
            image: &self.image,
            port: self.port,
            env: Env {
                templates: &self.env,
                vars: Vars {
                    worker_id,
                    coordinator_url,
                    port: self.port,
                },
            },
        }
    }
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

/// Env every container carries; a catalog may set other values for them.
const BASE_ENV: [(&str, &str); 2] = [
    ("COORDINATOR_URL", "{coordinator_url}"),
    ("WORKER_ID", "{worker_id}"),
];

/// A row of the built-in table.
struct Builtin {
    name: &'static str,
    tier: u8,
    requires: WorkerType,
    priority: u32,
    port: u16,
    image: &'static str,
    /// Beyond [`BASE_ENV`].
    env: &'static [(&'static str, &'static str)],
}

const fn row(
    name: &'static str,
    tier: u8,
    requires: WorkerType,
    priority: u32,
    port: u16,
    image: &'static str,
    env: &'static [(&'static str, &'static str)],
) -> Builtin {
    Builtin {
        name,
        tier,
        requires,
        priority,
        port,
        image,
        env,
    }
}

/// Services, tiers, priorities and ports: the local original's table, plus
/// the service original's `client-rag` and `doc-processor`. Images and
/// extra env: the service original's container assignments, except
/// credentials it hard-coded (`JWT_SECRET`, `POSTGRES_PASSWORD`,
/// `NEO4J_AUTH`): worker listings show env to clients, so secrets do not
/// belong in it. Ollama is told to listen on the catalog port
/// (`0.0.0.0:{port}`; the original said 11434 while routing elsewhere).
/// Services neither original gave an image get the default.
const DEFAULT: [Builtin; 16] = {
    use WorkerType::{Cpu, Edge, Gpu, Storage};
    const NONE: &[(&str, &str)] = &[];
    [
        row(
            "llm-inference",
            1,
            Gpu,
            1,
            8105,
            "ghcr.io/rma/vllm-worker:latest",
            &[
                ("MODEL_NAME", "meta-llama/Llama-2-7b-hf"),
                ("GPU_MEMORY_UTILIZATION", "0.9"),
            ],
        ),
        row(
            "vision-ocr",
            1,
            Gpu,
            1,
            8104,
            "ghcr.io/rma/ollama-vision-worker:latest",
            &[("OLLAMA_HOST", "0.0.0.0:{port}")],
        ),
        row(
            "rag-embeddings",
            1,
            Gpu,
            2,
            8102,
            "ghcr.io/rma/rag-worker:latest",
            NONE,
        ),
        row(
            "ner-extraction",
            2,
            Cpu,
            2,
            8108,
            "ghcr.io/rma/ner-worker:latest",
            NONE,
        ),
        row(
            "document-processing",
            2,
            Cpu,
            2,
            8103,
            "ghcr.io/rma/upload-worker:latest",
            NONE,
        ),
        row(
            "notes-coa",
            2,
            Cpu,
            3,
            8100,
            "ghcr.io/rma/notes-worker:latest",
            NONE,
        ),
        row(
            "client-rag",
            2,
            Cpu,
            4,
            8101,
            "ghcr.io/rma/client-rag-worker:latest",
            NONE,
        ),
        row(
            "doc-processor",
            2,
            Cpu,
            4,
            8104,
            "ghcr.io/rma/doc-processor-worker:latest",
            NONE,
        ),
        row(
            "chromadb",
            3,
            Storage,
            1,
            8000,
            "chromadb/chroma:latest",
            NONE,
        ),
        row("redis", 3, Storage, 2, 6379, "redis:7-alpine", NONE),
        row(
            "postgres",
            3,
            Storage,
            3,
            5432,
            "postgres:16-alpine",
            &[("POSTGRES_USER", "rma_user"), ("POSTGRES_DB", "rma_db")],
        ),
        row("minio", 3, Storage, 4, 9000, "minio/minio:latest", NONE),
        row("neo4j", 3, Storage, 5, 7474, "neo4j:5.15", NONE),
        row("coordinator", 4, Edge, 1, 8080, "", NONE),
        row("edge-proxy", 4, Edge, 1, 8787, "", NONE),
        row("load-balancer", 4, Edge, 2, 8090, "", NONE),
    ]
};

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

/// An environment variable name as shells and Docker take it.
fn valid_env_name(k: &str) -> bool {
    let mut b = k.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl Default for Catalog {
    fn default() -> Self {
        let services = DEFAULT
            .iter()
            .map(|b| ServiceSpec {
                name: b.name.into(),
                tier: b.tier,
                requires: b.requires,
                priority: b.priority,
                port: b.port,
                image: b.image.into(),
                env: b
                    .env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
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
    /// pointing at real services, env names valid and env values valid
    /// templates. Fills default images and the base env.
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
            if s.image.trim().is_empty() {
                s.image = format!("ghcr.io/rma/{}:latest", s.name);
            }
            for (k, v) in BASE_ENV {
                s.env.entry(k.into()).or_insert_with(|| v.into());
            }
            for (k, v) in &s.env {
                if !valid_env_name(k) {
                    return Err(CatalogError::Invalid(format!(
                        "service {}: bad env name {k:?}",
                        s.name
                    )));
                }
                env::check(v).map_err(|e| {
                    CatalogError::Invalid(format!("service {}: env {k}: {e}", s.name))
                })?;
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
    /// `min(3, e)`, where `e` is the number eligible. A service whose port
    /// an earlier pick already uses is passed over.
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
            let uncovered: Vec<&ServiceSpec> = one_per_port(
                eligible.iter().filter(|(n, _)| *n == 0).map(|(_, s)| *s),
                usize::MAX,
            );
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
        one_per_port(eligible.into_iter().map(|(_, s)| s), take)
    }
}

/// Up to `take` of `specs`, in order, skipping any whose port an earlier
/// one took: one machine cannot run two containers on one port (the
/// built-in `vision-ocr` and `doc-processor` both use 8104, as they did in
/// their originals, which never gave both to one worker).
fn one_per_port<'a>(
    specs: impl Iterator<Item = &'a ServiceSpec>,
    take: usize,
) -> Vec<&'a ServiceSpec> {
    let mut out: Vec<&ServiceSpec> = Vec::new();
    for s in specs {
        if out.len() == take {
            break;
        }
        if out.iter().all(|o| o.port != s.port) {
            out.push(s);
        }
    }
    out
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
                "notes-coa",
                "client-rag"
            ],
            "doc-processor shares vision-ocr's port 8104: left for another worker"
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
                "notes-coa",
                "client-rag",
                "doc-processor"
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
        // 5 cpu services.
        assert_eq!(names(c.assign(WorkerType::Cpu, &|_| 0, 2)).len(), 3);
        assert_eq!(names(c.assign(WorkerType::Cpu, &|_| 0, 3)).len(), 2);
        assert_eq!(names(c.assign(WorkerType::Cpu, &|_| 0, 5)).len(), 1);
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
        assert_eq!(c.services()[0].image, "ghcr.io/rma/vllm-worker:latest");
    }

    #[test]
    fn a_worker_never_gets_two_services_on_one_port() {
        let spec = |name: &str, priority, port| ServiceSpec {
            name: name.into(),
            tier: 2,
            requires: WorkerType::Cpu,
            priority,
            port,
            image: String::new(),
            env: BTreeMap::new(),
        };
        let c = Catalog::new(
            vec![spec("a", 1, 80), spec("b", 2, 80), spec("c", 3, 81)],
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(names(c.assign(WorkerType::Cpu, &|_| 0, 0)), ["a", "c"]);
        assert_eq!(names(c.assign(WorkerType::Gpu, &|_| 0, 0)), ["a", "c"]);
        // Covered `a` goes to the back: `b` now comes first and wins 80.
        let f = |n: &str| u32::from(n == "a");
        assert_eq!(names(c.assign(WorkerType::Cpu, &f, 0)), ["b", "c"]);
        assert_eq!(names(c.assign(WorkerType::Cpu, &f, 9)), ["b"]);
    }

    /// The service original's images, and the env every container needs.
    #[test]
    fn built_in_images_and_env() {
        let c = Catalog::default();
        let image = |n: &str| c.resolve(n).unwrap().image.as_str();
        for (service, want) in [
            ("llm-inference", "ghcr.io/rma/vllm-worker:latest"),
            ("vision-ocr", "ghcr.io/rma/ollama-vision-worker:latest"),
            ("rag-embeddings", "ghcr.io/rma/rag-worker:latest"),
            ("ner-extraction", "ghcr.io/rma/ner-worker:latest"),
            ("document-processing", "ghcr.io/rma/upload-worker:latest"),
            ("notes-coa", "ghcr.io/rma/notes-worker:latest"),
            ("client-rag", "ghcr.io/rma/client-rag-worker:latest"),
            ("doc-processor", "ghcr.io/rma/doc-processor-worker:latest"),
            ("postgres", "postgres:16-alpine"),
            ("coordinator", "ghcr.io/rma/coordinator:latest"),
        ] {
            assert_eq!(image(service), want);
        }
        assert_eq!(c.resolve("client-rag").unwrap().port, 8101);
        assert_eq!(c.resolve("doc-processor").unwrap().port, 8104);
        for s in c.services() {
            assert_eq!(s.env["COORDINATOR_URL"], "{coordinator_url}", "{}", s.name);
            assert_eq!(s.env["WORKER_ID"], "{worker_id}", "{}", s.name);
            assert!(!s.env.contains_key("JWT_SECRET") && !s.env.contains_key("POSTGRES_PASSWORD"));
        }
        let json = serde_json::to_value(
            c.resolve("ocr")
                .unwrap()
                .container("gpu-1", "https://c.example"),
        )
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "vision-ocr", "image": "ghcr.io/rma/ollama-vision-worker:latest", "port": 8104,
                "env": {"COORDINATOR_URL": "https://c.example", "WORKER_ID": "gpu-1",
                        "OLLAMA_HOST": "0.0.0.0:8104"}
            })
        );
    }

    #[test]
    fn env_templates_and_names_are_checked() {
        let with_env = |k: &str, v: &str| {
            let mut s = Catalog::default().services()[0].clone();
            s.env = [(k.to_string(), v.to_string())].into();
            Catalog::new(vec![s], BTreeMap::new())
        };
        assert!(with_env("URL", "{coordinator_url}/x").is_ok());
        // A table may set its own value for the base variables.
        let c = with_env("COORDINATOR_URL", "http://coordinator:8080").unwrap();
        assert_eq!(
            c.services()[0].env["COORDINATOR_URL"],
            "http://coordinator:8080"
        );
        let e = with_env("URL", "{coordinator}").unwrap_err().to_string();
        assert!(e.contains("llm-inference") && e.contains("URL"), "{e}");
        assert!(with_env("X", "a{b").is_err());
        for bad in ["", "1X", "A-B", "A B"] {
            assert!(with_env(bad, "v").is_err(), "{bad:?}");
        }
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
        assert_eq!(c.services()[0].env["WORKER_ID"], "{worker_id}");

        let json_path = dir.join("c.json");
        std::fs::write(
            &json_path,
            r#"{"services":[{"name":"a","tier":2,"requires":"cpu","priority":1,"port":1}]}"#,
        )
        .unwrap();
        assert_eq!(
            Catalog::load(&json_path).unwrap().services()[0].image,
            "ghcr.io/rma/a:latest"
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
