//! Who may call what: the role every route needs, in one table.
//!
//! The check runs on the [`Route`] the router matched, never on the raw
//! path, so no spelling of a path (`//api`, `/API`, `/%61pi`, dot segments,
//! absolute-form targets) can reach a protected handler without the role
//! that handler's route needs: a spelling either routes to the same
//! `Route` (and gets the same check) or to `NotFound`.
//!
//! Must not: read the path, the headers or any state. The match has no
//! wildcard arm, so adding a route does not compile until it is given a row.

use super::router::Route;
use crate::model::credential::Role;

/// What a route needs once any key or user is configured (with none, the
/// coordinator is open, as the originals were without `API_KEY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Anyone: liveness, CORS preflight, and the login and session routes
    /// (they check credentials of their own).
    Public,
    /// Any valid credential, whatever its role.
    Authenticated,
    /// This role; `admin` may do everything.
    Role(Role),
    /// Either of two roles (or admin).
    Either(Role, Role),
}

impl Need {
    /// The role's name as the OpenAPI spec (`x-required-role`) and
    /// docs/security.md give it: public, any, admin, worker or client.
    pub fn name(self) -> &'static str {
        match self {
            Need::Public => "public",
            Need::Authenticated => "any",
            Need::Role(Role::Admin) | Need::Either(..) => "admin",
            Need::Role(Role::Worker) => "worker",
            Need::Role(Role::Client) => "client",
        }
    }

    /// Whether a credential of role `role` satisfies this need.
    pub fn allows(self, role: Role) -> bool {
        role == Role::Admin
            || match self {
                Need::Public | Need::Authenticated => true,
                Need::Role(r) => role == r,
                Need::Either(a, b) => role == a || role == b,
            }
    }
}

/// The role `route` needs. `protect_metrics` moves `/health` and
/// `/metrics` from public to admin.
pub fn need(route: Route, protect_metrics: bool) -> Need {
    use Role::{Admin, Client, Worker};
    match route {
        // The agent's own calls. A worker key may further be limited to
        // worker ids (checked by the handlers, which know the id).
        Route::Register
        | Route::Heartbeat
        | Route::Unregister
        | Route::Tasks
        | Route::TaskComplete => Need::Role(Worker),
        // Callers of the pool: inference, the generic service proxies,
        // discovery, task submission and results.
        Route::InferenceLlm
        | Route::InferenceVision
        | Route::InferenceRag
        | Route::InferenceGraph
        | Route::ServiceProxy
        | Route::ApiServiceProxy
        | Route::Discover
        | Route::ServicesList
        | Route::TaskSubmit
        | Route::TaskGet => Need::Role(Client),
        // Edge caches poll the worker list to route by themselves: they
        // hold client keys.
        Route::CoordinatorWorkers => Need::Role(Client),
        // The change stream shows what the worker list and task results
        // show: the same callers.
        Route::Events => Need::Role(Client),
        // Dashboards and edge caches follow registry changes live with the
        // same client keys.
        Route::EventsWs => Need::Role(Client),
        // Operator views and actions that change routing for everyone.
        Route::Broadcast
        | Route::AdminWorkers
        | Route::AdminServices
        | Route::AdminStats
        | Route::AdminHealth
        | Route::AdminGaps
        | Route::AdminTasks
        | Route::AdminPins
        | Route::WorkerDrain
        | Route::WorkerUndrain
        | Route::TaskRequeue
        | Route::History
        | Route::HistorySeries => Need::Role(Admin),
        // A node's own counts, which other nodes merge into their /health
        // and pool views: as public as /health.
        Route::Health | Route::Metrics | Route::ClusterSummary => {
            if protect_metrics {
                Need::Role(Admin)
            } else {
                Need::Public
            }
        }
        // Login and session creation check credentials of their own;
        // ending a session only clears the browser's cookie.
        Route::Preflight | Route::AuthLogin | Route::SessionCreate | Route::SessionDelete => {
            Need::Public
        }
        // The API's own description and its viewers, public as in the
        // FastAPI originals: they show the routes, never any data. The
        // pages' "Try it out" calls need credentials like any other call.
        Route::OpenApi | Route::Docs | Route::Redoc | Route::DocsAsset => Need::Public,
        // The dashboard's page and scripts hold no data: every call it
        // makes needs a credential (the session cookie) like any other.
        Route::Ui => Need::Public,
        Route::AuthVerify => Need::Authenticated,
        // Any credential; each field then needs the role of the REST route
        // it mirrors (handlers::graphql), checked against this table.
        Route::GraphQl => Need::Authenticated,
        // Unknown paths and wrong methods need a credential too: otherwise
        // an anonymous caller could tell the paths that exist (401) from
        // those that do not (404). Any role may see a 404/405.
        Route::NotFound | Route::MethodNotAllowed => Need::Authenticated,
    }
}

/// Every route with a sample method and path that the router maps to it
/// (used by the unit test below and by the whole-table HTTP test).
pub const SAMPLES: [(Route, &str, &str); 47] = [
    (Route::Events, "GET", "/api/events"),
    (Route::Register, "POST", "/api/worker/register"),
    (Route::Heartbeat, "POST", "/api/worker/heartbeat"),
    (Route::Unregister, "DELETE", "/api/worker/unregister/w-1"),
    (Route::Tasks, "GET", "/api/worker/tasks?worker_id=w-1"),
    (Route::TaskComplete, "POST", "/api/worker/task-complete"),
    (Route::CoordinatorWorkers, "GET", "/api/coordinator/workers"),
    (Route::Broadcast, "POST", "/api/coordinator/broadcast-job"),
    (Route::AdminWorkers, "GET", "/api/admin/workers"),
    (Route::AdminServices, "GET", "/api/admin/services"),
    (Route::AdminStats, "GET", "/api/admin/stats"),
    (Route::AdminHealth, "GET", "/api/admin/health"),
    (Route::AdminGaps, "GET", "/api/admin/gaps"),
    (Route::Discover, "GET", "/api/services/discover/llm"),
    (Route::ServicesList, "GET", "/api/services/list"),
    (Route::Health, "GET", "/health"),
    (Route::Metrics, "GET", "/metrics"),
    (Route::TaskSubmit, "POST", "/api/tasks"),
    (Route::TaskGet, "GET", "/api/tasks/t-1"),
    (Route::AdminTasks, "GET", "/api/admin/tasks"),
    (Route::InferenceLlm, "POST", "/api/inference/llm"),
    (Route::InferenceVision, "POST", "/api/inference/vision"),
    (Route::InferenceRag, "POST", "/api/inference/rag/query"),
    (
        Route::InferenceGraph,
        "POST",
        "/api/inference/graph/extract",
    ),
    (Route::ServiceProxy, "GET", "/service/ocr/v1/x"),
    (Route::AdminPins, "GET", "/api/admin/pins"),
    (Route::Preflight, "OPTIONS", "/api/worker/register"),
    (Route::NotFound, "GET", "/nope"),
    (Route::MethodNotAllowed, "GET", "/api/worker/heartbeat"),
    (Route::AuthLogin, "POST", "/api/auth/login"),
    (Route::AuthVerify, "GET", "/api/auth/verify"),
    (Route::ApiServiceProxy, "POST", "/api/service/upload/files"),
    (Route::SessionCreate, "POST", "/api/session"),
    (Route::SessionDelete, "DELETE", "/api/session"),
    (Route::EventsWs, "GET", "/api/events/ws"),
    (Route::OpenApi, "GET", "/openapi.json"),
    (Route::Docs, "GET", "/docs"),
    (Route::Redoc, "GET", "/redoc"),
    (Route::DocsAsset, "GET", "/docs/assets/swagger-ui.css"),
    (Route::GraphQl, "POST", "/graphql"),
    (Route::WorkerDrain, "POST", "/api/admin/workers/w-1/drain"),
    (
        Route::WorkerUndrain,
        "POST",
        "/api/admin/workers/w-1/undrain",
    ),
    (Route::History, "GET", "/api/history?series=requests"),
    (Route::HistorySeries, "GET", "/api/history/series"),
    (Route::TaskRequeue, "POST", "/api/admin/tasks/t-1/requeue"),
    (Route::Ui, "GET", "/ui/app.js"),
    (Route::ClusterSummary, "GET", "/api/cluster/summary"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::router::{route, ROUTE_NAMES};
    use hyper::Method;

    #[test]
    fn samples_cover_every_route_and_route_as_named() {
        assert_eq!(SAMPLES.len(), ROUTE_NAMES.len());
        for (i, (r, method, path)) in SAMPLES.iter().enumerate() {
            let m: Method = method.parse().unwrap();
            let path = path.split('?').next().unwrap();
            assert_eq!(route(&m, path).route, *r, "{method} {path}");
            // Each route once.
            assert!(SAMPLES[..i].iter().all(|(o, _, _)| o != r), "{r:?} twice");
        }
    }

    /// The table as docs/security.md states it, row by row.
    #[test]
    fn table_as_documented() {
        use Role::*;
        let want = |r: Route| -> &str {
            match need(r, false) {
                Need::Public => "public",
                Need::Authenticated => "any",
                Need::Role(Admin) => "admin",
                Need::Role(Worker) => "worker",
                Need::Role(Client) => "client",
                Need::Either(..) => "either",
            }
        };
        let rows = [
            ("worker", "register heartbeat unregister tasks task_complete"),
            ("client", "inference_llm inference_vision inference_rag inference_graph service_proxy api_service_proxy discover services_list task_submit task_get coordinator_workers events events_ws"),
            ("admin", "broadcast admin_workers admin_services admin_stats admin_health admin_gaps admin_tasks admin_pins worker_drain worker_undrain task_requeue history history_series"),
            ("public", "health metrics cluster_summary preflight auth_login session_create session_delete openapi docs redoc docs_asset ui"),
            ("any", "auth_verify not_found method_not_allowed graphql"),
        ];
        let mut seen = 0;
        for (role, names) in rows {
            for name in names.split(' ') {
                let (r, _, _) = SAMPLES.iter().find(|(r, _, _)| r.name() == name).unwrap();
                assert_eq!(want(*r), role, "{name}");
                seen += 1;
            }
        }
        assert_eq!(seen, SAMPLES.len());
    }

    #[test]
    fn table() {
        use Role::*;
        assert_eq!(need(Route::Register, false), Need::Role(Worker));
        assert_eq!(need(Route::ServiceProxy, false), Need::Role(Client));
        assert_eq!(need(Route::ApiServiceProxy, false), Need::Role(Client));
        assert_eq!(need(Route::AdminPins, false), Need::Role(Admin));
        assert_eq!(need(Route::Health, false), Need::Public);
        assert_eq!(need(Route::Health, true), Need::Role(Admin));
        assert_eq!(need(Route::Metrics, true), Need::Role(Admin));
        assert_eq!(need(Route::NotFound, false), Need::Authenticated);
        assert_eq!(need(Route::AuthLogin, true), Need::Public);
        assert!(Need::Role(Worker).allows(Admin));
        assert!(!Need::Role(Worker).allows(Client));
        assert!(!Need::Role(Admin).allows(Worker));
        assert!(Need::Either(Client, Worker).allows(Worker));
        assert!(Need::Authenticated.allows(Client));
    }
}
