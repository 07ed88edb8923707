//! Alertmanager: incidents as alerts through `POST /api/v2/alerts`, so a
//! province that runs Alertmanager gets its routing, silencing and on-call
//! integrations. An incident is one alert whose labels stay fixed for its
//! life (`alertname`, `incident`, `node`, `problem`, `scope`, `severity`);
//! what changes (summary, affected nodes) goes in annotations. Firing alerts
//! carry `endsAt` four resend intervals ahead and every open incident is
//! re-sent each interval (queued by the alert runner), as Prometheus does, so
//! an outage longer than that stays firing; a resolution sends `endsAt` =
//! its end.
//!
//! An acknowledgement becomes an Alertmanager silence of that incident
//! (`createdBy` the person, the comment marked as tierwatch's), so the
//! routes stop repeating it; the silence is expired before the resolution
//! is sent, or Alertmanager would mute the resolved notification too.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_runtime::http_client::HttpConn;
use tierwatch_yamlconf::Problems;

use super::{Message, Outcome};
use crate::alert::model::IncidentView;

/// How often open incidents are sent again, unless configured.
pub const RESEND: Duration = Duration::from_secs(60);
/// How far ahead of now `endsAt` of a firing alert lies, in resends: a
/// few may fail before Alertmanager takes the alert for resolved.
const FIRING_FOR_RESENDS: u32 = 4;
/// How long an acknowledgement silences an incident that stays open; then
/// Alertmanager's routes remind again.
pub const SILENCE_FOR: Duration = Duration::from_secs(24 * 3600);
/// Starts the comment of every silence tierwatch makes: only those are expired.
const SILENCE_MARK: &str = "tierwatch acknowledgement";

/// As written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlertmanager {
    /// `http://host:9093` (the API path is added).
    pub url: String,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
    /// How often open incidents are sent again (default 1m); `endsAt` lies four of these ahead.
    #[serde(default = "default_resend", with = "duration::serde")]
    pub resend: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_resend() -> Duration {
    RESEND
}

/// Validated.
#[derive(Debug, Clone)]
pub struct Alertmanager {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
    pub resend: Duration,
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
    if raw.resend < Duration::from_secs(1) {
        p.push(format!("{key}.resend"), "must be at least 1s");
        return None;
    }
    let (host, port) = (u.host, u.port);
    Some(Alertmanager { url: raw.url.clone(), host, port, timeout: raw.timeout, resend: raw.resend })
}

/// The alert for `incident`: firing until `ends_ms`.
pub fn alert(incident: &IncidentView, ends_ms: i64) -> serde_json::Value {
    let affected: Vec<&str> = incident.affected.iter().map(|(_, name)| name.as_str()).collect();
    let mut alert = serde_json::json!({
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
        "startsAt": crate::timestamp::rfc3339(incident.since_ms),
        "endsAt": crate::timestamp::rfc3339(ends_ms),
        "generatorURL": "http://tierwatch-collector/api/v1/alerts",
    });
    // A service incident's service, for routes by service.
    if let Some(s) = &incident.service {
        alert["labels"]["service"] = serde_json::Value::from(s.as_str());
    }
    alert
}

/// The silence standing for `incident`'s acknowledgement, from `now_ms`.
pub fn silence(incident: &IncidentView, now_ms: i64) -> serde_json::Value {
    let ack = incident.ack.clone().unwrap_or_default();
    let comment = if ack.comment.is_empty() {
        format!("{SILENCE_MARK} of {}", incident.key)
    } else {
        format!("{SILENCE_MARK} of {}: {}", incident.key, ack.comment)
    };
    serde_json::json!({
        "matchers": [{"name": "incident", "value": incident.key, "isRegex": false, "isEqual": true}],
        "startsAt": crate::timestamp::rfc3339(now_ms),
        "endsAt": crate::timestamp::rfc3339(now_ms + SILENCE_FOR.as_millis() as i64),
        "createdBy": if ack.by.is_empty() { "tierwatch".to_string() } else { ack.by },
        "comment": comment,
    })
}

/// A query-string value, percent-encoded (RFC 3986 unreserved characters pass).
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
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

    /// Delivers one notification: an acknowledgement as a silence, a
    /// resolution after expiring that silence, anything else as a firing alert.
    pub async fn deliver(&mut self, m: &Message) -> Outcome {
        match m.event.as_str() {
            "acknowledged" => self.acknowledge(&m.incident).await,
            "resolved" => match self.expire_silences(&m.incident.key).await {
                Outcome::Sent => self.send(std::slice::from_ref(&m.incident), true, m.at_ms).await,
                other => other,
            },
            super::outbox::RESENT => {
                let all: Vec<IncidentView> = std::iter::once(&m.incident).chain(&m.also).cloned().collect();
                self.send(&all, false, m.at_ms).await
            }
            _ => self.send(std::slice::from_ref(&m.incident), false, m.at_ms).await,
        }
    }

    /// Posts `incidents`, resolved at `at_ms` or firing for four resends from now.
    pub async fn send(&mut self, incidents: &[IncidentView], resolved: bool, at_ms: i64) -> Outcome {
        let firing_for = self.am.resend * FIRING_FOR_RESENDS;
        let ends = if resolved { at_ms } else { tierwatch_protocol::now_ms() + firing_for.as_millis() as i64 };
        let body: Vec<serde_json::Value> = incidents.iter().map(|i| alert(i, ends)).collect();
        self.call("POST", "/api/v2/alerts", Some(serde_json::Value::Array(body))).await.0
    }

    /// Silences `incident` unless a silence of ours already does (a retry
    /// after an answer that was lost must not make a second one).
    async fn acknowledge(&mut self, incident: &IncidentView) -> Outcome {
        match self.our_silences(&incident.key).await {
            Ok(ids) if !ids.is_empty() => Outcome::Sent,
            Ok(_) => {
                let body = silence(incident, tierwatch_protocol::now_ms());
                self.call("POST", "/api/v2/silences", Some(body)).await.0
            }
            Err(o) => o,
        }
    }

    /// Expires the silences tierwatch made for the incident `key`.
    async fn expire_silences(&mut self, key: &str) -> Outcome {
        let ids = match self.our_silences(key).await {
            Ok(ids) => ids,
            Err(o) => return o,
        };
        for id in ids {
            match self.call("DELETE", &format!("/api/v2/silence/{}", query_value(&id)), None).await.0 {
                Outcome::Sent => {}
                // Already expired or gone: what was wanted.
                Outcome::Refused(_) => {}
                failed => return failed,
            }
        }
        Outcome::Sent
    }

    /// Ids of the active or pending silences tierwatch made for the incident `key`.
    async fn our_silences(&mut self, key: &str) -> Result<Vec<String>, Outcome> {
        let filter = query_value(&format!("incident=\"{key}\""));
        let (outcome, body) = self.call("GET", &format!("/api/v2/silences?filter={filter}"), None).await;
        if !matches!(outcome, Outcome::Sent) {
            return Err(outcome);
        }
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&body).map_err(|e| Outcome::Failed(format!("reading silences: {e}")))?;
        Ok(list
            .iter()
            .filter(|s| matches!(s["status"]["state"].as_str(), Some("active" | "pending")))
            .filter(|s| s["comment"].as_str().is_some_and(|c| c.starts_with(SILENCE_MARK)))
            .filter_map(|s| s["id"].as_str().map(str::to_string))
            .collect())
    }

    /// One request; the outcome and, when it succeeded, the answer's body.
    async fn call(&mut self, method: &str, path: &str, body: Option<serde_json::Value>) -> (Outcome, Bytes) {
        let body = match body.map(|b| serde_json::to_vec(&b)).transpose() {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => return (Outcome::Refused(format!("encoding: {e}")), Bytes::new()),
        };
        let req = match Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.conn.authority())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tierwatch-collector/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return (Outcome::Refused(format!("building request: {e}")), Bytes::new()),
        };
        super::exchange_reply(&mut self.conn, req, self.am.timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_percent_encoded() {
        assert_eq!(query_value("incident=\"c1/unreachable\""), "incident%3D%22c1%2Funreachable%22");
        assert_eq!(query_value("Xã-1_~."), "X%C3%A3-1_~.");
    }

    #[test]
    fn resend_below_a_second_is_refused() {
        let raw = RawAlertmanager { url: "http://am:9093".into(), timeout: default_timeout(), resend: Duration::ZERO };
        let mut p = Problems::default();
        assert!(validate(&raw, "notify[0].alertmanager", &mut p).is_none());
        assert!(format!("{p:?}").contains("notify[0].alertmanager.resend"), "{p:?}");
    }
}
