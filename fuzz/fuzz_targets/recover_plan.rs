//! Start-up recovery's plan over arbitrary newest-segment bytes and anchors
//! text. Never panics, and the plan keeps its promises: a torn cut leaves
//! an intact open segment; a segment it closes parses to its end; the
//! journal never goes on at a seq a damaged segment holds.
#![no_main]

use auditlb::journal::{
    anchors::Anchors,
    format::HEADER_LEN,
    reader::Records,
    recover::{plan, Action},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // [anchors length u8][anchors text][name seq u8][segment bytes]
    let Some((&alen, rest)) = input.split_first() else {
        return;
    };
    let (atext, rest) = rest.split_at((alen as usize).min(rest.len()));
    let Some((&name, bytes)) = rest.split_first() else {
        return;
    };
    let name_seq = u64::from(name % 4) + 1;
    let anchors = Anchors::parse(&String::from_utf8_lossy(atext));
    let with = (alen > 0).then_some(&anchors);
    let p = plan(Some((name_seq, bytes)), with);
    let _ = plan(None, with);
    match &p.action {
        Action::CutTorn { at, .. } => {
            assert!(*at > HEADER_LEN && *at < bytes.len(), "cut at {at} of {}", bytes.len());
            let again = plan(Some((name_seq, &bytes[..*at])), None);
            assert_eq!(again.action, Action::Close, "after the cut: {again:?}");
        }
        Action::Close => {
            assert!(Records::new(bytes).all(|s| s.is_ok()), "closing a segment that does not parse");
        }
        Action::LeaveDamaged => {
            assert!(p.resume.next_seq > name_seq);
            assert!(!p.alarms.is_empty(), "damage without an alarm");
        }
        Action::Quarantine | Action::QuarantineWithBefore => {
            assert!(!p.alarms.is_empty(), "quarantine without an alarm");
        }
        Action::Nothing | Action::RemoveHalfCreated { .. } => {}
    }
});
