//! `Config::parse` + `validate` (what `auditlb check`, start and reload run)
//! over arbitrary UTF-8 text. Never panics; every problem names its key
//! path; and a config that validates can be started: its addresses parse,
//! its limits fit what they feed (tokio's semaphore, the dispatcher's
//! `connections * queue-bytes`), and reloading it onto itself changes
//! nothing.
#![no_main]

use auditlb::config::{Config, MAX_CONNECTIONS_CEILING};
use libfuzzer_sys::fuzz_target;

const KEY_ROOTS: [&str; 5] = ["admin", "journal", "listener", "pool", "shutdown"];

fuzz_target!(|text: &str| {
    let Ok(c) = Config::parse(text) else {
        return;
    };
    match c.validate() {
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in &problems {
                let (path, why) = p.split_once(": ").unwrap_or(("", ""));
                assert!(
                    KEY_ROOTS.iter().any(|k| path.starts_with(k)) && !why.is_empty(),
                    "problem without a key path: {p:?}"
                );
            }
        }
        Ok(()) => {
            if let Some(a) = &c.admin {
                let _ = a.socket_addr();
            }
            for l in &c.listeners {
                let _ = l.socket_addr();
                assert!(l.max_connections <= MAX_CONNECTIONS_CEILING);
                let _ = tokio::sync::Semaphore::new(l.max_connections);
                assert!(l.max_connections_per_source.unwrap_or(0) <= MAX_CONNECTIONS_CEILING);
            }
            for p in &c.pools {
                for b in &p.backends {
                    let _ = b.socket_addr();
                }
                assert!(
                    p.queue_bytes.0.checked_mul(p.connections as u64).is_some(),
                    "connections * queue-bytes overflows"
                );
            }
            assert!(c.reload_blockers(&c).is_empty());
        }
    }
});
