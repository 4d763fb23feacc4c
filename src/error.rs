//! How a command's failure reaches the operator: [`Error`] holds every
//! command's own error with its typed cause chain (`#[source]`), and
//! [`Error::exit_code`] is the one mapping to the process exit code.
//!
//! Every error's message includes its cause's (the way Postgres errors are
//! worded by `pg::describe`, for instance), so `{err}` in main and
//! `error = %err` in a log line show the whole chain once.
//!
//! Every error enum answers one question in one vocabulary, beside its
//! definition ([`Classify`]): is the failure [`ErrorClass::Transient`]
//! (waiting and trying again may fix it), [`ErrorClass::NeedsOperator`]
//! (nothing will until a person changes the configuration, the command
//! line or the database) or [`ErrorClass::Fatal`] (this process cannot go
//! on; the log says why and a restart may help)? A wrapper asks its cause,
//! so the answer comes from where the failure is understood, and the exit
//! code derives from it ([`ErrorClass::exit_code`]) instead of a match over
//! every command's variants.
//!
//! Exit codes: `0` ok, `1` a failure at run time (restarting may help), `2`
//! a bad configuration, usage or a database that does not match the
//! configuration (restarting will not help until something is changed),
//! `3` from `walhook check --diff`: the change needs a restart (a reload
//! would refuse it).

use std::fmt;
use std::path::PathBuf;

pub use crate::error_class::{Classify, ErrorClass, EXIT_CONFIG, EXIT_RUNTIME};

use crate::app::AppError;
use crate::config::ConfigErrors;
use crate::demo::DemoError;
use crate::ops::OpsError;
use crate::receive::ReceiveError;
use crate::runs::cli::CliError;
use crate::stdout_sink::StdoutError;

/// Exit code of `check --diff` when a reload would refuse the change.
const EXIT_NEEDS_RESTART: u8 = 3;

/// Why a walhook command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log filter in the environment does not parse.
    #[error("invalid {variable}={spec:?}: {source}")]
    Logging {
        variable: &'static str,
        spec: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The configuration file cannot be read or is invalid.
    #[error("{}", ConfigProblems { path, errors })]
    Config { path: PathBuf, errors: ConfigErrors },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// `walhook check --diff`: the change needs a restart.
    #[error("a reload would refuse this change ({count} setting(s) need a restart, see above)")]
    NeedsRestart { count: usize },
    // Each command's own error, boxed: the enum stays small whatever a
    // command's error holds.
    /// `walhook run`.
    #[error(transparent)]
    Run(Box<AppError>),
    /// `walhook run --stdout`.
    #[error(transparent)]
    Stdout(Box<StdoutError>),
    /// `walhook check`, `setup` and `teardown`.
    #[error(transparent)]
    Ops(Box<OpsError>),
    /// `walhook run-strategy`.
    #[error(transparent)]
    RunStrategy(Box<CliError>),
    /// `walhook demo`.
    #[error(transparent)]
    Demo(Box<DemoError>),
    /// `walhook receive`.
    #[error(transparent)]
    Receive(Box<ReceiveError>),
}

/// `?` on a command's own error boxes it into its variant.
macro_rules! from_command_error {
    ($($error:ty => $variant:ident),* $(,)?) => {$(
        impl From<$error> for Error {
            fn from(err: $error) -> Self {
                Error::$variant(Box::new(err))
            }
        }
    )*};
}

from_command_error!(
    AppError => Run,
    StdoutError => Stdout,
    OpsError => Ops,
    CliError => RunStrategy,
    DemoError => Demo,
    ReceiveError => Receive,
);

impl Error {
    /// The process exit code: [`EXIT_NEEDS_RESTART`] for `check --diff`,
    /// else what the error's [`ErrorClass`] says.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::NeedsRestart { .. } => EXIT_NEEDS_RESTART,
            err => err.class().exit_code(),
        }
    }
}

impl Classify for Error {
    fn class(&self) -> ErrorClass {
        match self {
            Error::Logging { .. } | Error::Config { .. } => ErrorClass::NeedsOperator,
            Error::Runtime(_) | Error::Signals(_) => ErrorClass::Fatal,
            // Not a failure of walhook's: the change needs a restart.
            Error::NeedsRestart { .. } => ErrorClass::NeedsOperator,
            Error::Run(err) => err.class(),
            Error::Stdout(err) => err.class(),
            Error::Ops(err) => err.class(),
            Error::RunStrategy(err) => err.class(),
            Error::Demo(err) => err.class(),
            Error::Receive(err) => err.class(),
        }
    }
}

/// `path has N problems:` and one indented line per problem.
struct ConfigProblems<'a> {
    path: &'a PathBuf,
    errors: &'a ConfigErrors,
}

impl fmt::Display for ConfigProblems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.iter().count();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "{} has {count} {noun}:", self.path.display())?;
        for error in self.errors.iter() {
            // Multi-line messages (TOML syntax errors) stay readable indented.
            write!(f, "\n  - {}", error.to_string().replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, SigningError};
    use crate::delivery::TlsError;
    use crate::delivery::{DeliveryError, EndpointError};
    use crate::prepare::PrepareError;
    use crate::runs::RunError;
    use crate::strategy::StrategyError;

    fn io(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_string())
    }

    #[test]
    fn configuration_and_usage_problems_exit_2_the_rest_exit_1() {
        let config = || ConfigErrors(vec![ConfigError::new("source.url", "missing")]);
        let strategy = || StrategyError::NoSuchStrategy(3);
        let endpoint = || EndpointError::Tls(TlsError::HalfIdentity("hook".into()));
        let exit_2 = [
            Error::Config {
                path: "config.toml".into(),
                errors: config(),
            },
            Error::from(AppError::Prepare(PrepareError::Strategy(strategy()))),
            Error::from(AppError::Prepare(PrepareError::Schema(Vec::new()))),
            Error::from(AppError::Prepare(PrepareError::Endpoint(endpoint()))),
            Error::from(AppError::Worker(DeliveryError::NeedsStateStore {
                strategy: "orders".into(),
            })),
            Error::from(AppError::NoEndpoint {
                index: 0,
                name: "hook".into(),
            }),
            Error::from(CliError::NoStrategy {
                name: "nope".into(),
                known: vec!["seed".into()],
            }),
            Error::from(CliError::Prepare(PrepareError::Strategy(strategy()))),
            Error::from(CliError::Prepare(PrepareError::Schema(Vec::new()))),
            Error::from(CliError::Prepare(PrepareError::Endpoint(endpoint()))),
            Error::from(CliError::Filter("row.id >".into())),
            Error::from(DemoError::NoPostgres),
            Error::from(ReceiveError::Secret {
                index: 1,
                source: SigningError::TooShort(5),
            }),
        ];
        for err in &exit_2 {
            assert_eq!(err.exit_code(), EXIT_CONFIG, "{err:?}");
        }
        let exit_1 = [
            Error::Runtime(io("no threads")),
            Error::Signals(io("no signals")),
            Error::from(AppError::WorkerStopped {
                strategy: "orders".into(),
            }),
            Error::from(StdoutError::Write(io("broken pipe"))),
            Error::from(OpsError::Refused("slot s is active".into())),
            Error::from(OpsError::CheckFailed {
                errors: 2,
                slot_lost: false,
            }),
            Error::from(CliError::Failed { id: 7, failed: 3 }),
            Error::from(CliError::Run(RunError::WorkerStopped)),
            // The demo's own pipeline failing is the demo failing at run time.
            Error::from(DemoError::Pipeline(AppError::Prepare(
                PrepareError::Schema(Vec::new()),
            ))),
            Error::from(DemoError::Timeout("every batch".into())),
            Error::from(ReceiveError::Serve(io("reset"))),
        ];
        for err in &exit_1 {
            assert_eq!(err.exit_code(), EXIT_RUNTIME, "{err:?}");
        }
    }

    /// A wrapper answers with its cause's class, so a lost slot or a bad
    /// URL exits 2 whichever command met it (`run --stdout` exited 1 for a
    /// lost slot while `run` exited 2, before the classes).
    #[test]
    fn a_wrapper_takes_its_causes_class() {
        use crate::pg::{ConnectError, SlotLoss, UrlError};
        use crate::source::SourceError;
        use crate::state::StateError;
        let not_ready = || StateError::NotReady {
            problems: Vec::new(),
        };
        let bad_url = || ConnectError::Url(UrlError::Invalid("sslmode".into()));
        let lost = || {
            SourceError::SlotLost(Box::new(SlotLoss {
                slot: "s".into(),
                kind: crate::pg::slot::LossKind::Missing,
                after: crate::lsn::Lsn(1),
                through: crate::lsn::Lsn(2),
            }))
        };
        let needs_operator = [
            Error::from(AppError::State(not_ready())),
            Error::from(AppError::Connect(bad_url())),
            Error::from(AppError::Source(lost())),
            Error::from(StdoutError::Source(lost())),
            Error::from(CliError::State(not_ready())),
            Error::from(CliError::Connect(bad_url())),
            Error::from(OpsError::Connect(bad_url())),
            Error::from(AppError::Prepare(PrepareError::Catalog(
                crate::strategy::SchemaError::WouldBreakWrites {
                    publication: "p".into(),
                    problem: "no replica identity".into(),
                    fix: "ALTER TABLE".into(),
                },
            ))),
        ];
        for err in &needs_operator {
            assert_eq!(err.class(), ErrorClass::NeedsOperator, "{err:?}");
            assert_eq!(err.exit_code(), EXIT_CONFIG, "{err:?}");
            // main prints `{err}`: each cause in it once.
            let printed = err.to_string();
            let mut cause = std::error::Error::source(err);
            while let Some(c) = cause {
                let text = c.to_string();
                assert_eq!(printed.matches(&text).count(), 1, "{text:?} in {printed:?}");
                cause = c.source();
            }
        }
        assert_eq!(
            Error::from(StdoutError::Write(io("broken pipe"))).class(),
            ErrorClass::Fatal
        );
        assert_eq!(
            Error::NeedsRestart { count: 1 }.exit_code(),
            EXIT_NEEDS_RESTART
        );
    }

    #[test]
    fn a_bad_configuration_lists_every_problem_indented() {
        let err = Error::Config {
            path: "config.toml".into(),
            errors: ConfigErrors(vec![
                ConfigError::new("source.url", "missing"),
                ConfigError::new("", "TOML syntax\nat line 3"),
            ]),
        };
        assert_eq!(
            err.to_string(),
            "config.toml has 2 problems:\n  - source.url: missing\n  - TOML syntax\n    at line 3"
        );
    }

    #[test]
    fn the_message_holds_the_chain_and_the_causes_stay_typed() {
        let err = Error::from(CliError::Run(RunError::Exhausted {
            last_error: "HTTP 500".into(),
        }));
        assert_eq!(
            err.to_string(),
            "run failed: delivery failed: attempts exhausted (max_attempts reached): HTTP 500"
        );
        let cause = std::error::Error::source(&err).expect("the run's error");
        assert!(matches!(
            cause.downcast_ref::<RunError>(),
            Some(RunError::Exhausted { .. })
        ));
    }
}
