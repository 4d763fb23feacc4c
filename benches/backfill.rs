//! A backfill of a 1,000,000-row table: walhook's run (merged into a live
//! stream, delivered to `walhook receive --null`) beside `psql -c "\copy
//! (SELECT * FROM t) TO /dev/null"` on the same table, and a concurrent
//! writer's commit latency with and without the backfill.
//!
//! `cargo bench --bench backfill` (`-- --rows N`, default 1,000,000;
//! `-- --rounds N`, default 3, the median is reported; `WALHOOK_BENCH_BIN`
//! as for the other benches). A throwaway cluster, `t (id bigint primary
//! key, status text, amount numeric, note text)` filled and analysed, the
//! slot and state schema set up. Per round: psql's `\copy` to /dev/null,
//! timed; then `walhook run` streaming, an async run of the whole table
//! through the admin API, timed from the request until `GET /runs/{id}`
//! says `succeeded` (every record delivered with a 2xx), with walhook's CPU
//! seconds (utime + stime) and peak RSS; meanwhile a writer commits one
//! single-row update after another on another connection, whose commit
//! latencies are compared with the same writer's on a quiet table.
//! Target: at least half psql's rows per second.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{
    cpu_seconds, load_average, peak_rss_kib, psql, spawn_receiver, spawn_walhook_run,
    start_cluster, stop, wait_for, write_config, Sql,
};
use walhook::cluster::Cluster;

const SLOT: &str = "backfill";
const TOKEN: &str = "bench-token";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let rows = arg("--rows").unwrap_or(1_000_000);
    let rounds = arg("--rounds").unwrap_or(3).max(1);
    let cluster = start_cluster();
    let work = tempfile::tempdir().expect("temp dir");
    let db = "backfill";
    cluster.create_database(db).expect("create database");
    psql(
        &cluster,
        db,
        &format!(
            "CREATE TABLE t (id bigint PRIMARY KEY, status text NOT NULL, amount numeric, note text); \
             INSERT INTO t SELECT i, CASE WHEN i % 10 = 0 THEN 'open' ELSE 'closed' END, \
                    (i % 10000) / 100.0, md5(i::text) FROM generate_series(1, {rows}) i; \
             VACUUM ANALYZE t; \
             CREATE PUBLICATION bench FOR TABLE t; \
             SELECT 1 FROM pg_create_logical_replication_slot('{SLOT}', 'pgoutput'); \
             CHECKPOINT;"
        ),
    );
    let table_bytes = psql(&cluster, db, "SELECT pg_table_size('t')");
    let (mut receiver, port) = spawn_receiver();
    let path = write_config(
        &cluster,
        db,
        work.path(),
        SLOT,
        &format!("http://127.0.0.1:{port}/hook"),
        "on_insert = \"true\"\non_update = \"true\"\non_delete = \"true\"\nbatch_size = 500\n\
         on_demand = { async = true }\n",
    );
    // The admin token, for the run API.
    let text = std::fs::read_to_string(&path).expect("config");
    let admin = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen")
        .to_string();
    let text = text.replacen(
        &format!("listen = \"{admin}\""),
        &format!("listen = \"{admin}\"\ntoken = \"{TOKEN}\""),
        1,
    );
    std::fs::write(&path, text).expect("config");
    println!(
        "walhook backfill benchmark: {rows} rows ({} bytes), {} cores, load average {} at the start, {rounds} rounds",
        table_bytes.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
    );
    let quiet = writer_latencies(&cluster, db, Duration::from_secs(3));
    let mut copy = Vec::new();
    let mut runs = Vec::new();
    for _ in 0..rounds {
        copy.push(time_copy(&cluster, db));
        runs.push(time_backfill(&cluster, db, &path, &admin));
    }
    stop(&mut receiver);
    copy.sort_by(f64::total_cmp);
    runs.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
    let copy_s = copy[copy.len() / 2];
    let run = &runs[runs.len() / 2];
    let copy_rate = rows as f64 / copy_s;
    let run_rate = rows as f64 / run.seconds;
    println!("| | s | rows/s | CPU s | peak RSS |");
    println!("|---|---:|---:|---:|---:|");
    println!("| psql \\copy to /dev/null | {copy_s:.2} | {copy_rate:.0} | | |");
    println!(
        "| walhook backfill → receive --null | {:.2} | {run_rate:.0} | {:.2} | {} MiB |",
        run.seconds,
        run.cpu_seconds,
        run.peak_rss_kib / 1024
    );
    println!(
        "ratio walhook / psql: {:.2} (target >= 0.5); every round: {:?} s walhook, {:?} s psql",
        run_rate / copy_rate,
        runs.iter()
            .map(|r| (r.seconds * 100.0).round() / 100.0)
            .collect::<Vec<_>>(),
        copy.iter()
            .map(|s| (s * 100.0).round() / 100.0)
            .collect::<Vec<_>>()
    );
    println!(
        "writer commit latency, quiet: {}; during the backfill: {}",
        quiet.describe(),
        run.writer.describe()
    );
    println!("load average {} at the end", load_average());
}

/// psql's `\copy (SELECT * FROM t) TO /dev/null`, in seconds.
fn time_copy(cluster: &Cluster, db: &str) -> f64 {
    let start = Instant::now();
    psql(cluster, db, "\\copy (SELECT * FROM t) TO '/dev/null'");
    start.elapsed().as_secs_f64()
}

struct Backfill {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
    writer: Latencies,
}

fn time_backfill(cluster: &Cluster, db: &str, path: &std::path::Path, admin: &str) -> Backfill {
    let sql = Sql::connect(cluster, db);
    let mut walhook = spawn_walhook_run(path);
    wait_for(Duration::from_secs(60), "walhook to stream", || {
        sql.slot_state(SLOT, "0/0").0
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: String| {
        runtime.block_on(async {
            let response = http
                .request(method, format!("http://{admin}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("admin API");
            let body = response.text().await.unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()
        })
    };
    let cpu_before = cpu_seconds(walhook.id());
    let stop_writer = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (cluster.url(db), stop_writer.clone());
        std::thread::spawn(move || writer_until(&url, &stop))
    };
    let start = Instant::now();
    let started = call(
        reqwest::Method::POST,
        format!("/strategies/{SLOT}/runs?mode=async"),
    );
    let id = started["id"].as_i64().expect("a run id");
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(walhook.id()));
        let run = call(reqwest::Method::GET, format!("/runs/{id}"));
        match run["state"].as_str() {
            Some("succeeded") => break,
            Some("running") | None => {}
            Some(other) => panic!("the run ended {other}: {run}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds(walhook.id()) - cpu_before;
    stop_writer.store(true, Ordering::SeqCst);
    let writer = writer.join().expect("writer");
    stop(&mut walhook);
    Backfill {
        seconds,
        cpu_seconds,
        peak_rss_kib: peak,
        writer,
    }
}

/// Commit latencies, in milliseconds.
struct Latencies(Vec<f64>);

impl Latencies {
    fn describe(&self) -> String {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            v.get(((v.len() as f64 * q) as usize).min(v.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} commits)",
            at(0.5),
            at(0.99),
            v.last().copied().unwrap_or(f64::NAN),
            v.len()
        )
    }
}

/// The writer on a quiet table for `length`.
fn writer_latencies(cluster: &Cluster, db: &str, length: Duration) -> Latencies {
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (url, stop) = (cluster.url(db), stop.clone());
        std::thread::spawn(move || writer_until(&url, &stop))
    };
    std::thread::sleep(length);
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer")
}

/// Single-row updates, one transaction each, until `stop`.
fn writer_until(url: &str, stop: &AtomicBool) -> Latencies {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = walhook::pg::connect(url, "bench-writer")
            .await
            .expect("writer connects");
        let mut latencies = Vec::new();
        let mut id: i64 = 1;
        while !stop.load(Ordering::SeqCst) {
            let start = Instant::now();
            client
                .execute("UPDATE t SET amount = amount + 1 WHERE id = $1", &[&id])
                .await
                .expect("update");
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            id = id % 1_000_000 + 7919;
            // About 200 commits a second: a steady application, not a flood.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Latencies(latencies)
    })
}
