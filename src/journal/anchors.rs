//! The anchors file: one line per checkpoint, appended and synced by the
//! writer, kept apart from the journal (another disk, a WORM mount).
//!
//! ```text
//! v1 <journal id hex> <seq> <chain hex> <epoch> <time_ns> <seal hex>
//! ```
//!
//! The file binds a journal: its first line names the journal it belongs
//! to, and a journal directory holding any other journal (wiped,
//! re-created, swapped) is tampering. Parsed here for recovery (the writer)
//! and for `verify`.

use std::path::Path;

use super::format::{hex, unhex, Hash};

/// One anchor line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub journal_id: [u8; 16],
    pub seq: u64,
    pub chain: Hash,
    pub epoch: u64,
}

impl Anchor {
    /// The line the writer appends (with its newline).
    pub fn line(&self, time_ns: i64, seal: &Hash) -> String {
        format!(
            "v1 {} {} {} {} {} {}\n",
            hex(&self.journal_id),
            self.seq,
            hex(&self.chain),
            self.epoch,
            time_ns,
            hex(seal)
        )
    }

    fn parse(line: &str) -> Option<Anchor> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 7 || f[0] != "v1" {
            return None;
        }
        f[5].parse::<i64>().ok()?;
        let _: Hash = unhex(f[6])?.try_into().ok()?;
        Some(Anchor {
            journal_id: unhex(f[1])?.try_into().ok()?,
            seq: f[2].parse().ok()?,
            chain: unhex(f[3])?.try_into().ok()?,
            epoch: f[4].parse().ok()?,
        })
    }
}

/// An anchors file, parsed.
#[derive(Debug, Default, Clone)]
pub struct Anchors {
    /// Every whole line, in file order.
    pub lines: Vec<Anchor>,
    /// Lines that are not anchor lines (1-based numbers); a last line cut
    /// short by a crash (no newline) is not counted.
    pub bad_lines: Vec<usize>,
}

impl Anchors {
    pub fn parse(text: &str) -> Anchors {
        let mut out = Anchors::default();
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.split('\n').collect();
        let n = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            let last = i + 1 == n;
            if line.trim().is_empty() {
                continue;
            }
            match Anchor::parse(line) {
                Some(a) if !last || complete => out.lines.push(a),
                // A torn last line: the crash came while appending it.
                _ if last && !complete => {}
                _ => out.bad_lines.push(i + 1),
            }
        }
        out
    }

    /// Reads `path`; a missing file is an empty one (nothing anchored yet).
    pub fn read(path: &Path) -> std::io::Result<Anchors> {
        match std::fs::read(path) {
            Ok(b) => Ok(Anchors::parse(&String::from_utf8_lossy(&b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Anchors::default()),
            Err(e) => Err(e),
        }
    }

    /// The journal this file belongs to: the one its first line names.
    pub fn bound(&self) -> Option<[u8; 16]> {
        self.lines.first().map(|a| a.journal_id)
    }

    /// The anchors of journal `id`, in order.
    pub fn of(&self, id: &[u8; 16]) -> impl Iterator<Item = &Anchor> {
        let id = *id;
        self.lines.iter().filter(move |a| a.journal_id == id)
    }

    /// The highest anchored seq of the bound journal.
    pub fn head(&self) -> Option<&Anchor> {
        let id = self.bound()?;
        self.of(&id).max_by_key(|a| a.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_a_torn_last_line_is_ignored_and_garbage_is_counted() {
        let a = Anchor {
            journal_id: [7; 16],
            seq: 42,
            chain: [9; 32],
            epoch: 3,
        };
        let b = Anchor {
            seq: 50,
            epoch: 4,
            ..a.clone()
        };
        let line_a = a.line(123, &[1; 32]);
        let line_b = b.line(124, &[2; 32]);
        let text = format!("{line_a}{line_b}");
        let p = Anchors::parse(&text);
        assert_eq!(p.lines, vec![a.clone(), b.clone()]);
        assert!(p.bad_lines.is_empty());
        assert_eq!(p.bound(), Some([7; 16]));
        assert_eq!(p.head(), Some(&b));
        // Cut anywhere inside the second line: it is a torn append.
        for cut in line_a.len()..text.len() - 1 {
            let p = Anchors::parse(&text[..cut]);
            assert_eq!(p.lines, vec![a.clone()], "cut at {cut}");
            assert!(p.bad_lines.is_empty());
        }
        let p = Anchors::parse(&format!("{line_a}garbage here\n{line_b}"));
        assert_eq!(p.bad_lines, vec![2]);
        assert_eq!(p.lines.len(), 2);
        // Another journal's lines do not move this journal's head.
        let other = Anchor {
            journal_id: [8; 16],
            seq: 999,
            ..a.clone()
        };
        let p = Anchors::parse(&format!("{line_a}{}", other.line(1, &[0; 32])));
        assert_eq!(p.head(), Some(&a));
        assert_eq!(p.of(&[8; 16]).count(), 1);
    }
}
