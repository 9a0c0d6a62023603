//! auditlb: a Layer-4 load balancer for syslog and line-framed log streams.
//!
//! ```text
//! client ──TCP──▶ listener ──▶ session (framer) ──batch──▶ journal writer (one thread)
//!                 listener.rs   listener.rs, framer.rs      journal/writer.rs: seq, chain, write(2),
//!                                                           sync policy, checkpoints, anchors
//!                                                               │ written frames, per pool; a pool
//!                                                               │ that falls behind reads them back
//!                                                               ▼ from the files (journal/tail.rs)
//!                                                   dispatcher (one per pool; per backend if mirror)
//!                                                   dispatcher.rs, balance.rs: backend per frame,
//!                                                   delivery cursor -> DELIVERY records
//!                                   ┌───────────────────────────┼──────────────┐
//!                                   ▼                           ▼              ▼
//!                              upstream A                  upstream B     upstream C ──TCP──▶ backends
//!                              upstream.rs: persistent connections, vectored writes,
//!                              FIFO of (seq, end offset) settled by TCP ACK (SIOCOUTQ);
//!                              on failure the unsettled suffix (and after a reset the
//!                              replay window) goes back to the dispatcher
//! health.rs ──▶ pool.rs (backend up/down, rise/fall) ──▶ dispatcher
//! metrics.rs: every stage counts into one prometheus::Registry, served by admin.rs
//! server.rs wires it all from config.rs, applies reloads (SIGHUP: the writer switches
//! routing between two batches, dispatchers swap backend sets) and runs the graceful stop.
//! journal/verify.rs and journal/cat.rs read journals back (`auditlb verify`, `cat`).
//! ```

pub mod admin;
pub mod balance;
pub mod config;
pub mod dispatcher;
pub mod frame;
pub mod framer;
pub mod health;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod ratelimit;
pub mod server;
pub mod syslog;
pub mod time;
pub mod units;
pub mod upstream;

/// Locks a mutex, taking the data even when a thread panicked while holding
/// it: every structure shared this way is consistent between statements,
/// and the proxy must keep serving.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
