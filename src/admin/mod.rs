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
//! the journal (who, role, what, outcome) before anything is served: a
//! request whose record the journal does not take within
//! [`RECORD_WAIT`] (a journal at its budget) is answered 503 and not
//! served. A reload is recorded when it starts and again with its result
//! (the second record is written even if the client has gone). Refusals
//! (401, 403, 400, 404, 405, and unknown tokens shown to metrics and
//! health) are recorded without waiting, at most [`REFUSALS_RECORDED`] per
//! 10 s; the rest are counted, and the next recorded refusal says how
//! many were not. One request per connection,
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
/// A stream whose reader takes nothing for this long is cut (its
/// connection slot and thread go back).
const STALL: Duration = Duration::from_secs(60);
/// `/journal/records` streams at once: each reads the open segment into
/// memory (at most `segment-size`; the writer may cut a failed write off
/// its end, so it is not mapped).
pub const MAX_RECORD_STREAMS: usize = 2;
/// How long an admin request waits for its ADMIN record to be taken.
pub const RECORD_WAIT: Duration = Duration::from_secs(2);

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
    /// The journal writer, for ADMIN records. Weak: the writer's input
    /// must end at shutdown when the sessions' senders go.
    pub ingress: mpsc::WeakSender<Ingress>,
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
    /// Journal record streams at once (each holds the open segment).
    streams: Arc<Semaphore>,
    /// Refusals a full writer queue kept out, for the next record.
    unrecorded: std::sync::atomic::AtomicU64,
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
            ingress: ingress.downgrade(),
            reload,
            journal_dir,
            anchors,
            refusals: LogLimiter::new(REFUSALS_RECORDED, Duration::from_secs(10)),
            verifying: Arc::new(Semaphore::new(1)),
            streams: Arc::new(Semaphore::new(MAX_RECORD_STREAMS)),
            unrecorded: std::sync::atomic::AtomicU64::new(0),
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

async fn handle(req: Request<Incoming>, admin: &Arc<Admin>, caller: &Caller) -> Response<Body> {
    let metrics = admin.status.metrics();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let action = match req.uri().query() {
        Some(q) => format!("{method} {path}?{q}"),
        None => format!("{method} {path}"),
    };
    let mut caller = caller.clone();
    let bad_auth = match req.headers().get(http::header::AUTHORIZATION) {
        None => false,
        Some(h) => match Caller::token_of(h.as_bytes()) {
            Some(t) => {
                caller.token = Some(t);
                false
            }
            None => true,
        },
    };
    let route = match route(&method, &path) {
        Ok(r) => r,
        Err(code) => {
            metrics.admin_request("-", code);
            let who = admin.roles.decide(&caller, Right::Metrics).who().to_owned();
            refused(admin, &who, &action, code);
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
    if bad_auth {
        metrics.admin_request(route.name(), 400);
        metrics.admin_refused("bad_request");
        refused(admin, "anonymous", &action, 400);
        return text(400, "Authorization: only `Bearer TOKEN` is taken\n");
    }
    let right = route.right();
    let decision = admin.roles.decide(&caller, right);
    let audited = !matches!(right, Right::Metrics | Right::Health);
    let role = match &decision {
        Decision::Allowed { role, .. } => role.clone(),
        no => {
            let code = no.status();
            metrics.admin_request(route.name(), code);
            metrics.admin_refused(if code == 401 {
                "unauthenticated"
            } else {
                "forbidden"
            });
            // Metrics and health are recorded only for a token no role
            // knows (they would otherwise tell a token's validity
            // untraced).
            if audited || caller.token.is_some() {
                refused(admin, no.who(), &action, code);
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
                    no.who(),
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
    if route == Route::Reload {
        return reload(admin, who, role, action).await;
    }
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
        Route::Verify if full => full_verify(admin),
        Route::Verify => json(200, verify_json(metrics)),
        Route::Records => records(admin, &q),
        Route::Checkpoints => checkpoints(admin).await,
        Route::Reload => unreachable!("answered above"),
    };
    let code = resp.status().as_u16();
    if audited {
        // Recorded before the answer leaves (a stream's data flows only
        // once it is returned): nothing is served unrecorded.
        let outcome = match (route, code) {
            (Route::Records | Route::Checkpoints, 200) => format!("{code} streaming"),
            (Route::Verify, 200) if full => format!("{code} streaming a fresh verification"),
            _ => code.to_string(),
        };
        if !record(admin, &who, &role, &action, outcome).await {
            metrics.admin_request(route.name(), 503);
            return text(
                503,
                "the journal does not take the ADMIN record of this request now (at its budget?); nothing was served\n",
            );
        }
    }
    metrics.admin_request(route.name(), code);
    resp
}

/// Writes an ADMIN record, waiting at most [`RECORD_WAIT`] for room in the
/// writer's queue (not for the disk). False when it was not taken.
async fn record(admin: &Admin, who: &str, role: &str, action: &str, outcome: String) -> bool {
    let a = AdminAction {
        who: who.to_owned(),
        role: role.to_owned(),
        action: action.to_owned(),
        outcome,
    };
    // Debug formatting: a certificate subject's control characters are
    // escaped in the log, not written raw.
    tracing::info!(who = ?a.who, role = ?a.role, action = ?a.action, outcome = ?a.outcome, "admin request");
    let Some(tx) = admin.ingress.upgrade() else {
        return false;
    };
    match tx
        .send_timeout(Ingress::Admin(Box::new(a)), RECORD_WAIT)
        .await
    {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                "admin request not recorded: the journal writer did not take it in time"
            );
            false
        }
    }
}

/// Records a refusal without waiting, at most [`REFUSALS_RECORDED`] per
/// 10 s; the next one recorded says how many were not.
fn refused(admin: &Admin, who: &str, action: &str, code: u16) {
    let Some(skipped) = admin.refusals.allow() else {
        return;
    };
    // Refusals a full queue kept out count as not recorded too.
    let skipped = skipped
        + admin
            .unrecorded
            .swap(0, std::sync::atomic::Ordering::Relaxed);
    let outcome = match skipped {
        0 => format!("{code} refused"),
        n => format!("{code} refused ({n} refusals before it not recorded)"),
    };
    tracing::info!(who = ?who, action = ?action, outcome = ?outcome, "admin request refused");
    let Some(tx) = admin.ingress.upgrade() else {
        return;
    };
    if tx
        .try_send(Ingress::Admin(Box::new(AdminAction {
            who: who.to_owned(),
            role: String::new(),
            action: action.to_owned(),
            outcome,
        })))
        .is_err()
    {
        admin
            .unrecorded
            .fetch_add(1 + skipped, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `POST /reload`: recorded when it starts; the reload and the record of
/// its result run on their own, so a client that leaves cuts neither.
async fn reload(admin: &Arc<Admin>, who: String, role: String, action: String) -> Response<Body> {
    let metrics = admin.status.metrics();
    let Some(tx) = admin.reload.clone() else {
        metrics.admin_request(Route::Reload.name(), 503);
        return text(503, "reload is not offered by this process\n");
    };
    let (done, answer) = oneshot::channel();
    let permit = match tx.try_reserve_owned() {
        Ok(p) => p,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics.admin_request(Route::Reload.name(), 409);
            refused(admin, &who, &action, 409);
            return text(409, "a reload is already waiting\n");
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            metrics.admin_request(Route::Reload.name(), 503);
            return text(503, "the process is stopping\n");
        }
    };
    if !record(admin, &who, &role, &action, "started".into()).await {
        metrics.admin_request(Route::Reload.name(), 503);
        return text(
            503,
            "the journal does not take the ADMIN record of this request now; nothing was done\n",
        );
    }
    permit.send(done);
    let a = admin.clone();
    let job = tokio::spawn(async move {
        let (code, outcome, body) = match answer.await {
            Ok(Ok(applied)) => (
                200,
                "200 applied".to_owned(),
                format!("applied: {applied}\n"),
            ),
            Ok(Err(problems)) => (
                422,
                format!("422 refused: {} problem(s)", problems.len()),
                format!(
                    "refused; the running config stays:\n{}\n",
                    problems.join("\n")
                ),
            ),
            Err(_) => (
                503,
                "503 not done (stopping)".into(),
                "the process is stopping\n".into(),
            ),
        };
        record(&a, &who, &role, &action, outcome).await;
        a.status.metrics().admin_request(Route::Reload.name(), code);
        text(code, body)
    });
    job.await
        .unwrap_or_else(|_| text(500, "the reload task failed\n"))
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
/// directory against the anchors, streamed as it goes: a line when it
/// starts, one per segment walked, then the report as `auditlb verify
/// --json` gives it (one at a time; 409 while one runs).
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
        // A line per segment walked, as it goes; the report at the end.
        // A reader that left (or stalled) stops the walk.
        let mut gone = false;
        let mut progress = |seg: &std::path::Path, rep: &crate::journal::verify::Report| {
            let r = writeln!(
                w,
                "{{\"segment\":{},\"records\":{},\"frames\":{}}}",
                crate::journal::verify::json_str(&seg.display().to_string()),
                rep.records,
                rep.frames
            )
            .and_then(|()| w.flush());
            gone = r.is_err();
            !gone
        };
        let result = crate::journal::verify::verify_with_progress(
            &dir,
            anchors.as_deref(),
            None,
            &mut progress,
        );
        let line = match result {
            Ok(report) => report.json(),
            Err(e) => format!(
                "{{\"error\":{}}}",
                crate::journal::verify::json_str(&e.to_string())
            ),
        };
        if gone || writeln!(w, "{line}").and_then(|()| w.flush()).is_err() {
            // Cut short: the body ends with an error, never looking whole.
            w.fail();
        }
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
///
/// A writer that fails marks it: the body then ends with an error, which
/// aborts the response (no final empty chunk), so a client never takes a
/// cut stream for a whole one.
fn channel_body() -> (ChunkWriter, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_QUEUED);
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = (rx, failed.clone(), false);
    let stream = futures_util::stream::unfold(state, |(mut rx, failed, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(c) => Some((Ok(Frame::data(c)), (rx, failed, false))),
            None if failed.load(std::sync::atomic::Ordering::Acquire) => Some((
                Err(std::io::Error::other("the journal stream failed")),
                (rx, failed, true),
            )),
            None => None,
        }
    });
    (
        ChunkWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
            failed,
        },
        BodyExt::boxed(StreamBody::new(stream)),
    )
}

/// `std::io::Write` into a streamed body, a chunk at a time.
struct ChunkWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl ChunkWriter {
    /// The stream ends with an error (once what is queued is read).
    fn fail(&self) {
        self.failed
            .store(true, std::sync::atomic::Ordering::Release);
    }
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
        let mut chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        // A reader that takes nothing for STALL is let go.
        let deadline = std::time::Instant::now() + STALL;
        loop {
            match self.tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the reader left",
                    ))
                }
                Err(mpsc::error::TrySendError::Full(c)) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the reader took nothing for {STALL:?}"),
                        ));
                    }
                    chunk = c;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
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
    let Ok(permit) = admin.streams.clone().try_acquire_owned() else {
        return text(
            409,
            format!("{MAX_RECORD_STREAMS} journal streams are already running\n"),
        );
    };
    let (mut w, body) = channel_body();
    let dir = admin.journal_dir.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let r = cat(&dir, from, to, Format::Jsonl, &mut w).and_then(|_| {
            use std::io::Write;
            w.flush()
        });
        if let Err(e) = r {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                tracing::warn!(error = %e, "admin: journal records stream failed");
                w.fail();
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
