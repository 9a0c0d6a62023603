//! TLS as an attacker and an operator's mistakes see it: streams cut on
//! the path, reloads that revoke or switch modes, floods of bad handshakes,
//! certificates with huge or odd names, revoked intermediates and pins,
//! handshakes that stall. Each test states what a correct auditlb does.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use auditlb::journal::cat::{cat, Format};
use auditlb::server::Server;
use common::*;

fn jsonl(journal: &Path) -> Vec<String> {
    let mut out = Vec::new();
    cat(journal, None, None, Format::Jsonl, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn gaps(journal: &Path) -> Vec<String> {
    jsonl(journal)
        .into_iter()
        .filter(|l| l.contains("\"type\":\"GAP\""))
        .collect()
}

fn refused(server: &Server, reason: &str) -> f64 {
    metric(
        server,
        "auditlb_frames_refused_total",
        &[("reason", reason)],
    )
}

/// Waits until `n` client connections have ended (each session counts its
/// close once it has handed over and recorded everything).
async fn wait_closed(server: &Server, n: f64) {
    wait_for(5.0, "client sessions to end", || {
        metric(server, "auditlb_connections_closed_total", &[]) >= n
    })
    .await;
}

struct Tls {
    dir: std::path::PathBuf,
    ca: Pki,
    server: Issued,
    client: Issued,
}

impl Tls {
    fn new(name: &str) -> Tls {
        let dir = scratch_dir(name);
        let ca = Pki::new(&dir, "clients");
        let server = ca.server("server", &["localhost", "127.0.0.1"]);
        let client = ca.client("client", "web-1", &["web-1.example.com"]);
        Tls {
            dir,
            ca,
            server,
            client,
        }
    }
    fn listener(&self, cfg: TestConfig) -> TestConfig {
        cfg.listener_tls(&format!("cert = \"{}\"", self.server.cert.display()))
            .listener_tls(&format!("key = \"{}\"", self.server.key.display()))
            .listener_tls(&format!("client-ca = \"{}\"", self.ca.ca().display()))
    }
    fn client_cfg(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca.ca(), Some(&self.client))
    }
}

/// Sends `bytes` over TLS, then FIN without close_notify (cut).
async fn send_then_cut(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>, bytes: &[u8]) {
    let mut s = tls_connect(addr, cfg, "localhost").await.unwrap();
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.get_mut().0.shutdown().await.unwrap();
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(3), s.get_mut().0.read(&mut b)).await;
}

/// Same bytes over plain TCP, closed with FIN.
async fn send_plain(addr: SocketAddr, bytes: &[u8]) {
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(bytes).await.unwrap();
    c.shutdown().await.unwrap();
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b)).await;
}

/// What became of a stream: refusals by reason, truncations, GAP records.
#[derive(Debug, PartialEq)]
struct Outcome {
    oversize: f64,
    truncated: f64,
    incomplete: f64,
    gaps: usize,
}

/// Sends `wire` to an octet-counted listener with `max-frame = 16B` and
/// `oversize`, over TLS and then cut (FIN, no close_notify), or over plain
/// TCP and closed; waits for `delivered` frames and the session's end.
async fn stream_end(
    name: &str,
    oversize: &str,
    wire: &[u8],
    tls: bool,
    delivered: usize,
) -> Outcome {
    let t = Tls::new(name);
    let listener =
        format!("framing = \"octet-counted\"\nmax-frame = \"16B\"\noversize = \"{oversize}\"");
    let Served {
        sink,
        server,
        addr,
        cfg,
    } = serve(&t.dir, |c| {
        let c = c.listener(&listener);
        if tls {
            t.listener(c)
        } else {
            c
        }
    })
    .await;
    if tls {
        send_then_cut(addr, t.client_cfg(), wire).await;
    } else {
        send_plain(addr, wire).await;
    }
    wait_for(5.0, "the delivered frames", || sink.count() == delivered).await;
    wait_closed(&server, 1.0).await;
    let outcome = Outcome {
        oversize: refused(&server, "oversize"),
        truncated: metric(&server, "auditlb_frames_truncated_total", &[]),
        incomplete: refused(&server, "incomplete"),
        gaps: 0,
    };
    server.shutdown().await;
    let g = gaps(&cfg.journal_dir());
    eprintln!("{outcome:?}\n{}", g.join("\n"));
    Outcome {
        gaps: g.len(),
        ..outcome
    }
}

/// One oversize octet-counted frame under `oversize = drop`, whose body is
/// still being skipped when the TLS stream is cut. The frame was already
/// refused (and journaled as a GAP "oversize") when its count was read; the
/// cut must not refuse the same frame a second time as "incomplete".
/// Over plain TCP the same stream ends with one refusal too.
#[tokio::test]
async fn cut_while_skipping_a_dropped_oversize_frame_refuses_it_once() {
    // "5 hello" is whole; "100 " announces a 100-byte frame (dropped), of
    // which 20 bytes arrive before the end.
    let mut wire = b"5 hello100 ".to_vec();
    wire.extend_from_slice(&[b'x'; 20]);
    let once = Outcome {
        oversize: 1.0,
        truncated: 0.0,
        incomplete: 0.0,
        gaps: 1,
    };
    assert_eq!(
        stream_end("a2-cut-drop", "drop", &wire, true, 1).await,
        once
    );
    assert_eq!(
        stream_end("a2-plain-drop", "drop", &wire, false, 1).await,
        once
    );
}

/// `oversize = truncate`: the first max-frame bytes of an oversize frame
/// are forwarded (a frame, counted as truncated) and the rest is skipped.
/// A cut while skipping the rest must not also record that frame as
/// refused: it was delivered.
#[tokio::test]
async fn cut_while_skipping_a_truncated_frame_does_not_refuse_a_delivered_frame() {
    let mut wire = b"100 ".to_vec();
    wire.extend_from_slice(&[b'y'; 40]);
    assert_eq!(
        stream_end("a2-cut-trunc", "truncate", &wire, true, 1).await,
        Outcome {
            oversize: 0.0,
            truncated: 1.0,
            incomplete: 0.0,
            gaps: 0,
        }
    );
}

/// The cut rule's point is evidence: a frame cut on the path leaves a GAP
/// "incomplete". An on-path attacker who injects one bad TLS record instead
/// of a FIN (bad_record_mac) cuts the same frame; it must leave the same
/// evidence.
#[tokio::test]
async fn a_frame_cut_by_a_forged_record_leaves_a_gap_like_a_frame_cut_by_fin() {
    let t = Tls::new("a2-cut-mac");
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = t
        .listener(
            TestConfig::at(&t.dir)
                .backend_addrs(&[sink.addr])
                .listener("framing = \"lf\""),
        )
        .toml();
    let server = start(&cfg).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    s.write_all(b"<13>1 - h app - - - whole\n<13>1 - h app - - - transfer approved for account 12")
        .await
        .unwrap();
    s.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A forged application_data record (what an attacker can inject).
    let mut rec = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    rec.extend_from_slice(&[0xAB; 0x30]);
    s.get_mut().0.write_all(&rec).await.unwrap();
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(3), s.get_mut().0.read(&mut b)).await;
    wait_for(5.0, "the whole frame", || sink.count() == 1).await;
    wait_closed(&server, 1.0).await;
    let incomplete = refused(&server, "incomplete");
    let closed_error = metric(
        &server,
        "auditlb_connections_closed_total",
        &[("reason", "error")],
    );
    server.shutdown().await;
    let g = gaps(&TestConfig::at(&t.dir).journal_dir());
    eprintln!(
        "incomplete={incomplete} closed_error={closed_error}\n{}",
        g.join("\n")
    );
    assert_eq!(
        (incomplete, g.len()),
        (1.0, 1),
        "a frame cut by a forged record vanishes without a GAP"
    );
}

fn parsed(cfg: &TestConfig) -> auditlb::config::Config {
    cfg.parse()
}

async fn send_plain_frames(addr: SocketAddr, tag: &str, n: usize) -> std::io::Result<()> {
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    let f = lines(tag, 0..n);
    let refs: Vec<&[u8]> = f.iter().map(|s| s.as_bytes()).collect();
    c.write_all(&octet(&refs)).await?;
    c.shutdown().await?;
    let mut b = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(3), c.read(&mut b)).await;
    Ok(())
}

fn bodies_with(sink: &Sink, tag: &str) -> usize {
    sink.bodies()
        .iter()
        .filter(|b| String::from_utf8_lossy(b).contains(&format!("msg-{tag}-")))
        .count()
}

/// A reload adds `[listener.tls]` to a running plain listener (same name
/// and address), then removes it again: new connections switch mode, a
/// plain connection open across the switch to TLS is closed (it would not
/// be let in now), a TLS connection open across the switch back goes on,
/// and the expiry series follows the material.
#[tokio::test]
async fn reload_turns_a_plain_listener_into_tls_and_back() {
    let t = Tls::new("a2-reload-listener");
    let sink = Sink::start(SinkFraming::Octet).await;
    let plain = TestConfig::at(&t.dir).backend_addrs(&[sink.addr]);
    let tls = t.listener(plain.clone());
    let mut server = start(&plain.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    // A plain client that stays open across the reload.
    let mut old_plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    old_plain.write_all(b"8 before-1").await.unwrap();
    wait_for(5.0, "first", || sink.count() == 1).await;

    let r = server.reload(parsed(&tls)).await;
    eprintln!("plain -> tls: {r:?}");
    assert!(r.is_ok());
    assert_eq!(server.listener_addr("in"), Some(addr));
    let expiry = metric(
        &server,
        "auditlb_tls_cert_expiry_seconds",
        &[("listener", "in")],
    );
    assert!(expiry > 0.0, "no expiry series after TLS was added");
    // A new plain client is now refused (it does not speak TLS).
    send_plain_frames(addr, "newplain", 3).await.unwrap();
    wait_for(5.0, "plain refused by the TLS listener", || {
        metric(
            &server,
            "auditlb_tls_handshake_failures_total",
            &[("reason", "protocol")],
        ) == 1.0
    })
    .await;
    // A TLS client gets in.
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    let f = lines("tls", 0..3);
    let refs: Vec<&[u8]> = f.iter().map(|s| s.as_bytes()).collect();
    s.write_all(&octet(&refs)).await.unwrap();
    s.flush().await.unwrap();
    wait_for(5.0, "tls frames", || bodies_with(&sink, "tls") == 3).await;
    // The plain connection opened before the reload was closed by it: it
    // would not be let in now.
    wait_for(5.0, "the plain session closed by the reload", || {
        metric(
            &server,
            "auditlb_connections_closed_total",
            &[("reason", "tls_revalidation")],
        ) == 1.0
    })
    .await;
    let _ = old_plain.write_all(b"7 after-1").await;
    let old_plain_after = sink.bodies().iter().any(|b| b.as_slice() == b"after-1");

    // And back to plain.
    let r = server.reload(parsed(&plain)).await;
    eprintln!("tls -> plain: {r:?}");
    assert!(r.is_ok());
    let expiry = metric(
        &server,
        "auditlb_tls_cert_expiry_seconds",
        &[("listener", "in")],
    );
    assert_eq!(expiry, 0.0, "expiry series of removed TLS material kept");
    send_plain_frames(addr, "back", 3).await.unwrap();
    wait_for(5.0, "plain again", || bodies_with(&sink, "back") == 3).await;
    // The TLS connection opened before continues.
    let f = lines("tls2", 0..2);
    let refs: Vec<&[u8]> = f.iter().map(|s| s.as_bytes()).collect();
    s.write_all(&octet(&refs)).await.unwrap();
    s.flush().await.unwrap();
    wait_for(5.0, "tls conn still delivers", || {
        bodies_with(&sink, "tls2") == 2
    })
    .await;
    assert_eq!(bodies_with(&sink, "newplain"), 0);
    server.shutdown().await;
    assert!(
        !old_plain_after,
        "a plaintext connection opened before TLS was required kept delivering"
    );
}

/// A client whose certificate is revoked (CRL rotated, reload accepted) is
/// cut off on its open connection too, not only refused when it comes
/// back; a client still valid stays connected across the same reload.
#[tokio::test]
async fn a_client_revoked_by_a_reload_is_cut_off_on_its_open_connection() {
    let t = Tls::new("a2-revoke-open");
    let sink = Sink::start(SinkFraming::Octet).await;
    let crl = t.dir.join("live.crl.pem");
    std::fs::copy(t.ca.crl("empty", &[]), &crl).unwrap();
    let cfg = t
        .listener(TestConfig::at(&t.dir).backend_addrs(&[sink.addr]))
        .listener_tls(&format!("crl = [\"{}\"]", crl.display()));
    let mut server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    s.write_all(b"6 before").await.unwrap();
    s.flush().await.unwrap();
    wait_for(5.0, "first", || sink.count() == 1).await;
    // Revoke and reload.
    std::fs::copy(t.ca.crl("revoked", &[&t.client]), &crl).unwrap();
    server.reload(cfg.parse()).await.unwrap();
    // A new connection is refused as revoked.
    tls_refused(addr, t.client_cfg(), "localhost").await;
    wait_for(5.0, "revoked refusal", || {
        metric(
            &server,
            "auditlb_tls_handshake_failures_total",
            &[("reason", "revoked")],
        ) == 1.0
    })
    .await;
    // The open connection was closed by the reload.
    wait_for(5.0, "the revoked session closed", || {
        metric(
            &server,
            "auditlb_connections_closed_total",
            &[("reason", "tls_revalidation")],
        ) == 1.0
    })
    .await;
    let _ = s.write_all(b"5 after").await;
    let _ = s.flush().await;
    let after = sink.bodies().iter().any(|b| b.as_slice() == b"after");
    // Another client of the same CA, not revoked, kept its connection.
    let mut other = tls_connect(
        addr,
        client_config(&t.ca.ca(), Some(&t.ca.client("other", "web-2", &[]))),
        "localhost",
    )
    .await
    .unwrap();
    other.write_all(b"5 other").await.unwrap();
    other.flush().await.unwrap();
    std::fs::copy(t.ca.crl("revoked-again", &[&t.client]), &crl).unwrap();
    server.reload(cfg.parse()).await.unwrap();
    other.write_all(b"4 more").await.unwrap();
    other.flush().await.unwrap();
    wait_for(5.0, "the valid client's frames", || sink.count() == 3).await;
    server.shutdown().await;
    assert!(
        !after,
        "a revoked client's open connection still delivered after the reload"
    );
}

/// `[pool.tls]` added to a running pool by a reload, with the backend on
/// the same address now speaking TLS, and then removed again: every frame
/// arrives, none as garbage.
#[tokio::test]
async fn reload_switches_a_pool_to_tls_and_back_on_the_same_address() {
    let dir = scratch_dir("a2-reload-pool");
    let pki = Pki::new(&dir, "backends");
    let cert = pki.server("backend", &["localhost", "127.0.0.1"]);
    let mut plain_sink = Sink::start(SinkFraming::Octet).await;
    let addr_b = plain_sink.addr;
    let plain = TestConfig::at(&dir).backend_addrs(&[addr_b]);
    let tls = plain
        .clone()
        .pool_tls(&format!("ca = \"{}\"", pki.ca().display()));
    let mut server = start(&plain.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    send_plain_frames(addr, "p1", 50).await.unwrap();
    wait_for(5.0, "p1", || bodies_with(&plain_sink, "p1") == 50).await;
    // The backend goes, auditlb reloads, the backend comes back speaking
    // TLS on the same address. (Until the reload auditlb still speaks the
    // old mode to whatever listens there.)
    plain_sink.kill();
    drop(plain_sink);
    wait_for(5.0, "the old backend gone", || {
        std::net::TcpStream::connect(addr_b).is_err()
    })
    .await;
    server.reload(tls.parse()).await.unwrap();
    let mut tls_sink = Sink::start_tls_at(addr_b, SinkFraming::Octet, server_config(&cert, None));
    send_plain_frames(addr, "t1", 50).await.unwrap();
    wait_for(10.0, "t1 over TLS", || bodies_with(&tls_sink, "t1") == 50).await;
    assert_eq!(*tls_sink.garbage.lock().unwrap(), 0);
    let expiry = metric(&server, "auditlb_tls_cert_expiry_seconds", &[("pool", "p")]);
    assert!(expiry > 0.0);
    // And back.
    tls_sink.kill();
    drop(tls_sink);
    wait_for(5.0, "the TLS backend gone", || {
        std::net::TcpStream::connect(addr_b).is_err()
    })
    .await;
    server.reload(plain.parse()).await.unwrap();
    let plain_sink = Sink::start_at(addr_b, SinkFraming::Octet);
    send_plain_frames(addr, "p2", 50).await.unwrap();
    wait_for(10.0, "p2 plain", || bodies_with(&plain_sink, "p2") == 50).await;
    let garbage = *plain_sink.garbage.lock().unwrap();
    let expiry = metric(&server, "auditlb_tls_cert_expiry_seconds", &[("pool", "p")]);
    server.shutdown().await;
    assert_eq!(garbage, 0, "TLS bytes at the plain backend");
    assert_eq!(expiry, 0.0);
}

/// A flood of bad handshakes must not flood the log: auditlb's own refusal
/// line is rate-limited (10 per 10 s per listener); nothing else may log
/// per connection either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_handshakes_does_not_flood_the_log() {
    let t = Tls::new("a2-logflood");
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = t
        .listener(TestConfig::at(&t.dir).backend_addrs(&[sink.addr]))
        .admin("127.0.0.1:0");
    let path = cfg.write();
    let (mut proc_, log) = spawn_auditlb_logged(&path);
    let listen = log.wait_addr("listening", Some("listener=in"));
    let admin = log.wait_addr("admin endpoint", None);
    let base = log.lines().len();
    // A handshake record holding a Finished where a ClientHello must be.
    let junk: &[u8] = &[
        0x16, 0x03, 0x01, 0x00, 0x08, 0x14, 0x00, 0x00, 0x04, 0, 0, 0, 0,
    ];
    for _ in 0..200 {
        let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
        c.write_all(junk).await.unwrap();
        let mut b = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(2), c.read(&mut b)).await;
    }
    tokio::task::spawn_blocking(move || {
        wait_scraped(
            admin,
            "auditlb_tls_handshake_failures_total{listener=\"in\",reason=\"protocol\"}",
            200.0,
        )
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines: Vec<String> = log.lines()[base..].to_vec();
    proc_.signal(libc::SIGTERM);
    let _ = proc_.child.wait();
    let warn: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    eprintln!(
        "{} warn/error lines for 200 bad handshakes; first ones:",
        warn.len()
    );
    for l in warn.iter().take(4) {
        eprintln!("  {l}");
    }
    let unlimited: Vec<&&String> = warn
        .iter()
        .filter(|l| !l.contains("TLS handshake refused"))
        .collect();
    assert!(
        warn.len() <= 12,
        "{} warn lines for 200 bad handshakes ({} not rate-limited), e.g. {:?}",
        warn.len(),
        unlimited.len(),
        unlimited.first()
    );
}

/// /metrics with every TLS series present (listener and pool material,
/// handshakes, refusals) still passes `promtool check metrics`.
#[tokio::test]
async fn tls_metrics_pass_promtool() {
    let t = Tls::new("a2-promtool");
    let bpki = Pki::new(&t.dir, "backends");
    let bcert = bpki.server("backend", &["localhost", "127.0.0.1"]);
    let sink = Sink::start_tls(SinkFraming::Octet, server_config(&bcert, None)).await;
    let cfg = t
        .listener(TestConfig::at(&t.dir).backend_addrs(&[sink.addr]))
        .pool_tls(&format!("ca = \"{}\"", bpki.ca().display()))
        .admin("127.0.0.1:0");
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    s.write_all(b"5 hello").await.unwrap();
    s.shutdown().await.unwrap();
    tls_refused(addr, client_config(&t.ca.ca(), None), "localhost").await;
    wait_for(5.0, "delivered", || sink.count() == 1).await;
    let admin = server.admin_addr().unwrap();
    let body = http_get(admin, "/metrics").await;
    let body = body.split("\r\n\r\n").nth(1).unwrap().to_owned();
    server.shutdown().await;
    let tls_lines: Vec<&str> = body.lines().filter(|l| l.contains("tls_")).collect();
    eprintln!("{}", tls_lines.join("\n"));
    let (ok, out) = promtool_check(&body);
    assert!(ok, "promtool: {out}");
    eprintln!("promtool: {out}");
}

/// A client-ca file holding the outgoing and the incoming CA (a CA
/// rotation; both with the same subject, as renewed CAs usually are): each
/// loaded certificate must have its expiry series, so the alert sees the
/// one that expires in 10 days.
#[tokio::test]
async fn each_loaded_certificate_has_its_expiry_even_with_the_same_subject() {
    let t = Tls::new("a2-expiry-subject");
    let old = Pki::root(&t.dir, "old", "Example Clients CA", 10);
    let new = Pki::root(&t.dir, "new", "Example Clients CA", 3650);
    let both = t.dir.join("clients-both.pem");
    let pem = |p: &Pki| std::fs::read_to_string(p.ca()).unwrap();
    std::fs::write(&both, pem(&old) + &pem(&new)).unwrap();
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = TestConfig::at(&t.dir)
        .backend_addrs(&[sink.addr])
        .listener_tls(&format!("cert = \"{}\"", t.server.cert.display()))
        .listener_tls(&format!("key = \"{}\"", t.server.key.display()))
        .listener_tls(&format!("client-ca = \"{}\"", both.display()))
        .admin("127.0.0.1:0");
    let server = start(&cfg.toml()).await;
    let body = http_get(server.admin_addr().unwrap(), "/metrics").await;
    server.shutdown().await;
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("auditlb_tls_cert_expiry_seconds{") && l.contains("client-ca"))
        .collect();
    eprintln!("{}", series.join("\n"));
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        + 30.0 * 86400.0;
    let min = series
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .fold(f64::INFINITY, f64::min);
    assert!(
        series.len() == 2 && min < soon,
        "two client CAs loaded, {} expiry series; the CA expiring in 10 days is invisible",
        series.len()
    );
}

/// A client certificate with a huge subject and more (and longer) SANs
/// than a CONNECTION record keeps: the record still holds every field
/// (version, cipher, fingerprint, subject, SANs up to the bound), `cat
/// --from` a seq in the middle of the segment still shows the identity,
/// and `verify` catches a tampered CONNECTION record.
#[tokio::test]
async fn connection_records_big_identity_cat_from_and_tamper() {
    use rcgen::{DnType, SanType};
    let t = Tls::new("a2-conn-meta");
    // Client cert: 40 URI SANs of 1100 bytes, a 3000-byte OU; pinned.
    let mut p = client_params("big-client");
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, "u".repeat(3000));
    p.subject_alt_names = (0..40)
        .map(|i| {
            SanType::URI(
                format!("spiffe://x/{i:03}/{}", "a".repeat(1100))
                    .try_into()
                    .unwrap(),
            )
        })
        .collect();
    let big = self_signed_params(&t.dir, "big", p);
    eprintln!("client cert: {} bytes", big.der.len());
    let Served {
        sink,
        server,
        addr,
        cfg,
    } = serve(&t.dir, |c| {
        c.anchors()
            .listener_tls(&format!("cert = \"{}\"", t.server.cert.display()))
            .listener_tls(&format!("key = \"{}\"", t.server.key.display()))
            .listener_tls(&format!("allow = [\"{}\"]", big.fingerprint))
    })
    .await;
    let mut s = tls_connect(addr, client_config(&t.ca.ca(), Some(&big)), "localhost")
        .await
        .unwrap();
    let f = lines("big", 0..10);
    let refs: Vec<&[u8]> = f.iter().map(|s| s.as_bytes()).collect();
    s.write_all(&octet(&refs)).await.unwrap();
    s.shutdown().await.unwrap();
    wait_for(5.0, "10 frames", || sink.count() == 10).await;
    server.shutdown().await;
    let journal = cfg.journal_dir();
    let all = jsonl(&journal);
    let conn = all
        .iter()
        .find(|l| l.contains("\"type\":\"CONNECTION\""))
        .expect("a CONNECTION record");
    assert!(
        conn.contains(&big.fingerprint),
        "fingerprint missing: {}",
        &conn[..300.min(conn.len())]
    );
    assert!(
        conn.contains("TLSv1.3") && conn.contains("big-client"),
        "{}",
        &conn[..300]
    );
    let sans = conn.matches("uri:spiffe://x/").count();
    eprintln!(
        "CONNECTION record: {} bytes of JSON, {sans} SANs",
        conn.len()
    );
    assert_eq!(sans, 32);
    // cat --from the 6th frame's seq.
    let frame_seqs: Vec<u64> = all
        .iter()
        .filter(|l| l.contains("\"type\":\"FRAME\""))
        .map(|l| {
            l["{\"seq\":".len()..]
                .split(',')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    let from = frame_seqs[5];
    let mut out = Vec::new();
    cat(
        &journal,
        Some(auditlb::journal::cat::Bound::Seq(from)),
        None,
        Format::Jsonl,
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    let first = out.lines().next().unwrap();
    assert!(
        first.contains("\"tls\":{") && first.contains(&big.fingerprint),
        "{}",
        &first[..200.min(first.len())]
    );
    // verify is clean, then tamper one byte of the CONNECTION subject.
    let (code, report) = verify_cli(&journal, &cfg.anchors_path());
    assert_eq!(code, 0, "{report}");
    let seg = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "seg") || p.to_string_lossy().contains("seg")
        })
        .min()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes
        .windows(b"big-client".len())
        .position(|w| w == b"big-client")
        .expect("subject in the segment");
    bytes[at] = b'B';
    std::fs::write(&seg, &bytes).unwrap();
    let (code, report) = verify_cli(&journal, &cfg.anchors_path());
    eprintln!("verify after tamper: {code}\n{report}");
    assert_ne!(code, 0, "a tampered CONNECTION record passes verify");
}

/// TLS 1.2: neither a session ID nor a ticket resumes (the first round
/// only tried TLS 1.3).
#[tokio::test]
async fn no_resumption_over_tls12_either() {
    let t = Tls::new("a2-tls12-resume");
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&t.dir, |c| t.listener(c)).await;
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(ring_provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(load_roots(&t.ca.ca()))
            .with_client_auth_cert(load_certs(&t.client.cert), load_key(&t.client.key))
            .unwrap(),
    );
    for round in 0..3 {
        let mut s = tls_connect(addr, client.clone(), "localhost")
            .await
            .unwrap();
        let kind = s.get_ref().1.handshake_kind();
        let v = s.get_ref().1.protocol_version();
        s.write_all(b"5 hello").await.unwrap();
        s.shutdown().await.unwrap();
        eprintln!("round {round}: {v:?} {kind:?}");
        assert_eq!(v, Some(rustls::ProtocolVersion::TLSv1_2));
        assert_eq!(kind, Some(rustls::HandshakeKind::Full), "round {round}");
    }
    wait_for(5.0, "3 frames", || sink.count() == 3).await;
    server.shutdown().await;
}

/// A CA-issued client certificate that is pinned in `allow` and revoked by
/// that CA's CRL: the CRL must win (the pin names the certificate; it does
/// not make it unrevokable).
#[tokio::test]
async fn a_pinned_certificate_revoked_by_its_ca_is_refused() {
    let t = Tls::new("a2-pin-revoked");
    let sink = Sink::start(SinkFraming::Octet).await;
    let crl = t.ca.crl("revoked", &[&t.client]);
    let cfg = t
        .listener(TestConfig::at(&t.dir).backend_addrs(&[sink.addr]))
        .listener_tls(&format!("crl = [\"{}\"]", crl.display()))
        .listener_tls(&format!("allow = [\"{}\"]", t.client.fingerprint));
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let r = async {
        let mut s = tls_connect(addr, t.client_cfg(), "localhost").await?;
        s.write_all(b"7 revoked").await?;
        s.shutdown().await
    }
    .await;
    eprintln!("client: {r:?}");
    wait_closed(&server, 1.0).await;
    let got = sink.count();
    let revoked = metric(
        &server,
        "auditlb_tls_handshake_failures_total",
        &[("reason", "revoked")],
    );
    server.shutdown().await;
    assert_eq!(
        (got, revoked),
        (0, 1.0),
        "a revoked certificate gets in by its pin"
    );
}

/// RFC 5425 section 5.2: a `dns:` rule looks at the CN when the
/// certificate has no DNS name SAN. A certificate whose SAN holds only an
/// IP address and whose CN is web-1.prod.example.com is admitted by
/// `dns:*.prod.example.com` (and by nothing else).
#[tokio::test]
async fn dns_rule_and_a_san_without_dns_names() {
    let dir = scratch_dir("a2-dns-no-dns-san");
    let server_ca = Pki::new(&dir, "servers");
    let server_cert = server_ca.server("server", &["localhost"]);
    let clients = Pki::new(&dir, "clients");
    let mut p = client_params("web-1.prod.example.com");
    p.subject_alt_names = vec![rcgen::SanType::IpAddress("10.9.9.9".parse().unwrap())];
    let client = clients.issue_params("client", p);
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
    let r = tls_send(addr, client_config(&server_ca.ca(), Some(&client)), b"2 in").await;
    r.unwrap();
    wait_for(5.0, "the frame", || sink.count() == 1).await;
    server.shutdown().await;
}

/// Handshakes in flight across a reload and a shutdown: the reload does
/// not wait for them, they keep the material they started with, and the
/// shutdown ends them at once (not after handshake-timeout).
#[tokio::test]
async fn handshakes_in_flight_across_reload_and_shutdown() {
    let t = Tls::new("a2-inflight");
    let Served {
        sink,
        mut server,
        addr,
        cfg,
    } = serve(&t.dir, |c| {
        t.listener(c).listener_tls("handshake-timeout = \"30s\"")
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Half a ClientHello record header.
        c.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        silent.push(c);
    }
    wait_for(5.0, "20 sessions open", || {
        metric(&server, "auditlb_connections_open", &[]) == 20.0
    })
    .await;
    let t0 = std::time::Instant::now();
    server.reload(cfg.parse()).await.unwrap();
    let reload_took = t0.elapsed();
    // A real client still gets in while the 20 wait.
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    s.write_all(b"2 ok").await.unwrap();
    s.shutdown().await.unwrap();
    wait_for(5.0, "frame", || sink.count() == 1).await;
    let t1 = std::time::Instant::now();
    let m = server.metrics().clone();
    server.shutdown().await;
    let shutdown_took = t1.elapsed();
    let closed_shutdown = m.sum(
        "auditlb_connections_closed_total",
        &[("reason", "shutdown")],
    );
    let timeouts = m.sum(
        "auditlb_tls_handshake_failures_total",
        &[("reason", "timeout")],
    );
    eprintln!("reload {reload_took:?} shutdown {shutdown_took:?} closed_shutdown {closed_shutdown} timeouts {timeouts}");
    assert!(reload_took < Duration::from_secs(2));
    assert!(shutdown_took < Duration::from_secs(5));
    assert_eq!((closed_shutdown, timeouts), (20.0, 0.0));
}

/// Unauthenticated peers that each send most of a 64 KiB ClientHello and
/// stall: rustls holds up to 64 KiB per handshake, so only
/// `max-handshakes` (here 100) run at once and the rest wait holding
/// nothing. RSS grows by about max-handshakes x 64 KiB, not per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_per_stalled_handshake() {
    let t = Tls::new("a2-mem");
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = t
        .listener(TestConfig::at(&t.dir).backend_addrs(&[sink.addr]))
        .listener_tls("handshake-timeout = \"60s\"")
        .listener_tls("max-handshakes = 100");
    let path = cfg.write();
    let (proc_, log) = spawn_auditlb_logged(&path);
    let listen = log.wait_addr("listening", Some("listener=in"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 1000;
    let empty = proc_.rss_kib();
    // Baseline: n silent connections.
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(tokio::net::TcpStream::connect(listen).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = proc_.rss_kib();
    // Each sends 3 records of one 65520-byte ClientHello.
    let mut msg = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0xff, 0xf0];
    msg.extend(std::iter::repeat_n(0x41u8, 0x4000 - 4));
    for _ in 0..2 {
        msg.extend_from_slice(&[0x16, 0x03, 0x01, 0x40, 0x00]);
        msg.extend(std::iter::repeat_n(0x41u8, 0x4000));
    }
    for c in conns.iter_mut() {
        c.write_all(&msg).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = proc_.rss_kib();
    let grew = after.saturating_sub(base);
    eprintln!("RSS {empty} KiB with no client, {base} KiB -> {after} KiB: {grew} KiB for {n} stalled handshakes ({} bytes sent each)", msg.len());
    drop(conns);
    // 100 x 64 KiB, plus slack for the allocator.
    assert!(
        grew < 100 * 64 + 4096,
        "{grew} KiB for {n} stalled handshakes with max-handshakes = 100"
    );
}

/// Shutdown while a client (TLS here; plain behaves the same) is inside a
/// frame: the partial frame is dropped with no GAP and no refusal count.
#[tokio::test]
async fn a_partial_frame_at_shutdown_leaves_a_trace() {
    let t = Tls::new("a2-shutdown-partial");
    let Served {
        sink,
        server,
        addr,
        cfg,
    } = serve(&t.dir, |c| {
        t.listener(c.listener("framing = \"octet-counted\""))
    })
    .await;
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    s.write_all(b"5 whole30 half-of-a").await.unwrap();
    s.flush().await.unwrap();
    wait_for(5.0, "whole", || sink.count() == 1).await;
    let m = server.metrics().clone();
    server.shutdown().await;
    let refused = m.sum("auditlb_frames_refused_total", &[]);
    let g = gaps(&cfg.journal_dir());
    eprintln!("refused {refused}, gaps {g:?}");
    assert!(
        refused == 1.0 && g.len() == 1,
        "the half frame vanished without a trace"
    );
}

/// Root CA -> intermediate CA -> client. `client-ca` is the root; `crl` is
/// the root's CRL, which revokes the intermediate (compromised). The
/// client, issued by the revoked intermediate, must not get in.
#[tokio::test]
async fn a_client_under_a_revoked_intermediate_is_refused() {
    let dir = scratch_dir("a2-revoked-intermediate");
    let server_ca = Pki::new(&dir, "servers");
    let server_cert = server_ca.server("server", &["localhost"]);
    let root = Pki::new(&dir, "root");
    let inter = root.intermediate("issuing");
    let client = inter.client("client", "web-1", &[]);
    // The root's CRL revokes the intermediate (compromised).
    let crl_path = root.crl("root", &[inter.as_issued.as_ref().unwrap()]);
    let root_path = root.ca();
    // Control: the same chain without the CRL gets in (the chain itself
    // is good).
    {
        let sink = Sink::start(SinkFraming::Octet).await;
        let cfg = TestConfig::at(&scratch_dir("a2-intermediate-ok"))
            .backend_addrs(&[sink.addr])
            .tls_server(&server_cert, Some(&root_path));
        let server = start(&cfg.toml()).await;
        wait_connected(&server, 1).await;
        let addr = server.listener_addr("in").unwrap();
        let mut s = tls_connect(
            addr,
            client_config(&server_ca.ca(), Some(&client)),
            "localhost",
        )
        .await
        .unwrap();
        s.write_all(b"2 in").await.unwrap();
        s.shutdown().await.unwrap();
        wait_for(5.0, "the frame through the intermediate", || {
            sink.count() == 1
        })
        .await;
        server.shutdown().await;
    }
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&dir, |c| {
        c.tls_server(&server_cert, Some(&root_path))
            .listener_tls(&format!("crl = [\"{}\"]", crl_path.display()))
    })
    .await;
    let r = tls_send(addr, client_config(&server_ca.ca(), Some(&client)), b"2 in").await;
    wait_closed(&server, 1.0).await;
    let got = sink.count();
    let revoked = metric(
        &server,
        "auditlb_tls_handshake_failures_total",
        &[("reason", "revoked")],
    );
    server.shutdown().await;
    eprintln!("client: {r:?}; frames at the backend: {got}; revoked refusals {revoked}");
    assert_eq!(
        (got, revoked),
        (0, 1.0),
        "a client issued by a revoked intermediate CA got in"
    );
}

/// `max-handshakes`: with one handshake allowed at a time, a client that
/// holds it silently makes the next one wait (counted); the silent one is
/// cut at its deadline, and the waiting one then gets its turn and in.
#[tokio::test]
async fn handshakes_beyond_max_handshakes_wait_their_turn() {
    let t = Tls::new("tls-busy");
    let Served {
        sink,
        server,
        addr,
        cfg: _,
    } = serve(&t.dir, |c| {
        t.listener(c)
            .listener_tls("max-handshakes = 1")
            .listener_tls("handshake-timeout = \"2s\"")
    })
    .await;
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    wait_for(5.0, "the silent session", || {
        metric(&server, "auditlb_connections_open", &[]) == 1.0
    })
    .await;
    // Waiting for a turn counts against the waiter's own timeout: started
    // 1 s after the silent one, it waits about 1 s and keeps about 1 s for
    // its handshake (a loaded machine needs some).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let mut s = tls_connect(addr, t.client_cfg(), "localhost")
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        metric(&server, "auditlb_tls_handshake_waits_total", &[]),
        1.0
    );
    assert_eq!(
        metric(
            &server,
            "auditlb_tls_handshake_failures_total",
            &[("reason", "timeout")]
        ),
        1.0
    );
    assert!(waited > Duration::from_millis(500), "no wait: {waited:?}");
    s.write_all(b"2 ok").await.unwrap();
    s.shutdown().await.unwrap();
    wait_for(5.0, "the frame", || sink.count() == 1).await;
    server.shutdown().await;
}
