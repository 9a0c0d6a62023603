//! A seeded chaos test with real processes: auditlb, three backends
//! (`auditlb-load sink`) and clients (`auditlb-load gen`) with unique ids.
//! Each round sends traffic while one random fault strikes: a backend
//! SIGKILLed or frozen (SIGSTOP), auditlb SIGKILLed, stopped with SIGTERM
//! or reloaded with SIGHUP; 64 KiB segments roll and the disk budget is
//! tight (`on-full = "drop"`). After every round: every id the journal
//! holds reached a backend, `verify` never says TAMPERED, no panic was
//! logged, and RSS stayed bounded.
//!
//! `AUDITLB_CHAOS_SEED=N` replays a run (the seed is printed first);
//! `AUDITLB_CHAOS_ROUNDS=N` sets the rounds (default 3, for CI).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A small deterministic generator (xorshift64*), so a seed replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// auditlb as a process whose log goes to a file.
struct Auditlb {
    proc: Proc,
    listen: SocketAddr,
}

fn start_auditlb(cfg: &Path, log: &Path) -> Auditlb {
    let before = std::fs::read_to_string(log).map_or(0, |s| s.len());
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let proc = Proc { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let fresh = &text[before.min(text.len())..];
        if let Some(a) = fresh
            .lines()
            .filter(|l| l.contains("listening"))
            .find_map(|l| l.split("address=").nth(1))
        {
            let listen = a.split(' ').next().unwrap().parse().unwrap();
            return Auditlb { proc, listen };
        }
        assert!(Instant::now() < deadline, "auditlb did not start: {fresh}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Backend {
    proc: Option<Proc>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Backend {
    fn restart(&mut self) {
        if self.proc.is_none() {
            let (p, _) = spawn_sink(&self.addr.to_string(), "octet", &self.log, &[]);
            self.proc = Some(p);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillBackend(usize),
    FreezeBackend(usize),
    KillAuditlb,
    StopAuditlb,
    Reload,
    None,
}

#[test]
fn chaos() {
    let seed: u64 = std::env::var("AUDITLB_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    let rounds: u64 = std::env::var("AUDITLB_CHAOS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    eprintln!("chaos: AUDITLB_CHAOS_SEED={seed} AUDITLB_CHAOS_ROUNDS={rounds}");
    let mut rng = Rng(seed);
    let dir = scratch_dir("chaos");
    let mut backends: Vec<Backend> = (0..3)
        .map(|i| {
            let log = dir.join(format!("sink{i}.log"));
            let (p, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
            Backend {
                proc: Some(p),
                addr,
                log,
            }
        })
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // A tight budget: late rounds of a long run reach it and refuse
    // frames (counted, recorded as GAP records).
    let budget_mib = 4 * rounds + 4;
    let config = |weight: u32| {
        let mut b: Vec<(SocketAddr, u32, bool)> = addrs.iter().map(|&a| (a, 1, false)).collect();
        b[0].1 = weight;
        TestConfig::at(&dir)
            .backends(&b)
            .pool("tcp-user-timeout = \"2s\"")
            .journal("segment-size = \"64KiB\"")
            .journal(&format!("disk-budget = \"{budget_mib}MiB\""))
            .journal("on-full = \"drop\"")
            .journal("checkpoint-every = 2000")
            .anchors()
    };
    let cfg = config(1).write();
    let journal = dir.join("journal");
    let anchors = dir.join("anchors.log");
    let log = dir.join("auditlb.log");
    let mut auditlb = start_auditlb(&cfg, &log);
    let mut peak_rss = 0;
    for round in 0..rounds {
        // One to three faults in a row, each under its own traffic.
        let phases = 1 + rng.below(3);
        for phase in 0..phases {
            let fault = match rng.below(6) {
                0 => Fault::KillBackend(rng.below(3) as usize),
                1 => Fault::FreezeBackend(rng.below(3) as usize),
                2 => Fault::KillAuditlb,
                3 => Fault::StopAuditlb,
                4 => Fault::Reload,
                _ => Fault::None,
            };
            let frames = 3_000 + rng.below(12_000);
            let rate = 5_000 + rng.below(25_000);
            let strike_ms = rng.below(1 + frames * 1000 / rate);
            let hold_ms = 200 + rng.below(2500);
            eprintln!("round {round}.{phase}: {fault:?} after {strike_ms} ms (held {hold_ms} ms), {frames} frames at {rate}/s");
            let listen = auditlb.listen;
            let base = (round + 1) * 10_000_000 + phase * 1_000_000;
            let mut gen = Some(std::thread::spawn(move || {
                gen_ids(
                    listen,
                    1 + (frames % 3) as u32,
                    frames,
                    &["--rate", &rate.to_string(), "--id-base", &base.to_string()],
                )
            }));
            std::thread::sleep(Duration::from_millis(strike_ms));
            peak_rss = peak_rss.max(auditlb.proc.rss_kib());
            match fault {
                Fault::KillBackend(i) => {
                    if let Some(mut p) = backends[i].proc.take() {
                        p.kill9();
                    }
                    std::thread::sleep(Duration::from_millis(hold_ms));
                    backends[i].restart();
                }
                Fault::FreezeBackend(i) => {
                    if let Some(p) = &backends[i].proc {
                        p.signal(libc::SIGSTOP);
                        std::thread::sleep(Duration::from_millis(hold_ms));
                        p.signal(libc::SIGCONT);
                    }
                }
                Fault::KillAuditlb => {
                    auditlb.proc.kill9();
                    let _ = gen.take().map(|g| g.join());
                    auditlb = start_auditlb(&cfg, &log);
                }
                Fault::StopAuditlb => {
                    auditlb.proc.signal(libc::SIGTERM);
                    let status = auditlb.proc.child.wait().unwrap();
                    assert!(status.success(), "seed {seed}: SIGTERM exit {status}");
                    let _ = gen.take().map(|g| g.join());
                    auditlb = start_auditlb(&cfg, &log);
                }
                Fault::Reload => {
                    // A real change: the weights move.
                    let w = 1 + rng.below(3) as u32;
                    config(w).write();
                    auditlb.proc.signal(libc::SIGHUP);
                }
                Fault::None => {}
            }
            let _ = gen.take().map(|g| g.join());
            peak_rss = peak_rss.max(auditlb.proc.rss_kib());
        }
        check_round(seed, round, &journal, &anchors, &log, &backends);
    }
    auditlb.proc.signal(libc::SIGTERM);
    assert!(auditlb.proc.child.wait().unwrap().success());
    let (code, text) = verify_cli(&journal, &anchors);
    assert_eq!(code, 0, "seed {seed}: after a clean stop\n{text}");
    assert!(
        peak_rss < 256 * 1024,
        "seed {seed}: peak RSS {peak_rss} KiB"
    );
    eprintln!("chaos: {rounds} rounds passed, peak RSS {peak_rss} KiB (seed {seed})");
}

/// Every journaled id reaches a backend; the journal is never TAMPERED;
/// no panic in auditlb's log.
fn check_round(
    seed: u64,
    round: u64,
    journal: &Path,
    anchors: &Path,
    log: &Path,
    backends: &[Backend],
) {
    let journaled: HashSet<u64> = journaled_ids(journal).into_iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = HashSet::new();
        for b in backends {
            got.extend(ids_in_log(&b.log, true));
        }
        let missing: Vec<u64> = journaled.difference(&got).copied().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed} round {round}: {} of {} journaled ids never arrived (e.g. {:?})",
            missing.len(),
            journaled.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, text) = verify_cli(journal, anchors);
    assert_ne!(code, 1, "seed {seed} round {round}: verify\n{text}");
    assert_ne!(code, 3, "seed {seed} round {round}: verify\n{text}");
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !logged.contains("panicked"),
        "seed {seed} round {round}: auditlb panicked:\n{}",
        logged
            .lines()
            .filter(|l| l.contains("panicked"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "round {round}: {} journaled ids delivered, verify exit {code}",
        journaled.len()
    );
}
