//! Configuration reload without a restart (SIGHUP, `POST /config/reload`).
//!
//! ```text
//!  request ─▶ read the file ─▶ validate (syntax, expressions, live schema,
//!             publication, endpoints) ─▶ plan (old vs new) ─▶ refused? ─▶ apply
//!  apply: spawn new workers ─▶ router swaps routes between two transactions
//!         (the boundary LSN) ─▶ old queues close, old workers deliver what
//!         they hold and end ─▶ their replacements start sending
//! ```
//!
//! Guarantees, and why they hold:
//! - Nothing changes before the whole file is validated like at start; an
//!   invalid or refused file leaves the running configuration as it was.
//! - A transaction goes wholly by the old or wholly by the new routes: the
//!   router swaps them only between transactions.
//! - Nothing is lost: a removed or replaced worker's queue closes only after
//!   the router stopped sending to it; the worker delivers everything it
//!   holds (it still holds the slot until then) and its checkpoint index is
//!   forgotten only once it has caught up.
//! - Nothing is sent twice: the new worker gets only transactions after the
//!   boundary, the old one only those up to it.
//! - Per-strategy order: a replacement sends nothing before the worker it
//!   replaces has ended (it shares that one's pause switch, so a paused
//!   strategy stays paused across a reload).
//! - Added strategies start at the boundary; the past is an on-demand run.
//!
//! What a reload cannot change ([source], [admin], [state], the first
//! `messages` strategy) is refused with the reason; see [`plan`].
//!
//! This module holds the plan and the requests' plumbing; applying a plan
//! to the running stages is the application's (`app/reloader.rs`).

pub mod plan;

use std::path::Path;

use serde::Serialize;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

pub use plan::Plan;

use crate::config::{Config, ConfigErrors};
use crate::strategy;
use crate::telemetry::names;

/// Reads, interpolates, parses and validates `path`, expressions included:
/// everything that needs no database.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    read(path).0
}

/// [`load`], and the SHA-256 of the text read (`None` when unreadable).
pub(crate) fn read(path: &Path) -> (Result<Config, ConfigErrors>, Option<String>) {
    let Ok(bytes) = std::fs::read(path) else {
        // Config::load words the error (and its path) like every other.
        return (Config::load(path), None);
    };
    let sha256 = Some(sha256(&bytes));
    let checked = match String::from_utf8(bytes) {
        Ok(text) => Config::parse_checked(
            &text,
            &|name| std::env::var(name).ok(),
            &strategy::check_expression,
        ),
        Err(_) => Config::load(path),
    };
    (checked, sha256)
}

/// How a reload ended (the `result` label of `walhook_config_reload_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// The new configuration runs.
    Applied,
    /// The file says what already runs.
    Unchanged,
    /// The file does not validate; nothing changed.
    Invalid,
    /// The file changes settings only read at start; nothing changed.
    Refused,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Invalid => "invalid",
            ReloadResult::Refused => "refused",
        }
    }
}

/// A reload's answer (the HTTP body of `POST /config/reload`).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub result: ReloadResult,
    /// Only planned (`?dry_run=true`): nothing was applied.
    pub dry_run: bool,
    /// Why it was invalid or refused (paths and reasons, never values).
    pub error: Option<String>,
    /// What changes (absent when the file did not parse).
    pub plan: Option<Plan>,
    /// Transactions ending at or before this LSN went by the old
    /// configuration, later ones by the new (applied reloads only; `None`
    /// when none had been streamed yet: all go by the new one).
    pub boundary_lsn: Option<String>,
}

impl Outcome {
    pub(crate) fn failed(result: ReloadResult, error: String, plan: Option<Plan>) -> Outcome {
        Outcome {
            result,
            dry_run: false,
            error: Some(error),
            plan,
            boundary_lsn: None,
        }
    }
}

/// A request to reload; `reply` gets the outcome (SIGHUP has none).
#[derive(Debug)]
pub(crate) struct ReloadRequest {
    pub(crate) dry_run: bool,
    pub(crate) reply: Option<oneshot::Sender<Outcome>>,
}

/// The loaded file and the last reload, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ConfigStatus {
    path: Option<String>,
    /// SHA-256 of the running file's text (hex).
    sha256: Option<String>,
    loaded_at: Option<String>,
    last_reload: Option<LastReload>,
}

#[derive(Debug, Clone, Serialize)]
struct LastReload {
    at: String,
    result: ReloadResult,
    error: Option<String>,
    boundary_lsn: Option<String>,
}

/// What the admin API holds: where to send reload requests, and the status.
#[derive(Debug, Clone)]
pub(crate) struct ReloadHandle {
    requests: mpsc::Sender<ReloadRequest>,
    status: watch::Receiver<ConfigStatus>,
}

impl ReloadHandle {
    /// Asks for a reload and waits for its outcome; `None` when walhook is
    /// stopping.
    pub(crate) async fn reload(&self, dry_run: bool) -> Option<Outcome> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(ReloadRequest {
                dry_run,
                reply: Some(reply),
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// `/status`'s `config` object.
    pub(crate) fn status_json(&self) -> Value {
        serde_json::to_value(&*self.status.borrow()).unwrap_or(Value::Null)
    }
}

/// The channel reload requests come in on, and the handle for the admin API.
pub(crate) fn channel(path: Option<&Path>) -> (ReloadHandle, Requests) {
    let (tx, rx) = mpsc::channel(4);
    let mut status = ConfigStatus {
        path: path.map(|p| p.display().to_string()),
        ..ConfigStatus::default()
    };
    if let Some(text) = path.and_then(|p| std::fs::read(p).ok()) {
        status.sha256 = Some(sha256(&text));
        status.loaded_at = Some(now());
    }
    let (status_tx, status_rx) = watch::channel(status);
    (
        ReloadHandle {
            requests: tx.clone(),
            status: status_rx,
        },
        Requests {
            rx,
            tx,
            status: status_tx,
        },
    )
}

/// The receiving end of reload requests (see [`channel`]).
#[derive(Debug)]
pub(crate) struct Requests {
    rx: mpsc::Receiver<ReloadRequest>,
    tx: mpsc::Sender<ReloadRequest>,
    status: watch::Sender<ConfigStatus>,
}

impl Requests {
    /// Logs and counts a reload's outcome (not a dry run's) and shows it in
    /// `/status`; `sha256` is the file read, now running if it applied.
    pub(crate) fn record(&self, outcome: &Outcome, sha256: Option<String>) {
        if outcome.dry_run {
            return;
        }
        metrics::counter!(names::CONFIG_RELOAD_TOTAL, "result" => outcome.result.as_str())
            .increment(1);
        match &outcome.error {
            Some(error) => tracing::warn!(
                result = outcome.result.as_str(),
                error = %error,
                "configuration reload: the running configuration stays"
            ),
            None => tracing::info!(
                result = outcome.result.as_str(),
                boundary_lsn = outcome
                    .boundary_lsn
                    .as_deref()
                    .unwrap_or("none: nothing streamed before it"),
                plan = %outcome
                    .plan
                    .as_ref()
                    .map(|p| p.to_string().trim_end().replace('\n', "; "))
                    .unwrap_or_default(),
                "configuration reloaded"
            ),
        }
        let applied = matches!(
            outcome.result,
            ReloadResult::Applied | ReloadResult::Unchanged
        );
        self.status.send_modify(|status| {
            if applied && sha256.is_some() {
                status.sha256 = sha256;
                status.loaded_at = Some(now());
            }
            status.last_reload = Some(LastReload {
                at: now(),
                result: outcome.result,
                error: outcome.error.clone(),
                boundary_lsn: outcome.boundary_lsn.clone(),
            });
        });
    }

    pub(crate) async fn recv(&mut self) -> Option<ReloadRequest> {
        self.rx.recv().await
    }

    /// Turns each `()` from `signals` (SIGHUP) into a reload request.
    pub(crate) fn forward(&self, mut signals: mpsc::Receiver<()>) -> JoinHandle<()> {
        let tx = self.tx.clone();
        tokio::spawn(async move {
            while signals.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the configuration");
                if tx
                    .send(ReloadRequest {
                        dry_run: false,
                        reply: None,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    }
}

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
