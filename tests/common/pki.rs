//! Test PKI: a certificate authority per test that issues server, client,
//! expired and self-signed certificates and CRLs as PEM files, and the
//! rustls configs (ring provider, never the process default) and the TLS
//! connect that test backends and clients use.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::*;

/// A test certificate authority: a CA key and certificate written under `dir`.
pub struct Pki {
    dir: PathBuf,
    ca_path: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// For an intermediate CA: itself as issued by its parent (its serial,
    /// for the parent's CRL); leaves it issues carry it in their chain.
    pub as_issued: Option<Issued>,
    /// The next serial to issue; the CA itself is serial 1.
    next_serial: AtomicU64,
    /// The next CRL number, so each CRL this CA signs supersedes the last.
    next_crl: AtomicU64,
}

/// A certificate and key issued for a test, as PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM: the leaf certificate (then the chain, if any).
    pub cert: PathBuf,
    /// PEM: PKCS#8 private key.
    pub key: PathBuf,
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
    /// `sha256:AB:CD:...`, uppercase hex, colon separated, of `der`.
    pub fingerprint: String,
    pub serial: u64,
}

/// Seconds since the epoch, now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Sets `not_before` and `not_after` to now plus the given seconds (rcgen
/// takes `time::OffsetDateTime`, reached here from its own `date_time_ymd`
/// and a std `Duration`, so the tests need no `time` dependency).
pub fn validity(params: &mut CertificateParams, from: i64, to: i64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = unix_now();
    params.not_before = epoch + Duration::from_secs(now.saturating_add_signed(from));
    params.not_after = epoch + Duration::from_secs(now.saturating_add_signed(to));
}

pub const HOUR: i64 = 3600;
pub const DAY: i64 = 24 * HOUR;

/// `sha256:AB:CD:...` of `der`: uppercase hex, colon separated.
pub fn fingerprint(der: &[u8]) -> String {
    let hex: Vec<String> = Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("sha256:{}", hex.join(":"))
}

/// Writes a leaf's certificate and key as `dir/<file>.pem` and
/// `dir/<file>.key`.
fn write_issued(
    dir: &Path,
    file: &str,
    der: &[u8],
    pem: &str,
    key: &KeyPair,
    serial: u64,
) -> Issued {
    let cert = dir.join(format!("{file}.pem"));
    let key_path = dir.join(format!("{file}.key"));
    std::fs::write(&cert, pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Issued {
        cert,
        key: key_path,
        der: der.to_vec(),
        fingerprint: fingerprint(der),
        serial,
    }
}

/// Leaf parameters: subject CN, SANs (IP literals as IP SANs), one EKU,
/// valid from an hour ago for a year unless changed.
fn leaf_params(
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
    serial: u64,
) -> CertificateParams {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    // `new` makes an IP SAN of whatever parses as an IpAddr, DNS otherwise.
    let mut p = CertificateParams::new(sans).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from(serial));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, -HOUR, 365 * DAY);
    p
}

/// Client leaf parameters for a test to change before [`Pki::issue_params`]
/// or [`self_signed_params`]: CN = `cn`, EKU clientAuth, no SAN, valid from
/// an hour ago for a year.
pub fn client_params(cn: &str) -> CertificateParams {
    leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, 0)
}

/// CA parameters: CN = `cn`, keyCertSign (to issue) and cRLSign (so
/// webpki takes its CRLs), valid from a day ago for `days`.
fn ca_params(cn: &str, serial: u64, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from(serial));
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, -DAY, days * DAY);
    p
}

impl Pki {
    /// A CA "CN=<name> test CA", its certificate written as
    /// `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        Pki::root(dir, name, &format!("{name} test CA"), 10 * 365)
    }

    /// A root CA with subject CN `cn`, valid for `days`, written as
    /// `dir/<file>-ca.pem`.
    pub fn root(dir: &Path, file: &str, cn: &str, days: i64) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let mut p = ca_params(cn, 1, days);
        p.use_authority_key_identifier_extension = false;
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        let ca_path = dir.join(format!("{file}-ca.pem"));
        std::fs::write(&ca_path, ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca_path,
            ca,
            as_issued: None,
            next_serial: AtomicU64::new(2),
            next_crl: AtomicU64::new(1),
        }
    }

    /// An intermediate CA "CN=<name> intermediate CA" issued by this one;
    /// the leaves it issues carry it in their certificate file (the chain
    /// a client sends), and this CA's CRL can revoke it (`as_issued`).
    pub fn intermediate(&self, name: &str) -> Pki {
        let serial = self.serial();
        let key = KeyPair::generate().unwrap();
        let p = ca_params(&format!("{name} intermediate CA"), serial, 365);
        let ca = CertifiedIssuer::signed_by(p, key, &self.ca).unwrap();
        let ca_path = self.dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_path, ca.pem()).unwrap();
        let as_issued = Issued {
            cert: ca_path.clone(),
            key: PathBuf::new(),
            der: ca.der().to_vec(),
            fingerprint: fingerprint(ca.der()),
            serial,
        };
        Pki {
            dir: self.dir.clone(),
            ca_path,
            ca,
            as_issued: Some(as_issued),
            next_serial: AtomicU64::new(1000),
            next_crl: AtomicU64::new(1),
        }
    }

    /// Path of the CA certificate PEM.
    pub fn ca(&self) -> PathBuf {
        self.ca_path.clone()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The directory this CA writes into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Signs `params` for a fresh key and writes `dir/<file>.pem|.key`
    /// (an intermediate's certificate follows the leaf in the `.pem`).
    fn issue(&self, file: &str, params: CertificateParams, serial: u64) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let mut pem = cert.pem();
        if self.as_issued.is_some() {
            pem.push_str(&self.ca.pem());
        }
        write_issued(&self.dir, file, cert.der(), &pem, &key, serial)
    }

    /// Signs leaf parameters a test built (see [`client_params`]), with
    /// the next serial of this CA.
    pub fn issue_params(&self, file: &str, mut params: CertificateParams) -> Issued {
        let serial = self.serial();
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        self.issue(file, params, serial)
    }

    /// A server certificate: `names` are DNS names or IP literals (an IP
    /// SAN when it parses as an IpAddr), CN = `names[0]`, EKU serverAuth.
    /// Writes `dir/<file>.pem` and `dir/<file>.key`.
    pub fn server(&self, file: &str, names: &[&str]) -> Issued {
        let cn = names.first().expect("a server certificate needs a name");
        let serial = self.serial();
        let p = leaf_params(cn, names, ExtendedKeyUsagePurpose::ServerAuth, serial);
        self.issue(file, p, serial)
    }

    /// A client certificate: CN = `cn`, DNS SANs = `dns`, EKU clientAuth.
    pub fn client(&self, file: &str, cn: &str, dns: &[&str]) -> Issued {
        let serial = self.serial();
        let mut p = leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, serial);
        p.subject_alt_names = dns
            .iter()
            .map(|d| SanType::DnsName((*d).try_into().unwrap()))
            .collect();
        self.issue(file, p, serial)
    }

    /// A client certificate that expired a day ago (valid from 30 days back).
    pub fn expired_client(&self, file: &str, cn: &str) -> Issued {
        let serial = self.serial();
        let mut p = leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, serial);
        validity(&mut p, -30 * DAY, -DAY);
        self.issue(file, p, serial)
    }

    /// A PEM CRL ("X509 CRL") signed by this CA, revoking `revoked`: this
    /// update an hour ago, next update in 7 days, an authority key
    /// identifier and a CRL number. Writes `dir/<file>.crl.pem`.
    pub fn crl(&self, file: &str, revoked: &[&Issued]) -> PathBuf {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now = unix_now();
        let at = |offset: i64| epoch + Duration::from_secs(now.saturating_add_signed(offset));
        let crl = CertificateRevocationListParams {
            this_update: at(-HOUR),
            next_update: at(7 * DAY),
            crl_number: SerialNumber::from(self.next_crl.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|i| RevokedCertParams {
                    serial_number: SerialNumber::from(i.serial),
                    revocation_time: at(-HOUR),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.ca)
        .unwrap();
        let path = self.dir.join(format!("{file}.crl.pem"));
        std::fs::write(&path, crl.pem().unwrap()).unwrap();
        path
    }
}

/// A self-signed client certificate (EKU clientAuth), CN = `cn`: one no
/// test CA vouches for. Writes `dir/<file>.pem` and `dir/<file>.key`.
pub fn self_signed(dir: &Path, file: &str, cn: &str) -> Issued {
    self_signed_params(dir, file, client_params(cn))
}

/// A self-signed certificate from parameters a test built.
pub fn self_signed_params(dir: &Path, file: &str, mut p: CertificateParams) -> Issued {
    static SERIAL: AtomicU64 = AtomicU64::new(1_000_000);
    std::fs::create_dir_all(dir).unwrap();
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    p.serial_number = Some(SerialNumber::from(serial));
    p.use_authority_key_identifier_extension = false;
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    write_issued(dir, file, cert.der(), &cert.pem(), &key, serial)
}

/// The ring provider, explicitly: tests never depend on a process default.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A root store holding every certificate in a PEM file.
pub fn load_roots(path: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path) {
        roots.add(c).unwrap();
    }
    Arc::new(roots)
}

/// A test peer's server config presenting `server`; with `client_ca`,
/// client certificates are required and verified against it.
pub fn server_config(server: &Issued, client_ca: Option<&Path>) -> Arc<ServerConfig> {
    match client_ca {
        None => server_config_inner(server, None),
        Some(ca) => {
            let v = WebPkiClientVerifier::builder_with_provider(load_roots(ca), ring_provider())
                .build()
                .unwrap();
            server_config_with_verifier(server, v)
        }
    }
}

/// A server config presenting `server` that checks clients with `verifier`
/// (e.g. a `WebPkiClientVerifier` built with CRLs).
pub fn server_config_with_verifier(
    server: &Issued,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Arc<ServerConfig> {
    server_config_inner(server, Some(verifier))
}

fn server_config_inner(
    server: &Issued,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Arc<ServerConfig> {
    let b = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match verifier {
        Some(v) => b.with_client_cert_verifier(v),
        None => b.with_no_client_auth(),
    };
    Arc::new(
        b.with_single_cert(load_certs(&server.cert), load_key(&server.key))
            .unwrap(),
    )
}

/// A test peer's client config trusting the CA in `ca`, presenting
/// `client` when given.
pub fn client_config(ca: &Path, client: Option<&Issued>) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_webpki_verifier(
            WebPkiServerVerifier::builder_with_provider(load_roots(ca), ring_provider())
                .build()
                .unwrap(),
        );
    Arc::new(match client {
        Some(c) => b
            .with_client_auth_cert(load_certs(&c.cert), load_key(&c.key))
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// TCP connect to `addr` and a TLS handshake as a client checking that the
/// server is `server_name` (a DNS name or an IP literal).
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    server_name: &str,
) -> io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg).connect(name, tcp).await
}

/// Connects as `cfg` and expects the server to refuse it: returns the
/// error the client saw. In TLS 1.3 a client finishes its handshake before
/// the server has judged its certificate, so a refusal can arrive as the
/// server's alert on the first read rather than from `tls_connect`.
/// Panics if the connection is still open after 5 s.
pub async fn tls_refused(addr: SocketAddr, cfg: Arc<ClientConfig>, server_name: &str) -> io::Error {
    let mut s = match tls_connect(addr, cfg, server_name).await {
        Err(e) => return e,
        Ok(s) => s,
    };
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
        Err(_) => panic!("{addr} accepted the TLS client (still open after 5 s)"),
        Ok(Err(e)) => e,
        Ok(Ok(0)) => io::Error::new(io::ErrorKind::UnexpectedEof, "closed without an alert"),
        Ok(Ok(_)) => panic!("{addr} accepted the TLS client and sent data"),
    }
}

impl TestConfig {
    /// `[listener.tls]` with `cert` as the server certificate and key, and
    /// `client-ca` when given.
    pub fn tls_server(self, cert: &Issued, client_ca: Option<&Path>) -> Self {
        let c = self
            .listener_tls(&format!("cert = \"{}\"", cert.cert.display()))
            .listener_tls(&format!("key = \"{}\"", cert.key.display()));
        match client_ca {
            Some(ca) => c.listener_tls(&format!("client-ca = \"{}\"", ca.display())),
            None => c,
        }
    }
}

/// Connects as `cfg` (the server must be `localhost`), writes `bytes` and
/// closes with close_notify.
pub async fn tls_send(addr: SocketAddr, cfg: Arc<ClientConfig>, bytes: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut s = tls_connect(addr, cfg, "localhost").await?;
    s.write_all(bytes).await?;
    s.shutdown().await
}
