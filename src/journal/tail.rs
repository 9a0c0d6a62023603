//! Reading one pool's frames back from the journal, in sequence order, from
//! a given seq: how a dispatcher catches up after its backends were down or
//! slow (the journal is the buffer), and where delivery resumes after a
//! restart. Reads with `pread` in chunks; frames are zero-copy slices of
//! the chunk.
//!
//! A segment is read up to its end record (SEGMENT_END, or the FINAL
//! checkpoint of a clean stop: bytes after either are not the journal's,
//! and their frames are never routed). A segment whose written bytes run
//! out with a newer segment beside it (damage found at start-up, where the
//! writer moved on without closing it) is left for the newer one.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::format::{ends_segment, parse_record, tag, ParseError, Record, RecordType, HEADER_LEN};
use super::reader::list_segments;
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
    /// Bytes from here on are not the journal's (damage found at start).
    stop_at: u64,
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
    /// A damaged segment (first seq, offset) not to be read past.
    untrusted: Option<(u64, u64)>,
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
            untrusted: None,
        }
    }

    /// Never reads the segment whose first seq is `u.0` past offset `u.1`
    /// (where start-up recovery found it damaged): its frames from there
    /// on are not routed.
    pub fn untrusted(mut self, u: Option<(u64, u64)>) -> Self {
        self.untrusted = u;
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
        let stop_at = match self.untrusted {
            Some((first, at)) if first == seg.name_seq => at,
            _ => u64::MAX,
        };
        self.segment = Some(OpenSegment {
            file: File::open(&seg.path)?,
            first_seq: seg.name_seq,
            offset: HEADER_LEN as u64,
            ran_out: false,
            stop_at,
        });
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
    /// An unreadable record ends the read; frames taken before it are
    /// returned first, and the error comes with the next read.
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
                    self.past = self.segment.take().map(|s| s.first_seq);
                }
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
        let offset = seg.offset;
        let room = usize::try_from(seg.stop_at.saturating_sub(offset)).unwrap_or(usize::MAX);
        let mut chunk = self.read_at(offset, CHUNK.min(room))?;
        if let Err(ParseError::Incomplete { need, .. }) = parse_record(&chunk) {
            if need > chunk.len() && chunk.len() == CHUNK && need <= room {
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
                    self.segment.as_mut().expect("open").offset = offset + pos as u64;
                    return Err(io::Error::other(format!(
                        "journal {}: unreadable record at offset {} of segment {}: {m}",
                        self.dir.display(),
                        offset + pos as u64,
                        super::format::segment_name(self.segment.as_ref().expect("open").first_seq)
                    )));
                }
            };
            if r.seq > upto {
                status = Chunk::Done;
                break;
            }
            if out.len() >= max {
                status = Chunk::Done;
                break;
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
        if pos > 0 {
            seg.ran_out = false;
        }
        Ok(status)
    }

    /// Up to `len` bytes of the open segment from `offset` (fewer at its end).
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let file = &self.segment.as_ref().expect("open").file;
        let mut buf = BytesMut::zeroed(len);
        let mut got = 0;
        while got < len {
            match file.read_at(&mut buf[got..], offset + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
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
    }

    type Rec<'a> = (RecordType, u8, Option<&'a str>, Vec<u8>);

    impl Journal {
        fn new() -> Self {
            Journal {
                dir: tempfile::tempdir().unwrap(),
                seq: 1,
                head: genesis(&[1; 16]),
                no: 0,
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
                self.head =
                    encode_record(&mut bytes, *t, *fl, self.seq, 0, &meta, body, &self.head);
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
    fn frames_before_an_unreadable_record_are_returned_then_the_error() {
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
        assert!(t.read(u64::MAX, 100).is_err());
        assert_eq!(t.next_seq(), 4);
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
        // The next run's segment (recovery started it past every seq seen).
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
