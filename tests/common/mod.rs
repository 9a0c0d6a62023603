//! Test helpers: real TCP backends ("sinks") that record the frames they
//! receive, an in-process auditlb started from TOML text, and polling.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use auditlb::config::Config;
use auditlb::server::Server;

/// Frames a sink received: (connection number, frame bytes).
pub type Received = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// How a sink cuts what it receives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SinkFraming {
    Octet,
    Lf,
}

/// A backend: accepts connections and records every frame it reads, with
/// the number of the connection it came on.
pub struct Sink {
    pub addr: SocketAddr,
    framing: SinkFraming,
    pub frames: Received,
    /// Bytes that did not parse as the expected framing.
    pub garbage: Arc<Mutex<usize>>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn bind_reuse(addr: SocketAddr) -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(1024).unwrap();
    TcpListener::from_std(s.into()).unwrap()
}

impl Sink {
    pub async fn start(framing: SinkFraming) -> Sink {
        Self::start_at("127.0.0.1:0".parse().unwrap(), framing)
    }

    pub fn start_at(addr: SocketAddr, framing: SinkFraming) -> Sink {
        let listener = bind_reuse(addr);
        let addr = listener.local_addr().unwrap();
        let mut sink = Sink {
            addr,
            framing,
            frames: Arc::default(),
            garbage: Arc::default(),
            accept: None,
            conns: Arc::default(),
        };
        sink.accept = Some(sink.spawn_accept(listener));
        sink
    }

    fn spawn_accept(&self, listener: TcpListener) -> JoinHandle<()> {
        let frames = self.frames.clone();
        let garbage = self.garbage.clone();
        let conns = self.conns.clone();
        let framing = self.framing;
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                // Dropping the stream later sends RST: a crashed backend.
                SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                n += 1;
                let h = tokio::spawn(read_frames(
                    stream,
                    n,
                    framing,
                    frames.clone(),
                    garbage.clone(),
                ));
                conns.lock().unwrap().push(h);
            }
        })
    }

    /// Crash: listener gone, every connection reset.
    pub fn kill(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Stop accepting new connections but keep the open ones (so only the
    /// active health check notices).
    pub fn stop_accepting(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
    }

    /// Come back on the same address, keeping the recorded frames.
    pub fn restart(&mut self) {
        self.kill();
        let listener = bind_reuse(self.addr);
        self.accept = Some(self.spawn_accept(listener));
    }

    pub fn count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    pub fn take(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut *self.frames.lock().unwrap())
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .map(|(_, f)| f.clone())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An independent RFC 6587 reader (not auditlb's framer), so the tests
/// check auditlb's output framing against the standard, not against itself.
async fn read_frames(
    mut stream: TcpStream,
    conn: u64,
    framing: SinkFraming,
    frames: Received,
    garbage: Arc<Mutex<usize>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        let mut got = Vec::new();
        loop {
            let rest = &buf[pos..];
            match framing {
                SinkFraming::Lf => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        got.push((conn, rest[..i].to_vec()));
                        pos += i + 1;
                    }
                    None => break,
                },
                SinkFraming::Octet => {
                    let Some(sp) = rest.iter().position(|&b| b == b' ') else {
                        break;
                    };
                    let Some(len) = std::str::from_utf8(&rest[..sp])
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        *garbage.lock().unwrap() += rest.len();
                        return;
                    };
                    if rest.len() < sp + 1 + len {
                        break;
                    }
                    got.push((conn, rest[sp + 1..sp + 1 + len].to_vec()));
                    pos += sp + 1 + len;
                }
            }
        }
        buf.drain(..pos);
        if !got.is_empty() {
            frames.lock().unwrap().extend(got);
        }
    }
}

/// Polls `cond` every 10 ms until it holds or `secs` pass.
pub async fn wait_for(secs: f64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh directory under cargo's scratch space for integration tests.
pub fn scratch_dir(what: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{what}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts auditlb in-process from TOML text.
pub async fn start(toml: &str) -> Server {
    let cfg = Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    if let Err(e) = cfg.validate() {
        panic!("{e:?}\n{toml}");
    }
    Server::start(cfg).await.unwrap()
}

/// A config with one listener "in" and one pool "p" over `backends`
/// (address, weight, backup); `pool_extra` goes into the [[pool]] table and
/// `listener_extra` into the [[listener]] table.
pub fn config(
    backends: &[(SocketAddr, u32, bool)],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    let dir = scratch_dir("journal");
    let mut s = format!(
        r#"
[shutdown]
grace = "5s"

[journal]
dir = "{}"
checkpoint-interval = "200ms"
"#,
        dir.display()
    );
    s.push_str(&format!(
        r#"

[[listener]]
name = "in"
address = "127.0.0.1:0"
pool = "p"
{listener_extra}

[[pool]]
name = "p"
connect-timeout = "500ms"
{pool_extra}

[pool.health]
interval = "100ms"
timeout = "100ms"
rise = 2
fall = 2
"#
    ));
    for (a, w, b) in backends {
        s.push_str(&format!(
            "\n[[pool.backend]]\naddress = \"{a}\"\nweight = {w}\nbackup = {b}\n"
        ));
    }
    s
}

/// Waits until every listed backend of pool "p" has an open connection.
pub async fn wait_connected(server: &Server, n: usize) {
    wait_for(5.0, "backends connected", || {
        server.pools()[0].backends[..n]
            .iter()
            .all(|b| b.available())
    })
    .await;
}

/// Sends `lines` as LF frames on one new connection and closes it.
pub async fn send_lf(addr: SocketAddr, lines: &[String]) {
    use tokio::io::AsyncWriteExt;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    c.write_all(&data).await.unwrap();
    c.shutdown().await.unwrap();
}

/// Octet-counted encoding of `frames`.
pub fn octet(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(format!("{} ", f.len()).as_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Frames `msg-<tag>-<i>` for i in range.
pub fn lines(tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("<13>1 - host app - - - msg-{tag}-{i}"))
        .collect()
}

pub fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    server.metrics().sum(name, labels)
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: std::process::Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident memory in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts the `auditlb-load sink` binary; returns it and its address.
pub fn spawn_sink(
    listen: &str,
    framing: &str,
    log: &std::path::Path,
    extra: &[&str],
) -> (Proc, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb-load"))
        .args([
            "sink",
            "--listen",
            listen,
            "--framing",
            framing,
            "--seconds",
            "600",
            "--log",
        ])
        .arg(log)
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("auditlb-load");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .expect("sink address")
        .parse()
        .unwrap();
    (Proc { child }, addr)
}

/// Starts the `auditlb` binary on a config file; returns it and the address
/// of its first listener (from its "listening" log line).
pub fn spawn_auditlb(config: &std::path::Path) -> (Proc, SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("auditlb");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if !sent && line.contains("listening") {
                if let Some(a) = line.split("address=").nth(1) {
                    let _ = tx.send(a.split(' ').next().unwrap_or("").to_owned());
                    sent = true;
                }
            }
            if std::env::var_os("AUDITLB_TEST_LOGS").is_some() {
                eprintln!("[auditlb {}] {line}", std::process::id());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("auditlb did not start listening")
        .parse()
        .unwrap();
    (Proc { child }, addr)
}

/// Runs `auditlb-load gen` to completion.
pub fn run_gen(to: SocketAddr, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb-load"))
        .args(["gen", "--to", &to.to_string()])
        .args(args)
        .output()
        .expect("auditlb-load gen");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `auditlb-load gen` with `connections` clients sending `frames` 200-byte
/// LF lines with unique ids (plus `extra` options such as `--rate`).
pub fn gen_ids(to: SocketAddr, connections: u32, frames: u64, extra: &[&str]) -> String {
    let (c, f) = (connections.to_string(), frames.to_string());
    let mut args = vec!["--connections", &c, "--frames", &f, "--size", "200"];
    args.extend_from_slice(extra);
    run_gen(to, &args)
}

/// The ids (` id=N`) of every complete frame in a sink's raw byte logs
/// (`path`.N, one per connection).
pub fn ids_in_log(path: &std::path::Path, octet_framing: bool) -> Vec<u64> {
    let mut out = Vec::new();
    let dir = path.parent().unwrap();
    let prefix = format!("{}.", path.file_name().unwrap().to_string_lossy());
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            ids_in_stream(
                &std::fs::read(entry.path()).unwrap_or_default(),
                octet_framing,
                &mut out,
            );
        }
    }
    out
}

fn ids_in_stream(b: &[u8], octet_framing: bool, out: &mut Vec<u64>) {
    let mut pos = 0;
    while pos < b.len() {
        let rest = &b[pos..];
        let frame = if octet_framing {
            let Some(sp) = rest.iter().take(12).position(|&c| c == b' ') else {
                break;
            };
            let Some(len) = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                break;
            };
            if rest.len() < sp + 1 + len {
                break;
            }
            pos += sp + 1 + len;
            &rest[sp + 1..sp + 1 + len]
        } else {
            let Some(i) = rest.iter().position(|&c| c == b'\n') else {
                break;
            };
            pos += i + 1;
            &rest[..i]
        };
        if let Some(at) = frame.windows(4).rposition(|w| w == b" id=") {
            if let Some(id) = std::str::from_utf8(&frame[at + 4..])
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                out.push(id);
            }
        }
    }
}

/// A config file for the `auditlb` binary over `backends`, with its journal
/// and anchors in `dir`.
pub fn binary_config(
    dir: &std::path::Path,
    backends: &[SocketAddr],
    pool_extra: &str,
) -> std::path::PathBuf {
    let b: Vec<(SocketAddr, u32, bool)> = backends.iter().map(|a| (*a, 1, false)).collect();
    let cfg = config(&b, "", pool_extra).replacen(
        "[journal]\ndir = ",
        &format!(
            "[journal]\nanchors = \"{}\"\ndir = \"{}\"\n# replaced: ",
            dir.join("anchors.log").display(),
            dir.join("journal").display()
        ),
        1,
    );
    let path = dir.join("auditlb.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// One octet-framed sink behind an in-process auditlb (listener and pool
/// extras as in [`config`]), connected and ready; returns the sink, the
/// server and the listener's address.
pub async fn with_one_backend(
    listener_extra: &str,
    pool_extra: &str,
) -> (Sink, Server, SocketAddr) {
    let sink = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(
        &[(sink.addr, 1, false)],
        listener_extra,
        pool_extra,
    ))
    .await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    (sink, server, addr)
}

/// Waits until the backends' logs hold every id below `n`; returns (unique,
/// total) ids seen.
pub fn wait_all_ids(logs: &[&std::path::Path], n: u64, secs: u64) -> (usize, usize) {
    use std::time::Instant;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = Vec::new();
        for l in logs {
            all.extend(ids_in_log(l, true));
        }
        let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
        let complete = (0..n).all(|i| unique.contains(&i));
        if complete {
            return (unique.len(), all.len());
        }
        if Instant::now() > deadline {
            let missing: Vec<u64> = (0..n).filter(|i| !unique.contains(i)).take(10).collect();
            panic!(
                "after {secs}s: {} of {n} ids arrived, {} missing (first: {missing:?})",
                unique.len(),
                n as usize - unique.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`binary_config`] with extra `[journal]` keys (`journal_extra`, one
/// `key = value` per line).
pub fn binary_config_journal(
    dir: &std::path::Path,
    backends: &[SocketAddr],
    pool_extra: &str,
    journal_extra: &str,
) -> std::path::PathBuf {
    let path = binary_config(dir, backends, pool_extra);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen("[journal]\n", &format!("[journal]\n{journal_extra}\n"), 1);
    std::fs::write(&path, text).unwrap();
    path
}

/// Every frame id `auditlb cat` finds in a journal.
pub fn journaled_ids(journal: &std::path::Path) -> Vec<u64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    out.stdout
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let at = l.windows(4).rposition(|w| w == b" id=")?;
            std::str::from_utf8(&l[at + 4..]).ok()?.parse().ok()
        })
        .collect()
}

/// `auditlb verify --journal J --anchors A` as an auditor runs it: exit
/// code and report.
pub fn verify_cli(journal: &std::path::Path, anchors: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["verify", "--journal"])
        .arg(journal)
        .arg("--anchors")
        .arg(anchors)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
