//! Unique ids: what backends logged, what the journal holds, and waiting
//! until every id arrived; `auditlb verify` as an auditor runs it.

use super::*;

/// The ids (` id=N`) of every complete frame in a sink's raw byte logs
/// (`path`.N, one per connection).
pub fn ids_in_log(path: &std::path::Path, octet_framing: bool) -> Vec<u64> {
    let mut out = Vec::new();
    let dir = path.parent().unwrap();
    let prefix = format!("{}.", path.file_name().unwrap().to_string_lossy());
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            ids_in_stream(
                &std::fs::read(entry.path()).unwrap_or_default(),
                octet_framing,
                &mut out,
            );
        }
    }
    out
}

fn ids_in_stream(b: &[u8], octet_framing: bool, out: &mut Vec<u64>) {
    let mut pos = 0;
    while pos < b.len() {
        let rest = &b[pos..];
        let frame = if octet_framing {
            let Some(sp) = rest.iter().take(12).position(|&c| c == b' ') else {
                break;
            };
            let Some(len) = std::str::from_utf8(&rest[..sp])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
            else {
                break;
            };
            if rest.len() < sp + 1 + len {
                break;
            }
            pos += sp + 1 + len;
            &rest[sp + 1..sp + 1 + len]
        } else {
            let Some(i) = rest.iter().position(|&c| c == b'\n') else {
                break;
            };
            pos += i + 1;
            &rest[..i]
        };
        if let Some(at) = frame.windows(4).rposition(|w| w == b" id=") {
            if let Some(id) = std::str::from_utf8(&frame[at + 4..])
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                out.push(id);
            }
        }
    }
}

/// Waits until the backends' logs hold every id below `n`; returns (unique,
/// total) ids seen.
pub fn wait_all_ids(logs: &[&std::path::Path], n: u64, secs: u64) -> (usize, usize) {
    use std::time::Instant;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut all = Vec::new();
        for l in logs {
            all.extend(ids_in_log(l, true));
        }
        let unique: std::collections::HashSet<u64> = all.iter().copied().collect();
        let complete = (0..n).all(|i| unique.contains(&i));
        if complete {
            return (unique.len(), all.len());
        }
        if Instant::now() > deadline {
            let missing: Vec<u64> = (0..n).filter(|i| !unique.contains(i)).collect();
            panic!(
                "after {secs}s: {} of ids 0..{n} arrived, {} missing (first: {:?})",
                n as usize - missing.len(),
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every frame id `auditlb cat` finds in a journal.
pub fn journaled_ids(journal: &std::path::Path) -> Vec<u64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["cat", "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    out.stdout
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let at = l.windows(4).rposition(|w| w == b" id=")?;
            std::str::from_utf8(&l[at + 4..]).ok()?.parse().ok()
        })
        .collect()
}

/// `auditlb verify --journal J --anchors A` as an auditor runs it: exit
/// code and report.
pub fn verify_cli(journal: &std::path::Path, anchors: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditlb"))
        .args(["verify", "--journal"])
        .arg(journal)
        .arg("--anchors")
        .arg(anchors)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
