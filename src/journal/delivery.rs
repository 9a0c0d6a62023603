//! Delivery cursors in the journal: the DELIVERY_CURSOR record a pool (or
//! a mirror backend) leaves at every checkpoint where its cursor moved, at
//! its start and at a clean stop, and where delivery resumes after a
//! restart. Settled ranges per backend are DELIVERY records, a type of
//! their own, so one can never be read as the other.

use std::path::Path;

use super::format::{tag, Record, RecordType};
use super::reader::{list_segments, Mapped, Records};

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
/// and the walk stops once every name is found (each run records every
/// cursor when it starts, so that is the newest segment or two).
pub fn resume(dir: &Path, names: &[String], start_seq: u64) -> Vec<Option<u64>> {
    let mut found: Vec<Option<u64>> = vec![None; names.len()];
    let Ok(segs) = list_segments(dir) else {
        return found;
    };
    for seg in segs.iter().rev() {
        let Ok(mapped) = Mapped::open(&seg.path) else {
            continue;
        };
        let mut last: Vec<Option<u64>> = vec![None; names.len()];
        for (_, r) in Records::new(mapped.bytes()).map_while(Result::ok) {
            if r.seq >= start_seq {
                break;
            }
            if let Some((name, below)) = decode(&r) {
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
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}
