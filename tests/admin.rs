//! The admin API with roles, against the real binary: each role gets
//! exactly what it is allowed, with bearer tokens and with client
//! certificates; a wrong token, an unknown certificate and no credentials
//! are refused (401/403, counted); `POST /reload` answers with the result
//! (applied, or refused with every problem by key path); `/status` says
//! what runs; `/journal/records` streams the journal as `cat --format
//! jsonl` does, in bounded memory; `/journal/checkpoints` is the anchors
//! file; every request other than metrics and health leaves an ADMIN
//! record, and the journal still verifies intact.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

/// One HTTP/1.1 request; (status, body). `stream` is plain or TLS.
fn request_on<S: Read + Write>(
    mut s: S,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    s.flush().unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        code,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// The data of a chunked body.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

fn request(admin: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    request_on(s, method, path, token)
}

fn sha_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// auditlb with `admin` (the `[admin]` tables) before the rest of `cfg`.
fn start(cfg: &TestConfig, admin: &str) -> (Proc, Log, SocketAddr, std::path::PathBuf) {
    let path = cfg.dir().join("auditlb.toml");
    std::fs::write(&path, format!("{admin}\n{}", cfg.toml())).unwrap();
    let (proc, log) = spawn_auditlb_env(&path, &[]);
    let addr = log.wait_addr("admin endpoint", None);
    (proc, log, addr, path)
}

fn admin_records(journal: &Path) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"type\":\"ADMIN\""))
        .map(str::to_owned)
        .collect()
}

#[test]
fn roles_with_tokens_reload_status_journal_and_the_audit_of_the_auditor() {
    let dir = scratch_dir("admin-tokens");
    let sink = free_addr();
    let cfg = TestConfig::at(&dir).backend_addrs(&[sink]).anchors();
    let admin = format!(
        r#"[admin]
address = "127.0.0.1:0"
[[admin.role]]
name = "monitor"
allow = ["metrics", "health"]
[[admin.role]]
name = "operator"
allow = ["metrics", "health", "reload", "status"]
who = ["token-sha256:{}"]
[[admin.role]]
name = "auditor"
allow = ["metrics", "health", "journal"]
who = ["token-sha256:{}"]
"#,
        sha_hex("op-secret"),
        sha_hex("audit-secret")
    );
    let (mut proc, log, addr, path) = start(&cfg, &admin);
    let op = Some("op-secret");
    let au = Some("audit-secret");
    let wrong = Some("nope");
    // Who gets what.
    for (method, p, token, want) in [
        ("GET", "/metrics", None, 200),
        ("GET", "/healthz", None, 200),
        ("GET", "/status", None, 401),
        ("POST", "/reload", None, 401),
        ("GET", "/journal/records", None, 401),
        ("GET", "/status", op, 200),
        ("GET", "/journal/records", op, 403),
        ("GET", "/journal/checkpoints", op, 403),
        ("GET", "/journal/verify", au, 200),
        ("GET", "/journal/checkpoints", au, 200),
        ("GET", "/status", au, 403),
        ("POST", "/reload", au, 403),
        ("GET", "/metrics", wrong, 401),
        ("GET", "/status", wrong, 401),
        ("GET", "/reload", op, 405),
        ("GET", "/nothing", op, 404),
    ] {
        let (code, body) = request(addr, method, p, token);
        assert_eq!(code, want, "{method} {p} with {token:?}: {body}");
    }
    // /status says what runs.
    let (_, status) = request(addr, "GET", "/status", op);
    for want in [
        "\"pools\":[{\"name\":\"p\"",
        &format!("\"address\":\"{sink}\""),
        "\"listeners\":[{\"name\":\"in\"",
        "\"protocol\":\"syslog\"",
        "\"journal\":{\"durable_seq\":",
    ] {
        assert!(status.contains(want), "{want} not in /status: {status}");
    }
    // Frames, then the journal as the auditor reads it.
    let listener = log.wait_addr("listening", None);
    let mut c = TcpStream::connect(listener).unwrap();
    for i in 0..500 {
        writeln!(c, "<13>1 - h app - - - admin test id={i}").unwrap();
    }
    drop(c);
    until(
        20,
        || "500 frames journaled".into(),
        || {
            let (_, body) = request(addr, "GET", "/journal/records?from=1", au);
            body.matches("\"type\":\"FRAME\"").count() == 500
        },
    );
    let (code, body) = request(addr, "GET", "/journal/records?from=10&to=20", au);
    assert_eq!(code, 200);
    let seqs: Vec<u64> = body
        .lines()
        .filter_map(|l| l.split("\"seq\":").nth(1)?.split(',').next()?.parse().ok())
        .collect();
    assert_eq!(seqs.first(), Some(&10), "{body}");
    assert_eq!(seqs.last(), Some(&20), "{body}");
    let (code, body) = request(addr, "GET", "/journal/records?from=yesterday", au);
    assert_eq!(code, 400, "{body}");
    // A fresh verification: a line when it starts, then the report.
    let (code, body) = request(addr, "GET", "/journal/verify?full=1", au);
    assert_eq!(code, 200, "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert!(lines[0].starts_with("{\"verifying\":"), "{body}");
    // A running journal: nothing wrong, its newest records not anchored
    // yet (exit 2, as `auditlb verify` says of a live journal).
    let report = lines.last().unwrap();
    assert!(
        report.contains("\"failure\":null") && report.contains("\"frames\":500"),
        "{body}"
    );
    // A line per segment walked, as it went.
    assert!(
        lines[1].starts_with("{\"segment\":") && lines[1].contains("\"frames\":500"),
        "{body}"
    );
    let (_, anchors) = request(addr, "GET", "/journal/checkpoints", au);
    assert_eq!(
        anchors,
        std::fs::read_to_string(cfg.anchors_path()).unwrap(),
        "/journal/checkpoints is the anchors file"
    );

    // Reload: a bad file is refused with its problems by key path, a good
    // one applied.
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace(
            "name = \"p\"\nconnect-timeout",
            "name = \"p\"\nconnections = 0\nconnect-timeout",
        ),
    )
    .unwrap();
    let (code, body) = request(addr, "POST", "/reload", op);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("pool[0].connections"), "{body}");
    std::fs::write(&path, good).unwrap();
    let (code, body) = request(addr, "POST", "/reload", op);
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("applied"), "{body}");

    // The counters of refusals moved.
    let m = scrape(addr);
    assert!(
        metric_sum(
            &m,
            "auditlb_admin_refused_total",
            &[("reason", "unauthenticated")]
        ) >= 5.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "auditlb_admin_refused_total",
            &[("reason", "forbidden")]
        ) >= 4.0
    );

    proc.stop_cleanly(&log);
    // The auditor is audited: ADMIN records name who, role, what, outcome;
    // metrics and health leave none.
    let recs = admin_records(&cfg.journal_dir());
    let has = |needles: &[&str]| recs.iter().any(|r| needles.iter().all(|n| r.contains(n)));
    assert!(
        has(&[
            "\"role\":\"auditor\"",
            "GET /journal/records?from=10&to=20",
            "200 streaming"
        ]),
        "{recs:#?}"
    );
    assert!(
        has(&["\"role\":\"operator\"", "POST /reload", "422 refused"]),
        "{recs:#?}"
    );
    assert!(
        has(&["\"role\":\"operator\"", "POST /reload", "200 applied"]),
        "{recs:#?}"
    );
    assert!(
        has(&["\"who\":\"anonymous\"", "GET /status", "401 refused"]),
        "{recs:#?}"
    );
    assert!(has(&["(unknown)", "401 refused"]), "{recs:#?}");
    // Metrics and health leave no record, but for a token no role knows.
    assert!(!recs
        .iter()
        .any(|r| (r.contains("/metrics") || r.contains("/healthz")) && !r.contains("(unknown)")));
    let (code, report) = verify_cli(&cfg.journal_dir(), &cfg.anchors_path());
    assert_eq!(code, 0, "{report}");
}

#[test]
fn roles_with_client_certificates() {
    let dir = scratch_dir("admin-certs");
    let pki = Pki::root(&dir, "ca", "admin test CA", 30);
    let server = pki.server("admin-server", &["localhost"]);
    let sre = pki.client("sre", "sre-alice", &[]);
    let auditor = pki.client("auditor", "someone", &["auditor.example.com"]);
    let other_ca = Pki::root(&dir, "other", "other CA", 30);
    let stranger = other_ca.client("stranger", "sre-mallory", &[]);
    let cfg = TestConfig::at(&dir).backend_addrs(&[free_addr()]).anchors();
    let admin = format!(
        r#"[admin]
address = "127.0.0.1:0"
[admin.tls]
cert = "{}"
key = "{}"
client-auth = "optional"
client-ca = "{}"
[[admin.role]]
name = "monitor"
allow = ["metrics", "health"]
[[admin.role]]
name = "operator"
allow = ["status", "reload"]
who = ["cn:sre-*"]
[[admin.role]]
name = "auditor"
allow = ["journal"]
who = ["dns:auditor.example.com"]
"#,
        server.cert.display(),
        server.key.display(),
        pki.ca().display()
    );
    let (mut proc, log, addr, _) = start(&cfg, &admin);
    let call = |client: Option<&Issued>, method: &str, p: &str| -> Result<(u16, String), String> {
        let cfg = client_config(&pki.ca(), client);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        // Complete the handshake first: a refused certificate fails here.
        s.flush().map_err(|e| e.to_string())?;
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            request_on(&mut s, method, p, None)
        }));
        r.map_err(|_| "no HTTP answer".to_string())
    };
    for (who, client, method, p, want) in [
        ("sre", Some(&sre), "GET", "/status", 200),
        ("sre", Some(&sre), "GET", "/journal/verify", 403),
        ("auditor", Some(&auditor), "GET", "/journal/verify", 200),
        ("auditor", Some(&auditor), "GET", "/status", 403),
        ("nobody", None, "GET", "/metrics", 200),
        ("nobody", None, "GET", "/status", 401),
    ] {
        let (code, body) = call(client, method, p).unwrap_or_else(|e| panic!("{who}: {e}"));
        assert_eq!(code, want, "{who} {method} {p}: {body}");
    }
    // A certificate from another CA does not get past the handshake.
    assert!(
        call(Some(&stranger), "GET", "/status").is_err(),
        "a certificate of an unknown CA was served"
    );
    let m = {
        let (_, body) = call(None, "GET", "/metrics").unwrap();
        body
    };
    assert!(
        metric_sum(
            &m,
            "auditlb_admin_refused_total",
            &[("reason", "tls_handshake")]
        ) >= 1.0,
        "{m}"
    );
    proc.stop_cleanly(&log);
    let recs = admin_records(&cfg.journal_dir());
    assert!(
        recs.iter()
            .any(|r| r.contains("CN=sre-alice") && r.contains("\"role\":\"operator\"")),
        "{recs:#?}"
    );
    let (code, report) = verify_cli(&cfg.journal_dir(), &cfg.anchors_path());
    assert_eq!(code, 0, "{report}");
}

/// `/journal/records` over a journal of about 100 MiB, read slowly: the
/// process's memory does not follow the journal.
#[test]
fn journal_records_stream_in_bounded_memory() {
    let dir = scratch_dir("admin-stream");
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[free_addr()])
        .journal("segment-size = \"16MiB\"");
    let admin = format!(
        r#"[admin]
address = "127.0.0.1:0"
[[admin.role]]
name = "auditor"
allow = ["metrics", "health", "journal"]
who = ["token-sha256:{}"]
"#,
        sha_hex("a")
    );
    let (mut proc, log, addr, _) = start(&cfg, &admin);
    let listener = log.wait_addr("listening", None);
    // 300,000 frames of about 300 bytes (the backend is down: they stay).
    let gen = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb-load"))
        .args([
            "gen",
            "--to",
            &listener.to_string(),
            "--connections",
            "2",
            "--frames",
            "300000",
            "--size",
            "300",
        ])
        .output()
        .unwrap();
    assert!(gen.status.success());
    until(
        30,
        || "300,000 frames journaled".into(),
        || {
            let (_, m) = request(addr, "GET", "/metrics", Some("a"));
            metric_sum(&m, "auditlb_frames_in_total", &[]) >= 300_000.0
        },
    );
    let before = proc.rss_kib();
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /journal/records HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n\r\n"
    )
    .unwrap();
    // Read slowly for a while, then at full speed to the end.
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0usize;
    let mut peak = before;
    for _ in 0..40 {
        total += s.read(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(25));
        peak = peak.max(proc.rss_kib());
    }
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        peak = peak.max(proc.rss_kib());
    }
    eprintln!(
        "streamed {} MiB, RSS {} -> peak {} MiB",
        total >> 20,
        before >> 10,
        peak >> 10
    );
    assert!(total > 100 << 20, "only {total} bytes streamed");
    assert!(
        peak < before + 64 * 1024,
        "RSS grew from {} to {} MiB while streaming {} MiB",
        before >> 10,
        peak >> 10,
        total >> 20
    );
    proc.stop_cleanly(&log);
}

/// Review findings, each as it happened: a stop with the admin endpoint on
/// does not wait out the grace (the endpoint held the journal writer's
/// input open); a full journal (on-full = block) answers 503 for requests
/// it cannot record, quickly, while health still answers; a reload whose
/// client leaves at once is recorded when it starts and with its result;
/// 400, 404 and 405 are recorded as refusals.
#[test]
fn admin_records_under_a_full_journal_a_gone_client_and_a_stop() {
    let dir = scratch_dir("admin-edges");
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[free_addr()])
        .grace("2s")
        .journal("segment-size = \"64KiB\"")
        .journal("disk-budget = \"128KiB\"")
        .journal("on-full = \"block\"");
    let admin = format!(
        r#"[admin]
address = "127.0.0.1:0"
[[admin.role]]
name = "monitor"
allow = ["metrics", "health"]
[[admin.role]]
name = "operator"
allow = ["status", "reload"]
who = ["token-sha256:{}"]
"#,
        sha_hex("op")
    );
    let (mut proc, log, addr, _) = start(&cfg, &admin);
    let op = Some("op");
    // Refusals of every kind are recorded.
    assert_eq!(request(addr, "GET", "/nothing", None).0, 404);
    assert_eq!(request(addr, "GET", "/reload", op).0, 405);
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eDp5\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // A reload whose client leaves at once.
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /reload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer op\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    drop(s);
    until(
        10,
        || format!("the reload never ran:\n{}", log.lines().join("\n")),
        || log.lines().iter().any(|l| l.contains("config reloaded")),
    );
    // Fill the journal: the backend is down, the budget small.
    let listener = log.wait_addr("listening", None);
    let mut c = TcpStream::connect(listener).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let line = format!("<13>1 - h app - - - {} fill\n", "x".repeat(400));
    for _ in 0..2000 {
        if c.write_all(line.as_bytes()).is_err() {
            break;
        }
    }
    until(
        20,
        || "the journal never reached its budget".into(),
        || {
            request(addr, "GET", "/readyz", None)
                .1
                .contains("disk budget")
        },
    );
    // Many more requests than the writer's queue holds: each is answered
    // (503, not recorded, nothing served) and none holds a slot for ever.
    for _ in 0..68 {
        let (code, body) = request(addr, "GET", "/status", op);
        assert!(code == 503 || code == 200, "{code} {body}");
    }
    let (code, body) = request(addr, "GET", "/status", op);
    assert_eq!(code, 503, "{body}");
    assert_eq!(request(addr, "GET", "/healthz", None).0, 200);
    drop(c);
    proc.stop_cleanly(&log);
    let held: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("within grace"))
        .collect();
    // The backend is down, so frames stay undelivered; but the client
    // sessions and the writer's input end at once.
    assert!(
        !held
            .iter()
            .any(|l| l.contains("client sessions did not finish")),
        "{held:?}"
    );
    let recs = admin_records(&cfg.journal_dir());
    let has = |needles: &[&str]| recs.iter().any(|r| needles.iter().all(|n| r.contains(n)));
    assert!(has(&["GET /nothing", "404 refused"]), "{recs:#?}");
    assert!(has(&["GET /reload", "405 refused"]), "{recs:#?}");
    assert!(has(&["GET /status", "400 refused"]), "{recs:#?}");
    assert!(
        has(&["POST /reload", "\"outcome\":\"started\""]),
        "{recs:#?}"
    );
    assert!(has(&["POST /reload", "200 applied"]), "{recs:#?}");
}

/// With the admin endpoint on, a stop with everything delivered is
/// immediate: the endpoint does not keep the journal writer's input open
/// until the grace runs out (a review found every stop waited it out).
#[test]
fn a_stop_with_the_admin_endpoint_does_not_wait_out_the_grace() {
    let dir = scratch_dir("admin-stop");
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[free_addr()])
        .grace("20s");
    let (mut proc, log, addr, _) = start(&cfg, "[admin]\naddress = \"127.0.0.1:0\"\n");
    assert_eq!(request(addr, "GET", "/metrics", None).0, 200);
    proc.stop_cleanly(&log);
    let held: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("within grace"))
        .collect();
    assert!(held.is_empty(), "nothing to deliver, yet: {held:?}");
}
