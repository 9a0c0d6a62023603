//! The framer: cuts a client's byte stream into frames. Pure, no I/O; one
//! [`Decoder`] per client connection, driven by the session task.
//!
//! - `octet-counted` (RFC 6587 §3.4.1): `MSG-LEN SP SYSLOG-MSG`. MSG-LEN is
//!   1 to 10 decimal digits with no leading zero. A non-digit, a leading
//!   zero, more than 10 digits, or a count not followed by a space is a
//!   malformed count: the connection is closed (`FrameError::Malformed`). Stray
//!   CR/LF bytes between frames (some senders add them) are skipped.
//! - `lf` (RFC 6587 §3.4.2): frames end with LF; a CR before the LF is
//!   removed; empty lines are skipped. A last line without LF is delivered at
//!   end of stream.
//! - `auto`: decided once per connection from its first byte: `1`-`9` means
//!   octet counting, anything else LF.
//!
//! A frame longer than `max-frame` follows the oversize policy: `truncate`
//! (first `max-frame` bytes kept, the rest skipped), `drop` (skipped), or
//! `close` (error). Skipping streams: it never buffers more than `max-frame`
//! plus one count header, whatever the count says. Frames are `Bytes` slices
//! of the read buffer, never copies.
//!
//! Learned from vector's octet-counting decoder bugs (underflow, endless
//! loop): every length here is checked before it is subtracted, and every
//! call either consumes bytes, returns an event, or asks for more input.

use bytes::{Buf, Bytes, BytesMut};

use crate::config::{Framing, Oversize};

/// Longest MSG-LEN accepted, in digits (u32-sized counts and a bit more).
const MAX_COUNT_DIGITS: usize = 10;

/// One result of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole frame.
    Frame(Bytes),
    /// The first `max-frame` bytes of a longer frame (`oversize = truncate`);
    /// `len` is the frame's length, or for LF the bytes seen when it was cut.
    Truncated { frame: Bytes, len: u64 },
    /// A frame dropped for its size (`oversize = drop`).
    Dropped { len: u64 },
}

/// Why a connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("malformed octet count: {0}")]
    Malformed(String),
    #[error("frame of {len} bytes exceeds max-frame {max} (oversize = close)")]
    Oversize { len: u64, max: usize },
    #[error("line longer than max-frame {max} with no LF in sight (oversize = close)")]
    LineTooLong { max: usize },
    #[error("stream ended inside an octet-counted frame ({have} of {want} bytes; 0 of 0: inside the count)")]
    Incomplete { have: usize, want: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Detect,
    Octet,
    Lf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Skip {
    None,
    /// Discard this many more bytes (rest of an oversize octet frame).
    Bytes(u64),
    /// Discard through the next LF (rest of an oversize line). The event is
    /// reported at the LF, when the line's length is known: `held` is the
    /// truncated frame (`truncate`), or `None` (`drop`).
    ToLf {
        held: Option<Bytes>,
        seen: u64,
    },
}

/// Per-connection decoder state.
#[derive(Debug)]
pub struct Decoder {
    mode: Mode,
    max_frame: usize,
    oversize: Oversize,
    skip: Skip,
    /// LF mode: bytes at the front of the buffer already searched for LF, so
    /// a long partial line is not scanned again on every read.
    scanned: usize,
}

impl Decoder {
    pub fn new(framing: Framing, max_frame: usize, oversize: Oversize) -> Self {
        let mode = match framing {
            Framing::Auto => Mode::Detect,
            Framing::OctetCounted => Mode::Octet,
            Framing::Lf => Mode::Lf,
        };
        Self {
            mode,
            max_frame: max_frame.max(1),
            oversize,
            skip: Skip::None,
            scanned: 0,
        }
    }

    /// The framing this connection turned out to use, once known.
    pub fn detected(&self) -> Option<Framing> {
        match self.mode {
            Mode::Detect => None,
            Mode::Octet => Some(Framing::OctetCounted),
            Mode::Lf => Some(Framing::Lf),
        }
    }

    /// How many bytes the buffer may need to hold for the next decision: the
    /// caller reads until at least this much fits. Bounded by `max-frame`
    /// plus a count header.
    pub fn max_buffer(&self) -> usize {
        self.max_frame + MAX_COUNT_DIGITS + 2
    }

    /// True when bytes of an unfinished frame are held or being skipped: the
    /// session's partial-frame timer runs while this is true.
    pub fn in_frame(&self, buf: &BytesMut) -> bool {
        self.skip != Skip::None || buf.iter().any(|&b| b != b'\n' && b != b'\r')
    }

    /// Decodes the next event from `buf`, consuming what it used. `Ok(None)`
    /// means more input is needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        loop {
            match &mut self.skip {
                Skip::None => {}
                &mut Skip::Bytes(n) => {
                    let k = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
                    buf.advance(k);
                    let left = n - k as u64;
                    if left > 0 {
                        self.skip = Skip::Bytes(left);
                        return Ok(None);
                    }
                    self.skip = Skip::None;
                }
                Skip::ToLf { seen, .. } => match memchr::memchr(b'\n', buf) {
                    Some(i) => {
                        *seen += i as u64;
                        buf.advance(i + 1);
                        return Ok(Some(self.end_skip_lf()));
                    }
                    None => {
                        *seen += buf.len() as u64;
                        buf.clear();
                        return Ok(None);
                    }
                },
            }
            match self.mode {
                Mode::Detect => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    self.mode = if first.is_ascii_digit() && first != b'0' {
                        Mode::Octet
                    } else {
                        Mode::Lf
                    };
                }
                Mode::Octet => return self.decode_octet(buf),
                Mode::Lf => match self.decode_lf(buf)? {
                    Step::Event(e) => return Ok(Some(e)),
                    Step::More => return Ok(None),
                    Step::Again => continue,
                },
            }
        }
    }

    /// True when `buf` holds part of a frame not yet reported in any way
    /// (a frame being skipped for its size was already reported as
    /// truncated or dropped).
    pub fn partial(&self, buf: &BytesMut) -> bool {
        matches!(self.skip, Skip::None) && buf.iter().any(|&b| b != b'\n' && b != b'\r')
    }

    /// Called at end of stream: delivers a last unterminated LF line, or
    /// reports an octet-counted frame cut short.
    pub fn finish(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        self.end(buf, true)
    }

    /// Called when a stream was cut rather than ended (TLS without
    /// close_notify): as [`Decoder::finish`], except that an unterminated
    /// LF line is not a frame but [`FrameError::Incomplete`].
    pub fn finish_cut(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        self.end(buf, false)
    }

    fn end(
        &mut self,
        buf: &mut BytesMut,
        lf_tail_is_frame: bool,
    ) -> Result<Option<Event>, FrameError> {
        if let Some(e) = self.decode(buf)? {
            return Ok(Some(e));
        }
        match self.skip {
            Skip::None => {}
            Skip::ToLf { .. } => return Ok(Some(self.end_skip_lf())),
            Skip::Bytes(_) => {
                buf.clear();
                self.skip = Skip::None;
                return Ok(None);
            }
        }
        match self.mode {
            Mode::Detect => Ok(None),
            Mode::Lf => {
                let mut line = buf.split().freeze();
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                self.scanned = 0;
                if line.is_empty() {
                    return Ok(None);
                }
                if !lf_tail_is_frame {
                    if line.iter().all(|&b| b == b'\r') {
                        return Ok(None);
                    }
                    return Err(FrameError::Incomplete {
                        have: line.len(),
                        want: 0,
                    });
                }
                match self.complete_line(line)? {
                    Step::Event(e) => Ok(Some(e)),
                    _ => Ok(None),
                }
            }
            Mode::Octet => {
                let start = buf.iter().position(|&b| b != b'\n' && b != b'\r');
                let Some(start) = start else {
                    buf.clear();
                    return Ok(None);
                };
                let rest = &buf[start..];
                let (have, want) = match rest.iter().position(|&b| b == b' ') {
                    Some(sp) => (
                        rest.len() - sp - 1,
                        std::str::from_utf8(&rest[..sp])
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(0),
                    ),
                    None => (0, 0),
                };
                buf.clear();
                Err(FrameError::Incomplete { have, want })
            }
        }
    }

    fn decode_octet(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, FrameError> {
        // Skip stray line ends between frames.
        let lead = buf
            .iter()
            .position(|&b| b != b'\n' && b != b'\r')
            .unwrap_or(buf.len());
        buf.advance(lead);
        if buf.is_empty() {
            return Ok(None);
        }
        let mut len: u64 = 0;
        let mut header = None;
        for (i, &c) in buf.iter().enumerate() {
            match c {
                b'0'..=b'9' => {
                    if i == 0 && c == b'0' {
                        return Err(FrameError::Malformed("count starts with 0".into()));
                    }
                    if i >= MAX_COUNT_DIGITS {
                        return Err(FrameError::Malformed(format!(
                            "count longer than {MAX_COUNT_DIGITS} digits"
                        )));
                    }
                    len = len * 10 + u64::from(c - b'0');
                }
                b' ' if i > 0 => {
                    header = Some(i + 1);
                    break;
                }
                _ if i == 0 => {
                    return Err(FrameError::Malformed(format!(
                        "expected a digit 1-9, got {}",
                        show_byte(c)
                    )))
                }
                _ => {
                    return Err(FrameError::Malformed(format!(
                        "count {len} followed by {} instead of a space",
                        show_byte(c)
                    )))
                }
            }
        }
        let Some(header) = header else {
            return Ok(None);
        };
        let max = self.max_frame as u64;
        if len <= max {
            let need = header + len as usize;
            if buf.len() < need {
                return Ok(None);
            }
            buf.advance(header);
            return Ok(Some(Event::Frame(buf.split_to(len as usize).freeze())));
        }
        match self.oversize {
            Oversize::Close => Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            }),
            Oversize::Drop => {
                buf.advance(header);
                self.skip = Skip::Bytes(len);
                Ok(Some(Event::Dropped { len }))
            }
            Oversize::Truncate => {
                if buf.len() < header + self.max_frame {
                    return Ok(None);
                }
                buf.advance(header);
                let frame = buf.split_to(self.max_frame).freeze();
                self.skip = Skip::Bytes(len - max);
                Ok(Some(Event::Truncated { frame, len }))
            }
        }
    }

    fn decode_lf(&mut self, buf: &mut BytesMut) -> Result<Step, FrameError> {
        // A frame of max_frame bytes may be followed by CR LF.
        let limit = buf.len().min(self.max_frame + 2);
        let from = self.scanned.min(limit);
        match memchr::memchr(b'\n', &buf[from..limit]) {
            Some(off) => {
                let i = from + off;
                self.scanned = 0;
                let mut line = buf.split_to(i + 1).freeze();
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                if line.is_empty() {
                    return Ok(Step::Again);
                }
                self.complete_line(line)
            }
            None if buf.len() > self.max_frame + 1 => {
                // No LF within max-frame (+CR): oversize whatever comes next.
                self.scanned = 0;
                match self.oversize {
                    Oversize::Close => Err(FrameError::LineTooLong {
                        max: self.max_frame,
                    }),
                    Oversize::Drop => {
                        self.skip = Skip::ToLf {
                            held: None,
                            seen: 0,
                        };
                        Ok(Step::Again)
                    }
                    Oversize::Truncate => {
                        let frame = buf.split_to(self.max_frame).freeze();
                        self.skip = Skip::ToLf {
                            held: Some(frame),
                            seen: self.max_frame as u64,
                        };
                        Ok(Step::Again)
                    }
                }
            }
            None => {
                self.scanned = limit;
                Ok(Step::More)
            }
        }
    }
}

impl Decoder {
    /// A whole line (without LF/CR) that may be oversize.
    fn complete_line(&mut self, mut line: Bytes) -> Result<Step, FrameError> {
        if line.len() <= self.max_frame {
            return Ok(Step::Event(Event::Frame(line)));
        }
        let len = line.len() as u64;
        match self.oversize {
            Oversize::Close => Err(FrameError::Oversize {
                len,
                max: self.max_frame,
            }),
            Oversize::Drop => Ok(Step::Event(Event::Dropped { len })),
            Oversize::Truncate => {
                line.truncate(self.max_frame);
                Ok(Step::Event(Event::Truncated { frame: line, len }))
            }
        }
    }

    /// The LF ending an oversize line arrived (or the stream ended).
    fn end_skip_lf(&mut self) -> Event {
        match std::mem::replace(&mut self.skip, Skip::None) {
            Skip::ToLf {
                held: Some(frame),
                seen,
            } => Event::Truncated { frame, len: seen },
            Skip::ToLf { held: None, seen } => Event::Dropped { len: seen },
            _ => unreachable!("only called while skipping to LF"),
        }
    }
}

enum Step {
    Event(Event),
    More,
    Again,
}

fn show_byte(c: u8) -> String {
    if c.is_ascii_graphic() {
        format!("{:?}", c as char)
    } else {
        format!("byte 0x{c:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a whole stream decodes to: events, then an error if one ended it.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        events: Vec<Event>,
        error: Option<FrameError>,
    }

    fn feed(dec: &mut Decoder, chunks: &[&[u8]]) -> Outcome {
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(e) => {
                        return Outcome {
                            events,
                            error: Some(e),
                        }
                    }
                }
                assert!(buf.len() <= dec.max_buffer() + chunk.len());
            }
        }
        loop {
            match dec.finish(&mut buf) {
                Ok(Some(e)) => events.push(e),
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        events,
                        error: Some(e),
                    }
                }
            }
        }
        Outcome {
            events,
            error: None,
        }
    }

    /// Decodes `input` whole, split at every point, and byte by byte; all
    /// must agree. Returns the outcome.
    fn check_all_splits(framing: Framing, max: usize, over: Oversize, input: &[u8]) -> Outcome {
        let whole = feed(&mut Decoder::new(framing, max, over), &[input]);
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            let split = feed(&mut Decoder::new(framing, max, over), &[a, b]);
            assert_eq!(split, whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let bbb = feed(&mut Decoder::new(framing, max, over), &bytes);
        assert_eq!(bbb, whole, "byte by byte");
        whole
    }

    fn frames(out: &Outcome) -> Vec<&[u8]> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Frame(f) => Some(&f[..]),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn lf_frames_crlf_and_empty_lines() {
        let out = check_all_splits(
            Framing::Lf,
            64,
            Oversize::Close,
            b"<13>one\r\n\n<13>two\nlast",
        );
        assert_eq!(frames(&out), vec![&b"<13>one"[..], b"<13>two", b"last"]);
        assert_eq!(out.error, None);
    }

    #[test]
    fn octet_frames_with_embedded_lf() {
        let out = check_all_splits(
            Framing::OctetCounted,
            64,
            Oversize::Close,
            b"5 hello11 two\nlines!\n3 abc",
        );
        assert_eq!(frames(&out), vec![&b"hello"[..], b"two\nlines!\n", b"abc"]);
        assert_eq!(out.error, None);
    }

    #[test]
    fn auto_detects_per_connection() {
        let out = check_all_splits(Framing::Auto, 64, Oversize::Close, b"3 abc4 defg");
        assert_eq!(frames(&out), vec![&b"abc"[..], b"defg"]);
        let out = check_all_splits(Framing::Auto, 64, Oversize::Close, b"<13>x y\n<14>z\n");
        assert_eq!(frames(&out), vec![&b"<13>x y"[..], b"<14>z"]);
        // A line starting with 0 is LF framing, not a count.
        let out = check_all_splits(Framing::Auto, 64, Oversize::Close, b"0 zero\n");
        assert_eq!(frames(&out), vec![&b"0 zero"[..]]);
    }

    #[test]
    fn malformed_counts_close() {
        for (input, what) in [
            (&b"3 abcx 1"[..], "expected a digit"),
            (b"05 hello", "count starts with 0"),
            (b"12345678901 x", "longer than 10 digits"),
            (b"12\nabc", "instead of a space"),
            (b"12x", "instead of a space"),
            (b" 3 abc", "expected a digit"),
        ] {
            let out = check_all_splits(Framing::OctetCounted, 64, Oversize::Truncate, input);
            match out.error {
                Some(FrameError::Malformed(m)) => assert!(m.contains(what), "{m} for {input:?}"),
                other => panic!("{input:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn truncated_octet_frame_at_eof_is_reported() {
        let out = check_all_splits(Framing::OctetCounted, 64, Oversize::Close, b"3 abc10 short");
        assert_eq!(frames(&out), vec![&b"abc"[..]]);
        assert_eq!(
            out.error,
            Some(FrameError::Incomplete { have: 5, want: 10 })
        );
    }

    #[test]
    fn octet_oversize_policies() {
        let input = b"3 abc12 0123456789AB2 ok";
        let out = check_all_splits(Framing::OctetCounted, 8, Oversize::Truncate, input);
        assert_eq!(
            out.events,
            vec![
                Event::Frame(Bytes::from_static(b"abc")),
                Event::Truncated {
                    frame: Bytes::from_static(b"01234567"),
                    len: 12
                },
                Event::Frame(Bytes::from_static(b"ok")),
            ]
        );
        let out = check_all_splits(Framing::OctetCounted, 8, Oversize::Drop, input);
        assert_eq!(
            out.events,
            vec![
                Event::Frame(Bytes::from_static(b"abc")),
                Event::Dropped { len: 12 },
                Event::Frame(Bytes::from_static(b"ok")),
            ]
        );
        let out = check_all_splits(Framing::OctetCounted, 8, Oversize::Close, input);
        assert_eq!(frames(&out), vec![&b"abc"[..]]);
        assert_eq!(out.error, Some(FrameError::Oversize { len: 12, max: 8 }));
    }

    #[test]
    fn lf_oversize_policies() {
        let input = b"abc\n0123456789AB\nok\n";
        let out = check_all_splits(Framing::Lf, 8, Oversize::Truncate, input);
        assert_eq!(frames(&out), vec![&b"abc"[..], b"ok"]);
        assert!(
            matches!(&out.events[1], Event::Truncated { frame, .. } if &frame[..] == b"01234567")
        );
        let out = check_all_splits(Framing::Lf, 8, Oversize::Drop, input);
        assert_eq!(frames(&out), vec![&b"abc"[..], b"ok"]);
        assert!(matches!(out.events[1], Event::Dropped { .. }));
        assert_eq!(out.events.len(), 3);
        let out = check_all_splits(Framing::Lf, 8, Oversize::Close, input);
        assert_eq!(frames(&out), vec![&b"abc"[..]]);
        assert!(matches!(
            out.error,
            Some(FrameError::LineTooLong { max: 8 })
        ));
        // Exactly max-frame, with CRLF, is not oversize.
        let out = check_all_splits(Framing::Lf, 8, Oversize::Close, b"01234567\r\nx\n");
        assert_eq!(frames(&out), vec![&b"01234567"[..], b"x"]);
    }

    #[test]
    fn huge_count_is_skipped_without_buffering() {
        let mut dec = Decoder::new(Framing::OctetCounted, 16, Oversize::Drop);
        let mut buf = BytesMut::from(&b"4000000000 "[..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Event::Dropped { len: 4_000_000_000 })
        );
        for _ in 0..100 {
            buf.extend_from_slice(&[b'x'; 4096]);
            assert_eq!(dec.decode(&mut buf).unwrap(), None);
            assert!(buf.is_empty());
        }
        assert!(dec.in_frame(&buf));
    }

    #[test]
    fn frames_share_the_read_buffer() {
        let mut dec = Decoder::new(Framing::Lf, 64, Oversize::Close);
        let mut buf = BytesMut::from(&b"aaaa\nbbbb\n"[..]);
        let base = buf.as_ptr() as usize;
        let Some(Event::Frame(f)) = dec.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(f.as_ptr() as usize, base);
        let Some(Event::Frame(g)) = dec.decode(&mut buf).unwrap() else {
            panic!()
        };
        assert_eq!(g.as_ptr() as usize, base + 5);
    }

    /// Pseudo-random garbage must never panic, loop, or exceed the buffer
    /// bound, in any framing and policy.
    #[test]
    fn a_cut_stream_refuses_its_open_line_and_keeps_the_rest() {
        for oversize in [Oversize::Truncate, Oversize::Drop] {
            let mut d = Decoder::new(Framing::Lf, 16, oversize);
            let mut buf = BytesMut::from(&b"whole\nhalf a li"[..]);
            assert!(
                matches!(d.finish_cut(&mut buf), Ok(Some(Event::Frame(f))) if &f[..] == b"whole")
            );
            assert!(d.partial(&buf));
            assert!(matches!(
                d.finish_cut(&mut buf),
                Err(FrameError::Incomplete { have: 9, want: 0 })
            ));
            assert!(!d.partial(&buf));
            // A line being skipped for its size was reported already: at
            // the cut it ends as it would at an EOF, not as incomplete.
            let mut d = Decoder::new(Framing::Lf, 4, oversize);
            let mut buf = BytesMut::from(&b"much too long"[..]);
            assert!(matches!(d.decode(&mut buf), Ok(None)));
            assert!(!d.partial(&buf));
            let ev = d.finish_cut(&mut buf).unwrap();
            assert!(
                matches!(ev, Some(Event::Dropped { .. } | Event::Truncated { .. })),
                "{ev:?}"
            );
        }
        // Octet counting: the same as an EOF.
        let mut d = Decoder::new(Framing::OctetCounted, 64, Oversize::Drop);
        let mut buf = BytesMut::from(&b"5 hello10 abc"[..]);
        assert!(matches!(d.finish_cut(&mut buf), Ok(Some(Event::Frame(_)))));
        assert!(matches!(
            d.finish_cut(&mut buf),
            Err(FrameError::Incomplete { have: 3, want: 10 })
        ));
        // Only line ends left: nothing to refuse.
        let mut d = Decoder::new(Framing::Lf, 64, Oversize::Drop);
        let mut buf = BytesMut::from(&b"a\n\r"[..]);
        assert!(matches!(d.finish_cut(&mut buf), Ok(Some(Event::Frame(_)))));
        assert!(matches!(d.finish_cut(&mut buf), Ok(None)));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let len = rng.usize(0..200);
            let alphabet = b"0123456789 \n\rab<>";
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.bool() {
                        alphabet[rng.usize(..alphabet.len())]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            for framing in [Framing::Auto, Framing::OctetCounted, Framing::Lf] {
                for over in [Oversize::Truncate, Oversize::Drop, Oversize::Close] {
                    let chunks: Vec<&[u8]> = input.chunks(rng.usize(1..8)).collect();
                    let out = feed(&mut Decoder::new(framing, 16, over), &chunks);
                    for e in &out.events {
                        if let Event::Frame(f) | Event::Truncated { frame: f, .. } = e {
                            assert!(f.len() <= 16);
                        }
                    }
                }
            }
        }
    }
}
