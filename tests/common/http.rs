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

/// The sum of the samples of `name` whose labels include every `k="v"` of
/// `labels` (0 when there is none).
pub fn metric_sum(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbl) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = n == name
                && labels
                    .iter()
                    .all(|(k, v)| lbl.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            if matches {
                value.trim().parse::<f64>().ok()
            } else {
                None
            }
        })
        .sum()
}

/// The RELP, backend and refusal series of a scrape, for failure messages.
pub fn relp_series(scrape: &str) -> String {
    scrape
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && [
                    "relp",
                    "backend_up",
                    "transitions",
                    "refused",
                    "closed_total",
                ]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `name{labels}` (summed) at the admin endpoint `admin`
/// satisfies `ok` (described by `want`); fails with the RELP series.
pub fn wait_metric(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: &str,
    ok: impl Fn(f64) -> bool,
    secs: u64,
) {
    until(
        secs,
        || {
            let text = scrape(admin);
            format!(
                "{name}{labels:?} is {}, never {want}; the RELP series:\n{}",
                metric_sum(&text, name, labels),
                relp_series(&text)
            )
        },
        || ok(metric_sum(&scrape(admin), name, labels)),
    );
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
