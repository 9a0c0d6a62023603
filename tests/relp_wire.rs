//! RELP on the wire: a small RELP client and small scripted RELP servers
//! written here (std sockets on 127.0.0.1, a thread per connection) against
//! the real auditlb binary. The client and the servers parse RELP with
//! their own few lines below, not with auditlb's decoder, so what is
//! checked is auditlb against the protocol, not against itself.
//!
//! What is checked: a listener's `rsp 200` never runs ahead of the journal
//! (a journal blocked on its disk budget, then SIGKILL); protocol errors
//! close the session with a counted reason and a GAP record, refusals that
//! need not close do not, answers come in command order; a stopping
//! auditlb answers what it read, then sends `serverclose`; towards a RELP
//! pool, a refusal settles nothing and the frames go to another backend,
//! the window bounds what is unanswered, a connection lost mid-window sends
//! the unanswered messages again; RELP over TLS between two auditlbs.
//!
//! Every message carries a unique ` id=N` at its end. Waits are bounded
//! and poll; nothing asserts on timing.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command as Cmd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------
// RELP frames, parsed and written by the test's own code.

/// One RELP frame as read off a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wire {
    txnr: u32,
    cmd: String,
    data: Vec<u8>,
}

impl Wire {
    /// The status code of an `rsp` (its first three digits).
    fn code(&self) -> Option<u16> {
        if self.cmd != "rsp" {
            return None;
        }
        std::str::from_utf8(self.data.get(..3)?).ok()?.parse().ok()
    }

    fn show(&self) -> String {
        format!(
            "{} {} {:?}",
            self.txnr,
            self.cmd,
            String::from_utf8_lossy(&self.data[..self.data.len().min(120)])
        )
    }
}

fn bad(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn read_byte(r: &mut impl BufRead) -> io::Result<Option<u8>> {
    let mut b = [0u8; 1];
    match r.read(&mut b)? {
        0 => Ok(None),
        _ => Ok(Some(b[0])),
    }
}

/// Bytes up to `stop` (not included), at most `max`; `None` at an EOF
/// before the first byte.
fn read_field(r: &mut impl BufRead, stop: u8, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        match read_byte(r)? {
            None if out.is_empty() => return Ok(None),
            None => return Err(io::ErrorKind::UnexpectedEof.into()),
            Some(b) if b == stop => return Ok(Some(out)),
            Some(b) => {
                out.push(b);
                if out.len() > max {
                    return Err(bad(format!(
                        "RELP field longer than {max}: {:?}",
                        String::from_utf8_lossy(&out)
                    )));
                }
            }
        }
    }
}

/// `TXNR SP COMMAND SP DATALEN [SP DATA] LF`; `Ok(None)` at an EOF between
/// frames.
fn read_wire(r: &mut impl BufRead) -> io::Result<Option<Wire>> {
    let Some(txnr) = read_field(r, b' ', 9)? else {
        return Ok(None);
    };
    let txnr: u32 = std::str::from_utf8(&txnr)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad txnr {:?}", String::from_utf8_lossy(&txnr))))?;
    let cmd = read_field(r, b' ', 32)?.ok_or_else(|| bad("EOF in a frame".into()))?;
    let cmd = String::from_utf8(cmd).map_err(|e| bad(e.to_string()))?;
    if cmd.is_empty() || !cmd.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(bad(format!("bad command {cmd:?}")));
    }
    let mut digits = Vec::new();
    let end = loop {
        let b = read_byte(r)?.ok_or_else(|| bad("EOF in a frame".into()))?;
        if b.is_ascii_digit() && digits.len() < 9 {
            digits.push(b);
        } else {
            break b;
        }
    };
    let len: usize = std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad datalen in frame {txnr} {cmd}")))?;
    let mut data = vec![0u8; len];
    if len == 0 {
        if end != b'\n' {
            return Err(bad(format!("{txnr} {cmd} 0: no LF after the datalen")));
        }
    } else {
        if end != b' ' {
            return Err(bad(format!("{txnr} {cmd} {len}: no SP after the datalen")));
        }
        r.read_exact(&mut data)?;
        if read_byte(r)? != Some(b'\n') {
            return Err(bad(format!("{txnr} {cmd} {len}: no LF after the data")));
        }
    }
    Ok(Some(Wire { txnr, cmd, data }))
}

fn frame_bytes(txnr: u32, cmd: &str, data: &[u8]) -> Vec<u8> {
    let mut out = format!("{txnr} {cmd} {}", data.len()).into_bytes();
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
    out
}

/// What the test's client and servers offer.
const OFFERS: &[u8] = b"relp_version=0\nrelp_software=relp_wire-test,1\ncommands=syslog";

/// The id of a message: the digits after its last ` id=`.
fn id_of(data: &[u8]) -> Option<u64> {
    let at = data.windows(4).rposition(|w| w == b" id=")?;
    std::str::from_utf8(&data[at + 4..])
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A short syslog message carrying `id`.
fn msg(id: u64) -> Vec<u8> {
    format!("<13>1 2026-11-27T00:00:00Z host app - - - relp wire id={id}").into_bytes()
}

/// A message of about 1 KiB carrying `id`.
fn big_msg(id: u64) -> Vec<u8> {
    format!(
        "<13>1 2026-11-27T00:00:00Z host app - - - {} id={id}",
        "x".repeat(960)
    )
    .into_bytes()
}

// ---------------------------------------------------------------------
// The test's RELP client.

enum Event {
    Frame(Wire),
    /// The server closed the connection (EOF or reset), after the frames
    /// before it.
    Closed(String),
}

/// A RELP client: writes on the test's thread, a reader thread hands each
/// frame over as it comes.
struct Client {
    w: TcpStream,
    rx: mpsc::Receiver<Event>,
    next_txnr: u32,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let w = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        w.set_nodelay(true).unwrap();
        w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = w.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            loop {
                match read_wire(&mut r) {
                    Ok(Some(f)) => {
                        if tx.send(Event::Frame(f)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = tx.send(Event::Closed("EOF".into()));
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Event::Closed(e.to_string()));
                        return;
                    }
                }
            }
        });
        Client {
            w,
            rx,
            next_txnr: 1,
        }
    }

    /// Writes bytes as they are.
    fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    /// Sends a command with the next txnr; returns the txnr.
    fn send(&mut self, cmd: &str, data: &[u8]) -> io::Result<u32> {
        let t = self.next_txnr;
        self.w.write_all(&frame_bytes(t, cmd, data))?;
        self.next_txnr += 1;
        Ok(t)
    }

    /// The next event within `secs`; `None` when nothing came.
    fn next(&self, secs: f64) -> Option<Event> {
        match self.rx.recv_timeout(Duration::from_secs_f64(secs)) {
            Ok(e) => Some(e),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => Some(Event::Closed("reader gone".into())),
        }
    }

    /// The next frame; fails if the connection closes or nothing comes
    /// within 10 s.
    fn frame(&self, what: &str) -> Wire {
        match self.next(10.0) {
            Some(Event::Frame(f)) => f,
            Some(Event::Closed(why)) => panic!("waiting for {what}: connection closed ({why})"),
            None => panic!("waiting for {what}: nothing within 10 s"),
        }
    }

    /// The next frame is `TXNR rsp CODE ...`.
    fn expect_rsp(&self, txnr: u32, code: u16) -> Wire {
        let f = self.frame(&format!("rsp {code} for txnr {txnr}"));
        assert!(
            f.cmd == "rsp" && f.txnr == txnr && f.code() == Some(code),
            "expected `{txnr} rsp {code}` (answers in command order), got `{}`",
            f.show()
        );
        f
    }

    /// Sends every `(command, data, code)` before reading any answer, then
    /// expects `rsp CODE` for each, in command order.
    fn pipeline(&mut self, cmds: &[(&str, &[u8], u16)]) {
        let want: Vec<(u32, u16)> = cmds
            .iter()
            .map(|&(cmd, data, code)| (self.send(cmd, data).unwrap(), code))
            .collect();
        for (t, code) in want {
            self.expect_rsp(t, code);
        }
    }

    /// `open` offering the syslog command, answered 200 with it.
    fn open(&mut self) {
        let t = self.send("open", OFFERS).unwrap();
        let f = self.expect_rsp(t, 200);
        let text = String::from_utf8_lossy(&f.data).into_owned();
        assert!(
            text.lines()
                .any(|l| l.starts_with("commands=") && l[9..].split(',').any(|c| c == "syslog")),
            "the answer to open does not offer commands=syslog: {text:?}"
        );
    }

    /// Frames until the connection closes (within `secs`): what came
    /// before the close.
    fn until_closed(&self, secs: f64, what: &str) -> Vec<Wire> {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left.as_secs_f64()) {
                Some(Event::Frame(f)) => got.push(f),
                Some(Event::Closed(_)) => return got,
                None => panic!(
                    "{what}: the connection was still open after {secs} s; frames so far: {:?}",
                    got.iter().map(Wire::show).collect::<Vec<_>>()
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------
// Scripted RELP servers.

/// A connection accepted by a scripted server.
struct SrvConn {
    /// Number of the connection at its server, from 1.
    n: usize,
    rd: BufReader<TcpStream>,
    w: Arc<Mutex<TcpStream>>,
}

impl SrvConn {
    /// The next command; `None` once the client closed (or reset).
    fn next(&mut self) -> Option<Wire> {
        read_wire(&mut self.rd).ok().flatten()
    }

    fn rsp(&self, txnr: u32, code: u16, text: &str, data: &[u8]) {
        let mut body = format!("{code} {text}").into_bytes();
        if !data.is_empty() {
            body.push(b'\n');
            body.extend_from_slice(data);
        }
        let _ = self
            .w
            .lock()
            .unwrap()
            .write_all(&frame_bytes(txnr, "rsp", &body));
    }

    fn answer_open(&self, f: &Wire) {
        self.rsp(f.txnr, 200, "OK", OFFERS);
    }

    /// As librelp answers `close`: an empty rsp, then serverclose.
    fn answer_close(&self, f: &Wire) {
        let mut out = frame_bytes(f.txnr, "rsp", b"");
        out.extend_from_slice(&frame_bytes(0, "serverclose", b""));
        let _ = self.w.lock().unwrap().write_all(&out);
    }

    /// A well-behaved backend: answers open and close, every message 200
    /// (its id noted in `ids`), anything else 500; `seen` sees each
    /// command first, with this connection's number.
    fn ack_all(mut self, ids: &Mutex<Vec<u64>>, mut seen: impl FnMut(usize, &Wire)) {
        while let Some(f) = self.next() {
            seen(self.n, &f);
            match f.cmd.as_str() {
                "open" => self.answer_open(&f),
                "syslog" => {
                    if let Some(id) = id_of(&f.data) {
                        ids.lock().unwrap().push(id);
                    }
                    self.rsp(f.txnr, 200, "OK", b"");
                }
                "close" => return self.answer_close(&f),
                _ => self.rsp(f.txnr, 500, "unknown command", b""),
            }
        }
    }

    /// Closes the socket in both directions, mid-session.
    fn drop_connection(&self) {
        let _ = self.w.lock().unwrap().shutdown(Shutdown::Both);
    }
}

/// A RELP server on 127.0.0.1: each accepted connection runs `script` on
/// its own thread. auditlb's RELP health checks (open, close) connect here
/// too, every 100 ms.
struct Relpd {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Relpd {
    fn start(script: impl Fn(SrvConn) + Send + Sync + 'static) -> Relpd {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let stopping = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            for s in l.incoming() {
                if stopping.load(Ordering::Acquire) {
                    return;
                }
                let Ok(s) = s else { continue };
                n += 1;
                let _ = s.set_nodelay(true);
                let w = Arc::new(Mutex::new(s.try_clone().unwrap()));
                let conn = SrvConn {
                    n,
                    rd: BufReader::new(s),
                    w,
                };
                let script = script.clone();
                std::thread::spawn(move || script(conn));
            }
        });
        Relpd { addr, stop }
    }
}

impl Drop for Relpd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

/// A plain syslog backend for LF lines: the ids of every line it read.
struct LineSink {
    addr: SocketAddr,
    ids: Arc<Mutex<Vec<u64>>>,
}

impl LineSink {
    fn start() -> LineSink {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let ids: Arc<Mutex<Vec<u64>>> = Arc::default();
        let all = ids.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let all = all.clone();
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s);
                    let mut line = Vec::new();
                    while let Ok(n) = r.read_until(b'\n', &mut line) {
                        if n == 0 || line.last() != Some(&b'\n') {
                            return;
                        }
                        if let Some(id) = id_of(&line[..line.len() - 1]) {
                            all.lock().unwrap().push(id);
                        }
                        line.clear();
                    }
                });
            }
        });
        LineSink { addr, ids }
    }

    fn unique(&self) -> HashSet<u64> {
        self.ids.lock().unwrap().iter().copied().collect()
    }
}

// ---------------------------------------------------------------------
// auditlb as a process, its metrics and its journal.

/// The auditlb binary on a config in `dir`.
struct Lb {
    proc: Proc,
    log: Log,
    dir: PathBuf,
    admin: SocketAddr,
}

impl Lb {
    /// Starts auditlb on the TOML text `toml`, written to `dir/auditlb.toml`.
    fn start(dir: &Path, toml: &str) -> Lb {
        let path = dir.join("auditlb.toml");
        std::fs::write(&path, toml).unwrap();
        let (proc, log) = spawn_auditlb_env(&path, &[]);
        let mut lb = Lb {
            proc,
            log,
            dir: dir.to_owned(),
            admin: "0.0.0.0:0".parse().unwrap(),
        };
        lb.admin = lb.addr("admin endpoint", "");
        lb
    }

    /// The `address=` of the first log line with `what` and `field`; fails
    /// with the log if auditlb exits first.
    fn addr(&mut self, what: &str, field: &str) -> SocketAddr {
        let mut addr: Option<SocketAddr> = None;
        let log = self.log.clone();
        until(
            20,
            || {
                format!(
                    "auditlb never logged {what:?} {field:?}; its log:\n{}",
                    log.lines().join("\n")
                )
            },
            || {
                if let Ok(Some(s)) = self.proc.child.try_wait() {
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "auditlb exited ({s}) before logging {what:?}; its log:\n{}",
                        self.log.lines().join("\n")
                    );
                }
                addr = self
                    .log
                    .lines()
                    .iter()
                    .filter(|l| l.contains(what) && l.contains(field))
                    .find_map(|l| l.split("address=").nth(1)?.split(' ').next()?.parse().ok());
                addr.is_some()
            },
        );
        addr.unwrap()
    }

    /// Where listener `name` listens.
    fn listener(&mut self, name: &str) -> SocketAddr {
        self.addr("listening", &format!("listener={name} "))
    }

    fn journal(&self) -> PathBuf {
        self.dir.join("journal")
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&scrape(self.admin), name, labels)
    }

    /// Waits until `name{labels}` (summed) satisfies `ok` (`want` says how).
    fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: &str,
        ok: impl Fn(f64) -> bool,
        secs: u64,
    ) {
        wait_metric(self.admin, name, labels, want, ok, secs);
    }

    /// SIGTERM; a clean exit within 30 s, no panic logged.
    fn stop(&mut self) {
        self.proc.stop_cleanly(&self.log);
    }

    /// `auditlb verify` with the anchors: intact.
    fn assert_verified(&self) {
        let (code, report) = verify_cli(&self.journal(), &self.dir.join("anchors.log"));
        assert_eq!(
            code,
            0,
            "auditlb verify of {} is not intact:\n{report}",
            self.dir.display()
        );
    }
}

/// `auditlb cat --format FORMAT` of a journal.
fn cat(journal: &Path, format: &str) -> Vec<u8> {
    let out = Cmd::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--format", format, "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "auditlb cat --format {format}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn jsonl(journal: &Path) -> Vec<String> {
    String::from_utf8_lossy(&cat(journal, "jsonl"))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends `ids` as LF lines on one plain syslog connection and closes it.
fn send_lines(addr: SocketAddr, ids: std::ops::Range<u64>) {
    let mut c = TcpStream::connect(addr).unwrap();
    let mut buf = Vec::new();
    for id in ids {
        buf.extend_from_slice(&msg(id));
        buf.push(b'\n');
    }
    c.write_all(&buf).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
}

fn first<T: Ord + Copy>(set: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = set.into_iter().collect();
    v.sort_unstable();
    v.truncate(10);
    v
}

// ---------------------------------------------------------------------
// The RELP listener.

/// A journal that stops taking frames (`on-full = "block"` at the smallest
/// budget) under a RELP client with a window of 64 that sends until no
/// answer comes for 2 s: every message answered `rsp 200` is in the
/// journal after a SIGKILL, and some were sent and never answered (the
/// journal really blocked).
#[test]
fn acks_never_run_ahead_of_the_journal() {
    let dir = scratch_dir("relp-wire-block");
    let down = free_addr();
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .pool("protocol = \"relp\"")
        .backend_addrs(&[down])
        .journal("segment-size = \"64KiB\"")
        .journal("disk-budget = \"128KiB\"")
        .journal("on-full = \"block\"")
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");

    let mut c = Client::connect(addr);
    c.open();
    const WINDOW: usize = 64;
    // Far more than 128 KiB: the budget must stop the journal long before.
    const CAP: u64 = 4_000;
    let mut outstanding: VecDeque<(u32, u64)> = VecDeque::new();
    let mut acked: Vec<u64> = Vec::new();
    let mut next_id = 0u64;
    let mut last_answer = Instant::now();
    let mut write_blocked = false;
    loop {
        while outstanding.len() < WINDOW && next_id < CAP && !write_blocked {
            match c.send("syslog", &big_msg(next_id)) {
                Ok(t) => {
                    outstanding.push_back((t, next_id));
                    next_id += 1;
                }
                // auditlb stopped reading and the socket buffers are full.
                Err(_) => write_blocked = true,
            }
        }
        match c.next(0.2) {
            Some(Event::Frame(f)) => {
                let Some((t, id)) = outstanding.pop_front() else {
                    panic!("an answer with nothing outstanding: {}", f.show());
                };
                assert!(
                    f.cmd == "rsp" && f.txnr == t && f.code() == Some(200),
                    "expected `{t} rsp 200`, got `{}`",
                    f.show()
                );
                acked.push(id);
                last_answer = Instant::now();
            }
            Some(Event::Closed(why)) => panic!(
                "auditlb closed the RELP session ({why}) after {} answers; its log:\n{}",
                acked.len(),
                lb.log.lines().join("\n")
            ),
            None => {
                if outstanding.is_empty() || last_answer.elapsed() >= Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    lb.proc.kill9();
    eprintln!(
        "sent {next_id}, answered 200: {}, outstanding when answers stopped: {}",
        acked.len(),
        outstanding.len()
    );
    assert!(
        !outstanding.is_empty(),
        "all {next_id} messages were answered: the journal never blocked (on-full = block at a 128KiB budget)"
    );
    assert!(
        !acked.is_empty(),
        "nothing was answered before the journal blocked"
    );
    let journaled: HashSet<u64> = journaled_ids(&lb.journal()).into_iter().collect();
    let ahead: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| !journaled.contains(i))
        .collect();
    assert!(
        ahead.is_empty(),
        "{} of {} messages answered `rsp 200` are not in the journal after a SIGKILL (first: {:?}); journaled: {}",
        ahead.len(),
        acked.len(),
        first(ahead.iter().copied()),
        journaled.len()
    );
}

/// Garbage, a first command other than `open`, an `open` without the
/// syslog command: the session ends (counted, recorded). An unknown
/// command, an oversize message with `oversize = "drop"`: `rsp 500` and the
/// session goes on; with `truncate` the message is answered 200 and
/// journaled cut to max-frame. `close`: its `rsp`, `serverclose`, EOF.
/// Answers come in command order throughout.
#[test]
fn protocol_errors_close_with_a_reason_and_a_record() {
    let dir = scratch_dir("relp-wire-errors");
    const MAX: usize = 128;
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .listener(&format!("max-frame = \"{MAX}B\""))
        .listener("oversize = \"drop\"")
        .pool("protocol = \"relp\"")
        .backend_addrs(&[free_addr()])
        .anchors()
        .admin("127.0.0.1:0");
    // A second RELP listener with the default `oversize = "truncate"`.
    let toml = format!(
        "{}\n[[listener]]\nname = \"trunc\"\naddress = \"127.0.0.1:0\"\npool = \"p\"\nprotocol = \"relp\"\nmax-frame = \"{MAX}B\"\n",
        cfg.toml()
    );
    let mut lb = Lb::start(&dir, &toml);
    let addr = lb.listener("in");
    let trunc = lb.listener("trunc");
    let malformed = |lb: &Lb| {
        (
            lb.metric(
                "auditlb_frames_refused_total",
                &[("listener", "in"), ("reason", "malformed")],
            ),
            lb.metric(
                "auditlb_connections_closed_total",
                &[("listener", "in"), ("reason", "malformed")],
            ),
        )
    };
    // Both counters one up from `before`.
    let one_more = |lb: &Lb, before: (f64, f64), what: &str| {
        for (name, was) in [
            ("auditlb_frames_refused_total", before.0),
            ("auditlb_connections_closed_total", before.1),
        ] {
            lb.wait_metric(
                name,
                &[("listener", "in"), ("reason", "malformed")],
                &format!("{} ({what})", was + 1.0),
                |v| v >= was + 1.0,
                10,
            );
        }
    };

    // (a) Garbage: closed, refused and closed as malformed.
    let before = malformed(&lb);
    let mut c = Client::connect(addr);
    c.raw(b"hello, this is not RELP\n").unwrap();
    let got = c.until_closed(10.0, "garbage");
    assert!(
        got.is_empty(),
        "answers to garbage: {:?}",
        got.iter().map(Wire::show).collect::<Vec<_>>()
    );
    one_more(&lb, before, "garbage refused and closed");

    // (b) A first command other than open: closed, nothing answered.
    let before = malformed(&lb);
    let mut c = Client::connect(addr);
    c.send("syslog", &msg(1)).unwrap();
    let got = c.until_closed(10.0, "syslog before open");
    assert!(
        got.is_empty(),
        "answers to a syslog before open: {:?}",
        got.iter().map(Wire::show).collect::<Vec<_>>()
    );
    one_more(&lb, before, "syslog before open refused and closed");

    // (c) open without commands=syslog: rsp 500, then closed.
    let mut c = Client::connect(addr);
    c.send(
        "open",
        b"relp_version=0\nrelp_software=relp_wire-test,1\ncommands=other",
    )
    .unwrap();
    // Checked last, so that the other cases are checked whatever it does.
    let open_refused = c.until_closed(10.0, "open without commands=syslog");

    // (d) An unknown command after open: rsp 500 in its turn, the session
    // goes on. Everything pipelined, answers checked in command order.
    let mut c = Client::connect(addr);
    c.pipeline(&[
        ("open", OFFERS, 200),
        ("syslog", &msg(10), 200),
        ("starttls", b"", 500),
        ("syslog", &msg(11), 200),
        ("syslog", &msg(12), 200),
        ("frobnicate", b"some data", 500),
        ("syslog", &msg(13), 200),
    ]);
    // Still open: one more round trip.
    let t = c.send("syslog", &msg(14)).unwrap();
    c.expect_rsp(t, 200);

    // (e) oversize = "drop": rsp 500 and a GAP for each (one under the
    // decoder's 4 KiB floor, one over it), the next message is answered 200.
    let gaps_before = lb.metric(
        "auditlb_frames_refused_total",
        &[("listener", "in"), ("reason", "oversize")],
    );
    let over = |id: u64, len: usize| {
        let mut m = format!("<13>1 - host app - - - oversize {id} ").into_bytes();
        m.resize(len - format!(" id={id}").len(), b'o');
        m.extend_from_slice(format!(" id={id}").as_bytes());
        m
    };
    c.pipeline(&[
        ("syslog", &over(20, 300), 500),
        ("syslog", &msg(21), 200),
        ("syslog", &over(22, 10_000), 500),
        ("syslog", &msg(23), 200),
    ]);
    lb.wait_metric(
        "auditlb_frames_refused_total",
        &[("listener", "in"), ("reason", "oversize")],
        &format!("{} (two oversize refused)", gaps_before + 2.0),
        |v| v >= gaps_before + 2.0,
        10,
    );

    // (f) close: the syslog before it answered, then `rsp` for close, then
    // `0 serverclose 0`, then EOF.
    let s = c.send("syslog", &msg(24)).unwrap();
    let t = c.send("close", b"").unwrap();
    let got = c.until_closed(10.0, "close");
    let shown: Vec<String> = got.iter().map(Wire::show).collect();
    assert!(
        got.len() == 3
            && got[0].txnr == s
            && got[0].code() == Some(200)
            && got[1].txnr == t
            && got[1].cmd == "rsp"
            && got[2] == Wire { txnr: 0, cmd: "serverclose".into(), data: vec![] },
        "after `{t} close`: expected `{s} rsp 200`, `{t} rsp`, `0 serverclose 0`, EOF; got {shown:?}"
    );

    // Truncate (the default): answered 200, journaled cut to max-frame.
    let mut c = Client::connect(trunc);
    c.open();
    let long_a = over(30, 300);
    let long_b = over(31, 10_000);
    c.pipeline(&[
        ("syslog", &long_a, 200),
        ("syslog", &msg(32), 200),
        ("syslog", &long_b, 200),
        ("syslog", &msg(33), 200),
    ]);
    let t = c.send("close", b"").unwrap();
    let got = c.until_closed(10.0, "close on trunc");
    assert_eq!(
        got.len(),
        2,
        "{:?}",
        got.iter().map(Wire::show).collect::<Vec<_>>()
    );
    assert_eq!(got[1].cmd, "serverclose", "after `{t} rsp`");

    lb.stop();
    lb.assert_verified();
    let raw = cat(&lb.journal(), "raw");
    let lines: Vec<&[u8]> = raw.split(|&b| b == b'\n').collect();
    for long in [&long_a, &long_b] {
        let cut = &long[..MAX];
        assert!(
            lines.contains(&cut),
            "the {}-byte message is not journaled as its first {MAX} bytes {:?}",
            long.len(),
            String::from_utf8_lossy(cut)
        );
    }
    let journaled: HashSet<u64> = journaled_ids(&lb.journal()).into_iter().collect();
    for id in [10, 11, 12, 13, 14, 21, 23, 24, 32, 33] {
        assert!(
            journaled.contains(&id),
            "message id={id} (answered 200) is not in the journal"
        );
    }
    for id in [1, 20, 22, 30, 31] {
        assert!(
            !journaled.contains(&id),
            "id={id} is in the journal with its id: refused, or cut before it"
        );
    }
    let records = jsonl(&lb.journal());
    let gaps = |reason: &str| {
        records
            .iter()
            .filter(|l| {
                l.contains("\"type\":\"GAP\"")
                    && l.contains(&format!("\"reason\":\"{reason}\""))
                    && l.contains("\"listener\":\"in\"")
            })
            .count()
    };
    assert_eq!(
        gaps("oversize"),
        2,
        "GAP records with reason oversize (two dropped)"
    );
    assert!(
        gaps("malformed") >= 2,
        "GAP records with reason malformed: {} (garbage, syslog before open)",
        gaps("malformed")
    );
    assert!(
        open_refused.len() == 1
            && open_refused[0].txnr == 1
            && open_refused[0].code() == Some(500),
        "an open without commands=syslog must be answered `1 rsp 500` before the close; got {:?} then the close",
        open_refused.iter().map(Wire::show).collect::<Vec<_>>()
    );
}

/// A session with messages answered; the client goes on sending (paced,
/// for longer than auditlb reads while it stops) and auditlb gets SIGTERM:
/// the client gets answers (200, in command order) for some or none of
/// them, then `0 serverclose 0`, then EOF. Every message answered 200 is in
/// the journal, which verifies intact.
#[test]
fn a_stopping_auditlb_answers_what_it_read_then_sends_serverclose() {
    let dir = scratch_dir("relp-wire-stop");
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .pool("protocol = \"relp\"")
        .backend_addrs(&[free_addr()])
        .anchors()
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    let mut c = Client::connect(addr);
    c.open();
    let mut acked = Vec::new();
    for id in 0..100 {
        let t = c.send("syslog", &msg(id)).unwrap();
        assert_eq!(t as u64, id + 2);
        c.expect_rsp(t, 200);
        acked.push(id);
    }
    // From here on message `id` goes as txnr `id + 2`, 50 every 10 ms
    // (5,000/s) for up to 6 s, until a write fails: still sending when
    // auditlb stops reading (2.5 s after the SIGTERM).
    let mut w = c.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut id = 100u64;
        let started = Instant::now();
        while id < 30_100 {
            let mut buf = Vec::new();
            for i in id..id + 50 {
                buf.extend_from_slice(&frame_bytes(i as u32 + 2, "syslog", &msg(i)));
            }
            if w.write_all(&buf).is_err() {
                break;
            }
            id += 50;
            let due = started + Duration::from_millis((id - 100) / 5);
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
        }
        id
    });
    std::thread::sleep(Duration::from_millis(300));
    lb.proc.signal(libc::SIGTERM);
    let got = c.until_closed(20.0, "answers after SIGTERM");
    let sent_upto = writer.join().unwrap();
    let mut rest = got.iter();
    let mut next = 102u32;
    let mut serverclose = false;
    for f in rest.by_ref() {
        if f.cmd == "serverclose" {
            assert_eq!(
                f,
                &Wire {
                    txnr: 0,
                    cmd: "serverclose".into(),
                    data: vec![]
                }
            );
            serverclose = true;
            break;
        }
        assert!(
            f.cmd == "rsp" && f.txnr == next && f.code() == Some(200),
            "expected `{next} rsp 200` (in command order), got `{}`",
            f.show()
        );
        acked.push(u64::from(next) - 2);
        next += 1;
    }
    let answered_after = next - 102;
    let after: Vec<String> = rest.map(Wire::show).collect();
    assert!(
        serverclose,
        "no `0 serverclose 0` before the EOF ({answered_after} answers after the SIGTERM)"
    );
    assert!(after.is_empty(), "frames after serverclose: {after:?}");
    eprintln!(
        "after the SIGTERM: {answered_after} of {} sent answered, then serverclose and EOF",
        sent_upto - 100
    );
    lb.stop();
    lb.assert_verified();
    let journaled: HashSet<u64> = journaled_ids(&lb.journal()).into_iter().collect();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|i| !journaled.contains(i))
        .collect();
    assert!(
        missing.is_empty(),
        "{} messages answered 200 are not in the journal (first: {:?})",
        missing.len(),
        first(missing.iter().copied())
    );
}

// ---------------------------------------------------------------------
// The RELP pool.

/// Per connection of a scripted server: the (txnr, command) it read.
type Commands = Arc<Mutex<HashMap<usize, Vec<(u32, String)>>>>;

/// Backend A takes the session and refuses every message (`rsp 500
/// busy`); backend B takes everything. Every frame reaches B once, A's
/// refusals are counted and sent again, A goes down; B's txnrs per
/// connection are 1 (open), then 2, 3, ... without a gap.
#[test]
fn a_backend_that_refuses_gets_nothing_settled_and_the_frames_go_elsewhere() {
    let refused = Arc::new(AtomicUsize::new(0));
    let a_refusals = refused.clone();
    let a = Relpd::start(move |mut c| {
        while let Some(f) = c.next() {
            match f.cmd.as_str() {
                "open" => c.answer_open(&f),
                "syslog" => {
                    a_refusals.fetch_add(1, Ordering::Relaxed);
                    c.rsp(f.txnr, 500, "busy", b"");
                }
                "close" => return c.answer_close(&f),
                _ => c.rsp(f.txnr, 500, "unknown command", b""),
            }
        }
    });
    let b_ids: Arc<Mutex<Vec<u64>>> = Arc::default();
    let b_cmds: Commands = Arc::default();
    let (ids, cmds) = (b_ids.clone(), b_cmds.clone());
    let b = Relpd::start(move |c| {
        c.ack_all(&ids, |n, f| {
            cmds.lock()
                .unwrap()
                .entry(n)
                .or_default()
                .push((f.txnr, f.cmd.clone()));
        })
    });
    let dir = scratch_dir("relp-wire-refuse");
    let cfg = TestConfig::at(&dir)
        .pool("protocol = \"relp\"")
        .backend_addrs(&[a.addr, b.addr])
        .anchors()
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    let a_label = a.addr.to_string();
    let pool_a = [("pool", "p"), ("backend", a_label.as_str())];
    lb.wait_metric(
        "auditlb_backend_up",
        &[("pool", "p")],
        "2 (both up)",
        |v| v == 2.0,
        20,
    );

    const N: u64 = 2_000;
    send_lines(addr, 0..N);
    let unique =
        |ids: &Mutex<Vec<u64>>| -> HashSet<u64> { ids.lock().unwrap().iter().copied().collect() };
    until(
        30,
        || {
            let got = unique(&b_ids);
            format!(
                "{} of {N} ids reached B (missing, first: {:?}); A refused {}; the RELP series:\n{}",
                got.len(),
                first((0..N).filter(|i| !got.contains(i))),
                refused.load(Ordering::Relaxed),
                relp_series(&scrape(lb.admin))
            )
        },
        || unique(&b_ids).len() == N as usize,
    );
    let got = unique(&b_ids);
    assert!(
        got.iter().all(|&i| i < N),
        "ids that were never sent reached B"
    );
    let all = b_ids.lock().unwrap().len();
    assert_eq!(
        all,
        N as usize,
        "B never failed, yet {} duplicates reached it",
        all - N as usize
    );

    let a_refused = refused.load(Ordering::Relaxed) as f64;
    let text = scrape(lb.admin);
    let series = relp_series(&text);
    let nacks = metric_sum(&text, "auditlb_relp_backend_nacks_total", &pool_a);
    assert!(
        a_refused > 0.0,
        "A was never sent a message (round robin over two backends)"
    );
    assert!(
        nacks > 0.0 && nacks <= a_refused,
        "auditlb_relp_backend_nacks_total for A is {nacks}, A answered {a_refused} rsp 500:\n{series}"
    );
    assert!(
        metric_sum(&text, "auditlb_relp_resent_total", &[("pool", "p")]) > 0.0,
        "nothing counted as sent again:\n{series}"
    );
    assert!(
        metric_sum(
            &text,
            "auditlb_backend_transitions_total",
            &[("pool", "p"), ("backend", a_label.as_str()), ("to", "down")]
        ) >= 1.0,
        "A, refusing every message, was never marked down:\n{series}"
    );
    assert_eq!(
        metric_sum(&text, "auditlb_relp_backend_acks_total", &pool_a),
        0.0,
        "acks counted for A, which acknowledged nothing:\n{series}"
    );

    // B's transaction numbers: open is 1, then one more per command.
    let cmds = b_cmds.lock().unwrap().clone();
    let mut data_conns = 0;
    for (n, list) in &cmds {
        assert_eq!(
            list.first(),
            Some(&(1, "open".to_string())),
            "B's connection {n} did not start with `1 open`"
        );
        for (i, (t, cmd)) in list.iter().enumerate() {
            assert_eq!(
                *t as usize,
                i + 1,
                "B's connection {n}: command {} ({cmd}) has txnr {t}",
                i + 1
            );
        }
        if list.iter().any(|(_, c)| c == "syslog") {
            data_conns += 1;
        }
    }
    assert!(data_conns >= 1, "B got no syslog command");

    lb.stop();
    lb.assert_verified();
    let journaled: HashSet<u64> = journaled_ids(&lb.journal()).into_iter().collect();
    assert_eq!(journaled, got, "the journal and B disagree on the ids");
}

/// State of one connection of the slow backend.
#[derive(Default)]
struct Slow {
    /// Syslog txnrs read and not answered yet.
    pending: VecDeque<u32>,
    last_read: Option<Instant>,
    closed: bool,
}

/// `relp-window = 8`, one backend that answers only once no command has
/// come for 150 ms: at no time more than 8 messages are unanswered on a
/// connection, and 8 is reached; every message arrives.
#[test]
fn the_window_bounds_unanswered_messages() {
    let max_seen = Arc::new(AtomicUsize::new(0));
    let ids: Arc<Mutex<Vec<u64>>> = Arc::default();
    let (max, got) = (max_seen.clone(), ids.clone());
    let backend = Relpd::start(move |mut c| {
        let st: Arc<Mutex<Slow>> = Arc::default();
        // The answering side: everything pending, once the client is quiet.
        let (st2, w) = (st.clone(), c.w.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(20));
            let mut s = st2.lock().unwrap();
            if s.closed {
                return;
            }
            if s.last_read
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(150))
            {
                let mut out = Vec::new();
                for t in s.pending.drain(..) {
                    out.extend_from_slice(&frame_bytes(t, "rsp", b"200 OK"));
                }
                s.last_read = None;
                if w.lock().unwrap().write_all(&out).is_err() {
                    return;
                }
            }
        });
        while let Some(f) = c.next() {
            let mut s = st.lock().unwrap();
            match f.cmd.as_str() {
                "open" => c.answer_open(&f),
                "syslog" => {
                    if let Some(id) = id_of(&f.data) {
                        got.lock().unwrap().push(id);
                    }
                    s.pending.push_back(f.txnr);
                    s.last_read = Some(Instant::now());
                    max.fetch_max(s.pending.len(), Ordering::Relaxed);
                }
                "close" => {
                    for t in std::mem::take(&mut s.pending) {
                        c.rsp(t, 200, "OK", b"");
                    }
                    c.answer_close(&f);
                    break;
                }
                _ => c.rsp(f.txnr, 500, "unknown command", b""),
            }
        }
        st.lock().unwrap().closed = true;
    });
    let dir = scratch_dir("relp-wire-window");
    let cfg = TestConfig::at(&dir)
        .pool("protocol = \"relp\"")
        .pool("relp-window = 8")
        .pool("connections = 1")
        .backend_addrs(&[backend.addr])
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    lb.wait_metric(
        "auditlb_backend_up",
        &[("pool", "p")],
        "1",
        |v| v == 1.0,
        20,
    );
    const N: u64 = 200;
    send_lines(addr, 0..N);
    let unique = || -> HashSet<u64> { ids.lock().unwrap().iter().copied().collect() };
    until(
        40,
        || {
            let u = unique();
            format!(
                "{} of {N} ids reached the backend (most unanswered at once: {}); the RELP series:\n{}",
                u.len(),
                max_seen.load(Ordering::Relaxed),
                relp_series(&scrape(lb.admin))
            )
        },
        || unique().len() == N as usize,
    );
    let max = max_seen.load(Ordering::Relaxed);
    eprintln!("most messages unanswered at once: {max}");
    assert!(
        max <= 8,
        "{max} messages unanswered at once with relp-window = 8"
    );
    assert_eq!(
        max, 8,
        "the window of 8 was never filled with {N} messages to send"
    );
    lb.stop();
}

/// A backend answers the first 20 messages of its first session, then
/// closes the socket with more outstanding: the next session gets every
/// one of those again; every id is answered 200 in the end;
/// `auditlb_relp_resent_total` counts the resends.
#[test]
fn a_backend_connection_lost_mid_window_sends_the_unanswered_again() {
    const K: usize = 20;
    const N: u64 = 400;
    let victim = Arc::new(AtomicBool::new(false));
    // The ids the first session left unanswered; the ids answered 200 by
    // later sessions (by connection number).
    let unanswered: Arc<Mutex<Vec<u64>>> = Arc::default();
    let later: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let acked: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let victim_conn = Arc::new(AtomicUsize::new(0));
    let (v, un, lt, ak, vc) = (
        victim.clone(),
        unanswered.clone(),
        later.clone(),
        acked.clone(),
        victim_conn.clone(),
    );
    let backend = Relpd::start(move |mut c| {
        let mut is_victim: Option<bool> = None;
        let mut answered = 0;
        let mut left: Vec<u64> = Vec::new();
        while let Some(f) = c.next() {
            match f.cmd.as_str() {
                "open" => c.answer_open(&f),
                "syslog" => {
                    let id = id_of(&f.data).expect("a message with an id");
                    let me = *is_victim.get_or_insert_with(|| !v.swap(true, Ordering::AcqRel));
                    if !me {
                        lt.lock().unwrap().push((c.n, id));
                        ak.lock().unwrap().insert(id);
                        c.rsp(f.txnr, 200, "OK", b"");
                        continue;
                    }
                    vc.store(c.n, Ordering::Release);
                    if answered < K {
                        answered += 1;
                        ak.lock().unwrap().insert(id);
                        c.rsp(f.txnr, 200, "OK", b"");
                        continue;
                    }
                    left.push(id);
                    if left.len() >= 10 {
                        *un.lock().unwrap() = std::mem::take(&mut left);
                        c.drop_connection();
                        return;
                    }
                }
                "close" => return c.answer_close(&f),
                _ => c.rsp(f.txnr, 500, "unknown command", b""),
            }
        }
    });
    let dir = scratch_dir("relp-wire-lost");
    let cfg = TestConfig::at(&dir)
        .pool("protocol = \"relp\"")
        .pool("connections = 1")
        .backend_addrs(&[backend.addr])
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    lb.wait_metric(
        "auditlb_backend_up",
        &[("pool", "p")],
        "1",
        |v| v == 1.0,
        20,
    );
    send_lines(addr, 0..N);
    until(
        30,
        || {
            let a = acked.lock().unwrap();
            format!(
                "{} of {N} ids answered 200 (missing, first: {:?}); the RELP series:\n{}",
                a.len(),
                first((0..N).filter(|i| !a.contains(i))),
                relp_series(&scrape(lb.admin))
            )
        },
        || acked.lock().unwrap().len() == N as usize,
    );
    let left = unanswered.lock().unwrap().clone();
    assert!(
        left.len() >= 10,
        "the first session never had 10 messages outstanding past the first {K}"
    );
    let v = victim_conn.load(Ordering::Acquire);
    let again: HashSet<u64> = later
        .lock()
        .unwrap()
        .iter()
        .filter(|(n, _)| *n > v)
        .map(|&(_, id)| id)
        .collect();
    let lost: Vec<u64> = left
        .iter()
        .copied()
        .filter(|i| !again.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of the {} ids left unanswered by the lost connection never came on a later one: {:?}",
        lost.len(),
        left.len(),
        first(lost.iter().copied())
    );
    lb.wait_metric(
        "auditlb_relp_resent_total",
        &[("pool", "p")],
        &format!(">= {} (the unanswered, sent again)", left.len()),
        |x| x >= left.len() as f64,
        10,
    );
    lb.stop();
}

// ---------------------------------------------------------------------
// RELP over TLS.

/// The test client → auditlb #1 (plain RELP listener, RELP pool over TLS
/// with a client certificate) → auditlb #2 (RELP listener over TLS,
/// client certificate required; plain LF pool) → a line sink. Every
/// message arrives and is answered 200; #2 journals its client's
/// connection as `relp+tls`; both journals verify intact.
#[test]
fn relp_over_tls_between_two_auditlbs() {
    let dir = scratch_dir("relp-wire-tls");
    let pki = Pki::new(&dir.join("pki"), "relp");
    let server = pki.server("lb2", &["localhost", "127.0.0.1"]);
    let client = pki.client("lb1", "auditlb-1", &["lb1.example.com"]);
    let sink = LineSink::start();

    let dir2 = dir.join("lb2");
    std::fs::create_dir_all(&dir2).unwrap();
    let cfg2 = TestConfig::at(&dir2)
        .listener("protocol = \"relp\"")
        .tls_server(&server, Some(&pki.ca()))
        .pool("framing = \"lf\"")
        .backend_addrs(&[sink.addr])
        .anchors()
        .admin("127.0.0.1:0");
    let mut lb2 = Lb::start(&dir2, &cfg2.toml());
    let addr2 = lb2.listener("in");

    let dir1 = dir.join("lb1");
    std::fs::create_dir_all(&dir1).unwrap();
    let cfg1 = TestConfig::at(&dir1)
        .listener("protocol = \"relp\"")
        .pool("protocol = \"relp\"")
        .pool_tls(&format!("ca = \"{}\"", pki.ca().display()))
        .pool_tls("server-name = \"localhost\"")
        .pool_tls(&format!("cert = \"{}\"", client.cert.display()))
        .pool_tls(&format!("key = \"{}\"", client.key.display()))
        .backend_addrs(&[addr2])
        .anchors()
        .admin("127.0.0.1:0");
    let mut lb1 = Lb::start(&dir1, &cfg1.toml());
    let addr1 = lb1.listener("in");
    lb1.wait_metric(
        "auditlb_backend_up",
        &[("pool", "p")],
        "1 (#2 up over TLS)",
        |v| v == 1.0,
        20,
    );

    const N: u64 = 500;
    let mut c = Client::connect(addr1);
    c.open();
    let mut outstanding: VecDeque<u32> = VecDeque::new();
    for id in 0..N {
        outstanding.push_back(c.send("syslog", &msg(id)).unwrap());
        if outstanding.len() == 64 {
            c.expect_rsp(outstanding.pop_front().unwrap(), 200);
        }
    }
    while let Some(t) = outstanding.pop_front() {
        c.expect_rsp(t, 200);
    }
    let t = c.send("close", b"").unwrap();
    let got = c.until_closed(10.0, "close");
    assert!(
        got.len() == 2 && got[0].txnr == t && got[1].cmd == "serverclose",
        "{:?}",
        got.iter().map(Wire::show).collect::<Vec<_>>()
    );
    until(
        30,
        || {
            let u = sink.unique();
            format!(
                "{} of {N} ids reached the sink behind auditlb #2 (missing, first: {:?}); #1's RELP series:\n{}\n#2's:\n{}",
                u.len(),
                first((0..N).filter(|i| !u.contains(i))),
                relp_series(&scrape(lb1.admin)),
                relp_series(&scrape(lb2.admin))
            )
        },
        || sink.unique().len() == N as usize,
    );
    lb1.wait_metric(
        "auditlb_relp_backend_acks_total",
        &[("pool", "p")],
        &format!(">= {N}"),
        |v| v >= N as f64,
        10,
    );
    assert!(
        lb2.metric("auditlb_tls_handshakes_total", &[("listener", "in")]) >= 1.0,
        "no TLS handshake counted at #2"
    );
    lb1.stop();
    lb2.stop();
    lb1.assert_verified();
    lb2.assert_verified();
    for lb in [&lb1, &lb2] {
        let ids: HashSet<u64> = journaled_ids(&lb.journal()).into_iter().collect();
        assert_eq!(ids, (0..N).collect(), "journal of {}", lb.dir.display());
    }
    let records = jsonl(&lb2.journal());
    let tls_conns: Vec<&String> = records
        .iter()
        .filter(|l| l.contains("\"type\":\"CONNECTION\"") && l.contains("\"tls\":{"))
        .collect();
    assert!(
        tls_conns.iter().any(|l| l.contains("\"protocol\":\"relp+tls\"")),
        "no CONNECTION record with \"tls\":{{..\"protocol\":\"relp+tls\"..}} in #2's journal; CONNECTION records:\n{}",
        records
            .iter()
            .filter(|l| l.contains("\"type\":\"CONNECTION\""))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        tls_conns
            .iter()
            .any(|l| l.contains("CN=auditlb-1") || l.contains("auditlb-1")),
        "#2's CONNECTION record does not name #1's client certificate:\n{}",
        tls_conns
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let frames = records
        .iter()
        .filter(|l| l.contains("\"type\":\"FRAME\"") && l.contains("\"protocol\":\"relp+tls\""))
        .count();
    assert_eq!(
        frames, N as usize,
        "#2's FRAME records referring to a relp+tls connection"
    );
}

/// A RELP backend that answers `open` and then never answers a message
/// (hung, yet it reads and passes the open/close health check) must not
/// hold up the pool: with round robin over it and a fast backend, the fast
/// one keeps getting its share while the hung one's window is full, long
/// before `tcp-user-timeout` cuts the hung connection. (Before the fix the
/// hung connection stopped reading the dispatcher's channel once its
/// window was full; the dispatcher then blocked on that channel and B got
/// about 66 frames.) Once the hung backend is cut off, everything reaches
/// the fast one.
#[test]
fn a_hung_relp_backend_does_not_hold_up_the_others() {
    let hung_conns: Arc<Mutex<Vec<Arc<Mutex<TcpStream>>>>> = Arc::default();
    let conns = hung_conns.clone();
    let hung = Relpd::start(move |mut c| {
        conns.lock().unwrap().push(c.w.clone());
        while let Some(f) = c.next() {
            match f.cmd.as_str() {
                "open" => c.answer_open(&f),
                "close" => return c.answer_close(&f),
                // Read, never answered.
                _ => {}
            }
        }
    });
    let b_ids: Arc<Mutex<Vec<u64>>> = Arc::default();
    let ids = b_ids.clone();
    let fast = Relpd::start(move |c| c.ack_all(&ids, |_, _| {}));
    let dir = scratch_dir("relp-wire-hung");
    let cfg = TestConfig::at(&dir)
        .pool("protocol = \"relp\"")
        .pool("relp-window = 2")
        .pool("connections = 1")
        .pool("tcp-user-timeout = \"60s\"")
        .backend_addrs(&[hung.addr, fast.addr])
        .anchors()
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    lb.wait_metric(
        "auditlb_backend_up",
        &[("pool", "p")],
        "2 (both up)",
        |v| v == 2.0,
        20,
    );
    // 400 lines, a few at a time (small batches, as a trickle of clients
    // sends them), each on its own connection.
    const N: u64 = 400;
    for start in (0..N).step_by(4) {
        send_lines(addr, start..start + 4);
        std::thread::sleep(Duration::from_millis(10));
    }
    let unique =
        |ids: &Mutex<Vec<u64>>| -> HashSet<u64> { ids.lock().unwrap().iter().copied().collect() };
    // Round robin: the fast backend's share is about half.
    until(
        20,
        || {
            format!(
                "the fast backend got {} of {N} while the hung one holds its window (tcp-user-timeout 60s); the pool is held up by the hung backend",
                unique(&b_ids).len()
            )
        },
        || unique(&b_ids).len() as u64 >= N * 2 / 5,
    );
    // The hung backend gone (its listener closed, its connections cut):
    // what it held is sent again, to the fast one.
    drop(hung);
    for w in hung_conns.lock().unwrap().iter() {
        let _ = w.lock().unwrap().shutdown(Shutdown::Both);
    }
    lb.wait_metric(
        "auditlb_relp_resent_total",
        &[("pool", "p")],
        "> 0",
        |v| v > 0.0,
        20,
    );
    until(
        30,
        || format!("{} of {N} reached the fast backend", unique(&b_ids).len()),
        || unique(&b_ids).len() as u64 == N,
    );
    lb.stop();
    lb.assert_verified();
}

/// The client's edges of a session: a client that half-closes after
/// sending still gets every answer; bytes after `close` are not taken for
/// a command cut off (no GAP, no refusal counted); a command cut off by a
/// stop is recorded (GAP "incomplete"). The session ends with EOF (no
/// reset) in each case.
#[test]
fn half_close_close_and_a_command_cut_at_stop() {
    let dir = scratch_dir("relp-wire-edges");
    let sink = LineSink::start();
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .backend_addrs(&[sink.addr])
        .pool("framing = \"lf\"")
        .anchors()
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");

    // Half-close: 500 messages, then FIN; all 500 answered, then EOF.
    let mut c = Client::connect(addr);
    c.open();
    let sent: Vec<u32> = (0..500)
        .map(|id| c.send("syslog", &msg(id)).unwrap())
        .collect();
    c.w.shutdown(Shutdown::Write).unwrap();
    let got = c.until_closed(20.0, "answers after a half-close");
    let answered: Vec<u32> = got
        .iter()
        .filter(|f| f.cmd == "rsp" && f.code() == Some(200))
        .map(|f| f.txnr)
        .collect();
    assert_eq!(
        answered,
        sent,
        "a client that half-closed got {} of its 500 answers",
        answered.len()
    );

    // Bytes after close, in the same write: close is answered, nothing
    // after it is a cut command.
    let mut c = Client::connect(addr);
    c.open();
    let mut bytes = frame_bytes(2, "syslog", &msg(1000));
    bytes.extend_from_slice(&frame_bytes(3, "close", b""));
    bytes.extend_from_slice(b"4 syslog 18 <13>after cl");
    c.raw(&bytes).unwrap();
    let got = c.until_closed(10.0, "answers to close");
    let shown: Vec<String> = got.iter().map(Wire::show).collect();
    assert!(
        got.len() >= 2
            && got[0].txnr == 2
            && got[0].code() == Some(200)
            && got[1].txnr == 3
            && got[1].cmd == "rsp",
        "expected `2 rsp 200`, `3 rsp`, then serverclose: {shown:?}"
    );
    lb.wait_metric(
        "auditlb_relp_acks_total",
        &[("listener", "in")],
        ">= 501",
        |v| v >= 501.0,
        10,
    );
    assert_eq!(
        lb.metric(
            "auditlb_frames_refused_total",
            &[("listener", "in"), ("reason", "incomplete")]
        ),
        0.0,
        "bytes after close were counted as a command cut off"
    );

    // A command cut off by a stop: recorded.
    let mut c = Client::connect(addr);
    c.open();
    let t = c.send("syslog", &msg(2000)).unwrap();
    c.expect_rsp(t, 200);
    c.raw(b"3 syslog 30 <13>cut off by the st").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    lb.proc.signal(libc::SIGTERM);
    let got = c.until_closed(15.0, "serverclose after SIGTERM");
    assert!(
        got.iter().any(|f| f.cmd == "serverclose" && f.txnr == 0),
        "no serverclose: {:?}",
        got.iter().map(Wire::show).collect::<Vec<_>>()
    );
    lb.stop();
    let gaps: Vec<String> = jsonl(&lb.journal())
        .into_iter()
        .filter(|l| l.contains("\"type\":\"GAP\""))
        .collect();
    assert_eq!(
        gaps.len(),
        1,
        "exactly one GAP (the command cut at the stop) expected: {gaps:?}"
    );
    assert!(gaps[0].contains("\"reason\":\"incomplete\""), "{gaps:?}");
    lb.assert_verified();
}

/// A journal blocked on its budget stops the session reading: a frame
/// half read at that moment is not the client's slowness, so the frame
/// timeout (1 s here) does not cut the client off while reading waits on
/// the journal.
#[test]
fn a_blocked_journal_does_not_trip_the_frame_timeout() {
    let dir = scratch_dir("relp-wire-blocked-timeout");
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .listener("frame-timeout = \"1s\"")
        .backend_addrs(&[free_addr()])
        .journal("segment-size = \"64KiB\"")
        .journal("disk-budget = \"128KiB\"")
        .journal("on-full = \"block\"")
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    let mut c = Client::connect(addr);
    c.open();
    // Many small messages at once: reads end in the middle of one.
    let mut w = c.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for id in 0..40_000u64 {
            buf.extend_from_slice(&frame_bytes(id as u32 + 2, "syslog", &msg(id)));
        }
        // Stops when auditlb no longer reads (the write times out).
        let _ = w.write_all(&buf);
    });
    // Answers until the journal blocks, then none for 3 s.
    let mut answers = 0;
    loop {
        match c.next(3.0) {
            Some(Event::Frame(_)) => answers += 1,
            Some(Event::Closed(why)) => panic!(
                "the session was closed ({why}) after {answers} answers; closes: {}",
                relp_series(&scrape(lb.admin))
            ),
            None => break,
        }
    }
    let closed_ft = lb.metric(
        "auditlb_connections_closed_total",
        &[("listener", "in"), ("reason", "frame_timeout")],
    );
    let incomplete = lb.metric(
        "auditlb_frames_refused_total",
        &[("listener", "in"), ("reason", "incomplete")],
    );
    assert_eq!(
        (closed_ft, incomplete),
        (0.0, 0.0),
        "a client held back by a blocked journal was cut off for a slow frame ({answers} answers)"
    );
    lb.proc.kill9();
    let _ = writer.join();
}

/// A client that sends and never reads its answers does not hold up a
/// stop: the session gives up on it within its drain time, well inside
/// the shutdown grace, and the process stops cleanly.
#[test]
fn a_client_that_never_reads_does_not_hold_up_the_stop() {
    let dir = scratch_dir("relp-wire-unread");
    let sink = LineSink::start();
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .backend_addrs(&[sink.addr])
        .pool("framing = \"lf\"")
        .grace("8s")
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    // A small receive buffer, never read after open.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(&frame_bytes(1, "open", OFFERS)).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = Vec::new();
    for id in 0..200_000u64 {
        buf.extend_from_slice(&frame_bytes(id as u32 + 2, "syslog", &msg(id)));
    }
    // Until auditlb stops reading (its answers fill our small buffer).
    let _ = s.write_all(&buf);
    lb.wait_metric(
        "auditlb_relp_acks_total",
        &[("listener", "in")],
        "> 0",
        |v| v > 0.0,
        10,
    );
    lb.stop();
    let held: Vec<String> = lb
        .log
        .lines()
        .into_iter()
        .filter(|l| l.contains("did not finish within grace"))
        .collect();
    assert!(
        held.is_empty(),
        "a client that never reads held up the stop: {held:?}"
    );
    drop(s);
}

/// A client that pipelines 40,000 messages (more than auditlb's cap of
/// 16,384 unanswered commands) in one go, then `close`, gets every answer
/// in command order and the close answered; an empty message between
/// others is answered in its turn (answering it at once, ahead of the
/// message before it, fails here). Whether the cap itself is reached
/// depends on how fast the journal syncs: this does not force it.
#[test]
fn pipelining_and_empty_messages_keep_command_order() {
    let dir = scratch_dir("relp-wire-cap");
    let sink = LineSink::start();
    let cfg = TestConfig::at(&dir)
        .listener("protocol = \"relp\"")
        .backend_addrs(&[sink.addr])
        .pool("framing = \"lf\"")
        .admin("127.0.0.1:0");
    let mut lb = Lb::start(&dir, &cfg.toml());
    let addr = lb.listener("in");
    let mut c = Client::connect(addr);
    c.open();
    // An empty message after a whole one, in the same write.
    let mut bytes = frame_bytes(2, "syslog", &msg(0));
    bytes.extend_from_slice(&frame_bytes(3, "syslog", b""));
    c.raw(&bytes).unwrap();
    c.expect_rsp(2, 200);
    c.expect_rsp(3, 200);
    // 40,000 messages and a close, written while answers are read.
    const N: u32 = 40_000;
    let mut w = c.w.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::new();
        for i in 0..N {
            buf.extend_from_slice(&frame_bytes(i + 4, "syslog", &msg(u64::from(i) + 1)));
        }
        buf.extend_from_slice(&frame_bytes(N + 4, "close", b""));
        w.write_all(&buf).unwrap();
    });
    let got = c.until_closed(40.0, "answers to 40,000 pipelined messages and close");
    writer.join().unwrap();
    let rsps: Vec<&Wire> = got.iter().filter(|f| f.cmd == "rsp").collect();
    assert_eq!(
        rsps.len() as u32,
        N + 1,
        "{} answers to {N} messages and a close",
        rsps.len()
    );
    for (i, f) in rsps.iter().enumerate() {
        assert_eq!(f.txnr, i as u32 + 4, "answers out of command order at {i}");
    }
    assert!(
        got.last().is_some_and(|f| f.cmd == "serverclose"),
        "close not followed by serverclose"
    );
    assert_eq!(
        lb.metric(
            "auditlb_frames_refused_total",
            &[("listener", "in"), ("reason", "incomplete")]
        ),
        0.0
    );
    lb.stop();
}
