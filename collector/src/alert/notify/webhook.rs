//! The generic webhook: `POST` of the JSON [`Message`](super::Message) to a
//! URL, optionally signed: `X-Tierwatch-Signature: sha256=<hex HMAC-SHA256
//! of the body>`, with the secret from a file or an environment variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_runtime::http_client::HttpConn;
use tierwatch_yamlconf::Problems;

use super::{Message, Outcome};
use tierwatch_runtime::secret;

/// As written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http(s)://host[:port]/path`.
    pub url: String,
    /// CA certificates (PEM) of an https receiver; default: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub hmac_secret_env: Option<String>,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Validated.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
    pub ca: Option<PathBuf>,
    pub hmac_secret_file: Option<PathBuf>,
    pub hmac_secret_env: Option<String>,
    pub timeout: Duration,
}

/// Checks `raw`; `key` is its key path for problems.
pub fn validate(raw: &RawWebhook, base: &Path, key: &str, p: &mut Problems) -> Option<Webhook> {
    let tierwatch_runtime::url::HttpUrl { https, host, port, path } =
        match tierwatch_runtime::url::parse(&raw.url, None) {
            Ok(parts) => parts,
            Err(e) => {
                p.push(format!("{key}.url"), e);
                return None;
            }
        };
    let resolve = |f: &Path| if f.is_absolute() { f.to_path_buf() } else { base.join(f) };
    let ca = raw.ca.as_deref().map(resolve);
    if let Some(c) = ca.as_ref().filter(|c| !c.is_file()) {
        p.push(format!("{key}.ca"), format!("file {} does not exist", c.display()));
    }
    if ca.is_some() && !https {
        p.push(format!("{key}.ca"), "a CA is for an https:// URL");
    }
    let file = raw.hmac_secret_file.as_deref().map(resolve);
    if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
        p.push(format!("{key}.hmac_secret_file"), format!("file {} does not exist", f.display()));
    }
    if file.is_some() && raw.hmac_secret_env.is_some() {
        p.push(format!("{key}.hmac_secret_env"), "give the secret by file or by environment variable, not both");
    }
    Some(Webhook {
        url: raw.url.clone(),
        https,
        host,
        port,
        path,
        ca,
        hmac_secret_file: file,
        hmac_secret_env: raw.hmac_secret_env.clone(),
        timeout: raw.timeout,
    })
}

/// Lower-case hex HMAC-SHA256 of `body` with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    tierwatch_protocol::ids::hex(ring::hmac::sign(&key, body).as_ref())
}

/// A connection to one webhook.
pub struct Client {
    hook: Webhook,
    /// The connection, or why its TLS could not be set up (tried per message).
    conn: Result<HttpConn, String>,
}

impl Client {
    /// A client for `hook`.
    pub fn new(hook: Webhook) -> Client {
        let tls =
            if hook.https { crate::outbound::client_tls(&hook.host, hook.ca.as_deref()).map(Some) } else { Ok(None) };
        let conn = tls.map(|tls| HttpConn::new(hook.host.clone(), hook.port, tls));
        Client { hook, conn }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message) -> Outcome {
        let conn = match &mut self.conn {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("TLS: {e}")),
        };
        let body = match serde_json::to_vec(m) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("encoding: {e}")),
        };
        let mut req = Request::post(self.hook.path.as_str())
            .header(HOST, conn.authority())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tierwatch-collector/", env!("CARGO_PKG_VERSION")));
        match secret::from_file_or_env(self.hook.hmac_secret_file.as_deref(), self.hook.hmac_secret_env.as_deref()) {
            Ok(Some(s)) => req = req.header("X-Tierwatch-Signature", format!("sha256={}", signature(&s, &body))),
            Ok(None) => {}
            Err(e) => return Outcome::Failed(format!("HMAC secret: {e}")),
        }
        let req = match req.body(Full::new(Bytes::from(body))) {
            Ok(r) => r,
            Err(e) => return Outcome::Refused(format!("building request: {e}")),
        };
        super::exchange(conn, req, self.hook.timeout).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_matches_rfc4231_case_2() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            super::signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
