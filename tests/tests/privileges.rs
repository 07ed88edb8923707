//! The agent as the systemd unit runs it, in the lab (root): an unprivileged
//! user holding only CAP_NET_RAW (set up with `setpriv`, as
//! `AmbientCapabilities=CAP_NET_RAW` does) probes with ICMP and captures on
//! its LAN; without the capability it says exactly what is missing and how
//! to grant it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tierwatch_tests::lab::system::SystemSpec;
use tierwatch_tests::lab::{addrs, Lab, LabSpec};
use tierwatch_tests::{require_lab, wait_for, Pki, Proc};

const NOBODY: &str = "65534";

/// `setpriv` arguments: user nobody, no groups, and CAP_NET_RAW as an
/// ambient capability (or no capability at all).
fn as_nobody(with_net_raw: bool) -> Vec<String> {
    let mut v: Vec<String> =
        [format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()].into_iter().collect();
    if with_net_raw {
        v.extend([
            "--inh-caps=+net_raw".into(),
            "--ambient-caps=+net_raw".into(),
            "--bounding-set=-all,+net_raw".into(),
        ]);
    } else {
        v.push("--bounding-set=-all".into());
    }
    v.push("--no-new-privs".into());
    v
}

fn chown_nobody(p: &Path) -> anyhow::Result<()> {
    tierwatch_tests::run(std::process::Command::new("chown").args(["-R", &format!("{NOBODY}:{NOBODY}")]).arg(p))?;
    Ok(())
}

/// The capability sets of a running process, from /proc.
fn capabilities(pid: u32) -> anyhow::Result<(String, String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get =
        |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default();
    Ok((get("Uid:"), get("CapEff:"), get("CapAmb:")))
}

#[test]
fn the_agent_probes_and_captures_as_an_unprivileged_user_with_only_cap_net_raw() -> anyhow::Result<()> {
    require_lab!("the_agent_probes_and_captures_as_an_unprivileged_user_with_only_cap_net_raw");
    tierwatch_tests::require_tool!("setpriv");
    let lab = Lab::build(LabSpec::communes(1).with_lan_hosts(1))?;
    // The collector alone; c1's agent is started here, as nobody.
    let tw = lab.start_tierwatch(&SystemSpec { only_nodes: Some(vec!["province".into()]), ..SystemSpec::default() })?;
    let pki = Pki::open_or_new(&tw.dir.join("pki"))?;
    pki.node("c1")?;

    // Everything nobody needs, in a directory nobody can reach.
    let home = tempfile::Builder::new().prefix("tw-nobody-").tempdir()?;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755))?;
    std::fs::create_dir_all(home.path().join("pki"))?;
    std::fs::create_dir_all(home.path().join("spool"))?;
    for f in ["ca.crt", "c1.crt", "c1.key"] {
        std::fs::copy(pki.dir.join(f), home.path().join("pki").join(f))?;
    }
    let agent_bin = home.path().join("tierwatch-agent");
    std::fs::copy(tierwatch_tests::bin("tierwatch-agent"), &agent_bin)?;
    let spec = SystemSpec {
        agent_extra: format!(
            "sensors:\n  lan:\n    interface: lan0\n    arp: {{new_station_digest: 1s}}\n    dhcp: {{servers: [{}]}}\n",
            addrs::commune_lan(1)
        ),
        ..SystemSpec::default()
    };
    let config = home.path().join("c1.yaml");
    std::fs::write(&config, lab.agent_config_for("c1", &spec)?)?;
    chown_nobody(home.path())?;
    let c1 = &lab.communes[0].ns;
    let start = |with_net_raw: bool, log: &str| -> anyhow::Result<Proc> {
        let mut args = as_nobody(with_net_raw);
        args.extend([agent_bin.display().to_string(), "--config".into(), config.display().to_string()]);
        args.extend(["--log-format".into(), "json".into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = c1.command("setpriv", &argv);
        cmd.stdout(std::process::Stdio::null());
        Proc::spawn_command("c1", &mut cmd, &home.path().join(log))
    };

    // With CAP_NET_RAW: raw ICMP to the province, capture on the LAN.
    let mut agent = start(true, "with-cap.log")?;
    let pid = wait_for(Duration::from_secs(10), "the agent process under setpriv", || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &format!("^{} --config", agent_bin.display())])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse::<u32>().ok()
    })?;
    let (uid, eff, amb) = capabilities(pid)?;
    assert!(uid.starts_with(NOBODY), "runs as nobody: {uid}");
    // Bit 13 is CAP_NET_RAW; nothing else is held.
    assert_eq!((eff.as_str(), amb.as_str()), ("0000000000002000", "0000000000002000"), "only CAP_NET_RAW");
    tw.wait_metric(
        Duration::from_secs(20),
        "tierwatch_probe_success",
        &[("node", "c1"), ("target", "provincial-gateway")],
        |v| v == 1.0,
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log_text()))?;
    assert!(agent.log_text().contains("\"socket\":\"raw\""), "a raw ICMP socket: {}", agent.log_text());
    let host = &lab.lan_hosts[0];
    host.ns.exec("ping", &["-c", "3", "-i", "0.2", &addrs::commune_lan(1).to_string()])?;
    let src = host.addr.to_string();
    wait_for(Duration::from_secs(20), "an ARP event captured by the unprivileged agent", || {
        let (_, body) = tw.get("/api/v1/security/events?node=c1&kind=arp_new_stations").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let listed = |e: &serde_json::Value| {
            e["attributes"]["stations"]
                .as_str()
                .is_some_and(|s| s.split(", ").any(|st| st.starts_with(&format!("{src} "))))
        };
        v["events"].as_array()?.iter().any(listed).then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log_text()))?;
    agent.terminate(Duration::from_secs(20))?;

    // Without it: the one-off probe names what is missing and how to grant it.
    let mut args = as_nobody(false);
    args.extend([agent_bin.display().to_string(), "probe".into(), "--config".into(), config.display().to_string()]);
    args.push("provincial-gateway".into());
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c1.command("setpriv", &argv).output().context("setpriv probe")?;
    let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    for want in [
        "no ICMP socket: raw sockets need CAP_NET_RAW",
        "AmbientCapabilities=CAP_NET_RAW",
        "setcap cap_net_raw+ep",
        "ping_group_range",
    ] {
        assert!(said.contains(want), "{want:?} in:\n{said}");
    }
    // And the daemon says the same in its log, for ICMP and for the LAN sensor.
    let agent = start(false, "without-cap.log")?;
    wait_for(Duration::from_secs(15), "the LAN sensor's refusal in the log", || {
        let log = agent.log_text();
        (log.contains("LAN sensor: cannot capture (needs CAP_NET_RAW)") && log.contains("ICMP probes cannot run"))
            .then_some(())
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", agent.log_text()))?;
    Ok(())
}
