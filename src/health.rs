//! Backend health: the rise/fall hysteresis (pure) and the active checker
//! task, one per backend, spawned by the server. Passive failures (an
//! upstream's write error, reset or EOF) come in through
//! [`crate::pool::Backend::passive_failure`] and mark a backend down at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::pool::Backend;

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

/// Active TCP connect check of one backend, every `interval`, until
/// `stop` is cancelled. The first check runs at once.
pub async fn run(
    backend: Arc<Backend>,
    interval: Duration,
    timeout: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, TcpStream::connect(backend.addr)).await;
        let elapsed = started.elapsed();
        backend
            .metrics
            .check_duration
            .observe(elapsed.as_secs_f64());
        let outcome = match result {
            Ok(Ok(stream)) => {
                drop(stream);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("health check: connect: {e}")),
            Err(_) => Err(format!("health check: no connection within {timeout:?}")),
        };
        backend.active_result(outcome);
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
