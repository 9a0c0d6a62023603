//! Reading one pool's frames back from the journal, in sequence order, from
//! a given seq: how a dispatcher catches up after its backends were down or
//! slow (the journal is the buffer), and where delivery resumes after a
//! restart, and how a reset connection's replay window is read back. Reads
//! with `pread` in chunks; frames are zero-copy slices of the chunk (the
//! dispatcher copies them out before they wait anywhere).
//!
//! A segment is read up to its end record (SEGMENT_END, or the FINAL
//! checkpoint of a clean stop: bytes after either are not the journal's,
//! and their frames are never routed). Segments of earlier runs (before
//! `checked_before`: written by a process that is gone, so open to edits
//! while auditlb was stopped) are checked record by record as they are
//! read ([`ChainCheck`]), and linked to the segment before: at the first
//! record that does not parse or chain, the rest of that segment is not
//! routed, the tamper alarm goes up, and the tail goes on in the next
//! segment. This run's own segments are only parsed (its writer is the one
//! process writing them). A segment whose written bytes run out with a
//! newer segment beside it (left by a crash or damage) gives way to the
//! newer one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::format::{
    ends_segment, parse_record, tag, Hash, Header, ParseError, Record, RecordType, HEADER_LEN,
};
use super::reader::{list_segments, ChainCheck};
use crate::frame::{ConnMeta, Frame};

const CHUNK: usize = 1 << 20;

/// The segment a tail reads.
struct OpenSegment {
    file: File,
    /// The first seq its name claims.
    first_seq: u64,
    /// Byte offset of the next record.
    offset: u64,
    /// Its bytes ran out once while a newer segment existed: if they still
    /// do, it is left for the newer one.
    ran_out: bool,
    /// An earlier run's segment: each record is checked before it is used.
    check: Option<ChainCheck>,
    /// It broke its chain (or did not parse): nothing more is read from it.
    damaged: bool,
}

/// A cursor over one pool's frames in a journal directory.
pub struct PoolTail {
    dir: PathBuf,
    pool: String,
    segment: Option<OpenSegment>,
    /// The seq of the next record to look at.
    next_seq: u64,
    /// First seq of the last segment read to its end record: it and older
    /// segments are done (bytes after an end record are never read).
    past: Option<u64>,
    /// The last record's (listener, client) and its connection.
    last_meta: Option<(Vec<u8>, Vec<u8>, Arc<ConnMeta>)>,
    /// Segments whose first seq is below this are checked as they are read.
    checked_before: u64,
    /// Raised when a checked segment breaks its chain.
    alarm: Option<prometheus::IntGauge>,
    /// Chain hash that ended the last checked segment read to its end: the
    /// next segment's header must link to it.
    link: Option<Hash>,
    /// Damage is reported (alarm, ALARM file, error log); a fork re-reading
    /// what the dispatcher's own tail already read only logs it at debug.
    report: bool,
}

/// What reading the open segment once gave.
enum Chunk {
    /// Records were looked at (maybe none of this pool's).
    Progress,
    /// Reached `upto` or `max`: stop for now.
    Done,
    /// The segment's end record: go on in the next segment.
    Ended,
    /// No more complete records written in this segment yet.
    Dry,
    /// The segment broke its chain or does not parse: go on in the next.
    Damaged,
}

impl PoolTail {
    pub fn new(dir: PathBuf, pool: String, from_seq: u64) -> Self {
        Self {
            dir,
            pool,
            segment: None,
            next_seq: from_seq,
            past: None,
            last_meta: None,
            checked_before: u64::MAX,
            alarm: None,
            link: None,
            report: true,
        }
    }

    /// Trusts only what it checked in segments that start before seq
    /// `first_of_this_run` (this run's own are only parsed); a segment that
    /// breaks its chain sets `alarm`.
    pub fn checked_before(mut self, first_of_this_run: u64, alarm: prometheus::IntGauge) -> Self {
        self.checked_before = first_of_this_run;
        self.alarm = Some(alarm);
        self
    }

    /// A second tail over the same pool and journal, from `from_seq`, with
    /// the same checks (for reading frames back out of order: a reset
    /// connection's replay window).
    pub fn fork(&self, from_seq: u64) -> PoolTail {
        PoolTail {
            dir: self.dir.clone(),
            pool: self.pool.clone(),
            segment: None,
            next_seq: from_seq,
            past: None,
            last_meta: None,
            checked_before: self.checked_before,
            alarm: self.alarm.clone(),
            link: None,
            report: false,
        }
    }

    /// Where it is: the next seq, and the open segment and offset in it.
    pub fn position(&self) -> (u64, Option<(u64, u64)>) {
        (
            self.next_seq,
            self.segment.as_ref().map(|s| (s.first_seq, s.offset)),
        )
    }

    /// The same tail afresh from `from_seq` (what stands in for this one
    /// while it reads on another thread).
    pub fn reopen(&self, from_seq: u64) -> PoolTail {
        PoolTail {
            report: self.report,
            ..self.fork(from_seq)
        }
    }

    /// Moves ahead to `seq` like [`Self::skip_to`], but goes on from where
    /// it is in the open segment when `seq` is in it (no segment after it
    /// starts at or before `seq`), instead of parsing it again from its
    /// start.
    pub fn advance_to(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.next_seq {
            return Ok(());
        }
        if let Some(seg) = &self.segment {
            let first = seg.first_seq;
            let later = list_segments(&self.dir)?
                .iter()
                .any(|s| s.name_seq > first && s.name_seq <= seq);
            if !later {
                self.next_seq = seq;
                return Ok(());
            }
        }
        self.skip_to(seq);
        Ok(())
    }

    /// The seq of the next record this tail will look at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Skips ahead (frames before `seq` are known to be taken care of). The
    /// segment holding `seq` is looked up again at the next read.
    pub fn skip_to(&mut self, seq: u64) {
        if seq > self.next_seq {
            self.next_seq = seq;
            self.segment = None;
        }
    }

    /// Opens the segment holding `next_seq` (the newest whose first seq is
    /// not past it), among those after the last one read to its end. False
    /// when the journal has none yet.
    fn open(&mut self) -> io::Result<bool> {
        let mut segs = list_segments(&self.dir)?;
        let all = segs.clone();
        if let Some(past) = self.past {
            segs.retain(|s| s.name_seq > past);
        }
        let seg = match segs.iter().rev().find(|s| s.name_seq <= self.next_seq) {
            Some(s) => s,
            None => match segs.first() {
                // The journal goes on later than the cursor: what was
                // before is not there to read.
                Some(s) => {
                    tracing::warn!(journal = %self.dir.display(), pool = %self.pool, from = self.next_seq, first = s.name_seq, "no segment holds the next seq; reading on from the next segment");
                    self.next_seq = s.name_seq;
                    // Not the segment after the one read last (retention
                    // deleted what was between): nothing to link to.
                    self.link = None;
                    s
                }
                None => return Ok(false),
            },
        };
        let file = File::open(&seg.path)?;
        let mut segment = OpenSegment {
            file,
            first_seq: seg.name_seq,
            offset: HEADER_LEN as u64,
            ran_out: false,
            check: None,
            damaged: false,
        };
        if seg.name_seq < self.checked_before {
            let mut head = [0u8; HEADER_LEN];
            let got = read_full(&segment.file, &mut head, 0)?;
            let header = Header::decode(&head[..got])
                .map_err(|m| format!("segment header: {m}"))
                .and_then(|h| {
                    if h.first_seq != seg.name_seq {
                        return Err(format!("header says first seq {}", h.first_seq));
                    }
                    // Linked to the segment before it.
                    // The head of the segment read last links this one
                    // only if this one comes right after it.
                    let next_after_past = segs.first().map(|s| s.name_seq) == Some(seg.name_seq);
                    let before = match self.link.take() {
                        Some(link) if self.past.is_some() && next_after_past => Some(link),
                        _ => last_chain_before(&all, seg.name_seq),
                    };
                    match before {
                        Some(link) if link != h.prev_chain => {
                            Err("does not link to the segment before it".into())
                        }
                        _ => Ok(h),
                    }
                });
            match header {
                Ok(h) => segment.check = Some(ChainCheck::new(h)),
                Err(why) => {
                    self.damaged(seg.name_seq, 0, &why);
                    segment.damaged = true;
                }
            }
        }
        self.link = None;
        self.segment = Some(segment);
        Ok(true)
    }

    /// The segment after the open one, if the journal has one.
    fn newer_segment(&self) -> io::Result<Option<u64>> {
        let first = self.segment.as_ref().map_or(0, |s| s.first_seq);
        Ok(list_segments(&self.dir)?
            .iter()
            .map(|s| s.name_seq)
            .find(|&n| n > first))
    }

    /// This pool's frames among records `next_seq..=upto`, at most `max`.
    /// An I/O error ends the read; frames taken before it are returned
    /// first, and the error comes with the next read.
    pub fn read(&mut self, upto: u64, max: usize) -> io::Result<Vec<Frame>> {
        self.read_some(upto, max, usize::MAX)
    }

    /// [`Self::read`], stopping after `chunks` reads of the files (each at
    /// most 1 MiB, or one record larger than that): bounded work per call
    /// however sparse this pool's frames are.
    pub fn read_some(&mut self, upto: u64, max: usize, chunks: usize) -> io::Result<Vec<Frame>> {
        let mut out = Vec::new();
        let mut metas = HashMap::new();
        let mut reads = 0;
        while out.len() < max && self.next_seq <= upto && reads < chunks {
            reads += 1;
            if self.segment.is_none() && !self.open()? {
                break;
            }
            match self.read_chunk(upto, max, &mut out, &mut metas) {
                Ok(Chunk::Progress) => {}
                Ok(Chunk::Done) => break,
                Ok(Chunk::Ended) => {
                    let seg = self.segment.take().expect("open");
                    self.link = seg.check.as_ref().map(|c| *c.head());
                    self.past = Some(seg.first_seq);
                }
                Ok(Chunk::Damaged) => match self.newer_segment()? {
                    // The live segment: wait for the writer to move on.
                    None => break,
                    Some(newer) => {
                        self.next_seq = self.next_seq.max(newer);
                        self.past = self.segment.take().map(|s| s.first_seq);
                    }
                },
                Ok(Chunk::Dry) => match self.newer_segment()? {
                    None => break,
                    Some(newer) => {
                        let seg = self.segment.as_mut().expect("open");
                        if !seg.ran_out {
                            // Its end record may have been written just now:
                            // read once more before leaving it.
                            seg.ran_out = true;
                            continue;
                        }
                        let (first, offset, checked) =
                            (seg.first_seq, seg.offset, seg.check.is_some());
                        if checked {
                            // An earlier run's segment always ends with an
                            // end record (a roll writes it before the next
                            // file exists; recovery closes a crashed one):
                            // its end was cut away.
                            self.damaged(first, offset, "the segment ends without its end record");
                        } else {
                            tracing::warn!(journal = %self.dir.display(), pool = %self.pool, segment_first_seq = first, next = newer, "segment has no end record; going on in the next one");
                        }
                        self.next_seq = self.next_seq.max(newer);
                        self.past = self.segment.take().map(|s| s.first_seq);
                    }
                },
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    /// Reads the open segment from its offset: one chunk, or one record
    /// larger than a chunk.
    fn read_chunk(
        &mut self,
        upto: u64,
        max: usize,
        out: &mut Vec<Frame>,
        metas: &mut HashMap<(Bytes, Bytes), Arc<ConnMeta>>,
    ) -> io::Result<Chunk> {
        let seg = self.segment.as_ref().expect("open");
        if seg.damaged {
            return Ok(Chunk::Damaged);
        }
        let offset = seg.offset;
        let mut chunk = self.read_at(offset, CHUNK)?;
        if let Err(ParseError::Incomplete { need, .. }) = parse_record(&chunk) {
            if need > chunk.len() && chunk.len() == CHUNK {
                // A record larger than a chunk: read it whole.
                chunk = self.read_at(offset, need)?;
            }
        }
        let mut pos = 0;
        let mut status = Chunk::Dry;
        while pos < chunk.len() {
            let r = match parse_record(&chunk[pos..]) {
                Ok(r) => r,
                Err(ParseError::Incomplete { .. }) => break,
                Err(ParseError::Malformed(m)) => {
                    let first = self.segment.as_ref().expect("open").first_seq;
                    self.damaged(first, offset + pos as u64, &m.to_string());
                    status = Chunk::Damaged;
                    break;
                }
            };
            if r.seq > upto || out.len() >= max {
                status = Chunk::Done;
                break;
            }
            let seg = self.segment.as_mut().expect("open");
            if let Some(check) = &mut seg.check {
                if let Err(why) = check.check(&r) {
                    let first = seg.first_seq;
                    self.damaged(first, offset + pos as u64, &why);
                    status = Chunk::Damaged;
                    break;
                }
            }
            pos += r.raw.len();
            status = Chunk::Progress;
            if r.seq >= self.next_seq {
                self.next_seq = r.seq.saturating_add(1);
                self.take(&chunk, &r, out, metas);
            }
            if ends_segment(&r) {
                status = Chunk::Ended;
                break;
            }
        }
        let seg = self.segment.as_mut().expect("open");
        seg.offset = offset + pos as u64;
        if matches!(status, Chunk::Damaged) {
            seg.damaged = true;
        }
        if pos > 0 {
            seg.ran_out = false;
        }
        Ok(status)
    }

    /// A checked segment broke its chain at `offset`: nothing more of it is
    /// routed, and the alarm goes up.
    fn damaged(&self, first_seq: u64, offset: u64, why: &str) {
        if !self.report {
            tracing::debug!(journal = %self.dir.display(), pool = %self.pool, segment = %super::format::segment_name(first_seq), offset, reason = %why, "damaged segment read again (reported when first read)");
            return;
        }
        if let Some(a) = &self.alarm {
            a.set(1);
        }
        super::writer::record_alarms(
            &self.dir,
            &[super::recover::Alarm {
                class: "MODIFIED",
                message: format!(
                    "pool {}: segment {} at offset {offset}: {why}; frames from there on in it were not routed",
                    self.pool,
                    super::format::segment_name(first_seq)
                ),
            }],
        );
        tracing::error!(
            journal = %self.dir.display(),
            pool = %self.pool,
            segment = %super::format::segment_name(first_seq),
            offset,
            reason = %why,
            "journal damaged: frames from here on in this segment are not routed; run `auditlb verify`"
        );
    }

    /// Up to `len` bytes of the open segment from `offset` (fewer at its end).
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = &self.segment.as_ref().expect("open").file;
        let mut buf = BytesMut::zeroed(len);
        let got = read_full(file, &mut buf, offset)?;
        buf.truncate(got);
        Ok(buf.freeze())
    }

    /// Takes record `r` (a slice of `chunk`): a frame of this pool becomes
    /// a `Frame`.
    fn take(
        &mut self,
        chunk: &Bytes,
        r: &Record<'_>,
        out: &mut Vec<Frame>,
        metas: &mut HashMap<(Bytes, Bytes), Arc<ConnMeta>>,
    ) {
        if r.kind() != Some(RecordType::Frame)
            || r.meta_value(tag::POOL) != Some(self.pool.as_bytes())
        {
            return;
        }
        let slice = |s: &[u8]| chunk.slice_ref(s);
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
                return;
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
                    conn_id_of(&listener, &client),
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
    }
}

/// A connection number for frames read back from the files, where the
/// original connection is not known: the same for one (listener, client),
/// so a client's frames keep to one upstream connection of a backend (and
/// keep their order there) while different clients spread over them.
fn conn_id_of(listener: &[u8], client: &[u8]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::hash::DefaultHasher::new();
    listener.hash(&mut h);
    client.hash(&mut h);
    // Clear of the journal's own number.
    h.finish() >> 1
}

/// Reads into `buf` from `offset` until it is full or the file ends.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The chain hash that ends the segment before the one named `name_seq`,
/// when that segment ends properly (its last record is SEGMENT_END or a
/// FINAL checkpoint); `None` when there is none, or it does not end so (a
/// damaged segment left as evidence, reported when it is read).
fn last_chain_before(segs: &[super::reader::SegmentFile], name_seq: u64) -> Option<Hash> {
    let before = segs.iter().rev().find(|s| s.name_seq < name_seq)?;
    let file = File::open(&before.path).ok()?;
    let size = file.metadata().ok()?.len();
    let mut len = [0u8; 4];
    if size < (HEADER_LEN + 4) as u64 || read_full(&file, &mut len, size - 4).ok()? < 4 {
        return None;
    }
    let len = u64::from(u32::from_be_bytes(len));
    if len > size.saturating_sub(HEADER_LEN as u64) || len > 1 << 30 {
        return None;
    }
    let mut rec = vec![0u8; len as usize];
    if read_full(&file, &mut rec, size - len).ok()? < rec.len() {
        return None;
    }
    let r = parse_record(&rec).ok()?;
    (r.raw.len() == rec.len() && ends_segment(&r)).then_some(r.chain)
}

#[cfg(test)]
mod tests;
