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

/// Walks a journal; the result says what holds. `Err` only for I/O and
/// usage problems (exit 3).
pub fn verify(
    journal: &Path,
    anchors: Option<&Path>,
    key: Option<&Hash>,
) -> Result<Report, VerifyError> {
    let io = |source| VerifyError::Io {
        path: journal.to_owned(),
        source,
    };
    let segments = list_entries(journal).map_err(io)?;
    let anchors = match anchors {
        Some(p) => Some((
            p,
            Anchors::read(p).map_err(|source| VerifyError::Io {
                path: p.to_owned(),
                source,
            })?,
        )),
        None => None,
    };
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
    if segments.is_empty() {
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
    let mut w = Walk {
        key_state: None,
        k0: key.copied(),
        last_epoch: None,
        checkpoints: HashMap::new(),
    };
    let mut head: Hash = [0; 32];
    let mut expected_seq = 0u64;
    let mut prev_no = 0u64;
    let mut prev_end: Option<(PathBuf, u64, bool)> = None;
    let mut last_checkpoint_at: Option<(PathBuf, u64)> = None;
    let mut journal_id = [0u8; 16];
    let mut prev_ended_run = false;
    // The highest anchored seq of this journal (with `--anchors`).
    let mut anchored_to: Option<u64> = None;
    let n_segments = segments.len();
    for (k, seg) in segments.iter().enumerate() {
        let path = seg.path.clone();
        if !seg.regular {
            rep.failure = Some(Failure {
                class: Class::Modified,
                seq: Some(seg.name_seq),
                segment: path,
                offset: 0,
                message: "not a regular file (a link, FIFO or device named like a segment)".into(),
            });
            return Ok(rep);
        }
        // Only the newest segment may be cut by a live writer (after a
        // failed write): it is read; the closed ones are mapped.
        let mapped = if k + 1 == n_segments {
            Mapped::open(&path)
        } else {
            Mapped::map_populated(&path)
        }
        .map_err(|source| VerifyError::Io {
            path: path.clone(),
            source,
        })?;
        let bytes = mapped.bytes();
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
                if k + 1 == n_segments
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
                break;
            }
            Err(m) => {
                rep.failure = Some(fail(
                    Class::Modified,
                    None,
                    0,
                    format!("segment header: {m}"),
                ));
                return Ok(rep);
            }
        };
        if seg.name_seq != header.first_seq {
            rep.failure = Some(fail(
                Class::Reordered,
                Some(header.first_seq),
                0,
                format!(
                    "file name says first seq {}, header says {}",
                    seg.name_seq, header.first_seq
                ),
            ));
            return Ok(rep);
        }
        if k == 0 {
            journal_id = header.journal_id;
            rep.journal_id = Some(journal_id);
            if header.segment_no != 0 {
                rep.failure = Some(fail(
                    Class::SegmentMissing,
                    Some(header.first_seq),
                    0,
                    format!(
                        "journal starts at segment {}; earlier segments are missing",
                        header.segment_no
                    ),
                ));
                return Ok(rep);
            }
            if header.prev_chain != genesis(&journal_id) {
                rep.failure = Some(fail(
                    Class::Modified,
                    Some(header.first_seq),
                    0,
                    "first segment does not start from the journal's genesis hash".into(),
                ));
                return Ok(rep);
            }
            head = header.prev_chain;
            expected_seq = header.first_seq;
            rep.first_seq = Some(header.first_seq);
        } else {
            if header.journal_id != journal_id {
                rep.failure = Some(fail(
                    Class::Inserted,
                    Some(header.first_seq),
                    0,
                    "segment belongs to another journal".into(),
                ));
                return Ok(rep);
            }
            if header.segment_no > prev_no.saturating_add(1) {
                rep.failure = Some(fail(
                    Class::SegmentMissing,
                    Some(expected_seq),
                    0,
                    format!("segment {} follows segment {prev_no}", header.segment_no),
                ));
                return Ok(rep);
            }
            if header.segment_no <= prev_no {
                rep.failure = Some(fail(
                    Class::Reordered,
                    Some(header.first_seq),
                    0,
                    format!("segment {} follows segment {prev_no}", header.segment_no),
                ));
                return Ok(rep);
            }
            if let Some((p, end, false)) = &prev_end {
                rep.failure = Some(Failure {
                    class: Class::Deleted,
                    seq: Some(expected_seq),
                    segment: p.clone(),
                    offset: *end,
                    message:
                        "segment was cut short: it has no SEGMENT_END (nor a final checkpoint)"
                            .into(),
                });
                return Ok(rep);
            }
            if header.first_seq != expected_seq {
                let class = if header.first_seq > expected_seq {
                    Class::Deleted
                } else {
                    Class::Inserted
                };
                rep.failure = Some(fail(
                    class,
                    Some(header.first_seq),
                    0,
                    format!(
                        "segment starts at seq {}, expected {expected_seq}",
                        header.first_seq
                    ),
                ));
                return Ok(rep);
            }
            if header.prev_chain != head {
                rep.failure = Some(fail(
                    Class::Modified,
                    Some(header.first_seq),
                    0,
                    "segment header does not link to the previous segment's last chain hash".into(),
                ));
                return Ok(rep);
            }
        }
        prev_no = header.segment_no;
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
        let starts_run = k == 0 || prev_ended_run;
        if k == 0 {
            // Only under the anchors of this very journal (another
            // journal's file is JOURNAL_REPLACED, reported at the end).
            anchored_to = anchors
                .as_ref()
                .filter(|(_, a)| a.bound() == Some(journal_id))
                .map(|(_, a)| a.of(&journal_id).map(|x| x.seq).max().unwrap_or(0));
        }
        let mut run_checkpoint: Option<u64> = None;
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
                        Some(t) if t.is_checkpoint() => {
                            if let Err((class, msg)) = w.checkpoint(r, &journal_id, &head) {
                                return Some(fail(class, Some(r.seq), at, msg));
                            }
                            rep.checkpoints += 1;
                            last_checkpoint_at = Some((path.clone(), (at + r.raw.len()) as u64));
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
        if let Some(f) = failed {
            rep.failure = Some(f);
            return Ok(rep);
        }
        let end = recs.last().map_or(HEADER_LEN, |(at, r)| at + r.raw.len());
        if let Some((at, e)) = parse_error {
            let is_last = k + 1 == n_segments;
            let after_checkpoint = last_checkpoint_at
                .as_ref()
                .is_none_or(|(p, off)| *p != path || *off <= at as u64);
            let incomplete = matches!(e, ParseError::Incomplete { .. });
            // The rule recovery cuts by: a torn tail is verified as not
            // anchored; anything else there is damage.
            let torn = is_last
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
                    return Ok(rep);
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
                    return Ok(rep);
                }
                ParseError::Malformed(m) => {
                    rep.failure = Some(fail(
                        Class::Modified,
                        Some(expected_seq),
                        at,
                        format!("unreadable record: {m}"),
                    ));
                    return Ok(rep);
                }
            }
        }
        prev_end = Some((path.clone(), end as u64, ended));
        prev_ended_run = recs.last().is_some_and(|(_, r)| super::format::ends_run(r));
    }
    // Anchors: the file is bound to one journal, and the journal must
    // reach every anchored seq with the same hash.
    match anchors {
        Some((_, all)) => {
            let last_seq = rep.last_seq.unwrap_or(0);
            let last_path = segments.last().map(|s| s.path.clone()).unwrap_or_default();
            if let Some(bound) = all.bound().filter(|b| *b != journal_id) {
                rep.failure = Some(Failure {
                    class: Class::JournalReplaced,
                    seq: rep.first_seq,
                    segment: segments[0].path.clone(),
                    offset: 0,
                    message: format!(
                        "the anchors file belongs to journal {}; this journal is {} (wiped, re-created or swapped)",
                        hex(&bound),
                        hex(&journal_id)
                    ),
                });
                return Ok(rep);
            }
            for a in all.of(&journal_id) {
                rep.anchors_checked += 1;
                if a.seq > last_seq {
                    rep.failure = Some(Failure {
                        class: Class::TailTruncated,
                        seq: Some(a.seq),
                        segment: last_path,
                        offset: prev_end.as_ref().map_or(0, |p| p.1),
                        message: format!(
                            "anchored seq {} is past the journal's end (seq {last_seq})",
                            a.seq
                        ),
                    });
                    return Ok(rep);
                }
                if w.checkpoints.get(&a.seq) != Some(&(a.chain, a.epoch, a.seal)) {
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
                    return Ok(rep);
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
        }
        None => {
            rep.tail_uncovered
                .get_or_insert_with(|| "no --anchors given: a cut tail cannot be ruled out".into());
        }
    }
    Ok(rep)
}

/// Seal and epoch state along the walk.
struct Walk {
    /// (epoch, key) last derived.
    key_state: Option<(u64, Hash)>,
    k0: Option<Hash>,
    last_epoch: Option<u64>,
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
        if self.last_epoch.is_none() && cp.epoch != 0 {
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
