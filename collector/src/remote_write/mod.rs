//! remote_write output: every stored batch is queued on disk (in the state
//! database, in the same transaction that marks the batch as seen) and sent
//! to each configured receiver with the samples' original timestamps.
//!
//! Receivers must accept out-of-order samples: after an outage the newest
//! batches of a node arrive before its backlog (Prometheus needs
//! `storage.tsdb.out_of_order_time_window`; VictoriaMetrics and Mimir accept
//! them as they are).

pub mod proto;
pub mod queue;
pub mod sender;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_yamlconf::Problems;

/// One `remote_write:` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRemoteWrite {
    /// Name in metrics and logs; default: the URL's host and port.
    #[serde(default)]
    pub name: Option<String>,
    /// `http(s)://host[:port]/path`, for example `http://127.0.0.1:9090/api/v1/write`.
    pub url: String,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
    /// CA certificates (PEM) for an https receiver; default: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// File holding a bearer token (`Authorization: Bearer ...`).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default)]
    pub basic_auth: Option<RawBasicAuth>,
    /// Extra headers, for example `X-Scope-OrgID` for a Mimir tenant.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Disk bytes queued for this receiver; the oldest are dropped beyond (and counted).
    #[serde(default = "default_max_queue_bytes")]
    pub max_queue_bytes: u64,
    /// Samples packed into one request, at most.
    #[serde(default = "default_max_samples")]
    pub max_samples_per_send: u64,
}

/// Basic authentication; the password comes from a file, never inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub username: String,
    pub password_file: PathBuf,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_queue_bytes() -> u64 {
    1 << 30
}
fn default_max_samples() -> u64 {
    5000
}

/// A validated receiver.
#[derive(Debug, Clone)]
pub struct RemoteWrite {
    pub name: String,
    pub url: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub path: String,
    pub timeout: Duration,
    pub ca: Option<PathBuf>,
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth: Option<RawBasicAuth>,
    pub headers: BTreeMap<String, String>,
    pub max_queue_bytes: u64,
    pub max_samples_per_send: u64,
}

/// Headers the sender sets itself.
const RESERVED: [&str; 5] =
    ["content-type", "content-encoding", "x-prometheus-remote-write-version", "host", "content-length"];

/// Validates the `remote_write` list; problems go to `p` with their key path.
pub fn validate(raw: &[RawRemoteWrite], base: &Path, p: &mut Problems) -> Vec<RemoteWrite> {
    let resolve = |q: &Path| if q.is_absolute() { q.to_path_buf() } else { base.join(q) };
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let key = |k: &str| format!("remote_write[{i}].{k}");
        let Ok(tierwatch_runtime::url::HttpUrl { https, host, port, path }) =
            tierwatch_runtime::url::parse(&r.url, None).map_err(|e| p.push(key("url"), e))
        else {
            continue;
        };
        let name = r.name.clone().unwrap_or_else(|| format!("{host}:{port}"));
        if name.is_empty() || !names.insert(name.clone()) {
            p.push(
                key("name"),
                format!("{name:?} is empty or used by another remote_write entry; give each a distinct name"),
            );
        }
        let ca = r.ca.as_deref().map(resolve);
        let bearer = r.bearer_token_file.as_deref().map(resolve);
        let mut basic = r.basic_auth.clone();
        if let Some(b) = basic.as_mut() {
            b.password_file = resolve(&b.password_file);
        }
        for (k, f) in [
            ("ca", ca.as_ref()),
            ("bearer_token_file", bearer.as_ref()),
            ("basic_auth.password_file", basic.as_ref().map(|b| &b.password_file)),
        ] {
            if let Some(f) = f.filter(|f| !f.is_file()) {
                p.push(key(k), format!("file {} does not exist", f.display()));
            }
        }
        if ca.is_some() && !https {
            p.push(key("ca"), "a CA is only used with an https:// URL");
        }
        if bearer.is_some() && basic.is_some() {
            p.push(key("basic_auth"), "use bearer_token_file or basic_auth, not both");
        }
        for h in r.headers.keys() {
            let lower = h.to_ascii_lowercase();
            if RESERVED.contains(&lower.as_str()) || (lower == "authorization" && (bearer.is_some() || basic.is_some()))
            {
                p.push(format!("remote_write[{i}].headers.{h}"), "is set by tierwatch itself");
            } else if hyper::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                p.push(format!("remote_write[{i}].headers.{h}"), "is not a valid header name");
            }
        }
        if r.max_samples_per_send == 0 {
            p.push(key("max_samples_per_send"), "must be at least 1");
        }
        if r.max_queue_bytes < 1 << 20 {
            p.push(key("max_queue_bytes"), "must be at least 1 MiB");
        }
        if r.timeout < Duration::from_secs(1) {
            p.push(key("timeout"), "must be at least 1s");
        }
        out.push(RemoteWrite {
            name,
            url: r.url.clone(),
            https,
            host,
            port,
            path,
            timeout: r.timeout,
            ca,
            bearer_token_file: bearer,
            basic_auth: basic,
            headers: r.headers.clone(),
            max_queue_bytes: r.max_queue_bytes,
            max_samples_per_send: r.max_samples_per_send,
        });
    }
    out
}
