//! Hostile input through the real binaries on loopback (no root): evidence
//! the collector cannot take whole is cut and kept, never silently lost.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tierwatch_tests::evidence::events;
use tierwatch_tests::loopback::Loopback;
use tierwatch_tests::{http_get, wait_for};

/// A web server on loopback: `/` redirects to a path of `len` characters,
/// which serves the page currently in `page`.
fn redirecting_portal(len: usize, page: Arc<Mutex<String>>) -> anyhow::Result<(u16, String)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let long = format!("/{}", "cong-dich-vu/".repeat(len / 13 + 1).chars().take(len - 1).collect::<String>());
    let target = long.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(match stream.try_clone() {
                Ok(s) => s,
                Err(_) => continue,
            });
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            // The rest of the header.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
            let mut out = stream;
            let answer = if path == "/" {
                format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            } else {
                let body = page.lock().map(|p| p.clone()).unwrap_or_default();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = out.write_all(answer.as_bytes());
        }
    });
    Ok((port, long))
}

/// The issue's case: a commune portal defaced behind a 1,500-character
/// redirect. The event's `src` (the final URL) is over the collector's
/// 1,024-byte attribute limit: it is cut with a marker and stored, the
/// agent hears of the cut, both count it.
#[test]
fn a_defacement_behind_a_long_redirect_reaches_the_events_api() -> anyhow::Result<()> {
    let lb = Loopback::new()?;
    let page = Arc::new(Mutex::new(
        "<html><head><title>Cổng thông tin xã Núi Cấm</title></head><body>Thông báo lịch tiếp công dân.</body></html>"
            .to_string(),
    ));
    let (port, long) = redirecting_portal(1500, page.clone())?;
    let mut collector = lb.start_collector("collector.log", "")?;
    let extra = format!("  - name: portal\n    probe: http\n    url: \"http://127.0.0.1:{port}/\"\n    interval: 500ms\n    timeout: 400ms\n");
    let cfg = lb.agent_config("nui-cam", "200ms", "", None, &extra)?;
    let mut agent = lb.start_agent("agent", &cfg, "agent.log")?;
    let metric = |line: &str| {
        http_get(lb.http_addr(), "/metrics").ok().and_then(|(_, text)| {
            text.lines().find(|l| l.starts_with(line)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        })
    };
    let probed = wait_for(Duration::from_secs(15), "the portal probed", || {
        metric(r#"tierwatch_probe_success{node="nui-cam",parent="an-giang",probe="http",province="an-giang",target="portal",tier="commune"}"#)
            .filter(|v| *v == 1.0)
    });
    if let Err(e) = probed {
        let (_, text) = http_get(lb.http_addr(), "/metrics")?;
        let portal: Vec<&str> = text.lines().filter(|l| l.contains("portal")).collect();
        anyhow::bail!(
            "{e}: {portal:#?}\n{}",
            std::fs::read_to_string(lb.path("agent.log"))?.lines().take(8).collect::<Vec<_>>().join("\n")
        );
    }
    *page.lock().map_err(|_| anyhow::anyhow!("poisoned"))? =
        "<html><head><title>Cổng thông tin xã Núi Cấm</title></head><body>Thông báo lịch tiếp công dân. <a href=\"https://x.example/\">Nhà cái uy tín - tài xỉu online</a></body></html>".to_string();
    let event = wait_for(Duration::from_secs(15), "the defacement at the events API", || {
        let (_, body) = http_get(lb.http_addr(), "/api/v1/security/events?kind=defacement").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["events"].as_array()?.first().cloned()
    })?;
    let src = event["attributes"]["src"].as_str().unwrap_or_default().to_string();
    let full = format!("http://127.0.0.1:{port}{long}");
    eprintln!("final URL of {} bytes stored as {} bytes", full.len(), src.len());
    assert!(src.len() <= 1024, "cut to the limit: {} bytes", src.len());
    assert!(src.ends_with(&format!("…[truncated, {} bytes]", full.len())), "marked: {src}");
    assert!(full.starts_with(src.split('…').next().unwrap_or("?")), "the start is kept: {src}");
    assert_eq!(event["attributes"]["words"], "nhà cái,nhà cái uy tín,tài xỉu");
    let truncated = metric(r#"tierwatch_collector_event_attributes_truncated_total{node="nui-cam"}"#);
    assert!(truncated.is_some_and(|n| n >= 1.0), "counted at the collector: {truncated:?}");
    let agent_log = lb.path("agent.log");
    wait_for(Duration::from_secs(5), "the agent hearing of the cut", || {
        (!events(&agent_log, "collector cut event attributes to its limits; the events were kept").is_empty())
            .then_some(())
    })?;
    assert!(
        events(&agent_log, "collector refused security events; their evidence is lost").is_empty(),
        "nothing was refused"
    );
    agent.terminate(Duration::from_secs(15))?;
    collector.terminate(Duration::from_secs(15))?;
    Ok(())
}
