//! The binaries as systemd services, on loopback with the real binaries (no
//! root): the notify protocol as systemd sees it (READY only once serving,
//! watchdog pings, RELOADING then READY around a reload, STOPPING), SIGHUP
//! reloads with a good and a bad configuration for the agent and the
//! collector (a new log level included; a bad certificate or key keeps the
//! running one serving), and SIGTERM under load with nothing lost from the spool.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tierwatch_tests::evidence::{events, exactly_once};
use tierwatch_tests::loopback::{Loopback, TOPOLOGY};
use tierwatch_tests::{http_get, signal, wait_for};

/// The socket systemd would listen on (`$NOTIFY_SOCKET`).
struct Notify {
    sock: UnixDatagram,
    path: String,
}

impl Notify {
    fn new(path: &Path) -> anyhow::Result<Notify> {
        let sock = UnixDatagram::bind(path)?;
        Ok(Notify { sock, path: path.to_str().context("utf-8")?.to_string() })
    }

    /// The next message, if one comes within `within`.
    fn next(&self, within: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(within)).ok()?;
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one starts with `prefix` (watchdog pings skipped); fails after `within`.
    fn until(&self, prefix: &str, within: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(m) if m.starts_with(prefix) => return Ok(m),
                Some(m) => seen.push(m),
                None => break,
            }
        }
        bail!("no {prefix:?} notification within {within:?}; got {seen:?}")
    }
}

fn wait_log(log: &Path, message: &str, within: Duration) -> anyhow::Result<()> {
    wait_for(within, &format!("log line {message:?}"), || (!events(log, message).is_empty()).then_some(()))
        .map_err(|e| anyhow::anyhow!("{e}\n{}", std::fs::read_to_string(log).unwrap_or_default()))
}

#[test]
fn the_collector_tells_systemd_when_it_serves_and_reloads_only_a_valid_configuration() -> anyhow::Result<()> {
    let lb = Loopback::new()?;
    let notify = Notify::new(&lb.path("notify.sock"))?;
    // Not waiting for /readyz here: READY must come only once it answers.
    let file = lb.collector_config("")?;
    let mut cmd = std::process::Command::new(tierwatch_tests::bin("tierwatch-collector"));
    cmd.args(["--config", file.to_str().context("utf-8")?, "--log-format", "json"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null());
    let log = lb.path("collector.log");
    let mut collector = tierwatch_tests::Proc::spawn_command("collector", &mut cmd, &log)?;
    let ready = notify.until("READY=1", Duration::from_secs(15))?;
    assert!(ready.contains("STATUS=3 nodes, ingest on 127.0.0.1:"), "{ready}");
    let (code, _) = http_get(lb.http_addr(), "/readyz")?;
    assert_eq!(code, 200, "READY=1 came before the listeners served");
    notify.until("WATCHDOG=1", Duration::from_secs(2))?;
    notify.until("WATCHDOG=1", Duration::from_secs(2))?;

    // A bad topology: refused, logged, the running configuration untouched.
    let topology = lb.path("topology.yaml");
    std::fs::write(
        &topology,
        format!("{TOPOLOGY}  - id: tan-hiep\n    tier: commune\n    name: Xã Tân Hiệp\n    parent: nowhere\n"),
    )?;
    signal(collector.pid(), "HUP");
    wait_log(&log, "reload refused: the new configuration is invalid; the running one stays", Duration::from_secs(10))?;
    let refused = events(&log, "reload refused: the new configuration is invalid; the running one stays");
    let why = refused[0]["fields"]["error"].as_str().or(refused[0]["error"].as_str()).unwrap_or_default().to_string();
    assert!(why.contains("topology.yaml") && why.contains("nowhere"), "the log line says what and where: {refused:?}");
    // systemd hears of it: RELOADING, then READY with why nothing changed.
    notify.until("RELOADING=1", Duration::from_secs(5))?;
    let ready = notify.until("READY=1", Duration::from_secs(5))?;
    assert!(ready.contains("STATUS=reload refused"), "{ready}");
    assert!(collector.running());
    assert_eq!(http_get(lb.http_addr(), "/readyz")?.0, 200);
    std::fs::write(&topology, TOPOLOGY)?;

    // Certificate rotation gone wrong: a garbage certificate file. The
    // reload is refused before anything stops; agents still push.
    let cert = lb.path("pki/collector.crt");
    let good_cert = std::fs::read(&cert)?;
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")?;
    let before = events(&log, "reload refused: the new configuration is invalid; the running one stays").len();
    signal(collector.pid(), "HUP");
    wait_for(Duration::from_secs(10), "the certificate reload refused", || {
        (events(&log, "reload refused: the new configuration is invalid; the running one stays").len() > before)
            .then_some(())
    })?;
    let refused = events(&log, "reload refused: the new configuration is invalid; the running one stays");
    let why = refused[before]["fields"]["error"].as_str().or(refused[before]["error"].as_str()).unwrap_or_default();
    assert!(why.contains("ingest.cert") && why.contains("collector.crt"), "says which key and file: {why}");
    let ready = notify.until("READY=1", Duration::from_secs(5))?;
    assert!(ready.contains("STATUS=reload refused"), "{ready}");
    assert!(collector.running(), "a bad certificate on SIGHUP does not stop the collector");
    let agent_cfg = lb.agent_config("nui-cam", "200ms", "", None, "")?;
    let mut agent = lb.start_agent("agent", &agent_cfg, "agent.log")?;
    wait_for(Duration::from_secs(10), "a push through the running TLS configuration", || {
        (!events(&log, "batch stored").is_empty()).then_some(())
    })?;
    agent.terminate(Duration::from_secs(15))?;
    std::fs::write(&cert, good_cert)?;

    // A good one: RELOADING, then READY with the new node known.
    std::fs::write(
        &topology,
        format!("{TOPOLOGY}  - id: tan-hiep\n    tier: commune\n    name: Xã Tân Hiệp\n    parent: an-giang\n"),
    )?;
    signal(collector.pid(), "HUP");
    notify.until("RELOADING=1", Duration::from_secs(10))?;
    notify.until("READY=1", Duration::from_secs(15))?;
    let (_, nodes) = http_get(lb.http_addr(), "/api/v1/nodes")?;
    assert!(nodes.contains("\"tan-hiep\"") && nodes.contains("Xã Tân Hiệp"), "{nodes}");
    notify.until("WATCHDOG=1", Duration::from_secs(2))?;

    signal(collector.pid(), "TERM");
    notify.until("STOPPING=1", Duration::from_secs(5))?;
    let status = collector.terminate(Duration::from_secs(15))?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn the_agent_reloads_a_valid_configuration_without_losing_a_batch() -> anyhow::Result<()> {
    let lb = Loopback::new()?;
    let mut collector = lb.start_collector("collector.log", "")?;
    let cfg = lb.agent_config("nui-cam", "200ms", "", None, "")?;
    let health = lb.agent_health(&cfg)?;
    let notify = Notify::new(&lb.path("notify.sock"))?;
    let log = lb.path("agent.log");
    let mut agent = lb.start_agent_with("agent", &cfg, "agent.log", &[("NOTIFY_SOCKET", notify.path.as_str())])?;
    let ready = notify.until("READY=1", Duration::from_secs(15))?;
    assert!(ready.contains("STATUS=probing 1 targets, pushing to https://127.0.0.1:"), "{ready}");
    assert_eq!(http_get(health, "/healthz")?.0, 200, "READY=1 came before the health endpoint served");

    // An unknown key: refused with the file, line and key; the agent keeps working.
    let good = std::fs::read_to_string(&cfg)?;
    std::fs::write(
        &cfg,
        good.replace(
            "targets:\n",
            "targets:\n  - name: extra\n    probe: tcp\n    host: 127.0.0.1\n    port: 1\n    colour: red\n",
        ),
    )?;
    signal(agent.pid(), "HUP");
    wait_log(&log, "reload refused: the new configuration is invalid; the running one stays", Duration::from_secs(10))?;
    let line = std::fs::read_to_string(&log)?;
    assert!(line.contains("nui-cam.yaml:") && line.contains("colour"), "the refusal names the file and key");
    let ready = notify.until("READY=1", Duration::from_secs(5))?;
    assert!(ready.contains("STATUS=reload refused"), "{ready}");
    let series = |m: &str, target: &str| {
        let (_, text) = http_get(lb.http_addr(), "/metrics").unwrap_or_default();
        text.lines()
            .any(|l| l.starts_with(m) && l.contains("node=\"nui-cam\"") && l.contains(&format!("target=\"{target}\"")))
    };
    assert!(!series("tierwatch_probe_success", "collector-ingest"));
    assert!(agent.running());

    // A key file cut short during rotation: refused, the agent keeps pushing.
    std::fs::write(&cfg, &good)?;
    let key = lb.path("pki/nui-cam.key");
    let good_key = std::fs::read(&key)?;
    std::fs::write(&key, &good_key[..good_key.len() / 2])?;
    let refusals = || events(&log, "reload refused: the new configuration is invalid; the running one stays").len();
    let before = refusals();
    signal(agent.pid(), "HUP");
    wait_for(Duration::from_secs(10), "the key reload refused", || (refusals() > before).then_some(()))?;
    let line = std::fs::read_to_string(&log)?;
    assert!(line.contains("collector.key") && line.contains("nui-cam.key"), "names the key and file");
    notify.until("READY=1", Duration::from_secs(5))?;
    let stored = events(&lb.path("collector.log"), "batch stored").len();
    wait_for(Duration::from_secs(10), "pushes go on with the loaded key", || {
        (events(&lb.path("collector.log"), "batch stored").len() > stored + 2).then_some(())
    })?;
    assert!(agent.running(), "a bad key on SIGHUP does not stop the agent");
    std::fs::write(&key, good_key)?;

    // Two more targets (one refused) and a finer log level: RELOADING,
    // READY, the new target's series at the collector, and the level in force.
    assert!(events(&log, "probe failed").is_empty(), "scheduler debug is off at first");
    let targets = format!(
        "targets:\n  - name: collector-ingest\n    probe: tcp\n    host: 127.0.0.1\n    port: {}\n  - name: closed\n    probe: tcp\n    host: 127.0.0.1\n    port: 1\n",
        lb.ingest
    );
    let (old_level, new_level) = ("log_level: info,", "log_level: info,tierwatch_agent::scheduler=debug,");
    anyhow::ensure!(good.contains(old_level), "the loopback config sets log_level");
    std::fs::write(&cfg, good.replace("targets:\n", &targets).replace(old_level, new_level))?;
    signal(agent.pid(), "HUP");
    notify.until("RELOADING=1", Duration::from_secs(10))?;
    let ready = notify.until("READY=1", Duration::from_secs(15))?;
    assert!(ready.contains("probing 3 targets"), "{ready}");
    wait_for(Duration::from_secs(10), "the new target's series", || {
        series("tierwatch_probe_success", "collector-ingest").then_some(())
    })?;
    wait_log(&log, "log level changed", Duration::from_secs(5))?;
    wait_log(&log, "probe failed", Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(1));
    agent.terminate(Duration::from_secs(15))?;
    collector.terminate(Duration::from_secs(15))?;
    let (spooled, _) = exactly_once(&[log], &[lb.path("collector.log")])?;
    assert!(spooled >= 5, "{spooled} batches");
    Ok(())
}

#[test]
fn sigterm_under_load_stops_in_time_and_loses_nothing_from_the_spool() -> anyhow::Result<()> {
    let lb = Loopback::new()?;
    let mut collector = lb.start_collector("collector-1.log", "")?;
    // Twenty targets probed every 200 ms, a push every 100 ms.
    let mut extra = String::new();
    for i in 0..20 {
        extra.push_str(&format!("  - name: load-{i}\n    probe: tcp\n    host: 127.0.0.1\n    port: {}\n", lb.http));
    }
    let cfg = lb.agent_config("nui-cam", "100ms", "", None, &extra)?;
    let health = lb.agent_health(&cfg)?;
    let mut agent = lb.start_agent("agent", &cfg, "agent-1.log")?;
    std::thread::sleep(Duration::from_secs(3));
    // The collector dies: a backlog builds in the spool while probes go on.
    collector.kill();
    std::thread::sleep(Duration::from_secs(2));
    let (_, h) = http_get(health, "/healthz")?;
    let unsent = serde_json::from_str::<serde_json::Value>(&h)?["unsent_batches"].as_u64().unwrap_or(0);
    assert!(unsent >= 10, "a backlog at SIGTERM: {h}");
    let asked = Instant::now();
    let status = agent.terminate(Duration::from_secs(30))?;
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    // Well inside the units' TimeoutStopSec=60s: probes finish their round, pushes get 5 s.
    assert!(took < Duration::from_secs(15), "stopping took {took:?}");
    wait_log(&lb.path("agent-1.log"), "stopped; unsent batches stay in the spool", Duration::from_secs(1))?;

    // Started again with the collector back: the backlog arrives, once each.
    let mut collector = lb.start_collector("collector-2.log", "")?;
    let mut agent = lb.start_agent("agent", &cfg, "agent-2.log")?;
    wait_for(Duration::from_secs(60), "the backlog to drain", || {
        let (_, h) = http_get(health, "/healthz").ok()?;
        (serde_json::from_str::<serde_json::Value>(&h).ok()?["unsent_batches"].as_u64()? == 0).then_some(())
    })?;
    agent.terminate(Duration::from_secs(15))?;
    collector.terminate(Duration::from_secs(15))?;
    assert!(
        events(&lb.path("agent-2.log"), "spool: cut a damaged segment tail").is_empty(),
        "the spool was closed cleanly"
    );
    let (spooled, _) = exactly_once(
        &[lb.path("agent-1.log"), lb.path("agent-2.log")],
        &[lb.path("collector-1.log"), lb.path("collector-2.log")],
    )?;
    eprintln!("SIGTERM with {unsent} unsent batches: stopped in {took:?}; {spooled} batches spooled, each stored once");
    Ok(())
}
