//! Security sensors of the agent: what it sees on its LAN (port scans, ARP
//! spoofing, rogue DHCP servers) and on its host (new listening ports, SSH
//! brute force) becomes security events in its batches (docs/security.md).

pub mod arp;
pub mod capture;
pub mod dhcp;
pub mod files;
pub mod flood;
pub mod listen;
pub mod recently;
pub mod router_advert;
pub mod scan;
pub mod ssh;

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_yamlconf::Problems;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batcher::Measurement;

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>().ok()?;
    parts.try_into().ok()
}

/// An IPv4 or IPv6 address or network.
fn parse_net(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = s.split_once('/').unwrap_or((s, ""));
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() { max } else { len.parse().ok().filter(|l| *l <= max)? };
    Some((ip, len))
}

/// `sensors:` as written.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSensors {
    /// Passive capture on a LAN interface; off unless an interface is named.
    #[serde(default)]
    pub lan: Option<RawLan>,
    /// The node itself: listening ports, SSH logins (on by default).
    #[serde(default)]
    pub host: RawHost,
}

/// `sensors.host`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    #[serde(default)]
    pub listeners: RawListeners,
    #[serde(default)]
    pub ssh: RawSsh,
    #[serde(default)]
    pub files: RawFiles,
}

/// `sensors.host.files`: file integrity against a baseline kept beside the spool.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawFiles {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Files and directories (walked, links not followed); the agent's own
    /// binary and configuration are always added.
    #[serde(default = "default_file_paths")]
    pub paths: Vec<std::path::PathBuf>,
    #[serde(default = "default_file_interval", with = "duration::serde")]
    pub interval: Duration,
    #[serde(default = "default_max_files")]
    pub max_files: usize,
}

impl Default for RawFiles {
    fn default() -> Self {
        RawFiles {
            enabled: true,
            paths: default_file_paths(),
            interval: default_file_interval(),
            max_files: default_max_files(),
        }
    }
}

fn default_file_paths() -> Vec<std::path::PathBuf> {
    vec!["/etc".into()]
}
fn default_file_interval() -> Duration {
    Duration::from_secs(300)
}
fn default_max_files() -> usize {
    20_000
}

/// `sensors.host.listeners`: listening-port drift against the baseline at start.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListeners {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_listen_interval", with = "duration::serde")]
    pub interval: Duration,
    /// Ports never reported.
    #[serde(default)]
    pub allow: Vec<u16>,
}

impl Default for RawListeners {
    fn default() -> Self {
        RawListeners { enabled: true, interval: default_listen_interval(), allow: Vec::new() }
    }
}

/// `sensors.host.ssh`: brute force from the authentication log.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Followed like `tail -F` (nothing happens while it does not exist);
    /// `journal` reads sshd's messages from the systemd journal instead.
    #[serde(default = "default_auth_log")]
    pub log: std::path::PathBuf,
    /// Failed logins of one source within `window` (default 10 in 5m).
    #[serde(default)]
    pub failures: Option<usize>,
    #[serde(default, with = "duration::serde_opt")]
    pub window: Option<Duration>,
    /// Sources never reported (a jump host): addresses or networks.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Default for RawSsh {
    fn default() -> Self {
        RawSsh { enabled: true, log: default_auth_log(), failures: None, window: None, allow: Vec::new() }
    }
}

fn yes() -> bool {
    true
}
fn default_listen_interval() -> Duration {
    Duration::from_secs(15)
}
fn default_auth_log() -> std::path::PathBuf {
    "/var/log/auth.log".into()
}

/// The host sensors, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// Check interval and allowed ports, when on.
    pub listeners: Option<(Duration, Vec<u16>)>,
    pub ssh: Option<(std::path::PathBuf, ssh::SshPolicy)>,
    /// Watched paths, critical ones (the agent's own), interval, max files, baseline file.
    pub files: Option<FilesSpec>,
}

/// File integrity, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FilesSpec {
    pub paths: Vec<std::path::PathBuf>,
    pub critical: Vec<std::path::PathBuf>,
    pub interval: Duration,
    pub max_files: usize,
    pub baseline: std::path::PathBuf,
}

/// Validates `sensors.host`; `None` when every host sensor is off. The file
/// baseline lives in `state_dir`; `config_file` is watched as critical.
pub fn validate_host(
    raw: &RawHost,
    base: &std::path::Path,
    state_dir: &std::path::Path,
    config_file: &std::path::Path,
    p: &mut Problems,
) -> Option<HostSpec> {
    let listeners = raw.listeners.enabled.then(|| {
        if raw.listeners.interval < Duration::from_secs(1) {
            p.push("sensors.host.listeners.interval", "must be at least 1s");
        }
        (raw.listeners.interval.max(Duration::from_secs(1)), raw.listeners.allow.clone())
    });
    let ssh = raw.ssh.enabled.then(|| {
        let mut policy = ssh::SshPolicy::default();
        if let Some(f) = raw.ssh.failures {
            if f < 2 {
                p.push("sensors.host.ssh.failures", "must be at least 2");
            }
            policy.failures = f.max(2);
        }
        if let Some(w) = raw.ssh.window {
            policy.window = w;
        }
        for (i, a) in raw.ssh.allow.iter().enumerate() {
            match parse_net(a) {
                Some(n) => policy.allow.push(n),
                None => {
                    p.push(format!("sensors.host.ssh.allow[{i}]"), format!("{a:?} is not an IP address or network"))
                }
            }
        }
        let log = if raw.ssh.log.is_absolute() || raw.ssh.log.as_os_str() == "journal" {
            raw.ssh.log.clone()
        } else {
            base.join(&raw.ssh.log)
        };
        (log, policy)
    });
    let files = raw.files.enabled.then(|| {
        if raw.files.interval < Duration::from_secs(10) {
            p.push("sensors.host.files.interval", "must be at least 10s");
        }
        let mut critical = vec![config_file.to_path_buf()];
        critical.extend(std::env::current_exe().ok());
        let mut paths: Vec<std::path::PathBuf> =
            raw.files.paths.iter().map(|f| if f.is_absolute() { f.clone() } else { base.join(f) }).collect();
        paths.extend(critical.iter().cloned());
        FilesSpec {
            paths,
            critical,
            interval: raw.files.interval.max(Duration::from_secs(10)),
            max_files: raw.files.max_files.max(1),
            baseline: state_dir.join("file-baseline"),
        }
    });
    (listeners.is_some() || ssh.is_some() || files.is_some()).then_some(HostSpec { listeners, ssh, files })
}

/// Starts the host sensors on their own thread (file and /proc reads block).
pub fn spawn_host(
    spec: HostSpec,
    tx: mpsc::Sender<Measurement>,
    token: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("host-sensor".into()).spawn(move || {
        let mut tail = spec.ssh.as_ref().map(|(path, _)| ssh::Lines::new(path.clone()));
        let mut ssh = spec.ssh.as_ref().map(|(_, p)| ssh::SshWatch::new(p.clone()));
        let mut listen = listen::ListenWatch::new(spec.listeners.as_ref().map(|l| l.1.clone()).unwrap_or_default());
        let mut next_listen = std::time::Instant::now();
        let mut files = spec
            .files
            .as_ref()
            .map(|f| files::FileWatch::new(f.paths.clone(), f.critical.clone(), f.max_files, f.baseline.clone()));
        let mut next_files = std::time::Instant::now();
        let emit = |e: tierwatch_protocol::Event| {
            tracing::warn!(kind = %e.kind, src = e.attributes.get("src").map(String::as_str).unwrap_or(""), "security event");
            let _ = tx.blocking_send(Measurement::Event(e));
        };
        while !token.is_cancelled() {
            let now = tierwatch_protocol::now_ms();
            if let (Some(t), Some(w)) = (tail.as_mut(), ssh.as_mut()) {
                for line in t.lines() {
                    if let Some(e) = w.observe(&line, now) {
                        emit(e);
                    }
                }
            }
            if let Some((interval, _)) = &spec.listeners {
                if std::time::Instant::now() >= next_listen {
                    next_listen += *interval;
                    let current = listen::current(std::path::Path::new("/proc/self/net"));
                    for e in listen.check(current, listen::owner, now) {
                        emit(e);
                    }
                }
            }
            if let (Some(w), Some(f)) = (files.as_mut(), &spec.files) {
                if std::time::Instant::now() >= next_files {
                    next_files += f.interval;
                    for e in w.check(now) {
                        emit(e);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

/// `sensors.lan`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLan {
    pub interface: String,
    /// See every frame on the wire (a mirror port, or a hub), not only this node's and broadcasts.
    #[serde(default)]
    pub promiscuous: bool,
    #[serde(default)]
    pub scan: RawScan,
    #[serde(default)]
    pub arp: RawArp,
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[serde(default)]
    pub router_advert: RawRouterAdvert,
}

/// `sensors.lan.router_advert`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouterAdvert {
    /// The LAN's own IPv6 routers, by link-local address or MAC; empty: every router advertisement is rogue.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `sensors.lan.dhcp`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    /// The LAN's own DHCP servers; empty: the first one seen is taken as the LAN's.
    #[serde(default)]
    pub servers: Vec<Ipv4Addr>,
}

/// `sensors.lan.scan`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// Distinct failed (host, port) attempts of one source within `window` (default 25).
    #[serde(default)]
    pub threshold: Option<usize>,
    /// Distinct failed ports of one host (default 15).
    #[serde(default)]
    pub vertical_threshold: Option<usize>,
    /// Distinct failed attempts within an hour that make a slow scan (default 40).
    #[serde(default)]
    pub hour_threshold: Option<usize>,
    /// Distinct failed attempts within a day that make a slow scan (default 100).
    #[serde(default)]
    pub day_threshold: Option<usize>,
    /// Default 15m.
    #[serde(default, with = "duration::serde_opt")]
    pub window: Option<Duration>,
    /// Sources never reported: addresses or networks (`10.0.0.5`, `10.0.0.0/24`, `2001:db8::/64`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Sources tracked at once (default 10,000).
    #[serde(default)]
    pub max_sources: Option<usize>,
}

/// `sensors.lan.arp`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawArp {
    /// Addresses whose takeover is critical, besides this node's own and
    /// the DHCP servers: the LAN's default gateway (IPv4, and its IPv6
    /// link-local address), known servers.
    #[serde(default)]
    pub gateways: Vec<std::net::IpAddr>,
    /// The gateways' (or servers') MACs as known for sure, by address: a
    /// spoof already running when the agent starts is still one.
    #[serde(default)]
    pub pinned: std::collections::BTreeMap<String, String>,
    /// MACs allowed to take over addresses (a failover pair); VRRP and HSRP are allowed already.
    #[serde(default)]
    pub allow_macs: Vec<String>,
    /// Stations remembered (default 4,096).
    #[serde(default)]
    pub max_stations: Option<usize>,
    /// New stations are listed together in one info event at most this often (default 10m).
    #[serde(default, with = "duration::serde_opt")]
    pub new_station_digest: Option<Duration>,
}

/// The LAN sensor, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LanSpec {
    pub interface: String,
    pub promiscuous: bool,
    pub scan: scan::ScanPolicy,
    pub arp: arp::ArpPolicy,
    pub dhcp_servers: Vec<Ipv4Addr>,
    pub routers: Vec<router_advert::Router>,
}

/// Validates `sensors.lan`; problems go to `p`.
pub fn validate(raw: &RawSensors, p: &mut Problems) -> Option<LanSpec> {
    let lan = raw.lan.as_ref()?;
    if lan.interface.is_empty() || lan.interface.len() > 15 {
        p.push("sensors.lan.interface", "give the interface name (at most 15 characters, as `ip link` shows it)");
    }
    let mut scan = scan::ScanPolicy::default();
    if let Some(t) = lan.scan.threshold {
        if t < 2 {
            p.push("sensors.lan.scan.threshold", "must be at least 2");
        }
        scan.threshold = t;
    }
    if let Some(t) = lan.scan.vertical_threshold {
        if t < 2 {
            p.push("sensors.lan.scan.vertical_threshold", "must be at least 2");
        }
        scan.vertical_threshold = t;
    }
    if let Some(w) = lan.scan.window {
        if w < Duration::from_secs(1) {
            p.push("sensors.lan.scan.window", "must be at least 1s");
        }
        scan.window = w;
    }
    if let Some(m) = lan.scan.max_sources {
        if m == 0 {
            p.push("sensors.lan.scan.max_sources", "must be at least 1");
        }
        scan.max_sources = m.max(1);
    }
    for (i, a) in lan.scan.allow.iter().enumerate() {
        match parse_net(a) {
            Some(n) => scan.allow.push(n),
            None => p.push(format!("sensors.lan.scan.allow[{i}]"), format!("{a:?} is not an IP address or network")),
        }
    }
    for (key, value, field) in [
        ("hour_threshold", lan.scan.hour_threshold, &mut scan.hour_threshold),
        ("day_threshold", lan.scan.day_threshold, &mut scan.day_threshold),
    ] {
        if let Some(t) = value {
            if t < 2 {
                p.push(format!("sensors.lan.scan.{key}"), "must be at least 2");
            }
            *field = t.max(2);
        }
    }
    let mut arp = arp::ArpPolicy { gateways: lan.arp.gateways.clone(), ..Default::default() };
    for (i, m) in lan.arp.allow_macs.iter().enumerate() {
        match parse_mac(m) {
            Some(m) => arp.allow_macs.push(m),
            None => {
                p.push(format!("sensors.lan.arp.allow_macs[{i}]"), format!("{m:?} is not a MAC (aa:bb:cc:dd:ee:ff)"))
            }
        }
    }
    for (ip, m) in &lan.arp.pinned {
        match (ip.parse::<std::net::IpAddr>(), parse_mac(m)) {
            (Ok(ip), Some(m)) => arp.pinned.push((ip, m)),
            (Err(_), _) => p.push(format!("sensors.lan.arp.pinned.{ip}"), format!("{ip:?} is not an IP address")),
            (_, None) => {
                p.push(format!("sensors.lan.arp.pinned.{ip}"), format!("{m:?} is not a MAC (aa:bb:cc:dd:ee:ff)"))
            }
        }
    }
    if let Some(m) = lan.arp.max_stations {
        arp.max_stations = m.max(1);
    }
    if let Some(d) = lan.arp.new_station_digest {
        if d < Duration::from_secs(1) {
            p.push("sensors.lan.arp.new_station_digest", "must be at least 1s");
        }
        arp.digest = d.max(Duration::from_secs(1));
    }
    let mut routers = Vec::new();
    for (i, r) in lan.router_advert.allow.iter().enumerate() {
        match (r.parse::<std::net::Ipv6Addr>(), parse_mac(r)) {
            (Ok(a), _) => routers.push(router_advert::Router::Addr(a)),
            (_, Some(m)) => routers.push(router_advert::Router::Mac(m)),
            _ => p.push(
                format!("sensors.lan.router_advert.allow[{i}]"),
                format!("{r:?} is not an IPv6 address (fe80::1) nor a MAC (aa:bb:cc:dd:ee:ff)"),
            ),
        }
    }
    // The LAN's own IPv6 routers are its gateways: a neighbour advertisement taking their address over is critical.
    arp.gateways.extend(routers.iter().filter_map(|r| match r {
        router_advert::Router::Addr(a) => Some(std::net::IpAddr::V6(*a)),
        router_advert::Router::Mac(_) => None,
    }));
    Some(LanSpec {
        interface: lan.interface.clone(),
        promiscuous: lan.promiscuous,
        scan,
        arp,
        dhcp_servers: lan.dhcp.servers.clone(),
        routers,
    })
}

/// Starts the LAN sensor on its own thread; events go to the batcher.
pub fn spawn_lan(
    spec: LanSpec,
    tx: mpsc::Sender<Measurement>,
    token: CancellationToken,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("lan-sensor".into()).spawn(move || {
        capture::run(&spec, &token, |e| {
            tracing::warn!(kind = %e.kind, src = e.attributes.get("src").map(String::as_str).unwrap_or(""), "security event");
            // A full channel waits rather than drop evidence; a closed one
            // means the agent is stopping, and the token follows.
            let _ = tx.blocking_send(Measurement::Event(e));
        });
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_macs() {
        assert_eq!(parse_net("10.0.0.0/24"), Some(("10.0.0.0".parse().unwrap(), 24)));
        assert_eq!(parse_net("10.0.0.5"), Some(("10.0.0.5".parse().unwrap(), 32)));
        assert_eq!(parse_net("10.0.0.0/33"), None);
        assert_eq!(parse_net("2001:db8::/64"), Some(("2001:db8::".parse().unwrap(), 64)));
        assert_eq!(parse_mac("02:00:00:00:01:32"), Some([2, 0, 0, 0, 1, 0x32]));
        assert_eq!(parse_mac("02:00:00:00:01"), None);
        assert_eq!(mac(&[2, 0, 0, 0, 1, 0x32]), "02:00:00:00:01:32");
    }
}
