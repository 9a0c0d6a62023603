//! Shared state of a pool's backends: up/down (the rise/fall [`Hysteresis`],
//! pure, plus passive failures), how many upstream connections are open,
//! and unsettled bytes. The health checker and upstream tasks write it; the
//! dispatcher reads it. Every state flip is logged once, with its reason,
//! and wakes the dispatcher.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::config::BackendConfig;
use crate::metrics::BackendMetrics;

/// One backend of a pool.
pub struct Backend {
    /// The backend's number in its dispatcher, never reused after a reload
    /// removes it (settlements are reported by it).
    pub index: usize,
    pub pool: Arc<str>,
    pub addr: SocketAddr,
    /// Health verdict, mirrored from `health` for lock-free reads.
    up: AtomicBool,
    /// Upstream connections currently open to it.
    connected: AtomicUsize,
    /// Bytes handed to its upstreams and not yet acknowledged by its kernel
    /// (queued plus in flight). `least-pending` reads it.
    pending_bytes: AtomicU64,
    health: Mutex<Hysteresis>,
    pub metrics: BackendMetrics,
    /// Wakes the pool's dispatcher on any change that may unblock it.
    wake: Arc<Notify>,
}

impl Backend {
    pub fn new(
        index: usize,
        pool: Arc<str>,
        cfg: &BackendConfig,
        rise: u32,
        fall: u32,
        metrics: BackendMetrics,
        wake: Arc<Notify>,
    ) -> Self {
        metrics.up.set(1);
        Self {
            index,
            pool,
            addr: cfg.socket_addr(),
            // Optimistic start, like HAProxy: the first failed connect or
            // `fall` failed checks take it down.
            up: AtomicBool::new(true),
            connected: AtomicUsize::new(0),
            pending_bytes: AtomicU64::new(0),
            health: Mutex::new(Hysteresis::new(rise, fall, true)),
            metrics,
            wake,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Up and with at least one open connection: frames can go there now.
    pub fn available(&self) -> bool {
        self.is_up() && self.connected.load(Ordering::Acquire) > 0
    }

    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes.load(Ordering::Relaxed)
    }

    pub fn add_pending(&self, n: u64) {
        self.pending_bytes.fetch_add(n, Ordering::Relaxed);
        self.metrics.unsettled.add(n as i64);
    }

    pub fn sub_pending(&self, n: u64) {
        self.pending_bytes.fetch_sub(n, Ordering::Relaxed);
        self.metrics.unsettled.sub(n as i64);
    }

    /// An upstream connection opened.
    pub fn connection_opened(&self) {
        self.connected.fetch_add(1, Ordering::AcqRel);
        self.wake.notify_one();
    }

    /// An upstream connection closed (for whatever reason).
    pub fn connection_closed(&self) {
        self.connected.fetch_sub(1, Ordering::AcqRel);
    }

    /// Reloaded `rise`/`fall`.
    pub fn set_thresholds(&self, rise: u32, fall: u32) {
        crate::lock(&self.health).set_thresholds(rise, fall);
    }

    /// Result of one active check.
    pub fn active_result(&self, result: Result<(), String>) {
        let mut h = crate::lock(&self.health);
        if let Some(now_up) = h.observe(result.is_ok()) {
            self.set_state(
                now_up,
                result.err().as_deref().unwrap_or("health checks pass"),
            );
        }
    }

    /// A write error, reset, EOF or refused connect on an upstream: down at
    /// once; active checks must then pass `rise` times.
    pub fn passive_failure(&self, reason: &str) {
        let mut h = crate::lock(&self.health);
        if h.force_down() {
            self.set_state(false, reason);
        }
    }

    fn set_state(&self, up: bool, reason: &str) {
        self.up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(up));
        if up {
            self.metrics.to_up.inc();
            tracing::info!(pool = %self.pool, backend = %self.addr, reason, "backend up");
        } else {
            self.metrics.to_down.inc();
            tracing::warn!(pool = %self.pool, backend = %self.addr, reason, "backend down");
        }
        self.wake.notify_one();
    }
}

/// Counts consecutive results against the current state; flips after
/// `rise` successes (down to up) or `fall` failures (up to down).
#[derive(Debug, Clone)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

impl Hysteresis {
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            streak: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// New thresholds from a reload; the state and streak stay.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Records one check result. Returns the new state when it flipped.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }

    /// A passive failure: down now. Returns true when that is a change.
    pub fn force_down(&mut self) -> bool {
        self.streak = 0;
        std::mem::replace(&mut self.up, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_rises_after_rise_successes() {
        let mut h = Hysteresis::new(2, 3, true);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None, "a success resets the streak");
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(false), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.observe(false), None);
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(false), None, "a failure resets the streak");
        assert_eq!(h.observe(true), None);
        assert_eq!(h.observe(true), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn force_down_reports_only_a_change() {
        let mut h = Hysteresis::new(1, 5, true);
        assert!(h.force_down());
        assert!(!h.force_down());
        assert_eq!(h.observe(true), Some(true));
    }
}
