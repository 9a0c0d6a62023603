//! Retention and the archive, as they run in production: the auditlb
//! binary with small segments that roll, real backends, a real S3 server
//! (moto) with Object Lock, a crash between PRUNE and the unlinks, and an
//! intruder who edits segments, anchors and archived objects.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Bytes of the journal's segment files.
fn journal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn metric(admin: std::net::SocketAddr, name: &str) -> f64 {
    scraped(admin, name).unwrap_or(0.0)
}

fn wait_metric(admin: std::net::SocketAddr, name: &str, at_least: f64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while metric(admin, name) < at_least {
        assert!(
            Instant::now() < deadline,
            "{name} stayed below {at_least} for {secs}s (is {})",
            metric(admin, name)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// auditlb (the binary) over one backend, with anchors, an admin endpoint,
/// extra `[journal]` lines and extra environment: its config file, process,
/// log, listener and admin addresses.
fn start(
    dir: &Path,
    backend: std::net::SocketAddr,
    journal: &str,
    env: &[(String, String)],
) -> (
    PathBuf,
    Proc,
    Log,
    std::net::SocketAddr,
    std::net::SocketAddr,
) {
    let cfg = TestConfig::at(dir)
        .backend_addrs(&[backend])
        .anchors()
        .admin("127.0.0.1:0")
        .journal(journal)
        .write();
    let (lb, log) = spawn_auditlb_env(&cfg, env);
    let addr = log.wait_addr("listening", None);
    let admin = log.wait_addr("admin endpoint", None);
    (cfg, lb, log, addr, admin)
}

/// A backend logging to `dir/sink.log`: its process, address and log.
fn sink_in(dir: &Path) -> (Proc, std::net::SocketAddr, PathBuf) {
    let log = dir.join("sink.log");
    let (p, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    (p, addr, log)
}

/// Stops auditlb cleanly, then `verify` with its anchors: intact, with a
/// pruned start.
fn stop_and_verify_pruned(lb: &mut Proc, dir: &Path) {
    stop(lb);
    let (code, out) = verify_cli(&dir.join("journal"), &dir.join("anchors.log"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pruned"), "{out}");
}

/// SIGTERM and wait for a clean exit.
fn stop(p: &mut Proc) {
    p.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            assert!(s.success(), "auditlb exited with {s}");
            return;
        }
        assert!(Instant::now() < deadline, "auditlb did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The backend is down while the journal grows past `max-bytes`: nothing a
/// pool has not settled is deleted. Once it is up and everything is
/// delivered, the oldest segments go, each batch after a PRUNE record, and
/// `verify` accepts exactly that gap: not a kept segment deleted, not a
/// PRUNE anchor line removed.
#[test]
fn retention_keeps_undelivered_segments_and_verify_accepts_only_the_pruned_gap() {
    let dir = scratch_dir("retention-bytes");
    let backend = free_addr();
    let (_cfg, mut lb, _log, addr, admin) = start(&dir, backend, "segment-size = \"64KiB\"\ndisk-budget = \"64MiB\"\n[journal.retention]\nmax-bytes = \"512KiB\"", &[]);
    let journal = dir.join("journal");
    gen_ids(addr, 4, 20_000, &[]);
    wait_metric(admin, "auditlb_journal_records_total", 20_000.0, 30);
    // Closed segments are verified, but nothing is settled: nothing goes.
    let seg_count = segments(&journal).len() as f64;
    wait_metric(admin, "auditlb_journal_verified_seq", 20_000.0, 30);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(admin, "auditlb_journal_pruned_segments_total"), 0.0);
    assert!(
        journal_bytes(&journal) > 2 << 20,
        "{}",
        journal_bytes(&journal)
    );
    assert!(seg_count > 40.0);

    // The backend comes up: everything is delivered, then pruned down.
    let sink_log = dir.join("sink.log");
    let (_sink, _) = spawn_sink(&backend.to_string(), "octet", &sink_log, &[]);
    wait_all_ids(&[&sink_log], 20_000, 60);
    wait_metric(admin, "auditlb_journal_pruned_segments_total", 20.0, 30);
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_bytes(&journal) > (512 + 2 * 64) << 10 {
        assert!(
            Instant::now() < deadline,
            "journal still {} bytes",
            journal_bytes(&journal)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Traffic after the prune, with more rolls and prunes.
    gen_ids(addr, 2, 5_000, &["--id-base", "20000"]);
    wait_all_ids(&[&sink_log], 25_000, 60);
    stop(&mut lb);

    let anchors = dir.join("anchors.log");
    let (code, out) = verify_cli(&journal, &anchors);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pruned (covered by a PRUNE record)"), "{out}");
    assert!(!segments(&journal)[0].ends_with("00000000000000000001.seg"));
    // cat reads what is left, and shows the PRUNE records.
    let (code, jsonl, err) = auditlb_cli(
        &[
            "cat",
            "--journal",
            journal.to_str().unwrap(),
            "--format",
            "jsonl",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        jsonl
            .lines()
            .any(|l| l.contains("\"type\":\"PRUNE\"") && l.contains("\"deleted\":[{")),
        "no PRUNE in cat"
    );
    let anchor_text = std::fs::read_to_string(&anchors).unwrap();
    assert!(anchor_text.lines().any(|l| l.starts_with("p1 ")));

    // An intruder deletes the oldest kept segment too: not covered.
    let t1 = dir.join("t1");
    copy_dir(&journal, &t1);
    std::fs::remove_file(&segments(&t1)[0]).unwrap();
    let (code, out) = verify_cli(&t1, &anchors);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SEGMENT_MISSING"), "{out}");

    // ... or removes the last PRUNE line from the anchors file.
    let t2 = dir.join("t2-anchors.log");
    let mut lines: Vec<&str> = anchor_text.lines().collect();
    let last_p1 = lines.iter().rposition(|l| l.starts_with("p1 ")).unwrap();
    lines.remove(last_p1);
    std::fs::write(&t2, lines.join("\n") + "\n").unwrap();
    let (code, out) = verify_cli(&journal, &t2);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SEGMENT_MISSING"), "{out}");

    // ... or deletes a kept segment in the middle.
    let t3 = dir.join("t3");
    copy_dir(&journal, &t3);
    let segs = segments(&t3);
    std::fs::remove_file(&segs[segs.len() / 2]).unwrap();
    let (code, out) = verify_cli(&t3, &anchors);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SEGMENT_MISSING"), "{out}");
}

/// auditlb dies (as a SIGKILL would) after a PRUNE record is sealed and
/// anchored and before any segment is unlinked. The next start finishes
/// the prune, traffic goes on, and the journal verifies.
#[test]
fn a_crash_between_prune_and_unlink_is_finished_at_the_next_start() {
    crash_during_prune("prune-before-unlink");
}

/// The same with the crash after the first of several unlinks: while it is
/// stopped, the journal starts inside the PRUNE's range, which `verify`
/// accepts (not tampering), and the next start finishes the rest.
#[test]
fn a_crash_in_the_middle_of_the_unlinks_leaves_a_journal_that_verifies() {
    crash_during_prune("prune-mid-unlink");
}

fn crash_during_prune(failpoint: &str) {
    let dir = scratch_dir("retention-crash");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[backend])
        .anchors()
        .admin("127.0.0.1:0")
        .journal("segment-size = \"64KiB\"\n[journal.retention]\nmax-bytes = \"256KiB\"")
        .write();
    let journal = dir.join("journal");
    let fail = vec![("AUDITLB_FAILPOINT".to_owned(), failpoint.to_owned())];
    let (mut lb, log) = spawn_auditlb_env(&cfg, &fail);
    let addr = log.wait_addr("listening", None);
    gen_ids(addr, 2, 8_000, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = lb.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the failpoint never fired");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let marker = journal.join("prune.pending");
    let text = std::fs::read_to_string(&marker).expect("the prune marker survives the crash");
    let listed: Vec<PathBuf> = text.lines().skip(1).map(|n| journal.join(n)).collect();
    assert!(!listed.is_empty());
    if failpoint == "prune-mid-unlink" {
        assert!(!listed[0].exists() && listed[1..].iter().all(|p| p.exists()));
        // Stopped mid-prune: intact (at most its tail after the crash not
        // anchored), not tampered with.
        let (code, out) = verify_cli(&journal, &dir.join("anchors.log"));
        assert!(code == 0 || code == 2, "{out}");
        assert!(out.contains("pruned"), "{out}");
    } else {
        assert!(
            listed.iter().all(|p| p.exists()),
            "nothing was unlinked yet"
        );
    }

    let (mut lb, log) = spawn_auditlb_logged(&cfg);
    let addr = log.wait_addr("listening", None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while marker.exists() || listed.iter().any(|p| p.exists()) {
        assert!(
            Instant::now() < deadline,
            "the interrupted prune was not finished"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Finished from the marker's PRUNE record, not by a second PRUNE that
    // retention would write anyway.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log
        .lines()
        .iter()
        .any(|l| l.contains("finished the prune a stop interrupted"))
    {
        assert!(Instant::now() < deadline, "{:?}", log.lines());
        std::thread::sleep(Duration::from_millis(20));
    }
    gen_ids(addr, 2, 3_000, &["--id-base", "8000"]);
    wait_all_ids(&[&sink_log], 11_000, 60);
    stop_and_verify_pruned(&mut lb, &dir);
}

/// An intruder edits a closed segment while auditlb is stopped; start-up
/// recovery only reads the tail, but self-verification walks every closed
/// segment: the tamper alarm goes up, and retention deletes nothing.
#[test]
fn self_verification_catches_a_segment_edited_while_stopped_and_stops_retention() {
    let dir = scratch_dir("self-verify");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let journal = dir.join("journal");
    let (_cfg, mut lb, _log, addr, admin) = start(&dir, backend, "segment-size = \"64KiB\"", &[]);
    gen_ids(addr, 2, 6_000, &[]);
    wait_all_ids(&[&sink_log], 6_000, 60);
    wait_metric(admin, "auditlb_journal_verified_seq", 5_000.0, 30);
    assert_eq!(metric(admin, "auditlb_journal_tamper_alarm"), 0.0);
    stop(&mut lb);

    // One byte of a frame in an early segment.
    let victim = segments(&journal)[3].clone();
    let mut b = std::fs::read(&victim).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x20;
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    std::fs::write(&victim, &b).unwrap();
    let before = segments(&journal).len();

    // Now with retention that would delete it.
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[backend])
        .anchors()
        .admin("127.0.0.1:0")
        .journal("segment-size = \"64KiB\"\n[journal.retention]\nmax-bytes = \"128KiB\"\nkeep-undelivered = false")
        .write();
    let (mut lb, log) = spawn_auditlb_logged(&cfg);
    let admin = log.wait_addr("admin endpoint", None);
    wait_metric(admin, "auditlb_journal_self_verify_failures_total", 1.0, 30);
    assert_eq!(metric(admin, "auditlb_journal_tamper_alarm"), 1.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(metric(admin, "auditlb_journal_pruned_segments_total"), 0.0);
    assert!(
        segments(&journal).len() > before,
        "the evidence was deleted"
    );
    assert!(victim.exists());
    stop(&mut lb);
    let alarm = std::fs::read_to_string(journal.join("ALARM")).unwrap();
    assert!(alarm.contains("MODIFIED"), "{alarm}");
}

/// Two instances archive into one S3 bucket with Object Lock, prune down
/// to a small local window, and `verify --archive` checks both journals in
/// one run; an object changed in the bucket is caught, and `cat --archive`
/// reads the pruned frames back.
#[test]
fn two_instances_archive_to_s3_and_one_verify_checks_both() {
    let s3 = S3::start();
    s3.bucket_with_lock("audit");
    let env = s3.env();
    let dir = scratch_dir("archive-s3");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let mut lbs = Vec::new();
    for (i, name) in ["a", "b"].iter().enumerate() {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let cfg = TestConfig::at(&d)
            .backend_addrs(&[backend])
            .anchors()
            .admin("127.0.0.1:0")
            .journal("segment-size = \"64KiB\"\n[journal.archive]\nurl = \"s3://audit/lb/\"\nobject-lock-days = 1\n[journal.retention]\nmax-bytes = \"256KiB\"")
            .write();
        let (lb, log) = spawn_auditlb_env(&cfg, &env);
        let addr = log.wait_addr("listening", None);
        let admin = log.wait_addr("admin endpoint", None);
        gen_ids(addr, 2, 6_000, &["--id-base", &(i * 6_000).to_string()]);
        lbs.push((lb, admin, d));
    }
    wait_all_ids(&[&sink_log], 12_000, 60);
    for (_, admin, _) in &lbs {
        wait_metric(*admin, "auditlb_archive_segments_total", 10.0, 60);
        wait_metric(*admin, "auditlb_journal_pruned_segments_total", 5.0, 60);
        assert_eq!(metric(*admin, "auditlb_journal_tamper_alarm"), 0.0);
    }
    for (lb, admin, _) in &mut lbs {
        // Everything closed is archived (so instance a keeps archived
        // segments locally, under max-bytes, for the check below).
        let deadline = Instant::now() + Duration::from_secs(60);
        while metric(*admin, "auditlb_archive_lag_segments") > 0.0 {
            assert!(Instant::now() < deadline, "the archive did not catch up");
            std::thread::sleep(Duration::from_millis(100));
        }
        stop(lb);
    }
    let keys = s3.keys("audit", "lb/");
    assert!(keys.iter().any(|k| k.contains("/segments/")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("/anchors/")), "{keys:?}");
    // Object Lock holds: a locked version cannot be deleted.
    let seg_key = keys.iter().find(|k| k.contains("/segments/")).unwrap();
    let refused = s3.boto(&format!(
        "v = s3.list_object_versions(Bucket='audit', Prefix='{seg_key}')['Versions'][0]['VersionId']\ntry:\n    s3.delete_object(Bucket='audit', Key='{seg_key}', VersionId=v)\n    print('deleted')\nexcept Exception as e:\n    print('refused', e)"
    ));
    assert!(refused.starts_with("refused"), "{refused}");

    let url = "s3://audit/lb/";
    let (code, out, err) = auditlb_cli(&["verify", "--archive", url], &env);
    let journals: Vec<&str> = out.lines().filter(|l| l.starts_with("journal ")).collect();
    assert_eq!(journals.len(), 2, "{out}{err}");
    // The archive alone ends where the last archived segment ends.
    assert_eq!(code, 2, "{out}{err}");
    assert!(journals.iter().all(|l| l.contains("INTACT")), "{out}");
    // With instance a's local journal and anchors file, its tail (and its
    // last anchors, written after the custodian stopped) is covered too.
    let a_dir = lbs[0].2.join("journal");
    let (_, out_a, err) = auditlb_cli(
        &[
            "verify",
            "--archive",
            url,
            "--journal",
            a_dir.to_str().unwrap(),
            "--anchors",
            lbs[0].2.join("anchors.log").to_str().unwrap(),
        ],
        &env,
    );
    let lines: Vec<&str> = out_a
        .lines()
        .filter(|l| l.starts_with("journal "))
        .collect();
    assert_eq!(lines.len(), 2, "{out_a}{err}");
    assert!(lines.iter().any(|l| l.ends_with(": INTACT")), "{out_a}");

    // cat from the archive: instance b's frames, pruned locally, are there.
    let b_id = journals[1]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let (code, raw, err) = auditlb_cli(&["cat", "--archive", url, "--journal-id", &b_id], &env);
    assert_eq!(code, 0, "{err}");
    let ids: std::collections::HashSet<u64> = raw
        .lines()
        .filter_map(|l| l.rsplit(" id=").next()?.parse().ok())
        .collect();
    assert!(ids.len() > 3_000, "{} ids from the archive", ids.len());

    // A local segment that the archive also holds is changed on the host:
    // the archived copy is intact, but the two differ, and verify says so.
    let a_anchors = lbs[0].2.join("anchors.log");
    let archived_names: Vec<String> = keys
        .iter()
        .filter(|k| k.contains("/segments/"))
        .filter_map(|k| k.rsplit('/').next().map(str::to_owned))
        .collect();
    let local_archived = segments(&a_dir)
        .into_iter()
        .find(|p| archived_names.iter().any(|n| p.ends_with(n)))
        .expect("a local segment the archive holds");
    let original = std::fs::read(&local_archived).unwrap();
    let mut changed = original.clone();
    let mid = changed.len() / 2;
    changed[mid] ^= 1;
    std::fs::set_permissions(
        &local_archived,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    std::fs::write(&local_archived, &changed).unwrap();
    let args = [
        "verify",
        "--archive",
        url,
        "--journal",
        a_dir.to_str().unwrap(),
        "--anchors",
        a_anchors.to_str().unwrap(),
    ];
    let (code, out, err) = auditlb_cli(&args, &env);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("differs from the archived copy"), "{out}");
    std::fs::write(&local_archived, &original).unwrap();
    let (code, out, err) = auditlb_cli(&args, &env);
    assert_eq!(code, 2, "{out}{err}");

    // A delete marker hides an archived segment of b from the listing
    // (Object Lock keeps the version, not the key): its a1 line says it
    // was archived, so it is missing.
    let victim_b = format!("lb/{b_id}/segments/");
    s3.boto(&format!(
        "k = sorted(o['Key'] for o in s3.list_objects_v2(Bucket='audit', Prefix='{victim_b}')['Contents'])[1]\ns3.delete_object(Bucket='audit', Key=k)"
    ));
    let (code, out, err) = auditlb_cli(&["verify", "--archive", url], &env);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("SEGMENT_MISSING"), "{out}");

    // An intruder with the bucket's keys writes a changed copy of an
    // archived segment (a new version on top): verify catches it.
    let a_id = journals[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':');
    let victim = format!("lb/{a_id}/segments/");
    s3.boto(&format!(
        "k = sorted(o['Key'] for o in s3.list_objects_v2(Bucket='audit', Prefix='{victim}')['Contents'])[2]\nb = bytearray(s3.get_object(Bucket='audit', Key=k)['Body'].read())\nb[len(b)//2] ^= 1\ns3.put_object(Bucket='audit', Key=k, Body=bytes(b), ChecksumAlgorithm='SHA256')"
    ));
    let (code, out, err) = auditlb_cli(&["verify", "--archive", url], &env);
    assert_eq!(code, 1, "{out}{err}");
    let bad: Vec<&str> = out.lines().filter(|l| l.contains("TAMPERED")).collect();
    assert_eq!(bad.len(), 2, "{out}");
    assert!(
        bad.iter()
            .any(|l| l.contains(a_id) && l.contains("MODIFIED")),
        "{out}"
    );
}

/// The attack a reviewer found: with auditlb killed, an intruder deletes
/// the oldest segments and appends a chain-valid PRUNE record that lists
/// them (and a `p1` line), so the gap looks pruned; auditlb restarts and
/// seals everything after it. No key is needed to chain a record, but
/// auditlb always seals its PRUNE with the checkpoint right after it:
/// `verify` says SEGMENT_MISSING, with or without the anchors file.
#[test]
fn a_forged_prune_record_does_not_cover_deleted_segments() {
    use auditlb::journal::format::{
        encode_record, parse_record, CheckpointBody, Header, PruneBody, RecordHead, RecordType,
        SegmentFacts,
    };
    use auditlb::journal::reader::Records;
    use sha2::Digest;
    let dir = scratch_dir("forged-prune");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let cfg = TestConfig::at(&dir)
        .backend_addrs(&[backend])
        .anchors()
        .journal("segment-size = \"64KiB\"")
        .write();
    let journal = dir.join("journal");
    let (mut lb, log) = spawn_auditlb_logged(&cfg);
    let addr = log.wait_addr("listening", None);
    gen_ids(addr, 2, 6_000, &[]);
    wait_all_ids(&[&sink_log], 6_000, 60);
    lb.kill9();
    let segs = segments(&journal);
    assert!(segs.len() > 8);
    // Facts of segments 0..4, as auditlb would list them.
    let mut facts = Vec::new();
    let mut end_epoch = 0;
    for p in &segs[..4] {
        let b = std::fs::read(p).unwrap();
        let h = Header::decode(&b).unwrap();
        let recs: Vec<_> = Records::new(&b).map_while(Result::ok).collect();
        for (_, r) in &recs {
            if RecordType::from_u8(r.rtype).is_some_and(RecordType::is_checkpoint) {
                end_epoch = CheckpointBody::decode(r.body).unwrap().epoch;
            }
        }
        let (_, last) = recs.last().unwrap();
        facts.push(SegmentFacts {
            segment_no: h.segment_no,
            first_seq: h.first_seq,
            last_seq: last.seq,
            end_chain: last.chain,
            file_sha256: sha2::Sha256::digest(&b).into(),
            file_len: b.len() as u64,
        });
    }
    let end = facts.last().unwrap().clone();
    let body = PruneBody {
        end_segment_no: end.segment_no,
        end_seq: end.last_seq,
        end_chain: end.end_chain,
        end_epoch,
        ended_run: false,
        segments: facts.clone(),
    };
    // Appended to the newest segment, chained on its last record.
    let newest = segs.last().unwrap();
    let bytes = std::fs::read(newest).unwrap();
    let (at, last) = Records::new(&bytes).map_while(Result::ok).last().unwrap();
    let tail_end = at + last.raw.len();
    let mut rec = Vec::new();
    encode_record(
        &mut rec,
        RecordHead {
            rtype: RecordType::Prune,
            flags: 0,
            seq: last.seq + 1,
            time_ns: last.time_ns + 1,
        },
        &[],
        &body.encode(),
        &last.chain,
    );
    assert!(parse_record(&rec).is_ok());
    let mut forged = bytes[..tail_end].to_vec();
    forged.extend_from_slice(&rec);
    std::fs::write(newest, &forged).unwrap();
    let anchors = dir.join("anchors.log");
    let line = auditlb::journal::anchors::PruneLine {
        journal_id: Header::decode(&bytes).unwrap().journal_id,
        first_segment_no: 0,
        end_segment_no: end.segment_no,
        end_seq: end.last_seq,
        end_chain: end.end_chain,
        end_epoch,
        record_seq: last.seq + 1,
    }
    .line(last.time_ns + 1);
    let mut a = std::fs::OpenOptions::new()
        .append(true)
        .open(&anchors)
        .unwrap();
    std::io::Write::write_all(&mut a, line.as_bytes()).unwrap();
    for p in &segs[..4] {
        std::fs::remove_file(p).unwrap();
    }
    // auditlb starts over it and stops cleanly.
    let (mut lb, log) = spawn_auditlb_logged(&cfg);
    let addr = log.wait_addr("listening", None);
    gen_ids(addr, 1, 500, &["--id-base", "6000"]);
    wait_all_ids(&[&sink_log], 6_500, 60);
    stop(&mut lb);
    let (code, out) = verify_cli(&journal, &anchors);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("SEGMENT_MISSING"), "{out}");
    let (code, out, _) = auditlb_cli(&["verify", "--journal", journal.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not sealed by a checkpoint right after it"),
        "{out}"
    );
}

/// A file named like a segment far ahead of the journal is dropped into
/// the directory while auditlb runs with retention: the open segment is
/// never taken for a closed one, verified, archived or deleted.
#[test]
fn a_stray_file_named_like_a_later_segment_never_gets_the_open_segment_pruned() {
    let dir = scratch_dir("stray-segment");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let journal = dir.join("journal");
    let (_cfg, mut lb, _log, addr, admin) = start(
        &dir,
        backend,
        "segment-size = \"64KiB\"\n[journal.retention]\nmax-bytes = \"128KiB\"",
        &[],
    );
    gen_ids(addr, 1, 2_000, &[]);
    wait_all_ids(&[&sink_log], 2_000, 60);
    wait_metric(admin, "auditlb_journal_pruned_segments_total", 1.0, 30);
    let stray = journal.join("00000000000099999999.seg");
    std::fs::write(&stray, b"not a segment").unwrap();
    let open = segments(&journal)
        .into_iter()
        .rfind(|p| *p != stray)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        open.exists(),
        "the open segment {} was deleted",
        open.display()
    );
    assert_eq!(metric(admin, "auditlb_journal_tamper_alarm"), 0.0);
    std::fs::remove_file(&stray).unwrap();
    gen_ids(addr, 1, 2_000, &["--id-base", "2000"]);
    wait_all_ids(&[&sink_log], 4_000, 60);
    stop(&mut lb);
    let (code, out) = verify_cli(&journal, &dir.join("anchors.log"));
    assert_eq!(code, 0, "{out}");
}

/// A tight disk: the journal reaches its `disk-budget` (on-full = block)
/// while the backend is down, so clients are held back. When the backend
/// comes up, delivery settles the old segments, retention's PRUNE gets
/// through although frames are blocked, the space comes back, and every
/// client's frame is delivered.
#[test]
fn retention_frees_a_full_journal_once_its_frames_are_delivered() {
    let dir = scratch_dir("retention-full");
    let backend = free_addr();
    let (_cfg, mut lb, _log, addr, admin) = start(&dir, backend, "segment-size = \"64KiB\"\ndisk-budget = \"768KiB\"\non-full = \"block\"\n[journal.retention]\nmax-bytes = \"512KiB\"", &[]);
    let gen = std::thread::spawn(move || gen_ids(addr, 2, 10_000, &[]));
    wait_metric(admin, "auditlb_journal_full", 1.0, 30);
    let journal = dir.join("journal");
    assert!(journal_bytes(&journal) <= 768 << 10);
    let sink_log = dir.join("sink.log");
    let (_sink, _) = spawn_sink(&backend.to_string(), "octet", &sink_log, &[]);
    wait_all_ids(&[&sink_log], 10_000, 90);
    gen.join().unwrap();
    assert!(metric(admin, "auditlb_journal_pruned_segments_total") > 10.0);
    assert!(journal_bytes(&journal) <= 768 << 10);
    stop(&mut lb);
    let (code, out) = verify_cli(&journal, &dir.join("anchors.log"));
    assert_eq!(code, 0, "{out}");
}

/// `max-age` alone: segments closed longer ago than it go (after their
/// frames are delivered), the journal keeps going, and what is left
/// verifies.
#[test]
fn max_age_prunes_old_segments_without_a_byte_limit() {
    let dir = scratch_dir("retention-age");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let journal = dir.join("journal");
    let (_cfg, mut lb, _log, addr, admin) = start(
        &dir,
        backend,
        "segment-size = \"64KiB\"\n[journal.retention]\nmax-age = \"1s\"",
        &[],
    );
    gen_ids(addr, 2, 4_000, &[]);
    wait_all_ids(&[&sink_log], 4_000, 60);
    let closed = segments(&journal).len() as f64 - 1.0;
    assert!(closed >= 10.0);
    wait_metric(admin, "auditlb_journal_pruned_segments_total", closed, 30);
    assert!(segments(&journal).len() <= 3, "{:?}", segments(&journal));
    gen_ids(addr, 1, 1_000, &["--id-base", "4000"]);
    wait_all_ids(&[&sink_log], 5_000, 60);
    stop_and_verify_pruned(&mut lb, &dir);
}

/// Archiving is switched on for a journal that retention has already
/// pruned: the archive starts after segment 0, and `verify --archive`
/// rests that start on the PRUNE record the anchors name, as local verify
/// does. A local archive directory (`file://`) is the target here.
#[test]
fn an_archive_begun_after_a_prune_verifies() {
    let dir = scratch_dir("archive-late");
    let (_sink, backend, sink_log) = sink_in(&dir);
    let journal = dir.join("journal");
    let base = TestConfig::at(&dir)
        .backend_addrs(&[backend])
        .anchors()
        .admin("127.0.0.1:0");
    let cfg = base
        .clone()
        .journal("segment-size = \"64KiB\"\n[journal.retention]\nmax-bytes = \"256KiB\"")
        .write();
    let (mut lb, log) = spawn_auditlb_logged(&cfg);
    let addr = log.wait_addr("listening", None);
    let admin = log.wait_addr("admin endpoint", None);
    gen_ids(addr, 2, 4_000, &[]);
    wait_all_ids(&[&sink_log], 4_000, 60);
    wait_metric(admin, "auditlb_journal_pruned_segments_total", 5.0, 30);
    stop(&mut lb);

    let archive = dir.join("archive");
    let url = format!("file://{}/", archive.display());
    let cfg = base
        .journal(&format!(
            "segment-size = \"64KiB\"\n[journal.archive]\nurl = \"{url}\"\n[journal.retention]\nmax-bytes = \"256KiB\""
        ))
        .write();
    let (mut lb, log) = spawn_auditlb_logged(&cfg);
    let addr = log.wait_addr("listening", None);
    let admin = log.wait_addr("admin endpoint", None);
    gen_ids(addr, 2, 4_000, &["--id-base", "4000"]);
    wait_all_ids(&[&sink_log], 8_000, 60);
    wait_metric(admin, "auditlb_archive_segments_total", 5.0, 30);
    stop(&mut lb);
    let anchors = dir.join("anchors.log");
    let (code, out, err) = auditlb_cli(
        &[
            "verify",
            "--archive",
            &url,
            "--journal",
            journal.to_str().unwrap(),
            "--anchors",
            anchors.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("pruned"), "{out}");
    let (code, out, err) = auditlb_cli(&["verify", "--archive", &url], &[]);
    assert_eq!(code, 2, "{out}{err}");
}
