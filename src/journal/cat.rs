//! `auditlb cat`: frames back out of a journal, raw (each frame followed by
//! LF, as an LF-framed client sent it) or as JSON lines (every record, with
//! its seq, time, type, listener, client and frame). Reads; verifies
//! nothing (that is `verify`'s job) but stops at unreadable bytes and says
//! so.

use std::io::{self, Write};
use std::path::Path;

use super::format::{decode_ranges, flags, tag, CheckpointBody, Record, RecordType};
use super::reader::{list_segments, Mapped, Records};
use super::verify::json_str;

/// A `--from`/`--to` bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Seq(u64),
    /// Unix time in nanoseconds.
    Time(i64),
}

impl Bound {
    /// A seq (digits) or an RFC 3339 time.
    pub fn parse(s: &str) -> Result<Bound, String> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s.parse().map(Bound::Seq).map_err(|e| format!("{s:?}: {e}"));
        }
        parse_rfc3339(s).map(Bound::Time).ok_or_else(|| {
            format!(
                "{s:?} is neither a sequence number nor an RFC 3339 time (2026-11-26T10:00:00Z)"
            )
        })
    }

    fn allows_from(&self, r: &Record<'_>) -> bool {
        match *self {
            Bound::Seq(q) => r.seq >= q,
            Bound::Time(t) => r.time_ns >= t,
        }
    }

    fn allows_to(&self, r: &Record<'_>) -> bool {
        match *self {
            Bound::Seq(q) => r.seq <= q,
            Bound::Time(t) => r.time_ns <= t,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Raw,
    Jsonl,
}

/// Writes the selected records of the journal in `dir` to `out`.
pub fn cat(
    dir: &Path,
    from: Option<Bound>,
    to: Option<Bound>,
    format: Format,
    out: &mut dyn Write,
) -> io::Result<u64> {
    let delivered = if format == Format::Jsonl {
        delivered_ranges(dir)?
    } else {
        Vec::new()
    };
    let mut n = 0;
    for seg in list_segments(dir)? {
        let mapped = Mapped::open(&seg.path)?;
        for step in Records::new(mapped.bytes()) {
            let r = match step {
                Ok((_, r)) => r,
                Err((at, e)) => {
                    eprintln!(
                        "auditlb cat: {}: stopping at byte {at}: {e:?}",
                        seg.path.display()
                    );
                    break;
                }
            };
            if from.is_some_and(|b| !b.allows_from(&r)) || to.is_some_and(|b| !b.allows_to(&r)) {
                continue;
            }
            match format {
                Format::Raw => {
                    if r.kind() == Some(RecordType::Frame) {
                        out.write_all(r.body)?;
                        out.write_all(b"\n")?;
                        n += 1;
                    }
                }
                Format::Jsonl => {
                    out.write_all(json_line(&r, backend_of(&delivered, r.seq)).as_bytes())?;
                    n += 1;
                }
            }
        }
    }
    out.flush()?;
    Ok(n)
}

/// Every (start, end, backend) range of DELIVERY records, sorted.
fn delivered_ranges(dir: &Path) -> io::Result<Vec<(u64, u64, String)>> {
    let mut out = Vec::new();
    for seg in list_segments(dir)? {
        let mapped = Mapped::open(&seg.path)?;
        for (_, r) in Records::new(mapped.bytes()).map_while(Result::ok) {
            if r.kind() != Some(RecordType::Delivery) || r.flags & flags::RANGES == 0 {
                continue;
            }
            let backend =
                String::from_utf8_lossy(r.meta_value(tag::BACKEND).unwrap_or(b"")).into_owned();
            for (a, b) in decode_ranges(r.body).unwrap_or_default() {
                out.push((a, b, backend.clone()));
            }
        }
    }
    out.sort_unstable_by_key(|x| x.0);
    Ok(out)
}

/// The backend that settled `seq`, if a DELIVERY record says.
fn backend_of(ranges: &[(u64, u64, String)], seq: u64) -> Option<&str> {
    let i = ranges.partition_point(|r| r.0 <= seq);
    ranges[..i]
        .iter()
        .rev()
        .take(64)
        .find(|r| seq < r.1)
        .map(|r| r.2.as_str())
}

fn json_line(r: &Record<'_>, backend: Option<&str>) -> String {
    let kind = r.kind().map_or("UNKNOWN", RecordType::name);
    let meta = |t: u8| {
        r.meta_value(t)
            .map_or("null".into(), |v| json_str(&String::from_utf8_lossy(v)))
    };
    let mut s = format!(
        "{{\"seq\":{},\"time\":\"{}\",\"type\":\"{kind}\",\"listener\":{},\"client\":{},\"backend\":{}",
        r.seq,
        format_rfc3339(r.time_ns),
        meta(tag::LISTENER),
        meta(tag::CLIENT),
        match backend {
            Some(b) => json_str(b),
            None => meta(tag::BACKEND),
        },
    );
    match r.kind() {
        Some(RecordType::Frame) => match std::str::from_utf8(r.body) {
            Ok(text) => s.push_str(&format!(",\"frame\":{}", json_str(text))),
            Err(_) => s.push_str(&format!(",\"frame_b64\":\"{}\"", base64(r.body))),
        },
        Some(RecordType::Gap) => {
            let count = r
                .body
                .get(..8)
                .map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")));
            s.push_str(&format!(
                ",\"reason\":{},\"count\":{count}",
                meta(tag::REASON)
            ));
        }
        Some(t) if t.is_checkpoint() => {
            if let Some(cp) = CheckpointBody::decode(r.body) {
                s.push_str(&format!(
                    ",\"epoch\":{},\"covered_seq\":{}",
                    cp.epoch, cp.covered_seq
                ));
            }
        }
        Some(RecordType::Recovery) => s.push_str(&format!(",\"reason\":{}", meta(tag::REASON))),
        _ => {}
    }
    s.push_str("}\n");
    s
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-11-26T10:00:00.123456789Z`.
pub fn format_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to Unix nanoseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = s.get(start..i)?;
        if frac.is_empty() {
            return None;
        }
        let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = digits.parse().ok()?;
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            sign * (tz[1..3].parse::<i64>().ok()? * 3600 + tz[4..6].parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let t = parse_rfc3339("2026-11-26T10:20:30.5Z").unwrap();
        assert_eq!(format_rfc3339(t), "2026-11-26T10:20:30.500000000Z");
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00Z"),
            Some(951_782_400_000_000_000)
        );
        assert!(parse_rfc3339("yesterday").is_none());
        assert_eq!(Bound::parse("42"), Ok(Bound::Seq(42)));
        assert!(Bound::parse("42x").is_err());
    }

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
