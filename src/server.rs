//! Builds a running proxy from a validated [`Config`]: per pool its backends,
//! health checkers, upstream connections and dispatcher; the listeners; the
//! admin endpoint. [`Server::reload`] swaps in a new config without dropping
//! a client connection (SIGHUP). [`Server::shutdown`] is the graceful stop:
//! accept stops first, sessions hand over what they read, dispatchers and
//! upstreams drain within the grace period. `auditlb run` and the
//! integration tests use it.

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
use crate::pool::Backend;
use crate::upstream::{ConnShared, Handback, Upstream, UpstreamSettings};

/// A pool as the server keeps it: its backends, for status and tests.
#[derive(Clone)]
pub struct PoolRuntime {
    pub name: String,
    pub backends: Vec<Arc<Backend>>,
}

/// The pools readiness and tests look at; replaced by a reload.
type PoolView = Arc<Mutex<Vec<PoolRuntime>>>;

/// State the admin endpoint reads.
struct AdminStatus {
    metrics: Arc<Metrics>,
    pools: PoolView,
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

/// What every pool is started with.
#[derive(Clone)]
struct PoolCtx {
    metrics: Arc<Metrics>,
    /// Dispatchers and upstreams.
    pool_tasks: TaskTracker,
    /// Health checks and the admin endpoint.
    background: TaskTracker,
    abort: CancellationToken,
    background_stop: CancellationToken,
    /// Seq of the last record written to the journal.
    committed: Arc<AtomicU64>,
    journal_dir: PathBuf,
    /// First seq of this run: pools check every record of earlier runs'
    /// segments they read back before routing it.
    start_seq: u64,
}

/// One backend as the server keeps it, so a reload can keep it.
struct Member {
    cfg: BackendConfig,
    backend: Arc<Backend>,
    /// Clones of the dispatcher's handles, handed back in a reloaded set.
    conns: Vec<ConnHandle>,
    health: CancellationToken,
}

/// One dispatcher and its backends (a balanced pool has one; `mirror` one
/// per backend).
struct Group {
    update: Arc<UpdateSlot>,
    wake: Arc<Notify>,
    handback: Arc<Handback>,
    members: Vec<Member>,
    dispatcher: JoinHandle<()>,
}

/// A configured pool.
struct PoolState {
    cfg: PoolConfig,
    /// Its number for the journal writer.
    slot: usize,
    groups: Vec<Group>,
    settings: UpstreamSettings,
    /// Next [`Backend::index`].
    next_backend: usize,
}

/// What an upstream connection is built from: a backend with other values
/// here needs new connections.
fn upstream_shape(p: &PoolConfig) -> impl PartialEq {
    (
        p.framing,
        p.connections,
        p.connect_timeout,
        p.tcp_user_timeout,
        p.replay_window,
    )
}

/// A configured listener.
struct ListenerState {
    cfg: ListenerConfig,
    slot: usize,
    addr: SocketAddr,
    shared: Arc<ListenerShared>,
    /// Stops its accept loop and sessions (a child of the server's stop).
    stop: CancellationToken,
    /// Its sessions.
    sessions: TaskTracker,
}

/// What a reload changed, for its log line.
#[derive(Debug, Default)]
pub struct Reloaded {
    pub pools_added: usize,
    pub pools_removed: usize,
    pub pools_changed: usize,
    pub listeners_added: usize,
    pub listeners_removed: usize,
    pub listeners_changed: usize,
    /// Seq of the journal's CONFIG record for the new config.
    pub config_seq: u64,
}

/// A running proxy.
pub struct Server {
    ctx: PoolCtx,
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
    grace: Duration,
    /// Stops accepting and reading from clients.
    stop: CancellationToken,
    /// Listeners and their sessions.
    client_tasks: TaskTracker,
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
                        .map_err(|e| anyhow::anyhow!("admin: cannot listen on {addr}: {e}"))?,
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
        let journal_drained = CancellationToken::new();
        let journal_ready = journal::writer::spawn(journal::writer::Start {
            cfg: config.journal.clone(),
            metrics: metrics.journal(),
            config_hash: config.source_hash,
            rx: journal_rx,
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
            Err(_) => anyhow::bail!("journal writer thread died while opening the journal"),
        };
        let ctx = PoolCtx {
            metrics: metrics.clone(),
            pool_tasks: TaskTracker::new(),
            background: TaskTracker::new(),
            abort,
            background_stop,
            committed: opened.committed.clone(),
            journal_dir: config.journal.dir.clone(),
            start_seq: opened.start_seq,
        };

        let mut pools = Vec::new();
        let mut resume = opened.cursors.into_iter();
        for (slot, (p, ends)) in config.pools.iter().zip(ends).enumerate() {
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
            pools.push(ctx.start_pool(p, slot, ends, &starts));
        }
        let view: PoolView = Arc::new(Mutex::new(pools.iter().map(PoolState::runtime).collect()));

        let admin_addr = match admin_listener {
            Some(l) => {
                let addr = l.local_addr()?;
                tracing::info!(address = %addr, "admin endpoint: /metrics /healthz /readyz");
                let status = Arc::new(AdminStatus {
                    metrics: metrics.clone(),
                    pools: view.clone(),
                });
                ctx.background
                    .spawn(admin::run(l, status, ctx.background_stop.clone()));
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
            grace: config.shutdown.grace.0,
            stop,
            client_tasks: TaskTracker::new(),
            journal_drained,
            journal_done: opened.done,
            config: config.clone(),
        };
        for (slot, (cfg, sock)) in config.listeners.iter().zip(bound).enumerate() {
            server.start_listener(cfg, sock, slot)?;
        }
        Ok(server)
    }

    fn start_listener(
        &mut self,
        cfg: &ListenerConfig,
        sock: TcpListener,
        slot: usize,
    ) -> std::io::Result<()> {
        let l = Listener::new(
            cfg,
            sock,
            self.ingress.clone(),
            slot,
            self.ctx.metrics.listener(&cfg.name),
        );
        let addr = l.local_addr()?;
        tracing::info!(listener = %cfg.name, address = %addr, pool = %cfg.pool, "listening");
        let stop = self.stop.child_token();
        let sessions = TaskTracker::new();
        let shared = l.shared();
        self.client_tasks
            .spawn(l.run(stop.clone(), self.client_tasks.clone(), sessions.clone()));
        self.listeners.push(ListenerState {
            cfg: cfg.clone(),
            slot,
            addr,
            shared,
            stop,
            sessions,
        });
        Ok(())
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

    /// Applies a new config to the running proxy: new listeners are bound
    /// first (a failure changes nothing), then the journal writer switches
    /// its routing and records the config's hash (CONFIG record) in one
    /// step between two batches, pools and backends are swapped in (kept
    /// backends keep their connections, removed ones drain), listener
    /// limits change, and removed listeners stop after their sessions hand
    /// over what they read. Client connections of kept listeners stay open.
    /// On `Err` (each problem with its key path) nothing changed.
    pub async fn reload(&mut self, new: Config) -> Result<Reloaded, Vec<String>> {
        let mut problems = self.config.reload_blockers(&new);
        // A listener is kept when its name and address stay: per new
        // listener, its running one.
        let kept: Vec<Option<usize>> = new
            .listeners
            .iter()
            .map(|l| {
                self.listeners
                    .iter()
                    .position(|s| s.cfg.name == l.name && s.cfg.address == l.address)
            })
            .collect();
        let mut fresh = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            if kept[i].is_some() {
                continue;
            }
            if let Some(other) = self.listeners.iter().find(|s| {
                s.cfg.address == l.address && !new.listeners.iter().any(|n| n.name == s.cfg.name)
            }) {
                problems.push(format!(
                    "listener[{i}].address: {} is still bound by listener {:?}; renaming a listener needs a restart",
                    l.address, other.cfg.name
                ));
                continue;
            }
            match listener::bind(l) {
                Ok(sock) => fresh.push((l.clone(), sock)),
                Err(e) => problems.push(format!("listener[{i}].address: {e}")),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut report = Reloaded::default();

        // New pools start with the live stream.
        let start = self.ctx.committed.load(Ordering::Acquire) + 1;
        let mut add_pools = Vec::new();
        for p in &new.pools {
            if self.pools.iter().any(|s| s.cfg.name == p.name) {
                continue;
            }
            let slot = self.next_pool_slot;
            self.next_pool_slot += 1;
            let (link, ends) = handoff::link(&p.name, delivery_names(p), start);
            add_pools.push(link);
            let starts = vec![start; delivery_names(p).len()];
            self.pools.push(self.ctx.start_pool(p, slot, ends, &starts));
            report.pools_added += 1;
        }
        let slot_of = |name: &str, pools: &[PoolState]| {
            pools.iter().find(|s| s.cfg.name == name).map(|s| s.slot)
        };
        // Routing: kept listeners switch to their (new) pool; new ones get
        // the next slots; removed ones keep theirs until they stopped.
        let mut routes = self.routes.clone();
        let mut removed_listeners = Vec::new();
        for (k, s) in self.listeners.iter().enumerate() {
            match kept.iter().position(|&x| x == Some(k)) {
                Some(i) => routes[s.slot] = slot_of(&new.listeners[i].pool, &self.pools),
                None => removed_listeners.push(k),
            }
        }
        let mut fresh_slots = Vec::new();
        for (l, _) in &fresh {
            fresh_slots.push(routes.len());
            routes.push(slot_of(&l.pool, &self.pools));
        }
        let config_seq = match self
            .reconfigure(add_pools, Vec::new(), routes.clone(), Some(new.source_hash))
            .await
        {
            Some(seq) => seq,
            None => return Err(vec!["journal: the writer stopped; nothing changed".into()]),
        };
        self.routes = routes;
        report.config_seq = config_seq;

        // Changed pools, in place.
        for p in &new.pools {
            if let Some(state) = self.pools.iter_mut().find(|s| s.cfg.name == p.name) {
                if state.cfg != *p {
                    self.ctx.reload_pool(state, p);
                    report.pools_changed += 1;
                }
            }
        }
        // Listeners: changed limits, new ones, removed ones.
        for (l, k) in new.listeners.iter().zip(&kept) {
            if let Some(k) = *k {
                if self.listeners[k].cfg != *l {
                    self.listeners[k].shared.update(l);
                    self.listeners[k].cfg = l.clone();
                    report.listeners_changed += 1;
                }
            }
        }
        for ((l, sock), slot) in fresh.into_iter().zip(fresh_slots) {
            if let Err(e) = self.start_listener(&l, sock, slot) {
                tracing::error!(listener = %l.name, error = %e, "reload: listener did not start");
            }
            report.listeners_added += 1;
        }
        let mut stopping = Vec::new();
        for k in removed_listeners.into_iter().rev() {
            let s = self.listeners.remove(k);
            tracing::info!(listener = %s.cfg.name, address = %s.addr, "reload: listener removed; its sessions finish");
            s.stop.cancel();
            s.sessions.close();
            self.routes[s.slot] = None;
            stopping.push(s);
            report.listeners_removed += 1;
        }
        // Removed pools close once nothing can send them frames: their
        // dispatchers finish what they were given, then stop.
        let removed_pools: Vec<usize> = (0..self.pools.len())
            .filter(|&i| !new.pools.iter().any(|p| p.name == self.pools[i].cfg.name))
            .collect();
        if !stopping.is_empty() || !removed_pools.is_empty() {
            let deadline = tokio::time::Instant::now() + self.grace;
            for s in &stopping {
                if tokio::time::timeout_at(deadline, s.sessions.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(listener = %s.cfg.name, "reload: sessions of a removed listener still open after the grace period");
                }
            }
            let close: Vec<usize> = removed_pools.iter().map(|&i| self.pools[i].slot).collect();
            if self
                .reconfigure(Vec::new(), close, self.routes.clone(), None)
                .await
                .is_none()
            {
                tracing::error!(
                    "reload: the journal writer stopped before removed pools were closed"
                );
            }
            for i in removed_pools.into_iter().rev() {
                let state = self.pools.remove(i);
                tracing::info!(pool = %state.cfg.name, "reload: pool removed; it delivers what it holds, then stops");
                self.ctx.retire_pool(state);
                report.pools_removed += 1;
            }
        }
        *crate::lock(&self.view) = self.pools.iter().map(PoolState::runtime).collect();
        self.grace = new.shutdown.grace.0;
        self.config = new;
        Ok(report)
    }

    /// Sends the journal writer a routing change and waits until it is
    /// written. `None` if the writer is gone.
    async fn reconfigure(
        &self,
        add_pools: Vec<handoff::PoolLink>,
        close_pools: Vec<usize>,
        routes: Vec<Option<usize>>,
        config_hash: Option<journal::format::Hash>,
    ) -> Option<u64> {
        let (done, applied) = tokio::sync::oneshot::channel();
        let rc = Reconfigure {
            add_pools,
            close_pools,
            routes,
            config_hash,
            done,
        };
        self.ingress
            .send(Ingress::Reconfigure(Box::new(rc)))
            .await
            .ok()?;
        applied.await.ok()
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
            ..
        } = self;
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

impl PoolState {
    fn runtime(&self) -> PoolRuntime {
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

impl PoolCtx {
    /// Starts one pool: its dispatcher, or for `mirror` one dispatcher per
    /// backend (each with its own journal cursor, `starts` in order) fed by
    /// a fan-out of the journal's batches.
    fn start_pool(&self, p: &PoolConfig, slot: usize, ends: PoolEnds, starts: &[u64]) -> PoolState {
        let name: Arc<str> = p.name.as_str().into();
        let pool_metrics = self.metrics.pool(&p.name);
        let mut state = PoolState {
            cfg: p.clone(),
            slot,
            groups: Vec::new(),
            settings: UpstreamSettings {
                framing: p.framing,
                replay_window: p.replay_window.0,
                connect_timeout: p.connect_timeout.0,
                tcp_user_timeout: p.tcp_user_timeout.0,
                metrics: pool_metrics.clone(),
            },
            next_backend: 0,
        };
        let mirror = p.balance == Balance::Mirror;
        // Which backends each dispatcher owns.
        let members: Vec<Vec<&BackendConfig>> = if mirror {
            p.backends.iter().map(|b| vec![b]).collect()
        } else {
            vec![p.backends.iter().collect()]
        };
        let mut inputs = Vec::new();
        let mut rx = Some(ends.rx);
        for ((group, &cursor), delivered) in members.into_iter().zip(starts).zip(&ends.cursors) {
            let wake = Arc::new(Notify::new());
            let handback = Arc::new(Handback::new(wake.clone()));
            let group_members: Vec<Member> = group
                .into_iter()
                .map(|b| self.new_member(&mut state, &name, b, &wake, &handback))
                .collect();
            let mut missed_by = vec![ends.missed.clone()];
            let input = if mirror {
                let (t, r) = mpsc::channel(handoff::POOL_BATCHES);
                let own = handoff::Missed::default();
                missed_by.push(own.clone());
                inputs.push((t, own));
                r
            } else {
                rx.take().expect("one dispatcher for a balanced pool")
            };
            let update = Arc::new(UpdateSlot::default());
            let dispatcher = Dispatcher::new(DispatcherParts {
                pool: name.clone(),
                set: PoolUpdate {
                    backends: group_members.iter().map(|m| m.backend.clone()).collect(),
                    conns: group_members.iter().map(|m| m.conns.clone()).collect(),
                    selector: selector(p, &group_members),
                    queue_bytes: p.queue_bytes.0,
                },
                rx: input,
                missed: missed_by,
                handback: handback.clone(),
                wake: wake.clone(),
                metrics: pool_metrics.clone(),
                journal: DispatcherJournal {
                    tail: PoolTail::new(self.journal_dir.clone(), p.name.clone(), cursor)
                        .checked_before(self.start_seq, self.metrics.journal().tampered),
                    cursor,
                    committed: self.committed.clone(),
                    closed_at: ends.closed_at.clone(),
                    delivered_below: delivered.clone(),
                    settled_log: ends.settled.clone(),
                },
                update: update.clone(),
            });
            let dispatcher = self.pool_tasks.spawn(dispatcher.run(self.abort.clone()));
            state.groups.push(Group {
                update,
                wake,
                handback,
                members: group_members,
                dispatcher,
            });
        }
        if let Some(rx) = rx {
            self.pool_tasks.spawn(handoff::fan_out(rx, inputs));
        }
        state
    }

    /// A backend with its health checker and upstream connections.
    fn new_member(
        &self,
        state: &mut PoolState,
        pool: &Arc<str>,
        b: &BackendConfig,
        wake: &Arc<Notify>,
        handback: &Arc<Handback>,
    ) -> Member {
        let index = state.next_backend;
        state.next_backend += 1;
        let p = &state.cfg;
        let backend = Arc::new(Backend::new(
            index,
            pool.clone(),
            b,
            p.health.rise,
            p.health.fall,
            self.metrics.backend(&p.name, &b.address),
            wake.clone(),
        ));
        let health = self.start_health(&backend, p);
        let conns = (0..p.connections)
            .map(|_| {
                let (tx, rx) = mpsc::channel(UPSTREAM_BATCHES);
                let shared = Arc::new(ConnShared::new(wake.clone()));
                let up = Upstream::new(
                    backend.clone(),
                    rx,
                    shared.clone(),
                    handback.clone(),
                    state.settings.clone(),
                );
                self.pool_tasks.spawn(up.run(self.abort.clone()));
                ConnHandle { tx, shared }
            })
            .collect();
        Member {
            cfg: b.clone(),
            backend,
            conns,
            health,
        }
    }

    /// Applies a changed pool config to a running pool. Backends whose
    /// address and connection settings stay are kept, with their
    /// connections and health state; new ones connect; removed ones drain
    /// (what they cannot deliver is routed to the others). A `mirror` pool
    /// only takes new health settings ([`Config::reload_blockers`]).
    fn reload_pool(&self, state: &mut PoolState, new: &PoolConfig) {
        let old = std::mem::replace(&mut state.cfg, new.clone());
        let health_changed = old.health != new.health;
        let reconnect = upstream_shape(&old) != upstream_shape(new);
        if reconnect {
            state.settings.framing = new.framing;
            state.settings.replay_window = new.replay_window.0;
            state.settings.connect_timeout = new.connect_timeout.0;
            state.settings.tcp_user_timeout = new.tcp_user_timeout.0;
        }
        let name: Arc<str> = new.name.as_str().into();
        for g in 0..state.groups.len() {
            let mut old_members = std::mem::take(&mut state.groups[g].members);
            let wanted: Vec<BackendConfig> = if new.balance == Balance::Mirror {
                old_members.iter().map(|m| m.cfg.clone()).collect()
            } else {
                new.backends.clone()
            };
            let mut members = Vec::new();
            let (wake, handback) = (
                state.groups[g].wake.clone(),
                state.groups[g].handback.clone(),
            );
            for b in &wanted {
                let keep = if reconnect {
                    None
                } else {
                    old_members.iter().position(|m| m.cfg.address == b.address)
                };
                match keep {
                    Some(k) => {
                        let mut m = old_members.remove(k);
                        m.cfg = b.clone();
                        if health_changed {
                            self.restart_health(&mut m, new);
                        }
                        members.push(m);
                    }
                    None => {
                        tracing::info!(pool = %new.name, backend = %b.address, "reload: backend added");
                        members.push(self.new_member(state, &name, b, &wake, &handback));
                    }
                }
            }
            for m in old_members {
                tracing::info!(pool = %new.name, backend = %m.cfg.address, "reload: backend removed; it drains what it was given");
                m.health.cancel();
                if !members.iter().any(|k| k.cfg.address == m.cfg.address) {
                    self.metrics.forget_backend(&new.name, &m.cfg.address);
                }
            }
            let group = &mut state.groups[g];
            group.update.put(PoolUpdate {
                backends: members.iter().map(|m| m.backend.clone()).collect(),
                conns: members.iter().map(|m| m.conns.clone()).collect(),
                selector: selector(new, &members),
                queue_bytes: new.queue_bytes.0,
            });
            group.members = members;
            group.wake.notify_one();
        }
    }

    fn restart_health(&self, m: &mut Member, p: &PoolConfig) {
        m.health.cancel();
        m.backend.set_thresholds(p.health.rise, p.health.fall);
        m.health = self.start_health(&m.backend, p);
    }

    /// A backend's active health checker; cancel the token to stop it.
    fn start_health(&self, backend: &Arc<Backend>, p: &PoolConfig) -> CancellationToken {
        let stop = self.background_stop.child_token();
        self.background.spawn(health::run(
            backend.clone(),
            p.health.interval.0,
            p.health.timeout.0,
            stop.clone(),
        ));
        stop
    }

    /// A removed pool: its dispatchers finish what they hold (the writer
    /// closed their input), then its health checks stop and its backends'
    /// series leave `/metrics`.
    fn retire_pool(&self, state: PoolState) {
        let metrics = self.metrics.clone();
        let name = state.cfg.name.clone();
        let mut waits = Vec::new();
        let mut members = Vec::new();
        for g in state.groups {
            waits.push(g.dispatcher);
            // Only the dispatcher's own handles remain: its upstreams end
            // with it.
            members.extend(g.members.into_iter().map(|m| (m.cfg.address, m.health)));
        }
        self.background.spawn(async move {
            for w in waits {
                let _ = w.await;
            }
            for (address, health) in members {
                health.cancel();
                metrics.forget_backend(&name, &address);
            }
            tracing::info!(pool = %name, "removed pool finished delivering");
        });
    }
}

/// A selector over a dispatcher's members, from the pool's config.
fn selector(p: &PoolConfig, members: &[Member]) -> Selector {
    Selector::new(
        p.balance,
        p.hash_key(),
        members
            .iter()
            .map(|m| SelectorMember {
                name: m.cfg.address.clone(),
                weight: m.cfg.weight,
                backup: m.cfg.backup,
            })
            .collect(),
    )
}
