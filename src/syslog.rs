//! Just enough syslog header parsing to find HOSTNAME and APP-NAME for the
//! `hash` balance mode. Pure, allocation-free, never panics; called by the
//! dispatcher on each frame of a `hash-key = hostname | app-name` pool.
//!
//! Understands RFC 5424 (`<PRI>1 TIMESTAMP HOSTNAME APP-NAME ...`) and RFC
//! 3164 as senders really write it (`<PRI>Mmm dd hh:mm:ss HOST TAG[pid]: ...`,
//! also with an RFC 3339 timestamp as rsyslog forwards it). The PRI part is
//! optional. A field that is `-` or missing is `None`.

/// Header fields found in one frame.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub hostname: Option<&'a [u8]>,
    pub app_name: Option<&'a [u8]>,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Splits off the next space-terminated token.
fn token(s: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b' ', s) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

fn nil_to_none(t: &[u8]) -> Option<&[u8]> {
    (!t.is_empty() && t != b"-").then_some(t)
}

/// Parses the header of one syslog message.
pub fn parse(frame: &[u8]) -> Header<'_> {
    let mut s = frame;
    // <PRI>: 1-3 digits in angle brackets.
    if s.first() == Some(&b'<') {
        if let Some(end) = s.iter().take(5).position(|&b| b == b'>') {
            if end > 1 && s[1..end].iter().all(u8::is_ascii_digit) {
                s = &s[end + 1..];
            }
        }
    }
    // RFC 5424: VERSION (1-2 digits) SP.
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if (1..=2).contains(&digits) && s.get(digits) == Some(&b' ') {
        let (_ts, rest) = token(&s[digits + 1..]);
        let (host, rest) = token(rest);
        let (app, _) = token(rest);
        return Header {
            hostname: nil_to_none(host),
            app_name: nil_to_none(app),
        };
    }
    // RFC 3164: "Mmm dd hh:mm:ss " (fixed width) or an RFC 3339 timestamp.
    let rest = if s.len() >= 16 && MONTHS.iter().any(|m| s.starts_with(&m[..])) && s[15] == b' ' {
        &s[16..]
    } else if s.first().is_some_and(u8::is_ascii_digit) {
        token(s).1
    } else {
        return Header::default();
    };
    let (host, rest) = token(rest);
    // TAG ends at '[', ':' or space.
    let tag_end = rest
        .iter()
        .position(|&b| b == b'[' || b == b':' || b == b' ')
        .unwrap_or(rest.len());
    Header {
        hostname: nil_to_none(host),
        app_name: nil_to_none(&rest[..tag_end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &[u8]) -> (Option<&str>, Option<&str>) {
        let h = parse(s);
        (
            h.hostname.map(|b| std::str::from_utf8(b).unwrap()),
            h.app_name.map(|b| std::str::from_utf8(b).unwrap()),
        )
    }

    #[test]
    fn rfc5424() {
        assert_eq!(
            hp(b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 - msg"),
            (Some("mymachine.example.com"), Some("evntslog"))
        );
        assert_eq!(hp(b"<13>1 - - - - - -"), (None, None));
        assert_eq!(hp(b"1 2026-01-01T00:00:00Z h a"), (Some("h"), Some("a")));
    }

    #[test]
    fn rfc3164() {
        assert_eq!(
            hp(b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed"),
            (Some("mymachine"), Some("su"))
        );
        assert_eq!(
            hp(b"<13>Nov  6 09:01:02 web-3 nginx[123]: GET /"),
            (Some("web-3"), Some("nginx"))
        );
        assert_eq!(
            hp(b"<13>2026-11-26T10:00:00+00:00 db1 postgres[9]: x"),
            (Some("db1"), Some("postgres"))
        );
    }

    #[test]
    fn garbage_gives_nothing_and_never_panics() {
        assert_eq!(hp(b""), (None, None));
        assert_eq!(hp(b"<"), (None, None));
        assert_eq!(hp(b"<999999>"), (None, None));
        assert_eq!(hp(b"hello world"), (None, None));
        for n in 0..40 {
            let s = &b"<13>1 2026 host app <13>Oct 11 22:14:15 h t:"[..n];
            let _ = parse(s);
        }
    }
}
