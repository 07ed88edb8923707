//! Probe tests in the lab: the agent's HTTP(S), TLS and DNS probes against
//! real nginx and dnsmasq, read back at the collector (root only).

use std::net::Ipv4Addr;
use std::time::Duration;

use tierwatch_tests::lab::services::{HTTPS_EXPIRED, HTTPS_WRONG_HOST};
use tierwatch_tests::lab::system::SystemSpec;
use tierwatch_tests::lab::{addrs, Lab, LabSpec};
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
    Ok(())
}

fn tierwatch_protocol_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}
