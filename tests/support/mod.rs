//! The one harness of the integration tests.
//!
//! - [`cluster`]: the throwaway PostgreSQL clusters of this test binary (one
//!   shared by nearly every test) and [`Db`], a fresh database on one of
//!   them with async psql and what Postgres reports about slots.
//! - [`walhook`]: the built walhook binary as a child process, its stdout
//!   and stderr collected, stopped by signal; config text for it.
//! - [`receiver`]: a real HTTP(S) webhook receiver on 127.0.0.1.
//! - [`source`]: walhook's replication source running in a task.
//! - [`schema`]: the published payload JSON Schema.
//! - [`browser`]: a headless Chromium through chromedriver (console tests).
//! - [`wait_until`]: the one way a test waits for a condition.

pub(crate) mod browser;
pub(crate) mod cluster;
pub(crate) mod receiver;
pub(crate) mod schema;
pub(crate) mod source;
pub(crate) mod walhook;

use std::future::Future;
use std::time::Duration;

pub(crate) use cluster::{cluster, fresh_db, Db};
pub(crate) use receiver::{Received, Receiver, Reply};
pub(crate) use walhook::Walhook;

/// Generous bound for anything that should take a moment.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Polls `f` until it returns true; panics naming `what` if that takes
/// longer than `timeout`.
pub(crate) async fn wait_until<F, Fut>(timeout: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !poll_until(timeout, f).await {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// [`wait_until`] that returns false instead of panicking, for callers that
/// add their own context (a child's stderr) to the failure. Polls every
/// 20 ms at first, then less often (up to every 250 ms), so long waits on
/// costly checks (psql, parsing every request) do not load the machine.
pub(crate) async fn poll_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut every = Duration::from_millis(20);
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
        every = (every * 5 / 4).min(Duration::from_millis(250));
    }
}

/// A 127.0.0.1 port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
