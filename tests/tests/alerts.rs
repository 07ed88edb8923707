//! Alerts in the lab, end to end: real agents in network namespaces, the
//! real collector with the shipped `config/rules.yaml`, pages to a webhook
//! receiver and to a real Alertmanager (checked through its
//! `/api/v2/alerts`). Links are cut in the middle like a provider outage.
//! Root only: when not root the test says why and skips; in CI it runs.

use anyhow::Context;
use std::time::{Duration, Instant};

use tierwatch_tests::lab::receivers::{Alertmanager, Hooks};
use tierwatch_tests::lab::system::SystemSpec;
use tierwatch_tests::lab::{Lab, LabSpec};
use tierwatch_tests::{require_lab, wait_for};

const TOKEN: &str = "lab-api-token-0123456789";

/// The shipped rules, with a flapping quiet period short enough for a test,
/// and heartbeats judged over 6 of the lab's 0.5 s pushes (3 s) instead of 3,
/// so a busy CI machine's scheduling stall is not an outage.
fn lab_rules() -> anyhow::Result<String> {
    let shipped = std::fs::read_to_string(tierwatch_tests::workspace().join("config/rules.yaml"))?;
    for want in ["  quiet: 5m\n", "heartbeat: {missed: 3, link: down}", "heartbeat: {missed: 3, link: up}"] {
        anyhow::ensure!(shipped.contains(want), "config/rules.yaml changed ({want:?}): update this test");
    }
    Ok(shipped.replace("  quiet: 5m\n", "  quiet: 15s\n").replace("heartbeat: {missed: 3,", "heartbeat: {missed: 6,"))
}

/// `collector.yaml`'s lines for the rules file `rules` and the receivers:
/// the webhook `hooks`, and Alertmanager `am` if given.
fn notify_yaml(rules: &std::path::Path, hooks: &Hooks, am: Option<&Alertmanager>) -> String {
    let mut y = format!(
        "rules: {}\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{}/hook\n",
        rules.display(),
        hooks.addr
    );
    if let Some(am) = am {
        y.push_str(&format!("  - name: am\n    alertmanager:\n      url: http://{}\n", am.addr));
    }
    y
}

/// The events received since `from` (an index into the receiver's list).
fn since(hooks: &Hooks, from: usize) -> Vec<String> {
    hooks.events().into_iter().skip(from).collect()
}

fn pages_since(hooks: &Hooks, from: usize) -> Vec<String> {
    since(hooks, from).iter().filter_map(|e| e.strip_prefix("opened ").map(str::to_string)).collect()
}

fn wait_event(hooks: &Hooks, from: usize, event: &str, within: Duration) -> anyhow::Result<()> {
    wait_for(within, &format!("webhook {event:?}"), || since(hooks, from).iter().any(|e| e == event).then_some(()))
        .map_err(|e| anyhow::anyhow!("{e}; received since: {:?}", since(hooks, from)))
}

/// Waits until nothing is open at the collector nor active in Alertmanager.
fn nothing_open(tw: &tierwatch_tests::lab::system::Tierwatch, am: &Alertmanager) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(20), "no open incident at the collector", || {
        let v = tw.alerts().ok()?;
        v["incidents"].as_array()?.is_empty().then_some(())
    })?;
    wait_for(Duration::from_secs(20), "no alert left in Alertmanager", || am.incidents().ok()?.is_empty().then_some(()))
        .map(|_| ())
}

#[test]
fn pages_name_the_root_cause_once_and_resolve_in_the_lab() -> anyhow::Result<()> {
    require_lab!("pages_name_the_root_cause_once_and_resolve_in_the_lab");
    let mut lab = Lab::build(LabSpec::communes(3).beside_others())?;
    let central = lab.central.ns.clone();
    let dir = lab.dir.path().to_path_buf();
    let hooks = Hooks::start(&central, "127.0.0.1:9500".parse()?, &dir)?;
    let Some(am) = Alertmanager::start(&central, "127.0.0.1:9093".parse()?, &dir)? else { return Ok(()) };
    std::fs::write(dir.join("rules.yaml"), lab_rules()?)?;
    std::fs::write(dir.join("api.token"), TOKEN)?;
    let spec = SystemSpec {
        collector_extra: format!(
            "rules: {rules}\napi:\n  token_file: {token}\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{hooks}/hook\n  - name: am\n    alertmanager:\n      url: http://{am}\n",
            rules = dir.join("rules.yaml").display(),
            token = dir.join("api.token").display(),
            hooks = hooks.addr,
            am = am.addr,
        ),
        ..SystemSpec::default()
    };
    let mut tw = lab.start_tierwatch(&spec)?;
    let log = |tw: &tierwatch_tests::lab::system::Tierwatch| tw.collector.log_text();

    // A healthy province pages nothing (the central node runs no agent: unknown, not down).
    std::thread::sleep(Duration::from_secs(8));
    anyhow::ensure!(hooks.events().is_empty(), "pages while healthy: {:?}", hooks.events());

    // 1. One commune's link: one page naming that commune.
    let mark = hooks.events().len();
    let cut = Instant::now();
    lab.link_mut("c1")?.set_up(false)?;
    wait_event(&hooks, mark, "opened c1/unreachable", Duration::from_secs(20))?;
    eprintln!("c1 cut: paged after {:?}", cut.elapsed());
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(pages_since(&hooks, mark), ["c1/unreachable"], "{:?}", since(&hooks, mark));
    let page = hooks.received()[mark].1.clone();
    assert_eq!(page["incident"]["node_name"], "Xã Thử Nghiệm 1");
    assert!(page["incident"]["summary"].as_str().unwrap_or("").contains("c1"), "{page}");
    wait_for(Duration::from_secs(10), "c1 in Alertmanager", || {
        (am.incidents().ok()? == ["c1/unreachable"]).then_some(())
    })?;
    lab.link_mut("c1")?.set_up(true)?;
    wait_event(&hooks, mark, "resolved c1/unreachable", Duration::from_secs(30))?;
    nothing_open(&tw, &am)?;

    // 2. The provincial uplink: one page naming the province and every commune
    // behind it; a collector restart during the outage pages nothing again.
    let mark = hooks.events().len();
    let cut = Instant::now();
    lab.link_mut("uplink")?.set_up(false)?;
    wait_event(&hooks, mark, "opened province/unreachable", Duration::from_secs(20))?;
    eprintln!("uplink cut: paged after {:?}", cut.elapsed());
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(pages_since(&hooks, mark), ["province/unreachable"], "{:?}", since(&hooks, mark));
    let open = tw.alerts()?;
    let affected: Vec<&str> = open["incidents"][0]["affected"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x[0].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(affected, ["c1", "c2", "c3"], "{open}");
    assert_eq!(am.incidents()?, ["province/unreachable"]);
    tw.restart_collector()?;
    // The engine's timers (the firing alerts' starts) came back with it.
    let restarted = log(&tw);
    anyhow::ensure!(restarted.contains("alert: timers from before the restart"), "timers not restored: {restarted}");
    // Long enough for the restarted collector to judge every node again by
    // heartbeat (6 x its default 10 s interval: nodes announce theirs only
    // when they push).
    std::thread::sleep(Duration::from_secs(65));
    assert_eq!(
        pages_since(&hooks, mark),
        ["province/unreachable"],
        "paged again after the restart: {:?}",
        since(&hooks, mark)
    );
    let open = tw.alerts()?;
    assert_eq!(open["incidents"].as_array().map(Vec::len), Some(1), "{open}");
    assert!(
        open["incidents"][0]["alerts"].as_array().is_some_and(|a| a.iter().any(|x| x["rule"] == "node_down")),
        "re-detected after the restart, not only restored: {open}"
    );
    lab.link_mut("uplink")?.set_up(true)?;
    wait_event(&hooks, mark, "resolved province/unreachable", Duration::from_secs(40))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", log(&tw)))?;
    nothing_open(&tw, &am)?;
    let resolves = since(&hooks, mark).iter().filter(|e| e.starts_with("resolved ")).count();
    assert_eq!(resolves, 1, "{:?}", since(&hooks, mark));

    // 3. A flapping link: two pages, then one flapping page, then its resolve.
    let mark = hooks.events().len();
    for _ in 0..5 {
        lab.link_mut("c2")?.set_up(false)?;
        std::thread::sleep(Duration::from_secs(4));
        lab.link_mut("c2")?.set_up(true)?;
        std::thread::sleep(Duration::from_secs(8));
    }
    wait_event(&hooks, mark, "resolved c2/unreachable/flapping", Duration::from_secs(40))?;
    assert_eq!(
        pages_since(&hooks, mark),
        ["c2/unreachable", "c2/unreachable", "c2/unreachable/flapping"],
        "{:?}",
        since(&hooks, mark)
    );
    nothing_open(&tw, &am)?;

    // 4. A maintenance window mutes exactly its node.
    let mark = hooks.events().len();
    let window = r#"{"match": {"node": "c3"}, "duration": "1h", "reason": "thay router", "by": "Lan"}"#;
    let (code, _) = tw.send("POST", "/api/v1/maintenance", window, None)?;
    assert_eq!(code, 401, "changing state takes the token");
    let (code, body) = tw.send("POST", "/api/v1/maintenance", window, Some(TOKEN))?;
    assert_eq!(code, 201, "{body}");
    lab.link_mut("c1")?.set_up(false)?;
    lab.link_mut("c3")?.set_up(false)?;
    wait_event(&hooks, mark, "opened c1/unreachable", Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(pages_since(&hooks, mark), ["c1/unreachable"], "{:?}", since(&hooks, mark));
    let open = tw.alerts()?;
    assert_eq!(open["muted"][0]["key"], "c3/unreachable", "{open}");
    assert_eq!(am.incidents()?, ["c1/unreachable"]);
    lab.link_mut("c1")?.set_up(true)?;
    lab.link_mut("c3")?.set_up(true)?;
    wait_event(&hooks, mark, "resolved c1/unreachable", Duration::from_secs(30))?;
    nothing_open(&tw, &am)?;
    std::thread::sleep(Duration::from_secs(2));
    let c3: Vec<String> = since(&hooks, mark).into_iter().filter(|e| e.contains("c3")).collect();
    assert!(c3.is_empty(), "the node in maintenance was notified: {c3:?}");

    // 5. An agent stopped, its link up (the province still pings c2): its own
    // incident key and alert name, saying so, never "unreachable".
    let mark = hooks.events().len();
    let c2 = tw.agents.iter().position(|a| a.name == "c2").context("c2's agent")?;
    tw.agents.remove(c2).terminate(Duration::from_secs(10))?;
    wait_event(&hooks, mark, "opened c2/agent_down", Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pages_since(&hooks, mark), ["c2/agent_down"], "{:?}", since(&hooks, mark));
    let held = wait_for(Duration::from_secs(10), "c2's alert in Alertmanager", || {
        am.alerts().ok()?.into_iter().find(|a| a["labels"]["incident"] == "c2/agent_down")
    })?;
    assert_eq!(held["labels"]["alertname"], "tierwatch_agent_down", "{held}");
    let summary = held["annotations"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("WAN link answers"), "{summary}");
    tw.stop()?;
    Ok(())
}

/// Probing each WAN end with one echo a second in 5 s rounds: without fast
/// failure detection a cut shows only when a whole round went unanswered
/// (5 to 10 s after the cut); with it, within the alert latency goal (median
/// of 9 cuts ≤ 1.5 s, max ≤ 3 s). A path that holds every frame for 0.6 or
/// 1.0 s (issue 18), or a jittery but healthy link, raises nothing.
#[test]
fn a_silent_wan_end_fails_its_probe_before_the_round_ends() -> anyhow::Result<()> {
    require_lab!("a_silent_wan_end_fails_its_probe_before_the_round_ends");
    use rand::Rng;
    use tierwatch_tests::lab::impair::Impairment;
    let mut lab = Lab::build(LabSpec::communes(1).beside_others())?;
    let spec =
        SystemSpec { only_nodes: Some(vec!["province".into()]), ..SystemSpec::fast_detection(Duration::from_secs(10)) };
    let tw = lab.start_tierwatch(&spec)?;
    let success = [("node", "province"), ("probe", "icmp"), ("target", "c1")];
    tw.wait_metric(Duration::from_secs(20), "tierwatch_probe_success", &success, |v| v == 1.0)?;
    // A round has measured the link: the watch has its round-trip estimate.
    std::thread::sleep(Duration::from_secs(6));
    let province = &tw.agents[0];
    assert_eq!(province.name, "province");
    let early_reports = || province.log_text().matches("reported before the round ends").count();
    let failures = [("node", "province"), ("probe", "icmp"), ("result", "failure")];
    let failed_runs = || tw.metric("tierwatch_agent_probes_total", &failures).ok().flatten().unwrap_or(0.0);

    // Stalls are not failures: five holds of every frame for 0.6 s and five
    // for 1.0 s, each at a random moment of the 5 s cycle.
    let (reports_before, failed_before) = (early_reports(), failed_runs());
    for hold in [600u64, 1000].repeat(5) {
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(1000..5000)));
        lab.link_mut("c1")?.hold(Duration::from_millis(hold))?;
        let until = Instant::now() + Duration::from_millis(hold + 1500);
        while Instant::now() < until {
            assert_ne!(
                tw.metric("tierwatch_probe_success", &success)?,
                Some(0.0),
                "a hold of {hold} ms failed the probe"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // The agent's own failure count reaches the collector with its next batch.
    std::thread::sleep(spec.push_interval + Duration::from_secs(1));
    assert_eq!(early_reports(), reports_before, "a stall was reported silent:\n{}", province.log_text());
    assert_eq!(failed_runs(), failed_before, "a stall failed an ICMP run");

    // Cuts still are: nine, each at a random moment; the time to the
    // agent's report. Nine, not five: the median of five random cuts sat
    // above 1.5 s in a few percent of runs (one in seven cuts lands late
    // in the request spacing), which says nothing about the goal.
    let (mut reported, mut at_collector) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        std::thread::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..5000)));
        let before = early_reports();
        let cut = Instant::now();
        lab.link_mut("c1")?.set_up(false)?;
        let mut seen = None;
        while cut.elapsed() < Duration::from_secs(15) {
            if seen.is_none() && early_reports() > before {
                seen = Some(cut.elapsed());
            }
            if tw.metric("tierwatch_probe_success", &success)? == Some(0.0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        at_collector.push(cut.elapsed());
        // A cut just before a round's end may be the round's own failure, not an early report.
        reported.push(seen.unwrap_or_else(|| cut.elapsed()));
        lab.link_mut("c1")?.set_up(true)?;
        tw.wait_metric(Duration::from_secs(15), "tierwatch_probe_success", &success, |v| v == 1.0)?;
        std::thread::sleep(Duration::from_secs(6));
    }
    reported.sort();
    at_collector.sort();
    eprintln!("cut to the agent's report: {reported:?}; to the failed probe at the collector: {at_collector:?}");
    // The alert latency goal at a 5 s interval with 5 requests per round.
    assert!(reported[4] <= Duration::from_millis(1500), "median {:?}\n{}", reported[4], province.log_text());
    assert!(reported[8] <= Duration::from_secs(3), "max {:?}", reported[8]);
    let early = early_reports() - reports_before;
    // Without the early report, a cut shows only when a whole round (5 s)
    // went unanswered; a cut landing just before a round ends may still
    // be caught by that round's last request.
    assert!(early >= 6, "{early} early reports in the province's log");
    let early = early_reports();

    // Healthy but jittery (40 ± 30 ms each way): the watch stays quiet.
    lab.link_mut("c1")?.impair_both(
        Impairment::delay(Duration::from_millis(40), Duration::from_millis(30)),
        Impairment::delay(Duration::from_millis(40), Duration::from_millis(30)),
    )?;
    std::thread::sleep(Duration::from_secs(40));
    assert_eq!(early_reports(), early, "a jittery link was reported silent");
    assert_eq!(tw.metric("tierwatch_probe_success", &success)?, Some(1.0));
    tw.stop()?;
    Ok(())
}

/// Issue 22: degradation is its own page. 25 % loss each way on two commune
/// links is one `degraded` page for each (from the province's probes of
/// their WAN ends and their own of the province) and never a "down"; 30 %
/// on the provincial uplink is one page about the province. The shipped
/// rules, their windows shortened (`mean_over`, `for`: 20 s) for the lab;
/// the province probes in the fast-detection shape (5 requests 1 s apart
/// every 5 s), whose silence watch must not mistake the loss for a cut.
#[test]
fn lossy_links_page_degradation_never_down() -> anyhow::Result<()> {
    require_lab!("lossy_links_page_degradation_never_down");
    use tierwatch_tests::lab::impair::Impairment;
    let mut lab = Lab::build(LabSpec::communes(3).beside_others())?;
    let central = lab.central.ns.clone();
    let dir = lab.dir.path().to_path_buf();
    let hooks = Hooks::start(&central, "127.0.0.1:9500".parse()?, &dir)?;
    let Some(am) = Alertmanager::start(&central, "127.0.0.1:9093".parse()?, &dir)? else { return Ok(()) };
    let rules = lab_rules()?;
    for want in ["mean_over: 1m", "mean_over: 2m", "for: 1m"] {
        anyhow::ensure!(rules.contains(want), "config/rules.yaml changed ({want:?}): update this test");
    }
    let rules = rules.replace("mean_over: 1m", "mean_over: 20s").replace("mean_over: 2m", "mean_over: 20s");
    std::fs::write(dir.join("rules.yaml"), rules.replace("for: 1m", "for: 20s"))?;
    let spec = SystemSpec {
        collector_extra: notify_yaml(&dir.join("rules.yaml"), &hooks, Some(&am)),
        // Pushes cross the lossy links: a heartbeat of 6 × 2 s rides out TCP's retransmissions.
        ..SystemSpec::fast_detection(Duration::from_secs(2))
    };
    let tw = lab.start_tierwatch(&spec)?;
    std::thread::sleep(Duration::from_secs(15));
    anyhow::ensure!(hooks.events().is_empty(), "pages while healthy: {:?}", hooks.events());
    let lossy = |loss: f64| Impairment::none().with_loss(loss);

    // Two lossy commune links.
    let mark = hooks.events().len();
    for c in ["c1", "c2"] {
        lab.link_mut(c)?.impair_both(lossy(0.25), lossy(0.25))?;
    }
    for c in ["c1", "c2"] {
        wait_event(&hooks, mark, &format!("opened {c}/degraded"), Duration::from_secs(90))?;
    }
    std::thread::sleep(Duration::from_secs(20));
    let mut pages = pages_since(&hooks, mark);
    pages.sort();
    let downs: Vec<String> = hooks
        .received()
        .iter()
        .filter(|(_, v)| v["incident"]["key"].as_str().is_some_and(|k| !k.ends_with("/degraded")))
        .map(|(_, v)| v["incident"]["alerts"].to_string())
        .collect();
    assert_eq!(pages, ["c1/degraded", "c2/degraded"], "{:?}; not degraded: {downs:?}", since(&hooks, mark));
    let held = am.alerts()?;
    let names: Vec<&str> = held.iter().filter_map(|a| a["labels"]["alertname"].as_str()).collect();
    assert!(names.iter().all(|n| *n == "tierwatch_degraded"), "{names:?}");
    for c in ["c1", "c2"] {
        lab.link_mut(c)?.impair_both(Impairment::none(), Impairment::none())?;
    }
    for c in ["c1", "c2"] {
        wait_event(&hooks, mark, &format!("resolved {c}/degraded"), Duration::from_secs(90))?;
    }

    // The provincial uplink.
    let mark = hooks.events().len();
    lab.link_mut("uplink")?.impair_both(lossy(0.3), lossy(0.3))?;
    wait_event(&hooks, mark, "opened province/degraded", Duration::from_secs(90))?;
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(pages_since(&hooks, mark), ["province/degraded"], "{:?}", since(&hooks, mark));
    lab.link_mut("uplink")?.impair_both(Impairment::none(), Impairment::none())?;
    wait_event(&hooks, mark, "resolved province/degraded", Duration::from_secs(90))?;
    let opened: Vec<String> = hooks.events().into_iter().filter(|e| e.starts_with("opened")).collect();
    assert!(opened.iter().all(|e| e.ends_with("/degraded")), "a down page among {opened:?}");
    tw.stop()?;
    Ok(())
}

/// Notifications per incident key and event (`opened`, `resolved`), from
/// the collector's webhook (updates left out: they page nobody).
fn tally(hooks: &Hooks) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for e in hooks.events().into_iter().filter(|e| !e.starts_with("updated ")) {
        *t.entry(e).or_insert(0) += 1;
    }
    t
}

/// Alertmanager's notifications to its webhook, per `status incident`.
fn am_tally(hooks: &Hooks) -> std::collections::BTreeMap<String, usize> {
    let mut t = std::collections::BTreeMap::new();
    for (_, v) in hooks.received() {
        let status = v["status"].as_str().unwrap_or("?");
        let incident = v["groupLabels"]["incident"].as_str().unwrap_or("?");
        *t.entry(format!("{status} {incident}")).or_insert(0) += 1;
    }
    t
}

/// A lab counting every notification, at the collector's webhook and
/// through a real Alertmanager routed as `deploy/alertmanager/alertmanager.yml`
/// (grouped by incident, its webhook a second receiver); every agent also
/// probes `portal` (TCP, once a minute), a listener the test controls.
struct Counted {
    lab: Lab,
    hooks: Hooks,
    am_hooks: Hooks,
    _am: Alertmanager,
    tw: tierwatch_tests::lab::system::Tierwatch,
    portal: Option<tierwatch_tests::Proc>,
    portal_at: String,
}

impl Counted {
    /// `None` when Alertmanager is not installed (outside CI).
    fn start(communes: usize) -> anyhow::Result<Option<Counted>> {
        let lab = Lab::build(LabSpec::communes(communes).beside_others())?;
        let central = lab.central.ns.clone();
        let dir = lab.dir.path().to_path_buf();
        let hooks = Hooks::start(&central, "127.0.0.1:9500".parse()?, &dir)?;
        std::fs::create_dir_all(dir.join("am-hooks"))?;
        let am_hooks = Hooks::start(&central, "127.0.0.1:9501".parse()?, &dir.join("am-hooks"))?;
        let shipped =
            std::fs::read_to_string(tierwatch_tests::workspace().join("deploy/alertmanager/alertmanager.yml"))?;
        let route = "    # webhook_configs:\n    #   - url: http://chatops.angiang.gov.vn:8080/alertmanager\n";
        anyhow::ensure!(shipped.contains(route) && shipped.contains("group_interval: 1m"), "alertmanager.yml changed");
        let am_config = shipped
            .replace(route, &format!("    webhook_configs:\n      - url: http://{}/am\n", am_hooks.addr))
            .replace("group_interval: 1m", "group_interval: 2s");
        let Some(am) = Alertmanager::start_with(&central, "127.0.0.1:9093".parse()?, &dir, &am_config)? else {
            return Ok(None);
        };
        std::fs::write(dir.join("rules.yaml"), lab_rules()?)?;
        let portal_at = format!("{}:8081", tierwatch_tests::lab::addrs::SERVICE);
        let portal = lab.start_listener(&lab.province.ns, &[&portal_at])?;
        let spec = SystemSpec {
            extra_targets: format!(
                "  - name: portal\n    probe: tcp\n    host: {}\n    port: 8081\n    interval: 1m\n    timeout: 2s\n",
                tierwatch_tests::lab::addrs::SERVICE
            ),
            collector_extra: notify_yaml(&dir.join("rules.yaml"), &hooks, Some(&am)),
            ..SystemSpec::default()
        };
        let tw = lab.start_tierwatch(&spec)?;
        // Every vantage point has probed the portal once (at its start).
        std::thread::sleep(Duration::from_secs(10));
        anyhow::ensure!(hooks.events().is_empty(), "pages while healthy: {:?}", hooks.events());
        Ok(Some(Counted { lab, hooks, am_hooks, _am: am, tw, portal: Some(portal), portal_at }))
    }

    /// Stops or starts the portal.
    fn portal(&mut self, up: bool) -> anyhow::Result<()> {
        match (up, self.portal.take()) {
            (true, None) => self.portal = Some(self.lab.start_listener(&self.lab.province.ns, &[&self.portal_at])?),
            (false, Some(mut p)) => p.kill(),
            (_, p) => self.portal = p,
        }
        Ok(())
    }

    /// Asserts the collector's notifications (opened and resolved, by key)
    /// are `want`, and that Alertmanager notified each the same number of
    /// times (firing, resolved).
    fn check(self, want: &std::collections::BTreeMap<String, usize>) -> anyhow::Result<()> {
        assert_eq!(&tally(&self.hooks), want, "in order: {:?}", self.hooks.events());
        let am_want: std::collections::BTreeMap<String, usize> =
            want.iter().map(|(k, n)| (k.replacen("opened ", "firing ", 1), *n)).collect();
        wait_for(Duration::from_secs(20), "Alertmanager's notifications", || {
            (am_tally(&self.am_hooks) == am_want).then_some(())
        })
        .map_err(|e| anyhow::anyhow!("{e}: {:?}", am_tally(&self.am_hooks)))?;
        self.tw.stop()
    }
}

/// Ten commune cuts (five communes, each twice, 6 s each, 13 s apart) and
/// two uplink cuts, the portal up and probed once a minute: a round runs
/// across each cut and is stamped after the restore. One page and one
/// resolve per cut, nothing after a restore.
fn cuts_under_minute_probes() -> anyhow::Result<()> {
    let Some(mut c) = Counted::start(5)? else { return Ok(()) };
    let start = Instant::now();
    for i in 0..10u64 {
        let name = format!("c{}", i % 5 + 1);
        std::thread::sleep(Duration::from_secs(13 * i).saturating_sub(start.elapsed()));
        c.lab.link_mut(&name)?.set_up(false)?;
        std::thread::sleep(Duration::from_secs(6));
        c.lab.link_mut(&name)?.set_up(true)?;
    }
    std::thread::sleep(Duration::from_secs(10));
    for _ in 0..2 {
        c.lab.link_mut("uplink")?.set_up(false)?;
        std::thread::sleep(Duration::from_secs(6));
        c.lab.link_mut("uplink")?.set_up(true)?;
        std::thread::sleep(Duration::from_secs(20));
    }
    // Every round that ran across a restore is in, and any `for` is over.
    std::thread::sleep(Duration::from_secs(75));
    let mut want = std::collections::BTreeMap::new();
    for key in ["c1", "c2", "c3", "c4", "c5", "province"].map(|n| format!("{n}/unreachable")) {
        want.insert(format!("opened {key}"), 2);
        want.insert(format!("resolved {key}"), 2);
    }
    c.check(&want)
}

/// The portal, probed by the province and four communes once a minute,
/// down for 150 s: one incident naming the service, one page, one resolve.
fn a_shared_service_down() -> anyhow::Result<()> {
    let Some(mut c) = Counted::start(4)? else { return Ok(()) };
    c.portal(false)?;
    std::thread::sleep(Duration::from_secs(150));
    c.portal(true)?;
    let back = Instant::now();
    wait_event(&c.hooks, 0, "resolved service:portal/service", Duration::from_secs(120))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.tw.collector.log_text()))?;
    eprintln!("portal back: resolved {:?} after the restore", back.elapsed());
    let page = c.hooks.received().into_iter().find(|(_, v)| v["event"] == "opened");
    let summary = page.map(|(_, v)| v["incident"]["summary"].to_string()).unwrap_or_default();
    assert!(summary.contains("portal") && summary.contains("of 5 nodes probing it"), "{summary}");
    // It resolved once every vantage point had a round after the restore:
    // the rounds that ran across the outage are in. Nothing more comes.
    std::thread::sleep(Duration::from_secs(15));
    let want = ["opened service:portal/service", "resolved service:portal/service"].map(|k| (k.to_string(), 1));
    c.check(&want.into_iter().collect())
}

/// One cause, one page (issue 22), counting every notification: ten
/// commune cuts and two uplink cuts under once-a-minute service probes, and
/// a shared service down for 150 s, in two labs side by side.
#[test]
fn cuts_and_a_shared_outage_under_minute_probes_page_once_each() -> anyhow::Result<()> {
    require_lab!("cuts_and_a_shared_outage_under_minute_probes_page_once_each");
    std::thread::scope(|s| {
        let cuts = s.spawn(cuts_under_minute_probes);
        let shared = s.spawn(a_shared_service_down);
        let (cuts, shared) = (cuts.join(), shared.join());
        for r in [cuts, shared] {
            match r {
                Ok(r) => r?,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(())
    })
}

/// The firing threshold (`above:`) of every rule in rules YAML `text`.
fn thresholds(text: &str) -> std::collections::HashMap<String, f64> {
    let mut out = std::collections::HashMap::new();
    let mut name = None;
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- name: ") {
            name = Some(n.to_string());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("above: "), &name) {
            if let Ok(v) = v.parse::<f64>() {
                out.insert(n.clone(), v);
            }
        }
    }
    out
}

/// Three commune links at 40 ± 30 ms round trip and 1 % loss (a busy but
/// working WAN, the held-out lab's soak) for `TW_JITTER_SOAK_S` seconds
/// (default 120; the issue's 10 minutes with 600), the shipped rules with
/// their windows shortened so they judge many windows in that time
/// (`mean_over` 20 s, `for` 30 s): nothing is ever down, every page that
/// opens has each of its alerts past its rule's firing threshold (none
/// held only by hysteresis, none of a group's members re-paged below it).
#[test]
fn a_jittery_working_wan_pages_nothing_below_a_threshold() -> anyhow::Result<()> {
    require_lab!("a_jittery_working_wan_pages_nothing_below_a_threshold");
    use tierwatch_tests::lab::impair::Impairment;
    let soak = std::env::var("TW_JITTER_SOAK_S").ok().and_then(|s| s.parse().ok()).unwrap_or(120u64);
    let mut lab = Lab::build(LabSpec::communes(3).beside_others())?;
    let central = lab.central.ns.clone();
    let dir = lab.dir.path().to_path_buf();
    let hooks = Hooks::start(&central, "127.0.0.1:9500".parse()?, &dir)?;
    let rules = lab_rules()?;
    for want in ["mean_over: 1m", "mean_over: 2m", "for: 1m", "for: 5m"] {
        anyhow::ensure!(rules.contains(want), "config/rules.yaml changed ({want:?}): update this test");
    }
    let rules = rules
        .replace("mean_over: 1m", "mean_over: 20s")
        .replace("mean_over: 2m", "mean_over: 20s")
        .replace("for: 1m", "for: 30s")
        .replace("for: 5m", "for: 30s");
    let above = thresholds(&rules);
    anyhow::ensure!(above.get("wan_jitter_high") == Some(&0.03), "jitter threshold: {above:?}");
    std::fs::write(dir.join("rules.yaml"), &rules)?;
    let spec = SystemSpec {
        collector_extra: notify_yaml(&dir.join("rules.yaml"), &hooks, None),
        ..SystemSpec::fast_detection(Duration::from_secs(2))
    };
    let tw = lab.start_tierwatch(&spec)?;
    for c in ["c1", "c2", "c3"] {
        lab.link_mut(c)?
            .impair(Impairment::delay(Duration::from_millis(40), Duration::from_millis(30)).with_loss(0.01))?;
    }
    std::thread::sleep(Duration::from_secs(soak));
    let jitter = tw.metric("tierwatch_icmp_jitter_seconds", &[("node", "province"), ("target", "c1")])?;
    eprintln!("after {soak} s: c1's jitter seen from the province {jitter:?} s; events {:?}", hooks.events());
    let mut problems = Vec::new();
    for (_, v) in hooks.received().iter().filter(|(_, v)| v["event"] == "opened") {
        let key = v["incident"]["key"].as_str().unwrap_or("?");
        if !key.contains("/degraded") {
            problems.push(format!("{key}: not a degradation"));
        }
        for a in v["incident"]["alerts"].as_array().into_iter().flatten() {
            let (rule, value) = (a["rule"].as_str().unwrap_or("?"), a["value"].as_f64().unwrap_or(f64::NAN));
            match above.get(rule) {
                Some(t) if value > *t => {}
                _ => problems.push(format!("{key}: {rule} at {value} (threshold {:?})", above.get(rule))),
            }
        }
    }
    assert!(problems.is_empty(), "{problems:?}; every event: {:?}", hooks.events());
    tw.stop()?;
    Ok(())
}
