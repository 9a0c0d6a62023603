//! Reading segment files back: listing a journal directory and walking the
//! records of one segment. Used by recovery, `verify` and `cat`.

use std::io;
use std::path::{Path, PathBuf};

use super::format::{parse_record, parse_segment_name, Header, ParseError, Record, HEADER_LEN};

/// A segment file of a journal directory.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// The first seq its name claims.
    pub name_seq: u64,
    pub path: PathBuf,
}

/// Every `*.seg` file of `dir`, in name (first seq) order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_name) {
            out.push(SegmentFile {
                name_seq: seq,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.name_seq);
    Ok(out)
}

/// Walks the records after the header of a segment's bytes.
pub struct Records<'a> {
    bytes: &'a [u8],
    offset: usize,
    done: bool,
}

impl<'a> Records<'a> {
    /// Starts after the header (the caller has decoded it).
    pub fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: HEADER_LEN.min(bytes.len()),
            done: false,
        }
    }
}

/// One step of the walk: a record at its byte offset, or the error that
/// ends the walk.
pub type Step<'a> = Result<(usize, Record<'a>), (usize, ParseError)>;

impl<'a> Iterator for Records<'a> {
    type Item = Step<'a>;

    fn next(&mut self) -> Option<Step<'a>> {
        if self.done || self.offset >= self.bytes.len() {
            return None;
        }
        match parse_record(&self.bytes[self.offset..]) {
            Ok(r) => {
                let at = self.offset;
                self.offset += r.raw.len();
                Some(Ok((at, r)))
            }
            Err(e) => {
                self.done = true;
                Some(Err((self.offset, e)))
            }
        }
    }
}

/// Reads a segment and decodes its header.
pub fn read_segment(path: &Path) -> io::Result<(Vec<u8>, Result<Header, String>)> {
    let bytes = std::fs::read(path)?;
    let header = Header::decode(&bytes);
    Ok((bytes, header))
}
