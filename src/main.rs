//! `coordinator`: command line, environment and config file -> `Config`,
//! logging, signals; everything else lives in the library.
//!
//! Precedence: flag > environment variable > `--config` TOML file > default.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use coordinator::config::{SESSION_TTL_MAX, SESSION_TTL_MIN};
use coordinator::model::credential::{self as auth, ApiKey, Role, Secret};
use coordinator::model::Catalog;
use coordinator::server::StartError;
use coordinator::{Config, Server};

/// Declares the CLI flags and the TOML file keys from one list, so the two
/// cannot drift apart. Every option is optional here; defaults come from
/// `Config::default()` after merging.
macro_rules! options {
    ($( $(#[$doc:meta])* $name:ident : $ty:ty, env = $env:literal ;)*) => {
        #[derive(Parser, Debug)]
        #[command(name = "coordinator", version, about = "Thread-per-core coordinator for pools of AI worker machines (drop-in for the RMA coordinators)")]
        struct Cli {
            /// TOML file with any of the options below (keys use underscores).
            #[arg(long, env = "COORDINATOR_CONFIG")]
            config: Option<PathBuf>,
            /// Log as JSON lines instead of text.
            #[arg(long)]
            log_json: bool,
            /// Do not pin shard threads to CPUs.
            #[arg(long)]
            no_pin: bool,
            /// Also require the API key on /health and /metrics.
            #[arg(long)]
            protect_metrics: bool,
            /// Serve a fixed hello-world on every path (benchmark baseline on the same runtime).
            #[arg(long)]
            baseline_hello: bool,
            /// Keep all state in memory: no database, nothing survives a restart.
            #[arg(long)]
            in_memory: bool,
            /// Keep no historical metrics (GET /api/history answers 503).
            #[arg(long)]
            no_history: bool,
            /// Probe a running coordinator instead of starting one: GET
            /// http://127.0.0.1:PORT/health (PORT from --port/PORT/config; HOST
            /// only if it is a specific address), print one line, exit 0 on
            /// status 200 and 1 otherwise. For container HEALTHCHECKs.
            #[arg(long)]
            healthcheck: bool,
            #[command(subcommand)]
            command: Option<Command>,
            $( $(#[$doc])* #[arg(long, env = $env)] $name: Option<$ty>, )*
        }

        #[derive(Deserialize, Default, Debug)]
        #[serde(deny_unknown_fields)]
        struct FileOptions {
            #[serde(default)]
            log_json: bool,
            #[serde(default)]
            no_pin: bool,
            #[serde(default)]
            protect_metrics: bool,
            #[serde(default)]
            in_memory: bool,
            #[serde(default)]
            no_history: bool,
            $( $name: Option<$ty>, )*
        }

        impl Cli {
            /// Fills options not given by flag or environment from the file.
            fn merge(mut self, file: FileOptions) -> Self {
                $( if self.$name.is_none() { self.$name = file.$name; } )*
                self.log_json |= file.log_json;
                self.no_pin |= file.no_pin;
                self.protect_metrics |= file.protect_metrics;
                self.in_memory |= file.in_memory;
                self.no_history |= file.no_history;
                self
            }
        }
    };
}

options! {
    /// Address to bind [default: 0.0.0.0]
    host: IpAddr, env = "HOST";
    /// Port to listen on [default: 8080]
    port: u16, env = "PORT";
    /// Number of shards (threads) [default: CPUs this process may use]
    shards: usize, env = "SHARDS";
    /// Environment name reported on /health [default: production]
    environment: String, env = "ENVIRONMENT";
    /// Seconds without heartbeat before a worker is unhealthy [default: 120]
    heartbeat_timeout: f64, env = "HEARTBEAT_TIMEOUT_SECONDS";
    /// Seconds without heartbeat before a worker is removed [default: 600]
    worker_timeout: f64, env = "WORKER_TIMEOUT_SECONDS";
    /// Heartbeat interval told to agents, seconds [default: 30]
    heartbeat_interval: u64, env = "HEARTBEAT_INTERVAL_SECONDS";
    /// A key that may call every route (admin), as X-API-Key or Authorization: Bearer [default: none]
    api_key: String, env = "API_KEY";
    /// A key of the admin role (all routes) [default: none]
    admin_key: String, env = "ADMIN_API_KEY";
    /// A key of the worker role (register, heartbeat, unregister, pull, complete) [default: none]
    worker_key: String, env = "WORKER_API_KEY";
    /// A key of the client role (inference, /service/*, tasks, discovery, worker list) [default: none]
    client_key: String, env = "CLIENT_API_KEY";
    /// TOML file of [[keys]] (key, role, optional workers globs and name), several per role [default: none]
    keys_file: PathBuf, env = "KEYS_FILE";
    /// TOML file of [[users]] (username, argon2 password_hash, role) who may log in [default: none]
    users_file: PathBuf, env = "USERS_FILE";
    /// HS256 secret of login tokens, at least 32 bytes; required with --users-file [default: none]
    jwt_secret: String, env = "JWT_SECRET";
    /// Lifetime of a login token, seconds [default: 86400]
    token_expiry: f64, env = "TOKEN_EXPIRY_SECONDS";
    /// Lifetime of a browser session cookie (POST /api/session), seconds, clamped to 60..=604800 [default: 43200]
    session_ttl: f64, env = "SESSION_TTL_SECONDS";
    /// Failed logins allowed per client address per window (per shard) [default: 5]
    login_max_failures: u32, env = "LOGIN_MAX_FAILURES";
    /// Login rate-limit window, seconds [default: 60]
    login_window: f64, env = "LOGIN_WINDOW_SECONDS";
    /// CORS origins, comma separated; * allows any [default: none]
    allowed_origins: String, env = "ALLOWED_ORIGINS";
    /// URL agents should use to reach this coordinator [default: from the Host header]
    public_url: String, env = "COORDINATOR_URL";
    /// SQLite database path; its directory is created [default: ./data/coordinator.db]
    db: PathBuf, env = "DATABASE_PATH";
    /// When commits reach the disk: full (fsync each commit), normal, off [default: full]
    sync: String, env = "DATABASE_SYNC";
    /// Seconds between pool-wide history samples, 1..=3600 [default: 10]
    history_interval: u64, env = "HISTORY_INTERVAL_SECONDS";
    /// Seconds between samples of each worker's load and active requests, 1..=3600 [default: 60]
    history_worker_interval: u64, env = "HISTORY_WORKER_INTERVAL_SECONDS";
    /// How long history is kept per tier: RAW,1-MINUTE,1-HOUR for the pool, then optionally WORKER-1-MINUTE,WORKER-1-HOUR for each worker's lines (units s, m, h, d) [default: 1d,30d,400d,2d,30d]
    history_retention: String, env = "HISTORY_RETENTION";
    /// Write coalesced heartbeat state at least this often, ms [default: 1000]
    heartbeat_flush_ms: u64, env = "HEARTBEAT_FLUSH_MS";
    /// Service catalog file, TOML or .json [default: built-in table]
    catalog: PathBuf, env = "CATALOG_PATH";
    /// Largest accepted request body in bytes [default: 1048576]
    max_body_bytes: usize, env = "MAX_BODY_BYTES";
    /// Largest accepted request head in bytes, exact [default: 65536]
    max_header_bytes: usize, env = "MAX_HEADER_BYTES";
    /// Registered workers at most; each shard takes its share [default: 1000000]
    max_workers: usize, env = "MAX_WORKERS";
    /// Events each shard keeps for resuming subscribers, 16..=10000000 [default: 100000]
    event_ring: usize, env = "EVENT_RING";
    /// Events a subscriber may fall behind before it is dropped with a reset [default: 10000]
    event_subscriber_buffer: usize, env = "EVENT_SUBSCRIBER_BUFFER";
    /// Largest worker `capabilities` (JSON bytes) and heartbeat body [default: 65536]
    max_capabilities_bytes: usize, env = "MAX_CAPABILITIES_BYTES";
    /// Most `services` / `containers` entries in one registration [default: 64]
    max_worker_entries: usize, env = "MAX_WORKER_ENTRIES";
    /// Open connections allowed per shard [default: 10000]
    max_connections: usize, env = "MAX_CONNECTIONS_PER_SHARD";
    /// Close idle keep-alive connections after this many seconds [default: 60]
    idle_timeout: f64, env = "IDLE_TIMEOUT_SECONDS";
    /// Close connections whose request head takes longer, seconds [default: 10]
    header_timeout: f64, env = "HEADER_TIMEOUT_SECONDS";
    /// Answer 408 when a request body takes longer, seconds [default: 30]
    body_timeout: f64, env = "BODY_TIMEOUT_SECONDS";
    /// On SIGINT/SIGTERM, wait this long for in-flight requests, seconds [default: 10]
    shutdown_timeout: f64, env = "SHUTDOWN_TIMEOUT_SECONDS";
    /// Seconds a pulled task stays leased to its worker [default: 300]
    task_lease_seconds: f64, env = "TASK_LEASE_SECONDS";
    /// Leases before an unanswered task is dead-lettered [default: 3]
    task_max_attempts: u32, env = "TASK_MAX_ATTEMPTS";
    /// Longest long-poll a worker may ask for with wait=, seconds [default: 60]
    task_max_wait: f64, env = "TASK_MAX_WAIT_SECONDS";
    /// Finished tasks kept per shard for GET /api/tasks/{id}, oldest dropped first [default: 10000]
    task_retention: usize, env = "TASK_RETENTION";
    /// Proxy: seconds to connect to a worker [default: 2]
    proxy_connect_timeout: f64, env = "PROXY_CONNECT_TIMEOUT_SECONDS";
    /// Proxy: seconds to wait for a worker's response head [default: 120]
    proxy_request_timeout: f64, env = "PROXY_REQUEST_TIMEOUT_SECONDS";
    /// Proxy: seconds a failed worker is avoided [default: 10]
    route_cooldown: f64, env = "ROUTE_COOLDOWN_SECONDS";
    /// Proxy: PEM file of extra CA certificates trusted for https:// workers, added to the bundled Mozilla roots [default: none]
    proxy_ca_file: PathBuf, env = "PROXY_CA_FILE";
    /// Proxy: networks workers may be reached in, comma-separated CIDRs (e.g. 10.0.0.0/8,fd00::/8); link-local, 0.0.0.0/:: and our own address are always refused [default: any]
    worker_networks: String, env = "WORKER_NETWORKS";
    /// Cluster mode: etcd client URLs, comma separated (e.g. http://10.0.0.5:2379,http://10.0.0.6:2379); without it the node runs alone [default: none]
    cluster_etcd: String, env = "CLUSTER_ETCD";
    /// Cluster mode: this node's name, unique in the cluster [default: the host name]
    node_id: String, env = "NODE_ID";
    /// Cluster mode: the URL other nodes reach this one at, http://host:port [default: --public-url, else http://HOST:PORT]
    advertise_url: String, env = "ADVERTISE_URL";
    /// Cluster mode: prefix of every etcd key, so clusters can share an etcd [default: coordinator]
    cluster_name: String, env = "CLUSTER_NAME";
    /// Cluster mode: TTL of this node's etcd lease, 2..=60 seconds; a dead node's workers move after it [default: 5]
    cluster_lease_seconds: u64, env = "CLUSTER_LEASE_SECONDS";
    /// Log filter, e.g. info or coordinator=debug [default: info]
    log_level: String, env = "RUST_LOG";
    /// Access-log lines (one per request, at info) per second per shard at most; the rest are counted in one line per second; 0 turns the access log off [default: 100]
    access_log_rate: u32, env = "ACCESS_LOG_RATE";
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Read a password from standard input (one line) and print its argon2id
    /// PHC string for the `password_hash` of a --users-file entry.
    HashPassword,
    /// Print the OpenAPI 3.1 document of this build (what `GET
    /// /openapi.json` serves), e.g. to generate a client without a server.
    Openapi,
    /// Print the GraphQL schema (SDL) of `/graphql`.
    GraphqlSchema,
}

/// `coordinator hash-password`: stdin -> PHC string on stdout.
fn hash_password_command() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("coordinator: cannot read the password: {e}");
        return ExitCode::from(2);
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("coordinator: empty password");
        return ExitCode::from(2);
    }
    match coordinator::model::credential::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("coordinator: {e}");
            ExitCode::from(1)
        }
    }
}

/// How long `--healthcheck` waits for the whole exchange; under the
/// timeouts health checkers use (Docker's default is 30 s, the shipped
/// Dockerfile and compose file use 5 s).
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// `coordinator --healthcheck`: one line on stdout, exit 0 if healthy.
fn healthcheck_command(cli: &Cli) -> ExitCode {
    let port = cli.port.unwrap_or(Config::default().listen.port());
    let addr = coordinator::probe::probe_addr(cli.host, port);
    // With --protect-metrics /health needs the admin role: send a key of it
    // when the environment has one.
    let key = cli.api_key.as_deref().or(cli.admin_key.as_deref());
    match coordinator::probe::check_health(addr, key, HEALTHCHECK_TIMEOUT) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            println!("{line}");
            ExitCode::from(1)
        }
    }
}

/// Every key given by flag, environment or keys file, with its role.
fn keys(cli: &Cli) -> Result<Vec<ApiKey>, String> {
    let mut keys = Vec::new();
    for (k, role) in [
        (&cli.admin_key, Role::Admin),
        (&cli.worker_key, Role::Worker),
        (&cli.client_key, Role::Client),
    ] {
        if let Some(k) = k {
            if k.is_empty() {
                return Err(format!(
                    "--{}-key must not be empty (omit it instead)",
                    role.as_str()
                ));
            }
            keys.push(ApiKey::new(k, role));
        }
    }
    if let Some(p) = &cli.keys_file {
        keys.extend(auth::load_keys(p)?);
    }
    Ok(keys)
}

/// Where state lives unless `--db` or `--in-memory` says otherwise.
const DEFAULT_DB_PATH: &str = "./data/coordinator.db";

fn secs(name: &str, v: Option<f64>, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "--{name} must be a positive number of seconds, got {s}"
        )),
    }
}

fn build_config(cli: &Cli) -> Result<Config, String> {
    let d = Config::default();
    let catalog = match &cli.catalog {
        Some(p) => Catalog::load(p).map_err(|e| e.to_string())?.leak(),
        None => Catalog::builtin(),
    };
    let sync = match &cli.sync {
        Some(s) => s.parse().map_err(|e| format!("--{e}"))?,
        None => d.sync,
    };
    let heartbeat_flush = match cli.heartbeat_flush_ms {
        None => d.heartbeat_flush,
        Some(ms) if (1..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(format!(
                "--heartbeat-flush-ms must be between 1 and 3600000, got {ms}"
            ))
        }
    };
    let cfg = Config {
        listen: SocketAddr::new(
            cli.host.unwrap_or(d.listen.ip()),
            cli.port.unwrap_or(d.listen.port()),
        ),
        shards: cli.shards,
        pin: !cli.no_pin,
        environment: cli.environment.clone().unwrap_or(d.environment),
        heartbeat_timeout: secs(
            "heartbeat-timeout",
            cli.heartbeat_timeout,
            d.heartbeat_timeout,
        )?,
        worker_timeout: secs("worker-timeout", cli.worker_timeout, d.worker_timeout)?,
        heartbeat_interval_secs: cli.heartbeat_interval.unwrap_or(d.heartbeat_interval_secs),
        // An empty key is refused below, not taken as "no key".
        api_key: cli.api_key.clone(),
        keys: keys(cli)?,
        users: match &cli.users_file {
            Some(p) => auth::load_users(p)?,
            None => Vec::new(),
        },
        jwt_secret: cli.jwt_secret.as_deref().map(Secret::from),
        token_expiry: secs("token-expiry", cli.token_expiry, d.token_expiry)?,
        session_ttl: secs("session-ttl", cli.session_ttl, d.session_ttl)?
            .clamp(SESSION_TTL_MIN, SESSION_TTL_MAX),
        login_max_failures: cli
            .login_max_failures
            .unwrap_or(d.login_max_failures)
            .max(1),
        login_window: secs("login-window", cli.login_window, d.login_window)?,
        protect_metrics: cli.protect_metrics,
        allowed_origins: cli
            .allowed_origins
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        public_url: cli.public_url.clone(),
        database_path: if cli.in_memory {
            None
        } else {
            Some(
                cli.db
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DB_PATH)),
            )
        },
        sync,
        heartbeat_flush,
        catalog,
        max_body_bytes: cli.max_body_bytes.unwrap_or(d.max_body_bytes),
        max_header_bytes: cli.max_header_bytes.unwrap_or(d.max_header_bytes).max(256),
        max_workers: cli.max_workers.unwrap_or(d.max_workers).max(1),
        event_ring: cli.event_ring.unwrap_or(d.event_ring).clamp(16, 10_000_000),
        access_log_rate: cli.access_log_rate.unwrap_or(d.access_log_rate),
        event_subscriber_buffer: cli
            .event_subscriber_buffer
            .unwrap_or(d.event_subscriber_buffer)
            .max(1),
        max_capabilities_bytes: cli
            .max_capabilities_bytes
            .unwrap_or(d.max_capabilities_bytes)
            .max(256),
        max_worker_entries: cli.max_worker_entries.unwrap_or(d.max_worker_entries),
        max_connections_per_shard: cli
            .max_connections
            .unwrap_or(d.max_connections_per_shard)
            .max(1),
        idle_timeout: secs("idle-timeout", cli.idle_timeout, d.idle_timeout)?,
        header_timeout: secs("header-timeout", cli.header_timeout, d.header_timeout)?,
        body_timeout: secs("body-timeout", cli.body_timeout, d.body_timeout)?,
        shutdown_timeout: secs("shutdown-timeout", cli.shutdown_timeout, d.shutdown_timeout)?,
        baseline_hello: cli.baseline_hello,
        task_lease: secs("task-lease-seconds", cli.task_lease_seconds, d.task_lease)?,
        task_max_attempts: cli.task_max_attempts.unwrap_or(d.task_max_attempts).max(1),
        task_max_wait: secs("task-max-wait", cli.task_max_wait, d.task_max_wait)?,
        task_retention: cli.task_retention.unwrap_or(d.task_retention).max(1),
        proxy_connect_timeout: secs(
            "proxy-connect-timeout",
            cli.proxy_connect_timeout,
            d.proxy_connect_timeout,
        )?,
        proxy_request_timeout: secs(
            "proxy-request-timeout",
            cli.proxy_request_timeout,
            d.proxy_request_timeout,
        )?,
        route_cooldown: secs("route-cooldown", cli.route_cooldown, d.route_cooldown)?,
        proxy_ca_file: cli.proxy_ca_file.clone(),
        worker_networks: coordinator::proxy::guard::parse_networks(
            cli.worker_networks.as_deref().unwrap_or(""),
        )
        .map_err(|e| format!("--worker-networks: {e}"))?,
        cluster: cluster_settings(cli)?,
        history: !cli.no_history,
        history_interval: cli
            .history_interval
            .map_or(d.history_interval, Duration::from_secs),
        history_worker_interval: cli
            .history_worker_interval
            .map_or(d.history_worker_interval, Duration::from_secs),
        history_retention: match &cli.history_retention {
            Some(r) => coordinator::history::Retention::parse(r)
                .map_err(|e| format!("--history-retention: {e}"))?,
            None => d.history_retention,
        },
        ..d
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Cluster mode when `--cluster-etcd` is given; the other cluster flags
/// need it.
fn cluster_settings(cli: &Cli) -> Result<Option<coordinator::cluster::Settings>, String> {
    let Some(etcd) = cli.cluster_etcd.as_deref() else {
        if cli.node_id.is_some() || cli.advertise_url.is_some() || cli.cluster_name.is_some() {
            return Err("--node-id, --advertise-url and --cluster-name need --cluster-etcd".into());
        }
        return Ok(None);
    };
    let host = cli.host.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let host = if host.is_unspecified() {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host
    };
    let port = cli.port.unwrap_or(Config::default().listen.port());
    let node_id = match &cli.node_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .map_err(|e| format!("--node-id not given and the host name is unreadable: {e}"))?,
    };
    Ok(Some(coordinator::cluster::Settings {
        endpoints: etcd
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        node_id,
        advertise_url: cli
            .advertise_url
            .clone()
            .or_else(|| cli.public_url.clone())
            .unwrap_or_else(|| format!("http://{}", SocketAddr::new(host, port))),
        name: cli
            .cluster_name
            .clone()
            .unwrap_or_else(|| "coordinator".into()),
        lease_ttl: Duration::from_secs(cli.cluster_lease_seconds.unwrap_or(5)),
    }))
}

fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_new(cli.log_level.as_deref().unwrap_or("info"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Its fallback for a failed log write is eprintln!, which panics the
        // logging thread when stderr is a file on a full disk (or over
        // RLIMIT_FSIZE): losing a log line must not kill a shard or the
        // database writer.
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not for journald or files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
}

/// Where an option's value came from, for error messages: its flag, its
/// environment variable, or the `--config` file (in precedence order).
fn origin(flag: &str, env: &str) -> String {
    let long = format!("--{flag}");
    if on_command_line(&long) {
        long
    } else if std::env::var_os(env).is_some() {
        format!("{env} (environment, for {long})")
    } else {
        format!("`{}` in the config file", flag.replace('-', "_"))
    }
}

/// Whether `--flag` was given on the command line (as `--flag v` or
/// `--flag=v`).
fn on_command_line(long: &str) -> bool {
    std::env::args().any(|a| {
        a.strip_prefix(long)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
    })
}

/// Refuses what would otherwise be accepted silently and run differently
/// from what was asked: a log filter that does not parse (it would switch
/// every line off), and options that contradict each other.
fn check_options(cli: &Cli) -> Result<(), String> {
    if let Some(level) = &cli.log_level {
        check_log_filter(level).map_err(|e| {
            format!(
                "{}: {level:?} is not a log filter ({e}); e.g. info, warn, coordinator=debug",
                origin("log-level", "RUST_LOG")
            )
        })?;
    }
    if cli.in_memory {
        if let Some(db) = &cli.db {
            return Err(format!(
                "--in-memory keeps no database, but {} names one ({}): drop one of them",
                origin("db", "DATABASE_PATH"),
                db.display()
            ));
        }
    }
    if cli.baseline_hello {
        let keyed = [
            (cli.api_key.is_some(), "api-key", "API_KEY"),
            (cli.keys_file.is_some(), "keys-file", "KEYS_FILE"),
            (cli.users_file.is_some(), "users-file", "USERS_FILE"),
        ];
        if let Some((_, flag, env)) = keyed.iter().find(|k| k.0) {
            return Err(format!(
                "--baseline-hello answers every path without any check, but {} sets credentials: \
                 the baseline is for benchmarks only",
                origin(flag, env)
            ));
        }
    }
    Ok(())
}

/// A log filter as `tracing` reads it, minus one trap: a bare word that
/// is not a level (`nonsense`, `inf`) is taken as a target name, which
/// switches every other line off; here it is an error.
fn check_log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !d.contains(['=', '[', ':']);
        let level = LEVELS.iter().any(|l| d.eq_ignore_ascii_case(l)) || d.parse::<u8>().is_ok();
        if bare && !level {
            return Err(format!(
                "{d:?} is neither a level ({}) nor target=level",
                LEVELS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The environment variable (and its flag) a value clap refused came
/// from, when it was not on the command line.
fn env_source(e: &clap::Error) -> Option<(String, String)> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    // "--port <PORT>"
    let flag = arg.split_whitespace().next()?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let env = cmd
        .get_arguments()
        .find(|a| a.get_long() == flag.strip_prefix("--"))?
        .get_env()?
        .to_string_lossy()
        .into_owned();
    (!on_command_line(flag) && std::env::var_os(&env).is_some()).then(|| (env, flag.to_string()))
}

/// A command line or environment value clap refused: says which
/// environment variable it came from when it was not on the command line
/// (clap names only the flag), and exits 2.
fn clap_error(e: clap::Error) -> ExitCode {
    match env_source(&e) {
        Some((env, flag)) => {
            let text = e.to_string();
            let what = text.lines().next().unwrap_or_default();
            let what = what.strip_prefix("error: ").unwrap_or(what);
            eprintln!("coordinator: environment variable {env} (for {flag}): {what}");
            ExitCode::from(2)
        }
        None => {
            let _ = e.print();
            ExitCode::from(if e.use_stderr() { 2 } else { 0 })
        }
    }
}

fn main() -> ExitCode {
    // A file-size limit (RLIMIT_FSIZE) must surface as a failed database
    // write (503, retried) rather than kill the process with SIGXFSZ.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return clap_error(e),
    };
    match cli.command {
        Some(Command::HashPassword) => return hash_password_command(),
        Some(Command::Openapi) => {
            println!("{:#}", coordinator::http::openapi_document());
            return ExitCode::SUCCESS;
        }
        Some(Command::GraphqlSchema) => {
            print!("{}", coordinator::http::graphql_sdl());
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    if let Some(path) = cli.config.clone() {
        let file = std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| toml::from_str::<FileOptions>(&s).map_err(|e| e.to_string()));
        match file {
            Ok(f) => cli = cli.merge(f),
            Err(e) => {
                eprintln!("coordinator: config file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    if cli.healthcheck {
        return healthcheck_command(&cli);
    }
    if let Err(e) = check_options(&cli) {
        eprintln!("coordinator: {e}");
        return ExitCode::from(2);
    }
    init_logging(&cli);
    let cfg = match build_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coordinator: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown_limit = cfg.shutdown_timeout + Duration::from_secs(5);
    let server = match Server::start(cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coordinator: {e}");
            // A CA file that cannot be used is a configuration error like
            // the others (the server loads it once, first thing).
            let config = matches!(e, StartError::ProxyTls(_));
            return ExitCode::from(if config { 2 } else { 1 });
        }
    };
    // With --log-json, stdout carries JSON only: the listening line above
    // (from the server, as a log record) says the same.
    if !cli.log_json {
        println!(
            "coordinator listening on http://{} with {} shard(s)",
            server.addr(),
            server.shards()
        );
    }

    // Signals are taken on a plain thread; it only flips the shards'
    // shutdown triggers, which then drain on their own cores.
    let stopper = server.stopper();
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        // Logs go to stderr (journald, docker): there is nothing to
        // reopen, so SIGHUP drains and stops like SIGTERM instead of
        // killing the process mid-request.
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coordinator: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down: finishing in-flight requests");
            if let Some(s) = stopper {
                s.stop();
            }
            // The shards drain within --shutdown-timeout; should one miss
            // the request (see runtime::notify), exit rather than hang.
            std::thread::sleep(shutdown_limit);
            eprintln!("coordinator: shards did not stop within {shutdown_limit:?}; exiting");
            std::process::exit(1);
        }
    });
    let failed = server.wait();
    if failed > 0 {
        eprintln!("coordinator: {failed} shard(s) failed");
        return ExitCode::from(1);
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
