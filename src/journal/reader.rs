//! Reading segment files back: listing a journal directory and walking the
//! records of one segment. Used by recovery, `verify` and `cat`.

use std::io;
use std::path::{Path, PathBuf};

use super::format::{parse_record, parse_segment_name, ParseError, Record, HEADER_LEN};

/// A segment file of a journal directory.
#[derive(Debug, Clone)]
pub struct SegmentFile {
    /// The first seq its name claims.
    pub name_seq: u64,
    pub path: PathBuf,
    /// A regular file (not a link, FIFO, device or directory named like a
    /// segment, which no reader opens).
    pub regular: bool,
}

/// Every `*.seg` entry of `dir`, in name (first seq) order. Entries that
/// are not regular files are listed with `regular: false` (links are not
/// followed), so `verify` can name them and the others skip them.
pub fn list_entries(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(parse_segment_name) {
            out.push(SegmentFile {
                name_seq: seq,
                path: entry.path(),
                regular: entry.file_type()?.is_file(),
            });
        }
    }
    out.sort_by_key(|s| s.name_seq);
    Ok(out)
}

/// The segment files of `dir` that are regular files, in order.
pub fn list_segments(dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let mut out = list_entries(dir)?;
    out.retain(|s| s.regular);
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

/// The largest segment file read back. The writer rolls at
/// `segment-size` (at most 1 GiB) plus one batch; a bigger file is not one
/// it wrote, and reading it whole could exhaust memory.
pub const MAX_SEGMENT_FILE: u64 = 4 << 30;

/// A segment file's bytes, read whole (not mapped: a live writer may cut
/// the file it is appending to after a failed write, and a mapping would
/// then fault). Opening does not follow links or wait on FIFOs, and only
/// regular files up to [`MAX_SEGMENT_FILE`] are read.
pub struct Mapped {
    bytes: Vec<u8>,
}

impl Mapped {
    pub fn open(path: &Path) -> io::Result<Mapped> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        let meta = f.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a regular file", path.display()),
            ));
        }
        if meta.len() > MAX_SEGMENT_FILE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {} bytes, larger than any segment auditlb writes",
                    path.display(),
                    meta.len()
                ),
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        f.by_ref().take(MAX_SEGMENT_FILE).read_to_end(&mut bytes)?;
        Ok(Mapped { bytes })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
