//! The status page at `/`: server-rendered HTML for when Grafana is not
//! there (yet), readable on a phone, refreshing itself, no JavaScript. It
//! shows the province, every node with a status colour, the active alerts
//! with their root cause and the last day's security events.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::nodes::{node_statuses, NodeStatus};
use super::{read_db, Http};
use crate::alert::model::{IncidentView, Severity};
use crate::i18n::{Locale, Texts};
use crate::security::StoredEvent;

/// What the page shows, gathered by the handler.
pub(crate) struct Snapshot {
    pub locale: Locale,
    pub now_ms: i64,
    pub nodes: Vec<NodeStatus>,
    pub incidents: Vec<IncidentView>,
    pub muted: Vec<IncidentView>,
    /// Newest first.
    pub events: Vec<StoredEvent>,
}

/// `/`: the status page.
pub(super) async fn page(State(s): State<Arc<Http>>) -> Response {
    let now = tierwatch_protocol::now_ms();
    let q = crate::security::Query { since_ms: Some(now - 86_400_000), limit: Some(25), ..Default::default() };
    let events = read_db(&s, move |c| crate::security::list(c, &q)).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "status page: reading security events failed");
        Vec::new()
    });
    let nodes = node_statuses(&s, now);
    let snapshot = Snapshot {
        locale: s.locale,
        now_ms: now,
        incidents: s.alerting.as_ref().map(|a| a.open()).unwrap_or_default(),
        muted: s.alerting.as_ref().map(|a| a.muted()).unwrap_or_default(),
        nodes,
        events,
    };
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], render(&snapshot))
        .into_response()
}

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(t: &Texts, secs: f64) -> String {
    let d = std::time::Duration::from_secs(secs.max(0.0).round() as u64);
    t.fill(t.ago, &[("duration", &tierwatch_runtime::duration::format(d))])
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1f2d3d;color:#fff;padding:12px 16px}
header h1{font-size:1.25rem;margin:0 0 4px}
header p{margin:2px 0;font-size:.9rem;opacity:.9}
main{padding:8px 12px;max-width:1200px;margin:auto}
h2{font-size:1.05rem;margin:18px 0 8px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px}
.node{border-radius:6px;padding:8px 10px;background:#fff;border-left:8px solid #9aa3af;box-shadow:0 1px 2px rgba(0,0,0,.08)}
.node b{display:block;font-size:.95rem}
.node small{display:block;color:#4b5563;font-size:.78rem;margin-top:2px}
.up{border-left-color:#1a9e4a}.down{border-left-color:#d92d20;background:#fdecea}
.degraded{border-left-color:#f08c00;background:#fff6e5}.unknown{border-left-color:#9aa3af}
.badge{display:inline-block;border-radius:4px;padding:1px 6px;font-size:.75rem;font-weight:600;color:#fff;background:#6b7280}
.badge.up{background:#1a9e4a}.badge.down,.badge.critical{background:#d92d20}
.badge.degraded,.badge.warning{background:#f08c00}.badge.info{background:#2563eb}
.alert{background:#fff;border-radius:6px;padding:8px 10px;margin-bottom:8px;border-left:8px solid #d92d20}
.alert.warning{border-left-color:#f08c00}.alert.info{border-left-color:#2563eb}.alert.muted{opacity:.6}
.alert p{margin:4px 0;font-size:.9rem}
table{width:100%;border-collapse:collapse;background:#fff;font-size:.85rem}
th,td{text-align:left;padding:5px 6px;border-bottom:1px solid #e5e7eb;vertical-align:top}
.scroll{overflow-x:auto}
footer{padding:12px 16px;font-size:.8rem;color:#4b5563}
footer a{color:#1f4e8c;margin-right:10px}
";

/// The page's HTML.
pub(crate) fn render(s: &Snapshot) -> String {
    let t = s.locale.texts();
    let mut h = String::with_capacity(16 * 1024);
    let count = |status: &str| s.nodes.iter().filter(|n| n.status == status).count().to_string();
    let provinces: Vec<&str> = s.nodes.iter().filter(|n| n.tier == "province").map(|n| n.name.as_str()).collect();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"{}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>{}</title><style>{STYLE}</style></head><body>",
        s.locale.language.code(),
        esc(t.page_title)
    );
    let _ = write!(
        h,
        "<header><h1>{}</h1><p>{}</p><p>{}</p><p>{}</p></header><main>",
        esc(t.page_title),
        esc(&provinces.join(" · ")),
        esc(&t.fill(
            t.page_summary_counts,
            &[("up", &count("up")), ("down", &count("down")), ("unknown", &count("unknown"))]
        )),
        esc(&t.fill(t.page_updated, &[("at", &s.locale.time(s.now_ms))])),
    );
    alerts(&mut h, s);
    nodes(&mut h, s);
    security(&mut h, s);
    let _ = write!(
        h,
        "</main><footer>{}: <a href=\"/api/v1/nodes\">nodes</a><a href=\"/api/v1/alerts\">alerts</a>\
         <a href=\"/api/v1/alerts/history\">history</a><a href=\"/api/v1/security/events\">security</a>\
         <a href=\"/metrics\">metrics</a><a href=\"/api\">api</a></footer></body></html>",
        esc(t.api_links)
    );
    h
}

fn severity_class(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

fn alerts(h: &mut String, s: &Snapshot) {
    let t = s.locale.texts();
    let _ = write!(h, "<h2>{} ({})</h2>", esc(t.page_alerts), s.incidents.len());
    if s.incidents.is_empty() && s.muted.is_empty() {
        let _ = write!(h, "<p>{}</p>", esc(t.page_no_alerts));
        return;
    }
    let mut all: Vec<(&IncidentView, bool)> =
        s.incidents.iter().map(|i| (i, false)).chain(s.muted.iter().map(|i| (i, true))).collect();
    // Most severe first, then the oldest: the root cause of a long outage stays on top.
    all.sort_by_key(|(i, muted)| (*muted, std::cmp::Reverse(i.severity), i.since_ms));
    for (i, muted) in all {
        let class = severity_class(i.severity);
        let _ = write!(
            h,
            "<div class=\"alert {class}{}\"><p><span class=\"badge {class}\">{}</span> <b>{}</b></p><p>{} {} · {}</p>",
            if muted { " muted" } else { "" },
            esc(t.severity(i.severity.as_str())),
            esc(&i.summary),
            esc(t.page_since),
            esc(&s.locale.time(i.since_ms)),
            esc(&i.key),
        );
        if !i.affected.is_empty() {
            let names: Vec<&str> = i.affected.iter().map(|(_, n)| n.as_str()).collect();
            let _ = write!(h, "<p>{} ({}): {}</p>", esc(t.page_affected), names.len(), esc(&names.join(", ")));
        }
        if let Some(a) = &i.ack {
            let _ = write!(h, "<p>{} {} · {}</p>", esc(t.page_acknowledged), esc(&a.by), esc(&a.comment));
        }
        if let Some(why) = &i.muted {
            let _ = write!(h, "<p>{}: {}</p>", esc(t.page_muted), esc(why));
        }
        h.push_str("</div>");
    }
}

fn nodes(h: &mut String, s: &Snapshot) {
    let t = s.locale.texts();
    let _ = write!(h, "<h2>{}</h2>", esc(t.page_nodes));
    // The province first, then its communes, in topology order.
    let mut groups: Vec<(&NodeStatus, Vec<&NodeStatus>)> = Vec::new();
    let mut rest = Vec::new();
    for n in &s.nodes {
        if n.tier != "commune" {
            groups.push((n, Vec::new()));
        }
    }
    for n in s.nodes.iter().filter(|n| n.tier == "commune") {
        match groups.iter_mut().find(|(p, _)| Some(&p.id) == n.parent.as_ref()) {
            Some((_, children)) => children.push(n),
            None => rest.push(n),
        }
    }
    for (head, children) in &groups {
        h.push_str("<div class=\"grid\">");
        tile(h, t, head);
        for c in children {
            tile(h, t, c);
        }
        h.push_str("</div><br>");
    }
    if !rest.is_empty() {
        h.push_str("<div class=\"grid\">");
        for c in rest {
            tile(h, t, c);
        }
        h.push_str("</div>");
    }
}

fn tile(h: &mut String, t: &Texts, n: &NodeStatus) {
    let failing: Vec<&str> = n.probes.iter().filter(|p| !p.success).map(|p| p.target.as_str()).collect();
    let (class, word) = match n.status {
        "up" if !failing.is_empty() => ("degraded", t.status_words[0]),
        "up" => ("up", t.status_words[0]),
        "down" => ("down", t.status_words[1]),
        _ => ("unknown", t.status_words[2]),
    };
    let tier = match n.tier {
        "central" => t.tier_words[0],
        "province" => t.tier_words[1],
        _ => t.tier_words[2],
    };
    let seen = n.last_seen_age_seconds.map_or_else(|| t.never.to_string(), |a| age(t, a));
    let _ = write!(
        h,
        "<div class=\"node {class}\" data-node=\"{}\"><b>{}</b><small>{} · {}</small>\
         <small><span class=\"badge {class}\">{}</span> {}: {}</small>",
        esc(&n.id),
        esc(&n.name),
        esc(&n.id),
        esc(tier),
        esc(word),
        esc(t.page_col_last_seen),
        esc(&seen),
    );
    if !failing.is_empty() {
        let _ = write!(
            h,
            "<small>{} {}: {}</small>",
            esc(t.page_col_probes),
            esc(t.probes_failing),
            esc(&failing.join(", "))
        );
    }
    h.push_str("</div>");
}

fn security(h: &mut String, s: &Snapshot) {
    let t = s.locale.texts();
    let _ = write!(h, "<h2>{}</h2>", esc(t.page_security));
    if s.events.is_empty() {
        let _ = write!(h, "<p>{}</p>", esc(t.page_no_security));
        return;
    }
    let _ = write!(
        h,
        "<div class=\"scroll\"><table><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
        esc(t.page_col_time),
        esc(t.page_col_node),
        esc(t.page_col_kind),
        esc(t.page_col_severity),
        esc(t.page_col_source),
    );
    for e in &s.events {
        let name = s.nodes.iter().find(|n| n.id == e.node).map_or(e.node.as_str(), |n| n.name.as_str());
        let source = e.attributes.get("src").map_or("", String::as_str);
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><span class=\"badge {}\">{}</span></td><td>{}</td></tr>",
            esc(&s.locale.time(e.at_ms)),
            esc(name),
            esc(&e.kind),
            e.severity,
            esc(match e.severity {
                "critical" => t.severities[0],
                "warning" => t.severities[1],
                _ => t.severities[2],
            }),
            esc(source),
        );
    }
    h.push_str("</table></div>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::nodes::ProbeStatus;
    use crate::i18n::Language;

    fn node(id: &str, name: &str, tier: &'static str, parent: Option<&str>, status: &'static str) -> NodeStatus {
        NodeStatus {
            id: id.into(),
            name: name.into(),
            tier,
            parent: parent.map(Into::into),
            province: None,
            status,
            last_seen: None,
            last_seen_age_seconds: (status != "unknown").then_some(12.0),
            agent_version: None,
            last_sequence: None,
            series: 0,
            probes: vec![ProbeStatus {
                probe: "http".into(),
                target: "portal".into(),
                success: id != "b",
                rtt_median_seconds: None,
                loss_ratio: None,
                jitter_seconds: None,
            }],
        }
    }

    #[test]
    fn the_page_names_the_down_commune_its_alert_and_escapes_everything() {
        let incident = IncidentView {
            key: "a/unreachable".into(),
            node: "a".into(),
            node_name: "Xã <A>".into(),
            problem: "unreachable".into(),
            scope: crate::alert::model::Scope::Node,
            severity: Severity::Critical,
            since_ms: 1_800_000_000_000,
            summary: "Xã <A> đã ngừng gửi số liệu".into(),
            affected: vec![],
            service: None,
            alerts: vec![],
            muted: None,
            ack: None,
        };
        let s = Snapshot {
            locale: Locale { language: Language::Vi, utc_offset: crate::i18n::parse_utc_offset("+07:00").unwrap() },
            now_ms: 1_800_000_060_000,
            nodes: vec![
                node("p", "Tỉnh An Giang", "province", None, "up"),
                node("a", "Xã <A>", "commune", Some("p"), "down"),
                node("b", "Xã B", "commune", Some("p"), "up"),
                node("c", "Xã C", "commune", Some("p"), "unknown"),
            ],
            incidents: vec![incident],
            muted: vec![],
            events: vec![],
        };
        let html = render(&s);
        assert!(html.contains("<html lang=\"vi\">"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("<div class=\"node down\" data-node=\"a\"><b>Xã &lt;A&gt;</b>"), "{html}");
        assert!(html.contains("<div class=\"node degraded\" data-node=\"b\">"), "a failing probe shows");
        assert!(html.contains("<div class=\"node unknown\" data-node=\"c\">"));
        assert!(html.contains("Xã &lt;A&gt; đã ngừng gửi số liệu"));
        assert!(html.contains("2 hoạt động, 1 mất kết nối, 1 chưa từng báo cáo"), "{html}");
        assert!(!html.contains("<A>"));
        assert!(html.contains("Không có sự kiện an ninh nào"));
        assert!(html.contains("từ 2027-01-15 15:00:00 +07:00"), "local time of the incident: {html}");
    }
}
