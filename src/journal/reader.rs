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

/// A segment file's bytes. [`Mapped::open`] reads them whole (not mapped:
/// a live writer may cut the file it is appending to after a failed write,
/// and a mapping would then fault), for the newest segment in `verify` and
/// `cat`. [`Mapped::map`] maps them: closed segments (no writer cuts
/// those), and everything at start-up, when no writer runs and a file as
/// large as a crash or an intruder can leave must not cost its size in
/// memory.
/// Opening does not follow links or wait on FIFOs, and only regular files
/// up to [`MAX_SEGMENT_FILE`] are read.
pub struct Mapped {
    inner: Inner,
}

enum Inner {
    Owned(Vec<u8>),
    Map { ptr: *mut libc::c_void, len: usize },
}

// SAFETY: a mapping is private, read-only and owned by this value.
unsafe impl Send for Mapped {}
unsafe impl Sync for Mapped {}

impl Mapped {
    fn regular(path: &Path) -> io::Result<(std::fs::File, u64)> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
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
        Ok((f, meta.len()))
    }

    /// Bytes read from elsewhere (a segment fetched from the archive).
    pub fn from_vec(bytes: Vec<u8>) -> Mapped {
        Mapped {
            inner: Inner::Owned(bytes),
        }
    }

    /// Reads the file whole.
    pub fn open(path: &Path) -> io::Result<Mapped> {
        use std::io::Read;
        let (f, len) = Self::regular(path)?;
        let mut bytes = Vec::with_capacity(len as usize);
        f.take(MAX_SEGMENT_FILE).read_to_end(&mut bytes)?;
        Ok(Mapped {
            inner: Inner::Owned(bytes),
        })
    }

    /// Maps the file read-only (start-up: nothing else writes it).
    pub fn map(path: &Path) -> io::Result<Mapped> {
        Self::map_with(path, 0)
    }

    /// Maps a closed segment and reads it in at once (`verify`, `cat`: all
    /// of it is read, and the kernel does it faster in one go).
    pub fn map_populated(path: &Path) -> io::Result<Mapped> {
        Self::map_with(path, libc::MAP_POPULATE)
    }

    fn map_with(path: &Path, extra: libc::c_int) -> io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let (f, len) = Self::regular(path)?;
        let len = usize::try_from(len).map_err(io::Error::other)?;
        if len == 0 {
            return Ok(Mapped {
                inner: Inner::Owned(Vec::new()),
            });
        }
        // SAFETY: a fresh read-only private mapping of an open regular
        // file, checked below and unmapped in Drop, of its length now.
        // Callers map only segments nobody cuts while they read: closed
        // ones (the writer cuts only its open segment, after a failed
        // write; recovery only the newest, at start-up), or any at start-up
        // before this process writes; retention unlinks, which leaves a
        // mapping valid.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE | extra,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped {
            inner: Inner::Map { ptr, len },
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.inner {
            Inner::Owned(b) => b,
            // SAFETY: ptr..ptr+len is a live mapping owned by self.
            Inner::Map { ptr, len } => unsafe {
                std::slice::from_raw_parts(*ptr as *const u8, *len)
            },
        }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if let Inner::Map { ptr, len } = self.inner {
            // SAFETY: unmapping exactly what mmap returned.
            unsafe {
                libc::munmap(ptr, len);
            }
        }
    }
}

/// Highest seq a record may carry: far beyond what a journal reaches
/// (2^62 records), so seq arithmetic never overflows on crafted input.
pub const MAX_SEQ: u64 = 1 << 62;

/// The rules each record of a segment keeps, checked one record at a time
/// in order: it has the next seq, it chains onto the record before (the
/// first onto the header's previous chain hash), and SEGMENT_START opens
/// the segment repeating the header. What reads earlier runs' records back
/// (a pool's tail, the cursor scan) trusts nothing it has not checked.
#[derive(Debug, Clone)]
pub struct ChainCheck {
    header: super::format::Header,
    head: super::format::Hash,
    next_seq: u64,
    records: u64,
}

impl ChainCheck {
    pub fn new(header: super::format::Header) -> ChainCheck {
        ChainCheck {
            head: header.prev_chain,
            next_seq: header.first_seq,
            header,
            records: 0,
        }
    }

    /// Checks the next record; `Err` says why it breaks the chain.
    pub fn check(&mut self, r: &Record<'_>) -> Result<(), String> {
        use super::format::{chain_step, record_digest, segment_start_mismatch};
        if r.seq != self.next_seq || r.seq >= MAX_SEQ {
            return Err(format!("seq {} where {} was next", r.seq, self.next_seq));
        }
        let chain = chain_step(&self.head, r.seq, &record_digest(r.raw));
        if chain != r.chain {
            return Err(format!("the record of seq {} does not chain", r.seq));
        }
        if let Some(why) = segment_start_mismatch(&self.header, self.records, r) {
            return Err(format!("seq {}: {why}", r.seq));
        }
        self.head = chain;
        self.next_seq += 1;
        self.records += 1;
        Ok(())
    }

    /// Chain hash of the last record checked (the header's before any).
    pub fn head(&self) -> &super::format::Hash {
        &self.head
    }
}

/// The records of a segment that parse and chain, from its header on.
pub struct Chained<'a> {
    /// Each with its byte offset.
    pub records: Vec<(usize, Record<'a>)>,
    /// Where and why the walk stopped early (`None`: it reached the end).
    /// Records after a break are not returned: nothing checks them.
    pub broken: Option<(usize, String)>,
}

/// The records of a segment's bytes that parse and chain.
pub fn chained(bytes: &[u8]) -> Chained<'_> {
    let header = match super::format::Header::decode(bytes) {
        Ok(h) => h,
        Err(m) => {
            return Chained {
                records: Vec::new(),
                broken: Some((0, format!("segment header: {m}"))),
            }
        }
    };
    let mut check = ChainCheck::new(header);
    let mut out = Vec::new();
    for step in Records::new(bytes) {
        match step {
            Ok((at, r)) => {
                if let Err(why) = check.check(&r) {
                    return Chained {
                        records: out,
                        broken: Some((at, why)),
                    };
                }
                out.push((at, r));
            }
            Err((at, e)) => {
                return Chained {
                    records: out,
                    broken: Some((at, format!("{e:?}"))),
                }
            }
        }
    }
    Chained {
        records: out,
        broken: None,
    }
}
