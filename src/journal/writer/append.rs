//! Encoding records into the writer's batch buffer: numbering, chaining
//! (digests shared with the hasher thread) and the frame, gap and segment
//! start records.

use super::*;

impl Writer {
    pub(super) fn start_segment_records(&mut self, segment_no: u64) {
        let body = crate::journal::format::segment_start_body(segment_no, &self.journal_id);
        self.push(RecordType::SegmentStart, 0, &[], &body);
    }

    /// Encodes one record into the batch buffer. Returns its seq.
    pub(super) fn push(
        &mut self,
        rtype: RecordType,
        fl: u8,
        meta: &[(u8, &[u8])],
        body: &[u8],
    ) -> u64 {
        let seq = self.next_seq;
        self.head = encode_record(
            &mut self.buf,
            crate::journal::format::RecordHead {
                rtype,
                flags: fl,
                seq,
                time_ns: now_ns(),
            },
            meta,
            body,
            &self.head,
        );
        self.next_seq += 1;
        self.since_checkpoint += 1;
        self.metrics.records.inc();
        seq
    }

    /// Journals a batch of frames, numbering them.
    pub fn append_frames(&mut self, pool: &str, frames: &mut [Frame]) {
        self.append_batches(&mut [(pool, frames)]);
    }

    /// Journals several batches of frames, each with its pool, in order.
    /// The records are encoded unchained first, so their digests can be
    /// computed on two cores ([`crate::journal::hasher`]), then chained in order.
    pub fn append_batches(&mut self, batches: &mut [(&str, &mut [Frame])]) {
        let t = now_ns();
        let n: usize = batches.iter().map(|(_, f)| f.len()).sum();
        let size: usize = batches
            .iter()
            .flat_map(|(_, f)| f.iter())
            .map(|f| f.len() + 128)
            .sum();
        let mut bytes = Vec::with_capacity(size);
        let mut ranges = Vec::with_capacity(n);
        for (pool, frames) in batches.iter_mut() {
            for f in frames.iter_mut() {
                let meta: [(u8, &[u8]); 3] = [
                    (tag::LISTENER, f.conn.listener.as_bytes()),
                    (tag::CLIENT, f.conn.peer_text.as_bytes()),
                    (tag::POOL, pool.as_bytes()),
                ];
                f.seq = self.next_seq;
                f.time_ns = t;
                self.next_seq += 1;
                let start =
                    encode_unchained(&mut bytes, RecordType::Frame, 0, f.seq, t, &meta, &f.data);
                ranges.push((start, bytes.len()));
            }
        }
        let job = Arc::new(Job::encoded(bytes, ranges));
        if let Some(h) = &self.hasher {
            h.digest_all(&job);
        }
        let encoded = job.records();
        self.buf.reserve(encoded.bytes.len());
        let seqs = batches.iter().flat_map(|(_, f)| f.iter().map(|f| f.seq));
        for (i, (seq, &(a, b))) in seqs.zip(&encoded.ranges).enumerate() {
            let at = self.buf.len();
            self.buf.extend_from_slice(&encoded.bytes[a..b]);
            self.head = set_chain(&mut self.buf[at..], &self.head, seq, job.digest(i));
        }
        self.since_checkpoint += n as u64;
        self.metrics.records.inc_by(n as u64);
    }

    /// Journals frames refused before routing.
    pub fn append_gap(&mut self, listener: &str, client: &str, reason: &str, count: u64) {
        self.push(
            RecordType::Gap,
            0,
            &[
                (tag::LISTENER, listener.as_bytes()),
                (tag::CLIENT, client.as_bytes()),
                (tag::REASON, reason.as_bytes()),
            ],
            &count.to_be_bytes(),
        );
    }
}
