//! The `walhook` command line: parses arguments, sets up logging, loads the
//! configuration (exit 2 on any problem, before touching the database),
//! builds the runtime and runs the chosen command; long-running commands get
//! a shutdown token that SIGTERM/SIGINT cancel. The exit code comes from
//! [`Error::exit_code`].

use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use walhook::config::{Config, HmacAlgorithm, SignatureEncoding, SigningFormat};
use walhook::error::{Error, EXIT_CONFIG, EXIT_RUNTIME};
use walhook::{app, demo, ops, receive, runs, stdout_sink};

/// The environment variable holding the log filter.
const LOG_ENV: &str = "WALHOOK_LOG";
/// The log filter when WALHOOK_LOG is unset.
const DEFAULT_LOG_FILTER: &str = "info,tokio_postgres=warn";

/// Change-data-capture for PostgreSQL: committed changes to batched, signed webhooks.
#[derive(Debug, Parser)]
#[command(name = "walhook", version, about)]
struct Cli {
    /// Log line format (logs go to stderr; filter with WALHOOK_LOG, e.g. "info,walhook=debug").
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `walhook runs` does.
#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// The latest runs (the default).
    List,
    /// One run, with its counts and progress.
    Show { id: i64 },
    /// Stop reading after the chunk under way; the run stays paused across restarts.
    Pause { id: i64 },
    /// Read on from the next chunk.
    Resume { id: i64 },
    /// End the run; what it already sent stays sent.
    Cancel { id: i64 },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tail the replication slot and deliver changes (the main job).
    Run {
        /// The configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Print batches to stdout instead of sending them.
        #[arg(long)]
        stdout: bool,
        /// After a failure restarting cannot fix (exit code 2: a lost
        /// slot, a database that does not match the configuration), keep
        /// the admin server answering (/healthz 200, /readyz 503 with the
        /// error, /status) until SIGTERM, then exit 2: for orchestrators
        /// that restart every container that exits (Kubernetes).
        #[arg(long)]
        hold_unrecoverable: bool,
    },
    /// Preflight: server settings, role, publication, slot, replica identity, endpoints.
    Check {
        /// The configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Print the findings as one JSON document.
        #[arg(long)]
        json: bool,
        /// Do not try to connect to the endpoints.
        #[arg(long)]
        no_network: bool,
        /// Print what reloading -c would change in a walhook running FILE (strategies added,
        /// removed, changed; endpoints; settings that need a restart) instead of the checks.
        /// Offline: the files only, not the database (a reload may still refuse what the database
        /// lacks). Exit 0: no restart needed; 2: -c is invalid; 3: it needs a restart.
        #[arg(long, value_name = "FILE")]
        diff: Option<PathBuf>,
    },
    /// Create the publication, the state schema and the slot (idempotent).
    Setup {
        /// The configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Print the SQL instead of running it.
        #[arg(long)]
        print_sql: bool,
    },
    /// Drop the slot; with --yes also the publication and the state schema.
    Teardown {
        /// The configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Drop the slot even while a walhook streams from it (ends that connection).
        #[arg(long)]
        force: bool,
        /// Also drop the publication and the state schema (dead letters, runs).
        #[arg(long)]
        yes: bool,
        /// Print the SQL that drops the slot, the publication and the state schema (for an administrator) instead of running anything.
        #[arg(long, conflicts_with_all = ["force", "yes"])]
        print_sql: bool,
    },
    /// Run a strategy once over its table's current rows (no admin server), then exit.
    RunStrategy {
        /// The `[[strategies]]` name.
        name: String,
        /// The configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        /// Only rows matching this expression (`row.<col>`, `new.<col>`).
        #[arg(long)]
        filter: Option<String>,
        /// At most this many records.
        #[arg(long)]
        limit: Option<u64>,
        /// Start at this primary key: its text, or a JSON array of its columns' texts.
        #[arg(long)]
        from: Option<String>,
    },
    /// The runs of the walhook that streams (its admin API, with `[admin] token`).
    Runs {
        /// The configuration file.
        #[arg(short, long, default_value = "config.toml")]
        config: PathBuf,
        #[command(subcommand)]
        action: Option<RunsCommand>,
    },
    /// The whole pipeline in one command: throwaway PostgreSQL, a receiver, sample writes.
    Demo,
    /// Receive webhooks: check credentials and signatures, print batches (for receivers' developers and benchmarks).
    Receive {
        /// The address to listen on; port 0 picks a free one (printed at start).
        #[arg(long, env = "WALHOOK_RECEIVE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The signature format to verify, as the endpoint's `signing.format`.
        #[arg(long, value_enum, default_value_t = FormatArg::StandardWebhooks)]
        format: FormatArg,
        /// A signing secret to verify with (whsec_… for standard-webhooks, any text for hmac);
        /// repeat while rotating. Without one, signatures are not checked.
        #[arg(
            long = "secret",
            env = "WALHOOK_RECEIVE_SECRET",
            hide_env_values = true
        )]
        secrets: Vec<String>,
        /// hmac: the header holding the signature, e.g. X-Hub-Signature-256.
        #[arg(long, required_if_eq("format", "hmac"))]
        header: Option<String>,
        /// hmac: the hash [default: sha256].
        #[arg(long, value_enum)]
        algorithm: Option<AlgorithmArg>,
        /// hmac: how the signature is written [default: hex].
        #[arg(long, value_enum)]
        encoding: Option<EncodingArg>,
        /// hmac: text before the signature, e.g. "sha256=".
        #[arg(long)]
        prefix: Option<String>,
        /// hmac: the header holding the Unix time that the HMAC covers as `<timestamp>.<body>`.
        #[arg(long)]
        timestamp_header: Option<String>,
        /// Require HTTP Basic credentials USER:PASSWORD.
        #[arg(long, env = "WALHOOK_RECEIVE_BASIC", hide_env_values = true)]
        basic: Option<String>,
        /// Require `Authorization: Bearer TOKEN`.
        #[arg(long, env = "WALHOOK_RECEIVE_BEARER", hide_env_values = true)]
        bearer: Option<String>,
        /// Require the header HEADER:VALUE (an API key).
        #[arg(long, env = "WALHOOK_RECEIVE_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Print every record (its JSON, one per line) instead of one line per batch.
        #[arg(long)]
        records: bool,
        /// Print nothing per batch, only count; totals are printed at exit (for benchmarks).
        #[arg(long, conflicts_with = "records")]
        null: bool,
    },
}

/// `walhook receive --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum FormatArg {
    /// Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature.
    StandardWebhooks,
    /// An HMAC of the body (or of `timestamp.body`) in --header.
    Hmac,
}

/// `walhook receive --algorithm`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Sha256,
    Sha512,
}

/// `walhook receive --encoding`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum EncodingArg {
    Hex,
    Base64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Receive { .. }) {
        reuse_freed_buffers();
    } else {
        keep_large_buffers_mapped();
    }
    match init_logging(cli.log_format).and_then(|()| execute(cli.command, cli.log_format)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("walhook: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Keeps glibc's mmap threshold at its default (128 KiB) instead of letting
/// it rise. glibc raises it each time a large mapped block is freed, after
/// which 200 KB rows and 1 MiB request bodies come from the heap arenas,
/// where freed space mostly stays resident: memory would follow the
/// high-water mark instead of the budget (`[source] max_buffer_bytes`).
/// At most two malloc arenas: records are allocated on whichever runtime
/// thread the router runs on and freed on another, and with an arena per
/// thread each one's heap grew to hold its share (20 KB rows: 115 MiB peak
/// for a 64 MiB budget, 85 MiB with two).
/// Free space a heap keeps at its top instead of returning it: the socket's
/// 64 KiB read buffers come and go all the time, and with glibc's default
/// (128 KiB) each one cost fresh pages (most of walhook's page faults on
/// wide rows). Adds at most this much per arena to RSS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 8 * 1024 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_large_buffers_mapped() {
    // SAFETY: mallopt only sets an allocator parameter; called once, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_large_buffers_mapped() {}

/// `walhook receive` has no memory budget: request bodies (a megabyte
/// each) and hyper's read buffers come from the heap and are reused, not
/// mapped and unmapped per request, whose fresh pages cost the receiver
/// about half its CPU (`walhook receive --null` shares the machine with
/// what it measures).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reuse_freed_buffers() {
    // SAFETY: as above; nothing has started another thread yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reuse_freed_buffers() {}

/// Runs `command`: its configuration is loaded (and rejected) before the
/// runtime starts and anything touches the database.
fn execute(command: Command, log_format: LogFormat) -> Result<(), Error> {
    match command {
        Command::Run {
            config: path,
            stdout,
            hold_unrecoverable,
        } => {
            let config = load_config(&path)?;
            until_signal(|shutdown| async move {
                if stdout {
                    stdout_sink::run(config, shutdown).await?;
                } else {
                    let reload = app::Reload {
                        path: Some(path),
                        signals: Some(spawn_sighup_handler().map_err(Error::Signals)?),
                    };
                    let held = hold_unrecoverable.then(|| config.clone());
                    if let Err(err) = app::run_with(config, reload, shutdown.clone()).await {
                        let err = Error::from(err);
                        if let Some(config) = held.filter(|_| err.exit_code() == EXIT_CONFIG) {
                            tracing::warn!("holding until SIGTERM (--hold-unrecoverable): /readyz answers 503 with the error");
                            app::hold(&config, err.to_string(), shutdown).await?;
                        }
                        return Err(err);
                    }
                }
                Ok(())
            })
        }
        Command::Check {
            config,
            json,
            no_network,
            diff: Some(running),
        } => {
            let _ = no_network;
            let new = load_config(&config)?;
            let running = load_config(&running)?;
            let plan = walhook::reload::Plan::between(&running, &new);
            // Only the two files are compared: what the running walhook
            // checks against the database at reload is not known here.
            const OFFLINE: &str = "compared offline (the two files, not the database): the \
                running walhook checks the new strategies against the database when it reloads \
                and may still refuse them; `walhook check -c NEW` runs those checks";
            if json {
                let mut doc = serde_json::to_value(&plan).map_err(|e| Error::Runtime(e.into()))?;
                if let Some(doc) = doc.as_object_mut() {
                    doc.insert("offline".into(), serde_json::Value::Bool(true));
                    doc.insert("note".into(), OFFLINE.into());
                }
                let doc =
                    serde_json::to_string_pretty(&doc).map_err(|e| Error::Runtime(e.into()))?;
                println!("{doc}");
            } else {
                print!("{plan}");
                if !plan.is_empty() && plan.refused.is_empty() {
                    println!("{OFFLINE}");
                }
            }
            match plan.refused.len() {
                0 => Ok(()),
                count => Err(Error::NeedsRestart { count }),
            }
        }
        Command::Check {
            config,
            json,
            no_network,
            diff: None,
        } => {
            let config = load_config(&config)?;
            let opts = ops::CheckOptions {
                network: !no_network,
            };
            block_on(async { ops::check(&config, opts, json).await })
        }
        Command::Setup { config, print_sql } => {
            let config = load_config(&config)?;
            if print_sql {
                print!("{}", ops::setup_script(&config)?);
                return Ok(());
            }
            block_on(async { ops::setup(&config).await })
        }
        Command::Teardown {
            config,
            force,
            yes,
            print_sql,
        } => {
            let config = load_config(&config)?;
            if print_sql {
                print!("{}", ops::teardown_script(&config)?);
                return Ok(());
            }
            let opts = ops::TeardownOptions { force, yes };
            block_on(async { ops::teardown(&config, opts).await })
        }
        Command::RunStrategy {
            name,
            config,
            filter,
            limit,
            from,
        } => {
            let config = load_config(&config)?;
            let from = match from {
                None => None,
                Some(text) => Some(runs::parse_key(&text).map_err(runs::CliError::From)?),
            };
            let display = match log_format {
                LogFormat::Text if std::io::stderr().is_terminal() => runs::ProgressDisplay::Bar {
                    colour: colour(true, std::env::var_os("NO_COLOR")),
                },
                _ => runs::ProgressDisplay::Lines,
            };
            let opts = runs::RunStrategyOptions {
                strategy: name,
                filter,
                limit,
                from,
                display,
            };
            block_on(runs::run_strategy(config, opts))
        }
        Command::Runs { config, action } => {
            let config = load_config(&config)?;
            let action = match action.unwrap_or(RunsCommand::List) {
                RunsCommand::List => runs::RunsAction::List,
                RunsCommand::Show { id } => runs::RunsAction::Show(id),
                RunsCommand::Pause { id } => runs::RunsAction::Pause(id),
                RunsCommand::Resume { id } => runs::RunsAction::Resume(id),
                RunsCommand::Cancel { id } => runs::RunsAction::Cancel(id),
            };
            block_on(runs::runs_command(config, action))
        }
        Command::Demo => until_signal(|shutdown| async move { Ok(demo::run(shutdown).await?) }),
        Command::Receive {
            listen,
            format,
            secrets,
            header,
            algorithm,
            encoding,
            prefix,
            timestamp_header,
            basic,
            bearer,
            api_key,
            records,
            null,
        } => {
            let flags = receive::SignatureFlags {
                format: match format {
                    FormatArg::StandardWebhooks => SigningFormat::StandardWebhooks,
                    FormatArg::Hmac => SigningFormat::Hmac,
                },
                secrets,
                header,
                algorithm: algorithm.map(|a| match a {
                    AlgorithmArg::Sha256 => HmacAlgorithm::Sha256,
                    AlgorithmArg::Sha512 => HmacAlgorithm::Sha512,
                }),
                encoding: encoding.map(|e| match e {
                    EncodingArg::Hex => SignatureEncoding::Hex,
                    EncodingArg::Base64 => SignatureEncoding::Base64,
                }),
                prefix,
                timestamp_header,
            };
            let mut credentials = Vec::new();
            if let Some(text) = basic {
                credentials.push(receive::Credential::basic(&text)?);
            }
            if let Some(text) = bearer {
                credentials.push(receive::Credential::bearer(&text)?);
            }
            if let Some(text) = api_key {
                credentials.push(receive::Credential::api_key(&text)?);
            }
            let options = receive::ReceiveOptions {
                listen,
                checks: receive::Checks {
                    verifier: receive::Checks::signatures(flags)?,
                    credentials,
                },
                records,
                null,
            };
            until_signal(|shutdown| async move { Ok(receive::run(options, shutdown).await?) })
        }
    }
}

/// Runs `job` to its end on the one Tokio runtime.
fn block_on<E>(job: impl Future<Output = Result<(), E>>) -> Result<(), Error>
where
    Error: From<E>,
{
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // `TOKIO_WORKER_THREADS`, when set, is Tokio's to read.
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(default_worker_threads());
    }
    let runtime = builder.build().map_err(Error::Runtime)?;
    Ok(runtime.block_on(job)?)
}

/// Half the cores, at least one. walhook usually shares its machine with
/// the database it reads, whose walsender decodes on one core; and its
/// pipeline is one stream through one router, so more threads mostly add
/// hand-offs between them (on 2 cores, 2 threads cost W6 about 25% more
/// CPU than 1 and slowed the walsender: README "Performance").
fn default_worker_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// Runs `job` with a shutdown token: the first SIGTERM or SIGINT cancels it
/// (a graceful stop), a second one exits at once. Its failure is also logged.
fn until_signal<F, Fut>(job: F) -> Result<(), Error>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    block_on(async {
        let shutdown = CancellationToken::new();
        spawn_signal_handler(shutdown.clone()).map_err(Error::Signals)?;
        job(shutdown).await.inspect_err(|err| {
            tracing::error!(error = %err, "walhook stopped");
        })
    })
}

/// Loads and validates the configuration, expressions included (so a typo
/// exits 2 with the rest).
fn load_config(path: &Path) -> Result<Config, Error> {
    walhook::reload::load(path).map_err(|errors| Error::Config {
        path: path.to_path_buf(),
        errors,
    })
}

fn init_logging(format: LogFormat) -> Result<(), Error> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(spec) => EnvFilter::try_new(&spec).map_err(|source| Error::Logging {
            variable: LOG_ENV,
            spec,
            source,
        })?,
        Err(_) => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ))
        // Keeps run-strategy's progress bar intact.
        .with_writer(runs::LogWriter::default);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Colour only on a terminal, and never when `NO_COLOR` is set to
/// anything non-empty (<https://no-color.org>): systemd, Kubernetes and
/// pipes get plain text.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// One `()` per SIGHUP: `walhook run` reloads its configuration.
fn spawn_sighup_handler() -> std::io::Result<tokio::sync::mpsc::Receiver<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            // One waiting reload covers any number of signals.
            let _ = tx.try_send(());
        }
    });
    Ok(rx)
}

fn spawn_signal_handler(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let mut received = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            received += 1;
            if received == 1 {
                tracing::info!(
                    signal = name,
                    "shutting down; send it again to exit at once"
                );
                shutdown.cancel();
            } else {
                tracing::warn!(signal = name, "second signal, exiting now");
                std::process::exit(i32::from(EXIT_RUNTIME));
            }
        }
    });
    Ok(())
}
