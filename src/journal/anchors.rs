//! The anchors file: one line per checkpoint, appended and synced by the
//! writer, kept apart from the journal (another disk, a WORM mount).
//!
//! ```text
//! v1 <journal id hex> <seq> <chain hex> <epoch> <time_ns> <seal hex>
//! ```
//!
//! Retention and the archive add two kinds of line, written with the
//! checkpoint that seals their record:
//!
//! ```text
//! a1 <journal id> <segment no> <first seq> <last seq> <end chain> <file sha256> <record seq> <time_ns> <location> .
//! p1 <journal id> <first segment no> <end segment no> <end seq> <end chain> <end epoch> <record seq> <time_ns> .
//! ```
//!
//! The final `.` says the line is whole: one cut short by a crash (and
//! closed by the next append) never parses as a shorter, valid one.
//!
//! The file binds a journal: its first line names the journal it belongs
//! to, and a journal directory holding any other journal (wiped,
//! re-created, swapped) is tampering. Parsed here for recovery (the writer)
//! and for `verify`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::format::{hex, unhex, Hash};
use super::reader::MAX_SEQ;

/// One anchor line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub journal_id: [u8; 16],
    pub seq: u64,
    pub chain: Hash,
    pub epoch: u64,
    /// The checkpoint's seal (zeros when the journal is unsealed).
    pub seal: Hash,
}

impl Anchor {
    /// The line the writer appends (with its newline).
    pub fn line(&self, time_ns: i64) -> String {
        format!(
            "v1 {} {} {} {} {} {}\n",
            hex(&self.journal_id),
            self.seq,
            hex(&self.chain),
            self.epoch,
            time_ns,
            hex(&self.seal)
        )
    }

    fn parse(line: &str) -> Option<Anchor> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 7 || f[0] != "v1" {
            return None;
        }
        f[5].parse::<i64>().ok()?;
        let seq = f[2].parse().ok().filter(|&s| s < MAX_SEQ)?;
        Some(Anchor {
            journal_id: unhex(f[1])?.try_into().ok()?,
            seq,
            chain: unhex(f[3])?.try_into().ok()?,
            epoch: f[4].parse().ok()?,
            seal: unhex(f[6])?.try_into().ok()?,
        })
    }

    /// Whether `line` is how an anchor line being appended looks when the
    /// append was cut short: the start of one, field by field.
    fn is_torn(line: &str) -> bool {
        let f: Vec<&str> = line.split(' ').collect();
        let custody = match f[0] {
            "a" | "a1" => Some((true, 11)),
            "p" | "p1" => Some((false, 10)),
            _ => None,
        };
        if let Some((archived, max)) = custody {
            // A custody line cut short: a prefix of one, field by field
            // (numbers and hex; an a1 line's location; never its final
            // `.`, which only a whole line has).
            return (f.len() == 1 || f[0].len() == 2)
                && f.len() <= max
                && f.iter().enumerate().skip(1).all(|(i, v)| {
                    if i == max - 1 {
                        v.is_empty()
                    } else if archived && i == 9 {
                        true
                    } else {
                        v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
                    }
                });
        }
        // (longest, digits only) per field; "v1" first.
        let shapes: [(usize, bool); 7] = [
            (2, false),
            (32, false),
            (20, true),
            (64, false),
            (20, true),
            (20, false),
            (64, false),
        ];
        if f.len() > 7 || !"v1".starts_with(f[0]) {
            return false;
        }
        f.iter().enumerate().skip(1).all(|(i, v)| {
            let (max, digits) = shapes[i];
            v.len() <= max
                && v.bytes().all(|b| {
                    if digits {
                        b.is_ascii_digit()
                    } else {
                        b.is_ascii_hexdigit() || b == b'-' || b.is_ascii_digit()
                    }
                })
        }) && (f.len() < 7 || f[6].len() < 64)
    }
}

/// An `a1` line: a segment the archive holds, read back and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedLine {
    pub journal_id: [u8; 16],
    pub segment: super::format::SegmentFacts,
    /// Seq of the ARCHIVED record.
    pub record_seq: u64,
    pub location: String,
}

impl ArchivedLine {
    pub fn line(&self, time_ns: i64) -> String {
        let s = &self.segment;
        format!(
            "a1 {} {} {} {} {} {} {} {} {} .\n",
            hex(&self.journal_id),
            s.segment_no,
            s.first_seq,
            s.last_seq,
            hex(&s.end_chain),
            hex(&s.file_sha256),
            self.record_seq,
            time_ns,
            self.location.replace(char::is_whitespace, "%20")
        )
    }

    fn parse(line: &str) -> Option<ArchivedLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 11 || f[0] != "a1" || f[10] != "." {
            return None;
        }
        f[8].parse::<i64>().ok()?;
        Some(ArchivedLine {
            journal_id: unhex(f[1])?.try_into().ok()?,
            segment: super::format::SegmentFacts {
                segment_no: f[2].parse().ok()?,
                first_seq: f[3].parse().ok().filter(|&s| s < MAX_SEQ)?,
                last_seq: f[4].parse().ok().filter(|&s| s < MAX_SEQ)?,
                end_chain: unhex(f[5])?.try_into().ok()?,
                file_sha256: unhex(f[6])?.try_into().ok()?,
                file_len: 0,
            },
            record_seq: f[7].parse().ok().filter(|&s| s < MAX_SEQ)?,
            location: f[9].to_owned(),
        })
    }
}

/// A `p1` line: segments `first_segment_no..=end_segment_no` deleted by
/// retention; the journal kept goes on after `end_seq`/`end_chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneLine {
    pub journal_id: [u8; 16],
    pub first_segment_no: u64,
    pub end_segment_no: u64,
    pub end_seq: u64,
    pub end_chain: Hash,
    pub end_epoch: u64,
    /// Seq of the PRUNE record.
    pub record_seq: u64,
}

impl PruneLine {
    pub fn line(&self, time_ns: i64) -> String {
        format!(
            "p1 {} {} {} {} {} {} {} {} .\n",
            hex(&self.journal_id),
            self.first_segment_no,
            self.end_segment_no,
            self.end_seq,
            hex(&self.end_chain),
            self.end_epoch,
            self.record_seq,
            time_ns
        )
    }

    /// Whether this line states the PRUNE record at `record_seq` with
    /// `body`, field by field.
    pub fn matches(&self, record_seq: u64, body: &super::format::PruneBody) -> bool {
        self.record_seq == record_seq
            && body.segments.first().map(|s| s.segment_no) == Some(self.first_segment_no)
            && self.end_segment_no == body.end_segment_no
            && self.end_seq == body.end_seq
            && self.end_chain == body.end_chain
            && self.end_epoch == body.end_epoch
    }

    fn parse(line: &str) -> Option<PruneLine> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 10 || f[0] != "p1" || f[9] != "." {
            return None;
        }
        f[8].parse::<i64>().ok()?;
        Some(PruneLine {
            journal_id: unhex(f[1])?.try_into().ok()?,
            first_segment_no: f[2].parse().ok()?,
            end_segment_no: f[3].parse().ok()?,
            end_seq: f[4].parse().ok().filter(|&s| s < MAX_SEQ)?,
            end_chain: unhex(f[5])?.try_into().ok()?,
            end_epoch: f[6].parse().ok()?,
            record_seq: f[7].parse().ok().filter(|&s| s < MAX_SEQ)?,
        })
    }
}

/// An anchors file, parsed.
#[derive(Debug, Default, Clone)]
pub struct Anchors {
    /// Every whole checkpoint line, in file order.
    pub lines: Vec<Anchor>,
    /// `a1` lines: segments archived.
    pub archived: Vec<ArchivedLine>,
    /// `p1` lines: segments pruned.
    pub prunes: Vec<PruneLine>,
    /// Lines that are not anchor lines (1-based numbers); a last line cut
    /// short by a crash (no newline) is not counted.
    pub bad_lines: Vec<usize>,
    /// Lines cut short by a crash while they were appended (1-based).
    pub torn_lines: Vec<usize>,
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
            if !last || complete {
                if let Some(a) = ArchivedLine::parse(line) {
                    out.archived.push(a);
                    continue;
                }
                if let Some(p) = PruneLine::parse(line) {
                    out.prunes.push(p);
                    continue;
                }
            }
            match Anchor::parse(line) {
                Some(a) if !last || complete => out.lines.push(a),
                // A torn last line: the crash came while appending it. One
                // the writer then closed with a newline is torn too.
                _ if last && !complete => {}
                None if Anchor::is_torn(line) => out.torn_lines.push(i + 1),
                _ => out.bad_lines.push(i + 1),
            }
        }
        out
    }

    /// Reads `path` whole (`verify`); a missing file is an empty one
    /// (nothing anchored yet). Only a regular file is read.
    pub fn read(path: &Path) -> io::Result<Anchors> {
        let Some(mut f) = open_regular(path)? else {
            return Ok(Anchors::default());
        };
        let mut b = Vec::new();
        f.read_to_end(&mut b)?;
        Ok(Anchors::parse(&String::from_utf8_lossy(&b)))
    }

    /// What start-up recovery needs, in bounded time and memory however
    /// long the file has grown: its first line (which journal it binds)
    /// and the lines in its last 64 KiB (the anchored head).
    pub fn read_recent(path: &Path) -> io::Result<Anchors> {
        const TAIL: u64 = 64 * 1024;
        let Some(mut f) = open_regular(path)? else {
            return Ok(Anchors::default());
        };
        let len = f.metadata()?.len();
        if len <= 2 * TAIL {
            let mut b = Vec::new();
            f.read_to_end(&mut b)?;
            return Ok(Anchors::parse(&String::from_utf8_lossy(&b)));
        }
        let mut first = vec![0u8; 512];
        let n = f.read(&mut first)?;
        first.truncate(n);
        let first_line = first.split(|&b| b == b'\n').next().unwrap_or(&[]);
        let mut tail = vec![0u8; TAIL as usize];
        f.seek(SeekFrom::Start(len - TAIL))?;
        f.read_exact(&mut tail)?;
        // From the first whole line of the tail.
        let start = tail
            .iter()
            .position(|&b| b == b'\n')
            .map_or(tail.len(), |i| i + 1);
        let mut text = String::from_utf8_lossy(first_line).into_owned();
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&tail[start..]));
        let mut a = Anchors::parse(&text);
        // Line numbers past the first are not the file's: keep the count.
        for l in a.bad_lines.iter_mut().chain(a.torn_lines.iter_mut()) {
            *l = l.saturating_sub(1).max(1);
        }
        Ok(a)
    }

    /// The `p1` lines of journal `id`, in order.
    pub fn prunes_of(&self, id: &[u8; 16]) -> impl Iterator<Item = &PruneLine> {
        let id = *id;
        self.prunes.iter().filter(move |p| p.journal_id == id)
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

/// Opens `path` for reading if it is a regular file (following a link,
/// never waiting on a FIFO); `None` when it does not exist.
fn open_regular(path: &Path) -> io::Result<Option<File>> {
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not a regular file", path.display()),
        ));
    }
    Ok(Some(f))
}

/// The anchors file as the writer appends to it: one line per checkpoint,
/// synced. A line cut short (a crash, a full disk) is closed with a newline
/// before the next one, so it never runs into it.
pub struct AnchorsFile {
    path: PathBuf,
    file: File,
    /// The file ends with a whole line.
    clean: bool,
}

impl AnchorsFile {
    /// Opens (creating) `path` for appending; it must be a regular file.
    pub fn open(path: &Path) -> io::Result<AnchorsFile> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        let mut clean = true;
        if meta.len() > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1))?;
            file.read_exact(&mut last)?;
            clean = last[0] == b'\n';
        }
        Ok(AnchorsFile {
            path: path.to_owned(),
            file,
            clean,
        })
    }

    /// Appends `line` (ending in a newline) and syncs it.
    pub fn append(&mut self, line: &str) -> io::Result<()> {
        let r = (|| {
            if !self.clean {
                self.file.write_all(b"\n")?;
            }
            self.clean = false;
            self.file.write_all(line.as_bytes())?;
            self.clean = true;
            self.file.sync_data()
        })();
        r.map_err(|e| io::Error::new(e.kind(), format!("anchors {}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Anchor {
        Anchor {
            journal_id: [7; 16],
            seq: 42,
            chain: [9; 32],
            epoch: 3,
            seal: [1; 32],
        }
    }

    #[test]
    fn an_append_after_a_torn_line_starts_on_a_line_of_its_own() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("anchors.log");
        let a = sample();
        std::fs::write(&p, &a.line(1)[..40]).unwrap();
        let mut f = AnchorsFile::open(&p).unwrap();
        f.append(&a.line(2)).unwrap();
        let read = Anchors::read(&p).unwrap();
        assert_eq!(read.lines, vec![a]);
        assert!(read.bad_lines.is_empty());
        assert_eq!(read.torn_lines, vec![1]);
        // Not a regular file: refused, never waited on.
        assert!(AnchorsFile::open(Path::new("/dev/zero")).is_err());
        assert!(Anchors::read(Path::new("/dev/zero")).is_err());
    }

    #[test]
    fn custody_lines_round_trip_beside_checkpoint_lines() {
        let a = sample();
        let facts = crate::journal::format::SegmentFacts {
            segment_no: 2,
            first_seq: 10,
            last_seq: 20,
            end_chain: [3; 32],
            file_sha256: [4; 32],
            file_len: 0,
        };
        let arch = ArchivedLine {
            journal_id: [7; 16],
            segment: facts,
            record_seq: 33,
            location: "s3://bucket/p/x.seg".into(),
        };
        let pr = PruneLine {
            journal_id: [7; 16],
            first_segment_no: 0,
            end_segment_no: 2,
            end_seq: 20,
            end_chain: [3; 32],
            end_epoch: 5,
            record_seq: 40,
        };
        let text = format!("{}{}{}", a.line(1), arch.line(2), pr.line(3));
        let p = Anchors::parse(&text);
        assert_eq!(p.lines, vec![a.clone()]);
        assert_eq!(p.archived, vec![arch.clone()]);
        assert_eq!(p.prunes, vec![pr.clone()]);
        assert!(p.bad_lines.is_empty() && p.torn_lines.is_empty());
        assert_eq!(p.prunes_of(&[7; 16]).count(), 1);
        // A custody line cut short anywhere and closed by the next append
        // is torn, never garbage and never a shorter valid line; the same
        // line edited is garbage.
        for whole in [pr.line(3), arch.line(2)] {
            let whole = whole.trim_end();
            for cut in 1..whole.len() {
                let p = Anchors::parse(&format!("{}{}\n{}", a.line(1), &whole[..cut], a.line(2)));
                assert_eq!(p.torn_lines, vec![2], "cut at {cut}: {}", &whole[..cut]);
                assert!(p.archived.is_empty() && p.prunes.is_empty(), "cut at {cut}");
            }
        }
        let p = Anchors::parse(&format!("{}p1 zz\n", a.line(1)));
        assert_eq!(p.bad_lines, vec![2]);
    }

    #[test]
    fn lines_round_trip_a_torn_last_line_is_ignored_and_garbage_is_counted() {
        let a = sample();
        let b = Anchor {
            seq: 50,
            epoch: 4,
            ..a.clone()
        };
        let line_a = a.line(123);
        let line_b = b.line(124);
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
        let p = Anchors::parse(&format!("{line_a}{}", other.line(1)));
        assert_eq!(p.head(), Some(&a));
        assert_eq!(p.of(&[8; 16]).count(), 1);
    }
}
