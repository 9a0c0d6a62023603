//! Test helpers, by concern: [`sink`] (a backend in the test process,
//! plain or TLS), [`procs`] (auditlb, backends and clients as processes),
//! [`ids`] (unique ids at the backends and in the journal), [`inproc`]
//! (auditlb in the test process), [`http`] (the admin endpoint), [`config`]
//! (configs built, not edited), [`pki`] (a test CA, its certificates and
//! CRLs, and rustls configs for test peers), and here polling and scratch
//! directories.
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use auditlb::config::Config;
use auditlb::server::Server;

mod config;
mod http;
mod ids;
mod inproc;
mod pki;
mod procs;
mod s3;
mod sink;
pub use config::TestConfig;
pub use http::*;
pub use ids::*;
pub use inproc::*;
pub use pki::*;
pub use procs::*;
pub use s3::*;
pub use sink::*;

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

/// A loopback address nothing listens on now (for a backend started
/// later, or a server that takes a port number).
/// Polls `cond` every 20 ms from a test thread until it holds; after
/// `secs`, fails with `why()`.
pub fn until(secs: u64, why: impl Fn() -> String, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        if std::time::Instant::now() > deadline {
            panic!("after {secs}s: {}", why());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
