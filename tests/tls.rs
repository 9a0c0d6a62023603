//! Syslog over TLS (RFC 5425), in and out, with a PKI made in the test:
//! who gets in and why the others are refused (each reason counted), the
//! client identity in the journal, certificates rotated by a reload under
//! traffic, and backends over TLS failing mid-stream without loss.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use auditlb::journal::cat::{cat, Format};
use auditlb::server::Server;
use common::*;

/// A listener-side PKI: the server's certificate from `ca`, clients from it.
struct Setup {
    dir: std::path::PathBuf,
    ca: Pki,
    server: Issued,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir = scratch_dir(name);
        let ca = Pki::new(&dir, "clients");
        let server = ca.server("server", &["localhost", "127.0.0.1"]);
        Setup { dir, ca, server }
    }

    /// `[listener.tls]` lines with this setup's certificate and CA.
    fn listener_tls(&self, cfg: TestConfig, extra: &[&str]) -> TestConfig {
        let mut cfg = cfg
            .listener_tls(&format!("cert = \"{}\"", self.server.cert.display()))
            .listener_tls(&format!("key = \"{}\"", self.server.key.display()))
            .listener_tls(&format!("client-ca = \"{}\"", self.ca.ca().display()));
        for kv in extra {
            cfg = cfg.listener_tls(kv);
        }
        cfg
    }
}

async fn send_tls(addr: SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>, frames: &[String]) {
    let mut s = tls_connect(addr, cfg, "localhost").await.unwrap();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
    s.write_all(&octet(&refs)).await.unwrap();
    s.shutdown().await.unwrap();
}

fn jsonl(journal: &Path) -> Vec<String> {
    let mut out = Vec::new();
    cat(journal, None, None, Format::Jsonl, &mut out).unwrap();
    String::from_utf8(out).unwrap().lines().map(str::to_owned).collect()
}

fn refused(server: &Server, reason: &str) -> f64 {
    metric(
        server,
        "auditlb_tls_handshake_failures_total",
        &[("listener", "in"), ("reason", reason)],
    )
}

#[tokio::test]
async fn who_gets_in_and_why_the_others_are_refused() {
    let s = Setup::new("tls-refusals");
    let pinned = self_signed(&s.dir, "pinned", "pinned-client");
    let good = s.ca.client("good", "web-1", &["web-1.prod.example.com"]);
    let by_cn = s.ca.client("by-cn", "web-2", &["web-2.dev.example.com"]);
    let outsider = s.ca.client("outsider", "db-1", &["db-1.dev.example.com"]);
    let expired = s.ca.expired_client("expired", "web-3");
    let revoked = s.ca.client("revoked", "web-4", &["web-4.prod.example.com"]);
    let crl = s.ca.crl("clients", &[&revoked]);
    let stranger_ca = Pki::new(&s.dir, "stranger");
    let stranger = stranger_ca.client("stranger", "web-5", &["web-5.prod.example.com"]);

    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = s.listener_tls(
        TestConfig::at(&s.dir).backend_addrs(&[sink.addr]),
        &[
            &format!("crl = [\"{}\"]", crl.display()),
            &format!(
                "allow = [\"dns:*.prod.example.com\", \"cn:web-2\", \"{}\"]",
                pinned.fingerprint
            ),
        ],
    );
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let ca = s.ca.ca();

    // Admitted: by DNS SAN pattern, by CN, and a pinned self-signed one.
    for (who, c) in [("good", &good), ("by-cn", &by_cn), ("pinned", &pinned)] {
        send_tls(addr, client_config(&ca, Some(c)), &lines(who, 0..10)).await;
    }
    wait_for(10.0, "30 frames at the backend", || sink.count() == 30).await;

    // Refused, each with its reason.
    let cases: [(&str, Option<&Issued>); 5] = [
        ("no-certificate", None),
        ("unknown-issuer", Some(&stranger)),
        ("expired", Some(&expired)),
        ("revoked", Some(&revoked)),
        ("not-allowed", Some(&outsider)),
    ];
    for (reason, c) in cases {
        let e = tls_refused(addr, client_config(&ca, c), "localhost").await;
        wait_for(5.0, reason, || refused(&server, reason) == 1.0).await;
        eprintln!("{reason}: the client saw {e}");
    }
    // Plain syslog sent to the TLS port is a protocol failure, not frames.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain.write_all(b"<13>1 - host app - - - plain text\n").await.unwrap();
    wait_for(5.0, "protocol", || refused(&server, "protocol") == 1.0).await;
    assert_eq!(metric(&server, "auditlb_tls_handshake_failures_total", &[("listener", "in")]), 6.0);
    assert_eq!(
        metric(&server, "auditlb_tls_handshakes_total", &[("listener", "in")]),
        3.0
    );
    // The certificate expiry of what the listener loaded is published.
    let expiry = metric(
        &server,
        "auditlb_tls_cert_expiry_seconds",
        &[("listener", "in"), ("role", "cert")],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86400.0, "{expiry}");
    assert_eq!(sink.count(), 30, "nothing of the refused clients was routed");
    server.shutdown().await;
}

#[tokio::test]
async fn the_client_identity_is_in_the_journal_with_every_frame() {
    let s = Setup::new("tls-identity");
    let client = s.ca.client("client", "web-1", &["web-1.prod.example.com"]);
    let sink = Sink::start(SinkFraming::Octet).await;
    // Small segments: the identity must follow the connection across rolls.
    let cfg = s
        .listener_tls(TestConfig::at(&s.dir).backend_addrs(&[sink.addr]), &[])
        .journal("segment-size = \"64KiB\"")
        .anchors();
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    // One connection, held open across several segment rolls; a plain
    // client beside it.
    let mut conn = tls_connect(addr, client_config(&s.ca.ca(), Some(&client)), "localhost")
        .await
        .unwrap();
    for chunk in 0..20 {
        let frames = lines("tls", chunk * 100..(chunk + 1) * 100);
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
        conn.write_all(&octet(&refs)).await.unwrap();
        conn.flush().await.unwrap();
        wait_for(10.0, "frames at the backend", || sink.count() == (chunk + 1) * 100).await;
    }
    conn.shutdown().await.unwrap();
    server.shutdown().await;
    let segments = std::fs::read_dir(cfg.journal_dir()).unwrap().count();
    assert!(segments >= 4, "only {segments} segments: the test needs rolls");

    let lines = jsonl(&cfg.journal_dir());
    let frames: Vec<&String> = lines.iter().filter(|l| l.contains("\"type\":\"FRAME\"")).collect();
    assert_eq!(frames.len(), 2000);
    for f in &frames {
        assert!(f.contains(&format!("\"peer_sha256\":\"{}\"", client.fingerprint)), "{f}");
        assert!(f.contains("\"peer_san\":[\"dns:web-1.prod.example.com\"]"), "{f}");
        assert!(f.contains("CN=web-1"), "{f}");
        assert!(f.contains("\"version\":\"TLSv1.3\""), "{f}");
        assert!(f.contains("\"sni\":\"localhost\""), "{f}");
        assert!(f.contains("\"protocol\":\"syslog+tls\""), "{f}");
    }
    // One CONNECTION record per segment the connection sent frames in,
    // not one per frame.
    let announced = lines.iter().filter(|l| l.contains("\"type\":\"CONNECTION\"")).count();
    assert!(announced >= 4 && announced <= segments + 1, "{announced} CONNECTION records");
    // A CONFIG record names the certificate loaded.
    assert!(
        lines.iter().any(|l| l.contains("\"type\":\"CONFIG\"") && l.contains(&s.server.fingerprint)),
        "no CONFIG record lists {}",
        s.server.fingerprint
    );
    let (code, report) = verify_cli(&cfg.journal_dir(), &cfg.anchors_path());
    assert_eq!(code, 0, "{report}");
}

#[tokio::test]
async fn a_slow_handshake_is_cut_at_the_timeout_without_holding_the_accept_loop() {
    let s = Setup::new("tls-timeout");
    let client = s.ca.client("client", "web-1", &[]);
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = s.listener_tls(
        TestConfig::at(&s.dir).backend_addrs(&[sink.addr]),
        &["handshake-timeout = \"300ms\""],
    );
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    // 50 clients that connect and say nothing.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A real client gets through meanwhile.
    send_tls(addr, client_config(&s.ca.ca(), Some(&client)), &lines("x", 0..5)).await;
    wait_for(5.0, "5 frames", || sink.count() == 5).await;
    wait_for(5.0, "50 timeouts", || refused(&server, "timeout") == 50.0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn backends_over_tls_fail_mid_stream_and_nothing_is_lost() {
    let dir = scratch_dir("tls-backends");
    let siem = Pki::new(&dir, "siem");
    let b1 = siem.server("b1", &["siem.example.com"]);
    let b2 = siem.server("b2", &["siem.example.com"]);
    let me = siem.client("auditlb", "auditlb", &[]);
    // The backends want auditlb's client certificate.
    let mut s1 = Sink::start_tls(SinkFraming::Octet, server_config(&b1, Some(&siem.ca()))).await;
    let s2 = Sink::start_tls(SinkFraming::Octet, server_config(&b2, Some(&siem.ca()))).await;
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[s1.addr, s2.addr])
        .pool("replay-window = \"1MiB\"")
        .pool_tls(&format!("ca = \"{}\"", siem.ca().display()))
        .pool_tls("server-name = \"siem.example.com\"")
        .pool_tls(&format!("cert = \"{}\"", me.cert.display()))
        .pool_tls(&format!("key = \"{}\"", me.key.display()));
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 2).await;
    let addr = server.listener_addr("in").unwrap();

    let n = 20_000usize;
    let sender = tokio::spawn(async move {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        for chunk in 0..(n / 500) {
            let frames = lines("id", chunk * 500..(chunk + 1) * 500);
            let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
            c.write_all(&octet(&refs)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.shutdown().await.unwrap();
    });
    // Kill backend 1 (no close_notify, a reset) while frames flow.
    wait_for(10.0, "traffic on backend 1", || s1.count() > 2000).await;
    s1.kill();
    sender.await.unwrap();
    let want: std::collections::HashSet<String> = lines("id", 0..n).into_iter().collect();
    wait_for(20.0, "every frame at a backend", || {
        let mut got: std::collections::HashSet<String> = std::collections::HashSet::new();
        for b in s1.bodies().into_iter().chain(s2.bodies()) {
            got.insert(String::from_utf8(b).unwrap());
        }
        want.iter().all(|w| got.contains(w))
    })
    .await;
    let settled = metric(&server, "auditlb_frames_settled_total", &[]);
    assert!(settled >= n as f64 - 1.0, "settled {settled}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_backend_whose_certificate_fails_is_marked_down_by_the_tls_health_check() {
    let dir = scratch_dir("tls-health");
    let siem = Pki::new(&dir, "siem");
    let rogue = Pki::new(&dir, "rogue");
    let good = Sink::start_tls(
        SinkFraming::Octet,
        server_config(&siem.server("good", &["127.0.0.1"]), None),
    )
    .await;
    // Listens, accepts TCP, but presents a certificate from another CA.
    let bad = Sink::start_tls(
        SinkFraming::Octet,
        server_config(&rogue.server("bad", &["127.0.0.1"]), None),
    )
    .await;
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[good.addr, bad.addr])
        .pool_tls(&format!("ca = \"{}\"", siem.ca().display()));
    let server = start(&cfg.toml()).await;
    wait_for(5.0, "health verdicts", || {
        server.backend_up("p", 0) == Some(true) && server.backend_up("p", 1) == Some(false)
    })
    .await;
    let addr = server.listener_addr("in").unwrap();
    send_lf(addr, &lines("h", 0..200)).await;
    wait_for(10.0, "200 frames at the trusted backend", || good.count() == 200).await;
    assert_eq!(bad.count(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_pinned_backend_is_trusted_without_a_ca() {
    let dir = scratch_dir("tls-pin");
    let lone = Pki::new(&dir, "lone");
    let cert = lone.server("backend", &["backend.internal"]);
    let sink = Sink::start_tls(SinkFraming::Octet, server_config(&cert, None)).await;
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[sink.addr])
        .pool_tls(&format!("pin = [\"{}\"]", cert.fingerprint));
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    send_lf(server.listener_addr("in").unwrap(), &lines("p", 0..50)).await;
    wait_for(10.0, "50 frames", || sink.count() == 50).await;
    server.shutdown().await;
}
