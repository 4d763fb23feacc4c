//! `walhook demo`: the whole pipeline in one command, on nothing but the
//! PostgreSQL server binaries.
//!
//! It starts a throwaway cluster (the test harness's [`crate::cluster`]),
//! creates a sample `orders` table, starts a receiver that verifies Standard
//! Webhooks signatures (`walhook receive`'s `Receiver`, with the demo's
//! printer as its `Sink`), runs the real pipeline ([`crate::app::run`]) with
//! three strategies, writes a scripted mix of inserts, updates and deletes,
//! and prints each batch as it arrives. Then a summary read from `/metrics`
//! and the next steps. Ctrl-C (or the end of the script) stops everything
//! and removes the cluster.

use crate::error_class::{Classify, ErrorClass};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio_util::sync::CancellationToken;

use crate::app::{self, AppError};
use crate::cluster::{Cluster, ClusterError, ClusterOptions};
use crate::config::{Config, ConfigErrors};
use crate::delivery::signing::{SigningError, SigningKey, Verifier};
use crate::receive::{Checks, ReceiveError, ReceivedBatch, Receiver, Refused, Sink};

/// How long the demo waits for the batches its script should produce.
const WAIT: Duration = Duration::from_secs(30);

/// Why the demo stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// No PostgreSQL server binaries (exit 2: install them).
    #[error("walhook demo needs the PostgreSQL server binaries (initdb, pg_ctl, postgres) and found none.\n  Install them: apt-get install -y postgresql   (Debian/Ubuntu)\n              brew install postgresql       (macOS)\n  or point WALHOOK_PG_BIN_DIR at a PostgreSQL bin directory.")]
    NoPostgres,
    /// The throwaway cluster could not be started, used or removed.
    #[error("{what}: {source}")]
    Cluster {
        what: &'static str,
        #[source]
        source: ClusterError,
    },
    /// The receiver cannot listen.
    #[error("starting the receiver: {0}")]
    Receiver(#[source] ReceiveError),
    /// A socket for the admin API.
    #[error("{what}: {source}")]
    Listen {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the demo's signing secret: {0}")]
    Secret(#[source] SigningError),
    #[error("the demo's configuration: {0}")]
    Config(#[source] ConfigErrors),
    #[error("walhook stopped: {0}")]
    Pipeline(#[source] AppError),
    #[error("timed out after {WAIT:?} waiting for {0}")]
    Timeout(String),
    #[error("a demo task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Classify for DemoError {
    /// Only missing PostgreSQL binaries need the operator: the demo builds
    /// everything else itself, so its pipeline failing is the demo failing.
    fn class(&self) -> ErrorClass {
        match self {
            DemoError::NoPostgres => ErrorClass::NeedsOperator,
            DemoError::Cluster { .. }
            | DemoError::Receiver(_)
            | DemoError::Listen { .. }
            | DemoError::Secret(_)
            | DemoError::Config(_)
            | DemoError::Pipeline(_)
            | DemoError::Timeout(_)
            | DemoError::Task(_) => ErrorClass::Fatal,
        }
    }
}

fn cluster_failed(what: &'static str) -> impl FnOnce(ClusterError) -> DemoError {
    move |source| DemoError::Cluster { what, source }
}

fn listen_failed(what: &'static str) -> impl FnOnce(std::io::Error) -> DemoError {
    move |source| DemoError::Listen { what, source }
}

/// What the demo's receiver saw, per strategy.
#[derive(Default)]
struct Seen {
    batches: BTreeMap<String, u64>,
    records: BTreeMap<String, u64>,
    rejected: u64,
}

/// The demo's [`Sink`]: one line per batch, and what it saw.
struct Printer {
    seen: Mutex<Seen>,
    started: Instant,
}

/// Prints a line; the demo's output is its user interface.
fn say(line: &str) {
    println!("{line}");
}

/// Runs the demo until its script is done or `shutdown` fires.
pub async fn run(shutdown: CancellationToken) -> Result<(), DemoError> {
    if Cluster::find_bin_dir().is_none() {
        return Err(DemoError::NoPostgres);
    }
    let color = std::io::stdout().is_terminal();
    let bold = |s: &str| {
        if color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    say(&bold(
        "walhook demo: PostgreSQL changes → filtered, batched, signed webhooks",
    ));
    say("  starting a throwaway PostgreSQL (initdb in a temp dir, wal_level=logical) …");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
        .await?
        .map_err(cluster_failed("starting PostgreSQL"))?;
    // If the demo is killed, the watchdog still stops the cluster.
    let _ = cluster.spawn_watchdog(std::process::id());
    let result = run_with(&cluster, shutdown, &bold).await;
    say("  stopping PostgreSQL and removing its temp dir …");
    tokio::task::spawn_blocking(move || cluster.destroy()).await?;
    result
}

async fn run_with(
    cluster: &Cluster,
    shutdown: CancellationToken,
    bold: &dyn Fn(&str) -> String,
) -> Result<(), DemoError> {
    cluster
        .create_database("shop")
        .map_err(cluster_failed("creating database shop"))?;
    psql(
        cluster,
        "CREATE TABLE orders (\n\
           id serial PRIMARY KEY,\n\
           customer text NOT NULL,\n\
           amount numeric(10,2) NOT NULL,\n\
           status text NOT NULL DEFAULT 'open',\n\
           created_at timestamptz NOT NULL DEFAULT now());\n\
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )?;
    say(&format!(
        "  PostgreSQL {} on 127.0.0.1:{}, database shop, table orders",
        psql(cluster, "SHOW server_version")?.trim(),
        cluster.port()
    ));

    // The receiver: verifies every signature, prints every batch.
    let secret_bytes: [u8; 32] = rand::random();
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(secret_bytes)
    );
    let key = SigningKey::parse(&secret).map_err(DemoError::Secret)?;
    let checks = Checks {
        verifier: Some(Verifier::new(vec![key]).map_err(DemoError::Secret)?),
        credentials: Vec::new(),
    };
    let printer = Arc::new(Printer {
        seen: Mutex::new(Seen::default()),
        started: Instant::now(),
    });
    let receiver = Receiver::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        checks,
        printer.clone(),
    )
    .await
    .map_err(DemoError::Receiver)?;
    let receiver_addr = receiver.local_addr();
    let receiver_stop = CancellationToken::new();
    tokio::spawn(receiver.serve(receiver_stop.clone()));
    say(&format!(
        "  receiver on http://{receiver_addr}/hooks verifies Standard Webhooks signatures"
    ));

    let admin = free_addr().map_err(listen_failed("choosing the admin port"))?;
    let config_text = demo_config(&cluster.url("shop"), receiver_addr, admin, &secret);
    let config = Config::parse(&config_text, &|_| None).map_err(DemoError::Config)?;
    say(&format!(
        "  walhook run with 3 strategies; metrics and status on http://{admin}/metrics and /status"
    ));
    say("");
    say(&bold("strategies"));
    say("  big_orders      inserts with amount > 100");
    say("  status_changes  updates that change status");
    say("  cancellations   deletes");
    say("");

    let pipeline_stop = CancellationToken::new();
    let pipeline = tokio::spawn(app::run(config, pipeline_stop.clone()));
    let outcome = script(cluster, &printer, admin, &shutdown, bold).await;
    pipeline_stop.cancel();
    let stopped = pipeline.await;
    receiver_stop.cancel();
    outcome?;
    stopped?.map_err(DemoError::Pipeline)
}

/// Writes the sample changes, waits for their batches, prints the summary.
async fn script(
    cluster: &Cluster,
    printer: &Printer,
    admin: SocketAddr,
    shutdown: &CancellationToken,
    bold: &dyn Fn(&str) -> String,
) -> Result<(), DemoError> {
    // Wait until walhook streams (it creates the publication and the slot).
    wait(shutdown, "walhook to start streaming", || {
        psql(
            cluster,
            "SELECT count(*) FROM pg_stat_replication WHERE application_name LIKE 'walhook%' AND state IN ('catchup','streaming')",
        )
        .map(|out| out.trim() != "0")
        .unwrap_or(false)
    })
    .await?;
    say(&bold("writes"));
    let steps: [(&str, &str); 4] = [
        (
            "INSERT 8 orders in one transaction (4 above 100)",
            "INSERT INTO orders (customer, amount) VALUES \
             ('ada', 250.00), ('bob', 19.99), ('cy', 120.50), ('di', 75.00), \
             ('ed', 999.99), ('flo', 5.00), ('gus', 101.00), ('hal', 60.00);",
        ),
        (
            "UPDATE 3 statuses, and 2 amounts without a status change",
            "BEGIN; UPDATE orders SET status = 'paid' WHERE id IN (1, 3, 5); \
             UPDATE orders SET amount = amount + 1 WHERE id IN (2, 4); COMMIT;",
        ),
        (
            "INSERT 1 more big order, in its own transaction",
            "INSERT INTO orders (customer, amount) VALUES ('ivy', 300.00);",
        ),
        (
            "DELETE 2 orders (cancelled)",
            "DELETE FROM orders WHERE id IN (6, 8);",
        ),
    ];
    for (what, sql) in steps {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        say(&format!("  → {what}"));
        psql(cluster, sql)?;
        // Let each step's batches print before the next step's line.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let expected = [
        ("big_orders", 5),
        ("status_changes", 3),
        ("cancellations", 2),
    ];
    wait(shutdown, "every batch to arrive", || {
        let seen = printer.seen.lock().unwrap_or_else(|e| e.into_inner());
        expected
            .iter()
            .all(|(s, n)| seen.records.get(*s).copied().unwrap_or(0) >= *n)
    })
    .await?;
    if shutdown.is_cancelled() {
        return Ok(());
    }
    say("");
    say(&bold("summary"));
    {
        let seen = printer.seen.lock().unwrap_or_else(|e| e.into_inner());
        for (strategy, _) in expected {
            say(&format!(
                "  {strategy:<15} {} in {}, every signature valid",
                crate::words::count(
                    seen.records.get(strategy).copied().unwrap_or(0),
                    "record",
                    "records"
                ),
                crate::words::count(
                    seen.batches.get(strategy).copied().unwrap_or(0),
                    "batch",
                    "batches"
                )
            ));
        }
        if seen.rejected > 0 {
            say(&format!(
                "  {} requests failed signature checks",
                seen.rejected
            ));
        }
    }
    if let Ok(metrics) = fetch_metrics(admin).await {
        for name in [
            "walhook_events_total",
            "walhook_events_matched_total",
            "walhook_events_filtered_total",
            "walhook_batches_total",
        ] {
            let total: f64 = metrics
                .lines()
                .filter(|l| l.starts_with(name) && !l[name.len()..].starts_with('_'))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            say(&format!("  {name:<32} {total}"));
        }
    }
    say("");
    say(&bold("next steps"));
    say("  walhook receive --listen 127.0.0.1:8080          a receiver for your own tests");
    say("  walhook setup --print-sql -c config.toml         the SQL a DBA runs on your database");
    say("  walhook check -c config.toml                     what is missing, and how to fix it");
    say("  walhook run -c config.toml                       the real thing (see config.toml)");
    Ok(())
}

async fn wait(
    shutdown: &CancellationToken,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + WAIT;
    while !done() {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Timeout(what.to_string()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

impl Sink for Printer {
    fn batch(&self, body: &[u8]) -> Result<u64, serde_json::Error> {
        let batch = ReceivedBatch::parse(body)?;
        let records = batch
            .records
            .iter()
            .map(|r| serde_json::from_str::<serde_json::Value>(r.get()))
            .collect::<Result<Vec<_>, _>>()?;
        let summary: Vec<String> = records.iter().map(describe_record).collect();
        say(&format!(
            "  ← {:>5} ms  {:<15} batch of {}: {}",
            self.started.elapsed().as_millis(),
            batch.strategy,
            records.len(),
            summary.join(", ")
        ));
        let count = records.len() as u64;
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        *seen.batches.entry(batch.strategy.clone()).or_default() += 1;
        *seen.records.entry(batch.strategy).or_default() += count;
        Ok(count)
    }

    fn refused(&self, _why: &Refused) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).rejected += 1;
        say("  ← a request with a bad signature (rejected with 401)");
    }
}

fn describe_record(record: &serde_json::Value) -> String {
    let op = record["op"].as_str().unwrap_or("?");
    let row = if op == "delete" {
        &record["old"]
    } else {
        &record["new"]
    };
    let mut text = format!("{op} #{}", row["id"]);
    if op == "update" {
        if record["old"]["status"] != record["new"]["status"] {
            text.push_str(&format!(
                " status {}→{}",
                record["old"]["status"].as_str().unwrap_or("?"),
                record["new"]["status"].as_str().unwrap_or("?")
            ));
        }
    } else if let Some(customer) = row["customer"].as_str() {
        let amount = row["amount"].as_f64().unwrap_or_default();
        text.push_str(&format!(" {customer} {amount:.2}"));
    }
    text
}

fn psql(cluster: &Cluster, sql: &str) -> Result<String, DemoError> {
    cluster.psql("shop", sql).map_err(cluster_failed("psql"))
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr())
}

async fn fetch_metrics(admin: SocketAddr) -> Result<String, reqwest::Error> {
    reqwest::Client::new()
        .get(format!("http://{admin}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await
}

/// The demo's configuration: the same format as config.toml.
fn demo_config(url: &str, receiver: SocketAddr, admin: SocketAddr, secret: &str) -> String {
    format!(
        r#"[source]
url = "{url}"
slot = "walhook_demo"
publication = "walhook_demo"

[admin]
listen = "{admin}"

[endpoints.demo]
url = "http://{receiver}/hooks"
signing = {{ secret = "{secret}" }}
retry = {{ initial = "200ms", max = "2s" }}

[[strategies]]
name = "big_orders"
table = "orders"
endpoint = "demo"
on_insert = "new.amount > 100"
linger = "50ms"

[[strategies]]
name = "status_changes"
table = "orders"
endpoint = "demo"
on_update = "changed(\"status\")"
linger = "50ms"

[[strategies]]
name = "cancellations"
table = "orders"
endpoint = "demo"
on_delete = "true"
linger = "50ms"
"#
    )
}
