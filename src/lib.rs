//! auditlb: a Layer-4 load balancer for syslog and line-framed log streams.
//!
//! ```text
//! client ──TCP/TLS──▶ listener ──▶ session (TLS handshake, framer) ──batch──▶ journal writer
//!                 listener.rs   session.rs, framer.rs     journal/writer/: seq, chain, write(2),
//!                                                          sync policy, checkpoints, anchors, roll
//!                                                               │ written frames, per pool
//!                                                               │ (journal/handoff.rs); a pool that
//!                                                               │ falls behind reads them back from
//!                                                               ▼ the files (journal/tail/)
//!                                                   dispatcher (one per pool; per backend if mirror)
//!                                                   dispatcher/: intake (live or files), routing
//!                                                   rounds with balance.rs, delivery cursor
//!                                   ┌───────────────────────────┼──────────────┐
//!                                   ▼                           ▼              ▼
//!                              upstream A                  upstream B     upstream C ──TCP/TLS──▶ backends
//!                              upstream.rs: persistent connections, vectored writes,
//!                              FIFO of (seq, end offset; over TLS the ciphertext offset)
//!                              settled by TCP ACK (SIOCOUTQ);
//!                              on failure the unsettled suffix (and after a reset the
//!                              replay window) goes back to the dispatcher
//! health.rs (checks) ──▶ backend.rs (up/down with rise/fall, pending bytes) ──▶ dispatcher
//! metrics.rs: every stage counts into one prometheus::Registry, served by admin.rs
//! server/ wires it all from config/, applies reloads (server/reload.rs: a pure plan, then
//! the writer switches routing between two batches and dispatchers swap backend sets)
//! and runs the graceful stop.
//! journal/recover/ plans start-up recovery; journal/verify/ and journal/cat.rs read
//! journals back (`auditlb verify`, `cat`); journal/anchors.rs binds a journal to its
//! anchors file; journal/delivery.rs keeps delivery cursors.
//! tls/ loads certificates, keys, CAs and CRLs into rustls configs (at start, `check`
//! and every reload), decides who gets in and classifies refusals.
//! Small pieces: frame.rs (the unit of work), syslog.rs (header fields for hashing),
//! units.rs (sizes, durations), time.rs (clock and RFC 3339), ratelimit.rs (log floods).
//! ```
//!
//! Every file, by directory (each opens with what it owns):
//! - `config/`: `mod.rs` the TOML shape and defaults, `validate.rs` checks by key path.
//! - `server/`: `mod.rs` start and stop, `pools.rs` pool supervisor, dispatch groups and
//!   backend handles, `listeners.rs`, `reload.rs` the reload plan, `status.rs` readiness.
//! - `tls/`: `mod.rs` loading material and refusal reasons, `allow.rs` pins and name
//!   patterns, `identity.rs` certificate fields and what a connection negotiated,
//!   `verify.rs` the client and backend certificate verifiers.
//! - `listener.rs` accept loops; `session.rs` one client connection; `framer.rs` cutting
//!   frames; `admin.rs` the HTTP endpoint; `metrics.rs` the registry.
//! - `dispatcher/`: `mod.rs` the task and routing rounds, `intake.rs` live batches or the
//!   files, `window.rs` unsettled seqs; `balance.rs` selection; `upstream.rs` one backend
//!   connection; `backend.rs` backend state and hysteresis; `health.rs` active checks.
//! - `journal/`: `format.rs` layout and chain rule, `seal.rs` keys, `anchors.rs`,
//!   `hasher.rs` digests on a second core, `syncer.rs` fsyncs and anchor lines,
//!   `handoff.rs` the writer-to-pool contract, `delivery.rs` cursors, `reader.rs` segment
//!   files and the chain check, `tail/` one pool read back, `recover/` (`mod.rs` the plan,
//!   `apply.rs` carrying it out), `verify/` (`mod.rs` the walk, `report.rs`), `cat.rs`,
//!   `writer/` (`mod.rs`, `append.rs`, `segment.rs`, `checkpoint.rs`, `cursors.rs`,
//!   `budget.rs`, `run.rs` the thread's loop).

pub mod admin;
pub mod backend;
pub mod balance;
pub mod config;
pub mod dispatcher;
pub mod frame;
pub mod framer;
pub mod health;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod relp;
pub mod server;
pub mod session;
pub mod syslog;
pub mod time;
pub mod tls;
pub mod units;
pub mod upstream;

/// Locks a mutex, taking the data even when a thread panicked while holding
/// it: every structure shared this way is consistent between statements,
/// and the proxy must keep serving.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
