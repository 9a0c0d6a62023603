//! RELP end to end with real rsyslog (Debian's `rsyslog-relp`): rsyslog
//! forwards with `omrelp` into an auditlb RELP listener, and auditlb's RELP
//! pool delivers to rsyslog `imrelp` receivers that write every message to
//! a file. Every message carries a unique ` id=N`; the tests count ids in
//! the receivers' files and wait on files and metrics, never on a sleep.
//! Faults: auditlb SIGKILLed mid-stream and restarted on its journal, a
//! receiver SIGKILLed mid-stream and restarted. Without rsyslog-relp these
//! tests fail and say so.
//!
//! What they rest on, checked by hand with rsyslogd 8.2302 and librelp
//! 1.11 (Debian 12):
//! - `imrelp` takes `port="0"` and binds an ephemeral port, but has no
//!   `listenPortFileName`: the port is read from /proc (the listening
//!   socket among the process's descriptors). A new rsyslogd binds the same
//!   port again right after a SIGKILL, with clients still connected.
//! - With `main_queue(queue.type="Direct")` and `omfile` with
//!   `asyncWriting="off" flushOnTXEnd="on"`, imrelp answers `rsp 200` only
//!   after omfile wrote the message: a RELP client that read the file at
//!   every `rsp 200` found 0 of 14,000 acknowledged messages missing
//!   (windows 1, 64, and 2 sessions of 128). With the default main queue
//!   (FixedArray) imrelp acknowledges before the write (123 of 3,000; the
//!   first before the file existed), so a SIGKILLed receiver would lose
//!   acknowledged messages: the receivers here run Direct.
//! - `%rawmsg%` at imrelp is the `syslog` command's DATA, byte for byte;
//!   at imtcp it is the line without its LF.
//! - omrelp's `windowSize` is its window (librelp's default 128). With the
//!   default, omrelp did about 4,000 messages/s into imrelp on loopback;
//!   `windowSize="1024"` moved 20,000 in under half a second.
//! - omrelp with `action.resumeRetryCount="-1"` and an in-memory
//!   (LinkedList) action queue loses nothing when its RELP server is
//!   SIGKILLed mid-stream and comes back on the same port: it sends again
//!   what was not acknowledged (20,000 of 20,000 arrived).
//! - A SIGKILLed rsyslogd leaves its pid file, and rsyslogd refuses to
//!   start while the pid in it exists: the pid file goes before each start.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// rsyslogd's path, once the RELP modules are known to be installed.
fn rsyslogd() -> &'static str {
    let bin = ["/usr/sbin/rsyslogd", "/sbin/rsyslogd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("rsyslogd not found: install it with `apt-get install rsyslog rsyslog-relp`");
    let dirs = module_dirs();
    assert!(
        dirs.iter()
            .any(|d| d.join("omrelp.so").exists() && d.join("imrelp.so").exists()),
        "rsyslog-relp not installed (no omrelp.so and imrelp.so in {dirs:?}): apt-get install rsyslog-relp"
    );
    bin
}

/// Where distributions keep rsyslog's modules (`/usr/lib/<triplet>/rsyslog`
/// on Debian).
fn module_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for lib in ["/usr/lib", "/usr/lib64", "/lib", "/usr/local/lib"] {
        dirs.push(Path::new(lib).join("rsyslog"));
        for e in std::fs::read_dir(lib).into_iter().flatten().flatten() {
            dirs.push(e.path().join("rsyslog"));
        }
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// TCP ports the process `pid` listens on: its socket inodes, found among
/// the LISTEN entries of /proc/PID/net/tcp{,6}.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            Some(
                l.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); 0A: LISTEN
            if f.len() > 9 && f[3] == "0A" && inodes.contains(f[9]) {
                if let Some(p) = f[1]
                    .rsplit(':')
                    .next()
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                {
                    ports.push(p);
                }
            }
        }
    }
    ports
}

/// What an rsyslogd in `dir` wrote to its stderr.
fn stderr_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("rsyslogd.stderr")).unwrap_or_default()
}

/// Starts `rsyslogd -n -f DIR/rsyslog.conf -i DIR/rsyslogd.pid` on `conf`,
/// its stderr appended to DIR/rsyslogd.stderr.
fn spawn_rsyslogd(dir: &Path, conf: &str) -> Proc {
    let bin = rsyslogd();
    let conf_path = dir.join("rsyslog.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let pid = dir.join("rsyslogd.pid");
    // A SIGKILLed rsyslogd leaves its pid file behind.
    let _ = std::fs::remove_file(&pid);
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("rsyslogd.stderr"))
        .unwrap();
    let child = Command::new(bin)
        .arg("-n")
        .arg("-f")
        .arg(&conf_path)
        .arg("-i")
        .arg(&pid)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start rsyslogd");
    Proc { child }
}

/// Fails, with rsyslogd's stderr, if the process has exited.
fn assert_running(p: &mut Proc, dir: &Path, what: &str) {
    if let Ok(Some(status)) = p.child.try_wait() {
        panic!(
            "{what} in {} exited ({status}); if it could not load imrelp/omrelp: apt-get install rsyslog-relp\n{}",
            dir.display(),
            stderr_of(dir)
        );
    }
}

/// The ids (` id=N` at the end of a line) of every complete line of a file.
fn ids_in_file(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap_or_default();
    // Only LF-terminated lines: a line being written may be cut short.
    let end = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    data[..end]
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            std::str::from_utf8(l)
                .ok()?
                .rsplit_once(" id=")?
                .1
                .trim()
                .parse::<u64>()
                .ok()
        })
        .collect()
}

/// An rsyslog taking RELP (`imrelp`) and writing each message's DATA as one
/// line (`%rawmsg%`) to DIR/out-K.log, K counting its starts. It answers
/// `rsp 200` only once the line is written (see the module docs), so what
/// it acknowledged survives its SIGKILL.
struct Receiver {
    proc: Option<Proc>,
    dir: PathBuf,
    /// 0 until the first start has bound an ephemeral port; then kept.
    port: u16,
    starts: u32,
}

impl Receiver {
    fn start(dir: PathBuf) -> Receiver {
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Receiver {
            proc: None,
            dir,
            port: 0,
            starts: 0,
        };
        r.run();
        r
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn out(&self, start: u32) -> PathBuf {
        self.dir.join(format!("out-{start}.log"))
    }

    /// Starts rsyslogd: on an ephemeral port the first time, then on the
    /// same port; returns once it listens.
    fn run(&mut self) {
        assert!(self.proc.is_none(), "receiver already running");
        self.starts += 1;
        let out = self.out(self.starts);
        let conf = format!(
            r#"global(workDirectory="{d}")
# Direct: imrelp answers rsp 200 only after omfile wrote the message (with
# the default FixedArray main queue it answers before).
main_queue(queue.type="Direct")
module(load="imrelp")
input(type="imrelp" address="127.0.0.1" port="{port}")
template(name="raw" type="string" string="%rawmsg%\n")
action(type="omfile" file="{out}" template="raw" asyncWriting="off" flushOnTXEnd="on")
"#,
            d = self.dir.display(),
            port = self.port,
            out = out.display()
        );
        let mut p = spawn_rsyslogd(&self.dir, &conf);
        let pid = p.child.id();
        let (want, dir) = (self.port, self.dir.clone());
        let mut bound = 0;
        until(
            20,
            || {
                format!(
                    "the rsyslog imrelp receiver in {} never listened (on port {want}, 0: any):\n{}",
                    dir.display(),
                    stderr_of(&dir)
                )
            },
            || {
                assert_running(&mut p, &dir, "the rsyslog imrelp receiver");
                bound = listening_ports(pid)
                    .into_iter()
                    .find(|&port| want == 0 || port == want)
                    .unwrap_or(0);
                bound != 0
            },
        );
        self.port = bound;
        self.proc = Some(p);
    }

    fn kill9(&mut self) {
        self.proc
            .take()
            .expect("receiver to kill is running")
            .kill9();
    }

    /// Every id it wrote, in all its lives (with duplicates).
    fn ids(&self) -> Vec<u64> {
        (1..=self.starts)
            .flat_map(|k| ids_in_file(&self.out(k)))
            .collect()
    }

    /// The ids it wrote during its `start`th run (1: the first).
    fn ids_of_run(&self, start: u32) -> Vec<u64> {
        ids_in_file(&self.out(start))
    }
}

/// An rsyslog taking LF lines on a local TCP port (`imtcp`) and forwarding
/// each line as one RELP message (`omrelp`) to `to`, from an in-memory
/// action queue, retrying forever: what it took in it delivers at least
/// once, whatever happens to the RELP server.
struct Sender {
    proc: Proc,
    dir: PathBuf,
    /// Its imtcp input.
    port: u16,
}

impl Sender {
    fn start(dir: PathBuf, to: SocketAddr) -> Sender {
        std::fs::create_dir_all(&dir).unwrap();
        let port_file = dir.join("input.port");
        let conf = format!(
            r#"global(workDirectory="{d}")
main_queue(queue.size="200000")
module(load="imtcp")
module(load="omrelp")
input(type="imtcp" address="127.0.0.1" port="0" listenPortFileName="{port_file}")
template(name="raw" type="string" string="%rawmsg%")
action(type="omrelp" target="{ip}" port="{port}" template="raw"
       windowSize="1024" conn.timeout="2"
       queue.type="LinkedList" queue.size="200000"
       action.resumeRetryCount="-1" action.resumeInterval="1")
"#,
            d = dir.display(),
            port_file = port_file.display(),
            ip = to.ip(),
            port = to.port(),
        );
        let mut proc = spawn_rsyslogd(&dir, &conf);
        let mut port = 0;
        until(
            20,
            || {
                format!(
                    "the rsyslog omrelp sender never listened:\n{}",
                    stderr_of(&dir)
                )
            },
            || {
                assert_running(&mut proc, &dir, "the rsyslog omrelp sender");
                port = std::fs::read_to_string(&port_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                port != 0
            },
        );
        Sender { proc, dir, port }
    }

    /// SIGTERM: rsyslog ends its RELP session with `close` and exits.
    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let dir = self.dir.clone();
        until(
            20,
            || {
                format!(
                    "the rsyslog sender did not exit on SIGTERM (it sends RELP `close` and waits for the answer):\n{}",
                    stderr_of(&dir)
                )
            },
            || matches!(self.proc.child.try_wait(), Ok(Some(_))),
        );
    }
}

/// The line carrying `id`.
fn line(id: u64) -> String {
    format!("<13>1 2026-11-27T00:00:00Z host app - - - relp message id={id}")
}

/// Writes the lines of `ids` to the sender's input, `rate` a second (0: as
/// fast as it takes them), and closes the connection.
fn feed(port: u16, ids: Range<u64>, rate: u64) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("the sender's input");
    let started = Instant::now();
    let mut buf = Vec::new();
    let mut id = ids.start;
    while id < ids.end {
        let upto = (id + 100).min(ids.end);
        buf.clear();
        for i in id..upto {
            writeln!(buf, "{}", line(i)).unwrap();
        }
        c.write_all(&buf).unwrap();
        id = upto;
        if rate > 0 {
            // Pacing the client, not waiting for an outcome.
            let due = started + Duration::from_secs_f64((id - ids.start) as f64 / rate as f64);
            if let Some(ahead) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(ahead);
            }
        }
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
}

/// Waits until the receivers' files hold every id of `want`; returns every
/// id they hold (with duplicates).
fn wait_ids(receivers: &[&Receiver], want: Range<u64>, secs: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let all: Vec<u64> = receivers.iter().flat_map(|r| r.ids()).collect();
        let got: HashSet<u64> = all.iter().copied().collect();
        let missing: Vec<u64> = want.clone().filter(|i| !got.contains(i)).collect();
        if missing.is_empty() {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "after {secs}s, {} of the {} ids {want:?} never reached the rsyslog receivers (first: {:?})",
            missing.len(),
            want.end - want.start,
            &missing[..missing.len().min(10)]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unique ids among `all`.
fn unique(all: &[u64]) -> HashSet<u64> {
    all.iter().copied().collect()
}

/// auditlb (the binary) with a RELP listener and a RELP pool.
struct Auditlb {
    proc: Proc,
    log: Log,
    listen: SocketAddr,
    admin: SocketAddr,
}

/// A config in `dir`: listener "in" on `listen` and pool "p" over
/// `backends`, both RELP (`window`: the pool's `relp-window`, or its
/// default), with anchors and an admin endpoint. Returns its path.
fn relp_config(dir: &Path, listen: &str, backends: &[SocketAddr], window: Option<u32>) -> PathBuf {
    let mut c = TestConfig::at(dir)
        .listen(listen)
        .listener("protocol = \"relp\"")
        .pool("protocol = \"relp\"")
        .backend_addrs(backends)
        .anchors()
        .admin("127.0.0.1:0");
    if let Some(w) = window {
        c = c.pool(&format!("relp-window = {w}"));
    }
    c.write()
}

fn start_auditlb(cfg: &Path) -> Auditlb {
    let (mut proc, log) = spawn_auditlb_env(cfg, &[]);
    let listen = logged_addr(&mut proc, &log, "listening");
    let admin = logged_addr(&mut proc, &log, "admin endpoint");
    Auditlb {
        proc,
        log,
        listen,
        admin,
    }
}

/// The `address=` of the first log line containing `what`; fails with the
/// log if auditlb exits first (a config it refuses, say).
fn logged_addr(proc: &mut Proc, log: &Log, what: &str) -> SocketAddr {
    let mut addr: Option<SocketAddr> = None;
    until(
        20,
        || {
            format!(
                "auditlb never logged {what:?}; its log:\n{}",
                log.lines().join("\n")
            )
        },
        || {
            if let Ok(Some(s)) = proc.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "auditlb exited ({s}) before logging {what:?}; its log:\n{}",
                    log.lines().join("\n")
                );
            }
            addr = log
                .lines()
                .iter()
                .filter(|l| l.contains(what))
                .find_map(|l| {
                    l.split("address=")
                        .nth(1)?
                        .split(' ')
                        .next()?
                        .parse::<SocketAddr>()
                        .ok()
                });
            addr.is_some()
        },
    );
    addr.unwrap()
}

impl Auditlb {
    /// SIGTERM; a clean exit within 30 s, no panic logged.
    fn stop(&mut self) {
        self.proc.stop_cleanly(&self.log);
    }

    fn assert_no_panic(&self) {
        self.log.assert_no_panic();
    }
}

/// `auditlb cat --format jsonl` of a journal.
fn cat_jsonl(journal: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "auditlb cat --format jsonl: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every id that reached a receiver is in the journal (nothing routed is
/// unrecorded); returns the journaled ids.
fn assert_journaled(journal: &Path, received: &HashSet<u64>) -> HashSet<u64> {
    let journaled: HashSet<u64> = journaled_ids(journal).into_iter().collect();
    let mut unrecorded: Vec<u64> = received.difference(&journaled).copied().collect();
    unrecorded.sort_unstable();
    assert!(
        unrecorded.is_empty(),
        "{} ids reached a receiver but are not in the journal (first: {:?})",
        unrecorded.len(),
        &unrecorded[..unrecorded.len().min(10)]
    );
    journaled
}

/// `auditlb verify` with the anchors: intact.
fn assert_verified(dir: &Path) {
    let (code, report) = verify_cli(&dir.join("journal"), &dir.join("anchors.log"));
    assert_eq!(code, 0, "auditlb verify is not intact:\n{report}");
}

/// rsyslog (omrelp) → auditlb (RELP listener, RELP pool) → two rsyslog
/// imrelp receivers: every message arrives exactly once (no fault, so no
/// reason to send anything twice), both receivers share the load, the
/// journal holds every frame with its RELP connection, verifies intact,
/// and the RELP counters moved.
#[test]
fn rsyslog_omrelp_through_auditlb_to_rsyslog_imrelp() {
    let dir = scratch_dir("relp-e2e");
    let r1 = Receiver::start(dir.join("r1"));
    let r2 = Receiver::start(dir.join("r2"));
    let cfg = relp_config(&dir, "127.0.0.1:0", &[r1.addr(), r2.addr()], Some(128));
    let mut lb = start_auditlb(&cfg);
    let sender = Sender::start(dir.join("sender"), lb.listen);
    let n = 5_000u64;
    feed(sender.port, 0..n, 0);

    let all = wait_ids(&[&r1, &r2], 0..n, 60);
    let got = unique(&all);
    assert_eq!(
        all.len(),
        got.len(),
        "no fault, yet {} duplicates reached the receivers",
        all.len() - got.len()
    );
    assert_eq!(got.len(), n as usize, "ids that were never sent arrived");
    for (name, r) in [("r1", &r1), ("r2", &r2)] {
        assert!(
            !r.ids().is_empty(),
            "round-robin over a RELP pool: receiver {name} got nothing"
        );
    }

    // Counters: the RELP acks to the client may trail the deliveries.
    let admin = lb.admin;
    let nf = n as f64;
    wait_metric(
        admin,
        "auditlb_relp_acks_total",
        &[("listener", "in")],
        &format!(">= {n}"),
        |v| v >= nf,
        20,
    );
    wait_metric(
        admin,
        "auditlb_relp_backend_acks_total",
        &[("pool", "p")],
        &format!(">= {n}"),
        |v| v >= nf,
        20,
    );
    let text = scrape(admin);
    let m = |name: &str, labels: &[(&str, &str)]| metric_sum(&text, name, labels);
    let series = relp_series(&text);
    assert!(
        m("auditlb_relp_sessions_total", &[("listener", "in")]) >= 1.0,
        "no RELP session counted:\n{series}"
    );
    assert_eq!(
        m("auditlb_relp_acks_total", &[("listener", "in")]),
        nf,
        "each message acknowledged to rsyslog once:\n{series}"
    );
    assert_eq!(
        m("auditlb_relp_backend_acks_total", &[("pool", "p")]),
        nf,
        "each frame acknowledged by a receiver once:\n{series}"
    );
    for r in [&r1, &r2] {
        let b = r.addr().to_string();
        assert!(
            m(
                "auditlb_relp_backend_acks_total",
                &[("pool", "p"), ("backend", b.as_str())]
            ) > 0.0,
            "no RELP acks counted for backend {b}:\n{series}"
        );
    }
    assert_eq!(m("auditlb_relp_nacks_total", &[]), 0.0, "{series}");
    assert_eq!(m("auditlb_relp_backend_nacks_total", &[]), 0.0, "{series}");
    assert_eq!(
        m("auditlb_relp_resent_total", &[("pool", "p")]),
        0.0,
        "nothing to send again without a fault:\n{series}"
    );

    // rsyslog ends its session with `close`; then a clean stop.
    sender.stop();
    lb.stop();
    assert_verified(&dir);
    let journal = dir.join("journal");
    let journaled = assert_journaled(&journal, &got);
    assert_eq!(journaled.len(), n as usize);

    let jsonl = cat_jsonl(&journal);
    let conns: Vec<&str> = jsonl
        .lines()
        .filter(|l| l.contains("\"type\":\"CONNECTION\""))
        .collect();
    assert!(
        conns.iter().any(|l| l.contains("\"protocol\":\"relp\"")),
        "no CONNECTION record with protocol relp in `auditlb cat --format jsonl`; CONNECTION records:\n{}",
        conns.join("\n")
    );
    let frames: Vec<&str> = jsonl
        .lines()
        .filter(|l| l.contains("\"type\":\"FRAME\""))
        .collect();
    assert_eq!(frames.len(), n as usize, "one FRAME record per message");
    for f in &frames {
        assert!(
            f.contains("\"protocol\":\"relp\""),
            "a FRAME that does not refer to its RELP connection: {f}"
        );
    }
}

/// auditlb SIGKILLed while rsyslog's messages flow through it, then
/// restarted on the same address and journal: every message rsyslog took
/// in reaches the receiver at least once. What auditlb had acknowledged is
/// in its journal and delivered from there after the restart; what it had
/// not, rsyslog sends again.
#[test]
fn auditlb_sigkilled_mid_stream_loses_nothing_rsyslog_accepted() {
    let dir = scratch_dir("relp-kill-auditlb");
    let r = Receiver::start(dir.join("r"));
    let cfg = relp_config(&dir, "127.0.0.1:0", &[r.addr()], None);
    let mut lb = start_auditlb(&cfg);
    // The restart must listen where rsyslog's omrelp sends.
    let listen = lb.listen;
    let cfg = relp_config(&dir, &listen.to_string(), &[r.addr()], None);
    let sender = Sender::start(dir.join("sender"), listen);
    let n = 20_000u64;
    let port = sender.port;
    let feeder = std::thread::spawn(move || feed(port, 0..n, 8_000));

    let some = (n / 5) as usize;
    until(
        60,
        || {
            format!(
                "only {} ids at the receiver, waiting for {some} before the kill",
                r.ids().len()
            )
        },
        || r.ids().len() >= some,
    );
    lb.proc.kill9();
    let at_kill = unique(&r.ids()).len();
    assert!(
        at_kill < n as usize,
        "every message had arrived before the SIGKILL: the kill was not mid-stream"
    );
    eprintln!("auditlb SIGKILLed with {at_kill} of {n} ids at the receiver");
    lb = start_auditlb(&cfg);
    assert_eq!(lb.listen, listen, "restarted on another address");
    feeder.join().expect("feeding the sender");

    let all = wait_ids(&[&r], 0..n, 90);
    let got = unique(&all);
    let duplicates = all.len() - got.len();
    eprintln!(
        "after the SIGKILL: {} ids received for {n} sent, {duplicates} duplicates, 0 missing",
        all.len()
    );
    assert_eq!(got.len(), n as usize, "ids that were never sent arrived");
    lb.assert_no_panic();

    sender.stop();
    lb.stop();
    assert_verified(&dir);
    assert_journaled(&dir.join("journal"), &got);
}

/// Two imrelp receivers; one is SIGKILLed mid-stream. What it had not
/// acknowledged goes to the other, and everything sent while it is down
/// arrives there; restarted, it takes its share of new traffic again.
#[test]
fn backend_rsyslog_killed_mid_stream_loses_nothing() {
    let dir = scratch_dir("relp-kill-backend");
    let r1 = Receiver::start(dir.join("r1"));
    let mut r2 = Receiver::start(dir.join("r2"));
    let cfg = relp_config(&dir, "127.0.0.1:0", &[r1.addr(), r2.addr()], Some(128));
    let mut lb = start_auditlb(&cfg);
    let admin = lb.admin;
    let r2_label = r2.addr().to_string();
    let r2_up = [("pool", "p"), ("backend", r2_label.as_str())];
    wait_metric(
        admin,
        "auditlb_backend_up",
        &[("pool", "p")],
        "2",
        |v| v == 2.0,
        20,
    );
    let sender = Sender::start(dir.join("sender"), lb.listen);

    // Phase 1: r2 dies mid-stream.
    let n1 = 15_000u64;
    let port = sender.port;
    let feeder = std::thread::spawn(move || feed(port, 0..n1, 6_000));
    until(
        60,
        || {
            format!(
                "only {} ids at r2, waiting for 1000 before killing it",
                r2.ids().len()
            )
        },
        || r2.ids().len() >= 1_000,
    );
    r2.kill9();
    let at_kill = unique(&[r1.ids(), r2.ids()].concat()).len();
    assert!(
        at_kill < n1 as usize,
        "every message had arrived before the SIGKILL: the kill was not mid-stream"
    );
    eprintln!("receiver r2 SIGKILLed with {at_kill} of {n1} ids received");
    feeder.join().expect("feeding the sender");
    // With r2 still down, r1 gets everything r2 did not acknowledge.
    wait_ids(&[&r1, &r2], 0..n1, 60);
    wait_metric(
        admin,
        "auditlb_backend_up",
        &r2_up,
        "0 (r2 seen down)",
        |v| v == 0.0,
        20,
    );

    // Phase 2: r2 restarted on its port; once auditlb sees it up, new
    // traffic, in steps until r2 takes some of it (its RELP connection may
    // follow the health check by a reconnect backoff), 5,000 at least.
    r2.run();
    wait_metric(
        admin,
        "auditlb_backend_up",
        &r2_up,
        "1 (r2 up again)",
        |v| v == 1.0,
        30,
    );
    let mut sent = n1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !r2.ids_of_run(2).iter().any(|&i| i >= n1) {
        assert!(
            Instant::now() < deadline,
            "30 s after auditlb saw it up again, the restarted receiver had none of the {} messages sent since",
            sent - n1
        );
        feed(sender.port, sent..sent + 500, 0);
        sent += 500;
        std::thread::sleep(Duration::from_millis(100));
    }
    if sent < n1 + 5_000 {
        feed(sender.port, sent..n1 + 5_000, 0);
        sent = n1 + 5_000;
    }
    let all = wait_ids(&[&r1, &r2], 0..sent, 60);
    let got = unique(&all);
    eprintln!(
        "receiver killed: {} ids received for {sent} sent, {} duplicates, 0 missing; auditlb_relp_resent_total {}",
        all.len(),
        all.len() - got.len(),
        metric_sum(&scrape(admin), "auditlb_relp_resent_total", &[("pool", "p")])
    );
    assert_eq!(got.len(), sent as usize, "ids that were never sent arrived");

    sender.stop();
    lb.stop();
    assert_verified(&dir);
    let journaled = assert_journaled(&dir.join("journal"), &got);
    assert_eq!(journaled, got, "the journal holds ids no receiver got");
}
