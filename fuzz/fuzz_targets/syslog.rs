//! The syslog header parser (`src/syslog.rs`, used by `hash-key = hostname |
//! app-name`). Two kinds of input, by the first byte:
//! - raw bytes: whatever it finds is a non-empty, space-free, non-`-` slice
//!   of the frame itself, the hostname before the app-name;
//! - a message built from fuzzed fields in one of the shapes senders write
//!   (RFC 5424, RFC 3164 with a BSD or an RFC 3339 timestamp, with or
//!   without PRI): the parser finds exactly the hostname and app-name put
//!   in.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use auditlb::syslog::{parse, Header};
use libfuzzer_sys::fuzz_target;

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

#[derive(Debug, Arbitrary)]
enum Shape {
    Rfc5424,
    Bsd,
    Rfc3339,
}

#[derive(Debug, Arbitrary)]
struct Fields<'a> {
    shape: Shape,
    pri: Option<u8>,
    version: u8,
    month: u8,
    day: u8,
    hms: (u8, u8, u8),
    timestamp: &'a [u8],
    host: &'a [u8],
    app: &'a [u8],
    pid: Option<u32>,
    rest: &'a [u8],
}

/// Where `part` sits inside `whole`, if it is a slice of it.
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    assert!(
        p >= w && p + part.len() <= w + whole.len(),
        "field is not a slice of the frame"
    );
    p - w
}

fn check_raw(frame: &[u8]) {
    let h = parse(frame);
    assert_eq!(h, parse(frame), "not deterministic");
    let mut last_end = 0;
    for field in [h.hostname, h.app_name].into_iter().flatten() {
        assert!(
            !field.is_empty() && field != b"-",
            "empty or nil field {h:?}"
        );
        assert!(!field.contains(&b' '), "field with a space {h:?}");
        let at = offset_in(frame, field);
        assert!(at >= last_end, "app-name before hostname {h:?}");
        last_end = at + field.len();
    }
}

/// A token a field may hold: no space, not empty, not `-`; for the app-name
/// of RFC 3164 also no `[` or `:` (they end the TAG).
fn token(raw: &[u8], also_stop: &[u8], fallback: &str) -> Vec<u8> {
    let t: Vec<u8> = raw
        .iter()
        .copied()
        .filter(|b| *b != b' ' && !also_stop.contains(b))
        .take(48)
        .collect();
    if t.is_empty() || t == b"-" {
        fallback.as_bytes().to_vec()
    } else {
        t
    }
}

fn check_built(f: Fields<'_>) {
    let mut msg = Vec::new();
    if let Some(p) = f.pri {
        msg.extend_from_slice(format!("<{}>", p % 192).as_bytes());
    }
    let host = token(f.host, b"", "h");
    let app;
    match f.shape {
        Shape::Rfc5424 => {
            app = token(f.app, b"", "a");
            let ts = token(f.timestamp, b"", "-");
            msg.extend_from_slice(format!("{} ", f.version % 99 + 1).as_bytes());
            msg.extend_from_slice(&ts);
            msg.push(b' ');
            msg.extend_from_slice(&host);
            msg.push(b' ');
            msg.extend_from_slice(&app);
            msg.push(b' ');
        }
        Shape::Bsd | Shape::Rfc3339 => {
            app = token(f.app, b"[:", "a");
            let (h, m, s) = f.hms;
            let ts = match f.shape {
                Shape::Bsd => format!(
                    "{} {:>2} {:02}:{:02}:{:02}",
                    MONTHS[usize::from(f.month % 12)],
                    f.day % 31 + 1,
                    h % 24,
                    m % 60,
                    s % 60
                ),
                _ => format!(
                    "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{}+01:00",
                    f.month % 12 + 1,
                    f.day % 28 + 1,
                    h % 24,
                    m % 60,
                    s % 60,
                    f.pid.unwrap_or(0)
                ),
            };
            msg.extend_from_slice(ts.as_bytes());
            msg.push(b' ');
            msg.extend_from_slice(&host);
            msg.push(b' ');
            msg.extend_from_slice(&app);
            match f.pid {
                Some(pid) => msg.extend_from_slice(format!("[{pid}]: ").as_bytes()),
                None => msg.extend_from_slice(b": "),
            }
        }
    }
    msg.extend_from_slice(f.rest);
    check_raw(&msg);
    assert_eq!(
        parse(&msg),
        Header {
            hostname: Some(&host),
            app_name: Some(&app),
        },
        "{:?}",
        String::from_utf8_lossy(&msg)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    if kind % 2 == 0 {
        check_raw(rest);
    } else if let Ok(f) = Fields::arbitrary(&mut Unstructured::new(rest)) {
        check_built(f);
    }
});
