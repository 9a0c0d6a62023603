//! The admin HTTP endpoint: `GET /metrics` (Prometheus text), `/healthz`
//! (process alive) and `/readyz` (200 only when every pool has an available
//! backend; the body says what is missing). A deliberately small HTTP/1.x
//! server: one request per connection, bounded request size, a read
//! deadline, and a cap on concurrent admin connections, so a bad or slow
//! client gets a 4xx or is cut off and cannot stall it. Spawned by the
//! server when `[admin]` is configured.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

const MAX_REQUEST: usize = 8 * 1024;
const READ_DEADLINE: Duration = Duration::from_secs(5);
const MAX_ADMIN_CONNECTIONS: usize = 32;

/// What the admin endpoint reports on.
pub trait Status: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    /// `Ok` when ready, else what is missing.
    fn ready(&self) -> Result<(), String>;
}

pub async fn run(listener: TcpListener, status: Arc<dyn Status>, stop: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let status = status.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = serve(stream, &*status).await;
        });
    }
}

async fn serve(mut stream: TcpStream, status: &dyn Status) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_DEADLINE, async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                return Ok(Some(end));
            }
            if buf.len() >= MAX_REQUEST {
                return Ok(None);
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let (code, ctype, body) = match head {
        Err(_) => (408, "text/plain", "request timeout\n".to_owned()),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(None)) => (431, "text/plain", "request header too large\n".to_owned()),
        Ok(Ok(Some(end))) => respond(&buf[..end], status),
    };
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn respond(head: &[u8], status: &dyn Status) -> (u16, &'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return (400, "text/plain", "bad request line\n".into());
    };
    if !version.starts_with("HTTP/1.") {
        return (400, "text/plain", "HTTP/1.x only\n".into());
    }
    if method != "GET" {
        return (405, "text/plain", "only GET is served\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            status.metrics().render(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => match status.ready() {
            Ok(()) => (200, "text/plain", "ready\n".into()),
            Err(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (
            404,
            "text/plain",
            "not found; try /metrics /healthz /readyz\n".into(),
        ),
    }
}
