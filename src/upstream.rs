//! One persistent connection to one backend: a task that connects, takes
//! batches of frames from the dispatcher, writes them with vectored writes in
//! the pool's output framing, and settles frames once the backend's kernel
//! has acknowledged their bytes (`SIOCOUTQ`). On a write error, reset or EOF
//! it marks the backend down (passive check), hands every unsettled frame
//! back to the dispatcher, and reconnects with exponential backoff and
//! jitter. Spawned by the server, `connections` per backend.
//!
//! Over TLS (`[pool.tls]`) `SIOCOUTQ` counts ciphertext: the socket is
//! wrapped in [`Counted`], and after each batch is written and flushed its
//! frames are settled against the ciphertext bytes written by then, so a
//! frame settles only once every TLS record holding it is acknowledged.
//!
//! Towards a `protocol = "relp"` pool the connection speaks RELP instead
//! ([`relp`]): a frame settles on the backend's `rsp 200`, so neither
//! `SIOCOUTQ` nor a replay window is needed.

pub(crate) mod relp;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::config::OutFraming;
use crate::frame::{escape_lf, Frame};
use crate::metrics::PoolMetrics;

/// Most slices handed to one `writev` (Linux IOV_MAX is 1024).
const MAX_IOV: usize = 512;
/// How often unsettled frames are re-checked against `SIOCOUTQ` when no
/// write happens.
const SETTLE_TICK: Duration = Duration::from_millis(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// State of one upstream connection that the dispatcher reads.
#[derive(Debug)]
pub struct ConnShared {
    /// Open and ready for frames.
    connected: AtomicBool,
    /// Bytes of frames handed to this connection and not yet settled.
    unsettled: AtomicU64,
    /// Journal time of the oldest frame written and not yet settled here
    /// (0: none), for the oldest-undelivered-frame gauge.
    oldest_ns: std::sync::atomic::AtomicI64,
    /// The pool dispatcher's wake-up, signalled when frames settle or come
    /// back so a dispatcher waiting for room can go on.
    wake: Arc<Notify>,
}

impl ConnShared {
    pub fn new(wake: Arc<Notify>) -> Self {
        Self {
            connected: AtomicBool::new(false),
            unsettled: AtomicU64::new(0),
            oldest_ns: std::sync::atomic::AtomicI64::new(0),
            wake,
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    pub fn unsettled(&self) -> u64 {
        self.unsettled.load(Ordering::Acquire)
    }

    pub fn oldest_ns(&self) -> i64 {
        self.oldest_ns.load(Ordering::Relaxed)
    }

    /// Called by the dispatcher before it sends a batch.
    pub fn charge(&self, n: u64) {
        self.unsettled.fetch_add(n, Ordering::AcqRel);
    }

    /// Frames charged to this connection settled, came back, or were lost.
    pub fn release(&self, n: u64) {
        self.unsettled.fetch_sub(n, Ordering::AcqRel);
        self.wake.notify_one();
    }
}

/// Frames coming back from failed connections, for the dispatcher to route
/// again. Bounded by construction: everything in it was first admitted
/// under some connection's `queue-bytes` limit.
#[derive(Default)]
pub struct Handback {
    frames: Mutex<Vec<Frame>>,
    /// Seqs of settled frames to send again (reset connections' replay
    /// windows), read back from the journal by the dispatcher, each with
    /// the backend (its [`Backend::index`]) that may not have read it.
    replay: Mutex<Vec<(u64, u32)>>,
    /// Seqs of frames settled since the dispatcher last looked, for its
    /// delivery cursor. Bounded like the frames: each was in flight.
    settled: Mutex<Vec<(u32, u64)>>,
    /// Frames in `frames` a backend refused (RELP `rsp 500`), by seq, each
    /// with that backend: kept away from it while another can take them.
    kept_off: Mutex<Vec<(u64, u32)>>,
    /// The pool dispatcher's wake-up.
    pub wake: Arc<Notify>,
}

impl Handback {
    pub fn new(wake: Arc<Notify>) -> Self {
        Self {
            frames: Mutex::new(Vec::new()),
            replay: Mutex::new(Vec::new()),
            settled: Mutex::new(Vec::new()),
            kept_off: Mutex::new(Vec::new()),
            wake,
        }
    }

    pub fn push(&self, frames: impl IntoIterator<Item = Frame>) {
        let mut v = crate::lock(&self.frames);
        let before = v.len();
        v.extend(frames);
        if v.len() > before {
            drop(v);
            self.wake.notify_one();
        }
    }

    pub fn take(&self) -> Vec<Frame> {
        std::mem::take(&mut *crate::lock(&self.frames))
    }

    /// Frames backend `backend` refused: routed again, to another backend
    /// while there is one.
    pub fn push_refused(&self, backend: u32, frames: Vec<Frame>) {
        crate::lock(&self.kept_off).extend(
            frames
                .iter()
                .filter(|f| f.seq > 0)
                .map(|f| (f.seq, backend)),
        );
        self.push(frames);
    }

    /// The backends refused frames are to be kept away from, by seq.
    pub fn take_kept_off(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut *crate::lock(&self.kept_off))
    }

    /// Asks for settled frames of backend `backend` to be sent again, by
    /// seq (to other backends while there are any).
    pub fn push_replay(&self, backend: u32, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        crate::lock(&self.replay).extend(seqs.into_iter().map(|s| (s, backend)));
        self.wake.notify_one();
    }

    pub fn take_replay(&self) -> Vec<(u64, u32)> {
        std::mem::take(&mut *crate::lock(&self.replay))
    }

    /// Reports frames settled by backend `backend` (its index in the
    /// dispatcher's list), by seq.
    pub fn settled(&self, backend: u32, seqs: &[u64]) {
        crate::lock(&self.settled).extend(seqs.iter().map(|&s| (backend, s)));
    }

    /// Seqs settled since the last call, swapped into `into` (cleared).
    pub fn take_settled(&self, into: &mut Vec<(u32, u64)>) {
        into.clear();
        std::mem::swap(into, &mut *crate::lock(&self.settled));
    }
}

/// Most frames a connection's replay window indexes (8 bytes each: 2 MiB).
pub const REPLAY_MAX_FRAMES: usize = 1 << 18;

/// A connection's replay window as an index: for each settled frame its
/// distance in seq from the one settled before (negative for a frame
/// handed back from another connection, older than what this one sent)
/// and its length, 8 bytes a frame whatever its size. The frames are read back from the journal when the
/// window is sent again, so its memory does not follow `replay-window`.
#[derive(Debug, Default)]
struct ReplayIndex {
    /// Seq of the oldest entry.
    first: u64,
    /// Seq of the newest entry.
    last: u64,
    /// (seq minus the previous entry's seq, frame length); the oldest
    /// entry's distance is unused.
    entries: VecDeque<(i32, u32)>,
    /// Frame bytes the entries cover.
    bytes: u64,
}

impl ReplayIndex {
    /// Adds a settled frame, then drops the oldest entries beyond `window`
    /// bytes (keeping the newest frame even when it alone is larger) or
    /// [`REPLAY_MAX_FRAMES`]. A frame without a seq (not journaled) is not
    /// kept; nor is anything with `window` 0.
    fn push(&mut self, seq: u64, len: u32, window: u64) {
        if window == 0 || seq == 0 {
            return;
        }
        let step = match self.entries.is_empty() {
            true => Some(0),
            false => i32::try_from(i128::from(seq) - i128::from(self.last)).ok(),
        };
        let Some(step) = step else {
            // 2G seqs from the frame before (a connection idle that long
            // while the journal went on): start over from this frame.
            self.clear();
            return self.push(seq, len, window);
        };
        if self.entries.is_empty() {
            self.first = seq;
        }
        self.entries.push_back((step, len));
        self.last = seq;
        self.bytes += u64::from(len);
        while self.entries.len() > 1
            && (self.bytes - u64::from(self.entries[0].1) >= window
                || self.entries.len() > REPLAY_MAX_FRAMES)
        {
            let (_, len) = self.entries.pop_front().expect("more than one");
            self.bytes -= u64::from(len);
            self.first = self.first.wrapping_add_signed(i64::from(self.entries[0].0));
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The window's seqs in the order they settled; the window is emptied.
    fn take(&mut self) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(self.entries.len());
        let mut seq = self.first;
        for (i, &(step, _)) in self.entries.iter().enumerate() {
            if i > 0 {
                seq = seq.wrapping_add_signed(i64::from(step));
            }
            seqs.push(seq);
        }
        self.clear();
        seqs
    }
}

/// Exponential backoff with jitter for reconnects.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN }
    }

    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// A delay between half and all of the current step; doubles the step.
    fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (step * 2).min(BACKOFF_MAX);
        step.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

/// Settings an upstream needs from its pool.
#[derive(Clone)]
pub struct UpstreamSettings {
    pub framing: OutFraming,
    /// `Some(window)`: RELP towards the backend, with at most `window`
    /// messages unacknowledged.
    pub relp_window: Option<usize>,
    /// Bytes of settled frames sent again after a reset (0: off).
    pub replay_window: u64,
    pub connect_timeout: Duration,
    pub tcp_user_timeout: Duration,
    pub metrics: PoolMetrics,
    /// The pool's TLS material, read at each connect (`None` inside:
    /// plain TCP).
    pub tls: crate::tls::PoolTlsSlot,
}

/// An open backend connection.
enum Conn {
    Plain(TcpStream),
    /// TLS over a socket that counts what is written to it.
    Tls {
        stream: Box<tokio_rustls::client::TlsStream<Counted>>,
        fd: RawFd,
        wire: Arc<AtomicU64>,
    },
}

/// A TCP stream that counts the bytes written to the socket (over TLS:
/// ciphertext, what `SIOCOUTQ` is measured against).
pub struct Counted {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Why a connected session ended.
enum End {
    /// The dispatcher is gone and everything settled.
    Done,
    /// Shutdown grace ran out.
    Aborted,
    /// The connection failed. `clean` when the backend closed it with a
    /// FIN (it read everything it acknowledged); a reset or timeout is not
    /// clean, and the replay window is sent again.
    Failed { reason: String, clean: bool },
}

/// One connection task's state.
pub struct Upstream {
    backend: Arc<Backend>,
    rx: mpsc::Receiver<Vec<Frame>>,
    shared: Arc<ConnShared>,
    handback: Arc<Handback>,
    settings: UpstreamSettings,
    /// Frames handed to the socket, with the stream offset of their last byte.
    fifo: VecDeque<(u64, Frame)>,
    /// Bytes handed to the socket on this connection.
    written: u64,
    /// The most recently settled frames, covering up to `replay-window`
    /// bytes: acknowledged by the backend's kernel but perhaps never read by
    /// the backend, so sent again after a reset. Kept by seq only; the
    /// dispatcher reads them back from the journal.
    replay: ReplayIndex,
    /// Scratch for reporting settled seqs.
    settled_seqs: Vec<u64>,
    /// Last time a frame settled (or nothing was outstanding).
    last_progress: std::time::Instant,
    /// The dispatcher dropped its sender.
    input_closed: bool,
    /// RELP: frames taken from the dispatcher and not yet sent (beyond the
    /// window). Charged to this connection like the FIFO.
    waiting: VecDeque<Frame>,
    /// RELP refusals are logged at most this often.
    warn_limit: crate::ratelimit::LogLimiter,
}

impl Upstream {
    pub fn new(
        backend: Arc<Backend>,
        rx: mpsc::Receiver<Vec<Frame>>,
        shared: Arc<ConnShared>,
        handback: Arc<Handback>,
        settings: UpstreamSettings,
    ) -> Self {
        Self {
            backend,
            rx,
            shared,
            handback,
            settings,
            fifo: VecDeque::new(),
            written: 0,
            replay: ReplayIndex::default(),
            settled_seqs: Vec::new(),
            last_progress: std::time::Instant::now(),
            input_closed: false,
            waiting: VecDeque::new(),
            warn_limit: crate::ratelimit::LogLimiter::new(5, Duration::from_secs(10)),
        }
    }

    /// Runs until the dispatcher is gone and everything is settled, or
    /// `abort` fires (shutdown grace over).
    pub async fn run(mut self, abort: CancellationToken) {
        let mut backoff = Backoff::new();
        loop {
            if self.input_closed {
                return;
            }
            let connected = tokio::select! {
                _ = abort.cancelled() => {
                    self.lose_queued();
                    return;
                }
                r = self.connect() => r,
            };
            match connected {
                Ok(conn) => {
                    self.backend.metrics.connect_ok.inc();
                    backoff.reset();
                    self.shared.connected.store(true, Ordering::Release);
                    self.backend.connection_opened();
                    let end = match (conn, self.settings.relp_window) {
                        (Conn::Plain(mut stream), Some(window)) => {
                            let (rd, wr) = stream.split();
                            self.serve_relp(rd, wr, window, &abort).await
                        }
                        (Conn::Tls { stream, .. }, Some(window)) => {
                            let (rd, wr) = tokio::io::split(*stream);
                            self.serve_relp(rd, wr, window, &abort).await
                        }
                        (Conn::Plain(mut stream), None) => {
                            let fd = stream.as_raw_fd();
                            let (rd, wr) = stream.split();
                            self.serve(rd, wr, fd, None, &abort).await
                        }
                        (Conn::Tls { stream, fd, wire }, None) => {
                            let (rd, wr) = tokio::io::split(*stream);
                            self.serve(rd, wr, fd, Some(&wire), &abort).await
                        }
                    };
                    self.shared.connected.store(false, Ordering::Release);
                    self.backend.connection_closed();
                    match end {
                        End::Done => return,
                        End::Aborted => {
                            self.lose_queued();
                            return;
                        }
                        End::Failed { reason, clean } => {
                            tracing::debug!(backend = %self.backend.addr, %reason, clean, "upstream connection failed");
                            self.backend.passive_failure(&reason);
                            if !clean {
                                self.hand_back_replay();
                            }
                        }
                    }
                }
                Err(e) => {
                    self.backend.metrics.connect_failed.inc();
                    tracing::debug!(backend = %self.backend.addr, error = %e, "upstream connect failed");
                    self.backend.passive_failure(&format!("connect: {e}"));
                }
            }
            self.hand_back_unsettled();
            // Wait before reconnecting; whatever the dispatcher still sends
            // meanwhile goes straight back.
            let wait = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = abort.cancelled() => {
                        self.lose_queued();
                        return;
                    }
                    _ = &mut wait => break,
                    b = self.rx.recv() => match b {
                        Some(batch) => self.give_back(batch),
                        None => return,
                    },
                }
            }
        }
    }

    /// Connects, and over TLS completes the handshake, each step within
    /// `connect-timeout`.
    async fn connect(&self) -> io::Result<Conn> {
        let stream = self.connect_tcp().await?;
        let Some(tls) = crate::tls::current(&self.settings.tls) else {
            return Ok(Conn::Plain(stream));
        };
        let fd = stream.as_raw_fd();
        let wire = Arc::new(AtomicU64::new(0));
        let counted = Counted {
            inner: stream,
            written: wire.clone(),
        };
        let addr = self.backend.addr;
        let stream =
            tokio::time::timeout(self.settings.connect_timeout, tls.connect(addr, counted))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no TLS session within {:?}", self.settings.connect_timeout),
                    )
                })?
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake: {e}")))?;
        // What the handshake wrote is not frame data.
        wire.store(0, Ordering::Relaxed);
        Ok(Conn::Tls {
            stream: Box::new(stream),
            fd,
            wire,
        })
    }

    async fn connect_tcp(&self) -> io::Result<TcpStream> {
        let addr = self.backend.addr;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let stream = tokio::time::timeout(self.settings.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no connection within {:?}", self.settings.connect_timeout),
                )
            })??;
        stream.set_nodelay(true)?;
        let sock = SockRef::from(&stream);
        sock.set_tcp_user_timeout(Some(self.settings.tcp_user_timeout))?;
        sock.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(Duration::from_secs(10))
                .with_interval(Duration::from_secs(5)),
        )?;
        Ok(stream)
    }

    /// Serves one open connection. `wire`: over TLS, the bytes written to
    /// the socket (ciphertext); `None` for plain TCP, where frame bytes are
    /// socket bytes.
    async fn serve<R, W>(
        &mut self,
        mut rd: R,
        mut wr: W,
        fd: RawFd,
        wire: Option<&AtomicU64>,
        abort: &CancellationToken,
    ) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.written = 0;
        self.replay.clear();
        let mut discard = [0u8; 512];
        let mut tick = tokio::time::interval(SETTLE_TICK);
        self.last_progress = std::time::Instant::now();
        let mut parts: Vec<Bytes> = Vec::new();
        loop {
            if self.input_closed && self.fifo.is_empty() {
                let _ = wr.shutdown().await;
                return End::Done;
            }
            tokio::select! {
                biased;
                _ = abort.cancelled() => return End::Aborted,
                r = rd.read(&mut discard) => match r {
                    // Over TCP a FIN means the backend read what its kernel
                    // took (unread data would have made it a reset). Over
                    // TLS its close_notify comes first and hides that
                    // reset: a TLS close is never taken as clean.
                    Ok(0) => return End::Failed { reason: "backend closed the connection".into(), clean: wire.is_none() },
                    Ok(_) => {} // backends have nothing to say; ignore it
                    Err(e) => return End::Failed { reason: format!("read: {e}"), clean: false },
                },
                b = self.rx.recv(), if !self.input_closed => match b {
                    Some(batch) => {
                        let n = batch.len() as u64;
                        let bytes = self.encode(batch, &mut parts);
                        // A batch is at most about `queue-bytes`: a backend that
                        // takes less than that in tcp-user-timeout is hung.
                        let write = async {
                            let mut ends = Vec::new();
                            match wire {
                                None => write_all_vectored(&mut wr, &parts).await?,
                                Some(wire) => {
                                    // In groups of about one TLS record,
                                    // each flushed: a frame then ends where
                                    // the ciphertext ends once its group is
                                    // on the socket (at most a record late,
                                    // never early).
                                    for group in tls_groups(&parts) {
                                        write_all_vectored(&mut wr, &parts[group.clone()]).await?;
                                        wr.flush().await?;
                                        let end = wire.load(Ordering::Relaxed);
                                        ends.extend(std::iter::repeat_n(end, group.len() / PARTS_PER_FRAME));
                                    }
                                }
                            }
                            Ok::<Vec<u64>, io::Error>(ends)
                        };
                        let res = tokio::select! {
                            _ = abort.cancelled() => return End::Aborted,
                            r = write => r,
                            _ = tokio::time::sleep(self.settings.tcp_user_timeout) => {
                                return End::Failed {
                                    reason: format!("write blocked for {:?}", self.settings.tcp_user_timeout),
                                    clean: false,
                                };
                            }
                        };
                        parts.clear();
                        let ends = match res {
                            Ok(ends) => ends,
                            Err(e) => return End::Failed { reason: format!("write: {e}"), clean: false },
                        };
                        if let Some(wire) = wire {
                            let skip = self.fifo.len() - ends.len();
                            for (e, end) in self.fifo.iter_mut().skip(skip).zip(ends) {
                                e.0 = end;
                            }
                            self.written = wire.load(Ordering::Relaxed);
                        }
                        self.backend.metrics.frames_out.inc_by(n);
                        self.backend.metrics.bytes_out.inc_by(bytes);
                        self.settle(fd);
                    }
                    None => self.input_closed = true,
                },
                _ = tick.tick(), if !self.fifo.is_empty() => {
                    self.settle(fd);
                    // A backend that stops reading advertises a zero window
                    // and answers probes, so TCP_USER_TIMEOUT alone may not
                    // fire: no acknowledgement for that long is a failure.
                    if !self.fifo.is_empty() && self.last_progress.elapsed() >= self.settings.tcp_user_timeout {
                        return End::Failed {
                            reason: format!("no data acknowledged for {:?}", self.settings.tcp_user_timeout),
                            clean: false,
                        };
                    }
                }
            }
        }
    }

    /// Appends the wire form of `batch` to `parts` and the frames to the
    /// FIFO. Returns the bytes added.
    fn encode(&mut self, batch: Vec<Frame>, parts: &mut Vec<Bytes>) -> u64 {
        let start = self.written;
        match self.settings.framing {
            OutFraming::OctetCounted => {
                // All count headers of the batch in one buffer.
                let mut headers = BytesMut::with_capacity(batch.len() * 8);
                let mut spans = Vec::with_capacity(batch.len());
                for f in &batch {
                    let from = headers.len();
                    write!(headers, "{} ", f.len()).expect("writing to BytesMut cannot fail");
                    spans.push((from, headers.len()));
                }
                let headers = headers.freeze();
                for (f, (a, b)) in batch.into_iter().zip(spans) {
                    parts.push(headers.slice(a..b));
                    parts.push(f.data.clone());
                    self.written += (b - a + f.len()) as u64;
                    self.fifo.push_back((self.written, f));
                }
            }
            OutFraming::Lf => {
                static LF: Bytes = Bytes::from_static(b"\n");
                for f in batch {
                    let data = if memchr::memchr(b'\n', &f.data).is_some() {
                        self.settings.metrics.escaped.inc();
                        escape_lf(&f.data)
                    } else {
                        f.data.clone()
                    };
                    self.written += data.len() as u64 + 1;
                    parts.push(data);
                    parts.push(LF.clone());
                    self.fifo.push_back((self.written, f));
                }
            }
        }
        self.note_oldest();
        self.written - start
    }

    /// Settles every frame whose last byte the peer has acknowledged.
    fn settle(&mut self, fd: RawFd) {
        let Some(outq) = unacked_bytes(fd) else {
            return;
        };
        let acked = self.written.saturating_sub(outq);
        let mut n = 0u64;
        let mut bytes = 0u64;
        self.settled_seqs.clear();
        while let Some((end, _)) = self.fifo.front() {
            if *end > acked {
                break;
            }
            let (_, f) = self.fifo.pop_front().expect("front exists");
            n += 1;
            bytes += f.len() as u64;
            if f.seq > 0 {
                self.settled_seqs.push(f.seq);
            }
            self.remember(f);
        }
        if n > 0 || self.fifo.is_empty() {
            self.last_progress = std::time::Instant::now();
        }
        self.note_oldest();
        if n > 0 {
            self.handback
                .settled(self.backend.index as u32, &self.settled_seqs);
            self.backend.metrics.settled.inc_by(n);
            self.backend.sub_pending(bytes);
            self.shared.release(bytes);
        }
    }

    fn note_oldest(&self) {
        let t = self.fifo.front().map_or(0, |(_, f)| f.time_ns);
        self.shared.oldest_ns.store(t, Ordering::Relaxed);
    }

    /// Keeps a settled frame's seq in the replay window, dropping the
    /// oldest beyond it. The frame itself is let go: it is in the journal.
    /// In-band checkpoint messages are not kept (the next one follows).
    fn remember(&mut self, f: Frame) {
        if f.conn.id == crate::frame::JOURNAL_CONN_ID {
            return;
        }
        self.replay
            .push(f.seq, f.len() as u32, self.settings.replay_window);
    }

    /// After a reset or timeout: the replay window's seqs go back to the
    /// dispatcher, which reads those frames from the journal and sends
    /// them again (duplicates, counted there).
    fn hand_back_replay(&mut self) {
        let seqs = self.replay.take();
        if seqs.is_empty() {
            return;
        }
        tracing::info!(
            pool = %self.backend.pool,
            backend = %self.backend.addr,
            frames = seqs.len(),
            "connection reset: sending the replay window again"
        );
        self.handback.push_replay(self.backend.index as u32, seqs);
    }

    /// Returns frames to the dispatcher (no longer charged to this
    /// connection).
    fn give_back(&mut self, frames: Vec<Frame>) {
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        self.settings
            .metrics
            .redispatched
            .inc_by(frames.len() as u64);
        self.backend.sub_pending(bytes);
        self.handback.push(frames);
        self.shared.release(bytes);
    }

    /// After a failure: unsettled frames and everything queued go back.
    fn hand_back_unsettled(&mut self) {
        let mut frames: Vec<Frame> = self.fifo.drain(..).map(|(_, f)| f).collect();
        if self.settings.relp_window.is_some() && !frames.is_empty() {
            // Written and never acknowledged: sent again (the backend may
            // have taken some of them).
            self.settings
                .metrics
                .relp_resent
                .inc_by(frames.len() as u64);
        }
        frames.extend(self.waiting.drain(..));
        self.note_oldest();
        while let Ok(batch) = self.rx.try_recv() {
            frames.extend(batch);
        }
        if !frames.is_empty() {
            tracing::info!(
                pool = %self.backend.pool,
                backend = %self.backend.addr,
                frames = frames.len(),
                "routing unacknowledged frames to other backends"
            );
            self.give_back(frames);
        }
    }

    /// Shutdown grace is over: what is still here is not delivered.
    fn lose_queued(&mut self) {
        let mut frames: Vec<Frame> = self.fifo.drain(..).map(|(_, f)| f).collect();
        frames.extend(self.waiting.drain(..));
        self.note_oldest();
        self.rx.close();
        while let Ok(batch) = self.rx.try_recv() {
            frames.extend(batch);
        }
        if !frames.is_empty() {
            let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
            self.backend.sub_pending(bytes);
            self.shared.release(bytes);
            self.settings.metrics.lost.inc_by(frames.len() as u64);
            tracing::error!(
                pool = %self.backend.pool,
                backend = %self.backend.addr,
                frames = frames.len(),
                first_seq = frames[0].seq,
                "shutdown grace over: frames not acknowledged by the backend; they stay in the journal and go out after the next start"
            );
        }
    }
}

/// Bytes in the socket's send queue not yet acknowledged by the peer
/// (`SIOCOUTQ`).
fn unacked_bytes(fd: RawFd) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (== SIOCOUTQ for TCP sockets) writes one c_int to the
    // pointer; `fd` is a live socket owned by the caller's TcpStream.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (rc == 0).then(|| u64::try_from(n).unwrap_or(0))
}

/// Slices of `parts` per frame: the encoders write two (count header and
/// frame, or frame and LF).
const PARTS_PER_FRAME: usize = 2;
/// Plaintext per flushed group over TLS: one full TLS record.
const TLS_GROUP_BYTES: usize = 16 * 1024;

/// `parts` cut into whole frames of about [`TLS_GROUP_BYTES`] each.
fn tls_groups(parts: &[Bytes]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= parts.len() {
            return None;
        }
        let start = at;
        let mut bytes = 0;
        while at < parts.len() && (at == start || bytes < TLS_GROUP_BYTES) {
            let end = (at + PARTS_PER_FRAME).min(parts.len());
            bytes += parts[at..end].iter().map(Bytes::len).sum::<usize>();
            at = end;
        }
        Some(start..at)
    })
}

/// Writes every byte of `parts`, as few `writev` calls as the kernel allows.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    parts: &[Bytes],
) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut k = 0;
        for (j, p) in parts[idx..].iter().enumerate() {
            if k == MAX_IOV {
                break;
            }
            let s = if j == 0 { &p[off..] } else { &p[..] };
            if !s.is_empty() {
                slices[k] = IoSlice::new(s);
                k += 1;
            }
        }
        if k == 0 {
            return Ok(());
        }
        let mut n = w.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        while idx < parts.len() && parts[idx].len() == off {
            idx += 1;
            off = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new();
        let d1 = b.next_delay();
        assert!(d1 >= BACKOFF_MIN / 2 && d1 <= BACKOFF_MIN);
        for _ in 0..20 {
            assert!(b.next_delay() <= BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN);
    }

    #[test]
    fn replay_index_keeps_the_newest_window_bytes_by_seq() {
        let mut r = ReplayIndex::default();
        // 100-byte frames, a window of 250 bytes: the newest three.
        for seq in [10, 12, 13, 40, 41] {
            r.push(seq, 100, 250);
        }
        assert_eq!(r.take(), vec![13, 40, 41]);
        assert_eq!(r.take(), Vec::<u64>::new());
        // A frame handed back from another connection settles after newer
        // ones, and one frame larger than the window is still kept.
        for (seq, len) in [(500, 10), (501, 10), (300, 10), (502, 10)] {
            r.push(seq, len, 1000);
        }
        assert_eq!(r.take(), vec![500, 501, 300, 502]);
        r.push(7, 5000, 1000);
        r.push(8, 5000, 1000);
        assert_eq!(r.take(), vec![8]);
        // Off, frames without a seq, and a jump of more than 2G seqs.
        r.push(9, 1, 0);
        r.push(0, 1, 1000);
        assert!(r.take().is_empty());
        r.push(1, 1, 1000);
        r.push(1 << 40, 1, 1000);
        assert_eq!(r.take(), vec![1 << 40]);
        // At most REPLAY_MAX_FRAMES entries, whatever the window.
        for seq in 1..=(REPLAY_MAX_FRAMES as u64 + 10) {
            r.push(seq, 1, u64::MAX);
        }
        let seqs = r.take();
        assert_eq!(seqs.len(), REPLAY_MAX_FRAMES);
        assert_eq!(seqs[0], 11);
    }

    /// A writer that takes at most 7 bytes per call, to exercise partial
    /// vectored writes.
    struct Dribble(Vec<u8>);
    impl AsyncWrite for Dribble {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let n = buf.len().min(7);
            self.0.extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> std::task::Poll<io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = (7 - n).min(b.len());
                self.0.extend_from_slice(&b[..take]);
                n += take;
                if n == 7 {
                    break;
                }
            }
            std::task::Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn tls_groups_cover_every_frame_once_in_record_sized_groups() {
        let parts: Vec<Bytes> = (0..1000)
            .flat_map(|i| {
                [
                    Bytes::from(format!("{} ", 100 + i % 7000)),
                    Bytes::from(vec![b'x'; 100 + i % 7000]),
                ]
            })
            .collect();
        let groups: Vec<_> = tls_groups(&parts).collect();
        assert_eq!(groups.first().unwrap().start, 0);
        assert_eq!(groups.last().unwrap().end, parts.len());
        for w in groups.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for g in &groups {
            assert_eq!(g.len() % PARTS_PER_FRAME, 0);
            let bytes: usize = parts[g.clone()].iter().map(Bytes::len).sum();
            // A group stops at the first frame that reaches the size.
            let last: usize = parts[g.end - 2..g.end].iter().map(Bytes::len).sum();
            assert!(bytes - last < TLS_GROUP_BYTES, "{g:?} {bytes}");
        }
        assert_eq!(tls_groups(&[]).count(), 0);
    }

    #[tokio::test]
    async fn vectored_write_survives_partial_writes() {
        let parts: Vec<Bytes> = (0..2000)
            .map(|i| Bytes::from(format!("{i}:").repeat(i % 5)))
            .collect();
        let want: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut w = Dribble(Vec::new());
        write_all_vectored(&mut w, &parts).await.unwrap();
        assert_eq!(w.0, want);
    }
}
