//! `allow` entries and fingerprints (`auditlb::tls::{Allow, Fingerprint}`)
//! over arbitrary text: lines alternate between rules and names. Never
//! panics, and the matching keeps its promises: a `dns:` pattern never
//! admits a name with another number of labels (`*` stays within one),
//! a pattern without `*` admits only its own text (ASCII case aside), and
//! a fingerprint prints back to what parses to it.
#![no_main]

use auditlb::tls::{Allow, Fingerprint, PeerCert, San};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let lines: Vec<&str> = text.lines().collect();
    let rules: Vec<String> = lines.iter().step_by(2).map(|s| s.to_string()).collect();
    let names: Vec<&str> = lines.iter().skip(1).step_by(2).copied().collect();
    for r in &rules {
        if let Ok(f) = Fingerprint::parse(r) {
            assert_eq!(Fingerprint::parse(&f.to_string()), Ok(f));
        }
    }
    let Ok(allow) = Allow::parse("allow", &rules) else {
        return;
    };
    for name in names {
        let as_dns = PeerCert {
            sha256: Fingerprint([0; 32]),
            subject: String::new(),
            common_names: Vec::new(),
            sans: vec![San::Dns(name.to_owned())],
            not_before: 0,
            not_after: 0,
        };
        let as_cn = PeerCert {
            sans: Vec::new(),
            common_names: vec![name.to_owned()],
            ..as_dns.clone()
        };
        for r in &rules {
            let one = Allow::parse("allow", std::slice::from_ref(r)).expect("parsed above as part of the list");
            let (kind, pattern) = r.split_once(':').expect("a parsed rule has a kind");
            let kind = kind.to_ascii_lowercase();
            if kind == "dns" && one.admits(&as_dns) {
                assert_eq!(
                    pattern.matches('.').count(),
                    name.matches('.').count(),
                    "{r:?} admitted {name:?} across labels"
                );
            }
            if !pattern.contains('*') {
                let own = pattern.eq_ignore_ascii_case(name);
                if kind == "dns" {
                    assert_eq!(one.admits(&as_dns), own, "{r:?} vs {name:?}");
                }
                if kind == "cn" {
                    assert_eq!(one.admits(&as_cn), own, "{r:?} vs {name:?}");
                }
            }
        }
        // The list admits what one of its rules admits.
        let any = rules
            .iter()
            .any(|r| Allow::parse("allow", std::slice::from_ref(r)).unwrap().admits(&as_cn));
        assert_eq!(allow.admits(&as_cn), any || rules.is_empty());
    }
});
