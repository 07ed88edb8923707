//! Real services inside the lab: nginx (HTTP, and HTTPS with a valid, an
//! expired and a wrong-host certificate, all made at test time), dnsmasq
//! (DNS with known records, reloadable), radvd (a rogue IPv6 router), and
//! plain TCP listeners.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use time::OffsetDateTime;

use super::netns::Netns;
use super::Lab;
use crate::Proc;

/// Host name the valid portal certificate is for.
pub const PORTAL_HOST: &str = "portal.lab";
/// HTTPS port with the valid certificate.
pub const HTTPS_VALID: u16 = 443;
/// HTTPS port with an expired certificate.
pub const HTTPS_EXPIRED: u16 = 8443;
/// HTTPS port with a certificate for another host name.
pub const HTTPS_WRONG_HOST: u16 = 9443;

/// A CA made at test time, and the certificates nginx serves.
pub struct WebPki {
    /// The CA certificate (PEM) a probe must trust.
    pub ca: PathBuf,
    dir: PathBuf,
}

fn leaf(
    dir: &Path,
    name: &str,
    host: &str,
    expired: bool,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> anyhow::Result<()> {
    let mut p = CertificateParams::new(vec![host.to_string()])?;
    p.distinguished_name.push(DnType::CommonName, host);
    let now = OffsetDateTime::now_utc();
    if expired {
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    } else {
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(30);
    }
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, ca, ca_key)?;
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem())?;
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
    Ok(())
}

impl WebPki {
    /// Makes the CA and the three server certificates in `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<WebPki> {
        std::fs::create_dir_all(dir)?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "tierwatch lab web CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca = p.self_signed(&ca_key)?;
        std::fs::write(dir.join("web-ca.crt"), ca.pem())?;
        leaf(dir, "valid", PORTAL_HOST, false, &ca, &ca_key)?;
        leaf(dir, "expired", PORTAL_HOST, true, &ca, &ca_key)?;
        leaf(dir, "wrong-host", "other.example", false, &ca, &ca_key)?;
        Ok(WebPki { ca: dir.join("web-ca.crt"), dir: dir.to_path_buf() })
    }
}

/// nginx serving the provincial portal.
pub struct Nginx {
    pub proc: Proc,
    /// Document root: rewrite `index.html` to change what the portal serves.
    pub root: PathBuf,
    pub pki: WebPki,
}

impl Nginx {
    /// Replaces the portal's front page.
    pub fn set_page(&self, html: &str) -> anyhow::Result<()> {
        std::fs::write(self.root.join("index.html"), html)?;
        std::fs::write(self.root.join("crawler.html"), html)?;
        Ok(())
    }

    /// Serves `html` on port 80 to search-engine crawlers only (their User-Agent says Googlebot).
    pub fn set_crawler_page(&self, html: &str) -> anyhow::Result<()> {
        std::fs::write(self.root.join("crawler.html"), html)?;
        Ok(())
    }
}

/// dnsmasq answering for the province.
pub struct Dnsmasq {
    pub proc: Proc,
    hosts: PathBuf,
}

impl Dnsmasq {
    /// Replaces the A records (`name -> address`) and makes dnsmasq reload them.
    pub fn set_records(&self, records: &[(&str, Ipv4Addr)]) -> anyhow::Result<()> {
        write_hosts(&self.hosts, records)?;
        // `ip netns exec` execs the program, so the child's pid is dnsmasq's.
        crate::signal(self.proc.pid(), "HUP");
        Ok(())
    }
}

fn write_hosts(path: &Path, records: &[(&str, Ipv4Addr)]) -> anyhow::Result<()> {
    let text: String = records.iter().map(|(n, a)| format!("{a} {n}\n")).collect();
    std::fs::write(path, text)?;
    Ok(())
}

/// Waits until `ns` has a socket on `port` (`-t` TCP listener, `-u` UDP), checked with `ss`.
fn wait_listening(ns: &Netns, proto: &str, port: u16, what: &str) -> anyhow::Result<()> {
    crate::wait_for(Duration::from_secs(10), what, || {
        let out = ns.exec("ss", &["-Hln", proto, &format!("sport = :{port}")]).ok()?;
        (!out.trim().is_empty()).then_some(())
    })
}

impl Lab {
    /// Starts nginx in the province on the portal address: HTTP on 80, HTTPS
    /// with a valid certificate on 443, an expired one on 8443, one for the
    /// wrong host on 9443.
    pub fn start_nginx(&self) -> anyhow::Result<Nginx> {
        let dir = self.dir.path().join("nginx");
        let root = dir.join("www");
        std::fs::create_dir_all(&root)?;
        let home = "<html><head><title>Cổng dịch vụ công tỉnh An Giang</title></head><body>Dịch vụ công trực tuyến</body></html>\n";
        std::fs::write(root.join("index.html"), home)?;
        // What a search-engine crawler is served on port 80 (SEO cloaking: `set_crawler_page`).
        std::fs::write(root.join("crawler.html"), home)?;
        let pki = WebPki::new(&dir.join("tls"))?;
        let a = super::addrs::PORTAL;
        let tls = |port: u16, name: &str| {
            format!(
                "server {{ listen {a}:{port} ssl; server_name {PORTAL_HOST}; root {root}; ssl_certificate {d}/{name}.crt; ssl_certificate_key {d}/{name}.key; }}\n",
                root = root.display(),
                d = pki.dir.display()
            )
        };
        let conf = format!(
            "user root;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {dir}/tmp; proxy_temp_path {dir}/tmp; fastcgi_temp_path {dir}/tmp; uwsgi_temp_path {dir}/tmp; scgi_temp_path {dir}/tmp;\n\
             default_type text/html;\n ssl_protocols TLSv1.2 TLSv1.3;\n server {{ listen {a}:80; server_name {PORTAL_HOST}; root {root}; location = / {{ if ($http_user_agent ~* googlebot) {{ rewrite ^ /crawler.html break; }} }} }}\n{v}{e}{w}}}\n",
            dir = dir.display(),
            root = root.display(),
            v = tls(HTTPS_VALID, "valid"),
            e = tls(HTTPS_EXPIRED, "expired"),
            w = tls(HTTPS_WRONG_HOST, "wrong-host"),
        );
        std::fs::create_dir_all(dir.join("tmp"))?;
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let nginx = crate::which("nginx").context("nginx is not installed (Debian package nginx)")?;
        let mut cmd =
            self.province.ns.command(&nginx, &["-c", conf_path.to_str().unwrap_or_default(), "-g", "daemon off;"]);
        cmd.stdout(Stdio::null());
        let proc = Proc::spawn_command("nginx", &mut cmd, &dir.join("stderr.log"))?;
        for port in [80, HTTPS_VALID, HTTPS_EXPIRED, HTTPS_WRONG_HOST] {
            wait_listening(&self.province.ns, "-t", port, "nginx listening")?;
        }
        Ok(Nginx { proc, root, pki })
    }

    /// Starts dnsmasq in the province on the DNS address, answering `records`
    /// (and nothing else: no upstream, no /etc/hosts).
    pub fn start_dnsmasq(&self, records: &[(&str, Ipv4Addr)]) -> anyhow::Result<Dnsmasq> {
        let dir = self.dir.path().join("dnsmasq");
        std::fs::create_dir_all(&dir)?;
        let hosts = dir.join("hosts");
        write_hosts(&hosts, records)?;
        let args = [format!("--addn-hosts={}", hosts.display()), format!("--listen-address={}", super::addrs::DNS)];
        let proc = dnsmasq(&self.province.ns, &dir, &args)?;
        wait_listening(&self.province.ns, "-t", 53, "dnsmasq listening")?;
        Ok(Dnsmasq { proc, hosts })
    }

    /// Starts dnsmasq as a DHCP server on `host`'s `eth0` (for example a
    /// rogue server on a commune LAN), leasing `first..=last`.
    pub fn start_dhcp_server(&self, host: &Netns, first: Ipv4Addr, last: Ipv4Addr) -> anyhow::Result<Proc> {
        self.start_dhcp_server_on(host, "eth0", first, last)
    }

    /// As [`Lab::start_dhcp_server`], on `interface` (`lan0`: the commune's own server).
    pub fn start_dhcp_server_on(
        &self,
        host: &Netns,
        interface: &str,
        first: Ipv4Addr,
        last: Ipv4Addr,
    ) -> anyhow::Result<Proc> {
        let dir = self.dir.path().join(format!("dhcp-{}", host.name));
        std::fs::create_dir_all(&dir)?;
        let args = [
            "--port=0".to_string(),
            format!("--interface={interface}"),
            format!("--dhcp-range={first},{last},255.255.255.0,1h"),
            format!("--dhcp-leasefile={}/leases", dir.display()),
        ];
        let proc = dnsmasq(host, &dir, &args)?;
        wait_listening(host, "-u", 67, "DHCP server listening").with_context(|| proc.log_text())?;
        Ok(proc)
    }

    /// Starts radvd on `host`'s `eth0` announcing `prefix`/64 and the DNS
    /// server `dns`, as a rogue IPv6 router on an IPv4-only LAN would. IPv6
    /// is turned on for that interface only (the lab keeps it off); returns
    /// radvd and the host's link-local address, the advertisements' source.
    /// With `unicast_to`, the advertisements go to that one address only.
    pub fn start_router_advertiser(
        &self,
        host: &Netns,
        prefix: std::net::Ipv6Addr,
        dns: std::net::Ipv6Addr,
        unicast_to: Option<std::net::Ipv6Addr>,
    ) -> anyhow::Result<(Proc, std::net::Ipv6Addr)> {
        let program = crate::which("radvd").context("radvd is not installed (Debian package radvd)")?;
        // No duplicate address detection: the link-local address is usable at once.
        host.sysctl("net.ipv6.conf.eth0.accept_dad", "0")?;
        host.sysctl("net.ipv6.conf.eth0.disable_ipv6", "0")?;
        // radvd refuses to advertise from a host that does not route IPv6.
        host.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        let link_local = crate::wait_for(Duration::from_secs(5), "eth0's link-local address", || {
            let out = host.ip(&["-6", "-o", "addr", "show", "dev", "eth0", "scope", "link"]).ok()?;
            let addr = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1)?;
            addr.split('/').next()?.parse().ok()
        })?;
        let dir = self.dir.path().join(format!("radvd-{}", host.name));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("radvd.conf");
        std::fs::write(
            &conf,
            format!(
                "interface eth0 {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 4;\n  AdvDefaultLifetime 1800;\n  prefix {prefix}/64 {{ AdvOnLink on; AdvAutonomous on; }};\n  RDNSS {dns} {{ }};\n{unicast}}};\n",
                // To one victim only: no multicast RA for the other hosts (or a gateway's port) to see.
                unicast = unicast_to.map(|c| format!("  UnicastOnly on;\n  clients {{ {c}; }};\n")).unwrap_or_default()
            ),
        )?;
        let (conf, pid) = (conf.display().to_string(), dir.join("radvd.pid").display().to_string());
        let mut cmd =
            host.command(&program, &["--nodaemon", "--config", &conf, "--pidfile", &pid, "--logmethod", "stderr"]);
        cmd.stdout(Stdio::null());
        Ok((Proc::spawn_command("radvd", &mut cmd, &dir.join("stderr.log"))?, link_local))
    }

    /// Starts plain TCP listeners (accept and close) at `addrs` inside `ns`.
    pub fn start_listener(&self, ns: &Netns, addrs: &[&str]) -> anyhow::Result<Proc> {
        let mut args = vec!["listen"];
        args.extend_from_slice(addrs);
        let mut cmd = ns.command(crate::bin("tw-labnet"), &args);
        cmd.stdout(Stdio::piped());
        let mut proc =
            Proc::spawn_command("listener", &mut cmd, &self.dir.path().join(format!("listener-{}.log", ns.name)))?;
        let stdout = proc.take_stdout().context("listener stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("listener did not start: {}", proc.log_text());
        }
        Ok(proc)
    }
}

/// Runs dnsmasq in `ns` in the foreground with nothing from the host (no
/// /etc config, resolv.conf or hosts), plus `extra` arguments; logs in `dir`.
fn dnsmasq(ns: &Netns, dir: &Path, extra: &[String]) -> anyhow::Result<Proc> {
    let program = crate::which("dnsmasq").context("dnsmasq is not installed (Debian package dnsmasq-base)")?;
    let mut args = vec![
        "--keep-in-foreground".to_string(),
        "--conf-file=/dev/null".into(),
        "--no-resolv".into(),
        "--no-hosts".into(),
        "--bind-interfaces".into(),
        "--user=root".into(),
        format!("--pid-file={}/dnsmasq.pid", dir.display()),
        "--log-facility=-".into(),
    ];
    args.extend_from_slice(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = ns.command(&program, &args);
    cmd.stdout(Stdio::null());
    Proc::spawn_command("dnsmasq", &mut cmd, &dir.join("stderr.log"))
}
