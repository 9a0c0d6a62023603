//! auditlb, backends (`auditlb-load sink`) and clients (`auditlb-load
//! gen`) as separate processes.

use super::*;

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

    /// SIGTERM, then a clean exit within 30 s and no panic in `log`.
    pub fn stop_cleanly(&mut self, log: &Log) {
        self.signal(libc::SIGTERM);
        let mut status = None;
        until(
            30,
            || {
                format!(
                    "auditlb did not stop on SIGTERM; its log:\n{}",
                    log.lines().join("\n")
                )
            },
            || {
                status = self.child.try_wait().unwrap();
                status.is_some()
            },
        );
        let status = status.unwrap();
        assert!(
            status.success(),
            "auditlb exited with {status}; its log:\n{}",
            log.lines().join("\n")
        );
        log.assert_no_panic();
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
    let (p, log) = spawn_auditlb_logged(config);
    let addr = log.wait_addr("listening", None);
    (p, addr)
}

/// An auditlb process's log lines, kept as they come.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Waits for the address of the first log line (from line `from` on)
    /// that contains `what` (and `field`, such as `listener=extra`), so
    /// tests bind port 0 and learn the port instead of racing for one.
    pub fn wait_addr(&self, what: &str, field: Option<&str>) -> SocketAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.0.lock().unwrap().iter().find_map(|l| {
                (l.contains(what) && field.is_none_or(|f| l.contains(f)))
                    .then(|| l.split("address=").nth(1))
                    .flatten()
                    .and_then(|a| a.split(' ').next())
                    .and_then(|a| a.parse().ok())
            });
            if let Some(a) = found {
                return a;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "auditlb never logged {what} {field:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// No line says a thread panicked.
    pub fn assert_no_panic(&self) {
        let panics: Vec<String> = self
            .lines()
            .into_iter()
            .filter(|l| l.contains("panicked"))
            .collect();
        assert!(
            panics.is_empty(),
            "auditlb panicked:\n{}",
            panics.join("\n")
        );
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Starts the `auditlb` binary on a config file; its log lines are kept.
pub fn spawn_auditlb_logged(config: &std::path::Path) -> (Proc, Log) {
    spawn_auditlb_env(config, &[])
}

/// [`spawn_auditlb_logged`] with extra environment (archive credentials,
/// a failpoint).
pub fn spawn_auditlb_env(config: &std::path::Path, env: &[(String, String)]) -> (Proc, Log) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("auditlb");
    let stderr = child.stderr.take().unwrap();
    let log = Log::default();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if std::env::var_os("AUDITLB_TEST_LOGS").is_some() {
                eprintln!("[auditlb {}] {line}", std::process::id());
            }
            lines.0.lock().unwrap().push(line);
        }
    });
    (Proc { child }, log)
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

/// A config file for the `auditlb` binary over `backends`, with its journal
/// and anchors in `dir`.
pub fn binary_config(
    dir: &std::path::Path,
    backends: &[SocketAddr],
    pool_extra: &str,
) -> std::path::PathBuf {
    TestConfig::at(dir)
        .backend_addrs(backends)
        .pool(pool_extra)
        .anchors()
        .write()
}

/// [`binary_config`] with extra `[journal]` keys (`journal_extra`, one
/// `key = value` per line).
pub fn binary_config_journal(
    dir: &std::path::Path,
    backends: &[SocketAddr],
    pool_extra: &str,
    journal_extra: &str,
) -> std::path::PathBuf {
    TestConfig::at(dir)
        .backend_addrs(backends)
        .pool(pool_extra)
        .journal(journal_extra)
        .anchors()
        .write()
}
