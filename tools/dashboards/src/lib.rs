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

mod panels;
pub mod texts;

use panels::{fleet, overview, security, services, wan};

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
