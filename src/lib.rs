//! auditlb: a Layer-4 load balancer for syslog and line-framed log streams.
//!
//! ```text
//! client ──TCP──▶ listener ──▶ session (framer) ──batch──▶ dispatcher (one per pool)
//!                 listener.rs   listener.rs, framer.rs      dispatcher.rs, balance.rs
//!                                                               │ numbers frames (seq),
//!                                                               │ picks a backend per frame
//!                                   ┌───────────────────────────┼──────────────┐
//!                                   ▼                           ▼              ▼
//!                              upstream A                  upstream B     upstream C ──TCP──▶ backends
//!                              upstream.rs: persistent connections, vectored writes,
//!                              FIFO of (seq, end offset) settled by TCP ACK (SIOCOUTQ);
//!                              on failure the unsettled suffix goes back to the dispatcher
//! health.rs ──▶ pool.rs (backend up/down, rise/fall) ──▶ dispatcher
//! metrics.rs: every stage counts into one prometheus::Registry, served by admin.rs
//! server.rs wires it all from config.rs and runs the graceful stop.
//! ```
//!
//! The journal (a later stage) sits between the sessions and the
//! dispatcher: it numbers and records each batch before it is routed.

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
pub mod units;
pub mod upstream;
