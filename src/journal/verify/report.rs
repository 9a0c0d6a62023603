//! What `verify` found, and how it says so: text for people, JSON for
//! tools, and the exit code.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::super::format::hex;

/// Kinds of damage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Modified,
    Inserted,
    Deleted,
    Reordered,
    SegmentMissing,
    TailTruncated,
    BadSeal,
    WrongEpoch,
    EpochGap,
    /// The journal is not the one the anchors file is bound to.
    JournalReplaced,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Modified => "MODIFIED",
            Class::Inserted => "INSERTED",
            Class::Deleted => "DELETED",
            Class::Reordered => "REORDERED",
            Class::SegmentMissing => "SEGMENT_MISSING",
            Class::TailTruncated => "TAIL_TRUNCATED",
            Class::BadSeal => "BAD_SEAL",
            Class::WrongEpoch => "WRONG_EPOCH",
            Class::EpochGap => "EPOCH_GAP",
            Class::JournalReplaced => "JOURNAL_REPLACED",
        }
    }
}

/// The first thing found wrong.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: Class,
    pub seq: Option<u64>,
    pub segment: PathBuf,
    pub offset: u64,
    pub message: String,
}

impl std::fmt::Display for Failure {
    /// `CLASS at seq N, segment PATH, byte offset O: message`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at seq {}, segment {}, byte offset {}: {}",
            self.class.name(),
            self.seq.map_or("-".to_owned(), |q| q.to_string()),
            self.segment.display(),
            self.offset,
            self.message
        )
    }
}

/// What a verification found.
#[derive(Debug, Default)]
pub struct Report {
    pub journal_id: Option<[u8; 16]>,
    pub failure: Option<Failure>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub records: u64,
    pub frames: u64,
    pub checkpoints: u64,
    pub segments: u64,
    pub bytes: u64,
    /// Torn tails that recovery cut (TORN_TAIL_RECOVERED notes).
    pub recovered: Vec<String>,
    /// Tampering that auditlb found at a start (ALARM records).
    pub alarms: Vec<String>,
    pub seals_checked: bool,
    pub anchors_checked: u64,
    pub last_anchored: Option<u64>,
    /// Why the tail is not proven, when it is not.
    pub tail_uncovered: Option<String>,
    /// The journal starts after a PRUNE boundary: records up to this seq
    /// were deleted by retention, as PRUNE records say.
    pub pruned_to: Option<u64>,
    /// ARCHIVED and PRUNE records walked.
    pub archived: u64,
    pub prunes: u64,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.failure.is_some() {
            1
        } else if self.tail_uncovered.is_some() {
            2
        } else {
            0
        }
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        match &self.failure {
            Some(f) => {
                let _ = writeln!(s, "TAMPERED: {f}");
            }
            None if self.tail_uncovered.is_some() => {
                let _ = writeln!(
                    s,
                    "INTACT, TAIL NOT ANCHORED: {}",
                    self.tail_uncovered.as_deref().unwrap_or("")
                );
            }
            None => {
                let _ = writeln!(s, "INTACT");
            }
        }
        let _ = writeln!(
            s,
            "validated seq {}..{}, {} records ({} frames), {} checkpoints, {} segments, {} bytes",
            self.first_seq.map_or("-".into(), |v| v.to_string()),
            self.last_seq.map_or("-".into(), |v| v.to_string()),
            self.records,
            self.frames,
            self.checkpoints,
            self.segments,
            self.bytes
        );
        let _ = writeln!(
            s,
            "seals: {}; anchors: {}",
            if self.seals_checked {
                "checked"
            } else {
                "not checked (no --key)"
            },
            match self.last_anchored {
                Some(a) => format!("{} checked, last anchored seq {a}", self.anchors_checked),
                None => "none".into(),
            }
        );
        if self.archived > 0 || self.prunes > 0 || self.pruned_to.is_some() {
            let _ = writeln!(
                s,
                "retention: {} segments archived, {} PRUNE records; {}",
                self.archived,
                self.prunes,
                match self.pruned_to {
                    Some(p) => format!("seq 1..{p} pruned (covered by a PRUNE record)"),
                    None => "nothing pruned".into(),
                }
            );
        }
        for r in &self.recovered {
            let _ = writeln!(s, "note: TORN_TAIL_RECOVERED {}", printable(r));
        }
        for a in &self.alarms {
            let _ = writeln!(
                s,
                "note: ALARM raised by auditlb at a start: {}",
                printable(a)
            );
        }
        s
    }

    pub fn json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or("null".to_owned(), |v| v.to_string());
        let failure = match &self.failure {
            Some(f) => format!(
                "{{\"class\":\"{}\",\"seq\":{},\"segment\":{},\"offset\":{},\"message\":{}}}",
                f.class.name(),
                opt(f.seq),
                json_str(&f.segment.display().to_string()),
                f.offset,
                json_str(&f.message)
            ),
            None => "null".into(),
        };
        let recovered: Vec<String> = self.recovered.iter().map(|r| json_str(r)).collect();
        let alarms: Vec<String> = self.alarms.iter().map(|r| json_str(r)).collect();
        format!(
            "{{\"status\":\"{}\",\"exit\":{},\"pruned_to\":{},\"archived\":{},\"prunes\":{},\"journal_id\":{},\"failure\":{},\"first_seq\":{},\"last_seq\":{},\"records\":{},\"frames\":{},\"checkpoints\":{},\"segments\":{},\"bytes\":{},\"seals_checked\":{},\"anchors_checked\":{},\"last_anchored\":{},\"tail_uncovered\":{},\"torn_tail_recovered\":[{}],\"alarms\":[{}]}}",
            match self.exit_code() {
                0 => "intact",
                1 => "tampered",
                _ => "tail_not_anchored",
            },
            self.exit_code(),
            opt(self.pruned_to),
            self.archived,
            self.prunes,
            self.journal_id.map_or("null".into(), |id| json_str(&hex(&id))),
            failure,
            opt(self.first_seq),
            opt(self.last_seq),
            self.records,
            self.frames,
            self.checkpoints,
            self.segments,
            self.bytes,
            self.seals_checked,
            self.anchors_checked,
            opt(self.last_anchored),
            self.tail_uncovered.as_deref().map_or("null".into(), json_str),
            recovered.join(","),
            alarms.join(",")
        )
    }
}

/// `s` with control characters escaped (`\x1b` for ESC), so text taken
/// from a journal cannot drive the terminal that shows the report.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
