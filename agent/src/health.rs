//! The local endpoint (`127.0.0.1:9401`): `/healthz` and the agent's own `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};

use crate::metrics::Metrics;
use crate::spool::Spool;

/// What the health handlers read.
pub(crate) struct Health {
    pub node: String,
    pub icmp: String,
    pub metrics: Metrics,
    pub spool: Arc<Spool>,
}

/// The router of the local endpoint.
pub(crate) fn router(state: Arc<Health>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(state)
}

async fn healthz(State(h): State<Arc<Health>>) -> Json<serde_json::Value> {
    let last = h.metrics.last_push_success();
    let now_ms = tierwatch_protocol::now_ms();
    let now = now_ms as f64 / 1000.0;
    let oldest = h.spool.oldest_unsent_ms();
    Json(serde_json::json!({
        "status": "ok",
        "node": h.node,
        "version": env!("CARGO_PKG_VERSION"),
        "icmp": h.icmp,
        "unsent_batches": h.spool.len(),
        "oldest_unsent_age_seconds": if oldest > 0 { Some((now_ms - oldest).max(0) as f64 / 1000.0) } else { None },
        "last_push_success_age_seconds": if last > 0.0 { Some(now - last) } else { None },
    }))
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    h.metrics.refresh(h.spool.oldest_unsent_ms(), tierwatch_protocol::now_ms());
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&h.metrics.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], buf)
}
