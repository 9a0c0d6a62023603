//! A tiny rate limiter for per-frame and per-connection warnings, so a flood
//! of garbage cannot flood the log. Each listener owns one, shared by its
//! sessions.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows `burst` events per `period`; counts what it suppressed so the next
/// allowed log line can say how many were skipped.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, period: Duration) -> Self {
        Self {
            burst,
            period,
            state: Mutex::new(State {
                window_start: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(suppressed_since_last)` when this event may be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut s = crate::lock(&self.state);
        let now = Instant::now();
        if now.duration_since(s.window_start) >= self.period {
            s.window_start = now;
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_counts() {
        let l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let l = LogLimiter::new(1, Duration::ZERO);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
    }
}
