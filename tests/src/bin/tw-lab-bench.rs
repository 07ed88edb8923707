//! Lab benchmarks and inspection (root only):
//! - `tw-lab-bench build N...`: time to build (and tear down) a lab of N communes.
//! - `tw-lab-bench accuracy`: configured vs measured delay, jitter and loss (fping, 1,000 packets).
//! - `tw-lab-bench hold N SECONDS`: build a lab and keep it up, for inspection with `ip netns`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tierwatch_tests::lab::impair::Impairment;
use tierwatch_tests::lab::{addrs, Lab, LabSpec};

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
        Some("hold") if args.len() == 3 => {
            let lab = Lab::build(LabSpec::communes(args[1].parse()?))?;
            println!("lab {} up; namespaces: ip netns list | grep {}", lab.prefix, lab.prefix);
            std::thread::sleep(Duration::from_secs(args[2].parse()?));
            Ok(())
        }
        _ => bail!("usage: tw-lab-bench build N... | accuracy | hold N SECONDS"),
    }
}

fn fping(
    ns: &tierwatch_tests::lab::netns::Netns,
    target: &str,
    count: u32,
    interval_ms: u32,
) -> anyhow::Result<Vec<Option<f64>>> {
    let out = ns
        .command("fping", &["-C", &count.to_string(), "-p", &interval_ms.to_string(), "-t", "1000", "-q", target])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let line = text.lines().find(|l| l.starts_with(target)).context("fping summary")?;
    Ok(line.split_once(':').map(|x| x.1).unwrap_or("").split_whitespace().map(|v| v.parse().ok()).collect())
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
