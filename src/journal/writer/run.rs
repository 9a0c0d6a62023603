//! The writer thread's loop: takes the sessions' batches, stages them,
//! commits (write, sync by policy, checkpoint, roll), and only then offers
//! each pool its frames; applies reloads between two batches.

use super::*;
use crate::journal::handoff::{Offer, PoolLink};

impl Writer {
    /// Takes on a pool: its FRAME records name it, its delivery cursors and
    /// settled ranges are recorded. `starts` are where its cursors start
    /// (per delivery name), recorded at once: a crash before the pool's
    /// first checkpoint still resumes from there.
    pub(super) fn add_pool(&mut self, link: PoolLink, starts: &[u64]) -> Offer {
        let offer = Offer::new(&link, link.start.max(self.start_seq));
        let slot = self.pool_names.len();
        self.closed_pools.push(None);
        self.pool_names.push(link.name.as_str().into());
        self.settled_logs.push((link.name, link.settled));
        for (i, cursor) in link.cursors.into_iter().enumerate() {
            let start = starts.get(i).copied().unwrap_or(link.start).max(1);
            cursor.publish(start);
            self.push_cursor(&cursor.name, start);
            self.delivery.push(CursorSlot {
                cursor,
                recorded: start,
                recorded_in: self.seg_no,
                pool: slot,
            });
        }
        offer
    }
}

/// Most frames journaled in one go.
pub(super) const STAGE_FRAMES: u64 = 8192;

/// Accepted frame batches not yet journaled: journaled together, so the
/// hashing of many small batches is shared between two cores.
#[derive(Default)]
pub(super) struct Staged {
    /// Each batch with its pool slot (`None`: no pool, journaled only).
    batches: Vec<(Option<usize>, Vec<Frame>)>,
    /// Batches that asked to be told their last seq: (index in `batches`,
    /// whom to tell).
    acks: Vec<(usize, crate::journal::Ack)>,
    /// A batch here asked for an answer: under `sync = "interval"` the
    /// commit asks for the sync at once rather than at the next tick, so
    /// a RELP client's window does not wait out the interval.
    pub(super) waited: bool,
    frames: u64,
    /// Estimated journal bytes (for the disk budget).
    bytes: u64,
}

impl Staged {
    /// Journals the staged batches in order and hands each pool its frames.
    pub(super) fn append(&mut self, w: &mut Writer, outputs: &mut [Offer]) {
        if self.batches.is_empty() {
            return;
        }
        let names: Vec<Arc<str>> = self
            .batches
            .iter()
            .map(|(p, _)| p.map_or_else(|| Arc::from(""), |p| w.pool_names[p].clone()))
            .collect();
        let mut batches: Vec<(&str, &mut [Frame])> = names
            .iter()
            .zip(self.batches.iter_mut())
            .map(|(n, (_, f))| (&**n, &mut f[..]))
            .collect();
        w.append_batches(&mut batches);
        for (i, ack) in self.acks.drain(..) {
            if let Some(last) = self.batches[i].1.last() {
                self.waited = true;
                let _ = ack.send(Ok(last.seq));
            }
        }
        for (pool, mut frames) in self.batches.drain(..) {
            if let Some(p) = pool {
                outputs[p].stage(&mut frames);
            }
        }
        self.frames = 0;
        self.bytes = 0;
    }
}

/// Offers waiting checkpoint messages to every pool (outside the record
/// sequence; dropped for a pool whose dispatcher is behind).
pub(super) fn announce(w: &mut Writer, outputs: &[Offer]) {
    if w.announce.is_empty() {
        return;
    }
    let frames = std::mem::take(&mut w.announce);
    for out in outputs {
        out.announce(&frames);
    }
}

/// Offers each pool the frames written for it since the last offer, up to
/// the last record written.
pub(super) fn offer(w: &Writer, outputs: &mut [Offer]) {
    for out in outputs.iter_mut() {
        out.offer(w.next_seq - 1, &w.metrics.spilled);
    }
}

/// Applies a reload's routing change after everything before it was
/// written and offered.
pub(super) fn reconfigure(
    w: &mut Writer,
    outputs: &mut Vec<Offer>,
    routes: &mut Vec<Option<usize>>,
    rc: crate::journal::Reconfigure,
) -> oneshot::Sender<u64> {
    for link in rc.add_pools {
        let starts = vec![link.start.max(w.start_seq); link.cursors.len()];
        let out = w.add_pool(link, &starts);
        outputs.push(out);
    }
    for i in rc.close_pools {
        if let Some(out) = outputs.get_mut(i) {
            out.close(w.next_seq - 1);
        }
        if let Some(c) = w.closed_pools.get_mut(i) {
            *c = Some(Instant::now());
        }
    }
    *routes = rc.routes;
    if let Some(stamp) = &rc.config {
        w.push_config(stamp);
    }
    rc.done
}

/// Writes the batch buffer, syncs under `sync = "always"`, and writes a
/// checkpoint or rolls the segment when due. A failing disk blocks here
/// (retrying with backoff), which stops the sessions: backpressure, not
/// loss. False when aborted.
pub(super) async fn commit(
    w: &mut Writer,
    abort: &CancellationToken,
    backoff: &mut Duration,
) -> bool {
    loop {
        let r = w.flush().and_then(|()| {
            if w.cfg.sync == SyncPolicy::Always {
                w.sync()?;
            }
            if w.since_checkpoint >= w.cfg.checkpoint_every {
                w.checkpoint()?;
            }
            w.maybe_roll()
        });
        match r {
            Ok(()) => {
                *backoff = Duration::from_millis(10);
                w.metrics.writable.set(i64::from(w.sync_healthy()));
                return true;
            }
            Err(e) => {
                w.metrics.writable.set(0);
                tracing::error!(error = %e, segment = %w.seg_path.display(), retry_in = ?*backoff, "journal write failed; holding frames");
                tokio::select! {
                    _ = abort.cancelled() => return false,
                    _ = tokio::time::sleep(*backoff) => {}
                }
                *backoff = (*backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Most ingress items taken into one write.
pub(super) const MAX_ITEMS_PER_WRITE: usize = 256;

pub(super) async fn run(
    w: &mut Writer,
    rx: &mut mpsc::Receiver<Ingress>,
    custody: &mut mpsc::Receiver<crate::journal::Custody>,
    outputs: &mut Vec<Offer>,
    routes: &mut Vec<Option<usize>>,
    abort: &CancellationToken,
) {
    let tick_every = match w.cfg.sync {
        SyncPolicy::Interval => w.cfg.sync_interval.0.min(w.cfg.checkpoint_interval.0),
        _ => w.cfg.checkpoint_interval.0,
    }
    .max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items: Vec<Ingress> = Vec::with_capacity(MAX_ITEMS_PER_WRITE);
    let mut backoff = Duration::from_millis(10);
    // on-full = block and the budget is reached.
    let mut blocked = false;
    let mut staged = Staged::default();
    loop {
        tokio::select! {
            _ = abort.cancelled() => {
                // Frames held back by a full journal are not silently lost:
                // each batch leaves a GAP record.
                while let Ok(item) = rx.try_recv() {
                    items.push(item);
                }
                for item in items.drain(..) {
                    if let Ingress::Frames { frames, .. } = item {
                        // An ack is dropped unanswered: the client is not
                        // told its frames are safe, and sends them again.
                        if let Some(f) = frames.first() {
                            w.metrics.refused_full.inc_by(frames.len() as u64);
                            w.append_gap(&f.conn.listener, &f.conn.peer.to_string(), "disk_full", frames.len() as u64);
                        }
                    }
                }
                let _ = w.flush();
                return;
            }
            _ = tick.tick() => {
                w.record_settled();
                let r = (|| -> io::Result<()> {
                    w.flush()?;
                    if w.cfg.sync == SyncPolicy::Interval {
                        w.sync_soon()?;
                    }
                    if w.checkpoint_due() {
                        w.checkpoint()?;
                    }
                    w.maybe_roll()
                })();
                if let Err(e) = r {
                    tracing::error!(error = %e, segment = %w.seg_path.display(), "journal: periodic work failed");
                }
                announce(w, outputs);
            }
            n = rx.recv_many(&mut items, MAX_ITEMS_PER_WRITE), if !blocked => {
                if n == 0 {
                    return;
                }
            }
            // Even while blocked: retention's PRUNE frees the space.
            Some(c) = custody.recv() => {
                staged.append(w, outputs);
                w.push_custody(c);
                if !commit(w, abort, &mut backoff).await {
                    return;
                }
                offer(w, outputs);
                continue;
            }
        }
        if blocked {
            // on-full = block: take nothing in until space is freed.
            w.measure();
            if !w.fits(w.cfg.segment_size.0.min(1 << 20)) {
                continue;
            }
            blocked = false;
        }
        if items.is_empty() {
            continue;
        }
        let mut held: Vec<Ingress> = Vec::new();
        let taken = std::mem::take(&mut items);
        for item in taken {
            if blocked {
                held.push(item);
                continue;
            }
            match item {
                Ingress::Frames {
                    listener,
                    frames,
                    ack,
                } => {
                    let bytes: u64 = frames.iter().map(|f| f.len() as u64 + 100).sum();
                    if !w.fits(bytes + staged.bytes + w.buf.len() as u64) {
                        match w.cfg.on_full {
                            OnFull::Drop => {
                                let n = frames.len() as u64;
                                w.metrics.refused_full.inc_by(n);
                                let (listener, client) = frames
                                    .first()
                                    .map(|f| (f.conn.listener.to_string(), f.conn.peer.to_string()))
                                    .unwrap_or_default();
                                w.append_gap(&listener, &client, "disk_full", n);
                                if let Some(ack) = ack {
                                    let _ = ack.send(Err(crate::journal::Refused::DiskFull));
                                }
                                continue;
                            }
                            OnFull::Block => {
                                // Keep this item and everything after it.
                                held.push(Ingress::Frames {
                                    listener,
                                    frames,
                                    ack,
                                });
                                blocked = true;
                                continue;
                            }
                        }
                    }
                    let route = routes.get(listener).copied().flatten();
                    if route.is_none() {
                        // A removed listener's session that outlived the
                        // reload's grace: journaled, not delivered.
                        w.metrics.unrouted.inc_by(frames.len() as u64);
                        tracing::error!(
                            frames = frames.len(),
                            "frames from a removed listener have no pool; journaled only"
                        );
                    }
                    staged.frames += frames.len() as u64;
                    staged.bytes += bytes;
                    if let Some(ack) = ack {
                        staged.acks.push((staged.batches.len(), ack));
                    }
                    staged.batches.push((route, frames));
                    // Checkpoints and segment ends fall between batches, as
                    // close to the configured count and size as batches
                    // allow.
                    if staged.frames >= STAGE_FRAMES
                        || w.since_checkpoint + staged.frames >= w.cfg.checkpoint_every
                        || w.seg_len + w.buf.len() as u64 + staged.bytes >= w.cfg.segment_size.0
                    {
                        staged.append(w, outputs);
                    } else {
                        continue;
                    }
                }
                Ingress::Gap {
                    listener,
                    client,
                    reason,
                    count,
                } => {
                    // Records stay in arrival order.
                    staged.append(w, outputs);
                    w.append_gap(&listener, &client.to_string(), reason, count);
                }
                Ingress::Admin(a) => {
                    // Records stay in arrival order.
                    staged.append(w, outputs);
                    w.append_admin(&a);
                }
                Ingress::Reconfigure(rc) => {
                    staged.append(w, outputs);
                    // What came before goes out under the old routing.
                    if !commit(w, abort, &mut backoff).await {
                        return;
                    }
                    offer(w, outputs);
                    let done = reconfigure(w, outputs, routes, *rc);
                    if !commit(w, abort, &mut backoff).await {
                        return;
                    }
                    let _ = done.send(w.next_seq - 1);
                    continue;
                }
            }
            // Checkpoints and segment ends fall between batches, as close to
            // the configured counts and sizes as batches allow.
            let due = w.since_checkpoint >= w.cfg.checkpoint_every
                || w.seg_len + w.buf.len() as u64 >= w.cfg.segment_size.0;
            if due && !commit(w, abort, &mut backoff).await {
                return;
            }
        }
        staged.append(w, outputs);
        // Held back by a full journal: first in line once there is room.
        items = held;
        // Written (and synced, by policy) before anything is routed.
        if !commit(w, abort, &mut backoff).await {
            return;
        }
        if std::mem::take(&mut staged.waited) && w.cfg.sync == SyncPolicy::Interval {
            // A RELP client waits for these: the sync thread's group
            // commit now (it takes in whatever else is written meanwhile).
            if let Err(e) = w.sync_soon() {
                tracing::error!(error = %e, segment = %w.seg_path.display(), "journal: sync request failed");
            }
        }
        offer(w, outputs);
        announce(w, outputs);
    }
}
