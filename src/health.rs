//! Active health checks: one checker task per backend, spawned by the
//! server, runs a [`HealthCheck`] every `interval` and reports each result
//! to the [`Backend`], whose rise/fall hysteresis decides up or down.
//! Passive failures (an upstream's write error, reset or EOF) come in
//! through [`Backend::passive_failure`] and mark a backend down at once.
//! Depends on the backend, never the other way round.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;

/// One kind of active check.
pub trait HealthCheck: Send + Sync + 'static {
    /// Checks the backend at `addr` once: `Ok`, or why it failed.
    fn check(&self, addr: SocketAddr) -> impl Future<Output = Result<(), String>> + Send;
}

/// A TCP connect within `timeout` (the default check).
pub struct TcpConnect {
    pub timeout: Duration,
}

impl HealthCheck for TcpConnect {
    async fn check(&self, addr: SocketAddr) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                drop(stream);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("health check: connect: {e}")),
            Err(_) => Err(format!(
                "health check: no connection within {:?}",
                self.timeout
            )),
        }
    }
}

/// A TCP connect and a TLS handshake within `timeout` (pools with
/// `[pool.tls]`): a backend whose certificate no longer passes is down
/// before a frame is sent to it.
pub struct TlsHandshake {
    pub timeout: Duration,
    /// The pool's current TLS material.
    pub tls: crate::tls::PoolTlsSlot,
}

impl HealthCheck for TlsHandshake {
    async fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let Some(tls) = crate::tls::current(&self.tls) else {
            return TcpConnect {
                timeout: self.timeout,
            }
            .check(addr)
            .await;
        };
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("health check: connect: {e}"))?;
            let mut stream = tls
                .connect(addr, tcp)
                .await
                .map_err(|e| format!("health check: TLS handshake: {e}"))?;
            // close_notify, so the backend logs no error for the probe.
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
            Ok(())
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "health check: no TLS session within {:?}",
                self.timeout
            )),
        }
    }
}

/// For RELP pools: a connection (over TLS with `[pool.tls]`), `open`
/// answered with 200 and the `syslog` command, then `close`. A backend
/// that accepts connections but does not speak RELP is down, and the
/// backend sees a clean session rather than a broken one per check.
pub struct RelpOpen {
    pub timeout: Duration,
    pub tls: crate::tls::PoolTlsSlot,
}

impl HealthCheck for RelpOpen {
    async fn check(&self, addr: SocketAddr) -> Result<(), String> {
        let attempt = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("health check: connect: {e}"))?;
            match crate::tls::current(&self.tls) {
                None => relp_probe(tcp).await,
                Some(tls) => {
                    let mut stream = tls
                        .connect(addr, tcp)
                        .await
                        .map_err(|e| format!("health check: TLS handshake: {e}"))?;
                    relp_probe(&mut stream).await?;
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
                    Ok(())
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "health check: no RELP session within {:?}",
                self.timeout
            )),
        }
    }
}

/// `open`, its answer, `close`, its answer: the same exchange a RELP
/// pool's connection opens with.
async fn relp_probe<S>(s: S) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use crate::relp;
    use crate::upstream::relp::{check_open, exchange};
    let (mut rd, mut wr) = tokio::io::split(s);
    let mut dec = relp::Decoder::new(64 * 1024);
    let mut buf = bytes::BytesMut::new();
    let step = |command: &'static str, f: std::io::Result<relp::Frame>| {
        f.map_err(|e| format!("health check: RELP {command}: {e}"))
    };
    let f = step(
        "open",
        exchange(
            &mut rd,
            &mut wr,
            &mut dec,
            &mut buf,
            1,
            "open",
            &relp::offers(),
        )
        .await,
    )?;
    check_open(&f).map_err(|e| format!("health check: {e}"))?;
    let f = step(
        "close",
        exchange(&mut rd, &mut wr, &mut dec, &mut buf, 2, "close", b"").await,
    )?;
    // librelp answers `close` with an empty rsp, then serverclose.
    if f.command != relp::Command::Rsp || f.txnr != 2 {
        return Err("health check: no RELP answer to close".into());
    }
    Ok(())
}

/// Checks one backend with `check` every `interval` until `stop` is
/// cancelled. The first check runs at once.
pub async fn run(
    backend: Arc<Backend>,
    interval: Duration,
    check: impl HealthCheck,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let outcome = check.check(backend.addr).await;
        backend
            .metrics
            .check_duration
            .observe(started.elapsed().as_secs_f64());
        backend.active_result(outcome);
    }
}
