//! The audit journal: every frame is written here, hash-chained, before it
//! is routed. See `../shared/DESIGN.md` "Journal format (version 1)".
//!
//! - [`format`](mod@format): record and segment layout, chain rule (pure).
//! - [`seal`]: forward-secure checkpoint keys (`keygen`, ratchet, HMAC).
//! - [`anchors`]: the anchors file that binds a journal (parse, lines).
//! - [`writer`]: the writer thread on the data path (see its own index).
//! - [`handoff`]: the contract between the writer and the pools.
//! - [`hasher`]: record digests on a second core; [`syncer`]: fsyncs,
//!   anchor lines and key ratchets off the frame path.
//! - [`recover`]: start-up recovery, a pure plan and its application.
//! - [`delivery`]: delivery cursor records and where delivery resumes.
//! - [`reader`]: listing and reading segment files back; [`tail`]: one
//!   pool's frames read back from the files.
//! - [`verify`]: `auditlb verify`; [`cat`]: `auditlb cat`.

pub mod anchors;
pub mod cat;
pub mod custody;
pub mod delivery;
pub mod format;
pub mod handoff;
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
    ///
    /// `ack`, when given, is answered with the seq of the batch's last
    /// frame once the frames are numbered (the sender then waits for
    /// [`Durable`] to reach it), or with why they were refused (a GAP
    /// record was written for them). A RELP session asks for it: it may
    /// answer `rsp 200` only for what is durable. Dropped unanswered only
    /// when the writer stops.
    Frames {
        listener: usize,
        frames: Vec<Frame>,
        ack: Option<Ack>,
    },
    /// Frames refused before routing (oversize drop, malformed, ...).
    Gap {
        listener: Arc<str>,
        client: SocketAddr,
        reason: &'static str,
        count: u64,
    },
    /// A config reload: applied in order with the frames around it.
    Reconfigure(Box<Reconfigure>),
    /// An admin request (an ADMIN record), in order with the frames.
    Admin(Box<AdminAction>),
}

/// What an ADMIN record says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAction {
    pub who: String,
    /// Empty when refused.
    pub role: String,
    pub action: String,
    pub outcome: String,
}

/// The answer to a batch that asked for one ([`Ingress::Frames`]).
pub type Ack = tokio::sync::oneshot::Sender<Result<u64, Refused>>;

/// Why the writer did not journal a batch (it wrote a GAP record instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The journal reached its disk budget with `on-full = "drop"`.
    DiskFull,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::DiskFull => "disk_full",
        }
    }
}

/// Custody records that may wait for the writer: they have a channel of
/// their own, which the writer takes from even while a full journal keeps
/// frames out (a PRUNE is what frees the space).
pub const CUSTODY_ITEMS: usize = 4;

/// A record the custodian asks for. It is written, sealed by a checkpoint
/// right after it, and its anchors line (`a1`/`p1`) appended with that
/// checkpoint's; `done` gets its seq once all of it is on disk (dropped if
/// that failed).
#[derive(Debug)]
pub struct Custody {
    pub what: CustodyRecord,
    pub done: tokio::sync::oneshot::Sender<u64>,
}

#[derive(Debug, Clone)]
pub enum CustodyRecord {
    Archived(format::ArchivedBody),
    Prune(format::PruneBody),
}

/// What a CONFIG record says about the config in force: the SHA-256 of
/// its text (the body) and one line per TLS file it loaded, with the
/// file's fingerprint (repeated meta `TLS_LOADED`), since a reload may
/// change certificates without changing the text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigStamp {
    pub hash: format::Hash,
    pub tls: Vec<String>,
}

/// A change of the writer's routing, sent by a reload. Pool and listener
/// slots are never reused: a removed pool keeps its slot, closed.
#[derive(Debug)]
pub struct Reconfigure {
    /// New pools, given the next slots in order.
    pub add_pools: Vec<handoff::PoolLink>,
    /// Pools whose dispatchers get no more frames: their channel closes
    /// and they finish what they have.
    pub close_pools: Vec<usize>,
    /// Pool slot of every listener slot (`None`: listener removed).
    pub routes: Vec<Option<usize>>,
    /// The new config, for a CONFIG record.
    pub config: Option<ConfigStamp>,
    /// Answered with the seq of the CONFIG record (or the last seq written)
    /// once the change is written.
    pub done: tokio::sync::oneshot::Sender<u64>,
}
/// How far the journal is on disk under its sync policy: after the
/// fdatasync that covers a record (`always`, `interval`), or after its
/// write (`os`). Whoever must not answer before a record is durable (a RELP
/// acknowledgement) waits on it.
#[derive(Clone)]
pub struct Durable {
    tx: Arc<tokio::sync::watch::Sender<u64>>,
    gauge: IntGauge,
}

impl Durable {
    pub fn new(gauge: IntGauge, upto: u64) -> Durable {
        gauge.set(upto as i64);
        Durable {
            tx: Arc::new(tokio::sync::watch::channel(upto).0),
            gauge,
        }
    }

    /// Every record up to `upto` is durable (never moves back).
    pub fn mark(&self, upto: u64) {
        let moved = self.tx.send_if_modified(|v| {
            let up = upto > *v;
            if up {
                *v = upto;
            }
            up
        });
        if moved {
            self.gauge.set(upto as i64);
        }
    }

    /// The last durable seq now.
    pub fn get(&self) -> u64 {
        *self.tx.borrow()
    }

    /// Changes, for waiting on them.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tx.subscribe()
    }
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
    /// Last seq durable under the sync policy.
    pub durable_seq: IntGauge,
    /// The custodian's metrics (self-verification, archive, retention).
    pub custody: custody::CustodyMetrics,
}
