//! Which peer certificates are let in: certificate pins (`sha256:..`) and
//! name patterns (`dns:..`, `cn:..`), as RFC 5425 section 5 asks of a
//! syslog-over-TLS receiver. Pure: parsed from `allow`/`pin` strings by
//! config validation and [`super::load`], matched by the verifiers in
//! [`super::verify`] against a [`PeerCert`].

use std::fmt;

use super::identity::PeerCert;

/// A certificate's SHA-256 over its DER bytes, written the way `allow`,
/// `pin` and `auditlb fingerprint` take it: `sha256:AB:CD:..`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(der: &[u8]) -> Fingerprint {
        use sha2::Digest;
        Fingerprint(sha2::Sha256::digest(der).into())
    }

    /// `sha256:` (any case) then 64 hex digits, with or without colons
    /// between the bytes (rsyslog writes `SHA256:AB:..`, openssl
    /// `sha256 Fingerprint=AB:..`).
    pub fn parse(s: &str) -> Result<Fingerprint, String> {
        let Some(hex) = s
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("sha256:"))
            .map(|_| &s[7..])
        else {
            return Err(format!(
                "{s:?} is not a fingerprint (sha256:AB:CD:.., from `auditlb fingerprint FILE`)"
            ));
        };
        let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
        let bad = || format!("{s:?}: a SHA-256 fingerprint is 32 bytes of hex");
        if digits.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16).ok_or_else(bad)?;
            let lo = (pair[1] as char).to_digit(16).ok_or_else(bad)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One `allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Exactly this certificate.
    Pin(Fingerprint),
    /// A subjectAltName DNS name (or, without any, a subject CN) matching
    /// the pattern; `*` matches within one label.
    Dns(String),
    /// A subject CN matching the pattern; `*` matches any text.
    Cn(String),
}

impl Rule {
    pub fn parse(s: &str) -> Result<Rule, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("{s:?}: expected sha256:FINGERPRINT, dns:PATTERN or cn:PATTERN")
        })?;
        match kind.to_ascii_lowercase().as_str() {
            "sha256" => Fingerprint::parse(s).map(Rule::Pin),
            "dns" | "cn" if rest.is_empty() => Err(format!("{s:?}: empty pattern")),
            "dns" if rest.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') => {
                Err(format!("{s:?}: not a DNS name pattern"))
            }
            "dns" => Ok(Rule::Dns(rest.to_ascii_lowercase())),
            "cn" => Ok(Rule::Cn(rest.to_owned())),
            _ => Err(format!(
                "{s:?}: unknown kind {kind:?} (sha256:, dns: or cn:)"
            )),
        }
    }

    /// Does this rule name this (already verified) certificate?
    pub fn admits(&self, peer: &PeerCert) -> bool {
        match self {
            Rule::Pin(f) => peer.sha256 == *f,
            Rule::Dns(p) => {
                let dns: Vec<&str> = peer.dns_names().collect();
                if dns.is_empty() {
                    peer.common_names.iter().any(|cn| glob(p, cn, true))
                } else {
                    dns.iter().any(|d| glob(p, d, true))
                }
            }
            Rule::Cn(p) => peer.common_names.iter().any(|cn| glob(p, cn, false)),
        }
    }
}

/// A parsed `allow` list. Empty admits everyone the CA admits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    rules: Vec<Rule>,
}

impl Allow {
    /// Every entry parsed, or the problems, one per bad entry, each
    /// prefixed with `at[i]`.
    pub fn parse(at: &str, entries: &[String]) -> Result<Allow, Vec<String>> {
        let mut rules = Vec::new();
        let mut errs = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match Rule::parse(e) {
                Ok(r) => rules.push(r),
                Err(m) => errs.push(format!("{at}[{i}]: {m}")),
            }
        }
        if errs.is_empty() {
            Ok(Allow { rules })
        } else {
            Err(errs)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Is this exact certificate pinned?
    pub fn pins(&self, f: &Fingerprint) -> bool {
        self.rules.iter().any(|r| r == &Rule::Pin(*f))
    }

    pub fn has_pins(&self) -> bool {
        self.rules.iter().any(|r| matches!(r, Rule::Pin(_)))
    }

    /// Does any rule admit this (already verified) certificate? An empty
    /// list admits everything.
    pub fn admits(&self, peer: &PeerCert) -> bool {
        self.rules.is_empty() || self.rules.iter().any(|r| r.admits(peer))
    }
}

/// `*` wildcard matching, ASCII case-insensitive. With `label`, `*` does
/// not match a `.` (DNS: `*.example.com` matches `a.example.com`, not
/// `a.b.example.com`). Linear backtracking on the last `*`: O(len^2) at
/// worst, no recursion.
fn glob(pattern: &str, text: &str, label: bool) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` take one more byte, unless that byte is a
            // label separator it may not cross.
            if label && t[st] == b'.' {
                return false;
            }
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::San;

    fn peer(cn: &[&str], dns: &[&str]) -> PeerCert {
        PeerCert {
            sha256: Fingerprint([7; 32]),
            subject: String::new(),
            common_names: cn.iter().map(|s| s.to_string()).collect(),
            sans: dns.iter().map(|d| San::Dns(d.to_string())).collect(),
            not_before: 0,
            not_after: 0,
        }
    }

    #[test]
    fn fingerprints_parse_in_every_common_spelling_and_print_one_way() {
        let f = Fingerprint([0xab; 32]);
        let text = f.to_string();
        assert!(text.starts_with("sha256:AB:AB:"));
        assert_eq!(text.len(), 7 + 32 * 3 - 1);
        assert_eq!(Fingerprint::parse(&text), Ok(f));
        assert_eq!(Fingerprint::parse(&text.to_lowercase()), Ok(f));
        assert_eq!(
            Fingerprint::parse(&format!("SHA256:{}", "ab".repeat(32))),
            Ok(f)
        );
        for bad in [
            "sha256:AB",
            "sha1:AB",
            "sha256:",
            &format!("sha256:{}", "zz".repeat(32)),
            "",
            "é",
        ] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_parse_with_clear_errors() {
        assert_eq!(
            Rule::parse("dns:*.Prod.example.com"),
            Ok(Rule::Dns("*.prod.example.com".into()))
        );
        assert_eq!(Rule::parse("cn:web-*"), Ok(Rule::Cn("web-*".into())));
        assert!(matches!(
            Rule::parse(&format!("sha256:{}", "01".repeat(32))),
            Ok(Rule::Pin(_))
        ));
        let e = Allow::parse(
            "listener[0].tls.allow",
            &["ip:1.2.3.4".into(), "dns:".into(), "web".into()],
        )
        .unwrap_err();
        assert_eq!(e.len(), 3);
        assert!(
            e[0].starts_with("listener[0].tls.allow[0]: ") && e[0].contains("unknown kind"),
            "{e:?}"
        );
        assert!(e[1].contains("empty pattern"));
        assert!(e[2].contains("expected sha256:"));
    }

    #[test]
    fn dns_patterns_match_within_one_label() {
        assert!(glob("*.prod.example.com", "a.prod.example.com", true));
        assert!(glob("*.prod.example.com", "A.PROD.example.COM", true));
        assert!(!glob("*.prod.example.com", "a.b.prod.example.com", true));
        assert!(!glob("*.prod.example.com", "prod.example.com", true));
        assert!(glob("web-*.example.com", "web-12.example.com", true));
        assert!(!glob("web-*.example.com", "web-1.x.example.com", true));
        assert!(glob("exact.example.com", "exact.example.com", true));
        assert!(!glob("exact.example.com", "exact.example.com.evil", true));
        // Without labels a star crosses dots.
        assert!(glob("web-*", "web-1.x", false));
        assert!(glob("*", "", false));
        assert!(!glob("a*b*c", "a-b-d", false));
        // A long adversarial name finishes (no exponential backtracking).
        let long = "a".repeat(5000);
        assert!(!glob("*a*a*a*a*a*b", &long, false));
    }

    #[test]
    fn allow_admits_by_san_then_cn_and_pins_exactly() {
        let a = Allow::parse("a", &["dns:*.prod.example.com".into(), "cn:web-*".into()]).unwrap();
        assert!(a.admits(&peer(&["x"], &["h1.prod.example.com"])));
        assert!(a.admits(&peer(&["web-3"], &["h1.dev.example.com"])));
        // The DNS rule looks at the CN only when there is no DNS SAN.
        assert!(a.admits(&peer(&["h1.prod.example.com"], &[])));
        assert!(!a.admits(&peer(&["h1.prod.example.com"], &["other.example.com"])));
        assert!(!a.admits(&peer(&["db-1"], &["db.dev.example.com"])));
        let pin = Allow::parse("a", &[Fingerprint([7; 32]).to_string()]).unwrap();
        assert!(pin.admits(&peer(&[], &[])) && pin.pins(&Fingerprint([7; 32])));
        assert!(!pin.pins(&Fingerprint([8; 32])));
        assert!(Allow::default().admits(&peer(&[], &[])));
    }
}
