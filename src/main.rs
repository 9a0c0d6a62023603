//! The `auditlb` command line: `run` the proxy, `check` a config, `verify`
//! and `cat` a journal, `keygen` the seal keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use auditlb::config::Config;
use auditlb::server::Server;

#[derive(Parser)]
#[command(
    name = "auditlb",
    version,
    about = "Load balancer for syslog streams that proves what it routed"
)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, default_value = "conf/auditlb.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or 1 with every problem by key path.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a journal: exit 0 intact, 1 tampered, 2 intact but the tail is
    /// not anchored, 3 I/O or usage error.
    ///
    /// With --archive URL: every journal under the prefix (several
    /// instances, one journal id each), from the archive, plus the local
    /// segments of --journal the archive does not hold yet; a line each.
    Verify {
        #[arg(long, required_unless_present = "archive")]
        journal: Option<PathBuf>,
        /// An archive prefix (`s3://bucket/prefix/`, `gs://`, `az://`,
        /// `file:///dir/`); credentials from the environment.
        #[arg(long)]
        archive: Option<String>,
        /// The anchors file the journal's checkpoints were appended to.
        #[arg(long)]
        anchors: Option<PathBuf>,
        /// `verify.key` from `auditlb keygen` (checks every seal).
        #[arg(long)]
        key: Option<PathBuf>,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print frames (raw) or records (jsonl) from a journal.
    Cat {
        #[arg(long, required_unless_present = "archive", conflicts_with = "archive")]
        journal: Option<PathBuf>,
        /// Read the journal from an archive prefix instead.
        #[arg(long)]
        archive: Option<String>,
        /// With --archive holding several journals: which one (hex id).
        #[arg(long)]
        journal_id: Option<String>,
        /// First seq or RFC 3339 time to print.
        #[arg(long)]
        from: Option<String>,
        /// Last seq or RFC 3339 time to print.
        #[arg(long)]
        to: Option<String>,
        #[arg(long, value_enum, default_value_t = CatFormat::Raw)]
        format: CatFormat,
    },
    /// Make a forward-secure seal key pair: DIR/seal.key (stays on the host,
    /// evolves) and DIR/verify.key (k_0: move it offline).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the SHA-256 fingerprint of each certificate in a PEM (or DER)
    /// file, in the form `allow` and `pin` take.
    Fingerprint { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum CatFormat {
    Raw,
    Jsonl,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `verify --archive`: a line per journal, then each report; the exit code
/// is the worst.
fn verify_archive(
    url: &str,
    journal: Option<&std::path::Path>,
    anchors: Option<&std::path::Path>,
    key: Option<&auditlb::journal::format::Hash>,
    json: bool,
) -> ExitCode {
    use auditlb::journal::format::hex;
    match auditlb::journal::custody::audit::verify_archive(url, journal, anchors, key) {
        Ok(reports) => {
            // Tampered anywhere (1) outranks a tail not anchored (2).
            let codes: Vec<u8> = reports.iter().map(|(_, r)| r.exit_code()).collect();
            let worst = if codes.contains(&1) {
                1
            } else {
                codes.into_iter().max().unwrap_or(0)
            };
            for (id, r) in &reports {
                if json {
                    println!("{}", r.json());
                    continue;
                }
                let text = r.text();
                let mut lines = text.lines();
                println!("journal {}: {}", hex(id), lines.next().unwrap_or(""));
                for l in lines {
                    println!("  {l}");
                }
            }
            ExitCode::from(worst)
        }
        Err(e) => {
            eprintln!("auditlb verify: {e}");
            ExitCode::from(3)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            // The TLS files too: what `run` and a reload would load.
            Ok(c) => match auditlb::tls::load(&c) {
                Ok(material) => {
                    println!(
                        "{}: ok ({} listener(s), {} pool(s), {} backend(s))",
                        config.display(),
                        c.listeners.len(),
                        c.pools.len(),
                        c.pools.iter().map(|p| p.backends.len()).sum::<usize>()
                    );
                    for line in material.summary(&c) {
                        println!("  tls: {line}");
                    }
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    eprintln!(
                        "{}: {} problem(s):\n  {}",
                        config.display(),
                        problems.len(),
                        problems.join("\n  ")
                    );
                    ExitCode::from(1)
                }
            },
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Fingerprint { file } => match auditlb::tls::fingerprint_file(&file) {
            Ok(certs) => {
                for (f, subject) in certs {
                    println!("{f}  {subject}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("auditlb fingerprint: {e}");
                ExitCode::from(1)
            }
        },
        Command::Verify {
            journal,
            archive,
            anchors,
            key,
            json,
        } => {
            let key = match key
                .as_deref()
                .map(auditlb::journal::seal::read_verify_key)
                .transpose()
            {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("auditlb verify: {e}");
                    return ExitCode::from(3);
                }
            };
            if let Some(url) = archive {
                return verify_archive(
                    &url,
                    journal.as_deref(),
                    anchors.as_deref(),
                    key.as_ref(),
                    json,
                );
            }
            let journal = journal.expect("clap requires --journal without --archive");
            match auditlb::journal::verify::verify(&journal, anchors.as_deref(), key.as_ref()) {
                Ok(report) => {
                    if json {
                        println!("{}", report.json());
                    } else {
                        print!("{}", report.text());
                    }
                    ExitCode::from(report.exit_code())
                }
                Err(e) => {
                    eprintln!("auditlb verify: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Command::Cat {
            journal,
            archive,
            journal_id,
            from,
            to,
            format,
        } => {
            use auditlb::journal::cat::{cat, Bound, Format};
            let parse = |b: Option<String>| b.map(|s| Bound::parse(&s)).transpose();
            let (from, to) = match (parse(from), parse(to)) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("auditlb cat: {e}");
                    return ExitCode::from(3);
                }
            };
            let format = match format {
                CatFormat::Raw => Format::Raw,
                CatFormat::Jsonl => Format::Jsonl,
            };
            // From an archive: the journal's segments are fetched into a
            // private temporary directory, one object at a time.
            let mut fetched = None;
            let journal = match (journal, archive) {
                (Some(j), _) => j,
                (None, Some(url)) => {
                    // A new directory of our own (mode 0700, never one that
                    // was there: no planted files, no link followed).
                    use std::os::unix::fs::DirBuilderExt;
                    let dir = std::env::temp_dir().join(format!(
                        "auditlb-cat-{}-{:016x}",
                        std::process::id(),
                        fastrand::u64(..)
                    ));
                    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                        eprintln!("auditlb cat: {}: {e}", dir.display());
                        return ExitCode::from(3);
                    }
                    let seq = |b: &Option<Bound>| match b {
                        Some(Bound::Seq(s)) => Some(*s),
                        _ => None,
                    };
                    if let Err(e) = auditlb::journal::custody::audit::fetch_journal(
                        &url,
                        journal_id.as_deref(),
                        (seq(&from), seq(&to)),
                        &dir,
                    ) {
                        let _ = std::fs::remove_dir_all(&dir);
                        eprintln!("auditlb cat: {e}");
                        return ExitCode::from(3);
                    }
                    fetched = Some(dir.clone());
                    dir
                }
                (None, None) => unreachable!("clap requires --journal or --archive"),
            };
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
            let code = match cat(&journal, from, to, format, &mut out) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("auditlb cat: {}: {e}", journal.display());
                    ExitCode::from(3)
                }
            };
            if let Some(dir) = fetched {
                let _ = std::fs::remove_dir_all(dir);
            }
            code
        }
        Command::Keygen { out } => {
            match auditlb::journal::seal::keygen(&out) {
                Ok(k0) => {
                    println!("wrote {0}/seal.key (keep on the host; auditlb evolves it) and {0}/verify.key", out.display());
                    println!("verification key (k_0), shown once; move verify.key offline:");
                    println!("{k0}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("auditlb keygen: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run { config } => {
            init_logs(cli.log_format);
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let mut b = tokio::runtime::Builder::new_multi_thread();
            // The journal writer has a thread of its own and is the busiest
            // one: the async workers get the other cores (on 2 cores one
            // worker: 12% less CPU per frame and 15% more frames/s than
            // two, and a quarter less CPU for a fleet of idle-ish clients,
            // which then wake one thread less). TOKIO_WORKER_THREADS
            // overrides it.
            if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                b.worker_threads(cores.saturating_sub(1).max(1));
            }
            let rt = match b.enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(run(cfg, &config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("auditlb: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

async fn run(cfg: Config, path: &std::path::Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut server = Server::start(cfg).await?;
    // POST /reload on the admin endpoint: the same as SIGHUP, answered.
    let mut admin_reloads = server.take_admin_reloads();
    loop {
        let answer = tokio::select! {
            sig = stop_signal(&mut term, &mut int) => {
                tracing::info!("{sig} received");
                break;
            }
            _ = hup.recv() => {
                tracing::info!(config = %path.display(), "SIGHUP received: reloading");
                None
            }
            Some(answer) = async {
                match &mut admin_reloads {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                tracing::info!(config = %path.display(), "reload asked for on the admin endpoint");
                Some(answer)
            }
        };
        // A reload waits for the journal writer (which waits for disk
        // space under on-full = block): a stop must not.
        tokio::select! {
            r = reload(&mut server, path) => {
                if let Some(answer) = answer {
                    let _ = answer.send(r);
                }
            }
            sig = stop_signal(&mut term, &mut int) => {
                tracing::warn!("{sig} during a reload: stopping without finishing it");
                break;
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

/// Waits for SIGTERM or SIGINT; returns which.
async fn stop_signal(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// SIGHUP or POST /reload: re-reads the config file and applies it, or
/// keeps the running config and logs every problem with its key path.
/// The answer for the admin endpoint: what was applied, or the problems.
async fn reload(server: &mut Server, path: &std::path::Path) -> Result<String, Vec<String>> {
    match server.reload_file(path).await {
        Ok(r) => {
            tracing::info!(
                config = %path.display(),
                journal_seq = r.config_seq,
                pools_added = r.pools_added,
                pools_removed = r.pools_removed,
                pools_changed = r.pools_changed,
                listeners_added = r.listeners_added,
                listeners_removed = r.listeners_removed,
                listeners_changed = r.listeners_changed,
                "config reloaded"
            );
            Ok(format!(
                "{} (CONFIG record seq {}): pools +{} -{} ~{}, listeners +{} -{} ~{}",
                path.display(),
                r.config_seq,
                r.pools_added,
                r.pools_removed,
                r.pools_changed,
                r.listeners_added,
                r.listeners_removed,
                r.listeners_changed
            ))
        }
        Err(refused) => {
            for p in &refused.problems {
                tracing::error!(config = %path.display(), key = %p.key, problem = %p.msg, "reload refused");
            }
            tracing::error!(config = %path.display(), problems = refused.problems.len(), "reload refused; the running config stays");
            Err(refused
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.key, p.msg))
                .collect())
        }
    }
}
