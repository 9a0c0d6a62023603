//! Segment bytes as an intruder or a failing disk could leave them, read by
//! everything that reads a journal: the record walk, `verify` (with and
//! without a key), `cat` (raw and JSON lines), a pool's tail and the
//! delivery-cursor scan. Never panics; and whatever `verify` passes,
//! start-up recovery must not call tampering.
#![no_main]

use auditlb::journal::{
    cat::{cat, Format},
    delivery,
    format::{parse_record, HEADER_LEN},
    reader::Records,
    recover,
    tail::PoolTail,
    verify::verify,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    for (at, r) in Records::new(bytes).map_while(Result::ok) {
        assert!(at >= HEADER_LEN.min(bytes.len()));
        assert_eq!(parse_record(r.raw).map(|p| p.raw.len()).ok(), Some(r.raw.len()));
        let _ = r.meta_value(1);
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("00000000000000000001.seg");
    std::fs::write(&path, bytes).expect("writing the segment");
    let rep = verify(dir.path(), None, None).expect("verify reads a regular file");
    let _ = verify(dir.path(), None, Some(&[7; 32]));
    let _ = rep.text();
    let _ = rep.json();
    let mut out = Vec::new();
    let _ = cat(dir.path(), None, None, Format::Raw, &mut out);
    let _ = cat(dir.path(), None, None, Format::Jsonl, &mut out);
    let mut tail = PoolTail::new(dir.path().to_owned(), "p".into(), 1);
    for _ in 0..4 {
        if tail.read(u64::MAX, 64).is_err() {
            break;
        }
    }
    let _ = delivery::resume(dir.path(), &["p".into()], u64::MAX);
    if rep.failure.is_none() {
        let plan = recover::plan(Some((1, bytes)), None);
        assert!(
            plan.alarms.is_empty(),
            "verify passed what recovery calls tampering: {:?}",
            plan.alarms
        );
    }
});
