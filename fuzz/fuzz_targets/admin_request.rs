//! The admin endpoint's pure decisions (`src/admin`): routing a method and
//! path, reading a query string, reading a bearer token, parsing `who`
//! entries, and deciding a caller's request under roles built from the
//! input. Properties:
//! - nothing panics;
//! - a route is served only to its method (POST /reload, GET/HEAD the
//!   rest); anything else is a 404 or 405;
//! - a caller with a token no role knows is never allowed anything;
//! - anonymous callers get exactly what roles naming `anonymous` allow.
#![no_main]

use auditlb::admin::auth::{Caller, Decision, Right, Roles, Who};
use auditlb::admin::{query, route, Route};
use auditlb::config::AdminRoleConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or("");
    let path = parts.next().unwrap_or("");
    let header = parts.next().unwrap_or("");
    let who_line = parts.next().unwrap_or("");

    match route(method, path) {
        Ok(r) => {
            let post = r == Route::Reload;
            assert_eq!(method == "POST", post, "{method} {path}");
        }
        Err(code) => assert!(code == 404 || code == 405),
    }
    let _ = query(path);
    let token = Caller::token_of(header.as_bytes());
    let who: Vec<String> = who_line.split(' ').map(str::to_owned).collect();
    let parsed: Vec<_> = who.iter().map(|w| Who::parse(w)).collect();
    let roles = Roles::parse(&[AdminRoleConfig {
        name: "r".into(),
        allow: vec!["status".into(), "journal".into()],
        who: who.clone(),
    }]);
    let Ok(roles) = roles else {
        assert!(parsed.iter().any(Result::is_err) || who.is_empty());
        return;
    };
    let anyone = parsed.iter().any(|w| matches!(w, Ok(Who::Anonymous)));
    let anon = Caller::default();
    for right in [Right::Metrics, Right::Status, Right::Reload, Right::Journal] {
        let d = roles.decide(&anon, right);
        let want = anyone && matches!(right, Right::Status | Right::Journal);
        assert_eq!(matches!(d, Decision::Allowed { .. }), want, "{d:?}");
        if let Some(t) = token {
            let c = Caller {
                cert: None,
                token: Some(t),
            };
            let known = parsed
                .iter()
                .any(|w| matches!(w, Ok(Who::Token(k)) if *k == t));
            let d = roles.decide(&c, right);
            if !known {
                assert_eq!(d.status(), 401, "{d:?}");
            }
        }
    }
});
