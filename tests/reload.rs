//! Config reload (SIGHUP) under traffic: backends added, removed and
//! re-weighted, listener limits changed, listeners and pools added and
//! removed, bad files refused. Backends are `auditlb-load sink` processes
//! logging raw bytes; clients are `auditlb-load gen` with unique ids.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use auditlb::config::Config;
use auditlb::journal::format::RecordType;
use auditlb::journal::reader::{list_segments, Records};
use auditlb::server::Server;
use common::*;

/// A config with listener "in" on `listen` to pool "p" over `backends`
/// (address, weight), the journal and anchors in `dir` (the same for every
/// A config listening on `listen` with `backends` (address, weight), the
/// listener's `extra` settings, and its journal and anchors in `dir` (the
/// same journal for every config of a test: it does not change on a reload).
fn pool_config(dir: &Path, listen: &str, backends: &[(SocketAddr, u32)], extra: &str) -> String {
    let b: Vec<(SocketAddr, u32, bool)> = backends.iter().map(|&(a, w)| (a, w, false)).collect();
    TestConfig::at(dir)
        .listen(listen)
        .backends(&b)
        .listener(extra)
        .anchors()
        .toml()
}

/// The seq of the FRAME record of each id in a journal.
fn seqs_of_ids(journal: &Path) -> std::collections::HashMap<u64, u64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    let mut m = std::collections::HashMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if !l.contains("\"type\":\"FRAME\"") {
            continue;
        }
        let seq = l["{\"seq\":".len()..]
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        if let Some(at) = l.rfind(" id=") {
            let id: String = l[at + 4..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            m.insert(id.parse().unwrap(), seq);
        }
    }
    m
}

fn parse(toml: &str) -> Config {
    let c = Config::parse(toml).unwrap();
    c.validate().unwrap();
    c
}

/// The CONFIG records in a journal.
fn config_records(dir: &Path) -> usize {
    let mut n = 0;
    for seg in list_segments(&dir.join("journal")).unwrap() {
        let bytes = std::fs::read(&seg.path).unwrap();
        n += Records::new(&bytes)
            .map_while(Result::ok)
            .filter(|(_, r)| r.kind() == Some(RecordType::Config))
            .count();
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_swaps_backends_and_limits_without_loss() {
    let dir = scratch_dir("reload-traffic");
    let mut logs = Vec::new();
    let mut sinks = Vec::new();
    for name in ["a", "b", "c"] {
        let log = dir.join(format!("{name}.log"));
        sinks.push(spawn_sink("127.0.0.1:0", "octet", &log, &[]));
        logs.push(log);
    }
    let (a, b, c) = (sinks[0].1, sinks[1].1, sinks[2].1);
    let mut server = Server::start(parse(&pool_config(
        &dir,
        "127.0.0.1:0",
        &[(a, 1), (b, 1)],
        "",
    )))
    .await
    .unwrap();
    wait_connected(&server, 2).await;
    let listen = server.listener_addr("in").unwrap();

    // 4 clients, 100,000 frames at 20,000 frames/s: about 5 s of traffic.
    let n = 100_000u64;
    let gen = tokio::task::spawn_blocking(move || gen_ids(listen, 4, n, &["--rate", "20000"]));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!gen.is_finished(), "traffic ended before the first reload");
    let before_a = ids_in_log(&logs[0], true).len();
    assert!(before_a > 0, "a took frames before the reload");

    // Reload 1: c added, a removed, b re-weighted.
    let r = server
        .reload(parse(&pool_config(
            &dir,
            "127.0.0.1:0",
            &[(b, 3), (c, 1)],
            "",
        )))
        .await
        .unwrap();
    assert_eq!(r.pools_changed, 1);
    wait_for(5.0, "a removed from the pool", || {
        server.pools()[0].backends.len() == 2
    })
    .await;
    // a drains what it was given and gets nothing from the point the
    // dispatcher took the new set (checked against the journal at the
    // end); c takes frames.
    let first_reload = r.backends_switched_at.expect("the dispatcher took the set");
    assert!(first_reload >= r.config_seq);
    wait_for(5.0, "the added backend took frames", || {
        !ids_in_log(&logs[2], true).is_empty()
    })
    .await;

    // A refused reload (a listener moved onto a port in use) changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = pool_config(
        &dir,
        &taken.local_addr().unwrap().to_string(),
        &[(a, 1)],
        "",
    );
    let refused = server.reload(parse(&bad)).await.unwrap_err();
    assert!(
        refused
            .problems
            .iter()
            .any(|p| p.key == "listener[0].address"),
        "{refused}"
    );
    assert_eq!(server.pools()[0].backends.len(), 2);

    // Reload 2: a back with weight 2, b removed; a per-source limit of 4.
    let second = server
        .reload(parse(&pool_config(
            &dir,
            "127.0.0.1:0",
            &[(a, 2), (c, 1)],
            "max-connections-per-source = 4",
        )))
        .await
        .unwrap()
        .backends_switched_at
        .expect("the dispatcher took the set");
    assert!(!gen.is_finished(), "traffic ended before the second reload");
    // The 4 clients stay; a fifth from the same source is refused.
    let fifth = tokio::net::TcpStream::connect(listen).await.unwrap();
    wait_for(5.0, "the fifth connection refused", || {
        metric(
            &server,
            "auditlb_connections_rejected_total",
            &[("listener", "in")],
        ) == 1.0
    })
    .await;
    drop(fifth);

    let out = gen.await.unwrap();
    assert!(out.contains(&format!("sent={n}")), "{out}");
    let log_refs: Vec<&Path> = logs.iter().map(|l| l.as_path()).collect();
    let (unique, total) = wait_all_ids(&log_refs, n, 60);
    assert_eq!(unique as u64, n);
    // A drained backend settled everything it was given: nothing is sent
    // twice.
    assert_eq!(total, unique, "duplicates after a reload");

    // No client connection was dropped: the 4 clients connected once and
    // closed by themselves.
    let m = |name: &str, labels: &[(&str, &str)]| metric(&server, name, labels);
    assert_eq!(
        m("auditlb_connections_accepted_total", &[("listener", "in")]),
        4.0
    );
    assert_eq!(
        m(
            "auditlb_connections_closed_total",
            &[("listener", "in"), ("reason", "eof")]
        ),
        4.0
    );
    assert_eq!(
        m("auditlb_frames_in_total", &[("listener", "in")]),
        n as f64
    );
    // b's series left /metrics with it.
    let text = server.metrics().render();
    assert!(
        !text.contains(&format!("auditlb_backend_up{{backend=\"{b}\"")),
        "{text}"
    );
    // By the journal: a got nothing between the two switches (it was
    // removed), and frames again after the second; b nothing after the
    // second switch.
    server.shutdown().await;
    let seqs = seqs_of_ids(&dir.join("journal"));
    let seqs_at = |i: usize| -> Vec<u64> {
        ids_in_log(&logs[i], true)
            .iter()
            .map(|id| seqs[id])
            .collect()
    };
    let (at_a, at_b, at_c) = (seqs_at(0), seqs_at(1), seqs_at(2));
    assert!(
        !at_a.iter().any(|&q| q > first_reload && q < second),
        "the removed backend got frames journaled after it was removed"
    );
    assert!(
        at_a.iter().any(|&q| q > second),
        "a took no frames after reload 2"
    );
    assert!(
        !at_b.iter().any(|&q| q > second),
        "b got frames after its removal"
    );
    assert!(!at_b.is_empty() && !at_c.is_empty());
    // The start and both reloads are in the journal, which verifies.
    assert_eq!(config_records(&dir), 3);
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["verify", "--journal"])
        .arg(dir.join("journal"))
        .arg("--anchors")
        .arg(dir.join("anchors.log"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// The `auditlb` binary on SIGHUP: a bad file is refused (counted, old
/// config kept), a good one moves a listener to a new pool, opens a new
/// listener and removes the old pool, while a client stays connected.
#[test]
fn sighup_reloads_the_file_and_refuses_a_bad_one() {
    use std::io::Write;
    let dir = scratch_dir("reload-sighup");
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let (_sa, a) = spawn_sink("127.0.0.1:0", "octet", &log_a, &[]);
    let (_sb, b) = spawn_sink("127.0.0.1:0", "octet", &log_b, &[]);
    let path = dir.join("auditlb.toml");
    // Port 0 everywhere: the bound ports are read from the log, and a
    // reload keeps a listener whose name and address text stay.
    let v1 = TestConfig::at(&dir)
        .backends(&[(a, 1, false)])
        .admin("127.0.0.1:0")
        .anchors()
        .toml();
    std::fs::write(&path, &v1).unwrap();
    let (auditlb, log) = spawn_auditlb_logged(&path);
    let listen = log.wait_addr("listening", Some("listener=in"));
    let admin = log.wait_addr("admin endpoint", None);

    // A client that stays connected across every reload.
    let mut client = std::net::TcpStream::connect(listen).unwrap();
    let line = |id: u64| format!("<13>1 2026-11-26T00:00:00Z h app - - - x id={id}\n");
    client.write_all(line(0).as_bytes()).unwrap();
    wait_all_ids(&[log_a.as_path()], 1, 10);

    // A typo: refused, counted, and the old config keeps working.
    std::fs::write(&path, v1.replace("weight = 1", "wieght = 1")).unwrap();
    auditlb.signal(libc::SIGHUP);
    wait_scraped(admin, "auditlb_config_reload_failures_total", 1.0);
    assert_eq!(
        scraped(admin, "auditlb_config_last_reload_successful"),
        Some(0.0)
    );
    // A journal change needs a restart: refused too.
    std::fs::write(
        &path,
        v1.replace(
            "checkpoint-interval = \"200ms\"",
            "checkpoint-interval = \"1s\"",
        ),
    )
    .unwrap();
    auditlb.signal(libc::SIGHUP);
    wait_scraped(admin, "auditlb_config_reload_failures_total", 2.0);
    client.write_all(line(1).as_bytes()).unwrap();
    wait_all_ids(&[log_a.as_path()], 2, 10);

    // v2: listener "in" moves to a new pool "q" (backend b), a new
    // listener "extra" also feeds "q", and pool "p" goes away.
    let v2 = v1
        .replace("pool = \"p\"", "pool = \"q\"")
        .replace("name = \"p\"", "name = \"q\"")
        .replace(&a.to_string(), &b.to_string())
        .replace(
            "[[pool]]",
            "[[listener]]\nname = \"extra\"\naddress = \"127.0.0.1:0\"\npool = \"q\"\n\n[[pool]]",
        );
    std::fs::write(&path, &v2).unwrap();
    auditlb.signal(libc::SIGHUP);
    wait_scraped(admin, "auditlb_config_reloads_total", 1.0);
    assert_eq!(
        scraped(admin, "auditlb_config_last_reload_successful"),
        Some(1.0)
    );
    client.write_all(line(2).as_bytes()).unwrap();
    let extra = log.wait_addr("listening", Some("listener=extra"));
    let mut other = std::net::TcpStream::connect(extra).unwrap();
    other.write_all(line(3).as_bytes()).unwrap();
    drop(other);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut got = ids_in_log(&log_b, true);
        got.sort();
        if got == [2, 3] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b got {got:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut at_a = ids_in_log(&log_a, true);
    at_a.sort();
    assert_eq!(at_a, [0, 1], "the removed pool got frames after the reload");
    let text = scrape(admin);
    assert!(text.contains("auditlb_backend_up{backend=\""), "{text}");
    assert!(
        !text.contains(&format!("backend=\"{a}\",pool=\"p\"}} 1")),
        "the removed pool's backend is still shown up:\n{text}"
    );
    drop(client);
    auditlb.signal(libc::SIGTERM);
    let mut auditlb = auditlb;
    assert!(auditlb.child.wait().unwrap().success());
    assert_eq!(config_records(&dir), 2, "start and one applied reload");
}

/// A reload waits for the journal writer, which holds still while the
/// journal is at its budget (`on-full = block`): SIGTERM must still stop
/// the process.
#[test]
fn sigterm_during_a_reload_blocked_by_a_full_journal_still_stops() {
    let dir = scratch_dir("reload-full");
    let (_sink, a) = spawn_sink("127.0.0.1:0", "octet", &dir.join("a.log"), &[]);
    let path = dir.join("auditlb.toml");
    let cfg = TestConfig::at(&dir)
        .backends(&[(a, 1, false)])
        .journal("segment-size = \"64KiB\"")
        .journal("disk-budget = \"256KiB\"")
        .journal("on-full = \"block\"")
        .admin("127.0.0.1:0")
        .anchors()
        .toml();
    std::fs::write(&path, &cfg).unwrap();
    let (mut auditlb, log) = spawn_auditlb_logged(&path);
    let listen = log.wait_addr("listening", None);
    let admin = log.wait_addr("admin endpoint", None);
    // Far more than the budget: the journal fills and the writer waits.
    let _gen = std::thread::spawn(move || gen_ids(listen, 2, 400_000, &[]));
    wait_scraped(admin, "auditlb_journal_full", 1.0);
    std::fs::write(&path, cfg.replace("weight = 1", "weight = 2")).unwrap();
    auditlb.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    auditlb.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = auditlb.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "auditlb did not stop within 20 s of SIGTERM during a reload"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A mirror pool takes new health settings on a reload and keeps copying
/// every frame to each backend; changing its backends is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_pool_reloads_its_health_settings_only() {
    let dir = scratch_dir("reload-mirror");
    let (logs, sinks): (Vec<_>, Vec<_>) = ["a", "b"]
        .iter()
        .map(|n| {
            let log = dir.join(format!("{n}.log"));
            let s = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
            (log, s)
        })
        .unzip();
    let mirror = |rise: u32| {
        pool_config(&dir, "127.0.0.1:0", &[(sinks[0].1, 1), (sinks[1].1, 1)], "")
            .replace("name = \"p\"\n", "name = \"p\"\nbalance = \"mirror\"\n")
            .replace("rise = 2", &format!("rise = {rise}"))
    };
    let mut server = Server::start(parse(&mirror(2))).await.unwrap();
    wait_connected(&server, 2).await;
    let listen = server.listener_addr("in").unwrap();
    tokio::task::spawn_blocking(move || gen_ids(listen, 2, 1000, &[]))
        .await
        .unwrap();
    let r = server.reload(parse(&mirror(3))).await.unwrap();
    assert_eq!(r.pools_changed, 1);
    let moved = mirror(3).replace(&sinks[1].1.to_string(), "127.0.0.1:9");
    let refused = server.reload(parse(&moved)).await.unwrap_err();
    assert!(
        refused
            .problems
            .iter()
            .any(|p| p.msg.contains("mirror pool")),
        "{refused}"
    );
    tokio::task::spawn_blocking(move || gen_ids(listen, 2, 1000, &["--id-base", "1000"]))
        .await
        .unwrap();
    // Both backends got every frame, before and after the reload.
    for log in &logs {
        let (unique, _) = wait_all_ids(&[log.as_path()], 2000, 20);
        assert_eq!(unique, 2000);
    }
    server.shutdown().await;
}
