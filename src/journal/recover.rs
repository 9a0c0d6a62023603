//! Start-up recovery as a pure plan: from the bytes of the newest segment
//! and the anchors file, decide what to do with that segment and where the
//! journal goes on. No I/O here; the writer applies the plan
//! ([`super::writer`]). Unit-tested with a cut at every offset and every
//! kind of damage.
//!
//! The rules (DESIGN.md, "recovery"):
//! - A torn write is a prefix of a record after the last checkpoint: an
//!   incomplete record at the end, or a zero-filled tail. It is cut and a
//!   RECOVERY record says what was dropped.
//! - A complete, well-formed record that does not chain, damage with a
//!   checkpoint behind it, or any byte after the segment's end record
//!   (SEGMENT_END, or the FINAL checkpoint of a clean stop) is tampering:
//!   never repaired. The segment is left as evidence, the alarm is raised,
//!   and the journal goes on in a new segment past every seq seen.
//! - A segment with no record (a crash while creating it) is removed.
//! - The anchors file binds the journal: another journal id, an anchored
//!   seq past the journal's end, or an anchored chain hash the journal does
//!   not have, is tampering. An empty directory under a non-empty anchors
//!   file goes on from the anchored head, so the loss stays evident.

use super::anchors::Anchors;
use super::format::{
    chain_step, ends_segment, hex, parse_record, record_digest, tag, CheckpointBody, Hash, Header,
    ParseError, RecordType, HEADER_LEN, MAGIC, RECORD_OVERHEAD, VERSION,
};
use super::reader::Records;

/// Tampering found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// A `verify` class name (MODIFIED, INSERTED, JOURNAL_REPLACED, ...).
    pub class: &'static str,
    pub message: String,
}

/// What to do with the newest segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// No segment, or it ends with its end record: nothing.
    Nothing,
    /// Intact and open (a crash): append SEGMENT_END.
    Close,
    /// A torn write at `at`: cut there, append a RECOVERY record saying
    /// what was dropped, then SEGMENT_END.
    CutTorn { at: usize, reason: String },
    /// No record in it (a crash while creating it): remove the file (a
    /// RECOVERY record in the next segment says so) and plan again for the
    /// segment before it.
    RemoveHalfCreated { reason: String },
    /// Damaged: left as it is, as evidence.
    LeaveDamaged,
}

/// Where the journal goes on: the next segment's header and first seq,
/// before the records `action` appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// `None`: a new journal (a fresh random id, from genesis).
    pub journal_id: Option<[u8; 16]>,
    pub segment_no: u64,
    pub prev_chain: Option<Hash>,
    pub next_seq: u64,
    /// Epoch of the newest checkpoint seen (segment or anchors).
    pub last_epoch: Option<u64>,
}

/// The outcome of planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    pub resume: Resume,
    pub alarms: Vec<Alarm>,
}

/// Plans recovery for the newest segment (`None`: the directory has none),
/// named for seq `name_seq`, under `anchors` (when configured).
pub fn plan(last: Option<(u64, &[u8])>, anchors: Option<&Anchors>) -> Plan {
    let head = anchors.and_then(Anchors::head);
    let Some((name_seq, bytes)) = last else {
        return match head {
            None => Plan {
                action: Action::Nothing,
                resume: Resume {
                    journal_id: None,
                    segment_no: 0,
                    prev_chain: None,
                    next_seq: 1,
                    last_epoch: None,
                },
                alarms: Vec::new(),
            },
            // Wiped: go on from the anchored head, so `verify` sees the
            // journal start past segment 0 (SEGMENT_MISSING), not a new,
            // clean-looking journal.
            Some(h) => Plan {
                action: Action::Nothing,
                resume: Resume {
                    journal_id: Some(h.journal_id),
                    segment_no: 1,
                    prev_chain: Some(h.chain),
                    next_seq: h.seq.saturating_add(1),
                    last_epoch: Some(h.epoch),
                },
                alarms: vec![Alarm {
                    class: "SEGMENT_MISSING",
                    message: format!(
                        "the journal has no segment files, but the anchors file records journal {} up to seq {}",
                        hex(&h.journal_id),
                        h.seq
                    ),
                }],
            },
        };
    };
    let mut alarms = Vec::new();
    let header = match Header::decode(bytes) {
        Ok(h) => h,
        Err(m) => {
            if bytes.len() < HEADER_LEN && is_header_prefix(bytes) {
                return half_created(
                    name_seq,
                    head.filter(|h| h.seq >= name_seq),
                    format!(
                        "segment {} has {} bytes, less than a header (a crash while creating it)",
                        super::format::segment_name(name_seq),
                        bytes.len()
                    ),
                );
            }
            return damaged_header(name_seq, bytes, head, format!("segment header: {m}"));
        }
    };
    if header.first_seq != name_seq {
        return damaged_header(
            name_seq,
            bytes,
            head,
            format!(
                "file name says first seq {name_seq}, header says {}",
                header.first_seq
            ),
        );
    }
    let w = walk(&header, bytes);
    let mut resume = Resume {
        journal_id: Some(header.journal_id),
        segment_no: header.segment_no.saturating_add(1),
        prev_chain: Some(w.head),
        next_seq: w.next_seq,
        last_epoch: w.last_epoch,
    };
    let action = match &w.damage {
        None if w.ended => Action::Nothing,
        None if w.records == 0 => Action::RemoveHalfCreated {
            reason: format!(
                "segment {} has a header and no record (a crash while creating it)",
                super::format::segment_name(name_seq)
            ),
        },
        None => Action::Close,
        Some(d) => {
            let torn = !w.ended && d.torn;
            match (torn, w.records) {
                (true, 0) => Action::RemoveHalfCreated {
                    reason: format!(
                        "segment {} holds only a torn first record: {}",
                        super::format::segment_name(name_seq),
                        d.what
                    ),
                },
                (true, _)
                    if head.is_some_and(|h| {
                        h.journal_id == header.journal_id && h.seq >= w.next_seq
                    }) =>
                {
                    // The anchors say records were in what would be cut.
                    alarms.push(Alarm {
                        class: "TAIL_TRUNCATED",
                        message: format!(
                            "segment {}: {}, and the anchors file records seq {} past it",
                            super::format::segment_name(name_seq),
                            d.what,
                            head.map_or(0, |h| h.seq)
                        ),
                    });
                    resume.next_seq = resume
                        .next_seq
                        .max(w.max_seq_seen.saturating_add(1))
                        .max(name_seq.saturating_add(1));
                    Action::LeaveDamaged
                }
                (true, _) => Action::CutTorn {
                    at: d.at,
                    reason: d.what.clone(),
                },
                (false, _) => {
                    alarms.push(Alarm {
                        class: d.class,
                        message: format!(
                            "segment {}: {}",
                            super::format::segment_name(name_seq),
                            d.what
                        ),
                    });
                    // Past every seq in the damaged file, so no two
                    // segments claim one seq and no name is reused.
                    resume.next_seq = resume
                        .next_seq
                        .max(w.max_seq_seen.saturating_add(1))
                        .max(name_seq.saturating_add(1));
                    Action::LeaveDamaged
                }
            }
        }
    };
    if let Action::RemoveHalfCreated { reason } = &action {
        if head.is_some_and(|h| h.journal_id == header.journal_id && h.seq >= name_seq) {
            // The anchors say records were there: not a fresh file.
            alarms.push(Alarm {
                class: "TAIL_TRUNCATED",
                message: format!(
                    "{reason}, but the anchors file records seq {} in it",
                    head.map_or(0, |h| h.seq)
                ),
            });
            resume.next_seq = resume.next_seq.max(name_seq.saturating_add(1));
            return Plan {
                action: Action::LeaveDamaged,
                resume,
                alarms,
            };
        }
    }
    if let Some(h) = head {
        if h.journal_id != header.journal_id {
            alarms.push(Alarm {
                class: "JOURNAL_REPLACED",
                message: format!(
                    "the anchors file belongs to journal {}; this journal is {}",
                    hex(&h.journal_id),
                    hex(&header.journal_id)
                ),
            });
        } else {
            let kept_to = w.next_seq.saturating_sub(1);
            if h.seq > kept_to {
                if action != Action::LeaveDamaged {
                    alarms.push(Alarm {
                        class: "TAIL_TRUNCATED",
                        message: format!(
                            "anchored seq {} is past the journal's end (seq {kept_to})",
                            h.seq
                        ),
                    });
                }
            } else if h.seq >= header.first_seq {
                if let Some((_, chain, epoch)) = w.checkpoints.iter().find(|(s, _, _)| *s == h.seq)
                {
                    if *chain != h.chain || *epoch != Some(h.epoch) {
                        alarms.push(Alarm {
                            class: "MODIFIED",
                            message: format!(
                                "the checkpoint at seq {} does not match its anchor",
                                h.seq
                            ),
                        });
                    }
                } else {
                    alarms.push(Alarm {
                        class: "MODIFIED",
                        message: format!(
                            "anchored seq {} is not a checkpoint of the journal",
                            h.seq
                        ),
                    });
                }
            }
        }
    }
    Plan {
        action,
        resume,
        alarms,
    }
}

fn half_created(
    name_seq: u64,
    anchored_into: Option<&super::anchors::Anchor>,
    reason: String,
) -> Plan {
    if let Some(h) = anchored_into {
        return Plan {
            action: Action::LeaveDamaged,
            resume: Resume {
                journal_id: Some(h.journal_id),
                segment_no: 1,
                prev_chain: Some(h.chain),
                next_seq: name_seq.saturating_add(1).max(h.seq.saturating_add(1)),
                last_epoch: Some(h.epoch),
            },
            alarms: vec![Alarm {
                class: "TAIL_TRUNCATED",
                message: format!("{reason}, but the anchors file records seqs in it"),
            }],
        };
    }
    Plan {
        action: Action::RemoveHalfCreated { reason },
        // Replaced by the plan for the segment before it.
        resume: Resume {
            journal_id: None,
            segment_no: 0,
            prev_chain: None,
            next_seq: name_seq,
            last_epoch: None,
        },
        alarms: Vec::new(),
    }
}

/// A segment whose header cannot be trusted: left as evidence; the journal
/// goes on past every seq its records claim, from the anchors' journal.
fn damaged_header(
    name_seq: u64,
    bytes: &[u8],
    head: Option<&super::anchors::Anchor>,
    what: String,
) -> Plan {
    let mut max_seq = name_seq;
    let mut last_chain = None;
    for (_, r) in Records::new(bytes).map_while(Result::ok) {
        if r.seq >= max_seq {
            max_seq = r.seq;
            last_chain = Some(r.chain);
        }
    }
    let mut next_seq = max_seq.saturating_add(1);
    if let Some(h) = head {
        next_seq = next_seq.max(h.seq.saturating_add(1));
    }
    let id: Option<[u8; 16]> = head
        .map(|h| h.journal_id)
        .or_else(|| bytes.get(16..32).and_then(|b| b.try_into().ok()));
    let segment_no = bytes
        .get(32..40)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
        .saturating_add(1);
    Plan {
        action: Action::LeaveDamaged,
        resume: Resume {
            journal_id: id,
            segment_no,
            prev_chain: last_chain.or(head.map(|h| h.chain)),
            next_seq,
            last_epoch: head.map(|h| h.epoch),
        },
        alarms: vec![Alarm {
            class: "MODIFIED",
            message: format!("segment {}: {what}", super::format::segment_name(name_seq)),
        }],
    }
}

/// Whether `b` (shorter than a header) is how a header being written
/// could look: a prefix of the magic and version, or zeros.
pub fn is_header_prefix(b: &[u8]) -> bool {
    if b.iter().all(|&x| x == 0) {
        return true;
    }
    let mut start = [0u8; 16];
    start[..8].copy_from_slice(MAGIC);
    start[8..10].copy_from_slice(&VERSION.to_be_bytes());
    b.iter().zip(start.iter()).all(|(a, s)| a == s)
}

/// Where the valid records of a segment stop, and why.
struct Damage {
    at: usize,
    what: String,
    class: &'static str,
    /// Looks like a write cut short by a crash (if nothing ends the segment).
    torn: bool,
}

struct Walked {
    head: Hash,
    next_seq: u64,
    records: u64,
    last_epoch: Option<u64>,
    /// (seq, chain, epoch) of each checkpoint, for the anchors.
    checkpoints: Vec<(u64, Hash, Option<u64>)>,
    /// The segment's end record was seen.
    ended: bool,
    damage: Option<Damage>,
    /// Highest seq of any record that parses, damaged or not.
    max_seq_seen: u64,
}

fn walk(header: &Header, bytes: &[u8]) -> Walked {
    let mut w = Walked {
        head: header.prev_chain,
        next_seq: header.first_seq,
        records: 0,
        last_epoch: None,
        checkpoints: Vec::new(),
        ended: false,
        damage: None,
        max_seq_seen: header.first_seq,
    };
    let mut last_checkpoint_end = HEADER_LEN;
    for step in Records::new(bytes) {
        match step {
            Ok((at, r)) => {
                if w.ended {
                    w.damage = Some(Damage {
                        at,
                        what: format!(
                            "a record (seq {}) at offset {at}, after the segment's end record",
                            r.seq
                        ),
                        class: "INSERTED",
                        torn: false,
                    });
                    break;
                }
                let chain = chain_step(&w.head, r.seq, &record_digest(r.raw));
                if r.seq != w.next_seq || chain != r.chain || r.seq == u64::MAX {
                    w.damage = Some(Damage {
                        at,
                        what: format!(
                            "the record at offset {at} (seq {}) does not chain (expected seq {})",
                            r.seq, w.next_seq
                        ),
                        class: if r.seq < w.next_seq {
                            "INSERTED"
                        } else {
                            "MODIFIED"
                        },
                        torn: false,
                    });
                    break;
                }
                if let Some(why) = super::format::segment_start_mismatch(header, w.records, &r) {
                    w.damage = Some(Damage {
                        at,
                        what: format!("the record at offset {at} (seq {}): {why}", r.seq),
                        class: "MODIFIED",
                        torn: false,
                    });
                    break;
                }
                w.head = chain;
                w.next_seq = r.seq.saturating_add(1);
                w.records += 1;
                if let Some(k) = r.kind() {
                    if k.is_checkpoint() {
                        last_checkpoint_end = at + r.raw.len();
                        let epoch = CheckpointBody::decode(r.body).map(|cp| cp.epoch);
                        w.checkpoints.push((r.seq, chain, epoch));
                        if epoch.is_some() {
                            w.last_epoch = epoch;
                        }
                    }
                }
                w.ended = ends_segment(&r);
            }
            Err((at, e)) => {
                let (what, incomplete) = match e {
                    ParseError::Incomplete { have, need } => (
                        format!("incomplete record at offset {at} ({have} of {need} bytes)"),
                        true,
                    ),
                    ParseError::Malformed(m) => {
                        (format!("unreadable record at offset {at}: {m}"), false)
                    }
                };
                let torn =
                    !w.ended && at >= last_checkpoint_end && is_torn_tail(bytes, at, incomplete);
                w.damage = Some(Damage {
                    at,
                    what: if w.ended {
                        format!("bytes at offset {at}, after the segment's end record")
                    } else {
                        what
                    },
                    class: if w.ended { "INSERTED" } else { "MODIFIED" },
                    torn,
                });
                break;
            }
        }
    }
    w.max_seq_seen = w.next_seq.saturating_sub(1).max(header.first_seq);
    if let Some(d) = &w.damage {
        // Past the damage, as far as records still parse.
        let rest = Records::new(bytes).skip_while(|s| matches!(s, Ok((at, _)) if *at < d.at));
        for (_, r) in rest.map_while(Result::ok) {
            w.max_seq_seen = w.max_seq_seen.max(r.seq);
        }
    }
    w
}

/// Whether the bytes of a segment from offset `at` (where a record does
/// not parse: `incomplete`, or malformed) to its end are a write cut short
/// by a crash, as recovery and `verify` both judge it.
pub fn is_torn_tail(bytes: &[u8], at: usize, incomplete: bool) -> bool {
    looks_torn(&bytes[at..], incomplete) && !whole_record_at_end(bytes, at)
}

/// Whether the bytes from a bad record to the end look like a write cut
/// short: an incomplete record, or a zero-filled tail (the size grew but
/// the data never reached the disk).
fn looks_torn(tail: &[u8], incomplete: bool) -> bool {
    // The bytes that reached the disk, before a zero-filled end.
    let written = tail.len() - tail.iter().rev().take_while(|&&b| b == 0).count();
    if written == 0 {
        return true;
    }
    if incomplete {
        return true;
    }
    // A record whose end was zero-filled: what was written must itself be
    // the start of one record (an edited length field followed by zeros
    // is not).
    written < tail.len()
        && matches!(
            parse_record(&tail[..written]),
            Err(ParseError::Incomplete { .. })
        )
}

/// Whether a whole record ends at the end of `bytes`, starting after
/// `from`: then the bytes at `from` are not the prefix of the last record
/// written (a length field was edited, records follow the damage).
fn whole_record_at_end(bytes: &[u8], from: usize) -> bool {
    let end = bytes.len();
    if end < from + RECORD_OVERHEAD + 1 {
        return false;
    }
    let len = u32::from_be_bytes(bytes[end - 4..end].try_into().expect("4 bytes")) as usize;
    if len < RECORD_OVERHEAD || len > end - from - 1 {
        return false;
    }
    matches!(parse_record(&bytes[end - len..]), Ok(r) if r.raw.len() == len && r.kind().is_some())
}

/// The RECOVERY record body: old length, new length, SHA-256 of the dropped
/// bytes.
pub fn recovery_body(old_len: u64, new_len: u64, dropped: &Hash) -> Vec<u8> {
    let mut body = Vec::with_capacity(48);
    body.extend_from_slice(&old_len.to_be_bytes());
    body.extend_from_slice(&new_len.to_be_bytes());
    body.extend_from_slice(dropped);
    body
}

// ---- Applying the plan (I/O) ----

/// What start-up recovery leaves for the writer.
#[derive(Debug)]
pub struct Recovered {
    pub journal_id: [u8; 16],
    /// Number of the segment to create.
    pub segment_no: u64,
    pub prev_chain: Hash,
    pub next_seq: u64,
    /// Epoch of the newest checkpoint (in the journal or the anchors).
    pub last_epoch: Option<u64>,
    /// Tampering found now.
    pub alarms: Vec<Alarm>,
    /// RECOVERY records for the new segment: (reason, body) of each
    /// half-created segment removed.
    pub notes: Vec<(String, Vec<u8>)>,
    /// No journal and nothing anchored: a journal starts here.
    pub new_journal: bool,
}

/// Plans recovery for the journal in `dir` and carries the plan out: cuts
/// a torn tail (recording it), closes the last segment, removes a
/// half-created one, leaves a damaged one as it is. `anchors` is the
/// anchors file, when configured.
pub fn recover_dir(
    dir: &std::path::Path,
    anchors: Option<&std::path::Path>,
    metrics: &super::JournalMetrics,
) -> Result<Recovered, super::writer::JournalError> {
    use super::writer::{io_at, seal_file};
    use crate::time::now_ns;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    let anchors = match anchors {
        Some(p) => Some((p, Anchors::read_recent(p).map_err(io_at(p))?)),
        None => None,
    };
    let mut alarms = Vec::new();
    if let Some((p, a)) = &anchors {
        if !a.bad_lines.is_empty() {
            alarms.push(Alarm {
                class: "MODIFIED",
                message: format!(
                    "anchors file {}: line(s) {:?} are not anchor lines",
                    p.display(),
                    a.bad_lines
                ),
            });
        }
    }
    let mut notes = Vec::new();
    loop {
        let segments = super::reader::list_segments(dir).map_err(io_at(dir))?;
        let last = segments.last();
        let mapped = match last {
            Some(s) => Some(super::reader::Mapped::open(&s.path).map_err(io_at(&s.path))?),
            None => None,
        };
        let bytes = mapped.as_ref().map(|m| m.bytes());
        let p = plan(
            last.zip(bytes).map(|(s, b)| (s.name_seq, b)),
            anchors.as_ref().map(|a| &a.1),
        );
        alarms.extend(p.alarms.iter().cloned());
        let mut r = p.resume.clone();
        let (Some(seg), Some(bytes)) = (last, bytes) else {
            let new_journal = r.journal_id.is_none();
            return recovered(r, alarms, notes, new_journal);
        };
        let path = &seg.path;
        // Records to append: (type, reason, body).
        let mut append: Vec<(RecordType, Option<String>, Vec<u8>)> = Vec::new();
        match p.action {
            Action::RemoveHalfCreated { reason } => {
                let digest: Hash = Sha256::digest(bytes).into();
                notes.push((
                    reason.clone(),
                    recovery_body(bytes.len() as u64, 0, &digest),
                ));
                drop(mapped);
                std::fs::remove_file(path).map_err(io_at(path))?;
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                metrics.recoveries.inc();
                tracing::warn!(segment = %path.display(), reason = %reason, "journal: half-created segment removed");
                continue;
            }
            Action::Nothing | Action::LeaveDamaged => {}
            Action::Close => append.push((RecordType::SegmentEnd, None, Vec::new())),
            Action::CutTorn { at, reason } => {
                let digest: Hash = Sha256::digest(&bytes[at..]).into();
                let old_len = bytes.len() as u64;
                drop(mapped);
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io_at(path))?;
                f.set_len(at as u64).map_err(io_at(path))?;
                metrics.recoveries.inc();
                tracing::warn!(segment = %path.display(), cut_bytes = old_len - at as u64, at, reason = %reason, "journal torn tail cut and recorded");
                append.push((
                    RecordType::Recovery,
                    Some(reason),
                    recovery_body(old_len, at as u64, &digest),
                ));
                append.push((RecordType::SegmentEnd, None, Vec::new()));
            }
        }
        if !append.is_empty() {
            let mut head = r.prev_chain.expect("a segment's plan has its chain head");
            let mut buf = Vec::new();
            for (t, reason, body) in append {
                let body = if t == RecordType::SegmentEnd {
                    (r.segment_no - 1).to_be_bytes().to_vec()
                } else {
                    body
                };
                let meta: Vec<(u8, &[u8])> =
                    reason.iter().map(|r| (tag::REASON, r.as_bytes())).collect();
                head = super::format::encode_record(
                    &mut buf,
                    t,
                    0,
                    r.next_seq,
                    now_ns(),
                    &meta,
                    &body,
                    &head,
                );
                r.next_seq += 1;
            }
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(io_at(path))?;
            f.write_all(&buf).map_err(io_at(path))?;
            f.sync_data().map_err(io_at(path))?;
            r.prev_chain = Some(head);
        }
        seal_file(path).map_err(io_at(path))?;
        if r.last_epoch.is_none() {
            // The newest segment has no checkpoint (a run that died before
            // its first): epochs go on from an earlier segment.
            r.last_epoch = segments[..segments.len() - 1].iter().rev().find_map(|s| {
                let m = super::reader::Mapped::open(&s.path).ok()?;
                Records::new(m.bytes())
                    .map_while(Result::ok)
                    .filter(|(_, r)| r.kind().is_some_and(RecordType::is_checkpoint))
                    .filter_map(|(_, r)| CheckpointBody::decode(r.body).map(|c| c.epoch))
                    .last()
            });
        }
        return recovered(r, alarms, notes, false);
    }
}

/// What recovery hands the writer: a journal id (fresh when the plan names
/// none) and its genesis as the chain head when the plan has none.
fn recovered(
    r: Resume,
    alarms: Vec<Alarm>,
    notes: Vec<(String, Vec<u8>)>,
    new_journal: bool,
) -> Result<Recovered, super::writer::JournalError> {
    let journal_id = match r.journal_id {
        Some(id) => id,
        None => super::seal::random_bytes()
            .map_err(super::writer::io_at(std::path::Path::new("/dev/urandom")))?,
    };
    Ok(Recovered {
        journal_id,
        segment_no: r.segment_no,
        prev_chain: r
            .prev_chain
            .unwrap_or_else(|| super::format::genesis(&journal_id)),
        next_seq: r.next_seq,
        last_epoch: r.last_epoch,
        alarms,
        notes,
        new_journal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::anchors::Anchor;
    use crate::journal::format::{encode_record, flags, genesis};

    const ID: [u8; 16] = [5; 16];

    /// A segment being built: its bytes, and (seq, chain, end) per record.
    struct Seg {
        bytes: Vec<u8>,
        head: Hash,
        seq: u64,
        ends: Vec<(u64, Hash, usize)>,
    }

    impl Seg {
        fn new(first_seq: u64) -> Seg {
            let head = genesis(&ID);
            let bytes = Header {
                journal_id: ID,
                segment_no: 0,
                first_seq,
                prev_chain: head,
            }
            .encode()
            .to_vec();
            Seg {
                bytes,
                head,
                seq: first_seq,
                ends: Vec::new(),
            }
        }

        fn push(&mut self, t: RecordType, fl: u8, body: &[u8]) -> &mut Self {
            self.head = encode_record(
                &mut self.bytes,
                t,
                fl,
                self.seq,
                7,
                &[(tag::LISTENER, b"in")],
                body,
                &self.head,
            );
            self.ends.push((self.seq, self.head, self.bytes.len()));
            self.seq += 1;
            self
        }

        fn frame(&mut self, body: &str) -> &mut Self {
            self.push(RecordType::Frame, 0, body.as_bytes())
        }

        fn checkpoint(&mut self, epoch: u64, fl: u8) -> &mut Self {
            let body = CheckpointBody {
                epoch,
                covered_seq: self.seq - 1,
                covered_chain: self.head,
                seal: [0; 32],
            }
            .encode();
            self.push(RecordType::Checkpoint, fl, &body)
        }

        /// SEGMENT_START, two frames, a checkpoint (epoch 3), two frames.
        fn typical() -> Seg {
            let mut s = Seg::new(1);
            s.push(RecordType::SegmentStart, 0, &start_body(0))
                .frame("one")
                .frame("two")
                .checkpoint(3, 0)
                .frame("three")
                .frame(&"four".repeat(100));
            s
        }

        fn anchor(&self, i: usize) -> Anchors {
            let (seq, chain, _) = self.ends[i];
            Anchors {
                lines: vec![Anchor {
                    journal_id: ID,
                    seq,
                    chain,
                    epoch: 3,
                    seal: [0; 32],
                }],
                ..Anchors::default()
            }
        }
    }

    fn start_body(no: u64) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[..8].copy_from_slice(&no.to_be_bytes());
        b[8..].copy_from_slice(&ID);
        b
    }

    fn classes(p: &Plan) -> Vec<&'static str> {
        p.alarms.iter().map(|a| a.class).collect()
    }

    #[test]
    fn an_intact_open_segment_is_closed_and_resumes_after_it() {
        let s = Seg::typical();
        let p = plan(Some((1, &s.bytes)), None);
        assert_eq!(p.action, Action::Close);
        assert!(p.alarms.is_empty());
        assert_eq!(p.resume.next_seq, 7);
        assert_eq!(p.resume.prev_chain, Some(s.head));
        assert_eq!(p.resume.journal_id, Some(ID));
        assert_eq!(p.resume.segment_no, 1);
        assert_eq!(p.resume.last_epoch, Some(3));
        // Anchored at its checkpoint: still fine.
        let p = plan(Some((1, &s.bytes)), Some(&s.anchor(3)));
        assert_eq!(p.action, Action::Close);
        assert!(p.alarms.is_empty(), "{:?}", p.alarms);
    }

    #[test]
    fn a_cut_at_every_offset_is_torn_at_the_record_it_falls_in() {
        let s = Seg::typical();
        let starts: Vec<usize> = std::iter::once(HEADER_LEN)
            .chain(s.ends.iter().map(|e| e.2))
            .collect();
        for cut in 0..=s.bytes.len() {
            let p = plan(Some((1, &s.bytes[..cut])), None);
            if cut < starts[1] {
                // No whole record: a segment being created.
                assert!(
                    matches!(p.action, Action::RemoveHalfCreated { .. }),
                    "cut {cut}: {p:?}"
                );
            } else if starts.contains(&cut) {
                assert_eq!(p.action, Action::Close, "cut {cut}");
            } else {
                let at = *starts.iter().rev().find(|&&b| b < cut).unwrap();
                assert!(
                    matches!(&p.action, Action::CutTorn { at: a, .. } if *a == at),
                    "cut {cut}: {p:?}"
                );
            }
            assert!(p.alarms.is_empty(), "cut {cut}: {:?}", p.alarms);
        }
    }

    #[test]
    fn a_zero_filled_tail_is_torn() {
        let mut s = Seg::typical();
        let end = s.bytes.len();
        s.bytes.extend_from_slice(&[0; 300]);
        assert!(
            matches!(plan(Some((1, &s.bytes)), None).action, Action::CutTorn { at, .. } if at == end)
        );
        // A record whose end never reached the disk.
        let mut s = Seg::typical();
        let cut = s.ends[4].2 + 10;
        s.bytes.truncate(cut);
        s.bytes.extend_from_slice(&[0; 500]);
        let p = plan(Some((1, &s.bytes)), None);
        assert!(matches!(p.action, Action::CutTorn { .. }), "{p:?}");
    }

    #[test]
    fn every_bit_flip_up_to_the_last_checkpoint_is_tampering() {
        let s = Seg::typical();
        let cp_end = s.ends[3].2;
        for i in 0..s.bytes.len() {
            for bit in [0, 3, 7] {
                let mut b = s.bytes.clone();
                b[i] ^= 1 << bit;
                let p = plan(Some((1, &b)), None);
                assert!(
                    !matches!(p.action, Action::Close | Action::Nothing),
                    "flip at {i} bit {bit} accepted: {p:?}"
                );
                if i < cp_end {
                    assert_eq!(p.action, Action::LeaveDamaged, "flip at {i} bit {bit}");
                    assert!(!p.alarms.is_empty());
                    // The next segment starts past every seq in this one
                    // and never takes this file's name.
                    assert!(p.resume.next_seq >= 2, "flip at {i}");
                }
            }
        }
    }

    #[test]
    fn a_complete_record_that_does_not_chain_is_tampering() {
        let mut s = Seg::typical();
        let mut forged = Vec::new();
        encode_record(
            &mut forged,
            RecordType::Frame,
            0,
            s.seq,
            7,
            &[],
            b"forged",
            &[1; 32],
        );
        s.bytes.extend_from_slice(&forged);
        let p = plan(Some((1, &s.bytes)), None);
        assert_eq!(p.action, Action::LeaveDamaged);
        assert_eq!(classes(&p), ["MODIFIED"]);
        assert_eq!(p.resume.next_seq, 8);
    }

    #[test]
    fn anything_after_a_final_checkpoint_is_tampering_even_if_it_chains() {
        let mut s = Seg::typical();
        s.checkpoint(4, flags::FINAL);
        let p = plan(Some((1, &s.bytes)), None);
        assert_eq!(p.action, Action::Nothing);
        assert!(p.alarms.is_empty());
        assert_eq!(p.resume.next_seq, 8);
        assert_eq!(p.resume.last_epoch, Some(4));
        let clean = s.bytes.clone();
        // A forged frame chained onto the final checkpoint.
        s.frame("forged");
        let p = plan(Some((1, &s.bytes)), None);
        assert_eq!(p.action, Action::LeaveDamaged);
        assert_eq!(classes(&p), ["INSERTED"]);
        assert_eq!(p.resume.next_seq, 9, "past the forged seq");
        // Even a few stray bytes.
        let mut b = clean.clone();
        b.extend_from_slice(b"\x00\x00\x01");
        let p = plan(Some((1, &b)), None);
        assert_eq!(p.action, Action::LeaveDamaged);
        assert_eq!(classes(&p), ["INSERTED"]);
    }

    #[test]
    fn an_edited_length_before_a_checkpoint_then_zeros_is_not_a_torn_write() {
        // frames, CP1, frames, CP2, frames; the trailing length of a frame
        // between CP1 and CP2 raised, four zero bytes appended.
        let mut s = Seg::typical();
        s.checkpoint(4, 0).frame("after");
        let at = s.ends[4].2 - 4;
        let mut b = s.bytes.clone();
        let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
        b[at..at + 4].copy_from_slice(&(len + 1).to_be_bytes());
        b.extend_from_slice(&[0; 4]);
        let p = plan(Some((1, &b)), None);
        assert_eq!(p.action, Action::LeaveDamaged, "{p:?}");
        // A real torn write after the last checkpoint, anchored past it:
        // the anchors say records were there, so it is not cut either.
        let mut t = Seg::typical();
        let cut = t.ends[5].2 - 7;
        t.bytes.truncate(cut);
        let mut anchors = t.anchor(3);
        anchors.lines[0].seq = 6;
        let p = plan(Some((1, &t.bytes)), Some(&anchors));
        assert_eq!(p.action, Action::LeaveDamaged, "{p:?}");
        assert_eq!(classes(&p), ["TAIL_TRUNCATED"]);
    }

    #[test]
    fn an_edited_length_with_records_after_it_is_not_a_torn_write() {
        let mut s = Seg::typical();
        s.frame("five").frame("six");
        let at = s.ends[4].2;
        let mut b = s.bytes.clone();
        b[at..at + 4].copy_from_slice(&0x0100_0000u32.to_be_bytes());
        let p = plan(Some((1, &b)), None);
        assert_eq!(p.action, Action::LeaveDamaged, "{p:?}");
    }

    #[test]
    fn half_created_segments_are_removed_unless_anchored_into() {
        for b in [&b""[..], &b"AUDI"[..], &[0u8; 40][..], &MAGIC[..]] {
            let p = plan(Some((9, b)), None);
            assert!(
                matches!(p.action, Action::RemoveHalfCreated { .. }),
                "{b:?}"
            );
        }
        let p = plan(Some((9, b"garbage!")), None);
        assert_eq!(p.action, Action::LeaveDamaged);
        assert_eq!(p.resume.next_seq, 10);
        // A header with no record.
        let s = Seg::new(1);
        assert!(matches!(
            plan(Some((1, &s.bytes)), None).action,
            Action::RemoveHalfCreated { .. }
        ));
        // The anchors say records were in it: not a crash.
        let t = Seg::typical();
        let p = plan(Some((1, &s.bytes)), Some(&t.anchor(3)));
        assert_eq!(p.action, Action::LeaveDamaged);
        assert_eq!(classes(&p), ["TAIL_TRUNCATED"]);
        assert!(p.resume.next_seq >= 2);
    }

    #[test]
    fn the_anchors_bind_the_journal() {
        let s = Seg::typical();
        // Another journal's anchors.
        let mut other = s.anchor(3);
        other.lines[0].journal_id = [6; 16];
        let p = plan(Some((1, &s.bytes)), Some(&other));
        assert_eq!(classes(&p), ["JOURNAL_REPLACED"]);
        assert_eq!(p.action, Action::Close);
        // An anchor whose epoch the journal does not have.
        let mut epoch = s.anchor(3);
        epoch.lines[0].epoch = 50_000;
        assert_eq!(
            classes(&plan(Some((1, &s.bytes)), Some(&epoch))),
            ["MODIFIED"]
        );
        assert_eq!(
            plan(Some((1, &s.bytes)), Some(&epoch)).resume.last_epoch,
            Some(3)
        );
        // Anchored past the end: the tail was cut.
        let mut past = s.anchor(3);
        past.lines[0].seq = 50;
        assert_eq!(
            classes(&plan(Some((1, &s.bytes)), Some(&past))),
            ["TAIL_TRUNCATED"]
        );
        // The anchored checkpoint differs.
        let mut differs = s.anchor(3);
        differs.lines[0].chain = [0; 32];
        assert_eq!(
            classes(&plan(Some((1, &s.bytes)), Some(&differs))),
            ["MODIFIED"]
        );
        // An anchored seq that is not a checkpoint.
        assert_eq!(
            classes(&plan(Some((1, &s.bytes)), Some(&s.anchor(2)))),
            ["MODIFIED"]
        );
        // Wiped: the journal goes on from the anchored head.
        let a = s.anchor(3);
        let p = plan(None, Some(&a));
        assert_eq!(classes(&p), ["SEGMENT_MISSING"]);
        assert_eq!(p.resume.journal_id, Some(ID));
        assert_eq!(p.resume.next_seq, 5);
        assert_eq!(p.resume.prev_chain, Some(s.ends[3].1));
        assert_eq!(p.resume.last_epoch, Some(3));
        assert_ne!(p.resume.segment_no, 0);
        // No journal and no anchors: a new journal.
        let p = plan(None, Some(&Anchors::default()));
        assert_eq!(p.resume.journal_id, None);
        assert!(p.alarms.is_empty());
    }
}
