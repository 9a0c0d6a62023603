//! The custodian: a low-priority thread beside the writer that keeps the
//! journal honest over time. In order, for each segment once it is closed:
//!
//! 1. **self-verification**: the segment is walked like `auditlb verify`
//!    walks it (chain, segment links, epochs), continuing from the one
//!    before, and the anchors file's lines are checked against its
//!    checkpoints as they are appended. A failure raises the tamper alarm
//!    and stops archiving and retention (evidence is never deleted).
//! 2. **archive** (`[journal.archive]`): uploaded once with its SHA-256,
//!    read back and checked, then an ARCHIVED record is written, sealed and
//!    anchored (`a1` line); the anchors file follows in parts. Failures are
//!    retried with backoff; routing never waits for any of it.
//! 3. **retention** (`[journal.retention]`): the oldest segments past
//!    `max-age`/`max-bytes`, settled by every open pool and (with an archive)
//!    archived, are listed in a PRUNE record, sealed and anchored (`p1`
//!    line), and only then unlinked. A marker file (`prune.pending`) names
//!    the PRUNE record while the unlinks run; a crash between the two is
//!    finished at the next start.
//!
//! Memory: one segment is mapped at a time (page cache, not heap); the
//! verified segments still on disk cost about 200 bytes each; anchor lines
//! waiting for their segment are those of the open segment.

pub mod audit;
pub mod store;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntGauge};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::anchors::{Anchor, Anchors};
use super::format::{segment_name, PruneBody, RecordType, SegmentFacts};
use super::reader::{list_entries, list_segments, Mapped, Records};
use super::verify::{find_boundary, Source, Step, Walker};
use super::{Custody, CustodyRecord, JournalMetrics};
use crate::config::JournalConfig;
use store::Archive;

/// The custodian's metrics.
#[derive(Clone)]
pub struct CustodyMetrics {
    pub verified_seq: IntGauge,
    pub self_verify_failures: IntCounter,
    pub archive_lag: IntGauge,
    pub archive_oldest_age: IntGauge,
    pub archive_failures: IntCounter,
    pub archived: IntCounter,
    pub pruned_segments: IntCounter,
    pub pruned_bytes: IntCounter,
}

/// The marker that names a PRUNE record whose segments are being unlinked.
pub fn marker_path(dir: &Path) -> PathBuf {
    dir.join("prune.pending")
}

/// Anchor lines waiting for their segment to close (about 100 bytes each).
const MAX_PENDING_ANCHORS: usize = 100_000;

/// How often the custodian looks for closed segments.
const TICK: Duration = Duration::from_secs(1);
/// Longest wait between archive retries.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a custody record may take to be written, sealed and anchored.
const RECORD_TIMEOUT: Duration = Duration::from_secs(60);

/// What the custodian starts with.
pub struct Start {
    pub cfg: JournalConfig,
    pub metrics: JournalMetrics,
    /// The writer's custody channel, for ARCHIVED and PRUNE records.
    pub tx: mpsc::Sender<Custody>,
    pub settled_below: Arc<AtomicU64>,
    pub freed: Arc<AtomicU64>,
    /// First seq of the writer's open segment.
    pub open_first: Arc<AtomicU64>,
    pub stop: CancellationToken,
}

/// Starts the custodian thread; the receiver fires when it has stopped.
pub fn spawn(start: Start) -> io::Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("journal-custody".into())
        .spawn(move || {
            // Below the data path, but not starved: a nice value of 10
            // (about a tenth of a core against busy ones), since retention
            // frees the disk the data path needs.
            // SAFETY: plain syscalls on this thread's own id.
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, 10);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a current-thread runtime builds");
            rt.block_on(async move {
                let mut c = match Custodian::new(start) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "journal custodian: cannot start; no self-verification, archive or retention");
                        return;
                    }
                };
                c.run().await;
            });
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// A closed segment, verified, still on disk.
struct Seg {
    facts: SegmentFacts,
    path: PathBuf,
    closed_at: SystemTime,
    end_epoch: u64,
    ended_run: bool,
    archived: bool,
}

struct Custodian {
    cfg: JournalConfig,
    metrics: JournalMetrics,
    tx: mpsc::Sender<Custody>,
    settled_below: Arc<AtomicU64>,
    freed: Arc<AtomicU64>,
    open_first: Arc<AtomicU64>,
    stop: CancellationToken,
    walker: Option<Walker>,
    /// Self-verification failed: nothing more is archived or deleted.
    failed: bool,
    /// Archive and retention paused for a tamper alarm (logged once).
    paused: bool,
    /// Name seq of the last segment walked.
    walked_to: Option<u64>,
    segs: VecDeque<Seg>,
    /// Anchors file: bytes read so far, a line not yet whole, lines of
    /// checkpoints not walked yet.
    anchors_read: u64,
    anchors_partial: Vec<u8>,
    anchors_pending: VecDeque<Anchor>,
    /// Lines below this seq are not checked (their checkpoints were let go).
    anchors_unchecked_below: u64,
    archive: Option<Archive>,
    /// Bytes of the anchors file the archive holds (`None`: not listed yet).
    anchors_archived: Option<u64>,
    retry_at: Instant,
    backoff: Duration,
}

impl Custodian {
    fn new(s: Start) -> Result<Custodian, String> {
        let archive = match &s.cfg.archive {
            Some(a) => Some(Archive::open(&a.url, a.object_lock_days).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Custodian {
            cfg: s.cfg,
            metrics: s.metrics,
            tx: s.tx,
            settled_below: s.settled_below,
            freed: s.freed,
            open_first: s.open_first,
            stop: s.stop,
            walker: None,
            failed: false,
            paused: false,
            walked_to: None,
            segs: VecDeque::new(),
            anchors_read: 0,
            anchors_partial: Vec::new(),
            anchors_pending: VecDeque::new(),
            anchors_unchecked_below: 0,
            archive,
            anchors_archived: None,
            retry_at: Instant::now(),
            backoff: Duration::from_secs(1),
        })
    }

    /// Whether any tamper alarm is up (start-up recovery's, a reader's,
    /// one an earlier run raised and nobody cleared, or ours): then
    /// nothing is archived or deleted until an operator has looked.
    fn alarmed(&mut self) -> bool {
        let up = self.failed || self.metrics.tampered.get() != 0;
        if up && !self.paused {
            self.paused = true;
            tracing::error!(journal = %self.cfg.dir.display(), alarm_file = %super::writer::alarm_path(&self.cfg.dir).display(), "tamper alarm is up: archive and retention are paused (self-verification goes on)");
        }
        up
    }

    async fn run(&mut self) {
        if !self.alarmed() {
            if let Err(e) = self.finish_prune() {
                tracing::error!(journal = %self.cfg.dir.display(), error = %e, "journal custodian: cannot finish the prune an earlier run began");
            }
        }
        loop {
            self.verify_closed();
            self.check_anchors();
            if !self.alarmed() {
                if self.archive.is_some() && Instant::now() >= self.retry_at {
                    match self.archive_step().await {
                        Ok(()) => self.backoff = Duration::from_secs(1),
                        Err(e) => {
                            self.metrics.custody.archive_failures.inc();
                            tracing::warn!(error = %e, retry_in = ?self.backoff, "archive: upload failed; retrying");
                            self.retry_at = Instant::now() + self.backoff;
                            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                if self.alarmed() {
                    // Raised by the archive step (a file changed).
                } else if let Err(e) = self.retention_step().await {
                    tracing::error!(journal = %self.cfg.dir.display(), error = %e, "retention: prune failed; retrying");
                }
            }
            self.publish();
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    fn publish(&self) {
        let m = &self.metrics.custody;
        if self.archive.is_none() {
            return;
        }
        // Closed segments not archived: the verified ones waiting, and
        // those self-verification has not reached yet.
        let open = self.open_first.load(Ordering::Acquire);
        let unverified: Vec<PathBuf> = list_segments(&self.cfg.dir)
            .map(|all| {
                all.into_iter()
                    .filter(|e| e.name_seq < open && self.walked_to.is_none_or(|w| e.name_seq > w))
                    .map(|e| e.path)
                    .collect()
            })
            .unwrap_or_default();
        let waiting = self.segs.iter().filter(|s| !s.archived);
        let oldest = match waiting.clone().next() {
            Some(s) => Some(s.closed_at),
            None => unverified
                .first()
                .and_then(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()),
        };
        m.archive_lag
            .set((waiting.count() + unverified.len()) as i64);
        let age = oldest.map_or(0, |t| {
            SystemTime::now()
                .duration_since(t)
                .map_or(0, |d| d.as_secs())
        });
        m.archive_oldest_age.set(age as i64);
    }

    /// Raises the tamper alarm for a self-verification failure.
    fn alarm(&mut self, class: &'static str, message: String) {
        self.failed = true;
        self.metrics.custody.self_verify_failures.inc();
        self.metrics.tampered.set(1);
        tracing::error!(journal = %self.cfg.dir.display(), class, finding = %message, "self-verification failed: the journal was changed on disk; archive and retention stop; run `auditlb verify`");
        super::writer::record_alarms(&self.cfg.dir, &[super::recover::Alarm { class, message }]);
    }

    /// Walks the segments closed since the last call.
    fn verify_closed(&mut self) {
        if self.failed {
            return;
        }
        let Ok(mut entries) = list_entries(&self.cfg.dir) else {
            return;
        };
        // Never the writer's open segment, nor anything named after it
        // (a stray file there is not a closed segment).
        let open = self.open_first.load(Ordering::Acquire);
        entries.retain(|e| e.name_seq < open);
        if self.walker.is_none() {
            let sources: Vec<Source> = entries.iter().map(Source::local).collect();
            self.walker = Some(Walker::new(None, None, find_boundary(&sources)));
        }
        for e in &entries {
            if self.walked_to.is_some_and(|w| e.name_seq <= w) {
                continue;
            }
            if self.stop.is_cancelled() {
                return;
            }
            let mapped = match e.regular.then(|| Mapped::map(&e.path)).transpose() {
                Ok(m) => m,
                Err(err) => {
                    tracing::warn!(segment = %e.path.display(), error = %err, "self-verification: cannot read a closed segment; trying again");
                    return;
                }
            };
            let bytes = mapped.as_ref().map_or(&[][..], Mapped::bytes);
            let walker = self.walker.as_mut().expect("made above");
            let step = walker.segment((e.name_seq, e.path.clone(), e.regular), bytes, false);
            if step == Step::Stop {
                if let Some(f) = walker.rep.failure.clone() {
                    self.alarm(f.class.name(), f.to_string());
                }
                return;
            }
            if !walker.closed() {
                self.alarm(
                    "DELETED",
                    format!(
                        "{} has no SEGMENT_END (nor a final checkpoint), but the journal went on after it",
                        e.path.display()
                    ),
                );
                return;
            }
            let header = super::format::Header::decode(bytes).expect("the walk decoded it");
            let facts = SegmentFacts {
                segment_no: header.segment_no,
                first_seq: header.first_seq,
                last_seq: walker.rep.last_seq.unwrap_or(header.first_seq),
                end_chain: walker.head(),
                // Only what archive and retention record needs it.
                file_sha256: if self.archive.is_some() || self.cfg.retention.is_some() {
                    Sha256::digest(bytes).into()
                } else {
                    [0; 32]
                },
                file_len: bytes.len() as u64,
            };
            let end_epoch = walker.last_epoch.unwrap_or(0);
            let ended_run = walker.ended_run();
            let archived: Vec<_> = walker.archived.drain(..).collect();
            walker.pruned.clear();
            if self.cfg.anchors.is_none() {
                // Nothing to match checkpoints against: keep none.
                walker.forget_checkpoints_below(facts.last_seq + 1);
            }
            self.metrics.custody.verified_seq.set(facts.last_seq as i64);
            self.walked_to = Some(e.name_seq);
            let closed_at = std::fs::metadata(&e.path)
                .and_then(|m| m.modified())
                .unwrap_or_else(|_| SystemTime::now());
            self.segs.push_back(Seg {
                facts,
                path: e.path.clone(),
                closed_at,
                end_epoch,
                ended_run,
                archived: false,
            });
            for a in archived {
                // Only copies in the archive configured now count.
                let Some(arch) = &self.archive else { break };
                let here =
                    arch.location(&arch.segment_path(&header.journal_id, a.segment.first_seq));
                if a.location.split("?versionId=").next() != Some(here.as_str()) {
                    continue;
                }
                if let Some(s) = self
                    .segs
                    .iter_mut()
                    .find(|s| s.facts.first_seq == a.segment.first_seq)
                {
                    s.archived = s.facts.file_sha256 == a.segment.file_sha256;
                }
            }
            // Anchor lines are matched segment by segment, so the
            // checkpoints kept for them stay few even on a long first walk.
            self.check_anchors();
            if self.failed {
                return;
            }
        }
    }

    /// Reads the anchor lines appended since the last call and checks
    /// those of checkpoints already walked.
    fn check_anchors(&mut self) {
        if self.failed {
            return;
        }
        let (Some(path), Some(walker)) = (self.cfg.anchors.clone(), self.walker.as_ref()) else {
            return;
        };
        let Some(id) = walker.rep.journal_id else {
            return;
        };
        let first = walker.rep.first_seq.unwrap_or(0);
        let last = walker.rep.last_seq.unwrap_or(0);
        // Read and match in turns until the lines reach the checkpoints
        // walked (at start the file holds the whole history), never far
        // past them.
        let mut eof = false;
        let bad = loop {
            let caught_up = self.anchors_pending.back().is_some_and(|a| a.seq > last)
                || self.anchors_pending.len() >= MAX_PENDING_ANCHORS / 2;
            if !caught_up {
                let before = self.anchors_read;
                if let Err(e) = self.read_anchors(&path, &id, first) {
                    tracing::warn!(anchors = %path.display(), error = %e, "self-verification: cannot read the anchors file");
                    return;
                }
                eof = self.anchors_read == before;
            }
            if self.failed {
                return;
            }
            let bad = self.match_anchors(last);
            if bad.is_some() || caught_up || eof {
                break bad;
            }
        };
        let walker = self.walker.as_mut().expect("checked");
        if bad.is_none() && eof && walker.checkpoints_kept() > MAX_PENDING_ANCHORS {
            // The whole file is read and these checkpoints have no lines
            // (the sync thread could not write them): stop keeping them,
            // and do not hold it against lines that come later for them.
            tracing::warn!(journal = %self.cfg.dir.display(), below = last + 1, "self-verification: checkpoints without anchor lines; not kept for them");
            walker.forget_checkpoints_below(last + 1);
            self.anchors_unchecked_below = last + 1;
        }
        if let Some(m) = bad {
            self.alarm("MODIFIED", format!("anchors {}: {m}", path.display()));
        }
    }

    /// Checks the waiting anchor lines of checkpoints walked up to `last`
    /// (wherever they are in the queue: a line claiming a seq far ahead
    /// must not hold the others up); what does not match is returned.
    fn match_anchors(&mut self, last: u64) -> Option<String> {
        let walker = self.walker.as_mut()?;
        let mut matched = None;
        let mut bad = None;
        let mut later = VecDeque::with_capacity(self.anchors_pending.len());
        while let Some(a) = self.anchors_pending.pop_front() {
            if a.seq < self.anchors_unchecked_below {
                continue;
            }
            if a.seq > last {
                later.push_back(a);
                continue;
            }
            match walker.check_anchor(&a) {
                Ok(()) => matched = Some(matched.map_or(a.seq, |m: u64| m.max(a.seq))),
                Err(m) => {
                    bad = Some(m);
                    break;
                }
            }
        }
        later.extend(self.anchors_pending.drain(..));
        self.anchors_pending = later;
        if let Some(s) = matched {
            walker.forget_checkpoints_below(s + 1);
        }
        bad
    }

    /// Reads at most 4 MiB of new anchor lines into `anchors_pending`.
    fn read_anchors(&mut self, path: &Path, id: &[u8; 16], first: u64) -> io::Result<()> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.anchors_read == 0 => {
                return Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.alarm(
                    "DELETED",
                    format!("anchors {}: the file is gone", path.display()),
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() < self.anchors_read {
            self.alarm(
                "TAIL_TRUNCATED",
                format!(
                    "anchors {}: the file is shorter than the {} bytes already read",
                    path.display(),
                    self.anchors_read
                ),
            );
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.anchors_read))?;
        let mut buf = Vec::new();
        (&mut f).take(4 << 20).read_to_end(&mut buf)?;
        self.anchors_read += buf.len() as u64;
        self.anchors_partial.extend_from_slice(&buf);
        let Some(end) = self.anchors_partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let whole: Vec<u8> = self.anchors_partial.drain(..=end).collect();
        let parsed = Anchors::parse(&String::from_utf8_lossy(&whole));
        if !parsed.bad_lines.is_empty() {
            self.alarm(
                "MODIFIED",
                format!(
                    "anchors {}: a line that is not an anchor line",
                    path.display()
                ),
            );
            return Ok(());
        }
        self.anchors_pending.extend(
            parsed
                .lines
                .into_iter()
                .filter(|a| a.journal_id == *id && a.seq >= first),
        );
        if self.anchors_pending.len() > MAX_PENDING_ANCHORS {
            // Far more than an open segment's checkpoints: lines for seqs
            // the journal never reaches.
            let n = self.anchors_pending.len();
            self.alarm(
                "MODIFIED",
                format!(
                    "anchors {}: {n} lines name checkpoints past the journal's closed segments",
                    path.display()
                ),
            );
            self.anchors_pending.clear();
        }
        Ok(())
    }

    /// Archives the verified segments the archive does not hold yet, then
    /// the anchors file's growth.
    async fn archive_step(&mut self) -> Result<(), String> {
        let Some(archive) = self.archive.clone() else {
            return Ok(());
        };
        let Some(id) = self.walker.as_ref().and_then(|w| w.rep.journal_id) else {
            return Ok(());
        };
        for i in 0..self.segs.len() {
            if self.segs[i].archived {
                continue;
            }
            if self.stop.is_cancelled() {
                return Ok(());
            }
            let facts = self.segs[i].facts.clone();
            let mapped = Mapped::map(&self.segs[i].path)
                .map_err(|e| format!("{}: {e}", self.segs[i].path.display()))?;
            if Sha256::digest(mapped.bytes())[..] != facts.file_sha256[..] {
                let msg = format!(
                    "{} changed after it was verified (SHA-256 differs)",
                    self.segs[i].path.display()
                );
                self.alarm("MODIFIED", msg.clone());
                return Err(msg);
            }
            let bytes = bytes::Bytes::from_owner(MappedBytes(mapped));
            let p = archive.segment_path(&id, facts.first_seq);
            let stored = tokio::select! {
                r = archive.put_once(&p, bytes, &facts.file_sha256) => r.map_err(|e| e.to_string())?,
                _ = self.stop.cancelled() => return Ok(()),
            };
            let seq = self
                .record(CustodyRecord::Archived(super::format::ArchivedBody {
                    segment: facts.clone(),
                    location: stored.location.clone(),
                }))
                .await?;
            self.segs[i].archived = true;
            self.metrics.custody.archived.inc();
            tracing::info!(segment = %self.segs[i].path.display(), object = %stored.location, record_seq = seq, existed = stored.existed, "archived");
        }
        self.archive_anchors(&archive, &id).await
    }

    /// Uploads the anchors file's whole lines written since the last part.
    async fn archive_anchors(&mut self, archive: &Archive, id: &[u8; 16]) -> Result<(), String> {
        let Some(path) = self.cfg.anchors.clone() else {
            return Ok(());
        };
        let from = match self.anchors_archived {
            Some(n) => n,
            None => {
                let parts = archive.anchor_parts(id).await.map_err(|e| e.to_string())?;
                let end = parts.last().map_or(0, |(off, _, size)| off + size);
                self.anchors_archived = Some(end);
                end
            }
        };
        let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len();
        if len <= from {
            return Ok(());
        }
        f.seek(SeekFrom::Start(from)).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        (&mut f)
            .take((len - from).min(64 << 20))
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        let Some(end) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        buf.truncate(end + 1);
        let sha: super::format::Hash = Sha256::digest(&buf).into();
        let n = buf.len() as u64;
        let p = archive.anchors_part_path(id, from);
        archive
            .put_once(&p, bytes::Bytes::from(buf), &sha)
            .await
            .map_err(|e| e.to_string())?;
        self.anchors_archived = Some(from + n);
        Ok(())
    }

    /// Sends a custody record to the writer and waits until it is sealed
    /// and anchored.
    async fn record(&self, what: CustodyRecord) -> Result<u64, String> {
        let (done, rx) = oneshot::channel();
        let send = self.tx.send(Custody { what, done });
        tokio::select! {
            r = send => r.map_err(|_| "the journal writer stopped".to_owned())?,
            _ = self.stop.cancelled() => return Err("stopping".into()),
        }
        match tokio::time::timeout(RECORD_TIMEOUT, rx).await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(_)) => {
                Err("the record was not sealed and anchored (journal write failed)".into())
            }
            Err(_) => Err("the record was not sealed and anchored within 60s".into()),
        }
    }

    /// Deletes what retention allows, after a sealed, anchored PRUNE record.
    async fn retention_step(&mut self) -> Result<(), String> {
        let Some(r) = self.cfg.retention.clone() else {
            return Ok(());
        };
        if self.failed || self.segs.is_empty() || self.stop.is_cancelled() {
            return Ok(());
        }
        if marker_path(&self.cfg.dir).exists() {
            // A prune not finished (a failed unlink): that one first.
            self.finish_prune()?;
            let gone: Vec<bool> = self.segs.iter().map(|s| !s.path.exists()).collect();
            let n = gone.iter().take_while(|g| **g).count();
            self.segs.drain(..n);
            return Ok(());
        }
        let total: u64 = list_segments(&self.cfg.dir)
            .map_err(|e| e.to_string())?
            .iter()
            .filter_map(|s| std::fs::metadata(&s.path).ok())
            .map(|m| m.len())
            .sum();
        let settled = self.settled_below.load(Ordering::Acquire);
        let need_archive = r.require_archived && self.archive.is_some();
        let now = SystemTime::now();
        let mut remaining = total;
        let mut n = 0;
        for s in &self.segs {
            if n >= PruneBody::MAX_SEGMENTS {
                break;
            }
            let over = r.max_bytes.is_some_and(|m| remaining > m.0);
            let old = r
                .max_age
                .is_some_and(|a| now.duration_since(s.closed_at).is_ok_and(|age| age > a.0));
            if !(over || old)
                || (r.keep_undelivered && s.facts.last_seq >= settled)
                || (need_archive && !s.archived)
            {
                break;
            }
            remaining = remaining.saturating_sub(s.facts.file_len);
            n += 1;
        }
        if n == 0 {
            return Ok(());
        }
        // Still the files that were verified (nothing is deleted on the
        // strength of an old reading).
        for s in self.segs.iter().take(n) {
            let m = Mapped::map(&s.path).map_err(|e| format!("{}: {e}", s.path.display()))?;
            if Sha256::digest(m.bytes())[..] != s.facts.file_sha256[..] {
                let msg = format!(
                    "{} changed after it was verified (SHA-256 differs); kept",
                    s.path.display()
                );
                self.alarm("MODIFIED", msg.clone());
                return Err(msg);
            }
        }
        let last = &self.segs[n - 1];
        let body = PruneBody {
            end_segment_no: last.facts.segment_no,
            end_seq: last.facts.last_seq,
            end_chain: last.facts.end_chain,
            end_epoch: last.end_epoch,
            ended_run: last.ended_run,
            segments: self.segs.iter().take(n).map(|s| s.facts.clone()).collect(),
        };
        let seq = self.record(CustodyRecord::Prune(body)).await?;
        let names: Vec<String> = self
            .segs
            .iter()
            .take(n)
            .map(|s| segment_name(s.facts.first_seq))
            .collect();
        if let Err(e) = write_marker(&self.cfg.dir, seq, &names) {
            // The record is anchored: go on. A crash before the unlinks
            // end then leaves a start inside the PRUNE's range, which
            // verify accepts, and retention prunes the rest again.
            tracing::warn!(journal = %self.cfg.dir.display(), error = %e, "retention: cannot write the prune marker; unlinking anyway");
        }
        if self.alarmed() {
            // Raised while the record was written: nothing is unlinked (a
            // later PRUNE lists these segments again).
            return Ok(());
        }
        // Fault injection for the crash tests: die as a SIGKILL would,
        // between the anchored PRUNE record and the unlinks, or after the
        // first of several unlinks.
        let failpoint = std::env::var("AUDITLB_FAILPOINT").unwrap_or_default();
        if failpoint == "prune-before-unlink" {
            std::process::abort();
        }
        let mut freed = 0;
        for i in 0..n {
            if i == 1 && failpoint == "prune-mid-unlink" {
                std::process::abort();
            }
            let s = self.segs.front().expect("n segments are listed");
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The marker stays: the next pass finishes this prune.
                Err(e) => return Err(format!("{}: {e}", s.path.display())),
            }
            freed += s.facts.file_len;
            self.freed.fetch_add(s.facts.file_len, Ordering::AcqRel);
            self.metrics.custody.pruned_segments.inc();
            self.metrics.custody.pruned_bytes.inc_by(s.facts.file_len);
            self.segs.pop_front();
        }
        finish_marker(&self.cfg.dir).map_err(|e| e.to_string())?;
        tracing::info!(journal = %self.cfg.dir.display(), segments = n, bytes = freed, prune_seq = seq, "retention: pruned");
        if let (Some(a), Some(id)) = (
            self.archive.clone(),
            self.walker.as_ref().and_then(|w| w.rep.journal_id),
        ) {
            // The p1 line, off-host as soon as possible.
            if let Err(e) = self.archive_anchors(&a, &id).await {
                self.metrics.custody.archive_failures.inc();
                tracing::warn!(error = %e, "archive: anchors upload failed; retrying");
            }
        }
        Ok(())
    }

    /// A prune an earlier run began (its marker is there) is finished: the
    /// segments its PRUNE record lists are unlinked if they are still the
    /// files it describes.
    fn finish_prune(&mut self) -> Result<(), String> {
        let dir = self.cfg.dir.clone();
        let marker = marker_path(&dir);
        let text = match std::fs::read_to_string(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", marker.display())),
        };
        let Some(seq) = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("auditlb-prune v1 "))
            .and_then(|s| s.trim().parse::<u64>().ok())
        else {
            // Markers are written whole (renamed into place): this one is
            // not auditlb's. Nothing is deleted on its word.
            tracing::warn!(marker = %marker.display(), "not a prune marker; removed, nothing deleted");
            return finish_marker(&dir).map_err(|e| e.to_string());
        };
        let Some(body) = find_prune(&dir, seq) else {
            self.alarm(
                "DELETED",
                format!(
                    "{} names PRUNE record seq {seq}, which the journal does not hold",
                    marker.display()
                ),
            );
            return Err("PRUNE record missing".into());
        };
        let mut freed = 0;
        let mut n = 0;
        for s in &body.segments {
            let path = dir.join(segment_name(s.first_seq));
            let Ok(m) = Mapped::map(&path) else { continue };
            if Sha256::digest(m.bytes())[..] != s.file_sha256[..] {
                drop(m);
                self.alarm(
                    "MODIFIED",
                    format!(
                        "{} is listed in PRUNE record seq {seq} with another SHA-256; kept",
                        path.display()
                    ),
                );
                return Err("a listed segment changed".into());
            }
            drop(m);
            std::fs::remove_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            freed += s.file_len;
            n += 1;
        }
        finish_marker(&dir).map_err(|e| e.to_string())?;
        self.freed.fetch_add(freed, Ordering::AcqRel);
        self.metrics.custody.pruned_segments.inc_by(n);
        self.metrics.custody.pruned_bytes.inc_by(freed);
        tracing::info!(journal = %dir.display(), prune_seq = seq, segments = n, bytes = freed, "retention: finished the prune a stop interrupted");
        Ok(())
    }
}

/// The PRUNE record at `seq` in the journal, if there is one as auditlb
/// writes it: consistent, and sealed by the checkpoint right after it.
fn find_prune(dir: &Path, seq: u64) -> Option<PruneBody> {
    let segs = list_segments(dir).ok()?;
    let seg = segs.iter().rev().find(|s| s.name_seq <= seq)?;
    let m = Mapped::map(&seg.path).ok()?;
    let mut recs = Records::new(m.bytes())
        .map_while(Result::ok)
        .skip_while(|(_, r)| r.seq != seq);
    let (_, r) = recs.next()?;
    let sealed = recs
        .next()
        .is_some_and(|(_, n)| n.kind().is_some_and(RecordType::is_checkpoint));
    (r.kind() == Some(RecordType::Prune) && sealed)
        .then(|| PruneBody::decode(r.body))
        .flatten()
        .filter(PruneBody::consistent)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn write_marker(dir: &Path, seq: u64, names: &[String]) -> io::Result<()> {
    let path = marker_path(dir);
    let mut text = format!("auditlb-prune v1 {seq}\n");
    for n in names {
        text.push_str(n);
        text.push('\n');
    }
    // Whole or not at all: written aside, then renamed into place.
    let tmp = dir.join("prune.pending.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)
}

fn finish_marker(dir: &Path) -> io::Result<()> {
    sync_dir(dir)?;
    match std::fs::remove_file(marker_path(dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sync_dir(dir)
}

/// A mapped segment as the body of an upload (no copy).
struct MappedBytes(Mapped);

impl AsRef<[u8]> for MappedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.bytes()
    }
}
