//! Lossless delivery with real processes: auditlb and its backends run as
//! separate processes (`auditlb`, `auditlb-load sink`), clients are
//! `auditlb-load gen`; every frame carries a unique id and the ids are
//! counted at the backends from their raw byte logs.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Bytes in a sink's per-connection logs.
fn log_bytes(log: &Path) -> u64 {
    let prefix = format!("{}.", log.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(log.parent().unwrap())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// 200,000 frames from 4 clients through 3 backends; one backend fails in
/// the way `fail` says, mid-stream. Every id arrives; duplicates stay within
/// what the replay window and the unacknowledged suffix can produce.
fn one_backend_fails_mid_stream(
    name: &str,
    sink_extra: [&[&str]; 3],
    strike_at_bytes: Option<u64>,
    fail: impl FnOnce(&mut Proc),
) {
    let dir = scratch_dir(name);
    let mut sinks = Vec::new();
    let mut logs = Vec::new();
    for (i, extra) in sink_extra.iter().enumerate() {
        let log = dir.join(format!("sink{i}.log"));
        let (p, a) = spawn_sink("127.0.0.1:0", "octet", &log, extra);
        sinks.push((p, a));
        logs.push(log);
    }
    let addrs: Vec<_> = sinks.iter().map(|s| s.1).collect();
    let cfg = binary_config(&dir, &addrs, "tcp-user-timeout = \"2s\"");
    let (_auditlb, listen) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    let n = 200_000u64;
    // Clients at full speed; `fail` strikes once the victim has logged
    // `strike_at_bytes` (the sink options trigger the other failures).
    let gen = std::thread::spawn(move || gen_ids(listen, 4, 200000, &[]));
    if let Some(strike_at) = strike_at_bytes {
        let victim_log = logs[1].clone();
        let deadline = Instant::now() + Duration::from_secs(20);
        while log_bytes(&victim_log) < strike_at && Instant::now() < deadline && !gen.is_finished()
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            !gen.is_finished(),
            "the stream ended before the failure: not mid-stream"
        );
    }
    fail(&mut sinks[1].0);
    let out = gen.join().unwrap();
    assert!(out.contains("sent=200000"), "{out}");
    // Logs keep flowing after the fault, as they do in production: a
    // backend that hangs takes what fits in its receive buffer without
    // reading it, and only traffic that finds it full shows the hang (an
    // idle connection to a hung process looks healthy to TCP).
    let trickle = std::thread::spawn(move || {
        gen_ids(
            listen,
            1,
            20_000,
            &["--rate", "4000", "--id-base", "10000000"],
        )
    });
    let log_refs: Vec<&Path> = logs.iter().map(|l| l.as_path()).collect();
    let (unique, total) = wait_all_ids(&log_refs, n, 60);
    let _ = trickle.join();
    assert!(unique as u64 >= n);
    let dups = total - unique;
    // What the failed backend's connections can make auditlb send again:
    // per connection its replay window and its queue (4 MiB each by
    // default), 2 connections, frames of 200 bytes plus framing.
    let bound = 2 * (4 << 20) * 2 / 200;
    assert!(dups <= bound, "{dups} duplicates, more than {bound}");
    eprintln!("{name}: {n} ids delivered, {dups} duplicates");
}

#[test]
fn backend_killed_with_sigkill_mid_stream_loses_nothing() {
    one_backend_fails_mid_stream("sigkill", [&[], &[], &[]], Some(2_000_000), |p| p.kill9());
}

#[test]
fn backend_closing_cleanly_mid_stream_loses_nothing() {
    one_backend_fails_mid_stream("fin", [&[], &["--close-after", "20000"], &[]], None, |_| {});
}

#[test]
fn backend_that_stops_reading_is_cut_off_and_loses_nothing() {
    // The stalled sink's receive buffer is 1MiB (within the replay window).
    one_backend_fails_mid_stream(
        "stall",
        [&[], &["--stall-after", "20000", "--rcvbuf", "1048576"], &[]],
        None,
        |_| {},
    );
}

#[test]
fn all_backends_down_frames_wait_in_the_journal_with_bounded_memory() {
    let dir = scratch_dir("outage");
    let log = dir.join("sink.log");
    let (mut sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = binary_config(&dir, &[addr], "");
    let (auditlb, listen) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    gen_ids(listen, 2, 1000, &[]);
    // The backend has logged the first 1000 before it goes away.
    wait_all_ids(&[log.as_path()], 1000, 20);
    sink.kill9();
    // Backends down: clients keep sending 50,000 frames, not slowed down.
    let t0 = Instant::now();
    let out = gen_ids(listen, 4, 50000, &["--id-base", "1000"]);
    assert!(out.contains("sent=50000"), "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "clients were held up: {:?}",
        t0.elapsed()
    );
    let mut peak = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        peak = peak.max(auditlb.rss_kib());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The bound: the journal, not memory, holds the backlog.
    assert!(
        peak > 0 && peak < 100 * 1024,
        "RSS {peak} KiB during the outage"
    );
    eprintln!("peak RSS during a 10 s outage with 50,000 frames queued: {peak} KiB");
    let (_sink, _) = spawn_sink(&addr.to_string(), "octet", &log, &[]);
    wait_all_ids(&[log.as_path()], 51_000, 60);
}

#[test]
fn auditlb_killed_and_restarted_delivers_everything_it_journaled() {
    let dir = scratch_dir("restart");
    let log = dir.join("sink.log");
    let (_sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = binary_config(&dir, &[addr], "");
    let (mut auditlb, listen) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    let gen = std::thread::spawn(move || gen_ids(listen, 2, 300000, &["--rate", "150000"]));
    std::thread::sleep(Duration::from_millis(800));
    auditlb.kill9();
    let _ = gen.join();
    // Whatever reached the journal must reach the backend after a restart.
    let (mut again, _) = spawn_auditlb(&cfg);
    let journal = dir.join("journal");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    let journaled: Vec<u64> = out
        .stdout
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let at = l.windows(4).rposition(|w| w == b" id=")?;
            std::str::from_utf8(&l[at + 4..]).ok()?.parse().ok()
        })
        .collect();
    assert!(
        journaled.len() > 1000,
        "only {} frames journaled",
        journaled.len()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: HashSet<u64> = ids_in_log(&log, true).into_iter().collect();
        let missing = journaled.iter().filter(|i| !got.contains(i)).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} journaled frames never arrived",
            journaled.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    again.signal(libc::SIGTERM);
    assert!(again.child.wait().unwrap().success());
    let r =
        auditlb::journal::verify::verify(&journal, Some(&dir.join("anchors.log")), None).unwrap();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
    assert!(r.frames as usize >= journaled.len(), "{}", r.text());
}

#[test]
fn mirror_pool_every_backend_gets_every_frame_at_its_own_pace() {
    let dir = scratch_dir("mirror");
    let mut sinks = Vec::new();
    let mut logs = Vec::new();
    for i in 0..3 {
        let log = dir.join(format!("m{i}.log"));
        let (p, a) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
        sinks.push((p, a));
        logs.push(log);
    }
    let addrs: Vec<_> = sinks.iter().map(|s| s.1).collect();
    let cfg = binary_config(&dir, &addrs, "balance = \"mirror\"");
    let (_auditlb, listen) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    let n = 60_000u64;
    let gen = std::thread::spawn(move || gen_ids(listen, 2, 60000, &["--rate", "60000"]));
    std::thread::sleep(Duration::from_millis(300));
    sinks[1].0.kill9();
    gen.join().unwrap();
    // The two live backends are not held up by the dead one.
    let t0 = Instant::now();
    wait_all_ids(&[logs[0].as_path()], n, 20);
    wait_all_ids(&[logs[2].as_path()], n, 20);
    eprintln!(
        "live mirrors complete {:?} after the clients finished",
        t0.elapsed()
    );
    // The dead one comes back and catches up from the journal.
    let (_back, _) = spawn_sink(&addrs[1].to_string(), "octet", &logs[1], &[]);
    wait_all_ids(&[logs[1].as_path()], n, 60);
}

#[test]
fn a_clean_restart_resumes_from_the_final_delivery_cursor_without_resending() {
    let dir = scratch_dir("cursor");
    let log = dir.join("sink.log");
    let (_sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = binary_config(&dir, &[addr], "");
    let (mut first, listen) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(300));
    gen_ids(listen, 2, 20000, &[]);
    wait_all_ids(&[log.as_path()], 20_000, 30);
    first.signal(libc::SIGTERM);
    assert!(first.child.wait().unwrap().success());
    let delivered = ids_in_log(&log, true).len();
    // The next run starts at the recorded cursor: nothing is sent twice.
    let (mut second, _) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(1500));
    second.signal(libc::SIGTERM);
    assert!(second.child.wait().unwrap().success());
    assert_eq!(
        ids_in_log(&log, true).len(),
        delivered,
        "frames were sent again after a clean restart"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(dir.join("journal"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.contains("\"type\":\"DELIVERY\"")));
}

/// The crash-resume promise as it fails in production: two backends, small
/// segments that roll, auditlb SIGKILLed while the backends settle frames
/// (so per-backend DELIVERY ranges sit after the last cursor), then killed
/// again while the backends are down and frames pile up in the journal;
/// then everything comes back and new traffic flows. Every journaled id
/// arrives, and so does every id sent after the last restart.
#[test]
fn crash_while_backends_are_down_resumes_and_new_traffic_flows() {
    let dir = scratch_dir("crash-resume");
    let logs = [dir.join("a.log"), dir.join("b.log")];
    let (mut a, a_addr) = spawn_sink("127.0.0.1:0", "octet", &logs[0], &[]);
    let (mut b, b_addr) = spawn_sink("127.0.0.1:0", "octet", &logs[1], &[]);
    let cfg = binary_config_journal(&dir, &[a_addr, b_addr], "", "segment-size = \"64KiB\"");
    let journal = dir.join("journal");
    let log_refs: Vec<&Path> = logs.iter().map(|l| l.as_path()).collect();
    // Killed mid-stream while both backends settle frames, three times.
    for round in 0..3u64 {
        let (mut auditlb, listen) = spawn_auditlb(&cfg);
        let base = (round * 1_000_000).to_string();
        let gen = std::thread::spawn(move || {
            gen_ids(listen, 2, 30000, &["--rate", "20000", "--id-base", &base])
        });
        std::thread::sleep(Duration::from_millis(700 + 150 * round));
        auditlb.kill9();
        let _ = gen.join();
    }
    // Backends die; frames wait in the journal; auditlb is killed again.
    a.kill9();
    b.kill9();
    let (mut auditlb, listen) = spawn_auditlb(&cfg);
    let out = gen_ids(listen, 2, 10000, &["--id-base", "5000000"]);
    assert!(out.contains("sent=10000"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !journaled_ids(&journal).contains(&5_009_999) {
        assert!(Instant::now() < deadline, "frames were not journaled");
        std::thread::sleep(Duration::from_millis(100));
    }
    auditlb.kill9();
    // Everything comes back; new traffic after the restart.
    let (_a, _) = spawn_sink(&a_addr.to_string(), "octet", &logs[0], &[]);
    let (_b, _) = spawn_sink(&b_addr.to_string(), "octet", &logs[1], &[]);
    let (mut again, listen) = spawn_auditlb(&cfg);
    let out = gen_ids(listen, 2, 20000, &["--id-base", "6000000"]);
    assert!(out.contains("sent=20000"), "{out}");
    let mut want: HashSet<u64> = journaled_ids(&journal).into_iter().collect();
    want.extend(6_000_000..6_020_000);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut got = HashSet::new();
        for l in &log_refs {
            got.extend(ids_in_log(l, true));
        }
        let missing: Vec<u64> = want.iter().filter(|i| !got.contains(i)).copied().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} ids never arrived (e.g. {:?})",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    again.signal(libc::SIGTERM);
    assert!(again.child.wait().unwrap().success());
    let r =
        auditlb::journal::verify::verify(&journal, Some(&dir.join("anchors.log")), None).unwrap();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
}

/// SIGTERM does not wait out `shutdown.grace` when nothing is queued: the
/// listeners let go of the journal's input as they stop, so the writer,
/// then the dispatchers, see their input end at once.
#[test]
fn an_idle_auditlb_stops_at_once_on_sigterm() {
    let dir = scratch_dir("idle-stop");
    let log = dir.join("sink.log");
    let (_sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[addr])
        .anchors()
        .grace("60s")
        .write();
    let (mut auditlb, listen) = spawn_auditlb(&cfg);
    gen_ids(listen, 1, 100, &[]);
    wait_all_ids(&[log.as_path()], 100, 20);
    let t0 = Instant::now();
    auditlb.signal(libc::SIGTERM);
    let status = loop {
        if let Some(s) = auditlb.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still running {:?} after SIGTERM with nothing queued (grace is 60 s)",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    eprintln!("idle stop took {:?}", t0.elapsed());
    let r = auditlb::journal::verify::verify(
        &dir.join("journal"),
        Some(&dir.join("anchors.log")),
        None,
    )
    .unwrap();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
}

/// The replay window is read back from the journal. A backend that stops
/// reading holds 1 MiB of settled frames unread in its kernel; when
/// auditlb cuts it off, those frames come back from 64 KiB segments that
/// rolled many times since, with a second pool's traffic journaled in
/// between, and reach the other backend. Keeping only seqs in memory must
/// not lose one of them.
#[test]
fn a_stalled_backends_replay_window_is_read_back_from_rolled_segments() {
    let dir = scratch_dir("replay-from-journal");
    let logs: Vec<_> = ["ok", "stall", "other"]
        .iter()
        .map(|n| dir.join(format!("{n}.log")))
        .collect();
    let (_ok, ok) = spawn_sink("127.0.0.1:0", "octet", &logs[0], &[]);
    let stall_opts = ["--stall-after", "20000", "--rcvbuf", "1048576"];
    let (mut stalled, stall) = spawn_sink("127.0.0.1:0", "octet", &logs[1], &stall_opts);
    let (_other, other) = spawn_sink("127.0.0.1:0", "octet", &logs[2], &[]);
    let config = TestConfig::at(&dir)
        .backend_addrs(&[ok, stall])
        .pool("tcp-user-timeout = \"2s\"\nreplay-window = \"2MiB\"\nconnections = 1")
        .journal("segment-size = \"64KiB\"");
    let (_auditlb, [listen, listen_q, admin]) = with_second_pool(config, other);
    std::thread::sleep(Duration::from_millis(300));
    let n = 100_000u64;
    let q = std::thread::spawn(move || {
        gen_ids(
            listen_q,
            2,
            100_000,
            &["--rate", "20000", "--id-base", "50000000"],
        )
    });
    let out = gen_ids(listen, 2, n, &["--rate", "40000"]);
    assert!(out.contains(&format!("sent={n}")), "{out}");
    // Traffic goes on, as in production. The stalled sink still accepts
    // connections and passes health checks, so it gets frames again on
    // new connections, which settle into its buffer unread until traffic
    // finds that full too; each cut sends its window again. In the end
    // the hung process is killed, and its last connection's window comes
    // back as well.
    let trickle = gen_ids(
        listen,
        1,
        20_000,
        &["--rate", "4000", "--id-base", "10000000"],
    );
    assert!(trickle.contains("sent=20000"), "{trickle}");
    let _ = q.join();
    stalled.kill9();
    let (unique, total) = wait_all_ids(&[logs[0].as_path(), logs[1].as_path()], n, 60);
    assert!(unique as u64 >= n);
    // The stalled sink read 20,000 frames; at least its receive buffer's
    // worth beyond that (about 4,000 frames) was settled unread, and came
    // back from the journal.
    let replayed = scraped(admin, "auditlb_frames_replayed_total{pool=\"p\"}").unwrap_or(0.0);
    assert!(replayed >= 2000.0, "{replayed} frames replayed");
    let missing = scraped(admin, "auditlb_frames_replay_missing_total{pool=\"p\"}");
    assert_eq!(
        missing,
        Some(0.0),
        "replayed frames not found in the journal"
    );
    let segments = std::fs::read_dir(dir.join("journal")).unwrap().count();
    assert!(
        segments > 100,
        "{segments} segments: the window did not span rolls"
    );
    eprintln!(
        "{n} ids delivered, {} duplicates, {replayed} replayed from {segments} segments",
        total - unique
    );
}

/// Idle clients hold no read buffer: 2,000 connected clients that send
/// nothing cost a few KiB each (task, socket registration, connection
/// meta), not a reserved 64 KiB read buffer of which the allocator touches
/// a page or two (10,000 of them are the README's figure).
#[test]
fn idle_clients_hold_no_read_buffer() {
    let want = 4200;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if lim.rlim_max < want {
        eprintln!("skipped: the fd limit ({}) is below {want}", lim.rlim_max);
        return;
    }
    lim.rlim_cur = lim.rlim_cur.max(want);
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let dir = scratch_dir("idle-memory");
    let log = dir.join("sink.log");
    let (_sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = binary_config(&dir, &[addr], "");
    let (auditlb, listen) = spawn_auditlb(&cfg);
    std::thread::sleep(Duration::from_millis(500));
    use std::io::Write;
    let line = |i: u64| format!("<13>1 2026-11-27T00:00:00Z h app - - - idle id={i}\n");
    // Warm up the journal and delivery path with as many lines from a
    // few clients, so what is measured next is the clients.
    let n = 2000u64;
    let mut warm = std::net::TcpStream::connect(listen).unwrap();
    for i in 0..n {
        warm.write_all(line(i).as_bytes()).unwrap();
    }
    wait_all_ids(&[log.as_path()], n, 30);
    std::thread::sleep(Duration::from_millis(500));
    let base = auditlb.rss_kib();
    let clients: Vec<_> = (0..n)
        .map(|_| std::net::TcpStream::connect(listen).unwrap())
        .collect();
    // They are all in: one more line through a new connection arrives.
    let mut last = std::net::TcpStream::connect(listen).unwrap();
    last.write_all(line(n).as_bytes()).unwrap();
    wait_all_ids(&[log.as_path()], n + 1, 30);
    std::thread::sleep(Duration::from_secs(1));
    let grew = auditlb.rss_kib().saturating_sub(base);
    eprintln!("{grew} KiB for {} idle clients", clients.len());
    assert!(
        grew < n * 4,
        "{grew} KiB for {n} idle clients: more than 4 KiB each"
    );
}

/// A quiet pool's delivery cursor follows the journal: with one frame of
/// its own among 50,000 of another pool's, its lag is a few thousand
/// records at most (it is told, with an empty batch, that it had nothing
/// among them), not the 50,000 records since its last frame, which an
/// alert on delivery lag would fire on and a restart would read through.
#[test]
fn a_quiet_pools_delivery_cursor_follows_the_journal() {
    let dir = scratch_dir("quiet-pool");
    let log = dir.join("p.log");
    let qlog = dir.join("q.log");
    let (_p, p_addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let (_q, q_addr) = spawn_sink("127.0.0.1:0", "octet", &qlog, &[]);
    let config = TestConfig::at(&dir).backend_addrs(&[p_addr]);
    let (_auditlb, [listen, quiet, admin]) = with_second_pool(config, q_addr);
    std::thread::sleep(Duration::from_millis(300));
    gen_ids(quiet, 1, 1, &["--id-base", "90000000"]);
    let n = 50_000;
    let out = gen_ids(listen, 2, n, &[]);
    assert!(out.contains(&format!("sent={n}")), "{out}");
    wait_all_ids(&[log.as_path()], n, 30);
    let lag = |pool: &str| {
        scraped(
            admin,
            &format!("auditlb_delivery_lag_records{{pool=\"{pool}\"}}"),
        )
        .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lag("q") > 10_000.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (p, q) = (lag("p"), lag("q"));
    eprintln!("delivery lag: p {p} records, q {q} records");
    assert!(q <= 10_000.0, "the quiet pool lags {q} records");
}

/// Starts auditlb on `config` (pool "p" behind listener "in") plus a second
/// pool "q" with backend `q_backend` behind listener "other", with the
/// admin endpoint. Returns the process and the addresses of "in", "other"
/// and the admin endpoint.
fn with_second_pool(
    config: TestConfig,
    q_backend: std::net::SocketAddr,
) -> (Proc, [std::net::SocketAddr; 3]) {
    let path = config.dir().join("auditlb.toml");
    let mut text = config.admin("127.0.0.1:0").anchors().toml();
    text.push_str(&format!(
        "\n[[listener]]\nname = \"other\"\naddress = \"127.0.0.1:0\"\npool = \"q\"\n\n\
         [[pool]]\nname = \"q\"\n\n[[pool.backend]]\naddress = \"{q_backend}\"\n"
    ));
    std::fs::write(&path, text).unwrap();
    let (auditlb, log) = spawn_auditlb_logged(&path);
    let addrs = [
        log.wait_addr("listening", Some("listener=in")),
        log.wait_addr("listening", Some("listener=other")),
        log.wait_addr("admin endpoint", None),
    ];
    (auditlb, addrs)
}
