//! The TLS test helpers themselves: the TLS sink, the test PKI's
//! certificates, and that rustls/webpki really understand the expiry and
//! the CRLs the PKI writes, so TLS tests of auditlb can trust them.

mod common;

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::WebPkiClientVerifier;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;

/// `n` octet-counted frames `<tag>-<i>`.
fn frames(tag: &str, n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut wire = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..n {
        let body = format!("<13>1 - h app - - - {tag}-{i}");
        wire.extend_from_slice(format!("{} {body}", body.len()).as_bytes());
        bodies.push(body.into_bytes());
    }
    (wire, bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sink_reads_octet_frames_and_crashes_like_a_process() {
    let dir = scratch_dir("tls-sink");
    let pki = Pki::new(&dir, "sink");
    let server = pki.server("backend", &["localhost", "127.0.0.1"]);
    let mut sink = Sink::start_tls(SinkFraming::Octet, server_config(&server, None)).await;
    let client = client_config(&pki.ca(), None);

    // By DNS name, and by IP literal (an IP SAN).
    let mut a = tls_connect(sink.addr, client.clone(), "localhost")
        .await
        .unwrap();
    let (wire, want) = frames("a", 100);
    a.write_all(&wire).await.unwrap();
    a.flush().await.unwrap();
    wait_for(5.0, "100 frames over TLS", || sink.count() == 100).await;
    let mut b = tls_connect(sink.addr, client.clone(), "127.0.0.1")
        .await
        .unwrap();
    b.write_all(b"3 abc").await.unwrap();
    b.flush().await.unwrap();
    wait_for(5.0, "a frame on the second connection", || {
        sink.count() == 101
    })
    .await;
    let got = sink.take();
    assert_eq!(
        got[..100]
            .iter()
            .map(|(_, f)| f.clone())
            .collect::<Vec<_>>(),
        want
    );
    assert!(got[..100].iter().all(|(c, _)| *c == 1));
    assert_eq!(got[100], (2, b"abc".to_vec()));
    assert_eq!(*sink.garbage.lock().unwrap(), 0);
    assert!(sink.tls_errors.lock().unwrap().is_empty());

    // A name the certificate does not carry is refused by the client.
    assert!(tls_connect(sink.addr, client.clone(), "other.test")
        .await
        .is_err());

    // Kill: the socket goes without close_notify, so the client sees an
    // error (reset or unexpected EOF), never a clean TLS close.
    sink.kill();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), a.read(&mut buf))
        .await
        .expect("killed sink still open");
    assert!(r.is_err(), "a clean close after kill: {r:?}");
    assert!(tls_connect(sink.addr, client.clone(), "localhost")
        .await
        .is_err());

    // Restart: TLS again on the same address.
    sink.restart();
    let mut c = tls_connect(sink.addr, client, "localhost").await.unwrap();
    c.write_all(b"5 again").await.unwrap();
    c.flush().await.unwrap();
    wait_for(5.0, "a frame after restart", || sink.count() == 1).await;
    assert_eq!(sink.bodies(), vec![b"again".to_vec()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_required_and_verified() {
    let dir = scratch_dir("tls-mutual");
    let pki = Pki::new(&dir, "mutual");
    let server = pki.server("backend", &["localhost"]);
    let sink = Sink::start_tls(SinkFraming::Octet, server_config(&server, Some(&pki.ca()))).await;

    let alice = pki.client("alice", "alice", &["alice.test"]);
    let mut s = tls_connect(
        sink.addr,
        client_config(&pki.ca(), Some(&alice)),
        "localhost",
    )
    .await
    .unwrap();
    s.write_all(b"2 hi").await.unwrap();
    s.flush().await.unwrap();
    wait_for(5.0, "a frame from a client with a certificate", || {
        sink.count() == 1
    })
    .await;

    // No certificate.
    let e = tls_refused(sink.addr, client_config(&pki.ca(), None), "localhost").await;
    assert!(e.to_string().contains("CertificateRequired"), "{e}");
    // A self-signed one no CA vouches for.
    let mallory = self_signed(&dir, "mallory", "mallory");
    let e = tls_refused(
        sink.addr,
        client_config(&pki.ca(), Some(&mallory)),
        "localhost",
    )
    .await;
    assert!(e.to_string().contains("alert"), "{e}");
    // One from another test CA.
    let other = Pki::new(&dir, "other").client("eve", "eve", &[]);
    tls_refused(
        sink.addr,
        client_config(&pki.ca(), Some(&other)),
        "localhost",
    )
    .await;

    wait_for(5.0, "three refusals recorded", || {
        sink.tls_errors.lock().unwrap().len() == 3
    })
    .await;
    let errors = sink.tls_errors.lock().unwrap().clone();
    let with = |what: &str| errors.iter().filter(|e| e.contains(what)).count();
    assert_eq!(with("no certificates"), 1, "{errors:?}");
    assert_eq!(with("UnknownIssuer"), 2, "{errors:?}");
    assert_eq!(sink.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_client_certificates_refused() {
    let dir = scratch_dir("tls-revoked");
    let pki = Pki::new(&dir, "crl");
    let server = pki.server("backend", &["localhost"]);
    let good = pki.client("good", "good", &[]);
    let revoked = pki.client("revoked", "revoked", &[]);
    let expired = pki.expired_client("expired", "expired");
    assert_eq!(
        [good.serial, revoked.serial, expired.serial],
        [3, 4, 5],
        "serials count up from the CA's 1 (the server's is 2)"
    );
    let crl_path = pki.crl("revoked", &[&revoked]);
    assert!(std::fs::read_to_string(&crl_path)
        .unwrap()
        .starts_with("-----BEGIN X509 CRL-----"));

    let crl = CertificateRevocationListDer::from_pem_file(&crl_path).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        load_roots(&pki.ca()),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .with_crls([crl])
    // The CRL's next update must be in the future too.
    .enforce_revocation_expiration()
    .build()
    .unwrap();
    let sink = Sink::start_tls(
        SinkFraming::Octet,
        server_config_with_verifier(&server, verifier),
    )
    .await;

    // The CRL is authoritative for this CA and leaves others alone: an
    // unrevoked certificate passes (no UnknownRevocationStatus).
    let mut s = tls_connect(
        sink.addr,
        client_config(&pki.ca(), Some(&good)),
        "localhost",
    )
    .await
    .unwrap();
    s.write_all(b"4 good").await.unwrap();
    s.flush().await.unwrap();
    wait_for(5.0, "a frame from the unrevoked client", || {
        sink.count() == 1
    })
    .await;

    let e = tls_refused(
        sink.addr,
        client_config(&pki.ca(), Some(&revoked)),
        "localhost",
    )
    .await;
    assert!(e.to_string().contains("CertificateRevoked"), "{e}");
    let e = tls_refused(
        sink.addr,
        client_config(&pki.ca(), Some(&expired)),
        "localhost",
    )
    .await;
    assert!(e.to_string().contains("CertificateExpired"), "{e}");

    wait_for(5.0, "two refusals recorded", || {
        sink.tls_errors.lock().unwrap().len() == 2
    })
    .await;
    let errors = sink.tls_errors.lock().unwrap().clone();
    assert!(errors.iter().any(|e| e.contains("Revoked")), "{errors:?}");
    assert!(errors.iter().any(|e| e.contains("expired")), "{errors:?}");
    eprintln!("refusals as the sink saw them: {errors:?}");
    assert_eq!(sink.bodies(), vec![b"good".to_vec()]);
}

#[test]
fn fingerprint_is_sha256_of_der_upper_hex_colons() {
    let dir = scratch_dir("tls-fingerprint");
    let pki = Pki::new(&dir, "fp");
    let c = pki.client("c", "c", &[]);
    let want: Vec<String> = Sha256::digest(&c.der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(c.fingerprint, format!("sha256:{}", want.join(":")));
    assert_eq!(c.fingerprint.len(), "sha256:".len() + 32 * 3 - 1);
    assert!(!c.fingerprint[7..].chars().any(|ch| ch.is_ascii_lowercase()));
    // `der` is the certificate in the PEM file.
    assert_eq!(load_certs(&c.cert)[0].as_ref(), &c.der[..]);
    // A server certificate's names: DNS and IP SANs, CN the first name.
    let s = pki.server("s", &["backend.test", "127.0.0.1", "::1"]);
    let (_, x) = x509_parser::parse_x509_certificate(&s.der).unwrap();
    assert_eq!(
        x.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "backend.test"
    );
    let san = x.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        format!("{:?}", san.general_names),
        "[DNSName(\"backend.test\"), IPAddress([127, 0, 0, 1]), \
         IPAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])]"
    );
}
