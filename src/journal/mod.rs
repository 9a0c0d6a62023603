//! The audit journal: every frame is written here, hash-chained, before it
//! is routed. See `../shared/DESIGN.md` "Journal format (version 1)".
//!
//! - [`format`]: record and segment layout, chain rule (pure).
//! - [`seal`]: forward-secure checkpoint keys (`keygen`, ratchet, HMAC).
//! - [`writer`]: the writer thread on the data path, and recovery.
//! - [`reader`]: walking segments back.
//! - [`verify`]: `auditlb verify`; [`cat`]: `auditlb cat`.

pub mod cat;
pub mod format;
pub mod reader;
pub mod seal;
pub mod tail;
pub mod verify;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::frame::Frame;

/// Batches that may wait for the journal writer.
pub const INGRESS_ITEMS: usize = 64;

/// What sessions hand the journal writer.
#[derive(Debug)]
pub enum Ingress {
    /// Frames for pool number `pool`, in arrival order.
    Frames { pool: usize, frames: Vec<Frame> },
    /// Frames refused before routing (oversize drop, malformed, ...).
    Gap {
        listener: Arc<str>,
        client: SocketAddr,
        reason: &'static str,
        count: u64,
    },
}

/// What the journal hands a pool's dispatcher: the pool's frames among the
/// records `from..=to`, already written. Batches follow each other without
/// gaps in `from..=to`; when the dispatcher's channel is full the batch is
/// not kept in memory and the dispatcher reads those frames back from the
/// journal. `from == 0` marks frames outside the record sequence (in-band
/// checkpoint messages).
#[derive(Debug)]
pub struct Routed {
    pub from: u64,
    pub to: u64,
    pub frames: Vec<Frame>,
}

/// Frames settled per backend (address, seqs), from a pool's dispatchers
/// to the journal writer, which records them as DELIVERY ranges. Bounded by
/// the writer draining it every tick.
pub type SettledLog = Arc<std::sync::Mutex<Vec<(Arc<str>, Vec<u64>)>>>;

/// The writer's link to one pool.
pub struct PoolLink {
    pub name: String,
    pub tx: tokio::sync::mpsc::Sender<Routed>,
    /// Highest `to` of a batch dropped because `tx` was full: the
    /// dispatcher must read up to there from the files.
    pub missed: Arc<std::sync::atomic::AtomicU64>,
    /// Which backend settled which frames.
    pub settled: SettledLog,
    /// Delivery cursors published by the pool's dispatchers (one, or one
    /// per backend of a `mirror` pool), by delivery name: every frame of the
    /// pool below a cursor is settled there. Recorded in DELIVERY records.
    pub cursors: Vec<(String, Arc<std::sync::atomic::AtomicU64>)>,
}

/// Resolved metric handles for the writer.
#[derive(Clone)]
pub struct JournalMetrics {
    pub records: IntCounter,
    pub bytes: IntCounter,
    pub segments: IntCounter,
    pub fsync: Histogram,
    pub last_checkpoint_seq: IntGauge,
    pub write_errors: IntCounter,
    pub recoveries: IntCounter,
    /// 1 when recovery found damage before the last checkpoint.
    pub tampered: IntGauge,
    /// Frames not kept in memory for a dispatcher that was behind (it reads
    /// them back from the journal).
    pub spilled: IntCounter,
    /// 1 while the journal is at its disk budget.
    pub full: IntGauge,
    /// 1 while journal writes succeed (0 after a failed write until one
    /// succeeds again).
    pub writable: IntGauge,
    /// Frames refused because the journal was full (`on-full = drop`).
    pub refused_full: IntCounter,
}
