//! Journal throughput on this machine: append (frames/s, hashing and
//! writing included) and `verify` (GB/s). Not a test; run with
//! `cargo bench --bench journal`. Prints one line per measurement.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use auditlb::config::{JournalConfig, SyncPolicy};
use auditlb::frame::{ConnMeta, Frame};
use auditlb::journal::verify::verify;
use auditlb::journal::writer::Writer;
use auditlb::metrics::Metrics;
use auditlb::units::ByteSize;

fn main() {
    let frames: usize = std::env::var("FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let size: usize = std::env::var("FRAME_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tmp = std::env::temp_dir().join(format!("auditlb-bench-{}", std::process::id()));
    let meta = Arc::new(ConnMeta::new(
        1,
        "bench".into(),
        "127.0.0.1:40000".parse().unwrap(),
    ));
    let line = Bytes::from(format!(
        "<13>1 2026-11-26T00:00:00Z host app - - - {}",
        "x".repeat(size.saturating_sub(44))
    ));
    for (label, every) in [
        ("checkpoint every 10000 records (default)", 10_000u64),
        ("no checkpoints (pure append)", u64::MAX),
    ] {
        let dir = tmp.join(format!("j{every}"));
        let cfg = JournalConfig {
            dir: dir.clone(),
            sync: SyncPolicy::Os,
            checkpoint_every: every,
            segment_size: ByteSize(256 << 20),
            anchors: Some(tmp.join(format!("anchors{every}.log"))),
            ..JournalConfig::default()
        };
        let metrics = Metrics::new();
        let mut w = Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap();
        let mut batch: Vec<Frame> = (0..1024)
            .map(|_| Frame::new(line.clone(), meta.clone()))
            .collect();
        let t = Instant::now();
        let mut done = 0;
        while done < frames {
            let n = batch.len().min(frames - done);
            w.append_frames("bench", &mut batch[..n]);
            w.flush().unwrap();
            if w.checkpoint_due() && every != u64::MAX {
                w.checkpoint().unwrap();
            }
            w.maybe_roll().unwrap();
            done += n;
        }
        w.close().unwrap();
        let secs = t.elapsed().as_secs_f64();
        drop(w);
        println!(
            "journal append, {size} B frames, {label}: {:.0} frames/s ({:.0} MB/s of journal)",
            frames as f64 / secs,
            metrics.sum("auditlb_journal_bytes_total", &[]) / secs / 1e6
        );
        if every == 10_000 {
            // Drop the page cache's advantage as far as we can: read cold is
            // not possible without root tricks, so this is warm-cache speed.
            let t = Instant::now();
            let r = verify(&dir, cfg.anchors.as_deref(), None).unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(r.exit_code(), 0, "{}", r.text());
            println!(
                "verify: {} bytes, {} records in {:.2}s: {:.2} GB/s ({} threads)",
                r.bytes,
                r.records,
                secs,
                r.bytes as f64 / secs / 1e9,
                std::thread::available_parallelism().map_or(1, |n| n.get())
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
