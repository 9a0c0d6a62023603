//! Every counter auditlb keeps, in one `prometheus::Registry` served on the
//! admin `/metrics`. Components resolve their label sets once (at listener,
//! backend or pool creation) and count through the resolved handles, so the
//! hot path never hashes label values.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The registry and metric families.
pub struct Metrics {
    pub registry: Registry,
    connections_accepted: IntCounterVec,
    connections_rejected: IntCounterVec,
    connections_open: IntGaugeVec,
    connections_closed: IntCounterVec,
    frames_in: IntCounterVec,
    bytes_in: IntCounterVec,
    frames_truncated: IntCounterVec,
    frames_refused: IntCounterVec,
    frames_out: IntCounterVec,
    bytes_out: IntCounterVec,
    frames_settled: IntCounterVec,
    backend_up: IntGaugeVec,
    backend_transitions: IntCounterVec,
    check_duration: HistogramVec,
    unsettled_bytes: IntGaugeVec,
    upstream_connects: IntCounterVec,
    frames_escaped: IntCounterVec,
    frames_redispatched: IntCounterVec,
    frames_lost: IntCounterVec,
    frames_replay_missing: IntCounterVec,
    frames_replayed: IntCounterVec,
    pending_frames: IntGaugeVec,
    delivery_lag: IntGaugeVec,
    oldest_undelivered: prometheus::GaugeVec,
    admin_requests: IntCounterVec,
    admin_refused: IntCounterVec,
    relp_sessions: IntCounterVec,
    relp_acks: IntCounterVec,
    relp_nacks: IntCounterVec,
    relp_backend_acks: IntCounterVec,
    relp_backend_nacks: IntCounterVec,
    relp_resent: IntCounterVec,
    tls_handshakes: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    tls_handshake_waits: IntCounterVec,
    /// notAfter of every loaded certificate (Unix seconds), by owner.
    tls_cert_expiry: prometheus::GaugeVec,
    journal: crate::journal::JournalMetrics,
    /// Config reloads applied (SIGHUP).
    pub reloads: IntCounter,
    /// Config reloads refused (the running config stays).
    pub reload_failures: IntCounter,
    /// 1 when the last reload was applied, 0 when it was refused.
    pub reload_ok: IntGauge,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    reg.register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("auditlb".into()), None).expect("valid prefix");
        let build = IntGaugeVec::new(
            Opts::new("build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric definition");
        r.register(Box::new(build.clone()))
            .expect("metric names are unique");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let check_duration = HistogramVec::new(
            HistogramOpts::new(
                "health_check_duration_seconds",
                "Time taken by active health checks.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            &["pool", "backend"],
        )
        .expect("valid metric definition");
        r.register(Box::new(check_duration.clone()))
            .expect("metric names are unique");
        let single_counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric definition");
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let single_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric definition");
            r.register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let fsync = Histogram::with_opts(
            HistogramOpts::new(
                "journal_fsync_duration_seconds",
                "Time taken by journal fdatasync calls.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
        )
        .expect("valid metric definition");
        r.register(Box::new(fsync.clone()))
            .expect("metric names are unique");
        let journal = crate::journal::JournalMetrics {
            records: single_counter("journal_records_total", "Records appended to the journal."),
            bytes: single_counter("journal_bytes_total", "Bytes appended to the journal."),
            segments: single_counter("journal_segments_total", "Journal segments opened."),
            fsync,
            last_checkpoint_seq: single_gauge(
                "journal_last_checkpoint_seq",
                "Sequence number of the last checkpoint.",
            ),
            write_errors: single_counter(
                "journal_write_errors_total",
                "Failed journal writes (retried; clients wait).",
            ),
            recoveries: single_counter("journal_recoveries_total", "Torn tails cut at startup."),
            spilled: single_counter(
                "journal_frames_spilled_total",
                "Frames a lagging dispatcher will read back from the journal instead of memory.",
            ),
            full: single_gauge("journal_full", "1 while the journal is at its disk budget."),
            writable: {
                let g = single_gauge("journal_writable", "1 while journal writes succeed.");
                g.set(1);
                g
            },
            refused_full: single_counter("journal_frames_refused_disk_full_total", "Frames refused because the journal reached its disk budget (on-full = drop); each refusal is a GAP record."),
            unrouted: single_counter(
                "journal_frames_unrouted_total",
                "Frames journaled but not delivered: a removed listener's session sent them after its pool was closed by a reload.",
            ),
            tampered: single_gauge(
                "journal_tamper_alarm",
                "1 when startup or self-verification found journal damage.",
            ),
            durable_seq: single_gauge(
                "journal_durable_seq",
                "Last seq on disk under the sync policy (covered by an fdatasync; written, with sync = os).",
            ),
            custody: crate::journal::custody::CustodyMetrics {
                verified_seq: single_gauge(
                    "journal_verified_seq",
                    "Last seq of the closed segments auditlb verified itself (chain, epochs, anchors).",
                ),
                self_verify_failures: single_counter(
                    "journal_self_verify_failures_total",
                    "Closed segments that failed self-verification (raises the tamper alarm).",
                ),
                archive_lag: single_gauge(
                    "archive_lag_segments",
                    "Closed segments not yet archived, read back and recorded.",
                ),
                archive_oldest_age: single_gauge(
                    "archive_oldest_unarchived_age_seconds",
                    "Age of the oldest closed segment not yet archived (0 when none).",
                ),
                archive_failures: single_counter(
                    "archive_failures_total",
                    "Archive uploads, read-backs or anchors uploads that failed (retried with backoff).",
                ),
                archived: single_counter(
                    "archive_segments_total",
                    "Segments archived, read back and recorded (ARCHIVED records).",
                ),
                pruned_segments: single_counter(
                    "journal_pruned_segments_total",
                    "Segments deleted by retention after a sealed, anchored PRUNE record.",
                ),
                pruned_bytes: single_counter(
                    "journal_pruned_bytes_total",
                    "Bytes deleted by retention.",
                ),
            },
        };
        let reloads = single_counter("config_reloads_total", "Config reloads applied.");
        let reload_failures = single_counter(
            "config_reload_failures_total",
            "Config reloads refused; the running config stays.",
        );
        let reload_ok = single_gauge(
            "config_last_reload_successful",
            "1 when the last reload was applied (or none was tried), 0 when it was refused.",
        );
        reload_ok.set(1);
        Self {
            journal,
            reloads,
            reload_failures,
            reload_ok,
            connections_accepted: counter(
                &r,
                "connections_accepted_total",
                "Client connections accepted.",
                &["listener"],
            ),
            connections_rejected: counter(
                &r,
                "connections_rejected_total",
                "Client connections refused, by reason.",
                &["listener", "reason"],
            ),
            connections_open: gauge(
                &r,
                "connections_open",
                "Client connections open now.",
                &["listener"],
            ),
            connections_closed: counter(
                &r,
                "connections_closed_total",
                "Client connections closed, by reason.",
                &["listener", "reason"],
            ),
            frames_in: counter(
                &r,
                "frames_in_total",
                "Frames received from clients and accepted.",
                &["listener"],
            ),
            bytes_in: counter(
                &r,
                "bytes_in_total",
                "Bytes read from clients.",
                &["listener"],
            ),
            frames_truncated: counter(
                &r,
                "frames_truncated_total",
                "Frames longer than max-frame that were truncated and forwarded.",
                &["listener"],
            ),
            frames_refused: counter(
                &r,
                "frames_refused_total",
                "Frames refused, by reason (oversize, malformed, incomplete).",
                &["listener", "reason"],
            ),
            frames_out: counter(
                &r,
                "frames_out_total",
                "Frames written to a backend.",
                &["pool", "backend"],
            ),
            bytes_out: counter(
                &r,
                "bytes_out_total",
                "Bytes written to a backend, framing included.",
                &["pool", "backend"],
            ),
            frames_settled: counter(
                &r,
                "frames_settled_total",
                "Frames whose bytes the backend's TCP stack acknowledged.",
                &["pool", "backend"],
            ),
            backend_up: gauge(
                &r,
                "backend_up",
                "1 when the backend is up, 0 when down.",
                &["pool", "backend"],
            ),
            backend_transitions: counter(
                &r,
                "backend_transitions_total",
                "Backend state changes, by new state.",
                &["pool", "backend", "to"],
            ),
            check_duration,
            unsettled_bytes: gauge(
                &r,
                "backend_unsettled_bytes",
                "Bytes queued for or written to a backend and not yet acknowledged.",
                &["pool", "backend"],
            ),
            upstream_connects: counter(
                &r,
                "upstream_connects_total",
                "Connection attempts to backends, by result.",
                &["pool", "backend", "result"],
            ),
            frames_escaped: counter(
                &r,
                "frames_escaped_total",
                "Frames with embedded LF escaped as #012 for an LF-framed pool.",
                &["pool"],
            ),
            frames_redispatched: counter(
                &r,
                "frames_redispatched_total",
                "Frames handed back by a failed backend connection and routed again.",
                &["pool"],
            ),
            frames_replayed: counter(&r, "frames_replayed_total", "Already acknowledged frames sent again from the replay window after a backend reset (possible duplicates).", &["pool"]),
            frames_lost: counter(
                &r,
                "frames_lost_total",
                "Frames not delivered when shutdown grace ran out.",
                &["pool"],
            ),
            frames_replay_missing: counter(
                &r,
                "frames_replay_missing_total",
                "Frames of a reset connection's replay window that could not be read back from the journal (segment gone or damaged), so not sent again.",
                &["pool"],
            ),
            pending_frames: gauge(
                &r,
                "dispatch_pending_frames",
                "Frames waiting in the dispatcher for an available backend.",
                &["pool"],
            ),
            delivery_lag: gauge(&r, "delivery_lag_records", "Journal records between the pool's delivery cursor and the journal's end (frames waiting in the journal, plus other pools' records among them).", &["pool"]),
            oldest_undelivered: {
                let g = prometheus::GaugeVec::new(Opts::new("oldest_undelivered_frame_age_seconds", "Age of the oldest frame taken in but not yet acknowledged by a backend (0 when none)."), &["pool"]).expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("metric names are unique");
                g
            },
            admin_requests: counter(
                &r,
                "admin_requests_total",
                "Admin endpoint requests, by path (`-` for an unknown one) and HTTP status.",
                &["path", "code"],
            ),
            admin_refused: counter(
                &r,
                "admin_refused_total",
                "Admin requests refused before they were served, by reason (unauthenticated: 401, forbidden: 403, tls_handshake).",
                &["reason"],
            ),
            relp_sessions: counter(
                &r,
                "relp_sessions_total",
                "RELP sessions opened by clients (open answered with 200).",
                &["listener"],
            ),
            relp_acks: counter(
                &r,
                "relp_acks_total",
                "RELP messages acknowledged to clients (rsp 200), each once durable in the journal.",
                &["listener"],
            ),
            relp_nacks: counter(
                &r,
                "relp_nacks_total",
                "RELP commands answered with rsp 500, by reason (disk_full: journal full with on-full = drop; oversize: longer than max-frame with oversize = drop; command: not supported).",
                &["listener", "reason"],
            ),
            relp_backend_acks: counter(
                &r,
                "relp_backend_acks_total",
                "RELP messages a backend acknowledged (rsp 200), each settling a frame.",
                &["pool", "backend"],
            ),
            relp_backend_nacks: counter(
                &r,
                "relp_backend_nacks_total",
                "RELP messages a backend refused (rsp other than 200); each frame is routed again.",
                &["pool", "backend"],
            ),
            relp_resent: counter(
                &r,
                "relp_resent_total",
                "Frames sent again over RELP: written to a backend connection that ended or refused them before acknowledging (possible duplicates at the receivers).",
                &["pool"],
            ),
            tls_handshakes: counter(
                &r,
                "tls_handshakes_total",
                "TLS handshakes completed by clients, by TLS version.",
                &["listener", "version"],
            ),
            tls_handshake_failures: counter(
                &r,
                "tls_handshake_failures_total",
                "TLS handshakes refused or failed, by reason: no-certificate, unknown-issuer, expired, revoked, not-allowed, bad-certificate, peer-alert, protocol, timeout, io.",
                &["listener", "reason"],
            ),
            tls_handshake_waits: counter(
                &r,
                "tls_handshake_waits_total",
                "TLS handshakes that had to wait for one of the listener's max-handshakes slots.",
                &["listener"],
            ),
            tls_cert_expiry: {
                let g = prometheus::GaugeVec::new(Opts::new("tls_cert_expiry_seconds", "Unix time at which a loaded certificate expires (notAfter), by the listener or pool that loaded it and its role (cert, client-ca, ca)."), &["listener", "pool", "role", "subject", "sha256"]).expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("metric names are unique");
                g
            },
            registry: r,
        }
    }

    /// An admin request answered with `code`.
    pub fn admin_request(&self, path: &str, code: u16) {
        self.admin_requests
            .with_label_values(&[path, &code.to_string()])
            .inc();
    }

    /// An admin request or connection refused.
    pub fn admin_refused(&self, reason: &str) {
        self.admin_refused.with_label_values(&[reason]).inc();
    }

    /// Publishes the expiry of every certificate in `m` (replacing what a
    /// previous config loaded).
    pub fn set_tls_material(&self, cfg: &crate::config::Config, m: &crate::tls::Material) {
        self.tls_cert_expiry.reset();
        let owners = cfg
            .listeners
            .iter()
            .zip(&m.listeners)
            .map(|(l, t)| ((l.name.as_str(), ""), t.as_ref().map(|t| &t.loaded)))
            .chain(
                cfg.pools
                    .iter()
                    .zip(&m.pools)
                    .map(|(p, t)| (("", p.name.as_str()), t.as_ref().map(|t| &t.loaded))),
            );
        for ((listener, pool), loaded) in owners {
            for x in loaded.into_iter().flatten() {
                if let Some(t) = x.not_after {
                    self.tls_cert_expiry
                        .with_label_values(&[
                            listener,
                            pool,
                            x.role,
                            &x.subject,
                            &x.sha256.to_string(),
                        ])
                        .set(t as f64);
                }
            }
        }
    }

    /// Prometheus text exposition of everything.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    /// Sum of a metric family's samples whose labels include all of
    /// `labels`: for tests, and the admin endpoint's `/status` and
    /// `/journal/verify` (readiness reads its gauges directly).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut total = 0.0;
        for fam in self.registry.gather() {
            if fam.name() != name {
                continue;
            }
            let is_counter = fam.get_field_type() == prometheus::proto::MetricType::COUNTER;
            for m in fam.get_metric() {
                let matches = labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                });
                if matches {
                    total += if is_counter {
                        m.get_counter().get_value()
                    } else {
                        m.get_gauge().get_value()
                    };
                }
            }
        }
        total
    }

    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let rej = |r: &str| self.connections_rejected.with_label_values(&[name, r]);
        let closed = |r: &str| self.connections_closed.with_label_values(&[name, r]);
        let refused = |r: &str| self.frames_refused.with_label_values(&[name, r]);
        ListenerMetrics {
            accepted: self.connections_accepted.with_label_values(&[name]),
            rejected_limit: rej("source_limit"),
            open: self.connections_open.with_label_values(&[name]),
            closed_eof: closed("eof"),
            closed_idle: closed("idle_timeout"),
            closed_frame_timeout: closed("frame_timeout"),
            closed_malformed: closed("malformed"),
            closed_oversize: closed("oversize"),
            closed_error: closed("error"),
            closed_shutdown: closed("shutdown"),
            closed_handshake: closed("tls_handshake"),
            closed_revalidation: closed("tls_revalidation"),
            frames_in: self.frames_in.with_label_values(&[name]),
            bytes_in: self.bytes_in.with_label_values(&[name]),
            truncated: self.frames_truncated.with_label_values(&[name]),
            refused_oversize: refused("oversize"),
            refused_malformed: refused("malformed"),
            refused_incomplete: refused("incomplete"),
            refused_unjournaled: refused("unjournaled_at_exit"),
            relp_sessions: self.relp_sessions.with_label_values(&[name]),
            relp_acks: self.relp_acks.with_label_values(&[name]),
            relp_nacks: self.relp_nacks.clone(),
            tls_handshakes: self.tls_handshakes.clone(),
            tls_failures: self.tls_handshake_failures.clone(),
            tls_waits: self.tls_handshake_waits.clone(),
            name: name.into(),
        }
    }

    pub fn backend(&self, pool: &str, backend: &str) -> BackendMetrics {
        let l = [pool, backend];
        BackendMetrics {
            frames_out: self.frames_out.with_label_values(&l),
            bytes_out: self.bytes_out.with_label_values(&l),
            settled: self.frames_settled.with_label_values(&l),
            up: self.backend_up.with_label_values(&l),
            to_up: self
                .backend_transitions
                .with_label_values(&[pool, backend, "up"]),
            to_down: self
                .backend_transitions
                .with_label_values(&[pool, backend, "down"]),
            check_duration: self.check_duration.with_label_values(&l),
            unsettled: self.unsettled_bytes.with_label_values(&l),
            connect_ok: self
                .upstream_connects
                .with_label_values(&[pool, backend, "ok"]),
            connect_failed: self
                .upstream_connects
                .with_label_values(&[pool, backend, "failed"]),
            relp_acks: self.relp_backend_acks.with_label_values(&l),
            relp_nacks: self.relp_backend_nacks.with_label_values(&l),
        }
    }

    /// Drops a removed backend's up/unsettled series, so a scrape does not
    /// keep showing a backend that is no longer configured.
    pub fn forget_backend(&self, pool: &str, backend: &str) {
        let _ = self.backend_up.remove_label_values(&[pool, backend]);
        let _ = self.unsettled_bytes.remove_label_values(&[pool, backend]);
    }

    pub fn journal(&self) -> crate::journal::JournalMetrics {
        self.journal.clone()
    }

    pub fn pool(&self, pool: &str) -> PoolMetrics {
        PoolMetrics {
            escaped: self.frames_escaped.with_label_values(&[pool]),
            redispatched: self.frames_redispatched.with_label_values(&[pool]),
            lost: self.frames_lost.with_label_values(&[pool]),
            replayed: self.frames_replayed.with_label_values(&[pool]),
            replay_missing: self.frames_replay_missing.with_label_values(&[pool]),
            pending: self.pending_frames.with_label_values(&[pool]),
            lag: self.delivery_lag.with_label_values(&[pool]),
            oldest: self.oldest_undelivered.with_label_values(&[pool]),
            relp_resent: self.relp_resent.with_label_values(&[pool]),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resolved handles for one listener.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub accepted: IntCounter,
    pub rejected_limit: IntCounter,
    pub open: IntGauge,
    pub closed_eof: IntCounter,
    pub closed_idle: IntCounter,
    pub closed_frame_timeout: IntCounter,
    pub closed_malformed: IntCounter,
    pub closed_oversize: IntCounter,
    pub closed_error: IntCounter,
    pub closed_shutdown: IntCounter,
    pub closed_handshake: IntCounter,
    pub closed_revalidation: IntCounter,
    pub frames_in: IntCounter,
    pub bytes_in: IntCounter,
    pub truncated: IntCounter,
    pub refused_oversize: IntCounter,
    pub refused_malformed: IntCounter,
    pub refused_incomplete: IntCounter,
    pub refused_unjournaled: IntCounter,
    pub relp_sessions: IntCounter,
    pub relp_acks: IntCounter,
    relp_nacks: IntCounterVec,
    tls_handshakes: IntCounterVec,
    tls_failures: IntCounterVec,
    tls_waits: IntCounterVec,
    name: std::sync::Arc<str>,
}

impl ListenerMetrics {
    /// RELP commands answered with 500, for `reason`.
    pub fn relp_nack(&self, reason: &str, n: u64) {
        self.relp_nacks
            .with_label_values(&[&self.name, reason])
            .inc_by(n);
    }

    /// A TLS handshake completed with `version`.
    pub fn tls_ok(&self, version: &str) {
        self.tls_handshakes
            .with_label_values(&[&self.name, version])
            .inc();
    }

    /// A TLS handshake waited for a `max-handshakes` slot.
    pub fn tls_waited(&self) {
        self.tls_waits.with_label_values(&[&self.name]).inc();
    }

    /// A TLS handshake failed.
    pub fn tls_refused(&self, why: crate::tls::Refusal) {
        self.tls_failures
            .with_label_values(&[&self.name, why.label()])
            .inc();
    }
}

/// Resolved handles for one backend.
#[derive(Clone)]
pub struct BackendMetrics {
    pub frames_out: IntCounter,
    pub bytes_out: IntCounter,
    pub settled: IntCounter,
    pub up: IntGauge,
    pub to_up: IntCounter,
    pub to_down: IntCounter,
    pub check_duration: Histogram,
    pub unsettled: IntGauge,
    pub connect_ok: IntCounter,
    pub connect_failed: IntCounter,
    pub relp_acks: IntCounter,
    pub relp_nacks: IntCounter,
}

/// Resolved handles for one pool.
#[derive(Clone)]
pub struct PoolMetrics {
    pub escaped: IntCounter,
    pub redispatched: IntCounter,
    pub lost: IntCounter,
    pub replayed: IntCounter,
    pub replay_missing: IntCounter,
    pub pending: IntGauge,
    pub lag: IntGauge,
    pub oldest: prometheus::Gauge,
    pub relp_resent: IntCounter,
}
