//! Setup shared by the benchmarks: the throwaway cluster, psql, running
//! `walhook run` until its slot confirms an LSN, and /proc readings.
//!
//! Each bench binary includes this module and uses part of it.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walhook::cluster::{Cluster, ClusterOptions};

/// The walhook binary under test: `$WALHOOK_BENCH_BIN` (e.g. a copy built
/// from an earlier commit, for before/after figures with the same harness),
/// else the one cargo built with this bench.
pub(crate) fn walhook_bin() -> String {
    std::env::var("WALHOOK_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_walhook").into())
}

/// The memory budget walhook runs with in the benchmarks
/// (`source.max_buffer_bytes`, written into every config): the default.
pub(crate) const BUDGET_MIB: u64 = 64;

/// A throwaway cluster with room for a set of slots per workload, no
/// checkpoint in the middle of a measurement and no autovacuum (which
/// otherwise vacuums and analyses the freshly written backlog's table,
/// hundreds of MB for W5 and W6, while the drains are timed).
pub(crate) fn start_cluster() -> Cluster {
    Cluster::start(
        ClusterOptions::default()
            .setting("max_replication_slots", "20")
            .setting("max_wal_senders", "20")
            .setting("max_wal_size", "4GB")
            .setting("checkpoint_timeout", "30min")
            .setting("autovacuum", "off"),
    )
    .expect("start a throwaway PostgreSQL")
}

pub(crate) fn psql(cluster: &Cluster, db: &str, sql: &str) -> String {
    cluster
        .psql(db, sql)
        .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
}

/// A free port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` every 20 ms until it holds; panics after `timeout`.
pub(crate) fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) {
    poll(Duration::from_millis(20), timeout, what, f);
}

/// Polls `f` every `every` until it holds; panics after `timeout`.
pub(crate) fn poll(every: Duration, timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// How often a drain's end is looked for: the timing's resolution. One
/// query on an open connection costs the measured processes little.
pub(crate) const DRAIN_POLL: Duration = Duration::from_millis(5);

/// SIGTERM, then SIGKILL if the child is still there after 30 s.
pub(crate) fn stop(child: &mut Child) {
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// VmHWM of a live process, in KiB.
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a live process, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(") ")?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0)
}

/// The 1-minute load average, from /proc/loadavg.
pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let v: Vec<&str> = s.split_whitespace().take(3).collect();
            (v.len() == 3).then(|| v.join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// One SQL connection kept open for polling: a psql process per poll would
/// take CPU from the processes being measured on a 2-core machine.
pub(crate) struct Sql {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Sql {
    pub(crate) fn connect(cluster: &Cluster, db: &str) -> Sql {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime
            .block_on(walhook::pg::connect(&cluster.url(db), "walhook-bench"))
            .expect("connect to the throwaway PostgreSQL");
        Sql { runtime, client }
    }

    /// Whether `slot` is in use (streaming), and whether it has confirmed
    /// everything up to `lsn`.
    pub(crate) fn slot_state(&self, slot: &str, lsn: &str) -> (bool, bool) {
        self.runtime
            .block_on(self.client.query_opt(
                "SELECT active, confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot, &lsn],
            ))
            .ok()
            .flatten()
            .map(|row| {
                (
                    row.get::<_, bool>(0),
                    row.get::<_, Option<bool>>(1).unwrap_or(false),
                )
            })
            .unwrap_or((false, false))
    }

    /// Whether `slot` has confirmed everything up to `lsn`.
    pub(crate) fn confirmed(&self, slot: &str, lsn: &str) -> bool {
        self.runtime
            .block_on(self.client.query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot, &lsn],
            ))
            .ok()
            .flatten()
            .and_then(|row| row.get::<_, Option<bool>>(0))
            .unwrap_or(false)
    }
}

/// One `walhook run` that drained a slot.
pub(crate) struct Run {
    pub(crate) seconds: f64,
    /// When the slot confirmed the backlog's end.
    pub(crate) done: Instant,
    pub(crate) cpu_seconds: f64,
    pub(crate) peak_rss_kib: u64,
}

/// Writes the configuration of `walhook run` on `slot`: one strategy named
/// after the slot (so no drain re-forms the batches another one stored) on
/// `public.t`, linger 5 ms, plus the `strategy` lines, delivering to `url`;
/// the admin API on a free port.
pub(crate) fn write_config(
    cluster: &Cluster,
    db: &str,
    work: &Path,
    slot: &str,
    url: &str,
    strategy: &str,
) -> PathBuf {
    let config = format!(
        "[source]\nurl = \"{db_url}\"\nslot = \"{slot}\"\npublication = \"bench\"\n\
         max_buffer_bytes = \"{BUDGET_MIB}MiB\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [endpoints.sink]\nurl = \"{url}\"\n\n\
         [[strategies]]\nname = \"{slot}\"\ntable = \"public.t\"\nendpoint = \"sink\"\n\
         linger = \"5ms\"\n{strategy}",
        db_url = cluster.url(db),
        admin = free_port(),
    );
    let path = work.join(format!("{slot}.toml"));
    fs::write(&path, config).expect("write config");
    path
}

/// Runs `walhook run` on `slot` (see [`write_config`]) delivering to `url`,
/// until the slot's `confirmed_flush_lsn` reaches `end_lsn`: walhook
/// confirms only what the endpoint answered 2xx for, so that is
/// "everything delivered".
pub(crate) fn run_walhook(
    cluster: &Cluster,
    db: &str,
    work: &Path,
    slot: &str,
    url: &str,
    strategy: &str,
    end_lsn: &str,
) -> Run {
    let path = write_config(cluster, db, work, slot, url, strategy);
    let sql = Sql::connect(cluster, db);
    let start = Instant::now();
    let mut walhook = spawn_walhook_run(&path);
    let mut peak = 0;
    poll(
        DRAIN_POLL,
        Duration::from_secs(900),
        &format!("walhook to drain {slot}"),
        || {
            peak = peak.max(peak_rss_kib(walhook.id()));
            if let Ok(Some(status)) = walhook.try_wait() {
                panic!("walhook exited early: {status}");
            }
            sql.confirmed(slot, end_lsn)
        },
    );
    let done = Instant::now();
    let cpu_seconds = cpu_seconds(walhook.id());
    peak = peak.max(peak_rss_kib(walhook.id()));
    stop(&mut walhook);
    Run {
        seconds: (done - start).as_secs_f64(),
        done,
        cpu_seconds,
        peak_rss_kib: peak,
    }
}

/// Starts `walhook receive --null` on a free port (stdout piped: it prints
/// its totals there when it stops) and waits until it listens.
pub(crate) fn spawn_receiver() -> (Child, u16) {
    let port = free_port();
    let receiver = Command::new(walhook_bin())
        .args([
            "receive",
            "--null",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start walhook receive");
    wait_for(Duration::from_secs(20), "the receiver to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (receiver, port)
}

/// Starts `walhook run -c path` (warnings only, stdout discarded).
pub(crate) fn spawn_walhook_run(path: &Path) -> Child {
    spawn_walhook_run_with(&walhook_bin(), path)
}

/// [`spawn_walhook_run`] with the binary `bin`.
pub(crate) fn spawn_walhook_run_with(bin: &str, path: &Path) -> Child {
    Command::new(bin)
        .args(["run", "-c"])
        .arg(path)
        .env("WALHOOK_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start walhook run")
}
