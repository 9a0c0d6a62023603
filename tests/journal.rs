//! The audit journal on real files written by a running auditlb: tamper
//! detection (bit flips, edits, inserts, deletes, swaps, segment files, cut
//! tails, seals and epochs), crash recovery (torn tails at every offset,
//! SIGKILL under load), and `cat` round trips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use auditlb::journal::format::{
    encode_record, parse_record, CheckpointBody, Hash, Header, Record, RecordType, HEADER_LEN,
};
use auditlb::journal::reader::{list_segments, Records};
use auditlb::journal::seal::{key_at, read_verify_key, seal, SealInput};
use auditlb::journal::verify::{verify, Class, Report};
use auditlb::server::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use common::*;

/// A journal written by a real auditlb, stopped cleanly.
struct Written {
    dir: PathBuf,
    journal: PathBuf,
    anchors: PathBuf,
    k0: Hash,
    sent: Vec<u8>,
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditlb"))
}

/// `auditlb keygen` into `dir/keys`; returns the verification key `k_0`.
fn keygen(dir: &Path) -> [u8; 32] {
    let out = bin()
        .args(["keygen", "--out"])
        .arg(dir.join("keys"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_verify_key(&dir.join("keys/verify.key")).unwrap()
}

/// Runs auditlb in-process with a sealed journal (`segment_size` bytes per
/// segment, a checkpoint every `every` records), sends `n` LF frames from
/// two clients, and stops it.
async fn write_journal(n: usize, segment_size: &str, every: u64) -> Written {
    let sink = Sink::start(SinkFraming::Octet).await;
    let dir = scratch_dir("tamper");
    let k0 = keygen(&dir);
    let journal = dir.join("journal");
    let anchors = dir.join("anchors.log");
    let cfg = TestConfig::at(&dir)
        .backends(&[(sink.addr, 1, false)])
        .journal(&format!("segment-size = \"{segment_size}\""))
        .journal(&format!("checkpoint-every = {every}"))
        .journal(&format!(
            "seal-key = \"{}\"",
            dir.join("keys/seal.key").display()
        ))
        .anchors();
    assert_eq!(
        (cfg.journal_dir(), cfg.anchors_path()),
        (journal.clone(), anchors.clone())
    );
    let server = Server::start(cfg.parse()).await.unwrap();
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    let mut sent = Vec::new();
    // Many small connections: many batches, so checkpoints fall between
    // them as configured.
    for part in lines("j", 0..n).chunks(50) {
        send_lf(addr, part).await;
        for l in part {
            sent.extend_from_slice(l.as_bytes());
            sent.push(b'\n');
        }
    }
    wait_for(10.0, "frames delivered", || sink.count() == n).await;
    server.shutdown().await;
    Written {
        dir,
        journal,
        anchors,
        k0,
        sent,
    }
}

impl Written {
    fn verify(&self) -> Report {
        verify(&self.journal, Some(&self.anchors), Some(&self.k0)).unwrap()
    }

    /// A copy of the journal (and anchors) to damage.
    fn copy(&self, name: &str) -> Written {
        let dir = self.dir.join(name);
        let journal = dir.join("journal");
        std::fs::create_dir_all(&journal).unwrap();
        for s in list_segments(&self.journal).unwrap() {
            let to = journal.join(s.path.file_name().unwrap());
            std::fs::copy(&s.path, &to).unwrap();
            let mut p = std::fs::metadata(&to).unwrap().permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            p.set_readonly(false);
            std::fs::set_permissions(&to, p).unwrap();
        }
        let anchors = dir.join("anchors.log");
        std::fs::copy(&self.anchors, &anchors).unwrap();
        Written {
            dir,
            journal,
            anchors,
            k0: self.k0,
            sent: self.sent.clone(),
        }
    }

    fn segments(&self) -> Vec<PathBuf> {
        list_segments(&self.journal)
            .unwrap()
            .into_iter()
            .map(|s| s.path)
            .collect()
    }
}

fn class(r: &Report) -> Option<Class> {
    r.failure.as_ref().map(|f| f.class)
}

/// Records of a segment as (offset, owned bytes).
fn records(path: &Path) -> (Vec<u8>, Vec<(usize, Vec<u8>)>) {
    let bytes = std::fs::read(path).unwrap();
    let recs = Records::new(&bytes)
        .map(|s| s.unwrap())
        .map(|(at, r)| (at, r.raw.to_vec()))
        .collect();
    (bytes[..HEADER_LEN].to_vec(), recs)
}

fn meta_pairs(r: &Record<'_>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut m = r.meta;
    while m.len() >= 3 {
        let len = u16::from_be_bytes([m[1], m[2]]) as usize;
        out.push((m[0], m[3..3 + len].to_vec()));
        m = &m[3 + len..];
    }
    out
}

/// Re-encodes `raws` as a chain from `prev`, numbering from `first_seq`
/// (what an intruder with the tools but without old keys can do). `edit`
/// may change each record's body on the way.
fn rechain(
    prev: Hash,
    first_seq: u64,
    raws: &[Vec<u8>],
    mut edit: impl FnMut(u64, &Record<'_>, &mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut head = prev;
    for (i, raw) in raws.iter().enumerate() {
        let r = parse_record(raw).unwrap();
        let seq = first_seq + i as u64;
        let mut body = r.body.to_vec();
        edit(seq, &r, &mut body);
        let meta = meta_pairs(&r);
        let meta_ref: Vec<(u8, &[u8])> = meta.iter().map(|(t, v)| (*t, &v[..])).collect();
        head = encode_record(
            &mut out,
            auditlb::journal::format::RecordHead {
                rtype: r.kind().unwrap(),
                flags: r.flags,
                seq,
                time_ns: r.time_ns,
            },
            &meta_ref,
            &body,
            &head,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intact_journal_verifies_and_cat_round_trips() {
    let w = write_journal(500, "256MiB", 100).await;
    let r = w.verify();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
    assert_eq!(r.frames, 500);
    assert!(r.checkpoints >= 5, "{}", r.text());
    assert!(r.seals_checked);
    // The command line agrees, in both output forms.
    let out = bin()
        .args(["verify", "--journal"])
        .arg(&w.journal)
        .arg("--anchors")
        .arg(&w.anchors)
        .arg("--key")
        .arg(w.dir.join("keys/verify.key"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("validated seq 1.."));
    let out = bin()
        .args(["verify", "--json", "--journal"])
        .arg(&w.journal)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no anchors: tail not provable");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"status\":\"tail_not_anchored\""));
    // cat gives back exactly the bytes the clients sent.
    let out = bin()
        .args(["cat", "--journal"])
        .arg(&w.journal)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Byte for byte per frame; across client connections the order is the
    // order auditlb read them in.
    let mut got: Vec<&[u8]> = out.stdout.split_inclusive(|&b| b == b'\n').collect();
    let mut want: Vec<&[u8]> = w.sent.split_inclusive(|&b| b == b'\n').collect();
    got.sort();
    want.sort();
    assert!(got == want, "cat output differs from what clients sent");
    assert_eq!(out.stdout.len(), w.sent.len());
    let out = bin()
        .args([
            "cat",
            "--format",
            "jsonl",
            "--from",
            "10",
            "--to",
            "12",
            "--journal",
        ])
        .arg(&w.journal)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.starts_with("{\"seq\":1")));
    assert!(text.contains("\"listener\":\"in\"") && text.contains("\"client\":\"127.0.0.1:"));
    // Every frame says which backend took it (DELIVERY ranges).
    let out = bin()
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(&w.journal)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"type\":\"FRAME\""))
        .collect();
    assert_eq!(frames.len(), 500);
    for f in &frames {
        assert!(f.contains("\"backend\":\"127.0.0.1:"), "{f}");
    }
    // A usage error is exit 3.
    let out = bin()
        .args(["verify", "--journal", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bit_flip_is_detected() {
    let w = write_journal(6, "256MiB", 4).await;
    let seg = w.segments().pop().unwrap();
    let original = std::fs::read(&seg).unwrap();
    let frame_ranges: Vec<(usize, usize)> = Records::new(&original)
        .map(|s| s.unwrap())
        .filter(|(_, r)| r.kind() == Some(RecordType::Frame))
        .map(|(at, r)| {
            let body_at = at + (r.body.as_ptr() as usize - r.raw.as_ptr() as usize);
            (body_at, body_at + r.body.len())
        })
        .collect();
    assert_eq!(frame_ranges.len(), 6);
    let c = w.copy("flips");
    let target = c.segments().pop().unwrap();
    let mut flips = 0;
    for i in 0..original.len() {
        for bit in 0..8 {
            let mut b = original.clone();
            b[i] ^= 1 << bit;
            std::fs::write(&target, &b).unwrap();
            let r = c.verify();
            assert!(
                r.failure.is_some(),
                "flip of bit {bit} at byte {i} not detected: {}",
                r.text()
            );
            if frame_ranges.iter().any(|&(a, z)| (a..z).contains(&i)) {
                assert_eq!(class(&r), Some(Class::Modified), "payload flip at {i}");
            }
            flips += 1;
        }
    }
    assert!(flips > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_inserts_deletes_and_swaps_are_classified() {
    let w = write_journal(40, "256MiB", 1000).await;
    assert_eq!(w.verify().exit_code(), 0);
    let seg = w.segments().pop().unwrap();
    let (header, recs) = records(&seg);
    let frame_idx = recs
        .iter()
        .position(|(_, r)| parse_record(r).unwrap().kind() == Some(RecordType::Frame))
        .unwrap()
        + 5;
    let assemble = |recs: &[Vec<u8>]| -> Vec<u8> {
        let mut out = header.clone();
        for r in recs {
            out.extend_from_slice(r);
        }
        out
    };
    let raws: Vec<Vec<u8>> = recs.iter().map(|(_, r)| r.clone()).collect();
    let cases: Vec<(&str, Vec<u8>, Class)> = vec![
        (
            "edit",
            {
                let mut v = raws.clone();
                let r = &mut v[frame_idx];
                let at = r.len() - 40;
                r[at] = b'X';
                assemble(&v)
            },
            Class::Modified,
        ),
        (
            "insert",
            {
                // A forged record that chains correctly from its predecessor.
                let prev = parse_record(&raws[frame_idx - 1]).unwrap();
                let target = parse_record(&raws[frame_idx]).unwrap();
                let mut forged = Vec::new();
                encode_record(
                    &mut forged,
                    auditlb::journal::format::RecordHead {
                        rtype: RecordType::Frame,
                        flags: 0,
                        seq: target.seq,
                        time_ns: target.time_ns,
                    },
                    &[],
                    b"<13>forged",
                    &prev.chain,
                );
                let mut v = raws.clone();
                v.insert(frame_idx, forged);
                assemble(&v)
            },
            Class::Inserted,
        ),
        (
            "delete",
            {
                let mut v = raws.clone();
                v.remove(frame_idx);
                assemble(&v)
            },
            Class::Deleted,
        ),
        (
            "swap",
            {
                let mut v = raws.clone();
                v.swap(frame_idx, frame_idx + 1);
                assemble(&v)
            },
            Class::Reordered,
        ),
    ];
    for (name, bytes, want) in cases {
        let c = w.copy(name);
        std::fs::write(c.segments().pop().unwrap(), bytes).unwrap();
        let r = c.verify();
        assert_eq!(class(&r), Some(want), "{name}: {}", r.text());
        assert_eq!(r.exit_code(), 1);
        let f = r.failure.unwrap();
        assert!(
            f.offset > HEADER_LEN as u64 && f.seq.is_some(),
            "{name}: {f:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_files_deleted_swapped_truncated_and_tail_cut() {
    let w = write_journal(2500, "64KiB", 200).await;
    let segs = w.segments();
    assert!(segs.len() >= 4, "want several segments, got {}", segs.len());
    assert_eq!(w.verify().exit_code(), 0, "{}", w.verify().text());

    let c = w.copy("delete-seg");
    std::fs::remove_file(&c.segments()[1]).unwrap();
    assert_eq!(class(&c.verify()), Some(Class::SegmentMissing));

    let c = w.copy("swap-seg");
    let s = c.segments();
    let (a, b) = (std::fs::read(&s[1]).unwrap(), std::fs::read(&s[2]).unwrap());
    std::fs::write(&s[1], b).unwrap();
    std::fs::write(&s[2], a).unwrap();
    assert_eq!(class(&c.verify()), Some(Class::Reordered));

    let c = w.copy("truncate-seg");
    let s = c.segments();
    let len = std::fs::metadata(&s[1]).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&s[1])
        .unwrap()
        .set_len(len - 500)
        .unwrap();
    let r = c.verify();
    assert_eq!(class(&r), Some(Class::Deleted), "{}", r.text());

    // Cut the tail at a record boundary: only the anchors can tell.
    let c = w.copy("cut-tail");
    let last = c.segments().pop().unwrap();
    let (_, recs) = records(&last);
    let cut_at = recs[recs.len() - 3].0 as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(cut_at)
        .unwrap();
    let r = c.verify();
    assert_eq!(class(&r), Some(Class::TailTruncated), "{}", r.text());
    assert_eq!(r.exit_code(), 1);
    let r = verify(&c.journal, None, Some(&c.k0)).unwrap();
    assert_eq!(
        r.exit_code(),
        2,
        "without anchors: intact but not provable\n{}",
        r.text()
    );
    let out = bin()
        .args(["verify", "--journal"])
        .arg(&c.journal)
        .arg("--anchors")
        .arg(&c.anchors)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("TAIL_TRUNCATED"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resealed_and_dropped_checkpoints() {
    let w = write_journal(300, "256MiB", 50).await;
    let seg = w.segments().pop().unwrap();
    let (header_bytes, recs) = records(&seg);
    let header = Header::decode(&header_bytes).unwrap();
    let raws: Vec<Vec<u8>> = recs.iter().map(|(_, r)| r.clone()).collect();
    let cps: Vec<usize> = raws
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            parse_record(r)
                .unwrap()
                .kind()
                .is_some_and(RecordType::is_checkpoint)
        })
        .map(|(i, _)| i)
        .collect();
    assert!(cps.len() >= 4);
    let first_seq = parse_record(&raws[0]).unwrap().seq;

    // Re-seal an old checkpoint with a later epoch's key (the intruder holds
    // the current key, not the old ones), and re-chain everything after.
    let victim = cps[1];
    let mut out = header_bytes.clone();
    let victim_seq = first_seq + victim as u64;
    out.extend_from_slice(&rechain(
        header.prev_chain,
        first_seq,
        &raws,
        |seq, r, body| {
            if seq != victim_seq {
                return;
            }
            let mut cp = CheckpointBody::decode(body).unwrap();
            let later = key_at(&w.k0, cp.epoch + 1);
            cp.seal = seal(
                &later,
                &SealInput {
                    journal_id: &header.journal_id,
                    seq,
                    time_ns: r.time_ns,
                    epoch: cp.epoch,
                    covered_seq: cp.covered_seq,
                    covered_chain: &cp.covered_chain,
                },
            );
            *body = cp.encode().to_vec();
        },
    ));
    let c = w.copy("reseal");
    std::fs::write(c.segments().pop().unwrap(), &out).unwrap();
    let r = verify(&c.journal, None, Some(&c.k0)).unwrap();
    assert_eq!(class(&r), Some(Class::WrongEpoch), "{}", r.text());
    // A seal made with no valid key at all is BAD_SEAL.
    // (The seal is the last 32 bytes of the body, before chain and len.)
    let mut v = raws.clone();
    let seal_byte = v[victim].len() - 36 - 1;
    v[victim][seal_byte] ^= 0xff;
    let mut bad = header_bytes.clone();
    bad.extend_from_slice(&rechain(header.prev_chain, first_seq, &v, |_, _, _| {}));
    std::fs::write(c.segments().pop().unwrap(), &bad).unwrap();
    let r = verify(&c.journal, None, Some(&c.k0)).unwrap();
    assert_eq!(class(&r), Some(Class::BadSeal), "{}", r.text());

    // Drop a checkpoint, renumber and re-chain what follows: the epochs
    // skip one.
    let mut v = raws.clone();
    v.remove(cps[2]);
    let mut dropped = header_bytes.clone();
    dropped.extend_from_slice(&rechain(header.prev_chain, first_seq, &v, |_, _, _| {}));
    let c = w.copy("drop-checkpoint");
    std::fs::write(c.segments().pop().unwrap(), &dropped).unwrap();
    let r = verify(&c.journal, None, Some(&c.k0)).unwrap();
    assert_eq!(class(&r), Some(Class::EpochGap), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_cut_at_every_offset_is_recovered_exactly() {
    use auditlb::journal::writer::Writer;
    let written = write_journal(20, "256MiB", 1000).await;
    // A run that checkpointed and was then killed: its segment is open
    // (a clean stop's FINAL checkpoint may be followed by nothing).
    let w = written.copy("crashed");
    let cfg_base = auditlb::config::JournalConfig::default();
    let metrics = auditlb::metrics::Metrics::new();
    let crashed = auditlb::config::JournalConfig {
        dir: w.journal.clone(),
        anchors: Some(w.anchors.clone()),
        ..cfg_base.clone()
    };
    let mut run = Writer::open(&crashed, metrics.journal(), &Default::default()).unwrap();
    run.checkpoint().unwrap();
    drop(run);
    let seg = w.segments().pop().unwrap();
    let clean = std::fs::read(&seg).unwrap();
    // Append one more record, as a write in progress would have.
    let (_, recs) = records(&seg);
    let last = parse_record(&recs.last().unwrap().1).unwrap();
    let mut extra = Vec::new();
    encode_record(
        &mut extra,
        auditlb::journal::format::RecordHead {
            rtype: RecordType::Frame,
            flags: 0,
            seq: last.seq + 1,
            time_ns: last.time_ns,
        },
        &[],
        b"<13>in flight when the power went",
        &last.chain,
    );
    for cut in 1..extra.len() {
        let c = w.copy(&format!("torn-{cut}"));
        let target = c.segments().pop().unwrap();
        let mut torn = clean.clone();
        torn.extend_from_slice(&extra[..cut]);
        std::fs::write(&target, &torn).unwrap();
        // Restart: recovery runs in Writer::open.
        let cfg = auditlb::config::JournalConfig {
            dir: c.journal.clone(),
            anchors: Some(c.anchors.clone()),
            ..cfg_base.clone()
        };
        let mut wr = Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap();
        wr.close().unwrap();
        drop(wr);
        let after = std::fs::read(&target).unwrap();
        assert_eq!(
            &after[..clean.len()],
            &clean[..],
            "cut {cut}: bytes before the torn record kept"
        );
        let rest: Vec<Record<'_>> = {
            let mut v = Vec::new();
            let mut off = clean.len();
            while off < after.len() {
                let r = parse_record(&after[off..]).unwrap();
                off += r.raw.len();
                v.push(r);
            }
            v
        };
        assert_eq!(rest.len(), 2, "cut {cut}: RECOVERY then SEGMENT_END");
        assert_eq!(rest[0].kind(), Some(RecordType::Recovery));
        let old_len = u64::from_be_bytes(rest[0].body[..8].try_into().unwrap());
        let new_len = u64::from_be_bytes(rest[0].body[8..16].try_into().unwrap());
        assert_eq!(
            (old_len, new_len),
            (torn.len() as u64, clean.len() as u64),
            "cut {cut}"
        );
        assert_eq!(rest[1].kind(), Some(RecordType::SegmentEnd));
        let r = verify(&c.journal, Some(&c.anchors), None).unwrap();
        assert!(r.failure.is_none(), "cut {cut}: {}", r.text());
        assert_eq!(r.recovered.len(), 1);
        assert_eq!(r.exit_code(), 0, "cut {cut}: {}", r.text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_twenty_times_journal_always_verifies() {
    let sink = Sink::start(SinkFraming::Octet).await;
    let dir = scratch_dir("sigkill");
    let journal = dir.join("journal");
    let anchors = dir.join("anchors.log");
    let cfg_path = dir.join("auditlb.toml");
    // Sealed: the key ratchets on the sync thread, and a kill between a
    // checkpoint and its ratchet must never let one key seal two epochs.
    let k0 = keygen(&dir);
    let written = TestConfig::at(&dir)
        .backends(&[(sink.addr, 1, false)])
        .journal(&format!(
            "seal-key = \"{}\"",
            dir.join("keys/seal.key").display()
        ))
        .anchors()
        .write();
    assert_eq!(
        (written, journal.clone()),
        (cfg_path.clone(), dir.join("journal"))
    );
    let mut next = 0usize;
    for round in 0..20 {
        let (mut child, addr) = spawn_auditlb(&cfg_path);
        // Load until the kill.
        let load = tokio::spawn(async move {
            let Ok(mut c) = TcpStream::connect(addr).await else {
                return;
            };
            loop {
                let batch: String = (0..200)
                    .map(|i| format!("<13>1 - h a - - - r{round}-{}\n", next + i))
                    .collect();
                next += 200;
                if c.write_all(batch.as_bytes()).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(150 + 10 * round as u64)).await;
        child.kill9();
        load.abort();
        let r = verify(&journal, Some(&anchors), Some(&k0)).unwrap();
        assert!(r.failure.is_none(), "round {round}: {}", r.text());
    }
    // One clean run recovers the last crash; then the whole journal is
    // intact, and everything the backend got is in it.
    let (mut child, _) = spawn_auditlb(&cfg_path);
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.signal(libc::SIGTERM);
    assert!(child.child.wait().unwrap().success());
    let r = verify(&journal, Some(&anchors), Some(&k0)).unwrap();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
    assert!(r.recovered.len() <= 20);
    let out = bin()
        .args(["cat", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    let journaled: std::collections::HashSet<&[u8]> = out.stdout.split(|&b| b == b'\n').collect();
    let delivered = sink.bodies();
    assert!(!delivered.is_empty());
    for f in &delivered {
        assert!(
            journaled.contains(&f[..]),
            "delivered but not journaled: {}",
            String::from_utf8_lossy(f)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_leave_a_gap_record_and_idle_journals_heartbeat() {
    let sink = Sink::start(SinkFraming::Octet).await;
    let cfg = config(
        &[(sink.addr, 1, false)],
        "max-frame = \"64B\"\noversize = \"drop\"",
        "",
    );
    let journal_dir: PathBuf = cfg
        .split("dir = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .into();
    let server = start(&cfg).await;
    wait_connected(&server, 1).await;
    let mut c = TcpStream::connect(server.listener_addr("in").unwrap())
        .await
        .unwrap();
    c.write_all(format!("<13>ok\n{}\n<13>ok2\n", "x".repeat(200)).as_bytes())
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    wait_for(5.0, "2 frames", || sink.count() == 2).await;
    // Idle: heartbeats keep coming (checkpoint-interval is 200ms here):
    // two more checkpoints after the frames, seen by their metric.
    for _ in 0..2 {
        let at = metric(&server, "auditlb_journal_last_checkpoint_seq", &[]);
        wait_for(5.0, "an idle heartbeat", || {
            metric(&server, "auditlb_journal_last_checkpoint_seq", &[]) > at
        })
        .await;
    }
    server.shutdown().await;
    let out = bin()
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(&journal_dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let gap = text
        .lines()
        .find(|l| l.contains("\"type\":\"GAP\""))
        .expect("a GAP record");
    assert!(
        gap.contains("\"reason\":\"oversize\"") && gap.contains("\"count\":1"),
        "{gap}"
    );
    assert!(
        text.lines()
            .filter(|l| l.contains("\"type\":\"HEARTBEAT\""))
            .count()
            >= 2,
        "{text}"
    );
    let r = verify(&journal_dir, None, None).unwrap();
    assert!(r.failure.is_none(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_go_to_the_backends_in_band_and_match_the_anchors() {
    let sink = Sink::start(SinkFraming::Octet).await;
    let dir = scratch_dir("inband");
    let anchors = dir.join("anchors.log");
    let cfg = TestConfig::at(&dir)
        .backends(&[(sink.addr, 1, false)])
        .journal("send-checkpoints = true")
        .anchors();
    assert_eq!(cfg.anchors_path(), anchors);
    let server = Server::start(cfg.parse()).await.unwrap();
    wait_connected(&server, 1).await;
    send_lf(server.listener_addr("in").unwrap(), &lines("ib", 0..100)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    server.shutdown().await;
    let msgs: Vec<String> = sink
        .bodies()
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .filter(|m| m.contains(" CHECKPOINT [auditlb@32473 "))
        .collect();
    assert!(msgs.len() >= 2, "{msgs:?}");
    let anchor_lines = std::fs::read_to_string(&anchors).unwrap();
    for m in &msgs {
        assert!(m.starts_with("<110>1 "), "{m}");
        let field = |k: &str| {
            m.split(&format!("{k}=\""))
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned()
        };
        let (seq, chain) = (field("seq"), field("chain"));
        assert!(
            anchor_lines
                .lines()
                .any(|l| l.contains(&format!(" {seq} {chain} "))),
            "in-band checkpoint {seq} not in the anchors file"
        );
    }
}

#[test]
fn damage_before_the_last_checkpoint_is_never_repaired() {
    use auditlb::journal::writer::Writer;
    let dir = scratch_dir("damaged");
    let cfg = auditlb::config::JournalConfig {
        dir: dir.clone(),
        ..auditlb::config::JournalConfig::default()
    };
    let metrics = auditlb::metrics::Metrics::new();
    let meta = std::sync::Arc::new(auditlb::frame::ConnMeta::new(
        1,
        "in".into(),
        "127.0.0.1:9".parse().unwrap(),
    ));
    let mut frames: Vec<auditlb::frame::Frame> = (0..10)
        .map(|i| {
            auditlb::frame::Frame::new(bytes::Bytes::from(format!("<13>frame {i}")), meta.clone())
        })
        .collect();
    // A run that checkpointed, wrote more, then died (no close).
    let mut w = Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap();
    w.append_frames("p", &mut frames[..5]);
    w.flush().unwrap();
    w.checkpoint().unwrap();
    w.append_frames("p", &mut frames[5..]);
    w.flush().unwrap();
    drop(w);
    let seg = list_segments(&dir).unwrap().pop().unwrap().path;
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(9).position(|w| w == b"<13>frame").unwrap() + 5;
    bytes[at] ^= 0x20;
    std::fs::write(&seg, &bytes).unwrap();
    // Restart: the damaged segment is left exactly as it is, a new one
    // starts, the alarm is raised.
    let metrics = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap();
    w.close().unwrap();
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "damaged segment untouched"
    );
    assert_eq!(list_segments(&dir).unwrap().len(), 2);
    assert_eq!(metrics.sum("auditlb_journal_tamper_alarm", &[]), 1.0);
    let r = verify(&dir, None, None).unwrap();
    let f = r.failure.expect("verify reports the damage");
    assert_eq!(f.class, Class::Modified);
    assert_eq!(f.segment, seg);
    // The alarm survives a restart until an operator clears it.
    let metrics = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap();
    w.close().unwrap();
    assert_eq!(metrics.sum("auditlb_journal_tamper_alarm", &[]), 1.0);
    std::fs::remove_file(dir.join("ALARM")).unwrap();
    let metrics = auditlb::metrics::Metrics::new();
    drop(Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap());
    assert_eq!(metrics.sum("auditlb_journal_tamper_alarm", &[]), 0.0);
}

#[test]
fn epochs_continue_across_a_run_that_died_before_its_first_checkpoint() {
    use auditlb::journal::writer::Writer;
    let (dir, cfg) = one_clean_run("epochs");
    let m = auditlb::metrics::Metrics::new();
    // A run killed before any checkpoint.
    drop(Writer::open(&cfg, m.journal(), &Default::default()).unwrap());
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.close().unwrap();
    let r = verify(&dir, None, None).unwrap();
    assert!(r.failure.is_none(), "{}", r.text());
    // Each run anchors a checkpoint as it starts: 3 starts, the explicit
    // one, and the two FINAL ones.
    assert_eq!(r.checkpoints, 6);
}

/// A config whose journal has a small disk budget; its journal directory.
fn budget_config(sink: std::net::SocketAddr, on_full: &str) -> (String, PathBuf) {
    let cfg = TestConfig::new("budget")
        .backends(&[(sink, 1, false)])
        .journal("segment-size = \"64KiB\"")
        .journal("disk-budget = \"256KiB\"")
        .journal(&format!("on-full = \"{on_full}\""));
    (cfg.toml(), cfg.journal_dir())
}

fn gap_total(journal: &Path, reason: &str) -> u64 {
    let out = bin()
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(journal)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"GAP\"") && l.contains(&format!("\"reason\":\"{reason}\""))
        })
        .map(|l| {
            l.split("\"count\":")
                .nth(1)
                .unwrap()
                .trim_end_matches('}')
                .parse::<u64>()
                .unwrap()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budget_drop_refuses_counts_and_records_a_gap() {
    let sink = Sink::start(SinkFraming::Octet).await;
    let (cfg, journal) = budget_config(sink.addr, "drop");
    let server = start(&cfg).await;
    wait_connected(&server, 1).await;
    let n = 6000;
    send_lf(server.listener_addr("in").unwrap(), &lines("d", 0..n)).await;
    wait_for(10.0, "every frame delivered or refused", || {
        sink.count() as f64
            + metric(
                &server,
                "auditlb_journal_frames_refused_disk_full_total",
                &[],
            )
            == n as f64
    })
    .await;
    let refused = metric(
        &server,
        "auditlb_journal_frames_refused_disk_full_total",
        &[],
    ) as u64;
    assert!(
        refused > 0 && sink.count() > 0,
        "refused {refused}, delivered {}",
        sink.count()
    );
    assert_eq!(metric(&server, "auditlb_journal_full", &[]), 1.0);
    let why = server.ready().unwrap_err();
    assert!(why.contains("disk budget"), "{why}");
    server.shutdown().await;
    assert_eq!(gap_total(&journal, "disk_full"), refused);
    let r = verify(&journal, None, None).unwrap();
    assert!(r.failure.is_none(), "{}", r.text());
    assert_eq!(r.frames as usize, sink.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_budget_block_slows_clients_and_loses_nothing_silently() {
    let sink = Sink::start(SinkFraming::Octet).await;
    let (cfg, journal) = budget_config(sink.addr, "block");
    let server = start(&cfg).await;
    wait_connected(&server, 1).await;
    let addr = server.listener_addr("in").unwrap();
    // Far more than the budget and the socket buffers together.
    let msgs = lines("b", 0..400_000);
    let client = tokio::spawn(async move { send_lf(addr, &msgs).await });
    wait_for(10.0, "journal full", || {
        metric(&server, "auditlb_journal_full", &[]) == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!client.is_finished(), "the client was not slowed down");
    assert_eq!(
        metric(
            &server,
            "auditlb_journal_frames_refused_disk_full_total",
            &[]
        ),
        0.0
    );
    let delivered = sink.count();
    client.abort();
    let metrics = server.metrics().clone();
    server.shutdown().await;
    // Everything journaled was delivered; what was read but held back when
    // the process stopped is recorded as a GAP, not lost silently.
    let r = verify(&journal, None, None).unwrap();
    assert!(r.failure.is_none(), "{}", r.text());
    assert_eq!(r.frames as usize, sink.count());
    assert!(sink.count() >= delivered);
    let held = gap_total(&journal, "disk_full");
    assert_eq!(
        held as f64,
        metrics.sum("auditlb_journal_frames_refused_disk_full_total", &[])
    );
    let used: u64 = list_segments(&journal)
        .unwrap()
        .iter()
        .map(|s| std::fs::metadata(&s.path).unwrap().len())
        .sum();
    assert!(
        used < 400 * 1024,
        "journal grew to {used} bytes past a 256KiB budget"
    );
}

/// A journal in a fresh directory written by one run of the writer that
/// checkpointed and stopped cleanly; its directory and config.
fn one_clean_run(name: &str) -> (PathBuf, auditlb::config::JournalConfig) {
    use auditlb::journal::writer::Writer;
    let dir = scratch_dir(name);
    let cfg = auditlb::config::JournalConfig {
        dir: dir.clone(),
        ..auditlb::config::JournalConfig::default()
    };
    let m = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.checkpoint().unwrap();
    w.close().unwrap();
    (dir, cfg)
}

/// Runs the auditlb binary on `cfg`, sends `n` ids from `base`, waits until
/// the sink logged them, and stops it with SIGTERM.
fn run_and_stop(cfg: &Path, log: &Path, base: u64, n: u64) {
    let (mut p, listen) = spawn_auditlb(cfg);
    let out = gen_ids(listen, 1, n, &["--id-base", &base.to_string()]);
    assert!(out.contains(&format!("sent={n}")), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(base..base + n).all(|i| ids_in_log(log, true).contains(&i)) {
        assert!(std::time::Instant::now() < deadline, "ids not delivered");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.signal(libc::SIGTERM);
    assert!(p.child.wait().unwrap().success());
}

/// An intruder deletes every segment while auditlb is stopped, then lets it
/// start again (or not): the anchors file still binds the journal, so
/// `verify` says what is missing instead of INTACT, and the start raises
/// the alarm.
#[test]
fn a_wiped_journal_never_verifies_intact() {
    let dir = scratch_dir("wiped");
    let log = dir.join("sink.log");
    let (_sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = binary_config(&dir, &[addr], "");
    let journal = dir.join("journal");
    let anchors = dir.join("anchors.log");
    run_and_stop(&cfg, &log, 0, 500);
    assert_eq!(verify_cli(&journal, &anchors).0, 0);
    for s in list_segments(&journal).unwrap() {
        std::fs::remove_file(s.path).unwrap();
    }
    let (code, text) = verify_cli(&journal, &anchors);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("SEGMENT_MISSING"), "{text}");
    // auditlb starts again on the empty directory and serves.
    run_and_stop(&cfg, &log, 500, 500);
    let (code, text) = verify_cli(&journal, &anchors);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("SEGMENT_MISSING"), "{text}");
    let alarm = std::fs::read_to_string(journal.join("ALARM")).unwrap();
    assert!(alarm.contains("SEGMENT_MISSING"), "{alarm}");
    // A journal made elsewhere (another id) shown with this anchors file.
    let other = scratch_dir("other");
    let other_cfg = binary_config(&other, &[addr], "");
    run_and_stop(&other_cfg, &log, 1000, 10);
    let (code, text) = verify_cli(&other.join("journal"), &anchors);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("JOURNAL_REPLACED"), "{text}");
}

/// An intruder appends a record that chains correctly onto the last one
/// after a clean stop. The FINAL checkpoint says nothing may follow: the
/// next start raises the alarm and does not route the record, and `verify`
/// reports it.
#[test]
fn a_record_forged_after_a_clean_stop_is_caught_and_not_routed() {
    let dir = scratch_dir("forged");
    let log = dir.join("sink.log");
    let (_sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    let cfg = binary_config(&dir, &[addr], "");
    let journal = dir.join("journal");
    let anchors = dir.join("anchors.log");
    run_and_stop(&cfg, &log, 0, 300);
    let seg = list_segments(&journal).unwrap().pop().unwrap().path;
    let (_, recs) = records(&seg);
    let last = parse_record(&recs.last().unwrap().1).unwrap();
    let frame = recs
        .iter()
        .map(|(_, raw)| parse_record(raw).unwrap())
        .find(|r| r.kind() == Some(RecordType::Frame))
        .unwrap();
    let meta = meta_pairs(&frame);
    let meta_ref: Vec<(u8, &[u8])> = meta.iter().map(|(t, v)| (*t, &v[..])).collect();
    let mut forged = Vec::new();
    encode_record(
        &mut forged,
        auditlb::journal::format::RecordHead {
            rtype: RecordType::Frame,
            flags: 0,
            seq: last.seq + 1,
            time_ns: last.time_ns + 1,
        },
        &meta_ref,
        b"<13>1 - host app - - - forged id=999999",
        &last.chain,
    );
    let mut p = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    std::fs::set_permissions(&seg, p).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes.extend_from_slice(&forged);
    std::fs::write(&seg, &bytes).unwrap();
    let (code, text) = verify_cli(&journal, &anchors);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("INSERTED"), "{text}");
    // The next run: alarm up, the forged frame not routed, new frames are.
    run_and_stop(&cfg, &log, 300, 300);
    assert!(
        !ids_in_log(&log, true).contains(&999_999),
        "a forged record was routed"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        bytes,
        "evidence kept as it was"
    );
    let alarm = std::fs::read_to_string(journal.join("ALARM")).unwrap();
    assert!(alarm.contains("INSERTED"), "{alarm}");
    let (code, text) = verify_cli(&journal, &anchors);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("INSERTED"), "{text}");
    let cat = bin()
        .args(["cat", "--format", "jsonl", "--journal"])
        .arg(&journal)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&cat.stdout).contains("\"type\":\"ALARM\""));
}

/// A small tmpfs mounted for one test (root only: CI runs as root), so the
/// journal meets a real full disk. Unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return None;
        }
        let d = scratch_dir("tmpfs");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&d)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed (as root)");
        Some(Tmpfs(d))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The disk fills up again and again while the writer appends, checkpoints
/// and rolls small segments: each failed write is retried (as the writer's
/// ticks and commits do) once some space is freed. No SEGMENT_END is
/// written twice, no epoch is sealed twice, nothing is lost: the journal
/// verifies with its seals and anchors and holds every frame once.
#[test]
fn a_disk_that_keeps_filling_up_never_breaks_the_chain() {
    use auditlb::journal::writer::Writer;
    let Some(fs) = Tmpfs::mount("640k") else {
        return;
    };
    let dir = scratch_dir("full-disk");
    let k0 = keygen(&dir);
    let journal = fs.0.join("journal");
    let cfg = auditlb::config::JournalConfig {
        dir: journal.clone(),
        anchors: Some(dir.join("anchors.log")),
        seal_key: Some(dir.join("keys/seal.key")),
        segment_size: auditlb::units::ByteSize(64 * 1024),
        ..auditlb::config::JournalConfig::default()
    };
    let metrics = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, metrics.journal(), &Default::default()).unwrap();
    // Fill the rest of the file system with 16 KiB files.
    let mut fillers = Vec::new();
    for i in 0.. {
        let p = fs.0.join(format!("filler{i}"));
        if std::fs::write(&p, vec![1u8; 16 * 1024]).is_err() {
            let _ = std::fs::remove_file(&p);
            break;
        }
        fillers.push(p);
    }
    let meta = std::sync::Arc::new(auditlb::frame::ConnMeta::new(
        1,
        "in".into(),
        "127.0.0.1:9".parse().unwrap(),
    ));
    let (mut sent, mut failures) = (0u64, 0u64);
    for round in 0..400u64 {
        let mut frames: Vec<auditlb::frame::Frame> = (0..10)
            .map(|i| {
                let body = format!("<13>1 - host app - - - {} id={}", "x".repeat(150), sent + i);
                auditlb::frame::Frame::new(bytes::Bytes::from(body), meta.clone())
            })
            .collect();
        sent += 10;
        w.append_frames("p", &mut frames);
        let r = w
            .flush()
            .and_then(|()| {
                if round % 3 == 0 {
                    w.checkpoint()
                } else {
                    Ok(())
                }
            })
            .and_then(|()| w.maybe_roll());
        if r.is_err() {
            failures += 1;
            // Ticks while the disk is full: more checkpoints and rolls are
            // tried, and fail too.
            let _ = w.checkpoint();
            let _ = w.maybe_roll();
            let _ = w.checkpoint();
            // An operator frees some space; the next commit retries.
            for _ in 0..2 {
                if let Some(p) = fillers.pop() {
                    std::fs::remove_file(p).unwrap();
                }
            }
            // Space for the next 16 KiB of journal, eventually: the
            // journal's own old segments are what fills the disk then.
            if fillers.is_empty() {
                break;
            }
        }
    }
    for p in fillers.drain(..) {
        std::fs::remove_file(p).unwrap();
    }
    w.close().unwrap();
    drop(w);
    assert!(failures >= 5, "the disk filled up only {failures} times");
    assert!(
        list_segments(&journal).unwrap().len() >= 3,
        "segments rolled"
    );
    let r = verify(&journal, Some(&dir.join("anchors.log")), Some(&k0)).unwrap();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
    assert_eq!(r.frames, sent, "every frame journaled once");
    eprintln!(
        "{failures} full-disk failures, {} segments, {} checkpoints, {sent} frames",
        r.segments, r.checkpoints
    );
}

/// A journal whose last run died at awkward moments still starts: a
/// segment file created without its header, one with only a header, and
/// damage in the first record of the newest segment.
#[test]
fn awkward_newest_segments_never_stop_auditlb_from_starting() {
    use auditlb::journal::writer::Writer;
    let (dir, cfg) = one_clean_run("awkward");
    let next = |dir: &Path| {
        let r = verify(dir, None, None).unwrap();
        r.last_seq.unwrap() + 1
    };
    // Created, then the crash: no header yet, or only part of it.
    for bytes in [&b""[..], &b"AUDITLB"[..]] {
        let seg = dir.join(format!("{:020}.seg", next(&dir)));
        std::fs::write(&seg, bytes).unwrap();
        let m = auditlb::metrics::Metrics::new();
        let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
        w.close().unwrap();
        drop(w);
        assert_eq!(m.sum("auditlb_journal_tamper_alarm", &[]), 0.0);
        let r = verify(&dir, None, None).unwrap();
        assert!(r.failure.is_none(), "{}", r.text());
        assert!(!r.recovered.is_empty(), "the removal is recorded");
    }
    // Damage in the first record of the newest segment: tampering, and
    // auditlb still starts (it used to try to reuse the file's name).
    let seg = list_segments(&dir).unwrap().pop().unwrap().path;
    let mut p = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    std::fs::set_permissions(&seg, p).unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[HEADER_LEN + 30] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let m = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.close().unwrap();
    assert_eq!(m.sum("auditlb_journal_tamper_alarm", &[]), 1.0);
    assert_eq!(std::fs::read(&seg).unwrap(), bytes, "evidence kept");
    let r = verify(&dir, None, None).unwrap();
    assert_eq!(class(&r), Some(Class::Modified), "{}", r.text());
}

/// A checkpoint claiming a huge epoch (crafted: re-chained by hand) does
/// not stall `verify --key` or the next start.
#[test]
fn a_crafted_huge_epoch_is_reported_at_once() {
    use auditlb::journal::writer::Writer;
    let dir = scratch_dir("huge-epoch");
    let k0 = keygen(&dir);
    let journal = dir.join("journal");
    let cfg = auditlb::config::JournalConfig {
        dir: journal.clone(),
        seal_key: Some(dir.join("keys/seal.key")),
        ..auditlb::config::JournalConfig::default()
    };
    let m = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.checkpoint().unwrap();
    drop(w);
    let seg = list_segments(&journal).unwrap().pop().unwrap().path;
    let (header, recs) = records(&seg);
    let h = Header::decode(&header).unwrap();
    let raws: Vec<Vec<u8>> = recs.into_iter().map(|(_, r)| r).collect();
    let forged = rechain(h.prev_chain, h.first_seq, &raws, |_, r, body| {
        if r.kind() == Some(RecordType::Checkpoint) || r.kind() == Some(RecordType::Heartbeat) {
            let mut cp = CheckpointBody::decode(body).unwrap();
            cp.epoch = u64::MAX - 5;
            *body = cp.encode().to_vec();
        }
    });
    let mut bytes = header.clone();
    bytes.extend_from_slice(&forged);
    std::fs::write(&seg, &bytes).unwrap();
    let t0 = std::time::Instant::now();
    let r = verify(&journal, None, Some(&k0)).unwrap();
    assert_eq!(class(&r), Some(Class::EpochGap), "{}", r.text());
    let m = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.close().unwrap();
    assert_eq!(m.sum("auditlb_journal_tamper_alarm", &[]), 1.0);
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
}

/// Links, FIFOs and devices named like segments are reported by `verify`
/// and never opened (a FIFO would hang it, /dev/zero exhaust its memory);
/// journal text in the report cannot drive the terminal.
#[test]
fn odd_files_named_like_segments_and_escape_sequences() {
    use auditlb::journal::writer::Writer;
    let (dir, cfg) = one_clean_run("odd");
    let link = dir.join(format!("{:020}.seg", 1_000_000));
    std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
    let r = verify(&dir, None, None).unwrap();
    let f = r.failure.expect("a link is reported");
    assert_eq!(f.class, Class::Modified);
    assert!(f.message.contains("not a regular file"), "{}", f.message);
    std::fs::remove_file(&link).unwrap();
    let fifo = dir.join(format!("{:020}.seg", 2_000_000));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let r = verify(&dir, None, None).unwrap();
    assert!(r.failure.unwrap().message.contains("not a regular file"));
    // The writer skips it too, and starts.
    let m = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.close().unwrap();
    std::fs::remove_file(&fifo).unwrap();
    // A RECOVERY reason with an escape sequence is shown escaped.
    let seg = list_segments(&dir).unwrap().pop().unwrap().path;
    let (header, recs) = records(&seg);
    let h = Header::decode(&header).unwrap();
    let raws: Vec<Vec<u8>> = recs.into_iter().map(|(_, r)| r).collect();
    let mut extra = Vec::new();
    let last = parse_record(raws.last().unwrap()).unwrap();
    encode_record(
        &mut extra,
        auditlb::journal::format::RecordHead {
            rtype: RecordType::Recovery,
            flags: 0,
            seq: last.seq + 1,
            time_ns: 0,
        },
        &[(
            auditlb::journal::format::tag::REASON,
            b"\x1b]0;pwned\x07\x1b[2J",
        )],
        &[0; 48],
        &last.chain,
    );
    let mut p = std::fs::metadata(&seg).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    p.set_readonly(false);
    std::fs::set_permissions(&seg, p).unwrap();
    let mut bytes = header;
    for r in &raws[..raws.len() - 1] {
        bytes.extend_from_slice(r);
    }
    // Keep the chain: re-chain everything after the header with the new
    // record before the final checkpoint.
    let mut all: Vec<Vec<u8>> = raws[..raws.len() - 1].to_vec();
    all.push(extra);
    let chained = rechain(h.prev_chain, h.first_seq, &all, |_, _, _| {});
    let mut bytes2 = Header::decode(&bytes).unwrap().encode().to_vec();
    bytes2.extend_from_slice(&chained);
    std::fs::write(&seg, &bytes2).unwrap();
    let out = bin()
        .args(["verify", "--journal"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TORN_TAIL_RECOVERED"), "{text}");
    assert!(!text.contains('\x1b'), "{text:?}");
    assert!(text.contains("\\x1b"), "{text}");
}

/// An intruder edits a journaled frame that was never delivered (auditlb
/// was killed while its backend was down). At the next start the alarm is
/// raised, the frames before the damage are delivered, the edited one and
/// those after it in that segment are not routed, and new traffic flows.
#[test]
fn an_edited_undelivered_frame_is_not_routed() {
    let dir = scratch_dir("edited");
    let log = dir.join("sink.log");
    let (mut sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    sink.kill9();
    let cfg = binary_config(&dir, &[addr], "");
    let journal = dir.join("journal");
    let (mut p, listen) = spawn_auditlb(&cfg);
    let out = gen_ids(listen, 1, 1000, &[]);
    assert!(out.contains("sent=1000"), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while journaled_ids(&journal).len() < 1000 {
        assert!(std::time::Instant::now() < deadline, "not journaled");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A checkpoint after the frames, then the crash.
    std::thread::sleep(Duration::from_millis(600));
    p.kill9();
    let seg = list_segments(&journal).unwrap().pop().unwrap().path;
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = bytes.windows(7).position(|w| w == b" id=500").unwrap() - 3;
    bytes[at] ^= 0x01;
    std::fs::write(&seg, &bytes).unwrap();
    // A first start with the backend still down finds the damage in the
    // newest segment; at the second start that segment is an older one,
    // and its edited frame must still not be routed.
    let (mut p, _) = spawn_auditlb(&cfg);
    p.signal(libc::SIGTERM);
    assert!(p.child.wait().unwrap().success());
    let (_sink, _) = spawn_sink(&addr.to_string(), "octet", &log, &[]);
    let (mut p, listen) = spawn_auditlb(&cfg);
    let out = gen_ids(listen, 1, 100, &["--id-base", "5000"]);
    assert!(out.contains("sent=100"), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got: std::collections::HashSet<u64> = ids_in_log(&log, true).into_iter().collect();
        if (0..500).chain(5000..5100).all(|i| got.contains(&i)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "frames before the damage or new ones missing"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    p.signal(libc::SIGTERM);
    assert!(p.child.wait().unwrap().success());
    let got = ids_in_log(&log, true);
    assert!(
        !got.iter().any(|i| (500..1000).contains(i)),
        "frames at or after the damage were routed"
    );
    let alarm = std::fs::read_to_string(journal.join("ALARM")).unwrap();
    assert!(alarm.contains("MODIFIED"), "{alarm}");
}

/// The anchors file and the seal key as a crash or an intruder leaves
/// them: a torn anchor line is closed and the journal still verifies; a key
/// ahead of the journal (checkpoints cut away) raises the alarm; FIFOs at
/// the anchors path or named ALARM never hang a start; a segment file
/// being created when the process died is not called tampering by verify;
/// a file named for a seq near u64::MAX is not a segment.
#[test]
fn anchors_keys_and_odd_files_as_crashes_and_intruders_leave_them() {
    use auditlb::journal::writer::Writer;
    let dir = scratch_dir("anchors-keys");
    let k0 = keygen(&dir);
    let journal = dir.join("journal");
    let anchors = dir.join("anchors.log");
    let cfg = auditlb::config::JournalConfig {
        dir: journal.clone(),
        anchors: Some(anchors.clone()),
        seal_key: Some(dir.join("keys/seal.key")),
        ..auditlb::config::JournalConfig::default()
    };
    let run = |checkpoints: usize| {
        let m = auditlb::metrics::Metrics::new();
        let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
        for _ in 0..checkpoints {
            w.checkpoint().unwrap();
        }
        w.close().unwrap();
        m.sum("auditlb_journal_tamper_alarm", &[])
    };
    assert_eq!(run(2), 0.0);
    // A crash while appending an anchor line: cut 40 bytes into the last.
    let text = std::fs::read_to_string(&anchors).unwrap();
    let last_start = text[..text.len() - 1].rfind('\n').unwrap() + 1;
    std::fs::write(&anchors, &text[..last_start + 40]).unwrap();
    assert_eq!(run(1), 0.0);
    let r = verify(&journal, Some(&anchors), Some(&k0)).unwrap();
    assert_eq!(r.exit_code(), 0, "{}", r.text());
    // A segment being created when the process died: not tampering.
    let next = r.last_seq.unwrap() + 1;
    let creating = journal.join(format!("{next:020}.seg"));
    std::fs::write(&creating, b"AUDITLBJ").unwrap();
    let r = verify(&journal, Some(&anchors), Some(&k0)).unwrap();
    assert!(r.failure.is_none(), "{}", r.text());
    assert_eq!(r.exit_code(), 2);
    std::fs::remove_file(&creating).unwrap();
    // An intruder cuts the last checkpoints (and their anchor lines): the
    // seal key is ahead of the journal.
    let seg = list_segments(&journal).unwrap().pop().unwrap().path;
    std::fs::remove_file(&seg).unwrap();
    let lines: Vec<&str> = std::fs::read_to_string(&anchors)
        .unwrap()
        .leak()
        .lines()
        .collect();
    std::fs::write(&anchors, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    assert_eq!(run(0), 1.0, "a key ahead of the journal raises the alarm");
    assert!(std::fs::read_to_string(journal.join("ALARM"))
        .unwrap()
        .contains("seal key is at epoch"));
    // Special files never hang a start.
    std::fs::remove_file(journal.join("ALARM")).unwrap();
    let fifo = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    fifo(&journal.join("ALARM"));
    let m = auditlb::metrics::Metrics::new();
    let w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    drop(w);
    std::fs::remove_file(journal.join("ALARM")).unwrap();
    let fifo_anchors = dir.join("fifo-anchors");
    fifo(&fifo_anchors);
    let bad = auditlb::config::JournalConfig {
        anchors: Some(fifo_anchors.clone()),
        ..cfg.clone()
    };
    assert!(Writer::open(&bad, m.journal(), &Default::default()).is_err());
    assert!(verify(&journal, Some(&fifo_anchors), None).is_err());
    // A file named for a seq near u64::MAX is no segment of the journal.
    std::fs::write(journal.join(format!("{:020}.seg", u64::MAX)), b"x").unwrap();
    let m = auditlb::metrics::Metrics::new();
    let mut w = Writer::open(&cfg, m.journal(), &Default::default()).unwrap();
    w.close().unwrap();
}

/// A stopped auditlb whose journal holds `n` ids (0..n), journaled while
/// its backend was down (`backend_down`) or delivered; the backend's
/// address and log, the config, journal and anchors paths.
struct Stopped {
    log: PathBuf,
    addr: std::net::SocketAddr,
    cfg: PathBuf,
    journal: PathBuf,
    anchors: PathBuf,
}

fn run_then_stop(name: &str, n: u64, backend_down: bool) -> Stopped {
    let dir = scratch_dir(name);
    let log = dir.join("sink.log");
    let (mut sink, addr) = spawn_sink("127.0.0.1:0", "octet", &log, &[]);
    if backend_down {
        sink.kill9();
    }
    let cfg = binary_config(&dir, &[addr], "");
    let journal = dir.join("journal");
    let (mut p, listen) = spawn_auditlb(&cfg);
    assert!(gen_ids(listen, 1, n, &[]).contains(&format!("sent={n}")));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (journaled_ids(&journal).len() as u64) < n {
        assert!(std::time::Instant::now() < deadline, "not journaled");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal(libc::SIGTERM);
    assert!(p.child.wait().unwrap().success());
    sink.kill9();
    Stopped {
        log,
        addr,
        cfg,
        journal,
        anchors: dir.join("anchors.log"),
    }
}

/// An intruder adds a whole segment after a clean stop, chained onto the
/// FINAL checkpoint: a frame to route, or a cursor that would skip what
/// waits in the journal. A run always anchors a checkpoint before anything
/// else, and this segment has none: the next start moves it out of the
/// journal (kept as evidence), raises the alarm, routes nothing of it, and
/// `verify` fails for good.
#[test]
fn a_segment_forged_after_a_clean_stop_is_quarantined_not_routed() {
    for forged in ["frame", "cursor"] {
        // For the cursor, frames wait in the journal: the backend is down.
        let Stopped {
            log,
            addr,
            cfg,
            journal,
            anchors,
        } = run_then_stop(&format!("forged-seg-{forged}"), 200, forged == "cursor");
        // The forged segment, linked to the FINAL checkpoint.
        let seg = list_segments(&journal).unwrap().pop().unwrap().path;
        let (header, recs) = records(&seg);
        let h = Header::decode(&header).unwrap();
        let last = parse_record(&recs.last().unwrap().1).unwrap();
        let first = last.seq + 1;
        let no = h.segment_no + 1;
        let mut bytes = Header {
            journal_id: h.journal_id,
            segment_no: no,
            first_seq: first,
            prev_chain: last.chain,
        }
        .encode()
        .to_vec();
        let mut start = [0u8; 24];
        start[..8].copy_from_slice(&no.to_be_bytes());
        start[8..].copy_from_slice(&h.journal_id);
        let head = |t, seq| auditlb::journal::format::RecordHead {
            rtype: t,
            flags: 0,
            seq,
            time_ns: last.time_ns + 1,
        };
        let mut c = encode_record(
            &mut bytes,
            head(RecordType::SegmentStart, first),
            &[],
            &start,
            &last.chain,
        );
        let pool = auditlb::journal::format::tag::POOL;
        if forged == "frame" {
            c = encode_record(
                &mut bytes,
                head(RecordType::Frame, first + 1),
                &[(pool, b"p")],
                b"<13>1 - host app - - - forged id=999999",
                &c,
            );
        } else {
            c = encode_record(
                &mut bytes,
                head(RecordType::Cursor, first + 1),
                &[(pool, b"p")],
                &(first + 100).to_be_bytes(),
                &c,
            );
        }
        encode_record(
            &mut bytes,
            head(RecordType::SegmentEnd, first + 2),
            &[],
            &no.to_be_bytes(),
            &c,
        );
        std::fs::write(journal.join(format!("{first:020}.seg")), &bytes).unwrap();
        // An auditor sees it before any restart.
        let (code, text) = verify_cli(&journal, &anchors);
        assert_eq!(code, 1, "{forged}: {text}");
        assert!(text.contains("INSERTED"), "{forged}: {text}");
        // The next run, with the backend (back) up.
        let (_sink2, _) = spawn_sink(&addr.to_string(), "octet", &log, &[]);
        let (mut p, listen) = spawn_auditlb(&cfg);
        assert!(gen_ids(listen, 1, 100, &["--id-base", "1000"]).contains("sent=100"));
        let want: Vec<u64> = (0..200).chain(1000..1100).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let got: std::collections::HashSet<u64> = ids_in_log(&log, true).into_iter().collect();
            if want.iter().all(|i| got.contains(i)) {
                assert!(
                    !got.contains(&999_999),
                    "{forged}: a forged frame was routed"
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{forged}: frames waiting in the journal were not delivered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p.signal(libc::SIGTERM);
        assert!(p.child.wait().unwrap().success());
        let alarm = std::fs::read_to_string(journal.join("ALARM")).unwrap();
        assert!(alarm.contains("INSERTED"), "{forged}: {alarm}");
        assert!(
            std::fs::read_dir(&journal).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("quarantined")),
            "{forged}: the forged segment is kept aside"
        );
        let (code, text) = verify_cli(&journal, &anchors);
        assert_eq!(code, 1, "{forged}: {text}");
    }
}

/// An intruder rewrites the last segment of a cleanly stopped run (an
/// undelivered frame changed, every record re-chained), with or without an
/// empty segment after it. The anchors contradict the rewritten run: the
/// next start moves it out of the journal and routes none of it.
#[test]
fn a_rewritten_run_is_quarantined_not_routed() {
    for extra_segment in [false, true] {
        let Stopped {
            log,
            addr,
            cfg,
            journal,
            anchors,
        } = run_then_stop("rewritten", 200, true);
        let seg = list_segments(&journal).unwrap().pop().unwrap().path;
        let (header, recs) = records(&seg);
        let h = Header::decode(&header).unwrap();
        let raws: Vec<Vec<u8>> = recs.into_iter().map(|(_, r)| r).collect();
        let rewritten = rechain(h.prev_chain, h.first_seq, &raws, |_, r, body| {
            if r.kind() == Some(RecordType::Frame) && body.ends_with(b" id=150") {
                let n = body.len();
                body.truncate(n - 3);
                body.extend_from_slice(b"777777");
            }
        });
        let mut bytes = header.clone();
        bytes.extend_from_slice(&rewritten);
        let mut perm = std::fs::metadata(&seg).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        std::fs::set_permissions(&seg, perm).unwrap();
        std::fs::write(&seg, &bytes).unwrap();
        if extra_segment {
            let (last_seq, last_chain) = Records::new(&bytes)
                .map(|s| s.unwrap().1)
                .last()
                .map(|r| (r.seq, r.chain))
                .unwrap();
            let no = h.segment_no + 1;
            let mut b = Header {
                journal_id: h.journal_id,
                segment_no: no,
                first_seq: last_seq + 1,
                prev_chain: last_chain,
            }
            .encode()
            .to_vec();
            let mut start = [0u8; 24];
            start[..8].copy_from_slice(&no.to_be_bytes());
            start[8..].copy_from_slice(&h.journal_id);
            let head = |t, seq| auditlb::journal::format::RecordHead {
                rtype: t,
                flags: 0,
                seq,
                time_ns: 1,
            };
            let c = encode_record(
                &mut b,
                head(RecordType::SegmentStart, last_seq + 1),
                &[],
                &start,
                &last_chain,
            );
            encode_record(
                &mut b,
                head(RecordType::SegmentEnd, last_seq + 2),
                &[],
                &no.to_be_bytes(),
                &c,
            );
            std::fs::write(journal.join(format!("{:020}.seg", last_seq + 1)), &b).unwrap();
        }
        let (_sink2, _) = spawn_sink(&addr.to_string(), "octet", &log, &[]);
        let (mut p, listen) = spawn_auditlb(&cfg);
        assert!(gen_ids(listen, 1, 100, &["--id-base", "1000"]).contains("sent=100"));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !(1000..1100).all(|i| ids_in_log(&log, true).contains(&i)) {
            assert!(
                std::time::Instant::now() < deadline,
                "new traffic did not flow"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p.signal(libc::SIGTERM);
        assert!(p.child.wait().unwrap().success());
        assert!(
            !ids_in_log(&log, true).contains(&777_777),
            "extra segment {extra_segment}: a rewritten frame was routed"
        );
        let alarm = std::fs::read_to_string(journal.join("ALARM")).unwrap();
        assert!(alarm.contains("MODIFIED"), "{alarm}");
        assert_eq!(verify_cli(&journal, &anchors).0, 1);
    }
}

/// `auditlb_journal_durable_seq` follows the sync policy's promise (what a
/// RELP acknowledgement waits for): after the fdatasync that covers a
/// record (`always`, `interval`) or after its write (`os`), up to the last
/// frame of a burst.
#[test]
fn the_durable_seq_reaches_every_frame_under_each_sync_policy() {
    for policy in ["always", "interval", "os"] {
        let dir = scratch_dir(&format!("durable-{policy}"));
        let sink_log = dir.join("sink.log");
        let (_sink, backend) = spawn_sink("127.0.0.1:0", "octet", &sink_log, &[]);
        let cfg = TestConfig::at(&dir)
            .backend_addrs(&[backend])
            .admin("127.0.0.1:0")
            .journal(&format!("sync = \"{policy}\""))
            .write();
        let (mut lb, log) = spawn_auditlb_logged(&cfg);
        let addr = log.wait_addr("listening", None);
        let admin = log.wait_addr("admin endpoint", None);
        gen_ids(addr, 2, 2_000, &[]);
        wait_all_ids(&[&sink_log], 2_000, 60);
        // Every frame is journaled before it is routed: the last one's seq
        // is at least the frames plus the run's opening records.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let durable = scraped(admin, "auditlb_journal_durable_seq").unwrap_or(0.0);
            if durable >= 2_000.0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{policy}: durable seq stayed at {durable}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        lb.kill9();
    }
}
