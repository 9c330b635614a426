//! Task routes: submit, look up, admin listing, worker pull (with
//! long-poll) and completion. Each task operation runs on the shard that
//! holds the task's queue; the task id says which (see `tasks::task`).

use std::pin::pin;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::future::{join_all, select, select_all, Either};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::super::error::ApiError;
use super::super::request::{parse_object, query_param, valid_id};
use super::super::{json, peer, Body, Ctx};
use super::lists;
use crate::runtime;
use crate::shard::cluster::Peer;
use crate::shard::msg::{Reply, Request as ShardRequest};
use crate::shard::ShardError;
use crate::tasks::task::{new_task_id, shard_of_key, shard_of_task};
use crate::tasks::{CompleteError, Filter, Outcome, Target, Task, TaskListing, TaskOp, TaskState};

/// Upper bound on `max` per pull.
const MAX_PULL: usize = 1000;
/// Tasks in an admin listing without `limit` (newest first).
const COMPAT_LIST: usize = 100;
/// Most tasks one shard lists per step of a paged walk.
const PAGE_TASKS: usize = 256;

/// Runs `op` on `shard` and takes out the answer `unpack` names.
async fn task_op<T>(
    ctx: &Ctx,
    shard: usize,
    op: TaskOp,
    unpack: fn(Reply) -> Result<T, ShardError>,
) -> Result<T, ApiError> {
    let reply = ctx.shard.call(shard, ShardRequest::Task(op)).await?;
    Ok(unpack(reply)?)
}

/// `items` grouped by the shard `shard_of` names (items it names none for
/// are dropped), shards in order of first appearance, items in order.
fn by_shard(
    items: Vec<String>,
    shard_of: impl Fn(&str) -> Option<usize>,
) -> Vec<(usize, Vec<String>)> {
    let mut groups: Vec<(usize, Vec<String>)> = Vec::new();
    for item in items {
        let Some(s) = shard_of(&item) else { continue };
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, v)) => v.push(item),
            None => groups.push((s, vec![item])),
        }
    }
    groups
}

fn ok_json(status: StatusCode, v: &Value) -> Response<Body> {
    json(status, v.to_string().into_bytes())
}

fn str_field(o: &Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match o.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(ApiError::field(name, "expected a string")),
    }
}

/// `POST /api/tasks` `{type, payload, worker_id | service | capability, max_attempts?}`.
#[utoipa::path(
    post,
    path = "/api/tasks",
    tag = "tasks",
    summary = "Submit a task",
    request_body(content = super::openapi::TaskSubmit, example = json!({"type": "embed", "payload": {"text": "..."}, "service": "rag-embeddings", "max_attempts": 3})),
    responses(
        (status = 201, description = "Queued", body = super::openapi::Submitted),
        (status = 404, description = "Unknown `worker_id`", body = super::openapi::Detail),
    )
)]
pub(super) async fn submit(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let head = peer::Head::of(&ctx, &req);
    let body = ctx.body(req).await?;
    let o = parse_object(&body)?;
    submit_relayed(&ctx, o, head.map(|h| (h, body))).await
}

/// A task submit from its body object (GraphQL `submitTask`). In cluster
/// mode a task whose queue another node owns is refused here (503): the
/// REST route relays it, this one has no request to relay.
pub(super) async fn submit_object(
    ctx: &Ctx,
    o: Map<String, Value>,
) -> Result<Response<Body>, ApiError> {
    submit_relayed(ctx, o, None).await
}

/// How long a relayed task request may take on its owner node, besides
/// a long-poll's wait.
const RELAY_WAIT: Duration = Duration::from_secs(10);

/// How often a long-poll looks again at queues other nodes own.
const REMOTE_POLL: Duration = Duration::from_secs(1);

/// `items` this node owns, and the others grouped by the node `remote`
/// names (nodes in order of first appearance, items in order).
fn by_node(
    items: Vec<String>,
    remote: impl Fn(&str) -> Option<Peer>,
) -> (Vec<String>, Vec<(Peer, Vec<String>)>) {
    let mut local = Vec::new();
    let mut others: Vec<(Peer, Vec<String>)> = Vec::new();
    for item in items {
        match remote(&item) {
            None => local.push(item),
            Some(p) => match others.iter_mut().find(|(q, _)| q.node_id == p.node_id) {
                Some((_, v)) => v.push(item),
                None => others.push((p, vec![item])),
            },
        }
    }
    (local, others)
}

/// The node owning task `id`'s queue, when it is another one.
fn remote_task(ctx: &Ctx, id: &str) -> Option<Peer> {
    ctx.shard.node()?;
    ctx.shard.remote_node(crate::tasks::task::task_hash(id)?)
}

/// A task submit from its body object; `relay` is the request to send on
/// when another node owns the task's queue (cluster mode).
async fn submit_relayed(
    ctx: &Ctx,
    o: Map<String, Value>,
    relay: Option<(peer::Head, bytes::Bytes)>,
) -> Result<Response<Body>, ApiError> {
    let cfg = &ctx.shard.cfg;
    let task_type = match str_field(&o, "type")?
        .or(str_field(&o, "task_type")?)
        .or(str_field(&o, "job_type")?)
    {
        Some(t) if !t.is_empty() => t,
        _ => return Err(ApiError::field("type", "field required")),
    };
    let payload = o
        .get("payload")
        .or_else(|| o.get("job_data"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut targets = Vec::new();
    if let Some(w) = str_field(&o, "worker_id")? {
        valid_id("worker_id", &w)?;
        targets.push(Target::Worker(w));
    }
    if let Some(s) = str_field(&o, "service")? {
        valid_id("service", &s)?;
        targets.push(Target::Service(s));
    }
    if let Some(c) = str_field(&o, "capability")? {
        valid_id("capability", &c)?;
        targets.push(Target::Capability(c));
    }
    if targets.len() != 1 {
        return Err(ApiError::field(
            "target",
            "give exactly one of worker_id, service, capability",
        ));
    }
    let target = targets.remove(0);
    let max_attempts = match o.get("max_attempts") {
        None | Some(Value::Null) => cfg.task_max_attempts,
        Some(v) => match crate::model::wire::whole_number(v) {
            Some(n) if (1..=100).contains(&n) => n as u32,
            _ => return Err(ApiError::field("max_attempts", "expected 1..=100")),
        },
    };
    let key = target.queue_key();
    if let Some(owner) = ctx.shard.remote_queue(&key) {
        let Some((head, body)) = relay else {
            return Err(ApiError::Unavailable(format!(
                "queue {key} lives on node {}: submit through POST /api/tasks",
                owner.node_id
            )));
        };
        return peer::relay(ctx, &owner, head, body, RELAY_WAIT).await;
    }
    super::worker::writable(ctx)?;
    let id = new_task_id(&key);
    let shard = shard_of_key(&key, ctx.shard.count);
    let task = Task::new(id.clone(), task_type, payload, target.clone(), max_attempts);
    let op = TaskOp::Submit(Box::new(task));
    if !task_op(ctx, shard, op, Reply::submitted).await? {
        return Err(ApiError::NotFound("Worker not found".into()));
    }
    Ok(ok_json(
        StatusCode::CREATED,
        &json!({
            "task_id": id,
            "state": "queued",
            "target": {"kind": target.kind(), "name": target.name()},
            "max_attempts": max_attempts,
        }),
    ))
}

/// `GET /api/tasks/{id}`.
#[utoipa::path(
    get,
    path = "/api/tasks/{task_id}",
    tag = "tasks",
    summary = "A task",
    params(("task_id" = String, Path, description = "`t-<16 hex>-<16 hex>`")),
    responses(
        (status = 200, description = "The task", body = super::openapi::Task),
        (status = 404, description = "Unknown, or finished and evicted", body = super::openapi::Detail),
    )
)]
pub(super) async fn get(
    ctx: &Ctx,
    raw: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = super::super::request::percent_decode(&raw, false)
        .ok_or_else(|| ApiError::field("task_id", "invalid percent-encoding"))?;
    if let (Some(head), Some(owner)) = (peer::Head::of(ctx, &req), remote_task(ctx, &id)) {
        return peer::relay(ctx, &owner, head, bytes::Bytes::new(), RELAY_WAIT).await;
    }
    get_task(ctx, id).await
}

/// Task `id` from its owner shard on this node (GraphQL `task`).
pub(super) async fn get_task(ctx: &Ctx, id: String) -> Result<Response<Body>, ApiError> {
    let not_found = || ApiError::NotFound("Task not found".into());
    let shard = shard_of_task(&id, ctx.shard.count).ok_or_else(not_found)?;
    match task_op(ctx, shard, TaskOp::Get(id), Reply::task).await? {
        Some(v) => Ok(ok_json(StatusCode::OK, &v)),
        None => Err(not_found()),
    }
}

/// `POST /api/admin/tasks/{id}/requeue`: an operator puts a dead-lettered
/// or failed task back in its queue, attempts reset (its owner shard makes
/// the change durable before the answer).
#[utoipa::path(
    post,
    path = "/api/admin/tasks/{task_id}/requeue",
    tag = "admin",
    summary = "Requeue a dead-lettered or failed task",
    params(("task_id" = String, Path, description = "The task's id")),
    responses(
        (status = 200, description = "The task, queued again", body = super::openapi::Task),
        (status = 404, description = "No such task", body = super::openapi::Detail),
        (status = 409, description = "The task is not dead or failed", body = super::openapi::Detail),
        (status = 422, description = "Not a task id (empty, too long, control or invisible characters)", body = super::openapi::Detail),
    )
)]
pub(super) async fn requeue(
    ctx: &Ctx,
    raw: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let id = super::super::request::path_id("task_id", raw)?;
    if let (Some(head), Some(owner)) = (peer::Head::of(ctx, &req), remote_task(ctx, &id)) {
        return peer::relay(ctx, &owner, head, bytes::Bytes::new(), RELAY_WAIT).await;
    }
    super::worker::writable(ctx)?;
    let not_found = || ApiError::NotFound("Task not found".into());
    let shard = shard_of_task(&id, ctx.shard.count).ok_or_else(not_found)?;
    match task_op(ctx, shard, TaskOp::Requeue(id), Reply::requeued).await? {
        None => Err(not_found()),
        Some(Ok(v)) => Ok(ok_json(StatusCode::OK, &v)),
        Some(Err(state)) => Err(ApiError::Conflict(format!(
            "Task is {state}: only dead or failed tasks can be requeued"
        ))),
    }
}

/// `GET /api/admin/tasks?state=&service=&worker=&type=`: merged from every
/// shard. Without `limit`/`after`: the newest [`COMPAT_LIST`] (the shape
/// it always had). With them: one page in (shard, task id) order and the
/// cursor of the next (see `lists`).
#[utoipa::path(
    get,
    path = "/api/admin/tasks",
    tag = "admin",
    summary = "Tasks",
    params(
        ("state" = Option<String>, Query, description = "queued, leased, completed, failed or dead"),
        ("type" = Option<String>, Query, description = "The task's type"),
        ("service" = Option<String>, Query, description = "Tasks queued for the service"),
        ("worker" = Option<String>, Query, description = "Tasks targeted at or last leased to the worker (also `worker_id`)"),
        ("limit" = Option<u32>, Query, description = "One page of at most this many (clamped to 1..=1000)"),
        ("after" = Option<String>, Query, description = "The `next` cursor of the previous page"),
    ),
    responses((status = 200, description = "Tasks", body = super::openapi::AdminTasks))
)]
pub(super) async fn admin_list(
    ctx: Ctx,
    req: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query().map(str::to_string);
    drop(req);
    admin_list_query(&ctx, q.as_deref()).await
}

/// `/api/admin/tasks` from its query string (REST and GraphQL `tasks`).
pub(super) async fn admin_list_query(
    ctx: &Ctx,
    q: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let state = match lists::param(q, "state")? {
        Some(s) => Some(TaskState::parse(&s).ok_or_else(|| {
            lists::bad(
                "state",
                "expected queued, leased, completed, failed or dead",
            )
        })?),
        None => None,
    };
    let name = |field: &str| -> Result<Option<String>, ApiError> {
        lists::param(q, field)?
            .map(|v| crate::model::filter::parse_name(&v).map_err(|e| lists::bad(field, e)))
            .transpose()
    };
    let worker = match name("worker")? {
        Some(w) => Some(w),
        None => name("worker_id")?,
    };
    let filter = Filter {
        state,
        service: name("service")?,
        worker,
        task_type: name("type")?,
        limit: COMPAT_LIST,
    };
    let paging = lists::paging(q, ctx.shard.count)?;
    let paged = paging.is_some();
    // Counts and queue depths over every shard (a page adds its tasks).
    let counting = Filter {
        limit: if paging.is_some() { 0 } else { COMPAT_LIST },
        ..filter.clone()
    };
    let mut merged = ctx
        .shard
        .map_reduce(
            || ShardRequest::Task(TaskOp::List(counting.clone())),
            Reply::task_listing,
            TaskListing::default(),
            |all, part| all.merge(*part),
        )
        .await?;
    let mut next = None;
    match paging {
        Some(p) => (merged.tasks, next) = task_page(ctx, filter, p).await?,
        None => {
            // Newest first across shards, then the limit.
            merged.tasks.sort_by(|a, b| {
                b["created_at"]
                    .as_str()
                    .cmp(&a["created_at"].as_str())
                    .then_with(|| a["task_id"].as_str().cmp(&b["task_id"].as_str()))
            });
            merged.tasks.truncate(COMPAT_LIST);
        }
    }
    merged.queues.sort();
    let counts: Map<String, Value> = TaskState::ALL
        .iter()
        .map(|s| {
            (
                s.as_str().to_string(),
                Value::from(merged.counts[s.index()]),
            )
        })
        .collect();
    let queues: Vec<Value> = merged
        .queues
        .iter()
        .map(|(k, n)| json!({"queue": k, "depth": n}))
        .collect();
    let mut out = json!({
        "tasks": merged.tasks,
        "count": merged.matched,
        "counts": counts,
        "queues": queues,
    });
    if paged {
        out["next"] = Value::from(next);
    }
    Ok(ok_json(StatusCode::OK, &out))
}

/// One page of tasks from `paging.after` on, shard by shard in task id
/// order, and the cursor of the next page (None when nothing follows: a
/// full page looks on for one more match without listing it).
async fn task_page(
    ctx: &Ctx,
    filter: Filter,
    paging: lists::Paging,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let shards = ctx.shard.count;
    let (mut at, mut after) = match paging.after {
        Some(c) => (c.shard, Some(c.key)),
        None => (0, None),
    };
    let mut want = paging.limit;
    let mut tasks = Vec::new();
    let mut last: Option<lists::Cursor> = None;
    let mut steps = 0;
    while at < shards {
        if steps > 0 {
            // Each step scans a shard's tasks: let this shard serve what
            // arrived in between.
            runtime::breathe().await;
        }
        steps += 1;
        let op = TaskOp::Page {
            filter: filter.clone(),
            after: after.clone(),
            max: want.min(PAGE_TASKS),
        };
        let page = task_op(ctx, at, op, Reply::task_page).await?;
        want -= page.tasks.len().min(want);
        tasks.extend(page.tasks);
        if let Some(key) = page.last {
            after = Some(key.clone());
            last = Some(lists::Cursor { shard: at, key });
        }
        if !page.more {
            at += 1;
            after = None;
        } else if want == 0 {
            return Ok((tasks, last.map(|c| c.encode(shards))));
        }
    }
    Ok((tasks, None))
}

fn parse_wait(q: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    match query_param(q, "wait") {
        None => Ok(Duration::ZERO),
        Some(s) => clamp_seconds(&s, max)
            .ok_or_else(|| ApiError::field("wait", "expected a number of seconds >= 0")),
    }
}

/// A client-supplied number of seconds, clamped to `max` BEFORE it becomes a
/// `Duration` (`Duration::from_secs_f64(1e20)` panics); None when it is not
/// a finite number >= 0.
pub(crate) fn clamp_seconds(s: &str, max: Duration) -> Option<Duration> {
    let w = s.trim().parse::<f64>().ok()?;
    // NaN is not finite, so it is refused here too.
    if !w.is_finite() || w < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(w.min(max.as_secs_f64())))
}

/// `GET /api/worker/tasks?worker_id=..&wait=S&max=N` -> `{"tasks": [...]}`.
///
/// Leases up to N tasks from the worker's queues (own, services',
/// capabilities'), asking each shard that holds one of them. With `wait`,
/// when nothing is available every asked shard parks a waiter in the same
/// step that found nothing, so an enqueue in between cannot be missed; the
/// handler then sleeps on those waiters (no polling) until one fires or the
/// deadline passes, and asks again. If the client goes away, hyper drops
/// this future: the waiters' receivers go with it, and nothing was leased.
#[utoipa::path(
    get,
    path = "/api/worker/tasks",
    tag = "workers",
    summary = "Lease tasks",
    description = "Leases up to `max` queued tasks for the worker (its own queue, then its services', then its capabilities'). With `wait` and nothing to lease, waits until a task is queued or the time is up (then `[]`).",
    params(
        ("worker_id" = String, Query, description = "The pulling worker"),
        ("max" = Option<u32>, Query, description = "At most this many (default 10, clamped to 1..=1000)"),
        ("wait" = Option<f64>, Query, minimum = 0, description = "Long-poll seconds (decimals allowed), capped at --task-max-wait"),
    ),
    responses(
        (status = 200, description = "Leased tasks (maybe none)", body = super::openapi::Pulled),
        (status = 404, description = "Unknown worker", body = super::openapi::Detail),
        (status = 422, description = "No `worker_id`, or a bad `max`/`wait`", body = super::openapi::Detail),
    )
)]
pub(super) async fn pull(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let cfg = &ctx.shard.cfg;
    let q = req.uri().query();
    let worker_id = query_param(q, "worker_id")
        .ok_or_else(|| ApiError::field("worker_id", "field required"))?;
    valid_id("worker_id", &worker_id)?;
    ctx.may_act_for(&worker_id)?;
    let wait = parse_wait(q, cfg.task_max_wait)?;
    let max = match query_param(q, "max") {
        None => cfg.task_pull_max,
        Some(s) => {
            super::super::request::clamp_integer(&s, 1, MAX_PULL as u64).ok_or_else(|| {
                ApiError::field(
                    "max",
                    format!("expected an integer (clamped to 1..={MAX_PULL})"),
                )
            })? as usize
        }
    };
    // Cluster mode: another node asking for the leases its worker may
    // take from queues this node owns (service and capability queues
    // live on the node their key hashes to, not the worker's).
    let asked = peer::from_node(&ctx, &req)
        .then(|| query_param(q, "keys"))
        .flatten();
    if asked.is_none() {
        if let (Some(head), Some(owner)) = (
            peer::Head::of(&ctx, &req),
            ctx.shard.remote_worker(&worker_id),
        ) {
            return peer::relay(&ctx, &owner, head, bytes::Bytes::new(), wait + RELAY_WAIT).await;
        }
    }
    let (wait, keys) = match asked {
        Some(keys) => (
            Duration::ZERO,
            keys.split(',')
                .filter(|k| !k.is_empty() && ctx.shard.remote_queue(k).is_none())
                .map(str::to_string)
                .collect(),
        ),
        None => {
            let owner = ctx.shard.owner_of(&worker_id);
            let keys = task_op(&ctx, owner, TaskOp::Keys(worker_id.clone()), Reply::keys)
                .await?
                .ok_or_else(|| ApiError::NotFound("Worker not found".into()))?;
            (wait, keys)
        }
    };
    let creds = ctx.shard.node().map(|_| req.headers().clone());
    drop(req);
    // Keys of queues other nodes own are asked there, without waiting,
    // for what the local queues leave of `max` (so nothing comes back in
    // surplus); a long-poll looks again at least every REMOTE_POLL.
    let (keys, remote) = by_node(keys, |k| ctx.shard.remote_queue(k));
    // Keys keep their priority order: the owner (own queue) first, other
    // shards in the order their first key appears.
    let groups = by_shard(keys, |k| Some(shard_of_key(k, ctx.shard.count)));
    let deadline = Instant::now() + wait;
    loop {
        let waiting = Instant::now() < deadline;
        let mut wakeups = Vec::new();
        // Every shard is asked at once for up to `max`; the answers are
        // taken in priority order and what exceeds `max` is given back
        // undelivered (its attempt is not counted).
        let asks = groups.iter().map(|(shard, keys)| {
            let waiter = waiting.then(|| {
                let (tx, rx) = oneshot::channel::<()>();
                wakeups.push(rx);
                tx
            });
            let op = TaskOp::Lease {
                worker_id: worker_id.clone(),
                keys: keys.clone(),
                max,
                waiter,
            };
            task_op(&ctx, *shard, op, Reply::leased)
        });
        let answers = join_all(asks).await;
        let mut got: Vec<Value> = Vec::new();
        let mut surplus: Vec<String> = Vec::new();
        let mut failed = None;
        for answer in answers {
            match answer {
                Ok(tasks) => {
                    for t in tasks {
                        if got.len() < max && failed.is_none() {
                            got.push(t);
                        } else if let Some(id) = t["task_id"].as_str() {
                            surplus.push(id.to_string());
                        }
                    }
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        if let Some(e) = failed {
            // Nothing is delivered on an error: every lease goes back.
            surplus.extend(
                got.iter()
                    .filter_map(|t| t["task_id"].as_str().map(str::to_string)),
            );
            release(&ctx, &worker_id, surplus).await;
            return Err(e);
        }
        release(&ctx, &worker_id, surplus).await;
        if got.len() < max && !remote.is_empty() {
            if let Some(creds) = &creds {
                let more =
                    peer::remote_leases(&ctx, &worker_id, &remote, max - got.len(), creds).await;
                got.extend(more);
            }
        }
        if !got.is_empty() || !waiting || wakeups.is_empty() {
            return Ok(ok_json(StatusCode::OK, &json!({ "tasks": got })));
        }
        let mut left = deadline.saturating_duration_since(Instant::now());
        if !remote.is_empty() {
            left = left.min(REMOTE_POLL);
        }
        let woken = pin!(runtime::timeout(left, select_all(wakeups)));
        let stopping = pin!(ctx.stopping.wait());
        match select(woken, stopping).await {
            Either::Left((Ok(_), _)) => {}
            // Only a look at other nodes' queues is due.
            Either::Left((Err(_), _)) if Instant::now() < deadline => {}
            // The wait ran out, or the server is shutting down: a worker's
            // long-poll ends with "nothing for you", never a dropped
            // connection (agents retry a pull; a reset looks like a fault).
            Either::Left((Err(_), _)) | Either::Right(_) => {
                return Ok(ok_json(StatusCode::OK, &json!({ "tasks": [] })));
            }
        }
    }
}

/// `POST /api/worker/task-complete`, both shapes:
/// - client: `{worker_id, task_id, result?, status?, error?, retry?}` in the body;
/// - service: `?worker_id=..&task_id=..` with the result as the body
///   (`&status=failed` makes the body the error).
///
/// `status: "failed"` reports a failure: the task is retried while attempts
/// remain (unless `retry: false`), else it ends `failed`.
#[utoipa::path(
    post,
    path = "/api/worker/task-complete",
    tag = "workers",
    summary = "Report a task's result",
    description = "The real agent sends everything in the body. The service original's shape is taken too: `worker_id` and `task_id` in the query, the result as the body (`status=failed` makes it the error). Repeating a report is harmless.",
    params(
        ("worker_id" = Option<String>, Query, description = "Service shape: the worker"),
        ("task_id" = Option<String>, Query, description = "Service shape: the task"),
        ("status" = Option<String>, Query, description = "Service shape: `failed` reports a failure"),
    ),
    request_body(content = super::openapi::Complete, example = json!({"worker_id": "gpu-box-1", "task_id": "t-0123456789abcdef-0123456789abcdef", "result": {"ok": true}})),
    responses(
        (status = 200, description = "Recorded", body = super::openapi::Completed),
        (status = 404, description = "Unknown task", body = super::openapi::Detail),
        (status = 409, description = "The lease expired and the task went to another worker", body = super::openapi::Detail),
    )
)]
pub(super) async fn complete(ctx: Ctx, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = req.uri().query().map(str::to_string);
    let q = q.as_deref();
    let q_worker = query_param(q, "worker_id");
    let q_task = query_param(q, "task_id");
    let q_status = query_param(q, "status");
    let head = peer::Head::of(&ctx, &req);
    let body = ctx.body(req).await?;
    // The service original's shape names both ids in the query; anything
    // else is the agent's (a body object, the query filling in what the
    // body leaves out).
    let (worker_id, task_id, status, result, error, retry) =
        if q_worker.is_some() && q_task.is_some() {
            let v = if body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                super::super::request::parse_json::<Value>(&body)?
            };
            (q_worker, q_task, q_status, v.clone(), v, true)
        } else {
            let o: Map<String, Value> = parse_object(&body)?;
            let retry = match o.get("retry") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(ApiError::field("retry", "expected a boolean")),
            };
            (
                str_field(&o, "worker_id")?.or(q_worker),
                str_field(&o, "task_id")?.or(q_task),
                str_field(&o, "status")?.or(q_status),
                o.get("result").cloned().unwrap_or(Value::Null),
                o.get("error").cloned().unwrap_or(Value::Null),
                retry,
            )
        };
    let worker_id = worker_id.ok_or_else(|| ApiError::field("worker_id", "field required"))?;
    let task_id = task_id.ok_or_else(|| ApiError::field("task_id", "field required"))?;
    valid_id("worker_id", &worker_id)?;
    valid_id("task_id", &task_id)?;
    ctx.may_act_for(&worker_id)?;
    let outcome = match status.as_deref() {
        Some("failed") | Some("error") => Outcome::Failed { error, retry },
        _ => Outcome::Done(result),
    };
    let not_found = || ApiError::NotFound("Task not found".into());
    if let (Some(head), Some(owner)) = (head, remote_task(&ctx, &task_id)) {
        return peer::relay(&ctx, &owner, head, body, RELAY_WAIT).await;
    }
    super::worker::writable(&ctx)?;
    let shard = shard_of_task(&task_id, ctx.shard.count).ok_or_else(not_found)?;
    let op = TaskOp::Complete {
        task_id: task_id.clone(),
        worker_id: worker_id.clone(),
        outcome,
    };
    let done = match task_op(&ctx, shard, op, Reply::completed).await? {
        Ok(c) => c,
        Err(CompleteError::NotFound) => return Err(not_found()),
        Err(CompleteError::Conflict(m)) => return Err(ApiError::Conflict(m)),
    };
    if done.state == TaskState::Completed && !done.duplicate {
        // Per-worker tally on the worker's record (it may be gone: fine).
        let owner = ctx.shard.owner_of(&worker_id);
        ctx.shard
            .call(owner, ShardRequest::CompleteTask(worker_id))
            .await?;
    }
    Ok(ok_json(
        StatusCode::OK,
        &json!({
            "status": "ok",
            "message": if done.duplicate { "Task completion already recorded" } else { "Task completion recorded" },
            "task_id": task_id,
            "state": done.state.as_str(),
        }),
    ))
}

/// Runs `op(worker_id, ids on that shard)` on every shard holding one of
/// `ids`, all at once; the first failure, if any, is returned.
async fn on_task_shards(
    ctx: &Ctx,
    worker_id: &str,
    ids: Vec<String>,
    op: fn(String, Vec<String>) -> TaskOp,
) -> Result<(), ApiError> {
    let groups = by_shard(ids, |id| shard_of_task(id, ctx.shard.count));
    let calls = groups
        .into_iter()
        .map(|(s, task_ids)| task_op(ctx, s, op(worker_id.to_string(), task_ids), Reply::extended));
    for r in join_all(calls).await {
        r?;
    }
    Ok(())
}

/// Gives back leases `worker_id` took but will not be sent. Best effort: a
/// lease not given back runs out and is retried as any other.
async fn release(ctx: &Ctx, worker_id: &str, ids: Vec<String>) {
    let release = |worker_id, task_ids| TaskOp::Release {
        worker_id,
        task_ids,
    };
    if let Err(e) = on_task_shards(ctx, worker_id, ids, release).await {
        tracing::debug!(worker_id, error = %e, "giving back surplus leases");
    }
}

/// Heartbeat progress: extends the leases `worker_id` holds on `ids`
/// (the heartbeat's `task_ids`, or `active_tasks`). The shards holding
/// them are asked at once.
/// In cluster mode, ids of tasks other nodes own are extended there with
/// the caller's credentials `creds` (None: local ones only).
pub(super) async fn extend_leases(
    ctx: &Ctx,
    worker_id: &str,
    ids: Vec<String>,
    creds: Option<&hyper::HeaderMap>,
) -> Result<(), ApiError> {
    let extend = |worker_id, task_ids| TaskOp::Extend {
        worker_id,
        task_ids,
    };
    let ids = match creds {
        Some(creds) => {
            let (local, remote) = by_node(ids, |id| remote_task(ctx, id));
            if !remote.is_empty() {
                peer::extend_remote(ctx, worker_id, remote, creds).await;
            }
            local
        }
        None => ids,
    };
    on_task_shards(ctx, worker_id, ids, extend).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn waits_are_clamped_before_they_become_durations() {
        assert_eq!(clamp_seconds("1e20", MAX), Some(MAX));
        assert_eq!(clamp_seconds("1.5", MAX), Some(Duration::from_millis(1500)));
        assert_eq!(clamp_seconds("0", MAX), Some(Duration::ZERO));
        for bad in ["-1", "NaN", "inf", "-inf", "", "x", "1e400"] {
            assert_eq!(clamp_seconds(bad, MAX), None, "{bad}");
        }
        assert_eq!(parse_wait(Some("wait=1e20&worker_id=w"), MAX).unwrap(), MAX);
        assert!(parse_wait(Some("wait=-0.5"), MAX).is_err());
    }

    proptest! {
        // Any string a client can put in `wait=` gives a bounded duration
        // or a 422, never a panic.
        #[test]
        fn any_wait_string_is_bounded_or_refused(s in ".{0,40}") {
            if let Some(d) = clamp_seconds(&s, MAX) {
                prop_assert!(d <= MAX);
            }
        }

        #[test]
        fn any_float_is_bounded_or_refused(x in any::<f64>()) {
            if let Some(d) = clamp_seconds(&x.to_string(), MAX) {
                prop_assert!(d <= MAX);
            }
        }

        // Every query parser the handlers use, on arbitrary query strings.
        #[test]
        fn query_strings_never_panic(q in "[a-z_=&%0-9.+eE-]{0,60}") {
            let _ = parse_wait(Some(&q), MAX);
            let _ = query_param(Some(&q), "max");
            let _ = query_param(Some(&q), "worker_id");
        }
    }
}
