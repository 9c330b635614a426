//! One load thread: drives its share of keep-alive connections with
//! non-blocking std sockets and `ppoll`, sending each request when the
//! schedule says (open loop) or as soon as the previous answer arrived
//! (closed loop), and records into its own histogram. No async runtime:
//! a thread owns a handful of sockets and a timer, which is all this needs,
//! and keeps the client's own overhead small and predictable.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::http::ResponseReader;
use crate::report::{us, Tally};
use crate::scenario::{Mix, Rng};
use crate::schedule::ConnSchedule;

/// What a thread reports to the main thread.
pub enum Msg {
    /// Snapshot of the window so far (only when a progress line is shown).
    Progress(usize, Box<Tally>),
    Done(usize, Box<Tally>),
}

/// Everything one thread needs.
pub struct Plan {
    pub thread: usize,
    /// Global indices of the connections this thread drives.
    pub conns: Vec<usize>,
    pub total_conns: usize,
    /// Requests/s over all connections; None = closed loop.
    pub rate: Option<f64>,
    pub addr: SocketAddr,
    pub mix: Arc<Mix>,
    /// Start of the schedule (all threads share it).
    pub t0: Instant,
    /// Measurement window, as offsets from t0 (warm-up before it).
    pub window: (Duration, Duration),
    pub timeout: Duration,
    pub cpu: Option<usize>,
    pub progress: bool,
    pub tx: Sender<Msg>,
}

struct InFlight {
    /// When the request was due (open loop) or sent (closed loop).
    intended: Instant,
    sent: Instant,
    pool: usize,
    req: usize,
    /// Which version of the request (`Mix::variant`).
    variant: u8,
    written: usize,
}

struct Conn {
    sched: ConnSchedule,
    /// Next request number in the schedule.
    next: u64,
    seq: u64,
    rng: Rng,
    stream: Option<TcpStream>,
    flight: Option<InFlight>,
    rbuf: Vec<u8>,
    reader: ResponseReader,
    /// Readable (or writable) according to the last poll.
    ready: bool,
    /// Closed loop: do not reconnect before this (after a connect error).
    retry_at: Option<Instant>,
    done: bool,
}

/// A non-blocking keep-alive connection to `addr` (no Nagle delay).
pub(crate) fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// The CPU of load thread `slot`: `cpus` round robin.
pub fn cpu_for(cpus: Option<&[usize]>, slot: usize) -> Option<usize> {
    cpus.map(|c| c[slot % c.len()])
}

/// Pins the calling thread to `cpu`, if any.
pub fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        // Best effort: an unavailable CPU was already rejected by main.
        core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
    }
}

/// Runs one thread's share of the load; sends `Msg::Done` at the end.
pub fn run(plan: Plan) {
    pin(plan.cpu);
    let open = plan.rate.is_some();
    let mut conns: Vec<Conn> = plan
        .conns
        .iter()
        .map(|&c| Conn {
            sched: ConnSchedule::new(plan.rate.unwrap_or(1.0), plan.total_conns, c),
            next: 0,
            seq: c as u64 * 7919,
            rng: Rng::new(c as u64 + 1),
            stream: None,
            flight: None,
            rbuf: Vec::with_capacity(16 << 10),
            reader: ResponseReader::default(),
            ready: false,
            retry_at: None,
            done: false,
        })
        .collect();
    let mut tally = Tally::default();
    // Connect before t0, so the first requests do not pay for it.
    for c in &mut conns {
        if let Ok(s) = connect(plan.addr, plan.timeout) {
            c.stream = Some(s);
        }
    }
    let (w_start, w_end) = (plan.t0 + plan.window.0, plan.t0 + plan.window.1);
    if open {
        for c in &conns {
            tally.planned +=
                c.sched.count_before(plan.window.1) - c.sched.count_before(plan.window.0);
        }
    }
    let hard_end = w_end + plan.timeout + Duration::from_millis(50);
    let in_window = |t: Instant| t >= w_start && t < w_end;
    let mut next_progress = w_start + Duration::from_secs(1);
    let mut pollfds: Vec<libc::pollfd> = Vec::with_capacity(conns.len());
    let mut poll_map: Vec<usize> = Vec::with_capacity(conns.len());
    let mut scratch = vec![0u8; 64 << 10];

    let now = Instant::now();
    if plan.t0 > now {
        std::thread::sleep(plan.t0 - now);
    }
    loop {
        let now = Instant::now();
        if now >= hard_end {
            for c in &mut conns {
                if let Some(f) = c.flight.take() {
                    if in_window(f.intended) {
                        tally.error("timeout");
                    }
                }
            }
            break;
        }
        if plan.progress && now >= next_progress {
            let _ = plan
                .tx
                .send(Msg::Progress(plan.thread, Box::new(tally.clone())));
            next_progress += Duration::from_secs(1);
        }
        let mut wake = hard_end;
        let mut all_done = true;
        pollfds.clear();
        poll_map.clear();
        for (ci, c) in conns.iter_mut().enumerate() {
            // 1. Drive the request in flight.
            step(c, &plan, now, &mut tally, &mut scratch, &in_window);
            // 2. Start the next one when it is due, and write it at once.
            if c.flight.is_none() && !c.done {
                let due = if open {
                    plan.t0 + c.sched.due(c.next)
                } else {
                    c.retry_at.map_or(now, |r| r.max(now))
                };
                if due >= w_end {
                    c.done = true;
                } else if due <= now {
                    start(c, &plan, due, now, &mut tally, &in_window);
                    step(c, &plan, now, &mut tally, &mut scratch, &in_window);
                    if c.flight.is_none() {
                        // Lost to a connect error: look at the schedule
                        // again right away instead of sleeping.
                        wake = now;
                    }
                } else {
                    wake = wake.min(due);
                }
            }
            if let Some(f) = &c.flight {
                if let Some(s) = &c.stream {
                    let events = if f.written < plan.mix.get(f.pool, f.req, f.variant).1.len() {
                        libc::POLLOUT
                    } else {
                        libc::POLLIN
                    };
                    pollfds.push(libc::pollfd {
                        fd: s.as_raw_fd(),
                        events,
                        revents: 0,
                    });
                    poll_map.push(ci);
                    wake = wake.min(f.sent + plan.timeout);
                }
            }
            all_done &= c.done && c.flight.is_none();
        }
        if all_done {
            break;
        }
        if plan.progress {
            wake = wake.min(next_progress);
        }
        let now = Instant::now();
        if wake <= now {
            continue;
        }
        let wait = wake - now;
        let n = ppoll_for(&mut pollfds, wait);
        if n > 0 {
            for (pfd, &ci) in pollfds.iter().zip(&poll_map) {
                if pfd.revents != 0 {
                    conns[ci].ready = true;
                }
            }
        }
    }
    let _ = plan.tx.send(Msg::Done(plan.thread, Box::new(tally)));
}

/// Picks, (re)connects and writes the next request of `c`.
fn start(
    c: &mut Conn,
    plan: &Plan,
    due: Instant,
    now: Instant,
    tally: &mut Tally,
    in_window: &impl Fn(Instant) -> bool,
) {
    let open = plan.rate.is_some();
    let intended = if open { due } else { now };
    c.next += 1;
    if c.stream.is_none() {
        match connect(plan.addr, plan.timeout) {
            Ok(s) => c.stream = Some(s),
            Err(_) => {
                if in_window(intended) {
                    tally.error("connect");
                }
                // The request is lost; in closed loop, back off a little
                // rather than spin on a refused port.
                if !open {
                    c.retry_at = Some(now + Duration::from_millis(10));
                }
                return;
            }
        }
    }
    c.retry_at = None;
    let (pool, req) = plan.mix.pick_index(c.rng.next_u64(), c.seq);
    let variant = plan.mix.variant(pool, req);
    c.seq += 1;
    let sent = Instant::now();
    if open && in_window(intended) {
        tally
            .send_lag
            .saturating_record(us(sent.saturating_duration_since(intended)));
    }
    c.flight = Some(InFlight {
        intended,
        sent,
        pool,
        req,
        variant,
        written: 0,
    });
}

/// Drives `c` and, when its connection failed or its request outlived the
/// timeout, counts the error and drops the connection (the next request
/// reconnects).
fn step(
    c: &mut Conn,
    plan: &Plan,
    now: Instant,
    tally: &mut Tally,
    scratch: &mut [u8],
    in_window: &impl Fn(Instant) -> bool,
) {
    if c.flight.is_none() {
        return;
    }
    let outcome = drive(c, plan, tally, scratch, in_window).and_then(|()| {
        // Still waiting for (part of) the answer: not past the timeout.
        match &c.flight {
            Some(f) if now.saturating_duration_since(f.sent) > plan.timeout => Err("timeout"),
            _ => Ok(()),
        }
    });
    if let Err(kind) = outcome {
        if let Some(f) = c.flight.take() {
            if in_window(f.intended) {
                tally.error(kind);
            }
        }
        c.stream = None;
        c.rbuf.clear();
        c.reader.reset();
        c.ready = false;
    }
}

/// Writes what is left of the request, reads what arrived, completes the
/// response. Err(kind) means the connection is unusable; the timeout is
/// `step`'s.
fn drive(
    c: &mut Conn,
    plan: &Plan,
    tally: &mut Tally,
    scratch: &mut [u8],
    in_window: &impl Fn(Instant) -> bool,
) -> Result<(), &'static str> {
    let Some(f) = c.flight.as_mut() else {
        return Ok(());
    };
    let Some(stream) = c.stream.as_mut() else {
        return Err("io");
    };
    let open = plan.rate.is_some();
    let bytes = plan.mix.get(f.pool, f.req, f.variant).1;
    while f.written < bytes.len() {
        match stream.write(&bytes[f.written..]) {
            Ok(0) => return Err("io"),
            Ok(n) => f.written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err("io"),
        }
    }
    // Read only when the last poll said so: right after a write the answer
    // is not there yet, and a read would just cost a syscall.
    if f.written < bytes.len() || !c.ready {
        return Ok(());
    }
    c.ready = false;
    loop {
        let (n, eof) = match stream.read(scratch) {
            Ok(0) => (0, true),
            Ok(n) => (n, false),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err("io"),
        };
        c.rbuf.extend_from_slice(&scratch[..n]);
        match c.reader.poll(&c.rbuf, eof) {
            Ok(Some(done)) => {
                let end = Instant::now();
                let f = c.flight.take().expect("a request is in flight");
                if in_window(f.intended) {
                    let from = if open { f.intended } else { f.sent };
                    tally.latency.saturating_record(us(end - from));
                    if (200..300).contains(&done.status) {
                        tally.ok += 1;
                    } else {
                        tally.error(status_kind(done.status));
                    }
                }
                c.rbuf.drain(..done.len.min(c.rbuf.len()));
                c.reader.reset();
                if done.close {
                    c.stream = None;
                    c.rbuf.clear();
                }
                return Ok(());
            }
            Ok(None) if eof => return Err("io"),
            Ok(None) => {}
            Err(_) => return Err("parse"),
        }
    }
    Ok(())
}

/// Error kind names for status codes, without allocating per response.
pub fn status_kind(status: u16) -> &'static str {
    match status {
        400 => "status_400",
        401 => "status_401",
        403 => "status_403",
        404 => "status_404",
        405 => "status_405",
        408 => "status_408",
        413 => "status_413",
        422 => "status_422",
        429 => "status_429",
        500 => "status_500",
        502 => "status_502",
        503 => "status_503",
        504 => "status_504",
        s if s < 200 => "status_1xx",
        s if s < 400 => "status_3xx",
        s if s < 500 => "status_4xx_other",
        _ => "status_5xx_other",
    }
}

/// Waits up to `wait` for readiness on `pollfds` (`ppoll`, no signal mask
/// change); returns what `ppoll` returns.
pub(crate) fn ppoll_for(pollfds: &mut [libc::pollfd], wait: std::time::Duration) -> libc::c_int {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: pollfds is a valid, exclusively borrowed array of
    // `pollfds.len()` entries; ts lives across the call; no sigmask.
    unsafe {
        libc::ppoll(
            pollfds.as_mut_ptr(),
            pollfds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    }
}
