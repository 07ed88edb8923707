//! Lab tests: a two-tier province in network namespaces (root only; when not
//! root they print why and skip, and in CI they must run).

use std::time::{Duration, Instant};

use tierwatch_tests::evidence::{events, exactly_once, STORED};
use tierwatch_tests::lab::impair::Impairment;
use tierwatch_tests::lab::system::{find_sample, SystemSpec};
use tierwatch_tests::lab::{addrs, fping, netns, Lab, LabSpec};
use tierwatch_tests::prometheus::Prometheus;
use tierwatch_tests::{require_lab, wait_for};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[test]
fn impairment_matches_what_fping_measures() -> anyhow::Result<()> {
    require_lab!("impairment_matches_what_fping_measures");
    let mut lab = Lab::build(LabSpec::communes(1))?;
    lab.link_mut("c1")?
        .impair(Impairment::delay(Duration::from_millis(40), Duration::from_millis(10)).with_loss(0.05))?;
    let rtts = fping(&lab.communes[0].ns, &addrs::gateway(1).to_string(), 1000, 10)?;
    assert_eq!(rtts.len(), 1000);
    let mut got: Vec<f64> = rtts.iter().flatten().copied().collect();
    anyhow::ensure!(!got.is_empty(), "no reply at all through the impaired link");
    let loss = 1.0 - got.len() as f64 / 1000.0;
    let med = median(&mut got);
    eprintln!(
        "configured 40 ms ± 10 ms, 5% loss: measured median {med:.2} ms, min {:.2}, max {:.2}, loss {:.1}%",
        got[0],
        got[got.len() - 1],
        loss * 100.0
    );
    assert!((35.0..=45.0).contains(&med), "median {med} ms");
    assert!((0.03..=0.07).contains(&loss), "loss {loss}");
    // The spread is the configured one: nearly every reply within 40 ± 10 ms
    // (+ bridge overhead). Not all: the first waits for ARP through the
    // delayed direction, and a scheduling stall of the userspace bridge on a
    // busy 2-core machine was once seen to hold ~1 % of replies for ~1 s.
    let inside = got.iter().filter(|r| (29.0..=52.0).contains(*r)).count() as f64 / got.len() as f64;
    assert!(inside >= 0.90, "only {:.1}% of RTTs within 40±10 ms (+ bridge overhead)", inside * 100.0);

    // Changing the impairment while running takes effect at once; clearing it restores the link.
    lab.link_mut("c1")?.impair(Impairment::none())?;
    let mut clean: Vec<f64> =
        fping(&lab.communes[0].ns, &addrs::gateway(1).to_string(), 100, 10)?.into_iter().flatten().collect();
    assert_eq!(clean.len(), 100, "an unimpaired link loses nothing");
    assert!(median(&mut clean) < 5.0);
    Ok(())
}

#[test]
fn reordering_and_rate_limit_and_cut() -> anyhow::Result<()> {
    require_lab!("reordering_and_rate_limit_and_cut");
    let mut lab = Lab::build(LabSpec::communes(1))?;
    let gw = addrs::gateway(1).to_string();
    let ns = lab.communes[0].ns.clone();
    // 30% of frames skip a 20 ms delay: those replies overtake earlier ones.
    lab.link_mut("c1")?.impair(Impairment::delay(Duration::from_millis(20), Duration::ZERO).with_reorder(0.3))?;
    let rtts: Vec<f64> = fping(&ns, &gw, 200, 5)?.into_iter().flatten().collect();
    let fast = rtts.iter().filter(|r| **r < 10.0).count();
    assert!((30..=90).contains(&fast), "{fast} of 200 replies skipped the delay");
    lab.link_mut("c1")?.impair(Impairment::none())?;

    // A cut link answers nothing; restored, it answers again.
    lab.link_mut("c1")?.set_up(false)?;
    let cut: Vec<f64> = fping(&ns, &gw, 5, 100)?.into_iter().flatten().collect();
    assert!(cut.is_empty(), "replies through a cut link: {cut:?}");
    lab.link_mut("c1")?.set_up(true)?;
    wait_for(Duration::from_secs(10), "link back", || fping(&ns, &gw, 1, 10).ok().filter(|r| r[0].is_some()))?;

    // tc tbf rate limit towards the commune: big pings queue behind the bucket.
    lab.link_mut("c1")?.set_rate(Some(100))?;
    let out = ns.command("ping", &["-c", "20", "-i", "0.01", "-s", "1400", "-q", &gw]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let avg: f64 = text
        .lines()
        .find(|l| l.contains("rtt"))
        .and_then(|l| l.split('/').nth(4))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(avg > 20.0, "1400-byte pings at 100 kbit/s must queue (avg {avg} ms): {text}");
    lab.link_mut("c1")?.set_rate(None)?;
    Ok(())
}

#[test]
fn commune_probes_reach_the_collector_and_a_cut_link_shows_within_two_intervals() -> anyhow::Result<()> {
    require_lab!("commune_probes_reach_the_collector_and_a_cut_link_shows_within_two_intervals");
    let mut lab = Lab::build(LabSpec::communes(5))?;
    eprintln!("lab of 5 communes built in {:?}", lab.build_time);
    let spec = SystemSpec::default();
    let tw = lab.start_tierwatch(&spec)?;
    let c2 = [("node", "c2"), ("tier", "commune"), ("parent", "province"), ("province", "province")];
    let icmp = |node: &'static str, target: &'static str| [("node", node), ("probe", "icmp"), ("target", target)];
    let long = Duration::from_secs(15);

    // The commune's own ICMP and TCP probes of the province, with identity labels from topology.
    for (probe, target) in [("icmp", "provincial-gateway"), ("tcp", "provincial-service")] {
        let mut labels = c2.to_vec();
        labels.extend([("probe", probe), ("target", target)]);
        tw.wait_metric(long, "tierwatch_probe_success", &labels, |v| v == 1.0)?;
    }
    tw.wait_metric(
        long,
        "tierwatch_icmp_rtt_median_seconds",
        &[("node", "c2"), ("target", "provincial-gateway")],
        |v| v > 0.0 && v < 0.05,
    )?;
    tw.wait_metric(long, "tierwatch_probe_success", &icmp("province", "c2"), |v| v == 1.0)?;

    // Cut c2's WAN link: the province's probe of c2 fails within two probe intervals.
    let cut = Instant::now();
    lab.link_mut("c2")?.set_up(false)?;
    let bound = spec.probe_interval * 2 + spec.push_interval + Duration::from_millis(500);
    tw.wait_metric(bound, "tierwatch_probe_success", &icmp("province", "c2"), |v| v == 0.0)?;
    eprintln!("cut of c2 seen at the collector after {:?} (bound {bound:?})", cut.elapsed());
    // Other communes are untouched.
    assert_eq!(tw.metric("tierwatch_probe_success", &icmp("province", "c3"))?, Some(1.0));
    // c2 cannot push: the collector turns it down.
    if let Err(e) = tw.wait_metric(long, "tierwatch_node_up", &[("node", "c2")], |v| v == 0.0) {
        anyhow::bail!(
            "{e}\nnodes: {}\nc2 agent log:\n{}",
            tw.nodes()?,
            tw.agents.iter().find(|a| a.name == "c2").map(|a| a.log_text()).unwrap_or_default()
        );
    }

    // Restore: everything recovers, and c2 pushes again.
    lab.link_mut("c2")?.set_up(true)?;
    tw.wait_metric(long, "tierwatch_node_up", &[("node", "c2")], |v| v == 1.0)?;
    tw.wait_metric(long, "tierwatch_probe_success", &icmp("province", "c2"), |v| v == 1.0)?;
    tw.wait_metric(long, "tierwatch_probe_success", &icmp("c2", "provincial-gateway"), |v| v == 1.0)?;
    Ok(())
}

#[test]
fn services_answer_inside_the_lab() -> anyhow::Result<()> {
    require_lab!("services_answer_inside_the_lab");
    let lab = Lab::build(LabSpec::communes(1))?;
    let nginx = lab.start_nginx()?;
    // Its answers are checked by the DNS probe test (tests/probes.rs).
    let _dns = lab.start_dnsmasq(&[("portal.lab", addrs::PORTAL)])?;
    let c1 = &lab.communes[0].ns;
    let labnet = tierwatch_tests::bin("tw-labnet");
    let page = c1.exec(&labnet, &["get", &format!("{}:80", addrs::PORTAL), "/"])?;
    assert!(page.starts_with("200\n") && page.contains("Dịch vụ công"), "{page}");
    nginx.set_page("<html><body>hacked</body></html>")?;
    let page = c1.exec(&labnet, &["get", &format!("{}:80", addrs::PORTAL), "/"])?;
    assert!(page.contains("hacked"));
    // HTTPS ports and DNS accept connections from the commune (their content is checked by the probe tests).
    for port in [443, 8443, 9443] {
        c1.exec("bash", &["-c", &format!("exec 3<>/dev/tcp/{}/{port}", addrs::PORTAL)])?;
    }
    c1.exec("bash", &["-c", &format!("exec 3<>/dev/tcp/{}/53", addrs::DNS)])?;
    Ok(())
}

#[test]
fn lan_hosts_sit_on_the_commune_lan_and_reach_the_province() -> anyhow::Result<()> {
    require_lab!("lan_hosts_sit_on_the_commune_lan_and_reach_the_province");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(2))?;
    let [attacker, rogue] = [&lab.lan_hosts[0], &lab.lan_hosts[1]];
    assert_eq!(attacker.addr, addrs::lan_host(1, 0));
    // Same L2 segment as the commune node and each other; routed to the province.
    for (from, to) in [(&attacker.ns, addrs::commune_lan(1)), (&attacker.ns, rogue.addr), (&rogue.ns, addrs::PORTAL)] {
        let got: Vec<f64> = fping(from, &to.to_string(), 3, 20)?.into_iter().flatten().collect();
        assert_eq!(got.len(), 3, "{} cannot reach {to}", from.name);
    }
    // A DHCP server can run on the LAN (the rogue-DHCP scenario).
    let _dhcp = lab.start_dhcp_server(
        &rogue.ns,
        std::net::Ipv4Addr::new(10, 2, 1, 100),
        std::net::Ipv4Addr::new(10, 2, 1, 150),
    )?;
    Ok(())
}

#[test]
fn a_crashed_run_is_cleaned_up_and_teardown_leaves_nothing() -> anyhow::Result<()> {
    require_lab!("a_crashed_run_is_cleaned_up_and_teardown_leaves_nothing");
    // A run that died: its pid is gone, its namespace and a process inside remain.
    let staging = netns::cleanup_lock();
    let mut dead = std::process::Command::new("true").spawn()?;
    let pid = dead.id();
    dead.wait()?;
    let stale = format!("{}{pid}-0-c1", netns::PREFIX);
    netns::ip(&["netns", "add", &stale])?;
    let mut orphan = std::process::Command::new("ip").args(["netns", "exec", &stale, "sleep", "600"]).spawn()?;
    // `ip netns exec` enters the namespace some time after the spawn; on a
    // loaded machine that is more than a few hundred milliseconds, and an
    // orphan not yet inside is not one the cleanup can be asked to find.
    let pid = orphan.id().to_string();
    let inside = wait_for(Duration::from_secs(10), "the orphan to enter its namespace", || {
        netns::ip(&["netns", "pids", &stale]).ok().filter(|p| p.split_whitespace().any(|p| p == pid))
    });
    if inside.is_err() {
        let _ = orphan.kill();
    }
    inside?;
    drop(staging);

    let lab = Lab::build(LabSpec::communes(2))?;
    assert!(!netns::list().contains(&stale), "stale namespace survived");
    // SIGKILL is sent by the cleanup; reaping it is ours and may lag under load.
    let died = wait_for(Duration::from_secs(5), "the orphan to die", || orphan.try_wait().ok().flatten()).is_ok();
    if !died {
        let _ = orphan.kill();
    }
    assert!(died, "process of the dead run survived");
    let prefix = lab.prefix.clone();
    assert!(netns::list().iter().filter(|n| n.starts_with(&prefix)).count() >= 6);
    drop(lab);
    let left: Vec<String> = netns::list().into_iter().filter(|n| n.starts_with(&format!("{prefix}-"))).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

/// The example of tests/README.md: a scenario in under 30 lines.
#[test]
fn example_scenario_degraded_commune_link() -> anyhow::Result<()> {
    require_lab!("example_scenario_degraded_commune_link");
    // 1. Topology: a province with 3 communes, tierwatch running on every node.
    let mut lab = Lab::build(LabSpec::communes(3))?;
    let tw = lab.start_tierwatch(&SystemSpec::default())?;
    // 2. Impairment: commune c1's WAN link gets 80 ms ± 5 ms and 20% loss.
    lab.link_mut("c1")?
        .impair(Impairment::delay(Duration::from_millis(80), Duration::from_millis(5)).with_loss(0.2))?;
    // 3. Assertions on the collector: c1's link shows it, c3's does not.
    let gw = |node| [("node", node), ("target", "provincial-gateway")];
    let t = Duration::from_secs(15);
    tw.wait_metric(t, "tierwatch_icmp_rtt_median_seconds", &gw("c1"), |v| (0.070..0.095).contains(&v))?;
    tw.wait_metric(t, "tierwatch_icmp_rtt_median_seconds", &gw("c3"), |v| v < 0.010)?;
    Ok(())
}

/// Issue 5's acceptance test. A commune's link is cut for ten minutes
/// (`TW_OUTAGE_SECS` shortens it by hand) while its agent keeps probing;
/// after the restore a real Prometheus, fed by the collector's remote_write,
/// holds every sample of the outage at its original time, none twice, and
/// the first fresh batch reached the collector before the backlog was done.
/// It only waits most of the time, so other lab tests run beside it.
#[test]
fn backfill_after_a_ten_minute_outage_reaches_prometheus_once() -> anyhow::Result<()> {
    require_lab!("backfill_after_a_ten_minute_outage_reaches_prometheus_once");
    anyhow::ensure!(tierwatch_tests::have("prometheus"), "prometheus is not installed (scripts/test.sh installs it)");
    let outage = Duration::from_secs(std::env::var("TW_OUTAGE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600));
    let probe_interval = Duration::from_secs(5);
    let mut lab = Lab::build(LabSpec::communes(1).beside_others())?;
    let prom_addr = std::net::SocketAddr::from((addrs::CENTRAL, 9090));
    let prom = Prometheus::start(
        &lab.dir.path().join("prometheus"),
        Some(&lab.central.ns),
        prom_addr,
        "global:\n  evaluation_interval: 1m\nstorage:\n  tsdb:\n    out_of_order_time_window: 1h\n",
        true,
    )?;
    let spec = SystemSpec {
        push_interval: Duration::from_secs(2),
        probe_interval,
        probe_timeout: Duration::from_secs(1),
        icmp_count: 3,
        only_nodes: Some(vec!["c1".into()]),
        log_batches: true,
        // Slow enough that the backlog takes a while, so fresh batches must overtake it.
        agent_collector_extra: "  replay_bytes_per_second: 20000\n".into(),
        collector_extra: format!(
            "remote_write:\n  - name: prometheus\n    url: http://{prom_addr}/api/v1/write\n    timeout: 10s\n"
        ),
        ..SystemSpec::default()
    };
    let test_start = tierwatch_tests::now_ms();
    let tw = lab.start_tierwatch(&spec)?;
    let series = r#"tierwatch_probe_success{node="c1",target="provincial-gateway"}"#;
    wait_for(Duration::from_secs(60), "c1's probes in Prometheus", || {
        prom.scalar(&format!("count_over_time({series}[5m])"), tierwatch_tests::now_ms() as f64 / 1000.0)
            .ok()
            .flatten()
            .filter(|&n| n >= 2.0)
    })?;

    let cut_ms = tierwatch_tests::now_ms();
    lab.link_mut("c1")?.set_up(false)?;
    std::thread::sleep(outage);
    lab.link_mut("c1")?.set_up(true)?;
    let restore_ms = tierwatch_tests::now_ms();

    // The first fresh batch shows the backlog (the agent's own telemetry); then it drains.
    let backlog =
        tw.wait_metric(Duration::from_secs(60), "tierwatch_agent_spool_batches", &[("node", "c1")], |v| v > 0.0)?;
    tw.wait_metric(Duration::from_secs(600), "tierwatch_agent_spool_batches", &[("node", "c1")], |v| v == 0.0)?;
    let drained_ms = tierwatch_tests::now_ms();
    tw.wait_metric(
        Duration::from_secs(120),
        "tierwatch_collector_remote_write_queue_batches",
        &[("remote", "prometheus")],
        |v| v == 0.0,
    )?;

    // Every probe round of the outage is in Prometheus, at its own time.
    let at = tierwatch_tests::now_ms() as f64 / 1000.0;
    let window = Duration::from_millis((tierwatch_tests::now_ms() - test_start) as u64 + 60_000);
    let samples = prom.samples(series, window, at)?;
    let during: Vec<(i64, f64)> = samples.iter().copied().filter(|(t, _)| *t > cut_ms && *t < restore_ms).collect();
    let expected = outage.as_millis() as f64 / probe_interval.as_millis() as f64;
    assert!(
        during.len() as f64 >= expected * 0.95,
        "{} samples in the outage, expected about {expected:.0}",
        during.len()
    );
    let mut edges = vec![cut_ms];
    edges.extend(during.iter().map(|(t, _)| *t));
    edges.push(restore_ms);
    let worst_gap = edges.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    assert!(worst_gap <= probe_interval.as_millis() as i64 * 2, "a gap of {worst_gap} ms in the outage's samples");
    let failed = during.iter().filter(|(_, v)| *v == 0.0).count();
    assert!(
        failed as f64 >= during.len() as f64 * 0.9,
        "the outage shows as failed probes: {failed} of {}",
        during.len()
    );

    // Nothing twice: Prometheus holds exactly the samples the collector sent.
    let (_, metrics) = tw.get("/metrics")?;
    let sent = find_sample(
        &metrics,
        "tierwatch_collector_remote_write_samples_total",
        &[("remote", "prometheus"), ("result", "sent")],
    )
    .unwrap_or(0.0);
    let dropped = find_sample(
        &metrics,
        "tierwatch_collector_remote_write_samples_total",
        &[("remote", "prometheus"), ("result", "dropped")],
    )
    .unwrap_or(-1.0);
    // count_over_time() would drop the metric names and collide; count the raw samples instead.
    let all = prom.query(&format!(r#"{{node="c1"}}[{}s]"#, window.as_secs()), at)?;
    let held = all["result"]
        .as_array()
        .map_or(0, |r| r.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum::<usize>())
        as f64;
    assert_eq!(dropped, 0.0);
    assert_eq!(held, sent, "Prometheus holds {held} samples of c1, the collector sent {sent}");
    tw.stop()?;
    let agent_log = lab.dir.path().join("tierwatch/c1.log");
    let collector_log = lab.dir.path().join("tierwatch/collector.log");
    let (spooled, dups) = exactly_once(std::slice::from_ref(&agent_log), std::slice::from_ref(&collector_log))?;

    // Live first: a batch sealed after the restore was stored before the last backlog batch.
    let created: Vec<i64> = events(&collector_log, STORED).iter().filter_map(|v| v["created_ms"].as_i64()).collect();
    let first_live = created.iter().position(|&c| c >= restore_ms).unwrap_or(usize::MAX);
    let last_backlog = created.iter().rposition(|&c| c > cut_ms && c < restore_ms).unwrap_or(0);
    assert!(first_live < last_backlog, "first fresh batch #{first_live}, last backlog batch #{last_backlog}");
    eprintln!(
        "outage {outage:?}: {} probe samples of the outage in Prometheus (expected ~{expected:.0}), worst gap {worst_gap} ms; \
         backlog {backlog} batches drained {:.1} s after the restore; {held} samples held = {sent} sent; \
         {spooled} batches spooled, each stored once ({dups} copies refused); first fresh batch stored as #{first_live}, last backlog as #{last_backlog}",
        during.len(),
        (drained_ms - restore_ms) as f64 / 1000.0
    );
    Ok(())
}

/// Issue 18's restore test: after a 60 s cut of a commune's link the first
/// batch is stored within 3 s of the link's return, not when the agent's
/// retry backoff (up to its 10 s push interval) runs out: while the
/// collector is unreachable the agent checks the path with a bare TCP
/// connection every second, and the first fresh batch goes before the backlog.
#[test]
fn fresh_data_is_back_within_seconds_of_a_restore() -> anyhow::Result<()> {
    require_lab!("fresh_data_is_back_within_seconds_of_a_restore");
    let mut lab = Lab::build(LabSpec::communes(1).beside_others())?;
    let push = Duration::from_secs(10);
    let spec = SystemSpec {
        push_interval: push,
        probe_interval: Duration::from_secs(2),
        probe_timeout: Duration::from_secs(1),
        only_nodes: Some(vec!["c1".into()]),
        log_batches: true,
        ..SystemSpec::default()
    };
    let tw = lab.start_tierwatch(&spec)?;
    let stored = |tw: &tierwatch_tests::lab::system::Tierwatch| -> Vec<i64> {
        tw.collector
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "batch stored" && v["node"] == "c1")
            .filter_map(|v| v["created_ms"].as_i64())
            .collect()
    };
    wait_for(Duration::from_secs(30), "c1's first batches stored", || (stored(&tw).len() >= 2).then_some(()))?;
    lab.link_mut("c1")?.set_up(false)?;
    std::thread::sleep(Duration::from_secs(60));
    let before = stored(&tw).len();
    lab.link_mut("c1")?.set_up(true)?;
    let restored = Instant::now();
    let restored_ms = tierwatch_tests::now_ms();
    let link = lab.link_mut("c1")?;
    wait_for(Duration::from_secs(5), "c1 to resolve the province's end", || link.resolved().ok().filter(|&c| c))?;
    let resolved = restored.elapsed();
    let first = wait_for(Duration::from_secs(20), "a batch of c1 stored after the restore", || {
        stored(&tw).get(before).copied()
    })?;
    let took = restored.elapsed();
    eprintln!(
        "60 s cut: c1 resolved the province's end {resolved:?} after the restore, the first batch was stored {took:?} \
         after the restore (sealed at restore {:+} ms)",
        first - restored_ms
    );
    if took > Duration::from_secs(3) {
        // What the agent tried around the restore says which wait it was.
        for line in tw.agents[0].log_text().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if ["push failed", "batch spooled", "collector path checked"].contains(&v["message"].as_str().unwrap_or(""))
            {
                eprintln!("{line}");
            }
        }
        panic!("the first batch was stored {took:?} after the restore (at {restored_ms} ms)");
    }
    // Fresh data first: the first batch sealed after the restore is stored
    // soon after it is sealed, not behind the backlog.
    // Polled every 100 ms: seen in the log is stored.
    let (sealed, at) = wait_for(push * 2, "a batch sealed after the restore stored", || {
        stored(&tw).into_iter().find(|&created| created >= restored_ms).map(|c| (c, tierwatch_tests::now_ms()))
    })?;
    eprintln!(
        "first batch sealed after the restore (at +{} ms) stored {} ms after its sealing",
        sealed - restored_ms,
        at - sealed
    );
    assert!(at - sealed <= 2000, "the first fresh batch waited {} ms behind the backlog", at - sealed);
    tw.stop()?;
    Ok(())
}
