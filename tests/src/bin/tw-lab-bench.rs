//! Lab benchmarks and inspection (root only):
//! - `tw-lab-bench build N...`: time to build (and tear down) a lab of N communes.
//! - `tw-lab-bench accuracy`: configured vs measured delay, jitter and loss (fping, 1,000 packets).
//! - `tw-lab-bench hold N SECONDS`: build a lab and keep it up, for inspection with `ip netns`.
//! - `tw-lab-bench icmp1000 [SECONDS]`: agent vs fping vs blackbox_exporter+Prometheus on 1,000 ICMP targets.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tierwatch_tests::lab::impair::Impairment;
use tierwatch_tests::lab::{addrs, fping, Lab, LabSpec};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build") => {
            println!("{:>9} {:>12} {:>12}", "communes", "build", "teardown");
            for n in &args[1..] {
                let n: usize = n.parse().context("N")?;
                let lab = Lab::build(LabSpec::communes(n))?;
                let built = lab.build_time;
                let t = Instant::now();
                drop(lab);
                println!("{n:>9} {:>10.2} s {:>10.2} s", built.as_secs_f64(), t.elapsed().as_secs_f64());
            }
            Ok(())
        }
        Some("accuracy") => accuracy(),
        Some("icmp1000") => {
            icmp1000(args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(120), args.get(2).map(String::as_str))
        }
        Some("hold") if args.len() == 3 => {
            let lab = Lab::build(LabSpec::communes(args[1].parse()?))?;
            println!("lab {} up; namespaces: ip netns list | grep {}", lab.prefix, lab.prefix);
            std::thread::sleep(Duration::from_secs(args[2].parse()?));
            Ok(())
        }
        _ => bail!("usage: tw-lab-bench build N... | accuracy | hold N SECONDS | icmp1000 [SECONDS]"),
    }
}

fn accuracy() -> anyhow::Result<()> {
    let mut lab = Lab::build(LabSpec::communes(1))?;
    let gw = addrs::gateway(1).to_string();
    let ns = lab.communes[0].ns.clone();
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "configured", "median ms", "p5 ms", "p95 ms", "stddev ms", "loss %"
    );
    let cases = [(0, 0, 0.0), (10, 0, 0.0), (40, 10, 0.05), (40, 10, 0.0), (100, 30, 0.10), (20, 5, 0.01)];
    for (d, j, l) in cases {
        lab.link_mut("c1")?
            .impair(Impairment::delay(Duration::from_millis(d), Duration::from_millis(j)).with_loss(l))?;
        let rtts = fping(&ns, &gw, 1000, 10)?;
        let mut got: Vec<f64> = rtts.iter().flatten().copied().collect();
        got.sort_by(|a, b| a.total_cmp(b));
        let n = got.len();
        if n == 0 {
            bail!("no replies for {d} ms ± {j} ms, {l} loss");
        }
        let mean = got.iter().sum::<f64>() / n as f64;
        let sd = (got.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
        let q = |p: f64| got[((n - 1) as f64 * p).round() as usize];
        println!(
            "{:<28} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.1}",
            format!("{d} ms ± {j} ms, {:.0}% loss", l * 100.0),
            q(0.5),
            q(0.05),
            q(0.95),
            sd,
            (1.0 - n as f64 / rtts.len() as f64) * 100.0
        );
    }
    Ok(())
}

/// CPU ticks (user + system) and RSS / peak RSS in kB of a process.
fn usage(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map(|x| x.1).context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok((ticks, kb("VmRSS:"), kb("VmHWM:")))
}

struct Measured {
    name: String,
    cpu_core: f64,
    rss_mb: f64,
    peak_mb: f64,
}

/// Measures `pids` over `secs` seconds after `warmup`.
fn measure(name: &str, pids: &[(String, u32)], warmup: u64, secs: u64) -> anyhow::Result<Vec<Measured>> {
    eprintln!("{name}: warming up {warmup} s, measuring {secs} s");
    std::thread::sleep(Duration::from_secs(warmup));
    let before: Vec<u64> = pids.iter().map(|(_, p)| usage(*p).map(|u| u.0)).collect::<anyhow::Result<_>>()?;
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = t.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|((n, p), b)| {
            let (ticks, rss, hwm) = usage(*p)?;
            Ok(Measured {
                name: n.clone(),
                cpu_core: (ticks - b) as f64 / 100.0 / wall,
                rss_mb: rss as f64 / 1024.0,
                peak_mb: hwm as f64 / 1024.0,
            })
        })
        .collect()
}

/// 1,000 ICMP targets at 20 echo requests per target per minute, probed from
/// commune c1 through its WAN link: tierwatch-agent (pushing to a collector),
/// `fping -l -p 3000`, and blackbox_exporter driven by Prometheus (3 s scrapes).
fn icmp1000(secs: u64, only: Option<&str>) -> anyhow::Result<()> {
    let run = |tool: &str| only.is_none_or(|o| o == tool);
    use tierwatch_tests::lab::system::SystemSpec;
    let lab = Lab::build(LabSpec::communes(1))?;
    let targets: Vec<String> = (0..1000).map(|i| format!("10.50.{}.{}", i / 250, i % 250 + 1)).collect();
    let batch: String = targets.iter().map(|t| format!("addr add {t}/32 dev lo\n")).collect();
    let mut ip = std::process::Command::new("ip")
        .args(["-n", &lab.province.ns.name, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(ip.stdin.as_mut().context("ip stdin")?, batch.as_bytes())?;
    drop(ip.stdin.take());
    anyhow::ensure!(ip.wait()?.success(), "adding 1,000 addresses failed");
    let c1 = lab.communes[0].ns.clone();
    let mut results = Vec::new();

    // A. tierwatch-agent: 20 requests per target per minute, pushes every 10 s.
    if run("agent") {
        let extra: String = targets
            .iter()
            .enumerate()
            .map(|(i, t)| format!("  - {{name: t{i}, probe: icmp, host: \"{t}\"}}\n"))
            .collect();
        let spec = SystemSpec {
            push_interval: Duration::from_secs(10),
            probe_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(2),
            icmp_count: 20,
            extra_targets: extra,
            only_nodes: Some(vec!["c1".into()]),
            ..SystemSpec::default()
        };
        {
            let tw = lab.start_tierwatch(&spec)?;
            let pid = tw.agents[0].pid();
            results.extend(measure("tierwatch-agent", &[("tierwatch-agent".into(), pid)], 70, secs)?);
            let lost = tw.metric("tierwatch_icmp_loss_ratio", &[("node", "c1"), ("target", "t999")])?;
            eprintln!("sanity: loss of t999 at the collector: {lost:?}");
        }
    }

    // B. fping in loop mode, every target every 3 s.
    if run("fping") {
        let mut args = vec!["-l", "-p", "3000", "-t", "2000", "-q"];
        args.extend(targets.iter().map(String::as_str));
        let mut cmd = c1.command("fping", &args);
        cmd.stdout(std::process::Stdio::null());
        let p = tierwatch_tests::Proc::spawn_command("fping", &mut cmd, &lab.dir.path().join("fping.log"))?;
        results.extend(measure("fping", &[("fping -l -p 3000".into(), p.pid())], 10, secs)?);
    }

    // C. blackbox_exporter (one echo per probe) scraped by Prometheus every 3 s.
    if run("blackbox") {
        let dir = lab.dir.path().join("blackbox");
        std::fs::create_dir_all(dir.join("tsdb"))?;
        std::fs::write(
            dir.join("blackbox.yml"),
            "modules:\n  icmp:\n    prober: icmp\n    timeout: 2s\n    icmp:\n      preferred_ip_protocol: ip4\n",
        )?;
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 3s, scrape_timeout: 2500ms}}\nscrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n    params: {{module: [icmp]}}\n    static_configs: [{{targets: [{}]}}]\n    relabel_configs:\n      - {{source_labels: [__address__], target_label: __param_target}}\n      - {{source_labels: [__param_target], target_label: instance}}\n      - {{target_label: __address__, replacement: '127.0.0.1:9115'}}\n",
                list.join(", ")
            ),
        )?;
        let path = |f: &str| dir.join(f).display().to_string();
        let mut bb = c1.command(
            "prometheus-blackbox-exporter",
            &[&format!("--config.file={}", path("blackbox.yml")), "--web.listen-address=127.0.0.1:9115"],
        );
        bb.stdout(std::process::Stdio::null());
        let bb = tierwatch_tests::Proc::spawn_command("blackbox", &mut bb, &dir.join("blackbox.log"))?;
        let mut prom = c1.command(
            "prometheus",
            &[
                &format!("--config.file={}", path("prometheus.yml")),
                &format!("--storage.tsdb.path={}", path("tsdb")),
                "--web.listen-address=127.0.0.1:9090",
            ],
        );
        prom.stdout(std::process::Stdio::null());
        let prom = tierwatch_tests::Proc::spawn_command("prometheus", &mut prom, &dir.join("prometheus.log"))?;
        results.extend(measure(
            "blackbox_exporter + Prometheus",
            &[("prometheus-blackbox-exporter".into(), bb.pid()), ("prometheus (driving it)".into(), prom.pid())],
            30,
            secs,
        )?);
        let up = c1.exec(
            tierwatch_tests::bin("tw-labnet"),
            &["get", "127.0.0.1:9090", "/api/v1/query?query=count(probe_success==1)"],
        )?;
        eprintln!("sanity: Prometheus count(probe_success==1): {}", up.lines().nth(1).unwrap_or(""));
    }

    let fping = results.iter().find(|m| m.name.starts_with("fping")).map(|m| m.cpu_core).unwrap_or(f64::NAN);
    let bb: f64 = results
        .iter()
        .filter(|m| !m.name.starts_with("fping") && !m.name.starts_with("tierwatch"))
        .map(|m| m.cpu_core)
        .sum();
    println!(
        "{:<32} {:>12} {:>10} {:>10} {:>12} {:>14}",
        "process", "CPU (cores)", "RSS MB", "peak MB", "CPU / fping", "CPU / blackbox+prom"
    );
    for m in &results {
        println!(
            "{:<32} {:>12.4} {:>10.1} {:>10.1} {:>12.2} {:>14.3}",
            m.name,
            m.cpu_core,
            m.rss_mb,
            m.peak_mb,
            m.cpu_core / fping,
            m.cpu_core / bb
        );
    }
    Ok(())
}
