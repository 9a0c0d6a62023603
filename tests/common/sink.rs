//! A backend in the test process: a real TCP listener, plain or TLS, that
//! records the frames it reads, with an independent RFC 6587 reader.

use super::*;
use tokio::io::AsyncRead;
use tokio_rustls::TlsAcceptor;

/// Frames a sink received: (connection number, frame bytes).
pub type Received = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// How a sink cuts what it receives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SinkFraming {
    Octet,
    Lf,
}

/// A backend: accepts connections and records every frame it reads, with
/// the number of the connection it came on.
pub struct Sink {
    pub addr: SocketAddr,
    framing: SinkFraming,
    pub frames: Received,
    /// Bytes that did not parse as the expected framing.
    pub garbage: Arc<Mutex<usize>>,
    /// TLS handshakes that failed, as rustls put it (TLS sinks only; a
    /// plain TCP connect-and-close, like a TCP health check, counts too).
    pub tls_errors: Arc<Mutex<Vec<String>>>,
    /// Present for a TLS sink: each accepted connection shakes hands first.
    tls: Option<TlsAcceptor>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn bind_reuse(addr: SocketAddr) -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_nonblocking(true).unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(1024).unwrap();
    TcpListener::from_std(s.into()).unwrap()
}

impl Sink {
    pub async fn start(framing: SinkFraming) -> Sink {
        Self::start_at("127.0.0.1:0".parse().unwrap(), framing)
    }

    pub fn start_at(addr: SocketAddr, framing: SinkFraming) -> Sink {
        Self::listen(addr, framing, None)
    }

    /// A TLS backend on 127.0.0.1 (see [`pki`](super::pki) for configs).
    pub async fn start_tls(framing: SinkFraming, cfg: Arc<rustls::ServerConfig>) -> Sink {
        Self::start_tls_at("127.0.0.1:0".parse().unwrap(), framing, cfg)
    }

    /// A TLS backend on `addr`: the plain sink behind a TLS handshake per
    /// connection; kill drops connections without close_notify, as a crash
    /// would, and restart listens with TLS again.
    pub fn start_tls_at(
        addr: SocketAddr,
        framing: SinkFraming,
        cfg: Arc<rustls::ServerConfig>,
    ) -> Sink {
        Self::listen(addr, framing, Some(TlsAcceptor::from(cfg)))
    }

    fn listen(addr: SocketAddr, framing: SinkFraming, tls: Option<TlsAcceptor>) -> Sink {
        let listener = bind_reuse(addr);
        let addr = listener.local_addr().unwrap();
        let mut sink = Sink {
            addr,
            framing,
            frames: Arc::default(),
            garbage: Arc::default(),
            tls_errors: Arc::default(),
            tls,
            accept: None,
            conns: Arc::default(),
        };
        sink.accept = Some(sink.spawn_accept(listener));
        sink
    }

    fn spawn_accept(&self, listener: TcpListener) -> JoinHandle<()> {
        let frames = self.frames.clone();
        let garbage = self.garbage.clone();
        let conns = self.conns.clone();
        let tls_errors = self.tls_errors.clone();
        let tls = self.tls.clone();
        let framing = self.framing;
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                // Dropping the stream later sends RST: a crashed backend
                // (for TLS too: no close_notify, the socket just goes).
                SockRef::from(&stream)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                n += 1;
                let (frames, garbage) = (frames.clone(), garbage.clone());
                let h = match &tls {
                    None => tokio::spawn(read_frames(stream, n, framing, frames, garbage)),
                    Some(tls) => {
                        // The handshake runs in the connection's task, so a
                        // slow or silent client holds up no other.
                        let (tls, tls_errors) = (tls.clone(), tls_errors.clone());
                        tokio::spawn(async move {
                            match tls.accept(stream).await {
                                Ok(s) => read_frames(s, n, framing, frames, garbage).await,
                                Err(e) => tls_errors.lock().unwrap().push(e.to_string()),
                            }
                        })
                    }
                };
                conns.lock().unwrap().push(h);
            }
        })
    }

    /// Crash: listener gone, every connection reset.
    pub fn kill(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// Stop accepting new connections but keep the open ones (so only the
    /// active health check notices).
    pub fn stop_accepting(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
    }

    /// Come back on the same address, keeping the recorded frames.
    pub fn restart(&mut self) {
        self.kill();
        let listener = bind_reuse(self.addr);
        self.accept = Some(self.spawn_accept(listener));
    }

    pub fn count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    pub fn take(&self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut *self.frames.lock().unwrap())
    }

    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .map(|(_, f)| f.clone())
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An independent RFC 6587 reader (not auditlb's framer), so the tests
/// check auditlb's output framing against the standard, not against itself.
async fn read_frames<S: AsyncRead + Unpin>(
    mut stream: S,
    conn: u64,
    framing: SinkFraming,
    frames: Received,
    garbage: Arc<Mutex<usize>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        let mut got = Vec::new();
        loop {
            let rest = &buf[pos..];
            match framing {
                SinkFraming::Lf => match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        got.push((conn, rest[..i].to_vec()));
                        pos += i + 1;
                    }
                    None => break,
                },
                SinkFraming::Octet => {
                    let Some(sp) = rest.iter().position(|&b| b == b' ') else {
                        break;
                    };
                    let Some(len) = std::str::from_utf8(&rest[..sp])
                        .ok()
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        *garbage.lock().unwrap() += rest.len();
                        return;
                    };
                    if rest.len() < sp + 1 + len {
                        break;
                    }
                    got.push((conn, rest[sp + 1..sp + 1 + len].to_vec()));
                    pos += sp + 1 + len;
                }
            }
        }
        buf.drain(..pos);
        if !got.is_empty() {
            frames.lock().unwrap().extend(got);
        }
    }
}
