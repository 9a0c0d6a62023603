//! RELP (rsyslog's Reliable Event Logging Protocol), written from the
//! protocol description (librelp's doc/relp.md): frames, offers and
//! responses. Pure decoding and encoding with bounds checks; no I/O.
//!
//! ```text
//! RELP-FRAME = TXNR SP COMMAND SP DATALEN [SP DATA] LF
//! TXNR       = 1*9DIGIT      ; 1..999,999,999 then 1 again; 0 for hints
//! COMMAND    = 1*32ALPHA     ; open, syslog, close, rsp, serverclose, ...
//! DATALEN    = 1*9DIGIT      ; octets of DATA; 0: no SP and no DATA
//! rsp DATA   = STATUS [SP HUMAN-TEXT] [LF CMDDATA]   ; 200 OK, 500 error
//! offers     = *(FEATURENAME ["=" VALUE *("," VALUE)] LF)
//! ```
//!
//! A frame that breaks the grammar is an error: the session that reads it
//! is closed with the reason (the protocol has no way to recover), like a
//! framing error of the syslog framer. A well-formed frame whose data is
//! longer than the decoder's limit is not: its first `max_data` octets are
//! kept, the rest is read past without being buffered, and the frame says
//! how long it was ([`Frame::len`]), so a session can truncate or refuse it
//! and go on.

use bytes::{Buf, Bytes, BytesMut};

/// Highest transaction number; the next after it is 1.
pub const MAX_TXNR: u32 = 999_999_999;
/// Longest header: 9 digits, SP, 32 letters, SP, 9 digits.
const MAX_HEADER: usize = 9 + 1 + 32 + 1 + 9;
/// Longest command name.
const MAX_COMMAND: usize = 32;

/// What auditlb offers in an `open` and in its answer to one: RELP
/// version 0, its name and version, and the `syslog` command.
pub fn offers() -> Vec<u8> {
    format!(
        "relp_version=0\nrelp_software=auditlb,{},https://github.com/auditlb/auditlb\ncommands=syslog",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes()
}

/// Whether offers (of an `open`, or of the answer to one) include the
/// `syslog` command.
pub fn offers_syslog(data: &[u8]) -> bool {
    parse_offers(data).iter().any(|(name, value)| {
        *name == b"commands" && value.split(|&b| b == b',').any(|c| c == b"syslog")
    })
}

/// The transaction number after `txnr` (wraps to 1, never 0).
pub fn next_txnr(txnr: u32) -> u32 {
    if txnr >= MAX_TXNR {
        1
    } else {
        txnr + 1
    }
}

/// A RELP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Open,
    Syslog,
    Close,
    Rsp,
    ServerClose,
    /// Any other name the grammar allows (refused by a session).
    Other(String),
}

impl Command {
    fn from_name(name: &[u8]) -> Command {
        match name {
            b"open" => Command::Open,
            b"syslog" => Command::Syslog,
            b"close" => Command::Close,
            b"rsp" => Command::Rsp,
            b"serverclose" => Command::ServerClose,
            other => Command::Other(String::from_utf8_lossy(other).into_owned()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Command::Open => "open",
            Command::Syslog => "syslog",
            Command::Close => "close",
            Command::Rsp => "rsp",
            Command::ServerClose => "serverclose",
            Command::Other(n) => n,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u32,
    pub command: Command,
    /// The data, or its first `max_data` octets when it was longer.
    pub data: Bytes,
    /// DATALEN as sent: more than `data.len()` for a frame cut short.
    pub len: usize,
}

impl Frame {
    /// The data was longer than the decoder's limit and was cut.
    pub fn truncated(&self) -> bool {
        self.len > self.data.len()
    }
}

/// Why bytes are not a RELP frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("transaction number is not 1 to 9 digits")]
    BadTxnr,
    #[error("command is not 1 to 32 letters")]
    BadCommand,
    #[error("data length is not 1 to 9 digits")]
    BadDatalen,
    #[error("expected a space after the {0}")]
    MissingSpace(&'static str),
    #[error("frame does not end with LF")]
    MissingTrailer,
}

impl Error {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::BadTxnr => "bad_txnr",
            Error::BadCommand => "bad_command",
            Error::BadDatalen => "bad_datalen",
            Error::MissingSpace(_) => "missing_space",
            Error::MissingTrailer => "missing_trailer",
        }
    }
}

/// Decodes frames from a stream buffer. Bytes are checked as they come:
/// garbage is refused before a whole frame is buffered, and a frame never
/// makes the buffer hold more than `max_data` plus a header.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_data: usize,
    /// Inside a frame longer than `max_data`.
    long: Option<Long>,
}

/// A frame whose data is over the limit, being read past.
#[derive(Debug, Clone)]
struct Long {
    txnr: u32,
    command: Command,
    len: usize,
    /// The first `max_data` octets of its data.
    kept: BytesMut,
    /// Data octets not yet seen.
    left: usize,
}

/// Where the header parse got to.
enum Header {
    /// Needs more bytes.
    Partial,
    /// `(txnr, command, datalen, header length)`; the header length
    /// counts up to and including the DATALEN digits.
    Done(u32, Command, usize, usize),
}

impl Decoder {
    /// `max_data`: the longest DATA accepted (RELP's own limit is 128 KiB
    /// for version 1; a listener uses its `max-frame` plus room for the
    /// open offers).
    pub fn new(max_data: usize) -> Decoder {
        Decoder {
            max_data,
            long: None,
        }
    }

    /// Inside a frame (some of it read, not all).
    pub fn in_frame(&self, buf: &[u8]) -> bool {
        self.long.is_some() || !buf.is_empty()
    }

    /// Most bytes the buffer holds while waiting for a frame to complete.
    pub fn max_buffer(&self) -> usize {
        MAX_HEADER + 1 + self.max_data + 1
    }

    /// The next whole frame in `buf` (taken off it), `Ok(None)` when more
    /// bytes are needed, or why the stream is not RELP.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if self.long.is_some() {
            return self.read_long(buf);
        }
        let (txnr, command, len, at) = match header(buf)? {
            Header::Partial => return Ok(None),
            Header::Done(t, c, l, at) => (t, c, l, at),
        };
        if len > self.max_data {
            // Only the SP after DATALEN is checked here; the data is taken
            // as it comes.
            match buf.get(at) {
                None => return Ok(None),
                Some(b' ') => {}
                Some(_) => return Err(Error::MissingSpace("data length")),
            }
            buf.advance(at + 1);
            self.long = Some(Long {
                txnr,
                command,
                len,
                kept: BytesMut::with_capacity(self.max_data),
                left: len,
            });
            return self.read_long(buf);
        }
        // With data: SP DATA LF; without: LF.
        let need = if len == 0 { at + 1 } else { at + 1 + len + 1 };
        if len > 0 {
            match buf.get(at) {
                None => return Ok(None),
                Some(b' ') => {}
                Some(_) => return Err(Error::MissingSpace("data length")),
            }
        }
        if buf.len() < need {
            return Ok(None);
        }
        if buf[need - 1] != b'\n' {
            return Err(Error::MissingTrailer);
        }
        let mut frame = buf.split_to(need);
        let data = if len == 0 {
            Bytes::new()
        } else {
            frame.advance(at + 1);
            frame.truncate(len);
            frame.freeze()
        };
        Ok(Some(Frame {
            txnr,
            command,
            data,
            len,
        }))
    }

    /// Goes on through a frame longer than the limit.
    fn read_long(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let long = self.long.as_mut().expect("inside a long frame");
        let take = long.left.min(buf.len());
        let keep = take.min(self.max_data - long.kept.len());
        long.kept.extend_from_slice(&buf[..keep]);
        buf.advance(take);
        long.left -= take;
        if long.left > 0 || buf.is_empty() {
            return Ok(None);
        }
        let long = self.long.take().expect("inside a long frame");
        if buf[0] != b'\n' {
            return Err(Error::MissingTrailer);
        }
        buf.advance(1);
        Ok(Some(Frame {
            txnr: long.txnr,
            command: long.command,
            data: long.kept.freeze(),
            len: long.len,
        }))
    }
}

/// Reads `1*max DIGIT` at `b[at..]`: `Ok(Some((value, end)))`, `Ok(None)`
/// when the buffer ends inside it.
fn number(b: &[u8], at: usize, max: usize) -> Result<Option<(u64, usize)>, ()> {
    let mut v: u64 = 0;
    let mut i = at;
    while i < b.len() && b[i].is_ascii_digit() {
        if i - at == max {
            return Err(());
        }
        v = v * 10 + u64::from(b[i] - b'0');
        i += 1;
    }
    if i == b.len() {
        return Ok(None);
    }
    if i == at {
        return Err(());
    }
    Ok(Some((v, i)))
}

fn header(b: &[u8]) -> Result<Header, Error> {
    let Some((txnr, at)) = number(b, 0, 9).map_err(|()| Error::BadTxnr)? else {
        return Ok(Header::Partial);
    };
    if b[at] != b' ' {
        return Err(Error::MissingSpace("transaction number"));
    }
    let start = at + 1;
    let mut i = start;
    while i < b.len() && b[i].is_ascii_alphabetic() {
        if i - start == MAX_COMMAND {
            return Err(Error::BadCommand);
        }
        i += 1;
    }
    if i == b.len() {
        return Ok(Header::Partial);
    }
    if i == start {
        return Err(Error::BadCommand);
    }
    if b[i] != b' ' {
        return Err(Error::MissingSpace("command"));
    }
    let command = Command::from_name(&b[start..i]);
    let Some((len, end)) = number(b, i + 1, 9).map_err(|()| Error::BadDatalen)? else {
        return Ok(Header::Partial);
    };
    Ok(Header::Done(txnr as u32, command, len as usize, end))
}

/// Appends one frame to `out`.
pub fn encode(txnr: u32, command: &str, data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Formatted straight into `out`: no allocation per frame.
    let _ = write!(out, "{txnr} {command} {}", data.len());
    if !data.is_empty() {
        out.push(b' ');
        out.extend_from_slice(data);
    }
    out.push(b'\n');
}

/// A `rsp` frame: `code` with its text, then `cmd_data` on the next line
/// if any (the offers answering `open`).
pub fn encode_rsp(txnr: u32, code: u16, text: &str, cmd_data: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    let code = code.min(999);
    // "CODE TEXT", then LF and the command data if any.
    let extra = if cmd_data.is_empty() {
        0
    } else {
        1 + cmd_data.len()
    };
    let len = 3 + 1 + text.len() + extra;
    let _ = write!(out, "{txnr} rsp {len} {code:03} {text}");
    if !cmd_data.is_empty() {
        out.push(b'\n');
        out.extend_from_slice(cmd_data);
    }
    out.push(b'\n');
}

/// A parsed `rsp` data part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rsp<'a> {
    pub code: u16,
    pub text: &'a [u8],
    pub cmd_data: &'a [u8],
}

impl Rsp<'_> {
    pub fn ok(&self) -> bool {
        self.code == 200
    }
}

/// Parses a `rsp` frame's data: three digits, then optional text, then
/// optional command data after an LF. `None` when it is not that.
pub fn parse_rsp(data: &[u8]) -> Option<Rsp<'_>> {
    let digits = data.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let rest = &data[3..];
    let (line, cmd_data) = match memchr::memchr(b'\n', rest) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let text = match line.split_first() {
        None => line,
        Some((b' ', t)) => t,
        Some(_) => return None,
    };
    Some(Rsp {
        code,
        text,
        cmd_data,
    })
}

/// The offers of an `open` (or of its `rsp`): one per line, `name` or
/// `name=value[,value...]`.
pub fn parse_offers(data: &[u8]) -> Vec<(&[u8], &[u8])> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| match memchr::memchr(b'=', l) {
            Some(i) => (&l[..i], &l[i + 1..]),
            None => (l, &[][..]),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &Decoder, bytes: &[u8]) -> (Vec<Frame>, Option<Error>) {
        let mut dec = dec.clone();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    #[test]
    fn a_librelp_session_decodes() {
        let stream = b"1 open 86 relp_version=0\nrelp_software=librelp,1.2.18,http://librelp.adiscon.com\ncommands=syslog\n2 syslog 29 <13>Nov 27 10:00:00 host x: y\n3 close 0\n";
        let mut dec = Decoder::new(128 * 1024);
        let (frames, err) = decode_all(&dec, stream);
        assert_eq!(err, None);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].command, Command::Open);
        let offers = parse_offers(&frames[0].data);
        assert_eq!(offers[0], (&b"relp_version"[..], &b"0"[..]));
        assert_eq!(offers[2], (&b"commands"[..], &b"syslog"[..]));
        assert_eq!(frames[1].txnr, 2);
        assert_eq!(&frames[1].data[..], b"<13>Nov 27 10:00:00 host x: y");
        assert_eq!(frames[2].command, Command::Close);
        assert!(frames[2].data.is_empty());
        // Byte by byte: the same frames, never an error.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert!(buf.len() <= dec.max_buffer());
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn encode_round_trips_and_responses_parse() {
        let mut out = Vec::new();
        encode(7, "syslog", b"<13>hi", &mut out);
        encode(8, "close", b"", &mut out);
        encode_rsp(1, 200, "OK", b"relp_version=0\ncommands=syslog", &mut out);
        assert_eq!(&out[..18], b"7 syslog 6 <13>hi\n");
        let (frames, err) = decode_all(&Decoder::new(1024), &out);
        assert_eq!(err, None);
        assert_eq!(frames[1].command, Command::Close);
        let rsp = parse_rsp(&frames[2].data).unwrap();
        assert!(rsp.ok());
        assert_eq!(rsp.text, b"OK");
        assert_eq!(parse_offers(rsp.cmd_data).len(), 2);
        assert_eq!(
            parse_rsp(b"500 queue full"),
            Some(Rsp {
                code: 500,
                text: b"queue full",
                cmd_data: b""
            })
        );
        assert_eq!(parse_rsp(b"20"), None);
        assert_eq!(parse_rsp(b"200x"), None);
        assert_eq!(next_txnr(MAX_TXNR), 1);
        assert_eq!(next_txnr(41), 42);
    }

    #[test]
    fn garbage_is_refused_early_with_a_reason() {
        let dec = Decoder::new(16);
        for (bytes, want) in [
            (&b"x"[..], Error::BadTxnr),
            (b"1234567890 syslog", Error::BadTxnr),
            (b"1x", Error::MissingSpace("transaction number")),
            (b"1 sys1", Error::MissingSpace("command")),
            (b"1  ", Error::BadCommand),
            (b"1 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Error::BadCommand),
            (b"1 syslog x", Error::BadDatalen),
            (b"1 syslog 5x", Error::MissingSpace("data length")),
            (b"1 syslog 17x", Error::MissingSpace("data length")),
            (b"1 syslog 17 abcdefghijklmnopqX", Error::MissingTrailer),
            (b"1 syslog 2 abX", Error::MissingTrailer),
            (b"1 close 0 ", Error::MissingTrailer),
        ] {
            let (_, err) = decode_all(&dec, bytes);
            assert_eq!(
                err,
                Some(want.clone()),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
            assert!(!want.reason().is_empty());
        }
        // Incomplete but well-formed so far: more is needed.
        for partial in [&b"1"[..], b"12 sys", b"12 syslog 1", b"12 syslog 10 abc"] {
            assert_eq!(decode_all(&dec, partial), (vec![], None));
        }
    }

    #[test]
    fn a_frame_over_the_limit_is_cut_and_the_stream_goes_on() {
        let mut stream = Vec::new();
        encode(1, "syslog", &[b'a'; 100], &mut stream);
        encode(2, "syslog", b"short", &mut stream);
        let dec = Decoder::new(16);
        let (frames, err) = decode_all(&dec, &stream);
        assert_eq!(err, None);
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[0].data[..], &[b'a'; 16][..]);
        assert_eq!(frames[0].len, 100);
        assert!(frames[0].truncated());
        assert_eq!(&frames[1].data[..], b"short");
        assert!(!frames[1].truncated());
        // Byte by byte, the buffer stays small and the frames are the same.
        let mut dec = Decoder::new(16);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in &stream {
            buf.extend_from_slice(&[b]);
            while let Some(f) = dec.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert!(buf.len() <= dec.max_buffer());
        }
        assert_eq!(got, frames);
        assert!(!dec.in_frame(&buf));
    }
}
