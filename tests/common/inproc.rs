//! auditlb in the test process: started from a config, fed by clients,
//! watched through its metrics.

use super::*;

/// Starts auditlb in-process from TOML text.
pub async fn start(toml: &str) -> Server {
    let cfg = Config::parse(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
    if let Err(e) = cfg.validate() {
        panic!("{e:?}\n{toml}");
    }
    Server::start(cfg).await.unwrap()
}

/// A config with one listener "in" and one pool "p" over `backends`
/// (address, weight, backup); `pool_extra` goes into the [[pool]] table and
/// `listener_extra` into the [[listener]] table.
pub fn config(
    backends: &[(SocketAddr, u32, bool)],
    listener_extra: &str,
    pool_extra: &str,
) -> String {
    TestConfig::new("journal")
        .backends(backends)
        .listener(listener_extra)
        .pool(pool_extra)
        .toml()
}

/// Waits until every listed backend of pool "p" has an open connection.
pub async fn wait_connected(server: &Server, n: usize) {
    wait_for(5.0, "backends connected", || {
        server.pools()[0].backends[..n]
            .iter()
            .all(|b| b.available())
    })
    .await;
}

/// Sends `lines` as LF frames on one new connection and closes it.
pub async fn send_lf(addr: SocketAddr, lines: &[String]) {
    use tokio::io::AsyncWriteExt;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    c.write_all(&data).await.unwrap();
    c.shutdown().await.unwrap();
}

/// Octet-counted encoding of `frames`.
pub fn octet(frames: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(format!("{} ", f.len()).as_bytes());
        out.extend_from_slice(f);
    }
    out
}

/// Frames `msg-<tag>-<i>` for i in range.
pub fn lines(tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range
        .map(|i| format!("<13>1 - host app - - - msg-{tag}-{i}"))
        .collect()
}

pub fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    server.metrics().sum(name, labels)
}

/// One octet-framed sink behind an in-process auditlb (listener and pool
/// extras as in [`config`]), connected and ready; returns the sink, the
/// server and the listener's address.
pub async fn with_one_backend(
    listener_extra: &str,
    pool_extra: &str,
) -> (Sink, Server, SocketAddr) {
    let sink = Sink::start(SinkFraming::Octet).await;
    let server = start(&config(
        &[(sink.addr, 1, false)],
        listener_extra,
        pool_extra,
    ))
    .await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    (sink, server, addr)
}

/// An octet sink and an in-process auditlb forwarding to it, connected.
pub struct Served {
    pub sink: Sink,
    pub server: Server,
    /// The listener "in".
    pub addr: SocketAddr,
    pub cfg: TestConfig,
}

/// Starts an octet sink and an auditlb in `dir` whose config `build` makes
/// from the default test config pointed at the sink; waits until it is
/// connected.
pub async fn serve(dir: &std::path::Path, build: impl FnOnce(TestConfig) -> TestConfig) -> Served {
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = build(TestConfig::at(dir).backend_addrs(&[sink.addr]));
    let server = start(&cfg.toml()).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    Served {
        sink,
        server,
        addr,
        cfg,
    }
}
