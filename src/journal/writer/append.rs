//! Encoding records into the writer's batch buffer: numbering, chaining
//! (digests shared with the hasher thread) and the frame, gap and segment
//! start records.

use super::*;

impl Writer {
    pub(super) fn start_segment_records(&mut self, segment_no: u64) {
        let body = crate::journal::format::segment_start_body(segment_no, &self.journal_id);
        self.push(RecordType::SegmentStart, 0, &[], &body);
        self.announced.clear();
    }

    /// A CONFIG record: the config's hash, and each TLS file it loaded.
    pub(super) fn push_config(&mut self, stamp: &crate::journal::ConfigStamp) -> u64 {
        let meta: Vec<(u8, &[u8])> = stamp
            .tls
            .iter()
            .map(|l| (tag::TLS_LOADED, l.as_bytes()))
            .collect();
        self.push(RecordType::Config, 0, &meta, &stamp.hash)
    }

    /// Writes the CONNECTION record of every TLS or RELP connection in
    /// `batches` not yet announced in this segment.
    fn announce_connections(&mut self, batches: &[(&str, &mut [Frame])]) {
        if self.announced.len() >= MAX_ANNOUNCED {
            self.announced.clear();
        }
        let mut last = None;
        for f in batches.iter().flat_map(|(_, f)| f.iter()) {
            if !f.conn.announced() {
                continue;
            }
            if last == Some(f.conn.id) || self.announced.contains_key(&f.conn.id) {
                last = Some(f.conn.id);
                continue;
            }
            last = Some(f.conn.id);
            let sha;
            let subject;
            let sans: Vec<String>;
            let mut meta: Vec<(u8, &[u8])> = vec![
                (tag::LISTENER, f.conn.listener.as_bytes()),
                (tag::CLIENT, f.conn.peer_text.as_bytes()),
                (tag::PROTOCOL, f.conn.protocol().as_bytes()),
            ];
            let tls = f.conn.tls.as_deref();
            if let Some(tls) = tls {
                meta.push((tag::TLS_VERSION, tls.version.as_bytes()));
                meta.push((tag::CIPHER, tls.cipher.as_bytes()));
            }
            if let Some(sni) = tls.and_then(|t| t.sni.as_ref()) {
                meta.push((tag::SNI, sni.as_bytes()));
            }
            if let Some(p) = tls.and_then(|t| t.peer.as_ref()) {
                sha = p.sha256.to_string();
                // Bounded so the record's meta (64KiB at most) always
                // holds every field: a huge subject or SAN list is cut,
                // visibly; the fingerprint names the certificate exactly.
                sans = p
                    .sans
                    .iter()
                    .take(MAX_SANS)
                    .map(|s| clip(&s.to_string(), MAX_NAME))
                    .collect();
                meta.push((tag::PEER_SHA256, sha.as_bytes()));
                subject = clip(&p.subject, MAX_NAME);
                meta.push((tag::PEER_SUBJECT, subject.as_bytes()));
                meta.extend(sans.iter().map(|s| (tag::PEER_SAN, s.as_bytes())));
            }
            let body = crate::journal::format::connection_body(f.conn.id);
            let seq = self.push(RecordType::Connection, 0, &meta, &body);
            self.announced.insert(f.conn.id, seq);
        }
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
        self.announce_connections(batches);
        let t = now_ns();
        let n: usize = batches.iter().map(|(_, f)| f.len()).sum();
        let size: usize = batches
            .iter()
            .flat_map(|(_, f)| f.iter())
            .map(|f| f.len() + 128)
            .sum();
        let mut bytes = std::mem::take(&mut self.spare.bytes);
        let mut ranges = std::mem::take(&mut self.spare.ranges);
        bytes.reserve(size);
        ranges.reserve(n);
        for (pool, frames) in batches.iter_mut() {
            for f in frames.iter_mut() {
                let conn = f
                    .conn
                    .announced()
                    .then(|| self.announced.get(&f.conn.id))
                    .flatten()
                    .map(|seq| seq.to_be_bytes());
                let all: [(u8, &[u8]); 4] = [
                    (tag::LISTENER, f.conn.listener.as_bytes()),
                    (tag::CLIENT, f.conn.peer_text.as_bytes()),
                    (tag::POOL, pool.as_bytes()),
                    (tag::CONN, conn.as_ref().map_or(&[][..], |c| &c[..])),
                ];
                let meta = &all[..if conn.is_some() { 4 } else { 3 }];
                f.seq = self.next_seq;
                f.time_ns = t;
                self.next_seq += 1;
                let start =
                    encode_unchained(&mut bytes, RecordType::Frame, 0, f.seq, t, meta, &f.data);
                ranges.push((start, bytes.len()));
            }
        }
        let job = Arc::new(Job::encoded(bytes, ranges));
        if let Some(h) = &self.hasher {
            h.digest_all(&job);
        }
        // The chain, in order.
        let mut chains = std::mem::take(&mut self.spare.chains);
        chains.clear();
        let seqs = batches.iter().flat_map(|(_, f)| f.iter().map(|f| f.seq));
        for (i, seq) in seqs.enumerate() {
            self.head = chain_step(&self.head, seq, job.digest(i));
            chains.push(self.head);
        }
        match Arc::try_unwrap(job) {
            // The helper let go of the batch (the usual case): its chain
            // fields are filled in place, and the buffer becomes the batch
            // buffer when that is empty (no copy).
            Ok(job) => {
                let Encoded { mut bytes, ranges } = job.into_records();
                for (&(_, b), c) in ranges.iter().zip(&chains) {
                    bytes[b - 36..b - 4].copy_from_slice(c);
                }
                if self.buf.is_empty() {
                    std::mem::swap(&mut self.buf, &mut bytes);
                } else {
                    self.buf.extend_from_slice(&bytes);
                }
                self.spare.keep(bytes, ranges);
            }
            // The helper still holds it: copied out record by record.
            Err(job) => {
                let encoded = job.records();
                self.buf.reserve(encoded.bytes.len());
                for (&(a, b), c) in encoded.ranges.iter().zip(&chains) {
                    let at = self.buf.len();
                    self.buf.extend_from_slice(&encoded.bytes[a..b]);
                    let end = self.buf.len();
                    self.buf[end - 36..end - 4].copy_from_slice(c);
                    debug_assert_eq!(end - at, b - a);
                }
            }
        }
        self.spare.chains = chains;
        self.since_checkpoint += n as u64;
        self.metrics.records.inc_by(n as u64);
    }

    /// An ADMIN record (each field cut to 1 KiB).
    pub fn append_admin(&mut self, a: &crate::journal::AdminAction) {
        let (who, role, action, outcome) = (
            clip(&a.who, MAX_NAME),
            clip(&a.role, MAX_NAME),
            clip(&a.action, MAX_NAME),
            clip(&a.outcome, MAX_NAME),
        );
        self.push(
            RecordType::Admin,
            0,
            &[
                (tag::WHO, who.as_bytes()),
                (tag::ROLE, role.as_bytes()),
                (tag::ACTION, action.as_bytes()),
                (tag::OUTCOME, outcome.as_bytes()),
            ],
            &[1],
        );
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

/// Most SANs, and bytes of a subject or SAN, a CONNECTION record holds
/// (32 x 1KiB plus a 1KiB subject: far below the 64KiB of meta).
const MAX_SANS: usize = 32;
const MAX_NAME: usize = 1024;

/// `s` cut to at most `max` bytes at a character boundary, marked `...`
/// when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::clip;

    #[test]
    fn clip_cuts_at_a_char_boundary_and_marks_it() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(600);
        let c = clip(&long, 1024);
        assert!(c.len() <= 1024 && c.ends_with("...") && c.starts_with("éé"));
    }
}
