//! Reloading the config (SIGHUP): [`ReloadPlan::diff`] decides what
//! changes from the running listeners and pools and the new config, with no
//! I/O; [`Server::reload`] checks what only binding can tell, then applies
//! the plan. The reload metrics are counted here.

use super::*;

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
    /// From this seq on every frame of a changed pool went to its new
    /// backend set (frames between `config_seq` and it were already taken
    /// in by the dispatcher and may have gone to the old set). `None` when
    /// no pool changed, or a dispatcher did not take its set within the
    /// grace period.
    pub backends_switched_at: Option<u64>,
}

/// One reason a reload is refused: the key path it is about, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub msg: String,
}

impl Problem {
    /// From a `key.path: why` message (what config validation writes).
    fn from_text(text: &str) -> Problem {
        match text.split_once(": ") {
            Some((key, msg)) => Problem {
                key: key.into(),
                msg: msg.into(),
            },
            None => Problem {
                key: String::new(),
                msg: text.into(),
            },
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.msg)
        } else {
            write!(f, "{}: {}", self.key, self.msg)
        }
    }
}

/// A refused reload: nothing changed, for these reasons.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reload refused: {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ReloadError {
    pub problems: Vec<Problem>,
}

impl ReloadError {
    fn from_texts(texts: Vec<String>) -> ReloadError {
        ReloadError {
            problems: texts.iter().map(|t| Problem::from_text(t)).collect(),
        }
    }
}

/// What a reload changes, decided before anything is touched, from the
/// running listeners and pools and the new config. Listeners are matched by
/// name and address (a listener that moves is a new one), pools by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Why the reload is refused, each with its key path (none: apply).
    pub problems: Vec<String>,
    /// Per new listener, the running listener it keeps (`None`: bind a new
    /// one).
    pub kept: Vec<Option<usize>>,
    /// Kept listeners whose settings change: (running, new).
    pub changed_listeners: Vec<(usize, usize)>,
    /// Running listeners that go.
    pub removed_listeners: Vec<usize>,
    /// New pools (indices into the new config's pools).
    pub added_pools: Vec<usize>,
    /// Pools whose settings change: (running, new).
    pub changed_pools: Vec<(usize, usize)>,
    /// Running pools that go.
    pub removed_pools: Vec<usize>,
}

impl ReloadPlan {
    /// The plan from `old` (the running config) with `listeners` and
    /// `pools` as they run now, to `new`.
    pub fn diff(
        old: &Config,
        listeners: &[ListenerConfig],
        pools: &[PoolConfig],
        new: &Config,
    ) -> ReloadPlan {
        let mut plan = ReloadPlan {
            problems: old.reload_blockers(new),
            ..ReloadPlan::default()
        };
        plan.kept = new
            .listeners
            .iter()
            .map(|l| {
                listeners
                    .iter()
                    .position(|s| s.name == l.name && s.address == l.address)
            })
            .collect();
        for (i, l) in new.listeners.iter().enumerate() {
            match plan.kept[i] {
                Some(k) if listeners[k] != *l => plan.changed_listeners.push((k, i)),
                Some(_) => {}
                None => {
                    // Its address is still bound by a listener that goes.
                    if let Some(other) = listeners.iter().find(|s| {
                        s.address == l.address && !new.listeners.iter().any(|n| n.name == s.name)
                    }) {
                        plan.problems.push(format!(
                            "listener[{i}].address: {} is still bound by listener {:?}; renaming a listener needs a restart",
                            l.address, other.name
                        ));
                    }
                }
            }
        }
        plan.removed_listeners = (0..listeners.len())
            .filter(|k| !plan.kept.contains(&Some(*k)))
            .collect();
        for (i, p) in new.pools.iter().enumerate() {
            match pools.iter().position(|s| s.name == p.name) {
                Some(k) if pools[k] != *p => plan.changed_pools.push((k, i)),
                Some(_) => {}
                None => plan.added_pools.push(i),
            }
        }
        plan.removed_pools = (0..pools.len())
            .filter(|&k| !new.pools.iter().any(|p| p.name == pools[k].name))
            .collect();
        plan
    }
}

impl Server {
    /// Applies a new config to the running proxy: new listeners are bound
    /// first (a failure changes nothing), then the journal writer switches
    /// its routing and records the config's hash (CONFIG record) in one
    /// step between two batches, pools and backends are swapped in (kept
    /// backends keep their connections, removed ones drain), listener
    /// limits change, and removed listeners stop after their sessions hand
    /// over what they read. Client connections of kept listeners stay open.
    /// On `Err` (each problem with its key path) nothing changed.
    pub async fn reload(&mut self, new: Config) -> Result<Reloaded, ReloadError> {
        let r = self.apply(new).await.map_err(ReloadError::from_texts);
        let m = &self.ctx.metrics;
        match &r {
            Ok(_) => {
                m.reloads.inc();
                m.reload_ok.set(1);
            }
            Err(_) => {
                m.reload_failures.inc();
                m.reload_ok.set(0);
            }
        }
        r
    }

    /// Loads and validates the config file at `path`, then [`Server::reload`]s
    /// it; a file with problems counts as a refused reload.
    pub async fn reload_file(&mut self, path: &std::path::Path) -> Result<Reloaded, ReloadError> {
        match Config::load(path) {
            Ok(new) => self.reload(new).await,
            Err(e) => {
                self.ctx.metrics.reload_failures.inc();
                self.ctx.metrics.reload_ok.set(0);
                Err(ReloadError::from_texts(match e {
                    crate::config::ConfigError::Invalid { problems, .. } => problems,
                    e => vec![e.to_string()],
                }))
            }
        }
    }

    async fn apply(&mut self, new: Config) -> Result<Reloaded, Vec<String>> {
        let running: Vec<ListenerConfig> = self.listeners.iter().map(|s| s.cfg.clone()).collect();
        let pools: Vec<PoolConfig> = self.pools.iter().map(|s| s.cfg.clone()).collect();
        let plan = ReloadPlan::diff(&self.config, &running, &pools, &new);
        let mut problems = plan.problems.clone();
        let kept = plan.kept.clone();
        // What only binding can tell: new listeners are bound before
        // anything changes.
        let mut fresh = Vec::new();
        for (i, l) in new.listeners.iter().enumerate() {
            let at = format!("listener[{i}].");
            if kept[i].is_some() || problems.iter().any(|p| p.starts_with(&at)) {
                continue;
            }
            match listener::bind(l) {
                Ok(sock) => fresh.push((i, l.clone(), sock)),
                Err(e) => problems.push(format!("listener[{i}].address: {e}")),
            }
        }
        // Every TLS file is read again (a rotated certificate under the
        // same path is new material); one bad file refuses the reload and
        // the running material stays.
        let material = match crate::tls::load(&new) {
            Ok(m) => m,
            Err(e) => {
                problems.extend(e);
                crate::tls::Material::default()
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut report = Reloaded::default();

        // New pools start with the live stream.
        let start = self.ctx.committed.load(Ordering::Acquire) + 1;
        let mut add_pools = Vec::new();
        for &i in &plan.added_pools {
            let p = &new.pools[i];
            let slot = self.next_pool_slot;
            self.next_pool_slot += 1;
            let (link, ends) = handoff::link(&p.name, delivery_names(p), start);
            add_pools.push(link);
            let starts = vec![start; delivery_names(p).len()];
            self.pools.push(
                self.ctx
                    .start_pool(p, slot, ends, &starts, material.pools[i].clone()),
            );
            report.pools_added += 1;
        }
        let slot_of = |name: &str, pools: &[PoolState]| {
            pools.iter().find(|s| s.cfg.name == name).map(|s| s.slot)
        };
        // Routing: kept listeners switch to their (new) pool; new ones get
        // the next slots; removed ones keep theirs until they stopped.
        let mut routes = self.routes.clone();
        for (k, s) in self.listeners.iter().enumerate() {
            if let Some(i) = kept.iter().position(|&x| x == Some(k)) {
                routes[s.slot] = slot_of(&new.listeners[i].pool, &self.pools);
            }
        }
        let mut fresh_slots = Vec::new();
        for (_, l, _) in &fresh {
            fresh_slots.push(routes.len());
            routes.push(slot_of(&l.pool, &self.pools));
        }
        let config_seq = match self
            .reconfigure(
                add_pools,
                Vec::new(),
                routes.clone(),
                Some(journal::ConfigStamp {
                    hash: new.source_hash,
                    tls: material.summary(&new),
                }),
            )
            .await
        {
            Some(seq) => seq,
            None => return Err(vec!["journal: the writer stopped; nothing changed".into()]),
        };
        self.routes = routes;
        report.config_seq = config_seq;

        // New TLS material for every kept pool: connections made from now
        // on use it; open ones keep theirs.
        for (i, p) in new.pools.iter().enumerate() {
            if let Some(state) = self.pools.iter().find(|s| s.cfg.name == p.name) {
                *state
                    .settings
                    .tls
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = material.pools[i].clone();
            }
        }
        self.ctx.metrics.set_tls_material(&new, &material);
        // Changed pools, in place.
        let mut applied = Vec::new();
        for &(k, i) in &plan.changed_pools {
            applied.extend(self.ctx.reload_pool(&mut self.pools[k], &new.pools[i]));
            report.pools_changed += 1;
        }
        let deadline = tokio::time::Instant::now() + self.grace;
        let mut switched = Some(config_seq);
        for rx in applied {
            let at = tokio::time::timeout_at(deadline, rx)
                .await
                .ok()
                .and_then(Result::ok);
            switched = switched.zip(at).map(|(a, b)| a.max(b));
        }
        report.backends_switched_at = switched.filter(|_| report.pools_changed > 0);
        // Listeners: changed limits, new ones, removed ones.
        for &(k, i) in &plan.changed_listeners {
            let l = &new.listeners[i];
            self.listeners[k]
                .shared
                .update(l, material.listeners[i].clone());
            self.listeners[k].cfg = l.clone();
            report.listeners_changed += 1;
        }
        // Unchanged TLS listeners still take the files as read now.
        for (i, kept) in kept.iter().enumerate() {
            let Some(k) = *kept else { continue };
            if material.listeners[i].is_some() && !plan.changed_listeners.contains(&(k, i)) {
                self.listeners[k]
                    .shared
                    .update(&new.listeners[i], material.listeners[i].clone());
            }
        }
        for ((i, l, sock), slot) in fresh.into_iter().zip(fresh_slots) {
            if let Err(e) = self.start_listener(&l, sock, slot, material.listeners[i].clone()) {
                tracing::error!(listener = %l.name, error = %e, "reload: listener did not start");
            }
            report.listeners_added += 1;
        }
        let mut stopping = Vec::new();
        for &k in plan.removed_listeners.iter().rev() {
            let s = self.listeners.remove(k);
            tracing::info!(listener = %s.cfg.name, address = %s.addr, "reload: listener removed; its sessions finish");
            s.stop.cancel();
            s.sessions.close();
            self.routes[s.slot] = None;
            stopping.push(s);
            report.listeners_removed += 1;
        }
        self.publish_listeners();
        // Removed pools close once nothing can send them frames: their
        // dispatchers finish what they were given, then stop.
        let removed_pools = &plan.removed_pools;
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
            for &i in removed_pools.iter().rev() {
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
        config: Option<journal::ConfigStamp>,
    ) -> Option<u64> {
        let (done, applied) = tokio::sync::oneshot::channel();
        let rc = Reconfigure {
            add_pools,
            close_pools,
            routes,
            config,
            done,
        };
        self.ingress
            .send(Ingress::Reconfigure(Box::new(rc)))
            .await
            .ok()?;
        applied.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[journal]
dir = "/tmp/j"

[[listener]]
name = "a"
address = "127.0.0.1:6514"
pool = "p"

[[listener]]
name = "b"
address = "127.0.0.1:6515"
pool = "p"

[[pool]]
name = "p"
[[pool.backend]]
address = "127.0.0.1:5141"

[[pool]]
name = "q"
[[pool.backend]]
address = "127.0.0.1:5142"
"#;

    fn plan(new: &str) -> ReloadPlan {
        let old = Config::parse(BASE).unwrap();
        let new = Config::parse(new).unwrap();
        ReloadPlan::diff(&old, &old.listeners, &old.pools, &new)
    }

    #[test]
    fn the_same_config_changes_nothing() {
        let p = plan(BASE);
        assert_eq!(p.kept, vec![Some(0), Some(1)]);
        assert_eq!(
            p,
            ReloadPlan {
                kept: vec![Some(0), Some(1)],
                ..ReloadPlan::default()
            }
        );
    }

    #[test]
    fn listeners_and_pools_kept_changed_added_removed() {
        // b moves to pool q and gets a limit; a new listener c; pool q
        // changes its backend; pool p goes (nothing routes to it), r comes.
        let new = BASE
            .replace(
                "name = \"b\"\naddress = \"127.0.0.1:6515\"\npool = \"p\"",
                "name = \"b\"\naddress = \"127.0.0.1:6515\"\npool = \"q\"\nmax-connections = 5",
            )
            .replace(
                "name = \"a\"\naddress = \"127.0.0.1:6514\"\npool = \"p\"",
                "name = \"c\"\naddress = \"127.0.0.1:6516\"\npool = \"r\"",
            )
            .replace(
                "[[pool]]\nname = \"p\"\n[[pool.backend]]\naddress = \"127.0.0.1:5141\"",
                "[[pool]]\nname = \"r\"\n[[pool.backend]]\naddress = \"127.0.0.1:5141\"",
            )
            .replace("5142", "5143");
        let p = plan(&new);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(p.kept, vec![None, Some(1)]);
        assert_eq!(p.changed_listeners, vec![(1, 1)]);
        assert_eq!(p.removed_listeners, vec![0]);
        assert_eq!(p.added_pools, vec![0]);
        assert_eq!(p.changed_pools, vec![(1, 1)]);
        assert_eq!(p.removed_pools, vec![0]);
    }

    #[test]
    fn what_needs_a_restart_is_refused_by_key() {
        // Renaming a listener onto its own address.
        let p = plan(&BASE.replacen("name = \"a\"", "name = \"a2\"", 1));
        assert_eq!(p.kept, vec![None, Some(1)]);
        assert!(
            p.problems.iter().any(|e| e.starts_with(
                "listener[0].address: 127.0.0.1:6514 is still bound by listener \"a\""
            )),
            "{:?}",
            p.problems
        );
        // The journal changes only at a restart.
        let p = plan(&BASE.replace("dir = \"/tmp/j\"", "dir = \"/tmp/k\""));
        assert!(
            p.problems.iter().any(|e| e.starts_with("journal:")),
            "{:?}",
            p.problems
        );
    }
}
