//! Node health from /proc and /sys: CPU time, memory, filesystems, load,
//! uptime, and the WAN interface's byte, packet, error and drop counters,
//! so a saturated link is told apart from a lossy one. Plain file reads:
//! callers run [`NodeSampler::sample`] on a blocking thread.

use std::path::{Path, PathBuf};

use tierwatch_protocol::catalogue::{self, MetricDef};
use tierwatch_protocol::{Label, Series};

/// What to sample.
#[derive(Debug, Clone)]
pub struct NodeSampler {
    /// The WAN interface; `None` = the interface of the default route.
    pub wan: Option<String>,
    /// Mount points whose space is reported.
    pub filesystems: Vec<PathBuf>,
    /// Where /proc and /sys are (tests point these at fixtures).
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
}

impl NodeSampler {
    /// A sampler of the live system.
    pub fn new(wan: Option<String>, filesystems: Vec<PathBuf>) -> Self {
        NodeSampler { wan, filesystems, proc_root: "/proc".into(), sys_root: "/sys".into() }
    }

    /// The interface carrying the default IPv4 route, from /proc/net/route.
    pub fn default_route_interface(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.proc_root.join("net/route")).ok()?;
        text.lines().skip(1).find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
        })
    }

    /// Reads everything once; unreadable sources are skipped (and named in the returned errors).
    pub fn sample(&self, ts: i64) -> (Vec<Series>, Vec<String>) {
        let mut out = Vec::new();
        let mut errors = Vec::new();
        let mut push = |def: &MetricDef, labels: &[(&str, &str)], value: f64| {
            out.push(Series::point(
                def.name,
                def.kind,
                labels.iter().map(|(n, v)| Label::new(*n, *v)).collect(),
                ts,
                value,
            ))
        };
        match std::fs::read_to_string(self.proc_root.join("stat")) {
            Ok(text) => {
                if let Some(cpu) = text.lines().find(|l| l.starts_with("cpu ")) {
                    // USER_HZ is 100 on every Linux architecture we run on.
                    const MODES: [&str; 8] = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
                    for (mode, v) in MODES.iter().zip(cpu.split_whitespace().skip(1)) {
                        if let Ok(ticks) = v.parse::<f64>() {
                            push(&catalogue::NODE_CPU, &[("mode", mode)], ticks / 100.0);
                        }
                    }
                }
            }
            Err(e) => errors.push(format!("/proc/stat: {e}")),
        }
        match std::fs::read_to_string(self.proc_root.join("meminfo")) {
            Ok(text) => {
                let kb = |key: &str| {
                    text.lines()
                        .find(|l| l.starts_with(key))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<f64>().ok())
                };
                if let Some(t) = kb("MemTotal:") {
                    push(&catalogue::NODE_MEM_TOTAL, &[], t * 1024.0);
                }
                if let Some(a) = kb("MemAvailable:") {
                    push(&catalogue::NODE_MEM_AVAILABLE, &[], a * 1024.0);
                }
            }
            Err(e) => errors.push(format!("/proc/meminfo: {e}")),
        }
        match std::fs::read_to_string(self.proc_root.join("loadavg")) {
            Ok(text) => {
                let v: Vec<f64> = text.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
                if let [l1, l5, l15] = v[..] {
                    push(&catalogue::NODE_LOAD1, &[], l1);
                    push(&catalogue::NODE_LOAD5, &[], l5);
                    push(&catalogue::NODE_LOAD15, &[], l15);
                }
            }
            Err(e) => errors.push(format!("/proc/loadavg: {e}")),
        }
        match std::fs::read_to_string(self.proc_root.join("uptime")) {
            Ok(text) => {
                if let Some(up) = text.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
                    push(&catalogue::NODE_UPTIME, &[], up);
                }
            }
            Err(e) => errors.push(format!("/proc/uptime: {e}")),
        }
        for fs in &self.filesystems {
            match nix::sys::statvfs::statvfs(fs.as_path()) {
                Ok(st) => {
                    let frag = st.fragment_size() as f64;
                    let mp = fs.display().to_string();
                    push(&catalogue::NODE_FS_SIZE, &[("mountpoint", &mp)], st.blocks() as f64 * frag);
                    push(&catalogue::NODE_FS_AVAIL, &[("mountpoint", &mp)], st.blocks_available() as f64 * frag);
                }
                Err(e) => errors.push(format!("statvfs {}: {e}", fs.display())),
            }
        }
        let wan = self.wan.clone().or_else(|| self.default_route_interface());
        match wan {
            Some(iface) => {
                let dir = self.sys_root.join("class/net").join(&iface).join("statistics");
                for (file, def) in [
                    ("rx_bytes", &catalogue::NODE_NET_RX_BYTES),
                    ("tx_bytes", &catalogue::NODE_NET_TX_BYTES),
                    ("rx_packets", &catalogue::NODE_NET_RX_PACKETS),
                    ("tx_packets", &catalogue::NODE_NET_TX_PACKETS),
                    ("rx_errors", &catalogue::NODE_NET_RX_ERRORS),
                    ("tx_errors", &catalogue::NODE_NET_TX_ERRORS),
                    ("rx_dropped", &catalogue::NODE_NET_RX_DROPS),
                    ("tx_dropped", &catalogue::NODE_NET_TX_DROPS),
                ] {
                    match read_number(&dir.join(file)) {
                        Some(v) => push(def, &[("interface", &iface)], v),
                        None => errors.push(format!("{}: unreadable", dir.join(file).display())),
                    }
                }
            }
            None => errors.push("no WAN interface: no default route and none configured".into()),
        }
        (out, errors)
    }
}

fn read_number(p: &Path) -> Option<f64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> (tempfile::TempDir, NodeSampler) {
        let d = tempfile::tempdir().unwrap();
        let proc_root = d.path().join("proc");
        let sys_root = d.path().join("sys");
        std::fs::create_dir_all(proc_root.join("net")).unwrap();
        std::fs::write(proc_root.join("stat"), "cpu  100 0 50 1000 5 0 1 0 0 0\ncpu0 1 2 3\n").unwrap();
        std::fs::write(
            proc_root.join("meminfo"),
            "MemTotal:        2048 kB\nMemFree:  10 kB\nMemAvailable:    1024 kB\n",
        )
        .unwrap();
        std::fs::write(proc_root.join("loadavg"), "0.50 0.25 0.10 1/100 1234\n").unwrap();
        std::fs::write(proc_root.join("uptime"), "3600.50 100.0\n").unwrap();
        std::fs::write(
            proc_root.join("net/route"),
            "Iface\tDestination\tGateway\nlan0\t0001A8C0\t00000000\nwan0\t00000000\t0101A8C0\n",
        )
        .unwrap();
        let stats = sys_root.join("class/net/wan0/statistics");
        std::fs::create_dir_all(&stats).unwrap();
        for (f, v) in [
            ("rx_bytes", 1000),
            ("tx_bytes", 2000),
            ("rx_packets", 10),
            ("tx_packets", 20),
            ("rx_errors", 1),
            ("tx_errors", 0),
            ("rx_dropped", 3),
            ("tx_dropped", 0),
        ] {
            std::fs::write(stats.join(f), format!("{v}\n")).unwrap();
        }
        let s = NodeSampler { wan: None, filesystems: vec!["/".into()], proc_root, sys_root };
        (d, s)
    }

    fn value(series: &[Series], name: &str, label: Option<(&str, &str)>) -> Option<f64> {
        series
            .iter()
            .find(|s| s.name == name && label.is_none_or(|(k, v)| s.labels.iter().any(|l| l.name == k && l.value == v)))
            .map(|s| s.points[0].value)
    }

    #[test]
    fn samples_every_source_in_base_units() {
        let (_d, s) = fixture();
        assert_eq!(s.default_route_interface().as_deref(), Some("wan0"));
        let (series, errors) = s.sample(1);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(value(&series, "tierwatch_node_cpu_seconds_total", Some(("mode", "idle"))), Some(10.0));
        assert_eq!(value(&series, "tierwatch_node_memory_total_bytes", None), Some(2048.0 * 1024.0));
        assert_eq!(value(&series, "tierwatch_node_memory_available_bytes", None), Some(1024.0 * 1024.0));
        assert_eq!(value(&series, "tierwatch_node_load5", None), Some(0.25));
        assert_eq!(value(&series, "tierwatch_node_uptime_seconds", None), Some(3600.5));
        assert_eq!(value(&series, "tierwatch_node_network_receive_drop_total", Some(("interface", "wan0"))), Some(3.0));
        assert!(
            value(&series, "tierwatch_node_filesystem_size_bytes", Some(("mountpoint", "/"))).is_some_and(|v| v > 0.0)
        );
    }

    #[test]
    fn missing_sources_are_named_not_fatal() {
        let (_d, mut s) = fixture();
        s.wan = Some("eth9".into());
        let (series, errors) = s.sample(1);
        assert!(errors.iter().any(|e| e.contains("eth9")), "{errors:?}");
        assert!(value(&series, "tierwatch_node_uptime_seconds", None).is_some());
    }

    /// The live system parses too.
    #[test]
    fn samples_this_machine() {
        let (series, _) = NodeSampler::new(None, vec!["/".into()]).sample(1);
        assert!(value(&series, "tierwatch_node_memory_total_bytes", None).is_some_and(|v| v > 0.0));
    }
}
