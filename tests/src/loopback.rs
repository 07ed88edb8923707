//! A collector and agents on loopback, configured per test: no root, no lab.
//! Logs are JSON so tests can read what each process did (`events`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::{bin, free_port, http_get, wait_for, Pki, Proc};

/// Topology of the loopback tests: a province and two communes.
pub const TOPOLOGY: &str = include_str!("../fixtures/loopback-topology.yaml");

/// A working directory with PKI, topology and config files.
pub struct Loopback {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub ingest: u16,
    pub http: u16,
}

impl Loopback {
    /// PKI for the collector and every topology node; ports picked.
    pub fn new() -> anyhow::Result<Loopback> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new(&dir.path().join("pki"))?;
        for n in ["an-giang", "nui-cam", "giang-thanh"] {
            pki.node(n)?;
        }
        std::fs::write(dir.path().join("topology.yaml"), TOPOLOGY)?;
        Ok(Loopback { dir, pki, ingest: free_port(), http: free_port() })
    }

    /// Where files go.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The collector's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.http).into()
    }

    /// Writes collector.yaml (with `extra` top-level YAML), logging each
    /// stored batch, and starts the collector; waits until it is ready.
    pub fn start_collector(&self, log: &str, extra: &str) -> anyhow::Result<Proc> {
        self.start_collector_with(log, extra, &[])
    }

    /// [`Loopback::start_collector`] with environment variables set.
    pub fn start_collector_with(&self, log: &str, extra: &str, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let file = self.collector_config(extra)?;
        let mut cmd = Command::new(bin("tierwatch-collector"));
        cmd.args(["--config", file.to_str().context("utf-8")?, "--log-format", "json"]).stdout(Stdio::null());
        cmd.envs(env.iter().copied());
        let p = Proc::spawn_command("collector", &mut cmd, &self.path(log))?;
        let addr = self.http_addr();
        wait_for(Duration::from_secs(10), "collector /readyz", || {
            http_get(addr, "/readyz").ok().filter(|(c, _)| *c == 200)
        })
        .with_context(|| p.log_text())?;
        Ok(p)
    }

    /// Writes collector.yaml with `extra` top-level YAML; returns its path.
    pub fn collector_config(&self, extra: &str) -> anyhow::Result<PathBuf> {
        let file = self.path("collector.yaml");
        std::fs::write(
            &file,
            format!(
                "log_level: info,tierwatch_collector::ingest=debug\ntopology: topology.yaml\ningest:\n  listen: 127.0.0.1:{}\n  ca: pki/ca.crt\n  cert: pki/collector.crt\n  key: pki/collector.key\nhttp:\n  listen: 127.0.0.1:{}\nnode_down_after: 5s\nstate_dir: state\n{extra}",
                self.ingest, self.http
            ),
        )?;
        Ok(file)
    }

    /// Writes `<node>.yaml`: pushes every `push`, probes a TCP port on
    /// loopback, logs each spooled batch, spool in `spool/<node>` unless
    /// `spool_dir` is given; `collector_extra` goes inside `collector:`,
    /// `extra` at the end (more targets).
    pub fn agent_config(
        &self,
        node: &str,
        push: &str,
        collector_extra: &str,
        spool_dir: Option<&Path>,
        extra: &str,
    ) -> anyhow::Result<PathBuf> {
        let spool = match spool_dir {
            Some(d) => d.display().to_string(),
            None => format!("spool/{node}"),
        };
        let file = self.path(&format!("{node}.yaml"));
        std::fs::write(
            &file,
            format!(
                "node: {node}\nlog_level: info,tierwatch_agent::spool::writer=debug,tierwatch_agent::deliver=debug\ncollector:\n  endpoints: [\"https://127.0.0.1:{ingest}\"]\n  ca: pki/ca.crt\n  cert: pki/{node}.crt\n  key: pki/{node}.key\n  push_interval: {push}\n  timeout: 2s\n{collector_extra}\
                 spool:\n  dir: {spool}\nhealth:\n  listen: 127.0.0.1:{health}\nnode_health: null\n\
                 defaults:\n  interval: 200ms\n  timeout: 100ms\n  jitter: 0ms\ntargets:\n  - name: collector-http\n    probe: tcp\n    host: 127.0.0.1\n    port: {http}\n{extra}",
                ingest = self.ingest,
                http = self.http,
                health = free_port(),
            ),
        )?;
        Ok(file)
    }

    /// Starts an agent on a config from [`Loopback::agent_config`], logging to `log`.
    pub fn start_agent(&self, name: &str, config: &Path, log: &str) -> anyhow::Result<Proc> {
        self.start_agent_with(name, config, log, &[])
    }

    /// [`Loopback::start_agent`] with environment variables set.
    pub fn start_agent_with(&self, name: &str, config: &Path, log: &str, env: &[(&str, &str)]) -> anyhow::Result<Proc> {
        let mut cmd = Command::new(bin("tierwatch-agent"));
        cmd.args(["--config", config.to_str().context("utf-8")?, "--log-format", "json"]).stdout(Stdio::null());
        cmd.envs(env.iter().copied());
        Proc::spawn_command(name, &mut cmd, &self.path(log))
    }

    /// The agent's health address, read back from its config.
    pub fn agent_health(&self, config: &Path) -> anyhow::Result<SocketAddr> {
        let text = std::fs::read_to_string(config)?;
        let line = text.lines().find(|l| l.trim_start().starts_with("listen:")).context("no health listen")?;
        Ok(line.trim_start().trim_start_matches("listen:").trim().parse()?)
    }
}
