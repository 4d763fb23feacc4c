//! The shared integration-test harness: one throwaway PostgreSQL per test
//! binary, fresh databases, condition waits and the walhook binary's path.
//!
//! The cluster lives in a static, so `Drop` never runs for it; an `atexit`
//! handler stops it when the test process exits normally (also after failed
//! tests), and a watchdog process stops it if the test process is killed.
#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use walhook::cluster::{Cluster, ClusterOptions};

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

extern "C" fn destroy_cluster() {
    if let Some(cluster) = CLUSTER.get() {
        cluster.destroy();
    }
}

/// The test binary's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start(ClusterOptions::default())
            .unwrap_or_else(|err| panic!("cannot start the throwaway PostgreSQL: {err}"));
        cluster
            .spawn_watchdog(std::process::id())
            .unwrap_or_else(|err| panic!("{err}"));
        // SAFETY: registering a plain extern "C" fn without arguments.
        unsafe {
            libc::atexit(destroy_cluster);
        }
        cluster
    })
}

/// Creates a new, uniquely named database on the shared cluster and returns
/// its URL. `prefix` makes it recognisable in logs.
pub fn fresh_db(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let name = format!("{prefix}_{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    let cluster = cluster();
    cluster
        .create_database(&name)
        .unwrap_or_else(|err| panic!("creating database {name}: {err}"));
    cluster.url(&name)
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` if that
/// takes longer than `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The walhook binary built for these tests.
pub fn walhook_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_walhook"))
}
pub mod receiver;
pub mod schema;
