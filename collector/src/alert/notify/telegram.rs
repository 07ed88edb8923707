//! Telegram: each notification is one message from a bot to a chat
//! (`sendMessage` of the Bot API), the text of [`super::text`]. The bot
//! token comes from a file or an environment variable; it is part of the
//! request path, so it never appears in logs.

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
use crate::outbound;
use tierwatch_runtime::secret;
use tierwatch_runtime::url::HttpUrl as Url;

/// As written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelegram {
    #[serde(default)]
    pub bot_token_file: Option<PathBuf>,
    #[serde(default)]
    pub bot_token_env: Option<String>,
    /// Numeric chat id (groups are negative) or `@channelname`.
    pub chat_id: String,
    /// The Bot API server (a local Bot API server, or a test double).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// CA for `api_url` (PEM); default: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
}

fn default_api_url() -> String {
    "https://api.telegram.org".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Validated.
#[derive(Debug, Clone)]
pub struct Telegram {
    pub url: Url,
    pub bot_token_file: Option<PathBuf>,
    pub bot_token_env: Option<String>,
    pub chat_id: String,
    pub ca: Option<PathBuf>,
    pub timeout: Duration,
}

/// Checks `raw`; `key` is its key path for problems.
pub fn validate(raw: &RawTelegram, base: &Path, key: &str, p: &mut Problems) -> Option<Telegram> {
    let resolve = |f: &Path| if f.is_absolute() { f.to_path_buf() } else { base.join(f) };
    let url = tierwatch_runtime::url::parse(raw.api_url.trim_end_matches('/'), None)
        .map_err(|e| p.push(format!("{key}.api_url"), e))
        .ok()?;
    let file = raw.bot_token_file.as_deref().map(resolve);
    match (&file, &raw.bot_token_env) {
        (Some(f), None) if !f.is_file() => {
            p.push(format!("{key}.bot_token_file"), format!("file {} does not exist", f.display()))
        }
        (Some(_), None) | (None, Some(_)) => {}
        _ => p.push(
            format!("{key}.bot_token_file"),
            "give the bot token by file or by environment variable (one of them)",
        ),
    }
    let chat_ok = raw.chat_id.parse::<i64>().is_ok()
        || (raw.chat_id.starts_with('@')
            && raw.chat_id.len() > 1
            && raw.chat_id[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if !chat_ok {
        p.push(format!("{key}.chat_id"), format!("{:?} is neither a numeric chat id nor @channelname", raw.chat_id));
    }
    let ca = raw.ca.as_deref().map(resolve);
    Some(Telegram {
        url,
        bot_token_file: file,
        bot_token_env: raw.bot_token_env.clone(),
        chat_id: raw.chat_id.clone(),
        ca,
        timeout: raw.timeout,
    })
}

/// A connection to the Bot API.
pub struct Client {
    bot: Telegram,
    conn: Result<HttpConn, String>,
    locale: crate::i18n::Locale,
}

impl Client {
    /// A client for `bot`.
    pub fn new(bot: Telegram, locale: crate::i18n::Locale) -> Client {
        let tls =
            if bot.url.https { outbound::client_tls(&bot.url.host, bot.ca.as_deref()).map(Some) } else { Ok(None) };
        let conn = tls.map(|tls| HttpConn::new(bot.url.host.clone(), bot.url.port, tls));
        Client { bot, conn, locale }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message) -> Outcome {
        let conn = match &mut self.conn {
            Ok(c) => c,
            Err(e) => return Outcome::Failed(format!("TLS: {e}")),
        };
        let token =
            match secret::from_file_or_env(self.bot.bot_token_file.as_deref(), self.bot.bot_token_env.as_deref()) {
                Ok(Some(t)) => t,
                Ok(None) => return Outcome::Failed("no bot token".into()),
                Err(e) => return Outcome::Failed(format!("bot token: {e}")),
            };
        let (_, text) = super::text::render(m, &self.locale);
        let chat_id = match self.bot.chat_id.parse::<i64>() {
            Ok(n) => serde_json::json!(n),
            Err(_) => serde_json::json!(self.bot.chat_id),
        };
        // Telegram caps a message at 4096 characters.
        let text: String = text.chars().take(4000).collect();
        let body =
            serde_json::json!({ "chat_id": chat_id, "text": text, "disable_web_page_preview": true }).to_string();
        let path = format!("{}/bot{token}/sendMessage", self.bot.url.path.trim_end_matches('/'));
        let req = Request::post(path)
            .header(HOST, conn.authority())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("tierwatch-collector/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)));
        match req {
            Ok(req) => super::exchange(conn, req, self.bot.timeout).await,
            Err(e) => Outcome::Refused(format!("building request: {e}")),
        }
    }
}
