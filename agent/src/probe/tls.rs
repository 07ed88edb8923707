//! TLS facts of a server, for the `tls` probe and the `https` side of `http`:
//! whether the chain verifies (and why not), whether the host name matches,
//! leaf and earliest chain expiry, protocol version, handshake time.
//!
//! The handshake runs with a verifier that asks rustls' WebPKI verifier and
//! records its verdict instead of aborting, so an expired certificate is
//! reported as expired (with its dates) rather than as a broken handshake.
//! Callers must not trust a connection whose `verify` is an error.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::outcome::Outcome;
use std::net::SocketAddr;
use tierwatch_protocol::catalogue;

/// Why a certificate chain did not verify; the `result` label of `tierwatch_tls_verify_result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyFailure {
    Expired,
    NotYetValid,
    WrongHost,
    UnknownIssuer,
    Revoked,
    Other,
}

impl VerifyFailure {
    /// Every outcome label, `ok` first.
    pub const LABELS: [&'static str; 7] =
        ["ok", "expired", "not_yet_valid", "wrong_host", "unknown_issuer", "revoked", "other"];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyFailure::Expired => "expired",
            VerifyFailure::NotYetValid => "not_yet_valid",
            VerifyFailure::WrongHost => "wrong_host",
            VerifyFailure::UnknownIssuer => "unknown_issuer",
            VerifyFailure::Revoked => "revoked",
            VerifyFailure::Other => "other",
        }
    }

    fn from_error(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => VerifyFailure::Expired,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    VerifyFailure::NotYetValid
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    VerifyFailure::WrongHost
                }
                CertificateError::UnknownIssuer => VerifyFailure::UnknownIssuer,
                CertificateError::Revoked => VerifyFailure::Revoked,
                _ => VerifyFailure::Other,
            },
            _ => VerifyFailure::Other,
        }
    }
}

/// What the handshake showed.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsFacts {
    /// `Ok` when the chain verified for the name; else why not, with rustls' words.
    pub verify: Result<(), (VerifyFailure, String)>,
    /// The leaf certificate is valid for the requested name (checked even when the chain is not).
    pub host_match: bool,
    /// Unix time the leaf expires.
    pub leaf_not_after: Option<i64>,
    /// Unix time the first certificate of the presented chain expires.
    pub chain_not_after: Option<i64>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: Option<&'static str>,
    pub handshake: Duration,
    /// SHA-256 of the leaf certificate (lower-case hex), the way browsers show it.
    pub leaf_sha256: String,
    /// The leaf's issuer, as an RFC 4514 name.
    pub leaf_issuer: Option<String>,
}

/// Trust roots: the given CA file, or the system's store (loaded once per process).
pub fn roots(ca: Option<&Path>) -> Result<Arc<RootCertStore>, String> {
    if let Some(ca) = ca {
        return tierwatch_runtime::tls::load_roots(ca).map(Arc::new).map_err(|e| e.to_string());
    }
    static SYSTEM: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                Err(format!(
                    "no system CA certificates could be loaded ({} errors); set `ca:` on the target",
                    found.errors.len()
                ))
            } else {
                Ok(Arc::new(store))
            }
        })
        .clone()
}

/// The presented chain (leaf first) and WebPKI's verdict on it.
type Seen = (Vec<CertificateDer<'static>>, Result<(), rustls::Error>);

#[derive(Debug)]
struct Capture {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now).map(|_| ());
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((chain, verdict));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    x509_parser::parse_x509_certificate(der.as_ref()).ok().map(|(_, c)| c.validity().not_after.timestamp())
}

fn issuer(der: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(der.as_ref()).ok().map(|(_, c)| c.issuer().to_string())
}

/// SHA-256 of a certificate, lower-case hex.
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs a TLS handshake over `tcp` for `server_name`, recording the facts.
/// Err only when no handshake happened at all (refused, protocol error).
pub async fn handshake(
    tcp: TcpStream,
    server_name: &str,
    roots: Arc<RootCertStore>,
    alpn: &[&[u8]],
) -> Result<(TlsStream<TcpStream>, TlsFacts), String> {
    let provider = tierwatch_runtime::tls::provider();
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| format!("TLS verifier: {e}"))?;
    let capture = Arc::new(Capture { inner, seen: Mutex::new(None) });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS config: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name =
        ServerName::try_from(server_name.to_string()).map_err(|e| format!("TLS server name {server_name:?}: {e}"))?;
    let started = Instant::now();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let handshake = started.elapsed();
    let version = stream.get_ref().1.protocol_version().map(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "other",
    });
    let (chain, verdict) = capture
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .ok_or_else(|| "TLS handshake completed without a server certificate".to_string())?;
    let host_match = rustls::server::ParsedCertificate::try_from(&chain[0])
        .ok()
        .is_some_and(|leaf| rustls::client::verify_server_name(&leaf, &name).is_ok());
    let facts = TlsFacts {
        verify: verdict.map_err(|e| (VerifyFailure::from_error(&e), e.to_string())),
        host_match,
        leaf_not_after: not_after(&chain[0]),
        chain_not_after: chain.iter().filter_map(not_after).min(),
        version,
        handshake,
        leaf_sha256: fingerprint(chain[0].as_ref()),
        leaf_issuer: issuer(&chain[0]),
    };
    Ok((stream, facts))
}

/// The series of a handshake's facts (TLS probes and HTTPS).
pub(super) fn outcome(out: &mut Outcome, f: &TlsFacts, ts: i64) {
    let result = match &f.verify {
        Ok(()) => "ok",
        Err((why, _)) => why.as_str(),
    };
    out.push(&catalogue::TLS_VERIFIED, &[], f.verify.is_ok() as u8 as f64, ts);
    out.push_state(&catalogue::TLS_VERIFY_RESULT, "result", &VerifyFailure::LABELS, result, ts);
    out.push(&catalogue::TLS_HOST_MATCH, &[], f.host_match as u8 as f64, ts);
    out.push(&catalogue::TLS_HANDSHAKE, &[], f.handshake.as_secs_f64(), ts);
    if let Some(t) = f.leaf_not_after {
        out.push(&catalogue::TLS_LEAF_EXPIRY, &[], t as f64, ts);
    }
    if let Some(t) = f.chain_not_after {
        out.push(&catalogue::TLS_CHAIN_EXPIRY, &[], t as f64, ts);
    }
    if let Some(v) = f.version {
        out.push(&catalogue::TLS_VERSION, &[("version", v)], 1.0, ts);
    }
    let days = |t: Option<i64>| {
        t.map(|t| format!("{:.1} days", (t - ts / 1000) as f64 / 86400.0)).unwrap_or_else(|| "?".into())
    };
    out.note(|| {
        format!(
            "TLS {}: chain {}, host name {}, leaf expires in {}, chain in {}",
            f.version.unwrap_or("?"),
            match &f.verify {
                Ok(()) => "verified".to_string(),
                Err((why, words)) => format!("NOT verified ({}: {words})", why.as_str()),
            },
            if f.host_match { "matches" } else { "does NOT match" },
            days(f.leaf_not_after),
            days(f.chain_not_after),
        )
    });
}

/// The TLS probe: a handshake with `host:port` verified for `name`.
pub(super) async fn probe(
    out: &mut Outcome,
    host: &str,
    port: u16,
    name: &str,
    roots: Option<Result<Arc<RootCertStore>, String>>,
    ts: i64,
) -> Option<TlsFacts> {
    let roots = match roots {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            out.error = Some(e);
            return None;
        }
        None => {
            out.error = Some("no trust roots".into());
            return None;
        }
    };
    let addr = match super::resolve(host).await {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(e) => {
            out.error = Some(e);
            return None;
        }
    };
    let tcp = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("connect to {addr}: {e}"));
            return None;
        }
    };
    match handshake(tcp, name, roots, &[]).await {
        Ok((_, facts)) => {
            outcome(out, &facts, ts);
            match &facts.verify {
                Ok(()) => out.success = true,
                Err((why, words)) => out.error = Some(format!("certificate not trusted ({}): {words}", why.as_str())),
            }
            Some(facts)
        }
        Err(e) => {
            out.error = Some(e);
            None
        }
    }
}
