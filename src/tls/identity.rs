//! What a certificate and a TLS connection say about the peer: the parsed
//! fields of a certificate ([`PeerCert`], via x509-parser: fingerprint,
//! subject, CNs, SANs, expiry) and what one connection negotiated
//! ([`TlsIdentity`]). Sessions build a `TlsIdentity` after the handshake;
//! the journal writer records it once per connection (a CONNECTION record,
//! [`crate::journal`]); `allow` rules match on a `PeerCert`.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::allow::Fingerprint;

/// A subjectAltName entry, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(std::net::IpAddr),
    Email(String),
    Uri(String),
}

impl fmt::Display for San {
    /// `dns:host`, `ip:1.2.3.4`, `email:a@b`, `uri:spiffe://..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(s) => write!(f, "dns:{s}"),
            San::Ip(a) => write!(f, "ip:{a}"),
            San::Email(s) => write!(f, "email:{s}"),
            San::Uri(s) => write!(f, "uri:{s}"),
        }
    }
}

/// The fields of one certificate that auditlb uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// SHA-256 of the DER.
    pub sha256: Fingerprint,
    /// The subject DN, RFC 4514 style (`CN=web-1, O=Example`).
    pub subject: String,
    /// The subject's CN attributes.
    pub common_names: Vec<String>,
    pub sans: Vec<San>,
    /// notBefore, Unix seconds.
    pub not_before: i64,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

impl PeerCert {
    /// Parses a DER certificate; the error says what is wrong with it.
    pub fn parse(der: &[u8]) -> Result<PeerCert, String> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let subject = cert.subject();
        let common_names = subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect();
        let mut sans = Vec::new();
        // A subjectAltName that does not parse is an error, not an absent
        // one: `dns:` rules fall back to the CN only when there is no SAN.
        let san = cert
            .subject_alternative_name()
            .map_err(|e| format!("subjectAltName does not parse: {e}"))?;
        if let Some(ext) = san {
            for n in &ext.value.general_names {
                match n {
                    GeneralName::DNSName(s) => sans.push(San::Dns((*s).to_owned())),
                    GeneralName::RFC822Name(s) => sans.push(San::Email((*s).to_owned())),
                    GeneralName::URI(s) => sans.push(San::Uri((*s).to_owned())),
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            sans.push(San::Ip(a.into()));
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            sans.push(San::Ip(a.into()));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(PeerCert {
            sha256: Fingerprint::of(der),
            subject: subject.to_string(),
            common_names,
            sans,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    pub fn dns_names(&self) -> impl Iterator<Item = &str> {
        self.sans.iter().filter_map(|s| match s {
            San::Dns(d) => Some(d.as_str()),
            _ => None,
        })
    }
}

/// What one TLS connection negotiated and who the peer proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsIdentity {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// IANA name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The server name the client asked for, if any.
    pub sni: Option<String>,
    /// The verified client certificate; `None` for an anonymous client.
    pub peer: Option<PeerCert>,
}

impl TlsIdentity {
    /// From a finished server-side handshake.
    pub fn of_server(conn: &rustls::ServerConnection) -> TlsIdentity {
        let version = conn
            .protocol_version()
            .map_or_else(|| "unknown".into(), version_name);
        let cipher = conn.negotiated_cipher_suite().map_or_else(
            || "unknown".into(),
            |c| c.suite().as_str().unwrap_or("unknown").to_owned(),
        );
        let peer = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|der| PeerCert::parse(der).ok());
        TlsIdentity {
            version,
            cipher,
            sni: conn.server_name().map(str::to_owned),
            peer,
        }
    }
}

/// `TLSv1.3` for rustls' `TLSv1_3`.
fn version_name(v: rustls::ProtocolVersion) -> String {
    match v {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".into(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".into(),
        other => format!("{other:?}"),
    }
}
