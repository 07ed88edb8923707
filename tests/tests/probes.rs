//! Probe tests in the lab: the agent's HTTP(S), TLS and DNS probes against
//! real nginx and dnsmasq, read back at the collector (root only).

use std::net::Ipv4Addr;
use std::time::Duration;

use tierwatch_tests::lab::services::{HTTPS_EXPIRED, HTTPS_WRONG_HOST};
use tierwatch_tests::lab::system::SystemSpec;
use tierwatch_tests::lab::{addrs, fping, Lab, LabSpec};
use tierwatch_tests::require_lab;

#[test]
fn https_tls_and_dns_probes_report_each_failure_for_what_it_is() -> anyhow::Result<()> {
    require_lab!("https_tls_and_dns_probes_report_each_failure_for_what_it_is");
    let lab = Lab::build(LabSpec::communes(1))?;
    let nginx = lab.start_nginx()?;
    let dns = lab.start_dnsmasq(&[("portal.lab", addrs::PORTAL)])?;
    let ca = nginx.pki.ca.display().to_string();
    let portal = addrs::PORTAL;
    let extra = format!(
        "  - {{name: portal-https, probe: http, url: \"https://portal.lab/\", host: \"{portal}\", ca: \"{ca}\", body_contains: [\"Dịch vụ công\"], body_not_contains: [\"hacked\", \"casino\"]}}
  - {{name: portal-http-expired, probe: http, url: \"https://portal.lab:{HTTPS_EXPIRED}/\", host: \"{portal}\", ca: \"{ca}\"}}
  - {{name: tls-expired, probe: tls, host: \"{portal}\", port: {HTTPS_EXPIRED}, server_name: portal.lab, ca: \"{ca}\"}}
  - {{name: tls-wrong-host, probe: tls, host: \"{portal}\", port: {HTTPS_WRONG_HOST}, server_name: portal.lab, ca: \"{ca}\"}}
  - {{name: tls-unknown-ca, probe: tls, host: \"{portal}\", port: 443, server_name: portal.lab}}
  - {{name: dns-portal, probe: dns, host: \"{}\", query: portal.lab, expect: [\"{portal}\"]}}
",
        addrs::DNS
    );
    let tw = lab.start_tierwatch(&SystemSpec {
        extra_targets: extra,
        probe_timeout: Duration::from_millis(900),
        collector_extra: format!("rules: {}\n", tierwatch_tests::workspace().join("config/rules.yaml").display()),
        ..SystemSpec::default()
    })?;
    let t = Duration::from_secs(15);
    let c1 = |target: &'static str| [("node", "c1"), ("target", target)];
    let with = |target: &'static str, k: &'static str, v: &'static str| [("node", "c1"), ("target", target), (k, v)];

    // The healthy portal: verified TLS 1.3, status 200, body checks met.
    tw.wait_metric(t, "tierwatch_probe_success", &c1("portal-https"), |v| v == 1.0)?;
    assert_eq!(tw.metric("tierwatch_http_status_code", &c1("portal-https"))?, Some(200.0));
    assert_eq!(tw.metric("tierwatch_tls_verified", &c1("portal-https"))?, Some(1.0));
    assert_eq!(tw.metric("tierwatch_http_body_match", &c1("portal-https"))?, Some(1.0));
    assert_eq!(tw.metric("tierwatch_tls_version_info", &with("portal-https", "version", "TLSv1.3"))?, Some(1.0));
    let leaf = tw.metric("tierwatch_tls_leaf_expiry_timestamp_seconds", &c1("portal-https"))?.unwrap_or(0.0);
    let now = tierwatch_protocol_now();
    assert!(leaf > now + 29.0 * 86400.0 && leaf < now + 31.0 * 86400.0, "leaf expiry {leaf} vs now {now}");

    // Expired: reported as expired, the host name still matches, no request sent.
    tw.wait_metric(t, "tierwatch_tls_verify_result", &with("tls-expired", "result", "expired"), |v| v == 1.0)?;
    assert_eq!(tw.metric("tierwatch_tls_host_match", &c1("tls-expired"))?, Some(1.0));
    assert!(tw.metric("tierwatch_tls_leaf_expiry_timestamp_seconds", &c1("tls-expired"))?.is_some_and(|e| e < now));
    assert_eq!(tw.metric("tierwatch_probe_success", &c1("tls-expired"))?, Some(0.0));
    tw.wait_metric(t, "tierwatch_tls_verify_result", &with("portal-http-expired", "result", "expired"), |v| v == 1.0)?;
    assert_eq!(tw.metric("tierwatch_probe_success", &c1("portal-http-expired"))?, Some(0.0));
    assert_eq!(
        tw.metric("tierwatch_http_status_code", &c1("portal-http-expired"))?,
        None,
        "no request over an untrusted connection"
    );

    // Wrong host: reported as wrong_host, host_match 0.
    tw.wait_metric(t, "tierwatch_tls_verify_result", &with("tls-wrong-host", "result", "wrong_host"), |v| v == 1.0)?;
    assert_eq!(tw.metric("tierwatch_tls_host_match", &c1("tls-wrong-host"))?, Some(0.0));
    // A CA the agent does not trust (system roots only): unknown_issuer.
    tw.wait_metric(t, "tierwatch_tls_verify_result", &with("tls-unknown-ca", "result", "unknown_issuer"), |v| {
        v == 1.0
    })?;

    // Defacement groundwork: a changed page fails the body checks and changes the fingerprint.
    let before = tw.metric("tierwatch_http_content_fingerprint", &c1("portal-https"))?.unwrap_or(0.0);
    nginx.set_page("<html><body>hacked by nobody - casino bonus</body></html>")?;
    tw.wait_metric(t, "tierwatch_http_body_match", &c1("portal-https"), |v| v == 0.0)?;
    let after = tw.metric("tierwatch_http_content_fingerprint", &c1("portal-https"))?.unwrap_or(0.0);
    assert_ne!(before, after);
    assert_eq!(tw.metric("tierwatch_probe_success", &c1("portal-https"))?, Some(0.0));

    // DNS: the expected answer matches; a record changed in dnsmasq flips the signal.
    tw.wait_metric(t, "tierwatch_dns_answer_match", &c1("dns-portal"), |v| v == 1.0)?;
    assert_eq!(tw.metric("tierwatch_dns_rcode", &with("dns-portal", "rcode", "NOERROR"))?, Some(1.0));
    dns.set_records(&[("portal.lab", Ipv4Addr::new(10, 66, 6, 6))])?;
    tw.wait_metric(t, "tierwatch_dns_answer_match", &c1("dns-portal"), |v| v == 0.0)?;
    assert_eq!(tw.metric("tierwatch_probe_success", &c1("dns-portal"))?, Some(0.0));

    // The same faults as security events with their evidence, once each.
    let event = |kind: &str, target: &str| {
        let found = tw.security_events(&format!("?node=c1&kind={kind}"));
        let mine: Vec<serde_json::Value> = found.into_iter().filter(|e| e["attributes"]["target"] == target).collect();
        (mine.len() == 1).then(|| mine[0].clone())
    };
    let wait = |kind: &'static str, target: &'static str| {
        tierwatch_tests::wait_for(t, &format!("one {kind} event for {target}"), || event(kind, target))
    };
    let hijack = wait("dns_mismatch", "dns-portal")?;
    assert_eq!(hijack["severity"], "critical");
    assert_eq!(hijack["attributes"]["unexpected"], "10.66.6.6");
    assert_eq!(hijack["attributes"]["expected"], portal.to_string());
    assert_eq!(hijack["attributes"]["query"], "portal.lab");
    let unknown = wait("certificate_invalid", "tls-unknown-ca")?;
    assert_eq!((&unknown["severity"], &unknown["attributes"]["why"]), (&"critical".into(), &"unknown_issuer".into()));
    assert_eq!(unknown["attributes"]["fingerprint"].as_str().map(str::len), Some(64), "{unknown}");
    assert!(unknown["attributes"]["issuer"].as_str().is_some_and(|i| !i.is_empty()), "{unknown}");
    let wrong = wait("certificate_invalid", "tls-wrong-host")?;
    assert_eq!((&wrong["severity"], &wrong["attributes"]["why"]), (&"critical".into(), &"wrong_host".into()));
    let expired = wait("certificate_invalid", "tls-expired")?;
    assert_eq!(expired["severity"], "info", "expiry is paged by its own rules");
    assert!(event("certificate_invalid", "portal-https").is_none(), "the trusted portal has none");
    // Paged with their problem (dns, certificate), not as a separate security page.
    let incidents = tierwatch_tests::wait_for(Duration::from_secs(40), "the DNS hijack in c1's dns incident", || {
        let open = tw.alerts().ok()?;
        let list = open["incidents"].as_array()?.clone();
        let dns = list.iter().find(|i| i["key"] == "c1/dns")?;
        let rules: Vec<&str> = dns["alerts"].as_array()?.iter().filter_map(|a| a["rule"].as_str()).collect();
        rules.contains(&"dns_answer_hijacked").then_some(list)
    })?;
    let keys: Vec<&str> = incidents.iter().filter_map(|i| i["key"].as_str()).collect();
    assert!(keys.contains(&"c1/certificate"), "{keys:?}");
    // The page defaced above is a security page of its own; the DNS and
    // certificate faults are not paged a second time there.
    let security: Vec<&serde_json::Value> = incidents
        .iter()
        .filter(|i| i["key"] == "c1/security")
        .flat_map(|i| i["alerts"].as_array().into_iter().flatten())
        .filter(|a| a["labels"]["kind"] != "defacement")
        .collect();
    assert!(security.is_empty(), "no second page for the same faults: {security:?}");
    Ok(())
}

fn tierwatch_protocol_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Runs `tierwatch-agent probe` for one ICMP target inside commune 1 and
/// returns the printed metric values by name.
fn agent_icmp_round(lab: &Lab, count: u32, spacing_ms: u32) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let dir = lab.dir.path().join("probe-cli");
    std::fs::create_dir_all(&dir)?;
    for f in ["ca.crt", "n.crt", "n.key"] {
        std::fs::write(dir.join(f), "unused by the probe command")?;
    }
    let interval_s = (count * spacing_ms) / 1000 + 5;
    let file = dir.join("agent.yaml");
    std::fs::write(
        &file,
        format!(
            "node: c1\ncollector: {{endpoints: [\"https://10.255.0.1:7443\"], ca: ca.crt, cert: n.crt, key: n.key}}\n\
             targets:\n  - {{name: gw, probe: icmp, host: \"{}\", count: {count}, spacing: {spacing_ms}ms, timeout: 1s, interval: {interval_s}s}}\n",
            addrs::gateway(1)
        ),
    )?;
    let out = lab.communes[0]
        .ns
        .command(
            tierwatch_tests::bin("tierwatch-agent"),
            &["probe", "--config", file.to_str().unwrap_or_default(), "gw"],
        )
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        text.contains("kernel receive timestamps for"),
        "probe output: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text
        .lines()
        .filter_map(|l| {
            let (name, value) = l.trim().rsplit_once(' ')?;
            Some((name.split('{').next()?.to_string(), value.parse().ok()?))
        })
        .collect())
}

#[test]
fn icmp_rounds_agree_with_fping_on_an_impaired_link() -> anyhow::Result<()> {
    use tierwatch_tests::lab::impair::Impairment;
    require_lab!("icmp_rounds_agree_with_fping_on_an_impaired_link");
    let mut lab = Lab::build(LabSpec::communes(1))?;

    // Jitter: the agent's jitter figure grows when the link's does.
    lab.link_mut("c1")?.impair(Impairment::delay(Duration::from_millis(40), Duration::ZERO))?;
    let steady = agent_icmp_round(&lab, 200, 10)?["tierwatch_icmp_jitter_seconds"];
    lab.link_mut("c1")?.impair(Impairment::delay(Duration::from_millis(40), Duration::from_millis(10)))?;
    let jittery = agent_icmp_round(&lab, 200, 10)?["tierwatch_icmp_jitter_seconds"];
    eprintln!("jitter: 40 ms ± 0 → {:.3} ms; 40 ms ± 10 ms → {:.3} ms", steady * 1e3, jittery * 1e3);
    assert!(steady < 0.001 && jittery > 0.003, "jitter did not follow the link: {steady} then {jittery}");

    // Median and loss against fping on the same link, same run, 1,000 packets each.
    lab.link_mut("c1")?
        .impair(Impairment::delay(Duration::from_millis(40), Duration::from_millis(10)).with_loss(0.05))?;
    let agent = agent_icmp_round(&lab, 1000, 10)?;
    let mut f: Vec<f64> =
        fping(&lab.communes[0].ns, &addrs::gateway(1).to_string(), 1000, 10)?.into_iter().flatten().collect();
    f.sort_by(|a, b| a.total_cmp(b));
    let fping_median = (f[f.len() / 2 - 1] + f[f.len() / 2]) / 2.0 / 1000.0;
    let agent_median = agent["tierwatch_icmp_rtt_median_seconds"];
    let loss = agent["tierwatch_icmp_loss_ratio"];
    eprintln!(
        "median: agent {:.3} ms, fping {:.3} ms ({:+.2}%); loss: agent {:.1}%, fping {:.1}%",
        agent_median * 1e3,
        fping_median * 1e3,
        (agent_median / fping_median - 1.0) * 100.0,
        loss * 100.0,
        (1.0 - f.len() as f64 / 1000.0) * 100.0
    );
    assert!(
        (agent_median - fping_median).abs() <= (0.05 * fping_median).max(0.0001),
        "agent median {agent_median} vs fping {fping_median}"
    );
    // 99.9% binomial interval of 5% over 1,000 packets: ±3.29·√(0.05·0.95/1000).
    let half = 3.29 * (0.05f64 * 0.95 / 1000.0).sqrt();
    assert!((loss - 0.05).abs() <= half, "loss {loss} outside 5% ± {half:.4}");
    assert_eq!(agent["tierwatch_icmp_packets_duplicate"], 0.0);
    Ok(())
}
