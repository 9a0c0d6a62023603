//! The certificate checks rustls runs during a handshake, beyond its
//! built-in WebPKI ones. [`ClientVerifier`] (listeners): a pinned
//! certificate is trusted as it is (self-signed included, still within its
//! validity dates); anything else must chain to `client-ca` and pass the
//! CRLs, then match `allow`. [`BackendVerifier`] (pools): a pinned
//! backend certificate is trusted as it is; anything else must chain to
//! `ca` and carry the server name. Built by [`super::load`].

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};

use super::allow::{Allow, Fingerprint};
use super::identity::PeerCert;
use crate::config::ClientAuth;

/// The error for a certificate that chains but that `allow` does not
/// admit: rustls sends the client an `access_denied` alert for it, and
/// [`super::Refusal`] reads it as `not-allowed`. Nothing else in the
/// handshake produces it.
fn not_allowed() -> Error {
    Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
}

/// A pinned certificate is trusted without a CA, but not outside its
/// validity period.
fn check_dates(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), Error> {
    let cert = PeerCert::parse(der)
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    if now > cert.not_after {
        return Err(Error::InvalidCertificate(CertificateError::Expired));
    }
    if now < cert.not_before {
        return Err(Error::InvalidCertificate(CertificateError::NotValidYet));
    }
    Ok(())
}

/// The handshake signature checks both verifiers share: the provider's
/// algorithms, as rustls' own verifiers do.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algs = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            let algs = &self.provider.signature_verification_algorithms;
            rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Client certificates of one TLS listener.
#[derive(Debug)]
pub struct ClientVerifier {
    /// Chain, dates and CRLs against `client-ca`; `None` when there is no
    /// `client-ca` (then only pinned certificates get in).
    pub(super) webpki: Option<Arc<dyn ClientCertVerifier>>,
    pub(super) allow: Allow,
    pub(super) mode: ClientAuth,
    pub(super) provider: Arc<CryptoProvider>,
    /// The client CA subjects, sent so clients pick the right certificate.
    pub(super) hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.mode != ClientAuth::None
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mode == ClientAuth::Required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        if self.allow.pins(&Fingerprint::of(end_entity)) {
            // A pin trusts the certificate without a CA, but a CA that
            // issued it and revoked it still has the last word.
            if let Some(v) = &self.webpki {
                if let Err(e @ Error::InvalidCertificate(CertificateError::Revoked)) =
                    v.verify_client_cert(end_entity, intermediates, now)
                {
                    return Err(e);
                }
            }
            check_dates(end_entity, now)?;
            return Ok(ClientCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_client_cert(end_entity, intermediates, now)?;
            }
            None => return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
        let peer = PeerCert::parse(end_entity)
            .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if !self.allow.admits(&peer) {
            return Err(not_allowed());
        }
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

/// Backend certificates of one pool.
#[derive(Debug)]
pub struct BackendVerifier {
    /// Chain, dates and name against `ca`; `None` without `ca` (then only
    /// pinned certificates are trusted).
    pub(super) webpki: Option<Arc<dyn ServerCertVerifier>>,
    pub(super) pins: Vec<Fingerprint>,
    pub(super) provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for BackendVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if self.pins.contains(&Fingerprint::of(end_entity)) {
            check_dates(end_entity, now)?;
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
            None => Err(Error::InvalidCertificate(CertificateError::UnknownIssuer)),
        }
    }

    signature_checks!();
}
