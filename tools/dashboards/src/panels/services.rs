//! Services and certificates: availability, HTTP phases, expiry, DNS.

use serde_json::json;

use crate::{node_link, panel, q, rename, table, Panel, Texts, SEL};

pub(crate) fn services(t: &Texts) -> Vec<Panel> {
    let svc = format!(r#"{SEL},probe!="icmp""#);
    vec![
        panel(
            "services.sla",
            "table",
            24,
            "percentunit",
            vec![
                table(format!("avg_over_time(tierwatch_probe_success{{{svc}}}[30d])")),
                table(format!("tierwatch_probe_success{{{svc}}}")),
            ],
        )
        .with(json!({
            "transformations": [
                { "id": "merge", "options": {} },
                { "id": "organize", "options": {
                    "excludeByName": { "Time": true, "province": true, "parent": true, "tier": true, "__name__": true },
                    "renameByName": rename(t, &[("target", "col.target"), ("probe", "col.probe"),
                        ("Value #A", "col.sla"), ("Value #B", "col.now")]),
                }},
            ],
            "fieldConfig": { "overrides": [
                node_link(t),
                { "matcher": { "id": "byName", "options": "Value #A" }, "properties": [
                    { "id": "decimals", "value": 3 },
                    { "id": "thresholds", "value": { "mode": "absolute", "steps": [
                        { "color": "red", "value": null }, { "color": "orange", "value": 0.99 },
                        { "color": "green", "value": 0.999 }] } },
                    { "id": "custom.cellOptions", "value": { "type": "color-text" } } ] },
                { "matcher": { "id": "byName", "options": "Value #B" }, "properties": [
                    { "id": "unit", "value": "none" },
                    { "id": "mappings", "value": [{ "type": "value", "options": {
                        "0": { "text": t.status_words[1], "color": "red" },
                        "1": { "text": t.status_words[0], "color": "green" } } }] },
                    { "id": "custom.cellOptions", "value": { "type": "color-background" } } ] },
            ]},
        })),
        panel(
            "services.up",
            "timeseries",
            12,
            "none",
            vec![q(format!("tierwatch_probe_success{{{svc}}}"), "{{target}} ({{node}})")],
        )
        .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1 } } })),
        panel(
            "services.http_phases",
            "timeseries",
            12,
            "s",
            vec![q(format!("tierwatch_http_phase_seconds{{{SEL}}}"), "{{target}} {{phase}}")],
        )
        .with(json!({ "fieldConfig": { "defaults": { "custom": {
            "stacking": { "group": "phases", "mode": "normal" }, "fillOpacity": 40, "drawStyle": "bars" } } } })),
        panel(
            "services.cert_days",
            "bargauge",
            12,
            "d",
            vec![table(format!("(tierwatch_tls_leaf_expiry_timestamp_seconds{{{SEL}}} - time()) / 86400"))],
        )
        .with(json!({
            "options": { "displayMode": "gradient", "orientation": "horizontal",
                         "reduceOptions": { "calcs": ["lastNotNull"], "values": true } },
            "fieldConfig": { "defaults": { "displayName": "${__field.labels.target} (${__field.labels.node})",
                "thresholds": { "mode": "absolute", "steps": [
                    { "color": "red", "value": null }, { "color": "orange", "value": 3 }, { "color": "green", "value": 14 }] } } },
        })),
        panel(
            "services.http_status",
            "timeseries",
            12,
            "none",
            vec![q(format!("tierwatch_http_status_code{{{SEL}}}"), "{{target}} ({{node}})")],
        ),
        panel(
            "services.content",
            "timeseries",
            6,
            "none",
            vec![q(format!("tierwatch_http_body_match{{{SEL}}}"), "{{target}}")],
        )
        .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1 } } })),
        panel(
            "services.dns_match",
            "timeseries",
            6,
            "none",
            vec![q(format!("tierwatch_dns_answer_match{{{SEL}}}"), "{{target}} ({{node}})")],
        )
        .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1 } } })),
        panel(
            "services.dns_time",
            "timeseries",
            12,
            "s",
            vec![q(format!("tierwatch_dns_lookup_seconds{{{SEL}}}"), "{{target}} ({{node}})")],
        ),
    ]
}
