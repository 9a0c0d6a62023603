//! Running pools: each pool's dispatchers (one, or one per backend of a
//! `mirror` pool), their backends with health checkers and upstream
//! connections; started, changed by a reload, retired.

use super::*;

/// What every pool is started with.
#[derive(Clone)]
pub(super) struct PoolSupervisor {
    pub(super) metrics: Arc<Metrics>,
    /// Dispatchers and upstreams.
    pub(super) pool_tasks: TaskTracker,
    /// Health checks and the admin endpoint.
    pub(super) background: TaskTracker,
    pub(super) abort: CancellationToken,
    pub(super) background_stop: CancellationToken,
    /// Seq of the last record written to the journal.
    pub(super) committed: Arc<AtomicU64>,
    /// How far the journal is durable (for RELP listeners' answers).
    pub(super) durable: crate::journal::Durable,
    pub(super) journal_dir: PathBuf,
    /// First seq of this run: pools check every record of earlier runs'
    /// segments they read back before routing it.
    pub(super) start_seq: u64,
}

/// One backend as the server keeps it, so a reload can keep it.
pub(super) struct BackendHandle {
    pub(super) cfg: BackendConfig,
    pub(super) backend: Arc<Backend>,
    /// Clones of the dispatcher's handles, handed back in a reloaded set.
    pub(super) conns: Vec<ConnHandle>,
    pub(super) health: CancellationToken,
}

/// One dispatcher and its backends (a balanced pool has one; `mirror` one
/// per backend).
pub(super) struct DispatchGroup {
    pub(super) update: Arc<UpdateSlot>,
    pub(super) wake: Arc<Notify>,
    pub(super) handback: Arc<Handback>,
    pub(super) members: Vec<BackendHandle>,
    pub(super) dispatcher: JoinHandle<()>,
}

/// A configured pool.
pub(super) struct PoolState {
    pub(super) cfg: PoolConfig,
    /// Its number for the journal writer.
    pub(super) slot: usize,
    pub(super) groups: Vec<DispatchGroup>,
    pub(super) settings: UpstreamSettings,
    /// Next [`Backend::index`].
    pub(super) next_backend: usize,
}

/// What an upstream connection is built from: a backend with other values
/// here needs new connections.
pub(super) fn upstream_shape(p: &PoolConfig) -> impl PartialEq {
    (
        p.framing,
        p.connections,
        p.connect_timeout,
        p.tcp_user_timeout,
        p.replay_window,
        p.tls.clone(),
        p.protocol,
        p.relp_window,
    )
}

impl PoolSupervisor {
    /// Starts one pool: its dispatcher, or for `mirror` one dispatcher per
    /// backend (each with its own journal cursor, `starts` in order) fed by
    /// a fan-out of the journal's batches.
    pub(super) fn start_pool(
        &self,
        p: &PoolConfig,
        slot: usize,
        ends: PoolEnds,
        starts: &[u64],
        tls: Option<Arc<crate::tls::PoolTls>>,
    ) -> PoolState {
        let name: Arc<str> = p.name.as_str().into();
        let pool_metrics = self.metrics.pool(&p.name);
        let mut state = PoolState {
            cfg: p.clone(),
            slot,
            groups: Vec::new(),
            settings: UpstreamSettings {
                framing: p.framing,
                relp_window: (p.protocol == crate::config::Protocol::Relp).then_some(p.relp_window),
                replay_window: p.replay_window.0,
                connect_timeout: p.connect_timeout.0,
                tcp_user_timeout: p.tcp_user_timeout.0,
                metrics: pool_metrics.clone(),
                tls: Arc::new(std::sync::RwLock::new(tls)),
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
            let group_members: Vec<BackendHandle> = group
                .into_iter()
                .map(|b| self.new_member(&mut state, &name, b, &wake, &handback))
                .collect();
            let mut missed_by = vec![ends.missed.clone()];
            let input = if mirror {
                let (t, r) = mpsc::channel(handoff::POOL_BATCHES);
                let own = handoff::Missed::default();
                missed_by.push(own.clone());
                inputs.push(handoff::MirrorOut::new(t, own));
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
                    applied: None,
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
            state.groups.push(DispatchGroup {
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
    pub(super) fn new_member(
        &self,
        state: &mut PoolState,
        pool: &Arc<str>,
        b: &BackendConfig,
        wake: &Arc<Notify>,
        handback: &Arc<Handback>,
    ) -> BackendHandle {
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
        let health = self.start_health(&backend, p, &state.settings.tls);
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
        BackendHandle {
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
    pub(super) fn reload_pool(
        &self,
        state: &mut PoolState,
        new: &PoolConfig,
    ) -> Vec<tokio::sync::oneshot::Receiver<u64>> {
        let mut applied = Vec::new();
        let old = std::mem::replace(&mut state.cfg, new.clone());
        let health_changed = old.health != new.health;
        let reconnect = upstream_shape(&old) != upstream_shape(new);
        if reconnect {
            state.settings.framing = new.framing;
            state.settings.relp_window =
                (new.protocol == crate::config::Protocol::Relp).then_some(new.relp_window);
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
                            self.restart_health(&mut m, new, &state.settings.tls);
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
            let (tx, rx) = tokio::sync::oneshot::channel();
            applied.push(rx);
            group.update.put(PoolUpdate {
                backends: members.iter().map(|m| m.backend.clone()).collect(),
                conns: members.iter().map(|m| m.conns.clone()).collect(),
                selector: selector(new, &members),
                queue_bytes: new.queue_bytes.0,
                applied: Some(tx),
            });
            group.members = members;
            group.wake.notify_one();
        }
        applied
    }

    pub(super) fn restart_health(
        &self,
        m: &mut BackendHandle,
        p: &PoolConfig,
        tls: &crate::tls::PoolTlsSlot,
    ) {
        m.health.cancel();
        m.backend.set_thresholds(p.health.rise, p.health.fall);
        m.health = self.start_health(&m.backend, p, tls);
    }

    /// A backend's active health checker; cancel the token to stop it.
    /// A backend's active health checker (a TCP connect, or a TLS
    /// handshake for a TLS pool); cancel the token to stop it.
    pub(super) fn start_health(
        &self,
        backend: &Arc<Backend>,
        p: &PoolConfig,
        tls: &crate::tls::PoolTlsSlot,
    ) -> CancellationToken {
        let stop = self.background_stop.child_token();
        let timeout = p.health.timeout.0;
        let interval = p.health.interval.0;
        if p.protocol == crate::config::Protocol::Relp {
            self.background.spawn(health::run(
                backend.clone(),
                interval,
                health::RelpOpen {
                    timeout,
                    tls: tls.clone(),
                },
                stop.clone(),
            ));
        } else if p.tls.is_some() {
            self.background.spawn(health::run(
                backend.clone(),
                interval,
                health::TlsHandshake {
                    timeout,
                    tls: tls.clone(),
                },
                stop.clone(),
            ));
        } else {
            self.background.spawn(health::run(
                backend.clone(),
                interval,
                health::TcpConnect { timeout },
                stop.clone(),
            ));
        }
        stop
    }

    /// A removed pool: its dispatchers finish what they hold (the writer
    /// closed their input), then its health checks stop and its backends'
    /// series leave `/metrics`.
    pub(super) fn retire_pool(&self, state: PoolState) {
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
pub(super) fn selector(p: &PoolConfig, members: &[BackendHandle]) -> Selector {
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
