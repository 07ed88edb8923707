//! Notifiers: each incident change becomes one outbox row per receiver whose
//! route matches, written in the same transaction as the incident itself, so
//! a restart loses no pending notification and sends none twice
//! (`outbox.rs`). One task per receiver drains its rows oldest first,
//! retrying with backoff (`worker.rs`). This file: the receivers as
//! configured, their routes, and one client type over every kind.

pub mod alertmanager;
pub mod email;
pub mod outbox;
pub mod telegram;
pub mod text;
pub mod webhook;
pub mod worker;

pub use outbox::Message;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tierwatch_yamlconf::Problems;

use super::model::{IncidentView, Severity};

/// One receiver as written in `collector.yaml` under `notify:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReceiver {
    pub name: String,
    /// Only incidents at or above this severity.
    #[serde(default)]
    pub min_severity: Option<Severity>,
    /// Only incidents whose fields match exactly (`problem`, `node`, `scope`).
    #[serde(default, rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// Send resolutions too.
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// Page again this often while an incident is open and not acknowledged
    /// (`0s`: never). Not for Alertmanager, which repeats by its own routes.
    #[serde(default, with = "tierwatch_runtime::duration::serde_opt")]
    pub repeat_interval: Option<Duration>,
    #[serde(default)]
    pub webhook: Option<webhook::RawWebhook>,
    #[serde(default)]
    pub alertmanager: Option<alertmanager::RawAlertmanager>,
    #[serde(default)]
    pub telegram: Option<telegram::RawTelegram>,
    #[serde(default)]
    pub email: Option<email::RawEmail>,
}

fn yes() -> bool {
    true
}

/// Repeat interval of a receiver that sets none (Alertmanager's default too).
pub const DEFAULT_REPEAT: Duration = Duration::from_secs(4 * 3600);

/// A validated receiver.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub name: String,
    pub min_severity: Option<Severity>,
    pub matchers: BTreeMap<String, String>,
    pub send_resolved: bool,
    pub repeat_interval: Option<Duration>,
    pub kind: Kind,
}

/// How a receiver is reached.
#[derive(Debug, Clone)]
pub enum Kind {
    Webhook(webhook::Webhook),
    Alertmanager(alertmanager::Alertmanager),
    Telegram(telegram::Telegram),
    Email(email::Email),
}

/// How a send ended.
pub enum Outcome {
    Sent,
    /// Retry later.
    Failed(String),
    /// The receiver refused it for good (4xx other than 408 and 429).
    Refused(String),
}

/// Sends `req` on `conn` within `timeout` and classifies the answer.
pub async fn exchange(
    conn: &mut tierwatch_runtime::http_client::HttpConn,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    timeout: Duration,
) -> Outcome {
    exchange_reply(conn, req, timeout).await.0
}

/// As [`exchange`], with the answer's body when it succeeded.
pub async fn exchange_reply(
    conn: &mut tierwatch_runtime::http_client::HttpConn,
    req: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    timeout: Duration,
) -> (Outcome, bytes::Bytes) {
    use hyper::StatusCode;
    let outcome = match tokio::time::timeout(timeout, conn.send(req)).await {
        Err(_) => {
            conn.reset();
            Outcome::Failed(format!("no answer within {timeout:?}"))
        }
        Ok(Err(e)) => Outcome::Failed(e),
        Ok(Ok(r)) if r.status.is_success() => return (Outcome::Sent, r.body),
        Ok(Ok(r)) => {
            let text = String::from_utf8_lossy(&r.body).chars().take(300).collect::<String>();
            if r.status.is_client_error()
                && r.status != StatusCode::REQUEST_TIMEOUT
                && r.status != StatusCode::TOO_MANY_REQUESTS
            {
                Outcome::Refused(format!("{}: {text}", r.status))
            } else {
                Outcome::Failed(format!("{}: {text}", r.status))
            }
        }
    };
    (outcome, bytes::Bytes::new())
}

/// A connected receiver of any kind.
pub enum Client {
    Webhook(webhook::Client),
    Alertmanager(alertmanager::Client),
    Telegram(telegram::Client),
    Email(email::Client),
}

impl Client {
    /// A client for `kind`; people read its texts in `locale`.
    pub fn new(kind: &Kind, locale: crate::i18n::Locale) -> Client {
        match kind {
            Kind::Webhook(w) => Client::Webhook(webhook::Client::new(w.clone())),
            Kind::Alertmanager(a) => Client::Alertmanager(alertmanager::Client::new(a.clone())),
            Kind::Telegram(t) => Client::Telegram(telegram::Client::new(t.clone(), locale)),
            Kind::Email(e) => Client::Email(email::Client::new(e.clone(), locale)),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message) -> Outcome {
        match self {
            Client::Webhook(c) => c.send(m).await,
            Client::Alertmanager(c) => c.deliver(m).await,
            Client::Telegram(c) => c.send(m).await,
            Client::Email(c) => c.send(m).await,
        }
    }
}

impl Receiver {
    /// Whether `incident` goes to this receiver.
    pub fn routes(&self, incident: &IncidentView, resolved: bool) -> bool {
        if resolved && !self.send_resolved {
            return false;
        }
        if self.min_severity.is_some_and(|m| incident.severity < m) {
            return false;
        }
        self.matchers.iter().all(|(k, v)| {
            let field = match k.as_str() {
                "problem" => incident.problem.as_str(),
                "node" => incident.node.as_str(),
                "scope" => incident.scope.as_str(),
                "severity" => incident.severity.as_str(),
                _ => return false,
            };
            field == v
        })
    }
}

/// Validates the receivers; problems go to `p` with their key path.
pub fn validate(raw: &[RawReceiver], base: &Path, p: &mut Problems) -> Vec<Receiver> {
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let key = |k: &str| format!("notify[{i}].{k}");
        if r.name.is_empty() || !names.insert(r.name.clone()) {
            p.push(key("name"), format!("{:?} is empty or used twice", r.name));
        }
        for k in r.matchers.keys() {
            if !["problem", "node", "scope", "severity"].contains(&k.as_str()) {
                p.push(format!("notify[{i}].match.{k}"), "can match problem, node, scope or severity");
            }
        }
        let kinds = [r.webhook.is_some(), r.alertmanager.is_some(), r.telegram.is_some(), r.email.is_some()];
        let kind = if kinds.iter().filter(|&&k| k).count() != 1 {
            p.push(key("webhook"), "give exactly one receiver kind: webhook, alertmanager, telegram or email");
            None
        } else if let Some(w) = &r.webhook {
            webhook::validate(w, base, &key("webhook"), p).map(Kind::Webhook)
        } else if let Some(a) = &r.alertmanager {
            alertmanager::validate(a, &key("alertmanager"), p).map(Kind::Alertmanager)
        } else if let Some(t) = &r.telegram {
            telegram::validate(t, base, &key("telegram"), p).map(Kind::Telegram)
        } else {
            r.email.as_ref().and_then(|e| email::validate(e, base, &key("email"), p)).map(Kind::Email)
        };
        let repeat_interval = match (&kind, r.repeat_interval) {
            (Some(Kind::Alertmanager(_)), Some(_)) => {
                p.push(key("repeat_interval"), "Alertmanager repeats by its own route's repeat_interval");
                None
            }
            (_, Some(d)) if d.is_zero() => None,
            (_, Some(d)) if d < Duration::from_secs(1) => {
                p.push(key("repeat_interval"), "must be at least 1s (or 0s for never)");
                None
            }
            (_, Some(d)) => Some(d),
            (_, None) => Some(DEFAULT_REPEAT),
        };
        if let Some(kind) = kind {
            let repeat_interval = if matches!(kind, Kind::Alertmanager(_)) { None } else { repeat_interval };
            out.push(Receiver {
                name: r.name.clone(),
                min_severity: r.min_severity,
                matchers: r.matchers.clone(),
                send_resolved: r.send_resolved,
                repeat_interval,
                kind,
            });
        }
    }
    out
}
