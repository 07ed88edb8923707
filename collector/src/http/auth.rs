//! What a changing request must bring: the API's bearer token (or, with no
//! token configured, a loopback peer), and a JSON body that parses. Both
//! are extractors, so a handler that changes state cannot forget either.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Http;
use crate::alert::Alerting;

/// A refusal: the status and what to tell the caller, as `{"error": ...}`.
pub(super) struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

/// The alerting of a caller allowed to change state.
pub(super) struct Changer(pub Arc<Alerting>);

impl FromRequestParts<Arc<Http>> for Changer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Http>) -> Result<Self, ApiError> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        authorize(s, peer, parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()))?;
        s.alerting
            .clone()
            .map(Changer)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "alerting is off (no rules: in collector.yaml)".into()))
    }
}

/// Checks the caller may change state: the token when one is configured,
/// else the collector itself (a peer whose address is unknown is not).
fn authorize(s: &Http, peer: Option<SocketAddr>, authorization: Option<&str>) -> Result<(), ApiError> {
    match &s.api_token {
        Some(token) => {
            let given = authorization.and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
            // Comparing digests: timing tells nothing about the token itself.
            let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
            if digest(given.as_bytes()).as_ref() == digest(token.as_bytes()).as_ref() {
                Ok(())
            } else {
                Err(ApiError(StatusCode::UNAUTHORIZED, "give the API token as Authorization: Bearer <token>".into()))
            }
        }
        None if peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        None => Err(ApiError(
            StatusCode::FORBIDDEN,
            "no api.token_file is configured: state can only be changed from the collector itself".into(),
        )),
    }
}

/// A JSON request body (axum's `Json`), or the status axum chose (400, 415,
/// 422) with what is wrong and where (`line 1 column 12`).
pub(super) struct Body<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(ApiError(rejection.status(), format!("body: {}", rejection.body_text()))),
        }
    }
}
