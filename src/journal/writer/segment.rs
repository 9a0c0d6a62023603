//! Segment files: writing the batch buffer out, the retry-safe roll to the
//! next segment, creating a segment and making a closed one read-only.

use super::*;
use std::io::Read;

/// A roll in progress. `buf[..split]` ends the old segment with its
/// SEGMENT_END; the rest belongs to the segment `header` starts. Every
/// step may fail and be retried: nothing is encoded twice.
pub(super) struct Roll {
    split: usize,
    header: Header,
    /// The old segment's last bytes are written, synced and sealed.
    old_done: bool,
}

impl Writer {
    /// Writes the batch buffer with one `write(2)` (two across a segment
    /// roll), then hands on the anchor lines of checkpoints now written. On
    /// failure the segment is cut back to its last whole batch and the
    /// buffer kept, so a retry writes the same records again and never
    /// leaves a torn record in the middle.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.roll.is_some() {
            self.finish_roll()?;
        }
        if !self.buf.is_empty() {
            self.write_out(self.buf.len())?;
            self.committed.store(self.next_seq - 1, Ordering::Release);
            if self.cfg.sync == SyncPolicy::Os {
                // Durable as far as this policy promises: written.
                self.durable.mark(self.next_seq - 1);
            }
        }
        if !self.pending.is_empty() {
            self.publish_anchors()?;
        }
        Ok(())
    }

    /// Appends `buf[..n]` to the open segment and drops it from `buf`.
    pub(super) fn write_out(&mut self, n: usize) -> io::Result<()> {
        if let Err(e) = self.file.write_all(&self.buf[..n]) {
            self.metrics.write_errors.inc();
            let _ = self.file.set_len(self.seg_len);
            return Err(io::Error::new(
                e.kind(),
                format!("{}: {e}", self.seg_path.display()),
            ));
        }
        self.seg_len += n as u64;
        self.journal_bytes += n as u64;
        self.metrics.bytes.inc_by(n as u64);
        self.buf.drain(..n);
        self.dirty = true;
        Ok(())
    }

    /// The steps of a roll not done yet: the old segment's last bytes
    /// written, synced and made read-only, then the new segment created.
    pub(super) fn finish_roll(&mut self) -> io::Result<()> {
        let roll = self.roll.as_ref().expect("a roll is in progress");
        if !roll.old_done {
            let split = roll.split;
            self.write_out(split)?;
            self.sync()?;
            if let Err(e) = seal_file(&self.seg_path) {
                tracing::warn!(segment = %self.seg_path.display(), error = %e, "cannot make a closed segment read-only");
            }
            let roll = self.roll.as_mut().expect("a roll is in progress");
            roll.old_done = true;
            roll.split = 0;
        }
        let header = self
            .roll
            .as_ref()
            .expect("a roll is in progress")
            .header
            .clone();
        let (file, path) =
            create_segment(&self.cfg.dir, &header).map_err(|e| io::Error::other(e.to_string()))?;
        self.file = file;
        self.seg_path = path;
        self.open_first.store(header.first_seq, Ordering::Release);
        self.seg_no = header.segment_no;
        self.seg_len = HEADER_LEN as u64;
        self.journal_bytes += HEADER_LEN as u64;
        self.dirty = true;
        self.metrics.segments.inc();
        self.roll = None;
        Ok(())
    }

    /// Closes the segment if it reached `segment-size` and opens the next:
    /// SEGMENT_END and the next SEGMENT_START are encoded once, then
    /// written by [`Writer::flush`], which retries what failed.
    pub fn maybe_roll(&mut self) -> io::Result<()> {
        if self.roll.is_none() && self.seg_len + self.buf.len() as u64 >= self.cfg.segment_size.0 {
            self.push(RecordType::SegmentEnd, 0, &[], &self.seg_no.to_be_bytes());
            let split = self.buf.len();
            let header = Header {
                journal_id: self.journal_id,
                segment_no: self.seg_no + 1,
                first_seq: self.next_seq,
                prev_chain: self.head,
            };
            self.roll = Some(Roll {
                split,
                header,
                old_done: false,
            });
            self.start_segment_records(self.seg_no + 1);
            // Every segment opens with every delivery cursor, so a restart
            // finds them all in the newest segment it reads.
            self.push_all_cursors(self.seg_no + 1);
        }
        self.flush()
    }
}

/// Makes a closed segment read-only.
pub(in crate::journal) fn seal_file(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o440))
}

/// Where alarms raised at start-up are kept until an operator clears them.
pub fn alarm_path(dir: &Path) -> PathBuf {
    dir.join("ALARM")
}

/// Creates the segment file `header` describes and writes the header. A
/// file of that name left by an earlier attempt that failed before its
/// header was whole is taken over; any other is never overwritten.
pub(super) fn create_segment(dir: &Path, header: &Header) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(segment_name(header.first_seq));
    let create = || {
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)
    };
    let f = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match take_over(&path, header)? {
            Some(f) => f,
            None => {
                // Something else holds the name (put there while auditlb
                // was stopped, or a forged segment ahead of the journal):
                // moved aside as evidence, never overwritten, and never a
                // reason to stop journaling.
                let aside = path.with_extension(format!("seg.displaced-{}", now_ns()));
                std::fs::rename(&path, &aside).map_err(io_at(&path))?;
                crate::journal::writer::record_alarms(
                    dir,
                    &[crate::journal::recover::Alarm {
                        class: "INSERTED",
                        message: format!(
                            "{} existed before the journal reached it (not written by auditlb); moved to {}",
                            path.display(),
                            aside.display()
                        ),
                    }],
                );
                tracing::error!(segment = %path.display(), moved_to = %aside.display(), "a file named like the next segment was in the way; moved aside");
                create().map_err(io_at(&path))?
            }
        },
        Err(e) => return Err(io_at(&path)(e)),
    };
    let written = (&f).write_all(&header.encode());
    if let Err(e) = written {
        let _ = f.set_len(0);
        return Err(io_at(&path)(e));
    }
    // The directory entry must survive a crash too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok((f, path))
}

/// An existing file at a new segment's name, taken over only if it holds
/// nothing but the start of this very header (an earlier attempt of this
/// roll); `None` when it is something else. Never follows a link or waits
/// on a FIFO.
fn take_over(path: &Path, header: &Header) -> Result<Option<File>, JournalError> {
    let meta = std::fs::symlink_metadata(path).map_err(io_at(path))?;
    if !meta.is_file() || meta.len() >= HEADER_LEN as u64 {
        return Ok(None);
    }
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io_at(path))?;
    let mut held = Vec::new();
    (&f).take(HEADER_LEN as u64)
        .read_to_end(&mut held)
        .map_err(io_at(path))?;
    if held[..] != header.encode()[..held.len()] {
        return Ok(None);
    }
    f.set_len(0).map_err(io_at(path))?;
    Ok(Some(f))
}
