//! A small CA for the province: `pki init` makes it, `pki issue` signs node
//! (client) and collector (server) certificates. No openssl needed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use tierwatch_protocol::NodeId;
use time::{Duration as TimeDuration, OffsetDateTime};

/// File name of the CA certificate inside the PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA key inside the PKI directory.
pub const CA_KEY: &str = "ca.key";

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} already exists; pass --force to replace it (every certificate it signed stops being trusted)")]
    Exists(PathBuf),
    #[error("no CA in {0}: run `tierwatch-collector pki init --dir {0}` first")]
    NoCa(PathBuf),
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("--san {0:?} is neither an IP address nor a DNS name")]
    BadSan(String),
}

/// What an issued certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// An agent's client certificate.
    Client,
    /// The collector's server certificate, with extra names agents connect to.
    Server { sans: Vec<String> },
}

/// Paths written by [`issue`].
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io { path: path.to_path_buf(), source }
}

fn write_file(path: &Path, data: &str, mode: u32, force: bool) -> Result<(), PkiError> {
    if path.exists() {
        if !force {
            return Err(PkiError::Exists(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(io_err(path))?;
    }
    // create_new with the final mode: the key is never readable by others, not even briefly.
    let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io_err(path))?;
    f.write_all(data.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))?;
    Ok(())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand_bytes();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    use rustls::crypto::ring::default_provider;
    let mut b = [0u8; N];
    // ring's system RNG never fails on Linux; a zero serial would still be valid.
    let _ = default_provider().secure_random.fill(&mut b);
    b
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for nodes whose clocks run a little behind.
    params.not_before = now - TimeDuration::hours(1);
    params.not_after = now + TimeDuration::days(days as i64);
}

/// Creates the CA in `dir`: `ca.crt` (0644) and `ca.key` (0600), valid `days`.
pub fn init(dir: &Path, name: &str, days: u32, force: bool) -> Result<PathBuf, PkiError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "tierwatch");
    params.distinguished_name = dn;
    // Path length 0: the CA signs leaves only, no intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.serial_number = Some(random_serial());
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if !force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
    }
    write_file(&key_path, &key.serialize_pem(), 0o600, force)?;
    write_file(&cert_path, &cert.pem(), 0o644, force)?;
    Ok(cert_path)
}

/// Issues a certificate for `node`, signed by the CA in `dir`: `ID.crt` (0644), `ID.key` (0600).
/// The node id is the CN and the SAN `DNS:ID`.
pub fn issue(dir: &Path, node: &NodeId, usage: &Usage, days: u32, force: bool) -> Result<Issued, PkiError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(PkiError::NoCa(dir.to_path_buf()));
    }
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // Re-deriving the CA from its own certificate keeps subject and key
    // identifier byte-identical, so leaves chain to the ca.crt on disk.
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(vec![node.to_string()])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node.as_str());
    dn.push(DnType::OrganizationName, "tierwatch");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    match usage {
        Usage::Client => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Server { sans } => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for s in sans {
                let san = match s.parse::<IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => {
                        let ok = !s.is_empty()
                            && s.split('.').all(|l| {
                                !l.is_empty()
                                    && l.len() <= 63
                                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                            });
                        if !ok {
                            return Err(PkiError::BadSan(s.clone()));
                        }
                        SanType::DnsName(s.clone().try_into()?)
                    }
                };
                params.subject_alt_names.push(san);
            }
        }
    }
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let issued = Issued { cert: dir.join(format!("{node}.crt")), key: dir.join(format!("{node}.key")) };
    if !force {
        for p in [&issued.cert, &issued.key] {
            if p.exists() {
                return Err(PkiError::Exists(p.clone()));
            }
        }
    }
    write_file(&issued.key, &key.serialize_pem(), 0o600, force)?;
    write_file(&issued.cert, &cert.pem(), 0o644, force)?;
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_and_issue_write_files_with_safe_modes() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "test CA", 30, false).unwrap();
        let node = NodeId::new("nui-cam").unwrap();
        let issued = issue(dir.path(), &node, &Usage::Client, 10, false).unwrap();
        for (p, mode) in [(dir.path().join(CA_KEY), 0o600), (issued.key.clone(), 0o600), (issued.cert.clone(), 0o644)] {
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, mode, "{}", p.display());
        }
        // The node id is both CN and the only DNS SAN.
        let pem = fs::read(&issued.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(cert.subject().to_string().contains("CN=nui-cam"));
        assert_eq!(crate::tls::dns_sans(&cert), vec!["nui-cam".to_string()]);
        assert!(!cert.is_ca());
        // A second init or issue refuses to overwrite.
        assert!(matches!(init(dir.path(), "x", 30, false), Err(PkiError::Exists(_))));
        assert!(matches!(issue(dir.path(), &node, &Usage::Client, 10, false), Err(PkiError::Exists(_))));
        assert!(matches!(
            issue(dir.path(), &NodeId::new("c").unwrap(), &Usage::Server { sans: vec!["bad name!".into()] }, 10, false),
            Err(PkiError::BadSan(_))
        ));
    }

    #[test]
    fn issue_without_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), &NodeId::new("a").unwrap(), &Usage::Client, 1, false).unwrap_err();
        assert!(err.to_string().contains("pki init"), "{err}");
    }
}
