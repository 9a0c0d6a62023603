//! The audit journal: every frame is written here, hash-chained, before it
//! is routed. See `../shared/DESIGN.md` "Journal format (version 1)".
//!
//! - [`format`]: record and segment layout, chain rule (pure).
//! - [`seal`]: forward-secure checkpoint keys (`keygen`, ratchet, HMAC).
//! - [`anchors`]: the anchors file that binds a journal (parse, lines).
//! - [`writer`]: the writer thread on the data path (see its own index).
//! - [`hasher`]: record digests on a second core; [`syncer`]: fsyncs,
//!   anchor lines and key ratchets off the frame path.
//! - [`recover`]: start-up recovery, a pure plan and its application.
//! - [`delivery`]: delivery cursor records and where delivery resumes.
//! - [`reader`]: listing and reading segment files back; [`tail`]: one
//!   pool's frames read back from the files.
//! - [`verify`]: `auditlb verify`; [`cat`]: `auditlb cat`.

pub mod anchors;
pub mod cat;
pub mod delivery;
pub mod format;
pub mod hasher;
pub mod reader;
pub mod recover;
pub mod seal;
pub mod syncer;
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
    /// Frames read by listener number `listener` (its slot, see
    /// [`Reconfigure::routes`]), in arrival order. The writer decides their
    /// pool, so a reload switches every session of a listener between two
    /// batches, never inside one.
    Frames { listener: usize, frames: Vec<Frame> },
    /// Frames refused before routing (oversize drop, malformed, ...).
    Gap {
        listener: Arc<str>,
        client: SocketAddr,
        reason: &'static str,
        count: u64,
    },
    /// A config reload: applied in order with the frames around it.
    Reconfigure(Box<Reconfigure>),
}

/// A change of the writer's routing, sent by a reload. Pool and listener
/// slots are never reused: a removed pool keeps its slot, closed.
#[derive(Debug)]
pub struct Reconfigure {
    /// New pools, given the next slots in order.
    pub add_pools: Vec<PoolLink>,
    /// Pools whose dispatchers get no more frames: their channel closes
    /// and they finish what they have.
    pub close_pools: Vec<usize>,
    /// Pool slot of every listener slot (`None`: listener removed).
    pub routes: Vec<Option<usize>>,
    /// Hash of the new config text, for a CONFIG record.
    pub config_hash: Option<format::Hash>,
    /// Answered with the seq of the CONFIG record (or the last seq written)
    /// once the change is written.
    pub done: tokio::sync::oneshot::Sender<u64>,
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
    /// Counts the frames against the pool's in-memory bound until the
    /// batch is taken in (dropped).
    pub ticket: Option<Ticket>,
}

/// Most frames of one pool waiting in memory between the writer and its
/// dispatcher; past it the writer offers none and the dispatcher reads
/// them from the files. Batches vary in size, so the bound is in frames
/// (at 32k the dispatcher of a full-speed run spilled often, which costs
/// more CPU than the memory it saves).
pub const QUEUED_FRAMES: u64 = 128 * 1024;

/// A batch's share of a pool's queued frames, given back on drop.
#[derive(Debug)]
pub struct Ticket {
    queued: Arc<std::sync::atomic::AtomicU64>,
    n: u64,
}

impl Ticket {
    /// Takes `n` frames of the bound, or `None` when they do not fit.
    pub fn take(queued: &Arc<std::sync::atomic::AtomicU64>, n: u64) -> Option<Ticket> {
        use std::sync::atomic::Ordering;
        let now = queued.load(Ordering::Acquire);
        if now > 0 && now + n > QUEUED_FRAMES {
            return None;
        }
        queued.fetch_add(n, Ordering::AcqRel);
        Some(Ticket {
            queued: queued.clone(),
            n,
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.queued
            .fetch_sub(self.n, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Frames settled per backend (address, seqs), from a pool's dispatchers
/// to the journal writer, which records them as DELIVERY ranges. Bounded by
/// the writer draining it every tick.
pub type SettledLog = Arc<std::sync::Mutex<Vec<(Arc<str>, Vec<u64>)>>>;

/// The writer's link to one pool.
#[derive(Debug)]
pub struct PoolLink {
    pub name: String,
    pub tx: tokio::sync::mpsc::Sender<Routed>,
    /// The first seq whose frames go to `tx` (0: this run's first). A pool
    /// added by a reload starts with the live stream.
    pub start: u64,
    /// Set by the writer when it closes the pool: the last seq that may
    /// hold one of its frames (`u64::MAX` while open). The dispatcher reads
    /// the files no further.
    pub closed_at: Arc<std::sync::atomic::AtomicU64>,
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
    /// Frames journaled with no pool to deliver them to.
    pub unrouted: IntCounter,
}
