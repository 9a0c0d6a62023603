//! The unit of work: a [`Frame`] is one message cut from a client stream, a
//! `Bytes` slice of that client's read buffer plus who sent it. Sessions make
//! them, the journal writer numbers and records them, a pool's dispatcher
//! routes them, upstreams write them and may hand them back. Also the one rule for
//! writing a frame as one line ([`escape_lf`]), shared by LF-framed
//! upstreams and `auditlb cat --format raw`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

/// No backend chosen yet for a `connection`-balanced client.
pub const NO_BACKEND: usize = usize::MAX;

/// The connection number of the journal's own in-band messages
/// (checkpoint announcements): not a client's, not kept for replay.
pub const JOURNAL_CONN_ID: u64 = u64::MAX;

/// What every frame of one client connection shares (one allocation per
/// connection; frames hold an `Arc`).
#[derive(Debug)]
pub struct ConnMeta {
    /// Process-unique connection number, for logs.
    pub id: u64,
    /// The listener that accepted it.
    pub listener: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// `peer` as text, formatted once for the journal's per-frame meta.
    pub peer_text: Arc<str>,
    /// For a TLS connection: what it negotiated and the verified client
    /// certificate (the journal records it once per connection, in a
    /// CONNECTION record its frames refer to).
    pub tls: Option<Arc<crate::tls::TlsIdentity>>,
    /// A RELP session (the journal records a CONNECTION for it too).
    pub relp: bool,
    /// `balance = "connection"`: the backend index this client sticks to.
    sticky: AtomicUsize,
}

impl ConnMeta {
    pub fn new(id: u64, listener: Arc<str>, peer: SocketAddr) -> Self {
        Self {
            id,
            listener,
            peer,
            peer_text: peer.to_string().into(),
            tls: None,
            relp: false,
            sticky: AtomicUsize::new(NO_BACKEND),
        }
    }

    /// A TLS connection's meta.
    pub fn with_tls(mut self, tls: crate::tls::TlsIdentity) -> Self {
        self.tls = Some(Arc::new(tls));
        self
    }

    /// A RELP session's meta.
    pub fn with_relp(mut self) -> Self {
        self.relp = true;
        self
    }

    /// Whether the journal records a CONNECTION for it (TLS or RELP).
    pub fn announced(&self) -> bool {
        self.tls.is_some() || self.relp
    }

    /// What the CONNECTION record names as its protocol.
    pub fn protocol(&self) -> &'static str {
        match (self.relp, self.tls.is_some()) {
            (false, false) => "syslog",
            (false, true) => "syslog+tls",
            (true, false) => "relp",
            (true, true) => "relp+tls",
        }
    }

    pub fn sticky(&self) -> usize {
        self.sticky.load(Ordering::Relaxed)
    }

    pub fn set_sticky(&self, backend: usize) {
        self.sticky.store(backend, Ordering::Relaxed);
    }
}

/// One frame. Cloning is cheap (reference counts only).
#[derive(Debug, Clone)]
pub struct Frame {
    /// Sequence number: the seq of its FRAME record, assigned by the
    /// journal writer. Frames handed back by a failed upstream keep theirs.
    pub seq: u64,
    /// The message, without framing.
    pub data: Bytes,
    pub conn: Arc<ConnMeta>,
    /// When the journal recorded it (Unix ns); 0 before that.
    pub time_ns: i64,
}

impl Frame {
    pub fn new(data: Bytes, conn: Arc<ConnMeta>) -> Self {
        Self {
            seq: 0,
            data,
            conn,
            time_ns: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Copies the frames of one read into one allocation of exactly their
/// size, so none keeps the session's read buffer alive: a 200-byte frame
/// then holds 200 bytes (plus its share of one header), not the 64KiB
/// read it came from, however long it waits in a queue or a replay
/// window; and the session reads into the same buffer again instead of a
/// fresh one. One copy per frame, cheap beside hashing it.
pub fn pack(frames: &mut [Frame]) {
    let total: usize = frames.iter().map(Frame::len).sum();
    let mut arena = BytesMut::with_capacity(total);
    for f in frames.iter() {
        arena.put_slice(&f.data);
    }
    let arena = arena.freeze();
    let mut at = 0;
    for f in frames.iter_mut() {
        let n = f.len();
        f.data = arena.slice(at..at + n);
        at += n;
    }
}

/// What an LF inside a frame becomes where each frame must be one line: an
/// LF-framed backend (`framing = "lf"`) and `auditlb cat --format raw`.
/// `#012` is the octal escape rsyslog writes for a control character.
pub const LF_ESCAPE: &[u8] = b"#012";

/// A frame as one line: every LF replaced by [`LF_ESCAPE`]. Nothing else is
/// touched, `#` and `\` included, as rsyslog does it: a frame that already
/// holds the text `#012` reads the same as one that held an LF, so the
/// escape keeps one frame per line but is not reversible (`cat --format
/// jsonl` shows frames byte for byte). It copies: callers look for an LF
/// first and pass LF-free frames on as they are.
pub fn escape_lf(data: &[u8]) -> Bytes {
    let lfs = memchr::memchr_iter(b'\n', data).count();
    let mut out = BytesMut::with_capacity(data.len() + lfs * (LF_ESCAPE.len() - 1));
    let mut last = 0;
    for i in memchr::memchr_iter(b'\n', data) {
        out.put_slice(&data[last..i]);
        out.put_slice(LF_ESCAPE);
        last = i + 1;
    }
    out.put_slice(&data[last..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_keeps_every_frame_and_lets_the_read_buffer_go() {
        let conn = Arc::new(ConnMeta::new(1, "l".into(), "127.0.0.1:9".parse().unwrap()));
        let mut read = BytesMut::with_capacity(64 * 1024);
        read.put_slice(b"one\ntwo\n\nthree");
        let mut frames = Vec::new();
        for n in [3, 3, 0, 5] {
            let f = read.split_to(n).freeze();
            frames.push(Frame::new(f, conn.clone()));
            if !read.is_empty() && read[0] == b'\n' {
                let _ = read.split_to(1);
            }
        }
        pack(&mut frames);
        let got: Vec<&[u8]> = frames.iter().map(|f| &f.data[..]).collect();
        assert_eq!(got, [&b"one"[..], b"two", b"", b"three"]);
        // One allocation of 11 bytes holds them all, back to back.
        let base = frames[0].data.as_ptr() as usize;
        let mut at = 0;
        for f in &frames {
            assert_eq!(f.data.as_ptr() as usize, base + at);
            at += f.len();
        }
        // Nothing refers to the read buffer any more: it can take the next
        // read in place.
        read.clear();
        assert!(read.try_reclaim(64 * 1024));
        pack(&mut []);
    }

    #[test]
    fn escapes_every_lf_and_nothing_else() {
        assert_eq!(&escape_lf(b"a\nb\n")[..], b"a#012b#012");
        assert_eq!(&escape_lf(b"\n")[..], b"#012");
        assert_eq!(&escape_lf(b"")[..], b"");
        // `#`, `\` and CR pass as they are, as rsyslog leaves them.
        assert_eq!(&escape_lf(b"#012 \\n #\r")[..], b"#012 \\n #\r");
    }
}
