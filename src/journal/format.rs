//! Journal format version 1: segment header, record layout and the chain
//! rule. Pure encoding and decoding with bounds checks; used by the writer,
//! recovery, `verify` and `cat`.
//!
//! ```text
//! header (80 bytes): magic "AUDITLBJ" | version u16 | flags u16 | reserved u32
//!                    | journal_id [16] | segment_no u64 | first_seq u64 | prev_chain [32]
//! record: len u32 | type u8 | flags u8 | seq u64 | time_ns i64 | meta_len u16 | meta
//!         | body | chain [32] | len u32
//! meta:   (tag u8 | len u16 | value)*
//! d_i = SHA256("auditlb/rec/v1\0" || record without chain)
//! c_i = SHA256("auditlb/chain/v1\0" || c_{i-1} || seq_i || d_i)
//! c_0 = SHA256("auditlb/genesis/v1\0" || journal_id)
//! ```
//! All integers are big-endian. `len` counts the whole record, both `len`
//! fields included; the trailing copy lets recovery scan backwards.

use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"AUDITLBJ";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 80;
/// Bytes of a record besides meta and body.
pub const RECORD_OVERHEAD: usize = 4 + 1 + 1 + 8 + 8 + 2 + 32 + 4;
/// Offset of the meta bytes in a record.
const META_AT: usize = 24;

const DOMAIN_REC: &[u8] = b"auditlb/rec/v1\0";
const DOMAIN_CHAIN: &[u8] = b"auditlb/chain/v1\0";
const DOMAIN_GENESIS: &[u8] = b"auditlb/genesis/v1\0";

pub type Hash = [u8; 32];

/// Record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    Frame = 1,
    Delivery = 2,
    Checkpoint = 3,
    Heartbeat = 4,
    Recovery = 5,
    Gap = 6,
    SegmentStart = 7,
    SegmentEnd = 8,
    Config = 9,
    /// A delivery cursor: every frame of a pool (or mirror backend) below
    /// the seq in its body is settled. A type of its own, so a list of
    /// settled ranges (DELIVERY) can never be read as one.
    Cursor = 10,
    /// Tampering found at start-up (what, where), chained like any record.
    Alarm = 11,
    /// Who is on the other end of a TLS or RELP connection (and what it
    /// negotiated), written before its first frame in each segment; its
    /// frames carry this record's seq (meta `CONN`). Body: version byte 1,
    /// then the process-local connection number (u64) the logs use.
    Connection = 12,
    /// A closed segment copied to the archive, read back and checked
    /// ([`ArchivedBody`]); the anchors file gets an `a1` line for it.
    Archived = 13,
    /// Segments deleted by retention ([`PruneBody`]): sealed and anchored
    /// (a `p1` anchors line) before any of them is unlinked.
    Prune = 14,
    /// A request to the admin endpoint other than metrics and health: who
    /// (certificate, token digest or anonymous), the role that allowed it,
    /// what was asked, and the outcome (meta `WHO`, `ROLE`, `ACTION`,
    /// `OUTCOME`). Reading the audit trail leaves a trace in it. Body:
    /// version byte 1.
    Admin = 15,
}

impl RecordType {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Frame,
            2 => Self::Delivery,
            3 => Self::Checkpoint,
            4 => Self::Heartbeat,
            5 => Self::Recovery,
            6 => Self::Gap,
            7 => Self::SegmentStart,
            8 => Self::SegmentEnd,
            9 => Self::Config,
            10 => Self::Cursor,
            11 => Self::Alarm,
            12 => Self::Connection,
            13 => Self::Archived,
            14 => Self::Prune,
            15 => Self::Admin,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Frame => "FRAME",
            Self::Delivery => "DELIVERY",
            Self::Checkpoint => "CHECKPOINT",
            Self::Heartbeat => "HEARTBEAT",
            Self::Recovery => "RECOVERY",
            Self::Gap => "GAP",
            Self::SegmentStart => "SEGMENT_START",
            Self::SegmentEnd => "SEGMENT_END",
            Self::Config => "CONFIG",
            Self::Cursor => "DELIVERY_CURSOR",
            Self::Alarm => "ALARM",
            Self::Connection => "CONNECTION",
            Self::Archived => "ARCHIVED",
            Self::Prune => "PRUNE",
            Self::Admin => "ADMIN",
        }
    }

    /// Checkpoints and heartbeats carry a seal.
    pub fn is_checkpoint(self) -> bool {
        matches!(self, Self::Checkpoint | Self::Heartbeat)
    }
}

/// Meta TLV tags.
pub mod tag {
    pub const LISTENER: u8 = 1;
    pub const CLIENT: u8 = 2;
    /// On a FRAME: the seq (u64) of its connection's CONNECTION record in
    /// the same segment.
    pub const CONN: u8 = 3;
    pub const BACKEND: u8 = 4;
    pub const REASON: u8 = 5;
    pub const POOL: u8 = 6;
    /// CONNECTION: `syslog+tls`, `relp`, `relp+tls`.
    pub const PROTOCOL: u8 = 7;
    /// CONNECTION: `TLSv1.3`, `TLSv1.2`.
    pub const TLS_VERSION: u8 = 8;
    /// CONNECTION: the cipher suite's IANA name.
    pub const CIPHER: u8 = 9;
    /// CONNECTION: the server name the client asked for.
    pub const SNI: u8 = 10;
    /// CONNECTION: the client certificate's SHA-256 (`sha256:AB:..`).
    pub const PEER_SHA256: u8 = 11;
    /// CONNECTION: the client certificate's subject DN.
    pub const PEER_SUBJECT: u8 = 12;
    /// CONNECTION, repeated: a subjectAltName (`dns:..`, `ip:..`,
    /// `email:..`, `uri:..`).
    pub const PEER_SAN: u8 = 13;
    /// CONFIG, repeated: one loaded TLS file (`listener NAME cert
    /// sha256:.. SUBJECT`).
    pub const TLS_LOADED: u8 = 14;
    /// ADMIN: who asked (`anonymous`, `cert SUBJECT sha256:..`,
    /// `token-sha256:..`).
    pub const WHO: u8 = 15;
    /// ADMIN: the role that allowed it (empty when refused).
    pub const ROLE: u8 = 16;
    /// ADMIN: what was asked (`GET /status`, `POST /reload`, ...).
    pub const ACTION: u8 = 17;
    /// ADMIN: the outcome (`200`, `200 streaming`, `403 refused`,
    /// `started`, `422 refused: 2 problem(s)`).
    pub const OUTCOME: u8 = 18;
}

/// The body of a CONNECTION record (format version 1).
pub fn connection_body(conn_id: u64) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[0] = 1;
    b[1..].copy_from_slice(&conn_id.to_be_bytes());
    b
}

/// Why bytes are not a segment header or a record (what `verify` reports
/// and recovery acts on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    #[error("header is {0} bytes, expected {HEADER_LEN}")]
    ShortHeader(usize),
    #[error("bad magic (not an auditlb segment)")]
    BadMagic,
    #[error("format version {0}, this build reads {VERSION}")]
    Version(u16),
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("record length {0} is too small")]
    ShortRecord(usize),
    #[error("length fields disagree ({0} and {1})")]
    LengthsDisagree(usize, usize),
    #[error("meta length {0} overruns the record")]
    MetaOverrun(usize),
}

/// A segment header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub journal_id: [u8; 16],
    pub segment_no: u64,
    pub first_seq: u64,
    pub prev_chain: Hash,
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_be_bytes());
        h[16..32].copy_from_slice(&self.journal_id);
        h[32..40].copy_from_slice(&self.segment_no.to_be_bytes());
        h[40..48].copy_from_slice(&self.first_seq.to_be_bytes());
        h[48..80].copy_from_slice(&self.prev_chain);
        h
    }

    pub fn decode(b: &[u8]) -> Result<Header, Corruption> {
        if b.len() < HEADER_LEN {
            return Err(Corruption::ShortHeader(b.len()));
        }
        if &b[..8] != MAGIC {
            return Err(Corruption::BadMagic);
        }
        let version = u16::from_be_bytes([b[8], b[9]]);
        if version != VERSION {
            return Err(Corruption::Version(version));
        }
        if b[10..16].iter().any(|&x| x != 0) {
            return Err(Corruption::Reserved);
        }
        Ok(Header {
            journal_id: b[16..32].try_into().expect("16 bytes"),
            segment_no: be64(&b[32..40]),
            first_seq: be64(&b[40..48]),
            prev_chain: b[48..80].try_into().expect("32 bytes"),
        })
    }
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

pub fn genesis(journal_id: &[u8; 16]) -> Hash {
    Sha256::new()
        .chain_update(DOMAIN_GENESIS)
        .chain_update(journal_id)
        .finalize()
        .into()
}

/// `d_i` of a whole encoded record (its chain field is skipped).
pub fn record_digest(rec: &[u8]) -> Hash {
    let n = rec.len();
    Sha256::new()
        .chain_update(DOMAIN_REC)
        .chain_update(&rec[..n - 36])
        .chain_update(&rec[n - 4..])
        .finalize()
        .into()
}

/// `c_i` from `c_{i-1}`, `seq_i` and `d_i`.
pub fn chain_step(prev: &Hash, seq: u64, digest: &Hash) -> Hash {
    Sha256::new()
        .chain_update(DOMAIN_CHAIN)
        .chain_update(prev)
        .chain_update(seq.to_be_bytes())
        .chain_update(digest)
        .finalize()
        .into()
}

/// The fixed fields of a record to encode.
#[derive(Debug, Clone, Copy)]
pub struct RecordHead {
    pub rtype: RecordType,
    pub flags: u8,
    pub seq: u64,
    pub time_ns: i64,
}

/// Appends one record to `out`, chained on `prev`; returns its chain hash.
pub fn encode_record(
    out: &mut Vec<u8>,
    head: RecordHead,
    meta: &[(u8, &[u8])],
    body: &[u8],
    prev: &Hash,
) -> Hash {
    let start = out.len();
    encode_unchained(
        out,
        head.rtype,
        head.flags,
        head.seq,
        head.time_ns,
        meta,
        body,
    );
    let digest = record_digest(&out[start..]);
    set_chain(&mut out[start..], prev, head.seq, &digest)
}

/// Appends one record with its chain field zeroed (see [`set_chain`]);
/// returns where it starts.
pub fn encode_unchained(
    out: &mut Vec<u8>,
    rtype: RecordType,
    flags: u8,
    seq: u64,
    time_ns: i64,
    meta: &[(u8, &[u8])],
    body: &[u8],
) -> usize {
    // The meta entries that fit in the u16 meta length, whole, in order:
    // exactly what is declared is written.
    let mut meta_len = 0usize;
    let mut fit = 0;
    for (_, v) in meta {
        let add = 3 + v.len().min(u16::MAX as usize);
        if meta_len + add > u16::MAX as usize {
            break;
        }
        meta_len += add;
        fit += 1;
    }
    let len = RECORD_OVERHEAD + meta_len + body.len();
    let len32 = u32::try_from(len).expect("records are bounded by max-frame");
    let start = out.len();
    out.reserve(len);
    out.extend_from_slice(&len32.to_be_bytes());
    out.push(rtype as u8);
    out.push(flags);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ns.to_be_bytes());
    out.extend_from_slice(&(meta_len as u16).to_be_bytes());
    for (t, v) in &meta[..fit] {
        let v = &v[..v.len().min(u16::MAX as usize)];
        out.push(*t);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
    }
    out.extend_from_slice(body);
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(&len32.to_be_bytes());
    start
}

/// Chains an encoded record (its `digest` computed by [`record_digest`])
/// on `prev`: writes `c_i` into its chain field and returns it.
pub fn set_chain(rec: &mut [u8], prev: &Hash, seq: u64, digest: &Hash) -> Hash {
    let chain = chain_step(prev, seq, digest);
    let c_at = rec.len() - 36;
    rec[c_at..c_at + 32].copy_from_slice(&chain);
    chain
}

/// A parsed record, borrowing the segment bytes.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The whole encoded record.
    pub raw: &'a [u8],
    pub rtype: u8,
    pub flags: u8,
    pub seq: u64,
    pub time_ns: i64,
    pub meta: &'a [u8],
    pub body: &'a [u8],
    pub chain: Hash,
}

impl<'a> Record<'a> {
    pub fn kind(&self) -> Option<RecordType> {
        RecordType::from_u8(self.rtype)
    }

    /// The value of meta tag `t`, if present.
    pub fn meta_value(&self, t: u8) -> Option<&'a [u8]> {
        let mut m = self.meta;
        while m.len() >= 3 {
            let len = usize::from(u16::from_be_bytes([m[1], m[2]]));
            let v = m.get(3..3 + len)?;
            if m[0] == t {
                return Some(v);
            }
            m = &m[3 + len..];
        }
        None
    }

    /// Every value of meta tag `t` (repeated tags), in order.
    pub fn meta_values(&self, t: u8) -> impl Iterator<Item = &'a [u8]> {
        let mut m = self.meta;
        std::iter::from_fn(move || {
            while m.len() >= 3 {
                let len = usize::from(u16::from_be_bytes([m[1], m[2]]));
                let v = m.get(3..3 + len)?;
                let tag = m[0];
                m = &m[3 + len..];
                if tag == t {
                    return Some(v);
                }
            }
            None
        })
    }
}

/// Why bytes do not parse as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the record says it has: a torn write if at the end.
    Incomplete { have: usize, need: usize },
    /// The bytes are not a record.
    Malformed(Corruption),
}

/// Parses the record at the start of `b`.
pub fn parse_record(b: &[u8]) -> Result<Record<'_>, ParseError> {
    if b.len() < 4 {
        return Err(ParseError::Incomplete {
            have: b.len(),
            need: 4,
        });
    }
    let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if len < RECORD_OVERHEAD {
        return Err(ParseError::Malformed(Corruption::ShortRecord(len)));
    }
    if b.len() < len {
        return Err(ParseError::Incomplete {
            have: b.len(),
            need: len,
        });
    }
    let raw = &b[..len];
    let trailer = u32::from_be_bytes(raw[len - 4..].try_into().expect("4 bytes")) as usize;
    if trailer != len {
        return Err(ParseError::Malformed(Corruption::LengthsDisagree(
            len, trailer,
        )));
    }
    let meta_len = usize::from(u16::from_be_bytes([raw[22], raw[23]]));
    if META_AT + meta_len > len - 36 {
        return Err(ParseError::Malformed(Corruption::MetaOverrun(meta_len)));
    }
    Ok(Record {
        raw,
        rtype: raw[4],
        flags: raw[5],
        seq: be64(&raw[6..14]),
        time_ns: be64(&raw[14..22]) as i64,
        meta: &raw[META_AT..META_AT + meta_len],
        body: &raw[META_AT + meta_len..len - 36],
        chain: raw[len - 36..len - 4].try_into().expect("32 bytes"),
    })
}

/// The body of a CHECKPOINT/HEARTBEAT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBody {
    pub epoch: u64,
    /// The record the checkpoint covers (the one just before it).
    pub covered_seq: u64,
    pub covered_chain: Hash,
    /// HMAC-SHA256 with the epoch key; all zero when the journal is unsealed.
    pub seal: Hash,
}

impl CheckpointBody {
    pub const LEN: usize = 8 + 8 + 32 + 32;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(&self.epoch.to_be_bytes());
        b[8..16].copy_from_slice(&self.covered_seq.to_be_bytes());
        b[16..48].copy_from_slice(&self.covered_chain);
        b[48..80].copy_from_slice(&self.seal);
        b
    }

    pub fn decode(b: &[u8]) -> Option<CheckpointBody> {
        if b.len() != Self::LEN {
            return None;
        }
        Some(CheckpointBody {
            epoch: be64(&b[..8]),
            covered_seq: be64(&b[8..16]),
            covered_chain: b[16..48].try_into().ok()?,
            seal: b[48..80].try_into().ok()?,
        })
    }
}

/// What a closed segment is, as the custodian saw it when it verified the
/// segment: the facts ARCHIVED and PRUNE records carry about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFacts {
    pub segment_no: u64,
    pub first_seq: u64,
    /// Its last record (a SEGMENT_END or a final checkpoint).
    pub last_seq: u64,
    /// The chain hash of that record: the next segment's `prev_chain`.
    pub end_chain: Hash,
    /// SHA-256 of the whole file.
    pub file_sha256: Hash,
    pub file_len: u64,
}

impl SegmentFacts {
    const LEN: usize = 8 + 8 + 8 + 32 + 32 + 8;

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.segment_no.to_be_bytes());
        out.extend_from_slice(&self.first_seq.to_be_bytes());
        out.extend_from_slice(&self.last_seq.to_be_bytes());
        out.extend_from_slice(&self.end_chain);
        out.extend_from_slice(&self.file_sha256);
        out.extend_from_slice(&self.file_len.to_be_bytes());
    }

    fn get(b: &[u8]) -> Option<SegmentFacts> {
        let b = b.get(..Self::LEN)?;
        Some(SegmentFacts {
            segment_no: be64(&b[..8]),
            first_seq: be64(&b[8..16]),
            last_seq: be64(&b[16..24]),
            end_chain: b[24..56].try_into().ok()?,
            file_sha256: b[56..88].try_into().ok()?,
            file_len: be64(&b[88..96]),
        })
    }
}

/// The body of an ARCHIVED record: version 1, the segment's facts, then
/// where the copy went (URL of the object, UTF-8, to the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchivedBody {
    pub segment: SegmentFacts,
    pub location: String,
}

impl ArchivedBody {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1 + SegmentFacts::LEN + self.location.len());
        b.push(1);
        self.segment.put(&mut b);
        b.extend_from_slice(self.location.as_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<ArchivedBody> {
        let (&v, rest) = b.split_first()?;
        if v != 1 {
            return None;
        }
        Some(ArchivedBody {
            segment: SegmentFacts::get(rest)?,
            location: String::from_utf8(rest.get(SegmentFacts::LEN..)?.to_vec()).ok()?,
        })
    }
}

/// The body of a PRUNE record: version 1, the end of what is deleted
/// (segment number, seq, chain hash and the epoch of its last checkpoint,
/// whether it ended a run), then each deleted segment's facts, oldest
/// first. The journal kept after it starts at segment `end_segment_no + 1`,
/// seq `end_seq + 1`, chained on `end_chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneBody {
    pub end_segment_no: u64,
    pub end_seq: u64,
    pub end_chain: Hash,
    pub end_epoch: u64,
    pub ended_run: bool,
    pub segments: Vec<SegmentFacts>,
}

impl PruneBody {
    /// Most segments one PRUNE record lists (96 bytes each: under 1 MiB).
    pub const MAX_SEGMENTS: usize = 10_000;

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(62 + self.segments.len() * SegmentFacts::LEN);
        b.push(1);
        b.extend_from_slice(&self.end_segment_no.to_be_bytes());
        b.extend_from_slice(&self.end_seq.to_be_bytes());
        b.extend_from_slice(&self.end_chain);
        b.extend_from_slice(&self.end_epoch.to_be_bytes());
        b.push(u8::from(self.ended_run));
        b.extend_from_slice(&(self.segments.len() as u32).to_be_bytes());
        for s in &self.segments {
            s.put(&mut b);
        }
        b
    }

    /// Whether the listed segments follow each other (numbers and seqs) and
    /// the last is the end the record states: how auditlb writes it.
    pub fn consistent(&self) -> bool {
        let Some(last) = self.segments.last() else {
            return false;
        };
        self.segments.windows(2).all(|w| {
            w[0].segment_no.checked_add(1) == Some(w[1].segment_no)
                && w[0].last_seq.checked_add(1) == Some(w[1].first_seq)
        }) && last.segment_no == self.end_segment_no
            && last.last_seq == self.end_seq
            && last.end_chain == self.end_chain
            && self.end_epoch < self.end_seq
    }

    /// The listed segment a journal starting at (`segment_no`, `first_seq`,
    /// `prev_chain`) follows, if any (a start at the end, or inside the
    /// list while the unlinks were under way).
    pub fn covers_start(
        &self,
        segment_no: u64,
        first_seq: u64,
        prev_chain: &Hash,
    ) -> Option<usize> {
        self.segments.iter().position(|f| {
            f.segment_no.checked_add(1) == Some(segment_no)
                && f.last_seq.checked_add(1) == Some(first_seq)
                && f.end_chain == *prev_chain
        })
    }

    pub fn decode(b: &[u8]) -> Option<PruneBody> {
        if b.len() < 62 || b[0] != 1 || b[57] > 1 {
            return None;
        }
        let n = u32::from_be_bytes(b[58..62].try_into().ok()?) as usize;
        let rest = &b[62..];
        if n > Self::MAX_SEGMENTS || rest.len() != n * SegmentFacts::LEN {
            return None;
        }
        Some(PruneBody {
            end_segment_no: be64(&b[1..9]),
            end_seq: be64(&b[9..17]),
            end_chain: b[17..49].try_into().ok()?,
            end_epoch: be64(&b[49..57]),
            ended_run: b[57] == 1,
            segments: rest
                .chunks_exact(SegmentFacts::LEN)
                .map(SegmentFacts::get)
                .collect::<Option<Vec<_>>>()?,
        })
    }
}

/// Record flags.
pub mod flags {
    /// CHECKPOINT/HEARTBEAT: sealed with the epoch key.
    pub const SEALED: u8 = 1;
    /// FRAME: truncated to max-frame.
    pub const TRUNCATED: u8 = 2;
    /// DELIVERY: the body lists seq ranges a backend settled (always set;
    /// cursors are records of their own type, DELIVERY_CURSOR).
    pub const RANGES: u8 = 4;
    /// CHECKPOINT/HEARTBEAT: the last record of a clean stop. Nothing may
    /// follow it in its segment; the next run starts a new segment.
    pub const FINAL: u8 = 8;
    /// SEGMENT_END: written by start-up recovery, closing a run that
    /// crashed. Like a FINAL checkpoint, it ends a run: the next segment
    /// starts one.
    pub const CLOSED_AT_START: u8 = 16;
}

/// Whether `r` ends a run: the FINAL checkpoint of a clean stop, or the
/// SEGMENT_END recovery writes after a crash. The segment after it starts
/// a run, whose first checkpoint is anchored before anything is routed.
pub fn ends_run(r: &Record<'_>) -> bool {
    match r.kind() {
        Some(RecordType::SegmentEnd) => r.flags & flags::CLOSED_AT_START != 0,
        Some(k) if k.is_checkpoint() => r.flags & flags::FINAL != 0,
        _ => false,
    }
}

/// Records a run writes before its first checkpoint (which is anchored
/// before any frame is journaled).
pub fn opens_run(t: Option<RecordType>) -> bool {
    matches!(
        t,
        Some(
            RecordType::SegmentStart
                | RecordType::Recovery
                | RecordType::Alarm
                | RecordType::Config
        )
    )
}

/// The body of a SEGMENT_START record: the segment number and journal id
/// of its header, repeated under the chain.
pub fn segment_start_body(segment_no: u64, journal_id: &[u8; 16]) -> [u8; 24] {
    let mut body = [0u8; 24];
    body[..8].copy_from_slice(&segment_no.to_be_bytes());
    body[8..].copy_from_slice(journal_id);
    body
}

/// Why record number `index` of a segment with `header` breaks the rule
/// that SEGMENT_START opens each segment, once, repeating the header's
/// segment number and journal id (which the chain does not cover
/// otherwise); `None` when it keeps it.
pub fn segment_start_mismatch(header: &Header, index: u64, r: &Record<'_>) -> Option<&'static str> {
    let is_start = r.kind() == Some(RecordType::SegmentStart);
    match (index == 0, is_start) {
        (true, false) => Some("a segment must open with SEGMENT_START"),
        (false, true) => Some("SEGMENT_START inside a segment"),
        (false, false) => None,
        (true, true) => (r.body != segment_start_body(header.segment_no, &header.journal_id))
            .then_some("SEGMENT_START does not repeat the header's segment number and journal id"),
    }
}

/// Whether `r` ends its segment: a SEGMENT_END, or the FINAL checkpoint of
/// a clean stop.
pub fn ends_segment(r: &Record<'_>) -> bool {
    match r.kind() {
        Some(RecordType::SegmentEnd) => true,
        Some(k) if k.is_checkpoint() => r.flags & flags::FINAL != 0,
        _ => false,
    }
}

/// Encodes seqs (any order) as runs: varint count, then per run varint
/// (start - previous end) and varint length.
pub fn encode_ranges(seqs: &mut [u64], out: &mut Vec<u8>) {
    seqs.sort_unstable();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &s in seqs.iter() {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == s => *len += 1,
            Some((start, len)) if *start + *len > s => {}
            _ => runs.push((s, 1)),
        }
    }
    put_varint(out, runs.len() as u64);
    let mut prev_end = 0;
    for (start, len) in runs {
        put_varint(out, start - prev_end);
        put_varint(out, len);
        prev_end = start + len;
    }
}

/// Decodes what [`encode_ranges`] wrote: (start, end exclusive) pairs.
pub fn decode_ranges(mut b: &[u8]) -> Option<Vec<(u64, u64)>> {
    let n = get_varint(&mut b)?;
    let mut out = Vec::with_capacity(n.min(1 << 16) as usize);
    let mut prev_end: u64 = 0;
    for _ in 0..n {
        let start = prev_end.checked_add(get_varint(&mut b)?)?;
        let end = start.checked_add(get_varint(&mut b)?)?;
        out.push((start, end));
        prev_end = end;
    }
    Some(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&x, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(x & 0x7f) << shift;
        if x & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first seq a segment file name claims, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
        // Past any real journal: not a segment (crafted names near
        // u64::MAX would overflow seq arithmetic).
        .filter(|&s| s < super::reader::MAX_SEQ)
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        write!(s, "{x:02x}").expect("writing to a String cannot fail");
    }
    s
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_chain() {
        let id = [7u8; 16];
        let c0 = genesis(&id);
        let mut buf = Vec::new();
        let c1 = encode_record(
            &mut buf,
            RecordHead {
                rtype: RecordType::Frame,
                flags: 0,
                seq: 1,
                time_ns: 123,
            },
            &[(tag::LISTENER, b"syslog"), (tag::CLIENT, b"127.0.0.1:5")],
            b"<13>hello",
            &c0,
        );
        let r = parse_record(&buf).unwrap();
        assert_eq!(r.raw.len(), buf.len());
        assert_eq!(r.seq, 1);
        assert_eq!(r.time_ns, 123);
        assert_eq!(r.body, b"<13>hello");
        assert_eq!(r.meta_value(tag::LISTENER), Some(&b"syslog"[..]));
        assert_eq!(r.meta_value(tag::CLIENT), Some(&b"127.0.0.1:5"[..]));
        assert_eq!(r.meta_value(tag::BACKEND), None);
        assert_eq!(r.chain, c1);
        assert_eq!(chain_step(&c0, 1, &record_digest(r.raw)), c1);
        // Any change to the record changes d_i.
        let mut bad = buf.clone();
        bad[30] ^= 1;
        assert_ne!(record_digest(&bad), record_digest(&buf));
    }

    #[test]
    fn truncated_and_garbled_records_are_errors_not_panics() {
        let mut buf = Vec::new();
        encode_record(
            &mut buf,
            RecordHead {
                rtype: RecordType::Gap,
                flags: 0,
                seq: 9,
                time_ns: 0,
            },
            &[],
            b"x",
            &[0; 32],
        );
        for cut in 0..buf.len() {
            assert!(matches!(
                parse_record(&buf[..cut]),
                Err(ParseError::Incomplete { .. })
            ));
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                let _ = parse_record(&b);
            }
        }
    }

    #[test]
    fn meta_over_64k_is_cut_to_whole_entries_and_the_record_parses() {
        let long = vec![b'l'; 65520];
        for meta in [
            vec![
                (tag::LISTENER, &long[..]),
                (tag::CLIENT, &b"127.0.0.1:12345"[..]),
                (tag::POOL, &b"siem"[..]),
            ],
            vec![(tag::LISTENER, &[b'x'; 70000][..]), (tag::POOL, &b"p"[..])],
        ] {
            let mut buf = Vec::new();
            encode_record(
                &mut buf,
                RecordHead {
                    rtype: RecordType::Frame,
                    flags: 0,
                    seq: 1,
                    time_ns: 0,
                },
                &meta,
                b"body",
                &[0; 32],
            );
            let r = parse_record(&buf).unwrap();
            assert_eq!(r.raw.len(), buf.len());
            assert_eq!(r.body, b"body");
            assert!(r.meta_value(meta[0].0).map_or(0, <[u8]>::len) <= 65532);
        }
    }

    #[test]
    fn ranges_round_trip() {
        let mut seqs = vec![9, 3, 4, 5, 100, 101, 7, 4];
        let mut b = Vec::new();
        encode_ranges(&mut seqs, &mut b);
        assert_eq!(
            decode_ranges(&b).unwrap(),
            vec![(3, 6), (7, 8), (9, 10), (100, 102)]
        );
        assert_eq!(decode_ranges(&[0xff]), None);
        assert_eq!(decode_ranges(&[]), None);
    }

    #[test]
    fn archived_and_prune_bodies_round_trip_and_garbage_is_none() {
        let facts = SegmentFacts {
            segment_no: 3,
            first_seq: 100,
            last_seq: 199,
            end_chain: [5; 32],
            file_sha256: [6; 32],
            file_len: 4096,
        };
        let a = ArchivedBody {
            segment: facts.clone(),
            location: "s3://b/p/x.seg".into(),
        };
        assert_eq!(ArchivedBody::decode(&a.encode()), Some(a.clone()));
        let p = PruneBody {
            end_segment_no: 4,
            end_seq: 250,
            end_chain: [7; 32],
            end_epoch: 9,
            ended_run: true,
            segments: vec![
                facts.clone(),
                SegmentFacts {
                    segment_no: 4,
                    ..facts
                },
            ],
        };
        let enc = p.encode();
        assert_eq!(PruneBody::decode(&enc), Some(p.clone()));
        // As auditlb writes it: the list runs up to the stated end, and an
        // epoch is never more than the records before it.
        let mut ok = p.clone();
        ok.segments[1].first_seq = 200;
        ok.segments[1].last_seq = 250;
        ok.segments[1].end_chain = [7; 32];
        assert!(ok.consistent());
        assert_eq!(ok.covers_start(5, 251, &[7; 32]), Some(1));
        assert_eq!(ok.covers_start(4, 200, &[5; 32]), Some(0));
        assert_eq!(ok.covers_start(5, 252, &[7; 32]), None);
        assert!(!p.consistent());
        let huge = PruneBody {
            end_epoch: u64::MAX,
            ..ok.clone()
        };
        assert!(!huge.consistent());
        assert!(!PruneBody {
            segments: vec![],
            ..ok
        }
        .consistent());
        for cut in 0..enc.len() {
            assert_eq!(PruneBody::decode(&enc[..cut]), None);
        }
        assert_eq!(ArchivedBody::decode(&[2]), None);
        assert_eq!(ArchivedBody::decode(&a.encode()[..50]), None);
    }

    #[test]
    fn header_and_names() {
        let h = Header {
            journal_id: [1; 16],
            segment_no: 3,
            first_seq: 42,
            prev_chain: [9; 32],
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        assert!(Header::decode(b"short").is_err());
        assert_eq!(segment_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_name("00000000000000000042.seg"), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(unhex(&hex(&[0, 255, 16])), Some(vec![0, 255, 16]));
    }
}
