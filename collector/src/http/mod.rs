//! The plain HTTP listener (`:9400`): `/metrics`, health, and the JSON API
//! around one shared state ([`Http`]). Each API is a file: nodes, alerts
//! (incidents, acknowledgements, maintenance), security events, the status
//! page; the bearer-token check and JSON bodies are extractors
//! (`auth.rs`). `http` reads from alerting, the store and the database;
//! nothing below imports it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod alerts;
mod auth;
pub(crate) mod nodes;
mod security;
pub(crate) mod status_page;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::exposition;
use crate::ledger::QueueSpec;
use crate::listen::{Ended, Gate, Ticket};
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the HTTP handlers.
pub(crate) struct Http {
    pub store: Arc<Store>,
    pub alerting: Option<Arc<crate::alert::Alerting>>,
    pub metrics: Metrics,
    pub node_down_after: Duration,
    /// Set once every listener is bound.
    pub ready: AtomicBool,
    /// remote_write queues, for their gauges.
    pub queues: Vec<QueueSpec>,
    /// Bearer token of the API's changing endpoints; none: nothing changes.
    pub api_token: Option<String>,
    /// Whether listing security events takes the token too.
    pub protect_security_events: bool,
    /// The state database, for the security event list.
    pub security_db: Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// Language and local time of the status page.
    pub locale: crate::i18n::Locale,
}

/// Serves the router on `listener` until `token` is cancelled: each
/// connection admitted by `gate`, each request answered within `timeout`.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<Http>,
    gate: Arc<Gate>,
    timeout: Duration,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    let metrics = state.metrics.clone();
    let router = router(state.clone());
    let conn_token = token.clone();
    let conn_gate = gate.clone();
    let handle = move |stream: tokio::net::TcpStream, peer: SocketAddr, ticket: Ticket| {
        let (router, token, gate, metrics) =
            (router.clone(), conn_token.clone(), conn_gate.clone(), state.metrics.clone());
        async move {
            let _ticket = ticket;
            metrics.http_connections.inc();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let answer = router.clone().call(req.map(axum::body::Body::new));
                async move {
                    match tokio::time::timeout(timeout, answer).await {
                        Ok(r) => r,
                        Err(_) => Ok((
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("request not answered within http.request_timeout ({} ms)\n", timeout.as_millis()),
                        )
                            .into_response()),
                    }
                }
            });
            let ended = crate::listen::serve(stream, service, gate.limits(), &token).await;
            if let Some(reason) = ended.closed_reason() {
                metrics.connection_closed("http", reason);
            } else if let Ended::Error(e) = ended {
                tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error");
            }
            metrics.http_connections.dec();
        }
    };
    let refused = move |why| metrics.connection_refused("http", why);
    crate::listen::accept("http", listener, gate, refused, handle, token, tracker).await;
}

/// The router of the HTTP listener.
pub(crate) fn router(state: Arc<Http>) -> Router {
    Router::new()
        .route("/", get(status_page::page))
        .route("/api", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/nodes", get(nodes::list))
        .route("/api/v1/security/events", get(security::events))
        .merge(alerts::routes())
        // API bodies are a few hundred bytes; axum's default is 2 MB.
        .layer(DefaultBodyLimit::max(MAX_API_BODY))
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    "tierwatch collector\n\n/               status page (HTML)\n/metrics        Prometheus exposition\n/api/v1/nodes   nodes and their status (JSON)\n/api/v1/alerts  open incidents (JSON)\n/api/v1/alerts/history  incident history (JSON)\n/api/v1/alerts/ack      acknowledge an incident (POST)\n/api/v1/maintenance     maintenance windows (GET, POST, DELETE /{id})\n/api/v1/security/events security events with evidence (?node=&kind=&since_ms=&limit=)\n/healthz        liveness\n/readyz         readiness\n"
}

async fn metrics(State(s): State<Arc<Http>>, headers: axum::http::HeaderMap) -> Response {
    for q in &s.queues {
        s.metrics.remote_write_queue(
            &q.name,
            q.state.bytes.load(Ordering::Relaxed),
            q.state.rows.load(Ordering::Relaxed),
        );
    }
    let now = tierwatch_protocol::now_ms();
    let mut derived =
        exposition::Derived { alerts: s.alerting.as_ref().map(|a| a.alerts_per_node()), ..Default::default() };
    match read_db(&s, move |c| crate::security::recent(c, now - 86_400_000, RECENT_EVENT_GROUPS_PER_NODE)).await {
        Ok(r) => derived.recent_events = r,
        Err(e) => tracing::warn!(error = %e, "/metrics: reading recent security events failed"),
    }
    if let Some(a) = s.alerting.clone() {
        match tokio::task::spawn_blocking(move || a.queued()).await {
            Ok(Ok(q)) => q.iter().for_each(|(r, n)| s.metrics.notifications_queued(r, *n)),
            Ok(Err(e)) => tracing::warn!(error = %e, "/metrics: reading the notification outbox failed"),
            Err(e) => tracing::warn!(error = %e, "/metrics: outbox task failed"),
        }
    }
    const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
    let (store, metrics, down_after) = (s.store.clone(), s.metrics.clone(), s.node_down_after.as_millis() as i64);
    let zip = accepts_gzip(&headers);
    // Rendering walks every series (seconds at national scale) and gzip
    // reads it all again: both on a blocking thread, so the runtime keeps
    // serving pushes meanwhile. Province-wide exposition is megabytes of
    // repetitive text: gzip takes it to about a tenth (Prometheus asks for it).
    let rendered = tokio::task::spawn_blocking(move || {
        let body = exposition::render(&store, &metrics, &derived, now, down_after);
        if !zip {
            return (body, false);
        }
        match gzip(&body) {
            Ok(zipped) => (zipped, true),
            Err(e) => {
                tracing::warn!(error = %e, "/metrics: gzip failed; answering uncompressed");
                (body, false)
            }
        }
    })
    .await;
    match rendered {
        Ok((zipped, true)) => {
            let headers =
                [(header::CONTENT_TYPE, TEXT), (header::CONTENT_ENCODING, "gzip"), (header::VARY, "accept-encoding")];
            (headers, zipped).into_response()
        }
        Ok((body, false)) => ([(header::CONTENT_TYPE, TEXT)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "/metrics: rendering task failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering /metrics failed\n").into_response()
        }
    }
}

/// Whether `Accept-Encoding` allows gzip (not with `q=0`).
fn accepts_gzip(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |c| {
            let mut parts = c.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| p.replace(' ', "") == "q=0" || p.replace(' ', "") == "q=0.0");
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
        },
    )
}

fn gzip(text: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut z = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 8), flate2::Compression::fast());
    z.write_all(text)?;
    z.finish()
}

/// Runs `f` on the state database off the runtime.
pub(crate) async fn read_db<T: Send + 'static>(
    s: &Http,
    f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
) -> Result<T, String> {
    let db = s.security_db.clone();
    tokio::task::spawn_blocking(move || f(&db.lock().unwrap_or_else(|p| p.into_inner())).map_err(|e| e.to_string()))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
}

/// Bytes of a JSON request body.
const MAX_API_BODY: usize = 64 * 1024;

/// Bound on the recent security event groups exposed per node (each is two
/// series): one node's flood cannot push another's groups out.
const RECENT_EVENT_GROUPS_PER_NODE: usize = 20;

async fn readyz(State(s): State<Arc<Http>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}
