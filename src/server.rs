//! Builds a running proxy from a validated [`Config`]: per pool its backends,
//! health checkers, upstream connections and dispatcher; the listeners; the
//! admin endpoint. [`Server::shutdown`] is the graceful stop: accept stops
//! first, sessions hand over what they read, dispatchers and upstreams drain
//! within the grace period. `auditlb run` and the integration tests use it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::balance::{Member, Selector};
use crate::config::{Balance, Config, PoolConfig};
use crate::dispatcher::{ConnHandle, Dispatcher, INGRESS_BATCHES, UPSTREAM_BATCHES};
use crate::health;
use crate::journal::tail::PoolTail;
use crate::journal::{self, Routed, INGRESS_ITEMS};
use crate::listener::{self, Listener};
use crate::metrics::Metrics;
use crate::pool::Backend;
use crate::upstream::{ConnShared, Handback, Upstream, UpstreamSettings};
use std::sync::atomic::AtomicU64;

/// A pool as the server keeps it: its backends, for status and tests.
pub struct PoolRuntime {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
}

/// State the admin endpoint reads.
struct AdminStatus {
    metrics: Arc<Metrics>,
    pools: Arc<Vec<PoolRuntime>>,
}

impl admin::Status for AdminStatus {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn ready(&self) -> Result<(), String> {
        readiness(&self.pools, &self.metrics)
    }
}

/// Ready: the journal takes writes and every pool has an available backend.
fn readiness(pools: &[PoolRuntime], metrics: &Metrics) -> Result<(), String> {
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

/// A running proxy.
pub struct Server {
    metrics: Arc<Metrics>,
    pools: Arc<Vec<PoolRuntime>>,
    listeners: Vec<(String, SocketAddr)>,
    admin_addr: Option<SocketAddr>,
    grace: Duration,
    /// Stops accepting and reading from clients.
    stop: CancellationToken,
    /// Shutdown grace is over: drop what is still queued (counted).
    abort: CancellationToken,
    /// Stops health checks and the admin endpoint, last.
    background_stop: CancellationToken,
    /// Listeners and their sessions.
    client_tasks: TaskTracker,
    /// Dispatchers and upstreams.
    pool_tasks: TaskTracker,
    /// Tells the journal writer the dispatchers are done (final DELIVERY).
    journal_drained: CancellationToken,
    /// The journal writer wrote its final records.
    journal_done: tokio::sync::oneshot::Receiver<()>,
}

impl Server {
    /// Binds every listener and the admin address, connects to backends and
    /// starts all tasks. Fails (naming the listener and address) if a bind
    /// fails; backends that are down at start are not an error.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let background_stop = CancellationToken::new();
        let client_tasks = TaskTracker::new();
        let pool_tasks = TaskTracker::new();
        let background = TaskTracker::new();

        // Bind first, so a bad address fails before anything starts.
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(listener::bind(l)?);
        }
        let admin_listener = match &config.admin {
            Some(a) => {
                let addr = a.socket_addr();
                Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| anyhow::anyhow!("admin: cannot listen on {addr}: {e}"))?,
                )
            }
            None => None,
        };

        // Sessions -> journal writer -> pool dispatchers. The journal opens
        // first: it says where each pool's delivery resumes.
        let mut links = Vec::new();
        let mut pool_missed = Vec::new();
        let mut pool_settled = Vec::new();
        let mut pool_rx = Vec::new();
        for p in &config.pools {
            let (tx, rx) = mpsc::channel(INGRESS_BATCHES);
            let missed = Arc::new(AtomicU64::new(0));
            pool_missed.push(missed.clone());
            let settled = journal::SettledLog::default();
            pool_settled.push(settled.clone());
            links.push(journal::PoolLink {
                name: p.name.clone(),
                tx,
                missed,
                settled,
                cursors: delivery_names(p)
                    .into_iter()
                    .map(|n| (n, Arc::new(AtomicU64::new(0))))
                    .collect(),
            });
            pool_rx.push(rx);
        }
        let cursors_out: Vec<Vec<Arc<AtomicU64>>> = links
            .iter()
            .map(|l| l.cursors.iter().map(|c| c.1.clone()).collect())
            .collect();
        let (ingress, journal_rx) = mpsc::channel(INGRESS_ITEMS);
        let journal_drained = CancellationToken::new();
        let journal_ready = journal::writer::spawn(
            config.journal.clone(),
            metrics.journal(),
            config.source_hash,
            journal_rx,
            links,
            abort.clone(),
            journal_drained.clone(),
        );
        let opened = match journal_ready.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                abort.cancel();
                background_stop.cancel();
                return Err(e.into());
            }
            Err(_) => anyhow::bail!("journal writer thread died while opening the journal"),
        };

        let mut pools = Vec::new();
        let mut resume = opened.cursors.into_iter();
        for (i, (p, rx)) in config.pools.iter().zip(pool_rx).enumerate() {
            let mut groups = Vec::new();
            for (name, delivered) in delivery_names(p).into_iter().zip(&cursors_out[i]) {
                let cursor = resume.next().expect("one resume cursor per delivery name");
                if cursor < opened.start_seq {
                    tracing::info!(delivery = %name, from_seq = cursor, "resuming delivery from the journal");
                }
                let tail = PoolTail::new(config.journal.dir.clone(), p.name.clone(), cursor);
                groups.push((tail, cursor, delivered.clone()));
            }
            let runtime = start_pool(
                p,
                &metrics,
                &pool_tasks,
                &background,
                &abort,
                &background_stop,
                rx,
                opened.committed.clone(),
                (pool_missed[i].clone(), pool_settled[i].clone()),
                groups,
            );
            pools.push(runtime);
        }
        let pools = Arc::new(pools);

        let mut listeners = Vec::new();
        for (cfg, sock) in config.listeners.iter().zip(bound) {
            let pool = config
                .pools
                .iter()
                .position(|p| p.name == cfg.pool)
                .expect("listener pools checked by Config::validate");
            let l = Listener::new(
                cfg,
                sock,
                ingress.clone(),
                pool,
                metrics.listener(&cfg.name),
            );
            let addr = l.local_addr()?;
            tracing::info!(listener = %cfg.name, address = %addr, pool = %cfg.pool, "listening");
            listeners.push((cfg.name.clone(), addr));
            client_tasks.spawn(l.run(stop.clone(), client_tasks.clone()));
        }
        // Only listeners and sessions may hold ingress senders, so the
        // journal (then the dispatchers) see their input close once those
        // are gone.
        drop(ingress);

        let admin_addr = match admin_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                tracing::info!(address = %addr, "admin endpoint: /metrics /healthz /readyz");
                let status = Arc::new(AdminStatus {
                    metrics: metrics.clone(),
                    pools: pools.clone(),
                });
                background.spawn(admin::run(l, status, background_stop.clone()));
                Some(addr)
            }
            None => None,
        };

        Ok(Server {
            metrics,
            pools,
            listeners,
            admin_addr,
            grace: config.shutdown.grace.0,
            stop,
            abort,
            background_stop,
            client_tasks,
            pool_tasks,
            journal_drained,
            journal_done: opened.done,
        })
    }

    /// Where a listener is bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn pools(&self) -> &[PoolRuntime] {
        &self.pools
    }

    /// Whether backend `index` of `pool` is up (health verdict).
    pub fn backend_up(&self, pool: &str, index: usize) -> Option<bool> {
        let p = self.pools.iter().find(|p| p.name == pool)?;
        Some(p.backends.get(index)?.is_up())
    }

    pub fn ready(&self) -> Result<(), String> {
        readiness(&self.pools, &self.metrics)
    }

    /// Graceful stop: stop accepting and reading, let queued frames reach the
    /// backends for up to the configured grace, then stop everything. Frames
    /// still queued when grace runs out are counted in
    /// `auditlb_frames_lost_total` and logged.
    pub async fn shutdown(self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        tracing::info!(grace = ?self.grace, "stopping: no new connections, draining");
        self.stop.cancel();
        self.client_tasks.close();
        self.pool_tasks.close();
        if tokio::time::timeout_at(deadline, self.client_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("client sessions did not finish within grace");
        }
        if tokio::time::timeout_at(deadline, self.pool_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("backends did not take every queued frame within grace");
            self.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.pool_tasks.wait()).await;
        }
        self.journal_drained.cancel();
        if tokio::time::timeout(Duration::from_secs(10), self.journal_done)
            .await
            .is_err()
        {
            tracing::error!("journal writer did not finish its final records");
        }
        self.abort.cancel();
        self.background_stop.cancel();
        tracing::info!("stopped");
    }
}

/// Starts one pool's backends, health checkers, upstreams and dispatcher.
/// Returns the sender sessions use and the pool's runtime view.
/// A pool's delivery names: the pool itself, or for `mirror` one per
/// backend (each keeps its own cursor).
pub fn delivery_names(p: &PoolConfig) -> Vec<String> {
    if p.balance == Balance::Mirror {
        p.backends
            .iter()
            .map(|b| format!("{}@{}", p.name, b.address))
            .collect()
    } else {
        vec![p.name.clone()]
    }
}

/// Starts one pool: backends, health checkers, upstream connections, and
/// its dispatcher, or for `mirror` one dispatcher per backend (each with its
/// own journal cursor) fed by a fan-out of the journal's batches.
/// `groups` holds, per dispatcher, its journal tail, start cursor and
/// published delivery cursor.
#[allow(clippy::too_many_arguments)]
fn start_pool(
    p: &PoolConfig,
    metrics: &Metrics,
    pool_tasks: &TaskTracker,
    background: &TaskTracker,
    abort: &CancellationToken,
    background_stop: &CancellationToken,
    rx: mpsc::Receiver<Routed>,
    committed: Arc<AtomicU64>,
    (missed, settled): (Arc<AtomicU64>, journal::SettledLog),
    groups: Vec<(PoolTail, u64, Arc<AtomicU64>)>,
) -> PoolRuntime {
    let name: Arc<str> = p.name.as_str().into();
    let pool_metrics = metrics.pool(&p.name);
    let settings = UpstreamSettings {
        framing: p.framing,
        replay_window: p.replay_window.0,
        connect_timeout: p.connect_timeout.0,
        tcp_user_timeout: p.tcp_user_timeout.0,
        metrics: pool_metrics.clone(),
    };
    let mirror = p.balance == Balance::Mirror;
    // Which backends each dispatcher owns.
    let members: Vec<Vec<usize>> = if mirror {
        (0..p.backends.len()).map(|i| vec![i]).collect()
    } else {
        vec![(0..p.backends.len()).collect()]
    };
    let mut all_backends = Vec::new();
    let mut inputs = Vec::new();
    let mut rx = Some(rx);
    for (group, (tail, cursor, delivered)) in members.iter().zip(groups) {
        let wake = Arc::new(Notify::new());
        let handback = Arc::new(Handback::new(wake.clone()));
        let mut backends = Vec::new();
        let mut conns = Vec::new();
        for (k, &i) in group.iter().enumerate() {
            let b = &p.backends[i];
            let backend = Arc::new(Backend::new(
                k,
                name.clone(),
                b,
                p.health.rise,
                p.health.fall,
                metrics.backend(&p.name, &b.address),
                wake.clone(),
            ));
            background.spawn(health::run(
                backend.clone(),
                p.health.interval.0,
                p.health.timeout.0,
                background_stop.clone(),
            ));
            let mut handles = Vec::new();
            for _ in 0..p.connections {
                let (tx, rx) = mpsc::channel(UPSTREAM_BATCHES);
                let shared = Arc::new(ConnShared::new(wake.clone()));
                let up = Upstream::new(
                    backend.clone(),
                    rx,
                    shared.clone(),
                    handback.clone(),
                    settings.clone(),
                );
                pool_tasks.spawn(up.run(abort.clone()));
                handles.push(ConnHandle { tx, shared });
            }
            conns.push(handles);
            backends.push(backend);
        }
        let selector = Selector::new(
            p.balance,
            p.hash_key(),
            group
                .iter()
                .map(|&i| Member {
                    name: p.backends[i].address.clone(),
                    weight: p.backends[i].weight,
                    backup: p.backends[i].backup,
                })
                .collect(),
        );
        all_backends.extend(backends.iter().cloned());
        let mut missed_by = vec![missed.clone()];
        let input = if mirror {
            let (t, r) = mpsc::channel(INGRESS_BATCHES);
            let own = Arc::new(AtomicU64::new(0));
            missed_by.push(own.clone());
            inputs.push((t, own));
            r
        } else {
            rx.take().expect("one dispatcher for a balanced pool")
        };
        let dispatcher = Dispatcher::new(
            name.clone(),
            backends,
            conns,
            selector,
            input,
            handback,
            wake,
            p.queue_bytes.0,
            pool_metrics.clone(),
            (tail, cursor, committed.clone(), delivered),
            missed_by,
            settled.clone(),
        );
        pool_tasks.spawn(dispatcher.run(abort.clone()));
    }
    if let Some(rx) = rx {
        pool_tasks.spawn(fan_out(rx, inputs));
    }
    PoolRuntime {
        name: p.name.clone(),
        backends: all_backends,
    }
}

/// `mirror`: every batch from the journal goes to every backend's
/// dispatcher. One that is behind gets none (its channel is full) and reads
/// from the journal instead, so it never holds up the others.
async fn fan_out(
    mut rx: mpsc::Receiver<Routed>,
    outs: Vec<(mpsc::Sender<Routed>, Arc<AtomicU64>)>,
) {
    while let Some(b) = rx.recv().await {
        for (out, missed) in &outs {
            let batch = Routed {
                from: b.from,
                to: b.to,
                frames: b.frames.clone(),
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = out.try_send(batch) {
                if b.from > 0 {
                    missed.fetch_max(b.to, std::sync::atomic::Ordering::AcqRel);
                }
            }
        }
    }
}
