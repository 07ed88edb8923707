//! Detection latency in the lab (root only): from cutting a commune's WAN
//! link to the page arriving at a webhook, for tierwatch and for the stack
//! people run today (blackbox_exporter ICMP probe scraped by Prometheus, an
//! alerting rule, Alertmanager), both probing the same WAN end from the
//! province every 5 s with a 1 s timeout, side by side on the same lab.
//!
//! `tw-alert-bench detect [ROUNDS] [QUIET_SECONDS]`: ROUNDS cuts (default
//! 20) with tierwatch sending 5 requests 1 s apart per 5 s round, then
//! ROUNDS/2 with 1 request per round (blackbox_exporter's packet rate);
//! then QUIET_SECONDS (default 600) over a healthy link with 40 ± 30 ms of
//! jitter each way, counting pages (there must be none).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::Rng;
use tierwatch_tests::lab::impair::Impairment;
use tierwatch_tests::lab::netns::Netns;
use tierwatch_tests::lab::receivers::{Alertmanager, Hooks};
use tierwatch_tests::lab::system::{SystemSpec, Tierwatch};
use tierwatch_tests::lab::{addrs, Lab, LabSpec};
use tierwatch_tests::{now_ms, wait_for, Proc};

const INTERVAL: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("detect") => {
            let rounds = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
            let quiet = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(600);
            detect(rounds, quiet)
        }
        _ => bail!("usage: tw-alert-bench detect [ROUNDS] [QUIET_SECONDS]"),
    }
}

/// blackbox_exporter + Prometheus + Alertmanager in `ns`, paging `hook`.
struct Reference {
    _procs: Vec<Proc>,
    _am: Alertmanager,
}

fn reference(ns: &Netns, dir: &Path, target: &str, hook: &str) -> anyhow::Result<Reference> {
    let dir = dir.join("reference");
    std::fs::create_dir_all(dir.join("tsdb"))?;
    std::fs::write(
        dir.join("blackbox.yml"),
        "modules:\n  icmp:\n    prober: icmp\n    timeout: 1s\n    icmp:\n      preferred_ip_protocol: ip4\n",
    )?;
    std::fs::write(
        dir.join("rules.yml"),
        "groups:\n  - name: wan\n    rules:\n      - alert: WanLinkDown\n        expr: probe_success == 0\n        labels: {severity: critical}\n",
    )?;
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 5s, scrape_timeout: 2s, evaluation_interval: 5s}}\nrule_files: [rules.yml]\nalerting:\n  alertmanagers: [{{static_configs: [{{targets: ['127.0.0.1:9093']}}]}}]\nscrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n    params: {{module: [icmp]}}\n    static_configs: [{{targets: ['{target}'], labels: {{commune: c1}}}}]\n    relabel_configs:\n      - {{source_labels: [__address__], target_label: __param_target}}\n      - {{source_labels: [__param_target], target_label: instance}}\n      - {{target_label: __address__, replacement: '127.0.0.1:9115'}}\n"
        ),
    )?;
    let am_config = format!(
        "route:\n  receiver: hook\n  group_by: [alertname, instance]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs: [{{url: 'http://{hook}/am', send_resolved: true}}]\n"
    );
    let am = Alertmanager::start_with(ns, "127.0.0.1:9093".parse()?, &dir, &am_config)?
        .context("prometheus-alertmanager is not installed")?;
    let path = |f: &str| dir.join(f).display().to_string();
    let mut bb = ns.command(
        "prometheus-blackbox-exporter",
        &[&format!("--config.file={}", path("blackbox.yml")), "--web.listen-address=127.0.0.1:9115"],
    );
    bb.stdout(Stdio::null());
    let bb = Proc::spawn_command("blackbox", &mut bb, &dir.join("blackbox.log"))?;
    let mut prom = ns.command(
        "prometheus",
        &[
            &format!("--config.file={}", path("prometheus.yml")),
            &format!("--storage.tsdb.path={}", path("tsdb")),
            "--web.listen-address=127.0.0.1:9090",
        ],
    );
    prom.stdout(Stdio::null());
    let prom = Proc::spawn_command("prometheus", &mut prom, &dir.join("prometheus.log"))?;
    Ok(Reference { _procs: vec![bb, prom], _am: am })
}

/// Arrival of the first tierwatch page (`opened`) about c1 after `t0`.
fn tierwatch_page(h: &Hooks, t0: i64) -> Option<i64> {
    h.received().iter().find(|(at, v)| *at >= t0 && v["event"] == "opened").map(|(at, _)| *at)
}

fn tierwatch_resolved(h: &Hooks, t0: i64) -> bool {
    h.received().iter().any(|(at, v)| *at >= t0 && v["event"] == "resolved")
}

/// Arrival of the first Alertmanager notification with `status` after `t0`.
fn am_notification(h: &Hooks, t0: i64, status: &str) -> Option<i64> {
    h.received().iter().find(|(at, v)| *at >= t0 && v["status"] == status).map(|(at, _)| *at)
}

fn stats(v: &[f64]) -> (f64, f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| s[((s.len() - 1) as f64 * p).round() as usize];
    (q(0.5), s[0], q(0.9), s[s.len() - 1])
}

fn start_tierwatch(lab: &Lab, dir: &Path, hook: &str, count: u32) -> anyhow::Result<Tierwatch> {
    let spec = SystemSpec {
        push_interval: Duration::from_secs(10),
        probe_interval: INTERVAL,
        probe_timeout: Duration::from_secs(1),
        icmp_count: count,
        icmp_spacing: (count > 1).then(|| Duration::from_secs(1)),
        only_nodes: Some(vec!["province".into()]),
        collector_extra: format!(
            "rules: {}\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{hook}/tierwatch\n",
            dir.join("rules.yaml").display()
        ),
        ..SystemSpec::default()
    };
    lab.start_tierwatch(&spec)
}

/// Cuts c1's link `rounds` times; returns (tierwatch, reference) seconds per cut.
fn cuts(lab: &mut Lab, tw_hooks: &Hooks, ref_hooks: &Hooks, rounds: usize) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for r in 0..rounds {
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..INTERVAL.as_millis() as u64)));
        let t0 = now_ms();
        lab.link_mut("c1")?.set_up(false)?;
        let (tw, rf) = wait_for(Duration::from_secs(60), "both pages", || {
            Some((tierwatch_page(tw_hooks, t0)?, am_notification(ref_hooks, t0, "firing")?))
        })?;
        let t1 = now_ms();
        lab.link_mut("c1")?.set_up(true)?;
        wait_for(Duration::from_secs(60), "both resolves", || {
            (tierwatch_resolved(tw_hooks, t1) && am_notification(ref_hooks, t1, "resolved").is_some()).then_some(())
        })?;
        let row = ((tw - t0) as f64 / 1000.0, (rf - t0) as f64 / 1000.0);
        eprintln!("cut {:>2}: tierwatch {:>6.2} s, reference {:>6.2} s", r + 1, row.0, row.1);
        out.push(row);
        // A whole good round, so the next cut starts from a link known up.
        std::thread::sleep(INTERVAL + Duration::from_secs(1));
    }
    Ok(out)
}

fn detect(rounds: usize, quiet: u64) -> anyhow::Result<()> {
    let mut lab = Lab::build(LabSpec::communes(1))?;
    let dir = lab.dir.path().to_path_buf();
    let (central, province) = (lab.central.ns.clone(), lab.province.ns.clone());
    std::fs::create_dir_all(dir.join("ref"))?;
    std::fs::create_dir_all(dir.join("tw"))?;
    let tw_hooks = Hooks::start(&central, "127.0.0.1:9500".parse()?, &dir.join("tw"))?;
    let ref_hooks = Hooks::start(&province, "127.0.0.1:9501".parse()?, &dir.join("ref"))?;
    let target = addrs::commune_wan(1).to_string();
    let _reference = reference(&province, &dir, &target, "127.0.0.1:9501")?;
    // The shipped rules; flap detection off, as every cut here is deliberate.
    let rules = std::fs::read_to_string(tierwatch_tests::workspace().join("config/rules.yaml"))?;
    anyhow::ensure!(rules.contains("  opens: 3\n"), "config/rules.yaml changed: update this bench");
    std::fs::write(dir.join("rules.yaml"), rules.replace("  opens: 3\n", "  opens: 0\n"))?;
    // Let Prometheus scrape a few healthy rounds first.
    std::thread::sleep(Duration::from_secs(12));

    let mut table = Vec::new();
    for (count, n) in [(5, rounds), (1, rounds.div_ceil(2))] {
        let tw = start_tierwatch(&lab, &dir, "127.0.0.1:9500", count)?;
        std::thread::sleep(INTERVAL * 2);
        let got = cuts(&mut lab, &tw_hooks, &ref_hooks, n)?;
        tw.stop()?;
        table.push((count, got));
    }
    println!(
        "\nDetection latency, WAN link cut to webhook, probe interval 5 s, timeout 1 s ({rounds} and {} cuts; the reference ran through all {}):",
        rounds.div_ceil(2),
        rounds + rounds.div_ceil(2)
    );
    println!("{:<52} {:>8} {:>8} {:>8} {:>8} {:>14}", "stack", "median", "min", "p90", "max", "median ratio");
    let all_ref: Vec<f64> = table.iter().flat_map(|(_, g)| g.iter().map(|r| r.1)).collect();
    let (ref_med, ..) = stats(&all_ref);
    for (count, got) in &table {
        let tw: Vec<f64> = got.iter().map(|r| r.0).collect();
        let (m, lo, p90, hi) = stats(&tw);
        let name = format!("tierwatch, {count} request(s) per round");
        println!("{name:<52} {m:>7.2}s {lo:>7.2}s {p90:>7.2}s {hi:>7.2}s {:>14.2}", m / ref_med);
    }
    let (m, lo, p90, hi) = stats(&all_ref);
    println!(
        "{:<52} {m:>7.2}s {lo:>7.2}s {p90:>7.2}s {hi:>7.2}s {:>14.2}",
        "blackbox_exporter + Prometheus + Alertmanager", 1.0
    );

    if quiet > 0 {
        // Healthy but jittery: nothing may page.
        lab.link_mut("c1")?.impair_both(
            Impairment::delay(Duration::from_millis(40), Duration::from_millis(30)),
            Impairment::delay(Duration::from_millis(40), Duration::from_millis(30)),
        )?;
        let tw = start_tierwatch(&lab, &dir, "127.0.0.1:9500", 5)?;
        let (before_tw, before_ref) = (tw_hooks.received().len(), ref_hooks.received().len());
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(quiet));
        let early = tw.agents[0].log_text().matches("reported before the round ends").count();
        let rtt = tw.metric("tierwatch_icmp_rtt_median_seconds", &[("node", "province"), ("target", "c1")])?;
        let jitter = tw.metric("tierwatch_icmp_jitter_seconds", &[("node", "province"), ("target", "c1")])?;
        tw.stop()?;
        println!(
            "\n{:.0} s over a healthy link with 40 ± 30 ms jitter each way (last round: median RTT {:.1} ms, jitter {:.1} ms): tierwatch pages {}, early failure reports {}; reference pages {}",
            started.elapsed().as_secs_f64(),
            rtt.unwrap_or(f64::NAN) * 1000.0,
            jitter.unwrap_or(f64::NAN) * 1000.0,
            tw_hooks.received().len() - before_tw,
            early,
            ref_hooks.received().len() - before_ref,
        );
    }
    Ok(())
}
