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
    /// Not written by auditlb: moved out of the journal (renamed, kept as
    /// evidence); the journal goes on from the end of the run before it.
    Quarantine,
    /// The same, and the segment before it too (rewritten after its run
    /// stopped): the journal goes on from what the anchors say.
    QuarantineWithBefore,
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

/// How the segment before the newest one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Before {
    /// With the end of a run (FINAL checkpoint, or closed at a start): the
    /// newest segment starts a run.
    pub ends_run: bool,
    /// Its last record's chain hash and seq.
    pub chain: Hash,
    pub seq: u64,
}

/// [`plan`], knowing how the segment before the newest ends: a segment
/// that starts a run must have an anchored checkpoint before anything
/// else (every run anchors one first); one that has not, but holds
/// frames or cursors, was not written by auditlb. It is quarantined (moved
/// out of the journal, kept as evidence), and the journal goes on from the
/// run's end, so nothing in it is routed and `verify` sees the gap.
pub fn plan_after(
    last: Option<(u64, &[u8])>,
    anchors: Option<&Anchors>,
    before: Option<Before>,
) -> Plan {
    let p = plan(last, anchors);
    let (Some((name_seq, bytes)), Some(before), Some(head)) =
        (last, before, anchors.and_then(Anchors::head))
    else {
        return p;
    };
    let Ok(header) = Header::decode(bytes) else {
        return p;
    };
    if !before.ends_run || header.journal_id != head.journal_id {
        return p;
    }
    // The run before ended with its anchored checkpoint, which the file
    // now contradicts: that segment was rewritten after the stop.
    let rewritten = head.seq == before.seq && head.chain != before.chain;
    let w = walk(&header, bytes);
    let first_checkpoint = w.checkpoints.first().map(|c| c.0);
    let anchored = first_checkpoint.is_some_and(|s| head.seq >= s);
    let unvouched = w.routed_before_checkpoint || (!anchored && w.after_first_checkpoint > 0);
    if !unvouched && !rewritten {
        return p;
    }
    let mut alarms = p.alarms;
    if unvouched {
        alarms.push(Alarm {
            class: "INSERTED",
            message: format!(
                "segment {} follows the end of a run but has no anchored checkpoint before what it holds: not written by auditlb",
                super::format::segment_name(name_seq)
            ),
        });
    }
    if rewritten {
        alarms.push(Alarm {
            class: "MODIFIED",
            message: format!(
                "the run that ended at seq {} was rewritten after it stopped (its end does not match its anchor)",
                before.seq
            ),
        });
    }
    Plan {
        action: if rewritten {
            Action::QuarantineWithBefore
        } else {
            Action::Quarantine
        },
        resume: Resume {
            journal_id: Some(header.journal_id),
            segment_no: header.segment_no.saturating_add(1),
            prev_chain: Some(if rewritten { head.chain } else { before.chain }),
            next_seq: w
                .max_seq_seen
                .saturating_add(1)
                .max(name_seq.saturating_add(1)),
            // From the run before (the shell looks it up).
            last_epoch: None,
        },
        alarms,
    }
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
    let mut action = match &w.damage {
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
                let matches = w
                    .checkpoints
                    .iter()
                    .find(|(s, _, _)| *s == h.seq)
                    .map(|(_, chain, epoch)| *chain == h.chain && *epoch == Some(h.epoch));
                if matches != Some(true) {
                    alarms.push(Alarm {
                        class: "MODIFIED",
                        message: match matches {
                            Some(_) => format!(
                                "the checkpoint at seq {} does not match its anchor: segment {} was rewritten",
                                h.seq,
                                super::format::segment_name(name_seq)
                            ),
                            None => format!(
                                "anchored seq {} is not a checkpoint of segment {}",
                                h.seq,
                                super::format::segment_name(name_seq)
                            ),
                        },
                    });
                    // Anchored history that the file contradicts: nothing
                    // of it is routed; the journal goes on past it.
                    action = Action::Quarantine;
                    resume.next_seq = resume
                        .next_seq
                        .max(w.max_seq_seen.saturating_add(1))
                        .max(h.seq.saturating_add(1));
                    resume.prev_chain = Some(header.prev_chain);
                    resume.last_epoch = None;
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
    /// A record other than a run's opening ones (SEGMENT_START, RECOVERY,
    /// ALARM, CONFIG) before the segment's first checkpoint.
    routed_before_checkpoint: bool,
    /// Records after the segment's first checkpoint.
    after_first_checkpoint: u64,
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
        routed_before_checkpoint: false,
        after_first_checkpoint: 0,
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
                if !w.checkpoints.is_empty() {
                    w.after_first_checkpoint += 1;
                } else if !r.kind().is_some_and(RecordType::is_checkpoint)
                    && !super::format::opens_run(r.kind())
                    && r.kind() != Some(RecordType::SegmentEnd)
                {
                    w.routed_before_checkpoint = true;
                }
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

mod apply;
pub use apply::{recover_dir, Recovered};

#[cfg(test)]
mod tests;
