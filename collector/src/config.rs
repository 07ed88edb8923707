//! `collector.yaml`: listeners, TLS material, topology file, limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tierwatch_protocol::Limits;
use tierwatch_runtime::duration;
use tierwatch_yamlconf::{ConfigError, Problems};

use crate::alert::rules::Rules;
use crate::remote_write::{RawRemoteWrite, RemoteWrite};
use crate::topology::Topology;

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Log filter when `RUST_LOG` is unset (`info`, `debug`, `tierwatch_collector=debug`, ...).
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// Language of notifications, incident summaries and the status page: `vi` or `en`.
    #[serde(default)]
    pub language: crate::i18n::Language,
    /// Offset of the local time shown to people (`+07:00`); default UTC.
    #[serde(default)]
    pub utc_offset: Option<String>,
    /// Path of `topology.yaml`, relative to this file.
    pub topology: PathBuf,
    pub ingest: RawIngest,
    #[serde(default)]
    pub http: RawHttp,
    /// When a node that has not pushed for this long is reported down.
    #[serde(default = "default_node_down_after", with = "duration::serde")]
    pub node_down_after: Duration,
    /// Series not refreshed for this long disappear from `/metrics`.
    #[serde(default = "default_stale_after", with = "duration::serde")]
    pub stale_after: Duration,
    /// Where the state database lives (exactly-once ledger, remote_write queues).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Receivers of every stored sample, with its original timestamp.
    #[serde(default)]
    pub remote_write: Vec<RawRemoteWrite>,
    /// Alert rules (`rules.yaml`), relative to this file; none: no alerting.
    #[serde(default)]
    pub rules: Option<PathBuf>,
    /// Who gets the incidents.
    #[serde(default)]
    pub notify: Vec<crate::alert::notify::RawReceiver>,
    /// Planned maintenance: incidents of the nodes matched are not paged.
    #[serde(default)]
    pub maintenance: Vec<crate::alert::maintenance::RawWindow>,
    /// Who may change state through the API (maintenance, acknowledgements).
    #[serde(default)]
    pub api: RawApi,
}

/// Access to the API's changing endpoints (`POST`, `DELETE`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// File holding the bearer token; without a token, nothing can change state.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Or the environment variable holding it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Listing security events (their evidence) takes the token too.
    #[serde(default)]
    pub protect_security_events: bool,
}

/// A guessable token is no token.
const MIN_TOKEN_LEN: usize = 16;

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tierwatch-collector")
}

/// The mTLS ingest listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    #[serde(default = "default_ingest_listen")]
    pub listen: SocketAddr,
    /// CA that signs agent certificates (PEM).
    pub ca: PathBuf,
    /// The collector's own certificate chain (PEM), with serverAuth.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Revocation list of the CA (PEM, `pki revoke` writes it): a client
    /// certificate on it is refused at the handshake.
    #[serde(default)]
    pub crl: Option<PathBuf>,
    /// Largest request body accepted; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// How long a client may take for the TLS handshake.
    #[serde(default = "default_handshake_timeout", with = "duration::serde")]
    pub handshake_timeout: Duration,
    #[serde(default)]
    pub limits: Limits,
    /// Time for a push's body to arrive, once its header has.
    #[serde(default = "default_ingest_request_timeout", with = "duration::serde")]
    pub request_timeout: Duration,
    /// Bytes of push bodies read and decoded at once, over all nodes.
    #[serde(default = "default_decode_budget")]
    pub decode_budget_bytes: usize,
    #[serde(default)]
    pub connections: RawConnections,
    /// What one node may use.
    #[serde(default)]
    pub quotas: crate::admission::Quotas,
}

/// Connection limits of a listener (`ingest.connections`, `http.connections`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConnections {
    /// Open connections at most.
    pub max: usize,
    /// Open connections from one source address at most.
    pub per_source: usize,
    /// Time to send a request header.
    #[serde(with = "duration::serde")]
    pub header_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    #[serde(with = "duration::serde")]
    pub idle_timeout: Duration,
    /// Bytes of a request header.
    pub max_header_bytes: usize,
}

impl Default for RawConnections {
    fn default() -> Self {
        RawConnections {
            max: 1024,
            per_source: 32,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            max_header_bytes: 16 * 1024,
        }
    }
}

impl RawConnections {
    /// Checks the values (`at` is the key path of this block).
    fn validate(&self, at: &str, problems: &mut Problems) -> crate::listen::ConnLimits {
        if self.max == 0 {
            problems.push(format!("{at}.max"), "must be at least 1");
        }
        if self.per_source == 0 || self.per_source > self.max {
            problems.push(format!("{at}.per_source"), "must be between 1 and max");
        }
        if self.header_timeout < Duration::from_millis(100) {
            problems.push(format!("{at}.header_timeout"), "must be at least 100ms");
        }
        if self.idle_timeout < Duration::from_secs(1) {
            problems.push(format!("{at}.idle_timeout"), "must be at least 1s");
        }
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            problems.push(format!("{at}.max_header_bytes"), "must be between 8192 and 1048576");
        }
        crate::listen::ConnLimits {
            max_connections: self.max,
            max_per_source: self.per_source,
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_header_bytes: self.max_header_bytes,
        }
    }
}

/// The plain HTTP listener: status, API, `/metrics`, health.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    #[serde(default = "default_http_listen")]
    pub listen: SocketAddr,
    /// Time for one request, body and answer included.
    #[serde(default = "default_http_request_timeout", with = "duration::serde")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub connections: RawConnections,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            listen: default_http_listen(),
            request_timeout: default_http_request_timeout(),
            connections: RawConnections::default(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}
fn default_node_down_after() -> Duration {
    Duration::from_secs(90)
}
fn default_stale_after() -> Duration {
    Duration::from_secs(300)
}
fn default_ingest_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 7443))
}
// Loopback: Prometheus and a reverse proxy on the collector host reach it;
// exposing the API to the provincial network is a decision (docs/operations.md).
fn default_http_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9400))
}
// A batch at the count limits (20,000 series, 200,000 points) is about
// 4.5 MB: room for that, decoded within the budget after a count on the wire.
fn default_max_body() -> usize {
    8 * 1024 * 1024
}
fn default_decode_budget() -> usize {
    256 * 1024 * 1024
}
fn default_ingest_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_http_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The validated configuration, paths resolved, topology loaded.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub log_level: String,
    /// Language and local time of what people read.
    pub locale: crate::i18n::Locale,
    pub ingest: RawIngest,
    pub http: RawHttp,
    /// Connection limits of the ingest listener.
    pub ingest_connections: crate::listen::ConnLimits,
    /// Connection limits of the HTTP listener.
    pub http_connections: crate::listen::ConnLimits,
    pub node_down_after: Duration,
    pub stale_after: Duration,
    pub topology_file: PathBuf,
    pub topology: Topology,
    pub state_dir: PathBuf,
    pub remote_write: Vec<RemoteWrite>,
    /// Alert rules; empty when no rules file is configured.
    pub rules: Rules,
    pub rules_file: Option<PathBuf>,
    pub receivers: Vec<crate::alert::notify::Receiver>,
    pub maintenance: Vec<crate::alert::maintenance::Window>,
    /// Bearer token for the API's changing endpoints; none: nothing changes.
    pub api_token: Option<String>,
    /// Listing security events takes the token.
    pub protect_security_events: bool,
    /// The ingest listener's TLS, loaded from `ingest.ca`, `cert` and `key`.
    pub tls: Arc<rustls::ServerConfig>,
}

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Every problem of every file (configuration, topology, rules), each once.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Files(Vec<ConfigError>),
}

impl From<ConfigError> for LoadError {
    fn from(e: ConfigError) -> Self {
        LoadError::Files(vec![e])
    }
}

impl Config {
    /// Loads `file` and the topology it names; every problem is reported at once.
    pub fn load(file: &Path) -> Result<Config, LoadError> {
        let (raw, text, mut problems) = tierwatch_yamlconf::load_all::<RawConfig>(file)?;
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { base.join(p) };
        let mut ingest = raw.ingest.clone();
        for (key, path) in
            [("ingest.ca", &mut ingest.ca), ("ingest.cert", &mut ingest.cert), ("ingest.key", &mut ingest.key)]
        {
            *path = resolve(path);
            if !path.is_file() {
                problems.push(key, format!("file {} does not exist", path.display()));
            }
        }
        if let Some(crl) = &mut ingest.crl {
            *crl = resolve(crl);
            if !crl.is_file() {
                problems.push(
                    "ingest.crl",
                    format!("file {} does not exist (`tierwatch-collector pki revoke` writes it)", crl.display()),
                );
            }
        }
        if ingest.max_body_bytes < 1024 {
            problems.push("ingest.max_body_bytes", "must be at least 1024");
        }
        if ingest.decode_budget_bytes < ingest.max_body_bytes {
            problems.push("ingest.decode_budget_bytes", "must be at least ingest.max_body_bytes");
        }
        if ingest.request_timeout < Duration::from_secs(1) {
            problems.push("ingest.request_timeout", "must be at least 1s");
        }
        if raw.http.request_timeout < Duration::from_secs(1) {
            problems.push("http.request_timeout", "must be at least 1s");
        }
        let ingest_connections = ingest.connections.validate("ingest.connections", &mut problems);
        let q = &ingest.quotas;
        for (key, rate) in [
            ("batches_per_second", q.batches_per_second),
            ("bytes_per_second", q.bytes_per_second),
            ("events_per_second", q.events_per_second),
        ] {
            if !(rate.is_finite() && rate > 0.0) {
                problems.push(format!("ingest.quotas.{key}"), "must be a number above 0");
            }
        }
        if q.bytes_per_second.is_finite()
            && q.bytes_per_second * q.burst.as_secs_f64().max(1.0) < ingest.max_body_bytes as f64
        {
            problems.push(
                "ingest.quotas.bytes_per_second",
                "times burst must hold at least one push of ingest.max_body_bytes",
            );
        }
        if q.burst < Duration::from_secs(1) {
            problems.push("ingest.quotas.burst", "must be at least 1s");
        }
        if q.series_per_node == 0 {
            problems.push("ingest.quotas.series_per_node", "must be at least 1");
        }
        if q.security_events_per_node < 100 {
            problems.push("ingest.quotas.security_events_per_node", "must be at least 100");
        }
        let http_connections = raw.http.connections.validate("http.connections", &mut problems);
        if raw.node_down_after < Duration::from_secs(1) {
            problems.push("node_down_after", "must be at least 1s");
        }
        if raw.stale_after < Duration::from_secs(1) {
            problems.push("stale_after", "must be at least 1s");
        }
        if ingest.listen == raw.http.listen && ingest.listen.port() != 0 {
            problems.push("http.listen", "must differ from ingest.listen");
        }
        if let Err(e) = tracing_subscriber_filter_ok(&raw.log_level) {
            problems.push("log_level", e);
        }
        let topology_file = resolve(&raw.topology);
        let remote_write = crate::remote_write::validate(&raw.remote_write, base, &mut problems);
        let receivers = crate::alert::notify::validate(&raw.notify, base, &mut problems);
        let maintenance = crate::alert::maintenance::validate_config(&raw.maintenance, &mut problems);
        let token_file = raw.api.token_file.as_deref().map(resolve);
        let api_token = match tierwatch_runtime::secret::from_file_or_env(
            token_file.as_deref(),
            raw.api.token_env.as_deref(),
        ) {
            Ok(Some(t)) if t.len() < MIN_TOKEN_LEN => {
                let key = if token_file.is_some() { "api.token_file" } else { "api.token_env" };
                problems.push(key, format!("the API token is {} characters; at least {MIN_TOKEN_LEN} (`tierwatch-collector api-token` makes one)", t.len()));
                None
            }
            Ok(t) => t,
            Err(e) => {
                problems.push(if token_file.is_some() { "api.token_file" } else { "api.token_env" }, e.to_string());
                None
            }
        };
        let max_age = Duration::from_millis(ingest.limits.max_age_ms.max(0) as u64);
        if max_age < Duration::from_secs(3600) {
            problems
                .push("ingest.limits.max_age_ms", "must be at least an hour: spooled backlogs arrive late by design");
        }
        let utc_offset = match raw.utc_offset.as_deref().map(crate::i18n::parse_utc_offset) {
            None => time::UtcOffset::UTC,
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                problems.push("utc_offset", e);
                time::UtcOffset::UTC
            }
        };
        // Every file is checked before any error is returned: one run names
        // every problem of the configuration, the topology and the rules.
        let mut errors = Vec::new();
        if let Err(e) = problems.into_result(file, &text) {
            errors.push(e);
        }
        let topology = Topology::load(&topology_file).map_err(|e| errors.push(e)).ok();
        let locale = crate::i18n::Locale { language: raw.language, utc_offset };
        let rules_file = raw.rules.as_deref().map(resolve);
        let rules = match &rules_file {
            Some(f) => Rules::load(f, locale).map_err(|e| errors.push(e)).ok(),
            None => Some(Rules { locale, ..Rules::default() }),
        };
        let (Some(topology), Some(rules), true) = (topology, rules, errors.is_empty()) else {
            return Err(LoadError::Files(errors));
        };
        // The TLS material is loaded here, once (after the files that say
        // what the collector is): a reload with a bad certificate or key is
        // refused before the running instance stops, and falling back to
        // the previous configuration reads no file.
        let mut late = Problems::default();
        let tls = ingest_tls(&ingest, &mut late);
        let tls = late.into_value(file, &text, "ingest.cert", tls)?;
        Ok(Config {
            file: file.to_path_buf(),
            log_level: raw.log_level,
            locale,
            ingest,
            http: raw.http,
            ingest_connections,
            http_connections,
            node_down_after: raw.node_down_after,
            stale_after: raw.stale_after,
            topology_file,
            topology,
            state_dir: resolve(&raw.state_dir),
            remote_write,
            rules,
            rules_file,
            receivers,
            maintenance,
            api_token,
            protect_security_events: raw.api.protect_security_events,
            tls,
        })
    }
}

/// The ingest TLS configuration, or `None` with the problem recorded at
/// the key naming the file at fault (none when a file is missing: that
/// problem is already recorded).
fn ingest_tls(ingest: &RawIngest, problems: &mut Problems) -> Option<Arc<rustls::ServerConfig>> {
    if ![&ingest.ca, &ingest.cert, &ingest.key].iter().all(|p| p.is_file())
        || ingest.crl.as_ref().is_some_and(|c| !c.is_file())
    {
        return None;
    }
    use tierwatch_runtime::tls::TlsError;
    match crate::tls::server_config(&ingest.ca, &ingest.cert, &ingest.key, ingest.crl.as_deref()) {
        Ok(c) => Some(c),
        Err(e) => {
            let files = [
                ("ingest.ca", Some(&ingest.ca)),
                ("ingest.key", Some(&ingest.key)),
                ("ingest.crl", ingest.crl.as_ref()),
            ];
            // Errors of rustls name no file: say which one it was.
            let (key, message) = match (&e, e.path()) {
                (_, Some(p)) => {
                    let key = files.iter().find(|(_, f)| f.is_some_and(|f| f == p)).map_or("ingest.cert", |(k, _)| k);
                    (key, e.to_string())
                }
                (TlsError::Verifier(_), None) => {
                    let list = ingest.crl.as_ref().map(|c| format!(" or {}", c.display())).unwrap_or_default();
                    ("ingest.ca", format!("{}{list}: {e}", ingest.ca.display()))
                }
                (_, None) => {
                    ("ingest.cert", format!("{} with key {}: {e}", ingest.cert.display(), ingest.key.display()))
                }
            };
            problems.push(key, message);
            None
        }
    }
}

fn tracing_subscriber_filter_ok(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| format!("{level:?} is not a log filter (e.g. info, debug, tierwatch_collector=debug): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped example parses; its only problems are the TLS files and
    /// the API token, which exist only on a real collector. The topology loads in full.
    #[test]
    fn shipped_example_is_valid() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"));
        let LoadError::Files(errs) = Config::load(&dir.join("collector.yaml")).unwrap_err();
        let err = &errs[0];
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["ingest.ca", "ingest.cert", "ingest.key", "ingest.crl", "api.token_file"], "{err}");
        let t = Topology::load(&dir.join("topology.yaml")).unwrap();
        assert_eq!(t.get_str("nui-cam").map(|n| n.name.as_str()), Some("Xã Núi Cấm"));
        assert!(t.nodes().len() >= 5);
        let c: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("collector.yaml")).unwrap()).unwrap();
        assert!(c.get("remote_write").is_none(), "the example writes to no host by default");
        // The provincial agent's example probes every commune's WAN end by its node id.
        let agent: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir.join("agent-province.yaml")).unwrap()).unwrap();
        let targets: Vec<&str> =
            agent["targets"].as_sequence().unwrap().iter().filter_map(|t| t["name"].as_str()).collect();
        for n in t.nodes().iter().filter(|n| n.parent.is_some()) {
            assert!(targets.contains(&n.id.as_str()), "agent-province.yaml does not probe {}", n.id);
        }
        assert_eq!(agent["node"].as_str(), t.nodes().iter().find(|n| n.parent.is_none()).map(|n| n.id.as_str()));
    }
}
