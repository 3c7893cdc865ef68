//! The REST API under `/api/v1`, `/metrics`, `/healthz` and `/readyz`: routing,
//! authentication and authorisation, and conversion of store rows to wire types.
//!
//! Auth: `Authorization: Bearer pdk_...` names a user of `fleet.toml`; their role
//! decides. Viewers read; maintainers also start, cancel and re-run runs of the
//! jobs they maintain; admins do everything. Reads need a token unless
//! `public_reads` is set. For GET requests only, the `paddock_token` cookie the
//! dashboard sets is accepted in place of the header (so `EventSource` works);
//! mutating calls never accept the cookie, which keeps them safe from CSRF.

mod access;
mod auth;
mod error;
mod fleet;
mod hosts;
mod logs;
mod machines;
mod records;
mod runs;
mod templates;
pub mod wire;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::http::Method;
use axum::routing::MethodRouter;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

pub use auth::{Actor, Reader, TOKEN_COOKIE};
pub use error::ApiError;
pub(crate) use fleet::{hosts_of as fleet_hosts, status_of as fleet_status, vms_of as fleet_vms};
pub(crate) use logs::read_tail as read_log_tail;
pub(crate) use machines::machines_of;
pub(crate) use runs::{retry_facts, run_out, steps_of};
pub(crate) use templates::templates_of;

use crate::config::{Fleet, LiveFleet};
pub(crate) use crate::error::chain;
use crate::runs::RunsHandle;
use crate::store::Store;

/// What the VM manager last saw of one hypervisor host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStatus {
    pub name: String,
    pub up: bool,
    pub last_error: Option<String>,
    pub vms_running: usize,
}

/// Everything the handlers read; shared behind an `Arc`.
pub struct ApiState {
    /// The fleet in force; follows the daemon's reloads (read it with [`ApiState::fleet`]).
    pub live: LiveFleet,
    pub store: Store,
    pub runs: RunsHandle,
    /// Fed by the daemon from the VM manager; empty until its first report.
    pub hosts: watch::Receiver<Vec<HostStatus>>,
    pub started_at: DateTime<Utc>,
    /// Serve reads (API GETs, the dashboard, `/metrics`) without a token.
    pub public_reads: bool,
    pub metrics: PrometheusHandle,
    /// Log follows streaming right now (exported as a gauge; tests wait on it).
    pub follows: Arc<std::sync::atomic::AtomicUsize>,
    /// The most log follows streaming at once (`limits.live_streams`); one more answers 429
    /// naming the limit.
    pub max_follows: usize,
    /// Follows streaming now per client (a token's user, else an address).
    pub follows_by_client: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    /// The most follows one client streams at once (`limits.live_streams_per_client`).
    pub max_follows_per_client: usize,
    /// The access service; `None` answers access calls with 503.
    pub access: Option<crate::access::Access>,
    /// The VM manager, told about drains and resumes; `None` only records them.
    pub vms: Option<crate::vm::VmManager>,
    /// Supervised owners besides access (the forwarder's lanes), reported by `/readyz`.
    pub owners: Vec<(&'static str, crate::supervisor::Health)>,
    /// What every warm seed hands over (the daemon's key, the CA), so the templates listing
    /// can tell a stale template; `None` calls none stale for its key.
    pub template_seeds: Option<crate::vm::template::list::SeedInputs>,
    /// The listing's cache of image file hashes (a file is hashed once per size and mtime).
    pub template_hashes: Arc<crate::vm::template::Templates>,
    /// The daemon's instance id, which names its templates in hosts' pools; `None` lists no
    /// pool host's templates.
    pub instance_id: Option<String>,
}

impl ApiState {
    /// State with the defaults: reads need a token, follows limited as `[limits]` says by default.
    pub fn new(fleet: impl Into<LiveFleet>, store: Store, runs: RunsHandle, hosts: watch::Receiver<Vec<HostStatus>>) -> ApiState {
        ApiState {
            live: fleet.into(),
            store,
            runs,
            hosts,
            started_at: Utc::now(),
            public_reads: false,
            metrics: crate::metrics::install(),
            follows: Arc::default(),
            max_follows: crate::config::Limits::default().live_streams,
            follows_by_client: Arc::default(),
            max_follows_per_client: crate::config::Limits::default().live_streams_per_client,
            access: None,
            vms: None,
            owners: Vec::new(),
            template_seeds: None,
            template_hashes: Arc::default(),
            instance_id: None,
        }
    }

    /// The fleet in force now; a handler takes it once per request.
    pub fn fleet(&self) -> Arc<Fleet> {
        self.live.current()
    }
}

pub type Shared = Arc<ApiState>;

/// Every route: method, path (axum syntax, also the OpenAPI path) and handler.
/// The router is built from this table and the OpenAPI test reads it, so the
/// document and the router cannot drift apart unnoticed.
fn endpoints() -> Vec<(Method, &'static str, MethodRouter<Shared>)> {
    use axum::routing::{get, post};
    vec![
        (Method::GET, "/healthz", get(fleet::healthz)),
        (Method::GET, "/readyz", get(fleet::readyz)),
        (Method::GET, "/metrics", get(fleet::metrics)),
        (Method::GET, "/api/v1/openapi.json", get(openapi)),
        (Method::GET, "/api/v1/status", get(fleet::status)),
        (Method::GET, "/api/v1/hosts", get(fleet::hosts)),
        (Method::POST, "/api/v1/hosts/{name}/drain", post(hosts::drain)),
        (Method::POST, "/api/v1/hosts/{name}/resume", post(hosts::resume)),
        (Method::GET, "/api/v1/vms", get(fleet::vms)),
        (Method::GET, "/api/v1/images", get(fleet::images)),
        (Method::GET, "/api/v1/templates", get(templates::list)),
        (Method::GET, "/api/v1/machines", get(machines::list)),
        (Method::GET, "/api/v1/jobs", get(fleet::jobs)),
        (Method::GET, "/api/v1/jobs/{name}", get(fleet::job)),
        (Method::GET, "/api/v1/runs", get(runs::list)),
        (Method::POST, "/api/v1/runs", post(runs::trigger)),
        (Method::GET, "/api/v1/runs/{id}", get(runs::detail)),
        (Method::POST, "/api/v1/runs/{id}/cancel", post(runs::cancel)),
        (Method::POST, "/api/v1/runs/{id}/rerun", post(runs::rerun)),
        (Method::GET, "/api/v1/runs/{id}/log", get(logs::tail)),
        (Method::GET, "/api/v1/runs/{id}/log/follow", get(logs::follow)),
        (Method::GET, "/api/v1/outbox", get(records::outbox)),
        (Method::GET, "/api/v1/audit", get(records::audit)),
        (Method::GET, "/api/v1/events", get(records::events)),
        (Method::GET, "/api/v1/access", get(records::access)),
        (Method::POST, "/api/v1/access", post(access::request)),
        (Method::GET, "/api/v1/access/ca", get(access::ca)),
        (Method::GET, "/api/v1/access/{id}", get(access::detail)),
        (Method::POST, "/api/v1/access/{id}/approve", post(access::approve)),
        (Method::POST, "/api/v1/access/{id}/deny", post(access::deny)),
        (Method::POST, "/api/v1/access/{id}/extend", post(access::extend)),
        (Method::POST, "/api/v1/access/{id}/revoke", post(access::revoke)),
    ]
}

/// (method, path) of every route, for the OpenAPI coverage test and `paddock` docs.
pub fn route_table() -> Vec<(Method, &'static str)> {
    endpoints().into_iter().map(|(m, p, _)| (m, p)).collect()
}

/// The API, `/metrics` and the health probes.
pub fn router(state: Shared) -> Router {
    let mut by_path: BTreeMap<&'static str, MethodRouter<Shared>> = BTreeMap::new();
    for (_, path, mr) in endpoints() {
        let merged = match by_path.remove(path) {
            Some(existing) => existing.merge(mr),
            None => mr,
        };
        by_path.insert(path, merged);
    }
    let mut r = Router::new();
    for (path, mr) in by_path {
        r = r.route(path, mr);
    }
    // Request bodies here are a few hundred bytes of JSON.
    r.layer(tower_http::limit::RequestBodyLimitLayer::new(64 * 1024)).with_state(state)
}

const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], OPENAPI)
}
