//! The unit of work: a [`Frame`] is one message cut from a client stream, a
//! `Bytes` slice of that client's read buffer plus who sent it. Sessions make
//! them, the dispatcher numbers and routes them, upstreams write them and may
//! hand them back; later the journal records them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// No backend chosen yet for a `connection`-balanced client.
pub const NO_BACKEND: usize = usize::MAX;

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
            sticky: AtomicUsize::new(NO_BACKEND),
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
    /// Sequence number, assigned in arrival order by the pool's dispatcher
    /// (by the journal writer once the journal sits in front of it). Frames
    /// handed back by a failed upstream keep theirs.
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
