//! A second core for the journal's hashing. Each record needs its own
//! digest `d_i` (about five SHA-256 blocks for a 200-byte frame) and then
//! the chain step `c_i` (two blocks), which is sequential. The profile of
//! the writer thread at full load was 70% SHA-256, and with hashing left out
//! the same run went from 1.4 to 2.2 M frames/s: the writer thread was the
//! limit. So the digests of a batch are split in chunks that this helper
//! thread and the writer take in turn; the writer then walks the chain.
//!
//! The helper only ever reads a shared copy of the batch's records, so the
//! writer never waits for it to wake up: whatever chunk the helper has not
//! started when the writer gets there, the writer computes itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};

use super::format::{record_digest, Hash};

/// Records per unit of work (about 15 us of hashing for 200-byte frames).
const CHUNK: usize = 64;

/// The digests of one batch of encoded records.
pub struct Job {
    bytes: Vec<u8>,
    /// Where each record is in `bytes`.
    ranges: Vec<(usize, usize)>,
    chunks: Vec<OnceLock<Vec<Hash>>>,
    next: AtomicUsize,
}

impl Job {
    /// `bytes` holds the records at `ranges`, their chain fields zeroed.
    pub fn new(bytes: Vec<u8>, ranges: Vec<(usize, usize)>) -> Job {
        Job {
            chunks: (0..ranges.len().div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
            bytes,
            ranges,
            next: AtomicUsize::new(0),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn ranges(&self) -> &[(usize, usize)] {
        &self.ranges
    }

    /// Takes chunks not yet taken until there are none.
    fn work(&self) {
        loop {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.chunks.len() {
                return;
            }
            self.chunks[c].get_or_init(|| self.compute(c));
        }
    }

    fn compute(&self, c: usize) -> Vec<Hash> {
        let end = ((c + 1) * CHUNK).min(self.ranges.len());
        self.ranges[c * CHUNK..end]
            .iter()
            .map(|&(a, b)| record_digest(&self.bytes[a..b]))
            .collect()
    }

    /// Digest of record `i`: computed here if nobody has started its chunk,
    /// waited for if the helper is computing it.
    pub fn digest(&self, i: usize) -> &Hash {
        let c = i / CHUNK;
        &self.chunks[c].get_or_init(|| self.compute(c))[i % CHUNK]
    }
}

/// The writer's handle on the helper thread.
pub struct Hasher {
    tx: Option<SyncSender<Arc<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hasher {
    pub fn start() -> std::io::Result<Hasher> {
        let (tx, rx) = sync_channel(2);
        let thread = std::thread::Builder::new()
            .name("journal-hash".into())
            .spawn(move || run(rx))?;
        Ok(Hasher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Computes the job's digests, with the helper's help when the job has
    /// more than one chunk and the helper is not already busy.
    pub fn digest_all(&self, job: &Arc<Job>) {
        if job.chunks.len() > 1 {
            if let Some(tx) = &self.tx {
                let _ = tx.try_send(job.clone());
            }
        }
        job.work();
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: Receiver<Arc<Job>>) {
    while let Ok(job) = rx.recv() {
        job.work();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::format::{encode_unchained, RecordType};

    #[test]
    fn digests_match_whoever_computes_them() {
        let mut bytes = Vec::new();
        let mut ranges = Vec::new();
        for i in 0..1000u64 {
            let body = format!("frame {i}").repeat(1 + (i as usize % 7));
            let start = encode_unchained(
                &mut bytes,
                RecordType::Frame,
                0,
                i + 1,
                7,
                &[],
                body.as_bytes(),
            );
            ranges.push((start, bytes.len()));
        }
        let job = Arc::new(Job::new(bytes, ranges));
        let hasher = Hasher::start().unwrap();
        hasher.digest_all(&job);
        for (i, &(a, b)) in job.ranges().iter().enumerate() {
            assert_eq!(*job.digest(i), record_digest(&job.bytes()[a..b]), "{i}");
        }
    }
}
