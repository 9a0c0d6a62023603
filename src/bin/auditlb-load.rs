//! Load generator and counting sink for tests and benchmarks. Loopback only;
//! both stop after a bounded count or time.
//!
//! ```text
//! auditlb-load gen  --to 127.0.0.1:1514 --connections 4 --frames 200000 --size 200 \
//!                   [--framing lf|octet|relp] [--window N] [--rate FRAMES_PER_S] [--id-base N]
//!                   [--tls-ca FILE [--tls-name NAME]]
//! auditlb-load sink --listen 127.0.0.1:0 [--framing lf|octet|relp] [--log FILE]
//!                   [--close-after N] [--stall-after N] [--seconds S] [--expect N]
//!                   [--rcvbuf BYTES] [--tls-cert FILE --tls-key FILE]
//! ```
//! With `--framing relp` the generator is a RELP client (open, `syslog`
//! commands with at most `--window` unanswered, default 1024, then close;
//! it prints how many were answered 200 and how many not) and the sink a
//! RELP server (it answers each message 200 once it is counted and, with
//! `--log`, logged).
//! With `--tls-ca` the generator speaks TLS (checking the server against
//! that CA and `--tls-name`, default `localhost`); with `--tls-cert` and
//! `--tls-key` the sink does (a `--log` is then written after each read).
//! Every generated frame is an RFC 5424 line ending in ` id=N` (N unique
//! across connections). The sink prints `listening ADDR`, counts frames and
//! ids, appends every byte it reads to `--log`.N (one file per connection)
//! before parsing it (so what it got survives a SIGKILL), and at the end
//! prints
//! `frames=… unique=… duplicates=… missing=… (of expect)` and
//! `rate=… frames/s`.

use std::collections::HashSet;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn fail(msg: &str) -> ! {
    eprintln!("auditlb-load: {msg}");
    std::process::exit(1);
}

fn usage() -> ! {
    eprintln!("usage: auditlb-load gen --to ADDR [--connections N] [--frames N] [--size B] [--framing lf|octet] [--rate F] [--id-base N] [--tls-ca FILE [--tls-name NAME]]\n       auditlb-load sink --listen ADDR [--framing lf|octet] [--log FILE] [--close-after N] [--stall-after N] [--rcvbuf BYTES] [--seconds S] [--expect N] [--tls-cert FILE --tls-key FILE]");
    std::process::exit(2);
}

struct Args(Vec<String>);

impl Args {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .position(|a| a == key)
            .and_then(|i| self.0.get(i + 1))
            .map(String::as_str)
    }
    fn num(&self, key: &str, default: u64) -> u64 {
        self.get(key)
            .map_or(default, |v| v.parse().unwrap_or_else(|_| usage()))
    }
    fn addr(&self, key: &str) -> SocketAddr {
        let a: SocketAddr = self
            .get(key)
            .unwrap_or_else(|| usage())
            .parse()
            .unwrap_or_else(|_| usage());
        if !a.ip().is_loopback() {
            eprintln!("auditlb-load: {a} is not a loopback address; refusing");
            std::process::exit(2);
        }
        a
    }
    fn octet(&self) -> bool {
        match self.get("--framing").unwrap_or("lf") {
            "lf" | "relp" => false,
            "octet" | "octet-counted" => true,
            _ => usage(),
        }
    }
    fn relp(&self) -> bool {
        self.get("--framing") == Some("relp")
    }
}

/// A byte stream, plain or TLS.
trait Stream: Read + Write + Send {
    /// Ends the sending side (TLS: close_notify first).
    fn finish(&mut self);
}

impl Stream for TcpStream {
    fn finish(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }
}

fn pem_certs(path: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| fail(&format!("{path}: {e:?}")))
}

/// The generator's TLS client config, from `--tls-ca`.
fn client_tls(
    a: &Args,
) -> Option<(
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
)> {
    let ca = a.get("--tls-ca")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in pem_certs(ca) {
        roots.add(c).unwrap_or_else(|e| fail(&format!("{ca}: {e}")));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(auditlb::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(
        a.get("--tls-name").unwrap_or("localhost").to_owned(),
    )
    .unwrap_or_else(|_| usage());
    Some((Arc::new(cfg), name))
}

/// The sink's TLS server config, from `--tls-cert` and `--tls-key`.
fn server_tls(a: &Args) -> Option<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    let cert = a.get("--tls-cert")?;
    let key = a.get("--tls-key").unwrap_or_else(|| usage());
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
        .unwrap_or_else(|e| fail(&format!("{key}: {e:?}")));
    let cfg = rustls::ServerConfig::builder_with_provider(auditlb::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_no_client_auth()
        .with_single_cert(pem_certs(cert), key)
        .unwrap_or_else(|e| fail(&format!("{cert}: {e}")));
    Some(Arc::new(cfg))
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().cloned() else {
        usage()
    };
    let args = Args(argv);
    match cmd.as_str() {
        "gen" => generate(&args),
        "sink" => sink(&args),
        _ => usage(),
    }
}

fn generate(a: &Args) {
    let to = a.addr("--to");
    let conns = a.num("--connections", 4).max(1);
    let frames = a.num("--frames", 100_000);
    let size = a.num("--size", 200) as usize;
    let octet = a.octet();
    let relp = a.relp();
    let window = a.num("--window", 1024).max(1) as usize;
    let rate = a.num("--rate", 0);
    let base = a.num("--id-base", 0);
    let tls = client_tls(a);
    let started = Instant::now();
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let tls = tls.clone();
            let (answered, refused) = (answered.clone(), refused.clone());
            std::thread::spawn(move || {
                let tcp = TcpStream::connect(to)
                    .unwrap_or_else(|e| fail(&format!("connect to {to}: {e}")));
                tcp.set_nodelay(true).ok();
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                let mut s: Box<dyn Stream> = match tls {
                    None => Box::new(tcp),
                    Some((cfg, name)) => {
                        let conn = rustls::ClientConnection::new(cfg, name)
                            .unwrap_or_else(|e| fail(&format!("TLS: {e}")));
                        Box::new(rustls::StreamOwned::new(conn, tcp))
                    }
                };
                let mine: Vec<u64> = (0..frames).filter(|i| i % conns == c).collect();
                let per_conn_rate = if rate > 0 {
                    rate as f64 / conns as f64
                } else {
                    0.0
                };
                // Frames per write: 64 at full speed; with --rate at most
                // 100 writes a second per connection, so a fleet of slow
                // clients sends a line at a time, as syslog clients do.
                let per_write = if per_conn_rate > 0.0 {
                    ((per_conn_rate / 100.0) as usize).clamp(1, 64)
                } else {
                    64
                };
                let t0 = Instant::now();
                let mut buf = Vec::with_capacity(per_write * (size + 16));
                let mut digits = [0u8; 20];
                let mut client = relp.then(|| RelpClient::open(&mut *s, window));
                let mut line = Vec::with_capacity(size + 16);
                for (k, chunk) in mine.chunks(per_write).enumerate() {
                    buf.clear();
                    // ts= (send time, once per write) lets the sink measure
                    // latency; the rest of a line is copied, not formatted,
                    // so the generator stays far faster than what it loads.
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    let head = format!("<13>1 2026-11-26T00:00:00Z loadgen app{c} - - - ts={now} ");
                    for &i in chunk {
                        let id = decimal(base + i, &mut digits);
                        let pad = size.saturating_sub(head.len() + 4 + id.len());
                        let len = head.len() + pad + 4 + id.len();
                        if let Some(client) = &mut client {
                            line.clear();
                            line.extend_from_slice(head.as_bytes());
                            line.resize(line.len() + pad, b'x');
                            line.extend_from_slice(b" id=");
                            line.extend_from_slice(id);
                            client.push(&line, &mut buf);
                            continue;
                        }
                        if octet {
                            let mut lb = [0u8; 20];
                            buf.extend_from_slice(decimal(len as u64, &mut lb));
                            buf.push(b' ');
                        }
                        buf.extend_from_slice(head.as_bytes());
                        buf.resize(buf.len() + pad, b'x');
                        buf.extend_from_slice(b" id=");
                        buf.extend_from_slice(id);
                        if !octet {
                            buf.push(b'\n');
                        }
                    }
                    if let Some(client) = &mut client {
                        // Room in the window first.
                        client.wait_room(&mut *s, chunk.len());
                    }
                    if s.write_all(&buf).is_err() {
                        eprintln!("auditlb-load gen: connection {c} closed by the server");
                        return;
                    }
                    if per_conn_rate > 0.0 {
                        let due =
                            Duration::from_secs_f64(((k + 1) * per_write) as f64 / per_conn_rate);
                        if let Some(wait) = due.checked_sub(t0.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                }
                if let Some(client) = &mut client {
                    client.close(&mut *s);
                    answered.fetch_add(client.ok, Ordering::Relaxed);
                    refused.fetch_add(client.refused, Ordering::Relaxed);
                }
                s.finish();
                // Wait for the server to close: everything was read.
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "sent={frames} seconds={secs:.3} rate={:.0} frames/s",
        frames as f64 / secs
    );
    if relp {
        println!(
            "answered={} refused={}",
            answered.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        );
    }
}

/// The generator's side of one RELP session (blocking).
struct RelpClient {
    txnr: u32,
    window: usize,
    /// Sent and not yet answered.
    outstanding: usize,
    ok: u64,
    refused: u64,
    dec: auditlb::relp::Decoder,
    rbuf: bytes::BytesMut,
}

impl RelpClient {
    fn open(s: &mut dyn Stream, window: usize) -> RelpClient {
        let mut out = Vec::new();
        auditlb::relp::encode(1, "open", &auditlb::relp::offers(), &mut out);
        s.write_all(&out)
            .unwrap_or_else(|e| fail(&format!("RELP open: {e}")));
        let mut c = RelpClient {
            txnr: 2,
            window,
            outstanding: 1,
            ok: 0,
            refused: 0,
            dec: auditlb::relp::Decoder::new(1 << 20),
            rbuf: bytes::BytesMut::new(),
        };
        while c.outstanding > 0 {
            c.read_answers(s);
        }
        if c.ok != 1 {
            fail("the RELP server refused the open");
        }
        // The open's answer is not a message.
        c.ok = 0;
        c
    }

    /// Encodes one message into `out`.
    fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        auditlb::relp::encode(self.txnr, "syslog", data, out);
        self.txnr = auditlb::relp::next_txnr(self.txnr);
    }

    /// Reads answers until `n` more may be sent; counts them sent.
    fn wait_room(&mut self, s: &mut dyn Stream, n: usize) {
        while self.outstanding + n > self.window.max(n) {
            self.read_answers(s);
        }
        self.outstanding += n;
    }

    /// Takes the answers buffered, or reads more when there are none.
    fn read_answers(&mut self, s: &mut dyn Stream) {
        let before = self.outstanding;
        loop {
            match self.dec.decode(&mut self.rbuf) {
                Ok(Some(f)) if f.command == auditlb::relp::Command::Rsp => {
                    self.outstanding = self.outstanding.saturating_sub(1);
                    match auditlb::relp::parse_rsp(&f.data) {
                        Some(r) if r.ok() => self.ok += 1,
                        _ => self.refused += 1,
                    }
                }
                Ok(Some(f)) if f.command == auditlb::relp::Command::ServerClose => {
                    fail("the RELP server closed the session")
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => fail(&format!("RELP answer: {e}")),
            }
        }
        if self.outstanding < before {
            return;
        }
        let mut chunk = [0u8; 64 * 1024];
        match s.read(&mut chunk) {
            Ok(0) => fail("the RELP server closed the connection"),
            Ok(n) => self.rbuf.extend_from_slice(&chunk[..n]),
            Err(e) => fail(&format!("RELP read: {e}")),
        }
    }

    /// Waits for every answer, then closes the session.
    fn close(&mut self, s: &mut dyn Stream) {
        while self.outstanding > 0 {
            self.read_answers(s);
        }
        let mut out = Vec::new();
        auditlb::relp::encode(self.txnr, "close", b"", &mut out);
        let _ = s.write_all(&out);
    }
}

/// `n` in decimal, written into the end of `out`.
fn decimal(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &out[at..]
}

/// Ids seen by the sink: a bitmap for `0..expect` (lock-free, so the sink
/// stays far faster than what it measures), a set for the others.
struct Ids {
    bits: Vec<AtomicU64>,
    others: Mutex<HashSet<u64>>,
    unique: AtomicU64,
    dups: AtomicU64,
}

impl Ids {
    fn new(expect: u64) -> Ids {
        Ids {
            bits: (0..expect.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            others: Mutex::new(HashSet::new()),
            unique: AtomicU64::new(0),
            dups: AtomicU64::new(0),
        }
    }

    fn add(&self, id: u64) {
        let new = match self.bits.get((id / 64) as usize) {
            Some(w) => {
                let bit = 1u64 << (id % 64);
                w.fetch_or(bit, Ordering::Relaxed) & bit == 0
            }
            None => auditlb::lock(&self.others).insert(id),
        };
        if new {
            self.unique.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dups.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn contains(&self, id: u64) -> bool {
        match self.bits.get((id / 64) as usize) {
            Some(w) => w.load(Ordering::Relaxed) & (1 << (id % 64)) != 0,
            None => auditlb::lock(&self.others).contains(&id),
        }
    }
}

/// What the sink saw.
struct Tally {
    frames: AtomicU64,
    ids: Ids,
    /// Send-to-receive latencies in microseconds (a bounded sample).
    latencies: Mutex<Vec<u32>>,
    /// When the last frame arrived.
    last: Mutex<Option<Instant>>,
}

fn sink(a: &Args) {
    let listen = a.addr("--listen");
    let octet = a.octet();
    let relp = a.relp();
    let close_after = a.num("--close-after", 0);
    let stall_after = a.num("--stall-after", 0);
    let seconds = a.num("--seconds", 600);
    let expect = a.num("--expect", 0);
    // One log file per connection (`FILE.N`): streams must not interleave.
    let log: Option<String> = a.get("--log").map(str::to_owned);
    let tls = server_tls(a);
    let listener = {
        // Bound receive buffer (inherited by accepted sockets), so what a
        // stalled sink holds unread is known: --rcvbuf, default 1MiB.
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::for_address(listen), Type::STREAM, None)
            .unwrap_or_else(|e| fail(&format!("socket: {e}")));
        sock.set_reuse_address(true).ok();
        sock.set_recv_buffer_size(a.num("--rcvbuf", 1 << 20) as usize)
            .ok();
        sock.bind(&listen.into())
            .and_then(|()| sock.listen(4096))
            .unwrap_or_else(|e| fail(&format!("listen on {listen}: {e}")));
        TcpListener::from(sock)
    };
    println!("listening {}", listener.local_addr().expect("local addr"));
    std::io::stdout().flush().ok();
    let tally = Arc::new(Tally {
        frames: AtomicU64::new(0),
        ids: Ids::new(expect),
        latencies: Mutex::new(Vec::new()),
        last: Mutex::new(None),
    });
    let first = Arc::new(Mutex::new(None::<Instant>));
    let done = Arc::new(AtomicBool::new(false));
    {
        let (tally, first, done, log) = (tally.clone(), first.clone(), done.clone(), log.clone());
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(tcp) = conn else { continue };
                let tls = match &tls {
                    Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                        Ok(c) => Some(rustls::StreamOwned::new(
                            c,
                            tcp.try_clone().expect("clone socket"),
                        )),
                        Err(_) => continue,
                    },
                    None => None,
                };
                let mut s = tcp;
                let mut tls = tls;
                let (tally, first, done) = (tally.clone(), first.clone(), done.clone());
                let mut log = log.as_ref().map(|p| {
                    // A restarted sink must not reuse a file: skip taken numbers.
                    let mut k = n;
                    loop {
                        let path = format!("{p}.{k}");
                        match std::fs::OpenOptions::new()
                            .create_new(true)
                            .append(true)
                            .open(&path)
                        {
                            Ok(f) => break f,
                            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => k += 1000,
                            Err(e) => panic!("open {path}: {e}"),
                        }
                    }
                });
                std::thread::spawn(move || {
                    if relp {
                        // RELP: counted, logged, then answered.
                        match &mut tls {
                            Some(t) => relp_sink(t, &tally, &first, log.as_mut()),
                            None => relp_sink(&mut s, &tally, &first, log.as_mut()),
                        }
                        return;
                    }
                    let mut buf = vec![0u8; 1 << 16];
                    let mut pending: Vec<u8> = Vec::new();
                    let mut closed = false;
                    loop {
                        // With a log, bytes are logged before they are taken
                        // off the socket (peek, log, then read): a sink killed
                        // between the two leaves them unread, so its kernel
                        // resets the connection and auditlb sends them again.
                        // Reading first would lose them behind a clean FIN, as
                        // any backend that dies holding data it read would.
                        let got = match (&mut tls, &mut log) {
                            (Some(t), log) => t.read(&mut buf).and_then(|n| {
                                if let Some(l) = log {
                                    l.write_all(&buf[..n])?;
                                }
                                Ok(n)
                            }),
                            (None, Some(l)) => s.peek(&mut buf).and_then(|n| {
                                l.write_all(&buf[..n])?;
                                s.read_exact(&mut buf[..n]).map(|()| n)
                            }),
                            (None, None) => s.read(&mut buf),
                        };
                        let n = match got {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        auditlb::lock(&first).get_or_insert_with(Instant::now);
                        pending.extend_from_slice(&buf[..n]);
                        count(octet, &mut pending, &tally);
                        let total = tally.frames.load(Ordering::Relaxed);
                        if stall_after > 0 && total >= stall_after {
                            // Stop reading, keep the connection: a hung backend.
                            while !done.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                            return;
                        }
                        if close_after > 0 && total >= close_after && !closed {
                            // Close cleanly: FIN, but keep reading what is in flight.
                            let _ = s.shutdown(std::net::Shutdown::Write);
                            closed = true;
                        }
                    }
                });
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if expect > 0 && tally.ids.unique.load(Ordering::Relaxed) >= expect {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done.store(true, Ordering::Relaxed);
    let ids = &tally.ids;
    let frames = tally.frames.load(Ordering::Relaxed);
    let missing = (0..expect).filter(|&i| !ids.contains(i)).count();
    println!(
        "frames={frames} unique={} duplicates={} missing={missing} (of {expect})",
        ids.unique.load(Ordering::Relaxed),
        ids.dups.load(Ordering::Relaxed),
    );
    let first_at = *auditlb::lock(&first);
    let last_at = *auditlb::lock(&tally.last);
    if let (Some(t), Some(l)) = (first_at, last_at) {
        let secs = l.duration_since(t).as_secs_f64().max(1e-6);
        println!("rate={:.0} frames/s over {secs:.3}s", frames as f64 / secs);
    }
    let mut lat = auditlb::lock(&tally.latencies).clone();
    if !lat.is_empty() {
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        println!(
            "latency_us p50={} p99={} max={} samples={}",
            q(0.5),
            q(0.99),
            lat[lat.len() - 1],
            lat.len()
        );
    }
}

/// One RELP session of the sink: every message is counted (and logged)
/// before it is answered 200.
fn relp_sink<S: Read + Write>(
    s: &mut S,
    tally: &Tally,
    first: &Mutex<Option<Instant>>,
    mut log: Option<&mut std::fs::File>,
) {
    use auditlb::relp::{self, Command};
    let mut dec = relp::Decoder::new(1 << 20);
    let mut rbuf = bytes::BytesMut::new();
    let mut chunk = vec![0u8; 1 << 16];
    let mut out = Vec::new();
    let mut lines = Vec::new();
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        auditlb::lock(first).get_or_insert_with(Instant::now);
        rbuf.extend_from_slice(&chunk[..n]);
        out.clear();
        lines.clear();
        let mut end = false;
        let mut messages = false;
        loop {
            match dec.decode(&mut rbuf) {
                Ok(Some(f)) => match f.command {
                    Command::Open => relp::encode_rsp(f.txnr, 200, "OK", &relp::offers(), &mut out),
                    Command::Syslog => {
                        lines.extend_from_slice(&f.data);
                        lines.push(b'\n');
                        messages = true;
                        relp::encode_rsp(f.txnr, 200, "OK", b"", &mut out);
                    }
                    Command::Close => {
                        relp::encode(f.txnr, "rsp", b"", &mut out);
                        relp::encode(0, "serverclose", b"", &mut out);
                        end = true;
                        break;
                    }
                    _ => relp::encode_rsp(f.txnr, 500, "not supported", b"", &mut out),
                },
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if let Some(l) = log.as_mut() {
            if l.write_all(&lines).is_err() {
                return;
            }
        }
        if messages {
            count(false, &mut lines, tally);
        }
        if s.write_all(&out).and_then(|()| s.flush()).is_err() || end {
            return;
        }
    }
}

/// Takes every complete frame out of the front of `buf` and counts it. A
/// scanner of its own rather than auditlb's framer: it checks auditlb's
/// output independently, and it is cheaper (no `Bytes` per frame), so the
/// sink stays far faster than what it measures.
fn count(octet: bool, buf: &mut Vec<u8>, tally: &Tally) {
    let mut got = Vec::new();
    let mut frames = 0u64;
    let mut at = 0;
    let mut first: Option<(usize, usize)> = None;
    loop {
        let rest = &buf[at..];
        let (span, used) = if octet {
            let head = &rest[..rest.len().min(12)];
            let Some(sp) = memchr::memchr(b' ', head) else {
                if head.len() == 12 {
                    // Not octet counting: nothing more to count here.
                    at = buf.len();
                }
                break;
            };
            let Some(len) = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|t| t.parse::<usize>().ok())
            else {
                at = buf.len();
                break;
            };
            if rest.len() < sp + 1 + len {
                break;
            }
            ((at + sp + 1, at + sp + 1 + len), sp + 1 + len)
        } else {
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                break;
            };
            let end = if nl > 0 && rest[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            ((at, at + end), nl + 1)
        };
        at += used;
        if span.0 == span.1 {
            continue;
        }
        frames += 1;
        if let Some(id) = frame_id(&buf[span.0..span.1]) {
            got.push(id);
        }
        first.get_or_insert(span);
    }
    // Latency: one sample per read (not per frame).
    if let Some((a, b)) = first {
        let frame = &buf[a..b];
        if let Some(at) = memchr::memmem::find(frame, b" ts=") {
            let ts = frame[at + 4..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u128, |a, &d| a * 10 + u128::from(d - b'0'));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mut l = auditlb::lock(&tally.latencies);
            if l.len() < 2_000_000 {
                l.push(u32::try_from(now.saturating_sub(ts) / 1000).unwrap_or(u32::MAX));
            }
        }
    }
    buf.drain(..at);
    tally.frames.fetch_add(frames, Ordering::Relaxed);
    if !got.is_empty() {
        *auditlb::lock(&tally.last) = Some(Instant::now());
        for id in got {
            tally.ids.add(id);
        }
    }
}

/// The number a frame ends with, after ` id=` (trailing blanks allowed).
pub fn frame_id(frame: &[u8]) -> Option<u64> {
    let end = frame.len()
        - frame
            .iter()
            .rev()
            .take_while(|b| b.is_ascii_whitespace())
            .count();
    let digits = frame[..end]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let start = end - digits;
    if digits == 0 || digits > 19 || !frame[..start].ends_with(b" id=") {
        return None;
    }
    frame[start..end].iter().try_fold(0u64, |a, &d| {
        a.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(expect: u64) -> Tally {
        Tally {
            frames: AtomicU64::new(0),
            ids: Ids::new(expect),
            latencies: Mutex::new(Vec::new()),
            last: Mutex::new(None),
        }
    }

    #[test]
    fn ids_are_read_from_the_end_of_a_frame() {
        assert_eq!(frame_id(b"<13>1 x id=42"), Some(42));
        assert_eq!(frame_id(b"x id=7 \r"), Some(7));
        assert_eq!(frame_id(b"x id="), None);
        assert_eq!(frame_id(b"x ids=5"), None);
        assert_eq!(frame_id(b"id=5"), None);
        assert_eq!(frame_id(b"x id=99999999999999999999"), None);
        assert_eq!(frame_id(b""), None);
    }

    #[test]
    fn frames_are_counted_at_any_split_and_kept_until_whole() {
        for octet in [false, true] {
            let frames: Vec<String> = (0..50)
                .map(|i| format!("<13>1 h app - - - m{i} id={i}"))
                .collect();
            let mut wire = Vec::new();
            for f in &frames {
                if octet {
                    wire.extend_from_slice(format!("{} {f}", f.len()).as_bytes());
                } else {
                    wire.extend_from_slice(format!("{f}\n").as_bytes());
                }
            }
            for split in [1, 7, 64, wire.len()] {
                let t = tally(50);
                let mut pending = Vec::new();
                for part in wire.chunks(split) {
                    pending.extend_from_slice(part);
                    count(octet, &mut pending, &t);
                }
                assert!(pending.is_empty());
                assert_eq!(t.frames.load(Ordering::Relaxed), 50);
                assert_eq!(t.ids.unique.load(Ordering::Relaxed), 50);
                assert_eq!(t.ids.dups.load(Ordering::Relaxed), 0);
            }
        }
        // Duplicates and ids beyond the bitmap.
        let t = tally(10);
        let mut pending = b"a id=3\na id=3\na id=10000000\n".to_vec();
        count(false, &mut pending, &t);
        assert_eq!(t.ids.unique.load(Ordering::Relaxed), 2);
        assert_eq!(t.ids.dups.load(Ordering::Relaxed), 1);
        assert!(t.ids.contains(3) && t.ids.contains(10_000_000) && !t.ids.contains(4));
    }
}
