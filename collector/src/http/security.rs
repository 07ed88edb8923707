//! `/api/v1/security/events`: stored security events with their evidence.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Reader;
use super::{read_db, Http};

/// `/api/v1/security/events?node=&kind=&since_ms=&limit=`: stored security events with their evidence, newest first.
pub(super) async fn events(
    _: Reader,
    State(s): State<Arc<Http>>,
    axum::extract::Query(q): axum::extract::Query<crate::security::Query>,
) -> Response {
    let listed = read_db(&s, move |c| crate::security::list(c, &q)).await;
    match listed {
        Ok(events) => Json(serde_json::json!({ "events": events })).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("security events unavailable: {e}\n")).into_response(),
    }
}
