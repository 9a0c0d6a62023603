//! Reading one pool's frames back from the journal, in sequence order, from
//! a given seq: how a dispatcher catches up after its backends were down or
//! slow (the journal is the buffer), and where delivery resumes after a
//! restart. Reads with `pread` in chunks; frames are zero-copy slices of
//! the chunk.
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
                    let before = match self.link.take() {
                        Some(link) => Some(link),
                        None => last_chain_before(&all, seg.name_seq),
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
        let mut out = Vec::new();
        let mut metas = HashMap::new();
        while out.len() < max && self.next_seq <= upto {
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
                        tracing::warn!(journal = %self.dir.display(), pool = %self.pool, segment_first_seq = seg.first_seq, next = newer, "segment has no end record; going on in the next one");
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
                    self.damaged(first, offset + pos as u64, &m);
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
        if let Some(a) = &self.alarm {
            a.set(1);
        }
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
    }
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
mod tests {
    use super::*;
    use crate::journal::format::{
        encode_record, flags, genesis, segment_name, CheckpointBody, Hash, Header,
    };

    /// Builds segment files by hand: each record is (type, flags, pool, body).
    struct Journal {
        dir: tempfile::TempDir,
        seq: u64,
        head: Hash,
        no: u64,
        /// Chain hash after each record written, by seq.
        chains: std::collections::HashMap<u64, Hash>,
    }

    type Rec<'a> = (RecordType, u8, Option<&'a str>, Vec<u8>);

    impl Journal {
        fn new() -> Self {
            Journal {
                dir: tempfile::tempdir().unwrap(),
                seq: 1,
                head: genesis(&[1; 16]),
                no: 0,
                chains: Default::default(),
            }
        }

        /// Writes one segment starting at the current seq (or `first`).
        fn segment(&mut self, first: Option<u64>, recs: &[Rec<'_>]) -> u64 {
            if let Some(f) = first {
                self.seq = f;
            }
            let first_seq = self.seq;
            let mut bytes = Header {
                journal_id: [1; 16],
                segment_no: self.no,
                first_seq,
                prev_chain: self.head,
            }
            .encode()
            .to_vec();
            for (t, fl, pool, body) in recs {
                let meta: Vec<(u8, &[u8])> = pool
                    .iter()
                    .map(|p| (tag::POOL, p.as_bytes()))
                    .chain([
                        (tag::LISTENER, &b"in"[..]),
                        (tag::CLIENT, &b"127.0.0.1:9"[..]),
                    ])
                    .collect();
                let body = if *t == RecordType::SegmentStart {
                    crate::journal::format::segment_start_body(self.no, &[1; 16]).to_vec()
                } else {
                    body.clone()
                };
                self.head =
                    encode_record(&mut bytes, *t, *fl, self.seq, 0, &meta, &body, &self.head);
                self.chains.insert(self.seq, self.head);
                self.seq += 1;
            }
            self.no += 1;
            std::fs::write(self.dir.path().join(segment_name(first_seq)), bytes).unwrap();
            first_seq
        }

        fn tail(&self, pool: &str, from: u64) -> PoolTail {
            PoolTail::new(self.dir.path().to_owned(), pool.into(), from)
        }
    }

    fn frame<'a>(pool: &'a str, body: &str) -> Rec<'a> {
        (RecordType::Frame, 0, Some(pool), body.as_bytes().to_vec())
    }

    fn start() -> Rec<'static> {
        (RecordType::SegmentStart, 0, None, vec![0; 24])
    }

    fn end() -> Rec<'static> {
        (RecordType::SegmentEnd, 0, None, vec![0; 8])
    }

    fn bodies(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f.data).into_owned())
            .collect()
    }

    /// Three segments of frames for pools p and q.
    fn three_segments() -> Journal {
        let mut j = Journal::new();
        for s in 0..3 {
            let mut recs = vec![start()];
            for i in 0..4 {
                recs.push(frame("p", &format!("p{s}.{i}")));
                recs.push(frame("q", &format!("q{s}.{i}")));
            }
            recs.push(end());
            j.segment(None, &recs);
        }
        j
    }

    #[test]
    fn reads_one_pool_across_segments_in_small_steps() {
        let j = three_segments();
        let mut t = j.tail("p", 1);
        let mut got = Vec::new();
        loop {
            let f = t.read(u64::MAX, 3).unwrap();
            if f.is_empty() {
                break;
            }
            assert!(f.len() <= 3);
            got.extend(bodies(&f));
        }
        let want: Vec<String> = (0..3)
            .flat_map(|s| (0..4).map(move |i| format!("p{s}.{i}")))
            .collect();
        assert_eq!(got, want);
        // Seqs are the records' own.
        let mut t = j.tail("q", 1);
        let f = t.read(u64::MAX, 100).unwrap();
        assert_eq!(f.len(), 12);
        assert_eq!(f[0].seq, 3);
        assert!(f
            .windows(2)
            .all(|w| w[1].seq == w[0].seq + 2 || w[1].seq == w[0].seq + 4));
        // Nothing is read beyond `upto`.
        let mut t = j.tail("p", 1);
        let f = t.read(5, 100).unwrap();
        assert_eq!(bodies(&f), ["p0.0", "p0.1"]);
        assert_eq!(t.next_seq(), 6);
    }

    #[test]
    fn skipping_ahead_past_a_roll_reads_the_later_segment() {
        let j = three_segments();
        let mut t = j.tail("p", 1);
        assert_eq!(bodies(&t.read(u64::MAX, 1).unwrap()), ["p0.0"]);
        // The live stream took the pool up to the third segment's second
        // frame; then the pool falls behind again.
        let third = 1 + 2 * 10;
        t.skip_to(third + 3);
        assert_eq!(
            bodies(&t.read(u64::MAX, 100).unwrap()),
            ["p2.1", "p2.2", "p2.3"]
        );
    }

    #[test]
    fn a_record_larger_than_a_chunk_is_read_whole_between_small_ones() {
        let mut j = Journal::new();
        let big = "x".repeat(CHUNK + 4096);
        j.segment(
            None,
            &[
                start(),
                frame("p", "a"),
                frame("p", &big),
                frame("p", "b"),
                frame("p", &big),
                end(),
            ],
        );
        let mut t = j.tail("p", 1);
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(bodies(&t.read(u64::MAX, 2).unwrap()));
        }
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], "a");
        assert_eq!(got[1], big);
        assert_eq!(got[2], "b");
        assert_eq!(got[3], big);
    }

    #[test]
    fn frames_before_an_unreadable_record_are_returned_and_the_tail_moves_on() {
        let mut j = Journal::new();
        j.segment(
            None,
            &[start(), frame("p", "a"), frame("p", "b"), frame("p", "c")],
        );
        let path = j.dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let c_at = bytes.len() - (crate::journal::format::RECORD_OVERHEAD + 1 + 3 * 3 + 2 + 11 + 1);
        bytes[c_at..c_at + 4].copy_from_slice(&5u32.to_be_bytes());
        std::fs::write(&path, bytes).unwrap();
        let mut t = j.tail("p", 1);
        assert_eq!(bodies(&t.read(u64::MAX, 100).unwrap()), ["a", "b"]);
        // The live segment: nothing newer, so the tail waits (no error
        // loop), and goes on when the writer does.
        assert!(t.read(u64::MAX, 100).unwrap().is_empty());
        assert_eq!(t.next_seq(), 4);
        j.segment(Some(5), &[start(), frame("p", "d")]);
        assert_eq!(bodies(&t.read(u64::MAX, 100).unwrap()), ["d"]);
    }

    /// An earlier run's segments, edited while auditlb was stopped: what
    /// does not chain is never routed, the alarm goes up, and the tail goes
    /// on in the next segment. A raised seq does not make it skip frames.
    #[test]
    fn edited_records_of_earlier_runs_are_not_routed() {
        for edit in ["body", "seq", "link"] {
            let mut j = three_segments();
            let first = segment_name(11);
            let path = j.dir.path().join(&first);
            let mut bytes = std::fs::read(&path).unwrap();
            match edit {
                "body" => {
                    let at = bytes.windows(4).position(|w| w == b"p1.1").unwrap();
                    bytes[at + 3] = b'X';
                }
                "seq" => {
                    // The seq field of the record "p1.1" (seq 14) raised to 28.
                    let at = bytes.windows(4).position(|w| w == b"p1.1").unwrap();
                    let rec = (0..at)
                        .rev()
                        .find(|&o| bytes[o + 4] == 1 && bytes[o + 6..o + 14] == 14u64.to_be_bytes())
                        .unwrap();
                    bytes[rec + 6..rec + 14].copy_from_slice(&28u64.to_be_bytes());
                }
                _ => {
                    // The whole segment re-chained from another start.
                    bytes[48..80].copy_from_slice(&[7; 32]);
                }
            }
            std::fs::write(&path, &bytes).unwrap();
            j.head = j.chains[&30];
            let alarm = prometheus::IntGauge::new("a", "a").unwrap();
            let mut t = j.tail("p", 1).checked_before(100, alarm.clone());
            let mut got = Vec::new();
            for _ in 0..6 {
                got.extend(bodies(&t.read(u64::MAX, 100).unwrap()));
            }
            let want: Vec<&str> = match edit {
                "link" => vec![
                    "p0.0", "p0.1", "p0.2", "p0.3", "p2.0", "p2.1", "p2.2", "p2.3",
                ],
                _ => vec![
                    "p0.0", "p0.1", "p0.2", "p0.3", "p1.0", "p2.0", "p2.1", "p2.2", "p2.3",
                ],
            };
            assert_eq!(got, want, "{edit}");
            assert_eq!(alarm.get(), 1, "{edit}");
            // This run's segments are only parsed (its writer is the only
            // one writing them): the check is what stops the edits.
            if edit != "seq" {
                let mut t = j.tail("p", 1).checked_before(1, alarm.clone());
                assert_eq!(t.read(u64::MAX, 100).unwrap().len(), 12, "{edit}");
            }
        }
    }

    #[test]
    fn nothing_after_a_final_checkpoint_is_read() {
        let mut j = Journal::new();
        let cp = CheckpointBody {
            epoch: 0,
            covered_seq: 2,
            covered_chain: [0; 32],
            seal: [0; 32],
        }
        .encode()
        .to_vec();
        j.segment(
            None,
            &[
                start(),
                frame("p", "a"),
                (RecordType::Checkpoint, flags::FINAL, None, cp),
                // Appended by an intruder after the clean stop.
                frame("p", "forged"),
            ],
        );
        // The next run's segment (recovery started it past every seq seen,
        // linked to the final checkpoint).
        j.head = j.chains[&3];
        j.segment(Some(6), &[start(), frame("p", "b")]);
        let mut t = j.tail("p", 1);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(bodies(&t.read(u64::MAX, 100).unwrap()));
        }
        assert_eq!(got, ["a", "b"]);
    }

    #[test]
    fn a_segment_left_without_an_end_gives_way_to_the_next() {
        let mut j = Journal::new();
        j.segment(None, &[start(), frame("p", "a"), frame("p", "b")]);
        let mut t = j.tail("p", 1);
        assert_eq!(bodies(&t.read(u64::MAX, 100).unwrap()), ["a", "b"]);
        // Still being written: nothing newer, so the tail waits.
        assert!(t.read(u64::MAX, 100).unwrap().is_empty());
        j.segment(Some(10), &[start(), frame("p", "c")]);
        assert_eq!(bodies(&t.read(u64::MAX, 100).unwrap()), ["c"]);
    }
}
