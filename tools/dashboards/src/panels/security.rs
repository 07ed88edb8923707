//! Security events: by kind, by node, top sources, the latest.

use serde_json::json;

use crate::{names, node_link, panel, q, rename, table, unit_override, Panel, Texts, SEL};

pub(crate) fn security(t: &Texts) -> Vec<Panel> {
    vec![
        panel(
            "security.today",
            "stat",
            6,
            "none",
            vec![table(format!("sum(tierwatch_security_recent_events{{{SEL}}}) or vector(0)"))],
        ),
        panel(
            "security.by_kind",
            "timeseries",
            9,
            "none",
            vec![q(
                format!("sum by (kind) (increase(tierwatch_security_events_total{{{SEL}}}[$__rate_interval]))"),
                "{{kind}}",
            )],
        )
        .with(json!({ "fieldConfig": { "defaults": { "custom": { "drawStyle": "bars", "fillOpacity": 60,
            "stacking": { "group": "kinds", "mode": "normal" } } } } })),
        panel(
            "security.by_node",
            "timeseries",
            9,
            "none",
            vec![q(
                names(&format!("sum by (node) (increase(tierwatch_security_events_total{{{SEL}}}[$__rate_interval]))")),
                "{{name}}",
            )],
        )
        .with(json!({ "fieldConfig": { "defaults": { "custom": { "drawStyle": "bars", "fillOpacity": 60,
            "stacking": { "group": "nodes", "mode": "normal" } } } } })),
        panel(
            "security.top_sources",
            "bargauge",
            8,
            "none",
            vec![table(format!(r#"topk(10, sum by (source) (tierwatch_security_recent_events{{{SEL},source!=""}}))"#))],
        )
        .tall(10)
        .with(json!({
            "options": { "displayMode": "basic", "orientation": "horizontal",
                         "reduceOptions": { "calcs": ["lastNotNull"], "values": true } },
            "fieldConfig": { "defaults": { "displayName": "${__field.labels.source}" } },
        })),
        panel(
            "security.latest",
            "table",
            16,
            "none",
            vec![
                table(format!("tierwatch_security_last_event_timestamp_seconds{{{SEL}}} * 1000")),
                table(format!("tierwatch_security_recent_events{{{SEL}}}")),
            ],
        )
        .tall(10)
        .with(json!({
            "options": { "sortBy": [{ "displayName": t.dashboard("col.last_event").0, "desc": true }] },
            "transformations": [
                { "id": "merge", "options": {} },
                { "id": "organize", "options": {
                    "excludeByName": { "Time": true, "province": true, "parent": true, "tier": true, "__name__": true },
                    "indexByName": { "Value #A": 0, "node": 1, "kind": 2, "severity": 3, "source": 4, "Value #B": 5 },
                    "renameByName": rename(t, &[("Value #A", "col.last_event"), ("kind", "col.kind"),
                        ("severity", "col.severity"), ("source", "col.source"), ("Value #B", "col.events")]),
                }},
            ],
            "fieldConfig": { "overrides": [unit_override("Value #A", "dateTimeAsIso"), node_link(t)] },
        })),
    ]
}
