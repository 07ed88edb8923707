//! Listening-port drift: the TCP listeners and bound UDP sockets of the
//! node (`/proc/net/{tcp,tcp6,udp,udp6}` of the agent's network namespace)
//! against the baseline taken when the agent started. A new listener is a
//! `new_listener` event (warning; info when bound to loopback only), one
//! whose owning program changed is `listener_owner_changed`, with the
//! program that owns it as evidence (from `/proc/<pid>/fd`, looked up only
//! when something changed).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use tierwatch_protocol::{Event, Severity};

/// One listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub proto: &'static str,
    pub addr: IpAddr,
    pub port: u16,
}

impl Listener {
    fn loopback_only(&self) -> bool {
        self.addr.is_loopback()
    }
}

/// Parses one `/proc/net/{tcp,udp}[6]` table: listening TCP sockets
/// (state 0A), bound unconnected UDP sockets (state 07 with no remote).
/// Returns each listener with its socket inode.
pub fn parse_table(text: &str, proto: &'static str, v6: bool) -> Vec<(Listener, u64)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        let wanted = match proto {
            "tcp" => f[3] == "0A",
            _ => f[3] == "07" && f[2].ends_with(":0000"),
        };
        if !wanted {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else { continue };
        let (Some(addr), Ok(port)) = (parse_addr(addr, v6), u16::from_str_radix(port, 16)) else { continue };
        let inode = f[9].parse().unwrap_or(0);
        out.push((Listener { proto, addr, port }, inode));
    }
    out
}

/// The kernel prints addresses as 32-bit words in host byte order.
fn parse_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    if hex.len() != if v6 { 32 } else { 8 } {
        return None;
    }
    let mut raw = Vec::with_capacity(16);
    for i in 0..hex.len() / 8 {
        raw.extend(u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok()?.to_ne_bytes());
    }
    Some(match <[u8; 16]>::try_from(&raw[..]) {
        Ok(b) => IpAddr::from(b),
        Err(_) => IpAddr::from(<[u8; 4]>::try_from(&raw[..]).ok()?),
    })
}

/// The listeners of this network namespace now, with socket inodes.
pub fn current(proc_net: &Path) -> Vec<(Listener, u64)> {
    let mut out = Vec::new();
    for (file, proto, v6) in
        [("tcp", "tcp", false), ("tcp6", "tcp", true), ("udp", "udp", false), ("udp6", "udp", true)]
    {
        if let Ok(text) = std::fs::read_to_string(proc_net.join(file)) {
            out.extend(parse_table(&text, proto, v6));
        }
    }
    out
}

/// The program (pid and name) holding socket `inode`, by a scan of `/proc/*/fd`.
pub fn owner(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_string()));
            }
        }
    }
    None
}

/// The baseline and what was reported.
#[derive(Debug, Default)]
pub struct ListenWatch {
    /// Listener → the program expected to own it (from the baseline or when first seen).
    known: HashMap<Listener, String>,
    /// Socket inode per listener at the last check: a new one means it was opened again.
    inodes: HashMap<Listener, u64>,
    /// Ports never reported (`22`, or a whole service's).
    allow: HashSet<u16>,
    started: bool,
}

impl ListenWatch {
    /// A watch that never reports `allow`ed ports.
    pub fn new(allow: Vec<u16>) -> Self {
        ListenWatch { allow: allow.into_iter().collect(), ..Default::default() }
    }

    /// Compares `now` (listeners with socket inodes; owners looked up by
    /// `owner` only for what changed) with the baseline; the first call takes it.
    pub fn check(
        &mut self,
        now: Vec<(Listener, u64)>,
        mut owner: impl FnMut(u64) -> Option<(u32, String)>,
        now_ms: i64,
    ) -> Vec<Event> {
        let mut out = Vec::new();
        let first = !self.started;
        self.started = true;
        for (l, inode) in now {
            let reopened = self.inodes.insert(l.clone(), inode) != Some(inode);
            if first {
                let comm = owner(inode).map(|o| o.1).unwrap_or_default();
                self.known.insert(l, comm);
                continue;
            }
            if self.allow.contains(&l.port) || !reopened {
                continue;
            }
            let (pid, comm) = owner(inode).unwrap_or((0, String::new()));
            match self.known.get(&l).cloned() {
                None => {
                    let severity = if l.loopback_only() { Severity::Info } else { Severity::Warning };
                    out.push(event("new_listener", severity, &l, pid, &comm, None, now_ms));
                    self.known.insert(l, comm);
                }
                Some(expected) if !comm.is_empty() && !expected.is_empty() && comm != expected => {
                    out.push(event(
                        "listener_owner_changed",
                        Severity::Warning,
                        &l,
                        pid,
                        &comm,
                        Some(&expected),
                        now_ms,
                    ));
                    self.known.insert(l, comm);
                }
                Some(_) => {}
            }
        }
        out
    }
}

fn event(
    kind: &str,
    severity: Severity,
    l: &Listener,
    pid: u32,
    comm: &str,
    previous: Option<&str>,
    now_ms: i64,
) -> Event {
    let mut attributes = BTreeMap::from([
        ("proto".to_string(), l.proto.to_string()),
        ("addr".to_string(), l.addr.to_string()),
        ("port".to_string(), l.port.to_string()),
        ("src".to_string(), format!("{}:{}", l.addr, l.port)),
        ("process".to_string(), comm.to_string()),
        ("pid".to_string(), pid.to_string()),
    ]);
    if let Some(p) = previous {
        attributes.insert("previous_process".into(), p.to_string());
    }
    Event::new(kind, severity, now_ms, attributes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1002 1 0000000000000000 100 0 0 10 0
   2: 0101020A:0016 3201020A:C350 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn tables_parse_listeners_only() {
        let got = parse_table(TCP, "tcp", false);
        assert_eq!(got.len(), 2, "the established connection is not a listener");
        assert_eq!(got[0].0, Listener { proto: "tcp", addr: "127.0.0.1".parse().unwrap(), port: 3306 });
        assert_eq!(got[1], (Listener { proto: "tcp", addr: "0.0.0.0".parse().unwrap(), port: 22 }, 1002));
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2001 1\n";
        assert_eq!(parse_table(v6, "tcp", true)[0].0.addr, "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn new_listeners_and_changed_owners_after_the_baseline() {
        let l = |port: u16| Listener { proto: "tcp", addr: "0.0.0.0".parse().unwrap(), port };
        let mut w = ListenWatch::new(vec![8080]);
        let owners = |inode: u64| Some((inode as u32, if inode == 9 { "nc".to_string() } else { "sshd".to_string() }));
        assert!(w.check(vec![(l(22), 1)], owners, 0).is_empty(), "the baseline");
        assert!(w.check(vec![(l(22), 1)], owners, 1).is_empty());
        let e = w.check(vec![(l(22), 1), (l(4444), 9), (l(8080), 10)], owners, 2);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(
            (e[0].kind.as_str(), e[0].attributes["port"].as_str(), e[0].attributes["process"].as_str()),
            ("new_listener", "4444", "nc")
        );
        assert!(w.check(vec![(l(22), 1), (l(4444), 9)], owners, 3).is_empty(), "reported once");
        // sshd's port opened again by another program.
        let e = w.check(vec![(l(22), 9), (l(4444), 9)], owners, 4);
        assert_eq!(e[0].kind, "listener_owner_changed");
        assert_eq!(e[0].attributes["previous_process"], "sshd");
        // Loopback only: info.
        let lo = Listener { proto: "tcp", addr: "127.0.0.1".parse().unwrap(), port: 5000 };
        assert_eq!(w.check(vec![(lo, 11)], owners, 5)[0].severity, Severity::Info as i32);
    }
}
