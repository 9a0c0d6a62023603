//! Who may do what on the admin endpoint: roles from `[[admin.role]]`, each
//! with the rights it grants (`allow`) and the callers it is for (`who`).
//! A caller is anonymous, or shows a client certificate (verified by the
//! TLS layer against `[admin.tls]`), or a bearer token (`Authorization:
//! Bearer ...`), which the config holds only as its SHA-256. Pure: the
//! decision for a caller and a right is unit-tested and fuzzed.
//!
//! No role: anonymous may read `/metrics`, `/healthz` and `/readyz`, as
//! before roles existed, and nothing else.

use sha2::{Digest, Sha256};

use crate::config::AdminRoleConfig;
use crate::tls::allow::Rule;
use crate::tls::identity::PeerCert;

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Right {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`, `/readyz`.
    Health,
    /// `GET /status`.
    Status,
    /// `POST /reload`.
    Reload,
    /// `GET /journal/...`: the audit trail itself.
    Journal,
}

impl Right {
    pub fn parse(s: &str) -> Option<Right> {
        Some(match s {
            "metrics" => Right::Metrics,
            "health" => Right::Health,
            "status" => Right::Status,
            "reload" => Right::Reload,
            "journal" => Right::Journal,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Right::Metrics => "metrics",
            Right::Health => "health",
            Right::Status => "status",
            Right::Reload => "reload",
            Right::Journal => "journal",
        }
    }
}

/// One `who` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// Anyone, with or without credentials.
    Anonymous,
    /// A client certificate: `cn:PATTERN`, `dns:PATTERN`, `sha256:FP`.
    Cert(Rule),
    /// A bearer token whose SHA-256 is this.
    Token([u8; 32]),
}

impl Who {
    pub fn parse(s: &str) -> Result<Who, String> {
        if s == "anonymous" {
            return Ok(Who::Anonymous);
        }
        if let Some(hex) = s.strip_prefix("token-sha256:") {
            return parse_hex32(hex).map(Who::Token).ok_or_else(|| {
                format!("{s:?}: token-sha256: takes 64 hex digits (the SHA-256 of the token)")
            });
        }
        Rule::parse(s)
            .map(Who::Cert)
            .map_err(|e| format!("{e}; or anonymous, or token-sha256:HEX"))
    }
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.trim();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    pub name: String,
    pub allow: Vec<Right>,
    pub who: Vec<Who>,
}

/// The roles in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles(Vec<Role>);

/// Who is asking.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The verified client certificate, over TLS.
    pub cert: Option<PeerCert>,
    /// The SHA-256 of the bearer token presented, if any.
    pub token: Option<[u8; 32]>,
}

impl Caller {
    /// The SHA-256 of an `Authorization` header's bearer token.
    pub fn token_of(header: &[u8]) -> Option<[u8; 32]> {
        // The scheme is case-insensitive (RFC 7235).
        let sp = header.iter().position(|&b| b == b' ')?;
        if !header[..sp].eq_ignore_ascii_case(b"bearer") {
            return None;
        }
        let token = header[sp + 1..].trim_ascii();
        (!token.is_empty()).then(|| Sha256::digest(token).into())
    }
}

/// The answer for a caller and a right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed through `role`, as `who` (how the caller is named in logs
    /// and ADMIN records).
    Allowed { role: String, who: String },
    /// 401: no credentials a role accepts for this (none shown, or a
    /// token no role knows).
    Unauthenticated { who: String },
    /// 403: known, but no role of theirs grants this.
    Forbidden { who: String },
}

impl Decision {
    pub fn status(&self) -> u16 {
        match self {
            Decision::Allowed { .. } => 200,
            Decision::Unauthenticated { .. } => 401,
            Decision::Forbidden { .. } => 403,
        }
    }

    pub fn who(&self) -> &str {
        match self {
            Decision::Allowed { who, .. }
            | Decision::Unauthenticated { who }
            | Decision::Forbidden { who } => who,
        }
    }
}

/// Tokens compared without an early exit (the digests are public in the
/// config, but a caller's timing should say nothing about them).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Roles {
    /// The configured roles, or every problem by key path. No role at all:
    /// the default (anonymous metrics and health).
    pub fn parse(roles: &[AdminRoleConfig]) -> Result<Roles, Vec<String>> {
        if roles.is_empty() {
            return Ok(Roles::default());
        }
        let mut errs = Vec::new();
        let mut out = Vec::new();
        for (i, r) in roles.iter().enumerate() {
            let at = format!("admin.role[{i}]");
            if r.name.is_empty() {
                errs.push(format!("{at}.name: empty"));
            }
            if roles[..i].iter().any(|o| o.name == r.name) {
                errs.push(format!("{at}.name: {:?} is used twice", r.name));
            }
            let mut allow = Vec::new();
            for (k, a) in r.allow.iter().enumerate() {
                match Right::parse(a) {
                    Some(x) => allow.push(x),
                    None => errs.push(format!(
                        "{at}.allow[{k}]: {a:?} is not one of metrics, health, status, reload, journal"
                    )),
                }
            }
            let mut who = Vec::new();
            for (k, w) in r.who.iter().enumerate() {
                match Who::parse(w) {
                    Ok(x) => who.push(x),
                    Err(e) => errs.push(format!("{at}.who[{k}]: {e}")),
                }
            }
            if who.is_empty() {
                errs.push(format!("{at}.who: names nobody"));
            }
            out.push(Role {
                name: r.name.clone(),
                allow,
                who,
            });
        }
        if errs.is_empty() {
            Ok(Roles(out))
        } else {
            Err(errs)
        }
    }

    /// Rights beyond metrics and health that anonymous callers get (to be
    /// warned about at start).
    pub fn anonymous_privileges(&self) -> Vec<(&str, Right)> {
        self.0
            .iter()
            .filter(|r| r.who.contains(&Who::Anonymous))
            .flat_map(|r| {
                r.allow
                    .iter()
                    .filter(|a| !matches!(a, Right::Metrics | Right::Health))
                    .map(move |a| (r.name.as_str(), *a))
            })
            .collect()
    }

    /// Does any `who` need a client certificate?
    pub fn uses_certificates(&self) -> bool {
        self.0
            .iter()
            .flat_map(|r| &r.who)
            .any(|w| matches!(w, Who::Cert(_)))
    }

    /// The decision for `caller` asking for `right`.
    pub fn decide(&self, caller: &Caller, right: Right) -> Decision {
        let token_known = caller.token.is_some_and(|t| {
            self.0
                .iter()
                .flat_map(|r| &r.who)
                .any(|w| matches!(w, Who::Token(k) if same(k, &t)))
        });
        let who = describe(caller, token_known);
        // A token no role knows is refused outright: a typo or a revoked
        // token must not fall back to what anonymous may do.
        if caller.token.is_some() && !token_known {
            return Decision::Unauthenticated { who };
        }
        let names = |w: &Who| match w {
            Who::Anonymous => true,
            Who::Cert(rule) => caller.cert.as_ref().is_some_and(|c| rule.admits(c)),
            Who::Token(k) => caller.token.is_some_and(|t| same(k, &t)),
        };
        if let Some(role) = self
            .0
            .iter()
            .find(|r| r.allow.contains(&right) && r.who.iter().any(names))
        {
            return Decision::Allowed {
                role: role.name.clone(),
                who,
            };
        }
        if caller.cert.is_none() && !token_known {
            Decision::Unauthenticated { who }
        } else {
            Decision::Forbidden { who }
        }
    }
}

impl Default for Roles {
    fn default() -> Roles {
        Roles(vec![Role {
            name: "monitor".into(),
            allow: vec![Right::Metrics, Right::Health],
            who: vec![Who::Anonymous],
        }])
    }
}

/// How a caller is named: the certificate (subject and fingerprint), the
/// token (its digest's first 8 bytes), or anonymous.
fn describe(caller: &Caller, token_known: bool) -> String {
    let mut parts = Vec::new();
    if let Some(c) = &caller.cert {
        parts.push(format!("cert {} {}", c.subject, c.sha256));
    }
    if let Some(t) = &caller.token {
        let short: String = t[..8].iter().map(|b| format!("{b:02x}")).collect();
        parts.push(format!(
            "token-sha256:{short}..{}",
            if token_known { "" } else { " (unknown)" }
        ));
    }
    if parts.is_empty() {
        "anonymous".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::allow::Fingerprint;
    use crate::tls::identity::San;

    fn role(name: &str, allow: &[&str], who: &[&str]) -> AdminRoleConfig {
        AdminRoleConfig {
            name: name.into(),
            allow: allow.iter().map(|s| s.to_string()).collect(),
            who: who.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn cert(cn: &str, dns: &[&str]) -> PeerCert {
        PeerCert {
            sha256: Fingerprint([9; 32]),
            subject: format!("CN={cn}"),
            common_names: vec![cn.into()],
            sans: dns.iter().map(|d| San::Dns(d.to_string())).collect(),
            not_before: 0,
            not_after: i64::MAX,
        }
    }

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn each_role_gets_what_it_allows_and_nothing_else() {
        let op_token: [u8; 32] = Sha256::digest(b"op-secret").into();
        let roles = Roles::parse(&[
            role("monitor", &["metrics", "health"], &["anonymous"]),
            role(
                "operator",
                &["metrics", "health", "reload", "status"],
                &["cn:sre-*", &format!("token-sha256:{}", hex(op_token))],
            ),
            role(
                "auditor",
                &["metrics", "health", "journal"],
                &["dns:auditor.example.com"],
            ),
        ])
        .unwrap();
        let anon = Caller::default();
        let sre = Caller {
            cert: Some(cert("sre-alice", &[])),
            token: None,
        };
        let auditor = Caller {
            cert: Some(cert("x", &["auditor.example.com"])),
            token: None,
        };
        let op = Caller {
            cert: None,
            token: Caller::token_of(b"Bearer op-secret"),
        };
        let wrong = Caller {
            cert: None,
            token: Caller::token_of(b"Bearer nope"),
        };
        use Right::*;
        for (caller, right, want) in [
            (&anon, Metrics, 200),
            (&anon, Health, 200),
            (&anon, Status, 401),
            (&anon, Reload, 401),
            (&anon, Journal, 401),
            (&sre, Status, 200),
            (&sre, Reload, 200),
            (&sre, Journal, 403),
            (&op, Reload, 200),
            (&op, Journal, 403),
            (&auditor, Journal, 200),
            (&auditor, Reload, 403),
            (&auditor, Metrics, 200),
            (&wrong, Metrics, 401),
            (&wrong, Status, 401),
        ] {
            let d = roles.decide(caller, right);
            assert_eq!(d.status(), want, "{caller:?} {right:?}: {d:?}");
        }
        match roles.decide(&op, Reload) {
            Decision::Allowed { role, who } => {
                assert_eq!(role, "operator");
                assert!(who.starts_with("token-sha256:"), "{who}");
            }
            d => panic!("{d:?}"),
        }
        match roles.decide(&sre, Status) {
            Decision::Allowed { who, .. } => assert!(who.contains("CN=sre-alice"), "{who}"),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn no_role_is_anonymous_metrics_and_health_only() {
        let roles = Roles::parse(&[]).unwrap();
        let anon = Caller::default();
        assert_eq!(roles.decide(&anon, Right::Metrics).status(), 200);
        assert_eq!(roles.decide(&anon, Right::Health).status(), 200);
        assert_eq!(roles.decide(&anon, Right::Status).status(), 401);
        assert!(!roles.uses_certificates());
    }

    #[test]
    fn bad_roles_are_refused_by_key_path() {
        let errs = Roles::parse(&[
            role("a", &["metrics", "everything"], &["anonymous"]),
            role("a", &["status"], &["token-sha256:abc", "cn:", "who?"]),
            role("b", &["status"], &[]),
        ])
        .unwrap_err();
        let all = errs.join("\n");
        for want in [
            "admin.role[0].allow[1]: \"everything\"",
            "admin.role[1].name: \"a\" is used twice",
            "admin.role[1].who[0]",
            "admin.role[1].who[1]",
            "admin.role[1].who[2]",
            "admin.role[2].who: names nobody",
        ] {
            assert!(all.contains(want), "{want} not in:\n{all}");
        }
    }

    #[test]
    fn bearer_tokens_are_hashed_and_empty_ones_ignored() {
        let want: [u8; 32] = Sha256::digest(b"t0k").into();
        assert_eq!(Caller::token_of(b"Bearer t0k"), Some(want));
        assert_eq!(Caller::token_of(b"Bearer  t0k "), Some(want));
        assert_eq!(Caller::token_of(b"BEARER t0k"), Some(want));
        assert_eq!(Caller::token_of(b"Bearer "), None);
        assert_eq!(Caller::token_of(b"Basic dXNlcjpwdw=="), None);
        assert_eq!(parse_hex32(&hex(want)), Some(want));
        assert_eq!(parse_hex32("zz"), None);
    }
}
