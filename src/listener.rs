//! Listeners. A listener binds with socket2 (reuseaddr, backlog,
//! keepalive), takes a connection permit *before* accepting, backs off on
//! accept errors, enforces the per-source limit, and spawns one session
//! task per client ([`crate::session`]). A reload changes its limits and
//! session settings through [`ListenerShared`].

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Framing, ListenerConfig, Oversize};
use crate::journal::Ingress;
use crate::metrics::ListenerMetrics;
use crate::ratelimit::LogLimiter;
use crate::tls::ListenerTls;

/// Binds a listening socket the way a proxy should.
#[derive(Debug, thiserror::Error)]
#[error("listener {name}: cannot listen on {addr}: {source}")]
pub struct BindError {
    pub name: String,
    pub addr: SocketAddr,
    pub source: io::Error,
}

pub fn bind(cfg: &ListenerConfig) -> Result<TcpListener, BindError> {
    let addr = cfg.socket_addr();
    let err = |source| BindError {
        name: cfg.name.clone(),
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    socket.set_reuse_address(true).map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    socket
        .listen(i32::try_from(cfg.backlog).unwrap_or(i32::MAX))
        .map_err(err)?;
    TcpListener::from_std(socket.into()).map_err(err)
}

/// Settings every session of one listener shares.
pub(crate) struct SessionSettings {
    pub(crate) name: Arc<str>,
    pub(crate) framing: Framing,
    pub(crate) max_frame: usize,
    pub(crate) oversize: Oversize,
    pub(crate) idle_timeout: Duration,
    pub(crate) frame_timeout: Duration,
    pub(crate) metrics: ListenerMetrics,
    /// To the journal writer.
    pub(crate) tx: mpsc::Sender<Ingress>,
    /// This listener's slot: the journal writer maps it to a pool.
    pub(crate) slot: usize,
    pub(crate) warn_limit: Arc<LogLimiter>,
    /// TLS material, for a TLS listener.
    pub(crate) tls: Option<Arc<ListenerTls>>,
    /// Syslog (RFC 6587 framing) or RELP.
    pub(crate) protocol: crate::config::Protocol,
    /// How far the journal is durable: a RELP session answers a message
    /// once this reaches its frame.
    pub(crate) durable: crate::journal::Durable,
}

/// Counts connections per source IP; a guard gives the slot back.
struct SourceLimit {
    /// 0: no limit.
    max: AtomicUsize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    limit: Arc<SourceLimit>,
    ip: IpAddr,
}

impl SourceLimit {
    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut m = crate::lock(&self.counts);
        let max = self.max.load(Ordering::Relaxed);
        let c = m.entry(ip).or_insert(0);
        if max > 0 && *c >= max {
            return None;
        }
        *c += 1;
        Some(SourceSlot {
            limit: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = crate::lock(&self.limit.counts);
        if let Some(c) = m.get_mut(&self.ip) {
            *c -= 1;
            if *c == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// One bound listener, ready to run.
pub struct Listener {
    listener: TcpListener,
    shared: Arc<ListenerShared>,
}

/// What a reload may change on a running listener: new limits and session
/// settings apply to connections accepted from then on; the connections
/// already open keep theirs (as with HAProxy's reload), but count against
/// the new `max-connections`.
pub struct ListenerShared {
    limit: Arc<Semaphore>,
    /// The `max-connections` the semaphore holds permits for.
    max: Mutex<usize>,
    per_source: Arc<SourceLimit>,
    settings: std::sync::RwLock<Arc<SessionSettings>>,
    /// The TLS material in force, watched by open sessions: after a reload
    /// each checks that it would still be let in, and closes if not.
    tls_now: tokio::sync::watch::Sender<Option<Arc<ListenerTls>>>,
}

impl ListenerShared {
    /// Applies a reloaded listener config (same name and address) and its
    /// freshly loaded TLS material: connections accepted from now on get
    /// them, open ones keep what they started with.
    pub fn update(&self, cfg: &ListenerConfig, tls: Option<Arc<ListenerTls>>) {
        let mut max = crate::lock(&self.max);
        if cfg.max_connections > *max {
            self.limit.add_permits(cfg.max_connections - *max);
        } else if cfg.max_connections < *max {
            // Free permits go now; the rest as open connections close.
            let excess = *max - cfg.max_connections;
            let gone = self.limit.forget_permits(excess);
            if gone < excess {
                let limit = self.limit.clone();
                let rest = u32::try_from(excess - gone).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = limit.acquire_many_owned(rest).await {
                        p.forget();
                    }
                });
            }
        }
        *max = cfg.max_connections;
        self.per_source.max.store(
            cfg.max_connections_per_source.unwrap_or(0),
            Ordering::Relaxed,
        );
        self.tls_now.send_replace(tls.clone());
        let mut settings = self.settings.write().unwrap_or_else(|p| p.into_inner());
        let old = settings.clone();
        *settings = Arc::new(SessionSettings::new(
            cfg,
            old.metrics.clone(),
            old.tx.clone(),
            old.slot,
            old.warn_limit.clone(),
            tls,
            old.durable.clone(),
        ));
    }

    fn settings(&self) -> Arc<SessionSettings> {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl SessionSettings {
    fn new(
        cfg: &ListenerConfig,
        metrics: ListenerMetrics,
        tx: mpsc::Sender<Ingress>,
        slot: usize,
        warn_limit: Arc<LogLimiter>,
        tls: Option<Arc<ListenerTls>>,
        durable: crate::journal::Durable,
    ) -> Self {
        Self {
            protocol: cfg.protocol,
            durable,
            name: cfg.name.as_str().into(),
            framing: cfg.framing,
            max_frame: usize::try_from(cfg.max_frame.0).unwrap_or(usize::MAX),
            oversize: cfg.oversize,
            idle_timeout: cfg.idle_timeout.0,
            frame_timeout: cfg.frame_timeout.0,
            metrics,
            tx,
            slot,
            warn_limit,
            tls,
        }
    }
}

impl Listener {
    /// `slot` is the listener's number for the journal writer's routing.
    pub fn new(
        cfg: &ListenerConfig,
        listener: TcpListener,
        tx: mpsc::Sender<Ingress>,
        slot: usize,
        metrics: ListenerMetrics,
        tls: Option<Arc<ListenerTls>>,
        durable: crate::journal::Durable,
    ) -> Self {
        let warn_limit = Arc::new(LogLimiter::new(10, Duration::from_secs(10)));
        Self {
            listener,
            shared: Arc::new(ListenerShared {
                limit: Arc::new(Semaphore::new(cfg.max_connections)),
                max: Mutex::new(cfg.max_connections),
                per_source: Arc::new(SourceLimit {
                    max: AtomicUsize::new(cfg.max_connections_per_source.unwrap_or(0)),
                    counts: Mutex::new(HashMap::new()),
                }),
                tls_now: tokio::sync::watch::Sender::new(tls.clone()),
                settings: std::sync::RwLock::new(Arc::new(SessionSettings::new(
                    cfg, metrics, tx, slot, warn_limit, tls, durable,
                ))),
            }),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The handle a reload changes the listener through.
    pub fn shared(&self) -> Arc<ListenerShared> {
        self.shared.clone()
    }

    /// Accepts until `stop`; sessions are spawned on `tasks` and also end at
    /// `stop`, after handing over what they read. `own` tracks just this
    /// listener's sessions (a reload that removes it waits for them).
    pub async fn run(self, stop: CancellationToken, tasks: TaskTracker, own: TaskTracker) {
        let name = self.shared.settings().name.clone();
        let mut backoff = Duration::from_millis(5);
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = self.shared.limit.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => break,
                r = self.listener.accept() => match r {
                    Ok(x) => {
                        backoff = Duration::from_millis(5);
                        x
                    }
                    Err(e) => {
                        // EMFILE and friends: wait instead of spinning.
                        tracing::warn!(listener = %name, error = %e, retry_in = ?backoff, "accept failed");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
            };
            let settings = self.shared.settings();
            let slot = match self.shared.per_source.try_take(peer.ip()) {
                Some(s) => s,
                None => {
                    settings.metrics.rejected_limit.inc();
                    if let Some(skipped) = settings.warn_limit.allow() {
                        tracing::warn!(listener = %name, client = %peer, skipped, "per-source connection limit reached; connection refused");
                    }
                    continue;
                }
            };
            settings.metrics.accepted.inc();
            let stop = stop.clone();
            let mine = own.token();
            let reloads = self.shared.tls_now.subscribe();
            tasks.spawn(async move {
                let _permit = permit;
                let _slot = slot;
                let _mine = mine;
                settings.metrics.open.inc();
                crate::session::session(stream, peer, &settings, stop, reloads).await;
                settings.metrics.open.dec();
            });
        }
        tracing::info!(listener = %name, "stopped accepting");
    }
}
