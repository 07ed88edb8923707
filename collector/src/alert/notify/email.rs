//! Email over SMTP (lettre): each notification is one plain-text mail, the
//! text of [`super::text`], to every address of the receiver. STARTTLS
//! (default), implicit TLS or, on a trusted LAN relay, none; the password
//! comes from a file or an environment variable.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls as SmtpTls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;
use tierwatch_runtime::duration;
use tierwatch_yamlconf::Problems;

use super::{Message, Outcome};
use tierwatch_runtime::secret;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain, upgraded with STARTTLS, which must succeed (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or a trusted LAN (port 25).
    None,
}

/// As written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    pub smtp_host: String,
    /// Default: 587 (starttls), 465 (tls), 25 (none).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: Security,
    /// CA for the SMTP server (PEM); default: the system's roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// `Tierwatch <tierwatch@angiang.gov.vn>`.
    pub from: String,
    pub to: Vec<String>,
    #[serde(default = "default_timeout", with = "duration::serde")]
    pub timeout: Duration,
}

fn default_security() -> Security {
    Security::Starttls
}
fn default_timeout() -> Duration {
    Duration::from_secs(20)
}

/// Validated.
#[derive(Debug, Clone)]
pub struct Email {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub ca: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub timeout: Duration,
}

/// Checks `raw`; `key` is its key path for problems.
pub fn validate(raw: &RawEmail, base: &Path, key: &str, p: &mut Problems) -> Option<Email> {
    let resolve = |f: &Path| if f.is_absolute() { f.to_path_buf() } else { base.join(f) };
    let before = p.len();
    if raw.smtp_host.trim().is_empty() {
        p.push(format!("{key}.smtp_host"), "must not be empty");
    }
    let from =
        raw.from.parse::<Mailbox>().map_err(|e| p.push(format!("{key}.from"), format!("{:?}: {e}", raw.from))).ok();
    if raw.to.is_empty() {
        p.push(format!("{key}.to"), "give at least one address");
    }
    let to: Vec<Mailbox> = raw
        .to
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            a.parse::<Mailbox>().map_err(|e| p.push(format!("{key}.to[{i}]"), format!("{a:?}: {e}"))).ok()
        })
        .collect();
    let password_file = raw.password_file.as_deref().map(resolve);
    if let Some(f) = password_file.as_ref().filter(|f| !f.is_file()) {
        p.push(format!("{key}.password_file"), format!("file {} does not exist", f.display()));
    }
    let has_password = password_file.is_some() || raw.password_env.is_some();
    if password_file.is_some() && raw.password_env.is_some() {
        p.push(format!("{key}.password_env"), "give the password by file or by environment variable, not both");
    }
    if raw.username.is_some() != has_password {
        p.push(format!("{key}.username"), "give both a username and a password (file or env), or neither");
    }
    if has_password && raw.security == Security::None {
        p.push(format!("{key}.security"), "a password is never sent without TLS: use starttls or tls");
    }
    if p.len() > before {
        return None;
    }
    let port = raw.smtp_port.unwrap_or(match raw.security {
        Security::Starttls => 587,
        Security::Tls => 465,
        Security::None => 25,
    });
    Some(Email {
        host: raw.smtp_host.trim().to_string(),
        port,
        security: raw.security,
        ca: raw.ca.as_deref().map(resolve),
        username: raw.username.clone(),
        password_file,
        password_env: raw.password_env.clone(),
        from: from?,
        to,
        timeout: raw.timeout,
    })
}

/// Sends through one SMTP server; a connection per message (pages are rare).
pub struct Client {
    email: Email,
    locale: crate::i18n::Locale,
}

impl Client {
    /// A client for `email`.
    pub fn new(email: Email, locale: crate::i18n::Locale) -> Client {
        Client { email, locale }
    }

    fn transport(&self) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let e = &self.email;
        let tls = match e.security {
            Security::None => SmtpTls::None,
            s => {
                let mut params = TlsParameters::builder(e.host.clone());
                if let Some(ca) = &e.ca {
                    let pem = std::fs::read(ca).map_err(|err| format!("{}: {err}", ca.display()))?;
                    let cert = Certificate::from_pem(&pem).map_err(|err| format!("{}: {err}", ca.display()))?;
                    params = params.add_root_certificate(cert);
                }
                let params = params.build_rustls().map_err(|err| format!("TLS: {err}"))?;
                if s == Security::Tls {
                    SmtpTls::Wrapper(params)
                } else {
                    SmtpTls::Required(params)
                }
            }
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(e.host.as_str())
            .port(e.port)
            .tls(tls)
            .timeout(Some(e.timeout));
        if let Some(user) = &e.username {
            let pass = secret::from_file_or_env(e.password_file.as_deref(), e.password_env.as_deref())
                .map_err(|e| e.to_string())?
                .unwrap_or_default();
            b = b.credentials(Credentials::new(user.clone(), pass));
        }
        Ok(b.build())
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &Message) -> Outcome {
        let transport = match self.transport() {
            Ok(t) => t,
            Err(e) => return Outcome::Failed(e),
        };
        let (subject, body) = super::text::render(m, &self.locale);
        // The same Message-ID on every attempt: a mail sent twice (the
        // answer lost) threads as one in the reader's client.
        let id: String =
            m.id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '.' }).collect();
        let mut builder = lettre::Message::builder()
            .from(self.email.from.clone())
            .subject(subject)
            .message_id(Some(format!("<{id}@tierwatch>")))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.email.to {
            builder = builder.to(to.clone());
        }
        let mail = match builder.body(body) {
            Ok(mail) => mail,
            Err(e) => return Outcome::Refused(format!("building the mail: {e}")),
        };
        match transport.send(mail).await {
            Ok(_) => Outcome::Sent,
            Err(e) if e.is_permanent() => Outcome::Refused(e.to_string()),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}
