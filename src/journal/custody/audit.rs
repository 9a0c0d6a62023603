//! `auditlb verify --archive URL` and `auditlb cat --archive URL`: every
//! journal under an archive prefix, each from its archived segments (plus
//! the local segments the archive does not hold yet, with `--journal`)
//! and its archived anchors file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::store::Archive;
use crate::journal::anchors::Anchors;
use crate::journal::format::{hex, segment_name, unhex, Hash, Header};
use crate::journal::reader::{list_entries, Mapped};
use crate::journal::verify::{
    verify_sources_from, Class, Failure, Fetch, Report, Source, VerifyError,
};

fn runtime() -> Result<tokio::runtime::Runtime, VerifyError> {
    // Multi-thread: segments are fetched with `Handle::block_on` from the
    // walk, which only drives I/O when a worker thread does.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| VerifyError::Usage(format!("cannot start a runtime: {e}")))
}

fn usage(e: impl std::fmt::Display) -> VerifyError {
    VerifyError::Usage(e.to_string())
}

/// The journal id of a local journal directory (its first segment's).
fn local_id(dir: &Path) -> Option<[u8; 16]> {
    let first = list_entries(dir).ok()?.into_iter().find(|s| s.regular)?;
    Header::decode(Mapped::map(&first.path).ok()?.bytes())
        .ok()
        .map(|h| h.journal_id)
}

/// Verifies every journal under `url`. `journal` adds a local journal's
/// segments the archive does not hold (its own id only); `anchors`
/// replaces the archived anchors file for the journal it binds.
pub fn verify_archive(
    url: &str,
    journal: Option<&Path>,
    anchors: Option<&Path>,
    key: Option<&Hash>,
) -> Result<Vec<([u8; 16], Report)>, VerifyError> {
    let rt = runtime()?;
    let archive = Archive::open(url, None).map_err(usage)?;
    let mut ids = rt.block_on(archive.journals()).map_err(usage)?;
    let local = journal.and_then(local_id);
    if let Some(id) = local.filter(|id| !ids.contains(id)) {
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(VerifyError::Usage(format!(
            "{url}: no journal under this prefix"
        )));
    }
    let given = match anchors {
        Some(p) => Some(Anchors::read(p).map_err(|source| VerifyError::Io {
            path: p.to_owned(),
            source,
        })?),
        None => None,
    };
    let mut out = Vec::new();
    for id in ids {
        let rep = verify_one(
            &rt,
            &archive,
            url,
            id,
            journal,
            local,
            anchors,
            given.as_ref(),
            key,
        )?;
        out.push((id, rep));
    }
    Ok(out)
}

fn missing(id: [u8; 16], class: Class, seq: Option<u64>, at: String, message: String) -> Report {
    Report {
        journal_id: Some(id),
        failure: Some(Failure {
            class,
            seq,
            segment: PathBuf::from(at),
            offset: 0,
            message,
        }),
        ..Report::default()
    }
}

/// One journal of the archive: its segments (the archived copy where there
/// is one, checked against its `a1` line's SHA-256 and object version and
/// against the local copy; the local segments after them), then its anchors.
#[allow(clippy::too_many_arguments)]
fn verify_one(
    rt: &tokio::runtime::Runtime,
    archive: &Archive,
    url: &str,
    id: [u8; 16],
    journal: Option<&Path>,
    local: Option<[u8; 16]>,
    anchors_path: Option<&Path>,
    given: Option<&Anchors>,
    key: Option<&Hash>,
) -> Result<Report, VerifyError> {
    let label = PathBuf::from(format!("{url}{}", hex(&id)));
    let listed = rt.block_on(archive.segments(&id)).map_err(usage)?;
    let mut anchors = match given {
        Some(a) if a.bound() == Some(id) => {
            Some((anchors_path.expect("given").to_owned(), a.clone()))
        }
        _ => {
            let (text, problem) = rt.block_on(archive.anchors_text(&id)).map_err(usage)?;
            if let Some(problem) = problem {
                return Ok(missing(
                    id,
                    Class::Deleted,
                    None,
                    format!("{}/anchors", label.display()),
                    problem,
                ));
            }
            (!text.is_empty()).then(|| (label.join("anchors"), Anchors::parse(&text)))
        }
    };
    // What each `a1` line says this archive holds (lines of another
    // archive URL say nothing about this one).
    let mut expected: HashMap<u64, (Hash, Option<String>, u64)> = HashMap::new();
    if let Some((_, a)) = &anchors {
        for l in a.archived.iter().filter(|l| {
            l.journal_id == id
                // The object's key under the prefix, whatever the URL's
                // spelling (s3 or s3a, a replica of the bucket).
                && l.location.split("?versionId=").next().is_some_and(|u| {
                    u.ends_with(&format!("/{}", archive.segment_path(&id, l.segment.first_seq)))
                })
        }) {
            let version = l
                .location
                .split_once("?versionId=")
                .map(|(_, v)| v.to_owned());
            expected.insert(
                l.segment.first_seq,
                (l.segment.file_sha256, version, l.record_seq),
            );
        }
    }
    for (first_seq, (_, _, record_seq)) in &expected {
        if !listed.iter().any(|(s, _, _)| s == first_seq) {
            return Ok(missing(
                id,
                Class::SegmentMissing,
                Some(*first_seq),
                archive.location(&archive.segment_path(&id, *first_seq)),
                format!("the segment starting at seq {first_seq} was archived (ARCHIVED record seq {record_seq}), but the archive does not hold it"),
            ));
        }
    }
    let local_dir = journal.filter(|_| local == Some(id));
    let local_entries = match local_dir {
        Some(dir) => list_entries(dir).map_err(|source| VerifyError::Io {
            path: dir.to_owned(),
            source,
        })?,
        None => Vec::new(),
    };
    // Differences found while fetching: reported if the walk passes.
    let problems: Arc<Mutex<Vec<Failure>>> = Arc::default();
    let mut sources: Vec<Source> = Vec::new();
    for (seq, p, _) in &listed {
        let a = archive.clone();
        let p = p.clone();
        let handle = rt.handle().clone();
        let want = expected.get(seq).cloned();
        let local_copy = local_entries
            .iter()
            .find(|e| e.name_seq == *seq && e.regular)
            .map(|e| e.path.clone());
        let problems = problems.clone();
        let at = archive.location(&p);
        sources.push(Source {
            name_seq: *seq,
            label: PathBuf::from(&at),
            regular: true,
            fetch: Fetch::Remote(Box::new(move || {
                let (bytes, version) = handle
                    .block_on(a.get_versioned(&p))
                    .map_err(std::io::Error::other)?;
                let sha: Hash = Sha256::digest(&bytes).into();
                let mut found = Vec::new();
                if let Some((want_sha, want_version, rec)) = want {
                    if let (Some(w), Some(v)) = (&want_version, &version) {
                        if w != v {
                            found.push(format!("the object's current version is {v}, not the version {w} archived (ARCHIVED record seq {rec}): it was written over"));
                        }
                    }
                    if want_sha != sha {
                        found.push(format!("the object's SHA-256 is {}, the archived segment's was {} (ARCHIVED record seq {rec})", hex(&sha), hex(&want_sha)));
                    }
                }
                if let Some(lp) = local_copy {
                    let l = Mapped::map(&lp)?;
                    if Sha256::digest(l.bytes())[..] != sha[..] {
                        found.push(format!("the local copy {} differs from the archived copy", lp.display()));
                    }
                }
                let mut pr = problems.lock().unwrap_or_else(|e| e.into_inner());
                for message in found {
                    pr.push(Failure {
                        class: Class::Modified,
                        seq: Some(seq_of(&at)),
                        segment: PathBuf::from(&at),
                        offset: 0,
                        message,
                    });
                }
                Ok(bytes.to_vec())
            })),
        });
    }
    for e in &local_entries {
        if !listed.iter().any(|(s, _, _)| *s == e.name_seq) {
            sources.push(Source::local(e));
        }
    }
    sources.sort_by_key(|s| s.name_seq);
    // Without the local journal, the archive ends at the last segment an
    // `a1` line says was archived: checkpoints anchored after it are the
    // local tail's.
    let first_header = match listed.first() {
        Some((_, p, _)) => rt
            .block_on(archive.get_prefix(p, crate::journal::format::HEADER_LEN as u64))
            .ok()
            .and_then(|b| Header::decode(&b).ok()),
        None => None,
    };
    let mut not_archived = None;
    if let (None, Some((_, a))) = (local_dir, anchors.as_mut()) {
        let limit = expected
            .keys()
            .filter_map(|s| {
                a.archived
                    .iter()
                    .find(|l| l.journal_id == id && l.segment.first_seq == *s)
            })
            .map(|l| l.segment.last_seq)
            .max()
            .unwrap_or(0);
        let before = (a.lines.len(), sources.len());
        a.lines.retain(|x| x.journal_id != id || x.seq <= limit);
        // Segments archived after the archived anchors were last uploaded
        // have no `a1` line there yet: nothing vouches for them.
        sources.retain(|s| s.name_seq <= limit);
        if (a.lines.len(), sources.len()) != before {
            not_archived = Some(limit);
        }
        // An archive begun after a prune whose PRUNE record is in a segment
        // not vouched for yet: not proven yet, not missing.
        if let Some(h) = &first_header {
            let pending = a.prunes_of(&id).any(|p| {
                p.end_seq.checked_add(1) == Some(h.first_seq)
                    && p.end_chain == h.prev_chain
                    && p.record_seq > limit
            });
            if h.segment_no != 0 && pending {
                return Ok(Report {
                    journal_id: Some(id),
                    tail_uncovered: Some(format!(
                        "the archive starts at seq {} after a prune whose PRUNE record is not archived yet (add --journal DIR to check it)",
                        h.first_seq
                    )),
                    ..Report::default()
                });
            }
        }
    }
    // An archive that starts after segment 0 (archiving began after a
    // prune): the PRUNE record its `p1` line names covers the start.
    let boundary = first_header
        .as_ref()
        .and_then(|h| {
            archive_boundary(
                rt,
                archive,
                &id,
                h,
                &listed,
                &local_entries,
                anchors.as_ref(),
            )
        })
        .or_else(|| crate::journal::verify::find_boundary(&sources));
    let mut rep = verify_sources_from(&label, sources, anchors, key, boundary, &mut |_, _| true)?;
    if rep.failure.is_none() {
        let mut pr = problems.lock().unwrap_or_else(|e| e.into_inner());
        if !pr.is_empty() {
            rep.failure = Some(pr.remove(0));
        }
    }
    if let (Some(limit), None) = (not_archived, &rep.failure) {
        rep.tail_uncovered = Some(format!(
            "records after seq {limit} are in the local journal, not archived yet (add --journal DIR to check them)"
        ));
    }
    Ok(rep)
}

/// The PRUNE record that covers the start of an archive which begins after
/// segment 0: found through the anchors' `p1` lines, read from the segment
/// that holds it (local, or fetched).
fn archive_boundary(
    rt: &tokio::runtime::Runtime,
    archive: &Archive,
    id: &[u8; 16],
    h: &Header,
    listed: &[(u64, object_store::path::Path, u64)],
    local: &[crate::journal::reader::SegmentFile],
    anchors: Option<&(PathBuf, Anchors)>,
) -> Option<crate::journal::verify::Boundary> {
    let (_, a) = anchors?;
    if h.segment_no == 0 {
        return None;
    }
    let line = a
        .prunes_of(id)
        .filter(|p| p.end_seq.checked_add(1) == Some(h.first_seq) && p.end_chain == h.prev_chain)
        .last()?;
    // The segment holding the PRUNE record: the last starting at or before it.
    let holder =
        |names: &mut dyn Iterator<Item = u64>| names.filter(|s| *s <= line.record_seq).max();
    let from_local = holder(&mut local.iter().map(|e| e.name_seq));
    let from_archive = holder(&mut listed.iter().map(|(s, _, _)| *s));
    let bytes = match (from_local, from_archive) {
        (Some(l), a) if a.is_none_or(|a| l >= a) => {
            let e = local.iter().find(|e| e.name_seq == l)?;
            Mapped::map(&e.path).ok()?.bytes().to_vec()
        }
        (_, Some(a)) => {
            let (_, p, _) = listed.iter().find(|(s, _, _)| *s == a)?;
            rt.block_on(archive.get(p)).ok()?.to_vec()
        }
        _ => return None,
    };
    crate::journal::verify::prune_covering(&bytes, h).filter(|b| b.record_seq == line.record_seq)
}

/// The first seq an object's name gives.
fn seq_of(url: &str) -> u64 {
    url.rsplit('/')
        .next()
        .and_then(crate::journal::format::parse_segment_name)
        .unwrap_or(0)
}

/// Copies one journal's archived segments (those that can hold seqs in
/// `(from, to)`) into the existing directory `into`, one at a time, for
/// `cat`; `id` picks the journal when the prefix holds several. Returns the
/// journal id.
pub fn fetch_journal(
    url: &str,
    id: Option<&str>,
    (from_seq, to_seq): (Option<u64>, Option<u64>),
    into: &Path,
) -> Result<[u8; 16], String> {
    let rt = runtime().map_err(|e| e.to_string())?;
    let archive = Archive::open(url, None).map_err(|e| e.to_string())?;
    let ids = rt.block_on(archive.journals()).map_err(|e| e.to_string())?;
    let id = match id {
        Some(h) => unhex(h)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .filter(|i| ids.contains(i))
            .ok_or_else(|| format!("{url}: no journal {h} (has: {})", list(&ids)))?,
        None if ids.len() == 1 => ids[0],
        None => {
            return Err(format!(
                "{url} holds {} journals; pick one with --journal-id ({})",
                ids.len(),
                list(&ids)
            ))
        }
    };
    let segs = rt
        .block_on(archive.segments(&id))
        .map_err(|e| e.to_string())?;
    // From the last segment starting at or before `from_seq`.
    let start = from_seq
        .and_then(|f| segs.iter().rposition(|(s, _, _)| *s <= f))
        .unwrap_or(0);
    for (seq, p, _) in &segs[start..] {
        if to_seq.is_some_and(|t| *seq > t) {
            break;
        }
        let bytes = rt.block_on(archive.get(p)).map_err(|e| e.to_string())?;
        let path = into.join(segment_name(*seq));
        std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(id)
}

fn list(ids: &[[u8; 16]]) -> String {
    ids.iter().map(|i| hex(i)).collect::<Vec<_>>().join(", ")
}
