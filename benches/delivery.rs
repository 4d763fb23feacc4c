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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::Router;

mod common;

use common::{load_average, psql, run_walhook, start_cluster, Run, BUDGET_MIB};

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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let cluster = start_cluster();
    let work = tempfile::tempdir().expect("temp dir");
    println!(
        "walhook {} delivery benchmark ({} cores, load average {} at the start){}",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
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
            &format!("on_insert = \"true\"\nbatch_size = 100\n{strategy}"),
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
        "on_insert = \"true\"\nordering = \"key\"\nmax_in_flight = 16\n",
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
    if run.peak_rss_kib > (BUDGET_MIB + 32) * 1024 {
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
