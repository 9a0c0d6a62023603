//! Checkpoints: sealed with the epoch key, anchored once the segment is on
//! disk (never before), the key ratcheted, and sent in-band when asked.

use super::*;

/// A checkpoint's anchor line and the seal key's next image, waiting for
/// the segment to be durable (neither may ever be ahead of the journal).
pub(super) struct PendingAnchor {
    pub(super) line: Option<String>,
    key: Option<crate::journal::seal::KeyImage>,
    /// Custody records this checkpoint seals, answered once it is anchored.
    pub(super) done: Vec<Done>,
}

/// A custody record's seq and who waits for it to be sealed and anchored.
pub type Done = (u64, oneshot::Sender<u64>);

impl Writer {
    /// Whether a checkpoint is due now (count, interval, or idle heartbeat).
    pub fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= self.cfg.checkpoint_every
            || self.last_checkpoint.elapsed() >= self.cfg.checkpoint_interval.0
    }

    /// Writes a sealed checkpoint (a HEARTBEAT when nothing was written since
    /// the last one); once the segment holding it is on disk, its anchor
    /// line is appended and the old seal key overwritten. Its epoch and the
    /// in-memory key move on as soon as it is encoded, so a failed write
    /// retried later never seals two checkpoints with one epoch. `last`
    /// marks the FINAL checkpoint of a clean stop.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.encode_checkpoint(false);
        self.flush()
    }

    pub(super) fn encode_checkpoint(&mut self, last: bool) {
        let rtype = if self.since_checkpoint == 0 {
            RecordType::Heartbeat
        } else {
            RecordType::Checkpoint
        };
        self.push_delivery(last);
        self.encode_seal(rtype, last);
    }

    /// The checkpoint record alone (its DELIVERY_CURSOR records, if any,
    /// already written): it covers the record just before it.
    fn encode_seal(&mut self, rtype: RecordType, last: bool) {
        let seq = self.next_seq;
        let time_ns = now_ns();
        let epoch = self.next_epoch;
        let covered_seq = seq - 1;
        let covered_chain = self.head;
        let (mut fl, tag_bytes) = match &self.seal_key {
            Some(k) => (
                flags::SEALED,
                seal(
                    k.key(),
                    &SealInput {
                        journal_id: &self.journal_id,
                        seq,
                        time_ns,
                        epoch,
                        covered_seq,
                        covered_chain: &covered_chain,
                    },
                ),
            ),
            None => (0, [0u8; 32]),
        };
        if last {
            fl |= flags::FINAL;
        }
        let body = CheckpointBody {
            epoch,
            covered_seq,
            covered_chain,
            seal: tag_bytes,
        }
        .encode();
        self.head = encode_record(
            &mut self.buf,
            crate::journal::format::RecordHead {
                rtype,
                flags: fl,
                seq,
                time_ns,
            },
            &[],
            &body,
            &self.head,
        );
        self.next_seq += 1;
        self.metrics.records.inc();
        let line = self.cfg.anchors.as_ref().map(|_| {
            crate::journal::anchors::Anchor {
                journal_id: self.journal_id,
                seq,
                chain: self.head,
                epoch,
                seal: tag_bytes,
            }
            .line(time_ns)
        });
        let key = self.seal_key.as_mut().map(|k| k.ratchet());
        self.pending.push(PendingAnchor {
            line,
            key,
            done: Vec::new(),
        });
        self.next_epoch = epoch + 1;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.metrics.last_checkpoint_seq.set(seq as i64);
        if self.cfg.send_checkpoints {
            let msg = format!(
                "<110>1 {} {} auditlb - CHECKPOINT [auditlb@32473 journal=\"{}\" seq=\"{seq}\" chain=\"{}\" epoch=\"{epoch}\" seal=\"{}\"] journal checkpoint",
                crate::time::format_rfc3339(time_ns),
                self.hostname,
                hex(&self.journal_id),
                hex(&self.head),
                hex(&tag_bytes)
            );
            let mut f = Frame::new(bytes::Bytes::from(msg), self.announce_meta.clone());
            f.seq = seq;
            self.announce.push(f);
        }
    }

    /// Writes a custody record (ARCHIVED, PRUNE) and seals it with a
    /// checkpoint at once; its anchors line goes just before that
    /// checkpoint's, and `done` hears its seq once both are on disk.
    pub(super) fn push_custody(&mut self, c: crate::journal::Custody) {
        use crate::journal::anchors::{ArchivedLine, PruneLine};
        use crate::journal::CustodyRecord;
        // Cursors first: the checkpoint must follow the record at once
        // (`verify` accepts a pruned start only on a PRUNE sealed so).
        self.push_delivery(false);
        let seq = self.next_seq;
        let time_ns = now_ns();
        let line = match &c.what {
            CustodyRecord::Archived(b) => {
                self.push(RecordType::Archived, 0, &[], &b.encode());
                ArchivedLine {
                    journal_id: self.journal_id,
                    segment: b.segment.clone(),
                    record_seq: seq,
                    location: b.location.clone(),
                }
                .line(time_ns)
            }
            CustodyRecord::Prune(b) => {
                self.push(RecordType::Prune, 0, &[], &b.encode());
                PruneLine {
                    journal_id: self.journal_id,
                    first_segment_no: b.segments.first().map_or(0, |s| s.segment_no),
                    end_segment_no: b.end_segment_no,
                    end_seq: b.end_seq,
                    end_chain: b.end_chain,
                    end_epoch: b.end_epoch,
                    record_seq: seq,
                }
                .line(time_ns)
            }
        };
        self.encode_seal(RecordType::Checkpoint, false);
        let p = self
            .pending
            .last_mut()
            .expect("a checkpoint was just encoded");
        if let Some(l) = &mut p.line {
            l.insert_str(0, &line);
        }
        p.done.push((seq, c.done));
    }

    /// Hands the waiting anchor lines and the newest key image on: to the
    /// sync thread (which syncs the segment first), or inline after a sync.
    pub(super) fn publish_anchors(&mut self) -> io::Result<()> {
        if let Some(syncer) = &self.syncer {
            let file = self.file.try_clone()?;
            let pending = std::mem::take(&mut self.pending);
            let mut lines = String::new();
            let mut key = None;
            let mut done = Vec::new();
            for p in pending {
                lines.extend(p.line);
                key = p.key.or(key);
                done.extend(p.done);
            }
            syncer.checkpoint(
                file,
                self.seg_path.clone(),
                self.committed.load(Ordering::Acquire),
                (!lines.is_empty()).then_some(lines),
                key,
                done,
            );
            self.dirty = false;
            return Ok(());
        }
        self.sync()?;
        while !self.pending.is_empty() {
            if let (Some(f), Some(line)) = (&mut self.anchors, &self.pending[0].line) {
                f.append(line)?;
            }
            let p = self.pending.remove(0);
            for (seq, tx) in p.done {
                let _ = tx.send(seq);
            }
            if let (Some(k), Some(image)) = (&self.seal_key, p.key) {
                // Not stored: a later checkpoint's image overwrites it.
                if let Err(e) = k.key_file().and_then(|f| f.store(&image)) {
                    self.metrics.write_errors.inc();
                    tracing::error!(error = %e, "journal: cannot store the ratcheted seal key");
                }
            }
        }
        Ok(())
    }
}

/// This host's name for RFC 5424 HOSTNAME (`-` when unknown).
pub(super) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
        .unwrap_or_else(|| "-".into())
}
