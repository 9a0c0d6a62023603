//! The admin HTTP endpoint: `GET /metrics` (Prometheus text), `/healthz`
//! (process alive) and `/readyz` (200 only when every pool has an available
//! backend and the journal takes writes under its disk budget; the body
//! says what is missing). A deliberately small HTTP/1.x
//! server: one request per connection, bounded request size, a read
//! deadline, and a cap on concurrent admin connections, so a bad or slow
//! client gets a 4xx or is cut off and cannot stall it. Spawned by the
//! server when `[admin]` is configured. Reading a request head and routing
//! it are pure functions ([`find_head_end`], [`parse_request`]), fuzzed in
//! `fuzz/`; the tasks around them only do the I/O.

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

/// Where the request head in `buf` ends (just past its blank line), once
/// it has arrived.
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    Readyz,
}

/// Why a request is refused; [`Refusal::status`] is its HTTP status and
/// the message its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("bad request line")]
    BadRequestLine,
    #[error("HTTP/1.x only")]
    NotHttp1,
    #[error("only GET is served")]
    NotGet,
    #[error("not found; try /metrics /healthz /readyz")]
    NotFound,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequestLine | Refusal::NotHttp1 => 400,
            Refusal::NotGet => 405,
            Refusal::NotFound => 404,
        }
    }
}

/// The routing decision for one request head (its bytes up to the blank
/// line): pure, so it is unit-tested and fuzzed (`fuzz/`). Only the
/// request line counts: `GET PATH[?QUERY] HTTP/1.x`; headers are ignored.
pub fn parse_request(head: &[u8]) -> Result<Route, Refusal> {
    let line = head.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequestLine);
    };
    if !version.starts_with(b"HTTP/1.") {
        return Err(Refusal::NotHttp1);
    }
    if method != b"GET" {
        return Err(Refusal::NotGet);
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or(&[]);
    match path {
        b"/metrics" => Ok(Route::Metrics),
        b"/healthz" => Ok(Route::Healthz),
        b"/readyz" => Ok(Route::Readyz),
        _ => Err(Refusal::NotFound),
    }
}

fn respond(head: &[u8], status: &dyn Status) -> (u16, &'static str, String) {
    match parse_request(head) {
        Err(why) => (why.status(), "text/plain", format!("{why}\n")),
        Ok(Route::Metrics) => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            status.metrics().render(),
        ),
        Ok(Route::Healthz) => (200, "text/plain", "ok\n".into()),
        Ok(Route::Readyz) => match status.ready() {
            Ok(()) => (200, "text/plain", "ready\n".into()),
            Err(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_refusals() {
        for (head, want) in [
            (
                &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                Ok(Route::Metrics),
            ),
            (
                b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n",
                Ok(Route::Metrics),
            ),
            (b"GET /healthz HTTP/1.1\r\n\r\n", Ok(Route::Healthz)),
            (b"GET /readyz HTTP/1.1\r\n\r\n", Ok(Route::Readyz)),
            (b"GET / HTTP/1.1\r\n\r\n", Err(Refusal::NotFound)),
            (b"GET /metrics/ HTTP/1.1\r\n\r\n", Err(Refusal::NotFound)),
            (
                b"GET /m\xc3\xa9trics HTTP/1.1\r\n\r\n",
                Err(Refusal::NotFound),
            ),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Err(Refusal::NotGet)),
            (b"get /metrics HTTP/1.1\r\n\r\n", Err(Refusal::NotGet)),
            (b"GET /metrics HTTP/2\r\n\r\n", Err(Refusal::NotHttp1)),
            (b"GET /metrics\r\n\r\n", Err(Refusal::BadRequestLine)),
            (b"GET\r\n\r\n", Err(Refusal::BadRequestLine)),
            (b"\r\n\r\n", Err(Refusal::BadRequestLine)),
            (b"", Err(Refusal::BadRequestLine)),
            (b"\xff\xfe \x00 \x80", Err(Refusal::NotHttp1)),
        ] {
            assert_eq!(
                parse_request(head),
                want,
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        assert_eq!(Refusal::NotGet.status(), 405);
        assert_eq!(
            Refusal::NotFound.to_string(),
            "not found; try /metrics /healthz /readyz"
        );
    }

    #[test]
    fn head_ends_after_the_blank_line() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r"), None);
        assert_eq!(find_head_end(b""), None);
    }
}
