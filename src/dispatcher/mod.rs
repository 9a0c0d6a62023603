//! The pool dispatcher: one task per pool. It takes the pool's journaled
//! frames in sequence order, picks a backend for each frame with the pool's
//! [`Selector`], and sends per-backend batches to that backend's upstream
//! connections. Frames an upstream hands back (its unacknowledged suffix
//! after a failure) come first in the next round; so do the frames of a
//! reset connection's replay window, which the upstream hands back as
//! seqs and this task reads back from the journal ([`Replay`]).
//!
//! The journal is the buffer: frames arrive live from the journal writer
//! while this task keeps up; when it falls behind (backends slow or all
//! down) the writer stops keeping them in memory and this task reads them
//! back from the segment files ([`PoolTail`]), then joins the live stream
//! again. Memory stays bounded whatever the outage length.
//!
//! It also keeps the pool's delivery cursor: the seq below which every frame
//! of the pool is settled (acknowledged by a backend's TCP stack), which the
//! journal records in DELIVERY_CURSOR records and delivery resumes from
//! after a restart (at-least-once).
//!
//! - `intake.rs`: live batches or the files, and back (pure);
//! - `window.rs`: the routed, unsettled seqs that bound the cursor;
//! - this file: the task, routing rounds, settlement and the cursor.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use std::sync::atomic::{AtomicU64, Ordering};

mod intake;
mod window;

use crate::balance::{Selector, View};
use crate::frame::Frame;

use crate::backend::Backend;
use crate::journal::handoff::{Batch, ClosedAt, Cursor, Missed, SettledLog};
use crate::journal::tail::PoolTail;
use crate::metrics::PoolMetrics;
use crate::upstream::{ConnShared, Handback};
use intake::Intake;
use window::SeqWindow;

/// Batches that may wait in one upstream connection's channel; the real
/// bound is the pool's `queue-bytes`.
pub const UPSTREAM_BATCHES: usize = 64;
/// Most frames routed in one round.
const ROUND_FRAMES: usize = 4096;
/// Most journal records, and 1 MiB reads of the files, one step of
/// reading a replay window back looks at (one blocking read of at most
/// 8 MiB, or one record larger than 1 MiB, held until the step ends).
const REPLAY_SCAN: u64 = 16_384;
const REPLAY_CHUNKS: usize = 8;
/// 1 MiB reads of the files per step of catching up (a pool behind, or
/// resuming after a restart): however sparse its frames, one step is a
/// bounded blocking read, off the runtime's threads.
const TAIL_CHUNKS: usize = 8;

/// Settled frames to send again (reset connections' replay windows), by
/// seq, read back from the journal a step at a time by a tail of its own.
#[derive(Default)]
struct Replay {
    /// Sorted by seq, no seq twice; each with the backend (its
    /// [`Backend::index`]) that may not have read it.
    wanted: VecDeque<(u64, u32)>,
    /// Replayed frames read back and pending: the backend each is kept
    /// away from while another can take it (that one may be hung and
    /// still passing health checks; its window must go elsewhere).
    origin: std::collections::HashMap<u64, u32>,
    tail: Option<PoolTail>,
    /// After a read error: not before this.
    retry_at: Option<tokio::time::Instant>,
}

/// Runs `read` on `tail` on a blocking thread (file reads, parsing and
/// chain checks never hold up the runtime) and gives the tail back with
/// the result; `Err` only when `read` panicked.
async fn off_runtime<T: Send + 'static>(
    mut tail: PoolTail,
    read: impl FnOnce(&mut PoolTail) -> std::io::Result<T> + Send + 'static,
) -> Result<(PoolTail, std::io::Result<T>), tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let r = read(&mut tail);
        (tail, r)
    })
    .await
}

impl Replay {
    fn add(&mut self, mut seqs: Vec<(u64, u32)>) {
        seqs.extend(self.wanted.drain(..));
        seqs.sort_unstable();
        seqs.dedup_by_key(|(s, _)| *s);
        self.wanted = seqs.into();
    }
}

/// The dispatcher's end of one upstream connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub tx: mpsc::Sender<Vec<Frame>>,
    pub shared: Arc<ConnShared>,
}

/// A dispatcher's backend set: at start, or a reload's new one for a
/// running dispatcher. Backends kept from before come with their existing
/// connections; connections missing from the new set are retired: their
/// channel closes, they send what they were given, and what they cannot
/// deliver comes back here to be routed again.
pub struct PoolUpdate {
    pub backends: Vec<Arc<Backend>>,
    pub conns: Vec<Vec<ConnHandle>>,
    pub selector: Selector,
    pub queue_bytes: u64,
    /// Told, when the dispatcher takes the set, the seq from which every
    /// frame goes to it: frames below it may have gone to the old set.
    pub applied: Option<tokio::sync::oneshot::Sender<u64>>,
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
        *crate::lock(&self.update) = Some(update);
        self.waiting.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<PoolUpdate> {
        if !self.waiting.swap(false, Ordering::AcqRel) {
            return None;
        }
        crate::lock(&self.update).take()
    }
}

/// What became of frames sent to an upstream connection.
enum Sent {
    Yes,
    /// The connection's task is gone (only at shutdown): here they are.
    Gone(Vec<Frame>),
    /// Shutdown grace is over; the frames went back to `pending`.
    Aborted,
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
    /// Where a removed pool's frames end.
    pub closed_at: ClosedAt,
    /// Where the dispatcher publishes its delivery cursor.
    pub delivered_below: Cursor,
    /// Where it logs which backend settled which frames, for the journal's
    /// DELIVERY records.
    pub settled_log: SettledLog,
}

/// Everything a dispatcher is made of.
pub struct DispatcherParts {
    pub pool: Arc<str>,
    /// Its backends, their connections, the selector and `queue-bytes`.
    pub set: PoolUpdate,
    /// The writer's batches for it.
    pub rx: mpsc::Receiver<Batch>,
    /// Where senders record the highest seq of batches they dropped for it.
    pub missed: Vec<Missed>,
    /// Frames and settlements its upstreams hand back.
    pub handback: Arc<Handback>,
    /// Woken by upstreams and health changes.
    pub wake: Arc<Notify>,
    pub metrics: PoolMetrics,
    pub journal: DispatcherJournal,
    /// Where a reload leaves a new backend set.
    pub update: Arc<UpdateSlot>,
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
    rx: mpsc::Receiver<Batch>,
    handback: Arc<Handback>,
    /// Live batches or the files: its cursor is the next seq to take in
    /// (every frame of the pool below it is pending, in flight or settled).
    intake: Intake,
    tail: PoolTail,
    /// Last seq written to the journal files.
    committed: Arc<AtomicU64>,
    /// Where this pool's frames end once a reload removed it.
    closed_at: ClosedAt,
    /// Routed and not yet settled.
    unsettled: SeqWindow,
    /// Published delivery cursor.
    delivered_below: Cursor,
    /// Where senders record the highest seq of batches they dropped for
    /// this dispatcher (it reads those from the files).
    missed: Vec<Missed>,
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
    replay: Replay,
    metrics: PoolMetrics,
}

impl Dispatcher {
    pub fn new(parts: DispatcherParts) -> Self {
        let DispatcherParts {
            pool,
            set,
            rx,
            missed,
            handback,
            wake,
            metrics,
            journal,
            update,
        } = parts;
        let DispatcherJournal {
            tail,
            cursor,
            committed,
            closed_at,
            delivered_below,
            settled_log,
        } = journal;
        delivered_below.publish(cursor);
        let mut d = Self {
            pool,
            backends: Vec::new(),
            conns: Vec::new(),
            retired: Vec::new(),
            update,
            selector: set.selector,
            rx,
            handback,
            wake,
            queue_bytes: set.queue_bytes,
            intake: Intake::new(cursor),
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
            replay: Replay::default(),
            metrics,
        };
        d.set_backends(set.backends, set.conns);
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
        if let Some(applied) = u.applied {
            // Everything pending (below the cursor) is routed with the new
            // set from here on, and so is everything taken in later.
            let _ = applied.send(self.intake.cursor());
        }
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
            .min(self.closed_at.bound())
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
            // Refused by a backend (RELP 500): to another one if possible.
            self.replay.origin.extend(self.handback.take_kept_off());
            let replay = self.handback.take_replay();
            if !replay.is_empty() {
                self.replay.add(replay);
            }
            // Replayed frames are read back a step per turn while little
            // is pending, so they never pile up behind a stalled pool, and
            // routing, intake and shutdown go on between steps.
            if !self.replay.wanted.is_empty()
                && self.pending.len() < ROUND_FRAMES
                && !abort.is_cancelled()
                && self.replay_step().await
                && self.pending.is_empty()
            {
                continue;
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
            let cursor = self.intake.cursor();
            if self.intake.is_live() && self.missed.iter().any(|m| m.reaches(cursor)) {
                tracing::debug!(pool = %self.pool, cursor, "behind: reading from the journal");
                self.intake.fell_behind();
            }
            if !self.intake.is_live() {
                let rx = &mut self.rx;
                self.intake.rejoin(|| rx.try_recv().ok(), &mut self.pending);
                self.tail.skip_to(self.intake.cursor());
            }
            // Behind the live stream: read the next frames from the files,
            // up to the batch waiting to rejoin it.
            let upto = self.intake.read_upto(self.readable_upto());
            if let Some(upto) = upto.filter(|&u| self.tail.next_seq() <= u) {
                let before = self.tail.position();
                match self.read_tail(upto).await {
                    Ok(frames) => {
                        tracing::trace!(pool = %self.pool, frames = frames.len(), next = self.tail.next_seq(), upto, "read from the journal");
                        self.intake.read_to(self.tail.next_seq());
                        let moved = self.tail.position() != before;
                        if !frames.is_empty() || moved {
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
                let caught_up =
                    self.tail.next_seq() > self.readable_upto() || self.intake.is_live();
                if caught_up && self.all_settled() && self.replay.wanted.is_empty() {
                    // An upstream hands frames back before it gives up
                    // their charge: what came back since the top of the
                    // loop is routed, not dropped with the dispatcher.
                    let back = self.handback.take();
                    let replay = self.handback.take_replay();
                    if !back.is_empty() || !replay.is_empty() {
                        self.requeue(back);
                        self.replay.add(replay);
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
        // Replay seqs not read back yet count too: they were to be sent
        // again and are not (they are settled, so a restart does not).
        let mut left = self.pending.len()
            + self.handback.take().len()
            + self.handback.take_replay().len()
            + self.replay.wanted.len()
            + self.intake.take_parked().map_or(0, |b| b.frames.len());
        self.rx.close();
        while let Ok(b) = self.rx.try_recv() {
            left += b.frames.len();
        }
        if left > 0 {
            self.metrics.lost.inc_by(left as u64);
            tracing::warn!(
                pool = %self.pool,
                frames = left,
                delivered_below = self.delivered_below.get(),
                "stopping with frames not yet delivered; they are in the journal and go out after the next start"
            );
        }
        self.metrics.pending.set(0);
    }

    /// This pool's next frames from the files, up to `upto`: one bounded
    /// step ([`TAIL_CHUNKS`]) on a blocking thread, copied out of the
    /// chunks they were read in (which also hold other pools' records).
    async fn read_tail(&mut self, upto: u64) -> std::io::Result<Vec<Frame>> {
        let stand_in = self.tail.reopen(self.tail.next_seq());
        let tail = std::mem::replace(&mut self.tail, stand_in);
        let read = off_runtime(tail, move |tail| {
            let mut frames = tail.read_some(upto, ROUND_FRAMES, TAIL_CHUNKS)?;
            crate::frame::pack(&mut frames);
            Ok(frames)
        })
        .await;
        match read {
            Ok((tail, r)) => {
                self.tail = tail;
                r
            }
            // The stand-in (from the same seq) goes on.
            Err(e) => Err(std::io::Error::other(format!("reading the journal: {e}"))),
        }
    }

    /// Reads the next replayed frames back from the journal (at most
    /// [`REPLAY_SCAN`] records, off the runtime's threads) and puts them
    /// ahead of everything pending. False when it got nowhere in the files
    /// (nothing readable yet, or a read error: retried a second later).
    async fn replay_step(&mut self) -> bool {
        let Some(&(first, _)) = self.replay.wanted.front() else {
            return false;
        };
        if self
            .replay
            .retry_at
            .is_some_and(|t| tokio::time::Instant::now() < t)
        {
            return false;
        }
        let readable = self.readable_upto();
        if first > readable {
            return false;
        }
        let tail = match self.replay.tail.take() {
            Some(t) if t.next_seq() <= first => t,
            _ => self.tail.fork(first),
        };
        let upto = readable.min(first.saturating_add(REPLAY_SCAN));
        let read = off_runtime(tail, move |tail| {
            tail.advance_to(first)?;
            let before = tail.position();
            let frames = tail.read_some(upto, usize::MAX, REPLAY_CHUNKS)?;
            Ok((frames, tail.position() != before))
        })
        .await;
        let (tail, frames, moved) = match read {
            Ok((tail, Ok((frames, moved)))) => (tail, frames, moved),
            Ok((tail, Err(e))) => {
                tracing::error!(pool = %self.pool, seq = first, error = %e, "cannot read the replay window back from the journal; retrying");
                self.replay.tail = Some(tail);
                self.replay.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                return false;
            }
            Err(e) => {
                tracing::error!(pool = %self.pool, error = %e, "reading the replay window back failed; those frames are not sent again");
                self.replay.wanted.clear();
                return false;
            }
        };
        self.replay.retry_at = None;
        let next = tail.next_seq();
        self.replay.tail = Some(tail);
        // The wanted seqs the read went past: found, or gone (their
        // segment deleted, or damaged: the tail skipped it).
        let mut found = Vec::new();
        let mut missing = Vec::new();
        let mut frames = frames.into_iter().peekable();
        while let Some(&(seq, origin)) = self.replay.wanted.front() {
            if seq >= next {
                break;
            }
            self.replay.wanted.pop_front();
            while frames.next_if(|f| f.seq < seq).is_some() {}
            match frames.next_if(|f| f.seq == seq) {
                Some(f) => {
                    self.replay.origin.insert(seq, origin);
                    found.push(f);
                }
                None => missing.push(seq),
            }
        }
        drop(frames);
        if !missing.is_empty() {
            self.metrics.replay_missing.inc_by(missing.len() as u64);
            tracing::error!(
                pool = %self.pool,
                frames = missing.len(),
                first = missing[0],
                last = missing[missing.len() - 1],
                "replay window frames not found in the journal (segment gone or damaged); not sent again"
            );
        }
        crate::frame::pack(&mut found);
        self.metrics.replayed.inc_by(found.len() as u64);
        self.requeue(found);
        moved
    }

    /// A batch from the journal writer.
    fn take_in(&mut self, batch: Batch) {
        self.intake.take_in(batch, &mut self.pending);
        self.tail.skip_to(self.intake.cursor());
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
            for (b, seqs) in per_backend.into_iter().enumerate() {
                if !seqs.is_empty() {
                    self.settled_log.record(self.backend_names[b].clone(), seqs);
                }
            }
        }
        self.settled_scratch = scratch;
    }

    /// Publishes the delivery cursor: the lowest seq of the pool not yet
    /// settled (pending, in flight, or not taken in yet).
    fn publish_cursor(&mut self) {
        self.collect_settled();
        let mut low = self.intake.cursor();
        if let Some(s) = self.unsettled.first() {
            low = low.min(s);
        }
        if let Some(s) = self.pending.iter().map(|f| f.seq).filter(|&s| s > 0).min() {
            low = low.min(s);
        }
        self.delivered_below.publish(low);
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
            // A replayed frame goes to another backend than the one whose
            // window it came from, while another can take it.
            let origin = match self.replay.origin.is_empty() {
                true => None,
                false => self.replay.origin.remove(&f.seq),
            };
            let kept_off = origin.and_then(|o| {
                let at = self.backends.iter().position(|b| b.index == o as usize)?;
                let others = avail.iter().enumerate().any(|(i, &a)| a && i != at);
                (avail[at] && others).then(|| {
                    avail[at] = false;
                    at
                })
            });
            let picked = self.selector.pick(
                View {
                    avail: &avail,
                    pending: &pend,
                },
                &f,
            );
            if let Some(at) = kept_off {
                avail[at] = true;
            }
            match picked {
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
                    // Not routed: it stays kept off its origin.
                    if let Some(o) = origin {
                        self.replay.origin.insert(f.seq, o);
                    }
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
                    Sent::Yes => sent_any = true,
                    Sent::Gone(frames) => self.requeue(frames),
                    Sent::Aborted => return Round::Aborted,
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
    /// back ([`Sent::Gone`]) when the connection is gone.
    async fn send_to_conn(
        &mut self,
        i: usize,
        c: usize,
        frames: Vec<Frame>,
        abort: &CancellationToken,
    ) -> Sent {
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
                    return Sent::Aborted;
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
            return Sent::Gone(e.0);
        }
        Sent::Yes
    }
}
