//! Delivery to endpoints that take their time (issue 13), side by side.
//!
//! `cargo bench --bench delivery` (add `-- --quick` for a fifth of the rows).
//! A throwaway cluster, a backlog written first, then `walhook run` drains it
//! to a receiver in this process that answers after a fixed latency and
//! checks that records of each key arrive in commit order. Timed until the
//! slot's `confirmed_flush_lsn` reaches the backlog's end (everything
//! answered 2xx): `ev/s` from the start of `walhook run`, `steady` from the
//! first request's arrival (without start-up); the target is on `steady`.
//!
//! - D1: 50,000 small rows in 100-row transactions, a 50 ms endpoint,
//!   `batch_size = 100`: the defaults (`ordering = "commit"`, one batch in
//!   flight), then `ordering = "key"` with `max_in_flight = 16`.
//! - D2: 3,000 rows of 200 KB to a 300 ms endpoint, `ordering = "key"`,
//!   `max_in_flight = 16`, the default memory budget (64 MiB): peak RSS.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::Router;

mod common;

use common::{cpu_seconds, free_port};
use walhook::cluster::{Cluster, ClusterOptions};

const WALHOOK: &str = env!("CARGO_BIN_EXE_walhook");

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    records: AtomicU64,
    /// Per key: the last (commit LSN, index) seen.
    last: Mutex<HashMap<i64, (u64, u32)>>,
    out_of_order: AtomicU64,
    /// When the first request arrived.
    first: Mutex<Option<Instant>>,
}

struct Receiver {
    latency: Duration,
    seen: Seen,
}

async fn receive(State(rx): State<Arc<Receiver>>, body: Bytes) -> &'static str {
    rx.seen
        .first
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now);
    tokio::time::sleep(rx.latency).await;
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return "bad";
    };
    let records = doc["records"].as_array().cloned().unwrap_or_default();
    let mut last = rx.seen.last.lock().unwrap();
    for r in &records {
        let key = r["new"]["id"].as_i64().unwrap_or(-1);
        let pos = r["id"]
            .as_str()
            .and_then(|id| id.rsplit_once(':'))
            .and_then(|(lsn, i)| {
                let (hi, lo) = lsn.split_once('/')?;
                let lsn =
                    (u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?;
                Some((lsn, i.parse().ok()?))
            })
            .unwrap_or((0, 0));
        let previous = last.insert(key, pos);
        if previous.is_some_and(|p| p >= pos) {
            rx.seen.out_of_order.fetch_add(1, Ordering::Relaxed);
        }
    }
    rx.seen
        .records
        .fetch_add(records.len() as u64, Ordering::Relaxed);
    "ok"
}

/// A receiver on 127.0.0.1 answering after `latency`; returns its URL.
fn start_receiver(runtime: &tokio::runtime::Runtime, latency: Duration) -> (String, Arc<Receiver>) {
    let rx = Arc::new(Receiver {
        latency,
        seen: Seen::default(),
    });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind receiver");
    let addr = listener.local_addr().expect("address");
    let app = Router::new().fallback(receive).with_state(rx.clone());
    runtime.spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

struct Run {
    seconds: f64,
    /// When the backlog was drained.
    done: Instant,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cluster = Cluster::start(
        ClusterOptions::default()
            .setting("max_replication_slots", "20")
            .setting("max_wal_senders", "20")
            .setting("max_wal_size", "4GB"),
    )
    .expect("start a throwaway PostgreSQL");
    let work = tempfile::tempdir().expect("temp dir");
    println!(
        "walhook {} delivery benchmark ({} cores){}",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if quick {
            ", --quick: a fifth of the rows"
        } else {
            ""
        }
    );
    let mut failures = Vec::new();

    // D1: small rows, a 50 ms endpoint.
    let rows: u64 = if quick { 10_000 } else { 50_000 };
    let db = "d1";
    cluster.create_database(db).expect("create database");
    psql(&cluster, db, "CREATE TABLE t (id bigint PRIMARY KEY, amount numeric(12,2) NOT NULL, status text NOT NULL)");
    psql(&cluster, db, "CREATE PUBLICATION bench FOR TABLE t");
    for slot in ["d1_commit", "d1_key"] {
        psql(
            &cluster,
            db,
            &format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
        );
    }
    psql(
        &cluster,
        db,
        &format!(
            "CREATE PROCEDURE w() LANGUAGE plpgsql AS $$ BEGIN FOR b IN 0..({rows}/100 - 1) LOOP \
             INSERT INTO t SELECT i, i % 1000, 'open' FROM generate_series(b*100+1, b*100+100) i; \
             COMMIT; END LOOP; END $$; SET synchronous_commit = off; CALL w();"
        ),
    );
    let end = psql(&cluster, db, "SELECT pg_current_wal_lsn()")
        .trim()
        .to_string();
    println!(
        "{:<3} {:<58} {:>9} {:>10} {:>10} {:>8} {:>9} {:>12}",
        "", "workload", "records", "ev/s", "steady", "cpu s", "peak RSS", "out of order"
    );
    for (slot, what, strategy) in [
        (
            "d1_commit",
            "50 ms endpoint, ordering = commit, 1 in flight",
            "",
        ),
        (
            "d1_key",
            "50 ms endpoint, ordering = key, max_in_flight = 16",
            "ordering = \"key\"\nmax_in_flight = 16\n",
        ),
    ] {
        let (url, rx) = start_receiver(&runtime, Duration::from_millis(50));
        let run = run_walhook(
            &cluster,
            db,
            work.path(),
            slot,
            &url,
            &format!("batch_size = 100\n{strategy}"),
            &end,
        );
        let got = rx.seen.records.load(Ordering::Relaxed);
        let bad = rx.seen.out_of_order.load(Ordering::Relaxed);
        let rate = rows as f64 / run.seconds;
        let steady = steady_rate(&rx, &run, rows);
        println!(
            "D1  {what:<58} {got:>9} {rate:>10.0} {steady:>10.0} {:>8.1} {:>5} MiB {bad:>12}",
            run.cpu_seconds,
            run.peak_rss_kib / 1024
        );
        if got < rows || bad > 0 {
            failures.push(format!(
                "D1 {slot}: {got} of {rows} records, {bad} out of order"
            ));
        }
        if slot == "d1_key" && steady < 20_000.0 {
            failures.push(format!("D1 key: {steady:.0} events/s < 20,000"));
        }
    }

    // D2: 200 KB rows, a 300 ms endpoint.
    let rows: u64 = if quick { 600 } else { 3_000 };
    let db = "d2";
    cluster.create_database(db).expect("create database");
    psql(
        &cluster,
        db,
        "CREATE TABLE t (id bigint PRIMARY KEY, note text)",
    );
    psql(&cluster, db, "CREATE PUBLICATION bench FOR TABLE t");
    psql(
        &cluster,
        db,
        "SELECT pg_create_logical_replication_slot('d2_key', 'pgoutput')",
    );
    psql(
        &cluster,
        db,
        &format!(
            "INSERT INTO t SELECT i, repeat(md5(i::text), 6250) FROM generate_series(1, {rows}) i"
        ),
    );
    let end = psql(&cluster, db, "SELECT pg_current_wal_lsn()")
        .trim()
        .to_string();
    let (url, rx) = start_receiver(&runtime, Duration::from_millis(300));
    let run = run_walhook(
        &cluster,
        db,
        work.path(),
        "d2_key",
        &url,
        "ordering = \"key\"\nmax_in_flight = 16\n",
        &end,
    );
    let got = rx.seen.records.load(Ordering::Relaxed);
    let bad = rx.seen.out_of_order.load(Ordering::Relaxed);
    println!(
        "D2  {:<58} {got:>9} {:>10.0} {:>10.0} {:>8.1} {:>5} MiB {bad:>12}",
        "200 KB rows, 300 ms endpoint, key, 16 in flight, 64 MiB budget",
        rows as f64 / run.seconds,
        steady_rate(&rx, &run, rows),
        run.cpu_seconds,
        run.peak_rss_kib / 1024
    );
    if got < rows || bad > 0 {
        failures.push(format!("D2: {got} of {rows} records, {bad} out of order"));
    }
    if run.peak_rss_kib > (64 + 32) * 1024 {
        failures.push(format!(
            "D2: peak RSS {} MiB > budget + 32 MiB",
            run.peak_rss_kib / 1024
        ));
    }
    let log = fs::read_to_string(cluster.log_file()).unwrap_or_default();
    let timeouts = log
        .lines()
        .filter(|l| l.contains("replication timeout"))
        .count();
    println!("walsender timeouts in the server log: {timeouts}");
    if failures.is_empty() {
        println!("targets: met (D1 key >= 20,000 ev/s in per-key order; D2 peak RSS <= budget + 32 MiB; everything delivered)");
    } else {
        println!("targets missed: {}", failures.join("; "));
    }
    cluster.destroy();
}

/// Records per second from the first request's arrival to the end of the
/// drain: without walhook's start-up (connecting, checking the schema,
/// starting replication).
fn steady_rate(rx: &Receiver, run: &Run, rows: u64) -> f64 {
    let first = rx.seen.first.lock().unwrap().unwrap_or(run.done);
    rows as f64 / (run.done - first).as_secs_f64().max(1e-3)
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
    url: &str,
    strategy: &str,
    end_lsn: &str,
) -> Run {
    let config = format!(
        "[source]\nurl = \"{db_url}\"\nslot = \"{slot}\"\npublication = \"bench\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [endpoints.sink]\nurl = \"{url}\"\n\n\
         [[strategies]]\nname = \"bench\"\ntable = \"public.t\"\nendpoint = \"sink\"\n\
         on_insert = \"true\"\nlinger = \"5ms\"\n{strategy}",
        db_url = cluster.url(db),
        admin = free_port(),
    );
    let path = work.join(format!("{slot}.toml"));
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
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        peak = peak.max(peak_rss_kib(walhook.id()));
        if let Ok(Some(status)) = walhook.try_wait() {
            panic!("walhook exited early: {status}");
        }
        if cluster
            .psql(db, &sql)
            .map(|out| out.trim() == "t")
            .unwrap_or(false)
        {
            break;
        }
        assert!(Instant::now() < deadline, "walhook did not drain {slot}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let done = Instant::now();
    let seconds = (done - start).as_secs_f64();
    let cpu_seconds = cpu_seconds(walhook.id());
    peak = peak.max(peak_rss_kib(walhook.id()));
    stop(&mut walhook);
    Run {
        seconds,
        done,
        cpu_seconds,
        peak_rss_kib: peak,
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
