//! The ingest listener's TLS: client certificates are required and verified
//! against the configured CA and its revocation list; the peer's node id
//! comes from its certificate. A revoked certificate fails the handshake,
//! and the node it names is noted for the connection (see [`revoked_in`]),
//! so that the refusal is reported with the node, not only counted.

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tierwatch_protocol::NodeId;
use tierwatch_runtime::tls::{load_certs, load_key, load_roots, provider, TlsError};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

/// Builds the server config: our chain and key, client certificates
/// required, signed by `ca` and not on the revocation list `crl` (PEM).
pub(crate) fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crl: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = Arc::new(load_roots(ca)?);
    let provider = provider();
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if let Some(crl) = crl {
        builder = builder.with_crls(load_crls(crl)?).only_check_end_entity_revocation();
    }
    let verifier = builder.build().map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(NotingRevoked(verifier)))
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The revocation lists in a PEM file (one or more).
fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if crls.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), reason: "no X509 CRL in the file".into() });
    }
    Ok(crls)
}

tokio::task_local! {
    /// The node of a revoked certificate presented in this task's handshake.
    static REVOKED: RefCell<Option<NodeId>>;
}

/// Runs a handshake (`f`) and says which node's revoked certificate it
/// refused, if that is why it failed.
pub(crate) async fn revoked_in<F: std::future::Future>(f: F) -> (F::Output, Option<NodeId>) {
    REVOKED
        .scope(RefCell::new(None), async move {
            let out = f.await;
            (out, REVOKED.with(|r| r.borrow_mut().take()))
        })
        .await
}

/// The webpki verifier, noting the node of a revoked certificate it refuses.
#[derive(Debug)]
struct NotingRevoked(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for NotingRevoked {
    fn offer_client_auth(&self) -> bool {
        self.0.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = self.0.verify_client_cert(end_entity, intermediates, now);
        if let Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)) = &verdict {
            if let Ok(node) = peer_node_id(Some(std::slice::from_ref(end_entity))) {
                // Outside a handshake task (none here) there is nowhere to note it.
                let _ = REVOKED.try_with(|r| *r.borrow_mut() = Some(node));
            }
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
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
    // What is not a node id is shown cut short: it ends up in logs and answers.
    let short = |s: &str| s.chars().take(64).collect::<String>();
    match names.as_slice() {
        [] => Err(IdentityError::NoDnsSan),
        [one] => NodeId::new(one).map_err(|_| IdentityError::BadId(short(one))),
        many => Err(IdentityError::Ambiguous(many.iter().take(4).map(|n| short(n)).collect::<Vec<_>>().join(", "))),
    }
}
