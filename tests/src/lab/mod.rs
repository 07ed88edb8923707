//! The WAN lab: a two-tier province in network namespaces.
//!
//! ```text
//!  central ──[uplink]── province ──[wan c1]── commune c1 ── lan0 ── hosts
//!  10.255.0.1     10.255.0.2 │            10.1.1.1 ⇄ 10.1.1.2   10.2.1.1   10.2.1.10+
//!                 services on lo (10.0.0.0/24)     ... one WAN link per commune
//! ```
//!
//! Every link passes through a middle namespace where `tw-labnet bridge`
//! moves frames with pnet and applies delay, jitter, loss and reordering
//! (this kernel has no netem); links can also be cut and rate limited (tc tbf).
//! All addresses are 10.x inside namespaces this lab created; teardown is
//! guaranteed by `Drop`, and namespaces of dead runs are removed at start.

pub mod impair;
pub mod netns;
pub mod receivers;
pub mod services;
pub mod system;

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use impair::Impairment;
use netns::Netns;

/// Labs share the machine's CPU and the kernel's namespace locks: one at a time per process.
static ONE_LAB: Mutex<()> = Mutex::new(());
static LAB_NO: AtomicU32 = AtomicU32::new(0);

/// RTTs in ms of `count` echo requests `interval_ms` apart from `ns` to
/// `target`, measured by fping; `None` for each lost one.
pub fn fping(ns: &Netns, target: &str, count: u32, interval_ms: u32) -> anyhow::Result<Vec<Option<f64>>> {
    // -t: in -C mode fping's reply timeout defaults to the period, which would
    // count every reply slower than `interval_ms` as lost.
    let out = ns
        .command("fping", &["-C", &count.to_string(), "-p", &interval_ms.to_string(), "-t", "1000", "-q", target])
        .output()?;
    // fping -C prints "target : 40.1 - 39.7 ..." on stderr and exits 1 when any was lost.
    let text = String::from_utf8_lossy(&out.stderr);
    let line =
        text.lines().find(|l| l.starts_with(target)).with_context(|| format!("fping printed no summary: {text}"))?;
    let (_, values) = line.split_once(':').with_context(|| format!("unexpected fping line {line}"))?;
    Ok(values.split_whitespace().map(|v| v.parse().ok()).collect())
}

/// Why the lab cannot run here, if it cannot (not root, no iproute2).
pub fn unavailable() -> Option<String> {
    if !crate::is_root() {
        return Some("needs root for network namespaces (CI runs it as root)".into());
    }
    for (tool, package) in
        [("ip", "iproute2"), ("tc", "iproute2"), ("ethtool", "ethtool"), ("fping", "fping"), ("ping", "iputils-ping")]
    {
        if !crate::have(tool) {
            return Some(format!("needs {tool} (Debian package {package}; scripts/test.sh installs it)"));
        }
    }
    None
}

/// Skips the calling test with a printed reason when the lab cannot run, and
/// fails it instead when `CI` is set (CI must run the lab tests).
#[macro_export]
macro_rules! require_lab {
    ($name:expr) => {
        if let Some(why) = $crate::lab::unavailable() {
            assert!(std::env::var("CI").is_err(), "lab test {} cannot run in CI: {}", $name, why);
            eprintln!("SKIPPED {}: {}", $name, why);
            return Ok(());
        }
    };
}

/// Skips the calling test with a printed reason when `tool` is not
/// installed, and fails it instead when `CI` is set (scripts/test.sh
/// installs every tool the tests use).
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        if !$crate::have($tool) {
            ::anyhow::ensure!(
                std::env::var("CI").is_err(),
                "{} must be installed in CI (scripts/test.sh installs it)",
                $tool
            );
            eprintln!("SKIPPED: {} is not installed (scripts/test.sh installs it)", $tool);
            return Ok(());
        }
    };
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Number of communes (1..=250).
    pub communes: usize,
    /// Extra hosts on the LAN of commune 1 (attacker, rogue server, ...).
    pub lan_hosts: usize,
    /// Whether other labs wait while this one exists (tests that time
    /// packets want the machine to themselves).
    pub exclusive: bool,
}

impl LabSpec {
    /// `n` communes, no extra hosts.
    pub fn communes(n: usize) -> Self {
        LabSpec { communes: n, lan_hosts: 0, exclusive: true }
    }

    /// Lets other labs run at the same time: for long tests that measure
    /// no timing (an outage of minutes) and mostly wait.
    pub fn beside_others(mut self) -> Self {
        self.exclusive = false;
        self
    }

    /// Adds extra hosts on commune 1's LAN.
    pub fn with_lan_hosts(mut self, n: usize) -> Self {
        self.lan_hosts = n;
        self
    }
}

/// A node of the lab.
#[derive(Debug, Clone)]
pub struct Node {
    /// Node id, also its `topology.yaml` id: `central`, `province`, `c1`, `c2`, ...
    pub id: String,
    pub ns: Netns,
    /// The node's own address: where its agent or collector listens.
    pub addr: Ipv4Addr,
}

/// The lab's addresses (services on the province namespace's loopback).
pub mod addrs {
    use std::net::Ipv4Addr;
    /// Central end of the provincial uplink: where the collector listens.
    pub const CENTRAL: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);
    /// Province end of the uplink.
    pub const PROVINCE: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 2);
    /// A provincial service address (web portal).
    pub const PORTAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
    /// The provincial DNS server.
    pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 53);
    /// A plain TCP service.
    pub const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);

    /// Commune `i`'s end of its WAN link.
    pub fn commune_wan(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, i as u8, 2)
    }
    /// The provincial gateway as commune `i` sees it (province end of its WAN link).
    pub fn gateway(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 1, i as u8, 1)
    }
    /// Commune `i`'s LAN address.
    pub fn commune_lan(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 2, i as u8, 1)
    }
    /// Extra host `k` (0-based) on commune `i`'s LAN.
    pub fn lan_host(i: usize, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 2, i as u8, 10 + k as u8)
    }
}

/// A link between two nodes, through a bridge that impairs it.
pub struct Link {
    /// `c1`..`cN` for WAN links, `uplink` for province-central.
    pub name: String,
    /// Namespace and interface at the upper end (province, or central), where rate limits apply.
    upper: (Netns, String),
    /// Namespace and interface at the lower end (the commune, or the province).
    lower: (Netns, String),
    middle: Netns,
    bridge: Child,
    control: ChildStdin,
    replies: BufReader<ChildStdout>,
}

impl Link {
    /// Sets what the link does to frames towards the lower end (replies to the
    /// commune's probes): a round trip sees each figure once.
    pub fn impair(&mut self, imp: Impairment) -> anyhow::Result<()> {
        self.set("b2a", imp)
    }

    /// Sets each direction separately: `down` towards the lower end, `up` towards the upper end.
    pub fn impair_both(&mut self, down: Impairment, up: Impairment) -> anyhow::Result<()> {
        self.set("b2a", down)?;
        self.set("a2b", up)
    }

    /// Holds every frame both ways for `d`, then lets them go in order: a
    /// stalled path, not a cut.
    pub fn hold(&mut self, d: Duration) -> anyhow::Result<()> {
        self.command(&format!("hold {}", d.as_millis()))
    }

    fn set(&mut self, dir: &str, imp: Impairment) -> anyhow::Result<()> {
        self.command(&format!("set {dir} {imp}"))
    }

    fn command(&mut self, command: &str) -> anyhow::Result<()> {
        writeln!(self.control, "{command}")?;
        self.control.flush()?;
        let mut reply = String::new();
        self.replies.read_line(&mut reply)?;
        if reply.trim() != "ok" {
            bail!("bridge of link {} refused {command}: {}", self.name, reply.trim());
        }
        Ok(())
    }

    /// Cuts the link or restores it. The cut is in the middle, like a cable or
    /// a provider outage: both ends lose carrier but stay configured (an
    /// administrative down would make the kernel flush their routes).
    pub fn set_up(&self, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        for dev in ["a", "b"] {
            self.middle.ip(&["link", "set", "dev", dev, state])?;
        }
        Ok(())
    }

    /// Whether the lower end has resolved the upper end's address again
    /// (its neighbour entry holds a MAC): after a cut, the first moment IP
    /// crosses the link. The kernel may take seconds after [`Link::set_up`]:
    /// a resolution that started during the cut runs out first.
    pub fn resolved(&self) -> anyhow::Result<bool> {
        let (ns, dev) = &self.lower;
        Ok(ns.ip(&["neigh", "show", "dev", dev])?.contains("lladdr"))
    }

    /// Limits the rate towards the lower end with a token bucket (tc tbf), or removes the limit.
    pub fn set_rate(&self, kbit: Option<u32>) -> anyhow::Result<()> {
        let (ns, dev) = &self.upper;
        let _ = ns.exec("tc", &["qdisc", "del", "dev", dev, "root"]);
        if let Some(k) = kbit {
            // A bucket of 10 ms worth of bytes (at least two full frames), so a
            // short burst already queues.
            let burst = (k as usize * 1000 / 8 / 100).max(3000);
            ns.exec(
                "tc",
                &[
                    "qdisc",
                    "add",
                    "dev",
                    dev,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{k}kbit"),
                    "burst",
                    &burst.to_string(),
                    "latency",
                    "200ms",
                ],
            )?;
        }
        Ok(())
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        let _ = self.bridge.kill();
        let _ = self.bridge.wait();
    }
}

/// A built lab. Dropping it tears everything down.
pub struct Lab {
    pub prefix: String,
    pub central: Node,
    pub province: Node,
    pub communes: Vec<Node>,
    /// Extra hosts on commune 1's LAN.
    pub lan_hosts: Vec<Node>,
    links: Vec<Link>,
    /// Working directory for configs, certificates and logs.
    pub dir: tempfile::TempDir,
    /// How long the build took.
    pub build_time: Duration,
    namespaces: Vec<Netns>,
    _guard: Option<std::sync::MutexGuard<'static, ()>>,
}

/// The parts of a lab while it is being built (namespaces are tracked by the caller).
struct Built {
    central: Node,
    province: Node,
    communes: Vec<Node>,
    lan_hosts: Vec<Node>,
    links: Vec<Link>,
}

fn labnet() -> PathBuf {
    crate::bin("tw-labnet")
}

impl Lab {
    /// Builds the lab; removes stale namespaces of dead runs first.
    pub fn build(spec: LabSpec) -> anyhow::Result<Lab> {
        if let Some(why) = unavailable() {
            bail!("the lab cannot run here: {why}");
        }
        if !(1..=250).contains(&spec.communes) {
            bail!("communes must be 1..=250");
        }
        let guard = spec.exclusive.then(|| ONE_LAB.lock().unwrap_or_else(|p| p.into_inner()));
        let stale = netns::remove_stale();
        if stale > 0 {
            eprintln!("lab: removed {stale} stale namespaces of earlier runs");
        }
        let started = Instant::now();
        let prefix = format!("{}{}-{}", netns::PREFIX, std::process::id(), LAB_NO.fetch_add(1, Ordering::Relaxed));
        let mut namespaces = Vec::new();
        let result = Self::build_inner(&spec, &prefix, &mut namespaces);
        match result {
            Ok(b) => Ok(Lab {
                prefix,
                central: b.central,
                province: b.province,
                communes: b.communes,
                lan_hosts: b.lan_hosts,
                links: b.links,
                dir: tempfile::tempdir()?,
                build_time: started.elapsed(),
                namespaces,
                _guard: guard,
            }),
            Err(e) => {
                for ns in &namespaces {
                    ns.delete();
                }
                Err(e)
            }
        }
    }

    fn build_inner(spec: &LabSpec, prefix: &str, namespaces: &mut Vec<Netns>) -> anyhow::Result<Built> {
        let mut make = |role: &str| -> anyhow::Result<Netns> {
            let ns = Netns::create(&format!("{prefix}-{role}"))?;
            namespaces.push(ns.clone());
            Ok(ns)
        };
        let central = Node { id: "central".into(), ns: make("central")?, addr: addrs::CENTRAL };
        let province = Node { id: "province".into(), ns: make("province")?, addr: addrs::PROVINCE };
        province.ns.sysctl("net.ipv4.ip_forward", "1")?;
        // Provincial services live on the province's loopback (this kernel has
        // no dummy interfaces); they are routed like any other address.
        for a in [Ipv4Addr::new(10, 0, 0, 1), addrs::PORTAL, addrs::DNS, addrs::SERVICE] {
            province.ns.ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"])?;
        }

        let mut links = Vec::new();
        let uplink = Self::link(
            "uplink",
            make("m-uplink")?,
            (&province.ns, "up0", "10.255.0.2/30"),
            (&central.ns, "down0", "10.255.0.1/30"),
        )?;
        links.push(uplink);
        central.ns.ip(&["route", "add", "10.0.0.0/8", "via", "10.255.0.2"])?;

        let mut communes = Vec::new();
        for i in 1..=spec.communes {
            let id = format!("c{i}");
            let ns = make(&id)?;
            ns.sysctl("net.ipv4.ip_forward", "1")?;
            let link = Self::link(
                &id,
                make(&format!("m-{id}"))?,
                (&ns, "wan0", &format!("{}/30", addrs::commune_wan(i))),
                (&province.ns, &id, &format!("{}/30", addrs::gateway(i))),
            )?;
            links.push(link);
            ns.ip(&["route", "add", "default", "via", &addrs::gateway(i).to_string()])?;
            ns.ip(&["link", "add", "lan0", "type", "bridge"])?;
            ns.ip(&["addr", "add", &format!("{}/24", addrs::commune_lan(i)), "dev", "lan0"])?;
            ns.ip(&["link", "set", "dev", "lan0", "up"])?;
            province.ns.ip(&["route", "add", &format!("10.2.{i}.0/24"), "via", &addrs::commune_wan(i).to_string()])?;
            communes.push(Node { id, ns, addr: addrs::commune_wan(i) });
        }
        province.ns.ip(&["route", "add", "default", "via", "10.255.0.1"])?;

        let mut lan_hosts = Vec::new();
        for k in 0..spec.lan_hosts {
            let id = format!("c1h{k}");
            let ns = make(&id)?;
            let c1 = &communes[0].ns;
            let port = format!("h{k}");
            c1.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name])?;
            c1.ip(&["link", "set", "dev", &port, "master", "lan0", "up"])?;
            let addr = addrs::lan_host(1, k);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ns.ip(&["link", "set", "dev", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", &addrs::commune_lan(1).to_string()])?;
            lan_hosts.push(Node { id, ns, addr });
        }
        Ok(Built { central, province, communes, lan_hosts, links })
    }

    /// Creates `lower ⇄ [a | bridge | b] ⇄ upper`, addresses both ends, starts the bridge.
    fn link(
        name: &str,
        middle: Netns,
        lower: (&Netns, &str, &str),
        upper: (&Netns, &str, &str),
    ) -> anyhow::Result<Link> {
        for ((ns, dev, addr), mid) in [(lower, "a"), (upper, "b")] {
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", mid, "netns", &middle.name])?;
            // Offloaded checksums and segments are only finished inside the
            // kernel; frames the bridge re-injects must be complete.
            ns.exec("ethtool", &["-K", dev, "tx", "off", "tso", "off", "gso", "off"])?;
            ns.ip(&["addr", "add", addr, "dev", dev])?;
            ns.ip(&["link", "set", "dev", dev, "up"])?;
            middle.ip(&["link", "set", "dev", mid, "up"])?;
        }
        let mut child = middle
            .command(labnet(), &["bridge", "a", "b"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the link bridge")?;
        let control = child.stdin.take().context("bridge stdin")?;
        let mut replies = BufReader::new(child.stdout.take().context("bridge stdout")?);
        let mut ready = String::new();
        replies.read_line(&mut ready)?;
        if ready.trim() != "ready" {
            let _ = child.kill();
            bail!("bridge of link {name} did not start: {ready:?}");
        }
        Ok(Link {
            name: name.to_string(),
            upper: (upper.0.clone(), upper.1.to_string()),
            lower: (lower.0.clone(), lower.1.to_string()),
            middle,
            bridge: child,
            control,
            replies,
        })
    }

    /// The link called `name` (`c1`.. or `uplink`).
    pub fn link_mut(&mut self, name: &str) -> anyhow::Result<&mut Link> {
        self.links.iter_mut().find(|l| l.name == name).with_context(|| format!("no link {name}"))
    }

    /// The commune called `id`.
    pub fn commune(&self, id: &str) -> anyhow::Result<&Node> {
        self.communes.iter().find(|n| n.id == id).with_context(|| format!("no commune {id}"))
    }

    /// Every node that can run an agent: province and communes.
    pub fn agent_nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.province).chain(self.communes.iter())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.links.clear();
        for ns in &self.namespaces {
            ns.delete();
        }
    }
}
