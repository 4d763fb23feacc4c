//! The admin API's commands ([`Control`]) for `walhook run`: runs go to the
//! [`RunManager`], pause and resume to the live workers' [`PauseHandle`]s;
//! replaying dead letters is not wired in this build yet and answers 503.

use serde_json::Value;

use super::manager::{RunManager, Trigger};
use crate::admin::{BoxFuture, Control, ControlError, RunMode, RunReply, RunRequest};
use crate::config::Config;
use crate::delivery::PauseHandle;

/// [`Control`] over a [`RunManager`].
pub struct AppControl {
    runs: RunManager,
    /// (name, sync allowed, async allowed) per strategy, for the default mode.
    modes: Vec<(String, bool, bool)>,
    /// The live workers' pause switches, by strategy name.
    pauses: Vec<(String, PauseHandle)>,
}

impl AppControl {
    /// Commands for `config`'s strategies.
    pub fn new(runs: RunManager, config: &Config) -> Self {
        AppControl {
            runs,
            modes: config
                .strategies
                .iter()
                .map(|s| (s.name.clone(), s.on_demand.sync, s.on_demand.r#async))
                .collect(),
            pauses: Vec::new(),
        }
    }

    /// Lets `pause`/`resume` reach the live workers.
    pub fn with_pauses(mut self, pauses: Vec<(String, PauseHandle)>) -> Self {
        self.pauses = pauses;
        self
    }

    fn pause_handle(&self, strategy: &str) -> Result<&PauseHandle, ControlError> {
        if self.pauses.is_empty() {
            return Err(unsupported("pause and resume"));
        }
        self.pauses
            .iter()
            .find(|(n, _)| n == strategy)
            .map(|(_, h)| h)
            .ok_or_else(|| ControlError::NotFound(format!("no strategy named {strategy:?}")))
    }
}

fn unsupported(what: &str) -> ControlError {
    ControlError::Unavailable(format!("{what}: not supported yet"))
}

impl Control for AppControl {
    fn pause<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            self.pause_handle(strategy)?.pause();
            Ok(())
        })
    }

    fn resume<'a>(&'a self, strategy: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        Box::pin(async move {
            self.pause_handle(strategy)?.resume();
            Ok(())
        })
    }

    fn start_run<'a>(
        &'a self,
        strategy: &'a str,
        request: RunRequest,
    ) -> BoxFuture<'a, Result<RunReply, ControlError>> {
        Box::pin(async move {
            let Some((_, sync, _)) = self.modes.iter().find(|(n, _, _)| n == strategy) else {
                return Err(ControlError::NotFound(format!(
                    "no strategy named {strategy:?}"
                )));
            };
            // No mode given: async when allowed, else sync.
            let mode = request
                .mode
                .unwrap_or(if *sync && !self.allows_async(strategy) {
                    RunMode::Sync
                } else {
                    RunMode::Async
                });
            let trigger = match mode {
                RunMode::Sync => Trigger::Sync,
                RunMode::Async => Trigger::Async,
            };
            self.runs
                .start(strategy, mode, request.filter, request.limit, trigger)
                .await
        })
    }

    fn run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move { self.runs.get(id).await })
    }

    fn cancel_run(&self, id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async move { self.runs.cancel(id).await })
    }

    fn replay_dead_letter(&self, _id: i64) -> BoxFuture<'_, Result<Value, ControlError>> {
        Box::pin(async { Err(unsupported("replaying dead letters")) })
    }
}

impl AppControl {
    fn allows_async(&self, strategy: &str) -> bool {
        self.modes.iter().any(|(n, _, a)| n == strategy && *a)
    }
}
