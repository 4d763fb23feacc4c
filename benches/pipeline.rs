//! End-to-end throughput against PostgreSQL's own ceiling.
//!
//! `cargo bench --bench pipeline` (add `-- W1` to run one workload, `-- --quick`
//! for a tenth of the rows). For each workload it starts from a fresh
//! database, creates three slots, writes the backlog, then measures:
//! - the ceiling: `pg_recvlogical` (pgoutput, proto_version 1) draining one
//!   slot to /dev/null up to the backlog's end LSN;
//! - walhook (`walhook run`, one strategy, batch_size 500) delivering to
//!   `walhook receive --null` on 127.0.0.1 until the slot's
//!   `confirmed_flush_lsn` reaches that LSN: walhook acknowledges only what
//!   the receiver answered 2xx for, so this is "everything delivered";
//!   once with a filter passing every row, once with one passing 10%.
//!
//! It prints events/s, walhook / ceiling, walhook's CPU seconds and peak RSS.
//! A throwaway cluster lives in a temp dir and is removed at the end.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{cpu_seconds, free_port};
use walhook::cluster::{Cluster, ClusterOptions};

const WALHOOK: &str = env!("CARGO_BIN_EXE_walhook");

struct Workload {
    name: &'static str,
    what: &'static str,
    /// Table DDL (the table is called `t`).
    ddl: &'static str,
    /// SQL that writes the backlog; `{n}` is the row count.
    write: &'static str,
    rows: u64,
    /// The 10% filter for this workload's op.
    key: &'static str,
}

const TABLE: &str = "CREATE TABLE t (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, status text NOT NULL, note text)";

fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            name: "W1",
            what: "single-row insert transactions",
            ddl: TABLE,
            write: "CREATE PROCEDURE w() LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..{n} LOOP \
                    INSERT INTO t VALUES (i, i % 1000, 'open', 'row ' || i); COMMIT; END LOOP; END $$; \
                    SET synchronous_commit = off; CALL w();",
            rows: 200_000,
            key: "on_insert",
        },
        Workload {
            name: "W2",
            what: "rows in 100-row transactions",
            ddl: TABLE,
            write: "CREATE PROCEDURE w() LANGUAGE plpgsql AS $$ BEGIN FOR b IN 0..({n}/100 - 1) LOOP \
                    INSERT INTO t SELECT i, i % 1000, 'open', 'row ' || i FROM generate_series(b*100+1, b*100+100) i; \
                    COMMIT; END LOOP; END $$; SET synchronous_commit = off; CALL w();",
            rows: 1_000_000,
            key: "on_insert",
        },
        Workload {
            name: "W3",
            what: "rows in one transaction",
            ddl: TABLE,
            write: "INSERT INTO t SELECT i, i % 1000, 'open', 'row ' || i FROM generate_series(1, {n}) i;",
            rows: 1_000_000,
            key: "on_insert",
        },
        Workload {
            name: "W4",
            what: "row UPDATE, REPLICA IDENTITY FULL",
            ddl: TABLE,
            write: "ALTER TABLE t REPLICA IDENTITY FULL; \
                    UPDATE t SET status = 'paid', amount = amount + 1;",
            rows: 500_000,
            key: "on_update",
        },
        Workload {
            name: "W5",
            what: "rows with 20 KB TOAST values",
            ddl: TABLE,
            write: "ALTER TABLE t ALTER COLUMN note SET STORAGE EXTERNAL; \
                    INSERT INTO t SELECT i, i % 1000, 'open', \
                    (SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 640) g) \
                    FROM generate_series(1, {n}) i;",
            rows: 2_000,
            key: "on_insert",
        },
    ]
}

struct Measure {
    /// Records the receiver answered 2xx for.
    delivered: u64,
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only: Vec<&String> = args.iter().filter(|a| a.starts_with('W')).collect();
    let cluster = Cluster::start(
        ClusterOptions::default()
            .setting("max_replication_slots", "20")
            .setting("max_wal_senders", "20")
            .setting("max_wal_size", "4GB")
            .setting("checkpoint_timeout", "30min"),
    )
    .expect("start a throwaway PostgreSQL");
    let recvlogical = cluster.bin_dir().join("pg_recvlogical");
    let work = tempfile::tempdir().expect("temp dir");
    println!(
        "walhook {} pipeline benchmark ({} cores){}",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick {
            ", --quick: a tenth of the rows"
        } else {
            ""
        }
    );
    println!(
        "{:<4} {:>9} {:<36} {:>12} {:>14} {:>6} {:>14} {:>6} {:>8} {:>9}",
        "",
        "rows",
        "workload",
        "ceiling ev/s",
        "walhook ev/s",
        "ratio",
        "10% filter ev/s",
        "ratio",
        "cpu s",
        "peak RSS"
    );
    let mut failures = Vec::new();
    for (n, w) in workloads().into_iter().enumerate() {
        if !only.is_empty() && !only.iter().any(|o| o.as_str() == w.name) {
            continue;
        }
        let rows = if quick { w.rows / 10 } else { w.rows };
        let db = format!("bench_{}", n + 1);
        cluster.create_database(&db).expect("create database");
        psql(&cluster, &db, w.ddl);
        if w.key == "on_update" {
            // The rows to update exist before the slots do.
            psql(
                &cluster,
                &db,
                &format!("INSERT INTO t SELECT i, i % 1000, 'open', 'row ' || i FROM generate_series(1, {rows}) i"),
            );
        }
        psql(&cluster, &db, "CREATE PUBLICATION bench FOR TABLE t");
        // Slots are cluster-wide: one set per workload.
        let tag = w.name.to_lowercase();
        let (ceiling_slot, all_slot, tenth_slot) = (
            format!("ceiling_{tag}"),
            format!("all_rows_{tag}"),
            format!("tenth_{tag}"),
        );
        for slot in [&ceiling_slot, &all_slot, &tenth_slot] {
            psql(
                &cluster,
                &db,
                &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
            );
        }
        psql(&cluster, &db, &w.write.replace("{n}", &rows.to_string()));
        let end_lsn = psql(&cluster, &db, "SELECT pg_current_wal_lsn()")
            .trim()
            .to_string();

        let start = Instant::now();
        let status = Command::new(&recvlogical)
            .args([
                "-d",
                &cluster.url(&db),
                "--slot",
                &ceiling_slot,
                "--start",
                "-E",
                &end_lsn,
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=bench",
                "-f",
                "/dev/null",
            ])
            .args(["--no-loop", "-s", "1", "-F", "0"])
            .status()
            .expect("run pg_recvlogical");
        let ceiling = start.elapsed().as_secs_f64();
        assert!(status.success(), "pg_recvlogical failed");

        let all = run_walhook(
            &cluster,
            &db,
            work.path(),
            &all_slot,
            w.key,
            "true",
            &end_lsn,
        );
        let tenth = run_walhook(
            &cluster,
            &db,
            work.path(),
            &tenth_slot,
            w.key,
            "row.id % 10 == 0",
            &end_lsn,
        );
        let ceiling_rate = rows as f64 / ceiling;
        let rate = rows as f64 / all.seconds;
        let tenth_rate = rows as f64 / tenth.seconds;
        println!(
            "{:<4} {:>9} {:<36} {:>12.0} {:>14.0} {:>6.2} {:>14.0} {:>6.2} {:>8.1} {:>6} MiB",
            w.name,
            rows,
            w.what,
            ceiling_rate,
            rate,
            rate / ceiling_rate,
            tenth_rate,
            tenth_rate / ceiling_rate,
            all.cpu_seconds,
            all.peak_rss_kib / 1024
        );
        println!(
            "     delivered: {} of {rows} records (filter true), {} (10% filter)",
            all.delivered, tenth.delivered
        );
        if all.delivered < rows {
            failures.push(format!(
                "{}: only {} of {rows} records delivered",
                w.name, all.delivered
            ));
        }
        if matches!(w.name, "W1" | "W2") && rate / ceiling_rate < 0.8 {
            failures.push(format!(
                "{}: ratio {:.2} < 0.8",
                w.name,
                rate / ceiling_rate
            ));
        }
        if w.name == "W3" && all.peak_rss_kib > 64 * 1024 {
            failures.push(format!(
                "W3: peak RSS {} MiB > 64 MiB",
                all.peak_rss_kib / 1024
            ));
        }
        let _ = fs::remove_dir_all(work.path().join(&all_slot));
        let _ = fs::remove_dir_all(work.path().join(&tenth_slot));
    }
    // A walsender that timed out (e.g. during W3's long transaction) says so in the server log.
    let log = fs::read_to_string(cluster.log_file()).unwrap_or_default();
    let timeouts = log
        .lines()
        .filter(|l| l.contains("replication timeout"))
        .count();
    println!("walsender timeouts in the server log: {timeouts}");
    if timeouts > 0 {
        failures.push(format!("{timeouts} walsender timeouts"));
    }
    if failures.is_empty() {
        println!(
            "targets: met (W1/W2 ratio >= 0.8, W3 peak RSS <= 64 MiB, no walsender timeout) for the workloads run"
        );
    } else {
        println!("targets missed: {}", failures.join("; "));
    }
    cluster.destroy();
}

fn psql(cluster: &Cluster, db: &str, sql: &str) -> String {
    cluster
        .psql(db, sql)
        .unwrap_or_else(|e| panic!("psql failed: {e}\n{sql}"))
}

/// Runs walhook on `slot` until its confirmed_flush_lsn reaches `end_lsn`.
fn run_walhook(
    cluster: &Cluster,
    db: &str,
    work: &Path,
    slot: &str,
    key: &str,
    filter: &str,
    end_lsn: &str,
) -> Measure {
    let dir: PathBuf = work.join(slot);
    fs::create_dir_all(&dir).expect("work dir");
    let port = free_port();
    let mut receiver = Command::new(WALHOOK)
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
    wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let config = format!(
        r#"[source]
url = "{url}"
slot = "{slot}"
publication = "bench"

[admin]
listen = "127.0.0.1:{admin}"

[endpoints.sink]
url = "http://127.0.0.1:{port}/hook"

[[strategies]]
name = "bench"
table = "public.t"
endpoint = "sink"
{key} = "{filter}"
batch_size = 500
linger = "5ms"
"#,
        url = cluster.url(db),
        admin = free_port(),
    );
    let path = dir.join("config.toml");
    fs::File::create(&path)
        .and_then(|mut f| f.write_all(config.as_bytes()))
        .expect("write config");
    let start = Instant::now();
    let mut walhook = Command::new(WALHOOK)
        .args(["run", "-c"])
        .arg(&path)
        .env("WALHOOK_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start walhook run");
    let sql = format!(
        "SELECT confirmed_flush_lsn >= '{end_lsn}'::pg_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
    );
    let mut peak = 0;
    wait_for(Duration::from_secs(600), || {
        peak = peak.max(peak_rss_kib(walhook.id()));
        if let Ok(Some(status)) = walhook.try_wait() {
            panic!("walhook exited early: {status}");
        }
        cluster
            .psql(db, &sql)
            .map(|out| out.trim() == "t")
            .unwrap_or(false)
    });
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds(walhook.id());
    peak = peak.max(peak_rss_kib(walhook.id()));
    stop(&mut walhook);
    stop(&mut receiver);
    // The receiver prints "total: B batches, R records, …" when it stops.
    let mut out = String::new();
    if let Some(mut stdout) = receiver.stdout.take() {
        use std::io::Read;
        let _ = stdout.read_to_string(&mut out);
    }
    let delivered = out
        .lines()
        .find_map(|l| l.strip_prefix("total: "))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if delivered == 0 {
        eprintln!("receiver output: {out:?}");
    }
    Measure {
        seconds,
        cpu_seconds,
        peak_rss_kib: peak,
        delivered,
    }
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: &mut Child) {
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
fn peak_rss_kib(pid: u32) -> u64 {
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
