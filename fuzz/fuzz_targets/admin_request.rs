//! The admin endpoint's request head reading and routing (`src/admin.rs`:
//! `find_head_end`, `parse_request`) over arbitrary bytes. Properties:
//! - the head ends just past the first blank line (CRLF CRLF);
//! - only the request line counts: what follows its CR changes nothing;
//! - a route is served only to `GET <that path>[?query] HTTP/1.x`;
//! - a refusal is a 4xx.
#![no_main]

use auditlb::admin::{find_head_end, parse_request, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(end) = find_head_end(data) {
        assert!(end >= 4 && end <= data.len());
        assert_eq!(&data[end - 4..end], b"\r\n\r\n");
        assert!(
            !data[..end - 1].windows(4).any(|w| w == b"\r\n\r\n"),
            "not the first blank line"
        );
    }
    let got = parse_request(data);
    assert_eq!(got, parse_request(data), "not deterministic");
    if let Some(cr) = data.iter().position(|&b| b == b'\r') {
        assert_eq!(
            got,
            parse_request(&data[..cr]),
            "bytes after the request line count"
        );
    }
    match got {
        Ok(route) => {
            let path: &[u8] = match route {
                Route::Metrics => b"/metrics",
                Route::Healthz => b"/healthz",
                Route::Readyz => b"/readyz",
            };
            let rest = data
                .strip_prefix(b"GET ")
                .and_then(|r| r.strip_prefix(path))
                .unwrap_or_else(|| panic!("{route:?} served to {data:?}"));
            assert!(
                matches!(rest.first(), Some(b' ' | b'?')),
                "{route:?} for {data:?}"
            );
        }
        Err(why) => assert!(matches!(why.status(), 400 | 404 | 405)),
    }
});
