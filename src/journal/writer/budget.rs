//! The journal's disk budget (`disk-budget`, `on-full`).

use super::*;

impl Writer {
    /// Re-reads the size of the journal's segment files (an operator may
    /// have freed space).
    pub(super) fn measure(&mut self) {
        if let Ok(segs) = list_segments(&self.cfg.dir) {
            self.journal_bytes = segs
                .iter()
                .filter_map(|s| std::fs::metadata(&s.path).ok())
                .map(|m| m.len())
                .sum::<u64>()
                + self.buf.len() as u64;
        }
    }

    /// Whether `more` bytes still fit in `disk-budget`; logs and flags the
    /// change either way. Once full, it stays full until there is room for
    /// `more` plus a segment (at most 1 MiB): a small batch that happens to
    /// fit in the last bytes is not "back under the budget", and the gauge
    /// and the log do not flap from batch to batch.
    pub(super) fn fits(&mut self, more: u64) -> bool {
        let slack = match self.full {
            true => self.cfg.segment_size.0.min(1 << 20),
            false => 0,
        };
        let fits = self.journal_bytes + more + slack <= self.cfg.disk_budget.0;
        if fits == self.full {
            self.full = !fits;
            self.metrics.full.set(i64::from(!fits));
            if fits {
                tracing::info!(journal = %self.cfg.dir.display(), "journal back under its disk budget");
            } else {
                tracing::error!(
                    journal = %self.cfg.dir.display(),
                    budget = self.cfg.disk_budget.0,
                    used = self.journal_bytes,
                    on_full = ?self.cfg.on_full,
                    "journal disk budget reached"
                );
            }
        }
        fits
    }
}
