//! HTTP(S) probe: one GET with phase timings (resolve, connect, TLS,
//! processing = request to first byte, transfer), expected statuses, body
//! must / must-not contain, a fingerprint of the normalised body, redirects,
//! a body size cap, a custom CA. Over HTTPS the request is sent only when the
//! certificate verified; otherwise the TLS facts say why.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, HOST, LOCATION, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::outcome::Outcome;
use super::tls::{self, TlsFacts};
use tierwatch_protocol::catalogue;
use tierwatch_runtime::url::{parse as parse_url, HttpUrl};

/// An accepted HTTP status: `200`, or a class such as `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct StatusPattern {
    pub low: u16,
    pub high: u16,
}

impl StatusPattern {
    /// True when `code` is accepted.
    pub fn matches(&self, code: u16) -> bool {
        (self.low..=self.high).contains(&code)
    }
}

impl From<StatusPattern> for String {
    fn from(p: StatusPattern) -> String {
        if p.low == p.high {
            p.low.to_string()
        } else {
            format!("{}xx", p.low / 100)
        }
    }
}

impl<'de> Deserialize<'de> for StatusPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusPattern;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an HTTP status such as 200, or a class such as 2xx")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<StatusPattern, E> {
                if (100..=599).contains(&v) {
                    Ok(StatusPattern { low: v as u16, high: v as u16 })
                } else {
                    Err(E::custom(format!("{v} is not an HTTP status (100-599)")))
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<StatusPattern, E> {
                let class = v.strip_suffix("xx").and_then(|c| c.parse::<u16>().ok()).filter(|c| (1..=5).contains(c));
                match class {
                    Some(c) => Ok(StatusPattern { low: c * 100, high: c * 100 + 99 }),
                    None => v
                        .parse::<u64>()
                        .map_err(|_| E::custom(format!("{v:?} is not a status or class (200, 2xx)")))
                        .and_then(|n| self.visit_u64(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// What an HTTP probe does.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSpec {
    pub url: String,
    pub expect_status: Vec<StatusPattern>,
    pub body_contains: Vec<String>,
    pub body_not_contains: Vec<String>,
    pub follow_redirects: u32,
    /// Other hosts a redirect may lead to (lower case); the target's own always.
    pub redirect_hosts: Vec<String>,
    /// Whether a redirect from https to http is followed.
    pub redirect_downgrade: bool,
    pub max_body_bytes: usize,
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    /// Connect here instead of the URL's host.
    pub connect_to: Option<String>,
    /// Watch the page for defacement (docs/security.md).
    pub defacement: bool,
    /// The defacement words (shipped and the operator's).
    pub vocabulary: std::sync::Arc<super::deface::Vocabulary>,
    /// Also fetch the page as a search-engine crawler, for content shown only to crawlers.
    pub cloaking: bool,
    /// The User-Agent sent (tierwatch's own unless set).
    pub user_agent: Option<String>,
}

/// What a search engine's crawler calls itself: SEO spam is served to it alone.
pub const CRAWLER_USER_AGENT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

/// Time spent in each phase, summed over redirects.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Phases {
    pub resolve: Duration,
    pub connect: Duration,
    pub tls: Duration,
    pub processing: Duration,
    pub transfer: Duration,
}

impl Phases {
    /// `(label, duration)` pairs in order.
    pub fn labelled(&self) -> [(&'static str, Duration); 5] {
        [
            ("resolve", self.resolve),
            ("connect", self.connect),
            ("tls", self.tls),
            ("processing", self.processing),
            ("transfer", self.transfer),
        ]
    }
}

/// What one fetch found.
#[derive(Debug, Clone, Default)]
pub struct Fetch {
    pub status: Option<u16>,
    pub phases: Phases,
    /// TLS facts of the last HTTPS hop.
    pub tls: Option<TlsFacts>,
    pub redirects: u32,
    pub body_bytes: usize,
    /// The body was longer than `max_body_bytes`; only the start was read.
    pub truncated: bool,
    /// Fingerprint of the normalised body (48 bits, exact as a float).
    pub fingerprint: Option<u64>,
    /// Unmet body expectations, in words; empty when all held.
    pub body_failures: Vec<String>,
    /// What defacement is judged on, when the target watches for it.
    pub page: Option<super::deface::Page>,
    pub final_url: String,
    /// Why the fetch did not complete.
    pub error: Option<String>,
}

/// 48 bits of SHA-256 over the body with digits removed and whitespace
/// collapsed, so that clocks, counters and reformatting do not count as a
/// change of content.
pub fn fingerprint(body: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(body);
    let mut norm = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_ascii_digit() {
            continue;
        }
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space && !norm.is_empty() {
            norm.push(' ');
        }
        space = false;
        norm.push(c);
    }
    let d = ring::digest::digest(&ring::digest::SHA256, norm.as_bytes());
    d.as_ref()[..6].iter().fold(0u64, |acc, b| (acc << 8) | *b as u64)
}

/// Resolves `Location` against `base`.
pub fn join(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{}{rest}", &base[..scheme_end]);
    }
    if location.starts_with('/') {
        return format!("{}{location}", &base[..authority_end]);
    }
    let path = &base[authority_end..];
    let path = path.split('?').next().unwrap_or("");
    let dir = path.rfind('/').map(|i| &path[..=i]).unwrap_or("/");
    format!("{}{dir}{location}", &base[..authority_end])
}

async fn resolve(host: &str, port: u16) -> Result<std::net::SocketAddr, String> {
    let ip = super::resolve(host).await?;
    Ok(std::net::SocketAddr::new(ip, port))
}

/// Fetches `spec.url`, following redirects as configured.
pub async fn fetch(spec: &HttpSpec, roots: Option<Arc<RootCertStore>>) -> Fetch {
    let mut f = Fetch { final_url: spec.url.clone(), ..Fetch::default() };
    if let Err(e) = fetch_into(spec, roots, &mut f).await {
        f.error = Some(e);
    }
    f
}

async fn fetch_into(spec: &HttpSpec, roots: Option<Arc<RootCertStore>>, f: &mut Fetch) -> Result<(), String> {
    let first_host = parse_url(&spec.url, None)?.host;
    let mut url = spec.url.clone();
    loop {
        let HttpUrl { https, host, port, path } = parse_url(&url, None)?;
        // The connect-to override applies to the configured host only, not to redirect targets elsewhere.
        let connect = match &spec.connect_to {
            Some(c) if host == first_host => c.clone(),
            _ => host.clone(),
        };
        let t = Instant::now();
        let addr = resolve(&connect, port).await?;
        f.phases.resolve += t.elapsed();
        let t = Instant::now();
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        f.phases.connect += t.elapsed();
        let authority =
            if (https && port == 443) || (!https && port == 80) { host.clone() } else { format!("{host}:{port}") };
        let req = Request::get(path.as_str())
            .header(HOST, authority)
            .header(
                USER_AGENT,
                spec.user_agent
                    .as_deref()
                    .and_then(|u| HeaderValue::from_str(u).ok())
                    .unwrap_or(HeaderValue::from_static(concat!("tierwatch-agent/", env!("CARGO_PKG_VERSION")))),
            )
            .header(ACCEPT, "*/*")
            .header(CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request for {url}: {e}"))?;
        let t = Instant::now();
        let resp = if https {
            let roots = roots.clone().ok_or("https URL without trust roots")?;
            let name = spec.server_name.clone().unwrap_or_else(|| host.clone());
            let (stream, facts) = tls::handshake(tcp, &name, roots, &[b"http/1.1"]).await?;
            f.phases.tls += facts.handshake;
            let verdict = facts.verify.clone();
            f.tls = Some(facts);
            if let Err((why, words)) = verdict {
                return Err(format!("certificate of {name} not trusted ({}): {words}", why.as_str()));
            }
            let t = Instant::now();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(conn);
            let r = send.send_request(req).await.map_err(|e| format!("HTTP request: {e}"))?;
            f.phases.processing += t.elapsed();
            r
        } else {
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("HTTP: {e}"))?;
            tokio::spawn(conn);
            let r = send.send_request(req).await.map_err(|e| format!("HTTP request: {e}"))?;
            f.phases.processing += t.elapsed();
            r
        };
        let status = resp.status().as_u16();
        f.status = Some(status);
        f.final_url = url.clone();
        if resp.status().is_redirection() && f.redirects < spec.follow_redirects {
            if let Some(loc) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) {
                let next = join(&url, loc);
                redirect_allowed(spec, &first_host, https, &next)?;
                url = next;
                f.redirects += 1;
                continue;
            }
        }
        let t = Instant::now();
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("reading body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                let room = spec.max_body_bytes - buf.len();
                if data.len() > room {
                    buf.extend_from_slice(&data[..room]);
                    f.truncated = true;
                    break;
                }
                buf.extend_from_slice(&data);
            }
        }
        f.phases.transfer += t.elapsed();
        f.body_bytes = buf.len();
        f.fingerprint = Some(fingerprint(&buf));
        if spec.defacement {
            // Reading a page of up to max_body_bytes is CPU work: off the
            // (single-threaded) runtime, so probe timings do not wait on it.
            let vocabulary = spec.vocabulary.clone();
            let (page, body) = tokio::task::spawn_blocking(move || (super::deface::page(&buf, &vocabulary), buf))
                .await
                .map_err(|e| format!("reading the page: {e}"))?;
            f.page = Some(page);
            buf = body;
        }
        let text = String::from_utf8_lossy(&buf).to_lowercase();
        for want in &spec.body_contains {
            if !text.contains(&want.to_lowercase()) {
                f.body_failures.push(format!("body lacks {want:?}"));
            }
        }
        for bad in &spec.body_not_contains {
            if text.contains(&bad.to_lowercase()) {
                f.body_failures.push(format!("body contains {bad:?}"));
            }
        }
        return Ok(());
    }
}

/// Whether a redirect from an `https` (or plain) URL to `next` may be
/// followed: to the target's own host or one it lists, and never from
/// https down to http unless it says so. A page that sends its visitors
/// elsewhere is what a hijacked site does; the probe says so instead.
fn redirect_allowed(spec: &HttpSpec, first_host: &str, https: bool, next: &str) -> Result<(), String> {
    let to = parse_url(next, None)?;
    let host = to.host.to_ascii_lowercase();
    if !host.eq_ignore_ascii_case(first_host) && !spec.redirect_hosts.contains(&host) {
        return Err(format!("redirect to another host refused: {next} (list {host} in redirect_hosts to follow it)"));
    }
    if https && !to.https && !spec.redirect_downgrade {
        return Err(format!("redirect from https to http refused: {next} (redirect_downgrade: true follows it)"));
    }
    Ok(())
}

/// Turns a fetch into series; `last_fingerprint` is the previous round's, for the change signal.
pub(super) fn outcome(out: &mut Outcome, spec: &HttpSpec, f: Fetch, ts: i64, last_fingerprint: &mut Option<u64>) {
    if let Some(facts) = &f.tls {
        tls::outcome(out, facts, ts);
    }
    for (phase, d) in f.phases.labelled() {
        out.push(&catalogue::HTTP_PHASE, &[("phase", phase)], d.as_secs_f64(), ts);
    }
    out.push(&catalogue::HTTP_REDIRECTS, &[], f.redirects as f64, ts);
    if f.redirects > 0 {
        out.note(|| format!("followed {} redirect(s) to {}", f.redirects, f.final_url));
    }
    if let Some(e) = f.error {
        out.error = Some(e);
        return;
    }
    let status = f.status.unwrap_or(0);
    out.push(&catalogue::HTTP_STATUS, &[], status as f64, ts);
    out.push(&catalogue::HTTP_BODY_BYTES, &[], f.body_bytes as f64, ts);
    out.push(&catalogue::HTTP_BODY_MATCH, &[], f.body_failures.is_empty() as u8 as f64, ts);
    out.note(|| {
        format!(
            "status {status}, {} body bytes{}",
            f.body_bytes,
            if f.truncated { " (truncated at max_body_bytes)" } else { "" }
        )
    });
    out.note(|| {
        let phases: Vec<String> =
            f.phases.labelled().iter().map(|(p, d)| format!("{p} {:.3} ms", d.as_secs_f64() * 1000.0)).collect();
        format!("phases: {}", phases.join(", "))
    });
    if !spec.body_contains.is_empty() || !spec.body_not_contains.is_empty() {
        out.note(|| {
            if f.body_failures.is_empty() {
                "body checks: all met".to_string()
            } else {
                format!("body checks FAILED: {}", f.body_failures.join("; "))
            }
        });
    }
    if let Some(fp) = f.fingerprint {
        let changed = last_fingerprint.is_some_and(|prev| prev != fp);
        out.push(&catalogue::HTTP_FINGERPRINT, &[], fp as f64, ts);
        out.push(&catalogue::HTTP_CHANGED, &[], changed as u8 as f64, ts);
        out.note(|| {
            format!("content fingerprint {fp:012x}{}", if changed { " (changed since the last round)" } else { "" })
        });
        *last_fingerprint = Some(fp);
    }
    let status_ok = spec.expect_status.iter().any(|p| p.matches(status));
    if !status_ok {
        let want: Vec<String> = spec.expect_status.iter().map(|p| String::from(*p)).collect();
        out.error = Some(format!("status {status} is not one of {}", want.join(", ")));
    } else if !f.body_failures.is_empty() {
        out.error = Some(f.body_failures.join("; "));
    } else {
        out.success = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: &[&str], downgrade: bool) -> HttpSpec {
        HttpSpec {
            url: "https://portal.angiang.gov.vn/".into(),
            expect_status: vec![],
            body_contains: vec![],
            body_not_contains: vec![],
            follow_redirects: 5,
            redirect_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            redirect_downgrade: downgrade,
            max_body_bytes: 1024,
            ca: None,
            server_name: None,
            connect_to: None,
            defacement: false,
            vocabulary: Default::default(),
            cloaking: false,
            user_agent: None,
        }
    }

    #[test]
    fn redirects_stay_on_the_host_and_never_downgrade_unless_allowed() {
        let first = "portal.angiang.gov.vn";
        let plain = spec(&[], false);
        assert!(redirect_allowed(&plain, first, true, "https://PORTAL.angiang.gov.vn/vi/").is_ok());
        assert!(redirect_allowed(&plain, first, false, "https://portal.angiang.gov.vn/").is_ok(), "an upgrade is fine");
        let e = redirect_allowed(&plain, first, true, "https://nhacai.example/").unwrap_err();
        assert!(e.contains("another host") && e.contains("redirect_hosts"), "{e}");
        let e = redirect_allowed(&plain, first, true, "http://portal.angiang.gov.vn/").unwrap_err();
        assert!(e.contains("https to http") && e.contains("redirect_downgrade"), "{e}");
        let listed = spec(&["cdn.angiang.gov.vn"], true);
        assert!(redirect_allowed(&listed, first, true, "https://cdn.angiang.gov.vn/x").is_ok());
        assert!(redirect_allowed(&listed, first, true, "http://portal.angiang.gov.vn/").is_ok());
        assert!(redirect_allowed(&listed, first, true, "https://other.example/").is_err());
    }

    #[test]
    fn fingerprint_ignores_digits_and_spacing_only() {
        let a = fingerprint(b"<p>Visitors: 1234</p>\n  <b>Hello</b>");
        let b = fingerprint(b"<p>Visitors: 98765</p> <b>Hello</b>\n");
        let c = fingerprint(b"<p>Visitors: 1234</p> <b>HACKED</b>");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a < 1 << 48);
    }

    #[test]
    fn redirect_locations_resolve() {
        assert_eq!(join("https://a.vn/x/y?q=1", "/login"), "https://a.vn/login");
        assert_eq!(join("https://a.vn/x/y", "z"), "https://a.vn/x/z");
        assert_eq!(join("http://a.vn", "https://b.vn/"), "https://b.vn/");
        assert_eq!(join("http://a.vn:8080/p", "//c.vn/r"), "http://c.vn/r");
    }
}
