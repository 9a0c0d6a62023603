use super::*;
use crate::journal::anchors::Anchor;
use crate::journal::format::{encode_record, flags, genesis};

const ID: [u8; 16] = [5; 16];

/// A segment being built: its bytes, and (seq, chain, end) per record.
struct Seg {
    bytes: Vec<u8>,
    head: Hash,
    seq: u64,
    ends: Vec<(u64, Hash, usize)>,
}

impl Seg {
    fn new(first_seq: u64) -> Seg {
        let head = genesis(&ID);
        let bytes = Header {
            journal_id: ID,
            segment_no: 0,
            first_seq,
            prev_chain: head,
        }
        .encode()
        .to_vec();
        Seg {
            bytes,
            head,
            seq: first_seq,
            ends: Vec::new(),
        }
    }

    fn push(&mut self, t: RecordType, fl: u8, body: &[u8]) -> &mut Self {
        self.head = encode_record(
            &mut self.bytes,
            crate::journal::format::RecordHead {
                rtype: t,
                flags: fl,
                seq: self.seq,
                time_ns: 7,
            },
            &[(tag::LISTENER, b"in")],
            body,
            &self.head,
        );
        self.ends.push((self.seq, self.head, self.bytes.len()));
        self.seq += 1;
        self
    }

    fn frame(&mut self, body: &str) -> &mut Self {
        self.push(RecordType::Frame, 0, body.as_bytes())
    }

    fn checkpoint(&mut self, epoch: u64, fl: u8) -> &mut Self {
        let body = CheckpointBody {
            epoch,
            covered_seq: self.seq - 1,
            covered_chain: self.head,
            seal: [0; 32],
        }
        .encode();
        self.push(RecordType::Checkpoint, fl, &body)
    }

    /// SEGMENT_START, two frames, a checkpoint (epoch 3), two frames.
    fn typical() -> Seg {
        let mut s = Seg::new(1);
        s.push(RecordType::SegmentStart, 0, &start_body(0))
            .frame("one")
            .frame("two")
            .checkpoint(3, 0)
            .frame("three")
            .frame(&"four".repeat(100));
        s
    }

    fn anchor(&self, i: usize) -> Anchors {
        let (seq, chain, _) = self.ends[i];
        Anchors {
            lines: vec![Anchor {
                journal_id: ID,
                seq,
                chain,
                epoch: 3,
                seal: [0; 32],
            }],
            ..Anchors::default()
        }
    }
}

fn start_body(no: u64) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..8].copy_from_slice(&no.to_be_bytes());
    b[8..].copy_from_slice(&ID);
    b
}

fn classes(p: &Plan) -> Vec<&'static str> {
    p.alarms.iter().map(|a| a.class).collect()
}

#[test]
fn an_intact_open_segment_is_closed_and_resumes_after_it() {
    let s = Seg::typical();
    let p = plan(Some((1, &s.bytes)), None);
    assert_eq!(p.action, Action::Close);
    assert!(p.alarms.is_empty());
    assert_eq!(p.resume.next_seq, 7);
    assert_eq!(p.resume.prev_chain, Some(s.head));
    assert_eq!(p.resume.journal_id, Some(ID));
    assert_eq!(p.resume.segment_no, 1);
    assert_eq!(p.resume.last_epoch, Some(3));
    // Anchored at its checkpoint: still fine.
    let p = plan(Some((1, &s.bytes)), Some(&s.anchor(3)));
    assert_eq!(p.action, Action::Close);
    assert!(p.alarms.is_empty(), "{:?}", p.alarms);
}

#[test]
fn a_cut_at_every_offset_is_torn_at_the_record_it_falls_in() {
    let s = Seg::typical();
    let starts: Vec<usize> = std::iter::once(HEADER_LEN)
        .chain(s.ends.iter().map(|e| e.2))
        .collect();
    for cut in 0..=s.bytes.len() {
        let p = plan(Some((1, &s.bytes[..cut])), None);
        if cut < starts[1] {
            // No whole record: a segment being created.
            assert!(
                matches!(p.action, Action::RemoveHalfCreated { .. }),
                "cut {cut}: {p:?}"
            );
        } else if starts.contains(&cut) {
            assert_eq!(p.action, Action::Close, "cut {cut}");
        } else {
            let at = *starts.iter().rev().find(|&&b| b < cut).unwrap();
            assert!(
                matches!(&p.action, Action::CutTorn { at: a, .. } if *a == at),
                "cut {cut}: {p:?}"
            );
        }
        assert!(p.alarms.is_empty(), "cut {cut}: {:?}", p.alarms);
    }
}

#[test]
fn a_zero_filled_tail_is_torn() {
    let mut s = Seg::typical();
    let end = s.bytes.len();
    s.bytes.extend_from_slice(&[0; 300]);
    assert!(
        matches!(plan(Some((1, &s.bytes)), None).action, Action::CutTorn { at, .. } if at == end)
    );
    // A record whose end never reached the disk.
    let mut s = Seg::typical();
    let cut = s.ends[4].2 + 10;
    s.bytes.truncate(cut);
    s.bytes.extend_from_slice(&[0; 500]);
    let p = plan(Some((1, &s.bytes)), None);
    assert!(matches!(p.action, Action::CutTorn { .. }), "{p:?}");
}

#[test]
fn every_bit_flip_up_to_the_last_checkpoint_is_tampering() {
    let s = Seg::typical();
    let cp_end = s.ends[3].2;
    for i in 0..s.bytes.len() {
        for bit in [0, 3, 7] {
            let mut b = s.bytes.clone();
            b[i] ^= 1 << bit;
            let p = plan(Some((1, &b)), None);
            assert!(
                !matches!(p.action, Action::Close | Action::Nothing),
                "flip at {i} bit {bit} accepted: {p:?}"
            );
            if i < cp_end {
                assert_eq!(p.action, Action::LeaveDamaged, "flip at {i} bit {bit}");
                assert!(!p.alarms.is_empty());
                // The next segment starts past every seq in this one
                // and never takes this file's name.
                assert!(p.resume.next_seq >= 2, "flip at {i}");
            }
        }
    }
}

#[test]
fn a_complete_record_that_does_not_chain_is_tampering() {
    let mut s = Seg::typical();
    let mut forged = Vec::new();
    encode_record(
        &mut forged,
        crate::journal::format::RecordHead {
            rtype: RecordType::Frame,
            flags: 0,
            seq: s.seq,
            time_ns: 7,
        },
        &[],
        b"forged",
        &[1; 32],
    );
    s.bytes.extend_from_slice(&forged);
    let p = plan(Some((1, &s.bytes)), None);
    assert_eq!(p.action, Action::LeaveDamaged);
    assert_eq!(classes(&p), ["MODIFIED"]);
    assert_eq!(p.resume.next_seq, 8);
}

#[test]
fn anything_after_a_final_checkpoint_is_tampering_even_if_it_chains() {
    let mut s = Seg::typical();
    s.checkpoint(4, flags::FINAL);
    let p = plan(Some((1, &s.bytes)), None);
    assert_eq!(p.action, Action::Nothing);
    assert!(p.alarms.is_empty());
    assert_eq!(p.resume.next_seq, 8);
    assert_eq!(p.resume.last_epoch, Some(4));
    let clean = s.bytes.clone();
    // A forged frame chained onto the final checkpoint.
    s.frame("forged");
    let p = plan(Some((1, &s.bytes)), None);
    assert_eq!(p.action, Action::LeaveDamaged);
    assert_eq!(classes(&p), ["INSERTED"]);
    assert_eq!(p.resume.next_seq, 9, "past the forged seq");
    // Even a few stray bytes.
    let mut b = clean.clone();
    b.extend_from_slice(b"\x00\x00\x01");
    let p = plan(Some((1, &b)), None);
    assert_eq!(p.action, Action::LeaveDamaged);
    assert_eq!(classes(&p), ["INSERTED"]);
}

#[test]
fn an_edited_length_before_a_checkpoint_then_zeros_is_not_a_torn_write() {
    // frames, CP1, frames, CP2, frames; the trailing length of a frame
    // between CP1 and CP2 raised, four zero bytes appended.
    let mut s = Seg::typical();
    s.checkpoint(4, 0).frame("after");
    let at = s.ends[4].2 - 4;
    let mut b = s.bytes.clone();
    let len = u32::from_be_bytes(b[at..at + 4].try_into().unwrap());
    b[at..at + 4].copy_from_slice(&(len + 1).to_be_bytes());
    b.extend_from_slice(&[0; 4]);
    let p = plan(Some((1, &b)), None);
    assert_eq!(p.action, Action::LeaveDamaged, "{p:?}");
    // A real torn write after the last checkpoint, anchored past it:
    // the anchors say records were there, so it is not cut either.
    let mut t = Seg::typical();
    let cut = t.ends[5].2 - 7;
    t.bytes.truncate(cut);
    let mut anchors = t.anchor(3);
    anchors.lines[0].seq = 6;
    let p = plan(Some((1, &t.bytes)), Some(&anchors));
    assert_eq!(p.action, Action::LeaveDamaged, "{p:?}");
    assert_eq!(classes(&p), ["TAIL_TRUNCATED"]);
}

#[test]
fn an_edited_length_with_records_after_it_is_not_a_torn_write() {
    let mut s = Seg::typical();
    s.frame("five").frame("six");
    let at = s.ends[4].2;
    let mut b = s.bytes.clone();
    b[at..at + 4].copy_from_slice(&0x0100_0000u32.to_be_bytes());
    let p = plan(Some((1, &b)), None);
    assert_eq!(p.action, Action::LeaveDamaged, "{p:?}");
}

#[test]
fn half_created_segments_are_removed_unless_anchored_into() {
    for b in [&b""[..], &b"AUDI"[..], &[0u8; 40][..], &MAGIC[..]] {
        let p = plan(Some((9, b)), None);
        assert!(
            matches!(p.action, Action::RemoveHalfCreated { .. }),
            "{b:?}"
        );
    }
    let p = plan(Some((9, b"garbage!")), None);
    assert_eq!(p.action, Action::LeaveDamaged);
    assert_eq!(p.resume.next_seq, 10);
    // A header with no record.
    let s = Seg::new(1);
    assert!(matches!(
        plan(Some((1, &s.bytes)), None).action,
        Action::RemoveHalfCreated { .. }
    ));
    // The anchors say records were in it: not a crash.
    let t = Seg::typical();
    let p = plan(Some((1, &s.bytes)), Some(&t.anchor(3)));
    assert_eq!(p.action, Action::LeaveDamaged);
    assert_eq!(classes(&p), ["TAIL_TRUNCATED"]);
    assert!(p.resume.next_seq >= 2);
}

#[test]
fn the_anchors_bind_the_journal() {
    let s = Seg::typical();
    // Another journal's anchors.
    let mut other = s.anchor(3);
    other.lines[0].journal_id = [6; 16];
    let p = plan(Some((1, &s.bytes)), Some(&other));
    assert_eq!(classes(&p), ["JOURNAL_REPLACED"]);
    assert_eq!(p.action, Action::Close);
    // An anchor whose epoch the journal does not have.
    let mut epoch = s.anchor(3);
    epoch.lines[0].epoch = 50_000;
    assert_eq!(
        classes(&plan(Some((1, &s.bytes)), Some(&epoch))),
        ["MODIFIED"]
    );
    // The segment the anchors contradict is quarantined, and no epoch is
    // taken from the anchor.
    let q = plan(Some((1, &s.bytes)), Some(&epoch));
    assert_eq!(q.action, Action::Quarantine);
    assert_eq!(q.resume.last_epoch, None);
    // Anchored past the end: the tail was cut.
    let mut past = s.anchor(3);
    past.lines[0].seq = 50;
    assert_eq!(
        classes(&plan(Some((1, &s.bytes)), Some(&past))),
        ["TAIL_TRUNCATED"]
    );
    // The anchored checkpoint differs.
    let mut differs = s.anchor(3);
    differs.lines[0].chain = [0; 32];
    assert_eq!(
        classes(&plan(Some((1, &s.bytes)), Some(&differs))),
        ["MODIFIED"]
    );
    // An anchored seq that is not a checkpoint.
    assert_eq!(
        classes(&plan(Some((1, &s.bytes)), Some(&s.anchor(2)))),
        ["MODIFIED"]
    );
    // Wiped: the journal goes on from the anchored head.
    let a = s.anchor(3);
    let p = plan(None, Some(&a));
    assert_eq!(classes(&p), ["SEGMENT_MISSING"]);
    assert_eq!(p.resume.journal_id, Some(ID));
    assert_eq!(p.resume.next_seq, 5);
    assert_eq!(p.resume.prev_chain, Some(s.ends[3].1));
    assert_eq!(p.resume.last_epoch, Some(3));
    assert_ne!(p.resume.segment_no, 0);
    // No journal and no anchors: a new journal.
    let p = plan(None, Some(&Anchors::default()));
    assert_eq!(p.resume.journal_id, None);
    assert!(p.alarms.is_empty());
}
