//! Maintenance windows: from `collector.yaml` (planned work) or the API (the
//! technician on site). While a window is on, incidents about the nodes it
//! matches are not paged; one still true when the window ends pages then.
//! A window matches by node, tier or any label, exactly like rule matchers:
//! `{node: nui-cam}`, `{tier: commune}`, `{province: an-giang}`,
//! `{probe: http, target: portal}`.

use std::collections::BTreeMap;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use tierwatch_yamlconf::Problems;

use super::model::{AlertView, IncidentView, Scope};
use crate::topology::Topology;

/// A window as written in `collector.yaml` or posted to the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindow {
    /// Exact label values, identity labels (`node`, `tier`, `province`, `parent`) included.
    #[serde(rename = "match")]
    pub matchers: BTreeMap<String, String>,
    /// RFC 3339 (`2026-12-01T22:00:00+07:00`); API default: now.
    #[serde(default)]
    pub start: Option<String>,
    /// RFC 3339; or give `duration` instead.
    #[serde(default)]
    pub end: Option<String>,
    /// `2h`, `30m`: the window ends this long after its start.
    #[serde(default)]
    pub duration: Option<String>,
    pub reason: String,
    /// Who set it (API).
    #[serde(default)]
    pub by: Option<String>,
}

/// A validated window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    #[serde(rename = "match")]
    pub matchers: BTreeMap<String, String>,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub reason: String,
    pub by: Option<String>,
    /// `config` or `api`.
    pub source: String,
}

impl Window {
    /// True while `now_ms` is inside the window.
    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.ends_ms
    }

    /// True when every matcher finds its value through `label`.
    pub fn matches<'a>(&self, mut label: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.matchers.iter().all(|(k, v)| label(k) == Some(v.as_str()))
    }

    /// One line for logs and muted incidents.
    pub fn describe(&self, locale: &crate::i18n::Locale) -> String {
        format!("{} {} {}: {}", self.id, locale.texts().muted_until, locale.time(self.ends_ms), self.reason)
    }
}

fn parse_time(s: &str) -> Result<i64, String> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{s:?} is not an RFC 3339 time such as 2026-12-01T22:00:00+07:00: {e}"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Validates `raw` into a window with `id`; `now_ms` is the default start.
/// Problems go to `p` under `key`.
pub fn validate(raw: &RawWindow, id: String, source: &str, now_ms: i64, key: &str, p: &mut Problems) -> Option<Window> {
    let before = p.len();
    if raw.matchers.is_empty() {
        p.push(format!("{key}.match"), "give at least one label, e.g. {node: nui-cam} or {tier: commune}");
    }
    for k in raw.matchers.keys() {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            p.push(format!("{key}.match"), format!("{k:?} is not a label name"));
        }
    }
    if raw.reason.trim().is_empty() {
        p.push(format!("{key}.reason"), "say why (it is shown with every muted incident)");
    }
    let start = match &raw.start {
        Some(s) => parse_time(s).map_err(|e| p.push(format!("{key}.start"), e)).ok(),
        None if source == "api" => Some(now_ms),
        None => {
            p.push(format!("{key}.start"), "a configured window needs a start");
            None
        }
    };
    let end = match (&raw.end, &raw.duration) {
        (Some(e), None) => parse_time(e).map_err(|e| p.push(format!("{key}.end"), e)).ok(),
        (None, Some(d)) => match tierwatch_runtime::duration::parse(d) {
            Ok(d) => start.map(|s| s + d.as_millis() as i64),
            Err(e) => {
                p.push(format!("{key}.duration"), e);
                None
            }
        },
        _ => {
            p.push(format!("{key}.end"), "give exactly one of end and duration");
            None
        }
    };
    if let (Some(s), Some(e)) = (start, end) {
        if e <= s {
            p.push(format!("{key}.end"), "must be after the start");
        }
    }
    if p.len() > before {
        return None;
    }
    Some(Window {
        id,
        matchers: raw.matchers.clone(),
        starts_ms: start?,
        ends_ms: end?,
        reason: raw.reason.trim().to_string(),
        by: raw.by.clone(),
        source: source.to_string(),
    })
}

/// Validates the windows of `collector.yaml` (ids `config-0`, `config-1`, ...).
pub fn validate_config(raw: &[RawWindow], p: &mut Problems) -> Vec<Window> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, w)| validate(w, format!("config-{i}"), "config", 0, &format!("maintenance[{i}]"), p))
        .collect()
}

/// The windows set through the API that have not ended by `now_ms`; ended ones are deleted.
pub fn load(conn: &Connection, now_ms: i64) -> rusqlite::Result<Vec<Window>> {
    conn.execute("DELETE FROM maintenance WHERE ends_ms <= ?1", [now_ms])?;
    let mut stmt = conn.prepare("SELECT window FROM maintenance ORDER BY starts_ms")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        match serde_json::from_str(&row?) {
            Ok(w) => out.push(w),
            Err(e) => tracing::error!(error = %e, "maintenance: a stored window could not be read back"),
        }
    }
    Ok(out)
}

/// Stores a window set through the API.
pub fn insert(conn: &Connection, w: &Window) -> rusqlite::Result<()> {
    let json = serde_json::to_string(w).unwrap_or_default();
    conn.execute(
        "INSERT INTO maintenance (id, starts_ms, ends_ms, window) VALUES (?1, ?2, ?3, ?4)",
        params![w.id, w.starts_ms, w.ends_ms, json],
    )
    .map(|_| ())
}

/// Deletes a window set through the API; false if there was none.
pub fn delete(conn: &Connection, id: &str) -> rusqlite::Result<bool> {
    conn.execute("DELETE FROM maintenance WHERE id = ?1", [id]).map(|n| n > 0)
}

/// The active window of `windows` that covers `v`: every alert about its own node
/// (every alert, for a children incident; the node, when it has none,
/// as a flapping incident) matches the window.
pub fn covering<'a>(windows: &'a [Window], topo: &Topology, v: &IncidentView, now_ms: i64) -> Option<&'a Window> {
    let node_labels = |id: &str| topo.get_str(id).map(|n| n.identity_labels());
    let covers = |w: &Window, node: &str, labels: &BTreeMap<String, String>| {
        let identity = node_labels(node);
        w.matches(|k| {
            identity
                .as_ref()
                .and_then(|i| i.iter().find(|(n, _)| *n == k).map(|(_, v)| *v))
                .or_else(|| labels.get(k).map(String::as_str))
        })
    };
    let mut windows = windows.iter().filter(|w| w.active(now_ms));
    let relevant: Vec<&AlertView> = v.alerts.iter().filter(|a| v.scope != Scope::Node || a.subject == v.node).collect();
    if relevant.is_empty() {
        return windows.find(|w| covers(w, &v.node, &BTreeMap::new()));
    }
    windows.find(|w| relevant.iter().all(|a| covers(w, &a.subject, &a.labels)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(start: Option<&str>, end: Option<&str>, duration: Option<&str>) -> RawWindow {
        RawWindow {
            matchers: BTreeMap::from([("node".into(), "c1".into())]),
            start: start.map(Into::into),
            end: end.map(Into::into),
            duration: duration.map(Into::into),
            reason: "router swap".into(),
            by: None,
        }
    }

    #[test]
    fn times_with_offsets_and_durations() {
        let mut p = Problems::default();
        let w =
            validate(&raw(Some("2026-12-01T22:00:00+07:00"), None, Some("2h")), "a".into(), "config", 0, "m", &mut p)
                .unwrap();
        assert_eq!(w.starts_ms, 1_796_137_200_000);
        assert_eq!(w.ends_ms - w.starts_ms, 7_200_000);
        assert!(w.active(w.starts_ms) && !w.active(w.ends_ms));
        let w = validate(&raw(None, None, Some("30m")), "b".into(), "api", 5, "m", &mut p).unwrap();
        assert_eq!((w.starts_ms, w.ends_ms), (5, 5 + 1_800_000));
        assert!(p.is_empty());
    }

    #[test]
    fn problems_name_the_field() {
        let mut p = Problems::default();
        let mut r = raw(Some("tomorrow"), Some("2026-12-01T22:00:00Z"), Some("1h"));
        r.matchers.clear();
        assert!(validate(&r, "x".into(), "config", 0, "maintenance[2]", &mut p).is_none());
        let text = p.to_string();
        for want in [
            "maintenance[2].match",
            "maintenance[2].start: \"tomorrow\" is not an RFC 3339",
            "maintenance[2].end: give exactly one",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        let mut p = Problems::default();
        let r = raw(Some("2026-12-01T22:00:00Z"), Some("2026-12-01T21:00:00Z"), None);
        assert!(validate(&r, "x".into(), "config", 0, "m", &mut p).is_none());
        assert!(p.to_string().contains("m.end: must be after the start"), "{p}");
    }
}
