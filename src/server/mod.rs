//! Builds a running proxy from a validated [`Config`]: per pool its backends,
//! health checkers, upstream connections and dispatcher; the listeners; the
//! admin endpoint. [`Server::reload`] swaps in a new config without dropping
//! a client connection (SIGHUP). [`Server::shutdown`] is the graceful stop:
//! accept stops first, sessions hand over what they read, dispatchers and
//! upstreams drain within the grace period. `auditlb run` and the
//! integration tests use it.
//!
//! - this file: [`Server`], starting and stopping it;
//! - `pools.rs`: the pool supervisor, dispatch groups and backend handles;
//! - `listeners.rs`: running listeners;
//! - `reload.rs`: the pure [`ReloadPlan`] and applying it;
//! - `status.rs`: readiness for `/readyz` and the pools tests look at.

mod listeners;
mod pools;
mod reload;
mod status;

use listeners::ListenerState;
use pools::{PoolState, PoolSupervisor};
pub use reload::{Problem, ReloadError, ReloadPlan, Reloaded};
pub use status::PoolRuntime;
use status::{readiness, AdminStatus, ListenerRuntime, ListenerView, PoolView};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin;
use crate::backend::Backend;
use crate::balance::{Member as SelectorMember, Selector};
use crate::config::{BackendConfig, Balance, Config, ListenerConfig, PoolConfig};
use crate::dispatcher::{
    ConnHandle, Dispatcher, DispatcherJournal, DispatcherParts, PoolUpdate, UpdateSlot,
    UPSTREAM_BATCHES,
};
use crate::health;
use crate::journal::handoff::{self, PoolEnds};
use crate::journal::tail::PoolTail;
use crate::journal::{self, Ingress, Reconfigure, INGRESS_ITEMS};
use crate::listener::{self, Listener, ListenerShared};
use crate::metrics::Metrics;
use crate::upstream::{ConnShared, Handback, Upstream, UpstreamSettings};

/// A running proxy.
pub struct Server {
    ctx: PoolSupervisor,
    config: Config,
    view: PoolView,
    pools: Vec<PoolState>,
    listeners: Vec<ListenerState>,
    /// Pool slot of every listener slot ever used, as the journal writer
    /// has it.
    routes: Vec<Option<usize>>,
    next_pool_slot: usize,
    /// Sessions hand frames to the journal writer through it; the server's
    /// own sender goes at shutdown, so the writer then sees its input end.
    ingress: mpsc::Sender<Ingress>,
    admin_addr: Option<SocketAddr>,
    /// Reloads asked for with POST /reload, for the process's signal loop.
    admin_reloads: Option<mpsc::Receiver<admin::ReloadRequest>>,
    /// The listeners as `/status` shows them; replaced as they change.
    listener_view: ListenerView,
    grace: Duration,
    /// Stops accepting and reading from clients.
    stop: CancellationToken,
    /// Listeners and their sessions.
    client_tasks: TaskTracker,
    /// Tells the journal writer the dispatchers are done (final DELIVERY).
    journal_drained: CancellationToken,
    /// The journal writer wrote its final records.
    journal_done: tokio::sync::oneshot::Receiver<()>,
    /// Stops the custodian (self-verification, archive, retention), and
    /// fires when it has stopped (it holds an ingress sender).
    custody: Option<(CancellationToken, tokio::sync::oneshot::Receiver<()>)>,
}

/// Why the proxy did not start; each names what it could not use.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error("admin: cannot listen on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] journal::writer::JournalError),
    #[error("the journal writer thread died while opening the journal")]
    JournalThread,
    #[error("TLS material: {}", .0.join("; "))]
    Tls(Vec<String>),
    #[error("admin roles: {}", .0.join("; "))]
    AdminRoles(Vec<String>),
    #[error("listener {name}: {source}")]
    Listener {
        name: String,
        source: std::io::Error,
    },
}

impl Server {
    /// Binds every listener and the admin address, connects to backends and
    /// starts all tasks. Fails (naming the listener and address) if a bind
    /// fails; backends that are down at start are not an error.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        let background_stop = CancellationToken::new();

        // TLS files first: a bad certificate or key stops the start with
        // its key path and file named.
        let material = crate::tls::load(&config).map_err(StartError::Tls)?;
        metrics.set_tls_material(&config, &material);

        // Bind first, so a bad address fails before anything starts.
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(listener::bind(l)?);
        }
        let admin_listener = match &config.admin {
            Some(a) => {
                let addr = a.socket_addr();
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Admin { addr, source })?,
                )
            }
            None => None,
        };

        // Sessions -> journal writer -> pool dispatchers. The journal opens
        // first: it says where each pool's delivery resumes.
        let mut links = Vec::new();
        let mut ends = Vec::new();
        for p in &config.pools {
            let (link, pool_end) = handoff::link(&p.name, delivery_names(p), 0);
            links.push(link);
            ends.push(pool_end);
        }
        let routes: Vec<Option<usize>> = config
            .listeners
            .iter()
            .map(|l| config.pools.iter().position(|p| p.name == l.pool))
            .collect();
        let (ingress, journal_rx) = mpsc::channel(INGRESS_ITEMS);
        let (custody_tx, custody_rx) = mpsc::channel(journal::CUSTODY_ITEMS);
        let journal_drained = CancellationToken::new();
        let journal_ready = journal::writer::spawn(journal::writer::Start {
            cfg: config.journal.clone(),
            metrics: metrics.journal(),
            config: journal::ConfigStamp {
                hash: config.source_hash,
                tls: material.summary(&config),
            },
            rx: journal_rx,
            custody: custody_rx,
            pools: links,
            routes: routes.clone(),
            abort: abort.clone(),
            drained: journal_drained.clone(),
        });
        let opened = match journal_ready.await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                abort.cancel();
                background_stop.cancel();
                return Err(e.into());
            }
            Err(_) => return Err(StartError::JournalThread),
        };
        let custody_stop = CancellationToken::new();
        let custody = match journal::custody::spawn(journal::custody::Start {
            cfg: config.journal.clone(),
            metrics: metrics.journal(),
            tx: custody_tx,
            settled_below: opened.settled_below.clone(),
            freed: opened.freed.clone(),
            open_first: opened.open_first.clone(),
            stop: custody_stop.clone(),
        }) {
            Ok(done) => Some((custody_stop, done)),
            Err(e) => {
                tracing::error!(error = %e, "journal custodian thread did not start: no self-verification, archive or retention");
                None
            }
        };
        let ctx = PoolSupervisor {
            metrics: metrics.clone(),
            pool_tasks: TaskTracker::new(),
            background: TaskTracker::new(),
            abort,
            background_stop,
            committed: opened.committed.clone(),
            durable: opened.durable.clone(),
            journal_dir: config.journal.dir.clone(),
            start_seq: opened.start_seq,
        };

        let mut pools = Vec::new();
        let mut resume = opened.cursors.into_iter();
        for (slot, ((p, ends), tls)) in config
            .pools
            .iter()
            .zip(ends)
            .zip(material.pools.iter().cloned())
            .enumerate()
        {
            let starts: Vec<u64> = delivery_names(p)
                .iter()
                .map(|name| {
                    let cursor = resume.next().expect("one resume cursor per delivery name");
                    if cursor < opened.start_seq {
                        tracing::info!(delivery = %name, from_seq = cursor, "resuming delivery from the journal");
                    }
                    cursor
                })
                .collect();
            pools.push(ctx.start_pool(p, slot, ends, &starts, tls));
        }
        let view: PoolView = Arc::new(Mutex::new(pools.iter().map(PoolState::runtime).collect()));

        let listener_view: ListenerView = Arc::new(Mutex::new(Vec::new()));
        let mut admin_reloads = None;
        let admin_addr = match admin_listener {
            Some(l) => {
                let addr = l.local_addr().map_err(|source| StartError::Admin {
                    addr: config
                        .admin
                        .as_ref()
                        .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |a| a.socket_addr()),
                    source,
                })?;
                let acfg = config
                    .admin
                    .as_ref()
                    .expect("an admin listener has its config");
                let roles =
                    admin::auth::Roles::parse(&acfg.roles).map_err(StartError::AdminRoles)?;
                for (role, right) in roles.anonymous_privileges() {
                    tracing::warn!(role, right = right.name(), "admin: anonymous callers may {} (a role without who, or with who = [\"anonymous\"])", right.name());
                }
                tracing::info!(address = %addr, tls = acfg.tls.is_some(), roles = acfg.roles.len(), "admin endpoint: /metrics /healthz /readyz /status /reload /journal/...");
                let status = Arc::new(AdminStatus {
                    metrics: metrics.clone(),
                    pools: view.clone(),
                    listeners: listener_view.clone(),
                });
                let (reload_tx, reload_rx) = mpsc::channel(1);
                admin_reloads = Some(reload_rx);
                let a = Arc::new(admin::Admin::new(
                    status,
                    roles,
                    material.admin.clone(),
                    ingress.clone(),
                    Some(reload_tx),
                    config.journal.dir.clone(),
                    config.journal.anchors.clone(),
                ));
                ctx.background
                    .spawn(admin::run(l, a, ctx.background_stop.clone()));
                Some(addr)
            }
            None => None,
        };

        let mut server = Server {
            next_pool_slot: pools.len(),
            ctx,
            view,
            pools,
            listeners: Vec::new(),
            routes,
            ingress,
            admin_addr,
            admin_reloads,
            listener_view,
            grace: config.shutdown.grace.0,
            stop,
            client_tasks: TaskTracker::new(),
            journal_drained,
            journal_done: opened.done,
            custody,
            config: config.clone(),
        };
        for (slot, ((cfg, sock), tls)) in config
            .listeners
            .iter()
            .zip(bound)
            .zip(material.listeners.iter().cloned())
            .enumerate()
        {
            server
                .start_listener(cfg, sock, slot, tls)
                .map_err(|source| StartError::Listener {
                    name: cfg.name.clone(),
                    source,
                })?;
        }
        Ok(server)
    }

    /// Where a listener is bound (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.cfg.name == name)
            .map(|l| l.addr)
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Reloads asked for on the admin endpoint (once; `None` without an
    /// admin endpoint): whoever runs the server answers each.
    pub fn take_admin_reloads(&mut self) -> Option<mpsc::Receiver<admin::ReloadRequest>> {
        self.admin_reloads.take()
    }

    /// Publishes the listeners for `/status`.
    fn publish_listeners(&self) {
        *crate::lock(&self.listener_view) = self
            .listeners
            .iter()
            .map(|l| ListenerRuntime {
                name: l.cfg.name.clone(),
                address: l.addr,
                protocol: l.cfg.protocol.label(),
                tls: l.cfg.tls.is_some(),
            })
            .collect();
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.ctx.metrics
    }

    /// The pools and their backends as configured now.
    pub fn pools(&self) -> Vec<PoolRuntime> {
        crate::lock(&self.view).clone()
    }

    /// Whether backend `index` of `pool` is up (health verdict).
    pub fn backend_up(&self, pool: &str, index: usize) -> Option<bool> {
        let pools = self.pools();
        let p = pools.iter().find(|p| p.name == pool)?;
        Some(p.backends.get(index)?.is_up())
    }

    pub fn ready(&self) -> Result<(), String> {
        readiness(&self.pools(), &self.ctx.metrics)
    }

    /// Graceful stop: stop accepting and reading, let queued frames reach the
    /// backends for up to the configured grace, then stop everything. Frames
    /// still queued when grace runs out are counted in
    /// `auditlb_frames_lost_total` and logged.
    pub async fn shutdown(self) {
        let Server {
            ctx,
            pools,
            listeners,
            ingress,
            grace,
            stop,
            client_tasks,
            journal_drained,
            journal_done,
            custody,
            ..
        } = self;
        // The custodian stops first (an upload in flight is dropped and
        // retried at the next start; a prune in flight finishes its
        // unlinks or leaves its marker for the next start).
        if let Some((stop, done)) = custody {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(10), done)
                .await
                .is_err()
            {
                tracing::warn!("journal custodian did not stop within 10s");
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(?grace, "stopping: no new connections, draining");
        // Only sessions hold ingress senders now: the journal (then the
        // dispatchers) see their input end once those are gone. Likewise
        // only the dispatchers hold their upstreams' senders.
        drop(ingress);
        drop(pools);
        stop.cancel();
        // Each listener's shared settings hold a sender too: without this
        // the writer's input never ends and every stop waits out the grace.
        drop(listeners);
        client_tasks.close();
        ctx.pool_tasks.close();
        if tokio::time::timeout_at(deadline, client_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("client sessions did not finish within grace");
        }
        if tokio::time::timeout_at(deadline, ctx.pool_tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("backends did not take every queued frame within grace");
            ctx.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), ctx.pool_tasks.wait()).await;
        }
        journal_drained.cancel();
        if tokio::time::timeout(Duration::from_secs(10), journal_done)
            .await
            .is_err()
        {
            tracing::error!("journal writer did not finish its final records");
        }
        ctx.abort.cancel();
        ctx.background_stop.cancel();
        tracing::info!("stopped");
    }
}

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
