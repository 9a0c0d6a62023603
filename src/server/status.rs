//! What readiness and the admin endpoint see of the running proxy: the
//! pools and their backends, and whether the journal takes writes.

use super::*;

/// A pool as the server keeps it: its backends, for status and tests.
#[derive(Clone)]
pub struct PoolRuntime {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
}

/// The pools readiness and tests look at; replaced by a reload.
pub(super) type PoolView = Arc<Mutex<Vec<PoolRuntime>>>;

/// State the admin endpoint reads.
pub(super) struct AdminStatus {
    pub(super) metrics: Arc<Metrics>,
    pub(super) pools: PoolView,
    pub(super) listeners: ListenerView,
}

impl admin::Status for AdminStatus {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn ready(&self) -> Result<(), String> {
        readiness(&crate::lock(&self.pools), &self.metrics)
    }

    fn status_json(&self) -> String {
        let pools = crate::lock(&self.pools).clone();
        let listeners = crate::lock(&self.listeners).clone();
        status_json(&pools, &listeners, &self.metrics)
    }
}

/// Ready: the journal takes writes and every pool has an available backend.
pub(super) fn readiness(pools: &[PoolRuntime], metrics: &Metrics) -> Result<(), String> {
    let mut missing: Vec<String> = pools
        .iter()
        .filter(|p| !p.backends.iter().any(|b| b.available()))
        .map(|p| format!("pool {} has no available backend", p.name))
        .collect();
    let j = metrics.journal();
    if j.writable.get() == 0 {
        missing.push("journal writes are failing".into());
    }
    if j.full.get() == 1 {
        missing.push("journal is at its disk budget".into());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing.join("; "))
    }
}

impl PoolState {
    pub(super) fn runtime(&self) -> PoolRuntime {
        PoolRuntime {
            name: self.cfg.name.clone(),
            backends: self
                .groups
                .iter()
                .flat_map(|g| g.members.iter().map(|m| m.backend.clone()))
                .collect(),
        }
    }
}

/// A listener as `/status` shows it.
#[derive(Clone)]
pub struct ListenerRuntime {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: &'static str,
    pub tls: bool,
}

/// The listeners `/status` looks at; replaced as they start and stop.
pub(super) type ListenerView = Arc<Mutex<Vec<ListenerRuntime>>>;

/// `/status`: what runs now, and the same figures as `/metrics`.
pub(super) fn status_json(
    pools: &[PoolRuntime],
    listeners: &[ListenerRuntime],
    m: &Metrics,
) -> String {
    use crate::journal::verify::json_str;
    let g = |name: &str, labels: &[(&str, &str)]| m.sum(name, labels);
    let pools: Vec<String> = pools
        .iter()
        .map(|p| {
            let l = [("pool", p.name.as_str())];
            let backends: Vec<String> = p
                .backends
                .iter()
                .map(|b| {
                    format!(
                        "{{\"address\":{},\"up\":{},\"available\":{},\"pending_bytes\":{}}}",
                        json_str(&b.addr.to_string()),
                        b.is_up(),
                        b.available(),
                        b.pending_bytes()
                    )
                })
                .collect();
            format!(
                "{{\"name\":{},\"lag_records\":{},\"oldest_undelivered_seconds\":{},\"pending_frames\":{},\"backends\":[{}]}}",
                json_str(&p.name),
                g("auditlb_delivery_lag_records", &l),
                g("auditlb_oldest_undelivered_frame_age_seconds", &l),
                g("auditlb_dispatch_pending_frames", &l),
                backends.join(",")
            )
        })
        .collect();
    let listeners: Vec<String> = listeners
        .iter()
        .map(|l| {
            format!(
                "{{\"name\":{},\"address\":{},\"protocol\":{},\"tls\":{},\"connections_open\":{}}}",
                json_str(&l.name),
                json_str(&l.address.to_string()),
                json_str(l.protocol),
                l.tls,
                g("auditlb_connections_open", &[("listener", l.name.as_str())])
            )
        })
        .collect();
    format!(
        "{{\"pools\":[{}],\"listeners\":[{}],\"journal\":{{\"durable_seq\":{},\"last_checkpoint_seq\":{},\"verified_seq\":{},\"self_verify_failures\":{},\"tamper_alarm\":{},\"writable\":{},\"full\":{}}},\"archive\":{{\"lag_segments\":{},\"oldest_unarchived_age_seconds\":{},\"failures\":{}}}}}\n",
        pools.join(","),
        listeners.join(","),
        g("auditlb_journal_durable_seq", &[]),
        g("auditlb_journal_last_checkpoint_seq", &[]),
        g("auditlb_journal_verified_seq", &[]),
        g("auditlb_journal_self_verify_failures_total", &[]),
        g("auditlb_journal_tamper_alarm", &[]),
        g("auditlb_journal_writable", &[]),
        g("auditlb_journal_full", &[]),
        g("auditlb_archive_lag_segments", &[]),
        g("auditlb_archive_oldest_unarchived_age_seconds", &[]),
        g("auditlb_archive_failures_total", &[]),
    )
}
