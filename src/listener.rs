//! Listeners and client sessions. A listener binds with socket2 (reuseaddr,
//! backlog, keepalive), takes a connection permit *before* accepting, backs
//! off on accept errors, and spawns one session task per client. A session
//! reads into a buffer, cuts frames with its [`Decoder`], and sends each
//! read's frames as one batch to the journal writer, which routes them to the
//! listener's pool (backpressure: a full writer queue stops the read). Idle and partial-frame timeouts close stuck
//! clients; every close has a counted reason.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::{Framing, ListenerConfig, Oversize};
use crate::frame::{ConnMeta, Frame};
use crate::framer::{Decoder, Event, FrameError};
use crate::journal::Ingress;
use crate::metrics::ListenerMetrics;
use crate::ratelimit::LogLimiter;

/// Most bytes read in one go; also the most a session buffers beyond one
/// frame.
const READ_CHUNK: usize = 64 * 1024;
/// A batch is sent to the journal writer at the latest when it holds this
/// many frames.
const BATCH_FRAMES: usize = 1024;

/// Process-wide connection numbering, for logs.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot listen on {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds a listening socket the way a proxy should.
pub fn bind(cfg: &ListenerConfig) -> Result<TcpListener, BindError> {
    let addr = cfg.socket_addr();
    let err = |source| BindError {
        name: cfg.name.clone(),
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(i32::try_from(cfg.backlog).unwrap_or(i32::MAX))
        .map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Settings every session of one listener shares.
struct SessionSettings {
    name: Arc<str>,
    framing: Framing,
    max_frame: usize,
    oversize: Oversize,
    idle_timeout: Duration,
    frame_timeout: Duration,
    metrics: ListenerMetrics,
    /// To the journal writer.
    tx: mpsc::Sender<Ingress>,
    /// This listener's slot: the journal writer maps it to a pool.
    slot: usize,
    warn_limit: Arc<LogLimiter>,
}

/// Counts connections per source IP; a guard gives the slot back.
struct SourceLimit {
    /// 0: no limit.
    max: AtomicUsize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    limit: Arc<SourceLimit>,
    ip: IpAddr,
}

impl SourceLimit {
    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut m = crate::lock(&self.counts);
        let max = self.max.load(Ordering::Relaxed);
        let c = m.entry(ip).or_insert(0);
        if max > 0 && *c >= max {
            return None;
        }
        *c += 1;
        Some(SourceSlot {
            limit: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = crate::lock(&self.limit.counts);
        if let Some(c) = m.get_mut(&self.ip) {
            *c -= 1;
            if *c == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// One bound listener, ready to run.
pub struct Listener {
    listener: TcpListener,
    shared: Arc<ListenerShared>,
}

/// What a reload may change on a running listener: new limits and session
/// settings apply to connections accepted from then on; the connections
/// already open keep theirs (as with HAProxy's reload), but count against
/// the new `max-connections`.
pub struct ListenerShared {
    limit: Arc<Semaphore>,
    /// The `max-connections` the semaphore holds permits for.
    max: Mutex<usize>,
    per_source: Arc<SourceLimit>,
    settings: std::sync::RwLock<Arc<SessionSettings>>,
}

impl ListenerShared {
    /// Applies a reloaded listener config (same name and address).
    pub fn update(&self, cfg: &ListenerConfig) {
        let mut max = crate::lock(&self.max);
        if cfg.max_connections > *max {
            self.limit.add_permits(cfg.max_connections - *max);
        } else if cfg.max_connections < *max {
            // Free permits go now; the rest as open connections close.
            let excess = *max - cfg.max_connections;
            let gone = self.limit.forget_permits(excess);
            if gone < excess {
                let limit = self.limit.clone();
                let rest = u32::try_from(excess - gone).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        *max = cfg.max_connections;
        self.per_source.max.store(
            cfg.max_connections_per_source.unwrap_or(0),
            Ordering::Relaxed,
        );
        let mut settings = self.settings.write().unwrap_or_else(|p| p.into_inner());
        let old = settings.clone();
        *settings = Arc::new(SessionSettings::new(
            cfg,
            old.metrics.clone(),
            old.tx.clone(),
            old.slot,
            old.warn_limit.clone(),
        ));
    }

    fn settings(&self) -> Arc<SessionSettings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl SessionSettings {
    fn new(
        cfg: &ListenerConfig,
        metrics: ListenerMetrics,
        tx: mpsc::Sender<Ingress>,
        slot: usize,
        warn_limit: Arc<LogLimiter>,
    ) -> Self {
        Self {
            name: cfg.name.as_str().into(),
            framing: cfg.framing,
            max_frame: usize::try_from(cfg.max_frame.0).unwrap_or(usize::MAX),
            oversize: cfg.oversize,
            idle_timeout: cfg.idle_timeout.0,
            frame_timeout: cfg.frame_timeout.0,
            metrics,
            tx,
            slot,
            warn_limit,
        }
    }
}

impl Listener {
    /// `slot` is the listener's number for the journal writer's routing.
    pub fn new(
        cfg: &ListenerConfig,
        listener: TcpListener,
        tx: mpsc::Sender<Ingress>,
        slot: usize,
        metrics: ListenerMetrics,
    ) -> Self {
        let warn_limit = Arc::new(LogLimiter::new(10, Duration::from_secs(10)));
        Self {
            listener,
            shared: Arc::new(ListenerShared {
                limit: Arc::new(Semaphore::new(cfg.max_connections)),
                max: Mutex::new(cfg.max_connections),
                per_source: Arc::new(SourceLimit {
                    max: AtomicUsize::new(cfg.max_connections_per_source.unwrap_or(0)),
                    counts: Mutex::new(HashMap::new()),
                }),
                settings: std::sync::RwLock::new(Arc::new(SessionSettings::new(
                    cfg, metrics, tx, slot, warn_limit,
                ))),
            }),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The handle a reload changes the listener through.
    pub fn shared(&self) -> Arc<ListenerShared> {
        self.shared.clone()
    }

    /// Accepts until `stop`; sessions are spawned on `tasks` and also end at
    /// `stop`, after handing over what they read. `own` tracks just this
    /// listener's sessions (a reload that removes it waits for them).
    pub async fn run(self, stop: CancellationToken, tasks: TaskTracker, own: TaskTracker) {
        let name = self.shared.settings().name.clone();
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = self.shared.limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => {
                        backoff = Duration::from_millis(5);
                        x
                    }
                    Err(e) => {
                        // EMFILE and friends: wait instead of spinning.
                        tracing::warn!(listener = %name, error = %e, retry_in = ?backoff, "accept failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let settings = self.shared.settings();
            let slot = match self.shared.per_source.try_take(peer.ip()) {
                Some(s) => s,
                None => {
                    settings.metrics.rejected_limit.inc();
                    if let Some(skipped) = settings.warn_limit.allow() {
                        tracing::warn!(listener = %name, client = %peer, skipped, "per-source connection limit reached; connection refused");
                    }
                    continue;
                }
            };
            settings.metrics.accepted.inc();
            let stop = stop.clone();
            let mine = own.token();
            tasks.spawn(async move {
                let _permit = permit;
                let _slot = slot;
                let _mine = mine;
                settings.metrics.open.inc();
                session(stream, peer, &settings, stop).await;
                settings.metrics.open.dec();
            });
        }
        tracing::info!(listener = %name, "stopped accepting");
    }
}

/// Why a session ended.
enum Close {
    Eof,
    Idle,
    FrameTimeout,
    Malformed(String),
    Oversize(String),
    Error(io::Error),
    Shutdown,
    /// The journal writer is gone (process stopping).
    Downstream,
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    s: &SessionSettings,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let _ = SockRef::from(&stream).set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10)),
    );
    let meta = Arc::new(ConnMeta::new(
        NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        s.name.clone(),
        peer,
    ));
    // One span per connection, attached to the future (not entered across
    // awaits, which would leak it into other tasks' logs).
    let span = tracing::debug_span!("session", listener = %s.name, client = %peer, conn = meta.id);
    let close = async {
        tracing::debug!("client connected");
        read_loop(&stream, &meta, s, &stop).await
    }
    .instrument(span)
    .await;
    let m = &s.metrics;
    match &close {
        Close::Eof => m.closed_eof.inc(),
        Close::Idle => m.closed_idle.inc(),
        Close::FrameTimeout => m.closed_frame_timeout.inc(),
        Close::Malformed(_) => m.closed_malformed.inc(),
        Close::Oversize(_) => m.closed_oversize.inc(),
        Close::Error(_) => m.closed_error.inc(),
        Close::Shutdown | Close::Downstream => m.closed_shutdown.inc(),
    }
    let reason = match close {
        Close::Eof => {
            tracing::debug!("client closed the connection");
            return;
        }
        Close::Shutdown | Close::Downstream => {
            tracing::debug!("closed for shutdown");
            return;
        }
        Close::Idle => format!("idle for {:?}", s.idle_timeout),
        Close::FrameTimeout => format!("frame not completed within {:?}", s.frame_timeout),
        Close::Malformed(e) | Close::Oversize(e) => e,
        Close::Error(e) => format!("read: {e}"),
    };
    if let Some(skipped) = s.warn_limit.allow() {
        tracing::warn!(listener = %s.name, client = %peer, reason, skipped, "closing client connection");
    }
}

async fn read_loop(
    stream: &TcpStream,
    meta: &Arc<ConnMeta>,
    s: &SessionSettings,
    stop: &CancellationToken,
) -> Close {
    let mut dec = Decoder::new(s.framing, s.max_frame, s.oversize);
    let chunk = READ_CHUNK.min(dec.max_buffer()).max(4096);
    let mut buf = BytesMut::new();
    let mut batch: Vec<Frame> = Vec::new();
    let mut last_read = Instant::now();
    let mut partial_since: Option<Instant> = None;
    let mut eof = false;
    let mut draining = false;
    loop {
        // Cut every complete frame out of what we have.
        let mut completed = false;
        let mut failure = None;
        loop {
            let r = if eof {
                dec.finish(&mut buf)
            } else {
                dec.decode(&mut buf)
            };
            match r {
                Ok(Some(ev)) => {
                    completed = true;
                    match ev {
                        Event::Frame(f) => batch.push(Frame::new(f, meta.clone())),
                        Event::Truncated { frame, len } => {
                            s.metrics.truncated.inc();
                            if let Some(skipped) = s.warn_limit.allow() {
                                tracing::warn!(listener = %s.name, client = %meta.peer, len, max_frame = s.max_frame, skipped, "frame truncated to max-frame");
                            }
                            batch.push(Frame::new(frame, meta.clone()));
                        }
                        Event::Dropped { len } => {
                            s.metrics.refused_oversize.inc();
                            if !flush(&mut batch, s).await {
                                return Close::Downstream;
                            }
                            record_gap(s, meta, "oversize").await;
                            if let Some(skipped) = s.warn_limit.allow() {
                                tracing::warn!(listener = %s.name, client = %meta.peer, len, max_frame = s.max_frame, skipped, "oversize frame dropped");
                            }
                        }
                    }
                    if batch.len() >= BATCH_FRAMES && !flush(&mut batch, s).await {
                        return Close::Downstream;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !batch.is_empty() && !flush(&mut batch, s).await {
            return Close::Downstream;
        }
        if let Some(e) = failure {
            let (reason, close) = match e {
                FrameError::Malformed(_) => {
                    s.metrics.refused_malformed.inc();
                    ("malformed", Close::Malformed(e.to_string()))
                }
                FrameError::Oversize { .. } | FrameError::LineTooLong { .. } => {
                    s.metrics.refused_oversize.inc();
                    ("oversize", Close::Oversize(e.to_string()))
                }
                FrameError::Incomplete { .. } => {
                    s.metrics.refused_incomplete.inc();
                    ("incomplete", Close::Malformed(e.to_string()))
                }
            };
            record_gap(s, meta, reason).await;
            return close;
        }
        if eof {
            return Close::Eof;
        }
        if buf.is_empty() {
            // Let an idle connection hold no buffer at all.
            buf = BytesMut::new();
        }
        let now = Instant::now();
        partial_since = if dec.in_frame(&buf) {
            if completed {
                Some(now)
            } else {
                partial_since.or(Some(now))
            }
        } else {
            None
        };
        let idle_deadline = last_read + s.idle_timeout;
        let deadline = match partial_since {
            Some(t) => idle_deadline.min(t + s.frame_timeout),
            None => idle_deadline,
        };
        if draining {
            // Stopping: take what the kernel already holds, then close.
        } else {
            tokio::select! {
            _ = stop.cancelled() => draining = true,
            _ = tokio::time::sleep_until(deadline) => {
                return if partial_since.is_some_and(|t| t + s.frame_timeout <= Instant::now()) {
                    Close::FrameTimeout
                } else {
                    Close::Idle
                };
            }
            r = stream.readable() => {
                if let Err(e) = r {
                    return Close::Error(e);
                }
            }
            }
        }
        buf.reserve(chunk);
        match stream.try_read_buf(&mut buf) {
            Ok(0) => eof = true,
            Ok(n) => {
                s.metrics.bytes_in.inc_by(n as u64);
                last_read = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if draining {
                    return Close::Shutdown;
                }
            }
            Err(e) => return Close::Error(e),
        }
    }
}

/// Hands the batch to the journal writer. False when it is gone.
async fn flush(batch: &mut Vec<Frame>, s: &SessionSettings) -> bool {
    let frames = std::mem::take(batch);
    let n = frames.len() as u64;
    s.metrics.frames_in.inc_by(n);
    let sent = s.tx.send(Ingress::Frames {
        listener: s.slot,
        frames,
    });
    if sent.await.is_err() {
        // Only when the journal stopped (shutdown grace over while it was
        // full): counted and logged, since it can no longer be journaled.
        s.metrics.refused_unjournaled.inc_by(n);
        tracing::error!(listener = %s.name, frames = n, "frames read from a client could not be journaled before exit");
        return false;
    }
    true
}

/// Records frames refused before routing in the journal (a GAP record).
async fn record_gap(s: &SessionSettings, meta: &ConnMeta, reason: &'static str) {
    let _ =
        s.tx.send(Ingress::Gap {
            listener: s.name.clone(),
            client: meta.peer,
            reason,
            count: 1,
        })
        .await;
}
