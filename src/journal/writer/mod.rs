//! The journal writer: one thread owns the open segment and the chain head.
//! Sessions hand it batches ([`Ingress`]); it numbers every record, chains
//! it, appends each batch with one `write(2)`, syncs by policy, writes
//! sealed checkpoints (and heartbeats when idle) with an anchor line each,
//! rolls segments, and only then passes frames on to the pool dispatchers.
//! On start it applies the recovery plan ([`crate::journal::recover`]).
//!
//! - this file: the [`Writer`] (its state), opening it, syncing, [`spawn`];
//! - `append.rs`: numbering and chaining records into the batch buffer;
//! - `segment.rs`: writing the buffer out, rolling and creating segments;
//! - `checkpoint.rs`: sealed checkpoints, anchor lines, key ratchets;
//! - `cursors.rs`: DELIVERY and DELIVERY_CURSOR records, resuming delivery;
//! - `budget.rs`: the disk budget;
//! - `run.rs`: the thread's loop, staging, committing, offering to pools.

mod append;
mod budget;
mod checkpoint;
mod cursors;
mod run;
mod segment;

pub use checkpoint::Done;
use checkpoint::{hostname, PendingAnchor};
use cursors::CursorSlot;
pub use segment::alarm_path;
pub(in crate::journal) use segment::seal_file;
use segment::{create_segment, Roll};

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::handoff::PoolLink;
use super::hasher::{Encoded, Hasher, Job};
use super::reader::list_segments;
use super::{Ingress, JournalMetrics};
use crate::config::{JournalConfig, OnFull, SyncPolicy};
use crate::frame::Frame;
use crate::journal::format::{
    chain_step, encode_record, encode_unchained, flags, hex, segment_name, tag, CheckpointBody,
    Hash, Header, RecordType, HEADER_LEN,
};
use crate::journal::seal::{seal, KeyError, SealInput, SealKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("journal {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("journal seal key: {0}")]
    Key(#[from] KeyError),
}

/// How many epochs the seal key is ratcheted forward at start-up to meet
/// the journal (a crash between a checkpoint and its key ratchet leaves it
/// one or a few behind). More is a crafted checkpoint, not a crash: each
/// step is an HMAC, and a huge epoch would stall the start for ages.
const MAX_EPOCH_CATCH_UP: u64 = 1 << 16;

pub(in crate::journal) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

pub use crate::time::now_ns;

/// Owns the open segment and the chain head.
pub struct Writer {
    cfg: JournalConfig,
    metrics: JournalMetrics,
    journal_id: [u8; 16],
    file: File,
    seg_path: PathBuf,
    seg_no: u64,
    seg_len: u64,
    next_seq: u64,
    /// Chain hash of the last record written.
    head: Hash,
    /// Records since the last checkpoint.
    since_checkpoint: u64,
    last_checkpoint: Instant,
    next_epoch: u64,
    seal_key: Option<SealKey>,
    anchors: Option<crate::journal::anchors::AnchorsFile>,
    /// Under `sync = "interval"`/`"os"` once started: does the fsyncs,
    /// anchor lines and key ratchets off the frame path (it then owns the
    /// anchors file).
    syncer: Option<crate::journal::syncer::Syncer>,
    /// Computes record digests alongside the writer (none on one core).
    hasher: Option<Hasher>,
    /// Written but not yet synced.
    dirty: bool,
    /// Seq of the last record written to the file (what readers may read).
    committed: Arc<AtomicU64>,
    /// Seq of the last record durable under the sync policy.
    durable: crate::journal::Durable,
    /// First seq written by this run.
    start_seq: u64,
    /// Per delivery name, its cursor as published and as last recorded.
    delivery: Vec<CursorSlot>,
    /// Pool names by slot, for FRAME records.
    pool_names: Vec<Arc<str>>,
    /// Per pool: where its dispatchers log which backend settled what.
    settled_logs: Vec<(String, crate::journal::handoff::SettledLog)>,
    /// Bytes in the journal's segment files (against `disk-budget`).
    journal_bytes: u64,
    /// Bytes retention unlinked since the writer last looked.
    freed: Arc<AtomicU64>,
    /// Every frame below this seq is settled by every open pool (what
    /// retention may delete under `keep-undelivered`).
    settled_below: Arc<AtomicU64>,
    /// First seq of the open segment: the custodian never touches it or
    /// anything named after it.
    open_first: Arc<AtomicU64>,
    /// When each pool slot was closed by a reload, if it was: its cursor
    /// holds retention back while its dispatcher still delivers, for at
    /// most [`RETIRED_HOLD`].
    closed_pools: Vec<Option<Instant>>,
    /// Over budget now (logged once per episode).
    full: bool,
    /// Checkpoint messages for the backends (`send-checkpoints`), waiting
    /// to be routed.
    announce: Vec<Frame>,
    /// Who the checkpoint messages come from.
    announce_meta: std::sync::Arc<crate::frame::ConnMeta>,
    hostname: String,
    buf: Vec<u8>,
    /// The last batch's encoding buffers and chain hashes, reused by the
    /// next (no allocation and no fresh pages per batch).
    spare: Spare,
    /// Checkpoints in `buf` or written whose anchor line and key ratchet
    /// wait until the segment holding them is on disk.
    pending: Vec<PendingAnchor>,
    /// A segment roll begun and not finished (its SEGMENT_END and the next
    /// SEGMENT_START are in `buf`): finished by the next flush.
    roll: Option<Roll>,
    /// TLS connections announced in the open segment: connection number
    /// to the seq of its CONNECTION record. Cleared at each segment start
    /// (a segment names every connection its frames refer to), and when it
    /// reaches [`MAX_ANNOUNCED`] (a connection is then announced again).
    announced: std::collections::HashMap<u64, u64>,
}

/// Longest a removed pool's unfinished delivery holds retention back (its
/// backends may be gone for good).
pub(super) const RETIRED_HOLD: Duration = Duration::from_secs(600);

/// Most connections remembered as announced in one segment (16 bytes and
/// a hash slot each, about 2MiB at most).
const MAX_ANNOUNCED: usize = 65_536;

impl Writer {
    /// Opens (creating or recovering) the journal and starts a new segment.
    pub fn open(
        cfg: &JournalConfig,
        metrics: JournalMetrics,
        config: &crate::journal::ConfigStamp,
    ) -> Result<Writer, JournalError> {
        let dir = &cfg.dir;
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut resume =
            crate::journal::recover::recover_dir(dir, cfg.anchors.as_deref(), &metrics)?;
        let mut seal_key = match &cfg.seal_key {
            Some(p) => Some(SealKey::open(p)?),
            None => None,
        };
        let mut next_epoch = resume.last_epoch.map_or(0, |e| e + 1);
        if let Some(k) = &mut seal_key {
            if resume.new_journal && k.epoch() > 0 {
                resume.alarms.push(crate::journal::recover::Alarm {
                    class: "EPOCH_GAP",
                    message: format!(
                        "the journal is new but the seal key is at epoch {}: it sealed another journal (run `auditlb keygen` for a new one)",
                        k.epoch()
                    ),
                });
            }
            if next_epoch > k.epoch().saturating_add(MAX_EPOCH_CATCH_UP) {
                // Far ahead of the key: a crafted checkpoint, not a crash
                // between a checkpoint and its ratchet.
                resume.alarms.push(crate::journal::recover::Alarm {
                    class: "WRONG_EPOCH",
                    message: format!(
                        "the journal's last checkpoint claims epoch {}, the seal key is at epoch {}",
                        next_epoch - 1,
                        k.epoch()
                    ),
                });
            } else if k.epoch() > next_epoch && !resume.new_journal {
                // The key moves on only after its checkpoint is on disk:
                // a key ahead of the journal means checkpoints were cut.
                resume.alarms.push(crate::journal::recover::Alarm {
                    class: "TAIL_TRUNCATED",
                    message: format!(
                        "the seal key is at epoch {}, but the journal's last checkpoint is epoch {}: checkpoints were removed",
                        k.epoch(),
                        next_epoch.saturating_sub(1)
                    ),
                });
            } else {
                // A checkpoint written just before a crash may not have
                // had its key ratcheted yet: never seal two with one key.
                k.advance_to(next_epoch)?;
            }
            next_epoch = k.epoch();
        }
        let anchors = match &cfg.anchors {
            Some(p) => {
                if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                Some(crate::journal::anchors::AnchorsFile::open(p).map_err(io_at(p))?)
            }
            None => None,
        };
        if resume.next_seq >= crate::journal::reader::MAX_SEQ {
            return Err(JournalError::Corrupt {
                path: dir.clone(),
                message: format!(
                    "the journal would go on at seq {}, past any real journal: crafted files",
                    resume.next_seq
                ),
            });
        }
        let header = Header {
            journal_id: resume.journal_id,
            segment_no: resume.segment_no,
            first_seq: resume.next_seq,
            prev_chain: resume.prev_chain,
        };
        let (file, seg_path) = create_segment(dir, &header)?;
        // What recovery kept is on disk already.
        let durable = crate::journal::Durable::new(
            metrics.durable_seq.clone(),
            resume.next_seq.saturating_sub(1),
        );
        let mut w = Writer {
            cfg: cfg.clone(),
            metrics,
            journal_id: resume.journal_id,
            file,
            seg_path,
            seg_no: resume.segment_no,
            seg_len: HEADER_LEN as u64,
            next_seq: resume.next_seq,
            head: resume.prev_chain,
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            next_epoch,
            seal_key,
            anchors,
            syncer: None,
            hasher: match std::thread::available_parallelism().map_or(1, |n| n.get()) {
                1 => None,
                _ => Hasher::start().ok(),
            },
            dirty: true,
            committed: Arc::new(AtomicU64::new(resume.next_seq.saturating_sub(1))),
            durable,
            start_seq: resume.next_seq,
            delivery: Vec::new(),
            pool_names: Vec::new(),
            settled_logs: Vec::new(),
            journal_bytes: 0,
            freed: Arc::new(AtomicU64::new(0)),
            settled_below: Arc::new(AtomicU64::new(0)),
            open_first: Arc::new(AtomicU64::new(resume.next_seq)),
            closed_pools: Vec::new(),
            full: false,
            buf: Vec::with_capacity(1 << 20),
            spare: Spare::default(),
            announce: Vec::new(),
            announce_meta: std::sync::Arc::new(crate::frame::ConnMeta::new(
                crate::frame::JOURNAL_CONN_ID,
                "journal".into(),
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            )),
            hostname: hostname(),
            pending: Vec::new(),
            roll: None,
            announced: std::collections::HashMap::new(),
        };
        w.metrics.segments.inc();
        w.measure();
        w.start_segment_records(w.seg_no);
        for (reason, body) in &resume.notes {
            w.push(
                RecordType::Recovery,
                0,
                &[(tag::REASON, reason.as_bytes())],
                body,
            );
        }
        w.raise_alarms(&resume.alarms);
        w.push_config(config);
        // The run's first checkpoint, on disk, anchored and sealed before
        // anything else is journaled: what follows a run's start is only
        // trusted after an anchored checkpoint of its own (a segment forged
        // after a stop has none).
        w.encode_checkpoint(false);
        w.flush().map_err(io_at(&w.seg_path.clone()))?;
        w.sync().map_err(io_at(&w.seg_path.clone()))?;
        tracing::info!(
            journal = %dir.display(),
            id = %hex(&w.journal_id),
            segment = %w.seg_path.display(),
            next_seq = w.next_seq,
            sealed = w.seal_key.is_some(),
            "journal open"
        );
        Ok(w)
    }

    /// Raises the tamper alarm: for each finding an ALARM record in the
    /// journal and a line in the journal's ALARM file (so the alarm
    /// survives restarts until an operator clears it); and an alarm an
    /// earlier run raised and nobody cleared stays up.
    fn raise_alarms(&mut self, alarms: &[crate::journal::recover::Alarm]) {
        let path = alarm_path(&self.cfg.dir);
        for a in alarms {
            tracing::error!(journal = %self.cfg.dir.display(), class = a.class, finding = %a.message, alarm_file = %path.display(), "journal tampering found at start-up; run `auditlb verify`");
            self.push(
                RecordType::Alarm,
                0,
                &[(tag::REASON, a.class.as_bytes())],
                a.message.as_bytes(),
            );
        }
        if !alarms.is_empty() {
            record_alarms(&self.cfg.dir, alarms);
        }
        if !alarms.is_empty() || path.exists() {
            if alarms.is_empty() {
                tracing::error!(alarm_file = %path.display(), "journal tamper alarm raised by an earlier run is still up; after investigating with `auditlb verify`, remove the file to clear it");
            }
            self.metrics.tampered.set(1);
        }
    }

    pub fn journal_id(&self) -> [u8; 16] {
        self.journal_id
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            let t = Instant::now();
            self.file.sync_data()?;
            self.metrics.fsync.observe(t.elapsed().as_secs_f64());
            self.dirty = false;
        }
        if self.syncer.is_none() {
            // Nothing in flight elsewhere: all that is written is on disk.
            self.durable.mark(self.committed.load(Ordering::Acquire));
        }
        Ok(())
    }

    /// Moves the fsyncs of `sync = "interval"`/`"os"`, the anchor lines and
    /// the key ratchets to their own thread ([`crate::journal::syncer`]); `always`
    /// keeps them inline (frames wait for the disk anyway).
    pub fn start_syncer(&mut self) -> io::Result<()> {
        if self.cfg.sync == SyncPolicy::Always || self.syncer.is_some() {
            return Ok(());
        }
        let key = match &self.seal_key {
            Some(k) => Some(k.key_file().map_err(|e| io::Error::other(e.to_string()))?),
            None => None,
        };
        self.syncer = Some(crate::journal::syncer::Syncer::start(
            self.anchors.take(),
            key,
            self.metrics.clone(),
            self.durable.clone(),
        )?);
        Ok(())
    }

    /// Syncs the segment: handed to the sync thread when there is one.
    pub fn sync_soon(&mut self) -> io::Result<()> {
        match &self.syncer {
            Some(s) if self.dirty => {
                use crate::journal::syncer::Queued;
                let upto = self.committed.load(Ordering::Acquire);
                match s.sync_segment(self.file.try_clone()?, self.seg_path.clone(), upto) {
                    Queued::Yes => self.dirty = false,
                    // Still dirty: the next tick asks again.
                    Queued::Busy => {}
                    // No sync thread (it died): synced here, so what
                    // waits on the durable mark is not left waiting.
                    Queued::Gone => {
                        self.file.sync_data()?;
                        self.dirty = false;
                        self.durable.mark(upto);
                    }
                }
                Ok(())
            }
            Some(_) => Ok(()),
            None => self.sync(),
        }
    }

    /// False while the sync thread's last sync failed.
    pub fn sync_healthy(&self) -> bool {
        self.syncer.as_ref().is_none_or(|s| s.healthy())
    }

    /// Where readers may read up to (shared with the dispatchers).
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The first seq this run wrote.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// Clean stop: the final DELIVERY records and the FINAL checkpoint,
    /// synced. Nothing follows it in its segment.
    pub fn close(&mut self) -> io::Result<()> {
        self.record_settled();
        self.encode_checkpoint(true);
        self.flush()?;
        // Everything handed to the sync thread is done before it stops.
        drop(self.syncer.take());
        self.dirty = true;
        self.sync()
    }
}

/// Appends alarms to the journal's ALARM file (synced), where they stay
/// until an operator removes it. Never follows a link or waits on a FIFO.
pub fn record_alarms(dir: &Path, alarms: &[crate::journal::recover::Alarm]) {
    let path = alarm_path(dir);
    let mut text = String::new();
    for a in alarms {
        text.push_str(&format!(
            "{} {} {}\n",
            crate::time::format_rfc3339(now_ns()),
            a.class,
            a.message.replace('\n', " ")
        ));
    }
    let written = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(io::Error::other("not a regular file"))
            }
        })
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_data()));
    if let Err(e) = written {
        tracing::error!(alarm_file = %path.display(), error = %e, "cannot record the tamper alarm");
    }
}

/// What the server learns once the journal is open.
pub struct Opened {
    /// Per delivery name (pools in order, mirror backends expanded): the
    /// seq its delivery resumes from.
    pub cursors: Vec<u64>,
    /// Seq of the last record written; dispatchers read up to it.
    pub committed: Arc<AtomicU64>,
    /// Every frame below it is settled by every open pool.
    pub settled_below: Arc<AtomicU64>,
    /// Retention adds the bytes it unlinks (the disk budget's count).
    pub freed: Arc<AtomicU64>,
    /// First seq of the open segment.
    pub open_first: Arc<AtomicU64>,
    /// How far the journal is durable under its sync policy.
    pub durable: crate::journal::Durable,
    /// First seq of this run: a cursor below it resumes earlier records.
    pub start_seq: u64,
    /// Fires when the writer thread has written its final records.
    pub done: oneshot::Receiver<()>,
}

/// What the writer thread starts with.
pub struct Start {
    pub cfg: JournalConfig,
    pub metrics: JournalMetrics,
    /// The config, for the first CONFIG record.
    pub config: crate::journal::ConfigStamp,
    /// The sessions' batches (and reloads).
    pub rx: mpsc::Receiver<Ingress>,
    /// The custodian's ARCHIVED and PRUNE records.
    pub custody: mpsc::Receiver<crate::journal::Custody>,
    /// One link per configured pool, in slot order.
    pub pools: Vec<PoolLink>,
    /// Pool slot of each listener slot.
    pub routes: Vec<Option<usize>>,
    /// Ends the writer at once.
    pub abort: CancellationToken,
    /// Fired when the dispatchers finished: the final records follow.
    pub drained: CancellationToken,
}

/// Runs the writer on its own thread. Frames go on to their pool after
/// they are written (and synced under `sync = "always"`). When the ingress
/// closes, the writer drops the pool channels, waits for `drained` (the
/// dispatchers finished) and writes the final DELIVERY records and the
/// FINAL checkpoint. `abort` ends it at once.
pub fn spawn(start: Start) -> oneshot::Receiver<Result<Opened, JournalError>> {
    let Start {
        cfg,
        metrics,
        config,
        mut rx,
        mut custody,
        pools,
        mut routes,
        abort,
        drained,
    } = start;
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            let (done_tx, done_rx) = oneshot::channel();
            let names: Vec<String> = pools
                .iter()
                .flat_map(|p| p.cursors.iter().map(|c| c.name.clone()))
                .collect();
            let mut w = match Writer::open(&cfg, metrics, &config) {
                Ok(w) => w,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let resume = w.resume_cursors(&names);
            if let Err(e) = w.start_syncer() {
                tracing::error!(error = %e, "journal: no sync thread; syncing inline");
            }
            let mut outputs = Vec::new();
            let mut starts = resume.iter().copied();
            for link in pools {
                let n = link.cursors.len();
                let mine: Vec<u64> = starts.by_ref().take(n).collect();
                outputs.push(w.add_pool(link, &mine));
            }
            let _ = ready_tx.send(Ok(Opened {
                cursors: resume,
                committed: w.committed(),
                settled_below: w.settled_below.clone(),
                freed: w.freed.clone(),
                open_first: w.open_first.clone(),
                durable: w.durable.clone(),
                start_seq: w.start_seq(),
                done: done_rx,
            }));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(run::run(
                &mut w,
                &mut rx,
                &mut custody,
                &mut outputs,
                &mut routes,
                &abort,
            ));
            drop(outputs);
            // Let the dispatchers finish, keeping the checkpoints going, so
            // the final DELIVERY records say where delivery really got to.
            rt.block_on(async {
                let mut tick = tokio::time::interval(w.cfg.checkpoint_interval.0);
                loop {
                    tokio::select! {
                        _ = drained.cancelled() => break,
                        _ = abort.cancelled() => break,
                        _ = tick.tick() => {
                            w.record_settled();
                            let _ = w.flush();
                            if w.checkpoint_due() {
                                if let Err(e) = w.checkpoint() {
                                    tracing::error!(error = %e, "journal: checkpoint failed");
                                }
                            }
                        }
                    }
                }
            });
            if let Err(e) = w.close() {
                tracing::error!(error = %e, "journal: final checkpoint failed");
            }
            let _ = done_tx.send(());
        })
        .expect("spawning the journal thread");
    ready_rx
}

/// Buffers one batch of frames is encoded in, kept for the next.
#[derive(Default)]
pub(super) struct Spare {
    bytes: Vec<u8>,
    ranges: Vec<(usize, usize)>,
    chains: Vec<crate::journal::format::Hash>,
}

impl Spare {
    /// Larger buffers than this (left by a batch of huge frames) are let go.
    const KEEP: usize = 8 << 20;

    fn keep(&mut self, mut bytes: Vec<u8>, mut ranges: Vec<(usize, usize)>) {
        bytes.clear();
        ranges.clear();
        if bytes.capacity() <= Self::KEEP {
            self.bytes = bytes;
            self.ranges = ranges;
        }
    }
}
