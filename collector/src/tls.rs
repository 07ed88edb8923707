//! The ingest listener's TLS: client certificates are required and verified
//! against the configured CA; the peer's node id comes from its certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tierwatch_protocol::NodeId;
use tierwatch_runtime::tls::{load_certs, load_key, load_roots, provider, TlsError};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Builds the server config: our chain and key, client certificates required, signed by `ca`.
pub(crate) fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(load_roots(ca)?);
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why a verified certificate still names no usable node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate does not parse: {0}")]
    Unparsable(String),
    #[error("client certificate has no DNS subject alternative name")]
    NoDnsSan,
    #[error("client certificate names several nodes ({0}); a node certificate must carry exactly one DNS SAN")]
    Ambiguous(String),
    #[error("client certificate SAN {0:?} is not a node id")]
    BadId(String),
}

/// DNS names among the certificate's subject alternative names.
pub(crate) fn dns_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(d) = name {
                out.push(d.to_string());
            }
        }
    }
    out
}

/// The node id of a peer: its leaf certificate's single `DNS:` SAN.
pub(crate) fn peer_node_id(certs: Option<&[CertificateDer<'_>]>) -> Result<NodeId, IdentityError> {
    let leaf = certs.and_then(|c| c.first()).ok_or(IdentityError::NoCertificate)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let names = dns_sans(&cert);
    match names.as_slice() {
        [] => Err(IdentityError::NoDnsSan),
        [one] => NodeId::new(one).map_err(|_| IdentityError::BadId(one.clone())),
        many => Err(IdentityError::Ambiguous(many.join(", "))),
    }
}
