//! The pool dispatcher: one task per pool. It takes the pool's journaled
//! frames in sequence order, picks a backend for each frame with the pool's
//! [`Selector`], and sends per-backend batches to that backend's upstream
//! connections. Frames an upstream hands back (its unacknowledged suffix
//! after a failure) come first in the next round.
//!
//! The journal is the buffer: frames arrive live from the journal writer
//! while this task keeps up; when it falls behind (backends slow or all
//! down) the writer stops keeping them in memory and this task reads them
//! back from the segment files ([`PoolTail`]), then joins the live stream
//! again. Memory stays bounded whatever the outage length.
//!
//! It also keeps the pool's delivery cursor: the seq below which every frame
//! of the pool is settled (acknowledged by a backend's TCP stack), which the
//! journal records in DELIVERY records and delivery resumes from after a
//! restart (at-least-once).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::balance::{Selector, View};
use crate::frame::Frame;
use crate::journal::tail::PoolTail;
use crate::journal::{Routed, SettledLog};
use crate::metrics::PoolMetrics;
use crate::pool::Backend;
use crate::upstream::{ConnShared, Handback};

/// Batches the journal keeps in memory for one pool's dispatcher; beyond
/// that the dispatcher reads from the journal files.
pub const INGRESS_BATCHES: usize = 256;
/// Batches that may wait in one upstream connection's channel; the real
/// bound is the pool's `queue-bytes`.
pub const UPSTREAM_BATCHES: usize = 64;
/// Most frames routed in one round.
const ROUND_FRAMES: usize = 4096;

/// The dispatcher's end of one upstream connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub tx: mpsc::Sender<Vec<Frame>>,
    pub shared: Arc<ConnShared>,
}

/// A reload's new backend set for a running dispatcher. Backends kept from
/// before come with their existing connections; connections missing from
/// the new set are retired: their channel closes, they send what they were
/// given, and what they cannot deliver comes back here to be routed again.
pub struct PoolUpdate {
    pub backends: Vec<Arc<Backend>>,
    pub conns: Vec<Vec<ConnHandle>>,
    pub selector: Selector,
    pub queue_bytes: u64,
}

/// Where a reload leaves a [`PoolUpdate`] for the dispatcher (which takes
/// it between routing rounds, so no round sees half of it).
#[derive(Default)]
pub struct UpdateSlot {
    waiting: std::sync::atomic::AtomicBool,
    update: std::sync::Mutex<Option<PoolUpdate>>,
}

impl UpdateSlot {
    pub fn put(&self, update: PoolUpdate) {
        *self.update.lock().unwrap_or_else(|p| p.into_inner()) = Some(update);
        self.waiting.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<PoolUpdate> {
        if !self.waiting.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.update.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Outcome of one routing round.
enum Round {
    /// Some frames were sent; go again.
    Progress,
    /// No backend can take frames now.
    Stalled,
    Aborted,
}

/// A dispatcher's place in the journal.
pub struct DispatcherJournal {
    /// Reads the pool's frames back from the segment files.
    pub tail: PoolTail,
    /// Where delivery starts: every frame of the pool below it is settled.
    pub cursor: u64,
    /// Last seq written to the files.
    pub committed: Arc<AtomicU64>,
    /// See [`crate::journal::PoolLink::closed_at`].
    pub closed_at: Arc<AtomicU64>,
    /// Where the dispatcher publishes its delivery cursor.
    pub delivered_below: Arc<AtomicU64>,
}

pub struct Dispatcher {
    pool: Arc<str>,
    backends: Vec<Arc<Backend>>,
    /// Per backend, its upstream connections.
    conns: Vec<Vec<ConnHandle>>,
    /// Connections of backends a reload removed, until nothing they were
    /// given is unsettled.
    retired: Vec<Arc<ConnShared>>,
    update: Arc<UpdateSlot>,
    selector: Selector,
    rx: mpsc::Receiver<Routed>,
    handback: Arc<Handback>,
    /// Next seq to take in: every frame of the pool below it is pending,
    /// in flight or settled.
    cursor: u64,
    /// Taking frames from the writer's live batches (else from the files).
    live: bool,
    /// A live batch beyond the cursor, taken while reading from the files:
    /// rejoins the live stream once the files reach it.
    ahead: Option<Routed>,
    tail: PoolTail,
    /// Last seq written to the journal files.
    committed: Arc<AtomicU64>,
    /// Last seq that may hold a frame of this pool once a reload removed
    /// it (`u64::MAX` while it is configured).
    closed_at: Arc<AtomicU64>,
    /// Routed and not yet settled.
    unsettled: SeqWindow,
    /// Published delivery cursor.
    delivered_below: Arc<AtomicU64>,
    /// Where senders record the highest seq of batches they dropped for
    /// this dispatcher (it reads those from the files).
    missed: Vec<Arc<AtomicU64>>,
    settled_scratch: Vec<(u32, u64)>,
    /// Which backend settled which frames, for the journal's DELIVERY
    /// records (drained by the writer).
    settled_log: SettledLog,
    /// By [`Backend::index`] (never reused, so a retired backend's late
    /// settlements are still credited to it).
    backend_names: Vec<Arc<str>>,
    wake: Arc<Notify>,
    /// The pool's `queue-bytes`: most unsettled bytes per connection.
    queue_bytes: u64,
    /// Frames taken in (or handed back) and not yet sent to an upstream.
    pending: VecDeque<Frame>,
    metrics: PoolMetrics,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Arc<str>,
        backends: Vec<Arc<Backend>>,
        conns: Vec<Vec<ConnHandle>>,
        selector: Selector,
        rx: mpsc::Receiver<Routed>,
        handback: Arc<Handback>,
        wake: Arc<Notify>,
        queue_bytes: u64,
        metrics: PoolMetrics,
        journal: DispatcherJournal,
        missed: Vec<Arc<AtomicU64>>,
        settled_log: SettledLog,
        update: Arc<UpdateSlot>,
    ) -> Self {
        let DispatcherJournal {
            tail,
            cursor,
            committed,
            closed_at,
            delivered_below,
        } = journal;
        delivered_below.store(cursor, Ordering::Release);
        let mut d = Self {
            pool,
            backends: Vec::new(),
            conns: Vec::new(),
            retired: Vec::new(),
            update,
            selector,
            rx,
            handback,
            wake,
            queue_bytes,
            cursor,
            live: false,
            ahead: None,
            tail,
            committed,
            closed_at,
            unsettled: SeqWindow::default(),
            delivered_below,
            missed,
            settled_scratch: Vec::new(),
            settled_log,
            backend_names: Vec::new(),
            pending: VecDeque::new(),
            metrics,
        };
        d.set_backends(backends, conns);
        d
    }

    /// Takes on a backend set (at start, or from a reload).
    fn set_backends(&mut self, backends: Vec<Arc<Backend>>, conns: Vec<Vec<ConnHandle>>) {
        for b in &backends {
            if self.backend_names.len() <= b.index {
                self.backend_names.resize(b.index + 1, Arc::from(""));
            }
            self.backend_names[b.index] = Arc::from(b.addr.to_string());
        }
        let kept: Vec<&Arc<ConnShared>> = conns.iter().flatten().map(|c| &c.shared).collect();
        for old in self.conns.iter().flatten() {
            if !kept.iter().any(|k| Arc::ptr_eq(k, &old.shared)) {
                self.retired.push(old.shared.clone());
            }
        }
        self.backends = backends;
        // Dropping the old handles closes the retired connections' channels.
        self.conns = conns;
    }

    /// Applies a waiting reload, between rounds.
    fn apply_update(&mut self) {
        let Some(u) = self.update.take() else {
            return;
        };
        let before = self.retired.len();
        self.set_backends(u.backends, u.conns);
        self.selector = u.selector;
        self.queue_bytes = u.queue_bytes;
        tracing::debug!(
            pool = %self.pool,
            backends = self.backends.len(),
            retiring = self.retired.len() - before,
            "dispatcher took the reloaded backend set"
        );
    }

    /// How far the journal files may be read for this pool.
    fn readable_upto(&self) -> u64 {
        self.committed
            .load(Ordering::Acquire)
            .min(self.closed_at.load(Ordering::Acquire))
    }

    /// Routes frames until the journal writer is gone, the files are read
    /// to their end and every frame is settled, or `abort` fires (shutdown
    /// grace over; what is left is delivered after the next start).
    /// Dropping `self` at the end closes the upstream channels, which lets
    /// the upstreams finish.
    pub async fn run(mut self, abort: CancellationToken) {
        let mut input_open = true;
        let mut publish = tokio::time::interval(Duration::from_millis(100));
        loop {
            self.apply_update();
            self.collect_settled();
            let back = self.handback.take();
            if !back.is_empty() {
                self.requeue(back);
            }
            self.metrics.pending.set(self.pending.len() as i64);
            if !self.pending.is_empty() {
                match self.route_round(&abort).await {
                    Round::Progress => continue,
                    Round::Aborted => break,
                    Round::Stalled => {
                        tokio::select! {
                            _ = abort.cancelled() => break,
                            _ = self.wake.notified() => {}
                            _ = publish.tick() => self.publish_cursor(),
                            // A safety net: availability is polled too.
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                }
            }
            // A dropped batch not yet read from the files: not live.
            if self.live
                && self
                    .missed
                    .iter()
                    .any(|m| m.load(Ordering::Acquire) >= self.cursor)
            {
                tracing::debug!(pool = %self.pool, cursor = self.cursor, "behind: reading from the journal");
                self.live = false;
            }
            if !self.live {
                self.rejoin();
            }
            // Behind the live stream: read the next frames from the files,
            // up to the batch waiting to rejoin it.
            let upto = match &self.ahead {
                Some(b) => self.readable_upto().min(b.from - 1),
                None => self.readable_upto(),
            };
            if !self.live && self.tail.next_seq() <= upto {
                match self.tail.read(upto, ROUND_FRAMES) {
                    Ok(frames) => {
                        tracing::trace!(pool = %self.pool, frames = frames.len(), next = self.tail.next_seq(), upto, "read from the journal");
                        self.cursor = self.cursor.max(self.tail.next_seq());
                        if !frames.is_empty() {
                            self.pending.extend(frames);
                            continue;
                        }
                    }
                    Err(e) => {
                        tracing::error!(pool = %self.pool, error = %e, "cannot read frames back from the journal");
                        tokio::select! {
                            _ = abort.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            if !input_open {
                let caught_up = self.tail.next_seq() > self.readable_upto() || self.live;
                if caught_up && self.all_settled() {
                    // An upstream hands frames back before it gives up
                    // their charge: what came back since the top of the
                    // loop is routed, not dropped with the dispatcher.
                    let back = self.handback.take();
                    if !back.is_empty() {
                        self.requeue(back);
                        continue;
                    }
                    self.collect_settled();
                    break;
                }
                tokio::select! {
                    _ = abort.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
                continue;
            }
            tokio::select! {
                biased;
                _ = abort.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = publish.tick() => self.publish_cursor(),
                b = self.rx.recv() => match b {
                    Some(batch) => self.take_in(batch),
                    None => input_open = false,
                },
            }
        }
        self.publish_cursor();
        let mut left = self.pending.len()
            + self.handback.take().len()
            + self.ahead.take().map_or(0, |b| b.frames.len());
        self.rx.close();
        while let Ok(b) = self.rx.try_recv() {
            left += b.frames.len();
        }
        if left > 0 {
            self.metrics.lost.inc_by(left as u64);
            tracing::warn!(
                pool = %self.pool,
                frames = left,
                delivered_below = self.delivered_below.load(Ordering::Acquire),
                "stopping with frames not yet delivered; they are in the journal and go out after the next start"
            );
        }
        self.metrics.pending.set(0);
    }

    /// While reading from the files: drops the writer's batches the files
    /// already gave, rejoins the live stream with one that starts at the
    /// cursor, and keeps the first one beyond it (`ahead`) until the files
    /// reach it. Draining the channel lets the writer keep offering
    /// batches, so the dispatcher is back on the live stream sooner.
    fn rejoin(&mut self) {
        while !self.live {
            match self.ahead.take() {
                Some(b) if b.from > self.cursor => {
                    self.ahead = Some(b);
                    return;
                }
                Some(b) => self.take_in(b),
                None => match self.rx.try_recv() {
                    Ok(b) => self.take_in(b),
                    Err(_) => return,
                },
            }
        }
    }

    /// A batch from the journal writer.
    fn take_in(&mut self, batch: Routed) {
        if batch.from == 0 {
            // In-band checkpoint messages: outside the record sequence.
            self.pending.extend(batch.frames);
        } else if batch.to < self.cursor {
            // Already read from the files.
        } else if batch.from <= self.cursor {
            let cursor = self.cursor;
            self.pending
                .extend(batch.frames.into_iter().filter(|f| f.seq >= cursor));
            self.cursor = batch.to + 1;
            self.tail.skip_to(self.cursor);
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

    /// Clears the seqs upstreams report settled.
    fn collect_settled(&mut self) {
        let mut scratch = std::mem::take(&mut self.settled_scratch);
        self.handback.take_settled(&mut scratch);
        if !scratch.is_empty() {
            let mut per_backend: Vec<Vec<u64>> = vec![Vec::new(); self.backend_names.len()];
            for &(b, s) in &scratch {
                self.unsettled.clear(s);
                if let Some(v) = per_backend.get_mut(b as usize) {
                    v.push(s);
                }
            }
            let mut log = self.settled_log.lock().unwrap_or_else(|p| p.into_inner());
            for (b, seqs) in per_backend.into_iter().enumerate() {
                if !seqs.is_empty() {
                    log.push((self.backend_names[b].clone(), seqs));
                }
            }
        }
        self.settled_scratch = scratch;
    }

    /// Publishes the delivery cursor: the lowest seq of the pool not yet
    /// settled (pending, in flight, or not taken in yet).
    fn publish_cursor(&mut self) {
        self.collect_settled();
        let mut low = self.cursor;
        if let Some(s) = self.unsettled.first() {
            low = low.min(s);
        }
        if let Some(s) = self.pending.iter().map(|f| f.seq).filter(|&s| s > 0).min() {
            low = low.min(s);
        }
        self.delivered_below.store(low, Ordering::Release);
        self.retired.retain(|c| c.unsettled() > 0);
        let committed = self.readable_upto();
        self.metrics
            .lag
            .set(committed.saturating_add(1).saturating_sub(low) as i64);
        let oldest = self
            .pending
            .iter()
            .map(|f| f.time_ns)
            .chain(self.conns.iter().flatten().map(|c| c.shared.oldest_ns()))
            .chain(self.retired.iter().map(|c| c.oldest_ns()))
            .filter(|&t| t > 0)
            .min();
        let age = oldest.map_or(0.0, |t| (crate::time::now_ns() - t).max(0) as f64 / 1e9);
        self.metrics.oldest.set(age);
    }

    /// Handed-back frames are older than anything pending: they go first, in
    /// sequence order.
    fn requeue(&mut self, mut back: Vec<Frame>) {
        back.sort_unstable_by_key(|f| f.seq);
        for f in back.into_iter().rev() {
            self.pending.push_front(f);
        }
    }

    fn all_settled(&self) -> bool {
        self.conns
            .iter()
            .flatten()
            .all(|c| c.shared.unsettled() == 0)
            && self.retired.iter().all(|c| c.unsettled() == 0)
    }

    async fn route_round(&mut self, abort: &CancellationToken) -> Round {
        let keyed = self.selector.is_keyed();
        let mut avail = Vec::with_capacity(self.backends.len());
        let mut room = Vec::with_capacity(self.backends.len());
        for (b, cs) in self.backends.iter().zip(&self.conns) {
            let open = cs.iter().filter(|c| c.shared.is_connected()).count() as u64;
            let cap = open * self.queue_bytes;
            room.push(cap);
            // A full backend is skipped unless frames are keyed to it, so one
            // slow backend does not stall the pool while others have room.
            avail.push(b.available() && open > 0 && (keyed || b.pending_bytes() < cap));
        }
        let mut pend: Vec<u64> = self.backends.iter().map(|b| b.pending_bytes()).collect();
        if self
            .selector
            .tier(View {
                avail: &avail,
                pending: &pend,
            })
            .is_none()
        {
            return Round::Stalled;
        }
        let mut out: Vec<Vec<Frame>> = vec![Vec::new(); self.backends.len()];
        let take = self.pending.len().min(ROUND_FRAMES);
        for _ in 0..take {
            let f = self.pending.pop_front().expect("counted above");
            match self.selector.pick(
                View {
                    avail: &avail,
                    pending: &pend,
                },
                &f,
            ) {
                Some(i) => {
                    pend[i] += f.len() as u64;
                    if f.seq > 0 {
                        self.unsettled.mark(f.seq);
                    }
                    if !keyed && pend[i] >= room[i] {
                        avail[i] = false;
                    }
                    out[i].push(f);
                }
                None => {
                    self.pending.push_front(f);
                    break;
                }
            }
        }
        let mut sent_any = false;
        for (i, frames) in out.into_iter().enumerate() {
            if frames.is_empty() {
                continue;
            }
            // Each client connection's frames stay on one upstream
            // connection of the backend, so their order holds there.
            let open: Vec<usize> = (0..self.conns[i].len())
                .filter(|&c| self.conns[i][c].shared.is_connected())
                .collect();
            if open.is_empty() {
                self.requeue(frames);
                continue;
            }
            let mut per_conn: Vec<Vec<Frame>> = vec![Vec::new(); open.len()];
            for f in frames {
                per_conn[(f.conn.id % open.len() as u64) as usize].push(f);
            }
            for (k, frames) in per_conn.into_iter().enumerate() {
                if frames.is_empty() {
                    continue;
                }
                match self.send_to_conn(i, open[k], frames, abort).await {
                    Ok(()) => sent_any = true,
                    Err(Some(frames)) => self.requeue(frames),
                    Err(None) => return Round::Aborted,
                }
            }
        }
        if sent_any {
            Round::Progress
        } else {
            Round::Stalled
        }
    }

    /// Sends frames to connection `c` of backend `i`; in keyed modes first
    /// waits while that connection is over `queue-bytes`. Gives the frames
    /// back (`Err(Some)`) when the connection is gone, `Err(None)` on abort.
    async fn send_to_conn(
        &mut self,
        i: usize,
        c: usize,
        frames: Vec<Frame>,
        abort: &CancellationToken,
    ) -> Result<(), Option<Vec<Frame>>> {
        let conn = &self.conns[i][c];
        let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
        // Unkeyed modes checked room when routing (and may overshoot by one
        // round); keyed frames must wait for their backend.
        while self.selector.is_keyed() {
            let queued = conn.shared.unsettled();
            if queued == 0 || queued + bytes <= self.queue_bytes || !conn.shared.is_connected() {
                break;
            }
            tokio::select! {
                _ = abort.cancelled() => {
                    self.pending.extend(frames);
                    return Err(None);
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        conn.shared.charge(bytes);
        self.backends[i].add_pending(bytes);
        if let Err(e) = conn.tx.send(frames).await {
            // The upstream task is gone (only at shutdown).
            conn.shared.release(bytes);
            self.backends[i].sub_pending(bytes);
            return Err(Some(e.0));
        }
        Ok(())
    }
}

/// A set of seqs (routed, not yet settled) as a bitmap over a sliding
/// window; its size follows the span between the oldest unsettled frame and
/// the newest routed one.
#[derive(Debug, Default)]
struct SeqWindow {
    /// Seq of bit 0 of `words[0]`; a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
}

impl SeqWindow {
    fn mark(&mut self, seq: u64) {
        if self.words.is_empty() {
            self.base = seq & !63;
        }
        while seq < self.base {
            self.words.push_front(0);
            self.base -= 64;
        }
        let idx = ((seq - self.base) / 64) as usize;
        if idx >= self.words.len() {
            self.words.resize(idx + 1, 0);
        }
        self.words[idx] |= 1 << ((seq - self.base) % 64);
    }

    fn clear(&mut self, seq: u64) {
        if seq < self.base {
            return;
        }
        let idx = ((seq - self.base) / 64) as usize;
        if let Some(w) = self.words.get_mut(idx) {
            *w &= !(1 << ((seq - self.base) % 64));
        }
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    fn first(&self) -> Option<u64> {
        let (i, w) = self.words.iter().enumerate().find(|(_, w)| **w != 0)?;
        Some(self.base + 64 * i as u64 + u64::from(w.trailing_zeros()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_tracks_the_lowest_unsettled() {
        let mut w = SeqWindow::default();
        assert_eq!(w.first(), None);
        for s in [100, 101, 300, 70, 5000] {
            w.mark(s);
        }
        assert_eq!(w.first(), Some(70));
        w.clear(70);
        assert_eq!(w.first(), Some(100));
        w.clear(100);
        w.clear(101);
        w.clear(999);
        assert_eq!(w.first(), Some(300));
        w.clear(300);
        w.clear(5000);
        assert_eq!(w.first(), None);
        assert!(w.words.is_empty());
        w.mark(3);
        assert_eq!(w.first(), Some(3));
    }
}
