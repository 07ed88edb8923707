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
    /// `http://host[:port]/path` (https receivers: put a TLS proxy in front, or use Alertmanager).
    pub url: String,
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
    pub host: String,
    pub port: u16,
    pub path: String,
    pub hmac_secret_file: Option<PathBuf>,
    pub hmac_secret_env: Option<String>,
    pub timeout: Duration,
}

/// Checks `raw`; `key` is its key path for problems.
pub fn validate(raw: &RawWebhook, base: &Path, key: &str, p: &mut Problems) -> Option<Webhook> {
    if !raw.url.starts_with("http://") {
        p.push(format!("{key}.url"), format!("{:?} must start with http://", raw.url));
        return None;
    }
    let tierwatch_runtime::url::HttpUrl { host, port, path, .. } = match tierwatch_runtime::url::parse(&raw.url, None) {
        Ok(parts) => parts,
        Err(e) => {
            p.push(format!("{key}.url"), e);
            return None;
        }
    };
    let file = raw.hmac_secret_file.as_deref().map(|f| if f.is_absolute() { f.to_path_buf() } else { base.join(f) });
    if let Some(f) = file.as_ref().filter(|f| !f.is_file()) {
        p.push(format!("{key}.hmac_secret_file"), format!("file {} does not exist", f.display()));
    }
    if file.is_some() && raw.hmac_secret_env.is_some() {
        p.push(format!("{key}.hmac_secret_env"), "give the secret by file or by environment variable, not both");
    }
    Some(Webhook {
        url: raw.url.clone(),
        host,
        port,
        path,
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
    conn: HttpConn,
}

impl Client {
    /// A client for `hook`.
    pub fn new(hook: Webhook) -> Client {
        let conn = HttpConn::new(hook.host.clone(), hook.port, None);
        Client { hook, conn }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message) -> Outcome {
        let body = match serde_json::to_vec(m) {
            Ok(b) => b,
            Err(e) => return Outcome::Refused(format!("encoding: {e}")),
        };
        let mut req = Request::post(self.hook.path.as_str())
            .header(HOST, self.conn.authority())
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
        super::exchange(&mut self.conn, req, self.hook.timeout).await
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
