//! Everything serde cannot check: references between tables, uniqueness,
//! ranges, and what a reload may not change. Every problem names its key
//! path.

use super::*;

impl Config {
    /// What a reload from `self` to `new` cannot change on a running
    /// process (each with its key path); empty when the reload can apply.
    /// The journal and admin endpoint are fixed for a run, and a `mirror`
    /// pool keeps one journal cursor per backend, so only its health
    /// settings reload.
    pub fn reload_blockers(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        if self.journal != new.journal {
            out.push("journal: the journal settings change only at a restart".to_owned());
        }
        if self.admin != new.admin {
            out.push("admin: the admin endpoint changes only at a restart".to_owned());
        }
        for (i, p) in new.pools.iter().enumerate() {
            let Some(old) = self.pools.iter().find(|o| o.name == p.name) else {
                continue;
            };
            let mirror = (old.balance == Balance::Mirror, p.balance == Balance::Mirror);
            if mirror.0 != mirror.1 {
                out.push(format!(
                    "pool[{i}].balance: pool {:?} cannot change to or from mirror without a restart (rename the pool to replace it)",
                    p.name
                ));
            } else if mirror.0 {
                let same = PoolConfig {
                    health: old.health.clone(),
                    ..p.clone()
                };
                if same != *old {
                    out.push(format!(
                        "pool[{i}]: mirror pool {:?} reloads only its [pool.health]; other changes need a restart (rename the pool to replace it)",
                        p.name
                    ));
                }
            }
        }
        out
    }

    /// Checks everything serde cannot: references, uniqueness, ranges. Returns
    /// every problem, each prefixed with its key path.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if let Some(admin) = &self.admin {
            match crate::admin::auth::Roles::parse(&admin.roles) {
                Err(e) => errs.extend(e),
                Ok(roles) if roles.uses_certificates() && admin.tls.is_none() => errs.push(
                    "admin.role: a who names a client certificate, but there is no [admin.tls]"
                        .into(),
                ),
                Ok(roles)
                    if roles.uses_certificates()
                        && admin.tls.as_ref().is_some_and(|t| {
                            t.client_auth() == crate::config::ClientAuth::None
                        }) =>
                {
                    errs.push(
                        "admin.tls.client-auth: a role's who names a client certificate, but none is asked for (client-auth = \"none\")".into(),
                    )
                }
                Ok(_) => {}
            }
            if let Err(e) = parse_addr(&admin.address) {
                errs.push(format!("admin.address: {e}"));
            }
        }
        let j = &self.journal;
        if j.dir.as_os_str().is_empty() {
            errs.push("journal.dir: must not be empty".into());
        }
        if j.sync_interval.0 < Duration::from_millis(1) {
            errs.push("journal.sync-interval: must be at least 1ms".into());
        }
        if j.segment_size.0 < 64 * 1024 || j.segment_size.0 > 1 << 30 {
            errs.push(format!(
                "journal.segment-size: {} is out of range (64KiB to 1GiB)",
                j.segment_size
            ));
        }
        if j.disk_budget.0 < 2 * j.segment_size.0.min(64 << 20) {
            errs.push(format!(
                "journal.disk-budget: {} is too small for segments of {} (at least two segments, or 128MiB)",
                j.disk_budget, j.segment_size
            ));
        }
        if j.checkpoint_every == 0 {
            errs.push("journal.checkpoint-every: must be at least 1".into());
        }
        if j.checkpoint_interval.0 < Duration::from_millis(10) {
            errs.push("journal.checkpoint-interval: must be at least 10ms".into());
        }
        if let Some(a) = &j.anchors {
            if a.starts_with(&j.dir) {
                errs.push(format!(
                    "journal.anchors: {} is inside journal.dir; anchors must live apart from the journal",
                    a.display()
                ));
            }
        }
        if let Some(k) = &j.seal_key {
            if !k.is_file() {
                errs.push(format!(
                    "journal.seal-key: {} does not exist (make it with `auditlb keygen --out DIR`)",
                    k.display()
                ));
            }
        }
        if let Some(a) = &j.archive {
            if let Err(e) = crate::journal::custody::store::check_url(&a.url) {
                errs.push(format!("journal.archive.url: {e}"));
            }
            if a.object_lock_days == Some(0) {
                errs.push("journal.archive.object-lock-days: must be at least 1".into());
            }
        }
        if let Some(r) = &j.retention {
            if r.max_age.is_none() && r.max_bytes.is_none() {
                errs.push(
                    "journal.retention: set max-age, max-bytes or both (otherwise nothing is ever deleted)"
                        .into(),
                );
            }
            if let Some(b) = r.max_bytes {
                if b.0 > j.disk_budget.0 {
                    errs.push(format!(
                        "journal.retention.max-bytes: {b} is more than journal.disk-budget ({}); the budget would stop the journal first",
                        j.disk_budget
                    ));
                }
                if b.0 < 2 * j.segment_size.0 {
                    errs.push(format!(
                        "journal.retention.max-bytes: {b} is less than two segments of {}",
                        j.segment_size
                    ));
                }
            }
        }
        if self.listeners.is_empty() {
            errs.push("listener: at least one [[listener]] is required".into());
        }
        if self.pools.is_empty() {
            errs.push("pool: at least one [[pool]] is required".into());
        }
        let pool_names: Vec<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            let at = format!("listener[{i}]");
            if l.name.trim().is_empty() {
                errs.push(format!("{at}.name: must not be empty"));
            } else if l.name.len() > MAX_NAME_BYTES {
                errs.push(format!(
                    "{at}.name: {} bytes long, at most {MAX_NAME_BYTES}",
                    l.name.len()
                ));
            } else if !names.insert(l.name.as_str()) {
                errs.push(format!("{at}.name: duplicate listener name {:?}", l.name));
            }
            match parse_addr(&l.address) {
                Ok(a) => {
                    if a.port() != 0 && !addrs.insert(a) {
                        errs.push(format!("{at}.address: {a} is used by another listener"));
                    }
                    if let Some(admin) = self
                        .admin
                        .as_ref()
                        .and_then(|a| parse_addr(&a.address).ok())
                    {
                        if admin == a && a.port() != 0 {
                            errs.push(format!("{at}.address: {a} is also the admin address"));
                        }
                    }
                }
                Err(e) => errs.push(format!("{at}.address: {e}")),
            }
            if !pool_names.contains(&l.pool.as_str()) {
                errs.push(format!(
                    "{at}.pool: unknown pool {:?} (defined pools: {})",
                    l.pool,
                    if pool_names.is_empty() {
                        "none".to_owned()
                    } else {
                        pool_names.join(", ")
                    }
                ));
            }
            if l.max_frame.0 < 16 || l.max_frame.0 > MAX_FRAME_CEILING {
                errs.push(format!(
                    "{at}.max-frame: {} is out of range (16 bytes to 64MiB)",
                    l.max_frame
                ));
            }
            if l.max_connections == 0 || l.max_connections > MAX_CONNECTIONS_CEILING {
                errs.push(format!(
                    "{at}.max-connections: {} is out of range (1 to {MAX_CONNECTIONS_CEILING})",
                    l.max_connections
                ));
            }
            if let Some(n) = l.max_connections_per_source {
                if n == 0 || n > MAX_CONNECTIONS_CEILING {
                    errs.push(format!(
                        "{at}.max-connections-per-source: {n} is out of range (1 to {MAX_CONNECTIONS_CEILING})"
                    ));
                }
            }
            if l.backlog == 0 {
                errs.push(format!("{at}.backlog: must be at least 1"));
            }
            if l.idle_timeout.0.is_zero() {
                errs.push(format!("{at}.idle-timeout: must be more than 0"));
            }
            if l.frame_timeout.0.is_zero() {
                errs.push(format!("{at}.frame-timeout: must be more than 0"));
            }
            if let Some(t) = &l.tls {
                validate_listener_tls(&format!("{at}.tls"), t, &mut errs);
            }
        }
        let mut pnames = HashSet::new();
        for (i, p) in self.pools.iter().enumerate() {
            let at = format!("pool[{i}]");
            if p.name.trim().is_empty() {
                errs.push(format!("{at}.name: must not be empty"));
            } else if p.name.len() > MAX_NAME_BYTES {
                errs.push(format!(
                    "{at}.name: {} bytes long, at most {MAX_NAME_BYTES}",
                    p.name.len()
                ));
            } else if !pnames.insert(p.name.as_str()) {
                errs.push(format!("{at}.name: duplicate pool name {:?}", p.name));
            }
            if p.hash_key.is_some() && p.balance != Balance::Hash {
                errs.push(format!(
                    "{at}.hash-key: only used with balance = \"hash\" (balance is {:?})",
                    p.balance
                ));
            }
            if p.connections == 0 || p.connections > 64 {
                errs.push(format!("{at}.connections: must be between 1 and 64"));
            }
            if p.connect_timeout.0.is_zero() {
                errs.push(format!("{at}.connect-timeout: must be more than 0"));
            }
            if p.tcp_user_timeout.0 < Duration::from_millis(1) {
                errs.push(format!("{at}.tcp-user-timeout: must be at least 1ms"));
            }
            if p.relp_window == 0 || p.relp_window > 65536 {
                errs.push(format!("{at}.relp-window: must be between 1 and 65536"));
            }
            if p.replay_window.0 > 256 << 20 {
                errs.push(format!("{at}.replay-window: at most 256MiB"));
            }
            if p.queue_bytes.0 < 4096 || p.queue_bytes.0 > QUEUE_BYTES_CEILING {
                errs.push(format!(
                    "{at}.queue-bytes: {} is out of range (4KiB to 1GiB)",
                    p.queue_bytes
                ));
            }
            let h = &p.health;
            if h.interval.0 < Duration::from_millis(10) {
                errs.push(format!("{at}.health.interval: must be at least 10ms"));
            }
            if h.timeout.0.is_zero() {
                errs.push(format!("{at}.health.timeout: must be more than 0"));
            } else if h.timeout.0 > h.interval.0 {
                errs.push(format!(
                    "{at}.health.timeout: {} is longer than health.interval {}",
                    h.timeout, h.interval
                ));
            }
            if h.rise == 0 {
                errs.push(format!("{at}.health.rise: must be at least 1"));
            }
            if h.fall == 0 {
                errs.push(format!("{at}.health.fall: must be at least 1"));
            }
            if p.backends.is_empty() {
                errs.push(format!("{at}.backend: pool {:?} has no backends", p.name));
            } else if p.backends.iter().all(|b| b.backup) {
                errs.push(format!(
                    "{at}.backend: pool {:?} has only backup backends; at least one must be primary",
                    p.name
                ));
            }
            if p.balance == Balance::Mirror && p.backends.iter().any(|b| b.backup) {
                errs.push(format!(
                    "{at}.backend: a mirror pool sends every frame to every backend; backup = true has no meaning there"
                ));
            }
            if let Some(t) = &p.tls {
                validate_pool_tls(&format!("{at}.tls"), t, &mut errs);
            }
            let mut baddrs = HashSet::new();
            for (j, b) in p.backends.iter().enumerate() {
                let bat = format!("{at}.backend[{j}]");
                match parse_addr(&b.address) {
                    Ok(a) => {
                        if !baddrs.insert(a) {
                            errs.push(format!("{bat}.address: {a} appears twice in the pool"));
                        }
                        if a.port() == 0 {
                            errs.push(format!("{bat}.address: port 0 cannot be connected to"));
                        }
                    }
                    Err(e) => errs.push(format!("{bat}.address: {e}")),
                }
                if b.weight == 0 || b.weight > 1000 {
                    errs.push(format!("{bat}.weight: must be between 1 and 1000"));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// What can be told about `[listener.tls]` without reading its files
/// ([`crate::tls::load`] reads them).
fn validate_listener_tls(at: &str, t: &ListenerTlsConfig, errs: &mut Vec<String>) {
    let allow = match crate::tls::Allow::parse(&format!("{at}.allow"), &t.allow) {
        Ok(a) => a,
        Err(e) => {
            errs.extend(e);
            crate::tls::Allow::default()
        }
    };
    let auth = t.client_auth();
    if auth == ClientAuth::None {
        if t.client_ca.is_some() {
            errs.push(format!(
                "{at}.client-ca: set, but client-auth = \"none\" asks no client for a certificate"
            ));
        }
        if !t.allow.is_empty() {
            errs.push(format!(
                "{at}.allow: set, but client-auth = \"none\" asks no client for a certificate"
            ));
        }
    } else if t.client_ca.is_none() && !allow.has_pins() {
        errs.push(format!(
            "{at}.client-ca: needed to check client certificates (or pin them in allow with sha256:..)"
        ));
    }
    if !t.crl.is_empty() && t.client_ca.is_none() {
        errs.push(format!(
            "{at}.crl: needs client-ca (a CRL speaks for the CA that issued it)"
        ));
    }
    if t.handshake_timeout.0.is_zero() {
        errs.push(format!("{at}.handshake-timeout: must be more than 0"));
    }
    if t.max_handshakes == 0 || t.max_handshakes > 100_000 {
        errs.push(format!(
            "{at}.max-handshakes: {} is out of range (1 to 100000)",
            t.max_handshakes
        ));
    }
}

/// What can be told about `[pool.tls]` without reading its files.
fn validate_pool_tls(at: &str, t: &PoolTlsConfig, errs: &mut Vec<String>) {
    let mut pins = 0;
    for (k, p) in t.pin.iter().enumerate() {
        match crate::tls::Fingerprint::parse(p) {
            Ok(_) => pins += 1,
            Err(e) => errs.push(format!("{at}.pin[{k}]: {e}")),
        }
    }
    if t.ca.is_none() && pins == 0 && t.pin.is_empty() {
        errs.push(format!(
            "{at}.ca: needed to check the backends' certificates (or pin them with pin = [\"sha256:..\"])"
        ));
    }
    match (&t.cert, &t.key) {
        (Some(_), None) => errs.push(format!("{at}.key: needed with cert")),
        (None, Some(_)) => errs.push(format!("{at}.cert: needed with key")),
        _ => {}
    }
    if let Some(n) = &t.server_name {
        if rustls::pki_types::ServerName::try_from(n.as_str()).is_err() {
            errs.push(format!(
                "{at}.server-name: {n:?} is not a DNS name or IP address"
            ));
        }
    }
}
