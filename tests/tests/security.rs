//! Security sensors in the lab, with real tools and packets: nmap SYN and
//! connect scans from hosts on a commune's LAN, forged ARP replies claiming
//! the commune's gateway address, a dnsmasq DHCP server and a radvd IPv6
//! router started on the LAN. The commune's agent captures on its LAN
//! bridge (`lan0`, the gateway placement); the evidence must reach the
//! collector's API and page through the shipped rules. The host sensors
//! read SSH failures from a log file and from a real systemd journal.
//! Root only.

use std::time::{Duration, Instant};

use tierwatch_tests::lab::system::SystemSpec;
use tierwatch_tests::lab::{addrs, Lab, LabSpec};
use tierwatch_tests::{require_lab, wait_for};

/// The shipped rules; c1's agent alone, capturing on its LAN bridge with
/// the commune itself as the LAN's DHCP server.
fn lan_sensor_on_c1() -> SystemSpec {
    SystemSpec {
        only_nodes: Some(vec!["c1".into()]),
        collector_extra: format!("rules: {}\n", tierwatch_tests::workspace().join("config/rules.yaml").display()),
        agent_extra: format!(
            "sensors:\n  lan:\n    interface: lan0\n    arp: {{new_station_digest: 2s}}\n    dhcp: {{servers: [{}]}}\n",
            addrs::commune_lan(1)
        ),
        ..SystemSpec::default()
    }
}

#[test]
fn scans_arp_spoofing_and_rogue_dhcp_on_a_commune_lan_are_reported_with_evidence() -> anyhow::Result<()> {
    require_lab!("scans_arp_spoofing_and_rogue_dhcp_on_a_commune_lan_are_reported_with_evidence");
    tierwatch_tests::require_tool!("nmap");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(2).beside_others())?;
    let tw = lab.start_tierwatch(&lan_sensor_on_c1())?;
    let gateway = addrs::commune_lan(1).to_string();
    // Ordinary traffic first: the LAN hosts talk to their gateway.
    for h in &lab.lan_hosts {
        h.ns.exec("ping", &["-c", "3", "-i", "0.2", &gateway])?;
    }

    // SYN scan from the first host, connect scan from the second.
    for (host, how) in [(&lab.lan_hosts[0], "-sS"), (&lab.lan_hosts[1], "-sT")] {
        let started = Instant::now();
        host.ns.exec("nmap", &[how, "-Pn", "-n", "-T4", "-p", "1-300", &gateway])?;
        let src = host.addr.to_string();
        let got = wait_for(Duration::from_secs(10), &format!("a port_scan event from {src}"), || {
            tw.security_events("?kind=port_scan").into_iter().find(|e| e["attributes"]["src"] == src.as_str())
        })
        .map_err(|e| anyhow::anyhow!("{e}\n--- agent log\n{}", tw.agents[0].log_text()))?;
        eprintln!("nmap {how} from {src}: at the collector {:?} after the scan began: {got}", started.elapsed());
        assert_eq!(got["node"], "c1");
        assert_eq!(got["attributes"]["targets"], gateway.as_str());
        assert!(got["attributes"]["src_mac"].as_str().is_some_and(|m| m.len() == 17), "{got}");
    }

    // Forged ARP replies: the attacker's MAC claims the gateway's address.
    let attacker = &lab.lan_hosts[0];
    attacker
        .ns
        .exec(tierwatch_tests::bin("tw-labnet"), &["arp-spoof", "eth0", &gateway, &attacker.addr.to_string(), "5"])?;
    let spoof = wait_for(Duration::from_secs(10), "an arp_spoof event", || {
        tw.security_events("?kind=arp_spoof").into_iter().next()
    })?;
    assert_eq!(spoof["severity"], "critical");
    assert_eq!(spoof["attributes"]["src"], gateway.as_str());
    // The LAN interface goes down and comes back: the sensor reopens it
    // (backing off, never spinning) and keeps watching.
    let c1 = &lab.communes[0].ns;
    c1.ip(&["link", "set", "dev", "lan0", "down"])?;
    std::thread::sleep(Duration::from_secs(2));
    c1.ip(&["link", "set", "dev", "lan0", "up"])?;
    std::thread::sleep(Duration::from_secs(3));
    // A DHCP server started on the LAN answers a client: rogue.
    let rogue = &lab.lan_hosts[1];
    let _dhcp = lab.start_dhcp_server(&rogue.ns, "10.2.1.100".parse()?, "10.2.1.150".parse()?)?;
    attacker.ns.exec(tierwatch_tests::bin("tw-labnet"), &["dhcp-discover", "eth0", "3"])?;
    let dhcp = wait_for(Duration::from_secs(10), "a rogue_dhcp event", || {
        tw.security_events("?kind=rogue_dhcp").into_iter().next()
    })?;
    assert_eq!(dhcp["severity"], "critical");
    assert_eq!(dhcp["attributes"]["src"], rogue.addr.to_string().as_str(), "{dhcp}");
    assert!(dhcp["attributes"]["offered"].as_str().is_some_and(|o| o.starts_with("10.2.1.1")), "{dhcp}");
    let log = tw.agents[0].log_text();
    let reopened = log.matches("LAN sensor capturing").count();
    assert!(reopened >= 2 || !log.contains("capture failed"), "opened {reopened} times:\n{log}");
    // Paged as one critical security incident of the commune.
    let incident = wait_for(Duration::from_secs(30), "the c1/security incident", || {
        let v = tw.alerts().ok()?;
        v["incidents"].as_array()?.iter().find(|i| i["key"] == "c1/security").cloned()
    })?;
    assert_eq!(incident["severity"], "critical", "{incident}");
    let metric = tw.metric("tierwatch_security_events_total", &[("node", "c1"), ("kind", "port_scan")])?;
    assert_eq!(metric, Some(2.0), "one per scanning source");
    tw.stop()?;
    Ok(())
}

/// radvd on a commune LAN host: the IPv6 router hosts would take (the LAN
/// runs IPv4, its router advertisement allowlist names another router).
#[test]
fn a_rogue_ipv6_router_on_a_commune_lan_is_reported() -> anyhow::Result<()> {
    require_lab!("a_rogue_ipv6_router_on_a_commune_lan_is_reported");
    tierwatch_tests::require_tool!("radvd");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(1).beside_others())?;
    let mut spec = lan_sensor_on_c1();
    spec.agent_extra.push_str("    router_advert: {allow: [\"fe80::1\"]}\n");
    let tw = lab.start_tierwatch(&spec)?;
    let rogue = &lab.lan_hosts[0];
    let (prefix, dns) = ("2001:db8:74:77::".parse()?, "2001:db8:74:77::53".parse()?);
    let started = Instant::now();
    let (radvd, router) = lab.start_router_advertiser(&rogue.ns, prefix, dns, None)?;
    let got = wait_for(Duration::from_secs(10), "a rogue_router_advert event", || {
        tw.security_events("?kind=rogue_router_advert").into_iter().next()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n--- radvd\n{}\n--- agent log\n{}", radvd.log_text(), tw.agents[0].log_text()))?;
    eprintln!("radvd started; the event at the collector {:?} later: {got}", started.elapsed());
    assert_eq!(got["severity"], "critical", "{got}");
    assert_eq!(got["attributes"]["src"], router.to_string().as_str(), "{got}");
    let mac = rogue.ns.exec("cat", &["/sys/class/net/eth0/address"])?;
    assert_eq!(got["attributes"]["src_mac"], mac.trim(), "{got}");
    assert_eq!(got["attributes"]["prefixes"], "2001:db8:74:77::/64", "{got}");
    assert_eq!(got["attributes"]["dns"], "2001:db8:74:77::53", "{got}");
    assert_eq!(got["attributes"]["router_lifetime_s"], "1800", "{got}");
    // radvd keeps advertising every few seconds: still one event.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(tw.security_events("?kind=rogue_router_advert").len(), 1);
    let incident = wait_for(Duration::from_secs(30), "the c1/security incident", || {
        let v = tw.alerts().ok()?;
        v["incidents"].as_array()?.iter().find(|i| i["key"] == "c1/security").cloned()
    })?;
    assert_eq!(incident["severity"], "critical", "{incident}");
    tw.stop()?;
    Ok(())
}

/// A rogue router that advertises to one victim by unicast: invisible to a
/// gateway's own port (the switch delivers it to the victim alone), seen on
/// a mirror port. The lab's LAN bridge with the sensor promiscuous is that
/// mirror port.
#[test]
fn a_unicast_router_advert_is_seen_on_a_mirror_port() -> anyhow::Result<()> {
    require_lab!("a_unicast_router_advert_is_seen_on_a_mirror_port");
    tierwatch_tests::require_tool!("radvd");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(2).beside_others())?;
    let mut spec = lan_sensor_on_c1();
    spec.agent_extra.push_str("    promiscuous: true\n    router_advert: {allow: [\"fe80::1\"]}\n");
    let tw = lab.start_tierwatch(&spec)?;
    let (rogue, victim) = (&lab.lan_hosts[0], &lab.lan_hosts[1]);
    let victim_ll: std::net::Ipv6Addr = link_local(&victim.ns, "eth0")?.parse()?;
    let (prefix, dns) = ("2001:db8:74:78::".parse()?, "2001:db8:74:78::53".parse()?);
    let (radvd, router) = lab.start_router_advertiser(&rogue.ns, prefix, dns, Some(victim_ll))?;
    let got = wait_for(Duration::from_secs(15), "a rogue_router_advert event", || {
        tw.security_events("?kind=rogue_router_advert").into_iter().next()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n--- radvd\n{}\n--- agent log\n{}", radvd.log_text(), tw.agents[0].log_text()))?;
    assert_eq!(got["attributes"]["src"], router.to_string().as_str(), "{got}");
    assert_eq!(got["attributes"]["prefixes"], "2001:db8:74:78::/64", "{got}");
    assert_eq!(got["severity"], "critical");
    tw.stop()?;
    Ok(())
}

/// Three minutes of ordinary LAN life through the commune's gateway: web
/// and DNS requests to the province, pings, DHCP exchanges and renewals
/// with the commune's own server, ARP from known hosts, and the chatter of
/// Windows hosts (mDNS, LLMNR, NetBIOS name service, SSDP), and a backup
/// job that opens thirty ports of one server. No security alert may come
/// of it, with every detector on; only info events (new stations, the DHCP
/// server seen).
#[test]
fn ordinary_lan_traffic_raises_no_security_alert() -> anyhow::Result<()> {
    require_lab!("ordinary_lan_traffic_raises_no_security_alert");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(2).beside_others())?;
    let _nginx = lab.start_nginx()?;
    let _dns = lab.start_dnsmasq(&[("portal.angiang.gov.vn", addrs::PORTAL)])?;
    let c1 = &lab.communes[0];
    let _dhcp = lab.start_dhcp_server_on(&c1.ns, "lan0", "10.2.1.100".parse()?, "10.2.1.150".parse()?)?;
    let tw = lab.start_tierwatch(&lan_sensor_on_c1())?;
    // A DNS client for the LAN hosts: the agent's own one-shot probe.
    let probe_conf = tw.dir.join("lan-probe.yaml");
    std::fs::write(
        &probe_conf,
        format!(
            "node: c1\ncollector:\n  endpoints: [\"https://{}:7443\"]\n  ca: pki/ca.crt\n  cert: pki/c1.crt\n  key: pki/c1.key\nspool:\n  dir: spool/lan-probe\nhealth: null\nnode_health: null\ntargets:\n  - name: dns\n    probe: dns\n    host: {}\n    query: portal.angiang.gov.vn\n",
            addrs::CENTRAL,
            addrs::DNS
        ),
    )?;
    let agent = tierwatch_tests::bin("tierwatch-agent");
    let (gateway, portal) = (addrs::commune_lan(1).to_string(), format!("http://{}/", addrs::PORTAL));
    let conf = probe_conf.to_string_lossy().to_string();
    // The backup server: thirty open ports in the province's data centre.
    let ports: Vec<String> = (9100..9130).map(|p| format!("{}:{p}", addrs::CENTRAL)).collect();
    let _backup = lab.start_listener(&lab.central.ns, &ports.iter().map(String::as_str).collect::<Vec<_>>())?;
    let backup = format!("for p in $(seq 9100 9129); do exec 3<>/dev/tcp/{}/$p && exec 3<&-; done", addrs::CENTRAL);
    let labnet = tierwatch_tests::bin("tw-labnet");
    let chatter = ["224.0.0.251:5353", "224.0.0.252:5355", "10.2.1.255:137", "239.255.255.250:1900"];
    let started = Instant::now();
    let mut rounds = 0;
    while started.elapsed() < Duration::from_secs(180) {
        for h in &lab.lan_hosts {
            h.ns.exec("curl", &["-s", "-o", "/dev/null", "--max-time", "3", &portal])?;
            h.ns.exec("ping", &["-c", "1", "-W", "1", &gateway])?;
        }
        let h = &lab.lan_hosts[rounds % 2];
        h.ns.exec(&labnet, &["udp", chatter[rounds % chatter.len()], "3"])?;
        if rounds % 5 == 0 {
            let h = &lab.lan_hosts[rounds / 5 % 2];
            h.ns.exec(&agent, &["probe", "--config", &conf, "dns"])?;
            h.ns.exec(&labnet, &["dhcp-discover", "eth0", "1"])?;
            // A renewal names the LAN's own server.
            h.ns.exec(&labnet, &["dhcp-request", "eth0", &gateway, &h.addr.to_string(), "1"])?;
        }
        if rounds % 20 == 3 {
            lab.lan_hosts[0].ns.exec("bash", &["-c", &backup])?;
        }
        rounds += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    let all = tw.security_events("?limit=1000");
    let alarming: Vec<&serde_json::Value> = all.iter().filter(|e| e["severity"] != "info").collect();
    let kinds: std::collections::BTreeSet<&str> = all.iter().filter_map(|e| e["kind"].as_str()).collect();
    eprintln!("{rounds} rounds of LAN traffic in {:?}; info events: {kinds:?}", started.elapsed());
    assert!(alarming.is_empty(), "security events from ordinary traffic: {alarming:?}");
    assert!(kinds.contains("arp_new_stations"), "the sensor saw the LAN: {kinds:?}");
    let open = tw.alerts()?;
    let security: Vec<&serde_json::Value> = open["incidents"]
        .as_array()
        .map(|a| a.iter().filter(|i| i["problem"] == "security").collect())
        .unwrap_or_default();
    assert!(security.is_empty(), "{security:?}");
    tw.stop()?;
    Ok(())
}

/// The host sensors of a commune's agent: a scripted burst of SSH failures
/// in its authentication log, a success after them, a new listening port.
#[test]
fn ssh_brute_force_and_a_new_listener_on_a_commune_node_are_reported() -> anyhow::Result<()> {
    require_lab!("ssh_brute_force_and_a_new_listener_on_a_commune_node_are_reported");
    let lab = Lab::build(LabSpec::communes(1).beside_others())?;
    let log = lab.dir.path().join("auth.log");
    std::fs::write(&log, "Nov 28 09:00:00 c1 sshd[1]: Server listening on 0.0.0.0 port 22.\n")?;
    let spec = SystemSpec {
        only_nodes: Some(vec!["c1".into()]),
        agent_extra: format!(
            "sensors:\n  host:\n    ssh:\n      log: {}\n    listeners:\n      interval: 1s\n",
            log.display()
        ),
        ..SystemSpec::default()
    };
    let tw = lab.start_tierwatch(&spec)?;
    std::thread::sleep(Duration::from_secs(2));
    // A penetration tester's burst: user names that name an innocent host
    // (10.2.1.13), half of it from OpenSSH 9.8's `sshd-session`, some as
    // `Invalid user` lines alone (keys-only servers log nothing else).
    let burst: String = (0..12)
        .map(|i| match i % 3 {
            0 => format!("Nov 28 09:30:{i:02} c1 sshd[9{i:02}]: Failed password for invalid user admin from 10.2.1.13 port 22 from 10.2.1.66 port 5{i:04} ssh2\n"),
            1 => format!("Nov 28 09:30:{i:02} c1 sshd-session[9{i:02}]: Failed password for invalid user root from 10.2.1.13 port 22 ssh2 from 10.2.1.66 port 5{i:04} ssh2\n"),
            _ => format!("2026-11-28T09:30:{i:02}.000000+07:00 c1 sshd-session[9{i:02}]: Invalid user oracle{i} from 10.2.1.66 port 5{i:04}\n"),
        })
        .collect();
    let mut f = std::fs::OpenOptions::new().append(true).open(&log)?;
    std::io::Write::write_all(&mut f, burst.as_bytes())?;
    let brute = wait_for(Duration::from_secs(10), "an ssh_bruteforce event", || {
        tw.security_events("?kind=ssh_bruteforce").into_iter().next()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n--- agent log\n{}", tw.agents[0].log_text()))?;
    assert_eq!(brute["attributes"]["src"], "10.2.1.66");
    assert_eq!(brute["attributes"]["failures"], "10");
    std::io::Write::write_all(
        &mut f,
        b"Nov 28 09:31:00 c1 sshd[999]: Accepted password for admin from 10.2.1.66 port 50999 ssh2\n",
    )?;
    let success = wait_for(Duration::from_secs(10), "an ssh_success_after_failures event", || {
        tw.security_events("?kind=ssh_success_after_failures").into_iter().next()
    })?;
    assert_eq!(success["severity"], "critical");
    assert_eq!(success["attributes"]["user"], "admin");
    assert_eq!(success["attributes"]["src"], "10.2.1.66");
    let blamed: Vec<serde_json::Value> =
        tw.security_events("?limit=100").into_iter().filter(|e| e["attributes"]["src"] == "10.2.1.13").collect();
    assert!(blamed.is_empty(), "the host named in user names is blamed: {blamed:?}");

    // A new listener in the commune node's namespace.
    let _listener = lab.start_listener(&lab.communes[0].ns, &["0.0.0.0:4444"])?;
    let new = wait_for(Duration::from_secs(10), "a new_listener event", || {
        tw.security_events("?kind=new_listener").into_iter().find(|e| e["attributes"]["port"] == "4444")
    })?;
    assert_eq!(new["severity"], "warning");
    assert_eq!(new["attributes"]["process"], "tw-labnet", "{new}");
    tw.stop()?;
    Ok(())
}

/// The province's portal, probed over HTTP by the province's agent, is
/// defaced: gambling links injected by nginx's page. A defacement event
/// with the words as evidence reaches the collector and pages. Then the
/// spellings that slip past a literal filter (no diacritics, entities, a
/// tag inside a word), and SEO spam that nginx serves only to a crawler's
/// User-Agent (cloaking), are defacements too.
#[test]
fn a_defaced_portal_raises_defacement() -> anyhow::Result<()> {
    require_lab!("a_defaced_portal_raises_defacement");
    let lab = Lab::build(LabSpec::communes(1).beside_others())?;
    let nginx = lab.start_nginx()?;
    let rules = tierwatch_tests::workspace().join("config/rules.yaml");
    let spec = SystemSpec {
        only_nodes: Some(vec!["province".into()]),
        collector_extra: format!("rules: {}\n", rules.display()),
        extra_targets: format!(
            "  - {{name: portal, probe: http, url: \"http://{}/\", cloaking: true}}\n",
            addrs::PORTAL
        ),
        ..SystemSpec::default()
    };
    let tw = lab.start_tierwatch(&spec)?;
    let ok = [("node", "province"), ("probe", "http"), ("target", "portal")];
    tw.wait_metric(Duration::from_secs(15), "tierwatch_probe_success", &ok, |v| v == 1.0)?;
    // A news item is no defacement.
    nginx.set_page("<html><head><title>Cổng dịch vụ công tỉnh An Giang</title></head><body>Dịch vụ công trực tuyến. Thông báo lịch nghỉ Tết.</body></html>\n")?;
    std::thread::sleep(Duration::from_secs(3));
    assert!(tw.security_events("?kind=defacement").is_empty());
    let defaced = Instant::now();
    nginx.set_page("<html><head><title>Cổng dịch vụ công tỉnh An Giang</title></head><body>Dịch vụ công trực tuyến. Thông báo lịch nghỉ Tết. <a href=\"https://x.example/\">Nhà cái uy tín - tài xỉu online</a></body></html>\n")?;
    let e = wait_for(Duration::from_secs(10), "a defacement event", || {
        tw.security_events("?kind=defacement").into_iter().next()
    })?;
    eprintln!("defacement at the collector {:?} after the page changed: {e}", defaced.elapsed());
    assert_eq!(e["severity"], "critical");
    assert_eq!(e["attributes"]["words"], "nhà cái,nhà cái uy tín,tài xỉu");
    assert_eq!(e["attributes"]["src"], format!("http://{}/", addrs::PORTAL).as_str());
    wait_for(Duration::from_secs(30), "the province/security incident", || {
        let v = tw.alerts().ok()?;
        v["incidents"].as_array()?.iter().find(|i| i["key"] == "province/security").cloned()
    })?;
    // Spelled to slip past a literal filter: no diacritics, entities, a tag inside a word.
    nginx.set_page("<html><head><title>Cổng dịch vụ công tỉnh An Giang</title></head><body>Dịch vụ công trực tuyến. Thông báo lịch nghỉ Tết. XOC DIA online, <b>b&#7855;</b>n c&aacute; <i>đ</i>ổi thưởng</body></html>\n")?;
    let e = wait_for(Duration::from_secs(10), "a defacement event for the hidden spelling", || {
        tw.security_events("?kind=defacement")
            .into_iter()
            .find(|e| e["attributes"]["words"].as_str().is_some_and(|w| w.contains("xóc đĩa")))
    })?;
    assert!(e["attributes"]["words"].as_str().is_some_and(|w| w.contains("bắn cá đổi thưởng")), "{e}");
    // SEO spam served to search-engine crawlers only.
    nginx.set_crawler_page("<html><head><title>Nhà cái uy tín - Cổng dịch vụ công</title></head><body>Dịch vụ công trực tuyến. <a href=\"https://x.example/\">Link vào sunwin, kèo nhà cái</a></body></html>\n")?;
    let e = wait_for(Duration::from_secs(10), "a cloaking defacement event", || {
        tw.security_events("?kind=defacement").into_iter().find(|e| e["attributes"]["crawler_words"].is_string())
    })?;
    eprintln!("cloaking: {e}");
    assert!(
        e["attributes"]["crawler_words"].as_str().is_some_and(|w| w.contains("sunwin") && w.contains("kèo nhà cái")),
        "{e}"
    );
    tw.stop()?;
    Ok(())
}

/// `log: journal`: the SSH sensor follows sshd's messages through
/// `journalctl --follow`, from a real systemd-journald started in a private
/// mount namespace (so the host's journal is untouched), with the agent in
/// that namespace; the messages are written by a process named `sshd-session`, as
/// the journal's `_COMM` match wants (`sshd-session`, as OpenSSH 9.8 and
/// later are). Loopback collector; root only.
#[test]
fn ssh_brute_force_is_read_from_the_systemd_journal() -> anyhow::Result<()> {
    require_lab!("ssh_brute_force_is_read_from_the_systemd_journal");
    let journald = ["/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let tools = ["journalctl", "logger", "unshare", "nsenter"].into_iter().all(tierwatch_tests::have);
    let Some(journald) = journald.filter(|_| tools) else {
        anyhow::ensure!(
            std::env::var("CI").is_err(),
            "systemd-journald, journalctl, logger, unshare and nsenter must be there in CI"
        );
        eprintln!("SKIPPED: systemd-journald, journalctl, logger, unshare or nsenter missing");
        return Ok(());
    };
    let lo = tierwatch_tests::loopback::Loopback::new()?;
    let _collector = lo.start_collector("collector.log", "")?;
    let sensors =
        "sensors:\n  host:\n    ssh: {log: journal}\n    listeners: {enabled: false}\n    files: {enabled: false}\n";
    let config = lo.agent_config("nui-cam", "200ms", "", None, sensors)?;
    let pidfile = lo.path("journald.pid");
    // Volatile journal on tmpfs inside the namespace; a persistent
    // /var/log/journal of the host is covered too.
    let script = format!(
        "set -e\nfor d in /run/systemd/journal /run/log; do mkdir -p $d; mount -t tmpfs tmpfs $d; done\n\
         if [ -d /var/log/journal ]; then mount -t tmpfs tmpfs /var/log/journal; fi\n\
         {journald} & echo $! > {pid}\n\
         for i in $(seq 50); do [ -S /run/systemd/journal/socket ] && break; sleep 0.1; done\n\
         exec {agent} --config {config} --log-format json\n",
        pid = pidfile.display(),
        agent = tierwatch_tests::bin("tierwatch-agent").display(),
        config = config.display(),
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]).stdout(std::process::Stdio::null());
    let mut agent = tierwatch_tests::Proc::spawn_command("agent", &mut cmd, &lo.path("agent.log"))?;
    let journald_pid = wait_for(Duration::from_secs(10), "journald in the namespace", || {
        std::fs::read_to_string(&pidfile).ok()?.trim().parse::<u32>().ok()
    })?;
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").arg(self.0.to_string()).status();
        }
    }
    let _journald = Kill(journald_pid);
    // A logger named sshd, run in the agent's mount namespace (its journal).
    // OpenSSH 9.8 and later log from `sshd-session`.
    let sshd = lo.path("sshd-session");
    std::fs::copy(tierwatch_tests::which("logger").ok_or_else(|| anyhow::anyhow!("logger is not installed"))?, &sshd)?;
    let ns = format!("--mount=/proc/{journald_pid}/ns/mnt");
    // `logger --journald` writes one entry per run: a burst is twelve runs.
    let burst = |round: u32| -> anyhow::Result<()> {
        for i in 0..12 {
            let entry = format!(
                "MESSAGE=Failed password for invalid user admin{i} from 10.2.1.77 port {} ssh2\nSYSLOG_IDENTIFIER=sshd-session\n",
                40_000 + round * 16 + i
            );
            let mut child = std::process::Command::new("nsenter")
                .arg(&ns)
                .arg(&sshd)
                .arg("--journald")
                .stdin(std::process::Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                std::io::Write::write_all(&mut stdin, entry.as_bytes())?;
            }
            anyhow::ensure!(child.wait()?.success(), "logger --journald failed");
        }
        Ok(())
    };
    // journalctl follows from "now": send bursts until one is seen.
    let addr = lo.http_addr();
    let mut round = 0;
    let event = wait_for(Duration::from_secs(30), "an ssh_bruteforce event from the journal", || {
        round += 1;
        burst(round).ok()?;
        std::thread::sleep(Duration::from_millis(500));
        let (_, body) = tierwatch_tests::http_get(addr, "/api/v1/security/events?kind=ssh_bruteforce").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["events"].as_array()?.first().cloned()
    })
    .map_err(|e| anyhow::anyhow!("{e}\n--- agent log\n{}", agent.log_text()))?;
    assert_eq!(event["node"], "nui-cam");
    assert_eq!(event["attributes"]["src"], "10.2.1.77");
    agent.terminate(Duration::from_secs(10))?;
    Ok(())
}

/// The MAC of `dev` in `ns`.
fn mac_of(ns: &tierwatch_tests::lab::netns::Netns, dev: &str) -> anyhow::Result<String> {
    Ok(ns.exec("cat", &[&format!("/sys/class/net/{dev}/address")])?.trim().to_string())
}

/// Turns IPv6 on for `dev` in `ns` (the lab keeps it off) and returns its link-local address.
fn link_local(ns: &tierwatch_tests::lab::netns::Netns, dev: &str) -> anyhow::Result<String> {
    ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0")?;
    ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0")?;
    wait_for(Duration::from_secs(5), &format!("{dev}'s link-local address"), || {
        let out = ns.ip(&["-6", "-o", "addr", "show", "dev", dev, "scope", "link"]).ok()?;
        let addr = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
        addr.split('/').next().map(str::to_string)
    })
}

/// The events of `kind` naming `src` (waits up to ten seconds for one).
fn event_from(
    tw: &tierwatch_tests::lab::system::Tierwatch,
    kind: &str,
    src: &str,
) -> anyhow::Result<serde_json::Value> {
    wait_for(Duration::from_secs(10), &format!("a {kind} event from {src}"), || {
        tw.security_events(&format!("?kind={kind}&limit=500")).into_iter().find(|e| e["attributes"]["src"] == src)
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\n--- events\n{:#?}\n--- agent log\n{}",
            tw.security_events("?limit=50"),
            tw.agents[0].log_text()
        )
    })
}

/// A penetration tester's scans, each from its own LAN host: FIN, Xmas,
/// NULL and ACK scans, an ARP sweep of the /24, a ping sweep beyond the
/// LAN, a SYN scan over IPv6, and
/// a decoy scan (`nmap -D`) that names an innocent host. Each is found,
/// with evidence naming the real source; the decoy's innocent host is
/// never blamed.
#[test]
fn scans_that_try_to_hide_are_seen() -> anyhow::Result<()> {
    require_lab!("scans_that_try_to_hide_are_seen");
    tierwatch_tests::require_tool!("nmap");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(9).beside_others())?;
    // IPv6 on the gateway's LAN side and on one host, before the sensor opens it.
    let gw6 = link_local(&lab.communes[0].ns, "lan0")?;
    let h5 = link_local(&lab.lan_hosts[5].ns, "eth0")?;
    let tw = lab.start_tierwatch(&lan_sensor_on_c1())?;
    let gateway = addrs::commune_lan(1).to_string();
    for h in &lab.lan_hosts {
        h.ns.exec("ping", &["-c", "2", "-i", "1.2", &gateway])?;
    }
    let nmap = |k: usize, args: &[&str]| -> anyhow::Result<()> {
        let mut a = vec!["-Pn", "-n", "-T4", "-p", "1-60", "-e", "eth0"];
        a.extend_from_slice(args);
        lab.lan_hosts[k].ns.exec("nmap", &a)?;
        Ok(())
    };
    for (k, how, probe) in [(0, "-sF", "fin"), (1, "-sX", "fin"), (2, "-sN", "null"), (3, "-sA", "ack")] {
        nmap(k, &[how, &gateway])?;
        let src = lab.lan_hosts[k].addr.to_string();
        let e = event_from(&tw, "port_scan", &src)?;
        eprintln!("nmap {how}: {e}");
        assert!(e["attributes"]["probes"].as_str().is_some_and(|p| p.split(',').any(|p| p == probe)), "{e}");
        assert_eq!(e["attributes"]["src_mac"], mac_of(&lab.lan_hosts[k].ns, "eth0")?.as_str(), "{e}");
    }
    // A ping sweep of the /24: on a LAN, nmap asks by ARP.
    lab.lan_hosts[4].ns.exec("nmap", &["-sn", "-n", "-T4", "-e", "eth0", "10.2.1.0/24"])?;
    let sweep = event_from(&tw, "host_sweep", &lab.lan_hosts[4].addr.to_string())?;
    assert_eq!(sweep["attributes"]["probes"], "arp", "{sweep}");
    // A ping sweep beyond the LAN (the province's server network, inside the lab).
    lab.lan_hosts[8]
        .ns
        .exec("nmap", &["-sn", "-n", "-T4", "-PE", "--max-retries", "0", &format!("{}/27", addrs::CENTRAL)])?;
    let pings = wait_for(Duration::from_secs(15), "a sweep by echo requests", || {
        let src = lab.lan_hosts[8].addr.to_string();
        tw.security_events("?limit=500").into_iter().find(|e| {
            e["attributes"]["src"] == src.as_str()
                && e["attributes"]["probes"].as_str().is_some_and(|p| p.split(',').any(|p| p == "echo"))
        })
    })?;
    eprintln!("ping sweep: {pings}");
    // Over IPv6, to the gateway's link-local address.
    nmap(5, &["-6", "-sS", &format!("{gw6}%eth0")])?;
    let v6 = event_from(&tw, "port_scan", &h5)?;
    assert_eq!(v6["attributes"]["targets"], gw6.as_str(), "{v6}");
    // Decoys: an innocent LAN host and an address nobody has.
    let (innocent, attacker) = (lab.lan_hosts[7].addr.to_string(), lab.lan_hosts[6].addr.to_string());
    nmap(6, &["-sS", "-D", &format!("{innocent},10.2.1.77,ME"), &gateway])?;
    let decoy = event_from(&tw, "port_scan", &attacker)?;
    eprintln!("nmap -D: {decoy}");
    // The decoy nobody has answers later (its SYNs time out): it may be named then, never blamed.
    let decoys = decoy["attributes"]["decoys"].as_str().unwrap_or_default();
    assert!(decoys.contains(&innocent), "{decoy}");
    assert_eq!(decoy["attributes"]["src_mac"], mac_of(&lab.lan_hosts[6].ns, "eth0")?.as_str());
    std::thread::sleep(Duration::from_secs(4));
    let blamed: Vec<serde_json::Value> = tw
        .security_events("?kind=port_scan&limit=500")
        .into_iter()
        .filter(|e| e["attributes"]["src"] == innocent.as_str() || e["attributes"]["src"] == "10.2.1.77")
        .collect();
    assert!(blamed.is_empty(), "the decoy's innocent host is blamed: {blamed:?}");
    tw.stop()?;
    Ok(())
}

/// Floods and spoofing that used to blind the sensor, from one attacker on
/// the LAN with the tools a penetration tester uses (hping3, arpspoof) and
/// crafted frames: 20,000 SYNs from random spoofed sources while a real scanner
/// scans slowly (the source table is kept small, so the flood overflows
/// it many times); 6,000 invented ARP stations, then a spoof of a known
/// server's address; neighbour advertisements claiming the gateway's IPv6
/// address; DHCP starvation and a client REQUEST naming a rogue server; a
/// man in the middle forwarding a victim's traffic. Each is reported with
/// the real source, and each flood once.
#[test]
fn floods_and_spoofing_are_reported_and_hide_nothing() -> anyhow::Result<()> {
    require_lab!("floods_and_spoofing_are_reported_and_hide_nothing");
    for tool in ["nmap", "hping3", "arpspoof"] {
        tierwatch_tests::require_tool!(tool);
    }
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(3).beside_others())?;
    let gw6 = link_local(&lab.communes[0].ns, "lan0")?;
    let mut spec = lan_sensor_on_c1();
    let server = lab.lan_hosts[0].addr.to_string();
    spec.agent_extra = format!(
        "sensors:\n  lan:\n    interface: lan0\n    scan: {{max_sources: 1000}}\n    arp: {{new_station_digest: 2s, gateways: [{server}]}}\n    dhcp: {{servers: [{}]}}\n",
        addrs::commune_lan(1)
    );
    let tw = lab.start_tierwatch(&spec)?;
    let gateway = addrs::commune_lan(1).to_string();
    for h in &lab.lan_hosts {
        h.ns.exec("ping", &["-c", "2", "-i", "1.2", &gateway])?;
    }
    let (attacker, scanner) = (&lab.lan_hosts[1], &lab.lan_hosts[2]);
    let attacker_mac = mac_of(&attacker.ns, "eth0")?;
    let labnet = tierwatch_tests::bin("tw-labnet");

    // hping3 --rand-source, 2,000 SYNs a second for ten seconds, while the scanner tries a port every half second.
    let flood = {
        let (ns, gateway) = (attacker.ns.clone(), gateway.clone());
        std::thread::spawn(move || {
            // hping3 says it failed when no answer comes back (they go to the spoofed sources).
            let cmd = format!("hping3 --rand-source -S -p 80 -i u500 -c 20000 {gateway} >/dev/null 2>&1; true");
            ns.exec("sh", &["-c", &cmd])
        })
    };
    scanner.ns.exec("nmap", &["-sS", "-Pn", "-n", "--scan-delay", "500ms", "-p", "1-20", "-e", "eth0", &gateway])?;
    flood.join().map_err(|_| anyhow::anyhow!("flood thread"))??;
    let scan = event_from(&tw, "port_scan", &scanner.addr.to_string())?;
    eprintln!("the slow scan under the flood: {scan}");
    let syn_flood = event_from(&tw, "syn_flood", &attacker_mac)?;
    eprintln!("the flood: {syn_flood}");
    assert_eq!(syn_flood["attributes"]["targets"], format!("{gateway}:80").as_str());

    // 6,000 invented stations, then the attacker claims the known server's address.
    attacker.ns.exec(&labnet, &["arp-flood", "eth0", "6000", "3000"])?;
    attacker.ns.exec(&labnet, &["arp-spoof", "eth0", &server, &gateway, "3"])?;
    let spoof = event_from(&tw, "arp_spoof", &server)?;
    eprintln!("the spoof after the ARP flood: {spoof}");
    assert_eq!(spoof["severity"], "critical");
    assert_eq!(spoof["attributes"]["src_mac"], attacker_mac.as_str());
    assert_eq!(spoof["attributes"]["previous_mac"], mac_of(&lab.lan_hosts[0].ns, "eth0")?.as_str(), "{spoof}");
    // The flood's stations each have their own MAC: whichever sent most is named.
    let arp_flood = wait_for(Duration::from_secs(5), "an arp_flood event", || {
        tw.security_events("?kind=arp_flood").into_iter().next()
    })?;
    eprintln!("the ARP flood: {arp_flood}");

    // Neighbour advertisements claiming the gateway's link-local address.
    attacker.ns.exec(&labnet, &["na-spoof", "eth0", &gw6, "3"])?;
    let nd = event_from(&tw, "nd_spoof", &gw6)?;
    assert_eq!(nd["severity"], "critical");
    assert_eq!(nd["attributes"]["src_mac"], attacker_mac.as_str());

    // DHCP starvation, then a client asking for a rogue server's offer.
    attacker.ns.exec(&labnet, &["dhcp-starve", "eth0", "300", "100"])?;
    wait_for(Duration::from_secs(10), "a dhcp_starvation event", || {
        tw.security_events("?kind=dhcp_starvation").into_iter().next()
    })?;
    attacker.ns.exec(&labnet, &["dhcp-request", "eth0", "10.2.1.66", "10.2.1.200", "2"])?;
    let rogue = event_from(&tw, "rogue_dhcp", "10.2.1.66")?;
    assert_eq!(rogue["attributes"]["seen"], "client_request");

    // arpspoof tells the scanner host alone (unicast, unseen at the gateway)
    // that the gateway is at the attacker's MAC; the attacker forwards what
    // comes, so the gateway sees the victim's traffic from the attacker's MAC.
    let victim = scanner.addr.to_string();
    attacker.ns.sysctl("net.ipv4.ip_forward", "1")?;
    attacker.ns.sysctl("net.ipv4.conf.all.send_redirects", "0")?;
    attacker.ns.sysctl("net.ipv4.conf.eth0.send_redirects", "0")?;
    let _arpspoof = tierwatch_tests::Proc::spawn_command(
        "arpspoof",
        &mut attacker.ns.command("arpspoof", &["-i", "eth0", "-t", &victim, &gateway]),
        &lab.dir.path().join("arpspoof.log"),
    )?;
    // The victim keeps talking to the province; arpspoof poisons it every 2 s.
    let attacker_ip = attacker.addr.to_string();
    let mitm = wait_for(Duration::from_secs(20), "an ip_mac_mismatch event naming the attacker", || {
        let _ = scanner.ns.exec("ping", &["-c", "2", "-i", "0.3", "-W", "1", &addrs::CENTRAL.to_string()]);
        tw.security_events("?kind=ip_mac_mismatch").into_iter().find(|e| e["attributes"]["src"] == attacker_ip.as_str())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n--- events\n{:#?}", tw.security_events("?limit=50")))?;
    assert_eq!(mitm["attributes"]["claimed_src"], victim.as_str());
    assert_eq!(mitm["attributes"]["real_mac"], mac_of(&scanner.ns, "eth0")?.as_str());

    // Each flood once, not as a storm.
    std::thread::sleep(Duration::from_secs(3));
    for kind in ["syn_flood", "arp_flood", "dhcp_starvation"] {
        let n = tw.security_events(&format!("?kind={kind}")).len();
        assert_eq!(n, 1, "{kind}: {:#?}", tw.security_events(&format!("?kind={kind}")));
    }
    tw.stop()?;
    Ok(())
}
