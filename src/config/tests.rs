use super::*;

const GOOD: &str = r#"
[[listener]]
name = "syslog"
address = "127.0.0.1:0"
pool = "siem"

[[pool]]
name = "siem"
[[pool.backend]]
address = "127.0.0.1:5141"
"#;

#[test]
fn reload_blockers_name_what_needs_a_restart() {
    let old = Config::parse(GOOD).unwrap();
    let ok = Config::parse(&GOOD.replace("5141", "5142")).unwrap();
    assert!(old.reload_blockers(&ok).is_empty());
    let journal = Config::parse(&format!("[journal]\nsync = \"always\"\n{GOOD}")).unwrap();
    assert_eq!(
        old.reload_blockers(&journal),
        ["journal: the journal settings change only at a restart"]
    );
    let admin = Config::parse(&format!("[admin]\naddress = \"127.0.0.1:9\"\n{GOOD}")).unwrap();
    assert!(old.reload_blockers(&admin)[0].starts_with("admin:"));
    let to_mirror =
        Config::parse(&GOOD.replace("name = \"siem\"", "name = \"siem\"\nbalance = \"mirror\""))
            .unwrap();
    assert!(old.reload_blockers(&to_mirror)[0].starts_with("pool[0].balance:"));
    // A mirror pool reloads its health settings, nothing else.
    let health =
        Config::parse(&format!("{}\n[pool.health]\nrise = 5\n", to_mirror_text())).unwrap();
    let mirror = Config::parse(&to_mirror_text()).unwrap();
    assert!(mirror.reload_blockers(&health).is_empty());
    let moved = Config::parse(&to_mirror_text().replace("5141", "5142")).unwrap();
    assert!(mirror.reload_blockers(&moved)[0].starts_with("pool[0]: mirror pool"));
}

fn to_mirror_text() -> String {
    GOOD.replace("name = \"siem\"", "name = \"siem\"\nbalance = \"mirror\"")
}

#[test]
fn minimal_config_has_defaults() {
    let c = Config::parse(GOOD).unwrap();
    c.validate().unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.framing, Framing::Auto);
    assert_eq!(l.max_frame.0, 65536);
    assert_eq!(l.oversize, Oversize::Truncate);
    let p = &c.pools[0];
    assert_eq!(p.balance, Balance::RoundRobin);
    assert_eq!(p.framing, OutFraming::OctetCounted);
    assert_eq!(p.health.rise, 2);
    assert_eq!(p.health.fall, 3);
    assert_eq!(p.backends[0].weight, 1);
}

#[test]
fn unknown_key_is_an_error_naming_the_key() {
    let text = GOOD.replace("pool = \"siem\"", "pool = \"siem\"\ncolour = \"blue\"");
    let e = Config::parse(&text).unwrap_err();
    assert!(e.contains("colour"), "{e}");
}

#[test]
fn every_problem_is_reported_with_its_path() {
    let text = r#"
[[listener]]
name = "a"
address = "127.0.0.1:6514"
pool = "nope"
[[listener]]
name = "a"
address = "127.0.0.1:6514"
pool = "p"
[[listener]]
name = "b"
address = "localhost-ish"
pool = "p"

[[pool]]
name = "p"
balance = "round-robin"
hash-key = "hostname"
[pool.health]
rise = 0
fall = 0
[[pool.backend]]
address = "127.0.0.1:1"
weight = 0
[[pool.backend]]
address = "127.0.0.1:1"

[[pool]]
name = "empty"
"#;
    let c = Config::parse(text).unwrap();
    let errs = c.validate().unwrap_err();
    let all = errs.join("\n");
    for want in [
        "listener[0].pool: unknown pool \"nope\"",
        "listener[1].name: duplicate listener name",
        "listener[1].address: 127.0.0.1:6514 is used by another listener",
        "listener[2].address: \"localhost-ish\" is not an IP:PORT",
        "pool[0].hash-key: only used with balance = \"hash\"",
        "pool[0].health.rise: must be at least 1",
        "pool[0].health.fall: must be at least 1",
        "pool[0].backend[0].weight: must be between 1 and 1000",
        "pool[0].backend[1].address: 127.0.0.1:1 appears twice",
        "pool[1].backend: pool \"empty\" has no backends",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

/// Values serde accepts but the running server cannot hold: tokio's
/// `Semaphore::new` panics past `MAX_PERMITS` (2^61 - 1), and the
/// dispatcher's `connections * queue-bytes` overflows a u64. `check`
/// must refuse them, naming the key.
#[test]
fn limits_the_server_cannot_hold_are_refused_by_key() {
    let text = GOOD.replace(
        "pool = \"siem\"",
        "pool = \"siem\"\nmax-connections = 2305843009213693952\nmax-connections-per-source = 9223372036854775807",
    );
    let mut c = Config::parse(&text).unwrap();
    assert!(c.listeners[0].max_connections > tokio::sync::Semaphore::MAX_PERMITS);
    c.pools[0].queue_bytes = ByteSize(u64::MAX / 2);
    let errs = c.validate().unwrap_err().join("\n");
    for want in [
        "listener[0].max-connections: 2305843009213693952 is out of range (1 to 1000000)",
        "listener[0].max-connections-per-source: 9223372036854775807 is out of range (1 to 1000000)",
        "pool[0].queue-bytes: 9223372036854775807 bytes is out of range (4KiB to 1GiB)",
    ] {
        assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
    }

    // The ceilings themselves are fine, and fit what they feed.
    let mut c = Config::parse(GOOD).unwrap();
    c.listeners[0].max_connections = MAX_CONNECTIONS_CEILING;
    c.listeners[0].max_connections_per_source = Some(MAX_CONNECTIONS_CEILING);
    c.pools[0].queue_bytes = ByteSize(QUEUE_BYTES_CEILING);
    c.validate().unwrap();
    let _ = tokio::sync::Semaphore::new(MAX_CONNECTIONS_CEILING);
    assert!(QUEUE_BYTES_CEILING.checked_mul(64).is_some());
    c.listeners[0].max_connections = MAX_CONNECTIONS_CEILING + 1;
    c.listeners[0].max_connections_per_source = Some(0);
    let errs = c.validate().unwrap_err().join("\n");
    assert!(
        errs.contains("listener[0].max-connections: 1000001 is out of range"),
        "{errs}"
    );
    assert!(
        errs.contains("listener[0].max-connections-per-source: 0 is out of range"),
        "{errs}"
    );
}

/// A name lands in the meta of every journal record (64KiB at most for
/// all of it), so a huge one is refused, not written.
#[test]
fn names_are_bounded() {
    let mut c = Config::parse(GOOD).unwrap();
    c.listeners[0].name = "l".repeat(MAX_NAME_BYTES);
    c.validate().unwrap();
    c.listeners[0].name = "l".repeat(40_000);
    c.pools[0].name = "p".repeat(40_000);
    c.listeners[0].pool = c.pools[0].name.clone();
    let errs = c.validate().unwrap_err().join("\n");
    assert!(
        errs.contains("listener[0].name: 40000 bytes long, at most 128"),
        "{errs}"
    );
    assert!(
        errs.contains("pool[0].name: 40000 bytes long, at most 128"),
        "{errs}"
    );
}

/// Huge numbers in durations and sizes are parse errors naming the key,
/// never an overflow.
#[test]
fn huge_durations_and_sizes_are_parse_errors() {
    for (key, value) in [
        ("idle-timeout", "\"99999999999999999999d\""),
        ("idle-timeout", "\"3651d\""),
        ("frame-timeout", &format!("\"{}s\"", "9".repeat(400))),
        ("max-frame", "\"99999999999999999999TiB\""),
        ("max-frame", "\"18446744073709551616\""),
        ("max-frame", &format!("\"{}\"", "9".repeat(400))),
        ("max-frame", "-1"),
        ("max-connections", "-1"),
        ("max-connections", "99999999999999999999"),
        ("backlog", "4294967296"),
    ] {
        let text = GOOD.replace(
            "pool = \"siem\"",
            &format!("pool = \"siem\"\n{key} = {value}"),
        );
        let e = Config::parse(&text).unwrap_err();
        assert!(e.contains(key), "{key} = {value}: {e}");
    }
}

#[test]
fn bad_duration_and_size_are_parse_errors() {
    let text = GOOD.replace("pool = \"siem\"", "pool = \"siem\"\nmax-frame = \"lots\"");
    assert!(Config::parse(&text).unwrap_err().contains("max-frame"));
    let text = GOOD.replace("pool = \"siem\"", "pool = \"siem\"\nidle-timeout = 5");
    assert!(Config::parse(&text).unwrap_err().contains("idle-timeout"));
}

#[test]
fn retention_and_archive_are_checked_by_key_path() {
    let with = |journal: &str| Config::parse(&format!("[journal]\n{journal}\n{GOOD}")).unwrap();
    let c = with("[journal.archive]\nurl = \"s3://b/p/\"\nobject-lock-days = 30\n[journal.retention]\nmax-age = \"30d\"");
    c.validate().unwrap();
    let a = c.journal.archive.as_ref().unwrap();
    assert_eq!(a.object_lock_days, Some(30));
    let r = c.journal.retention.as_ref().unwrap();
    assert_eq!(
        r.max_age.unwrap().0,
        std::time::Duration::from_secs(30 * 86400)
    );
    assert!(r.keep_undelivered && r.require_archived);
    let problems = |journal: &str| with(journal).validate().unwrap_err();
    assert!(problems("[journal.retention]\nkeep-undelivered = false")
        .iter()
        .any(|e| e.starts_with("journal.retention: set max-age")));
    assert!(
        problems("disk-budget = \"1GiB\"\n[journal.retention]\nmax-bytes = \"2GiB\"")
            .iter()
            .any(|e| e.starts_with("journal.retention.max-bytes:"))
    );
    for url in ["bucket/x", "ftp://h/x", "s3:///x", "file://relative"] {
        let p = problems(&format!("[journal.archive]\nurl = \"{url}\""));
        assert!(
            p.iter().any(|e| e.starts_with("journal.archive.url:")),
            "{url}: {p:?}"
        );
    }
    assert!(Config::parse(&format!(
        "[journal]\n[journal.retention]\nmax-age = \"1d\"\nkeep = 1\n{GOOD}"
    ))
    .is_err());
}
