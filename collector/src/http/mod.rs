//! The plain HTTP listener (`:9400`): `/metrics`, health, and the JSON API
//! around one shared state ([`Http`]). Each API is a file: nodes, alerts
//! (incidents, acknowledgements, maintenance), security events, the status
//! page; the bearer-token check and JSON bodies are extractors
//! (`auth.rs`). `http` reads from alerting, the store and the database;
//! nothing below imports it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

mod alerts;
mod auth;
pub(crate) mod nodes;
mod security;
pub(crate) mod status_page;

use crate::exposition;
use crate::ledger::QueueSpec;
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
    /// Bearer token of the API's changing endpoints; none: loopback only.
    pub api_token: Option<String>,
    /// The state database, for the security event list.
    pub security_db: Arc<std::sync::Mutex<rusqlite::Connection>>,
    /// Language and local time of the status page.
    pub locale: crate::i18n::Locale,
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
        .with_state(state)
}

async fn index() -> impl IntoResponse {
    "tierwatch collector\n\n/               status page (HTML)\n/metrics        Prometheus exposition\n/api/v1/nodes   nodes and their status (JSON)\n/api/v1/alerts  open incidents (JSON)\n/api/v1/alerts/history  incident history (JSON)\n/api/v1/alerts/ack      acknowledge an incident (POST)\n/api/v1/maintenance     maintenance windows (GET, POST, DELETE /{id})\n/api/v1/security/events security events with evidence (?node=&kind=&since_ms=&limit=)\n/healthz        liveness\n/readyz         readiness\n"
}

async fn metrics(State(s): State<Arc<Http>>) -> Response {
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
    match read_db(&s, move |c| crate::security::recent(c, now - 86_400_000, RECENT_EVENT_GROUPS)).await {
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
    let body = exposition::render(&s.store, &s.metrics, &derived, now, s.node_down_after.as_millis() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
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

/// Bound on the recent security event groups exposed (each is two series).
const RECENT_EVENT_GROUPS: usize = 200;

async fn readyz(State(s): State<Arc<Http>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}
