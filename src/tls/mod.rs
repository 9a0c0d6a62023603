//! TLS (RFC 5425) for listeners and towards backends, on rustls with the
//! `ring` crypto provider. This module owns the TLS material: it reads the
//! PEM files a config names ([`load`]) into rustls server and client
//! configs, once at start, for `auditlb check`, and again on every reload
//! (a bad file refuses the whole reload). Sessions run the handshake
//! ([`crate::session`]) and classify a refusal ([`Refusal`]); upstreams and
//! health checks connect with a pool's [`PoolTls`].
//!
//! - `allow.rs`: fingerprints, pins and name patterns (pure);
//! - `identity.rs`: certificate fields and what a connection negotiated;
//! - `verify.rs`: the client and backend certificate verifiers.

pub mod allow;
pub mod identity;
pub mod verify;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore, ServerConfig};

use crate::config::{ClientAuth, Config, ListenerTlsConfig, PoolTlsConfig, TlsVersion};
pub use allow::{Allow, Fingerprint};
pub use identity::{PeerCert, San, TlsIdentity};
use verify::{BackendVerifier, ClientVerifier};

/// The one crypto provider: ring (see README, "TLS").
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A file of TLS material as loaded, for the CONFIG record, logs and the
/// expiry metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// `cert`, `client-ca`, `crl`, `ca`.
    pub role: &'static str,
    pub path: PathBuf,
    /// SHA-256 of the certificate (of the CRL, for `crl`).
    pub sha256: Fingerprint,
    /// Subject DN (issuer, for `crl`).
    pub subject: String,
    /// notAfter of a certificate, Unix seconds; `None` for a CRL.
    pub not_after: Option<i64>,
}

/// A TLS listener's material.
#[derive(Debug)]
pub struct ListenerTls {
    pub server: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    /// Handshakes in progress (`max-handshakes` permits).
    pub handshakes: Arc<tokio::sync::Semaphore>,
    /// The client certificate checks, kept to re-check open connections
    /// when a reload brings new CAs, CRLs or `allow` rules.
    verifier: Arc<ClientVerifier>,
    pub loaded: Vec<Loaded>,
}

/// Who the peer of an open TLS connection proved to be, as needed to
/// check it again.
#[derive(Debug, Clone)]
pub struct PeerChain(pub Vec<CertificateDer<'static>>);

impl ListenerTls {
    /// Would a connection with this client chain (empty: anonymous) be let
    /// in under this material now? `Err` says why not.
    pub fn admits(&self, chain: &PeerChain) -> Result<(), Refusal> {
        use rustls::server::danger::ClientCertVerifier;
        match chain.0.split_first() {
            None if self.verifier.client_auth_mandatory() => Err(Refusal::NoCertificate),
            None => Ok(()),
            Some((ee, rest)) => self
                .verifier
                .verify_client_cert(ee, rest, rustls::pki_types::UnixTime::now())
                .map(|_| ())
                .map_err(|e| Refusal::of_rustls(&e)),
        }
    }
}

/// A pool's TLS material.
#[derive(Debug)]
pub struct PoolTls {
    pub client: Arc<ClientConfig>,
    /// `server-name`, or `None`: each backend's IP.
    pub server_name: Option<ServerName<'static>>,
    pub loaded: Vec<Loaded>,
}

impl PoolTls {
    /// The name sent as SNI and checked for backend `addr`.
    pub fn server_name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        self.server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
    }

    /// Connects TLS over an open TCP stream to backend `addr`.
    pub async fn connect<S>(
        &self,
        addr: SocketAddr,
        stream: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tokio_rustls::TlsConnector::from(self.client.clone())
            .connect(self.server_name_for(addr), stream)
            .await
    }
}

/// A pool's current TLS material, swapped by a reload; upstreams and the
/// health checker read it at each connect. `None` inside: plain TCP.
pub type PoolTlsSlot = Arc<RwLock<Option<Arc<PoolTls>>>>;

/// Reads the current material of a slot.
pub fn current(slot: &PoolTlsSlot) -> Option<Arc<PoolTls>> {
    slot.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// All TLS material of a config, by listener and pool index.
#[derive(Debug, Default)]
pub struct Material {
    pub listeners: Vec<Option<Arc<ListenerTls>>>,
    pub pools: Vec<Option<Arc<PoolTls>>>,
    /// `[admin.tls]` (fixed for a run: the admin endpoint changes only at
    /// a restart).
    pub admin: Option<Arc<ListenerTls>>,
}

impl Material {
    /// One line per loaded file, for the journal's CONFIG record:
    /// `listener NAME cert sha256:.. subject`.
    pub fn summary(&self, cfg: &Config) -> Vec<String> {
        let mut out = Vec::new();
        for (l, t) in cfg.listeners.iter().zip(&self.listeners) {
            for x in t.iter().flat_map(|t| &t.loaded) {
                out.push(format!(
                    "listener {} {} {} {}",
                    l.name, x.role, x.sha256, x.subject
                ));
            }
        }
        for (p, t) in cfg.pools.iter().zip(&self.pools) {
            for x in t.iter().flat_map(|t| &t.loaded) {
                out.push(format!(
                    "pool {} {} {} {}",
                    p.name, x.role, x.sha256, x.subject
                ));
            }
        }
        out
    }
}

/// Loads every listener's and pool's TLS files. Each problem starts with
/// its key path and names the file.
pub fn load(cfg: &Config) -> Result<Material, Vec<String>> {
    let mut errs = Vec::new();
    let listeners = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| {
            collect(
                &mut errs,
                l.tls
                    .as_ref()
                    .map(|t| load_listener(&format!("listener[{i}].tls"), t)),
            )
        })
        .collect();
    let pools = cfg
        .pools
        .iter()
        .enumerate()
        .map(|(i, p)| {
            collect(
                &mut errs,
                p.tls
                    .as_ref()
                    .map(|t| load_pool(&format!("pool[{i}].tls"), t)),
            )
        })
        .collect();
    let admin = collect(
        &mut errs,
        cfg.admin
            .as_ref()
            .and_then(|a| a.tls.as_ref())
            .map(|t| load_listener("admin.tls", t)),
    );
    if errs.is_empty() {
        Ok(Material {
            listeners,
            pools,
            admin,
        })
    } else {
        Err(errs)
    }
}

/// One table's material, its problems added to `errs`.
fn collect<T>(errs: &mut Vec<String>, r: Option<Result<T, Vec<String>>>) -> Option<Arc<T>> {
    match r? {
        Ok(x) => Some(Arc::new(x)),
        Err(e) => {
            errs.extend(e);
            None
        }
    }
}

fn versions(v: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static BOTH: [&rustls::SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static V13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match v {
        TlsVersion::V12 => &BOTH,
        TlsVersion::V13 => &V13,
    }
}

/// Certificates of a PEM file: at least one, each parseable.
fn read_certs(
    at: &str,
    path: &Path,
    role: &'static str,
) -> Result<(Vec<CertificateDer<'static>>, Vec<Loaded>), String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{at}: {shown}: {}", pem_error(e)))?;
    if certs.is_empty() {
        return Err(format!("{at}: {shown}: no CERTIFICATE in the file"));
    }
    let mut loaded = Vec::new();
    for (k, c) in certs.iter().enumerate() {
        let p =
            PeerCert::parse(c).map_err(|e| format!("{at}: {shown}: certificate {}: {e}", k + 1))?;
        loaded.push(Loaded {
            role,
            path: path.to_owned(),
            sha256: p.sha256,
            subject: p.subject,
            not_after: Some(p.not_after),
        });
    }
    Ok((certs, loaded))
}

fn read_key(at: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{at}: {}: {}", path.display(), pem_error(e)))
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(e) => format!("cannot read: {e}"),
        E::NoItemsFound => {
            "no PEM item of the expected kind (CERTIFICATE, PRIVATE KEY, X509 CRL)".into()
        }
        e => format!("not valid PEM: {e:?}"),
    }
}

fn roots(at: &str, certs: Vec<CertificateDer<'static>>) -> Result<Arc<RootCertStore>, String> {
    let mut store = RootCertStore::empty();
    for (k, c) in certs.into_iter().enumerate() {
        store.add(c).map_err(|e| {
            format!(
                "{at}: certificate {} is not usable as a trust anchor: {e}",
                k + 1
            )
        })?;
    }
    Ok(Arc::new(store))
}

fn load_listener(at: &str, t: &ListenerTlsConfig) -> Result<ListenerTls, Vec<String>> {
    let mut errs = Vec::new();
    let mut loaded = Vec::new();
    let allow = Allow::parse(&format!("{at}.allow"), &t.allow).unwrap_or_else(|e| {
        errs.extend(e);
        Allow::default()
    });
    let chain = read_certs(&format!("{at}.cert"), &t.cert, "cert")
        .map_err(|e| errs.push(e))
        .ok();
    let key = read_key(&format!("{at}.key"), &t.key)
        .map_err(|e| errs.push(e))
        .ok();
    let provider = provider();
    let mut webpki = None;
    let mut hints = Vec::new();
    if let Some(ca) = &t.client_ca {
        let at_ca = format!("{at}.client-ca");
        match read_certs(&at_ca, ca, "client-ca").and_then(|(c, l)| Ok((roots(&at_ca, c)?, l))) {
            Ok((store, l)) => {
                loaded.extend(l);
                hints = store.subjects();
                let mut crls = Vec::new();
                for (k, path) in t.crl.iter().enumerate() {
                    let at_crl = format!("{at}.crl[{k}]");
                    match CertificateRevocationListDer::pem_file_iter(path)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    {
                        Ok(v) if v.is_empty() => errs.push(format!(
                            "{at_crl}: {}: no X509 CRL in the file",
                            path.display()
                        )),
                        Ok(v) => {
                            for c in &v {
                                loaded.push(Loaded {
                                    role: "crl",
                                    path: path.clone(),
                                    sha256: Fingerprint::of(c),
                                    subject: String::new(),
                                    not_after: None,
                                });
                            }
                            crls.extend(v);
                        }
                        Err(e) => {
                            errs.push(format!("{at_crl}: {}: {}", path.display(), pem_error(e)))
                        }
                    }
                }
                let mut b = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    store,
                    provider.clone(),
                )
                .with_crls(crls)
                // Every certificate of the chain is checked against the
                // CRLs of its issuer (a revoked intermediate revokes what
                // it issued); a CA without a CRL configured is not a
                // refusal.
                .allow_unknown_revocation_status();
                if t.client_auth() == ClientAuth::Optional {
                    b = b.allow_unauthenticated();
                }
                match b.build() {
                    Ok(v) => webpki = Some(v),
                    Err(e) => errs.push(format!("{at}.crl: {e}")),
                }
            }
            Err(e) => errs.push(e),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let (certs, cert_loaded) = chain.expect("no errors: the chain was read");
    let key = key.expect("no errors: the key was read");
    let mut all = cert_loaded;
    all.extend(loaded);
    let verifier = Arc::new(ClientVerifier {
        webpki,
        allow,
        mode: t.client_auth(),
        provider: provider.clone(),
        hints,
    });
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(t.min_version))
        .map_err(|e| vec![format!("{at}.min-version: {e}")])?
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(certs, key)
        .map_err(|e| {
            vec![format!(
                "{at}.key: {}: does not fit {}: {e}",
                t.key.display(),
                t.cert.display()
            )]
        })?;
    // No session resumption: a resumed session skips every certificate
    // check (an expired, revoked or no longer allowed client would stay in
    // on its ticket). Syslog connections are long-lived, so each pays one
    // full handshake.
    let mut server = server;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    Ok(ListenerTls {
        server: Arc::new(server),
        handshake_timeout: t.handshake_timeout.0,
        handshakes: Arc::new(tokio::sync::Semaphore::new(t.max_handshakes)),
        verifier,
        loaded: all,
    })
}

fn load_pool(at: &str, t: &PoolTlsConfig) -> Result<PoolTls, Vec<String>> {
    let mut errs = Vec::new();
    let mut loaded = Vec::new();
    let provider = provider();
    let mut pins = Vec::new();
    for (k, p) in t.pin.iter().enumerate() {
        match Fingerprint::parse(p) {
            Ok(f) => pins.push(f),
            Err(e) => errs.push(format!("{at}.pin[{k}]: {e}")),
        }
    }
    let mut webpki = None;
    if let Some(ca) = &t.ca {
        let at_ca = format!("{at}.ca");
        match read_certs(&at_ca, ca, "ca").and_then(|(c, l)| Ok((roots(&at_ca, c)?, l))) {
            Ok((store, l)) => {
                loaded.extend(l);
                match rustls::client::WebPkiServerVerifier::builder_with_provider(
                    store,
                    provider.clone(),
                )
                .build()
                {
                    Ok(v) => {
                        webpki = Some(v as Arc<dyn rustls::client::danger::ServerCertVerifier>)
                    }
                    Err(e) => errs.push(format!("{at_ca}: {e}")),
                }
            }
            Err(e) => errs.push(e),
        }
    }
    let client_cert = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => {
            let chain = read_certs(&format!("{at}.cert"), c, "cert")
                .map_err(|e| errs.push(e))
                .ok();
            let key = read_key(&format!("{at}.key"), k)
                .map_err(|e| errs.push(e))
                .ok();
            chain.zip(key)
        }
        _ => None,
    };
    let server_name = match &t.server_name {
        Some(n) => match ServerName::try_from(n.clone()) {
            Ok(n) => Some(n),
            Err(e) => {
                errs.push(format!("{at}.server-name: {n:?}: {e}"));
                None
            }
        },
        None => None,
    };
    if !errs.is_empty() {
        return Err(errs);
    }
    let verifier = Arc::new(BackendVerifier {
        webpki,
        pins,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(t.min_version))
        .map_err(|e| vec![format!("{at}.min-version: {e}")])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let client = match client_cert {
        Some(((certs, l), key)) => {
            loaded.extend(l);
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                vec![format!(
                    "{at}.key: {}: does not fit {}: {e}",
                    t.key.as_deref().unwrap_or(Path::new("")).display(),
                    t.cert.as_deref().unwrap_or(Path::new("")).display()
                )]
            })?
        }
        None => builder.with_no_client_auth(),
    };
    // Every connection to a backend verifies its certificate in full.
    let mut client = client;
    client.resumption = rustls::client::Resumption::disabled();
    Ok(PoolTls {
        client: Arc::new(client),
        server_name,
        loaded,
    })
}

/// Why a TLS handshake failed, as the metric label and log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Client authentication is required and none was sent.
    NoCertificate,
    /// The certificate does not chain to a trusted CA (or is not pinned).
    UnknownIssuer,
    /// Outside its validity period.
    Expired,
    /// Listed in a CRL.
    Revoked,
    /// Valid, but no `allow` entry admits it.
    NotAllowed,
    /// Any other certificate problem (bad encoding, wrong purpose, wrong
    /// name).
    BadCertificate,
    /// The peer refused us (it sent an alert).
    PeerAlert,
    /// Not TLS, a version or cipher we do not accept, a broken message.
    Protocol,
    /// Not finished within `handshake-timeout`.
    Timeout,
    /// The connection failed underneath (reset, EOF).
    Io,
}

impl Refusal {
    pub const ALL: [Refusal; 10] = [
        Refusal::NoCertificate,
        Refusal::UnknownIssuer,
        Refusal::Expired,
        Refusal::Revoked,
        Refusal::NotAllowed,
        Refusal::BadCertificate,
        Refusal::PeerAlert,
        Refusal::Protocol,
        Refusal::Timeout,
        Refusal::Io,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::NoCertificate => "no-certificate",
            Refusal::UnknownIssuer => "unknown-issuer",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::NotAllowed => "not-allowed",
            Refusal::BadCertificate => "bad-certificate",
            Refusal::PeerAlert => "peer-alert",
            Refusal::Protocol => "protocol",
            Refusal::Timeout => "timeout",
            Refusal::Io => "io",
        }
    }

    /// Classifies a rustls error.
    pub fn of_rustls(e: &rustls::Error) -> Refusal {
        use rustls::Error as E;
        match e {
            E::NoCertificatesPresented => Refusal::NoCertificate,
            E::InvalidCertificate(c) => match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    Refusal::UnknownIssuer
                }
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => Refusal::Expired,
                CertificateError::Revoked => Refusal::Revoked,
                CertificateError::ApplicationVerificationFailure => Refusal::NotAllowed,
                _ => Refusal::BadCertificate,
            },
            E::AlertReceived(_) => Refusal::PeerAlert,
            _ => Refusal::Protocol,
        }
    }

    /// Classifies the error of a tokio-rustls handshake (a rustls error
    /// inside an `io::Error`, or a plain I/O failure).
    pub fn of_io(e: &io::Error) -> Refusal {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(r) => Refusal::of_rustls(r),
            None if e.kind() == io::ErrorKind::InvalidData => Refusal::Protocol,
            None => Refusal::Io,
        }
    }
}

/// `auditlb fingerprint FILE`: each certificate of a PEM (or DER) file,
/// as `sha256:.. subject`.
pub fn fingerprint_file(path: &Path) -> Result<Vec<(Fingerprint, String)>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let ders: Vec<Vec<u8>> =
        if bytes.starts_with(b"-----") || bytes.iter().take(64).all(|b| b.is_ascii()) {
            CertificateDer::pem_slice_iter(&bytes)
                .map(|r| r.map(|c| c.as_ref().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {}", path.display(), pem_error(e)))?
        } else {
            vec![bytes]
        };
    if ders.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    ders.iter()
        .map(|d| {
            let p = PeerCert::parse(d).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((p.sha256, p.subject))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classified_by_kind() {
        use rustls::Error as E;
        let cases = [
            (E::NoCertificatesPresented, Refusal::NoCertificate),
            (
                E::InvalidCertificate(CertificateError::UnknownIssuer),
                Refusal::UnknownIssuer,
            ),
            (
                E::InvalidCertificate(CertificateError::Expired),
                Refusal::Expired,
            ),
            (
                E::InvalidCertificate(CertificateError::Revoked),
                Refusal::Revoked,
            ),
            (
                E::InvalidCertificate(CertificateError::ApplicationVerificationFailure),
                Refusal::NotAllowed,
            ),
            (
                E::InvalidCertificate(CertificateError::InvalidPurpose),
                Refusal::BadCertificate,
            ),
            (
                E::AlertReceived(rustls::AlertDescription::UnknownCA),
                Refusal::PeerAlert,
            ),
            (E::General("x".into()), Refusal::Protocol),
        ];
        for (e, want) in cases {
            assert_eq!(Refusal::of_rustls(&e), want, "{e:?}");
            let io = io::Error::new(io::ErrorKind::InvalidData, e);
            assert_eq!(Refusal::of_io(&io), want);
        }
        assert_eq!(
            Refusal::of_io(&io::ErrorKind::UnexpectedEof.into()),
            Refusal::Io
        );
        let labels: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
