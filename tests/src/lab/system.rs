//! tierwatch itself in the lab: the real collector in `central`, a real agent
//! in the province and in each commune, each with its own certificate from
//! `pki issue`, read back through the collector's API and `/metrics`.

use std::net::SocketAddrV4;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};

use super::{addrs, Lab, Node};
use crate::{Pki, Proc};

/// Collector ports inside the lab (the fixed ones of DESIGN.md).
pub const INGEST_PORT: u16 = 7443;
/// The collector's HTTP port.
pub const HTTP_PORT: u16 = 9400;
/// The plain TCP service every agent probes by default.
pub const SERVICE_PORT: u16 = 8080;

/// How the agents behave.
#[derive(Debug, Clone)]
pub struct SystemSpec {
    pub push_interval: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub icmp_count: u32,
    /// Gap between echo requests of the province's probes of the communes' WAN ends (default: the agent's).
    pub icmp_spacing: Option<Duration>,
    /// Extra YAML target entries for every agent, appended to the defaults.
    pub extra_targets: String,
    /// Run agents only on these nodes (default: the province and every commune).
    pub only_nodes: Option<Vec<String>>,
    /// Extra YAML at the end of collector.yaml (top-level keys).
    pub collector_extra: String,
    /// Log every spooled and stored batch (JSON logs, for exactly-once checks).
    pub log_batches: bool,
    /// Extra YAML lines inside each agent's `collector:` section (indented two spaces).
    pub agent_collector_extra: String,
    /// Extra YAML lines inside each agent's `spool:` section (indented two spaces).
    pub spool_extra: String,
    /// Extra top-level YAML for each agent (`sensors:`).
    pub agent_extra: String,
}

impl Default for SystemSpec {
    fn default() -> Self {
        SystemSpec {
            push_interval: Duration::from_millis(500),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            icmp_count: 3,
            icmp_spacing: None,
            extra_targets: String::new(),
            only_nodes: None,
            collector_extra: String::new(),
            log_batches: false,
            agent_collector_extra: String::new(),
            spool_extra: String::new(),
            agent_extra: String::new(),
        }
    }
}

impl SystemSpec {
    /// The province probing in the fast-detection shape of
    /// `config/agent-province.yaml` (5 requests 1 s apart every 5 s, 1 s
    /// timeout), pushing every `push_interval`.
    pub fn fast_detection(push_interval: Duration) -> Self {
        SystemSpec {
            push_interval,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(1),
            icmp_count: 5,
            icmp_spacing: Some(Duration::from_secs(1)),
            ..SystemSpec::default()
        }
    }
}

/// A running tierwatch in the lab. Dropping it stops every process.
pub struct Tierwatch {
    pub collector: Proc,
    pub agents: Vec<Proc>,
    _service: Proc,
    central: super::netns::Netns,
    /// Where collector.yaml, the PKI, the state and the logs are.
    pub dir: std::path::PathBuf,
    restarts: usize,
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl Lab {
    /// `topology.yaml` of this lab: central, province, communes c1..cN.
    pub fn topology_yaml(&self) -> String {
        let mut t = String::from("nodes:\n  - id: central\n    tier: central\n    name: Trung ương\n  - id: province\n    tier: province\n    name: Trung tâm Dữ liệu tỉnh\n    parent: central\n");
        for (i, c) in self.communes.iter().enumerate() {
            t.push_str(&format!(
                "  - id: {}\n    tier: commune\n    name: Xã Thử Nghiệm {}\n    parent: province\n",
                c.id,
                i + 1
            ));
        }
        t
    }

    /// Starts the collector in `central` and an agent on the province and every
    /// commune. Each agent probes its gateway (ICMP) and a provincial TCP
    /// service; returns once every node has pushed.
    pub fn start_tierwatch(&self, spec: &SystemSpec) -> anyhow::Result<Tierwatch> {
        let dir = self.dir.path().join("tierwatch");
        std::fs::create_dir_all(&dir)?;
        // A second start in the same lab keeps the first one's PKI and state.
        let fresh = !dir.join("pki/ca.crt").is_file();
        let pki = Pki::open_or_new(&dir.join("pki"))?;
        let ingest = SocketAddrV4::new(addrs::CENTRAL, INGEST_PORT);
        // The server certificate must name the lab address agents connect to.
        if fresh {
            crate::collector_cli(&[
                "pki",
                "issue",
                "--dir",
                path(&pki.dir)?,
                "--node",
                "lab-collector",
                "--server",
                "--san",
                &addrs::CENTRAL.to_string(),
                "--days",
                "2",
            ])?;
        }
        std::fs::write(dir.join("topology.yaml"), self.topology_yaml())?;
        std::fs::write(
            dir.join("collector.yaml"),
            format!(
                "log_level: {}\ntopology: topology.yaml\ningest:\n  listen: {ingest}\n  ca: pki/ca.crt\n  cert: pki/lab-collector.crt\n  key: pki/lab-collector.key\nhttp:\n  listen: {}:{HTTP_PORT}\nnode_down_after: {}\nstate_dir: state\n{}",
                if spec.log_batches { "info,tierwatch_collector::ingest=debug" } else { "info" },
                addrs::CENTRAL,
                ms(spec.push_interval * 6),
                spec.collector_extra,
            ),
        )?;
        let service = self.start_listener(&self.province.ns, &[&format!("{}:{SERVICE_PORT}", addrs::SERVICE)])?;
        let collector = spawn_collector(&self.central.ns, &dir, "collector.log")?;
        let mut tw = Tierwatch {
            collector,
            agents: Vec::new(),
            _service: service,
            central: self.central.ns.clone(),
            dir: dir.clone(),
            restarts: 0,
        };
        tw.wait_ready()?;
        let wanted = |n: &Node| spec.only_nodes.as_ref().is_none_or(|only| only.contains(&n.id));
        for node in self.agent_nodes().filter(|n| wanted(n)) {
            if !pki.dir.join(format!("{}.crt", node.id)).is_file() {
                pki.node(&node.id)?;
            }
            let file = dir.join(format!("{}.yaml", node.id));
            std::fs::write(&file, self.agent_yaml(node, spec, ingest))?;
            let mut cmd =
                node.ns.command(crate::bin("tierwatch-agent"), &["--config", path(&file)?, "--log-format", "json"]);
            cmd.stdout(Stdio::null());
            tw.agents.push(Proc::spawn_command(&node.id, &mut cmd, &dir.join(format!("{}.log", node.id)))?);
        }
        let expected = tw.agents.len();
        let waited = crate::wait_for(Duration::from_secs(30), "every agent pushing", || {
            let v = tw.nodes().ok()?;
            let up = v["nodes"].as_array()?.iter().filter(|n| n["status"] == "up").count();
            (up >= expected).then_some(())
        });
        if let Err(e) = waited {
            let logs: Vec<String> =
                tw.agents.iter().take(3).map(|a| format!("--- {}\n{}", a.name, a.log_text())).collect();
            bail!("{e}\n--- collector\n{}\n{}", tw.collector.log_text(), logs.join("\n"));
        }
        Ok(tw)
    }

    /// The agent configuration [`Lab::start_tierwatch`] writes for `node`
    /// (relative paths: `pki/`, `spool/`), for tests that start it themselves.
    pub fn agent_config_for(&self, node: &str, spec: &SystemSpec) -> anyhow::Result<String> {
        let n = self.agent_nodes().find(|n| n.id == node).with_context(|| format!("no node {node} in the lab"))?;
        Ok(self.agent_yaml(n, spec, SocketAddrV4::new(addrs::CENTRAL, INGEST_PORT)))
    }

    fn agent_yaml(&self, node: &Node, spec: &SystemSpec, ingest: SocketAddrV4) -> String {
        let gateway = match node.id.strip_prefix('c').and_then(|i| i.parse::<usize>().ok()) {
            Some(i) => addrs::gateway(i),
            None => addrs::CENTRAL,
        };
        // The province probes every commune's WAN end: a cut link shows at the
        // collector even though the commune behind it cannot report.
        let mut extra = spec.extra_targets.clone();
        if node.id == "province" {
            for (i, c) in self.communes.iter().enumerate() {
                extra.push_str(&format!(
                    "  - name: {}\n    probe: icmp\n    host: {}\n",
                    c.id,
                    addrs::commune_wan(i + 1)
                ));
                if let Some(s) = spec.icmp_spacing {
                    extra.push_str(&format!("    spacing: {}\n", ms(s)));
                }
            }
        }
        format!(
            "node: {id}\nlog_level: {level}\ncollector:\n  endpoints: [\"https://{ingest}\"]\n  ca: pki/ca.crt\n  cert: pki/{id}.crt\n  key: pki/{id}.key\n  push_interval: {push}\n  timeout: 2s\n{collector_extra}\
             spool:\n  dir: spool/{id}\n{spool_extra}health: null\n{agent_extra}defaults:\n  interval: {interval}\n  timeout: {timeout}\n  jitter: 0ms\n  icmp_count: {count}\ntargets:\n\
             \x20 - name: provincial-gateway\n    probe: icmp\n    host: {gateway}\n\
             \x20 - name: provincial-service\n    probe: tcp\n    host: {service}\n    port: {SERVICE_PORT}\n{extra}",
            id = node.id,
            level = if spec.log_batches { "info,tierwatch_agent::spool::writer=debug,tierwatch_agent::deliver=debug" } else { "info" },
            push = ms(spec.push_interval),
            interval = ms(spec.probe_interval),
            timeout = ms(spec.probe_timeout),
            count = spec.icmp_count,
            service = addrs::SERVICE,
            extra = extra,
            collector_extra = spec.agent_collector_extra,
            spool_extra = spec.spool_extra,
            agent_extra = spec.agent_extra,
        )
    }
}

fn spawn_collector(ns: &super::netns::Netns, dir: &Path, log: &str) -> anyhow::Result<Proc> {
    let mut cmd = ns.command(
        crate::bin("tierwatch-collector"),
        &["--config", path(&dir.join("collector.yaml"))?, "--log-format", "json"],
    );
    cmd.stdout(Stdio::null());
    Proc::spawn_command("collector", &mut cmd, &dir.join(log))
}

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("non-UTF-8 path")
}

impl Tierwatch {
    /// Stops the agents (each drains its last batch to the collector), then the collector.
    pub fn stop(mut self) -> anyhow::Result<()> {
        for a in &mut self.agents {
            a.terminate(Duration::from_secs(30))?;
        }
        self.collector.terminate(Duration::from_secs(30))?;
        Ok(())
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        crate::wait_for(Duration::from_secs(10), "collector ready", || {
            self.get("/readyz").ok().filter(|(c, _)| *c == 200)
        })
        .with_context(|| self.collector.log_text())
        .map(|_| ())
    }

    /// Stops the collector (SIGTERM) and starts it again on the same state;
    /// its log goes to `collector-<n>.log`. Returns once it is ready.
    pub fn restart_collector(&mut self) -> anyhow::Result<()> {
        self.collector.terminate(Duration::from_secs(30))?;
        self.restarts += 1;
        self.collector = spawn_collector(&self.central, &self.dir, &format!("collector-{}.log", self.restarts))?;
        self.wait_ready()
    }

    /// Sends `method path` with a JSON body (and a bearer token) to the collector's HTTP port.
    pub fn send(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
        self.central.http_send(method, (addrs::CENTRAL, HTTP_PORT).into(), path, body, token)
    }

    /// `/api/v1/alerts` as JSON.
    pub fn alerts(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.get("/api/v1/alerts")?;
        if code != 200 {
            bail!("/api/v1/alerts answered {code}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// `/api/v1/security/events{query}`'s events; none when it cannot be read.
    pub fn security_events(&self, query: &str) -> Vec<serde_json::Value> {
        self.get(&format!("/api/v1/security/events{query}"))
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| v["events"].as_array().cloned())
            .unwrap_or_default()
    }

    /// GETs `path` from the collector's HTTP port, from inside `central`.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        self.central.http_get((addrs::CENTRAL, HTTP_PORT).into(), path)
    }

    /// `/api/v1/nodes` as JSON.
    pub fn nodes(&self) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.get("/api/v1/nodes")?;
        if code != 200 {
            bail!("/api/v1/nodes answered {code}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The value of the series of `name` that carries every label of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<Option<f64>> {
        let (_, text) = self.get("/metrics")?;
        Ok(find_sample(&text, name, labels))
    }

    /// Polls `metric` until `pred` holds for its value; returns it.
    pub fn wait_metric(
        &self,
        timeout: Duration,
        name: &str,
        labels: &[(&str, &str)],
        pred: impl Fn(f64) -> bool,
    ) -> anyhow::Result<f64> {
        crate::wait_for(timeout, &format!("{name}{labels:?} to satisfy the condition"), || {
            self.metric(name, labels).ok().flatten().filter(|v| pred(*v))
        })
    }
}

/// Finds `name{...labels...} value` in a text exposition.
pub fn find_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let all = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        all.then(|| value.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_samples_by_labels() {
        let text = "# HELP x y\ntierwatch_a{node=\"c1\",target=\"gw\"} 1\ntierwatch_a{node=\"c2\",target=\"gw\"} 0\ntierwatch_ab 5\n";
        assert_eq!(super::find_sample(text, "tierwatch_a", &[("node", "c2")]), Some(0.0));
        assert_eq!(super::find_sample(text, "tierwatch_a", &[("node", "c3")]), None);
        assert_eq!(super::find_sample(text, "tierwatch_ab", &[]), Some(5.0));
    }
}
