//! The admin endpoint: an HTTP/1.1 server (hyper), over TLS with
//! `[admin.tls]`, where every request needs a right that a role grants the
//! caller ([`auth`]):
//!
//! | request | right |
//! |---|---|
//! | `GET /metrics` | metrics |
//! | `GET /healthz`, `GET /readyz` | health |
//! | `GET /status` | status |
//! | `POST /reload` | reload |
//! | `GET /journal/verify`, `/journal/records`, `/journal/checkpoints` | journal |
//!
//! Every request other than metrics and health leaves an ADMIN record in
//! the journal (who, role, what, outcome), refusals too (at most
//! [`REFUSALS_RECORDED`] per 10 s; the rest are counted, and the next
//! record says how many were not recorded). One request per connection,
//! request heads bounded in size and time, at most
//! [`MAX_ADMIN_CONNECTIONS`] at once; a journal stream holds at most a few
//! chunks of 64 KiB.

pub mod auth;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::journal::{AdminAction, Ingress};
use crate::metrics::Metrics;
use crate::ratelimit::LogLimiter;
use crate::tls::ListenerTls;
use auth::{Caller, Decision, Right, Roles};

/// Longest request head (hyper's smallest read buffer).
const MAX_REQUEST: usize = 8 * 1024;
/// A request head must arrive within this.
const READ_DEADLINE: Duration = Duration::from_secs(5);
pub const MAX_ADMIN_CONNECTIONS: usize = 32;
/// Refusals recorded in the journal per 10 s; the rest are counted.
pub const REFUSALS_RECORDED: u32 = 20;
/// A journal stream's chunk, and how many may wait for a slow reader.
const CHUNK: usize = 64 * 1024;
const CHUNKS_QUEUED: usize = 4;

/// What the admin endpoint reports on.
pub trait Status: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    /// `Ok` when ready, else what is missing.
    fn ready(&self) -> Result<(), String>;
    /// `/status`: pools, backends, listeners, journal, archive (JSON).
    fn status_json(&self) -> String;
}

/// A reload asked for over the endpoint: answered with what was applied,
/// or every problem by key path.
pub type ReloadRequest = oneshot::Sender<Result<String, Vec<String>>>;

/// What a request handler needs.
pub struct Admin {
    pub status: Arc<dyn Status>,
    pub roles: Roles,
    pub tls: Option<Arc<ListenerTls>>,
    /// The journal writer, for ADMIN records.
    pub ingress: mpsc::Sender<Ingress>,
    /// The process's reload loop (`None`: reload is not offered, e.g. in
    /// tests that run the server in-process).
    pub reload: Option<mpsc::Sender<ReloadRequest>>,
    /// The journal directory and anchors file, for the journal endpoints.
    pub journal_dir: std::path::PathBuf,
    pub anchors: Option<std::path::PathBuf>,
    /// Refusals recorded at most this often.
    refusals: LogLimiter,
    /// One fresh verification (`/journal/verify?full=1`) at a time.
    verifying: Arc<Semaphore>,
}

impl Admin {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        status: Arc<dyn Status>,
        roles: Roles,
        tls: Option<Arc<ListenerTls>>,
        ingress: mpsc::Sender<Ingress>,
        reload: Option<mpsc::Sender<ReloadRequest>>,
        journal_dir: std::path::PathBuf,
        anchors: Option<std::path::PathBuf>,
    ) -> Admin {
        Admin {
            status,
            roles,
            tls,
            ingress,
            reload,
            journal_dir,
            anchors,
            refusals: LogLimiter::new(REFUSALS_RECORDED, Duration::from_secs(10)),
            verifying: Arc::new(Semaphore::new(1)),
        }
    }
}

pub async fn run(listener: TcpListener, admin: Arc<Admin>, stop: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = connection(stream, peer, admin) => {}
            }
        });
    }
}

/// One connection: the TLS handshake if any (the client certificate names
/// the caller), then one request.
async fn connection(stream: TcpStream, peer: SocketAddr, admin: Arc<Admin>) {
    let _ = stream.set_nodelay(true);
    let metrics = admin.status.metrics();
    match admin.tls.clone() {
        None => serve(stream, Caller::default(), admin).await,
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            let s = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.admin_refused("tls_handshake");
                    tracing::debug!(client = %peer, error = %e, "admin TLS handshake refused");
                    return;
                }
                Err(_) => {
                    metrics.admin_refused("tls_handshake");
                    return;
                }
            };
            let cert = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| crate::tls::identity::PeerCert::parse(c).ok());
            serve(s, Caller { cert, token: None }, admin).await;
        }
    }
}

async fn serve<S>(stream: S, caller: Caller, admin: Arc<Admin>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let caller = Arc::new(caller);
    let service = hyper::service::service_fn(move |req| {
        let (admin, caller) = (admin.clone(), caller.clone());
        async move { Ok::<_, Infallible>(handle(req, &admin, &caller).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(READ_DEADLINE)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

type Body = BoxBody<Bytes, std::io::Error>;

fn text(code: u16, body: impl Into<String>) -> Response<Body> {
    let body: String = body.into();
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed())
        .expect("a valid response")
}

fn json(code: u16, body: String) -> Response<Body> {
    let mut r = text(code, body);
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Metrics,
    Healthz,
    Readyz,
    Status,
    Reload,
    Verify,
    Records,
    Checkpoints,
}

impl Route {
    pub fn right(self) -> Right {
        match self {
            Route::Metrics => Right::Metrics,
            Route::Healthz | Route::Readyz => Right::Health,
            Route::Status => Right::Status,
            Route::Reload => Right::Reload,
            Route::Verify | Route::Records | Route::Checkpoints => Right::Journal,
        }
    }

    /// The label of its counter.
    pub fn name(self) -> &'static str {
        match self {
            Route::Metrics => "/metrics",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Status => "/status",
            Route::Reload => "/reload",
            Route::Verify => "/journal/verify",
            Route::Records => "/journal/records",
            Route::Checkpoints => "/journal/checkpoints",
        }
    }
}

/// The route for a method and path, or the status to refuse it with (404
/// for an unknown path, 405 for a known path with another method). Pure:
/// unit-tested and fuzzed.
pub fn route(method: &str, path: &str) -> Result<Route, u16> {
    let (r, post) = match path {
        "/metrics" => (Route::Metrics, false),
        "/healthz" => (Route::Healthz, false),
        "/readyz" => (Route::Readyz, false),
        "/status" => (Route::Status, false),
        "/reload" => (Route::Reload, true),
        "/journal/verify" => (Route::Verify, false),
        "/journal/records" => (Route::Records, false),
        "/journal/checkpoints" => (Route::Checkpoints, false),
        _ => return Err(404),
    };
    match (method, post) {
        ("GET" | "HEAD", false) | ("POST", true) => Ok(r),
        _ => Err(405),
    }
}

/// `key=value` pairs of a query string (no percent-decoding beyond `%3A`
/// for the colons of an RFC 3339 time, and `+`).
pub fn query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let v = v
                .replace("%3A", ":")
                .replace("%3a", ":")
                .replace("%2B", "+");
            (k.to_owned(), v)
        })
        .collect()
}

async fn handle(req: Request<Incoming>, admin: &Admin, caller: &Caller) -> Response<Body> {
    let metrics = admin.status.metrics();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let route = match route(&method, &path) {
        Ok(r) => r,
        Err(code) => {
            metrics.admin_request("-", code);
            return text(
                code,
                if code == 404 {
                    "not found; try /metrics /healthz /readyz /status /reload /journal/verify /journal/records /journal/checkpoints\n"
                } else {
                    "method not allowed (POST /reload; GET everything else)\n"
                },
            );
        }
    };
    let mut caller = caller.clone();
    if let Some(h) = req.headers().get(http::header::AUTHORIZATION) {
        match Caller::token_of(h.as_bytes()) {
            Some(t) => caller.token = Some(t),
            None => {
                metrics.admin_request(route.name(), 400);
                return text(400, "Authorization: only `Bearer TOKEN` is taken\n");
            }
        }
    }
    let right = route.right();
    let decision = admin.roles.decide(&caller, right);
    let action = match req.uri().query() {
        Some(q) => format!("{method} {path}?{q}"),
        None => format!("{method} {path}"),
    };
    let audited = !matches!(right, Right::Metrics | Right::Health);
    let role = match &decision {
        Decision::Allowed { role, .. } => role.clone(),
        refused => {
            let code = refused.status();
            metrics.admin_request(route.name(), code);
            metrics.admin_refused(if code == 401 {
                "unauthenticated"
            } else {
                "forbidden"
            });
            if audited {
                if let Some(skipped) = admin.refusals.allow() {
                    let outcome = match skipped {
                        0 => format!("{code} refused"),
                        n => format!("{code} refused ({n} refusals before it not recorded)"),
                    };
                    record(admin, refused.who(), "", &action, outcome).await;
                }
            }
            let mut r = text(
                code,
                format!(
                    "{}: {} may not {}\n",
                    if code == 401 {
                        "unauthenticated"
                    } else {
                        "forbidden"
                    },
                    refused.who(),
                    right.name()
                ),
            );
            if code == 401 {
                r.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"auditlb\""),
                );
            }
            return r;
        }
    };
    let who = decision.who().to_owned();
    let q = query(req.uri().query().unwrap_or(""));
    let full = q.iter().any(|(k, v)| k == "full" && v == "1");
    let resp = match route {
        Route::Metrics => {
            let mut r = text(200, metrics.render());
            r.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        Route::Healthz => text(200, "ok\n"),
        Route::Readyz => match admin.status.ready() {
            Ok(()) => text(200, "ready\n"),
            Err(why) => text(503, format!("not ready: {why}\n")),
        },
        Route::Status => json(200, admin.status.status_json()),
        Route::Reload => reload(admin).await,
        Route::Verify if full => full_verify(admin),
        Route::Verify => json(200, verify_json(metrics)),
        Route::Records => records(admin, &q),
        Route::Checkpoints => checkpoints(admin).await,
    };
    let code = resp.status().as_u16();
    metrics.admin_request(route.name(), code);
    if audited {
        let outcome = match (route, code) {
            (Route::Reload, _) => format!("{code} {}", reload_outcome(&resp)),
            (Route::Records | Route::Checkpoints, 200) => format!("{code} streaming"),
            (Route::Verify, 200) if full => format!("{code} streaming a fresh verification"),
            _ => code.to_string(),
        };
        record(admin, &who, &role, &action, outcome).await;
    }
    resp
}

/// The first line of a reload's answer, for its ADMIN record.
fn reload_outcome(r: &Response<Body>) -> String {
    r.headers()
        .get("x-auditlb-reload")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Writes an ADMIN record (waits for room in the writer's queue, not for
/// the disk).
async fn record(admin: &Admin, who: &str, role: &str, action: &str, outcome: String) {
    let a = AdminAction {
        who: who.to_owned(),
        role: role.to_owned(),
        action: action.to_owned(),
        outcome,
    };
    tracing::info!(who = %a.who, role = %a.role, action = %a.action, outcome = %a.outcome, "admin request");
    if admin
        .ingress
        .send(Ingress::Admin(Box::new(a)))
        .await
        .is_err()
    {
        tracing::warn!("admin request not recorded: the journal writer has stopped");
    }
}

async fn reload(admin: &Admin) -> Response<Body> {
    let Some(tx) = &admin.reload else {
        return text(503, "reload is not offered by this process\n");
    };
    let (done, answer) = oneshot::channel();
    match tx.try_send(done) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return text(409, "a reload is already under way\n");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return text(503, "the process is stopping\n");
        }
    }
    let (code, head, body) = match answer.await {
        Ok(Ok(applied)) => (200, "applied".to_owned(), format!("applied: {applied}\n")),
        Ok(Err(problems)) => (
            422,
            format!("refused: {} problem(s)", problems.len()),
            format!(
                "refused; the running config stays:\n{}\n",
                problems.join("\n")
            ),
        ),
        Err(_) => (503, "not done".into(), "the process is stopping\n".into()),
    };
    let mut r = text(code, body);
    if let Ok(v) = http::HeaderValue::from_str(&head) {
        r.headers_mut().insert("x-auditlb-reload", v);
    }
    r
}

/// The running journal's self-verification as the custodian last left it.
fn verify_json(m: &Metrics) -> String {
    let g = |name: &str| m.sum(name, &[]);
    format!(
        "{{\"verified_seq\":{},\"self_verify_failures\":{},\"tamper_alarm\":{},\"durable_seq\":{},\"last_checkpoint_seq\":{},\"archive_lag_segments\":{}}}\n",
        g("auditlb_journal_verified_seq"),
        g("auditlb_journal_self_verify_failures_total"),
        g("auditlb_journal_tamper_alarm"),
        g("auditlb_journal_durable_seq"),
        g("auditlb_journal_last_checkpoint_seq"),
        g("auditlb_archive_lag_segments"),
    )
}

/// `GET /journal/verify?full=1`: a fresh verification of the journal
/// directory against the anchors, as `auditlb verify --json` reports it:
/// a line when it starts, then the report (one at a time; 409 while one
/// runs).
fn full_verify(admin: &Admin) -> Response<Body> {
    let Ok(permit) = admin.verifying.clone().try_acquire_owned() else {
        return text(409, "a verification is already running\n");
    };
    let (mut w, body) = channel_body();
    let dir = admin.journal_dir.clone();
    let anchors = admin.anchors.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let _permit = permit;
        let _ = writeln!(
            w,
            "{{\"verifying\":{}}}",
            crate::journal::verify::json_str(&dir.display().to_string())
        );
        let _ = w.flush();
        let line = match crate::journal::verify::verify(&dir, anchors.as_deref(), None) {
            Ok(report) => report.json(),
            Err(e) => format!(
                "{{\"error\":{}}}",
                crate::journal::verify::json_str(&e.to_string())
            ),
        };
        let _ = writeln!(w, "{line}");
        let _ = w.flush();
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// A body fed from a blocking writer through a bounded channel: the
/// reader's pace sets the writer's, and a reader that leaves stops it.
fn channel_body() -> (ChunkWriter, Body) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_QUEUED);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c.map(Frame::data), rx))
    });
    (
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        },
        BodyExt::boxed(StreamBody::new(stream)),
    )
}

/// `std::io::Write` into a streamed body, a chunk at a time.
struct ChunkWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader left"))
    }
}

/// `GET /journal/records?from=SEQ|RFC3339&to=...`: the JSON lines of
/// `auditlb cat --format jsonl`, streamed.
fn records(admin: &Admin, q: &[(String, String)]) -> Response<Body> {
    use crate::journal::cat::{cat, Bound, Format};
    let mut from = None;
    let mut to = None;
    for (k, v) in q {
        let b = match Bound::parse(v) {
            Ok(b) => b,
            Err(e) => return text(400, format!("{k}: {e}\n")),
        };
        match k.as_str() {
            "from" => from = Some(b),
            "to" => to = Some(b),
            _ => return text(400, format!("unknown parameter {k:?} (from, to)\n")),
        }
    }
    let (mut w, body) = channel_body();
    let dir = admin.journal_dir.clone();
    tokio::task::spawn_blocking(move || {
        let r = cat(&dir, from, to, Format::Jsonl, &mut w).and_then(|_| {
            use std::io::Write;
            w.flush()
        });
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!(error = %e, "admin: journal records stream failed");
                let _ = w.tx.blocking_send(Err(e));
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// `GET /journal/checkpoints`: the anchors file, streamed.
async fn checkpoints(admin: &Admin) -> Response<Body> {
    let Some(path) = admin.anchors.clone() else {
        return text(404, "no anchors file is configured (journal.anchors)\n");
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => return text(500, format!("{}: {e}\n", path.display())),
    };
    let stream = tokio_util::io::ReaderStream::with_capacity(file, CHUNK);
    let stream = futures_util::StreamExt::map(stream, |c| c.map(Frame::data));
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_methods_and_queries() {
        assert_eq!(route("GET", "/metrics"), Ok(Route::Metrics));
        assert_eq!(route("HEAD", "/healthz"), Ok(Route::Healthz));
        assert_eq!(route("POST", "/reload"), Ok(Route::Reload));
        assert_eq!(route("GET", "/reload"), Err(405));
        assert_eq!(route("POST", "/status"), Err(405));
        assert_eq!(route("GET", "/metrics/"), Err(404));
        assert_eq!(route("GET", "/journal/records"), Ok(Route::Records));
        assert_eq!(Route::Checkpoints.right(), Right::Journal);
        assert_eq!(
            query("from=12&to=2026-11-28T10%3A00%3A00Z&x"),
            vec![
                ("from".into(), "12".into()),
                ("to".into(), "2026-11-28T10:00:00Z".into()),
                ("x".into(), "".into())
            ]
        );
    }
}
