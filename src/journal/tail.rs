//! Reading one pool's frames back from the journal, in sequence order, from
//! a given seq: how a dispatcher catches up after its backends were down or
//! slow (the journal is the buffer), and where delivery resumes after a
//! restart. Reads with `pread` in chunks; frames are zero-copy slices of
//! the chunk.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::format::{parse_record, tag, ParseError, RecordType, HEADER_LEN};
use super::reader::list_segments;
use crate::frame::{ConnMeta, Frame};

const CHUNK: usize = 1 << 20;

/// A cursor over one pool's frames in a journal directory.
pub struct PoolTail {
    dir: PathBuf,
    pool: String,
    /// Open segment and the byte offset of the next record in it.
    file: Option<(File, u64)>,
    /// The seq of the next record to look at.
    next_seq: u64,
    /// The last record's (listener, client) and its connection.
    last_meta: Option<(Vec<u8>, Vec<u8>, Arc<ConnMeta>)>,
}

impl PoolTail {
    pub fn new(dir: PathBuf, pool: String, from_seq: u64) -> Self {
        Self {
            dir,
            pool,
            file: None,
            next_seq: from_seq,
            last_meta: None,
        }
    }

    /// The seq of the next record this tail will look at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Skips ahead (frames before `seq` are known to be taken care of).
    pub fn skip_to(&mut self, seq: u64) {
        if seq > self.next_seq {
            self.next_seq = seq;
        }
    }

    fn open_for(&mut self, seq: u64) -> io::Result<bool> {
        let segs = list_segments(&self.dir)?;
        let Some(seg) = segs
            .iter()
            .rev()
            .find(|s| s.name_seq <= seq)
            .or(segs.first())
        else {
            return Ok(false);
        };
        self.file = Some((File::open(&seg.path)?, HEADER_LEN as u64));
        Ok(true)
    }

    /// This pool's frames among records `next_seq..=upto`, at most `max`.
    pub fn read(&mut self, upto: u64, max: usize) -> io::Result<Vec<Frame>> {
        let mut out = Vec::new();
        let mut metas: HashMap<(Bytes, Bytes), Arc<ConnMeta>> = HashMap::new();
        while out.len() < max && self.next_seq <= upto {
            if self.file.is_none() && !self.open_for(self.next_seq)? {
                break;
            }
            let mut offset = self.file.as_ref().expect("opened above").1;
            let mut buf = BytesMut::zeroed(CHUNK);
            let n = self.read_at(&mut buf, offset)?;
            buf.truncate(n);
            let chunk = buf.freeze();
            let mut pos = 0;
            let mut progressed = false;
            let mut need_more = false;
            while pos < chunk.len() && out.len() < max {
                let r = match parse_record(&chunk[pos..]) {
                    Ok(r) => r,
                    Err(ParseError::Incomplete { need, .. }) => {
                        if need > CHUNK && pos == 0 {
                            // A record larger than a chunk: read it whole.
                            let mut big = BytesMut::zeroed(need);
                            let got = self.read_at(&mut big, offset)?;
                            if got < need {
                                need_more = true;
                                break;
                            }
                            let big = big.freeze();
                            let r = parse_record(&big)
                                .map_err(|e| io::Error::other(format!("{e:?}")))?;
                            let len = r.raw.len();
                            if r.seq > upto {
                                return Ok(out);
                            }
                            if r.seq >= self.next_seq {
                                self.take(&big, 0, &mut out, &mut metas)?;
                            }
                            offset += len as u64;
                            progressed = true;
                            continue;
                        }
                        need_more = true;
                        break;
                    }
                    Err(ParseError::Malformed(m)) => {
                        return Err(io::Error::other(format!(
                            "journal {}: unreadable record at offset {}: {m}",
                            self.dir.display(),
                            offset + pos as u64
                        )))
                    }
                };
                let len = r.raw.len();
                if r.seq > upto {
                    return Ok(out);
                }
                if r.seq >= self.next_seq {
                    self.take(&chunk, pos, &mut out, &mut metas)?;
                }
                pos += len;
                progressed = true;
            }
            offset += pos as u64;
            self.file.as_mut().expect("open").1 = offset;
            if out.len() >= max {
                break;
            }
            if !progressed || (need_more && pos == 0) || n == 0 {
                // End of what is written in this segment: the next segment,
                // if the journal has moved on to it, else wait.
                let segs = list_segments(&self.dir)?;
                match segs.iter().find(|s| s.name_seq == self.next_seq) {
                    Some(s) => self.file = Some((File::open(&s.path)?, HEADER_LEN as u64)),
                    None => break,
                }
            }
        }
        Ok(out)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let (file, _) = self.file.as_ref().expect("open");
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        Ok(got)
    }

    /// Takes the record at `chunk[pos..]` (seq >= next_seq): a frame of this
    /// pool becomes a `Frame`; every record advances `next_seq`.
    fn take(
        &mut self,
        chunk: &Bytes,
        pos: usize,
        out: &mut Vec<Frame>,
        metas: &mut HashMap<(Bytes, Bytes), Arc<ConnMeta>>,
    ) -> io::Result<()> {
        let r = parse_record(&chunk[pos..]).map_err(|e| io::Error::other(format!("{e:?}")))?;
        self.next_seq = r.seq + 1;
        if r.kind() != Some(RecordType::Frame)
            || r.meta_value(tag::POOL) != Some(self.pool.as_bytes())
        {
            return Ok(());
        }
        let base = chunk.as_ptr() as usize;
        let slice = |s: &[u8]| {
            chunk.slice(s.as_ptr() as usize - base..s.as_ptr() as usize - base + s.len())
        };
        let listener_raw = r.meta_value(tag::LISTENER).unwrap_or(b"");
        let client_raw = r.meta_value(tag::CLIENT).unwrap_or(b"");
        // A session's frames are journaled together: most records share
        // the previous record's connection.
        if let Some((l, c, meta)) = &self.last_meta {
            if l == listener_raw && c == client_raw {
                let mut f = Frame::new(slice(r.body), meta.clone());
                f.seq = r.seq;
                f.time_ns = r.time_ns;
                out.push(f);
                return Ok(());
            }
        }
        let listener = slice(listener_raw);
        let client = slice(client_raw);
        let meta = metas
            .entry((listener.clone(), client.clone()))
            .or_insert_with(|| {
                let peer = std::str::from_utf8(&client)
                    .ok()
                    .and_then(|c| c.parse::<SocketAddr>().ok())
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                Arc::new(ConnMeta::new(
                    0,
                    String::from_utf8_lossy(&listener).into(),
                    peer,
                ))
            })
            .clone();
        self.last_meta = Some((listener.to_vec(), client.to_vec(), meta.clone()));
        let mut f = Frame::new(slice(r.body), meta);
        f.seq = r.seq;
        f.time_ns = r.time_ns;
        out.push(f);
        Ok(())
    }
}
