//! The dashboards and the status page against the running lab (root only):
//! a real Prometheus (Debian) scrapes the collector with the shipped
//! `deploy/prometheus/prometheus.yml` and rules; every query of every panel
//! of every dashboard must parse (`promtool`), run and return data, and use
//! only metrics the collector exports. Then one commune is cut and headless
//! Chromium renders the status page, which must show it down with its alert.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use tierwatch_tests::lab::receivers::Hooks;
use tierwatch_tests::lab::system::SystemSpec;
use tierwatch_tests::lab::{addrs, Lab, LabSpec};
use tierwatch_tests::prometheus::Prometheus;
use tierwatch_tests::{require_lab, wait_for};

/// What Grafana puts in place of the variables: every province, tier and
/// node; the WAN dashboard's one node and target.
fn substitute(expr: &str, wan: bool) -> String {
    let (node, target) = if wan { ("c1", "provincial-gateway") } else { (".*", ".*") };
    expr.replace("$__rate_interval", "1m")
        .replace("$province", ".*")
        .replace("$tier", ".*")
        .replace("$node", node)
        .replace("$target", target)
}

const AGGREGATIONS: &[&str] =
    &["sum", "min", "max", "avg", "count", "topk", "bottomk", "count_values", "quantile", "stddev", "stdvar", "group"];
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];
const GROUPING: &[&str] = &["by", "without", "on", "ignoring", "group_left", "group_right"];

/// The metric names a PromQL expression selects (not functions, keywords,
/// labels, strings or durations).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let c: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    let skip_to = |i: usize, open: char, close: char| {
        let mut depth = 0;
        let mut j = i;
        while j < c.len() {
            if c[j] == '"' {
                j += 1;
                while j < c.len() && c[j] != '"' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
            } else if c[j] == open {
                depth += 1;
            } else if c[j] == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '{' {
            i = skip_to(i, '{', '}');
        } else if ch == '[' {
            i = skip_to(i, '[', ']');
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let mut k = i;
            while k < c.len() && c[k] == ' ' {
                k += 1;
            }
            let next = c.get(k).copied();
            let lower = word.to_ascii_lowercase();
            if GROUPING.contains(&lower.as_str()) {
                if next == Some('(') {
                    i = skip_to(k, '(', ')');
                }
            } else if AGGREGATIONS.contains(&lower.as_str()) || KEYWORDS.contains(&lower.as_str()) || next == Some('(')
            {
            } else {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"sum by (node) (increase(tierwatch_a_total{node=~"x{1}"}[1m])) or on(node) group_left(name) max by (node, name) (tierwatch_b) * 8 - time() / 86400 == 0 and tierwatch_c"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["tierwatch_a_total", "tierwatch_b", "tierwatch_c"]);
}

/// Every (dashboard file, panel title, expression) of one language.
fn dashboard_queries(lang: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let dir = tierwatch_tests::workspace().join("dashboards").join(lang);
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "json")) {
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f)?)?;
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let title = p["title"].as_str().unwrap_or_default().to_string();
                out.push((name.clone(), title, t["expr"].as_str().unwrap_or_default().to_string()));
            }
        }
    }
    anyhow::ensure!(out.len() > 30, "only {} queries in {}", out.len(), dir.display());
    Ok(out)
}

/// Parses every expression with promtool (as recording rules).
fn promtool_parses(dir: &Path, exprs: &[String]) -> anyhow::Result<()> {
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: tierwatch_dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(e)?
        ));
    }
    let file = dir.join("dashboard-queries.rules.yml");
    std::fs::write(&file, rules)?;
    let out = std::process::Command::new("promtool").args(["check", "rules"]).arg(&file).output()?;
    if !out.status.success() {
        bail!(
            "promtool rejects a dashboard query:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// The Chromium binary, or why there is none.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|b| tierwatch_tests::have(b))
}

#[test]
fn every_panel_has_data_in_the_lab_and_the_status_page_shows_a_down_commune() -> anyhow::Result<()> {
    require_lab!("every_panel_has_data_in_the_lab_and_the_status_page_shows_a_down_commune");
    tierwatch_tests::require_tool!("nmap");
    let mut lab = Lab::build(LabSpec::communes(2).with_lan_hosts(1))?;
    let dir = lab.dir.path().to_path_buf();
    let central = lab.central.ns.clone();
    let nginx = lab.start_nginx()?;
    let _dns = lab.start_dnsmasq(&[("portal.lab", addrs::PORTAL)])?;
    let hooks = Hooks::start(&central, "127.0.0.1:9500".parse()?, &dir)?;
    let ca = nginx.pki.ca.display().to_string();
    let portal = addrs::PORTAL;
    let spec = SystemSpec {
        extra_targets: format!(
            "  - {{name: portal-https, probe: http, url: \"https://portal.lab/\", host: \"{portal}\", ca: \"{ca}\", body_contains: [\"Dịch vụ công\"]}}
  - {{name: portal-tls, probe: tls, host: \"{portal}\", port: 443, server_name: portal.lab, ca: \"{ca}\"}}
  - {{name: dns-portal, probe: dns, host: \"{}\", query: portal.lab, expect: [\"{portal}\"]}}
",
            addrs::DNS
        ),
        probe_timeout: Duration::from_millis(900),
        collector_extra: format!(
            "language: vi\nutc_offset: \"+07:00\"\nrules: {}\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{}/hook\n",
            tierwatch_tests::workspace().join("config/rules.yaml").display(),
            hooks.addr
        ),
        // The communes watch their LANs: the LAN host's ARP is a (low) security
        // event, the new-station digest, sent 2 s after the first station.
        agent_extra: format!(
            "sensors:\n  lan:\n    interface: lan0\n    arp: {{new_station_digest: 2s}}\n    dhcp: {{servers: [{}]}}\n",
            addrs::commune_lan(1)
        ),
        ..SystemSpec::default()
    };
    let tw = lab.start_tierwatch(&spec)?;

    // The shipped Prometheus example, pointed at the lab's collector and scraping fast.
    let shipped = tierwatch_tests::workspace().join("deploy/prometheus");
    let config = std::fs::read_to_string(shipped.join("prometheus.yml"))?;
    for want in
        ["collector.angiang.gov.vn:9400", "scrape_interval: 15s", "evaluation_interval: 15s", "scrape_timeout: 10s"]
    {
        anyhow::ensure!(config.contains(want), "deploy/prometheus/prometheus.yml changed ({want}): update this test");
    }
    let prom_dir = dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir)?;
    std::fs::copy(shipped.join("tierwatch-collector.rules.yml"), prom_dir.join("tierwatch-collector.rules.yml"))?;
    let config = config
        .replace("collector.angiang.gov.vn:9400", &format!("{}:9400", addrs::CENTRAL))
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
        .replace("scrape_timeout: 10s", "scrape_timeout: 1s");
    let prom = Prometheus::start(&prom_dir, Some(&central), "127.0.0.1:9090".parse()?, &config, false)?;

    // ARP from the LAN host to its gateway: the commune's sensor reports new stations.
    let gateway = addrs::commune_lan(1).to_string();
    lab.lan_hosts[0].ns.exec("ping", &["-c", "3", "-i", "0.2", &gateway])?;
    // The LAN host scans its gateway: an event with a source, for the
    // top-sources panel (the new-station digest names none).
    lab.lan_hosts[0].ns.exec("nmap", &["-sT", "-Pn", "-n", "-T4", "-p", "1-40", &gateway])?;
    // Two node_health rounds (15 s) and a minute of scrapes for the rate() windows.
    std::thread::sleep(Duration::from_secs(40));

    // Every query parses, in both languages the same queries.
    let en = dashboard_queries("en")?;
    let vi = dashboard_queries("vi")?;
    let exprs = |q: &[(String, String, String)]| q.iter().map(|(f, _, e)| (f.clone(), e.clone())).collect::<Vec<_>>();
    assert_eq!(exprs(&en), exprs(&vi), "the vi dashboards query what the en ones do");
    let substituted: Vec<String> = en.iter().map(|(f, _, e)| substitute(e, f.contains("wan"))).collect();
    promtool_parses(&dir, &substituted)?;

    // Every metric a query names is one the collector exports.
    let (_, exposition) = tw.get("/metrics")?;
    let exported: BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for (file, title, expr) in &en {
        for m in metric_names(expr) {
            assert!(exported.contains(m.as_str()), "{file} / {title}: {m} is not exported by the collector ({expr})");
        }
    }

    // Every query returns data from the healthy lab (each retried for a while:
    // the first security event, the second node_health round).
    let mut empty = Vec::new();
    for ((file, title, _), q) in en.iter().zip(&substituted) {
        let got = wait_for(Duration::from_secs(30), &format!("{file} / {title}: data for {q}"), || {
            let now = tierwatch_tests::now_ms() as f64 / 1000.0;
            let data = prom.query(q, now).ok()?;
            data["result"].as_array().is_some_and(|r| !r.is_empty()).then_some(())
        });
        if let Err(e) = got {
            empty.push(e.to_string());
        }
    }
    assert!(empty.is_empty(), "panels without data in a healthy lab:\n{}", empty.join("\n"));
    eprintln!("{} dashboard queries: parsed, metrics exported, data returned", en.len());

    // The shipped rules about the collector load and evaluate without error.
    let shipped_rules = std::fs::read_to_string(shipped.join("tierwatch-collector.rules.yml"))?;
    let count = shipped_rules.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    wait_for(Duration::from_secs(20), "Prometheus to evaluate the shipped rules", || {
        let (_, body) = prom.get("/api/v1/rules").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let rules: Vec<&serde_json::Value> =
            v["data"]["groups"].as_array()?.iter().flat_map(|g| g["rules"].as_array().into_iter().flatten()).collect();
        (rules.len() == count && rules.iter().all(|r| r["health"] == "ok")).then_some(())
    })?;
    let firing = prom.query("ALERTS{alertstate=\"firing\"}", tierwatch_tests::now_ms() as f64 / 1000.0)?;
    assert_eq!(firing["result"].as_array().map(Vec::len), Some(0), "a healthy lab fires collector rules: {firing}");

    // One commune down: the status page shows it and its alert.
    lab.link_mut("c2")?.set_up(false)?;
    wait_for(Duration::from_secs(60), "c2's incident at the collector", || {
        let v = tw.alerts().ok()?;
        v["incidents"].as_array()?.iter().any(|i| i["key"] == "c2/unreachable").then_some(())
    })?;
    wait_for(Duration::from_secs(120), "c2 reported down", || {
        let v = tw.nodes().ok()?;
        v["nodes"].as_array()?.iter().any(|n| n["id"] == "c2" && n["status"] == "down").then_some(())
    })?;
    let (code, html) = tw.get("/")?;
    assert_eq!(code, 200);
    assert!(html.contains("<div class=\"node down\" data-node=\"c2\"><b>Xã Thử Nghiệm 2</b>"), "{html}");
    let alert = html.split("<div class=\"alert ").nth(1).unwrap_or_default();
    assert!(alert.contains("c2/unreachable") && alert.contains("c2"), "the alert names the commune: {html}");
    assert!(html.contains("<div class=\"node up\" data-node=\"c1\">"), "{html}");

    let Some(browser) = chromium() else {
        anyhow::ensure!(std::env::var("CI").is_err(), "chromium must be installed in CI (scripts/test.sh installs it)");
        eprintln!("SKIPPED the screenshot: chromium is not installed (scripts/test.sh installs it)");
        return Ok(());
    };
    let url = format!("http://{}:9400/", addrs::CENTRAL);
    let profile = dir.join("chromium-profile");
    let shot = dir.join("status-page.png");
    let common = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let profile_arg = format!("--user-data-dir={}", profile.display());
    let shot_arg = format!("--screenshot={}", shot.display());
    let mut args: Vec<&str> = common.to_vec();
    args.extend([profile_arg.as_str(), shot_arg.as_str(), "--window-size=420,1100", url.as_str()]);
    central.exec(browser, &args).context("chromium --screenshot")?;
    let png = std::fs::read(&shot).with_context(|| format!("no screenshot at {}", shot.display()))?;
    anyhow::ensure!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    // What Chromium rendered (its DOM after layout) has the down commune and its alert.
    let mut args: Vec<&str> = common.to_vec();
    args.extend([profile_arg.as_str(), "--dump-dom", url.as_str()]);
    let dom = central.exec(browser, &args).context("chromium --dump-dom")?;
    assert!(dom.contains("data-node=\"c2\"") && dom.contains("node down"), "{dom}");
    assert!(dom.contains("c2/unreachable"), "{dom}");
    if let Ok(out) = std::env::var("TW_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, &out)?;
        eprintln!("status page screenshot written to {out}");
    }
    eprintln!("status page screenshot: {} bytes at {}", png.len(), shot.display());
    lab.link_mut("c2")?.set_up(true)?;
    Ok(())
}
