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

/// A segment file mapped read-only into memory: verify and cat read
/// hundreds of MiB without copying them or zeroing a buffer first.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is private, read-only and owned by this value.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    pub fn open(path: &Path) -> io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path)?;
        let len = usize::try_from(f.metadata()?.len()).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh read-only private mapping of an open file; the
        // pointer is checked below and unmapped in Drop. A segment being
        // truncated while mapped would fault: the journal only ever appends
        // to the open segment and truncates at start-up, before serving.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr..ptr+len is a live mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping exactly what mmap returned.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}
