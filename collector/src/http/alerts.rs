//! The alert API on the HTTP listener: open and muted incidents, history,
//! acknowledgements and maintenance windows. Reading is open; changing
//! (`POST`, `DELETE`) takes the bearer token of `api.token_file`, or comes
//! from loopback when no token is configured.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use super::auth::{ApiError, Body, Changer};
use super::Http;
use crate::alert::maintenance::{self, RawWindow};
use crate::alert::model::Ack;

/// The alert routes.
pub(super) fn routes() -> Router<Arc<Http>> {
    Router::new()
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/history", get(history))
        .route("/api/v1/alerts/ack", post(ack))
        .route("/api/v1/maintenance", get(windows).post(add_window))
        .route("/api/v1/maintenance/{id}", delete(delete_window))
}

/// `GET /api/v1/alerts`: incidents paged and open, and those a maintenance window keeps quiet.
async fn alerts(State(s): State<Arc<Http>>) -> Response {
    let (open, muted) = s.alerting.as_ref().map(|a| (a.open(), a.muted())).unwrap_or_default();
    Json(json!({ "alerting": s.alerting.is_some(), "incidents": open, "muted": muted })).into_response()
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/alerts/history?limit=N`: openings, updates, acknowledgements, resolutions and muted incidents, newest first.
async fn history(State(s): State<Arc<Http>>, Query(q): Query<HistoryQuery>) -> Response {
    let Some(a) = &s.alerting else {
        return Json(json!({ "alerting": false, "history": [] })).into_response();
    };
    match a.history(q.limit.unwrap_or(100).min(10_000)).await {
        Ok(h) => Json(json!({ "alerting": true, "history": h })).into_response(),
        Err(e) => ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("history unavailable: {e}")).into_response(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AckRequest {
    key: String,
    by: String,
    #[serde(default)]
    comment: String,
}

/// `POST /api/v1/alerts/ack` `{"key", "by", "comment"}`: someone is on it; repeats stop.
async fn ack(Changer(a): Changer, Body(req): Body<AckRequest>) -> Result<Response, ApiError> {
    if req.by.trim().is_empty() {
        return Err(ApiError(StatusCode::BAD_REQUEST, "by: say who takes it on".into()));
    }
    let ack = Ack { by: req.by.trim().to_string(), comment: req.comment, at_ms: tierwatch_protocol::now_ms() };
    match a.acknowledge(&req.key, ack).await {
        Ok(Some(v)) => Ok(Json(json!({ "incident": v })).into_response()),
        Ok(None) => Err(ApiError(StatusCode::NOT_FOUND, format!("no open incident {:?}", req.key))),
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("could not record it: {e}"))),
    }
}

/// `GET /api/v1/maintenance`: the windows not over yet.
async fn windows(State(s): State<Arc<Http>>) -> Response {
    let now = tierwatch_protocol::now_ms();
    let w = s.alerting.as_ref().map(|a| a.windows(now)).unwrap_or_default();
    Json(json!({ "windows": w })).into_response()
}

/// `POST /api/v1/maintenance`: a window as in `collector.yaml` (`start` defaults to now).
async fn add_window(Changer(a): Changer, Body(raw): Body<RawWindow>) -> Result<Response, ApiError> {
    let mut p = tierwatch_yamlconf::Problems::default();
    let id = format!("mw-{}", tierwatch_protocol::ids::hex(&rand::random::<[u8; 6]>()));
    let w = maintenance::validate(&raw, id, "api", tierwatch_protocol::now_ms(), "body", &mut p)
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, p.to_string()))?;
    match a.add_window(w.clone()).await {
        Ok(()) => Ok((StatusCode::CREATED, Json(json!({ "window": w }))).into_response()),
        Err(e) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, format!("could not store it: {e}"))),
    }
}

/// `DELETE /api/v1/maintenance/{id}`: ends a window set through the API.
async fn delete_window(Changer(a): Changer, Path(id): Path<String>) -> Result<Response, ApiError> {
    match a.delete_window(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(false) => Err(ApiError(StatusCode::NOT_FOUND, format!("no maintenance window {id:?}"))),
        Err(e) => Err(ApiError(StatusCode::CONFLICT, e)),
    }
}
