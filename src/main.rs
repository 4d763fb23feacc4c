//! The `walhook` command line: parses arguments, sets up logging, loads the
//! configuration (exit 2 on any problem, before touching the database) and
//! runs the chosen command with a shutdown token that SIGTERM/SIGINT cancel.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use walhook::app::{self, RunOptions};
use walhook::config::Config;
use walhook::ops;

/// Exit code for a bad configuration or usage (clap also uses 2).
const EXIT_CONFIG: u8 = 2;
/// Exit code for a failure at run time.
const EXIT_RUNTIME: u8 = 1;
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
    },
    /// The whole pipeline in one command: throwaway PostgreSQL, a receiver, sample writes.
    Demo,
    /// Receive webhooks: verify signatures, print batches (for receivers' developers and benchmarks).
    Receive {
        /// The address to listen on; port 0 picks a free one (printed at start).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// A Standard Webhooks secret (whsec_…) to verify signatures with; repeat while rotating.
        /// Without one, signatures are not checked.
        #[arg(
            long = "secret",
            env = "WALHOOK_RECEIVE_SECRET",
            hide_env_values = true
        )]
        secrets: Vec<String>,
        /// Print every record (its JSON, one per line) instead of one line per batch.
        #[arg(long)]
        records: bool,
        /// Print nothing per batch, only count; totals are printed at exit (for benchmarks).
        #[arg(long, conflicts_with = "records")]
        null: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = init_logging(cli.log_format) {
        eprintln!("walhook: {message}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match cli.command {
        Command::Run { config, stdout } => {
            let Some(config) = load_config(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            run_until_signal(|shutdown| async move {
                app::run(config, RunOptions { stdout }, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        Command::Check {
            config,
            json,
            no_network,
        } => {
            let Some(config) = load_config(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            run_ops(async move {
                let opts = ops::check::CheckOptions {
                    network: !no_network,
                };
                let findings = ops::check::run(&config, opts).await;
                if json {
                    println!("{:#}", ops::check::to_json(&findings));
                } else {
                    for finding in &findings {
                        println!("{finding}");
                    }
                }
                if ops::check::has_errors(&findings) {
                    Ok(ExitCode::from(EXIT_RUNTIME))
                } else {
                    Ok(ExitCode::SUCCESS)
                }
            })
        }
        Command::Setup { config, print_sql } => {
            let Some(config) = load_config(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            if print_sql {
                print!("{}", ops::setup::script(&config));
                return ExitCode::SUCCESS;
            }
            run_ops(async move {
                let client = ops::connect(&config).await?;
                for step in ops::setup::run(&client, &config).await? {
                    println!("ok    {step}");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Teardown { config, force, yes } => {
            let Some(config) = load_config(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            run_ops(async move {
                let client = ops::connect(&config).await?;
                let opts = ops::teardown::TeardownOptions { force, yes };
                for line in ops::teardown::run(&client, &config, opts).await? {
                    println!("{line}");
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::RunStrategy {
            name,
            config,
            filter,
            limit,
        } => {
            let Some(config) = load_config(&config) else {
                return ExitCode::from(EXIT_CONFIG);
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("walhook: cannot start the async runtime: {err}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            let opts = walhook::runs::cli::RunStrategyOptions {
                strategy: name,
                filter,
                limit,
            };
            match runtime.block_on(walhook::runs::cli::run_strategy(config, opts)) {
                Ok(summary) if summary.counts.failed == 0 => ExitCode::SUCCESS,
                Ok(summary) => {
                    eprintln!(
                        "walhook: run {}: {} records failed (dead-lettered)",
                        summary.id, summary.counts.failed
                    );
                    ExitCode::from(EXIT_RUNTIME)
                }
                Err(err) => {
                    eprintln!("walhook: {err}");
                    ExitCode::from(if err.is_usage() {
                        EXIT_CONFIG
                    } else {
                        EXIT_RUNTIME
                    })
                }
            }
        }
        Command::Demo => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    eprintln!("walhook: cannot start the async runtime: {err}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            runtime.block_on(async {
                let shutdown = CancellationToken::new();
                if let Err(err) = spawn_signal_handler(shutdown.clone()) {
                    eprintln!("walhook: cannot install signal handlers: {err}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
                match walhook::demo::run(shutdown).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(err) => {
                        eprintln!("walhook: {err}");
                        ExitCode::from(if err.is_setup() {
                            EXIT_CONFIG
                        } else {
                            EXIT_RUNTIME
                        })
                    }
                }
            })
        }
        Command::Receive {
            listen,
            secrets,
            records,
            null,
        } => {
            let secrets = match walhook::receive::parse_secrets(&secrets) {
                Ok(secrets) => secrets,
                Err(err) => {
                    eprintln!("walhook: {err}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let options = walhook::receive::ReceiveOptions {
                listen,
                secrets,
                records,
                null,
            };
            run_until_signal(|shutdown| async move {
                walhook::receive::run(options, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
    }
}

/// Runs an operator command on a Tokio runtime; an error is printed and exits 1.
fn run_ops<Fut>(job: Fut) -> ExitCode
where
    Fut: std::future::Future<Output = Result<ExitCode, ops::OpsError>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("walhook: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(job) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("walhook: {err}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Loads and validates the configuration, printing every problem to stderr.
fn load_config(path: &std::path::Path) -> Option<Config> {
    let loaded = Config::load(path).and_then(|config| {
        // Expressions compile here, so a typo exits 2 with the rest.
        let errors = config.check_expressions(walhook::strategy::check_expression);
        if errors.iter().next().is_some() {
            Err(errors)
        } else {
            Ok(config)
        }
    });
    match loaded {
        Ok(config) => Some(config),
        Err(errors) => {
            let count = errors.iter().count();
            let noun = if count == 1 { "problem" } else { "problems" };
            eprintln!("walhook: {} has {count} {noun}:", path.display());
            for error in errors.iter() {
                // Multi-line messages (TOML syntax errors) stay readable indented.
                eprintln!("  - {}", error.to_string().replace('\n', "\n    "));
            }
            None
        }
    }
}

fn init_logging(format: LogFormat) -> Result<(), String> {
    let filter = match std::env::var(LOG_ENV) {
        Ok(spec) => {
            EnvFilter::try_new(&spec).map_err(|err| format!("invalid {LOG_ENV}={spec:?}: {err}"))?
        }
        Err(_) => EnvFilter::new(DEFAULT_LOG_FILTER),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs `job` on a Tokio runtime. The first SIGTERM or SIGINT cancels its
/// shutdown token (a graceful stop); a second one exits at once.
fn run_until_signal<F, Fut>(job: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("walhook: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(err) = spawn_signal_handler(shutdown.clone()) {
            tracing::error!(error = %err, "cannot install signal handlers");
            return ExitCode::from(EXIT_RUNTIME);
        }
        match job(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = format!("{err:#}"), "walhook stopped");
                eprintln!("walhook: {err:#}");
                // Configuration and schema problems: restarting will not help.
                let config_problem = err
                    .downcast_ref::<app::AppError>()
                    .is_some_and(app::AppError::is_config);
                ExitCode::from(if config_problem {
                    EXIT_CONFIG
                } else {
                    EXIT_RUNTIME
                })
            }
        }
    })
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
