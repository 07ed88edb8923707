//! `agent.yaml`: who this node is, where the collector is, what to probe.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierwatch_protocol::NodeId;
use tierwatch_runtime::duration;
use tierwatch_yamlconf::{ConfigError, Problems};

use crate::push::{parse_endpoint, Endpoint};
use crate::spool::{FsyncPolicy, SpoolConfig};

mod target;
use crate::probe::Target;
pub use target::{TargetSpec, DEFAULT_STALL};

/// The file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This node's id; must match its certificate and `topology.yaml`.
    pub node: String,
    /// Log filter when `RUST_LOG` is unset.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    pub collector: CollectorSpec,
    /// Where batches wait until the collector has them.
    #[serde(default)]
    pub spool: RawSpool,
    /// Local health and `/metrics` endpoint; `null` turns it off.
    #[serde(default = "default_health")]
    pub health: Option<HealthSpec>,
    /// Node health sampling (CPU, memory, disks, load, WAN counters); `null` turns it off.
    #[serde(default = "default_node_health")]
    pub node_health: Option<NodeHealthSpec>,
    /// Defaults for every target.
    #[serde(default)]
    pub defaults: Defaults,
    #[serde(default)]
    pub targets: Vec<TargetSpec>,
    /// Security sensors (docs/security.md).
    #[serde(default)]
    pub sensors: crate::sensor::RawSensors,
}

/// How to reach the collector.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSpec {
    /// `https://host:port` of each collector; the first reachable one is used.
    pub endpoints: Vec<String>,
    /// TLS name to verify instead of the endpoint's host (when connecting by address).
    #[serde(default)]
    pub server_name: Option<String>,
    /// CA certificate that signed the collector's certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM), from `tierwatch-collector pki issue`.
    pub cert: PathBuf,
    /// This node's key (PEM).
    pub key: PathBuf,
    /// How often measured data is pushed.
    #[serde(default = "default_push_interval", with = "duration::serde")]
    pub push_interval: Duration,
    /// Time limit for one push, connect to acknowledgement.
    #[serde(default = "default_push_timeout", with = "duration::serde")]
    pub timeout: Duration,
    /// `failover`: the first reachable endpoint gets each batch; `all`: every
    /// endpoint gets every batch (a high-availability pair).
    #[serde(default)]
    pub send_to: SendTo,
    /// Cap on the backlog replayed after an outage, so a recovering link is
    /// not flooded; fresh batches are never held back. 0: no cap.
    #[serde(default = "default_replay_rate")]
    pub replay_bytes_per_second: u64,
}

/// Which endpoints get each batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SendTo {
    #[default]
    Failover,
    All,
}

/// The on-disk spool (`spool:` in the file).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    #[serde(default = "default_spool_dir")]
    pub dir: PathBuf,
    /// Disk space the spool may use; the oldest batches are dropped beyond.
    #[serde(default = "default_spool_max_bytes")]
    pub max_bytes: u64,
    /// Unsent batches older than this are dropped (keep it below the collector's ingest.limits.max_age_ms).
    #[serde(default = "default_spool_max_age", with = "duration::serde")]
    pub max_age: Duration,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    #[serde(default = "default_fsync")]
    pub fsync: FsyncPolicy,
    /// With `fsync: always`, the longest a measurement or batch waits for its fdatasync.
    #[serde(default = "default_commit_interval", with = "duration::serde")]
    pub commit_interval: Duration,
    /// Batches held in memory when the disk refuses writes.
    #[serde(default = "default_memory_batches")]
    pub memory_batches: usize,
}

impl Default for RawSpool {
    fn default() -> Self {
        RawSpool {
            dir: default_spool_dir(),
            max_bytes: default_spool_max_bytes(),
            max_age: default_spool_max_age(),
            segment_bytes: default_segment_bytes(),
            fsync: default_fsync(),
            commit_interval: default_commit_interval(),
            memory_batches: default_memory_batches(),
        }
    }
}

fn default_spool_dir() -> PathBuf {
    PathBuf::from("/var/lib/tierwatch-agent/spool")
}
fn default_spool_max_bytes() -> u64 {
    // Measured: a 10-target node spools ~47 MB a day; this holds 11 days.
    512 << 20
}
fn default_spool_max_age() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_segment_bytes() -> u64 {
    4 << 20
}
fn default_fsync() -> FsyncPolicy {
    FsyncPolicy::Always
}
fn default_commit_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_memory_batches() -> usize {
    360 // an hour at 10 s
}
fn default_replay_rate() -> u64 {
    256 * 1024
}

/// The local health endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub listen: SocketAddr,
}

/// Node health sampling.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHealthSpec {
    #[serde(default = "default_node_interval", with = "duration::serde")]
    pub interval: Duration,
    /// The WAN interface; default: the interface of the default route.
    #[serde(default)]
    pub wan_interface: Option<String>,
    /// Mount points whose free space is reported.
    #[serde(default = "default_filesystems")]
    pub filesystems: Vec<PathBuf>,
}

fn default_node_health() -> Option<NodeHealthSpec> {
    Some(NodeHealthSpec { interval: default_node_interval(), wan_interface: None, filesystems: default_filesystems() })
}
fn default_node_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_filesystems() -> Vec<PathBuf> {
    vec![PathBuf::from("/")]
}

/// Defaults applied to targets that do not set their own.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    #[serde(default = "default_interval", with = "duration::serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
    /// Up to this much random delay is added to each round, so agents do not probe in lockstep.
    #[serde(default = "default_jitter", with = "duration::serde")]
    pub jitter: Duration,
    /// Echo requests per ICMP round.
    #[serde(default = "default_count")]
    pub icmp_count: u32,
    /// A file of defacement phrases added to the shipped ones (one per
    /// line, the format of `config/defacement-words.txt`).
    #[serde(default)]
    pub defacement_words: Option<PathBuf>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            interval: default_interval(),
            timeout: default_timeout(),
            jitter: default_jitter(),
            icmp_count: default_count(),
            defacement_words: None,
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}
fn default_health() -> Option<HealthSpec> {
    Some(HealthSpec { listen: SocketAddr::from(([127, 0, 0, 1], 9401)) })
}
fn default_push_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_push_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_jitter() -> Duration {
    Duration::from_secs(1)
}
fn default_count() -> u32 {
    20
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub node: NodeId,
    pub log_level: String,
    pub endpoints: Vec<Endpoint>,
    pub server_name: Option<String>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub push_interval: Duration,
    pub push_timeout: Duration,
    pub send_to: SendTo,
    pub replay_bytes_per_second: u64,
    pub spool: SpoolConfig,
    pub health: Option<SocketAddr>,
    pub node_health: Option<NodeHealthSpec>,
    pub targets: Vec<Target>,
    /// The LAN sensor, when an interface is configured.
    pub lan: Option<crate::sensor::LanSpec>,
    /// The host sensors, unless all are off.
    pub host: Option<crate::sensor::HostSpec>,
    /// SHA-256 of the effective configuration, sent with every batch.
    pub hash: [u8; 32],
    /// The push client's TLS, loaded from `collector.ca`, `cert` and `key`
    /// (none only from [`Config::load_without_tls`]).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// The push client's TLS configuration, or `None` with the problem
/// recorded at the key naming the file at fault (none when a file is
/// missing: that problem is already recorded).
fn client_tls(ca: &Path, cert: &Path, key: &Path, p: &mut Problems) -> Option<std::sync::Arc<rustls::ClientConfig>> {
    if ![ca, cert, key].iter().all(|f| f.is_file()) {
        return None;
    }
    match crate::push::client_config(ca, cert, key) {
        Ok(c) => Some(c),
        Err(e) => {
            // Errors of rustls name no file: say which ones were used.
            let (at, message) = match e.path() {
                Some(f) if f == ca => ("collector.ca", e.to_string()),
                Some(f) if f == key => ("collector.key", e.to_string()),
                Some(_) => ("collector.cert", e.to_string()),
                None => ("collector.cert", format!("{} with key {}: {e}", cert.display(), key.display())),
            };
            p.push(at, message);
            None
        }
    }
}

impl Config {
    /// Loads and validates `file`, its TLS material included, reporting
    /// every problem at once.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let (raw, text, p) = tierwatch_yamlconf::load_all::<RawConfig>(file)?;
        Self::from_raw(raw, file, &text, true, p)
    }

    /// [`Config::load`] without loading the certificate and key: for running
    /// one probe by hand (`tierwatch-agent probe`), which pushes nothing and
    /// must work on a node whose certificate is the problem.
    pub fn load_without_tls(file: &Path) -> Result<Config, ConfigError> {
        let (raw, text, p) = tierwatch_yamlconf::load_all::<RawConfig>(file)?;
        Self::from_raw(raw, file, &text, false, p)
    }

    /// Parses and validates config text (`file` names it in errors, and anchors relative paths).
    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let (raw, p) = tierwatch_yamlconf::parse_all::<RawConfig>(file, text)?;
        Self::from_raw(raw, file, text, true, p)
    }

    /// Validates `raw`; `p` holds the file's type errors already (all problems are reported together).
    fn from_raw(
        raw: RawConfig,
        file: &Path,
        text: &str,
        load_tls: bool,
        mut p: Problems,
    ) -> Result<Config, ConfigError> {
        let node = NodeId::new(&raw.node).map_err(|e| p.push("node", e.to_string())).ok();
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log_level) {
            p.push("log_level", format!("{:?} is not a log filter: {e}", raw.log_level));
        }
        let c = &raw.collector;
        let mut endpoints = Vec::new();
        if c.endpoints.is_empty() {
            p.push("collector.endpoints", "list at least one collector endpoint (https://host:7443)");
        }
        for (i, e) in c.endpoints.iter().enumerate() {
            match parse_endpoint(e) {
                Ok(ep) => endpoints.push(ep),
                Err(msg) => p.push(format!("collector.endpoints[{i}]"), msg),
            }
        }
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |q: &Path| if q.is_absolute() { q.to_path_buf() } else { base.join(q) };
        let (ca, cert, key) = (resolve(&c.ca), resolve(&c.cert), resolve(&c.key));
        for (k, path) in [("collector.ca", &ca), ("collector.cert", &cert), ("collector.key", &key)] {
            if !path.is_file() {
                p.push(k, format!("file {} does not exist", path.display()));
            }
        }
        if c.push_interval < Duration::from_millis(100) {
            p.push("collector.push_interval", "must be at least 100ms");
        }
        if c.timeout < Duration::from_millis(100) {
            p.push("collector.timeout", "must be at least 100ms");
        }
        if c.send_to == SendTo::All && endpoints.len() > 16 {
            p.push("collector.endpoints", "send_to: all takes at most 16 endpoints");
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in endpoints.iter().enumerate() {
            if !seen.insert((e.host.clone(), e.port)) {
                p.push(format!("collector.endpoints[{i}]"), format!("{} is listed twice", e.url));
            }
        }
        for ep in &endpoints {
            let name = c.server_name.clone().unwrap_or_else(|| ep.host.clone());
            if rustls_pki_types::ServerName::try_from(name.clone()).is_err() {
                p.push("collector.server_name", format!("{name:?} is not a valid TLS server name"));
            }
        }
        let sp = &raw.spool;
        if sp.segment_bytes < 4096 {
            p.push("spool.segment_bytes", "must be at least 4096");
        }
        if sp.max_bytes < 2 * sp.segment_bytes.max(4096) {
            p.push(
                "spool.max_bytes",
                format!("must be at least two segments ({} bytes)", 2 * sp.segment_bytes.max(4096)),
            );
        }
        if sp.max_age < Duration::from_secs(60) {
            p.push("spool.max_age", "must be at least 1m");
        }
        if sp.commit_interval < Duration::from_millis(10) || sp.commit_interval > Duration::from_secs(60) {
            p.push("spool.commit_interval", "must be between 10ms and 1m");
        }
        if let Some(n) = &raw.node_health {
            if n.interval < Duration::from_secs(1) {
                p.push("node_health.interval", "must be at least 1s");
            }
            for (i, fs) in n.filesystems.iter().enumerate() {
                if !fs.is_absolute() {
                    p.push(
                        format!("node_health.filesystems[{i}]"),
                        format!("{} is not an absolute mount point", fs.display()),
                    );
                }
            }
        }
        let d = &raw.defaults;
        if d.interval < Duration::from_millis(100) {
            p.push("defaults.interval", "must be at least 100ms");
        }
        let lan = crate::sensor::validate(&raw.sensors, &mut p);
        let host = crate::sensor::validate_host(&raw.sensors.host, base, &resolve(&raw.spool.dir), file, &mut p);
        let mut vocabulary = crate::probe::deface::Vocabulary::shipped();
        if let Some(f) = &d.defacement_words {
            let path = if f.is_absolute() { f.clone() } else { base.join(f) };
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    for e in vocabulary.extend(&text).err().unwrap_or_default() {
                        p.push("defaults.defacement_words", format!("{}:{e}", path.display()));
                    }
                }
                Err(e) => p.push("defaults.defacement_words", format!("{}: {e}", path.display())),
            }
        }
        let vocabulary = std::sync::Arc::new(vocabulary);
        let mut targets = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, t) in raw.targets.iter().enumerate() {
            if let Some(target) = target::validate(t, i, d, &vocabulary, base, &mut names, &mut p) {
                targets.push(target);
            }
        }
        // Loaded here, once: a reload with a bad certificate or key is
        // refused before the running agent stops, and falling back to the
        // previous configuration reads no file.
        let tls = if load_tls {
            let tls = client_tls(&ca, &cert, &key, &mut p);
            Some(p.into_value(file, text, "collector.cert", tls)?)
        } else {
            p.into_result(file, text)?;
            None
        };
        let json = serde_json::to_vec(&raw).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, &json);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest.as_ref());
        Ok(Config {
            file: file.to_path_buf(),
            node: match node {
                Some(n) => n,
                None => unreachable!("a bad node id is recorded as a problem and returned above"),
            },
            log_level: raw.log_level,
            endpoints,
            server_name: raw.collector.server_name,
            ca,
            cert,
            key,
            push_interval: raw.collector.push_interval,
            push_timeout: raw.collector.timeout,
            send_to: raw.collector.send_to,
            replay_bytes_per_second: raw.collector.replay_bytes_per_second,
            spool: SpoolConfig {
                dir: resolve(&raw.spool.dir),
                max_bytes: raw.spool.max_bytes,
                max_age: raw.spool.max_age,
                segment_bytes: raw.spool.segment_bytes,
                fsync: raw.spool.fsync,
                commit_interval: raw.spool.commit_interval,
                memory_batches: raw.spool.memory_batches,
            },
            health: raw.health.map(|h| h.listen),
            node_health: raw.node_health,
            lan,
            host,
            targets,
            hash,
            tls,
        })
    }

    /// Looks a target up by name.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::ProbeSpec;
    use crate::sensor::router_advert::Router;

    /// A real CA and client certificate (`ca.crt`, `n.crt`, `n.key`): the
    /// push client's TLS is loaded with the configuration.
    fn write_pki(dir: &Path) {
        use tierwatch_collector::pki;
        pki::init(dir, "test CA", 1, true).unwrap();
        let issued = pki::issue(dir, &NodeId::new("nui-cam").unwrap(), &pki::Usage::Client, 1, true).unwrap();
        std::fs::rename(issued.cert, dir.join("n.crt")).unwrap();
        std::fs::rename(issued.key, dir.join("n.key")).unwrap();
    }

    const GOOD: &str = "\
node: nui-cam
collector:
  endpoints: [\"https://collector.example:7443\"]
  ca: ca.crt
  cert: n.crt
  key: n.key
targets:
  - name: gw
    probe: icmp
    host: 10.1.0.1
  - name: portal
    probe: tcp
    host: portal.example
    port: 443
    interval: 1m
";

    #[test]
    fn good_config_resolves_defaults() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let c = Config::parse(&dir.path().join("agent.yaml"), GOOD).unwrap();
        assert_eq!(c.node.as_str(), "nui-cam");
        assert_eq!(c.endpoints[0].port, 7443);
        assert_eq!(
            c.targets[0].spec,
            ProbeSpec::Icmp {
                count: 20,
                spacing: Duration::from_millis(750),
                fast_down: true,
                stall: DEFAULT_STALL,
                keepalive: None
            }
        );
        assert_eq!(c.targets[1].interval, Duration::from_secs(60));
        assert_eq!(c.ca, dir.path().join("ca.crt"));
        assert_eq!(c.health, Some(SocketAddr::from(([127, 0, 0, 1], 9401))));
    }

    #[test]
    fn every_problem_is_located() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let text = GOOD.replace("port: 443", "count: 3").replace("https://collector.example:7443", "http://x");
        let err = Config::parse(&dir.path().join("agent.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("agent.yaml:3:3: collector.endpoints[0]: \"http://x\" must start with https://"), "{err}");
        assert!(err.contains("agent.yaml:14:5: targets[1].count: tcp probes do not take count (only icmp)"), "{err}");
        assert!(err.contains("targets[1].port: tcp probes need a port"), "{err}");
    }

    #[test]
    fn lan_router_allowlist_takes_addresses_and_macs() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let lan = "sensors:\n  lan:\n    interface: lan0\n    router_advert:\n      allow: [\"fe80::1\", \"02:00:00:00:00:01\"]\n";
        let c = Config::parse(&dir.path().join("agent.yaml"), &format!("{GOOD}{lan}")).unwrap();
        let routers = c.lan.unwrap().routers;
        assert_eq!(routers, [Router::Addr("fe80::1".parse().unwrap()), Router::Mac([2, 0, 0, 0, 0, 1])]);
        let bad = lan.replace("\"fe80::1\"", "fe80::zz");
        let err = Config::parse(&dir.path().join("agent.yaml"), &format!("{GOOD}{bad}")).unwrap_err().to_string();
        assert!(
            err.contains("agent.yaml:20:7: sensors.lan.router_advert.allow[0]: \"fe80::zz\" is not an IPv6 address"),
            "{err}"
        );
    }

    #[test]
    fn type_errors_carry_line_and_key() {
        let text = GOOD.replace("port: 443", "port: https");
        let err = Config::parse(Path::new("agent.yaml"), &text).unwrap_err().to_string();
        assert!(err.starts_with("agent.yaml:14:11: targets[1].port: invalid type"), "{err}");
    }

    /// The shipped example parses; its only problems are the certificate
    /// files, which exist only on a real node.
    #[test]
    fn shipped_example_is_valid() {
        for name in ["agent.yaml", "agent-province.yaml"] {
            let file = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config")).join(name);
            let err = Config::load(&file).unwrap_err();
            let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
            assert_eq!(paths, ["collector.ca", "collector.cert", "collector.key"], "{name}: {err}");
            assert!(err.problems.iter().all(|p| p.message.contains("does not exist")));
        }
    }

    #[test]
    fn default_spacing_fits_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let text = GOOD.replace("    host: 10.1.0.1\n", "    host: 10.1.0.1\n    interval: 2s\n    count: 3\n");
        let c = Config::parse(&dir.path().join("agent.yaml"), &text).unwrap();
        let ProbeSpec::Icmp { count, spacing, .. } = c.targets[0].spec else { panic!("icmp") };
        assert!(spacing * (count - 1) + c.targets[0].timeout <= c.targets[0].interval, "{spacing:?}");
        let text = text.replace("interval: 2s", "interval: 2s\n    spacing: 1s");
        let err = Config::parse(&dir.path().join("agent.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("targets[0].spacing: 3 requests 1s apart plus the 2s timeout do not fit"), "{err}");
    }

    /// Keepalives by default only where a cut must page fast; `0s` turns them off.
    #[test]
    fn keepalives_default_to_fast_probed_targets() {
        let dir = tempfile::tempdir().unwrap();
        write_pki(dir.path());
        let keepalive = |extra: &str| {
            let text = GOOD.replace("    host: 10.1.0.1\n", &format!("    host: 10.1.0.1\n{extra}"));
            let c = Config::parse(&dir.path().join("agent.yaml"), &text).unwrap();
            let ProbeSpec::Icmp { keepalive, stall, .. } = c.targets[0].spec else { panic!("icmp") };
            assert_eq!(stall, DEFAULT_STALL);
            keepalive
        };
        assert_eq!(keepalive("    interval: 5s\n"), Some(Duration::from_millis(500)));
        assert_eq!(keepalive("    interval: 60s\n"), None);
        assert_eq!(keepalive("    interval: 60s\n    keepalive: 1s\n"), Some(Duration::from_secs(1)));
        assert_eq!(keepalive("    interval: 5s\n    keepalive: 0s\n"), None);
        let text = GOOD.replace("    host: 10.1.0.1\n", "    host: 10.1.0.1\n    keepalive: 10ms\n    stall: 100ms\n");
        let err = Config::parse(&dir.path().join("agent.yaml"), &text).unwrap_err().to_string();
        assert!(err.contains("targets[0].keepalive: must be 0s (none) or between 100ms and 10s"), "{err}");
        assert!(err.contains("targets[0].stall: must be between 250ms and 30s"), "{err}");
    }
}
