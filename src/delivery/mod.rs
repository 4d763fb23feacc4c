//! Delivery: one HTTP client per endpoint, auth, Standard Webhooks signing,
//! retries with backoff, dead letters, endpoint protection. Up to
//! `max_in_flight` batches in flight per strategy.
//!
//! - `sender`: the endpoint's client and one attempt (POST, 401 refresh).
//! - `protect`: the endpoint's circuit breaker and rate limit.
//! - `retry`: what an answer decides (status classes, 410, `on_client_error`),
//!   backoff with jitter, `Retry-After`, exhaustion policy.
//! - `worker`: the per-strategy loop (dispatcher → delivery tasks → finaliser
//!   → checkpoint; the park lane and the drain of parked rows).
//! - `attempt`: one batch's attempts (backoff, dead letters, parking) and a
//!   parked row's, retried from the store.
//! - `parking`: the byte bound of a strategy's parked work, and its hold switch.
//! - `settings`: what a reload changes under a running worker (endpoint,
//!   retry policy, templates), read at every attempt.
//! - `handles`: status, pause and retry-now handles for the admin API.
//! - `stats`: each endpoint's recent attempts (up, latency, last status) for the console.
//! - `replay`: one attempt to deliver a dead letter again (admin API).
//! - dead letters and batch boundaries are stored through [`crate::state`].
//! - `prepare`: the seam to endpoint security (auth, signing).
//! - `endpoints`: every endpoint (client, TLS, auth, signing) built from the configuration.

mod attempt;
mod auth;
mod endpoints;
mod handles;
mod oauth2;
mod parking;
mod prepare;
mod protect;
pub(crate) mod replay;
mod retry;
mod security;
mod sender;
mod settings;
pub(crate) mod signing;
mod stats;
mod tls;
mod token;
pub(crate) mod worker;

pub(crate) use attempt::StateOp;
pub use auth::AuthError;
pub(crate) use endpoints::build_endpoints;
pub use endpoints::EndpointError;
pub use handles::WorkerHandles;
pub use handles::{
    DeliveryState, PauseHandle, PauseReason, RetryHandle, StatusHandle, StrategyStatus,
};
pub(crate) use handles::{EntryKind, WorkerEntry};
pub use oauth2::OAuth2Error;
pub use parking::HoldHandle;
pub use prepare::{Attempt, BoxFuture, NoPrepare, Prepare, PrepareError};
pub use replay::{replay_dead_letter, ReplayError, ReplayOutcome, ReplayTarget};
pub use security::{EndpointSecurity, SecurityError};
pub use sender::{AttemptResult, Endpoint};
pub(crate) use settings::SettingsHandle;
pub use signing::{Verifier, VerifyError};
pub use stats::{EndpointSnapshot, EndpointStats};
pub use tls::{configure as configure_tls, explain as explain_request_error, TlsError};
pub use worker::{Boundaries, StrategyWorker, WorkerOptions};

/// Errors building or running delivery. Messages name the endpoint or
/// strategy and never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("endpoints.{endpoint}.url: {reason}")]
    InvalidUrl { endpoint: String, reason: String },
    #[error("endpoints.{endpoint}: cannot build the HTTP client: {reason}")]
    Client { endpoint: String, reason: String },
    #[error("strategy {strategy}: dead letters (on_exhausted or on_client_error = \"dead_letter\") need the state store (walhook.dead_letters)")]
    NeedsStateStore { strategy: String },
    #[error("strategy {strategy}: the sender task failed")]
    SenderFailed { strategy: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

#[cfg(test)]
mod security_tests;
