//! Whole-system tests on loopback: the real binaries, a PKI from the real
//! CLI, agents pushing over mTLS to a collector, read back as an operator
//! and Prometheus would.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tierwatch_tests::loopback::TOPOLOGY;
use tierwatch_tests::*;

struct System {
    _dir: tempfile::TempDir,
    http: SocketAddr,
    collector: Proc,
    agents: Vec<Proc>,
}

fn agent_yaml(node: &str, ingest: u16, health: u16, http: u16, closed: u16) -> String {
    format!(
        "node: {node}
collector:
  endpoints: [\"https://127.0.0.1:{ingest}\"]
  ca: pki/ca.crt
  cert: pki/{node}.crt
  key: pki/{node}.key
  push_interval: 300ms
spool:
  dir: spool/{node}
health:
  listen: 127.0.0.1:{health}
defaults:
  interval: 500ms
  timeout: 200ms
  jitter: 50ms
  icmp_count: 3
targets:
  - name: provincial-gateway
    probe: icmp
    host: 127.0.0.1
  - name: portal
    probe: tcp
    host: 127.0.0.1
    port: {http}
  - name: closed
    probe: tcp
    host: 127.0.0.1
    port: {closed}
"
    )
}

fn start(nodes: &[&str]) -> anyhow::Result<System> {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"))?;
    for n in nodes {
        pki.node(n)?;
    }
    std::fs::write(root.join("topology.yaml"), TOPOLOGY)?;
    let (ingest, http) = (free_port(), free_port());
    std::fs::write(
        root.join("collector.yaml"),
        format!("topology: topology.yaml\ningest:\n  listen: 127.0.0.1:{ingest}\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\nhttp:\n  listen: 127.0.0.1:{http}\nnode_down_after: 5s\nstate_dir: state\n"),
    )?;
    let collector_yaml = root.join("collector.yaml");
    let collector = Proc::spawn(
        "collector",
        &bin("tierwatch-collector"),
        &["--config", collector_yaml.to_str().unwrap_or_default()],
        &root.join("collector.log"),
    )?;
    let http_addr: SocketAddr = ([127, 0, 0, 1], http).into();
    wait_for(Duration::from_secs(10), "collector /readyz", || {
        http_get(http_addr, "/readyz").ok().filter(|(c, _)| *c == 200)
    })?;
    let closed = free_port();
    let mut agents = Vec::new();
    for n in nodes {
        let file = root.join(format!("{n}.yaml"));
        std::fs::write(&file, agent_yaml(n, ingest, free_port(), http, closed))?;
        agents.push(Proc::spawn(
            n,
            &bin("tierwatch-agent"),
            &["--config", file.to_str().unwrap_or_default(), "--log-format", "json"],
            &root.join(format!("{n}.log")),
        )?);
    }
    Ok(System { _dir: dir, http: http_addr, collector, agents })
}

fn nodes_json(http: SocketAddr) -> Option<serde_json::Value> {
    let (code, body) = http_get(http, "/api/v1/nodes").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

#[test]
fn agents_push_over_mtls_and_appear_with_identity_labels() -> anyhow::Result<()> {
    let mut sys = start(&["an-giang", "nui-cam", "giang-thanh"])?;
    let http = sys.http;
    let all_up = wait_for(Duration::from_secs(20), "three nodes up with probe results", || {
        let v = nodes_json(http)?;
        let nodes = v["nodes"].as_array()?.clone();
        nodes
            .iter()
            .all(|n| n["status"] == "up" && n["probes"].as_array().is_some_and(|p| p.len() == 3))
            .then_some(nodes)
    });
    let all_up = match all_up {
        Ok(n) => n,
        Err(e) => {
            let logs: Vec<String> = sys.agents.iter().map(|a| format!("--- {}\n{}", a.name, a.log_text())).collect();
            anyhow::bail!("{e}\ncollector log:\n{}\n{}", sys.collector.log_text(), logs.join("\n"));
        }
    };
    let nui = all_up.iter().find(|n| n["id"] == "nui-cam").cloned().unwrap_or_default();
    let probe = |t: &str| {
        nui["probes"].as_array().and_then(|ps| ps.iter().find(|p| p["target"] == t).cloned()).unwrap_or_default()
    };
    assert_eq!(probe("portal")["success"], true);
    assert_eq!(probe("closed")["success"], false);

    let (_, metrics) = http_get(http, "/metrics")?;
    let expect = [
        r#"tierwatch_tcp_connect_result{node="nui-cam",parent="an-giang",province="an-giang",result="ok",target="portal",tier="commune"} 1"#,
        r#"tierwatch_tcp_connect_result{node="nui-cam",parent="an-giang",province="an-giang",result="refused",target="closed",tier="commune"} 1"#,
        r#"tierwatch_probe_success{node="an-giang",parent="",probe="tcp",province="an-giang",target="portal",tier="province"} 1"#,
        r#"tierwatch_node_up{node="giang-thanh",parent="an-giang",province="an-giang",tier="commune"} 1"#,
    ];
    for line in expect {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    // Node health arrives with the same identity labels.
    let mem =
        r#"tierwatch_node_memory_total_bytes{node="nui-cam",parent="an-giang",province="an-giang",tier="commune"} "#;
    assert!(metrics.lines().any(|l| l.starts_with(mem)), "node health missing:\n{metrics}");
    assert!(metrics.contains("# TYPE tierwatch_node_cpu_seconds_total counter"));
    // ICMP to loopback works wherever this process may open an ICMP socket.
    if is_root() {
        let icmp = r#"tierwatch_probe_success{node="nui-cam",parent="an-giang",probe="icmp",province="an-giang",target="provincial-gateway",tier="commune"} 1"#;
        assert!(metrics.contains(icmp), "missing {icmp}");
        assert!(metrics.contains(r#"tierwatch_icmp_rtt_median_seconds{node="nui-cam",parent="an-giang",province="an-giang",target="provincial-gateway",tier="commune"}"#));
        // The API carries the link's figures with the probe's result (issue 18).
        let gw = probe("provincial-gateway");
        assert_eq!(gw["success"], true, "{gw}");
        let rtt = gw["rtt_median_seconds"].as_f64().unwrap_or(-1.0);
        assert!((0.0..0.1).contains(&rtt), "{gw}");
        assert_eq!(gw["loss_ratio"].as_f64(), Some(0.0), "{gw}");
        assert!(gw["jitter_seconds"].as_f64().is_some_and(|j| j >= 0.0), "{gw}");
        assert!(probe("portal").get("rtt_median_seconds").is_none(), "only ICMP probes carry link figures");
    } else {
        eprintln!("NOTE: not root: ICMP series not checked (the agent reports why it has no ICMP socket)");
    }
    if have("promtool") {
        let out = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .output_with_stdin(metrics.as_bytes())?;
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(std::env::var("CI").is_err(), "promtool missing in CI");
        eprintln!("SKIPPED promtool check: promtool not installed");
    }

    // The agent's own endpoint reports its pushes.
    let log = sys.agents[1].log_text();
    assert!(log.contains("\"message\":\"agent running\""), "json logs: {log}");

    // SIGTERM: every process drains and exits 0.
    for a in &mut sys.agents {
        let status = a.terminate(Duration::from_secs(10))?;
        assert!(status.success(), "{} exited with {status}: {}", a.name, a.log_text());
    }
    let status = sys.collector.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "collector exited with {status}");
    assert!(sys.collector.log_text().contains("collector stopped"));
    Ok(())
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::io::Result<std::process::Output>;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> std::io::Result<std::process::Output> {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input)?;
        }
        child.wait_with_output()
    }
}

#[test]
fn a_stopped_agent_turns_its_node_down() -> anyhow::Result<()> {
    let mut sys = start(&["nui-cam"])?;
    let http = sys.http;
    let status = |s: &'static str| {
        move || {
            nodes_json(http).and_then(|v| {
                v["nodes"].as_array()?.iter().find(|n| n["id"] == "nui-cam").filter(|n| n["status"] == s).cloned()
            })
        }
    };
    wait_for(Duration::from_secs(15), "nui-cam up", status("up"))?;
    sys.agents[0].terminate(Duration::from_secs(10))?;
    // node_down_after is 5s in this system.
    wait_for(Duration::from_secs(15), "nui-cam down", status("down"))?;
    let (_, metrics) = http_get(http, "/metrics")?;
    assert!(
        metrics.contains(r#"tierwatch_node_up{node="nui-cam",parent="an-giang",province="an-giang",tier="commune"} 0"#)
    );
    Ok(())
}

#[test]
fn check_config_names_file_line_column_and_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, "node: nui-cam\ncollector:\n  endpoints: [\"https://c:7443\"]\n  ca: a\n  cert: b\n  key: c\ntargets:\n  - name: gw\n    probe: icmp\n    host: 10.0.0.1\n    interval: soon\n")?;
    let out = run(Command::new(bin("tierwatch-agent")).arg("check-config").arg(&file))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let want = format!("{}:11:15: targets[0].interval: invalid duration \"soon\"", file.display());
    assert!(err.contains(&want), "want {want:?} in {err}");

    // Semantic problems are all reported, each located.
    std::fs::write(&file, "node: Núi Cấm\ncollector:\n  endpoints: []\n  ca: a\n  cert: b\n  key: c\n")?;
    let out = run(Command::new(bin("tierwatch-agent")).arg("check-config").arg(&file))?;
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [":1:1: node: node id", ":3:3: collector.endpoints: list at least one", ":4:3: collector.ca: file"] {
        assert!(err.contains(want), "want {want:?} in {err}");
    }

    let topo = dir.path().join("topology.yaml");
    std::fs::write(&topo, "nodes:\n  - id: a\n    tier: provnce\n    name: A\n")?;
    let coll = dir.path().join("collector.yaml");
    std::fs::write(&coll, "topology: topology.yaml\ningest:\n  ca: x\n  cert: y\n  key: z\n")?;
    for f in ["x", "y", "z"] {
        std::fs::write(dir.path().join(f), "")?;
    }
    let out = run(Command::new(bin("tierwatch-collector")).arg("check-config").arg(&coll))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:3:11: nodes[0].tier: unknown variant `provnce`", topo.display())), "{err}");
    Ok(())
}

/// Issue 18: one run of `check-config` names every problem of every file,
/// type errors included, each once, at the line and list position of the
/// file as written.
#[test]
fn check_config_reports_every_problem_of_every_file_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("agent.yaml");
    std::fs::write(
        &file,
        "node: nui-cam\ncollector:\n  endpoints: [\"https://c:7443\"]\n  ca: a\n  cert: b\n  key: c\n  push_interval: often\n\
         targets:\n  - name: gw\n    probe: icmp\n    host: 10.0.0.1\n    count: many\n\
         \x20 - name: web\n    probe: tcp\n    host: 10.0.0.2\n    prot: 80\n\
         \x20 - name: dns\n    probe: tcp\n    host: 10.0.0.3\n\
         \x20 - name: gw\n    probe: tcp\n    host: 10.0.0.4\n    port: 22\n",
    )?;
    let out = run(Command::new(bin("tierwatch-agent")).arg("check-config").arg(&file))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    for want in [
        ":7:18: collector.push_interval: invalid duration \"often\"",
        // After the first, a type error is located at its key.
        ":12:5: targets[0].count: invalid type",
        ":16:5: targets[1].prot: unknown field `prot`",
        // Semantic problems of the targets that parsed, at their own positions
        // (the misspelt key left the target without its port).
        "targets[1].port: tcp probes need a port",
        "targets[2].port: tcp probes need a port",
        "targets[3].name: duplicate",
        "collector.ca: file",
    ] {
        assert_eq!(err.matches(want).count(), 1, "want {want:?} once in:\n{err}");
    }
    // Consequences of a removal are not news.
    assert!(!err.contains("missing field"), "{err}");

    let topo = dir.path().join("topology.yaml");
    std::fs::write(
        &topo,
        "nodes:\n  - id: a\n    tier: provnce\n    name: A\n  - id: b\n    tier: commune\n    name: B\n    parnet: a\n",
    )?;
    let rules = dir.path().join("rules.yaml");
    std::fs::write(&rules, "flapping: {opens: lots}\n")?;
    let coll = dir.path().join("collector.yaml");
    std::fs::write(&coll, "topology: topology.yaml\nrules: rules.yaml\ningest:\n  ca: x\n  cert: y\n  key: z\n  max_body_bytes: big\nstale_after: soon\n")?;
    let out = run(Command::new(bin("tierwatch-collector")).arg("check-config").arg(&coll))?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    for want in [
        "collector.yaml:7:19: ingest.max_body_bytes: invalid type",
        "collector.yaml:8:1: stale_after: invalid duration",
        "collector.yaml:4:3: ingest.ca: file",
        "topology.yaml:3:11: nodes[0].tier: unknown variant `provnce`",
        "topology.yaml:8:5: nodes[1].parnet: unknown field `parnet`",
        "rules.yaml:1:",
    ] {
        assert_eq!(err.matches(want).count(), 1, "want {want:?} once in:\n{err}");
    }
    Ok(())
}

/// Issue 18: text logs carry no ANSI colour codes when stderr is a file or
/// the journal (nor with `NO_COLOR` on a terminal).
#[test]
fn text_logs_to_a_file_carry_no_colour() -> anyhow::Result<()> {
    let lb = tierwatch_tests::loopback::Loopback::new()?;
    let cfg = lb.agent_config("nui-cam", "1s", "", None, "")?;
    let mut cmd = Command::new(bin("tierwatch-agent"));
    cmd.args(["--config", cfg.to_str().unwrap_or_default()]).stdout(std::process::Stdio::null());
    let mut agent = Proc::spawn_command("agent", &mut cmd, &lb.path("agent.log"))?;
    wait_for(Duration::from_secs(10), "the agent running", || {
        agent.log_text().contains("agent running").then_some(())
    })?;
    agent.terminate(Duration::from_secs(10))?;
    let text = agent.log_text();
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "ANSI codes in a log file:\n{text}");
    Ok(())
}

#[test]
fn pki_cli_refuses_to_overwrite_and_keeps_keys_private() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(dir.path())?;
    pki.node("nui-cam")?;
    let mode = |f: &str| std::fs::metadata(dir.path().join(f)).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("nui-cam.key"), 0o600);
    assert_eq!(mode("nui-cam.crt"), 0o644);
    let again = run(Command::new(bin("tierwatch-collector"))
        .args(["pki", "issue", "--dir"])
        .arg(dir.path())
        .args(["--node", "nui-cam"]))?;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let bad = run(Command::new(bin("tierwatch-collector"))
        .args(["pki", "issue", "--dir"])
        .arg(dir.path())
        .args(["--node", "Núi Cấm"]))?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--node \"Núi Cấm\""));
    Ok(())
}

#[test]
fn binaries_answer_version_and_help() -> anyhow::Result<()> {
    for b in ["tierwatch-agent", "tierwatch-collector"] {
        let v = run(Command::new(bin(b)).arg("--version"))?;
        assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("{b} {}", env!("CARGO_PKG_VERSION")));
        let h = run(Command::new(bin(b)).arg("--help"))?;
        assert!(String::from_utf8_lossy(&h.stdout).contains("--log-format"));
    }
    Ok(())
}

/// README command 1, as written, with the binaries of this build and spare ports.
#[test]
fn demo_script_brings_up_the_province_and_cleans_up() -> anyhow::Result<()> {
    let script = workspace().join("scripts/demo.sh");
    let out = run(Command::new("bash")
        .arg(&script)
        .env("TW_BIN_DIR", bin_dir())
        .env("TW_DEMO_INGEST_PORT", free_port().to_string())
        .env("TW_DEMO_HTTP_PORT", free_port().to_string())
        .env("TW_DEMO_AGENT_PORT", "0")
        .env("TW_DEMO_SECONDS", "1"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for node in ["an-giang", "nui-cam", "giang-thanh", "phu-quoc"] {
        let row = stdout.lines().find(|l| l.starts_with(node)).unwrap_or_default();
        assert!(row.contains(" UP "), "{node} not up in the demo:\n{stdout}");
    }
    assert!(stdout.contains("dichvucong-angiang/tcp FAIL"), "{stdout}");
    assert!(stdout.contains("Xã Núi Cấm"));
    assert!(stdout.contains("demo stopped; everything cleaned up."));
    Ok(())
}
