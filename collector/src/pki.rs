//! A small CA for the province: `pki init` makes it, `pki issue` signs node
//! (client) and collector (server) certificates, `pki revoke` adds one to
//! the revocation list (`revoked.crl`) the collector checks at every
//! handshake. No openssl needed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType,
    SerialNumber,
};
use tierwatch_protocol::NodeId;
use time::{Duration as TimeDuration, OffsetDateTime};

/// File name of the CA certificate inside the PKI directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the CA key inside the PKI directory.
pub const CA_KEY: &str = "ca.key";
/// File name of the revocation list inside the PKI directory (PEM).
pub const CRL: &str = "revoked.crl";

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
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("--serial {0:?} is not a hexadecimal serial number")]
    BadSerial(String),
}

/// Which certificate to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// The node's current certificate, `ID.crt` in the PKI directory.
    Node(NodeId),
    /// A certificate by its serial number (hex, as `openssl x509 -serial` prints it).
    Serial(String),
}

/// What [`revoke`] wrote.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The serial revoked, hex.
    pub serial: String,
    /// The revocation list written.
    pub crl: PathBuf,
    /// Certificates the list now holds.
    pub entries: usize,
    /// False when the serial was on the list already (the list is unchanged).
    pub added: bool,
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
    // An empty list from the start, so that the collector can name it
    // before the first revocation.
    write_crl(dir, &cert, &key, Vec::new(), 1)?;
    Ok(cert_path)
}

/// The CA of `dir`, re-derived from its certificate and key.
fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), PkiError> {
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    if !ca_cert_path.exists() || !ca_key_path.exists() {
        return Err(PkiError::NoCa(dir.to_path_buf()));
    }
    let ca_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
    let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // Re-deriving the CA from its own certificate keeps subject and key
    // identifier byte-identical, so leaves and lists chain to the ca.crt on disk.
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
    Ok((ca, ca_key))
}

/// Signs and writes the list of `revoked` as number `number` (0644).
fn write_crl(
    dir: &Path,
    ca: &rcgen::Certificate,
    key: &KeyPair,
    revoked: Vec<RevokedCertParams>,
    number: u64,
) -> Result<PathBuf, PkiError> {
    let now = OffsetDateTime::now_utc();
    let crl = CertificateRevocationListParams {
        this_update: now - TimeDuration::hours(1),
        // The collector does not enforce expiry of the list: it is the
        // province's own, re-signed at each revocation.
        next_update: now + TimeDuration::days(3650),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(ca, key)?;
    let path = dir.join(CRL);
    write_file(&path, &crl.pem()?, 0o644, true)?;
    Ok(path)
}

/// The serial of a certificate file, hex.
fn serial_of(path: &Path) -> Result<Vec<u8>, PkiError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let bad = |reason: String| PkiError::Unreadable { path: path.to_path_buf(), reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    Ok(cert.raw_serial().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_start_matches("0x").replace(':', "");
    if s.is_empty() || (s.len() & 1) == 1 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The entries and number of the list in `dir`, if there is one.
fn read_crl(dir: &Path) -> Result<(Vec<RevokedCertParams>, u64), PkiError> {
    let path = dir.join(CRL);
    if !path.exists() {
        return Ok((Vec::new(), 0));
    }
    let pem = fs::read(&path).map_err(io_err(&path))?;
    let bad = |reason: String| PkiError::Unreadable { path: path.clone(), reason };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| bad(e.to_string()))?;
    let (_, crl) = x509_parser::parse_x509_crl(&pem.contents).map_err(|e| bad(e.to_string()))?;
    let number = crl.crl_number().and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
    let entries = crl
        .iter_revoked_certificates()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from_slice(r.raw_serial()),
            revocation_time: r.revocation_date.to_datetime(),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        })
        .collect();
    Ok((entries, number))
}

/// Adds a certificate to the revocation list of the CA in `dir` (created
/// if missing), re-signed with the next number. The collector refuses the
/// certificate at its next handshake once reloaded (`systemctl reload`).
pub fn revoke(dir: &Path, which: &Revoke) -> Result<Revoked, PkiError> {
    let (ca, key) = load_ca(dir)?;
    let serial = match which {
        Revoke::Node(node) => serial_of(&dir.join(format!("{node}.crt")))?,
        Revoke::Serial(s) => unhex(s).ok_or_else(|| PkiError::BadSerial(s.clone()))?,
    };
    let (mut entries, number) = read_crl(dir)?;
    let added = !entries.iter().any(|e| e.serial_number.as_ref() == serial.as_slice());
    if added {
        entries.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: OffsetDateTime::now_utc(),
            // A province revokes a commune certificate when the box is stolen or tampered with.
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        });
    }
    let count = entries.len();
    let crl = write_crl(dir, &ca, &key, entries, number + 1)?;
    Ok(Revoked { serial: hex(&serial), crl, entries: count, added })
}

/// Issues a certificate for `node`, signed by the CA in `dir`: `ID.crt` (0644), `ID.key` (0600).
/// The node id is the CN and the SAN `DNS:ID`.
pub fn issue(dir: &Path, node: &NodeId, usage: &Usage, days: u32, force: bool) -> Result<Issued, PkiError> {
    let (ca, ca_key) = load_ca(dir)?;
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
    fn revoking_lists_the_serial_once_and_keeps_earlier_entries() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), "test CA", 30, false).unwrap();
        assert!(dir.path().join(CRL).is_file(), "init writes an empty list");
        let a = issue(dir.path(), &NodeId::new("nui-cam").unwrap(), &Usage::Client, 10, false).unwrap();
        issue(dir.path(), &NodeId::new("an-giang").unwrap(), &Usage::Client, 10, false).unwrap();
        let r = revoke(dir.path(), &Revoke::Node(NodeId::new("nui-cam").unwrap())).unwrap();
        assert_eq!((r.entries, r.added), (1, true));
        assert_eq!(r.serial, hex(&serial_of(&a.cert).unwrap()));
        let again = revoke(dir.path(), &Revoke::Node(NodeId::new("nui-cam").unwrap())).unwrap();
        assert_eq!((again.entries, again.added), (1, false));
        let by_serial = revoke(dir.path(), &Revoke::Serial("0A:1B".into())).unwrap();
        assert_eq!((by_serial.entries, by_serial.serial.as_str()), (2, "0a1b"));
        let (entries, number) = read_crl(dir.path()).unwrap();
        assert_eq!(number, 4, "init, then three revocations");
        let serials: Vec<String> = entries.iter().map(|e| hex(e.serial_number.as_ref())).collect();
        assert_eq!(serials, [r.serial.clone(), "0a1b".to_string()]);
        assert!(matches!(revoke(dir.path(), &Revoke::Serial("xyz".into())), Err(PkiError::BadSerial(_))));
        assert!(matches!(revoke(dir.path(), &Revoke::Node(NodeId::new("ghost").unwrap())), Err(PkiError::Io { .. })));
    }

    #[test]
    fn issue_without_ca_says_how_to_make_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = issue(dir.path(), &NodeId::new("a").unwrap(), &Usage::Client, 1, false).unwrap_err();
        assert!(err.to_string().contains("pki init"), "{err}");
    }
}
