//! The local endpoint (`127.0.0.1:9401`): `/healthz` and the agent's own `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, TextEncoder};

use crate::metrics::Metrics;
use crate::outbox::Outbox;

/// What the health handlers read.
pub struct Health {
    pub node: String,
    pub icmp: String,
    pub metrics: Metrics,
    pub outbox: Arc<Outbox>,
}

/// The router of the local endpoint.
pub fn router(state: Arc<Health>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/metrics", get(metrics)).with_state(state)
}

async fn healthz(State(h): State<Arc<Health>>) -> Json<serde_json::Value> {
    let last = h.metrics.last_push_success.get();
    let now = tierwatch_protocol::now_ms() as f64 / 1000.0;
    Json(serde_json::json!({
        "status": "ok",
        "node": h.node,
        "version": env!("CARGO_PKG_VERSION"),
        "icmp": h.icmp,
        "queued_batches": h.outbox.len(),
        "last_push_success_age_seconds": if last > 0.0 { Some(now - last) } else { None },
    }))
}

async fn metrics(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&h.metrics.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding /metrics failed");
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], buf)
}
