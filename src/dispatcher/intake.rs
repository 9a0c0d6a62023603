//! Where a dispatcher takes its frames from: the writer's live batches
//! while it keeps up, the journal files while it is behind, and back. A
//! pure state machine over [`Batch`]es: the dispatcher does the reading
//! (`PoolTail`) and feeds what it learns in.
//!
//! The rules: batches follow each other without gaps, so one that starts
//! at or below the cursor continues the live stream (frames below the
//! cursor were already taken); one that starts beyond it means batches
//! were dropped (the pool's channel was full) and the frames in between
//! are read from the files; the first batch beyond the cursor is parked
//! and rejoins the stream when the files reach it; any later ones the
//! files give again. Frames outside the record sequence (no span) always
//! pass.

use std::collections::VecDeque;

use crate::frame::Frame;
use crate::journal::handoff::Batch;

/// A dispatcher's intake.
#[derive(Debug)]
pub struct Intake {
    /// Next seq to take in: every frame of the pool below it was taken.
    cursor: u64,
    /// Taking frames from the writer's live batches (else from the files).
    live: bool,
    /// A live batch beyond the cursor, taken while reading from the files:
    /// rejoins the live stream once the files reach it.
    ahead: Option<Batch>,
}

impl Intake {
    /// Starts at `cursor`, reading from the files until a batch says where
    /// the live stream is.
    pub fn new(cursor: u64) -> Intake {
        Intake {
            cursor,
            live: false,
            ahead: None,
        }
    }

    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// A batch from the writer: its frames at or past the cursor go to
    /// `out` when it continues the stream.
    pub fn take_in(&mut self, batch: Batch, out: &mut VecDeque<Frame>) {
        let Some(span) = batch.span.clone() else {
            // In-band checkpoint messages: outside the record sequence.
            out.extend(batch.frames);
            return;
        };
        let (first, last) = (*span.start(), *span.end());
        if last < self.cursor {
            // Already read from the files.
        } else if first <= self.cursor {
            let cursor = self.cursor;
            out.extend(batch.frames.into_iter().filter(|f| f.seq >= cursor));
            self.cursor = last + 1;
            self.live = true;
        } else {
            // A gap: the frames before this batch are read from the files,
            // then this one rejoins the live stream.
            self.live = false;
            if self.ahead.is_none() {
                self.ahead = Some(batch);
            }
        }
    }

    /// A batch reaching the cursor or beyond was dropped: off the live
    /// stream until the files catch up.
    pub fn fell_behind(&mut self) {
        self.live = false;
    }

    /// While reading from the files: takes the writer's waiting batches
    /// (`next`) until one continues the stream (live again) or is beyond
    /// it (parked). Draining the channel lets the writer keep offering, so
    /// the dispatcher is back on the live stream sooner.
    pub fn rejoin(&mut self, mut next: impl FnMut() -> Option<Batch>, out: &mut VecDeque<Frame>) {
        while !self.live {
            match self.ahead.take() {
                Some(b) if b.span.as_ref().is_some_and(|s| *s.start() > self.cursor) => {
                    self.ahead = Some(b);
                    return;
                }
                Some(b) => self.take_in(b, out),
                None => match next() {
                    Some(b) => self.take_in(b, out),
                    None => return,
                },
            }
        }
    }

    /// How far to read the files now: up to `readable`, and not into the
    /// parked batch. `None` while live.
    pub fn read_upto(&self, readable: u64) -> Option<u64> {
        if self.live {
            return None;
        }
        Some(match self.ahead.as_ref().and_then(|b| b.span.as_ref()) {
            Some(s) => readable.min(s.start().saturating_sub(1)),
            None => readable,
        })
    }

    /// The files were read up to (not including) `next_seq`.
    pub fn read_to(&mut self, next_seq: u64) {
        self.cursor = self.cursor.max(next_seq);
    }

    /// The parked batch, at the end (its frames are counted as not
    /// delivered: they stay in the journal).
    pub fn take_parked(&mut self) -> Option<Batch> {
        self.ahead.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn batch(span: Option<(u64, u64)>, seqs: &[u64]) -> Batch {
        let meta = Arc::new(crate::frame::ConnMeta::new(
            1,
            "in".into(),
            "127.0.0.1:1".parse().unwrap(),
        ));
        Batch {
            span: span.map(|(a, b)| a..=b),
            frames: seqs
                .iter()
                .map(|&s| {
                    let mut f = Frame::new(bytes::Bytes::from_static(b"x"), meta.clone());
                    f.seq = s;
                    f
                })
                .collect(),
            charge: None,
        }
    }

    fn seqs(out: &mut VecDeque<Frame>) -> Vec<u64> {
        out.drain(..).map(|f| f.seq).collect()
    }

    #[test]
    fn live_batches_in_order_pass_and_move_the_cursor() {
        let mut i = Intake::new(5);
        let mut out = VecDeque::new();
        assert_eq!(i.read_upto(100), Some(100), "reads the files until told");
        i.take_in(batch(Some((1, 9)), &[3, 6, 8]), &mut out);
        assert_eq!(seqs(&mut out), [6, 8], "frames below the cursor were taken");
        assert!(i.is_live());
        assert_eq!(i.cursor(), 10);
        assert_eq!(i.read_upto(100), None);
        i.take_in(batch(Some((10, 12)), &[11]), &mut out);
        i.take_in(batch(None, &[0]), &mut out);
        assert_eq!(seqs(&mut out), [11, 0]);
        assert_eq!(i.cursor(), 13);
    }

    #[test]
    fn a_gap_parks_the_batch_until_the_files_reach_it() {
        let mut i = Intake::new(10);
        let mut out = VecDeque::new();
        i.take_in(batch(Some((10, 12)), &[10]), &mut out);
        // Dropped batches 13..=20: the next one is beyond the cursor.
        i.take_in(batch(Some((21, 25)), &[22]), &mut out);
        i.take_in(batch(Some((26, 30)), &[27]), &mut out);
        assert!(!i.is_live());
        assert_eq!(seqs(&mut out), [10]);
        assert_eq!(i.read_upto(100), Some(20), "not into the parked batch");
        // More waiting in the channel; nothing rejoins before the files
        // reach the parked batch.
        let mut channel: VecDeque<Batch> = [batch(Some((31, 32)), &[31])].into();
        i.rejoin(|| channel.pop_front(), &mut out);
        assert!(!i.is_live() && out.is_empty());
        // The files gave 13..=20 (and the writer's 26..=30 was dropped).
        i.read_to(21);
        i.rejoin(|| channel.pop_front(), &mut out);
        assert!(i.is_live());
        assert_eq!(seqs(&mut out), [22]);
        assert_eq!(i.cursor(), 26);
        // The writer's 26..=30 was dropped too: the next batch parks, and
        // the files give 26..=30.
        i.take_in(channel.pop_front().unwrap(), &mut out);
        assert!(!i.is_live());
        assert_eq!(i.read_upto(100), Some(30));
    }

    #[test]
    fn batches_the_files_already_gave_are_dropped() {
        let mut i = Intake::new(1);
        let mut out = VecDeque::new();
        i.fell_behind();
        i.read_to(50);
        let mut channel: VecDeque<Batch> = [
            batch(Some((1, 20)), &[2, 19]),
            batch(Some((21, 49)), &[30]),
            batch(Some((50, 60)), &[50, 55]),
        ]
        .into();
        i.rejoin(|| channel.pop_front(), &mut out);
        assert_eq!(seqs(&mut out), [50, 55]);
        assert!(i.is_live());
        // A dropped batch reaches the cursor: back to the files.
        i.fell_behind();
        assert_eq!(i.read_upto(70), Some(70));
        assert!(i.take_parked().is_none());
    }
}
