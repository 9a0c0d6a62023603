//! The journal's sync thread. Under `sync = "interval"` and `"os"` the
//! writer does not wait for the disk: fdatasync of the segment, the anchor
//! line of each checkpoint and the ratcheted seal key are done here, in the
//! order they were asked for, so the frame path never stalls behind an
//! fsync (the p99 of routed frames showed every checkpoint's fsyncs).
//!
//! Order is what keeps recovery right: a checkpoint's anchor line is
//! written only once the segment holding the checkpoint is on disk, and the
//! key file moves to the next epoch only after that, so neither the anchors
//! nor the key are ever ahead of the journal.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use super::anchors::AnchorsFile;
use super::seal::{KeyFile, KeyImage};
use super::JournalMetrics;

/// Jobs that may wait; beyond that the writer waits (a slow disk slows the
/// journal down rather than growing a queue).
const QUEUED_JOBS: usize = 4;

enum Job {
    /// fdatasync a segment (a second handle on it); everything up to
    /// `upto` is then durable.
    Segment {
        file: File,
        path: PathBuf,
        upto: u64,
    },
    /// A checkpoint: the segment, then the anchor line, then the key.
    Checkpoint {
        file: File,
        path: PathBuf,
        upto: u64,
        anchor: Option<String>,
        key: Option<KeyImage>,
        done: Vec<super::writer::Done>,
    },
    /// Answered once everything before it is done.
    Barrier(SyncSender<()>),
}

/// What became of a sync request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Yes,
    /// Jobs are waiting: ask again later.
    Busy,
    /// The sync thread is gone: the writer syncs itself.
    Gone,
}

/// The writer's handle on the sync thread.
pub struct Syncer {
    tx: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// False after a failed sync until one succeeds.
    ok: Arc<AtomicBool>,
}

impl Syncer {
    /// Starts the thread; it owns the anchors file and the key file.
    pub fn start(
        anchors: Option<AnchorsFile>,
        key: Option<KeyFile>,
        metrics: JournalMetrics,
        durable: super::Durable,
    ) -> io::Result<Syncer> {
        let (tx, rx) = sync_channel(QUEUED_JOBS);
        let ok = Arc::new(AtomicBool::new(true));
        let flag = ok.clone();
        let thread = std::thread::Builder::new()
            .name("journal-sync".into())
            .spawn(move || run(rx, anchors, key, metrics, flag, durable))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
            ok,
        })
    }

    /// Whether the last sync succeeded.
    pub fn healthy(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    /// Asks for the segment to be synced. False when jobs are already
    /// waiting and it was skipped: the writer asks again later, since the
    /// waiting jobs mark durable only what was written when they were
    /// queued (a RELP client waits on that mark).
    pub fn sync_segment(&self, file: File, path: PathBuf, upto: u64) -> Queued {
        let Some(tx) = &self.tx else {
            return Queued::Gone;
        };
        match tx.try_send(Job::Segment { file, path, upto }) {
            Ok(()) => Queued::Yes,
            Err(TrySendError::Full(_)) => Queued::Busy,
            Err(TrySendError::Disconnected(_)) => {
                self.ok.store(false, Ordering::Release);
                Queued::Gone
            }
        }
    }

    /// Makes a checkpoint durable: segment, anchor line, key. Waits only if
    /// the queue is full.
    pub fn checkpoint(
        &self,
        file: File,
        path: PathBuf,
        upto: u64,
        anchor: Option<String>,
        key: Option<KeyImage>,
        done: Vec<super::writer::Done>,
    ) {
        let job = Job::Checkpoint {
            file,
            path,
            upto,
            anchor,
            key,
            done,
        };
        if let Some(tx) = &self.tx {
            if tx.send(job).is_err() {
                self.ok.store(false, Ordering::Release);
            }
        }
    }

    /// Waits until everything asked for so far is done.
    pub fn wait(&self) {
        let (done, wait) = sync_channel(1);
        if let Some(tx) = &self.tx {
            if tx.send(Job::Barrier(done)).is_ok() {
                let _ = wait.recv();
            }
        }
    }
}

impl Drop for Syncer {
    /// Finishes every job asked for, then stops the thread.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: Receiver<Job>,
    mut anchors: Option<AnchorsFile>,
    key_file: Option<KeyFile>,
    metrics: JournalMetrics,
    ok: Arc<AtomicBool>,
    durable: super::Durable,
) {
    let sync = |file: &File, path: &PathBuf| -> io::Result<()> {
        let t = Instant::now();
        file.sync_data()
            .map_err(|e| io::Error::new(e.kind(), format!("fdatasync {}: {e}", path.display())))?;
        metrics.fsync.observe(t.elapsed().as_secs_f64());
        Ok(())
    };
    let report = |r: io::Result<()>| match r {
        Ok(()) => ok.store(true, Ordering::Release),
        Err(e) => {
            ok.store(false, Ordering::Release);
            metrics.write_errors.inc();
            metrics.writable.set(0);
            tracing::error!(error = %e, "journal: sync failed");
        }
    };
    while let Ok(job) = rx.recv() {
        match job {
            Job::Segment { file, path, upto } => {
                let r = sync(&file, &path);
                if r.is_ok() {
                    durable.mark(upto);
                }
                report(r);
            }
            Job::Checkpoint {
                file,
                path,
                upto,
                anchor,
                key,
                done,
            } => {
                let synced = sync(&file, &path);
                if synced.is_ok() {
                    durable.mark(upto);
                }
                let mut r = Ok(());
                if synced.is_ok() {
                    if let (Some(f), Some(line)) = (&mut anchors, &anchor) {
                        r = f.append(line);
                    }
                    // The old key goes once its checkpoint is on disk (a
                    // failed anchor does not change that); a later
                    // checkpoint's image overwrites it if this fails.
                    if let (Some(kf), Some(image)) = (&key_file, &key) {
                        if let Err(e) = kf.store(image) {
                            report(Err(io::Error::other(e.to_string())));
                        }
                    }
                }
                let ok = synced.is_ok() && r.is_ok();
                report(synced.and(r));
                if ok {
                    for (seq, tx) in done {
                        let _ = tx.send(seq);
                    }
                }
            }
            Job::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}
