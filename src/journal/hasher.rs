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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, OnceLock};

use super::format::{record_digest, Hash};

/// Records per unit of the writer's work (about 15 us of hashing for
/// 200-byte frames).
const CHUNK: usize = 64;

/// Encoded records whose digests are wanted.
pub trait RecordSet: Sync {
    fn count(&self) -> usize;
    /// Record `i`, whole (its chain field is skipped by the digest).
    fn record(&self, i: usize) -> &[u8];
}

/// The digests of a set of records, computed in chunks by whichever
/// thread gets to a chunk first: workers take chunks in order
/// ([`Digests::work`]); a reader ([`Digests::digest`]) computes a chunk
/// nobody has started and waits for one in progress. Used by the writer
/// with its helper thread, and by `verify` on every core.
pub struct Digests<R> {
    recs: R,
    chunk: usize,
    chunks: Vec<OnceLock<Vec<Hash>>>,
    next: AtomicUsize,
    stop: AtomicBool,
}

impl<R: RecordSet> Digests<R> {
    pub fn new(recs: R, chunk: usize) -> Self {
        Self {
            chunks: (0..recs.count().div_ceil(chunk))
                .map(|_| OnceLock::new())
                .collect(),
            recs,
            chunk,
            next: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    pub fn records(&self) -> &R {
        &self.recs
    }

    /// The records back, once every digest was taken.
    pub fn into_records(self) -> R {
        self.recs
    }

    /// Chunks of work (more than one is worth sharing).
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Takes chunks not yet taken until there are none or [`Self::stop`].
    pub fn work(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            let c = self.next.fetch_add(1, Ordering::Relaxed);
            if c >= self.chunks.len() {
                return;
            }
            self.chunks[c].get_or_init(|| self.compute(c));
        }
    }

    fn compute(&self, c: usize) -> Vec<Hash> {
        let end = ((c + 1) * self.chunk).min(self.recs.count());
        (c * self.chunk..end)
            .map(|i| record_digest(self.recs.record(i)))
            .collect()
    }

    /// Digest of record `i`.
    pub fn digest(&self, i: usize) -> &Hash {
        let c = i / self.chunk;
        &self.chunks[c].get_or_init(|| self.compute(c))[i % self.chunk]
    }

    /// No more is needed: workers stop after their chunk.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A batch the writer encoded: records at `ranges` of `bytes`, chain
/// fields zeroed.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub ranges: Vec<(usize, usize)>,
}

impl RecordSet for Encoded {
    fn count(&self) -> usize {
        self.ranges.len()
    }

    fn record(&self, i: usize) -> &[u8] {
        let (a, b) = self.ranges[i];
        &self.bytes[a..b]
    }
}

/// The digests of one batch of the writer's.
pub type Job = Digests<Encoded>;

impl Job {
    pub fn encoded(bytes: Vec<u8>, ranges: Vec<(usize, usize)>) -> Job {
        Digests::new(Encoded { bytes, ranges }, CHUNK)
    }
}

/// The writer's handle on the helper thread.
pub struct Hasher {
    tx: Option<SyncSender<Arc<Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hasher {
    pub fn start() -> std::io::Result<Hasher> {
        // At most one job waits for the helper: a deeper queue only holds
        // batches the writer already finished (and their bytes, which the
        // writer would rather take back than copy).
        let (tx, rx) = sync_channel(1);
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
        if job.chunks() > 1 {
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
        let job = Arc::new(Job::encoded(bytes, ranges));
        let hasher = Hasher::start().unwrap();
        hasher.digest_all(&job);
        let e = job.records();
        for (i, &(a, b)) in e.ranges.iter().enumerate() {
            assert_eq!(*job.digest(i), record_digest(&e.bytes[a..b]), "{i}");
        }
    }
}
