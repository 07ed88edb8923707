//! Alertmanager: incidents as alerts through `POST /api/v2/alerts`, so a
//! province that runs Alertmanager gets its routing, silencing and on-call
//! integrations. An incident is one alert whose labels stay fixed for its
//! life (`alertname`, `incident`, `node`, `problem`, `scope`, `severity`);
//! what changes (summary, affected nodes) goes in annotations. Firing alerts
//! carry `endsAt` a few minutes ahead and are re-sent every minute while
//! open, as Prometheus does; a resolution sends `endsAt` = its end.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_runtime::http_client::HttpConn;
use tierwatch_yamlconf::Problems;

use super::Outcome;
use crate::alert::engine::IncidentView;

/// How often open incidents are sent again.
pub const RESEND: Duration = Duration::from_secs(60);
/// How far ahead `endsAt` of a firing alert lies: four resends.
pub const FIRING_FOR: Duration = Duration::from_secs(240);

/// As written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    /// `http://host:9093` (the API path is added).
    pub url: String,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Validated.
#[derive(Debug, Clone)]
pub struct Alertmanager {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
}

/// Checks `raw`; `key` is its key path for problems.
pub fn validate(raw: &RawAlertmanager, key: &str, p: &mut Problems) -> Option<Alertmanager> {
    let u = match tierwatch_runtime::url::parse(&raw.url, Some(9093)) {
        Ok(u) if !u.https && u.is_root() => u,
        Ok(u) if u.https => {
            p.push(format!("{key}.url"), format!("{:?} must start with http://", raw.url));
            return None;
        }
        Ok(_) => {
            p.push(format!("{key}.url"), "give only http://host:port; the API path is added");
            return None;
        }
        Err(e) => {
            p.push(format!("{key}.url"), e);
            return None;
        }
    };
    let (host, port) = (u.host, u.port);
    Some(Alertmanager { url: raw.url.clone(), host, port, timeout: raw.timeout })
}

/// The alert for `incident`: firing until `ends_ms`.
pub fn alert(incident: &IncidentView, ends_ms: i64) -> serde_json::Value {
    let affected: Vec<&str> = incident.affected.iter().map(|(_, name)| name.as_str()).collect();
    serde_json::json!({
        "labels": {
            "alertname": format!("tierwatch_{}", incident.problem),
            "incident": incident.key,
            "node": incident.node,
            "problem": incident.problem,
            "scope": incident.scope,
            "severity": incident.severity.as_str(),
        },
        "annotations": {
            "summary": incident.summary,
            "node_name": incident.node_name,
            "affected_count": affected.len().to_string(),
            "affected": affected.join(", "),
            "alerts": incident.alerts.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>().join("\n"),
        },
        "startsAt": crate::http::rfc3339(incident.since_ms),
        "endsAt": crate::http::rfc3339(ends_ms),
        "generatorURL": "http://tierwatch-collector/api/v1/alerts",
    })
}

/// A connection to one Alertmanager.
pub struct Client {
    am: Alertmanager,
    conn: HttpConn,
}

impl Client {
    /// A client for `am`.
    pub fn new(am: Alertmanager) -> Client {
        let conn = HttpConn::new(am.host.clone(), am.port, None);
        Client { am, conn }
    }

    /// Posts `incidents`, resolved at `at_ms` or firing for [`FIRING_FOR`] from now.
    pub async fn send(&mut self, incidents: &[IncidentView], resolved: bool, at_ms: i64) -> Outcome {
        let ends = if resolved { at_ms } else { tierwatch_protocol::now_ms() + FIRING_FOR.as_millis() as i64 };
        let body: Vec<serde_json::Value> = incidents.iter().map(|i| alert(i, ends)).collect();
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("encoding: {e}")),
        };
        let req = match Request::post("/api/v2/alerts")
            .header(HOST, self.conn.authority())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tierwatch-collector/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(format!("building request: {e}")),
        };
        super::exchange(&mut self.conn, req, self.am.timeout).await
    }
}
