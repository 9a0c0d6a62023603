//! `auditlb verify`: checks every record, link, segment, seal and anchor of a
//! journal and reports the first failure with its seq, segment file, byte
//! offset and class. Record digests are computed on all cores; only the
//! cheap chain step runs in order.
//!
//! Exit codes: 0 intact, 1 tampered, 2 intact but the tail after the last
//! anchor is not covered, 3 I/O or usage error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::anchors::Anchors;
use super::format::{
    chain_step, ends_segment, flags, genesis, hex, segment_start_mismatch, CheckpointBody, Hash,
    Header, ParseError, Record, RecordType, HEADER_LEN,
};
use super::hasher::{Digests, RecordSet};
use super::reader::{list_entries, Mapped, Records};
use super::seal::{key_at, ratchet, seal, SealInput};

/// How many later epoch keys are tried to tell WRONG_EPOCH from BAD_SEAL.
const EPOCH_LOOKAHEAD: u64 = 64;

mod report;
pub use report::{json_str, printable, Class, Failure, Report};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

/// Records per unit of `verify`'s digest work.
const DIGEST_CHUNK: usize = 1024;

/// A segment's parsed records.
struct Parsed<'a>(&'a [(usize, Record<'a>)]);

impl RecordSet for Parsed<'_> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn record(&self, i: usize) -> &[u8] {
        self.0[i].1.raw
    }
}

/// One segment to walk: its name's seq, what reports call it, and where
/// its bytes come from.
pub struct Source {
    pub name_seq: u64,
    pub label: PathBuf,
    /// False for a link, FIFO or device named like a segment.
    pub regular: bool,
    pub fetch: Fetch,
}

/// Where a segment's bytes come from.
pub enum Fetch {
    Local(PathBuf),
    /// Fetched when the walk reaches it (an archived segment).
    Remote(Box<dyn FnOnce() -> std::io::Result<Vec<u8>> + Send>),
}

impl Source {
    pub fn local(seg: &super::reader::SegmentFile) -> Source {
        Source {
            name_seq: seg.name_seq,
            label: seg.path.clone(),
            regular: seg.regular,
            fetch: Fetch::Local(seg.path.clone()),
        }
    }

    /// The bytes: a closed local segment is mapped, the newest read (a live
    /// writer may cut it).
    fn open(self, newest: bool) -> std::io::Result<Mapped> {
        match self.fetch {
            Fetch::Local(p) if newest => Mapped::open(&p),
            Fetch::Local(p) => Mapped::map_populated(&p),
            Fetch::Remote(f) => f().map(Mapped::from_vec),
        }
    }
}

/// Where a pruned journal starts: the end of what a PRUNE record deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary {
    /// Seq of the PRUNE record.
    pub record_seq: u64,
    pub body: super::format::PruneBody,
    /// The listed segment the kept journal follows (the last, unless the
    /// unlinks were cut short).
    pub at: usize,
}

/// The PRUNE record that covers the segments missing before the first of
/// `sources` (which starts at a segment other than 0): the newest one, in
/// the local segments, whose end is exactly where the first one starts.
/// Only parsed here; the walk checks it like every record.
pub fn find_boundary(sources: &[Source]) -> Option<Boundary> {
    let first = match &sources.first()?.fetch {
        Fetch::Local(p) => Mapped::map(p).ok()?,
        Fetch::Remote(_) => return None,
    };
    let h = Header::decode(first.bytes()).ok()?;
    if h.segment_no == 0 {
        return None;
    }
    // The newest such record: prunes are recent, so from the newest
    // segment back, stopping at the first segment that has one.
    for src in sources.iter().rev() {
        let Fetch::Local(p) = &src.fetch else {
            continue;
        };
        let Ok(m) = Mapped::map(p) else { continue };
        if let Some(b) = prune_covering(m.bytes(), &h) {
            return Some(b);
        }
    }
    None
}

/// The last PRUNE record in a segment's `bytes` that covers a journal
/// starting with `first` (the header of its first segment).
pub fn prune_covering(bytes: &[u8], first: &Header) -> Option<Boundary> {
    let mut found = None;
    for (_, r) in Records::new(bytes).map_while(Result::ok) {
        if r.kind() != Some(RecordType::Prune) {
            continue;
        }
        if let Some(b) = super::format::PruneBody::decode(r.body) {
            if let Some(at) = b.covers_start(first.segment_no, first.first_seq, &first.prev_chain) {
                found = Some(Boundary {
                    record_seq: r.seq,
                    body: b,
                    at,
                });
            }
        }
    }
    found
}

/// Walks a journal directory; the result says what holds. `Err` only for
/// I/O and usage problems (exit 3).
pub fn verify(
    journal: &Path,
    anchors: Option<&Path>,
    key: Option<&Hash>,
) -> Result<Report, VerifyError> {
    verify_with_progress(journal, anchors, key, &mut |_, _| true)
}

/// [`verify`], telling `progress` after each segment walked (its path and
/// the report so far); the walk stops early when it answers false (the
/// report then covers what was walked).
pub fn verify_with_progress(
    journal: &Path,
    anchors: Option<&Path>,
    key: Option<&Hash>,
    progress: &mut dyn FnMut(&Path, &Report) -> bool,
) -> Result<Report, VerifyError> {
    let segments = list_entries(journal).map_err(|source| VerifyError::Io {
        path: journal.to_owned(),
        source,
    })?;
    let anchors = match anchors {
        Some(p) => Some((
            p.to_owned(),
            Anchors::read(p).map_err(|source| VerifyError::Io {
                path: p.to_owned(),
                source,
            })?,
        )),
        None => None,
    };
    verify_sources(
        journal,
        segments.iter().map(Source::local).collect(),
        anchors,
        key,
        progress,
    )
}

/// Walks `sources` (one journal's segments, in order, from a directory or
/// an archive) against `anchors`; a pruned start is looked for in the
/// local sources ([`find_boundary`]).
pub fn verify_sources(
    journal: &Path,
    sources: Vec<Source>,
    anchors: Option<(PathBuf, Anchors)>,
    key: Option<&Hash>,
    progress: &mut dyn FnMut(&Path, &Report) -> bool,
) -> Result<Report, VerifyError> {
    let boundary = find_boundary(&sources);
    verify_sources_from(journal, sources, anchors, key, boundary, progress)
}

/// [`verify_sources`] with the PRUNE record a pruned start rests on
/// already found (from an archive, where it is fetched by its `p1` line).
pub fn verify_sources_from(
    journal: &Path,
    sources: Vec<Source>,
    anchors: Option<(PathBuf, Anchors)>,
    key: Option<&Hash>,
    mut boundary: Option<Boundary>,
    progress: &mut dyn FnMut(&Path, &Report) -> bool,
) -> Result<Report, VerifyError> {
    // With anchors, a boundary their `p1` lines do not state is none at
    // all: found before the walk, so its epochs never drive key derivation.
    if let (Some(b), Some((_, a))) = (&boundary, &anchors) {
        if !a.prunes.iter().any(|p| p.matches(b.record_seq, &b.body)) {
            boundary = None;
        }
    }
    let mut rep = Report {
        seals_checked: key.is_some(),
        ..Report::default()
    };
    if let Some((p, a)) = &anchors {
        if let Some(&line) = a.bad_lines.first() {
            rep.failure = Some(Failure {
                class: Class::Modified,
                seq: None,
                segment: p.to_path_buf(),
                offset: 0,
                message: format!("anchors file line {line} is not an anchor line"),
            });
            return Ok(rep);
        }
    }
    if sources.is_empty() {
        if let Some(h) = anchors.as_ref().and_then(|a| a.1.head()) {
            rep.journal_id = Some(h.journal_id);
            rep.failure = Some(Failure {
                class: Class::SegmentMissing,
                seq: Some(h.seq),
                segment: journal.to_owned(),
                offset: 0,
                message: format!(
                    "the journal has no segment files, but the anchors file records journal {} up to seq {}",
                    hex(&h.journal_id),
                    h.seq
                ),
            });
            return Ok(rep);
        }
        return Err(VerifyError::Usage(format!(
            "{}: no segment files (*.seg)",
            journal.display()
        )));
    }
    let bound = anchors.as_ref().and_then(|(_, a)| {
        a.bound()
            .map(|id| (id, a.of(&id).map(|x| x.seq).max().unwrap_or(0)))
    });
    let mut walker = Walker::new(key.copied(), bound, boundary);
    walker.rep.seals_checked = key.is_some();
    let n = sources.len();
    for (k, src) in sources.into_iter().enumerate() {
        let label = src.label.clone();
        let info = (src.name_seq, label.clone(), src.regular);
        let mapped = if src.regular {
            Some(src.open(k + 1 == n).map_err(|source| VerifyError::Io {
                path: label.clone(),
                source,
            })?)
        } else {
            None
        };
        let bytes = mapped.as_ref().map_or(&[][..], Mapped::bytes);
        let step = walker.segment(info, bytes, k + 1 == n);
        let go_on = progress(&label, &walker.rep);
        if step == Step::Stop || !go_on {
            break;
        }
        // Only the custodian uses them: not kept for a whole journal.
        walker.archived.clear();
        walker.pruned.clear();
    }
    Ok(walker.finish(anchors.as_ref().map(|(p, a)| (p.as_path(), a))))
}

/// Whether a walk goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Go,
    Stop,
}

/// The walk over a journal's segments in order, one at a time: what
/// `verify` runs over a directory or an archive, and what auditlb's own
/// self-verification runs as each segment closes.
pub struct Walker {
    pub rep: Report,
    w: Walk,
    head: Hash,
    expected_seq: u64,
    prev_no: u64,
    prev_end: Option<(PathBuf, u64, bool)>,
    last_checkpoint_at: Option<(PathBuf, u64)>,
    journal_id: [u8; 16],
    prev_ended_run: bool,
    /// The anchors file's journal and highest seq (with `--anchors`).
    anchor_bound: Option<([u8; 16], u64)>,
    /// The highest anchored seq of this journal, once it is known.
    anchored_to: Option<u64>,
    /// Segments walked.
    walked: usize,
    /// The PRUNE record that covers the missing start, if the journal
    /// starts after segment 0; `seen` once the walk passed it.
    boundary: Option<Boundary>,
    boundary_seen: bool,
    /// The boundary PRUNE record was just walked: its checkpoint is next.
    boundary_sealing: bool,
    /// Custody records walked since the caller last took them.
    pub archived: Vec<super::format::ArchivedBody>,
    pub pruned: Vec<(u64, super::format::PruneBody)>,
    /// Epoch of the last checkpoint walked.
    pub last_epoch: Option<u64>,
}

impl Walker {
    /// `anchor_bound`: the journal the anchors file binds and its highest
    /// anchored seq; `boundary`: see [`find_boundary`].
    pub fn new(
        key: Option<Hash>,
        anchor_bound: Option<([u8; 16], u64)>,
        boundary: Option<Boundary>,
    ) -> Walker {
        Walker {
            rep: Report {
                seals_checked: key.is_some(),
                ..Report::default()
            },
            w: Walk {
                key_state: None,
                k0: key,
                last_epoch: None,
                epoch_free: false,
                checkpoints: HashMap::new(),
            },
            head: [0; 32],
            expected_seq: 0,
            prev_no: 0,
            prev_end: None,
            last_checkpoint_at: None,
            journal_id: [0; 16],
            prev_ended_run: false,
            anchor_bound,
            anchored_to: None,
            walked: 0,
            boundary,
            boundary_seen: false,
            boundary_sealing: false,
            archived: Vec::new(),
            pruned: Vec::new(),
            last_epoch: None,
        }
    }

    /// Chain hash of the last record walked.
    pub fn head(&self) -> Hash {
        self.head
    }

    /// Whether the last segment walked ended a run.
    pub fn ended_run(&self) -> bool {
        self.prev_ended_run
    }

    /// Checks an anchor line of this journal against the checkpoints
    /// walked (self-verification: lines as they are appended).
    pub fn check_anchor(&mut self, a: &super::anchors::Anchor) -> Result<(), String> {
        match self.w.checkpoints.get(&a.seq) {
            Some(v) if *v == (a.chain, a.epoch, a.seal) => {
                self.rep.anchors_checked += 1;
                self.rep.last_anchored = Some(self.rep.last_anchored.map_or(a.seq, |l| l.max(a.seq)));
                Ok(())
            }
            Some(_) => Err(format!(
                "the journal's checkpoint at seq {} does not match its anchor (chain, epoch or seal)",
                a.seq
            )),
            None => Err(format!("anchored seq {} is not a checkpoint of the journal", a.seq)),
        }
    }

    /// How many walked checkpoints are kept for anchor lines.
    pub fn checkpoints_kept(&self) -> usize {
        self.w.checkpoints.len()
    }

    /// Lets go of the checkpoints below `seq` (self-verification keeps
    /// only those whose anchor line may still come).
    pub fn forget_checkpoints_below(&mut self, seq: u64) {
        self.w.checkpoints.retain(|&s, _| s >= seq);
    }

    /// Walks one segment: `name_seq` and `path` as listed, `regular` false
    /// for something that is not a file, `newest` for the journal's last
    /// segment (the only one a torn tail may end). A failure or a segment
    /// still being created ends the walk.
    pub fn segment(&mut self, seg: (u64, PathBuf, bool), bytes: &[u8], newest: bool) -> Step {
        let (name_seq, path, regular) = seg;
        let k = self.walked;
        self.walked += 1;
        let rep = &mut self.rep;
        if !regular {
            rep.failure = Some(Failure {
                class: Class::Modified,
                seq: Some(name_seq),
                segment: path,
                offset: 0,
                message: "not a regular file (a link, FIFO or device named like a segment)".into(),
            });
            return Step::Stop;
        }
        rep.segments += 1;
        rep.bytes += bytes.len() as u64;
        let fail = |class, seq, offset: usize, message: String| Failure {
            class,
            seq,
            segment: path.clone(),
            offset: offset as u64,
            message,
        };
        let header = match Header::decode(bytes) {
            Ok(h) => h,
            Err(_)
                if newest
                    && bytes.len() < HEADER_LEN
                    && super::recover::is_header_prefix(bytes) =>
            {
                // The newest segment was being created when the process
                // died: nothing in it yet (recovery removes it).
                rep.tail_uncovered = Some(format!(
                    "{} was being created ({} bytes, no header yet); auditlb removes it at its next start",
                    path.display(),
                    bytes.len()
                ));
                return Step::Stop;
            }
            Err(m) => {
                rep.failure = Some(fail(
                    Class::Modified,
                    None,
                    0,
                    format!("segment header: {m}"),
                ));
                return Step::Stop;
            }
        };
        if name_seq != header.first_seq {
            rep.failure = Some(fail(
                Class::Reordered,
                Some(header.first_seq),
                0,
                format!(
                    "file name says first seq {name_seq}, header says {}",
                    header.first_seq
                ),
            ));
            return Step::Stop;
        }
        if k == 0 {
            self.journal_id = header.journal_id;
            rep.journal_id = Some(self.journal_id);
            if header.segment_no != 0 {
                // Only where a PRUNE record of this journal deleted
                // exactly the segments before this one.
                let covered = self.boundary.as_ref().filter(|b| {
                    b.body.consistent()
                        && b.body.covers_start(
                            header.segment_no,
                            header.first_seq,
                            &header.prev_chain,
                        ) == Some(b.at)
                });
                let Some(b) = covered else {
                    rep.failure = Some(fail(
                        Class::SegmentMissing,
                        Some(header.first_seq),
                        0,
                        format!(
                            "journal starts at segment {}; earlier segments are missing and no PRUNE record covers them",
                            header.segment_no
                        ),
                    ));
                    return Step::Stop;
                };
                if b.at + 1 == b.body.segments.len() {
                    // Epochs and runs go on from the end of what was pruned.
                    self.w.last_epoch = Some(b.body.end_epoch);
                    self.prev_ended_run = b.body.ended_run;
                } else {
                    // A prune whose unlinks were cut short: the epoch at
                    // this start is not recorded, the ones after it are
                    // checked as usual.
                    self.w.epoch_free = true;
                }
                rep.pruned_to = Some(b.body.segments[b.at].last_seq);
            } else if header.prev_chain != genesis(&self.journal_id) {
                rep.failure = Some(fail(
                    Class::Modified,
                    Some(header.first_seq),
                    0,
                    "first segment does not start from the journal's genesis hash".into(),
                ));
                return Step::Stop;
            }
            self.head = header.prev_chain;
            self.expected_seq = header.first_seq;
            rep.first_seq = Some(header.first_seq);
        } else {
            if header.journal_id != self.journal_id {
                rep.failure = Some(fail(
                    Class::Inserted,
                    Some(header.first_seq),
                    0,
                    "segment belongs to another journal".into(),
                ));
                return Step::Stop;
            }
            if header.segment_no > self.prev_no.saturating_add(1) {
                rep.failure = Some(fail(
                    Class::SegmentMissing,
                    Some(self.expected_seq),
                    0,
                    format!(
                        "segment {} follows segment {}",
                        header.segment_no, self.prev_no
                    ),
                ));
                return Step::Stop;
            }
            if header.segment_no <= self.prev_no {
                rep.failure = Some(fail(
                    Class::Reordered,
                    Some(header.first_seq),
                    0,
                    format!(
                        "segment {} follows segment {}",
                        header.segment_no, self.prev_no
                    ),
                ));
                return Step::Stop;
            }
            if let Some((p, end, false)) = &self.prev_end {
                rep.failure = Some(Failure {
                    class: Class::Deleted,
                    seq: Some(self.expected_seq),
                    segment: p.clone(),
                    offset: *end,
                    message:
                        "segment was cut short: it has no SEGMENT_END (nor a final checkpoint)"
                            .into(),
                });
                return Step::Stop;
            }
            if header.first_seq != self.expected_seq {
                let class = if header.first_seq > self.expected_seq {
                    Class::Deleted
                } else {
                    Class::Inserted
                };
                rep.failure = Some(fail(
                    class,
                    Some(header.first_seq),
                    0,
                    format!(
                        "segment starts at seq {}, expected {}",
                        header.first_seq, self.expected_seq
                    ),
                ));
                return Step::Stop;
            }
            if header.prev_chain != self.head {
                rep.failure = Some(fail(
                    Class::Modified,
                    Some(header.first_seq),
                    0,
                    "segment header does not link to the previous segment's last chain hash".into(),
                ));
                return Step::Stop;
            }
        }
        self.prev_no = header.segment_no;
        let mut recs = Vec::new();
        let mut parse_error = None;
        for step in Records::new(bytes) {
            match step {
                Ok(x) => recs.push(x),
                Err(e) => parse_error = Some(e),
            }
        }
        let mut ended = false;
        // A segment after the end of a run (or the journal's first) starts
        // a run, whose first checkpoint comes before anything it routes
        // and, with anchors, is anchored before anything follows it.
        let starts_run = (k == 0 && header.segment_no == 0) || self.prev_ended_run;
        if k == 0 {
            // Only under the anchors of this very journal (another
            // journal's file is JOURNAL_REPLACED, reported at the end).
            self.anchored_to = self
                .anchor_bound
                .filter(|(id, _)| *id == self.journal_id)
                .map(|(_, s)| s);
        }
        let anchored_to = self.anchored_to;
        let journal_id = self.journal_id;
        let mut run_checkpoint: Option<u64> = None;
        let mut head = self.head;
        let mut expected_seq = self.expected_seq;
        let w = &mut self.w;
        let boundary = &self.boundary;
        let boundary_seen = &mut self.boundary_seen;
        let boundary_sealing = &mut self.boundary_sealing;
        let archived = &mut self.archived;
        let pruned = &mut self.pruned;
        let last_checkpoint_at = &mut self.last_checkpoint_at;
        // Digests are computed ahead on every core while this thread walks
        // the chain (which is sequential), so the two overlap.
        let digests = Digests::new(Parsed(&recs), DIGEST_CHUNK);
        let workers = match digests.chunks() {
            0 | 1 => 0,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let failed = std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| digests.work());
            }
            let failed = (|| {
                for (i, (at, r)) in recs.iter().enumerate() {
                    let at = *at;
                    let d = digests.digest(i);
                    if ended {
                        return Some(fail(
                            Class::Inserted,
                            Some(r.seq),
                            at,
                            "record after the segment's end (SEGMENT_END, or the final checkpoint of a clean stop)".into(),
                        ));
                    }
                    if r.seq == u64::MAX {
                        return Some(fail(
                            Class::Modified,
                            Some(r.seq),
                            at,
                            "seq out of range".into(),
                        ));
                    }
                    if r.seq != expected_seq {
                        let class = if r.seq > expected_seq {
                            if recs[i + 1..]
                                .iter()
                                .take(16)
                                .any(|(_, n)| n.seq == expected_seq)
                            {
                                Class::Reordered
                            } else {
                                Class::Deleted
                            }
                        } else {
                            // A seq already passed: a copy or an injected record.
                            Class::Inserted
                        };
                        return Some(fail(
                            class,
                            Some(expected_seq),
                            at,
                            format!("found seq {}, expected {expected_seq}", r.seq),
                        ));
                    }
                    let c = chain_step(&head, r.seq, d);
                    if c != r.chain {
                        let class = match recs.get(i + 1) {
                            Some((_, n)) if n.seq == r.seq => Class::Inserted,
                            _ => Class::Modified,
                        };
                        return Some(fail(
                            class,
                            Some(r.seq),
                            at,
                            "record does not match its chain hash".into(),
                        ));
                    }
                    let kind = r.kind();
                    if std::mem::take(boundary_sealing) {
                        // The PRUNE record a pruned start rests on is sealed
                        // by the checkpoint auditlb writes right after it.
                        if !kind.is_some_and(RecordType::is_checkpoint) {
                            return Some(fail(
                                Class::SegmentMissing,
                                Some(r.seq),
                                at,
                                "the PRUNE record the journal's start rests on is not sealed by a checkpoint right after it: not written by auditlb".into(),
                            ));
                        }
                        *boundary_seen = true;
                    }
                    if let Some(why) = segment_start_mismatch(&header, i as u64, r) {
                        return Some(fail(Class::Modified, Some(r.seq), at, why.into()));
                    }
                    if starts_run {
                        let opening = super::format::opens_run(kind)
                            || kind.is_some_and(RecordType::is_checkpoint)
                            || kind == Some(RecordType::SegmentEnd);
                        match run_checkpoint {
                            None if !opening => {
                                return Some(fail(
                                    Class::Inserted,
                                    Some(r.seq),
                                    at,
                                    "a run's records before its first checkpoint: not written by auditlb".into(),
                                ));
                            }
                            Some(s) if !opening && anchored_to.is_some_and(|a| a < s) => {
                                return Some(fail(
                                    Class::Inserted,
                                    Some(r.seq),
                                    at,
                                    format!("records after a run's first checkpoint (seq {s}), which is not anchored: not written by auditlb"),
                                ));
                            }
                            _ => {}
                        }
                        if run_checkpoint.is_none() && kind.is_some_and(RecordType::is_checkpoint) {
                            run_checkpoint = Some(r.seq);
                        }
                    }
                    match kind {
                        None => {
                            return Some(fail(
                                Class::Modified,
                                Some(r.seq),
                                at,
                                format!("unknown record type {}", r.rtype),
                            ));
                        }
                        Some(RecordType::Frame) => rep.frames += 1,
                        Some(RecordType::SegmentEnd) => ended = true,
                        Some(RecordType::Alarm) => {
                            rep.alarms.push(format!(
                                "seq {} in {}: {} {}",
                                r.seq,
                                path.display(),
                                String::from_utf8_lossy(
                                    r.meta_value(super::format::tag::REASON).unwrap_or(b"")
                                ),
                                String::from_utf8_lossy(r.body)
                            ));
                        }
                        Some(RecordType::Recovery) => {
                            rep.recovered.push(format!(
                                "seq {} in {}: {}",
                                r.seq,
                                path.display(),
                                String::from_utf8_lossy(
                                    r.meta_value(super::format::tag::REASON).unwrap_or(b"")
                                )
                            ));
                        }
                        Some(RecordType::Archived) => {
                            let Some(b) = super::format::ArchivedBody::decode(r.body) else {
                                return Some(fail(
                                    Class::Modified,
                                    Some(r.seq),
                                    at,
                                    "ARCHIVED body is malformed".into(),
                                ));
                            };
                            rep.archived += 1;
                            archived.push(b);
                        }
                        Some(RecordType::Prune) => {
                            let Some(b) = super::format::PruneBody::decode(r.body) else {
                                return Some(fail(
                                    Class::Modified,
                                    Some(r.seq),
                                    at,
                                    "PRUNE body is malformed".into(),
                                ));
                            };
                            if b.end_seq >= r.seq || !b.consistent() {
                                return Some(fail(
                                    Class::Modified,
                                    Some(r.seq),
                                    at,
                                    "PRUNE record is not one auditlb writes (its segments do not follow each other up to its end, or it deletes records after itself)".into(),
                                ));
                            }
                            if boundary
                                .as_ref()
                                .is_some_and(|x| x.record_seq == r.seq && x.body == b)
                            {
                                *boundary_sealing = true;
                            }
                            rep.prunes += 1;
                            pruned.push((r.seq, b));
                        }
                        Some(t) if t.is_checkpoint() => {
                            if let Err((class, msg)) = w.checkpoint(r, &journal_id, &head) {
                                return Some(fail(class, Some(r.seq), at, msg));
                            }
                            rep.checkpoints += 1;
                            *last_checkpoint_at = Some((path.clone(), (at + r.raw.len()) as u64));
                            let body = CheckpointBody::decode(r.body);
                            w.checkpoints.insert(
                                r.seq,
                                (
                                    c,
                                    body.as_ref().map_or(0, |b| b.epoch),
                                    body.map_or([0; 32], |b| b.seal),
                                ),
                            );
                            ended = ends_segment(r);
                        }
                        Some(_) => {}
                    }
                    head = c;
                    expected_seq += 1;
                    rep.records += 1;
                    rep.last_seq = Some(r.seq);
                }
                None
            })();
            digests.stop();
            failed
        });
        self.head = head;
        self.expected_seq = expected_seq;
        self.last_epoch = self.w.last_epoch;
        if let Some(f) = failed {
            rep.failure = Some(f);
            return Step::Stop;
        }
        let end = recs.last().map_or(HEADER_LEN, |(at, r)| at + r.raw.len());
        if let Some((at, e)) = parse_error {
            let after_checkpoint = self
                .last_checkpoint_at
                .as_ref()
                .is_none_or(|(p, off)| *p != path || *off <= at as u64);
            let incomplete = matches!(e, ParseError::Incomplete { .. });
            // The rule recovery cuts by: a torn tail is verified as not
            // anchored; anything else there is damage.
            let torn = newest
                && after_checkpoint
                && !ended
                && super::recover::is_torn_tail(bytes, at, incomplete);
            match e {
                _ if ended => {
                    rep.failure = Some(fail(
                        Class::Inserted,
                        Some(expected_seq),
                        at,
                        "bytes after the segment's end (SEGMENT_END, or the final checkpoint of a clean stop)".into(),
                    ));
                    return Step::Stop;
                }
                _ if torn => {
                    rep.tail_uncovered = Some(format!(
                        "torn record at the end of {} (offset {at}: {}); auditlb cuts it at its next start",
                        path.display(),
                        match e {
                            ParseError::Incomplete { have, need } => {
                                format!("{have} of {need} bytes")
                            }
                            ParseError::Malformed(m) => m.to_string(),
                        }
                    ));
                }
                ParseError::Incomplete { have, need } => {
                    rep.failure = Some(fail(
                        Class::Deleted,
                        Some(expected_seq),
                        at,
                        format!("record cut short ({have} of {need} bytes)"),
                    ));
                    return Step::Stop;
                }
                ParseError::Malformed(m) => {
                    rep.failure = Some(fail(
                        Class::Modified,
                        Some(expected_seq),
                        at,
                        format!("unreadable record: {m}"),
                    ));
                    return Step::Stop;
                }
            }
        }
        self.prev_end = Some((path.clone(), end as u64, ended));
        self.prev_ended_run = recs.last().is_some_and(|(_, r)| super::format::ends_run(r));
        Step::Go
    }

    /// Whether the last segment walked was closed (SEGMENT_END or a
    /// final checkpoint).
    pub fn closed(&self) -> bool {
        self.prev_end.as_ref().is_some_and(|p| p.2)
    }

    /// The end of the walk: the PRUNE boundary walked, then the anchors
    /// (the file is bound to one journal, which must reach every anchored
    /// seq with the same hash, and whose pruned part its `p1` lines
    /// account for).
    pub fn finish(mut self, anchors: Option<(&Path, &Anchors)>) -> Report {
        let mut rep = std::mem::take(&mut self.rep);
        if rep.failure.is_some() {
            return rep;
        }
        if let (Some(b), false, Some(_)) = (&self.boundary, self.boundary_seen, rep.pruned_to) {
            rep.failure = Some(Failure {
                class: Class::SegmentMissing,
                seq: Some(b.record_seq),
                segment: self.prev_end.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                offset: 0,
                message: format!(
                    "the PRUNE record (seq {}) that would cover the missing segments was not reached",
                    b.record_seq
                ),
            });
            return rep;
        }
        let journal_id = self.journal_id;
        let Some((_, all)) = anchors else {
            rep.tail_uncovered
                .get_or_insert_with(|| "no --anchors given: a cut tail cannot be ruled out".into());
            return rep;
        };
        let last_seq = rep.last_seq.unwrap_or(0);
        let last_path = self
            .prev_end
            .as_ref()
            .map(|p| p.0.clone())
            .unwrap_or_default();
        let first_path = last_path.clone();
        if let Some(bound) = all.bound().filter(|b| *b != journal_id) {
            rep.failure = Some(Failure {
                class: Class::JournalReplaced,
                seq: rep.first_seq,
                segment: first_path,
                offset: 0,
                message: format!(
                    "the anchors file belongs to journal {}; this journal is {} (wiped, re-created or swapped)",
                    hex(&bound),
                    hex(&journal_id)
                ),
            });
            return rep;
        }
        // The pruned part: the anchored PRUNE lines must cover every
        // segment from 0 to where the journal now starts, with no hole;
        // the PRUNE record it rests on must have its own line, equal in
        // every field, and its sealing checkpoint must be anchored.
        if let (Some(pruned_to), Some(b)) = (rep.pruned_to, &self.boundary) {
            let body = &b.body;
            let own = all
                .prunes_of(&journal_id)
                .any(|p| p.matches(b.record_seq, body));
            let sealed = all.of(&journal_id).any(|a| a.seq == b.record_seq + 1);
            if !own || !sealed {
                rep.failure = Some(Failure {
                    class: Class::SegmentMissing,
                    seq: Some(pruned_to),
                    segment: first_path,
                    offset: 0,
                    message: format!(
                        "the journal starts after seq {pruned_to}, but the anchors file has {} for the PRUNE record at seq {}",
                        if own { "no anchored checkpoint" } else { "no PRUNE line" },
                        b.record_seq
                    ),
                });
                return rep;
            }
            let kept_after = body.segments[b.at].segment_no;
            let mut next: u64 = 0; // the first segment not covered yet
            for p in all.prunes_of(&journal_id) {
                if next > kept_after {
                    break;
                }
                if p.first_segment_no > next {
                    rep.failure = Some(Failure {
                        class: Class::SegmentMissing,
                        seq: Some(p.end_seq),
                        segment: first_path.clone(),
                        offset: 0,
                        message: format!(
                            "segments {next}..{} were deleted without a PRUNE record (the anchored PRUNE lines skip them)",
                            p.first_segment_no - 1
                        ),
                    });
                    return rep;
                }
                next = next.max(p.end_segment_no.saturating_add(1));
            }
            if next <= kept_after {
                rep.failure = Some(Failure {
                    class: Class::SegmentMissing,
                    seq: Some(pruned_to),
                    segment: first_path,
                    offset: 0,
                    message: format!(
                        "segments {next}..{kept_after} were deleted, but no anchored PRUNE line covers them"
                    ),
                });
                return rep;
            }
        }
        let kept_from = rep.pruned_to.map_or(0, |p| p + 1);
        for a in all.of(&journal_id) {
            if a.seq < kept_from {
                // In the part PRUNE deleted (accounted for above).
                continue;
            }
            rep.anchors_checked += 1;
            if a.seq > last_seq {
                rep.failure = Some(Failure {
                    class: Class::TailTruncated,
                    seq: Some(a.seq),
                    segment: last_path,
                    offset: self.prev_end.as_ref().map_or(0, |p| p.1),
                    message: format!(
                        "anchored seq {} is past the journal's end (seq {last_seq})",
                        a.seq
                    ),
                });
                return rep;
            }
            if self.w.checkpoints.get(&a.seq) != Some(&(a.chain, a.epoch, a.seal)) {
                rep.failure = Some(Failure {
                    class: Class::Modified,
                    seq: Some(a.seq),
                    segment: last_path,
                    offset: 0,
                    message: format!(
                        "the journal's checkpoint at seq {} does not match its anchor (chain, epoch or seal)",
                        a.seq
                    ),
                });
                return rep;
            }
            rep.last_anchored = Some(rep.last_anchored.map_or(a.seq, |l: u64| l.max(a.seq)));
        }
        match rep.last_anchored {
            None => {
                rep.tail_uncovered.get_or_insert_with(|| {
                    "the anchors file has no anchor for this journal".into()
                });
            }
            Some(l) if l < last_seq => {
                rep.tail_uncovered.get_or_insert_with(|| {
                    format!("records after seq {l} (to {last_seq}) are not anchored")
                });
            }
            Some(_) => {}
        }
        rep
    }
}

/// Seal and epoch state along the walk.
struct Walk {
    /// (epoch, key) last derived.
    key_state: Option<(u64, Hash)>,
    k0: Option<Hash>,
    last_epoch: Option<u64>,
    /// The first checkpoint may have any epoch (a start inside a prune's
    /// range, whose epoch there is not recorded).
    epoch_free: bool,
    /// Chain hash, epoch and seal of each checkpoint, by seq, for the
    /// anchors.
    checkpoints: HashMap<u64, (Hash, u64, Hash)>,
}

impl Walk {
    fn key_for(&mut self, epoch: u64) -> Option<Hash> {
        let k0 = self.k0?;
        let (mut e, mut k) = match self.key_state {
            Some((e, k)) if e <= epoch => (e, k),
            _ => (epoch, key_at(&k0, epoch)),
        };
        while e < epoch {
            k = ratchet(&k);
            e += 1;
        }
        self.key_state = Some((e, k));
        Some(k)
    }

    fn checkpoint(
        &mut self,
        r: &Record<'_>,
        journal_id: &[u8; 16],
        prev: &Hash,
    ) -> Result<(), (Class, String)> {
        let Some(cp) = CheckpointBody::decode(r.body) else {
            return Err((Class::Modified, "checkpoint body is malformed".into()));
        };
        if self.last_epoch.is_none() && cp.epoch != 0 && !std::mem::take(&mut self.epoch_free) {
            // A journal's epochs start at 0: a journal sealed from a later
            // epoch on was sealed with a key taken from the host.
            return Err((
                Class::EpochGap,
                format!(
                    "the journal's first checkpoint has epoch {}, not 0",
                    cp.epoch
                ),
            ));
        }
        if let Some(last) = self.last_epoch {
            if cp.epoch > last.saturating_add(1) {
                return Err((
                    Class::EpochGap,
                    format!(
                        "epoch {} follows epoch {last}: checkpoints are missing",
                        cp.epoch
                    ),
                ));
            }
            if cp.epoch <= last {
                return Err((
                    Class::WrongEpoch,
                    format!("epoch {} does not advance from {last}", cp.epoch),
                ));
            }
        }
        if cp.epoch >= r.seq {
            // One epoch per checkpoint, and every checkpoint is a record:
            // more is crafted (and deriving its key would take for ever).
            return Err((
                Class::EpochGap,
                format!(
                    "epoch {} is more than the journal has records before it",
                    cp.epoch
                ),
            ));
        }
        self.last_epoch = Some(cp.epoch);
        if cp.covered_seq.checked_add(1) != Some(r.seq) || &cp.covered_chain != prev {
            return Err((
                Class::Modified,
                "checkpoint does not cover the record before it".into(),
            ));
        }
        if self.k0.is_none() {
            return Ok(());
        }
        if r.flags & flags::SEALED == 0 {
            return Err((Class::BadSeal, "checkpoint is not sealed".into()));
        }
        let input = SealInput {
            journal_id,
            seq: r.seq,
            time_ns: r.time_ns,
            epoch: cp.epoch,
            covered_seq: cp.covered_seq,
            covered_chain: &cp.covered_chain,
        };
        let key = self.key_for(cp.epoch).expect("k0 is set");
        if seal(&key, &input) == cp.seal {
            return Ok(());
        }
        let mut k = key;
        for later in 1..=EPOCH_LOOKAHEAD {
            k = ratchet(&k);
            if seal(&k, &input) == cp.seal {
                return Err((
                    Class::WrongEpoch,
                    format!(
                        "sealed with the key of epoch {}, not {}",
                        cp.epoch + later,
                        cp.epoch
                    ),
                ));
            }
        }
        Err((
            Class::BadSeal,
            format!("seal does not match epoch {}'s key", cp.epoch),
        ))
    }
}
