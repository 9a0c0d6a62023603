//! Client sessions: one task per client connection. On a TLS listener the
//! session first runs the handshake under `handshake-timeout` (never in
//! the accept loop), refusing with a typed, counted, logged reason, and
//! closes with close_notify at the end. A session then reads into a
//! buffer, cuts frames with its [`Decoder`], and sends each read's frames as
//! one batch to the journal writer, which routes them to the listener's pool
//! (backpressure: a full writer queue stops the read). Idle and
//! partial-frame timeouts close stuck clients; every close has a counted
//! reason, and frames refused before routing leave a GAP record.
//!
//! On a `protocol = "relp"` listener the session speaks RELP instead
//! ([`relp`]): same journal, same limits, plus an answer per message once
//! it is durable.

mod relp;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Protocol;
use crate::frame::{ConnMeta, Frame};
use crate::framer::{Decoder, Event, FrameError};
use crate::journal::Ingress;
use crate::listener::SessionSettings;
use crate::tls::{ListenerTls, PeerChain, Refusal, TlsIdentity};

/// The listener's TLS material after each reload, and who this session's
/// peer is: a session that a reload would no longer let in is closed.
struct Recheck {
    reloads: tokio::sync::watch::Receiver<Option<Arc<ListenerTls>>>,
    /// `None`: a plain TCP session.
    peer: Option<PeerChain>,
    /// The listener is gone (no more reloads to watch).
    done: bool,
}

impl Recheck {
    /// Would the material now in force let this session in?
    fn check(&mut self) -> Result<(), String> {
        let now = self.reloads.borrow_and_update().clone();
        match (now, &self.peer) {
            // A listener that no longer speaks TLS: open sessions go on.
            (None, _) => Ok(()),
            (Some(_), None) => Err("the listener now requires TLS".into()),
            (Some(t), Some(chain)) => t.admits(chain).map_err(|r| {
                format!(
                    "after a reload the client is no longer admitted: {}",
                    r.label()
                )
            }),
        }
    }

    async fn changed(&mut self) {
        if self.done || self.reloads.changed().await.is_err() {
            self.done = true;
            std::future::pending::<()>().await;
        }
    }
}

/// Most bytes read in one go; also the most a session buffers beyond one
/// frame.
const READ_CHUNK: usize = 64 * 1024;
/// A batch whose frames hold fewer bytes than this is copied out of the
/// read buffer ([`crate::frame::pack`]): a quarter of a read. Measured with
/// a fleet of 2,000 clients sending a 200-byte line every 0.5 s: peak RSS
/// 210 MiB with every frame a view of its 64KiB read, 46 MiB packed. At
/// full speed (reads full of frames) copying bought nothing and cost peak
/// memory (85 -> 110 MiB, medians of 3), so big batches stay views.
const PACK_BELOW: usize = READ_CHUNK / 4;

/// A batch is sent to the journal writer at the latest when it holds this
/// many frames.
const BATCH_FRAMES: usize = 1024;

/// Process-wide connection numbering, for logs.
static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

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
    /// A reload brought TLS material that would not let this client in
    /// (revoked, no longer allowed, plain TCP on a listener that now
    /// requires TLS).
    Revalidation(String),
    /// The TLS handshake failed or was refused.
    Handshake {
        why: Refusal,
        sni: Option<String>,
        detail: String,
    },
}

impl Close {
    /// An end that leaves a frame begun and not finished as refused (a
    /// GAP "incomplete"): the client did not end it (an EOF finishes what
    /// framing allows, and RELP counts it too).
    fn cuts_a_frame(&self) -> bool {
        matches!(
            self,
            Close::Idle
                | Close::FrameTimeout
                | Close::Error(_)
                | Close::Shutdown
                | Close::Revalidation(_)
        )
    }
}

/// How long a closing TLS session waits to get its close_notify out.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

pub(crate) async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    s: &SessionSettings,
    stop: CancellationToken,
    reloads: tokio::sync::watch::Receiver<Option<Arc<ListenerTls>>>,
) {
    let _ = stream.set_nodelay(true);
    let _ = SockRef::from(&stream).set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(10)),
    );
    let id = NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed);
    let mut meta = ConnMeta::new(id, s.name.clone(), peer);
    let is_relp = s.protocol == Protocol::Relp;
    if is_relp {
        meta = meta.with_relp();
    }
    // One span per connection, attached to the future (not entered across
    // awaits, which would leak it into other tasks' logs).
    let span = tracing::debug_span!("session", listener = %s.name, client = %peer, conn = id);
    let close = async {
        tracing::debug!("client connected");
        let mut recheck = Recheck {
            reloads,
            peer: None,
            done: false,
        };
        // What this session started with; only reloads after it count.
        recheck.reloads.mark_unchanged();
        match &s.tls {
            None if is_relp => {
                Box::pin(relp::session(stream, &Arc::new(meta), s, &stop, &mut recheck)).await
            }
            None => read_loop(stream, &Arc::new(meta), s, &stop, &mut recheck).await,
            // Boxed: the TLS states (handshake, a rustls connection) are
            // several KiB, and an inline branch would make every plain
            // session's future that large too (10,000 idle clients).
            Some(tls) => Box::pin(async {
                match handshake(stream, tls, &stop, &s.metrics).await {
                Ok((mut stream, identity)) => {
                    s.metrics.tls_ok(&identity.version);
                    recheck.peer = Some(PeerChain(
                        stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                            .unwrap_or_default(),
                    ));
                    tracing::debug!(version = %identity.version, cipher = %identity.cipher, sni = ?identity.sni, peer = ?identity.peer.as_ref().map(|p| &p.subject), "TLS session established");
                    let meta = Arc::new(meta.with_tls(identity));
                    let close = if is_relp {
                        relp::session(&mut stream, &meta, s, &stop, &mut recheck).await
                    } else {
                        read_loop(&mut stream, &meta, s, &stop, &mut recheck).await
                    };
                    // close_notify, so the client knows nothing was cut.
                    let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, stream.shutdown()).await;
                    close
                }
                Err(close) => close,
            }})
            .await,
        }
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
        Close::Handshake { why, .. } => {
            m.closed_handshake.inc();
            m.tls_refused(*why);
        }
        Close::Revalidation(_) => m.closed_revalidation.inc(),
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
        Close::Handshake { why, sni, detail } => {
            if let Some(skipped) = s.warn_limit.allow() {
                tracing::warn!(listener = %s.name, client = %peer, sni = sni.as_deref().unwrap_or("-"), reason = why.label(), detail, skipped, "TLS handshake refused");
            }
            return;
        }
        Close::Idle => format!("idle for {:?}", s.idle_timeout),
        Close::FrameTimeout => format!("frame not completed within {:?}", s.frame_timeout),
        Close::Malformed(e) | Close::Oversize(e) | Close::Revalidation(e) => e,
        Close::Error(e) => format!("read: {e}"),
    };
    if let Some(skipped) = s.warn_limit.allow() {
        tracing::warn!(listener = %s.name, client = %peer, reason, skipped, "closing client connection");
    }
}

/// The server side of a TLS handshake, within the listener's
/// `handshake-timeout`. The ClientHello is read first, so a refusal can
/// name the server name the client asked for.
async fn handshake(
    stream: TcpStream,
    tls: &ListenerTls,
    stop: &CancellationToken,
    metrics: &crate::metrics::ListenerMetrics,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsIdentity), Close> {
    let deadline = Instant::now() + tls.handshake_timeout;
    let timed_out = |sni: Option<String>| Close::Handshake {
        why: Refusal::Timeout,
        sni,
        detail: format!("not finished within {:?}", tls.handshake_timeout),
    };
    let failed = |e: io::Error, sni: Option<String>| Close::Handshake {
        why: Refusal::of_io(&e),
        sni,
        detail: e.to_string(),
    };
    // At most `max-handshakes` at once: each may hold 64KiB of handshake
    // messages. Waiting for a turn counts against the timeout (the earlier
    // handshakes end by their own, earlier, deadlines).
    let _turn = match tls.handshakes.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            metrics.tls_waited();
            tokio::select! {
                _ = stop.cancelled() => return Err(Close::Shutdown),
                p = tokio::time::timeout_at(deadline, tls.handshakes.clone().acquire_owned()) => match p {
                    Ok(Ok(p)) => p,
                    _ => return Err(timed_out(None)),
                },
            }
        }
    };
    let acceptor =
        tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = tokio::select! {
        _ = stop.cancelled() => return Err(Close::Shutdown),
        r = tokio::time::timeout_at(deadline, acceptor) => match r {
            Err(_) => return Err(timed_out(None)),
            Ok(Err(e)) => return Err(failed(e, None)),
            Ok(Ok(start)) => start,
        },
    };
    let sni = start.client_hello().server_name().map(str::to_owned);
    let stream = tokio::select! {
        _ = stop.cancelled() => return Err(Close::Shutdown),
        r = tokio::time::timeout_at(deadline, start.into_stream(tls.server.clone())) => match r {
            Err(_) => return Err(timed_out(sni)),
            Ok(Err(e)) => return Err(failed(e, sni)),
            Ok(Ok(s)) => s,
        },
    };
    let identity = TlsIdentity::of_server(stream.get_ref().1);
    Ok((stream, identity))
}

/// While draining for shutdown: how long a read may wait for what the
/// client already sent. A read that returns less than asked makes tokio
/// forget the socket's readiness until the reactor sees it again, so "no
/// data this instant" is not "no data": a short wait lets the kernel's
/// buffer (and TLS records in flight on loopback) be taken in full.
const DRAIN_READ_WAIT: Duration = Duration::from_millis(20);

/// A client stream a session reads frames from.
pub(crate) trait ClientStream: AsyncRead + Unpin + Send {
    /// Reads what is there into `buf`, reserving `chunk` bytes first. A
    /// plain socket reserves only once it is reported readable (which can
    /// happen for a socket that has nothing; then the buffer is let go
    /// again), so an idle client holds no read buffer while it waits: with
    /// 10,000 idle clients that is 64 KiB each. A TLS stream may hold
    /// decrypted data inside, so it reads at once.
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        chunk: usize,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a;
}

impl ClientStream for TcpStream {
    async fn read_some<'a>(&'a mut self, buf: &'a mut BytesMut, chunk: usize) -> io::Result<usize> {
        loop {
            if buf.is_empty() {
                self.readable().await?;
            }
            buf.reserve(chunk);
            // One read attempt; a short read clears the readiness (unlike
            // `try_read_buf`), so the next wait is a real one rather than a
            // read that finds nothing.
            let once = std::future::poll_fn(|cx| {
                match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *self), cx, buf) {
                    std::task::Poll::Pending => std::task::Poll::Ready(None),
                    std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                }
            })
            .await;
            match once {
                Some(r) => return r,
                None if buf.is_empty() => *buf = BytesMut::new(),
                // Part of a frame is held: wait with it.
                None => self.readable().await?,
            }
        }
    }
}

impl ClientStream for &mut tokio_rustls::server::TlsStream<TcpStream> {
    fn read_some<'a>(
        &'a mut self,
        buf: &'a mut BytesMut,
        chunk: usize,
    ) -> impl std::future::Future<Output = io::Result<usize>> + Send + 'a {
        buf.reserve(chunk);
        self.read_buf(buf)
    }
}

/// Reads what the client already sent, waiting at most [`DRAIN_READ_WAIT`]:
/// `None` when nothing came (used while draining for shutdown).
async fn read_now<S: ClientStream>(
    stream: &mut S,
    buf: &mut BytesMut,
    chunk: usize,
) -> Option<io::Result<usize>> {
    tokio::time::timeout(DRAIN_READ_WAIT, stream.read_some(buf, chunk))
        .await
        .ok()
}

/// Reads frames until the connection ends. Whatever the end, part of a
/// frame still held (a reset, a timeout, a stop, a TLS record that fails)
/// is refused with a GAP record, like a frame cut at an EOF.
async fn read_loop<S: ClientStream>(
    stream: S,
    meta: &Arc<ConnMeta>,
    s: &SessionSettings,
    stop: &CancellationToken,
    recheck: &mut Recheck,
) -> Close {
    let mut dec = Decoder::new(s.framing, s.max_frame, s.oversize);
    let mut buf = BytesMut::new();
    let close = read_frames(stream, &mut dec, &mut buf, meta, s, stop, recheck).await;
    if close.cuts_a_frame() && dec.partial(&buf) {
        s.metrics.refused_incomplete.inc();
        record_gap(s, meta, "incomplete").await;
    }
    close
}

async fn read_frames<S: ClientStream>(
    mut stream: S,
    dec: &mut Decoder,
    buf: &mut BytesMut,
    meta: &Arc<ConnMeta>,
    s: &SessionSettings,
    stop: &CancellationToken,
    recheck: &mut Recheck,
) -> Close {
    let chunk = READ_CHUNK.min(dec.max_buffer()).max(4096);
    let mut batch: Vec<Frame> = Vec::new();
    let mut last_read = Instant::now();
    let mut partial_since: Option<Instant> = None;
    let mut eof = false;
    // The TLS stream ended without close_notify: what was authenticated is
    // whole records, but a frame left open at the end was cut (perhaps by
    // someone on the path), so it is not taken as a frame.
    let mut cut = false;
    let mut draining = false;
    loop {
        // Cut every complete frame out of what we have.
        let mut completed = false;
        let mut failure = None;
        loop {
            let r = match (eof, cut) {
                (false, _) => dec.decode(buf),
                (true, false) => dec.finish(buf),
                (true, true) => dec.finish_cut(buf),
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
            *buf = BytesMut::new();
        }
        let deadline;
        (partial_since, deadline) =
            timeouts(s, dec.in_frame(buf), completed, partial_since, last_read);
        let read = if draining {
            // Stopping: take what is already buffered, then close.
            match read_now(&mut stream, buf, chunk).await {
                Some(r) => r,
                None => return Close::Shutdown,
            }
        } else {
            tokio::select! {
                _ = stop.cancelled() => {
                    draining = true;
                    continue;
                }
                _ = recheck.changed() => {
                    if let Err(why) = recheck.check() {
                        return Close::Revalidation(why);
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return if partial_since.is_some_and(|t| t + s.frame_timeout <= Instant::now()) {
                        Close::FrameTimeout
                    } else {
                        Close::Idle
                    };
                }
                r = stream.read_some(buf, chunk) => r,
            }
        };
        match read {
            Ok(0) => eof = true,
            Ok(n) => {
                s.metrics.bytes_in.inc_by(n as u64);
                last_read = Instant::now();
            }
            // A TLS client that closes without close_notify: what it sent
            // was authenticated record by record, so whole frames are kept
            // (many syslog senders close this way); a frame left open is
            // refused above.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                eof = true;
                cut = true;
            }
            Err(e) => return Close::Error(e),
        }
    }
}

/// When the frame being read started (`None`: none is; a frame completed
/// just now restarts the clock for the next one), and how long the next
/// wait may last: `idle-timeout` after `last_read`, or `frame-timeout`
/// after the frame started, whichever comes first.
fn timeouts(
    s: &SessionSettings,
    in_frame: bool,
    completed: bool,
    partial_since: Option<Instant>,
    last_read: Instant,
) -> (Option<Instant>, Instant) {
    let now = Instant::now();
    let partial_since = match (in_frame, completed) {
        (false, _) => None,
        (true, true) => Some(now),
        (true, false) => partial_since.or(Some(now)),
    };
    let idle = last_read + s.idle_timeout;
    let deadline = partial_since.map_or(idle, |t| idle.min(t + s.frame_timeout));
    (partial_since, deadline)
}

/// Hands the batch to the journal writer. False when it is gone.
async fn flush(batch: &mut Vec<Frame>, s: &SessionSettings) -> bool {
    flush_with(batch, s, None).await
}

/// Hands the batch to the journal writer, which answers `ack` with the
/// seq of its last frame (or why it refused them). False when it is gone.
async fn flush_with(
    batch: &mut Vec<Frame>,
    s: &SessionSettings,
    ack: Option<crate::journal::Ack>,
) -> bool {
    let mut frames = std::mem::take(batch);
    // A few frames would keep a whole read buffer alive: copy them out. A
    // read full of frames uses its buffer well and goes on as it is.
    if frames.iter().map(Frame::len).sum::<usize>() <= PACK_BELOW {
        crate::frame::pack(&mut frames);
    }
    let n = frames.len() as u64;
    s.metrics.frames_in.inc_by(n);
    let sent = s.tx.send(Ingress::Frames {
        listener: s.slot,
        frames,
        ack,
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
