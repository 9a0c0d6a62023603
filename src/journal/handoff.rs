//! The one contract between the journal writer and the pools: what the
//! writer hands a pool's dispatcher ([`Batch`], charged against a bound in
//! bytes), what a pool hands back (its delivery [`Cursor`]s and the
//! [`SettledLog`] of which backend settled what), and the two marks the
//! writer leaves for a pool that fell behind or was removed ([`Missed`],
//! [`ClosedAt`]). [`link`] makes both ends for one pool; [`Offer`] is the
//! writer's end, [`PoolEnds`] the pool's. [`fan_out`] splits a `mirror`
//! pool's batches between its backends' dispatchers.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::frame::Frame;

/// Batches that may wait in one pool's channel; the bound that counts is
/// [`QUEUED_BYTES`], beyond which a pool reads from the files.
pub const POOL_BATCHES: usize = 256;

/// Most bytes of frames of one pool (of one backend of a `mirror` pool)
/// waiting in memory between the writer and its dispatcher, each frame
/// counted with [`FRAME_OVERHEAD`]; past it the writer offers none and
/// the dispatcher reads them from the files. 32MiB holds about 110k
/// frames of 200 bytes (at 32k frames a full-speed run spilled often,
/// which costs more CPU than the memory it saves) and as little as 500
/// frames of 64KiB.
pub const QUEUED_BYTES: u64 = 32 << 20;

/// What a queued frame costs besides its bytes: the `Frame` itself and
/// its share of a batch vector.
pub const FRAME_OVERHEAD: u64 = 96;

/// The bytes `frames` count against [`QUEUED_BYTES`].
pub fn cost(frames: &[Frame]) -> u64 {
    frames.iter().map(|f| f.len() as u64 + FRAME_OVERHEAD).sum()
}

/// Records without a frame for a pool after which it is told so (see
/// [`Offer::offer_none`]).
pub const QUIET_STEP: u64 = 4096;

/// What the journal hands a pool's dispatcher.
#[derive(Debug)]
pub struct Batch {
    /// The records this batch covers, all written: the pool's frames among
    /// them are `frames`, and batches follow each other without gaps. When
    /// a pool's channel is full the batch is not kept and the dispatcher
    /// reads those frames from the files. `None`: frames outside the record
    /// sequence (in-band checkpoint messages).
    pub span: Option<RangeInclusive<u64>>,
    pub frames: Vec<Frame>,
    /// Counts the frames against the pool's bound until the batch is taken
    /// in (dropped).
    pub charge: Option<Charge>,
}

/// A batch's share of a pool's queued bytes, given back on drop.
#[derive(Debug)]
pub struct Charge {
    queued: Arc<AtomicU64>,
    n: u64,
}

impl Charge {
    /// Takes `n` bytes of the bound, or `None` when they do not fit (a
    /// batch bigger than the bound fits an empty queue).
    fn take(queued: &Arc<AtomicU64>, n: u64) -> Option<Charge> {
        let now = queued.load(Ordering::Acquire);
        if now > 0 && now + n > QUEUED_BYTES {
            return None;
        }
        queued.fetch_add(n, Ordering::AcqRel);
        Some(Charge {
            queued: queued.clone(),
            n,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.n, Ordering::AcqRel);
    }
}

/// Frames one backend settled.
#[derive(Debug)]
pub struct Settled {
    pub backend: Arc<str>,
    pub seqs: Vec<u64>,
}

/// Which backend settled which frames, from a pool's dispatchers to the
/// writer, which records them as DELIVERY records. Bounded by the writer
/// draining it every tick.
#[derive(Debug, Clone, Default)]
pub struct SettledLog(Arc<Mutex<Vec<Settled>>>);

impl SettledLog {
    pub fn record(&self, backend: Arc<str>, seqs: Vec<u64>) {
        crate::lock(&self.0).push(Settled { backend, seqs });
    }

    /// Everything recorded since the last call, per backend in order.
    pub fn drain(&self) -> Vec<Settled> {
        let entries = std::mem::take(&mut *crate::lock(&self.0));
        let mut by_backend: Vec<Settled> = Vec::new();
        for e in entries {
            match by_backend.iter_mut().find(|s| s.backend == e.backend) {
                Some(s) => s.seqs.extend(e.seqs),
                None => by_backend.push(e),
            }
        }
        by_backend
    }
}

/// A delivery cursor (a pool's, or a mirror pool backend's): every frame of
/// the pool below it is settled there. Published by the dispatcher,
/// recorded by the writer.
#[derive(Debug, Clone)]
pub struct Cursor {
    pub name: String,
    below: Arc<AtomicU64>,
}

impl Cursor {
    pub fn new(name: String) -> Cursor {
        Cursor {
            name,
            below: Arc::default(),
        }
    }

    pub fn publish(&self, below: u64) {
        self.below.store(below, Ordering::Release);
    }

    /// The cursor, 0 before anything published it.
    pub fn get(&self) -> u64 {
        self.below.load(Ordering::Acquire)
    }

    /// Whether a dispatcher still holds this cursor (false once a removed
    /// pool's dispatcher has finished).
    pub fn in_use(&self) -> bool {
        Arc::strong_count(&self.below) > 1
    }
}

/// Where a removed pool ends: the last seq that may hold one of its
/// frames, set by the writer when it closes the pool. Its dispatcher reads
/// the files no further.
#[derive(Debug, Clone, Default)]
pub struct ClosedAt(Arc<AtomicU64>);

impl ClosedAt {
    fn open() -> ClosedAt {
        ClosedAt(Arc::new(AtomicU64::new(u64::MAX)))
    }

    fn close(&self, last: u64) {
        self.0.store(last, Ordering::Release);
    }

    /// How far the pool's frames may be read: `u64::MAX` while it is open.
    pub fn bound(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// The highest seq of a batch a pool's channel could not take: the
/// dispatcher reads up to there from the files.
#[derive(Debug, Clone, Default)]
pub struct Missed(Arc<AtomicU64>);

impl Missed {
    pub fn note(&self, last: u64) {
        self.0.fetch_max(last, Ordering::AcqRel);
    }

    /// Whether a batch reaching `seq` or beyond was dropped.
    pub fn reaches(&self, seq: u64) -> bool {
        self.0.load(Ordering::Acquire) >= seq
    }
}

/// The writer's end of one pool.
#[derive(Debug)]
pub struct PoolLink {
    pub name: String,
    pub tx: mpsc::Sender<Batch>,
    /// The first seq whose frames go to `tx` (0: this run's first). A pool
    /// added by a reload starts with the live stream.
    pub start: u64,
    pub closed_at: ClosedAt,
    pub missed: Missed,
    pub settled: SettledLog,
    /// One per delivery name: the pool, or each backend of a `mirror` pool.
    pub cursors: Vec<Cursor>,
}

/// The pool's end of its link.
pub struct PoolEnds {
    pub rx: mpsc::Receiver<Batch>,
    pub missed: Missed,
    pub closed_at: ClosedAt,
    pub settled: SettledLog,
    /// Per delivery name, in order.
    pub cursors: Vec<Cursor>,
}

/// Both ends of one pool's link: `delivery_names` are its cursors' names,
/// `start` the first seq it gets live (0: this run's first).
pub fn link(name: &str, delivery_names: Vec<String>, start: u64) -> (PoolLink, PoolEnds) {
    let (tx, rx) = mpsc::channel(POOL_BATCHES);
    let cursors: Vec<Cursor> = delivery_names.into_iter().map(Cursor::new).collect();
    let link = PoolLink {
        name: name.to_owned(),
        tx,
        start,
        closed_at: ClosedAt::open(),
        missed: Missed::default(),
        settled: SettledLog::default(),
        cursors: cursors.clone(),
    };
    let ends = PoolEnds {
        rx,
        missed: link.missed.clone(),
        closed_at: link.closed_at.clone(),
        settled: link.settled.clone(),
        cursors,
    };
    (link, ends)
}

/// The writer's end of one pool slot: frames written and not yet offered,
/// and what was offered.
pub struct Offer {
    /// `None` once the pool is closed (removed by a reload).
    tx: Option<mpsc::Sender<Batch>>,
    missed: Missed,
    closed_at: ClosedAt,
    /// The last seq whose frames were offered to the pool.
    covered: u64,
    /// Bytes of frames offered and not yet taken in by the dispatcher.
    queued: Arc<AtomicU64>,
    /// Written and not yet offered.
    frames: Vec<Frame>,
}

impl Offer {
    /// The writer's end of `link`; the pool's frames are offered from seq
    /// `first` on.
    pub fn new(link: &PoolLink, first: u64) -> Offer {
        Offer {
            tx: Some(link.tx.clone()),
            missed: link.missed.clone(),
            closed_at: link.closed_at.clone(),
            covered: first.saturating_sub(1),
            queued: Arc::default(),
            frames: Vec::new(),
        }
    }

    /// Frames written for the pool, to be offered with the next batch.
    pub fn stage(&mut self, frames: &mut Vec<Frame>) {
        self.frames.append(frames);
    }

    /// Offers the staged frames as the records up to `last`. Never waits
    /// for the dispatcher: one that is behind (its channel or its share of
    /// memory full) reads these frames back from the journal. Returns how
    /// many frames it did not keep.
    pub fn offer(&mut self, last: u64, spilled: &IntCounter) {
        if self.frames.is_empty() {
            self.offer_none(last);
            return;
        }
        let frames = std::mem::take(&mut self.frames);
        let n = frames.len() as u64;
        let span = self.covered + 1..=last;
        self.covered = last;
        let Some(tx) = &self.tx else { return };
        let kept = match Charge::take(&self.queued, cost(&frames)) {
            None => false,
            Some(charge) => !matches!(
                tx.try_send(Batch {
                    span: Some(span),
                    frames,
                    charge: Some(charge),
                }),
                Err(mpsc::error::TrySendError::Full(_))
            ),
        };
        if !kept {
            self.missed.note(last);
            spilled.inc_by(n);
        }
    }

    /// A pool that had no frames among the last [`QUIET_STEP`] records or
    /// more is told so with an empty batch, so its delivery cursor (and
    /// lag) follows the journal instead of staying at its last frame: a
    /// quiet pool then reports no lag, and resumes after a restart from
    /// near the end instead of reading through every other pool's records
    /// since its last frame. Dropped when its channel is full (the next
    /// batch covers the same records).
    fn offer_none(&mut self, last: u64) {
        if last < self.covered.saturating_add(QUIET_STEP) {
            return;
        }
        let Some(tx) = &self.tx else { return };
        let span = self.covered + 1..=last;
        if tx
            .try_send(Batch {
                span: Some(span),
                frames: Vec::new(),
                charge: None,
            })
            .is_ok()
        {
            self.covered = last;
        }
    }

    /// Frames outside the record sequence (in-band checkpoint messages);
    /// dropped for a pool that is behind.
    pub fn announce(&self, frames: &[Frame]) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Batch {
                span: None,
                frames: frames.to_vec(),
                charge: None,
            });
        }
    }

    /// The pool is removed: no more frames after `last`, and its channel
    /// closes (after the mark is set, so the dispatcher sees both).
    pub fn close(&mut self, last: u64) {
        self.closed_at.close(last);
        self.tx = None;
    }
}

/// One backend's dispatcher of a `mirror` pool, as [`fan_out`] feeds it.
pub struct MirrorOut {
    pub tx: mpsc::Sender<Batch>,
    pub missed: Missed,
    /// Bytes waiting for this backend's dispatcher (its own
    /// [`QUEUED_BYTES`]).
    queued: Arc<AtomicU64>,
}

impl MirrorOut {
    pub fn new(tx: mpsc::Sender<Batch>, missed: Missed) -> MirrorOut {
        MirrorOut {
            tx,
            missed,
            queued: Arc::default(),
        }
    }
}

/// `mirror`: every batch from the journal goes to every backend's
/// dispatcher, each charged against that backend's own bound in bytes.
/// One that is behind (its channel or its share full) gets none and reads
/// from the journal instead, so it never holds up the others.
pub async fn fan_out(mut rx: mpsc::Receiver<Batch>, outs: Vec<MirrorOut>) {
    while let Some(b) = rx.recv().await {
        let bytes = cost(&b.frames);
        for out in &outs {
            let kept = match Charge::take(&out.queued, bytes) {
                None => false,
                Some(charge) => !matches!(
                    out.tx.try_send(Batch {
                        span: b.span.clone(),
                        charge: Some(charge),
                        frames: b.frames.clone(),
                    }),
                    Err(mpsc::error::TrySendError::Full(_))
                ),
            };
            if !kept {
                if let Some(span) = &b.span {
                    out.missed.note(*span.end());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_pool_is_told_it_had_nothing_after_quiet_step_records() {
        let (link, mut ends) = link("q", vec!["q".into()], 5);
        let mut offer = Offer::new(&link, 1);
        let spilled = IntCounter::new("s", "s").unwrap();
        offer.offer(QUIET_STEP - 1, &spilled);
        assert!(ends.rx.try_recv().is_err(), "fewer than QUIET_STEP records");
        offer.offer(QUIET_STEP + 10, &spilled);
        let b = ends.rx.try_recv().unwrap();
        assert_eq!(b.span, Some(1..=QUIET_STEP + 10));
        assert!(b.frames.is_empty());
        // The next batch goes on from there.
        offer.offer(2 * QUIET_STEP + 10, &spilled);
        assert_eq!(
            ends.rx.try_recv().unwrap().span,
            Some(QUIET_STEP + 11..=2 * QUIET_STEP + 10)
        );
    }

    #[test]
    fn offers_follow_each_other_and_a_full_pool_reads_the_files() {
        let (link, mut ends) = link("p", vec!["p".into()], 5);
        let mut offer = Offer::new(&link, 5);
        let spilled = IntCounter::new("s", "s").unwrap();
        let meta = Arc::new(crate::frame::ConnMeta::new(
            1,
            "in".into(),
            "127.0.0.1:1".parse().unwrap(),
        ));
        let frame = |seq| {
            let mut f = Frame::new(bytes::Bytes::from_static(b"x"), meta.clone());
            f.seq = seq;
            f
        };
        offer.stage(&mut vec![frame(6), frame(8)]);
        offer.offer(9, &spilled);
        offer.offer(12, &spilled); // nothing staged: nothing sent
        offer.stage(&mut vec![frame(14)]);
        offer.offer(15, &spilled);
        let a = ends.rx.try_recv().unwrap();
        let b = ends.rx.try_recv().unwrap();
        assert_eq!(a.span, Some(5..=9));
        assert_eq!(b.span, Some(10..=15));
        assert!(!ends.missed.reaches(1));
        // Past the bound in bytes: not kept, the pool is told to read.
        let over = QUEUED_BYTES / (1 + FRAME_OVERHEAD);
        offer.stage(&mut (0..over).map(|s| frame(16 + s)).collect());
        offer.offer(16 + over, &spilled);
        drop(a);
        drop(b);
        offer.stage(&mut (0..over).map(|s| frame(17 + over + s)).collect());
        offer.offer(17 + 2 * over, &spilled);
        // The first big batch came while 3 frames were queued: over the
        // bound, not kept. The second fits an empty queue whatever its size.
        assert_eq!(spilled.get(), over);
        assert!(ends.missed.reaches(16 + over));
        assert!(!ends.missed.reaches(17 + over));
        offer.close(99);
        assert_eq!(ends.closed_at.bound(), 99);
        // Settled seqs come back per backend.
        ends.settled.record("a".into(), vec![1, 2]);
        ends.settled.record("b".into(), vec![3]);
        ends.settled.record("a".into(), vec![4]);
        let d = link.settled.drain();
        assert_eq!(d.len(), 2);
        assert_eq!((&*d[0].backend, &d[0].seqs[..]), ("a", &[1, 2, 4][..]));
        assert!(link.settled.drain().is_empty());
        ends.cursors[0].publish(7);
        assert_eq!(link.cursors[0].get(), 7);
    }

    #[tokio::test]
    async fn a_mirror_backend_that_takes_nothing_is_bounded_in_bytes() {
        let meta = Arc::new(crate::frame::ConnMeta::new(
            1,
            "in".into(),
            "127.0.0.1:1".parse().unwrap(),
        ));
        let (tx, rx) = mpsc::channel(4);
        let (fast_tx, mut fast_rx) = mpsc::channel(POOL_BATCHES);
        let (slow_tx, mut slow_rx) = mpsc::channel(POOL_BATCHES);
        let (fast_missed, slow_missed) = (Missed::default(), Missed::default());
        let task = tokio::spawn(fan_out(
            rx,
            vec![
                MirrorOut::new(fast_tx, fast_missed.clone()),
                MirrorOut::new(slow_tx, slow_missed.clone()),
            ],
        ));
        // 40 batches of 1MiB of frames: the slow backend (taking nothing)
        // may hold 32MiB of them, not 40.
        let payload = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let mut fast_got = 0;
        for i in 0..40u64 {
            let frames: Vec<Frame> = (0..16)
                .map(|_| Frame::new(payload.clone(), meta.clone()))
                .collect();
            tx.send(Batch {
                span: Some(i * 16 + 1..=(i + 1) * 16),
                frames,
                charge: None,
            })
            .await
            .unwrap();
            // The fast one takes each batch (dropping its charge).
            let b = fast_rx.recv().await.unwrap();
            fast_got += b.frames.len();
        }
        drop(tx);
        task.await.unwrap();
        assert_eq!(fast_got, 640);
        assert!(!fast_missed.reaches(1));
        let mut held = 0u64;
        while let Ok(b) = slow_rx.try_recv() {
            held += cost(&b.frames);
        }
        assert!(
            held <= QUEUED_BYTES,
            "{held} bytes held for the slow backend"
        );
        assert!(held >= QUEUED_BYTES - (1 << 20) - 16 * FRAME_OVERHEAD);
        // What it could not hold it reads from the files.
        assert!(slow_missed.reaches(640));
    }
}
