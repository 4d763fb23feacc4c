//! The seam between the HTTP sender and endpoint security: before each
//! attempt the sender hands the request to a [`Prepare`] that adds auth
//! headers, a body token and Standard Webhooks signatures (see `auth`,
//! `oauth2`, `signing`). Kept as a trait so the sender does not care which.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use reqwest::header::HeaderMap;

/// A boxed future, as `Prepare` must be object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One attempt's request, before it is sent.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The strategy's name (the token's `sub`).
    pub strategy: String,
    /// The batch id: the `webhook-id` header, stable across attempts.
    pub batch_id: String,
    /// Unix seconds of this attempt (`webhook-timestamp`), fresh each attempt.
    pub timestamp: i64,
    /// Headers so far (content-type, user-agent, configured headers,
    /// `webhook-id`, `webhook-timestamp`).
    pub headers: HeaderMap,
    /// The JSON body as serialised by the batcher. A preparer may replace it
    /// (the body `token`), before signing.
    pub body: Bytes,
}

/// Why an attempt could not be prepared (a failed attempt, retried like any
/// other). The message never holds a secret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PrepareError(pub(crate) String);

/// Adds credentials and signatures to an attempt.
pub trait Prepare: Send + Sync + 'static {
    /// Called before every attempt (may fetch an OAuth2 token).
    fn prepare<'a>(&'a self, attempt: &'a mut Attempt) -> BoxFuture<'a, Result<(), PrepareError>>;

    /// The endpoint answered 401 to an attempt prepared by this preparer:
    /// drop cached credentials. `true` asks the sender to retry once at once.
    fn unauthorized(&self) -> bool {
        false
    }
}

/// No auth, no signing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPrepare;

impl Prepare for NoPrepare {
    fn prepare<'a>(&'a self, _attempt: &'a mut Attempt) -> BoxFuture<'a, Result<(), PrepareError>> {
        Box::pin(async { Ok(()) })
    }
}
