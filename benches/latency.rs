//! Latency and idle cost.
//!
//! `cargo bench --bench latency` (`-- --seconds N` to change the 30 s load).
//! Starts a throwaway cluster and `walhook run` (one strategy, linger 5 ms)
//! delivering to a receiver in this process, then:
//! - idle: walhook's CPU use over 10 s without writes (target < 1% of a core);
//! - load: single-row inserts at a fixed 5000/s for 30 s (`pgbench -R`,
//!   synchronous_commit on); for every record, the time from its
//!   transaction's `commit_time` to its arrival at the receiver: p50, p99,
//!   max (targets p50 <= 5 ms, p99 <= 25 ms).

use std::fs;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
mod common;

use common::{cpu_seconds, free_port};
use walhook::cluster::{Cluster, ClusterOptions};

const WALHOOK: &str = env!("CARGO_BIN_EXE_walhook");
const RATE: u32 = 5000;

#[derive(Default)]
struct Arrivals {
    /// Microseconds from commit to arrival, one per record.
    latencies: Vec<i64>,
}

async fn receive(State(arrivals): State<Arc<Mutex<Arrivals>>>, body: Bytes) -> StatusCode {
    let now = chrono::Utc::now();
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut arrivals = arrivals.lock().unwrap();
    for record in payload["records"].as_array().into_iter().flatten() {
        if let Some(commit) = record["commit_time"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        {
            let micros = (now - commit.with_timezone(&chrono::Utc))
                .num_microseconds()
                .unwrap_or(i64::MAX);
            arrivals.latencies.push(micros);
        }
    }
    StatusCode::NO_CONTENT
}

fn wait_for(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u32 = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let cluster = Cluster::start(ClusterOptions::default()).expect("start PostgreSQL");
    cluster.create_database("latency").expect("create database");
    cluster
        .psql(
            "latency",
            "CREATE TABLE t (id bigserial PRIMARY KEY, payload text NOT NULL)",
        )
        .expect("create table");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let arrivals = Arc::new(Mutex::new(Arrivals::default()));
    let receiver_port = free_port();
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(arrivals.clone());
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", receiver_port))
            .await
            .expect("bind receiver");
        let _ = axum::serve(listener, app).await;
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        r#"[source]
url = "{url}"
slot = "latency"
publication = "latency"

[admin]
listen = "127.0.0.1:{admin}"

[endpoints.sink]
url = "http://127.0.0.1:{receiver_port}/hook"

[[strategies]]
name = "latency"
table = "public.t"
endpoint = "sink"
on_insert = "true"
batch_size = 500
linger = "5ms"
"#,
        url = cluster.url("latency"),
        admin = free_port(),
    );
    let path = dir.path().join("config.toml");
    fs::write(&path, config).expect("write config");
    let mut walhook = Command::new(WALHOOK)
        .args(["run", "-c"])
        .arg(&path)
        .env("WALHOOK_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start walhook");
    wait_for(Duration::from_secs(60), "walhook to stream", || {
        cluster
            .psql(
                "latency",
                "SELECT count(*) FROM pg_stat_replication WHERE state IN ('catchup','streaming')",
            )
            .map(|o| o.trim() != "0")
            .unwrap_or(false)
    });

    // Idle: no writes at all for 10 s.
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_seconds(walhook.id());
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let idle_share =
        (cpu_seconds(walhook.id()) - before) / idle_start.elapsed().as_secs_f64() * 100.0;

    // Load: fixed-rate single-row inserts.
    let script = dir.path().join("insert.sql");
    fs::write(
        &script,
        "INSERT INTO t (payload) VALUES ('latency probe');\n",
    )
    .expect("script");
    let pgbench = cluster.bin_dir().join("pgbench");
    let status = Command::new(&pgbench)
        .args(["-n", "-c", "4", "-j", "2", "-R", &RATE.to_string()])
        .args(["-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
        ])
        .arg("latency")
        .stdout(Stdio::null())
        .status()
        .expect("run pgbench");
    assert!(status.success(), "pgbench failed");
    let rows: usize = cluster
        .psql("latency", "SELECT count(*) FROM t")
        .expect("count")
        .trim()
        .parse()
        .expect("a number");
    wait_for(Duration::from_secs(120), "every row to arrive", || {
        arrivals.lock().unwrap().latencies.len() >= rows
    });
    let cpu = cpu_seconds(walhook.id());
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(walhook.id() as i32, libc::SIGTERM);
    }
    let _ = walhook.wait();

    let mut latencies = arrivals.lock().unwrap().latencies.clone();
    latencies.sort_unstable();
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    );
    println!(
        "walhook {} latency benchmark ({} cores)",
        env!("CARGO_PKG_VERSION"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "idle: {idle_share:.2}% of one core over 10 s (target < 1%): {}",
        met(idle_share < 1.0)
    );
    println!(
        "load: {rows} single-row inserts at {RATE}/s for {seconds} s, linger 5 ms; walhook used {cpu:.1} CPU s in all"
    );
    println!("commit → receiver: p50 {p50:.2} ms (target <= 5: {}), p99 {p99:.2} ms (target <= 25: {}), max {max:.2} ms",
        met(p50 <= 5.0), met(p99 <= 25.0));
    cluster.destroy();
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}
