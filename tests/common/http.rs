//! The admin endpoint, as Prometheus and a load balancer's probe see it.

use super::*;
use tokio::io::AsyncWriteExt;

/// GET `path` from the admin endpoint; the whole response.
pub async fn http_get(admin: std::net::SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of one sample line (`name{labels} value`) in a scrape.
pub fn sample(scrape: &str, prefix: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// `/metrics` of the admin endpoint at `admin`, from a test thread.
pub fn scrape(admin: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of the first sample line starting with `line_start`.
pub fn scraped(admin: std::net::SocketAddr, line_start: &str) -> Option<f64> {
    scrape(admin)
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits (10 s at most) until the sample starting with `line_start` is `want`.
pub fn wait_scraped(admin: std::net::SocketAddr, line_start: &str, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while scraped(admin, line_start) != Some(want) {
        assert!(
            std::time::Instant::now() < deadline,
            "{line_start} never became {want}:\n{}",
            scrape(admin)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` on a scrape body: (passed, what it said).
pub fn promtool_check(body: &str) -> (bool, String) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's prometheus package (.ci/run does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}
