//! The Grafana dashboards, generated in one language from one definition:
//! `cargo run -p tierwatch-dashboards -- --language vi --out DIR`. The
//! copies in `dashboards/{en,vi}/` (which the collector's package ships) are
//! this output, and a test keeps them current, so the queries live here once
//! and the titles in `texts/`. A tool, not part of the collector: the daemon
//! need not carry a dashboard generator and its texts.
//!
//! Every panel reads the datasource chosen by the `datasource` variable and
//! filters by the `province`, `tier` and `node` variables.

use serde_json::{json, Value};

pub mod texts;

pub use texts::{Language, Texts};

/// Label matchers of the template variables, for every node-scoped query.
const SEL: &str = r#"province=~"$province",tier=~"$tier",node=~"$node""#;
/// The node and target of the WAN link dashboard.
const WAN: &str = r#"node=~"$node",target=~"$target""#;

/// One generated dashboard: its file name and JSON.
pub struct Dashboard {
    pub file: String,
    pub json: Value,
}

/// A query of a panel.
struct Q {
    expr: String,
    legend: &'static str,
    /// Instant table query (tables, stats of the current value), not a range.
    table: bool,
}

fn q(expr: impl Into<String>, legend: &'static str) -> Q {
    Q { expr: expr.into(), legend, table: false }
}

fn table(expr: impl Into<String>) -> Q {
    Q { expr: expr.into(), legend: "", table: true }
}

/// A panel before layout.
struct Panel {
    id: &'static str,
    kind: &'static str,
    width: u32,
    height: u32,
    unit: &'static str,
    queries: Vec<Q>,
    /// Merged into the panel's JSON (options, overrides, transformations).
    extra: Value,
}

fn panel(id: &'static str, kind: &'static str, width: u32, unit: &'static str, queries: Vec<Q>) -> Panel {
    let height = if kind == "stat" { 4 } else { 8 };
    Panel { id, kind, width, height, unit, queries, extra: json!({}) }
}

impl Panel {
    fn with(mut self, extra: Value) -> Panel {
        merge(&mut self.extra, extra);
        self
    }
    fn tall(mut self, height: u32) -> Panel {
        self.height = height;
        self
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

fn datasource() -> Value {
    json!({ "type": "prometheus", "uid": "${datasource}" })
}

/// Every dashboard in `lang`.
pub fn all(lang: Language) -> Vec<Dashboard> {
    let t = lang.texts();
    vec![
        build(t, "overview", "tierwatch-overview", vars(t, false), overview(t)),
        build(t, "wan", "tierwatch-wan", vars(t, true), wan()),
        build(t, "services", "tierwatch-services", vars(t, false), services(t)),
        build(t, "security", "tierwatch-security", vars(t, false), security(t)),
        build(t, "fleet", "tierwatch-fleet", vars(t, false), fleet(t)),
    ]
}

fn build(t: &Texts, id: &'static str, uid: &str, variables: Vec<Value>, panels: Vec<Panel>) -> Dashboard {
    let (title, description) = t.dashboard(id);
    let (mut x, mut y, mut row_height) = (0, 0, 0);
    let mut out = Vec::new();
    for (n, p) in panels.into_iter().enumerate() {
        if x + p.width > 24 {
            x = 0;
            y += row_height;
            row_height = 0;
        }
        let (ptitle, pdesc) = t.dashboard(p.id);
        let targets: Vec<Value> = p
            .queries
            .iter()
            .enumerate()
            .map(|(i, q)| {
                json!({
                    "datasource": datasource(),
                    "refId": char::from(b'A' + i as u8).to_string(),
                    "expr": q.expr,
                    "legendFormat": if q.legend.is_empty() { "__auto" } else { q.legend },
                    "instant": q.table,
                    "range": !q.table,
                    "format": if q.table { "table" } else { "time_series" },
                })
            })
            .collect();
        let mut v = json!({
            "id": n + 1,
            "type": p.kind,
            "title": ptitle,
            "description": pdesc,
            "datasource": datasource(),
            "gridPos": { "x": x, "y": y, "w": p.width, "h": p.height },
            "targets": targets,
            "fieldConfig": { "defaults": { "unit": p.unit }, "overrides": [] },
            "options": {},
        });
        if p.kind == "timeseries" {
            merge(
                &mut v,
                json!({
                    "fieldConfig": { "defaults": { "custom": { "lineWidth": 1, "fillOpacity": 0, "spanNulls": false } } },
                    "options": { "legend": { "displayMode": "list", "placement": "bottom", "showLegend": true },
                                 "tooltip": { "mode": "multi", "sort": "desc" } },
                }),
            );
        }
        merge(&mut v, p.extra);
        x += p.width;
        row_height = row_height.max(p.height);
        out.push(v);
    }
    Dashboard {
        file: format!("{uid}.json"),
        json: json!({
            "uid": uid,
            "title": title,
            "description": description,
            "tags": ["tierwatch"],
            "editable": true,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": { "from": "now-6h", "to": "now" },
            "timezone": "browser",
            "annotations": { "list": [] },
            "links": [{ "type": "dashboards", "tags": ["tierwatch"], "asDropdown": true, "title": "tierwatch",
                        "includeVars": true, "keepTime": true }],
            "templating": { "list": variables },
            "panels": out,
        }),
    }
}

fn variable(t: &Texts, id: &'static str, name: &str, query: &str, all: bool) -> Value {
    let (label, _) = t.dashboard(id);
    let mut v = json!({
        "type": "query",
        "name": name,
        "label": label,
        "datasource": datasource(),
        "definition": query,
        "query": { "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery" },
        "refresh": 2,
        "sort": 1,
        "multi": all,
        "includeAll": all,
        "current": {},
        "options": [],
    });
    if all {
        // All as a regex, so that nodes without a value (central has no province) match too.
        merge(&mut v, json!({ "allValue": ".*", "current": { "text": "All", "value": "$__all" } }));
    }
    v
}

/// The variables: datasource, province, tier, node; the WAN dashboard takes one node and one target.
fn vars(t: &Texts, wan: bool) -> Vec<Value> {
    let (ds_label, ds_desc) = t.dashboard("var.datasource");
    let mut v = vec![
        json!({ "type": "datasource", "name": "datasource", "label": ds_label, "description": ds_desc,
                "query": "prometheus", "current": {}, "hide": 0 }),
        variable(t, "var.province", "province", "label_values(tierwatch_node_info, province)", true),
        variable(t, "var.tier", "tier", r#"label_values(tierwatch_node_info{province=~"$province"}, tier)"#, true),
        variable(
            t,
            "var.node",
            "node",
            r#"label_values(tierwatch_node_info{province=~"$province",tier=~"$tier"}, node)"#,
            !wan,
        ),
    ];
    if wan {
        v.push(variable(
            t,
            "var.target",
            "target",
            r#"label_values(tierwatch_icmp_loss_ratio{node=~"$node"}, target)"#,
            false,
        ));
    }
    v
}

/// Renames a table column (a field) to a translated header.
fn rename(t: &Texts, pairs: &[(&str, &'static str)]) -> Value {
    let names: serde_json::Map<String, Value> =
        pairs.iter().map(|(field, id)| (field.to_string(), Value::from(t.dashboard(id).0))).collect();
    Value::Object(names)
}

fn unit_override(field: &str, unit: &str) -> Value {
    json!({ "matcher": { "id": "byName", "options": field }, "properties": [{ "id": "unit", "value": unit }] })
}

/// The node column links to that node's WAN link dashboard.
fn node_link(t: &Texts) -> Value {
    json!({ "matcher": { "id": "byName", "options": "node" }, "properties": [{ "id": "links", "value": [{
        "title": t.dashboard("link.wan").0,
        "url": "/d/tierwatch-wan/?var-node=${__data.fields.node}&${__url_time_range}",
    }]}]})
}

fn names(expr: &str) -> String {
    // Joins the display name (as written in topology.yaml) onto a per-node series.
    format!("{expr} * on(node) group_left(name) max by (node, name) (tierwatch_node_info)")
}

fn overview(t: &Texts) -> Vec<Panel> {
    let thresholds_bad_at = |n: f64| json!({ "mode": "absolute", "steps": [{ "color": "green", "value": null }, { "color": "red", "value": n }] });
    vec![
        panel("overview.up", "stat", 6, "none", vec![table(format!("sum(tierwatch_node_up{{{SEL}}})"))]),
        panel(
            "overview.down",
            "stat",
            6,
            "none",
            vec![table(format!(
                "count(tierwatch_node_up{{{SEL}}} == 0 and on(node) tierwatch_node_last_push_timestamp_seconds) or vector(0)"
            ))],
        )
        .with(json!({ "fieldConfig": { "defaults": { "thresholds": thresholds_bad_at(1.0) } },
                      "options": { "colorMode": "background" } })),
        panel("overview.incidents", "stat", 6, "none", vec![table("tierwatch_collector_incidents_open")])
            .with(json!({ "fieldConfig": { "defaults": { "thresholds": thresholds_bad_at(1.0) } },
                          "options": { "colorMode": "background" } })),
        panel(
            "overview.security_today",
            "stat",
            6,
            "none",
            vec![table(format!("sum(tierwatch_security_recent_events{{{SEL}}}) or vector(0)"))],
        ),
        panel(
            "overview.nodes",
            "table",
            24,
            "none",
            vec![
                table(names(&format!("tierwatch_node_up{{{SEL}}}"))),
                table(format!("max by (node) (tierwatch_icmp_loss_ratio{{{SEL}}})")),
                table(format!("max by (node) (tierwatch_icmp_rtt_median_seconds{{{SEL}}})")),
                table(format!("sum by (node) (tierwatch_node_alerts{{{SEL}}})")),
                table(format!(
                    "sum by (node) (tierwatch_security_recent_events{{{SEL}}}) or sum by (node) (0 * tierwatch_node_up{{{SEL}}})"
                )),
            ],
        )
        .tall(12)
        .with(json!({
            "options": { "showHeader": true, "sortBy": [{ "displayName": t.dashboard("col.up").0, "desc": false }] },
            "transformations": [
                { "id": "merge", "options": {} },
                { "id": "organize", "options": {
                    "excludeByName": { "Time": true, "province": true, "parent": true, "__name__": true },
                    "indexByName": { "name": 0, "node": 1, "tier": 2, "Value #A": 3, "Value #B": 4, "Value #C": 5,
                                     "Value #D": 6, "Value #E": 7 },
                    "renameByName": rename(t, &[("name", "col.name"), ("tier", "col.tier"), ("Value #A", "col.up"),
                        ("Value #B", "col.loss"), ("Value #C", "col.latency"), ("Value #D", "col.alerts"),
                        ("Value #E", "col.security")]),
                }},
            ],
            "fieldConfig": { "overrides": [
                node_link(t),
                unit_override("Value #B", "percentunit"),
                unit_override("Value #C", "s"),
                { "matcher": { "id": "byName", "options": "Value #A" }, "properties": [
                    { "id": "mappings", "value": [{ "type": "value", "options": {
                        "0": { "text": t.status_words[1], "color": "red" },
                        "1": { "text": t.status_words[0], "color": "green" } } }] },
                    { "id": "custom.cellOptions", "value": { "type": "color-background" } } ] },
            ]},
        })),
        panel(
            "overview.loss",
            "timeseries",
            12,
            "percentunit",
            vec![q(names(&format!("max by (node) (tierwatch_icmp_loss_ratio{{{SEL}}})")), "{{name}}")],
        ),
        panel(
            "overview.latency",
            "timeseries",
            12,
            "s",
            vec![q(names(&format!("max by (node) (tierwatch_icmp_rtt_median_seconds{{{SEL}}})")), "{{name}}")],
        ),
    ]
}

fn wan() -> Vec<Panel> {
    let by =
        |field: &str, props: Value| json!({ "matcher": { "id": "byName", "options": field }, "properties": props });
    // SmokePing's picture: min stacked with (max - min) draws the band; median and p90 are lines.
    let band = json!({ "fieldConfig": { "overrides": [
        by("min", json!([{ "id": "custom.stacking", "value": { "group": "band", "mode": "normal" } },
                         { "id": "custom.lineWidth", "value": 0 }, { "id": "custom.fillOpacity", "value": 0 }])),
        by("min–max", json!([{ "id": "custom.stacking", "value": { "group": "band", "mode": "normal" } },
                             { "id": "custom.lineWidth", "value": 0 }, { "id": "custom.fillOpacity", "value": 30 },
                             { "id": "color", "value": { "mode": "fixed", "fixedColor": "green" } }])),
        by("median", json!([{ "id": "custom.lineWidth", "value": 2 },
                            { "id": "color", "value": { "mode": "fixed", "fixedColor": "dark-green" } }])),
        by("p90", json!([{ "id": "custom.lineStyle", "value": { "fill": "dash", "dash": [6, 4] } }])),
    ]}});
    vec![
        panel(
            "wan.latency",
            "timeseries",
            24,
            "s",
            vec![
                q(format!("tierwatch_icmp_rtt_min_seconds{{{WAN}}}"), "min"),
                q(
                    format!(
                        "tierwatch_icmp_rtt_max_seconds{{{WAN}}} - on(node, target) tierwatch_icmp_rtt_min_seconds{{{WAN}}}"
                    ),
                    "min–max",
                ),
                q(format!("tierwatch_icmp_rtt_median_seconds{{{WAN}}}"), "median"),
                q(format!("tierwatch_icmp_rtt_p90_seconds{{{WAN}}}"), "p90"),
            ],
        )
        .tall(10)
        .with(band),
        panel("wan.loss", "timeseries", 8, "percentunit", vec![q(format!("tierwatch_icmp_loss_ratio{{{WAN}}}"), "loss")])
            .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1, "custom": { "fillOpacity": 20 } } } })),
        panel(
            "wan.jitter",
            "timeseries",
            8,
            "s",
            vec![
                q(format!("tierwatch_icmp_jitter_seconds{{{WAN}}}"), "jitter"),
                q(format!("tierwatch_icmp_rtt_stddev_seconds{{{WAN}}}"), "stddev"),
            ],
        ),
        panel(
            "wan.probe_success",
            "timeseries",
            8,
            "none",
            vec![q(format!(r#"tierwatch_probe_success{{probe="icmp",{WAN}}}"#), "success")],
        )
        .with(json!({ "fieldConfig": { "defaults": { "min": 0, "max": 1 } } })),
        panel(
            "wan.throughput",
            "timeseries",
            12,
            "bps",
            vec![
                q(r#"rate(tierwatch_node_network_receive_bytes_total{node=~"$node"}[$__rate_interval]) * 8"#, "{{interface}} in"),
                q(r#"rate(tierwatch_node_network_transmit_bytes_total{node=~"$node"}[$__rate_interval]) * 8"#, "{{interface}} out"),
            ],
        ),
        panel(
            "wan.errors",
            "timeseries",
            12,
            "pps",
            vec![
                q(r#"rate(tierwatch_node_network_receive_errors_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} rx errors"),
                q(r#"rate(tierwatch_node_network_transmit_errors_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} tx errors"),
                q(r#"rate(tierwatch_node_network_receive_drop_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} rx drops"),
                q(r#"rate(tierwatch_node_network_transmit_drop_total{node=~"$node"}[$__rate_interval])"#, "{{interface}} tx drops"),
            ],
        ),
    ]
}

fn services(t: &Texts) -> Vec<Panel> {
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

fn security(t: &Texts) -> Vec<Panel> {
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

fn fleet(t: &Texts) -> Vec<Panel> {
    vec![
        panel(
            "fleet.versions",
            "table",
            16,
            "none",
            vec![
                table(format!("max by (node, name, agent_version) (tierwatch_node_info{{{SEL}}})")),
                table(format!("time() - tierwatch_node_last_push_timestamp_seconds{{{SEL}}}")),
            ],
        )
        .tall(10)
        .with(json!({
            "transformations": [
                { "id": "merge", "options": {} },
                { "id": "organize", "options": {
                    "excludeByName": { "Time": true, "Value #A": true, "province": true, "parent": true, "tier": true },
                    "renameByName": rename(t, &[("name", "col.name"), ("agent_version", "col.version"),
                        ("Value #B", "col.last_push")]),
                }},
            ],
            "fieldConfig": { "overrides": [unit_override("Value #B", "s"), node_link(t)] },
        })),
        panel(
            "fleet.version_count",
            "piechart",
            8,
            "none",
            vec![table(format!(r#"count by (agent_version) (tierwatch_node_info{{{SEL},agent_version!=""}})"#))],
        )
        .tall(10)
        .with(json!({ "options": { "reduceOptions": { "calcs": ["lastNotNull"], "values": true },
                                   "legend": { "displayMode": "table", "placement": "right", "values": ["value"] } },
                      "fieldConfig": { "defaults": { "displayName": "${__field.labels.agent_version}" } } })),
        panel(
            "fleet.spool_batches",
            "timeseries",
            12,
            "none",
            vec![q(names(&format!("tierwatch_agent_spool_batches{{{SEL}}}")), "{{name}}")],
        ),
        panel(
            "fleet.spool_age",
            "timeseries",
            12,
            "s",
            vec![q(names(&format!("tierwatch_agent_spool_oldest_unsent_age_seconds{{{SEL}}}")), "{{name}}")],
        ),
        panel(
            "fleet.drops",
            "timeseries",
            12,
            "none",
            vec![q(
                format!("sum by (node, reason) (increase(tierwatch_agent_dropped_batches_total{{{SEL}}}[1h]))"),
                "{{node}} {{reason}}",
            )],
        ),
        panel(
            "fleet.ingest",
            "timeseries",
            12,
            "reqps",
            vec![q("sum by (result) (rate(tierwatch_collector_batches_total[$__rate_interval]))", "{{result}}")],
        ),
        panel(
            "fleet.rejected",
            "timeseries",
            8,
            "reqps",
            vec![
                q(
                    r#"sum(rate(tierwatch_collector_batches_total{result!~"accepted|duplicate"}[$__rate_interval]))"#,
                    "pushes",
                ),
                q(r#"sum(rate(tierwatch_collector_samples_total{result="rejected"}[$__rate_interval]))"#, "samples"),
            ],
        ),
        panel(
            "fleet.notify_queue",
            "timeseries",
            8,
            "none",
            vec![q("sum by (receiver) (tierwatch_collector_notifications_queued)", "{{receiver}}")],
        ),
        panel(
            "fleet.notifications",
            "timeseries",
            8,
            "reqps",
            vec![q(
                "sum by (receiver, result) (rate(tierwatch_collector_notifications_total[$__rate_interval]))",
                "{{receiver}} {{result}}",
            )],
        ),
        panel(
            "fleet.handshakes",
            "timeseries",
            8,
            "reqps",
            vec![q("rate(tierwatch_collector_tls_handshake_failures_total[$__rate_interval])", "handshake failures")],
        ),
    ]
}

/// Writes every dashboard of `lang` into `dir` as pretty JSON; returns the files.
pub fn write(lang: Language, dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for d in all(lang) {
        let path = dir.join(&d.file);
        let mut text = serde_json::to_string_pretty(&d.json).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(&path, text)?;
        files.push(path);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_dashboards_are_this_generator_s_output() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../dashboards"));
        for lang in Language::ALL {
            for d in all(lang) {
                let path = root.join(lang.code()).join(&d.file);
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                let mut want = serde_json::to_string_pretty(&d.json).unwrap();
                want.push('\n');
                assert!(
                    committed == want,
                    "{} is not current: run `cargo run -p tierwatch-dashboards -- --language {} --out dashboards/{}`",
                    path.display(),
                    lang.code(),
                    lang.code()
                );
            }
        }
    }

    #[test]
    fn panels_have_titles_descriptions_the_datasource_variable_and_no_overlap() {
        for lang in Language::ALL {
            for d in all(lang) {
                let j = &d.json;
                assert_eq!(j["templating"]["list"][0]["name"], "datasource");
                let mut cells = std::collections::HashSet::new();
                for p in j["panels"].as_array().unwrap() {
                    let title = p["title"].as_str().unwrap();
                    assert!(!title.contains('.'), "{}: untranslated panel {title}", d.file);
                    assert!(!p["description"].as_str().unwrap().is_empty(), "{}: {title} has no description", d.file);
                    assert_eq!(p["datasource"]["uid"], "${datasource}");
                    for t in p["targets"].as_array().unwrap() {
                        assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
                    }
                    let g = &p["gridPos"];
                    let (x, y, w, h) = (
                        g["x"].as_u64().unwrap(),
                        g["y"].as_u64().unwrap(),
                        g["w"].as_u64().unwrap(),
                        g["h"].as_u64().unwrap(),
                    );
                    assert!(x + w <= 24, "{title}");
                    for cx in x..x + w {
                        for cy in y..y + h {
                            assert!(cells.insert((cx, cy)), "{}: {title} overlaps another panel", d.file);
                        }
                    }
                }
            }
        }
    }
}
