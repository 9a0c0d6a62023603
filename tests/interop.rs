//! Interop with the real tools: util-linux `logger` as the client (octet
//! counted and plain LF), real `rsyslogd` with `imtcp` as the backend, and
//! over TLS (RFC 5425, gnutls driver, `x509/name`) rsyslog as the sender
//! into auditlb and as the backend auditlb forwards to. `.ci/run`
//! installs rsyslog and rsyslog-gnutls; without them these tests fail and
//! say so.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A private rsyslogd writing every message it receives, raw, to a file.
struct Rsyslog {
    child: Child,
    port: u16,
    out: PathBuf,
    /// The TLS part of its `imtcp` input, if it listens with TLS.
    tls: String,
    _dir: tempfile::TempDir,
}

/// The path of rsyslogd, or a clear failure.
fn rsyslogd() -> &'static str {
    ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("rsyslogd not found: install it with `apt-get install rsyslog rsyslog-gnutls` (.ci/run does)")
}

/// `imtcp`/`omfwd` parameters for the gnutls driver with `x509/name`
/// (`peers`: the names the other side's certificate must carry).
fn gtls_input(ca: &Path, cert: &Issued, peers: &str) -> String {
    format!(
        r#"StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="x509/name" PermittedPeer=["{peers}"] StreamDriver.CAFile="{}" StreamDriver.CertFile="{}" StreamDriver.KeyFile="{}""#,
        ca.display(),
        cert.cert.display(),
        cert.key.display()
    )
}

impl Rsyslog {
    async fn start() -> Rsyslog {
        Self::start_on(None).await
    }

    /// An rsyslogd whose `imtcp` input speaks TLS (`tls`: its parameters).
    async fn start_tls(tls: String) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let mut r = Self::start_in(dir.path().to_owned(), None, out, tls).await;
        r._dir = dir;
        r
    }

    /// Stops this rsyslogd (SIGTERM: it closes its connections and writes
    /// out what it took in) and starts a new one on the same port and file.
    async fn restart(self) -> Rsyslog {
        let (port, out, dir) = (self.port, self.out.clone(), self.dir_path());
        let mut me = self;
        unsafe {
            libc::kill(me.child.id() as i32, libc::SIGTERM);
        }
        let _ = me.child.wait();
        let mut next = Self::start_in(dir, Some(port), out, me.tls.clone()).await;
        // Keep the directory alive with the new process.
        std::mem::swap(&mut next._dir, &mut me._dir);
        next
    }

    fn dir_path(&self) -> std::path::PathBuf {
        self._dir.path().to_owned()
    }

    async fn start_on(port: Option<u16>) -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.log");
        let mut r = Self::start_in(dir.path().to_owned(), port, out, String::new()).await;
        r._dir = dir;
        r
    }

    async fn start_in(
        d: std::path::PathBuf,
        port: Option<u16>,
        out: PathBuf,
        tls: String,
    ) -> Rsyslog {
        let rsyslogd = rsyslogd();
        let d = d.as_path();
        let conf = d.join("rsyslog.conf");
        let port_file = d.join("port");
        let _ = std::fs::remove_file(&port_file);
        let port_arg = port.map_or("0".to_owned(), |p| p.to_string());
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{d}")
main_queue(queue.timeoutShutdown="10000")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{port_arg}" listenPortFileName="{d}/port" {tls})
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{out}" template="raw" flushOnTXEnd="on" asyncWriting="off")
"#,
                d = d.display(),
                out = out.display()
            ),
        )
        .unwrap();
        let child = Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(d.join(format!("rsyslogd-{}.pid", port_arg)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let port = match port {
            // rsyslog writes listenPortFileName only for port 0.
            Some(p) => {
                wait_for(10.0, "rsyslogd to listen again", || {
                    std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
                })
                .await;
                p
            }
            None => {
                wait_for(10.0, "rsyslogd to listen", || {
                    std::fs::read_to_string(&port_file)
                        .ok()
                        .is_some_and(|s| s.trim().parse::<u16>().is_ok())
                })
                .await;
                std::fs::read_to_string(&port_file)
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap()
            }
        };
        Rsyslog {
            child,
            port,
            out,
            tls,
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `logger` sending each line of `messages` as one message over TCP.
fn logger(port: u16, octet_count: bool, tag: &str, messages: &[String]) {
    let mut cmd = Command::new("logger");
    cmd.args([
        "--tcp",
        "-n",
        "127.0.0.1",
        "-P",
        &port.to_string(),
        "-t",
        tag,
    ]);
    if octet_count {
        cmd.arg("--octet-count");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .spawn()
        .expect("logger (util-linux) not found");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        for m in messages {
            writeln!(stdin, "{m}").unwrap();
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "logger failed: {status}");
}

async fn logger_through_auditlb_to_rsyslog(pool_framing: &str) {
    let rs = Rsyslog::start().await;
    let backend = format!("127.0.0.1:{}", rs.port).parse().unwrap();
    let server = start(&config(
        &[(backend, 1, false)],
        "",
        &format!("framing = \"{pool_framing}\""),
    ))
    .await;
    wait_connected(&server, 1).await;
    let port = server.listener_addr("in").unwrap().port();
    let octet: Vec<String> = (0..300)
        .map(|i| format!("octet message {i} with some text"))
        .collect();
    let plain: Vec<String> = (0..300)
        .map(|i| format!("plain message {i} with some text"))
        .collect();
    let p = port;
    let (o2, p2) = (octet.clone(), plain.clone());
    tokio::task::spawn_blocking(move || {
        logger(p, true, "octettag", &o2);
        logger(p, false, "plaintag", &p2);
    })
    .await
    .unwrap();
    wait_for(15.0, "600 messages in rsyslog's file", || {
        rs.lines().len() >= 600
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = rs.lines();
    assert_eq!(got.len(), 600, "no duplicates, nothing extra");
    for (tag, msgs) in [("octettag", &octet), ("plaintag", &plain)] {
        for m in msgs.iter() {
            let hits: Vec<&String> = got.iter().filter(|l| l.ends_with(m.as_str())).collect();
            assert_eq!(hits.len(), 1, "{m:?} arrived {} times", hits.len());
            let line = hits[0];
            // An intact RFC 5424 message as logger wrote it: PRI, version,
            // the tag as APP-NAME, and the text, with no framing left over.
            assert!(line.starts_with("<13>1 "), "{line}");
            assert!(line.contains(&format!(" {tag} ")), "{line}");
        }
    }
    // Per-sender order is kept (one client connection each, one pool).
    let order: Vec<&String> = got.iter().filter(|l| l.contains("octettag")).collect();
    for (i, l) in order.iter().enumerate() {
        assert!(
            l.ends_with(&format!("octet message {i} with some text")),
            "order: {l}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_to_rsyslog_octet_counted_pool() {
    logger_through_auditlb_to_rsyslog("octet-counted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_to_rsyslog_lf_pool() {
    logger_through_auditlb_to_rsyslog("lf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_backend_restarted_mid_stream_loses_nothing() {
    let rs = Rsyslog::start().await;
    let backend = format!("127.0.0.1:{}", rs.port).parse().unwrap();
    let server = start(&config(&[(backend, 1, false)], "", "")).await;
    wait_connected(&server, 1).await;
    let listen = server.listener_addr("in").unwrap();
    let n = 60_000u64;
    let gen = tokio::task::spawn_blocking(move || gen_ids(listen, 2, 60000, &["--rate", "30000"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let rs = rs.restart().await;
    let out = gen.await.unwrap();
    assert!(out.contains("sent=60000"), "{out}");
    let ids = |rs: &Rsyslog| -> HashSet<u64> {
        rs.lines()
            .iter()
            .filter_map(|l| l.rsplit(" id=").next()?.trim().parse().ok())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = ids(&rs);
        if (0..n).all(|i| got.contains(&i)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} ids in rsyslog's file after a restart",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        metric(
            &server,
            "auditlb_backend_transitions_total",
            &[("to", "down")]
        ) >= 1.0
    );
    server.shutdown().await;
}

/// An rsyslogd that takes plain syslog on a local port and forwards it
/// over TLS (octet counted, `x509/name`, presenting `client`) to `to`,
/// retrying until it is taken. Returns the process and its input port.
async fn rsyslog_tls_sender(
    dir: &Path,
    to: std::net::SocketAddr,
    ca: &Path,
    client: &Issued,
    server_name: &str,
) -> (Child, u16) {
    let conf = dir.join("sender.conf");
    let port_file = dir.join("sender.port");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{d}")
main_queue(queue.timeoutShutdown="1000")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{port_file}")
template(name="fwd" type="string" string="%rawmsg%")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp"
       TCP_Framing="octet-counted" template="fwd"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="{server_name}"
       streamDriver.CAFile="{ca}" streamDriver.CertFile="{cert}" streamDriver.KeyFile="{key}"
       action.resumeRetryCount="-1" action.resumeInterval="1")
"#,
            d = dir.display(),
            port_file = port_file.display(),
            port = to.port(),
            ca = ca.display(),
            cert = client.cert.display(),
            key = client.key.display(),
        ),
    )
    .unwrap();
    let child = Command::new(rsyslogd())
        .arg("-n")
        .arg("-f")
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("sender.pid"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sender.stderr")).unwrap())
        .spawn()
        .expect("start rsyslogd");
    wait_for(10.0, "the rsyslog sender to listen", || {
        std::fs::read_to_string(&port_file)
            .ok()
            .is_some_and(|s| s.trim().parse::<u16>().is_ok())
    })
    .await;
    let port = std::fs::read_to_string(&port_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (child, port)
}

/// rsyslog forwarding over TLS (gtls, x509/name, a client certificate)
/// into auditlb: every message arrives, and the journal holds the
/// sender's certificate with each of its frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_sends_over_tls_into_auditlb() {
    let dir = scratch_dir("interop-tls-in");
    let pki = Pki::new(&dir, "syslog");
    let server_cert = pki.server("auditlb", &["localhost", "127.0.0.1"]);
    let sender_cert = pki.client("sender", "client.test", &["client.test"]);
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[sink.addr])
        .tls_server(&server_cert, Some(&pki.ca()))
        .listener_tls("allow = [\"dns:client.test\"]");
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let listen = server.listener_addr("in").unwrap();
    let (mut sender, port) =
        rsyslog_tls_sender(&dir, listen, &pki.ca(), &sender_cert, "localhost").await;
    let n = 500;
    let lines: Vec<String> = (0..n)
        .map(|i| format!("<13>1 2026-11-27T00:00:00Z myhost myapp - - - tls message {i}"))
        .collect();
    {
        use std::io::Write;
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        for l in &lines {
            writeln!(c, "{l}").unwrap();
        }
    }
    wait_for(20.0, "every message at the backend", || sink.count() >= n).await;
    let got: Vec<String> = sink
        .bodies()
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(got, lines, "in order, byte for byte, once each");
    assert_eq!(
        metric(
            &server,
            "auditlb_tls_handshakes_total",
            &[("listener", "in")]
        ),
        1.0
    );
    let _ = sender.kill();
    let _ = sender.wait();
    server.shutdown().await;
    let mut out = Vec::new();
    auditlb::journal::cat::cat(
        &cfg.journal_dir(),
        None,
        None,
        auditlb::journal::cat::Format::Jsonl,
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let frames: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"type\":\"FRAME\""))
        .collect();
    assert_eq!(frames.len(), n);
    for f in frames {
        assert!(
            f.contains(&sender_cert.fingerprint) && f.contains("CN=client.test"),
            "{f}"
        );
    }
}

/// auditlb forwarding over TLS, with its own client certificate, into an
/// rsyslog `imtcp` TLS listener that checks it (x509/name); the listener
/// restarted mid-stream loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditlb_forwards_over_tls_into_rsyslog() {
    let dir = scratch_dir("interop-tls-out");
    let pki = Pki::new(&dir, "siem");
    let rs_cert = pki.server("rsyslog", &["siem.test", "localhost"]);
    let me = pki.client("auditlb", "auditlb.test", &["auditlb.test"]);
    let rs = Rsyslog::start_tls(gtls_input(&pki.ca(), &rs_cert, "auditlb.test")).await;
    let backend = format!("127.0.0.1:{}", rs.port).parse().unwrap();
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[backend])
        .pool_tls(&format!("ca = \"{}\"", pki.ca().display()))
        .pool_tls("server-name = \"siem.test\"")
        .pool_tls(&format!("cert = \"{}\"", me.cert.display()))
        .pool_tls(&format!("key = \"{}\"", me.key.display()));
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let listen = server.listener_addr("in").unwrap();
    let n = 30_000u64;
    let gen = tokio::task::spawn_blocking(move || gen_ids(listen, 2, n, &["--rate", "20000"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rs = rs.restart().await;
    let out = gen.await.unwrap();
    assert!(out.contains(&format!("sent={n}")), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<u64> = rs
            .lines()
            .iter()
            .filter_map(|l| l.rsplit(" id=").next()?.trim().parse().ok())
            .collect();
        if (0..n).all(|i| got.contains(&i)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} ids in rsyslog's file",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.shutdown().await;
}
