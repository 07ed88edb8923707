//! Who gets the pages in the lab: a webhook receiver (`tw-labnet hooks`) and
//! a real Alertmanager (Debian's `prometheus-alertmanager`), each inside a
//! namespace of the lab, read back by the test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};

use super::netns::Netns;
use crate::Proc;

/// A webhook receiver: every notification with the time it arrived.
pub struct Hooks {
    _proc: Proc,
    got: Arc<Mutex<Vec<(i64, serde_json::Value)>>>,
    pub addr: SocketAddr,
}

impl Hooks {
    /// Starts the receiver on `addr` inside `ns`; logs in `dir`.
    pub fn start(ns: &Netns, addr: SocketAddr, dir: &Path) -> anyhow::Result<Hooks> {
        let mut cmd = ns.command(crate::bin("tw-labnet"), &["hooks", &addr.to_string()]);
        cmd.stdout(Stdio::piped());
        let mut proc = Proc::spawn_command("hooks", &mut cmd, &dir.join("hooks.log"))?;
        let mut lines = BufReader::new(proc.take_stdout().context("hooks stdout")?).lines();
        match lines.next() {
            Some(Ok(l)) if l == "ready" => {}
            other => bail!("webhook receiver did not start ({other:?}): {}", proc.log_text()),
        }
        let got: Arc<Mutex<Vec<(i64, serde_json::Value)>>> = Arc::default();
        let keep = got.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let Some((at, body)) = line.split_once(' ') else { continue };
                let (Ok(at), Ok(v)) = (at.parse::<i64>(), serde_json::from_str(body)) else { continue };
                keep.lock().unwrap_or_else(|p| p.into_inner()).push((at, v));
            }
        });
        Ok(Hooks { _proc: proc, got, addr })
    }

    /// Every notification so far: (arrival ms, JSON body).
    pub fn received(&self) -> Vec<(i64, serde_json::Value)> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `"<event> <incident key>"` of every notification so far, in arrival order.
    pub fn events(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|(_, v)| {
                format!("{} {}", v["event"].as_str().unwrap_or("?"), v["incident"]["key"].as_str().unwrap_or("?"))
            })
            .collect()
    }

    /// The incident keys of the `opened` notifications (the pages) so far.
    pub fn pages(&self) -> Vec<String> {
        self.events().iter().filter_map(|e| e.strip_prefix("opened ").map(str::to_string)).collect()
    }
}

/// A real Alertmanager inside a namespace.
pub struct Alertmanager {
    _proc: Proc,
    ns: Netns,
    pub addr: SocketAddr,
}

impl Alertmanager {
    /// Starts it on `addr` inside `ns` with a route to nowhere; `None` (with
    /// a message) when it is not installed outside CI.
    pub fn start(ns: &Netns, addr: SocketAddr, dir: &Path) -> anyhow::Result<Option<Alertmanager>> {
        Self::start_with(ns, addr, dir, "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    }

    /// As [`Alertmanager::start`] with the configuration `config` (YAML).
    pub fn start_with(ns: &Netns, addr: SocketAddr, dir: &Path, config: &str) -> anyhow::Result<Option<Alertmanager>> {
        if !crate::have("prometheus-alertmanager") {
            if std::env::var("CI").is_ok() {
                bail!("prometheus-alertmanager must be installed in CI (scripts/test.sh installs it)");
            }
            eprintln!("SKIPPED: prometheus-alertmanager is not installed (scripts/test.sh installs it)");
            return Ok(None);
        }
        let dir = dir.join("alertmanager");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("am.yml"), config)?;
        let config = format!("--config.file={}", dir.join("am.yml").display());
        let storage = format!("--storage.path={}", dir.display());
        let listen = format!("--web.listen-address={addr}");
        let mut cmd = ns.command(
            "prometheus-alertmanager",
            &[&config, &storage, &listen, "--cluster.listen-address=", "--log.level=warn"],
        );
        cmd.stdout(Stdio::null());
        let proc = Proc::spawn_command("alertmanager", &mut cmd, &dir.join("alertmanager.log"))?;
        let am = Alertmanager { _proc: proc, ns: ns.clone(), addr };
        crate::wait_for(std::time::Duration::from_secs(20), "Alertmanager up", || am.alerts().ok())?;
        Ok(Some(am))
    }

    /// The alerts Alertmanager holds (`GET /api/v2/alerts`: active, silenced, inhibited).
    pub fn alerts(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let (code, body) = self.ns.http_get(self.addr, "/api/v2/alerts")?;
        if code != 200 {
            bail!("Alertmanager answered {code}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// The `incident` label of every alert it holds, sorted.
    pub fn incidents(&self) -> anyhow::Result<Vec<String>> {
        let mut v: Vec<String> =
            self.alerts()?.iter().filter_map(|a| a["labels"]["incident"].as_str().map(str::to_string)).collect();
        v.sort();
        Ok(v)
    }
}
