//! Test configs, built instead of edited: one listener "in" and one pool
//! "p", fast health checks, a 200 ms checkpoint interval, and the journal
//! (and, when asked, anchors) under the test's own directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use auditlb::config::Config;

use super::scratch_dir;

/// A config being built for a test.
#[derive(Debug, Clone)]
pub struct TestConfig {
    dir: PathBuf,
    listen: String,
    backends: Vec<(SocketAddr, u32, bool)>,
    listener: Vec<String>,
    listener_tls: Vec<String>,
    pool: Vec<String>,
    pool_tls: Vec<String>,
    journal: Vec<String>,
    grace: String,
    anchors: bool,
    admin: Option<String>,
}

impl TestConfig {
    /// In a fresh scratch directory named after `name`.
    pub fn new(name: &str) -> TestConfig {
        TestConfig::at(&scratch_dir(name))
    }

    /// In `dir` (the journal goes to `dir/journal`).
    pub fn at(dir: &Path) -> TestConfig {
        TestConfig {
            dir: dir.to_owned(),
            listen: "127.0.0.1:0".into(),
            backends: Vec::new(),
            listener: Vec::new(),
            listener_tls: Vec::new(),
            pool: Vec::new(),
            pool_tls: Vec::new(),
            journal: Vec::new(),
            grace: "5s".into(),
            anchors: false,
            admin: None,
        }
    }

    /// Backends as (address, weight, backup).
    pub fn backends(mut self, b: &[(SocketAddr, u32, bool)]) -> Self {
        self.backends.extend_from_slice(b);
        self
    }

    /// Backends of weight 1.
    pub fn backend_addrs(self, addrs: &[SocketAddr]) -> Self {
        let b: Vec<_> = addrs.iter().map(|&a| (a, 1, false)).collect();
        self.backends(&b)
    }

    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.into();
        self
    }

    /// `key = value` lines for the [[listener]] table.
    pub fn listener(mut self, kv: &str) -> Self {
        self.listener.push(kv.into());
        self
    }

    /// `key = value` lines for the listener's [listener.tls] table (the
    /// table is written once any is given).
    pub fn listener_tls(mut self, kv: &str) -> Self {
        self.listener_tls.push(kv.into());
        self
    }

    /// `key = value` lines for the pool's [pool.tls] table.
    pub fn pool_tls(mut self, kv: &str) -> Self {
        self.pool_tls.push(kv.into());
        self
    }

    /// `key = value` lines for the [[pool]] table.
    pub fn pool(mut self, kv: &str) -> Self {
        self.pool.push(kv.into());
        self
    }

    /// `key = value` lines for the [journal] table.
    pub fn journal(mut self, kv: &str) -> Self {
        self.journal.push(kv.into());
        self
    }

    pub fn grace(mut self, g: &str) -> Self {
        self.grace = g.into();
        self
    }

    /// Anchors at `dir/anchors.log`.
    pub fn anchors(mut self) -> Self {
        self.anchors = true;
        self
    }

    pub fn admin(mut self, addr: &str) -> Self {
        self.admin = Some(addr.into());
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.dir.join("journal")
    }

    pub fn anchors_path(&self) -> PathBuf {
        self.dir.join("anchors.log")
    }

    pub fn toml(&self) -> String {
        let mut s = String::new();
        if let Some(a) = &self.admin {
            s.push_str(&format!("[admin]\naddress = \"{a}\"\n\n"));
        }
        s.push_str(&format!(
            "[shutdown]\ngrace = \"{}\"\n\n[journal]\ndir = \"{}\"\ncheckpoint-interval = \"200ms\"\n",
            self.grace,
            self.journal_dir().display()
        ));
        if self.anchors {
            s.push_str(&format!(
                "anchors = \"{}\"\n",
                self.anchors_path().display()
            ));
        }
        for kv in &self.journal {
            s.push_str(&format!("{kv}\n"));
        }
        s.push_str(&format!(
            "\n[[listener]]\nname = \"in\"\naddress = \"{}\"\npool = \"p\"\n",
            self.listen
        ));
        for kv in &self.listener {
            s.push_str(&format!("{kv}\n"));
        }
        if !self.listener_tls.is_empty() {
            s.push_str("[listener.tls]\n");
            for kv in &self.listener_tls {
                s.push_str(&format!("{kv}\n"));
            }
        }
        s.push_str("\n[[pool]]\nname = \"p\"\nconnect-timeout = \"500ms\"\n");
        for kv in &self.pool {
            s.push_str(&format!("{kv}\n"));
        }
        if !self.pool_tls.is_empty() {
            s.push_str("[pool.tls]\n");
            for kv in &self.pool_tls {
                s.push_str(&format!("{kv}\n"));
            }
        }
        s.push_str(
            "\n[pool.health]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 2\nfall = 2\n",
        );
        for (a, w, b) in &self.backends {
            s.push_str(&format!(
                "\n[[pool.backend]]\naddress = \"{a}\"\nweight = {w}\nbackup = {b}\n"
            ));
        }
        s
    }

    /// Parsed and validated.
    pub fn parse(&self) -> Config {
        let text = self.toml();
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        if let Err(e) = c.validate() {
            panic!("{e:?}\n{text}");
        }
        c
    }

    /// Written to `dir/auditlb.toml`; returns the path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir.join("auditlb.toml");
        std::fs::write(&path, self.toml()).unwrap();
        path
    }
}
