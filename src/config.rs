//! The TOML configuration: its shape, its defaults (all in this file, as named
//! `default_*` functions) and `validate()`, whose errors name the key path.
//! Called by `auditlb check`, `auditlb run` and the server builder.
//!
//! Keys are kebab-case; unknown keys are errors. Durations are strings such as
//! `"50ms"`, sizes such as `"64KiB"` (see [`crate::units`]).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::units::{ByteSize, HumanDuration};

/// Largest `max-frame` accepted: a frame must fit comfortably in memory and
/// in one octet count (RFC 6587 allows any length; we do not).
pub const MAX_FRAME_CEILING: u64 = 64 << 20;

/// Largest `max-connections` and `max-connections-per-source`: more than
/// one process holds file descriptors for, and far below what tokio's
/// semaphore counts (`Semaphore::MAX_PERMITS`, 2^61 - 1; it panics past
/// that at start or reload).
pub const MAX_CONNECTIONS_CEILING: usize = 1_000_000;
const _: () = assert!(MAX_CONNECTIONS_CEILING <= tokio::sync::Semaphore::MAX_PERMITS);

/// Largest `queue-bytes`: a bound on memory per backend connection, so
/// 1GiB is generous; the dispatcher multiplies it by a backend's open
/// connections (at most 64), which must not overflow a u64.
pub const QUEUE_BYTES_CEILING: u64 = 1 << 30;

/// Longest listener or pool name, in bytes. Names go into logs, metric
/// labels and the meta of every journal record, whose meta part holds at
/// most 64KiB in all.
pub const MAX_NAME_BYTES: usize = 128;

/// Errors from loading a config file. `Invalid` lists every problem found,
/// each starting with its key path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    /// Admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`); off when absent.
    pub admin: Option<AdminConfig>,
    /// The audit journal.
    #[serde(default)]
    pub journal: JournalConfig,
    /// SHA-256 of the config text (for the journal's CONFIG record).
    #[serde(skip)]
    pub source_hash: [u8; 32],
    /// How a SIGTERM/SIGINT stop drains.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Where clients connect. At least one.
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Groups of backends that listeners forward to. At least one.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminConfig {
    /// `IP:PORT` to serve on; keep it on loopback or a management network.
    pub address: String,
}

/// When the journal calls fdatasync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncPolicy {
    /// Before the frames of a batch are routed.
    Always,
    /// Group commit every `sync-interval`.
    Interval,
    /// Leave it to the kernel.
    Os,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JournalConfig {
    /// Directory of segment files. Default `var/journal`.
    #[serde(default = "default_journal_dir")]
    pub dir: PathBuf,
    /// Default `interval`.
    #[serde(default = "default_sync")]
    pub sync: SyncPolicy,
    /// Group commit period with `sync = "interval"`. Default 50ms.
    #[serde(default = "default_sync_interval")]
    pub sync_interval: HumanDuration,
    /// A segment is closed after this many bytes. Default 256MiB, 64KiB to
    /// 1GiB (readers hold one segment in memory).
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// A checkpoint after this many records. Default 10000.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// And at least this often (a HEARTBEAT when idle). Default 1s.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: HumanDuration,
    /// File that every checkpoint is appended to; keep it on other storage.
    pub anchors: Option<PathBuf>,
    /// Forward-secure seal key from `auditlb keygen`; checkpoints are
    /// unsealed without it.
    pub seal_key: Option<PathBuf>,
    /// Also send each checkpoint to every pool as an RFC 5424 message
    /// (`<110>1 ... auditlb - CHECKPOINT [auditlb@32473 ...]`), so the SIEM
    /// holds the chain heads too. Default false.
    #[serde(default)]
    pub send_checkpoints: bool,
    /// Most bytes the journal directory may hold. Default 10GiB.
    #[serde(default = "default_disk_budget")]
    pub disk_budget: ByteSize,
    /// When the budget is reached: `block` stops taking frames from clients
    /// (backpressure) until space is freed; `drop` refuses frames, counts
    /// them and records a GAP. Default `block`.
    #[serde(default = "default_on_full")]
    pub on_full: OnFull,
}

/// What a full journal does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFull {
    Block,
    Drop,
}

fn default_disk_budget() -> ByteSize {
    ByteSize(10 << 30)
}
fn default_on_full() -> OnFull {
    OnFull::Block
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            dir: default_journal_dir(),
            sync: default_sync(),
            sync_interval: default_sync_interval(),
            segment_size: default_segment_size(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_interval: default_checkpoint_interval(),
            anchors: None,
            seal_key: None,
            send_checkpoints: false,
            disk_budget: default_disk_budget(),
            on_full: default_on_full(),
        }
    }
}

fn default_journal_dir() -> PathBuf {
    PathBuf::from("var/journal")
}
fn default_sync() -> SyncPolicy {
    SyncPolicy::Interval
}
fn default_sync_interval() -> HumanDuration {
    HumanDuration(Duration::from_millis(50))
}
fn default_segment_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_checkpoint_every() -> u64 {
    10_000
}
fn default_checkpoint_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ShutdownConfig {
    /// How long queued frames may take to reach backends after a stop signal.
    /// Default 10s.
    #[serde(default = "default_grace")]
    pub grace: HumanDuration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace: default_grace(),
        }
    }
}

/// How a stream is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Framing {
    /// From the first byte of each connection: `1`-`9` means octet counting,
    /// anything else LF.
    Auto,
    /// RFC 6587 section 3.4.1: `LEN SP MSG`.
    OctetCounted,
    /// RFC 6587 section 3.4.2: frames end with LF (CRLF tolerated).
    Lf,
}

/// What happens to a frame longer than `max-frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Oversize {
    /// Keep the first `max-frame` bytes, discard the rest (counted).
    Truncate,
    /// Discard the whole frame (counted).
    Drop,
    /// Close the client connection (counted).
    Close,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerConfig {
    /// Unique name, used in logs and metric labels.
    pub name: String,
    /// `IP:PORT` to bind. Port 0 picks a free port (tests).
    pub address: String,
    /// Default `auto`.
    #[serde(default = "default_listener_framing")]
    pub framing: Framing,
    /// Longest frame accepted. Default 64KiB, at most 64MiB.
    #[serde(default = "default_max_frame")]
    pub max_frame: ByteSize,
    /// Default `truncate`.
    #[serde(default = "default_oversize")]
    pub oversize: Oversize,
    /// Name of the `[[pool]]` frames go to.
    pub pool: String,
    /// Concurrent client connections; more wait in the kernel backlog.
    /// Default 10000, at most 1000000.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent connections from one source IP. Default: no limit below
    /// `max-connections`. At most 1000000.
    pub max_connections_per_source: Option<usize>,
    /// Listen backlog. Default 1024.
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Close a connection that sends nothing for this long. Default 10m.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Close a connection whose started frame is not complete after this
    /// long (a stuck or slowloris client). Default 30s.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: HumanDuration,
}

/// How a pool picks a backend for each frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Weighted round robin, per frame (smooth, like nginx).
    RoundRobin,
    /// Fewest bytes queued or written but not yet acknowledged, per weight.
    LeastPending,
    /// Consistent hashing on `hash-key`.
    Hash,
    /// A client connection sticks to one backend until that backend fails.
    Connection,
    /// Every backend gets every frame, each at its own pace from the
    /// journal.
    Mirror,
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashKey {
    SourceIp,
    Hostname,
    AppName,
}

/// Framing towards the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutFraming {
    OctetCounted,
    Lf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolConfig {
    pub name: String,
    /// Default `round-robin`.
    #[serde(default = "default_balance")]
    pub balance: Balance,
    /// With `hash` only. Default `source-ip`.
    pub hash_key: Option<HashKey>,
    /// Default `octet-counted`.
    #[serde(default = "default_out_framing")]
    pub framing: OutFraming,
    /// Persistent connections to each backend. Default 2.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Limit for one connect attempt to a backend. Default 2s.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// `TCP_USER_TIMEOUT`: a backend that acknowledges nothing for this long
    /// is cut off. Default 10s.
    #[serde(default = "default_tcp_user_timeout")]
    pub tcp_user_timeout: HumanDuration,
    /// Bytes that may wait for one backend connection (queued plus written
    /// but unacknowledged by its kernel). Default 4MiB, 4KiB to 1GiB.
    #[serde(default = "default_queue_bytes")]
    pub queue_bytes: ByteSize,
    /// After a backend connection is reset (not closed cleanly), frames its
    /// kernel acknowledged within this many bytes before the failure are
    /// sent again: they may have sat unread in its receive buffer. Bounded
    /// duplicates instead of silent loss. Size it to the backends' receive
    /// buffers (a hung backend holds that much unread). `0` turns it off.
    /// Default 4MiB.
    #[serde(default = "default_replay_window")]
    pub replay_window: ByteSize,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HealthConfig {
    /// Time between active checks. Default 2s.
    #[serde(default = "default_health_interval")]
    pub interval: HumanDuration,
    /// Limit for one check. Default 1s.
    #[serde(default = "default_health_timeout")]
    pub timeout: HumanDuration,
    /// Consecutive successes that mark a down backend up. Default 2.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that mark an up backend down. Default 3.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BackendConfig {
    /// `IP:PORT`.
    pub address: String,
    /// Share of frames relative to the pool's other backends. Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Gets frames only while no primary backend of the pool is up.
    #[serde(default)]
    pub backup: bool,
}

fn default_grace() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_listener_framing() -> Framing {
    Framing::Auto
}
fn default_max_frame() -> ByteSize {
    ByteSize(64 * 1024)
}
fn default_oversize() -> Oversize {
    Oversize::Truncate
}
fn default_max_connections() -> usize {
    10_000
}
fn default_backlog() -> u32 {
    1024
}
fn default_idle_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(600))
}
fn default_frame_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(30))
}
fn default_balance() -> Balance {
    Balance::RoundRobin
}
fn default_out_framing() -> OutFraming {
    OutFraming::OctetCounted
}
fn default_connections() -> usize {
    2
}
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_tcp_user_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}
fn default_queue_bytes() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_replay_window() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_health_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(2))
}
fn default_health_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(1))
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_weight() -> u32 {
    1
}

/// Parses `IP:PORT`, with an error that says what was expected.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not an IP:PORT address (e.g. \"127.0.0.1:5141\")"))
}

impl ListenerConfig {
    /// The bind address. Only call on a validated config.
    pub fn socket_addr(&self) -> SocketAddr {
        parse_addr(&self.address).expect("listener address checked by Config::validate")
    }
}

impl BackendConfig {
    /// The backend address. Only call on a validated config.
    pub fn socket_addr(&self) -> SocketAddr {
        parse_addr(&self.address).expect("backend address checked by Config::validate")
    }
}

impl AdminConfig {
    /// The admin address. Only call on a validated config.
    pub fn socket_addr(&self) -> SocketAddr {
        parse_addr(&self.address).expect("admin address checked by Config::validate")
    }
}

impl PoolConfig {
    /// The effective hash key (default `source-ip`).
    pub fn hash_key(&self) -> HashKey {
        self.hash_key.unwrap_or(HashKey::SourceIp)
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })?;
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Parses TOML text without validating it.
    pub fn parse(text: &str) -> Result<Config, String> {
        use sha2::Digest;
        let mut c: Config =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        c.source_hash = sha2::Sha256::digest(text.as_bytes()).into();
        Ok(c)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[listener]]
name = "syslog"
address = "127.0.0.1:0"
pool = "siem"

[[pool]]
name = "siem"
[[pool.backend]]
address = "127.0.0.1:5141"
"#;

    #[test]
    fn reload_blockers_name_what_needs_a_restart() {
        let old = Config::parse(GOOD).unwrap();
        let ok = Config::parse(&GOOD.replace("5141", "5142")).unwrap();
        assert!(old.reload_blockers(&ok).is_empty());
        let journal = Config::parse(&format!("[journal]\nsync = \"always\"\n{GOOD}")).unwrap();
        assert_eq!(
            old.reload_blockers(&journal),
            ["journal: the journal settings change only at a restart"]
        );
        let admin = Config::parse(&format!("[admin]\naddress = \"127.0.0.1:9\"\n{GOOD}")).unwrap();
        assert!(old.reload_blockers(&admin)[0].starts_with("admin:"));
        let to_mirror = Config::parse(
            &GOOD.replace("name = \"siem\"", "name = \"siem\"\nbalance = \"mirror\""),
        )
        .unwrap();
        assert!(old.reload_blockers(&to_mirror)[0].starts_with("pool[0].balance:"));
        // A mirror pool reloads its health settings, nothing else.
        let health =
            Config::parse(&format!("{}\n[pool.health]\nrise = 5\n", to_mirror_text())).unwrap();
        let mirror = Config::parse(&to_mirror_text()).unwrap();
        assert!(mirror.reload_blockers(&health).is_empty());
        let moved = Config::parse(&to_mirror_text().replace("5141", "5142")).unwrap();
        assert!(mirror.reload_blockers(&moved)[0].starts_with("pool[0]: mirror pool"));
    }

    fn to_mirror_text() -> String {
        GOOD.replace("name = \"siem\"", "name = \"siem\"\nbalance = \"mirror\"")
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = Config::parse(GOOD).unwrap();
        c.validate().unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.framing, Framing::Auto);
        assert_eq!(l.max_frame.0, 65536);
        assert_eq!(l.oversize, Oversize::Truncate);
        let p = &c.pools[0];
        assert_eq!(p.balance, Balance::RoundRobin);
        assert_eq!(p.framing, OutFraming::OctetCounted);
        assert_eq!(p.health.rise, 2);
        assert_eq!(p.health.fall, 3);
        assert_eq!(p.backends[0].weight, 1);
    }

    #[test]
    fn unknown_key_is_an_error_naming_the_key() {
        let text = GOOD.replace("pool = \"siem\"", "pool = \"siem\"\ncolour = \"blue\"");
        let e = Config::parse(&text).unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
[[listener]]
name = "a"
address = "127.0.0.1:6514"
pool = "nope"
[[listener]]
name = "a"
address = "127.0.0.1:6514"
pool = "p"
[[listener]]
name = "b"
address = "localhost-ish"
pool = "p"

[[pool]]
name = "p"
balance = "round-robin"
hash-key = "hostname"
[pool.health]
rise = 0
fall = 0
[[pool.backend]]
address = "127.0.0.1:1"
weight = 0
[[pool.backend]]
address = "127.0.0.1:1"

[[pool]]
name = "empty"
"#;
        let c = Config::parse(text).unwrap();
        let errs = c.validate().unwrap_err();
        let all = errs.join("\n");
        for want in [
            "listener[0].pool: unknown pool \"nope\"",
            "listener[1].name: duplicate listener name",
            "listener[1].address: 127.0.0.1:6514 is used by another listener",
            "listener[2].address: \"localhost-ish\" is not an IP:PORT",
            "pool[0].hash-key: only used with balance = \"hash\"",
            "pool[0].health.rise: must be at least 1",
            "pool[0].health.fall: must be at least 1",
            "pool[0].backend[0].weight: must be between 1 and 1000",
            "pool[0].backend[1].address: 127.0.0.1:1 appears twice",
            "pool[1].backend: pool \"empty\" has no backends",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    /// Values serde accepts but the running server cannot hold: tokio's
    /// `Semaphore::new` panics past `MAX_PERMITS` (2^61 - 1), and the
    /// dispatcher's `connections * queue-bytes` overflows a u64. `check`
    /// must refuse them, naming the key.
    #[test]
    fn limits_the_server_cannot_hold_are_refused_by_key() {
        let text = GOOD.replace(
            "pool = \"siem\"",
            "pool = \"siem\"\nmax-connections = 2305843009213693952\nmax-connections-per-source = 9223372036854775807",
        );
        let mut c = Config::parse(&text).unwrap();
        assert!(c.listeners[0].max_connections > tokio::sync::Semaphore::MAX_PERMITS);
        c.pools[0].queue_bytes = ByteSize(u64::MAX / 2);
        let errs = c.validate().unwrap_err().join("\n");
        for want in [
            "listener[0].max-connections: 2305843009213693952 is out of range (1 to 1000000)",
            "listener[0].max-connections-per-source: 9223372036854775807 is out of range (1 to 1000000)",
            "pool[0].queue-bytes: 9223372036854775807 bytes is out of range (4KiB to 1GiB)",
        ] {
            assert!(errs.contains(want), "missing {want:?} in:\n{errs}");
        }

        // The ceilings themselves are fine, and fit what they feed.
        let mut c = Config::parse(GOOD).unwrap();
        c.listeners[0].max_connections = MAX_CONNECTIONS_CEILING;
        c.listeners[0].max_connections_per_source = Some(MAX_CONNECTIONS_CEILING);
        c.pools[0].queue_bytes = ByteSize(QUEUE_BYTES_CEILING);
        c.validate().unwrap();
        let _ = tokio::sync::Semaphore::new(MAX_CONNECTIONS_CEILING);
        assert!(QUEUE_BYTES_CEILING.checked_mul(64).is_some());
        c.listeners[0].max_connections = MAX_CONNECTIONS_CEILING + 1;
        c.listeners[0].max_connections_per_source = Some(0);
        let errs = c.validate().unwrap_err().join("\n");
        assert!(
            errs.contains("listener[0].max-connections: 1000001 is out of range"),
            "{errs}"
        );
        assert!(
            errs.contains("listener[0].max-connections-per-source: 0 is out of range"),
            "{errs}"
        );
    }

    /// A name lands in the meta of every journal record (64KiB at most for
    /// all of it), so a huge one is refused, not written.
    #[test]
    fn names_are_bounded() {
        let mut c = Config::parse(GOOD).unwrap();
        c.listeners[0].name = "l".repeat(MAX_NAME_BYTES);
        c.validate().unwrap();
        c.listeners[0].name = "l".repeat(40_000);
        c.pools[0].name = "p".repeat(40_000);
        c.listeners[0].pool = c.pools[0].name.clone();
        let errs = c.validate().unwrap_err().join("\n");
        assert!(
            errs.contains("listener[0].name: 40000 bytes long, at most 128"),
            "{errs}"
        );
        assert!(
            errs.contains("pool[0].name: 40000 bytes long, at most 128"),
            "{errs}"
        );
    }

    /// Huge numbers in durations and sizes are parse errors naming the key,
    /// never an overflow.
    #[test]
    fn huge_durations_and_sizes_are_parse_errors() {
        for (key, value) in [
            ("idle-timeout", "\"99999999999999999999d\""),
            ("idle-timeout", "\"3651d\""),
            ("frame-timeout", &format!("\"{}s\"", "9".repeat(400))),
            ("max-frame", "\"99999999999999999999TiB\""),
            ("max-frame", "\"18446744073709551616\""),
            ("max-frame", &format!("\"{}\"", "9".repeat(400))),
            ("max-frame", "-1"),
            ("max-connections", "-1"),
            ("max-connections", "99999999999999999999"),
            ("backlog", "4294967296"),
        ] {
            let text = GOOD.replace(
                "pool = \"siem\"",
                &format!("pool = \"siem\"\n{key} = {value}"),
            );
            let e = Config::parse(&text).unwrap_err();
            assert!(e.contains(key), "{key} = {value}: {e}");
        }
    }

    #[test]
    fn bad_duration_and_size_are_parse_errors() {
        let text = GOOD.replace("pool = \"siem\"", "pool = \"siem\"\nmax-frame = \"lots\"");
        assert!(Config::parse(&text).unwrap_err().contains("max-frame"));
        let text = GOOD.replace("pool = \"siem\"", "pool = \"siem\"\nidle-timeout = 5");
        assert!(Config::parse(&text).unwrap_err().contains("idle-timeout"));
    }
}
