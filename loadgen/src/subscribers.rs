//! `--subscribers N`: N change-stream subscriptions (`GET /api/events`)
//! held open next to the scenario's load, and what they measured: events
//! received in the window, events/s, delivery latency (receipt wall time
//! minus the event's `time`, both on this machine's clock), resets and
//! streams that ended early.
//!
//! A few threads (`--subscriber-threads`) own all subscriptions, each a
//! non-blocking socket: a thread per subscriber would not scale to
//! thousands. A thread waits with `epoll`, not the load driver's `ppoll`:
//! `ppoll` costs a pass over every watched socket per wake, and a server
//! writing one event to a thousand subscriptions one after the other wakes
//! the reader many times per event, so that cost grows with the square of
//! the subscribers (a reasoned choice, not a measured comparison; with
//! epoll, 525k events/s over 1,000 subscriptions cost loadgen half a core).
//! Every subscription
//! is streaming (200 and headers read) before [`start`] returns, so the
//! measured phase never includes a connection still subscribing. After the
//! load stops ([`Running::finish`]) they keep reading until the streams
//! go quiet, at most `--timeout`, so events produced at the end of the
//! window are still delivered and counted.
//!
//! Only events whose `time` lies in the measured window count (the
//! window is given in wall-clock time by [`Running::set_window`]); resets
//! and disconnections count whenever they happen.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::connect;
use crate::report::{new_histogram, quantile, MAX_US};
use crate::stream::{Format, Reader, Seen};

/// How long all subscriptions may take to be streaming.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// After the load stopped, a thread whose streams were silent this long
/// has everything the window produced.
const QUIET: Duration = Duration::from_millis(250);
/// Longest wait for readiness, so the stop is noticed promptly.
const TICK: Duration = Duration::from_millis(20);

/// What to subscribe to, and how.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    pub host: String,
    pub subscribers: usize,
    pub threads: usize,
    /// Appended to `/api/events?` (may be empty).
    pub query: String,
    pub format: Format,
    /// The CPU of each subscriber thread, if pinned.
    pub cpus: Vec<Option<usize>>,
    /// Connect timeout, and the longest wait for stragglers at the end.
    pub timeout: Duration,
}

/// What the threads share with the main thread.
struct Control {
    /// The measured window in wall-clock microseconds since the epoch;
    /// (MAX, MIN) until it is known, so nothing counts before.
    window: (AtomicI64, AtomicI64),
    /// The load has stopped: drain and finish.
    stop: AtomicBool,
}

/// What one thread (or, merged, all of them) measured.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Delivery latency of the window's events, microseconds.
    pub delivery: Histogram<u64>,
    /// Events whose `time` is in the window.
    pub received: u64,
    /// Events of any time (warm-up and drain included).
    pub total: u64,
    /// Events without a readable `time`.
    pub untimed: u64,
    pub resets: u64,
    /// Streams that ended (reset, last chunk, close, error) before the end.
    pub disconnected: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            delivery: new_histogram(),
            received: 0,
            total: 0,
            untimed: 0,
            resets: 0,
            disconnected: 0,
        }
    }
}

impl Tally {
    pub fn merge(&mut self, o: &Tally) {
        let _ = self.delivery.add(&o.delivery);
        self.received += o.received;
        self.total += o.total;
        self.untimed += o.untimed;
        self.resets += o.resets;
        self.disconnected += o.disconnected;
    }

    /// Counts one event seen at `now_us` (wall clock) against `window`.
    fn seen(&mut self, s: Seen, now_us: i64, window: (i64, i64)) {
        self.total += 1;
        if s.reset {
            self.resets += 1;
        }
        match s.time_us {
            None => self.untimed += 1,
            Some(t) if t >= window.0 && t < window.1 && !s.reset => {
                self.received += 1;
                // Same clock on both ends; a negative difference is below
                // the clock's resolution: 1 us.
                let d = (now_us - t).clamp(1, MAX_US as i64) as u64;
                self.delivery.saturating_record(d);
            }
            Some(_) => {}
        }
    }
}

/// The `events` object of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Events {
    pub subscribers: usize,
    /// `sse` or `ndjson`.
    pub format: String,
    /// The query the subscriptions used (after `/api/events?`).
    pub query: String,
    /// Events whose `time` falls in the measured window, over all
    /// subscribers.
    pub received: u64,
    /// `received` per second of the window.
    pub per_sec: f64,
    pub delivery_p50_us: u64,
    pub delivery_p99_us: u64,
    pub delivery_p999_us: u64,
    pub delivery_max_us: u64,
    pub resets: u64,
    /// Subscriptions that ended before the run did (a reset ends one too).
    pub disconnected: u64,
}

impl Events {
    pub fn new(plan: &Plan, t: &Tally, window: Duration) -> Self {
        let h = &t.delivery;
        Self {
            subscribers: plan.subscribers,
            format: match plan.format {
                Format::Sse => "sse".into(),
                Format::Ndjson => "ndjson".into(),
            },
            query: plan.query.clone(),
            received: t.received,
            per_sec: t.received as f64 / window.as_secs_f64().max(1e-9),
            delivery_p50_us: quantile(h, 0.5),
            delivery_p99_us: quantile(h, 0.99),
            delivery_p999_us: quantile(h, 0.999),
            delivery_max_us: if h.is_empty() { 0 } else { h.max() },
            resets: t.resets,
            disconnected: t.disconnected,
        }
    }

    /// Lines for the text report.
    pub fn lines(&self) -> String {
        let q = if self.query.is_empty() {
            String::new()
        } else {
            format!(", ?{}", self.query)
        };
        format!(
            "events:      {} subscribers ({}{q}): {} received in the window, {:.0}/s\n\
             delivery us: p50 {} p99 {} p99.9 {} max {}   resets {}  disconnected {}\n",
            self.subscribers,
            self.format,
            self.received,
            self.per_sec,
            self.delivery_p50_us,
            self.delivery_p99_us,
            self.delivery_p999_us,
            self.delivery_max_us,
            self.resets,
            self.disconnected
        )
    }
}

/// Wall-clock microseconds since the Unix epoch.
pub fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Subscriptions streaming in their threads.
pub struct Running {
    control: Arc<Control>,
    handles: Vec<JoinHandle<Tally>>,
}

impl Running {
    /// The measured window, as `Instant`s of this process: from now on,
    /// events whose `time` falls in it count.
    pub fn set_window(&self, start: Instant, end: Instant) {
        let (now_i, now_w) = (Instant::now(), wall_us());
        let at = |t: Instant| {
            if t >= now_i {
                now_w + (t - now_i).as_micros() as i64
            } else {
                now_w - (now_i - t).as_micros() as i64
            }
        };
        self.control.window.0.store(at(start), Ordering::Relaxed);
        self.control.window.1.store(at(end), Ordering::Relaxed);
    }

    /// The load has stopped: lets the streams drain, then gathers the
    /// threads' tallies.
    pub fn finish(self) -> Tally {
        self.control.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        for h in self.handles {
            if let Ok(t) = h.join() {
                total.merge(&t);
            }
        }
        total
    }
}

/// Opens every subscription and returns once all are streaming; Err names
/// the first that could not (then none is left open).
pub fn start(plan: &Plan) -> Result<Running, String> {
    let control = Arc::new(Control {
        window: (AtomicI64::new(i64::MAX), AtomicI64::new(i64::MIN)),
        stop: AtomicBool::new(false),
    });
    let mut path = String::from("/api/events");
    if !plan.query.is_empty() {
        path.push('?');
        path.push_str(plan.query.trim_start_matches('?'));
    }
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: coordinator-loadgen\r\n",
        plan.host
    );
    req.push_str(match plan.format {
        Format::Sse => "Accept: text/event-stream\r\n\r\n",
        Format::Ndjson => "Accept: application/x-ndjson\r\n\r\n",
    });
    let req: Arc<[u8]> = req.into_bytes().into();
    let threads = plan.threads.clamp(1, plan.subscribers.max(1));
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<(), String>>();
    let mut handles = Vec::new();
    for t in 0..threads {
        let n = (t..plan.subscribers).step_by(threads).count();
        let (plan, control, req, ready) =
            (plan.clone(), control.clone(), req.clone(), ready_tx.clone());
        let cpu = plan.cpus.get(t).copied().flatten();
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-sub-{t}"))
                .spawn(move || {
                    crate::driver::pin(cpu);
                    run(&plan, n, &req, &control, &ready)
                })
                .map_err(|e| format!("spawning a subscriber thread: {e}"))?,
        );
    }
    drop(ready_tx);
    let mut first_err = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert("a subscriber thread died".into());
            }
        }
    }
    let running = Running { control, handles };
    match first_err {
        None => Ok(running),
        Some(e) => {
            running.finish();
            Err(e)
        }
    }
}

/// An epoll set (level-triggered) whose entries carry the subscription's
/// index.
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain syscall; a non-negative result is a new fd we own.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn add(&self, fd: std::os::fd::RawFd, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both fds are open; `ev` lives across the call.
        let r = unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `wait` (whole ms); returns how many `events` are set.
    fn wait(&self, events: &mut [libc::epoll_event], wait: Duration) -> usize {
        // SAFETY: `events` is a valid, exclusively borrowed array of
        // `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                wait.as_millis() as libc::c_int,
            )
        };
        n.max(0) as usize
    }
}

/// One subscription.
struct Sub {
    stream: Option<TcpStream>,
    reader: Reader,
}

/// One thread: subscribes `n` times, reports readiness, then reads until
/// told to stop and the streams are quiet.
fn run(
    plan: &Plan,
    n: usize,
    req: &[u8],
    control: &Control,
    ready: &crossbeam_channel::Sender<Result<(), String>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut subs: Vec<Sub> = Vec::with_capacity(n);
    let mut scratch = vec![0u8; 64 << 10];
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            let _ = ready.send(Err(format!("epoll: {e}")));
            return tally;
        }
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];

    // Connect and send every request (blocking writes of a small request
    // on a fresh socket: they do not wait), then read the heads together.
    for i in 0..n {
        let s = connect(plan.addr, plan.timeout)
            .and_then(|s| {
                s.set_nonblocking(false)?;
                (&s).write_all(req)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .and_then(|s| epoll.add(s.as_raw_fd(), i as u64).map(|()| s))
            .map_err(|e| format!("subscriber {i}: {e}"));
        match s {
            Ok(s) => subs.push(Sub {
                stream: Some(s),
                reader: Reader::new(plan.format),
            }),
            Err(e) => {
                let _ = ready.send(Err(e));
                return tally;
            }
        }
    }
    let setup_end = Instant::now() + SETUP_TIMEOUT;
    let window = |c: &Control| {
        (
            c.window.0.load(Ordering::Relaxed),
            c.window.1.load(Ordering::Relaxed),
        )
    };
    let mut live = subs.len();
    let mut streaming = false;
    let mut stopping: Option<Instant> = None;
    let mut last_data = Instant::now();
    loop {
        let now = Instant::now();
        if !streaming {
            if subs.iter().all(|s| s.reader.streaming()) {
                streaming = true;
                let _ = ready.send(Ok(()));
            } else if now >= setup_end {
                let waiting = subs.iter().filter(|s| !s.reader.streaming()).count();
                let _ = ready.send(Err(format!(
                    "{waiting} subscriptions not streaming after {} s",
                    SETUP_TIMEOUT.as_secs()
                )));
                return tally;
            }
        }
        if stopping.is_none() && control.stop.load(Ordering::Relaxed) {
            stopping = Some(now);
        }
        if let Some(since) = stopping {
            let quiet = now.saturating_duration_since(last_data.max(since)) >= QUIET;
            if live == 0 || quiet || now >= since + plan.timeout {
                break;
            }
        }
        let ready_n = epoll.wait(&mut events, TICK);
        let w = window(control);
        for ev in &events[..ready_n] {
            // Copied out: the struct is packed on some targets.
            let i = { ev.u64 } as usize;
            let Some(s) = subs.get_mut(i) else {
                continue;
            };
            let Some(st) = s.stream.as_mut() else {
                continue;
            };
            let mut ended = false;
            loop {
                let n = match st.read(&mut scratch) {
                    Ok(0) => {
                        ended = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => {
                        ended = true;
                        break;
                    }
                };
                // One clock reading per read: the events in it arrived
                // together.
                let now_us = wall_us();
                last_data = Instant::now();
                let was_streaming = s.reader.streaming();
                if let Err(e) = s
                    .reader
                    .feed(&scratch[..n], &mut |seen| tally.seen(seen, now_us, w))
                {
                    if !was_streaming {
                        let _ = ready.send(Err(format!("subscriber {i}: {e}")));
                        return tally;
                    }
                    ended = true;
                    break;
                }
                if s.reader.ended() {
                    ended = true;
                    break;
                }
                if n < scratch.len() {
                    break;
                }
            }
            if ended {
                if !s.reader.streaming() {
                    let _ = ready.send(Err(format!(
                        "subscriber {i}: connection closed before the response head"
                    )));
                    return tally;
                }
                // Closing the socket takes it out of the epoll set.
                s.stream = None;
                live -= 1;
                tally.disconnected += 1;
            }
        }
    }
    tally
}
