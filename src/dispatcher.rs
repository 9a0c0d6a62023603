//! The pool dispatcher: one task per pool. It takes batches of journaled
//! frames in sequence order, picks a backend for
//! each frame with the pool's [`Selector`], and sends per-backend batches to
//! that backend's upstream connections. Frames an upstream hands back (its
//! unacknowledged suffix after a failure) come first in the next round.
//! When no backend is available, frames wait here and no more input is
//! taken, so clients feel backpressure instead of memory growing.
//!
//! Its input comes from the journal writer: frames already numbered and
//! written, in `seq` order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::balance::{Selector, View};
use crate::frame::Frame;
use crate::metrics::PoolMetrics;
use crate::pool::Backend;
use crate::upstream::{ConnShared, Handback};

/// Batches that may wait between the sessions and the dispatcher of one
/// pool. Each is at most one read buffer's worth of frames.
pub const INGRESS_BATCHES: usize = 256;
/// Batches that may wait in one upstream connection's channel; the real
/// bound is the pool's `queue-bytes`.
pub const UPSTREAM_BATCHES: usize = 64;
/// Most frames routed in one round.
const ROUND_FRAMES: usize = 4096;

/// The dispatcher's end of one upstream connection.
pub struct ConnHandle {
    pub tx: mpsc::Sender<Vec<Frame>>,
    pub shared: Arc<ConnShared>,
}

/// Outcome of one routing round.
enum Round {
    /// Some frames were sent; go again.
    Progress,
    /// No backend can take frames now.
    Stalled,
    Aborted,
}

pub struct Dispatcher {
    pool: Arc<str>,
    backends: Vec<Arc<Backend>>,
    /// Per backend, its upstream connections.
    conns: Vec<Vec<ConnHandle>>,
    selector: Selector,
    rx: mpsc::Receiver<Vec<Frame>>,
    handback: Arc<Handback>,
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
        rx: mpsc::Receiver<Vec<Frame>>,
        handback: Arc<Handback>,
        wake: Arc<Notify>,
        queue_bytes: u64,
        metrics: PoolMetrics,
    ) -> Self {
        Self {
            pool,
            backends,
            conns,
            selector,
            rx,
            handback,
            wake,
            queue_bytes,
            pending: VecDeque::new(),
            metrics,
        }
    }

    /// Routes frames until every session is gone and every frame is settled,
    /// or `abort` fires (shutdown grace over). Dropping `self` at the end
    /// closes the upstream channels, which lets the upstreams finish.
    pub async fn run(mut self, abort: CancellationToken) {
        let mut input_open = true;
        loop {
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
                            // A safety net: availability is polled too.
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        }
                        continue;
                    }
                }
            }
            if !input_open {
                if self.all_settled() {
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
                b = self.rx.recv() => match b {
                    Some(batch) => self.pending.extend(batch),
                    None => input_open = false,
                },
            }
        }
        let mut lost: Vec<Frame> = self.pending.drain(..).collect();
        lost.extend(self.handback.take());
        self.rx.close();
        while let Ok(b) = self.rx.try_recv() {
            lost.extend(b);
        }
        if !lost.is_empty() {
            self.metrics.lost.inc_by(lost.len() as u64);
            tracing::error!(
                pool = %self.pool,
                frames = lost.len(),
                "shutdown grace over: frames never reached a backend"
            );
        }
        self.metrics.pending.set(0);
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
