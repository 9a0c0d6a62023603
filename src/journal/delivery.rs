//! Delivery cursors in the journal: the DELIVERY_CURSOR record a pool (or
//! a mirror backend) leaves at every checkpoint where its cursor moved, at
//! its start and at a clean stop, and where delivery resumes after a
//! restart. Settled ranges per backend are DELIVERY records, a type of
//! their own, so one can never be read as the other.

use std::path::Path;

use super::format::{tag, Record, RecordType};
use super::reader::{chained, list_segments, Mapped};

/// A cursor record's body: the seq below which every frame is settled.
pub fn encode(below: u64) -> [u8; 8] {
    below.to_be_bytes()
}

/// The (delivery name, cursor) a record carries, if it is a cursor record.
pub fn decode<'a>(r: &Record<'a>) -> Option<(&'a [u8], u64)> {
    if r.kind() != Some(RecordType::Cursor) {
        return None;
    }
    let name = r.meta_value(tag::POOL)?;
    let below = u64::from_be_bytes(r.body.try_into().ok()?);
    Some((name, below))
}

/// Where each delivery name resumes: the cursor of its newest cursor
/// record in the journal in `dir`, never beyond `start_seq` (this run's
/// first seq: a cursor past it is not a cursor this journal wrote), or
/// `None` when the journal has none for it. Segments are read newest first
/// and the walk stops at the first segment that holds cursors (every
/// segment opens with all of its run's cursors, and each run records them
/// as it starts), so a pool new to the config costs no scan of the whole
/// journal. Only records that chain from their segment's header count.
pub fn resume(dir: &Path, names: &[String], start_seq: u64) -> Vec<Option<u64>> {
    let mut found: Vec<Option<u64>> = vec![None; names.len()];
    let Ok(segs) = list_segments(dir) else {
        return found;
    };
    for seg in segs.iter().rev() {
        let Ok(mapped) = Mapped::map(&seg.path) else {
            continue;
        };
        let mut last: Vec<Option<u64>> = vec![None; names.len()];
        // Only records that chain: a cursor forged after damage would skip
        // every frame before it.
        let walk = chained(mapped.bytes());
        if let Some((at, why)) = walk.broken {
            if at < mapped.bytes().len() {
                tracing::warn!(segment = %seg.path.display(), offset = at, reason = %why, "delivery cursors after damage are not trusted");
            }
        }
        let mut any = false;
        for (_, r) in walk.records {
            if r.seq >= start_seq {
                break;
            }
            if let Some((name, below)) = decode(&r) {
                any = true;
                if let Some(i) = names.iter().position(|n| n.as_bytes() == name) {
                    last[i] = Some(below.min(start_seq));
                }
            }
        }
        for (f, l) in found.iter_mut().zip(last) {
            if f.is_none() {
                *f = l;
            }
        }
        // Each segment opens with every cursor of its run: one that holds
        // cursors holds all there are, and a name missing there is new (its
        // pool was not configured then). The scan never reads further.
        if any || found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::format::{
        encode_ranges, encode_record, flags, genesis, segment_name, Header,
    };

    /// Writes a segment of (type, flags, name, body) records from `first`.
    fn segment(dir: &Path, first: u64, recs: &[(RecordType, u8, &str, Vec<u8>)]) {
        let mut head = genesis(&[1; 16]);
        let mut b = Header {
            journal_id: [1; 16],
            segment_no: first,
            first_seq: first,
            prev_chain: head,
        }
        .encode()
        .to_vec();
        let start = crate::journal::format::segment_start_body(first, &[1; 16]);
        head = encode_record(
            &mut b,
            crate::journal::format::RecordHead {
                rtype: RecordType::SegmentStart,
                flags: 0,
                seq: first,
                time_ns: 0,
            },
            &[],
            &start,
            &head,
        );
        for (i, (t, fl, name, body)) in recs.iter().enumerate() {
            let seq = first + 1 + i as u64;
            head = encode_record(
                &mut b,
                crate::journal::format::RecordHead {
                    rtype: *t,
                    flags: *fl,
                    seq,
                    time_ns: 0,
                },
                &[(tag::POOL, name.as_bytes())],
                body,
                &head,
            );
        }
        std::fs::write(dir.join(segment_name(first)), b).unwrap();
    }

    #[test]
    fn the_newest_cursor_of_each_name_wins_and_ranges_are_never_cursors() {
        let d = tempfile::tempdir().unwrap();
        let ranges = |seqs: &[u64]| {
            let mut b = Vec::new();
            encode_ranges(&mut seqs.to_vec(), &mut b);
            b
        };
        segment(
            d.path(),
            1,
            &[
                (RecordType::Cursor, 0, "a", encode(3).to_vec()),
                (RecordType::Cursor, 0, "b", encode(2).to_vec()),
                (RecordType::Cursor, 0, "a", encode(5).to_vec()),
            ],
        );
        segment(
            d.path(),
            10,
            &[
                (RecordType::Cursor, 0, "a", encode(9).to_vec()),
                (RecordType::Cursor, 0, "b", encode(2).to_vec()),
                // Settled ranges after the cursor, as a crash leaves them.
                (
                    RecordType::Delivery,
                    flags::RANGES,
                    "a",
                    ranges(&[100, 101, 102]),
                ),
                (RecordType::Delivery, flags::RANGES, "b", ranges(&[7])),
            ],
        );
        let names = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(resume(d.path(), &names, 20), vec![Some(9), Some(2), None]);
        // Never past this run's first seq.
        assert_eq!(resume(d.path(), &names[..1], 4), vec![Some(3)]);
        // Records of this run (seq >= start) are not where it resumes from.
        assert_eq!(resume(d.path(), &names[..1], 10), vec![Some(5)]);
        // A cursor appended after the chain breaks is not trusted.
        let path = d.path().join(segment_name(10));
        let mut bytes = std::fs::read(&path).unwrap();
        encode_record(
            &mut bytes,
            crate::journal::format::RecordHead {
                rtype: RecordType::Cursor,
                flags: 0,
                seq: 15,
                time_ns: 0,
            },
            &[(tag::POOL, b"a")],
            &encode(u64::MAX),
            &[0; 32],
        );
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(resume(d.path(), &names[..1], 20), vec![Some(9)]);
    }
}
