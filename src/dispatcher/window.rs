//! The seqs a dispatcher routed and that are not settled yet, as a bitmap
//! over a sliding window: the lowest of them bounds the delivery cursor.

use std::collections::VecDeque;

/// A set of seqs (routed, not yet settled) as a bitmap over a sliding
/// window; its size follows the span between the oldest unsettled frame and
/// the newest routed one.
#[derive(Debug, Default)]
pub struct SeqWindow {
    /// Seq of bit 0 of `words[0]`; a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
}

impl SeqWindow {
    pub fn mark(&mut self, seq: u64) {
        if self.words.is_empty() {
            self.base = seq & !63;
        }
        while seq < self.base {
            self.words.push_front(0);
            self.base -= 64;
        }
        let idx = ((seq - self.base) / 64) as usize;
        if idx >= self.words.len() {
            self.words.resize(idx + 1, 0);
        }
        self.words[idx] |= 1 << ((seq - self.base) % 64);
    }

    pub fn clear(&mut self, seq: u64) {
        if seq < self.base {
            return;
        }
        let idx = ((seq - self.base) / 64) as usize;
        if let Some(w) = self.words.get_mut(idx) {
            *w &= !(1 << ((seq - self.base) % 64));
        }
        while self.words.front() == Some(&0) {
            self.words.pop_front();
            self.base += 64;
        }
    }

    pub fn first(&self) -> Option<u64> {
        let (i, w) = self.words.iter().enumerate().find(|(_, w)| **w != 0)?;
        Some(self.base + 64 * i as u64 + u64::from(w.trailing_zeros()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_window_tracks_the_lowest_unsettled() {
        let mut w = SeqWindow::default();
        assert_eq!(w.first(), None);
        for s in [100, 101, 300, 70, 5000] {
            w.mark(s);
        }
        assert_eq!(w.first(), Some(70));
        w.clear(70);
        assert_eq!(w.first(), Some(100));
        w.clear(100);
        w.clear(101);
        w.clear(999);
        assert_eq!(w.first(), Some(300));
        w.clear(300);
        w.clear(5000);
        assert_eq!(w.first(), None);
        assert!(w.words.is_empty());
        w.mark(3);
        assert_eq!(w.first(), Some(3));
    }
}
