//! Running listeners: bound, started, and stopped by a reload.

use super::*;

/// A configured listener.
pub(super) struct ListenerState {
    pub(super) cfg: ListenerConfig,
    pub(super) slot: usize,
    pub(super) addr: SocketAddr,
    pub(super) shared: Arc<ListenerShared>,
    /// Stops its accept loop and sessions (a child of the server's stop).
    pub(super) stop: CancellationToken,
    /// Its sessions.
    pub(super) sessions: TaskTracker,
}

impl Server {
    pub(super) fn start_listener(
        &mut self,
        cfg: &ListenerConfig,
        sock: TcpListener,
        slot: usize,
        tls: Option<Arc<crate::tls::ListenerTls>>,
    ) -> std::io::Result<()> {
        let l = Listener::new(
            cfg,
            sock,
            self.ingress.clone(),
            slot,
            self.ctx.metrics.listener(&cfg.name),
            tls,
            self.ctx.durable.clone(),
        );
        let addr = l.local_addr()?;
        tracing::info!(listener = %cfg.name, address = %addr, pool = %cfg.pool, tls = cfg.tls.is_some(), protocol = cfg.protocol.label(), "listening");
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
        self.publish_listeners();
        Ok(())
    }
}
