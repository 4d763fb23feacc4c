//! Start-up time of `walhook run`: it counts in every drain's figure (W6
//! drains in about half a second), and in how soon a restarted walhook
//! delivers again.
//!
//! `cargo bench --bench startup` (`-- --runs N`, default 15;
//! `WALHOOK_BENCH_BIN` as for the other benches; `-- --before PATH` times
//! a second binary too, the two in turn, e.g. one built from an earlier
//! commit). A throwaway cluster, one table in a publication, the slot and
//! the state schema already there (a first run per binary, not counted,
//! creates them), `walhook receive --null` as the endpoint. Each run
//! inserts one row, spawns `walhook run` and times from the spawn until
//! - streaming: the slot is active (START_REPLICATION ran);
//! - delivered: the slot's `confirmed_flush_lsn` reaches the row's commit
//!   (walhook confirms only what the endpoint answered 2xx for; linger is
//!   5 ms);
//!
//! polling the slot every millisecond on one connection, then stops walhook
//! (SIGTERM) and waits until it has exited. Prints the median, minimum and
//! maximum of each.

use std::time::{Duration, Instant};

mod common;

use common::{
    load_average, psql, spawn_receiver, spawn_walhook_run_with, start_cluster, stop, walhook_bin,
    write_config, Sql,
};
use walhook::cluster::Cluster;

const SLOT: &str = "startup";

/// One binary's timings, in milliseconds.
struct Timings {
    bin: String,
    streaming: Vec<f64>,
    delivered: Vec<f64>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = arg("--runs").and_then(|n| n.parse().ok()).unwrap_or(15);
    let mut binaries = vec![Timings::new(walhook_bin())];
    if let Some(before) = arg("--before") {
        binaries.push(Timings::new(before));
    }
    let cluster = start_cluster();
    let work = tempfile::tempdir().expect("temp dir");
    let db = "startup";
    cluster.create_database(db).expect("create database");
    psql(
        &cluster,
        db,
        "CREATE TABLE t (id bigint PRIMARY KEY, status text NOT NULL); \
         CREATE PUBLICATION bench FOR TABLE t; \
         SELECT 1 FROM pg_create_logical_replication_slot('startup', 'pgoutput')",
    );
    let (mut receiver, port) = spawn_receiver();
    let config = write_config(
        &cluster,
        db,
        work.path(),
        SLOT,
        &format!("http://127.0.0.1:{port}/hook"),
        "on_insert = \"true\"\n",
    );
    let sql = Sql::connect(&cluster, db);
    println!(
        "walhook start-up benchmark ({} cores, load average {} at the start), {runs} runs per binary",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
    );
    let mut id = 0;
    for round in 0..=runs {
        for timings in &mut binaries {
            id += 1;
            let (streaming, delivered) = time_one(&cluster, &sql, &config, &timings.bin, id);
            // The first round creates the state schema: not counted.
            if round > 0 {
                timings.streaming.push(streaming);
                timings.delivered.push(delivered);
            }
        }
    }
    stop(&mut receiver);
    println!(
        "{:<10} {:>28} {:>28}",
        "", "spawn -> streaming (ms)", "spawn -> delivered (ms)"
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "median", "min", "max", "median", "min", "max"
    );
    for (n, timings) in binaries.iter_mut().enumerate() {
        let label = if n == 0 { "walhook" } else { "before" };
        let s = summary(&mut timings.streaming);
        let d = summary(&mut timings.delivered);
        println!(
            "{label:<10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            s.0, s.1, s.2, d.0, d.1, d.2
        );
    }
    for (n, timings) in binaries.iter().enumerate() {
        println!(
            "{}: {}",
            if n == 0 { "walhook" } else { "before" },
            timings.bin
        );
    }
    println!("load average {} at the end", load_average());
}

impl Timings {
    fn new(bin: String) -> Timings {
        Timings {
            bin,
            streaming: Vec::new(),
            delivered: Vec::new(),
        }
    }
}

/// Median, minimum and maximum.
fn summary(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let median = values.get(values.len() / 2).copied().unwrap_or(f64::NAN);
    (
        median,
        values.first().copied().unwrap_or(f64::NAN),
        values.last().copied().unwrap_or(f64::NAN),
    )
}

/// Inserts row `id`, runs `bin` until the slot confirms it, stops it; the
/// milliseconds from the spawn to streaming and to the confirmation.
fn time_one(
    cluster: &Cluster,
    sql: &Sql,
    config: &std::path::Path,
    bin: &str,
    id: u64,
) -> (f64, f64) {
    psql(
        cluster,
        "startup",
        &format!("INSERT INTO t VALUES ({id}, 'open')"),
    );
    let end_lsn = psql(cluster, "startup", "SELECT pg_current_wal_lsn()")
        .trim()
        .to_string();
    let start = Instant::now();
    let mut walhook = spawn_walhook_run_with(bin, config);
    let deadline = start + Duration::from_secs(60);
    let mut streaming = None;
    let delivered = loop {
        let (active, confirmed) = sql.slot_state(SLOT, &end_lsn);
        let elapsed = start.elapsed().as_secs_f64() * 1000.0;
        if active && streaming.is_none() {
            streaming = Some(elapsed);
        }
        if confirmed {
            break elapsed;
        }
        if let Ok(Some(status)) = walhook.try_wait() {
            panic!("walhook exited early: {status}");
        }
        assert!(Instant::now() < deadline, "timed out waiting for walhook");
        std::thread::sleep(Duration::from_millis(1));
    };
    stop(&mut walhook);
    // The next run starts once the slot is free again.
    while sql.slot_state(SLOT, &end_lsn).0 {
        assert!(Instant::now() < deadline, "the slot stays active");
        std::thread::sleep(Duration::from_millis(5));
    }
    (streaming.unwrap_or(delivered), delivered)
}
