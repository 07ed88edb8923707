//! The plain HTTP listener (`:9400`): `/metrics`, health, and the JSON API.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::exposition;
use crate::ledger::QueueSpec;
use crate::metrics::Metrics;
use crate::store::Store;

/// Shared state of the HTTP handlers.
pub struct Http {
    pub store: Arc<Store>,
    pub alerting: Option<Arc<crate::alert::Alerting>>,
    pub metrics: Metrics,
    pub stale_after: Duration,
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
pub fn router(state: Arc<Http>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/api", get(index))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/security/events", get(security_events))
        .merge(crate::alert_api::routes())
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
    let body = exposition::render(
        &s.store,
        &s.metrics,
        &derived,
        now,
        s.stale_after.as_millis() as i64,
        s.node_down_after.as_millis() as i64,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// Runs `f` on the state database off the runtime.
async fn read_db<T: Send + 'static>(
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

/// `/`: the status page.
async fn status_page(State(s): State<Arc<Http>>) -> Response {
    let now = tierwatch_protocol::now_ms();
    let q = crate::security::Query { since_ms: Some(now - 86_400_000), limit: Some(25), ..Default::default() };
    let events = read_db(&s, move |c| crate::security::list(c, &q)).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "status page: reading security events failed");
        Vec::new()
    });
    let nodes = node_statuses(&s, now);
    let snapshot = crate::status_page::Snapshot {
        locale: s.locale,
        now_ms: now,
        incidents: s.alerting.as_ref().map(|a| a.open()).unwrap_or_default(),
        muted: s.alerting.as_ref().map(|a| a.muted()).unwrap_or_default(),
        nodes,
        events,
    };
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")],
        crate::status_page::render(&snapshot),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<Http>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// A node as `/api/v1/nodes` reports it.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub id: String,
    pub name: String,
    pub tier: &'static str,
    pub parent: Option<String>,
    pub province: Option<String>,
    /// `up` (pushed within node_down_after), `down` (pushed before, not since), `unknown` (never pushed).
    pub status: &'static str,
    /// RFC 3339 time of the last accepted push.
    pub last_seen: Option<String>,
    pub last_seen_age_seconds: Option<f64>,
    pub agent_version: Option<String>,
    pub last_sequence: Option<u64>,
    pub series: usize,
    /// The last result of each probe the node runs.
    pub probes: Vec<ProbeStatus>,
}

/// The last result of one probe of a node.
#[derive(Debug, Serialize)]
pub struct ProbeStatus {
    pub probe: String,
    pub target: String,
    pub success: bool,
}

/// Snapshot of every node's status at `now_ms`.
pub fn node_statuses(s: &Http, now_ms: i64) -> Vec<NodeStatus> {
    let stale_before = now_ms - s.stale_after.as_millis() as i64;
    let down_after = s.node_down_after.as_millis() as i64;
    let mut out = Vec::new();
    s.store.for_each_node(stale_before, |node, st| {
        let status = match st.last_push_ms {
            None => "unknown",
            Some(t) if now_ms - t <= down_after => "up",
            Some(_) => "down",
        };
        out.push(NodeStatus {
            id: node.id.to_string(),
            name: node.name.clone(),
            tier: node.tier.as_str(),
            parent: node.parent.as_ref().map(|p| p.to_string()),
            province: node.province.as_ref().map(|p| p.to_string()),
            status,
            last_seen: st.last_push_ms.and_then(rfc3339),
            last_seen_age_seconds: st.last_push_ms.map(|t| (now_ms - t) as f64 / 1000.0),
            agent_version: st.last_push_ms.map(|_| st.agent_version.clone()),
            last_sequence: st.last_push_ms.map(|_| st.last_sequence),
            series: st.series.len(),
            probes: probe_statuses(st),
        });
    });
    out
}

fn probe_statuses(st: &crate::store::NodeState) -> Vec<ProbeStatus> {
    let mut probes: Vec<ProbeStatus> = st
        .series
        .iter()
        .filter(|((name, _), _)| name == tierwatch_protocol::catalogue::PROBE_SUCCESS.name)
        .map(|((_, labels), v)| {
            let get = |n: &str| labels.iter().find(|l| l.name == n).map(|l| l.value.clone()).unwrap_or_default();
            ProbeStatus { probe: get("probe"), target: get("target"), success: v.value >= 1.0 }
        })
        .collect();
    probes.sort_by(|a, b| a.target.cmp(&b.target));
    probes
}

/// `ms` since the epoch as RFC 3339 (UTC).
pub fn rfc3339(ms: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

async fn nodes(State(s): State<Arc<Http>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "nodes": node_statuses(&s, tierwatch_protocol::now_ms()) }))
}

/// `/api/v1/security/events?node=&kind=&since_ms=&limit=`: stored security events with their evidence, newest first.
async fn security_events(
    State(s): State<Arc<Http>>,
    axum::extract::Query(q): axum::extract::Query<crate::security::Query>,
) -> Response {
    let listed = read_db(&s, move |c| crate::security::list(c, &q)).await;
    match listed {
        Ok(events) => Json(serde_json::json!({ "events": events })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("security events unavailable: {e}\n")).into_response(),
    }
}
