//! Membership: this node's lease and key, the watch on the member list,
//! the views the shards get, and adoption of what this node owns.
//!
//! A session is: connect, grant a lease (`--cluster-lease-seconds`), put
//! `/<cluster>/nodes/<id>` on it, read the member list, watch it from the
//! next revision, then keep the lease alive every third of its TTL. A
//! stream that breaks (its etcd member went down) is opened again on
//! another member, the watches resuming after the last revision seen, as
//! long as the lease cannot have expired: one etcd member going away
//! fences nobody. Once the lease is not renewed for its TTL, expired in
//! etcd, or the node's own key disappears, the session ends: the node is
//! fenced (its view keeps the last members, so heartbeats keep reaching
//! the same owners, but writes are refused) and a new session starts
//! after a short backoff. Calls that failed on the way are made again
//! (`retrying`): the client may pick a dead member until it notices.
//!
//! Every change of the member set publishes a new view and starts an
//! adoption: the workers and tasks this node owns under the view are read
//! from etcd in pages, off the keep-alive loop (a spawned task, so a large
//! registry cannot starve the lease), and sent to their shards, followed by
//! [`Update::Settled`]. A failed adoption is tried again until it succeeds;
//! a newer view aborts one still running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions,
    WatchOptions, WatchResponse, WatchStream,
};
use futures::channel::mpsc::UnboundedSender;

use super::keys::{prefix_end, Layout};
use super::{Member, Settings, Update, View};
use crate::model::placement::{owner_of, placement_hash};
use crate::store::{RecoveredTask, RecoveredWorker};
use crate::tasks::task::{key_hash, shard_of_key};

/// Keys read per page during adoption.
const PAGE: i64 = 1000;
/// Records per `Update::Adopt` message.
const CHUNK: usize = 1024;

pub(crate) struct Ctx {
    pub settings: Settings,
    pub layout: Layout,
    pub shards: usize,
    pub out: Vec<UnboundedSender<Update>>,
    /// The lease the writer's transactions are fenced on (0: none).
    pub lease: Arc<AtomicI64>,
    pub stop: Arc<AtomicBool>,
    pub joined: crossbeam_channel::Sender<()>,
}

/// What survives from one session to the next.
struct State {
    epoch: u64,
    members: Vec<Member>,
    fenced: bool,
    adoption: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) fn run(ctx: Ctx) {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cluster membership cannot start a runtime; this node stays fenced");
            return;
        }
    };
    let ctx = Arc::new(ctx);
    rt.block_on(async move {
        let mut st = State {
            epoch: 0,
            members: Vec::new(),
            fenced: true,
            adoption: None,
        };
        let mut backoff = Duration::from_millis(200);
        while !ctx.stop.load(Ordering::Acquire) {
            match session(&ctx, &mut st).await {
                Ok(()) => break,
                Err(e) => {
                    ctx.lease.store(0, Ordering::Release);
                    if !st.fenced {
                        st.fenced = true;
                        tracing::warn!(node = %ctx.settings.node_id, error = %e, "cluster lease lost: this node refuses writes until it rejoins");
                        publish(&ctx, &mut st);
                    } else {
                        tracing::debug!(error = %e, "cluster join failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let Some(a) = st.adoption.take() {
            a.abort();
        }
    });
}

fn err(what: &str) -> impl Fn(etcd_client::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

async fn within<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("{what}: timed out after {limit:?}"))?
        .map_err(err(what))
}

/// One lease's life; Ok only when asked to stop (the lease is revoked).
async fn session(ctx: &Arc<Ctx>, st: &mut State) -> Result<(), String> {
    let s = &ctx.settings;
    let ttl = s.lease_ttl;
    let step = ttl / 3;
    let opts = ConnectOptions::new()
        .with_connect_timeout(step)
        .with_timeout(ttl);
    let mut client = within(ttl, "connect", Client::connect(&s.endpoints, Some(opts))).await?;
    let lease = within(
        step,
        "lease grant",
        client.lease_grant(ttl.as_secs() as i64, None),
    )
    .await?
    .id();
    let me = Member {
        node_id: s.node_id.clone(),
        url: s.advertise_url.trim_end_matches('/').to_string(),
        shards: ctx.shards,
    };
    let node_key = ctx.layout.node(&s.node_id);
    within(
        step,
        "register node",
        client.put(
            node_key.as_str(),
            serde_json::to_string(&me).unwrap_or_default(),
            Some(PutOptions::new().with_lease(lease)),
        ),
    )
    .await?;
    ctx.lease.store(lease, Ordering::Release);
    let nodes = ctx.layout.nodes();
    let resp = super::retrying(step, "read members", || {
        let mut c = client.clone();
        let nodes = nodes.clone();
        async move {
            c.get(nodes.as_str(), Some(GetOptions::new().with_prefix()))
                .await
        }
    })
    .await?;
    let rev = resp.header().map_or(0, |h| h.revision());
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for kv in resp.kvs() {
        if let Some(m) = parse_member(&ctx.layout, kv.key(), kv.value()) {
            members.insert(m.node_id.clone(), m);
        }
    }
    // The revisions seen so far: a stream opened again resumes after them.
    let (mut member_rev, mut pin_rev) = (rev, rev);
    let mut streams = Streams::open(ctx, &client, lease, member_rev, pin_rev, step).await?;
    st.fenced = false;
    st.members = members.values().cloned().collect();
    tracing::info!(node = %s.node_id, lease, members = st.members.len(), "joined the cluster");
    publish(ctx, st);
    start_adoption(ctx, st, &client, true);
    let mut last_ok = Instant::now();
    let mut tick = tokio::time::interval(step);
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            // Leaving: the others take this node's share at once instead
            // of after the TTL.
            ctx.lease.store(0, Ordering::Release);
            let _ = tokio::time::timeout(step, client.lease_revoke(lease)).await;
            tracing::info!(node = %s.node_id, "left the cluster");
            return Ok(());
        }
        // A stream that broke (its etcd member went away) is opened again
        // on another member while the lease may still be alive; the node
        // is fenced only once it cannot be sure of its lease any more.
        let broken = tokio::select! {
            _ = tick.tick() => {
                if last_ok.elapsed() >= ttl {
                    return Err(format!("lease not renewed for {ttl:?}"));
                }
                within(step, "keep-alive", streams.keeper.keep_alive()).await.err()
            }
            m = streams.alive.message() => match m {
                Ok(Some(r)) if r.ttl() > 0 => {
                    last_ok = Instant::now();
                    None
                }
                Ok(Some(_)) => return Err("the lease expired in etcd".into()),
                Ok(None) => Some("keep-alive stream ended".into()),
                Err(e) => Some(format!("keep-alive: {e}")),
            },
            m = streams.watch.message() => match watched(m, "member watch")? {
                Ok(r) => {
                    if apply_members(&ctx.layout, &s.node_id, &mut members, &mut member_rev, &r)? {
                        st.members = members.values().cloned().collect();
                        let ids: Vec<&str> = members.keys().map(String::as_str).collect();
                        tracing::info!(node = %s.node_id, members = %ids.join(","), "cluster membership changed");
                        publish(ctx, st);
                        start_adoption(ctx, st, &client, false);
                    }
                    None
                }
                Err(why) => Some(why),
            },
            m = streams.pin_watch.message() => match watched(m, "pin watch")? {
                Ok(r) => {
                    let changes = pin_changes(&ctx.layout, &mut pin_rev, &r);
                    if !changes.is_empty() {
                        for tx in &ctx.out {
                            let _ = tx.unbounded_send(Update::Pins(changes.clone()));
                        }
                    }
                    None
                }
                Err(why) => Some(why),
            },
        };
        if let Some(why) = broken {
            tracing::info!(node = %s.node_id, error = %why, "an etcd stream broke; opening it again");
            let left = ttl.saturating_sub(last_ok.elapsed());
            streams = Streams::open(ctx, &client, lease, member_rev, pin_rev, left)
                .await
                .map_err(|e| format!("{why}; then {e}"))?;
        }
    }
}

/// A watch's next message: its response, or why its stream broke (it is
/// opened again). A canceled watch (e.g. its revision was compacted) ends
/// the session: the next one reads everything afresh.
fn watched(
    m: Result<Option<WatchResponse>, etcd_client::Error>,
    what: &str,
) -> Result<Result<WatchResponse, String>, String> {
    match m {
        Ok(Some(r)) if r.canceled() => Err(format!("{what} canceled: {}", r.cancel_reason())),
        Ok(Some(r)) => Ok(Ok(r)),
        Ok(None) => Ok(Err(format!("{what} ended"))),
        Err(e) => Ok(Err(format!("{what}: {e}"))),
    }
}

/// Applies a member watch response to `members` (node id -> member) and
/// moves `rev` past it; whether the set of members changed. Err when this
/// node's own key was deleted (its lease expired).
fn apply_members(
    layout: &Layout,
    me: &str,
    members: &mut BTreeMap<String, Member>,
    rev: &mut i64,
    r: &WatchResponse,
) -> Result<bool, String> {
    let before: Vec<String> = members.keys().cloned().collect();
    for ev in r.events() {
        let Some(kv) = ev.kv() else { continue };
        *rev = (*rev).max(kv.mod_revision());
        match ev.event_type() {
            EventType::Put => {
                if let Some(m) = parse_member(layout, kv.key(), kv.value()) {
                    members.insert(m.node_id.clone(), m);
                }
            }
            EventType::Delete => {
                let Some(id) = layout.node_id(kv.key()) else {
                    continue;
                };
                if id == me {
                    return Err("this node's key was deleted (lease expired)".into());
                }
                members.remove(id);
            }
        }
    }
    Ok(members.keys().ne(before.iter()))
}

/// The pins a pin watch response sets (Some) or removes (None); moves
/// `rev` past it.
fn pin_changes(layout: &Layout, rev: &mut i64, r: &WatchResponse) -> Vec<(String, Option<String>)> {
    let mut changes = Vec::new();
    for ev in r.events() {
        let Some(kv) = ev.kv() else { continue };
        *rev = (*rev).max(kv.mod_revision());
        let Some(key) = layout.pin(kv.key()) else {
            continue;
        };
        let value = match ev.event_type() {
            EventType::Put => Some(String::from_utf8_lossy(kv.value()).into_owned()),
            EventType::Delete => None,
        };
        changes.push((key.to_string(), value));
    }
    changes
}

/// The streams a session holds open: the lease's keep-alive and the
/// watches on the member list and the pins.
struct Streams {
    keeper: LeaseKeeper,
    alive: LeaseKeepAliveStream,
    watch: WatchStream,
    pin_watch: WatchStream,
}

impl Streams {
    /// Opens all three (again), the watches after the revisions already
    /// seen, trying for at most `limit`.
    async fn open(
        ctx: &Ctx,
        client: &Client,
        lease: i64,
        member_rev: i64,
        pin_rev: i64,
        limit: Duration,
    ) -> Result<Streams, String> {
        let (keeper, alive) = super::retrying(limit, "lease keep-alive", || {
            let mut c = client.clone();
            async move { c.lease_keep_alive(lease).await }
        })
        .await?;
        let watch_from = |prefix: String, rev: i64| {
            let mut c = client.clone();
            async move {
                c.watch(
                    prefix.as_str(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await
            }
        };
        let watch = super::retrying(limit, "watch members", || {
            watch_from(ctx.layout.nodes(), member_rev)
        })
        .await?;
        let pin_watch = super::retrying(limit, "watch pins", || {
            watch_from(ctx.layout.pins(), pin_rev)
        })
        .await?;
        Ok(Streams {
            keeper,
            alive,
            watch,
            pin_watch,
        })
    }
}

fn parse_member(layout: &Layout, key: &[u8], value: &[u8]) -> Option<Member> {
    let id = layout.node_id(key)?;
    let m: Member = serde_json::from_slice(value).ok()?;
    (m.node_id == id).then_some(m)
}

/// Sends a new view (the next epoch) to every shard.
fn publish(ctx: &Ctx, st: &mut State) {
    st.epoch += 1;
    let view = Arc::new(View::new(
        st.epoch,
        st.members.clone(),
        &ctx.settings.node_id,
        st.fenced,
    ));
    for tx in &ctx.out {
        let _ = tx.unbounded_send(Update::View(view.clone()));
    }
}

fn start_adoption(ctx: &Arc<Ctx>, st: &mut State, client: &Client, first: bool) {
    if let Some(a) = st.adoption.take() {
        a.abort();
    }
    let view = View::new(
        st.epoch,
        st.members.clone(),
        &ctx.settings.node_id,
        st.fenced,
    );
    let (ctx, client) = (ctx.clone(), client.clone());
    st.adoption = Some(tokio::spawn(async move {
        let started = Instant::now();
        let mut pause = Duration::from_millis(200);
        // Until it succeeds or a newer view aborts it: until then the
        // shards answer 503 (not 404) for workers they have not got yet.
        loop {
            match adopt(&ctx, client.clone(), &view).await {
                Ok((workers, tasks)) => {
                    tracing::info!(
                        node = %ctx.settings.node_id,
                        epoch = view.epoch,
                        workers,
                        tasks,
                        took_ms = started.elapsed().as_millis() as u64,
                        "adopted this node's share from etcd"
                    );
                    if first {
                        let _ = ctx.joined.try_send(());
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "adoption failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }));
}

/// Reads everything this node owns under `view` and hands it to the
/// shards; returns the numbers of workers and tasks read.
async fn adopt(ctx: &Ctx, mut client: Client, view: &View) -> Result<(usize, usize), String> {
    let limit = ctx.settings.lease_ttl * 4;
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let n = ctx.shards;
    let send = |shard: usize, workers: Vec<RecoveredWorker>, tasks: Vec<RecoveredTask>| {
        let _ = ctx.out[shard].unbounded_send(Update::Adopt {
            epoch: view.epoch,
            workers,
            tasks,
        });
    };
    // Pins: every node keeps all of them.
    let mut pins = Vec::new();
    scan(&mut client, &ctx.layout.pins(), limit, |k, v| {
        if let Some(key) = ctx.layout.pin(k) {
            pins.push((
                key.to_string(),
                Some(String::from_utf8_lossy(v).into_owned()),
            ));
        }
    })
    .await?;
    for tx in &ctx.out {
        let _ = tx.unbounded_send(Update::Pins(pins.clone()));
    }
    let mut per: Vec<Vec<RecoveredWorker>> = (0..n).map(|_| Vec::new()).collect();
    let mut workers = 0;
    scan(&mut client, &ctx.layout.workers(), limit, |k, v| {
        let Some(w) = ctx.layout.worker(k, v, now_us) else {
            return;
        };
        if !view.owns(placement_hash(&w.id)) {
            return;
        }
        workers += 1;
        let s = owner_of(&w.id, n);
        per[s].push(w);
        if per[s].len() >= CHUNK {
            send(s, std::mem::take(&mut per[s]), Vec::new());
        }
    })
    .await?;
    for (s, w) in per.into_iter().enumerate() {
        if !w.is_empty() {
            send(s, w, Vec::new());
        }
    }
    // Tasks in the order they were first written, so queues keep theirs.
    let mut owned: Vec<(i64, RecoveredTask)> = Vec::new();
    scan_rev(&mut client, &ctx.layout.tasks(), limit, |k, v, created| {
        if let Some(t) = ctx.layout.task(k, v) {
            if view.owns(key_hash(&t.owner_key)) {
                owned.push((created, t));
            }
        }
    })
    .await?;
    owned.sort_by_key(|(c, _)| *c);
    let tasks = owned.len();
    let mut per: Vec<Vec<RecoveredTask>> = (0..n).map(|_| Vec::new()).collect();
    for (_, t) in owned {
        per[shard_of_key(&t.owner_key, n)].push(t);
    }
    for (s, t) in per.into_iter().enumerate() {
        for chunk in t.chunks(CHUNK) {
            send(s, Vec::new(), chunk.to_vec());
        }
    }
    for tx in &ctx.out {
        let _ = tx.unbounded_send(Update::Settled(view.epoch));
    }
    Ok((workers, tasks))
}

async fn scan(
    client: &mut Client,
    prefix: &str,
    limit: Duration,
    mut each: impl FnMut(&[u8], &[u8]),
) -> Result<(), String> {
    scan_rev(client, prefix, limit, |k, v, _| each(k, v)).await
}

/// Every key under `prefix`, in pages of [`PAGE`], with its create revision.
async fn scan_rev(
    client: &mut Client,
    prefix: &str,
    limit: Duration,
    mut each: impl FnMut(&[u8], &[u8], i64),
) -> Result<(), String> {
    let end = prefix_end(prefix);
    let mut from = prefix.as_bytes().to_vec();
    loop {
        let opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        let resp = super::retrying(limit, "read state", || {
            let (mut c, from, opts) = (client.clone(), from.clone(), opts.clone());
            async move { c.get(from, Some(opts)).await }
        })
        .await?;
        for kv in resp.kvs() {
            each(kv.key(), kv.value(), kv.create_revision());
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}
