//! Server configuration as the library sees it: plain values, already
//! validated. `main.rs` fills it from flags, the originals' environment
//! variables and an optional TOML file; tests build it directly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::model::credential::{ApiKey, Role, Secret, User, MIN_JWT_SECRET};
use crate::model::Catalog;
use crate::store::SyncMode;

/// Shortest browser session: shorter ones would sign users out mid-task.
pub const SESSION_TTL_MIN: Duration = Duration::from_secs(60);
/// Longest browser session: a stolen cookie stays useful at most a week.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (`HOST`, `PORT`).
    pub listen: SocketAddr,
    /// Number of shards; `None` = one per CPU this process may use.
    pub shards: Option<usize>,
    /// Pin each shard's thread to a CPU.
    pub pin: bool,
    /// `ENVIRONMENT` of the originals, reported on /health.
    pub environment: String,
    /// Healthy while the last heartbeat is younger (`HEARTBEAT_TIMEOUT_SECONDS`).
    pub heartbeat_timeout: Duration,
    /// Removed when the last heartbeat is older (`WORKER_TIMEOUT_SECONDS`).
    pub worker_timeout: Duration,
    /// Interval told to agents at registration.
    pub heartbeat_interval_secs: u64,
    /// `API_KEY`: a key that may do everything (the admin role). With any
    /// key or user configured, every route but /health, CORS preflight and
    /// login needs a credential (see `http::access`).
    pub api_key: Option<String>,
    /// Keys per role (`--admin-key`, `--worker-key`, `--client-key`,
    /// `--keys-file`), several per role for rotation.
    pub keys: Vec<ApiKey>,
    /// Users who may log in (`--users-file`).
    pub users: Vec<User>,
    /// HS256 secret of login tokens (`JWT_SECRET`); required with users.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of a login token.
    pub token_expiry: Duration,
    /// Lifetime of a browser session cookie (`--session-ttl`); the guard
    /// clamps it to [`SESSION_TTL_MIN`]..=[`SESSION_TTL_MAX`].
    pub session_ttl: Duration,
    /// Failed logins allowed per client address and window (per shard).
    pub login_max_failures: u32,
    pub login_window: Duration,
    /// /health and /metrics need the admin role too.
    pub protect_metrics: bool,
    /// `ALLOWED_ORIGINS` for CORS; `*` allows any origin.
    pub allowed_origins: Vec<String>,
    /// URL agents should use to reach us (`--public-url`, `COORDINATOR_URL`):
    /// the registration reply's `coordinator_url` and every container's
    /// `COORDINATOR_URL`. Unset, a registration reply uses the `Host` the
    /// agent came in by, and worker listings [`Config::coordinator_url`].
    pub public_url: Option<String>,
    /// `DATABASE_PATH`: the SQLite store; `None` keeps everything in memory
    /// (the library default, so tests write nothing; the binary defaults to
    /// `./data/coordinator.db`).
    pub database_path: Option<PathBuf>,
    /// When a commit reaches the disk (`--sync`).
    pub sync: SyncMode,
    /// Heartbeat state is written at least this often (`--heartbeat-flush-ms`).
    pub heartbeat_flush: Duration,
    pub catalog: &'static Catalog,
    pub max_body_bytes: usize,
    /// Registered workers at most (`--max-workers`); each shard holds at
    /// most its share, `ceil(max_workers / shards)`, so the check needs no
    /// cross-shard call. Re-registering a known id always works.
    pub max_workers: usize,
    /// Events each shard keeps for subscribers to resume from
    /// (`--event-ring`); older cursors get a `reset`.
    pub event_ring: usize,
    /// How far (in events) a caught-up subscriber may fall behind before it
    /// is dropped with a `reset` (`--event-subscriber-buffer`).
    pub event_subscriber_buffer: usize,
    /// Access-log lines per second per shard at most (0: no access log);
    /// requests beyond are counted in one line per second.
    pub access_log_rate: u32,
    /// Largest `capabilities` object accepted at registration, as JSON
    /// bytes (`--max-capabilities-bytes`); also the largest heartbeat body.
    pub max_capabilities_bytes: usize,
    /// Most entries in a registration's `services` or `containers` list.
    pub max_worker_entries: usize,
    pub max_header_bytes: usize,
    pub max_connections_per_shard: usize,
    /// Close a connection with no request in progress after this long.
    pub idle_timeout: Duration,
    /// Close a connection whose request head takes longer than this.
    pub header_timeout: Duration,
    /// Give up on a request body that takes longer than this.
    pub body_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
    /// How long a shard waits for another shard's answer.
    pub gather_timeout: Duration,
    /// Depth of each mesh channel.
    pub mesh_capacity: usize,
    /// Serve a fixed hello-world instead of the API (benchmark baseline).
    pub baseline_hello: bool,
    /// How long a pulled task stays leased to the worker.
    pub task_lease: Duration,
    /// Leases handed out before an unanswered task is dead-lettered.
    pub task_max_attempts: u32,
    /// Longest long-poll (`wait`) a worker may ask for.
    pub task_max_wait: Duration,
    /// Tasks a pull returns when it does not say `max`.
    pub task_pull_max: usize,
    /// Finished tasks kept per shard for `GET /api/tasks/{id}`.
    pub task_retention: usize,
    /// Proxy: connecting to a worker.
    pub proxy_connect_timeout: Duration,
    /// Proxy: from sending the request to the worker's response head.
    pub proxy_request_timeout: Duration,
    /// Proxy: a worker that failed is avoided this long (per shard).
    pub route_cooldown: Duration,
    /// Proxy: how long a shard reuses a service's worker list.
    pub route_cache_ttl: Duration,
    /// Proxy: PEM file of extra CAs trusted for `https://` workers, on top
    /// of the bundled Mozilla roots (`PROXY_CA_FILE`).
    pub proxy_ca_file: Option<PathBuf>,
    /// Proxy: networks workers may be reached in (`WORKER_NETWORKS`);
    /// empty = any. Link-local, unspecified and our own listening
    /// addresses are refused whatever this says (see `guard`).
    pub worker_networks: Vec<crate::proxy::guard::Net>,
    /// Cluster mode (`--cluster-etcd` and friends); None runs alone.
    pub cluster: Option<crate::cluster::Settings>,
    /// Keep historical metrics (`--no-history` turns it off).
    pub history: bool,
    /// Seconds between pool-wide history samples (`--history-interval`):
    /// the width of the raw tier.
    pub history_interval: Duration,
    /// Seconds between samples of every worker's load and active requests
    /// (`--history-worker-interval`); stored from the 1-minute tier up.
    pub history_worker_interval: Duration,
    /// How long each history tier is kept (`--history-retention`).
    pub history_retention: crate::history::Retention,
}

impl Config {
    /// Refuses a configuration the server cannot run with, or that would
    /// silently weaken it; the message names the flag. `Server::start`
    /// calls this, so a configuration built in code gets the same checks
    /// as the command line's.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards == Some(0) {
            return Err("--shards must be at least 1".into());
        }
        if self.worker_timeout < self.heartbeat_timeout {
            return Err("--worker-timeout must not be shorter than --heartbeat-timeout".into());
        }
        for (flag, d) in [
            ("history-interval", self.history_interval),
            ("history-worker-interval", self.history_worker_interval),
        ] {
            if d < Duration::from_secs(1) || d > Duration::from_secs(3600) || d.subsec_nanos() != 0
            {
                return Err(format!("--{flag} must be whole seconds between 1 and 3600"));
            }
        }
        if self.heartbeat_flush.is_zero() || self.heartbeat_flush > Duration::from_secs(3600) {
            return Err("--heartbeat-flush-ms must be between 1 and 3600000".into());
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if let Some(url) = &self.public_url {
            check_public_url(url).map_err(|e| format!("--public-url {url:?}: {e}"))?;
        }
        validate_credentials(self)
    }

    /// Our public URL: `--public-url` without a trailing `/`, else
    /// `http://` and the listen address (loopback for an unspecified
    /// address). `Server::start` puts the bound port into `listen`, so with
    /// `--port 0` this names the port actually used.
    pub fn coordinator_url(&self) -> String {
        if let Some(url) = &self.public_url {
            return url.trim_end_matches('/').to_string();
        }
        let ip = match self.listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.listen.port()))
    }

    /// The HS256 key of browser session cookies (`POST /api/session`).
    ///
    /// Derived, not random: every shard builds its own guard from this one
    /// config and must accept the cookies the others issue, and a restart
    /// must not sign everyone out. The input is every credential secret
    /// (`JWT_SECRET`, each key with its role, each user's name, role and
    /// password hash), so nobody without them can compute it, and changing
    /// any key, user or the secret revokes every session (indices into the
    /// key and user lists, which sessions carry, then mean nothing).
    /// HMAC-SHA256 keyed by that material over a fixed label, with every
    /// field length-prefixed so no two configs share an input.
    pub fn session_secret(&self) -> [u8; 32] {
        let mut m = Vec::with_capacity(256);
        let put_len = |m: &mut Vec<u8>, n: usize| m.extend_from_slice(&(n as u64).to_le_bytes());
        let put = |m: &mut Vec<u8>, b: &[u8]| {
            put_len(m, b.len());
            m.extend_from_slice(b);
        };
        put(
            &mut m,
            self.jwt_secret.as_ref().map_or(&[][..], |s| s.0.as_bytes()),
        );
        put(&mut m, self.api_key.as_deref().unwrap_or("").as_bytes());
        put_len(&mut m, self.keys.len());
        for k in &self.keys {
            put(&mut m, k.key.0.as_bytes());
            put(&mut m, k.role.as_str().as_bytes());
            put_len(&mut m, k.workers.len());
            for w in &k.workers {
                put(&mut m, w.as_bytes());
            }
        }
        put_len(&mut m, self.users.len());
        for u in &self.users {
            put(&mut m, u.username.as_bytes());
            put(&mut m, u.role.as_str().as_bytes());
            put(&mut m, u.password_hash.0.as_bytes());
        }
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &m);
        let tag = ring::hmac::sign(&key, b"coordinator browser session v1");
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub fn proxy(&self) -> crate::proxy::ProxyConfig {
        crate::proxy::ProxyConfig {
            connect_timeout: self.proxy_connect_timeout,
            request_timeout: self.proxy_request_timeout,
            cooldown: self.route_cooldown,
            cache_ttl: self.route_cache_ttl,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8080),
            shards: None,
            pin: true,
            environment: "production".into(),
            heartbeat_timeout: Duration::from_secs(120),
            worker_timeout: Duration::from_secs(600),
            heartbeat_interval_secs: 30,
            api_key: None,
            keys: Vec::new(),
            users: Vec::new(),
            jwt_secret: None,
            token_expiry: Duration::from_secs(24 * 3600),
            session_ttl: Duration::from_secs(12 * 3600),
            login_max_failures: 5,
            login_window: Duration::from_secs(60),
            protect_metrics: false,
            allowed_origins: Vec::new(),
            public_url: None,
            database_path: None,
            sync: SyncMode::Full,
            heartbeat_flush: Duration::from_secs(1),
            cluster: None,
            history: true,
            history_interval: Duration::from_secs(10),
            history_worker_interval: Duration::from_secs(60),
            history_retention: crate::history::Retention::default(),
            catalog: Catalog::builtin(),
            max_body_bytes: 1 << 20,
            max_workers: 1_000_000,
            event_ring: 100_000,
            event_subscriber_buffer: 10_000,
            access_log_rate: 100,
            max_capabilities_bytes: 64 << 10,
            max_worker_entries: 64,
            max_header_bytes: 64 << 10,
            max_connections_per_shard: 10_000,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            gather_timeout: Duration::from_secs(5),
            mesh_capacity: 1024,
            baseline_hello: false,
            task_lease: Duration::from_secs(300),
            task_max_attempts: 3,
            task_max_wait: Duration::from_secs(60),
            task_pull_max: 10,
            task_retention: 10_000,
            proxy_connect_timeout: Duration::from_secs(2),
            proxy_request_timeout: Duration::from_secs(120),
            route_cooldown: Duration::from_secs(10),
            route_cache_ttl: Duration::from_millis(250),
            proxy_ca_file: None,
            worker_networks: Vec::new(),
        }
    }
}

/// An absolute `http://` or `https://` URL with a host and no query,
/// fragment, whitespace or control character: agents append paths to it
/// and put it in container env.
fn check_public_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or("must start with http:// or https://")?;
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters");
    }
    if url.contains(['?', '#']) {
        return Err("must not have a query or fragment");
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err("must name a host (and no user)");
    }
    Ok(())
}

/// Refuses configurations that would silently weaken authentication:
/// empty keys, scopes on non-worker keys, users without a token secret,
/// password hashes that cannot be parsed, duplicate usernames.
fn validate_credentials(cfg: &Config) -> Result<(), String> {
    if cfg.api_key.as_deref() == Some("") {
        return Err("--api-key must not be empty (omit it to run without a key)".into());
    }
    for (i, k) in cfg.keys.iter().enumerate() {
        let label = k.name.clone().unwrap_or_else(|| format!("key #{}", i + 1));
        if k.key.0.is_empty() {
            return Err(format!("{label} ({}): empty API key", k.role.as_str()));
        }
        if !k.workers.is_empty() && k.role != Role::Worker {
            return Err(format!(
                "{label}: `workers` limits worker keys only, not {} keys",
                k.role.as_str()
            ));
        }
        if k.workers.iter().any(|p| p.is_empty()) {
            return Err(format!("{label}: empty worker id pattern"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for u in &cfg.users {
        if u.username.is_empty() || u.username.len() > 256 {
            return Err("users file: usernames must be 1 to 256 bytes".into());
        }
        if !seen.insert(u.username.as_str()) {
            return Err(format!("users file: user {:?} twice", u.username));
        }
        argon2::PasswordHash::new(&u.password_hash.0).map_err(|e| {
            format!(
                "users file: user {:?}: password_hash is not a PHC string ({e}); make one with `coordinator hash-password`",
                u.username
            )
        })?;
    }
    match &cfg.jwt_secret {
        Some(s) if s.0.len() < MIN_JWT_SECRET => {
            return Err(format!(
                "--jwt-secret must be at least {MIN_JWT_SECRET} bytes"
            ))
        }
        None if !cfg.users.is_empty() => {
            return Err("users are configured but JWT_SECRET (--jwt-secret) is not set".into())
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_refuses_what_the_server_cannot_run_with() {
        assert!(Config::default().validate().is_ok());
        let bad = [
            Config {
                shards: Some(0),
                ..Config::default()
            },
            Config {
                worker_timeout: Duration::from_secs(1),
                heartbeat_timeout: Duration::from_secs(2),
                ..Config::default()
            },
            Config {
                heartbeat_flush: Duration::ZERO,
                ..Config::default()
            },
            Config {
                api_key: Some(String::new()),
                ..Config::default()
            },
        ];
        for c in bad {
            let e = c.validate().unwrap_err();
            assert!(e.starts_with("--"), "names the flag: {e}");
        }
    }

    #[test]
    fn public_url_is_checked_and_defaults_to_the_listen_address() {
        let with = |u: &str| Config {
            public_url: Some(u.into()),
            ..Config::default()
        };
        for ok in [
            "http://coord.example",
            "https://coord.example:8443/",
            "http://10.0.0.5:8080/rma",
            "http://[fd00::1]:8080",
        ] {
            assert!(with(ok).validate().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "coord.example",
            "ftp://coord.example",
            "http://",
            "http:///x",
            "http://:8080",
            "http://u:p@coord.example",
            "http://coord.example/?a=1",
            "http://coord.example/#x",
            "http://coord .example",
        ] {
            let e = with(bad).validate().unwrap_err();
            assert!(e.starts_with("--public-url"), "{bad}: {e}");
        }
        assert_eq!(
            with("https://coord.example/").coordinator_url(),
            "https://coord.example"
        );
        let at = |listen: &str| Config {
            listen: listen.parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(Config::default().coordinator_url(), "http://127.0.0.1:8080");
        assert_eq!(
            at("10.1.2.3:9000").coordinator_url(),
            "http://10.1.2.3:9000"
        );
        assert_eq!(at("[::]:8080").coordinator_url(), "http://[::1]:8080");
    }
}
