//! Carrying the recovery plan out on the files: cut, close, remove, leave.

use super::*;

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
    metrics: &crate::journal::JournalMetrics,
) -> Result<Recovered, crate::journal::writer::JournalError> {
    use crate::journal::writer::{io_at, seal_file};
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
        let segments = crate::journal::reader::list_segments(dir).map_err(io_at(dir))?;
        let last = segments.last();
        let mapped = match last {
            Some(s) => Some(crate::journal::reader::Mapped::map(&s.path).map_err(io_at(&s.path))?),
            None => None,
        };
        let bytes = mapped.as_ref().map(|m| m.bytes());
        let before = segments
            .len()
            .checked_sub(2)
            .and_then(|i| last_record_end(&segments[i].path));
        let p = plan_after(
            last.zip(bytes).map(|(s, b)| (s.name_seq, b)),
            anchors.as_ref().map(|a| &a.1),
            before,
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
            Action::Quarantine | Action::QuarantineWithBefore => {
                drop(mapped);
                let mut moved = vec![path.clone()];
                if p.action == Action::QuarantineWithBefore {
                    moved.push(segments[segments.len() - 2].path.clone());
                }
                for path in &moved {
                    let aside = path.with_extension(format!("seg.quarantined-{}", now_ns()));
                    std::fs::rename(path, &aside).map_err(io_at(path))?;
                    tracing::error!(segment = %path.display(), moved_to = %aside.display(), "journal: a segment not written by auditlb was moved out of the journal");
                }
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                if r.last_epoch.is_none() {
                    let keep = segments.len() - moved.len();
                    r.last_epoch = newest_epoch(&segments[..keep]);
                }
                return recovered(r, alarms, notes, false);
            }
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
                head = crate::journal::format::encode_record(
                    &mut buf,
                    crate::journal::format::RecordHead {
                        rtype: t,
                        flags: if t == RecordType::SegmentEnd {
                            crate::journal::format::flags::CLOSED_AT_START
                        } else {
                            0
                        },
                        seq: r.next_seq,
                        time_ns: now_ns(),
                    },
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
            r.last_epoch = newest_epoch(&segments[..segments.len() - 1]);
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
) -> Result<Recovered, crate::journal::writer::JournalError> {
    let journal_id = match r.journal_id {
        Some(id) => id,
        None => crate::journal::seal::random_bytes().map_err(crate::journal::writer::io_at(
            std::path::Path::new("/dev/urandom"),
        ))?,
    };
    Ok(Recovered {
        journal_id,
        segment_no: r.segment_no,
        prev_chain: r
            .prev_chain
            .unwrap_or_else(|| crate::journal::format::genesis(&journal_id)),
        next_seq: r.next_seq,
        last_epoch: r.last_epoch,
        alarms,
        notes,
        new_journal,
    })
}

/// The epoch of the newest checkpoint in `segments` (newest first).
fn newest_epoch(segments: &[crate::journal::reader::SegmentFile]) -> Option<u64> {
    segments.iter().rev().find_map(|s| {
        let m = crate::journal::reader::Mapped::map(&s.path).ok()?;
        Records::new(m.bytes())
            .map_while(Result::ok)
            .filter(|(_, r)| r.kind().is_some_and(RecordType::is_checkpoint))
            .filter_map(|(_, r)| CheckpointBody::decode(r.body).map(|c| c.epoch))
            .last()
    })
}

/// How the segment at `path` ends: its last record, read back from its
/// trailing length (`None` when that is not a whole record).
fn last_record_end(path: &std::path::Path) -> Option<Before> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    let mut len = [0u8; 4];
    f.read_exact_at(&mut len, size.checked_sub(4)?).ok()?;
    let len = u64::from(u32::from_be_bytes(len));
    if len > size.saturating_sub(HEADER_LEN as u64) || len > 1 << 30 {
        return None;
    }
    let mut rec = vec![0u8; len as usize];
    f.read_exact_at(&mut rec, size - len).ok()?;
    let r = parse_record(&rec).ok()?;
    (r.raw.len() == rec.len()).then(|| Before {
        ends_run: crate::journal::format::ends_run(&r),
        chain: r.chain,
        seq: r.seq,
    })
}
