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
    /// HTTPS, with the same keys as `[listener.tls]`; a client certificate
    /// (verified against `client-ca`, or pinned) names the caller for the
    /// roles.
    pub tls: Option<ListenerTlsConfig>,
    /// Who may do what (README "Admin API"). None: anonymous may read
    /// `/metrics`, `/healthz` and `/readyz`, and nothing else.
    #[serde(default, rename = "role")]
    pub roles: Vec<AdminRoleConfig>,
}

/// One `[[admin.role]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdminRoleConfig {
    pub name: String,
    /// Any of `metrics`, `health`, `status`, `reload`, `journal`.
    pub allow: Vec<String>,
    /// Any of `anonymous`, `cn:PATTERN`, `dns:PATTERN`, `sha256:FP` (a
    /// client certificate), `token-sha256:HEX` (a bearer token's SHA-256).
    #[serde(default = "default_who")]
    pub who: Vec<String>,
}

fn default_who() -> Vec<String> {
    vec!["anonymous".into()]
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
    /// Closed, verified segments copied to object storage.
    pub archive: Option<ArchiveConfig>,
    /// Old segments deleted (after a sealed, anchored PRUNE record).
    pub retention: Option<RetentionConfig>,
}

/// `[journal.archive]`: where sealed segments and the anchors file go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArchiveConfig {
    /// `s3://bucket/prefix/`, `gs://..`, `az://..`, `file:///dir/`.
    /// Credentials, region and endpoint come from the environment the way
    /// the cloud SDKs read them (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`,
    /// `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...).
    pub url: String,
    /// S3 Object Lock retention in compliance mode for every object
    /// written (the bucket must have Object Lock enabled).
    pub object_lock_days: Option<u32>,
}

/// `[journal.retention]`: which closed segments are deleted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RetentionConfig {
    /// Segments closed longer ago than this are deleted ...
    pub max_age: Option<HumanDuration>,
    /// ... and the oldest while the journal holds more than this.
    pub max_bytes: Option<ByteSize>,
    /// Never delete a segment with a frame some open pool has not
    /// settled. Default true.
    #[serde(default = "yes")]
    pub keep_undelivered: bool,
    /// With an archive: delete only what it holds, read back and checked.
    /// Default true.
    #[serde(default = "yes")]
    pub require_archived: bool,
}

fn yes() -> bool {
    true
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
            archive: None,
            retention: None,
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

/// What a listener speaks with its clients, or a pool with its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Syslog over TCP (RFC 6587 framing), or over TLS (RFC 5425).
    #[default]
    Syslog,
    /// RELP (rsyslog's Reliable Event Logging Protocol): each message is
    /// acknowledged by the receiver. A RELP listener answers `rsp 200`
    /// only once the frame is durable in the journal; a RELP pool settles a
    /// frame only on the backend's `rsp 200`.
    Relp,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Syslog => "syslog",
            Protocol::Relp => "relp",
        }
    }
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
    /// `syslog` (default) or `relp`. A RELP listener cuts frames by RELP's
    /// own framing (`framing` is not used); `max-frame` and `oversize`
    /// apply to each message.
    #[serde(default)]
    pub protocol: Protocol,
    /// Syslog over TLS (RFC 5425) on this listener; plain TCP when absent.
    /// RELP over TLS with `protocol = "relp"`.
    pub tls: Option<ListenerTlsConfig>,
}

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Asked for; a client without one is let in (anonymous), a client
    /// whose certificate fails the checks is refused.
    Optional,
    /// A valid client certificate (and one `allow` admits) is required.
    Required,
}

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V12,
    #[serde(rename = "1.3")]
    V13,
}

/// `[listener.tls]`. Paths are relative to the working directory, like the
/// journal's. Every file is read again on each reload (SIGHUP).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ListenerTlsConfig {
    /// PEM: the server certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, RSA PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Default: `required` when `client-ca` or `allow` is set, else `none`.
    pub client_auth: Option<ClientAuth>,
    /// PEM: roots that client certificates must chain to. Needed for
    /// client certificates, unless every client is pinned in `allow`.
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs of the client CA; a revoked client certificate is refused.
    #[serde(default)]
    pub crl: Vec<PathBuf>,
    /// Which client certificates are let in (RFC 5425 section 5): any of
    /// `sha256:AB:CD:..` (a pin: that exact certificate, trusted even
    /// self-signed), `dns:PATTERN` (a subjectAltName DNS name, or the CN
    /// when there is none; `*` matches within one label), `cn:PATTERN`
    /// (the subject CN; `*` matches anything). Empty: any certificate that
    /// chains to `client-ca`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Default `1.2`.
    #[serde(default = "default_min_version")]
    pub min_version: TlsVersion,
    /// A client that has not finished the handshake in this long is cut.
    /// Default 10s.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: HumanDuration,
    /// Handshakes in progress at once on this listener; more wait (within
    /// `handshake-timeout`). Each can hold up to 64KiB of handshake
    /// messages, so this bounds that memory. Default 256, 1 to 100000.
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: usize,
}

fn default_max_handshakes() -> usize {
    256
}

impl ListenerTlsConfig {
    /// The effective `client-auth`.
    pub fn client_auth(&self) -> ClientAuth {
        self.client_auth
            .unwrap_or(if self.client_ca.is_some() || !self.allow.is_empty() {
                ClientAuth::Required
            } else {
                ClientAuth::None
            })
    }
}

/// `[pool.tls]`: TLS towards every backend of the pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PoolTlsConfig {
    /// PEM: roots the backends' certificates must chain to. Needed unless
    /// `pin` is set.
    pub ca: Option<PathBuf>,
    /// Sent as SNI and checked against the backend's certificate. Default:
    /// the backend's IP address (checked against its IP SANs).
    pub server_name: Option<String>,
    /// PEM: a client certificate (chain) to present; with `key`.
    pub cert: Option<PathBuf>,
    /// PEM: its private key.
    pub key: Option<PathBuf>,
    /// `sha256:..` fingerprints: a backend presenting exactly one of these
    /// certificates is trusted without `ca` or name checks.
    #[serde(default)]
    pub pin: Vec<String>,
    /// Default `1.2`.
    #[serde(default = "default_min_version")]
    pub min_version: TlsVersion,
}

fn default_min_version() -> TlsVersion {
    TlsVersion::V12
}
fn default_handshake_timeout() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
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
    /// TLS towards the backends (and a TLS handshake as the health check);
    /// plain TCP when absent.
    pub tls: Option<PoolTlsConfig>,
    /// `syslog` (default) or `relp` towards the backends. Over RELP a frame
    /// is settled by the backend's `rsp 200` (`framing` and
    /// `replay-window` are not used: nothing unacknowledged is ever taken
    /// as delivered).
    #[serde(default)]
    pub protocol: Protocol,
    /// RELP: messages sent and not yet acknowledged on one backend
    /// connection. Default 128 (librelp's), 1 to 65536.
    #[serde(default = "default_relp_window")]
    pub relp_window: usize,
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
fn default_relp_window() -> usize {
    128
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
}

mod validate;

#[cfg(test)]
mod tests;
