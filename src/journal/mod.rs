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
pub mod verify;
pub mod writer;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntGauge};

use crate::frame::Frame;

/// Batches that may wait for the journal writer.
pub const INGRESS_ITEMS: usize = 512;

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
}
