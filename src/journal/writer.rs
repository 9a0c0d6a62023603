//! The journal writer: one thread owns the open segment and the chain head.
//! Sessions hand it batches ([`Ingress`]); it numbers every record, chains
//! it, appends each batch with one `write(2)`, syncs by policy, writes
//! sealed checkpoints (and heartbeats when idle) with an anchor line each,
//! rolls segments, and only then passes frames on to the pool dispatchers.
//! On start it recovers the last segment: a torn tail after the last
//! checkpoint is cut and recorded; damage before it is left alone and
//! reported as tampering.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::format::{
    encode_record, encode_unchained, flags, hex, segment_name, set_chain, tag, CheckpointBody,
    Hash, Header, RecordType, HEADER_LEN,
};
use super::hasher::{Hasher, Job};
use super::reader::list_segments;
use super::seal::{seal, KeyError, SealInput, SealKey};
use super::{Ingress, JournalMetrics, PoolLink, Routed, Ticket};
use crate::config::{JournalConfig, OnFull, SyncPolicy};
use crate::frame::Frame;
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

pub(super) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

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
    anchors: Option<(PathBuf, File)>,
    /// Under `sync = "interval"`/`"os"` once started: does the fsyncs,
    /// anchor lines and key ratchets off the frame path (it then owns the
    /// anchors file).
    syncer: Option<super::syncer::Syncer>,
    /// Computes record digests alongside the writer (none on one core).
    hasher: Option<Hasher>,
    /// Written but not yet synced.
    dirty: bool,
    /// Seq of the last record written to the file (what readers may read).
    committed: Arc<AtomicU64>,
    /// First seq written by this run.
    start_seq: u64,
    /// Per delivery name, its cursor as published and as last recorded.
    delivery: Vec<CursorSlot>,
    /// Pool names by slot, for FRAME records.
    pool_names: Vec<Arc<str>>,
    /// Per pool: where its dispatchers log which backend settled what.
    settled_logs: Vec<(String, super::SettledLog)>,
    /// Bytes in the journal's segment files (against `disk-budget`).
    journal_bytes: u64,
    /// Over budget now (logged once per episode).
    full: bool,
    /// Checkpoint messages for the backends (`send-checkpoints`), waiting
    /// to be routed.
    announce: Vec<Frame>,
    /// Who the checkpoint messages come from.
    announce_meta: std::sync::Arc<crate::frame::ConnMeta>,
    hostname: String,
    buf: Vec<u8>,
    /// Checkpoints in `buf` or written whose anchor line and key ratchet
    /// wait until the segment holding them is on disk.
    pending: Vec<PendingAnchor>,
    /// Where this start found a damaged segment: (its first seq, offset
    /// from which it is not the journal's); readers stop there.
    untrusted: Option<(u64, u64)>,
    /// A segment roll begun and not finished (its SEGMENT_END and the next
    /// SEGMENT_START are in `buf`): finished by the next flush.
    roll: Option<Roll>,
}

/// One delivery name's cursor (a pool, or a mirror pool's backend).
struct CursorSlot {
    name: String,
    /// Published by the dispatcher: every frame below it is settled.
    published: Arc<AtomicU64>,
    /// The value last written in a DELIVERY_CURSOR record.
    recorded: u64,
    /// The segment that record is in: each segment with a checkpoint holds
    /// every cursor, so a restart finds them all in the newest ones.
    recorded_in: u64,
}

/// A checkpoint's anchor line and the seal key's next image, waiting for
/// the segment to be durable (neither may ever be ahead of the journal).
struct PendingAnchor {
    line: Option<String>,
    key: Option<super::seal::KeyImage>,
}

/// A roll in progress. `buf[..split]` ends the old segment with its
/// SEGMENT_END; the rest belongs to the segment `header` starts. Every
/// step may fail and be retried: nothing is encoded twice.
struct Roll {
    split: usize,
    header: Header,
    /// The old segment's last bytes are written, synced and sealed.
    old_done: bool,
}

impl Writer {
    /// Opens (creating or recovering) the journal and starts a new segment.
    pub fn open(
        cfg: &JournalConfig,
        metrics: JournalMetrics,
        config_hash: &Hash,
    ) -> Result<Writer, JournalError> {
        let dir = &cfg.dir;
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
        let mut resume = super::recover::recover_dir(dir, cfg.anchors.as_deref(), &metrics)?;
        let mut seal_key = match &cfg.seal_key {
            Some(p) => Some(SealKey::open(p)?),
            None => None,
        };
        let mut next_epoch = resume.last_epoch.map_or(0, |e| e + 1);
        if let Some(k) = &mut seal_key {
            if resume.new_journal && k.epoch() > 0 {
                resume.alarms.push(super::recover::Alarm {
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
                resume.alarms.push(super::recover::Alarm {
                    class: "WRONG_EPOCH",
                    message: format!(
                        "the journal's last checkpoint claims epoch {}, the seal key is at epoch {}",
                        next_epoch - 1,
                        k.epoch()
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
                let f = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(p)
                    .map_err(io_at(p))?;
                Some((p.clone(), f))
            }
            None => None,
        };
        let header = Header {
            journal_id: resume.journal_id,
            segment_no: resume.segment_no,
            first_seq: resume.next_seq,
            prev_chain: resume.prev_chain,
        };
        let (file, seg_path) = create_segment(dir, &header)?;
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
            start_seq: resume.next_seq,
            delivery: Vec::new(),
            pool_names: Vec::new(),
            settled_logs: Vec::new(),
            journal_bytes: 0,
            full: false,
            buf: Vec::with_capacity(1 << 20),
            announce: Vec::new(),
            announce_meta: std::sync::Arc::new(crate::frame::ConnMeta::new(
                0,
                "journal".into(),
                std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            )),
            hostname: hostname(),
            pending: Vec::new(),
            roll: None,
            untrusted: resume.untrusted,
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
        w.push(RecordType::Config, 0, &[], config_hash);
        w.flush().map_err(io_at(&w.seg_path.clone()))?;
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
    fn raise_alarms(&mut self, alarms: &[super::recover::Alarm]) {
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
            let mut text = String::new();
            for a in alarms {
                text.push_str(&format!(
                    "{} {} {}\n",
                    super::cat::format_rfc3339(now_ns()),
                    a.class,
                    a.message.replace('\n', " ")
                ));
            }
            let written = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o640)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_data()));
            if let Err(e) = written {
                tracing::error!(alarm_file = %path.display(), error = %e, "cannot record the tamper alarm");
            }
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

    fn start_segment_records(&mut self, segment_no: u64) {
        let body = super::format::segment_start_body(segment_no, &self.journal_id);
        self.push(RecordType::SegmentStart, 0, &[], &body);
    }

    /// Encodes one record into the batch buffer. Returns its seq.
    fn push(&mut self, rtype: RecordType, fl: u8, meta: &[(u8, &[u8])], body: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.head = encode_record(
            &mut self.buf,
            rtype,
            fl,
            seq,
            now_ns(),
            meta,
            body,
            &self.head,
        );
        self.next_seq += 1;
        self.since_checkpoint += 1;
        self.metrics.records.inc();
        seq
    }

    /// Journals a batch of frames, numbering them.
    pub fn append_frames(&mut self, pool: &str, frames: &mut [Frame]) {
        self.append_batches(&mut [(pool, frames)]);
    }

    /// Journals several batches of frames, each with its pool, in order.
    /// The records are encoded unchained first, so their digests can be
    /// computed on two cores ([`super::hasher`]), then chained in order.
    pub fn append_batches(&mut self, batches: &mut [(&str, &mut [Frame])]) {
        let t = now_ns();
        let n: usize = batches.iter().map(|(_, f)| f.len()).sum();
        let size: usize = batches
            .iter()
            .flat_map(|(_, f)| f.iter())
            .map(|f| f.len() + 128)
            .sum();
        let mut bytes = Vec::with_capacity(size);
        let mut ranges = Vec::with_capacity(n);
        for (pool, frames) in batches.iter_mut() {
            for f in frames.iter_mut() {
                let meta: [(u8, &[u8]); 3] = [
                    (tag::LISTENER, f.conn.listener.as_bytes()),
                    (tag::CLIENT, f.conn.peer_text.as_bytes()),
                    (tag::POOL, pool.as_bytes()),
                ];
                f.seq = self.next_seq;
                f.time_ns = t;
                self.next_seq += 1;
                let start =
                    encode_unchained(&mut bytes, RecordType::Frame, 0, f.seq, t, &meta, &f.data);
                ranges.push((start, bytes.len()));
            }
        }
        let job = Arc::new(Job::encoded(bytes, ranges));
        if let Some(h) = &self.hasher {
            h.digest_all(&job);
        }
        let encoded = job.records();
        self.buf.reserve(encoded.bytes.len());
        let seqs = batches.iter().flat_map(|(_, f)| f.iter().map(|f| f.seq));
        for (i, (seq, &(a, b))) in seqs.zip(&encoded.ranges).enumerate() {
            let at = self.buf.len();
            self.buf.extend_from_slice(&encoded.bytes[a..b]);
            self.head = set_chain(&mut self.buf[at..], &self.head, seq, job.digest(i));
        }
        self.since_checkpoint += n as u64;
        self.metrics.records.inc_by(n as u64);
    }

    /// Journals frames refused before routing.
    pub fn append_gap(&mut self, listener: &str, client: &str, reason: &str, count: u64) {
        self.push(
            RecordType::Gap,
            0,
            &[
                (tag::LISTENER, listener.as_bytes()),
                (tag::CLIENT, client.as_bytes()),
                (tag::REASON, reason.as_bytes()),
            ],
            &count.to_be_bytes(),
        );
    }

    /// Writes the batch buffer with one `write(2)` (two across a segment
    /// roll), then hands on the anchor lines of checkpoints now written. On
    /// failure the segment is cut back to its last whole batch and the
    /// buffer kept, so a retry writes the same records again and never
    /// leaves a torn record in the middle.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.roll.is_some() {
            self.finish_roll()?;
        }
        if !self.buf.is_empty() {
            self.write_out(self.buf.len())?;
            self.committed.store(self.next_seq - 1, Ordering::Release);
        }
        if !self.pending.is_empty() {
            self.publish_anchors()?;
        }
        Ok(())
    }

    /// Appends `buf[..n]` to the open segment and drops it from `buf`.
    fn write_out(&mut self, n: usize) -> io::Result<()> {
        if let Err(e) = self.file.write_all(&self.buf[..n]) {
            self.metrics.write_errors.inc();
            let _ = self.file.set_len(self.seg_len);
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.seg_path.display()),
            ));
        }
        self.seg_len += n as u64;
        self.journal_bytes += n as u64;
        self.metrics.bytes.inc_by(n as u64);
        self.buf.drain(..n);
        self.dirty = true;
        Ok(())
    }

    /// The steps of a roll not done yet: the old segment's last bytes
    /// written, synced and made read-only, then the new segment created.
    fn finish_roll(&mut self) -> io::Result<()> {
        let roll = self.roll.as_ref().expect("a roll is in progress");
        if !roll.old_done {
            let split = roll.split;
            self.write_out(split)?;
            self.sync()?;
            if let Err(e) = seal_file(&self.seg_path) {
                tracing::warn!(segment = %self.seg_path.display(), error = %e, "cannot make a closed segment read-only");
            }
            let roll = self.roll.as_mut().expect("a roll is in progress");
            roll.old_done = true;
            roll.split = 0;
        }
        let header = self
            .roll
            .as_ref()
            .expect("a roll is in progress")
            .header
            .clone();
        let (file, path) =
            create_segment(&self.cfg.dir, &header).map_err(|e| io::Error::other(e.to_string()))?;
        self.file = file;
        self.seg_path = path;
        self.seg_no = header.segment_no;
        self.seg_len = HEADER_LEN as u64;
        self.journal_bytes += HEADER_LEN as u64;
        self.dirty = true;
        self.metrics.segments.inc();
        self.roll = None;
        Ok(())
    }

    /// Hands the waiting anchor lines and the newest key image on: to the
    /// sync thread (which syncs the segment first), or inline after a sync.
    fn publish_anchors(&mut self) -> io::Result<()> {
        if let Some(syncer) = &self.syncer {
            let file = self.file.try_clone()?;
            let pending = std::mem::take(&mut self.pending);
            let mut lines = String::new();
            let mut key = None;
            for p in pending {
                lines.extend(p.line);
                key = p.key.or(key);
            }
            syncer.checkpoint(
                file,
                self.seg_path.clone(),
                (!lines.is_empty()).then_some(lines),
                key,
            );
            self.dirty = false;
            return Ok(());
        }
        self.sync()?;
        while !self.pending.is_empty() {
            if let (Some((path, f)), Some(line)) = (&mut self.anchors, &self.pending[0].line) {
                super::syncer::append_anchor(path, f, line)?;
            }
            let p = self.pending.remove(0);
            if let (Some(k), Some(image)) = (&self.seal_key, p.key) {
                // Not stored: a later checkpoint's image overwrites it.
                if let Err(e) = k.key_file().and_then(|f| f.store(&image)) {
                    self.metrics.write_errors.inc();
                    tracing::error!(error = %e, "journal: cannot store the ratcheted seal key");
                }
            }
        }
        Ok(())
    }

    pub fn sync(&mut self) -> io::Result<()> {
        if self.dirty {
            let t = Instant::now();
            self.file.sync_data()?;
            self.metrics.fsync.observe(t.elapsed().as_secs_f64());
            self.dirty = false;
        }
        Ok(())
    }

    /// Moves the fsyncs of `sync = "interval"`/`"os"`, the anchor lines and
    /// the key ratchets to their own thread ([`super::syncer`]); `always`
    /// keeps them inline (frames wait for the disk anyway).
    pub fn start_syncer(&mut self) -> io::Result<()> {
        if self.cfg.sync == SyncPolicy::Always || self.syncer.is_some() {
            return Ok(());
        }
        let key = match &self.seal_key {
            Some(k) => Some(k.key_file().map_err(|e| io::Error::other(e.to_string()))?),
            None => None,
        };
        self.syncer = Some(super::syncer::Syncer::start(
            self.anchors.take(),
            key,
            self.metrics.clone(),
        )?);
        Ok(())
    }

    /// Syncs the segment: handed to the sync thread when there is one.
    pub fn sync_soon(&mut self) -> io::Result<()> {
        match &self.syncer {
            Some(s) if self.dirty => {
                s.sync_segment(self.file.try_clone()?, self.seg_path.clone());
                self.dirty = false;
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

    /// Whether a checkpoint is due now (count, interval, or idle heartbeat).
    pub fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= self.cfg.checkpoint_every
            || self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval.0
    }

    /// Writes a sealed checkpoint (a HEARTBEAT when nothing was written since
    /// the last one); once the segment holding it is on disk, its anchor
    /// line is appended and the old seal key overwritten. Its epoch and the
    /// in-memory key move on as soon as it is encoded, so a failed write
    /// retried later never seals two checkpoints with one epoch. `last`
    /// marks the FINAL checkpoint of a clean stop.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.encode_checkpoint(false);
        self.flush()
    }

    fn encode_checkpoint(&mut self, last: bool) {
        let rtype = if self.since_checkpoint == 0 {
            RecordType::Heartbeat
        } else {
            RecordType::Checkpoint
        };
        self.push_delivery(last);
        let seq = self.next_seq;
        let time_ns = now_ns();
        let epoch = self.next_epoch;
        let covered_seq = seq - 1;
        let covered_chain = self.head;
        let (mut fl, tag_bytes) = match &self.seal_key {
            Some(k) => (
                flags::SEALED,
                seal(
                    k.key(),
                    &SealInput {
                        journal_id: &self.journal_id,
                        seq,
                        time_ns,
                        epoch,
                        covered_seq,
                        covered_chain: &covered_chain,
                    },
                ),
            ),
            None => (0, [0u8; 32]),
        };
        if last {
            fl |= flags::FINAL;
        }
        let body = CheckpointBody {
            epoch,
            covered_seq,
            covered_chain,
            seal: tag_bytes,
        }
        .encode();
        self.head = encode_record(
            &mut self.buf,
            rtype,
            fl,
            seq,
            time_ns,
            &[],
            &body,
            &self.head,
        );
        self.next_seq += 1;
        self.metrics.records.inc();
        let line = self.cfg.anchors.as_ref().map(|_| {
            super::anchors::Anchor {
                journal_id: self.journal_id,
                seq,
                chain: self.head,
                epoch,
            }
            .line(time_ns, &tag_bytes)
        });
        let key = self.seal_key.as_mut().map(|k| k.ratchet());
        self.pending.push(PendingAnchor { line, key });
        self.next_epoch = epoch + 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.metrics.last_checkpoint_seq.set(seq as i64);
        if self.cfg.send_checkpoints {
            let msg = format!(
                "<110>1 {} {} auditlb - CHECKPOINT [auditlb@32473 journal=\"{}\" seq=\"{seq}\" chain=\"{}\" epoch=\"{epoch}\" seal=\"{}\"] journal checkpoint",
                super::cat::format_rfc3339(time_ns),
                self.hostname,
                hex(&self.journal_id),
                hex(&self.head),
                hex(&tag_bytes)
            );
            let mut f = Frame::new(bytes::Bytes::from(msg), self.announce_meta.clone());
            f.seq = seq;
            self.announce.push(f);
        }
    }

    /// Re-reads the size of the journal's segment files (an operator may
    /// have freed space).
    fn measure(&mut self) {
        if let Ok(segs) = list_segments(&self.cfg.dir) {
            self.journal_bytes = segs
                .iter()
                .filter_map(|s| std::fs::metadata(&s.path).ok())
                .map(|m| m.len())
                .sum::<u64>()
                + self.buf.len() as u64;
        }
    }

    /// Whether `more` bytes still fit in `disk-budget`; logs and flags the
    /// change either way.
    fn fits(&mut self, more: u64) -> bool {
        let fits = self.journal_bytes + more <= self.cfg.disk_budget.0;
        if fits == self.full {
            self.full = !fits;
            self.metrics.full.set(i64::from(!fits));
            if fits {
                tracing::info!(journal = %self.cfg.dir.display(), "journal back under its disk budget");
            } else {
                tracing::error!(
                    journal = %self.cfg.dir.display(),
                    budget = self.cfg.disk_budget.0,
                    used = self.journal_bytes,
                    on_full = ?self.cfg.on_full,
                    "journal disk budget reached"
                );
            }
        }
        fits
    }

    /// Where readers may read up to (shared with the dispatchers).
    pub fn committed(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The first seq this run wrote.
    pub fn start_seq(&self) -> u64 {
        self.start_seq
    }

    /// DELIVERY records of the seq ranges each backend settled since the
    /// last call (what `cat` shows as a frame's backend).
    pub fn record_settled(&mut self) {
        for i in 0..self.settled_logs.len() {
            let entries = std::mem::take(
                &mut *self.settled_logs[i]
                    .1
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()),
            );
            if entries.is_empty() {
                continue;
            }
            let pool = self.settled_logs[i].0.clone();
            let mut by_backend: Vec<(std::sync::Arc<str>, Vec<u64>)> = Vec::new();
            for (b, seqs) in entries {
                match by_backend.iter_mut().find(|(n, _)| *n == b) {
                    Some((_, v)) => v.extend(seqs),
                    None => by_backend.push((b, seqs)),
                }
            }
            for (backend, mut seqs) in by_backend {
                let mut body = Vec::with_capacity(seqs.len().min(4096) * 2 + 8);
                super::format::encode_ranges(&mut seqs, &mut body);
                self.push(
                    RecordType::Delivery,
                    flags::RANGES,
                    &[
                        (tag::POOL, pool.as_bytes()),
                        (tag::BACKEND, backend.as_bytes()),
                    ],
                    &body,
                );
            }
        }
    }

    /// A DELIVERY_CURSOR record per delivery name whose cursor moved or is
    /// not yet in this segment (every one when `all`): body = the seq below
    /// which every frame of the pool settled. A type of its own, never a
    /// DELIVERY range list.
    fn push_delivery(&mut self, all: bool) {
        for i in 0..self.delivery.len() {
            let c = &self.delivery[i];
            let cursor = c.published.load(Ordering::Acquire);
            let moved = cursor != c.recorded || c.recorded_in != self.seg_no;
            if cursor == 0 || !(all || moved) {
                continue;
            }
            let name = c.name.clone();
            self.delivery[i].recorded = cursor;
            self.delivery[i].recorded_in = self.seg_no;
            self.push_cursor(&name, cursor);
        }
    }

    fn push_cursor(&mut self, name: &str, below: u64) {
        self.push(
            RecordType::Cursor,
            0,
            &[(tag::POOL, name.as_bytes())],
            &super::delivery::encode(below),
        );
    }

    /// Where each pool's delivery resumes: the cursor of its newest
    /// DELIVERY_CURSOR record in the journal, or this run's first seq for a
    /// pool the journal has none for (it never ran: every run records each
    /// pool's cursor as it starts).
    pub fn resume_cursors(&self, pools: &[String]) -> Vec<u64> {
        super::delivery::resume(&self.cfg.dir, pools, self.start_seq)
            .into_iter()
            .map(|c| c.unwrap_or(self.start_seq))
            .collect()
    }

    /// Closes the segment if it reached `segment-size` and opens the next:
    /// SEGMENT_END and the next SEGMENT_START are encoded once, then
    /// written by [`Writer::flush`], which retries what failed.
    pub fn maybe_roll(&mut self) -> io::Result<()> {
        if self.roll.is_none() && self.seg_len + self.buf.len() as u64 >= self.cfg.segment_size.0 {
            self.push(RecordType::SegmentEnd, 0, &[], &self.seg_no.to_be_bytes());
            let split = self.buf.len();
            let header = Header {
                journal_id: self.journal_id,
                segment_no: self.seg_no + 1,
                first_seq: self.next_seq,
                prev_chain: self.head,
            };
            self.roll = Some(Roll {
                split,
                header,
                old_done: false,
            });
            self.start_segment_records(self.seg_no + 1);
        }
        self.flush()
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

/// This host's name for RFC 5424 HOSTNAME (`-` when unknown).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".into())
}

/// Offers waiting checkpoint messages to every pool (outside the record
/// sequence; dropped for a pool whose dispatcher is behind).
fn announce(w: &mut Writer, outputs: &[Output]) {
    if w.announce.is_empty() {
        return;
    }
    let frames = std::mem::take(&mut w.announce);
    for out in outputs.iter().filter_map(|o| o.tx.as_ref()) {
        let _ = out.try_send(Routed {
            from: 0,
            to: 0,
            ticket: None,
            frames: frames.clone(),
        });
    }
}

/// Makes a closed segment read-only.
pub(super) fn seal_file(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o440))
}

/// Where alarms raised at start-up are kept until an operator clears them.
pub fn alarm_path(dir: &Path) -> PathBuf {
    dir.join("ALARM")
}

/// Creates the segment file `header` describes and writes the header. A
/// file of that name left by an earlier attempt that failed before its
/// header was whole is taken over; any other is never overwritten.
fn create_segment(dir: &Path, header: &Header) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(segment_name(header.first_seq));
    let f = match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // Never follow a link or wait on a FIFO put there.
            let f = OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .map_err(io_at(&path))?;
            if !f.metadata().map_err(io_at(&path))?.is_file() {
                return Err(JournalError::Io { path, source: e });
            }
            let len = f.metadata().map_err(io_at(&path))?.len();
            if len >= HEADER_LEN as u64 {
                return Err(JournalError::Io { path, source: e });
            }
            f.set_len(0).map_err(io_at(&path))?;
            f
        }
        Err(e) => return Err(io_at(&path)(e)),
    };
    let written = (&f).write_all(&header.encode());
    if let Err(e) = written {
        let _ = f.set_len(0);
        return Err(io_at(&path)(e));
    }
    // The directory entry must survive a crash too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((f, path))
}

/// What the server learns once the journal is open.
pub struct Opened {
    /// Per delivery name (pools in order, mirror backends expanded): the
    /// seq its delivery resumes from.
    pub cursors: Vec<u64>,
    /// Seq of the last record written; dispatchers read up to it.
    pub committed: Arc<AtomicU64>,
    /// First seq of this run: a cursor below it resumes earlier records.
    pub start_seq: u64,
    /// Fires when the writer thread has written its final records.
    pub done: oneshot::Receiver<()>,
    /// A damaged segment found at start: (first seq, offset) from which
    /// pools must not read it.
    pub untrusted: Option<(u64, u64)>,
}

/// Runs the writer on its own thread. Frames go on to their pool's `tx`
/// after they are written (and synced under `sync = "always"`); `routes`
/// maps each listener slot to its pool slot (`pools` in order). When the
/// ingress closes, the writer drops the pool channels, waits for `drained`
/// (the dispatchers finished) and writes the final DELIVERY records and
/// checkpoint. `abort` ends it at once.
#[allow(clippy::too_many_arguments)]
pub fn spawn(
    cfg: JournalConfig,
    metrics: JournalMetrics,
    config_hash: Hash,
    mut rx: mpsc::Receiver<Ingress>,
    pools: Vec<PoolLink>,
    mut routes: Vec<Option<usize>>,
    abort: CancellationToken,
    drained: CancellationToken,
) -> oneshot::Receiver<Result<Opened, JournalError>> {
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("journal".into())
        .spawn(move || {
            let (done_tx, done_rx) = oneshot::channel();
            let names: Vec<String> = pools
                .iter()
                .flat_map(|p| p.cursors.iter().map(|c| c.0.clone()))
                .collect();
            let mut w = match Writer::open(&cfg, metrics, &config_hash) {
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
                start_seq: w.start_seq(),
                done: done_rx,
                untrusted: w.untrusted,
            }));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(run(&mut w, &mut rx, &mut outputs, &mut routes, &abort));
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

/// The writer's end of one pool slot.
struct Output {
    /// `None` once the pool is closed (removed by a reload).
    tx: Option<mpsc::Sender<Routed>>,
    missed: Arc<AtomicU64>,
    closed_at: Arc<AtomicU64>,
    /// The last seq whose frames were offered to the pool.
    covered: u64,
    /// Frames offered and not yet taken in by the dispatcher.
    queued: Arc<AtomicU64>,
    /// Written and not yet offered.
    frames: Vec<Frame>,
}

impl Writer {
    /// Takes on a pool: its FRAME records name it, its delivery cursors and
    /// settled ranges are recorded. `starts` are where its cursors start
    /// (per delivery name), recorded at once: a crash before the pool's
    /// first checkpoint still resumes from there.
    fn add_pool(&mut self, link: PoolLink, starts: &[u64]) -> Output {
        self.pool_names.push(link.name.as_str().into());
        self.settled_logs.push((link.name, link.settled));
        for (i, (name, cursor)) in link.cursors.into_iter().enumerate() {
            let start = starts.get(i).copied().unwrap_or(link.start).max(1);
            cursor.store(start, Ordering::Release);
            self.push_cursor(&name, start);
            self.delivery.push(CursorSlot {
                name,
                published: cursor,
                recorded: start,
                recorded_in: self.seg_no,
            });
        }
        Output {
            tx: Some(link.tx),
            missed: link.missed,
            closed_at: link.closed_at,
            covered: link.start.max(self.start_seq) - 1,
            queued: Arc::new(AtomicU64::new(0)),
            frames: Vec::new(),
        }
    }
}

/// Most frames journaled in one go.
const STAGE_FRAMES: u64 = 8192;

/// Accepted frame batches not yet journaled: journaled together, so the
/// hashing of many small batches is shared between two cores.
#[derive(Default)]
struct Staged {
    /// Each batch with its pool slot (`None`: no pool, journaled only).
    batches: Vec<(Option<usize>, Vec<Frame>)>,
    frames: u64,
    /// Estimated journal bytes (for the disk budget).
    bytes: u64,
}

impl Staged {
    /// Journals the staged batches in order and hands each pool its frames.
    fn append(&mut self, w: &mut Writer, outputs: &mut [Output]) {
        if self.batches.is_empty() {
            return;
        }
        let names: Vec<Arc<str>> = self
            .batches
            .iter()
            .map(|(p, _)| p.map_or_else(|| Arc::from(""), |p| w.pool_names[p].clone()))
            .collect();
        let mut batches: Vec<(&str, &mut [Frame])> = names
            .iter()
            .zip(self.batches.iter_mut())
            .map(|(n, (_, f))| (&**n, &mut f[..]))
            .collect();
        w.append_batches(&mut batches);
        for (pool, mut frames) in self.batches.drain(..) {
            if let Some(p) = pool {
                outputs[p].frames.append(&mut frames);
            }
        }
        self.frames = 0;
        self.bytes = 0;
    }
}

/// Offers each pool the frames written for it since the last offer, as the
/// seq range `covered+1..=to`. Never waits for a dispatcher: one that is
/// behind (its channel full) reads these frames back from the journal.
fn offer(w: &Writer, outputs: &mut [Output]) {
    let to = w.next_seq - 1;
    for out in outputs.iter_mut() {
        if out.frames.is_empty() {
            continue;
        }
        let frames = std::mem::take(&mut out.frames);
        let n = frames.len() as u64;
        let from = out.covered + 1;
        out.covered = to;
        let Some(tx) = &out.tx else { continue };
        // Never wait for a dispatcher: one that is behind (its channel or
        // its share of memory full) reads these frames back from the
        // journal.
        let spilled = match Ticket::take(&out.queued, n) {
            None => true,
            Some(ticket) => matches!(
                tx.try_send(Routed {
                    from,
                    to,
                    frames,
                    ticket: Some(ticket),
                }),
                Err(mpsc::error::TrySendError::Full(_))
            ),
        };
        if spilled {
            out.missed.fetch_max(to, Ordering::AcqRel);
            w.metrics.spilled.inc_by(n);
        }
    }
}

/// Applies a reload's routing change after everything before it was
/// written and offered.
fn reconfigure(
    w: &mut Writer,
    outputs: &mut Vec<Output>,
    routes: &mut Vec<Option<usize>>,
    rc: super::Reconfigure,
) -> oneshot::Sender<u64> {
    for link in rc.add_pools {
        let starts = vec![link.start.max(w.start_seq); link.cursors.len()];
        let out = w.add_pool(link, &starts);
        outputs.push(out);
    }
    for i in rc.close_pools {
        if let Some(out) = outputs.get_mut(i) {
            // Before the channel closes, so the dispatcher sees it then.
            out.closed_at.store(w.next_seq - 1, Ordering::Release);
            out.tx = None;
        }
    }
    *routes = rc.routes;
    if let Some(hash) = rc.config_hash {
        w.push(RecordType::Config, 0, &[], &hash);
    }
    rc.done
}

/// Writes the batch buffer, syncs under `sync = "always"`, and writes a
/// checkpoint or rolls the segment when due. A failing disk blocks here
/// (retrying with backoff), which stops the sessions: backpressure, not
/// loss. False when aborted.
async fn commit(w: &mut Writer, abort: &CancellationToken, backoff: &mut Duration) -> bool {
    loop {
        let r = w.flush().and_then(|()| {
            if w.cfg.sync == SyncPolicy::Always {
                w.sync()?;
            }
            if w.since_checkpoint >= w.cfg.checkpoint_every {
                w.checkpoint()?;
            }
            w.maybe_roll()
        });
        match r {
            Ok(()) => {
                *backoff = Duration::from_millis(10);
                w.metrics.writable.set(i64::from(w.sync_healthy()));
                return true;
            }
            Err(e) => {
                w.metrics.writable.set(0);
                tracing::error!(error = %e, segment = %w.seg_path.display(), retry_in = ?*backoff, "journal write failed; holding frames");
                tokio::select! {
                    _ = abort.cancelled() => return false,
                    _ = tokio::time::sleep(*backoff) => {}
                }
                *backoff = (*backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Most ingress items taken into one write.
const MAX_ITEMS_PER_WRITE: usize = 256;

async fn run(
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Ingress>,
    outputs: &mut Vec<Output>,
    routes: &mut Vec<Option<usize>>,
    abort: &CancellationToken,
) {
    let tick_every = match w.cfg.sync {
        SyncPolicy::Interval => w.cfg.sync_interval.0.min(w.cfg.checkpoint_interval.0),
        _ => w.cfg.checkpoint_interval.0,
    }
    .max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items: Vec<Ingress> = Vec::with_capacity(MAX_ITEMS_PER_WRITE);
    let mut backoff = Duration::from_millis(10);
    // on-full = block and the budget is reached.
    let mut blocked = false;
    let mut staged = Staged::default();
    loop {
        tokio::select! {
            _ = abort.cancelled() => {
                // Frames held back by a full journal are not silently lost:
                // each batch leaves a GAP record.
                while let Ok(item) = rx.try_recv() {
                    items.push(item);
                }
                for item in items.drain(..) {
                    if let Ingress::Frames { frames, .. } = item {
                        if let Some(f) = frames.first() {
                            w.metrics.refused_full.inc_by(frames.len() as u64);
                            w.append_gap(&f.conn.listener, &f.conn.peer.to_string(), "disk_full", frames.len() as u64);
                        }
                    }
                }
                let _ = w.flush();
                return;
            }
            _ = tick.tick() => {
                w.record_settled();
                let r = (|| -> io::Result<()> {
                    w.flush()?;
                    if w.cfg.sync == SyncPolicy::Interval {
                        w.sync_soon()?;
                    }
                    if w.checkpoint_due() {
                        w.checkpoint()?;
                    }
                    w.maybe_roll()
                })();
                if let Err(e) = r {
                    tracing::error!(error = %e, segment = %w.seg_path.display(), "journal: periodic work failed");
                }
                announce(w, outputs);
            }
            n = rx.recv_many(&mut items, MAX_ITEMS_PER_WRITE), if !blocked => {
                if n == 0 {
                    return;
                }
            }
        }
        if blocked {
            // on-full = block: take nothing in until space is freed.
            w.measure();
            if !w.fits(w.cfg.segment_size.0.min(1 << 20)) {
                continue;
            }
            blocked = false;
        }
        if items.is_empty() {
            continue;
        }
        let mut held: Vec<Ingress> = Vec::new();
        let taken = std::mem::take(&mut items);
        for item in taken {
            if blocked {
                held.push(item);
                continue;
            }
            match item {
                Ingress::Frames { listener, frames } => {
                    let bytes: u64 = frames.iter().map(|f| f.len() as u64 + 100).sum();
                    if !w.fits(bytes + staged.bytes + w.buf.len() as u64) {
                        match w.cfg.on_full {
                            OnFull::Drop => {
                                let n = frames.len() as u64;
                                w.metrics.refused_full.inc_by(n);
                                let (listener, client) = frames
                                    .first()
                                    .map(|f| (f.conn.listener.to_string(), f.conn.peer.to_string()))
                                    .unwrap_or_default();
                                w.append_gap(&listener, &client, "disk_full", n);
                                continue;
                            }
                            OnFull::Block => {
                                // Keep this item and everything after it.
                                held.push(Ingress::Frames { listener, frames });
                                blocked = true;
                                continue;
                            }
                        }
                    }
                    let route = routes.get(listener).copied().flatten();
                    if route.is_none() {
                        // A removed listener's session that outlived the
                        // reload's grace: journaled, not delivered.
                        w.metrics.unrouted.inc_by(frames.len() as u64);
                        tracing::error!(
                            frames = frames.len(),
                            "frames from a removed listener have no pool; journaled only"
                        );
                    }
                    staged.frames += frames.len() as u64;
                    staged.bytes += bytes;
                    staged.batches.push((route, frames));
                    // Checkpoints and segment ends fall between batches, as
                    // close to the configured count and size as batches
                    // allow.
                    if staged.frames >= STAGE_FRAMES
                        || w.since_checkpoint + staged.frames >= w.cfg.checkpoint_every
                        || w.seg_len + w.buf.len() as u64 + staged.bytes >= w.cfg.segment_size.0
                    {
                        staged.append(w, outputs);
                    } else {
                        continue;
                    }
                }
                Ingress::Gap {
                    listener,
                    client,
                    reason,
                    count,
                } => {
                    // Records stay in arrival order.
                    staged.append(w, outputs);
                    w.append_gap(&listener, &client.to_string(), reason, count);
                }
                Ingress::Reconfigure(rc) => {
                    staged.append(w, outputs);
                    // What came before goes out under the old routing.
                    if !commit(w, abort, &mut backoff).await {
                        return;
                    }
                    offer(w, outputs);
                    let done = reconfigure(w, outputs, routes, *rc);
                    if !commit(w, abort, &mut backoff).await {
                        return;
                    }
                    let _ = done.send(w.next_seq - 1);
                    continue;
                }
            }
            // Checkpoints and segment ends fall between batches, as close to
            // the configured counts and sizes as batches allow.
            let due = w.since_checkpoint >= w.cfg.checkpoint_every
                || w.seg_len + w.buf.len() as u64 >= w.cfg.segment_size.0;
            if due && !commit(w, abort, &mut backoff).await {
                return;
            }
        }
        staged.append(w, outputs);
        // Held back by a full journal: first in line once there is room.
        items = held;
        // Written (and synced, by policy) before anything is routed.
        if !commit(w, abort, &mut backoff).await {
            return;
        }
        offer(w, outputs);
        announce(w, outputs);
    }
}
