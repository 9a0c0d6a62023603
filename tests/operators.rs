//! The operators' files in `conf/`: the Prometheus alert rules
//! (`alerts.yml`), their unit tests (`alerts_test.yml`) and the Grafana
//! dashboard (`grafana-dashboard.json`). promtool checks the rules and runs
//! their tests, and every metric name those files use must be one auditlb
//! exports, so a metric renamed without them fails here.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::*;

/// The files that name auditlb metrics, from the crate root.
const OPERATOR_FILES: [&str; 3] = [
    "conf/alerts.yml",
    "conf/alerts_test.yml",
    "conf/grafana-dashboard.json",
];

/// Families a plain listener and pool never show in a scrape: their label
/// sets are only created by an event or by TLS material, and the prometheus
/// crate leaves a vector with no children out of a scrape altogether (HELP
/// and TYPE lines too). They are RELP refusals to clients (the reason is
/// known when one happens), TLS handshakes, failures and waits (per version
/// or reason, on a TLS listener) and the expiry of loaded certificates (TLS
/// material only). These are checked against src/metrics.rs alone; each must
/// still be defined there.
const EVENT_ONLY: [&str; 5] = [
    "auditlb_relp_nacks_total",
    "auditlb_tls_handshakes_total",
    "auditlb_tls_handshake_failures_total",
    "auditlb_tls_handshake_waits_total",
    "auditlb_tls_cert_expiry_seconds",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the crate, by its path from the crate root.
fn read(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool args` in the crate root: (passed, what it said).
fn promtool(args: &[&str]) -> (bool, String) {
    let out = match Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool not found: apt-get install prometheus (Debian's package ships promtool; scripts/test installs it)"
        ),
        Err(e) => panic!("promtool {args:?}: {e}"),
    };
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn is_metric_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// The series names auditlb can export, read from the metric definitions in
/// src/metrics.rs: the name is the first argument of `counter(&r, ..)`,
/// `gauge(&r, ..)`, `single_counter(..)`, `single_gauge(..)`, `Opts::new(..)`
/// or `HistogramOpts::new(..)` when that is a string literal, with the
/// registry's `auditlb_` prefix; a histogram is its `_bucket`, `_sum` and
/// `_count` series (its bare name is no series).
fn declared_series(src: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for marker in ["counter(", "gauge(", "Opts::new("] {
        for (at, _) in src.match_indices(marker) {
            let rest = src[at + marker.len()..].trim_start();
            let rest = rest.strip_prefix("&r,").map_or(rest, str::trim_start);
            let Some(literal) = rest.strip_prefix('"') else {
                continue;
            };
            let name = &literal[..literal.find('"').expect("a closed string literal")];
            assert!(
                !name.is_empty() && name.chars().all(is_metric_char),
                "src/metrics.rs: {name:?} is not a metric name"
            );
            if src[..at].ends_with("Histogram") {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("auditlb_{name}{suffix}"));
                }
            } else {
                out.insert(format!("auditlb_{name}"));
            }
        }
    }
    out
}

/// The series names of a Prometheus text exposition.
fn scraped_series(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `auditlb_<name>` in `text` with the (1-based) line it is first on.
fn referenced(text: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("auditlb_") {
            let glued = line[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if glued {
                continue;
            }
            let name: String = line[at..]
                .chars()
                .take_while(|&c| is_metric_char(c))
                .collect();
            if name.len() > "auditlb_".len() {
                out.entry(name).or_insert(n + 1);
            }
        }
    }
    out
}

#[test]
fn alert_rules_pass_promtool_check() {
    let (ok, out) = promtool(&["check", "rules", "conf/alerts.yml"]);
    assert!(ok, "promtool check rules conf/alerts.yml:\n{out}");
}

#[test]
fn alert_rules_pass_their_unit_tests() {
    let (ok, out) = promtool(&["test", "rules", "conf/alerts_test.yml"]);
    assert!(ok, "promtool test rules conf/alerts_test.yml:\n{out}");
}

/// Each alert has a `for:`, a severity, a summary and a description, and
/// some test case in alerts_test.yml expects it to fire (promtool passes a
/// test file that never mentions an alert).
#[test]
fn every_alert_is_complete_and_fires_in_a_test() {
    let rules = read("conf/alerts.yml");
    let tests = read("conf/alerts_test.yml");
    let mut names = BTreeSet::new();
    for block in rules.split("- alert: ").skip(1) {
        let name = block
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        for key in ["expr:", "for:", "severity:", "summary:", "description:"] {
            assert!(
                block.contains(key),
                "alert {name} in conf/alerts.yml has no {key}"
            );
        }
        names.insert(name);
    }
    assert!(
        names.len() >= 15,
        "conf/alerts.yml has only {} alerts: {names:?}",
        names.len()
    );
    let mut fired = BTreeSet::new();
    let mut current: Option<&str> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            current = Some(name.trim());
        } else if line.starts_with("- exp_labels:") {
            if let Some(name) = current {
                fired.insert(name.to_owned());
            }
        }
    }
    let never: Vec<&String> = names.iter().filter(|n| !fired.contains(*n)).collect();
    assert!(
        never.is_empty(),
        "conf/alerts_test.yml never expects these alerts to fire: {never:?}"
    );
    let unknown: Vec<&String> = fired.iter().filter(|n| !names.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "conf/alerts_test.yml tests alerts conf/alerts.yml does not have: {unknown:?}"
    );
}

/// The dashboard is JSON (python3's parser: serde_json is no dependency of
/// this crate), at the schema it was written for, and every panel queries
/// the data source the dashboard's `datasource` variable picks.
#[test]
fn grafana_dashboard_is_json_on_a_datasource_variable() {
    let path = root().join("conf/grafana-dashboard.json");
    let out = match Command::new("python3")
        .args(["-m", "json.tool"])
        .arg(&path)
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("python3 not found (it checks the dashboard's JSON): apt-get install python3")
        }
        Err(e) => panic!("python3 -m json.tool {}: {e}", path.display()),
    };
    assert!(
        out.status.success(),
        "{} is not valid JSON: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = read("conf/grafana-dashboard.json");
    for want in [
        "\"schemaVersion\": 39",
        "\"type\": \"datasource\"",
        "\"name\": \"datasource\"",
        "\"expr\": ",
    ] {
        assert!(text.contains(want), "the dashboard has no {want}");
    }
    // No data source fixed by uid: only the variable, Grafana's own (for
    // the built-in annotations) and the dashboard's uid.
    for (at, _) in text.match_indices("\"uid\": \"") {
        let value = text[at + 8..].split('"').next().unwrap_or_default();
        assert!(
            ["${datasource}", "-- Grafana --", "auditlb-overview"].contains(&value),
            "the dashboard names uid {value:?}: use the ${{datasource}} variable"
        );
    }
    let exprs = text.matches("\"expr\": ").count();
    assert!(exprs >= 40, "the dashboard has only {exprs} queries");
}

/// Every metric the alert rules, their tests and the dashboard name is one
/// auditlb defines, and shows in a scrape of a running auditlb unless it is
/// one of the [`EVENT_ONLY`] families.
///
/// Two sources, because neither is enough alone: a scrape shows a labelled
/// family only once one of its label sets exists (a plain listener and pool
/// never create the TLS ones, nor a RELP refusal's), while the definitions'
/// source text shows every family but is read by a simple scan. So names
/// are checked against the scan of src/metrics.rs, the scan is checked to
/// cover everything the scrape shows (a metric defined some other way or
/// elsewhere fails here, rather than being missed), and every name the
/// files use must also be in the scrape unless it is listed as event-only.
#[tokio::test]
async fn every_metric_the_rules_and_dashboard_use_is_exported() {
    let declared = declared_series(&read("src/metrics.rs"));
    assert!(
        declared.len() >= 50,
        "found only {} metric definitions in src/metrics.rs (has the way metrics are defined changed?): {declared:?}",
        declared.len()
    );

    // One plain listener, one pool of one backend, no TLS, some traffic.
    let dir = scratch_dir("operators");
    let served = serve(&dir, |c| c.admin("127.0.0.1:0")).await;
    send_lf(served.addr, &lines("ops", 0..10)).await;
    wait_for(5.0, "10 frames at the backend", || {
        served.sink.count() == 10
    })
    .await;
    let admin = served.server.admin_addr().expect("an admin endpoint");
    let response = http_get(admin, "/metrics").await;
    served.server.shutdown().await;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_else(|| panic!("no HTTP body in {response:?}"));
    let scraped = scraped_series(body);
    assert!(
        scraped.contains("auditlb_frames_in_total"),
        "not a scrape of auditlb:\n{body}"
    );

    let undeclared: Vec<&String> = scraped.difference(&declared).collect();
    assert!(
        undeclared.is_empty(),
        "series in a scrape that the scan of src/metrics.rs did not find (defined elsewhere, or some other way: teach declared_series): {undeclared:?}"
    );
    for name in EVENT_ONLY {
        assert!(
            declared.contains(name),
            "{name} is listed in EVENT_ONLY but src/metrics.rs does not define it"
        );
    }

    let mut problems = Vec::new();
    for file in OPERATOR_FILES {
        let refs = referenced(&read(file));
        assert!(!refs.is_empty(), "{file} names no auditlb metric");
        for (name, line) in refs {
            if !declared.contains(&name) {
                problems.push(format!(
                    "{file}:{line}: {name} is not a series auditlb defines"
                ));
            } else if !scraped.contains(&name) && !EVENT_ONLY.contains(&name.as_str()) {
                problems.push(format!(
                    "{file}:{line}: {name} is defined but not in a scrape of a running auditlb"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metric names in conf/ that auditlb does not export:\n{}\n(src/metrics.rs defines: {declared:?})",
        problems.join("\n")
    );
}
