//! The `auditlb` binary: `check` on every shipped config and on broken ones,
//! and `run` with a graceful SIGTERM drain.

mod common;

use std::process::Command;

use common::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditlb"))
}

/// Every shipped config passes `check`, which also loads the TLS files it
/// names: they are made here, at the relative paths `conf/tls.toml` uses.
#[test]
fn every_shipped_config_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
    let cwd = scratch_dir("shipped-configs");
    let tls = cwd.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let clients = Pki::new(&tls, "clients");
    clients.server("server", &["logs.example.com"]);
    clients.crl("clients", &[]);
    let siem = Pki::new(&tls, "siem");
    siem.client("auditlb", "auditlb", &[]);
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = bin()
                .args(["check", "--config"])
                .arg(&path)
                .current_dir(&cwd)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "conf/auditlb.toml and conf/tls.toml not found"
    );
}

#[test]
fn check_names_every_problem_by_key_path_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[listener]]
name = "in"
address = "127.0.0.1:6514"
pool = "missing"
[[pool]]
name = "p"
balance = "hash"
[pool.health]
fall = 0
[[pool.backend]]
address = "127.0.0.1:99999"
"#,
    )
    .unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "bad.toml",
        "listener[0].pool: unknown pool \"missing\"",
        "pool[0].health.fall",
        "pool[0].backend[0].address",
    ] {
        assert!(err.contains(want), "{want} missing from:\n{err}");
    }
    // A syntax error and an unknown key name the file and the key.
    std::fs::write(&path, "[[listener]]\nname = \"in\"\nadress = \"x\"\n").unwrap();
    let out = bin()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adress") && err.contains("bad.toml"), "{err}");
    // A missing file.
    let out = bin()
        .args(["check", "--config", "/nonexistent/auditlb.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/auditlb.toml"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_queued_frames_and_exits_0() {
    let sink = Sink::start(SinkFraming::Octet).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("auditlb.toml");
    std::fs::write(&path, config(&[(sink.addr, 1, false)], "", "")).unwrap();
    // Killed on drop whatever happens; its port comes from its log.
    let (mut child, addr) = spawn_auditlb(&path);
    let msgs = lines("t", 0..20000);
    send_lf(addr, &msgs).await;
    // Stop at once: what auditlb read must still reach the backend.
    child.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || child.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    wait_for(5.0, "all frames delivered before exit", || {
        sink.count() == 20000
    })
    .await;
}
