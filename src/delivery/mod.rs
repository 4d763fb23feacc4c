//! Delivery: one HTTP client per endpoint, auth, Standard Webhooks signing,
//! retries with backoff, dead letters. One batch in flight per strategy.
//!
//! - [`sender`]: the endpoint's client and one attempt (POST, 401 refresh).
//! - [`retry`]: backoff with full jitter, `Retry-After`, exhaustion policy.
//! - [`worker`]: the per-strategy loop (batcher → sender task → checkpoint).
//! - [`replay`]: one attempt to deliver a dead letter again (admin API).
//! - dead letters and batch boundaries are stored through [`crate::state`].
//! - [`prepare`]: the seam to endpoint security (auth, signing).

pub mod auth;
pub mod oauth2;
pub mod prepare;
pub mod replay;
pub mod retry;
pub mod security;
pub mod sender;
pub mod signing;
pub mod tls;
pub mod token;
pub mod worker;

pub use sender::{AttemptResult, Endpoint};
pub use worker::{
    DeliveryState, PauseHandle, StatusHandle, StrategyStatus, StrategyWorker, WorkerOptions,
};

/// Errors building or running delivery. Messages name the endpoint or
/// strategy and never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("endpoints.{endpoint}.url: {reason}")]
    InvalidUrl { endpoint: String, reason: String },
    #[error("endpoints.{endpoint}: cannot build the HTTP client: {reason}")]
    Client { endpoint: String, reason: String },
    #[error("strategy {strategy}: on_exhausted = \"dead_letter\" needs the state store (walhook.dead_letters)")]
    NeedsStateStore { strategy: String },
    #[error("strategy {strategy}: the sender task failed")]
    SenderFailed { strategy: String },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

impl DeliveryError {
    /// Only state-store database errors may pass; the rest are configuration.
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::State(e) if e.is_transient())
    }
}

#[cfg(test)]
mod security_tests;
