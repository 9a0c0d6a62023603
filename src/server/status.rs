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
}

impl admin::Status for AdminStatus {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn ready(&self) -> Result<(), String> {
        readiness(&crate::lock(&self.pools), &self.metrics)
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
