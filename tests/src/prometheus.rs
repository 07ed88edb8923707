//! A real Prometheus (Debian's `prometheus`) for end-to-end tests: started
//! with a throw-away TSDB, optionally as a remote-write receiver accepting
//! out-of-order samples, queried through its HTTP API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::lab::netns::Netns;
use crate::{http_get, wait_for, Proc};

/// A running Prometheus.
pub struct Prometheus {
    pub proc: Proc,
    pub addr: SocketAddr,
    ns: Option<Netns>,
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Prometheus {
    /// Starts Prometheus listening on `addr` (inside `ns` if given) with its
    /// data in `dir`. `config` is the YAML body of prometheus.yml; with
    /// `receiver`, remote write is enabled.
    pub fn start(
        dir: &Path,
        ns: Option<&Netns>,
        addr: SocketAddr,
        config: &str,
        receiver: bool,
    ) -> anyhow::Result<Prometheus> {
        std::fs::create_dir_all(dir)?;
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config)?;
        let data = dir.join("data");
        let mut args = vec![
            format!("--config.file={}", file.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".to_string(),
        ];
        if receiver {
            args.push("--web.enable-remote-write-receiver".into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = dir.join("prometheus.log");
        let mut cmd = match ns {
            Some(ns) => ns.command("prometheus", &argv),
            None => {
                let mut c = std::process::Command::new("prometheus");
                c.args(&argv);
                c
            }
        };
        cmd.stdout(std::process::Stdio::null());
        let proc = Proc::spawn_command("prometheus", &mut cmd, &log)?;
        let p = Prometheus { proc, addr, ns: ns.cloned() };
        wait_for(Duration::from_secs(30), "Prometheus ready", || p.get("/-/ready").ok().filter(|(c, _)| *c == 200))
            .with_context(|| p.proc.log_text())?;
        Ok(p)
    }

    /// GETs `path` from Prometheus.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        match &self.ns {
            Some(ns) => ns.http_get(self.addr, path),
            None => http_get(self.addr, path),
        }
    }

    /// Runs an instant query at `time` (Unix seconds) and returns `data`.
    pub fn query(&self, promql: &str, time: f64) -> anyhow::Result<serde_json::Value> {
        let (code, body) = self.get(&format!("/api/v1/query?query={}&time={time:.3}", urlencode(promql)))?;
        let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("query answer: {body}"))?;
        if code != 200 || v["status"] != "success" {
            bail!("query {promql:?} failed ({code}): {body}");
        }
        Ok(v["data"].clone())
    }

    /// The raw samples (timestamp ms, value) of the single series selected by
    /// `selector` within `window` before `time`.
    pub fn samples(&self, selector: &str, window: Duration, time: f64) -> anyhow::Result<Vec<(i64, f64)>> {
        let data = self.query(&format!("{selector}[{}s]", window.as_secs()), time)?;
        let result = data["result"].as_array().context("no result")?;
        if result.len() != 1 {
            bail!("{selector} selects {} series, not 1: {data}", result.len());
        }
        let values = result[0]["values"].as_array().context("no values")?;
        values
            .iter()
            .map(|p| {
                let t = p[0].as_f64().context("timestamp")?;
                let v: f64 = p[1].as_str().context("value")?.parse()?;
                Ok(((t * 1000.0).round() as i64, v))
            })
            .collect()
    }

    /// A scalar result of `promql` (the first element of a vector).
    pub fn scalar(&self, promql: &str, time: f64) -> anyhow::Result<Option<f64>> {
        let data = self.query(promql, time)?;
        Ok(data["result"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }
}
