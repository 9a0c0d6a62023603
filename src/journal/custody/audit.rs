//! `auditlb verify --archive URL` and `auditlb cat --archive URL`: every
//! journal under an archive prefix, each from its archived segments (plus
//! the local segments the archive does not hold yet, with `--journal`)
//! and its archived anchors file.

use std::path::{Path, PathBuf};

use super::store::Archive;
use crate::journal::anchors::Anchors;
use crate::journal::format::{hex, segment_name, unhex, Hash, Header};
use crate::journal::reader::{list_entries, Mapped};
use crate::journal::verify::{verify_sources, Class, Failure, Fetch, Report, Source, VerifyError};

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
        let label = PathBuf::from(format!("{url}{}", hex(&id)));
        let listed = rt.block_on(archive.segments(&id)).map_err(usage)?;
        let mut sources: Vec<Source> = Vec::new();
        for (seq, p, _) in &listed {
            let a = archive.clone();
            let p = p.clone();
            let handle = rt.handle().clone();
            sources.push(Source {
                name_seq: *seq,
                label: PathBuf::from(archive.location(&p)),
                regular: true,
                fetch: Fetch::Remote(Box::new(move || {
                    handle
                        .block_on(a.get(&p))
                        .map(|b| b.to_vec())
                        .map_err(std::io::Error::other)
                })),
            });
        }
        if let (Some(dir), Some(lid)) = (journal, local) {
            if lid == id {
                let entries = list_entries(dir).map_err(|source| VerifyError::Io {
                    path: dir.to_owned(),
                    source,
                })?;
                for e in entries {
                    if !listed.iter().any(|(s, _, _)| *s == e.name_seq) {
                        sources.push(Source::local(&e));
                    }
                }
                sources.sort_by_key(|s| s.name_seq);
            }
        }
        let anchors = match &given {
            Some(a) if a.bound() == Some(id) => {
                Some((anchors.expect("given").to_owned(), a.clone()))
            }
            _ => {
                let (text, problem) = rt.block_on(archive.anchors_text(&id)).map_err(usage)?;
                if let Some(problem) = problem {
                    let rep = Report {
                        journal_id: Some(id),
                        failure: Some(Failure {
                            class: Class::Deleted,
                            seq: None,
                            segment: label.join("anchors"),
                            offset: 0,
                            message: problem,
                        }),
                        ..Report::default()
                    };
                    out.push((id, rep));
                    continue;
                }
                (!text.is_empty()).then(|| (label.join("anchors"), Anchors::parse(&text)))
            }
        };
        // Without the local journal, the archive ends at the last segment
        // an `a1` line says was archived: every such segment must be
        // there, and checkpoints anchored after it are the local tail's.
        let with_local = local == Some(id) && journal.is_some();
        let mut not_archived = None;
        let mut anchors = anchors;
        if let (false, Some((_, a))) = (with_local, anchors.as_mut()) {
            let mut limit = 0;
            for l in a.archived.iter().filter(|l| l.journal_id == id) {
                if !listed.iter().any(|(s, _, _)| *s == l.segment.first_seq) {
                    let rep = Report {
                        journal_id: Some(id),
                        failure: Some(Failure {
                            class: Class::SegmentMissing,
                            seq: Some(l.segment.first_seq),
                            segment: PathBuf::from(archive.location(&archive.segment_path(&id, l.segment.first_seq))),
                            offset: 0,
                            message: format!(
                                "segment {} was archived (ARCHIVED record seq {}), but the archive does not hold it",
                                l.segment.segment_no, l.record_seq
                            ),
                        }),
                        ..Report::default()
                    };
                    out.push((id, rep));
                    limit = u64::MAX;
                    break;
                }
                limit = limit.max(l.segment.last_seq);
            }
            if limit == u64::MAX {
                continue;
            }
            let before = a.lines.len();
            a.lines.retain(|x| x.journal_id != id || x.seq <= limit);
            if a.lines.len() < before {
                not_archived = Some(limit);
            }
        }
        let mut rep = verify_sources(&label, sources, anchors, key)?;
        if let (Some(limit), None) = (not_archived, &rep.failure) {
            rep.tail_uncovered = Some(format!(
                "records after seq {limit} are in the local journal, not archived yet (add --journal DIR to check them)"
            ));
        }
        out.push((id, rep));
    }
    Ok(out)
}

/// Copies one journal's archived segments (from the one holding `from_seq`
/// on) into `into`, streamed, for `cat`; `id` picks the journal when the
/// prefix holds several. Returns the journal id.
pub fn fetch_journal(
    url: &str,
    id: Option<&str>,
    from_seq: Option<u64>,
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
    std::fs::create_dir_all(into).map_err(|e| format!("{}: {e}", into.display()))?;
    for (seq, p, _) in &segs[start..] {
        let bytes = rt.block_on(archive.get(p)).map_err(|e| e.to_string())?;
        let path = into.join(segment_name(*seq));
        std::fs::write(&path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(id)
}

fn list(ids: &[[u8; 16]]) -> String {
    ids.iter().map(|i| hex(i)).collect::<Vec<_>>().join(", ")
}
