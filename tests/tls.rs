//! Syslog over TLS (RFC 5425), in and out, with a PKI made in the test:
//! who gets in and why the others are refused (each reason counted), the
//! client identity in the journal, certificates rotated by a reload under
//! traffic, and backends over TLS failing mid-stream without loss.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
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

    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&s.dir, |c| {
        s.listener_tls(
            c,
            &[
                &format!("crl = [\"{}\"]", crl.display()),
                &format!(
                    "allow = [\"dns:*.prod.example.com\", \"cn:web-2\", \"{}\"]",
                    pinned.fingerprint
                ),
            ],
        )
    })
    .await;
    let ca = s.ca.ca();

    // Admitted: by DNS SAN pattern, by CN, and a pinned self-signed one.
    for (who, c) in [("good", &good), ("by-cn", &by_cn), ("pinned", &pinned)] {
        send_tls(addr, client_config(&ca, Some(c)), &lines(who, 0..10)).await;
    }
    wait_for(10.0, "30 frames at the backend", || sink.count() == 30).await;

    // Refused, each with its reason, and the client told why (the alert).
    let cases: [(&str, Option<&Issued>, &str); 5] = [
        ("no-certificate", None, "CertificateRequired"),
        ("unknown-issuer", Some(&stranger), "UnknownCA"),
        ("expired", Some(&expired), "CertificateExpired"),
        ("revoked", Some(&revoked), "CertificateRevoked"),
        ("not-allowed", Some(&outsider), "AccessDenied"),
    ];
    for (reason, c, alert) in cases {
        let e = tls_refused(addr, client_config(&ca, c), "localhost").await;
        wait_for(5.0, reason, || refused(&server, reason) == 1.0).await;
        assert!(
            e.to_string().contains(alert),
            "{reason}: the client saw {e}"
        );
    }
    // Plain syslog sent to the TLS port is a protocol failure, not frames.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"<13>1 - host app - - - plain text\n")
        .await
        .unwrap();
    wait_for(5.0, "protocol", || refused(&server, "protocol") == 1.0).await;
    assert_eq!(
        metric(
            &server,
            "auditlb_tls_handshake_failures_total",
            &[("listener", "in")]
        ),
        6.0
    );
    assert_eq!(
        metric(
            &server,
            "auditlb_tls_handshakes_total",
            &[("listener", "in")]
        ),
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
    assert_eq!(
        sink.count(),
        30,
        "nothing of the refused clients was routed"
    );
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
        wait_for(10.0, "frames at the backend", || {
            sink.count() == (chunk + 1) * 100
        })
        .await;
    }
    conn.shutdown().await.unwrap();
    server.shutdown().await;
    let segments = std::fs::read_dir(cfg.journal_dir()).unwrap().count();
    assert!(
        segments >= 4,
        "only {segments} segments: the test needs rolls"
    );

    let lines = jsonl(&cfg.journal_dir());
    let frames: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"FRAME\""))
        .collect();
    assert_eq!(frames.len(), 2000);
    for f in &frames {
        assert!(
            f.contains(&format!("\"peer_sha256\":\"{}\"", client.fingerprint)),
            "{f}"
        );
        assert!(
            f.contains("\"peer_san\":[\"dns:web-1.prod.example.com\"]"),
            "{f}"
        );
        assert!(f.contains("CN=web-1"), "{f}");
        assert!(f.contains("\"version\":\"TLSv1.3\""), "{f}");
        assert!(f.contains("\"sni\":\"localhost\""), "{f}");
        assert!(f.contains("\"protocol\":\"syslog+tls\""), "{f}");
    }
    // One CONNECTION record per segment the connection sent frames in,
    // not one per frame.
    let announced = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"CONNECTION\""))
        .count();
    assert!(
        announced >= 4 && announced <= segments + 1,
        "{announced} CONNECTION records"
    );
    // A CONFIG record names the certificate loaded.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"type\":\"CONFIG\"") && l.contains(&s.server.fingerprint)),
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
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&s.dir, |c| {
        s.listener_tls(c, &["handshake-timeout = \"300ms\""])
    })
    .await;
    // 50 clients that connect and say nothing.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // A real client gets through meanwhile.
    send_tls(
        addr,
        client_config(&s.ca.ca(), Some(&client)),
        &lines("x", 0..5),
    )
    .await;
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
    wait_for(10.0, "200 frames at the trusted backend", || {
        good.count() == 200
    })
    .await;
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

/// A TLS backend that completes the handshake and then reads nothing, on
/// a socket with a small receive buffer: what its kernel acknowledges is
/// at most that buffer. Returns its address, the effective buffer size,
/// and a handle that resets the connection (a crash) when dropped.
async fn stalled_tls_backend(
    cfg: std::sync::Arc<rustls::ServerConfig>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<usize>,
) {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(16).unwrap();
    sock.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(sock.into()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let mut held = Vec::new();
        let mut rcvbuf = 0;
        let accept_loop = async {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                rcvbuf = socket2::SockRef::from(&tcp).recv_buffer_size().unwrap();
                // Health checks connect too; keep every session, read none.
                if let Ok(s) = acceptor.accept(tcp).await {
                    held.push(s);
                }
            }
        };
        tokio::select! {
            _ = killed => {}
            _ = accept_loop => {}
        }
        for s in &held {
            // A crash: reset, no close_notify.
            let _ = socket2::SockRef::from(s.get_ref().0).set_linger(Some(Duration::ZERO));
        }
        drop(held);
        rcvbuf
    });
    (addr, kill, task)
}

#[tokio::test]
async fn over_tls_a_frame_settles_only_when_its_ciphertext_is_acknowledged() {
    let dir = scratch_dir("tls-settle");
    let siem = Pki::new(&dir, "siem");
    let stalled_cert = siem.server("stalled", &["127.0.0.1"]);
    let (stalled, kill, stalled_task) =
        stalled_tls_backend(server_config(&stalled_cert, None)).await;
    let good = Sink::start_tls(
        SinkFraming::Octet,
        server_config(&siem.server("good", &["127.0.0.1"]), None),
    )
    .await;
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[stalled, good.addr])
        // Round robin with one connection each: half of the frames go to
        // the backend that reads nothing. It holds them until cut.
        .pool("connections = 1")
        .pool("replay-window = \"256KiB\"")
        .pool("tcp-user-timeout = \"30s\"")
        .pool_tls(&format!("ca = \"{}\"", siem.ca().display()));
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 2).await;
    let addr = server.listener_addr("in").unwrap();
    let n = 4000usize;
    let frames: Vec<String> = lines("s", 0..n)
        .into_iter()
        .map(|l| format!("{l} {}", "x".repeat(150)))
        .collect();
    let frame_len = frames[0].len() as f64;
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
    c.write_all(&octet(&refs)).await.unwrap();
    c.shutdown().await.unwrap();
    // Everything the stalled backend can take is written once its
    // connection stops moving.
    let out = || {
        metric(
            &server,
            "auditlb_frames_out_total",
            &[("backend", &stalled.to_string())],
        )
    };
    wait_for(10.0, "frames written towards the stalled backend", || {
        out() > 0.0
    })
    .await;
    let mut last = -1.0;
    wait_for(10.0, "the stalled connection to stop taking frames", || {
        let now = out();
        let still = now == last;
        last = now;
        std::thread::sleep(Duration::from_millis(200));
        still
    })
    .await;
    let settled = metric(
        &server,
        "auditlb_frames_settled_total",
        &[("backend", &stalled.to_string())],
    );
    let written = out();
    kill.send(()).unwrap();
    let rcvbuf = stalled_task.await.unwrap() as f64;
    // Its kernel acknowledged at most its receive buffer of ciphertext;
    // frames counted settled beyond that would be frames auditlb thinks
    // delivered that never left its own send queue.
    eprintln!("stalled backend: {written} frames written, {settled} settled, receive buffer {rcvbuf} bytes");
    assert!(
        settled * frame_len <= rcvbuf,
        "{settled} frames of {frame_len} bytes settled, but the backend's kernel holds at most {rcvbuf} bytes"
    );
    assert!(
        written > settled,
        "the test needs frames stuck in the send queue"
    );
    // Cut (a reset): every frame reaches the other backend.
    wait_for(
        30.0,
        "every frame at the good backend or acknowledged",
        || {
            let got: std::collections::HashSet<Vec<u8>> = good.bodies().into_iter().collect();
            frames.iter().all(|f| got.contains(f.as_bytes()))
        },
    )
    .await;
    server.shutdown().await;
}

/// The leaf certificate the server presented on `s`.
fn presented(s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    let der = s.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    fingerprint(&der)
}

/// Certificates rotated by SIGHUP under traffic: a connection opened
/// before stays up and keeps delivering, new connections get the new
/// certificate, a bad key file refuses the reload and the rotated
/// certificate stays; refusals are logged with client, SNI and reason;
/// each CONFIG record lists what was loaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_sighup_while_a_connection_stays_open() {
    let s = Setup::new("tls-rotate");
    let next = s.ca.server("server-next", &["localhost", "127.0.0.1"]);
    let client = s.ca.client("client", "web-1", &[]);
    let live_cert = s.dir.join("live.pem");
    let live_key = s.dir.join("live.key");
    let install = |i: &Issued| {
        // As an operator's tooling does: write aside, then rename.
        std::fs::copy(&i.cert, s.dir.join("tmp.pem")).unwrap();
        std::fs::copy(&i.key, s.dir.join("tmp.key")).unwrap();
        std::fs::rename(s.dir.join("tmp.pem"), &live_cert).unwrap();
        std::fs::rename(s.dir.join("tmp.key"), &live_key).unwrap();
    };
    install(&s.server);
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = TestConfig::at(&s.dir)
        .backend_addrs(&[sink.addr])
        .admin("127.0.0.1:0")
        .anchors()
        .listener_tls(&format!("cert = \"{}\"", live_cert.display()))
        .listener_tls(&format!("key = \"{}\"", live_key.display()))
        .listener_tls(&format!("client-ca = \"{}\"", s.ca.ca().display()));
    let path = cfg.write();
    let (auditlb, log) = spawn_auditlb_logged(&path);
    let listen = log.wait_addr("listening", Some("listener=in"));
    let admin = log.wait_addr("admin endpoint", None);
    let tls = client_config(&s.ca.ca(), Some(&client));

    let send = |frames: Vec<String>| {
        let refs: Vec<Vec<u8>> = frames.iter().map(|f| f.as_bytes().to_vec()).collect();
        let r: Vec<&[u8]> = refs.iter().map(Vec::as_slice).collect();
        octet(&r)
    };
    let mut old = tls_connect(listen, tls.clone(), "localhost").await.unwrap();
    assert_eq!(presented(&old), s.server.fingerprint);
    old.write_all(&send(lines("old", 0..100))).await.unwrap();
    old.flush().await.unwrap();
    wait_for(10.0, "100 frames", || sink.count() == 100).await;

    // Rotate.
    install(&next);
    auditlb.signal(libc::SIGHUP);
    tokio::task::spawn_blocking(move || wait_scraped(admin, "auditlb_config_reloads_total", 1.0))
        .await
        .unwrap();
    let mut new = tls_connect(listen, tls.clone(), "localhost").await.unwrap();
    assert_eq!(
        presented(&new),
        next.fingerprint,
        "a new connection gets the new certificate"
    );
    // Both connections deliver.
    old.write_all(&send(lines("old", 100..200))).await.unwrap();
    old.flush().await.unwrap();
    new.write_all(&send(lines("new", 0..100))).await.unwrap();
    new.flush().await.unwrap();
    wait_for(10.0, "300 frames", || sink.count() == 300).await;

    // A broken key: the reload is refused and the rotated material stays.
    std::fs::write(
        &live_key,
        "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    auditlb.signal(libc::SIGHUP);
    tokio::task::spawn_blocking(move || {
        wait_scraped(admin, "auditlb_config_reload_failures_total", 1.0)
    })
    .await
    .unwrap();
    let third = tls_connect(listen, tls.clone(), "localhost").await.unwrap();
    assert_eq!(presented(&third), next.fingerprint);
    drop(third);
    assert!(
        log.lines().iter().any(|l| l.contains("reload refused")
            && l.contains("listener[0].tls.key")
            && l.contains("live.key")),
        "no reload refusal naming the key file:\n{}",
        log.lines().join("\n")
    );
    // A client without a certificate: one log line with who, SNI, why.
    tls_refused(listen, client_config(&s.ca.ca(), None), "localhost").await;
    tokio::task::spawn_blocking(move || {
        wait_scraped(
            admin,
            "auditlb_tls_handshake_failures_total{listener=\"in\",reason=\"no-certificate\"}",
            1.0,
        )
    })
    .await
    .unwrap();
    let refusal = log
        .lines()
        .into_iter()
        .find(|l| l.contains("TLS handshake refused"))
        .expect("a refusal log line");
    assert!(
        refusal.contains("reason=\"no-certificate\"") || refusal.contains("reason=no-certificate"),
        "{refusal}"
    );
    assert!(
        refusal.contains("sni=localhost") || refusal.contains("sni=\"localhost\""),
        "{refusal}"
    );
    assert!(refusal.contains("client=127.0.0.1:"), "{refusal}");

    old.shutdown().await.unwrap();
    new.shutdown().await.unwrap();
    auditlb.signal(libc::SIGTERM);
    let mut auditlb = auditlb;
    assert!(auditlb.child.wait().unwrap().success());
    let configs: Vec<String> = jsonl(&cfg.journal_dir())
        .into_iter()
        .filter(|l| l.contains("\"type\":\"CONFIG\""))
        .collect();
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert!(configs[0].contains(&s.server.fingerprint) && !configs[0].contains(&next.fingerprint));
    assert!(configs[1].contains(&next.fingerprint), "{}", configs[1]);
    let (code, report) = verify_cli(&cfg.journal_dir(), &cfg.anchors_path());
    assert_eq!(code, 0, "{report}");
}

#[test]
fn check_loads_the_tls_files_and_fingerprint_prints_the_pin() {
    let s = Setup::new("tls-check");
    let cfg = s.listener_tls(
        TestConfig::at(&s.dir).backend_addrs(&["127.0.0.1:9".parse().unwrap()]),
        &[],
    );
    let path = cfg.write();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&s.server.fingerprint), "{text}");
    // The certificate file unreadable as PEM: exit 1, naming key and file.
    std::fs::write(&s.server.cert, "garbage").unwrap();
    let (code, text) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("listener[0].tls.cert") && text.contains("server.pem"),
        "{text}"
    );
    let (code, text) = run(&["fingerprint", s.ca.ca().to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let pin = fingerprint(&s.ca.ca_der());
    assert!(text.starts_with(&pin), "{text} vs {pin}");
    assert!(text.contains("CN=clients test CA"), "{text}");
    let (code, text) = run(&["fingerprint", s.dir.join("missing.pem").to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
}

/// `client-auth = "optional"`: an anonymous client gets in (journaled
/// without a certificate), a bad certificate is still refused; LF framing
/// over TLS works; `min-version = "1.3"` refuses a TLS 1.2-only client.
#[tokio::test]
async fn optional_client_auth_lf_framing_and_min_version() {
    let s = Setup::new("tls-optional");
    let expired = s.ca.expired_client("expired", "web-3");
    let Served {
        sink,
        server,
        addr,
        cfg,
    } = serve(&s.dir, |c| {
        s.listener_tls(c, &["client-auth = \"optional\"", "min-version = \"1.3\""])
    })
    .await;
    let mut anon = tls_connect(addr, client_config(&s.ca.ca(), None), "localhost")
        .await
        .unwrap();
    anon.write_all(b"<13>1 - h app - - - anonymous one\n<13>1 - h app - - - anonymous two\n")
        .await
        .unwrap();
    anon.shutdown().await.unwrap();
    wait_for(5.0, "2 LF frames", || sink.count() == 2).await;
    tls_refused(addr, client_config(&s.ca.ca(), Some(&expired)), "localhost").await;
    wait_for(5.0, "expired", || refused(&server, "expired") == 1.0).await;
    let v12 = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(load_roots(&s.ca.ca()))
        .with_no_client_auth();
    let e = tls_refused(addr, std::sync::Arc::new(v12), "localhost").await;
    wait_for(5.0, "protocol", || refused(&server, "protocol") == 1.0).await;
    assert!(e.to_string().contains("ProtocolVersion"), "{e}");
    server.shutdown().await;
    let lines = jsonl(&cfg.journal_dir());
    let frames: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\"type\":\"FRAME\""))
        .collect();
    assert_eq!(frames.len(), 2);
    for f in frames {
        assert!(
            f.contains("\"peer_sha256\":null") && f.contains("\"version\":\"TLSv1.3\""),
            "{f}"
        );
    }
}

fn inq(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    n
}

fn parse_octet(buf: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(sp) = buf[pos..].iter().position(|&b| b == b' ') {
        let len: usize = std::str::from_utf8(&buf[pos..pos + sp])
            .unwrap()
            .parse()
            .unwrap();
        if buf.len() < pos + sp + 1 + len {
            break;
        }
        out.push(buf[pos + sp + 1..pos + sp + 1 + len].to_vec());
        pos += sp + 1 + len;
    }
    out
}

/// A backend whose first data connection gets frames into its kernel
/// (acknowledged), never reads them, and closes the way a TLS peer closes
/// on shutdown: close_notify (TLS) then close(2). Later connections read
/// everything. Returns the frames read by the later connections.
async fn closer(tls: Option<Arc<rustls::ServerConfig>>) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let closed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (got, closed_once, tls) = (g.clone(), closed_once.clone(), tls.clone());
            tokio::spawn(async move {
                let fd = tcp.as_raw_fd();
                let mut s: Box<dyn Duplex> = match tls {
                    Some(cfg) => match tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                        Ok(mut t) => {
                            tokio::time::sleep(Duration::from_millis(800)).await;
                            if inq(fd) > 1000
                                && !closed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                eprintln!("closer(tls): {} bytes unread in the kernel; close_notify, close", inq(fd));
                                // As a TLS peer closing on shutdown does (rustls,
                                // gnutls_bye, SSL_shutdown): close_notify ...
                                t.get_mut().1.send_close_notify();
                                let _ = t.flush().await;
                                return; // ... then close(2), unread data in the kernel: RST
                            }
                            Box::new(t)
                        }
                        Err(_) => return,
                    },
                    None => {
                        tokio::time::sleep(Duration::from_millis(800)).await;
                        if inq(fd) > 1000
                            && !closed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                        {
                            eprintln!(
                                "closer(plain): {} bytes unread in the kernel; close",
                                inq(fd)
                            );
                            return; // close(2), unread data in the kernel: RST
                        }
                        Box::new(tcp)
                    }
                };
                let mut buf = Vec::new();
                let _ = tokio::time::timeout(Duration::from_secs(4), s.read_to_end(&mut buf)).await;
                got.lock().unwrap().extend(parse_octet(&buf));
            });
        }
    });
    (addr, got)
}

trait Duplex: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Duplex for T {}

/// Frames missing at a backend that closes its first connection with
/// unread data in its kernel (see [`closer`]), over TLS or plain TCP.
async fn lost_when_backend_closes(tls: bool) -> usize {
    let dir = scratch_dir(if tls {
        "tls-closenotify"
    } else {
        "plain-close-unread"
    });
    let siem = Pki::new(&dir, "siem");
    let cert = siem.server("b", &["127.0.0.1"]);
    let (addr, got) = closer(tls.then(|| server_config(&cert, None))).await;
    let mut cfg = TestConfig::at(&dir)
        .backend_addrs(&[addr])
        .pool("connections = 1")
        .pool("replay-window = \"1MiB\"");
    if tls {
        cfg = cfg.pool_tls(&format!("ca = \"{}\"", siem.ca().display()));
    }
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let l = server.listener_addr("in").unwrap();
    let frames = lines("c", 0..200);
    let mut c = tokio::net::TcpStream::connect(l).await.unwrap();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
    c.write_all(&octet(&refs)).await.unwrap();
    c.shutdown().await.unwrap();
    let missing = || {
        let have: std::collections::HashSet<Vec<u8>> =
            got.lock().unwrap().iter().cloned().collect();
        frames
            .iter()
            .filter(|f| !have.contains(f.as_bytes()))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while missing() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing = missing();
    eprintln!(
        "tls={tls}: settled {} replayed {} missing {missing}",
        metric(&server, "auditlb_frames_settled_total", &[]),
        metric(&server, "auditlb_frames_replayed_total", &[]),
    );
    server.shutdown().await;
    missing
}

#[tokio::test]
async fn a_tls_backend_closing_with_close_notify_and_unread_data_loses_nothing() {
    assert_eq!(lost_when_backend_closes(true).await, 0);
}

#[tokio::test]
async fn a_plain_backend_closing_with_unread_data_loses_nothing() {
    assert_eq!(lost_when_backend_closes(false).await, 0);
}

/// No session resumption: a resumed TLS session runs no certificate check,
/// so an expired (or revoked, or no longer allowed) client would stay in on
/// its ticket. Every connection is a full handshake, and a pinned
/// certificate that expired is refused on the next connection.
#[tokio::test]
async fn every_connection_is_verified_in_full_no_resumption() {
    let dir = scratch_dir("tls-no-resumption");
    let ca = Pki::new(&dir, "clients");
    let server_cert = ca.server("server", &["localhost", "127.0.0.1"]);
    let mut p = client_params("pinned-client");
    validity(&mut p, -HOUR, 2);
    let pinned = self_signed_params(&dir, "pinned", p);
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&dir, |c| {
        c.listener_tls(&format!("cert = \"{}\"", server_cert.cert.display()))
            .listener_tls(&format!("key = \"{}\"", server_cert.key.display()))
            .listener_tls(&format!("allow = [\"{}\"]", pinned.fingerprint))
    })
    .await;
    // One client config, so it would offer its tickets if it had any.
    let client = client_config(&ca.ca(), Some(&pinned));
    for round in 0..2 {
        let mut s = tls_connect(addr, client.clone(), "localhost")
            .await
            .unwrap();
        assert_eq!(
            s.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Full),
            "round {round}"
        );
        let frames = lines("r", round * 5..(round + 1) * 5);
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
        s.write_all(&octet(&refs)).await.unwrap();
        s.shutdown().await.unwrap();
        wait_for(5.0, "5 more frames", || sink.count() == (round + 1) * 5).await;
    }
    // The certificate expires; the same client, with whatever it kept, is
    // refused.
    let not_after = std::time::UNIX_EPOCH
        + Duration::from_secs(
            auditlb::tls::PeerCert::parse(&pinned.der)
                .unwrap()
                .not_after as u64
                + 1,
        );
    while std::time::SystemTime::now() < not_after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tls_refused(addr, client.clone(), "localhost").await;
    wait_for(5.0, "refused as expired", || {
        refused(&server, "expired") == 1.0
    })
    .await;
    assert_eq!(sink.count(), 10);
    server.shutdown().await;
}

/// RFC 5425 / RFC 6125: when a certificate has subjectAltName dNSNames, the
/// CN is not looked at. A CA-issued certificate whose SAN says
/// `db-1.dev.example.com` followed by one malformed entry (webpki does not
/// parse client SANs, so the chain verifies) must not get in by its CN
/// under `dns:*.prod.example.com`: a SAN that does not parse is a bad
/// certificate, not an absent SAN.
#[tokio::test]
async fn a_san_that_does_not_parse_is_refused_not_read_as_absent() {
    let dir = scratch_dir("tls-san-unparsed");
    let server_ca = Pki::new(&dir, "servers");
    let server_cert = server_ca.server("server", &["localhost"]);
    let clients = Pki::new(&dir, "clients");
    // CN in prod; the SAN: db-1.dev.example.com, then an entry whose
    // length runs past the SEQUENCE.
    let mut p = client_params("web-1.prod.example.com");
    let good = b"db-1.dev.example.com";
    let mut names = vec![0x82, good.len() as u8];
    names.extend_from_slice(good);
    names.extend_from_slice(&[0x82, 0x10, b'a', b'b', b'c']);
    let mut san = vec![0x30, names.len() as u8];
    san.extend(names);
    p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 17],
        san,
    )];
    let client = clients.issue_params("client", p);
    assert!(auditlb::tls::PeerCert::parse(&client.der).is_err());
    let ca_path = clients.ca();
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&dir, |c| {
        c.tls_server(&server_cert, Some(&ca_path))
            .listener_tls("allow = [\"dns:*.prod.example.com\"]")
    })
    .await;
    let frames = lines("san", 0..5);
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_bytes()).collect();
    let r = tls_send(
        addr,
        client_config(&server_ca.ca(), Some(&client)),
        &octet(&refs),
    )
    .await;
    eprintln!("client: {r:?}");
    wait_for(5.0, "the refusal", || {
        refused(&server, "bad-certificate") == 1.0
    })
    .await;
    let got = sink.count();
    server.shutdown().await;
    assert_eq!(
        got, 0,
        "a certificate whose SAN is db-1.dev.example.com got in by its CN"
    );
}

/// TLS truncation: a connection that ends without close_notify (an
/// on-path attacker can drop the records that follow and send a FIN) keeps
/// its whole frames, but an unterminated tail is refused (a GAP record),
/// never journaled and forwarded as a frame under the client's identity.
#[tokio::test]
async fn a_truncated_tls_stream_keeps_whole_frames_and_refuses_the_cut_one() {
    let dir = scratch_dir("tls-truncation");
    let ca = Pki::new(&dir, "clients");
    let server_cert = ca.server("server", &["localhost"]);
    let client = ca.client("client", "web-1", &[]);
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&dir, |c| {
        c.listener("framing = \"lf\"")
            .tls_server(&server_cert, Some(&ca.ca()))
    })
    .await;
    let mut s = tls_connect(addr, client_config(&ca.ca(), Some(&client)), "localhost")
        .await
        .unwrap();
    // One record: a whole line and the first half of the next.
    s.write_all(b"<13>1 - h app - - - whole\n<13>1 - h app - - - transfer approved for account 12")
        .await
        .unwrap();
    s.flush().await.unwrap();
    // The rest of the line never arrives: FIN, no close_notify.
    s.get_mut().0.shutdown().await.unwrap();
    wait_for(5.0, "the cut frame refused", || {
        metric(
            &server,
            "auditlb_frames_refused_total",
            &[("reason", "incomplete")],
        ) == 1.0
    })
    .await;
    wait_for(5.0, "the whole frame", || sink.count() == 1).await;
    let bodies: Vec<String> = sink
        .bodies()
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    eprintln!("at the backend: {bodies:?}");
    server.shutdown().await;
    assert_eq!(
        bodies,
        ["<13>1 - h app - - - whole"],
        "the truncated tail was forwarded as a frame"
    );
}

/// A stop right after a TLS client sent its frames: what it sent is read
/// (records already on the socket included) and delivered before exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_right_after_a_tls_client_sent_delivers_everything() {
    let s = Setup::new("tls-stop-drain");
    let client = s.ca.client("client", "web-1", &[]);
    let Served {
        sink, server, addr, ..
    } = serve(&s.dir, |c| s.listener_tls(c, &[])).await;
    let n = 20_000;
    send_tls(
        addr,
        client_config(&s.ca.ca(), Some(&client)),
        &lines("stop", 0..n),
    )
    .await;
    server.shutdown().await;
    wait_for(5.0, "every frame delivered before exit", || {
        sink.count() == n
    })
    .await;
}
