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
            self.head = encode_record(
                &mut bytes,
                crate::journal::format::RecordHead {
                    rtype: *t,
                    flags: *fl,
                    seq: self.seq,
                    time_ns: 0,
                },
                &meta,
                &body,
                &self.head,
            );
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

#[test]
fn advancing_within_the_open_segment_goes_on_from_its_offset() {
    let mut j = Journal::new();
    let mut recs = vec![start()];
    for i in 0..20 {
        recs.push(frame("p", &format!("p{i}")));
        recs.push(frame("q", &format!("q{i}")));
    }
    let first = j.segment(None, &recs);
    let mut t = j.tail("p", 1);
    assert_eq!(t.read(10, usize::MAX).unwrap().len(), 5);
    // Spoil a record already read past: going on from the offset never
    // looks at it again (parsing from the start would stop there).
    let path = j.dir.path().join(segment_name(first));
    let mut bytes = std::fs::read(&path).unwrap();
    let mut pos = HEADER_LEN;
    while parse_record(&bytes[pos..]).unwrap().seq != 3 {
        pos += parse_record(&bytes[pos..]).unwrap().raw.len();
    }
    bytes[pos..pos + 4].copy_from_slice(&[0; 4]);
    std::fs::write(&path, &bytes).unwrap();
    t.advance_to(20).unwrap();
    let f = t.read(u64::MAX, usize::MAX).unwrap();
    assert_eq!(f.first().map(|f| f.seq), Some(20));
    assert_eq!(bodies(&f)[0], "p9");
    // Into a later segment: that one is opened.
    j.segment(None, &[start(), frame("p", "later")]);
    let mut t = j.tail("p", 1);
    t.read(4, usize::MAX).unwrap();
    t.advance_to(first + recs.len() as u64).unwrap();
    assert_eq!(bodies(&t.read(u64::MAX, usize::MAX).unwrap()), ["later"]);
}

#[test]
fn read_some_stops_after_its_chunks_and_goes_on_next_time() {
    let mut j = Journal::new();
    // Over 3 MiB of another pool's records, then one of this pool's.
    let big = "x".repeat(60_000);
    let mut recs = vec![start()];
    recs.extend((0..60).map(|_| frame("q", &big)));
    recs.push(frame("p", "mine"));
    j.segment(None, &recs);
    let mut t = j.tail("p", 1);
    let mut calls = 0;
    let got = loop {
        calls += 1;
        let before = t.position();
        let f = t.read_some(u64::MAX, usize::MAX, 1).unwrap();
        if !f.is_empty() {
            break f;
        }
        assert_ne!(t.position(), before, "no progress");
    };
    assert_eq!(bodies(&got), ["mine"]);
    assert!(calls >= 4, "{calls} calls for 3.4 MiB in 1 MiB reads");
}

#[test]
fn frames_read_back_keep_one_connection_number_per_client() {
    let mut j = Journal::new();
    j.segment(None, &[start(), frame("p", "a"), frame("p", "b")]);
    let f = j.tail("p", 1).read(u64::MAX, usize::MAX).unwrap();
    let g = j.tail("p", 1).read(u64::MAX, usize::MAX).unwrap();
    assert_eq!(f[0].conn.id, f[1].conn.id);
    assert_eq!(f[0].conn.id, g[0].conn.id);
    assert_ne!(f[0].conn.id, crate::frame::JOURNAL_CONN_ID);
}
