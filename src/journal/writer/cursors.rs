//! Delivery bookkeeping in the journal: DELIVERY records of what each
//! backend settled, DELIVERY_CURSOR records of each pool's cursor, and
//! where delivery resumes at start.

use super::*;

/// One delivery name's cursor (a pool, or a mirror pool's backend).
pub(super) struct CursorSlot {
    /// Published by the dispatcher: every frame below it is settled.
    pub(super) cursor: crate::journal::handoff::Cursor,
    /// The value last written in a DELIVERY_CURSOR record.
    pub(super) recorded: u64,
    /// The segment that record is in: each segment with a checkpoint holds
    /// every cursor, so a restart finds them all in the newest ones.
    pub(super) recorded_in: u64,
    /// The pool slot it belongs to.
    pub(super) pool: usize,
}

impl Writer {
    /// DELIVERY records of the seq ranges each backend settled since the
    /// last call (what `cat` shows as a frame's backend).
    pub fn record_settled(&mut self) {
        self.publish_settled();
        for i in 0..self.settled_logs.len() {
            let settled = self.settled_logs[i].1.drain();
            let pool = self.settled_logs[i].0.clone();
            for mut s in settled {
                let mut body = Vec::with_capacity(s.seqs.len().min(4096) * 2 + 8);
                crate::journal::format::encode_ranges(&mut s.seqs, &mut body);
                self.push(
                    RecordType::Delivery,
                    flags::RANGES,
                    &[
                        (tag::POOL, pool.as_bytes()),
                        (tag::BACKEND, s.backend.as_bytes()),
                    ],
                    &body,
                );
            }
        }
    }

    /// Publishes the lowest cursor of the open pools (retention's
    /// `keep-undelivered`), and takes the bytes retention freed off the
    /// disk budget's count.
    fn publish_settled(&mut self) {
        let below = self
            .delivery
            .iter()
            // A removed pool holds retention back while its dispatcher
            // still delivers, for a while.
            .filter(|c| match self.closed_pools.get(c.pool).copied().flatten() {
                None => true,
                Some(at) => c.cursor.in_use() && at.elapsed() < super::RETIRED_HOLD,
            })
            .map(|c| c.cursor.get().max(c.recorded))
            .min()
            .unwrap_or(self.next_seq);
        self.settled_below.store(below, Ordering::Release);
        let freed = self.freed.swap(0, Ordering::AcqRel);
        self.journal_bytes = self.journal_bytes.saturating_sub(freed);
    }

    /// A DELIVERY_CURSOR record per delivery name whose cursor moved or is
    /// not yet in this segment (every one when `all`): body = the seq below
    /// which every frame of the pool settled. A type of its own, never a
    /// DELIVERY range list.
    pub(super) fn push_delivery(&mut self, all: bool) {
        for i in 0..self.delivery.len() {
            let c = &self.delivery[i];
            let cursor = c.cursor.get();
            let moved = cursor != c.recorded || c.recorded_in != self.seg_no;
            if cursor == 0 || !(all || moved) {
                continue;
            }
            let name = c.cursor.name.clone();
            self.delivery[i].recorded = cursor;
            self.delivery[i].recorded_in = self.seg_no;
            self.push_cursor(&name, cursor);
        }
    }

    /// A DELIVERY_CURSOR record for every delivery name, as recorded in
    /// segment `segment_no` (the one being started).
    pub(super) fn push_all_cursors(&mut self, segment_no: u64) {
        for i in 0..self.delivery.len() {
            let below = self.delivery[i].cursor.get().max(self.delivery[i].recorded);
            let name = self.delivery[i].cursor.name.clone();
            self.delivery[i].recorded = below;
            self.delivery[i].recorded_in = segment_no;
            self.push_cursor(&name, below);
        }
    }

    pub(super) fn push_cursor(&mut self, name: &str, below: u64) {
        self.push(
            RecordType::Cursor,
            0,
            &[(tag::POOL, name.as_bytes())],
            &crate::journal::delivery::encode(below),
        );
    }

    /// Where each pool's delivery resumes: the cursor of its newest
    /// DELIVERY_CURSOR record in the journal, or this run's first seq for a
    /// pool the journal has none for (it never ran: every run records each
    /// pool's cursor as it starts).
    pub fn resume_cursors(&self, pools: &[String]) -> Vec<u64> {
        crate::journal::delivery::resume(&self.cfg.dir, pools, self.start_seq)
            .into_iter()
            .map(|c| c.unwrap_or(self.start_seq))
            .collect()
    }
}
