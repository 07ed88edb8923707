//! What a changing request must bring: the API's bearer token (there is
//! no way around it: without a configured token nothing changes), no
//! foreign `Origin` (a browser page of another site cannot ride on a
//! logged-in operator), and a JSON body that parses. All are extractors, so
//! a handler that changes state cannot forget one.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
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
        let checked = same_origin(&parts.headers).and_then(|()| authorize(s.api_token.as_deref(), &parts.headers));
        if let Err(e) = &checked {
            tracing::warn!(peer = ?peer, method = %parts.method, path = %parts.uri.path(), status = e.0.as_u16(), reason = %e.1, "API change refused");
        }
        checked?;
        s.alerting
            .clone()
            .map(Changer)
            .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "alerting is off (no rules: in collector.yaml)".into()))
    }
}

/// A caller allowed to read what `api.protect_security_events` protects.
pub(super) struct Reader;

impl FromRequestParts<Arc<Http>> for Reader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &Arc<Http>) -> Result<Self, ApiError> {
        if s.protect_security_events {
            authorize(s.api_token.as_deref(), &parts.headers)?;
        }
        Ok(Reader)
    }
}

/// Checks the bearer token; with none configured, nothing is allowed.
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "no API token is configured: create one with `tierwatch-collector api-token --out FILE` and name it in api.token_file".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Comparing digests: timing tells nothing about the token itself.
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    if digest(given.as_bytes()).as_ref() == digest(token.as_bytes()).as_ref() {
        Ok(())
    } else {
        Err(ApiError(StatusCode::UNAUTHORIZED, "give the API token as Authorization: Bearer <token>".into()))
    }
}

/// Refuses a request a browser sent on behalf of another site: an `Origin`
/// that is not this host, or `Sec-Fetch-Site: cross-site`. Clients that are
/// not browsers send neither.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let text = |name| headers.get(name).and_then(|v: &header::HeaderValue| v.to_str().ok());
    let foreign = |why: String| Err(ApiError(StatusCode::FORBIDDEN, format!("cross-origin request refused: {why}")));
    if text("sec-fetch-site") == Some("cross-site") {
        return foreign("Sec-Fetch-Site: cross-site".into());
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let origin = origin.to_str().unwrap_or("");
    let host = text(header::HOST.as_str()).unwrap_or("");
    let authority = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    match authority {
        Some(a) if !host.is_empty() && a.eq_ignore_ascii_case(host) => Ok(()),
        _ => foreign(format!("Origin {origin:?} is not this collector ({host:?})")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(header::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn a_token_is_always_needed() {
        let none = authorize(None, &headers(&[("authorization", "Bearer x")])).unwrap_err();
        assert_eq!(none.0, StatusCode::FORBIDDEN);
        assert!(none.1.contains("api-token"), "{}", none.1);
        assert_eq!(authorize(Some("t"), &headers(&[])).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            authorize(Some("t"), &headers(&[("authorization", "Bearer u")])).unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert!(authorize(Some("t"), &headers(&[("authorization", "Bearer t")])).is_ok());
    }

    #[test]
    fn foreign_origins_are_refused() {
        assert!(same_origin(&headers(&[("host", "collector:9400")])).is_ok());
        assert!(same_origin(&headers(&[("host", "collector:9400"), ("origin", "http://collector:9400")])).is_ok());
        for bad in [
            &[("host", "127.0.0.1:9400"), ("origin", "http://evil.example")][..],
            &[("host", "127.0.0.1:9400"), ("origin", "null")],
            &[("origin", "http://127.0.0.1:9400")],
            &[("host", "127.0.0.1:9400"), ("sec-fetch-site", "cross-site")],
        ] {
            assert_eq!(same_origin(&headers(bad)).unwrap_err().0, StatusCode::FORBIDDEN, "{bad:?}");
        }
    }
}
