//! The alert engine through the collector's API, with real pushes over
//! mTLS: a failed probe of a commune's WAN end opens one incident at once;
//! it survives a restart without being opened again; it resolves.
// A failed setup is a failed test (or bench): unwrapping says where.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::Lab;
use prost::Message;
use tierwatch_protocol::{Batch, Label, MetricKind, Point, Series, PROTOCOL_VERSION};

const RULES: &str = "grouping:\n  group_wait: 0s\nrules:\n  - name: wan_link_down\n    metric: tierwatch_probe_success\n    match: {tier: province, probe: icmp}\n    subject: target\n    below: 1\n    problem: unreachable\n    severity: critical\n    summary: \"WAN link to {{ target }} is down (seen from {{ node_name }})\"\n";

fn probe(seq: u64, boot: u8, target: &str, ok: bool) -> Vec<u8> {
    probes(seq, boot, &[(target, ok)])
}

/// A batch of the province's ICMP results, one per (target, ok).
fn probes(seq: u64, boot: u8, results: &[(&str, bool)]) -> Vec<u8> {
    let now = tierwatch_protocol::now_ms();
    Batch {
        version: PROTOCOL_VERSION,
        node_id: "an-giang".into(),
        agent_version: "t".into(),
        boot_id: vec![boot; 16],
        sequence: seq,
        config_hash: vec![0; 32],
        created_ms: now,
        series: results
            .iter()
            .map(|(target, ok)| Series {
                name: "tierwatch_probe_success".into(),
                kind: MetricKind::Gauge as i32,
                labels: vec![Label::new("probe", "icmp"), Label::new("target", *target)],
                points: vec![Point { timestamp_ms: now, value: if *ok { 1.0 } else { 0.0 } }],
            })
            .collect(),
        events: vec![],
        push_interval_ms: 1000,
    }
    .encode_to_vec()
}

async fn incidents(lab: &Lab) -> Vec<serde_json::Value> {
    let (_, body) = lab.get("/api/v1/alerts").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["incidents"].as_array().cloned().unwrap_or_default()
}

async fn history(lab: &Lab) -> Vec<String> {
    let (_, body) = lab.get("/api/v1/alerts/history").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["history"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|h| format!("{} {}", h["event"].as_str().unwrap(), h["incident"]["key"].as_str().unwrap()))
        .collect()
}

async fn until<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

type Got = Arc<Mutex<Vec<(HeaderMap, serde_json::Value)>>>;

async fn hook(State(got): State<Got>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // The signature covers the exact body bytes.
    let sig = headers["x-tierwatch-signature"].to_str().unwrap().to_string();
    assert_eq!(sig, format!("sha256={}", tierwatch_collector::alert::notify::webhook::signature("s3cret", &body)));
    got.lock().unwrap().push((headers, v));
    StatusCode::OK
}

async fn receiver_on(addr: std::net::SocketAddr) -> Got {
    let got: Got = Arc::default();
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(got.clone());
    let l = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    got
}

fn events(got: &Got) -> Vec<String> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, v)| format!("{} {}", v["event"].as_str().unwrap(), v["incident"]["key"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn a_failed_probe_opens_one_incident_that_survives_a_restart_and_resolves() {
    // The webhook receiver is down when the incident opens: the page waits in the outbox.
    let hook_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let top = format!("rules: rules.yaml\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{hook_addr}/hook\n      hmac_secret_file: hook.secret\n");
    let mut lab = Lab::start_full_with_files("", &top, &[("rules.yaml", RULES), ("hook.secret", "s3cret\n")]).await;
    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probe(1, 1, "nui-cam", true)).await.unwrap();
    assert!(incidents(&lab).await.is_empty());
    let pushed = std::time::Instant::now();
    lab.push(client.clone(), probe(2, 1, "nui-cam", false)).await.unwrap();
    until("the incident", || async { !incidents(&lab).await.is_empty() }).await;
    let took = pushed.elapsed();
    let inc = incidents(&lab).await;
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0]["key"], "nui-cam/unreachable");
    assert_eq!(inc[0]["node_name"], "Xã Núi Cấm");
    assert_eq!(inc[0]["summary"], "WAN link to nui-cam is down (seen from Trung tâm Dữ liệu tỉnh An Giang)");
    assert!(took < Duration::from_secs(1), "evaluated on the push, not on a tick: {took:?}");

    lab.restart().await;
    let client = lab.client(&lab.pki, "an-giang");
    assert_eq!(incidents(&lab).await.len(), 1, "restored after the restart");
    // The receiver comes up: the page queued before the restart arrives, once.
    let got = receiver_on(hook_addr).await;
    until("the queued page", || async { !events(&got).is_empty() }).await;
    lab.push(client.clone(), probe(1, 2, "nui-cam", false)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(history(&lab).await, ["opened nui-cam/unreachable"], "not opened a second time");

    lab.push(client.clone(), probe(2, 2, "nui-cam", true)).await.unwrap();
    until("the resolve", || async { incidents(&lab).await.is_empty() }).await;
    // The history is written just after the engine changed (one write later).
    until("the resolve in the history", || async { history(&lab).await.len() > 1 }).await;
    assert_eq!(history(&lab).await, ["opened nui-cam/unreachable", "resolved nui-cam/unreachable"]);
    until("the resolve notification", || async { events(&got).len() == 2 }).await;
    assert_eq!(events(&got), ["opened nui-cam/unreachable", "resolved nui-cam/unreachable"]);
    let first = got.lock().unwrap()[0].1.clone();
    assert_eq!(first["status"], "firing");
    assert_eq!(first["incident"]["node_name"], "Xã Núi Cấm");
    assert_eq!(lab.metric(r#"tierwatch_collector_incidents_total{event="resolved"}"#).await, Some(1.0));
    lab.stop().await;
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on loopback.
struct Alertmanager {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    fn start() -> Option<Alertmanager> {
        let have = std::process::Command::new("prometheus-alertmanager")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have {
            assert!(
                std::env::var("CI").is_err(),
                "prometheus-alertmanager must be installed in CI (scripts/test.sh installs it)"
            );
            eprintln!("SKIPPED: prometheus-alertmanager is not installed (scripts/test.sh installs it)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("am.yml"), "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
            .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let child = std::process::Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", dir.path().join("am.yml").display()))
            .arg(format!("--storage.path={}", dir.path().display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Some(Alertmanager { child, addr, _dir: dir })
    }

    async fn alerts(&self) -> Option<Vec<serde_json::Value>> {
        self.list("/api/v2/alerts").await
    }

    async fn silences(&self) -> Option<Vec<serde_json::Value>> {
        self.list("/api/v2/silences").await
    }

    async fn list(&self, path: &str) -> Option<Vec<serde_json::Value>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: am\r\n\r\n").as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let body = text.split_once("\r\n\r\n")?.1;
        serde_json::from_str::<Vec<serde_json::Value>>(body).ok()
    }
}

/// With `resend: 1s` an alert's `endsAt` lies 4 s ahead: an incident open
/// for longer must stay firing in Alertmanager (it is sent again), an
/// acknowledgement must silence it there, and the resolution must expire
/// that silence and reach Alertmanager.
#[tokio::test]
async fn incidents_reach_a_real_alertmanager_and_resolve_there() {
    let Some(am) = Alertmanager::start() else { return };
    until("Alertmanager up", || async { am.alerts().await.is_some() }).await;
    let top = format!(
        "rules: rules.yaml\napi:\n  token_file: api.token\nnotify:\n  - name: am\n    alertmanager:\n      url: http://{}\n      resend: 1s\n",
        am.addr
    );
    let mut lab =
        Lab::start_full_with_files("", &top, &[("rules.yaml", RULES), ("api.token", "t0ken-t0ken-t0ken\n")]).await;
    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probe(1, 1, "nui-cam", false)).await.unwrap();
    until("the alert in Alertmanager", || async { am.alerts().await.is_some_and(|a| !a.is_empty()) }).await;
    let alerts = am.alerts().await.unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a["labels"]["alertname"], "tierwatch_unreachable");
    assert_eq!(a["labels"]["incident"], "nui-cam/unreachable");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["annotations"]["node_name"], "Xã Núi Cấm");
    assert_eq!(a["status"]["state"], "active");
    // Twice the 4 s `endsAt` later, still firing there.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let alerts = am.alerts().await.unwrap();
    assert_eq!(alerts.len(), 1, "the open incident expired in Alertmanager: {alerts:?}");
    assert_eq!(alerts[0]["status"]["state"], "active", "{alerts:?}");

    // Acknowledged: silenced in Alertmanager by the person, nothing else.
    let ack = r#"{"key": "nui-cam/unreachable", "by": "Lan", "comment": "ISP ticket 42"}"#;
    let (status, body) = lab.call("POST", "/api/v1/alerts/ack", ack, Some("t0ken-t0ken-t0ken")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until("the alert silenced in Alertmanager", || async {
        am.alerts().await.is_some_and(|a| a.len() == 1 && a[0]["status"]["state"] == "suppressed")
    })
    .await;
    let silences = am.silences().await.unwrap();
    assert_eq!(silences.len(), 1, "{silences:?}");
    let s = &silences[0];
    assert_eq!(s["createdBy"], "Lan");
    assert!(s["comment"].as_str().unwrap().ends_with("nui-cam/unreachable: ISP ticket 42"), "{s}");
    assert_eq!(s["matchers"][0]["name"], "incident");
    assert_eq!(s["matchers"][0]["value"], "nui-cam/unreachable");
    assert_eq!(am.alerts().await.unwrap()[0]["status"]["silencedBy"][0], s["id"]);

    lab.push(client.clone(), probe(2, 1, "nui-cam", true)).await.unwrap();
    // The silence is expired and the resolved alert leaves Alertmanager's list.
    until("the alert resolved in Alertmanager", || async { am.alerts().await.is_some_and(|a| a.is_empty()) }).await;
    let silences = am.silences().await.unwrap();
    assert_eq!(silences[0]["status"]["state"], "expired", "{silences:?}");
    lab.stop().await;
}

/// A fake Telegram Bot API: what each `POST /bot<token>/sendMessage` carried.
type Sent = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

async fn bot_api(
    State(sent): State<Sent>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    body: Bytes,
) -> String {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let token = rest.strip_prefix("bot").and_then(|r| r.strip_suffix("/sendMessage")).unwrap_or("?").to_string();
    sent.lock().unwrap().push((token, v));
    r#"{"ok":true,"result":{}}"#.into()
}

/// A local SMTP sink: accepts every mail, keeps (envelope, data).
type Mails = Arc<Mutex<Vec<(Vec<String>, String)>>>;

async fn smtp_sink() -> (std::net::SocketAddr, Mails) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let mails: Mails = Arc::default();
    let keep = mails.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let keep = keep.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut lines = BufReader::new(r).lines();
                w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut envelope = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250 sink\r\n",
                        "MAIL" | "RCPT" => {
                            envelope.push(line.clone());
                            b"250 OK\r\n"
                        }
                        "DATA" => {
                            w.write_all(b"354 go ahead\r\n").await.unwrap();
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            keep.lock().unwrap().push((std::mem::take(&mut envelope), data));
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 OK\r\n",
                    };
                    w.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, mails)
}

#[tokio::test]
async fn telegram_and_email_get_the_page_repeats_until_acknowledged_and_the_resolve() {
    let (smtp, mails) = smtp_sink().await;
    let sent: Sent = Arc::default();
    let bot = axum::Router::new().route("/{*rest}", axum::routing::post(bot_api)).with_state(sent.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bot_addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, bot).await });
    // SAFETY of the test: no other test of this binary reads this variable.
    std::env::set_var("TW_TEST_BOT_TOKEN", "123:abc");
    let top = format!(
        "rules: rules.yaml\napi:\n  token_file: api.token\nnotify:\n  - name: tg\n    repeat_interval: 2s\n    telegram:\n      bot_token_env: TW_TEST_BOT_TOKEN\n      chat_id: \"-1001\"\n      api_url: http://{bot_addr}\n  - name: mail\n    email:\n      smtp_host: 127.0.0.1\n      smtp_port: {}\n      security: none\n      from: Tierwatch <tierwatch@angiang.gov.vn>\n      to: [\"Trực ban <oncall@angiang.gov.vn>\"]\n",
        smtp.port()
    );
    let mut lab =
        Lab::start_full_with_files("", &top, &[("rules.yaml", RULES), ("api.token", "t0ken-t0ken-t0ken\n")]).await;
    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probe(1, 1, "nui-cam", false)).await.unwrap();
    until("the page on Telegram", || async { !sent.lock().unwrap().is_empty() }).await;
    until("the page by email", || async { !mails.lock().unwrap().is_empty() }).await;
    {
        let sent = sent.lock().unwrap();
        assert_eq!(sent[0].0, "123:abc", "the token from the environment");
        assert_eq!(sent[0].1["chat_id"], -1001);
        let text = sent[0].1["text"].as_str().unwrap();
        assert!(text.starts_with("[FIRING] [critical] WAN link to nui-cam is down"), "{text}");
        assert!(text.contains("Incident: nui-cam/unreachable (Xã Núi Cấm, nui-cam)"), "{text}");
        let mails = mails.lock().unwrap();
        let (envelope, data) = &mails[0];
        assert_eq!(envelope, &["MAIL FROM:<tierwatch@angiang.gov.vn>", "RCPT TO:<oncall@angiang.gov.vn>"]);
        assert!(data.contains("Subject: [FIRING] [critical] WAN link to nui-cam is down"), "{data}");
        assert!(data.contains("Message-ID: <nui-cam.unreachable.opened."), "{data}");
    }
    // Not acknowledged: Telegram repeats every 2 s; email (4 h default) does not.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let texts = |sent: &Sent| -> Vec<String> {
        sent.lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["text"].as_str().unwrap().lines().next().unwrap().to_string())
            .collect()
    };
    let repeats = texts(&sent).iter().filter(|t| t.starts_with("[STILL FIRING]")).count();
    assert!((1..=3).contains(&repeats), "{:?}", texts(&sent));
    assert_eq!(mails.lock().unwrap().len(), 1);

    // Acknowledging takes the token; then the repeats stop.
    let ack = r#"{"key": "nui-cam/unreachable", "by": "Lan", "comment": "ISP ticket 42"}"#;
    let (status, body) = lab.call("POST", "/api/v1/alerts/ack", ack, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = lab.call("POST", "/api/v1/alerts/ack", ack, Some("t0ken-t0ken-t0ken")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) =
        lab.call("POST", "/api/v1/alerts/ack", r#"{"key": "nope", "by": "Lan"}"#, Some("t0ken-t0ken-t0ken")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    until("the acknowledgement by email", || async { mails.lock().unwrap().len() == 2 }).await;
    assert!(mails.lock().unwrap()[1].1.contains("Acknowledged by Lan at "), "{:?}", mails.lock().unwrap()[1]);
    until("the acknowledgement on Telegram", || async {
        texts(&sent).last().is_some_and(|t| t.starts_with("[ACKNOWLEDGED]"))
    })
    .await;
    let before = texts(&sent).len();
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(texts(&sent).len(), before, "no repeat once acknowledged: {:?}", texts(&sent));
    assert_eq!(incidents(&lab).await[0]["ack"]["by"], "Lan");

    lab.push(client.clone(), probe(2, 1, "nui-cam", true)).await.unwrap();
    until("the resolve on Telegram", || async { texts(&sent).last().is_some_and(|t| t.starts_with("[RESOLVED]")) })
        .await;
    until("the resolve by email", || async { mails.lock().unwrap().len() == 3 }).await;
    assert_eq!(
        history(&lab).await,
        ["opened nui-cam/unreachable", "acknowledged nui-cam/unreachable", "resolved nui-cam/unreachable"]
    );
    lab.stop().await;
}

#[tokio::test]
async fn maintenance_windows_from_the_api_mute_exactly_their_nodes() {
    let hook_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let got = receiver_on(hook_addr).await;
    let top = format!("rules: rules.yaml\nnotify:\n  - name: oncall\n    webhook:\n      url: http://{hook_addr}/hook\n      hmac_secret_file: hook.secret\n");
    let top = format!("{top}api:\n  token_file: api.token\n");
    let files = [("rules.yaml", RULES), ("hook.secret", "s3cret\n"), ("api.token", MAINT_TOKEN)];
    let mut lab = Lab::start_full_with_files("", &top, &files).await;
    let token = Some(MAINT_TOKEN);
    let (status, body) = lab
        .call(
            "POST",
            "/api/v1/maintenance",
            r#"{"match": {"node": "nui-cam"}, "duration": "tomorrow", "reason": ""}"#,
            token,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("body.reason: say why") && body.contains("body.duration: invalid duration"), "{body}");
    let (status, body) = lab
        .call(
            "POST",
            "/api/v1/maintenance",
            r#"{"match": {"node": "nui-cam"}, "duration": "1h", "reason": "thay router", "by": "Lan"}"#,
            token,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["window"]["id"].as_str().unwrap().to_string();

    // Kept across a restart.
    lab.restart().await;
    let (_, body) = lab.get("/api/v1/maintenance").await;
    assert!(body.contains(&id) && body.contains("thay router"), "{body}");

    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probes(1, 1, &[("nui-cam", false), ("giang-thanh", false)])).await.unwrap();
    until("the unmuted page", || async { !events(&got).is_empty() }).await;
    let (_, body) = lab.get("/api/v1/alerts").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["incidents"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(v["incidents"][0]["key"], "giang-thanh/unreachable");
    assert_eq!(v["muted"][0]["key"], "nui-cam/unreachable", "{body}");
    assert!(v["muted"][0]["muted"].as_str().unwrap().contains("thay router"), "{body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(events(&got), ["opened giang-thanh/unreachable"], "the node in maintenance is not paged");
    // What the window kept quiet is still in the history.
    let (_, body) = lab.get("/api/v1/alerts/history").await;
    let h: serde_json::Value = serde_json::from_str(&body).unwrap();
    let muted: Vec<&serde_json::Value> =
        h["history"].as_array().into_iter().flatten().filter(|e| e["event"] == "muted").collect();
    assert_eq!(muted.len(), 1, "{body}");
    assert_eq!(muted[0]["incident"]["key"], "nui-cam/unreachable", "{body}");

    // The window ends early while nui-cam is still down: it pages now.
    let (status, _) = lab.call("DELETE", &format!("/api/v1/maintenance/{id}"), "", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "ending a window takes the token too");
    let (status, _) = lab.call("DELETE", &format!("/api/v1/maintenance/{id}"), "", token).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    lab.push(client.clone(), probes(2, 1, &[("nui-cam", false), ("giang-thanh", false)])).await.unwrap();
    until("the page after the window", || async { events(&got).len() == 2 }).await;
    assert_eq!(events(&got), ["opened giang-thanh/unreachable", "opened nui-cam/unreachable"]);
    let (status, _) = lab.call("DELETE", &format!("/api/v1/maintenance/{id}"), "", token).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    lab.stop().await;
}

const MAINT_TOKEN: &str = "maint-token-0123456789";

/// The CSRF of the issue: a page on another site makes the operator's
/// browser on the collector host POST a ten-year window for every node.
/// Without a token nothing changes; with one, a foreign Origin and a body
/// that is not JSON are refused even when the token is right.
#[tokio::test]
async fn api_changes_need_the_token_json_and_this_origin() {
    let window = r#"{"match": {"tier": "commune"}, "duration": "87600h", "reason": "x", "by": "evil"}"#;
    let attack = [("origin", "http://evil.example"), ("content-type", "text/plain")];
    let mut lab = Lab::start_full_with_files("", "rules: rules.yaml\n", &[("rules.yaml", RULES)]).await;
    let (status, body) = lab.call_with("POST", "/api/v1/maintenance", window, &attack).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = lab.call("POST", "/api/v1/maintenance", window, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no token configured: nothing changes, even from loopback: {body}");
    assert!(body.contains("api-token"), "the refusal says how to make a token: {body}");
    lab.stop().await;

    let files = [("rules.yaml", RULES), ("api.token", MAINT_TOKEN)];
    let mut lab = Lab::start_full_with_files("", "rules: rules.yaml\napi:\n  token_file: api.token\n", &files).await;
    let bearer = format!("Bearer {MAINT_TOKEN}");
    let with_token = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = extra.to_vec();
        h.push(("authorization", bearer.as_str()));
        h
    };
    let (status, body) = lab.call_with("POST", "/api/v1/maintenance", window, &with_token(&attack)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body.contains("cross-origin"), "{body}");
    let (status, body) = lab
        .call_with(
            "POST",
            "/api/v1/maintenance",
            window,
            &with_token(&[("sec-fetch-site", "cross-site"), ("content-type", "application/json")]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) =
        lab.call_with("POST", "/api/v1/maintenance", window, &with_token(&[("content-type", "text/plain")])).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let (_, body) = lab.get("/api/v1/maintenance").await;
    assert!(!body.contains("evil"), "no window was made: {body}");
    // The same request from this origin with the token and JSON goes through.
    let (status, body) = lab
        .call_with(
            "POST",
            "/api/v1/maintenance",
            window,
            &with_token(&[("origin", "http://collector"), ("content-type", "application/json")]),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    lab.stop().await;
}

/// A webhook over https, verified against the CA named in `ca:`: the page
/// arrives signed. (The receiver here uses the lab's own server certificate.)
#[tokio::test]
async fn a_webhook_over_https_gets_the_page() {
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let top = format!("rules: rules.yaml\nnotify:\n  - name: oncall\n    webhook:\n      url: https://127.0.0.1:{}/hook\n      ca: pki/ca.crt\n      hmac_secret_file: hook.secret\n", addr.port());
    let mut lab = Lab::start_full_with_files("", &top, &[("rules.yaml", RULES), ("hook.secret", "s3cret\n")]).await;
    let certs = tierwatch_runtime::tls::load_certs(&lab.pki.join("collector.crt")).unwrap();
    let key = tierwatch_runtime::tls::load_key(&lab.pki.join("collector.key")).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(tierwatch_runtime::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let got: Got = Arc::default();
    let g = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, got) = (acceptor.clone(), g.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let got = got.clone();
                    async move {
                        let headers = req.headers().clone();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let status = hook(State(got), headers, body).await;
                        let mut r = hyper::Response::new(http_body_util::Empty::<Bytes>::new());
                        *r.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await;
            });
        }
    });
    let client = lab.client(&lab.pki, "an-giang");
    lab.push(client.clone(), probe(1, 1, "nui-cam", true)).await.unwrap();
    lab.push(client.clone(), probe(2, 1, "nui-cam", false)).await.unwrap();
    until("the page over https", || async { !events(&got).is_empty() }).await;
    assert_eq!(events(&got), ["opened nui-cam/unreachable"]);
    lab.stop().await;
}
