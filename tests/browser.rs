//! The dashboard (`/ui/`) in a real browser: headless Chromium driven
//! through chromedriver (WebDriver), against an in-process coordinator
//! with 2 shards on loopback. Every page loads without a console error,
//! the worker table is live, drain and requeue work from the UI, charts
//! get data, signing in keeps the key out of every URL, and the workers
//! page renders its first page within 1 s with 100,000 workers.
//!
//! Needs `/usr/bin/chromedriver` (Debian `chromium chromium-driver`):
//! without it the tests fail when `CI` is set and are skipped otherwise.
//! Screenshots of each page go to `target/ui-shots/`.

mod common;

use std::future::Future;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One browser at a time: the tests measure timings (live updates within
/// 2 s, first render within 1 s), which two Chromiums on a 2-core
/// machine would distort.
static ONE_BROWSER: Mutex<()> = Mutex::new(());

/// Runs `test` on a current-thread runtime while holding the browser
/// lock; a test that panicked earlier does not stop the others.
fn serial<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test());
}

/// False (with a line saying so) when there is no chromedriver and this
/// is not CI; in CI a missing driver is a failure, not a skip.
fn have_chromedriver() -> bool {
    if Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{CHROMEDRIVER} is missing: CI must install Debian's chromium and chromium-driver (.ci/run)");
    }
    eprintln!("skipped: {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
    false
}

/// A chromedriver child process and the browser profile it uses; both
/// go when this is dropped, and the browser session first (chromedriver
/// killed alone would leave its Chromium running after a failed test).
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
    session: Option<String>,
}

impl Driver {
    fn start() -> Driver {
        // Ask the kernel for a free port; chromedriver binds it right after.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile =
            std::env::temp_dir().join(format!("coordinator-ui-{}-{port}", std::process::id()));
        let d = Driver {
            child,
            port,
            profile,
            session: None,
        };
        let ready = eventually(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(ready, "chromedriver did not listen on {port} within 10 s");
        d
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(id) = &self.session {
            // Blocking, not through fantoccini: Drop cannot await, and a
            // failed test never reached `Ui::finish`. Conn reads the reply
            // by its length (chromedriver keeps the connection open).
            let mut c = Conn::open(SocketAddr::from(([127, 0, 0, 1], self.port)));
            c.send_raw(
                format!("DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
            );
            let _ = c.read_response();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// chromedriver's browser console log (`POST /session/{id}/se/log`), not
/// a W3C command, so fantoccini has no method for it.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// A browser session on the dashboard of `addr`.
struct Ui {
    client: Client,
    base: String,
    // The session is closed in `finish`, or by the driver's drop when a
    // test fails before it; then chromedriver goes.
    driver: Driver,
}

impl Ui {
    async fn open(addr: SocketAddr) -> Ui {
        let mut driver = Driver::start();
        let mut caps = Capabilities::new();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1400,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", driver.profile.display())])
        .collect::<Vec<_>>();
        caps.insert("goog:chromeOptions".into(), json!({ "args": args }));
        caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("a WebDriver session");
        driver.session = client.session_id().await.unwrap();
        client.set_window_size(1400, 900).await.unwrap();
        Ui {
            client,
            base: format!("http://{addr}/ui/"),
            driver,
        }
    }

    /// Loads `/ui/#/<route>`; a new hash on the same page only changes the
    /// route, as a click on a link would.
    async fn goto(&self, route: &str) {
        self.client
            .goto(&format!("{}#/{route}", self.base))
            .await
            .unwrap();
    }

    /// Waits for an element matching `css`.
    async fn find(&self, css: &str, within: Duration) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(within)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} within {within:?}: {e}"))
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls `script` until it returns true; false after `within`.
    async fn until(&self, within: Duration, script: &str) -> bool {
        let end = Instant::now() + within;
        loop {
            if self.js(script).await == json!(true) {
                return true;
            }
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Clicks the element matching `css` once it is there and enabled.
    /// The page re-renders lists live (an event may replace the element
    /// between finding and clicking it), so the element is looked up
    /// afresh for the click, and a stale reference is looked up again.
    async fn click(&self, css: &str) {
        self.find(css, Duration::from_secs(5)).await;
        // The selector goes in as an argument: it may hold any quotes.
        let script = "const e = document.querySelector(arguments[0]); \
                      return !!e && !e.disabled && e.offsetParent !== null";
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if self.client.execute(script, vec![json!(css)]).await.unwrap() == json!(true) {
                let el = self.find(css, Duration::from_secs(5)).await;
                match el.click().await {
                    Ok(()) => return,
                    Err(e) if e.to_string().contains("stale element") => {}
                    Err(e) => panic!("clicking {css}: {e}"),
                }
            }
            assert!(Instant::now() < end, "{css} never became clickable");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// What went wrong in the page: its own capture (`window.__dashErrors`:
    /// errors, unhandled rejections, console.error) and every SEVERE line
    /// of the browser's console log since the last call (failed loads too).
    async fn errors(&self) -> Vec<String> {
        let mut out: Vec<String> = match self
            .js("return window.__dashErrors || ['no capture installed']")
            .await
        {
            Value::Array(a) => a.iter().map(|v| v.to_string()).collect(),
            other => vec![format!("__dashErrors: {other}")],
        };
        let log = self.client.issue_cmd(BrowserLog).await.unwrap();
        for entry in log.as_array().into_iter().flatten() {
            if entry["level"] == "SEVERE" {
                out.push(format!("console: {}", entry["message"]));
            }
        }
        out
    }

    /// Saves a screenshot as `target/ui-shots/<name>.png`.
    async fn shot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-shots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn finish(mut self) {
        if self.client.close().await.is_ok() {
            self.driver.session = None;
        }
    }
}

/// `worker_id`'s record from the admin list (one page of a filtered walk
/// would do as well; these tests register few workers).
fn admin_record(addr: SocketAddr, id: &str) -> Value {
    let r = get(addr, "/api/admin/workers?limit=1000");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

fn submit(addr: SocketAddr, body: Value) -> String {
    let r = post(addr, "/api/tasks", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["task_id"].as_str().unwrap().to_string()
}

fn task_state(addr: SocketAddr, id: &str) -> String {
    let r = get(addr, &format!("/api/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["state"].as_str().unwrap_or_default().to_string()
}

/// Samples history every second, so charts have points within seconds.
fn fast_history(c: &mut coordinator::Config) {
    c.history_interval = Duration::from_secs(1);
}

#[test]
fn every_page_loads_without_console_errors() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, fast_history);
        register(s.addr, &gpu_worker("ui-gpu"));
        register(s.addr, &cpu_worker("ui cpu/2"));
        let task = submit(
            s.addr,
            json!({"type": "echo", "payload": {"text": "hi"}, "worker_id": "ui-gpu"}),
        );
        let ui = Ui::open(s.addr).await;
        let pages = [
            ("overview", "overview".to_string(), "#chart-requests .uplot"),
            ("workers", "workers".into(), "tr[data-worker-id='ui-gpu']"),
            (
                "worker",
                "workers/ui%20cpu%2F2".into(),
                "#chart-worker-active .uplot",
            ),
            ("services", "services".into(), "#services-table"),
            ("tasks", "tasks".into(), "#tasks-table tr[data-task-id]"),
            ("task", format!("tasks/{task}"), "#task-payload"),
            ("events", "events".into(), "#events-list"),
        ];
        for (name, route, ready) in pages {
            ui.goto(&route).await;
            ui.find(ready, Duration::from_secs(10)).await;
            // Whatever the page still loads (charts, second lists) lands.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let errors = ui.errors().await;
            assert!(errors.is_empty(), "#/{route}: {errors:#?}");
            ui.shot(name).await;
        }
        // The worker page shows the decoded id; the events page tails the
        // stream as it comes.
        ui.goto("workers/ui%20cpu%2F2").await;
        let id = ui.find("#worker-id", Duration::from_secs(5)).await;
        assert_eq!(id.text().await.unwrap(), "ui cpu/2");
        ui.find("#worker-status", Duration::from_secs(5)).await;
        ui.goto("events").await;
        ui.find("#live.on", Duration::from_secs(5)).await;
        register(s.addr, &gpu_worker("ui-gpu-2"));
        ui.find(
            "#events-list li[data-type='worker.registered']",
            Duration::from_secs(5),
        )
        .await;
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.shot("events").await;
        ui.finish().await;
    });
}

#[test]
fn a_worker_registered_after_load_appears_within_two_seconds() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, |_| {});
        register(s.addr, &gpu_worker("live-0"));
        let ui = Ui::open(s.addr).await;
        ui.goto("workers").await;
        ui.find(
            "#workers-table tr[data-worker-id='live-0']",
            Duration::from_secs(10),
        )
        .await;
        // The stream starts "now": wait until it is open, or the
        // registration could come before it.
        ui.find("#live.on", Duration::from_secs(5)).await;
        for n in 1..=2 {
            let id = format!("live-{n}");
            let t = Instant::now();
            register(s.addr, &cpu_worker(&id));
            let seen = ui
                .until(
                    Duration::from_secs(2),
                    &format!("return !!document.querySelector(\"#workers-table tr[data-worker-id='{id}']\")"),
                )
                .await;
            let took = t.elapsed();
            assert!(seen, "{id} not in the table 2 s after it registered");
            println!("{id} appeared {} ms after registering", took.as_millis());
        }
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

#[test]
fn the_workers_table_pages_by_cursor_and_sorts_its_page() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, |_| {});
        for i in 0..60 {
            register(s.addr, &cpu_worker(&format!("pg-{i:02}")));
        }
        let ui = Ui::open(s.addr).await;
        ui.goto("workers").await;
        ui.find("#workers-table tr[data-worker-id]", Duration::from_secs(10))
            .await;
        let ids = "return [...document.querySelectorAll('#workers-table tbody tr')].map(r => r.dataset.workerId)";
        let first = ui.js(ids).await;
        assert_eq!(first.as_array().unwrap().len(), 50, "{first}");
        // The header sorts the rows on screen.
        ui.click("#workers-table th.sortable").await;
        let sorted = ui.js(ids).await;
        let mut want: Vec<String> = serde_json::from_value(first.clone()).unwrap();
        want.sort();
        assert_eq!(sorted, json!(want));
        ui.click("#workers-next").await;
        assert!(
            ui.until(
                Duration::from_secs(5),
                "return document.querySelectorAll('#workers-table tbody tr').length === 10"
            )
            .await
        );
        let second: Vec<String> = serde_json::from_value(ui.js(ids).await).unwrap();
        assert!(second.iter().all(|id| !want.contains(id)), "{second:?}");
        assert_eq!(
            ui.js("return document.querySelector('#workers-next').disabled")
                .await,
            json!(true)
        );
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

#[test]
fn pins_are_set_and_removed_from_the_services_page() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, |_| {});
        register(s.addr, &gpu_worker("pin-a"));
        let pins = || get(s.addr, "/api/admin/pins").json()["pins"].clone();
        let ui = Ui::open(s.addr).await;
        ui.goto("services").await;
        ui.find("#pin-form", Duration::from_secs(10)).await;
        ui.find("#pin-form input[name='name']", Duration::from_secs(1))
            .await
            .send_keys("llm-inference")
            .await
            .unwrap();
        ui.find("#pin-form input[name='workers']", Duration::from_secs(1))
            .await
            .send_keys("pin-a, pin-b")
            .await
            .unwrap();
        ui.click("#pin-set").await;
        let want =
            json!([{"kind": "service", "name": "llm-inference", "workers": ["pin-a", "pin-b"]}]);
        assert!(
            eventually(Duration::from_secs(3), || pins() == want),
            "{}",
            pins()
        );
        ui.click("#pins-table tr[data-pin='service:llm-inference'] button.pin-remove")
            .await;
        ui.click("#confirm-yes").await;
        assert!(
            eventually(Duration::from_secs(3), || pins() == json!([])),
            "{}",
            pins()
        );
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

#[test]
fn drain_undrain_and_unregister_work_from_the_worker_page() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, |_| {});
        register(s.addr, &gpu_worker("drain-me"));
        let ui = Ui::open(s.addr).await;
        ui.goto("workers/drain-me").await;
        ui.find("#worker-status", Duration::from_secs(10)).await;
        // Cancel first: nothing happens.
        ui.click("#worker-drain").await;
        ui.click("#confirm-no").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(admin_record(s.addr, "drain-me").get("drained"), None);
        ui.click("#worker-drain").await;
        ui.click("#confirm-yes").await;
        let drained = eventually(Duration::from_secs(3), || {
            admin_record(s.addr, "drain-me")["status"] == "drained"
        });
        assert!(drained, "{}", admin_record(s.addr, "drain-me"));
        assert!(
            ui.until(
                Duration::from_secs(3),
                "return document.querySelector('#worker-status')?.textContent === 'drained'"
            )
            .await
        );
        // The list says so too.
        ui.goto("workers").await;
        // Read in the page, not through an element reference: the live
        // table may be re-rendered between finding a cell and reading it.
        let drained = "const c = document.querySelector(\
                       \"#workers-table tr[data-worker-id='drain-me'] td.status\"); \
                       return !!c && c.textContent === 'drained'";
        assert!(ui.until(Duration::from_secs(5), drained).await);
        ui.shot("worker-drained").await;
        // And undrain brings it back.
        ui.goto("workers/drain-me").await;
        ui.click("#worker-undrain").await;
        ui.click("#confirm-yes").await;
        let back = eventually(Duration::from_secs(3), || {
            admin_record(s.addr, "drain-me")["status"] != "drained"
        });
        assert!(back);
        // Unregister goes back to the list, without the worker.
        ui.click("#worker-unregister").await;
        ui.click("#confirm-yes").await;
        assert!(eventually(Duration::from_secs(3), || {
            admin_record(s.addr, "drain-me").is_null()
        }));
        assert!(
            ui.until(
                Duration::from_secs(3),
                "return location.hash === '#/workers' && !!document.querySelector('#workers-table') \
                 && !document.querySelector(\"tr[data-worker-id='drain-me']\")"
            )
            .await
        );
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

#[test]
fn a_dead_task_is_requeued_from_the_ui() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        // A one-attempt task whose lease runs out is a dead letter.
        let s = start(2, |c| c.task_lease = Duration::from_millis(300));
        register(s.addr, &cpu_worker("dl-w"));
        let task = submit(
            s.addr,
            json!({"type": "flaky", "payload": {"n": 1}, "worker_id": "dl-w", "max_attempts": 1}),
        );
        let r = get(s.addr, "/api/worker/tasks?worker_id=dl-w");
        assert_eq!(r.json()["tasks"][0]["task_id"], task.as_str());
        assert!(eventually(Duration::from_secs(5), || task_state(
            s.addr, &task
        ) == "dead"));
        let ui = Ui::open(s.addr).await;
        ui.goto("tasks?state=dead").await;
        ui.find(
            &format!("#tasks-table tr[data-task-id='{task}']"),
            Duration::from_secs(10),
        )
        .await;
        ui.goto(&format!("tasks/{task}")).await;
        ui.click("#task-requeue").await;
        ui.click("#confirm-yes").await;
        assert!(
            eventually(Duration::from_secs(3), || task_state(s.addr, &task)
                == "queued"),
            "{}",
            task_state(s.addr, &task)
        );
        assert!(
            ui.until(
                Duration::from_secs(3),
                "return document.querySelector('#task-state')?.textContent === 'queued'"
            )
            .await
        );
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

#[test]
fn charts_get_data_from_the_history() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, fast_history);
        let mut c = Conn::open(s.addr);
        // Requests over a few 1 s samples.
        for _ in 0..3 {
            for _ in 0..20 {
                assert_eq!(c.get("/health").status, 200);
            }
            tokio::time::sleep(Duration::from_millis(1000)).await;
        }
        let ui = Ui::open(s.addr).await;
        ui.goto("overview").await;
        // The page re-fetches every 10 s: one refresh at most.
        let drawn = ui
            .until(
                Duration::from_secs(15),
                "return Number(document.querySelector('#chart-requests')?.dataset.points) > 0",
            )
            .await;
        let points = ui
            .js("return ['requests', 'p99', 'tasks'].map(n => document.querySelector('#chart-' + n).dataset.points)")
            .await;
        assert!(drawn, "no request points: {points}");
        println!("chart points (requests, p99, tasks): {points}");
        ui.shot("overview-charts").await;
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

#[test]
fn signing_in_keeps_the_key_out_of_every_url() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, with_keys);
        register_admin(s.addr, &gpu_worker("keyed-w"));
        let ui = Ui::open(s.addr).await;
        ui.goto("workers").await;
        let form = ui.find("#login-form", Duration::from_secs(10)).await;
        assert!(
            ui.until(
                Duration::from_secs(5),
                "return !document.querySelector('#login-form').hidden"
            )
            .await
        );
        assert!(form.is_displayed().await.unwrap());
        ui.find("#login-key", Duration::from_secs(1))
            .await
            .send_keys(ADMIN_KEY)
            .await
            .unwrap();
        ui.click("#login-submit").await;
        // The cookie carries on: the list loads, and so does the stream.
        ui.find(
            "#workers-table tr[data-worker-id='keyed-w']",
            Duration::from_secs(10),
        )
        .await;
        ui.find("#live.on", Duration::from_secs(5)).await;
        ui.shot("signed-in").await;
        let where_ = ui
            .js("return [document.location.href, ...performance.getEntries().map(e => e.name)]")
            .await;
        let seen = where_.to_string();
        assert!(!seen.contains(ADMIN_KEY), "key in a URL: {seen}");
        let stored = ui
            .js("return JSON.stringify([localStorage, sessionStorage]) + document.cookie")
            .await
            .to_string();
        assert!(!stored.contains(ADMIN_KEY), "key stored: {stored}");
        assert_eq!(
            ui.js("return window.__dashErrors").await,
            json!([]),
            "the 401 before signing in is no script error"
        );
        // Signing out asks again.
        ui.click("#sign-out").await;
        assert!(
            ui.until(
                Duration::from_secs(5),
                "return !document.querySelector('#login-form').hidden"
            )
            .await
        );
        ui.finish().await;
    });
}

/// Registers `ids` as minimal cpu workers over 8 keep-alive connections
/// (as tests/lists.rs does). The debug-build server sets the pace: about
/// a minute for 100,000 on 2 cores.
fn register_many(addr: SocketAddr, ids: &[String]) {
    std::thread::scope(|sc| {
        for part in ids.chunks(ids.len().div_ceil(8)) {
            sc.spawn(move || {
                let mut c = Conn::open(addr);
                for id in part {
                    let body = json!({"worker_id": id, "capabilities": {"worker_type": "cpu"}});
                    let r = c.post("/api/worker/register", &body);
                    assert_eq!(r.status, 200, "register {id}: {}", r.text());
                }
            });
        }
    });
}

#[test]
fn workers_page_renders_within_a_second_with_100k_workers() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, |_| {});
        let n = 100_000;
        let t = Instant::now();
        let ids: Vec<String> = (0..n).map(|i| format!("k-{i:06}")).collect();
        register_many(s.addr, &ids);
        println!("registered {n} workers in {} ms", t.elapsed().as_millis());
        let total = get(s.addr, "/api/admin/stats").json()["total_workers"].clone();
        assert_eq!(total, json!(n));
        // A fresh browser, the page loaded cold.
        let ui = Ui::open(s.addr).await;
        ui.goto("workers").await;
        ui.find("#workers-table tr[data-worker-id]", Duration::from_secs(10))
            .await;
        let ms = ui
            .js("const m = performance.getEntriesByName('workers-rendered')[0]; return m ? m.startTime : null")
            .await;
        let ms = ms.as_f64().expect("the workers-rendered mark");
        let rows = ui
            .js("return document.querySelectorAll('#workers-table tbody tr').length")
            .await;
        println!("first render of the workers page with {n} workers: {ms:.0} ms after navigation start ({rows} rows)");
        assert!(ms < 1000.0, "first render took {ms:.0} ms");
        assert_eq!(rows, json!(50));
        // One page was asked for, never the pool.
        let lists = ui
            .js("return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/api/admin/workers'))")
            .await;
        let lists: Vec<String> = serde_json::from_value(lists).unwrap();
        assert!(
            !lists.is_empty() && lists.iter().all(|u| u.contains("limit=50")),
            "{lists:?}"
        );
        ui.shot("workers-100k").await;
        let errors = ui.errors().await;
        assert!(errors.is_empty(), "{errors:#?}");
        ui.finish().await;
    });
}

/// The API's own pages, served from the binary like the dashboard:
/// Swagger UI (`/docs`), ReDoc (`/redoc`) and GraphiQL (`GET /graphql`
/// from a browser) render in Chromium with no console error and nothing
/// loaded from another origin, but one: ReDoc's bundle hard-codes the
/// small logo of its "API docs by Redocly" sidebar link
/// ([`REDOC_LOGO`]), which it hides when the load fails (as it does
/// offline); the vendored bundle is kept unchanged, so that one request
/// is allowed, and nothing else.
const REDOC_LOGO: &str = "https://cdn.redoc.ly/redoc/logo-mini.svg";

#[test]
fn the_api_pages_render_without_console_errors() {
    if !have_chromedriver() {
        return;
    }
    serial(|| async {
        let s = start(2, |_| {});
        let ui = Ui::open(s.addr).await;
        let pages = [
            ("docs", "/docs", ".swagger-ui .info .title"),
            ("redoc", "/redoc", "[role='search'], .api-info, h1"),
            (
                "graphiql",
                "/graphql",
                ".graphiql-container .graphiql-editors",
            ),
        ];
        for (name, path, ready) in pages {
            ui.client
                .goto(&format!("http://{}{path}", s.addr))
                .await
                .unwrap();
            ui.find(ready, Duration::from_secs(15)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let log = ui.client.issue_cmd(BrowserLog).await.unwrap();
            let severe: Vec<String> = log
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["level"] == "SEVERE")
                .map(|e| e["message"].to_string())
                .filter(|m| !m.contains(REDOC_LOGO))
                .collect();
            assert!(severe.is_empty(), "{path}: {severe:#?}");
            // Every resource the page loaded came from this server.
            let foreign = ui
                .js(&format!(
                    "return performance.getEntriesByType('resource').map(e => e.name)\
                     .filter(n => !n.startsWith('http://{}/') && n !== '{REDOC_LOGO}')",
                    s.addr
                ))
                .await;
            assert_eq!(foreign, json!([]), "{path}");
            ui.shot(name).await;
        }
        ui.finish().await;
    });
}
