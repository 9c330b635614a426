//! Maps (method, path) to a route. Pure: no shard, no IO.
//!
//! The route is also the metrics label, so every answer (including 404 and
//! 405) is counted under a fixed, bounded set of names.

use hyper::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Register,
    Heartbeat,
    Unregister,
    Tasks,
    TaskComplete,
    CoordinatorWorkers,
    Broadcast,
    AdminWorkers,
    AdminServices,
    AdminStats,
    AdminHealth,
    AdminGaps,
    Discover,
    ServicesList,
    Health,
    Metrics,
    TaskSubmit,
    TaskGet,
    AdminTasks,
    InferenceLlm,
    InferenceVision,
    InferenceRag,
    InferenceGraph,
    ServiceProxy,
    AdminPins,
    Preflight,
    NotFound,
    MethodNotAllowed,
    AuthLogin,
    AuthVerify,
    ApiServiceProxy,
    SessionCreate,
    SessionDelete,
    Events,
    EventsWs,
    OpenApi,
    Docs,
    Redoc,
    DocsAsset,
    GraphQl,
    WorkerDrain,
    WorkerUndrain,
    History,
    HistorySeries,
    TaskRequeue,
    Ui,
    ClusterSummary,
}

/// Metric labels, indexed by `Route as usize`.
pub(crate) const ROUTE_NAMES: [&str; 47] = [
    "register",
    "heartbeat",
    "unregister",
    "tasks",
    "task_complete",
    "coordinator_workers",
    "broadcast",
    "admin_workers",
    "admin_services",
    "admin_stats",
    "admin_health",
    "admin_gaps",
    "discover",
    "services_list",
    "health",
    "metrics",
    "task_submit",
    "task_get",
    "admin_tasks",
    "inference_llm",
    "inference_vision",
    "inference_rag",
    "inference_graph",
    "service_proxy",
    "admin_pins",
    "preflight",
    "not_found",
    "method_not_allowed",
    "auth_login",
    "auth_verify",
    "api_service_proxy",
    "session_create",
    "session_delete",
    "events",
    "events_ws",
    "openapi",
    "docs",
    "redoc",
    "docs_asset",
    "graphql",
    "worker_drain",
    "worker_undrain",
    "history",
    "history_series",
    "task_requeue",
    "ui",
    "cluster_summary",
];

impl Route {
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The route forwards to a worker (inference and the generic proxies).
    pub(crate) fn is_proxied(self) -> bool {
        matches!(
            self,
            Route::InferenceLlm
                | Route::InferenceVision
                | Route::InferenceRag
                | Route::InferenceGraph
                | Route::ServiceProxy
                | Route::ApiServiceProxy
        )
    }

    /// The route's name, as metrics and the access log give it.
    pub fn name(self) -> &'static str {
        ROUTE_NAMES[self.index()]
    }
}

/// The outcome of routing: the route, its path parameter (raw, still
/// percent-encoded) and, for 405, the methods the path does allow.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Matched<'a> {
    pub route: Route,
    pub param: Option<&'a str>,
    pub allow: &'static str,
}

pub(crate) fn route<'a>(method: &Method, path: &'a str) -> Matched<'a> {
    // Routes that take more than one method: the generic proxies (the
    // local original's `/service/`, the service original's
    // `/api/service/`). Any method is forwarded; OPTIONS stays ours (CORS
    // preflight).
    for (prefix, proxy) in [
        ("/service/", Route::ServiceProxy),
        ("/api/service/", Route::ApiServiceProxy),
    ] {
        if let Some(rest) = path.strip_prefix(prefix) {
            let route = if method == Method::OPTIONS {
                Route::Preflight
            } else {
                proxy
            };
            return Matched {
                route,
                param: Some(rest),
                allow: "GET, POST, PUT, PATCH, DELETE, HEAD",
            };
        }
    }
    if path == "/api/admin/pins" {
        let allow = "GET, PUT, DELETE";
        let route = match *method {
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE => Route::AdminPins,
            Method::OPTIONS => Route::Preflight,
            _ => Route::MethodNotAllowed,
        };
        return Matched {
            route,
            param: None,
            allow,
        };
    }
    if path == "/graphql" {
        let route = match *method {
            Method::GET | Method::HEAD | Method::POST => Route::GraphQl,
            Method::OPTIONS => Route::Preflight,
            _ => Route::MethodNotAllowed,
        };
        return Matched {
            route,
            param: None,
            allow: "GET, POST",
        };
    }
    if path == "/api/session" {
        let route = match *method {
            Method::POST => Route::SessionCreate,
            Method::DELETE => Route::SessionDelete,
            Method::OPTIONS => Route::Preflight,
            _ => Route::MethodNotAllowed,
        };
        return Matched {
            route,
            param: None,
            allow: "POST, DELETE",
        };
    }
    let (expected, route, param): (&'static str, Route, Option<&'a str>) = match path {
        "/api/worker/register" => ("POST", Route::Register, None),
        "/api/worker/heartbeat" => ("POST", Route::Heartbeat, None),
        "/api/worker/tasks" => ("GET", Route::Tasks, None),
        "/api/worker/task-complete" => ("POST", Route::TaskComplete, None),
        "/api/coordinator/workers" => ("GET", Route::CoordinatorWorkers, None),
        "/api/coordinator/broadcast-job" => ("POST", Route::Broadcast, None),
        "/api/admin/workers" => ("GET", Route::AdminWorkers, None),
        "/api/admin/services" => ("GET", Route::AdminServices, None),
        "/api/admin/stats" => ("GET", Route::AdminStats, None),
        "/api/admin/health" => ("GET", Route::AdminHealth, None),
        "/api/admin/gaps" => ("GET", Route::AdminGaps, None),
        "/api/services/list" => ("GET", Route::ServicesList, None),
        "/health" => ("GET", Route::Health, None),
        "/metrics" => ("GET", Route::Metrics, None),
        "/api/tasks" => ("POST", Route::TaskSubmit, None),
        "/api/admin/tasks" => ("GET", Route::AdminTasks, None),
        "/api/inference/llm" => ("POST", Route::InferenceLlm, None),
        "/api/inference/vision" => ("POST", Route::InferenceVision, None),
        "/api/inference/rag/query" => ("POST", Route::InferenceRag, None),
        "/api/inference/graph/extract" => ("POST", Route::InferenceGraph, None),
        "/api/auth/login" => ("POST", Route::AuthLogin, None),
        "/api/auth/verify" => ("GET", Route::AuthVerify, None),
        "/api/events" => ("GET", Route::Events, None),
        "/api/events/ws" => ("GET", Route::EventsWs, None),
        "/openapi.json" => ("GET", Route::OpenApi, None),
        "/docs" => ("GET", Route::Docs, None),
        "/redoc" => ("GET", Route::Redoc, None),
        "/api/history" => ("GET", Route::History, None),
        "/api/history/series" => ("GET", Route::HistorySeries, None),
        "/api/cluster/summary" => ("GET", Route::ClusterSummary, None),
        // `/ui` (no parameter) redirects to the page, whose relative
        // asset URLs need the slash.
        "/ui" => ("GET", Route::Ui, None),
        "/ui/" => ("GET", Route::Ui, Some("")),
        _ => {
            if let Some(id) = tail(path, "/api/worker/unregister/") {
                ("DELETE", Route::Unregister, Some(id))
            } else if let Some(s) = tail(path, "/api/services/discover/") {
                ("GET", Route::Discover, Some(s))
            } else if let Some(id) = tail(path, "/api/tasks/") {
                ("GET", Route::TaskGet, Some(id))
            } else if let Some(file) = tail(path, "/docs/assets/") {
                ("GET", Route::DocsAsset, Some(file))
            } else if let Some(file) = tail(path, "/ui/") {
                ("GET", Route::Ui, Some(file))
            } else if let Some(id) = path
                .strip_prefix("/api/admin/tasks/")
                .and_then(|rest| rest.strip_suffix("/requeue"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                ("POST", Route::TaskRequeue, Some(id))
            } else if let Some((id, action)) = worker_action(path) {
                let route = match action {
                    "drain" => Route::WorkerDrain,
                    _ => Route::WorkerUndrain,
                };
                ("POST", route, Some(id))
            } else {
                return Matched {
                    route: Route::NotFound,
                    param: None,
                    allow: "",
                };
            }
        }
    };
    let ok = method.as_str() == expected || (expected == "GET" && method == Method::HEAD);
    if ok {
        Matched {
            route,
            param,
            allow: expected,
        }
    } else if method == Method::OPTIONS {
        Matched {
            route: Route::Preflight,
            param: None,
            allow: expected,
        }
    } else {
        Matched {
            route: Route::MethodNotAllowed,
            param: None,
            allow: expected,
        }
    }
}

/// `/api/admin/workers/{id}/drain` or `/undrain`: the id and the action.
fn worker_action(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/admin/workers/")?;
    let (id, action) = rest.rsplit_once('/')?;
    let ok = !id.is_empty() && !id.contains('/') && matches!(action, "drain" | "undrain");
    ok.then_some((id, action))
}

/// The single non-empty path segment after `prefix`.
fn tail<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_params() {
        assert_eq!(
            route(&Method::POST, "/api/worker/heartbeat").route,
            Route::Heartbeat
        );
        let m = route(&Method::DELETE, "/api/worker/unregister/w%201");
        assert_eq!((m.route, m.param), (Route::Unregister, Some("w%201")));
        assert_eq!(
            route(&Method::GET, "/api/worker/unregister/a/b").route,
            Route::NotFound
        );
        assert_eq!(
            route(&Method::GET, "/api/worker/unregister/").route,
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/nope").route, Route::NotFound);
        assert_eq!(route(&Method::HEAD, "/health").route, Route::Health);
    }

    #[test]
    fn wrong_method_and_preflight() {
        let m = route(&Method::GET, "/api/worker/heartbeat");
        assert_eq!((m.route, m.allow), (Route::MethodNotAllowed, "POST"));
        assert_eq!(
            route(&Method::OPTIONS, "/api/worker/register").route,
            Route::Preflight
        );
    }

    #[test]
    fn multi_method_routes() {
        let m = route(&Method::PATCH, "/service/ocr/v1/x");
        assert_eq!((m.route, m.param), (Route::ServiceProxy, Some("ocr/v1/x")));
        assert_eq!(
            route(&Method::OPTIONS, "/service/ocr/x").route,
            Route::Preflight
        );
        let m = route(&Method::DELETE, "/api/service/client-rag/docs/1");
        assert_eq!(
            (m.route, m.param),
            (Route::ApiServiceProxy, Some("client-rag/docs/1"))
        );
        assert_eq!(
            route(&Method::OPTIONS, "/api/service/rag/x").route,
            Route::Preflight
        );
        // `/api/services/...` is another family of routes.
        assert_eq!(
            route(&Method::GET, "/api/services/list").route,
            Route::ServicesList
        );
        assert_eq!(
            route(&Method::PUT, "/api/admin/pins").route,
            Route::AdminPins
        );
        assert_eq!(
            route(&Method::DELETE, "/api/admin/pins").route,
            Route::AdminPins
        );
        let m = route(&Method::POST, "/api/admin/pins");
        assert_eq!(
            (m.route, m.allow),
            (Route::MethodNotAllowed, "GET, PUT, DELETE")
        );
        assert_eq!(
            route(&Method::POST, "/api/inference/llm").route,
            Route::InferenceLlm
        );
        assert_eq!(route(&Method::GET, "/api/tasks/t-1").route, Route::TaskGet);
        assert_eq!(
            route(&Method::POST, "/api/session").route,
            Route::SessionCreate
        );
        assert_eq!(
            route(&Method::DELETE, "/api/session").route,
            Route::SessionDelete
        );
        let m = route(&Method::GET, "/api/session");
        assert_eq!(
            (m.route, m.allow),
            (Route::MethodNotAllowed, "POST, DELETE")
        );
    }

    #[test]
    fn names_line_up_with_variants() {
        assert_eq!(Route::MethodNotAllowed.name(), "method_not_allowed");
        assert_eq!(Route::Register.name(), "register");
        assert_eq!(Route::Metrics.name(), "metrics");
        assert_eq!(Route::AdminPins.name(), "admin_pins");
        assert_eq!(Route::TaskSubmit.name(), "task_submit");
        assert_eq!(Route::AuthVerify.name(), "auth_verify");
        assert_eq!(Route::ApiServiceProxy.name(), "api_service_proxy");
        assert_eq!(Route::SessionDelete.name(), "session_delete");
        assert_eq!(Route::EventsWs.name(), "events_ws");
        assert_eq!(Route::Ui.name(), "ui");
        let m = route(&Method::POST, "/api/admin/tasks/t-1/requeue");
        assert_eq!((m.route, m.param), (Route::TaskRequeue, Some("t-1")));
        assert_eq!(
            route(&Method::POST, "/api/admin/tasks//requeue").route,
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/ui").param, None);
        assert_eq!(route(&Method::GET, "/ui/").param, Some(""));
        assert_eq!(route(&Method::GET, "/ui/app.js").param, Some("app.js"));
        assert_eq!(route(&Method::GET, "/ui/a/b").route, Route::NotFound);
        assert_eq!(route(&Method::GET, "/api/history").route, Route::History);
    }
}
