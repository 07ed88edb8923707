//! A probe whose result flips is pushed at once, not at the next push
//! interval: the collector (and its alerts) learn of a failure within a
//! probe round.

use std::time::{Duration, Instant};

use tierwatch_tests::evidence::sample;
use tierwatch_tests::loopback::Loopback;
use tierwatch_tests::{http_get, wait_for};

#[test]
fn a_failing_probe_is_pushed_without_waiting_for_the_push_interval() -> anyhow::Result<()> {
    let lb = Loopback::new()?;
    let mut collector = lb.start_collector("collector.log", "")?;
    let service = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = service.local_addr()?.port();
    // Accept and drop, so the backlog never fills; closed when told to.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    service.set_nonblocking(true)?;
    let stopped = stop.clone();
    let server = std::thread::spawn(move || {
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            if service.accept().is_err() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    // Pushes every 30 s; the service is probed every 200 ms.
    let cfg = lb.agent_config(
        "nui-cam",
        "30s",
        "",
        None,
        &format!("  - name: portal\n    probe: tcp\n    host: 127.0.0.1\n    port: {port}\n    interval: 200ms\n"),
    )?;
    let mut agent = lb.start_agent("nui-cam", &cfg, "agent.log")?;
    let series = r#"tierwatch_probe_success{node="nui-cam",parent="an-giang",probe="tcp",province="an-giang",target="portal",tier="commune"}"#;
    let value = || http_get(lb.http_addr(), "/metrics").ok().and_then(|(_, m)| sample(&m, series));
    // The first batch comes at the first push interval... or on the first flip.
    wait_for(Duration::from_secs(40), "the portal probe at the collector", || value().filter(|&v| v == 1.0)).map_err(
        |e| {
            let m = http_get(lb.http_addr(), "/metrics").map(|x| x.1).unwrap_or_default();
            let lines: Vec<&str> = m.lines().filter(|l| l.contains("probe_success")).collect();
            anyhow::anyhow!("{e}\n{}\nagent log:\n{}", lines.join("\n"), agent.log_text())
        },
    )?;
    let cut = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    wait_for(Duration::from_secs(20), "the failure at the collector", || value().filter(|&v| v == 0.0))?;
    let took = cut.elapsed();
    eprintln!("service closed -> failure at the collector in {took:?} (push interval 30 s, probe interval 200 ms)");
    assert!(took < Duration::from_secs(5), "pushed on the flip, not at the next interval: {took:?}");
    agent.terminate(Duration::from_secs(15))?;
    collector.terminate(Duration::from_secs(15))?;
    Ok(())
}
