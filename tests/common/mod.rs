//! Test harness: real servers on ephemeral loopback ports and a small raw
//! HTTP/1.1 client, so tests control connections exactly (which shard a
//! connection lands on, keep-alive, malformed and slow requests).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use coordinator::{Config, Server};
use serde_json::Value;

pub struct TestServer {
    pub server: Server,
    pub addr: SocketAddr,
    pub shards: usize,
}

/// Starts a coordinator with `shards` shards on 127.0.0.1:0, unpinned
/// (tests share the machine), after `tweak` adjusts the config.
pub fn start(shards: usize, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shards: Some(shards),
        pin: false,
        ..Config::default()
    };
    tweak(&mut cfg);
    let server = Server::start(cfg).expect("server starts");
    let addr = server.addr();
    TestServer {
        server,
        addr,
        shards,
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn shard(&self) -> usize {
        self.header("x-coordinator-shard")
            .expect("shard header")
            .parse()
            .unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `detail` of an error body.
    pub fn detail(&self) -> String {
        self.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    /// Writes all of `bytes`; a server that answers early and closes may
    /// cut the write short, which the following read then shows.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream().write_all(bytes);
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if let Some(b) = body {
            out.extend_from_slice(b);
        }
        self.send_raw(&out);
        self.read_response()
            .unwrap_or_else(|| panic!("no response to {method} {path}"))
    }

    pub fn get(&mut self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    pub fn post(&mut self, path: &str, body: &Value) -> Resp {
        let b = serde_json::to_vec(body).unwrap();
        self.request("POST", path, &[], Some(&b))
    }

    /// Reads one response; None if the server closed the connection.
    pub fn read_response(&mut self) -> Option<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).ok()?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':')?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            self.read_chunked()?
        } else {
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            self.reader.read_exact(&mut body).ok()?;
            body
        };
        Some(Resp {
            status,
            headers,
            body,
        })
    }

    /// A chunked body (RFC 9112 7.1), without trailers; None when it is
    /// cut short (the server aborted the stream) or malformed.
    fn read_chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let size = line.trim_end().split(';').next()?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                let mut end = String::new();
                self.reader.read_line(&mut end).ok()?;
                return (end == "\r\n").then_some(body);
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..]).ok()?;
            let mut crlf = [0u8; 2];
            self.reader.read_exact(&mut crlf).ok()?;
            if &crlf != b"\r\n" {
                return None;
            }
        }
    }

    /// True when the server closes this connection within `wait` (any
    /// bytes it sends first are skipped).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream().set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 256];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => {
                    return !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    )
                }
            }
        }
    }
}

/// A fresh connection per request.
pub fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let b = body.map(|v| serde_json::to_vec(v).unwrap());
    Conn::open(addr).request(method, path, &[], b.as_deref())
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    call(addr, "GET", path, None)
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    call(addr, "POST", path, Some(body))
}

/// Opens connections until one lands on `shard` (the kernel spreads them
/// over the SO_REUSEPORT listeners by 4-tuple hash).
pub fn conn_on_shard(addr: SocketAddr, shard: usize) -> Conn {
    for _ in 0..500 {
        let mut c = Conn::open(addr);
        if c.get("/health").shard() == shard {
            return c;
        }
    }
    panic!("no connection landed on shard {shard} in 500 tries");
}

/// A worker id (with `prefix`) that shard `shard` of `count` owns.
pub fn id_on_shard(prefix: &str, shard: usize, count: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| coordinator::model::placement::owner_of(id, count) == shard)
        .expect("an id for every shard")
}

pub fn gpu_worker(id: &str) -> Value {
    serde_json::json!({
        "worker_id": id,
        "tunnel_url": format!("http://{id}.example:8000"),
        "capabilities": {"hostname": id, "cpu_cores": 16, "has_gpu": true, "gpu_type": "RTX 4090",
                          "gpu_memory": "24GB", "worker_type": "gpu", "ram": "64GB"},
    })
}

pub fn cpu_worker(id: &str) -> Value {
    serde_json::json!({
        "worker_id": id,
        "tunnel_url": format!("http://{id}.example:8000"),
        "capabilities": {"hostname": id, "cpu_cores": 8, "has_gpu": false, "worker_type": "cpu", "ram": "16GB"},
    })
}

pub fn storage_worker(id: &str) -> Value {
    serde_json::json!({
        "worker_id": id,
        "tunnel_url": format!("http://{id}.example:8000"),
        "capabilities": {"hostname": id, "has_storage": true, "ram": "8GB"},
    })
}

/// Registers and asserts 200; returns the reply.
/// A `/metrics` text as a Prometheus server reads it; panics if invalid.
pub fn parse_metrics(text: &str) -> prometheus_parse::Scrape {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid exposition format")
}

/// The sum of the values of every sample line of a `/metrics` text that
/// starts with `prefix` (a series summed over its shards or labels).
pub fn sum_samples(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `body` declaring the one service `service` (port 9000).
pub fn with_service(mut body: Value, service: &str) -> Value {
    body["services"] = serde_json::json!([{"name": service, "port": 9000}]);
    body
}

/// The `--api-key` tests configure when they need an admin caller.
pub const ADMIN_KEY: &str = "adm1n-k3y";

/// Flags for the real binary: two unpinned shards on an ephemeral
/// loopback port.
pub const LOOPBACK_2_SHARDS: [&str; 7] = [
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--shards",
    "2",
    "--no-pin",
];

/// A client-role key: may use the proxy and tasks, is not admin.
pub const CLIENT_KEY: &str = "cl1ent-k3y";

/// Configures `ADMIN_KEY` as `--api-key` (admin) and `CLIENT_KEY` as a
/// client-role key.
pub fn with_keys(c: &mut Config) {
    use coordinator::model::credential::{ApiKey, Role};
    c.api_key = Some(ADMIN_KEY.into());
    c.keys = vec![ApiKey::new(CLIENT_KEY, Role::Client)];
}

/// `GET path` with `X-API-Key: key`.
pub fn get_with_key(c: &mut Conn, path: &str, key: &str) -> Resp {
    c.request("GET", path, &[("X-API-Key", key)], None)
}

/// Registers with `X-API-Key: ADMIN_KEY` and asserts 200.
pub fn register_admin(addr: SocketAddr, body: &Value) -> Value {
    let b = serde_json::to_vec(body).unwrap();
    let r = Conn::open(addr).request(
        "POST",
        "/api/worker/register",
        &[("X-API-Key", ADMIN_KEY)],
        Some(&b),
    );
    assert_eq!(r.status, 200, "register failed: {}", r.text());
    r.json()
}

pub fn register(addr: SocketAddr, body: &Value) -> Value {
    let r = post(addr, "/api/worker/register", body);
    assert_eq!(r.status, 200, "register failed: {}", r.text());
    r.json()
}

pub fn heartbeat(addr: SocketAddr, body: &Value) -> Resp {
    post(addr, "/api/worker/heartbeat", body)
}

/// Polls `f` until it returns true or `within` passes.
pub fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Every element of `key` over all pages of a paged list: `path` (with its
/// query, `limit` included) and then `&after=<next>` until `next` is null.
pub fn walk_pages(conn: &mut Conn, path: &str, key: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..100_000 {
        let url = match &next {
            Some(c) => format!("{path}&after={c}"),
            None => path.to_string(),
        };
        let r = conn.get(&url);
        assert_eq!(r.status, 200, "{url}: {}", r.text());
        let page = r.json();
        all.extend(page[key].as_array().expect("a list").iter().cloned());
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => {
                assert!(page["next"].is_null(), "no next key: {page}");
                return all;
            }
        }
    }
    panic!("{path}: more than 100,000 pages");
}

/// Spawns the real binary as `cmd` says (stdout piped) and returns it with
/// the address from its first stdout line, "coordinator listening on
/// http://ADDR with N shard(s)".
pub fn spawn_listening(mut cmd: std::process::Command) -> (std::process::Child, SocketAddr) {
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn coordinator");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.split_whitespace().nth(3).expect("address line");
    let addr = url
        .trim_start_matches("http://")
        .parse()
        .expect("socket address");
    (child, addr)
}

/// A blocking socket that retries reads and writes a signal interrupted
/// (the server's threads in this process use signals; tungstenite does
/// not retry `Interrupted` by itself).
pub struct Tcp(pub TcpStream);

impl Read for Tcp {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl Write for Tcp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.0.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
