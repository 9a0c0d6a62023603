//! End-to-end tests of the proxy core over real sockets on 127.0.0.1: framing
//! in and out, balancing modes, health and failover, oversize and malformed
//! input, slow clients.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lf_in_octet_out_and_octet_in_lf_out() {
    // LF clients to an octet-counted pool.
    let (sink, server, addr) =
        with_one_backend("framing = \"lf\"", "framing = \"octet-counted\"").await;
    let want = lines("a", 0..500);
    send_lf(addr, &want).await;
    wait_for(5.0, "500 frames", || sink.count() == 500).await;
    let got: Vec<String> = sink
        .bodies()
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect();
    assert_eq!(got, want, "order and bytes kept for one client");
    server.shutdown().await;

    // Octet-counted clients (with an embedded LF) to an LF pool: the LF is
    // escaped as #012 and counted.
    let sink = Sink::start(SinkFraming::Lf).await;
    let server = start(&config(
        &[(sink.addr, 1, false)],
        "framing = \"octet-counted\"",
        "framing = \"lf\"",
    ))
    .await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(&octet(&[b"<13>one", b"<13>two\nlines", b"<13>three"]))
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    wait_for(5.0, "3 frames", || sink.count() == 3).await;
    assert_eq!(
        sink.bodies(),
        vec![
            b"<13>one".to_vec(),
            b"<13>two#012lines".to_vec(),
            b"<13>three".to_vec()
        ]
    );
    assert_eq!(metric(&server, "auditlb_frames_escaped_total", &[]), 1.0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mix_of_clients_all_arrive() {
    let a = Sink::start(SinkFraming::Octet).await;
    let b = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(&[(a.addr, 1, false), (b.addr, 1, false)], "", "")).await;
    wait_connected(&server, 2).await;
    let addr = server.listener_addr("in").unwrap();
    let mut tasks = Vec::new();
    for c in 0..8usize {
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let msgs: Vec<String> = lines(&format!("c{c}"), 0..2000);
            let data = if c % 2 == 0 {
                let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_bytes()).collect();
                octet(&refs)
            } else {
                msgs.iter()
                    .flat_map(|m| format!("{m}\r\n").into_bytes())
                    .collect()
            };
            // Odd-sized writes so frames straddle reads.
            for piece in data.chunks(997) {
                s.write_all(piece).await.unwrap();
            }
            s.shutdown().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    wait_for(10.0, "16000 frames", || a.count() + b.count() == 16000).await;
    let mut all: Vec<Vec<u8>> = a.bodies();
    all.extend(b.bodies());
    let set: HashSet<Vec<u8>> = all.into_iter().collect();
    assert_eq!(set.len(), 16000, "every frame exactly once");
    for c in 0..8 {
        for m in lines(&format!("c{c}"), 0..2000) {
            assert!(set.contains(m.as_bytes()), "{m} missing");
        }
    }
    assert_eq!(
        metric(&server, "auditlb_frames_in_total", &[("listener", "in")]),
        16000.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_proportions() {
    let a = Sink::start(SinkFraming::Octet).await;
    let b = Sink::start(SinkFraming::Octet).await;
    let c = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(
        &[(a.addr, 3, false), (b.addr, 2, false), (c.addr, 1, false)],
        "",
        "balance = \"round-robin\"",
    ))
    .await;
    wait_connected(&server, 3).await;
    send_lf(server.listener_addr("in").unwrap(), &lines("w", 0..6000)).await;
    wait_for(5.0, "6000 frames", || {
        a.count() + b.count() + c.count() == 6000
    })
    .await;
    assert_eq!((a.count(), b.count(), c.count()), (3000, 2000, 1000));
    server.shutdown().await;
}

fn host_line(host: usize, i: usize) -> String {
    format!("<13>1 2026-11-26T00:00:00Z host{host} app - - - n{i}")
}

fn host_of(frame: &[u8]) -> String {
    String::from_utf8_lossy(frame)
        .split(' ')
        .nth(2)
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_keeps_hosts_together_and_moves_only_the_failed_share() {
    let mut sinks = [
        Sink::start(SinkFraming::Octet).await,
        Sink::start(SinkFraming::Octet).await,
        Sink::start(SinkFraming::Octet).await,
    ];
    let backends: Vec<_> = sinks.iter().map(|s| (s.addr, 1, false)).collect();
    let server = start(&config(
        &backends,
        "",
        "balance = \"hash\"\nhash-key = \"hostname\"\n# exact counts below: no replay duplicates\nreplay-window = 0",
    ))
    .await;
    wait_connected(&server, 3).await;
    let addr = server.listener_addr("in").unwrap();
    // 60 hosts, 10 frames each, interleaved across 3 client connections.
    let msgs: Vec<String> = (0..600).map(|i| host_line(i % 60, i)).collect();
    for part in msgs.chunks(200) {
        send_lf(addr, part).await;
    }
    wait_for(5.0, "600 frames", || {
        sinks.iter().map(Sink::count).sum::<usize>() == 600
    })
    .await;
    let mut placement: HashMap<String, usize> = HashMap::new();
    for (i, s) in sinks.iter().enumerate() {
        for f in s.bodies() {
            let h = host_of(&f);
            if let Some(prev) = placement.insert(h.clone(), i) {
                assert_eq!(prev, i, "{h} went to two backends");
            }
        }
        assert!(s.count() > 0, "backend {i} got nothing");
        s.take();
    }
    assert_eq!(placement.len(), 60);

    sinks[1].kill();
    wait_for(5.0, "backend 1 down", || {
        server.backend_up("p", 1) == Some(false)
    })
    .await;
    for part in msgs.chunks(200) {
        send_lf(addr, part).await;
    }
    wait_for(5.0, "600 more frames", || {
        sinks[0].count() + sinks[2].count() == 600
    })
    .await;
    for (i, s) in sinks.iter().enumerate() {
        for f in s.bodies() {
            let h = host_of(&f);
            let before = placement[&h];
            if before == 1 {
                assert_ne!(i, 1);
            } else {
                assert_eq!(
                    before, i,
                    "{h} moved from {before} to {i} although {before} is up"
                );
            }
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_balance_sticks_per_client() {
    let a = Sink::start(SinkFraming::Octet).await;
    let b = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(
        &[(a.addr, 1, false), (b.addr, 1, false)],
        "",
        "balance = \"connection\"",
    ))
    .await;
    wait_connected(&server, 2).await;
    let addr = server.listener_addr("in").unwrap();
    for c in 0..6 {
        send_lf(addr, &lines(&format!("k{c}"), 0..300)).await;
    }
    wait_for(5.0, "1800 frames", || a.count() + b.count() == 1800).await;
    let client_of = |f: &[u8]| {
        let s = String::from_utf8_lossy(f).into_owned();
        s.split("msg-")
            .nth(1)
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_owned()
    };
    let on_a: HashSet<String> = a.bodies().iter().map(|f| client_of(f)).collect();
    let on_b: HashSet<String> = b.bodies().iter().map(|f| client_of(f)).collect();
    assert!(
        on_a.is_disjoint(&on_b),
        "a client was split: {on_a:?} / {on_b:?}"
    );
    assert_eq!(on_a.len() + on_b.len(), 6);
    assert!(!on_a.is_empty() && !on_b.is_empty(), "both backends used");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_down_at_once_traffic_continues_and_it_rejoins() {
    let a = Sink::start(SinkFraming::Octet).await;
    let mut b = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(&[(a.addr, 1, false), (b.addr, 1, false)], "", "")).await;
    wait_connected(&server, 2).await;
    let addr = server.listener_addr("in").unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    let msgs = lines("f", 0..20000);
    let mut sent = 0;
    for part in msgs.chunks(1000) {
        let data: String = part.iter().map(|m| format!("{m}\n")).collect();
        client.write_all(data.as_bytes()).await.unwrap();
        sent += part.len();
        if sent == 5000 {
            b.kill();
            // Reset: marked down without waiting for health checks.
            wait_for(1.0, "backend b down after reset", || {
                server.backend_up("p", 1) == Some(false)
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every frame reaches a backend at least once (the client connection
    // was never interrupted).
    wait_for(10.0, "all frames delivered", || {
        let mut set: HashSet<Vec<u8>> = a.bodies().into_iter().collect();
        set.extend(b.bodies());
        set.len() == 20000
    })
    .await;
    assert!(
        metric(
            &server,
            "auditlb_backend_transitions_total",
            &[("to", "down")]
        ) >= 1.0
    );
    // It comes back after `rise` successful checks and gets frames again.
    b.restart();
    wait_for(5.0, "backend b up again", || {
        server.backend_up("p", 1) == Some(true)
    })
    .await;
    wait_connected(&server, 2).await;
    let before = b.count();
    let more = lines("g", 0..100);
    let data: String = more.iter().map(|m| format!("{m}\n")).collect();
    client.write_all(data.as_bytes()).await.unwrap();
    wait_for(5.0, "b receives again", || b.count() > before).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_mark_down_within_the_fall_window() {
    let a = Sink::start(SinkFraming::Octet).await;
    let mut b = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(&[(a.addr, 1, false), (b.addr, 1, false)], "", "")).await;
    wait_connected(&server, 2).await;
    // b keeps its connections but refuses new ones: only active checks see it.
    b.stop_accepting();
    let t0 = std::time::Instant::now();
    wait_for(2.0, "b down by health checks", || {
        server.backend_up("p", 1) == Some(false)
    })
    .await;
    // fall = 2 checks at 100 ms: well under a second.
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(server.backend_up("p", 0), Some(true));
    send_lf(server.listener_addr("in").unwrap(), &lines("x", 0..100)).await;
    wait_for(5.0, "100 frames on a", || a.count() == 100).await;
    assert_eq!(b.count(), 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_only_while_no_primary_is_up() {
    let mut p1 = Sink::start(SinkFraming::Octet).await;
    let mut p2 = Sink::start(SinkFraming::Octet).await;
    let bk = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(
        &[(p1.addr, 1, false), (p2.addr, 1, false), (bk.addr, 1, true)],
        "",
        "replay-window = 0", // exact counts below: no replay duplicates
    ))
    .await;
    wait_connected(&server, 3).await;
    let addr = server.listener_addr("in").unwrap();
    send_lf(addr, &lines("a", 0..200)).await;
    wait_for(5.0, "200 on primaries", || p1.count() + p2.count() == 200).await;
    assert_eq!(bk.count(), 0);
    p1.kill();
    wait_for(2.0, "p1 down", || server.backend_up("p", 0) == Some(false)).await;
    send_lf(addr, &lines("b", 0..200)).await;
    wait_for(5.0, "200 more on p2", || {
        p2.count() == 100 + 200 || p1.count() + p2.count() == 400
    })
    .await;
    assert_eq!(bk.count(), 0, "backup used while a primary is up");
    p2.kill();
    wait_for(2.0, "p2 down", || server.backend_up("p", 1) == Some(false)).await;
    send_lf(addr, &lines("c", 0..200)).await;
    wait_for(5.0, "backup takes over", || bk.count() == 200).await;
    // A primary comes back: the backup stops getting frames.
    p1.restart();
    wait_for(5.0, "p1 up", || server.pools()[0].backends[0].available()).await;
    let before = bk.count();
    send_lf(addr, &lines("d", 0..200)).await;
    wait_for(5.0, "p1 takes over", || {
        p1.bodies()
            .iter()
            .filter(|f| f.windows(6).any(|w| w == b"msg-d-"))
            .count()
            == 200
    })
    .await;
    assert_eq!(bk.count(), before);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_policies_end_to_end() {
    let big = "B".repeat(300);
    for (policy, expect) in [("truncate", 3usize), ("drop", 2), ("close", 1)] {
        let sink = Sink::start(SinkFraming::Octet).await;
        let server = start(&config(
            &[(sink.addr, 1, false)],
            &format!("max-frame = \"100B\"\noversize = \"{policy}\""),
            "",
        ))
        .await;
        wait_connected(&server, 1).await;
        let addr = server.listener_addr("in").unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(format!("<13>first\n{big}\n<13>last\n").as_bytes())
            .await
            .unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest).await;
        wait_for(5.0, "frames", || sink.count() == expect).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = sink.bodies();
        assert_eq!(got.len(), expect, "{policy}");
        assert_eq!(got[0], b"<13>first");
        match policy {
            "truncate" => {
                assert_eq!(got[1], "B".repeat(100).as_bytes());
                assert_eq!(metric(&server, "auditlb_frames_truncated_total", &[]), 1.0);
            }
            "drop" => {
                assert_eq!(got[1], b"<13>last");
                assert_eq!(
                    metric(
                        &server,
                        "auditlb_frames_refused_total",
                        &[("reason", "oversize")]
                    ),
                    1.0
                );
            }
            _ => {
                assert_eq!(
                    metric(
                        &server,
                        "auditlb_connections_closed_total",
                        &[("reason", "oversize")]
                    ),
                    1.0
                );
            }
        }
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_octet_counts_close_only_that_client() {
    let (sink, server, addr) = with_one_backend("framing = \"octet-counted\"", "").await;
    let mut good = TcpStream::connect(addr).await.unwrap();
    good.write_all(&octet(&[b"<13>good-1"])).await.unwrap();
    for bad in [
        &b"5 hello 3x abc"[..],
        b"05 hello",
        b"99999999999 x",
        b"12\nabc",
        b"abc\n",
    ] {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(bad).await.unwrap();
        // The server closes the connection: read sees EOF or a reset.
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(r, Ok(0) | Err(_)), "{bad:?}: {r:?}");
    }
    good.write_all(&octet(&[b"<13>good-2"])).await.unwrap();
    good.shutdown().await.unwrap();
    wait_for(5.0, "good frames", || sink.count() == 3).await;
    let bodies = sink.bodies();
    assert!(bodies.contains(&b"hello".to_vec()));
    assert!(bodies.contains(&b"<13>good-1".to_vec()) && bodies.contains(&b"<13>good-2".to_vec()));
    assert_eq!(
        metric(
            &server,
            "auditlb_frames_refused_total",
            &[("reason", "malformed")]
        ),
        5.0
    );
    assert_eq!(
        metric(
            &server,
            "auditlb_connections_closed_total",
            &[("reason", "malformed")]
        ),
        5.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_does_not_hold_up_others_and_is_timed_out() {
    let (sink, server, addr) =
        with_one_backend("frame-timeout = \"500ms\"\nidle-timeout = \"2s\"", "").await;
    // A slowloris: half a frame, then nothing.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"<13>1 - h a - - - never fin")
        .await
        .unwrap();
    // An octet-counted one that promises more than it sends.
    let mut short = TcpStream::connect(addr).await.unwrap();
    short.write_all(b"500 only a little").await.unwrap();
    let t0 = std::time::Instant::now();
    send_lf(addr, &lines("fast", 0..1000)).await;
    wait_for(5.0, "fast client's frames", || sink.count() == 1000).await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    // Both stuck clients are cut by the frame timeout.
    for c in [&mut slow, &mut short] {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
            .await
            .expect("closed by frame-timeout");
        assert!(matches!(r, Ok(0) | Err(_)));
    }
    // The close is counted just after the socket is let go: the client can
    // see it a moment before the counter moves.
    wait_for(5.0, "both closes counted as frame_timeout", || {
        metric(
            &server,
            "auditlb_connections_closed_total",
            &[("reason", "frame_timeout")],
        ) == 2.0
    })
    .await;
    // An idle connection is closed after idle-timeout.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(4), idle.read(&mut buf))
        .await
        .expect("closed by idle-timeout");
    assert!(matches!(r, Ok(0) | Err(_)));
    wait_for(5.0, "the idle close counted", || {
        metric(
            &server,
            "auditlb_connections_closed_total",
            &[("reason", "idle_timeout")],
        ) == 1.0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_pending_avoids_a_backend_that_does_not_read() {
    let fast = Sink::start(SinkFraming::Octet).await;
    // A backend that accepts but never reads: its kernel buffers fill and
    // its pending bytes grow.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut keep = Vec::new();
        loop {
            let (s, _) = stuck.accept().await.unwrap();
            socket2::SockRef::from(&s)
                .set_recv_buffer_size(4096)
                .unwrap();
            keep.push(s);
        }
    });
    let server = start(&config(
        &[(fast.addr, 1, false), (stuck_addr, 1, false)],
        "",
        "balance = \"least-pending\"\nqueue-bytes = \"64KiB\"",
    ))
    .await;
    wait_connected(&server, 2).await;
    let addr = server.listener_addr("in").unwrap();
    let msgs: Vec<String> = (0..20000)
        .map(|i| format!("<13>1 - h a - - - {i:06} {}", "x".repeat(200)))
        .collect();
    send_lf(addr, &msgs).await;
    wait_for(10.0, "most frames on the reading backend", || {
        fast.count() >= 19000
    })
    .await;
    assert!(
        metric(
            &server,
            "auditlb_backend_unsettled_bytes",
            &[("backend", &stuck_addr.to_string())]
        ) > 0.0
    );
    hold.abort();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_source_connection_limit() {
    let (_sink, server, addr) = with_one_backend("max-connections-per-source = 2", "").await;
    let _c1 = TcpStream::connect(addr).await.unwrap();
    let _c2 = TcpStream::connect(addr).await.unwrap();
    wait_for(2.0, "2 open", || {
        metric(&server, "auditlb_connections_open", &[]) == 2.0
    })
    .await;
    let mut c3 = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(2), c3.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(
        metric(
            &server,
            "auditlb_connections_rejected_total",
            &[("reason", "source_limit")]
        ),
        1.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_frames_wait_then_flow() {
    let mut a = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(&[(a.addr, 1, false)], "", "")).await;
    wait_connected(&server, 1).await;
    a.kill();
    wait_for(2.0, "a down", || server.backend_up("p", 0) == Some(false)).await;
    let addr = server.listener_addr("in").unwrap();
    send_lf(addr, &lines("w", 0..300)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(server.ready().is_err());
    // The backlog shows: frames waiting, and how old the oldest is.
    assert!(metric(&server, "auditlb_delivery_lag_records", &[("pool", "p")]) >= 300.0);
    assert!(
        metric(
            &server,
            "auditlb_oldest_undelivered_frame_age_seconds",
            &[("pool", "p")]
        ) >= 0.2
    );
    a.restart();
    wait_for(5.0, "waiting frames delivered", || a.count() == 300).await;
    assert!(server.ready().is_ok());
    wait_for(5.0, "backlog gauges back to zero", || {
        metric(
            &server,
            "auditlb_oldest_undelivered_frame_age_seconds",
            &[("pool", "p")],
        ) == 0.0
            && metric(&server, "auditlb_delivery_lag_records", &[("pool", "p")]) < 300.0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_serves_metrics_health_and_readiness() {
    let mut a = Sink::start(SinkFraming::Octet).await;
    let cfg = TestConfig::new("admin")
        .backends(&[(a.addr, 1, false)])
        .admin("127.0.0.1:0")
        .toml();
    let server = start(&cfg).await;
    wait_connected(&server, 1).await;
    let admin = server.admin_addr().unwrap();
    let get = |path: &'static str| http_get(admin, path);
    send_lf(server.listener_addr("in").unwrap(), &lines("m", 0..10)).await;
    wait_for(5.0, "10 frames", || a.count() == 10).await;
    let m = get("/metrics").await;
    assert!(m.starts_with("HTTP/1.1 200"));
    assert!(
        m.contains("auditlb_frames_in_total{listener=\"in\"} 10"),
        "{m}"
    );
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    a.kill();
    wait_for(2.0, "a down", || server.backend_up("p", 0) == Some(false)).await;
    let r = get("/readyz").await;
    assert!(r.starts_with("HTTP/1.1 503") && r.contains("pool p"), "{r}");
    // And back once the backend is up again (rise = 2 checks).
    a.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !get("/readyz").await.starts_with("HTTP/1.1 200") {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stayed 503");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Garbage gets a 4xx, not a hang.
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"\x00\x01garbage\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_listeners_to_several_pools() {
    let a = Sink::start(SinkFraming::Octet).await;
    let b = Sink::start(SinkFraming::Lf).await;
    let toml = format!(
        r#"
[journal]
dir = "{}"

[[listener]]
name = "one"
address = "127.0.0.1:0"
pool = "pa"
[[listener]]
name = "two"
address = "127.0.0.1:0"
framing = "octet-counted"
pool = "pb"
[[pool]]
name = "pa"
[[pool.backend]]
address = "{}"
[[pool]]
name = "pb"
framing = "lf"
[[pool.backend]]
address = "{}"
"#,
        scratch_dir("journal").display(),
        a.addr,
        b.addr
    );
    let server = start(&toml).await;
    wait_for(5.0, "both pools connected", || {
        server.pools().iter().all(|p| p.backends[0].available())
    })
    .await;
    send_lf(server.listener_addr("one").unwrap(), &lines("one", 0..50)).await;
    let mut c = TcpStream::connect(server.listener_addr("two").unwrap())
        .await
        .unwrap();
    c.write_all(&octet(&[b"<13>x", b"<13>y"])).await.unwrap();
    c.shutdown().await.unwrap();
    wait_for(5.0, "frames in both pools", || {
        a.count() == 50 && b.count() == 2
    })
    .await;
    assert_eq!(b.bodies(), vec![b"<13>x".to_vec(), b"<13>y".to_vec()]);
    assert_eq!(
        metric(&server, "auditlb_frames_in_total", &[("listener", "one")]),
        50.0
    );
    assert_eq!(
        metric(&server, "auditlb_frames_in_total", &[("listener", "two")]),
        2.0
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_the_frames_sent_and_pass_promtool() {
    let a = Sink::start(SinkFraming::Octet).await;
    let b = Sink::start(SinkFraming::Octet).await;
    let cfg = TestConfig::new("metrics")
        .backends(&[(a.addr, 1, false), (b.addr, 1, false)])
        .admin("127.0.0.1:0")
        .toml();
    let server = start(&cfg).await;
    wait_connected(&server, 2).await;
    let admin = server.admin_addr().unwrap();
    let addr = server.listener_addr("in").unwrap();
    let before = http_get(admin, "/metrics").await;
    // Traffic in flight while scraping.
    let sender = tokio::spawn(async move {
        for part in 0..5 {
            send_lf(addr, &lines(&format!("m{part}"), 0..2000)).await;
        }
    });
    let during = http_get(admin, "/metrics").await;
    sender.await.unwrap();
    wait_for(10.0, "10000 frames at the backends", || {
        a.count() + b.count() == 10_000
    })
    .await;
    wait_for(5.0, "all settled", || {
        metric(&server, "auditlb_frames_settled_total", &[]) == 10_000.0
    })
    .await;
    let after = http_get(admin, "/metrics").await;
    let moved = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(moved("auditlb_frames_in_total"), 10_000.0);
    assert_eq!(moved("auditlb_frames_out_total"), 10_000.0);
    assert_eq!(moved("auditlb_frames_settled_total"), 10_000.0);
    assert_eq!(
        sample(&after, "auditlb_frames_out_total{backend=\""),
        (a.count() + b.count()) as f64
    );
    assert!(moved("auditlb_journal_records_total") >= 10_000.0);
    // A scrape taken while frames flow sees counters between the two.
    for name in ["auditlb_frames_in_total", "auditlb_journal_records_total"] {
        let (b, d, a) = (
            sample(&before, name),
            sample(&during, name),
            sample(&after, name),
        );
        assert!(b <= d && d <= a, "{name}: {b} {d} {a}");
    }
    // The exposition passes Prometheus' own linter.
    let body = after.split("\r\n\r\n").nth(1).unwrap().to_owned();
    let (ok, out) = promtool_check(&body);
    assert!(ok, "promtool: {out}");
    server.shutdown().await;
}
