//! Targets: one flat YAML struct for every probe kind (so serde_yaml keeps
//! exact locations), validated per kind into a [`Target`]. A field that does
//! not apply to the target's kind is refused, not ignored.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierwatch_runtime::duration;
use tierwatch_yamlconf::Problems;

use super::Defaults;
use crate::probe::dns::RecordType;
use crate::probe::http::{HttpSpec, StatusPattern};
use crate::probe::{ProbeKind, ProbeSpec, Target};

/// A hold of every frame this long is no failure (`stall`).
pub const DEFAULT_STALL: Duration = Duration::from_secs(1);
/// The watch's keepalive gap by default (`keepalive`)...
pub(super) const DEFAULT_KEEPALIVE: Duration = Duration::from_millis(500);
/// ...for targets probed at least this often.
pub(super) const KEEPALIVE_UP_TO: Duration = Duration::from_secs(10);

/// One target as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The `target` label: short, stable, unique.
    pub name: String,
    pub probe: ProbeKind,
    /// Where to send: host name or address (icmp, tcp, tls; the server for dns;
    /// for http, an address to connect to instead of the URL's host).
    #[serde(default)]
    pub host: Option<String>,
    /// Port (tcp; tls default 443; dns default 53).
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default, with = "duration::serde_opt")]
    pub interval: Option<Duration>,
    /// icmp: wait for each reply; others: the whole probe.
    #[serde(default, with = "duration::serde_opt")]
    pub timeout: Option<Duration>,
    /// Echo requests per round (icmp).
    #[serde(default)]
    pub count: Option<u32>,
    /// Gap between echo requests (icmp); default spreads them over half the interval, at most 1 s apart.
    #[serde(default, with = "duration::serde_opt")]
    pub spacing: Option<Duration>,
    /// Also fetch the page as a search-engine crawler and report spam shown
    /// only to crawlers (http, with defacement; default false).
    #[serde(default)]
    pub cloaking: Option<bool>,
    /// Watch the page for defacement against the first one seen (http, default true).
    #[serde(default)]
    pub defacement: Option<bool>,
    /// Report a silent target before the round ends (icmp, default true):
    /// no reply for `stall` plus the link's peak round trip, confirmations
    /// and keepalives included, fails the probe at once.
    #[serde(default)]
    pub fast_down: Option<bool>,
    /// How long the path may hold every frame (bufferbloat, a 4G backup
    /// link) before silence is a failure (icmp with fast_down, default 1s).
    #[serde(default, with = "duration::serde_opt")]
    pub stall: Option<Duration>,
    /// With fast_down: the longest the watch lets pass without a request in
    /// flight, adding keepalives between the round's own (icmp; default
    /// 500ms for targets probed at least every 10s, else 0s: none).
    #[serde(default, with = "duration::serde_opt")]
    pub keepalive: Option<Duration>,
    /// URL to fetch (http): `http://` or `https://`.
    #[serde(default)]
    pub url: Option<String>,
    /// Accepted statuses (http), default `[2xx]`.
    #[serde(default)]
    pub expect_status: Option<Vec<StatusPattern>>,
    /// Texts the body must contain (http).
    #[serde(default)]
    pub body_contains: Option<Vec<String>>,
    /// Texts the body must not contain (http): defacement and spam markers.
    #[serde(default)]
    pub body_not_contains: Option<Vec<String>>,
    /// Redirects to follow (http), default 5; 0 reports the redirect itself.
    #[serde(default)]
    pub follow_redirects: Option<u32>,
    /// Other hosts a redirect may go to (http); by default only the
    /// target's own host is followed.
    #[serde(default)]
    pub redirect_hosts: Option<Vec<String>>,
    /// Follow a redirect from https to http (http), default false.
    #[serde(default)]
    pub redirect_downgrade: Option<bool>,
    /// Bytes of body read at most (http), default 1 MiB.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// CA certificates to trust instead of the system's (http, tls), PEM.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// TLS name to send and verify (tls; http: default the URL's host).
    #[serde(default)]
    pub server_name: Option<String>,
    /// Name to ask about (dns).
    #[serde(default)]
    pub query: Option<String>,
    /// Record type to ask for (dns), default A.
    #[serde(default)]
    pub record_type: Option<RecordType>,
    /// The answers expected (dns): a different set flags a hijacked or changed record.
    #[serde(default)]
    pub expect: Option<Vec<String>>,
}

/// Which kinds each optional field applies to.
fn applies(t: &TargetSpec) -> Vec<(&'static str, bool, &'static [ProbeKind])> {
    use ProbeKind::*;
    vec![
        ("port", t.port.is_some(), &[Tcp, Tls, Dns]),
        ("count", t.count.is_some(), &[Icmp]),
        ("spacing", t.spacing.is_some(), &[Icmp]),
        ("fast_down", t.fast_down.is_some(), &[Icmp]),
        ("stall", t.stall.is_some(), &[Icmp]),
        ("keepalive", t.keepalive.is_some(), &[Icmp]),
        ("defacement", t.defacement.is_some(), &[Http]),
        ("cloaking", t.cloaking.is_some(), &[Http]),
        ("url", t.url.is_some(), &[Http]),
        ("expect_status", t.expect_status.is_some(), &[Http]),
        ("body_contains", t.body_contains.is_some(), &[Http]),
        ("body_not_contains", t.body_not_contains.is_some(), &[Http]),
        ("follow_redirects", t.follow_redirects.is_some(), &[Http]),
        ("redirect_hosts", t.redirect_hosts.is_some(), &[Http]),
        ("redirect_downgrade", t.redirect_downgrade.is_some(), &[Http]),
        ("max_body_bytes", t.max_body_bytes.is_some(), &[Http]),
        ("ca", t.ca.is_some(), &[Http, Tls]),
        ("server_name", t.server_name.is_some(), &[Http, Tls]),
        ("query", t.query.is_some(), &[Dns]),
        ("record_type", t.record_type.is_some(), &[Dns]),
        ("expect", t.expect.is_some(), &[Dns]),
    ]
}

/// Validates target `i`, recording problems; `None` when it is unusable.
pub(super) fn validate(
    t: &TargetSpec,
    i: usize,
    d: &Defaults,
    vocabulary: &std::sync::Arc<crate::probe::deface::Vocabulary>,
    base: &Path,
    names: &mut HashSet<String>,
    p: &mut Problems,
) -> Option<Target> {
    let at = |k: &str| format!("targets[{i}].{k}");
    let before = p.len();
    let name_ok = !t.name.is_empty()
        && t.name.len() <= 64
        && t.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !name_ok {
        p.push(at("name"), format!("{:?} must be 1-64 characters of a-z, A-Z, 0-9, '-', '_', '.'", t.name));
    } else if !names.insert(t.name.clone()) {
        p.push(at("name"), format!("duplicate target name {:?}", t.name));
    }
    for (field, set, kinds) in applies(t) {
        if set && !kinds.contains(&t.probe) {
            let takers: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            p.push(at(field), format!("{} probes do not take {field} (only {})", t.probe.as_str(), takers.join(", ")));
        }
    }
    let host = match (&t.host, t.probe) {
        (Some(h), _) if h.trim().is_empty() || h.contains(char::is_whitespace) => {
            p.push(at("host"), format!("{h:?} is not a host name or address"));
            String::new()
        }
        (Some(h), _) => h.clone(),
        (None, ProbeKind::Http) => String::new(),
        (None, kind) => {
            p.push(format!("targets[{i}]"), format!("{} probes need a host", kind.as_str()));
            String::new()
        }
    };
    let interval = t.interval.unwrap_or(d.interval);
    let timeout = t.timeout.unwrap_or(d.timeout);
    if interval < Duration::from_millis(100) {
        p.push(at("interval"), "must be at least 100ms");
    }
    if timeout.is_zero() || timeout > interval {
        p.push(at("timeout"), format!("must be above 0 and at most the interval ({})", duration::format(interval)));
    }
    let resolve = |q: &Path| if q.is_absolute() { q.to_path_buf() } else { base.join(q) };
    let ca = t.ca.as_deref().map(resolve);
    if let Some(ca) = &ca {
        if !ca.is_file() {
            p.push(at("ca"), format!("file {} does not exist", ca.display()));
        }
    }
    let mut host = host;
    let spec = match t.probe {
        ProbeKind::Icmp => {
            let count = t.count.unwrap_or(d.icmp_count);
            if !(1..=1000).contains(&count) {
                p.push(at("count"), "must be 1..=1000");
            }
            // By default the requests spread over half the interval, at most
            // 1 s apart, leaving room for the last reply's timeout.
            let room = interval.saturating_sub(timeout) / count.max(1);
            let spacing = t.spacing.unwrap_or((interval / 2 / count.max(1)).min(room).min(Duration::from_secs(1)));
            if spacing * count.saturating_sub(1) + timeout > interval {
                let key = if t.spacing.is_some() { "spacing" } else { "timeout" };
                p.push(
                    at(key),
                    format!(
                        "{} requests {} apart plus the {} timeout do not fit in the {} interval",
                        count,
                        duration::format(spacing),
                        duration::format(timeout),
                        duration::format(interval)
                    ),
                );
            }
            let stall = t.stall.unwrap_or(DEFAULT_STALL);
            if stall < Duration::from_millis(250) || stall > Duration::from_secs(30) {
                // Below a confirmation's round trip every slow reply would be a failure.
                p.push(at("stall"), "must be between 250ms and 30s");
            }
            // Keepalives double the echo requests of a target probed once a
            // second; worth it where a cut must page within the alert goal
            // (probed every 10 s or faster), not for a thousand targets
            // probed once a minute.
            let keepalive = match t.keepalive {
                Some(k) if k.is_zero() => None,
                Some(k) => {
                    if k < Duration::from_millis(100) || k > Duration::from_secs(10) {
                        p.push(at("keepalive"), "must be 0s (none) or between 100ms and 10s");
                    }
                    Some(k)
                }
                None => (interval <= KEEPALIVE_UP_TO).then_some(DEFAULT_KEEPALIVE),
            };
            ProbeSpec::Icmp { count, spacing, fast_down: t.fast_down.unwrap_or(true), stall, keepalive }
        }
        ProbeKind::Tcp => match t.port {
            Some(port) if port != 0 => ProbeSpec::Tcp { port },
            _ => {
                p.push(at("port"), "tcp probes need a port (1-65535)");
                ProbeSpec::Tcp { port: 0 }
            }
        },
        ProbeKind::Tls => ProbeSpec::Tls {
            port: t.port.unwrap_or(443),
            server_name: t.server_name.clone().unwrap_or_else(|| host.clone()),
            ca,
        },
        ProbeKind::Dns => {
            let query = t.query.clone().unwrap_or_default();
            let ok = !query.is_empty()
                && query.len() <= 253
                && query.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !ok {
                p.push(
                    if t.query.is_some() { at("query") } else { format!("targets[{i}]") },
                    "dns probes need a query: a domain name such as portal.angiang.gov.vn",
                );
            }
            let expect = t
                .expect
                .as_ref()
                .map(|e| e.iter().map(|a| a.trim().trim_end_matches('.').to_ascii_lowercase()).collect());
            ProbeSpec::Dns {
                port: t.port.unwrap_or(53),
                query,
                record_type: t.record_type.unwrap_or(RecordType::A),
                expect,
            }
        }
        ProbeKind::Http => {
            let url = t.url.clone().unwrap_or_default();
            match tierwatch_runtime::url::parse(&url, None) {
                Ok(tierwatch_runtime::url::HttpUrl { https, host: url_host, .. }) => {
                    if host.is_empty() {
                        host = url_host;
                    }
                    if !https && (t.ca.is_some() || t.server_name.is_some()) {
                        p.push(at("url"), "ca and server_name need an https:// URL");
                    }
                }
                Err(e) => p.push(
                    if t.url.is_some() { at("url") } else { format!("targets[{i}]") },
                    format!("http probes need a url: {e}"),
                ),
            }
            let max_body_bytes = t.max_body_bytes.unwrap_or(1 << 20);
            if max_body_bytes == 0 || max_body_bytes > 64 << 20 {
                p.push(at("max_body_bytes"), "must be 1 byte to 64 MiB");
            }
            ProbeSpec::Http(Box::new(HttpSpec {
                url,
                expect_status: t.expect_status.clone().unwrap_or_else(|| vec![StatusPattern { low: 200, high: 299 }]),
                body_contains: t.body_contains.clone().unwrap_or_default(),
                body_not_contains: t.body_not_contains.clone().unwrap_or_default(),
                follow_redirects: t.follow_redirects.unwrap_or(5),
                redirect_hosts: t
                    .redirect_hosts
                    .clone()
                    .unwrap_or_default()
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                redirect_downgrade: t.redirect_downgrade.unwrap_or(false),
                max_body_bytes,
                ca,
                server_name: t.server_name.clone(),
                connect_to: t.host.clone(),
                defacement: t.defacement.unwrap_or(true),
                vocabulary: vocabulary.clone(),
                cloaking: t.cloaking.unwrap_or(false),
                user_agent: None,
            }))
        }
    };
    (p.len() == before).then(|| Target {
        name: t.name.clone(),
        host,
        interval,
        timeout,
        jitter: d.jitter.min(interval / 2),
        spec,
    })
}
